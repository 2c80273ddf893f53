//! The recording tail: every request, whatever happened to it, is recorded exactly once
//! — in the audit (the caller's own slot, or the shared map for everyone else), in the
//! request counters, and in the access log.

use std::net::SocketAddr;
use std::time::Instant;

use http::HeaderValue;

use super::handled::Who;
use super::state::State;
use crate::audit::{Event, Outcome, Subject};

/// A finished request, as the tail sees it.
pub(super) struct Done<'a> {
    pub who: &'a Who,
    pub outcome: Outcome,
    pub fallback_status: Option<u16>,
    pub endpoint: &'a str,
    pub status: u16,
    pub peer: SocketAddr,
    pub user_agent: Option<&'a HeaderValue>,
    pub started: Instant,
}

pub(super) fn record(state: &State, done: &Done<'_>) {
    let event = Event {
        outcome: done.outcome,
        endpoint: done.endpoint,
        status: done.status,
        ip: done.peer.ip(),
        user_agent: done.user_agent.and_then(|v| v.to_str().ok()),
        fallback_status: done.fallback_status,
    };
    let recorder = &state.recorder;
    let bystanders = &state.bystanders;
    match done.who {
        Who::Caller(c) => {
            recorder.record_in(&c.audit, &event);
            c.counters.inc(done.outcome);
        }
        Who::Unknown(fp) => {
            recorder.record_other(Subject::UnknownKey(fp.to_string()), &event);
            bystanders.unknown_key.inc(done.outcome);
        }
        Who::Native => {
            recorder.record_other(Subject::Native, &event);
            bystanders.native.inc(done.outcome);
        }
        Who::Anonymous => {
            recorder.record_other(Subject::Anonymous, &event);
            bystanders.anonymous.inc(done.outcome);
        }
    }
    if state.config.server.access_log {
        tracing::info!(
            target: "keybridge::access",
            integration = %done.who.name(),
            outcome = done.outcome.as_str(),
            endpoint = %done.endpoint,
            status = done.status,
            duration_ms = done.started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
    }
}

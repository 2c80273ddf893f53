//! Who may call, and what keybridge keeps beside each caller: built once per
//! configuration, shared by every worker, swapped whole on reload.
//!
//! [`State`] is the request path's whole view of the world except the upstream
//! connection pool (per worker): the key map of integrations with their audit slots and
//! metric counters, the policies for everyone else, the token cache, the recorder and
//! the shadow rate limit. A request takes one `Arc<State>` when it arrives and runs on
//! it to the end, so a reload never changes a request in progress.

use std::sync::Arc;

use crate::audit::{Outcome, Recorder, Slot};
use crate::bucket::RateLimiter;
use crate::config::{BearerRequests, Config, Integration, Plan, UnknownKeys};
use crate::keys::{Fingerprint, KeyMap};
use crate::metrics::{Metrics, OutcomeCounters};
use crate::shaping::Shaping;
use crate::token::TokenCache;

/// A configured integration and what the proxy keeps beside it.
pub struct Caller {
    pub integration: Arc<Integration>,
    pub audit: Arc<Slot>,
    pub counters: OutcomeCounters,
}

/// Counters for the callers that are not integrations.
pub struct Bystanders {
    pub unknown_key: OutcomeCounters,
    pub native: OutcomeCounters,
    pub anonymous: OutcomeCounters,
    /// How the shaping queues name them (one flow each, weight 1).
    pub unknown_flow: Arc<str>,
    pub native_flow: Arc<str>,
}

/// What a reload carries over unless its setting changed: limits and budgets whose
/// state (permits held, schedules, queues) belongs to requests in progress.
pub struct Carried {
    pub shadow_limiter: Arc<RateLimiter>,
    /// Canary replay buffers, in KiB permits (`cutover.replay_buffer_budget`).
    pub replay_budget: Arc<tokio::sync::Semaphore>,
    /// Each instance's request budget.
    pub shaping: Arc<Shaping>,
}

/// The state every request runs on.
pub struct State {
    pub config: Arc<Config>,
    pub tokens: TokenCache,
    pub recorder: Arc<Recorder>,
    pub metrics: Arc<Metrics>,
    pub shadow_limiter: Arc<RateLimiter>,
    /// Canary replay buffers, in KiB permits (`cutover.replay_buffer_budget`).
    pub replay_budget: Arc<tokio::sync::Semaphore>,
    pub shaping: Arc<Shaping>,
    pub bystanders: Bystanders,
    callers: KeyMap<Arc<Caller>>,
}

impl State {
    /// Builds the key map, slots and counters for `config`. The recorder must already
    /// hold a slot for every integration (see `Audit::adopt`).
    pub fn new(
        config: Arc<Config>,
        tokens: TokenCache,
        recorder: Arc<Recorder>,
        metrics: Arc<Metrics>,
        carried: Carried,
    ) -> Self {
        let Carried {
            shadow_limiter,
            replay_budget,
            shaping,
        } = carried;
        let callers = KeyMap::new(config.integrations.iter().map(|i| {
            let caller = Caller {
                integration: Arc::clone(i),
                audit: recorder.slot(&i.name).unwrap_or_default(),
                counters: metrics.outcome_counters(
                    &i.name,
                    i.plan.mode().as_str(),
                    possible_outcomes(&i.plan),
                ),
            };
            (i.fingerprint, Arc::new(caller))
        }));
        let unknown = match config.unknown_keys {
            UnknownKeys::Reject => &[Outcome::Rejected][..],
            UnknownKeys::Observe => &[Outcome::ApiKey, Outcome::Rejected][..],
        };
        let native = match config.bearer_requests {
            BearerRequests::Forward => &[Outcome::Native, Outcome::Rejected][..],
            BearerRequests::Reject => &[Outcome::Rejected][..],
        };
        let bystanders = Bystanders {
            unknown_key: metrics.outcome_counters(
                &Arc::from("(unknown key)"),
                config.unknown_keys.as_str(),
                unknown,
            ),
            native: metrics.outcome_counters(
                &Arc::from("(bearer caller)"),
                config.bearer_requests.as_str(),
                native,
            ),
            anonymous: metrics.outcome_counters(
                &Arc::from("(no credentials)"),
                "-",
                &[Outcome::Rejected],
            ),
            unknown_flow: Arc::from("(unknown key)"),
            native_flow: Arc::from("(bearer caller)"),
        };
        State {
            config,
            tokens,
            recorder,
            metrics,
            shadow_limiter,
            replay_budget,
            shaping,
            bystanders,
            callers,
        }
    }

    /// The integration owning the raw `key`, with the key's fingerprint.
    pub fn caller(&self, key: &[u8]) -> (Fingerprint, Option<&Arc<Caller>>) {
        self.callers.lookup(key)
    }
}

/// The outcomes a plan's requests can have (their counters are pre-created; any other
/// would still be counted, created on first use).
fn possible_outcomes(plan: &Plan) -> &'static [Outcome] {
    match plan {
        Plan::Observe { .. } | Plan::Shadow { .. } => &[Outcome::ApiKey],
        Plan::Canary { .. } => &[
            Outcome::ApiKey,
            Outcome::Oauth,
            Outcome::Fallback,
            Outcome::Rejected,
        ],
        Plan::Oauth { .. } => &[Outcome::Oauth, Outcome::Rejected],
        Plan::Deny { .. } => &[Outcome::Denied],
    }
}

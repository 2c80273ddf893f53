//! Sending in turn: every request to an instance with a `rate_limit` takes a slot of its
//! budget first ([`crate::shaping`]), and a 429 or 503 from Coupa is waited out and the
//! request sent again while it can be (its body is held, its method allows it, its
//! deadline is not past) — otherwise Coupa's answer goes back with a `Retry-After`.
//!
//! The deadline is the request's first turn plus `rate_limit.max_wait`: queueing and
//! backoffs together never hold a caller longer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Response;
use http::header::RETRY_AFTER;

use super::error::ProxyError;
use super::headers::Credential;
use super::outbound::Outbound;
use super::retry;
use super::send::send;
use super::view::Proxy;
use crate::body::{Inbound, RequestBody};
use crate::config::Instance;
use crate::shaping::{Flow, Shaper};
use crate::upstream::Upstream;

/// One request's place in its instance's budget.
pub(super) struct Pacing<'a> {
    shaper: &'a Arc<Shaper>,
    flow: Flow<'a>,
    deadline: Instant,
}

impl<'a> Pacing<'a> {
    /// The pacing of a request of `flow` to `instance`; `None` when the instance has no
    /// `rate_limit`.
    pub(super) fn new(shaper: Option<&'a Arc<Shaper>>, flow: Flow<'a>) -> Option<Self> {
        let shaper = shaper?;
        Some(Pacing {
            shaper,
            flow,
            deadline: Instant::now() + shaper.limit().max_wait,
        })
    }
}

impl<B: Inbound, U: Upstream<B>> Proxy<U, B> {
    /// Sends `out` with `credential` in its turn; waits out Coupa's 429/503 and sends
    /// again while the request can be.
    pub(super) async fn send_paced(
        &self,
        pacing: &Pacing<'_>,
        out: &Outbound,
        body: &mut RequestBody<B>,
        credential: Credential<'_>,
        instance: &Instance,
    ) -> Result<Response<U::Body>, ProxyError> {
        let Pacing {
            shaper,
            flow,
            deadline,
        } = pacing;
        let mut attempt = 0;
        loop {
            shaper.acquire(*flow, *deadline).await?;
            let request = out.build(credential, body.send_body());
            let response = send(&*self.upstream, &self.state, request, instance).await?;
            let status = response.status();
            if !retry::limited(status) {
                return Ok(response);
            }
            let told = retry::retry_after(response.headers());
            Box::pin(shaper.coupa_refused(told)).await; // rare: kept out of every request's future
            let backoff = told.unwrap_or_else(|| jittered(retry::backoff(attempt)));
            let may_resend = retry::resend_when_limited(
                status,
                out.method(),
                body.can_replay(),
                Instant::now() + backoff < *deadline,
            );
            shaper.metrics.coupa_limited(may_resend);
            if !may_resend {
                tracing::info!(instance = %instance.name, integration = %flow.name, status = status.as_u16(), "Coupa's rate limit answer passed back: the request cannot be sent again in time");
                return Ok(with_retry_after(response, shaper));
            }
            tracing::debug!(instance = %instance.name, integration = %flow.name, status = status.as_u16(), backoff_ms = backoff.as_millis(), "Coupa is limiting; sending again after a backoff");
            drop(response);
            Box::pin(tokio::time::sleep(backoff)).await;
            attempt = attempt.saturating_add(1);
        }
    }
}

/// Between half and the whole of `d`, so retries of many callers spread out.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// Coupa's 429/503 as the caller gets it: with a `Retry-After` (Coupa sends none).
fn with_retry_after<B>(mut response: Response<B>, shaper: &Shaper) -> Response<B> {
    if !response.headers().contains_key(RETRY_AFTER) {
        response.headers_mut().insert(
            RETRY_AFTER,
            crate::respond::retry_after_value(shaper.retry_after_hint()),
        );
    }
    response
}

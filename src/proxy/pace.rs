//! Sending in turn: every request to an instance with a `rate_limit` takes a slot of its
//! budget first ([`crate::shaping`]), and a 429 or 503 from Coupa is waited out and the
//! request sent again while it can be (its body is held, its method allows it, its
//! deadline is not past) — otherwise Coupa's answer goes back with a `Retry-After`.
//!
//! The deadline is the request's first turn plus `rate_limit.max_wait`: queueing and
//! backoffs together never hold a caller longer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::RETRY_AFTER;
use http::{HeaderMap, Method, Response, StatusCode};

use super::handle::Proxy;
use super::headers::Credential;
use super::outbound::Outbound;
use super::send::send;
use crate::body::{Inbound, RequestBody};
use crate::config::Instance;
use crate::error::ProxyError;
use crate::shaping::{Flow, Shaper};
use crate::upstream::Upstream;

/// Sends after a 429/503 from Coupa, at most.
const MAX_RETRIES: u32 = 3;
/// First backoff without a `Retry-After`; doubled per retry, with jitter.
const BASE_BACKOFF: Duration = Duration::from_millis(250);

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
            let response = send(&*self.upstream, &self.routes, request, instance).await?;
            let status = response.status();
            if !limited(status) {
                return Ok(response);
            }
            let told = retry_after(response.headers());
            Box::pin(shaper.coupa_refused(told)).await; // rare: kept out of every request's future
            let backoff = told.unwrap_or_else(|| jittered(BASE_BACKOFF * 2u32.pow(attempt)));
            let may_resend = body.can_replay()
                && attempt < MAX_RETRIES
                && (status == StatusCode::TOO_MANY_REQUESTS || idempotent(out.method()))
                && Instant::now() + backoff < *deadline;
            shaper.metrics.coupa_limited(may_resend);
            if !may_resend {
                tracing::info!(instance = %instance.name, integration = %flow.name, status = status.as_u16(), "Coupa's rate limit answer passed back: the request cannot be sent again in time");
                return Ok(with_retry_after(response, shaper));
            }
            tracing::debug!(instance = %instance.name, integration = %flow.name, status = status.as_u16(), backoff_ms = backoff.as_millis(), "Coupa is limiting; sending again after a backoff");
            drop(response);
            Box::pin(tokio::time::sleep(backoff)).await;
            attempt += 1;
        }
    }
}

/// Coupa's answers to too many requests (COUPA.md §3.4: 429, and 503).
fn limited(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    )
}

/// A 503 may come from a request Coupa began: only methods safe to repeat are.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
    )
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3); anything else,
/// or more than 10 minutes, is ignored.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    };
    (delay <= Duration::from_secs(600)).then_some(delay)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(RETRY_AFTER, v.parse().unwrap());
            retry_after(&m)
        };
        assert_eq!(h("3"), Some(Duration::from_secs(3)));
        assert_eq!(h(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            h("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "past"
        );
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        let d = h(&soon).unwrap();
        assert!(
            d > Duration::from_secs(27) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert_eq!(h("soon"), None);
        assert_eq!(h("-1"), None);
        assert_eq!(h("86400"), None, "beyond 10 minutes is not a backoff");
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn only_rate_limit_answers_are_waited_out() {
        assert!(limited(StatusCode::TOO_MANY_REQUESTS));
        assert!(limited(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!limited(StatusCode::BAD_GATEWAY));
        assert!(!limited(StatusCode::OK));
        assert!(idempotent(&Method::GET) && idempotent(&Method::PUT));
        assert!(!idempotent(&Method::POST) && !idempotent(&Method::PATCH));
    }
}

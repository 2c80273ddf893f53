//! What to do with Coupa's answer: the two resend decisions, apart from the I/O that
//! carries them out — after a refused OAuth request ([`next_step`], carried out by
//! [`super::forward`]) and after Coupa's rate limit ([`resend_when_limited`], carried
//! out by [`super::pace`]).
//!
//! After a refused OAuth request:
//! - `canary`: a 401/403 on OAuth is retried once with the key (the caller must not
//!   break while the client's scopes are being sorted out) — if the body is held.
//! - `oauth`: a 401 means the token was refused; it is retried once with a fresh token
//!   — if the body is held (`oauth` holds only empty bodies: it never buffers).
//! - Everything else, and anything after one retry, goes back to the caller as it is.
//!
//! After Coupa's 429 or 503: sent again, after Coupa's `Retry-After` or a jittered
//! backoff (doubling to [`MAX_BACKOFF`]), as long as the body is held, the method allows
//! it (a 503 may come from a request Coupa began) and the backoff ends before the
//! request's deadline (its first turn plus `rate_limit.max_wait`): the deadline, not a
//! count, bounds the resends, while the shaper's cuts bring the rate under Coupa's.

use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{HeaderMap, Method, StatusCode};

/// The routes that send OAuth and so may be refused (key routes never retry: Coupa's
/// answer to a key is the caller's answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OauthRoute {
    /// `canary`'s OAuth share.
    Canary,
    /// `oauth`.
    Oauth,
}

/// The next step after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Give the caller this response.
    PassBack,
    /// Send the request again with the caller's key (canary fallback).
    FallBackToKey,
    /// Send the request again with a fresh token, if the cache has a different one.
    RetryWithFreshToken,
}

/// `attempt` counts sends so far minus one: 0 after the first response.
pub fn next_step(route: OauthRoute, status: StatusCode, replayable: bool, attempt: u32) -> Step {
    if attempt > 0 || !replayable {
        return Step::PassBack;
    }
    match (route, status) {
        (OauthRoute::Canary, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
            Step::FallBackToKey
        }
        (OauthRoute::Oauth, StatusCode::UNAUTHORIZED) => Step::RetryWithFreshToken,
        (OauthRoute::Canary | OauthRoute::Oauth, _) => Step::PassBack,
    }
}

/// Whether Coupa's answer means it refused the token itself (drop it from the cache).
pub fn token_refused(status: StatusCode) -> bool {
    status == StatusCode::UNAUTHORIZED
}

/// First backoff without a `Retry-After`; doubled per resend, with jitter.
pub const BASE_BACKOFF: Duration = Duration::from_millis(250);
/// The backoff stops doubling here (the fourth resend on).
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Whether a request Coupa answered `status` (429/503) is sent again: `replayable` (its
/// body is held), and whether the backoff `fits_deadline`.
pub fn resend_when_limited(
    status: StatusCode,
    method: &Method,
    replayable: bool,
    fits_deadline: bool,
) -> bool {
    replayable && (status == StatusCode::TOO_MANY_REQUESTS || idempotent(method)) && fits_deadline
}

/// The backoff before resend `attempt` (from 0) when Coupa sent no `Retry-After`:
/// [`BASE_BACKOFF`] doubled per resend up to [`MAX_BACKOFF`] (jitter is the caller's).
pub fn backoff(attempt: u32) -> Duration {
    (BASE_BACKOFF * 2u32.pow(attempt.min(3))).min(MAX_BACKOFF)
}

/// Coupa's answers to too many requests (COUPA.md §3.4: 429, and 503).
pub fn limited(status: StatusCode) -> bool {
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
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use OauthRoute::*;
    use Step::*;

    #[test]
    fn the_retry_table() {
        let s = |n| StatusCode::from_u16(n).unwrap();
        #[rustfmt::skip]
        let table = [
            // route,              status, replayable, attempt, step
            (Canary,               401, true,  0, FallBackToKey),
            (Canary,               403, true,  0, FallBackToKey),
            (Canary,               401, false, 0, PassBack),    // streamed body: can't resend
            (Canary,               403, true,  1, PassBack),    // never more than one retry
            (Canary,               200, true,  0, PassBack),
            (Canary,               404, true,  0, PassBack),
            (Canary,               429, true,  0, PassBack),
            (Canary,               500, true,  0, PassBack),
            (Oauth,                401, true,  0, RetryWithFreshToken),
            (Oauth,                401, true,  1, PassBack),
            (Oauth,                401, false, 0, PassBack),
            (Oauth,                403, true,  0, PassBack),    // a missing scope stays missing
            (Oauth,                200, true,  0, PassBack),
            (Oauth,                503, true,  0, PassBack),
        ];
        for (route, status, replayable, attempt, want) in table {
            assert_eq!(
                next_step(route, s(status), replayable, attempt),
                want,
                "{route:?} {status} replayable={replayable} attempt={attempt}"
            );
        }
    }

    #[test]
    fn only_a_401_refuses_the_token() {
        assert!(token_refused(StatusCode::UNAUTHORIZED));
        assert!(!token_refused(StatusCode::FORBIDDEN));
        assert!(!token_refused(StatusCode::OK));
    }

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

    #[test]
    fn a_limited_request_is_resent_only_while_it_can_be() {
        let (get, post) = (&Method::GET, &Method::POST);
        let (s429, s503) = (
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::SERVICE_UNAVAILABLE,
        );
        assert!(resend_when_limited(s429, post, true, true));
        assert!(resend_when_limited(s503, get, true, true));
        assert!(
            !resend_when_limited(s503, post, true, true),
            "a 503 POST may have begun"
        );
        assert!(
            !resend_when_limited(s429, get, false, true),
            "body not held"
        );
        assert!(
            !resend_when_limited(s429, get, true, false),
            "past the deadline"
        );
        assert_eq!(backoff(2), BASE_BACKOFF * 4);
        assert_eq!(backoff(3), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF, "no overflow, however many");
    }
}

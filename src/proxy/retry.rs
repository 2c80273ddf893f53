//! What to do with Coupa's answer to an OAuth request: the one retry decision, apart
//! from the I/O that carries it out ([`super::forward`]).
//!
//! - `canary`: a 401/403 on OAuth is retried once with the key (the caller must not
//!   break while the client's scopes are being sorted out) — if the body is held.
//! - `oauth`: a 401 means the token was refused; it is retried once with a fresh token
//!   — if the body is held (`oauth` holds only empty bodies: it never buffers).
//! - Everything else, and anything after one retry, goes back to the caller as it is.

use http::StatusCode;

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
}

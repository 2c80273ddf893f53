//! Per-integration cutover: which way one request goes.
//!
//! `observe` and `shadow` send the key, `oauth` the bearer, `canary` samples
//! `canary_percent` of requests for the bearer (with fallback to the key on 401/403),
//! `deny` forwards nothing. Shadow replays are sampled by `shadow_percent` and bounded
//! by a global token-bucket rate limit.

use std::sync::Mutex;
use std::time::Instant;

use crate::config::{Integration, Mode};

/// The path chosen for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Forward with the key.
    Key,
    /// Forward with the key and replay it with OAuth in the background.
    KeyAndShadow,
    /// Forward with OAuth; on 401/403 retry with the key (canary).
    OauthWithFallback,
    /// Forward with OAuth only.
    Oauth,
    /// Refuse.
    Deny,
}

/// Picks the route. `safe_method` is GET/HEAD (only those are ever shadowed).
pub fn route(integration: &Integration, safe_method: bool) -> Route {
    match integration.mode {
        Mode::Observe => Route::Key,
        Mode::Shadow if safe_method && sampled(integration.shadow_percent) => Route::KeyAndShadow,
        Mode::Shadow => Route::Key,
        Mode::Canary if sampled(integration.canary_percent) => Route::OauthWithFallback,
        Mode::Canary => Route::Key,
        Mode::Oauth => Route::Oauth,
        Mode::Deny => Route::Deny,
    }
}

/// True with probability `percent`/100.
fn sampled(percent: u8) -> bool {
    percent >= 100 || fastrand::u8(0..100) < percent
}

/// A token bucket: `rate` permits per second, bursts up to `rate`.
pub struct RateLimiter {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        RateLimiter {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    /// Takes a permit if one is available; never waits.
    pub fn try_acquire(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = &mut *state;
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_bounds() {
        assert!((0..1000).all(|_| sampled(100)));
        assert!((0..1000).all(|_| !sampled(0)));
        let hits = (0..10_000).filter(|_| sampled(30)).count();
        assert!((2700..3300).contains(&hits), "{hits}");
    }

    #[test]
    fn rate_limiter_allows_a_burst_then_refills() {
        let l = RateLimiter::new(5);
        assert_eq!((0..20).filter(|_| l.try_acquire()).count(), 5);
        std::thread::sleep(std::time::Duration::from_millis(450));
        let n = (0..20).filter(|_| l.try_acquire()).count();
        assert!((1..=3).contains(&n), "{n}");
    }
}

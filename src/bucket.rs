//! A token bucket that never waits: for the shadow replays' global rate, and the rate
//! at which some log lines and admin actions may repeat.

use std::sync::Mutex;
use std::time::Instant;

/// A token bucket: `rate` permits per second, bursts up to `burst` (default `rate`).
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        Self::with_burst(per_second, per_second)
    }

    /// `per_second` permits per second, up to `burst` at once.
    pub fn with_burst(per_second: u32, burst: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        let burst = f64::from(burst.max(1));
        RateLimiter {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes a permit if one is available; never waits.
    pub fn try_acquire(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = &mut *state;
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
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
    fn rate_limiter_allows_a_burst_then_refills() {
        let l = RateLimiter::new(5);
        assert_eq!((0..20).filter(|_| l.try_acquire()).count(), 5);
        std::thread::sleep(std::time::Duration::from_millis(450));
        let n = (0..20).filter(|_| l.try_acquire()).count();
        assert!((1..=3).contains(&n), "{n}");
    }
}

//! The arithmetic of an instance's budget: GCRA (the generic cell rate algorithm, a
//! token bucket kept as one timestamp) with AIMD (a 429 halves the rate, which then
//! climbs back slowly). Pure: time is a number of microseconds the caller supplies, so
//! the table tests need no clock, and [`super::fleet`]'s Lua script is this same
//! arithmetic on Redis's clock (its constants are formatted in from here).
//!
//! One request of the burst is kept back: keybridge lets `burst - 1` go at once, so a
//! request delayed on its way (network jitter between keybridge's clock and Coupa's)
//! does not arrive inside the next one's slot.

use crate::config::RateLimit;

/// A 429 multiplies the current rate by this.
pub const DECREASE: f64 = 0.5;
/// After a cut the rate climbs back by this share of the configured rate per second.
pub const RECOVERY_PER_SECOND: f64 = 0.05;
/// ... once it has held for this long (µs) after the cut: while Coupa keeps answering
/// 429 (a new cut each cooldown) the rate keeps halving, so a limit configured far above
/// Coupa's real one comes under it within a few seconds (50/s against Coupa's 2/s: five
/// cuts), instead of settling where the halving and the climb balance.
pub const RECOVERY_DELAY_US: f64 = 2_000_000.0;
/// The rate never falls below this share of the configured rate.
pub const FLOOR: f64 = 0.01;
/// 429s within this long of a cut are the same congestion (answers to requests already
/// on their way): they do not cut again.
pub const COOLDOWN_US: f64 = 1_000_000.0;

const US: f64 = 1_000_000.0;

/// One instance's budget on one clock.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Budget {
    /// Theoretical arrival time of the next request (µs).
    tat: f64,
    /// The last cut: the rate it set and when.
    cut: Option<(f64, f64)>,
}

/// Requests per second allowed at `now`: the configured rate, or a cut rate recovering.
pub fn rate_at(limit: &RateLimit, cut: Option<(f64, f64)>, now: f64) -> f64 {
    match cut {
        None => limit.per_second,
        Some((rate, at)) => {
            let climbing = (now - at - RECOVERY_DELAY_US).max(0.0);
            let recovered = limit.per_second * RECOVERY_PER_SECOND * (climbing / US);
            (rate + recovered).min(limit.per_second)
        }
    }
}

/// Microseconds between requests at `rate`.
fn interval(rate: f64) -> f64 {
    US / rate
}

/// How far ahead of `now` the schedule may run: `burst - 1` requests at once, one kept
/// back for jitter; none while a cut holds the rate under the configured one (Coupa's
/// own burst is evidently smaller than the configured one: bursts would meet 429s).
fn tolerance(limit: &RateLimit, rate: f64) -> f64 {
    if rate < limit.per_second {
        return 0.0;
    }
    f64::from(limit.burst.saturating_sub(2)) * interval(rate)
}

impl Budget {
    /// The rate allowed at `now`.
    pub fn rate(&self, limit: &RateLimit, now: f64) -> f64 {
        rate_at(limit, self.cut, now)
    }

    /// Takes the slot for one request at `now`, or says how many µs until the next.
    pub fn take(&mut self, limit: &RateLimit, now: f64) -> Result<(), f64> {
        let rate = self.rate(limit, now);
        if rate >= limit.per_second {
            self.cut = None;
        }
        let allowed_at = self.tat - tolerance(limit, rate);
        if now >= allowed_at {
            self.tat = self.tat.max(now) + interval(rate);
            Ok(())
        } else {
            Err(allowed_at - now)
        }
    }

    /// Coupa refused a request as over its limit at `now`: halve the rate (once per
    /// congestion), treat the bucket as empty (Coupa's is), and keep quiet for
    /// `retry_after_us` when Coupa said how long. Returns whether the rate was cut.
    pub fn cut(&mut self, limit: &RateLimit, now: f64, retry_after_us: Option<f64>) -> bool {
        let cooling = self.cut.is_some_and(|(_, at)| now - at < COOLDOWN_US);
        if !cooling {
            let rate = (self.rate(limit, now) * DECREASE).max(limit.per_second * FLOOR);
            self.cut = Some((rate, now));
            let rate_now = self.rate(limit, now);
            self.tat = self
                .tat
                .max(now + tolerance(limit, rate_now) + interval(rate_now));
        }
        if let Some(pause) = retry_after_us {
            let rate_now = self.rate(limit, now);
            self.tat = self.tat.max(now + pause + tolerance(limit, rate_now));
        }
        !cooling
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const COUPA: RateLimit = RateLimit {
        per_second: 25.0,
        burst: 20,
        max_wait: Duration::from_secs(10),
    };

    /// How many requests `budget` lets through if one is offered every `every` µs from
    /// `from` to `to`.
    fn offered(budget: &mut Budget, limit: &RateLimit, from: f64, to: f64, every: f64) -> usize {
        let mut n = 0;
        let mut t = from;
        while t < to {
            n += usize::from(budget.take(limit, t).is_ok());
            t += every;
        }
        n
    }

    #[test]
    fn a_quiet_budget_lets_the_burst_less_one_go_at_once_then_paces() {
        let mut b = Budget::default();
        let at_once = (0..100).filter(|_| b.take(&COUPA, 0.0).is_ok()).count();
        assert_eq!(at_once, 19, "burst 20, one kept back");
        // Refused: the next slot is one interval (40 ms) away.
        assert_eq!(b.take(&COUPA, 0.0), Err(40_000.0));
        assert!(b.take(&COUPA, 40_000.0).is_ok());
    }

    #[test]
    fn under_heavy_offer_the_long_run_rate_is_the_limit() {
        let mut b = Budget::default();
        // 1 000 requests/s offered for 10 s.
        let n = offered(&mut b, &COUPA, 0.0, 10.0 * US, 1_000.0);
        assert!((250..=250 + 19).contains(&n), "{n}");
    }

    #[test]
    fn a_429_halves_the_rate_once_per_congestion_and_it_recovers() {
        let mut b = Budget::default();
        assert!(b.cut(&COUPA, 0.0, None));
        assert_eq!(b.rate(&COUPA, 0.0), 12.5);
        // A second 429 within the cooldown is the same congestion.
        assert!(!b.cut(&COUPA, 500_000.0, None));
        // The cut rate holds for the recovery delay, then climbs.
        assert_eq!(b.rate(&COUPA, 500_000.0), 12.5);
        assert_eq!(b.rate(&COUPA, 2.5 * US), 12.5 + 25.0 * 0.05 * 0.5);
        // Ten seconds of climbing take back 50 % of the limit: full rate again, never
        // above it.
        assert_eq!(b.rate(&COUPA, 12.0 * US), 25.0);
        assert_eq!(b.rate(&COUPA, 100.0 * US), 25.0);
        // Cuts stop at the floor.
        let mut b = Budget::default();
        for i in 0..20 {
            b.cut(&COUPA, f64::from(i) * 2.0 * US, None);
        }
        assert!(b.rate(&COUPA, 40.0 * US) >= 25.0 * FLOOR);
    }

    #[test]
    fn after_a_cut_the_bucket_is_empty_and_paced_at_the_lower_rate() {
        let mut b = Budget::default();
        b.cut(&COUPA, 0.0, None);
        assert!(b.take(&COUPA, 0.0).is_err(), "no burst right after a 429");
        // Over the next second about 12.5 + a little recovery go, not 25.
        let n = offered(&mut b, &COUPA, 0.0, US, 1_000.0);
        assert!((11..=14).contains(&n), "{n}");
    }

    #[test]
    fn retry_after_keeps_the_instance_quiet_that_long() {
        // (At least that long: the rate recovers meanwhile, so the burst allowance
        // reckoned at the cut is spent a little later.)
        let mut b = Budget::default();
        b.cut(&COUPA, 0.0, Some(3.0 * US));
        assert!(b.take(&COUPA, 2.99 * US).is_err());
        assert!(b.take(&COUPA, 3.5 * US).is_ok());
        // A later Retry-After during the cooldown still pauses.
        let mut b = Budget::default();
        b.cut(&COUPA, 0.0, None);
        b.cut(&COUPA, 100_000.0, Some(2.0 * US));
        assert!(b.take(&COUPA, 2.09 * US).is_err());
        assert!(b.take(&COUPA, 2.6 * US).is_ok());
    }

    #[test]
    fn a_burst_of_one_paces_every_request() {
        let one = RateLimit { burst: 1, ..COUPA };
        let mut b = Budget::default();
        assert!(b.take(&one, 0.0).is_ok());
        assert!(b.take(&one, 0.0).is_err());
        assert!(b.take(&one, 40_000.0).is_ok());
    }
}

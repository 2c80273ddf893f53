//! The fleet's shared budget (`fleet.redis_url`): every replica takes its slots from one
//! GCRA schedule per instance in Redis, so the fleet together keeps to the instance's
//! rate however the load balancer spreads callers.
//!
//! The schedule is [`super::budget`]'s arithmetic as a Lua script on Redis's own clock
//! (`TIME`: replicas' clocks never disagree about it), atomic per call. A 429 from Coupa
//! cuts the shared rate, so every replica slows down, not only the one that was told.
//! Each call has a short deadline; when Redis fails, the replica keeps to its share
//! (`per_second / fleet.expected_replicas`) and asks Redis again after a pause.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{RateLimit, Secret};

use super::budget::{COOLDOWN_US, DECREASE, FLOOR, RECOVERY_DELAY_US, RECOVERY_PER_SECOND};

/// One Redis call may take this long before the replica goes on with its local share.
const CALL_TIMEOUT: Duration = Duration::from_millis(100);
/// After a failure Redis is not asked again for this long (no timeout per request).
const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// What the shared schedule gave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Turn {
    /// Go now.
    Now,
    /// A slot is reserved this far ahead: go then.
    In(Duration),
    /// Nothing within the horizon asked for; the next slot is this far ahead.
    NotBefore(Duration),
}

/// Whether the shared budget is in use, for status pages (never a URL).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FleetHealth {
    pub available: bool,
    pub last_error: Option<String>,
}

/// The Redis side of shaping.
pub struct FleetBudget {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    target: String,
    script: redis::Script,
    state: Mutex<Link>,
}

#[derive(Default)]
struct Link {
    paused_until: Option<Instant>,
    last_error: Option<String>,
    ever_failed: bool,
}

impl FleetBudget {
    /// A lazily connecting client (Redis may be down at start).
    pub fn new(url: &Secret, prefix: &str) -> Result<FleetBudget, String> {
        let (conn, target) = crate::redis_link::connect(url, CALL_TIMEOUT, 0)?;
        Ok(FleetBudget {
            conn,
            prefix: prefix.to_owned(),
            target,
            script: redis::Script::new(&script()),
            state: Mutex::new(Link::default()),
        })
    }

    fn link(&self) -> std::sync::MutexGuard<'_, Link> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// False while Redis is paused after a failure.
    pub fn usable(&self) -> bool {
        self.link()
            .paused_until
            .is_none_or(|until| Instant::now() >= until)
    }

    pub fn health(&self) -> FleetHealth {
        let link = self.link();
        FleetHealth {
            available: link.paused_until.is_none_or(|u| Instant::now() >= u)
                && link.last_error.is_none(),
            last_error: link.last_error.clone(),
        }
    }

    /// A slot of `instance`'s schedule: now, or reserved up to `horizon` ahead.
    pub async fn take(
        &self,
        instance: &str,
        limit: &RateLimit,
        horizon: Duration,
    ) -> Result<Turn, ()> {
        let reply: (i64, i64) = self
            .call(instance, "take", limit, horizon.as_micros())
            .await?;
        let wait = Duration::from_micros(u64::try_from(reply.1).unwrap_or(0));
        Ok(match reply {
            (1, _) if wait.is_zero() => Turn::Now,
            (1, _) => Turn::In(wait),
            _ => Turn::NotBefore(wait),
        })
    }

    /// Coupa refused a request as over its limit: cut the fleet's rate (and pause it
    /// for `retry_after` when Coupa said how long).
    pub async fn cut(
        &self,
        instance: &str,
        limit: &RateLimit,
        retry_after: Option<Duration>,
    ) -> Result<(), ()> {
        let pause = retry_after.map_or(0, |d| d.as_micros());
        self.call::<(i64, i64)>(instance, "cut", limit, pause)
            .await
            .map(drop)
    }

    async fn call<T: redis::FromRedisValue>(
        &self,
        instance: &str,
        op: &str,
        limit: &RateLimit,
        micros: u128,
    ) -> Result<T, ()> {
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(format!("{}shape:{instance}", self.prefix))
            .arg(op)
            .arg(limit.per_second)
            .arg(limit.burst)
            .arg(u64::try_from(micros).unwrap_or(u64::MAX));
        let mut conn = self.conn.clone();
        let result =
            tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async::<T>(&mut conn)).await;
        let error = match result {
            Ok(Ok(v)) => {
                let mut link = self.link();
                if link.last_error.take().is_some() {
                    tracing::info!(redis = %self.target, "shared rate limit reachable again: the fleet shares one budget");
                }
                link.paused_until = None;
                return Ok(v);
            }
            Ok(Err(e)) => format!("redis {}: {e}", self.target),
            Err(_) => format!(
                "redis {}: no answer within {} ms",
                self.target,
                CALL_TIMEOUT.as_millis()
            ),
        };
        let mut link = self.link();
        if link.last_error.is_none() || !link.ever_failed {
            tracing::warn!(redis = %self.target, %error, "shared rate limit unreachable: this replica keeps to per_second / fleet.expected_replicas until it is back");
        }
        link.ever_failed = true;
        link.last_error = Some(error);
        link.paused_until = Some(Instant::now() + PAUSE_AFTER_FAILURE);
        Err(())
    }
}

/// The Lua script: [`super::budget::Budget`] on Redis's clock, state in one hash
/// (`tat`, `cut_rate`, `cut_at`, µs) that expires a minute after it was last needed.
/// ARGV: op (`take`|`cut`), per_second, burst, horizon or pause (µs).
fn script() -> String {
    format!(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local arg = tonumber(ARGV[4])
local h = redis.call('HMGET', KEYS[1], 'tat', 'cut_rate', 'cut_at')
local tat = tonumber(h[1]) or 0
local cut_rate = tonumber(h[2])
local cut_at = tonumber(h[3])
local rate = limit
if cut_rate then
  rate = math.min(limit, cut_rate + limit * {RECOVERY_PER_SECOND} * math.max(0, now - cut_at - {RECOVERY_DELAY_US}) / 1000000)
end
local function interval(r) return 1000000 / r end
local function tolerance(r) if r < limit then return 0 end return math.max(0, burst - 2) * interval(r) end
local result
if ARGV[1] == 'take' then
  if cut_rate and rate >= limit then
    redis.call('HDEL', KEYS[1], 'cut_rate', 'cut_at')
  end
  local wait = tat - tolerance(rate) - now
  if wait <= 0 then
    tat = math.max(tat, now) + interval(rate)
    result = {{1, 0}}
  elseif wait <= arg then
    tat = tat + interval(rate)
    result = {{1, math.floor(wait)}}
  else
    return {{0, math.floor(wait)}}
  end
else
  if not cut_at or now - cut_at >= {COOLDOWN_US} then
    rate = math.max(rate * {DECREASE}, limit * {FLOOR})
    redis.call('HSET', KEYS[1], 'cut_rate', string.format('%.6f', rate), 'cut_at', string.format('%.0f', now))
    tat = math.max(tat, now + tolerance(rate) + interval(rate))
  end
  if arg > 0 then
    tat = math.max(tat, now + arg + tolerance(rate))
  end
  result = {{1, 0}}
end
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat))
redis.call('PEXPIRE', KEYS[1], math.floor(math.max(tat - now, 0) / 1000) + 60000)
return result
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_uses_the_budgets_constants() {
        let s = script();
        for c in [
            RECOVERY_PER_SECOND,
            RECOVERY_DELAY_US,
            COOLDOWN_US,
            DECREASE,
            FLOOR,
        ] {
            assert!(s.contains(&c.to_string()), "{c} missing from the script");
        }
        assert!(!s.contains("{RECOVERY"), "unformatted placeholder");
    }
}

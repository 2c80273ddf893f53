//! What a rate limit looks like from outside, live: shown by `/audit`, the dashboard
//! and `keybridge audit` beside the migration report.

use serde::Serialize;

/// One instance's rate limit, live.
#[derive(Debug, Clone, Serialize)]
pub struct RateLimitReport {
    pub instance: String,
    /// The configured budget for the fleet.
    pub per_second: f64,
    pub burst: u32,
    pub max_wait_seconds: f64,
    /// What this replica lets through now (lower after Coupa's 429s, recovering).
    pub current_per_second: f64,
    /// Requests waiting for their turn here.
    pub queued: usize,
    /// `Some(true)` while shared through Redis, `Some(false)` while Redis is away,
    /// `None` without `fleet.redis_url`.
    pub shared: Option<bool>,
    /// Requests this replica answered with 429 itself (no turn within `max_wait`).
    pub throttled: u64,
    /// 429/503s from Coupa waited out and sent again, and given to the caller.
    pub coupa_limited_absorbed: u64,
    pub coupa_limited_passed_back: u64,
}

//! The report's shape: what `keybridge audit --format json`, `GET /audit` and the
//! dashboard show, field by field.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::config::Mode;
use crate::shaping::RateLimitReport;

#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub generated_at: String,
    /// Requests by outcome, all subjects.
    pub totals: BTreeMap<&'static str, u64>,
    /// Share of forwarded requests Coupa still received with an API key.
    pub key_share_percent: Option<f64>,
    /// Integrations that sent a request with their API key (or fell back to it) within
    /// `audit.ready_after`, whatever their mode: a canary at 20 % still sends keys.
    pub integrations_sending_keys: usize,
    pub integrations: Vec<IntegrationReport>,
    pub unknown_keys: Vec<CallerReport>,
    /// Bearer callers and requests without credentials.
    pub other_callers: Vec<CallerReport>,
    /// Per-minute totals, oldest first.
    pub traffic: Vec<TrafficPoint>,
    /// The replicas writing this audit and when each last flushed: one that stopped
    /// (crashed, cut off from the store) shows `stale`.
    pub replicas: Vec<ReplicaReport>,
    /// Each instance's rate limit as this replica sees it now (filled in by the admin
    /// listener, which has the live shapers; empty from the CLI).
    pub rate_limits: Vec<RateLimitReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaReport {
    pub name: String,
    pub first_seen: String,
    pub last_flush: String,
    /// No flush for three flush intervals (at least 30 s).
    pub stale: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrafficPoint {
    pub minute: String,
    pub unix: i64,
    pub requests: BTreeMap<&'static str, u64>,
    pub key_share_percent: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IntegrationReport {
    pub name: String,
    /// `None` when the integration is in the audit but no longer in the config.
    pub mode: Option<Mode>,
    pub client: Option<String>,
    pub instance: Option<String>,
    pub canary_percent: Option<u8>,
    pub shadow_percent: Option<u8>,
    /// What a person should read: `sending keys`, `canary (30% OAuth, 2 fallbacks)`,
    /// `on OAuth`, `ready to disable the key in Coupa`, …
    pub state: String,
    pub state_code: &'static str,
    /// Sent a key-based request (key or fallback) within `audit.ready_after`.
    pub sends_keys: bool,
    pub requests: BTreeMap<&'static str, u64>,
    pub total: u64,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    pub last_key_seen: Option<String>,
    pub mode_since: Option<String>,
    pub ip_addresses: Vec<String>,
    pub user_agents: Vec<String>,
    pub endpoints: Vec<EndpointReport>,
    pub fallbacks: Vec<FallbackReport>,
    pub shadow_findings: Vec<ShadowReport>,
    pub shadow_matches: u64,
    pub scopes: ScopeAdvice,
}

#[derive(Debug, Clone, Serialize)]
pub struct CallerReport {
    pub kind: &'static str,
    /// The key's fingerprint for unknown keys.
    pub name: String,
    pub requests: BTreeMap<&'static str, u64>,
    pub total: u64,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    pub ip_addresses: Vec<String>,
    pub user_agents: Vec<String>,
    pub endpoints: Vec<EndpointReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointReport {
    /// `METHOD /api/resource/:id`.
    pub endpoint: String,
    pub count: u64,
    pub statuses: BTreeMap<String, u64>,
    /// The scope it needs, or `None` when the resource is not in the scope table.
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FallbackReport {
    pub endpoint: String,
    pub oauth_status: u16,
    pub count: u64,
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShadowReport {
    pub endpoint: String,
    pub key_status: u16,
    pub oauth_status: u16,
    pub count: u64,
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ScopeAdvice {
    /// The least set of scopes covering every endpoint used (known resources only).
    pub needed: Vec<String>,
    /// What the client requests; empty with `requests_all_scopes`.
    pub configured: Vec<String>,
    /// No `scopes:` configured: the token carries every scope granted to the client.
    pub requests_all_scopes: bool,
    /// Needed but not configured: requests will get 403 on OAuth.
    pub missing: Vec<String>,
    /// Configured but never needed so far: candidates to remove.
    pub unused: Vec<String>,
    /// Scopes of endpoints that fell back to the key or differed in shadow replays.
    pub implicated_by_fallbacks: Vec<String>,
    /// Endpoints whose resource has no known scope: check Coupa's /oauth2/scopes page.
    pub unknown_endpoints: Vec<String>,
    pub suggestion: String,
}

/// Formats Unix seconds as RFC 3339 (UTC).
pub fn rfc3339(unix: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64))
        .to_string()
}

//! The audit as people read it: per integration, its mode and cutover state, what it
//! sent, and the least set of OAuth scopes its client needs.
//!
//! One builder ([`build`]) feeds `keybridge audit` (table, JSON, CSV), `GET /audit` and
//! the dashboard, so they always agree. Scope advice comes from the endpoints an
//! integration really used, via [`crate::scopes`]; endpoints whose resource is not in
//! that table are listed as unknown rather than guessed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use http::Method;
use serde::Serialize;

use super::store::{Snapshot, SubjectRow};
use crate::config::{Config, Integration, Mode, Percent};
use crate::outcome::{Outcome, OutcomeMap};
use crate::scopes::required_scope;
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

fn by_outcome(counts: &OutcomeMap<u64>) -> BTreeMap<&'static str, u64> {
    counts.iter().map(|(o, c)| (o.as_str(), *c)).collect()
}

fn key_share(counts: &OutcomeMap<u64>) -> Option<f64> {
    let keyed = counts[Outcome::ApiKey] + counts[Outcome::Fallback];
    let forwarded = keyed + counts[Outcome::Oauth] + counts[Outcome::Native];
    (forwarded > 0).then(|| (keyed as f64 * 1000.0 / forwarded as f64).round() / 10.0)
}

fn scope_of(endpoint: &str) -> Option<String> {
    let (method, path) = endpoint.split_once(' ')?;
    required_scope(&Method::from_bytes(method.as_bytes()).ok()?, path)
}

/// Endpoints and unknown keys listed per report section; the rest are summed in one
/// "(N more …)" entry, so the report stays small whatever the traffic.
pub(crate) const MAX_LISTED: usize = 100;
/// The per-minute traffic series covers the last day.
const TRAFFIC_WINDOW: i64 = 24 * 3600;

/// The busiest [`MAX_LISTED`] endpoints, and one entry summing the rest.
fn shown(mut endpoints: Vec<EndpointReport>) -> Vec<EndpointReport> {
    if endpoints.len() > MAX_LISTED {
        let rest = endpoints.split_off(MAX_LISTED);
        let mut statuses = BTreeMap::new();
        for e in &rest {
            for (s, c) in &e.statuses {
                *statuses.entry(s.clone()).or_insert(0) += c;
            }
        }
        endpoints.push(EndpointReport {
            endpoint: format!("({} more endpoints)", rest.len()),
            count: rest.iter().map(|e| e.count).sum(),
            statuses,
            scope: None,
        });
    }
    endpoints
}

fn endpoints(row: &SubjectRow) -> Vec<EndpointReport> {
    let mut out: Vec<EndpointReport> = row
        .endpoints
        .iter()
        .map(|(endpoint, statuses)| EndpointReport {
            endpoint: endpoint.clone(),
            count: statuses.values().sum(),
            statuses: statuses.iter().map(|(s, c)| (s.to_string(), *c)).collect(),
            scope: scope_of(endpoint),
        })
        .collect();
    out.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.endpoint.cmp(&b.endpoint))
    });
    out
}

/// Builds the report from the store's snapshot and the current config.
pub fn build(snapshot: &Snapshot, config: &Config, now: i64) -> AuditReport {
    let empty = SubjectRow::default();
    let mut totals = OutcomeMap::<u64>::default();
    for row in snapshot.subjects.values() {
        totals.add(&row.counts);
    }

    let mut integrations: Vec<IntegrationReport> = config
        .integrations
        .iter()
        .map(|i| {
            let row = snapshot
                .subjects
                .get(&("integration".to_owned(), i.name.to_string()))
                .unwrap_or(&empty);
            integration_report(Some(i), &i.name, row, config, now)
        })
        .collect();
    for ((kind, name), row) in &snapshot.subjects {
        if kind == "integration" && !config.integrations.iter().any(|i| &*i.name == name) {
            integrations.push(integration_report(None, name, row, config, now));
        }
    }

    let caller = |kind: &'static str, name: &str, row: &SubjectRow| CallerReport {
        kind,
        name: name.to_owned(),
        requests: by_outcome(&row.counts),
        total: row.counts.total(),
        first_seen: row.first_seen.map(rfc3339),
        last_seen: row.last_seen.map(rfc3339),
        ip_addresses: row.ips.iter().map(|(v, _)| v.clone()).collect(),
        user_agents: row.user_agents.iter().map(|(v, _)| v.clone()).collect(),
        endpoints: shown(endpoints(row)),
    };
    let mut unknown_keys = Vec::new();
    let mut other_callers = Vec::new();
    for ((kind, name), row) in &snapshot.subjects {
        match kind.as_str() {
            "unknown_key" => unknown_keys.push(caller("unknown_key", name, row)),
            "native" => other_callers.push(caller("native", name, row)),
            "anonymous" => other_callers.push(caller("anonymous", name, row)),
            _ => {}
        }
    }
    unknown_keys.sort_by_key(|u| std::cmp::Reverse(u.total));
    if unknown_keys.len() > MAX_LISTED {
        let rest = unknown_keys.split_off(MAX_LISTED);
        unknown_keys.push(CallerReport {
            kind: "unknown_key",
            name: format!("({} more unknown keys)", rest.len()),
            requests: BTreeMap::new(),
            total: rest.iter().map(|u| u.total).sum(),
            first_seen: None,
            last_seen: None,
            ip_addresses: Vec::new(),
            user_agents: Vec::new(),
            endpoints: Vec::new(),
        });
    }
    let since = now - TRAFFIC_WINDOW;

    let stale_after = (3 * config.audit.flush_interval.as_secs() as i64).max(30);
    let replicas = snapshot
        .replicas
        .iter()
        .map(|r| ReplicaReport {
            name: r.name.clone(),
            first_seen: rfc3339(r.first_seen),
            last_flush: rfc3339(r.last_flush),
            stale: now - r.last_flush > stale_after,
        })
        .collect();
    AuditReport {
        rate_limits: Vec::new(),
        replicas,
        generated_at: rfc3339(now),
        totals: by_outcome(&totals),
        key_share_percent: key_share(&totals),
        integrations_sending_keys: integrations.iter().filter(|i| i.sends_keys).count(),
        integrations,
        unknown_keys,
        other_callers,
        traffic: snapshot
            .traffic
            .iter()
            .filter(|(minute, _)| *minute >= since)
            .map(|(minute, counts)| TrafficPoint {
                minute: rfc3339(*minute),
                unix: *minute,
                requests: by_outcome(counts),
                key_share_percent: key_share(counts),
            })
            .collect(),
    }
}

fn integration_report(
    integration: Option<&Integration>,
    name: &str,
    row: &SubjectRow,
    config: &Config,
    now: i64,
) -> IntegrationReport {
    let mode = integration.map(|i| i.plan.mode());
    let client = integration.and_then(|i| i.plan.client());
    let fallbacks: Vec<FallbackReport> = row
        .fallbacks
        .iter()
        .map(|(endpoint, status, count)| FallbackReport {
            endpoint: endpoint.clone(),
            oauth_status: *status,
            count: *count,
            scope: scope_of(endpoint),
        })
        .collect();
    let shadow_all: Vec<ShadowReport> = row
        .shadow
        .iter()
        .map(|(endpoint, k, o, count)| ShadowReport {
            endpoint: endpoint.clone(),
            key_status: *k,
            oauth_status: *o,
            count: *count,
            scope: scope_of(endpoint),
        })
        .collect();
    let shadow_matches = shadow_all
        .iter()
        .filter(|s| s.key_status == s.oauth_status)
        .map(|s| s.count)
        .sum();
    let shadow_findings: Vec<ShadowReport> = shadow_all
        .into_iter()
        .filter(|s| s.key_status != s.oauth_status)
        .collect();
    let endpoints = endpoints(row);
    // Advice from every endpoint; the report lists the busiest.
    let scopes = advise(
        &endpoints,
        client.map(|c| c.scopes.as_slice()),
        &fallbacks,
        &shadow_findings,
    );
    let endpoints = shown(endpoints);
    let fallback_count = row.counts[Outcome::Fallback];
    let ready_after = config.audit.ready_after.as_secs() as i64;
    let quiet_since = |t: Option<i64>| t.is_none_or(|t| now - t >= ready_after);
    let (state, state_code) = match mode {
        None => ("no longer configured".to_owned(), "removed"),
        Some(Mode::Observe) => ("sending keys".to_owned(), "sending_keys"),
        Some(Mode::Shadow) => (
            format!(
                "sending keys (shadow: {} OAuth replays matched, {} differed)",
                shadow_matches,
                shadow_findings.iter().map(|s| s.count).sum::<u64>()
            ),
            "sending_keys",
        ),
        Some(Mode::Canary) => (
            format!(
                "canary ({}% OAuth, {} fallback{})",
                integration
                    .and_then(|i| i.plan.canary_percent())
                    .map_or(0, Percent::get),
                fallback_count,
                if fallback_count == 1 { "" } else { "s" }
            ),
            "canary",
        ),
        Some(Mode::Oauth) => {
            let since_mode = row.mode_since.is_some_and(|t| now - t >= ready_after);
            if since_mode && quiet_since(row.last_key_seen) && quiet_since(row.last_fallback) {
                (
                    "ready to disable the key in Coupa".to_owned(),
                    "ready_to_disable",
                )
            } else {
                ("on OAuth".to_owned(), "on_oauth")
            }
        }
        Some(Mode::Deny) => (
            "denied at the proxy (disable the key in Coupa)".to_owned(),
            "denied",
        ),
    };
    IntegrationReport {
        name: name.to_owned(),
        mode,
        client: client.map(|c| c.name.to_string()),
        instance: integration
            .and_then(|i| i.plan.instance())
            .map(|i| i.name.to_string()),
        canary_percent: integration
            .and_then(|i| i.plan.canary_percent())
            .map(Percent::get),
        shadow_percent: integration
            .and_then(|i| i.plan.shadow_percent())
            .map(Percent::get),
        state,
        state_code,
        sends_keys: !quiet_since(row.last_key_seen) || !quiet_since(row.last_fallback),
        requests: by_outcome(&row.counts),
        total: row.counts.total(),
        first_seen: row.first_seen.map(rfc3339),
        last_seen: row.last_seen.map(rfc3339),
        last_key_seen: row.last_key_seen.map(rfc3339),
        mode_since: row.mode_since.map(rfc3339),
        ip_addresses: row.ips.iter().map(|(v, _)| v.clone()).collect(),
        user_agents: row.user_agents.iter().map(|(v, _)| v.clone()).collect(),
        endpoints,
        fallbacks,
        shadow_findings,
        shadow_matches,
        scopes,
    }
}

/// The least scope set for what was used, against what is configured.
pub fn advise(
    endpoints: &[EndpointReport],
    configured: Option<&[String]>,
    fallbacks: &[FallbackReport],
    shadow_findings: &[ShadowReport],
) -> ScopeAdvice {
    let needed: BTreeSet<String> = endpoints.iter().filter_map(|e| e.scope.clone()).collect();
    let unknown_endpoints: Vec<String> = endpoints
        .iter()
        .filter(|e| e.scope.is_none())
        .map(|e| e.endpoint.clone())
        .collect();
    let implicated: BTreeSet<String> = fallbacks
        .iter()
        .filter_map(|f| f.scope.clone())
        .chain(shadow_findings.iter().filter_map(|s| s.scope.clone()))
        .collect();
    let requests_all_scopes = configured.is_some_and(|c| c.is_empty());
    let configured_set: BTreeSet<String> = configured.unwrap_or_default().iter().cloned().collect();
    let (missing, unused): (Vec<String>, Vec<String>) =
        if requests_all_scopes || configured.is_none() {
            (Vec::new(), Vec::new())
        } else {
            (
                needed.difference(&configured_set).cloned().collect(),
                if needed.is_empty() {
                    Vec::new()
                } else {
                    configured_set.difference(&needed).cloned().collect()
                },
            )
        };
    let list = |v: &BTreeSet<String>| v.iter().cloned().collect::<Vec<_>>().join(" ");
    let mut suggestion = if needed.is_empty() && unknown_endpoints.is_empty() {
        "no traffic yet: no advice".to_owned()
    } else if configured.is_none() {
        format!("create an OAuth client with scopes: {}", list(&needed))
    } else if requests_all_scopes {
        format!(
            "the client requests every granted scope (like the old admin key); request only: {}",
            list(&needed)
        )
    } else if !missing.is_empty() {
        format!("add scopes: {}", missing.join(" "))
    } else if !unused.is_empty() {
        format!(
            "scopes cover all traffic; consider removing: {}",
            unused.join(" ")
        )
    } else {
        "configured scopes are exactly what the traffic needs".to_owned()
    };
    if !unknown_endpoints.is_empty() {
        let _ = write!(
            suggestion,
            "; {} endpoint(s) with unknown scope: check /oauth2/scopes in Coupa",
            unknown_endpoints.len()
        );
    }
    ScopeAdvice {
        needed: needed.into_iter().collect(),
        configured: configured_set.into_iter().collect(),
        requests_all_scopes,
        missing,
        unused,
        implicated_by_fallbacks: implicated.into_iter().collect(),
        unknown_endpoints,
        suggestion,
    }
}

/// `keybridge audit --format table`.
pub fn render_table(r: &AuditReport) -> String {
    let header = [
        "INTEGRATION",
        "INSTANCE",
        "MODE",
        "STATE",
        "API_KEY",
        "OAUTH",
        "FALLBACK",
        "DENIED",
        "THROTTLED",
        "LAST SEEN",
        "NEEDED SCOPES",
        "CONFIGURED",
        "MISSING",
        "UNUSED",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for i in &r.integrations {
        rows.push(vec![
            i.name.clone(),
            or_dash(i.instance.clone().unwrap_or_default()),
            i.mode.map(|m| m.as_str()).unwrap_or("-").to_owned(),
            i.state.clone(),
            i.requests["api_key"].to_string(),
            i.requests["oauth"].to_string(),
            i.requests["fallback"].to_string(),
            i.requests["denied"].to_string(),
            i.requests["throttled"].to_string(),
            i.last_seen.clone().unwrap_or_else(|| "never".into()),
            or_dash(i.scopes.needed.join(" ")),
            if i.scopes.requests_all_scopes {
                "(all granted)".to_owned()
            } else {
                or_dash(i.scopes.configured.join(" "))
            },
            or_dash(i.scopes.missing.join(" ")),
            or_dash(i.scopes.unused.join(" ")),
        ]);
    }
    let mut out = table(&rows);
    let _ = writeln!(
        out,
        "\nIntegrations sending keys: {} of {}",
        r.integrations_sending_keys,
        plural(r.integrations.len(), "integration")
    );
    let _ = writeln!(
        out,
        "Key share of forwarded traffic: {}",
        r.key_share_percent
            .map(|p| format!("{p}%"))
            .unwrap_or_else(|| "no traffic".into())
    );
    if !r.unknown_keys.is_empty() {
        let mut rows = vec![vec![
            "UNKNOWN KEY".to_owned(),
            "REQUESTS".into(),
            "LAST SEEN".into(),
            "IPS".into(),
        ]];
        for u in &r.unknown_keys {
            rows.push(vec![
                u.name.clone(),
                u.total.to_string(),
                u.last_seen.clone().unwrap_or_default(),
                u.ip_addresses.join(" "),
            ]);
        }
        out.push('\n');
        out.push_str(&table(&rows));
    }
    out
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map(Vec::len).unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `keybridge audit --format csv`.
pub fn render_csv(r: &AuditReport) -> String {
    let mut out = String::from(
        "integration,mode,state,api_key,oauth,fallback,denied,native,rejected,throttled,last_seen,needed_scopes,configured_scopes,missing_scopes,unused_scopes\n",
    );
    for i in &r.integrations {
        let fields = [
            i.name.clone(),
            i.mode.map(|m| m.as_str()).unwrap_or("").to_owned(),
            i.state.clone(),
            i.requests["api_key"].to_string(),
            i.requests["oauth"].to_string(),
            i.requests["fallback"].to_string(),
            i.requests["denied"].to_string(),
            i.requests["native"].to_string(),
            i.requests["rejected"].to_string(),
            i.requests["throttled"].to_string(),
            i.last_seen.clone().unwrap_or_default(),
            i.scopes.needed.join(" "),
            if i.scopes.requests_all_scopes {
                "*".to_owned()
            } else {
                i.scopes.configured.join(" ")
            },
            i.scopes.missing.join(" "),
            i.scopes.unused.join(" "),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

fn csv_field(f: &str) -> String {
    // Quote always-safe; also defuse spreadsheet formulas.
    let f = if f.starts_with(['=', '+', '-', '@']) {
        format!("'{f}")
    } else {
        f.to_owned()
    };
    if f.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f
    }
}

/// `1 integration`, `3 integrations`.
pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(endpoint: &str) -> EndpointReport {
        EndpointReport {
            endpoint: endpoint.into(),
            count: 1,
            statuses: BTreeMap::new(),
            scope: scope_of(endpoint),
        }
    }

    #[test]
    fn advice_finds_missing_unused_and_unknown() {
        let eps = [
            ep("GET /api/invoices/:id"),
            ep("POST /api/invoices"),
            ep("GET /api/widgets"),
        ];
        let configured = vec![
            "core.invoice.read".to_owned(),
            "core.supplier.read".to_owned(),
        ];
        let a = advise(&eps, Some(&configured), &[], &[]);
        assert_eq!(a.needed, ["core.invoice.read", "core.invoice.write"]);
        assert_eq!(a.missing, ["core.invoice.write"]);
        assert_eq!(a.unused, ["core.supplier.read"]);
        assert_eq!(a.unknown_endpoints, ["GET /api/widgets"]);
        assert!(
            a.suggestion.contains("add scopes: core.invoice.write"),
            "{}",
            a.suggestion
        );

        let all = advise(&eps, Some(&[]), &[], &[]);
        assert!(all.requests_all_scopes && all.missing.is_empty());
        assert!(
            all.suggestion
                .contains("request only: core.invoice.read core.invoice.write")
        );
    }

    #[test]
    fn csv_quotes_and_defuses() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
        assert_eq!(
            csv_field("canary (30% OAuth, 1 fallback)"),
            "\"canary (30% OAuth, 1 fallback)\""
        );
    }
}

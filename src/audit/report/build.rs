//! Building the report: the store's snapshot and the current config, per integration
//! and for the callers that are not integrations, with busy lists capped.

use std::collections::BTreeMap;

use super::super::store::{Snapshot, SubjectRow};
use super::advice::{advise, scope_of};
use super::model::*;
use crate::config::{Config, Integration, Mode, Percent};
use crate::outcome::{Outcome, OutcomeMap};

fn by_outcome(counts: &OutcomeMap<u64>) -> BTreeMap<&'static str, u64> {
    counts.iter().map(|(o, c)| (o.as_str(), *c)).collect()
}

fn key_share(counts: &OutcomeMap<u64>) -> Option<f64> {
    let keyed = counts[Outcome::ApiKey] + counts[Outcome::Fallback];
    let forwarded = keyed + counts[Outcome::Oauth] + counts[Outcome::Native];
    (forwarded > 0).then(|| (keyed as f64 * 1000.0 / forwarded as f64).round() / 10.0)
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

//! Prometheus metrics (`GET /metrics` on the admin listener).
//!
//! Labels carry integration and client names only, never keys, fingerprints or tokens
//! (fingerprints would also be unbounded). Counters for configured integrations are
//! created at start-up and kept beside each integration, so the request path only
//! increments an atomic.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::audit::outcome::{Outcome, OutcomeMap};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    // Shared with the integration, and static strings: 10 000 integrations × 6 outcomes
    // label sets cost no allocation each (it was ~1.5 KB per integration with Strings).
    integration: Arc<str>,
    mode: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    client: String,
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabels {
    client: String,
}

/// All of keybridge's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_duration: Histogram,
    token_fetches: Family<FetchLabels, Counter>,
    token_expiry: Family<ClientLabels, Gauge>,
    audit_failures: Family<OpLabels, Counter>,
    token_shared: Family<SharedLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SharedLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

/// Request counters of one subject: pre-created for the outcomes it can have (so
/// `/metrics` shows no impossible series), created on first use for any other.
#[derive(Clone, Debug)]
pub struct OutcomeCounters {
    counters: OutcomeMap<Option<Counter>>,
    family: Family<RequestLabels, Counter>,
    integration: Arc<str>,
    mode: &'static str,
}

impl OutcomeCounters {
    pub fn inc(&self, outcome: Outcome) {
        match &self.counters[outcome] {
            Some(counter) => {
                counter.inc();
            }
            None => {
                self.family
                    .get_or_create(&RequestLabels {
                        integration: Arc::clone(&self.integration),
                        mode: self.mode,
                        outcome: outcome.as_str(),
                    })
                    .inc();
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "keybridge_requests",
            "Requests handled, by integration, mode and outcome",
            requests.clone(),
        );
        let upstream_duration = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0,
        ]);
        registry.register(
            "keybridge_upstream_duration_seconds",
            "Time from sending a request to Coupa until its response headers",
            upstream_duration.clone(),
        );
        let token_fetches = Family::<FetchLabels, Counter>::default();
        registry.register(
            "keybridge_token_fetches",
            "Token requests to Coupa's token endpoint, by client and result",
            token_fetches.clone(),
        );
        let token_expiry = Family::<ClientLabels, Gauge>::default();
        registry.register(
            "keybridge_token_expiry_seconds",
            "Unix time at which the client's current token expires",
            token_expiry.clone(),
        );
        let audit_failures = Family::<OpLabels, Counter>::default();
        registry.register(
            "keybridge_audit_failures",
            "Audit store operations that failed (flush, read, sync_modes); the data stays in memory",
            audit_failures.clone(),
        );
        let token_shared = Family::<SharedLabels, Counter>::default();
        registry.register(
            "keybridge_token_shared",
            "Tokens through the fleet's Redis cache: read (another replica's), written (fetched here for all), local (Redis unavailable: fetched for this replica only)",
            token_shared.clone(),
        );
        Metrics {
            token_shared,
            audit_failures,
            registry,
            requests,
            upstream_duration,
            token_fetches,
            token_expiry,
        }
    }

    /// Counters for one subject (an integration, or `(unknown key)`, …), pre-created
    /// for the outcomes in `possible`.
    pub fn outcome_counters(
        &self,
        integration: &Arc<str>,
        mode: &'static str,
        possible: &[Outcome],
    ) -> OutcomeCounters {
        OutcomeCounters {
            counters: OutcomeMap::from_fn(|o| {
                possible.contains(&o).then(|| {
                    self.requests
                        .get_or_create(&RequestLabels {
                            integration: Arc::clone(integration),
                            mode,
                            outcome: o.as_str(),
                        })
                        .clone()
                })
            }),
            family: self.requests.clone(),
            integration: Arc::clone(integration),
            mode,
        }
    }

    pub fn observe_upstream(&self, elapsed: Duration) {
        self.upstream_duration.observe(elapsed.as_secs_f64());
    }

    pub fn token_fetched(&self, client: &str, ok: bool, expires_unix: Option<i64>) {
        self.token_fetches
            .get_or_create(&FetchLabels {
                client: client.to_owned(),
                result: if ok { "ok" } else { "error" }.to_owned(),
            })
            .inc();
        if let Some(t) = expires_unix {
            self.token_expiry
                .get_or_create(&ClientLabels {
                    client: client.to_owned(),
                })
                .set(t);
        }
    }

    /// One token through the shared cache: `read`, `written` or `local`.
    pub fn token_shared(&self, result: &'static str) {
        self.token_shared
            .get_or_create(&SharedLabels { result })
            .inc();
    }

    /// The expiry of a token taken from the shared cache (no fetch of ours).
    pub fn token_expiry(&self, client: &str, expires_unix: i64) {
        self.token_expiry
            .get_or_create(&ClientLabels {
                client: client.to_owned(),
            })
            .set(expires_unix);
    }

    pub fn audit_failed(&self, op: &'static str) {
        self.audit_failures.get_or_create(&OpLabels { op }).inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

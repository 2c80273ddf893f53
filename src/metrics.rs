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

use crate::outcome::{Outcome, OutcomeMap};

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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    instance: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShareLabels {
    instance: Arc<str>,
    integration: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitedLabels {
    instance: Arc<str>,
    result: &'static str,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The shaping families (per instance, and per integration where it says so).
#[derive(Clone)]
struct ShapingFamilies {
    rate: Family<InstanceLabels, FloatGauge>,
    queue: Family<InstanceLabels, Gauge>,
    shared: Family<InstanceLabels, Gauge>,
    wait: Family<InstanceLabels, Histogram, fn() -> Histogram>,
    throttled: Family<ShareLabels, Counter>,
    coupa_limited: Family<LimitedLabels, Counter>,
    share: Family<ShareLabels, FloatGauge>,
}

fn wait_histogram() -> Histogram {
    Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
}

/// One instance's shaping metrics, kept by its shaper.
#[derive(Clone)]
pub struct ShapingMetrics {
    instance: Arc<str>,
    families: ShapingFamilies,
    wait: Histogram,
    absorbed: Counter,
    passed_back: Counter,
}

impl ShapingMetrics {
    /// A request waited `d` in the queue for its turn.
    pub fn waited(&self, d: Duration) {
        self.wait.observe(d.as_secs_f64());
    }

    /// keybridge answered a request of `flow` with 429 (no turn within its deadline).
    pub fn throttled(&self, flow: &Arc<str>) {
        self.families
            .throttled
            .get_or_create(&ShareLabels {
                instance: Arc::clone(&self.instance),
                integration: Arc::clone(flow),
            })
            .inc();
    }

    /// A 429/503 from Coupa: retried (`absorbed`) or given to the caller.
    pub fn coupa_limited(&self, absorbed: bool) {
        if absorbed {
            self.absorbed.inc();
        } else {
            self.passed_back.inc();
        }
    }

    /// 429/503s from Coupa so far: (absorbed, passed back).
    pub fn coupa_limited_counts(&self) -> (u64, u64) {
        (self.absorbed.get(), self.passed_back.get())
    }

    /// The gauges, set at scrape time.
    pub fn set_state(&self, rate: f64, queued: usize, shared: bool) {
        let labels = InstanceLabels {
            instance: Arc::clone(&self.instance),
        };
        self.families.rate.get_or_create(&labels).set(rate);
        self.families
            .queue
            .get_or_create(&labels)
            .set(i64::try_from(queued).unwrap_or(i64::MAX));
        self.families
            .shared
            .get_or_create(&labels)
            .set(i64::from(shared));
    }
}

/// All of keybridge's metrics.
pub struct Metrics {
    shaping: ShapingFamilies,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_duration: Histogram,
    token_fetches: Family<FetchLabels, Counter>,
    token_expiry: Family<ClientLabels, Gauge>,
    audit_failures: Family<OpLabels, Counter>,
    token_shared: Family<SharedLabels, Counter>,
    accept_failures: Family<ListenerLabels, Counter>,
    send_timeouts: Family<ListenerLabels, Counter>,
    clock_offset: FloatGauge,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
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
        let accept_failures = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "keybridge_accept_failures",
            "Connections a listener could not accept (EMFILE/ENFILE: out of file descriptors), each followed by a 100 ms pause",
            accept_failures.clone(),
        );
        let clock_offset = FloatGauge::default();
        registry.register(
            "keybridge_clock_offset_seconds",
            "This replica's clock minus the fleet's (Redis TIME), as last measured (0 until measured, or without fleet.redis_url)",
            clock_offset.clone(),
        );
        let send_timeouts = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "keybridge_send_timeouts",
            "Responses cut off because their caller accepted no bytes for server.send_timeout (HTTP/1: connection closed; HTTP/2: stream reset)",
            send_timeouts.clone(),
        );
        let shaping = ShapingFamilies {
            rate: Family::default(),
            queue: Family::default(),
            shared: Family::default(),
            wait: Family::new_with_constructor(wait_histogram),
            throttled: Family::default(),
            coupa_limited: Family::default(),
            share: Family::default(),
        };
        registry.register(
            "keybridge_shaping_rate",
            "Requests per second this replica lets go to the instance now (lower after a 429 from Coupa, recovering)",
            shaping.rate.clone(),
        );
        registry.register(
            "keybridge_shaping_queue_depth",
            "Requests waiting for their turn at the instance",
            shaping.queue.clone(),
        );
        registry.register(
            "keybridge_shaping_shared",
            "1 while the instance's budget is shared by the fleet through Redis, 0 while this replica keeps to its own share",
            shaping.shared.clone(),
        );
        registry.register(
            "keybridge_shaping_wait_seconds",
            "Time requests that queued waited for their turn",
            shaping.wait.clone(),
        );
        registry.register(
            "keybridge_shaping_throttled",
            "Requests keybridge answered with 429 because their turn would come after rate_limit.max_wait",
            shaping.throttled.clone(),
        );
        registry.register(
            "keybridge_coupa_rate_limited",
            "429 and 503 answers from Coupa: absorbed (retried after a backoff) or passed_back to the caller",
            shaping.coupa_limited.clone(),
        );
        registry.register(
            "keybridge_shaping_share",
            "The integration's share of its instance's budget when every integration queues",
            shaping.share.clone(),
        );
        Metrics {
            shaping,
            token_shared,
            accept_failures,
            send_timeouts,
            clock_offset,
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

    /// The accept-failure counter of `listener` (its setting name), shown at 0 from the
    /// start.
    pub fn accept_failures(&self, listener: &'static str) -> Counter {
        self.accept_failures
            .get_or_create(&ListenerLabels { listener })
            .clone()
    }

    /// The send-timeout counter of `listener` (its setting name), shown at 0 from the
    /// start.
    pub fn send_timeouts(&self, listener: &'static str) -> Counter {
        self.send_timeouts
            .get_or_create(&ListenerLabels { listener })
            .clone()
    }

    /// This replica's clock's offset from the fleet's (Redis `TIME`).
    pub fn clock_offset(&self, offset_ms: i64) {
        self.clock_offset.set(offset_ms as f64 / 1000.0);
    }

    /// One token through the shared cache: `read`, `written`, `local`, or
    /// `implausible` (a stored record ignored for its times).
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

    /// The shaping metrics of `instance`.
    pub fn shaping(&self, instance: &Arc<str>) -> ShapingMetrics {
        let f = &self.shaping;
        let labels = InstanceLabels {
            instance: Arc::clone(instance),
        };
        let limited = |result| {
            f.coupa_limited
                .get_or_create(&LimitedLabels {
                    instance: Arc::clone(instance),
                    result,
                })
                .clone()
        };
        ShapingMetrics {
            instance: Arc::clone(instance),
            families: f.clone(),
            wait: f.wait.get_or_create(&labels).clone(),
            absorbed: limited("absorbed"),
            passed_back: limited("passed_back"),
        }
    }

    /// `integration`'s share of `instance`'s budget.
    pub fn shaping_share(&self, instance: &Arc<str>, integration: &Arc<str>, share: f64) {
        self.shaping
            .share
            .get_or_create(&ShareLabels {
                instance: Arc::clone(instance),
                integration: Arc::clone(integration),
            })
            .set(share);
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

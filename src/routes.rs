//! Who may call, and what keybridge keeps beside each caller: built once per
//! configuration, shared by every worker, swapped whole on reload.
//!
//! [`Routes`] is the request path's whole view of the world except the upstream
//! connection pool (per worker): the key map of integrations with their audit slots and
//! metric counters, the policies for everyone else, the token cache, the recorder and
//! the shadow rate limit. A request takes one `Arc<Routes>` when it arrives and runs on
//! it to the end, so a reload never changes a request in progress.

use std::sync::Arc;

use crate::audit::{Recorder, Slot};
use crate::config::{Config, Integration};
use crate::cutover::RateLimiter;
use crate::keys::{Fingerprint, KeyMap};
use crate::metrics::{Metrics, OutcomeCounters};
use crate::token::TokenCache;

/// A configured integration and what the proxy keeps beside it.
pub struct Caller {
    pub integration: Arc<Integration>,
    pub audit: Arc<Slot>,
    pub counters: OutcomeCounters,
}

/// Counters for the callers that are not integrations.
pub struct Bystanders {
    pub unknown_key: OutcomeCounters,
    pub native: OutcomeCounters,
    pub anonymous: OutcomeCounters,
}

/// The state every request runs on.
pub struct Routes {
    pub config: Arc<Config>,
    pub tokens: TokenCache,
    pub recorder: Arc<Recorder>,
    pub metrics: Arc<Metrics>,
    pub shadow_limiter: Arc<RateLimiter>,
    /// Canary replay buffers, in KiB permits (`cutover.replay_buffer_budget`).
    pub replay_budget: Arc<tokio::sync::Semaphore>,
    pub bystanders: Bystanders,
    callers: KeyMap<Arc<Caller>>,
}

impl Routes {
    /// Builds the key map, slots and counters for `config`. The recorder must already
    /// hold a slot for every integration (see `Audit::adopt`).
    pub fn new(
        config: Arc<Config>,
        tokens: TokenCache,
        recorder: Arc<Recorder>,
        metrics: Arc<Metrics>,
        (shadow_limiter, replay_budget): (Arc<RateLimiter>, Arc<tokio::sync::Semaphore>),
    ) -> Self {
        let callers = KeyMap::new(config.integrations.iter().map(|i| {
            let caller = Caller {
                integration: Arc::clone(i),
                audit: recorder.slot(&i.name).unwrap_or_default(),
                counters: metrics.outcome_counters(&i.name, i.plan.mode().as_str()),
            };
            (i.fingerprint, Arc::new(caller))
        }));
        let bystanders = Bystanders {
            unknown_key: metrics
                .outcome_counters(&Arc::from("(unknown key)"), config.unknown_keys.as_str()),
            native: metrics.outcome_counters(
                &Arc::from("(bearer caller)"),
                config.bearer_requests.as_str(),
            ),
            anonymous: metrics.outcome_counters(&Arc::from("(no credentials)"), "-"),
        };
        Routes {
            config,
            tokens,
            recorder,
            metrics,
            shadow_limiter,
            replay_budget,
            bystanders,
            callers,
        }
    }

    /// The integration owning the raw `key`, with the key's fingerprint.
    pub fn caller(&self, key: &[u8]) -> (Fingerprint, Option<&Arc<Caller>>) {
        self.callers.lookup(key)
    }
}

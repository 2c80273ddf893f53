//! Traffic shaping: keep each Coupa instance under its rate limit for every caller
//! together, share it fairly, and absorb the 429s that still happen.
//!
//! Coupa allows 25 requests per second with a burst of 20 per instance and answers the
//! excess with 429 and no `Retry-After` (`shared/COUPA.md` §3.4). Every request to an
//! instance — integrations in any mode, bearer callers, unknown keys in `observe`,
//! shadow replays (which only take a free slot, never wait) and retries — takes a slot
//! of the instance's budget first ([`Shaper::acquire`]).
//!
//! - [`budget`]: the GCRA schedule and its AIMD cut, pure arithmetic.
//! - [`fair`]: the weighted fair queue of requests waiting for a slot.
//! - [`shaper`]: one instance's budget, queue and dispatcher.
//! - [`fleet`]: the schedule shared by replicas in Redis.
//! - [`flow`]: who a request counts for, and the answer when its turn does not come.

pub mod budget;
pub mod fair;
pub mod fleet;
pub mod flow;
mod report;
pub mod shaper;

use std::sync::Arc;

pub use fleet::{FleetBudget, FleetHealth};
pub use flow::{Flow, Throttled};
pub use report::RateLimitReport;
pub use shaper::Shaper;

use crate::config::{Config, Instance};
use crate::metrics::Metrics;

/// The shapers of every instance with a `rate_limit`, carried across reloads by name.
#[derive(Default)]
pub struct Shaping {
    shapers: Vec<Arc<Shaper>>,
}

impl Shaping {
    /// Shapers for `config`'s instances, reusing `previous`'s (their schedule and queue)
    /// for instances that keep their name.
    pub fn new(
        config: &Config,
        previous: Option<&Shaping>,
        fleet: Option<&Arc<FleetBudget>>,
        metrics: &Metrics,
    ) -> Shaping {
        let replicas = config.fleet.expected_replicas;
        let shapers = config
            .instances
            .values()
            .filter_map(|instance| {
                let limit = instance.rate_limit?;
                let kept = previous.and_then(|p| p.get(instance)).cloned();
                Some(match kept {
                    Some(shaper) => {
                        shaper.set_limit(limit, replicas);
                        shaper
                    }
                    None => Arc::new(Shaper::new(
                        Arc::clone(&instance.name),
                        limit,
                        replicas,
                        fleet.cloned(),
                        metrics.shaping(&instance.name),
                    )),
                })
            })
            .collect();
        let shaping = Shaping { shapers };
        shaping.publish_shares(config, metrics);
        shaping
    }

    /// The shaper of `instance`; `None` when its `rate_limit` is `off`.
    pub fn get(&self, instance: &Instance) -> Option<&Arc<Shaper>> {
        self.shapers
            .iter()
            .find(|s| Arc::ptr_eq(&s.instance, &instance.name) || *s.instance == *instance.name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Shaper>> {
        self.shapers.iter()
    }

    /// Updates the gauges read at scrape time (rate, queue, shared or not).
    pub fn export(&self) {
        for s in &self.shapers {
            s.metrics
                .set_state(s.current_rate(), s.queued(), s.shared());
        }
    }

    /// Each integration's share of its instance's budget when all of them queue.
    fn publish_shares(&self, config: &Config, metrics: &Metrics) {
        for shaper in &self.shapers {
            let on_it: Vec<_> = config
                .integrations
                .iter()
                .filter(|i| {
                    i.plan
                        .instance()
                        .is_some_and(|inst| *inst.name == *shaper.instance)
                })
                .collect();
            let total: u32 = on_it.iter().map(|i| i.share).sum();
            for i in on_it {
                metrics.shaping_share(
                    &shaper.instance,
                    &i.name,
                    f64::from(i.share) / f64::from(total.max(1)),
                );
            }
        }
    }
}

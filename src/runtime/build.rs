//! The one way a [`Config`] becomes the [`State`] requests run on, at start and at
//! reload alike: what survives a reload is decided here, once.
//!
//! A reload passes the state it replaces. Each part of [`Carried`] — limits and budgets
//! whose state (permits held, schedules, queues) belongs to requests in progress — is
//! kept when its setting is unchanged and built anew when it changed; at start every
//! part is new. Everything else in a [`State`] is built from the config every time.

use std::sync::Arc;

use crate::audit::Recorder;
use crate::bucket::RateLimiter;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::{Carried, State};
use crate::shaping::{FleetBudget, Shaping};
use crate::token::TokenCache;

/// What a state is built on besides its config: the process's long-lived services.
pub(super) struct Services<'a> {
    pub recorder: &'a Arc<Recorder>,
    pub metrics: &'a Arc<Metrics>,
    pub fleet_budget: Option<&'a Arc<FleetBudget>>,
}

/// The state for `config`, with `tokens` (already reconfigured for it), carrying over
/// from `current` (the state being replaced; `None` at start) what its settings allow.
pub(super) fn state(
    config: Arc<Config>,
    tokens: TokenCache,
    services: &Services<'_>,
    current: Option<&State>,
) -> State {
    let carried = carried(&config, services, current);
    State::new(
        config,
        tokens,
        Arc::clone(services.recorder),
        Arc::clone(services.metrics),
        carried,
    )
}

/// Each carried part: `current`'s when its setting is unchanged, else new.
fn carried(config: &Config, services: &Services<'_>, current: Option<&State>) -> Carried {
    let now = &config.cutover;
    let kept = |unchanged: &dyn Fn(&Config) -> bool| current.filter(|c| unchanged(&c.config));
    Carried {
        shadow_limiter: carry(
            kept(&|was| was.cutover.shadow_max_per_second == now.shadow_max_per_second)
                .map(|c| &c.shadow_limiter),
            || RateLimiter::new(now.shadow_max_per_second),
        ),
        // Its permits may be held by requests in progress.
        replay_budget: carry(
            kept(&|was| was.cutover.replay_buffer_budget == now.replay_buffer_budget)
                .map(|c| &c.replay_budget),
            || replay_budget(config),
        ),
        // Each instance's shaper carries over by name (its queue), with its new limit.
        shaping: Arc::new(Shaping::new(
            config,
            current.map(|c| &*c.shaping),
            services.fleet_budget,
            services.metrics,
        )),
    }
}

/// The part kept, or a new one.
fn carry<T>(kept: Option<&Arc<T>>, make: impl FnOnce() -> T) -> Arc<T> {
    kept.map_or_else(|| Arc::new(make()), Arc::clone)
}

/// The canary replay budget in KiB permits.
fn replay_budget(config: &Config) -> tokio::sync::Semaphore {
    let kib = usize::try_from(config.cutover.replay_buffer_budget / 1024).unwrap_or(usize::MAX);
    tokio::sync::Semaphore::new(kib.min(tokio::sync::Semaphore::MAX_PERMITS))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail by panicking")]

    use std::collections::HashMap;
    use std::path::Path;

    use super::*;

    fn config(shadow_per_second: u32, replay_bytes: u64) -> Arc<Config> {
        let yaml = format!(
            "instances: {{prod: {{base_url: 'https://acme.coupahost.com', rate_limit: {{per_second: 20}}}}}}\n\
             cutover: {{shadow_max_per_second: {shadow_per_second}, replay_buffer_budget: {replay_bytes}}}\n"
        );
        Arc::new(Config::from_yaml(&yaml, Path::new("."), &HashMap::new()).unwrap())
    }

    fn tokens(config: &Config, metrics: &Arc<Metrics>) -> TokenCache {
        TokenCache::new(
            config.clients.values(),
            crate::upstream::build_client(&config.upstream).unwrap(),
            config.token.clone(),
            Arc::clone(metrics),
            None,
        )
    }

    /// Start and reload are the same function: a reload with the same settings carries
    /// every carried part (the same objects, with their permits and queues); a changed
    /// setting gets its part anew, and only that one. (A field added to `Carried` must
    /// be given here, in `carried`, for both paths at once: there is no other
    /// constructor of a `State` outside tests.)
    #[tokio::test]
    async fn a_reload_carries_what_did_not_change_and_renews_what_did() {
        let metrics = Arc::new(Metrics::new());
        let recorder = Arc::new(Recorder::new(true, std::iter::empty(), 10));
        let services = Services {
            recorder: &recorder,
            metrics: &metrics,
            fleet_budget: None,
        };
        let first = config(5, 1 << 20);
        let start = state(
            Arc::clone(&first),
            tokens(&first, &metrics),
            &services,
            None,
        );
        let same = state(
            config(5, 1 << 20),
            tokens(&first, &metrics),
            &services,
            Some(&start),
        );
        assert!(Arc::ptr_eq(&start.shadow_limiter, &same.shadow_limiter));
        assert!(Arc::ptr_eq(&start.replay_budget, &same.replay_budget));
        let changed = state(
            config(9, 1 << 20),
            tokens(&first, &metrics),
            &services,
            Some(&same),
        );
        assert!(
            !Arc::ptr_eq(&same.shadow_limiter, &changed.shadow_limiter),
            "a new shadow rate is applied, not the old limiter kept"
        );
        assert!(Arc::ptr_eq(&same.replay_budget, &changed.replay_budget));
        let resized = state(
            config(9, 2 << 20),
            tokens(&first, &metrics),
            &services,
            Some(&changed),
        );
        assert!(!Arc::ptr_eq(&changed.replay_budget, &resized.replay_budget));
        assert_eq!(resized.replay_budget.available_permits(), 2048);
        // The shaper of an instance is carried by name, with its queue.
        let shaper = |s: &State| Arc::clone(s.shaping.iter().next().unwrap());
        assert!(Arc::ptr_eq(&shaper(&start), &shaper(&resized)));
    }
}

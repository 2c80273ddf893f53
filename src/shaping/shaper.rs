//! One instance's shaper: requests take a slot of the budget before they go to Coupa;
//! when there is none they wait in the fair queue for their turn, up to their deadline.
//!
//! - **Fast path.** Nobody waiting and a slot free: the request goes at once (one
//!   uncontended lock, a few float operations; with Redis, one script call).
//! - **Queue.** Otherwise the request is queued ([`FairQueue`]) unless its flow's
//!   expected wait already exceeds its deadline (then `429` at once, with that wait as
//!   `Retry-After`); a dispatcher task, started when the first request queues and
//!   ending when the queue is empty, hands out slots as the budget frees them.
//! - **Coupa's 429/503** cut the budget ([`Shaper::coupa_refused`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::budget::Budget;
use super::fair::{FairQueue, Ticket};
use super::fleet::{FleetBudget, Turn};
use super::flow::{Flow, Throttled};
use crate::config::RateLimit;
use crate::metrics::ShapingMetrics;

/// How far ahead the dispatcher reserves a slot of the shared schedule.
const HORIZON: Duration = Duration::from_secs(1);
/// `Retry-After` never says more than this (callers retry sooner and are told again).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

struct State {
    /// The fleet's budget for the instance.
    limit: RateLimit,
    /// This replica's part of it, kept locally without Redis or while it is down.
    local_limit: RateLimit,
    budget: Budget,
    queue: FairQueue<oneshot::Sender<()>>,
    /// A dispatcher task is running.
    driving: bool,
}

impl State {
    /// A slot of this replica's own share at `now`, or the µs until the next one.
    fn take_local(&mut self, now: f64) -> Result<(), f64> {
        self.budget.take(&self.local_limit, now)
    }
}

/// The shaper of one instance.
pub struct Shaper {
    pub instance: Arc<str>,
    epoch: Instant,
    state: Mutex<State>,
    fleet: Option<Arc<FleetBudget>>,
    pub metrics: ShapingMetrics,
    /// Requests answered 429 here.
    throttled: AtomicU64,
}

impl Shaper {
    pub fn new(
        instance: Arc<str>,
        limit: RateLimit,
        replicas: u32,
        fleet: Option<Arc<FleetBudget>>,
        metrics: ShapingMetrics,
    ) -> Shaper {
        Shaper {
            instance,
            epoch: Instant::now(),
            state: Mutex::new(State {
                limit,
                local_limit: limit.share_of(replicas),
                budget: Budget::default(),
                queue: FairQueue::default(),
                driving: false,
            }),
            fleet,
            metrics,
            throttled: AtomicU64::new(0),
        }
    }

    /// Applies a reloaded `rate_limit` (the schedule and the queue carry over).
    pub fn set_limit(&self, limit: RateLimit, replicas: u32) {
        let mut st = self.lock();
        st.limit = limit;
        st.local_limit = limit.share_of(replicas);
    }

    pub fn limit(&self) -> RateLimit {
        self.lock().limit
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn micros(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.epoch).as_secs_f64() * 1e6
    }

    /// The shared budget, while Redis answers.
    fn fleet(&self) -> Option<&FleetBudget> {
        self.fleet.as_deref().filter(|f| f.usable())
    }

    /// Waits for this request's turn, until `deadline`.
    pub async fn acquire(
        self: &Arc<Self>,
        flow: Flow<'_>,
        deadline: Instant,
    ) -> Result<(), Throttled> {
        match self.take_if_idle().await {
            Some(true) => Ok(()),
            Some(false) | None => self.wait_turn(flow, deadline).await,
        }
    }

    /// Takes a slot only if one is free now and nobody waits (shadow replays: extra
    /// requests that must never delay a caller's).
    pub async fn try_now(&self) -> bool {
        self.take_if_idle().await == Some(true)
    }

    /// With nobody waiting, a slot now: `Some(true)` taken, `Some(false)` none free;
    /// `None` when others are already waiting (a newcomer queues behind them).
    async fn take_if_idle(&self) -> Option<bool> {
        if let Some(fleet) = self.fleet() {
            let limit = self.idle_limit()?;
            // When Redis fails: this replica's share, below.
            if let Ok(slot) = fleet.take(&self.instance, &limit, Duration::ZERO).await {
                return Some(slot == Turn::Now);
            }
        }
        let now = self.micros(Instant::now());
        let mut st = self.lock();
        if !st.queue.is_empty() {
            return None;
        }
        Some(st.take_local(now).is_ok())
    }

    /// The fleet's limit, if nobody waits here.
    fn idle_limit(&self) -> Option<RateLimit> {
        let st = self.lock();
        st.queue.is_empty().then_some(st.limit)
    }

    async fn wait_turn(
        self: &Arc<Self>,
        flow: Flow<'_>,
        deadline: Instant,
    ) -> Result<(), Throttled> {
        let started = Instant::now();
        let (tx, rx) = oneshot::channel();
        let ticket = {
            let mut st = self.lock();
            let expected = self.expected_wait(&st, flow, started);
            if started + expected > deadline {
                drop(st);
                return Err(self.throttled(flow, expected));
            }
            let ticket = st.queue.push(flow.name, flow.weight, tx);
            if !st.driving {
                st.driving = true;
                tokio::spawn(Arc::clone(self).drive());
            }
            ticket
        };
        let place = Place {
            shaper: self,
            ticket,
        };
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(_) => {
                // Served (or, were the dispatcher gone, let through rather than stuck).
                std::mem::forget(place);
                self.metrics.waited(started.elapsed());
                Ok(())
            }
            Err(_) => {
                drop(place);
                let expected = self.expected_wait(&self.lock(), flow, Instant::now());
                Err(self.throttled(flow, expected))
            }
        }
    }

    /// How long a new request of `flow` would wait: its flow's backlog over its share of
    /// this replica's rate, or the time to the next slot when nobody waits.
    fn expected_wait(&self, st: &State, flow: Flow<'_>, now: Instant) -> Duration {
        let at = self.micros(now);
        let rate = st.budget.rate(&st.local_limit, at);
        let seconds = st.queue.expected_wait(flow.name, flow.weight, rate);
        Duration::try_from_secs_f64(seconds).unwrap_or(MAX_RETRY_AFTER)
    }

    fn throttled(&self, flow: Flow<'_>, expected: Duration) -> Throttled {
        self.metrics.throttled(flow.name);
        self.throttled.fetch_add(1, Ordering::Relaxed);
        Throttled {
            instance: Arc::clone(&self.instance),
            retry_after: retry_after(expected),
        }
    }

    /// A `Retry-After` for a 429 passed back from Coupa: when this replica's budget
    /// would next have room for one more request.
    pub fn retry_after_hint(&self) -> Duration {
        let st = self.lock();
        let rate = st.budget.rate(&st.local_limit, self.micros(Instant::now()));
        let seconds = (st.queue.len() + 1) as f64 / rate;
        retry_after(Duration::try_from_secs_f64(seconds).unwrap_or(MAX_RETRY_AFTER))
    }

    /// Coupa answered 429 or 503: cut the budget (the shared one too), and keep quiet for
    /// `retry_after` when Coupa gave one.
    pub async fn coupa_refused(&self, retry_after: Option<Duration>) {
        let now = self.micros(Instant::now());
        let limit = {
            let mut st = self.lock();
            let State {
                budget,
                local_limit,
                limit,
                ..
            } = &mut *st;
            if budget.cut(local_limit, now, retry_after.map(|d| d.as_secs_f64() * 1e6)) {
                tracing::info!(instance = %self.instance, rate = budget.rate(local_limit, now), "Coupa is limiting this instance: rate cut, recovering over the next seconds");
            }
            *limit
        };
        if let Some(fleet) = self.fleet() {
            let _ = fleet.cut(&self.instance, &limit, retry_after).await;
        }
    }

    /// Requests now waiting.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// The rate this replica keeps to now (its local share; the fleet's when shared).
    pub fn current_rate(&self) -> f64 {
        let st = self.lock();
        let now = self.micros(Instant::now());
        match self.fleet.as_deref() {
            Some(f) if f.usable() => st.budget.rate(&st.limit, now),
            _ => st.budget.rate(&st.local_limit, now),
        }
    }

    /// The live state for `/audit` and the dashboard.
    pub fn report(&self) -> super::report::RateLimitReport {
        let limit = self.limit();
        let (absorbed, passed_back) = self.metrics.coupa_limited_counts();
        super::report::RateLimitReport {
            instance: self.instance.to_string(),
            per_second: limit.per_second,
            burst: limit.burst,
            max_wait_seconds: limit.max_wait.as_secs_f64(),
            current_per_second: (self.current_rate() * 100.0).round() / 100.0,
            queued: self.queued(),
            shared: self.fleet.as_ref().map(|_| self.shared()),
            throttled: self.throttled.load(Ordering::Relaxed),
            coupa_limited_absorbed: absorbed,
            coupa_limited_passed_back: passed_back,
        }
    }

    /// Whether the budget is shared through Redis right now.
    pub fn shared(&self) -> bool {
        self.fleet().is_some()
    }

    /// Hands out slots while anyone waits; ends (and is started again) when nobody does.
    async fn drive(self: Arc<Self>) {
        loop {
            if let Some(fleet) = self.fleet() {
                let limit = {
                    let mut st = self.lock();
                    if st.queue.is_empty() {
                        st.driving = false;
                        return;
                    }
                    st.limit
                };
                match fleet.take(&self.instance, &limit, HORIZON).await {
                    Ok(Turn::Now) => {}
                    Ok(Turn::In(wait)) => tokio::time::sleep(wait).await,
                    Ok(Turn::NotBefore(wait)) => {
                        tokio::time::sleep(wait.min(HORIZON)).await;
                        continue;
                    }
                    Err(()) => continue, // this replica's share from now on
                }
                self.hand_out();
                continue;
            }
            let wait = {
                let now = self.micros(Instant::now());
                let mut st = self.lock();
                if st.queue.is_empty() {
                    st.driving = false;
                    return;
                }
                match st.take_local(now) {
                    Ok(()) => None,
                    Err(us) => Some(Duration::from_secs_f64(us / 1e6)),
                }
            };
            match wait {
                None => self.hand_out(),
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Gives a taken slot to the next live request in fair order.
    fn hand_out(&self) {
        let mut st = self.lock();
        while let Some(waiter) = st.queue.pop() {
            if waiter.send(()).is_ok() {
                return;
            }
        }
    }
}

/// A request's place in the queue; given up when the request stops waiting.
struct Place<'a> {
    shaper: &'a Shaper,
    ticket: Ticket,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.shaper.lock().queue.remove(self.ticket);
    }
}

/// Whole seconds, at least 1, at most [`MAX_RETRY_AFTER`].
fn retry_after(expected: Duration) -> Duration {
    let secs = expected.as_secs() + u64::from(expected.subsec_nanos() > 0);
    Duration::from_secs(secs.clamp(1, MAX_RETRY_AFTER.as_secs()))
}

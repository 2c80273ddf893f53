//! Weighted fair queueing of the requests waiting for an instance's budget.
//!
//! Self-clocked fair queueing (Golestani, 1994): a request of flow *i* (an integration,
//! or the bearer callers, or the unknown keys) gets the tag `max(V, Fᵢ) + 1/wᵢ`, where
//! `Fᵢ` is the tag of the flow's previous request and `V` the tag of the request served
//! last; the smallest tag goes next. A flow that sends a thousand requests queues them
//! behind each other's tags, so a newcomer with one request goes almost at once: a bulk
//! export cannot starve the ERP sync, and a flow with weight 2 gets twice the turns.
//! Tags are integers (no floating point drift); entries are removed when their caller
//! gives up, so the queue holds only live requests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A tag step for weight 1; weight `w` steps `SCALE / w`.
const SCALE: u64 = 1 << 20;

/// A place in the queue, to give it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket {
    tag: u64,
    seq: u64,
}

struct Entry<T> {
    flow: Arc<str>,
    item: T,
}

#[derive(Debug)]
struct Flow {
    /// Tag of the flow's latest request.
    finish: u64,
    queued: u32,
    weight: u32,
}

/// Waiting requests in fair order.
pub struct FairQueue<T> {
    entries: BTreeMap<Ticket, Entry<T>>,
    flows: HashMap<Arc<str>, Flow>,
    /// Tag of the request served last.
    virtual_time: u64,
    seq: u64,
    /// Sum of the weights of flows with requests queued.
    active_weight: u64,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue {
            entries: BTreeMap::new(),
            flows: HashMap::new(),
            virtual_time: 0,
            seq: 0,
            active_weight: 0,
        }
    }
}

impl<T> FairQueue<T> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Queues `item` for `flow` (weight at least 1).
    pub fn push(&mut self, flow: &Arc<str>, weight: u32, item: T) -> Ticket {
        let weight = weight.max(1);
        let now = self.virtual_time;
        let state = self.flows.entry(Arc::clone(flow)).or_insert(Flow {
            finish: now,
            queued: 0,
            weight,
        });
        if state.queued == 0 {
            state.weight = weight;
            self.active_weight += u64::from(weight);
        }
        state.queued += 1;
        state.finish = state.finish.max(now) + SCALE / u64::from(state.weight);
        self.seq += 1;
        let ticket = Ticket {
            tag: state.finish,
            seq: self.seq,
        };
        self.entries.insert(
            ticket,
            Entry {
                flow: Arc::clone(flow),
                item,
            },
        );
        ticket
    }

    /// The next request in fair order.
    pub fn pop(&mut self) -> Option<T> {
        let (ticket, entry) = self.entries.pop_first()?;
        self.virtual_time = self.virtual_time.max(ticket.tag);
        self.left(&entry.flow, false);
        Some(entry.item)
    }

    /// Takes a request out (its caller gave up); `None` if it was already served.
    pub fn remove(&mut self, ticket: Ticket) -> Option<T> {
        let entry = self.entries.remove(&ticket)?;
        self.left(&entry.flow, true);
        Some(entry.item)
    }

    fn left(&mut self, flow: &Arc<str>, gave_up: bool) {
        let Some(state) = self.flows.get_mut(flow) else {
            return;
        };
        state.queued -= 1;
        if state.queued > 0 {
            return;
        }
        self.active_weight -= u64::from(state.weight);
        if gave_up {
            // Requests that were never served do not count against the flow's turns.
            state.finish = self.virtual_time;
        }
        if state.finish <= self.virtual_time {
            // Idle and not ahead of the clock: nothing to remember (keeps the map to
            // the flows that are waiting or were just served).
            self.flows.remove(flow);
        }
    }

    /// Seconds until a new request of `flow` would be served at `rate` requests per
    /// second, if the flows now waiting keep their shares.
    pub fn expected_wait(&self, flow: &str, weight: u32, rate: f64) -> f64 {
        let weight = u64::from(weight.max(1));
        let (ahead, active) = match self.flows.get(flow) {
            Some(f) if f.queued > 0 => (u64::from(f.queued), self.active_weight),
            _ => (0, self.active_weight + weight),
        };
        let share = rate * weight as f64 / active as f64;
        (ahead + 1) as f64 / share
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    /// Serves `n` from a queue where every flow keeps `backlog` waiting.
    fn serve(weights: &[(&str, u32)], n: usize) -> HashMap<String, usize> {
        let mut q = FairQueue::default();
        for (flow, w) in weights {
            for _ in 0..50 {
                q.push(&name(flow), *w, flow.to_string());
            }
        }
        let mut served = HashMap::new();
        for _ in 0..n {
            let flow = q.pop().unwrap();
            q.push(
                &name(&flow),
                weights.iter().find(|(f, _)| *f == flow).unwrap().1,
                flow.clone(),
            );
            *served.entry(flow).or_default() += 1;
        }
        served
    }

    #[test]
    fn backlogged_flows_get_turns_by_weight() {
        let equal = serve(&[("a", 1), ("b", 1), ("c", 1)], 300);
        assert_eq!((equal["a"], equal["b"], equal["c"]), (100, 100, 100));
        let weighted = serve(&[("a", 2), ("b", 1), ("c", 1)], 400);
        assert_eq!(
            (weighted["a"], weighted["b"], weighted["c"]),
            (200, 100, 100)
        );
    }

    #[test]
    fn a_newcomer_goes_before_a_bulk_backlog() {
        let mut q = FairQueue::default();
        for i in 0..1000 {
            q.push(&name("bulk"), 1, format!("bulk{i}"));
        }
        q.pop();
        q.push(&name("erp"), 1, "erp".to_owned());
        let next: Vec<_> = (0..2).filter_map(|_| q.pop()).collect();
        assert!(next.contains(&"erp".to_owned()), "{next:?}");
    }

    #[test]
    fn removed_requests_leave_no_trace() {
        let mut q = FairQueue::default();
        let tickets: Vec<_> = (0..10).map(|i| q.push(&name("a"), 1, i)).collect();
        for t in &tickets {
            assert!(q.remove(*t).is_some());
        }
        assert!(q.remove(tickets[0]).is_none(), "already gone");
        assert!(q.is_empty());
        assert_eq!(q.active_weight, 0);
        assert!(q.flows.is_empty(), "idle flows are forgotten");
        // The flow that gave up is not behind another that never waited.
        q.push(&name("a"), 1, 100);
        q.push(&name("b"), 1, 200);
        assert_eq!(q.pop(), Some(100));
    }

    #[test]
    fn the_expected_wait_is_the_flows_backlog_over_its_share() {
        let mut q = FairQueue::default();
        for _ in 0..100 {
            q.push(&name("bulk"), 1, ());
        }
        // bulk: 101st at a full 25/s share.
        assert!((q.expected_wait("bulk", 1, 25.0) - 101.0 / 25.0).abs() < 1e-9);
        // A newcomer splits the rate with bulk: one request at 12.5/s.
        assert!((q.expected_wait("erp", 1, 25.0) - 1.0 / 12.5).abs() < 1e-9);
        // Weight 3 against 1: three quarters of the rate.
        assert!((q.expected_wait("erp", 3, 20.0) - 1.0 / 15.0).abs() < 1e-9);
    }
}

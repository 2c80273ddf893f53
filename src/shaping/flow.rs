//! Who a request counts for in its instance's queue, and what it gets when its turn
//! does not come in time.

use std::sync::Arc;
use std::time::Duration;

/// Who a request counts for in the fair queue.
#[derive(Debug, Clone, Copy)]
pub struct Flow<'a> {
    pub name: &'a Arc<str>,
    pub weight: u32,
}

/// A request that could not get a slot in time: `429` with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttled {
    pub instance: Arc<str>,
    pub retry_after: Duration,
}

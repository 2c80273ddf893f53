//! One request (floor 4), one step per file, in the order a request meets them. Each
//! step adds its methods to [`view::Proxy`], the per-request view they all share (a
//! leaf: the state current when the request arrived, this worker's upstream, the
//! caller's address); the state itself ([`State`], built by `runtime::build`) is the
//! leaf [`state`].
//!
//! 1. [`service`]: the tower service for one caller connection; takes the current
//!    [`State`] and hands the request to [`view::Proxy`]`::handle`.
//! 2. [`handle`]: refuses what can't be proxied (`admit`), then
//! 3. [`dispatch`]: who is calling (key → integration, unknown key, bearer, nobody) and
//!    which route their plan picks ([`cutover::route`]);
//! 4. [`forward`]: the request built for Coupa ([`outbound`], [`headers`], [`crate::paths`]), sent
//!    in its turn at the instance ([`pace`]: the rate limit, Coupa's 429s waited out)
//!    ([`send`]), resent where [`retry`] says so, passed back;
//!    [`shadow`] replays run beside it;
//! 5. [`record`]: whatever happened, recorded once for the audit, the metrics and the
//!    access log.
//!
//! Every failure is a `ProxyError` ([`error`]), turned into a response in one place;
//! what dispatch did with a request travels as a [`handled::Handled`].

mod cutover;
mod dispatch;
pub mod error;
mod forward;
mod handle;
mod handled;
pub mod headers;
mod outbound;
mod pace;
mod peer;
mod record;
mod retry;
mod send;
mod service;
mod shadow;
mod state;
#[cfg(test)]
mod tests;
mod view;

pub use crate::upstream::{ServiceUpstream, Upstream};
pub use peer::Peer;
pub use service::ProxyService;
pub use state::{Bystanders, Caller, Carried, State};

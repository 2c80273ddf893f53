//! Bearer tokens for the configured OAuth clients.
//!
//! [`oauth`] speaks the client-credentials grant; [`cache`] keeps one token per client
//! in moka, fetches it once for all concurrent callers, refreshes it in the background
//! ahead of expiry and never hands out a token younger than Coupa's settle delay;
//! [`shared`] keeps each client's token in Redis for a fleet, and `fleet` is the
//! protocol by which replicas share one token per client through it.

pub mod cache;
mod fleet;
pub mod oauth;
pub mod shared;

pub use cache::{ClientStatus, Token, TokenCache};
pub use oauth::TokenError;

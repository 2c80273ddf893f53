//! keybridge: an authenticating reverse proxy that lets integrations keep sending
//! Coupa's retired `X-COUPA-API-KEY` while Coupa sees OAuth 2.0 bearer tokens.
//!
//! The request flow, one step per module:
//! 1. [`server`] accepts HTTP/1.1 and HTTP/2 and hands each request to the `stack`
//!    (in-flight cap, sensitive headers), then to the [`proxy`].
//! 2. The proxy admits it, finds the caller — SHA-256 fingerprint → integration in the
//!    [`proxy::State`] built once per configuration ([`keys`]) — and lets the integration's plan
//!    pick the route (`cutover`).
//! 3. It takes the client's token from the [`token`] cache (fetched once, refreshed
//!    ahead of expiry, never younger than the settle delay).
//! 4. It rewrites the request (hop-by-hop and key headers out, bearer in, always to the
//!    configured instance) and forwards it over the worker's pooled rustls client
//!    ([`upstream`]), streaming both ways; failures become JSON errors in one place.
//! 5. It records the request for the `audit`, the [`metrics`] and the access log.
//!
//! [`config`] is parsed and validated once; `reload` swaps it; `admin` serves health,
//! readiness, metrics, the audit and the dashboard; [`commands`] are the CLI's
//! subcommands; [`mock`] is a mock Coupa for tests and the [`demo`].

mod admin;
pub mod audit;
mod body;
mod bucket;
pub mod cli;
pub mod commands;
pub mod config;
mod credentials;
pub mod demo;
mod health;
pub mod keys;
mod log;
mod memory;
pub mod metrics;
pub mod mock;
pub mod outcome;
pub mod paths;
pub mod proxy;
mod redis_link;
mod reload;
mod respond;
mod scopes;
pub mod server;
pub mod shaping;
mod stack;
mod tls;
pub mod token;
pub mod upstream;

//! keybridge: an authenticating reverse proxy that lets integrations keep sending
//! Coupa's retired `X-COUPA-API-KEY` while Coupa sees OAuth 2.0 bearer tokens.
//!
//! The request flow, one step per module:
//! 1. [`server`] accepts HTTP/1.1 and HTTP/2 and hands each request to the [`stack`].
//! 2. [`proxy`] authenticates the key: SHA-256 fingerprint → integration ([`keys`]).
//! 3. It picks the integration's client token from the [`token`] cache (fetched once,
//!    refreshed ahead of expiry, never younger than the settle delay).
//! 4. It rewrites the request ([`proxy::headers`], [`proxy::uri`]): hop-by-hop and key
//!    headers out, bearer in, always to the configured instance.
//! 5. It forwards over the pooled rustls client ([`upstream`]) and streams the response
//!    back; failures become JSON errors in one place ([`error`]).
//!
//! [`config`] is parsed and validated once; [`admin`] serves health and readiness;
//! [`mock`] is a mock Coupa for tests and the [`demo`].

pub mod admin;
pub mod audit;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod cutover;
pub mod demo;
pub mod error;
pub mod keys;
pub mod memory;
pub mod metrics;
pub mod mock;
pub mod proxy;
pub mod scopes;
pub mod server;
pub mod stack;
pub mod tls;
pub mod token;
pub mod upstream;

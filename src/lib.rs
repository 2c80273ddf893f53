//! keybridge: an authenticating reverse proxy that lets integrations keep sending
//! Coupa's retired `X-COUPA-API-KEY` while Coupa sees OAuth 2.0 bearer tokens.
//!
//! # The house, bottom up
//! Every module stands on a floor and imports only its own floor or lower
//! (`tests/architecture.rs` holds that, and that nothing imports in a cycle):
//!
//! 6. [`cli`] — the binary's faces: run, check, audit, test-credentials, health, demo,
//!    the mock Coupa. Nothing imports it but `main.rs`.
//! 5. [`runtime`] — one process: listeners, workers, the admin listener, and `build`,
//!    which turns a config into the state requests run on, at start and reload alike.
//! 4. [`proxy`] — one request, read top-down from `handle.rs`; its state
//!    ([`proxy::State`]) and the per-request view are leaves of their own.
//! 3. Services, each talking to one outside system: [`token`] (Coupa's token endpoint,
//!    Redis), [`upstream`] (Coupa's API), [`audit`] (SQLite, PostgreSQL), [`shaping`]
//!    (Coupa's rate limit, Redis), `tls`, `redis_link`, [`metrics`] (Prometheus).
//! 2. [`config`] — plain serde types, validated once into typed values.
//! 1. Vocabulary that imports nothing of the crate: `body`, `bucket` (token bucket),
//!    [`keys`], `log`, `memory` (allocator control), [`outcome`], [`paths`] (path rules
//!    and target encoding), `respond` (synthetic responses), `scopes`.
//!
//! # A request, top to bottom
//! 1. [`runtime`] accepts HTTP/1.1 or HTTP/2 and hands each request through its tower
//!    stack (in-flight cap, sensitive headers) to [`proxy::ProxyService`].
//! 2. The proxy admits it, finds the caller — SHA-256 fingerprint → integration in the
//!    [`proxy::State`] built once per configuration ([`keys`]) — and lets the
//!    integration's plan pick the route.
//! 3. It takes the client's token from the [`token`] cache (fetched once, refreshed
//!    ahead of expiry, never younger than the settle delay).
//! 4. It rewrites the request (hop-by-hop and key headers out, bearer in, always to the
//!    configured instance) and forwards it over the worker's pooled rustls client
//!    ([`upstream`]), in its turn at the instance ([`shaping`]), streaming both ways;
//!    failures become responses in one place ([`proxy::error`]).
//! 5. It records the request for the [`audit`], the [`metrics`] and the access log.

// The crate's docs are for the people who work on it: CI builds them with
// `--document-private-items`, where module docs may link to private steps.
#![allow(rustdoc::private_intra_doc_links)]

// Floor 1: vocabulary.
mod body;
mod bucket;
pub mod keys;
mod log;
mod memory;
pub mod outcome;
pub mod paths;
mod respond;
mod scopes;
// Floor 2.
pub mod config;
// Floor 3: services.
pub mod audit;
pub mod metrics;
mod redis_link;
pub mod shaping;
mod tls;
pub mod token;
pub mod upstream;
// Floor 4.
pub mod proxy;
// Floor 5.
pub mod runtime;
// Floor 6.
pub mod cli;

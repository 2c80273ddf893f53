//! What the audit needs from a store, whichever engine holds it.
//!
//! The recorder aggregates in memory; every flush hands a [`Batch`] to an [`AuditStore`],
//! which adds it to its totals (additive upserts: counts add, first-seen keeps the
//! minimum, last-seen the maximum), so any number of writers yield exact totals. The
//! report reads a [`Snapshot`]. A store opens and migrates its schema when it is
//! created, refusing a schema newer than this binary knows.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use super::recorder::{Subject, Window};
use crate::config::Mode;
use crate::outcome::OutcomeMap;

/// One flush: every subject's window since the last one.
pub type Batch = Vec<(Subject, Window)>;

/// A store call in progress.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// An audit store. Calls never block the runtime.
pub trait AuditStore: Send + Sync {
    /// Which store this is, for logs (`SQLite /var/lib/keybridge/audit.db`).
    fn describe(&self) -> String;
    /// Adds one flush's aggregates. Unknown keys beyond `max_unknown_keys` distinct
    /// fingerprints are counted under one overflow subject.
    ///
    /// `id` names the flush: a store that may fail without knowing whether the write
    /// landed ([`StoreError::InDoubt`]) records it with the data and skips a flush it
    /// already holds, so a retry under the same id is never counted twice.
    fn apply(
        &self,
        id: i64,
        batch: Arc<Batch>,
        now: i64,
        max_unknown_keys: usize,
    ) -> StoreFuture<'_, ()>;
    /// Reads everything the report needs.
    fn snapshot(&self) -> StoreFuture<'_, Snapshot>;
    /// Records each integration's configured mode, restarting `mode_since` on change.
    fn sync_modes(&self, modes: Vec<(Arc<str>, Mode)>, now: i64) -> StoreFuture<'_, ()>;
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // The cause is part of the message, not a `source`: printed once, not twice.
    #[error("audit store {path}: {cause}")]
    Sqlite {
        path: PathBuf,
        cause: rusqlite::Error,
    },
    #[error("audit store task failed: {0}")]
    Task(String),
    /// PostgreSQL could not be reached or refused a statement. `target` is
    /// `host:port/dbname`: never the user or password of the URL.
    #[error("audit store PostgreSQL {target}: {cause}")]
    Postgres { target: String, cause: String },
    #[error("{0}")]
    Config(String),
    /// No answer in time: the flush may or may not have been written. The audit keeps
    /// the batch apart and retries it under the same id.
    #[error(
        "audit store {target}: {cause}; the flush may have been written: it is retried under the same id, never counted twice"
    )]
    InDoubt { target: String, cause: String },
    /// The store could not be created or opened at start: says which setting to change.
    #[error("cannot open the audit store {path} (set by `audit.path`): {cause}{}", hint(.denied))]
    Open {
        path: PathBuf,
        cause: String,
        /// The directory is missing, read-only or not writable by this process.
        denied: bool,
    },
    #[error(
        "audit store {path} has schema version {found}, newer than this keybridge knows ({known}); upgrade keybridge"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
}

/// Everything the report needs, read in one go.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub subjects: BTreeMap<(String, String), SubjectRow>,
    /// (minute, counts by outcome).
    pub traffic: Vec<(i64, OutcomeMap<u64>)>,
    /// The replicas that flush into this store, and when each last did.
    pub replicas: Vec<ReplicaRow>,
}

/// A replica that reports to the store (`fleet.replica`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRow {
    pub name: String,
    /// Unix seconds of its first flush.
    pub first_seen: i64,
    /// Unix seconds of its last flush (every `audit.flush_interval`, traffic or not).
    pub last_flush: i64,
}

#[derive(Debug, Default, Clone)]
pub struct SubjectRow {
    pub first_seen: Option<i64>,
    pub last_seen: Option<i64>,
    pub last_key_seen: Option<i64>,
    pub last_fallback: Option<i64>,
    pub mode: Option<String>,
    pub mode_since: Option<i64>,
    pub counts: OutcomeMap<u64>,
    /// endpoint → status → count.
    pub endpoints: BTreeMap<String, BTreeMap<u16, u64>>,
    pub fallbacks: Vec<(String, u16, u64)>,
    pub shadow: Vec<(String, u16, u16, u64)>,
    pub ips: Vec<(String, u64)>,
    pub user_agents: Vec<(String, u64)>,
}

fn hint(denied: &bool) -> &'static str {
    if *denied {
        ". Its directory must exist and be writable by this process: point `audit.path` at a writable place (a volume under Docker, StateDirectory= under systemd), or set `audit.enabled: false`"
    } else {
        ""
    }
}

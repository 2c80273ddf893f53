//! The migration audit: who still sends API keys, to which endpoints, and which OAuth
//! scopes their clients need.
//!
//! [`recorder`] aggregates on the request path (one uncontended lock per request, no
//! I/O); a background task hands the aggregates to an [`AuditStore`] ([`sqlite`] is the
//! embedded one, [`postgres`] the fleet's shared one) every `flush_interval`; [`report`] turns a store's [`Snapshot`] into
//! the per-integration view shown by `keybridge audit`, `GET /audit` and the dashboard.

mod caps;
mod postgres;
pub(crate) mod recorder;
pub(crate) mod report;
mod sqlite;
mod store;
pub mod template;

use std::sync::Arc;

pub use crate::outcome::{Outcome, OutcomeMap};
pub use recorder::{Event, Recorder, Slot, Subject, unix_now};
pub use store::{AuditStore, Snapshot, StoreError};

use crate::config::{AuditSettings, Config, Mode};
use crate::metrics::Metrics;
use report::AuditReport;

pub use sqlite::backup;

/// The configured store: PostgreSQL with `audit.postgres_url` (shared by the fleet),
/// else the SQLite file. A PostgreSQL that cannot be reached yet is not an error here
/// (keybridge serves, the audit waits in memory); a schema newer than this binary is.
pub async fn open_store(
    settings: &AuditSettings,
    replica: &str,
) -> Result<Arc<dyn AuditStore>, StoreError> {
    if let Some(url) = &settings.postgres_url {
        let store = postgres::PostgresStore::new(
            url,
            settings.postgres_ca_file.as_deref(),
            replica,
            settings.retention,
        )?;
        // Bounded: a database that hangs (or a lock held elsewhere) never holds the start.
        let migrated = tokio::time::timeout(std::time::Duration::from_secs(30), store.migrate())
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Postgres {
                    target: store.describe(),
                    cause: "schema check did not finish within 30 s".to_owned(),
                })
            });
        match migrated {
            Ok(()) => {}
            Err(e @ StoreError::TooNew { .. }) => return Err(e),
            Err(e) => tracing::warn!(
                error = %e,
                "the PostgreSQL audit cannot be reached yet: requests are served, the audit is kept in memory and written when it is back"
            ),
        }
        return Ok(Arc::new(store));
    }
    Ok(Arc::new(Arc::new(sqlite::SqliteStore::open(
        &settings.path,
        settings.retention,
        replica,
    )?)))
}

fn modes(config: &Config) -> Vec<(Arc<str>, Mode)> {
    config
        .integrations
        .iter()
        .map(|i| (Arc::clone(&i.name), i.plan.mode()))
        .collect()
}

/// The recorder and its store, with the flushing between them.
///
/// The store is never on the request path and never blocks a reload: a failing store
/// degrades the audit (logged, counted in `keybridge_audit_failures`, shown by
/// `/readyz`) while requests and reloads go on, and what it could not write stays in
/// memory for the next flush.
pub struct Audit {
    pub recorder: Arc<Recorder>,
    store: Option<Arc<dyn AuditStore>>,
    max_unknown_keys: usize,
    metrics: Arc<Metrics>,
    /// The last store error, until a store call succeeds again.
    degraded: std::sync::Mutex<Option<String>>,
    /// The configured modes, recorded in the store in the background (latest wins).
    modes: tokio::sync::watch::Sender<Vec<(Arc<str>, Mode)>>,
    /// Serialises flushes (background, on demand, at shutdown).
    flushing: tokio::sync::Mutex<()>,
    /// The modes could not be recorded at start (a shared store away): the flusher
    /// records them once it can.
    modes_unsynced: std::sync::atomic::AtomicBool,
    /// A flush that timed out, perhaps written: retried under its id before the next
    /// (one at most; the recorder keeps aggregating meanwhile, under its caps).
    in_doubt: std::sync::Mutex<Option<(i64, Arc<store::Batch>)>>,
}

impl Audit {
    /// Opens the store (if the audit is enabled) and records the configured modes.
    pub async fn open(config: &Config, metrics: Arc<Metrics>) -> Result<Audit, StoreError> {
        let settings = &config.audit;
        let recorder = Arc::new(Recorder::new(
            settings.enabled,
            config.integrations.iter().map(|i| &i.name),
            settings.max_unknown_keys,
        ));
        let mut modes_unsynced = false;
        let mut degraded = None;
        let store = if settings.enabled {
            let store = open_store(settings, &config.replica).await?;
            match store.sync_modes(modes(config), unix_now()).await {
                Ok(()) => {}
                // A shared store may be away at start; the flusher retries.
                Err(e) if settings.postgres_url.is_some() => {
                    metrics.audit_failed("sync_modes");
                    tracing::warn!(error = %e, "audit: could not record the configured modes yet; will retry");
                    degraded = Some(format!("sync_modes: {e}"));
                    modes_unsynced = true;
                }
                Err(e) => return Err(e),
            }
            Some(store)
        } else {
            None
        };
        Ok(Audit {
            recorder,
            store,
            max_unknown_keys: settings.max_unknown_keys,
            metrics,
            degraded: std::sync::Mutex::new(degraded),
            modes: tokio::sync::watch::Sender::new(modes(config)),
            flushing: tokio::sync::Mutex::new(()),
            modes_unsynced: std::sync::atomic::AtomicBool::new(modes_unsynced),
            in_doubt: std::sync::Mutex::new(None),
        })
    }

    /// The last store error while the store keeps failing; `None` when healthy.
    pub fn degraded(&self) -> Option<String> {
        self.degraded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Notes the outcome of a store call.
    fn note<T>(&self, op: &'static str, result: &Result<T, StoreError>) {
        let mut degraded = self.degraded.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(_) => *degraded = None,
            Err(e) => {
                self.metrics.audit_failed(op);
                *degraded = Some(format!("{op}: {e}"));
            }
        }
    }

    /// After a reload: slots for new integrations (at once), and the new modes handed to
    /// the background task that records them (mode_since restarts for integrations whose
    /// mode changed) — so a slow or failing store never holds a reload up.
    pub fn adopt(&self, config: &Config) {
        self.recorder
            .ensure_slots(config.integrations.iter().map(|i| &i.name));
        self.modes.send_replace(modes(config));
    }

    /// Records the latest modes; false if the store refused (retried later).
    async fn sync_modes(&self, store: &Arc<dyn AuditStore>) -> bool {
        let modes = self.modes.borrow().clone();
        let result = store.sync_modes(modes, unix_now()).await;
        self.note("sync_modes", &result);
        match result {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "audit: could not record the configured modes; will retry");
                false
            }
        }
    }

    /// Writes what the recorder gathered since the last flush. On a failure the data goes
    /// back into the recorder, to be retried next time; on a failure that may have been
    /// written after all ([`StoreError::InDoubt`]) the batch is kept apart and retried
    /// first, under its id, so the store counts it exactly once.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let _serial = self.flushing.lock().await;
        let in_doubt = self
            .in_doubt
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((id, batch)) = in_doubt {
            let result = store
                .apply(id, Arc::clone(&batch), unix_now(), self.max_unknown_keys)
                .await;
            self.note("flush", &result);
            if let Err(e) = result {
                *self.in_doubt.lock().unwrap_or_else(|p| p.into_inner()) = Some((id, batch));
                return Err(e);
            }
        }
        // An empty batch still goes to the store: it records that this replica is alive
        // (`replicas` in the report).
        let batch = self.recorder.take();
        let subjects = batch.len();
        let started = std::time::Instant::now();
        let batch = Arc::new(batch);
        let id = fastrand::i64(0..i64::MAX);
        let result = store
            .apply(id, Arc::clone(&batch), unix_now(), self.max_unknown_keys)
            .await;
        self.note("flush", &result);
        match result {
            Ok(()) => {
                tracing::debug!(
                    subjects,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "audit flushed"
                );
                Ok(())
            }
            Err(e @ StoreError::InDoubt { .. }) => {
                *self.in_doubt.lock().unwrap_or_else(|p| p.into_inner()) = Some((id, batch));
                Err(e)
            }
            Err(e) => {
                self.recorder
                    .restore(Arc::try_unwrap(batch).unwrap_or_else(|shared| (*shared).clone()));
                Err(e)
            }
        }
    }

    /// Flushes, then reads the whole store.
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.flush().await?;
        match &self.store {
            Some(store) => {
                let result = store.snapshot().await;
                self.note("read", &result);
                result
            }
            None => Ok(Snapshot::default()),
        }
    }

    /// The report for `config` as of now.
    pub async fn report(&self, config: &Config) -> Result<AuditReport, StoreError> {
        let snapshot = self.snapshot().await?;
        Ok(report::build(&snapshot, config, unix_now()))
    }

    /// Until the returned task is aborted: flushes every `interval`, and records the
    /// configured modes whenever a reload changed them (retrying each `interval` while
    /// the store refuses).
    pub fn spawn_flusher(
        self: &Arc<Self>,
        interval: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        let audit = Arc::clone(self);
        let mut modes = self.modes.subscribe();
        tokio::spawn(async move {
            let Some(store) = audit.store.clone() else {
                return;
            };
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut modes_pending = audit
                .modes_unsynced
                .load(std::sync::atomic::Ordering::Relaxed);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if modes_pending {
                            modes_pending = !audit.sync_modes(&store).await;
                        }
                        if let Err(e) = audit.flush().await {
                            tracing::error!(error = %e, "audit flush failed; will retry");
                        }
                    }
                    changed = modes.changed() => {
                        if changed.is_err() {
                            return; // the audit is gone
                        }
                        modes_pending = !audit.sync_modes(&store).await;
                    }
                }
            }
        })
    }
}

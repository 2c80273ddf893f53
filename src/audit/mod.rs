//! The migration audit: who still sends API keys, to which endpoints, and which OAuth
//! scopes their clients need.
//!
//! [`recorder`] aggregates on the request path (one uncontended lock per request, no
//! I/O); a background task hands the aggregates to an [`AuditStore`] ([`sqlite`] is the
//! embedded one) every `flush_interval`; [`report`] turns a store's [`Snapshot`] into
//! the per-integration view shown by `keybridge audit`, `GET /audit` and the dashboard.

mod outcome;
pub(crate) mod recorder;
pub(crate) mod report;
mod sqlite;
mod store;
pub mod template;

use std::sync::Arc;

pub use outcome::{Outcome, OutcomeMap};
pub use recorder::{Event, Recorder, Slot, Subject, unix_now};
pub use store::{AuditStore, Snapshot, StoreError};

use crate::config::{AuditSettings, Config, Mode};
use report::AuditReport;

/// Opens (creating and migrating if needed) the store `settings` name.
pub fn open_store(settings: &AuditSettings) -> Result<Arc<dyn AuditStore>, StoreError> {
    Ok(Arc::new(Arc::new(sqlite::SqliteStore::open(
        &settings.path,
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
pub struct Audit {
    pub recorder: Arc<Recorder>,
    store: Option<Arc<dyn AuditStore>>,
    max_unknown_keys: usize,
    /// Serialises flushes (background, on demand, at shutdown).
    flushing: tokio::sync::Mutex<()>,
}

impl Audit {
    /// Opens the store (if the audit is enabled) and records the configured modes.
    pub async fn open(config: &Config) -> Result<Audit, StoreError> {
        let settings = &config.audit;
        let recorder = Arc::new(Recorder::new(
            settings.enabled,
            config.integrations.iter().map(|i| &i.name),
            settings.max_unknown_keys,
        ));
        let store = if settings.enabled {
            let store = open_store(settings)?;
            store.sync_modes(modes(config), unix_now()).await?;
            Some(store)
        } else {
            None
        };
        Ok(Audit {
            recorder,
            store,
            max_unknown_keys: settings.max_unknown_keys,
            flushing: tokio::sync::Mutex::new(()),
        })
    }

    /// After a reload: slots for new integrations, modes recorded (mode_since restarts
    /// for integrations whose mode changed).
    pub async fn adopt(&self, config: &Config) -> Result<(), StoreError> {
        self.recorder
            .ensure_slots(config.integrations.iter().map(|i| &i.name));
        match &self.store {
            Some(store) => store.sync_modes(modes(config), unix_now()).await,
            None => Ok(()),
        }
    }

    /// Writes what the recorder gathered since the last flush. On failure the data goes
    /// back into the recorder, to be retried next time.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let _serial = self.flushing.lock().await;
        let batch = self.recorder.take();
        if batch.is_empty() {
            return Ok(());
        }
        let subjects = batch.len();
        let started = std::time::Instant::now();
        let batch = Arc::new(batch);
        match store
            .apply(Arc::clone(&batch), unix_now(), self.max_unknown_keys)
            .await
        {
            Ok(()) => {
                tracing::debug!(
                    subjects,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "audit flushed"
                );
                Ok(())
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
            Some(store) => store.snapshot().await,
            None => Ok(Snapshot::default()),
        }
    }

    /// The report for `config` as of now.
    pub async fn report(&self, config: &Config) -> Result<AuditReport, StoreError> {
        let snapshot = self.snapshot().await?;
        Ok(report::build(&snapshot, config, unix_now()))
    }

    /// Flushes every `interval` until the returned task is aborted.
    pub fn spawn_flusher(
        self: &Arc<Self>,
        interval: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        let audit = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = audit.flush().await {
                    tracing::error!(error = %e, "audit flush failed; will retry");
                }
            }
        })
    }
}

//! The migration audit: who still sends API keys, to which endpoints, and which OAuth
//! scopes their clients need.
//!
//! [`recorder`] aggregates on the request path (one uncontended lock per request, no
//! I/O); a background task hands the aggregates to [`store`] (SQLite) every
//! `flush_interval`; [`report`] turns the store into the per-integration view shown by
//! `keybridge audit`, `GET /audit` and the dashboard.

pub mod recorder;
pub mod report;
pub mod store;
pub mod template;

pub use recorder::{Event, Recorder, Slot, Subject};

/// How a request was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Forwarded with the legacy key (`observe`, `shadow`, canary's key share, unknown
    /// keys under `unknown_keys: observe`).
    ApiKey,
    /// Forwarded with the integration's OAuth token.
    Oauth,
    /// Tried with OAuth, got 401/403, retried with the key.
    Fallback,
    /// Refused because the integration is in `deny`.
    Denied,
    /// The caller already sent a bearer token and no key.
    Native,
    /// Refused before forwarding (missing/unknown key, bad request, no token).
    Rejected,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::ApiKey,
        Outcome::Oauth,
        Outcome::Fallback,
        Outcome::Denied,
        Outcome::Native,
        Outcome::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::ApiKey => "api_key",
            Outcome::Oauth => "oauth",
            Outcome::Fallback => "fallback",
            Outcome::Denied => "denied",
            Outcome::Native => "native",
            Outcome::Rejected => "rejected",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Whether Coupa saw the legacy key for this request.
    pub fn used_key(self) -> bool {
        matches!(self, Outcome::ApiKey | Outcome::Fallback)
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

use std::sync::Arc;

use crate::config::Config;
use report::AuditReport;
use store::{Snapshot, Store, StoreError};

/// The recorder and its store, with the flushing between them.
pub struct Audit {
    pub recorder: Arc<Recorder>,
    store: Option<Arc<Store>>,
    max_unknown_keys: usize,
    /// Serialises flushes (background, on demand, at shutdown).
    flushing: tokio::sync::Mutex<()>,
}

impl Audit {
    /// Opens the store (if the audit is enabled) and records the configured modes.
    pub fn open(config: &Config) -> Result<Audit, StoreError> {
        let settings = &config.audit;
        let recorder = Arc::new(Recorder::new(
            settings.enabled,
            config.integrations.iter().map(|i| &i.name),
            settings.max_unknown_keys,
        ));
        let store = if settings.enabled {
            let store = Store::open(&settings.path)?;
            store.sync_modes(
                config.integrations.iter().map(|i| (&*i.name, i.mode)),
                unix_now(),
            )?;
            Some(Arc::new(store))
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
        let Some(store) = &self.store else {
            return Ok(());
        };
        let store = Arc::clone(store);
        let modes: Vec<(Arc<str>, crate::config::Mode)> = config
            .integrations
            .iter()
            .map(|i| (Arc::clone(&i.name), i.mode))
            .collect();
        tokio::task::spawn_blocking(move || {
            store.sync_modes(modes.iter().map(|(n, m)| (&**n, *m)), unix_now())
        })
        .await
        .unwrap_or(Ok(()))
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
        let store = Arc::clone(store);
        let max = self.max_unknown_keys;
        let subjects = batch.len();
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let r = store.apply(&batch, unix_now(), max);
            (batch, r)
        })
        .await;
        match result {
            Ok((_, Ok(()))) => {
                tracing::debug!(
                    subjects,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "audit flushed"
                );
                Ok(())
            }
            Ok((batch, Err(e))) => {
                self.recorder.restore(batch);
                Err(e)
            }
            Err(join) => {
                tracing::error!(error = %join, "audit flush task failed; this window is lost");
                Ok(())
            }
        }
    }

    /// Flushes, then reads the whole store.
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.flush().await?;
        let Some(store) = &self.store else {
            return Ok(Snapshot::default());
        };
        let store = Arc::clone(store);
        match tokio::task::spawn_blocking(move || store.snapshot()).await {
            Ok(r) => r,
            Err(join) => {
                tracing::error!(error = %join, "audit read task failed");
                Ok(Snapshot::default())
            }
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

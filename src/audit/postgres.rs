//! The shared audit store: PostgreSQL, for a fleet of replicas with one true audit.
//!
//! The same model as [`super::sqlite`]: additive upserts of each flush (counts add,
//! first-seen keeps the minimum, last-seen the maximum), so totals are exact whatever
//! the number of replicas. Flushes from all replicas are serialised by a transaction-level
//! advisory lock, so the per-subject caps hold exactly and two flushes never deadlock.
//! Migrations run at start under another advisory lock: replicas starting together apply
//! each migration once. Tables are prefixed `keybridge_`, so the audit can share a
//! database.
//!
//! PostgreSQL being down never stops keybridge: the store connects lazily, and each call
//! that cannot reach it fails (the audit keeps its aggregates in memory and retries on
//! the next flush; see [`super::Audit`]).

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::caps;
use super::recorder::{OTHER_ENDPOINTS, OTHER_UNKNOWN_KEYS, Subject};
use super::store::{AuditStore, Batch, ReplicaRow, Snapshot, StoreError, StoreFuture, SubjectRow};
use crate::config::{Mode, Secret};
use crate::outcome::{Outcome, OutcomeMap};

/// Migrations, in order. Never edit a released one; append.
const MIGRATIONS: &[&str] = &[
    // v1: the initial schema (the SQLite one, plus the replicas that report).
    "CREATE TABLE keybridge_subjects (
        kind TEXT NOT NULL, name TEXT NOT NULL,
        first_seen BIGINT, last_seen BIGINT, last_key_seen BIGINT, last_fallback BIGINT,
        mode TEXT, mode_since BIGINT,
        PRIMARY KEY (kind, name));
     CREATE TABLE keybridge_outcomes (
        kind TEXT NOT NULL, name TEXT NOT NULL, outcome TEXT NOT NULL, count BIGINT NOT NULL,
        PRIMARY KEY (kind, name, outcome));
     CREATE TABLE keybridge_endpoints (
        kind TEXT NOT NULL, name TEXT NOT NULL, endpoint TEXT NOT NULL, status INTEGER NOT NULL,
        count BIGINT NOT NULL, last_seen BIGINT NOT NULL,
        PRIMARY KEY (kind, name, endpoint, status));
     CREATE TABLE keybridge_fallbacks (
        kind TEXT NOT NULL, name TEXT NOT NULL, endpoint TEXT NOT NULL, status INTEGER NOT NULL,
        count BIGINT NOT NULL, last_seen BIGINT NOT NULL,
        PRIMARY KEY (kind, name, endpoint, status));
     CREATE TABLE keybridge_shadow (
        kind TEXT NOT NULL, name TEXT NOT NULL, endpoint TEXT NOT NULL,
        key_status INTEGER NOT NULL, oauth_status INTEGER NOT NULL,
        count BIGINT NOT NULL, last_seen BIGINT NOT NULL,
        PRIMARY KEY (kind, name, endpoint, key_status, oauth_status));
     CREATE TABLE keybridge_peers (
        kind TEXT NOT NULL, name TEXT NOT NULL, what TEXT NOT NULL, value TEXT NOT NULL,
        count BIGINT NOT NULL, last_seen BIGINT NOT NULL,
        PRIMARY KEY (kind, name, what, value));
     CREATE TABLE keybridge_traffic (
        minute BIGINT PRIMARY KEY,
        api_key BIGINT NOT NULL DEFAULT 0, oauth BIGINT NOT NULL DEFAULT 0,
        fallback BIGINT NOT NULL DEFAULT 0, denied BIGINT NOT NULL DEFAULT 0,
        native BIGINT NOT NULL DEFAULT 0, rejected BIGINT NOT NULL DEFAULT 0);
     CREATE TABLE keybridge_replicas (
        name TEXT PRIMARY KEY, first_seen BIGINT NOT NULL, last_flush BIGINT NOT NULL);",
    // v2: the flushes written, by replica and id, so a flush retried after a timeout
    // (written or not, nobody knows) is never counted twice. Kept a day.
    "CREATE TABLE keybridge_flushes (
        replica TEXT NOT NULL, id BIGINT NOT NULL, at BIGINT NOT NULL,
        PRIMARY KEY (replica, id));",
    // v3: requests keybridge answered 429 to keep an instance under its rate limit.
    "ALTER TABLE keybridge_traffic ADD COLUMN throttled BIGINT NOT NULL DEFAULT 0;",
];

/// Advisory lock keys (arbitrary, fixed): one for migrations, one for flushes.
const MIGRATION_LOCK: i64 = 0x6b65_7962_7269_6467; // "keybridg"
const FLUSH_LOCK: i64 = 0x6b65_7962_7269_6468;

/// Connections: one flushing, one reading the report, with room for a reload's check.
const POOL_SIZE: usize = 4;
/// How long a call waits for a connection or a statement before it fails (and the
/// audit keeps its data in memory for the next flush).
const TIMEOUT: Duration = Duration::from_secs(5);

/// A PostgreSQL audit.
pub struct PostgresStore {
    pool: Pool,
    /// `host:port/dbname`, never the user or password.
    target: String,
    replica: String,
    retention: i64,
    /// The schema is current (checked once per process, after the first connection).
    migrated: tokio::sync::OnceCell<()>,
    swept: std::sync::Mutex<i64>,
}

fn pg(target: &str) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
    move |e| StoreError::Postgres {
        target: target.to_owned(),
        cause: crate::log::chain(&e),
    }
}

impl PostgresStore {
    /// A store for `url` (not connected yet: [`PostgresStore::migrate`] connects).
    pub fn new(
        url: &Secret,
        ca_file: Option<&std::path::Path>,
        replica: &str,
        retention: Duration,
    ) -> Result<Self, StoreError> {
        // The URL carries the password: no error from here may quote it.
        let config = tokio_postgres::Config::from_str(url.expose()).map_err(|_| {
            StoreError::Config(
                "audit.postgres_url is not a PostgreSQL URL (postgres://user:password@host:5432/dbname)"
                    .to_owned(),
            )
        })?;
        let target = describe(&config);
        let mut config = config;
        config.connect_timeout(TIMEOUT);
        config.application_name("keybridge");
        // Server-side bounds too: a replica cut off while holding the flush lock, or a
        // statement stuck on a lock, must not stall the fleet's flushes for long.
        config.options(
            "-c statement_timeout=30000 -c lock_timeout=20000 -c idle_in_transaction_session_timeout=60000",
        );
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        let manager_config = ManagerConfig {
            // Clean: a connection returned mid-way (a cancelled call) is reset before reuse.
            recycling_method: RecyclingMethod::Clean,
        };
        // TLS when the URL asks for it (`sslmode=require`); rustls then verifies the
        // certificate and host name. `prefer` (libpq's default) stays plaintext: a
        // downgrade-prone middle ground is not offered.
        let manager = if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            let tls = crate::tls::tls_client_config("audit.postgres_ca_file", ca_file)
                .map_err(|e| StoreError::Config(e.to_string()))?;
            Manager::from_config(
                config,
                tokio_postgres_rustls::MakeRustlsConnect::new(tls),
                manager_config,
            )
        } else {
            Manager::from_config(config, NoTls, manager_config)
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(TIMEOUT))
            .create_timeout(Some(TIMEOUT))
            .recycle_timeout(Some(TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Config(format!("audit.postgres_url: {e}")))?;
        Ok(PostgresStore {
            pool,
            target,
            replica: replica.to_owned(),
            retention: i64::try_from(retention.as_secs()).unwrap_or(i64::MAX),
            migrated: tokio::sync::OnceCell::new(),
            swept: std::sync::Mutex::new(0),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        let mut client = self.pool.get().await.map_err(|e| StoreError::Postgres {
            target: self.target.clone(),
            // The pool's message alone ("error performing TLS handshake") hides why.
            cause: crate::log::chain(&e),
        })?;
        self.migrated
            .get_or_try_init(|| migrate(&mut client, &self.target))
            .await?;
        Ok(client)
    }

    /// Connects and brings the schema up to date (under a lock: replicas starting
    /// together apply each migration once); refuses a schema newer than this binary's.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.client().await.map(drop)
    }

    async fn apply_batch(
        &self,
        id: i64,
        batch: &Batch,
        now: i64,
        max_unknown_keys: usize,
    ) -> Result<(), StoreError> {
        let e = pg(&self.target);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(&e)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&FLUSH_LOCK])
            .await
            .map_err(&e)?;
        let fresh = tx
            .execute(
                "INSERT INTO keybridge_flushes (replica, id, at) VALUES ($1, $2, $3)
                 ON CONFLICT (replica, id) DO NOTHING",
                &[&self.replica, &id, &now],
            )
            .await
            .map_err(&e)?;
        if fresh == 0 {
            // Written by an earlier attempt whose answer was lost: nothing to add.
            tracing::info!(flush = id, "audit flush already written; not counted again");
            return tx.commit().await.map_err(&e);
        }
        tx.execute(
            "INSERT INTO keybridge_replicas (name, first_seen, last_flush) VALUES ($1, $2, $2)
             ON CONFLICT (name) DO UPDATE SET last_flush = GREATEST(keybridge_replicas.last_flush, excluded.last_flush)",
            &[&self.replica, &now],
        )
        .await
        .map_err(&e)?;
        if !batch.is_empty() {
            let unknown: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM keybridge_subjects WHERE kind = 'unknown_key' AND name != $1",
                    &[&OTHER_UNKNOWN_KEYS],
                )
                .await
                .map_err(&e)?
                .get(0);
            let mut unknown_keys = caps::UnknownKeys::new(unknown, max_unknown_keys);
            let mut minute_totals = OutcomeMap::<u64>::default();
            let subjects = tx.prepare(SUBJECT_UPSERT).await.map_err(&e)?;
            let outcomes = tx.prepare(OUTCOME_UPSERT).await.map_err(&e)?;
            let endpoints = tx
                .prepare(&capped_upsert("keybridge_endpoints"))
                .await
                .map_err(&e)?;
            let fallbacks = tx
                .prepare(&capped_upsert("keybridge_fallbacks"))
                .await
                .map_err(&e)?;
            let shadow = tx.prepare(SHADOW_UPSERT).await.map_err(&e)?;
            let peers = tx.prepare(PEER_UPSERT).await.map_err(&e)?;
            for (subject, w) in batch {
                let kind = subject.kind();
                let known = match subject {
                    Subject::UnknownKey(fp) => tx
                        .query_opt(
                            "SELECT 1 FROM keybridge_subjects WHERE kind = 'unknown_key' AND name = $1",
                            &[fp],
                        )
                        .await
                        .map_err(&e)?
                        .is_some(),
                    _ => true,
                };
                let name = unknown_keys.name(subject, known);
                minute_totals.add(&w.counts);
                let (endpoint_cap, peer_cap) = caps::caps(kind);
                tx.execute(
                    &subjects,
                    &[
                        &kind,
                        &name,
                        &w.first_seen,
                        &w.last_seen,
                        &w.last_key_seen,
                        &w.last_fallback,
                    ],
                )
                .await
                .map_err(&e)?;
                for (o, &c) in w.counts.iter() {
                    if c > 0 {
                        tx.execute(&outcomes, &[&kind, &name, &o.as_str(), &(c as i64)])
                            .await
                            .map_err(&e)?;
                    }
                }
                for (endpoint, statuses) in &w.endpoints {
                    for (status, c) in statuses {
                        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
                            &kind,
                            &name,
                            endpoint,
                            &i32::from(*status),
                            &(*c as i64),
                            &now,
                            &endpoint_cap,
                            &OTHER_ENDPOINTS,
                        ];
                        tx.execute(&endpoints, &params).await.map_err(&e)?;
                    }
                }
                for ((endpoint, status), c) in &w.fallbacks {
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
                        &kind,
                        &name,
                        endpoint,
                        &i32::from(*status),
                        &(*c as i64),
                        &now,
                        &endpoint_cap,
                        &OTHER_ENDPOINTS,
                    ];
                    tx.execute(&fallbacks, &params).await.map_err(&e)?;
                }
                for ((endpoint, key_status, oauth_status), c) in &w.shadow {
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 9] = [
                        &kind,
                        &name,
                        endpoint,
                        &i32::from(*key_status),
                        &i32::from(*oauth_status),
                        &(*c as i64),
                        &now,
                        &endpoint_cap,
                        &OTHER_ENDPOINTS,
                    ];
                    tx.execute(&shadow, &params).await.map_err(&e)?;
                }
                let peer_rows = w
                    .ips
                    .iter()
                    .map(|(ip, c)| ("ip", ip.to_string(), *c))
                    .chain(
                        w.user_agents
                            .iter()
                            .map(|(ua, c)| ("user_agent", ua.clone(), *c)),
                    );
                for (what, value, c) in peer_rows {
                    tx.execute(
                        &peers,
                        &[&kind, &name, &what, &value, &(c as i64), &now, &peer_cap],
                    )
                    .await
                    .map_err(&e)?;
                }
            }
            let minute = now - now.rem_euclid(60);
            let counts: Vec<i64> = minute_totals.values().map(|&c| c as i64).collect();
            let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&minute];
            params.extend(
                counts
                    .iter()
                    .map(|c| c as &(dyn tokio_postgres::types::ToSql + Sync)),
            );
            tx.execute(&traffic_upsert(), &params).await.map_err(&e)?;
        }
        let sweep = now - *self.swept.lock().unwrap_or_else(|p| p.into_inner()) >= 3600;
        if sweep {
            let cutoff = now.saturating_sub(self.retention);
            for sql in [
                "DELETE FROM keybridge_traffic WHERE minute < $1",
                "DELETE FROM keybridge_endpoints WHERE last_seen < $1",
                "DELETE FROM keybridge_fallbacks WHERE last_seen < $1",
                "DELETE FROM keybridge_shadow WHERE last_seen < $1",
                "DELETE FROM keybridge_peers WHERE last_seen < $1",
                "DELETE FROM keybridge_subjects WHERE kind = 'unknown_key' AND last_seen < $1",
                "DELETE FROM keybridge_replicas WHERE last_flush < $1",
            ] {
                tx.execute(sql, &[&cutoff]).await.map_err(&e)?;
            }
            tx.execute(
                "DELETE FROM keybridge_flushes WHERE at < $1",
                &[&now.saturating_sub(24 * 3600)],
            )
            .await
            .map_err(&e)?;
            tx.execute(
                "DELETE FROM keybridge_outcomes o WHERE kind = 'unknown_key' AND NOT EXISTS
                   (SELECT 1 FROM keybridge_subjects s WHERE s.kind = o.kind AND s.name = o.name)",
                &[],
            )
            .await
            .map_err(&e)?;
        }
        // A COMMIT whose answer is lost (the connection reset, PostgreSQL stopping) may
        // have been applied: in doubt, retried under the same id, counted once.
        tx.commit().await.map_err(|err| StoreError::InDoubt {
            target: format!("PostgreSQL {}", self.target),
            cause: crate::log::chain(&err),
        })?;
        if sweep {
            // Only once the sweep is committed: a failed flush sweeps at the next one.
            *self.swept.lock().unwrap_or_else(|p| p.into_inner()) = now;
        }
        Ok(())
    }

    async fn read(&self) -> Result<Snapshot, StoreError> {
        let e = pg(&self.target);
        let client = self.client().await?;
        let mut snap = Snapshot::default();
        for r in client
            .query(
                "SELECT kind, name, first_seen, last_seen, last_key_seen, last_fallback, mode, mode_since FROM keybridge_subjects",
                &[],
            )
            .await
            .map_err(&e)?
        {
            snap.subjects.insert(
                (r.get(0), r.get(1)),
                SubjectRow {
                    first_seen: r.get(2),
                    last_seen: r.get(3),
                    last_key_seen: r.get(4),
                    last_fallback: r.get(5),
                    mode: r.get(6),
                    mode_since: r.get(7),
                    ..SubjectRow::default()
                },
            );
        }
        let key = |r: &tokio_postgres::Row| (r.get::<_, String>(0), r.get::<_, String>(1));
        let count = |v: i64| v.max(0) as u64;
        let status = |v: i32| u16::try_from(v).unwrap_or(0);
        for r in client
            .query(
                "SELECT kind, name, outcome, count FROM keybridge_outcomes",
                &[],
            )
            .await
            .map_err(&e)?
        {
            let outcome: String = r.get(2);
            if let (Some(s), Some(o)) = (snap.subjects.get_mut(&key(&r)), Outcome::parse(&outcome))
            {
                s.counts[o] = count(r.get(3));
            }
        }
        for r in client
            .query(
                "SELECT kind, name, endpoint, status, count FROM keybridge_endpoints",
                &[],
            )
            .await
            .map_err(&e)?
        {
            if let Some(s) = snap.subjects.get_mut(&key(&r)) {
                s.endpoints
                    .entry(r.get(2))
                    .or_default()
                    .insert(status(r.get(3)), count(r.get(4)));
            }
        }
        for r in client
            .query(
                "SELECT kind, name, endpoint, status, count FROM keybridge_fallbacks ORDER BY count DESC",
                &[],
            )
            .await
            .map_err(&e)?
        {
            if let Some(s) = snap.subjects.get_mut(&key(&r)) {
                s.fallbacks.push((r.get(2), status(r.get(3)), count(r.get(4))));
            }
        }
        for r in client
            .query(
                "SELECT kind, name, endpoint, key_status, oauth_status, count FROM keybridge_shadow ORDER BY count DESC",
                &[],
            )
            .await
            .map_err(&e)?
        {
            if let Some(s) = snap.subjects.get_mut(&key(&r)) {
                s.shadow.push((r.get(2), status(r.get(3)), status(r.get(4)), count(r.get(5))));
            }
        }
        for r in client
            .query(
                "SELECT kind, name, what, value, count FROM keybridge_peers ORDER BY count DESC, value",
                &[],
            )
            .await
            .map_err(&e)?
        {
            if let Some(s) = snap.subjects.get_mut(&key(&r)) {
                let what: String = r.get(2);
                let entry = (r.get(3), count(r.get(4)));
                if what == "ip" {
                    s.ips.push(entry);
                } else {
                    s.user_agents.push(entry);
                }
            }
        }
        let columns = Outcome::ALL.map(Outcome::as_str).join(", ");
        for r in client
            .query(
                &format!("SELECT minute, {columns} FROM keybridge_traffic ORDER BY minute"),
                &[],
            )
            .await
            .map_err(&e)?
        {
            let mut counts = OutcomeMap::<u64>::default();
            for (i, o) in Outcome::ALL.into_iter().enumerate() {
                counts[o] = count(r.get(i + 1));
            }
            snap.traffic.push((r.get(0), counts));
        }
        for r in client
            .query(
                "SELECT name, first_seen, last_flush FROM keybridge_replicas ORDER BY name",
                &[],
            )
            .await
            .map_err(&e)?
        {
            snap.replicas.push(ReplicaRow {
                name: r.get(0),
                first_seen: r.get(1),
                last_flush: r.get(2),
            });
        }
        Ok(snap)
    }

    async fn modes(&self, modes: &[(Arc<str>, Mode)], now: i64) -> Result<(), StoreError> {
        let e = pg(&self.target);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(&e)?;
        // Serialised with flushes: a mode change is recorded once, by the first replica
        // that sees it; the others find it already recorded.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&FLUSH_LOCK])
            .await
            .map_err(&e)?;
        for (name, mode) in modes {
            let name: &str = name;
            tx.execute(
                "INSERT INTO keybridge_subjects (kind, name, mode, mode_since) VALUES ('integration', $1, $2, $3)
                 ON CONFLICT (kind, name) DO UPDATE SET
                   mode_since = CASE WHEN keybridge_subjects.mode IS NOT DISTINCT FROM excluded.mode
                                THEN keybridge_subjects.mode_since ELSE excluded.mode_since END,
                   mode = excluded.mode",
                &[&name, &mode.as_str(), &now],
            )
            .await
            .map_err(&e)?;
        }
        tx.commit().await.map_err(&e)
    }
}

/// `host:port/dbname` of a connection config, without user or password.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".to_owned());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("(default database)");
    format!("{host}:{port}/{db}")
}

/// Brings the schema up to date in one transaction, under a transaction-level advisory
/// lock: a second replica waits for it, then finds the schema current; a cancelled or
/// failed attempt rolls back and releases the lock with its transaction (never a lock
/// left on a pooled connection).
async fn migrate(client: &mut deadpool_postgres::Object, target: &str) -> Result<(), StoreError> {
    let e = pg(target);
    let tx = client.transaction().await.map_err(&e)?;
    tx.batch_execute("SET LOCAL lock_timeout = '20s'")
        .await
        .map_err(&e)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(&e)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS keybridge_schema (version BIGINT NOT NULL)")
        .await
        .map_err(&e)?;
    let version: i64 = tx
        .query_opt("SELECT version FROM keybridge_schema", &[])
        .await
        .map_err(&e)?
        .map_or(0, |r| r.get(0));
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew {
            path: target.into(),
            found: version,
            known,
        });
    }
    if version == known {
        return tx.commit().await.map_err(&e);
    }
    for sql in MIGRATIONS.iter().skip(version as usize) {
        tx.batch_execute(sql).await.map_err(&e)?;
    }
    tx.execute("DELETE FROM keybridge_schema", &[])
        .await
        .map_err(&e)?;
    tx.execute(
        "INSERT INTO keybridge_schema (version) VALUES ($1)",
        &[&known],
    )
    .await
    .map_err(&e)?;
    tx.commit().await.map_err(&e)?;
    for v in version + 1..=known {
        tracing::info!(store = %target, version = v, "audit store migrated");
    }
    Ok(())
}

const SUBJECT_UPSERT: &str = "INSERT INTO keybridge_subjects (kind, name, first_seen, last_seen, last_key_seen, last_fallback)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (kind, name) DO UPDATE SET
       first_seen = LEAST(keybridge_subjects.first_seen, excluded.first_seen),
       last_seen = GREATEST(keybridge_subjects.last_seen, excluded.last_seen),
       last_key_seen = GREATEST(keybridge_subjects.last_key_seen, excluded.last_key_seen),
       last_fallback = GREATEST(keybridge_subjects.last_fallback, excluded.last_fallback)";

const OUTCOME_UPSERT: &str = "INSERT INTO keybridge_outcomes (kind, name, outcome, count) VALUES ($1, $2, $3, $4)
     ON CONFLICT (kind, name, outcome) DO UPDATE SET count = keybridge_outcomes.count + excluded.count";

/// Endpoint rows beyond the subject's cap are counted under `(other endpoints)`.
fn capped_upsert(table: &str) -> String {
    format!(
        "INSERT INTO {table} (kind, name, endpoint, status, count, last_seen)
         SELECT $1, $2, CASE
             WHEN EXISTS (SELECT 1 FROM {table} WHERE kind = $1 AND name = $2 AND endpoint = $3) THEN $3
             WHEN (SELECT COUNT(DISTINCT endpoint) FROM {table} WHERE kind = $1 AND name = $2) < $7 THEN $3
             ELSE $8 END, $4, $5, $6
         ON CONFLICT (kind, name, endpoint, status) DO UPDATE SET
           count = {table}.count + excluded.count, last_seen = excluded.last_seen"
    )
}

const SHADOW_UPSERT: &str = "INSERT INTO keybridge_shadow (kind, name, endpoint, key_status, oauth_status, count, last_seen)
     SELECT $1, $2, CASE
         WHEN EXISTS (SELECT 1 FROM keybridge_shadow WHERE kind = $1 AND name = $2 AND endpoint = $3) THEN $3
         WHEN (SELECT COUNT(DISTINCT endpoint) FROM keybridge_shadow WHERE kind = $1 AND name = $2) < $8 THEN $3
         ELSE $9 END, $4, $5, $6, $7
     ON CONFLICT (kind, name, endpoint, key_status, oauth_status) DO UPDATE SET
       count = keybridge_shadow.count + excluded.count, last_seen = excluded.last_seen";

const PEER_UPSERT: &str = "INSERT INTO keybridge_peers (kind, name, what, value, count, last_seen)
     SELECT $1, $2, $3, $4, $5, $6
     WHERE EXISTS (SELECT 1 FROM keybridge_peers WHERE kind = $1 AND name = $2 AND what = $3 AND value = $4)
        OR (SELECT COUNT(*) FROM keybridge_peers WHERE kind = $1 AND name = $2 AND what = $3) < $7
     ON CONFLICT (kind, name, what, value) DO UPDATE SET
       count = keybridge_peers.count + excluded.count, last_seen = excluded.last_seen";

fn traffic_upsert() -> String {
    let columns = Outcome::ALL.map(Outcome::as_str);
    let placeholders: Vec<String> = (2..=columns.len() + 1).map(|i| format!("${i}")).collect();
    let updates: Vec<String> = columns
        .iter()
        .map(|c| format!("{c} = keybridge_traffic.{c} + excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO keybridge_traffic (minute, {}) VALUES ($1, {}) ON CONFLICT (minute) DO UPDATE SET {}",
        columns.join(", "),
        placeholders.join(", "),
        updates.join(", ")
    )
}

impl AuditStore for PostgresStore {
    fn describe(&self) -> String {
        format!("PostgreSQL {}", self.target)
    }

    fn apply(
        &self,
        id: i64,
        batch: Arc<Batch>,
        now: i64,
        max_unknown_keys: usize,
    ) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            tokio::time::timeout(
                TIMEOUT * 6,
                self.apply_batch(id, &batch, now, max_unknown_keys),
            )
            .await
            .map_err(|_| StoreError::InDoubt {
                target: format!("PostgreSQL {}", self.target),
                cause: format!("no answer within {}s", (TIMEOUT * 6).as_secs()),
            })?
        })
    }

    fn snapshot(&self) -> StoreFuture<'_, Snapshot> {
        Box::pin(async move {
            tokio::time::timeout(TIMEOUT * 6, self.read())
                .await
                .map_err(|_| self.timed_out())?
        })
    }

    fn sync_modes(&self, modes: Vec<(Arc<str>, Mode)>, now: i64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            tokio::time::timeout(TIMEOUT * 6, self.modes(&modes, now))
                .await
                .map_err(|_| self.timed_out())?
        })
    }
}

impl PostgresStore {
    fn timed_out(&self) -> StoreError {
        StoreError::Postgres {
            target: self.target.clone(),
            cause: format!("no answer within {}s", (TIMEOUT * 6).as_secs()),
        }
    }
}

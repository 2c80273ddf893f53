//! The embedded audit store: one SQLite file, totals per subject, endpoint, status and
//! minute. The default: one process, zero set-up.
//!
//! Writes are additive upserts of what the recorder aggregated since the last flush, in
//! one transaction per flush. The schema is versioned with `PRAGMA user_version`; each
//! migration runs once, in order, inside a transaction, when the file is opened. The
//! connection is blocking: [`AuditStore`] calls run it on tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use super::caps;
use super::recorder::{OTHER_ENDPOINTS, OTHER_UNKNOWN_KEYS, Subject, Window};
use super::store::{AuditStore, Batch, Snapshot, StoreError, StoreFuture, SubjectRow};
use crate::config::Mode;
use crate::outcome::{Outcome, OutcomeMap};

/// Migrations, in order. Never edit a released one; append.
const MIGRATIONS: &[&str] = &[
    // v1: the initial schema.
    "CREATE TABLE subjects (
        kind TEXT NOT NULL, name TEXT NOT NULL,
        first_seen INTEGER, last_seen INTEGER, last_key_seen INTEGER, last_fallback INTEGER,
        mode TEXT, mode_since INTEGER,
        PRIMARY KEY (kind, name));
     CREATE TABLE outcomes (
        kind TEXT NOT NULL, name TEXT NOT NULL, outcome TEXT NOT NULL, count INTEGER NOT NULL,
        PRIMARY KEY (kind, name, outcome));
     CREATE TABLE endpoints (
        kind TEXT NOT NULL, name TEXT NOT NULL, endpoint TEXT NOT NULL, status INTEGER NOT NULL,
        count INTEGER NOT NULL, last_seen INTEGER NOT NULL,
        PRIMARY KEY (kind, name, endpoint, status));
     CREATE TABLE fallbacks (
        kind TEXT NOT NULL, name TEXT NOT NULL, endpoint TEXT NOT NULL, status INTEGER NOT NULL,
        count INTEGER NOT NULL, last_seen INTEGER NOT NULL,
        PRIMARY KEY (kind, name, endpoint, status));
     CREATE TABLE shadow (
        kind TEXT NOT NULL, name TEXT NOT NULL, endpoint TEXT NOT NULL,
        key_status INTEGER NOT NULL, oauth_status INTEGER NOT NULL,
        count INTEGER NOT NULL, last_seen INTEGER NOT NULL,
        PRIMARY KEY (kind, name, endpoint, key_status, oauth_status));
     CREATE TABLE peers (
        kind TEXT NOT NULL, name TEXT NOT NULL, what TEXT NOT NULL, value TEXT NOT NULL,
        count INTEGER NOT NULL, last_seen INTEGER NOT NULL,
        PRIMARY KEY (kind, name, what, value));
     CREATE TABLE traffic (
        minute INTEGER PRIMARY KEY,
        api_key INTEGER NOT NULL DEFAULT 0, oauth INTEGER NOT NULL DEFAULT 0,
        fallback INTEGER NOT NULL DEFAULT 0, denied INTEGER NOT NULL DEFAULT 0,
        native INTEGER NOT NULL DEFAULT 0, rejected INTEGER NOT NULL DEFAULT 0);",
    // v2: the replicas that flush here (one, unless several share the file by mistake).
    "CREATE TABLE replicas (
        name TEXT PRIMARY KEY, first_seen INTEGER NOT NULL, last_flush INTEGER NOT NULL);",
    // v3: requests keybridge answered 429 to keep an instance under its rate limit.
    "ALTER TABLE traffic ADD COLUMN throttled INTEGER NOT NULL DEFAULT 0;",
];

/// An open audit file.
pub struct SqliteStore {
    path: PathBuf,
    /// This process's `fleet.replica`, recorded at every flush.
    replica: String,
    conn: Mutex<Connection>,
    /// Rows and minutes not seen for this long are deleted (`audit.retention`).
    retention: i64,
    /// When retention last ran (Unix seconds): at most hourly.
    swept: Mutex<i64>,
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the file.
    pub fn open(
        path: &Path,
        retention: std::time::Duration,
        replica: &str,
    ) -> Result<SqliteStore, StoreError> {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let open_error = |cause: String, denied: bool| StoreError::Open {
            path: absolute.clone(),
            cause,
            denied,
        };
        create_private(path).map_err(|e| {
            let denied = matches!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::ReadOnlyFilesystem
                    | std::io::ErrorKind::NotFound
            );
            open_error(e.to_string(), denied)
        })?;
        let conn = Connection::open(path).map_err(|e| open_error(e.to_string(), true))?;
        let conn = migrate(conn, path).map_err(|e| match e {
            StoreError::Sqlite { cause, .. } => {
                let denied = matches!(
                    cause.sqlite_error_code(),
                    Some(
                        rusqlite::ErrorCode::CannotOpen
                            | rusqlite::ErrorCode::ReadOnly
                            | rusqlite::ErrorCode::PermissionDenied
                    )
                );
                open_error(cause.to_string(), denied)
            }
            other => other,
        })?;
        Ok(SqliteStore {
            path: path.to_owned(),
            replica: replica.to_owned(),
            conn: Mutex::new(conn),
            retention: i64::try_from(retention.as_secs()).unwrap_or(i64::MAX),
            swept: Mutex::new(0),
        })
    }

    fn err(&self, cause: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            cause,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records each integration's configured mode, restarting `mode_since` on change.
    fn sync_modes_blocking(&self, modes: &[(Arc<str>, Mode)], now: i64) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        for (name, mode) in modes {
            let name: &str = name;
            exec(&tx,
                "INSERT INTO subjects (kind, name, mode, mode_since) VALUES ('integration', ?1, ?2, ?3)
                 ON CONFLICT (kind, name) DO UPDATE SET
                   mode_since = CASE WHEN subjects.mode IS excluded.mode THEN subjects.mode_since ELSE excluded.mode_since END,
                   mode = excluded.mode",
                params![name, mode.as_str(), now],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Adds one flush's aggregates. Unknown keys beyond `max_unknown_keys` distinct
    /// fingerprints are counted under one overflow subject.
    fn apply_blocking(
        &self,
        batch: &[(Subject, Window)],
        now: i64,
        max_unknown_keys: usize,
    ) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        exec(
            &tx,
            "INSERT INTO replicas (name, first_seen, last_flush) VALUES (?1, ?2, ?2)
             ON CONFLICT (name) DO UPDATE SET last_flush = MAX(replicas.last_flush, excluded.last_flush)",
            params![self.replica, now],
        )
        .map_err(|e| self.err(e))?;
        if batch.is_empty() {
            return tx.commit().map_err(|e| self.err(e));
        }
        let stored: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM subjects WHERE kind = 'unknown_key' AND name != ?1",
                [OTHER_UNKNOWN_KEYS],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        let mut unknown_keys = caps::UnknownKeys::new(stored, max_unknown_keys);
        let mut minute_totals = OutcomeMap::<u64>::default();
        for (subject, w) in batch {
            let kind = subject.kind();
            let known = match subject {
                Subject::UnknownKey(fp) => tx
                    .query_row(
                        "SELECT 1 FROM subjects WHERE kind = 'unknown_key' AND name = ?1",
                        [fp],
                        |_| Ok(()),
                    )
                    .optional()
                    .map_err(|e| self.err(e))?
                    .is_some(),
                _ => true,
            };
            let name = unknown_keys.name(subject, known);
            minute_totals.add(&w.counts);
            let (endpoint_cap, peer_cap) = caps::caps(kind);
            exec(&tx,
                "INSERT INTO subjects (kind, name, first_seen, last_seen, last_key_seen, last_fallback)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (kind, name) DO UPDATE SET
                   first_seen = COALESCE(MIN(subjects.first_seen, excluded.first_seen), subjects.first_seen, excluded.first_seen),
                   last_seen = COALESCE(MAX(subjects.last_seen, excluded.last_seen), subjects.last_seen, excluded.last_seen),
                   last_key_seen = COALESCE(MAX(subjects.last_key_seen, excluded.last_key_seen), subjects.last_key_seen, excluded.last_key_seen),
                   last_fallback = COALESCE(MAX(subjects.last_fallback, excluded.last_fallback), subjects.last_fallback, excluded.last_fallback)",
                params![kind, name, w.first_seen, w.last_seen, w.last_key_seen, w.last_fallback],
            )
            .map_err(|e| self.err(e))?;
            for (o, &c) in w.counts.iter() {
                if c > 0 {
                    exec(&tx,
                        "INSERT INTO outcomes (kind, name, outcome, count) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (kind, name, outcome) DO UPDATE SET count = count + excluded.count",
                        params![kind, name, o.as_str(), c as i64],
                    )
                    .map_err(|e| self.err(e))?;
                }
            }
            for (endpoint, statuses) in &w.endpoints {
                for (status, c) in statuses {
                    exec(&tx,
                        "INSERT INTO endpoints (kind, name, endpoint, status, count, last_seen)
                         SELECT ?1, ?2, CASE
                             WHEN EXISTS (SELECT 1 FROM endpoints WHERE kind = ?1 AND name = ?2 AND endpoint = ?3) THEN ?3
                             WHEN (SELECT COUNT(DISTINCT endpoint) FROM endpoints WHERE kind = ?1 AND name = ?2) < ?7 THEN ?3
                             ELSE ?8 END, ?4, ?5, ?6
                         WHERE true
                         ON CONFLICT (kind, name, endpoint, status) DO UPDATE SET count = count + excluded.count, last_seen = excluded.last_seen",
                        params![kind, name, endpoint, status, *c as i64, now, endpoint_cap, OTHER_ENDPOINTS],
                    )
                    .map_err(|e| self.err(e))?;
                }
            }
            for ((endpoint, status), c) in &w.fallbacks {
                exec(&tx,
                    "INSERT INTO fallbacks (kind, name, endpoint, status, count, last_seen)
                     SELECT ?1, ?2, CASE
                         WHEN EXISTS (SELECT 1 FROM fallbacks WHERE kind = ?1 AND name = ?2 AND endpoint = ?3) THEN ?3
                         WHEN (SELECT COUNT(DISTINCT endpoint) FROM fallbacks WHERE kind = ?1 AND name = ?2) < ?7 THEN ?3
                         ELSE ?8 END, ?4, ?5, ?6
                     WHERE true
                     ON CONFLICT (kind, name, endpoint, status) DO UPDATE SET count = count + excluded.count, last_seen = excluded.last_seen",
                    params![kind, name, endpoint, status, *c as i64, now, endpoint_cap, OTHER_ENDPOINTS],
                )
                .map_err(|e| self.err(e))?;
            }
            for ((endpoint, key_status, oauth_status), c) in &w.shadow {
                exec(&tx,
                    "INSERT INTO shadow (kind, name, endpoint, key_status, oauth_status, count, last_seen)
                     SELECT ?1, ?2, CASE
                         WHEN EXISTS (SELECT 1 FROM shadow WHERE kind = ?1 AND name = ?2 AND endpoint = ?3) THEN ?3
                         WHEN (SELECT COUNT(DISTINCT endpoint) FROM shadow WHERE kind = ?1 AND name = ?2) < ?8 THEN ?3
                         ELSE ?9 END, ?4, ?5, ?6, ?7
                     WHERE true
                     ON CONFLICT (kind, name, endpoint, key_status, oauth_status) DO UPDATE SET count = count + excluded.count, last_seen = excluded.last_seen",
                    params![kind, name, endpoint, key_status, oauth_status, *c as i64, now, endpoint_cap, OTHER_ENDPOINTS],
                )
                .map_err(|e| self.err(e))?;
            }
            let peers = w
                .ips
                .iter()
                .map(|(ip, c)| ("ip", ip.to_string(), *c))
                .chain(
                    w.user_agents
                        .iter()
                        .map(|(ua, c)| ("user_agent", ua.clone(), *c)),
                );
            for (what, value, c) in peers {
                exec(&tx,
                    "INSERT INTO peers (kind, name, what, value, count, last_seen)
                     SELECT ?1, ?2, ?3, ?4, ?5, ?6
                     WHERE EXISTS (SELECT 1 FROM peers WHERE kind = ?1 AND name = ?2 AND what = ?3 AND value = ?4)
                        OR (SELECT COUNT(*) FROM peers WHERE kind = ?1 AND name = ?2 AND what = ?3) < ?7
                     ON CONFLICT (kind, name, what, value) DO UPDATE SET count = count + excluded.count, last_seen = excluded.last_seen",
                    params![kind, name, what, value, c as i64, now, peer_cap],
                )
                .map_err(|e| self.err(e))?;
            }
        }
        exec(
            &tx,
            &traffic_upsert(),
            rusqlite::params_from_iter(traffic_params(now - now.rem_euclid(60), &minute_totals)),
        )
        .map_err(|e| self.err(e))?;
        let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
        if now - *swept >= 3600 {
            *swept = now;
            let cutoff = now.saturating_sub(self.retention);
            for sql in [
                "DELETE FROM traffic WHERE minute < ?1",
                "DELETE FROM endpoints WHERE last_seen < ?1",
                "DELETE FROM fallbacks WHERE last_seen < ?1",
                "DELETE FROM shadow WHERE last_seen < ?1",
                "DELETE FROM peers WHERE last_seen < ?1",
                "DELETE FROM subjects WHERE kind = 'unknown_key' AND last_seen < ?1",
            ] {
                exec(&tx, sql, params![cutoff]).map_err(|e| self.err(e))?;
            }
            exec(
                &tx,
                "DELETE FROM outcomes WHERE kind = 'unknown_key' AND NOT EXISTS
                   (SELECT 1 FROM subjects s WHERE s.kind = outcomes.kind AND s.name = outcomes.name)",
                [],
            )
            .map_err(|e| self.err(e))?;
        }
        drop(swept);
        tx.commit().map_err(|e| self.err(e))
    }

    /// Reads everything.
    pub fn snapshot_blocking(&self) -> Result<Snapshot, StoreError> {
        let conn = self.lock();
        let e = |source| self.err(source);
        let mut snap = Snapshot::default();
        let mut stmt = conn
            .prepare("SELECT kind, name, first_seen, last_seen, last_key_seen, last_fallback, mode, mode_since FROM subjects")
            .map_err(e)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                    SubjectRow {
                        first_seen: r.get(2)?,
                        last_seen: r.get(3)?,
                        last_key_seen: r.get(4)?,
                        last_fallback: r.get(5)?,
                        mode: r.get(6)?,
                        mode_since: r.get(7)?,
                        ..SubjectRow::default()
                    },
                ))
            })
            .map_err(e)?;
        for row in rows {
            let (k, v) = row.map_err(e)?;
            snap.subjects.insert(k, v);
        }
        drop(stmt);

        let mut stmt = conn
            .prepare("SELECT kind, name, outcome, count FROM outcomes")
            .map_err(e)?;
        let mut rows = stmt.query([]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            let key = (
                r.get::<_, String>(0).map_err(e)?,
                r.get::<_, String>(1).map_err(e)?,
            );
            let outcome: String = r.get(2).map_err(e)?;
            let count: i64 = r.get(3).map_err(e)?;
            if let (Some(s), Some(o)) = (snap.subjects.get_mut(&key), Outcome::parse(&outcome)) {
                s.counts[o] = count.max(0) as u64;
            }
        }
        drop(rows);
        drop(stmt);

        let mut stmt = conn
            .prepare("SELECT kind, name, endpoint, status, count FROM endpoints")
            .map_err(e)?;
        let mut rows = stmt.query([]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            let key = (
                r.get::<_, String>(0).map_err(e)?,
                r.get::<_, String>(1).map_err(e)?,
            );
            if let Some(s) = snap.subjects.get_mut(&key) {
                let count: i64 = r.get(4).map_err(e)?;
                s.endpoints
                    .entry(r.get(2).map_err(e)?)
                    .or_default()
                    .insert(r.get(3).map_err(e)?, count.max(0) as u64);
            }
        }
        drop(rows);
        drop(stmt);

        let mut stmt = conn
            .prepare(
                "SELECT kind, name, endpoint, status, count FROM fallbacks ORDER BY count DESC",
            )
            .map_err(e)?;
        let mut rows = stmt.query([]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            let key = (
                r.get::<_, String>(0).map_err(e)?,
                r.get::<_, String>(1).map_err(e)?,
            );
            if let Some(s) = snap.subjects.get_mut(&key) {
                let count: i64 = r.get(4).map_err(e)?;
                s.fallbacks.push((
                    r.get(2).map_err(e)?,
                    r.get(3).map_err(e)?,
                    count.max(0) as u64,
                ));
            }
        }
        drop(rows);
        drop(stmt);

        let mut stmt = conn
            .prepare("SELECT kind, name, endpoint, key_status, oauth_status, count FROM shadow ORDER BY count DESC")
            .map_err(e)?;
        let mut rows = stmt.query([]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            let key = (
                r.get::<_, String>(0).map_err(e)?,
                r.get::<_, String>(1).map_err(e)?,
            );
            if let Some(s) = snap.subjects.get_mut(&key) {
                let count: i64 = r.get(5).map_err(e)?;
                s.shadow.push((
                    r.get(2).map_err(e)?,
                    r.get(3).map_err(e)?,
                    r.get(4).map_err(e)?,
                    count.max(0) as u64,
                ));
            }
        }
        drop(rows);
        drop(stmt);

        let mut stmt = conn
            .prepare("SELECT kind, name, what, value, count FROM peers ORDER BY count DESC, value")
            .map_err(e)?;
        let mut rows = stmt.query([]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            let key = (
                r.get::<_, String>(0).map_err(e)?,
                r.get::<_, String>(1).map_err(e)?,
            );
            if let Some(s) = snap.subjects.get_mut(&key) {
                let what: String = r.get(2).map_err(e)?;
                let count: i64 = r.get(4).map_err(e)?;
                let entry = (r.get(3).map_err(e)?, count.max(0) as u64);
                if what == "ip" {
                    s.ips.push(entry);
                } else {
                    s.user_agents.push(entry);
                }
            }
        }
        drop(rows);
        drop(stmt);

        let columns = traffic_columns().join(", ");
        let mut stmt = conn
            .prepare(&format!(
                "SELECT minute, {columns} FROM traffic ORDER BY minute"
            ))
            .map_err(e)?;
        let mut rows = stmt.query([]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            let mut counts = OutcomeMap::<u64>::default();
            for (i, o) in Outcome::ALL.into_iter().enumerate() {
                let v: i64 = r.get(i + 1).map_err(e)?;
                counts[o] = v.max(0) as u64;
            }
            snap.traffic.push((r.get(0).map_err(e)?, counts));
        }
        drop(rows);
        drop(stmt);

        let mut stmt = conn
            .prepare("SELECT name, first_seen, last_flush FROM replicas ORDER BY name")
            .map_err(e)?;
        let mut rows = stmt.query([]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            snap.replicas.push(super::store::ReplicaRow {
                name: r.get(0).map_err(e)?,
                first_seen: r.get(1).map_err(e)?,
                last_flush: r.get(2).map_err(e)?,
            });
        }
        Ok(snap)
    }
}

/// Creates `path` readable and writable by its owner only (`0600`), or tightens an
/// existing file to that: the audit names integrations, addresses and client ids.
/// SQLite creates its `-wal` and `-shm` files with the main file's permissions.
fn create_private(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Copies the audit file at `from` to the new file `to` (mode 0600): a consistent
/// snapshot (SQLite `VACUUM INTO`) that is safe while keybridge runs and writes. `from`
/// is opened read-only and never migrated, so a newer keybridge can back up the file of
/// an older one still running.
pub fn backup(from: &Path, to: &Path) -> Result<(), StoreError> {
    use rusqlite::OpenFlags;
    let open_error = |path: &Path, cause: String| StoreError::Open {
        path: path.to_owned(),
        cause,
        denied: false,
    };
    let conn = Connection::open_with_flags(
        from,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| open_error(from, e.to_string()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| open_error(from, e.to_string()))?;
    // VACUUM INTO needs a new or empty file: create it private first, refusing to
    // overwrite one that exists.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|e| StoreError::Open {
            path: to.to_owned(),
            cause: format!("cannot create the backup: {e}"),
            denied: false,
        })?;
    create_private(to).map_err(|e| open_error(to, e.to_string()))?;
    let target = to
        .to_str()
        .ok_or_else(|| open_error(to, "not a UTF-8 path".to_owned()))?;
    conn.execute("VACUUM INTO ?1", [target])
        .map_err(|cause| StoreError::Sqlite {
            path: from.to_owned(),
            cause,
        })?;
    Ok(())
}

/// Sets the connection up and brings its schema to the current version.
fn migrate(mut conn: Connection, path: &Path) -> Result<Connection, StoreError> {
    let err = |cause| StoreError::Sqlite {
        path: path.to_owned(),
        cause,
    };
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: version,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch(sql).map_err(err)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(err)?;
        tx.commit().map_err(err)?;
        tracing::info!(path = %path.display(), version = i + 1, "audit store migrated");
    }
    Ok(conn)
}

/// The traffic table has one column per outcome, named as the outcome.
fn traffic_columns() -> [&'static str; 7] {
    Outcome::ALL.map(Outcome::as_str)
}

/// Adds one minute's counts, outcome by outcome, by column name.
fn traffic_upsert() -> String {
    let columns = traffic_columns();
    let placeholders: Vec<String> = (2..=columns.len() + 1).map(|i| format!("?{i}")).collect();
    let updates: Vec<String> = columns
        .iter()
        .map(|c| format!("{c} = {c} + excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO traffic (minute, {}) VALUES (?1, {}) ON CONFLICT (minute) DO UPDATE SET {}",
        columns.join(", "),
        placeholders.join(", "),
        updates.join(", ")
    )
}

fn traffic_params(minute: i64, totals: &OutcomeMap<u64>) -> Vec<i64> {
    std::iter::once(minute)
        .chain(totals.values().map(|&c| c as i64))
        .collect()
}

/// Runs a blocking store call on tokio's blocking pool.
fn blocking<T: Send + 'static>(
    store: &Arc<SqliteStore>,
    f: impl FnOnce(&SqliteStore) -> Result<T, StoreError> + Send + 'static,
) -> StoreFuture<'static, T> {
    let store = Arc::clone(store);
    Box::pin(async move {
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|join| StoreError::Task(join.to_string()))?
    })
}

/// [`SqliteStore`] shared, as the audit holds it.
impl AuditStore for Arc<SqliteStore> {
    fn describe(&self) -> String {
        format!("SQLite {}", self.path.display())
    }

    /// SQLite answers every write (no timeout), so it never has a flush in doubt: the id
    /// is not needed.
    fn apply(
        &self,
        _id: i64,
        batch: Arc<Batch>,
        now: i64,
        max_unknown_keys: usize,
    ) -> StoreFuture<'_, ()> {
        blocking(self, move |s| {
            s.apply_blocking(&batch, now, max_unknown_keys)
        })
    }

    fn snapshot(&self) -> StoreFuture<'_, Snapshot> {
        blocking(self, SqliteStore::snapshot_blocking)
    }

    fn sync_modes(&self, modes: Vec<(Arc<str>, Mode)>, now: i64) -> StoreFuture<'_, ()> {
        blocking(self, move |s| s.sync_modes_blocking(&modes, now))
    }
}

/// Executes `sql` through the connection's statement cache (flushes repeat the same
/// few statements thousands of times).
fn exec(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params)
}

//! The fleet's shared token cache (`fleet.redis_url`): one token per client across
//! replicas, in Redis, sealed so that Redis never holds a usable bearer.
//!
//! - **One replica mints.** Before fetching, a replica takes the client's lease
//!   (`SET … NX PX`, its own random owner value; released by compare-and-delete); the
//!   others wait for the token it writes. The lease outlives a token request
//!   (`token.request_timeout` + 5 s), so a crashed holder only delays the others once.
//! - **Sealed.** The `Authorization` value is encrypted and authenticated
//!   (ChaCha20-Poly1305) under a key derived (HKDF-SHA256) from the client's secret, id,
//!   token URL, scopes and auth style; its timetable is bound to it as associated data. A replica with a
//!   different secret cannot open it and mints its own.
//! - **Newer wins.** A write replaces the stored token only if it was requested later
//!   (a Lua compare-and-set), so a slow replica never puts back an older token.
//! - **One clock.** Record times are the fleet's: Redis `TIME`. Each replica measures
//!   its own clock's offset from it (at first use, then every 30 s) and converts, so a
//!   replica whose clock is wrong still writes and reads true times; an offset beyond
//!   [`CLOCK_TOLERANCE`] is reported (`/readyz`, `/tokens`, the dashboard, a gauge).
//!   A record whose times are implausible on the fleet's clock (requested in the
//!   future, settling longer than any settle delay) is ignored, logged and counted, and
//!   the next token stored replaces it.
//! - **Optional.** Every call has a short deadline; on any Redis error the caller
//!   mints locally, as a single node does, and the state is reported (`/tokens`,
//!   `/readyz`, metrics) until Redis answers again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::HeaderValue;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::config::{Client, Secret};
use crate::metrics::Metrics;

/// How long one Redis call may take before the caller goes on without it.
const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// The stored record's format; a record of another version is ignored.
const VERSION: u8 = 1;
/// How far a replica's clock may be off the fleet's (Redis `TIME`) before it is
/// reported skewed, and how far in the future a record's request time may lie before
/// the record is implausible.
pub const CLOCK_TOLERANCE: Duration = Duration::from_secs(2);
/// The longest settle a plausible record can have: `token.settle_delay`'s maximum.
const MAX_SETTLE: Duration = Duration::from_secs(60);
/// How often a replica measures its clock against the fleet's again.
const CLOCK_RECHECK: Duration = Duration::from_secs(30);

/// A token as stored in (and read back from) Redis: the header value and its
/// timetable in Unix milliseconds on the fleet's clock ([`SharedTokens::fleet_now_ms`]).
pub struct SharedToken {
    pub authorization: HeaderValue,
    pub requested_at_ms: i64,
    pub usable_at_ms: i64,
    pub refresh_at_ms: i64,
    pub expires_at_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct Record {
    v: u8,
    requested_at: i64,
    usable_at: i64,
    refresh_at: i64,
    expires_at: i64,
    nonce: String,
    sealed: String,
}

/// Whether Redis answers, for status pages (never a URL or a token).
#[derive(Debug, Clone, Default)]
pub struct SharedHealth {
    pub available: bool,
    pub last_error: Option<String>,
    /// Tokens read from Redis instead of fetched.
    pub reads: u64,
    /// Tokens this replica fetched and wrote for the fleet.
    pub writes: u64,
    /// Fetches done locally because Redis did not answer.
    pub local_fallbacks: u64,
    /// This replica's clock minus the fleet's (Redis `TIME`), once measured.
    pub clock_offset_ms: Option<i64>,
    /// Stored records ignored because their times were implausible.
    pub implausible_records: u64,
    /// Why the last one was.
    pub last_implausible: Option<String>,
}

impl SharedHealth {
    /// Whether this replica's clock is off the fleet's by more than [`CLOCK_TOLERANCE`].
    pub fn clock_skewed(&self) -> bool {
        self.clock_offset_ms
            .is_some_and(|o| o.unsigned_abs() > CLOCK_TOLERANCE.as_millis() as u64)
    }
}

/// The Redis side of the token cache.
pub struct SharedTokens {
    conn: redis::aio::ConnectionManager,
    /// Key prefix (`fleet.redis_prefix`): fleets sharing one Redis keep apart.
    prefix: String,
    /// `host:port`, never the password.
    target: String,
    rng: SystemRandom,
    health: Mutex<SharedHealth>,
    /// This replica's clock minus the fleet's, in ms, and when it was measured.
    clock: Mutex<(i64, Option<Instant>)>,
    /// When an implausible record was last logged (at most one line per 10 s).
    warned: Mutex<Option<Instant>>,
    /// The last implausible record counted (its times), so a record read by waiters
    /// every 100 ms counts once.
    last_implausible: Mutex<Option<(i64, i64, i64)>>,
    metrics: Option<Arc<Metrics>>,
}

/// What happened to one token: read from another replica, written for the fleet, or
/// fetched for this replica only because Redis did not answer.
#[derive(Debug, Clone, Copy)]
pub enum Tally {
    Read,
    Written,
    Local,
}

/// What a lease attempt found.
pub enum Lease {
    /// This replica holds it (the owner value releases it).
    Held(String),
    /// Another replica does: wait for its token.
    Taken,
}

/// Redis failed (or was too slow); the message never holds the URL or a token.
#[derive(Debug, Clone)]
pub struct SharedError(pub String);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

impl SharedTokens {
    /// A lazily connecting client for `url` (Redis may be down at start).
    pub fn new(url: &Secret, prefix: &str) -> Result<SharedTokens, String> {
        let (conn, target) = crate::redis_link::connect(url, CALL_TIMEOUT, 1)?;
        Ok(SharedTokens {
            conn,
            prefix: prefix.to_owned(),
            target,
            rng: SystemRandom::new(),
            health: Mutex::new(SharedHealth::default()),
            clock: Mutex::new((0, None)),
            warned: Mutex::new(None),
            last_implausible: Mutex::new(None),
            metrics: None,
        })
    }

    /// Reports the clock offset and implausible records to `metrics` too.
    pub fn reporting_to(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Now on the fleet's clock: this replica's clock corrected by its measured offset
    /// from Redis `TIME` (uncorrected until first measured).
    pub fn fleet_now_ms(&self) -> i64 {
        now_ms() - self.clock.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// This replica's clock's offset from the fleet's, measured again if it is older
    /// than [`CLOCK_RECHECK`]: `TIME`, read between two local readings.
    async fn sync_clock(&self) -> Result<(), SharedError> {
        let due = {
            let clock = self.clock.lock().unwrap_or_else(|p| p.into_inner());
            clock.1.is_none_or(|at| at.elapsed() >= CLOCK_RECHECK)
        };
        if !due {
            return Ok(());
        }
        let before = now_ms();
        let (secs, micros): (i64, i64) = self.call(redis::cmd("TIME").clone()).await?;
        let after = now_ms();
        // A slow exchange (a reconnect, a retry) says little about the offset: measure
        // again next time rather than keep an error of half its length.
        if after - before > 200 {
            return Ok(());
        }
        let fleet = secs.saturating_mul(1000).saturating_add(micros / 1000);
        let offset = before + (after - before) / 2 - fleet;
        *self.clock.lock().unwrap_or_else(|p| p.into_inner()) = (offset, Some(Instant::now()));
        if let Some(metrics) = &self.metrics {
            metrics.clock_offset(offset);
        }
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let was_skewed = h.clock_skewed();
        h.clock_offset_ms = Some(offset);
        if h.clock_skewed() && !was_skewed {
            tracing::warn!(
                offset_ms = offset,
                tolerance_ms = CLOCK_TOLERANCE.as_millis() as u64,
                "this replica's clock is off the fleet's (Redis TIME); shared tokens are timed on the fleet's clock, but fix the clock (NTP): audit times come from it"
            );
        } else if was_skewed && !h.clock_skewed() {
            tracing::info!(
                offset_ms = offset,
                "this replica's clock agrees with the fleet's again"
            );
        }
        Ok(())
    }

    /// Why `t` cannot be a record an honest replica wrote by now, if it cannot: requested
    /// in the future, settling later than any settle delay from now (what a reader
    /// would wait for), or expiring before it settles.
    fn implausible(t: &SharedToken, now: i64) -> Option<String> {
        let tolerance = CLOCK_TOLERANCE.as_millis() as i64;
        if t.requested_at_ms > now + tolerance {
            return Some(format!(
                "requested {} ms in the future",
                t.requested_at_ms - now
            ));
        }
        let settles_in = t.usable_at_ms - now;
        if t.usable_at_ms < t.requested_at_ms
            || settles_in > MAX_SETTLE.as_millis() as i64 + tolerance
        {
            return Some(format!("settles {settles_in} ms from now"));
        }
        if t.expires_at_ms <= t.usable_at_ms || t.refresh_at_ms > t.expires_at_ms {
            return Some("expires before it settles or refreshes after it expires".into());
        }
        None
    }

    /// Counts an implausible record, once however often it is read (waiters poll), and
    /// logs it at most once per 10 s.
    fn note_implausible(&self, record: &SharedToken, why: String) {
        {
            let mut last = self
                .last_implausible
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let id = (
                record.requested_at_ms,
                record.usable_at_ms,
                record.expires_at_ms,
            );
            if *last == Some(id) {
                return;
            }
            *last = Some(id);
        }
        let log = {
            let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
            let log = warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(10));
            if log {
                *warned = Some(Instant::now());
            }
            log
        };
        if log {
            tracing::warn!(reason = %why, "ignoring a shared token record with implausible times (a replica with a wrong clock?); the next token stored replaces it");
        }
        if let Some(metrics) = &self.metrics {
            metrics.token_shared("implausible");
        }
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        h.implausible_records += 1;
        h.last_implausible = Some(why);
    }

    /// `<prefix><what>:<client digest>`.
    fn key(&self, what: &str, client: &Client) -> String {
        format!("{}{what}:{}", self.prefix, client_id(client))
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn health(&self) -> SharedHealth {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn note<T>(&self, result: &Result<T, SharedError>) {
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(_) => {
                if !h.available {
                    tracing::info!(redis = %self.target, "shared token cache reachable");
                }
                h.available = true;
                h.last_error = None;
            }
            Err(e) => {
                if h.available || h.last_error.is_none() {
                    tracing::warn!(redis = %self.target, error = %e, "shared token cache unreachable: minting tokens locally until it is back");
                }
                h.available = false;
                h.last_error = Some(e.to_string());
            }
        }
    }

    /// Counts one token through the shared cache, in the health report and the metric.
    pub fn tally(&self, tally: Tally, metrics: &crate::metrics::Metrics) {
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let (counter, label) = match tally {
            Tally::Read => (&mut h.reads, "read"),
            Tally::Written => (&mut h.writes, "written"),
            Tally::Local => (&mut h.local_fallbacks, "local"),
        };
        *counter += 1;
        metrics.token_shared(label);
    }

    /// Runs `cmd`, tried again once on a dropped connection: only for commands whose
    /// second run means what the first would have (GET, EXISTS, TIME; not `SET NX`,
    /// whose lost reply would read as someone else's claim: [`Self::call_once`]).
    async fn call<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, SharedError> {
        self.bounded(true, || {
            let mut conn = self.conn.clone();
            let cmd = &cmd;
            async move { cmd.query_async::<T>(&mut conn).await }
        })
        .await
    }

    /// Runs `cmd` once: a dropped connection is an error (the caller falls back).
    async fn call_once<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, SharedError> {
        self.bounded(false, || {
            let mut conn = self.conn.clone();
            let cmd = &cmd;
            async move { cmd.query_async::<T>(&mut conn).await }
        })
        .await
    }

    async fn script<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T, SharedError> {
        let mut invocation = script.prepare_invoke();
        for k in keys {
            invocation.key(*k);
        }
        for a in args {
            invocation.arg(*a);
        }
        // Both scripts are safe to run twice: newer-wins compares, compare-and-delete
        // checks the owner.
        self.bounded(true, || {
            let mut conn = self.conn.clone();
            let invocation = &invocation;
            async move { invocation.invoke_async::<T>(&mut conn).await }
        })
        .await
    }

    /// One Redis exchange within [`CALL_TIMEOUT`], its outcome noted in the health. An
    /// exchange that finds its connection dropped (Redis restarted, a reset, an idle
    /// timeout on the way) is tried once more on the connection the manager reopens:
    /// the manager reports the drop to the first command after it, and this cache's
    /// commands come hours apart, so without the second try every refresh after a
    /// blip would be fetched by every replica.
    async fn bounded<T, F, Fut>(&self, retry: bool, exchange: F) -> Result<T, SharedError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let attempts = async {
            match exchange().await {
                Err(e) if retry && (e.is_connection_dropped() || e.is_io_error()) => {
                    tracing::debug!(redis = %self.target, error = %e, "shared token cache connection dropped; trying once more");
                    exchange().await
                }
                result => result,
            }
        };
        let result = match tokio::time::timeout(CALL_TIMEOUT, attempts).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(SharedError(format!("redis {}: {e}", self.target))),
            Err(_) => Err(SharedError(format!(
                "redis {}: no answer within {} ms",
                self.target,
                CALL_TIMEOUT.as_millis()
            ))),
        };
        self.note(&result);
        result
    }

    /// The stored token of `client`, if there is one this replica can open and its
    /// times are plausible on the fleet's clock (an implausible one is counted).
    pub async fn load(&self, client: &Client) -> Result<Option<SharedToken>, SharedError> {
        self.sync_clock().await?;
        let key = self.key("token", client);
        let stored: Option<String> = self.call(redis::cmd("GET").arg(&key).clone()).await?;
        let Some(token) = stored.and_then(|stored| open(client, &key, &stored)) else {
            return Ok(None);
        };
        if let Some(why) = Self::implausible(&token, self.fleet_now_ms()) {
            self.note_implausible(&token, why);
            return Ok(None);
        }
        Ok(Some(token))
    }

    /// Writes `token` (times on the fleet's clock) unless a newer one is stored;
    /// `true` if written. A stored record requested in the future (beyond
    /// [`CLOCK_TOLERANCE`] of Redis `TIME`) is not newer: it is replaced.
    pub async fn store(&self, client: &Client, token: &SharedToken) -> Result<bool, SharedError> {
        let key = self.key("token", client);
        let record = self.seal(client, &key, token)?;
        let ttl = (token.expires_at_ms - self.fleet_now_ms()).max(1);
        let written: i64 = self
            .script(
                &newer_wins(),
                &[&key],
                &[
                    &record,
                    &token.requested_at_ms.to_string(),
                    &ttl.to_string(),
                    &CLOCK_TOLERANCE.as_millis().to_string(),
                ],
            )
            .await?;
        Ok(written == 1)
    }

    /// Tries to take `client`'s minting lease for `lease`.
    pub async fn lease(&self, client: &Client, lease: Duration) -> Result<Lease, SharedError> {
        let mut owner = [0u8; 16];
        self.rng
            .fill(&mut owner)
            .map_err(|_| SharedError("no randomness for a lease owner".into()))?;
        let owner = hex::encode(owner);
        let set: Option<String> = self
            .call_once(
                redis::cmd("SET")
                    .arg(self.key("lease", client))
                    .arg(&owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(lease.as_millis() as u64)
                    .clone(),
            )
            .await?;
        Ok(if set.is_some() {
            Lease::Held(owner)
        } else {
            Lease::Taken
        })
    }

    /// Whether some replica holds `client`'s lease now.
    pub async fn leased(&self, client: &Client) -> Result<bool, SharedError> {
        let exists: i64 = self
            .call(redis::cmd("EXISTS").arg(self.key("lease", client)).clone())
            .await?;
        Ok(exists == 1)
    }

    /// Releases a lease this replica holds (never one another replica took since).
    pub async fn release(&self, client: &Client, owner: &str) {
        let released: Result<i64, _> = self
            .script(
                &compare_and_delete(),
                &[&self.key("lease", client)],
                &[owner],
            )
            .await;
        if let Err(e) = released {
            tracing::debug!(error = %e, "lease not released; it expires by itself");
        }
    }

    /// Claims the fleet-wide right to replace `client`'s refused token, once per
    /// `interval`: `false` if another replica (or this one) did within it.
    pub async fn claim_forced(
        &self,
        client: &Client,
        interval: Duration,
    ) -> Result<bool, SharedError> {
        let set: Option<String> = self
            .call_once(
                redis::cmd("SET")
                    .arg(self.key("forced", client))
                    .arg("1")
                    .arg("NX")
                    .arg("PX")
                    .arg(interval.as_millis().max(1) as u64)
                    .clone(),
            )
            .await?;
        Ok(set.is_some())
    }

    fn seal(&self, client: &Client, key: &str, token: &SharedToken) -> Result<String, SharedError> {
        let mut nonce = [0u8; aead::NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| SharedError("no randomness for a nonce".into()))?;
        let mut sealed = token.authorization.as_bytes().to_vec();
        sealing_key(client)
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(
                    key,
                    token.requested_at_ms,
                    token.usable_at_ms,
                    token.refresh_at_ms,
                    token.expires_at_ms,
                )),
                &mut sealed,
            )
            .map_err(|_| SharedError("sealing the token failed".into()))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        serde_json::to_string(&Record {
            v: VERSION,
            requested_at: token.requested_at_ms,
            usable_at: token.usable_at_ms,
            refresh_at: token.refresh_at_ms,
            expires_at: token.expires_at_ms,
            nonce: b64.encode(nonce),
            sealed: b64.encode(sealed),
        })
        .map_err(|e| SharedError(format!("encoding the token record: {e}")))
    }
}

/// Opens a stored record; `None` for another version, another secret or tampering.
fn open(client: &Client, key: &str, stored: &str) -> Option<SharedToken> {
    let record: Record = serde_json::from_str(stored).ok()?;
    if record.v != VERSION {
        return None;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let nonce: [u8; aead::NONCE_LEN] = b64.decode(&record.nonce).ok()?.try_into().ok()?;
    let mut sealed = b64.decode(&record.sealed).ok()?;
    let plain = sealing_key(client)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(
                key,
                record.requested_at,
                record.usable_at,
                record.refresh_at,
                record.expires_at,
            )),
            &mut sealed,
        )
        .ok()?;
    let mut authorization = HeaderValue::from_bytes(plain).ok()?;
    use zeroize::Zeroize as _;
    sealed.zeroize();
    authorization.set_sensitive(true);
    Some(SharedToken {
        authorization,
        requested_at_ms: record.requested_at,
        usable_at_ms: record.usable_at,
        refresh_at_ms: record.refresh_at,
        expires_at_ms: record.expires_at,
    })
}

fn aad(key: &str, requested: i64, usable: i64, refresh: i64, expires: i64) -> Vec<u8> {
    format!("{key}|{requested}|{usable}|{refresh}|{expires}").into_bytes()
}

/// The client's sealing key: HKDF-SHA256 over its secret, bound to its id and token URL.
fn sealing_key(client: &Client) -> LessSafeKey {
    struct Len;
    impl ring::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            32
        }
    }
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"keybridge shared token v1");
    let prk = salt.extract(client.client_secret.expose().as_bytes());
    let identity = grant_identity(client);
    let info = [identity.as_bytes()];
    let mut key = [0u8; 32];
    let filled = prk.expand(&info, Len).and_then(|okm| okm.fill(&mut key));
    #[expect(
        clippy::expect_used,
        reason = "HKDF-SHA256 yields 32 bytes and a 32-byte ChaCha20 key is always valid"
    )]
    let unbound = filled
        .and_then(|()| UnboundKey::new(&aead::CHACHA20_POLY1305, &key))
        .expect("a 32-byte key from HKDF-SHA256 is a valid ChaCha20-Poly1305 key");
    use zeroize::Zeroize as _;
    key.zeroize();
    LessSafeKey::new(unbound)
}

/// Redis keys of a client: by a digest of its id and token URL, never its name alone
/// (two configs may name different clients alike) and never anything secret.
fn client_id(client: &Client) -> String {
    let digest = Sha256::new()
        .chain_update(grant_identity(client))
        .finalize();
    hex::encode(&digest[..12])
}

/// What makes two configured clients get interchangeable tokens: the token URL, the
/// client id, the requested scopes (sorted) and the authentication style. A reload that
/// adds a scope therefore never picks up a token granted without it.
fn grant_identity(client: &Client) -> String {
    let mut scopes = client.scopes.clone();
    scopes.sort_unstable();
    format!(
        "{}\0{}\0{}\0{:?}",
        client.instance.token_url,
        client.client_id,
        scopes.join(" "),
        client.auth
    )
}

/// `SET KEYS[1] = ARGV[1]` with `PX ARGV[3]`, unless the stored record was requested at or
/// after `ARGV[2]` and no later than `ARGV[4]` ms past Redis's own `TIME` (a record from
/// the future is a wrong clock's, not newer). Returns 1 when written.
fn newer_wins() -> redis::Script {
    redis::Script::new(
        r"redis.replicate_commands()
          local cur = redis.call('GET', KEYS[1])
          if cur then
            local ok, rec = pcall(cjson.decode, cur)
            local t = redis.call('TIME')
            local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
            if ok and type(rec) == 'table' and tonumber(rec.requested_at)
               and tonumber(rec.requested_at) >= tonumber(ARGV[2])
               and tonumber(rec.requested_at) <= now + tonumber(ARGV[4]) then
              return 0
            end
          end
          redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
          return 1",
    )
}

fn compare_and_delete() -> redis::Script {
    redis::Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
          return 0",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::Path;

    fn client(secret: &str, client_id: &str) -> std::sync::Arc<Client> {
        let yaml = format!(
            "instances: {{prod: {{base_url: 'https://acme.coupahost.com'}}}}\n\
             clients: {{c: {{instance: prod, client_id: {client_id}, client_secret: {secret}}}}}\n"
        );
        let config =
            crate::config::Config::from_yaml(&yaml, Path::new("."), &HashMap::new()).unwrap();
        std::sync::Arc::clone(&config.clients["c"])
    }

    fn sealed(client: &Client, key: &str) -> String {
        let store = SharedTokens::new(&Secret::new("redis://127.0.0.1:1"), "t:").unwrap();
        let token = SharedToken {
            authorization: HeaderValue::from_static("Bearer the-real-token"),
            requested_at_ms: 1,
            usable_at_ms: 2,
            refresh_at_ms: 3,
            expires_at_ms: 4,
        };
        store.seal(client, key, &token).unwrap()
    }

    #[tokio::test]
    async fn only_the_same_client_and_secret_can_open_a_stored_token() {
        let ours = client("secret-one-0123456789", "id");
        let record = sealed(&ours, "k");
        assert!(
            !record.contains("the-real-token"),
            "Redis never holds the bearer"
        );
        let opened = open(&ours, "k", &record).unwrap();
        assert_eq!(opened.authorization.as_bytes(), b"Bearer the-real-token");
        assert_eq!(opened.refresh_at_ms, 3);
        // Another secret, another client id, another key: nothing.
        assert!(open(&client("secret-two-0123456789", "id"), "k", &record).is_none());
        assert!(open(&client("secret-one-0123456789", "other"), "k", &record).is_none());
        assert!(open(&ours, "k2", &record).is_none());
        // A timetable edited in Redis (to keep a token alive longer) fails to open.
        let tampered = record.replace("\"expires_at\":4", "\"expires_at\":999999");
        assert_ne!(tampered, record);
        assert!(open(&ours, "k", &tampered).is_none());
    }
}

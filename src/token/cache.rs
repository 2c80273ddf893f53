//! Per-client token cache with single-flight fetches and refresh-ahead.
//!
//! Guarantees:
//! - **One fetch per need.** Every fetch runs inside moka's per-key compute, which
//!   serialises callers and lets each re-check the entry under the lock: N concurrent
//!   requests on a cold cache cause one token request. Callers that queued behind a
//!   failed fetch get that fetch's error instead of starting their own.
//! - **No waiting in steady state.** A background task per client refreshes the token
//!   when `refresh_before_expiry` of its life is left (Coupa: renew every 20 h of 24).
//!   Until the new token has settled, the previous one keeps being served.
//! - **Settle delay.** Coupa may reject a token in its first seconds; a token younger
//!   than `settle_delay` is only handed out after waiting for it to settle.
//! - **A failed refresh is not an outage.** The old token is served until it expires.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;
use moka::ops::compute::{CompResult, Op};
use tokio::task::JoinHandle;

use super::oauth::{self, TokenError};
use super::shared::{CLOCK_TOLERANCE, SharedHealth, SharedTokens};
use crate::config::{Client, TokenSettings};
use crate::metrics::Metrics;
use crate::upstream::HttpClient;

/// A cached access token and its timetable.
pub struct Token {
    pub(super) authorization: HeaderValue,
    /// When the token request was sent (lifetimes count from here, so the round trip
    /// is never credited as token life).
    pub requested_at: Instant,
    /// Not handed out before this instant (settle delay after receipt).
    pub usable_at: Instant,
    /// The background refresher replaces the token from here on.
    pub refresh_at: Instant,
    /// Never used from here on (a small safety margin before the real expiry).
    pub expires_at: Instant,
    /// Wall-clock expiry, for status pages.
    pub expires_at_wall: SystemTime,
    /// Distinguishes successive tokens of one client.
    pub serial: u64,
    /// A digest of the header value: the same token has the same id on every replica
    /// (a 401 names the refused token fleet-wide). Not reversible to the token.
    pub id: u64,
}

impl Token {
    /// The `Authorization` header value (`Bearer …`), marked sensitive.
    pub fn authorization(&self) -> &HeaderValue {
        &self.authorization
    }

    fn is_usable(&self, now: Instant) -> bool {
        self.usable_at <= now && now < self.expires_at
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("serial", &self.serial)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What the cache holds per client: the newest token, and the one before it while the
/// newest is still settling.
#[derive(Clone)]
struct Held {
    current: Arc<Token>,
    previous: Option<Arc<Token>>,
}

enum Serving {
    Ready(Arc<Token>),
    /// Valid but younger than the settle delay, and nothing older to use meanwhile.
    Settling(Arc<Token>),
    Expired,
}

impl Held {
    fn serving(&self, now: Instant) -> Serving {
        if self.current.is_usable(now) {
            return Serving::Ready(Arc::clone(&self.current));
        }
        if let Some(prev) = self.previous.as_ref().filter(|p| p.is_usable(now)) {
            return Serving::Ready(Arc::clone(prev));
        }
        if now < self.current.expires_at {
            return Serving::Settling(Arc::clone(&self.current));
        }
        Serving::Expired
    }
}

/// Who replaces a token Coupa refused, as the fleet decides it.
pub(super) enum Replacement {
    /// This replica fetches it (it claimed the replacement, or there is no fleet cache,
    /// or Redis is away and the local rule decided).
    FetchHere,
    /// Another replica claimed it within `token.min_refetch_interval` and stored this.
    Theirs(Token),
    /// Another replica claimed it but stored nothing in time: keep serving the old one.
    Keep,
}

/// Fetch history of one client, for readiness, status pages and logs. Never the token.
#[derive(Debug, Clone, Default)]
pub struct ClientStatus {
    pub fetches_ok: u64,
    pub fetches_failed: u64,
    pub last_fetch: Option<SystemTime>,
    pub last_error: Option<TokenError>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    last_failure_at: Option<Instant>,
    /// No new fetch before this (jittered exponential backoff after failures).
    retry_at: Option<Instant>,
    /// The last replacement forced by a refusal (rate-limited by min_refetch_interval).
    last_forced: Option<Instant>,
}

pub(super) struct Inner {
    cache: moka::future::Cache<Arc<str>, Held>,
    pub(super) clients: HashMap<Arc<str>, Arc<Client>>,
    pub(super) status: HashMap<Arc<str>, Mutex<ClientStatus>>,
    pub(super) http: HttpClient,
    pub(super) settings: TokenSettings,
    pub(super) serial: AtomicU64,
    pub(super) metrics: Arc<Metrics>,
    /// The fleet's Redis cache (`fleet.redis_url`), if any.
    pub(super) shared: Option<Arc<SharedTokens>>,
}

/// The token cache. Cheap to clone.
#[derive(Clone)]
pub struct TokenCache {
    pub(super) inner: Arc<Inner>,
}

/// Stops the background refreshers when dropped (a reload replaces them): each stops at
/// its next wait, never in the middle of a refresh, so a token being fetched is still
/// stored (for the fleet) and a fleet lease taken for it is released, not left to lapse.
pub struct Refreshers {
    stop: tokio::sync::watch::Sender<bool>,
    _tasks: Vec<JoinHandle<()>>,
}

impl Drop for Refreshers {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

impl TokenCache {
    pub fn new<'a>(
        clients: impl IntoIterator<Item = &'a Arc<Client>>,
        http: HttpClient,
        settings: TokenSettings,
        metrics: Arc<Metrics>,
        shared: Option<Arc<SharedTokens>>,
    ) -> Self {
        let clients: HashMap<Arc<str>, Arc<Client>> = clients
            .into_iter()
            .map(|c| (Arc::clone(&c.name), Arc::clone(c)))
            .collect();
        let status = clients
            .keys()
            .map(|k| (Arc::clone(k), Mutex::new(ClientStatus::default())))
            .collect();
        let cache = moka::future::Cache::builder()
            .max_capacity(clients.len().max(1) as u64 * 2)
            .build();
        TokenCache {
            inner: Arc::new(Inner {
                cache,
                clients,
                status,
                http,
                settings,
                serial: AtomicU64::new(0),
                metrics,
                shared,
            }),
        }
    }

    /// A usable token for `client`, fetching (once, for all concurrent callers) if there
    /// is none and waiting out the settle delay of a brand-new token.
    pub async fn get(&self, client: &str) -> Result<Arc<Token>, TokenError> {
        if let Some(slot) = self.inner.cache.get(client).await {
            match slot.serving(Instant::now()) {
                Serving::Ready(token) => return Ok(token),
                Serving::Settling(token) => {
                    if let Some(token) = self.wait_settled(token).await {
                        return Ok(token);
                    }
                }
                Serving::Expired => {}
            }
        }
        // The fetch runs in its own task: a caller that gives up (client disconnect)
        // must not abort a fetch other callers are queued behind.
        let cache = self.clone();
        let name = client.to_owned();
        let slot = tokio::spawn(async move { cache.refresh(&name).await })
            .await
            .map_err(|e| TokenError::Internal(format!("token fetch task failed: {e}")))??;
        let expired = || {
            TokenError::InvalidResponse(
                "token expired before it could be used (expires_in shorter than the settle delay?)"
                    .into(),
            )
        };
        match slot.serving(Instant::now()) {
            Serving::Ready(token) => Ok(token),
            Serving::Settling(token) => self.wait_settled(token).await.ok_or_else(expired),
            Serving::Expired => Err(expired()),
        }
    }

    /// The token that replaced the `refused` one (by serial) once it may be used, for
    /// sending again a request Coupa answered 401: `None` when nothing replaced it (it
    /// was younger than the settle delay, or another replacement came within
    /// `token.min_refetch_interval`), or when the replacement is not usable within
    /// `token.settle_delay` + `token.request_timeout`.
    pub async fn replacement(&self, client: &str, refused: u64) -> Option<Arc<Token>> {
        let held = self.inner.cache.get(client).await?;
        if held.current.serial == refused {
            return None;
        }
        let settings = &self.inner.settings;
        let bound = settings.settle_delay + settings.request_timeout;
        tokio::time::timeout(bound, self.wait_settled(held.current))
            .await
            .ok()
            .flatten()
    }

    /// Waits until `token` may be used, but never longer than `token.settle_delay` +
    /// [`CLOCK_TOLERANCE`] (a token adopted from another replica says when it settles;
    /// however wrong that is, no request waits longer); `None` if it expires first.
    async fn wait_settled(&self, token: Arc<Token>) -> Option<Arc<Token>> {
        let longest = Instant::now() + self.inner.settings.settle_delay + CLOCK_TOLERANCE;
        tokio::time::sleep_until(token.usable_at.min(longest).into()).await;
        (Instant::now() < token.expires_at).then_some(token)
    }

    /// Fetches a new token unless the cached one is still before its refresh time.
    /// Concurrent calls for one client run one at a time, each re-checking first.
    async fn refresh(&self, name: &str) -> Result<Held, TokenError> {
        self.refresh_inner(name, true).await
    }

    /// `respect_backoff: false` for the background refresher, which owns the retry
    /// schedule; request-path callers inside the backoff get the last error at once.
    async fn refresh_inner(&self, name: &str, respect_backoff: bool) -> Result<Held, TokenError> {
        let inner = &self.inner;
        let client = inner
            .clients
            .get(name)
            .ok_or_else(|| TokenError::Internal(format!("no client named `{name}`")))?;
        let queued_at = Instant::now();
        let result = inner
            .cache
            .entry(Arc::clone(&client.name))
            .and_try_compute_with(|entry| async move {
                let old = entry.map(|e| e.into_value());
                let now = Instant::now();
                if let Some(slot) = &old
                    && now < slot.current.refresh_at
                    && now < slot.current.expires_at
                {
                    return Ok(Op::Nop); // someone refreshed while we queued
                }
                if let Some(err) = self.recent_failure(name, queued_at, now, respect_backoff) {
                    // A fetch failed while we queued, or we are inside the backoff
                    // after a failure: share that result instead of asking again.
                    return Err(err);
                }
                let token = self.obtain(client, None).await?;
                let previous = old
                    .map(|s| s.current)
                    .filter(|t| Instant::now() < t.expires_at);
                Ok(Op::Put(Held {
                    current: Arc::new(token),
                    previous,
                }))
            })
            .await?;
        match result {
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) | CompResult::Unchanged(e) => {
                Ok(e.into_value())
            }
            CompResult::StillNone(_) | CompResult::Removed(_) => Err(TokenError::Internal(
                "token cache entry vanished during refresh".into(),
            )),
        }
    }

    /// A cache for a new configuration (hot reload). Clients whose credentials are
    /// unchanged keep their cached token and history; returned beside the cache are the
    /// clients that are new or changed, which have no token yet.
    pub async fn reconfigure<'a>(
        &self,
        clients: impl IntoIterator<Item = &'a Arc<Client>>,
        settings: TokenSettings,
    ) -> (TokenCache, Vec<Arc<str>>) {
        let next = TokenCache::new(
            clients,
            self.inner.http.clone(),
            settings,
            Arc::clone(&self.inner.metrics),
            self.inner.shared.clone(),
        );
        // Serials keep counting, so an in-flight 401 for an old token can never match a
        // new one.
        next.inner
            .serial
            .store(self.inner.serial.load(Ordering::Relaxed), Ordering::Relaxed);
        let mut fresh = Vec::new();
        for (name, client) in &next.inner.clients {
            match self.inner.clients.get(name) {
                Some(old) if same_credentials(old, client) => {
                    if let Some(slot) = self.inner.cache.get(&**name).await {
                        next.inner.cache.insert(Arc::clone(name), slot).await;
                    }
                    let history = self.status_lock(name).clone();
                    *next.status_lock(name) = history;
                }
                _ => fresh.push(Arc::clone(name)),
            }
        }
        (next, fresh)
    }

    /// Fetches `client`'s first token now (reload: before the new config serves).
    pub async fn prefetch(&self, client: &str) -> Result<(), TokenError> {
        self.refresh_inner(client, false).await.map(|_| ())
    }

    /// Coupa refused token `serial` of `client` (401). Coupa can reject a token in its
    /// first seconds and warns that token requests can expire the tokens in use, so a
    /// refusal replaces the token only if it is older than the settle delay and no
    /// forced replacement happened within `token.min_refetch_interval`; and the refused
    /// token keeps serving every other request until its replacement has settled (no
    /// one waits on the token endpoint or the settle delay). Concurrent refusals of one
    /// token cause one fetch. Returns once the replacement (if any) is in the cache.
    pub async fn refused(&self, client: &str, serial: u64) {
        // In its own task: a caller that goes away must not cut a replacement (and its
        // Redis lease) off half-way.
        let cache = self.clone();
        let client = client.to_owned();
        let _ = tokio::spawn(async move { cache.replace_refused(&client, serial).await }).await;
    }

    async fn replace_refused(&self, client: &str, serial: u64) {
        let Some(name) = self
            .inner
            .clients
            .get_key_value(client)
            .map(|(k, _)| Arc::clone(k))
        else {
            return;
        };
        let Some(config) = self.inner.clients.get(client).cloned() else {
            return;
        };
        let result = self
            .inner
            .cache
            .entry(name)
            .and_try_compute_with(|entry| async move {
                let Some(slot) = entry.map(|e| e.into_value()) else {
                    return Ok::<_, TokenError>(Op::Nop);
                };
                if slot.current.serial != serial {
                    // Already replaced. The refused one may still serve while its
                    // replacement settles (better than making every caller wait); the
                    // replacement takes over as soon as it is usable.
                    return Ok(Op::Nop);
                }
                let now = Instant::now();
                let settings = &self.inner.settings;
                if now.saturating_duration_since(slot.current.requested_at) < settings.settle_delay {
                    tracing::info!(client, serial, "Coupa refused a token younger than the settle delay; keeping it");
                    return Ok(Op::Nop);
                }
                {
                    let mut status = self.status_lock(client);
                    if status
                        .last_forced
                        .is_some_and(|at| now.saturating_duration_since(at) < settings.min_refetch_interval)
                    {
                        tracing::warn!(client, serial, "Coupa refused the token again within token.min_refetch_interval; not fetching another");
                        return Ok(Op::Nop);
                    }
                    status.last_forced = Some(now);
                }
                match self.fleet_replacement(&config, &slot.current).await {
                    Replacement::FetchHere => {}
                    Replacement::Theirs(token) => {
                        return Ok(Op::Put(Held {
                            current: Arc::new(token),
                            previous: Some(slot.current),
                        }));
                    }
                    Replacement::Keep => return Ok(Op::Nop),
                }
                tracing::warn!(client, serial, "Coupa refused the token; fetching a replacement (the refused one serves until it has settled)");
                let token = self.obtain(&config, Some(slot.current.id)).await?;
                Ok(Op::Put(Held {
                    current: Arc::new(token),
                    previous: Some(slot.current).filter(|t| Instant::now() < t.expires_at),
                }))
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(client, error = %e, "replacing a refused token failed; the background refresher retries");
        }
    }

    /// The fleet cache's target and state, when there is one.
    pub fn shared_health(&self) -> Option<(String, SharedHealth)> {
        self.inner
            .shared
            .as_ref()
            .map(|s| (s.target().to_owned(), s.health()))
    }

    pub(super) async fn fetch(&self, client: &Client) -> Result<Token, TokenError> {
        let settings = &self.inner.settings;
        let requested_at = Instant::now();
        let result = oauth::request_token(&self.inner.http, client, settings.request_timeout)
            .await
            .and_then(|grant| long_enough(grant, settings.settle_delay));
        let received_at = Instant::now();
        let mut status = self.status_lock(&client.name);
        status.last_fetch = Some(SystemTime::now());
        match result {
            Ok(grant) => {
                status.fetches_ok += 1;
                status.last_error = None;
                status.last_failure_at = None;
                status.retry_at = None;
                status.consecutive_failures = 0;
                let token = self.stamp(grant, requested_at, received_at);
                let expires_unix = token
                    .expires_at_wall
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .ok();
                self.inner
                    .metrics
                    .token_fetched(&client.name, true, expires_unix);
                tracing::info!(
                    client = %client.name,
                    expires_in_s = token_lifetime(&token).as_secs(),
                    serial = token.serial,
                    "token fetched"
                );
                Ok(token)
            }
            Err(err) => {
                status.fetches_failed += 1;
                status.last_error = Some(err.clone());
                status.last_failure_at = Some(received_at);
                status.consecutive_failures = status.consecutive_failures.saturating_add(1);
                status.retry_at = Some(
                    received_at + backoff(status.consecutive_failures, settings.max_retry_backoff),
                );
                self.inner.metrics.token_fetched(&client.name, false, None);
                tracing::warn!(client = %client.name, error = %err, "token fetch failed");
                Err(err)
            }
        }
    }

    fn stamp(&self, grant: oauth::Grant, requested_at: Instant, received_at: Instant) -> Token {
        let settings = &self.inner.settings;
        let grant_authorization = grant.authorization.clone();
        let life = grant.expires_in;
        let expires_at = requested_at + life - expiry_margin(life);
        let usable_at = received_at + settings.settle_delay;
        let lead = settings.refresh_before_expiry.min(life / 2);
        // Refresh after the token settled, and never after it stops being used.
        let refresh_at = (requested_at + life - lead).max(usable_at).min(expires_at);
        Token {
            authorization: grant.authorization,
            requested_at,
            usable_at,
            refresh_at,
            expires_at,
            expires_at_wall: SystemTime::now()
                + expires_at.saturating_duration_since(Instant::now()),
            serial: self.inner.serial.fetch_add(1, Ordering::Relaxed) + 1,
            id: token_id(&grant_authorization),
        }
    }

    fn recent_failure(
        &self,
        name: &str,
        queued_at: Instant,
        now: Instant,
        respect_backoff: bool,
    ) -> Option<TokenError> {
        let status = self.status_lock(name);
        let failed_while_queued = status.last_failure_at.is_some_and(|at| at >= queued_at);
        let backing_off = respect_backoff && status.retry_at.is_some_and(|at| now < at);
        if failed_while_queued || backing_off {
            status.last_error.clone()
        } else {
            None
        }
    }

    fn status_lock(&self, name: &str) -> std::sync::MutexGuard<'_, ClientStatus> {
        static EMPTY: std::sync::OnceLock<Mutex<ClientStatus>> = std::sync::OnceLock::new();
        let m = self
            .inner
            .status
            .get(name)
            .unwrap_or_else(|| EMPTY.get_or_init(Mutex::default));
        // A poisoned status only means a panic elsewhere mid-update; the counters are
        // still meaningful.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts one background refresher per client. Each fetches at once (start-up
    /// warm-up), then again at every token's refresh time, backing off with jitter
    /// after failures.
    pub fn spawn_refreshers(&self) -> Refreshers {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let tasks = self
            .inner
            .clients
            .keys()
            .map(|name| {
                let cache = self.clone();
                let name = Arc::clone(name);
                let stopped = stopped.clone();
                tokio::spawn(cache.refresh_loop(name, stopped))
            })
            .collect();
        Refreshers {
            stop,
            _tasks: tasks,
        }
    }

    async fn refresh_loop(self, name: Arc<str>, mut stopped: tokio::sync::watch::Receiver<bool>) {
        // Waits until `at`; false once the refreshers are stopped (or their owner is
        // gone, which also means stop).
        let mut wait_until = async |at: Instant| {
            tokio::select! {
                // Stopping wins over a wait that is also over.
                biased;
                _ = stopped.wait_for(|stop| *stop) => false,
                () = tokio::time::sleep_until(at.into()) => true,
            }
        };
        loop {
            if let Some(slot) = self.inner.cache.get(&*name).await
                && !wait_until(slot.current.refresh_at).await
            {
                return;
            }
            let result = self.refresh_inner(&name, false).await;
            // Never spin: after a failure wait out the backoff the failure set; after a
            // success, at least a second (a token may arrive already due for refresh).
            let now = Instant::now();
            let pause_until = match result {
                Ok(_) => now + Duration::from_secs(1),
                Err(_) => {
                    let backoff = self
                        .status_lock(&name)
                        .retry_at
                        .unwrap_or(now + Duration::from_secs(1));
                    // While a token is still valid, retry at least every half of its
                    // remaining life, so an outage that ends before expiry costs nothing.
                    match self.inner.cache.get(&*name).await {
                        Some(slot) if now < slot.current.expires_at => {
                            let half = (slot.current.expires_at - now) / 2;
                            backoff.min(now + half.max(Duration::from_millis(200)))
                        }
                        _ => backoff,
                    }
                }
            };
            if !wait_until(pause_until).await {
                return;
            }
        }
    }

    /// Readiness and fetch history per client, sorted by name.
    pub async fn status(&self) -> Vec<(Arc<str>, ClientReport)> {
        let now = Instant::now();
        let mut out = Vec::with_capacity(self.inner.clients.len());
        for name in self.inner.clients.keys() {
            let slot = self.inner.cache.get(&**name).await;
            let (ready, held, expires_at) = match &slot {
                Some(s) => match s.serving(now) {
                    Serving::Ready(t) => (true, true, Some(t.expires_at_wall)),
                    Serving::Settling(t) => (false, true, Some(t.expires_at_wall)),
                    Serving::Expired => (false, false, None),
                },
                None => (false, false, None),
            };
            out.push((
                Arc::clone(name),
                ClientReport {
                    ready,
                    held,
                    expires_at,
                    history: self.status_lock(name).clone(),
                },
            ));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// Whether a token fetched for `a` is valid for `b`.
fn same_credentials(a: &Client, b: &Client) -> bool {
    a.client_id == b.client_id
        && a.client_secret == b.client_secret
        && a.scopes == b.scopes
        && a.auth == b.auth
        && a.instance.token_url == b.instance.token_url
        && a.instance.scheme == b.instance.scheme
        && a.instance.authority == b.instance.authority
}

/// One client's state as reported by [`TokenCache::status`].
#[derive(Debug, Clone)]
pub struct ClientReport {
    /// Holds a settled, unexpired token.
    pub ready: bool,
    /// Holds an unexpired token (possibly still settling).
    pub held: bool,
    pub expires_at: Option<SystemTime>,
    pub history: ClientStatus,
}

fn token_lifetime(t: &Token) -> Duration {
    t.expires_at.saturating_duration_since(t.requested_at)
}

/// The fleet-wide id of a token: the first 8 bytes of the SHA-256 of its header value.
pub(super) fn token_id(authorization: &HeaderValue) -> u64 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(authorization.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(id)
}

/// How long before its stated expiry a token stops being used: a tenth of its life, at
/// most 30 s (clocks and round trips).
fn expiry_margin(life: Duration) -> Duration {
    (life / 10).min(Duration::from_secs(30))
}

/// The grant, unless its token would not stay usable for at least one settle delay (and
/// at least 1 s) after it settles: such a token could never be replaced in time — its
/// replacement needs a settle delay of its own — and one shorter-lived than the delay
/// would never be served at all. Refused as the token endpoint's error, so it is named
/// in `/tokens`, counted as a failed fetch and backed off, never fetched in a loop.
fn long_enough(grant: oauth::Grant, settle_delay: Duration) -> Result<oauth::Grant, TokenError> {
    let life = grant.expires_in;
    let usable = life.saturating_sub(expiry_margin(life) + settle_delay);
    if usable < settle_delay.max(Duration::from_secs(1)) {
        return Err(TokenError::InvalidResponse(format!(
            "`expires_in` of {}s is too short for token.settle_delay ({}s): a token must stay usable for at least one settle delay after it settles",
            life.as_secs_f64(),
            settle_delay.as_secs_f64()
        )));
    }
    Ok(grant)
}

/// Exponential backoff from 1 s with full jitter, capped at `max`.
fn backoff(failures: u32, max: Duration) -> Duration {
    let ceiling = Duration::from_secs(1u64 << failures.min(16).saturating_sub(1)).min(max);
    ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_must_outlive_its_settle_delay_by_one_more() {
        let grant = |secs| oauth::Grant {
            authorization: HeaderValue::from_static("Bearer t"),
            expires_in: Duration::from_secs(secs),
        };
        let settle = Duration::from_secs(5);
        assert!(long_enough(grant(86_399), settle).is_ok());
        assert!(
            long_enough(grant(12), settle).is_ok(),
            "10.8 s: 5 to settle, 5.8 of use"
        );
        assert!(
            long_enough(grant(10), settle).is_err(),
            "9 s: 4 of use after settling"
        );
        assert!(long_enough(grant(3), settle).is_err());
        assert!(long_enough(grant(2), Duration::ZERO).is_ok());
        assert!(
            long_enough(grant(1), Duration::ZERO).is_err(),
            "under a second of use"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let max = Duration::from_secs(60);
        assert!(backoff(1, max) <= Duration::from_secs(1));
        assert!(backoff(3, max) <= Duration::from_secs(4));
        assert!(backoff(3, max) >= Duration::from_secs(2));
        assert!(backoff(30, max) <= max);
        assert!(backoff(30, max) >= max / 2);
    }
}

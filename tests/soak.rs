//! The soak (issue 23): a small fleet run for minutes while everything around it
//! misbehaves, then held to what README promises. `scripts/soak.sh` runs it
//! (`SOAK_MINUTES`, default 3; `SOAK_SEED` replays a run's fault parameters).
//!
//! **Setup.** The real binary as two replicas (`kb-a`, `kb-b`) sharing one private
//! PostgreSQL audit and one private Redis token cache, in front of the in-process mock
//! Coupa with four integrations, each with its own key and OAuth client
//! (`netsuite-bundle`, `treasury-export`, `ariba-sync` in `oauth`, `celigo-flow` in
//! `canary` at 50 %). Each integration has two callers, each sending GETs and (one time
//! in five, at random) a POST, alternating between the replicas, 150–350 ms apart (about
//! 20 requests/s in all); every answer's body is checked. Every link from a replica to a neighbour goes through a fault-injecting relay
//! ([`support::relay`]): one per replica to Coupa's API, to Redis and to PostgreSQL,
//! and one (shared: the token URL is part of the fleet's sealing key) to the token
//! endpoint.
//!
//! **Faults**, after a 15 s warm-up and until 10 s before the end:
//! - every 1–3 s the next link, round robin over the six per-replica links, gets its
//!   next fault: on Coupa's API link latency with jitter (≤ 100 + 250 ms a chunk),
//!   resets of every open connection, or none; on the Redis and PostgreSQL links latency
//!   with jitter, a stall (Redis 1–4 s, PostgreSQL 2–8 s), resets, dropping new
//!   connections (Redis 1–4 s, PostgreSQL 2–6 s), or none. The token link always adds
//!   10–50 ms a chunk and is never reset (see "token fetches" below);
//! - the token endpoint fails for 30 s every 2 min from 45 s on (HTTP 503, then a
//!   hang, then garbage, in turn; a window the end cuts into is shortened);
//! - Redis is killed (SIGKILL, restarted empty 3 s later) every 80 s from 20 s on, and
//!   PostgreSQL stopped (fast shutdown, started 3 s later) every 80 s from 60 s on;
//! - every 30 s from 15 s on both config files are rewritten with a harmless change
//!   (`cutover.shadow_max_per_second` 10 ↔ 11) and reloaded: SIGHUP and `POST /reload`
//!   in turn.
//!
//! **Pass criteria**, checked after the traffic stops, the faults are lifted, both
//! replicas report the audit healthy again and idle timeouts have passed:
//! 1. *Every request answered*: each has a client timeout of `max_wait` +
//!    `settle_delay` + `token.request_timeout` + `connect_timeout` + `response_timeout` +
//!    1 s (11 s), a bit above the longest a request may take by configuration; a
//!    timeout is a failure.
//! 2. *Only Coupa-caused failures*: a failure is Coupa-caused when keybridge blames
//!    Coupa (502/504 `upstream_unreachable`, `upstream_timeout` or
//!    `upstream_bad_framing`, or a 200 whose body was cut off) **and** the relay reset
//!    that replica's connections to Coupa while the request was open. Such a request
//!    was already written to Coupa, so keybridge must not resend it; a request on a
//!    pooled connection reset before it was written is resent by keybridge and must
//!    succeed. In all, Coupa-caused failures may not exceed the connections reset on
//!    the Coupa links (HTTP/1.1: at most one request per connection). Anything else — a
//!    503 `token_unavailable` during a token outage (the cached token outlives every
//!    outage by design), a 429, a refused connection, a wrong body — fails the soak.
//! 3. *Audit exact*: after SIGTERM (each replica flushes on the way out and must exit 0),
//!    the outcomes PostgreSQL holds for each integration add up to the requests sent,
//!    and no other subject appears.
//! 4. *Token fetches: one per client per refresh.* With token lifetime `L` = 120 s and
//!    `refresh_before_expiry` 60 s a token is refreshed every `P = L - min(60 s, L/2)` =
//!    60 s, so over the `D` seconds between the first start and the last stop a client
//!    has at most `1 + ⌊D/P⌋` refreshes (the first at start; a refresh delayed by a
//!    token-endpoint outage starts the period again, so outages add none; no revocation
//!    is injected). Each replica logs `token fetched` with the client; their count must
//!    equal the mock's grants, and one client's fetches less than 15 s apart (two lease
//!    rounds) are one
//!    refresh. A refresh may take **one** fetch for the fleet (the lease and the shared
//!    record), or **one per replica** (`R` = 2) if Redis was unreachable from a replica
//!    at that moment: a Redis restart, or a stall, reset or drop on its link, each
//!    from when it began until 2 s after it ended (reconnecting; latency on the Redis
//!    links stays under 100 ms a chunk, so a call and a reconnect's handshake fit in
//!    keybridge's 500 ms). So the allowed number is `Σ over clients and refreshes of (R
//!    if Redis was unreachable then, else 1)`, printed per refresh; restarts cost
//!    nothing once Redis answers again, and reloads nothing (unchanged clients keep
//!    their tokens). As a backstop the mock's grants stay ≤ `C × R × (1 + ⌊D/P⌋)` (`C`
//!    = 4 clients). Failed attempts (`token_requests - token_grants`) are bounded per
//!    outage window by the backoff:
//!    `C × R × W × (3 + ⌈30 s / (max_retry_backoff / 2)⌉ + 2)`, `W` windows, 2 reloads
//!    a window. Token requests go through a relay that adds latency only: a reset there
//!    after Coupa granted would waste a grant outside keybridge's control.
//! 5. *Resources back to baseline*: each replica's RSS (`/proc/PID/status` VmRSS) and
//!    open descriptors (`/proc/PID/fd`), measured at the end of the warm-up, and again
//!    15 s after the traffic stopped (`server.idle_timeout` and
//!    `upstream.pool_idle_timeout` are 5 s): RSS ≤ baseline + 20 MB, fds ≤ baseline + 10.
//! 6. *Reloads*: every `POST /reload` answered 200, each replica logged `configuration
//!    reloaded` once per reload (SIGHUP or POST), never `reload refused` nor a setting
//!    that needs a restart (the change is harmless); no replica logged a panic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use keybridge::cli::mock::{MockHandle, TokenFailure};
use support::pg::PrivateServer;
use support::process::{Process, keybridge};
use support::redis_server::PrivateRedis;
use support::relay::{Relay, RelayHandle};
use support::{KEY, SECRET, TestConfig};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------
// Settings: short, so the fleet reacts within the run.

const TOKEN_LIFE: Duration = Duration::from_secs(120);
const REFRESH_BEFORE: Duration = Duration::from_secs(60);
const MOCK_SETTLE: Duration = Duration::from_secs(1);
const SETTLE: Duration = Duration::from_secs(2);
const TOKEN_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(4);
const MAX_WAIT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// `server.idle_timeout` and `upstream.pool_idle_timeout`.
const IDLE: Duration = Duration::from_secs(5);

const WARMUP: Duration = Duration::from_secs(15);
/// Faults stop this long before the end.
const QUIET_END: Duration = Duration::from_secs(10);
const OUTAGE_FIRST: Duration = Duration::from_secs(45);
const OUTAGE_EVERY: Duration = Duration::from_secs(120);
const OUTAGE: Duration = Duration::from_secs(30);
const RESTART_EVERY: Duration = Duration::from_secs(80);
const REDIS_FIRST: Duration = Duration::from_secs(20);
const PG_FIRST: Duration = Duration::from_secs(60);
const DOWN_FOR: Duration = Duration::from_secs(3);
const RELOAD_FIRST: Duration = Duration::from_secs(15);
const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// After the traffic: idle timeouts, the pool reaper and the allocator's purge.
const IDLE_WAIT: Duration = Duration::from_secs(15);

/// How long after a Redis fault ends a replica may still fail to reach it (reconnecting).
const REDIS_MARGIN: Duration = Duration::from_secs(2);
/// Token fetches of one client closer together than this belong to one refresh: a
/// replica waits for another's lease at most two rounds of `token.request_timeout` +
/// 5 s (a holder whose Redis link broke after it fetched leaves its lease to lapse),
/// then fetches itself. The 60-minute run of 2026-12-08 saw such a pair 7 s apart.
const ONE_REFRESH: Duration = Duration::from_secs(2 * (TOKEN_TIMEOUT.as_secs() + 5) + 1);

const RSS_TOLERANCE_KB: u64 = 20 * 1024;
const FD_TOLERANCE: u64 = 10;
const REPLICAS: [&str; 2] = ["kb-a", "kb-b"];
const SCOPES: [&str; 2] = ["core.invoice.read", "core.invoice.write"];

/// Longest a request may take by configuration, plus a second.
fn client_timeout() -> Duration {
    MAX_WAIT + SETTLE + TOKEN_TIMEOUT + CONNECT_TIMEOUT + RESPONSE_TIMEOUT + Duration::from_secs(1)
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// One legacy caller and the OAuth client that replaces its key.
struct Integration {
    name: &'static str,
    client: &'static str,
    client_id: &'static str,
    secret_env: &'static str,
    secret: &'static str,
    key: &'static str,
    canary: bool,
}

/// The first is the standard config's ([`TestConfig::standard`]).
const INTEGRATIONS: [Integration; 4] = [
    Integration {
        name: "netsuite-bundle",
        client: "erp-sync",
        client_id: "erp-sync-client",
        secret_env: "ERP_SYNC_SECRET",
        secret: SECRET,
        key: KEY,
        canary: false,
    },
    Integration {
        name: "treasury-export",
        client: "treasury",
        client_id: "treasury-client",
        secret_env: "TREASURY_SECRET",
        secret: "treasury-secret-3f9a1c7e",
        key: "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678",
        canary: false,
    },
    Integration {
        name: "celigo-flow",
        client: "celigo",
        client_id: "celigo-client",
        secret_env: "CELIGO_SECRET",
        secret: "celigo-secret-9b2d4f6a",
        key: "b2c3d4e5f60718293a4b5c6d7e8f901234567890",
        canary: true,
    },
    Integration {
        name: "ariba-sync",
        client: "ariba",
        client_id: "ariba-client",
        secret_env: "ARIBA_SECRET",
        secret: "ariba-secret-5e7c1a3b",
        key: "c3d4e5f60718293a4b5c6d7e8f90123456789012",
        canary: false,
    },
];

// ---------------------------------------------------------------------------------
// The relay on its own: each fault over real sockets.

/// An echo server; counts the connections that reached it.
async fn echo_server() -> (SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, seen)
}

async fn ping(s: &mut tokio::net::TcpStream, within: Duration) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    tokio::time::timeout(within, s.read_exact(&mut buf))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(buf.to_vec())
}

#[tokio::test]
async fn relay_adds_latency_stalls_resets_and_drops_over_real_sockets() {
    use tokio::io::AsyncReadExt;
    let (echo, reached) = echo_server().await;
    let relay = Relay::start(echo).await;
    let faults = relay.handle();
    let connect = || tokio::net::TcpStream::connect(relay.addr);

    let mut s = connect().await.unwrap();
    assert_eq!(ping(&mut s, Duration::from_secs(1)).await.unwrap(), b"ping");

    faults.latency(Duration::from_millis(150), Duration::from_millis(50));
    let started = Instant::now();
    ping(&mut s, Duration::from_secs(2)).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(2000),
        "150–200 ms each way: {took:?}"
    );
    faults.pass();

    faults.stall(Duration::from_millis(600));
    let started = Instant::now();
    let stalled = ping(&mut s, Duration::from_millis(300)).await;
    assert_eq!(
        stalled.unwrap_err().kind(),
        std::io::ErrorKind::TimedOut,
        "nothing moves during a stall"
    );
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping", "the held bytes arrive after the stall");
    assert!(started.elapsed() >= Duration::from_millis(550));
    assert_eq!(ping(&mut s, Duration::from_secs(1)).await.unwrap(), b"ping");

    assert_eq!(faults.reset(), 1, "one open connection");
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
        .await
        .unwrap();
    assert_eq!(
        read.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionReset,
        "a reset, not a close"
    );

    faults.drop_new(Duration::from_millis(800));
    let mut dropped = connect().await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(1), dropped.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0)), "closed at once: {read:?}");
    tokio::time::sleep(Duration::from_millis(850)).await;
    let mut s = connect().await.unwrap();
    assert_eq!(ping(&mut s, Duration::from_secs(1)).await.unwrap(), b"ping");

    let stats = faults.stats();
    assert_eq!(
        (stats.accepted, stats.dropped, stats.reset, stats.reset_busy),
        (2, 1, 1, 0),
        "{stats:?}"
    );
    assert_eq!(stats.open, 1);
    assert_eq!(
        reached.load(Ordering::SeqCst),
        2,
        "a dropped one never reached the target"
    );
}

// ---------------------------------------------------------------------------------
// The fleet.

/// One replica's links and its config file.
struct Spec {
    name: &'static str,
    config: PathBuf,
    coupa: String,
    token: String,
}

impl Spec {
    /// The config file's text; `generation` makes the harmless difference of a reload.
    fn yaml(&self, generation: u64) -> String {
        let mut c = TestConfig::standard(&format!("http://{}", self.coupa))
            .set(
                "instances.prod.token_url",
                format!("http://{}/oauth2/token", self.token),
            )
            .set(
                "instances.prod.rate_limit",
                serde_json::json!({"per_second": 200, "burst": 100, "max_wait": ms(MAX_WAIT)}),
            )
            .set("audit.postgres_url", "${KEYBRIDGE_DATABASE_URL}")
            // Unused beside postgres_url, but the same in every generation (the standard
            // config picks a new one each time).
            .set(
                "audit.path",
                self.config.with_extension("audit.db").display().to_string(),
            )
            .set("audit.flush_interval", "1s")
            .set("fleet.replica", self.name)
            .set("fleet.redis_url", "${KEYBRIDGE_REDIS_URL}")
            .set("fleet.expected_replicas", 2)
            .set("token.settle_delay", ms(SETTLE))
            .set("token.refresh_before_expiry", ms(REFRESH_BEFORE))
            .set("token.request_timeout", ms(TOKEN_TIMEOUT))
            .set("token.max_retry_backoff", ms(MAX_BACKOFF))
            .set("upstream.connect_timeout", ms(CONNECT_TIMEOUT))
            .set("upstream.response_timeout", ms(RESPONSE_TIMEOUT))
            .set("upstream.pool_idle_timeout", ms(IDLE))
            .set("server.idle_timeout", ms(IDLE))
            .set("server.shutdown_grace", "5s")
            .set("server.access_log", false)
            .set("cutover.shadow_max_per_second", 10 + generation % 2);
        for it in &INTEGRATIONS[1..] {
            c = c.set(
                &format!("clients.{}", it.client),
                serde_json::json!({"instance": "prod", "client_id": it.client_id,
                    "client_secret": format!("${{{}}}", it.secret_env), "scopes": SCOPES}),
            );
            let fp = keybridge::keys::Fingerprint::of_key(it.key.as_bytes()).to_string();
            let mut integration =
                serde_json::json!({"name": it.name, "api_key_sha256": fp, "client": it.client});
            if it.canary {
                integration["mode"] = "canary".into();
                integration["canary_percent"] = 50.into();
            }
            c = c.push("integrations", integration);
        }
        c.yaml()
    }

    /// Writes the config file whole (a reload never reads half of it).
    fn write(&self, generation: u64) {
        let tmp = self.config.with_extension("yaml.tmp");
        std::fs::write(&tmp, self.yaml(generation)).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }
}

struct Replica {
    process: Process,
    pid: u32,
    proxy: SocketAddr,
    admin: SocketAddr,
}

/// The pid of the keybridge started with `config` (the support's `Process` keeps it).
fn pid_of(config: &Path) -> u32 {
    use std::os::unix::ffi::OsStrExt as _;
    let needle = config.as_os_str().as_bytes();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && cmdline.split(|b| *b == 0).any(|arg| arg == needle)
        {
            return pid;
        }
    }
    panic!("no process runs with {}", config.display());
}

#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    rss_kb: u64,
    fds: u64,
}

/// RSS and open descriptors of a running process; `None` once it has exited.
fn usage(pid: u32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Usage { rss_kb, fds })
}

// ---------------------------------------------------------------------------------
// Callers.

/// How one request ended.
#[derive(Debug, Clone)]
enum Answer {
    Ok,
    /// A status and keybridge's error code (or what went wrong with the body).
    Failed(Option<StatusCode>, String),
    TimedOut,
}

#[derive(Debug, Clone)]
struct Call {
    integration: usize,
    replica: usize,
    post: bool,
    start: Instant,
    end: Instant,
    answer: Answer,
}

type Http = Client<HttpConnector, Full<Bytes>>;

/// One request with a deadline: the status and the body (or why it was cut off).
async fn exchange(
    client: &Http,
    request: Request<Full<Bytes>>,
    deadline: Duration,
) -> Option<Result<(StatusCode, Result<Bytes, String>), String>> {
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| format!("{e:?}"));
        Ok((status, body))
    };
    tokio::time::timeout(deadline, exchange).await.ok()
}

/// Sends an integration's legacy traffic until `stop`: GETs and one POST in five,
/// alternating between the replicas.
async fn caller(
    integration: usize,
    first: usize,
    proxies: [SocketAddr; 2],
    stop: Arc<AtomicBool>,
) -> Vec<Call> {
    let client = support::client();
    let it = &INTEGRATIONS[integration];
    let mut calls = Vec::new();
    let mut n = first;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let replica = n % 2;
        let post = fastrand::u8(..5) == 0;
        let (method, path, body) = if post {
            let body = format!(r#"{{"invoice-number":"SOAK-{integration}-{n}","amount":"12.50"}}"#);
            (Method::POST, "/api/invoices".to_owned(), Bytes::from(body))
        } else {
            (Method::GET, format!("/api/invoices/{n}"), Bytes::new())
        };
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", proxies[replica]))
            .header("x-coupa-api-key", it.key)
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))
            .unwrap();
        let start = Instant::now();
        let answer = match exchange(&client, request, client_timeout()).await {
            None => Answer::TimedOut,
            Some(Err(e)) => Answer::Failed(None, format!("no response: {e}")),
            Some(Ok((status, Err(e)))) => Answer::Failed(Some(status), format!("body cut: {e}")),
            Some(Ok((StatusCode::OK, Ok(got)))) => {
                let right = if post {
                    got == body
                } else {
                    serde_json::from_slice::<serde_json::Value>(&got)
                        .is_ok_and(|v| v["path"] == path.as_str())
                };
                if right {
                    Answer::Ok
                } else {
                    Answer::Failed(
                        Some(StatusCode::OK),
                        format!("wrong body: {}", String::from_utf8_lossy(&got)),
                    )
                }
            }
            Some(Ok((status, Ok(got)))) => {
                let code = serde_json::from_slice::<serde_json::Value>(&got)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| String::from_utf8_lossy(&got).into_owned());
                Answer::Failed(Some(status), code)
            }
        };
        calls.push(Call {
            integration,
            replica,
            post,
            start,
            end: Instant::now(),
            answer,
        });
        tokio::time::sleep(Duration::from_millis(fastrand::u64(150..350))).await;
    }
    calls
}

// ---------------------------------------------------------------------------------
// Faults.

/// What the fault tasks did, for the summary and the bounds.
#[derive(Debug, Default)]
struct Tally {
    coupa_resets: u64,
    coupa_latency: u64,
    redis_latency: u64,
    redis_stalls: u64,
    redis_resets: u64,
    redis_drops: u64,
    pg_latency: u64,
    pg_stalls: u64,
    pg_resets: u64,
    pg_drops: u64,
    redis_restarts: u64,
    pg_restarts: u64,
    outages: u64,
    reloads_sighup: u64,
    reloads_post: u64,
    slowest_reload: Duration,
    reload_failures: Vec<String>,
    /// When each replica's Coupa connections were reset.
    coupa_reset_at: Vec<(usize, Instant)>,
    /// When Redis could not answer a replica in time (a restart, or a stall, reset or
    /// drop on a link), with a margin for reconnecting: see [`REDIS_MARGIN`].
    redis_unreachable: Vec<(Instant, Instant)>,
}

type Shared<T> = Arc<Mutex<T>>;

/// The relays of one replica.
struct Links {
    coupa: RelayHandle,
    redis: RelayHandle,
    pg: RelayHandle,
}

/// Round robin over the six per-replica links, each taking its next fault; parameters
/// drawn from `rng` (the run's seed).
async fn link_faults(
    links: Vec<Links>,
    mut rng: fastrand::Rng,
    start: Instant,
    end: Instant,
    tally: Shared<Tally>,
) {
    let mut between = |lo_ms: u64, hi_ms: u64| Duration::from_millis(rng.u64(lo_ms..=hi_ms));
    tokio::time::sleep_until(start).await;
    let mut step = [0usize; 6];
    let mut turn = 0usize;
    while Instant::now() < end {
        let (replica, which) = (turn % 6 / 3, turn % 3);
        let k = step[turn % 6];
        step[turn % 6] += 1;
        turn += 1;
        let l = &links[replica];
        {
            let mut t = tally.lock().unwrap();
            match (which, k % 5) {
                (0, 0 | 3) => {
                    l.coupa.latency(between(0, 100), between(50, 250));
                    t.coupa_latency += 1;
                }
                (0, 1 | 4) => {
                    t.coupa_reset_at.push((replica, Instant::now()));
                    l.coupa.reset();
                    t.coupa_resets += 1;
                }
                (0, _) => l.coupa.pass(),
                (1, 0) => {
                    // At most 100 ms a chunk: a call, even with a reconnect's
                    // handshake, stays within keybridge's 500 ms for Redis.
                    l.redis.latency(between(0, 30), between(0, 70));
                    t.redis_latency += 1;
                }
                (1, 1) => {
                    let d = between(1000, 4000);
                    l.redis.stall(d);
                    t.redis_stalls += 1;
                    t.redis_unreachable
                        .push((Instant::now(), Instant::now() + d + REDIS_MARGIN));
                }
                (1, 2) => {
                    l.redis.reset();
                    t.redis_resets += 1;
                    t.redis_unreachable
                        .push((Instant::now(), Instant::now() + REDIS_MARGIN));
                }
                (1, 3) => {
                    let d = between(1000, 4000);
                    l.redis.drop_new(d);
                    t.redis_drops += 1;
                    t.redis_unreachable
                        .push((Instant::now(), Instant::now() + d + REDIS_MARGIN));
                }
                (1, _) => l.redis.pass(),
                (_, 0) => {
                    l.pg.stall(between(2000, 8000));
                    t.pg_stalls += 1;
                }
                (_, 1) => {
                    l.pg.reset();
                    t.pg_resets += 1;
                }
                (_, 2) => {
                    l.pg.latency(between(0, 50), between(0, 200));
                    t.pg_latency += 1;
                }
                (_, 3) => {
                    l.pg.drop_new(between(2000, 6000));
                    t.pg_drops += 1;
                }
                (_, _) => l.pg.pass(),
            }
        }
        tokio::time::sleep(between(1000, 3000)).await;
    }
    for l in &links {
        l.coupa.pass();
        l.redis.pass();
        l.pg.pass();
    }
}

/// The token endpoint fails for [`OUTAGE`] every [`OUTAGE_EVERY`].
async fn token_outages(mock: Arc<MockHandle>, t0: Instant, end: Instant, tally: Shared<Tally>) {
    let kinds = [
        TokenFailure::Status(503),
        TokenFailure::Hang,
        TokenFailure::Garbage,
    ];
    for k in 0u32.. {
        let from = t0 + OUTAGE_FIRST + OUTAGE_EVERY * k;
        if from + Duration::from_secs(5) > end {
            break;
        }
        tokio::time::sleep_until(from).await;
        mock.set_token_failure(Some(kinds[k as usize % kinds.len()].clone()));
        tally.lock().unwrap().outages += 1;
        tokio::time::sleep_until((from + OUTAGE).min(end)).await;
        mock.set_token_failure(None);
    }
}

/// Redis killed and PostgreSQL stopped, each every [`RESTART_EVERY`], down [`DOWN_FOR`].
async fn restarts(
    mut redis: PrivateRedis,
    mut pg: PrivateServer,
    t0: Instant,
    end: Instant,
    tally: Shared<Tally>,
) -> (PrivateRedis, PrivateServer) {
    let mut events: Vec<(Instant, bool)> = Vec::new();
    for k in 0u32.. {
        let (r, p) = (
            t0 + REDIS_FIRST + RESTART_EVERY * k,
            t0 + PG_FIRST + RESTART_EVERY * k,
        );
        if r + DOWN_FOR >= end {
            break;
        }
        events.push((r, true));
        if p + DOWN_FOR < end {
            events.push((p, false));
        }
    }
    events.sort_by_key(|e| e.0);
    for (at, is_redis) in events {
        tokio::time::sleep_until(at).await;
        if is_redis {
            let killed = Instant::now();
            redis = tokio::task::spawn_blocking(move || {
                redis.kill();
                std::thread::sleep(DOWN_FOR);
                redis.start_again();
                redis
            })
            .await
            .unwrap();
            let mut t = tally.lock().unwrap();
            t.redis_restarts += 1;
            t.redis_unreachable
                .push((killed, Instant::now() + REDIS_MARGIN));
        } else {
            pg = tokio::task::spawn_blocking(move || {
                pg.stop();
                std::thread::sleep(DOWN_FOR);
                pg.start_again();
                pg
            })
            .await
            .unwrap();
            tally.lock().unwrap().pg_restarts += 1;
        }
    }
    (redis, pg)
}

/// Every [`RELOAD_EVERY`]: both config files rewritten, then SIGHUP or `POST /reload`.
async fn reloads(
    specs: Arc<Vec<Spec>>,
    targets: Vec<(u32, SocketAddr)>,
    t0: Instant,
    end: Instant,
    tally: Shared<Tally>,
) {
    let client = support::client();
    for k in 0u32.. {
        let at = t0 + RELOAD_FIRST + RELOAD_EVERY * k;
        if at >= end {
            break;
        }
        tokio::time::sleep_until(at).await;
        for spec in specs.iter() {
            spec.write(u64::from(k) + 1);
        }
        for (i, (pid, admin)) in targets.iter().enumerate() {
            if k % 2 == 0 {
                let hup = std::process::Command::new("kill")
                    .args(["-HUP", &pid.to_string()])
                    .status()
                    .unwrap();
                assert!(hup.success());
                tally.lock().unwrap().reloads_sighup += 1;
                continue;
            }
            let request = Request::post(format!("http://{admin}/reload"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let started = Instant::now();
            let answer = exchange(&client, request, Duration::from_secs(40)).await;
            let took = started.elapsed();
            let mut t = tally.lock().unwrap();
            t.reloads_post += 1;
            t.slowest_reload = t.slowest_reload.max(took);
            match answer {
                Some(Ok((StatusCode::OK, Ok(_)))) => {}
                other => t.reload_failures.push(format!(
                    "{} POST /reload after {took:?}: {other:?}",
                    REPLICAS[i]
                )),
            }
        }
    }
}

/// The highest RSS and descriptor count of each replica, sampled every 2 s.
async fn sample_peaks(pids: Vec<u32>, stop: Arc<AtomicBool>, peaks: Shared<Vec<Usage>>) {
    while !stop.load(Ordering::SeqCst) {
        for (i, pid) in pids.iter().enumerate() {
            let u = usage(*pid).unwrap_or_default();
            let mut p = peaks.lock().unwrap();
            p[i].rss_kb = p[i].rss_kb.max(u.rss_kb);
            p[i].fds = p[i].fds.max(u.fds);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn admin_json(admin: SocketAddr, path: &str) -> Option<(StatusCode, serde_json::Value)> {
    let request = Request::get(format!("http://{admin}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    match exchange(&support::client(), request, Duration::from_secs(10)).await {
        Some(Ok((status, Ok(body)))) => serde_json::from_slice(&body).ok().map(|v| (status, v)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------
// The run.

/// A failure keybridge blames on Coupa.
fn blames_coupa(answer: &Answer) -> bool {
    match answer {
        Answer::Failed(Some(s), code)
            if *s == StatusCode::BAD_GATEWAY || *s == StatusCode::GATEWAY_TIMEOUT =>
        {
            matches!(
                code.as_str(),
                "upstream_unreachable" | "upstream_timeout" | "upstream_bad_framing"
            )
        }
        Answer::Failed(Some(StatusCode::OK), code) => code.starts_with("body cut"),
        _ => false,
    }
}

/// Each `token fetched` a replica logged: when, and for which client.
fn token_fetches(output: &str) -> Vec<(std::time::SystemTime, String)> {
    output
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "token fetched")
        .filter_map(|v| {
            let at = humantime::parse_rfc3339(v["timestamp"].as_str()?).ok()?;
            Some((at, v["client"].as_str()?.to_owned()))
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: scripts/soak.sh runs it"]
async fn soak() {
    let minutes: f64 = std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(3.0);
    let run = Duration::from_secs_f64(minutes * 60.0);
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("soak: {minutes} min, seed {seed} (SOAK_SEED={seed} replays the faults' parameters)");

    // The neighbours.
    let mut mock = support::mock().expires_in(TOKEN_LIFE).settle(MOCK_SETTLE);
    for it in &INTEGRATIONS[1..] {
        mock = mock
            .client(it.client_id, it.secret, &SCOPES)
            .api_key(it.key);
    }
    let mock = Arc::new(mock.start(([127, 0, 0, 1], 0).into()).await.unwrap());
    let pg = tokio::task::spawn_blocking(PrivateServer::start)
        .await
        .unwrap();
    let redis = tokio::task::spawn_blocking(PrivateRedis::start)
        .await
        .unwrap();
    let token_relay = Relay::start(mock.addr).await;
    token_relay
        .handle()
        .latency(Duration::from_millis(10), Duration::from_millis(40));
    let mut relays = Vec::new();
    for _ in REPLICAS {
        relays.push((
            Relay::start(mock.addr).await,
            Relay::start(([127, 0, 0, 1], redis.port).into()).await,
            Relay::start(([127, 0, 0, 1], pg.port).into()).await,
        ));
    }
    for it in &INTEGRATIONS {
        support::leak::note_canary(it.secret);
        support::leak::note_canary(it.key);
    }
    let password = format!("kb-db-password-{:016x}", fastrand::u64(..));
    support::leak::note_canary(&password);

    // The replicas.
    let dir = support::temp_path("soak");
    std::fs::create_dir_all(&dir).unwrap();
    let specs: Arc<Vec<Spec>> = Arc::new(
        REPLICAS
            .iter()
            .zip(&relays)
            .map(|(name, (coupa, _, _))| Spec {
                name,
                config: dir.join(format!("{name}.yaml")),
                coupa: coupa.authority(),
                token: token_relay.authority(),
            })
            .collect(),
    );
    let first_start = Instant::now();
    let mut spawning = Vec::new();
    for (spec, (_, redis_relay, pg_relay)) in specs.iter().zip(&relays) {
        spec.write(0);
        let mut command = keybridge();
        command.args(["run", "--config"]).arg(&spec.config);
        for it in &INTEGRATIONS {
            command.env(it.secret_env, it.secret);
        }
        command
            .env(
                "KEYBRIDGE_DATABASE_URL",
                format!(
                    "postgres://postgres:{password}@{}/postgres",
                    pg_relay.authority()
                ),
            )
            .env(
                "KEYBRIDGE_REDIS_URL",
                format!("redis://{}/0", redis_relay.authority()),
            );
        spawning.push(tokio::task::spawn_blocking(move || Process::spawn(command)));
    }
    let mut replicas = Vec::new();
    for (spec, spawned) in specs.iter().zip(spawning) {
        let process = spawned.await.unwrap();
        let (proxy, admin) = (process.proxy(), process.admin());
        replicas.push(Replica {
            pid: pid_of(&spec.config),
            process,
            proxy,
            admin,
        });
    }
    for r in &replicas {
        support::wait_ready(r.admin).await;
    }
    let grants_at_start = mock.token_grants();

    // Traffic, then faults after the warm-up.
    let t0 = Instant::now();
    let t0_wall = std::time::SystemTime::now();
    let end = t0 + run;
    let faults_end = end.checked_sub(QUIET_END).unwrap_or(t0);
    let stop = Arc::new(AtomicBool::new(false));
    let proxies = [replicas[0].proxy, replicas[1].proxy];
    let mut callers = Vec::new();
    for integration in 0..INTEGRATIONS.len() {
        for first in 0..2 {
            callers.push(tokio::spawn(caller(
                integration,
                first,
                proxies,
                Arc::clone(&stop),
            )));
        }
    }
    let pids: Vec<u32> = replicas.iter().map(|r| r.pid).collect();
    let peaks = Arc::new(Mutex::new(vec![Usage::default(); 2]));
    let sampler = tokio::spawn(sample_peaks(
        pids.clone(),
        Arc::clone(&stop),
        Arc::clone(&peaks),
    ));
    tokio::time::sleep_until(t0 + WARMUP).await;
    let baseline: Vec<Usage> = pids
        .iter()
        .map(|p| usage(*p).expect("both replicas run after the warm-up"))
        .collect();

    let tally: Shared<Tally> = Arc::default();
    let links: Vec<Links> = relays
        .iter()
        .map(|(c, r, p)| Links {
            coupa: c.handle(),
            redis: r.handle(),
            pg: p.handle(),
        })
        .collect();
    let tasks = (
        tokio::spawn(link_faults(
            links,
            fastrand::Rng::with_seed(seed),
            t0 + WARMUP,
            faults_end,
            Arc::clone(&tally),
        )),
        tokio::spawn(token_outages(
            Arc::clone(&mock),
            t0,
            end,
            Arc::clone(&tally),
        )),
        tokio::spawn(restarts(redis, pg, t0, faults_end, Arc::clone(&tally))),
        tokio::spawn(reloads(
            Arc::clone(&specs),
            replicas.iter().map(|r| (r.pid, r.admin)).collect(),
            t0,
            faults_end,
            Arc::clone(&tally),
        )),
    );

    tokio::time::sleep_until(end).await;
    stop.store(true, Ordering::SeqCst);
    let mut calls = Vec::new();
    for c in callers {
        calls.extend(c.await.unwrap());
    }
    tasks.0.await.unwrap();
    tasks.1.await.unwrap();
    let (redis, pg) = tasks.2.await.unwrap();
    tasks.3.await.unwrap();
    sampler.await.unwrap();
    mock.set_token_failure(None);

    // Recovery: both replicas flush again.
    let mut recovered = [false; 2];
    let mut ready = vec![serde_json::Value::Null; 2];
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until && !recovered.iter().all(|r| *r) {
        for (i, r) in replicas.iter().enumerate() {
            if let Some((status, body)) = admin_json(r.admin, "/readyz").await {
                recovered[i] = status == StatusCode::OK && body["audit"]["status"] == "ok";
                ready[i] = body;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(IDLE_WAIT).await;
    // A replica that exited shows as 0 here; its exit status says why.
    let after: Vec<Usage> = pids.iter().map(|p| usage(*p).unwrap_or_default()).collect();

    // Stop: SIGTERM, the last flush, exit 0.
    let mut exits = Vec::new();
    let mut outputs = Vec::new();
    for r in replicas {
        let (code, output) = tokio::task::spawn_blocking(move || r.process.stop())
            .await
            .unwrap();
        exits.push(code);
        outputs.push(output);
    }
    let lifetime = first_start.elapsed();

    // The audit, read from PostgreSQL itself.
    let (db, conn) = tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = db
        .query(
            "SELECT kind, name, outcome, count FROM keybridge_outcomes ORDER BY kind, name, outcome",
            &[],
        )
        .await
        .unwrap();
    let mut audited = vec![0u64; INTEGRATIONS.len()];
    let mut breakdown = vec![String::new(); INTEGRATIONS.len()];
    let mut strangers = Vec::new();
    for row in rows {
        let (kind, name, outcome, count): (String, String, String, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        match INTEGRATIONS.iter().position(|i| i.name == name) {
            Some(i) if kind == "integration" => {
                audited[i] += count as u64;
                breakdown[i].push_str(&format!("{outcome} {count} "));
            }
            _ => strangers.push(format!("{kind} {name} {outcome} {count}")),
        }
    }

    // ------------------------------------------------------------------ the verdict
    let tally = Arc::try_unwrap(tally).unwrap().into_inner().unwrap();
    let peaks = peaks.lock().unwrap().clone();
    let coupa_stats: Vec<_> = relays.iter().map(|(c, _, _)| c.handle().stats()).collect();
    let conns_reset: u64 = coupa_stats.iter().map(|s| s.reset).sum();
    let reset_near = |call: &Call| {
        tally.coupa_reset_at.iter().any(|(r, at)| {
            *r == call.replica
                && *at + Duration::from_millis(100) >= call.start
                && *at <= call.end + Duration::from_millis(100)
        })
    };
    let mut rows = Vec::new();
    let mut unexplained = Vec::new();
    let (mut coupa_caused_total, mut timeouts_total) = (0u64, 0u64);
    let mut latencies = Vec::new();
    let mut coupa_kinds = std::collections::BTreeMap::new();
    for (i, it) in INTEGRATIONS.iter().enumerate() {
        let mine: Vec<&Call> = calls.iter().filter(|c| c.integration == i).collect();
        let (mut ok, mut coupa, mut other, mut timeouts) = (0u64, 0u64, 0u64, 0u64);
        for c in &mine {
            match &c.answer {
                Answer::Ok => {
                    ok += 1;
                    latencies.push(c.end - c.start);
                }
                Answer::TimedOut => {
                    timeouts += 1;
                    unexplained.push(format!(
                        "{} via {} ({}): no answer within {:?} (at {:?})",
                        it.name,
                        REPLICAS[c.replica],
                        if c.post { "POST" } else { "GET" },
                        client_timeout(),
                        c.start - t0
                    ));
                }
                Answer::Failed(status, code) if blames_coupa(&c.answer) && reset_near(c) => {
                    coupa += 1;
                    let kind = if code.starts_with("body cut") {
                        "body cut".to_owned()
                    } else {
                        format!("{} {code}", status.map_or(0, |s| s.as_u16()))
                    };
                    *coupa_kinds.entry(kind).or_insert(0u64) += 1;
                }
                a => {
                    other += 1;
                    unexplained.push(format!(
                        "{} via {} ({}) at {:?} after {:?}: {a:?}",
                        it.name,
                        REPLICAS[c.replica],
                        if c.post { "POST" } else { "GET" },
                        c.start - t0,
                        c.end - c.start
                    ));
                }
            }
        }
        coupa_caused_total += coupa;
        timeouts_total += timeouts;
        rows.push((
            it.name,
            mine.len() as u64,
            ok,
            coupa,
            other,
            timeouts,
            audited[i],
        ));
    }
    latencies.sort();

    let (clients, replicas_n) = (INTEGRATIONS.len() as u64, REPLICAS.len() as u64);
    let period = TOKEN_LIFE - REFRESH_BEFORE.min(TOKEN_LIFE / 2);
    let refreshes = 1 + lifetime.as_secs() / period.as_secs();
    let grants = mock.token_grants();
    let allowed_grants = clients * replicas_n * refreshes;
    let failed_attempts = mock.token_requests() - grants;
    let per_window = 3 + OUTAGE.as_secs().div_ceil((MAX_BACKOFF / 2).as_secs()) + 2;
    let allowed_failed = clients * replicas_n * tally.outages * per_window;

    // Each client's fetches, from both replicas' logs, grouped into refreshes; a
    // refresh may take one fetch, or one per replica if Redis was unreachable then.
    let since_t0 = |at: Instant| {
        if at >= t0 {
            (at - t0).as_secs_f64()
        } else {
            -(t0 - at).as_secs_f64()
        }
    };
    let unreachable: Vec<(f64, f64)> = tally
        .redis_unreachable
        .iter()
        .map(|(a, b)| (since_t0(*a), since_t0(*b)))
        .collect();
    let mut fetches: std::collections::BTreeMap<String, Vec<(f64, usize)>> = Default::default();
    for (replica, output) in outputs.iter().enumerate() {
        for (wall, client) in token_fetches(output) {
            let at = match wall.duration_since(t0_wall) {
                Ok(d) => d.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            };
            fetches.entry(client).or_default().push((at, replica));
        }
    }
    let logged: u64 = fetches.values().map(|f| f.len() as u64).sum();
    let (mut allowed_by_refresh, mut over_by_refresh) = (0u64, Vec::new());
    let mut refresh_lines = Vec::new();
    for (client, list) in &mut fetches {
        list.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut groups: Vec<Vec<(f64, usize)>> = Vec::new();
        for f in list.iter() {
            match groups.last_mut() {
                Some(g) if f.0 - g[g.len() - 1].0 <= ONE_REFRESH.as_secs_f64() => g.push(*f),
                _ => groups.push(vec![*f]),
            }
        }
        let mut line = format!("  {client:<9}");
        for g in &groups {
            let (first, last) = (g[0].0, g[g.len() - 1].0);
            let disturbed = unreachable
                .iter()
                .any(|(a, b)| *a <= last && *b >= first - 1.0);
            let allowed = if disturbed { replicas_n } else { 1 };
            allowed_by_refresh += allowed;
            let who: String = g.iter().map(|f| &REPLICAS[f.1][3..]).collect();
            line.push_str(&format!(
                " +{first:.0}s {who}{}",
                if disturbed { "*" } else { "" }
            ));
            if g.len() as u64 > allowed {
                over_by_refresh.push(format!(
                    "{client}: {} fetches for the refresh at +{first:.1}s (by {}), Redis reachable from both replicas then",
                    g.len(),
                    g.iter()
                        .map(|f| format!("{} at +{:.3}s", REPLICAS[f.1], f.0))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        if groups.len() as u64 > refreshes {
            over_by_refresh.push(format!(
                "{client}: {} refreshes, more than 1 + ⌊D/P⌋ = {refreshes}",
                groups.len()
            ));
        }
        refresh_lines.push(line);
    }

    println!();
    println!(
        "{:<16} {:>7} {:>7} {:>12} {:>7} {:>8} {:>7}  audit outcomes",
        "integration", "sent", "ok", "coupa-caused", "other", "timeout", "audit"
    );
    for (i, (name, sent, ok, coupa, other, timeouts, audit)) in rows.iter().enumerate() {
        println!(
            "{name:<16} {sent:>7} {ok:>7} {coupa:>12} {other:>7} {timeouts:>8} {audit:>7}  {}",
            breakdown[i].trim_end()
        );
    }
    println!(
        "latency of answered requests: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    println!("coupa-caused failures: {coupa_kinds:?}");
    println!(
        "coupa links: {} reset events, {} connections reset ({} with a request in flight), {} latency changes",
        tally.coupa_resets,
        conns_reset,
        coupa_stats.iter().map(|s| s.reset_busy).sum::<u64>(),
        tally.coupa_latency
    );
    println!(
        "redis links: {} latency, {} stalls, {} resets, {} drop-new; {} restarts",
        tally.redis_latency,
        tally.redis_stalls,
        tally.redis_resets,
        tally.redis_drops,
        tally.redis_restarts
    );
    println!(
        "postgres links: {} latency, {} stalls, {} resets, {} drop-new; {} restarts",
        tally.pg_latency, tally.pg_stalls, tally.pg_resets, tally.pg_drops, tally.pg_restarts
    );
    println!(
        "token endpoint: {} outage windows; reloads: {} SIGHUP + {} POST (slowest POST {:?})",
        tally.outages, tally.reloads_sighup, tally.reloads_post, tally.slowest_reload
    );
    println!(
        "token grants: {grants} ({} at start); backstop C×R×(1+⌊D/P⌋) = {clients}×{replicas_n}×(1+⌊{}s/{}s⌋) = {allowed_grants}; fleet ideal {}",
        grants_at_start,
        lifetime.as_secs(),
        period.as_secs(),
        clients * refreshes
    );
    println!(
        "token fetches by refresh (+time since traffic start, replicas; * Redis unreachable then): {logged} logged, {allowed_by_refresh} allowed"
    );
    for line in &refresh_lines {
        println!("{line}");
    }
    println!(
        "failed token requests: {failed_attempts}; allowed C×R×W×{per_window} = {allowed_failed}"
    );
    for (i, r) in ready.iter().enumerate() {
        println!(
            "{}: audit {}, shared tokens {} (read {}, written {}, local {})",
            REPLICAS[i],
            r["audit"]["status"],
            r["shared_tokens"]["status"],
            r["shared_tokens"]["tokens_read"],
            r["shared_tokens"]["tokens_written"],
            r["shared_tokens"]["local_fetches"]
        );
    }
    println!(
        "{:<6} {:>12} {:>12} {:>12} {:>6} {:>6} {:>6}",
        "", "rss base kB", "rss end kB", "rss peak kB", "fd b", "fd end", "fd pk"
    );
    for i in 0..2 {
        println!(
            "{:<6} {:>12} {:>12} {:>12} {:>6} {:>6} {:>6}",
            REPLICAS[i],
            baseline[i].rss_kb,
            after[i].rss_kb,
            peaks[i].rss_kb,
            baseline[i].fds,
            after[i].fds,
            peaks[i].fds
        );
    }

    let mut failures = Vec::new();
    if !unexplained.is_empty() {
        failures.push(format!(
            "{} requests failed or hung for reasons other than Coupa ({} timeouts); first ones:\n  {}",
            unexplained.len(),
            timeouts_total,
            unexplained
                .iter()
                .take(15)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        ));
    }
    if coupa_caused_total > conns_reset {
        failures.push(format!(
            "{coupa_caused_total} Coupa-caused failures but only {conns_reset} connections reset"
        ));
    }
    for (name, sent, _, _, _, _, audit) in &rows {
        if sent != audit {
            failures.push(format!("{name}: {sent} sent, {audit} in the audit"));
        }
    }
    if !strangers.is_empty() {
        failures.push(format!("unexpected audit subjects: {strangers:?}"));
    }
    if grants > allowed_grants {
        failures.push(format!(
            "{grants} token grants, more than {allowed_grants} allowed"
        ));
    }
    if logged != grants {
        failures.push(format!(
            "the replicas logged {logged} token fetches, the mock granted {grants}"
        ));
    }
    failures.extend(over_by_refresh);
    if failed_attempts > allowed_failed {
        failures.push(format!(
            "{failed_attempts} failed token requests, more than {allowed_failed} allowed"
        ));
    }
    for i in 0..2 {
        if after[i].rss_kb > baseline[i].rss_kb + RSS_TOLERANCE_KB {
            failures.push(format!(
                "{}: RSS {} kB after, baseline {} kB (+{} kB allowed)",
                REPLICAS[i], after[i].rss_kb, baseline[i].rss_kb, RSS_TOLERANCE_KB
            ));
        }
        if after[i].fds > baseline[i].fds + FD_TOLERANCE {
            failures.push(format!(
                "{}: {} open descriptors after, baseline {} (+{} allowed)",
                REPLICAS[i], after[i].fds, baseline[i].fds, FD_TOLERANCE
            ));
        }
        if !recovered[i] {
            failures.push(format!(
                "{}: not ready with a healthy audit 30 s after the faults: {}",
                REPLICAS[i], ready[i]
            ));
        }
        if exits[i] != Some(0) {
            failures.push(format!("{}: exit {:?} on SIGTERM", REPLICAS[i], exits[i]));
        }
        let reloaded = outputs[i].matches("configuration reloaded").count() as u64;
        let sent = (tally.reloads_sighup + tally.reloads_post) / replicas_n;
        if reloaded != sent
            || outputs[i].contains("reload refused")
            || outputs[i].contains("only applies after a restart")
        {
            failures.push(format!(
                "{}: {reloaded} reloads logged of {sent} asked (or one refused, or not harmless)",
                REPLICAS[i]
            ));
        }
        if outputs[i].contains("panicked") {
            failures.push(format!("{}: a panic in its log", REPLICAS[i]));
        }
    }
    failures.extend(tally.reload_failures.iter().cloned());
    drop((redis, pg, relays, token_relay));
    assert!(
        failures.is_empty(),
        "the soak failed:\n- {}",
        failures.join("\n- ")
    );
    println!("soak passed");
}

//! The configuration file's shape: plain serde types, nothing checked yet.
//!
//! Every struct denies unknown fields, so a typo fails at load with its path. The `///`
//! comment on each field is the operator's documentation: the README's configuration
//! reference is generated from this file (`tests/config_reference.rs` fails when the two
//! differ), so write them for the person editing the YAML, defaults included.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::secret::Secret;
use super::values::de_byte_size;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// Proxy listener. Default `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Health, readiness, metrics, audit and dashboard listener. Default `127.0.0.1:9900`.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// The Coupa instances, by name (at least one).
    pub instances: BTreeMap<String, RawInstance>,
    /// The OAuth 2.0 client-credentials clients registered in Coupa, by name.
    #[serde(default)]
    pub clients: BTreeMap<String, RawClient>,
    /// The legacy callers, each identified by its API key.
    #[serde(default)]
    pub integrations: Vec<RawIntegration>,
    /// `reject` (default: 401) or `observe` (forward to `default_instance` with the key,
    /// record by fingerprint).
    #[serde(default)]
    pub unknown_keys: UnknownKeys,
    /// `forward` (default: callers already sending `Authorization: Bearer` and no key go to
    /// `default_instance` untouched, recorded as `native`) or `reject`.
    #[serde(default)]
    pub bearer_requests: BearerRequests,
    /// Where unknown keys and bearer callers go; defaults to the only instance when there
    /// is one. With several and none set, bearer callers get `401 bearer_not_routed`
    /// (`check` warns) and `unknown_keys: observe` is an error.
    pub default_instance: Option<String>,
    #[serde(default)]
    pub forwarding: RawForwarding,
    #[serde(default)]
    pub cutover: CutoverSettings,
    #[serde(default)]
    pub audit: AuditSettings,
    /// Optional: terminate TLS on `listen` (rustls; HTTP/1.1 and h2 by ALPN).
    pub tls: Option<TlsSettings>,
    /// Optional (required when `admin_listen` is not loopback); when set every admin path
    /// but `/healthz` and `/readyz` needs `Authorization: Bearer <token>` (or Basic with it
    /// as password). At least 16 characters, usually `${VAR}`.
    pub admin_token: Option<Secret>,
    /// Extra `Host` names the admin listener answers to when it listens on loopback
    /// (default: `localhost`, `127.0.0.1`, `[::1]` only — a page that rebinds its own
    /// name to 127.0.0.1 is refused).
    #[serde(default)]
    pub admin_hosts: Vec<String>,
    #[serde(default)]
    pub token: TokenSettings,
    #[serde(default)]
    pub upstream: UpstreamSettings,
    #[serde(default)]
    pub server: ServerSettings,
    #[serde(default)]
    pub fleet: FleetSettings,
}

/// Running several replicas.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSettings {
    /// This replica's name in the audit and on the dashboard (letters, digits, `.`, `_`,
    /// `-`; up to 63). Default: the host name (a container's is its id).
    pub replica: Option<String>,
    /// Optional: `redis://[:password@]host:6379[/db]` (usually `${VAR}`; a secret):
    /// replicas share each client's token (one fetch per client for the fleet, sealed
    /// with a key derived from the client's secret). Without it, or while Redis does not
    /// answer, each replica fetches its own.
    pub redis_url: Option<Secret>,
    /// `keybridge:`: prefix of keybridge's Redis keys (fleets sharing one Redis keep
    /// apart).
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
    /// `1` (1–1000): how many replicas run. Without `fleet.redis_url`, or while Redis
    /// does not answer, each replica keeps to `rate_limit.per_second / expected_replicas`
    /// (and burst alike), so the fleet together stays within the instance's limit.
    #[serde(default = "default_expected_replicas")]
    pub expected_replicas: u32,
}

fn default_expected_replicas() -> u32 {
    1
}

fn default_redis_prefix() -> String {
    "keybridge:".to_owned()
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9900))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInstance {
    /// Coupa instance, scheme + host only (`https://acme.coupahost.com`); `http://` allowed
    /// for tests (a warning is logged for non-loopback hosts).
    pub base_url: String,
    /// Optional; default `base_url` + `/oauth2/token`.
    pub token_url: Option<String>,
    /// How fast keybridge lets requests go to this instance, all callers together
    /// (default: Coupa's documented 25 per second with a burst of 20). `rate_limit: off`
    /// sends everything as it comes; Coupa then answers the excess with 429.
    #[serde(default)]
    pub rate_limit: RawRateLimit,
}

/// An instance's request budget (`rate_limit`), or `off`.
pub(super) struct RawRateLimit {
    /// `25` (0.1–100000) requests per second, shared by every replica (with
    /// `fleet.redis_url`; without it each replica takes `per_second /
    /// fleet.expected_replicas`). A 429 or 503 from Coupa lowers it for a while.
    pub per_second: f64,
    /// `20` (1–100000) requests that may go at once after a quiet spell.
    pub burst: u32,
    /// `10s` (0s–10min): the longest a request waits for its turn (its retries after a
    /// 429 from Coupa included); beyond it the caller gets `429` with `Retry-After`.
    pub max_wait: Duration,
    /// `rate_limit: off`.
    off: bool,
}

impl RawRateLimit {
    /// The budget, or `None` for `off`.
    pub fn settings(&self) -> Option<(f64, u32, Duration)> {
        (!self.off).then_some((self.per_second, self.burst, self.max_wait))
    }
}

impl Default for RawRateLimit {
    fn default() -> Self {
        RawRateLimit {
            per_second: 25.0,
            burst: 20,
            max_wait: Duration::from_secs(10),
            off: false,
        }
    }
}

/// `off` (or `false`), or a map of the settings (missing ones take their defaults).
impl<'de> Deserialize<'de> for RawRateLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Settings {
            per_second: Option<f64>,
            burst: Option<u32>,
            #[serde(default, with = "humantime_serde")]
            max_wait: Option<Duration>,
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawRateLimit;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`off`, or a map with per_second, burst and max_wait")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawRateLimit, E> {
                match v {
                    "off" => Ok(RawRateLimit {
                        off: true,
                        ..RawRateLimit::default()
                    }),
                    other => Err(E::custom(format!(
                        "`{other}`: write `off`, or a map with per_second, burst and max_wait"
                    ))),
                }
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RawRateLimit, E> {
                if v {
                    Err(E::custom(
                        "`true`: the limit is on by default; write a map with per_second, burst and max_wait to change it",
                    ))
                } else {
                    self.visit_str("off")
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawRateLimit, A::Error> {
                let s = Settings::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                let d = RawRateLimit::default();
                Ok(RawRateLimit {
                    per_second: s.per_second.unwrap_or(d.per_second),
                    burst: s.burst.unwrap_or(d.burst),
                    max_wait: s.max_wait.unwrap_or(d.max_wait),
                    off: false,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    /// Which instance the client belongs to.
    pub instance: String,
    /// OAuth client id.
    pub client_id: String,
    /// The client secret, usually `${VAR}`. Exactly one of `client_secret` and
    /// `client_secret_file`.
    pub client_secret: Option<Secret>,
    /// A file holding the secret, read once at load (trailing newline trimmed), relative
    /// to the config file.
    pub client_secret_file: Option<PathBuf>,
    /// Scopes to request, verbatim (instances differ); empty: no `scope` parameter, and
    /// Coupa grants all of the client's scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `body` (default: id and secret in the form, as Coupa documents) or `basic` (HTTP
    /// Basic, RFC 6749 §2.3.1).
    #[serde(default)]
    pub auth: ClientAuth,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIntegration {
    /// Unique name, used in logs, metrics and errors.
    pub name: String,
    /// Hex SHA-256 of the key (preferred: the key never sits in config; see `keybridge
    /// hash-key`).
    pub api_key_sha256: Option<String>,
    /// Alternative: the key itself, usually `${VAR}`; hashed at load and never kept.
    pub api_key: Option<Secret>,
    /// The client whose token replaces this key (required in `shadow`, `canary`, `oauth`).
    pub client: Option<String>,
    /// Where an integration without a client yet (`observe`) forwards; otherwise the
    /// client's instance.
    pub instance: Option<String>,
    /// `observe`, `shadow`, `canary`, `oauth` (default), `deny` — see "Migrating an
    /// integration".
    #[serde(default)]
    pub mode: Mode,
    /// `shadow` only, 0–100 (default 100): share of GET/HEAD replayed with OAuth.
    pub shadow_percent: Option<u8>,
    /// `canary` only, 0–100, required there: share of requests sent with OAuth.
    pub canary_percent: Option<u8>,
    /// `1` (1–1000): this integration's weight in its instance's `rate_limit` when
    /// callers queue; `2` gets twice the turns of an integration with `1`.
    pub share: Option<u32>,
}

/// What keybridge forwards at all; everything else is refused before any credential is
/// attached.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawForwarding {
    /// Methods forwarded (default `GET`, `HEAD`, `POST`, `PUT`, `PATCH`, `DELETE`: what
    /// Coupa's API uses); others get `405`. `TRACE` and `CONNECT` are never forwarded.
    pub methods: Vec<String>,
    /// Path prefixes forwarded (default `/api/`); other paths get `404` so no credential
    /// reaches Coupa's `/oauth2/…` or web pages. Paths with dot segments (`..`, `%2e%2e`),
    /// backslashes or empty segments are always refused (`400`).
    pub path_prefixes: Vec<String>,
}

impl Default for RawForwarding {
    fn default() -> Self {
        RawForwarding {
            methods: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
                .map(str::to_owned)
                .to_vec(),
            path_prefixes: vec!["/api/".to_owned()],
        }
    }
}

/// An integration's migration stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Forward with the API key, unchanged; record.
    Observe,
    /// As `observe`, plus replay sampled GET/HEAD requests with OAuth in the background
    /// and record where the status differs.
    Shadow,
    /// `canary_percent` of requests on OAuth, falling back to the key on 401/403.
    Canary,
    /// Always OAuth.
    #[default]
    Oauth,
    /// Nothing forwarded: 403 telling the caller to move to OAuth.
    Deny,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Observe => "observe",
            Mode::Shadow => "shadow",
            Mode::Canary => "canary",
            Mode::Oauth => "oauth",
            Mode::Deny => "deny",
        }
    }
}

/// Policy for keys that match no integration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnknownKeys {
    /// 401, nothing forwarded.
    #[default]
    Reject,
    /// Forward with the key to `default_instance` and record the key's fingerprint.
    Observe,
}

impl UnknownKeys {
    pub fn as_str(self) -> &'static str {
        match self {
            UnknownKeys::Reject => "reject",
            UnknownKeys::Observe => "observe",
        }
    }
}

/// Policy for callers that already use OAuth (bearer, no key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BearerRequests {
    /// Forward unchanged to `default_instance` (recorded as `native`).
    #[default]
    Forward,
    /// 401.
    Reject,
}

impl BearerRequests {
    pub fn as_str(self) -> &'static str {
        match self {
            BearerRequests::Forward => "forward",
            BearerRequests::Reject => "reject",
        }
    }
}

/// How the client authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body (what Coupa documents).
    #[default]
    Body,
    /// HTTP Basic `client_id:client_secret` (RFC 6749 §2.3.1; used by several connectors).
    Basic,
}

/// Cutover mechanics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CutoverSettings {
    /// `1MiB`: in `canary`, bodies up to this (by `Content-Length`) are buffered so a
    /// 401/403 can be retried with the key; larger or chunked bodies stream and are never
    /// replayed. `oauth` streams every body and retries only bodiless requests.
    #[serde(deserialize_with = "de_byte_size")]
    pub replay_body_limit: u64,
    /// `10`: cap on shadow replays per second, all integrations together.
    pub shadow_max_per_second: u32,
    /// `64MiB`: memory for canary bodies buffered for a replay, all requests together;
    /// when it is used up a canary body streams (and is not retried with the key), so
    /// stalled uploads cannot make memory grow to `max_in_flight` × `replay_body_limit`.
    #[serde(deserialize_with = "de_byte_size")]
    pub replay_buffer_budget: u64,
}

impl Default for CutoverSettings {
    fn default() -> Self {
        CutoverSettings {
            replay_body_limit: 1024 * 1024,
            shadow_max_per_second: 10,
            replay_buffer_budget: 64 * 1024 * 1024,
        }
    }
}

/// The migration audit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// `true`: record requests at all (turn off only to measure the audit's cost).
    pub enabled: bool,
    /// `keybridge-audit.db`: the SQLite file, relative to the working directory. Unused
    /// with `postgres_url`.
    pub path: PathBuf,
    /// Optional: `postgres://user:password@host:5432/dbname` (usually `${VAR}`; a
    /// secret, never logged): the shared audit of a fleet, in tables prefixed
    /// `keybridge_`. Replicas add their counts, so totals are exact across replicas.
    pub postgres_url: Option<Secret>,
    /// Optional: extra CA certificates (PEM, relative to the config file) for
    /// PostgreSQL's TLS certificate (a cloud provider's CA bundle, say). TLS is used when the URL says `?sslmode=require`; the
    /// server's certificate and name are then always verified.
    pub postgres_ca_file: Option<PathBuf>,
    /// `10s` (100ms–1h): aggregates are written this often (a crash loses at most this
    /// much; shutdown flushes).
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// `7d` (1s–3650d): on `oauth` with no key-based request or fallback for this long →
    /// "ready to disable the key in Coupa".
    #[serde(with = "humantime_serde")]
    pub ready_after: Duration,
    /// `1000` distinct unknown-key fingerprints tracked; more are counted together.
    pub max_unknown_keys: usize,
    /// `90d` (1d–3650d): the per-minute traffic series, endpoint, fallback, shadow and
    /// peer rows, and unknown keys not seen for this long are deleted (checked hourly).
    /// Integrations' own totals and key-use dates are kept.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            enabled: true,
            path: PathBuf::from("keybridge-audit.db"),
            postgres_url: None,
            postgres_ca_file: None,
            flush_interval: Duration::from_secs(10),
            ready_after: Duration::from_secs(7 * 24 * 3600),
            max_unknown_keys: 1000,
            retention: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// TLS termination on the proxy listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, relative to the config file.
    pub cert: PathBuf,
    /// PEM private key, relative to the config file.
    pub key: PathBuf,
}

/// Token cache behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenSettings {
    /// `5s` (0s–60s): a new token is not handed out before it is this old (Coupa may
    /// reject fresh tokens; it advises at least 5 s, and `0s` suits only test instances).
    /// A token must stay usable for one more settle delay (and 1 s) after it settles: a
    /// shorter `expires_in` is a token endpoint error (named in `/tokens`, backed off).
    #[serde(with = "humantime_serde")]
    pub settle_delay: Duration,
    /// `4h` (30s–24h, and at least `settle_delay` + 30 s): refresh when this much life is
    /// left (24 h tokens → every 20 h, as Coupa advises); at most half the lifetime.
    #[serde(with = "humantime_serde")]
    pub refresh_before_expiry: Duration,
    /// `10s` (1ms–5min) per token request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// `60s` (1s–1h): cap of the jittered exponential backoff after failed fetches.
    #[serde(with = "humantime_serde")]
    pub max_retry_backoff: Duration,
    /// `60s` (1s–1h): a 401 from Coupa replaces a client's token at most once per this
    /// interval (and only a token older than `settle_delay`); the refused token serves
    /// other requests until the replacement has settled. Coupa warns that token requests
    /// can expire tokens in use: a token storm is worse than a few 401s.
    #[serde(with = "humantime_serde")]
    pub min_refetch_interval: Duration,
}

impl Default for TokenSettings {
    fn default() -> Self {
        TokenSettings {
            settle_delay: Duration::from_secs(5),
            refresh_before_expiry: Duration::from_secs(4 * 3600),
            request_timeout: Duration::from_secs(10),
            max_retry_backoff: Duration::from_secs(60),
            min_refetch_interval: Duration::from_secs(60),
        }
    }
}

/// Connections to Coupa.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSettings {
    /// `5s` (1ms–5min) for TCP connect and TLS handshake.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// `120s` (1ms–24h) from the start of the request (upload included) until Coupa's
    /// response headers; then `504`. Raise it for very large uploads over slow links.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// `60s` (1ms–1h): once Coupa's response headers have arrived, a response body
    /// from which no bytes arrive for this long is ended (the caller's response is cut
    /// short and the connection closed), so a stalled Coupa cannot hold a request.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// `false`: connections to Coupa speak HTTP/1.1, one request at a time each, so a
    /// caller that reads its response slowly holds only its own connection. `true`
    /// offers HTTP/2 in ALPN too; a worker then multiplexes every integration's
    /// requests over one connection per instance, whose flow-control window a slow
    /// reader shares with everyone until `server.send_timeout` cuts it off.
    pub http2: bool,
    /// `90s` (1s–1h): idle pooled connections are closed after this long.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// `256` idle pooled connections kept per instance and worker.
    pub pool_max_idle_per_host: usize,
    /// Extra PEM CA certificates to trust besides the public web roots (private test
    /// instances); certificate errors always fail closed.
    pub ca_file: Option<PathBuf>,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(120),
            read_timeout: Duration::from_secs(60),
            http2: false,
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
            ca_file: None,
        }
    }
}

/// The listener callers connect to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// `30s` (1ms–10min) for a caller to send its complete request head.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// `60s` (1s–1h): a connection with no request in progress for this long is closed
    /// (an idle HTTP/1 keep-alive connection, an HTTP/2 connection with no open stream).
    /// Until its first request head is complete, a connection gets `header_read_timeout`
    /// instead — whatever the protocol, TLS or not.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// `30s` (0s–1h) for in-flight requests to finish after SIGTERM/SIGINT.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// `true`: one JSON line per request on the `keybridge::access` log target.
    pub access_log: bool,
    /// Proxy threads, each with its own runtime and upstream pool (default `0`: one per
    /// CPU).
    pub workers: usize,
    /// `10000` open caller connections; beyond it a connection gets `503 overloaded` and
    /// is closed.
    pub max_connections: usize,
    /// `512` open connections from one address; beyond it `503 overloaded` and closed,
    /// so one source cannot take every slot. Raise it when many integrations share one
    /// address (NAT, an iPaaS).
    pub max_connections_per_ip: usize,
    /// `4096` requests being proxied at once; beyond it `503 overloaded`.
    pub max_in_flight: usize,
    /// Requests in progress from one address (all its connections and HTTP/2 streams
    /// together); beyond it `503 overloaded`, so one source holding responses unread
    /// or trickling uploads cannot take every slot. Unset: a quarter of
    /// `max_in_flight` (`1024` by default), so other addresses always find three
    /// quarters free. Raise it when many integrations share one address.
    pub max_in_flight_per_ip: Option<usize>,
    /// `30s` (1ms–1h): a request body that sends nothing this long is abandoned (408;
    /// Coupa never gets a complete request).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// `60s` (1ms–1h): a caller that accepts no bytes of its response for this long
    /// (its TCP window or HTTP/2 stream window stays full) is cut off: an HTTP/1
    /// connection is closed, an HTTP/2 stream reset, and the request's connection to
    /// Coupa released. A request counts against `max_in_flight` until its response has
    /// been delivered or cut off. nginx's `send_timeout` has the same default.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
}

impl ServerSettings {
    /// `max_in_flight_per_ip`, or a quarter of `max_in_flight` (at least 1) when unset.
    pub fn in_flight_per_ip(&self) -> usize {
        self.max_in_flight_per_ip
            .unwrap_or((self.max_in_flight / 4).max(1))
    }

    /// The number of proxy workers to start.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            access_log: true,
            workers: 0,
            max_connections: 10_000,
            max_connections_per_ip: 512,
            max_in_flight: 4096,
            max_in_flight_per_ip: None,
            body_read_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(60),
        }
    }
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            replica: None,
            redis_url: None,
            redis_prefix: default_redis_prefix(),
            expected_replicas: default_expected_replicas(),
        }
    }
}

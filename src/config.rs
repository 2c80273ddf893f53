//! Configuration: one YAML file, parsed into plain serde types, validated once.
//!
//! Loading goes YAML text → YAML tree → `${VAR}` expansion (per string, see
//! [`env`]) → raw serde structs (`deny_unknown_fields`, so typos fail) → validated
//! runtime types with parsed URLs, durations, digests and [`Secret`]s. Every error names
//! the field it is about (`clients.erp-sync.instance: ...`), and validation reports all
//! problems it finds, not just the first. Nothing after [`Config::load`] re-checks.

pub mod env;
pub mod secret;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};
use serde::Deserialize;

pub use env::{Env, ProcessEnv};
pub use secret::Secret;

use crate::keys::Fingerprint;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub instances: BTreeMap<String, Arc<Instance>>,
    pub clients: BTreeMap<String, Arc<Client>>,
    pub integrations: Vec<Arc<Integration>>,
    /// What to do with keys no integration owns.
    pub unknown_keys: UnknownKeys,
    /// What to do with callers that send `Authorization: Bearer` and no key.
    pub bearer_requests: BearerRequests,
    /// Where unknown keys (in `observe`) and native bearer requests go.
    pub default_instance: Option<Arc<Instance>>,
    pub cutover: CutoverSettings,
    pub audit: AuditSettings,
    /// TLS on the proxy listener.
    pub tls: Option<TlsSettings>,
    /// Bearer token required on the admin listener (all but `/healthz`).
    pub admin_token: Option<Secret>,
    pub token: TokenSettings,
    pub upstream: UpstreamSettings,
    pub server: ServerSettings,
    /// Things that are allowed but probably unintended (logged at start-up).
    pub warnings: Vec<String>,
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

/// Cutover mechanics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CutoverSettings {
    /// Request bodies up to this size (by Content-Length) are buffered so a 401/403
    /// can be retried; larger or chunked bodies stream and are not replayed.
    #[serde(deserialize_with = "de_byte_size")]
    pub replay_body_limit: u64,
    /// Upper bound on shadow replays per second, across all integrations.
    pub shadow_max_per_second: u32,
}

impl Default for CutoverSettings {
    fn default() -> Self {
        CutoverSettings {
            replay_body_limit: 1024 * 1024,
            shadow_max_per_second: 10,
        }
    }
}

/// The migration audit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// Record requests at all (turn off only to measure the audit's cost).
    pub enabled: bool,
    /// SQLite file; relative paths are relative to the working directory.
    pub path: PathBuf,
    /// In-memory aggregates are written this often (a crash loses at most this much).
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// An integration in `oauth` with no key-based request for this long is ready to
    /// have its key disabled in Coupa.
    #[serde(with = "humantime_serde")]
    pub ready_after: Duration,
    /// Distinct unknown-key fingerprints tracked; more are counted together.
    pub max_unknown_keys: usize,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            enabled: true,
            path: PathBuf::from("keybridge-audit.db"),
            flush_interval: Duration::from_secs(10),
            ready_after: Duration::from_secs(7 * 24 * 3600),
            max_unknown_keys: 1000,
        }
    }
}

/// TLS termination on the proxy listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Accepts `1048576`, `"512KiB"`, `"1MiB"`, `"2MB"`.
fn de_byte_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(n),
        Raw::Text(t) => parse_byte_size(&t).map_err(serde::de::Error::custom),
    }
}

pub fn parse_byte_size(t: &str) -> Result<u64, String> {
    let t = t.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{t}` is not a size (e.g. 1MiB, 512KiB, 1048576)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1024,
        "MB" => 1000 * 1000,
        "MiB" => 1024 * 1024,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "unknown size unit `{other}` (use B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{t}` is too large"))
}

/// A Coupa instance: where API calls and token requests go.
#[derive(Debug)]
pub struct Instance {
    pub name: Arc<str>,
    pub scheme: Scheme,
    pub authority: Authority,
    pub token_url: Uri,
}

impl Instance {
    /// The upstream URI for a request: this instance's scheme and authority, the
    /// caller's path and query byte for byte. Nothing from the caller can choose the host.
    pub fn uri_for(&self, path_and_query: PathAndQuery) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }

    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
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

/// An OAuth 2.0 client-credentials client registered in Coupa.
#[derive(Debug)]
pub struct Client {
    pub name: Arc<str>,
    pub instance: Arc<Instance>,
    pub client_id: String,
    pub client_secret: Secret,
    /// Requested scopes; empty means "omit `scope`", which Coupa answers with every
    /// scope granted to the client.
    pub scopes: Vec<String>,
    pub auth: ClientAuth,
}

/// A legacy caller, identified by its API key's fingerprint.
#[derive(Debug)]
pub struct Integration {
    pub name: Arc<str>,
    pub fingerprint: Fingerprint,
    pub mode: Mode,
    /// The OAuth client (required except in `observe` and `deny`).
    pub client: Option<Arc<Client>>,
    /// Where its requests go: the client's instance, or `instance:` when there is no
    /// client yet. `None` only for a `deny` integration with neither.
    pub instance: Option<Arc<Instance>>,
    /// Share of GET/HEAD requests replayed with OAuth in `shadow` (0–100).
    pub shadow_percent: u8,
    /// Share of requests sent with OAuth in `canary` (0–100).
    pub canary_percent: u8,
}

/// Token cache behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenSettings {
    /// Coupa may reject a token during its first seconds; a fresh token is not handed
    /// out until it is this old (Coupa advises at least 5 s).
    #[serde(with = "humantime_serde")]
    pub settle_delay: Duration,
    /// Refresh a token when this much of its life is left (Coupa: tokens live 24 h,
    /// renew every 20 h). Capped at half the lifetime for short-lived tokens.
    #[serde(with = "humantime_serde")]
    pub refresh_before_expiry: Duration,
    /// Total time allowed for one token request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Longest wait between retries after a failed background fetch.
    #[serde(with = "humantime_serde")]
    pub max_retry_backoff: Duration,
}

impl Default for TokenSettings {
    fn default() -> Self {
        TokenSettings {
            settle_delay: Duration::from_secs(5),
            refresh_before_expiry: Duration::from_secs(4 * 3600),
            request_timeout: Duration::from_secs(10),
            max_retry_backoff: Duration::from_secs(60),
        }
    }
}

/// Connections to Coupa.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSettings {
    /// TCP connect (and TLS handshake) limit.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time until Coupa's response headers arrive. Exceeding it answers 504.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Idle pooled connections are closed after this long.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept per instance.
    pub pool_max_idle_per_host: usize,
    /// Extra PEM CA certificates trusted besides the public web roots (private test
    /// instances). Certificate errors always fail closed.
    pub ca_file: Option<PathBuf>,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(120),
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
    /// A client must send its complete request head within this time.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// In-flight requests get this long to finish after SIGTERM/SIGINT.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// One JSON line per request on the `keybridge::access` target.
    pub access_log: bool,
    /// Proxy worker threads (each a single-threaded runtime); 0 = one per CPU.
    pub workers: usize,
    /// Open caller connections beyond this are answered 503 and closed.
    pub max_connections: usize,
    /// Requests in progress beyond this are answered 503.
    pub max_in_flight: usize,
    /// A request body that sends nothing for this long is aborted (slow uploads).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
}

impl ServerSettings {
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
            shutdown_grace: Duration::from_secs(30),
            access_log: true,
            workers: 0,
            max_connections: 10_000,
            max_in_flight: 4096,
            body_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config is not valid YAML: {0}")]
    Yaml(String),
    #[error("{}", FieldErrors(.0))]
    Invalid(Vec<FieldError>),
}

/// One problem, located by its field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

struct FieldErrors<'a>(&'a [FieldError]);

impl fmt::Display for FieldErrors<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

// ---- raw serde types: the file's shape, nothing checked yet ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    #[serde(default = "default_admin_listen")]
    admin_listen: SocketAddr,
    instances: BTreeMap<String, RawInstance>,
    #[serde(default)]
    clients: BTreeMap<String, RawClient>,
    #[serde(default)]
    integrations: Vec<RawIntegration>,
    #[serde(default)]
    unknown_keys: UnknownKeys,
    #[serde(default)]
    bearer_requests: BearerRequests,
    default_instance: Option<String>,
    #[serde(default)]
    cutover: CutoverSettings,
    #[serde(default)]
    audit: AuditSettings,
    tls: Option<TlsSettings>,
    admin_token: Option<Secret>,
    #[serde(default)]
    token: TokenSettings,
    #[serde(default)]
    upstream: UpstreamSettings,
    #[serde(default)]
    server: ServerSettings,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9900))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    base_url: String,
    token_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    instance: String,
    client_id: String,
    client_secret: Option<Secret>,
    client_secret_file: Option<PathBuf>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    auth: ClientAuth,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntegration {
    name: String,
    api_key_sha256: Option<String>,
    api_key: Option<Secret>,
    client: Option<String>,
    instance: Option<String>,
    #[serde(default)]
    mode: Mode,
    shadow_percent: Option<u8>,
    canary_percent: Option<u8>,
}

impl Config {
    /// Reads, expands and validates `path` using the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, &ProcessEnv)
    }

    pub fn load_with_env(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let text = read(path)?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        Self::from_yaml(&text, base_dir, env)
    }

    /// Loads the file for reading reports: secrets are neither required nor read
    /// (unset variables expand to nothing, secret files are left alone), so
    /// `keybridge audit` works without the proxy's credentials.
    pub fn load_without_secrets(path: &Path) -> Result<Config, ConfigError> {
        struct Lenient;
        impl Env for Lenient {
            fn var(&self, name: &str) -> Option<String> {
                Some(ProcessEnv.var(name).unwrap_or_default())
            }
        }
        let text = read(path)?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base_dir, &Lenient, false)
    }

    /// Parses a YAML document. Relative `client_secret_file` paths resolve against
    /// `base_dir` (the config file's directory).
    pub fn from_yaml(text: &str, base_dir: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        Self::parse(text, base_dir, env, true)
    }

    fn parse(
        text: &str,
        base_dir: &Path,
        env: &dyn Env,
        secrets: bool,
    ) -> Result<Config, ConfigError> {
        let mut tree: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        let mut errors = Vec::new();
        let mut expanded = Vec::new();
        expand_tree(
            &mut tree,
            &mut String::new(),
            env,
            &mut errors,
            &mut expanded,
        );
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        // Values from the environment may be secrets; an error about a misplaced one
        // (a secret where a struct or an instance name belongs) must not quote it.
        Self::parse_expanded(tree, base_dir, secrets).map_err(|e| match e {
            ConfigError::Invalid(errors) => ConfigError::Invalid(
                errors
                    .into_iter()
                    .map(|mut e| {
                        for value in &expanded {
                            e.message = e
                                .message
                                .replace(value.as_str(), "<value from the environment>");
                        }
                        e
                    })
                    .collect(),
            ),
            other => other,
        })
    }

    fn parse_expanded(
        tree: serde_yaml_ng::Value,
        base_dir: &Path,
        secrets: bool,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_path_to_error::deserialize(tree).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." {
                "(top level)".to_owned()
            } else {
                field
            };
            ConfigError::Invalid(vec![FieldError {
                field,
                message: e.into_inner().to_string(),
            }])
        })?;
        raw.validate(base_dir, secrets)
    }

    /// The client an integration uses, by name.
    pub fn client(&self, name: &str) -> Option<&Arc<Client>> {
        self.clients.get(name)
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Expands `${VAR}` in every string scalar of the tree (not in mapping keys).
fn expand_tree(
    value: &mut serde_yaml_ng::Value,
    path: &mut String,
    env: &dyn Env,
    errors: &mut Vec<FieldError>,
    expanded: &mut Vec<String>,
) {
    use serde_yaml_ng::Value;
    match value {
        Value::String(s) => match env::expand(s, env) {
            Ok(Some(value)) => {
                // Remember the values that came from the environment, as they are and as
                // serde would quote them (values under 4 bytes are no secret, and
                // redacting them everywhere would garble messages).
                for var in env::referenced(s) {
                    if let Some(v) = env.var(var).filter(|v| v.len() >= 4) {
                        let quoted = format!("{v:?}");
                        expanded.push(quoted[1..quoted.len() - 1].to_owned());
                        expanded.push(v);
                    }
                }
                *s = value;
            }
            Ok(None) => {}
            Err(e) => errors.push(FieldError {
                field: path.clone(),
                message: e.to_string(),
            }),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                expand_tree(item, path, env, errors, expanded);
                path.truncate(len);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                match k {
                    Value::String(k) => path.push_str(k),
                    other => path.push_str(&format!("{other:?}")),
                }
                expand_tree(v, path, env, errors, expanded);
                path.truncate(len);
            }
        }
        Value::Tagged(t) => expand_tree(&mut t.value, path, env, errors, expanded),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

struct Validator {
    errors: Vec<FieldError>,
    warnings: Vec<String>,
}

impl Validator {
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

impl RawConfig {
    fn validate(self, base_dir: &Path, secrets: bool) -> Result<Config, ConfigError> {
        let mut v = Validator {
            errors: Vec::new(),
            warnings: Vec::new(),
        };

        if self.listen == self.admin_listen && self.listen.port() != 0 {
            v.error("admin_listen", "must differ from `listen`");
        }
        if self.instances.is_empty() {
            v.error("instances", "define at least one Coupa instance");
        }
        if self.token.settle_delay > Duration::from_secs(60) {
            v.error("token.settle_delay", "must be at most 60s");
        }
        if self.token.refresh_before_expiry < self.token.settle_delay + Duration::from_secs(30) {
            v.error(
                "token.refresh_before_expiry",
                "must be at least settle_delay + 30s, or a refreshed token could not settle before the old one expires",
            );
        }
        if self.token.request_timeout.is_zero() {
            v.error("token.request_timeout", "must be greater than 0");
        }
        if self.token.max_retry_backoff < Duration::from_secs(1) {
            v.error("token.max_retry_backoff", "must be at least 1s");
        }
        for (field, d) in [
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            ("upstream.response_timeout", self.upstream.response_timeout),
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
        ] {
            if d.is_zero() {
                v.error(field, "must be greater than 0");
            }
        }

        let mut instances = BTreeMap::new();
        for (name, raw) in self.instances {
            if let Some(instance) = raw.validate(&name, &mut v) {
                instances.insert(name, Arc::new(instance));
            }
        }

        let declared_clients: Vec<String> = self.clients.keys().cloned().collect();
        let mut clients = BTreeMap::new();
        for (name, raw) in self.clients {
            if let Some(client) = raw.validate(&name, &instances, base_dir, secrets, &mut v) {
                clients.insert(name, Arc::new(client));
            }
        }

        let mut integrations = Vec::with_capacity(self.integrations.len());
        let mut seen_names: HashMap<String, usize> = HashMap::new();
        let mut seen_keys: HashMap<Fingerprint, usize> = HashMap::new();
        for (i, raw) in self.integrations.into_iter().enumerate() {
            let field = format!("integrations[{i}]");
            if let Some(first) = seen_names.insert(raw.name.clone(), i) {
                v.error(
                    format!("{field}.name"),
                    format!(
                        "duplicate integration name `{}` (also integrations[{first}])",
                        raw.name
                    ),
                );
            }
            let Some(integration) =
                raw.validate(&field, &instances, &clients, &declared_clients, &mut v)
            else {
                continue;
            };
            if let Some(first) = seen_keys.insert(integration.fingerprint, i) {
                v.error(
                    field,
                    format!(
                        "duplicate API key (fingerprint {}): integrations[{first}] already uses it",
                        integration.fingerprint.short()
                    ),
                );
                continue;
            }
            integrations.push(Arc::new(integration));
        }

        let default_instance = match &self.default_instance {
            Some(name) => {
                let found = instances.get(name).cloned();
                if found.is_none() && !v.errors.iter().any(|e| e.field.starts_with("instances")) {
                    v.error(
                        "default_instance",
                        format!(
                            "instance `{name}` is not defined under `instances` (defined: {})",
                            list(instances.keys())
                        ),
                    );
                }
                found
            }
            // With one instance there is no doubt where unmatched traffic belongs.
            None if instances.len() == 1 => instances.values().next().cloned(),
            None => None,
        };
        if default_instance.is_none() && self.default_instance.is_none() && instances.len() > 1 {
            if self.unknown_keys == UnknownKeys::Observe {
                v.error(
                    "default_instance",
                    "required with `unknown_keys: observe` when there are several instances",
                );
            }
            if self.bearer_requests == BearerRequests::Forward {
                v.error(
                    "default_instance",
                    "required with `bearer_requests: forward` (the default) when there are several instances; or set `bearer_requests: reject`",
                );
            }
        }
        if let Some(tls) = &self.tls {
            for (field, path) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
                if !base_dir.join(path).is_file() {
                    v.error(field, format!("{} is not a readable file", path.display()));
                }
            }
        }
        if self
            .admin_token
            .as_ref()
            .is_some_and(|t| t.expose().len() < 16)
            && secrets
        {
            v.error(
                "admin_token",
                "must be at least 16 characters (it guards /reload and the audit)",
            );
        }
        if self.server.max_connections == 0 || self.server.max_in_flight == 0 {
            v.error(
                "server",
                "max_connections and max_in_flight must be at least 1",
            );
        }
        if self.cutover.shadow_max_per_second == 0 {
            v.error("cutover.shadow_max_per_second", "must be at least 1");
        }
        if self.audit.flush_interval < Duration::from_millis(100) {
            v.error("audit.flush_interval", "must be at least 100ms");
        }

        if !v.errors.is_empty() {
            return Err(ConfigError::Invalid(v.errors));
        }
        Ok(Config {
            listen: self.listen,
            admin_listen: self.admin_listen,
            instances,
            clients,
            integrations,
            unknown_keys: self.unknown_keys,
            bearer_requests: self.bearer_requests,
            default_instance,
            cutover: self.cutover,
            audit: self.audit,
            tls: self.tls.map(|t| TlsSettings {
                cert: base_dir.join(t.cert),
                key: base_dir.join(t.key),
            }),
            admin_token: self.admin_token.filter(|t| !t.is_empty()),
            token: self.token,
            upstream: self.upstream,
            server: self.server,
            warnings: v.warnings,
        })
    }
}

impl RawInstance {
    fn validate(self, name: &str, v: &mut Validator) -> Option<Instance> {
        let field = format!("instances.{name}");
        let base = match parse_http_url(&self.base_url) {
            Ok(uri) => uri,
            Err(e) => {
                v.error(format!("{field}.base_url"), e);
                return None;
            }
        };
        if !matches!(base.path(), "" | "/") || base.query().is_some() {
            v.error(
                format!("{field}.base_url"),
                "must be scheme and host only (e.g. https://acme.coupahost.com); API paths come from the caller",
            );
            return None;
        }
        let (scheme, authority) = (base.scheme()?.clone(), base.authority()?.clone());
        let token_url = match self.token_url {
            Some(t) => match parse_http_url(&t) {
                Ok(uri) => uri,
                Err(e) => {
                    v.error(format!("{field}.token_url"), e);
                    return None;
                }
            },
            None => {
                let default = format!("{scheme}://{authority}/oauth2/token");
                match default.parse() {
                    Ok(uri) => uri,
                    Err(e) => {
                        v.error(
                            format!("{field}.base_url"),
                            format!("cannot derive token_url: {e}"),
                        );
                        return None;
                    }
                }
            }
        };
        for uri in [&base, &token_url] {
            if uri.scheme() == Some(&Scheme::HTTP) && !is_loopback(uri.host().unwrap_or_default()) {
                v.warnings.push(format!(
                    "{field}: {uri} uses plain http to a non-loopback host; tokens and secrets cross the network unencrypted"
                ));
            }
        }
        Some(Instance {
            name: name.into(),
            scheme,
            authority,
            token_url,
        })
    }
}

impl RawClient {
    fn validate(
        self,
        name: &str,
        instances: &BTreeMap<String, Arc<Instance>>,
        base_dir: &Path,
        secrets: bool,
        v: &mut Validator,
    ) -> Option<Client> {
        let field = format!("clients.{name}");
        let instance = instances.get(&self.instance).cloned();
        if instance.is_none() {
            v.error(
                format!("{field}.instance"),
                format!(
                    "instance `{}` is not defined under `instances` (defined: {})",
                    self.instance,
                    list(instances.keys())
                ),
            );
        }
        if self.client_id.trim().is_empty() {
            v.error(format!("{field}.client_id"), "must not be empty");
        }
        let secret = match (self.client_secret, self.client_secret_file) {
            (Some(_), None) | (None, Some(_)) if !secrets => Some(Secret::default()),
            (Some(_), Some(_)) => {
                v.error(
                    field.clone(),
                    "set either `client_secret` or `client_secret_file`, not both",
                );
                None
            }
            (None, None) => {
                v.error(
                    field.clone(),
                    "missing `client_secret` (or `client_secret_file`)",
                );
                None
            }
            (Some(s), None) if s.is_empty() => {
                v.error(format!("{field}.client_secret"), "must not be empty");
                None
            }
            (Some(s), None) => Some(s),
            (None, Some(path)) => {
                let path = base_dir.join(path);
                match std::fs::read_to_string(&path) {
                    Ok(s) => {
                        let s = s.trim_end_matches(['\r', '\n']);
                        if s.is_empty() {
                            v.error(
                                format!("{field}.client_secret_file"),
                                format!("{} is empty", path.display()),
                            );
                            None
                        } else {
                            Some(Secret::new(s))
                        }
                    }
                    Err(e) => {
                        v.error(
                            format!("{field}.client_secret_file"),
                            format!("cannot read {}: {e}", path.display()),
                        );
                        None
                    }
                }
            }
        };
        for (i, scope) in self.scopes.iter().enumerate() {
            if scope.is_empty()
                || scope
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\\')
            {
                v.error(
                    format!("{field}.scopes[{i}]"),
                    "a scope is one non-empty word without spaces or quotes (list each scope separately)",
                );
            }
        }
        Some(Client {
            name: name.into(),
            instance: instance?,
            client_id: self.client_id,
            client_secret: secret?,
            scopes: self.scopes,
            auth: self.auth,
        })
    }
}

impl RawIntegration {
    fn validate(
        self,
        field: &str,
        instances: &BTreeMap<String, Arc<Instance>>,
        clients: &BTreeMap<String, Arc<Client>>,
        declared_clients: &[String],
        v: &mut Validator,
    ) -> Option<Integration> {
        if self.name.trim().is_empty() {
            v.error(format!("{field}.name"), "must not be empty");
        }
        let mut ok = true;
        let client = match &self.client {
            Some(name) => {
                let found = clients.get(name).cloned();
                // A client that is declared but invalid has its own error already.
                if found.is_none() {
                    ok = false;
                    if !declared_clients.contains(name) {
                        v.error(
                            format!("{field}.client"),
                            format!(
                                "client `{name}` is not defined under `clients` (defined: {})",
                                list(declared_clients.iter())
                            ),
                        );
                    }
                }
                found
            }
            None => None,
        };
        let explicit_instance = match &self.instance {
            Some(name) => {
                let found = instances.get(name).cloned();
                if found.is_none() {
                    ok = false;
                    v.error(
                        format!("{field}.instance"),
                        format!(
                            "instance `{name}` is not defined under `instances` (defined: {})",
                            list(instances.keys())
                        ),
                    );
                }
                found
            }
            None => None,
        };
        let mode = self.mode;
        if self.client.is_none() && matches!(mode, Mode::Shadow | Mode::Canary | Mode::Oauth) {
            ok = false;
            v.error(
                format!("{field}.client"),
                format!(
                    "mode `{}` needs an OAuth client (only `observe` and `deny` work without one)",
                    mode.as_str()
                ),
            );
        }
        if let (Some(c), Some(i)) = (&client, &explicit_instance) {
            if !Arc::ptr_eq(&c.instance, i) {
                ok = false;
                v.error(
                    format!("{field}.instance"),
                    format!(
                        "`{}` differs from client `{}`'s instance `{}`; drop `instance:` (the client decides)",
                        i.name, c.name, c.instance.name
                    ),
                );
            }
        }
        if self.client.is_none() && self.instance.is_none() && mode == Mode::Observe {
            ok = false;
            v.error(
                field,
                "mode `observe` without a client needs `instance:` (where to forward)",
            );
        }
        let shadow_percent = match (mode, self.shadow_percent) {
            (Mode::Shadow, p) => p.unwrap_or(100),
            (_, None) => 0,
            (_, Some(_)) => {
                v.error(
                    format!("{field}.shadow_percent"),
                    "only applies to `mode: shadow`",
                );
                0
            }
        };
        let canary_percent = match (mode, self.canary_percent) {
            (Mode::Canary, Some(p)) => p,
            (Mode::Canary, None) => {
                v.error(
                    format!("{field}.canary_percent"),
                    "`mode: canary` needs `canary_percent` (0-100)",
                );
                0
            }
            (_, None) => 0,
            (_, Some(_)) => {
                v.error(
                    format!("{field}.canary_percent"),
                    "only applies to `mode: canary`",
                );
                0
            }
        };
        for (name, p) in [
            ("shadow_percent", shadow_percent),
            ("canary_percent", canary_percent),
        ] {
            if p > 100 {
                v.error(
                    format!("{field}.{name}"),
                    format!("{p} is not a percentage (0-100)"),
                );
            }
        }
        let fingerprint = match (self.api_key_sha256, self.api_key) {
            (Some(_), Some(_)) => {
                v.error(field, "set either `api_key_sha256` or `api_key`, not both");
                None
            }
            (None, None) => {
                v.error(field, "missing `api_key_sha256` (preferred) or `api_key`");
                None
            }
            (Some(hex), None) => match Fingerprint::from_hex(&hex) {
                Ok(fp) => Some(fp),
                Err(e) => {
                    v.error(format!("{field}.api_key_sha256"), e);
                    None
                }
            },
            (None, Some(key)) => {
                if key.is_empty() {
                    v.error(format!("{field}.api_key"), "must not be empty");
                    None
                } else if !key.expose().bytes().all(|b| (0x21..0x7f).contains(&b)) {
                    v.error(
                        format!("{field}.api_key"),
                        "must be printable ASCII without spaces (it could never arrive in a header otherwise)",
                    );
                    None
                } else {
                    Some(Fingerprint::of_key(key.expose().as_bytes()))
                }
            }
        };
        if !ok {
            return None;
        }
        let instance = client
            .as_ref()
            .map(|c| Arc::clone(&c.instance))
            .or(explicit_instance);
        Some(Integration {
            name: self.name.into(),
            fingerprint: fingerprint?,
            mode,
            client,
            instance,
            shadow_percent,
            canary_percent,
        })
    }
}

/// Parses an absolute http(s) URL with a host and no credentials.
fn parse_http_url(s: &str) -> Result<Uri, String> {
    let uri: Uri = s
        .parse()
        .map_err(|e| format!("`{s}` is not a valid URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(format!(
                "`{s}`: scheme must be http or https, not `{other}`"
            ));
        }
        None => {
            return Err(format!(
                "`{s}` must be an absolute URL starting with https://"
            ));
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("`{s}` has no host"));
    };
    if authority.as_str().contains('@') {
        return Err("must not contain credentials (user:password@); use client_secret".to_owned());
    }
    if authority.host().is_empty() {
        return Err(format!("`{s}` has no host"));
    }
    Ok(uri)
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<_> = names.map(|n| format!("`{n}`")).collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

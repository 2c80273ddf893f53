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
    pub token: TokenSettings,
    pub upstream: UpstreamSettings,
    pub server: ServerSettings,
    /// Things that are allowed but probably unintended (logged at start-up).
    pub warnings: Vec<String>,
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
    pub client: Arc<Client>,
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
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            header_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
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
    client: String,
}

impl Config {
    /// Reads, expands and validates `path` using the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, &ProcessEnv)
    }

    pub fn load_with_env(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        Self::from_yaml(&text, base_dir, env)
    }

    /// Parses a YAML document. Relative `client_secret_file` paths resolve against
    /// `base_dir` (the config file's directory).
    pub fn from_yaml(text: &str, base_dir: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let mut tree: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        let mut errors = Vec::new();
        expand_tree(&mut tree, &mut String::new(), env, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
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
        raw.validate(base_dir)
    }

    /// The client an integration uses, by name.
    pub fn client(&self, name: &str) -> Option<&Arc<Client>> {
        self.clients.get(name)
    }
}

/// Expands `${VAR}` in every string scalar of the tree (not in mapping keys).
fn expand_tree(
    value: &mut serde_yaml_ng::Value,
    path: &mut String,
    env: &dyn Env,
    errors: &mut Vec<FieldError>,
) {
    use serde_yaml_ng::Value;
    match value {
        Value::String(s) => match env::expand(s, env) {
            Ok(Some(expanded)) => *s = expanded,
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
                expand_tree(item, path, env, errors);
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
                expand_tree(v, path, env, errors);
                path.truncate(len);
            }
        }
        Value::Tagged(t) => expand_tree(&mut t.value, path, env, errors),
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
    fn validate(self, base_dir: &Path) -> Result<Config, ConfigError> {
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
            if let Some(client) = raw.validate(&name, &instances, base_dir, &mut v) {
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
            let Some(integration) = raw.validate(&field, &clients, &declared_clients, &mut v)
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

        if !v.errors.is_empty() {
            return Err(ConfigError::Invalid(v.errors));
        }
        Ok(Config {
            listen: self.listen,
            admin_listen: self.admin_listen,
            instances,
            clients,
            integrations,
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
        clients: &BTreeMap<String, Arc<Client>>,
        declared_clients: &[String],
        v: &mut Validator,
    ) -> Option<Integration> {
        if self.name.trim().is_empty() {
            v.error(format!("{field}.name"), "must not be empty");
        }
        let client = clients.get(&self.client).cloned();
        // A client that is declared but invalid has its own error already.
        if client.is_none() && !declared_clients.contains(&self.client) {
            v.error(
                format!("{field}.client"),
                format!(
                    "client `{}` is not defined under `clients` (defined: {})",
                    self.client,
                    list(declared_clients.iter())
                ),
            );
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
        Some(Integration {
            name: self.name.into(),
            fingerprint: fingerprint?,
            client: client?,
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

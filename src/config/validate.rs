//! Raw file → validated [`Config`]: every rule, each family in its own small function.
//!
//! Validation collects every problem it finds (each named by its field path) instead
//! of stopping at the first, and produces the types of [`super::model`], which carry
//! what was checked so nothing downstream checks it again.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Scheme;

use super::error::FieldError;
use super::model::{Client, Config, Forwarding, Instance, Integration, Percent, Plan, RateLimit};
use super::raw::{
    AuditSettings, BearerRequests, Mode, RawClient, RawConfig, RawForwarding, RawInstance,
    RawIntegration, RawRateLimit, TlsSettings, UnknownKeys,
};
use super::secret::Secret;
use super::values::{is_loopback, list, parse_http_url};
use crate::keys::Fingerprint;

/// Errors and warnings found so far, and the names the file declares.
struct Findings {
    errors: Vec<FieldError>,
    warnings: Vec<String>,
    /// Instance and client names as written, valid or not: a reference to a declared
    /// but invalid one is not reported again (its own error says what is wrong).
    declared_instances: Vec<String>,
    declared_clients: Vec<String>,
}

impl Findings {
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// The instance `name` referenced at `field`; an error there when none is declared.
    fn instance(
        &mut self,
        instances: &BTreeMap<String, Arc<Instance>>,
        name: &str,
        field: impl Into<String>,
    ) -> Option<Arc<Instance>> {
        self.reference(instances, Section::Instances, name, field)
    }

    /// The client `name` referenced at `field`; an error there when none is declared.
    fn client(
        &mut self,
        clients: &BTreeMap<String, Arc<Client>>,
        name: &str,
        field: impl Into<String>,
    ) -> Option<Arc<Client>> {
        self.reference(clients, Section::Clients, name, field)
    }

    /// `name` in `valid`; when absent, an error at `field` unless `section` declares it
    /// (declared but invalid: its own error says what is wrong).
    fn reference<T>(
        &mut self,
        valid: &BTreeMap<String, Arc<T>>,
        section: Section,
        name: &str,
        field: impl Into<String>,
    ) -> Option<Arc<T>> {
        let found = valid.get(name).cloned();
        let (declared, noun, key) = match section {
            Section::Instances => (&self.declared_instances, "instance", "instances"),
            Section::Clients => (&self.declared_clients, "client", "clients"),
        };
        if found.is_none() && !declared.iter().any(|n| n == name) {
            let defined = list(declared.iter());
            self.error(
                field,
                format!("{noun} `{name}` is not defined under `{key}` (defined: {defined})"),
            );
        }
        found
    }
}

/// A section of the file whose entries others refer to by name.
#[derive(Clone, Copy)]
enum Section {
    Instances,
    Clients,
}

/// Validates `raw`. Relative paths resolve against `base_dir`; with `secrets: false`
/// secrets are neither required nor read (for `keybridge audit`).
pub(super) fn validate(
    raw: RawConfig,
    base_dir: &Path,
    secrets: bool,
) -> Result<Config, Vec<FieldError>> {
    let mut v = Findings {
        errors: Vec::new(),
        warnings: Vec::new(),
        declared_instances: raw.instances.keys().cloned().collect(),
        declared_clients: raw.clients.keys().cloned().collect(),
    };
    settings(&raw, secrets, &mut v);

    let mut instances = BTreeMap::new();
    for (name, raw) in raw.instances {
        if let Some(instance) = instance(raw, &name, &mut v) {
            instances.insert(name, Arc::new(instance));
        }
    }
    let mut clients = BTreeMap::new();
    for (name, raw) in raw.clients {
        if let Some(client) = client(raw, &name, &instances, base_dir, secrets, &mut v) {
            clients.insert(name, Arc::new(client));
        }
    }
    let integrations = integrations(raw.integrations, &instances, &clients, &mut v);
    let default_instance = default_instance(
        raw.default_instance.as_deref(),
        raw.unknown_keys,
        raw.bearer_requests,
        &instances,
        &mut v,
    );
    if let Some(tls) = &raw.tls {
        tls_files(tls, base_dir, &mut v);
    }
    let forwarding = forwarding(&raw.forwarding, &mut v);
    let replica = replica(raw.fleet.replica.as_deref(), &mut v);
    if let Some(url) = raw.audit.postgres_url.as_ref().filter(|_| secrets) {
        let text = url.expose();
        let authority = text.split_once("://").map_or("", |(_, rest)| rest);
        let authority = authority.split(['/', '?']).next().unwrap_or_default();
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        if !host.is_empty() && !is_loopback(host) && !text.contains("sslmode=require") {
            v.warnings.push(format!(
                "audit.postgres_url: {host} is not on this host and the URL does not say ?sslmode=require: the audit and the database password cross the network unencrypted"
            ));
        }
        url_shape(
            "audit.postgres_url",
            url,
            &["postgres://", "postgresql://"],
            "postgres://user:password@host:5432/dbname",
            &mut v,
        );
    }
    if let Some(url) = raw.fleet.redis_url.as_ref().filter(|_| secrets)
        && url.expose().starts_with("rediss://")
    {
        v.error(
            "fleet.redis_url",
            "TLS to Redis (rediss://) is not supported yet: use redis:// on a private network",
        );
    } else if let Some(url) = raw.fleet.redis_url.as_ref().filter(|_| secrets) {
        url_shape(
            "fleet.redis_url",
            url,
            &["redis://", "rediss://"],
            "redis://:password@host:6379/0",
            &mut v,
        );
    }
    let prefix = &raw.fleet.redis_prefix;
    if prefix.is_empty()
        || prefix.len() > 64
        || prefix.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        v.error("fleet.redis_prefix", "1 to 64 characters without spaces");
    }
    if !(1..=1000).contains(&raw.fleet.expected_replicas) {
        v.error(
            "fleet.expected_replicas",
            format!(
                "must be between 1 and 1000 (got {})",
                raw.fleet.expected_replicas
            ),
        );
    }

    if !v.errors.is_empty() {
        return Err(v.errors);
    }
    Ok(Config {
        listen: raw.listen,
        admin_listen: raw.admin_listen,
        instances,
        clients,
        integrations,
        unknown_keys: raw.unknown_keys,
        bearer_requests: raw.bearer_requests,
        default_instance,
        forwarding,
        cutover: raw.cutover,
        audit: AuditSettings {
            // Relative to the config file, as every other file it names.
            postgres_ca_file: raw
                .audit
                .postgres_ca_file
                .as_ref()
                .map(|p| base_dir.join(p)),
            ..raw.audit
        },
        tls: raw.tls.map(|t| TlsSettings {
            cert: base_dir.join(t.cert),
            key: base_dir.join(t.key),
        }),
        admin_token: raw.admin_token.filter(|t| !t.is_empty()),
        admin_hosts: ["localhost", "127.0.0.1", "[::1]"]
            .into_iter()
            .map(str::to_owned)
            .chain(raw.admin_hosts.iter().map(|h| h.to_ascii_lowercase()))
            .collect(),
        token: raw.token,
        upstream: raw.upstream,
        server: raw.server,
        replica,
        fleet: raw.fleet,
        warnings: v.warnings,
    })
}

/// Listener, timing and limit settings.
fn settings(raw: &RawConfig, secrets: bool, v: &mut Findings) {
    if raw.listen == raw.admin_listen && raw.listen.port() != 0 {
        v.error("admin_listen", "must differ from `listen`");
    }
    if raw.instances.is_empty() {
        v.error("instances", "define at least one Coupa instance");
    }
    durations(raw, v);
    if let Some(token) = raw.admin_token.as_ref().filter(|_| secrets)
        && unbraced_variable(token.expose()).is_some()
    {
        v.error("admin_token", unbraced_hint(token.expose()));
    }
    if secrets
        && raw
            .admin_token
            .as_ref()
            .is_some_and(|t| t.expose().len() < 16)
    {
        v.error(
            "admin_token",
            "must be at least 16 characters (it guards /reload and the audit)",
        );
    }
    let no_token = raw.admin_token.as_ref().is_none_or(|t| t.is_empty());
    if secrets && no_token && !raw.admin_listen.ip().is_loopback() {
        v.error(
            "admin_listen",
            format!(
                "{} is reachable beyond this host, so `admin_token` must be set (16+ characters, usually ${{VAR}}): the audit, metrics and POST /reload would answer anyone",
                raw.admin_listen
            ),
        );
    }
    let srv = &raw.server;
    if srv.max_connections == 0
        || srv.max_in_flight == 0
        || srv.max_connections_per_ip == 0
        || srv.max_in_flight_per_ip == Some(0)
    {
        v.error(
            "server",
            "max_connections, max_connections_per_ip, max_in_flight and max_in_flight_per_ip must be at least 1",
        );
    }
    if raw.cutover.shadow_max_per_second == 0 {
        v.error("cutover.shadow_max_per_second", "must be at least 1");
    }
}

/// `NAME` when a secret is exactly `$NAME`: an environment variable written without
/// braces, which would otherwise be sent to Coupa literally (and fail as invalid_client).
fn unbraced_variable(value: &str) -> Option<&str> {
    let name = value.strip_prefix('$')?;
    let mut chars = name.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic() || first == '_')
        .then_some(())
        .filter(|()| chars.all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .map(|()| name)
}

fn unbraced_hint(value: &str) -> String {
    let name = unbraced_variable(value).unwrap_or_default();
    format!(
        "`${name}` is not expanded: write `${{{name}}}` to read the environment variable (a secret that really is `${name}` can come from a file: client_secret_file)"
    )
}

/// Every duration setting with its range (inclusive), so no duration arithmetic later
/// can overflow and no timer can be set past what tokio or hyper accept.
fn durations(raw: &RawConfig, v: &mut Findings) {
    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);
    const MIN: Duration = Duration::from_secs(60);
    const H: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(24 * 3600);
    let (t, u, srv, a) = (&raw.token, &raw.upstream, &raw.server, &raw.audit);
    let ranges: [(&str, Duration, Duration, Duration); 17] = [
        ("token.settle_delay", t.settle_delay, Duration::ZERO, MIN),
        (
            "token.refresh_before_expiry",
            t.refresh_before_expiry,
            30 * S,
            DAY,
        ),
        ("token.request_timeout", t.request_timeout, MS, 5 * MIN),
        ("token.max_retry_backoff", t.max_retry_backoff, S, H),
        ("token.min_refetch_interval", t.min_refetch_interval, S, H),
        ("upstream.connect_timeout", u.connect_timeout, MS, 5 * MIN),
        ("upstream.response_timeout", u.response_timeout, MS, DAY),
        ("upstream.read_timeout", u.read_timeout, MS, H),
        ("upstream.pool_idle_timeout", u.pool_idle_timeout, S, H),
        (
            "server.header_read_timeout",
            srv.header_read_timeout,
            MS,
            10 * MIN,
        ),
        ("server.idle_timeout", srv.idle_timeout, S, H),
        (
            "server.shutdown_grace",
            srv.shutdown_grace,
            Duration::ZERO,
            H,
        ),
        ("server.body_read_timeout", srv.body_read_timeout, MS, H),
        ("server.send_timeout", srv.send_timeout, MS, H),
        ("audit.flush_interval", a.flush_interval, 100 * MS, H),
        ("audit.ready_after", a.ready_after, S, 3650 * DAY),
        ("audit.retention", a.retention, DAY, 3650 * DAY),
    ];
    let mut in_range = true;
    for (field, value, min, max) in ranges {
        if value < min || value > max {
            in_range = false;
            let show = |d: Duration| humantime::format_duration(d).to_string();
            v.error(
                field,
                format!(
                    "must be between {} and {} (got {})",
                    show(min),
                    show(max),
                    show(value)
                ),
            );
        }
    }
    // Both are in range here, so the sum cannot overflow.
    if in_range && t.refresh_before_expiry < t.settle_delay + 30 * S {
        v.error(
            "token.refresh_before_expiry",
            "must be at least settle_delay + 30s, or a refreshed token could not settle before the old one expires",
        );
    }
}

fn instance(raw: RawInstance, name: &str, v: &mut Findings) -> Option<Instance> {
    let field = format!("instances.{name}");
    let base = match parse_http_url(&raw.base_url) {
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
    let token_url = match raw.token_url {
        Some(t) => match parse_http_url(&t) {
            Ok(uri) => uri,
            Err(e) => {
                v.error(format!("{field}.token_url"), e);
                return None;
            }
        },
        None => match format!("{scheme}://{authority}/oauth2/token").parse() {
            Ok(uri) => uri,
            Err(e) => {
                v.error(
                    format!("{field}.base_url"),
                    format!("cannot derive token_url: {e}"),
                );
                return None;
            }
        },
    };
    for uri in [&base, &token_url] {
        if uri.scheme() == Some(&Scheme::HTTP) && !is_loopback(uri.host().unwrap_or_default()) {
            v.warnings.push(format!(
                "{field}: {uri} uses plain http to a non-loopback host; tokens and secrets cross the network unencrypted"
            ));
        }
    }
    let rate_limit = rate_limit(&raw.rate_limit, &field, v);
    Some(Instance {
        name: name.into(),
        scheme,
        authority,
        token_url,
        rate_limit,
    })
}

/// `rate_limit`: each value in its range (an out-of-range one is reported and the
/// default taken, so the rest of the instance is still checked).
fn rate_limit(raw: &RawRateLimit, field: &str, v: &mut Findings) -> Option<RateLimit> {
    let (per_second, burst, max_wait) = raw.settings()?;
    let d = RateLimit::COUPA;
    let per_second = if per_second.is_finite() && (0.1..=100_000.0).contains(&per_second) {
        per_second
    } else {
        v.error(
            format!("{field}.rate_limit.per_second"),
            format!("must be between 0.1 and 100000 requests per second (got {per_second})"),
        );
        d.per_second
    };
    let burst = if (1..=100_000).contains(&burst) {
        burst
    } else {
        v.error(
            format!("{field}.rate_limit.burst"),
            format!("must be between 1 and 100000 (got {burst})"),
        );
        d.burst
    };
    let max_wait = if max_wait <= Duration::from_secs(600) {
        max_wait
    } else {
        v.error(
            format!("{field}.rate_limit.max_wait"),
            format!(
                "must be at most 10min (got {})",
                humantime::format_duration(max_wait)
            ),
        );
        d.max_wait
    };
    Some(RateLimit {
        per_second,
        burst,
        max_wait,
    })
}

fn client(
    raw: RawClient,
    name: &str,
    instances: &BTreeMap<String, Arc<Instance>>,
    base_dir: &Path,
    secrets: bool,
    v: &mut Findings,
) -> Option<Client> {
    let field = format!("clients.{name}");
    let instance = v.instance(instances, &raw.instance, format!("{field}.instance"));
    if raw.client_id.trim().is_empty() {
        v.error(format!("{field}.client_id"), "must not be empty");
    }
    let secret = client_secret(
        &field,
        raw.client_secret,
        raw.client_secret_file,
        base_dir,
        secrets,
        v,
    );
    for (i, scope) in raw.scopes.iter().enumerate() {
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
        client_id: raw.client_id,
        client_secret: secret?,
        scopes: raw.scopes,
        auth: raw.auth,
    })
}

/// Exactly one of `client_secret` and `client_secret_file`, non-empty.
fn client_secret(
    field: &str,
    inline: Option<Secret>,
    file: Option<std::path::PathBuf>,
    base_dir: &Path,
    secrets: bool,
    v: &mut Findings,
) -> Option<Secret> {
    match (inline, file) {
        (Some(_), None) | (None, Some(_)) if !secrets => Some(Secret::default()),
        (Some(_), Some(_)) => {
            v.error(
                field,
                "set either `client_secret` or `client_secret_file`, not both",
            );
            None
        }
        (None, None) => {
            v.error(field, "missing `client_secret` (or `client_secret_file`)");
            None
        }
        (Some(s), None) if s.is_empty() => {
            v.error(format!("{field}.client_secret"), "must not be empty");
            None
        }
        (Some(s), None) if unbraced_variable(s.expose()).is_some() => {
            v.error(format!("{field}.client_secret"), unbraced_hint(s.expose()));
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
    }
}

/// Each integration, plus the uniqueness of names and keys across them.
fn integrations(
    raws: Vec<RawIntegration>,
    instances: &BTreeMap<String, Arc<Instance>>,
    clients: &BTreeMap<String, Arc<Client>>,
    v: &mut Findings,
) -> Vec<Arc<Integration>> {
    let mut out = Vec::with_capacity(raws.len());
    let mut seen_names: HashMap<String, usize> = HashMap::new();
    let mut seen_keys: HashMap<Fingerprint, Arc<str>> = HashMap::new();
    for (i, raw) in raws.into_iter().enumerate() {
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
        let Some(integration) = integration(raw, &field, instances, clients, v) else {
            continue;
        };
        if let Some(first) =
            seen_keys.insert(integration.fingerprint, Arc::clone(&integration.name))
        {
            v.error(
                field,
                format!(
                    "duplicate API key (fingerprint {}): integration `{first}` already uses it",
                    integration.fingerprint.short()
                ),
            );
            continue;
        }
        out.push(Arc::new(integration));
    }
    out
}

fn integration(
    raw: RawIntegration,
    field: &str,
    instances: &BTreeMap<String, Arc<Instance>>,
    clients: &BTreeMap<String, Arc<Client>>,
    v: &mut Findings,
) -> Option<Integration> {
    if raw.name.trim().is_empty() {
        v.error(format!("{field}.name"), "must not be empty");
    }
    let plan = plan(&raw, field, instances, clients, v);
    let fingerprint = fingerprint(field, raw.api_key_sha256, raw.api_key, v);
    let share = match raw.share {
        None => 1,
        Some(n @ 1..=1000) => n,
        Some(n) => {
            v.error(
                format!("{field}.share"),
                format!("must be between 1 and 1000 (got {n})"),
            );
            1
        }
    };
    Some(Integration {
        name: raw.name.into(),
        fingerprint: fingerprint?,
        plan: plan?,
        share,
    })
}

/// The key's digest, from `api_key_sha256` or a raw `api_key` (hashed here, never kept).
fn fingerprint(
    field: &str,
    sha256: Option<String>,
    key: Option<Secret>,
    v: &mut Findings,
) -> Option<Fingerprint> {
    match (sha256, key) {
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
            } else if unbraced_variable(key.expose()).is_some() {
                v.error(format!("{field}.api_key"), unbraced_hint(key.expose()));
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
    }
}

/// The mode with what it needs: a client for `shadow`/`canary`/`oauth`, an instance for
/// `observe`, a percentage where one applies.
fn plan(
    raw: &RawIntegration,
    field: &str,
    instances: &BTreeMap<String, Arc<Instance>>,
    clients: &BTreeMap<String, Arc<Client>>,
    v: &mut Findings,
) -> Option<Plan> {
    let mut ok = true;
    let client = raw
        .client
        .as_ref()
        .map(|name| v.client(clients, name, format!("{field}.client")));
    let explicit_instance = raw
        .instance
        .as_ref()
        .map(|name| v.instance(instances, name, format!("{field}.instance")));
    // A name that did not resolve (undefined, or defined but invalid) is reported.
    if matches!(client, Some(None)) || matches!(explicit_instance, Some(None)) {
        ok = false;
    }
    let (client, explicit_instance) = (client.flatten(), explicit_instance.flatten());
    let mode = raw.mode;
    if raw.client.is_none() && matches!(mode, Mode::Shadow | Mode::Canary | Mode::Oauth) {
        ok = false;
        v.error(
            format!("{field}.client"),
            format!(
                "mode `{}` needs an OAuth client (only `observe` and `deny` work without one)",
                mode.as_str()
            ),
        );
    }
    if let (Some(c), Some(i)) = (&client, &explicit_instance)
        && !Arc::ptr_eq(&c.instance, i)
    {
        ok = false;
        v.error(
                format!("{field}.instance"),
                format!(
                    "`{}` differs from client `{}`'s instance `{}`; drop `instance:` (the client decides)",
                    i.name, c.name, c.instance.name
                ),
            );
    }
    if raw.client.is_none() && raw.instance.is_none() && mode == Mode::Observe {
        ok = false;
        v.error(
            field,
            "mode `observe` without a client needs `instance:` (where to forward)",
        );
    }
    let shadow = percent(
        field,
        "shadow_percent",
        raw.shadow_percent,
        mode == Mode::Shadow,
        Some(Percent::ALL),
        v,
    );
    let canary = percent(
        field,
        "canary_percent",
        raw.canary_percent,
        mode == Mode::Canary,
        None,
        v,
    );
    if !ok {
        return None;
    }
    let instance = client
        .as_ref()
        .map(|c| Arc::clone(&c.instance))
        .or(explicit_instance);
    Some(match mode {
        Mode::Observe => Plan::Observe {
            instance: instance?,
            client,
        },
        Mode::Shadow => Plan::Shadow {
            client: client?,
            percent: shadow?,
        },
        Mode::Canary => Plan::Canary {
            client: client?,
            percent: canary?,
        },
        Mode::Oauth => Plan::Oauth { client: client? },
        Mode::Deny => Plan::Deny { client, instance },
    })
}

/// A mode's percentage: only where the mode uses it; `default` when omitted (`None`:
/// required).
fn percent(
    field: &str,
    name: &str,
    given: Option<u8>,
    applies: bool,
    default: Option<Percent>,
    v: &mut Findings,
) -> Option<Percent> {
    match (applies, given) {
        (true, Some(p)) => {
            let percent = Percent::new(p);
            if percent.is_none() {
                v.error(
                    format!("{field}.{name}"),
                    format!("{p} is not a percentage (0-100)"),
                );
            }
            percent
        }
        (true, None) => {
            if default.is_none() {
                v.error(
                    format!("{field}.{name}"),
                    "`mode: canary` needs `canary_percent` (0-100)",
                );
            }
            default
        }
        (false, None) => None,
        (false, Some(_)) => {
            let mode = name.trim_end_matches("_percent");
            v.error(
                format!("{field}.{name}"),
                format!("only applies to `mode: {mode}`"),
            );
            None
        }
    }
}

/// Where unknown keys and bearer callers go.
fn default_instance(
    named: Option<&str>,
    unknown_keys: UnknownKeys,
    bearer_requests: BearerRequests,
    instances: &BTreeMap<String, Arc<Instance>>,
    v: &mut Findings,
) -> Option<Arc<Instance>> {
    let found = match named {
        Some(name) => v.instance(instances, name, "default_instance"),
        // With one instance there is no doubt where unmatched traffic belongs.
        None if instances.len() == 1 => instances.values().next().cloned(),
        None => None,
    };
    if found.is_none() && named.is_none() && instances.len() > 1 {
        if unknown_keys == UnknownKeys::Observe {
            v.error(
                "default_instance",
                "required with `unknown_keys: observe` when there are several instances",
            );
        }
        // Prod + test is the normal case: valid as written. Bearer callers are then
        // refused with a 401 that says what to set, and `check` warns.
        if bearer_requests == BearerRequests::Forward {
            v.warnings.push(
                "default_instance: not set with several instances, so callers sending their own bearer token (bearer_requests: forward) get 401 bearer_not_routed; set default_instance to forward them, or bearer_requests: reject to say so".to_owned(),
            );
        }
    }
    found
}

/// `fleet.replica`, or this host's name; a name that fits a label and a log line.
fn replica(named: Option<&str>, v: &mut Findings) -> Arc<str> {
    let valid = |n: &str| {
        (1..=63).contains(&n.len())
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    match named {
        Some(name) if valid(name) => name.into(),
        Some(_) => {
            v.error(
                "fleet.replica",
                "1 to 63 letters, digits, `.`, `_` or `-` (it names this replica in the audit)",
            );
            "keybridge".into()
        }
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| valid(h))
            .unwrap_or_else(|| "keybridge".to_owned())
            .into(),
    }
}

/// The shape of a service URL; the message never quotes it (it may hold a password).
fn url_shape(field: &str, url: &Secret, schemes: &[&str], example: &str, v: &mut Findings) {
    let text = url.expose();
    if text.is_empty() {
        v.error(field, "must not be empty");
    } else if unbraced_variable(text).is_some() {
        v.error(field, unbraced_hint(text));
    } else if !schemes.iter().any(|s| text.starts_with(s)) {
        v.error(field, format!("must be a URL like {example}"));
    }
}

/// Methods as `http::Method`s (never TRACE or CONNECT); prefixes that are clean paths.
fn forwarding(raw: &RawForwarding, v: &mut Findings) -> Forwarding {
    let mut methods = Vec::new();
    for (i, m) in raw.methods.iter().enumerate() {
        let field = format!("forwarding.methods[{i}]");
        match http::Method::from_bytes(m.as_bytes()) {
            Ok(method) if method == http::Method::TRACE || method == http::Method::CONNECT => {
                v.error(
                    field,
                    format!("{method} is never forwarded (it would echo or tunnel the bearer)"),
                );
            }
            Ok(method) if m.bytes().all(|b| b.is_ascii_uppercase()) => methods.push(method),
            _ => v.error(
                field,
                format!("`{m}` is not an HTTP method (upper case, e.g. GET)"),
            ),
        }
    }
    if methods.is_empty() && raw.methods.is_empty() {
        v.error("forwarding.methods", "list at least one method");
    }
    let mut path_prefixes = Vec::new();
    for (i, p) in raw.path_prefixes.iter().enumerate() {
        if !p.starts_with('/') || crate::paths::unsafe_path(p) {
            v.error(
                format!("forwarding.path_prefixes[{i}]"),
                format!("`{p}` must start with `/` and have no dot, backslash or empty segments"),
            );
        } else {
            path_prefixes.push(p.clone());
        }
    }
    if raw.path_prefixes.is_empty() {
        v.error(
            "forwarding.path_prefixes",
            "list at least one prefix (Coupa's API is `/api/`)",
        );
    }
    let names: Vec<&str> = methods.iter().map(http::Method::as_str).collect();
    // Methods are tokens (checked above), so the list is a valid header value; the
    // empty value is only reached by a config already refused for an invalid method.
    let allow = http::HeaderValue::from_str(&names.join(", "))
        .unwrap_or_else(|_| http::HeaderValue::from_static(""));
    Forwarding {
        methods,
        allow,
        path_prefixes,
    }
}

fn tls_files(tls: &TlsSettings, base_dir: &Path, v: &mut Findings) {
    for (field, path) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
        if !base_dir.join(path).is_file() {
            v.error(field, format!("{} is not a readable file", path.display()));
        }
    }
}

//! The validated configuration: what the rest of keybridge runs on.
//!
//! Everything [`super::validate`] guarantees is carried by the types, so nothing after
//! loading checks it again: an integration's [`Plan`] holds the client and instance its
//! mode needs (a `canary` without a client cannot be built), percentages are
//! [`Percent`]s, URLs are parsed, keys are digests and secrets are [`Secret`]s.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};

use super::raw::{
    AuditSettings, BearerRequests, ClientAuth, CutoverSettings, FleetSettings, Mode,
    ServerSettings, TlsSettings, TokenSettings, UnknownKeys, UpstreamSettings,
};
use super::secret::Secret;
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
    pub forwarding: Forwarding,
    pub cutover: CutoverSettings,
    pub audit: AuditSettings,
    /// TLS on the proxy listener (paths resolved against the config file's directory).
    pub tls: Option<TlsSettings>,
    /// Bearer token required on the admin listener (all but `/healthz`); required when
    /// the admin listener is not on loopback.
    pub admin_token: Option<Secret>,
    /// `Host` names (lower case, without port) accepted on a loopback admin listener.
    pub admin_hosts: Vec<String>,
    pub token: TokenSettings,
    pub upstream: UpstreamSettings,
    pub server: ServerSettings,
    /// This replica's name (`fleet.replica`, or the host name).
    pub replica: Arc<str>,
    pub fleet: FleetSettings,
    /// Things that are allowed but probably unintended (logged at start-up).
    pub warnings: Vec<String>,
}

/// What may be forwarded: checked for every request before a credential is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarding {
    pub methods: Vec<http::Method>,
    /// `methods` as the `Allow` header of a 405 (RFC 9110 §15.5.6), built once here.
    pub allow: http::HeaderValue,
    /// Each starts with `/` and has no dot or empty segment.
    pub path_prefixes: Vec<String>,
}

/// A Coupa instance: where API calls and token requests go.
#[derive(Debug)]
pub struct Instance {
    pub name: Arc<str>,
    pub scheme: Scheme,
    pub authority: Authority,
    pub token_url: Uri,
    /// The request budget all callers share (`None`: `rate_limit: off`).
    pub rate_limit: Option<RateLimit>,
}

/// An instance's request budget, validated: a positive finite rate, a burst of at least
/// one, a bounded wait.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Requests per second for the whole fleet.
    pub per_second: f64,
    /// Requests that may go at once.
    pub burst: u32,
    /// Longest a request waits for its turn, retries included.
    pub max_wait: std::time::Duration,
}

impl RateLimit {
    /// Coupa's documented limit (`shared/COUPA.md` §3.4): 25/s, burst 20.
    pub const COUPA: RateLimit = RateLimit {
        per_second: 25.0,
        burst: 20,
        max_wait: std::time::Duration::from_secs(10),
    };

    /// This replica's part when the fleet cannot coordinate: rate and burst divided by
    /// `replicas` (burst at least 1).
    pub fn share_of(self, replicas: u32) -> RateLimit {
        let n = replicas.max(1);
        RateLimit {
            per_second: self.per_second / f64::from(n),
            burst: (self.burst / n).max(1),
            max_wait: self.max_wait,
        }
    }
}

impl Instance {
    /// The upstream URI for a request: this instance's scheme and authority, the
    /// caller's path and query byte for byte. Nothing from the caller can choose the host.
    pub fn uri_for(&self, path_and_query: PathAndQuery) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path_and_query);
        #[expect(clippy::expect_used, reason = "the invariant is stated in the message")]
        Uri::from_parts(parts)
            .expect("from_parts only fails when scheme, authority or path is missing; all are set")
    }

    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
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
    pub plan: Plan,
    /// Weight in its instance's budget when callers queue (1–1000).
    pub share: u32,
}

/// What an integration's mode does, with everything that mode needs to do it.
///
/// An invalid plan cannot be built, so nothing downstream handles one: a `canary` (or
/// `shadow`, `oauth`) without a client does not compile,
///
/// ```compile_fail
/// use keybridge::config::{Percent, Plan};
/// let canary = Plan::Canary { percent: Percent::ALL };
/// ```
///
/// and neither does an `observe` with nowhere to forward:
///
/// ```compile_fail
/// use keybridge::config::Plan;
/// let observe = Plan::Observe { client: None };
/// ```
#[derive(Debug)]
pub enum Plan {
    /// Forward with the key to `instance`. A client may already be configured (the
    /// audit's scope advice compares against it) but is not used.
    Observe {
        instance: Arc<Instance>,
        client: Option<Arc<Client>>,
    },
    /// Forward with the key; replay `percent` of GET/HEAD with `client`'s token.
    Shadow {
        client: Arc<Client>,
        percent: Percent,
    },
    /// `percent` of requests with `client`'s token, falling back to the key on 401/403.
    Canary {
        client: Arc<Client>,
        percent: Percent,
    },
    /// Every request with `client`'s token.
    Oauth { client: Arc<Client> },
    /// Nothing forwarded. Client and instance are only kept for the audit report.
    Deny {
        client: Option<Arc<Client>>,
        instance: Option<Arc<Instance>>,
    },
}

impl Plan {
    pub fn mode(&self) -> Mode {
        match self {
            Plan::Observe { .. } => Mode::Observe,
            Plan::Shadow { .. } => Mode::Shadow,
            Plan::Canary { .. } => Mode::Canary,
            Plan::Oauth { .. } => Mode::Oauth,
            Plan::Deny { .. } => Mode::Deny,
        }
    }

    /// The OAuth client, where one is configured.
    pub fn client(&self) -> Option<&Arc<Client>> {
        match self {
            Plan::Shadow { client, .. } | Plan::Canary { client, .. } | Plan::Oauth { client } => {
                Some(client)
            }
            Plan::Observe { client, .. } | Plan::Deny { client, .. } => client.as_ref(),
        }
    }

    /// The instance requests go to (for `deny`: would go to), where one is known.
    pub fn instance(&self) -> Option<&Arc<Instance>> {
        match self {
            Plan::Observe { instance, .. } => Some(instance),
            Plan::Deny { instance, .. } => instance.as_ref(),
            Plan::Shadow { client, .. } | Plan::Canary { client, .. } | Plan::Oauth { client } => {
                Some(&client.instance)
            }
        }
    }

    /// `canary`'s share of requests on OAuth.
    pub fn canary_percent(&self) -> Option<Percent> {
        match self {
            Plan::Canary { percent, .. } => Some(*percent),
            _ => None,
        }
    }

    /// `shadow`'s share of GET/HEAD replayed with OAuth.
    pub fn shadow_percent(&self) -> Option<Percent> {
        match self {
            Plan::Shadow { percent, .. } => Some(*percent),
            _ => None,
        }
    }
}

/// A whole percentage, 0 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Percent(u8);

impl Percent {
    pub const ALL: Percent = Percent(100);

    /// `None` above 100.
    pub const fn new(p: u8) -> Option<Percent> {
        if p <= 100 { Some(Percent(p)) } else { None }
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl std::fmt::Display for Percent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}%", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_percentage_above_100_cannot_be_made() {
        assert_eq!(Percent::new(100), Some(Percent::ALL));
        assert_eq!(Percent::new(0).map(Percent::get), Some(0));
        assert_eq!(Percent::new(101), None);
        assert_eq!(Percent::new(255), None);
    }
}

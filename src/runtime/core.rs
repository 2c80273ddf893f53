//! The running configuration and how a new one replaces it (SIGHUP, `POST /reload`).
//!
//! [`Core`] owns what a reload swaps — the [`State`] every worker reads, the token
//! cache's background refreshers, the shadow rate limit when its rate changed — and what
//! it keeps: the audit, the metrics, and (in the workers) the upstream connection pools. Both the
//! server, which builds it, and the admin listener, which triggers reloads and reads
//! the current state, use it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::build::{self, Services};
use crate::audit::Audit;
use crate::bucket::RateLimiter;
use crate::config::{Config, ConfigError, Env};
use crate::metrics::Metrics;
use crate::proxy::State;
use crate::shaping::FleetBudget;
use crate::token::cache::Refreshers;
use crate::token::{TokenCache, TokenError};

/// The state a reload replaces, and the parts it keeps.
pub struct Core {
    state: Arc<ArcSwap<State>>,
    refreshers: Mutex<Refreshers>,
    pub audit: Arc<Audit>,
    pub metrics: Arc<Metrics>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    /// Caps on the admin endpoints that cost work: reloads, and audit reads.
    pub reload_limit: RateLimiter,
    pub audit_limit: RateLimiter,
    /// Where SIGHUP and `POST /reload` read the new configuration from.
    source: Option<ConfigSource>,
    /// Where the admin listener is really bound (a reload cannot move it).
    pub admin_bound: std::net::SocketAddr,
    /// The fleet's shared rate-limit schedule (`fleet.redis_url`; a restart changes it).
    fleet_budget: Option<Arc<FleetBudget>>,
}

/// The file (and environment for `${VAR}`) a reload reads.
pub struct ConfigSource {
    pub path: PathBuf,
    pub env: Arc<dyn Env + Send + Sync>,
}

/// Why a reload was refused; the old configuration keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("keybridge was started without a config file; nothing to reload from")]
    NoConfigFile,
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("client `{client}`: Coupa rejected the new credentials: {error}")]
    ClientRejected { client: Arc<str>, error: TokenError },
    #[error(
        "the admin listener is bound to {bound}, beyond this host, until a restart: admin_token cannot be removed by a reload"
    )]
    AdminTokenRequired { bound: std::net::SocketAddr },
}

/// What a reload applied.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadSummary {
    pub integrations: usize,
    pub clients: usize,
    /// Clients that were new or changed and got a token before the switch.
    pub new_clients: Vec<String>,
    /// Settings that changed but only take effect after a restart.
    pub restart_needed: Vec<String>,
}

impl Core {
    /// The state for `config`, built by [`build::state`], with the token refreshers
    /// started.
    pub fn new(
        config: Arc<Config>,
        tokens: TokenCache,
        audit: Arc<Audit>,
        metrics: Arc<Metrics>,
        source: Option<ConfigSource>,
        admin_bound: std::net::SocketAddr,
        fleet_budget: Option<Arc<FleetBudget>>,
    ) -> Core {
        let refreshers = tokens.spawn_refreshers();
        let services = Services {
            recorder: &audit.recorder,
            metrics: &metrics,
            fleet_budget: fleet_budget.as_ref(),
        };
        let state = build::state(config, tokens, &services, None);
        Core {
            state: Arc::new(ArcSwap::from_pointee(state)),
            refreshers: Mutex::new(refreshers),
            audit,
            metrics,
            reloading: tokio::sync::Mutex::new(()),
            reload_limit: RateLimiter::with_burst(2, 5),
            audit_limit: RateLimiter::with_burst(5, 20),
            source,
            admin_bound,
            fleet_budget,
        }
    }

    /// The state every worker reads (swapped on reload).
    pub fn state(&self) -> &Arc<ArcSwap<State>> {
        &self.state
    }

    /// The configuration currently serving.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.state.load().config)
    }

    /// The token cache currently serving.
    pub fn tokens(&self) -> TokenCache {
        self.state.load().tokens.clone()
    }

    /// Reloads from the file keybridge was started with.
    pub async fn reload_from_file(&self) -> Result<ReloadSummary, ReloadError> {
        let source = self.source.as_ref().ok_or(ReloadError::NoConfigFile)?;
        let parsing = crate::memory::PromptRelease::start();
        let config = Config::load_with_env(&source.path, &*source.env);
        drop(parsing);
        self.reload(config?).await
    }

    /// Switches to `next` without dropping a request: new or changed clients get a
    /// token first (a secret Coupa rejects aborts the reload; an unreachable token
    /// endpoint does not), unchanged clients keep theirs, and in-flight requests finish
    /// on the state they started with.
    pub async fn reload(&self, next: Config) -> Result<ReloadSummary, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        // Validation checked the *new* admin_listen, but the socket stays where it is.
        if !self.admin_bound.ip().is_loopback() && next.admin_token.is_none() {
            return Err(ReloadError::AdminTokenRequired {
                bound: self.admin_bound,
            });
        }
        let restart_needed = restart_needed(&self.config(), &next);
        let (tokens, fresh) = self
            .tokens()
            .reconfigure(next.clients.values(), next.token.clone())
            .await;
        for client in &fresh {
            match tokens.prefetch(client).await {
                Ok(()) => {}
                Err(error @ TokenError::Rejected { .. }) => {
                    return Err(ReloadError::ClientRejected {
                        client: Arc::clone(client),
                        error,
                    });
                }
                Err(error) => {
                    tracing::warn!(client = %client, %error, "reload: no token yet for this client; it will be retried");
                }
            }
        }
        self.audit.adopt(&next);
        let next = Arc::new(next);
        let refreshers = tokens.spawn_refreshers();
        let services = Services {
            recorder: &self.audit.recorder,
            metrics: &self.metrics,
            fleet_budget: self.fleet_budget.as_ref(),
        };
        let current = self.state.load_full();
        let state = build::state(Arc::clone(&next), tokens, &services, Some(&current));
        drop(current);
        self.state.store(Arc::new(state));
        // The old refreshers stop here, each at its next wait (never mid-refresh).
        *self.refreshers.lock().unwrap_or_else(|p| p.into_inner()) = refreshers;
        for setting in &restart_needed {
            tracing::warn!(setting = %setting, "reload: this setting changed but only applies after a restart");
        }
        let summary = ReloadSummary {
            integrations: next.integrations.len(),
            clients: next.clients.len(),
            new_clients: fresh.iter().map(|c| c.to_string()).collect(),
            restart_needed,
        };
        tracing::info!(integrations = summary.integrations, clients = summary.clients, new_clients = ?summary.new_clients, "configuration reloaded");
        crate::memory::release_freed();
        Ok(summary)
    }
}

/// Settings that a reload cannot apply to running listeners and pools.
fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |name: &str, changed: bool| {
        if changed {
            out.push(name.to_owned());
        }
    };
    check("listen", old.listen != new.listen);
    check("admin_listen", old.admin_listen != new.admin_listen);
    check(
        "server",
        format!("{:?}", old.server) != format!("{:?}", new.server),
    );
    check(
        "upstream",
        format!("{:?}", old.upstream) != format!("{:?}", new.upstream),
    );
    check(
        "audit",
        format!("{:?}", old.audit) != format!("{:?}", new.audit),
    );
    check("tls", format!("{:?}", old.tls) != format!("{:?}", new.tls));
    // Secrets print redacted, so they are compared by value: a new database or Redis
    // URL (or replica name) applies only after a restart, and must be said so.
    check(
        "audit.postgres_url",
        old.audit.postgres_url != new.audit.postgres_url,
    );
    check(
        "fleet.redis_url",
        old.fleet.redis_url != new.fleet.redis_url,
    );
    check(
        "fleet.redis_prefix",
        old.fleet.redis_prefix != new.fleet.redis_prefix,
    );
    check("fleet.replica", old.replica != new.replica);
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        let yaml =
            format!("instances: {{prod: {{base_url: 'https://acme.coupahost.com'}}}}\n{extra}");
        Config::from_yaml(&yaml, Path::new("."), &HashMap::new()).unwrap()
    }

    #[test]
    fn a_changed_store_url_or_replica_is_reported_as_needing_a_restart() {
        let base = config(
            "audit: {postgres_url: 'postgres://a:one@h/db'}\nfleet: {replica: kb-1, redis_url: 'redis://:one@r:6379/0'}\n",
        );
        let same = config(
            "audit: {postgres_url: 'postgres://a:one@h/db'}\nfleet: {replica: kb-1, redis_url: 'redis://:one@r:6379/0'}\n",
        );
        assert!(restart_needed(&base, &same).is_empty());
        let moved = config(
            "audit: {postgres_url: 'postgres://a:two@h/db'}\nfleet: {replica: kb-2, redis_url: 'redis://:two@r:6379/0'}\n",
        );
        let needed = restart_needed(&base, &moved);
        for setting in ["audit.postgres_url", "fleet.redis_url", "fleet.replica"] {
            assert!(
                needed.iter().any(|s| s == setting),
                "{setting} in {needed:?}"
            );
        }
        assert!(
            !needed
                .iter()
                .any(|s| s.contains("one") || s.contains("two")),
            "no secret"
        );
    }
}

//! One process (floor 5): listeners and lifecycle — bind, accept (HTTP/1.1 and
//! HTTP/2), serve the admin listener, reload, shut down gracefully.
//!
//! [`start`] opens the long-lived services (token cache with its refreshers, audit,
//! metrics, the fleet's budget) and builds the state requests run on through
//! [`build`] (which a reload goes through too, passing the state it replaces), keeps
//! both in a [`Core`] ([`core`]: what a reload swaps, what it keeps), binds the proxy
//! and admin ([`admin`]) listeners and returns a [`Running`] handle; tests use it
//! in-process on port 0, `main` until a signal.
//!
//! Threading: one acceptor ([`accept`]) hands proxy connections round-robin to
//! `server.workers` worker threads ([`worker`]), each running a single-threaded tokio
//! runtime with its own upstream connection pool. A request, its upstream connection
//! and every wakeup between them stay on one thread — the nginx worker model. (A
//! work-stealing runtime spent most of its time in cross-thread wakeups here; see
//! bench/README.md.) Everything else — admin, token refreshers, audit flushes — runs on
//! the runtime that called [`start`]. [`conn`] serves one connection, TLS or plain.

mod accept;
mod activity;
mod admin;
mod build;
mod conn;
mod core;
mod send_watch;
mod stack;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::audit::{Audit, StoreError};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::shaping::FleetBudget;
use crate::tls::TlsSetupError;
use crate::token::TokenCache;
use crate::token::shared::SharedTokens;
use crate::upstream;

pub use self::core::{ConfigSource, Core, ReloadError, ReloadSummary};
pub(crate) use conn::serve;
use conn::signalled;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "cannot listen on {addr} (set by `{setting}`; pick another address or stop what holds it)"
    )]
    Bind {
        setting: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error(transparent)]
    Audit(#[from] StoreError),
    #[error("cannot start worker thread: {0}")]
    Worker(std::io::Error),
    #[error("{0}")]
    Fleet(String),
    #[error(transparent)]
    ListenerTls(#[from] crate::tls::TlsError),
}

/// A started keybridge: its bound addresses and the means to stop it.
///
/// [`Running::shutdown`] stops gracefully: it waits for in-flight requests (up to the
/// grace period) and writes the last audit window. Dropping it without that still stops
/// serving — both listeners close and the workers drain in the background — so a test
/// or a caller that bails out early leaves nothing listening.
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub(crate) core: Arc<Core>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    workers: Vec<oneshot::Receiver<()>>,
    flusher: Option<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (up to the grace period), waits
    /// for both listeners to close and writes the last audit window.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for task in std::mem::take(&mut self.tasks) {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "listener task ended abnormally");
            }
        }
        for worker in std::mem::take(&mut self.workers) {
            // An error means the worker thread is already gone.
            let _ = worker.await;
        }
        if let Some(flusher) = self.flusher.take() {
            flusher.abort();
        }
        if let Err(e) = self.core.audit.flush().await {
            tracing::error!(error = %e, "final audit flush failed");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // After `shutdown` this is a no-op; otherwise listeners and workers stop.
        let _ = self.shutdown.send(true);
        if let Some(flusher) = self.flusher.take() {
            flusher.abort();
        }
    }
}

/// Builds state, binds listeners and starts serving (no config file: no reload).
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_with_file(config, None).await
}

/// As [`start`], remembering `source` for SIGHUP and `POST /reload`.
pub async fn start_with_file(
    config: Config,
    source: Option<ConfigSource>,
) -> Result<Running, StartError> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let shared = match &config.fleet.redis_url {
        Some(url) => Some(Arc::new(
            SharedTokens::new(url, &config.fleet.redis_prefix)
                .map_err(StartError::Fleet)?
                .reporting_to(Arc::clone(&metrics)),
        )),
        None => None,
    };
    let tokens = TokenCache::new(
        config.clients.values(),
        upstream::build_client(&config.upstream)?,
        config.token.clone(),
        Arc::clone(&metrics),
        shared,
    );
    let fleet_budget = match &config.fleet.redis_url {
        Some(url) => Some(Arc::new(
            FleetBudget::new(url, &config.fleet.redis_prefix).map_err(StartError::Fleet)?,
        )),
        None => None,
    };
    let audit = Arc::new(Audit::open(&config, Arc::clone(&metrics)).await?);
    let tls = crate::tls::acceptor(config.tls.as_ref())?;
    let proxy_listener = bind("listen", config.listen).await?;
    let admin_listener = bind("admin_listen", config.admin_listen).await?;
    let proxy_addr = local_addr("listen", &proxy_listener, config.listen)?;
    let admin_addr = local_addr("admin_listen", &admin_listener, config.admin_listen)?;
    let core = Arc::new(Core::new(
        Arc::clone(&config),
        tokens,
        Arc::clone(&audit),
        metrics,
        source,
        admin_addr,
        fleet_budget,
    ));

    let (shutdown, rx) = watch::channel(false);

    let worker_count = config.server.worker_count();
    let mut handoffs = Vec::with_capacity(worker_count);
    let mut workers = Vec::with_capacity(worker_count);
    let in_flight = stack::InFlight::new(
        config.server.max_in_flight,
        config.server.in_flight_per_ip(),
    );
    for index in 0..worker_count {
        let worker = worker::Worker {
            index,
            state: Arc::clone(core.state()),
            // Each worker gets its own upstream pool: connection tasks live on its thread.
            upstream: Arc::new(upstream::Pool::new(&config.upstream)?),
            tls: tls.clone(),
            in_flight: in_flight.clone(),
            settings: config.server.clone(),
        };
        let (handoff, done) = worker.spawn(rx.clone()).map_err(StartError::Worker)?;
        handoffs.push(handoff);
        workers.push(done);
    }
    let proxy_caps = accept::Caps {
        max: config.server.max_connections,
        per_ip: config.server.max_connections_per_ip,
        max_setting: "server.max_connections",
        per_ip_setting: "server.max_connections_per_ip",
    };
    let proxy_acceptor = accept::Acceptor::new(
        proxy_listener,
        "listen",
        proxy_caps,
        Some(core.metrics.accept_failures("listen")),
    );
    let proxy_task = tokio::spawn(accept::accept(
        proxy_acceptor,
        handoffs,
        signalled(rx.clone()),
    ));
    let flusher = audit.spawn_flusher(config.audit.flush_interval);
    let admin_core = Arc::clone(&core);
    let admin_acceptor = accept::Acceptor::new(
        admin_listener,
        "admin_listen",
        accept::Caps::ADMIN,
        Some(core.metrics.accept_failures("admin_listen")),
    );
    let admin_task = tokio::spawn(conn::serve_accepted(
        admin_acceptor,
        move |_peer| admin::service(Arc::clone(&admin_core)),
        config.server.clone(),
        Some(core.metrics.send_timeouts("admin_listen")),
        signalled(rx),
    ));
    tracing::info!(
        proxy = %proxy_addr,
        admin = %admin_addr,
        integrations = config.integrations.len(),
        clients = config.clients.len(),
        workers = worker_count,
        "keybridge listening"
    );
    Ok(Running {
        proxy_addr,
        admin_addr,
        core,
        shutdown,
        tasks: vec![proxy_task, admin_task],
        workers,
        flusher: Some(flusher),
    })
}

async fn bind(setting: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            setting,
            addr,
            source,
        })
}

fn local_addr(
    setting: &'static str,
    l: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, StartError> {
    l.local_addr().map_err(|source| StartError::Bind {
        setting,
        addr,
        source,
    })
}

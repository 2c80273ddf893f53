//! Listeners and lifecycle: bind, accept (HTTP/1.1 and HTTP/2), shut down gracefully.
//!
//! [`start`] builds the shared state once (token cache with its refreshers, key map,
//! audit, metrics), binds the proxy and admin listeners and returns a [`Running`]
//! handle; tests use it in-process on port 0, `main` until a signal.
//!
//! Threading: one acceptor hands proxy connections round-robin to `server.workers`
//! worker threads, each running a single-threaded tokio runtime with its own upstream
//! connection pool. A request, its upstream connection and every wakeup between them
//! stay on one thread — the nginx worker model. (A work-stealing runtime spent most of
//! its time in cross-thread wakeups here; see bench/README.md.) Everything else — admin,
//! token refreshers, audit flushes — runs on the runtime that called [`start`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use arc_swap::ArcSwap;

use crate::admin;
use crate::audit::Audit;
use crate::audit::store::StoreError;
use crate::config::{Config, ConfigError, ServerSettings};
use crate::cutover::RateLimiter;
use crate::metrics::Metrics;
use crate::proxy::{ProxyService, Shared};
use crate::stack;
use crate::token::cache::Refreshers;
use crate::token::{TokenCache, TokenError};
use crate::upstream::{self, HttpClient, TlsSetupError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error(transparent)]
    Audit(#[from] StoreError),
    #[error("cannot start worker thread: {0}")]
    Worker(std::io::Error),
    #[error(transparent)]
    ListenerTls(#[from] crate::tls::TlsError),
}

/// A started keybridge: its bound addresses and the means to stop it.
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub core: Arc<Core>,
    pub audit: Arc<Audit>,
    pub metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    workers: Vec<oneshot::Receiver<()>>,
    flusher: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (up to the grace period), waits
    /// for both listeners to close and writes the last audit window.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "listener task ended abnormally");
            }
        }
        for worker in self.workers {
            // An error means the worker thread is already gone.
            let _ = worker.await;
        }
        self.flusher.abort();
        if let Err(e) = self.audit.flush().await {
            tracing::error!(error = %e, "final audit flush failed");
        }
    }
}

/// One proxy worker's swappable state, and the upstream pool it keeps across reloads.
struct WorkerState {
    current: Arc<ArcSwap<Shared>>,
    http: HttpClient,
}

/// The state a reload replaces, and the parts it keeps (audit, metrics, pools).
pub struct Core {
    config: ArcSwap<Config>,
    tokens: ArcSwap<TokenCache>,
    refreshers: std::sync::Mutex<Refreshers>,
    workers: Vec<WorkerState>,
    audit: Arc<Audit>,
    metrics: Arc<Metrics>,
    shadow_limiter: Arc<RateLimiter>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    /// Where SIGHUP and `POST /reload` read the new configuration from.
    source: Option<ConfigSource>,
}

/// The file (and environment for `${VAR}`) a reload reads.
pub struct ConfigSource {
    pub path: PathBuf,
    pub env: Arc<dyn crate::config::Env + Send + Sync>,
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
    #[error(transparent)]
    Audit(#[from] StoreError),
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
    /// The configuration currently serving.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The token cache currently serving.
    pub fn tokens(&self) -> Arc<TokenCache> {
        self.tokens.load_full()
    }

    /// Reloads from the file keybridge was started with.
    pub async fn reload_from_file(&self) -> Result<ReloadSummary, ReloadError> {
        let source = self.source.as_ref().ok_or(ReloadError::NoConfigFile)?;
        let config = Config::load_with_env(&source.path, &*source.env)?;
        self.reload(config).await
    }

    /// Switches to `next` without dropping a request: new or changed clients get a
    /// token first (a secret Coupa rejects aborts the reload; an unreachable token
    /// endpoint does not), unchanged clients keep theirs, and in-flight requests finish
    /// on the state they started with.
    pub async fn reload(&self, next: Config) -> Result<ReloadSummary, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let old = self.config();
        let restart_needed = restart_needed(&old, &next);
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
        self.audit.adopt(&next).await?;
        let next = Arc::new(next);
        for worker in &self.workers {
            worker.current.store(Arc::new(Shared::new(
                Arc::clone(&next),
                tokens.clone(),
                worker.http.clone(),
                Arc::clone(&self.audit.recorder),
                Arc::clone(&self.metrics),
                Arc::clone(&self.shadow_limiter),
            )));
        }
        let refreshers = tokens.spawn_refreshers();
        self.tokens.store(Arc::new(tokens));
        self.config.store(Arc::clone(&next));
        // The old refreshers stop here (aborted on drop).
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
    out
}

/// Builds state, binds listeners and starts serving (no config file: no reload).
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_with_file(config, None).await
}

/// As [`start`], remembering `path` for SIGHUP and `POST /reload`.
pub async fn start_with_file(
    config: Config,
    source: Option<ConfigSource>,
) -> Result<Running, StartError> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let http = upstream::build_client(&config.upstream)?;
    let tokens = TokenCache::new(
        config.clients.values(),
        http.clone(),
        config.token.clone(),
        Arc::clone(&metrics),
    );
    let audit = Arc::new(Audit::open(&config)?);
    let refreshers = tokens.spawn_refreshers();
    let shadow_limiter = Arc::new(RateLimiter::new(config.cutover.shadow_max_per_second));

    let proxy_listener = bind(config.listen).await?;
    let admin_listener = bind(config.admin_listen).await?;
    let proxy_addr = local_addr(&proxy_listener, config.listen)?;
    let admin_addr = local_addr(&admin_listener, config.admin_listen)?;
    let (shutdown, rx) = watch::channel(false);

    let worker_count = config.server.worker_count();
    let mut senders = Vec::with_capacity(worker_count);
    let mut workers = Vec::with_capacity(worker_count);
    let mut states = Vec::with_capacity(worker_count);
    let tls = crate::tls::acceptor(config.tls.as_ref())?;
    let in_flight = stack::InFlight::new(config.server.max_in_flight);
    for index in 0..worker_count {
        // Each worker gets its own upstream pool: connection tasks live on its thread.
        let http = upstream::build_client(&config.upstream)?;
        let current = Arc::new(ArcSwap::from_pointee(Shared::new(
            Arc::clone(&config),
            tokens.clone(),
            http.clone(),
            Arc::clone(&audit.recorder),
            Arc::clone(&metrics),
            Arc::clone(&shadow_limiter),
        )));
        let (tx, done) = spawn_worker(
            index,
            Arc::clone(&current),
            tls.clone(),
            in_flight.clone(),
            config.server.clone(),
            rx.clone(),
        )
        .map_err(StartError::Worker)?;
        senders.push(tx);
        workers.push(done);
        states.push(WorkerState { current, http });
    }
    let core = Arc::new(Core {
        config: ArcSwap::new(Arc::clone(&config)),
        tokens: ArcSwap::from_pointee(tokens.clone()),
        refreshers: std::sync::Mutex::new(refreshers),
        workers: states,
        audit: Arc::clone(&audit),
        metrics: Arc::clone(&metrics),
        shadow_limiter,
        reloading: tokio::sync::Mutex::new(()),
        source,
    });
    let proxy_task = tokio::spawn(accept(
        proxy_listener,
        senders,
        config.server.max_connections,
        signalled(rx.clone()),
    ));
    let flusher = audit.spawn_flusher(config.audit.flush_interval);
    let admin_state = Arc::new(admin::AdminState {
        core: Arc::clone(&core),
        audit: Arc::clone(&audit),
        metrics: Arc::clone(&metrics),
    });
    let admin_task = tokio::spawn(serve(
        admin_listener,
        move |_peer| admin::service(Arc::clone(&admin_state)),
        config.server.clone(),
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
    crate::memory::release_freed(); // what parsing and building the config left behind
    Ok(Running {
        proxy_addr,
        admin_addr,
        core,
        audit,
        metrics,
        shutdown,
        tasks: vec![proxy_task, admin_task],
        workers,
        flusher,
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

fn local_addr(l: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, StartError> {
    l.local_addr()
        .map_err(|source| StartError::Bind { addr, source })
}

async fn signalled(mut rx: watch::Receiver<bool>) {
    // An Err means the sender is gone, which also means "stop".
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Counts an open caller connection until dropped.
struct OpenConnection(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

type Handoff = (std::net::TcpStream, SocketAddr, OpenConnection);

/// Answered (then closed) to connections beyond `server.max_connections`.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 86\r\nconnection: close\r\n\r\n{\"error\":\"overloaded\",\"message\":\"keybridge is at its connection limit; retry shortly\"}";

/// Accepts proxy connections and hands them to the workers in turn; beyond
/// `max_connections` open connections, answers 503 and closes.
async fn accept(
    listener: TcpListener,
    workers: Vec<mpsc::UnboundedSender<Handoff>>,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    use std::sync::atomic::Ordering;
    tokio::pin!(shutdown);
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut next = 0usize;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    if open.fetch_add(1, Ordering::AcqRel) >= max_connections {
                        open.fetch_sub(1, Ordering::AcqRel);
                        tracing::warn!(%peer, max_connections, "connection limit reached; refusing");
                        let _ = stream.try_write(OVERLOADED);
                        continue;
                    }
                    let guard = OpenConnection(Arc::clone(&open));
                    let Ok(std) = stream.into_std() else { continue };
                    let mut handoff = Some((std, peer, guard));
                    for _ in 0..workers.len() {
                        let worker = &workers[next % workers.len()];
                        next = next.wrapping_add(1);
                        match handoff.take().map(|h| worker.send(h)) {
                            Some(Err(mpsc::error::SendError(back))) => handoff = Some(back),
                            _ => break,
                        }
                    }
                    if handoff.is_some() {
                        tracing::error!(%peer, "no worker accepted the connection; dropping it");
                    }
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
}

/// Starts worker `index` on its own thread and single-threaded runtime.
fn spawn_worker(
    index: usize,
    current: Arc<ArcSwap<Shared>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    in_flight: stack::InFlight,
    settings: ServerSettings,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<(mpsc::UnboundedSender<Handoff>, oneshot::Receiver<()>)> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Handoff>();
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("keybridge-worker-{index}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(worker = index, error = %e, "cannot start worker runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                let builder = connection_builder(&settings);
                let graceful = GracefulShutdown::new();
                let stop = signalled(shutdown);
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        handoff = rx.recv() => {
                            let Some((std, peer, open)) = handoff else { break };
                            let Ok(stream) = TcpStream::from_std(std) else { continue };
                            let service = TowerToHyperService::new(stack::proxy_stack(
                                ProxyService::new(Arc::clone(&current), peer),
                                &in_flight,
                            ));
                            match &tls {
                                None => spawn_connection(&builder, &graceful, stream, peer, service, Some(open)),
                                Some(acceptor) => spawn_tls_connection(
                                    &builder,
                                    &graceful,
                                    (acceptor.clone(), settings.header_read_timeout),
                                    stream,
                                    peer,
                                    service,
                                    open,
                                ),
                            }
                        }
                        () = &mut stop => break,
                    }
                }
                drain(graceful, settings.shutdown_grace).await;
            });
            let _ = done_tx.send(());
        })?;
    Ok((tx, done_rx))
}

/// HTTP/1.1 + HTTP/2 (prior knowledge) with header-read timeout and keep-alive.
fn connection_builder(settings: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true)
        // Small responses: one flattened write beats a writev of head + body slices.
        .writev(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

fn spawn_connection<S, B>(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    peer: SocketAddr,
    service: S,
    open: Option<OpenConnection>,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let conn = graceful.watch(conn.into_owned());
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
        drop(open);
    });
}

/// As [`spawn_connection`], after a TLS handshake bounded by `handshake_timeout`.
fn spawn_tls_connection<S, B>(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    (acceptor, handshake_timeout): (tokio_rustls::TlsAcceptor, Duration),
    stream: TcpStream,
    peer: SocketAddr,
    service: S,
    open: OpenConnection,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = builder.clone();
    let watcher = graceful.watcher();
    tokio::spawn(async move {
        let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        let conn = builder.serve_connection(TokioIo::new(tls), service);
        if let Err(e) = watcher.watch(conn.into_owned()).await {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
        drop(open);
    });
}

/// Lets in-flight connections finish, up to `grace`.
async fn drain(graceful: GracefulShutdown, grace: Duration) {
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "shutdown grace period over; closing remaining connections");
        }
    }
}

/// Accepts connections on `listener` until `shutdown` resolves, then drains them (the
/// admin listener and the mock Coupa; the proxy uses [`accept`] and its workers).
pub async fn serve<F, S, B>(
    listener: TcpListener,
    make_service: F,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(SocketAddr) -> S,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = connection_builder(&settings);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    spawn_connection(&builder, &graceful, stream, peer, make_service(peer), None);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drain(graceful, settings.shutdown_grace).await;
}

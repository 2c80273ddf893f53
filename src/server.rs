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

use crate::admin;
use crate::audit::Audit;
use crate::audit::store::StoreError;
use crate::config::{Config, ServerSettings};
use crate::cutover::RateLimiter;
use crate::metrics::Metrics;
use crate::proxy::{Proxy, Shared};
use crate::stack;
use crate::token::TokenCache;
use crate::token::cache::Refreshers;
use crate::upstream::{self, TlsSetupError};

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
}

/// A started keybridge: its bound addresses and the means to stop it.
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub tokens: TokenCache,
    pub audit: Arc<Audit>,
    pub metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    workers: Vec<oneshot::Receiver<()>>,
    flusher: JoinHandle<()>,
    _refreshers: Refreshers,
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

/// Builds state, binds listeners and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
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
    for index in 0..worker_count {
        // Each worker gets its own upstream pool: connection tasks live on its thread.
        let shared = Arc::new(Shared::new(
            Arc::clone(&config),
            tokens.clone(),
            upstream::build_client(&config.upstream)?,
            Arc::clone(&audit.recorder),
            Arc::clone(&metrics),
            Arc::clone(&shadow_limiter),
        ));
        let (tx, done) = spawn_worker(index, shared, config.server.clone(), rx.clone())
            .map_err(StartError::Worker)?;
        senders.push(tx);
        workers.push(done);
    }
    let proxy_task = tokio::spawn(accept(proxy_listener, senders, signalled(rx.clone())));
    let flusher = audit.spawn_flusher(config.audit.flush_interval);
    let admin_state = Arc::new(admin::AdminState {
        tokens: tokens.clone(),
        audit: Arc::clone(&audit),
        metrics: Arc::clone(&metrics),
        config: Arc::clone(&config),
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
    Ok(Running {
        proxy_addr,
        admin_addr,
        tokens,
        audit,
        metrics,
        shutdown,
        tasks: vec![proxy_task, admin_task],
        workers,
        flusher,
        _refreshers: refreshers,
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

type Handoff = (std::net::TcpStream, SocketAddr);

/// Accepts proxy connections and hands them to the workers in turn.
async fn accept(
    listener: TcpListener,
    workers: Vec<mpsc::UnboundedSender<Handoff>>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut next = 0usize;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let Ok(std) = stream.into_std() else { continue };
                    let mut handoff = Some((std, peer));
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
    shared: Arc<Shared>,
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
                            let Some((std, peer)) = handoff else { break };
                            let Ok(stream) = TcpStream::from_std(std) else { continue };
                            let service = TowerToHyperService::new(stack::proxy_stack(Proxy::new(Arc::clone(&shared), peer)));
                            spawn_connection(&builder, &graceful, stream, peer, service);
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
        .keep_alive(true);
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
                    spawn_connection(&builder, &graceful, stream, peer, make_service(peer));
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

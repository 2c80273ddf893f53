//! Listeners and lifecycle: bind, accept (HTTP/1.1 and HTTP/2), shut down gracefully.
//!
//! [`start`] builds the shared state once (upstream pool, token cache with its
//! refreshers, key map), binds the proxy and admin listeners and returns a
//! [`Running`] handle; tests use it in-process on port 0, `main` until a signal.

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
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin;
use crate::audit::Audit;
use crate::audit::store::StoreError;
use crate::config::{Config, ServerSettings};
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
    let flusher = audit.spawn_flusher(config.audit.flush_interval);
    let shared = Arc::new(Shared::new(
        Arc::clone(&config),
        tokens.clone(),
        http,
        Arc::clone(&audit.recorder),
        Arc::clone(&metrics),
    ));

    let proxy_listener = bind(config.listen).await?;
    let admin_listener = bind(config.admin_listen).await?;
    let proxy_addr = local_addr(&proxy_listener, config.listen)?;
    let admin_addr = local_addr(&admin_listener, config.admin_listen)?;
    let (shutdown, rx) = watch::channel(false);

    let proxy_task = tokio::spawn(serve(
        proxy_listener,
        move |peer| {
            TowerToHyperService::new(stack::proxy_stack(Proxy::new(Arc::clone(&shared), peer)))
        },
        config.server.clone(),
        signalled(rx.clone()),
    ));
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

/// Accepts connections on `listener` until `shutdown` resolves, then drains them.
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
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let conn = builder.serve_connection(TokioIo::new(stream), make_service(peer));
                    let conn = graceful.watch(conn.into_owned());
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
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
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(settings.shutdown_grace) => {
            tracing::warn!(grace = ?settings.shutdown_grace, "shutdown grace period over; closing remaining connections");
        }
    }
}

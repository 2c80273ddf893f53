//! Serving one connection — plain or after a TLS handshake, through one function — and
//! the plain accept-and-serve loop of the admin listener and the mock Coupa.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::accept::OpenConnection;
use crate::config::ServerSettings;

/// HTTP/1.1 + HTTP/2 (prior knowledge) with header-read timeout and keep-alive.
pub(super) fn builder(settings: &ServerSettings) -> auto::Builder<TokioExecutor> {
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

/// Serves `stream` on a task watched by `graceful`: after a TLS handshake bounded by
/// its timeout when `tls` is given, as is otherwise. `open` is released when it ends.
pub(super) fn spawn<S, B>(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    tls: Option<(tokio_rustls::TlsAcceptor, Duration)>,
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
    let builder = builder.clone();
    let watcher = graceful.watcher();
    tokio::spawn(async move {
        let result = match tls {
            None => {
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                watcher.watch(conn.into_owned()).await
            }
            Some((acceptor, handshake_timeout)) => {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let conn = builder.serve_connection(TokioIo::new(tls), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        Ok(())
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        Ok(())
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
        drop(open);
    });
}

/// Lets in-flight connections finish, up to `grace`.
pub(super) async fn drain(graceful: GracefulShutdown, grace: Duration) {
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "shutdown grace period over; closing remaining connections");
        }
    }
}

/// Accepts connections on `listener` until `shutdown` resolves, then drains them (the
/// admin listener and the mock Coupa; the proxy uses the acceptor and its workers).
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
    let builder = builder(&settings);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    spawn(&builder, &graceful, stream, None, peer, make_service(peer), None);
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

/// Resolves once shutdown is signalled.
pub(super) async fn signalled(mut rx: watch::Receiver<bool>) {
    // An Err means the sender is gone, which also means "stop".
    let _ = rx.wait_for(|stop| *stop).await;
}

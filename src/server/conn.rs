//! Serving one connection — plain or after a TLS handshake, through one function — and
//! the plain accept-and-serve loop of the admin listener and the mock Coupa.

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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::accept::OpenConnection;
use super::activity::{Activity, Tracked};
use crate::config::ServerSettings;

/// How long a connection may do nothing (see [`super::activity`]).
#[derive(Clone, Copy)]
pub(super) struct Deadlines {
    pub header_read: Duration,
    pub idle: Duration,
}

impl Deadlines {
    pub(super) fn of(settings: &ServerSettings) -> Self {
        Deadlines {
            header_read: settings.header_read_timeout,
            idle: settings.idle_timeout,
        }
    }
}

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
/// the header timeout when `tls` is given, as is otherwise; closed when it does nothing
/// for longer than `deadlines` allow. `open` is released when it ends.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site per listener kind; each argument is distinct"
)]
pub(super) fn spawn<S, B>(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    deadlines: Deadlines,
    peer: SocketAddr,
    service: S,
    open: Option<OpenConnection>,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + Unpin + 'static,
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = builder.clone();
    let watcher = graceful.watcher();
    let activity = Activity::new();
    let service = Tracked::new(service, Arc::clone(&activity));
    tokio::spawn(async move {
        let result = match tls {
            None => {
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                until_idle(watcher.watch(conn.into_owned()), &activity, deadlines, peer).await
            }
            Some(acceptor) => {
                match tokio::time::timeout(deadlines.header_read, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let conn = builder.serve_connection(TokioIo::new(tls), service);
                        until_idle(watcher.watch(conn.into_owned()), &activity, deadlines, peer)
                            .await
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

/// Drives `conn` until it ends, or closes it (by dropping it) once `activity` has been
/// idle past its deadline.
async fn until_idle<F, E>(
    conn: F,
    activity: &Activity,
    deadlines: Deadlines,
    peer: SocketAddr,
) -> Result<(), E>
where
    F: std::future::Future<Output = Result<(), E>>,
{
    tokio::pin!(conn);
    // Requests do not wake this loop (that would cost every request a wake-up); it
    // looks again every quarter of the idle timeout, so an idle connection is closed
    // between 1 and 1.25 idle timeouts after its last request.
    let recheck = deadlines.idle / 4;
    loop {
        let deadline = activity.deadline(deadlines.header_read, deadlines.idle);
        let next_look = tokio::time::Instant::now() + recheck;
        let wake = deadline.map_or(next_look, |d| d.min(next_look));
        tokio::select! {
            result = &mut conn => return result,
            () = tokio::time::sleep_until(wake) => {
                let now = tokio::time::Instant::now();
                if activity
                    .deadline(deadlines.header_read, deadlines.idle)
                    .is_some_and(|d| d <= now)
                {
                    tracing::debug!(%peer, "closing a connection that did nothing in time");
                    return Ok(());
                }
            }
        }
    }
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
    S::Future: Send + Unpin + 'static,
    B: http_body::Body + Send + Unpin + 'static,
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
                    spawn(&builder, &graceful, stream, None, Deadlines::of(&settings), peer, make_service(peer), None);
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

//! Serving one connection — plain or after a TLS handshake, through one function — and
//! the plain accept-and-serve loop of the admin listener and the mock Coupa.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::accept::{Acceptor, Caps, OpenConnection};
use super::activity::{Activity, Tracked};
use super::send_watch::{Stall, StreamExecutor, Written};
use crate::config::ServerSettings;

/// How long a connection may do nothing (see [`super::activity`]).
#[derive(Clone, Copy)]
pub(super) struct Deadlines {
    pub header_read: Duration,
    pub idle: Duration,
    /// How long a response may wait on its caller (`server.send_timeout`).
    pub send: Duration,
}

impl Deadlines {
    pub(super) fn of(settings: &ServerSettings) -> Self {
        Deadlines {
            header_read: settings.header_read_timeout,
            idle: settings.idle_timeout,
            send: settings.send_timeout,
        }
    }
}

/// A service hyper serves connections with (the proxy stack, the admin service, the
/// mock Coupa), named once instead of at every function that serves.
pub trait Served<B>:
    hyper::service::Service<
        Request<Incoming>,
        Response = Response<B>,
        Error = Infallible,
        Future: Send + Unpin + 'static,
    > + Send
    + 'static
{
}

impl<S, B> Served<B> for S where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<B>,
            Error = Infallible,
            Future: Send + Unpin + 'static,
        > + Send
        + 'static
{
}

/// A response body hyper can send on a served connection.
pub trait ServedBody:
    http_body::Body<Data = bytes::Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + Unpin
    + 'static
{
}

impl<B> ServedBody for B where
    B: http_body::Body<Data = bytes::Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Unpin
        + 'static
{
}

/// How connections are served: HTTP/1.1, or HTTP/2 where the caller asks for it (ALPN
/// `h2` over TLS, the prior-knowledge preface in cleartext). Each connection goes
/// straight to hyper's HTTP/1 or HTTP/2 server, without hyper-util's `auto` layer:
/// deciding here needs no bytes taken from the socket, so HTTP/1 reads its first
/// request head in one go into a single 8 KiB buffer (behind `auto`'s rewind the
/// buffer doubled to 16 KiB on the first request, kept for the connection's life), and
/// a connection's task holds only the protocol it speaks (bench/README.md, issue 14).
pub(super) struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<StreamExecutor>,
    /// Counts connections closed by `server.send_timeout` (HTTP/2 streams: the
    /// executor counts).
    cut: Option<Counter>,
}

impl Protocols {
    /// HTTP/1.1 with header-read timeout and keep-alive; HTTP/2 with at most 256
    /// concurrent streams, pings every 30 s and each stream in a task of its own that
    /// resets it once its caller stops reading (`send_watch`). `cut` counts callers cut
    /// off by `server.send_timeout`.
    pub(super) fn of(settings: &ServerSettings, cut: Option<Counter>) -> Arc<Self> {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            .keep_alive(true)
            // Small responses: one flattened write beats a writev of head + body slices.
            .writev(false);
        let mut http2 = http2::Builder::new(StreamExecutor {
            send_timeout: settings.send_timeout,
            cut: cut.clone(),
        });
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(30)));
        Arc::new(Protocols { http1, http2, cut })
    }
}

/// The protocol a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// What an HTTP/2 client with prior knowledge sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long to wait before looking again at a cleartext connection whose first bytes
/// are so far only the start of the HTTP/2 preface: 5 ms, doubling up to 1 s, so a
/// real client whose preface arrives in pieces waits a few ms, and a connection that
/// sends "PRI" and stalls costs ~35 peeks before the header timeout (30 s) closes it,
/// not thousands.
const SNIFF_RETRY_FIRST: Duration = Duration::from_millis(5);
const SNIFF_RETRY_MAX: Duration = Duration::from_secs(1);

/// The protocol a cleartext caller speaks, told from its first bytes without taking
/// them from the socket: HTTP/2 once the whole preface is there, HTTP/1 at the first
/// byte that departs from it (an HTTP/1 request departs at its first or second byte).
/// `None` if the caller closed without sending anything. Callers bound it in time.
async fn sniff(stream: &TcpStream) -> std::io::Result<Option<Protocol>> {
    let mut first = [0_u8; H2_PREFACE.len()];
    let mut retry = SNIFF_RETRY_FIRST;
    loop {
        let n = stream.peek(&mut first).await?;
        let seen = &first[..n];
        if n == 0 {
            return Ok(None);
        }
        if !H2_PREFACE.starts_with(seen) {
            return Ok(Some(Protocol::Http1));
        }
        if n == H2_PREFACE.len() {
            return Ok(Some(Protocol::Http2));
        }
        // Only part of the preface has arrived; peeking again at once would spin.
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(SNIFF_RETRY_MAX);
    }
}

/// Serves `stream` on a task watched by `graceful`: after a TLS handshake bounded by
/// the header timeout when `tls` is given, as is otherwise; closed when it does nothing
/// for longer than `deadlines` allow. `open` is released when it ends.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site per listener kind; each argument is distinct"
)]
pub(super) fn spawn<S, B>(
    protocols: &Arc<Protocols>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    deadlines: Deadlines,
    peer: SocketAddr,
    service: S,
    open: Option<OpenConnection>,
) where
    S: Served<B>,
    B: ServedBody,
{
    let conn = Conn {
        protocols: Arc::clone(protocols),
        watcher: graceful.watcher(),
        activity: Activity::new(),
        deadlines,
        peer,
    };
    tokio::spawn(async move {
        let result = match tls {
            None => conn.plain(stream, service).await,
            // Boxed: the handshake's state would otherwise enlarge every connection's
            // task, cleartext ones included.
            Some(acceptor) => Box::pin(conn.tls(acceptor, stream, service)).await,
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
        drop(open);
    });
}

/// One accepted connection, before it is handed to hyper.
struct Conn {
    protocols: Arc<Protocols>,
    watcher: Watcher,
    activity: Arc<Activity>,
    deadlines: Deadlines,
    peer: SocketAddr,
}

impl Conn {
    /// The time left for the first request head (which the protocol decision and a TLS
    /// handshake come out of).
    fn head_time_left(&self) -> Duration {
        self.activity
            .deadline(self.deadlines.header_read, self.deadlines.idle)
            .map_or(self.deadlines.header_read, |due| {
                due.saturating_duration_since(tokio::time::Instant::now())
            })
    }

    async fn plain<S, B>(self, stream: TcpStream, service: S) -> Result<(), hyper::Error>
    where
        S: Served<B>,
        B: ServedBody,
    {
        let peer = self.peer;
        match tokio::time::timeout(self.head_time_left(), sniff(&stream)).await {
            Ok(Ok(Some(protocol))) => self.serve(protocol, stream, service).await,
            Ok(Ok(None)) => Ok(()),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "connection failed before its first request");
                Ok(())
            }
            Err(_) => {
                tracing::debug!(%peer, "closing a connection that sent no request in time");
                Ok(())
            }
        }
    }

    async fn tls<S, B>(
        self,
        acceptor: tokio_rustls::TlsAcceptor,
        stream: TcpStream,
        service: S,
    ) -> Result<(), hyper::Error>
    where
        S: Served<B>,
        B: ServedBody,
    {
        let peer = self.peer;
        match tokio::time::timeout(self.head_time_left(), acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                // HTTP/2 over TLS is chosen by ALPN (RFC 9113 §3.2); anything else is HTTP/1.
                let protocol = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    Protocol::Http2
                } else {
                    Protocol::Http1
                };
                self.serve(protocol, tls, service).await
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

    /// Serves `io` as `protocol` speaks it until the connection ends or idles out.
    async fn serve<I, S, B>(self, protocol: Protocol, io: I, service: S) -> Result<(), hyper::Error>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
        S: Served<B>,
        B: ServedBody,
    {
        let Conn {
            protocols,
            watcher,
            activity,
            deadlines,
            peer,
        } = self;
        let service = Tracked::new(service, Arc::clone(&activity));
        match protocol {
            Protocol::Http1 => {
                let io = TokioIo::new(Written::new(io, Arc::clone(&activity.sending)));
                let conn = protocols.http1.serve_connection(io, service);
                let cut = protocols.cut.as_ref();
                until_idle(watcher.watch(conn), &activity, deadlines, peer, cut).await
            }
            // Boxed: rarer, and larger than an HTTP/1 connection, which would otherwise
            // carry its size in every connection's task.
            Protocol::Http2 => {
                let conn = protocols.http2.serve_connection(TokioIo::new(io), service);
                // Its streams watch their own sending (send_watch::StreamExecutor).
                Box::pin(until_idle(
                    watcher.watch(conn),
                    &activity,
                    deadlines,
                    peer,
                    None,
                ))
                .await
            }
        }
    }
}

/// Drives `conn` until it ends, or closes it (by dropping it) once `activity` has been
/// idle past its deadline or, for HTTP/1 (`cut` given), once its caller has accepted
/// none of its response for `deadlines.send`.
async fn until_idle<F, E>(
    conn: F,
    activity: &Activity,
    deadlines: Deadlines,
    peer: SocketAddr,
    cut: Option<&Counter>,
) -> Result<(), E>
where
    F: std::future::Future<Output = Result<(), E>>,
{
    tokio::pin!(conn);
    // Requests do not wake this loop (that would cost every request a wake-up); it
    // looks again every quarter of the idle or send timeout, whichever is shorter, so an
    // idle connection is closed between 1 and 1.25 idle timeouts after its last
    // request, and a caller that stopped reading between 1 and 1.25 send timeouts after.
    let recheck = (deadlines.idle / 4).min(Stall::period(deadlines.send));
    let mut stall = Stall::new(deadlines.send);
    let watch_sending = cut.is_some();
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
                if watch_sending && stall.cut(&activity.sending, now) {
                    tracing::debug!(%peer, send_timeout = ?deadlines.send, "closing a connection whose caller accepts no response bytes");
                    if let Some(cut) = cut {
                        cut.inc();
                    }
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

/// Serves every connection on `listener` until `shutdown` resolves, then drains them:
/// the mock Coupa, which stands in for a server with limits of its own (the admin
/// listener is served by [`serve_accepted`], capped and counted).
pub async fn serve<F, S, B>(
    listener: TcpListener,
    make_service: F,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(SocketAddr) -> S,
    S: Served<B>,
    B: ServedBody,
{
    let acceptor = Acceptor::new(listener, "listener", Caps::NONE, None);
    serve_accepted(acceptor, make_service, settings, None, shutdown).await;
}

/// Serves what `acceptor` accepts until `shutdown` resolves, then drains it; `cut`
/// counts callers cut off by `server.send_timeout`.
pub(super) async fn serve_accepted<F, S, B>(
    mut acceptor: Acceptor,
    make_service: F,
    settings: ServerSettings,
    cut: Option<Counter>,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(SocketAddr) -> S,
    S: Served<B>,
    B: ServedBody,
{
    let protocols = Protocols::of(&settings, cut);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            (stream, peer, open) = acceptor.next() => {
                spawn(&protocols, &graceful, stream, None, Deadlines::of(&settings), peer, make_service(peer), Some(open));
            },
            () = &mut shutdown => break,
        }
    }
    drop(acceptor);
    drain(graceful, settings.shutdown_grace).await;
}

/// Resolves once shutdown is signalled.
pub(super) async fn signalled(mut rx: watch::Receiver<bool>) {
    // An Err means the sender is gone, which also means "stop".
    let _ = rx.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        reason = "tests fail by panicking"
    )]

    use tokio::io::AsyncWriteExt as _;

    use super::*;

    /// Connects to a fresh listener, writes `parts` with a pause between them, and
    /// returns what `sniff` decided on the server side, and the bytes still unread.
    async fn sniffed(parts: &[&[u8]]) -> (Option<Protocol>, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let parts: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            for part in parts {
                stream.write_all(&part).await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            stream.shutdown().await.unwrap();
        });
        let (stream, _) = listener.accept().await.unwrap();
        let protocol = tokio::time::timeout(Duration::from_secs(5), sniff(&stream))
            .await
            .expect("sniff decides within the test's bound")
            .unwrap();
        client.await.unwrap();
        let mut rest = Vec::new();
        let mut stream = stream;
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest)
            .await
            .unwrap();
        (protocol, rest)
    }

    #[tokio::test]
    async fn an_http1_request_is_told_apart_without_taking_its_bytes() {
        let head = b"GET /api/invoices HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            sniffed(&[head]).await,
            (Some(Protocol::Http1), head.to_vec())
        );
        // POST/PUT/PATCH share the preface's first byte and depart at the second.
        let post = b"POST /api/invoices HTTP/1.1\r\n";
        assert_eq!(sniffed(&[post]).await.0, Some(Protocol::Http1));
    }

    #[tokio::test]
    async fn the_http2_preface_is_recognised_even_when_it_arrives_in_pieces() {
        let (first, rest) = H2_PREFACE.split_at(5);
        let (protocol, unread) = sniffed(&[first, rest, b"frames"]).await;
        assert_eq!(protocol, Some(Protocol::Http2));
        assert_eq!(unread, [&H2_PREFACE[..], b"frames"].concat());
    }

    #[tokio::test]
    async fn a_start_of_the_preface_that_goes_astray_is_http1_and_silence_is_nothing() {
        assert_eq!(
            sniffed(&[b"PRI * HTTP", b"/1.1\r\n"]).await.0,
            Some(Protocol::Http1)
        );
        assert_eq!(sniffed(&[]).await, (None, Vec::new()));
    }
}

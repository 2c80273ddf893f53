//! One proxy worker's connections to Coupa, built on hyper's connection API directly.
//!
//! Per origin (scheme + authority of a configured instance): a stack of idle HTTP/1.1
//! connections, most recently used first, or one shared HTTP/2 connection when
//! `upstream.http2` is on and ALPN picked h2. A request takes an idle connection (or opens one), and the connection goes
//! back when Coupa's response body has been read to its end ([`PooledBody`]); a response
//! dropped early takes its connection with it, so a half-read one is never reused. A
//! body from which nothing arrives for `upstream.read_timeout` ends with an error.
//!
//! The pool belongs to one worker thread: its lock is never contended, the connection
//! tasks run on the same thread, and nothing on the request path hashes a pool key,
//! spawns a task or boxes a future (which hyper-util's generic client does per request).
//! A request that finds its pooled connection closed by Coupa before it was sent is
//! sent again on another one (hyper gives it back unsent); once sent, it is not.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::connect::{Connector, Fresh};
use super::service::Upstream;
use crate::body::{BoxError, UpstreamBody};
use crate::config::UpstreamSettings;
use crate::tls::{TlsSetupError, tls_client_config};

/// A worker's upstream connections (see the module docs).
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    connector: Connector,
    max_idle: usize,
    idle_timeout: Duration,
    read_timeout: Duration,
    origins: Mutex<Origins>,
}

#[derive(Default)]
struct Origins {
    /// Append-only (an index stays valid): one entry per origin ever used, i.e. per
    /// configured instance (a reload that changes `base_url` adds one).
    list: Vec<Origin>,
    /// Whether the idle reaper runs (started with the first connection, on the
    /// worker's runtime).
    reaping: bool,
}

struct Origin {
    https: bool,
    authority: Authority,
    /// `Host` for HTTP/1.1 requests.
    host: HeaderValue,
    /// Idle HTTP/1.1 connections, the most recently used last.
    idle: Vec<Idle>,
    /// The origin's HTTP/2 connection, once ALPN picked h2.
    h2: Option<http2::SendRequest<UpstreamBody>>,
}

struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    task: AbortHandle,
    since: Instant,
}

/// A connection taken for one request.
enum Taken {
    Http1 {
        sender: http1::SendRequest<UpstreamBody>,
        task: AbortHandle,
        reused: bool,
    },
    Http2(http2::SendRequest<UpstreamBody>),
}

/// Why the request has no origin the pool can reach.
#[derive(Debug, thiserror::Error)]
#[error("upstream request URI has no http(s) origin")]
struct NoOrigin;

impl Pool {
    /// An empty pool; fails only on a bad `upstream.ca_file`.
    pub fn new(settings: &UpstreamSettings) -> Result<Self, TlsSetupError> {
        let tls = tls_client_config("upstream.ca_file", settings.ca_file.as_deref())?;
        Ok(Pool {
            shared: Arc::new(Shared {
                connector: Connector::new(tls, settings.connect_timeout, settings.http2),
                max_idle: settings.pool_max_idle_per_host,
                idle_timeout: settings.pool_idle_timeout,
                read_timeout: settings.read_timeout,
                origins: Mutex::default(),
            }),
        })
    }

    /// Idle HTTP/1.1 connections held now, over all origins (for tests and the bench).
    pub fn idle_connections(&self) -> usize {
        self.shared.lock().list.iter().map(|o| o.idle.len()).sum()
    }
}

impl Upstream for Pool {
    type Body = PooledBody;

    async fn send(
        &self,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, BoxError> {
        let shared = &self.shared;
        let (origin, https, authority, host) = shared.origin_of(request.uri())?;
        loop {
            let taken = match shared.take(origin) {
                Some(taken) => taken,
                // Boxed: opening a connection (DNS, TCP, TLS, handshake) is a large
                // future, and every request's future would otherwise carry it inline.
                None => Box::pin(shared.open(origin, https, &authority)).await?,
            };
            match taken {
                Taken::Http1 {
                    mut sender,
                    task,
                    reused,
                } => {
                    to_origin_form(&mut request, &host);
                    if sender.ready().await.is_err() {
                        continue; // closed while idle: take another
                    }
                    match sender.try_send_request(request).await {
                        Ok(response) => {
                            let checkin = Checkin {
                                shared: Arc::clone(shared),
                                origin,
                                sender,
                                task,
                            };
                            return Ok(PooledBody::wrap(
                                response,
                                Some(checkin),
                                shared.read_timeout,
                            ));
                        }
                        Err(mut e) => match e.take_message() {
                            // Never written: Coupa had closed the idle connection.
                            Some(unsent) if reused => request = unsent,
                            _ => return Err(e.into_error().into()),
                        },
                    }
                }
                Taken::Http2(mut sender) => {
                    to_absolute_form(&mut request, https, &authority);
                    sender.ready().await?;
                    let response = sender.send_request(request).await?;
                    return Ok(PooledBody::wrap(response, None, shared.read_timeout));
                }
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Origins> {
        // A panic while holding this lock would be a bug in a few lines of list
        // handling; the data (idle handles) stays consistent either way.
        self.origins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The origin's index (added on first use), whether it is https, its authority and
    /// its `Host` value.
    fn origin_of(&self, uri: &Uri) -> Result<(usize, bool, Authority, HeaderValue), NoOrigin> {
        let https = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            _ => return Err(NoOrigin),
        };
        let authority = uri.authority().ok_or(NoOrigin)?;
        let mut origins = self.lock();
        if let Some((i, o)) = origins
            .list
            .iter()
            .enumerate()
            .find(|(_, o)| o.https == https && o.authority == *authority)
        {
            return Ok((i, https, o.authority.clone(), o.host.clone()));
        }
        let host = host_header(authority, https).ok_or(NoOrigin)?;
        origins.list.push(Origin {
            https,
            authority: authority.clone(),
            host: host.clone(),
            idle: Vec::new(),
            h2: None,
        });
        Ok((origins.list.len() - 1, https, authority.clone(), host))
    }

    /// The most recently used idle connection that is still open and not expired, or
    /// the origin's HTTP/2 connection.
    fn take(&self, origin: usize) -> Option<Taken> {
        let mut origins = self.lock();
        let o = origins.list.get_mut(origin)?;
        if let Some(h2) = &o.h2 {
            if !h2.is_closed() {
                return Some(Taken::Http2(h2.clone()));
            }
            o.h2 = None;
        }
        while let Some(idle) = o.idle.pop() {
            if !idle.sender.is_closed() && idle.since.elapsed() < self.idle_timeout {
                return Some(Taken::Http1 {
                    sender: idle.sender,
                    task: idle.task,
                    reused: true,
                });
            }
        }
        None
    }

    /// Opens a connection for `origin`; an HTTP/2 one is kept for every request after.
    async fn open(
        self: &Arc<Self>,
        origin: usize,
        https: bool,
        authority: &Authority,
    ) -> Result<Taken, BoxError> {
        let fresh = self.connector.connect(authority, https).await?;
        let start_reaper = {
            let mut origins = self.lock();
            let taken = match fresh {
                Fresh::Http1(sender, task) => Taken::Http1 {
                    sender,
                    task,
                    reused: false,
                },
                Fresh::Http2(sender) => {
                    if let Some(o) = origins.list.get_mut(origin) {
                        o.h2 = Some(sender.clone());
                    }
                    Taken::Http2(sender)
                }
            };
            let start = !std::mem::replace(&mut origins.reaping, true);
            (taken, start)
        };
        let (taken, start) = start_reaper;
        if start {
            tokio::spawn(reap(Arc::downgrade(self), self.idle_timeout));
        }
        Ok(taken)
    }

    /// Puts an HTTP/1.1 connection whose response has been read back on its stack.
    fn check_in(&self, origin: usize, sender: http1::SendRequest<UpstreamBody>, task: AbortHandle) {
        if sender.is_closed() {
            return;
        }
        let mut origins = self.lock();
        let max = self.max_idle;
        if let Some(o) = origins.list.get_mut(origin)
            && o.idle.len() < max
        {
            o.idle.push(Idle {
                sender,
                task,
                since: Instant::now(),
            });
        }
    }
}

/// Closes idle connections past `upstream.pool_idle_timeout` (the request path checks
/// too; this frees them when no request comes). Ends with the pool.
async fn reap(shared: Weak<Shared>, idle_timeout: Duration) {
    let every = (idle_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        tokio::time::sleep(every).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut origins = shared.lock();
        for o in &mut origins.list {
            o.idle
                .retain(|i| !i.sender.is_closed() && i.since.elapsed() < idle_timeout);
            if o.h2.as_ref().is_some_and(http2::SendRequest::is_closed) {
                o.h2 = None;
            }
        }
    }
}

/// `Host: authority`, without the scheme's default port.
fn host_header(authority: &Authority, https: bool) -> Option<HeaderValue> {
    let default = if https { 443 } else { 80 };
    let value = match authority.port_u16() {
        Some(port) if port != default => authority.as_str(),
        _ => authority.host(),
    };
    HeaderValue::from_str(value).ok()
}

/// HTTP/1.1 sends the path and query only, and the origin in `Host`.
fn to_origin_form(request: &mut Request<UpstreamBody>, host: &HeaderValue) {
    if request.uri().scheme().is_some() {
        let path = request.uri().path_and_query().cloned();
        *request.uri_mut() = path.map_or_else(|| Uri::from_static("/"), Uri::from);
    }
    if !request.headers().contains_key(http::header::HOST) {
        request
            .headers_mut()
            .insert(http::header::HOST, host.clone());
    }
}

/// HTTP/2 carries the origin in the URI (`:scheme`, `:authority`), not in `Host`.
fn to_absolute_form(request: &mut Request<UpstreamBody>, https: bool, authority: &Authority) {
    request.headers_mut().remove(http::header::HOST);
    if request.uri().scheme().is_none() {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(if https { Scheme::HTTPS } else { Scheme::HTTP });
        parts.authority = Some(authority.clone());
        parts.path_and_query = request.uri().path_and_query().cloned();
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
}

/// Gives an HTTP/1.1 connection back to its pool, or closes it.
struct Checkin {
    shared: Arc<Shared>,
    origin: usize,
    sender: http1::SendRequest<UpstreamBody>,
    task: AbortHandle,
}

impl Checkin {
    /// Closes the connection now. hyper would otherwise keep reading the rest of an
    /// abandoned response to reuse the connection, which nobody will (its handle is
    /// gone): from a Coupa that stopped sending, forever.
    fn close(self) {
        self.task.abort();
    }
}

/// Coupa's response body; its end returns the connection to the pool.
pub struct PooledBody {
    inner: Incoming,
    checkin: Option<Checkin>,
    read_timeout: Duration,
    /// Runs while Coupa sends nothing (created on the first wait only).
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the last poll found nothing from Coupa (the timer runs from the start of
    /// a wait, not from the last frame: a caller reading slowly is not Coupa stalling).
    waiting: bool,
}

/// The error a response body ends with when Coupa stops sending.
#[derive(Debug, thiserror::Error)]
#[error("no response bytes from Coupa for {0:?} (upstream.read_timeout)")]
pub struct ReadTimedOut(Duration);

impl PooledBody {
    fn wrap(
        response: Response<Incoming>,
        checkin: Option<Checkin>,
        read_timeout: Duration,
    ) -> Response<PooledBody> {
        response.map(|inner| {
            let mut body = PooledBody {
                inner,
                checkin,
                read_timeout,
                stall: None,
                waiting: false,
            };
            if body.inner.is_end_stream() {
                body.done();
            }
            body
        })
    }

    /// Closes the connection unless it went back to the pool (a response not read to
    /// its end leaves it unusable).
    fn abandon(&mut self) {
        if let Some(checkin) = self.checkin.take() {
            checkin.close();
        }
    }

    fn done(&mut self) {
        if let Some(Checkin {
            shared,
            origin,
            sender,
            task,
        }) = self.checkin.take()
        {
            shared.check_in(origin, sender, task);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                let after = this.read_timeout;
                let stall = match &mut this.stall {
                    Some(stall) if !this.waiting => {
                        stall.as_mut().reset(Instant::now() + after);
                        stall
                    }
                    Some(stall) => stall,
                    None => this.stall.insert(Box::pin(tokio::time::sleep(after))),
                };
                this.waiting = true;
                if stall.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.abandon();
                tracing::debug!(?after, "upstream response body stalled; ending it");
                return Poll::Ready(Some(Err(Box::new(ReadTimedOut(after)))));
            }
        };
        this.waiting = false;
        match &frame {
            None => this.done(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.done(),
            // An error: the connection is not reusable.
            Some(Err(_)) => this.abandon(),
            _ => {}
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response dropped before its end (the caller went away or was cut off) closes its
/// connection.
impl Drop for PooledBody {
    fn drop(&mut self) {
        self.abandon();
    }
}

//! What a connection is doing, so it can be closed when it does nothing: no complete
//! request head within `server.header_read_timeout` of being accepted (silent sockets,
//! half an HTTP/2 preface, a finished TLS handshake and then silence), or no request in
//! progress for `server.idle_timeout` (an idle HTTP/1 keep-alive connection, an HTTP/2
//! connection with no open stream). hyper's own header timeout starts only once it
//! has detected the protocol and applies to HTTP/1 only; this covers every protocol.
//!
//! [`Tracked`] wraps a connection's service: each request counts as in progress from
//! the moment its head is complete until its response body is done (or dropped), and
//! reports how its response body is being sent to a [`SendWatch`]: the HTTP/2 stream's
//! own, or the connection's for HTTP/1 (one response at a time).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use super::send_watch::SendWatch;

/// One connection's activity. Times are milliseconds since it was accepted.
pub(super) struct Activity {
    accepted: Instant,
    served: AtomicBool,
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
    /// The HTTP/1 response being sent (HTTP/2 streams have their own).
    pub(super) sending: Arc<SendWatch>,
}

impl Activity {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Activity {
            accepted: Instant::now(),
            served: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            sending: Arc::default(),
        })
    }

    fn touch(&self) {
        let ms = self.accepted.elapsed().as_millis();
        self.last_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// When the connection should be closed if nothing changes; `None` while a
    /// request is in progress (its own timeouts bound it).
    pub(super) fn deadline(&self, header_read: Duration, idle: Duration) -> Option<Instant> {
        if !self.served.load(Ordering::Acquire) {
            return Some(self.accepted + header_read);
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.accepted + last + idle)
    }
}

/// Marks a request in progress until dropped (with the response body).
struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's service, counting its requests in [`Activity`].
pub(super) struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub(super) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Tracked { inner, activity }
    }
}

impl<S, ReqB, B> hyper::service::Service<Request<ReqB>> for Tracked<S>
where
    S: hyper::service::Service<Request<ReqB>, Response = Response<B>>,
    S::Future: Unpin,
    B: Body,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: Request<ReqB>) -> Self::Future {
        // The clock is read once per request, when it ends (InProgress's drop): the
        // idle deadline only matters once nothing is in progress.
        self.activity.in_flight.fetch_add(1, Ordering::AcqRel);
        self.activity.served.store(true, Ordering::Release);
        TrackedFuture {
            inner: self.inner.call(req),
            guard: Some(InProgress(Arc::clone(&self.activity))),
        }
    }
}

pub(super) struct TrackedFuture<F> {
    inner: F,
    guard: Option<InProgress>,
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>> + Unpin,
    B: Body,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
        let guard = self.guard.take();
        Poll::Ready(result.map(|response| {
            response.map(|inner| {
                let watch = match (SendWatch::of_this_stream(), &guard) {
                    (Some(stream), _) => Some(stream),
                    (None, Some(guard)) => Some(Arc::clone(&guard.0.sending)),
                    (None, None) => None,
                };
                if let Some(watch) = &watch {
                    watch.start(inner.is_end_stream());
                }
                TrackedBody {
                    inner,
                    guard,
                    watch,
                    rest: Bytes::new(),
                }
            })
        }))
    }
}

/// A response body that keeps its request "in progress" until it is done, and tells
/// its [`SendWatch`] how it is being sent.
pub(super) struct TrackedBody<B> {
    inner: B,
    guard: Option<InProgress>,
    watch: Option<Arc<SendWatch>>,
    /// What is left of a large data frame, handed out [`PIECE`] bytes at a time.
    rest: Bytes,
}

/// The most one poll hands hyper. hyper polls a body again only once what it has is
/// (mostly) written, and chunks from Coupa reach hundreds of KiB when a caller reads
/// slowly: in pieces, a caller that reads at all — even 300 bytes a second — shows
/// progress to its [`SendWatch`] within `server.send_timeout`, and only one that reads
/// nothing is cut off.
const PIECE: usize = 16 * 1024;

impl<B> TrackedBody<B> {
    /// The next piece of `data`, keeping the rest for the next polls.
    fn piece(&mut self, mut data: Bytes) -> Bytes {
        if data.len() > PIECE {
            self.rest = data.split_off(PIECE);
        }
        data
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for TrackedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = if this.rest.is_empty() {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Poll::Ready(Some(Ok(Frame::data(this.piece(data))))),
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                },
                other => other,
            }
        } else {
            let rest = std::mem::take(&mut this.rest);
            Poll::Ready(Some(Ok(Frame::data(this.piece(rest)))))
        };
        let done = match &polled {
            Poll::Pending => None,
            // (hyper stops polling once a body says it has ended, so the last data
            // frame may be the last call.)
            Poll::Ready(frame) => Some(!matches!(frame, Some(Ok(_))) || this.is_end_stream()),
        };
        if let Some(watch) = &this.watch {
            watch.polled(done.map(|done| !done));
        }
        if done == Some(true) {
            // Done: the request no longer counts.
            this.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        hint.set_lower(hint.lower().saturating_add(rest));
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

impl<B> Drop for TrackedBody<B> {
    fn drop(&mut self) {
        if let Some(watch) = &self.watch {
            watch.finish();
        }
    }
}

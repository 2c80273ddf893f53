//! Request and response body types, in one leaf module both the proxy and the upstream
//! client use (it imports neither).
//!
//! - [`CallerBody`]: what a caller sends, aborted if it stalls, its trailers dropped
//!   ([`IdleTimeout`]).
//! - [`UpstreamBody`]: what goes to Coupa: the caller's body streamed, or one we hold.
//! - [`ResponseBody`]: what goes back: Coupa's body streamed, or our own JSON error.
//! - [`RequestBody`]: a caller body, buffered when a retry may need to send it again.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;

/// Errors of bodies and services we don't own.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a caller's body can be: hyper's `Incoming` from a socket, or any body alike
/// (a `Full` in the request path's in-process tests).
pub trait Inbound: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

impl<T> Inbound for T where T: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

/// A caller's request body, aborted if it stalls for `server.body_read_timeout`.
pub type CallerBody<B = Incoming> = IdleTimeout<B>;

/// Request bodies sent upstream: a caller's body streamed through, or one we built.
pub type UpstreamBody<B = Incoming> = Either<CallerBody<B>, Full<Bytes>>;

/// What callers get back: Coupa's body (`B`) streamed through, or our own error body.
pub type ResponseBody<B = Incoming> = Either<B, Full<Bytes>>;

/// A caller's body on its way upstream, held in memory when it may be sent twice.
///
/// A request may be retried (fresh token after a 401, key fallback after 401/403) only
/// if its whole body is held. Bodies with a `Content-Length` up to the limit are read
/// into memory first; larger or chunked bodies stream straight through and are never
/// replayed.
pub enum RequestBody<B = Incoming> {
    Empty,
    Buffered(Bytes),
    Streaming(Option<CallerBody<B>>),
}

impl<B: Inbound> RequestBody<B> {
    /// Streams without buffering (key-only routes).
    pub fn streaming(body: CallerBody<B>) -> Self {
        RequestBody::Streaming(Some(body))
    }

    /// Streams, or nothing to send for a body already at its end.
    pub fn unbuffered(body: CallerBody<B>) -> Self {
        if body.is_end_stream() {
            RequestBody::Empty
        } else {
            RequestBody::Streaming(Some(body))
        }
    }

    /// Buffers the body if it is known to be at most `limit` bytes.
    pub async fn replayable(body: CallerBody<B>, limit: u64) -> Result<Self, BoxError> {
        if body.is_end_stream() {
            return Ok(RequestBody::Empty);
        }
        match body.size_hint().exact() {
            Some(n) if n <= limit => Ok(RequestBody::Buffered(body.collect().await?.to_bytes())),
            _ => Ok(RequestBody::Streaming(Some(body))),
        }
    }

    /// Whether [`RequestBody::send_body`] can be called more than once.
    pub fn can_replay(&self) -> bool {
        !matches!(self, RequestBody::Streaming(_))
    }

    /// The body for the next send. A streaming body can be taken once; later calls
    /// get an empty body (callers check [`RequestBody::can_replay`] first).
    pub fn send_body(&mut self) -> UpstreamBody<B> {
        match self {
            RequestBody::Empty => Either::Right(Full::new(Bytes::new())),
            RequestBody::Buffered(b) => Either::Right(Full::new(b.clone())),
            RequestBody::Streaming(body) => match body.take() {
                Some(b) => Either::Left(b),
                None => Either::Right(Full::new(Bytes::new())),
            },
        }
    }
}

/// A request body that fails if the caller sends nothing for `timeout` (a slowloris
/// trickling its body would otherwise hold a request, and an upstream connection, open
/// indefinitely). No timer is created for bodies that never wait.
pub struct IdleTimeout<B> {
    inner: B,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        IdleTimeout {
            inner,
            timeout,
            sleep: None,
        }
    }
}

/// The error a stalled body ends with.
#[derive(Debug, thiserror::Error)]
#[error("request body idle for more than {0:?}")]
pub struct BodyIdle(Duration);

impl<B> Body for IdleTimeout<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        loop {
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => break,
            };
            if let Some(sleep) = this.sleep.as_mut() {
                sleep
                    .as_mut()
                    .reset(tokio::time::Instant::now() + this.timeout);
            }
            match frame {
                // A caller's trailers never go upstream: they could carry a key or a
                // second Authorization after our bearer (nothing in Coupa's API uses them).
                Some(Ok(frame)) if frame.is_trailers() => continue,
                frame => return Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            }
        }
        // Nothing yet: the idle timer runs (created on the first wait only).
        let timeout = this.timeout;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyIdle(timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_callers_trailers_are_dropped_and_its_data_kept() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-coupa-api-key", "k".parse().unwrap());
        let body =
            Full::new(Bytes::from_static(b"data")).with_trailers(std::future::ready(Some(Ok::<
                _,
                std::convert::Infallible,
            >(
                trailers,
            ))));
        let collected = IdleTimeout::new(body, Duration::from_secs(5))
            .collect()
            .await
            .unwrap();
        assert!(collected.trailers().is_none());
        assert_eq!(&collected.to_bytes()[..], b"data");
    }
}

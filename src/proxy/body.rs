//! Request bodies on the OAuth path: buffered when small enough to replay.
//!
//! A request may be retried (fresh token after a 401, key fallback after 401/403)
//! only if its whole body is held. Bodies with a `Content-Length` up to
//! `cutover.replay_body_limit` are read into memory first; larger or chunked bodies
//! stream straight through and are never replayed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::error::ProxyError;
use crate::upstream::{CallerBody, UpstreamBody};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full};

pub enum RequestBody {
    Empty,
    Buffered(Bytes),
    Streaming(Option<CallerBody>),
}

impl RequestBody {
    /// Streams without buffering (key-only routes).
    pub fn streaming(body: CallerBody) -> Self {
        RequestBody::Streaming(Some(body))
    }

    /// Buffers the body if it is known to be at most `limit` bytes.
    pub async fn replayable(body: CallerBody, limit: u64) -> Result<Self, ProxyError> {
        if body.is_end_stream() {
            return Ok(RequestBody::Empty);
        }
        match body.size_hint().exact() {
            Some(n) if n <= limit => {
                let bytes = body
                    .collect()
                    .await
                    .map_err(|e| ProxyError::ClientBody(e.to_string()))?
                    .to_bytes();
                Ok(RequestBody::Buffered(bytes))
            }
            _ => Ok(RequestBody::Streaming(Some(body))),
        }
    }

    /// Whether [`RequestBody::send_body`] can be called more than once.
    pub fn can_replay(&self) -> bool {
        !matches!(self, RequestBody::Streaming(_))
    }

    /// The body for the next send. A streaming body can be taken once; later calls
    /// get an empty body (callers check [`RequestBody::can_replay`] first).
    pub fn send_body(&mut self) -> UpstreamBody {
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
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(sleep) = this.sleep.as_mut() {
                    sleep
                        .as_mut()
                        .reset(tokio::time::Instant::now() + this.timeout);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyIdle(timeout))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

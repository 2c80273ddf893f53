//! Request bodies on the OAuth path: buffered when small enough to replay.
//!
//! A request may be retried (fresh token after a 401, key fallback after 401/403)
//! only if its whole body is held. Bodies with a `Content-Length` up to
//! `cutover.replay_body_limit` are read into memory first; larger or chunked bodies
//! stream straight through and are never replayed.

use bytes::Bytes;
use http_body::Body as _;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::upstream::UpstreamBody;

pub enum RequestBody {
    Empty,
    Buffered(Bytes),
    Streaming(Option<Incoming>),
}

impl RequestBody {
    /// Streams without buffering (key-only routes).
    pub fn streaming(body: Incoming) -> Self {
        RequestBody::Streaming(Some(body))
    }

    /// Buffers the body if it is known to be at most `limit` bytes.
    pub async fn replayable(body: Incoming, limit: u64) -> Result<Self, ProxyError> {
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

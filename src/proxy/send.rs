//! The one place a request leaves for Coupa: within the response timeout, timed for the
//! metrics, its failure blamed on whoever caused it.
//!
//! The upstream ([`Upstream`]) is the per-worker pooled client in production (called
//! directly: no clone per request) or any `tower::Service` wrapped in
//! [`crate::upstream::ServiceUpstream`] — a `service_fn` in tests of the request path that
//! need no socket.

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};

use super::error::ProxyError;
use super::state::State;
use crate::body::{BodyIdle, Inbound, UpstreamBody};
use crate::config::Instance;
use crate::upstream::Upstream;

/// Sends one request to `instance` within `upstream.response_timeout`.
pub(crate) async fn send<B: Inbound, U: Upstream<B>>(
    upstream: &U,
    state: &State,
    request: Request<UpstreamBody<B>>,
    instance: &Instance,
) -> Result<Response<U::Body>, ProxyError> {
    let limit = state.config.upstream.response_timeout;
    let started = Instant::now();
    let result = tokio::time::timeout(limit, upstream.send(request)).await;
    state.metrics.observe_upstream(started.elapsed());
    match result {
        Ok(Ok(response)) if ambiguous_framing(response.headers()) => {
            // RFC 9112 §6.3: a message with both may be a smuggling or splitting attempt
            // and ought to be handled as an error. Dropping the unread body also keeps
            // that connection out of the pool.
            Err(ProxyError::UpstreamBadFraming {
                instance: Arc::clone(&instance.name),
            })
        }
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) if caused_by::<BodyIdle>(&*e) => Err(ProxyError::ClientBodyTimeout),
        Ok(Err(e)) if caller_body_failed(&*e) => Err(ProxyError::ClientBody(e)),
        Ok(Err(source)) => Err(ProxyError::UpstreamUnreachable {
            instance: Arc::clone(&instance.name),
            source,
        }),
        Err(_) => Err(ProxyError::UpstreamTimeout {
            instance: Arc::clone(&instance.name),
            after: limit,
        }),
    }
}

/// True when `T` is somewhere in `e`'s source chain.
fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    sources(e).any(|err| err.is::<T>())
}

/// True when sending failed because the caller's body did (bad chunking, disconnect):
/// the caller's fault, not Coupa's.
fn caller_body_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    sources(e).any(|err| {
        err.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_user)
    })
}

fn sources<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |err| err.source())
}

/// True when a response carries both `Transfer-Encoding` and `Content-Length`.
fn ambiguous_framing(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING)
        && headers.contains_key(http::header::CONTENT_LENGTH)
}

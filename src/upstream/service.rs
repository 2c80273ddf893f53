//! What the proxy forwards to: the [`Upstream`] trait, implemented by each worker's
//! [`super::Pool`] in production and, through [`ServiceUpstream`], by any tower service
//! (a `service_fn` in tests of the request path that need no socket).

use http::{Request, Response};
use hyper::body::Incoming;
use tower::ServiceExt as _;

use crate::body::{BoxError, Inbound, UpstreamBody};

/// What the proxy forwards to, for caller bodies of type `B`.
pub trait Upstream<B = Incoming>: Send + Sync + 'static {
    /// Coupa's response body, streamed back to the caller.
    type Body: Inbound;
    /// Sends one request.
    fn send(
        &self,
        request: Request<UpstreamBody<B>>,
    ) -> impl Future<Output = Result<Response<Self::Body>, BoxError>> + Send;
}

/// Any tower service as an upstream (each send clones it and waits for readiness).
#[derive(Clone)]
pub struct ServiceUpstream<S>(pub S);

impl<S, B, RB> Upstream<B> for ServiceUpstream<S>
where
    S: tower::Service<Request<UpstreamBody<B>>, Response = Response<RB>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Inbound,
    RB: Inbound,
{
    type Body = RB;

    async fn send(&self, request: Request<UpstreamBody<B>>) -> Result<Response<RB>, BoxError> {
        self.0.clone().oneshot(request).await.map_err(Into::into)
    }
}

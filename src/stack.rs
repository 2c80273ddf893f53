//! The one tower stack every proxied request goes through.
//!
//! Layers run top to bottom for the request (tower's `ServiceBuilder` order): the
//! first layer listed sees the request first.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;
use tower::{Layer, Service, ServiceBuilder};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::body::ResponseBody;
use crate::error::json_error;
use crate::proxy::headers::X_COUPA_API_KEY;
use crate::proxy::{ProxyService, Upstream};

/// Wraps the proxy service in its layers.
pub fn proxy_stack<U: Upstream>(
    proxy: ProxyService<U>,
    in_flight: &InFlight,
) -> impl Service<
    Request<Incoming>,
    Response = Response<ResponseBody<U::Body>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    ServiceBuilder::new()
        // First: mark the key and any caller Authorization sensitive, so whatever
        // below might format headers (debug logs, traces) prints them redacted.
        .layer(SetSensitiveRequestHeadersLayer::new([
            X_COUPA_API_KEY.clone(),
            AUTHORIZATION,
        ]))
        // Shed load before doing any work: beyond `max_in_flight` requests, 503.
        .layer(in_flight.clone())
        // Last: admit → authenticate → route → token → rewrite → forward → pass back →
        // record (crate::proxy). ProxyService also wraps the body in an idle timeout,
        // server.body_read_timeout, so a trickled upload cannot hold a request open.
        .service(proxy)
}

/// A process-wide cap on requests in progress.
#[derive(Clone)]
pub struct InFlight {
    count: Arc<AtomicUsize>,
    max: usize,
}

impl InFlight {
    pub fn new(max: usize) -> Self {
        InFlight {
            count: Arc::default(),
            max,
        }
    }
}

impl<S> Layer<S> for InFlight {
    type Service = InFlightLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlightLimit {
            inner,
            limit: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct InFlightLimit<S> {
    inner: S,
    limit: InFlight,
}

/// Decrements the in-flight count when the request is done (or dropped).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S, B, RB> Service<Request<B>> for InFlightLimit<S>
where
    S: Service<Request<B>, Response = Response<ResponseBody<RB>>, Error = Infallible>,
    S::Future: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<ResponseBody<RB>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let previous = self.limit.count.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(Arc::clone(&self.limit.count));
        if previous >= self.limit.max {
            drop(slot);
            tracing::warn!(
                max_in_flight = self.limit.max,
                "overloaded: request refused"
            );
            let response = json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "keybridge is at its limit of requests in progress; retry shortly",
            )
            .map(Either::Right);
            return Box::pin(std::future::ready(Ok(response)));
        }
        let future = self.inner.call(req);
        Box::pin(async move {
            let response = future.await;
            drop(slot);
            response
        })
    }
}

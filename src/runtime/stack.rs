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
use crate::proxy::ProxyService;
use crate::proxy::headers::X_COUPA_API_KEY;
use crate::respond::json_error;
use crate::upstream::Upstream;

/// Wraps the proxy service in its layers.
pub fn proxy_stack<U: Upstream>(
    proxy: ProxyService<U>,
    in_flight: &InFlight,
    source_in_flight: Arc<AtomicUsize>,
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
        // Shed load before doing any work: beyond `max_in_flight` requests, or
        // `max_in_flight_per_ip` from this caller's address (one source cannot hold
        // every slot with trickled uploads), 503.
        .layer(in_flight.for_source(source_in_flight))
        // Last: admit → authenticate → route → token → rewrite → forward → pass back →
        // record (crate::proxy). ProxyService also wraps the body in an idle timeout,
        // server.body_read_timeout, so a trickled upload cannot hold a request open.
        .service(proxy)
}

/// A process-wide cap on requests in progress, and one per source address.
#[derive(Clone)]
pub struct InFlight {
    count: Arc<AtomicUsize>,
    max: usize,
    /// The connection's source address's count, and its cap.
    source: Arc<AtomicUsize>,
    max_per_source: usize,
}

impl InFlight {
    pub fn new(max: usize, max_per_source: usize) -> Self {
        InFlight {
            count: Arc::default(),
            max,
            source: Arc::default(),
            max_per_source,
        }
    }

    /// This cap, counting also against `source` (one address's requests in progress).
    pub fn for_source(&self, source: Arc<AtomicUsize>) -> Self {
        InFlight {
            source,
            ..self.clone()
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

/// Decrements the in-flight counts when the request is done (or dropped).
pub struct InFlightGuard(Arc<AtomicUsize>, Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        self.1.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S, B, RB> Service<Request<B>> for InFlightLimit<S>
where
    S: Service<Request<B>, Response = Response<ResponseBody<RB>>, Error = Infallible>,
    S::Future: Unpin,
    RB: Unpin,
{
    type Response = Response<ResponseBody<RB>>;
    type Error = Infallible;
    type Future = InFlightFuture<S::Future, Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let previous = self.limit.count.fetch_add(1, Ordering::AcqRel);
        let from_source = self.limit.source.fetch_add(1, Ordering::AcqRel);
        let slot = InFlightGuard(
            Arc::clone(&self.limit.count),
            Arc::clone(&self.limit.source),
        );
        if previous >= self.limit.max || from_source >= self.limit.max_per_source {
            drop(slot);
            tracing::warn!(
                max_in_flight = self.limit.max,
                max_in_flight_per_ip = self.limit.max_per_source,
                "overloaded: request refused"
            );
            let response = json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "keybridge is at its limit of requests in progress; retry shortly",
            )
            .map(Either::Right);
            return InFlightFuture::Refused(Some(response));
        }
        InFlightFuture::Admitted(self.inner.call(req), Some(slot))
    }
}

/// The request's own future, holding its in-flight slot until its response is ready
/// (no box: the inner future is boxed already), or the 503 that refused it.
pub enum InFlightFuture<F, R> {
    Refused(Option<R>),
    Admitted(F, Option<InFlightGuard>),
}

impl<F, R> Future for InFlightFuture<F, R>
where
    F: Future<Output = Result<R, Infallible>> + Unpin,
    R: Unpin,
{
    type Output = Result<R, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            #[expect(
                clippy::expect_used,
                reason = "a future polled after it completed is a bug of its caller"
            )]
            InFlightFuture::Refused(response) => Poll::Ready(Ok(response
                .take()
                .expect("InFlightFuture polled after completion"))),
            InFlightFuture::Admitted(inner, slot) => {
                let response = std::task::ready!(Pin::new(inner).poll(cx));
                drop(slot.take());
                Poll::Ready(response)
            }
        }
    }
}

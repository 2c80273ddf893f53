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
use http_body::{Body, Frame, SizeHint};
use http_body_util::Either;
use hyper::body::Incoming;
use tower::{Layer, Service, ServiceBuilder};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::body::{Inbound, ResponseBody};
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
    Response = Response<SlotBody<ResponseBody<U::Body>>>,
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
        // every slot with trickled uploads), 503. A request holds its slot until its
        // response body has been delivered or dropped (a caller that stops reading is
        // cut off after server.send_timeout, by the connection: runtime::conn).
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
    RB: Inbound,
{
    type Response = Response<SlotBody<ResponseBody<RB>>>;
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
            .map(|body| SlotBody {
                inner: Either::Right(body),
                slot: None,
            });
            return InFlightFuture::Refused(Some(response));
        }
        InFlightFuture::Admitted(self.inner.call(req), Some(slot))
    }
}

/// The request's own future, holding its in-flight slot until its response is ready
/// (no box: the inner future is boxed already) and then handing it to the response
/// body, or the 503 that refused it.
pub enum InFlightFuture<F, R> {
    Refused(Option<R>),
    Admitted(F, Option<InFlightGuard>),
}

impl<F, B> Future for InFlightFuture<F, Response<SlotBody<B>>>
where
    F: Future<Output = Result<Response<B>, Infallible>> + Unpin,
    B: Body + Unpin,
{
    type Output = Result<Response<SlotBody<B>>, Infallible>;

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
                let Ok(response) = std::task::ready!(Pin::new(inner).poll(cx));
                let slot = slot.take();
                Poll::Ready(Ok(response.map(|inner| SlotBody::holding(inner, slot))))
            }
        }
    }
}

/// A response body that holds its request's in-flight slot until it has been sent to
/// its end, or dropped (hyper drops it when the caller goes away or is cut off).
pub struct SlotBody<B> {
    inner: B,
    slot: Option<InFlightGuard>,
}

impl<B: Body> SlotBody<B> {
    fn holding(inner: B, slot: Option<InFlightGuard>) -> Self {
        // An empty body is done at once (hyper may never poll it).
        let slot = slot.filter(|_| !inner.is_end_stream());
        SlotBody { inner, slot }
    }
}

impl<B: Body + Unpin> Body for SlotBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        // hyper stops polling once a body says it has ended, so the last data frame
        // may be the last call.
        if !matches!(frame, Some(Ok(_))) || self.inner.is_end_stream() {
            self.slot = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

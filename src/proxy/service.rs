//! The proxy as a tower service for one caller connection.
//!
//! Each request runs on the [`Routes`] current when it arrives, so a reload never
//! affects a request in progress and applies to the next one on every connection. The
//! caller's body is wrapped in an idle timeout (`server.body_read_timeout`) so a trickled
//! upload cannot hold a request open.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::marker::PhantomData;

use arc_swap::ArcSwap;
use http::{Request, Response};

use super::handle::Proxy;
use super::peer::Peer;
use crate::body::{IdleTimeout, Inbound, ResponseBody};
use crate::routes::Routes;
use crate::upstream::Upstream;

/// The proxy service for one connection: the shared routes, this worker's upstream.
pub struct ProxyService<U> {
    routes: Arc<ArcSwap<Routes>>,
    upstream: Arc<U>,
    peer: Peer,
}

impl<U> Clone for ProxyService<U> {
    fn clone(&self) -> Self {
        ProxyService {
            routes: Arc::clone(&self.routes),
            upstream: Arc::clone(&self.upstream),
            peer: self.peer.clone(),
        }
    }
}

impl<U> ProxyService<U> {
    pub fn new(routes: Arc<ArcSwap<Routes>>, upstream: Arc<U>, peer: SocketAddr) -> Self {
        ProxyService {
            routes,
            upstream,
            peer: Peer::new(peer),
        }
    }
}

impl<B: Inbound, U: Upstream<B>> tower::Service<Request<B>> for ProxyService<U> {
    type Response = Response<ResponseBody<U::Body>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let routes = self.routes.load_full();
        let idle = routes.config.server.body_read_timeout;
        let req = req.map(|body| IdleTimeout::new(body, idle));
        let proxy = Proxy {
            routes,
            upstream: Arc::clone(&self.upstream),
            peer: self.peer.clone(),
            body: PhantomData,
        };
        Box::pin(async move { Ok(proxy.handle(req).await) })
    }
}

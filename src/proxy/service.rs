//! The proxy as a tower service for one caller connection.
//!
//! Each request runs on the [`State`] current when it arrives, so a reload never
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

use super::peer::Peer;
use super::state::State;
use super::view::Proxy;
use crate::body::{IdleTimeout, Inbound, ResponseBody};
use crate::upstream::Upstream;

/// The proxy service for one connection: the shared state, this worker's upstream.
pub struct ProxyService<U> {
    state: Arc<ArcSwap<State>>,
    upstream: Arc<U>,
    peer: Peer,
}

impl<U> Clone for ProxyService<U> {
    fn clone(&self) -> Self {
        ProxyService {
            state: Arc::clone(&self.state),
            upstream: Arc::clone(&self.upstream),
            peer: self.peer.clone(),
        }
    }
}

impl<U> ProxyService<U> {
    pub fn new(state: Arc<ArcSwap<State>>, upstream: Arc<U>, peer: SocketAddr) -> Self {
        ProxyService {
            state,
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
        let state = self.state.load_full();
        let idle = state.config.server.body_read_timeout;
        let req = req.map(|body| IdleTimeout::new(body, idle));
        let proxy = Proxy {
            state,
            upstream: Arc::clone(&self.upstream),
            peer: self.peer.clone(),
            body: PhantomData,
        };
        Box::pin(async move { Ok(proxy.handle(req).await) })
    }
}

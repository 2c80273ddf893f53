//! The proxy itself: authenticate the key → pick the token → rewrite the request →
//! forward → pass the response back.
//!
//! [`Proxy`] is a tower `Service` built once per connection (it knows the caller's
//! address) around shared, immutable state. Every failure becomes a
//! [`ProxyError`](crate::error::ProxyError) and is turned into a response in one place.

pub mod headers;
pub mod uri;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::config::{Integration, UpstreamSettings};
use crate::error::ProxyError;
use crate::keys::KeyMap;
use crate::token::TokenCache;
use crate::upstream::HttpClient;
use headers::X_COUPA_API_KEY;

/// What callers get back: Coupa's body streamed through, or our own error body.
pub type ResponseBody = Either<Incoming, Full<Bytes>>;

/// State shared by every request.
pub struct Shared {
    pub keys: KeyMap,
    pub tokens: TokenCache,
    pub http: HttpClient,
    pub upstream: UpstreamSettings,
}

/// The proxy service for one caller connection.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    peer: SocketAddr,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>, peer: SocketAddr) -> Self {
        Proxy { shared, peer }
    }

    /// Handles one request; never fails (errors become JSON responses).
    pub async fn handle(self, req: Request<Incoming>) -> Response<ResponseBody> {
        let started = Instant::now();
        let method = req.method().clone();
        match self.forward(req).await {
            Ok(response) => response,
            Err(err) => {
                let status = err.status();
                if status.is_server_error() {
                    tracing::warn!(%method, status = status.as_u16(), error = %crate::error::chain(&err), elapsed_ms = started.elapsed().as_millis() as u64, "request failed");
                } else {
                    tracing::info!(%method, status = status.as_u16(), error = %err, "request refused");
                }
                err.to_response().map(Either::Right)
            }
        }
    }

    async fn forward(&self, req: Request<Incoming>) -> Result<Response<ResponseBody>, ProxyError> {
        refuse_unsupported(&req)?;
        let integration = self.authenticate(&req)?;
        let client = &integration.client;
        let token = self
            .shared
            .tokens
            .get(&client.name)
            .await
            .map_err(|source| ProxyError::Token {
                client: Arc::clone(&client.name),
                source,
            })?;
        let request = self.rewrite(req, integration, token.authorization())?;
        let response = self.send(request, integration).await?;
        Ok(pass_back(response))
    }

    /// Finds the integration that owns the request's API key.
    fn authenticate(&self, req: &Request<Incoming>) -> Result<&Arc<Integration>, ProxyError> {
        let mut values = req.headers().get_all(&X_COUPA_API_KEY).iter();
        let key = values.next().ok_or(ProxyError::MissingApiKey)?;
        if values.next().is_some() {
            return Err(ProxyError::AmbiguousApiKey);
        }
        match self.shared.keys.lookup(key.as_bytes()) {
            (_, Some(integration)) => Ok(integration),
            (fingerprint, None) => Err(ProxyError::UnknownApiKey {
                fingerprint: fingerprint.short(),
            }),
        }
    }

    /// Builds the upstream request: the instance's origin, the caller's path and query,
    /// rewritten headers, the caller's body streamed through.
    fn rewrite(
        &self,
        req: Request<Incoming>,
        integration: &Integration,
        bearer: &http::HeaderValue,
    ) -> Result<Request<crate::upstream::UpstreamBody>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let instance = &integration.client.instance;
        let pq = uri::path_and_query(&parts.uri)
            .ok_or_else(|| ProxyError::Internal("request target without a path".into()))?;
        parts.uri = instance
            .uri_for(pq)
            .map_err(|e| ProxyError::Internal(format!("building upstream URI: {e}")))?;
        parts.version = Version::HTTP_11; // the pool picks h1 or h2 by ALPN
        headers::rewrite_request(&mut parts.headers, bearer, self.peer.ip());
        Ok(Request::from_parts(parts, Either::Left(body)))
    }

    async fn send(
        &self,
        request: Request<crate::upstream::UpstreamBody>,
        integration: &Integration,
    ) -> Result<Response<Incoming>, ProxyError> {
        let instance = &integration.client.instance;
        let limit = self.shared.upstream.response_timeout;
        match tokio::time::timeout(limit, self.shared.http.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(ProxyError::UpstreamUnreachable {
                instance: Arc::clone(&instance.name),
                cause: crate::error::chain(&e),
            }),
            Err(_) => Err(ProxyError::UpstreamTimeout {
                instance: Arc::clone(&instance.name),
                after: limit,
            }),
        }
    }
}

/// CONNECT tunnels and protocol upgrades would bypass the header rewrite.
fn refuse_unsupported(req: &Request<Incoming>) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed(Method::CONNECT));
    }
    if req.headers().contains_key(http::header::UPGRADE) {
        return Err(ProxyError::UpgradeRefused);
    }
    if uri::path_and_query(req.uri()).is_none() {
        return Err(ProxyError::MethodNotAllowed(req.method().clone()));
    }
    Ok(())
}

/// Coupa's response, unchanged but for hop-by-hop headers.
fn pass_back(response: Response<Incoming>) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    headers::rewrite_response(&mut parts.headers);
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, Either::Left(body))
}

impl tower::Service<Request<Incoming>> for Proxy {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

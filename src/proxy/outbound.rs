//! The request as Coupa will get it: the instance's origin with the caller's path and
//! query, sanitized headers, one credential; and Coupa's response as the caller gets it.

use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body::Body as _;
use http_body_util::Either;

use super::headers::{self, Credential};
use super::peer::Peer;
use crate::body::{Inbound, ResponseBody, UpstreamBody};
use crate::config::Instance;

/// The upstream request minus its credential and body. Built once, sent up to twice.
pub(crate) struct Outbound {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Outbound {
    /// `target` is the caller's path and query, already checked by `admit` ([`super::handle`]).
    pub(crate) fn new(
        method: Method,
        target: PathAndQuery,
        mut headers: HeaderMap,
        instance: &Instance,
        peer: &Peer,
    ) -> Self {
        headers::sanitize_request(&mut headers, peer);
        Outbound {
            method,
            uri: instance.uri_for(target),
            headers,
        }
    }

    /// From a caller's request head.
    pub(crate) fn from_parts(
        parts: Parts,
        target: PathAndQuery,
        instance: &Instance,
        peer: &Peer,
    ) -> Self {
        Self::new(parts.method, target, parts.headers, instance, peer)
    }

    pub(crate) fn method(&self) -> &Method {
        &self.method
    }

    /// A request with a copy of the headers (for a send that may be retried).
    pub(crate) fn build<B: Inbound>(
        &self,
        credential: Credential<'_>,
        body: UpstreamBody<B>,
    ) -> Request<UpstreamBody<B>> {
        assemble(
            self.method.clone(),
            self.uri.clone(),
            self.headers.clone(),
            credential,
            body,
        )
    }

    /// The last (or only) request, without copying.
    pub(crate) fn into_request<B: Inbound>(
        self,
        credential: Credential<'_>,
        body: UpstreamBody<B>,
    ) -> Request<UpstreamBody<B>> {
        assemble(self.method, self.uri, self.headers, credential, body)
    }
}

fn assemble<B: Inbound>(
    method: Method,
    uri: Uri,
    mut headers: HeaderMap,
    credential: Credential<'_>,
    body: UpstreamBody<B>,
) -> Request<UpstreamBody<B>> {
    headers::set_credential(&mut headers, credential);
    if body.is_end_stream() && matches!(method, Method::POST | Method::PUT | Method::PATCH) {
        // hyper sends no framing for an empty body; strict front ends want 411-free
        // `Content-Length: 0` on writes (Coupa's PUT actions are often empty).
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11; // the pool picks h1 or h2 by ALPN
    *request.headers_mut() = headers;
    request
}

/// Coupa's response, unchanged but for hop-by-hop headers.
pub(crate) fn pass_back<B>(response: Response<B>) -> Response<ResponseBody<B>> {
    let (mut parts, body) = response.into_parts();
    headers::rewrite_response(&mut parts.headers);
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, Either::Left(body))
}

//! The one tower stack every proxied request goes through.
//!
//! Layers run top to bottom for the request (tower's `ServiceBuilder` order): the
//! first layer listed sees the request first.

use http::header::AUTHORIZATION;
use tower::ServiceBuilder;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::proxy::Proxy;
use crate::proxy::headers::X_COUPA_API_KEY;

/// Wraps the proxy service in its layers.
pub fn proxy_stack(
    proxy: Proxy,
) -> impl tower::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<crate::proxy::ResponseBody>,
    Error = std::convert::Infallible,
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
        // Last: authenticate → token → rewrite → forward → pass back.
        .service(proxy)
}

//! Every way a proxied request can fail, and the one place that turns a failure into
//! an HTTP response.
//!
//! Status codes follow who is at fault: the caller (4xx), Coupa or its token endpoint
//! (502/503/504), or keybridge itself (500). Bodies are stable JSON
//! `{"error": "<code>", "message": "<text>"}`; they name integrations and clients but
//! never carry a key, secret or token. The full cause goes to the log.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::token::TokenError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request has no X-COUPA-API-KEY header")]
    MissingApiKey,
    #[error("request has more than one X-COUPA-API-KEY header")]
    AmbiguousApiKey,
    #[error("API key {fingerprint} is not configured")]
    UnknownApiKey { fingerprint: String },
    #[error("callers sending their own bearer token are not accepted (bearer_requests: reject)")]
    BearerRejected,
    #[error("integration `{integration}` is denied: it must move to OAuth")]
    Denied { integration: Arc<str> },
    #[error("the caller stopped sending its request body")]
    ClientBodyTimeout,
    #[error("could not read the request body: {0}")]
    ClientBody(String),
    #[error("integration `{integration}` has no Coupa instance to forward to")]
    NoInstance { integration: Arc<str> },
    #[error("method {0} is not supported by this proxy")]
    MethodNotAllowed(http::Method),
    #[error("protocol upgrades are not supported by this proxy")]
    UpgradeRefused,
    #[error("no token for client `{client}`: {source}")]
    Token {
        client: Arc<str>,
        #[source]
        source: TokenError,
    },
    #[error("Coupa instance `{instance}` unreachable: {cause}")]
    UpstreamUnreachable { instance: Arc<str>, cause: String },
    #[error(
        "Coupa instance `{instance}` sent a response with both Transfer-Encoding and Content-Length"
    )]
    UpstreamBadFraming { instance: Arc<str> },
    #[error("Coupa instance `{instance}` did not respond within {after:?}")]
    UpstreamTimeout { instance: Arc<str>, after: Duration },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// Status, stable error code and a caller-safe message.
    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            ProxyError::MissingApiKey => (
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                "send the integration's API key in the X-COUPA-API-KEY header".into(),
            ),
            ProxyError::AmbiguousApiKey => (
                StatusCode::BAD_REQUEST,
                "ambiguous_api_key",
                "send exactly one X-COUPA-API-KEY header".into(),
            ),
            ProxyError::UnknownApiKey { fingerprint } => (
                StatusCode::UNAUTHORIZED,
                "unknown_api_key",
                format!("API key with fingerprint {fingerprint} is not known to keybridge"),
            ),
            ProxyError::BearerRejected => (
                StatusCode::UNAUTHORIZED,
                "bearer_not_accepted",
                "this keybridge only accepts X-COUPA-API-KEY callers; send bearer tokens to Coupa directly".into(),
            ),
            ProxyError::Denied { integration } => (
                StatusCode::FORBIDDEN,
                "integration_denied",
                format!(
                    "integration `{integration}` may no longer use an API key: it must move to an OAuth 2.0 client (ask your Coupa integration admin)"
                ),
            ),
            ProxyError::ClientBodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request_body_timeout",
                "the request body stalled; nothing was completed at Coupa".into(),
            ),
            ProxyError::ClientBody(_) => (
                StatusCode::BAD_REQUEST,
                "bad_request_body",
                "the request body could not be read".into(),
            ),
            ProxyError::NoInstance { integration } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no_instance",
                format!("integration `{integration}` has no Coupa instance configured"),
            ),
            ProxyError::MethodNotAllowed(m) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{m} is not supported"),
            ),
            ProxyError::UpgradeRefused => (
                StatusCode::BAD_REQUEST,
                "upgrade_refused",
                "protocol upgrades (Upgrade, h2c) are not supported".into(),
            ),
            ProxyError::Token { client, source } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "token_unavailable",
                format!(
                    "could not obtain an OAuth token for client `{client}` ({}); see keybridge logs",
                    token_error_kind(source)
                ),
            ),
            ProxyError::UpstreamUnreachable { instance, .. } => (
                StatusCode::BAD_GATEWAY,
                "upstream_unreachable",
                format!("Coupa instance `{instance}` could not be reached"),
            ),
            ProxyError::UpstreamBadFraming { instance } => (
                StatusCode::BAD_GATEWAY,
                "upstream_bad_framing",
                format!("Coupa instance `{instance}` sent an ambiguously framed response"),
            ),
            ProxyError::UpstreamTimeout { instance, after } => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!(
                    "Coupa instance `{instance}` did not respond within {}s",
                    after.as_secs_f64()
                ),
            ),
            ProxyError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "keybridge failed to handle the request; see its logs".into(),
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// The JSON error response for this failure.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let (status, code, message) = self.parts();
        json_error(status, code, &message)
    }
}

/// A short, secret-free label for a token failure, safe for callers to see.
fn token_error_kind(e: &TokenError) -> String {
    match e {
        TokenError::Unreachable(_) => "token endpoint unreachable".into(),
        TokenError::Timeout(_) => "token endpoint timed out".into(),
        TokenError::Rejected { error, .. } => format!("token endpoint said `{error}`"),
        TokenError::HttpStatus { status } => format!("token endpoint answered HTTP {status}"),
        TokenError::InvalidResponse(_) => "token endpoint sent an invalid response".into(),
    }
}

/// `{"error": code, "message": message}` with the given status.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// An error and all its sources, `: `-separated, for logs.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

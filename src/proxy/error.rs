//! Every way a proxied request can fail, and the one place that turns a failure into
//! an HTTP response.
//!
//! Each error knows who is at fault ([`Fault`]): the caller (4xx), Coupa or its token
//! endpoint (502/503/504), or keybridge itself (500); log levels and status follow from
//! it. Bodies are stable JSON `{"error": "<code>", "message": "<text>"}`; they name
//! integrations and clients but never carry a key, secret or token. Causes stay
//! `#[source]`s and are flattened only when logged (`crate::log::chain`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::body::BoxError;
use crate::respond::{api_key_challenge, json_error, retry_after_value};
use crate::token::TokenError;

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The caller sent something we refuse (4xx).
    Caller,
    /// Coupa's API failed or misbehaved (502/504).
    Upstream,
    /// Coupa's token endpoint failed or refused our client (503).
    TokenEndpoint,
    /// A keybridge bug (500).
    Ours,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request has no X-COUPA-API-KEY header")]
    MissingApiKey,
    #[error("request has more than one X-COUPA-API-KEY header")]
    AmbiguousApiKey,
    #[error("the X-COUPA-API-KEY header is empty or has control characters")]
    MalformedApiKey,
    #[error("API key {fingerprint} is not configured")]
    UnknownApiKey { fingerprint: String },
    #[error("callers sending their own bearer token are not accepted (bearer_requests: reject)")]
    BearerRejected,
    #[error("a bearer caller has no instance to go to (several instances, no default_instance)")]
    BearerNotRouted,
    #[error("integration `{integration}` is denied: it must move to OAuth")]
    Denied { integration: Arc<str> },
    #[error("the caller stopped sending its request body")]
    ClientBodyTimeout,
    #[error("could not read the request body")]
    ClientBody(#[source] BoxError),
    #[error("method {method} is not supported by this proxy")]
    MethodNotAllowed {
        method: http::Method,
        /// The methods that are (`forwarding.methods`), for the `Allow` header.
        allow: HeaderValue,
    },
    #[error("path has dot, backslash or empty segments")]
    UnsafePath,
    #[error("path is outside forwarding.path_prefixes")]
    PathNotForwarded,
    #[error("the request target, percent-encoded for Coupa, is longer than a URI may be")]
    TargetTooLong,
    #[error("no token for client `{client}`")]
    Token {
        client: Arc<str>,
        #[source]
        source: TokenError,
    },
    #[error("Coupa instance `{instance}` unreachable")]
    UpstreamUnreachable {
        instance: Arc<str>,
        #[source]
        source: BoxError,
    },
    #[error(
        "Coupa instance `{instance}` sent a response with both Transfer-Encoding and Content-Length"
    )]
    UpstreamBadFraming { instance: Arc<str> },
    #[error("Coupa instance `{instance}` did not respond within {after:?}")]
    UpstreamTimeout { instance: Arc<str>, after: Duration },
    #[error("no turn at Coupa instance `{instance}` within rate_limit.max_wait")]
    Throttled {
        instance: Arc<str>,
        retry_after: Duration,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::shaping::Throttled> for ProxyError {
    fn from(t: crate::shaping::Throttled) -> Self {
        ProxyError::Throttled {
            instance: t.instance,
            retry_after: t.retry_after,
        }
    }
}

impl ProxyError {
    /// A token failure for `client`; the cache's own bugs are ours, not the endpoint's.
    pub fn token(client: &Arc<str>, source: TokenError) -> Self {
        match source {
            TokenError::Internal(message) => ProxyError::Internal(message),
            source => ProxyError::Token {
                client: Arc::clone(client),
                source,
            },
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::MissingApiKey
            | ProxyError::AmbiguousApiKey
            | ProxyError::MalformedApiKey
            | ProxyError::UnknownApiKey { .. }
            | ProxyError::BearerRejected
            | ProxyError::BearerNotRouted
            | ProxyError::Denied { .. }
            | ProxyError::ClientBodyTimeout
            | ProxyError::ClientBody(_)
            | ProxyError::MethodNotAllowed { .. }
            | ProxyError::UnsafePath
            | ProxyError::PathNotForwarded
            | ProxyError::TargetTooLong
            // The callers of an instance together sent more than its budget.
            | ProxyError::Throttled { .. } => Fault::Caller,
            ProxyError::Token { .. } => Fault::TokenEndpoint,
            ProxyError::UpstreamUnreachable { .. }
            | ProxyError::UpstreamBadFraming { .. }
            | ProxyError::UpstreamTimeout { .. } => Fault::Upstream,
            ProxyError::Internal(_) => Fault::Ours,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingApiKey
            | ProxyError::UnknownApiKey { .. }
            | ProxyError::BearerRejected
            | ProxyError::BearerNotRouted => StatusCode::UNAUTHORIZED,
            ProxyError::AmbiguousApiKey
            | ProxyError::MalformedApiKey
            | ProxyError::ClientBody(_)
            | ProxyError::UnsafePath => StatusCode::BAD_REQUEST,
            ProxyError::PathNotForwarded => StatusCode::NOT_FOUND,
            ProxyError::TargetTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::Denied { .. } => StatusCode::FORBIDDEN,
            ProxyError::ClientBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Token { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamUnreachable { .. } | ProxyError::UpstreamBadFraming { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable error code and a caller-safe message.
    fn code_and_message(&self) -> (&'static str, String) {
        match self {
            ProxyError::MissingApiKey => (
                "missing_api_key",
                "send the integration's API key in the X-COUPA-API-KEY header".into(),
            ),
            ProxyError::AmbiguousApiKey => (
                "ambiguous_api_key",
                "send exactly one X-COUPA-API-KEY header".into(),
            ),
            ProxyError::MalformedApiKey => (
                "malformed_api_key",
                "the X-COUPA-API-KEY header must be the key itself: no control characters".into(),
            ),
            ProxyError::UnknownApiKey { fingerprint } => (
                "unknown_api_key",
                format!("API key with fingerprint {fingerprint} is not known to keybridge"),
            ),
            ProxyError::BearerRejected => (
                "bearer_not_accepted",
                "this keybridge only accepts X-COUPA-API-KEY callers; send bearer tokens to Coupa directly".into(),
            ),
            ProxyError::BearerNotRouted => (
                "bearer_not_routed",
                "keybridge has several Coupa instances and no default_instance, so it cannot tell where a bearer token belongs; send X-COUPA-API-KEY, or ask the admin to set default_instance".into(),
            ),
            ProxyError::Denied { integration } => (
                "integration_denied",
                format!(
                    "integration `{integration}` may no longer use an API key: it must move to an OAuth 2.0 client (ask your Coupa integration admin)"
                ),
            ),
            ProxyError::ClientBodyTimeout => (
                "request_body_timeout",
                "the request body stalled; nothing was completed at Coupa".into(),
            ),
            ProxyError::ClientBody(_) => (
                "bad_request_body",
                "the request body could not be read".into(),
            ),
            ProxyError::MethodNotAllowed { method, .. } => {
                ("method_not_allowed", format!("{method} is not supported"))
            }
            ProxyError::UnsafePath => (
                "unsafe_path",
                "paths with `.`/`..` segments (raw or percent-encoded), backslashes or empty segments are not forwarded".into(),
            ),
            ProxyError::TargetTooLong => (
                "uri_too_long",
                "the request target is too long once its quotes, brackets and non-ASCII bytes are percent-encoded".into(),
            ),
            ProxyError::PathNotForwarded => (
                "path_not_forwarded",
                "only Coupa API paths are forwarded (forwarding.path_prefixes, default /api/)".into(),
            ),
            ProxyError::Token { client, source } => (
                "token_unavailable",
                format!(
                    "could not obtain an OAuth token for client `{client}` ({}); see keybridge logs",
                    token_error_kind(source)
                ),
            ),
            ProxyError::UpstreamUnreachable { instance, .. } => (
                "upstream_unreachable",
                format!("Coupa instance `{instance}` could not be reached"),
            ),
            ProxyError::UpstreamBadFraming { instance } => (
                "upstream_bad_framing",
                format!("Coupa instance `{instance}` sent an ambiguously framed response"),
            ),
            ProxyError::UpstreamTimeout { instance, after } => (
                "upstream_timeout",
                format!(
                    "Coupa instance `{instance}` did not respond within {}s",
                    after.as_secs_f64()
                ),
            ),
            ProxyError::Throttled {
                instance,
                retry_after,
            } => (
                "rate_limited",
                format!(
                    "Coupa instance `{instance}` is at its request rate limit, which all integrations share; retry after {}s",
                    retry_after.as_secs()
                ),
            ),
            ProxyError::Internal(_) => (
                "internal_error",
                "keybridge failed to handle the request; see its logs".into(),
            ),
        }
    }

    /// The JSON error response for this failure, with the headers its status requires:
    /// `WWW-Authenticate` on a 401 (RFC 9110 §15.5.2), `Allow` on a 405 (§15.5.6) and
    /// `Retry-After` on a 429.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let (code, message) = self.code_and_message();
        let mut response = json_error(self.status(), code, &message);
        let headers = response.headers_mut();
        match self {
            ProxyError::Throttled { retry_after, .. } => {
                headers.insert(http::header::RETRY_AFTER, retry_after_value(*retry_after));
            }
            ProxyError::MethodNotAllowed { allow, .. } => {
                headers.insert(http::header::ALLOW, allow.clone());
            }
            _ if self.status() == StatusCode::UNAUTHORIZED => {
                headers.insert(http::header::WWW_AUTHENTICATE, api_key_challenge());
            }
            _ => {}
        }
        response
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
        TokenError::Internal(_) => "internal error".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::chain;

    #[test]
    fn status_follows_fault() {
        let cases: Vec<ProxyError> = vec![
            ProxyError::MissingApiKey,
            ProxyError::Denied {
                integration: "x".into(),
            },
            ProxyError::ClientBody("cut".into()),
            ProxyError::token(&"c".into(), TokenError::Timeout(Duration::from_secs(1))),
            ProxyError::UpstreamTimeout {
                instance: "prod".into(),
                after: Duration::from_secs(1),
            },
            ProxyError::token(&"c".into(), TokenError::Internal("bug".into())),
        ];
        for e in cases {
            let status = e.status();
            let ok = match e.fault() {
                Fault::Caller => status.is_client_error(),
                Fault::Upstream | Fault::TokenEndpoint => {
                    [502, 503, 504].contains(&status.as_u16())
                }
                Fault::Ours => status == StatusCode::INTERNAL_SERVER_ERROR,
            };
            assert!(ok, "{e:?}: {status} for {:?}", e.fault());
        }
    }

    #[test]
    fn sources_are_kept_and_flattened_only_for_logs() {
        let e = ProxyError::UpstreamUnreachable {
            instance: "prod".into(),
            source: "connection refused".into(),
        };
        assert_eq!(e.to_string(), "Coupa instance `prod` unreachable");
        assert_eq!(
            chain(&e),
            "Coupa instance `prod` unreachable: connection refused"
        );
    }
}

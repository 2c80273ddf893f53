//! One request from arrival to answer: admit it, dispatch it, turn a failure into its
//! response (logged by fault), record it.

use std::time::Instant;

use http::header::USER_AGENT;
use http::uri::PathAndQuery;
use http::{Method, Request, Response};
use http_body::Body as _;
use http_body_util::Either;

use super::error::{Fault, ProxyError};
use super::handled::{Handled, Who};
use super::record::{self, Done};
use super::view::Proxy;
use crate::audit::template::endpoint;
use crate::body::{CallerBody, Inbound, ResponseBody};
use crate::config::Forwarding;
use crate::paths as uri;
use crate::upstream::Upstream;

impl<B: Inbound, U: Upstream<B>> Proxy<U, B> {
    /// Handles one request; never fails (errors become JSON responses).
    pub(super) async fn handle(
        self,
        req: Request<CallerBody<B>>,
    ) -> Response<ResponseBody<U::Body>> {
        let started = Instant::now();
        let endpoint = endpoint(method_label(req.method()), req.uri().path());
        let user_agent = req.headers().get(USER_AGENT).cloned();
        let handled = match admit(&req, &self.state.config.forwarding) {
            Ok(target) => self.dispatch(req, target, &endpoint).await,
            Err(e) => Handled::rejected(Who::Anonymous, e),
        };
        let response = match handled.result {
            Ok(response) => response,
            Err(err) => {
                log_failure(&handled.who, &endpoint, &err);
                err.to_response().map(Either::Right)
            }
        };
        record::record(
            &self.state,
            &Done {
                who: &handled.who,
                outcome: handled.outcome,
                fallback_status: handled.fallback_status,
                endpoint: &endpoint,
                status: response.status().as_u16(),
                peer: self.peer.addr,
                user_agent: user_agent.as_ref(),
                started,
            },
        );
        response
    }
}

/// The method as the audit records it: standard methods by name, any other (a 5 KB
/// token, say) as one `OTHER` bucket, so hostile methods cannot grow the audit.
fn method_label(method: &Method) -> &str {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
        Method::TRACE,
        Method::CONNECT,
    ];
    if STANDARD.contains(method) {
        method.as_str()
    } else {
        "OTHER"
    }
}

fn log_failure(who: &Who, endpoint: &str, err: &ProxyError) {
    let status = err.status().as_u16();
    let integration = who.name();
    match err.fault() {
        // Counted in keybridge_shaping_throttled; a line each would flood the log
        // exactly when an instance is overloaded.
        Fault::Caller if matches!(err, ProxyError::Throttled { .. }) => {
            tracing::debug!(%integration, %endpoint, status, error = %err, "request throttled");
        }
        Fault::Caller => {
            tracing::info!(%integration, %endpoint, status, error = %err, "request refused");
        }
        Fault::Upstream | Fault::TokenEndpoint => {
            tracing::warn!(%integration, %endpoint, status, error = %crate::log::chain(err), "request failed");
        }
        Fault::Ours => {
            tracing::error!(%integration, %endpoint, status, error = %crate::log::chain(err), "request failed: keybridge bug");
        }
    }
}

/// Refuses what the proxy must not or cannot forward faithfully, and returns the target
/// it will forward: only `forwarding.methods` (never CONNECT tunnels or TRACE echoes),
/// only paths under `forwarding.path_prefixes` and none another server could normalise
/// elsewhere (`/api/../oauth2/token`), and no chunked GET/HEAD body (hyper would send it
/// with no framing, i.e. drop it). An `Upgrade` offer (Java's `HttpClient` offers h2c on
/// every request) is neither honoured nor refused: the header is hop-by-hop, so it is
/// dropped with `HTTP2-Settings` and the request is served over HTTP/1.1 (RFC 9110 §7.8);
/// no 101 is ever sent and nothing reaches Coupa that could upgrade. The target is
/// returned percent-encoded where a browser would encode it ([`uri::forwardable`]).
fn admit<B: Inbound>(
    req: &Request<CallerBody<B>>,
    forwarding: &Forwarding,
) -> Result<PathAndQuery, ProxyError> {
    let not_allowed = || ProxyError::MethodNotAllowed {
        method: req.method().clone(),
        allow: forwarding.allow.clone(),
    };
    if !forwarding.methods.contains(req.method()) {
        return Err(not_allowed());
    }
    let Some(target) = uri::path_and_query(req.uri()) else {
        return Err(not_allowed());
    };
    if uri::unsafe_path(target.path()) {
        return Err(ProxyError::UnsafePath);
    }
    if !forwarding
        .path_prefixes
        .iter()
        .any(|p| target.path().starts_with(p.as_str()))
    {
        return Err(ProxyError::PathNotForwarded);
    }
    if matches!(*req.method(), Method::GET | Method::HEAD)
        && !req.body().is_end_stream()
        && req.body().size_hint().exact().is_none()
    {
        return Err(ProxyError::ClientBody(
            "GET/HEAD with a chunked body is not supported".into(),
        ));
    }
    uri::forwardable(target).ok_or(ProxyError::TargetTooLong)
}

//! The admin listener: health, readiness, the audit, metrics, token status and the
//! migration dashboard.
//!
//! - `/healthz`: 200 while the process serves.
//! - `/readyz`: 200 once every client holds a settled token, else 503 with reasons.
//! - `/audit`: the audit report as JSON (the same data as `keybridge audit`).
//! - `/metrics`: Prometheus text format.
//! - `/tokens`: per client, token held/settled/expiry, fetch history, last error.
//! - `/`: the dashboard (HTML + inline JS/CSS, no external assets).
//! - `POST /reload`: re-read the config file (as SIGHUP does); 200 with a summary, or
//!   409 with the reason and the old configuration still serving.
//!
//! With `admin_token` set, everything but `/healthz` and `/readyz` (orchestrator probes)
//! needs `Authorization: Bearer
//! <token>` (or HTTP Basic with the token as password, so a browser can open the
//! dashboard). Nothing here ever shows a token, a secret or a raw key.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;

use base64::Engine as _;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use sha2::{Digest, Sha256};

use super::core::Core;
use crate::config::Secret;
use crate::respond::json_error;
use crate::token::shared::CLOCK_TOLERANCE;

/// The dashboard page, compiled into the binary.
const DASHBOARD_HTML: &str = include_str!("admin/dashboard.html");

type AdminFuture = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

/// The admin service for one connection.
pub fn service(
    core: Arc<Core>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = AdminFuture,
> + Send
+ 'static {
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let core = Arc::clone(&core);
        Box::pin(async move { Ok(route(&core, &req).await) }) as AdminFuture
    })
}

async fn route(core: &Core, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let config = core.config();
    // Orchestrator probes stay open; everything else answers only to this host's names
    // (DNS rebinding: a page whose name now resolves to 127.0.0.1 sends its own Host).
    let probe = matches!(path, "/healthz" | "/readyz");
    if !probe && core.admin_bound.ip().is_loopback() && !host_allowed(req, &config.admin_hosts) {
        return json_error(
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            "the admin listener answers to localhost names only (see admin_hosts)",
        );
    }
    if !probe
        && let Some(token) = &config.admin_token
        && !authorized(req, token)
    {
        let mut r = json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this admin endpoint needs the admin token",
        );
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"keybridge admin\", charset=\"UTF-8\""),
        );
        return r;
    }
    if path == "/reload" {
        if req.method() != Method::POST {
            return json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use POST /reload",
            );
        }
        // Without a token, only a non-simple request may reload: no cross-site form or
        // no-cors fetch can send `Content-Type: application/json` without a preflight.
        if config.admin_token.is_none() && !is_json(req) {
            return json_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "json_required",
                "POST /reload needs Content-Type: application/json (or the admin token)",
            );
        }
        if !core.reload_limit.try_acquire() {
            return too_many("reload");
        }
        return match core.reload_from_file().await {
            Ok(summary) => json(
                StatusCode::OK,
                &json!({"status": "reloaded", "summary": summary}),
            ),
            Err(e) => {
                tracing::error!(error = %e, "reload refused; the previous configuration keeps serving");
                json_error(StatusCode::CONFLICT, "reload_failed", &e.to_string())
            }
        };
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "admin endpoints are read-only",
        );
    }
    match path {
        "/" => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            DASHBOARD_HTML.into(),
        ),
        "/healthz" => json(StatusCode::OK, &json!({"status": "ok"})),
        "/readyz" => readyz(core).await,
        "/tokens" => tokens(core).await,
        "/metrics" => {
            core.state().load().shaping.export();
            respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                core.metrics.encode().into(),
            )
        }
        "/audit" if !core.audit_limit.try_acquire() => too_many("audit"),
        "/audit" => match core.audit.report(&config).await {
            Ok(mut report) => {
                report.rate_limits = core
                    .state()
                    .load()
                    .shaping
                    .iter()
                    .map(|s| s.report())
                    .collect();
                json(StatusCode::OK, &report)
            }
            Err(e) => {
                tracing::error!(error = %e, "audit read failed");
                json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "audit_unavailable",
                    "the audit store could not be read; see keybridge logs",
                )
            }
        },
        _ => json_error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
    }
}

async fn readyz(core: &Core) -> Response<Full<Bytes>> {
    let mut clients = serde_json::Map::new();
    let mut all_ready = true;
    for (name, report) in core.tokens().status().await {
        all_ready &= report.ready;
        clients.insert(
            name.to_string(),
            json!({
                "ready": report.ready,
                "last_error": report.history.last_error.as_ref().map(|e| e.to_string()),
            }),
        );
    }
    let (status, word) = if all_ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    // The audit is not the request path: a failing store is reported, not "not ready".
    let audit = match core.audit.degraded() {
        None => json!({"status": "ok"}),
        Some(error) => json!({"status": "degraded", "last_error": error}),
    };
    json(
        status,
        &json!({"status": word, "clients": clients, "audit": audit, "shared_tokens": shared_tokens(core)}),
    )
}

/// The fleet's token cache: `null` without `fleet.redis_url`; Redis being away is
/// reported, never "not ready" (each replica then mints its own tokens).
fn shared_tokens(core: &Core) -> serde_json::Value {
    match core.tokens().shared_health() {
        None => serde_json::Value::Null,
        Some((redis, h)) => json!({
            "redis": redis,
            "status": if h.available { "ok" } else if h.last_error.is_some() { "unavailable" } else { "not_used_yet" },
            "last_error": h.last_error,
            "tokens_read": h.reads,
            "tokens_written": h.writes,
            "local_fetches": h.local_fallbacks,
            "clock": {
                "status": match h.clock_offset_ms {
                    None => "unmeasured",
                    Some(_) if h.clock_skewed() => "skewed",
                    Some(_) => "ok",
                },
                "offset_ms": h.clock_offset_ms,
                "tolerance_ms": CLOCK_TOLERANCE.as_millis() as u64,
            },
            "implausible_records": h.implausible_records,
            "last_implausible": h.last_implausible,
        }),
    }
}

async fn tokens(core: &Core) -> Response<Full<Bytes>> {
    let now = SystemTime::now();
    let mut clients = serde_json::Map::new();
    let config = core.config();
    for (name, r) in core.tokens().status().await {
        let settle = if !r.held {
            "none"
        } else if r.ready {
            "settled"
        } else {
            "settling"
        };
        let client = config.clients.get(&*name);
        clients.insert(
            name.to_string(),
            json!({
                "instance": client.map(|c| c.instance.name.to_string()),
                "client_id": client.map(|c| c.client_id.clone()),
                "scopes": client.map(|c| c.scopes.clone()),
                "token_held": r.held,
                "settle_state": settle,
                "expires_at": r.expires_at.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                "expires_in_seconds": r.expires_at.map(|t| t.duration_since(now).map(|d| d.as_secs()).unwrap_or(0)),
                "last_fetch": r.history.last_fetch.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                "fetches_ok": r.history.fetches_ok,
                "fetches_failed": r.history.fetches_failed,
                "last_error": r.history.last_error.as_ref().map(|e| e.to_string()),
            }),
        );
    }
    json(
        StatusCode::OK,
        &json!({ "clients": clients, "shared_tokens": shared_tokens(core) }),
    )
}

/// Whether the request's `Host` (or HTTP/2 `:authority`), without its port, is one of
/// `allowed`. A request without either (HTTP/1.0 tools) is allowed: browsers always
/// send one.
fn host_allowed(req: &Request<Incoming>, allowed: &[String]) -> bool {
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
    let Some(host) = host else {
        return true;
    };
    let host = host.to_ascii_lowercase();
    let name = match host.rfind(':') {
        // `[::1]:9900` and `localhost:9900`; a bare `[::1]` has no port after `]`.
        Some(i) if !host[i..].contains(']') => {
            if !host[i + 1..].bytes().all(|b| b.is_ascii_digit()) {
                return false; // `localhost:evil`
            }
            &host[..i]
        }
        _ => host.as_str(),
    };
    allowed.iter().any(|a| a == name)
}

fn is_json(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

fn too_many(what: &str) -> Response<Full<Bytes>> {
    let mut r = json_error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        &format!("too many {what} requests; retry in a second"),
    );
    r.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Bearer token, or Basic with the token as password; compared as SHA-256 digests.
fn authorized(req: &Request<Incoming>, token: &Secret) -> bool {
    let Some(value) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let presented = if let Some(bearer) = strip_prefix_ci(value, "bearer ") {
        bearer.trim().to_owned()
    } else if let Some(basic) = strip_prefix_ci(value, "basic ") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim()) else {
            return false;
        };
        let decoded = String::from_utf8_lossy(&decoded).into_owned();
        match decoded.split_once(':') {
            Some((_, password)) => password.to_owned(),
            None => return false,
        }
    } else {
        return false;
    };
    Sha256::digest(presented.as_bytes()) == Sha256::digest(token.expose().as_bytes())
}

fn strip_prefix_ci<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    (value.len() >= prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &value[prefix.len()..])
}

fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(body) {
        Ok(bytes) => respond(status, "application/json", bytes.into()),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise admin response");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "serialisation failed",
            )
        }
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:"),
    );
    response
}

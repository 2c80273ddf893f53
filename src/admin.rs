//! The admin listener: liveness and readiness (more endpoints come later).
//!
//! `/healthz` answers 200 while the process serves. `/readyz` answers 200 once every
//! client holds a settled token (fetched at start-up), 503 otherwise with the reason
//! per client. Nothing here ever shows a token or a secret.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;

use crate::config::Config;
use crate::error::json_error;
use crate::token::TokenCache;

pub struct AdminState {
    tokens: TokenCache,
}

impl AdminState {
    pub fn new(tokens: TokenCache, _config: &Config) -> Self {
        AdminState { tokens }
    }
}

type AdminFuture = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

/// The admin service for one connection.
pub fn service(
    state: Arc<AdminState>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = AdminFuture,
> + Send
+ 'static {
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let state = Arc::clone(&state);
        Box::pin(async move { Ok(route(&state, &req).await) }) as AdminFuture
    })
}

async fn route(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "admin endpoints are read-only",
        );
    }
    match req.uri().path() {
        "/healthz" => json(StatusCode::OK, json!({"status": "ok"})),
        "/readyz" => readyz(state).await,
        _ => json_error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
    }
}

async fn readyz(state: &AdminState) -> Response<Full<Bytes>> {
    let mut clients = serde_json::Map::new();
    let mut all_ready = true;
    for (name, report) in state.tokens.status().await {
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
    json(status, json!({"status": word, "clients": clients}))
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

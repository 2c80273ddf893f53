//! A mock Coupa instance: `/oauth2/token` and `/api/*`, for tests and the demo.
//!
//! Behaves as `shared/COUPA.md` describes Coupa: client-credentials grant with body or
//! Basic client authentication, space-separated scopes (none requested → all granted),
//! RFC 6749 error bodies (`invalid_client` on 400), `expires_in` in seconds, optional
//! settle time during which a fresh token is refused with 401. `/api/*` accepts a
//! valid, unexpired, settled bearer whose scopes cover the resource (401/403
//! otherwise) or a configured legacy key, records every request it received, answers
//! GETs with a JSON echo and writes with their own body.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ServerSettings;
use crate::scopes::required_scope;

mod pages;

/// An OAuth client the mock knows.
#[derive(Debug, Clone)]
pub struct MockClient {
    pub client_id: String,
    pub secret: String,
    pub scopes: Vec<String>,
}

/// Builder for a mock Coupa.
#[derive(Debug, Clone)]
pub struct MockCoupa {
    clients: Vec<MockClient>,
    api_keys: Vec<String>,
    expires_in: Duration,
    settle: Duration,
    token_delay: Duration,
    token_length: usize,
    refused_paths: Vec<String>,
    rate_limit: Option<(f64, u32)>,
}

impl Default for MockCoupa {
    fn default() -> Self {
        MockCoupa {
            clients: Vec::new(),
            api_keys: Vec::new(),
            expires_in: Duration::from_secs(86399),
            settle: Duration::ZERO,
            token_delay: Duration::ZERO,
            token_length: 48,
            refused_paths: Vec::new(),
            rate_limit: None,
        }
    }
}

impl MockCoupa {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a client with its secret and the scopes an admin granted it.
    pub fn client(mut self, client_id: &str, secret: &str, scopes: &[&str]) -> Self {
        self.clients.push(MockClient {
            client_id: client_id.into(),
            secret: secret.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        });
        self
    }

    /// A legacy API key that `/api/*` still accepts.
    pub fn api_key(mut self, key: &str) -> Self {
        self.api_keys.push(key.into());
        self
    }

    /// Lifetime of issued tokens (Coupa: 86 399 s).
    pub fn expires_in(mut self, d: Duration) -> Self {
        self.expires_in = d;
        self
    }

    /// Tokens younger than this are refused with 401 (Coupa's "wait ≥5 s").
    pub fn settle(mut self, d: Duration) -> Self {
        self.settle = d;
        self
    }

    /// Delay before each token response (to make concurrent fetches overlap).
    pub fn token_delay(mut self, d: Duration) -> Self {
        self.token_delay = d;
        self
    }

    /// Length of issued access tokens (JWTs can be long).
    pub fn token_length(mut self, n: usize) -> Self {
        self.token_length = n.max(16);
        self
    }

    /// Answers 401 under `prefix` whatever the credential (as Coupa does for some
    /// resources a caller may not touch): a way for one caller to provoke 401s.
    pub fn refuse_path(mut self, prefix: &str) -> Self {
        self.refused_paths.push(prefix.to_owned());
        self
    }

    /// Enforces Coupa's rate limit on `/api/*`: `per_second` with `burst` at once (GCRA);
    /// a request over it is answered 429 with no `Retry-After`, as Coupa does.
    pub fn rate_limit(mut self, per_second: f64, burst: u32) -> Self {
        self.rate_limit = Some((per_second, burst.max(1)));
        self
    }

    /// Starts serving on `addr` (port 0 picks a free port).
    pub async fn start(self, addr: SocketAddr) -> std::io::Result<MockHandle> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            config: self,
            token_failure: Mutex::default(),
            tokens: Mutex::default(),
            token_requests: AtomicU64::new(0),
            token_grants: AtomicU64::new(0),
            requests: Mutex::default(),
            limiter: Mutex::new(None),
            forced_429: AtomicU64::new(0),
            forced_retry_after: Mutex::new(None),
            epoch: Instant::now(),
        });
        let (shutdown, mut rx) = watch::channel(false);
        let svc_state = Arc::clone(&state);
        let task = tokio::spawn(crate::runtime::serve(
            listener,
            move |_peer| {
                let state = Arc::clone(&svc_state);
                hyper::service::service_fn(move |req| {
                    let state = Arc::clone(&state);
                    Box::pin(async move { Ok::<_, Infallible>(state.handle(req).await) })
                        as Pin<Box<dyn Future<Output = _> + Send>>
                })
            },
            ServerSettings::default(),
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        ));
        Ok(MockHandle {
            addr,
            state,
            shutdown,
            task: Some(task),
        })
    }
}

/// A way the mock's token endpoint can misbehave (see [`MockHandle::set_token_failure`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenFailure {
    /// Answer with this HTTP status and an HTML body.
    Status(u16),
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with JSON lacking `access_token`.
    NoAccessToken,
    /// 200 with this exact JSON body (hostile tokens, lifetimes, …).
    Body(String),
    /// 400 `invalid_client`.
    InvalidClient,
    /// Never answer.
    Hang,
}

/// The largest response body whose SHA-256 the mock records.
pub const MAX_HASHED: usize = 1024 * 1024;

/// What `/api/*` saw in one request.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: Method,
    pub version: http::Version,
    /// Path and query exactly as received.
    pub target: String,
    pub headers: HeaderMap,
    pub body_len: usize,
    pub body_sha256: String,
    pub status: u16,
    /// SHA-256 of the body the mock answered with (empty above [`MAX_HASHED`] bytes:
    /// exports of tens of MiB would cost seconds of a debug build's time).
    pub response_sha256: String,
    pub auth: MockAuth,
    /// Trailers that came after the body, if any.
    pub trailers: Option<HeaderMap>,
    /// When the request head arrived.
    pub received: Instant,
}

/// How a recorded request authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MockAuth {
    Bearer { client_id: String },
    ApiKey,
    Rejected(String),
}

/// A running mock.
pub struct MockHandle {
    pub addr: SocketAddr,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

/// Dropping the handle stops the mock too (without waiting for it).
impl Drop for MockHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

impl MockHandle {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests to `/oauth2/token`, successful or not.
    pub fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// Tokens issued.
    pub fn token_grants(&self) -> u64 {
        self.state.token_grants.load(Ordering::SeqCst)
    }

    /// Every `/api/*` request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    pub fn api_hits(&self) -> usize {
        lock(&self.state.requests).len()
    }

    /// Makes the token endpoint misbehave (`None`: behave again).
    pub fn set_token_failure(&self, failure: Option<TokenFailure>) {
        *lock(&self.state.token_failure) = failure;
    }

    /// Answers the next `n` `/api/*` requests 429 (with `retry_after`, if given, as the
    /// header), whatever the rate.
    pub fn answer_429(&self, n: u64, retry_after: Option<&str>) {
        *lock(&self.state.forced_retry_after) = retry_after.map(str::to_owned);
        self.state.forced_429.store(n, Ordering::SeqCst);
    }

    /// `/api/*` requests answered 429 so far.
    pub fn rate_limited(&self) -> usize {
        lock(&self.state.requests)
            .iter()
            .filter(|r| r.status == 429)
            .count()
    }

    /// Invalidates every issued token (as revoking a client in Coupa would).
    pub fn revoke_all_tokens(&self) {
        lock(&self.state.tokens).clear();
    }

    /// Stops the mock and waits until it has.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

struct Issued {
    client_id: String,
    scopes: Vec<String>,
    issued: Instant,
    expires: Instant,
}

struct State {
    config: MockCoupa,
    token_failure: Mutex<Option<TokenFailure>>,
    tokens: Mutex<HashMap<String, Issued>>,
    token_requests: AtomicU64,
    token_grants: AtomicU64,
    requests: Mutex<Vec<RecordedRequest>>,
    /// GCRA: the theoretical arrival time of the next request, µs since `epoch`.
    limiter: Mutex<Option<f64>>,
    forced_429: AtomicU64,
    forced_retry_after: Mutex<Option<String>>,
    epoch: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        if path == "/oauth2/token" {
            self.token(req).await
        } else if path.starts_with("/api/") {
            self.api(req).await
        } else {
            json_response(
                StatusCode::NOT_FOUND,
                &json!({"errors": {"path": ["not found"]}}),
            )
        }
    }

    async fn token(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        self.token_requests.fetch_add(1, Ordering::SeqCst);
        let failure = lock(&self.token_failure).clone();
        if let Some(failure) = failure {
            return match failure {
                TokenFailure::Status(code) => {
                    let mut r = Response::new(Full::new(Bytes::from_static(
                        b"<html>upstream trouble</html>",
                    )));
                    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
                    r
                }
                TokenFailure::Garbage => {
                    Response::new(Full::new(Bytes::from_static(b"<html>not json</html>")))
                }
                TokenFailure::NoAccessToken => json_response(
                    StatusCode::OK,
                    &json!({"token_type": "bearer", "expires_in": 3600}),
                ),
                TokenFailure::Body(body) => {
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    r.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    r
                }
                TokenFailure::InvalidClient => oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_client",
                    "Client authentication failed",
                ),
                TokenFailure::Hang => {
                    std::future::pending::<()>().await;
                    Response::new(Full::new(Bytes::new()))
                }
            };
        }
        if req.method() != Method::POST {
            return oauth_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "use POST",
            );
        }
        let basic = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(decode_basic);
        let Ok(body) = read_body(req.into_body(), 64 * 1024).await else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "unreadable body",
            );
        };
        let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
        if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only client_credentials is supported",
            );
        }
        let (id, secret) = match basic {
            Some(pair) => pair,
            None => (
                form.get("client_id").cloned().unwrap_or_default(),
                form.get("client_secret").cloned().unwrap_or_default(),
            ),
        };
        let Some(client) = self
            .config
            .clients
            .iter()
            .find(|c| c.client_id == id && c.secret == secret)
        else {
            // Coupa answers invalid_client with 400 whatever the cause.
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_client",
                "Client authentication failed",
            );
        };
        let requested: Vec<String> = form
            .get("scope")
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        if let Some(bad) = requested.iter().find(|s| !client.scopes.contains(s)) {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                &format!("The requested scope is invalid, unknown, or malformed: {bad}"),
            );
        }
        let scopes = if requested.is_empty() {
            client.scopes.clone()
        } else {
            requested
        };
        if !self.config.token_delay.is_zero() {
            tokio::time::sleep(self.config.token_delay).await;
        }
        let token = new_token(self.config.token_length);
        let now = Instant::now();
        lock(&self.tokens).insert(
            token.clone(),
            Issued {
                client_id: client.client_id.clone(),
                scopes: scopes.clone(),
                issued: now,
                expires: now + self.config.expires_in,
            },
        );
        self.token_grants.fetch_add(1, Ordering::SeqCst);
        json_response(
            StatusCode::OK,
            &json!({
                "access_token": token,
                "token_type": "bearer",
                "expires_in": self.config.expires_in.as_secs(),
                "scope": scopes.join(" "),
            }),
        )
    }

    /// Whether a request arriving now is over the rate limit (or forced to be), and the
    /// `Retry-After` to send with the 429.
    fn over_limit(&self) -> Option<Option<String>> {
        let forced = self
            .forced_429
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if forced {
            return Some(lock(&self.forced_retry_after).clone());
        }
        let (rate, burst) = self.config.rate_limit?;
        let now = self.epoch.elapsed().as_secs_f64() * 1e6;
        let interval = 1e6 / rate;
        let tolerance = f64::from(burst - 1) * interval;
        let mut tat = lock(&self.limiter);
        let t = tat.unwrap_or(now).max(now);
        if t - now > tolerance {
            return Some(None);
        }
        *tat = Some(t + interval);
        None
    }

    async fn api(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let received = Instant::now();
        let over = self.over_limit();
        let (parts, body) = req.into_parts();
        // Like Coupa, act only on complete requests: a body cut short (caller stalled,
        // proxy gave up) is neither recorded nor processed.
        let Ok((body, trailers)) = read_body_and_trailers(body, 512 * 1024 * 1024).await else {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"errors": {"request": ["incomplete request body"]}}),
            );
        };
        let target = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_default();
        let auth = if self
            .config
            .refused_paths
            .iter()
            .any(|p| parts.uri.path().starts_with(p.as_str()))
        {
            MockAuth::Rejected("this path refuses every credential".into())
        } else {
            self.authenticate(&parts.method, &parts.uri, &parts.headers)
        };
        let (status, response_body, content_type) = match &auth {
            _ if over.is_some() => (
                StatusCode::TOO_MANY_REQUESTS,
                Bytes::from_static(b"{\"errors\":{\"rate\":[\"Rate limit exceeded\"]}}"),
                HeaderValue::from_static("application/json"),
            ),
            MockAuth::Rejected(reason) => {
                let status = if reason.starts_with("missing scope") {
                    StatusCode::FORBIDDEN
                } else {
                    StatusCode::UNAUTHORIZED
                };
                let b = json!({"errors": {"authorization": [reason]}}).to_string();
                (
                    status,
                    Bytes::from(b),
                    HeaderValue::from_static("application/json"),
                )
            }
            _ if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) => {
                let ct = parts
                    .headers
                    .get(CONTENT_TYPE)
                    .cloned()
                    .unwrap_or(HeaderValue::from_static("application/octet-stream"));
                (StatusCode::OK, body.clone(), ct)
            }
            _ => pages::page(&parts.uri, &parts.headers)
                .or_else(|| pages::export(&parts.uri))
                .map_or_else(
                    || echo(&parts.method, &parts.uri, &auth),
                    |(b, ct)| (StatusCode::OK, b, ct),
                ),
        };
        lock(&self.requests).push(RecordedRequest {
            method: parts.method.clone(),
            version: parts.version,
            target,
            headers: parts.headers.clone(),
            body_len: body.len(),
            body_sha256: hex::encode(Sha256::digest(&body)),
            status: status.as_u16(),
            response_sha256: if response_body.len() <= MAX_HASHED {
                hex::encode(Sha256::digest(&response_body))
            } else {
                String::new()
            },
            auth,
            trailers,
            received,
        });
        // GET answers are gzip-encoded for a caller that accepts it, as Coupa's are.
        let gzipped = parts.method == Method::GET
            && status == StatusCode::OK
            && pages::accepts_gzip(&parts.headers);
        let mut response = Response::new(Full::new(if gzipped {
            pages::gzip(&response_body)
        } else {
            response_body
        }));
        *response.status_mut() = status;
        if gzipped {
            response.headers_mut().insert(
                http::header::CONTENT_ENCODING,
                HeaderValue::from_static("gzip"),
            );
        }
        if let Some(Some(retry_after)) = &over
            && let Ok(v) = HeaderValue::from_str(retry_after)
        {
            response.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        response.headers_mut().insert(CONTENT_TYPE, content_type);
        response
            .headers_mut()
            .insert("x-mock-coupa", HeaderValue::from_static("1"));
        response
    }

    fn authenticate(&self, method: &Method, uri: &http::Uri, headers: &HeaderMap) -> MockAuth {
        let has_key = headers.contains_key("x-coupa-api-key");
        if let Some(v) = headers.get(AUTHORIZATION) {
            if has_key {
                return MockAuth::Rejected("both an API key and a bearer token were sent".into());
            }
            let Some(token) = v.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) else {
                return MockAuth::Rejected("unsupported authorization scheme".into());
            };
            let tokens = lock(&self.tokens);
            let Some(issued) = tokens.get(token) else {
                return MockAuth::Rejected("invalid or revoked token".into());
            };
            let now = Instant::now();
            if now >= issued.expires {
                return MockAuth::Rejected("token expired".into());
            }
            if now < issued.issued + self.config.settle {
                return MockAuth::Rejected("token not yet active".into());
            }
            if let Some(scope) = required_scope(method, uri.path())
                && !issued.scopes.contains(&scope)
            {
                return MockAuth::Rejected(format!("missing scope {scope}"));
            }
            return MockAuth::Bearer {
                client_id: issued.client_id.clone(),
            };
        }
        match headers.get("x-coupa-api-key") {
            Some(k)
                if self
                    .config
                    .api_keys
                    .iter()
                    .any(|a| a.as_bytes() == k.as_bytes()) =>
            {
                MockAuth::ApiKey
            }
            Some(_) => MockAuth::Rejected("invalid API key".into()),
            None => MockAuth::Rejected("no credentials".into()),
        }
    }
}

fn new_token(len: usize) -> String {
    let mut t = String::with_capacity(len);
    t.push_str("mock.");
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    while t.len() < len {
        t.push(ALPHABET[fastrand::usize(..ALPHABET.len())] as char);
    }
    t
}

fn decode_basic(v: &str) -> Option<(String, String)> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (id, secret) = raw.split_once(':')?;
    let dec = |s: &str| {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((dec(id)?, dec(secret)?))
}

async fn read_body(
    body: Incoming,
    limit: usize,
) -> Result<Bytes, Box<dyn std::error::Error + Send + Sync>> {
    Ok(read_body_and_trailers(body, limit).await?.0)
}

async fn read_body_and_trailers(
    body: Incoming,
    limit: usize,
) -> Result<(Bytes, Option<HeaderMap>), Box<dyn std::error::Error + Send + Sync>> {
    let collected = Limited::new(body, limit).collect().await?;
    let trailers = collected.trailers().cloned();
    Ok((collected.to_bytes(), trailers))
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A GET's answer: a JSON echo of what the mock received, shaped like a Coupa invoice.
fn echo(method: &Method, uri: &http::Uri, auth: &MockAuth) -> (StatusCode, Bytes, HeaderValue) {
    let b = json!({
        "id": 4242,
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "auth": match auth { MockAuth::Bearer { .. } => "bearer", _ => "api_key" },
        "client_id": match auth { MockAuth::Bearer { client_id } => Some(client_id), _ => None },
        "invoice-number": "INV-0001",
        "status": "approved",
        "supplier": {"id": 7, "name": "Acme Supplies"},
        "invoice-lines": [{"line-num": 1, "description": "Widgets", "price": "12.50", "quantity": "4.0"}],
    })
    .to_string();
    (
        StatusCode::OK,
        Bytes::from(b),
        HeaderValue::from_static("application/json"),
    )
}

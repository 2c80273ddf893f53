//! The proxy itself: authenticate the key → choose the route (cutover mode) → pick
//! the token → rewrite the request → forward → pass the response back → record.
//!
//! [`Proxy`] is a tower `Service` built once per connection (it knows the caller's
//! address) around shared, immutable state ([`Shared`]). Every failure becomes a
//! [`ProxyError`] and is turned into a response in one place; every request, whatever
//! happened, is recorded once for the audit, the metrics and the access log.

pub mod body;
pub mod headers;
pub mod shadow;
pub mod uri;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{AUTHORIZATION, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::audit::{Event, Outcome, Recorder, Slot, Subject, template::template};
use crate::config::{BearerRequests, Config, Instance, Integration, UnknownKeys};
use crate::cutover::{self, RateLimiter, Route};
use crate::error::ProxyError;
use crate::keys::{Fingerprint, KeyMap};
use crate::metrics::{Metrics, OutcomeCounters};
use crate::token::TokenCache;
use crate::upstream::{CallerBody, HttpClient, UpstreamBody};
use body::RequestBody;
use headers::{Credential, X_COUPA_API_KEY};

/// What callers get back: Coupa's body streamed through, or our own error body.
pub type ResponseBody = Either<Incoming, Full<Bytes>>;

/// A configured integration and what the proxy keeps beside it.
pub struct Caller {
    pub integration: Arc<Integration>,
    pub audit: Arc<Slot>,
    pub counters: OutcomeCounters,
}

/// State shared by every request.
pub struct Shared {
    pub callers: KeyMap<Arc<Caller>>,
    pub tokens: TokenCache,
    pub http: HttpClient,
    pub config: Arc<Config>,
    pub recorder: Arc<Recorder>,
    pub metrics: Arc<Metrics>,
    shadow_limiter: Arc<RateLimiter>,
    /// Counters for unknown keys, native bearer callers and anonymous requests.
    unknown_counters: OutcomeCounters,
    native_counters: OutcomeCounters,
    anonymous_counters: OutcomeCounters,
}

impl Shared {
    pub fn new(
        config: Arc<Config>,
        tokens: TokenCache,
        http: HttpClient,
        recorder: Arc<Recorder>,
        metrics: Arc<Metrics>,
        shadow_limiter: Arc<RateLimiter>,
    ) -> Self {
        let callers = KeyMap::new(config.integrations.iter().map(|i| {
            let caller = Caller {
                integration: Arc::clone(i),
                audit: recorder.slot(&i.name).unwrap_or_default(),
                counters: metrics.integration_counters(&i.name, i.mode),
            };
            (i.fingerprint, Arc::new(caller))
        }));
        let unknown_mode = match config.unknown_keys {
            UnknownKeys::Reject => "reject",
            UnknownKeys::Observe => "observe",
        };
        let native_mode = match config.bearer_requests {
            BearerRequests::Forward => "forward",
            BearerRequests::Reject => "reject",
        };
        Shared {
            callers,
            shadow_limiter,
            unknown_counters: metrics.outcome_counters(&Arc::from("(unknown key)"), unknown_mode),
            native_counters: metrics.outcome_counters(&Arc::from("(bearer caller)"), native_mode),
            anonymous_counters: metrics.outcome_counters(&Arc::from("(no credentials)"), "-"),
            tokens,
            http,
            config,
            recorder,
            metrics,
        }
    }
}

/// Who sent a request, as far as the proxy could tell.
enum Who {
    Caller(Arc<Caller>),
    Unknown(Fingerprint),
    Native,
    Anonymous,
}

/// What [`Proxy::dispatch`] did with a request.
struct Handled {
    result: Result<Response<ResponseBody>, ProxyError>,
    who: Who,
    outcome: Outcome,
    /// OAuth's status when the request fell back to the key.
    fallback_status: Option<u16>,
}

impl Handled {
    fn new(who: Who, outcome: Outcome, result: Result<Response<ResponseBody>, ProxyError>) -> Self {
        Handled {
            result,
            who,
            outcome,
            fallback_status: None,
        }
    }

    fn rejected(who: Who, err: ProxyError) -> Self {
        Self::new(who, Outcome::Rejected, Err(err))
    }
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
    pub async fn handle(self, req: Request<CallerBody>) -> Response<ResponseBody> {
        let started = Instant::now();
        let method = req.method().clone();
        let endpoint = format!("{method} {}", template(req.uri().path()));
        let user_agent = req.headers().get(USER_AGENT).cloned();
        let handled = self.dispatch(req, &endpoint).await;
        let response = match handled.result {
            Ok(response) => response,
            Err(err) => {
                let status = err.status();
                if status.is_server_error() {
                    tracing::warn!(integration = %who_name(&handled.who), %endpoint, status = status.as_u16(), error = %crate::error::chain(&err), "request failed");
                } else {
                    tracing::info!(integration = %who_name(&handled.who), %endpoint, status = status.as_u16(), error = %err, "request refused");
                }
                err.to_response().map(Either::Right)
            }
        };
        let status = response.status().as_u16();
        let event = Event {
            outcome: handled.outcome,
            endpoint: &endpoint,
            status,
            ip: self.peer.ip(),
            user_agent: user_agent.as_ref().and_then(|v| v.to_str().ok()),
            fallback_status: handled.fallback_status,
        };
        let shared = &self.shared;
        match &handled.who {
            Who::Caller(c) => {
                shared.recorder.record_in(&c.audit, &event);
                c.counters.inc(handled.outcome);
            }
            Who::Unknown(fp) => {
                shared
                    .recorder
                    .record_other(Subject::UnknownKey(fp.to_string()), &event);
                shared.unknown_counters.inc(handled.outcome);
            }
            Who::Native => {
                shared.recorder.record_other(Subject::Native, &event);
                shared.native_counters.inc(handled.outcome);
            }
            Who::Anonymous => {
                shared.recorder.record_other(Subject::Anonymous, &event);
                shared.anonymous_counters.inc(handled.outcome);
            }
        }
        if shared.config.server.access_log {
            tracing::info!(
                target: "keybridge::access",
                integration = %who_name(&handled.who),
                outcome = handled.outcome.as_str(),
                %endpoint,
                status,
                duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                "request"
            );
        }
        response
    }

    /// Authenticates the request and sends it down the route its integration's mode
    /// chooses.
    async fn dispatch(&self, req: Request<CallerBody>, endpoint: &str) -> Handled {
        if let Err(e) = refuse_unsupported(&req) {
            return Handled::rejected(Who::Anonymous, e);
        }
        let mut keys = req.headers().get_all(&X_COUPA_API_KEY).iter();
        let key = match (keys.next(), keys.next()) {
            (Some(_), Some(_)) => {
                return Handled::rejected(Who::Anonymous, ProxyError::AmbiguousApiKey);
            }
            (Some(key), None) => key.clone(),
            (None, _) => return self.without_key(req).await,
        };
        let (fingerprint, caller) = self.shared.callers.lookup(key.as_bytes());
        let Some(caller) = caller.cloned() else {
            return self.unknown_key(req, fingerprint, &key).await;
        };
        let integration = Arc::clone(&caller.integration);
        let safe = matches!(*req.method(), Method::GET | Method::HEAD);
        match cutover::route(&integration, safe) {
            Route::Deny => Handled::new(
                Who::Caller(caller),
                Outcome::Denied,
                Err(ProxyError::Denied {
                    integration: Arc::clone(&integration.name),
                }),
            ),
            Route::Key => {
                let result = match &integration.instance {
                    Some(instance) => self.forward_key(req, instance, &key).await,
                    None => Err(ProxyError::NoInstance {
                        integration: Arc::clone(&integration.name),
                    }),
                };
                Handled::new(Who::Caller(caller), Outcome::ApiKey, result)
            }
            Route::KeyAndShadow => {
                self.forward_key_and_shadow(req, caller, &key, endpoint)
                    .await
            }
            Route::Oauth => self.forward_oauth(req, caller, None).await,
            Route::OauthWithFallback => self.forward_oauth(req, caller, Some(&key)).await,
        }
    }

    /// No key: a native bearer caller, or nobody.
    async fn without_key(&self, req: Request<CallerBody>) -> Handled {
        let bearer = req
            .headers()
            .get(AUTHORIZATION)
            .map(HeaderValue::as_bytes)
            .is_some_and(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "));
        if !bearer {
            return Handled::rejected(Who::Anonymous, ProxyError::MissingApiKey);
        }
        let config = &self.shared.config;
        match (config.bearer_requests, &config.default_instance) {
            (BearerRequests::Reject, _) => {
                Handled::rejected(Who::Native, ProxyError::BearerRejected)
            }
            (BearerRequests::Forward, None) => {
                Handled::rejected(Who::Native, ProxyError::BearerRejected)
            }
            (BearerRequests::Forward, Some(instance)) => {
                let result = self.forward(req, instance, Credential::Caller).await;
                Handled::new(Who::Native, Outcome::Native, result)
            }
        }
    }

    /// A key no integration owns.
    async fn unknown_key(
        &self,
        req: Request<CallerBody>,
        fp: Fingerprint,
        key: &HeaderValue,
    ) -> Handled {
        let config = &self.shared.config;
        match (config.unknown_keys, &config.default_instance) {
            (UnknownKeys::Observe, Some(instance)) => {
                let result = self.forward_key(req, instance, key).await;
                Handled::new(Who::Unknown(fp), Outcome::ApiKey, result)
            }
            _ => Handled::rejected(
                Who::Unknown(fp),
                ProxyError::UnknownApiKey {
                    fingerprint: fp.short(),
                },
            ),
        }
    }

    async fn forward_key(
        &self,
        req: Request<CallerBody>,
        instance: &Instance,
        key: &HeaderValue,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        self.forward(req, instance, Credential::Key(key)).await
    }

    /// Streams the request to `instance` with `credential`; no retry.
    async fn forward(
        &self,
        req: Request<CallerBody>,
        instance: &Instance,
        credential: Credential<'_>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let (parts, body) = req.into_parts();
        let out = Outbound::new(parts.method, &parts.uri, parts.headers, instance, self.peer)?;
        let response = self
            .send(
                out.into_request(credential, RequestBody::streaming(body).send_body()),
                instance,
            )
            .await?;
        Ok(pass_back(response))
    }

    /// `shadow`: serve with the key, then replay a copy with OAuth in the background.
    async fn forward_key_and_shadow(
        &self,
        req: Request<CallerBody>,
        caller: Arc<Caller>,
        key: &HeaderValue,
        endpoint: &str,
    ) -> Handled {
        let Some(instance) = caller.integration.instance.clone() else {
            let name = Arc::clone(&caller.integration.name);
            return Handled::new(
                Who::Caller(caller),
                Outcome::ApiKey,
                Err(ProxyError::NoInstance { integration: name }),
            );
        };
        let copy = self.shared.shadow_limiter.try_acquire().then(|| {
            (
                req.method().clone(),
                req.uri().clone(),
                req.headers().clone(),
            )
        });
        let result = self.forward_key(req, &instance, key).await;
        if let (Some((method, uri, headers)), Ok(response)) = (copy, &result) {
            let replay = shadow::Replay {
                shared: Arc::clone(&self.shared),
                caller: Arc::clone(&caller),
                method,
                uri,
                headers,
                peer: self.peer,
                endpoint: endpoint.to_owned(),
                key_status: response.status().as_u16(),
            };
            tokio::spawn(replay.run());
        }
        Handled::new(Who::Caller(caller), Outcome::ApiKey, result)
    }

    /// `oauth` and canary's OAuth share. With `fallback_key` (canary), a 401/403 is
    /// retried once with the key when the body was buffered (≤ replay_body_limit);
    /// without it (oauth), a bodiless request is retried once with a fresh token after a
    /// 401. Never more than one retry.
    async fn forward_oauth(
        &self,
        req: Request<CallerBody>,
        caller: Arc<Caller>,
        fallback_key: Option<&HeaderValue>,
    ) -> Handled {
        let integration = Arc::clone(&caller.integration);
        let who = || Who::Caller(Arc::clone(&caller));
        let Some(client) = integration.client.as_ref() else {
            let name = Arc::clone(&integration.name);
            return Handled::rejected(who(), ProxyError::NoInstance { integration: name });
        };
        let instance = &client.instance;
        let token = match self.shared.tokens.get(&client.name).await {
            Ok(token) => token,
            Err(source) => {
                if let Some(key) = fallback_key {
                    // A canary must not break its caller over our token trouble.
                    tracing::warn!(integration = %integration.name, client = %client.name, error = %source, "no token; canary request sent with the key");
                    let result = self.forward_key(req, instance, key).await;
                    return Handled::new(who(), Outcome::ApiKey, result);
                }
                return Handled::rejected(
                    who(),
                    ProxyError::Token {
                        client: Arc::clone(&client.name),
                        source,
                    },
                );
            }
        };
        let (parts, body) = req.into_parts();
        let out = match Outbound::new(parts.method, &parts.uri, parts.headers, instance, self.peer)
        {
            Ok(out) => out,
            Err(e) => return Handled::rejected(who(), e),
        };
        // canary buffers small bodies so a 401/403 can fall back to the key; oauth
        // streams every body (no per-request buffering) and retries only bodiless ones.
        let limit = match fallback_key {
            Some(_) => self.shared.config.cutover.replay_body_limit,
            None => 0,
        };
        let mut body = match RequestBody::replayable(body, limit).await {
            Ok(body) => body,
            Err(e) => return Handled::rejected(who(), e),
        };
        let response = match self
            .send(
                out.build(Credential::Bearer(token.authorization()), body.send_body()),
                instance,
            )
            .await
        {
            Ok(response) => response,
            Err(e) => return Handled::new(who(), Outcome::Oauth, Err(e)),
        };
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED {
            self.shared
                .tokens
                .invalidate(&client.name, token.serial)
                .await;
        }
        let refused = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
        if !refused || !body.can_replay() {
            return Handled::new(who(), Outcome::Oauth, Ok(pass_back(response)));
        }
        if let Some(key) = fallback_key {
            drop(response);
            tracing::info!(integration = %integration.name, status = status.as_u16(), "OAuth refused; retrying once with the API key (canary fallback)");
            let result = self
                .send(
                    out.into_request(Credential::Key(key), body.send_body()),
                    instance,
                )
                .await
                .map(pass_back);
            return Handled {
                result,
                who: who(),
                outcome: Outcome::Fallback,
                fallback_status: Some(status.as_u16()),
            };
        }
        if status == StatusCode::UNAUTHORIZED {
            if let Ok(fresh) = self.shared.tokens.get(&client.name).await {
                if fresh.serial != token.serial {
                    drop(response);
                    tracing::info!(integration = %integration.name, client = %client.name, "Coupa refused the token; retrying once with a fresh one");
                    let result = self
                        .send(
                            out.into_request(
                                Credential::Bearer(fresh.authorization()),
                                body.send_body(),
                            ),
                            instance,
                        )
                        .await
                        .map(pass_back);
                    return Handled::new(who(), Outcome::Oauth, result);
                }
            }
        }
        Handled::new(who(), Outcome::Oauth, Ok(pass_back(response)))
    }

    async fn send(
        &self,
        request: Request<UpstreamBody>,
        instance: &Instance,
    ) -> Result<Response<Incoming>, ProxyError> {
        send(&self.shared, request, instance).await
    }
}

/// Sends one request to Coupa within the response timeout.
pub(crate) async fn send(
    shared: &Shared,
    request: Request<UpstreamBody>,
    instance: &Instance,
) -> Result<Response<Incoming>, ProxyError> {
    let limit = shared.config.upstream.response_timeout;
    let started = Instant::now();
    let result = tokio::time::timeout(limit, shared.http.request(request)).await;
    shared.metrics.observe_upstream(started.elapsed());
    match result {
        Ok(Ok(response)) if ambiguous_framing(response.headers()) => {
            // RFC 9112 §6.3: a message with both may be a smuggling or splitting attempt
            // and ought to be handled as an error. Dropping the unread body also keeps
            // that connection out of the pool.
            Err(ProxyError::UpstreamBadFraming {
                instance: Arc::clone(&instance.name),
            })
        }
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) if caused_by::<body::BodyIdle>(&e) => Err(ProxyError::ClientBodyTimeout),
        Ok(Err(e)) if caller_body_failed(&e) => {
            Err(ProxyError::ClientBody(crate::error::chain(&e)))
        }
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

/// True when `T` is somewhere in `e`'s source chain.
fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.is::<T>() {
            return true;
        }
        next = err.source();
    }
    false
}

/// True when sending failed because the caller's body did (bad chunking, disconnect):
/// the caller's fault, not Coupa's.
fn caller_body_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_user() {
                return true;
            }
        }
        next = err.source();
    }
    false
}

/// True when a response carries both `Transfer-Encoding` and `Content-Length`.
fn ambiguous_framing(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING)
        && headers.contains_key(http::header::CONTENT_LENGTH)
}

/// The upstream request minus its credential and body: the instance's origin with the
/// caller's path and query, and sanitized headers. Built once, sent up to twice.
pub(crate) struct Outbound {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Outbound {
    pub(crate) fn new(
        method: Method,
        target: &Uri,
        mut headers: HeaderMap,
        instance: &Instance,
        peer: SocketAddr,
    ) -> Result<Self, ProxyError> {
        let pq = uri::path_and_query(target)
            .ok_or_else(|| ProxyError::Internal("request target without a path".into()))?;
        let uri = instance
            .uri_for(pq)
            .map_err(|e| ProxyError::Internal(format!("building upstream URI: {e}")))?;
        headers::sanitize_request(&mut headers, peer.ip());
        Ok(Outbound {
            method,
            uri,
            headers,
        })
    }

    /// A request with a copy of the headers (for a send that may be retried).
    pub(crate) fn build(
        &self,
        credential: Credential<'_>,
        body: UpstreamBody,
    ) -> Request<UpstreamBody> {
        Self::assemble(
            self.method.clone(),
            self.uri.clone(),
            self.headers.clone(),
            credential,
            body,
        )
    }

    /// The last (or only) request, without copying.
    pub(crate) fn into_request(
        self,
        credential: Credential<'_>,
        body: UpstreamBody,
    ) -> Request<UpstreamBody> {
        Self::assemble(self.method, self.uri, self.headers, credential, body)
    }

    fn assemble(
        method: Method,
        uri: Uri,
        mut headers: HeaderMap,
        credential: Credential<'_>,
        body: UpstreamBody,
    ) -> Request<UpstreamBody> {
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
}

fn who_name(who: &Who) -> String {
    match who {
        Who::Caller(c) => c.integration.name.to_string(),
        Who::Unknown(fp) => format!("unknown:{}", fp.short()),
        Who::Native => "(bearer caller)".to_owned(),
        Who::Anonymous => "-".to_owned(),
    }
}

/// CONNECT tunnels and protocol upgrades would bypass the header rewrite.
fn refuse_unsupported(req: &Request<CallerBody>) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed(Method::CONNECT));
    }
    if req.headers().contains_key(http::header::UPGRADE) {
        return Err(ProxyError::UpgradeRefused);
    }

    if uri::path_and_query(req.uri()).is_none() {
        return Err(ProxyError::MethodNotAllowed(req.method().clone()));
    }
    if matches!(*req.method(), Method::GET | Method::HEAD)
        && !req.body().is_end_stream()
        && req.body().size_hint().exact().is_none()
    {
        // hyper would send such a body with no framing, i.e. drop it.
        return Err(ProxyError::ClientBody(
            "GET/HEAD with a chunked body is not supported".into(),
        ));
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

/// The proxy as a tower service for one caller connection. Each request runs on the
/// [`Shared`] state current when it arrives, so a reload never affects a request in
/// progress and applies to the next one on every connection.
#[derive(Clone)]
pub struct ProxyService {
    current: Arc<arc_swap::ArcSwap<Shared>>,
    peer: SocketAddr,
}

impl ProxyService {
    pub fn new(current: Arc<arc_swap::ArcSwap<Shared>>, peer: SocketAddr) -> Self {
        ProxyService { current, peer }
    }
}

impl tower::Service<Request<Incoming>> for ProxyService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let proxy = Proxy::new(self.current.load_full(), self.peer);
        let idle = proxy.shared.config.server.body_read_timeout;
        let req = req.map(|body| body::IdleTimeout::new(body, idle));
        Box::pin(async move { Ok(proxy.handle(req).await) })
    }
}

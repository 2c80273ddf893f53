//! The request path in process: the proxy service over a `tower::service_fn` upstream,
//! no sockets. (The same paths over real sockets, against the mock Coupa: tests/.)

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt as _;

use super::state::State;
use super::{ProxyService, ServiceUpstream};
use crate::audit::{Outcome, Recorder, Subject};
use crate::body::{BoxError, UpstreamBody};
use crate::bucket::RateLimiter;
use crate::config::Config;
use crate::keys::Fingerprint;
use crate::metrics::Metrics;
use crate::token::TokenCache;

const KEY: &str = "observe-key-0000000000000000000000000000";
const DENIED: &str = "denied-key-00000000000000000000000000000";

fn state() -> Arc<ArcSwap<State>> {
    let yaml = format!(
        "instances:\n  prod:\n    base_url: https://acme.coupahost.com\n\
         integrations:\n\
         \x20 - {{name: legacy, api_key_sha256: {}, mode: observe, instance: prod}}\n\
         \x20 - {{name: gone, api_key_sha256: {}, mode: deny}}\n",
        Fingerprint::of_key(KEY.as_bytes()),
        Fingerprint::of_key(DENIED.as_bytes()),
    );
    let config = Arc::new(Config::from_yaml(&yaml, Path::new("."), &HashMap::new()).unwrap());
    let metrics = Arc::new(Metrics::new());
    let tokens = TokenCache::new(
        config.clients.values(),
        crate::upstream::build_client(&config.upstream).unwrap(),
        config.token.clone(),
        Arc::clone(&metrics),
        None,
    );
    let recorder = Arc::new(Recorder::new(
        true,
        config.integrations.iter().map(|i| &i.name),
        10,
    ));
    Arc::new(ArcSwap::from_pointee(State::new(
        config,
        tokens,
        recorder,
        metrics,
        super::state::Carried {
            shadow_limiter: Arc::new(RateLimiter::new(1)),
            replay_budget: Arc::new(tokio::sync::Semaphore::new(1024)),
            shaping: Arc::default(),
        },
    )))
}

type Seen = Arc<Mutex<Vec<Request<()>>>>;

/// An upstream that records each request head and answers `answer`.
fn upstream(
    seen: &Seen,
    answer: Result<StatusCode, &'static str>,
) -> Arc<impl super::Upstream<Full<Bytes>>> {
    let seen = Arc::clone(seen);
    Arc::new(ServiceUpstream(tower::service_fn(
        move |req: Request<UpstreamBody<Full<Bytes>>>| {
            seen.lock().unwrap().push(req.map(|_| ()));
            async move {
                match answer {
                    Ok(status) => {
                        let mut response =
                            Response::new(Full::new(Bytes::from_static(b"{\"id\":1}")));
                        *response.status_mut() = status;
                        Ok(response)
                    }
                    Err(cause) => Err(BoxError::from(cause)),
                }
            }
        },
    )))
}

fn peer() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 7], 40000))
}

async fn call<U>(service: ProxyService<U>, req: Request<Full<Bytes>>) -> (StatusCode, Bytes)
where
    U: super::Upstream<Full<Bytes>>,
{
    let response: Result<_, Infallible> = service.oneshot(req).await;
    let response = response.unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn an_observe_request_reaches_only_the_instance_with_its_key_and_clean_headers() {
    let state = state();
    let seen = Seen::default();
    let service = ProxyService::new(
        Arc::clone(&state),
        upstream(&seen, Ok(StatusCode::OK)),
        peer(),
    );
    let req = Request::get("http://evil.example/api/invoices?filter[status]=paid")
        .header("host", "evil.example")
        .header("x-coupa-api-key", KEY)
        .header("connection", "x-private")
        .header("x-private", "drop me")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, body) = call(service, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"{\"id\":1}");

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let sent = &seen[0];
    assert_eq!(
        sent.uri(),
        "https://acme.coupahost.com/api/invoices?filter[status]=paid"
    );
    assert_eq!(sent.headers()["x-coupa-api-key"], KEY);
    assert!(
        sent.headers().get("host").is_none(),
        "the client sets Host from the URI"
    );
    assert!(
        sent.headers().get("x-private").is_none(),
        "listed in Connection: hop-by-hop"
    );
    assert_eq!(sent.headers()["x-forwarded-for"], "10.0.0.7");

    let batch = state.load().recorder.take();
    let (_, window) = batch
        .iter()
        .find(|(s, _)| *s == Subject::Integration("legacy".into()))
        .unwrap();
    assert_eq!(window.counts[Outcome::ApiKey], 1);
    assert!(window.endpoints.contains_key("GET /api/invoices"));
}

#[tokio::test]
async fn a_denied_integration_never_reaches_the_upstream() {
    let seen = Seen::default();
    let service = ProxyService::new(state(), upstream(&seen, Ok(StatusCode::OK)), peer());
    let req = Request::get("/api/invoices")
        .header("x-coupa-api-key", DENIED)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, body) = call(service, req).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&body).contains("integration_denied"));
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_upstream_failure_is_a_502_naming_the_instance_not_the_cause() {
    let seen = Seen::default();
    let failing = upstream(&seen, Err("connection refused by 10.1.2.3"));
    let service = ProxyService::new(state(), failing, peer());
    let req = Request::get("/api/invoices")
        .header("x-coupa-api-key", KEY)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, body) = call(service, req).await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        body.contains("upstream_unreachable") && body.contains("`prod`"),
        "{body}"
    );
    assert!(
        !body.contains("10.1.2.3"),
        "causes go to the log only: {body}"
    );
}

#[tokio::test]
async fn unknown_keys_and_missing_keys_are_refused_before_the_upstream() {
    let seen = Seen::default();
    for key in [Some("not-a-configured-key-000000000000000000"), None] {
        let service = ProxyService::new(state(), upstream(&seen, Ok(StatusCode::OK)), peer());
        let mut req = Request::get("/api/invoices");
        if let Some(key) = key {
            req = req.header("x-coupa-api-key", key);
        }
        let (status, _) = call(service, req.body(Full::new(Bytes::new())).unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert!(seen.lock().unwrap().is_empty());
}

/// Every request's future is moved whole (into its box, into hyper's task) and its
/// size is copied each time: a guard against something large landing inline in it
/// (opening an upstream connection inline made it 40 KB of copying per request).
#[tokio::test]
async fn the_request_future_stays_small() {
    use super::view::Proxy;
    let seen = Seen::default();
    let proxy = Proxy {
        state: state().load_full(),
        upstream: upstream(&seen, Ok(StatusCode::OK)),
        peer: super::Peer::new(peer()),
        body: std::marker::PhantomData,
    };
    let req = Request::get("/api/x")
        .body(crate::body::IdleTimeout::new(
            Full::new(Bytes::new()),
            std::time::Duration::from_secs(1),
        ))
        .unwrap();
    let size = std::mem::size_of_val(&proxy.handle(req));
    assert!(size <= 5 * 1024, "the request future is {size} bytes");
}

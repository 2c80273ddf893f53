//! The failures keybridge will meet in production — a token endpoint that is down, slow,
//! or answers nonsense, and a Coupa that hangs, resets or frames responses badly — and
//! what callers see: no failure while a valid token exists, and otherwise a prompt,
//! specific 502/503/504 with nothing replayed that Coupa might have acted on.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod support;

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use keybridge::cli::mock::TokenFailure;
use support::raw::RawUpstream;
use support::*;

/// A config whose token section also has a short request timeout.
fn fast_token_config(base_url: &str, extra: &str) -> String {
    TestConfig::standard(base_url)
        .merge(extra)
        .set("token.request_timeout", "400ms")
        .yaml()
}

#[tokio::test]
async fn a_token_outage_that_ends_before_expiry_fails_no_request() {
    // Tokens live 6 s, so the refresher tries at ~3 s — in the middle of an outage that
    // cycles through every way a token endpoint fails, and ends at 4.5 s.
    let m = mock().expires_in(Duration::from_secs(6));
    let mock = m.start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let proxy = start_proxy(&fast_token_config(&mock.base_url(), "")).await;
    wait_ready(proxy.admin_addr).await;
    let grants_before = mock.token_grants();

    let traffic = tokio::spawn(hammer(proxy.proxy_addr, Duration::from_secs(8)));
    let failures = [
        TokenFailure::Status(503),
        TokenFailure::Garbage,
        TokenFailure::NoAccessToken,
        TokenFailure::InvalidClient,
        TokenFailure::Hang,
        TokenFailure::Body(r#"{"access_token":"bad token","expires_in":60}"#.into()),
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    for f in failures.iter().cycle().take(12) {
        mock.set_token_failure(Some(f.clone()));
        tokio::time::sleep(Duration::from_millis(333)).await;
    }
    let failed_attempts = mock.token_requests() - grants_before;
    mock.set_token_failure(None);

    let served = traffic.await.unwrap();
    assert!(served > 200, "traffic flowed: {served}");
    assert!(
        failed_attempts >= 1,
        "the refresher met the outage (else this test proves nothing)"
    );
    assert!(
        mock.token_grants() > grants_before,
        "a new token was fetched once the endpoint recovered"
    );
    assert!(
        mock.requests().iter().all(|r| r.status == 200),
        "Coupa never saw an expired or missing token"
    );
}

/// Starts a proxy whose token endpoint fails as given from the start; one request.
async fn request_without_a_token(failure: Option<TokenFailure>, down: bool) -> (String, String) {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    mock.set_token_failure(failure);
    let mut yaml = fast_token_config(&mock.base_url(), "");
    if down {
        yaml = with_token_url(&yaml, &format!("http://{}", closed_addr().await));
    }
    let proxy = start_proxy(&yaml).await;
    let started = Instant::now();
    let (status, headers, body) = get(
        proxy.proxy_addr,
        "/api/invoices/1",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["content-type"], "application/json");
    assert!(took < Duration::from_secs(3), "answered in {took:?}");
    assert_eq!(mock.api_hits(), 0, "nothing reached Coupa without a token");
    let body = json(&body);
    assert_eq!(body["error"], "token_unavailable");
    proxy.shutdown().await;
    mock.stop().await;
    (body["message"].as_str().unwrap().to_owned(), logs())
}

#[tokio::test]
async fn without_a_valid_token_the_caller_gets_a_prompt_503_and_the_log_says_why() {
    let cases: Vec<(Option<TokenFailure>, bool, &str, &str)> = vec![
        (None, true, "unreachable", "token endpoint unreachable"),
        (
            Some(TokenFailure::Hang),
            false,
            "timed out",
            "did not answer within 400ms",
        ),
        (
            Some(TokenFailure::Status(502)),
            false,
            "HTTP 502",
            "answered HTTP 502",
        ),
        (
            Some(TokenFailure::Garbage),
            false,
            "invalid response",
            "not a JSON",
        ),
        (
            Some(TokenFailure::NoAccessToken),
            false,
            "invalid response",
            "no `access_token`",
        ),
        (
            Some(TokenFailure::InvalidClient),
            false,
            "invalid_client",
            "invalid_client",
        ),
    ];
    for (failure, down, said, logged) in cases {
        let (message, logs) = request_without_a_token(failure.clone(), down).await;
        assert!(
            message.contains(said),
            "{failure:?}: caller told `{message}`"
        );
        assert!(
            logs.contains(logged),
            "{failure:?}: the log says `{logged}`"
        );
        assert!(!message.contains(SECRET) && !logs.contains(SECRET));
    }
}

#[tokio::test]
async fn hostile_token_replies_are_never_cached_or_sent() {
    let huge = "a".repeat(64 * 1024);
    let oversized_body = format!(
        r#"{{"access_token":"abc","padding":"{}"}}"#,
        "p".repeat(70_000)
    );
    let cases: Vec<(String, &str)> = vec![
        (
            r#"{"access_token":"abc\r\nX-Evil: 1","token_type":"bearer","expires_in":60}"#.into(),
            "b64token",
        ),
        (
            r#"{"access_token":"abc\u0000def","token_type":"bearer","expires_in":60}"#.into(),
            "b64token",
        ),
        (
            r#"{"access_token":"abc def","token_type":"bearer","expires_in":60}"#.into(),
            "b64token",
        ),
        (
            r#"{"access_token":"jéton","token_type":"bearer","expires_in":60}"#.into(),
            "b64token",
        ),
        (
            format!(r#"{{"access_token":"{huge}","token_type":"bearer","expires_in":60}}"#),
            "allowed",
        ),
        (
            r#"{"access_token":"","token_type":"bearer","expires_in":60}"#.into(),
            "empty",
        ),
        (
            r#"{"access_token":"abc","token_type":"mac","expires_in":60}"#.into(),
            "token_type",
        ),
        (
            r#"{"access_token":"abc","token_type":"bearer","expires_in":0}"#.into(),
            "positive",
        ),
        (
            r#"{"access_token":"abc","token_type":"bearer","expires_in":-5}"#.into(),
            "positive",
        ),
        (
            r#"{"access_token":"abc","token_type":"bearer","expires_in":"soon"}"#.into(),
            "not a number",
        ),
        (oversized_body, "larger than"),
    ];
    for (reply, why) in cases {
        let (message, logs) =
            request_without_a_token(Some(TokenFailure::Body(reply.clone())), false).await;
        let short: String = reply.chars().take(60).collect();
        assert!(message.contains("invalid response"), "{short}: {message}");
        assert!(logs.contains(why), "{short}: the log should say `{why}`");
        assert!(
            !logs.contains("X-Evil"),
            "{short}: the token never reached a log"
        );
    }
}

#[tokio::test]
async fn an_absurd_token_lifetime_is_clamped_to_a_day() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    // A well-formed token with a lifetime of ~31 700 years.
    mock.set_token_failure(Some(TokenFailure::Body(
        r#"{"access_token":"forever-token","token_type":"bearer","expires_in":1000000000000}"#
            .into(),
    )));
    let proxy = start_proxy(&fast_token_config(&mock.base_url(), "")).await;
    wait_ready(proxy.admin_addr).await;
    let (_, _, body) = get(proxy.admin_addr, "/tokens", &[]).await;
    let tokens = json(&body);
    let expires = tokens["clients"]["erp-sync"]["expires_in_seconds"]
        .as_u64()
        .unwrap_or_else(|| panic!("no expiry in {tokens}"));
    assert!(
        expires <= 24 * 3600 && expires > 23 * 3600,
        "clamped to 24 h: {expires}"
    );
    assert!(!String::from_utf8_lossy(&body).contains("forever-token"));
}

#[tokio::test]
async fn requests_waiting_on_a_hung_token_endpoint_share_one_attempt() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    mock.set_token_failure(Some(TokenFailure::Hang));
    let proxy = start_proxy(&fast_token_config(&mock.base_url(), "")).await;
    let addr = proxy.proxy_addr;
    let started = Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(async move {
                get(addr, "/api/invoices", &[("x-coupa-api-key", KEY)])
                    .await
                    .0
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the token request timeout: {:?}",
        started.elapsed()
    );
    let asked = mock.token_requests();
    assert!(
        asked <= 2,
        "one shared attempt (plus the refresher's), not 50: {asked}"
    );
}

// ---------------------------------------------------------------------------------
// Coupa misbehaving

/// A proxy whose API instance is the raw upstream and whose token endpoint is a mock.
async fn proxy_to_raw(
    extra: &str,
    canary: bool,
) -> (
    RawUpstream,
    keybridge::cli::mock::MockHandle,
    keybridge::runtime::Running,
) {
    let raw = RawUpstream::start().await;
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let mut config = TestConfig::standard(&raw.base_url()).merge(extra);
    if canary {
        config = config
            .set("integrations[0].mode", "canary")
            .set("integrations[0].canary_percent", 100);
    }
    let yaml = config.yaml();
    let proxy = start_proxy(&with_token_url(&yaml, &mock.base_url())).await;
    wait_ready(proxy.admin_addr).await;
    (raw, mock, proxy)
}

const SHORT_UPSTREAM: &str = "upstream:\n  response_timeout: 1s\n  connect_timeout: 500ms\n";

#[tokio::test]
async fn coupa_faults_give_502_or_504_promptly_and_the_pool_recovers() {
    let (raw, _mock, proxy) = proxy_to_raw(SHORT_UPSTREAM, false).await;
    let client = client();
    let key = [("x-coupa-api-key", KEY)];
    let cases = [
        ("/api/hang", StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
        (
            "/api/reset-before-head",
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
        ),
        (
            "/api/close-before-head",
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
        ),
        (
            "/api/two-lengths",
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
        ),
        (
            "/api/cl-te",
            StatusCode::BAD_GATEWAY,
            "upstream_bad_framing",
        ),
    ];
    for (path, want, code) in cases {
        let started = Instant::now();
        let (status, _, body) = send_with(
            &client,
            Method::GET,
            proxy.proxy_addr,
            path,
            &key,
            bytes::Bytes::new(),
        )
        .await;
        assert_eq!(status, want, "{path}: {}", String::from_utf8_lossy(&body));
        assert_eq!(json(&body)["error"], code, "{path}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{path} answered in {:?}",
            started.elapsed()
        );
        // The same client (same pooled connection to keybridge) and keybridge's pool
        // to Coupa both carry on.
        let (status, _, _) = send_with(
            &client,
            Method::GET,
            proxy.proxy_addr,
            "/api/ok",
            &key,
            bytes::Bytes::new(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "after {path}");
    }
    assert_eq!(raw.hits("/api/hang"), 1, "a timed-out GET is not retried");
}

#[tokio::test]
async fn a_response_cut_short_by_coupa_never_desynchronises_the_caller() {
    let (_raw, _mock, proxy) = proxy_to_raw(SHORT_UPSTREAM, false).await;
    for path in [
        "/api/close-mid-body",
        "/api/reset-mid-body",
        "/api/bad-chunk",
    ] {
        // Two pipelined requests: the first response is cut short by Coupa. keybridge
        // has already sent its head, so it must close the connection rather than let the
        // second response be read as the rest of the first body.
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\n\r\n\
             GET /api/ok HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\n\r\n"
        );
        let (out, closed) = raw_exchange_bytes(proxy.proxy_addr, request.as_bytes()).await;
        assert!(closed, "{path}: keybridge closed the caller's connection");
        let text = String::from_utf8_lossy(&out);
        assert!(
            !text.contains("approved"),
            "{path}: the second response must not follow a truncated body: {text:.300}"
        );
        let head_end = text.find("\r\n\r\n").map_or(0, |i| i + 4);
        assert!(
            out.len() - head_end < 10_000,
            "{path}: the body is visibly incomplete"
        );
    }
    // The proxy is healthy afterwards.
    let (status, _, _) = get(proxy.proxy_addr, "/api/ok", &[("x-coupa-api-key", KEY)]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn requests_are_replayed_only_after_coupa_refuses_them() {
    let (raw, _mock, proxy) = proxy_to_raw(SHORT_UPSTREAM, true).await;
    let key = [
        ("x-coupa-api-key", KEY),
        ("content-type", "application/json"),
    ];
    let post = |path: &'static str| {
        let addr = proxy.proxy_addr;
        async move {
            send(Method::POST, addr, path, &key, r#"{"amount":1}"#)
                .await
                .0
        }
    };
    // Refused before acting: retried once with the key.
    assert_eq!(post("/api/unauthorized").await, StatusCode::UNAUTHORIZED);
    let tries: Vec<_> = raw
        .seen()
        .into_iter()
        .filter(|s| s.path == "/api/unauthorized")
        .collect();
    assert_eq!(tries.len(), 2, "OAuth, then once with the key");
    assert!(tries[0].header("authorization").is_some());
    assert_eq!(tries[1].header("x-coupa-api-key"), Some(KEY));

    // Timed out or reset after the body was sent: Coupa may have acted. Never again.
    assert_eq!(post("/api/hang").await, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        post("/api/reset-before-head").await,
        StatusCode::BAD_GATEWAY
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(raw.hits("/api/hang"), 1);
    assert_eq!(raw.hits("/api/reset-before-head"), 1);
}

#[tokio::test]
async fn a_coupa_that_never_accepts_the_connection_is_a_prompt_502() {
    // A listener whose accept queue is full: the kernel drops further SYNs, so a
    // connect hangs until keybridge's connect timeout gives up.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(200), s.connect(addr)).await {
            fillers.push(c);
        }
    }
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let extra = "upstream:\n  connect_timeout: 300ms\n  response_timeout: 10s\n";
    let yaml = config_yaml(&format!("http://{addr}"), extra);
    let proxy = start_proxy(&with_token_url(&yaml, &mock.base_url())).await;
    wait_ready(proxy.admin_addr).await;
    let started = Instant::now();
    let (status, _, body) = get(
        proxy.proxy_addr,
        "/api/invoices",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    let took = started.elapsed();
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(json(&body)["error"], "upstream_unreachable");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "the connect timeout, not the response timeout, ended it: {took:?}"
    );
    let logs = logs();
    let line = logs
        .lines()
        .find(|l| l.contains("upstream_unreachable") || l.contains("unreachable"))
        .unwrap_or("");
    assert!(line.contains("timed out after 300ms"), "{line}");
    drop(listener);
}

/// Sends a POST head and the first KB of a 100 KB body, then waits for `arrived`;
/// returns whether Coupa saw the request before the caller sent the rest.
async fn head_reaches_coupa_before_the_body_ends(canary: bool) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (raw, _mock, proxy) = proxy_to_raw(SHORT_UPSTREAM, canary).await;
    let mut s = tokio::net::TcpStream::connect(proxy.proxy_addr)
        .await
        .unwrap();
    let head = format!(
        "POST /api/upload HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[b'x'; 1000]).await.unwrap();
    let mut early = false;
    for _ in 0..40 {
        if raw.hits("/api/upload") == 1 {
            early = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.write_all(&[b'x'; 99_000]).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "canary={canary}: {}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(raw.hits("/api/upload"), 1);
    proxy.shutdown().await;
    early
}

#[tokio::test]
async fn oauth_uploads_stream_to_coupa_and_only_canary_buffers_for_its_replay() {
    assert!(
        head_reaches_coupa_before_the_body_ends(false).await,
        "oauth: Coupa gets the request while the body is still arriving (no buffering)"
    );
    assert!(
        !head_reaches_coupa_before_the_body_ends(true).await,
        "canary: a body under replay_body_limit is buffered so a 401/403 can be replayed"
    );
}

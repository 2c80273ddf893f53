//! Token lifecycle stories: one fetch for many callers, refresh ahead of expiry,
//! Coupa's settle delay, and what callers see when the token endpoint fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use keybridge::token::TokenCache;
use support::*;

#[tokio::test]
async fn two_hundred_concurrent_requests_on_a_cold_cache_cause_one_fetch() {
    // The token endpoint is slow, so all 200 requests arrive before any token exists.
    let mock = mock()
        .token_delay(Duration::from_millis(400))
        .start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    // 10 000 requests as fast as they go: not a test of the instance's rate limit.
    let proxy = start_proxy(&config_yaml(
        &mock.base_url(),
        "instances: {prod: {rate_limit: off}}",
    ))
    .await;
    let addr = proxy.proxy_addr;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(async move {
                get(
                    addr,
                    &format!("/api/invoices/{i}"),
                    &[("x-coupa-api-key", KEY)],
                )
                .await
                .0
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        mock.token_requests(),
        1,
        "exactly one token fetch for 200 cold requests"
    );

    let client = client();
    for i in 0..10_000 {
        let (status, _, _) = send_with(
            &client,
            Method::GET,
            addr,
            &format!("/api/invoices/{i}"),
            &[("x-coupa-api-key", KEY)],
            bytes::Bytes::new(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "request {i}");
    }
    assert_eq!(
        mock.token_requests(),
        1,
        "still one fetch after 10 000 more requests"
    );

    let token = mock.requests()[0].headers["authorization"]
        .to_str()
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_owned();
    assert!(!logs().contains(&token), "the token must never be logged");
}

#[tokio::test]
async fn the_cache_alone_collapses_concurrent_fetches() {
    let mock = mock()
        .token_delay(Duration::from_millis(200))
        .start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let config = parse(&config_yaml(&mock.base_url(), ""));
    let http = keybridge::upstream::build_client(&config.upstream).unwrap();
    let cache = TokenCache::new(
        config.clients.values(),
        http,
        config.token.clone(),
        std::sync::Arc::new(keybridge::metrics::Metrics::new()),
        None,
    );
    let barrier = Arc::new(tokio::sync::Barrier::new(200));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (cache, barrier) = (cache.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                cache.get("erp-sync").await.map(|t| t.serial)
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Ok(1), "everyone gets the one token");
    }
    assert_eq!(mock.token_requests(), 1);
}

#[tokio::test]
async fn short_lived_tokens_are_refreshed_before_expiry_without_failures() {
    let (mock, proxy) = start_pair(mock().expires_in(Duration::from_secs(2)), "").await;
    let n = hammer(proxy.proxy_addr, Duration::from_secs(5)).await;
    assert!(n > 100);
    // Refresh at half-life: ~1 fetch per second, and none on the request path.
    let fetches = mock.token_requests();
    assert!(
        (4..=8).contains(&fetches),
        "{fetches} fetches in 5 s of 2 s tokens"
    );
    assert!(mock.requests().iter().all(|r| r.status == 200));
}

#[tokio::test]
async fn tokens_younger_than_coupas_settle_time_are_never_used() {
    // This mock refuses tokens younger than 1 s, as Coupa may.
    let m = mock()
        .expires_in(Duration::from_secs(3))
        .settle(Duration::from_secs(1));
    let mock = m.start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let yaml = TestConfig::standard(&mock.base_url())
        .set("token.settle_delay", "1s")
        .yaml();
    let proxy = start_proxy(&yaml).await;
    // Straight away, before readiness: the first requests wait for the token to settle.
    let n = hammer(proxy.proxy_addr, Duration::from_secs(7)).await;
    assert!(n > 100);
    assert!(mock.token_requests() >= 3, "tokens were rotated");
    assert!(
        mock.requests().iter().all(|r| r.status == 200),
        "Coupa never saw an unsettled token"
    );
}

/// A token endpoint whose tokens expire before they could settle and be replaced is an
/// endpoint error: named in `/tokens`, counted, backed off, answered at once — never a
/// fetch loop with requests waiting on it.
#[tokio::test]
async fn tokens_that_expire_before_they_settle_are_an_endpoint_error_not_a_loop() {
    let mock = mock()
        .expires_in(Duration::from_secs(3))
        .start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let yaml = TestConfig::standard(&mock.base_url())
        .set("token.settle_delay", "5s")
        .yaml();
    let proxy = start_proxy(&yaml).await;
    let asked = std::time::Instant::now();
    let (status, _, body) = get(
        proxy.proxy_addr,
        "/api/invoices/1",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "answered at once, not after waiting on a settle: {:?}",
        asked.elapsed()
    );
    let (_, _, body) = get(proxy.admin_addr, "/tokens", &[]).await;
    let client = &json(&body)["clients"]["erp-sync"];
    assert!(
        client["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("too short for token.settle_delay")),
        "{client}"
    );
    assert!(client["fetches_failed"].as_u64().unwrap() >= 1, "{client}");
    assert_eq!(client["fetches_ok"], 0, "{client}");
    // Backed off (1 s, 2 s, 4 s, ...), not refetched every settle delay.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        mock.token_requests() <= 4,
        "{} fetches",
        mock.token_requests()
    );
    assert_eq!(mock.api_hits(), 0, "no unusable token reached Coupa");
}

#[tokio::test]
async fn readiness_waits_for_settled_tokens() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let yaml = TestConfig::standard(&mock.base_url())
        .set("token.settle_delay", "700ms")
        .yaml();
    let proxy = start_proxy(&yaml).await;
    let (status, _, body) = get(proxy.admin_addr, "/readyz", &[]).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(json(&body)["clients"]["erp-sync"]["ready"], false);
    let (status, _, _) = get(proxy.admin_addr, "/healthz", &[]).await;
    assert_eq!(status, StatusCode::OK, "alive while not ready");
    tokio::time::sleep(Duration::from_millis(900)).await;
    let (status, _, body) = get(proxy.admin_addr, "/readyz", &[]).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(mock.token_requests(), 1, "the start-up fetch");
}

#[tokio::test]
async fn token_endpoint_down_gives_503_naming_the_client_without_the_secret() {
    let api = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let closed_addr = closed_addr().await;
    let yaml = with_token_url(
        &config_yaml(&api.base_url(), ""),
        &format!("http://{closed_addr}"),
    );
    let proxy = start_proxy(&yaml).await;
    let started = Instant::now();
    let (status, headers, body) = get(
        proxy.proxy_addr,
        "/api/invoices",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5), "bounded time");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["content-type"], "application/json");
    let text = String::from_utf8_lossy(&body).into_owned();
    let body = json(text.as_bytes());
    assert_eq!(body["error"], "token_unavailable");
    assert!(
        body["message"].as_str().unwrap().contains("`erp-sync`"),
        "{text}"
    );
    assert!(!text.contains(SECRET));
    assert_eq!(api.api_hits(), 0, "nothing forwarded without a token");
    let (status, _, _) = get(proxy.admin_addr, "/readyz", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let logs = logs();
    assert!(logs.contains("token fetch failed"));
    assert!(!logs.contains(SECRET), "secret in logs");
}

#[tokio::test]
async fn a_rejected_secret_gives_503_and_logs_coupas_error_but_not_the_secret() {
    let m = keybridge::cli::mock::MockCoupa::new().client(
        "erp-sync-client",
        "the-real-secret",
        &["core.invoice.read"],
    );
    let mock = m.start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let proxy = start_proxy(&config_yaml(&mock.base_url(), "")).await;
    let (status, _, body) = get(
        proxy.proxy_addr,
        "/api/invoices",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("`erp-sync`") && text.contains("invalid_client"),
        "{text}"
    );
    assert!(!text.contains(SECRET) && !text.contains("the-real-secret"));
    let logs = logs();
    assert!(
        logs.contains("invalid_client") && logs.contains("Client authentication failed"),
        "Coupa's error and description are logged"
    );
    assert!(!logs.contains(SECRET));
    let (_, _, ready) = get(proxy.admin_addr, "/readyz", &[]).await;
    assert!(String::from_utf8_lossy(&ready).contains("invalid_client"));
}

#[tokio::test]
async fn basic_client_auth_and_scopeless_requests_work() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    // No scopes configured: Coupa grants all of the client's scopes (incl. core.user.read).
    let yaml = TestConfig::standard(&mock.base_url())
        .remove("clients.erp-sync.scopes")
        .set("clients.erp-sync.auth", "basic")
        .yaml();
    let proxy = start_proxy(&yaml).await;
    let (status, _, _) = get(
        proxy.proxy_addr,
        "/api/users?limit=1",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mock.token_grants(), 1);
}

#[tokio::test]
async fn a_scope_the_client_lacks_is_reported_as_invalid_scope() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let yaml = TestConfig::standard(&mock.base_url())
        .set(
            "clients.erp-sync.scopes",
            ["core.invoice.read", "core.supplier.read"],
        )
        .yaml();
    let proxy = start_proxy(&yaml).await;
    let (status, _, body) = get(
        proxy.proxy_addr,
        "/api/invoices",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&body).contains("invalid_scope"));
    assert!(
        logs().contains("core.supplier.read"),
        "Coupa's description names the scope"
    );
}

#[tokio::test]
async fn a_rejected_secret_is_not_retried_on_every_request() {
    let m = keybridge::cli::mock::MockCoupa::new().client("erp-sync-client", "rotated-secret", &[]);
    let mock = m.start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let proxy = start_proxy(&config_yaml(&mock.base_url(), "")).await;
    let client = client();
    let started = Instant::now();
    for _ in 0..50 {
        let (status, _, _) = send_with(
            &client,
            Method::GET,
            proxy.proxy_addr,
            "/api/invoices",
            &[("x-coupa-api-key", KEY)],
            bytes::Bytes::new(),
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failures answer fast"
    );
    let asked = mock.token_requests();
    assert!(
        asked <= 4,
        "backoff between token requests, not one per request: {asked}"
    );
}

#[tokio::test]
async fn a_revoked_token_is_replaced_once_even_under_a_401_storm() {
    let (mock, proxy) = start_pair(mock(), "").await;
    let (status, _, _) = get(
        proxy.proxy_addr,
        "/api/invoices/1",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mock.token_requests(), 1);

    mock.revoke_all_tokens();
    let addr = proxy.proxy_addr;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            tokio::spawn(async move {
                get(
                    addr,
                    &format!("/api/invoices/{i}"),
                    &[("x-coupa-api-key", KEY)],
                )
                .await
                .0
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(
            t.await.unwrap(),
            StatusCode::OK,
            "each refused request is retried once with the new token"
        );
    }
    assert_eq!(
        mock.token_requests(),
        2,
        "one refetch for the whole 401 storm"
    );
    let refused = mock.requests().iter().filter(|r| r.status == 401).count();
    assert!(refused <= 50, "no request was tried more than twice");
    assert_eq!(mock.requests().len(), 1 + 50 + refused);
}

/// The same with a settle delay, as in production: the refused token keeps serving
/// while its replacement settles, and a request Coupa answered 401 waits (bounded by
/// `settle_delay` + `request_timeout`) for the replacement and is sent again with it,
/// instead of passing the 401 back.
#[tokio::test]
async fn after_a_revocation_every_request_is_answered_with_the_one_replacement() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let yaml = TestConfig::standard(&mock.base_url())
        .set("token.settle_delay", "1s")
        .yaml();
    let proxy = start_proxy(&yaml).await;
    wait_ready(proxy.admin_addr).await;
    let (status, _, _) = get(
        proxy.proxy_addr,
        "/api/invoices/1",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Older than the settle delay, so a refusal replaces it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    mock.revoke_all_tokens();
    let addr = proxy.proxy_addr;
    let started = Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            tokio::spawn(async move {
                get(
                    addr,
                    &format!("/api/invoices/{i}"),
                    &[("x-coupa-api-key", KEY)],
                )
                .await
                .0
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        mock.token_requests(),
        2,
        "one replacement for the whole storm"
    );
}

/// Finding 3 of the hostile-traffic review: every 401 threw the shared token away, so
/// one key holder provoking 401s made a token fetch each time, and every other
/// integration on that client waited out the settle delay again.
#[tokio::test]
async fn ten_401s_provoked_by_one_key_cause_at_most_two_fetches_and_no_one_else_waits() {
    const OTHER: &str = "other-integration-key-0000000000000000000";
    let mock = mock()
        .refuse_path("/api/refuse-me")
        .start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let yaml = TestConfig::standard(&mock.base_url())
        .set("token.settle_delay", "1s")
        .push(
            "integrations",
            serde_json::json!({"name": "other", "api_key": OTHER, "client": "erp-sync"}),
        )
        .yaml();
    let proxy = start_proxy(&yaml).await;
    wait_ready(proxy.admin_addr).await;
    assert_eq!(mock.token_requests(), 1);

    // The other integration keeps calling and measures its slowest request.
    let addr = proxy.proxy_addr;
    let other = tokio::spawn(async move {
        let client = client();
        let until = Instant::now() + Duration::from_secs(3);
        let mut slowest = Duration::ZERO;
        while Instant::now() < until {
            let started = Instant::now();
            let (status, _, _) = send_with(
                &client,
                Method::GET,
                addr,
                "/api/invoices/1",
                &[("x-coupa-api-key", OTHER)],
                bytes::Bytes::new(),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            slowest = slowest.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        slowest
    });
    for _ in 0..10 {
        let (status, _, _) = get(addr, "/api/refuse-me", &[("x-coupa-api-key", KEY)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "Coupa's 401 passes back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let slowest = other.await.unwrap();
    assert!(
        mock.token_requests() <= 2,
        "{} token requests for ten 401s",
        mock.token_requests()
    );
    assert!(
        slowest < Duration::from_millis(500),
        "the other integration waited {slowest:?} (the settle delay is 1 s)"
    );
}

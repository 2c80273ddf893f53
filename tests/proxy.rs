//! The key-swapping proxy, end to end: an integration sends its legacy key to
//! keybridge and Coupa (the mock) sees only an OAuth bearer.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use keybridge::cli::mock::MockAuth;
use support::*;

#[tokio::test]
async fn get_reaches_coupa_with_the_bearer_only_and_comes_back_unchanged() {
    let (mock, proxy) = start_pair(mock(), "").await;
    let (status, headers, body) = get(
        proxy.proxy_addr,
        "/api/invoices/42",
        &[
            ("x-coupa-api-key", KEY),
            ("authorization", "Basic c29tZW9uZTplbHNl"),
            ("accept", "application/xml"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-mock-coupa"], "1", "Coupa's headers pass back");

    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(
        r.auth,
        MockAuth::Bearer {
            client_id: "erp-sync-client".into()
        }
    );
    assert!(
        !r.headers.contains_key("x-coupa-api-key"),
        "key must not reach Coupa"
    );
    let auths: Vec<_> = r.headers.get_all("authorization").iter().collect();
    assert_eq!(auths.len(), 1, "exactly one Authorization");
    assert!(auths[0].to_str().unwrap().starts_with("Bearer mock."));
    assert_eq!(r.headers["accept"], "application/xml", "Accept untouched");
    assert_eq!(r.headers["host"], mock.addr.to_string());
    assert_eq!(r.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(
        sha256_hex(&body),
        r.response_sha256,
        "response body byte-identical"
    );
}

#[tokio::test]
async fn a_5mb_post_streams_through_byte_identical() {
    let (mock, proxy) = start_pair(mock(), "").await;
    let payload: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i * 31 % 251) as u8).collect();
    let (status, headers, body) = send(
        Method::POST,
        proxy.proxy_addr,
        "/api/invoices",
        &[
            ("x-coupa-api-key", KEY),
            ("content-type", "application/xml"),
        ],
        payload.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/xml");
    let r = &mock.requests()[0];
    assert_eq!(r.body_len, payload.len());
    assert_eq!(r.body_sha256, sha256_hex(&payload), "upload arrives intact");
    assert_eq!(r.headers["content-length"], payload.len().to_string());
    assert_eq!(
        r.headers["content-type"], "application/xml",
        "Content-Type untouched"
    );
    assert!(!r.headers.contains_key("x-coupa-api-key"));
    assert_eq!(body.len(), payload.len());
    assert!(body == payload, "echoed body byte-identical");
}

#[tokio::test]
async fn unknown_or_missing_key_is_rejected_without_reaching_coupa() {
    let (mock, proxy) = start_pair(mock(), "").await;
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("x-coupa-api-key", "not-a-configured-key")],
            "unknown_api_key",
        ),
        (&[], "missing_api_key"),
        (
            &[("authorization", "Basic dXNlcjpwdw==")],
            "missing_api_key",
        ),
    ];
    for (headers, code) in cases {
        let (status, h, body) = get(proxy.proxy_addr, "/api/invoices", headers).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{code}");
        assert_eq!(h["content-type"], "application/json");
        let body = json(&body);
        assert_eq!(body["error"], *code);
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(
            !body.to_string().contains("not-a-configured-key"),
            "key echoed: {body}"
        );
    }
    assert_eq!(mock.api_hits(), 0, "nothing may be forwarded");
}

#[tokio::test]
async fn absolute_form_targets_and_forged_hosts_still_go_to_the_instance() {
    let (mock, proxy) = start_pair(mock(), "").await;
    let requests = [
        format!(
            "GET http://evil.example/api/invoices/1 HTTP/1.1\r\nHost: evil.example\r\nX-COUPA-API-KEY: {KEY}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET /api/invoices/2 HTTP/1.1\r\nHost: evil\r\nX-COUPA-API-KEY: {KEY}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET https://evil.example:8443/api/invoices/3 HTTP/1.1\r\nHost: 169.254.169.254\r\nX-COUPA-API-KEY: {KEY}\r\nConnection: close\r\n\r\n"
        ),
    ];
    for raw in &requests {
        let reply = raw_exchange(proxy.proxy_addr, raw.as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
    let seen = mock.requests();
    assert_eq!(
        seen.len(),
        3,
        "every request went to the configured instance"
    );
    for (r, want) in seen
        .iter()
        .zip(["/api/invoices/1", "/api/invoices/2", "/api/invoices/3"])
    {
        assert_eq!(r.target, want);
        assert_eq!(r.headers["host"], mock.addr.to_string());
    }
}

#[tokio::test]
async fn coupa_query_syntax_passes_byte_exact() {
    let (mock, proxy) = start_pair(mock(), "").await;
    let targets = [
        "/api/invoices?updated_at[gt]=2024-01-01T00:00:00Z&status[in]=approved,pending",
        "/api/invoices?fields=[%22id%22,%22invoice_number%22,{%22invoice_lines%22:[%22id%22]}]",
        "/api/invoices?fields=[%22id%22,{%22supplier%22:[%22name%22]}]&limit=50&offset=100",
        "/api/invoices?filter={a|b}&x=[1]",
        "/api/invoices/7?return_object=limited&supplier[name][starts_with]=Acme%20Co",
    ];
    for t in targets {
        let raw = format!(
            "GET {t} HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\nConnection: close\r\n\r\n"
        );
        let reply = raw_exchange(proxy.proxy_addr, raw.as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{t}: {reply}");
    }
    let seen: Vec<String> = mock.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(seen, targets);

    // A raw `"` (HttpURLConnection, `curl -g`) is answered, and Coupa receives it
    // percent-encoded, as a browser would send it (tests/clients.rs has the rest).
    let raw = format!(
        "GET /api/invoices?fields=[\"id\"] HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\nConnection: close\r\n\r\n"
    );
    let reply = raw_exchange(proxy.proxy_addr, raw.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(
        mock.requests().last().unwrap().target,
        "/api/invoices?fields=[%22id%22]"
    );
}

#[tokio::test]
async fn connection_header_cannot_drop_the_bearer_or_keep_the_key() {
    let (mock, proxy) = start_pair(mock(), "").await;
    let raw = format!(
        "GET /api/invoices/1 HTTP/1.1\r\nHost: x\r\nConnection: close, Authorization, X-COUPA-API-KEY\r\nX-COUPA-API-KEY: {KEY}\r\nX_COUPA_API_KEY: {KEY}\r\nAuthorization: Basic eDp5\r\n\r\n"
    );
    let reply = raw_exchange(proxy.proxy_addr, raw.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let r = &mock.requests()[0];
    assert!(matches!(r.auth, MockAuth::Bearer { .. }));
    assert_eq!(r.headers.get_all("authorization").iter().count(), 1);
    assert!(!r.headers.contains_key("x-coupa-api-key"));
    assert!(!r.headers.contains_key("x_coupa_api_key"));
    assert!(!r.headers.contains_key("connection"));
}

#[tokio::test]
async fn long_jwt_bearers_reach_coupa() {
    let (mock, proxy) = start_pair(mock().token_length(16 * 1024 + 100), "").await;
    let (status, _, _) = get(
        proxy.proxy_addr,
        "/api/invoices/1",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let auth = mock.requests()[0].headers["authorization"].len();
    assert!(auth > 16 * 1024, "bearer header was {auth} bytes");
}

#[tokio::test]
async fn coupa_errors_pass_back_unchanged() {
    let (mock, proxy) = start_pair(mock(), "").await;
    // The client lacks core.supplier.read: Coupa's own 403 comes back as is.
    let (status, _, body) = get(
        proxy.proxy_addr,
        "/api/suppliers",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(sha256_hex(&body), mock.requests()[0].response_sha256);
}

#[tokio::test]
async fn unreachable_coupa_gives_502_and_a_hanging_one_504() {
    // Nothing listens on this port.
    let closed_addr = closed_addr().await;
    let token_mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let yaml = with_token_url(
        &config_yaml(&format!("http://{closed_addr}"), ""),
        &token_mock.base_url(),
    );
    let proxy = start_proxy(&yaml).await;
    wait_ready(proxy.admin_addr).await;
    let (status, _, body) = get(
        proxy.proxy_addr,
        "/api/invoices",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(json(&body)["error"], "upstream_unreachable");
    proxy.shutdown().await;

    // An upstream that accepts and never answers.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let _holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    let yaml = with_token_url(
        &config_yaml(
            &format!("http://{hang_addr}"),
            "upstream:\n  response_timeout: 300ms\n",
        ),
        &token_mock.base_url(),
    );
    let proxy = start_proxy(&yaml).await;
    wait_ready(proxy.admin_addr).await;
    let started = std::time::Instant::now();
    let (status, _, body) = get(
        proxy.proxy_addr,
        "/api/invoices",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(json(&body)["error"], "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn http2_callers_are_served_too() {
    let (mock, proxy) = start_pair(mock(), "").await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let (status, _, _) = send_with(
        &h2,
        Method::GET,
        proxy.proxy_addr,
        "/api/invoices/9",
        &[("x-coupa-api-key", KEY)],
        Bytes::new(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(matches!(mock.requests()[0].auth, MockAuth::Bearer { .. }));
}

#[tokio::test]
async fn connect_is_refused_with_allow_and_an_upgrade_offer_is_ignored() {
    let (mock, proxy) = start_pair(mock(), "").await;
    let reply = raw_exchange(
        proxy.proxy_addr,
        format!("CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\nX-COUPA-API-KEY: {KEY}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
    assert!(
        reply.contains("\r\nallow: GET, HEAD, POST, PUT, PATCH, DELETE\r\n"),
        "a 405 names what is allowed (RFC 9110 §15.5.6): {reply}"
    );
    assert_eq!(mock.api_hits(), 0);
    // An h2c offer (Java's HttpClient makes one on every request): served over HTTP/1.1,
    // never switched, and nothing of the offer reaches Coupa.
    let reply = raw_exchange(
        proxy.proxy_addr,
        format!("GET /api/invoices HTTP/1.1\r\nHost: x\r\nConnection: close, Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nX-COUPA-API-KEY: {KEY}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    for name in ["upgrade", "http2-settings", "connection"] {
        assert!(seen[0].headers.get(name).is_none(), "{name} reached Coupa");
    }
}

#[tokio::test]
async fn empty_writes_carry_content_length_zero() {
    let (mock, proxy) = start_pair(mock(), "").await;
    let (status, _, _) = send(
        Method::PUT,
        proxy.proxy_addr,
        "/api/invoices/7/submit",
        &[("x-coupa-api-key", KEY)],
        Bytes::new(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mock.requests()[0].headers["content-length"], "0");
}

#[tokio::test]
async fn two_key_headers_are_refused() {
    let (mock, proxy) = start_pair(mock(), "").await;
    let raw = format!(
        "GET /api/invoices HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\nX-COUPA-API-KEY: other\r\nConnection: close\r\n\r\n"
    );
    let reply = raw_exchange(proxy.proxy_addr, raw.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("ambiguous_api_key"));
    assert_eq!(mock.api_hits(), 0);
}

/// Found by the attacker review: to servers that map header names to CGI-style variables
/// (Rack, PHP), `Transfer_Encoding` is `Transfer-Encoding`. Every header with an
/// underscore in its name is dropped, as nginx does by default, so none can re-frame the
/// request, override the method or the host, or undo a removal.
#[tokio::test]
async fn underscore_spellings_of_any_header_never_reach_coupa() {
    let (mock, proxy) = start_pair(mock(), "").await;
    let raw = format!(
        "POST /api/invoices HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\nContent-Length: 5\r\n\
         Transfer_Encoding: chunked\r\nX_Forwarded_Host: evil.example\r\nX_HTTP_Method_Override: DELETE\r\n\
         X_Forwarded_For: 10.9.9.9\r\nProxy_Authorization: Basic eDp5\r\nX_Custom_Thing: 1\r\n\
         X-Custom-Thing: kept\r\nConnection: close\r\n\r\nhello"
    );
    let reply = raw_exchange(proxy.proxy_addr, raw.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let seen = &mock.requests()[0];
    for (name, _) in &seen.headers {
        assert!(!name.as_str().contains('_'), "{name} reached Coupa");
    }
    assert_eq!(seen.headers["x-custom-thing"], "kept");
    assert_eq!(seen.body_len, 5);
    assert_eq!(seen.method, Method::POST);
}

//! Coupa is reached over TLS with verified certificates: an untrusted or mismatched
//! certificate fails closed (502, nothing sent), a trusted private CA works.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod support;

use std::path::Path;

use http::StatusCode;
use keybridge::cli::mock::MockAuth;
use support::tls_front::tls_front;
use support::*;

/// The standard config against `https_base` (HTTP/2 offered to it when `http2`), with
/// the token endpoint at `mock_url`.
fn yaml_for(mock_url: &str, https_base: &str, ca_file: Option<&Path>, http2: bool) -> String {
    let mut config = TestConfig::standard(https_base).set("upstream.http2", http2);
    if let Some(p) = ca_file {
        config = config.set("upstream.ca_file", p.display().to_string());
    }
    with_token_url(&config.yaml(), mock_url)
}

#[tokio::test]
async fn an_untrusted_certificate_fails_closed() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let front = tls_front("127.0.0.1:0", mock.addr).await;
    let proxy = start_proxy(&yaml_for(
        &mock.base_url(),
        &format!("https://{front}"),
        None,
        false,
    ))
    .await;
    wait_ready(proxy.admin_addr).await;
    let (status, _, body) = get(
        proxy.proxy_addr,
        "/api/invoices/1",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        mock.api_hits(),
        0,
        "no request may cross an unverified connection"
    );
    assert!(
        logs().contains("UnknownIssuer")
            || logs().contains("unknown issuer")
            || logs().contains("certificate"),
        "the log says why"
    );
}

#[tokio::test]
async fn a_trusted_private_ca_works_over_h2_and_a_name_mismatch_fails() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let front = tls_front("127.0.0.1:0", mock.addr).await;
    let proxy = start_proxy(&yaml_for(
        &mock.base_url(),
        &format!("https://{front}"),
        Some(&fixture("ca.pem")),
        true,
    ))
    .await;
    wait_ready(proxy.admin_addr).await;
    let (status, _, _) = get(
        proxy.proxy_addr,
        "/api/invoices/1",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = mock.requests();
    assert!(matches!(seen[0].auth, MockAuth::Bearer { .. }));
    assert_eq!(seen[0].version, http::Version::HTTP_2, "ALPN chose h2");
    proxy.shutdown().await;

    // Without `upstream.http2`, the same Coupa is spoken to over HTTP/1.1.
    let proxy = start_proxy(&yaml_for(
        &mock.base_url(),
        &format!("https://{front}"),
        Some(&fixture("ca.pem")),
        false,
    ))
    .await;
    wait_ready(proxy.admin_addr).await;
    let (status, _, _) = get(
        proxy.proxy_addr,
        "/api/invoices/1",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        mock.requests()[1].version,
        http::Version::HTTP_11,
        "ALPN offered only http/1.1"
    );
    proxy.shutdown().await;

    // Same CA, but the certificate does not name 127.0.0.2.
    let front2 = tls_front("127.0.0.2:0", mock.addr).await;
    let proxy = start_proxy(&yaml_for(
        &mock.base_url(),
        &format!("https://{front2}"),
        Some(&fixture("ca.pem")),
        true,
    ))
    .await;
    wait_ready(proxy.admin_addr).await;
    let (status, _, _) = get(
        proxy.proxy_addr,
        "/api/invoices/1",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(mock.api_hits(), 2, "nothing more reached Coupa");
}

/// Finding 6 of the hostile-traffic review: an HTTP/2 caller's trailers reached an
/// HTTP/2 Coupa after the bearer, carrying a key and a second Authorization.
#[tokio::test]
async fn a_callers_trailers_never_reach_an_http2_coupa() {
    use http_body_util::BodyExt as _;
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let front = tls_front("127.0.0.1:0", mock.addr).await;
    let proxy = start_proxy(&yaml_for(
        &mock.base_url(),
        &format!("https://{front}"),
        Some(&fixture("ca.pem")),
        true,
    ))
    .await;
    wait_ready(proxy.admin_addr).await;

    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-coupa-api-key", KEY.parse().unwrap());
    trailers.insert("authorization", "Basic ZXZpbDpldmls".parse().unwrap());
    trailers.insert("x-note", "harmless".parse().unwrap());
    let body = http_body_util::Full::new(bytes::Bytes::from_static(b"{\"a\":1}")).with_trailers(
        std::future::ready(Some(Ok::<_, std::convert::Infallible>(trailers))),
    );
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let request = http::Request::post(format!("http://{}/api/invoices", proxy.proxy_addr))
        .header("x-coupa-api-key", KEY)
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let response = h2.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let _ = response.into_body().collect().await.unwrap();

    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, http::Version::HTTP_2, "Coupa spoke h2");
    assert_eq!(
        &seen[0].body_sha256,
        &sha256_hex(b"{\"a\":1}"),
        "the body arrived"
    );
    assert!(matches!(seen[0].auth, MockAuth::Bearer { .. }));
    assert!(
        seen[0].trailers.is_none(),
        "trailers: {:?}",
        seen[0].trailers
    );
}

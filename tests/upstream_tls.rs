//! Coupa is reached over TLS with verified certificates: an untrusted or mismatched
//! certificate fails closed (502, nothing sent), a trusted private CA works.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http::StatusCode;
use keybridge::cli::mock::MockAuth;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use support::*;
use tokio::net::TcpListener;

/// Terminates TLS (cert for localhost/127.0.0.1, ALPN h2 + http/1.1) on `bind` and
/// relays the plaintext to `backend`.
async fn tls_front(bind: &str, backend: SocketAddr) -> SocketAddr {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(fixture("server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut plain = tokio::net::TcpStream::connect(backend).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

fn yaml_for(mock_url: &str, https_base: &str, ca_file: Option<&Path>) -> String {
    let extra = match ca_file {
        Some(p) => format!("upstream:\n  ca_file: {}\n", p.display()),
        None => String::new(),
    };
    with_token_url(&config_yaml(https_base, &extra), mock_url)
}

#[tokio::test]
async fn an_untrusted_certificate_fails_closed() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let front = tls_front("127.0.0.1:0", mock.addr).await;
    let proxy = start_proxy(&yaml_for(
        &mock.base_url(),
        &format!("https://{front}"),
        None,
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

    // Same CA, but the certificate does not name 127.0.0.2.
    let front2 = tls_front("127.0.0.2:0", mock.addr).await;
    let proxy = start_proxy(&yaml_for(
        &mock.base_url(),
        &format!("https://{front2}"),
        Some(&fixture("ca.pem")),
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
    assert_eq!(mock.api_hits(), 1, "nothing more reached Coupa");
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

//! Operating keybridge: hot reload without dropping requests, graceful shutdown, TLS on
//! the proxy listener, and the admin token.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use keybridge::cli::mock::{MockAuth, MockCoupa};
use support::*;

const SECOND_KEY: &str = "second-key-000000000000000000000000000000";

/// A config file on disk (reload reads it), started with the file remembered.
async fn start_from_file(yaml: &str) -> (std::path::PathBuf, keybridge::runtime::Running) {
    let _ = logs(); // install the log capture
    let path = temp_path("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let source = keybridge::runtime::ConfigSource {
        path: path.clone(),
        env: Arc::new(env()),
    };
    let config = parse(yaml);
    support::leak::note_secrets(&config);
    let running = keybridge::runtime::start_with_file(config, Some(source))
        .await
        .unwrap();
    support::leak::watch(&running);
    wait_ready(running.admin_addr).await;
    (path, running)
}

async fn reload(admin: std::net::SocketAddr) -> (StatusCode, serde_json::Value) {
    let (status, _, body) = send(
        Method::POST,
        admin,
        "/reload",
        &[("content-type", "application/json")],
        Bytes::new(),
    )
    .await;
    (status, json(&body))
}

/// Adds client `second` (on `instance`, with `secret`) and integration `second` using it.
fn with_second_integration(config: TestConfig, instance: &str, secret: &str) -> TestConfig {
    config
        .set(
            "clients.second",
            serde_json::json!({
                "instance": instance,
                "client_id": "second-client",
                "client_secret": secret,
                "scopes": ["core.invoice.read"],
            }),
        )
        .push(
            "integrations",
            serde_json::json!({"name": "second", "api_key": SECOND_KEY, "client": "second"}),
        )
}

#[tokio::test]
async fn reload_adds_an_integration_and_keeps_unchanged_tokens() {
    let mock = mock()
        .client("second-client", "second-secret", &["core.invoice.read"])
        .start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let yaml = config_yaml(&mock.base_url(), "");
    let (path, proxy) = start_from_file(&yaml).await;
    assert_eq!(
        get(
            proxy.proxy_addr,
            "/api/invoices/1",
            &[("x-coupa-api-key", SECOND_KEY)]
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(mock.token_requests(), 1);

    // Requests keep flowing during the reload.
    let addr = proxy.proxy_addr;
    let traffic = tokio::spawn(async move {
        let client = client();
        for _ in 0..300 {
            let (status, _, _) = send_with(
                &client,
                Method::GET,
                addr,
                "/api/invoices/1",
                &[("x-coupa-api-key", KEY)],
                Bytes::new(),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "no request fails across a reload");
        }
    });
    let next =
        with_second_integration(TestConfig::from_yaml(&yaml), "prod", "second-secret").yaml();
    std::fs::write(&path, &next).unwrap();
    let (status, body) = reload(proxy.admin_addr).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["summary"]["new_clients"],
        serde_json::json!(["second"])
    );
    traffic.await.unwrap();

    let (status, _, _) = get(
        proxy.proxy_addr,
        "/api/invoices/1",
        &[("x-coupa-api-key", SECOND_KEY)],
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the new integration works after the reload"
    );
    assert_eq!(
        mock.requests().last().unwrap().auth,
        MockAuth::Bearer {
            client_id: "second-client".into()
        }
    );
    assert_eq!(
        mock.token_requests(),
        2,
        "erp-sync kept its token; only the new client fetched one"
    );
}

#[tokio::test]
async fn a_bad_reload_is_refused_and_the_old_config_keeps_serving() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let yaml = config_yaml(&mock.base_url(), "");
    let (path, proxy) = start_from_file(&yaml).await;

    let dangling = TestConfig::from_yaml(&yaml).set("integrations[0].client", "nope");
    std::fs::write(&path, dangling.yaml()).unwrap();
    let (status, body) = reload(proxy.admin_addr).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("integrations.netsuite-bundle.client"),
        "{body}"
    );

    // A new client whose secret Coupa rejects aborts the reload, naming it.
    let rejected = with_second_integration(TestConfig::from_yaml(&yaml), "prod", "wrong-secret");
    std::fs::write(&path, rejected.yaml()).unwrap();
    let (status, body) = reload(proxy.admin_addr).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("`second`") && message.contains("invalid_client"),
        "{message}"
    );
    assert!(!message.contains("wrong-secret"));

    assert_eq!(
        get(
            proxy.proxy_addr,
            "/api/invoices/1",
            &[("x-coupa-api-key", KEY)]
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        get(
            proxy.proxy_addr,
            "/api/invoices/1",
            &[("x-coupa-api-key", SECOND_KEY)]
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    assert!(logs().contains("reload refused"));
}

#[tokio::test]
async fn an_unreachable_token_endpoint_does_not_block_a_reload() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let yaml = config_yaml(&mock.base_url(), "");
    let (path, proxy) = start_from_file(&yaml).await;
    let closed = closed_addr().await;
    let next = with_second_integration(TestConfig::from_yaml(&yaml), "elsewhere", "s")
        .set("instances.elsewhere.base_url", format!("http://{closed}"))
        .set("default_instance", "prod");
    std::fs::write(&path, next.yaml()).unwrap();
    let (status, body) = reload(proxy.admin_addr).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["summary"]["new_clients"],
        serde_json::json!(["second"])
    );
    // The old integration still works; the new one waits for its token (503, bounded).
    assert_eq!(
        get(
            proxy.proxy_addr,
            "/api/invoices/1",
            &[("x-coupa-api-key", KEY)]
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        get(
            proxy.proxy_addr,
            "/api/invoices/1",
            &[("x-coupa-api-key", SECOND_KEY)]
        )
        .await
        .0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let m = MockCoupa::new().client(
        "erp-sync-client",
        SECRET,
        &["core.invoice.read", "core.invoice.write"],
    );
    let (mock, proxy) = start_pair(m, "").await;
    // A slow upload: the body trickles in while shutdown starts.
    let addr = proxy.proxy_addr;
    let upload = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("POST /api/invoices HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhello").as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.write_all(b"world").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = std::time::Instant::now();
    proxy.shutdown().await;
    let reply = upload.await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("helloworld"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(mock.api_hits(), 1);
    // And the listener is closed.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn the_admin_token_guards_everything_but_the_probes() {
    let extra = "admin_token: admin-token-0123456789\n";
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let proxy = start_proxy(&config_yaml(&mock.base_url(), extra)).await;
    let admin = proxy.admin_addr;
    assert_eq!(get(admin, "/healthz", &[]).await.0, StatusCode::OK);
    // Orchestrator probes need no token (readiness shows names and states, no secrets).
    assert_ne!(get(admin, "/readyz", &[]).await.0, StatusCode::UNAUTHORIZED);
    for path in ["/audit", "/metrics", "/tokens", "/"] {
        let (status, headers, body) = get(admin, path, &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Basic")
        );
        assert!(!String::from_utf8_lossy(&body).contains("admin-token"));
        assert_eq!(
            get(
                admin,
                path,
                &[("authorization", "Bearer wrong-token-000000")]
            )
            .await
            .0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        send(Method::POST, admin, "/reload", &[], Bytes::new())
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(
            admin,
            "/tokens",
            &[("authorization", "Bearer admin-token-0123456789")]
        )
        .await
        .0,
        StatusCode::OK
    );
    // A browser opening the dashboard uses Basic with the token as password.
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("admin:admin-token-0123456789")
    );
    assert_eq!(
        get(admin, "/", &[("authorization", &basic)]).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn tls_on_the_proxy_listener_serves_http1_and_h2() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let extra = format!(
        "tls:\n  cert: {}\n  key: {}\n",
        fixtures.join("server.pem").display(),
        fixtures.join("server.key").display()
    );
    let proxy = start_proxy(&config_yaml(&mock.base_url(), &extra)).await;
    wait_ready(proxy.admin_addr).await;

    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(fixtures.join("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    for h2 in [false, true] {
        let b = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_only();
        let connector = if h2 {
            b.enable_http2().build()
        } else {
            b.enable_http1().build()
        };
        let client: hyper_util::client::legacy::Client<_, http_body_util::Full<Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(h2)
                .build(connector);
        let req = http::Request::get(format!(
            "https://localhost:{}/api/invoices/1",
            proxy.proxy_addr.port()
        ))
        .header("x-coupa-api-key", KEY)
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.version(),
            if h2 {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            }
        );
    }
    // Plain HTTP to the TLS listener gets nowhere.
    let reply = raw_exchange(
        proxy.proxy_addr,
        format!("GET /api/invoices/1 HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(!reply.contains("200 OK"));
    assert_eq!(mock.api_hits(), 2);
}

#[tokio::test]
async fn a_reload_applies_a_new_shadow_rate() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let config = TestConfig::standard(&mock.base_url())
        .set("cutover.shadow_max_per_second", 1)
        .set("integrations[0].mode", "shadow")
        // Replays also take a slot of the instance's rate limit; this test is about
        // the shadow rate alone.
        .set("instances.prod.rate_limit", "off");
    let yaml = config.yaml();
    let (path, proxy) = start_from_file(&yaml).await;
    let replays = || {
        mock.requests()
            .iter()
            .filter(|r| matches!(r.auth, MockAuth::Bearer { .. }))
            .count()
    };
    let burst = |n| async move {
        for _ in 0..n {
            let (status, _, _) = get(
                proxy.proxy_addr,
                "/api/invoices/1",
                &[("x-coupa-api-key", KEY)],
            )
            .await;
            assert_eq!(status, StatusCode::OK);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    burst(20).await;
    let before = replays();
    assert!(
        (1..=2).contains(&before),
        "1/s allows a burst of 1: {before}"
    );

    std::fs::write(
        &path,
        config.set("cutover.shadow_max_per_second", 1000).yaml(),
    )
    .unwrap();
    let (status, body) = reload(proxy.admin_addr).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    burst(20).await;
    let after = replays() - before;
    assert!(
        after >= 19,
        "the new rate (1000/s) applies after the reload: {after} of 20 replayed"
    );
}

#[tokio::test]
async fn a_reload_goes_through_while_the_audit_store_is_locked_and_readyz_says_so() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let audit = temp_path("audit.db");
    let config = TestConfig::standard(&mock.base_url())
        .set("audit.path", audit.display().to_string())
        .set("audit.flush_interval", "500ms");
    let (path, proxy) = start_from_file(&config.yaml()).await;

    // Another process holds the SQLite file exclusively: every store call fails (busy).
    let locker = rusqlite::Connection::open(&audit).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();

    // The operator denies the integration anyway: the reload applies at once.
    std::fs::write(&path, config.set("integrations[0].mode", "deny").yaml()).unwrap();
    let started = std::time::Instant::now();
    let (status, body) = reload(proxy.admin_addr).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let (status, _, _) = get(
        proxy.proxy_addr,
        "/api/invoices/1",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the new mode serves");

    // The store's failure shows in /readyz (still ready: the audit is not the request
    // path) and in the metrics, once SQLite's busy timeout (5 s) has run out.
    let mut degraded = serde_json::Value::Null;
    for _ in 0..100 {
        let (status, _, body) = get(proxy.admin_addr, "/readyz", &[]).await;
        assert_eq!(status, StatusCode::OK);
        degraded = json(&body)["audit"].clone();
        if degraded["status"] == "degraded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(degraded["status"], "degraded", "{degraded}");
    let (_, _, metrics) = get(proxy.admin_addr, "/metrics", &[]).await;
    assert!(
        String::from_utf8_lossy(&metrics)
            .contains("keybridge_audit_failures_total{op=\"sync_modes\"} 1")
    );

    // Once the lock is gone the modes are recorded and the audit is healthy again.
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    for _ in 0..150 {
        let (_, _, body) = get(proxy.admin_addr, "/readyz", &[]).await;
        if json(&body)["audit"]["status"] == "ok" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the audit never recovered");
}

/// Finding 4 of the hostile-traffic review: an admin listener on 0.0.0.0 without a token
/// passed `check`, and without a token anything — a cross-site form posting text/plain,
/// a page rebinding its name to 127.0.0.1 — could read the audit and trigger reloads.
#[tokio::test]
async fn the_admin_listener_refuses_exposure_rebinding_cross_site_reloads_and_floods() {
    // Exposed without a token: refused at load, naming both fields.
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let exposed = TestConfig::standard(&mock.base_url()).set("admin_listen", "0.0.0.0:0");
    let err =
        keybridge::config::Config::from_yaml(&exposed.yaml(), std::path::Path::new("."), &env())
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("admin_listen") && err.contains("admin_token"),
        "{err}"
    );
    let with_token = exposed.set("admin_token", "admin-token-0123456789").yaml();
    assert!(
        keybridge::config::Config::from_yaml(&with_token, std::path::Path::new("."), &env())
            .is_ok()
    );

    let (path, proxy) = start_from_file(&config_yaml(&mock.base_url(), "")).await;
    let admin = proxy.admin_addr;
    // DNS rebinding: a foreign Host is refused everywhere but the probes.
    for p in ["/audit", "/tokens", "/metrics", "/"] {
        let (status, _, body) = get(admin, p, &[("host", "attacker.example")]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{p}");
        assert!(String::from_utf8_lossy(&body).contains("host_not_allowed"));
    }
    assert_eq!(
        get(admin, "/healthz", &[("host", "attacker.example")])
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        get(
            admin,
            "/audit",
            &[("host", &format!("localhost:{}", admin.port()))]
        )
        .await
        .0,
        StatusCode::OK
    );

    // A cross-site form (simple request) cannot reload; a JSON request can.
    let (status, _, body) = send(
        Method::POST,
        admin,
        "/reload",
        &[
            ("content-type", "text/plain"),
            ("origin", "https://attacker.example"),
        ],
        Bytes::from_static(b"x"),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(reload(admin).await.0, StatusCode::OK);

    // Reloads and audit reads are rate-limited (429 + Retry-After), not queued.
    let mut limited = 0;
    for _ in 0..10 {
        let (status, headers, _) = send(
            Method::POST,
            admin,
            "/reload",
            &[("content-type", "application/json")],
            Bytes::new(),
        )
        .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(headers["retry-after"], "1");
            limited += 1;
        }
    }
    assert!(limited >= 4, "{limited} of 10 back-to-back reloads limited");
    let audit_limited = futures_count(admin).await;
    assert!(audit_limited > 0, "a burst of audit reads is limited");
    drop(path);
}

/// Sends 40 `/audit` reads at once; returns how many were refused with 429.
async fn futures_count(admin: std::net::SocketAddr) -> usize {
    let tasks: Vec<_> = (0..40)
        .map(|_| tokio::spawn(async move { get(admin, "/audit", &[]).await.0 }))
        .collect();
    let mut n = 0;
    for t in tasks {
        if t.await.unwrap() == StatusCode::TOO_MANY_REQUESTS {
            n += 1;
        }
    }
    n
}

/// Found by the attacker review: a reload could drop admin_token while the admin socket
/// stayed bound beyond loopback (admin_listen only moves on restart).
#[tokio::test]
async fn a_reload_cannot_drop_the_token_of_an_exposed_admin_listener() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let exposed = TestConfig::standard(&mock.base_url())
        .set("admin_listen", "0.0.0.0:0")
        .set("admin_token", "admin-token-0123456789");
    let (path, proxy) = start_from_file(&exposed.yaml()).await;
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], proxy.admin_addr.port()));
    let unprotected = exposed
        .set("admin_listen", "127.0.0.1:0")
        .remove("admin_token");
    std::fs::write(&path, unprotected.yaml()).unwrap();
    let (status, _, body) = send(
        Method::POST,
        admin,
        "/reload",
        &[("authorization", "Bearer admin-token-0123456789")],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(String::from_utf8_lossy(&body).contains("admin_token"));
    assert_eq!(
        get(admin, "/audit", &[]).await.0,
        StatusCode::UNAUTHORIZED,
        "the token still guards it"
    );
}

//! Before cutting an integration over, an admin checks its OAuth client with
//! `keybridge test-credentials`: each failure has its own message and exit code.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod support;

use std::process::Command;

use keybridge::cli::mock::MockCoupa;
use support::*;

async fn test_credentials(yaml: String, client: &str) -> (i32, String, String) {
    let path = temp_path("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let client = client.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_keybridge"))
            .args(["test-credentials", "--client", &client, "--config"])
            .arg(&path)
            .env("ERP_SYNC_SECRET", SECRET)
            .output()
            .unwrap();
        support::leak::process_output(&out.stdout, &out.stderr);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn yaml_with_scopes(base: &str, scopes: &[&str]) -> String {
    TestConfig::standard(base)
        .set("clients.erp-sync.scopes", scopes)
        .yaml()
}

#[tokio::test]
async fn a_working_client_passes() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let (code, stdout, stderr) = test_credentials(
        yaml_with_scopes(&mock.base_url(), &["core.user.read"]),
        "erp-sync",
    )
    .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("OK: client `erp-sync` can call Coupa"),
        "{stdout}"
    );
    assert!(stdout.contains("GET ") && stdout.contains("/api/users?limit=1"));
    assert_eq!(mock.requests()[0].target, "/api/users?limit=1");
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));
}

#[tokio::test]
async fn a_rejected_secret_exits_3() {
    let mock = MockCoupa::new()
        .client("erp-sync-client", "another-secret", &["core.user.read"])
        .start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let (code, _, stderr) = test_credentials(
        yaml_with_scopes(&mock.base_url(), &["core.user.read"]),
        "erp-sync",
    )
    .await;
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("secret rejected") && stderr.contains("invalid_client"),
        "{stderr}"
    );
    assert!(!stderr.contains(SECRET));
}

/// Issue 11, item 7: a client with only the scopes its integration needs passes (the
/// check calls an endpoint those scopes allow, not /api/users), and fails with the
/// scope-missing code once its integration's recorded traffic needs a scope it lacks.
#[tokio::test]
async fn a_least_privilege_client_passes_until_its_integration_needs_more() {
    let mock = MockCoupa::new()
        .client("erp-sync-client", SECRET, &["core.invoice.read"])
        .api_key(KEY)
        .start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let yaml = yaml_with_scopes(&mock.base_url(), &["core.invoice.read"]);
    let (code, stdout, stderr) = test_credentials(yaml.clone(), "erp-sync").await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("/api/invoices?limit=1"), "{stdout}");
    assert_eq!(mock.requests()[0].target, "/api/invoices?limit=1");
    assert!(stdout.contains("no recorded traffic"), "{stdout}");

    // The integration reads invoices (allowed) and then tries to create one.
    let proxy = start_proxy(&yaml).await;
    wait_ready(proxy.admin_addr).await;
    let (status, _, _) = get(
        proxy.proxy_addr,
        "/api/invoices",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    assert_eq!(status, http::StatusCode::OK);
    let (status, _, _) = send(
        http::Method::POST,
        proxy.proxy_addr,
        "/api/invoices",
        &[("x-coupa-api-key", KEY)],
        "{}",
    )
    .await;
    assert_eq!(
        status,
        http::StatusCode::FORBIDDEN,
        "Coupa refuses the write"
    );
    proxy.shutdown().await;

    let (code, stdout, stderr) = test_credentials(yaml, "erp-sync").await;
    assert_eq!(code, 4, "{stdout}{stderr}");
    assert!(
        stdout.contains("GET ")
            && stdout.contains("/api/invoices?limit=1 (an endpoint its integrations use"),
        "the probe is the integration's own read: {stdout}"
    );
    assert!(
        stderr.contains("scope missing: the credentials work, but its integrations call endpoints needing core.invoice.write")
            && stderr.contains("POST /api/invoices (netsuite-bundle)")
            && stderr.contains("clients.erp-sync.scopes"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_scope_the_client_lacks_exits_4() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    // Asking for a scope the client was not granted fails at the token endpoint.
    let (code, _, stderr) = test_credentials(
        yaml_with_scopes(&mock.base_url(), &["core.supplier.read"]),
        "erp-sync",
    )
    .await;
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("invalid_scope"), "{stderr}");

    // Listing no scopes (all granted) falls back to Coupa's own test call, /api/users.
    let narrow = MockCoupa::new()
        .client("erp-sync-client", SECRET, &["core.invoice.read"])
        .start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let (code, _, stderr) =
        test_credentials(yaml_with_scopes(&narrow.base_url(), &[]), "erp-sync").await;
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains("403 to GET /api/users?limit=1") && stderr.contains("core.user.read"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_unreachable_token_endpoint_exits_2() {
    let closed = closed_addr().await;
    let (code, _, stderr) = test_credentials(
        yaml_with_scopes(&format!("http://{closed}"), &["core.user.read"]),
        "erp-sync",
    )
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("token endpoint unreachable"), "{stderr}");
}

#[tokio::test]
async fn an_unknown_client_is_named() {
    let (code, _, stderr) = test_credentials(config_yaml("http://127.0.0.1:9", ""), "nope").await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no client `nope`") && stderr.contains("erp-sync"),
        "{stderr}"
    );
}

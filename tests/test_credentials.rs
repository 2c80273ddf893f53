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

use keybridge::mock::MockCoupa;
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

#[tokio::test]
async fn a_missing_user_read_scope_exits_4() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    // The client works for invoices but was never granted core.user.read.
    let (code, _, stderr) = test_credentials(
        yaml_with_scopes(&mock.base_url(), &["core.invoice.read"]),
        "erp-sync",
    )
    .await;
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains("scope missing") && stderr.contains("core.user.read"),
        "{stderr}"
    );

    // Asking for a scope the client was not granted fails at the token endpoint.
    let (code, _, stderr) = test_credentials(
        yaml_with_scopes(&mock.base_url(), &["core.supplier.read"]),
        "erp-sync",
    )
    .await;
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("invalid_scope"), "{stderr}");
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

//! An admin restarts keybridge and reads the audit from the command line: the data
//! survived, and `keybridge audit` says what `/audit` says.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod support;

use std::process::Command;

use http::{Method, StatusCode};
use support::*;

async fn run_cli(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_keybridge"))
            .args(&args)
            .env_remove("ERP_SYNC_SECRET") // reading the audit needs no secrets
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

/// The stored audit alone: without the time of the report and the replica's live
/// rate-limit state (which only a running keybridge has; the CLI lists none).
fn without_generated_at(mut v: serde_json::Value) -> serde_json::Value {
    let object = v.as_object_mut().unwrap();
    object.remove("generated_at");
    object.remove("rate_limits");
    v
}

#[tokio::test]
async fn the_audit_survives_a_restart_and_the_cli_agrees_with_the_admin_api() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let yaml = config_yaml(&mock.base_url(), "");
    let config_path = temp_path("config.yaml");
    std::fs::write(&config_path, &yaml).unwrap();

    let proxy = start_proxy(&yaml).await;
    wait_ready(proxy.admin_addr).await;
    for i in 0..5 {
        let (status, _, _) = get(
            proxy.proxy_addr,
            &format!("/api/invoices/{i}"),
            &[("x-coupa-api-key", KEY)],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    send(
        Method::POST,
        proxy.proxy_addr,
        "/api/invoices",
        &[("x-coupa-api-key", KEY)],
        "{}",
    )
    .await;
    get(
        proxy.proxy_addr,
        "/api/invoices",
        &[("x-coupa-api-key", "wrong")],
    )
    .await;
    // No /audit call: the final flush on shutdown must write everything.
    proxy.shutdown().await;

    let proxy = start_proxy(&yaml).await;
    let (_, _, body) = get(proxy.admin_addr, "/audit", &[]).await;
    let api = json(&body);
    let erp = &api["integrations"][0];
    assert_eq!(erp["name"], "netsuite-bundle");
    assert_eq!(erp["requests"]["oauth"], 6, "counts survived the restart");
    assert_eq!(erp["endpoints"].as_array().unwrap().len(), 2);
    assert_eq!(api["unknown_keys"][0]["requests"]["rejected"], 1);
    assert_eq!(api["totals"]["oauth"], 6);

    let config_arg = config_path.to_str().unwrap();
    let (code, stdout, stderr) =
        run_cli(&["audit", "--format", "json", "--config", config_arg]).await;
    assert_eq!(code, 0, "{stderr}");
    let cli: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(without_generated_at(cli), without_generated_at(api.clone()));

    // A backup taken while keybridge runs reads back as the same audit.
    let backup = temp_path("audit-backup.db");
    let to = backup.to_str().unwrap();
    let (code, stdout, stderr) =
        run_cli(&["backup-audit", "--to", to, "--config", config_arg]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("backed up "), "{stdout}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the backup is as private as the audit");
    let (code, _, stderr) = run_cli(&["backup-audit", "--to", to, "--config", config_arg]).await;
    assert_eq!(code, 1, "an existing file is never overwritten");
    assert!(stderr.contains("cannot create the backup"), "{stderr}");
    let restored_path = temp_path("restored.yaml");
    let restored = TestConfig::from_yaml(&yaml).set("audit.path", to).yaml();
    std::fs::write(&restored_path, restored).unwrap();
    let (code, stdout, stderr) = run_cli(&[
        "audit",
        "--format",
        "json",
        "--config",
        restored_path.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    let from_backup: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        without_generated_at(from_backup),
        without_generated_at(api.clone())
    );

    let (code, table, _) = run_cli(&["audit", "--config", config_arg]).await;
    assert_eq!(code, 0);
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("INTEGRATION") && header.contains("NEEDED SCOPES"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with("netsuite-bundle"))
        .unwrap();
    assert!(
        row.contains("oauth")
            && row.contains("on OAuth")
            && row.contains("core.invoice.read core.invoice.write"),
        "{row}"
    );

    let (code, csv, _) = run_cli(&["audit", "--format", "csv", "--config", config_arg]).await;
    assert_eq!(code, 0);
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("integration,mode,state,api_key,oauth")
    );
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("netsuite-bundle,oauth,on OAuth,0,6,0,0,0,0,")
    );
}

#[tokio::test]
async fn the_cli_says_when_there_is_no_audit_yet() {
    let yaml = config_yaml("http://127.0.0.1:9", "");
    let config_path = temp_path("config.yaml");
    std::fs::write(&config_path, &yaml).unwrap();
    let (code, _, stderr) = run_cli(&["audit", "--config", config_path.to_str().unwrap()]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("no audit store at"), "{stderr}");
}

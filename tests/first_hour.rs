//! A new user's first real config: prod and test instances, one integration in
//! `observe` with no client yet, one in `canary` at 20 %, one in `oauth`, secrets in
//! environment variables. They make four mistakes; one `keybridge check` names all four,
//! each by integration name. Corrected, the config passes as written (two instances, no
//! `default_instance`), and the running binary serves it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod support;

use std::path::Path;
use std::process::Output;

use http::StatusCode;
use keybridge::cli::mock::MockCoupa;
use support::process::{Process, keybridge};
use support::*;

const TREASURY_SECRET: &str = "treasury-secret-0c41d2";
const CELIGO_KEY: &str = "celigo-legacy-key-77ab10";
const TREASURY_KEY: &str = "treasury-legacy-key-3e9f";

fn realistic(prod: &str, test: &str, audit: &Path) -> String {
    format!(
        r#"listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
instances:
  prod:
    base_url: {prod}
  test:
    base_url: {test}
clients:
  erp-sync:
    instance: prod
    client_id: erp-sync-client
    client_secret: ${{ERP_SYNC_SECRET}}
    scopes: [core.invoice.read, core.invoice.write]
  treasury-reports:
    instance: test
    client_id: treasury-client
    client_secret: ${{TREASURY_SECRET}}
    scopes: [core.invoice.read]
integrations:
  - name: legacy-celigo-flow
    api_key: ${{CELIGO_KEY}}
    instance: prod
    mode: observe
  - name: netsuite-bundle
    api_key_sha256: {netsuite}
    client: erp-sync
    mode: canary
    canary_percent: 20
  - name: treasury-export
    api_key: ${{TREASURY_KEY}}
    client: treasury-reports
audit:
  path: {audit}
"#,
        netsuite = sha256_hex(KEY.as_bytes()),
        audit = audit.display(),
    )
}

fn check(config: &Path, celigo_key_set: bool) -> Output {
    let mut command = keybridge();
    command
        .args(["check", "--config"])
        .arg(config)
        .env("ERP_SYNC_SECRET", SECRET)
        .env("TREASURY_SECRET", TREASURY_SECRET)
        .env("TREASURY_KEY", TREASURY_KEY)
        .env_remove("CELIGO_KEY");
    if celigo_key_set {
        command.env("CELIGO_KEY", CELIGO_KEY);
    }
    let out = command.output().unwrap();
    leak::process_output(&out.stdout, &out.stderr);
    out
}

#[tokio::test]
async fn four_mistakes_are_reported_by_one_check_and_the_corrected_config_runs() {
    let prod = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let test = MockCoupa::new()
        .client("treasury-client", TREASURY_SECRET, &["core.invoice.read"])
        .api_key(TREASURY_KEY)
        .start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let dir = temp_path("first-hour");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yaml");
    let good = realistic(&prod.base_url(), &test.base_url(), &dir.join("audit.db"));

    // The four mistakes: an unset variable (CELIGO_KEY is not exported), a percentage
    // written with `%`, a client name one letter short, and a field that does not exist.
    let bad = good
        .replace("canary_percent: 20\n", "canary_percent: 20%\n")
        .replace(
            "    client: treasury-reports\n",
            "    client: treasury-report\n    scope: core.invoice.read\n",
        );
    std::fs::write(&path, &bad).unwrap();
    let out = check(&path, false);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = [
        "integrations.legacy-celigo-flow.api_key: environment variable `CELIGO_KEY` is not set",
        "integrations.netsuite-bundle.canary_percent: `20%`: write the number without `%` (e.g. `20`)",
        "integrations.treasury-export.scope: unknown field `scope`",
        "integrations.treasury-export.client: client `treasury-report` is not defined under `clients` (defined: `erp-sync`, `treasury-reports`)",
    ];
    for line in expected {
        assert!(stderr.contains(line), "missing `{line}` in:\n{stderr}");
    }
    let reported: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("integrations") || l.starts_with("clients"))
        .collect();
    assert_eq!(reported.len(), 4, "each mistake once, no echoes:\n{stderr}");

    // Corrected: valid as written, with a warning about bearer callers.
    std::fs::write(&path, &good).unwrap();
    let out = check(&path, true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: default_instance: not set with several instances"),
        "{stderr}"
    );

    // And it runs: keyed integrations reach their own instance, a bearer caller is told
    // what to set.
    let mut run = keybridge();
    run.args(["run", "--config"])
        .arg(&path)
        .env("ERP_SYNC_SECRET", SECRET)
        .env("TREASURY_SECRET", TREASURY_SECRET)
        .env("TREASURY_KEY", TREASURY_KEY)
        .env("CELIGO_KEY", CELIGO_KEY);
    let proxy = Process::spawn(run);
    wait_ready(proxy.admin()).await;
    let (status, _, body) = get(
        proxy.proxy(),
        "/api/invoices/1",
        &[("x-coupa-api-key", TREASURY_KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["auth"], "bearer");
    assert_eq!(
        test.api_hits(),
        1,
        "treasury-export reached the test instance"
    );
    assert_eq!(prod.api_hits(), 0);

    let (status, _, body) = get(
        proxy.proxy(),
        "/api/invoices/1",
        &[("authorization", "Bearer a-token-of-their-own")],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let body = json(&body);
    assert_eq!(body["error"], "bearer_not_routed");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("default_instance"),
        "{body}"
    );
    assert_eq!(
        prod.api_hits() + test.api_hits(),
        1,
        "the bearer call went nowhere"
    );
    let (code, output) = proxy.stop();
    assert_eq!(code, Some(0), "{output}");
}

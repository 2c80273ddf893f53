//! Migrating integrations: each cutover mode end to end against the mock Coupa, and
//! what the audit, the metrics and the access log say about it afterwards.

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
use keybridge::cli::mock::{MockAuth, MockCoupa, MockHandle};
use keybridge::runtime::Running;
use serde_json::Value;
use support::*;

const OBSERVER: &str = "observer-key-00000000000000000000000000000";
const SHADOWED: &str = "shadowed-key-00000000000000000000000000000";
const CANARY30: &str = "canary30-key-00000000000000000000000000000";
const CANARY_READER: &str = "canaryrd-key-00000000000000000000000000000";
const MIGRATED: &str = "migrated-key-00000000000000000000000000000";
const RETIRED: &str = "retired0-key-00000000000000000000000000000";
const STRANGER: &str = "stranger-key-00000000000000000000000000000";

fn fleet_mock() -> MockCoupa {
    let mut m = MockCoupa::new()
        .client(
            "full-client",
            "full-secret",
            &[
                "core.invoice.read",
                "core.invoice.write",
                "core.supplier.read",
                "core.user.read",
            ],
        )
        .client("reader-client", "reader-secret", &["core.invoice.read"]);
    for key in [
        OBSERVER,
        SHADOWED,
        CANARY30,
        CANARY_READER,
        MIGRATED,
        RETIRED,
        STRANGER,
    ] {
        m = m.api_key(key);
    }
    m
}

fn fleet_yaml(base_url: &str, audit_path: &std::path::Path, policies: &str) -> String {
    format!(
        r#"listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
instances:
  prod:
    base_url: {base_url}
clients:
  full:
    instance: prod
    client_id: full-client
    client_secret: full-secret
    scopes: [core.invoice.read, core.invoice.write, core.supplier.read, core.user.read]
  reader:
    instance: prod
    client_id: reader-client
    client_secret: reader-secret
    scopes: [core.invoice.read]
integrations:
  - {{name: observer, api_key: {OBSERVER}, instance: prod, mode: observe}}
  - {{name: shadowed, api_key: {SHADOWED}, client: reader, mode: shadow}}
  - {{name: canary30, api_key: {CANARY30}, client: full, mode: canary, canary_percent: 30}}
  - {{name: canary-reader, api_key: {CANARY_READER}, client: reader, mode: canary, canary_percent: 100}}
  - {{name: migrated, api_key: {MIGRATED}, client: full}}
  - {{name: retired, api_key: {RETIRED}, mode: deny}}
token:
  settle_delay: 0s
audit:
  path: {audit}
{policies}"#,
        audit = audit_path.display()
    )
}

async fn start_fleet(policies: &str) -> (MockHandle, Running, std::path::PathBuf) {
    let mock = fleet_mock()
        .start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let audit = temp_path("audit.db");
    let proxy = start_proxy(&fleet_yaml(&mock.base_url(), &audit, policies)).await;
    wait_ready(proxy.admin_addr).await;
    (mock, proxy, audit)
}

async fn audit_json(proxy: &Running) -> Value {
    let (status, _, body) = get(proxy.admin_addr, "/audit", &[]).await;
    assert_eq!(status, StatusCode::OK);
    json(&body)
}

fn integration<'a>(audit: &'a Value, name: &str) -> &'a Value {
    audit["integrations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in audit"))
}

async fn call(
    proxy: &Running,
    method: Method,
    path: &str,
    key: &str,
    body: &'static [u8],
) -> (StatusCode, Bytes) {
    let (status, _, body) = send(
        method,
        proxy.proxy_addr,
        path,
        &[
            ("x-coupa-api-key", key),
            ("user-agent", "NetSuite-Bundle/2024.2"),
        ],
        Bytes::from_static(body),
    )
    .await;
    (status, body)
}

/// Waits until the mock has seen `n` requests (background replays are asynchronous).
async fn wait_for_hits(mock: &MockHandle, n: usize) {
    for _ in 0..200 {
        if mock.api_hits() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("mock saw {} requests, expected {n}", mock.api_hits());
}

#[tokio::test]
async fn observe_forwards_the_key_unchanged_and_records_it() {
    let (mock, proxy, _) = start_fleet("").await;
    let (status, _) = call(&proxy, Method::GET, "/api/invoices/17", OBSERVER, b"").await;
    assert_eq!(status, StatusCode::OK);
    let seen = &mock.requests()[0];
    assert_eq!(seen.auth, MockAuth::ApiKey, "Coupa saw the key");
    assert_eq!(seen.headers["x-coupa-api-key"], OBSERVER);
    assert!(!seen.headers.contains_key("authorization"));

    let audit = audit_json(&proxy).await;
    let i = integration(&audit, "observer");
    assert_eq!(i["mode"], "observe");
    assert_eq!(i["state"], "sending keys");
    assert_eq!(i["requests"]["api_key"], 1);
    assert_eq!(i["endpoints"][0]["endpoint"], "GET /api/invoices/:id");
    assert_eq!(i["endpoints"][0]["statuses"]["200"], 1);
    assert_eq!(i["scopes"]["needed"][0], "core.invoice.read");
    assert_eq!(i["ip_addresses"][0], "127.0.0.1");
    assert_eq!(i["user_agents"][0], "NetSuite-Bundle/2024.2");
    assert!(
        !audit.to_string().contains(OBSERVER),
        "the audit never holds a key"
    );
}

#[tokio::test]
async fn shadow_serves_with_the_key_and_proves_oauth_on_gets_only() {
    let (mock, proxy, _) = start_fleet("").await;
    assert_eq!(
        call(&proxy, Method::GET, "/api/invoices/1", SHADOWED, b"")
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        call(&proxy, Method::GET, "/api/suppliers/2", SHADOWED, b"")
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        call(&proxy, Method::POST, "/api/invoices", SHADOWED, b"{}")
            .await
            .0,
        StatusCode::OK
    );
    wait_for_hits(&mock, 5).await; // 3 served with the key + 2 GET replays
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = mock.requests();
    assert_eq!(seen.len(), 5, "writes are never replayed");
    let bearer: Vec<_> = seen
        .iter()
        .filter(|r| {
            matches!(r.auth, MockAuth::Bearer { .. }) || r.headers.contains_key("authorization")
        })
        .collect();
    assert_eq!(bearer.len(), 2);
    assert!(
        bearer
            .iter()
            .all(|r| r.method == Method::GET && !r.headers.contains_key("x-coupa-api-key"))
    );

    let audit = audit_json(&proxy).await;
    let i = integration(&audit, "shadowed");
    assert_eq!(
        i["requests"]["api_key"], 3,
        "callers were served with the key"
    );
    let findings = i["shadow_findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0]["endpoint"], "GET /api/suppliers/:id");
    assert_eq!(findings[0]["key_status"], 200);
    assert_eq!(findings[0]["oauth_status"], 403);
    assert_eq!(findings[0]["scope"], "core.supplier.read");
    assert_eq!(i["shadow_matches"], 1);
    assert_eq!(
        i["scopes"]["implicated_by_fallbacks"][0],
        "core.supplier.read"
    );
    let missing: Vec<&str> = i["scopes"]["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(missing, ["core.invoice.write", "core.supplier.read"]);
}

#[tokio::test]
async fn canary_sends_about_the_configured_share_with_oauth() {
    let (mock, proxy, _) = start_fleet("").await;
    let client = client();
    for i in 0..1000 {
        let (status, _, _) = send_with(
            &client,
            Method::GET,
            proxy.proxy_addr,
            &format!("/api/invoices/{i}"),
            &[("x-coupa-api-key", CANARY30)],
            Bytes::new(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let seen = mock.requests();
    let oauth = seen
        .iter()
        .filter(|r| matches!(r.auth, MockAuth::Bearer { .. }))
        .count();
    let key = seen.iter().filter(|r| r.auth == MockAuth::ApiKey).count();
    assert_eq!(oauth + key, 1000);
    assert!(
        (240..=360).contains(&oauth),
        "{oauth} of 1000 on OAuth for canary_percent 30"
    );

    let audit = audit_json(&proxy).await;
    let i = integration(&audit, "canary30");
    assert_eq!(i["requests"]["oauth"], oauth);
    assert_eq!(i["requests"]["api_key"], key);
    assert_eq!(i["state"], "canary (30% OAuth, 0 fallbacks)");
}

#[tokio::test]
async fn canary_falls_back_to_the_key_when_the_client_lacks_a_scope() {
    let (mock, proxy, _) = start_fleet("").await;
    let (status, body) = call(
        &proxy,
        Method::POST,
        "/api/invoices",
        CANARY_READER,
        br#"{"invoice-number":"INV-9"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the caller never notices");
    assert_eq!(&body[..], br#"{"invoice-number":"INV-9"}"#);
    let seen = mock.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].auth,
        MockAuth::Rejected("missing scope core.invoice.write".into())
    );
    assert_eq!(seen[0].status, 403);
    assert_eq!(seen[1].auth, MockAuth::ApiKey);
    assert_eq!(
        seen[1].body_sha256, seen[0].body_sha256,
        "the same body was replayed"
    );

    let audit = audit_json(&proxy).await;
    let i = integration(&audit, "canary-reader");
    assert_eq!(i["requests"]["fallback"], 1);
    assert_eq!(i["state"], "canary (100% OAuth, 1 fallback)");
    assert_eq!(i["fallbacks"][0]["endpoint"], "POST /api/invoices");
    assert_eq!(i["fallbacks"][0]["oauth_status"], 403);
    assert_eq!(i["fallbacks"][0]["scope"], "core.invoice.write");
    assert_eq!(i["scopes"]["missing"][0], "core.invoice.write");
    assert_eq!(
        i["scopes"]["implicated_by_fallbacks"][0],
        "core.invoice.write"
    );
    assert!(
        i["scopes"]["suggestion"]
            .as_str()
            .unwrap()
            .contains("add scopes: core.invoice.write")
    );
}

#[tokio::test]
async fn a_streamed_body_over_the_replay_limit_is_not_replayed() {
    let (mock, proxy, _) = start_fleet("cutover:\n  replay_body_limit: 1KiB\n").await;
    static BIG: [u8; 4096] = [b'x'; 4096];
    let (status, _) = call(&proxy, Method::POST, "/api/invoices", CANARY_READER, &BIG).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "Coupa's refusal passes back; no replay"
    );
    assert_eq!(mock.api_hits(), 1);
    let audit = audit_json(&proxy).await;
    assert_eq!(integration(&audit, "canary-reader")["requests"]["oauth"], 1);
}

#[tokio::test]
async fn oauth_and_deny_modes() {
    let (mock, proxy, _) = start_fleet("").await;
    assert_eq!(
        call(&proxy, Method::GET, "/api/invoices/5", MIGRATED, b"")
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        mock.requests()[0].auth,
        MockAuth::Bearer {
            client_id: "full-client".into()
        }
    );

    let (status, body) = call(&proxy, Method::GET, "/api/invoices/5", RETIRED, b"").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let body = json(&body);
    assert_eq!(body["error"], "integration_denied");
    assert!(
        body["message"].as_str().unwrap().contains("`retired`")
            && body["message"].as_str().unwrap().contains("OAuth")
    );
    assert_eq!(mock.api_hits(), 1, "deny forwards nothing");

    let audit = audit_json(&proxy).await;
    assert_eq!(integration(&audit, "migrated")["requests"]["oauth"], 1);
    assert_eq!(integration(&audit, "migrated")["state"], "on OAuth");
    assert_eq!(integration(&audit, "retired")["requests"]["denied"], 1);
}

#[tokio::test]
async fn an_integration_quiet_on_oauth_long_enough_is_ready_to_disable_its_key() {
    let (_mock, proxy, _) = start_fleet("").await;
    proxy.shutdown().await;
    // Same store, ready_after shortened so the wait fits a test.
    let mock = fleet_mock()
        .start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let audit = temp_path("audit.db");
    let yaml = TestConfig::from_yaml(&fleet_yaml(&mock.base_url(), &audit, ""))
        .set("audit.ready_after", "5s")
        .yaml();
    // Long enough that a loaded CI machine checks "on_oauth" well within it.
    let started = std::time::Instant::now();
    let proxy = start_proxy(&yaml).await;
    wait_ready(proxy.admin_addr).await;
    assert_eq!(
        call(&proxy, Method::GET, "/api/invoices/5", MIGRATED, b"")
            .await
            .0,
        StatusCode::OK
    );
    let early = audit_json(&proxy).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "checked within ready_after"
    );
    assert_eq!(integration(&early, "migrated")["state_code"], "on_oauth");
    tokio::time::sleep(
        Duration::from_secs(5).saturating_sub(started.elapsed()) + Duration::from_millis(300),
    )
    .await;
    let a = audit_json(&proxy).await;
    assert_eq!(
        integration(&a, "migrated")["state"],
        "ready to disable the key in Coupa"
    );
    assert_eq!(
        integration(&a, "canary30")["state_code"],
        "canary",
        "canary is never ready"
    );
}

#[tokio::test]
async fn unknown_keys_and_bearer_callers_follow_the_policies() {
    let (mock, proxy, _) = start_fleet("unknown_keys: observe\n").await;
    assert_eq!(
        call(&proxy, Method::GET, "/api/invoices/3", STRANGER, b"")
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        mock.requests()[0].auth,
        MockAuth::ApiKey,
        "forwarded with its key"
    );
    // A caller already on OAuth: forwarded untouched.
    let token_resp = send(
        Method::POST,
        mock.addr,
        "/oauth2/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        "grant_type=client_credentials&client_id=full-client&client_secret=full-secret",
    )
    .await;
    let token = json(&token_resp.2)["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _, _) = get(
        proxy.proxy_addr,
        "/api/users/1",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        mock.requests()[1].auth,
        MockAuth::Bearer {
            client_id: "full-client".into()
        }
    );

    let audit = audit_json(&proxy).await;
    let fp = keybridge::keys::Fingerprint::of_key(STRANGER.as_bytes()).to_string();
    let unknown = &audit["unknown_keys"][0];
    assert_eq!(
        unknown["name"], fp,
        "unknown keys are recorded by fingerprint"
    );
    assert_eq!(unknown["requests"]["api_key"], 1);
    let native = audit["other_callers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "native")
        .unwrap();
    assert_eq!(native["requests"]["native"], 1);
    assert!(!audit.to_string().contains(STRANGER) && !audit.to_string().contains(&token));
    proxy.shutdown().await;

    let (mock, proxy, _) = start_fleet("bearer_requests: reject\n").await;
    let (status, _, body) = get(
        proxy.proxy_addr,
        "/api/users/1",
        &[("authorization", "Bearer abc")],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json(&body)["error"], "bearer_not_accepted");
    let (status, _, body) = get(
        proxy.proxy_addr,
        "/api/users/1",
        &[("x-coupa-api-key", STRANGER)],
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "unknown_keys defaults to reject"
    );
    assert_eq!(json(&body)["error"], "unknown_api_key");
    assert_eq!(mock.api_hits(), 0);
}

#[tokio::test]
async fn metrics_tokens_and_access_log_name_integrations_never_secrets() {
    let (_mock, proxy, _) = start_fleet("").await;
    call(&proxy, Method::GET, "/api/invoices/1", OBSERVER, b"").await;
    call(&proxy, Method::GET, "/api/invoices/1", MIGRATED, b"").await;

    let (status, headers, body) = get(proxy.admin_addr, "/metrics", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"].to_str().unwrap().contains("text"));
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains(
            r#"keybridge_requests_total{integration="observer",mode="observe",outcome="api_key"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(
        r#"keybridge_requests_total{integration="migrated",mode="oauth",outcome="oauth"} 1"#
    ));
    assert!(text.contains(r#"keybridge_token_fetches_total{client="full",result="ok"} 1"#));
    assert!(text.contains(r#"keybridge_token_expiry_seconds{client="full"}"#));
    assert!(text.contains("keybridge_upstream_duration_seconds_bucket"));
    assert!(!text.contains(OBSERVER) && !text.contains("full-secret") && !text.contains("mock."));
    // Only label sets that can happen (issue 11, item 10): a deny integration is never
    // on OAuth, an unknown key under `reject` never forwarded, nobody anonymous native.
    for impossible in [
        r#"integration="retired",mode="deny",outcome="oauth""#,
        r#"integration="observer",mode="observe",outcome="oauth""#,
        r#"integration="(unknown key)",mode="reject",outcome="oauth""#,
        r#"integration="(unknown key)",mode="reject",outcome="api_key""#,
        r#"integration="(no credentials)",mode="-",outcome="native""#,
    ] {
        assert!(!text.contains(impossible), "{impossible} in:\n{text}");
    }
    assert!(text.contains(
        r#"keybridge_requests_total{integration="retired",mode="deny",outcome="denied"} 0"#
    ));

    let (status, _, body) = get(proxy.admin_addr, "/tokens", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let tokens = json(&body);
    assert_eq!(tokens["clients"]["full"]["token_held"], true);
    assert_eq!(tokens["clients"]["full"]["settle_state"], "settled");
    assert_eq!(tokens["clients"]["full"]["fetches_ok"], 1);
    assert!(
        tokens["clients"]["full"]["expires_in_seconds"]
            .as_u64()
            .unwrap()
            > 80_000
    );
    assert!(
        !body.windows(5).any(|w| w == b"mock."),
        "no token in /tokens"
    );

    let logs = logs();
    let line = logs
        .lines()
        .find(|l| l.contains("keybridge::access") && l.contains("\"integration\":\"observer\""))
        .expect("an access-log line for the observer request");
    let line: Value = serde_json::from_str(line).unwrap();
    assert_eq!(line["outcome"], "api_key");
    assert_eq!(line["endpoint"], "GET /api/invoices/:id");
    assert_eq!(line["status"], 200);
    assert!(line["duration_ms"].as_f64().is_some());
    assert!(!logs.contains(OBSERVER) && !logs.contains(MIGRATED) && !logs.contains("full-secret"));
}

/// Issue 11, item 4: prod + test instances is the normal case. Such a config is valid
/// as written (no default_instance); `check` warns, and a bearer caller gets a 401 that
/// says what to set, while keyed integrations are served.
#[tokio::test]
async fn two_instances_need_no_default_and_bearer_callers_are_told_what_to_set() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let config = TestConfig::standard(&mock.base_url())
        .set("instances.test.base_url", "https://acme-test.coupahost.com");
    let path = temp_path("config.yaml");
    std::fs::write(&path, config.yaml()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keybridge"))
        .args(["check", "--config"])
        .arg(&path)
        .env("ERP_SYNC_SECRET", SECRET)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("warning: default_instance"), "{stderr}");

    let proxy = start_proxy(&config.yaml()).await;
    wait_ready(proxy.admin_addr).await;
    let (status, _, body) = get(
        proxy.proxy_addr,
        "/api/invoices/1",
        &[("authorization", "Bearer abc")],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let body = json(&body);
    assert_eq!(body["error"], "bearer_not_routed");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("default_instance")
    );
    let (status, _, _) = get(
        proxy.proxy_addr,
        "/api/invoices/1",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mock.api_hits(), 1, "only the keyed request reached Coupa");
}

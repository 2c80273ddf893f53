//! An admin opens the dashboard in a real browser (headless Chromium): it shows the
//! migration progress, each integration's state and scope advice, and unknown keys,
//! and renders hostile caller data as text.
//!
//! Needs Debian's `chromium` (`.ci/run` installs it). Set KEYBRIDGE_CHROMIUM to use
//! another binary.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod support;

use http::StatusCode;
use support::browser::headless;
use support::*;

#[tokio::test]
async fn the_dashboard_renders_progress_states_advice_and_unknown_keys() {
    // Prod and test instances; a canary at 20 % and an observed integration both still
    // send their keys, so two of three integrations count as sending keys.
    const CANARY_KEY: &str = "canary-integration-key-0001";
    const OBSERVED_KEY: &str = "observed-integration-key-0002";
    let mock = mock()
        .api_key(CANARY_KEY)
        .start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let test_instance = keybridge::cli::mock::MockCoupa::new()
        .api_key(OBSERVED_KEY)
        .start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let config = TestConfig::standard(&mock.base_url())
        .set("instances.test.base_url", test_instance.base_url())
        .push(
            "integrations",
            serde_json::json!({"name": "ap-canary", "api_key": CANARY_KEY,
                "client": "erp-sync", "mode": "canary", "canary_percent": 20}),
        )
        .push(
            "integrations",
            serde_json::json!({"name": "celigo-observed", "api_key": OBSERVED_KEY,
                "instance": "test", "mode": "observe"}),
        );
    let proxy = start_proxy(&config.yaml()).await;
    wait_ready(proxy.admin_addr).await;
    for key in [CANARY_KEY, OBSERVED_KEY] {
        for i in 0..10 {
            let path = format!("/api/invoices/{i}");
            let (status, _, _) = get(proxy.proxy_addr, &path, &[("x-coupa-api-key", key)]).await;
            assert_eq!(status, StatusCode::OK);
        }
    }
    assert_eq!(
        test_instance.api_hits(),
        10,
        "the observed integration reaches `test`"
    );
    let before = mock.api_hits();
    for i in 0..3 {
        let (status, _, _) = get(
            proxy.proxy_addr,
            &format!("/api/invoices/{i}"),
            &[("x-coupa-api-key", KEY)],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    // The client lacks core.supplier.read: Coupa answers 403, the advisor notices.
    get(
        proxy.proxy_addr,
        "/api/suppliers/1",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    let hostile = "<img src=x onerror=alert(1)>";
    get(
        proxy.proxy_addr,
        "/api/invoices",
        &[("x-coupa-api-key", "some-old-key"), ("user-agent", hostile)],
    )
    .await;
    assert_eq!(mock.api_hits() - before, 4);

    let url = format!("http://{}/", proxy.admin_addr);
    let dom = headless(url.clone(), vec!["--dump-dom".into()]).await;
    assert!(
        dom.contains(r#"data-loaded="true""#),
        "the page's script ran and loaded /audit:\n{dom}"
    );
    assert!(dom.contains(r#"data-integration="netsuite-bundle""#));
    assert!(
        dom.contains(r#"id="n-sending">2 of 3<"#),
        "the canary and the observed integration send keys; netsuite-bundle does not"
    );
    let row = |name: &str| {
        let start = dom.find(&format!(r#"data-integration="{name}""#)).unwrap();
        dom[start..start + dom[start..].find("</tr>").unwrap()].to_owned()
    };
    assert!(
        row("netsuite-bundle").contains("<td>prod</td>"),
        "instance column"
    );
    assert!(
        row("celigo-observed").contains("<td>test</td>"),
        "instance column"
    );
    assert!(
        row("netsuite-bundle").contains("core.invoice.write"),
        "unused scopes column: the client requests write, nothing wrote"
    );
    assert!(dom.contains("on OAuth"), "state badge");
    assert!(
        dom.contains(r#"data-instance="prod""#) && dom.contains("25/s, burst 20, wait ≤ 10 s"),
        "the rate-limit panel shows the instance's budget"
    );
    assert!(dom.contains("core.supplier.read (missing)"), "scope advice");
    assert!(dom.contains("add scopes: core.supplier.read"));
    assert!(
        !dom.contains(r#"id="key-share">0%<"#) && !dom.contains(r#"id="key-share">–<"#),
        "progress card: some forwarded traffic is still on keys"
    );
    assert!(
        dom.contains(r#"id="key-share-line""#),
        "the chart was drawn"
    );
    let fp = keybridge::keys::Fingerprint::of_key(b"some-old-key").to_string();
    assert!(dom.contains(&fp), "unknown key listed by fingerprint");
    assert!(
        dom.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "hostile user agent shown as text"
    );
    assert!(!dom.contains(hostile), "never as markup");
    assert!(!dom.contains("some-old-key") && !dom.contains(SECRET));

    let png = temp_path("dashboard.png");
    headless(url, vec![format!("--screenshot={}", png.display())]).await;
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG screenshot");
    assert!(
        bytes.len() > 20_000,
        "a rendered page, not a blank one ({} bytes)",
        bytes.len()
    );
}

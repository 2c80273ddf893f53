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

use std::process::Command;

use http::StatusCode;
use support::*;

fn chromium() -> String {
    std::env::var("KEYBRIDGE_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned())
}

/// Runs headless Chromium on `url` with `extra` flags and returns its stdout.
async fn headless(url: String, extra: Vec<String>) -> String {
    let profile = temp_path("chromium-profile");
    tokio::task::spawn_blocking(move || {
        let out = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                "--virtual-time-budget=5000",
                "--window-size=1280,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(&extra)
            .arg(&url)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `{}` ({e}); install Debian's chromium",
                    chromium()
                )
            });
        assert!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_dashboard_renders_progress_states_advice_and_unknown_keys() {
    let (mock, proxy) = start_pair(mock(), "").await;
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
    assert_eq!(mock.api_hits(), 4);

    let url = format!("http://{}/", proxy.admin_addr);
    let dom = headless(url.clone(), vec!["--dump-dom".into()]).await;
    assert!(
        dom.contains(r#"data-loaded="true""#),
        "the page's script ran and loaded /audit:\n{dom}"
    );
    assert!(dom.contains(r#"data-integration="netsuite-bundle""#));
    assert!(dom.contains("on OAuth"), "state badge");
    assert!(dom.contains("core.supplier.read (missing)"), "scope advice");
    assert!(dom.contains("add scopes: core.supplier.read"));
    assert!(
        dom.contains(r#"id="key-share">0%<"#),
        "progress card: all forwarded traffic is on OAuth"
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

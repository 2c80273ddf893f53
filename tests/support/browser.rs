//! Headless Chromium (Debian's `chromium`; `KEYBRIDGE_CHROMIUM` names another binary),
//! for the tests that look at the dashboard as an admin would.

use std::process::Command;

use super::temp_path;

fn chromium() -> String {
    std::env::var("KEYBRIDGE_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned())
}

/// Runs headless Chromium on `url` with `extra` flags and returns its stdout.
pub async fn headless(url: String, extra: Vec<String>) -> String {
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

//! A newcomer runs `keybridge demo`, follows the printed curl line, and stops it with
//! SIGTERM: the key is swapped for a bearer and the process exits cleanly. The test
//! closes the demo's stdout after reading the instructions, as `| head` would.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use http::StatusCode;
use support::*;

fn addr_after(text: &str, label: &str) -> SocketAddr {
    let line = text.lines().find(|l| l.starts_with(label)).unwrap();
    line.rsplit("http://")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn the_demo_swaps_the_key_and_stops_cleanly_on_sigterm() {
    // Its own directory: a test never writes into a demo's (or anyone's) audit.
    let dir = temp_path("demo");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keybridge"))
        .args([
            "demo",
            "--listen=127.0.0.1:0",
            "--admin-listen=127.0.0.1:0",
            "--mock-listen=127.0.0.1:0",
        ])
        .arg(format!("--dir={}", dir.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let text = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            text.push_str(&line);
            text.push('\n');
            if line.contains("Ctrl-C to stop") {
                break;
            }
        }
        text
    })
    .await
    .unwrap();
    let proxy = addr_after(&text, "proxy:");
    let admin = addr_after(&text, "admin:");
    wait_ready(admin).await;

    let key = keybridge::cli::demo::DEMO_API_KEY;
    assert!(
        text.contains(key),
        "the printed curl commands carry the demo key"
    );
    let (status, _, body) = get(proxy, "/api/invoices/42", &[("x-coupa-api-key", key)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["auth"], "bearer");

    // The README's quick-start curl, as written (only the port is this demo's).
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("curl -sg -H 'X-COUPA-API-KEY").unwrap();
    let end = start + readme[start..].find("\n```").unwrap();
    let curl = readme[start..end].replace("127.0.0.1:8080", &proxy.to_string());
    let out = Command::new("sh").arg("-c").arg(&curl).output().unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{curl}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(body.contains(r#""auth":"bearer""#), "{curl}: {body}");
    assert!(
        body.contains(r#"fields=[%22id%22]"#),
        "the query arrives byte-exact: {body}"
    );

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(key), "the key is never logged");

    // The printed command reads the demo's audit after it stopped.
    let config = dir.join("config.yaml");
    assert!(
        text.contains(&format!("keybridge audit --config {}", config.display())),
        "{text}"
    );
    let audit = Command::new(env!("CARGO_BIN_EXE_keybridge"))
        .args(["audit", "--format", "json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    let report = json(&audit.stdout);
    let erp = report["integrations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "demo-erp")
        .unwrap();
    assert_eq!(
        erp["requests"]["oauth"], 2,
        "the two requests of this demo, nothing else"
    );
}

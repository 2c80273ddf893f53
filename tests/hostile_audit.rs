//! Hostile traffic cannot grow the audit: 20,000 unauthenticated requests with random
//! keys, no key, random paths and 5 KB method tokens leave the audit database, `/audit`
//! and keybridge's memory within the bounds SECURITY.md states.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use support::*;

/// The bounds this test holds keybridge to (SECURITY.md, "The audit").
const MAX_DB_BYTES: u64 = 8 * 1024 * 1024;
const MAX_AUDIT_JSON_BYTES: usize = 1024 * 1024;
const MAX_RSS_KB: u64 = 100 * 1024;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_hostile_requests_leave_the_audit_and_memory_within_bounds() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let (proxy_port, admin_port) = (free_port(), free_port());
    let db = temp_path("audit.db");
    let yaml = TestConfig::standard(&mock.base_url())
        .set("listen", format!("127.0.0.1:{proxy_port}"))
        .set("admin_listen", format!("127.0.0.1:{admin_port}"))
        .set("audit.path", db.display().to_string())
        .set("server.access_log", false)
        .set("unknown_keys", "reject")
        .yaml();
    let config = temp_path("config.yaml");
    std::fs::write(&config, yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keybridge"))
        .args(["run", "--config"])
        .arg(&config)
        .env("ERP_SYNC_SECRET", SECRET)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let proxy: std::net::SocketAddr = format!("127.0.0.1:{proxy_port}").parse().unwrap();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(admin).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_ready(admin).await;
    // Secret hygiene of the running process: no core dumps, a private audit file.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(
        core.split_whitespace().filter(|w| *w == "0").count() >= 2,
        "{core}"
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "audit file mode {mode:o}");
    }

    let long_method = Method::from_bytes("X".repeat(5 * 1024).as_bytes()).unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let long_method = long_method.clone();
            tokio::spawn(async move {
                let client = client();
                let mut statuses = std::collections::BTreeMap::new();
                for i in 0..1250 {
                    let n = t * 1250 + i;
                    let random = format!("{:016x}", fastrand::u64(..));
                    let path = match n % 3 {
                        0 => format!("/api/{random}/{}", fastrand::u32(..)),
                        1 => format!("/{random}/x{n}"),
                        _ => format!("/api/invoices/{n}/{random}"),
                    };
                    let bogus = format!("bogus-{random}-{n}");
                    let mut headers = vec![("user-agent", random.as_str())];
                    if n % 4 != 0 {
                        headers.push(("x-coupa-api-key", bogus.as_str()));
                    }
                    let method = if n % 5 == 0 {
                        long_method.clone()
                    } else {
                        Method::GET
                    };
                    let (status, _, _) =
                        send_with(&client, method, proxy, &path, &headers, Bytes::new()).await;
                    *statuses.entry(status.as_u16()).or_insert(0u32) += 1;
                }
                statuses
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    for t in tasks {
        for (s, n) in t.await.unwrap() {
            *statuses.entry(s).or_insert(0u32) += n;
        }
    }
    assert_eq!(statuses.values().sum::<u32>(), 20_000);
    assert!(
        statuses.keys().all(|s| [400, 401, 404, 405].contains(s)),
        "{statuses:?}"
    );
    assert_eq!(mock.api_hits(), 0, "nothing reached Coupa");

    // /audit flushes first: everything is in the store when it answers.
    let (status, _, body) = get(admin, "/audit", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let rss = rss_kb(child.id());
    let audit = json(&body);
    let counted: u64 = ["unknown_keys", "other_callers"]
        .iter()
        .flat_map(|k| audit[k].as_array().unwrap().iter())
        .map(|c| c["total"].as_u64().unwrap())
        .sum();
    assert_eq!(
        counted, 20_000,
        "every hostile request is counted, none dropped"
    );

    let db_bytes: u64 = ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", db.display())).ok())
        .map(|m| m.len())
        .sum();
    let _ = child.kill();
    let _ = child.wait();
    eprintln!(
        "bounds: db {db_bytes} bytes, /audit {} bytes, rss {rss} kB",
        body.len()
    );
    assert!(db_bytes <= MAX_DB_BYTES, "audit database {db_bytes} bytes");
    assert!(
        body.len() <= MAX_AUDIT_JSON_BYTES,
        "/audit {} bytes",
        body.len()
    );
    assert!(rss <= MAX_RSS_KB, "RSS {rss} kB");
}

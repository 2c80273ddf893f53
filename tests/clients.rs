//! Every legacy client works unchanged. First the protocol details real clients depend
//! on, each over a real socket; then the platform HTTP clients integrations are written
//! with — Java 17's `HttpClient` as shipped and pinned to HTTP/1.1, `HttpURLConnection`,
//! curl in each HTTP mode, Python `requests` and `httpx` (HTTP/1.1 and HTTP/2) — each
//! running one integration's flow (XML and JSON paging, Coupa's `fields=[…]` query, an
//! XML POST, a 5 MB chunked PUT, `Expect: 100-continue`, gzip, keep-alive) through
//! keybridge against the mock Coupa. The flows are in `tests/clients/`.
//!
//! A client that is not installed fails its test with the package to install (`.ci/run`
//! installs them all); nothing is skipped.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use keybridge::cli::mock::MockHandle;
use sha2::{Digest, Sha256};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Coupa's projection as `HttpURLConnection` users and `curl -g` send it: raw quotes.
const FIELDS_RAW: &str = r#"/api/invoices?fields=["id",{"supplier":["name"]}]"#;
/// What Coupa receives for it: the quotes percent-encoded, as a browser sends them.
const FIELDS_FORWARDED: &str = "/api/invoices?fields=[%22id%22,{%22supplier%22:[%22name%22]}]";

// ---- protocol details, over real sockets ----

#[tokio::test]
async fn a_raw_quote_in_the_query_is_answered_over_http1_and_coupa_gets_it_encoded() {
    let (mock, proxy) = start_pair(mock(), "").await;
    let reply = raw_exchange(
        proxy.proxy_addr,
        format!("GET {FIELDS_RAW} HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(mock.requests()[0].target, FIELDS_FORWARDED);
    // The other bytes the `http` crate refused but clients send raw; and raw UTF-8.
    let reply = raw_exchange(
        proxy.proxy_addr,
        format!("GET /api/invoices?q=<a>&n=caf\u{e9}&t=`x` HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(
        mock.requests()[1].target,
        "/api/invoices?q=%3Ca%3E&n=caf%C3%A9&t=`x`"
    );
}

/// An HTTP/2 client with prior knowledge, on a fresh connection to `addr`.
async fn h2_client(addr: std::net::SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    h2.ready().await.unwrap()
}

#[tokio::test]
async fn over_http2_a_raw_quote_is_answered_and_a_refused_target_gets_a_400_not_a_reset() {
    let (mock, proxy) = start_pair(mock(), "").await;
    let mut h2 = h2_client(proxy.proxy_addr).await;
    let addr = proxy.proxy_addr;
    for (target, want) in [
        (FIELDS_RAW, StatusCode::OK),
        ("/api/invoices/`1`?a=<b>", StatusCode::OK),
        // Refused by keybridge's path rules, not by the HTTP/2 layer: a 400 response.
        ("/api/../oauth2/token", StatusCode::BAD_REQUEST),
        ("/api/caf\u{e9}", StatusCode::BAD_REQUEST),
    ] {
        let request = http::Request::get(format!("http://{addr}{target}"))
            .header("x-coupa-api-key", KEY)
            .body(())
            .unwrap();
        let (response, _) = h2.send_request(request, true).unwrap();
        let response = response
            .await
            .unwrap_or_else(|e| panic!("{target}: no HTTP response ({e})"));
        assert_eq!(response.status(), want, "{target}");
    }
    let seen: Vec<String> = mock.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(seen, [FIELDS_FORWARDED, "/api/invoices/%601%60?a=%3Cb%3E"]);
}

#[tokio::test]
async fn expect_100_continue_is_answered_over_http2_before_the_body_is_sent() {
    let (mock, proxy) = start_pair(mock(), "").await;
    let mut h2 = h2_client(proxy.proxy_addr).await;
    let request = http::Request::put(format!("http://{}/api/invoices/7", proxy.proxy_addr))
        .header("x-coupa-api-key", KEY)
        .header("expect", "100-continue")
        .header("content-type", "application/octet-stream")
        .body(())
        .unwrap();
    let (mut response, mut body) = h2.send_request(request, false).unwrap();
    // No body byte is sent until the interim response arrives.
    let interim = tokio::time::timeout(
        Duration::from_secs(5),
        std::future::poll_fn(|cx| response.poll_informational(cx)),
    )
    .await
    .expect("a 100 Continue within 5 s")
    .expect("an informational response")
    .unwrap();
    assert_eq!(interim.status(), StatusCode::CONTINUE);
    body.send_data(Bytes::from(vec![7_u8; 70_000]), true)
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("the final response")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = mock.requests();
    assert_eq!(seen[0].body_len, 70_000);
    assert!(
        seen[0].headers.get("expect").is_none(),
        "settled with the caller"
    );
}

#[tokio::test]
async fn an_h2c_offer_with_expect_continue_is_served_over_http1() {
    // Java's HttpClient as shipped, on http://, with expectContinue(true): the offer is
    // ignored, the 100 comes, the body follows, the answer is HTTP/1.1.
    let (mock, proxy) = start_pair(mock(), "").await;
    let mut s = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    s.write_all(format!(
        "PUT /api/invoices/7 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
         HTTP2-Settings: AAEAAEAAAAIAAAABAAMAAABkAAQBAAAAAAUAAEAA\r\nExpect: 100-continue\r\n\
         Content-Length: 5\r\nX-COUPA-API-KEY: {KEY}\r\n\r\n"
    ).as_bytes()).await.unwrap();
    let mut interim = [0_u8; 25];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut interim))
        .await
        .expect("a 100 Continue within 5 s")
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    let mut head = [0_u8; 12];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .expect("the final response")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let seen = mock.requests();
    assert_eq!(seen[0].body_len, 5);
    assert!(seen[0].headers.get("upgrade").is_none());
    assert!(seen[0].headers.get("http2-settings").is_none());
}

#[tokio::test]
async fn keybridges_own_401s_say_which_header_to_send() {
    let (_mock, proxy) = start_pair(mock(), "").await;
    for headers in [vec![], vec![("x-coupa-api-key", "not-a-key-of-ours")]] {
        let (status, headers, _) = get(proxy.proxy_addr, "/api/invoices/1", &headers).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            headers["www-authenticate"],
            r#"Coupa-API-Key realm="keybridge", header="X-COUPA-API-KEY""#
        );
    }
}

// ---- the real clients ----

/// A keybridge in front of a fresh mock Coupa: plain, or with TLS on the listener.
async fn through_keybridge(tls: bool) -> (MockHandle, keybridge::runtime::Running, String) {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let mut config = TestConfig::standard(&mock.base_url());
    if tls {
        config = config.tls_listener();
    }
    let proxy = start_proxy(&config.yaml()).await;
    wait_ready(proxy.admin_addr).await;
    let scheme = if tls { "https" } else { "http" };
    let base = format!("{scheme}://127.0.0.1:{}", proxy.proxy_addr.port());
    (mock, proxy, base)
}

fn flow(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
}

/// `program`, or a failure naming the Debian/PyPI package that provides it.
fn require(program: &str, package: &str) -> Command {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| dir.join(program).is_file());
    assert!(
        found,
        "`{program}` is not installed: install {package} (.ci/run does)"
    );
    Command::new(program)
}

/// The Python that has `requests` and `httpx[http2]`: `KEYBRIDGE_TEST_PYTHON`, the
/// virtualenv `.ci/run` makes, or `python3`.
fn python() -> Command {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/clients-venv/bin/python3");
    let python = std::env::var("KEYBRIDGE_TEST_PYTHON")
        .ok()
        .or_else(|| venv.is_file().then(|| venv.display().to_string()))
        .unwrap_or_else(|| "python3".into());
    let has_modules = Command::new(&python)
        .args(["-c", "import requests, httpx, h2"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_modules,
        "{python} lacks requests/httpx/h2: `pip install requests 'httpx[http2]'` (.ci/run does, in target/clients-venv)"
    );
    Command::new(python)
}

/// Runs a client's flow to completion (at most 3 minutes) and returns what it printed;
/// fails with its whole output if any step failed.
async fn run(mut cmd: Command) -> String {
    let shown = format!("{cmd:?}");
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .unwrap_or_else(|_| panic!("{shown} hung for 3 minutes"))
    .unwrap()
    .unwrap_or_else(|e| panic!("{shown}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("DONE"),
        "{shown} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// What every flow leaves at Coupa: nothing of an upgrade offer, only our bearer, the
/// 5 MB upload byte-exact, and the `fields=[…]` query in the form a browser sends.
fn assert_coupa_saw_the_flow(mock: &MockHandle, client: &str) {
    let seen = mock.requests();
    // 3 + 3 pages, the fields query, the POST, two PUTs, the gzip GET (curl asks once
    // more for the version it used).
    assert!(seen.len() >= 11, "{client}: {} requests", seen.len());
    for r in &seen {
        for name in ["upgrade", "http2-settings", "x-coupa-api-key", "expect"] {
            assert!(
                r.headers.get(name).is_none(),
                "{client}: {name} reached Coupa"
            );
        }
        assert!(
            matches!(r.auth, keybridge::cli::mock::MockAuth::Bearer { .. }),
            "{client}: {} without our bearer",
            r.target
        );
    }
    let big: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let upload = seen
        .iter()
        .find(|r| r.target == "/api/invoices/7/image_scan")
        .unwrap_or_else(|| panic!("{client}: no upload"));
    assert_eq!(
        upload.body_sha256,
        hex::encode(Sha256::digest(&big)),
        "{client}"
    );
    // A client that sends the quotes raw gets them encoded as a browser would; one that
    // encodes the whole projection itself (`HttpClient`, `requests`) gets it as sent.
    let fields = seen
        .iter()
        .find(|r| r.target.starts_with("/api/invoices?fields="))
        .unwrap_or_else(|| panic!("{client}: no fields query"));
    assert!(
        fields.target == FIELDS_FORWARDED
            || fields.target
                == "/api/invoices?fields=%5B%22id%22,%7B%22supplier%22:%5B%22name%22%5D%7D%5D",
        "{client}: the fields query arrived as {}",
        fields.target
    );
}

/// The HTTP version the flow's last request used, as the client reported it.
fn version(stdout: &str) -> &str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("version "))
        .unwrap_or("")
}

async fn java(client: &str, tls: bool) -> String {
    let (mock, _proxy, base) = through_keybridge(tls).await;
    let mut cmd = require("java", "openjdk-17-jre-headless");
    if tls {
        // The listener's CA, as a Java trust store.
        let store = temp_path("trust.p12");
        let status = require("keytool", "openjdk-17-jre-headless")
            .args([
                "-importcert",
                "-noprompt",
                "-alias",
                "ca",
                "-storetype",
                "PKCS12",
            ])
            .arg("-file")
            .arg(fixture("ca.pem"))
            .arg("-keystore")
            .arg(&store)
            .args(["-storepass", "changeit"])
            .output()
            .unwrap();
        assert!(status.status.success(), "{status:?}");
        cmd.arg(format!("-Djavax.net.ssl.trustStore={}", store.display()))
            .arg("-Djavax.net.ssl.trustStorePassword=changeit");
    }
    cmd.arg(flow("JavaFlow.java")).args([&base, KEY, client]);
    let stdout = run(cmd).await;
    assert_coupa_saw_the_flow(&mock, client);
    stdout
}

#[tokio::test]
async fn java_httpclient_as_shipped_on_http_ignores_nothing_and_loses_nothing() {
    // It offers h2c on every request; keybridge serves each over HTTP/1.1.
    let out = java("httpclient", false).await;
    assert_eq!(version(&out), "HTTP_1_1", "{out}");
}

#[tokio::test]
async fn java_httpclient_as_shipped_on_https_speaks_http2_with_expect_continue() {
    let out = java("httpclient", true).await;
    assert_eq!(version(&out), "HTTP_2", "{out}");
}

#[tokio::test]
async fn java_httpclient_pinned_to_http1() {
    java("httpclient-http1", false).await;
}

#[tokio::test]
async fn java_httpurlconnection_with_raw_quotes() {
    java("urlconnection", false).await;
}

async fn curl(mode: &str, tls: bool) -> String {
    let (mock, _proxy, base) = through_keybridge(tls).await;
    require("curl", "curl");
    let mut cmd = Command::new("bash");
    cmd.arg(flow("curl_flow.sh")).args([&base, KEY, mode]);
    if tls {
        cmd.arg(fixture("ca.pem"));
    }
    let out = run(cmd).await;
    assert_coupa_saw_the_flow(&mock, &format!("curl {mode}"));
    out
}

#[tokio::test]
async fn curl_http1() {
    let out = curl("--http1.1", false).await;
    assert_eq!(version(&out), "1.1");
}

#[tokio::test]
async fn curl_http2_on_http_offers_h2c_and_is_served_over_http1() {
    let out = curl("--http2", false).await;
    assert_eq!(version(&out), "1.1");
}

#[tokio::test]
async fn curl_http2_prior_knowledge() {
    let out = curl("--http2-prior-knowledge", false).await;
    assert_eq!(version(&out), "2");
}

#[tokio::test]
async fn curl_http2_over_tls() {
    let out = curl("--http2", true).await;
    assert_eq!(version(&out), "2");
}

async fn python_flow(client: &str, tls: bool) -> String {
    let (mock, _proxy, base) = through_keybridge(tls).await;
    let mut cmd = python();
    cmd.arg(flow("python_flow.py")).args([&base, KEY, client]);
    if tls {
        cmd.arg(fixture("ca.pem"));
    }
    let out = run(cmd).await;
    assert_coupa_saw_the_flow(&mock, client);
    out
}

#[tokio::test]
async fn python_requests() {
    python_flow("requests", false).await;
}

#[tokio::test]
async fn python_httpx_http1() {
    python_flow("httpx", false).await;
}

#[tokio::test]
async fn python_httpx_http2_over_tls() {
    let out = python_flow("httpx-h2", true).await;
    assert_eq!(version(&out), "HTTP/2", "{out}");
}

#[tokio::test]
async fn python_httpx_http2_prior_knowledge() {
    let out = python_flow("httpx-h2", false).await;
    assert_eq!(version(&out), "HTTP/2", "{out}");
}

//! Shared test harness: a mock Coupa and keybridge on 127.0.0.1:0, a real HTTP client,
//! and a capture of everything keybridge logs (to check no secret ever appears).
//!
//! Configurations are built with [`TestConfig`] (a YAML tree edited by field path).
//! A proxy (`Running`) and a mock (`MockHandle`) stop serving when dropped, so a test
//! ends without cleanup calls; it calls `shutdown().await` only where it tests shutdown
//! or needs the final audit flush.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keybridge::cli::mock::{MockCoupa, MockHandle};
use keybridge::config::Config;
use keybridge::runtime::Running;

pub mod browser;
pub mod config;
pub mod leak;
pub mod pg;
pub mod process;
pub mod raw;
pub mod redis_server;
pub mod relay;
pub mod tls_front;

pub use config::TestConfig;

pub const KEY: &str = "0123456789abcdef0123456789abcdef01234567";
pub const SECRET: &str = "erp-sync-secret-5f1c9a7e";

/// Everything keybridge logged in this test binary so far.
pub fn logs() -> String {
    String::from_utf8_lossy(&log_buffer().lock().unwrap()).into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = CaptureWriter(Arc::clone(&buf));
        let _ = tracing_subscriber::fmt()
            .json()
            .flatten_event(true) // as in production (main.rs)
            .with_env_filter("debug,hyper=info,h2=info,rustls=info")
            .with_writer(move || writer.clone())
            .try_init();
        buf
    })
}

#[derive(Clone)]
struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        leak::append("log", b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A mock Coupa with the standard `erp-sync` client and legacy key.
pub fn mock() -> MockCoupa {
    MockCoupa::new()
        .client(
            "erp-sync-client",
            SECRET,
            &["core.invoice.read", "core.invoice.write", "core.user.read"],
        )
        .api_key(KEY)
}

/// The standard config ([`TestConfig::standard`]) with `extra` (a YAML mapping) merged in.
pub fn config_yaml(base_url: &str, extra: &str) -> String {
    TestConfig::standard(base_url).merge(extra).yaml()
}

/// A file of `tests/fixtures` (the test CA, and a certificate for localhost and
/// 127.0.0.1 signed by it, with its key).
pub fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A fresh path under the system temp directory (the file is not created).
pub fn temp_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "keybridge-test-{}-{:016x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

pub fn env() -> HashMap<String, String> {
    HashMap::from([("ERP_SYNC_SECRET".to_owned(), SECRET.to_owned())])
}

pub fn parse(yaml: &str) -> Config {
    Config::from_yaml(yaml, Path::new("."), &env()).unwrap()
}

/// Starts keybridge with `yaml` (listeners on port 0).
pub async fn start_proxy(yaml: &str) -> Running {
    log_buffer();
    let config = parse(yaml);
    leak::note_secrets(&config);
    let running = keybridge::runtime::start(config).await.unwrap();
    leak::watch(&running);
    running
}

/// Starts the standard mock and a proxy in front of it; waits until ready.
pub async fn start_pair(mock: MockCoupa, extra: &str) -> (MockHandle, Running) {
    let mock = mock.start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let proxy = start_proxy(&config_yaml(&mock.base_url(), extra)).await;
    wait_ready(proxy.admin_addr).await;
    (mock, proxy)
}

pub async fn wait_ready(admin: SocketAddr) {
    for _ in 0..200 {
        let (status, _, _) = get(admin, "/readyz", &[]).await;
        if status == StatusCode::OK {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("keybridge never became ready");
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Sends a request over a real socket and collects the response.
pub async fn send(
    method: Method,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (StatusCode, HeaderMap, Bytes) {
    send_with(&client(), method, addr, path, headers, body).await
}

pub async fn send_with(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("x-coupa-api-key") {
            leak::note_canary(v);
        }
    }
    let resp = client
        .request(req.body(Full::new(body.into())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    leak::response(addr, &parts.headers, &body);
    (parts.status, parts.headers, body)
}

pub async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    send(Method::GET, addr, path, headers, Bytes::new()).await
}

pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Sends raw bytes on a fresh connection and returns what came back until close.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    String::from_utf8_lossy(&raw_exchange_bytes(addr, request).await.0).into_owned()
}

/// Like [`raw_exchange`]; also says whether the peer closed within 5 s.
pub async fn raw_exchange_bytes(addr: SocketAddr, request: &[u8]) -> (Vec<u8>, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
    leak::raw_response(addr, &out);
    (out, read.is_ok())
}

pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// An address nothing listens on.
pub async fn closed_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// Points the `prod` instance's token endpoint at `token_base` (API stays at base_url).
pub fn with_token_url(yaml: &str, token_base: &str) -> String {
    TestConfig::from_yaml(yaml)
        .set(
            "instances.prod.token_url",
            format!("{token_base}/oauth2/token"),
        )
        .yaml()
}

/// Sends GETs back to back (10 ms apart) for `dur`, asserting every one succeeds;
/// returns how many were sent.
pub async fn hammer(addr: SocketAddr, dur: std::time::Duration) -> usize {
    let client = client();
    let until = std::time::Instant::now() + dur;
    let mut n = 0;
    while std::time::Instant::now() < until {
        let (status, _, body) = send_with(
            &client,
            Method::GET,
            addr,
            "/api/invoices/1",
            &[("x-coupa-api-key", KEY)],
            Bytes::new(),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "request {n} failed: {}",
            String::from_utf8_lossy(&body)
        );
        n += 1;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    n
}

//! Evidence for the leak scan (tests/leak_scan.rs): every log line keybridge writes in
//! a test binary, every response (head and body) a test received from a keybridge
//! listener, and the secrets those tests used — keys sent, client secrets configured.
//! Files go to `target/tmp/leak-scan/`, one set per test process; the scan reads them
//! all after the suite has run.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use http::HeaderMap;
use keybridge::config::Config;
use keybridge::runtime::Running;

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("leak-scan")
}

fn files() -> &'static Mutex<Option<[File; 3]>> {
    static FILES: OnceLock<Mutex<Option<[File; 3]>>> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = dir();
        let _ = std::fs::create_dir_all(&dir);
        let exe = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let open = |kind: &str| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("{exe}-{}.{kind}", std::process::id())))
        };
        Mutex::new(match (open("log"), open("responses"), open("canaries")) {
            (Ok(a), Ok(b), Ok(c)) => Some([a, b, c]),
            _ => None,
        })
    })
}

/// Appends to this process's `log`, `responses` or `canaries` file.
pub fn append(kind: &str, bytes: &[u8]) {
    let i = match kind {
        "log" => 0,
        "responses" => 1,
        _ => 2,
    };
    if let Some(files) = files().lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        let _ = files[i].write_all(bytes);
    }
}

fn watched() -> &'static Mutex<HashSet<SocketAddr>> {
    static W: OnceLock<Mutex<HashSet<SocketAddr>>> = OnceLock::new();
    W.get_or_init(Mutex::default)
}

/// Responses from these listeners are keybridge's and get scanned.
pub fn watch(running: &Running) {
    let mut w = watched().lock().unwrap();
    w.insert(running.proxy_addr);
    w.insert(running.admin_addr);
}

fn is_keybridge(addr: SocketAddr) -> bool {
    watched().lock().unwrap().contains(&addr)
}

/// A secret a test used; short strings are skipped (they would match by accident).
pub fn note_canary(secret: &str) {
    static NOTED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let fresh = NOTED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap()
        .insert(secret.to_owned());
    if fresh && secret.len() >= 10 {
        append("canaries", format!("{secret}\n").as_bytes());
    }
}

pub fn note_secrets(config: &Config) {
    for client in config.clients.values() {
        note_canary(client.client_secret.expose());
    }
}

pub fn response(addr: SocketAddr, headers: &HeaderMap, body: &[u8]) {
    if !is_keybridge(addr) {
        return;
    }
    let mut out = Vec::new();
    for (k, v) in headers {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(body);
    out.push(b'\n');
    append("responses", &out);
}

pub fn raw_response(addr: SocketAddr, bytes: &[u8]) {
    if is_keybridge(addr) {
        append("responses", bytes);
        append("responses", b"\n");
    }
}

/// Output of a keybridge process a test ran.
pub fn process_output(stdout: &[u8], stderr: &[u8]) {
    append("log", stdout);
    append("log", stderr);
}

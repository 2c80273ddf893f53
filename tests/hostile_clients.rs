//! Callers that are broken or hostile: request smuggling shapes, oversized heads, key
//! headers in odd spellings, slowloris, connection and request floods, and thousands of
//! made-up keys. Each is refused at the edge and never reaches Coupa, while well-behaved
//! callers keep being served.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod support;

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::raw::RawUpstream;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn status_of(reply: &str) -> &str {
    reply.get(9..12).unwrap_or(reply)
}

#[tokio::test]
async fn request_smuggling_shapes_are_refused_and_never_forwarded() {
    let (mock, proxy) = start_pair(mock(), "").await;
    let head = format!("POST /api/invoices HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\n");
    // CL+TE, in either order: refused with 400 (RFC 9112 §6.1 allows it; nginx does it)
    // and the connection closed, so the bytes smuggled after it are never parsed.
    for framing in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 4",
    ] {
        let cl_te = format!(
            "{head}{framing}\r\n\r\n0\r\n\r\n\
             GET /api/users HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\n\r\n"
        );
        let reply = raw_exchange(proxy.proxy_addr, cl_te.as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{framing}: {reply}");
        assert_eq!(
            reply.matches("HTTP/1.1").count(),
            1,
            "one response, then close: {reply}"
        );
    }
    assert_eq!(mock.api_hits(), 0, "nothing of either reached Coupa");

    let cases = [
        (
            "two Content-Lengths",
            format!("{head}Content-Length: 4\r\nContent-Length: 40\r\n\r\nbody"),
        ),
        (
            "Content-Length list",
            format!("{head}Content-Length: 4, 40\r\n\r\nbody"),
        ),
        (
            "signed Content-Length",
            format!("{head}Content-Length: +4\r\n\r\nbody"),
        ),
        (
            "obs-fold",
            format!("{head}X-Note: a\r\n  folded\r\nContent-Length: 4\r\n\r\nbody"),
        ),
        (
            "bad chunk size",
            format!("{head}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "TE not ending in chunked",
            format!("{head}Transfer-Encoding: chunked, identity\r\n\r\n4\r\nbody\r\n0\r\n\r\n"),
        ),
        (
            "space before colon",
            format!("{head}Content-Length : 4\r\n\r\nbody"),
        ),
    ];
    for (name, request) in cases {
        let reply = raw_exchange(proxy.proxy_addr, request.as_bytes()).await;
        assert_eq!(status_of(&reply), "400", "{name}: {reply:.200}");
        assert_eq!(
            reply.matches("HTTP/1.1").count(),
            1,
            "{name}: nothing smuggled after the refusal"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(mock.api_hits(), 0, "no smuggling shape reached Coupa");
}

#[tokio::test]
async fn oversized_heads_and_uris_are_refused_without_reaching_coupa() {
    let (mock, proxy) = start_pair(mock(), "").await;
    let key = format!("X-COUPA-API-KEY: {KEY}\r\n");
    let big_header = format!(
        "GET /api/invoices HTTP/1.1\r\nHost: x\r\n{key}X-Big: {}\r\n\r\n",
        "a".repeat(512 * 1024)
    );
    let many_headers = format!(
        "GET /api/invoices HTTP/1.1\r\nHost: x\r\n{key}{}\r\n",
        (0..500)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let long_uri = format!(
        "GET /api/invoices?q={} HTTP/1.1\r\nHost: x\r\n{key}\r\n",
        "a".repeat(70_000)
    );
    for (name, request, want) in [
        ("512 KiB header", big_header, "431"),
        ("500 headers", many_headers, "431"),
        ("70 KB URI", long_uri, "414"),
    ] {
        let reply = raw_exchange(proxy.proxy_addr, request.as_bytes()).await;
        assert_eq!(status_of(&reply), want, "{name}: {reply:.200}");
    }
    assert_eq!(mock.api_hits(), 0);
}

#[tokio::test]
async fn key_headers_in_odd_spellings_never_reach_coupa() {
    let (mock, proxy) = start_pair(mock(), "").await;
    let (status, _, _) = get(
        proxy.proxy_addr,
        "/api/invoices",
        &[
            ("x-coupa-api-key", KEY),
            ("x_coupa_api_key", KEY),
            ("X_Coupa-Api_Key", "another-key-that-must-not-leak"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = &mock.requests()[0];
    for (name, value) in &seen.headers {
        let n = name.as_str().replace('_', "-");
        assert_ne!(n, "x-coupa-api-key", "a key header reached Coupa");
        assert!(
            !value
                .as_bytes()
                .windows(KEY.len())
                .any(|w| w == KEY.as_bytes())
        );
    }
    assert_eq!(seen.headers.get_all("authorization").iter().count(), 1);

    // An odd spelling alone is not a key: refused as keyless, nothing forwarded.
    let (status, _, body) = get(
        proxy.proxy_addr,
        "/api/invoices",
        &[("x_coupa_api_key", KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json(&body)["error"], "missing_api_key");
    assert_eq!(mock.api_hits(), 1);
}

/// Writes `bytes` one at a time, `every` apart, until keybridge closes the connection;
/// returns how long that took (or None if it never did within `give_up`).
async fn trickle(
    addr: std::net::SocketAddr,
    bytes: &[u8],
    every: Duration,
    give_up: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.split();
    let writer = async {
        for b in bytes.iter().cycle() {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(every).await;
        }
    };
    let reader = async {
        let mut buf = [0u8; 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let closed = tokio::time::timeout(give_up, async {
        tokio::select! {
            () = reader => {},
            () = writer => {},
        }
    })
    .await;
    closed.ok().map(|()| started.elapsed())
}

#[tokio::test]
async fn slowloris_heads_and_bodies_are_cut_off_without_starving_others() {
    let extra = "server:\n  header_read_timeout: 1s\n  body_read_timeout: 1s\n";
    let (mock, proxy) = start_pair(mock(), extra).await;
    let addr = proxy.proxy_addr;
    let head =
        format!("GET /api/invoices HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\nX-Pad: ");
    let slow_heads: Vec<_> = (0..20)
        .map(|_| {
            let head = head.clone();
            tokio::spawn(async move {
                trickle(
                    addr,
                    head.as_bytes(),
                    Duration::from_millis(200),
                    Duration::from_secs(5),
                )
                .await
            })
        })
        .collect();
    let body_head = format!(
        "POST /api/invoices HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\nContent-Length: 100000\r\n\r\n"
    );
    let slow_body = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(body_head.as_bytes()).await.unwrap();
        s.write_all(&[b'x'; 100]).await.unwrap();
        let started = Instant::now();
        let mut out = Vec::new();
        // Then nothing: keybridge must give up on the body and close.
        let done = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        (
            done.is_ok(),
            started.elapsed(),
            String::from_utf8_lossy(&out).into_owned(),
        )
    });

    // Meanwhile, a well-behaved caller is served promptly.
    let client = client();
    for _ in 0..20 {
        let started = Instant::now();
        let (status, _, _) = send_with(
            &client,
            Method::GET,
            addr,
            "/api/invoices",
            &[("x-coupa-api-key", KEY)],
            bytes::Bytes::new(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(started.elapsed() < Duration::from_millis(500));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for t in slow_heads {
        let took = t.await.unwrap().expect("a trickled head was cut off");
        assert!(took < Duration::from_millis(2500), "cut off after {took:?}");
    }
    let (closed, took, reply) = slow_body.await.unwrap();
    assert!(closed, "a trickled body was cut off");
    assert!(took < Duration::from_millis(2500), "after {took:?}");
    assert_eq!(status_of(&reply), "408", "told it timed out: {reply:.200}");
    assert!(reply.contains("request_body_timeout"));
    assert!(
        mock.requests().iter().all(|r| r.method == Method::GET),
        "the unfinished upload never completed at Coupa"
    );
}

#[tokio::test]
async fn connections_beyond_the_cap_get_a_503() {
    let (_mock, proxy) = start_pair(mock(), "server:\n  max_connections: 4\n").await;
    let addr = proxy.proxy_addr;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let request = format!(
        "GET /api/invoices HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\nConnection: close\r\n\r\n"
    );
    let reply = raw_exchange(addr, request.as_bytes()).await;
    assert_eq!(status_of(&reply), "503", "{reply:.200}");

    drop(held.pop());
    let mut reply = String::new();
    for _ in 0..50 {
        reply = raw_exchange(addr, request.as_bytes()).await;
        if status_of(&reply) == "200" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        status_of(&reply),
        "200",
        "a freed slot is reused: {reply:.200}"
    );
}

#[tokio::test]
async fn requests_beyond_the_in_flight_cap_get_a_503() {
    let raw = RawUpstream::start().await;
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    // Per address as many as in all (unset, it would be a quarter: 1).
    let yaml = config_yaml(
        &raw.base_url(),
        "server: {max_in_flight: 2, max_in_flight_per_ip: 2}",
    );
    let proxy = start_proxy(&with_token_url(&yaml, &mock.base_url())).await;
    wait_ready(proxy.admin_addr).await;
    let addr = proxy.proxy_addr;
    let hanging: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(async move { get(addr, "/api/hang", &[("x-coupa-api-key", KEY)]).await })
        })
        .collect();
    for _ in 0..100 {
        if raw.hits("/api/hang") == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(raw.hits("/api/hang"), 2);
    let (status, _, body) = get(addr, "/api/ok", &[("x-coupa-api-key", KEY)]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(&body)["error"], "overloaded");

    // Callers giving up free their slots.
    for h in hanging {
        h.abort();
    }
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        status = get(addr, "/api/ok", &[("x-coupa-api-key", KEY)]).await.0;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn thousands_of_bogus_keys_stay_bounded_and_never_reach_coupa() {
    let (mock, proxy) = start_pair(mock(), "audit: {max_unknown_keys: 50}").await;
    let client = client();
    for i in 0..3000 {
        let bogus = format!("bogus-key-{i:08}-0000000000000000000000");
        let (status, _, body) = send_with(
            &client,
            Method::GET,
            proxy.proxy_addr,
            "/api/invoices",
            &[("x-coupa-api-key", &bogus)],
            bytes::Bytes::new(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            !String::from_utf8_lossy(&body).contains(&bogus),
            "the key is never echoed"
        );
    }
    assert_eq!(mock.api_hits(), 0);

    let (_, _, body) = get(proxy.admin_addr, "/audit", &[]).await;
    let audit = json(&body);
    let unknown = audit["unknown_keys"].as_array().unwrap();
    assert!(
        unknown.len() <= 51,
        "50 tracked + one overflow bucket: {}",
        unknown.len()
    );
    let total: u64 = unknown.iter().map(|u| u["total"].as_u64().unwrap()).sum();
    assert_eq!(total, 3000, "every refusal is still counted");
    assert!(
        unknown.iter().any(|u| u["name"] == "(other unknown keys)"),
        "the overflow is visible"
    );
}

#[tokio::test]
async fn an_http2_rapid_reset_flood_does_bounded_work_and_others_are_still_served() {
    // CVE-2023-44487: open streams and cancel them at once, as fast as possible. hyper
    // drops the request of a reset stream (and with it keybridge's upstream call), and
    // h2 (>= 0.4.4) sends GOAWAY(ENHANCE_YOUR_CALM) when resets pile up before they are
    // accepted: the flooding connection is closed after a few dozen resets.
    let (mock, proxy) = start_pair(mock(), "").await;
    let addr = proxy.proxy_addr;
    let flood = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(connection);
        let mut sent = 0u32;
        for _ in 0..20_000 {
            let ready = match tokio::time::timeout(Duration::from_secs(5), h2.ready()).await {
                Ok(Ok(ready)) => ready,
                Ok(Err(e)) => return (sent, Some(e.to_string())),
                Err(_) => panic!("the flooding connection stalled"),
            };
            h2 = ready;
            let request = http::Request::get(format!("http://{addr}/api/invoices"))
                .header("x-coupa-api-key", KEY)
                .body(())
                .unwrap();
            let (response, _) = match h2.send_request(request, true) {
                Ok(sent) => sent,
                Err(e) => return (sent, Some(e.to_string())),
            };
            drop(response); // RST_STREAM(CANCEL)
            sent += 1;
            tokio::task::yield_now().await; // let the connection task write the frames
        }
        conn.abort();
        (sent, None)
    });

    // Meanwhile a well-behaved caller is served promptly.
    let client = client();
    let mut slowest = Duration::ZERO;
    let mut served = 0;
    while !flood.is_finished() {
        let started = Instant::now();
        let (status, _, _) = send_with(
            &client,
            Method::GET,
            addr,
            "/api/invoices/1",
            &[("x-coupa-api-key", KEY)],
            bytes::Bytes::new(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        slowest = slowest.max(started.elapsed());
        served += 1;
    }
    let (sent, cut_off) = flood.await.unwrap();
    let cut_off = cut_off.unwrap_or_else(|| panic!("{sent} resets and the connection still open"));
    // Usually GOAWAY(ENHANCE_YOUR_CALM, "too_many_resets"); on a loaded machine the
    // client may first see the connection torn down after that GOAWAY.
    assert!(
        [
            "too_many_resets",
            "ENHANCE_YOUR_CALM",
            "broken pipe",
            "reset by peer",
            "closed"
        ]
        .iter()
        .any(|m| cut_off.contains(m)),
        "the server ended the flooding connection: {cut_off}"
    );
    assert!(sent < 20_000, "cut off after {sent} resets");
    assert!(
        slowest < Duration::from_secs(1),
        "a caller waited {slowest:?} during the flood"
    );
    let hits = mock.api_hits() - served;
    println!(
        "{sent} reset streams ({cut_off}), {hits} reached the mock; {served} others served, slowest {slowest:?}"
    );
    assert!(
        hits < sent as usize / 2,
        "most cancelled requests are dropped before Coupa: {hits} of {sent}"
    );
}

/// Finding 5 of the hostile-traffic review: over HTTP/2 a key with surrounding
/// whitespace hashed as an unknown key, and `unknown_keys: observe` forwarded it — Coupa
/// trims and accepts it, so a denied integration was served and never audited.
#[tokio::test]
async fn a_denied_key_with_surrounding_whitespace_is_still_denied_over_h1_and_h2() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let yaml = TestConfig::standard(&mock.base_url())
        .set("integrations[0].mode", "deny")
        .set("unknown_keys", "observe")
        .yaml();
    let proxy = start_proxy(&yaml).await;
    wait_ready(proxy.admin_addr).await;
    let padded = [format!("{KEY} "), format!(" {KEY}"), format!("\t{KEY}\t")];

    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    for key in &padded {
        let request = http::Request::get(format!("http://{}/api/invoices", proxy.proxy_addr))
            .header("x-coupa-api-key", key.as_str())
            .body(http_body_util::Full::default())
            .unwrap();
        let response = h2.request(request).await.unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "h2 {key:?}");
    }
    for key in &padded {
        let raw = raw_exchange(
            proxy.proxy_addr,
            format!("GET /api/invoices HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {key}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(raw.starts_with("HTTP/1.1 403"), "h1 {key:?}: {raw}");
    }
    // A key with a control character inside is refused outright.
    let (status, _, body) = get(
        proxy.proxy_addr,
        "/api/invoices",
        &[("x-coupa-api-key", &format!("{}\t{}", &KEY[..8], &KEY[8..]))],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("malformed_api_key"));

    assert_eq!(mock.api_hits(), 0, "nothing reached Coupa");
    let (_, _, body) = get(proxy.admin_addr, "/audit", &[]).await;
    let audit = json(&body);
    let denied = &audit["integrations"][0];
    assert_eq!(denied["name"], "netsuite-bundle");
    assert_eq!(
        denied["requests"]["denied"], 6,
        "every attempt is the integration's"
    );
    assert!(audit["unknown_keys"].as_array().unwrap().is_empty());
}

/// Finding 8 of the hostile-traffic review: TRACE (and OPTIONS, PROPFIND, …) went to
/// Coupa with the injected bearer — an echoing upstream hands the caller a live token —
/// and nothing kept the bearer off paths outside the API (`/oauth2/…`, `/api/../…`).
#[tokio::test]
async fn trace_odd_methods_and_paths_outside_the_api_never_carry_a_credential() {
    let (mock, proxy) = start_pair(mock(), "").await;
    for method in ["TRACE", "OPTIONS", "PROPFIND", "FOO"] {
        let raw = raw_exchange(
            proxy.proxy_addr,
            format!("{method} /api/invoices HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(raw.starts_with("HTTP/1.1 405"), "{method}: {raw}");
        assert!(raw.contains("method_not_allowed"), "{method}: {raw}");
    }
    let cases = [
        ("/oauth2/token", "404", "path_not_forwarded"),
        ("/", "404", "path_not_forwarded"),
        ("/api/../oauth2/token", "400", "unsafe_path"),
        ("/api/%2e%2e/oauth2/token", "400", "unsafe_path"),
        ("/api/.%2E/oauth2/token", "400", "unsafe_path"),
        ("/api//invoices", "400", "unsafe_path"),
        ("/api/invoices%5c..%5cusers", "400", "unsafe_path"),
        // Found by the attacker review: an encoded slash turns `..` into a segment for a
        // front end that decodes before normalising; `..;` is `..` to servlet containers.
        ("/api/..%2Foauth2%2Ftoken", "400", "unsafe_path"),
        ("/api/x/..%2F..%2Fadmin", "400", "unsafe_path"),
        ("/api/..;/oauth2/token", "400", "unsafe_path"),
        ("/api/%252e%252e/oauth2/token", "400", "unsafe_path"),
        ("/api/%c0%ae%c0%ae/oauth2/token", "400", "unsafe_path"),
    ];
    for (path, status, code) in cases {
        let raw = raw_exchange(
            proxy.proxy_addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(
            raw.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {raw}"
        );
        assert!(raw.contains(code), "{path}: {raw}");
    }
    assert_eq!(mock.api_hits(), 0, "nothing reached Coupa");
    // The API itself still works.
    let (status, _, _) = get(
        proxy.proxy_addr,
        "/api/invoices/1",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

/// Opens `n` connections that each send `first` (maybe nothing) and then go silent.
async fn silent_sockets(
    addr: std::net::SocketAddr,
    n: usize,
    first: &'static [u8],
) -> Vec<TcpStream> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if !first.is_empty() {
            s.write_all(first).await.unwrap();
        }
        out.push(s);
    }
    out
}

/// Polls a keyed GET until it succeeds; returns how long that took.
async fn keyed_request_succeeds_within(addr: std::net::SocketAddr, limit: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < limit {
        let raw = raw_exchange(
            addr,
            format!("GET /api/invoices/1 HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        if raw.starts_with("HTTP/1.1 200") {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no keyed request got through within {limit:?}");
}

/// Finding 1 of the hostile-traffic review: with max_connections 50 and a 3 s header
/// timeout, 50 sockets that sent nothing, half an HTTP/2 preface, or a preface +
/// SETTINGS locked every keyed caller out for over a minute.
#[tokio::test]
async fn silent_and_half_open_connections_are_closed_within_the_header_timeout() {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const PREFACE_AND_SETTINGS: &[u8] =
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let (_mock, proxy) = start_pair(
        mock(),
        "server: {max_connections: 50, max_connections_per_ip: 50, header_read_timeout: 3s}",
    )
    .await;
    let addr = proxy.proxy_addr;
    let opened = Instant::now();
    let mut held = silent_sockets(addr, 20, b"").await;
    held.extend(silent_sockets(addr, 15, &PREFACE[..10]).await);
    held.extend(silent_sockets(addr, 15, PREFACE_AND_SETTINGS).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let raw = raw_exchange(
        addr,
        format!("GET /api/invoices/1 HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(
        raw.starts_with("HTTP/1.1 503"),
        "all 50 slots are taken: {raw}"
    );

    let took = keyed_request_succeeds_within(addr, Duration::from_secs(4)).await;
    assert!(
        opened.elapsed() < Duration::from_secs(5),
        "served {took:?} after polling began"
    );
    // Every silent socket was closed by keybridge (EOF, or reset after the SETTINGS ack).
    for (i, mut s) in held.into_iter().enumerate() {
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "socket {i} still open");
    }
}

/// The same with TLS on the listener: a completed handshake and then silence.
#[tokio::test]
async fn a_completed_tls_handshake_then_silence_is_closed_within_the_header_timeout() {
    use std::sync::Arc;
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let yaml = TestConfig::standard(&mock.base_url())
        .tls_listener()
        .set("server.max_connections", 10)
        .set("server.header_read_timeout", "2s")
        .yaml();
    let proxy = start_proxy(&yaml).await;
    wait_ready(proxy.admin_addr).await;

    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject as _;
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(fixture("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut held = Vec::new();
    for _ in 0..10 {
        let tcp = TcpStream::connect(proxy.proxy_addr).await.unwrap();
        held.push(
            connector
                .connect(name.clone(), tcp)
                .await
                .expect("the handshake completes"),
        );
    }
    let opened = Instant::now();
    for (i, mut s) in held.into_iter().enumerate() {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(4), s.read_to_end(&mut buf)).await;
        assert!(
            opened.elapsed() < Duration::from_secs(3),
            "TLS socket {i} held past the timeout"
        );
    }
}

/// An idle HTTP/1 keep-alive connection, and an HTTP/2 connection with no open stream,
/// are closed after `server.idle_timeout`; one with a request in progress is not.
#[tokio::test]
async fn idle_keep_alive_and_http2_connections_are_closed_after_the_idle_timeout() {
    let (_mock, proxy) = start_pair(mock(), "server: {idle_timeout: 1s}").await;
    let addr = proxy.proxy_addr;

    let mut h1 = TcpStream::connect(addr).await.unwrap();
    h1.write_all(
        format!("GET /api/invoices/1 HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = [0u8; 12];
    h1.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(connection);
    let request = http::Request::get(format!("http://{addr}/api/invoices/1"))
        .header("x-coupa-api-key", KEY)
        .body(())
        .unwrap();
    let (response, _) = h2.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    while body.data().await.is_some() {}

    let idle_since = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), h1.read_to_end(&mut rest))
        .await
        .expect("the idle HTTP/1 connection is closed")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("the idle HTTP/2 connection is closed")
        .unwrap()
        .ok();
    assert!(
        idle_since.elapsed() >= Duration::from_millis(900),
        "{:?}",
        idle_since.elapsed()
    );
    drop(h2);
}

/// Silent connections to the admin port are capped (64 per address, 256 in all) and
/// answered 503 beyond that, so they cannot use up the process's file descriptors: the
/// proxy keeps answering, and the admin listener again once they are gone.
#[tokio::test]
async fn silent_connections_to_the_admin_port_are_capped_and_the_proxy_keeps_answering() {
    let (_mock, proxy) = start_pair(mock(), "").await;
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(proxy.admin_addr).await.unwrap());
    }
    // Which of them the admin listener closed at once (503, then close).
    let mut held = 0;
    let mut refused = 0;
    for s in &mut silent {
        let mut buf = [0_u8; 12];
        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
            Err(_) => held += 1,
            Ok(Ok(n)) if n == 0 || buf[..n].starts_with(b"HTTP/1.1 503") => refused += 1,
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(held <= 64, "{held} silent admin connections held open");
    assert_eq!(held + refused, 300);
    let asked = Instant::now();
    let (status, _, _) = get(
        proxy.proxy_addr,
        "/api/invoices/1",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    drop(silent);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _, _) = get(proxy.admin_addr, "/healthz", &[]).await;
    assert_eq!(status, StatusCode::OK, "the admin listener answers again");
    let (_, _, metrics) = get(proxy.admin_addr, "/metrics", &[]).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(r#"keybridge_accept_failures_total{listener="admin_listen"} 0"#),
        "{metrics}"
    );
}

/// One source address cannot take every slot: `server.max_connections_per_ip`.
#[tokio::test]
async fn one_address_cannot_take_every_connection_slot() {
    let (_mock, proxy) = start_pair(
        mock(),
        "server: {max_connections: 100, max_connections_per_ip: 20}",
    )
    .await;
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..30 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut s = socket.connect(proxy.proxy_addr).await.unwrap();
        let mut buf = [0u8; 12];
        match tokio::time::timeout(Duration::from_millis(200), s.read_exact(&mut buf)).await {
            Ok(Ok(_)) if &buf == b"HTTP/1.1 503" => refused += 1,
            _ => held.push(s),
        }
    }
    assert_eq!((held.len(), refused), (20, 10), "20 held, the rest refused");
    // Another address is served at once.
    let took = keyed_request_succeeds_within(proxy.proxy_addr, Duration::from_secs(1)).await;
    assert!(took < Duration::from_millis(200), "{took:?}");
}

/// Found by the attacker review: with the default bearer forwarding, a source with no
/// key could hold every in-flight slot with uploads trickled just under the body idle
/// timeout (HTTP/2 multiplies one connection into 256 streams).
#[tokio::test]
async fn one_address_cannot_hold_every_request_in_progress() {
    let (_mock, proxy) = start_pair(
        mock(),
        "server: {max_in_flight: 100, max_in_flight_per_ip: 5, body_read_timeout: 10s}",
    )
    .await;
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut s = socket.connect(proxy.proxy_addr).await.unwrap();
        s.write_all(b"POST /api/attachments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer junk\r\nContent-Length: 1000\r\n\r\nx")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        match tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut buf)).await {
            Ok(Ok(_)) if &buf == b"HTTP/1.1 503" => refused += 1,
            _ => held.push(s),
        }
    }
    assert_eq!(
        (held.len(), refused),
        (5, 5),
        "5 uploads in progress, the rest refused"
    );
    let took = keyed_request_succeeds_within(proxy.proxy_addr, Duration::from_secs(1)).await;
    assert!(
        took < Duration::from_millis(300),
        "another address is served at once: {took:?}"
    );
}

/// Found by the attacker review: a canary upload that stalled while being buffered for
/// its replay was a 400, not the 408 a stalled streamed upload gets.
#[tokio::test]
async fn a_stalled_canary_upload_is_a_408() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let yaml = TestConfig::standard(&mock.base_url())
        .set("integrations[0].mode", "canary")
        .set("integrations[0].canary_percent", 100)
        .set("server.body_read_timeout", "1s")
        .yaml();
    let proxy = start_proxy(&yaml).await;
    wait_ready(proxy.admin_addr).await;
    let mut s = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    s.write_all(format!("POST /api/invoices HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\nContent-Length: 10\r\n\r\nabc").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"HTTP/1.1 408");
    assert_eq!(mock.api_hits(), 0);
}

/// Found by the attacker review: canary uploads stalled just before their last byte
/// held up to replay_body_limit each, for every request in flight (~4 GiB by default).
/// The replay buffers share cutover.replay_buffer_budget; beyond it a canary body
/// streams (and so is not retried with the key).
#[tokio::test]
async fn stalled_canary_uploads_cannot_buffer_more_than_the_replay_budget() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let yaml = TestConfig::standard(&mock.base_url())
        .set("integrations[0].mode", "canary")
        .set("integrations[0].canary_percent", 100)
        .set("cutover.replay_buffer_budget", "2KiB")
        .set("server.body_read_timeout", "2s")
        .yaml();
    let proxy = start_proxy(&yaml).await;
    wait_ready(proxy.admin_addr).await;
    // The client lacks core.supplier.write: OAuth gets 403, the key would succeed.
    let body = vec![b'x'; 1500];
    let post = || {
        send(
            Method::POST,
            proxy.proxy_addr,
            "/api/suppliers",
            &[
                ("x-coupa-api-key", KEY),
                ("content-type", "application/json"),
            ],
            bytes::Bytes::from(body.clone()),
        )
    };
    assert!(
        post().await.0.is_success(),
        "within the budget: buffered, 403 → key fallback"
    );

    // A stalled upload holds the whole budget...
    let mut stalled = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    stalled
        .write_all(format!("POST /api/suppliers HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\nContent-Length: 2000\r\n\r\nxx").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...so the next canary body streams: OAuth's 403 passes back, no replay.
    assert_eq!(post().await.0, StatusCode::FORBIDDEN);
    // Once the stalled upload times out (408), the budget is back.
    let mut buf = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), stalled.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"HTTP/1.1 408");
    assert!(post().await.0.is_success());
}

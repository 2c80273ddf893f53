//! Nothing held: the response side. A request counts as in flight until its response
//! has been delivered or dropped; a caller that stops reading is cut off after
//! `server.send_timeout`, a Coupa that stops sending after `upstream.read_timeout`; and
//! one integration's slow reading never delays another's bytes (connections to Coupa
//! are HTTP/1.1, one response each, unless `upstream.http2` is on).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use support::raw::RawUpstream;
use support::tls_front::tls_front;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A second integration's legacy key (same OAuth client as the first).
const KEY2: &str = "fedcba9876543210fedcba9876543210fedcba98";

/// A Coupa bulk export far larger than every socket buffer between it and a caller.
const HUGE: &str = "/api/invoices?export_bytes=33554432";

/// An export larger than an HTTP/2 stream's window and a socket's buffer.
const LARGE: &str = "/api/invoices?export_bytes=4194304";

/// Established TCP connections this process holds to `port` (to Coupa, from keybridge).
fn connections_to(port: u16) -> usize {
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields[2].rsplit(':').next().unwrap();
            if u16::from_str_radix(remote_port, 16).unwrap() == port && fields[3] == "01" {
                n += 1;
            }
        }
    }
    n
}

/// Waits (up to 10 s: closing is asynchronous) for the connections to `port` to number
/// `n`; the number last seen.
async fn settled_connections_to(port: u16, n: usize) -> usize {
    let mut seen = connections_to(port);
    for _ in 0..200 {
        if seen == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = connections_to(port);
    }
    seen
}

/// A raw HTTP/1.1 connection from `source` that sends a keyed GET of `path`.
async fn raw_get(proxy: SocketAddr, source: &str, key: &str, path: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(proxy).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {key}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    s
}

/// A keyed GET from `source` read to its end: the status line and how long it took.
async fn timed_get(proxy: SocketAddr, source: &str, key: &str, path: &str) -> (String, Duration) {
    let started = Instant::now();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(proxy).await.unwrap();
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {key}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply))
        .await
        .expect("the reply ends")
        .unwrap();
    let status = String::from_utf8_lossy(&reply[..reply.len().min(12)]).into_owned();
    (status, started.elapsed())
}

/// Reads from `s` until the peer closes it; how many bytes came, and when it closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (usize, Duration) {
    let started = Instant::now();
    let mut total = 0;
    let mut buf = vec![0_u8; 1 << 16];
    loop {
        match tokio::time::timeout_at((started + limit).into(), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return (total, started.elapsed()),
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("still open after {limit:?} ({total} bytes read)"),
        }
    }
}

/// An HTTP/2 connection whose client lets the server send as much as it likes overall
/// (a 1 GiB connection window) but 64 KiB per stream until read, as an attacker would.
async fn h2_client(proxy: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (h2, connection) = h2::client::Builder::new()
        .initial_connection_window_size(1 << 30)
        .handshake(tcp)
        .await
        .unwrap();
    tokio::spawn(connection);
    h2
}

fn h2_get(path: &str, key: &str) -> http::Request<()> {
    http::Request::get(format!("http://x{path}"))
        .header("x-coupa-api-key", key)
        .body(())
        .unwrap()
}

async fn metric(admin: SocketAddr, line_start: &str) -> String {
    let (_, _, body) = get(admin, "/metrics", &[]).await;
    String::from_utf8_lossy(&body)
        .lines()
        .find(|l| l.starts_with(line_start))
        .unwrap_or_default()
        .to_owned()
}

/// Issue 23, item 1: one key holder opened 500 HTTP/2 streams and never read the
/// bodies; with `max_in_flight: 64` it held 486 connections to Coupa until the process
/// ran out of descriptors.
#[tokio::test]
async fn unread_http2_streams_hold_no_more_than_the_in_flight_cap() {
    let (mock, proxy) = start_pair(mock(), "server: {max_in_flight: 64}").await;
    let (mut held, mut connections) = (Vec::new(), Vec::new());
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..2 {
        let mut h2 = h2_client(proxy.proxy_addr).await;
        let mut pending = Vec::new();
        for _ in 0..250 {
            h2 = h2.ready().await.unwrap();
            let (response, _) = h2.send_request(h2_get(LARGE, KEY), true).unwrap();
            pending.push(response);
        }
        for response in pending {
            let response = tokio::time::timeout(Duration::from_secs(10), response)
                .await
                .expect("every stream gets its response head")
                .unwrap();
            match response.status() {
                StatusCode::OK => ok += 1,
                StatusCode::SERVICE_UNAVAILABLE => refused += 1,
                other => panic!("unexpected {other}"),
            }
            held.push(response); // never read
        }
        connections.push(h2);
    }
    let upstream = connections_to(mock.addr.port());
    assert!(
        ok <= 64 && upstream <= 64,
        "at most max_in_flight held: {ok} answered 200, {upstream} connections to Coupa"
    );
    // Unset, max_in_flight_per_ip is a quarter of max_in_flight.
    assert_eq!((ok, refused), (16, 484));
    assert!(
        mock.api_hits() <= 64,
        "{} requests reached Coupa",
        mock.api_hits()
    );
    let (status, took) = timed_get(proxy.proxy_addr, "127.0.0.2", KEY, "/api/invoices/1").await;
    assert_eq!(status, "HTTP/1.1 200");
    assert!(
        took < Duration::from_secs(1),
        "another address waited {took:?}"
    );
    drop((held, connections));
}

/// Issue 23, item 1: a caller that accepts no bytes of its response is cut off after
/// `server.send_timeout`, over HTTP/1.1 (the connection closes) and HTTP/2 (the stream
/// is reset; the connection's other streams carry on), and its slot and its connection
/// to Coupa are released.
#[tokio::test]
async fn a_caller_that_stops_reading_is_cut_off_after_the_send_timeout() {
    let (coupa, proxy) = start_pair(
        mock(),
        "server: {send_timeout: 1s, max_in_flight: 8, max_in_flight_per_ip: 1}",
    )
    .await;
    let token_connections = connections_to(coupa.addr.port());
    // HTTP/1.1: 32 MiB asked for, nothing read for a while.
    let mut stalled = raw_get(proxy.proxy_addr, "127.0.0.1", KEY, HUGE).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        settled_connections_to(coupa.addr.port(), token_connections).await,
        token_connections,
        "the connection to Coupa is released once the caller is cut off"
    );
    let (got, _) = read_until_closed(&mut stalled, Duration::from_secs(10)).await;
    assert!(
        got < 33_554_432,
        "the response was cut short ({got} bytes), not delivered"
    );
    assert_eq!(
        metric(
            proxy.admin_addr,
            "keybridge_send_timeouts_total{listener=\"listen\"}"
        )
        .await,
        "keybridge_send_timeouts_total{listener=\"listen\"} 1"
    );
    // Its in-flight slot is free again (max_in_flight_per_ip: 1).
    let (status, _) = timed_get(proxy.proxy_addr, "127.0.0.1", KEY, "/api/invoices/1").await;
    assert_eq!(status, "HTTP/1.1 200");

    // HTTP/2: one stream never read, one read to its end on the same connection.
    let (_mock, proxy) = start_pair(
        mock(),
        "server: {send_timeout: 1s, max_in_flight: 8, max_in_flight_per_ip: 2}",
    )
    .await;
    let mut h2 = h2_client(proxy.proxy_addr).await;
    let (unread, _) = h2.send_request(h2_get(HUGE, KEY), true).unwrap();
    h2 = h2.ready().await.unwrap();
    let (read, _) = h2
        .send_request(h2_get("/api/invoices?export_bytes=1048576", KEY), true)
        .unwrap();
    let mut body = read.await.unwrap().into_body();
    let mut len = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        len += chunk.len();
        body.flow_control().release_capacity(chunk.len()).unwrap();
    }
    assert_eq!(len, 1_048_576, "the stream that is read completes");
    let mut unread = unread.await.unwrap().into_body();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut received = 0;
    let ended = loop {
        match unread.data().await {
            Some(Ok(chunk)) => received += chunk.len(),
            Some(Err(e)) => break e,
            None => panic!("the unread stream was delivered whole ({received} bytes)"),
        }
    };
    assert_eq!(ended.reason(), Some(h2::Reason::CANCEL), "{ended}");
    assert!(received < 33_554_432);
    assert_eq!(
        metric(
            proxy.admin_addr,
            "keybridge_send_timeouts_total{listener=\"listen\"}"
        )
        .await,
        "keybridge_send_timeouts_total{listener=\"listen\"} 1"
    );
    let (status, _, _) = get(
        proxy.proxy_addr,
        "/api/invoices/1",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the caller's slots are free again");
}

/// Issue 23, item 1: Coupa sending headers and then nothing more no longer holds the
/// request: after `upstream.read_timeout` the caller's response ends (cut short) and
/// its slot is free.
#[tokio::test]
async fn a_coupa_that_stops_sending_mid_body_is_cut_off_after_the_read_timeout() {
    let raw = RawUpstream::start().await;
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let yaml = TestConfig::standard(&raw.base_url())
        .set("upstream.read_timeout", "500ms")
        .set("server.max_in_flight_per_ip", 1);
    let proxy = start_proxy(&with_token_url(&yaml.yaml(), &mock.base_url())).await;
    wait_ready(proxy.admin_addr).await;
    let mut s = raw_get(proxy.proxy_addr, "127.0.0.1", KEY, "/api/stall-mid-body").await;
    let (got, after) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(
        got > 1000 && got < 10_000,
        "the head and the 1000 bytes Coupa sent arrive, then the end ({got} bytes)"
    );
    assert!(
        after >= Duration::from_millis(450) && after < Duration::from_secs(3),
        "ended after the read timeout: {after:?}"
    );
    assert_eq!(
        settled_connections_to(raw.addr.port(), 0).await,
        0,
        "Coupa's connection is closed"
    );
    let (status, _) = timed_get(proxy.proxy_addr, "127.0.0.1", KEY, "/api/invoices/1").await;
    assert_eq!(status, "HTTP/1.1 200", "the slot is free again");
}

/// Issue 23, item 2: with an HTTP/2-capable Coupa, three callers that never read their
/// exports stalled every other integration's responses (one shared connection
/// window). Connections to Coupa are HTTP/1.1 by default: each response has its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_integrations_unread_responses_never_delay_another_integrations() {
    let mock = mock()
        .api_key(KEY2)
        .start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let front = tls_front("127.0.0.1:0", mock.addr).await;
    let fp2 = keybridge::keys::Fingerprint::of_key(KEY2.as_bytes()).to_string();
    let config = TestConfig::standard(&format!("https://{front}"))
        .set("upstream.ca_file", fixture("ca.pem").display().to_string())
        .set("server.workers", 1)
        .push(
            "integrations",
            serde_json::json!({"name": "coupa-sync", "api_key_sha256": fp2, "client": "erp-sync"}),
        );
    let proxy = start_proxy(&with_token_url(&config.yaml(), &mock.base_url())).await;
    wait_ready(proxy.admin_addr).await;

    // A proxy that has been serving: its connections to Coupa are open.
    let (status, _, _) = get(
        proxy.proxy_addr,
        "/api/invoices/1",
        &[("x-coupa-api-key", KEY2)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut unread = Vec::new();
    for _ in 0..3 {
        // A small receive buffer, as a slow client's would be: the stall forms sooner.
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(proxy.proxy_addr).await.unwrap();
        s.write_all(
            format!("GET {HUGE} HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        unread.push(s);
    }
    // Let their responses fill every buffer on the way.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for bytes in [64, 1_048_576] {
        let path = format!("/api/invoices?export_bytes={bytes}");
        let started = Instant::now();
        let (status, _, body) = tokio::time::timeout(
            Duration::from_secs(10),
            get(proxy.proxy_addr, &path, &[("x-coupa-api-key", KEY2)]),
        )
        .await
        .expect("the other integration's GET completes");
        let took = started.elapsed();
        assert_eq!((status, body.len()), (StatusCode::OK, bytes));
        assert!(took < Duration::from_secs(1), "{bytes} B took {took:?}");
    }
    drop(unread);
}

/// Found by review: hyper polls a body again only once what it holds (up to ~400 KB)
/// is written, and a chunk from Coupa can be hundreds of KiB, so a caller reading
/// steadily could go a send timeout without a body poll and be cut off as if it read
/// nothing. Progress is now what nginx's `send_timeout` measures: a successful write to
/// the caller's socket (HTTP/1), or a body poll of at most 16 KiB (HTTP/2). The kernel
/// reports room only after a third of the socket's send buffer (autotuned up to 4 MB)
/// has drained, so the reader here reads at ~1.3 MB/s against a 2 s send timeout.
#[tokio::test]
async fn a_caller_that_reads_steadily_is_not_cut_off() {
    let (_mock, proxy) = start_pair(mock(), "server: {send_timeout: 2s}").await;
    let mut s = raw_get(proxy.proxy_addr, "127.0.0.1", KEY, HUGE).await;
    let mut total = 0;
    let mut buf = vec![0_u8; 64 * 1024];
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("bytes keep coming")
            .unwrap();
        assert!(
            n > 0,
            "cut off after {total} bytes and {:?}",
            started.elapsed()
        );
        total += n;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(total > 1_000_000, "{total} bytes in 6 s");
    assert_eq!(
        metric(
            proxy.admin_addr,
            "keybridge_send_timeouts_total{listener=\"listen\"}"
        )
        .await,
        "keybridge_send_timeouts_total{listener=\"listen\"} 0"
    );
}

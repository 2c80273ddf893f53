//! A worker's connections to Coupa: kept alive and reused one request after another,
//! never reused half-read, replaced when Coupa closed them while idle, capped, and closed
//! after `upstream.pool_idle_timeout`. Against a real HTTP/1.1 server that counts the
//! connections it accepts and sees close.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keybridge::config::UpstreamSettings;
use keybridge::upstream::Pool;
use keybridge::upstream::Upstream;
use tokio::net::TcpListener;

/// What the test server saw.
#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    closed: AtomicUsize,
    requests: AtomicUsize,
}

/// An HTTP/1.1 server answering `GET /big` with 1 MB and anything else with its path;
/// with `close_after_each`, it closes every connection 20 ms after its response (as a
/// server with a short keep-alive timeout does), without saying so in the response.
async fn server(close_after_each: bool) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            s.accepted.fetch_add(1, Ordering::SeqCst);
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let counted = Arc::clone(&s);
                let service = service_fn(move |req: Request<Incoming>| {
                    counted.requests.fetch_add(1, Ordering::SeqCst);
                    let body = if req.uri().path() == "/big" {
                        Bytes::from(vec![b'x'; 1 << 20])
                    } else {
                        Bytes::from(req.uri().path().to_owned())
                    };
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service);
                if close_after_each {
                    tokio::pin!(conn);
                    // Serve until the first response is out, then close when idle.
                    let _ = tokio::time::timeout(Duration::from_millis(20), conn.as_mut()).await;
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                } else {
                    let _ = conn.await;
                }
                s.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, seen)
}

fn pool(idle_timeout: Duration, max_idle: usize) -> Pool {
    Pool::new(&UpstreamSettings {
        pool_idle_timeout: idle_timeout,
        pool_max_idle_per_host: max_idle,
        ..UpstreamSettings::default()
    })
    .unwrap()
}

async fn get(pool: &Pool, addr: SocketAddr, path: &str) -> (StatusCode, Bytes) {
    let request = Request::get(format!("http://{addr}{path}"))
        .body(Either::Right(Full::new(Bytes::new())))
        .unwrap();
    let response = pool.send(request).await.unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn one_connection_serves_request_after_request() {
    let (addr, seen) = server(false).await;
    let pool = pool(Duration::from_secs(90), 256);
    for i in 0..50 {
        let (status, body) = get(&pool, addr, &format!("/api/invoices/{i}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("/api/invoices/{i}"), "each answer is its own");
    }
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 50);
    assert_eq!(pool.idle_connections(), 1);
}

#[tokio::test]
async fn a_response_dropped_half_read_takes_its_connection_with_it() {
    let (addr, seen) = server(false).await;
    let pool = pool(Duration::from_secs(90), 256);
    let request = Request::get(format!("http://{addr}/big"))
        .body(Either::Right(Full::new(Bytes::new())))
        .unwrap();
    let mut body = pool.send(request).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some_and(|d| d.len() < 1 << 20));
    drop(body);
    assert_eq!(pool.idle_connections(), 0, "never pooled half-read");
    let (status, answer) = get(&pool, addr, "/api/next").await;
    assert_eq!((status, &answer[..]), (StatusCode::OK, &b"/api/next"[..]));
    assert_eq!(
        seen.accepted.load(Ordering::SeqCst),
        2,
        "a fresh connection"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        seen.closed.load(Ordering::SeqCst),
        1,
        "the half-read one is closed"
    );
}

#[tokio::test]
async fn connections_coupa_closed_while_idle_are_replaced_without_an_error() {
    let (addr, seen) = server(true).await;
    let pool = pool(Duration::from_secs(90), 256);
    for i in 0..10 {
        let (status, body) = get(&pool, addr, &format!("/api/{i}")).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, Bytes::from(format!("/api/{i}")))
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // the server closes meanwhile
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 10, "each sent once");
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn idle_connections_are_capped_and_closed_after_the_idle_timeout() {
    let (addr, seen) = server(false).await;
    let pool = Arc::new(pool(Duration::from_secs(1), 4));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let pool = Arc::clone(&pool);
        tasks.push(tokio::spawn(async move {
            get(&pool, addr, &format!("/api/{i}")).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().0, StatusCode::OK);
    }
    let accepted = seen.accepted.load(Ordering::SeqCst);
    assert!(
        accepted > 4,
        "16 at once needed more than 4 connections: {accepted}"
    );
    assert_eq!(
        pool.idle_connections(),
        4,
        "at most pool_max_idle_per_host kept"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        seen.closed.load(Ordering::SeqCst),
        accepted - 4,
        "the rest closed"
    );
    // The reaper closes the kept ones once idle past the timeout, with no request.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(pool.idle_connections(), 0);
    assert_eq!(seen.closed.load(Ordering::SeqCst), accepted);
}

#[tokio::test]
async fn sending_is_a_small_future_that_opens_connections_out_of_line() {
    // Every request's future carries this one inline and is moved as a whole (into
    // hyper's task, into a Box): opening a connection must not be inline in it.
    let pool = pool(Duration::from_secs(90), 256);
    let request = Request::get("http://127.0.0.1:9/")
        .body(Either::Right(Full::new(Bytes::new())))
        .unwrap();
    let send = pool.send(request);
    let size = std::mem::size_of_val(&send);
    eprintln!("Pool::send future: {size} bytes");
    assert!(size <= 1536, "Pool::send future is {size} bytes");
}

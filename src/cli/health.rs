//! `keybridge health`: asks a running keybridge whether it is ready, for container
//! `HEALTHCHECK`s, systemd `ExecStartPost=` and scripts — the image has no curl.
//!
//! One plain HTTP/1.1 GET of `/readyz` (or `/healthz`) on the admin listener, which
//! answers those two without a token; exit 0 on 200, 1 otherwise, saying why.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;

use super::args::HealthProbe;

/// The most of a reply's body kept for the message (readiness reasons are short).
const MAX_BODY: usize = 4096;

/// Where to ask: an address that listens on every interface is asked on loopback.
pub fn target(admin_listen: SocketAddr) -> SocketAddr {
    let ip = match admin_listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, admin_listen.port())
}

/// `Ok` with a one-line summary when `addr` answers the probe with 200; `Err` with
/// the reason otherwise.
pub async fn probe(
    addr: SocketAddr,
    probe: HealthProbe,
    timeout: Duration,
) -> Result<String, String> {
    let path = match probe {
        HealthProbe::Ready => "/readyz",
        HealthProbe::Live => "/healthz",
    };
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        tokio::spawn(conn);
        let request = Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("building the request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{addr}{path}: {e}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok::<_, String>((status, body))
    };
    let (status, body) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| {
            format!(
                "{addr}{path}: no answer within {}",
                humantime::format_duration(timeout)
            )
        })??;
    let body = String::from_utf8_lossy(&body);
    let body = body.trim();
    if status == StatusCode::OK {
        Ok(format!("{addr}{path}: {status}"))
    } else {
        Err(format!("{addr}{path}: {status} {body}"))
    }
}

//! The proxy's acceptor: counts open connections against `server.max_connections` and
//! `server.max_connections_per_ip` (so one source cannot take every slot) and hands
//! each accepted one to the next worker in turn.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::bucket::RateLimiter;

/// Open connections, in all and per source address.
#[derive(Default)]
struct Open {
    total: AtomicUsize,
    by_ip: Mutex<HashMap<IpAddr, PerIp>>,
}

/// One source address: its open connections, and its requests in progress (shared by
/// all of its connections, counted by the stack's in-flight layer).
#[derive(Default)]
struct PerIp {
    connections: usize,
    in_flight: Arc<AtomicUsize>,
}

impl Open {
    /// Takes a slot for `ip`, or says which limit is reached.
    fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max: usize,
        per_ip: usize,
    ) -> Result<OpenConnection, &'static str> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err("server.max_connections");
        }
        let mut by_ip = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        let entry = by_ip.entry(ip).or_default();
        if entry.connections >= per_ip {
            drop(by_ip);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err("server.max_connections_per_ip");
        }
        entry.connections += 1;
        let in_flight = Arc::clone(&entry.in_flight);
        Ok(OpenConnection {
            open: Arc::clone(self),
            ip,
            in_flight,
        })
    }
}

/// Holds an open caller connection's slots until dropped.
pub(super) struct OpenConnection {
    open: Arc<Open>,
    ip: IpAddr,
    in_flight: Arc<AtomicUsize>,
}

impl OpenConnection {
    /// The requests in progress of this connection's source address.
    pub(super) fn in_flight(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.in_flight)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let mut by_ip = self.open.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = by_ip.get_mut(&self.ip) {
            entry.connections -= 1;
            if entry.connections == 0 {
                by_ip.remove(&self.ip);
            }
        }
        drop(by_ip);
        self.open.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection on its way to a worker.
pub(super) type Handoff = (std::net::TcpStream, SocketAddr, OpenConnection);

/// Answered (then closed) to connections beyond `server.max_connections`.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 86\r\nconnection: close\r\n\r\n{\"error\":\"overloaded\",\"message\":\"keybridge is at its connection limit; retry shortly\"}";

/// Accepts proxy connections and hands them to the workers in turn; beyond
/// `max_connections` open connections (or `per_ip` from one address), answers 503 and
/// closes. The warning about it is logged at most once a second.
pub(super) async fn accept(
    listener: TcpListener,
    workers: Vec<mpsc::UnboundedSender<Handoff>>,
    (max_connections, per_ip): (usize, usize),
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let open = Arc::new(Open::default());
    let log_limit = RateLimiter::new(1);
    let mut suppressed = 0u64;
    let mut next = 0usize;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let guard = match open.admit(peer.ip(), max_connections, per_ip) {
                        Ok(guard) => guard,
                        Err(limit) => {
                            if log_limit.try_acquire() {
                                tracing::warn!(%peer, limit, suppressed, "connection limit reached; refusing");
                                suppressed = 0;
                            } else {
                                suppressed += 1;
                            }
                            let _ = stream.try_write(OVERLOADED);
                            continue;
                        }
                    };
                    let Ok(std) = stream.into_std() else { continue };
                    let mut handoff = Some((std, peer, guard));
                    for _ in 0..workers.len() {
                        let worker = &workers[next % workers.len()];
                        next = next.wrapping_add(1);
                        match handoff.take().map(|h| worker.send(h)) {
                            Some(Err(mpsc::error::SendError(back))) => handoff = Some(back),
                            _ => break,
                        }
                    }
                    if handoff.is_some() {
                        tracing::error!(%peer, "no worker accepted the connection; dropping it");
                    }
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
}

//! Accepting connections within a budget: every listener counts its open connections
//! against a cap in all and per source address (so one source cannot take every slot),
//! answers 503 beyond them, and backs off when the process is out of file descriptors.
//! The proxy's acceptor hands each accepted connection to the next worker in turn.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};
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
    fn admit(self: &Arc<Self>, ip: IpAddr, caps: Caps) -> Result<OpenConnection, &'static str> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= caps.max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(caps.max_setting);
        }
        let mut by_ip = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        let entry = by_ip.entry(ip).or_default();
        if entry.connections >= caps.per_ip {
            drop(by_ip);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(caps.per_ip_setting);
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

/// Answered (then closed) to connections beyond a listener's caps.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 86\r\nconnection: close\r\n\r\n{\"error\":\"overloaded\",\"message\":\"keybridge is at its connection limit; retry shortly\"}";

/// A listener with its connection caps: what both accept loops (the proxy's, handing
/// connections to the workers, and [`super::conn::serve`]'s, for the admin listener and
/// the mock Coupa) take connections from.
pub(super) struct Acceptor {
    listener: TcpListener,
    /// The listener's setting name, for logs and `keybridge_accept_failures`.
    name: &'static str,
    open: Arc<Open>,
    caps: Caps,
    log_limit: RateLimiter,
    suppressed: u64,
    /// Counts accept failures (`None`: the mock, which has no metrics).
    failures: Option<Counter>,
}

/// How many connections a listener keeps open, in all and per source address, and the
/// settings that say so (named in the log when a connection is refused).
#[derive(Clone, Copy)]
pub(super) struct Caps {
    pub max: usize,
    pub per_ip: usize,
    pub max_setting: &'static str,
    pub per_ip_setting: &'static str,
}

impl Caps {
    /// No cap: for the mock Coupa, which stands in for a server with limits of its own.
    pub(super) const NONE: Caps = Caps {
        max: usize::MAX,
        per_ip: usize::MAX,
        max_setting: "",
        per_ip_setting: "",
    };

    /// The admin listener's: health probes, scrapes and an operator's requests, so
    /// silent connections to it cannot use up the process's file descriptors (the
    /// header deadline closes them; `server.header_read_timeout`).
    pub(super) const ADMIN: Caps = Caps {
        max: 256,
        per_ip: 64,
        max_setting: "the admin listener's 256 connections",
        per_ip_setting: "the admin listener's 64 connections per address",
    };
}

/// How long to stop accepting after the process ran out of file descriptors (`EMFILE`,
/// `ENFILE`) or the kernel of memory: the pending connections wait in the backlog while
/// open ones finish, instead of the loop spinning on the same error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

impl Acceptor {
    pub(super) fn new(
        listener: TcpListener,
        name: &'static str,
        caps: Caps,
        failures: Option<Counter>,
    ) -> Self {
        Acceptor {
            listener,
            name,
            open: Arc::new(Open::default()),
            caps,
            log_limit: RateLimiter::new(1),
            suppressed: 0,
            failures,
        }
    }

    /// The next connection within the caps. One beyond them is answered 503 and closed;
    /// a failed accept is counted and backed off. Warnings about either are logged at
    /// most once a second.
    pub(super) async fn next(&mut self) -> (TcpStream, SocketAddr, OpenConnection) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    match self.open.admit(peer.ip(), self.caps) {
                        Ok(guard) => return (stream, peer, guard),
                        Err(limit) => {
                            let name = self.name;
                            self.warn(|suppressed| tracing::warn!(listener = name, %peer, limit, suppressed, "connection limit reached; refusing"));
                            let _ = stream.try_write(OVERLOADED);
                        }
                    }
                }
                Err(e) => {
                    if let Some(failures) = &self.failures {
                        failures.inc();
                    }
                    let name = self.name;
                    self.warn(|suppressed| tracing::warn!(listener = name, error = %e, suppressed, "accept failed (out of file descriptors?); backing off"));
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }

    /// Logs with `log` at most once a second, counting what was not logged.
    fn warn(&mut self, log: impl FnOnce(u64)) {
        if self.log_limit.try_acquire() {
            log(self.suppressed);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
    }
}

/// Accepts proxy connections and hands them to the workers in turn; beyond
/// `max_connections` open connections (or `per_ip` from one address), answers 503 and
/// closes.
pub(super) async fn accept(
    mut acceptor: Acceptor,
    workers: Vec<mpsc::UnboundedSender<Handoff>>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut next = 0usize;
    loop {
        tokio::select! {
            (stream, peer, guard) = acceptor.next() => {
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
            },
            () = &mut shutdown => break,
        }
    }
}

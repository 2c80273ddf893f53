//! A fault-injecting TCP relay: what netem would do between keybridge and a neighbour
//! (Coupa, Redis, PostgreSQL), in process. It listens on 127.0.0.1:0 and forwards each
//! connection to one target; a [`RelayHandle`] (cheap to clone) switches faults while
//! connections are open:
//!
//! - **latency** with jitter, added to every chunk in either direction;
//! - **stall**: no byte moves either way for a while, the sockets stay open;
//! - **reset**: every open connection is closed with a TCP RST on both sides
//!   (`SO_LINGER` 0, then close), as a crashed peer or a middlebox would;
//! - **drop new**: connections are accepted and closed at once for a while, the target
//!   never sees them.
//!
//! The relay holds at most one chunk per direction: a stalled or slow relay pushes back
//! through TCP flow control, it never buffers without bound.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// A running relay; stops accepting and resets its connections when dropped.
pub struct Relay {
    pub addr: SocketAddr,
    handle: RelayHandle,
    task: tokio::task::JoinHandle<()>,
}

/// Switches a relay's faults and reads its counters.
#[derive(Clone)]
pub struct RelayHandle(Arc<Shared>);

/// What a relay counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections forwarded to the target.
    pub accepted: u64,
    /// Connections closed at once while dropping new ones.
    pub dropped: u64,
    /// Connections closed with a reset.
    pub reset: u64,
    /// Of those, connections with bytes from the caller not yet answered by the target
    /// (a request in flight).
    pub reset_busy: u64,
    /// Connections open now.
    pub open: u64,
}

struct Shared {
    target: SocketAddr,
    faults: Mutex<Faults>,
    conns: Mutex<HashMap<u64, Conn>>,
    next_id: AtomicU64,
    accepted: AtomicU64,
    dropped: AtomicU64,
    reset: AtomicU64,
    reset_busy: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    latency: Duration,
    jitter: Duration,
    stall_until: Option<Instant>,
    drop_until: Option<Instant>,
}

/// An open connection, as [`RelayHandle::reset`] sees it.
struct Conn {
    kill: oneshot::Sender<()>,
    /// Bytes came from the caller since the last bytes went back to it.
    awaiting: Arc<AtomicBool>,
}

impl Relay {
    /// Listens on 127.0.0.1:0 and forwards to `target`, passing everything through.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = RelayHandle(Arc::new(Shared {
            target,
            faults: Mutex::default(),
            conns: Mutex::default(),
            next_id: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reset: AtomicU64::new(0),
            reset_busy: AtomicU64::new(0),
        }));
        let shared = Arc::clone(&handle.0);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if shared
                    .faults()
                    .drop_until
                    .is_some_and(|t| Instant::now() < t)
                {
                    shared.dropped.fetch_add(1, Ordering::SeqCst);
                    drop(stream);
                    continue;
                }
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(Arc::clone(&shared).forward(stream));
            }
        });
        Relay { addr, handle, task }
    }

    pub fn handle(&self) -> RelayHandle {
        self.handle.clone()
    }

    /// `host:port` of the listener, for URLs.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.handle.reset();
    }
}

impl RelayHandle {
    /// No faults: every byte goes through at once, new connections are forwarded.
    pub fn pass(&self) {
        *self.0.faults.lock().unwrap() = Faults::default();
    }

    /// Every chunk, either way, waits `latency` plus up to `jitter` (uniform).
    pub fn latency(&self, latency: Duration, jitter: Duration) {
        let mut f = self.0.faults.lock().unwrap();
        f.latency = latency;
        f.jitter = jitter;
    }

    /// No byte moves either way for `duration` (from now); the sockets stay open.
    pub fn stall(&self, duration: Duration) {
        self.0.faults.lock().unwrap().stall_until = Some(Instant::now() + duration);
    }

    /// New connections are accepted and closed at once for `duration` (from now).
    pub fn drop_new(&self, duration: Duration) {
        self.0.faults.lock().unwrap().drop_until = Some(Instant::now() + duration);
    }

    /// Resets every open connection (RST to both peers); returns how many.
    pub fn reset(&self) -> u64 {
        let conns: Vec<Conn> = self
            .0
            .conns
            .lock()
            .unwrap()
            .drain()
            .map(|(_, c)| c)
            .collect();
        let busy = conns
            .iter()
            .filter(|c| c.awaiting.load(Ordering::SeqCst))
            .count() as u64;
        let n = conns.len() as u64;
        for conn in conns {
            let _ = conn.kill.send(());
        }
        self.0.reset.fetch_add(n, Ordering::SeqCst);
        self.0.reset_busy.fetch_add(busy, Ordering::SeqCst);
        n
    }

    pub fn stats(&self) -> Stats {
        let s = &self.0;
        Stats {
            accepted: s.accepted.load(Ordering::SeqCst),
            dropped: s.dropped.load(Ordering::SeqCst),
            reset: s.reset.load(Ordering::SeqCst),
            reset_busy: s.reset_busy.load(Ordering::SeqCst),
            open: s.conns.lock().unwrap().len() as u64,
        }
    }
}

impl Shared {
    fn faults(&self) -> Faults {
        *self.faults.lock().unwrap()
    }

    /// Waits out a stall, then this chunk's latency.
    async fn delay(&self) {
        loop {
            let f = self.faults();
            match f.stall_until {
                Some(until) if Instant::now() < until => tokio::time::sleep_until(until).await,
                _ => break,
            }
        }
        let f = self.faults();
        let wait = f.latency + f.jitter.mul_f64(fastrand::f64());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Forwards one connection until both sides are done, either side fails, or a reset.
    async fn forward(self: Arc<Self>, mut inbound: TcpStream) {
        let Ok(mut outbound) = TcpStream::connect(self.target).await else {
            // Target down: the caller sees a reset, as it would connecting directly.
            let _ = inbound.set_zero_linger();
            return;
        };
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (kill, killed) = oneshot::channel();
        let awaiting = Arc::new(AtomicBool::new(false));
        let conn = Conn {
            kill,
            awaiting: Arc::clone(&awaiting),
        };
        self.conns.lock().unwrap().insert(id, conn);
        let reset = {
            let (from_caller, to_caller) = inbound.split();
            let (from_target, to_target) = outbound.split();
            let up = self.pump(from_caller, to_target, &awaiting, true);
            let down = self.pump(from_target, to_caller, &awaiting, false);
            tokio::select! {
                // A side that failed (a reset, say) is passed on as a reset.
                done = async { tokio::try_join!(up, down) } => done.is_err(),
                // Sent by `reset`, or the sender dropped with the relay: reset either way.
                _ = killed => true,
            }
        };
        if reset {
            let _ = inbound.set_zero_linger();
            let _ = outbound.set_zero_linger();
        }
        self.conns.lock().unwrap().remove(&id);
    }

    /// Copies one direction, chunk by chunk, each after [`Shared::delay`]; passes EOF on
    /// as a half-close.
    async fn pump(
        &self,
        mut from: tokio::net::tcp::ReadHalf<'_>,
        mut to: tokio::net::tcp::WriteHalf<'_>,
        awaiting: &AtomicBool,
        upstream: bool,
    ) -> std::io::Result<()> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return to.shutdown().await;
            }
            if upstream {
                awaiting.store(true, Ordering::SeqCst);
            }
            self.delay().await;
            to.write_all(&buf[..n]).await?;
            if !upstream {
                awaiting.store(false, Ordering::SeqCst);
            }
        }
    }
}

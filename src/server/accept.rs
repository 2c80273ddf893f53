//! The proxy's acceptor: counts open connections against `server.max_connections` and
//! hands each accepted one to the next worker in turn.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Counts an open caller connection until dropped.
pub(super) struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection on its way to a worker.
pub(super) type Handoff = (std::net::TcpStream, SocketAddr, OpenConnection);

/// Answered (then closed) to connections beyond `server.max_connections`.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 86\r\nconnection: close\r\n\r\n{\"error\":\"overloaded\",\"message\":\"keybridge is at its connection limit; retry shortly\"}";

/// Accepts proxy connections and hands them to the workers in turn; beyond
/// `max_connections` open connections, answers 503 and closes.
pub(super) async fn accept(
    listener: TcpListener,
    workers: Vec<mpsc::UnboundedSender<Handoff>>,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let open = Arc::new(AtomicUsize::new(0));
    let mut next = 0usize;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    if open.fetch_add(1, Ordering::AcqRel) >= max_connections {
                        open.fetch_sub(1, Ordering::AcqRel);
                        tracing::warn!(%peer, max_connections, "connection limit reached; refusing");
                        let _ = stream.try_write(OVERLOADED);
                        continue;
                    }
                    let guard = OpenConnection(Arc::clone(&open));
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

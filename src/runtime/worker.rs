//! A proxy worker: one thread, one single-threaded runtime, one upstream pool; serves
//! the connections the acceptor hands it until shutdown, then drains them.

use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use super::accept::Handoff;
use super::conn;
use super::stack;
use crate::config::ServerSettings;
use crate::proxy::ProxyService;
use crate::proxy::State;
use crate::upstream::Pool;

/// What one worker runs with.
pub(super) struct Worker {
    pub index: usize,
    /// Shared by all workers, swapped on reload.
    pub state: Arc<ArcSwap<State>>,
    /// This worker's own pool.
    pub upstream: Arc<Pool>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub in_flight: stack::InFlight,
    pub settings: ServerSettings,
}

impl Worker {
    /// Starts the worker thread; returns where to hand it connections and a receiver
    /// that completes when it has drained.
    pub(super) fn spawn(
        self,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<(mpsc::UnboundedSender<Handoff>, oneshot::Receiver<()>)> {
        let (tx, rx) = mpsc::unbounded_channel::<Handoff>();
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("keybridge-worker-{}", self.index))
            .spawn(move || {
                let index = self.index;
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(self.run(rx, shutdown)),
                    Err(e) => {
                        tracing::error!(worker = index, error = %e, "cannot start worker runtime");
                    }
                }
                let _ = done_tx.send(());
            })?;
        Ok((tx, done_rx))
    }

    async fn run(
        self,
        mut handoffs: mpsc::UnboundedReceiver<Handoff>,
        shutdown: watch::Receiver<bool>,
    ) {
        let cut = self.state.load().metrics.send_timeouts("listen");
        let protocols = conn::Protocols::of(&self.settings, Some(cut));
        let graceful = GracefulShutdown::new();
        let stop = conn::signalled(shutdown);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                handoff = handoffs.recv() => {
                    let Some((std, peer, open)) = handoff else { break };
                    let Ok(stream) = TcpStream::from_std(std) else { continue };
                    let service = TowerToHyperService::new(stack::proxy_stack(
                        ProxyService::new(Arc::clone(&self.state), Arc::clone(&self.upstream), peer),
                        &self.in_flight,
                        open.in_flight(),
                    ));
                    conn::spawn(
                        &protocols,
                        &graceful,
                        stream,
                        self.tls.clone(),
                        conn::Deadlines::of(&self.settings),
                        peer,
                        service,
                        Some(open),
                    );
                }
                () = &mut stop => break,
            }
        }
        conn::drain(graceful, self.settings.shutdown_grace).await;
    }
}

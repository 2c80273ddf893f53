//! Cutting off callers that stop reading their response (`server.send_timeout`).
//!
//! hyper polls a response body only when the caller has room for more: an HTTP/1
//! connection whose socket buffer is full, or an HTTP/2 stream whose flow-control window
//! is used up, stops polling it. So a body that is neither finished nor waiting for
//! Coupa, and has not been polled for `send_timeout`, belongs to a caller that accepts
//! nothing. Left alone it would hold its in-flight slot and its connection to Coupa for
//! as long as the caller liked.
//!
//! Each response body being sent reports to a [`SendWatch`] (a poll counter and what
//! the body is waiting for; no clock read on the request path; an HTTP/1 connection's
//! socket writes count as progress too, [`Written`]), and a [`Stall`] samples
//! it: an HTTP/1 connection's loop samples its one watch (`conn::until_idle`) and closes
//! the connection; each HTTP/2 stream runs in a task of its own ([`StreamExecutor`]),
//! which samples that stream's watch and drops the stream, which resets it. Either way
//! the response body and its upstream connection or stream are dropped with it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// No response body is being sent.
const IDLE: u8 = 0;
/// A body is being sent and its next bytes depend on the caller making room.
const SENDING: u8 = 1;
/// A body is being sent and waits for Coupa (bounded by `upstream.read_timeout`).
const WAITING_UPSTREAM: u8 = 2;

/// What one response body (HTTP/2: one stream; HTTP/1: the connection's current
/// response) is doing, as its body reports it.
#[derive(Default)]
pub(super) struct SendWatch {
    polls: AtomicU32,
    state: AtomicU8,
}

impl SendWatch {
    /// A response body starts being sent (or has nothing left to send). Counts as
    /// progress: a sampler that last looked during the previous response of an HTTP/1
    /// connection starts its count afresh.
    pub(super) fn start(&self, empty: bool) {
        self.polls.fetch_add(1, Ordering::Relaxed);
        self.state
            .store(if empty { IDLE } else { SENDING }, Ordering::Relaxed);
    }

    /// The body was polled: `Some(true)` it produced a frame (more may follow),
    /// `Some(false)` it ended, `None` it waits for Coupa.
    pub(super) fn polled(&self, produced: Option<bool>) {
        self.polls.fetch_add(1, Ordering::Relaxed);
        let state = match produced {
            Some(true) => SENDING,
            Some(false) => IDLE,
            None => WAITING_UPSTREAM,
        };
        self.state.store(state, Ordering::Relaxed);
    }

    /// The caller accepted bytes (the connection's socket took a write).
    fn progress(&self) {
        self.polls.fetch_add(1, Ordering::Relaxed);
    }

    /// The body is gone (finished or dropped).
    pub(super) fn finish(&self) {
        self.state.store(IDLE, Ordering::Relaxed);
    }

    /// The watch of the HTTP/2 stream this task serves, if it is one.
    pub(super) fn of_this_stream() -> Option<Arc<SendWatch>> {
        STREAM.try_with(Arc::clone).ok()
    }
}

tokio::task_local! {
    /// The watch of the HTTP/2 stream a task serves (set by [`StreamExecutor`]).
    static STREAM: Arc<SendWatch>;
}

/// An HTTP/1 connection's socket, reporting each write it takes to the connection's
/// [`SendWatch`]: hyper buffers up to ~400 KB of a response before it polls the body
/// again, so a caller reading slowly shows its progress here, not in body polls.
pub(super) struct Written<I> {
    inner: I,
    watch: Arc<SendWatch>,
}

impl<I> Written<I> {
    pub(super) fn new(inner: I, watch: Arc<SendWatch>) -> Self {
        Written { inner, watch }
    }

    /// Passes `written` on, counting a write that took bytes as progress.
    fn counted(&self, written: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.progress();
        }
        written
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Written<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Written<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.counted(written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.counted(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Samples a [`SendWatch`]: a body that waits on its caller with no poll between two
/// samples is stalled since the first of them.
pub(super) struct Stall {
    limit: Duration,
    seen_polls: u32,
    seen_at: Instant,
    since: Option<Instant>,
}

impl Stall {
    pub(super) fn new(limit: Duration) -> Self {
        Stall {
            limit,
            seen_polls: 0,
            seen_at: Instant::now(),
            since: None,
        }
    }

    /// How often to sample: a stall is cut between `limit` and `limit` + this after it
    /// began.
    pub(super) fn period(limit: Duration) -> Duration {
        (limit / 4).max(Duration::from_millis(1))
    }

    /// Samples `watch` at `now`; true once its caller has accepted nothing for `limit`.
    pub(super) fn cut(&mut self, watch: &SendWatch, now: Instant) -> bool {
        let polls = watch.polls.load(Ordering::Relaxed);
        let sending = watch.state.load(Ordering::Relaxed) == SENDING;
        if sending && polls == self.seen_polls {
            let since = *self.since.get_or_insert(self.seen_at);
            if now.saturating_duration_since(since) >= self.limit {
                return true;
            }
        } else {
            self.since = None;
        }
        self.seen_polls = polls;
        self.seen_at = now;
        false
    }
}

/// hyper's HTTP/2 server executor: runs each stream in its own task, with the stream's
/// [`SendWatch`] and a sampler that drops the stream once its caller stalls.
#[derive(Clone)]
pub(super) struct StreamExecutor {
    pub send_timeout: Duration,
    /// Counts streams cut off (`keybridge_send_timeouts_total`).
    pub cut: Option<Counter>,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        let watch = Arc::new(SendWatch::default());
        let limit = self.send_timeout;
        tokio::spawn(Watched {
            stream: STREAM.scope(Arc::clone(&watch), stream),
            watch,
            stall: Stall::new(limit),
            sample: Box::pin(tokio::time::sleep(Stall::period(limit))),
            cut: self.cut.clone(),
        });
    }
}

pin_project_lite::pin_project! {
    /// One HTTP/2 stream's task (see [`StreamExecutor`]).
    struct Watched<F: Future> {
        #[pin]
        stream: tokio::task::futures::TaskLocalFuture<Arc<SendWatch>, F>,
        watch: Arc<SendWatch>,
        stall: Stall,
        sample: Pin<Box<Sleep>>,
        cut: Option<Counter>,
    }
}

impl<F: Future<Output = ()>> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.stream.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        while this.sample.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if this.stall.cut(this.watch, now) {
                tracing::debug!(
                    send_timeout = ?this.stall.limit,
                    "resetting an HTTP/2 stream whose caller accepts no response bytes"
                );
                if let Some(cut) = this.cut {
                    cut.inc();
                }
                // Dropping the stream resets it and drops its response body (and with
                // it the request's connection or stream to Coupa).
                return Poll::Ready(());
            }
            this.sample
                .as_mut()
                .reset(now + Stall::period(this.stall.limit));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_stalled_only_while_it_waits_on_its_caller_without_being_polled() {
        let limit = Duration::from_secs(60);
        let watch = SendWatch::default();
        let mut stall = Stall::new(limit);
        let t0 = Instant::now();
        watch.start(false);
        assert!(!stall.cut(&watch, t0));
        // Waiting for Coupa is never the caller's stall.
        watch.polled(None);
        assert!(!stall.cut(&watch, t0 + limit));
        assert!(!stall.cut(&watch, t0 + limit * 3));
        // Sending, then not polled again: cut once `limit` has passed since the first
        // sample that saw no progress.
        watch.polled(Some(true));
        let t1 = t0 + limit * 3 + Duration::from_secs(1);
        assert!(!stall.cut(&watch, t1));
        assert!(!stall.cut(&watch, t1 + limit / 2));
        assert!(stall.cut(&watch, t1 + limit));
        // A poll in between resets it; a finished body is never stalled.
        let mut stall = Stall::new(limit);
        assert!(!stall.cut(&watch, t0));
        watch.polled(Some(true));
        assert!(!stall.cut(&watch, t0 + limit));
        watch.finish();
        assert!(!stall.cut(&watch, t0 + limit * 5));
    }
}

//! What every accepted connection gets around hyper: an idle deadline and a lingering close.
//!
//! hyper closes an HTTP/1 connection whose next head is late (`header_read_timeout`), but two
//! waits have no deadline of their own: a client that connects and never sends a byte
//! (hyper-util's protocol sniffing reads without a timer; the serve loop closes it at
//! `request_header_timeout` from accept, as nginx's `client_header_timeout` does, using
//! `Activity::heard`) and an HTTP/2 connection that sits open after its preface. `Tracked` counts the bytes that move and the requests in flight; the
//! connection's own loop closes it (gracefully, then for good) when neither changes for
//! `idle_timeout`. The same rule ends a client that stops reading its answer (slow read).
//!
//! When fxgate answers before reading the whole request (a 413, a 401), hyper closes the
//! socket with the rest of the body unread, and the kernel then resets the connection: a client
//! that writes its whole body before reading (Python's `http.client`, Java's
//! `HttpURLConnection`) sees a broken pipe, not the answer. Dropping a `Tracked` whose peer has
//! not finished therefore hands the socket to a short task that closes the write side and reads
//! and discards what still arrives, bounded in bytes and time, as nginx's `lingering_close`
//! does.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

/// Bytes a lingering close reads and discards at most.
const LINGER_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Total time a lingering close may take.
const LINGER_TIME: Duration = Duration::from_secs(5);
/// Silence after which a lingering close gives up.
const LINGER_IDLE: Duration = Duration::from_secs(1);
/// The idle deadline is checked this many times per `idle_timeout`, so a connection closes
/// between 1 and 1.25 idle timeouts after its last activity.
const IDLE_TICKS: u32 = 4;

/// What moved on one connection: bytes either way, and requests in flight.
#[derive(Debug, Default)]
pub(super) struct Activity {
    moved: AtomicU64,
    in_flight: AtomicUsize,
    /// The peer has sent at least one byte.
    heard: AtomicBool,
}

impl Activity {
    /// Marks a request in flight until the guard drops.
    pub(super) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn touch(&self) {
        self.moved.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the peer has sent anything yet.
    pub(super) fn heard(&self) -> bool {
        self.heard.load(Ordering::Relaxed)
    }
}

/// A request in flight on its connection.
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The idle clock of one connection, advanced by its serve loop.
#[derive(Debug)]
pub(super) struct IdleWatch {
    activity: Arc<Activity>,
    tick: Duration,
    last_moved: u64,
    quiet_ticks: u32,
}

impl IdleWatch {
    pub(super) fn new(activity: Arc<Activity>, idle_timeout: Duration) -> Self {
        Self {
            activity,
            tick: idle_timeout / IDLE_TICKS,
            last_moved: 0,
            quiet_ticks: 0,
        }
    }

    /// How long the loop sleeps before the next `tick`.
    pub(super) fn period(&self) -> Duration {
        self.tick
    }

    /// Called every `period`; true once nothing has moved for a whole idle timeout.
    pub(super) fn tick(&mut self) -> bool {
        let moved = self.activity.moved.load(Ordering::Relaxed);
        let busy = self.activity.in_flight.load(Ordering::Relaxed) > 0;
        if busy || moved != self.last_moved {
            self.last_moved = moved;
            self.quiet_ticks = 0;
            return false;
        }
        self.quiet_ticks += 1;
        self.quiet_ticks >= IDLE_TICKS
    }

    /// Starts the count again (after a graceful close was asked for).
    pub(super) fn restart(&mut self) {
        self.quiet_ticks = 0;
    }
}

/// A connection's socket that records activity and closes lingeringly.
#[derive(Debug)]
pub(super) struct Tracked<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    io: Option<I>,
    activity: Arc<Activity>,
    /// The peer has closed (or broken) its side: nothing is left to linger for.
    peer_done: bool,
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Tracked<I> {
    pub(super) fn new(io: I, activity: Arc<Activity>) -> Self {
        Self {
            io: Some(io),
            activity,
            peer_done: false,
        }
    }

    fn io(&mut self) -> Pin<&mut I> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io),
            // `io` is taken only in `drop`.
            None => unreachable!("Tracked used after drop"),
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Tracked<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = this.io().poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.activity.touch();
                this.activity.heard.store(true, Ordering::Relaxed);
            }
            Poll::Ready(_) => this.peer_done = true,
            Poll::Pending => {}
        }
        polled
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Tracked<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = this.io().poll_write(cx, buf);
        this.note_write(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = this.io().poll_write_vectored(cx, bufs);
        this.note_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().io().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().io().poll_shutdown(cx)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Tracked<I> {
    fn note_write(&mut self, polled: &Poll<std::io::Result<usize>>) {
        match polled {
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.touch(),
            Poll::Ready(Err(_)) => self.peer_done = true,
            _ => {}
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Tracked<I> {
    fn drop(&mut self) {
        if self.peer_done {
            return;
        }
        let (Some(io), Ok(rt)) = (self.io.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        rt.spawn(linger(io));
    }
}

/// Closes our side, then reads and discards what the peer still sends, within bounds, so
/// the peer reads our answer instead of a reset.
async fn linger<I: AsyncRead + AsyncWrite + Unpin>(mut io: I) {
    if tokio::time::timeout(LINGER_IDLE, io.shutdown())
        .await
        .is_err()
    {
        return;
    }
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    let mut buf = [0u8; 8192];
    let mut discarded = 0u64;
    while discarded < LINGER_MAX_BYTES {
        let wait = deadline.min(tokio::time::Instant::now() + LINGER_IDLE);
        match tokio::time::timeout_at(wait, io.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => discarded += n as u64,
            _ => return,
        }
    }
}

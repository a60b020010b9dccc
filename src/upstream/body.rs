//! `ChannelBody`: the upstream request body of a streamed upload. The upload task pushes
//! chunks through a small bounded channel (back-pressure keeps memory at a few chunks); the
//! body ends cleanly only after an explicit `finish()`. If the sender is dropped first (the
//! caller hung up, a limit was crossed, a dedupe hit) the body yields an error, so hyper
//! aborts the upstream request instead of completing a truncated upload.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;

use crate::BoxError;

/// Chunks in flight between the upload task and hyper; with 64 KiB reads that is ≤ 256 KiB.
const CHANNEL_CHUNKS: usize = 4;

enum Msg {
    Data(Bytes),
    End,
}

/// The sending half.
#[derive(Debug)]
pub struct BodySender {
    tx: mpsc::Sender<Msg>,
}

/// The body hyper reads.
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::Receiver<Msg>,
    len: Option<u64>,
    done: bool,
    /// How the body ends, seen while coalescing but not yet reported.
    pending: Option<Pending>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    End,
    Abort,
}

/// Small pieces already queued (the multipart prefix, a short file, the closing delimiter)
/// are merged into one frame up to this size: hyper writes each frame with its own syscall,
/// and for small uploads those syscalls, not the bytes, are the cost.
const COALESCE_BELOW: usize = 16 * 1024;

impl ChannelBody {
    fn coalesce(&mut self, first: Bytes) -> Bytes {
        if first.len() >= COALESCE_BELOW {
            return first;
        }
        let mut merged: Option<bytes::BytesMut> = None;
        loop {
            let len = merged.as_ref().map_or(first.len(), |m| m.len());
            if len >= COALESCE_BELOW {
                break;
            }
            match self.rx.try_recv() {
                Ok(Msg::Data(next)) => merged
                    .get_or_insert_with(|| bytes::BytesMut::from(&first[..]))
                    .extend_from_slice(&next),
                Ok(Msg::End) => {
                    self.pending = Some(Pending::End);
                    break;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.pending = Some(Pending::Abort);
                    break;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
        }
        merged.map_or(first, bytes::BytesMut::freeze)
    }
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Data(b) => write!(f, "Data({})", b.len()),
            Msg::End => f.write_str("End"),
        }
    }
}

/// The receiver went away: the upstream request already ended.
#[derive(Debug, thiserror::Error)]
#[error("upstream stopped reading the request body")]
pub struct UpstreamGone;

/// The sender went away without `finish()`.
#[derive(Debug, thiserror::Error)]
#[error("upload aborted by fxgate")]
pub struct Aborted;

/// A body of `len` bytes when known (sent as `Content-Length`), chunked otherwise.
pub fn channel(len: Option<u64>) -> (BodySender, ChannelBody) {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    (
        BodySender { tx },
        ChannelBody {
            rx,
            len,
            done: false,
            pending: None,
        },
    )
}

impl BodySender {
    /// Queues a chunk, waiting while the channel is full.
    pub async fn send(&self, chunk: Bytes) -> Result<(), UpstreamGone> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.tx
            .send(Msg::Data(chunk))
            .await
            .map_err(|_| UpstreamGone)
    }

    /// Queues a chunk if there is room now: `Ok(None)` queued, `Ok(Some(chunk))` full (the
    /// caller then waits with `send`, under its deadline).
    pub fn try_send(&self, chunk: Bytes) -> Result<Option<Bytes>, UpstreamGone> {
        if chunk.is_empty() {
            return Ok(None);
        }
        match self.tx.try_send(Msg::Data(chunk)) {
            Ok(()) => Ok(None),
            Err(mpsc::error::TrySendError::Full(Msg::Data(c))) => Ok(Some(c)),
            Err(mpsc::error::TrySendError::Full(Msg::End)) => Ok(None),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(UpstreamGone),
        }
    }

    /// Ends the body cleanly.
    pub async fn finish(self) -> Result<(), UpstreamGone> {
        self.tx.send(Msg::End).await.map_err(|_| UpstreamGone)
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.pending.take() {
            Some(Pending::End) => {
                self.done = true;
                return Poll::Ready(None);
            }
            Some(Pending::Abort) => {
                self.done = true;
                return Poll::Ready(Some(Err(Box::new(Aborted))));
            }
            None => {}
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Msg::Data(b))) => Poll::Ready(Some(Ok(Frame::data(self.coalesce(b))))),
            Poll::Ready(Some(Msg::End)) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Err(Box::new(Aborted))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || matches!(self.pending, Some(Pending::End))
    }

    fn size_hint(&self) -> SizeHint {
        match self.len {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

//! `ChannelBody`: the upstream request body of a streamed upload. The upload task pushes
//! chunks through a small bounded channel (back-pressure keeps memory at a few chunks); the
//! body ends cleanly only after an explicit `finish()`. If the sender is dropped first (the
//! caller hung up, a limit was crossed, a dedupe hit) the body yields an error, so hyper
//! aborts the upstream request instead of completing a truncated upload.
//!
//! The body also computes the file's SHA-256, as hyper takes each chunk: the hashing then runs
//! in the upstream connection's task, beside the task reading the caller's body, with no
//! extra hand-off. `end_of_file()` asks for the digest, which arrives once hyper has taken the
//! file's last byte; the closing delimiter is sent only after that.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::body::BoxError;

/// Chunks queued between the upload task and hyper. One is enough to keep hyper writing while
/// the next is read (hyper holds the one it writes, the caller's connection the one being
/// read): with 64 KiB reads an upload held up by a slow Fxiaoke holds about three chunks.
/// Four cost ~230 KiB more per such upload (tests/faults.rs) and no throughput in
/// `benches/e2e`.
const CHANNEL_CHUNKS: usize = 1;

enum Msg {
    /// Multipart framing: sent, not hashed.
    Framing(Bytes),
    /// The file's bytes: hashed and sent.
    File(Bytes),
    /// The file's last bytes: hashed now, sent later (as `Framing`) only if the file is new.
    HashOnly(Bytes),
    /// The file is complete: report its digest.
    FileEnd,
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
    /// SHA-256 of the `File` chunks so far, until `FileEnd`.
    hasher: Option<Sha256>,
    digest: Option<oneshot::Sender<[u8; 32]>>,
}

/// The file's SHA-256, once hyper has taken all of it.
pub type DigestReceiver = oneshot::Receiver<[u8; 32]>;

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
    /// The bytes of a data message, hashing the file's; the message itself when it carries
    /// none (at `FileEnd` the digest goes out).
    fn bytes_of(&mut self, msg: Msg) -> Result<Bytes, Msg> {
        match msg {
            Msg::Framing(b) => Ok(b),
            Msg::File(b) => {
                if let Some(h) = &mut self.hasher {
                    h.update(&b);
                }
                Ok(b)
            }
            Msg::HashOnly(b) => {
                if let Some(h) = &mut self.hasher {
                    h.update(&b);
                }
                Err(Msg::HashOnly(Bytes::new()))
            }
            Msg::FileEnd => {
                if let (Some(h), Some(tx)) = (self.hasher.take(), self.digest.take()) {
                    let _ = tx.send(h.finalize().into());
                }
                Err(Msg::FileEnd)
            }
            end => Err(end),
        }
    }

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
            match self.rx.try_recv().map(|m| self.bytes_of(m)) {
                Ok(Ok(next)) => merged
                    .get_or_insert_with(|| bytes::BytesMut::from(&first[..]))
                    .extend_from_slice(&next),
                Ok(Err(Msg::FileEnd | Msg::HashOnly(_))) => {}
                Ok(Err(_)) => {
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
            Msg::Framing(b) => write!(f, "Framing({})", b.len()),
            Msg::File(b) => write!(f, "File({})", b.len()),
            Msg::HashOnly(b) => write!(f, "HashOnly({})", b.len()),
            Msg::FileEnd => f.write_str("FileEnd"),
            Msg::End => f.write_str("End"),
        }
    }
}

/// The receiver went away: the upstream request already ended.
#[derive(Debug, thiserror::Error)]
#[error("upstream stopped reading the request body")]
pub struct UpstreamGone;

/// The body's end could not be queued within its deadline: the upstream stopped reading.
#[derive(Debug, thiserror::Error)]
#[error("upstream took nothing for {0:?}")]
pub struct Stalled(pub std::time::Duration);

impl From<Stalled> for crate::error::GatewayError {
    fn from(e: Stalled) -> Self {
        crate::error::GatewayError::UpstreamTimeout { after: e.0 }
    }
}

/// The sender went away without `finish()`.
#[derive(Debug, thiserror::Error)]
#[error("upload aborted by fxgate")]
pub struct Aborted;

/// A body of `len` bytes when known (sent as `Content-Length`), chunked otherwise, and the
/// digest of the file inside it.
pub fn channel(len: Option<u64>) -> (BodySender, ChannelBody, DigestReceiver) {
    channel_of(len, CHANNEL_CHUNKS)
}

/// `channel`, with room for `chunks` queued chunks (the File Service's bursts).
pub fn channel_of(len: Option<u64>, chunks: usize) -> (BodySender, ChannelBody, DigestReceiver) {
    let (tx, rx) = mpsc::channel(chunks);
    let (digest_tx, digest_rx) = oneshot::channel();
    (
        BodySender { tx },
        ChannelBody {
            rx,
            len,
            done: false,
            pending: None,
            hasher: Some(Sha256::new()),
            digest: Some(digest_tx),
        },
        digest_rx,
    )
}

impl BodySender {
    /// Queues the file's bytes, waiting while the channel is full.
    pub async fn send_file(&self, chunk: Bytes) -> Result<(), UpstreamGone> {
        self.tx
            .send(Msg::File(chunk))
            .await
            .map_err(|_| UpstreamGone)
    }

    /// Queues framing (not part of the file), waiting while the channel is full.
    pub async fn send(&self, chunk: Bytes) -> Result<(), UpstreamGone> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.tx
            .send(Msg::Framing(chunk))
            .await
            .map_err(|_| UpstreamGone)
    }

    /// Room for one chunk of the file if there is room now; `None` when the body is full.
    pub fn try_slot(&self) -> Result<Option<SendPermit<'_>>, UpstreamGone> {
        match self.tx.try_reserve() {
            Ok(p) => Ok(Some(SendPermit(p))),
            Err(mpsc::error::TrySendError::Full(())) => Ok(None),
            Err(mpsc::error::TrySendError::Closed(())) => Err(UpstreamGone),
        }
    }

    /// Room for one chunk of the file, once hyper has taken what is queued.
    pub async fn slot(&self) -> Result<SendPermit<'_>, UpstreamGone> {
        self.tx
            .reserve()
            .await
            .map(SendPermit)
            .map_err(|_| UpstreamGone)
    }

    /// Marks the end of the file: the digest is sent once hyper has taken it all.
    pub async fn end_of_file(&self) -> Result<(), UpstreamGone> {
        self.tx.send(Msg::FileEnd).await.map_err(|_| UpstreamGone)
    }

    /// Ends the file with `last`, hashed but not sent: the digest comes before the last bytes
    /// leave, so a file found in the index can still be aborted with nothing complete
    /// upstream (a body without a closing delimiter of its own). `send` sends them after.
    pub async fn end_of_file_holding(&self, last: Bytes) -> Result<(), UpstreamGone> {
        self.tx
            .send(Msg::HashOnly(last))
            .await
            .map_err(|_| UpstreamGone)?;
        self.end_of_file().await
    }

    /// Ends the body cleanly.
    pub async fn finish(self) -> Result<(), UpstreamGone> {
        self.tx.send(Msg::End).await.map_err(|_| UpstreamGone)
    }

    /// Sends `tail` (the closing delimiter, or a file's held-back last chunk) and ends the
    /// body, within `within` in all: once the digest is final the channel waits on hyper,
    /// and a Fxiaoke that stopped reading must not hold the request past its deadline. An
    /// upstream already gone is `Ok`: its answer says why.
    pub async fn close(self, tail: Bytes, within: std::time::Duration) -> Result<(), Stalled> {
        let ending = async move {
            if self.send(tail).await.is_ok() {
                let _ = self.finish().await;
            }
        };
        tokio::time::timeout(within, ending)
            .await
            .map_err(|_| Stalled(within))
    }
}

/// Room for one chunk of the file, taken before the chunk is read from the caller: under
/// back-pressure the bytes wait in the caller's socket, not in a chunk fxgate holds while
/// waiting for room (that chunk cost 64 KiB per upload held up by a slow Fxiaoke).
pub struct SendPermit<'a>(mpsc::Permit<'a, Msg>);

impl std::fmt::Debug for SendPermit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SendPermit")
    }
}

impl SendPermit<'_> {
    /// Queues the chunk in the room taken.
    pub fn send(self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.0.send(Msg::File(chunk));
        }
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
        loop {
            let msg = match self.rx.poll_recv(cx) {
                Poll::Ready(Some(msg)) => msg,
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(Box::new(Aborted))));
                }
                Poll::Pending => return Poll::Pending,
            };
            match self.bytes_of(msg) {
                Ok(b) => return Poll::Ready(Some(Ok(Frame::data(self.coalesce(b))))),
                Err(Msg::FileEnd | Msg::HashOnly(_)) => continue,
                Err(_) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
            }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use http_body_util::BodyExt as _;

    /// Reads every frame; `Err` if the body ended in an error (an abort).
    async fn drain(mut body: ChannelBody) -> Result<Vec<Bytes>, BoxError> {
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                frames.push(data.clone());
            }
        }
        Ok(frames)
    }

    #[tokio::test(start_paused = true)]
    async fn closing_a_body_nobody_reads_ends_at_its_deadline() {
        // hyper holds the body but has stopped taking from it (Fxiaoke stopped reading): the
        // channel is full, so neither the tail nor the end can be queued.
        let (tx, _body, _digest) = channel(None);
        tx.slot().await.unwrap().send(Bytes::from_static(b"file"));
        let started = tokio::time::Instant::now();
        let closed = tx
            .close(Bytes::from_static(b"tail"), Duration::from_secs(3))
            .await;
        assert!(closed.is_err(), "{closed:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test]
    async fn closing_a_body_that_is_read_sends_the_tail_and_ends_it() {
        let (tx, body, _digest) = channel(None);
        let reader = tokio::spawn(drain(body));
        tx.slot().await.unwrap().send(Bytes::from_static(b"file"));
        tx.close(Bytes::from_static(b"tail"), Duration::from_secs(3))
            .await
            .unwrap();
        let frames = reader.await.unwrap().unwrap();
        assert_eq!(frames.concat(), b"filetail");
    }

    #[tokio::test]
    async fn the_digest_covers_the_file_and_not_its_framing() {
        let (tx, body, digest) = channel(None);
        let reader = tokio::spawn(drain(body));
        let file = vec![7u8; 100 * 1024];
        tx.send(Bytes::from_static(b"--prefix\r\n")).await.unwrap();
        for piece in file.chunks(30 * 1024) {
            tx.slot().await.unwrap().send(Bytes::copy_from_slice(piece));
        }
        tx.end_of_file().await.unwrap();
        let sha: [u8; 32] = Sha256::digest(&file).into();
        assert_eq!(digest.await.unwrap(), sha);
        tx.send(Bytes::from_static(b"\r\n--suffix--"))
            .await
            .unwrap();
        tx.finish().await.unwrap();
        let sent: Vec<u8> = reader.await.unwrap().unwrap().concat();
        assert_eq!(sent.len(), 10 + file.len() + 12);
        assert!(sent.starts_with(b"--prefix") && sent.ends_with(b"--suffix--"));
    }

    #[tokio::test]
    async fn a_sender_dropped_before_finish_aborts_the_body() {
        let (tx, body, _digest) = channel(Some(1000));
        let reader = tokio::spawn(drain(body));
        tx.slot()
            .await
            .unwrap()
            .send(Bytes::from_static(b"part of the file"));
        drop(tx);
        let err = reader.await.unwrap().unwrap_err();
        assert!(err.is::<Aborted>(), "{err}");
    }

    #[tokio::test]
    async fn small_queued_pieces_go_out_as_one_frame() {
        let (tx, body, _digest) = channel_of(None, 4);
        tx.send(Bytes::from_static(b"head ")).await.unwrap();
        tx.slot()
            .await
            .unwrap()
            .send(Bytes::from_static(b"small file"));
        tx.send(Bytes::from_static(b" tail")).await.unwrap();
        tx.finish().await.unwrap();
        let frames = drain(body).await.unwrap();
        assert_eq!(frames, vec![Bytes::from_static(b"head small file tail")]);
    }

    #[tokio::test]
    async fn a_gone_reader_is_reported_to_the_sender() {
        let (tx, body, _digest) = channel(None);
        drop(body);
        assert!(tx.slot().await.is_err());
        assert!(tx.try_slot().is_err());
    }
}

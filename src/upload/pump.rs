//! Moving the file's bytes (design §4 step 5): the first bytes are held for the type check; a
//! file that ends within `SMALL_FILE` is held whole (it sits in hyper's read buffer anyway) and
//! hashed before anything goes upstream; a larger one is pumped into the upstream body as it
//! arrives, under the file limit, the byte quota and a send deadline, while the body hashes it.
//! The File Service's pump sends the caller's reads in bursts (`transport::FILE_BURST`), so
//! each write upstream carries several of them.

use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::request::UploadRequest;
use super::source::FileSource;
use crate::error::GatewayError;
use crate::quota::BytesTicket;
use crate::sniff::HEAD_LEN;
use crate::upstream::body::{BodySender, DigestReceiver, SendPermit};

/// Files up to this size are read whole before the upstream request opens. It is within the
/// server's inbound read buffer, so it adds no memory per upload.
pub const SMALL_FILE: usize = 32 * 1024;

/// The file's first chunks, held: at least its first `HEAD_LEN` bytes, all of it when small.
#[derive(Debug, Default)]
pub struct Held {
    /// The chunks, as the caller's body delivered them.
    pub chunks: Vec<Bytes>,
    /// Their total length.
    pub len: usize,
}

impl Held {
    /// Reads until the type check has its bytes; an empty file is refused.
    pub async fn read_head(file: &mut FileSource) -> Result<Self, GatewayError> {
        let mut held = Self::default();
        while held.len < HEAD_LEN {
            match file.next_chunk().await? {
                Some(chunk) => held.push(chunk),
                None => break,
            }
        }
        if held.len == 0 {
            return Err(GatewayError::BadRequest {
                detail: "the file is empty".into(),
            });
        }
        Ok(held)
    }

    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.chunks.push(chunk);
    }

    /// The file's first `HEAD_LEN` bytes (fewer if it is shorter).
    pub fn first_bytes(&self) -> Vec<u8> {
        self.chunks
            .iter()
            .flat_map(|c| c.iter().copied())
            .take(HEAD_LEN)
            .collect()
    }

    /// Reads on while the file is still within `SMALL_FILE`; `true` when it ended there.
    pub async fn gather_small(
        &mut self,
        file: &mut FileSource,
        up: &UploadRequest,
    ) -> Result<bool, GatewayError> {
        loop {
            if self.len as u64 > up.limit {
                return Err(up.too_large(self.len as u64));
            }
            if self.len > SMALL_FILE {
                return Ok(false);
            }
            match file.next_chunk().await? {
                Some(chunk) => self.push(chunk),
                None => return Ok(true),
            }
        }
    }

    /// SHA-256 of the held (whole) file.
    pub fn sha256(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for chunk in &self.chunks {
            h.update(chunk);
        }
        h.finalize().into()
    }
}

/// How a pumped file ended.
#[derive(Debug)]
pub enum Streamed {
    /// Every byte went upstream; the digest is final.
    Complete {
        /// File bytes.
        size: u64,
        /// Their SHA-256.
        digest: [u8; 32],
        /// With `hold_last`: the file's last chunk, hashed but not yet sent.
        held: Option<Bytes>,
    },
    /// Fxiaoke stopped reading (it answered early or the connection dropped).
    UpstreamGone {
        /// File bytes read from the caller.
        size: u64,
    },
}

/// Where the pump sends, and the limits it keeps.
#[derive(Debug)]
pub struct Pump<'a> {
    /// The upstream body.
    pub tx: &'a BodySender,
    /// The file limit (413 beyond).
    pub limit: u64,
    /// The route, for the 413.
    pub route: &'static str,
    /// How long one chunk may wait for room in the upstream body.
    pub send_timeout: Duration,
    /// The caller's byte reservation, grown as the file flows.
    pub ticket: &'a mut Option<BytesTicket>,
    /// Keep the file's last chunk back until its hash is final (a raw upstream body has no
    /// closing delimiter to hold back instead).
    pub hold_last: bool,
    /// Chunks sent together, so hyper writes them in one `writev` (1: each as it comes). The
    /// upstream body must have room for as many (`transport::FILE_BURST`).
    pub burst: usize,
}

impl<'a> Pump<'a> {
    /// Sends `head`, then the rest of `file`; then waits for the digest, which is final once
    /// hyper has taken the last byte (which takes as long as sending it).
    pub async fn run(
        self,
        head: Held,
        file: &mut FileSource,
        digest: DigestReceiver,
    ) -> Result<Streamed, GatewayError> {
        let mut size = 0u64;
        let mut last: Option<Bytes> = None;
        let mut burst: Vec<Bytes> = Vec::with_capacity(self.burst);
        let mut pending = head.chunks.into_iter();
        loop {
            // Room first, then the caller's next chunk: nothing is read that cannot be queued.
            let Some(slot) = self.room().await? else {
                return Ok(Streamed::UpstreamGone { size });
            };
            let chunk = match pending.next() {
                Some(c) => c,
                None => match file.next_chunk().await? {
                    Some(c) => c,
                    None => break,
                },
            };
            size += chunk.len() as u64;
            if size > self.limit {
                return Err(GatewayError::PayloadTooLarge {
                    seen: size,
                    limit: self.limit,
                    route: self.route,
                });
            }
            if let Some(t) = self.ticket.as_mut() {
                t.grow_to(size).await?;
            }
            let ready = if self.hold_last {
                // The previous chunk goes; this one waits (the first waits with room unused).
                last.replace(chunk)
            } else {
                Some(chunk)
            };
            if let Some(c) = ready {
                if !self.forward(slot, c, &mut burst).await? {
                    return Ok(Streamed::UpstreamGone { size });
                }
            }
        }
        if !self.send_burst(&mut burst).await? {
            return Ok(Streamed::UpstreamGone { size });
        }
        let held = last.clone();
        let digest = tokio::time::timeout(self.send_timeout, async {
            let ended = match last {
                Some(l) => self.tx.end_of_file_holding(l).await,
                None => self.tx.end_of_file().await,
            };
            match ended {
                Ok(()) => digest.await.ok(),
                Err(_) => None,
            }
        })
        .await
        .map_err(|_| self.timed_out())?;
        Ok(match digest {
            Some(digest) => Streamed::Complete { size, digest, held },
            // The body was dropped: the upstream request ended before taking the whole file.
            None => Streamed::UpstreamGone { size },
        })
    }

    /// Room for one chunk in the upstream body, waiting at most `send_timeout`; `None` when
    /// the upstream request is gone.
    async fn room(&self) -> Result<Option<SendPermit<'a>>, GatewayError> {
        // A deadline (a timer entry) only when the body is full and we must wait.
        match self.tx.try_slot() {
            Ok(Some(slot)) => return Ok(Some(slot)),
            Ok(None) => {}
            Err(_) => return Ok(None),
        }
        match tokio::time::timeout(self.send_timeout, self.tx.slot()).await {
            Err(_) => Err(self.timed_out()),
            Ok(r) => Ok(r.ok()),
        }
    }

    /// Sends `chunk` in `slot`, or (in bursts) gathers it and sends the burst once full;
    /// `false` when the upstream request is gone.
    async fn forward(
        &self,
        slot: SendPermit<'a>,
        chunk: Bytes,
        burst: &mut Vec<Bytes>,
    ) -> Result<bool, GatewayError> {
        if self.burst <= 1 {
            slot.send(chunk);
            return Ok(true);
        }
        // The burst waits outside the body; its room is claimed chunk by chunk when it goes.
        drop(slot);
        burst.push(chunk);
        if burst.len() < self.burst {
            return Ok(true);
        }
        self.send_burst(burst).await
    }

    /// Queues the chunks gathered for one write, all within one `send_timeout` (a burst
    /// waits as long as one chunk may, not once per chunk); `false` when the upstream request
    /// is gone.
    async fn send_burst(&self, burst: &mut Vec<Bytes>) -> Result<bool, GatewayError> {
        // The media routes never gather: no deadline to set up at the end of their uploads.
        if burst.is_empty() {
            return Ok(true);
        }
        let send = async {
            for chunk in burst.drain(..) {
                if self.tx.send_file(chunk).await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(self.send_timeout, send)
            .await
            .map_err(|_| self.timed_out())
    }

    fn timed_out(&self) -> GatewayError {
        GatewayError::UpstreamTimeout {
            after: self.send_timeout,
        }
    }
}

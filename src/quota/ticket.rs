//! `BytesTicket`: the bytes one upload has reserved against its caller's daily budget. Each
//! reservation remembers the store that counted it (Redis, or this replica's own counters
//! while Redis is down and quotas fail open), so a refund goes back where it was taken.
//! Dropped unsettled (the upload failed, or was a dedupe hit) it refunds everything.

use std::sync::Arc;

use futures_util::FutureExt as _;

use super::{QuotaStore, Quotas, Reserved};
use crate::config::ClientConfig;
use crate::error::GatewayError;

/// Reserve ahead in steps of this size, so a chunked body does not take a lock (or a Redis
/// round trip) per chunk.
const STEP: u64 = 1 << 20;

#[derive(Debug)]
struct Segment {
    day: u64,
    bytes: u64,
    by: Arc<dyn QuotaStore>,
}

/// The bytes an upload has reserved.
#[derive(Debug)]
pub struct BytesTicket {
    quotas: Quotas,
    client: Arc<ClientConfig>,
    segments: Vec<Segment>,
    settled: bool,
}

impl BytesTicket {
    pub(super) fn new(quotas: Quotas, client: Arc<ClientConfig>) -> Self {
        Self {
            quotas,
            client,
            segments: Vec::new(),
            settled: false,
        }
    }

    fn reserved(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    pub(super) async fn reserve(&mut self, n: u64) -> Result<(), GatewayError> {
        let Some(Reserved { day, by }) = self.quotas.reserve(&self.client, n).await? else {
            return Ok(());
        };
        // Midnight may pass mid-upload: the bytes before it stay yesterday's (and count toward
        // what this upload has reserved), the bytes after it are today's. Each byte is
        // charged once.
        match self.segments.last_mut() {
            Some(last) if last.day == day && Arc::ptr_eq(&last.by, &by) => last.bytes += n,
            _ => self.segments.push(Segment { day, bytes: n, by }),
        }
        Ok(())
    }

    /// Accounts for `total` file bytes seen so far, reserving more if the body outgrows what
    /// was reserved (chunked bodies reserve as they flow).
    pub async fn grow_to(&mut self, total: u64) -> Result<(), GatewayError> {
        let reserved = self.reserved();
        if total > reserved {
            let needed = total - reserved;
            // Ahead in steps; near the limit, exactly what is needed.
            if needed < STEP && self.reserve(STEP).await.is_ok() {
                return Ok(());
            }
            self.reserve(needed).await?;
        }
        Ok(())
    }

    /// The upload succeeded with `size` file bytes: keep those, refund the rest (the latest
    /// reservations first).
    pub fn settle(mut self, size: u64) {
        let mut excess = self.reserved().saturating_sub(size);
        for s in self.segments.iter().rev() {
            let give = excess.min(s.bytes);
            excess -= give;
            self.refund(s, give);
        }
        self.settled = true;
    }

    fn refund(&self, s: &Segment, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut fut = s.by.refund_bytes(&self.client.name, bytes, s.day);
        // A local refund is done at once; a remote one goes off the request path (with Redis
        // down the bytes stay counted until midnight).
        if (&mut fut).now_or_never().is_none() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(fut);
            }
        }
    }
}

impl Drop for BytesTicket {
    fn drop(&mut self) {
        if !self.settled {
            for s in &self.segments {
                self.refund(s, s.bytes);
            }
        }
    }
}

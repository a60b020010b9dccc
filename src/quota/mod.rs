//! Per-caller quotas and the corp's upstream budget (design §2, §4 step 2). The decisions are
//! made by a `QuotaStore` — `memory` (this process) or `redis` (every replica together, with
//! `store::FailOver` deciding what a failing Redis means) — and read through `Quotas`, which
//! knows the limits and turns answers into fxgate's errors:
//!
//! * request rate: GCRA; `requests_per_minute` may arrive at once, then one per 60 s / rpm;
//! * concurrent uploads: a slot per upload, held until it ends;
//! * bytes per calendar day (Asia/Shanghai, UTC+8, where Fxiaoke's quotas reset), reserved by
//!   `Content-Length` before the body is read, grown as a chunked body flows, settled to the
//!   file's real size on success and refunded on failure or a dedupe hit (`ticket`).
//!
//! The corp's allowance at Fxiaoke is not a caller's quota: `upstream::budget` counts it.

pub mod memory;
pub mod redis;
pub mod ticket;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::clock::Clock;
use crate::config::ClientConfig;
use crate::error::GatewayError;
use crate::metrics::QuotaKind;
use crate::store::{FailOver, Lease, StoreError};
pub use ticket::BytesTicket;

/// Bytes reserved on one CST day, and the store that holds them (a refund goes back there).
#[derive(Debug, Clone)]
pub struct Reserved {
    /// The CST day.
    pub day: u64,
    /// Where they are counted.
    pub by: Arc<dyn QuotaStore>,
}

/// A concurrent-upload slot; dropping it frees the slot.
#[derive(Debug)]
pub struct UploadSlot {
    // Never read: holding it is the point, dropping it the release.
    _held: Held,
}

// Fields never read: holding them is the point, dropping them the release.
#[allow(dead_code)]
#[derive(Debug)]
enum Held {
    /// Counted in this process; released by the guard.
    Counted(memory::CountedSlot),
    /// Leased in Redis; renewed while held, released on drop.
    Leased(Lease),
}

impl From<Held> for UploadSlot {
    fn from(held: Held) -> Self {
        Self { _held: held }
    }
}

/// Where quota and budget decisions are made. Every answer is `Err` only when the store
/// itself failed; a refusal is an `Ok` saying how long to wait.
pub trait QuotaStore: Send + Sync + fmt::Debug {
    /// One request of `client` at `per_minute`; `Ok(Err(wait))` when over.
    fn rate<'a>(
        &'a self,
        client: &'a str,
        per_minute: u32,
    ) -> StoreFuture<'a, Result<(), Duration>>;
    /// One of `max` concurrent-upload slots; `Ok(None)` when all are taken.
    fn acquire_slot<'a>(&'a self, client: &'a str, max: u32)
        -> StoreFuture<'a, Option<UploadSlot>>;
    /// Uploads of `client` in flight.
    fn slots_in_use<'a>(&'a self, client: &'a str) -> StoreFuture<'a, u64>;
    /// Reserves `n` of `limit` bytes on the CST day of `unix_secs`, or says how long until the
    /// next day.
    fn reserve_bytes<'a>(
        &'a self,
        client: &'a str,
        n: u64,
        limit: u64,
        unix_secs: u64,
    ) -> StoreFuture<'a, Result<Reserved, Duration>>;
    /// Gives back `n` bytes reserved on `day` (nothing if that day is over).
    fn refund_bytes(&self, client: &str, n: u64, day: u64) -> BoxFuture<'static, ()>;
    /// Bytes of `client` used on the CST day of `unix_secs`.
    fn bytes_today<'a>(&'a self, client: &'a str, unix_secs: u64) -> StoreFuture<'a, u64>;
}

pub use crate::store::StoreFuture;

/// Every call goes to Redis; a failure answers per the fail mode (from this replica's own
/// counters, or not at all).
impl QuotaStore for FailOver<dyn QuotaStore> {
    fn rate<'a>(&'a self, client: &'a str, rpm: u32) -> StoreFuture<'a, Result<(), Duration>> {
        Box::pin(self.run(move |s| s.rate(client, rpm)))
    }
    fn acquire_slot<'a>(
        &'a self,
        client: &'a str,
        max: u32,
    ) -> StoreFuture<'a, Option<UploadSlot>> {
        Box::pin(self.run(move |s| s.acquire_slot(client, max)))
    }
    fn slots_in_use<'a>(&'a self, client: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(self.sum(move |s| s.slots_in_use(client)))
    }
    fn reserve_bytes<'a>(
        &'a self,
        client: &'a str,
        n: u64,
        limit: u64,
        unix_secs: u64,
    ) -> StoreFuture<'a, Result<Reserved, Duration>> {
        Box::pin(self.run(move |s| s.reserve_bytes(client, n, limit, unix_secs)))
    }
    fn refund_bytes(&self, _client: &str, _n: u64, _day: u64) -> BoxFuture<'static, ()> {
        // Refunds go to the store that reserved (`Reserved::by`), never through here.
        Box::pin(async {})
    }
    fn bytes_today<'a>(&'a self, client: &'a str, unix_secs: u64) -> StoreFuture<'a, u64> {
        Box::pin(self.sum(move |s| s.bytes_today(client, unix_secs)))
    }
}

/// A caller's usage, for `/admin/clients`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Uploads in flight (when the caller has a concurrency limit).
    pub uploads_in_flight: Option<u64>,
    /// Bytes today (when the caller has a byte limit).
    pub bytes_today: Option<u64>,
}

/// Caller quotas as the layers use them: the limits come from each caller's config, the state
/// from the store.
#[derive(Debug, Clone)]
pub struct Quotas {
    store: Arc<dyn QuotaStore>,
    clock: Arc<dyn Clock>,
}

fn exceeded(kind: QuotaKind, retry_after: Duration) -> GatewayError {
    GatewayError::QuotaExceeded {
        kind: kind.as_str(),
        retry_after: retry_after.max(Duration::from_secs(1)),
    }
}

fn store_down(_: StoreError) -> GatewayError {
    GatewayError::QuotaStoreDown
}

impl Quotas {
    /// Quotas kept in `store`, timed by `clock`.
    pub fn new(store: Arc<dyn QuotaStore>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// The caller's request rate.
    pub async fn check_rate(&self, c: &ClientConfig) -> Result<(), GatewayError> {
        let Some(rpm) = c.requests_per_minute else {
            return Ok(());
        };
        let answer = self.store.rate(&c.name, rpm).await.map_err(store_down)?;
        answer.map_err(|wait| exceeded(QuotaKind::RequestsPerMinute, wait))
    }

    /// A concurrent-upload slot, held until dropped.
    pub async fn acquire_upload(
        &self,
        c: &ClientConfig,
    ) -> Result<Option<UploadSlot>, GatewayError> {
        let Some(max) = c.max_concurrent_uploads else {
            return Ok(None);
        };
        match self
            .store
            .acquire_slot(&c.name, max)
            .await
            .map_err(store_down)?
        {
            Some(slot) => Ok(Some(slot)),
            None => Err(exceeded(
                QuotaKind::MaxConcurrentUploads,
                Duration::from_secs(1),
            )),
        }
    }

    /// A byte ticket with `announced` bytes reserved up front.
    pub async fn bytes_ticket(
        &self,
        c: &Arc<ClientConfig>,
        announced: Option<u64>,
    ) -> Result<BytesTicket, GatewayError> {
        let mut ticket = BytesTicket::new(self.clone(), c.clone());
        if let Some(n) = announced {
            ticket.reserve(n).await?;
        }
        Ok(ticket)
    }

    /// Reserves `n` more of the caller's bytes today.
    async fn reserve(&self, c: &ClientConfig, n: u64) -> Result<Option<Reserved>, GatewayError> {
        let Some(limit) = c.bytes_per_day else {
            return Ok(None);
        };
        let now = self.clock.unix_secs();
        let answer = self
            .store
            .reserve_bytes(&c.name, n, limit, now)
            .await
            .map_err(store_down)?;
        answer
            .map(Some)
            .map_err(|wait| exceeded(QuotaKind::BytesPerDay, wait))
    }

    /// What the caller uses now (across replicas when shared).
    pub async fn usage(&self, c: &ClientConfig) -> Usage {
        let now = self.clock.unix_secs();
        let mut usage = Usage::default();
        if c.max_concurrent_uploads.is_some() {
            usage.uploads_in_flight = self.store.slots_in_use(&c.name).await.ok();
        }
        if c.bytes_per_day.is_some() {
            usage.bytes_today = self.store.bytes_today(&c.name, now).await.ok();
        }
        usage
    }
}

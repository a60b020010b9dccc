//! The compact in-memory dedupe index: about 125 bytes an entry, so a million entries fit in
//! the memory a small pod has (moka, the general-purpose cache used before, cost ~760).
//!
//! Where the bytes went, and why they are not needed here:
//! * keys and values held their strings (corp, caller, holders, content type) once per entry:
//!   those come from a small set (the config, the sniffed types), so an entry holds 16-bit ids
//!   into an [`Interner`] instead;
//! * a mediaId of up to 47 bytes lives inside the entry (a boxed string costs ~50 more);
//! * moka keeps an access-order list, a frequency sketch and a timer wheel per entry. Every
//!   entry here has the same lifetime (`ttl` from its upload, never extended), so insertion
//!   order is expiry order: a ring of slots per shard, oldest first, is the expiry queue and
//!   the eviction order at capacity (FIFO rather than LRU: an old entry is the closest to its
//!   expiry whether or not it is hit), and a hash table of 4-byte slot numbers finds them.
//!
//! Shards (each behind its own lock, held for a lookup's few hundred nanoseconds) keep
//! concurrent uploads from queueing on one lock.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::{Duration, UNIX_EPOCH};

use parking_lot::{Mutex, MutexGuard, RwLock};
use sha2::{Digest, Sha256};

use super::{DedupeKey, MediaRef, MAX_HOLDERS};

const SHARDS: usize = 16;
/// Slots are allocated in segments as the ring first reaches them: an empty index costs
/// nothing, and growth never copies (a doubling vector would briefly need 1.5× its size).
/// Small (28 KiB), because a new segment is written whole: 16 shards' first entries cost
/// 450 KiB, not the 7 MiB that 4096-slot segments did.
const SEGMENT: usize = 256;

/// What one entry costs at most, measured at 1 M entries (tests/index_memory.rs): the figure
/// the start-up check multiplies by `max_entries` against the cgroup's memory limit.
pub const BYTES_PER_ENTRY: u64 = 150;

/// Ids by name, and names by id.
type Names = (std::collections::HashMap<Box<str>, u16>, Vec<Box<str>>);

/// Small strings (corps, callers, routes, content types) stored once, named by a 16-bit id.
#[derive(Debug, Default)]
pub struct Interner {
    inner: RwLock<Names>,
}

impl Interner {
    fn find(&self, s: &str) -> Option<u16> {
        self.inner.read().0.get(s).copied()
    }

    /// The id of `s`, made if new; `None` once 65 535 distinct strings exist (the entry is
    /// then not recorded: a later upload of the file is a miss, nothing worse).
    fn intern(&self, s: &str) -> Option<u16> {
        if let Some(id) = self.find(s) {
            return Some(id);
        }
        let mut inner = self.inner.write();
        let (ids, names) = &mut *inner;
        if let Some(id) = ids.get(s) {
            return Some(*id);
        }
        let id = u16::try_from(names.len())
            .ok()
            .filter(|id| *id < u16::MAX)?;
        names.push(s.into());
        ids.insert(s.into(), id);
        Some(id)
    }

    /// The names of `ids`, under one read of the table.
    fn names(&self, ids: impl IntoIterator<Item = u16>) -> Vec<String> {
        let names = self.inner.read();
        ids.into_iter()
            .map(|id| {
                names
                    .1
                    .get(usize::from(id))
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// Up to this many bytes a mediaId is kept inside the entry; 47 makes the enum 48 bytes.
const INLINE: usize = 47;

/// A mediaId: inline up to 47 bytes (zero-padded; an id containing a NUL is boxed), boxed
/// beyond. Inline costs every entry 32 bytes more than a boxed id's pointer, and saves a
/// ~50-byte allocation for every id of a realistic length.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MediaId {
    Inline([u8; INLINE]),
    Boxed(Box<str>),
}

impl MediaId {
    fn new(id: &str) -> Self {
        if id.len() <= INLINE && !id.as_bytes().contains(&0) {
            let mut bytes = [0u8; INLINE];
            bytes[..id.len()].copy_from_slice(id.as_bytes());
            Self::Inline(bytes)
        } else {
            Self::Boxed(id.into())
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Self::Inline(bytes) => {
                let len = bytes.iter().position(|b| *b == 0).unwrap_or(INLINE);
                std::str::from_utf8(&bytes[..len]).unwrap_or_default()
            }
            Self::Boxed(s) => s,
        }
    }

    fn is(&self, id: &str) -> bool {
        self.as_str() == id
    }

    fn text(&self) -> String {
        self.as_str().to_string()
    }
}

/// What a lookup is for: corp, route, and the file (its SHA-256, or for documents the SHA-256
/// of that and the filename, since a document's name is part of what Fxiaoke shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    corp: u16,
    route: u16,
    file: [u8; 32],
}

/// One recorded upload.
#[derive(Debug, Clone)]
pub struct Entry {
    key: Key,
    media: MediaId,
    size: u64,
    created_ms: u64,
    content_type: u16,
    /// The uploader, always a holder.
    caller: u16,
    /// Holders beyond the uploader; most entries have none. Boxed: 8 bytes in every entry
    /// where a bare `Vec` would take 24, for the few entries that have more holders.
    #[allow(clippy::box_collection)]
    more_holders: Option<Box<Vec<u16>>>,
}

#[derive(Debug)]
struct Shard {
    table: hashbrown::HashTable<u32>,
    segments: Vec<Box<[Option<Entry>]>>,
    capacity: usize,
    /// Ring position of the oldest slot, and how many slots from there are in use (live or
    /// emptied by a replacement or delete).
    head: usize,
    len: usize,
}

impl Shard {
    fn new(capacity: usize) -> Self {
        Self {
            table: hashbrown::HashTable::new(),
            segments: Vec::new(),
            capacity,
            head: 0,
            len: 0,
        }
    }

    fn slot(&self, pos: usize) -> Option<&Entry> {
        self.segments
            .get(pos / SEGMENT)?
            .get(pos % SEGMENT)?
            .as_ref()
    }

    fn slot_mut(&mut self, pos: usize) -> &mut Option<Entry> {
        let seg = pos / SEGMENT;
        while self.segments.len() <= seg {
            let size = SEGMENT.min(self.capacity - self.segments.len() * SEGMENT);
            self.segments.push(vec![None; size].into_boxed_slice());
        }
        &mut self.segments[seg][pos % SEGMENT]
    }

    fn find(&self, hash: u64, key: &Key) -> Option<usize> {
        let pos = self.table.find(hash, |&p| {
            self.slot(p as usize).is_some_and(|e| e.key == *key)
        })?;
        Some(*pos as usize)
    }

    /// Empties the slot at `pos` and unlinks it from the table.
    fn remove(&mut self, hasher: &RandomState, pos: usize) {
        if let Some(entry) = self.slot_mut(pos).take() {
            let hash = hasher.hash_one(entry.key);
            if let Ok(found) = self.table.find_entry(hash, |&p| p as usize == pos) {
                found.remove();
            }
        }
    }

    /// Drops the oldest slot.
    fn pop(&mut self, hasher: &RandomState) {
        let head = self.head;
        self.remove(hasher, head);
        self.head = (self.head + 1) % self.capacity;
        self.len -= 1;
    }

    /// `expired_at_or_before`: entries created then or earlier have outlived the TTL; `None`
    /// while the clock is younger than the TTL (nothing can have).
    fn push(
        &mut self,
        hasher: &RandomState,
        hash: u64,
        entry: Entry,
        expired_at_or_before: Option<u64>,
    ) {
        if let Some(old) = self.find(hash, &entry.key) {
            self.remove(hasher, old);
        }
        // Expired and emptied slots at the front go first, then the oldest if still full.
        while self.len > 0
            && self
                .slot(self.head)
                .is_none_or(|e| expired_at_or_before.is_some_and(|t| e.created_ms <= t))
        {
            self.pop(hasher);
        }
        if self.len == self.capacity {
            self.pop(hasher);
        }
        let pos = (self.head + self.len) % self.capacity;
        *self.slot_mut(pos) = Some(entry);
        self.len += 1;
        let slots = &self.segments;
        self.table.insert_unique(hash, pos as u32, |&p| {
            let e = slots[p as usize / SEGMENT][p as usize % SEGMENT].as_ref();
            e.map_or(0, |e| hasher.hash_one(e.key))
        });
    }
}

/// The index: shards of rings and tables, and the names its entries refer to.
#[derive(Debug)]
pub struct CompactIndex {
    shards: Box<[Mutex<Shard>]>,
    names: Interner,
    hasher: RandomState,
    /// The trust period in force (a reload changes it).
    ttl_ms: AtomicU64,
}

impl CompactIndex {
    /// An index of at most `max_entries` (at least one per shard), each live for `ttl_ms`.
    pub fn new(max_entries: u64, ttl_ms: u64) -> Self {
        let per_shard = usize::try_from(max_entries.div_ceil(SHARDS as u64))
            .unwrap_or(usize::MAX)
            .clamp(1, u32::MAX as usize);
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Shard::new(per_shard)))
                .collect(),
            names: Interner::default(),
            hasher: RandomState::new(),
            ttl_ms: AtomicU64::new(ttl_ms),
        }
    }

    /// A new trust period for every lookup from now on. Entries stay in insertion order,
    /// which is still expiry order: they all share the one period. Entries already dropped
    /// under a shorter one stay dropped.
    pub fn set_ttl_ms(&self, ttl_ms: u64) {
        self.ttl_ms.store(ttl_ms, Ordering::Relaxed);
    }

    /// The file part of a key: its SHA-256, or for a document that of the SHA-256 and the
    /// filename.
    fn file(key: &DedupeKey) -> [u8; 32] {
        match &key.filename {
            None => key.sha256,
            Some(name) => {
                let mut h = Sha256::new();
                h.update(key.sha256);
                h.update(name.as_bytes());
                h.finalize().into()
            }
        }
    }

    /// The key for a lookup; `None` when the corp or route was never recorded (so nothing is).
    pub fn key(&self, key: &DedupeKey) -> Option<Key> {
        Some(Key {
            corp: self.names.find(&key.corp)?,
            route: self.names.find(key.route)?,
            file: Self::file(key),
        })
    }

    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        &self.shards[(hash >> 60) as usize % SHARDS]
    }

    /// The shard holding `key` (locked) and the entry's slot in it, if present.
    fn locate(&self, key: &Key) -> Option<(MutexGuard<'_, Shard>, usize)> {
        let hash = self.hasher.hash_one(key);
        let shard = self.shard(hash).lock();
        let pos = shard.find(hash, key)?;
        Some((shard, pos))
    }

    /// The live entry for `key` at `now_ms`.
    pub fn get(&self, key: &Key, now_ms: u64) -> Option<MediaRef> {
        let (shard, pos) = self.locate(key)?;
        let entry = shard.slot(pos)?;
        if now_ms.saturating_sub(entry.created_ms) >= self.ttl_ms.load(Ordering::Relaxed) {
            return None;
        }
        let more = entry.more_holders.iter().flat_map(|h| h.iter().copied());
        let mut names = self
            .names
            .names([entry.content_type, entry.caller].into_iter().chain(more));
        let holders = names.split_off(1);
        Some(MediaRef {
            media_id: entry.media.text(),
            size: entry.size,
            content_type: names.swap_remove(0),
            created_at: UNIX_EPOCH + Duration::from_millis(entry.created_ms),
            caller: holders[0].clone(),
            holders,
        })
    }

    /// Records (or replaces) `value` for `key` at `now_ms`.
    pub fn put(&self, key: &DedupeKey, value: &MediaRef, now_ms: u64) {
        let ids = (|| {
            let k = Key {
                corp: self.names.intern(&key.corp)?,
                route: self.names.intern(key.route)?,
                file: Self::file(key),
            };
            let caller = self.names.intern(&value.caller)?;
            let mut more = Vec::new();
            for h in value.holders.iter().filter(|h| **h != value.caller) {
                more.push(self.names.intern(h)?);
            }
            let content_type = self.names.intern(&value.content_type)?;
            Some((k, caller, more, content_type))
        })();
        let Some((k, caller, more, content_type)) = ids else {
            tracing::warn!("dedupe index: too many distinct names; entry not recorded");
            return;
        };
        let created_ms = value
            .created_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let entry = Entry {
            key: k,
            media: MediaId::new(&value.media_id),
            size: value.size,
            created_ms,
            content_type,
            caller,
            more_holders: (!more.is_empty()).then(|| Box::new(more)),
        };
        let hash = self.hasher.hash_one(k);
        // Checked, not saturating: with `now < ttl` a saturated 0 made an entry created at 0
        // count as expired here while `get` still served it (a flaky test found it).
        let expired = now_ms.checked_sub(self.ttl_ms.load(Ordering::Relaxed));
        self.shard(hash)
            .lock()
            .push(&self.hasher, hash, entry, expired);
    }

    /// Adds `caller` to the holders of `key`'s entry while it still points at `media_id`.
    pub fn add_holder(&self, key: &Key, media_id: &str, caller: &str) {
        let Some(id) = self.names.intern(caller) else {
            return;
        };
        let Some((mut shard, pos)) = self.locate(key) else {
            return;
        };
        let Some(entry) = shard.slot_mut(pos).as_mut() else {
            return;
        };
        let more = entry.more_holders.as_deref().map_or(&[][..], Vec::as_slice);
        let held = entry.caller == id || more.contains(&id);
        if entry.media.is(media_id) && !held && 1 + more.len() < MAX_HOLDERS {
            entry
                .more_holders
                .get_or_insert_with(Default::default)
                .push(id);
        }
    }

    /// Forgets every entry of `corp` pointing at `media_id`. A scan, one shard locked at a
    /// time: deletes are rare, and an index by mediaId would cost every entry more bytes.
    pub fn forget_media(&self, corp: &str, media_id: &str) {
        let Some(corp) = self.names.find(corp) else {
            return;
        };
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let doomed: Vec<usize> = (0..shard.len)
                .map(|i| (shard.head + i) % shard.capacity)
                .filter(|&p| {
                    shard
                        .slot(p)
                        .is_some_and(|e| e.key.corp == corp && e.media.is(media_id))
                })
                .collect();
            for pos in doomed {
                shard.remove(&self.hasher, pos);
            }
        }
    }

    /// Live and emptied slots held, over all shards.
    #[cfg(test)]
    fn slots_in_use(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len).sum()
    }
}

#[cfg(test)]
mod tests;

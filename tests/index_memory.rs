//! What the in-memory dedupe index costs per entry, at a million entries: the figure behind
//! `dedupe::compact::BYTES_PER_ENTRY` (150), which the start-up check multiplies by
//! `max_entries` against the container's memory limit. Each kind of mediaId is measured in a
//! fresh process (this test runs itself again), so the resident size moves with the index
//! alone: what a pod's memory limit sees, allocator overhead included.

use std::process::Command;
use std::time::{Duration, SystemTime};

use fxgate::clock::SystemClock;
use fxgate::dedupe::{DedupeKey, DedupeStore, MediaRef, MemoryStore};

fn rss_bytes() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: i64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

const N: u32 = 1_000_000;

/// Resident bytes per entry after filling an index with a million.
async fn fill(media_id: impl Fn(u32) -> String) -> f64 {
    let ttl = Duration::from_secs(72 * 3600);
    let rss0 = rss_bytes();
    let store = MemoryStore::new(ttl, u64::from(N), SystemClock::shared());
    let holders = vec!["billing".to_string()];
    for n in 0..N {
        let mut sha256 = [0u8; 32];
        sha256[..4].copy_from_slice(&n.to_le_bytes());
        sha256[4..8].copy_from_slice(&n.wrapping_mul(2_654_435_761).to_le_bytes());
        let key = DedupeKey {
            corp: "default".into(),
            route: "message",
            sha256,
            filename: None,
        };
        let value = MediaRef {
            media_id: media_id(n),
            size: 10_240,
            content_type: "image/jpeg".into(),
            created_at: SystemTime::now(),
            caller: "billing".into(),
            holders: holders.clone(),
        };
        store
            .put(key, value)
            .await
            .expect("the memory index never fails");
    }
    let per_entry = (rss_bytes() - rss0) as f64 / f64::from(N);
    drop(store);
    per_entry
}

const VARIANT: &str = "FXGATE_INDEX_MEMORY_VARIANT";

#[tokio::test]
async fn a_million_entries_cost_at_most_150_bytes_each() {
    match std::env::var(VARIANT).as_deref() {
        // The sandbox's kind of mediaId: 32 hex digits, kept inline.
        Ok("hex") => {
            let b = fill(|n| format!("{:032x}", u128::from(n) * 0x9e37_79b9)).await;
            println!("bytes/entry {b:.1}");
        }
        // Any other (40 characters here): kept boxed.
        Ok("other") => {
            let b = fill(|n| format!("N_{n:038}")).await;
            println!("bytes/entry {b:.1}");
        }
        _ => {
            for variant in ["hex", "other"] {
                let out = Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--exact",
                        "a_million_entries_cost_at_most_150_bytes_each",
                        "--nocapture",
                    ])
                    .env(VARIANT, variant)
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success(),
                    "{text}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let bytes: f64 = text
                    .split("bytes/entry ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no figure in {text}"));
                println!("{variant} mediaIds: {bytes:.1} bytes/entry resident at 1 M entries");
                assert!(bytes <= 150.0, "{variant}: {bytes:.1} bytes/entry");
            }
        }
    }
}

use super::*;

fn sha(n: u32) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..4].copy_from_slice(&n.to_le_bytes());
    Sha256::digest(s).into()
}

fn media(n: u32) -> String {
    format!("{n:032x}")
}

fn key(corp: &str, route: &'static str, n: u32, filename: Option<&str>) -> DedupeKey {
    DedupeKey {
        corp: corp.into(),
        route,
        sha256: sha(n),
        filename: filename.map(Into::into),
    }
}

/// What `caller` uploaded at `created_ms`.
fn value(media_id: &str, size: u64, content_type: &str, created_ms: u64, caller: &str) -> MediaRef {
    MediaRef {
        media_id: media_id.into(),
        size,
        content_type: content_type.into(),
        created_at: UNIX_EPOCH + Duration::from_millis(created_ms),
        caller: caller.into(),
        holders: vec![caller.into()],
    }
}

fn put(ix: &CompactIndex, n: u32, now: u64) {
    let v = value(&media(n), u64::from(n), "image/png", now, "up");
    ix.put(&key("corp", "message", n, None), &v, now);
}

fn get(ix: &CompactIndex, n: u32, now: u64) -> Option<MediaRef> {
    ix.get(&ix.key(&key("corp", "message", n, None))?, now)
}

#[test]
fn entries_come_back_whole_until_their_ttl() {
    let ix = CompactIndex::new(100, 1_000);
    put(&ix, 1, 5_000);
    let found = get(&ix, 1, 5_999).expect("live");
    assert_eq!(
        found,
        MediaRef {
            media_id: media(1),
            size: 1,
            content_type: "image/png".into(),
            created_at: UNIX_EPOCH + Duration::from_millis(5_000),
            caller: "up".into(),
            holders: vec!["up".into()],
        }
    );
    assert_eq!(get(&ix, 1, 6_000), None, "at its ttl it is gone");
    assert_eq!(get(&ix, 2, 5_000), None);
    assert!(ix.key(&key("other-corp", "message", 1, None)).is_none());
}

#[test]
fn at_capacity_the_oldest_go_first_and_the_table_stays_consistent_across_many_wraps() {
    // 16 shards of 4 slots: capacity 64. Ten times round.
    let ix = CompactIndex::new(64, u64::MAX);
    for n in 0..640 {
        put(&ix, n, u64::from(n));
    }
    assert_eq!(ix.slots_in_use(), 64);
    let live: Vec<u32> = (0..640).filter(|n| get(&ix, *n, 640).is_some()).collect();
    // Every shard (~40 keys each) is full with its four newest.
    assert_eq!(live.len(), 64);
    assert!(live.contains(&639) && !live.contains(&0));
    for n in &live {
        assert_eq!(get(&ix, *n, 640).map(|f| f.size), Some(u64::from(*n)));
    }
}

fn entry(n: u32, created_ms: u64) -> Entry {
    Entry {
        key: Key {
            corp: 0,
            route: 0,
            file: sha(n),
        },
        media: MediaId::new(&media(n)),
        size: 0,
        created_ms,
        content_type: 0,
        caller: 0,
        more_holders: None,
    }
}

fn shard_push(shard: &mut Shard, h: &RandomState, n: u32, created_ms: u64, ttl: u64) {
    let e = entry(n, created_ms);
    shard.push(h, h.hash_one(e.key), e, created_ms.checked_sub(ttl));
}

fn shard_has(shard: &Shard, h: &RandomState, n: u32) -> bool {
    let key = entry(n, 0).key;
    shard.find(h.hash_one(key), &key).is_some()
}

#[test]
fn a_full_shard_drops_its_oldest_and_expired_ones_make_room_first() {
    let h = RandomState::new();
    let mut shard = Shard::new(4);
    for n in 0..4 {
        shard_push(&mut shard, &h, n, 10 * u64::from(n), 1_000);
    }
    shard_push(&mut shard, &h, 4, 40, 1_000);
    assert!(!shard_has(&shard, &h, 0), "the oldest went");
    assert!((1..=4).all(|n| shard_has(&shard, &h, n)));
    // At 1 025 the entries made at 10 and 20 are past a ttl of 1 000: both leave, and the
    // newcomer does not push out the live ones at 30 and 40.
    shard_push(&mut shard, &h, 5, 1_025, 1_000);
    assert_eq!(shard.len, 3);
    assert!([3, 4, 5].iter().all(|n| shard_has(&shard, &h, *n)));
    assert!(![1, 2].iter().any(|n| shard_has(&shard, &h, *n)));
}

/// While the clock is younger than the TTL nothing has expired, an entry made at 0 included
/// (a saturated `now - ttl` of 0 once made the next push drop it while `get` still served it;
/// `documents_are_told_apart_by_filename` failed whenever its two keys shared a shard).
#[test]
fn before_the_ttl_has_ever_passed_no_entry_is_taken_for_expired() {
    let h = RandomState::new();
    let mut shard = Shard::new(4);
    shard_push(&mut shard, &h, 1, 0, u64::MAX);
    shard_push(&mut shard, &h, 2, 0, u64::MAX);
    assert!(shard_has(&shard, &h, 1) && shard_has(&shard, &h, 2));
}

#[test]
fn a_replaced_entry_is_found_once_with_its_new_value() {
    let ix = CompactIndex::new(64, u64::MAX);
    put(&ix, 7, 1);
    let v = value("N_not-hex-media-id/with.dots", 9, "application/pdf", 2, "b");
    ix.put(&key("corp", "message", 7, None), &v, 2);
    let found = get(&ix, 7, 3).expect("live");
    assert_eq!(found.media_id, "N_not-hex-media-id/with.dots");
    assert_eq!((found.size, found.caller.as_str()), (9, "b"));
    // The old slot was emptied and, being at the front, reused.
    assert_eq!(ix.slots_in_use(), 1);
}

#[test]
fn documents_are_told_apart_by_filename() {
    let ix = CompactIndex::new(64, u64::MAX);
    for (name, id) in [("a.pdf", "1"), ("b.pdf", "2")] {
        let v = value(id, 1, "application/pdf", 0, "up");
        ix.put(&key("corp", "document", 1, Some(name)), &v, 0);
    }
    let id = |name| {
        ix.get(&ix.key(&key("corp", "document", 1, Some(name))).unwrap(), 0)
            .map(|f| f.media_id)
    };
    assert_eq!(id("a.pdf").as_deref(), Some("1"));
    assert_eq!(id("b.pdf").as_deref(), Some("2"));
    assert_eq!(id("c.pdf"), None);
}

#[test]
fn holders_are_added_once_only_for_the_same_media_id_and_bounded() {
    let ix = CompactIndex::new(64, u64::MAX);
    put(&ix, 1, 0);
    let key = ix.key(&key("corp", "message", 1, None)).unwrap();
    ix.add_holder(&key, &media(1), "second");
    ix.add_holder(&key, &media(1), "second");
    ix.add_holder(&key, &media(1), "up");
    ix.add_holder(&key, &media(2), "stale");
    assert_eq!(get(&ix, 1, 0).unwrap().holders, ["up", "second"]);
    for n in 0..100 {
        ix.add_holder(&key, &media(1), &format!("c{n}"));
    }
    assert_eq!(get(&ix, 1, 0).unwrap().holders.len(), MAX_HOLDERS);
}

#[test]
fn forgetting_a_media_id_removes_every_entry_pointing_at_it_in_that_corp_only() {
    let ix = CompactIndex::new(64, u64::MAX);
    put(&ix, 1, 0);
    put(&ix, 2, 0);
    ix.forget_media("corp", &media(1));
    ix.forget_media("no-such-corp", &media(2));
    assert_eq!(get(&ix, 1, 0), None);
    assert!(get(&ix, 2, 0).is_some());
    // A re-upload after the delete is recorded again.
    put(&ix, 1, 1);
    assert!(get(&ix, 1, 1).is_some());
}

#[test]
fn media_ids_of_any_length_and_content_come_back_as_they_went_in() {
    for id in [
        "",
        "a",
        &"x".repeat(47),
        &"y".repeat(48),
        "with\0nul",
        "中文-id",
        &media(3),
    ] {
        let m = MediaId::new(id);
        assert_eq!(m.text(), id);
        assert!(m.is(id) && !m.is("other"));
    }
}

#[test]
fn an_entry_is_at_most_the_size_the_memory_figure_assumes() {
    // The table adds 5 bytes a bucket (measured with it at 1 M entries in
    // tests/index_memory.rs).
    assert!(std::mem::size_of::<Option<Entry>>() <= 112);
}

use super::*;

fn sha(n: u32) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..4].copy_from_slice(&n.to_le_bytes());
    Sha256::digest(s).into()
}

fn media(n: u32) -> String {
    format!("{n:032x}")
}

fn put(ix: &CompactIndex, n: u32, now: u64) {
    let id = media(n);
    let holders = ["up".to_string()];
    let rec = Record {
        media_id: &id,
        size: u64::from(n),
        content_type: "image/png",
        created_ms: now,
        caller: "up",
        holders: &holders,
    };
    ix.put("corp", "message", &sha(n), None, &rec, now);
}

fn get(ix: &CompactIndex, n: u32, now: u64) -> Option<Found> {
    ix.get(&ix.key("corp", "message", &sha(n), None)?, now)
}

#[test]
fn entries_come_back_whole_until_their_ttl() {
    let ix = CompactIndex::new(100, 1_000);
    put(&ix, 1, 5_000);
    let found = get(&ix, 1, 5_999).expect("live");
    assert_eq!(
        found,
        Found {
            media_id: media(1),
            size: 1,
            content_type: "image/png".into(),
            created_ms: 5_000,
            caller: "up".into(),
            holders: vec!["up".into()],
        }
    );
    assert_eq!(get(&ix, 1, 6_000), None, "at its ttl it is gone");
    assert_eq!(get(&ix, 2, 5_000), None);
    assert!(ix.key("other-corp", "message", &sha(1), None).is_none());
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
    shard.push(h, h.hash_one(e.key), e, created_ms.saturating_sub(ttl));
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

#[test]
fn a_replaced_entry_is_found_once_with_its_new_value() {
    let ix = CompactIndex::new(64, u64::MAX);
    put(&ix, 7, 1);
    let holders = ["b".to_string()];
    let rec = Record {
        media_id: "N_not-hex-media-id/with.dots",
        size: 9,
        content_type: "application/pdf",
        created_ms: 2,
        caller: "b",
        holders: &holders,
    };
    ix.put("corp", "message", &sha(7), None, &rec, 2);
    let found = get(&ix, 7, 3).expect("live");
    assert_eq!(found.media_id, "N_not-hex-media-id/with.dots");
    assert_eq!((found.size, found.caller.as_str()), (9, "b"));
    // The old slot was emptied and, being at the front, reused.
    assert_eq!(ix.slots_in_use(), 1);
}

#[test]
fn documents_are_told_apart_by_filename() {
    let ix = CompactIndex::new(64, u64::MAX);
    let holders = ["up".to_string()];
    for (name, id) in [("a.pdf", "1"), ("b.pdf", "2")] {
        let rec = Record {
            media_id: id,
            size: 1,
            content_type: "application/pdf",
            created_ms: 0,
            caller: "up",
            holders: &holders,
        };
        ix.put("corp", "document", &sha(1), Some(name), &rec, 0);
    }
    let id = |name| {
        ix.get(&ix.key("corp", "document", &sha(1), Some(name)).unwrap(), 0)
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
    let key = ix.key("corp", "message", &sha(1), None).unwrap();
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

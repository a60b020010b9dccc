//! Several fxgate processes sharing one real `redis-server` (`[store] backend = "redis"`):
//! one token for all, one dedupe index, global quotas and upstream budget, and what happens
//! when Redis dies and comes back. Every process runs on loopback; Redis on a free port.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// Two gateways on one sandbox and one Redis, failing `modes`, each config after `edit`.
fn replicas(
    sandbox: &Sandbox,
    redis: &RedisServer,
    modes: [&str; 2],
    edit: impl Fn(&mut FileConfig),
) -> (Gateway, Gateway) {
    let spawn = |mode: &str| {
        Gateway::spawn(&standard(&sandbox.url).with(|c| {
            c.store = redis_store(redis, mode);
            edit(c);
        }))
    };
    (spawn(modes[0]), spawn(modes[1]))
}

/// `n` concurrent multipart uploads of distinct `len`-byte files by `key`, alternating between
/// the replicas; answers in order.
async fn spread_uploads(
    a: &Gateway,
    b: &Gateway,
    n: u32,
    key: &'static str,
    len: usize,
) -> Vec<(u16, reqwest::header::HeaderMap, serde_json::Value)> {
    let http = client();
    let tasks = (0..n).map(|i| {
        let http = http.clone();
        let url = if i % 2 == 0 {
            a.upload_url()
        } else {
            b.upload_url()
        };
        tokio::spawn(async move {
            upload_multipart(&http, &url, key, unique_jpeg(len, i), "f.jpg").await
        })
    });
    futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

/// A raw upload to the message route, optionally claiming its digest; (status, JSON).
async fn upload(
    http: &reqwest::Client,
    gw: &Gateway,
    key: &str,
    bytes: &[u8],
    claim: bool,
) -> (u16, serde_json::Value) {
    let mut req = http
        .post(format!("{}?filename=f.jpg", gw.upload_url()))
        .bearer_auth(key)
        .header("content-type", "image/jpeg")
        .body(bytes.to_vec());
    if claim {
        req = req.header("repr-digest", repr_digest(bytes));
    }
    // No request may hang on a dead Redis: each one is bounded here.
    let resp = tokio::time::timeout(Duration::from_secs(10), req.send())
        .await
        .expect("request answered within 10 s")
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_start_of_two_replicas_with_500_uploads_makes_one_token_call() {
    let redis = RedisServer::start();
    // A slow token endpoint keeps the first fetch in flight while both replicas want one.
    let sandbox = Sandbox::spawn(&["--token-latency", "1500ms"]);
    let (a, b) = replicas(&sandbox, &redis, ["open", "open"], |_| {});
    for (status, _, body) in spread_uploads(&a, &b, 500, ALPHA_KEY, 2000).await {
        assert_eq!((status, &body["errorCode"]), (200, &0.into()), "{body}");
    }
    let stats = sandbox.stats().await;
    assert_eq!(stats["token_calls"], 1, "{stats}");
    assert_eq!(stats["token_rejected_concurrent"], 0, "{stats}");
    assert_eq!(stats["uploads_completed"], 500, "{stats}");
    // One replica fetched, the other took the token over from Redis.
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    let fetched = |m: &str| {
        metric(
            m,
            r#"fxgate_token_refresh_total{corp="default",flow="legacy",result="ok"}"#,
        )
    };
    let shared = |m: &str| {
        metric(
            m,
            r#"fxgate_token_refresh_total{corp="default",flow="legacy",result="shared"}"#,
        )
    };
    assert_eq!(fetched(&ma) + fetched(&mb), 1.0);
    assert_eq!(shared(&ma) + shared(&mb), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_uploaded_through_one_replica_dedupes_on_the_other() {
    let redis = RedisServer::start();
    let sandbox = Sandbox::spawn(&[]);
    let (a, b) = replicas(&sandbox, &redis, ["open", "open"], |_| {});
    let http = client();

    // Streamed through A, then sent again through B: a stream hit on B.
    let file = jpeg(40_000, 7);
    let (_, first) = upload(&http, &a, ALPHA_KEY, &file, false).await;
    assert_eq!(first["deduplicated"], false, "{first}");
    let (_, again) = upload(&http, &b, ALPHA_KEY, &file, false).await;
    assert_eq!(again["deduplicated"], true, "{again}");
    assert_eq!(again["mediaId"], first["mediaId"]);
    // A digest claim on B finds A's entry before the body is read.
    let (_, claimed) = upload(&http, &b, ALPHA_KEY, &file, true).await;
    assert_eq!(claimed["deduplicated"], true, "{claimed}");
    assert_eq!(sandbox.stats().await["uploads_completed"], 1);

    // A delete through B evicts the entry A made.
    let del: serde_json::Value = http
        .post(format!("{}/media/delete", b.url))
        .bearer_auth(ALPHA_KEY)
        .json(&serde_json::json!({"mediaId": first["mediaId"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(del["errorCode"], 0, "{del}");
    let (_, after) = upload(&http, &a, ALPHA_KEY, &file, false).await;
    assert_eq!(after["deduplicated"], false, "{after}");
    assert_ne!(after["mediaId"], first["mediaId"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_of_one_file_on_two_replicas_go_upstream_once() {
    let redis = RedisServer::start();
    let sandbox = Sandbox::spawn(&[]);
    let (a, b) = replicas(&sandbox, &redis, ["open", "open"], |_| {});
    // Slow Fxiaoke, so every claim arrives while the first upload is still running.
    sandbox
        .faults(Faults {
            upload_delay: Duration::from_millis(700),
            ..Faults::default()
        })
        .await;
    let http = client();
    let file = jpeg(60_000, 99);
    let tasks = (0..20).map(|i| {
        let (http, file) = (http.clone(), file.clone());
        let url = if i % 2 == 0 {
            a.upload_url()
        } else {
            b.upload_url()
        };
        tokio::spawn(async move { claim_upload(&http, &url, ALPHA_KEY, file).await })
    });
    let answers: Vec<serde_json::Value> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let ids: std::collections::HashSet<String> = answers
        .iter()
        .map(|a| {
            a["mediaId"]
                .as_str()
                .unwrap_or_else(|| panic!("{a}"))
                .into()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    let stats = sandbox.stats().await;
    assert_eq!(stats["upload_requests"], 1, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_limited_to_100_a_minute_gets_100_across_both_replicas() {
    let redis = RedisServer::start();
    let sandbox = Sandbox::spawn(&[]);
    let (a, b) = replicas(&sandbox, &redis, ["open", "open"], |c| {
        c.add([ClientFile {
            requests_per_minute: Some(100),
            ..gamma()
        }])
    });
    let started = Instant::now();
    let mut ok = 0;
    let mut limited = 0;
    for (status, headers, body) in spread_uploads(&a, &b, 200, GAMMA_KEY, 1000).await {
        match status {
            200 => ok += 1,
            429 => {
                assert_eq!(body["errorCode"], 942901, "{body}");
                assert!(headers.contains_key("retry-after"));
                limited += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    // GCRA lets 100 through at once, then one per 0.6 s: the run's length bounds the extra.
    let refill = (started.elapsed().as_secs_f64() / 0.6).floor() as i32;
    assert!(
        (100..=100 + refill.max(2)).contains(&ok),
        "{ok} passed, {limited} limited in {:?}",
        started.elapsed()
    );
    assert_eq!(ok + limited, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_upload_slots_are_shared_by_the_replicas() {
    let redis = RedisServer::start();
    let sandbox = Sandbox::spawn(&[]);
    let (a, b) = replicas(&sandbox, &redis, ["open", "open"], |c| {
        c.add([ClientFile {
            max_concurrent_uploads: Some(2),
            ..gamma()
        }])
    });
    // Two slow uploads, one per replica, hold both slots...
    sandbox
        .faults(Faults {
            upload_delay: Duration::from_millis(3000),
            ..Faults::default()
        })
        .await;
    let http = client();
    let slow = [&a, &b].map(|gw| {
        let (http, url) = (http.clone(), gw.upload_url());
        tokio::spawn(async move {
            upload_multipart(
                &http,
                &url,
                GAMMA_KEY,
                unique_jpeg(1000, rand_seed()),
                "s.jpg",
            )
            .await
        })
    });
    sandbox.wait("upload_requests", 2).await;
    // ...so a third, on either replica, is refused.
    let (status, _, body) = upload_multipart(
        &http,
        &a.upload_url(),
        GAMMA_KEY,
        unique_jpeg(1000, 3),
        "t.jpg",
    )
    .await;
    assert_eq!(
        (status, &body["errorCode"]),
        (429, &942901.into()),
        "{body}"
    );
    for t in slow {
        assert_eq!(t.await.unwrap().0, 200);
    }
    // Released: the next one passes.
    sandbox
        .faults(Faults {
            upload_delay: Duration::from_millis(0),
            ..Faults::default()
        })
        .await;
    let (status, _, body) = upload_multipart(
        &http,
        &b.upload_url(),
        GAMMA_KEY,
        unique_jpeg(1000, 4),
        "u.jpg",
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

fn rand_seed() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_corp_upstream_budget_holds_across_replicas() {
    let redis = RedisServer::start();
    let sandbox = Sandbox::spawn(&[]);
    let (a, b) = replicas(&sandbox, &redis, ["open", "open"], |c| {
        c.corp().upstream_requests_per_20s = Some(10);
        c.corp().daily_call_budget = Some(1000);
    });
    let http = client();
    let mut passed = 0;
    for i in 0..20u32 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let (status, _, body) = upload_multipart(
            &http,
            &gw.upload_url(),
            ALPHA_KEY,
            unique_jpeg(500, i),
            "b.jpg",
        )
        .await;
        match status {
            200 => passed += 1,
            429 => assert_eq!(body["errorCode"], 942902, "{body}"),
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(passed, 10, "10 per 20 s for the corp, not per replica");
    assert_eq!(sandbox.stats().await["uploads_completed"], 10);
    // Both replicas report the shared daily budget.
    let left = |m: &str| metric(m, r#"fxgate_upstream_budget_remaining{corp="default"}"#);
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    assert_eq!(left(&ma).min(left(&mb)), 990.0, "{}", left(&ma));
}

/// Many calls at once on two replicas: never more than the window's limit go upstream, and
/// the log holds exactly the calls made, today's count too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_on_two_replicas_never_passes_the_corps_window_and_the_log_holds_the_calls_made() {
    let redis = RedisServer::start();
    let sandbox = Sandbox::spawn(&[]);
    let (a, b) = replicas(&sandbox, &redis, ["closed", "closed"], |c| {
        c.corp().upstream_requests_per_20s = Some(10);
        c.corp().daily_call_budget = Some(1000);
    });
    let answers = spread_uploads(&a, &b, 40, ALPHA_KEY, 500).await;
    let passed = answers.iter().filter(|(s, _, _)| *s == 200).count();
    for (status, _, body) in &answers {
        assert!(
            *status == 200 || (*status == 429 && body["errorCode"] == 942902),
            "{status}: {body}"
        );
    }
    assert!((1..=10).contains(&passed), "{passed} passed a window of 10");
    assert_eq!(sandbox.stats().await["uploads_completed"], passed as u64);
    let logs = redis.cli(&["--scan", "--pattern", "*:budget:*upload*"]);
    let log = logs.lines().next().expect("the window's log");
    assert_eq!(
        redis.cli(&["ZCARD", log]).trim(),
        passed.to_string(),
        "{log}"
    );
    let days = redis.cli(&["--scan", "--pattern", "*:budget-daily:*"]);
    let day = days.lines().next().expect("today's count");
    assert_eq!(redis.cli(&["GET", day]).trim(), passed.to_string(), "{day}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_follows_the_fail_modes_and_sharing_resumes_when_it_returns() {
    let mut redis = RedisServer::start();
    let sandbox = Sandbox::spawn(&[]);
    // A fails open, B fails closed; both limit gamma's rate.
    let (a, b) = replicas(&sandbox, &redis, ["open", "closed"], |c| {
        c.add([ClientFile {
            requests_per_minute: Some(1000),
            ..gamma()
        }])
    });
    let http = client();
    let (s, _) = upload(&http, &a, GAMMA_KEY, &unique_jpeg(800, 1), false).await;
    assert_eq!(s, 200);

    redis.kill();
    // Open: uploads go on (a fresh file, and a repeat that simply misses the index).
    let file = unique_jpeg(800, 2);
    for _ in 0..2 {
        let (status, body) = upload(&http, &a, GAMMA_KEY, &file, true).await;
        assert_eq!((status, &body["errorCode"]), (200, &0.into()), "{body}");
    }
    // Closed: a clear 429, quickly, never a hang.
    let t = Instant::now();
    let (status, body) = upload(&http, &b, GAMMA_KEY, &unique_jpeg(800, 3), false).await;
    assert_eq!(
        (status, &body["errorCode"]),
        (429, &942903.into()),
        "{body}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // The corp's upstream budget is a quota too: closed means closed for every caller.
    let (status, body) = upload(&http, &b, ALPHA_KEY, &unique_jpeg(800, 4), false).await;
    assert_eq!(
        (status, &body["errorCode"]),
        (429, &942903.into()),
        "{body}"
    );
    // Visible: metrics and /readyz (200 where the gateway still serves: A fails open; B, which
    // fails closed, needs the store and is not ready).
    let m = a.metrics().await;
    assert_eq!(metric(&m, "fxgate_store_up"), 0.0);
    let errors: f64 = m
        .lines()
        .filter(|l| l.starts_with("fxgate_store_errors_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(errors >= 1.0, "{m}");
    let ready = reqwest::get(format!("{}/readyz?verbose", a.admin))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert!(ready.text().await.unwrap().contains("store redis: down"));
    let unready = reqwest::get(format!("{}/readyz", b.admin)).await.unwrap();
    assert_eq!(unready.status(), 503);
    assert!(unready.text().await.unwrap().contains("FAIL store"));

    // Back: both replicas reconnect by themselves and share again.
    redis.restart();
    for gw in [&a, &b] {
        gw.until_store_ok().await;
    }
    let shared = unique_jpeg(900, 5);
    let (status, first) = upload(&http, &b, GAMMA_KEY, &shared, false).await;
    assert_eq!(status, 200, "{first}");
    let (_, hit) = upload(&http, &a, GAMMA_KEY, &shared, true).await;
    assert_eq!(hit["deduplicated"], true, "{hit}");
    assert_eq!(hit["mediaId"], first["mediaId"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_dying_mid_refresh_blocks_the_others_only_until_its_lease_lapses() {
    let redis = RedisServer::start();
    // Leases of 1 s; the token call takes 0.5 s, and the replica holding the lease is killed
    // during it. (The call must end before the lease can lapse, at least 2/3 s after the kill,
    // or the sandbox would rightly see two concurrent calls.)
    let sandbox = Sandbox::spawn(&["--token-latency", "500ms"]);
    let cfg = standard(&sandbox.url).with(|c| {
        c.store = StoreFile {
            lease_ttl: some("1s"),
            ..redis_store(&redis, "open")
        }
    });
    let a = Gateway::spawn(&cfg);
    sandbox.wait("token_calls", 1).await;
    drop(a); // SIGKILL, lease held
    let started = Instant::now();
    let b = Gateway::spawn(&cfg);
    let http = client();
    let (status, _, body) = upload_multipart(
        &http,
        &b.upload_url(),
        ALPHA_KEY,
        unique_jpeg(700, 1),
        "l.jpg",
    )
    .await;
    // B waited for the lease (at most 1 s) rather than calling concurrently, then fetched.
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["errorCode"], 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let stats = sandbox.stats().await;
    assert_eq!(stats["token_rejected_concurrent"], 0, "{stats}");
    assert_eq!(stats["token_calls"], 2, "{stats}");
}

#[tokio::test]
async fn a_stale_token_written_late_does_not_replace_a_newer_one() {
    use fxgate::upstream::token::redis::RedisTokens;
    use fxgate::upstream::token::store::{StoredToken, TokenStore as _};
    let redis = RedisServer::start();
    let cfg = fixture::load(
        &standard("http://127.0.0.1:9").with(|c| c.store = redis_store(&redis, "open")),
    );
    let registry = prometheus::Registry::new();
    let metrics = fxgate::metrics::Metrics::register(&registry).unwrap();
    let store = fxgate::store::Redis::start(&cfg.store, metrics, 1)
        .await
        .unwrap();
    let clock = fxgate::clock::SystemClock::shared();
    let now = clock.unix_ms();
    let shared = RedisTokens::new(store, "default", "legacy", clock, cfg.store.lease_ttl);
    let token = |name: &str, issued_ms: u64| StoredToken {
        token: name.into(),
        corp_id: "corp".into(),
        issued_ms,
        expires_ms: now + 7_200_000,
    };
    assert!(shared.write_if_newer(&token("newer", now)).await.unwrap());
    // A fetch that started earlier but finished later must not win.
    assert!(!shared
        .write_if_newer(&token("older", now - 5_000))
        .await
        .unwrap());
    assert_eq!(shared.read().await.unwrap().unwrap().token, "newer");
    assert!(shared
        .write_if_newer(&token("newest", now + 1))
        .await
        .unwrap());
    assert_eq!(shared.read().await.unwrap().unwrap().token, "newest");
}

#[tokio::test]
async fn an_fxg_token_issued_by_one_replica_is_accepted_by_the_other() {
    let sandbox = Sandbox::spawn(&[]);
    let redis = RedisServer::start();
    let (a, b) = replicas(&sandbox, &redis, ["open", "open"], |_| {});
    // An unmodified SDK fetches its token from A (`appId` = caller name, `appSecret` = key).
    let sdk = support::sdk::FxiaokeSdk::new(&a.url, "alpha", ALPHA_KEY, "any");
    let (token, corp_id) = sdk.token().await;
    assert!(token.starts_with("fxg_"));
    // …and B, which never issued it, takes it in the query (the seed's curl form)…
    let http = client();
    let part = reqwest::multipart::Part::bytes(jpeg(2000, 9))
        .file_name("b.jpg")
        .mime_str("image/jpeg")
        .unwrap();
    let url = format!(
        "{}/media/upload/message?corpAccessToken={token}&corpId={corp_id}",
        b.url
    );
    let r = http
        .post(url)
        .multipart(reqwest::multipart::Form::new().part("media", part))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let up: serde_json::Value = r.json().await.unwrap();
    assert_eq!(up["errorCode"], 0, "{up}");
    // …and in a JSON body.
    let r: serde_json::Value = http
        .post(format!("{}/media/delete", b.url))
        .json(&serde_json::json!({"corpAccessToken": token, "corpId": corp_id, "mediaId": up["mediaId"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["errorCode"], 0, "{r}");
    assert_eq!(sandbox.stats().await["deletes"], 1);
}

#[tokio::test]
async fn the_oauth_token_is_fetched_once_for_all_replicas() {
    let sandbox = Sandbox::spawn(&[]);
    let redis = RedisServer::start();
    let (a, b) = replicas(&sandbox, &redis, ["open", "open"], |c| {
        c.add([ClientFile {
            api_style: some("oauth"),
            act_as: Some(vec!["1000".into()]),
            ..caller("oauth", GAMMA_KEY)
        }])
    });
    let query = serde_json::json!({"data": {"dataObjectApiName": "AccountObj"}});
    for gw in [&a, &b, &a, &b] {
        let r: serde_json::Value = client()
            .post(format!("{}/cgi/crm/v2/data/query", gw.url))
            .bearer_auth(GAMMA_KEY)
            .json(&query)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["errorCode"], 0, "{r}");
    }
    let stats = sandbox.stats().await;
    assert_eq!(stats["oauth_token_calls"], 1, "{stats}");
    let shared = r#"fxgate_token_refresh_total{corp="default",flow="oauth",result="shared"}"#;
    assert_eq!(metric(&b.metrics().await, shared), 1.0);
}

/// Sixteen callers recorded as holders at once, all from the same read of the entry (as
/// sixteen concurrent stream hits do), are all kept; a holder recorded after a delete does
/// not bring the entry back.
async fn holders_are_added_in_one_step(store: std::sync::Arc<dyn fxgate::dedupe::DedupeStore>) {
    use fxgate::dedupe::{Dedupe, DedupeKey, MediaRef};
    let dedupe = Dedupe::over(store, fxgate::config::ClaimScope::Client);
    let key = |n: u8| DedupeKey {
        corp: "default".into(),
        route: "message",
        sha256: [n; 32],
        filename: None,
    };
    let entry = |id: &str| MediaRef {
        media_id: id.into(),
        size: 10,
        content_type: "image/jpeg".into(),
        created_at: std::time::SystemTime::now(),
        caller: "up".into(),
        holders: vec!["up".into()],
    };
    dedupe.store.put(key(1), entry("m1")).await.unwrap();
    let read = dedupe.store.get(&key(1)).await.unwrap().expect("recorded");
    let callers: Vec<String> = (0..16).map(|i| format!("caller{i}")).collect();
    let k1 = key(1);
    futures_util::future::join_all(callers.iter().map(|c| dedupe.add_holder(&k1, &read, c))).await;
    let holders = dedupe
        .store
        .get(&key(1))
        .await
        .unwrap()
        .expect("kept")
        .holders;
    assert_eq!(holders.len(), 17, "{holders:?}");
    assert!(callers.iter().all(|c| holders.contains(c)), "{holders:?}");

    dedupe.store.put(key(2), entry("m2")).await.unwrap();
    let read = dedupe.store.get(&key(2)).await.unwrap().expect("recorded");
    dedupe.store.forget_media("default", "m2").await.unwrap();
    dedupe.add_holder(&key(2), &read, "late").await;
    assert!(
        dedupe.store.get(&key(2)).await.unwrap().is_none(),
        "deleted entry resurrected"
    );
}

#[tokio::test]
async fn dedupe_holders_are_added_in_one_step_and_a_delete_stays_a_delete() {
    use std::sync::Arc;
    let ttl = Duration::from_secs(600);
    let clock = fxgate::clock::SystemClock::shared();
    holders_are_added_in_one_step(Arc::new(fxgate::dedupe::MemoryStore::new(ttl, 100, clock)))
        .await;

    let redis = RedisServer::start();
    let cfg = fixture::load(
        &standard("http://127.0.0.1:9").with(|c| c.store = redis_store(&redis, "open")),
    );
    let metrics = fxgate::metrics::Metrics::register(&prometheus::Registry::new()).unwrap();
    let store = fxgate::store::Redis::start(&cfg.store, metrics, 1)
        .await
        .unwrap();
    let shared = fxgate::dedupe::redis::RedisStore::new(store, ttl, Duration::from_secs(30));
    holders_are_added_in_one_step(Arc::new(shared)).await;
}

/// What one dedupe entry costs in Redis, by Redis' own `MEMORY USAGE` (README figure): the
/// entry (JSON value, TTL) and its reverse key by mediaId (for deletes).
#[tokio::test]
async fn a_dedupe_entry_in_redis_is_two_keys_of_bounded_size() {
    let redis = RedisServer::start();
    let (_sandbox, gw) = pair(&[], |c| c.store = redis_store(&redis, "open"));
    let http = client();
    const FILES: u32 = 100;
    for n in 0..FILES {
        let (status, _, body) = upload_multipart(
            &http,
            &gw.upload_url(),
            ALPHA_KEY,
            unique_jpeg(1000, n),
            "a.jpg",
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (mut entries, mut by_media, mut bytes) = (0u64, 0u64, 0u64);
    for k in &keys {
        let kind = if k.contains(":dedupe:") {
            &mut entries
        } else if k.contains(":media:") {
            &mut by_media
        } else {
            continue;
        };
        *kind += 1;
        let used: u64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        bytes += used;
    }
    assert_eq!(
        (entries, by_media),
        (u64::from(FILES), u64::from(FILES)),
        "{keys:?}"
    );
    let per_entry = bytes / entries;
    println!("redis: {per_entry} bytes per dedupe entry (MEMORY USAGE of both keys)");
    assert!(per_entry <= 600, "{per_entry} bytes per entry");
}

/// Round trips to Redis by `store` and `op` so far.
fn store_calls(scrape: &str, store: &str, op: &str) -> f64 {
    metric(
        scrape,
        &format!(r#"fxgate_store_calls_total{{op="{op}",store="{store}"}}"#),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_serving_thread_reaches_redis_and_an_upload_costs_two_round_trips_a_hit_one() {
    let redis = RedisServer::start();
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(&standard(&sandbox.url).with(|c| {
        c.store = redis_store(&redis, "closed");
        c.server.workers = Some(4);
    }));
    // Many connections, so that every one of the four threads serves some (the kernel spreads
    // them by hash): each thread opens its own Redis connection on first use.
    for (status, _, body) in spread_uploads(&gw, &gw, 64, ALPHA_KEY, 2000).await {
        assert_eq!((status, &body["errorCode"]), (200, &0.into()), "{body}");
    }
    assert_eq!(sandbox.stats().await["uploads_completed"], 64);

    let http = client();
    // Round trips between two scrapes; the supervisor's probe may land in between, nothing
    // else may.
    let trips = |from: &str, to: &str| -> f64 {
        let total = |m: &str| -> f64 {
            m.lines()
                .filter(|l| l.starts_with("fxgate_store_calls_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let probes = store_calls(to, "store", "probe") - store_calls(from, "store", "probe");
        total(to) - total(from) - probes
    };
    let file = jpeg(3000, 42);
    let before = gw.metrics().await;
    let (_, first) = upload(&http, &gw, ALPHA_KEY, &file, false).await;
    assert_eq!(first["deduplicated"], false, "{first}");
    let miss = gw.metrics().await;
    // A small file held whole: the lookup rides on the budget script, then one pipelined
    // record.
    for (store, op, n) in [
        ("dedupe", "get", 0.0),
        ("budget", "window", 1.0),
        ("dedupe", "put", 1.0),
    ] {
        let got = store_calls(&miss, store, op) - store_calls(&before, store, op);
        assert_eq!(got, n, "{store}/{op} on a miss");
    }
    assert_eq!(trips(&before, &miss), 2.0, "a miss: two round trips");
    // The same file again, unclaimed: the guarded budget script finds the entry and takes
    // nothing (Fxiaoke sees no second upload).
    let (_, again) = upload(&http, &gw, ALPHA_KEY, &file, false).await;
    assert_eq!(again["deduplicated"], true, "{again}");
    assert_eq!(again["mediaId"], first["mediaId"]);
    let repeat = gw.metrics().await;
    assert_eq!(
        trips(&miss, &repeat),
        1.0,
        "a repeat found by content: one round trip"
    );
    assert_eq!(sandbox.stats().await["uploads_completed"], 65);
    let (_, hit) = upload(&http, &gw, ALPHA_KEY, &file, true).await;
    assert_eq!(hit["deduplicated"], true, "{hit}");
    let after = gw.metrics().await;
    assert_eq!(trips(&repeat, &after), 1.0, "a digest hit: one lookup");
}

/// A serving thread whose own Redis connection is refused (Redis at `maxclients`) uses the
/// supervisor's instead, and does not try again on every request: Redis sees one refused
/// connection per thread, not one per request, and every upload is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thread_refused_its_own_redis_connection_shares_the_supervisors_without_retrying() {
    let redis = RedisServer::start();
    let sandbox = Sandbox::spawn(&[]);
    let gw =
        Gateway::spawn(&standard(&sandbox.url).with(|c| c.store = redis_store(&redis, "closed")));
    gw.until_store_ok().await;
    let admin = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let info = |section: &'static str| {
        let mut c = admin.clone();
        async move {
            redis::cmd("INFO")
                .arg(section)
                .query_async::<String>(&mut c)
                .await
                .unwrap()
        }
    };
    let field = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    // No serving thread has talked to Redis yet: only the supervisor and this connection are
    // there, and no more may come.
    let clients = field(&info("clients").await, "connected_clients");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(clients)
        .query_async(&mut admin.clone())
        .await
        .unwrap();
    let rejected_before = field(&info("stats").await, "rejected_connections");
    for (status, _, body) in spread_uploads(&gw, &gw, 24, ALPHA_KEY, 2000).await {
        assert_eq!((status, &body["errorCode"]), (200, &0.into()), "{body}");
    }
    let rejected = field(&info("stats").await, "rejected_connections") - rejected_before;
    // `workers = 2`: one refused connect per thread at most.
    assert!(
        (1..=2).contains(&rejected),
        "{rejected} refused connections"
    );
}

//! A reload tells the truth (design §12): what it can apply it applies whole, at once, and says
//! so in one event naming each change; what needs a restart refuses the whole reload with 409
//! and the keys, and nothing changes. Black-box: the real binary, its admin listener, SIGHUP.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// The standard config with the corp's daily call budget at `daily`.
fn daily(sandbox: &Sandbox, daily: u64) -> FileConfig {
    standard(&sandbox.url).with(|c| c.corp().daily_call_budget = Some(daily))
}

/// The standard config with each path's window at `calls` per 20 s.
fn per_20s(sandbox: &Sandbox, calls: u32) -> FileConfig {
    standard(&sandbox.url).with(|c| c.corp().upstream_requests_per_20s = Some(calls))
}

async fn query(gw: &Gateway) -> (u16, Value) {
    let resp = client()
        .post(format!("{}/cgi/crm/v2/data/query", gw.url))
        .bearer_auth(ALPHA_KEY)
        .body(r#"{"data":{"dataObjectApiName":"AccountObj"}}"#)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Waits (bounded: 15 s) until `fxgate_reloads_total{what="config",result}` reaches `n`.
async fn reloads(gw: &Gateway, result: &str, n: f64) {
    let series = format!(r#"fxgate_reloads_total{{result="{result}",what="config"}}"#);
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&gw.metrics().await, &series) < n {
        assert!(Instant::now() < deadline, "no {result} reload seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_runbooks_budget_raise_applies_at_once_and_the_gauge_counts_todays_use() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(&daily(&sandbox, 5));
    for _ in 0..5 {
        assert_eq!(query(&gw).await.0, 200);
    }
    let (status, e) = query(&gw).await;
    assert_eq!((status, &e["errorCode"]), (429, &json!(942902)), "{e}");
    let remaining = r#"fxgate_upstream_budget_remaining{corp="default"}"#;
    assert_eq!(metric(&gw.metrics().await, remaining), 0.0);

    gw.rewrite_config(&daily(&sandbox, 1000));
    let r = gw.reload().await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let changes = &body["applied"]["changes"];
    assert_eq!(
        changes[0],
        json!({"key": "corps.default.daily_call_budget", "old": 5, "new": 1000}),
        "{body}"
    );
    // The gauge reads the new limit less today's use, not a fresh budget.
    assert_eq!(metric(&gw.metrics().await, remaining), 995.0);
    for _ in 0..3 {
        let (status, e) = query(&gw).await;
        assert_eq!((status, &e["errorCode"]), (200, &json!(0)), "{e}");
    }
    assert_eq!(metric(&gw.metrics().await, remaining), 992.0);
    assert_eq!(
        gw.admin_clients().await["corps"]["default"]["daily_calls_left"],
        992
    );
    assert!(gw.logs().contains("config applied"));
    assert!(gw.logs().contains("corps.default.daily_call_budget"));
}

#[tokio::test]
async fn a_change_that_needs_a_restart_refuses_the_whole_reload() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(&daily(&sandbox, 1));
    assert_eq!(query(&gw).await.0, 200);
    // A budget raise that would apply, beside a listener move that cannot: nothing applies.
    let moved = daily(&sandbox, 100).with(|c| {
        c.server.listen = some("127.0.0.1:1");
        c.corp().app_secret = some("another-secret");
    });
    gw.rewrite_config(&moved);
    let r = gw.reload().await;
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["restart_required"],
        json!(["corps.default.app_secret", "server.listen"]),
        "{body}"
    );
    assert!(!body.to_string().contains("another-secret"));
    assert_eq!(
        metric(&gw.metrics().await, r#"fxgate_reload_ok{what="config"}"#),
        0.0
    );
    // The old listener serves, under the old budget.
    let (status, e) = query(&gw).await;
    assert_eq!((status, &e["errorCode"]), (429, &json!(942902)), "{e}");
    assert!(!gw.logs().contains("another-secret"));
}

#[tokio::test]
async fn sighup_and_the_file_watch_apply_the_same_way() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(&per_20s(&sandbox, 1));
    assert_eq!(query(&gw).await.0, 200);
    assert_eq!(query(&gw).await.0, 429);
    // SIGHUP: the per-path window grows at once.
    gw.rewrite_config(&per_20s(&sandbox, 3));
    gw.signal("HUP");
    reloads(&gw, "ok", 1.0).await;
    assert_eq!(query(&gw).await.0, 200);
    assert_eq!(query(&gw).await.0, 200);
    assert_eq!(query(&gw).await.0, 429);
    // The watch: a new caller appears without a signal, and nothing the process holds is lost
    // (on the memory backend a restart would cost the dedupe index).
    let file = unique_jpeg(3000, 7);
    let (status, _, first) = upload_multipart(
        &client(),
        &gw.upload_url(),
        ALPHA_KEY,
        file.clone(),
        "k.jpg",
    )
    .await;
    assert_eq!(
        (status, &first["deduplicated"]),
        (200, &json!(false)),
        "{first}"
    );
    gw.rewrite_config(&per_20s(&sandbox, 3).with(|c| c.add([gamma()])));
    let before = metric(
        &gw.metrics().await,
        r#"fxgate_reloads_total{result="ok",what="config"}"#,
    );
    reloads(&gw, "ok", before + 1.0).await;
    let jpeg = unique_jpeg(2000, 1);
    let (status, _) = raw_post(&gw.upload_url(), GAMMA_KEY, "image/jpeg", jpeg).await;
    assert_eq!(status, 200);
    let (status, _, again) =
        upload_multipart(&client(), &gw.upload_url(), ALPHA_KEY, file, "k.jpg").await;
    assert_eq!(
        (status, &again["deduplicated"]),
        (200, &json!(true)),
        "{again}"
    );
    assert_eq!(again["mediaId"], first["mediaId"]);
    // And a caller removed from the file is refused on its next request.
    gw.rewrite_config(&per_20s(&sandbox, 3));
    reloads(&gw, "ok", before + 2.0).await;
    let jpeg = unique_jpeg(2000, 2);
    let (status, _) = raw_post(&gw.upload_url(), GAMMA_KEY, "image/jpeg", jpeg).await;
    assert_eq!(status, 401);
}

/// Rewrites the config to `toml`, reloads, and returns the keys the reload said it applied.
async fn apply(gw: &Gateway, cfg: &FileConfig) -> Vec<String> {
    gw.rewrite_config(cfg);
    let r = gw.reload().await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["reloaded"], true, "{body}");
    let applied = &body["applied"];
    let mut keys: Vec<String> = applied["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap().to_string())
        .collect();
    keys.extend(
        applied["clients_changed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| format!("clients.{}", c.as_str().unwrap())),
    );
    keys
}

async fn raw_upload(gw: &Gateway, path: &str, content_type: &str, bytes: Vec<u8>) -> u16 {
    let url = format!("{}{path}", gw.url);
    raw_post(&url, ALPHA_KEY, content_type, bytes).await.0
}

#[tokio::test]
async fn every_live_key_takes_effect_on_the_next_request() {
    let sandbox = Sandbox::spawn(&[]);
    let mut cfg = standard(&sandbox.url);
    let gw = Gateway::spawn(&cfg);
    let png = || {
        let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
        v.extend(uuid_bytes());
        v
    };
    let msg = "/media/upload/message";
    let doc = "/media/upload?type=document&filename=a.pdf";
    let big_answer = r#"{"data":{"dataObjectApiName":"x","padBytes":3145728}}"#;
    let query = |body: &'static str| {
        let gw = &gw;
        async move {
            client()
                .post(format!("{}/cgi/crm/v2/data/query", gw.url))
                .bearer_auth(ALPHA_KEY)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Before: everything passes.
    assert_eq!(
        raw_upload(&gw, msg, "image/jpeg", unique_jpeg(200_000, 1)).await,
        200
    );
    assert_eq!(raw_upload(&gw, msg, "image/png", png()).await, 200);
    assert_eq!(
        raw_upload(&gw, doc, "application/pdf", unique_jpeg(4096, 2)).await,
        200
    );
    assert_eq!(query(big_answer).await, 200);

    // Each key, changed by a reload (the changes add up), decides the very next request.
    let steps: [(&str, Edit); 6] = [
        ("upload.message_max_bytes", |c| {
            c.upload.message_max_bytes = some("100KiB")
        }),
        ("upload.message_types", |c| {
            c.upload.message_types = Some(vec!["image/jpeg".into()])
        }),
        ("upload.document_max_bytes", |c| {
            c.upload.document_max_bytes = some("1KiB")
        }),
        ("passthrough.max_answer", |c| {
            c.passthrough.max_answer = some("2MiB")
        }),
        ("passthrough.max_body", |c| {
            c.passthrough.max_body = some("32B")
        }),
        ("clients.alpha", |c| {
            c.client("alpha").max_file_bytes = some("1KiB")
        }),
    ];
    for (n, (key, edit)) in steps.into_iter().enumerate() {
        edit(&mut cfg);
        let applied = apply(&gw, &cfg).await;
        assert_eq!(applied, [key], "step {n}");
        let seed = 10 + n as u32;
        let (status, expected) = match key {
            "upload.message_max_bytes" => (
                raw_upload(&gw, msg, "image/jpeg", unique_jpeg(200_000, seed)).await,
                413,
            ),
            "upload.message_types" => (raw_upload(&gw, msg, "image/png", png()).await, 415),
            "upload.document_max_bytes" => (
                raw_upload(&gw, doc, "application/pdf", unique_jpeg(4096, seed)).await,
                413,
            ),
            "passthrough.max_answer" => (query(big_answer).await, 502),
            "passthrough.max_body" => (
                query(r#"{"data":{"dataObjectApiName":"AccountObj"}}"#).await,
                413,
            ),
            _ => (
                raw_upload(&gw, msg, "image/jpeg", unique_jpeg(2000, seed)).await,
                413,
            ),
        };
        assert_eq!(status, expected, "{key}");
    }
}

fn uuid_bytes() -> Vec<u8> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut v = vec![0u8; 64];
    v[..4].copy_from_slice(&n.to_le_bytes());
    v[4..12].copy_from_slice(&std::process::id().to_le_bytes().repeat(2));
    v
}

/// Reloads `gw` with `edit` made to its config and returns the keys the answer says it applied.
async fn apply_in(gw: &InProcess, edit: impl FnOnce(&mut FileConfig)) -> Vec<String> {
    let (status, body) = gw.reload_with(edit).await;
    assert_eq!(status, 200, "{body}");
    body["applied"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap().to_string())
        .collect()
}

/// The keys whose effect needs time or a second caller: the deadline, the refresh point, the
/// dedupe TTL and claim scope, each changed by a reload and seen on the next request. The
/// clock is the injected one (hours of token life and TTL without sleeping).
#[tokio::test]
async fn deadlines_refresh_point_and_dedupe_policy_take_effect_on_the_next_request() {
    let gw = InProcess::spawn(Default::default(), |_| {}).await;
    let http = client();
    let url = gw.upload_url();
    let send = |key: &'static str, file: Vec<u8>| claim_upload_status(&http, &url, key, file);

    // corps.*.upstream_timeout: a Fxiaoke that takes 1 s is within the default 30 s...
    gw.faults(Faults {
        upload_delay: Duration::from_millis(1000),
        ..Faults::default()
    })
    .await;
    assert_eq!(send(ALPHA_KEY, unique_jpeg(900, 1)).await.0, 200);
    assert_eq!(
        apply_in(&gw, |c| c.corp().upstream_timeout = some("300ms")).await,
        ["corps.default.upstream_timeout"]
    );
    // ...and past the new 300 ms.
    let (status, e) = send(ALPHA_KEY, unique_jpeg(900, 2)).await;
    assert_eq!((status, &e["errorCode"]), (504, &json!(950401)), "{e}");
    gw.faults(Faults::default()).await;

    // dedupe.claim_scope: beta's digest claim on alpha's file is no claim hit under "client"...
    let hits = |m: &str| metric(m, r#"fxgate_dedupe_total{result="hit_claim"}"#);
    let shared = unique_jpeg(900, 3);
    let (status, first) = send(ALPHA_KEY, shared.clone()).await;
    assert_eq!(status, 200, "{first}");
    let before = hits(&gw.metrics().await);
    let (_, b) = send(BETA_KEY, shared.clone()).await;
    assert_eq!(hits(&gw.metrics().await), before, "{b}");
    let scope = |c: &mut FileConfig| c.dedupe.claim_scope = some("corp");
    assert_eq!(apply_in(&gw, scope).await, ["dedupe.claim_scope"]);
    // ...and is one under "corp" (a fresh file, as beta now holds the first).
    let other = unique_jpeg(900, 4);
    send(ALPHA_KEY, other.clone()).await;
    let before = hits(&gw.metrics().await);
    let (_, b) = send(BETA_KEY, other).await;
    assert_eq!(hits(&gw.metrics().await), before + 1.0, "{b}");

    // dedupe.ttl: an entry 11 minutes old is trusted for 72 h, then not at all under 10 min.
    gw.advance(Duration::from_secs(11 * 60));
    let (_, hit) = send(ALPHA_KEY, shared.clone()).await;
    assert_eq!(hit["deduplicated"], true, "{hit}");
    let ttl = |c: &mut FileConfig| c.dedupe.ttl = some("10m");
    assert_eq!(apply_in(&gw, ttl).await, ["dedupe.ttl"]);
    let (_, miss) = send(ALPHA_KEY, shared).await;
    assert_eq!(miss["deduplicated"], false, "{miss}");

    // corps.*.refresh_at: at 5000 s of the token's 7200 s nothing is due under 0.93 (6696 s);
    // under 0.5 (3600 s) the refresh is overdue, and the refresher calls at once.
    gw.advance(Duration::from_secs(5000) - Duration::from_secs(11 * 60));
    let calls = gw.stats()["token_calls"].as_u64().unwrap();
    let refresh = |c: &mut FileConfig| c.corp().refresh_at = Some(0.5);
    assert_eq!(apply_in(&gw, refresh).await, ["corps.default.refresh_at"]);
    gw.wait("token_calls", calls + 1).await;
}

#[tokio::test]
async fn the_fail_mode_applies_to_the_next_request_and_to_readiness() {
    let mut redis = RedisServer::start();
    let sandbox = Sandbox::spawn(&[]);
    let at = redis.url();
    let toml = |mode: &str| standard(&sandbox.url).with(|c| c.store = redis_store_at(&at, mode));
    let gw = Gateway::spawn(&toml("open"));
    gw.until_store_ok().await;
    let msg = "/media/upload/message";
    assert_eq!(
        raw_upload(&gw, msg, "image/jpeg", unique_jpeg(800, 1)).await,
        200
    );
    redis.kill();
    // Open: served from this replica's own counters, and ready.
    assert_eq!(
        raw_upload(&gw, msg, "image/jpeg", unique_jpeg(800, 2)).await,
        200
    );
    assert!(gw.ready().await);
    assert_eq!(apply(&gw, &toml("closed")).await, ["store.quota_fail_mode"]);
    // Closed: the next request is refused, and the replica leaves the Service.
    let url = format!("{}{msg}", gw.url);
    let (status, e) = raw_post(&url, ALPHA_KEY, "image/jpeg", unique_jpeg(800, 3)).await;
    assert_eq!((status, &e["errorCode"]), (429, &json!(942903)), "{e}");
    assert!(!gw.ready().await);
}

#[tokio::test]
async fn the_log_level_applies_to_the_next_line_and_wins_over_rust_log() {
    let sandbox = Sandbox::spawn(&[]);
    let toml = |level: &str| standard(&sandbox.url).with(|c| c.log.level = some(level));
    // The gateway runs with RUST_LOG=debug: `log.level` decides.
    let gw = Gateway::spawn(&toml("warn"));
    let call = |id: &'static str| {
        let gw = &gw;
        async move {
            client()
                .post(format!("{}/cgi/crm/v2/data/query", gw.url))
                .bearer_auth(ALPHA_KEY)
                .header("x-request-id", id)
                .body(r#"{"data":{"dataObjectApiName":"AccountObj"}}"#)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(call("quiet-call-1").await, 200);
    assert_eq!(apply(&gw, &toml("info")).await, ["log.level"]);
    assert_eq!(call("heard-call-2").await, 200);
    // The access line is written as the answer ends: wait for it (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.logs().contains("heard-call-2") {
        assert!(Instant::now() < deadline, "no access line at info");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!gw.logs().contains("quiet-call-1"), "{}", gw.logs());
}

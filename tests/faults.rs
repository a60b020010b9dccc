//! Fault injection: a scripted upstream (the sandbox's `/_sandbox/faults`) that stalls, resets,
//! answers HTML or garbage or 5xx, or reads slowly; a token endpoint down for minutes; Redis
//! paused or slower than `store.timeout` behind a TCP proxy. Each case checks that the caller
//! gets the documented answer within a bounded time, that nothing is recorded or charged for
//! what failed, that counters and logs say what happened, and that the next request succeeds.
//! (Redis killed and restarted: tests/replicas.rs; a download stalling mid-file: tests/stream.rs.)

mod support;

use std::time::{Duration, Instant};

use fxgate::sandbox::SandboxOptions;
use support::proxy::{Link, TcpProxy};
use support::*;

/// Bound on any answer to a faulted call with `upstream_timeout = 1s`: the deadline plus the
/// connection's own time, with room for a loaded CI machine.
const ANSWER_WITHIN: Duration = Duration::from_secs(8);

/// Gamma with a day's bytes to count what a failure charges.
fn budgeted_gamma() -> ClientFile {
    ClientFile {
        bytes_per_day: some("100000000"),
        max_concurrent_uploads: Some(4),
        ..gamma()
    }
}

#[tokio::test]
async fn every_broken_upload_answer_is_a_clear_error_in_bounded_time_and_records_nothing() {
    let (sandbox, gw) = pair(&[], |c| {
        c.corp().upstream_timeout = some("1s");
        c.add([budgeted_gamma()]);
    });
    let http = client();
    // (what Fxiaoke, or something in front of it, answers; status; fxgate's code or Fxiaoke's)
    let answer = |a: ScriptedAnswer| Faults {
        upload_answers: [a].into(),
        ..Faults::default()
    };
    let table = [
        (answer(ScriptedAnswer::Html), 502, 950202),
        (answer(ScriptedAnswer::Garbage), 502, 950202),
        (answer(ScriptedAnswer::PlainText), 502, 950202),
        (answer(ScriptedAnswer::BadGateway), 502, 950202),
        (answer(ScriptedAnswer::ResetMidBody), 502, 950201),
        // Fxiaoke's own envelope: its code is passed through, status and all.
        (answer(ScriptedAnswer::ServerError), 500, -1),
        // A stall before the head, then one after it.
        (
            Faults {
                upload_delay: Duration::from_secs(30),
                ..Faults::default()
            },
            504,
            950401,
        ),
        (
            Faults {
                upload_stall_answers: 1,
                ..Faults::default()
            },
            504,
            950401,
        ),
    ];
    let mut charged = 0u64;
    let cases = table.len() as u64;
    for (i, (fault, status, code)) in table.into_iter().enumerate() {
        sandbox.faults(fault.clone()).await;
        let file = jpeg(2000, i as u8);
        let t = Instant::now();
        let (got, _, body) =
            upload_multipart(&http, &gw.upload_url(), GAMMA_KEY, file.clone(), "f.jpg").await;
        let took = t.elapsed();
        assert_eq!(
            (got, &body["errorCode"]),
            (status, &code.into()),
            "{fault:?}: {body}"
        );
        assert!(took < ANSWER_WITHIN, "{fault:?}: answered after {took:?}");
        assert!(
            body["errorDescription"].as_str().is_some() || code == -1,
            "{fault:?}: {body}"
        );
        // Nothing was recorded and nothing charged: the same file, fault cleared, is a miss
        // that Fxiaoke stores, and only it is counted against the day's bytes.
        sandbox.faults(Faults::default()).await;
        let (got, _, body) =
            upload_multipart(&http, &gw.upload_url(), GAMMA_KEY, file.clone(), "f.jpg").await;
        assert_eq!(
            (got, &body["errorCode"], &body["deduplicated"]),
            (200, &0.into(), &false.into()),
            "{fault:?}, then: {body}"
        );
        charged += file.len() as u64;
        let usage = gamma_usage(&gw.admin_clients().await)["usage"].clone();
        assert_eq!(usage["bytes_today"], charged, "{fault:?}: {usage}");
        assert_eq!(usage["uploads_in_flight"], 0, "{fault:?}: {usage}");
    }
    assert_eq!(sandbox.stats().await["uploads_completed"], cases);
    // Counted by what came back, and logged with fxgate's code.
    let m = gw.metrics().await;
    for (error_code, n) in [("invalid", 4.0), ("unreachable", 1.0), ("timeout", 2.0)] {
        let series = format!("fxgate_upstream_requests_total{{corp=\"default\",error_code=\"{error_code}\",route=\"/media/upload/message\"}}");
        assert_eq!(metric(&m, &series), n, "{series}");
    }
    let logs = gw.logs();
    for code in ["950202", "950201", "950401"] {
        assert!(logs.contains(code), "no {code} in the log:\n{logs}");
    }
}

#[tokio::test]
async fn an_upstream_that_reads_slowly_pushes_back_and_the_file_arrives_whole() {
    let (sandbox, gw) = pair(&[], |c| c.corp().upstream_timeout = some("2s"));
    sandbox
        .faults(Faults {
            upload_read_kib_per_sec: 4096,
            ..Faults::default()
        })
        .await;
    let file = jpeg(3 * 1024 * 1024, 9);
    let (status, headers, body) = upload_multipart(
        &client(),
        &gw.upload_url(),
        ALPHA_KEY,
        file.clone(),
        "slow.jpg",
    )
    .await;
    assert_eq!((status, &body["errorCode"]), (200, &0.into()), "{body}");
    assert_eq!(headers["repr-digest"], repr_digest(&file).as_str());
    let stored = sandbox
        .media(body["mediaId"].as_str().expect("a mediaId"))
        .await;
    assert_eq!(stored["sha256"], sha256_hex(&file));
    assert_eq!(stored["size"], file.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_down_for_twelve_minutes_recovers_by_itself() {
    let t = InProcess::spawn_faulted(
        SandboxOptions::default(),
        |_| {},
        Faults {
            token_fail_calls: 1_000_000,
            ..Faults::default()
        },
    )
    .await;
    let http = client();
    let mut calls = 1;
    t.wait("token_failures", calls).await;
    for minute in 1..=12u8 {
        // A caller during the outage hears so at once, with a Retry-After.
        let started = Instant::now();
        let (status, headers, body) = upload_multipart(
            &http,
            &t.upload_url(),
            ALPHA_KEY,
            jpeg(300, minute),
            "t.jpg",
        )
        .await;
        assert_eq!(
            (status, &body["errorCode"]),
            (503, &950301.into()),
            "{body}"
        );
        assert!(headers.contains_key("retry-after"));
        assert!(started.elapsed() < ANSWER_WITHIN, "{:?}", started.elapsed());
        assert!(!t.ready().await);
        // The backoff is capped at a minute: one more call per minute, never a burst.
        t.advance(Duration::from_secs(60));
        calls += 1;
        t.wait("token_failures", calls).await;
        assert_eq!(t.stats()["token_calls"], calls, "minute {minute}");
    }
    // Fxiaoke is back; within the next backoff the corp has its token again.
    t.faults(Faults::default()).await;
    t.advance(Duration::from_secs(60));
    t.wait("tokens_issued", 1).await;
    let (status, _, body) =
        upload_multipart(&http, &t.upload_url(), ALPHA_KEY, jpeg(300, 99), "t.jpg").await;
    assert_eq!((status, &body["errorCode"]), (200, &0.into()), "{body}");
    assert!(t.ready().await);
    let stats = t.stats();
    assert_eq!(stats["token_rejected_concurrent"], 0, "{stats}");
    assert_eq!(stats["token_rejected_rate"], 0, "{stats}");
    let m = t.metrics().await;
    let errors = "fxgate_token_refresh_total{corp=\"default\",flow=\"legacy\",result=\"error\"}";
    assert_eq!(metric(&m, errors), calls as f64);
}

/// One gateway failing open and one failing closed, both reaching Redis through `proxy`.
fn behind(sandbox: &Sandbox, proxy: &TcpProxy, mode: &str) -> Gateway {
    Gateway::spawn(&standard(&sandbox.url).with(|c| {
        c.store = StoreFile {
            timeout: some("250ms"),
            ..redis_store_at(&proxy.url(), mode)
        };
        c.add([ClientFile {
            requests_per_minute: Some(1000),
            ..gamma()
        }]);
    }))
}

async fn claim(http: &reqwest::Client, gw: &Gateway, file: &[u8]) -> (u16, serde_json::Value) {
    let resp = http
        .post(format!("{}/media/upload/message?filename=f.jpg", gw.url))
        .bearer_auth(GAMMA_KEY)
        .header("content-type", "image/jpeg")
        .header("repr-digest", repr_digest(file))
        .body(file.to_vec())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_or_slow_redis_costs_a_request_at_most_its_timeout_and_sharing_resumes() {
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(redis.port).await;
    let sandbox = Sandbox::spawn(&[]);
    let open = behind(&sandbox, &proxy, "open");
    let closed = behind(&sandbox, &proxy, "closed");
    let http = client();
    let known = unique_jpeg(900, 1);
    let (status, first) = claim(&http, &open, &known).await;
    assert_eq!(status, 200, "{first}");

    for (n, link) in [Link::Pause, Link::Delay(Duration::from_millis(600))]
        .into_iter()
        .enumerate()
    {
        proxy.set(link);
        // Open: served, the index simply missing; closed: a clear 429. Either at once, never
        // held longer than the store timeout on each of the few Redis steps an upload takes.
        for (gw, seed, status, code) in [(&open, 10, 200, 0), (&closed, 20, 429, 942903)] {
            let t = Instant::now();
            let (got, body) = claim(&http, gw, &unique_jpeg(700, seed + n as u32)).await;
            assert_eq!(
                (got, &body["errorCode"]),
                (status, &code.into()),
                "{link:?}: {body}"
            );
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "{link:?}: {:?}",
                t.elapsed()
            );
        }
        let m = open.metrics().await;
        assert_eq!(metric(&m, "fxgate_store_up"), 0.0, "{link:?}");

        proxy.set(Link::Pass);
        open.until_store_ok().await;
        closed.until_store_ok().await;
        // The late replies of the hung commands are never taken for the answers of new ones:
        // the known file is still known, under its own mediaId, on both.
        for gw in [&open, &closed] {
            let (status, hit) = claim(&http, gw, &known).await;
            assert_eq!(status, 200, "{link:?}: {hit}");
            assert_eq!(hit["deduplicated"], true, "{link:?}: {hit}");
            assert_eq!(hit["mediaId"], first["mediaId"], "{link:?}");
        }
        let (status, body) = claim(&http, &closed, &unique_jpeg(700, 30 + n as u32)).await;
        assert_eq!(
            (status, &body["deduplicated"]),
            (200, &false.into()),
            "{body}"
        );
    }
    assert!(open.logs().contains("redis store lost"));
    assert!(open.logs().contains("sharing resumes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_held_up_by_a_slow_upstream_costs_at_most_256_kib() {
    let (sandbox, gw) = pair(&[], |c| c.corp().upstream_timeout = some("30s"));
    let http = client();
    // Warm: the pool, the token, the allocator's first arenas.
    let (status, _, _) = upload_multipart(
        &http,
        &gw.upload_url(),
        ALPHA_KEY,
        jpeg(300_000, 1),
        "w.jpg",
    )
    .await;
    assert_eq!(status, 200);
    sandbox
        .faults(Faults {
            upload_read_kib_per_sec: 2048,
            ..Faults::default()
        })
        .await;
    let urls = (0..48)
        .map(|i| format!("{}/media/upload?type=document&filename=f{i}.pdf", gw.url))
        .collect();
    let each = rss_per_concurrent_upload(&gw, urls, 8 * 1024 * 1024).await;
    // hyper's defaults (a 400 KiB write queue, four chunks in the body channel, one held while
    // waiting for room) made this ~1.1 MiB.
    assert!(each <= 256, "{each} KiB per upload under back-pressure");
}

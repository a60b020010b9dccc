//! The corp token as callers experience it: one fetch for a cold-start stampede, background
//! refresh of short-lived tokens, one 950302 after an upstream revocation, and a failing token
//! endpoint that is retried with backoff, never concurrently, while `/readyz` says so.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_start_with_500_concurrent_uploads_makes_one_token_call() {
    // A slow token endpoint keeps the first fetch in flight while all 500 requests arrive.
    let (sandbox, gw) = pair(&["--token-latency", "1500ms"], "", "");
    let http = client();
    let url = gw.upload_url();
    let uploads = (0..500u32).map(|i| {
        let http = http.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let (status, _, body) =
                upload_multipart(&http, &url, ALPHA_KEY, unique_jpeg(2000, i), "c.jpg").await;
            (status, body)
        })
    });
    let results = futures_util::future::join_all(uploads).await;
    for r in results {
        let (status, body) = r.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["errorCode"], 0, "{body}");
    }
    let stats = sandbox.stats().await;
    assert_eq!(stats["token_calls"], 1, "{stats}");
    assert_eq!(stats["token_rejected_concurrent"], 0);
    assert_eq!(stats["uploads_completed"], 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_are_refreshed_in_the_background() {
    // 6 s tokens: the gateway refreshes at 93% (5.6 s), inside the new-token window (> 5.5 s).
    let (sandbox, gw) = pair(&["--token-ttl", "6s"], "", "");
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(14);
    let mut n = 0u32;
    // Bounded in time and count: about 14 s, at most 2000 uploads.
    while Instant::now() < deadline && n < 2000 {
        let (status, _, body) = upload_multipart(
            &http,
            &gw.upload_url(),
            ALPHA_KEY,
            unique_jpeg(500, n),
            "r.jpg",
        )
        .await;
        assert_eq!(
            (status, &body["errorCode"]),
            (200, &serde_json::json!(0)),
            "upload {n}: {body}"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await; // pacing of the load, not synchronisation
    }
    let stats = sandbox.stats().await;
    assert_eq!(
        stats["token_rejected"], 0,
        "a caller's upload met an expired token: {stats}"
    );
    assert!(stats["tokens_issued"].as_u64().unwrap() >= 3, "{stats}");
    assert_eq!(stats["token_rejected_concurrent"], 0);
    assert_eq!(stats["token_rejected_rate"], 0);
    assert!(gw
        .metrics()
        .await
        .contains("fxgate_token_refresh_total{corp=\"default\",result=\"ok\"}"));
}

#[tokio::test]
async fn revoked_token_gives_one_950302_then_success() {
    let (sandbox, gw) = pair(&[], "", "");
    let http = client();
    let (status, _, body) =
        upload_multipart(&http, &gw.upload_url(), ALPHA_KEY, jpeg(1000, 1), "a.jpg").await;
    assert_eq!((status, body["errorCode"].as_i64()), (200, Some(0)));
    sandbox
        .faults(serde_json::json!({"revoke_tokens": true}))
        .await;

    let file = jpeg(1000, 2);
    let part = reqwest::multipart::Part::bytes(file.clone()).file_name("b.jpg");
    let resp = http
        .post(gw.upload_url())
        .bearer_auth(ALPHA_KEY)
        .multipart(reqwest::multipart::Form::new().part("media", part))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errorCode"], 950302, "{body}");

    // The caller retries, as told; the gateway has fetched a new token meanwhile.
    let (status, _, body) =
        upload_multipart(&http, &gw.upload_url(), ALPHA_KEY, file, "b.jpg").await;
    assert_eq!(
        (status, body["errorCode"].as_i64()),
        (200, Some(0)),
        "{body} {}",
        gw.logs()
    );
    let stats = sandbox.stats().await;
    assert_eq!(stats["token_calls"], 2, "{stats}");
    assert_eq!(stats["token_rejected"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_token_endpoint_backs_off_and_readyz_says_so() {
    let sandbox = Sandbox::spawn(&[]);
    let toml = config(&sandbox.url, "", "").replace(
        &format!("app_secret = \"{APP_SECRET}\""),
        "app_secret = \"wrong-secret\"",
    );
    let gw = Gateway::spawn(&toml);
    let http = client();
    sandbox.wait("token_failures", 1).await;
    assert!(!gw.ready().await);
    let started = Instant::now();
    // Callers during the outage get 950301 at once, and do not cause extra token calls.
    for i in 0..50u8 {
        let (status, headers, body) =
            upload_multipart(&http, &gw.upload_url(), ALPHA_KEY, jpeg(100, i), "x.jpg").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["errorCode"], 950301);
        assert!(headers.contains_key("retry-after"));
    }
    // Observe a fixed window: backoff 1 s, 2 s, 4 s allows at most 4 calls in 6 s.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(started.elapsed())).await;
    let stats = sandbox.stats().await;
    let calls = stats["token_calls"].as_u64().unwrap();
    assert!((2..=5).contains(&calls), "token calls in ~6 s: {stats}");
    assert_eq!(stats["token_rejected_concurrent"], 0);
    assert_eq!(stats["token_rejected_rate"], 0);
    assert_eq!(stats["upload_requests"], 0);
    assert!(!gw.ready().await);
}

#[tokio::test]
async fn readyz_is_ok_once_a_token_is_held() {
    let (sandbox, gw) = pair(&[], "", "");
    sandbox.wait("tokens_issued", 1).await;
    // The token is published right after the sandbox answers; a request awaits it.
    let (status, _, _) = upload_multipart(
        &client(),
        &gw.upload_url(),
        ALPHA_KEY,
        jpeg(100, 1),
        "x.jpg",
    )
    .await;
    assert_eq!(status, 200);
    assert!(gw.ready().await);
    let health = reqwest::get(format!("{}/healthz", gw.admin)).await.unwrap();
    assert_eq!(health.status(), 200);
}

//! Content-hash dedupe through a running gateway: repeated files get their mediaId back, by
//! stream (no digest) or by claimed digest (no body at all), coalesced when concurrent, scoped
//! per caller by default, never recorded from a failed or mismatched upload, evicted on delete
//! and after the TTL.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Uploads `bytes` raw to the message route, optionally claiming its digest.
async fn upload(
    http: &reqwest::Client,
    gw: &Gateway,
    key: &str,
    bytes: &[u8],
    claim: Option<String>,
) -> serde_json::Value {
    let mut req = http
        .post(format!("{}?filename=f.jpg", gw.upload_url()))
        .bearer_auth(key)
        .header("content-type", "image/jpeg")
        .body(bytes.to_vec());
    if let Some(c) = claim {
        req = req.header("repr-digest", c);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let digest = resp
        .headers()
        .get("repr-digest")
        .map(|v| v.to_str().unwrap().to_string());
    let mut body: serde_json::Value = resp.json().await.unwrap();
    body["_status"] = status.into();
    body["_digest"] = digest.into();
    body
}

#[tokio::test]
async fn same_bytes_twice_without_digest_reuse_the_media_id() {
    let (sandbox, gw) = pair(&[], |_| {});
    let http = client();
    let file = jpeg(120_000, 11);
    let first = upload(&http, &gw, ALPHA_KEY, &file, None).await;
    assert_eq!(first["deduplicated"], false, "{first}");
    let second = upload(&http, &gw, ALPHA_KEY, &file, None).await;
    assert_eq!(second["errorCode"], 0, "{second}");
    assert_eq!(second["deduplicated"], true, "{second}");
    assert_eq!(second["mediaId"], first["mediaId"]);
    assert_eq!(second["_digest"], repr_digest(&file));
    // The second upload was aborted before its closing delimiter (whether its first bytes
    // reached the sandbox at all depends on timing); the gateway answered only after dropping
    // the body, so it can no longer complete.
    let stats = sandbox.stats().await;
    assert_eq!(stats["uploads_completed"], 1, "{stats}");
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "fxgate_dedupe_total{result=\"hit_stream\"}"),
        1.0
    );
    assert_eq!(metric(&m, "fxgate_dedupe_total{result=\"miss\"}"), 1.0);
    assert_eq!(
        metric(&m, "fxgate_dedupe_saved_bytes_total"),
        file.len() as f64
    );

    // Different bytes are a different file.
    let other = upload(&http, &gw, ALPHA_KEY, &jpeg(120_000, 12), None).await;
    assert_eq!(other["deduplicated"], false);
    assert_ne!(other["mediaId"], first["mediaId"]);
}

#[tokio::test]
async fn a_small_repeat_is_answered_before_anything_goes_upstream() {
    // One Fxiaoke call a day: the repeat must not need a second.
    let (sandbox, gw) = pair(&[], |c| c.corp().daily_call_budget = Some(1));
    let http = client();
    // Within the first 32 KiB the whole file is hashed before the upstream request opens.
    let file = jpeg(8 * 1024, 21);
    let first = upload(&http, &gw, ALPHA_KEY, &file, None).await;
    assert_eq!(first["deduplicated"], false, "{first}");
    assert_eq!(first["_digest"], repr_digest(&file));
    assert_eq!(
        sandbox.media(first["mediaId"].as_str().unwrap()).await["size"],
        file.len()
    );
    let second = upload(&http, &gw, ALPHA_KEY, &file, None).await;
    assert_eq!(second["deduplicated"], true, "{second}");
    assert_eq!(second["mediaId"], first["mediaId"]);
    let stats = sandbox.stats().await;
    assert_eq!(
        stats["upload_requests"], 1,
        "the repeat never reached Fxiaoke: {stats}"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "fxgate_dedupe_total{result=\"hit_stream\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "fxgate_upstream_budget_remaining{corp=\"default\"}"),
        0.0
    );
    // A new file does need the call, and the day's budget is spent.
    let other = upload(&http, &gw, ALPHA_KEY, &jpeg(8 * 1024, 22), None).await;
    assert_eq!(other["_status"], 429, "{other}");
}

#[tokio::test]
async fn a_claimed_digest_hit_causes_no_upstream_request() {
    let (sandbox, gw) = pair(&[], |_| {});
    let http = client();
    let file = jpeg(80_000, 21);
    let first = upload(&http, &gw, ALPHA_KEY, &file, Some(repr_digest(&file))).await;
    assert_eq!(first["deduplicated"], false, "{first}");
    let second = upload(&http, &gw, ALPHA_KEY, &file, Some(repr_digest(&file))).await;
    assert_eq!(second["deduplicated"], true, "{second}");
    assert_eq!(second["mediaId"], first["mediaId"]);
    // X-Content-SHA256 works the same way.
    let hex_claim = http
        .post(gw.upload_url())
        .bearer_auth(ALPHA_KEY)
        .header("x-content-sha256", sha256_hex(&file))
        .header("content-type", "image/jpeg")
        .body(file.clone())
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(hex_claim["mediaId"], first["mediaId"]);
    assert_eq!(sandbox.stats().await["upload_requests"], 1);
    assert_eq!(
        metric(
            &gw.metrics().await,
            "fxgate_dedupe_total{result=\"hit_claim\"}"
        ),
        2.0
    );
}

#[tokio::test]
async fn expect_100_continue_claim_hit_never_sends_the_body() {
    let (sandbox, gw) = pair(&[], |_| {});
    let http = client();
    let file = jpeg(2 * 1024 * 1024, 31);
    let first = upload(&http, &gw, ALPHA_KEY, &file, Some(repr_digest(&file))).await;
    let addr = gw.url.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /media/upload/message HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ALPHA_KEY}\r\n\
         Content-Type: image/jpeg\r\nContent-Length: {}\r\nRepr-Digest: {}\r\nExpect: 100-continue\r\n\r\n",
        file.len(),
        repr_digest(&file)
    );
    // Headers only: the answer must come without a single body byte.
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 8192];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\"deduplicated\":true") {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
    assert!(text.contains(first["mediaId"].as_str().unwrap()), "{text}");
    assert_eq!(sandbox.stats().await["upload_requests"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_identical_claims_go_upstream_once() {
    let (sandbox, gw) = pair(&[], |_| {});
    // Slow Fxiaoke, so all 50 arrive while the first is still uploading.
    sandbox
        .faults(Faults {
            upload_delay: Duration::from_millis(500),
            ..Faults::default()
        })
        .await;
    let http = client();
    let file = jpeg(50_000, 41);
    let tasks = (0..50).map(|_| {
        let (http, file, url) = (http.clone(), file.clone(), gw.upload_url());
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
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert_eq!(
        answers
            .iter()
            .filter(|a| a["deduplicated"] == false)
            .count(),
        1
    );
    let stats = sandbox.stats().await;
    assert_eq!(stats["upload_requests"], 1, "{stats}");
    assert_eq!(stats["uploads_completed"], 1);
}

#[tokio::test]
async fn digest_mismatch_is_400_records_nothing_and_an_honest_retry_works() {
    let (sandbox, gw) = pair(&[], |_| {});
    let http = client();
    let file = jpeg(60_000, 51);
    let lie = repr_digest(&jpeg(60_000, 52));
    let r = upload(&http, &gw, ALPHA_KEY, &file, Some(lie.clone())).await;
    assert_eq!(r["_status"], 400, "{r}");
    assert_eq!(r["errorCode"], 940002);
    assert!(r["errorDescription"]
        .as_str()
        .unwrap()
        .contains(&repr_digest(&file)[..20]));
    // Aborted before completion: nothing stored upstream either.
    assert_eq!(sandbox.stats().await["uploads_completed"], 0);
    // The lie recorded nothing: the same claim still misses (and mismatches again).
    let r = upload(&http, &gw, ALPHA_KEY, &file, Some(lie)).await;
    assert_eq!(r["errorCode"], 940002);
    let honest = upload(&http, &gw, ALPHA_KEY, &file, Some(repr_digest(&file))).await;
    assert_eq!(
        (honest["errorCode"].as_i64(), &honest["deduplicated"]),
        (Some(0), &serde_json::json!(false)),
        "{honest}"
    );
    assert_eq!(sandbox.stats().await["uploads_completed"], 1);
}

#[tokio::test]
async fn routes_and_types_are_separate_entries() {
    let (sandbox, gw) = pair(&[], |_| {});
    let http = client();
    let file = jpeg(30_000, 61);
    let message = upload(&http, &gw, ALPHA_KEY, &file, None).await;
    let crm = http
        .post(format!("{}/media/upload?type=image&filename=f.jpg", gw.url))
        .bearer_auth(ALPHA_KEY)
        .header("content-type", "image/jpeg")
        .body(file.clone())
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(crm["deduplicated"], false, "{crm}");
    assert_ne!(crm["mediaId"], message["mediaId"]);
    assert_eq!(sandbox.stats().await["uploads_completed"], 2);
}

#[tokio::test]
async fn failed_or_abandoned_uploads_record_nothing() {
    let (sandbox, gw) = pair(&[], |_| {});
    let http = client();
    let file = jpeg(40_000, 71);
    sandbox
        .faults(Faults {
            fail_next_upload: Some(30002),
            ..Faults::default()
        })
        .await;
    let failed = upload(&http, &gw, ALPHA_KEY, &file, Some(repr_digest(&file))).await;
    assert_eq!(
        failed["errorCode"], 30002,
        "Fxiaoke's answer passes through: {failed}"
    );
    // Not recorded: the same claim goes upstream again.
    let ok = upload(&http, &gw, ALPHA_KEY, &file, Some(repr_digest(&file))).await;
    assert_eq!(
        (ok["errorCode"].as_i64(), &ok["deduplicated"]),
        (Some(0), &serde_json::json!(false)),
        "{ok}"
    );

    // A caller that hangs up mid-body records nothing either.
    let big = jpeg(1024 * 1024, 72);
    let addr = gw.url.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /media/upload/message HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ALPHA_KEY}\r\n\
         Content-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&big[..300_000]).await.unwrap();
    sandbox.wait("uploads_active", 1).await;
    drop(tcp);
    sandbox.wait("uploads_aborted", 1).await;
    let after = upload(&http, &gw, ALPHA_KEY, &big, Some(repr_digest(&big))).await;
    assert_eq!(after["deduplicated"], false, "{after}");
    assert_eq!(sandbox.stats().await["uploads_completed"], 2);
}

#[tokio::test]
async fn another_callers_claim_misses_by_default() {
    let (sandbox, gw) = pair(&[], |_| {});
    let http = client();
    let file = jpeg(30_000, 81);
    let a = upload(&http, &gw, ALPHA_KEY, &file, Some(repr_digest(&file))).await;
    // Beta claims Alpha's file: the digest alone does not find it, so the body is read and
    // streamed; having sent every byte, Beta then gets the same mediaId (a stream hit).
    let b = upload(&http, &gw, BETA_KEY, &file, Some(repr_digest(&file))).await;
    assert_eq!(b["mediaId"], a["mediaId"]);
    assert_eq!(b["deduplicated"], true);
    assert_eq!(sandbox.stats().await["uploads_completed"], 1);
    // Beta's claim did not hit; its streamed bytes did.
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "fxgate_dedupe_total{result=\"hit_claim\"}"), 0.0);
    assert_eq!(
        metric(&m, "fxgate_dedupe_total{result=\"hit_stream\"}"),
        1.0
    );
    // Beta has now proven it holds the file: its next claim hits.
    let again = upload(&http, &gw, BETA_KEY, &file, Some(repr_digest(&file))).await;
    assert_eq!(again["mediaId"], a["mediaId"]);
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "fxgate_dedupe_total{result=\"hit_claim\"}"), 1.0);
    assert_eq!(sandbox.stats().await["uploads_completed"], 1);
}

#[tokio::test]
async fn corp_scope_lets_any_caller_claim() {
    let (sandbox, gw) = pair(&[], |c| c.dedupe.claim_scope = some("corp"));
    let http = client();
    let file = jpeg(30_000, 91);
    let a = upload(&http, &gw, ALPHA_KEY, &file, Some(repr_digest(&file))).await;
    let b = upload(&http, &gw, BETA_KEY, &file, Some(repr_digest(&file))).await;
    assert_eq!(b["mediaId"], a["mediaId"]);
    assert_eq!(sandbox.stats().await["upload_requests"], 1);
}

#[tokio::test]
async fn a_delete_evicts_the_entry() {
    let (sandbox, gw) = pair(&[], |_| {});
    let http = client();
    let file = jpeg(30_000, 101);
    let first = upload(&http, &gw, ALPHA_KEY, &file, None).await;
    let id = first["mediaId"].as_str().unwrap().to_string();
    let del = http
        .post(format!("{}/media/delete", gw.url))
        .bearer_auth(ALPHA_KEY)
        .json(&serde_json::json!({"mediaId": id}))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(del["errorCode"], 0);
    let again = upload(&http, &gw, ALPHA_KEY, &file, None).await;
    assert_eq!(
        again["deduplicated"], false,
        "a deleted mediaId must not be handed out: {again}"
    );
    assert_ne!(again["mediaId"], first["mediaId"]);
    let hit = upload(&http, &gw, ALPHA_KEY, &file, None).await;
    assert_eq!(hit["deduplicated"], true);
    assert_eq!(sandbox.stats().await["uploads_completed"], 2);
}

#[tokio::test]
async fn an_entry_is_trusted_for_the_ttl_from_its_upload_and_not_after() {
    // The injected clock: an hour passes without sleeping.
    let gw = InProcess::spawn(Default::default(), |c| c.dedupe.ttl = some("1h")).await;
    let http = client();
    let file = jpeg(30_000, 102);
    let send = || {
        http.post(format!("{}?filename=f.jpg", gw.upload_url()))
            .bearer_auth(ALPHA_KEY)
            .header("content-type", "image/jpeg")
            .body(file.clone())
            .send()
    };
    let first: serde_json::Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(first["deduplicated"], false, "{first}");
    gw.advance(Duration::from_secs(3599));
    let hit: serde_json::Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(hit["deduplicated"], true, "{hit}");
    assert_eq!(hit["mediaId"], first["mediaId"]);
    // Re-recording a holder never extends the hour: one second on, it has passed.
    gw.advance(Duration::from_secs(1));
    let expired: serde_json::Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(expired["deduplicated"], false, "{expired}");
    assert_eq!(gw.stats()["uploads_completed"], 2);
}

#[tokio::test]
async fn a_document_claim_and_its_upload_use_the_same_filename() {
    // The claim is keyed by `?filename=`; the part says otherwise. fxgate sends (and records)
    // the file under the query's name, so the next claim for that name is a hit, and the name
    // Fxiaoke holds is the one the key promises.
    let (sandbox, gw) = pair(&[], |_| {});
    let http = client();
    let file = b"%PDF-1.7 the signed contract".repeat(500);
    let send = |part_name: &'static str| {
        let part = reqwest::multipart::Part::bytes(file.clone())
            .file_name(part_name)
            .mime_str("application/pdf")
            .unwrap();
        http.post(format!(
            "{}/media/upload?type=document&filename=contract.pdf",
            gw.url
        ))
        .bearer_auth(ALPHA_KEY)
        .header("repr-digest", repr_digest(&file))
        .multipart(reqwest::multipart::Form::new().part("media", part))
        .send()
    };
    let first: serde_json::Value = send("scan-0042.pdf").await.unwrap().json().await.unwrap();
    assert_eq!(first["errorCode"], 0, "{first}");
    let id = first["mediaId"].as_str().unwrap();
    assert_eq!(sandbox.media(id).await["filename"], "contract.pdf");
    let second: serde_json::Value = send("scan-0042.pdf").await.unwrap().json().await.unwrap();
    assert_eq!(second["deduplicated"], true, "{second}");
    assert_eq!(second["mediaId"], first["mediaId"]);
    assert_eq!(sandbox.stats().await["uploads_completed"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_entry_is_never_handed_out_past_its_ttl_however_often_it_is_hit() {
    // Issue 14 (medium): a hit by a new holder re-inserted the entry and restarted moka's TTL,
    // and a read never checked `created_at`: with ttl = 4s a claim at 5.5 s still hit.
    let t = InProcess::spawn(Default::default(), |c| {
        c.dedupe.ttl = some("4s");
        c.dedupe.claim_scope = some("corp");
    })
    .await;
    let http = client();
    let file = unique_jpeg(3000, 77);
    let first = claim_upload(&http, &t.upload_url(), ALPHA_KEY, file.clone()).await;
    assert_eq!(first["deduplicated"], false, "{first}");
    t.advance(std::time::Duration::from_secs(3));
    let hit = claim_upload(&http, &t.upload_url(), BETA_KEY, file.clone()).await;
    assert_eq!(hit["deduplicated"], true, "{hit}");
    t.advance(std::time::Duration::from_millis(2500));
    let late = claim_upload(&http, &t.upload_url(), ALPHA_KEY, file).await;
    assert_eq!(
        late["deduplicated"], false,
        "handed out past its TTL: {late}"
    );
    assert_ne!(late["mediaId"], first["mediaId"]);
}

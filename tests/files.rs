//! `POST /media/upload/file`: up to 100 MiB through the sandbox's File Service (design §10),
//! black-box over real sockets: the npath, memory, dedupe with and without a digest claim,
//! the refusals before anything moves, the upload host check, an expired signature, a caller
//! hanging up, a step-1 token rejection.

mod support;

use support::*;
use tokio::io::AsyncWriteExt;

const MIB: usize = 1024 * 1024;

/// The standard pair, with the corp's File Service user set (alpha is a legacy-style caller)
/// and a byte quota for alpha, so reservations and refunds show in `/admin/clients`.
fn file_pair() -> (Sandbox, Gateway) {
    pair(&[], |c| {
        c.corp().file_service_user = some("FSUID_FILES");
        c.client("alpha").bytes_per_day = some("1GiB");
    })
}

fn file_url(gw: &Gateway, query: &str) -> String {
    format!("{}/media/upload/file?{query}", gw.url)
}

/// A raw upload of `total` pattern bytes (seed `seed`), with extra headers.
async fn upload(
    gw: &Gateway,
    query: &str,
    total: usize,
    seed: u8,
    headers: &[(&str, String)],
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let mut req = client()
        .post(file_url(gw, query))
        .bearer_auth(ALPHA_KEY)
        .header("content-type", "application/pdf")
        .header("content-length", total.to_string());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req
        .body(reqwest::Body::wrap_stream(pattern_stream(
            total,
            256 * 1024,
            seed,
        )))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.unwrap_or_default())
}

fn hex_to_b64(hex: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(hex::decode(hex).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_file_gets_an_npath_with_bounded_memory_and_its_repeats_cost_nothing() {
    let total = 100 * MIB;
    let (sandbox, gw) = file_pair();
    sandbox.wait("tokens_issued", 1).await;
    let baseline = gw.peak_rss_kib();
    let (status, headers, body) = upload(&gw, "filename=big.pdf", total, 1, &[]).await;
    assert_eq!(status, 200, "{body}");
    let npath = body["npath"].as_str().unwrap().to_string();
    assert!(npath.starts_with("N_"), "{body}");
    assert_eq!(body["deduplicated"], false);
    let sha = pattern_sha256(total, 1);
    let file = sandbox.file(&npath).await;
    assert_eq!(file["sha256"], sha, "{file}");
    assert_eq!(file["size"], total);
    assert_eq!(file["filename"], "big.pdf");
    assert_eq!(
        headers["repr-digest"].to_str().unwrap(),
        format!("sha-256=:{}:", hex_to_b64(&sha))
    );
    let peak = gw.peak_rss_kib();
    eprintln!("100 MiB File Service upload: peak RSS {peak} KiB, {baseline} KiB before");
    assert!(
        peak.saturating_sub(baseline) <= 16 * 1024,
        "peak RSS grew by {} KiB for a 100 MiB upload",
        peak - baseline
    );
    let before = sandbox.stats().await;

    // Again, claiming its digest: the same npath and no call to the File Service at all.
    let claim = [("repr-digest", format!("sha-256=:{}:", hex_to_b64(&sha)))];
    let (status, _, again) = upload(&gw, "filename=big.pdf", total, 1, &claim).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (again["npath"].as_str(), again["deduplicated"].as_bool()),
        (Some(npath.as_str()), Some(true))
    );
    let after = sandbox.stats().await;
    for counter in ["file_credentials", "file_upload_requests"] {
        assert_eq!(after[counter], before[counter], "{counter}: {after}");
    }

    // A claim with `Expect: 100-continue`: answered before a byte of the body moves.
    let answer = expect_continue_file(&gw, &format!("sha-256=:{}:", hex_to_b64(&sha)), total).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(&npath), "{answer}");

    // Again without a claim: the hash is known only at the end, so a signature is taken and
    // step 2 opened, then aborted before its last bytes: nothing new is stored.
    let (status, _, third) = upload(&gw, "filename=big.pdf", total, 1, &[]).await;
    assert_eq!(status, 200, "{third}");
    assert_eq!(
        (third["npath"].as_str(), third["deduplicated"].as_bool()),
        (Some(npath.as_str()), Some(true))
    );
    let last = sandbox.stats().await;
    assert_eq!(
        last["file_uploads_completed"], after["file_uploads_completed"],
        "{last}"
    );
}

/// Sends only the head of a File Service upload with `Expect: 100-continue` and a claim.
async fn expect_continue_file(gw: &Gateway, claim: &str, len: usize) -> String {
    let headers = format!("Content-Type: application/pdf\r\nRepr-Digest: {claim}\r\n");
    let path = "/media/upload/file?filename=big.pdf";
    expect_continue_with(gw, ALPHA_KEY, path, len as u64, &headers).await
}

#[tokio::test]
async fn over_100_mib_is_413_with_upload_limit_and_a_chunked_body_is_411_both_before_any_call() {
    let (sandbox, gw) = file_pair();
    let path = "/media/upload/file?filename=big.pdf";
    let headers = "Content-Type: application/pdf\r\n";
    let answer = expect_continue_with(&gw, ALPHA_KEY, path, 100 * MIB as u64 + 1, headers)
        .await
        .to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 413"), "{answer}");
    assert!(
        answer.contains("upload-limit: max-size=104857600"),
        "{answer}"
    );
    assert!(answer.contains("941301"), "{answer}");

    // No length up front: 411 / 941101.
    let resp = client()
        .post(file_url(&gw, "filename=big.pdf"))
        .bearer_auth(ALPHA_KEY)
        .body(reqwest::Body::wrap_stream(pattern_stream(
            MIB,
            64 * 1024,
            2,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 411);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errorCode"], 941101, "{body}");
    let stats = sandbox.stats().await;
    assert_eq!(stats["file_credentials"], 0, "{stats}");
    assert_eq!(stats["file_upload_requests"], 0, "{stats}");
}

#[tokio::test]
async fn the_other_upload_routes_413s_carry_upload_limit_too() {
    let (_sandbox, gw) = file_pair();
    let resp = client()
        .post(gw.upload_url())
        .bearer_auth(ALPHA_KEY)
        .header("content-type", "image/jpeg")
        .body(jpeg(6 * MIB, 3))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["upload-limit"], "max-size=5242880");
}

#[tokio::test]
async fn a_step_2_url_on_a_foreign_host_is_refused_with_no_byte_sent_there() {
    let (sandbox, gw) = file_pair();
    // Another listener on loopback, as a foreign host would be: it counts connections.
    let foreign = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = foreign.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = accepted.clone();
    let counting = tokio::spawn(async move {
        while let Ok((_conn, _)) = foreign.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    sandbox
        .faults(Faults {
            file_upload_url: Some(format!("http://127.0.0.1:{port}/fs/stream/upload/")),
            ..Faults::default()
        })
        .await;
    let (status, _, body) = upload(&gw, "filename=a.pdf", 2 * MIB, 4, &[]).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["errorCode"], 950205, "{body}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(sandbox.stats().await["file_upload_requests"], 0);
    let alpha = admin_entry(&gw.admin_clients().await, "alpha");
    assert_eq!(alpha["usage"]["bytes_today"], 0, "refunded: {alpha}");
    counting.abort();
}

#[tokio::test]
async fn an_expired_signature_is_502_records_nothing_and_refunds_the_bytes() {
    let (sandbox, gw) = file_pair();
    sandbox
        .faults(Faults {
            file_expired_signatures: true,
            ..Faults::default()
        })
        .await;
    let (status, _, body) = upload(&gw, "filename=a.pdf", 3 * MIB, 5, &[]).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["errorCode"], 950204, "{body}");
    assert!(
        body["errorDescription"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );
    let alpha = admin_entry(&gw.admin_clients().await, "alpha");
    assert_eq!(alpha["usage"]["bytes_today"], 0, "refunded: {alpha}");
    // Nothing recorded: with a good signature the same file is uploaded, not a hit.
    sandbox.faults(Faults::default()).await;
    let (status, _, body) = upload(&gw, "filename=a.pdf", 3 * MIB, 5, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deduplicated"], false, "{body}");
}

#[tokio::test]
async fn a_caller_hanging_up_at_half_aborts_step_2_and_records_nothing() {
    let (sandbox, gw) = file_pair();
    let total = 8 * MIB;
    let addr = gw.url.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /media/upload/file?filename=half.pdf HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ALPHA_KEY}\r\n\
         Content-Type: application/pdf\r\nContent-Length: {total}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&vec![7u8; total / 2]).await.unwrap();
    // Step 2 is under way once the sandbox has a request for it.
    sandbox.wait("file_upload_requests", 1).await;
    drop(tcp);
    let stats = sandbox.wait("file_uploads_aborted", 1).await;
    assert_eq!(stats["file_uploads_completed"], 0, "{stats}");
    let alpha = admin_entry(&gw.admin_clients().await, "alpha");
    assert_eq!(alpha["usage"]["bytes_today"], 0, "refunded: {alpha}");
}

#[tokio::test]
async fn a_step_1_token_rejection_is_refreshed_and_retried_once() {
    let (sandbox, gw) = file_pair();
    let (status, _, body) = upload(&gw, "filename=a.pdf", MIB, 6, &[]).await;
    assert_eq!(status, 200, "{body}");
    let before = sandbox.stats().await;
    sandbox
        .faults(Faults {
            revoke_tokens: true,
            ..Faults::default()
        })
        .await;
    let (status, _, body) = upload(&gw, "filename=b.pdf", MIB, 7, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["npath"].as_str().unwrap().starts_with("N_"), "{body}");
    let after = sandbox.stats().await;
    assert_eq!(
        after["oauth_token_calls"].as_u64().unwrap(),
        before["oauth_token_calls"].as_u64().unwrap() + 1,
        "one refresh: {after}"
    );
    assert_eq!(after["file_uploads_completed"], 2, "{after}");
}

#[tokio::test]
async fn a_multipart_file_and_a_temporary_npath() {
    let (sandbox, gw) = file_pair();
    let file = jpeg(300_000, 8);
    let part = reqwest::multipart::Part::bytes(file.clone())
        .file_name("photo.jpg")
        .mime_str("image/jpeg")
        .unwrap();
    let resp = client()
        .post(file_url(&gw, "resourceType=TN"))
        .bearer_auth(ALPHA_KEY)
        .multipart(reqwest::multipart::Form::new().part("facishareFile", part))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    let npath = body["npath"].as_str().unwrap_or_default();
    assert!(npath.starts_with("TN_"), "{body}");
    let stored = sandbox.file(npath).await;
    assert_eq!(stored["sha256"], sha256_hex(&file), "{stored}");
    assert_eq!(stored["size"], file.len());
}

#[tokio::test]
async fn without_a_file_service_user_a_legacy_caller_is_403_before_any_call() {
    let (sandbox, gw) = pair(&[], |_| {});
    let (status, _, body) = upload(&gw, "filename=a.pdf", MIB, 9, &[]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["errorCode"], 940303, "{body}");
    assert_eq!(sandbox.stats().await["file_credentials"], 0);
}

/// Step 1 of the sandbox's File Service, asked directly: the signed fields.
async fn sign(sandbox: &Sandbox, size: u64) -> serde_json::Map<String, serde_json::Value> {
    let http = client();
    let trace = || uuid::Uuid::new_v4().to_string();
    let token: serde_json::Value = http
        .post(format!(
            "{}/oauth2.0/token?thirdTraceId={}",
            sandbox.url,
            trace()
        ))
        .json(
            &serde_json::json!({"appId": "sandbox-app", "appSecret": APP_SECRET,
            "permanentCode": "sandbox-permanent-code", "grantType": "app_secret"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let answer: serde_json::Value = http
        .post(format!(
            "{}/cgi/crm/v2/generatorFileUploadCredential?thirdTraceId={}",
            sandbox.url,
            trace()
        ))
        .bearer_auth(token["accessToken"].as_str().unwrap())
        .header("x-fs-ea", "sandbox_ea")
        .header("x-fs-userid", "FSUID_FILES")
        .json(
            &serde_json::json!({"data": {"resourceType": "N", "isStreamUpload": true,
            "filename": "a.pdf", "extension": "pdf", "fileSize": size, "expireTime": 600}}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["errorCode"], 0, "{answer}");
    let mut data = answer["data"].as_object().unwrap().clone();
    data.insert("link".into(), answer["traceId"].clone());
    data
}

/// What a test changes in a step-2 request: its URL, headers or body.
type Tamper = Box<dyn FnOnce(&mut String, &mut reqwest::header::HeaderMap, &mut Vec<u8>)>;

/// Step 2 to the sandbox with the signed headers, after `tamper` changed what it wants.
async fn send(
    data: &serde_json::Map<String, serde_json::Value>,
    tamper: impl FnOnce(&mut String, &mut reqwest::header::HeaderMap, &mut Vec<u8>),
) -> serde_json::Value {
    let mut url = format!(
        "{}?traceId={}&linkId={}",
        data["url"].as_str().unwrap(),
        uuid::Uuid::new_v4(),
        data["link"].as_str().unwrap()
    );
    let mut headers = reqwest::header::HeaderMap::new();
    for k in [
        "acid", "resource", "ak", "sign", "expiry", "filename", "size", "digest",
    ] {
        let name = reqwest::header::HeaderName::from_static(k);
        headers.insert(name, data[k].as_str().unwrap().parse().unwrap());
    }
    headers.insert(
        "content-type",
        data["contentType"].as_str().unwrap().parse().unwrap(),
    );
    let size: usize = data["size"].as_str().unwrap().parse().unwrap();
    let mut body = vec![1u8; size];
    tamper(&mut url, &mut headers, &mut body);
    client()
        .post(url)
        .headers(headers)
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_sandboxs_file_service_is_as_strict_as_fxiaoke_documents_it() {
    let sandbox = Sandbox::spawn(&[]);
    // Each violation of a fresh signature is `success:false`.
    let violations: Vec<(&str, Tamper)> = vec![
        (
            "the trailing / dropped",
            Box::new(|url, _, _| *url = url.replacen("/upload/?", "/upload?", 1)),
        ),
        (
            "a signed header changed",
            Box::new(|_, h, _| {
                h.insert("filename", "b.pdf".parse().unwrap());
            }),
        ),
        (
            "a signed header missing",
            Box::new(|_, h, _| {
                h.remove("digest");
            }),
        ),
        (
            "one byte fewer",
            Box::new(|_, _, b| {
                b.pop();
            }),
        ),
        (
            "another linkId",
            Box::new(|url, _, _| *url = format!("{url}x")),
        ),
    ];
    for (what, tamper) in violations {
        let data = sign(&sandbox, 1000).await;
        let answer = send(&data, tamper).await;
        assert_eq!(answer["success"], false, "{what}: {answer}");
    }
    // An honest one passes once; the same signature again is refused.
    let data = sign(&sandbox, 1000).await;
    let first = send(&data, |_, _, _| {}).await;
    assert_eq!(first["success"], true, "{first}");
    assert!(first["data"].as_str().unwrap().starts_with("N_"), "{first}");
    let again = send(&data, |_, _, _| {}).await;
    assert_eq!(again["success"], false, "single use: {again}");
    // An expired signature, by fault.
    sandbox
        .faults(Faults {
            file_expired_signatures: true,
            ..Faults::default()
        })
        .await;
    let data = sign(&sandbox, 1000).await;
    let expired = send(&data, |_, _, _| {}).await;
    assert_eq!(expired["success"], false, "{expired}");
    assert!(
        expired["message"].as_str().unwrap().contains("expired"),
        "{expired}"
    );
}

#[tokio::test]
async fn a_refused_step_2_is_502_and_an_npath_is_shared_across_replicas_on_redis() {
    let redis = RedisServer::start();
    let sandbox = Sandbox::spawn(&[]);
    let replica = || {
        Gateway::spawn(&standard(&sandbox.url).with(|c| {
            c.corp().file_service_user = some("FSUID_FILES");
            c.store = redis_store(&redis, "open");
        }))
    };
    let (a, b) = (replica(), replica());
    // The File Service refuses the upload (its `success:false`): 502 / 950204, nothing kept.
    sandbox
        .faults(Faults {
            file_upload_failures: 1,
            ..Faults::default()
        })
        .await;
    let (status, _, body) = upload(&a, "filename=r.pdf", 2 * MIB, 10, &[]).await;
    assert_eq!(
        (status, body["errorCode"].as_u64()),
        (502, Some(950204)),
        "{body}"
    );
    // Uploaded through A, claimed through B: the same npath, no File Service call.
    let (status, _, body) = upload(&a, "filename=r.pdf", 2 * MIB, 10, &[]).await;
    assert_eq!(status, 200, "{body}");
    let npath = body["npath"].as_str().unwrap().to_string();
    let before = sandbox.stats().await;
    let claim = [(
        "repr-digest",
        format!("sha-256=:{}:", hex_to_b64(&pattern_sha256(2 * MIB, 10))),
    )];
    let (status, _, body) = upload(&b, "filename=r.pdf", 2 * MIB, 10, &claim).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["npath"], npath.as_str(), "{body}");
    assert_eq!(body["deduplicated"], true, "{body}");
    assert_eq!(
        sandbox.stats().await["file_credentials"],
        before["file_credentials"]
    );
}

#[tokio::test]
async fn an_oauth_caller_asks_as_its_own_user_and_no_other() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(&standard(&sandbox.url).with(|c| {
        c.add([ClientFile {
            api_style: some("oauth"),
            act_as: Some(vec!["FSUID_OWN".into(), "FSUID_TWO".into()]),
            ..gamma()
        }]);
    }));
    let send = |user: Option<&str>| {
        let mut req = client()
            .post(file_url(&gw, "filename=o.pdf"))
            .bearer_auth(GAMMA_KEY)
            .header("content-type", "application/pdf")
            .body(vec![9u8; 70_000]);
        if let Some(u) = user {
            req = req.header("x-fs-userid", u);
        }
        req.send()
    };
    // A user outside its act_as: 403 / 940302, before any call.
    let resp = send(Some("FSUID_OTHER")).await.unwrap();
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errorCode"], 940302, "{body}");
    assert_eq!(sandbox.stats().await["file_credentials"], 0);
    // Its second user when it names it; its first when it names none (no corp user is set).
    for (asked, used) in [(Some("FSUID_TWO"), "FSUID_TWO"), (None, "FSUID_OWN")] {
        let resp = send(asked).await.unwrap();
        assert_eq!(resp.status(), 200);
        let step1 = sandbox.received().await;
        let last = step1.last().unwrap();
        assert_eq!(last["path"], "/cgi/crm/v2/generatorFileUploadCredential");
        let header = last["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == "x-fs-userid")
            .cloned();
        assert_eq!(header.map(|h| h[1].clone()), Some(used.into()), "{last}");
    }
}

#[tokio::test]
async fn check_config_names_a_bad_upload_host_pattern() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = standard("sandbox").with(|c| {
        c.corp().file_upload_hosts = Some(vec!["*.fxiaoke.com".into(), "evil host/".into()])
    });
    let (code, err) = check_config(dir.path(), &cfg);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("corps.default.file_upload_hosts"), "{err}");
}

#[tokio::test]
async fn a_chunked_body_sized_by_upload_length_is_taken_and_held_to_it() {
    let (sandbox, gw) = file_pair();
    let chunked = |declared: usize, sent: usize, seed: u8| {
        client()
            .post(file_url(&gw, "filename=c.pdf"))
            .bearer_auth(ALPHA_KEY)
            .header("upload-length", declared.to_string())
            .body(reqwest::Body::wrap_stream(pattern_stream(
                sent,
                64 * 1024,
                seed,
            )))
            .send()
    };
    let resp = chunked(3 * MIB, 3 * MIB, 11).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    let file = sandbox.file(body["npath"].as_str().unwrap()).await;
    assert_eq!(file["size"], 3 * MIB, "{file}");
    assert_eq!(file["sha256"], pattern_sha256(3 * MIB, 11));
    // A body shorter than it said: refused, step 2 aborted, nothing stored or charged.
    let completed = sandbox.stats().await["file_uploads_completed"].clone();
    let resp = chunked(3 * MIB, 2 * MIB, 12).await.unwrap();
    assert_eq!(resp.status(), 400);
    let stats = sandbox.stats().await;
    assert_eq!(stats["file_uploads_completed"], completed, "{stats}");
    let alpha = admin_entry(&gw.admin_clients().await, "alpha");
    assert_eq!(
        alpha["usage"]["bytes_today"],
        3 * MIB,
        "only the first: {alpha}"
    );
}

/// Uploads held up by a slow File Service hold a bounded amount each: the caller's reads go
/// upstream in bursts of three (`transport::FILE_BURST`), so a held-up upload holds a burst
/// being gathered, one queued and hyper's write queue, not more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_held_up_by_a_slow_file_service_cost_at_most_600_kib_each() {
    let (sandbox, gw) = pair(&[], |c| {
        c.corp().file_service_user = some("FSUID_FILES");
        c.corp().upstream_timeout = some("30s");
    });
    // Warm: the pools, the token, the allocator's first arenas.
    let (status, _, body) = upload(&gw, "filename=w.pdf", 300_000, 1, &[]).await;
    assert_eq!(status, 200, "{body}");
    sandbox
        .faults(Faults {
            upload_read_kib_per_sec: 2048,
            ..Faults::default()
        })
        .await;
    let urls = (0..32)
        .map(|i| file_url(&gw, &format!("filename=f{i}.pdf")))
        .collect();
    let each = rss_per_concurrent_upload(&gw, urls, 8 * MIB).await;
    assert!(
        each <= 600,
        "{each} KiB per File Service upload under back-pressure"
    );
}

/// A File Service that stops reading mid-file: the burst waiting for room is bounded by the
/// corp's `upstream_timeout` as a single chunk would be, the caller gets 504 / 950401, nothing
/// is recorded and the bytes come back.
#[tokio::test]
async fn a_file_service_that_stops_reading_is_504_within_the_timeout_and_records_nothing() {
    let (sandbox, gw) = pair(&[], |c| {
        c.corp().file_service_user = some("FSUID_FILES");
        c.corp().upstream_timeout = some("1s");
        c.client("alpha").bytes_per_day = some("1GiB");
    });
    sandbox
        .faults(Faults {
            upload_read_kib_per_sec: 4,
            ..Faults::default()
        })
        .await;
    let started = std::time::Instant::now();
    let (status, _, body) = upload(&gw, "filename=stall.pdf", 32 * MIB, 9, &[]).await;
    assert_eq!(
        (status, &body["errorCode"]),
        (504, &950401.into()),
        "{body}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(sandbox.stats().await["file_uploads_completed"], 0);
    let alpha = admin_entry(&gw.admin_clients().await, "alpha");
    assert_eq!(alpha["usage"]["bytes_today"], 0, "refunded: {alpha}");
}

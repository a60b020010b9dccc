//! Callers and quotas through a running gateway: each per-caller limit refuses the request
//! after the one at the limit, before any body byte is read and with zero upstream requests;
//! bytes are refunded when an upload fails or dedupes; the corp's upstream budget is shared by
//! all callers; Fxiaoke's own rate-limit answers become 429; mTLS callers; hot reload.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// The standard config plus `gamma`, a caller with limits of its own.
fn with_gamma(base_url: &str, gamma: ClientFile) -> FileConfig {
    standard(base_url).with(|c| c.add([gamma]))
}

/// A raw upload (with Content-Length) to the message route; (status, Retry-After, body).
async fn raw(gw: &Gateway, key: &str, bytes: Vec<u8>) -> (u16, Option<u64>, serde_json::Value) {
    let resp = client()
        .post(format!("{}?filename=q.jpg", gw.upload_url()))
        .bearer_auth(key)
        .header("content-type", "image/jpeg")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (status, retry, resp.json().await.unwrap_or_default())
}

/// A raw upload by gamma on its own task (to be in flight while the test goes on).
fn spawn_gamma_upload(gw: &Gateway, bytes: Vec<u8>) -> tokio::task::JoinHandle<reqwest::Response> {
    let url = format!("{}?filename=r.jpg", gw.upload_url());
    tokio::spawn(async move {
        client()
            .post(url)
            .bearer_auth(GAMMA_KEY)
            .header("content-type", "image/jpeg")
            .body(bytes)
            .send()
            .await
            .unwrap()
    })
}

#[tokio::test]
async fn request_rate_the_request_at_the_limit_passes_the_next_gets_429() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(&with_gamma(
        &sandbox.url,
        ClientFile {
            requests_per_minute: Some(5),
            ..gamma()
        },
    ));
    for n in 0..5 {
        let (status, _, body) = raw(&gw, GAMMA_KEY, unique_jpeg(1000, n)).await;
        assert_eq!(status, 200, "request {n}: {body}");
    }
    let (status, retry, body) = raw(&gw, GAMMA_KEY, unique_jpeg(1000, 99)).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["errorCode"], 942901);
    assert_eq!(retry, Some(12), "one request every 60/5 s");
    assert_eq!(sandbox.stats().await["upload_requests"], 5);
    // Other callers are not affected.
    assert_eq!(raw(&gw, ALPHA_KEY, unique_jpeg(1000, 100)).await.0, 200);
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "fxgate_quota_rejected_total{client=\"gamma\",kind=\"requests_per_minute\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn bytes_per_day_are_reserved_refunded_and_enforced_before_the_body() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(&with_gamma(
        &sandbox.url,
        ClientFile {
            bytes_per_day: some("100000"),
            ..gamma()
        },
    ));
    let a = unique_jpeg(30_000, 1);
    assert_eq!(raw(&gw, GAMMA_KEY, a.clone()).await.0, 200);
    // A dedupe hit, a refused type and an upstream failure cost no bytes.
    let (_, _, hit) = raw(&gw, GAMMA_KEY, a).await;
    assert_eq!(hit["deduplicated"], true, "{hit}");
    let mut pdf = b"%PDF-1.7".to_vec();
    pdf.resize(30_000, b' ');
    assert_eq!(raw(&gw, GAMMA_KEY, pdf).await.0, 415);
    sandbox
        .faults(Faults {
            fail_next_upload: Some(30002),
            ..Faults::default()
        })
        .await;
    let (_, _, failed) = raw(&gw, GAMMA_KEY, unique_jpeg(30_000, 2)).await;
    assert_eq!(failed["errorCode"], 30002);
    assert_eq!(
        gamma_usage(&gw.admin_clients().await)["usage"]["bytes_today"],
        30_000
    );
    // 30 000 + 60 000 fits; 20 000 more does not, and is refused before its body.
    assert_eq!(raw(&gw, GAMMA_KEY, unique_jpeg(60_000, 3)).await.0, 200);
    let before = sandbox.stats().await["upload_requests"].as_u64().unwrap();
    let (status, retry, body) = raw(&gw, GAMMA_KEY, unique_jpeg(20_000, 4)).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["errorCode"], 942901);
    assert!(body["errorDescription"]
        .as_str()
        .unwrap()
        .contains("bytes_per_day"));
    assert!(
        retry.is_some_and(|r| (1..=86_400).contains(&r)),
        "retry until CST midnight: {retry:?}"
    );
    assert_eq!(
        sandbox.stats().await["upload_requests"].as_u64().unwrap(),
        before
    );
    assert_eq!(
        gamma_usage(&gw.admin_clients().await)["usage"]["bytes_today"],
        90_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_beyond_the_limit_are_refused_at_once() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(&with_gamma(
        &sandbox.url,
        ClientFile {
            max_concurrent_uploads: Some(2),
            ..gamma()
        },
    ));
    sandbox
        .faults(Faults {
            upload_delay: Duration::from_millis(1500),
            ..Faults::default()
        })
        .await;
    let url = format!("{}?filename=c.jpg", gw.upload_url());
    let slow = (0..2u32).map(|n| {
        let url = url.clone();
        tokio::spawn(async move {
            client()
                .post(url)
                .bearer_auth(GAMMA_KEY)
                .header("content-type", "image/jpeg")
                .body(unique_jpeg(5000, n))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    });
    let slow: Vec<_> = slow.collect();
    sandbox.wait("uploads_active", 2).await;
    let (status, retry, body) = raw(&gw, GAMMA_KEY, unique_jpeg(5000, 7)).await;
    assert_eq!(status, 429, "{body}");
    assert!(body["errorDescription"]
        .as_str()
        .unwrap()
        .contains("max_concurrent_uploads"));
    assert_eq!(retry, Some(1));
    assert_eq!(
        gamma_usage(&gw.admin_clients().await)["usage"]["uploads_in_flight"],
        2
    );
    for s in slow {
        assert_eq!(s.await.unwrap(), 200);
    }
    sandbox.faults(Faults::default()).await;
    assert_eq!(raw(&gw, GAMMA_KEY, unique_jpeg(5000, 8)).await.0, 200);
    assert_eq!(sandbox.stats().await["upload_requests"], 3);
}

#[tokio::test]
async fn route_allow_list_and_per_caller_file_limit() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(&with_gamma(
        &sandbox.url,
        ClientFile {
            routes: Some(vec!["/media/upload/message".into()]),
            max_file_bytes: some("10KB"),
            ..gamma()
        },
    ));
    assert_eq!(raw(&gw, GAMMA_KEY, unique_jpeg(5_000, 1)).await.0, 200);
    let r = client()
        .post(format!("{}/media/upload?type=image", gw.url))
        .bearer_auth(GAMMA_KEY)
        .body(unique_jpeg(5_000, 2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["errorCode"],
        940301
    );
    let r = client()
        .post(format!("{}/media/download", gw.url))
        .bearer_auth(GAMMA_KEY)
        .json(&serde_json::json!({"mediaId": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let (status, _, body) = raw(&gw, GAMMA_KEY, unique_jpeg(20_000, 3)).await;
    assert_eq!(status, 413);
    assert!(
        body["errorDescription"]
            .as_str()
            .unwrap()
            .contains("is 10000"),
        "{body}"
    );
    assert_eq!(sandbox.stats().await["upload_requests"], 1);
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "fxgate_quota_rejected_total{client=\"gamma\",kind=\"route\"}"
        ),
        2.0
    );
}

#[tokio::test]
async fn the_corp_upstream_budget_is_shared_by_all_callers() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(
        &standard(&sandbox.url).with(|c| c.corp().upstream_requests_per_20s = Some(3)),
    );
    let first = unique_jpeg(2000, 1);
    let claim = repr_digest(&first);
    assert_eq!(raw(&gw, ALPHA_KEY, first.clone()).await.0, 200);
    assert_eq!(raw(&gw, ALPHA_KEY, unique_jpeg(2000, 2)).await.0, 200);
    assert_eq!(raw(&gw, BETA_KEY, unique_jpeg(2000, 3)).await.0, 200);
    let (status, retry, body) = raw(&gw, BETA_KEY, unique_jpeg(2000, 4)).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["errorCode"], 942902);
    assert!(retry.is_some_and(|r| (15..=20).contains(&r)), "{retry:?}");
    assert_eq!(sandbox.stats().await["upload_requests"], 3);
    // A dedupe hit costs no upstream call, so it still passes.
    let hit = client()
        .post(gw.upload_url())
        .bearer_auth(ALPHA_KEY)
        .header("repr-digest", claim)
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(hit["deduplicated"], true, "{hit}");
}

#[tokio::test]
async fn the_daily_call_budget_is_counted_and_exposed() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(&standard(&sandbox.url).with(|c| c.corp().daily_call_budget = Some(2)));
    assert_eq!(raw(&gw, ALPHA_KEY, unique_jpeg(2000, 1)).await.0, 200);
    assert_eq!(raw(&gw, BETA_KEY, unique_jpeg(2000, 2)).await.0, 200);
    let (status, _, body) = raw(&gw, ALPHA_KEY, unique_jpeg(2000, 3)).await;
    assert_eq!(status, 429);
    assert_eq!(body["errorCode"], 942902);
    assert!(
        body["errorDescription"].as_str().unwrap().contains("daily"),
        "{body}"
    );
    assert_eq!(
        gw.admin_clients().await["corps"]["default"]["daily_calls_left"],
        0
    );
    assert_eq!(
        metric(
            &gw.metrics().await,
            "fxgate_upstream_budget_remaining{corp=\"default\"}"
        ),
        0.0
    );
    assert_eq!(sandbox.stats().await["upload_requests"], 2);
}

#[tokio::test]
async fn fxiaoke_rate_limit_answers_become_429() {
    let (sandbox, gw) = pair(&[], |_| {});
    for code in [14001, 30004] {
        sandbox
            .faults(Faults {
                fail_next_upload: Some(code),
                ..Faults::default()
            })
            .await;
        let (status, retry, body) = raw(&gw, ALPHA_KEY, unique_jpeg(2000, code as u32)).await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(body["errorCode"], 942902);
        assert!(body["errorDescription"]
            .as_str()
            .unwrap()
            .contains(&code.to_string()));
        assert_eq!(retry, Some(if code == 14001 { 20 } else { 1 }));
    }
    // Nothing was recorded for those files.
    let (_, _, ok) = raw(&gw, ALPHA_KEY, unique_jpeg(2000, 14001)).await;
    assert_eq!(ok["deduplicated"], false);
}

#[tokio::test]
async fn an_mtls_caller_authenticates_by_certificate() {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    let sandbox = Sandbox::spawn(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fxgate test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params
        .distinguished_name
        .push(DnType::CommonName, "billing-svc");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().unwrap();
    let client_cert = client_params.signed_by(&client_key, &ca, &ca_key).unwrap();
    let server = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(p("ca.pem"), ca.pem()).unwrap();
    std::fs::write(p("cert.pem"), server.cert.pem()).unwrap();
    std::fs::write(p("key.pem"), server.key_pair.serialize_pem()).unwrap();
    let mut cfg = standard(&sandbox.url).with(|c| {
        c.server.tls_cert = Some(p("cert.pem"));
        c.server.tls_key = Some(p("key.pem"));
        c.server.client_ca = Some(p("ca.pem"));
        c.add([ClientFile {
            name: some("billing"),
            cert_subject: some("CN=billing-svc"),
            ..ClientFile::default()
        }]);
    });
    let gw = Gateway::spawn_in(dir, &cfg);
    let root = reqwest::Certificate::from_pem(server.cert.pem().as_bytes()).unwrap();
    let identity = reqwest::Identity::from_pem(
        format!("{}{}", client_cert.pem(), client_key.serialize_pem()).as_bytes(),
    )
    .unwrap();
    let with_cert = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(root.clone())
        .identity(identity)
        .build()
        .unwrap();
    let without = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(root)
        .build()
        .unwrap();
    let send = |c: &reqwest::Client, key: Option<&str>| {
        let mut r = c
            .post(gw.upload_url())
            .header("content-type", "image/jpeg")
            .body(unique_jpeg(1000, 1));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    let r = send(&with_cert, None).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        gw.logs().contains("client=\"billing\""),
        "the certificate identified caller billing"
    );
    assert_eq!(send(&without, None).await.unwrap().status(), 401);
    // A key, when sent, decides: a wrong one does not fall back to the certificate.
    assert_eq!(send(&with_cert, Some("wrong")).await.unwrap().status(), 401);
    // Key callers still work on the mTLS listener.
    assert_eq!(send(&without, Some(ALPHA_KEY)).await.unwrap().status(), 200);

    // The certificate mints an `fxg_` token (an SDK on an mTLS link), bound to it: usable
    // without the certificate while `cert_subject` names it, dead once the config no longer
    // does.
    let minted: serde_json::Value = with_cert
        .post(format!("{}/cgi/corpAccessToken/get/V2", gw.url))
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = minted["corpAccessToken"]
        .as_str()
        .expect("a token")
        .to_string();
    let use_token = || {
        let body =
            serde_json::json!({"corpAccessToken": token, "data": {"dataObjectApiName": "x"}});
        let without = without.clone();
        let url = format!("{}/cgi/crm/v2/data/query", gw.url);
        async move {
            let r = without.post(url).json(&body).send().await.unwrap();
            r.json::<serde_json::Value>().await.unwrap()["errorCode"].clone()
        }
    };
    assert_eq!(use_token().await, 0);
    cfg.client("billing").cert_subject = some("CN=billing-svc-2");
    gw.rewrite_config(&cfg);
    assert_eq!(gw.reload().await.status(), 200);
    assert_eq!(use_token().await, 20016);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_raises_a_limit_without_dropping_an_in_flight_upload() {
    let sandbox = Sandbox::spawn(&[]);
    let limited = |rpm: u32| {
        let gamma = ClientFile {
            requests_per_minute: Some(rpm),
            ..gamma()
        };
        with_gamma(&sandbox.url, gamma).with(|c| c.client("alpha").requests_per_minute = Some(2))
    };
    let gw = Gateway::spawn(&limited(1));
    assert_eq!(raw(&gw, ALPHA_KEY, unique_jpeg(1000, 1)).await.0, 200);
    assert_eq!(raw(&gw, ALPHA_KEY, unique_jpeg(1000, 2)).await.0, 200);
    sandbox
        .faults(Faults {
            upload_delay: Duration::from_millis(1500),
            ..Faults::default()
        })
        .await;
    let in_flight = spawn_gamma_upload(&gw, unique_jpeg(1000, 3));
    sandbox.wait("uploads_active", 1).await;

    gw.rewrite_config(&limited(100));
    let r = gw.reload().await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["clients"], 3);

    assert_eq!(
        in_flight.await.unwrap().status(),
        200,
        "the in-flight upload survived the reload"
    );
    sandbox.faults(Faults::default()).await;
    // Gamma's new limit applies (the old one would refuse a second request this minute)...
    assert_eq!(raw(&gw, GAMMA_KEY, unique_jpeg(1000, 4)).await.0, 200);
    // ...and alpha's unchanged counter survived: its third request this minute is refused.
    assert_eq!(raw(&gw, ALPHA_KEY, unique_jpeg(1000, 5)).await.0, 429);
    assert_eq!(
        gamma_usage(&gw.admin_clients().await)["limits"]["requests_per_minute"],
        100
    );
}

#[tokio::test]
async fn a_bad_reload_keeps_the_old_config_and_sighup_reloads() {
    let sandbox = Sandbox::spawn(&[]);
    let good = |rpm: u32| {
        let gamma = ClientFile {
            requests_per_minute: Some(rpm),
            ..gamma()
        };
        with_gamma(&sandbox.url, gamma)
    };
    let gw = Gateway::spawn(&good(1));
    // A number the file spells as a word: a typed config cannot say it, so this one is text.
    gw.rewrite_text(
        &good(1)
            .toml()
            .replace("requests_per_minute = 1", "requests_per_minute = \"lots\""),
    );
    let r = gw.reload().await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("requests_per_minute"),
        "{body}"
    );
    assert!(gw.logs().contains("reload rejected"));
    // The old rules stay: one request a minute.
    assert_eq!(raw(&gw, GAMMA_KEY, unique_jpeg(1000, 1)).await.0, 200);
    assert_eq!(raw(&gw, GAMMA_KEY, unique_jpeg(1000, 2)).await.0, 429);

    // SIGHUP applies a good file (observed through /admin/clients, bounded in time).
    gw.rewrite_config(&good(50));
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while gamma_usage(&gw.admin_clients().await)["limits"]["requests_per_minute"] != 50 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(raw(&gw, GAMMA_KEY, unique_jpeg(1000, 3)).await.0, 200);
}

/// Issue 14: an oversized `Content-Length` used to reserve the caller's daily bytes first, so a
/// caller near its quota was told 429 "until midnight" for a request that can never succeed.
#[tokio::test]
async fn an_oversized_upload_is_413_even_when_it_would_overrun_the_byte_quota() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(&with_gamma(
        &sandbox.url,
        ClientFile {
            bytes_per_day: some("1MiB"),
            ..gamma()
        },
    ));
    let answer = expect_continue(&gw, GAMMA_KEY, "/media/upload/message", 6 << 20).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("941301"), "{answer}");
    // Nothing was reserved: the day's bytes are all there for a file that fits.
    let (status, _, body) = raw(&gw, GAMMA_KEY, jpeg(512 * 1024, 3)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sandbox.stats().await["upload_requests"], 1);
}

#[tokio::test]
async fn a_reload_keeps_in_flight_reservations_and_slots() {
    // Issue 14 (low): a reload gave the caller a fresh quota object, so an upload in flight
    // kept its slot and bytes in the old one: a second upload got a second slot, and the day's
    // bytes forgot the first.
    let sandbox = Sandbox::spawn(&[]);
    let cfg = with_gamma(
        &sandbox.url,
        ClientFile {
            max_concurrent_uploads: Some(1),
            bytes_per_day: some("100000000"),
            ..gamma()
        },
    );
    let gw = Gateway::spawn(&cfg);
    sandbox
        .faults(Faults {
            upload_delay: Duration::from_millis(3000),
            ..Faults::default()
        })
        .await;
    let in_flight = spawn_gamma_upload(&gw, unique_jpeg(5000, 1));
    sandbox.wait("uploads_active", 1).await;
    let r = gw.reload().await;
    assert_eq!(r.status(), 200);
    let usage = gamma_usage(&gw.admin_clients().await);
    assert_eq!(usage["usage"]["uploads_in_flight"], 1, "{usage}");
    // The one slot is still taken by the upload that began before the reload.
    let (status, _, body) = raw(&gw, GAMMA_KEY, unique_jpeg(1000, 2)).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(in_flight.await.unwrap().status(), 200);
    let usage = gamma_usage(&gw.admin_clients().await);
    assert_eq!(usage["usage"]["bytes_today"], 5000, "{usage}");
    assert_eq!(usage["usage"]["uploads_in_flight"], 0, "{usage}");
}

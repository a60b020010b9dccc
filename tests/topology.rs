//! The store platform teams run (design §11), for real on loopback: a Redis Cluster of three
//! masters, and a master with a replica under three sentinels whose master is killed with
//! SIGKILL while two replicas of fxgate upload. Each shared thing (the corp token, the dedupe
//! index, caller quotas, the corp budget, SDK sessions) must work across both fxgate replicas,
//! with no `CROSSSLOT` anywhere, and a failover must be followed without a restart.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::topology::{cli, Cluster, Sentinels, MASTER_NAME};
use support::*;

const SDK_KEY: &str = "sdk-key-3b9d0e7c51";

/// A caller that SDKs use (acts as FSUID_A), and gamma at five requests a minute.
fn callers() -> [ClientFile; 2] {
    [
        ClientFile {
            act_as: list(&["FSUID_A"]),
            ..caller("sdk", SDK_KEY)
        },
        ClientFile {
            requests_per_minute: Some(5),
            ..gamma()
        },
    ]
}

/// A raw upload claiming its digest by `key` to `gw`: (status, JSON), bounded in time.
async fn claim(gw: &Gateway, key: &str, file: &[u8]) -> (u16, serde_json::Value) {
    let (http, url) = (client(), gw.upload_url());
    let send = claim_upload_status(&http, &url, key, file.to_vec());
    tokio::time::timeout(Duration::from_secs(15), send)
        .await
        .expect("answered within 15 s")
}

/// Every store error counted in a scrape.
fn all_errors(scrape: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with("fxgate_store_errors_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Returns once `gw` has noticed the store fail (an error counted beyond `before`: readiness
/// alone can still say "ok" from before the master died) and then found it again: it
/// followed the failover. Bounded: 20 s for each.
async fn followed(gw: &Gateway, before: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while all_errors(&gw.metrics().await) <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "no store failure noticed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.until_store_ok().await;
}

/// The store error count of `kind` in a scrape.
fn errors_of(scrape: &str, kind: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with("fxgate_store_errors_total{"))
        .filter(|l| l.contains(&format!("kind=\"{kind}\"")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_shares_tokens_dedupe_quotas_budget_and_sessions_without_crossslot() {
    let cluster = Cluster::start();
    let sandbox = Sandbox::spawn(&[]);
    let spawn = || {
        Gateway::spawn(&standard(&sandbox.url).with(|c| {
            c.store = StoreFile {
                backend: some("redis"),
                redis_mode: some("cluster"),
                redis_nodes: Some(cluster.seeds()),
                quota_fail_mode: some("closed"),
                ..StoreFile::default()
            };
            c.corp().daily_call_budget = Some(1000);
            c.add(callers());
        }))
    };
    let (a, b) = (spawn(), spawn());
    a.until_store_ok().await;
    b.until_store_ok().await;

    // Dedupe across replicas: A uploads, B's claim is a hit with A's mediaId.
    let file = unique_jpeg(4000, 1);
    let (status, first) = claim(&a, ALPHA_KEY, &file).await;
    assert_eq!(status, 200, "{first}");
    let (_, again) = claim(&b, ALPHA_KEY, &file).await;
    assert_eq!(again["deduplicated"], true, "{again}");
    assert_eq!(again["mediaId"], first["mediaId"]);
    // One token for both replicas, fetched once.
    assert_eq!(sandbox.stats().await["token_calls"], 1);
    // A delete through B evicts the entry A wrote (a script over two keys of one slot).
    let del = client()
        .post(format!("{}/media/delete", b.url))
        .bearer_auth(ALPHA_KEY)
        .json(&json!({"mediaId": first["mediaId"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    let (_, after) = claim(&a, ALPHA_KEY, &file).await;
    assert_eq!(after["deduplicated"], false, "{after}");

    // Gamma's five a minute hold across both replicas.
    let mut passed = 0;
    for i in 0..10u32 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let (status, _) = claim(gw, GAMMA_KEY, &unique_jpeg(900, 100 + i)).await;
        passed += u32::from(status == 200);
    }
    assert_eq!(passed, 5, "five a minute across both replicas");

    // The corp's daily budget is one count: both replicas report the same calls left.
    let left = |m: &str| metric(m, r#"fxgate_upstream_budget_remaining{corp="default"}"#);
    let uploads = sandbox.stats().await["upload_requests"].as_f64().unwrap();
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    assert_eq!(
        left(&ma).min(left(&mb)),
        1000.0 - uploads - 1.0,
        "a delete is a call too"
    );

    // An SDK token minted on A is accepted on B.
    let sdk = support::sdk::FxiaokeSdk::new(&a.url, "sdk", SDK_KEY, "any");
    let (token, _) = sdk.token().await;
    assert!(token.starts_with("fxg_"), "{token}");
    let query = json!({"corpAccessToken": token, "corpId": "x", "data": {"dataObjectApiName": "AccountObj"}});
    let answer: serde_json::Value = client()
        .post(format!("{}/cgi/crm/v2/data/query", b.url))
        .body(query.to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["errorCode"], 0, "{answer}");

    // Nothing was refused by the Cluster: no CROSSSLOT, no error of any kind.
    for gw in [&a, &b] {
        let m = gw.metrics().await;
        for kind in [
            "crossslot",
            "other",
            "noperm",
            "readonly",
            "oom",
            "io",
            "timeout",
        ] {
            assert_eq!(errors_of(&m, kind), 0.0, "{kind}:\n{}", gw.logs());
        }
        assert!(!gw.logs().contains("CROSSSLOT"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sentinel_failover_is_followed_without_a_restart() {
    let mut set = Sentinels::start();
    let sandbox = Sandbox::spawn(&[]);
    let spawn = || {
        Gateway::spawn(&standard(&sandbox.url).with(|c| {
            c.store = StoreFile {
                backend: some("redis"),
                redis_mode: some("sentinel"),
                redis_sentinels: Some(set.addrs()),
                redis_master_name: some(MASTER_NAME),
                quota_fail_mode: some("open"),
                timeout: some("500ms"),
                ..StoreFile::default()
            };
        }))
    };
    let (a, b) = (Arc::new(spawn()), Arc::new(spawn()));
    a.until_store_ok().await;
    b.until_store_ok().await;

    // Files recorded before the failover, and replicated (WAIT: the replica has them).
    let mut recorded = Vec::new();
    for i in 0..6u32 {
        let file = unique_jpeg(1500, i);
        let gw = if i % 2 == 0 { &a } else { &b };
        let (status, body) = claim(gw, ALPHA_KEY, &file).await;
        assert_eq!(status, 200, "{body}");
        recorded.push((file, body["mediaId"].clone()));
    }
    assert_eq!(cli(set.master.port, &["WAIT", "1", "5000"]), "1");
    let tokens_before = sandbox.stats().await["token_calls"].as_u64().unwrap();
    let errors_before = (
        all_errors(&a.metrics().await),
        all_errors(&b.metrics().await),
    );

    // A stream of uploads over both replicas while the master dies (bounded: 600 uploads
    // or until told to stop).
    let stop = Arc::new(AtomicBool::new(false));
    let stream = {
        let (a, b, stop) = (a.clone(), b.clone(), stop.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..600u32 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let gw = if i % 2 == 0 { &a } else { &b };
                statuses.push(claim(gw, BETA_KEY, &unique_jpeg(800, 10_000 + i)).await.0);
            }
            statuses
        })
    };
    let old = set.master.port;
    set.master.kill();
    let sentinel_port = set.addrs()[0].clone();
    support::topology::until(
        "the sentinels promote the replica",
        Duration::from_secs(30),
        || set.master_port() == set.replica.port,
    );
    assert_ne!(set.master_port(), old, "{sentinel_port}");
    // Both replicas follow to the new master by themselves.
    followed(&a, errors_before.0).await;
    followed(&b, errors_before.1).await;
    stop.store(true, Ordering::Relaxed);
    let statuses = stream.await.unwrap();
    assert!(statuses.len() >= 2, "the stream ran");
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every upload during the failover was served (open): {statuses:?}"
    );

    // Entries that reached the new master still hit, on either replica.
    for (n, (file, media_id)) in recorded.iter().enumerate() {
        let gw = if n % 2 == 0 { &b } else { &a };
        let (_, hit) = claim(gw, ALPHA_KEY, file).await;
        assert_eq!(hit["deduplicated"], true, "{hit}");
        assert_eq!(&hit["mediaId"], media_id);
    }
    // Sharing works on the new master: A records, B hits.
    let fresh = unique_jpeg(1200, 99);
    let (_, first) = claim(&a, ALPHA_KEY, &fresh).await;
    let (_, second) = claim(&b, ALPHA_KEY, &fresh).await;
    assert_eq!(second["deduplicated"], true, "{second}");
    assert_eq!(second["mediaId"], first["mediaId"]);
    // At most one extra token call for the corp across both replicas.
    let tokens_after = sandbox.stats().await["token_calls"].as_u64().unwrap();
    assert!(
        tokens_after <= tokens_before + 1,
        "{tokens_before} → {tokens_after}"
    );
}

/// TLS and passwords on every connection, the sentinels' included (with a password of their
/// own): fxgate logs in to the sentinels, finds the master over TLS, and after the master is
/// killed asks the sentinels again, over TLS, with their password.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinels_and_nodes_are_reached_over_tls_with_their_own_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let p = redis_pki(dir.path());
    std::fs::write(dir.path().join("password"), "node-pw\n").unwrap();
    std::fs::write(dir.path().join("sentinel-password"), "sentinel-pw\n").unwrap();
    let secured = support::topology::Secured {
        ca: p("ca.pem"),
        cert: p("server.pem"),
        key: p("server.key"),
        password: "node-pw".into(),
        sentinel_password: "sentinel-pw".into(),
    };
    let mut set = Sentinels::start_with(Some(&secured));
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(&standard(&sandbox.url).with(|c| {
        c.store = StoreFile {
            backend: some("redis"),
            redis_mode: some("sentinel"),
            redis_sentinels: Some(set.addrs()),
            redis_master_name: some(MASTER_NAME),
            redis_tls: Some(true),
            redis_ca_file: Some(p("ca.pem")),
            redis_password_file: Some(p("password")),
            redis_sentinel_password_file: Some(p("sentinel-password")),
            quota_fail_mode: some("closed"),
            timeout: some("500ms"),
            ..StoreFile::default()
        };
    }));
    gw.until_store_ok().await;
    let file = unique_jpeg(2000, 1);
    let (status, first) = claim(&gw, ALPHA_KEY, &file).await;
    assert_eq!(status, 200, "{first}");
    let node = secured_cli(&secured);
    assert_eq!(
        cli_with(&node, set.master.port, &["WAIT", "1", "5000"]),
        "1"
    );
    let errors_before = all_errors(&gw.metrics().await);

    set.master.kill();
    support::topology::until(
        "the sentinels promote the replica",
        Duration::from_secs(30),
        || set.master_port() == set.replica.port,
    );
    followed(&gw, errors_before).await;
    let (_, hit) = claim(&gw, ALPHA_KEY, &file).await;
    assert_eq!(hit["deduplicated"], true, "{hit}");
    assert_eq!(hit["mediaId"], first["mediaId"]);
    let logs = gw.logs();
    assert!(!logs.contains("node-pw") && !logs.contains("sentinel-pw"));
}

fn secured_cli(s: &support::topology::Secured) -> Vec<String> {
    ["--tls", "--cacert", &s.ca, "-a", &s.password]
        .map(String::from)
        .to_vec()
}

fn cli_with(options: &[String], port: u16, args: &[&str]) -> String {
    support::topology::cli_as(options, port, args)
}

/// A seed node or a sentinel that accepts the connection and then says nothing (a hung
/// process, a firewall that swallows packets) must not hold fxgate: it starts, says the store
/// is down and why, and serves uploads per the fail mode, each within a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_or_sentinel_that_never_answers_holds_nothing() {
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = mute.local_addr().unwrap().to_string();
    // Accepted and kept open, never read from or written to.
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = mute.accept().await {
            keep.lock().unwrap().push(tcp);
        }
    });
    let sandbox = Sandbox::spawn(&[]);
    let cluster = StoreFile {
        redis_mode: some("cluster"),
        redis_nodes: Some(vec![addr.clone()]),
        ..StoreFile::default()
    };
    let sentinel = StoreFile {
        redis_mode: some("sentinel"),
        redis_sentinels: Some(vec![addr.clone()]),
        redis_master_name: some(MASTER_NAME),
        ..StoreFile::default()
    };
    for shape in [cluster, sentinel] {
        let started = std::time::Instant::now();
        let gw = Gateway::spawn(&standard(&sandbox.url).with(|c| {
            c.store = StoreFile {
                backend: some("redis"),
                quota_fail_mode: some("open"),
                timeout: some("250ms"),
                ..shape
            };
        }));
        let text = gw
            .until_readyz("store redis: down (", Duration::from_secs(10))
            .await;
        assert!(started.elapsed() < Duration::from_secs(10), "{text}");
        let (status, body) = claim(&gw, ALPHA_KEY, &unique_jpeg(700, 5)).await;
        assert_eq!(status, 200, "{body}");
    }
}

//! No store failure is silent (design §11): a Redis that is connected and answers PING but
//! refuses fxgate's commands (full under `noeviction`, a read-only replica, an ACL user
//! without a needed command) shows in `fxgate_store_errors_total{kind}`, `fxgate_store_up` 0,
//! `/readyz?verbose` and a warn line; uploads go on per `quota_fail_mode` (open here). Real
//! redis-server processes on loopback.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// Waits (bounded: 15 s) until `/readyz?verbose` says the store is failing, then checks the
/// metrics and the log name `kind`.
async fn visible(gw: &Gateway, kind: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let verbose = loop {
        let text = reqwest::get(format!("{}/readyz?verbose", gw.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("store redis: failing") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the store never showed as failing: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "fxgate_store_up"), 0.0, "{verbose}");
    let errors: f64 = m
        .lines()
        .filter(|l| {
            l.starts_with("fxgate_store_errors_total{") && l.contains(&format!("kind=\"{kind}\""))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(errors >= 1.0, "no {kind} error counted:\n{m}");
    let logs = gw.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("WARN") && l.contains("redis command failed") && l.contains(kind)),
        "no warn line for {kind}:\n{logs}"
    );
    // Open: uploads go on, from this replica's own state.
    let r = client()
        .post(gw.upload_url())
        .bearer_auth(ALPHA_KEY)
        .header("content-type", "image/jpeg")
        .body(unique_jpeg(900, 77))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn gateway(sandbox: &Sandbox, url: &str) -> Gateway {
    let store = format!(
        "[store]\nbackend = \"redis\"\nredis_url = \"{url}\"\nquota_fail_mode = \"open\"\n"
    );
    Gateway::spawn(&config(&sandbox.url, "", &store))
}

#[tokio::test]
async fn a_full_redis_is_visible() {
    let redis = RedisServer::start();
    let sandbox = Sandbox::spawn(&[]);
    let gw = gateway(&sandbox, &redis.url());
    gw.until_store_ok().await;
    // Already over a 1-byte maxmemory: every write is refused with OOM, PING still answers.
    assert_eq!(
        redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]),
        "OK"
    );
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory", "1"]), "OK");
    visible(&gw, "oom").await;
    // Back to normal: the probe finds out, and the store is healthy again.
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory", "0"]), "OK");
    gw.until_store_ok().await;
    assert_eq!(metric(&gw.metrics().await, "fxgate_store_up"), 1.0);
}

#[tokio::test]
async fn a_read_only_redis_is_visible() {
    let master = RedisServer::start();
    let replica = RedisServer::start();
    let sandbox = Sandbox::spawn(&[]);
    let gw = gateway(&sandbox, &replica.url());
    gw.until_store_ok().await;
    let port = master.port.to_string();
    assert_eq!(replica.cli(&["REPLICAOF", "127.0.0.1", &port]), "OK");
    visible(&gw, "readonly").await;
}

#[tokio::test]
async fn an_acl_user_without_a_needed_command_is_visible() {
    let redis = RedisServer::start();
    let sandbox = Sandbox::spawn(&[]);
    // Everything on fxgate's keys except SET (the probe's command, and the dedupe index's).
    let user = [
        "ACL",
        "SETUSER",
        "fxgate",
        "on",
        ">s3cret",
        "~fxgate:*",
        "+@all",
        "-set",
    ];
    assert_eq!(redis.cli(&user), "OK");
    let url = format!("redis://fxgate:s3cret@127.0.0.1:{}", redis.port);
    let gw = gateway(&sandbox, &url);
    visible(&gw, "noperm").await;
    assert!(
        !gw.logs().contains("s3cret"),
        "the password reached the log"
    );
}

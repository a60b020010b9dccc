//! No store failure is silent (design §11): a Redis that is connected and answers PING but
//! refuses fxgate's commands (full under `noeviction`, a read-only replica, an ACL user
//! without a needed command) shows in `fxgate_store_errors_total{kind}`, `fxgate_store_up` 0,
//! `/readyz?verbose` and a warn line; uploads go on per `quota_fail_mode` (open here). Real
//! redis-server processes on loopback.

mod support;

use std::time::Duration;

use support::*;

/// Waits (bounded: 15 s) until `/readyz?verbose` says the store is failing, then checks the
/// metrics and the log name `kind`.
async fn visible(gw: &Gateway, kind: &str) {
    let verbose = gw
        .until_readyz("store redis: failing", Duration::from_secs(15))
        .await;
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
    let jpeg = unique_jpeg(900, 77);
    assert_eq!(
        raw_post(&gw.upload_url(), ALPHA_KEY, "image/jpeg", jpeg)
            .await
            .0,
        200
    );
}

fn gateway(sandbox: &Sandbox, url: &str) -> Gateway {
    Gateway::spawn(&standard(&sandbox.url).with(|c| c.store = redis_store_at(url, "open")))
}

/// A gateway on `store`.
fn on(sandbox: &Sandbox, store: StoreFile) -> Gateway {
    Gateway::spawn(&standard(&sandbox.url).with(|c| c.store = store))
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
    // The upload `visible` made was recorded in one MULTI, which the full Redis aborts
    // (EXECABORT): counted by what Redis refused, not as `other`.
    let m = gw.metrics().await;
    let record = r#"fxgate_store_errors_total{kind="oom",op="put",store="dedupe"}"#;
    assert!(metric(&m, record) >= 1.0, "{m}");
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

/// A Redis store at `url` failing closed (every upload then needs the store).
fn closed(url: &str) -> StoreFile {
    redis_store_at(url, "closed")
}

#[tokio::test]
async fn rediss_with_a_ca_an_acl_user_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let p = redis_pki(dir.path());
    let (ca, cert, key) = (p("ca.pem"), p("server.pem"), p("server.key"));
    let redis = RedisServer::start_tls(&[
        ("tls-cert-file", &cert),
        ("tls-key-file", &key),
        ("tls-ca-cert-file", &ca),
        ("tls-auth-clients", "yes"),
    ]);
    // The admin goes over TLS too: redis-cli with the client certificate.
    let acl = [
        "ACL",
        "SETUSER",
        "fxgate",
        "on",
        ">pw-from-a-file",
        "~fxgate:*",
        "+@all",
        "-@admin",
        "-@dangerous",
    ];
    let (client_cert, client_key) = (p("client.pem"), p("client.key"));
    let cli = |args: &[&str]| {
        let mut all = vec![
            "--tls",
            "--cacert",
            &ca,
            "--cert",
            &client_cert,
            "--key",
            &client_key,
        ];
        all.extend(args);
        redis.cli(&all)
    };
    assert_eq!(cli(&acl), "OK");
    // Only the ACL user can do anything now: fxgate must log in as it.
    assert_eq!(cli(&["ACL", "SETUSER", "default", "off"]), "OK");
    std::fs::write(dir.path().join("password"), "pw-from-a-file\n").unwrap();
    let sandbox = Sandbox::spawn(&[]);
    let gw = on(
        &sandbox,
        StoreFile {
            redis_username: some("fxgate"),
            redis_password_file: Some(p("password")),
            redis_ca_file: Some(ca.clone()),
            redis_cert_file: Some(p("client.pem")),
            redis_key_file: Some(p("client.key")),
            ..closed(&redis.url())
        },
    );
    gw.until_store_ok().await;
    // Closed fail mode: an upload passes only when the store works.
    let file = unique_jpeg(900, 5);
    let url = gw.upload_url();
    let up = |file: Vec<u8>| raw_post(&url, ALPHA_KEY, "image/jpeg", file);
    assert_eq!(up(file.clone()).await.0, 200);
    let (_, again) = up(file).await;
    assert_eq!(again["deduplicated"], true, "{again}");
    // The dedupe entry is in this Redis, written as the ACL user.
    assert!(cli(&[
        "--user",
        "fxgate",
        "--pass",
        "pw-from-a-file",
        "--no-auth-warning",
        "--scan",
        "--pattern",
        "fxgate:v2:{corp:default}:dedupe:*"
    ])
    .contains(":dedupe:"));
    assert!(!gw.logs().contains("pw-from-a-file"));
}

#[tokio::test]
async fn a_wrong_ca_and_a_wrong_password_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = redis_pki(dir.path());
    let (cert, key) = (p("server.pem"), p("server.key"));
    let redis = RedisServer::start_tls(&[
        ("tls-cert-file", &cert),
        ("tls-key-file", &key),
        ("tls-ca-cert-file", &p("ca.pem")),
        ("tls-auth-clients", "no"),
    ]);
    let sandbox = Sandbox::spawn(&[]);
    // A CA that did not sign Redis's certificate: the store never comes up, and says why.
    let wrong = StoreFile {
        redis_ca_file: Some(p("other-ca.pem")),
        ..closed(&redis.url())
    };
    let gw = on(&sandbox, wrong);
    let text = gw
        .until_readyz("store redis: down (", Duration::from_secs(10))
        .await;
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    assert!(!gw.ready().await, "closed fail mode needs the store");
    // A password Redis does not accept: a noperm-kind failure, visible, never logged.
    std::fs::write(dir.path().join("password"), "not-the-password\n").unwrap();
    let bad = StoreFile {
        redis_ca_file: Some(p("ca.pem")),
        redis_password_file: Some(p("password")),
        ..closed(&redis.url())
    };
    let gw = on(&sandbox, bad);
    let text = gw
        .until_readyz("store redis: down (", Duration::from_secs(10))
        .await;
    assert!(!text.contains("not-the-password") && !gw.logs().contains("not-the-password"));
}

#[tokio::test]
async fn check_config_accepts_each_store_shape_and_names_the_bad_key_of_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = redis_pki(dir.path());
    std::fs::write(dir.path().join("password"), "pw\n").unwrap();
    let check =
        |store: StoreFile| check_config(dir.path(), &standard("sandbox").with(|c| c.store = store));
    let (code, err) = check(StoreFile {
        redis_ca_file: Some(p("ca.pem")),
        ..closed("redis://127.0.0.1:6379")
    });
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("store.redis_ca_file") && err.contains("rediss://"),
        "{err}"
    );
    let (code, err) = check(StoreFile {
        redis_password_file: Some(p("password")),
        ..closed("redis://u:inline@127.0.0.1:6379")
    });
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("store.redis_password_file") && !err.contains("inline"),
        "{err}"
    );
    // Each mode's keys: missing, stray or malformed ones are named.
    let broken = [
        (some("cluster"), None, None, None, None, "store.redis_nodes"),
        (
            some("sentinel"),
            list(&["127.0.0.1:26379"]),
            None,
            None,
            None,
            "store.redis_master_name",
        ),
        (
            some("sentinel"),
            None,
            some("m"),
            None,
            None,
            "store.redis_sentinels",
        ),
        (
            some("cluster"),
            None,
            None,
            list(&["no-port"]),
            None,
            "store.redis_nodes",
        ),
        (
            None,
            None,
            None,
            list(&["127.0.0.1:7000"]),
            None,
            "store.redis_nodes",
        ),
        (None, None, None, None, Some(true), "store.redis_tls"),
        (some("etcd"), None, None, None, None, "store.redis_mode"),
    ];
    for (mode, sentinels, master, nodes, tls, key) in broken {
        let (code, err) = check(StoreFile {
            redis_mode: mode,
            redis_sentinels: sentinels,
            redis_master_name: master,
            redis_nodes: nodes,
            redis_tls: tls,
            ..closed("rediss://127.0.0.1:6379")
        });
        assert_eq!(code, Some(2), "{key}: {err}");
        assert!(err.contains(key), "{key}: {err}");
    }
    // Sentinel and Cluster take no `redis_url`.
    let no_url = StoreFile {
        redis_url: None,
        ..closed("unused")
    };
    // TLS files with sentinels or nodes need `redis_tls`.
    let (code, err) = check(StoreFile {
        redis_mode: some("cluster"),
        redis_nodes: list(&["127.0.0.1:7000"]),
        redis_ca_file: Some(p("ca.pem")),
        ..no_url.clone()
    });
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("store.redis_ca_file") && err.contains("redis_tls"),
        "{err}"
    );
    // Each shape of design §11 is accepted: Sentinel and Cluster, over TLS with an ACL user.
    // With a `redis_url` beside them (which they would ignore) each is refused, naming it.
    std::fs::write(dir.path().join("sentinel-password"), "spw\n").unwrap();
    for shape in [
        StoreFile {
            redis_mode: some("sentinel"),
            redis_sentinels: list(&["10.0.0.5:26379", "10.0.0.6:26379"]),
            redis_master_name: some("fxgate"),
            redis_sentinel_username: some("sentinel-user"),
            redis_sentinel_password_file: Some(p("sentinel-password")),
            redis_tls: Some(true),
            redis_ca_file: Some(p("ca.pem")),
            redis_username: some("fxgate"),
            redis_password_file: Some(p("password")),
            ..no_url.clone()
        },
        StoreFile {
            redis_mode: some("cluster"),
            redis_nodes: list(&["redis-0:6379", "redis-1:6379"]),
            redis_tls: Some(true),
            redis_ca_file: Some(p("ca.pem")),
            redis_username: some("fxgate"),
            redis_password_file: Some(p("password")),
            ..no_url.clone()
        },
    ] {
        let (code, err) = check(shape.clone());
        assert_eq!(code, Some(0), "{err}");
        let (code, err) = check(StoreFile {
            redis_url: some("redis://10.0.0.9:6379"),
            ..shape
        });
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("store.redis_url"), "{err}");
    }
    let (code, err) = check(StoreFile {
        redis_ca_file: Some(p("ca.pem")),
        redis_username: some("fxgate"),
        redis_password_file: Some(p("password")),
        ..closed("rediss://127.0.0.1:6379")
    });
    assert_eq!(code, Some(0), "{err}");
}

//! The server around the handlers: TLS with HTTP/2, graceful shutdown with an upload in
//! flight, the header-read and idle timeouts, the lingering close, secrets kept out of the logs, and the CLI's config checks.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn tls_listener_speaks_http2_and_http1() {
    let sandbox = Sandbox::spawn(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
    let file = |name: &str| Some(dir.path().join(name).display().to_string());
    let cfg = standard(&sandbox.url).with(|c| {
        c.server.tls_cert = file("cert.pem");
        c.server.tls_key = file("key.pem");
    });
    let gw = Gateway::spawn_in(dir, &cfg);
    assert!(gw.url.starts_with("https://"));
    let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    for http2 in [true, false] {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(root.clone());
        if !http2 {
            builder = builder.http1_only();
        }
        let http = builder.build().unwrap();
        let file = jpeg(50_000, 4);
        let part = reqwest::multipart::Part::bytes(file.clone()).file_name("t.jpg");
        let resp = http
            .post(gw.upload_url())
            .bearer_auth(ALPHA_KEY)
            .multipart(reqwest::multipart::Form::new().part("media", part))
            .send()
            .await
            .unwrap();
        let expected = if http2 {
            reqwest::Version::HTTP_2
        } else {
            reqwest::Version::HTTP_11
        };
        assert_eq!(resp.version(), expected);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["errorCode"], 0, "{body}");
        assert_eq!(
            sandbox.media(body["mediaId"].as_str().unwrap()).await["sha256"],
            sha256_hex(&file)
        );
    }
    // Plain HTTP on the TLS port gets nowhere.
    let plain = reqwest::get(gw.url.replace("https://", "http://") + "/media/upload/message").await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
}

#[tokio::test]
async fn sigterm_lets_the_in_flight_upload_finish_and_stops_accepting() {
    let (sandbox, mut gw) = pair(&[], |_| {});
    // Fxiaoke takes 1.5 s to answer this upload.
    sandbox
        .faults(Faults {
            upload_delay: Duration::from_millis(1500),
            ..Faults::default()
        })
        .await;
    let http = client();
    let url = gw.upload_url();
    let in_flight = tokio::spawn(async move {
        upload_multipart(&http, &url, ALPHA_KEY, jpeg(100_000, 1), "s.jpg").await
    });
    sandbox.wait("uploads_active", 1).await;
    gw.terminate();
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["errorCode"], 0, "{body}");
    // The listener closed before the drain began.
    let addr = gw.url.trim_start_matches("http://").to_string();
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "still accepting after SIGTERM"
    );
    let status = gw.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    assert!(gw.logs().contains("SIGTERM"));
}

#[tokio::test]
async fn beyond_max_inflight_requests_are_shed_with_503_and_the_next_one_is_served() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(&standard(&sandbox.url).with(|c| c.server.max_inflight = Some(1)));
    // Fxiaoke takes 1.5 s to answer the first upload, which holds the only place.
    sandbox
        .faults(Faults {
            upload_delay: Duration::from_millis(1500),
            ..Faults::default()
        })
        .await;
    let http = client();
    let url = gw.upload_url();
    let in_flight = tokio::spawn({
        let http = http.clone();
        async move { upload_multipart(&http, &url, ALPHA_KEY, jpeg(1000, 1), "a.jpg").await }
    });
    sandbox.wait("uploads_active", 1).await;
    let (status, headers, body) =
        upload_multipart(&http, &gw.upload_url(), ALPHA_KEY, jpeg(1000, 2), "b.jpg").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["errorCode"], 950303, "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(in_flight.await.unwrap().0, 200);
    sandbox.faults(Faults::default()).await;
    let (status, _, body) =
        upload_multipart(&http, &gw.upload_url(), ALPHA_KEY, jpeg(1000, 3), "c.jpg").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(metric(&gw.metrics().await, "fxgate_shed_total"), 1.0);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(
        &standard(&sandbox.url).with(|c| c.server.request_header_timeout = some("1s")),
    );
    let addr = gw.url.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"POST /media/upload/message HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    // The server ends the connection (EOF or a 408) well before this generous bound.
    let read = tokio::time::timeout(Duration::from_secs(8), tcp.read(&mut buf)).await;
    let n = read
        .expect("connection still open after the header timeout")
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
}

/// Reads until the peer closes; how long that took, or `None` if it stayed open past `bound`.
async fn time_to_close(tcp: &mut tokio::net::TcpStream, bound: Duration) -> Option<Duration> {
    let started = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(bound, async {
        while tcp.read(&mut buf).await.map(|n| n > 0).unwrap_or(false) {}
    })
    .await
    .ok()
    .map(|()| started.elapsed())
}

#[tokio::test]
async fn idle_connections_are_closed_on_every_listener() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(&standard(&sandbox.url).with(|c| c.server.idle_timeout = some("1s")));
    let gateway = gw.url.trim_start_matches("http://").to_string();
    let admin = gw.admin.trim_start_matches("http://").to_string();
    let h2c_preface: &[u8] =
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let keep_alive = format!("GET /healthz HTTP/1.1\r\nHost: {admin}\r\n\r\n");
    let cases: [(&str, &str, &[u8]); 4] = [
        ("silent client, gateway", &gateway, b""),
        ("silent client, admin", &admin, b""),
        ("h2c after its preface", &gateway, h2c_preface),
        // The header timeout (10 s) would close this one only well after the bound below.
        (
            "keep-alive after one request",
            &admin,
            keep_alive.as_bytes(),
        ),
    ];
    for (case, addr, first) in cases {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(first).await.unwrap();
        let closed = time_to_close(&mut tcp, Duration::from_secs(6)).await;
        let took = closed.unwrap_or_else(|| panic!("{case}: still open after 6 s"));
        assert!(
            took >= Duration::from_millis(900),
            "{case}: closed early, {took:?}"
        );
    }
}

#[tokio::test]
async fn a_client_that_writes_its_whole_body_before_reading_still_gets_the_413() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(&standard(&sandbox.url));
    let addr = gw.url.trim_start_matches("http://").to_string();
    let len = 16usize << 20;
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /media/upload/message HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ALPHA_KEY}\r\n\
         Content-Type: image/jpeg\r\nContent-Length: {len}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // As Python's http.client does: the whole body first, the answer after. Without a
    // lingering close the kernel resets the connection and this write (or the read) fails.
    tcp.write_all(&vec![0u8; len])
        .await
        .expect("the body is written");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("the answer arrives")
        .expect("the answer is read, not reset");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("941301"), "{answer}");
    assert_eq!(sandbox.stats().await["upload_requests"], 0);
}

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let (sandbox, gw) = pair(&[], |c| c.log.format = some("json"));
    let http = client();
    // Success, failures, a revocation and a download: every code path that touches a token.
    let (_, _, body) =
        upload_multipart(&http, &gw.upload_url(), ALPHA_KEY, jpeg(10_000, 1), "a.jpg").await;
    let id = body["mediaId"].as_str().unwrap().to_string();
    upload_multipart(&http, &gw.upload_url(), "wrong-key", jpeg(100, 1), "a.jpg").await;
    upload_multipart(
        &http,
        &gw.upload_url(),
        BETA_KEY,
        b"not an image".to_vec(),
        "a.jpg",
    )
    .await;
    sandbox
        .faults(Faults {
            revoke_tokens: true,
            ..Faults::default()
        })
        .await;
    upload_multipart(&http, &gw.upload_url(), ALPHA_KEY, jpeg(10_000, 2), "b.jpg").await;
    let req = serde_json::json!({"mediaId": id, "mediaTypeDesc": "IMAGE"});
    let r = http
        .post(format!("{}/media/download", gw.url))
        .bearer_auth(BETA_KEY)
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let metrics = gw.metrics().await;

    let tokens = sandbox.tokens().await;
    assert!(tokens.len() >= 2, "{tokens:?}");
    let logs = gw.logs();
    assert!(
        logs.contains("\"message\":\"request\""),
        "JSON access log lines expected"
    );
    for secret in tokens.iter().map(String::as_str).chain([
        APP_SECRET,
        ALPHA_KEY,
        BETA_KEY,
        "sandbox-permanent-code",
    ]) {
        assert!(!logs.contains(secret), "a secret reached the logs");
        assert!(!metrics.contains(secret), "a secret reached the metrics");
    }
    assert!(
        !logs.contains("corpAccessToken="),
        "a URL holding the token was logged"
    );
}

fn fxgate(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fxgate"));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn hash_key_prints_the_sha256() {
    let (code, out, _) = fxgate(&["hash-key"], Some("fxgate-demo-key\n"), &[]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), sha256_hex(b"fxgate-demo-key"));
    let (code, _, err) = fxgate(&["hash-key"], Some(""), &[]);
    assert_ne!(code, 0);
    assert!(err.contains("no key"));
}

#[test]
fn check_config_masks_secrets_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let path_s = path.to_str().unwrap();
    std::fs::write(dir.path().join("secret"), "file-held-secret\n").unwrap();
    let good = standard("sandbox").with(|c| {
        c.corp().app_secret = None;
        c.corp().app_secret_file = Some(dir.path().join("secret").display().to_string());
    });
    std::fs::write(&path, good.toml()).unwrap();
    let (code, out, err) = fxgate(&["check-config", "--config", path_s], None, &[]);
    assert_eq!(code, 0, "{err}");
    let effective: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(effective["corps"]["default"]["app_secret"], "****");
    assert_eq!(effective["upload"]["message_max_bytes"], 5 * 1024 * 1024);
    assert!(!out.contains("file-held-secret") && !out.contains("sandbox-permanent-code"));

    // Environment overrides win, and a bad one is named.
    let (code, out, _) = fxgate(
        &["check-config", "--config", path_s],
        None,
        &[("FXGATE__UPLOAD__MESSAGE_MAX_BYTES", "2MiB")],
    );
    assert_eq!(code, 0);
    assert!(out.contains(&(2 * 1024 * 1024).to_string()));
    let (code, _, err) = fxgate(
        &["check-config", "--config", path_s],
        None,
        &[("FXGATE__SERVER__LISTEN", "nowhere")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("server.listen"), "{err}");

    let bad = |edit: Edit| good.clone().with(edit).toml();
    for (bad, key) in [
        (bad(|c| c.dedupe.ttl = some("forever")), "dedupe.ttl"),
        (
            bad(|c| c.upload.message_max_bytes = some("5 parsecs")),
            "upload.message_max_bytes",
        ),
        (
            bad(|c| c.corp().refresh_at = Some(1.5)),
            "corps.default.refresh_at",
        ),
        (bad(|c| c.store.backend = some("etcd")), "store.backend"),
        // A key that does not exist: only text can say it.
        (
            good.toml().replace("[server]", "[server]\nlisten_port = 1"),
            "listen_port",
        ),
        (bad(|c| c.server.workers = Some(0)), "server.workers"),
        (bad(|c| c.server.workers = Some(1000)), "server.workers"),
        (
            bad(|c| c.clients[1].name = some("alpha")),
            "clients[1].name",
        ),
        (
            bad(|c| c.clients[1].key_sha256 = some("abc")),
            "clients[1].key_sha256",
        ),
        (
            bad(|c| c.corp().base_url = some("ftp://x")),
            "corps.default.base_url",
        ),
    ] {
        std::fs::write(&path, &bad).unwrap();
        let (code, _, err) = fxgate(&["check-config", "--config", path_s], None, &[]);
        assert_eq!(code, 2, "{bad}");
        assert!(err.contains(key), "expected {key} in: {err}");
    }
}

/// `fxgate healthcheck`, the probe of the shell-less image, against the real binary: 0 while
/// /healthz (or with --ready, /readyz) answers 200, 1 with the reason otherwise, and never
/// longer than its timeout against a listener that accepts and then says nothing.
#[tokio::test]
async fn healthcheck_exits_by_the_admin_listeners_answer_within_its_timeout() {
    let (_sandbox, gw) = pair_holding_token().await;
    // `fxgate healthcheck --admin <admin> <extra…>`.
    let probe = |admin: &str, extra: &[&str]| {
        fxgate(
            &[&["healthcheck", "--admin", admin], extra].concat(),
            None,
            &[],
        )
    };
    let admin = gw.admin.trim_start_matches("http://").to_string();
    for extra in [&[][..], &["--ready"]] {
        let (code, _, err) = probe(&admin, extra);
        assert_eq!(code, 0, "{extra:?}: {err}");
    }

    // Alive but not ready: the sandbox refuses this gateway's app secret.
    let (_other, unready) = pair(&["--app-secret", "not-the-gateways"], |_| {});
    let admin = unready.admin.trim_start_matches("http://").to_string();
    let (code, _, err) = probe(&admin, &[]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = probe(&admin, &["--ready"]);
    assert_eq!(code, 1);
    assert!(err.contains("/readyz: 503"), "{err}");

    // Nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let (code, _, err) = probe(&addr, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("refused"), "{err}");

    // A listener that accepts and never answers, and one that answers a byte every 100 ms
    // (60 at most): either way the probe gives up at its one 300 ms deadline.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let trickle = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let trickle_addr = trickle.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        use std::io::Write;
        if let Ok((mut conn, _)) = trickle.accept() {
            for _ in 0..60 {
                if conn.write_all(b"H").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    for addr in [mute.local_addr().unwrap().to_string(), trickle_addr] {
        let started = std::time::Instant::now();
        let (code, _, err) = probe(&addr, &["--timeout", "300ms"]);
        assert_eq!(code, 1, "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{addr}: took {:?}",
            started.elapsed()
        );
    }
    drop(mute);
}

/// The image's own config starts, is healthy, and lets no one in: the README's demo key (and
/// any other) is refused, because the image defines no callers.
#[tokio::test]
async fn the_image_config_serves_no_caller() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/deploy/image.toml")).unwrap();
    let mut image: FileConfig = toml::from_str(&text).expect("the image's config parses");
    assert!(image.clients.is_empty());
    // On loopback and free ports instead of the image's 0.0.0.0:8080 and :9090.
    image.server.listen = some("127.0.0.1:0");
    image.server.admin_listen = some("127.0.0.1:0");
    let gw = Gateway::spawn(&image);
    let admin = gw.admin.trim_start_matches("http://").to_string();
    let (code, _, err) = fxgate(&["healthcheck", "--admin", &admin], None, &[]);
    assert_eq!(code, 0, "{err}");
    for key in ["fxgate-demo-key", ALPHA_KEY] {
        let (status, _, body) =
            upload_multipart(&client(), &gw.upload_url(), key, jpeg(100, 1), "x.jpg").await;
        assert_eq!(status, 401, "{body}");
    }
}

/// A real memory cgroup (v1 or v2, whichever this machine's memory controller is on) with a
/// limit, for running fxgate under it. Needs root, as CI has.
struct MemoryCgroup {
    dir: std::path::PathBuf,
}

impl MemoryCgroup {
    fn create(limit: u64) -> Self {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let name = format!("fxgate-test-{}", std::process::id());
        for (parent, file) in fxgate::dedupe::fits::candidates(&own) {
            let dir = parent.join(&name);
            if std::fs::create_dir_all(&dir).is_ok() {
                // A v2 directory without the memory controller has no limit file to write.
                if std::fs::write(dir.join(file), limit.to_string()).is_ok() {
                    return Self { dir };
                }
                let _ = std::fs::remove_dir(&dir);
            }
        }
        panic!("no writable memory cgroup (this test needs root and a memory controller): {own}");
    }

    /// `fxgate args…`, moved into this cgroup before it starts (by a shell that then execs it).
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
                self.dir.display()
            ))
            .arg(env!("CARGO_BIN_EXE_fxgate"))
            .args(args);
        cmd
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn serve_refuses_a_dedupe_index_that_would_not_fit_in_half_its_cgroup_memory_limit() {
    let cgroup = MemoryCgroup::create(64 * 1024 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fxgate.toml");
    let cfg = |max_entries: u64| {
        standard("sandbox")
            .with(|c| c.dedupe.max_entries = Some(max_entries))
            .toml()
    };

    // 1 M entries at 150 bytes: 143 MiB, against 32 MiB (half of 64).
    std::fs::write(&path, cfg(1_000_000)).unwrap();
    let path_s = path.to_str().unwrap();
    for sub in ["serve", "check-config"] {
        let out = cgroup.command(&[sub, "--config", path_s]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{sub}: {err}");
        for named in [
            "dedupe.max_entries",
            "1000000 entries",
            "143 MiB",
            "memory limit of 64 MiB",
            "at most 223696",
        ] {
            assert!(err.contains(named), "{sub}: {named:?} not in {err}");
        }
    }

    // 200 000 entries (29 MiB) fit: it serves.
    std::fs::write(&path, cfg(200_000)).unwrap();
    let mut child = cgroup
        .command(&["serve", "--config", path_s])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.contains("listening"), "{first}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn check_config_opens_every_file_serve_would_and_fxgate_config_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fxgate.toml");
    let missing = dir.path().join("no-such-cert.pem");
    let broken = standard("sandbox").with(|c| {
        c.server.tls_cert = Some(missing.display().to_string());
        c.server.tls_key = Some(missing.display().to_string());
    });
    std::fs::write(&path, broken.toml()).unwrap();
    let path_s = path.to_str().unwrap();
    let (code, _, err) = fxgate(&["check-config", "--config", path_s], None, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("server.tls_cert"), "{err}");
    // Without --config, $FXGATE_CONFIG names the file (here: the same broken one).
    let (code, _, err) = fxgate(&["check-config"], None, &[("FXGATE_CONFIG", path_s)]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(path_s) && err.contains("server.tls_cert"),
        "{err}"
    );
    std::fs::write(&path, standard("sandbox").toml()).unwrap();
    let (code, _, err) = fxgate(&["check-config"], None, &[("FXGATE_CONFIG", path_s)]);
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn a_second_sigterm_cuts_the_drain_short_with_exit_code_3() {
    let (sandbox, mut gw) = pair(&[], |_| {});
    // Fxiaoke takes 30 s to answer; the drain would wait `shutdown_grace` (10 s) for it.
    sandbox
        .faults(Faults {
            upload_delay: Duration::from_millis(30_000),
            ..Faults::default()
        })
        .await;
    let http = client();
    let url = gw.upload_url();
    let _in_flight = tokio::spawn(async move {
        upload_multipart(&http, &url, ALPHA_KEY, jpeg(1000, 1), "s.jpg").await
    });
    sandbox.wait("uploads_active", 1).await;
    gw.terminate();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.logs().contains("SIGTERM: shutting down") {
        assert!(
            Instant::now() < deadline,
            "the first SIGTERM was not logged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cut = Instant::now();
    gw.terminate();
    let status = gw.wait_exit(Duration::from_secs(8));
    assert_eq!(status.code(), Some(3), "{status:?}");
    assert!(
        cut.elapsed() < Duration::from_secs(5),
        "{:?}",
        cut.elapsed()
    );
    assert!(gw.logs().contains("second signal"));
}

/// `fxgate sandbox` as a container's PID 1 (compose's `replicas` profile): its health probe
/// passes, and SIGTERM (`docker stop`) ends it at once with success.
#[tokio::test]
async fn the_standalone_sandbox_answers_its_probe_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fxgate"))
        .args(["sandbox", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = support::read_listening(&mut child);
    let addr = line["sandbox"].as_str().unwrap().to_string();
    let probe = Command::new(env!("CARGO_BIN_EXE_fxgate"))
        .args(["healthcheck", "--admin", &addr])
        .output()
        .unwrap();
    assert!(probe.status.success(), "{probe:?}");
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // Bounded: a sandbox that ignored SIGTERM is still running after 10 s and the test fails.
    let pid = child.id();
    let exited = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await;
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    let status = exited.expect("exited within 10 s").unwrap().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

//! Credentials that rotate without a restart (issue 15, part 6): a caller's keys with an overlap
//! window, the TLS certificate and client CA replaced on disk while connections are open, and
//! the config file watched (a ConfigMap update reaches every pod without a SIGHUP).

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use support::*;

/// A self-signed server certificate for 127.0.0.1.
struct ServerCert {
    cert: String,
    key: String,
    der: Vec<u8>,
}

fn server_cert() -> ServerCert {
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    ServerCert {
        cert: c.cert.pem(),
        key: c.key_pair.serialize_pem(),
        der: c.cert.der().to_vec(),
    }
}

/// Replaces a file the way Kubernetes and `mv` do: a new file renamed over the old one.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Returns once the gateway's scrape shows `series` at `value` (the watcher polls every 50 ms
/// here; at most 10 s).
async fn until_metric(gw: &Gateway, series: &str, value: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = gw.metrics().await;
        if metric(&scrape, series) == value {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} never reached {value}:\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Returns once the first refused reload of `what` (`tls`, `config`) is counted, and checks
/// that `fxgate_reload_ok` says so.
async fn until_refused(gw: &Gateway, what: &str) {
    let refused = format!(r#"fxgate_reloads_total{{result="error",what="{what}"}}"#);
    until_metric(gw, &refused, 1.0).await;
    let ok = format!(r#"fxgate_reload_ok{{what="{what}"}}"#);
    assert_eq!(metric(&gw.metrics().await, &ok), 0.0, "{ok}");
}

/// The standard config serving TLS from `dir`'s cert.pem and key.pem, watched every 50 ms.
fn tls_config(sandbox: &Sandbox, dir: &Path) -> FileConfig {
    let p = |name: &str| Some(dir.join(name).display().to_string());
    standard(&sandbox.url).with(|c| {
        c.server.tls_cert = p("cert.pem");
        c.server.tls_key = p("key.pem");
        c.server.watch_interval = some("50ms");
    })
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One TLS connection to the gateway trusting `roots`: the certificate the gateway presented,
/// and an HTTP/1.1 sender on that connection.
async fn connect(gw: &Gateway, roots: &[&[u8]]) -> (Vec<u8>, Sender) {
    let mut store = rustls::RootCertStore::empty();
    for der in roots {
        store.add(der.to_vec().into()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    let addr = gw.url.trim_start_matches("https://");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    (presented, sender)
}

/// An upload as alpha on `sender`'s connection; the status.
async fn upload_on(sender: &mut Sender, n: u32) -> u16 {
    let req = http::Request::post("/media/upload/message")
        .header("host", "127.0.0.1")
        .header("authorization", format!("Bearer {ALPHA_KEY}"))
        .header("content-type", "image/jpeg")
        .body(Full::new(Bytes::from(unique_jpeg(1000, n))))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    // Read to the end, so the connection can carry the next request.
    resp.into_body().collect().await.unwrap();
    status
}

/// The certificate and key replaced on disk (a half-done rotation first: the new certificate
/// before its key, which is refused and leaves the old pair in force): new connections get
/// the new certificate, a connection opened before keeps working, nothing restarts.
#[tokio::test]
async fn a_certificate_replaced_on_disk_serves_new_connections_and_open_ones_keep_working() {
    let sandbox = Sandbox::spawn(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (server_cert(), server_cert());
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &old.cert).unwrap();
    std::fs::write(&key, &old.key).unwrap();
    let cfg = tls_config(&sandbox, dir.path());
    let gw = Gateway::spawn_in(dir, &cfg);
    let roots = [&old.der[..], &new.der[..]];

    let (presented, mut open) = connect(&gw, &roots).await;
    assert!(presented == old.der, "the first certificate is served");
    assert_eq!(upload_on(&mut open, 1).await, 200);

    replace(&cert, &new.cert);
    until_refused(&gw, "tls").await;
    assert!(
        connect(&gw, &roots).await.0 == old.der,
        "the old pair stays"
    );
    assert!(gw.logs().contains("TLS reload refused"));

    replace(&key, &new.key);
    until_metric(&gw, r#"fxgate_reloads_total{result="ok",what="tls"}"#, 1.0).await;
    let (presented, mut fresh) = connect(&gw, &roots).await;
    assert!(
        presented == new.der,
        "a new connection gets the new certificate"
    );
    assert_eq!(upload_on(&mut fresh, 2).await, 200);
    // The connection from before the rotation carries on.
    assert_eq!(upload_on(&mut open, 3).await, 200);
    assert_eq!(upload_on(&mut open, 4).await, 200);
    assert_eq!(
        metric(&gw.metrics().await, r#"fxgate_reload_ok{what="tls"}"#),
        1.0
    );
}

/// A CA with one client certificate it signed.
struct Ca {
    pem: String,
    client: reqwest::Identity,
}

fn ca_with_client(cn: &str) -> Ca {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("CA of {cn}"));
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    Ca {
        pem: ca.pem(),
        client: reqwest::Identity::from_pem(
            format!("{}{}", cert.pem(), key.serialize_pem()).as_bytes(),
        )
        .unwrap(),
    }
}

/// The client CA bundle replaced on disk: a caller whose certificate the new CA signed is
/// refused before and authenticated after, on a new connection, without a restart.
#[tokio::test]
async fn a_client_ca_replaced_on_disk_admits_the_callers_it_signed() {
    let sandbox = Sandbox::spawn(&[]);
    let dir = tempfile::tempdir().unwrap();
    let server = server_cert();
    let (old_ca, new_ca) = (ca_with_client("billing-svc"), ca_with_client("billing-svc"));
    std::fs::write(dir.path().join("cert.pem"), &server.cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), &server.key).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &old_ca.pem).unwrap();
    let cfg = tls_config(&sandbox, dir.path()).with(|c| {
        c.server.client_ca = Some(ca.display().to_string());
        c.add([ClientFile {
            name: some("billing"),
            cert_subject: some("CN=billing-svc"),
            ..ClientFile::default()
        }]);
    });
    let gw = Gateway::spawn_in(dir, &cfg);
    let root = reqwest::Certificate::from_pem(server.cert.as_bytes()).unwrap();
    // A new client each time: a new connection, a new handshake.
    let upload = || {
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(root.clone())
            .identity(new_ca.client.clone())
            .build()
            .unwrap();
        let url = gw.upload_url();
        async move {
            http.post(url)
                .header("content-type", "image/jpeg")
                .body(unique_jpeg(1000, 7))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    };
    assert!(
        upload().await.is_err(),
        "a certificate the configured CA did not sign fails the handshake"
    );
    replace(&ca, &new_ca.pem);
    until_metric(&gw, r#"fxgate_reloads_total{result="ok",what="tls"}"#, 1.0).await;
    assert_eq!(upload().await.unwrap(), 200);
    assert!(gw.logs().contains("client=\"billing\""));
}

/// The config file rewritten, no signal sent: a caller added to it is admitted once the
/// watcher has seen the change; a broken file is refused, counted, and the callers in force
/// keep working.
#[tokio::test]
async fn a_changed_config_file_is_applied_without_a_signal() {
    let sandbox = Sandbox::spawn(&[]);
    let cfg = standard(&sandbox.url).with(|c| c.server.watch_interval = some("50ms"));
    let gw = Gateway::spawn(&cfg);
    let http = client();
    let upload = |key: &'static str, n: u32| {
        let (http, url) = (http.clone(), gw.upload_url());
        async move {
            upload_multipart(&http, &url, key, unique_jpeg(500, n), "a.jpg")
                .await
                .0
        }
    };
    assert_eq!(upload(GAMMA_KEY, 1).await, 401);

    gw.rewrite_config(&cfg.clone().with(|c| c.add([gamma()])));
    until_metric(
        &gw,
        r#"fxgate_reloads_total{result="ok",what="config"}"#,
        1.0,
    )
    .await;
    assert_eq!(upload(GAMMA_KEY, 2).await, 200);

    // A caller without a key or a certificate: a file the gateway must refuse.
    gw.rewrite_config(&cfg.clone().with(|c| {
        c.add([ClientFile {
            name: some("broken"),
            ..ClientFile::default()
        }])
    }));
    until_refused(&gw, "config").await;
    assert!(gw.logs().contains("configuration reload rejected"));
    assert_eq!(
        upload(GAMMA_KEY, 3).await,
        200,
        "the last good config stays"
    );
    assert_eq!(upload(ALPHA_KEY, 4).await, 200);
}

/// Rotating a caller's key with an overlap: the old key (with `not_after`) and the new one
/// both work until then, the old one is refused after it (401 saying why), and
/// `/admin/clients` shows when each key stops. On the injected clock: no waiting.
#[tokio::test]
async fn a_rotated_key_works_during_the_overlap_and_the_old_one_stops_at_not_after() {
    let not_after =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(60))
            .to_string();
    let rotating = ClientFile {
        name: some("rotating"),
        keys: Some(vec![
            KeyFile {
                sha256: Some(sha256_hex(b"old-key-1f2e3d")),
                not_after: Some(not_after.clone()),
            },
            KeyFile {
                sha256: Some(sha256_hex(b"new-key-4c5b6a")),
                not_after: None,
            },
        ]),
        ..ClientFile::default()
    };
    let t = InProcess::spawn(Default::default(), |c| c.add([rotating])).await;
    let http = client();
    let upload = |key: &'static str, n: u32| {
        let (http, url) = (http.clone(), t.upload_url());
        async move { upload_multipart(&http, &url, key, unique_jpeg(500, n), "a.jpg").await }
    };
    for (n, key) in ["old-key-1f2e3d", "new-key-4c5b6a"].into_iter().enumerate() {
        let (status, _, body) = upload(key, n as u32).await;
        assert_eq!(status, 200, "{key}: {body}");
    }
    let entry = admin_entry(&t.admin_clients().await, "rotating");
    assert_eq!(
        entry["keys"],
        serde_json::json!([not_after, null]),
        "{entry}"
    );

    t.advance(Duration::from_secs(61));
    let (status, _, body) = upload("old-key-1f2e3d", 10).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["errorCode"], 940101);
    assert!(
        body["errorDescription"]
            .as_str()
            .unwrap()
            .contains("not_after"),
        "{body}"
    );
    let (status, _, body) = upload("new-key-4c5b6a", 11).await;
    assert_eq!(status, 200, "{body}");
}

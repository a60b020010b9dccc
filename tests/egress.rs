//! Egress as a corporate network has it: Fxiaoke reached only through an HTTP CONNECT proxy
//! (`HTTPS_PROXY`, `NO_PROXY`), and an upstream certificate from a CA of the corp's own
//! (`corps.NAME.ca_file`: a TLS-inspecting gateway, a private deployment).
//!
//! The upstream's name, `fxiaoke.test`, resolves nowhere: only the proxy knows where it is, so
//! an upload that succeeds went through the proxy, and one that did not go through it fails.

mod support;

use std::collections::HashMap;

use support::egress::{pki, ConnectProxy, TlsFront};
use support::*;

/// A sandbox behind a TLS front with a test CA's certificate for `fxiaoke.test`, and a CONNECT
/// proxy that knows that name. Returns the parts and the corp's base URL.
async fn network(dir: &std::path::Path) -> (Sandbox, TlsFront, ConnectProxy, String) {
    let sandbox = Sandbox::spawn(&[]);
    let sandbox_port: u16 = sandbox.url.rsplit(':').next().unwrap().parse().unwrap();
    pki(dir, &["fxiaoke.test"]);
    let front = TlsFront::start(dir, sandbox_port).await;
    let target = format!("fxiaoke.test:{}", front.port);
    let proxy = ConnectProxy::start(HashMap::from([(target.clone(), front.port)])).await;
    (sandbox, front, proxy, format!("https://{target}"))
}

fn gateway(dir: tempfile::TempDir, base: &str, ca: bool, env: &[(&str, &str)]) -> Gateway {
    let ca_file = ca.then(|| dir.path().join("ca.pem").display().to_string());
    let cfg = standard(base).with(|c| c.corp().ca_file = ca_file);
    Gateway::spawn_env(dir, &cfg.toml(), env)
}

#[tokio::test]
async fn a_corp_behind_a_connect_proxy_with_its_own_ca_uploads_through_the_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let (sandbox, front, proxy, base) = network(dir.path()).await;
    let via = format!("http://egress-user:egress-pass@127.0.0.1:{}", proxy.port);
    let gw = gateway(dir, &base, true, &[("HTTPS_PROXY", via.as_str())]);
    let (status, _, body) = upload_multipart(
        &client(),
        &gw.upload_url(),
        ALPHA_KEY,
        jpeg(20_000, 3),
        "a.jpg",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["mediaId"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(sandbox.stats().await["uploads_completed"], 1);
    // Every connection to Fxiaoke (token and upload) was a tunnel to the name, with the
    // proxy's credentials from the URL; the log names the proxy without them.
    let seen = proxy.seen();
    assert!(!seen.is_empty());
    let target = format!("fxiaoke.test:{}", front.port);
    for t in &seen {
        assert_eq!(t.target, target, "{seen:?}");
        // base64("egress-user:egress-pass")
        assert_eq!(
            t.auth.as_deref(),
            Some("Basic ZWdyZXNzLXVzZXI6ZWdyZXNzLXBhc3M="),
            "{seen:?}"
        );
    }
    let logs = gw.logs();
    assert!(
        logs.contains(&format!("http://127.0.0.1:{}", proxy.port)),
        "the start-up log names the proxy: {logs}"
    );
    assert!(!logs.contains("egress-pass"), "proxy password in the log");
}

#[tokio::test]
async fn without_the_corp_ca_the_upstream_certificate_is_refused_and_said_so() {
    let dir = tempfile::tempdir().unwrap();
    let (sandbox, _front, proxy, base) = network(dir.path()).await;
    let via = format!("http://127.0.0.1:{}", proxy.port);
    let gw = gateway(dir, &base, false, &[("HTTPS_PROXY", via.as_str())]);
    let (status, _, body) = upload_multipart(
        &client(),
        &gw.upload_url(),
        ALPHA_KEY,
        jpeg(20_000, 4),
        "a.jpg",
    )
    .await;
    assert!(status >= 500, "{status} {body}");
    assert_ne!(body["errorCode"], 0, "{body}");
    // The tunnel was made; the TLS handshake inside it refused the unknown issuer, and
    // nothing reached Fxiaoke.
    assert!(!proxy.seen().is_empty());
    assert_eq!(sandbox.stats().await["upload_requests"], 0);
    assert_eq!(sandbox.stats().await["tokens_issued"], 0);
    let logs = gw.logs();
    assert!(
        logs.contains("UnknownIssuer") || logs.contains("unknown issuer"),
        "the log says why: {logs}"
    );
}

#[tokio::test]
async fn no_proxy_sends_the_corp_direct() {
    let dir = tempfile::tempdir().unwrap();
    let (sandbox, _front, proxy, base) = network(dir.path()).await;
    let via = format!("http://127.0.0.1:{}", proxy.port);
    let gw = gateway(
        dir,
        &base,
        true,
        &[
            ("HTTPS_PROXY", via.as_str()),
            ("NO_PROXY", "example.org,.test"),
        ],
    );
    // Direct, `fxiaoke.test` does not resolve: the call fails, and the proxy saw none of it.
    let (status, _, body) = upload_multipart(
        &client(),
        &gw.upload_url(),
        ALPHA_KEY,
        jpeg(20_000, 5),
        "a.jpg",
    )
    .await;
    assert!(status >= 500, "{status} {body}");
    assert!(proxy.seen().is_empty(), "{:?}", proxy.seen());
    assert_eq!(sandbox.stats().await["tokens_issued"], 0);
    assert!(gw.logs().contains("proxy=\"none\"") || gw.logs().contains("\"proxy\":\"none\""));
}

#[tokio::test]
async fn check_config_names_a_ca_file_that_holds_no_certificate() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("not-a-ca.pem"), "just text\n").unwrap();
    let bad = dir.path().join("not-a-ca.pem").display().to_string();
    let cfg = standard("https://open.fxiaoke.com").with(|c| c.corp().ca_file = Some(bad));
    let (code, err) = check_config(dir.path(), &cfg);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("corps.default.ca_file") && err.contains("no PEM certificate"),
        "{err}"
    );
}

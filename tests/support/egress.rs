//! The egress a corporate network puts between fxgate and Fxiaoke, on loopback: an HTTP
//! CONNECT proxy that records what it was asked, and a TLS front whose certificate comes from a
//! test CA (a TLS-inspecting gateway, or a private Fxiaoke), in front of a plain sandbox.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// One CONNECT the proxy answered: its target and its `Proxy-Authorization`, if any.
#[derive(Debug, Clone)]
pub struct Tunnelled {
    pub target: String,
    pub auth: Option<String>,
}

/// A CONNECT proxy: `CONNECT name:port` goes to the loopback port `names` maps it to (the name
/// need not resolve anywhere, so a connection that reaches the target came through here).
pub struct ConnectProxy {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Tunnelled>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl ConnectProxy {
    pub async fn start(names: HashMap<String, u16>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let names = Arc::new(names);
        let accept = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(tunnel(conn, names.clone(), log.clone()));
            }
        });
        Self { port, seen, accept }
    }

    pub fn seen(&self) -> Vec<Tunnelled> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn tunnel(
    mut conn: TcpStream,
    names: Arc<HashMap<String, u16>>,
    seen: Arc<Mutex<Vec<Tunnelled>>>,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || conn.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let request: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
    let auth = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("proxy-authorization"))
        .map(|(_, v)| v.trim().to_string());
    if request.first() != Some(&"CONNECT") || request.len() < 2 {
        let _ = conn
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    }
    let target = request[1].to_string();
    seen.lock().unwrap().push(Tunnelled {
        target: target.clone(),
        auth,
    });
    let Some(port) = names.get(&target) else {
        let _ = conn.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", *port)).await else {
        let _ = conn.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    if conn
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await
        .is_ok()
    {
        let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
    }
}

/// A test CA and a server certificate it signed for `names`, as PEM files in `dir`:
/// `ca.pem`, `server.pem`, `server.key`.
pub fn pki(dir: &std::path::Path, names: &[&str]) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "egress test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca.self_signed(&ca_key).unwrap();
    let server =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = server.signed_by(&server_key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
}

/// Terminates TLS with `dir`'s `server.pem` on a free loopback port and passes the plain bytes
/// to `127.0.0.1:<target>`.
pub struct TlsFront {
    pub port: u16,
    accept: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    pub async fn start(dir: &std::path::Path, target: u16) -> Self {
        let certs = rustls_pemfile::certs(&mut &std::fs::read(dir.join("server.pem")).unwrap()[..])
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key =
            rustls_pemfile::private_key(&mut &std::fs::read(dir.join("server.key")).unwrap()[..])
                .unwrap()
                .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accept = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(conn).await else {
                        return;
                    };
                    if let Ok(mut plain) = TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
        Self { port, accept }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

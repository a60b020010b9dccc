//! Inbound TLS: a rustls `ServerConfig` from PEM files, ALPN `h2` and `http/1.1`, and, with
//! `client_ca`, optional client certificates (callers may still authenticate by key).
//!
//! `Tls` holds the config in force behind an `ArcSwap`: each accepted connection takes the
//! current one for its handshake, and `reload` swaps in a new one built from the files. A
//! connection keeps the config it shook hands with, so a rotation drops nothing; a file set
//! that does not build (a key that does not match its certificate, half-written PEM) is
//! refused and the old config stays.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;
use crate::middleware::PeerIdentity;

/// The subject of a client certificate rustls has already verified against `client_ca`.
pub fn identity(cert: &CertificateDer<'_>) -> Option<PeerIdentity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    use sha2::Digest as _;
    Some(PeerIdentity {
        subject: subject.to_string(),
        common_name,
        fingerprint: hex::encode(sha2::Sha256::digest(cert.as_ref())),
    })
}

fn open(path: &Path, what: &str) -> Result<BufReader<File>, crate::body::BoxError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|e| format!("{what} {}: {e}", path.display()).into())
}

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, crate::body::BoxError> {
    let certs = rustls_pemfile::certs(&mut open(path, what)?).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(format!("{what} {}: no PEM certificate in it", path.display()).into());
    }
    Ok(certs)
}

/// The inbound TLS config in force, reloadable.
#[derive(Clone)]
pub struct Tls {
    files: TlsConfig,
    current: Arc<ArcSwap<rustls::ServerConfig>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// Loads the files of `cfg`.
    pub fn load(cfg: &TlsConfig) -> Result<Self, crate::body::BoxError> {
        Ok(Self {
            current: Arc::new(ArcSwap::from_pointee(server_config(cfg)?)),
            files: cfg.clone(),
        })
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Rebuilds from the files; on error the config in force stays.
    pub fn reload(&self) -> Result<(), crate::body::BoxError> {
        self.current.store(Arc::new(server_config(&self.files)?));
        Ok(())
    }

    /// The files it is built from (watched for changes).
    pub fn paths(&self) -> Vec<std::path::PathBuf> {
        let f = &self.files;
        [Some(&f.cert), Some(&f.key), f.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
}

fn server_config(cfg: &TlsConfig) -> Result<rustls::ServerConfig, crate::body::BoxError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(&cfg.cert, "server.tls_cert")?;
    let key: PrivateKeyDer<'static> =
        rustls_pemfile::private_key(&mut open(&cfg.key, "server.tls_key")?)?.ok_or_else(|| {
            format!(
                "server.tls_key {}: no PEM private key in it",
                cfg.key.display()
            )
        })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &cfg.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca, "server.client_ca")? {
                roots.add(c)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

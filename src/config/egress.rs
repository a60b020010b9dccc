//! `corps.NAME.ca_file`: roots a corp's upstream certificate may chain to besides the web PKI
//! (a TLS-inspecting egress gateway, a private Fxiaoke deployment). Read and parsed when the
//! config is validated, so `check-config` names a missing or empty file and a running process
//! never meets one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;

use super::{invalid, ConfigError};

/// `corps.NAME.file_service_user` and `file_upload_hosts`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileService {
    /// The user legacy-style callers' File Service uploads ask as.
    pub user: Option<String>,
    /// Host patterns a step-1 upload URL may name: `example.com` exactly, `*.example.com`
    /// for its subdomains.
    pub hosts: Vec<String>,
}

impl FileService {
    /// Whether `host` is one a File Service upload may go to.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.hosts.iter().any(|p| match p.strip_prefix("*.") {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => host == *p,
        })
    }
}

pub(super) fn file_service(
    key: &str,
    user: Option<String>,
    hosts: Option<Vec<String>>,
) -> Result<FileService, ConfigError> {
    let hosts = hosts.unwrap_or_else(|| vec!["*.fxiaoke.com".into(), "*.sharecrm.com".into()]);
    for h in &hosts {
        let bare = h.strip_prefix("*.").unwrap_or(h);
        let ok = !bare.is_empty()
            && bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !ok {
            return Err(invalid(
                format!("{key}.file_upload_hosts"),
                format!("`{h}`: a host name, or `*.` and a domain"),
            ));
        }
    }
    Ok(FileService {
        user: user.filter(|u| !u.trim().is_empty()),
        hosts: hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect(),
    })
}

/// The extra roots of one corp, with the file they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraRoots {
    /// The PEM file.
    pub path: PathBuf,
    /// Its certificates (one or more).
    pub certs: Arc<[CertificateDer<'static>]>,
}

/// Reads `path` (the value of `key`): one or more PEM certificates, nothing else accepted.
pub(super) fn extra_roots(
    key: &str,
    path: Option<String>,
) -> Result<Option<ExtraRoots>, ConfigError> {
    let Some(path) = path.filter(|p| !p.trim().is_empty()) else {
        return Ok(None);
    };
    let path = PathBuf::from(path);
    let certs = read(&path).map_err(|problem| invalid(key, problem))?;
    Ok(Some(ExtraRoots {
        path,
        certs: certs.into(),
    }))
}

fn read(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut text.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    // A bundle whose certificates the TLS library cannot take as roots would otherwise fail
    // only at the first upstream call.
    let mut store = rustls::RootCertStore::empty();
    let (_, rejected) = store.add_parsable_certificates(certs.iter().cloned());
    if rejected > 0 {
        return Err(format!(
            "{}: {rejected} certificate(s) in it cannot be used as a root",
            path.display()
        ));
    }
    Ok(certs)
}

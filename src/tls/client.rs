//! The rustls client configuration of every connection keybridge opens (Coupa's API
//! and token endpoint, PostgreSQL): the web PKI roots plus an optional
//! private CA file, ring, safe protocol versions, no client certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{setting} {path}: {message}")]
    CaFile {
        setting: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A rustls client config (ring, safe protocol versions) trusting the web PKI roots and
/// the PEM certificates in `ca_file` (named by `setting` in errors).
pub fn tls_client_config(
    setting: &'static str,
    ca_file: Option<&Path>,
) -> Result<rustls::ClientConfig, TlsSetupError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let certs = super::pem::certificates(path).map_err(|message| TlsSetupError::CaFile {
            setting,
            path: path.to_owned(),
            message,
        })?;
        for cert in certs {
            roots.add(cert).map_err(|e| TlsSetupError::CaFile {
                setting,
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

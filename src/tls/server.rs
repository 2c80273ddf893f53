//! TLS termination on the proxy listener, when configured (`tls: {cert, key}`): rustls with
//! ALPN `h2` and `http/1.1`, so callers get HTTP/2 or HTTP/1.1 as they prefer.

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsSettings;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.cert {path}: {message}")]
    Cert { path: PathBuf, message: String },
    #[error("tls.key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The acceptor for `settings`, or `None` when TLS is not configured.
pub fn acceptor(settings: Option<&TlsSettings>) -> Result<Option<TlsAcceptor>, TlsError> {
    let Some(settings) = settings else {
        return Ok(None);
    };
    let certs = super::pem::certificates(&settings.cert).map_err(|message| TlsError::Cert {
        path: settings.cert.clone(),
        message,
    })?;
    let key = PrivateKeyDer::from_pem_file(&settings.key).map_err(|e| TlsError::Key {
        path: settings.key.clone(),
        message: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

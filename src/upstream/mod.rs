//! The clients that talk to Coupa: each proxy worker's own [`Pool`] for API calls (the
//! request path), and hyper-util's pooled client for token requests.
//!
//! Both keep connections alive per instance, speak HTTP/1.1 or HTTP/2 as ALPN chooses,
//! and use rustls with the webpki root set (plus an optional private CA file). There is
//! no way to disable certificate verification: a bad certificate fails closed.

mod connect;
mod pool;

pub use connect::ConnectError;
pub use pool::{Pool, PooledBody};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::body::UpstreamBody;
use crate::config::UpstreamSettings;

/// The pooled client for token requests (and `keybridge check`'s credential test).
pub type HttpClient = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

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

/// Builds the client. Fails only on a bad `ca_file`.
pub fn build_client(settings: &UpstreamSettings) -> Result<HttpClient, TlsSetupError> {
    let tls = tls_client_config("upstream.ca_file", settings.ca_file.as_deref())?;

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(settings.connect_timeout));

    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);

    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_max_idle_per_host(settings.pool_max_idle_per_host)
        .build(connector))
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
        for cert in read_pem_certs(setting, path)? {
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

fn read_pem_certs(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let err = |message: String| TlsSetupError::CaFile {
        setting,
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("contains no PEM certificate".to_owned()));
    }
    Ok(certs)
}

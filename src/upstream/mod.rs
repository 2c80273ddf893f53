//! The clients that talk to Coupa: each proxy worker's own [`Pool`] for API calls (the
//! request path), and hyper-util's pooled client for token requests.
//!
//! Both keep connections alive per instance, speak HTTP/1.1 or HTTP/2 as ALPN chooses,
//! and use rustls with the webpki root set (plus an optional private CA file). There is
//! no way to disable certificate verification: a bad certificate fails closed.

mod connect;
mod pool;
mod service;

pub use connect::ConnectError;
pub use pool::{Pool, PooledBody};
pub use service::{ServiceUpstream, Upstream};

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::UpstreamBody;
use crate::config::UpstreamSettings;
use crate::tls::{TlsSetupError, tls_client_config};

/// The pooled client for token requests (and `keybridge check`'s credential test).
pub type HttpClient = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

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

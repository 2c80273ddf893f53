//! Opening one connection to Coupa: TCP (every address the name resolves to, in turn,
//! within `upstream.connect_timeout`), TLS for `https` with ALPN offering http/1.1 (and
//! h2 first when `upstream.http2` is on), then hyper's HTTP/1.1 or HTTP/2 handshake as
//! ALPN decided. The connection's
//! own task is spawned on the calling runtime (the worker's), so it never crosses threads.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::body::UpstreamBody;

/// A fresh connection's request handle.
pub(super) enum Fresh {
    /// The request handle, and the connection's task (aborted to close it at once).
    Http1(http1::SendRequest<UpstreamBody>, tokio::task::AbortHandle),
    Http2(http2::SendRequest<UpstreamBody>),
}

/// Why a connection could not be opened (the cause is the source: io or TLS error).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve {authority}")]
    Resolve {
        authority: Authority,
        #[source]
        source: io::Error,
    },
    #[error("{authority} resolves to no address")]
    NoAddress { authority: Authority },
    #[error("cannot connect to {authority}")]
    Tcp {
        authority: Authority,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {authority} timed out after {after:?}")]
    Timeout {
        authority: Authority,
        after: Duration,
    },
    #[error("{authority} is not a valid TLS server name")]
    ServerName { authority: Authority },
    #[error("TLS handshake with {authority} failed")]
    Tls {
        authority: Authority,
        #[source]
        source: io::Error,
    },
    #[error("HTTP handshake with {authority} failed")]
    Handshake {
        authority: Authority,
        #[source]
        source: hyper::Error,
    },
}

/// What every connection of a pool is opened with.
pub(super) struct Connector {
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
}

impl Connector {
    pub(super) fn new(
        mut tls: rustls::ClientConfig,
        connect_timeout: Duration,
        http2: bool,
    ) -> Self {
        // HTTP/1.1 by default: one request per connection at a time, so one caller's
        // slow reading fills only its own connection's window (issue 23).
        tls.alpn_protocols = if http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Connector {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            connect_timeout,
        }
    }

    /// Opens a connection to `authority`, over TLS when `https`.
    pub(super) async fn connect(
        &self,
        authority: &Authority,
        https: bool,
    ) -> Result<Fresh, ConnectError> {
        let after = self.connect_timeout;
        let timed_out = || ConnectError::Timeout {
            authority: authority.clone(),
            after,
        };
        let tcp = tokio::time::timeout(after, tcp(authority, https))
            .await
            .map_err(|_| timed_out())??;
        if !https {
            return http1_handshake(authority, TokioIo::new(tcp)).await;
        }
        let name = ServerName::try_from(authority.host().trim_matches(['[', ']']).to_owned())
            .map_err(|_| ConnectError::ServerName {
                authority: authority.clone(),
            })?;
        let tls = tokio::time::timeout(after, self.tls.connect(name, tcp))
            .await
            .map_err(|_| timed_out())?
            .map_err(|source| ConnectError::Tls {
                authority: authority.clone(),
                source,
            })?;
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|source| ConnectError::Handshake {
                    authority: authority.clone(),
                    source,
                })?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
                }
            });
            return Ok(Fresh::Http2(sender));
        }
        http1_handshake(authority, TokioIo::new(tls)).await
    }
}

/// TCP to each address `authority` resolves to, in turn; nodelay on.
async fn tcp(authority: &Authority, https: bool) -> Result<TcpStream, ConnectError> {
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let host = authority.host().trim_matches(['[', ']']);
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| ConnectError::Resolve {
            authority: authority.clone(),
            source,
        })?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                // Small requests go out at once rather than waiting for an ACK.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(source) => ConnectError::Tcp {
            authority: authority.clone(),
            source,
        },
        None => ConnectError::NoAddress {
            authority: authority.clone(),
        },
    })
}

async fn http1_handshake<T>(authority: &Authority, io: TokioIo<T>) -> Result<Fresh, ConnectError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|source| ConnectError::Handshake {
            authority: authority.clone(),
            source,
        })?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(Fresh::Http1(sender, task.abort_handle()))
}

//! TLS, both ways: terminating callers' TLS on the proxy listener ([`server`]) and the
//! rustls client configuration every connection keybridge opens uses — to Coupa, its
//! token endpoint and PostgreSQL ([`client`]). Both read PEM files through [`pem`].

pub mod client;
mod pem;
pub mod server;

pub use client::{TlsSetupError, tls_client_config};
pub use server::{TlsError, acceptor};

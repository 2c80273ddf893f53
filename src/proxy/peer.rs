//! The caller's address, as the audit records it and as `X-Forwarded-For` carries it
//! (formatted once per connection, not per request).

use std::net::SocketAddr;

use http::HeaderValue;

/// One caller connection's address.
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The IP as a header value, for `X-Forwarded-For`.
    pub forwarded: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Self {
        #[expect(
            clippy::expect_used,
            reason = "an IP address's text form is ASCII digits, dots, colons and hex"
        )]
        let forwarded = HeaderValue::try_from(addr.ip().to_string())
            .expect("an IP address is a valid header value");
        Peer { addr, forwarded }
    }
}

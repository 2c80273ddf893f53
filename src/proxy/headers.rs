//! Header rewriting for the forwarded request and the returned response.
//!
//! Order matters and is fixed here (RFC 9110 §7.6.1): first drop every header that
//! `Connection` names and the hop-by-hop set, *then* drop the API key (in any spelling)
//! and any caller `Authorization`, *then* set our bearer. So `Connection: Authorization`
//! cannot remove the bearer, and `Connection: X-COUPA-API-KEY` cannot matter either.
//! Framing headers (`Content-Length`, `Transfer-Encoding`) are never copied into the
//! upstream request: hyper derives them from the body, which closes off CL/TE games.

use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, EXPECT, HOST, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::peer::Peer;

/// The legacy key header.
pub static X_COUPA_API_KEY: HeaderName = HeaderName::from_static("x-coupa-api-key");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// The settings of an h2c upgrade offer (RFC 9113 §3.2.1, connection-specific): dropped
/// with `Upgrade` even when `Connection` does not list it.
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
/// Headers some front ends honour to change the method or the origin they believe in:
/// never forwarded, so they cannot get a method past `forwarding.methods` or redirect
/// Coupa's self-links.
static OVERRIDES: [HeaderName; 5] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("forwarded"),
];

/// Hop-by-hop headers (RFC 9110 §7.6.1, the old `Keep-Alive`/`Proxy-Connection`, and
/// h2c's `HTTP2-Settings`).
static HOP_BY_HOP: [&HeaderName; 10] = [
    &CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &PROXY_AUTHENTICATE,
    &PROXY_AUTHORIZATION,
    &TE,
    &TRAILER,
    &TRANSFER_ENCODING,
    &UPGRADE,
    &HTTP2_SETTINGS,
];

/// What never goes upstream besides the hop-by-hop set: the key, `Host` (the client
/// sets it from the instance URI), framing (hyper's to generate), `Expect` (100-continue
/// was settled with the caller already) and the override headers.
static NOT_FORWARDED: [&HeaderName; 9] = [
    &X_COUPA_API_KEY,
    &HOST,
    &CONTENT_LENGTH,
    &EXPECT,
    &OVERRIDES[0],
    &OVERRIDES[1],
    &OVERRIDES[2],
    &OVERRIDES[3],
    &OVERRIDES[4],
];

/// Removes the headers `Connection` lists, then the hop-by-hop set.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip_connection_listed(headers);
    remove_present(headers, &HOP_BY_HOP, &[], false);
}

/// Removes the headers every `Connection` line names.
fn strip_connection_listed(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            // Bytes, not `to_str`: one non-ASCII byte must not hide the whole list.
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
}

/// Removes every header of `first` and `second` that `headers` holds, and with
/// `odd_keys` every name with an underscore: one pass over the (few) names present,
/// then a removal for each one found, instead of a hash lookup per name listed.
fn remove_present(
    headers: &mut HeaderMap,
    first: &[&'static HeaderName],
    second: &[&'static HeaderName],
    odd_keys: bool,
) {
    debug_assert!(first.len() + second.len() <= 32, "the found set is a u32");
    let mut found = 0u32;
    let mut odd: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if let Some(i) = first.iter().chain(second).position(|n| *n == name) {
            found |= 1 << i;
        } else if odd_keys && name.as_str().as_bytes().contains(&b'_') {
            // Any name with an underscore: to servers that map header names to CGI-style
            // variables (Rack, PHP) `Transfer_Encoding`, `X_Forwarded_For` or
            // `X_Coupa_Api_Key` is the header it spells, so one could re-frame the
            // request or undo a removal. Dropped, as nginx does by default. Rare:
            // allocates only for such a name.
            odd.push(name.clone());
        }
    }
    for (i, name) in first.iter().chain(second).enumerate() {
        if found & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
    for name in odd {
        headers.remove(name);
    }
}

/// True for `X-COUPA-API-KEY` in any spelling a server might normalise to it
/// (`x_coupa_api_key`, `X_Coupa-Api_Key`, …).
pub fn is_api_key_header(name: &HeaderName) -> bool {
    let n = name.as_str().as_bytes();
    n.len() == 15
        && n.iter()
            .zip(b"x-coupa-api-key")
            .all(|(a, b)| a.to_ascii_lowercase() == *b || (*a == b'_' && *b == b'-'))
}

/// What every forwarded request gets: hop-by-hop headers, key headers, `Host`, framing,
/// `Expect`, the override headers and every header with an underscore in its name
/// (another spelling of any of these to a CGI-style server) removed; the caller's address
/// appended to `X-Forwarded-For`. The caller's `Authorization` is left for the caller to
/// decide on.
pub fn sanitize_request(headers: &mut HeaderMap, peer: &Peer) {
    strip_connection_listed(headers);
    remove_present(headers, &HOP_BY_HOP, &NOT_FORWARDED, true);
    append_forwarded_for(headers, peer);
}

/// The credential a forwarded request carries.
#[derive(Clone, Copy)]
pub enum Credential<'a> {
    /// `Authorization: Bearer …` (our token).
    Bearer(&'a HeaderValue),
    /// `X-COUPA-API-KEY` (the caller's own key, for observe/fallback).
    Key(&'a HeaderValue),
    /// Whatever `Authorization` the caller sent (native bearer callers).
    Caller,
}

/// Sets exactly one credential on already-sanitized headers. Runs after
/// [`sanitize_request`], so nothing the caller listed in `Connection` can remove it.
pub fn set_credential(headers: &mut HeaderMap, credential: Credential<'_>) {
    match credential {
        Credential::Bearer(bearer) => {
            headers.remove(AUTHORIZATION);
            headers.insert(AUTHORIZATION, bearer.clone());
        }
        Credential::Key(key) => {
            headers.remove(AUTHORIZATION);
            headers.insert(&X_COUPA_API_KEY, key.clone());
        }
        Credential::Caller => {}
    }
}

/// Appends the caller's address to `X-Forwarded-For`.
fn append_forwarded_for(headers: &mut HeaderMap, peer: &Peer) {
    if !headers.contains_key(&X_FORWARDED_FOR) {
        headers.insert(&X_FORWARDED_FOR, peer.forwarded.clone());
        return;
    }
    // Several header lines form one list (RFC 9110 §5.3); keep all of them.
    let prior: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let value = if prior.is_empty() {
        peer.addr.ip().to_string()
    } else {
        format!("{}, {}", prior.join(", "), peer.addr.ip())
    };
    headers.remove(&X_FORWARDED_FOR);
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
}

/// Rewrites Coupa's response headers for the caller: hop-by-hop headers go; when the
/// body was chunked, a `Content-Length` alongside it goes too (hyper re-frames).
pub fn rewrite_response(headers: &mut HeaderMap) {
    if headers.contains_key(TRANSFER_ENCODING) {
        headers.remove(CONTENT_LENGTH);
    }
    strip_hop_by_hop(headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the OAuth path does to a caller's headers: sanitize, then our bearer.
    fn rewrite_request(headers: &mut HeaderMap, bearer: &HeaderValue, peer: &str) {
        sanitize_request(
            headers,
            &Peer::new(std::net::SocketAddr::new(peer.parse().unwrap(), 1)),
        );
        set_credential(headers, Credential::Bearer(bearer));
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn connection_listed_headers_cannot_drop_the_bearer_or_keep_the_key() {
        let mut h = map(&[
            ("connection", "Authorization, X-COUPA-API-KEY, x-custom"),
            ("x-coupa-api-key", "k"),
            ("x_coupa_api_key", "k2"),
            ("X_Coupa-Api_KEY", "k3"),
            ("authorization", "Basic Zm9v"),
            ("x-custom", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("content-length", "10"),
            ("host", "evil.example"),
            ("accept", "application/xml"),
        ]);
        let bearer = HeaderValue::from_static("Bearer t");
        rewrite_request(&mut h, &bearer, "10.0.0.1");
        assert_eq!(
            h.get_all(AUTHORIZATION).iter().collect::<Vec<_>>(),
            [&bearer]
        );
        for gone in [
            "x-coupa-api-key",
            "x_coupa_api_key",
            "x-custom",
            "keep-alive",
            "transfer-encoding",
            "content-length",
            "host",
            "connection",
        ] {
            assert!(!h.contains_key(gone), "{gone} survived");
        }
        assert_eq!(h["accept"], "application/xml");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
    }

    #[test]
    fn key_credential_is_the_one_key_and_no_authorization() {
        let mut h = map(&[
            ("x-coupa-api-key", "k"),
            ("x_coupa_api_key", "other"),
            ("authorization", "Basic Zm9v"),
            ("connection", "x-coupa-api-key"),
        ]);
        sanitize_request(
            &mut h,
            &Peer::new(std::net::SocketAddr::new("10.0.0.1".parse().unwrap(), 1)),
        );
        let key = HeaderValue::from_static("k");
        set_credential(&mut h, Credential::Key(&key));
        assert_eq!(
            h.get_all("x-coupa-api-key").iter().collect::<Vec<_>>(),
            [&key]
        );
        assert!(!h.contains_key("x_coupa_api_key") && !h.contains_key(AUTHORIZATION));
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = map(&[("x-forwarded-for", "1.2.3.4")]);
        rewrite_request(&mut h, &HeaderValue::from_static("Bearer t"), "::1");
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, ::1");
    }

    #[test]
    fn key_header_aliases() {
        for yes in ["x-coupa-api-key", "x_coupa_api_key", "x-coupa_api-key"] {
            assert!(is_api_key_header(&HeaderName::from_static(yes)), "{yes}");
        }
        for no in ["x-coupa-api-kez", "x-coupa-api-keys", "authorization"] {
            assert!(!is_api_key_header(&HeaderName::from_static(no)), "{no}");
        }
    }
}

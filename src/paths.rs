//! The upstream request target.
//!
//! Only the path and query of what the caller sent are used. They pass byte for byte
//! (Coupa filters `updated_at[gt]=…`, `fields=[…]` projections with `{`, `}`, `%22`),
//! except for the characters RFC 3986 does not allow in a target but real clients send
//! raw (`fields=["id"]` concatenated into a URL by `HttpURLConnection` or `curl -g`):
//! those are percent-encoded exactly as a browser would send the same URL (the WHATWG
//! URL standard's query and path percent-encode sets), so Coupa, or any strict server
//! in front of it, gets a valid target that decodes to what the caller meant. The scheme
//! and authority always come from the configured instance, so an absolute-form target
//! (`GET http://evil.example/…`) or a forged `Host` can never choose where we connect.

use http::Uri;
use http::uri::PathAndQuery;

/// True for a path that another server could normalise into a different one, or decode
/// into something else: a `.` or `..` segment (also as `..;params`), an empty segment
/// (`//`) before the last one, a backslash, a control or non-ASCII byte, or a
/// percent-encoded `.`, `/`, `\`, `;`, `%` (double encoding), control or non-ASCII byte
/// (overlong UTF-8 dots). Coupa's API paths (`/api/<resource>/<id>/<action>`) need none of
/// these. Allocation-free: it runs on every request.
pub fn unsafe_path(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes
        .iter()
        .any(|&b| !(0x21..0x7f).contains(&b) || b == b'\\')
    {
        return true;
    }
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let decoded = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match decoded {
                Some(d) if !(0x21..0x7f).contains(&d) => return true,
                Some(b'.' | b'/' | b'\\' | b';' | b'%') => return true,
                Some(_) => i += 3,
                None => return true, // a `%` that is not an escape
            }
        } else {
            i += 1;
        }
    }
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        // `..;jsessionid=x` is `..` to servlet containers.
        let name = seg.split(';').next().unwrap_or_default();
        if (seg.is_empty() && !last) || name == "." || name == ".." {
            return true;
        }
    }
    false
}

/// The caller's path and query, or `None` for targets without one (`*`, authority-form).
pub fn path_and_query(target: &Uri) -> Option<PathAndQuery> {
    let pq = target.path_and_query()?;
    pq.as_str().starts_with('/').then(|| pq.clone())
}

/// Bytes the WHATWG URL standard percent-encodes in a path: controls, space, `"`, `#`,
/// `<`, `>`, `?`, backtick, `{`, `}`, and every non-ASCII byte. (`#`, `?`, controls and
/// space never reach here: the parsers end the path at them or refuse them.)
const IN_PATH: u8 = 1;
/// Bytes it percent-encodes in a query: controls, space, `"`, `#`, `<`, `>`, and every
/// non-ASCII byte. `{`, `}`, `|`, `^`, backtick and `'` stay as they are, as in a browser.
const IN_QUERY: u8 = 2;

/// Which of the two sets each byte is in: one table lookup a byte on the request path.
static ENCODED: [u8; 256] = {
    let mut table = [0_u8; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            0..=b' ' | 0x7f..=0xff | b'"' | b'#' | b'<' | b'>' => IN_PATH | IN_QUERY,
            b'?' | b'`' | b'{' | b'}' => IN_PATH,
            _ => 0,
        };
        b += 1;
    }
    table
};

/// The target to forward: `target` with the bytes a browser would percent-encode
/// encoded, and everything else (existing `%XX` escapes included) as it is; `None` when
/// the encoded target would be longer than a URI may be (the caller's is then refused
/// as too long, never forwarded raw). Costs one table lookup per byte and no allocation
/// when nothing needs encoding, which is every request a well-behaved client sends.
pub fn forwardable(target: PathAndQuery) -> Option<PathAndQuery> {
    let path = target.path().as_bytes();
    let query = target.query().map_or(&[][..], str::as_bytes);
    let needs = |set: u8| move |b: &u8| ENCODED[usize::from(*b)] & set != 0;
    // `?` is not in the query set, so the one that starts the query is kept.
    if !path.iter().any(needs(IN_PATH)) && !query.iter().any(needs(IN_QUERY)) {
        return Some(target);
    }
    let s = target.as_str();
    let query_at = path.len();
    let mut out = String::with_capacity(s.len() + 16);
    for (i, &b) in s.as_bytes().iter().enumerate() {
        let set = if i < query_at { IN_PATH } else { IN_QUERY };
        if ENCODED[usize::from(b)] & set != 0 {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        } else {
            out.push(char::from(b));
        }
    }
    // Every byte is now visible ASCII that the `http` crate accepts in a path or query,
    // so only its length limit can refuse it.
    PathAndQuery::try_from(out).ok()
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_another_server_could_normalise_are_unsafe() {
        for bad in [
            "/api/../oauth2/token",
            "/api/./invoices",
            "/api/%2e%2e/oauth2/token",
            "/api/.%2E/x",
            "/api/%2E/x",
            "/api/..",
            "/api//invoices",
            "//api/invoices",
            "/api/a%5cb",
            "/api/a%5C..%5Cb",
            // Found by the attacker review: an encoded slash makes `..` a segment to a
            // front end that decodes before normalising.
            "/api/..%2Foauth2%2Ftoken",
            "/api/x/..%2F..%2Fadmin",
            "/api/x%2F%2F..%2F..%2Fsession",
            "/api/..;/oauth2/token",
            "/api/..%00/",
            "/api/..%20/",
            "/api/%c0%ae%c0%ae/",
            "/api/%252e%252e/",
            "/api/\u{e9}",
            "/api/a%zz",
        ] {
            assert!(unsafe_path(bad), "{bad}");
        }
        for good in [
            "/api/invoices",
            "/api/invoices/",
            "/api/invoices/12.5",
            "/api/...",
            "/api/x..y",
            "/api/suppliers/name%3Aacme",
            "/api/invoices;foo",
        ] {
            assert!(!unsafe_path(good), "{good}");
        }
    }

    #[test]
    fn keeps_path_and_query_byte_exact_and_drops_authority() {
        let cases = [
            (
                "/api/invoices?updated_at[gt]=2024-01-01T00:00:00Z",
                "/api/invoices?updated_at[gt]=2024-01-01T00:00:00Z",
            ),
            (
                "/api/users?fields=[%22id%22,{%22roles%22:[%22id%22]}]",
                "/api/users?fields=[%22id%22,{%22roles%22:[%22id%22]}]",
            ),
            ("http://evil.example/api/x?y=1", "/api/x?y=1"),
            ("https://evil.example:8443/api/x", "/api/x"),
            ("/api/a%2Fb?x=%20", "/api/a%2Fb?x=%20"),
        ];
        for (input, want) in cases {
            let uri: Uri = input.parse().unwrap();
            assert_eq!(path_and_query(&uri).unwrap().as_str(), want, "{input}");
        }
        assert!(path_and_query(&"*".parse().unwrap()).is_none());
        assert!(path_and_query(&"evil.example:443".parse().unwrap()).is_none());
    }

    #[test]
    fn what_a_browser_would_encode_is_encoded_and_nothing_else() {
        let cases = [
            // Coupa's projection as HttpURLConnection and `curl -g` send it.
            (
                r#"/api/suppliers?fields=["id",{"supplier":["name"]}]"#,
                "/api/suppliers?fields=[%22id%22,{%22supplier%22:[%22name%22]}]",
            ),
            ("/api/x?a=<b>&c=`{|}^`'", "/api/x?a=%3Cb%3E&c=`{|}^`'"),
            ("/api/x?name=caf\u{e9}", "/api/x?name=caf%C3%A9"),
            (
                "/api/{x}/`y`/\"<z>\"?q",
                "/api/%7Bx%7D/%60y%60/%22%3Cz%3E%22?q",
            ),
            // Existing escapes and everything else untouched.
            ("/api/a%2Fb?x=%20&y=%22", "/api/a%2Fb?x=%20&y=%22"),
            (
                "/api/invoices?updated_at[gt]=2024-01-01",
                "/api/invoices?updated_at[gt]=2024-01-01",
            ),
        ];
        for (input, want) in cases {
            let pq = PathAndQuery::try_from(input).unwrap();
            assert_eq!(forwardable(pq).unwrap().as_str(), want, "{input}");
        }
        // Found by the attacker review: a target that only encoding makes too long is
        // refused, never forwarded raw.
        let long = format!("/api/{}", "\"".repeat(21_844));
        assert!(forwardable(PathAndQuery::try_from(long.as_str()).unwrap()).is_none());
    }
}

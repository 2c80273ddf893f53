//! The upstream request target.
//!
//! Only the path and query of what the caller sent are used, byte for byte: Coupa
//! filters (`updated_at[gt]=…`) and `fields=[…]` projections pass untouched. The scheme
//! and authority always come from the configured instance, so an absolute-form target
//! (`GET http://evil.example/…`) or a forged `Host` can never choose where we connect.

use http::Uri;
use http::uri::PathAndQuery;

/// True for a path that another server could normalise into a different one: a `.` or
/// `..` segment (raw or percent-encoded, in any case), a backslash (raw or `%5c`), or an
/// empty segment (`//`) before the last one. Allocation-free: it runs on every request.
pub fn unsafe_path(path: &str) -> bool {
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if (seg.is_empty() && !last) || is_dot_segment(seg.as_bytes()) {
            return true;
        }
        let bytes = seg.as_bytes();
        if bytes.contains(&b'\\')
            || bytes
                .windows(3)
                .any(|w| w[0] == b'%' && w[1] == b'5' && w[2].eq_ignore_ascii_case(&b'c'))
        {
            return true;
        }
    }
    false
}

/// `.` or `..`, each dot raw or as `%2e` (any case).
fn is_dot_segment(mut seg: &[u8]) -> bool {
    let mut dots = 0;
    while !seg.is_empty() {
        if seg[0] == b'.' {
            seg = &seg[1..];
        } else if seg.len() >= 3
            && seg[0] == b'%'
            && seg[1] == b'2'
            && seg[2].eq_ignore_ascii_case(&b'e')
        {
            seg = &seg[3..];
        } else {
            return false;
        }
        dots += 1;
        if dots > 2 {
            return false;
        }
    }
    dots > 0
}

/// The caller's path and query, or `None` for targets without one (`*`, authority-form).
pub fn path_and_query(target: &Uri) -> Option<PathAndQuery> {
    let pq = target.path_and_query()?;
    pq.as_str().starts_with('/').then(|| pq.clone())
}

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
        ] {
            assert!(unsafe_path(bad), "{bad}");
        }
        for good in [
            "/api/invoices",
            "/api/invoices/",
            "/api/invoices/12.5",
            "/api/a%2Fb",
            "/api/...",
            "/api/x..y",
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
}

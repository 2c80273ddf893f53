//! The upstream request target.
//!
//! Only the path and query of what the caller sent are used, byte for byte: Coupa
//! filters (`updated_at[gt]=…`) and `fields=[…]` projections pass untouched. The scheme
//! and authority always come from the configured instance, so an absolute-form target
//! (`GET http://evil.example/…`) or a forged `Host` can never choose where we connect.

use http::Uri;
use http::uri::PathAndQuery;

/// The caller's path and query, or `None` for targets without one (`*`, authority-form).
pub fn path_and_query(target: &Uri) -> Option<PathAndQuery> {
    let pq = target.path_and_query()?;
    pq.as_str().starts_with('/').then(|| pq.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

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

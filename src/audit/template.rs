//! Request paths folded into endpoint templates: `/api/invoices/123/approve` →
//! `/api/invoices/:id/approve`.
//!
//! Numbers, UUIDs and long hex or opaque ids become `:id`, the query is dropped, and the
//! result is bounded (segments and length) so hostile paths cannot grow the audit.

/// At most this many path segments are kept; the rest become `/…`.
const MAX_SEGMENTS: usize = 8;
/// Longer segments are replaced by `:id` (ids, tokens, encoded blobs).
const MAX_SEGMENT_LEN: usize = 48;

/// The template of `path` (no query).
pub fn template(path: &str) -> String {
    let mut out = String::with_capacity(path.len().min(128));
    push_template(&mut out, path);
    out
}

/// `METHOD template`, the audit's endpoint key, built in one allocation.
pub fn endpoint(method: &str, path: &str) -> String {
    let mut out = String::with_capacity(method.len() + 1 + path.len().min(128));
    out.push_str(method);
    out.push(' ');
    push_template(&mut out, path);
    out
}

fn push_template(out: &mut String, path: &str) {
    let path = path.split('?').next().unwrap_or_default();
    let start = out.len();
    for (i, segment) in path.split('/').skip(1).enumerate() {
        if i == MAX_SEGMENTS {
            out.push_str("/…");
            break;
        }
        out.push('/');
        if is_id(segment) {
            out.push_str(":id");
        } else if segment.bytes().all(readable) {
            out.push_str(segment);
        } else {
            // Keep readable names, drop anything odd byte by byte.
            out.extend(segment.chars().map(|c| {
                if c.is_ascii() && readable(c as u8) {
                    c
                } else {
                    '?'
                }
            }));
        }
    }
    if out.len() == start {
        out.push('/');
    }
}

fn readable(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'%' | b':')
}

fn is_id(segment: &str) -> bool {
    if segment.is_empty() {
        return false;
    }
    if segment.len() > MAX_SEGMENT_LEN {
        return true;
    }
    if segment.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    let hexish = segment.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    let digits = segment.bytes().filter(u8::is_ascii_digit).count();
    // UUIDs (8-4-4-4-12) and long hex ids, but not words like `deadbeef`-free names:
    // require a digit so `accepted` or `facade` stay literal.
    (hexish && segment.len() >= 16 && digits > 0) || is_uuid(segment)
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_ids_numbers_and_uuids() {
        let cases = [
            ("/api/invoices/123", "/api/invoices/:id"),
            ("/api/invoices/123?fields=[\"id\"]", "/api/invoices/:id"),
            (
                "/api/purchase_orders/25/issue",
                "/api/purchase_orders/:id/issue",
            ),
            (
                "/api/users/6b8f1e0a-3c2d-4e5f-9a8b-7c6d5e4f3a2b",
                "/api/users/:id",
            ),
            (
                "/api/attachments/0123456789abcdef0123",
                "/api/attachments/:id",
            ),
            (
                "/api/requisitions/new/submit_for_approval",
                "/api/requisitions/new/submit_for_approval",
            ),
            ("/api/invoices", "/api/invoices"),
            ("/api/invoices/", "/api/invoices/"),
            ("/", "/"),
            ("", "/"),
            ("/api/a/b/c/d/e/f/g/h/i/j", "/api/a/b/c/d/e/f/g/…"),
            ("/api/x/<script>", "/api/x/?script?"),
        ];
        for (path, want) in cases {
            assert_eq!(template(path), want, "{path}");
        }
        assert_eq!(
            template(&format!("/api/x/{}", "a".repeat(100))),
            "/api/x/:id"
        );
    }
}

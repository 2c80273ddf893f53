//! What the mock answers to a listing GET the way Coupa does: pages of a fixed set of
//! invoices (`limit`/`offset`, Coupa's paging parameters), in XML (Coupa's default) or
//! JSON by `Accept`, gzip-encoded when the caller accepts it. Enough for a real client's
//! paging loop to run against it and check every byte it gets.

use bytes::Bytes;
use http::header::{ACCEPT, ACCEPT_ENCODING};
use http::{HeaderMap, HeaderValue, Uri};

/// How many invoices the mock holds: a client paging with `limit=2` needs three pages.
pub const INVOICES: u32 = 5;

/// A page of invoices, when the request asks for one (a `limit` in the query); the
/// body and its content type.
pub fn page(uri: &Uri, headers: &HeaderMap) -> Option<(Bytes, HeaderValue)> {
    let query = uri.query()?;
    let param = |name: &str| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.parse::<u32>().ok())
    };
    let limit = param("limit")?.clamp(1, 50);
    let offset = param("offset").unwrap_or(0);
    let ids = (offset.saturating_add(1)..=INVOICES).take(limit as usize);
    let wants_json = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if wants_json {
        let items: Vec<_> = ids
            .map(|id| serde_json::json!({"id": id, "invoice-number": format!("INV-{id:04}"), "status": "approved"}))
            .collect();
        let body = serde_json::Value::Array(items).to_string();
        Some((
            Bytes::from(body),
            HeaderValue::from_static("application/json"),
        ))
    } else {
        let mut body = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<invoice-headers type=\"array\">\n",
        );
        for id in ids {
            body.push_str(&format!(
                "  <invoice-header>\n    <id type=\"integer\">{id}</id>\n    <invoice-number>INV-{id:04}</invoice-number>\n    <status>approved</status>\n  </invoice-header>\n"
            ));
        }
        body.push_str("</invoice-headers>\n");
        Some((
            Bytes::from(body),
            HeaderValue::from_static("application/xml"),
        ))
    }
}

/// The largest export the mock builds (`?export_bytes=`).
pub const MAX_EXPORT: usize = 64 * 1024 * 1024;

/// A large export, when the request asks for one: `export_bytes=N` in the query
/// answers `N` bytes (at most [`MAX_EXPORT`]) of CSV-like text, as Coupa's bulk exports
/// do, for tests of how responses flow back to slow or absent readers.
pub fn export(uri: &Uri) -> Option<(Bytes, HeaderValue)> {
    let query = uri.query()?;
    let n = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "export_bytes")
        .and_then(|(_, v)| v.parse::<usize>().ok())?
        .min(MAX_EXPORT);
    let line = b"4711,INV-0001,approved,1234.56,EUR\n";
    // Built a block at a time: cheap even in a debug build.
    let block: Vec<u8> = line.iter().copied().cycle().take(64 * 1024).collect();
    let mut body = Vec::with_capacity(n);
    while body.len() < n {
        let take = (n - body.len()).min(block.len());
        body.extend_from_slice(&block[..take]);
    }
    Some((Bytes::from(body), HeaderValue::from_static("text/csv")))
}

/// True when the caller accepts a gzip-encoded response.
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| coding.trim().split(';').next() == Some("gzip"))
}

/// `data` as a gzip member (RFC 1952) of stored deflate blocks (RFC 1951 §3.2.4): valid
/// gzip that every client decodes, without a compression library in the mock.
pub fn gzip(data: &[u8]) -> Bytes {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut blocks = data.chunks(0xffff).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        let last = u8::from(blocks.peek().is_none());
        // A chunk of at most 0xffff bytes: its length fits the 16-bit field.
        let len = u16::try_from(block.len()).unwrap_or(u16::MAX);
        out.push(last);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    // ISIZE is the length modulo 2^32 (RFC 1952 §2.3.1).
    out.extend_from_slice(&((data.len() & 0xffff_ffff) as u32).to_le_bytes());
    Bytes::from(out)
}

/// CRC-32 (IEEE 802.3, reflected), as gzip's trailer wants it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0_u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail by panicking")]

    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn pages_end_after_the_last_invoice() {
        let uri: Uri = "/api/invoices?limit=2&offset=4".parse().unwrap();
        let (body, ct) = page(&uri, &HeaderMap::new()).unwrap();
        assert_eq!(ct, "application/xml");
        assert_eq!(
            String::from_utf8_lossy(&body)
                .matches("<invoice-header>")
                .count(),
            1
        );
        let plain: Uri = "/api/invoices/4".parse().unwrap();
        assert!(page(&plain, &HeaderMap::new()).is_none());
    }
}

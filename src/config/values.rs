//! Parsing of the value syntaxes the configuration accepts beyond plain YAML: byte
//! sizes (`1MiB`), absolute http(s) URLs, and the name lists errors suggest.

use http::Uri;
use serde::Deserialize;

/// Accepts `1048576`, `"512KiB"`, `"1MiB"`, `"2MB"`.
pub(super) fn de_byte_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(n),
        Raw::Text(t) => parse_byte_size(&t).map_err(serde::de::Error::custom),
    }
}

/// A byte size: digits, then optionally one of B, KB, kB, KiB, MB, MiB, GB, GiB.
pub(super) fn parse_byte_size(t: &str) -> Result<u64, String> {
    let t = t.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{t}` is not a size (e.g. 1MiB, 512KiB, 1048576)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1024,
        "MB" => 1000 * 1000,
        "MiB" => 1024 * 1024,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "unknown size unit `{other}` (use B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{t}` is too large"))
}

/// Parses an absolute http(s) URL with a host and no credentials.
pub(super) fn parse_http_url(s: &str) -> Result<Uri, String> {
    let uri: Uri = s
        .parse()
        .map_err(|e| format!("`{s}` is not a valid URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(format!(
                "`{s}`: scheme must be http or https, not `{other}`"
            ));
        }
        None => {
            return Err(format!(
                "`{s}` must be an absolute URL starting with https://"
            ));
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("`{s}` has no host"));
    };
    if authority.as_str().contains('@') {
        return Err("must not contain credentials (user:password@); use client_secret".to_owned());
    }
    if authority.host().is_empty() {
        return Err(format!("`{s}` has no host"));
    }
    Ok(uri)
}

pub(super) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// "`a`, `b`" (or "none"), for errors that suggest the defined names.
pub(super) fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<_> = names.map(|n| format!("`{n}`")).collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("1MiB"), Ok(1024 * 1024));
        assert_eq!(parse_byte_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_byte_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_byte_size("77"), Ok(77));
        assert!(
            parse_byte_size("1TiB")
                .unwrap_err()
                .contains("unknown size unit")
        );
        assert!(parse_byte_size("lots").unwrap_err().contains("not a size"));
        assert!(
            parse_byte_size("99999999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn urls_are_absolute_http_without_credentials() {
        assert!(parse_http_url("https://acme.coupahost.com").is_ok());
        assert!(parse_http_url("ftp://x").unwrap_err().contains("scheme"));
        assert!(parse_http_url("acme.coupahost.com").is_err());
        let err = parse_http_url("https://user:pw@acme.coupahost.com").unwrap_err();
        assert!(err.contains("credentials") && !err.contains("pw"), "{err}");
    }
}

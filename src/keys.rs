//! Legacy API keys, identified by their SHA-256 fingerprint.
//!
//! Keys are never stored or compared in plaintext: the proxy hashes the presented key
//! once and looks the digest up in a hash map. Whatever the map compares, it compares
//! digests, so response timing reveals nothing usable about the key itself. Logs,
//! metrics and errors name a key by [`Fingerprint::short`], the first 8 hex digits.

use std::collections::HashMap;
use std::fmt;

use sha2::{Digest, Sha256};

/// The SHA-256 digest of an API key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Fingerprint of a raw key as sent in `X-COUPA-API-KEY` (the bytes, untrimmed).
    pub fn of_key(key: &[u8]) -> Self {
        Fingerprint(Sha256::digest(key).into())
    }

    /// Parses 64 hex digits (either case). The error never repeats the input, in case
    /// someone pasted the key itself where its hash belongs.
    pub fn from_hex(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.len() != 64 {
            return Err(format!(
                "expected 64 hex digits (a SHA-256 digest, see `keybridge hash-key`), got {} characters",
                s.chars().count()
            ));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| {
            "expected only hex digits 0-9 a-f (see `keybridge hash-key`)".to_owned()
        })?;
        Ok(Fingerprint(out))
    }

    /// The first 8 hex digits: enough to tell keys apart in logs, useless to an attacker.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.short())
    }
}

/// Fingerprint → value (the integration and what the proxy keeps beside it). Built
/// once per configuration.
#[derive(Debug)]
pub struct KeyMap<V> {
    by_fingerprint: HashMap<Fingerprint, V>,
}

impl<V> KeyMap<V> {
    pub fn new(entries: impl IntoIterator<Item = (Fingerprint, V)>) -> Self {
        KeyMap {
            by_fingerprint: entries.into_iter().collect(),
        }
    }

    /// The entry for the raw `key`, with the key's fingerprint.
    pub fn lookup(&self, key: &[u8]) -> (Fingerprint, Option<&V>) {
        let fp = Fingerprint::of_key(key);
        (fp, self.by_fingerprint.get(&fp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_matches_sha256_test_vector() {
        // SHA-256("test"), the example in the README.
        let fp = Fingerprint::of_key(b"test");
        assert_eq!(
            fp.to_string(),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert_eq!(fp.short(), "9f86d081");
        assert_eq!(
            Fingerprint::from_hex(&fp.to_string().to_uppercase()),
            Ok(fp)
        );
    }

    #[test]
    fn malformed_fingerprints_are_rejected_without_echo() {
        let pasted_key = "0123456789abcdef0123456789abcdef01234567";
        let err = Fingerprint::from_hex(pasted_key).unwrap_err();
        assert!(err.contains("got 40 characters"), "{err}");
        assert!(!err.contains(pasted_key));
        let err = Fingerprint::from_hex(&"zz".repeat(32)).unwrap_err();
        assert!(err.contains("hex digits"), "{err}");
    }
}

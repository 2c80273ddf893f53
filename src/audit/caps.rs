//! What each store keeps, and how the rest is folded: the same rules for the SQLite and
//! the PostgreSQL store, written once. Peer values (addresses, user agents) and
//! endpoints are capped per subject, beyond the cap endpoints count under one
//! `(other endpoints)` row; unknown keys beyond `max_unknown_keys` distinct
//! fingerprints count under one overflow subject.

use super::recorder::{OTHER_UNKNOWN_KEYS, Subject};

/// Peer values kept per subject (IPs and user agents); more are not stored.
pub(crate) const MAX_PEERS_PER_SUBJECT: i64 = 200;
/// Distinct endpoints stored per integration (and per integration in the fallback and
/// shadow tables); more are counted under one `(other endpoints)` row.
pub(crate) const MAX_ENDPOINTS_PER_SUBJECT: i64 = 500;
/// The same for the other subjects (unknown keys, bearer callers, anonymous), of which
/// there can be `max_unknown_keys` + 3; also their peer values.
pub(crate) const MAX_ENDPOINTS_PER_OTHER: i64 = 50;
pub(crate) const MAX_PEERS_PER_OTHER: i64 = 20;

/// How many endpoints and peer values a subject of `kind` keeps.
pub(super) fn caps(kind: &str) -> (i64, i64) {
    if kind == "integration" {
        (MAX_ENDPOINTS_PER_SUBJECT, MAX_PEERS_PER_SUBJECT)
    } else {
        (MAX_ENDPOINTS_PER_OTHER, MAX_PEERS_PER_OTHER)
    }
}

/// The unknown keys of one flush, folded past the cap: give it how many distinct
/// fingerprints the store holds, then ask it for each subject's stored name.
pub(super) struct UnknownKeys {
    stored: i64,
    max: i64,
}

impl UnknownKeys {
    /// `stored` distinct fingerprints already in the store (the overflow subject not
    /// counted), at most `max_unknown_keys`.
    pub(super) fn new(stored: i64, max_unknown_keys: usize) -> Self {
        UnknownKeys {
            stored,
            max: i64::try_from(max_unknown_keys).unwrap_or(i64::MAX),
        }
    }

    /// The name `subject` is stored under: its own, or the overflow subject for an
    /// unknown key not yet stored (`known` says whether it is) once the cap is reached.
    pub(super) fn name<'a>(&mut self, subject: &'a Subject, known: bool) -> &'a str {
        let name = subject.name();
        if let Subject::UnknownKey(fp) = subject
            && !known
            && fp != OTHER_UNKNOWN_KEYS
        {
            if self.stored >= self.max {
                return OTHER_UNKNOWN_KEYS;
            }
            self.stored += 1;
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_past_the_cap_fold_into_one_subject() {
        let mut folding = UnknownKeys::new(1, 2);
        let (a, b) = (
            Subject::UnknownKey("aa".into()),
            Subject::UnknownKey("bb".into()),
        );
        assert_eq!(folding.name(&a, false), "aa");
        assert_eq!(folding.name(&b, false), OTHER_UNKNOWN_KEYS);
        assert_eq!(folding.name(&b, true), "bb", "a stored key keeps its row");
        assert_eq!(caps("integration"), (500, 200));
        assert_eq!(caps("unknown_key"), (50, 20));
    }
}

//! How a request was handled, and a map with one value per outcome.
//!
//! [`OutcomeMap`] replaces positional `[u64; 7]` arrays: it is indexed by the
//! [`Outcome`] itself, and iterates as `(Outcome, &T)`, so no caller (counters, audit
//! windows, the SQLite columns, the report) depends on the order of the variants.

use std::ops::{Index, IndexMut};

/// How a request was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Forwarded with the legacy key (`observe`, `shadow`, canary's key share, unknown
    /// keys under `unknown_keys: observe`).
    ApiKey,
    /// Forwarded with the integration's OAuth token.
    Oauth,
    /// Tried with OAuth, got 401/403, retried with the key.
    Fallback,
    /// Refused because the integration is in `deny`.
    Denied,
    /// The caller already sent a bearer token and no key.
    Native,
    /// Refused before forwarding (missing/unknown key, bad request, no token).
    Rejected,
    /// Answered 429 by keybridge: no turn at the instance within `rate_limit.max_wait`.
    Throttled,
}

impl Outcome {
    /// Every outcome, in the order maps iterate.
    pub const ALL: [Outcome; 7] = [
        Outcome::ApiKey,
        Outcome::Oauth,
        Outcome::Fallback,
        Outcome::Denied,
        Outcome::Native,
        Outcome::Rejected,
        Outcome::Throttled,
    ];

    /// The stable name used in metrics labels, the audit store and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::ApiKey => "api_key",
            Outcome::Oauth => "oauth",
            Outcome::Fallback => "fallback",
            Outcome::Denied => "denied",
            Outcome::Native => "native",
            Outcome::Rejected => "rejected",
            Outcome::Throttled => "throttled",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Whether Coupa saw the legacy key for this request.
    pub fn used_key(self) -> bool {
        matches!(self, Outcome::ApiKey | Outcome::Fallback)
    }

    /// Position in [`OutcomeMap`]; private so the layout stays this module's business.
    const fn slot(self) -> usize {
        self as usize
    }
}

/// One `T` per [`Outcome`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutcomeMap<T>([T; 7]);

impl<T> OutcomeMap<T> {
    pub fn from_fn(mut f: impl FnMut(Outcome) -> T) -> Self {
        OutcomeMap(Outcome::ALL.map(&mut f))
    }

    /// `(outcome, value)` for every outcome, in [`Outcome::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Outcome, &T)> {
        Outcome::ALL.into_iter().zip(self.0.iter())
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }
}

impl OutcomeMap<u64> {
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &OutcomeMap<u64>) {
        for (o, c) in other.iter() {
            self[o] += c;
        }
    }
}

impl<T> Index<Outcome> for OutcomeMap<T> {
    type Output = T;
    fn index(&self, o: Outcome) -> &T {
        &self.0[o.slot()]
    }
}

impl<T> IndexMut<Outcome> for OutcomeMap<T> {
    fn index_mut(&mut self, o: Outcome) -> &mut T {
        &mut self.0[o.slot()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_slot_and_name() {
        for (i, o) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(o.slot(), i, "ALL is in declaration order");
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
        let mut m = OutcomeMap::<u64>::default();
        m[Outcome::Fallback] += 2;
        m[Outcome::Native] += 1;
        let seen: Vec<_> = m.iter().filter(|(_, c)| **c > 0).collect();
        assert_eq!(seen, [(Outcome::Fallback, &2), (Outcome::Native, &1)]);
        assert_eq!(m.total(), 3);
    }
}

//! A string that must never be printed: client secrets, raw API keys, admin tokens.
//!
//! `Debug` and `Display` both redact, so a `Secret` can sit in any struct that is
//! logged or formatted in an error without leaking. The value is reachable only through
//! [`Secret::expose`], which makes every place that handles the plaintext easy to find.

use std::fmt;

/// A redacting wrapper around a secret string.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(Box<str>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into().into_boxed_str())
    }

    /// The plaintext. Call only where the secret is sent to its owner (Coupa's token
    /// endpoint) or hashed.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The plaintext is overwritten when the secret is dropped (a reload replacing it, or
/// shutdown), so it does not linger in freed memory.
impl Drop for Secret {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Accepts strings and (unquoted) numbers; every error omits the value, which serde's
/// default "invalid type: integer `123…`" message would otherwise print.
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string (quote it)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::new(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret::new(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret::new(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom(
                    "a secret must be a string (quote it); the value is not shown",
                ))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom(
                    "a secret must be a string (quote it); the value is not shown",
                ))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2-very-secret");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert!(!format!("{:?}", Some(&s)).contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-very-secret");
    }

    #[test]
    fn numeric_secrets_are_accepted_and_errors_never_echo() {
        let s: Secret = yaml_serde::from_str("839201748392017483").unwrap();
        assert_eq!(s.expose(), "839201748392017483");
        let err = yaml_serde::from_str::<Secret>("8392017.5")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("8392017"), "{err}");
        let err = yaml_serde::from_str::<Secret>("[a, b]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("a string"), "{err}");
    }
}

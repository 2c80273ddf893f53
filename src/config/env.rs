//! `${VAR}` expansion in configuration strings.
//!
//! Expansion happens on the parsed YAML tree, string by string, so a variable's value
//! can never change the document's structure and an unset variable is reported with
//! the path of the field that names it. `$${` writes a literal `${`; any other `$` is
//! kept as is (secrets may contain `$`). Expanded values are not expanded again.

/// Where variables come from. The process environment in production; a map in tests,
/// so tests never mutate the real environment.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<S: std::hash::BuildHasher> Env for std::collections::HashMap<String, String, S> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Why a string could not be expanded. Never carries a variable's value.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    #[error("environment variable `{0}` is not set")]
    Unset(String),
    #[error("unterminated `${{` (expected `${{NAME}}`)")]
    Unterminated,
    #[error("invalid variable name `{0}` (letters, digits and `_`, not starting with a digit)")]
    BadName(String),
}

/// Expands every `${NAME}` in `input`. Returns `None` when there is nothing to expand,
/// so callers can skip copying.
pub fn expand(input: &str, env: &dyn Env) -> Result<Option<String>, ExpandError> {
    if !input.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find("${") {
        if rest[..pos].ends_with('$') {
            // `$${` is an escaped literal `${`.
            out.push_str(&rest[..pos - 1]);
            out.push_str("${");
            rest = &rest[pos + 2..];
            continue;
        }
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let end = after.find('}').ok_or(ExpandError::Unterminated)?;
        let name = &after[..end];
        if !is_valid_name(name) {
            return Err(ExpandError::BadName(name.to_owned()));
        }
        let value = env
            .var(name)
            .ok_or_else(|| ExpandError::Unset(name.to_owned()))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Some(out))
}

/// The names of the `${VAR}` references in `input` (escaped `$${` ones included, which
/// only errs on the side of redacting more).
pub fn referenced(input: &str) -> impl Iterator<Item = &str> {
    input.split("${").skip(1).filter_map(|rest| {
        let name = rest.split('}').next()?;
        (rest.contains('}') && is_valid_name(name)).then_some(name)
    })
}

fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Expands `${VAR}` in every string scalar of the tree (not in mapping keys).
pub(super) fn expand_tree(
    value: &mut yaml_serde::Value,
    path: &mut String,
    env: &dyn Env,
    errors: &mut Vec<super::error::FieldError>,
    expanded: &mut Vec<String>,
) {
    use yaml_serde::Value;
    match value {
        Value::String(s) => match expand(s, env) {
            Ok(Some(value)) => {
                // Remember the values that came from the environment, as they are and as
                // serde would quote them (values under 4 bytes are no secret, and
                // redacting them everywhere would garble messages).
                for var in referenced(s) {
                    if let Some(v) = env.var(var).filter(|v| v.len() >= 4) {
                        let quoted = format!("{v:?}");
                        expanded.push(quoted[1..quoted.len() - 1].to_owned());
                        expanded.push(v);
                    }
                }
                *s = value;
            }
            Ok(None) => {}
            Err(e) => {
                // Reported here; the field goes on empty so the rest can be checked.
                errors.push(super::error::FieldError {
                    field: path.clone(),
                    message: e.to_string(),
                });
                s.clear();
            }
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                expand_tree(item, path, env, errors, expanded);
                path.truncate(len);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                match k {
                    Value::String(k) => path.push_str(k),
                    other => path.push_str(&format!("{other:?}")),
                }
                expand_tree(v, path, env, errors, expanded);
                path.truncate(len);
            }
        }
        Value::Tagged(t) => expand_tree(&mut t.value, path, env, errors, expanded),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env() -> HashMap<String, String> {
        HashMap::from([
            ("SECRET".to_owned(), "s3cr$t".to_owned()),
            ("NESTED".to_owned(), "${SECRET}".to_owned()),
        ])
    }

    #[test]
    fn expands_variables_and_keeps_other_dollars() {
        let cases = [
            ("plain", None),
            ("${SECRET}", Some("s3cr$t")),
            ("a-${SECRET}-b", Some("a-s3cr$t-b")),
            ("$${SECRET}", Some("${SECRET}")),
            ("${NESTED}", Some("${SECRET}")),
            ("cost $5 ${SECRET}", Some("cost $5 s3cr$t")),
        ];
        for (input, want) in cases {
            assert_eq!(
                expand(input, &env()).unwrap().as_deref(),
                want,
                "input {input}"
            );
        }
    }

    #[test]
    fn lists_referenced_names() {
        let names: Vec<_> = referenced("a ${ONE} b ${TWO}${bad name} ${UNTERMINATED").collect();
        assert_eq!(names, ["ONE", "TWO"]);
    }

    #[test]
    fn reports_unset_bad_and_unterminated() {
        assert_eq!(
            expand("${NOPE}", &env()),
            Err(ExpandError::Unset("NOPE".into()))
        );
        assert_eq!(expand("${SECRET", &env()), Err(ExpandError::Unterminated));
        assert_eq!(
            expand("${1X}", &env()),
            Err(ExpandError::BadName("1X".into()))
        );
    }
}

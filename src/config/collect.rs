//! Every problem in one run: shape errors collected, then semantic ones beside them.
//!
//! serde stops at the first error. To report them all, [`deserialize`] records the
//! error, takes the offending value out of the tree (or, for a missing field, puts a
//! placeholder in) and tries again, until the tree deserialises. Validation then runs on
//! the repaired config, and [`Problems`] drops what it says about a field already
//! reported, so a mistake is reported once, where it was made.

use std::collections::HashMap;

use yaml_serde::Value;

use super::error::FieldError;
use super::locate::{self, Step};
use super::raw::RawConfig;

/// More rounds than any hand-written config has mistakes; bounds the work on a hostile
/// file (each round is one deserialisation of the tree).
const MAX_ROUNDS: usize = 200;

/// The problems found so far, one per field.
#[derive(Default)]
pub(super) struct Problems {
    errors: Vec<FieldError>,
}

impl Problems {
    /// Records `message` for `field`, unless `field` (or a field containing it) already
    /// has a problem: that one is the cause, this one its echo.
    pub(super) fn add(&mut self, field: String, message: String) {
        if !self.covers(&field) {
            self.errors.push(FieldError { field, message });
        }
    }

    pub(super) fn covers(&self, field: &str) -> bool {
        self.errors.iter().any(|e| {
            field
                .strip_prefix(e.field.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub(super) fn into_errors(self) -> Vec<FieldError> {
        self.errors
    }
}

/// What goes in for a missing field, tried in turn until one has the field's type.
const PLACEHOLDERS: usize = 3;

fn placeholder(attempt: usize) -> Value {
    match attempt {
        0 => Value::String(String::new()),
        1 => Value::Mapping(yaml_serde::Mapping::new()),
        _ => Value::Sequence(Vec::new()),
    }
}

/// Deserialises `tree`, recording each shape error in `problems` and repairing the tree
/// around it. `None` when the tree cannot be repaired (the problems found are recorded).
pub(super) fn deserialize(tree: &mut Value, problems: &mut Problems) -> Option<RawConfig> {
    let mut placeholders: HashMap<Vec<Step>, usize> = HashMap::new();
    for _ in 0..MAX_ROUNDS {
        // From a borrow: no copy of the tree per round.
        let error = match serde_path_to_error::deserialize::<_, RawConfig>(&*tree) {
            Ok(raw) => return Some(raw),
            Err(error) => error,
        };
        let message = error.inner().to_string();
        let Some(steps) = locate::steps_of(error.path()) else {
            problems.add(shown(&error.path().to_string()), message);
            return None;
        };
        if let Some(name) = missing_field(&message) {
            let mut field = steps.clone();
            field.push(Step::Key(name.to_owned()));
            problems.add(locate::render(&field), "required, but missing".to_owned());
            placeholders.insert(field, 0);
            if !locate::insert(tree, &steps, name, placeholder(0)) {
                return None;
            }
            continue;
        }
        if let Some(attempt) = placeholders.get_mut(&steps) {
            // Our placeholder has the wrong type; try the next kind.
            *attempt += 1;
            if *attempt >= PLACEHOLDERS {
                return None;
            }
            let next = placeholder(*attempt);
            *locate::get_mut(tree, &steps)? = next;
            continue;
        }
        let hint = hint(&message, locate::get(tree, &steps));
        problems.add(locate::render(&steps), hint);
        // Removing a list item would renumber the items after it (and misname them), so
        // a wrongly typed item ends the search; a mapping entry is simply taken out.
        if matches!(steps.last(), Some(Step::Index(_))) || !locate::remove(tree, &steps) {
            return None;
        }
    }
    problems.add(
        "(more)".to_owned(),
        format!("stopped looking after {MAX_ROUNDS} problems: fix these and run check again"),
    );
    None
}

fn shown(path: &str) -> String {
    if path == "." {
        "(top level)".to_owned()
    } else {
        path.to_owned()
    }
}

/// The field named by serde's "missing field `name`" message.
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")?
        .strip_suffix('`')
        .filter(|name| !name.contains('`'))
}

/// serde's message, made specific where the mistake is a common one.
fn hint(message: &str, value: Option<&Value>) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((field, expected)) = rest.split_once("`, expected ")
    {
        let known: Vec<&str> = expected
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|name| !name.is_empty())
            .collect();
        let closest = known
            .iter()
            .map(|name| (strsim::jaro_winkler(field, name), *name))
            .filter(|(score, _)| *score > 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0));
        return match closest {
            Some((_, name)) => format!("unknown field `{field}` (did you mean `{name}`?)"),
            None => format!("unknown field `{field}` (known here: {})", known.join(", ")),
        };
    }
    match value {
        Some(Value::String(s)) if message.contains("expected u8") && is_percentage(s) => {
            let number = s.trim().trim_end_matches('%').trim();
            format!("`{s}`: write the number without `%` (e.g. `{number}`), 0 to 100")
        }
        Some(Value::Number(n)) if message.contains("expected a duration") => {
            format!("`{n}` has no unit: write e.g. `{n}s` (units: ms, s, m, h, d)")
        }
        Some(Value::String(s)) if message.contains("expected a duration") => {
            format!("`{s}` is not a duration: write e.g. `500ms`, `10s`, `5m`, `20h`, `7d`")
        }
        _ => message.to_owned(),
    }
}

fn is_percentage(s: &str) -> bool {
    s.trim()
        .strip_suffix('%')
        .is_some_and(|n| n.trim().parse::<f64>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_of_a_reported_field_is_dropped() {
        let mut problems = Problems::default();
        problems.add("clients.a.client_secret".into(), "unset".into());
        problems.add("clients.a.client_secret".into(), "empty".into());
        problems.add("clients.a.client_secretx".into(), "different field".into());
        problems.add("clients.a".into(), "the parent".into());
        problems.add(
            "clients.a.client_id".into(),
            "under a reported parent".into(),
        );
        let fields: Vec<_> = problems
            .into_errors()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "clients.a.client_secret",
                "clients.a.client_secretx",
                "clients.a"
            ]
        );
    }

    #[test]
    fn hints_for_common_mistakes() {
        let unknown = "unknown field `canary_percentage`, expected one of `name`, `canary_percent`";
        assert_eq!(
            hint(unknown, None),
            "unknown field `canary_percentage` (did you mean `canary_percent`?)"
        );
        let far = "unknown field `zzz`, expected `cert` or `key`";
        assert_eq!(
            hint(far, None),
            "unknown field `zzz` (known here: cert, key)"
        );
        let pct = Value::String("20%".into());
        assert!(hint("invalid type: string \"20%\", expected u8", Some(&pct)).contains("`20`"));
        let ten = Value::Number(10.into());
        assert!(
            hint(
                "invalid type: integer `10`, expected a duration",
                Some(&ten)
            )
            .contains("`10s`")
        );
        assert_eq!(
            missing_field("missing field `client_id`"),
            Some("client_id")
        );
        assert_eq!(missing_field("invalid type"), None);
    }
}

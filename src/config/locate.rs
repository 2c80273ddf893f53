//! Field paths: finding a field in the YAML tree, and naming it for people.
//!
//! Paths render as serde_path_to_error does (`clients.erp-sync.scopes[0]`), except that
//! an integration is named by its `name` (`integrations.netsuite-bundle.mode`): people
//! know their integrations by name, not by position in the list.

use yaml_serde::Value;

/// One step into the tree.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Step {
    Key(String),
    Index(usize),
}

/// How a path is written in messages before integrations are named:
/// `a.b[0].c`, `.` separating keys, `[i]` indexing sequences.
pub(super) fn render(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The steps of a serde_path_to_error path; `None` when a step is not a key or index.
pub(super) fn steps_of(path: &serde_path_to_error::Path) -> Option<Vec<Step>> {
    use serde_path_to_error::Segment;
    path.iter()
        .map(|segment| match segment {
            Segment::Map { key } => Some(Step::Key(key.clone())),
            Segment::Seq { index } => Some(Step::Index(*index)),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
        .collect()
}

/// The node at `steps`, if there is one.
pub(super) fn get<'a>(tree: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    steps
        .iter()
        .try_fold(tree, |node, step| match (node, step) {
            (Value::Mapping(map), Step::Key(key)) => map.get(key.as_str()),
            (Value::Sequence(items), Step::Index(i)) => items.get(*i),
            (Value::Tagged(tagged), _) => get(&tagged.value, std::slice::from_ref(step)),
            _ => None,
        })
}

/// The node at `steps`, for changing it.
pub(super) fn get_mut<'a>(tree: &'a mut Value, steps: &[Step]) -> Option<&'a mut Value> {
    let mut node = tree;
    for step in steps {
        while let Value::Tagged(tagged) = node {
            node = &mut tagged.value;
        }
        node = match (node, step) {
            (Value::Mapping(map), Step::Key(key)) => map.get_mut(key.as_str())?,
            (Value::Sequence(items), Step::Index(i)) => items.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

/// Removes the node at `steps` from its parent; `false` when there is none (or `steps`
/// is the root). A removed sequence item shifts the later ones, so callers remove the
/// item's contents, never the item itself (see [`super::collect`]).
pub(super) fn remove(tree: &mut Value, steps: &[Step]) -> bool {
    let Some((last, parent)) = steps.split_last() else {
        return false;
    };
    let Some(mut parent) = get_mut(tree, parent) else {
        return false;
    };
    while let Value::Tagged(tagged) = parent {
        parent = &mut tagged.value;
    }
    match (parent, last) {
        (Value::Mapping(map), Step::Key(key)) => map.remove(key.as_str()).is_some(),
        _ => false,
    }
}

/// Sets `key` in the mapping at `steps` (for a placeholder of a missing field).
pub(super) fn insert(tree: &mut Value, steps: &[Step], key: &str, value: Value) -> bool {
    match get_mut(tree, steps) {
        Some(Value::Mapping(map)) => {
            map.insert(Value::String(key.to_owned()), value);
            true
        }
        _ => false,
    }
}

/// Names list items people know by name: `integrations[2].mode` becomes
/// `integrations.netsuite-bundle.mode` when item 2's `name` is a unique, non-empty
/// string in `tree`. Other paths are returned as they are.
pub(super) fn by_name(field: &str, tree: &Value) -> String {
    const LIST: &str = "integrations";
    let Some(rest) = field.strip_prefix(LIST).and_then(|r| r.strip_prefix('[')) else {
        return field.to_owned();
    };
    let Some((index, tail)) = rest.split_once(']') else {
        return field.to_owned();
    };
    let Ok(index) = index.parse::<usize>() else {
        return field.to_owned();
    };
    let names: Vec<Option<&str>> = match get(tree, &[Step::Key(LIST.to_owned())]) {
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| {
                get(item, &[Step::Key("name".to_owned())])
                    .and_then(Value::as_str)
                    .filter(|n| !n.trim().is_empty())
            })
            .collect(),
        _ => return field.to_owned(),
    };
    match names.get(index).copied().flatten() {
        Some(name) if names.iter().filter(|n| **n == Some(name)).count() == 1 => {
            format!("{LIST}.{name}{tail}")
        }
        _ => field.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> Value {
        yaml_serde::from_str(
            "integrations:\n  - name: erp\n    mode: oauth\n  - name: dup\n  - name: dup\n  - mode: x\n",
        )
        .unwrap()
    }

    #[test]
    fn names_integrations_by_their_unique_name() {
        let tree = tree();
        assert_eq!(
            by_name("integrations[0].mode", &tree),
            "integrations.erp.mode"
        );
        assert_eq!(by_name("integrations[0]", &tree), "integrations.erp");
        // Ambiguous or missing names keep the index; so do other paths.
        assert_eq!(
            by_name("integrations[1].mode", &tree),
            "integrations[1].mode"
        );
        assert_eq!(by_name("integrations[3]", &tree), "integrations[3]");
        assert_eq!(by_name("integrations[9]", &tree), "integrations[9]");
        assert_eq!(by_name("clients.a[0]", &tree), "clients.a[0]");
    }

    #[test]
    fn finds_removes_and_inserts_by_steps() {
        let mut tree = tree();
        let mode = [
            Step::Key("integrations".into()),
            Step::Index(0),
            Step::Key("mode".into()),
        ];
        assert_eq!(render(&mode), "integrations[0].mode");
        assert_eq!(get(&tree, &mode).and_then(Value::as_str), Some("oauth"));
        assert!(remove(&mut tree, &mode));
        assert!(get(&tree, &mode).is_none());
        assert!(!remove(&mut tree, &mode));
        assert!(insert(&mut tree, &mode[..2], "mode", Value::from("x")));
        assert_eq!(get(&tree, &mode).and_then(Value::as_str), Some("x"));
        assert!(!remove(&mut tree, &[]));
    }
}

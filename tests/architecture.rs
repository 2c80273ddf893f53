//! The crate's house: every module stands on a floor and imports only modules on its own
//! floor or below (through `use`, or an inline `crate::…`/`super::…` path), and the
//! module graph has no cycles. A climbing import or a cycle means something shared
//! belongs a floor lower, or a leaf module is missing; see lib.rs and STYLE.md.
//!
//! | floor | modules |
//! |---|---|
//! | 6 | `cli` — the binary's faces |
//! | 5 | `runtime` — one process: listeners, workers, admin, `build` |
//! | 4 | `proxy` — one request |
//! | 3 | `token`, `upstream`, `audit`, `shaping`, `tls`, `redis_link`, `metrics` — services |
//! | 2 | `config` |
//! | 1 | `body`, `bucket`, `keys`, `log`, `memory`, `outcome`, `paths`, `respond`, `scopes` — vocabulary |

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`proxy::send`) → its source text, comments removed.
fn modules() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            match parts.last().map(String::as_str) {
                Some("main") => continue, // the binary: a separate crate
                Some("lib") if parts.len() == 1 => parts.clear(),
                Some("mod") => {
                    parts.pop();
                }
                _ => {}
            }
            let text: String = std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .map(|l| format!("{l}\n"))
                .collect();
            // Unit tests (an inline `mod tests {` at the end) import their own file's
            // items. A `#[cfg(test)] mod tests;` declaration is only cut out itself: what
            // follows it (a folder's re-exports) is real.
            let text = text
                .split("#[cfg(test)]\nmod tests {")
                .next()
                .unwrap_or_default()
                .replace("#[cfg(test)]\nmod tests;", "");
            out.insert(parts.join("::"), text);
        }
    }
    out
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.split(" as ").next().unwrap_or(tree).trim().to_owned()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap()];
    let (mut depth, mut start, mut items) = (0, 0, Vec::new());
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
        .into_iter()
        .filter(|i| !i.trim().is_empty())
        .flat_map(expand)
        .map(|i| format!("{prefix}{i}"))
        .collect()
}

/// Every crate-internal path a module mentions, made absolute: `crate::…`, `super::…`,
/// `self::…`, and paths that start with one of the module's children (`env::expand`).
fn paths(module: &str, text: &str, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let mut raw = Vec::new();
    for stmt in text.split(';') {
        let stmt = stmt.trim();
        if let Some(pos) = stmt.find("use ") {
            let before = stmt[..pos].trim();
            if before.is_empty() || before.ends_with("pub") || before.ends_with(')') {
                raw.extend(expand(&stmt[pos + 4..]));
            }
        }
    }
    for word in text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
        let first = word.split("::").next().unwrap_or_default();
        if word.contains("::") && (["crate", "super"].contains(&first) || children.contains(first))
        {
            raw.push(word.trim_end_matches(':').to_owned());
        }
    }
    let here: Vec<String> = if module.is_empty() {
        vec![]
    } else {
        module.split("::").map(str::to_owned).collect()
    };
    raw.into_iter()
        .filter_map(|p| {
            let mut segs: Vec<&str> = p.split("::").collect();
            let mut base = match segs.first()? {
                &"crate" => vec![],
                &"super" | &"self" => here.clone(),
                child if children.contains(*child) => {
                    segs.insert(0, "self");
                    here.clone()
                }
                _ => return None,
            };
            if segs[0] == "crate" || segs[0] == "self" {
                segs.remove(0);
            }
            while segs.first() == Some(&"super") {
                segs.remove(0);
                base.pop()?;
            }
            base.extend(segs.iter().map(|s| s.to_string()));
            Some(base)
        })
        .collect()
}

/// The floor of each top-level module (see the table above).
const FLOORS: &[(usize, &[&str])] = &[
    (6, &["cli"]),
    (5, &["runtime"]),
    (4, &["proxy"]),
    (
        3,
        &[
            "token",
            "upstream",
            "audit",
            "shaping",
            "tls",
            "redis_link",
            "metrics",
        ],
    ),
    (2, &["config"]),
    (
        1,
        &[
            "body", "bucket", "keys", "log", "memory", "outcome", "paths", "respond", "scopes",
        ],
    ),
];

/// The floor of `module` (by its top-level module); `None` for the crate root.
fn floor(module: &str) -> Option<usize> {
    let top = module.split("::").next().filter(|t| !t.is_empty())?;
    let floor = FLOORS
        .iter()
        .find(|(_, names)| names.contains(&top))
        .map(|(floor, _)| *floor);
    assert!(
        floor.is_some(),
        "module `{top}` has no floor: add it to FLOORS (and to lib.rs's table)"
    );
    floor
}

/// Who imports whom: module → the modules (source files) it refers to.
fn edges(modules: &BTreeMap<String, String>) -> BTreeMap<&str, BTreeSet<&str>> {
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (module, text) in modules {
        let prefix = if module.is_empty() {
            String::new()
        } else {
            format!("{module}::")
        };
        let children: BTreeSet<String> = modules
            .keys()
            .filter_map(|m| m.strip_prefix(&prefix))
            .filter(|rest| !rest.is_empty() && !rest.contains("::"))
            .map(str::to_owned)
            .collect();
        for path in paths(module, text, &children) {
            // The longest prefix of the path that is a module is the file it refers to.
            let target = (0..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|m| modules.contains_key(m));
            if let Some(target) = target {
                let (target, _) = modules.get_key_value(&target).unwrap();
                if target != module {
                    edges.entry(module).or_default().insert(target);
                }
            }
        }
    }
    edges
}

#[test]
fn every_import_stays_on_its_floor_or_below() {
    let modules = modules();
    let edges = edges(&modules);
    let mut climbing = Vec::new();
    for (from, targets) in &edges {
        for to in targets {
            if let (Some(a), Some(b)) = (floor(from), floor(to))
                && b > a
            {
                climbing.push(format!("{from} (floor {a}) imports {to} (floor {b})"));
            }
        }
    }
    assert!(
        climbing.is_empty(),
        "imports that climb a floor:\n{}",
        climbing.join("\n")
    );
    // Every module has a floor (`floor` fails on one that has none).
    for module in modules.keys() {
        floor(module);
    }
}

/// Start and reload build the per-config state through one function
/// (`runtime::build::state`): nothing else constructs it, so what a reload carries is
/// decided in one place.
#[test]
fn the_state_requests_run_on_is_built_in_one_place() {
    let modules = modules();
    let builders: Vec<&String> = modules
        .iter()
        // `proxy::tests` (compiled only for unit tests) builds one by hand.
        .filter(|(module, text)| text.contains("State::new(") && !module.ends_with("::tests"))
        .map(|(module, _)| module)
        .collect();
    assert_eq!(
        builders,
        ["runtime::build"],
        "State::new called outside build"
    );
}

#[test]
fn no_two_source_files_import_each_other() {
    let modules = modules();
    assert!(modules.len() > 30, "found only {} modules", modules.len());
    let edges = edges(&modules);
    // Depth-first search for a cycle.
    fn visit<'a>(
        m: &'a str,
        edges: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if let Some(i) = path.iter().position(|p| *p == m) {
            let mut cycle = path[i..].to_vec();
            cycle.push(m);
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m);
        for next in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m);
        None
    }
    let mut done = BTreeSet::new();
    let mut cycles = BTreeSet::new();
    for m in modules.keys() {
        if let Some(cycle) = visit(m, &edges, &mut Vec::new(), &mut done) {
            let shown: Vec<&str> = cycle
                .iter()
                .map(|m| if m.is_empty() { "lib" } else { m })
                .collect();
            cycles.insert(shown.join(" -> "));
        }
    }
    let cycles: Vec<String> = cycles.into_iter().collect();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
    // The checker sees real edges (a vacuous graph would pass anything).
    assert!(edges["proxy::forward"].contains("proxy::outbound"));
    assert!(edges["runtime::admin"].contains("runtime::core"));
    assert!(
        edges["config"].contains("config::validate"),
        "relative paths count"
    );
}

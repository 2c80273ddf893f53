//! The README's configuration reference is generated from the schema: the `///`
//! comments on the fields of `src/config/raw.rs`, walked from `RawConfig` down. When
//! the two differ this test fails and shows the table to paste; with
//! `KEYBRIDGE_BLESS=1` it rewrites the README section itself.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

use std::collections::BTreeMap;
use std::path::Path;

const BEGIN: &str =
    "<!-- config reference: generated from src/config/raw.rs by tests/config_reference.rs -->";
const END: &str = "<!-- end of config reference -->";

struct Field {
    name: String,
    ty: String,
    doc: String,
}

/// Struct name → its fields, in order.
fn structs(source: &str) -> BTreeMap<String, Vec<Field>> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, Vec<Field>)> = None;
    let mut doc = Vec::new();
    for line in source.lines() {
        let line = line.trim();
        if let Some((name, fields)) = current.as_mut() {
            if line == "}" {
                out.insert(name.clone(), std::mem::take(fields));
                current = None;
            } else if let Some(d) = line.strip_prefix("///") {
                doc.push(d.trim().to_owned());
            } else if let Some(rest) = line.strip_prefix("pub ") {
                let (field, ty) = rest.split_once(':').expect("a field");
                fields.push(Field {
                    name: field.trim().to_owned(),
                    ty: ty.trim().trim_end_matches(',').to_owned(),
                    doc: std::mem::take(&mut doc).join(" "),
                });
            } else if !line.starts_with("#[") {
                doc.clear();
            }
            continue;
        }
        let decl = line
            .strip_prefix("pub struct ")
            .or_else(|| line.strip_prefix("pub(super) struct "));
        if let Some(name) = decl.and_then(|d| d.strip_suffix(" {")) {
            current = Some((name.to_owned(), Vec::new()));
        }
        doc.clear();
    }
    out
}

fn rows(structs: &BTreeMap<String, Vec<Field>>, name: &str, prefix: &str, out: &mut Vec<String>) {
    for f in &structs[name] {
        let (inner, path) = if let Some(t) = f.ty.strip_prefix("Vec<") {
            let t = t.trim_end_matches('>');
            let brackets = if structs.contains_key(t) { "[]" } else { "" };
            (t, format!("{prefix}{}{brackets}", f.name))
        } else if let Some(t) = f.ty.strip_prefix("BTreeMap<String, ") {
            (
                t.trim_end_matches('>'),
                format!("{prefix}{}.<name>", f.name),
            )
        } else if let Some(t) = f.ty.strip_prefix("Option<") {
            (t.trim_end_matches('>'), format!("{prefix}{}", f.name))
        } else {
            (f.ty.as_str(), format!("{prefix}{}", f.name))
        };
        let nested = structs.contains_key(inner);
        if !f.doc.is_empty() {
            out.push(format!("| `{path}` | {} |", f.doc));
        } else if !nested {
            panic!("{path} has no doc comment: every field is documented for operators");
        }
        if nested {
            rows(structs, inner, &format!("{path}."), out);
        }
    }
}

fn table() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(root.join("src/config/raw.rs")).unwrap();
    let structs = structs(&source);
    let mut out = vec!["| field | meaning |".to_owned(), "|---|---|".to_owned()];
    rows(&structs, "RawConfig", "", &mut out);
    out.join("\n")
}

#[test]
fn the_readme_reference_is_the_schema() {
    let table = table();
    // Non-vacuous: the walk reached nested settings and every section.
    for path in [
        "`instances.<name>.base_url`",
        "`clients.<name>.client_secret_file`",
        "`integrations[].canary_percent`",
        "`server.max_in_flight`",
        "`tls.cert`",
        "`audit.ready_after`",
    ] {
        assert!(table.contains(path), "{path} missing from:\n{table}");
    }
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let (Some(start), Some(end)) = (readme.find(BEGIN), readme.find(END)) else {
        panic!("README.md lacks the markers {BEGIN} … {END}");
    };
    let current = readme[start + BEGIN.len()..end].trim();
    if current == table {
        return;
    }
    if std::env::var_os("KEYBRIDGE_BLESS").is_some() {
        let updated = format!("{}{BEGIN}\n{table}\n{}", &readme[..start], &readme[end..]);
        std::fs::write(&readme_path, updated).unwrap();
        return;
    }
    panic!(
        "README.md's configuration reference differs from src/config/raw.rs; run \
         `KEYBRIDGE_BLESS=1 cargo test --test config_reference` or paste:\n{table}"
    );
}

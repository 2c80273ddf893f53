//! The leak scan: after the whole suite has run, grep every log line keybridge wrote and
//! every response a test received from it for the API keys and client secrets the tests
//! used and for any token the mock Coupa issued. Run after `cargo test` (the README's
//! test command does): `cargo test --test leak_scan -- --ignored`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod support;

use std::collections::BTreeSet;

/// Mock tokens look like `mock.` followed by URL-safe characters (src/mock.rs).
fn mock_tokens(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("mock.") {
        let tail = &rest[i + 5..];
        let len = tail
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
            .count();
        if len >= 11 {
            found.push(&rest[i..i + 5 + len]);
        }
        rest = &rest[i + 5..];
    }
    found
}

#[test]
#[ignore = "reads the evidence the rest of the suite leaves; run after `cargo test`"]
fn no_key_secret_or_token_appears_in_any_log_or_response_of_the_suite() {
    let dir = support::leak::dir();
    let mut canaries = BTreeSet::new();
    let mut evidence = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("run `cargo test` first") {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        match path.extension().and_then(|e| e.to_str()) {
            Some("canaries") => canaries.extend(
                String::from_utf8_lossy(&bytes)
                    .lines()
                    .map(str::to_owned)
                    .filter(|l| !l.is_empty()),
            ),
            Some("log" | "responses") => evidence.push((path, bytes)),
            _ => {}
        }
    }
    // Not vacuous: the suite's binaries left logs and responses, and used secrets.
    let binaries: BTreeSet<String> = evidence
        .iter()
        .filter_map(|(p, _)| {
            p.file_name()?
                .to_str()?
                .split('-')
                .next()
                .map(str::to_owned)
        })
        .collect();
    let total: usize = evidence.iter().map(|(_, b)| b.len()).sum();
    assert!(binaries.len() >= 8, "evidence from only {binaries:?}");
    assert!(total > 1_000_000, "only {total} bytes of evidence");
    assert!(canaries.contains(support::KEY) && canaries.contains(support::SECRET));
    assert!(canaries.len() >= 10, "canaries: {canaries:?}");

    let mut leaks = Vec::new();
    for (path, bytes) in &evidence {
        let text = String::from_utf8_lossy(bytes);
        for secret in &canaries {
            if let Some(at) = text.find(secret.as_str()) {
                let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let line: String = text[line_start..]
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(300)
                    .collect();
                leaks.push(format!("{}: `{secret}` in: {line}", path.display()));
            }
        }
        for token in mock_tokens(&text) {
            leaks.push(format!("{}: a mock token `{token:.12}…`", path.display()));
        }
    }
    assert!(
        leaks.is_empty(),
        "{} leaks:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
}

#[test]
fn the_token_pattern_finds_mock_tokens() {
    assert_eq!(
        mock_tokens("x Bearer mock.AbC-_12345678 y mock.rs keybridge::mock.x"),
        ["mock.AbC-_12345678"]
    );
}

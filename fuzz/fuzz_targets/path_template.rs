//! Any request path folds into a bounded, printable endpoint template: hostile paths
//! cannot grow the audit or smuggle control characters into the dashboard or CSV.
#![no_main]

use keybridge::audit::template::template;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let t = template(path);
    assert!(t.starts_with('/'), "{t}");
    assert!(t.chars().count() <= 8 * 49 + 2, "unbounded template: {} chars", t.len());
    assert!(
        t.chars().all(|c| c.is_ascii_alphanumeric() || "/_-.%:?…".contains(c)),
        "odd character in {t:?}"
    );
});

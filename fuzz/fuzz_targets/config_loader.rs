//! Any bytes as a config file: a value or a clear error, never a panic, and an error
//! never quotes the client secret it was given.
#![no_main]

use std::collections::HashMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-secret-7d1e";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = HashMap::from([("ERP_SYNC_SECRET".to_owned(), SECRET.to_owned())]);
    match keybridge::config::Config::from_yaml(text, Path::new("."), &env) {
        Ok(config) => {
            assert!(!format!("{config:?}").contains(SECRET), "Debug shows a secret");
        }
        Err(e) => {
            let shown = format!("{e:#}");
            assert!(!shown.contains(SECRET), "an error quotes the secret: {shown}");
        }
    }
});

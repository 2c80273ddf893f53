//! Any bytes as a config file: a value or a clear error, never a panic, and an error
//! never quotes the client secret it was given. Every duration an accepted config holds
//! can be added to the clock (timers built from it cannot overflow).
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
            let now = std::time::Instant::now();
            let (t, u, s, a) = (&config.token, &config.upstream, &config.server, &config.audit);
            for d in [
                t.settle_delay,
                t.refresh_before_expiry,
                t.request_timeout,
                t.max_retry_backoff,
                t.min_refetch_interval,
                u.connect_timeout,
                u.response_timeout,
                u.pool_idle_timeout,
                s.header_read_timeout,
                s.idle_timeout,
                s.shutdown_grace,
                s.body_read_timeout,
                a.flush_interval,
                a.ready_after,
                a.retention,
            ] {
                assert!(now.checked_add(d * 4).is_some(), "{d:?} accepted but unusable");
            }
        }
        Err(e) => {
            let shown = format!("{e:#}");
            assert!(!shown.contains(SECRET), "an error quotes the secret: {shown}");
        }
    }
});

//! An operator validates a config with `keybridge check`: every mistake gets a message
//! naming the field, and exit code 1.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::KEY;

const FP: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn valid() -> String {
    format!(
        r#"listen: 127.0.0.1:8080
admin_listen: 127.0.0.1:9900
instances:
  prod:
    base_url: https://acme.coupahost.com
clients:
  erp-sync:
    instance: prod
    client_id: erp-sync-client
    client_secret: ${{ERP_SYNC_SECRET}}
    scopes: [core.invoice.read, core.invoice.write]
integrations:
  - name: netsuite-bundle
    api_key_sha256: {FP}
    client: erp-sync
"#
    )
}

fn check(yaml: &str) -> Output {
    let dir = tempdir();
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    Command::new(env!("CARGO_BIN_EXE_keybridge"))
        .args(["check", "--config"])
        .arg(&path)
        .env("ERP_SYNC_SECRET", "s3cret-value")
        .env_remove("UNSET_VAR_FOR_TEST")
        .output()
        .unwrap()
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "keybridge-test-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_valid_config_passes() {
    let out = check(&valid());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK (1 instance, 1 client, 1 integration)")
    );
}

#[test]
fn each_mistake_is_named_with_exit_code_1() {
    let v = valid();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown top-level field",
            format!("{v}listne: 1\n"),
            "unknown field `listne`",
        ),
        (
            "unknown client field",
            v.replace("    scopes:", "    scope: x\n    scopes:"),
            "clients.erp-sync.scope: unknown field `scope`",
        ),
        (
            "undefined client",
            v.replace("    client: erp-sync", "    client: erp-sink"),
            "integrations.netsuite-bundle.client: client `erp-sink` is not defined",
        ),
        (
            "undefined instance",
            v.replace("    instance: prod", "    instance: production"),
            "clients.erp-sync.instance: instance `production` is not defined",
        ),
        (
            "unset variable",
            v.replace("${ERP_SYNC_SECRET}", "${UNSET_VAR_FOR_TEST}"),
            "clients.erp-sync.client_secret: environment variable `UNSET_VAR_FOR_TEST` is not set",
        ),
        (
            "malformed base_url",
            v.replace("https://acme.coupahost.com", "acme.coupahost.com"),
            "instances.prod.base_url",
        ),
        (
            "base_url with a path",
            v.replace(
                "https://acme.coupahost.com",
                "https://acme.coupahost.com/api",
            ),
            "must be scheme and host only",
        ),
        (
            "ftp base_url",
            v.replace("https://acme.coupahost.com", "ftp://acme.coupahost.com"),
            "scheme must be http or https",
        ),
        (
            "malformed token_url",
            v.replace("    base_url:", "    token_url: not a url\n    base_url:"),
            "instances.prod.token_url",
        ),
        (
            "short fingerprint",
            v.replace(FP, &FP[..40]),
            "integrations.netsuite-bundle.api_key_sha256: expected 64 hex digits",
        ),
        (
            "non-hex fingerprint",
            v.replace(FP, &"g".repeat(64)),
            "integrations.netsuite-bundle.api_key_sha256: expected only hex digits",
        ),
        (
            "duplicate fingerprint",
            format!(
                "{v}  - name: other\n    api_key_sha256: {}\n    client: erp-sync\n",
                FP.to_uppercase()
            ),
            "integrations.other: duplicate API key (fingerprint 9f86d081): integration `netsuite-bundle` already uses it",
        ),
        (
            "duplicate raw key vs fingerprint",
            format!("{v}  - name: other\n    api_key: test\n    client: erp-sync\n"),
            "duplicate API key",
        ),
        (
            "duplicate name",
            format!(
                "{v}  - name: netsuite-bundle\n    api_key: another-key\n    client: erp-sync\n"
            ),
            "integrations[1].name: duplicate integration name `netsuite-bundle`",
        ),
        (
            "both key forms",
            v.replace(
                "    client: erp-sync\n",
                "    client: erp-sync\n    api_key: abc\n",
            ),
            "set either `api_key_sha256` or `api_key`",
        ),
        (
            "no secret",
            v.replace("    client_secret: ${ERP_SYNC_SECRET}\n", ""),
            "missing `client_secret`",
        ),
        (
            "missing secret file",
            v.replace(
                "client_secret: ${ERP_SYNC_SECRET}",
                "client_secret_file: /nonexistent/secret",
            ),
            "clients.erp-sync.client_secret_file: cannot read",
        ),
        (
            "scope with a space",
            v.replace(
                "core.invoice.write]",
                "\"core.invoice.write core.user.read\"]",
            ),
            "clients.erp-sync.scopes[1]",
        ),
        (
            "bad duration",
            format!("{v}token:\n  settle_delay: soon\n"),
            "token.settle_delay",
        ),
        (
            "duration without a unit",
            format!("{v}token:\n  settle_delay: 10\n"),
            "token.settle_delay: `10` has no unit: write e.g. `10s`",
        ),
        (
            "percentage with a percent sign",
            v.replace(
                "    client: erp-sync\n",
                "    client: erp-sync\n    mode: canary\n    canary_percent: 20%\n",
            ),
            "integrations.netsuite-bundle.canary_percent: `20%`: write the number without `%`",
        ),
        (
            "a typo of a known field",
            v.replace(
                "    client: erp-sync\n",
                "    client: erp-sync\n    mode: canary\n    canary_percentage: 20\n",
            ),
            "integrations.netsuite-bundle.canary_percentage: unknown field `canary_percentage` (did you mean `canary_percent`?)",
        ),
        (
            "a missing required field",
            v.replace("    client_id: erp-sync-client\n", ""),
            "clients.erp-sync.client_id: required, but missing",
        ),
        (
            "not a PostgreSQL URL",
            format!("{v}audit:\n  postgres_url: mysql://u:hunter2-secret@h/db\n"),
            "audit.postgres_url: must be a URL like postgres://user:password@host:5432/dbname",
        ),
        (
            "TLS to Redis",
            format!("{v}fleet:\n  redis_url: rediss://:pw@h:6379\n"),
            "fleet.redis_url: TLS to Redis (rediss://) is not supported yet",
        ),
        (
            "a bad replica name",
            format!("{v}fleet:\n  replica: two words\n"),
            "fleet.replica: 1 to 63 letters",
        ),
        ("not YAML", "instances: [\n".to_owned(), "not valid YAML"),
        (
            "wrong type",
            v.replace("listen: 127.0.0.1:8080", "listen: [1]"),
            "listen:",
        ),
        // Found by the config_loader fuzz target: a secret from the environment in a
        // place of the wrong type must not be quoted by the error.
        (
            "secret where a client belongs",
            v.replace("clients:\n", "clients:\n  leaked: ${ERP_SYNC_SECRET}\n"),
            "clients.leaked: invalid type: string \"<value from the environment>\"",
        ),
        (
            "secret inside a misplaced multi-line string",
            format!("{v}tls: \"a\\nb ${{ERP_SYNC_SECRET}}\"\n"),
            "tls: invalid type: string",
        ),
        (
            "a variable without braces",
            v.replace("${ERP_SYNC_SECRET}", "$ERP_SYNC_SECRET"),
            "clients.erp-sync.client_secret: `$ERP_SYNC_SECRET` is not expanded: write `${ERP_SYNC_SECRET}`",
        ),
        (
            "secret as an instance name",
            v.replace("    instance: prod\n", "    instance: ${ERP_SYNC_SECRET}\n"),
            "<value from the environment>",
        ),
    ];
    for (name, yaml, want) in cases {
        let out = check(&yaml);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(want),
            "{name}: expected `{want}` in:\n{stderr}"
        );
        assert!(!stderr.contains("s3cret-value"), "{name}: secret leaked");
        assert!(
            !stderr.contains("hunter2"),
            "{name}: a URL's password leaked"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
}

/// One mistake, one message: what follows from it (an instance whose URL is bad is
/// still defined; an empty value from an unset variable is not "empty" again) is not
/// reported as further mistakes.
#[test]
fn a_mistake_is_reported_once_where_it_was_made() {
    let bad_url = valid().replace("https://acme.coupahost.com", "acme.coupahost.com");
    let unset = valid().replace("${ERP_SYNC_SECRET}", "${UNSET_VAR_FOR_TEST}");
    let missing = valid().replace("    client_id: erp-sync-client\n", "");
    for (name, yaml) in [
        ("bad base_url", bad_url),
        ("unset secret", unset),
        ("missing client_id", missing),
    ] {
        let out = check(&yaml);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        let problems = stderr.lines().skip(1).count();
        assert_eq!(
            problems, 1,
            "{name}: one problem, not its echoes:\n{stderr}"
        );
        assert!(!stderr.contains("is not defined"), "{name}: {stderr}");
    }
}

#[test]
fn a_file_of_hundreds_of_mistakes_is_reported_in_bounded_work() {
    let mut yaml = valid();
    for i in 0..500 {
        yaml.push_str(&format!("typo_{i}: 1\n"));
    }
    let out = check(&yaml);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    let reported = stderr
        .lines()
        .filter(|l| l.contains("unknown field `typo_"))
        .count();
    assert_eq!(reported, 200, "the first 200, then it stops looking");
    assert!(
        stderr.contains("(more): stopped looking after 200 problems"),
        "{stderr}"
    );
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_keybridge"))
        .args(["check", "--config", "/nonexistent/keybridge.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot read config file /nonexistent/keybridge.yaml")
    );
}

#[test]
fn secrets_can_come_from_files() {
    let dir = tempdir();
    std::fs::write(dir.join("erp.secret"), "from-a-file\n").unwrap();
    let yaml = valid().replace(
        "client_secret: ${ERP_SYNC_SECRET}",
        "client_secret_file: erp.secret",
    );
    let config = keybridge::config::Config::from_yaml(
        &yaml,
        &dir,
        &std::collections::HashMap::<String, String>::new(),
    )
    .unwrap();
    assert_eq!(
        config.clients["erp-sync"].client_secret.expose(),
        "from-a-file"
    );
    assert!(
        !format!("{config:?}").contains("from-a-file"),
        "Debug redacts secrets"
    );
}

#[test]
fn hash_key_prints_the_fingerprint_used_in_config() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keybridge"))
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"test\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), FP);
    let _ = KEY;
}

#[test]
fn the_shipped_configs_are_valid() {
    for file in ["config.yaml", "deploy/compose-config.yaml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let out = Command::new(env!("CARGO_BIN_EXE_keybridge"))
            .args(["check", "--config"])
            .arg(&path)
            .env("ERP_SYNC_SECRET", "x")
            .env("TREASURY_SECRET", "y")
            .env("DEMO_CLIENT_SECRET", "z")
            .env("KEYBRIDGE_ADMIN_TOKEN", "admin-token-for-the-test-0123")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Key lookup has no timing side channel on the key because raw keys are not kept: a
/// configured `api_key` becomes its SHA-256 at load, and the proxy looks presented keys
/// up by digest (`KeyMap::lookup` hashes first), never comparing key bytes.
#[test]
fn raw_keys_are_hashed_at_load_and_never_kept() {
    let raw_key = "raw-legacy-key-0000000000000000000000000";
    let yaml = valid().replace(
        &format!("api_key_sha256: {FP}"),
        &format!("api_key: {raw_key}"),
    );
    let config = keybridge::config::Config::from_yaml(
        &yaml,
        std::path::Path::new("."),
        &std::collections::HashMap::from([("ERP_SYNC_SECRET".to_owned(), "x".to_owned())]),
    )
    .unwrap();
    let integration = &config.integrations[0];
    assert_eq!(
        integration.fingerprint,
        keybridge::keys::Fingerprint::of_key(raw_key.as_bytes())
    );
    assert!(
        !format!("{config:?}").contains(raw_key),
        "the raw key is not kept"
    );

    let map = keybridge::keys::KeyMap::new([(integration.fingerprint, "netsuite")]);
    assert_eq!(map.lookup(raw_key.as_bytes()).1, Some(&"netsuite"));
    assert_eq!(
        map.lookup(b"raw-legacy-key-0000000000000000000000001").1,
        None
    );
}

/// Finding 7 of the hostile-traffic review: a huge duration made `check` panic, or
/// passed it and panicked later (on every request, on a paused upload, in the pool).
#[test]
fn an_absurd_duration_in_any_field_is_named_and_never_panics() {
    let fields = [
        "token.settle_delay",
        "token.refresh_before_expiry",
        "token.request_timeout",
        "token.max_retry_backoff",
        "token.min_refetch_interval",
        "upstream.connect_timeout",
        "upstream.response_timeout",
        "upstream.pool_idle_timeout",
        "server.header_read_timeout",
        "server.idle_timeout",
        "server.shutdown_grace",
        "server.body_read_timeout",
        "audit.flush_interval",
        "audit.ready_after",
        "audit.retention",
    ];
    let base = support::TestConfig::from_yaml(&valid());
    for field in fields {
        for absurd in ["18446744073709551615s", "0s"] {
            let out = check(&base.clone().set(field, absurd).yaml());
            let stderr = String::from_utf8_lossy(&out.stderr);
            if absurd == "0s" && out.status.success() {
                continue; // zero is in range for a few (settle_delay, shutdown_grace)
            }
            assert_eq!(out.status.code(), Some(1), "{field}={absurd}: {stderr}");
            assert!(
                stderr.contains(&format!("{field}: must be between")),
                "{field}={absurd}: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{field}={absurd}: {stderr}");
        }
    }
}

/// Issue 11, item 5: "port in use" was printed twice and did not say which setting to
/// change.
#[test]
fn a_port_in_use_is_reported_once_naming_the_setting() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = tempdir();
    let path = dir.join("config.yaml");
    let yaml = support::TestConfig::from_yaml(&valid())
        .set("listen", "127.0.0.1:0")
        .set("admin_listen", format!("127.0.0.1:{port}"))
        .set("audit.path", dir.join("audit.db").display().to_string())
        .yaml();
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keybridge"))
        .args(["run", "--config"])
        .arg(&path)
        .env("ERP_SYNC_SECRET", "s3cret-value")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("set by `admin_listen`"), "{stderr}");
    assert_eq!(stderr.matches("in use").count(), 1, "{stderr}");
    drop(held);
}

#[test]
fn a_remote_postgres_without_tls_is_warned_about_without_its_password() {
    let yaml = format!(
        "{}audit:\n  postgres_url: postgres://kb:hunter2-db@db.example.com:5432/kb\n",
        valid()
    );
    let out = check(&yaml);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: audit.postgres_url: db.example.com is not on this host"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"));
    let tls = format!(
        "{}audit:\n  postgres_url: postgres://kb:pw@db.example.com/kb?sslmode=require\n",
        valid()
    );
    assert!(!String::from_utf8_lossy(&check(&tls).stderr).contains("warning: audit.postgres_url"));
}

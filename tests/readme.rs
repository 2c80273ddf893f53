//! The README's shell blocks, run as written. A reader copies them; if one fails here,
//! it fails for them. (The quick-start curl runs in `tests/demo.rs`, against the
//! demo; `systemctl` needs a running systemd and `docker compose` an engine, which CI
//! machines do not have: CI runs `systemd-analyze verify` and `docker-compose config`
//! instead.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::temp_path;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The ```sh block of the README that contains `marker`, one command per line
/// (continuations joined, comments dropped).
fn block(marker: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("\n```").next().unwrap())
        .find(|b| b.contains(marker))
        .unwrap_or_else(|| panic!("no ```sh block with `{marker}` in README.md"));
    block
        .replace("\\\n", " ")
        .lines()
        .map(|l| {
            // A `#` starts a comment only where the shell would read it so.
            let code = l.find(" #").map_or(l, |i| &l[..i]);
            code.trim().to_owned()
        })
        .filter(|l| !l.is_empty())
        .collect()
}

/// Runs `line` with `sh -c` in `cwd`, the built `keybridge` first on PATH.
fn sh(line: &str, cwd: &Path, env: &[(&str, &str)]) -> Output {
    let bin = Path::new(env!("CARGO_BIN_EXE_keybridge")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(line)
        .current_dir(cwd)
        .env("PATH", path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    support::leak::process_output(&out.stdout, &out.stderr);
    out
}

#[test]
fn running_it_for_real_works_on_the_shipped_config_as_written() {
    let lines = block("keybridge hash-key");
    let env = [
        ("NETSUITE_KEY", "the-netsuite-bundle-legacy-key"),
        ("ERP_SYNC_SECRET", "erp-sync-secret-from-readme-test"),
        ("TREASURY_SECRET", "treasury-secret-from-readme-test"),
    ];
    let mut ran = 0;
    let mut exported: Vec<(&str, &str)> = Vec::new();
    for line in &lines {
        if let Some(vars) = line.strip_prefix("export ") {
            // `export ERP_SYNC_SECRET=... TREASURY_SECRET=...`: the reader's values.
            for var in vars.split_whitespace() {
                let name = var.strip_suffix("=...").unwrap();
                exported.push(*env.iter().find(|(n, _)| *n == name).unwrap());
            }
            continue;
        }
        if line.starts_with("keybridge run") {
            // Serving needs the real Coupa of the shipped config; tests/first_hour.rs
            // runs `keybridge run --config` on a realistic config instead.
            continue;
        }
        let mut all_env = env[..1].to_vec();
        all_env.extend(&exported);
        let out = sh(line, &repo(), &all_env);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "`{line}` failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if line.contains("hash-key") {
            let hex = stdout.trim();
            assert!(
                hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                "{hex}"
            );
        }
        if line.contains("keybridge check") {
            assert!(
                stdout.contains("config.yaml: OK (2 instances, 2 clients, 3 integrations)"),
                "{stdout}"
            );
        }
        ran += 1;
    }
    assert_eq!(ran, 2, "hash-key and check ran: {lines:?}");
}

/// The install steps, rooted in a temp directory instead of `/`, then the installed
/// unit verified against the installed binary.
#[test]
fn the_install_steps_lay_out_a_service_that_verifies() {
    let root = temp_path("install-root");
    std::fs::create_dir_all(root.join("usr/local/bin")).unwrap();
    std::fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
    let rooted = |line: &str| {
        line.replace(" /usr/local/", &format!(" {}/usr/local/", root.display()))
            .replace(" /etc/", &format!(" {}/etc/", root.display()))
    };
    let mut ran = Vec::new();
    for line in block("deploy/keybridge.service") {
        if line.starts_with("cargo build") {
            // The dist build itself: CI builds it (`.ci/run`); here the test binary
            // stands in for target/dist/keybridge when that is absent.
            continue;
        }
        if line.starts_with("systemctl") || line.starts_with("keybridge health") {
            continue; // needs a running systemd; `keybridge health`: tests/deploy.rs
        }
        let mut line = rooted(&line);
        if !repo().join("target/dist/keybridge").exists() {
            line = line.replace("target/dist/keybridge", env!("CARGO_BIN_EXE_keybridge"));
        }
        let out = sh(&line, &repo(), &[]);
        assert!(
            out.status.success(),
            "`{line}`: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ran.push(line);
    }
    assert_eq!(ran.len(), 4, "{ran:?}");

    let mode = |p: &str| {
        std::fs::metadata(root.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("usr/local/bin/keybridge"), 0o755);
    assert_eq!(mode("etc/keybridge/config.yaml"), 0o644);
    assert_eq!(
        mode("etc/keybridge/keybridge.env"),
        0o600,
        "the secrets file is private"
    );
    let unit = root.join("etc/systemd/system/keybridge.service");
    let installed_bin = root.join("usr/local/bin/keybridge");
    let out = Command::new("bash")
        .arg(repo().join("scripts/verify-systemd.sh"))
        .arg(&installed_bin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(unit).unwrap(),
        std::fs::read_to_string(repo().join("deploy/keybridge.service")).unwrap()
    );
}

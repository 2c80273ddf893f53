//! An SRE starts keybridge the way `docker-compose.yml` does, without Docker: the
//! services' own commands and environment, the image's non-root user (uid 65532), a
//! working directory it cannot write (the read-only root), the compose config mounted
//! read-only, and the audit volume. `keybridge health` (the image's HEALTHCHECK) turns
//! green, the README's curl works, and the audit lands in the volume — where the old
//! default (an audit file in the working directory) fails at once, naming `audit.path`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use http::StatusCode;
use support::process::Process;
use support::*;
use yaml_serde::Value;

/// The image's user (Dockerfile `USER`, compose `user:`).
const IMAGE_UID: u32 = 65532;
const DEMO_KEY: &str = "demo0000000000000000000000000000000000ke";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn yaml(path: &Path) -> Value {
    yaml_serde::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `${NAME:-default}` as compose expands it when NAME is unset.
fn compose_expand(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').unwrap() + start;
        let inner = &rest[start + 2..end];
        out.push_str(inner.split_once(":-").map(|(_, d)| d).unwrap_or(""));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| compose_expand(v.as_str().unwrap()))
        .collect()
}

/// Whether this test runs as root (then it drops to the image's uid, as Docker does).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

/// A directory owned by the image's user, mode 0700, as the image's /var/lib/keybridge.
fn volume(dir: &Path) -> PathBuf {
    let volume = dir.join("keybridge-audit");
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::set_permissions(&volume, std::fs::Permissions::from_mode(0o700)).unwrap();
    if is_root() {
        std::os::unix::fs::chown(&volume, Some(IMAGE_UID), Some(IMAGE_UID)).unwrap();
    }
    volume
}

/// A command run as the container would run it: only the service's environment, the
/// image's user, a working directory nobody but root may write.
fn as_container(
    binary: &Path,
    args: &[String],
    env: &BTreeMap<String, String>,
    cwd: &Path,
) -> Command {
    let mut command = Command::new(binary);
    command.args(args).env_clear().envs(env).current_dir(cwd);
    if is_root() {
        command.uid(IMAGE_UID).gid(IMAGE_UID);
    }
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Compose {
    keybridge: Value,
    mock: Value,
}

fn compose() -> Compose {
    let file = yaml(&repo("docker-compose.yml"));
    let services = &file["services"];
    Compose {
        keybridge: services["keybridge"].clone(),
        mock: services["mock-coupa"].clone(),
    }
}

#[tokio::test]
async fn keybridge_runs_as_the_compose_file_runs_it_and_turns_healthy() {
    let compose = compose();
    let service = &compose.keybridge;
    // What the rest of this test relies on is what the compose file says.
    assert_eq!(service["read_only"], Value::Bool(true));
    assert_eq!(service["user"].as_str(), Some("65532:65532"));
    let volumes = strings(&service["volumes"]);
    assert!(
        volumes.contains(&"./deploy/compose-config.yaml:/etc/keybridge/config.yaml:ro".to_owned())
    );
    assert!(volumes.contains(&"keybridge-audit:/var/lib/keybridge".to_owned()));
    let health = strings(&service["healthcheck"]["test"]);
    assert_eq!(health, ["CMD", "/usr/local/bin/keybridge", "health"]);
    let dockerfile = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    assert!(dockerfile.contains(r#"CMD ["/usr/local/bin/keybridge", "health"]"#));
    assert!(dockerfile.contains("USER 65532:65532"));

    // The container's file system, on this host.
    let dir = temp_path("compose");
    std::fs::create_dir_all(&dir).unwrap();
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let binary = bin_dir.join("keybridge");
    std::fs::copy(env!("CARGO_BIN_EXE_keybridge"), &binary).unwrap();
    for d in [&dir, &bin_dir] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let cwd = dir.join("root");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::set_permissions(&cwd, std::fs::Permissions::from_mode(0o555)).unwrap();
    let volume = volume(&dir);

    // The mock, from its own service entry (its name resolves to its address).
    let mock_args: Vec<String> = strings(&compose.mock["command"])
        .into_iter()
        .map(|a| a.replace("--listen=0.0.0.0:8081", "--listen=127.0.0.1:0"))
        .collect();
    let mock = Process::spawn_until(
        as_container(&binary, &mock_args, &BTreeMap::new(), &cwd),
        "mock Coupa listening",
    );
    let mock_addr = mock.addr("addr");

    // The compose config, with the container's addresses and paths mapped to this host.
    let (proxy_port, admin_port) = (free_port(), free_port());
    let config_text = std::fs::read_to_string(repo("deploy/compose-config.yaml")).unwrap();
    assert!(config_text.contains("path: /var/lib/keybridge/audit.db"));
    let config_text = config_text
        .replace("0.0.0.0:8080", &format!("127.0.0.1:{proxy_port}"))
        .replace("0.0.0.0:9900", &format!("127.0.0.1:{admin_port}"))
        .replace("http://mock-coupa:8081", &format!("http://{mock_addr}"))
        .replace("/var/lib/keybridge", volume.to_str().unwrap());
    let config = dir.join("config.yaml");
    std::fs::write(&config, &config_text).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o444)).unwrap();

    let map = |s: String| s.replace("/etc/keybridge/config.yaml", config.to_str().unwrap());
    let env: BTreeMap<String, String> = service["environment"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_owned(),
                map(compose_expand(v.as_str().unwrap())),
            )
        })
        .collect();
    let args: Vec<String> = strings(&service["command"]).into_iter().map(map).collect();
    let health = || {
        let out = as_container(&binary, &["health".to_owned()], &env, &cwd)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let proxy = Process::spawn(as_container(&binary, &args, &env, &cwd));
    let mut healthy = false;
    for _ in 0..100 {
        if health().0 == Some(0) {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "the HEALTHCHECK never passed: {:?}", health());

    // The README's compose curl.
    let (status, _, body) = get(
        proxy.proxy(),
        "/api/invoices/42",
        &[("x-coupa-api-key", DEMO_KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["auth"], "bearer");

    let (code, output) = proxy.stop();
    assert_eq!(code, Some(0), "{output}");
    let (code, stderr) = health();
    assert_eq!(code, Some(1));
    assert!(stderr.contains("cannot connect"), "{stderr}");

    // The audit is in the volume, private to the image's user, and readable in place.
    let audit = volume.join("audit.db");
    let meta = std::fs::metadata(&audit).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    if is_root() {
        assert_eq!(meta.uid(), IMAGE_UID);
    }
    let report = as_container(
        &binary,
        &["audit".to_owned(), "--format=json".to_owned()],
        &env,
        &cwd,
    )
    .output()
    .unwrap();
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let report = json(&report.stdout);
    let demo = report["integrations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "demo-erp")
        .unwrap();
    assert_eq!(demo["total"], 1, "{demo}");

    // The old default: an audit file in the (read-only) working directory. It fails at
    // once, naming the setting, instead of crash-looping on "unable to open database".
    let relative = config_text.replace(
        &format!("{}/audit.db", volume.display()),
        "keybridge-audit.db",
    );
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&config, relative).unwrap();
    let out = as_container(&binary, &args, &env, &cwd).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("(set by `audit.path`)"), "{stderr}");
    assert_eq!(
        stderr.matches("Permission denied").count(),
        1,
        "said once: {stderr}"
    );
    drop(mock);
}

/// The compose files' configs are valid as shipped, with the environment the compose
/// files give them.
#[test]
fn the_shipped_compose_configs_pass_check() {
    for (config, extra) in [
        ("deploy/compose-config.yaml", vec![]),
        (
            "deploy/fleet-config.yaml",
            vec![
                (
                    "KEYBRIDGE_DATABASE_URL",
                    "postgres://keybridge:pw@postgres:5432/keybridge",
                ),
                ("KEYBRIDGE_REDIS_URL", "redis://:pw@redis:6379/0"),
            ],
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_keybridge"))
            .args(["check", "--config"])
            .arg(repo(config))
            .env("DEMO_CLIENT_SECRET", "demo-client-secret")
            .env("KEYBRIDGE_ADMIN_TOKEN", "demo-admin-token-change-me")
            .envs(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{config}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let fleet = yaml(&repo("docker-compose.fleet.yml"));
    let services = fleet["services"].as_mapping().unwrap();
    for name in [
        "keybridge-1",
        "keybridge-2",
        "postgres",
        "redis",
        "haproxy",
        "mock-coupa",
    ] {
        assert!(services.contains_key(name), "fleet compose has {name}");
    }
}

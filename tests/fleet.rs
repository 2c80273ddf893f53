//! An SRE runs keybridge as a fleet: two (or more) replicas, one PostgreSQL audit. Each
//! replica is the real binary in its own process; the database is a fresh one on the
//! machine's PostgreSQL. The audit is one truth whatever replica serves or reports.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod support;

use std::path::PathBuf;
use std::time::Duration;

use http::StatusCode;
use support::pg::TestDatabase;
use support::process::{Process, keybridge};
use support::*;

/// A replica's config file: the standard config with the shared audit.
fn replica_config(
    base_url: &str,
    replica: &str,
    edit: impl FnOnce(TestConfig) -> TestConfig,
) -> PathBuf {
    let config = TestConfig::standard(base_url)
        .set("audit.postgres_url", "${KEYBRIDGE_DATABASE_URL}")
        .set("audit.flush_interval", "1s")
        .set("fleet.replica", replica);
    let path = temp_path(&format!("{replica}.yaml"));
    std::fs::write(&path, edit(config).yaml()).unwrap();
    path
}

fn replica_command(config: &PathBuf, db: &TestDatabase) -> std::process::Command {
    let mut command = keybridge();
    command
        .args(["run", "--config"])
        .arg(config)
        .env("ERP_SYNC_SECRET", SECRET)
        .env("KEYBRIDGE_DATABASE_URL", &db.url);
    command
}

/// Starts a replica off the runtime's thread (the mock Coupa answers on it meanwhile).
async fn spawn(command: std::process::Command) -> Process {
    tokio::task::spawn_blocking(move || Process::spawn(command))
        .await
        .unwrap()
}

async fn audit_of(admin: std::net::SocketAddr) -> serde_json::Value {
    let (status, _, body) = get(admin, "/audit", &[]).await;
    assert_eq!(status, StatusCode::OK);
    json(&body)
}

fn integration<'a>(audit: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    audit["integrations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no integration {name} in {audit}"))
}

/// Keyed GETs for `duration`, round robin over `proxies`, 5 ms apart: (ok, failed).
async fn steady_load(proxies: Vec<std::net::SocketAddr>, duration: Duration) -> (u64, u64) {
    let (mut ok, mut failed) = (0u64, 0u64);
    let until = tokio::time::Instant::now() + duration;
    for proxy in proxies.iter().cycle() {
        if tokio::time::Instant::now() >= until {
            break;
        }
        let (status, _, _) = get(*proxy, "/api/invoices/1", &[("x-coupa-api-key", KEY)]).await;
        if status == StatusCode::OK {
            ok += 1;
        } else {
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (ok, failed)
}

async fn send_keyed(proxy: std::net::SocketAddr, n: usize) {
    for i in 0..n {
        let (status, _, _) = get(
            proxy,
            &format!("/api/invoices/{i}"),
            &[("x-coupa-api-key", KEY)],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
}

/// What must be shown 1 and 6: replicas started together on an empty database migrate
/// it once without error; 30 requests through A and 20 through B are 50 in the audit,
/// read from either replica or from the CLI; both replicas are listed as reporting.
#[tokio::test]
async fn two_replicas_share_one_exact_audit_and_migrate_it_once() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let db = TestDatabase::create().await;
    let config_a = replica_config(&mock.base_url(), "kb-a", |c| c);
    let config_b = replica_config(&mock.base_url(), "kb-b", |c| c);
    let (a, b) = (
        replica_command(&config_a, &db),
        replica_command(&config_b, &db),
    );
    let (mut a, mut b) = tokio::join!(spawn(a), spawn(b));
    wait_ready(a.admin()).await;
    wait_ready(b.admin()).await;

    let migrations = a.output().matches("audit store migrated").count()
        + b.output().matches("audit store migrated").count();
    assert_eq!(
        migrations, 3,
        "each migration (v1, v2, v3) once between both replicas"
    );
    for out in [a.output(), b.output()] {
        assert!(!out.contains(r#""level":"ERROR""#), "{out}");
    }

    send_keyed(a.proxy(), 30).await;
    send_keyed(b.proxy(), 20).await;
    // Each replica's /audit flushes its own aggregates first; after both, either
    // replica reads the shared totals.
    audit_of(b.admin()).await;
    let from_a = audit_of(a.admin()).await;
    let from_b = audit_of(b.admin()).await;
    for audit in [&from_a, &from_b] {
        let erp = integration(audit, "netsuite-bundle");
        assert_eq!(erp["requests"]["oauth"], 50, "{erp}");
        assert_eq!(erp["total"], 50);
        let replicas: Vec<&str> = audit["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(replicas, ["kb-a", "kb-b"]);
        assert!(
            audit["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["stale"] == false)
        );
    }
    assert_eq!(mock.api_hits(), 50);

    let cli = keybridge()
        .args(["audit", "--format", "json", "--config"])
        .arg(&config_a)
        .env("KEYBRIDGE_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    leak::process_output(&cli.stdout, &cli.stderr);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(
        integration(&json(&cli.stdout), "netsuite-bundle")["total"],
        50
    );

    // A replica that stops is shown as no longer flushing (three intervals, at least
    // 30 s, later); until then it is still listed.
    let (code, output) = b.stop();
    assert_eq!(code, Some(0), "{output}");
    let password = db.url.split(':').nth(2).unwrap().split('@').next().unwrap();
    assert!(password.starts_with("kb-db-password-"), "{}", db.url);
    for out in [
        output,
        a.output(),
        String::from_utf8_lossy(&cli.stderr).into_owned(),
    ] {
        assert!(
            !out.contains(password),
            "the database password is never logged"
        );
    }
}

/// What must be shown 5: an integration that still sent its key through replica B is
/// not "ready to disable the key" on replica A, whose own traffic is all OAuth.
#[tokio::test]
async fn a_key_seen_by_one_replica_keeps_the_integration_from_ready_everywhere() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let db = TestDatabase::create().await;
    // A rolling config change: B still runs the integration in canary at 0 % (every
    // request with its key), A already in oauth. `ready_after` is short to drive time.
    let short = |c: TestConfig| c.set("audit.ready_after", "3s");
    let config_b = replica_config(&mock.base_url(), "kb-b", |c| {
        short(c)
            .set("integrations[0].mode", "canary")
            .set("integrations[0].canary_percent", 0)
    });
    let config_a = replica_config(&mock.base_url(), "kb-a", short);
    let b = spawn(replica_command(&config_b, &db)).await;
    wait_ready(b.admin()).await;
    let a = spawn(replica_command(&config_a, &db)).await; // records mode oauth last
    wait_ready(a.admin()).await;

    tokio::time::sleep(Duration::from_millis(3500)).await;
    let state = |audit: &serde_json::Value| {
        integration(audit, "netsuite-bundle")["state_code"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        state(&audit_of(a.admin()).await),
        "ready_to_disable",
        "no key anywhere yet"
    );

    send_keyed(b.proxy(), 1).await; // through B: with the key
    audit_of(b.admin()).await; // B flushes
    let on_a = audit_of(a.admin()).await;
    assert_eq!(state(&on_a), "on_oauth", "A sees B's key use: not ready");
    assert_eq!(
        integration(&on_a, "netsuite-bundle")["requests"]["api_key"],
        1
    );
    assert_eq!(integration(&on_a, "netsuite-bundle")["sends_keys"], true);

    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        state(&audit_of(a.admin()).await),
        "ready_to_disable",
        "quiet for ready_after again"
    );
}

/// What must be shown 4: PostgreSQL stopped for 20 s under load. No request fails or
/// waits on it, `/readyz` stays ready and says the audit is degraded, failed flushes
/// are counted; when it is back, the audit holds every request sent.
#[tokio::test]
async fn postgres_stopped_under_load_loses_no_request_and_no_count() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let server = tokio::task::spawn_blocking(support::pg::PrivateServer::start)
        .await
        .unwrap();
    let config = replica_config(&mock.base_url(), "kb-a", |c| c);
    let mut command = keybridge();
    command
        .args(["run", "--config"])
        .arg(&config)
        .env("ERP_SYNC_SECRET", SECRET)
        .env("KEYBRIDGE_DATABASE_URL", server.url("postgres"));
    let replica = spawn(command).await;
    wait_ready(replica.admin()).await;

    let proxy = replica.proxy();
    let load = tokio::spawn(steady_load(vec![proxy], Duration::from_secs(28)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let server = tokio::task::spawn_blocking(move || {
        server.stop();
        server
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await; // a few failed flushes
    let (status, _, body) = get(replica.admin(), "/readyz", &[]).await;
    assert_eq!(status, StatusCode::OK, "the audit is not the request path");
    assert!(
        String::from_utf8_lossy(&body).contains("degraded"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    tokio::time::sleep(Duration::from_secs(16)).await;
    let server = tokio::task::spawn_blocking(move || {
        server.start_again();
        server
    })
    .await
    .unwrap();
    let (ok, failed) = load.await.unwrap();
    assert_eq!(failed, 0, "no request failed while PostgreSQL was down");
    assert!(ok > 500, "the load ran throughout ({ok} requests)");

    let (_, _, metrics) = get(replica.admin(), "/metrics", &[]).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.lines().any(
            |l| l.starts_with("keybridge_audit_failures_total{op=\"flush\"}") && !l.ends_with(" 0")
        ),
        "failed flushes are counted"
    );
    // Back: the next flush writes everything kept in memory.
    let mut total = serde_json::Value::Null;
    for _ in 0..50 {
        let (status, _, body) = get(replica.admin(), "/audit", &[]).await;
        if status == StatusCode::OK {
            total = integration(&json(&body), "netsuite-bundle")["total"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(total, ok, "every request sent is in the audit");
    drop(server);
}

/// A database migrated by a newer keybridge is refused with a clear message, not
/// misread (a rollback after an upgrade).
#[tokio::test]
async fn a_schema_newer_than_this_binary_is_refused() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let db = TestDatabase::create().await;
    db.connect()
        .await
        .batch_execute(
            "CREATE TABLE keybridge_schema (version BIGINT NOT NULL);
             INSERT INTO keybridge_schema VALUES (99);",
        )
        .await
        .unwrap();
    let config = replica_config(&mock.base_url(), "kb-a", |c| c);
    let out = replica_command(&config, &db).output().unwrap();
    leak::process_output(&out.stdout, &out.stderr);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "has schema version 99, newer than this keybridge knows (3); upgrade keybridge"
        ),
        "{stderr}"
    );
}

const CLIENTS: usize = 20;

/// `clients` clients `c0`..`c19` on the mock, one integration each.
fn many_clients(base_url: &str, replica: &str, redis: &str, prefix: &str, settle: &str) -> PathBuf {
    replica_config(base_url, replica, |mut c| {
        c = c
            .set("fleet.redis_url", redis)
            .set("fleet.redis_prefix", prefix)
            .set("token.settle_delay", settle);
        for i in 0..CLIENTS {
            c = c.set(
                &format!("clients.c{i}"),
                serde_json::json!({"instance": "prod", "client_id": format!("client-{i}"),
                    "client_secret": format!("secret-{i}-0123456789"), "scopes": ["core.invoice.read"]}),
            );
        }
        c
    })
}

fn many_clients_mock() -> keybridge::cli::mock::MockCoupa {
    let mut mock = mock();
    for i in 0..CLIENTS {
        mock = mock.client(
            &format!("client-{i}"),
            &format!("secret-{i}-0123456789"),
            &["core.invoice.read"],
        );
    }
    mock
}

async fn tokens_of(admin: std::net::SocketAddr) -> serde_json::Value {
    let (status, _, body) = get(admin, "/tokens", &[]).await;
    assert_eq!(status, StatusCode::OK);
    json(&body)["shared_tokens"].clone()
}

/// What must be shown 2: two replicas started together on a cold cache with 20 clients
/// (21 with the standard one) and Redis cause one token fetch per client in all; a third
/// replica started later fetches none and is ready at once, its tokens already settled.
#[tokio::test]
async fn a_fleet_fetches_one_token_per_client_and_a_late_replica_none() {
    let mock = many_clients_mock()
        .start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let db = TestDatabase::create().await;
    let prefix = support::redis_server::TestPrefix::new();
    let redis = support::redis_server::MACHINE;
    let config = |name: &str| many_clients(&mock.base_url(), name, redis, &prefix.0, "3s");
    let (a, b) = (
        replica_command(&config("kb-a"), &db),
        replica_command(&config("kb-b"), &db),
    );
    let (a, b) = tokio::join!(spawn(a), spawn(b));
    tokio::join!(wait_ready(a.admin()), wait_ready(b.admin()));
    assert_eq!(
        mock.token_requests(),
        CLIENTS as u64 + 1,
        "one fetch per client, fleet-wide"
    );
    let (sa, sb) = (tokens_of(a.admin()).await, tokens_of(b.admin()).await);
    assert_eq!(sa["status"], "ok", "{sa}");
    assert_eq!(
        sa["tokens_written"].as_u64().unwrap() + sb["tokens_written"].as_u64().unwrap(),
        CLIENTS as u64 + 1,
        "{sa} {sb}"
    );
    // Redis holds sealed records only: never a bearer Coupa would accept.
    let keys = prefix.keys();
    assert!(
        keys.iter().filter(|k| k.contains(":token:")).count() == CLIENTS + 1,
        "{keys:?}"
    );

    let c = spawn(replica_command(&config("kb-c"), &db)).await;
    let started = std::time::Instant::now();
    wait_ready(c.admin()).await;
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "ready without waiting out the 3 s settle delay ({:?})",
        started.elapsed()
    );
    assert_eq!(
        mock.token_requests(),
        CLIENTS as u64 + 1,
        "the late replica fetched nothing"
    );
    let sc = tokens_of(c.admin()).await;
    assert_eq!(sc["tokens_read"], CLIENTS as u64 + 1, "{sc}");
    let (status, _, _) = get(c.proxy(), "/api/invoices/1", &[("x-coupa-api-key", KEY)]).await;
    assert_eq!(status, StatusCode::OK, "the shared token works for Coupa");
}

/// What must be shown 3: Redis killed while both replicas serve and their tokens keep
/// expiring: no request fails, tokens are minted locally meanwhile, and once Redis is
/// back the replicas share again.
#[tokio::test]
async fn redis_killed_under_load_fails_no_request_and_sharing_resumes() {
    // Tokens live 4 s, so each replica refreshes every ~2 s: mints happen all along.
    let mock = mock()
        .expires_in(Duration::from_secs(4))
        .start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let db = TestDatabase::create().await;
    let mut redis = tokio::task::spawn_blocking(support::redis_server::PrivateRedis::start)
        .await
        .unwrap();
    let config = |name: &str| {
        replica_config(&mock.base_url(), name, |c| {
            c.set("fleet.redis_url", redis.url())
        })
    };
    let (a, b) = (
        replica_command(&config("kb-a"), &db),
        replica_command(&config("kb-b"), &db),
    );
    let (a, b) = tokio::join!(spawn(a), spawn(b));
    wait_ready(a.admin()).await;
    wait_ready(b.admin()).await;

    let (pa, pb) = (a.proxy(), b.proxy());
    let load = tokio::spawn(steady_load(vec![pa, pb], Duration::from_secs(16)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis = tokio::task::spawn_blocking(move || {
        redis.kill();
        redis
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (sa, sb) = (tokens_of(a.admin()).await, tokens_of(b.admin()).await);
    assert_eq!(sa["status"], "unavailable", "{sa}");
    assert!(
        sa["local_fetches"].as_u64().unwrap() > 0 && sb["local_fetches"].as_u64().unwrap() > 0,
        "both replicas minted locally: {sa} {sb}"
    );
    let (status, _, body) = get(a.admin(), "/readyz", &[]).await;
    assert_eq!(status, StatusCode::OK, "Redis away is not 'not ready'");
    assert!(String::from_utf8_lossy(&body).contains("unavailable"));

    redis = tokio::task::spawn_blocking(move || {
        redis.start_again();
        redis
    })
    .await
    .unwrap();
    let read_before = sa["tokens_read"].as_u64().unwrap() + sb["tokens_read"].as_u64().unwrap();
    let (ok, failed) = load.await.unwrap();
    assert_eq!(failed, 0, "no request failed while Redis was away");
    assert!(ok > 300, "the load ran throughout ({ok})");
    let (sa, sb) = (tokens_of(a.admin()).await, tokens_of(b.admin()).await);
    assert_eq!(sa["status"], "ok", "{sa}");
    let read_after = sa["tokens_read"].as_u64().unwrap() + sb["tokens_read"].as_u64().unwrap();
    assert!(
        read_after > read_before,
        "sharing resumed: one replica read the other's token ({read_before} → {read_after})"
    );
    drop(redis);
}

/// The 401 rule of the hostile-input issue, fleet-wide: Coupa revokes the token both
/// replicas hold; their refusals cause one replacement fetch for the fleet (not one per
/// replica), and both replicas serve with it.
#[tokio::test]
async fn a_revoked_token_is_replaced_once_for_the_whole_fleet() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let db = TestDatabase::create().await;
    let prefix = support::redis_server::TestPrefix::new();
    let config = |name: &str| {
        replica_config(&mock.base_url(), name, |c| {
            c.set("fleet.redis_url", support::redis_server::MACHINE)
                .set("fleet.redis_prefix", &prefix.0)
        })
    };
    let (a, b) = tokio::join!(
        spawn(replica_command(&config("kb-a"), &db)),
        spawn(replica_command(&config("kb-b"), &db))
    );
    tokio::join!(wait_ready(a.admin()), wait_ready(b.admin()));
    assert_eq!(
        mock.token_requests(),
        1,
        "one client, one fetch for the fleet"
    );

    mock.revoke_all_tokens();
    for proxy in [a.proxy(), b.proxy(), a.proxy(), b.proxy()] {
        get(proxy, "/api/invoices/1", &[("x-coupa-api-key", KEY)]).await;
    }
    // Both replicas now serve with the one replacement.
    for proxy in [a.proxy(), b.proxy()] {
        let mut served = false;
        for _ in 0..50 {
            let (status, _, _) = get(proxy, "/api/invoices/1", &[("x-coupa-api-key", KEY)]).await;
            if status == StatusCode::OK {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(served, "{proxy} serves again with the replacement");
    }
    assert_eq!(
        mock.token_requests(),
        2,
        "one replacement for both replicas"
    );
}

/// A slow replica writing an older token never replaces a newer one in Redis.
#[tokio::test]
async fn an_older_token_never_overwrites_a_newer_one() {
    use keybridge::token::shared::{SharedToken, SharedTokens};
    let prefix = support::redis_server::TestPrefix::new();
    let config = parse(&config_yaml("http://127.0.0.1:9", ""));
    let client = &config.clients["erp-sync"];
    let shared = SharedTokens::new(
        &keybridge::config::Secret::new(support::redis_server::MACHINE),
        &prefix.0,
    )
    .unwrap();
    let token = |value: &'static str, requested_at_ms: i64| SharedToken {
        authorization: http::HeaderValue::from_static(value),
        requested_at_ms,
        usable_at_ms: requested_at_ms,
        refresh_at_ms: requested_at_ms + 60_000,
        expires_at_ms: keybridge::token::shared::now_ms() + 60_000,
    };
    let now = keybridge::token::shared::now_ms();
    assert!(
        shared
            .store(client, &token("Bearer newer", now))
            .await
            .unwrap()
    );
    assert!(
        !shared
            .store(client, &token("Bearer older", now - 1000))
            .await
            .unwrap()
    );
    let stored = shared.load(client).await.unwrap().unwrap();
    assert_eq!(stored.authorization.as_bytes(), b"Bearer newer");
    assert!(
        shared
            .store(client, &token("Bearer newest", now + 1))
            .await
            .unwrap()
    );
    let stored = shared.load(client).await.unwrap().unwrap();
    assert_eq!(stored.authorization.as_bytes(), b"Bearer newest");
}

/// `sslmode=require`: the audit goes to PostgreSQL over TLS, the server's certificate
/// verified against `audit.postgres_ca_file`; without that CA the certificate is
/// refused (the audit degrades, requests are still served).
#[tokio::test]
async fn the_shared_audit_reaches_postgres_over_verified_tls() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let server = tokio::task::spawn_blocking(support::pg::PrivateServer::start_with_tls)
        .await
        .unwrap();
    let url = format!("{}?sslmode=require", server.url("postgres"));
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ca.pem");
    let run = |config: &PathBuf| {
        let mut command = keybridge();
        command
            .args(["run", "--config"])
            .arg(config)
            .env("ERP_SYNC_SECRET", SECRET)
            .env("KEYBRIDGE_DATABASE_URL", &url);
        command
    };
    let trusted = replica_config(&mock.base_url(), "kb-tls", |c| {
        c.set("audit.postgres_ca_file", ca)
    });
    let replica = spawn(run(&trusted)).await;
    wait_ready(replica.admin()).await;
    send_keyed(replica.proxy(), 3).await;
    assert_eq!(
        integration(&audit_of(replica.admin()).await, "netsuite-bundle")["total"],
        3
    );
    let (client, conn) = tokio_postgres::connect(&server.url("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let encrypted: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE s.ssl AND a.application_name = 'keybridge'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted >= 1, "keybridge's connections are TLS");
    drop(replica);

    let untrusted = replica_config(&mock.base_url(), "kb-tls", |c| c);
    let replica = spawn(run(&untrusted)).await;
    wait_ready(replica.admin()).await;
    let (status, _, _) = get(
        replica.proxy(),
        "/api/invoices/1",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "served while the audit cannot connect"
    );
    let (_, _, body) = get(replica.admin(), "/readyz", &[]).await;
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("degraded") && body.to_lowercase().contains("certificate"),
        "{body}"
    );
    drop(server);
}

/// A flush retried after a timeout (written or not, nobody knew) under the same id is
/// counted once.
#[tokio::test]
async fn a_flush_retried_under_its_id_is_counted_once() {
    use keybridge::audit::{Event, Outcome, Recorder, Subject, open_store};
    let db = TestDatabase::create().await;
    let settings = keybridge::config::AuditSettings {
        postgres_url: Some(keybridge::config::Secret::new(db.url.clone())),
        ..keybridge::config::AuditSettings::default()
    };
    let store = open_store(&settings, "kb-a").await.unwrap();
    let recorder = Recorder::new(true, std::iter::empty(), 10);
    let event = Event {
        outcome: Outcome::Rejected,
        endpoint: "GET /api/invoices",
        status: 401,
        ip: "127.0.0.1".parse().unwrap(),
        user_agent: None,
        fallback_status: None,
    };
    for _ in 0..3 {
        recorder.record_other(Subject::Anonymous, &event);
    }
    let batch = std::sync::Arc::new(recorder.take());
    let now = keybridge::audit::unix_now();
    store
        .apply(7, std::sync::Arc::clone(&batch), now, 10)
        .await
        .unwrap();
    store
        .apply(7, std::sync::Arc::clone(&batch), now, 10)
        .await
        .unwrap();
    let total = |snap: &keybridge::audit::Snapshot| {
        snap.subjects
            .values()
            .map(|s| s.counts.iter().map(|(_, c)| *c).sum::<u64>())
            .sum::<u64>()
    };
    assert_eq!(
        total(&store.snapshot().await.unwrap()),
        3,
        "the same flush id counts once"
    );
    store.apply(8, batch, now, 10).await.unwrap();
    assert_eq!(
        total(&store.snapshot().await.unwrap()),
        6,
        "another id counts again"
    );
}

/// `keybridge run` whose wall clock runs `offset` ahead (libfaketime, from Debian's
/// `faketime`; its monotonic clock is left alone, as NTP would leave it).
fn replica_with_clock_ahead(
    config: &PathBuf,
    db: &TestDatabase,
    offset: &str,
) -> std::process::Command {
    let lib = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("libfaketime is installed (apt-get install faketime)");
    let mut command = replica_command(config, db);
    command
        .env("LD_PRELOAD", lib)
        .env("FAKETIME", offset)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("FAKETIME_NO_CACHE", "1");
    command
}

/// Keyed GETs one after another; every one must be a 200; the slowest.
async fn slowest_of(proxy: std::net::SocketAddr, n: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let started = std::time::Instant::now();
        let (status, _, body) = tokio::time::timeout(
            Duration::from_secs(10),
            get(proxy, "/api/invoices/1", &[("x-coupa-api-key", KEY)]),
        )
        .await
        .expect("answered within 10 s");
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

/// Issue 23, item 3: a replica whose clock ran 300 s ahead wrote its token with a
/// future issue time; the others adopted it, held every request "settling" with no
/// deadline, and "newer wins" kept honest replacements out until it expired. Now
/// record times are on the fleet's clock (Redis TIME), the skewed replica says so, and
/// a record from the future (a writer that cannot correct its clock) is ignored,
/// counted and replaced.
#[tokio::test]
async fn a_replica_whose_clock_runs_300_s_ahead_neither_hangs_the_fleet_nor_hides() {
    use keybridge::token::shared::{SharedToken, SharedTokens, now_ms};
    let mock = mock()
        .settle(Duration::from_secs(2))
        .start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let db = TestDatabase::create().await;
    let prefix = support::redis_server::TestPrefix::new();
    let config = |name: &str| {
        replica_config(&mock.base_url(), name, |c| {
            c.set("fleet.redis_url", support::redis_server::MACHINE)
                .set("fleet.redis_prefix", &prefix.0)
                .set("token.settle_delay", "2s")
                .set("token.request_timeout", "2s")
        })
    };
    let ahead = spawn(replica_with_clock_ahead(&config("kb-ahead"), &db, "+300s")).await;
    wait_ready(ahead.admin()).await;
    let clock = &tokens_of(ahead.admin()).await["clock"];
    let offset = clock["offset_ms"].as_i64().unwrap();
    assert_eq!(clock["status"], "skewed", "{clock}");
    assert!((298_000..302_000).contains(&offset), "{clock}");
    let (status, _, body) = get(ahead.admin(), "/readyz", &[]).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a skewed clock is reported, not an outage"
    );
    assert!(String::from_utf8_lossy(&body).contains("\"skewed\""));
    let dom = support::browser::headless(
        format!("http://{}/", ahead.admin()),
        vec!["--dump-dom".into()],
    )
    .await;
    assert!(
        dom.contains(r#"data-status="skewed""#) && dom.contains("off the fleet's (Redis TIME)"),
        "the dashboard shows the skew"
    );

    // An honest replica adopts the token the skewed one wrote, and serves at once.
    let honest = spawn(replica_command(&config("kb-honest"), &db)).await;
    wait_ready(honest.admin()).await;
    assert_eq!(mock.token_requests(), 1, "the fleet shares one token");
    let slowest = slowest_of(honest.proxy(), 50).await;
    assert!(
        slowest < Duration::from_secs(1),
        "slowest of 50: {slowest:?}"
    );
    assert!(slowest_of(ahead.proxy(), 10).await < Duration::from_secs(1));
    let clock = &tokens_of(honest.admin()).await["clock"];
    assert_eq!(clock["status"], "ok", "{clock}");

    // A writer that cannot correct its clock stores a record from the future.
    let client_config = parse(&config_yaml(&mock.base_url(), ""));
    let shared = SharedTokens::new(
        &keybridge::config::Secret::new(support::redis_server::MACHINE),
        &prefix.0,
    )
    .unwrap();
    let future = now_ms() + 300_000;
    let record = SharedToken {
        authorization: http::HeaderValue::from_static("Bearer from-the-future"),
        requested_at_ms: future,
        usable_at_ms: future + 2_000,
        refresh_at_ms: future + 3_600_000,
        expires_at_ms: future + 7_200_000,
    };
    let client = &client_config.clients["erp-sync"];
    assert!(shared.store(client, &record).await.unwrap());
    // A replica started now ignores it, says so, and replaces it with its own token.
    let late = spawn(replica_command(&config("kb-late"), &db)).await;
    let started = std::time::Instant::now();
    wait_ready(late.admin()).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ready in {:?}",
        started.elapsed()
    );
    let slowest = slowest_of(late.proxy(), 20).await;
    assert!(
        slowest < Duration::from_secs(1),
        "slowest of 20: {slowest:?}"
    );
    let said = tokens_of(late.admin()).await;
    assert!(said["implausible_records"].as_u64().unwrap() >= 1, "{said}");
    assert!(
        said["last_implausible"]
            .as_str()
            .unwrap()
            .contains("future"),
        "{said}"
    );
    let stored = shared
        .load(client)
        .await
        .unwrap()
        .expect("a plausible record");
    assert_ne!(stored.authorization.as_bytes(), b"Bearer from-the-future");
    assert_eq!(
        mock.token_requests(),
        2,
        "one fetch to replace the implausible record"
    );
}

/// Found by the soak: Redis restarting (or any dropped connection) made the next
/// refresh a fetch by every replica, and `/readyz` said Redis was away when it had
/// been back for minutes: the connection manager reports a drop to the first command
/// after it. That command is now tried once more.
#[tokio::test]
async fn a_redis_restart_costs_no_extra_fetch_at_the_next_refresh() {
    let mock = mock()
        .expires_in(Duration::from_secs(40))
        .start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let db = TestDatabase::create().await;
    let mut redis = tokio::task::spawn_blocking(support::redis_server::PrivateRedis::start)
        .await
        .unwrap();
    let config = |name: &str| {
        replica_config(&mock.base_url(), name, |c| {
            c.set("fleet.redis_url", redis.url())
                .set("token.refresh_before_expiry", "30s")
        })
    };
    let (a, b) = tokio::join!(
        spawn(replica_command(&config("kb-a"), &db)),
        spawn(replica_command(&config("kb-b"), &db))
    );
    tokio::join!(wait_ready(a.admin()), wait_ready(b.admin()));
    assert_eq!(mock.token_grants(), 1, "one token for the fleet");
    // Redis restarts well before the refresh (10 s after the fetch).
    redis = tokio::task::spawn_blocking(move || {
        redis.kill();
        std::thread::sleep(Duration::from_secs(1));
        redis.start_again();
        redis
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while mock.token_grants() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        mock.token_grants(),
        2,
        "the refresh is one fetch for the fleet"
    );
    for admin in [a.admin(), b.admin()] {
        let shared = tokens_of(admin).await;
        assert_eq!(shared["status"], "ok", "{shared}");
        assert_eq!(shared["local_fetches"], 0, "{shared}");
    }
    drop(redis);
}

/// Found by the soak: a reload while a refresher was fetching aborted it, leaving its
/// fleet lease in Redis, so the refresh came a whole lease later. Refreshers now stop
/// at their next wait, never mid-refresh.
#[tokio::test]
async fn a_reload_during_a_token_refresh_leaves_no_lease_behind() {
    let mock = mock()
        .expires_in(Duration::from_secs(40))
        .token_delay(Duration::from_millis(1500))
        .start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let prefix = support::redis_server::TestPrefix::new();
    let config = TestConfig::standard(&mock.base_url())
        .set("fleet.redis_url", support::redis_server::MACHINE)
        .set("fleet.redis_prefix", &prefix.0)
        .set("token.refresh_before_expiry", "30s")
        .set("token.request_timeout", "5s");
    let path = temp_path("reload.yaml");
    std::fs::write(&path, config.yaml()).unwrap();
    let replica = spawn({
        let mut command = keybridge();
        command
            .args(["run", "--config"])
            .arg(&path)
            .env("ERP_SYNC_SECRET", SECRET);
        command
    })
    .await;
    wait_ready(replica.admin()).await;
    assert_eq!(mock.token_requests(), 1);
    // The refresh (10 s after the fetch) is under way: the mock answers after 1.5 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while mock.token_requests() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mock.token_requests(), 2, "the refresh started");
    let (status, _, _) = send(
        http::Method::POST,
        replica.admin(),
        "/reload",
        &[("content-type", "application/json")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        (mock.token_requests(), mock.token_grants()),
        (2, 2),
        "the refresh under way completed and was kept; nothing fetched again"
    );
    assert!(
        !prefix.keys().iter().any(|k| k.contains(":lease:")),
        "no lease left: {:?}",
        prefix.keys()
    );
}

//! A company's integrations all reach Coupa through keybridge, and Coupa allows an
//! instance 25 requests per second with a burst of 20, answering the excess with 429
//! and no `Retry-After`. The mock Coupa here enforces exactly that. keybridge keeps the
//! instance under it, shares it fairly between integrations, answers what cannot go in
//! time with its own 429 and `Retry-After`, and waits out the 429s that still happen.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use keybridge::cli::mock::MockHandle;
use keybridge::keys::Fingerprint;
use support::process::{Process, keybridge};
use support::*;

const INTEGRATIONS: [(&str, &str); 3] = [
    ("erp-sync", "erp-sync-key-4b1d7a0c9e2f58613a7d"),
    ("nightly-export", "nightly-export-key-91c3e5a7b2d4f6081"),
    ("expense-feed", "expense-feed-key-0f2e4d6c8b1a3957e7c"),
];

/// Three integrations on OAuth, sharing the standard client, with `shares` as weights.
fn config(base_url: &str, shares: [u32; 3]) -> TestConfig {
    let mut config = TestConfig::standard(base_url)
        .set("integrations", serde_json::json!([]))
        .set("server.access_log", false);
    for ((name, key), share) in INTEGRATIONS.iter().zip(shares) {
        config = config.push(
            "integrations",
            serde_json::json!({
                "name": name,
                "api_key_sha256": Fingerprint::of_key(key.as_bytes()).to_string(),
                "client": "erp-sync",
                "share": share,
            }),
        );
    }
    config
}

/// What one caller request ended with.
#[derive(Debug, Default, Clone)]
struct Tally {
    ok: u64,
    /// keybridge's (or Coupa's passed-back) 429, with a `Retry-After`.
    throttled: u64,
    /// Anything else: a failure.
    other: Vec<String>,
}

/// Each integration sends `per_second` GETs per second, open loop (on schedule, not
/// waiting for answers, as independent jobs do), for `duration`, spread over
/// `proxies`; returns each integration's tally once every request has ended.
async fn load(
    proxies: &[SocketAddr],
    per_second: u32,
    duration: Duration,
) -> HashMap<&'static str, Tally> {
    let client = client();
    let start = tokio::time::Instant::now();
    let interval = Duration::from_secs(1) / per_second;
    let total = u32::try_from(duration.as_millis() / interval.as_millis()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..total {
        for (n, (name, key)) in INTEGRATIONS.iter().enumerate() {
            let client = client.clone();
            let proxy = proxies[(i as usize + n) % proxies.len()];
            // The integrations' schedules are offset, so they do not all arrive at once.
            let at = start + interval * i + interval * u32::try_from(n).unwrap() / 3;
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                let (status, headers, body) = send_with(
                    &client,
                    Method::GET,
                    proxy,
                    &format!("/api/invoices/{i}"),
                    &[("x-coupa-api-key", key)],
                    Bytes::new(),
                )
                .await;
                (*name, status, headers.contains_key("retry-after"), body)
            }));
        }
    }
    let mut tallies: HashMap<&'static str, Tally> = HashMap::new();
    for t in tasks {
        let (name, status, retry_after, body) = t.await.unwrap();
        let tally = tallies.entry(name).or_default();
        match status {
            StatusCode::OK => tally.ok += 1,
            StatusCode::TOO_MANY_REQUESTS if retry_after => tally.throttled += 1,
            other => tally.other.push(format!(
                "{other} retry-after={retry_after} {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }
    tallies
}

/// What Coupa saw: requests, 429s, and the most requests it answered 200 in any
/// window of `window`.
struct Seen {
    requests: usize,
    limited: usize,
    served: usize,
    busiest: usize,
}

fn seen_by(mock: &MockHandle, window: Duration) -> Seen {
    let requests = mock.requests();
    let mut served: Vec<Instant> = requests
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.received)
        .collect();
    served.sort();
    let mut busiest = 0;
    let mut first = 0;
    for (last, t) in served.iter().enumerate() {
        while *t - served[first] >= window {
            first += 1;
        }
        busiest = busiest.max(last - first + 1);
    }
    Seen {
        requests: requests.len(),
        limited: requests.iter().filter(|r| r.status == 429).count(),
        served: served.len(),
        busiest,
    }
}

fn coupa() -> keybridge::cli::mock::MockCoupa {
    mock().rate_limit(25.0, 20)
}

fn no_failures(tallies: &HashMap<&str, Tally>) {
    for (name, t) in tallies {
        assert!(
            t.other.is_empty(),
            "{name}: requests that ended neither 200 nor 429 with Retry-After: {:?}",
            &t.other[..t.other.len().min(5)]
        );
    }
}

/// What must be shown 1 and the first half of 2: three integrations sending 150
/// requests per second together for 10 s. Coupa sees no more than 25/s (plus the burst)
/// and almost never says 429; every caller gets 200 or keybridge's 429 with
/// `Retry-After`; with equal shares each integration gets a third of what Coupa served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_integrations_at_six_times_the_limit_stay_under_it_and_share_it_fairly() {
    let mock = coupa().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let proxy = start_proxy(&config(&mock.base_url(), [1, 1, 1]).yaml()).await;
    wait_ready(proxy.admin_addr).await;
    let started = Instant::now();
    let tallies = load(&[proxy.proxy_addr], 50, Duration::from_secs(10)).await;
    let elapsed = started.elapsed().as_secs_f64();
    no_failures(&tallies);

    let seen = seen_by(&mock, Duration::from_secs(1));
    eprintln!(
        "Coupa: {} requests, {} served, {} answered 429, busiest second {}; callers: {tallies:?}",
        seen.requests, seen.served, seen.limited, seen.busiest
    );
    assert!(
        seen.limited * 100 <= seen.requests,
        "Coupa answered {} of {} requests with 429",
        seen.limited,
        seen.requests
    );
    assert!(
        seen.busiest <= 25 + 20,
        "Coupa served {} requests in one second",
        seen.busiest
    );
    assert!(
        (seen.served as f64) <= 25.0 * elapsed + 20.0,
        "{} served in {elapsed:.1} s",
        seen.served
    );
    // The budget was used, not wasted: at least 80 % of 25/s over the 10 s of load.
    assert!(seen.served >= 200, "only {} served", seen.served);

    let third = seen.served as f64 / 3.0;
    for (name, t) in &tallies {
        assert!(
            (t.ok as f64 - third).abs() <= 0.2 * third,
            "{name} got {} of {} served (a third is {third:.0}): {tallies:?}",
            t.ok,
            seen.served
        );
        assert!(
            t.throttled > 0,
            "{name} was never throttled at 2× its share"
        );
    }
    let metrics = metrics(proxy.admin_addr).await;
    for name in ["erp-sync", "nightly-export", "expense-feed"] {
        assert!(
            metrics.contains(&format!(
                "keybridge_shaping_throttled_total{{instance=\"prod\",integration=\"{name}\"}}"
            )),
            "{metrics}"
        );
    }
    assert!(metrics.contains("keybridge_shaping_wait_seconds_count{instance=\"prod\"}"));
    // The audit tells each integration's owner how often it was throttled.
    let (_, _, body) = get(proxy.admin_addr, "/audit", &[]).await;
    let audit = json(&body);
    let erp = audit["integrations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "erp-sync")
        .unwrap();
    assert_eq!(
        erp["requests"]["throttled"].as_u64(),
        Some(tallies["erp-sync"].throttled),
        "{erp}"
    );
}

/// The control: the same load with `rate_limit: off` is what integrations faced before
/// keybridge — Coupa answers most of it with 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_limit_the_same_load_meets_coupas_429s() {
    let mock = coupa().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let yaml = config(&mock.base_url(), [1, 1, 1])
        .set("instances.prod.rate_limit", "off")
        .yaml();
    let proxy = start_proxy(&yaml).await;
    wait_ready(proxy.admin_addr).await;
    let tallies = load(&[proxy.proxy_addr], 50, Duration::from_secs(10)).await;
    let seen = seen_by(&mock, Duration::from_secs(1));
    eprintln!(
        "rate_limit off: Coupa answered {} of {} with 429",
        seen.limited, seen.requests
    );
    assert!(
        seen.limited * 2 > seen.requests,
        "Coupa answered only {} of {} with 429",
        seen.limited,
        seen.requests
    );
    // And those 429s reached the callers as Coupa sent them: without Retry-After.
    let bare_429s: usize = tallies
        .values()
        .map(|t| t.other.iter().filter(|o| o.starts_with("429")).count())
        .sum();
    assert_eq!(bare_429s, seen.limited);
}

/// What must be shown 2, second half: `share: 2` gets about twice the turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integration_with_share_2_gets_twice_the_others() {
    let mock = coupa().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let proxy = start_proxy(&config(&mock.base_url(), [2, 1, 1]).yaml()).await;
    wait_ready(proxy.admin_addr).await;
    let tallies = load(&[proxy.proxy_addr], 50, Duration::from_secs(10)).await;
    no_failures(&tallies);
    let (a, b, c) = (
        tallies["erp-sync"].ok as f64,
        tallies["nightly-export"].ok as f64,
        tallies["expense-feed"].ok as f64,
    );
    let ratio = a / ((b + c) / 2.0);
    eprintln!("served with shares 2:1:1 = {a}:{b}:{c}");
    assert!((1.6..=2.4).contains(&ratio), "{a} vs {b}, {c}: {ratio:.2}");
    assert!((b - c).abs() <= 0.2 * (b + c) / 2.0, "{b} vs {c}");
    let metrics = metrics(proxy.admin_addr).await;
    assert!(
        metrics.contains("keybridge_shaping_share{instance=\"prod\",integration=\"erp-sync\"} 0.5"),
        "{metrics}"
    );
}

/// What must be shown 3: a GET that meets Coupa's 429 is sent again after a backoff
/// and succeeds; a streamed POST is not sent twice, and its caller gets the 429 with a
/// `Retry-After` (Coupa sent none).
#[tokio::test]
async fn a_get_meeting_a_429_is_retried_and_a_streamed_post_is_not() {
    let mock = coupa().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let proxy = start_proxy(&TestConfig::standard(&mock.base_url()).yaml()).await;
    wait_ready(proxy.admin_addr).await;
    let key = [("x-coupa-api-key", KEY)];

    mock.answer_429(1, None);
    let (status, _, body) = get(proxy.proxy_addr, "/api/invoices/7", &key).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let statuses: Vec<u16> = mock.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 200], "sent twice, the second time served");

    mock.answer_429(1, None);
    let post = format!(
        "POST /api/invoices HTTP/1.1\r\nHost: kb\r\nX-COUPA-API-KEY: {KEY}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         a\r\n{{\"id\": 42}}\r\n0\r\n\r\n"
    );
    let answer = raw_exchange(proxy.proxy_addr, post.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("\r\nretry-after: "),
        "{answer}"
    );
    let posts: Vec<u16> = mock
        .requests()
        .iter()
        .filter(|r| r.method == Method::POST)
        .map(|r| r.status)
        .collect();
    assert_eq!(posts, [429], "the streamed POST went to Coupa exactly once");

    let metrics = metrics(proxy.admin_addr).await;
    assert!(
        metrics.contains(
            "keybridge_coupa_rate_limited_total{instance=\"prod\",result=\"absorbed\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        "keybridge_coupa_rate_limited_total{instance=\"prod\",result=\"passed_back\"} 1"
    ));
}

/// A limit configured far above Coupa's real one (50/s against 2/s): the GETs that meet
/// Coupa's 429s are sent again until their `max_wait` deadline, not a fixed number of
/// times, and the cuts bring this instance's rate under Coupa's within a few seconds,
/// so every caller is served.
#[tokio::test]
async fn a_limit_set_far_above_coupas_is_cut_under_it_and_every_get_is_served() {
    let mock = mock()
        .rate_limit(2.0, 1)
        .start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let yaml = TestConfig::standard(&mock.base_url())
        .set(
            "instances.prod.rate_limit",
            serde_json::json!({"per_second": 50, "burst": 50, "max_wait": "20s"}),
        )
        .yaml();
    let proxy = start_proxy(&yaml).await;
    wait_ready(proxy.admin_addr).await;
    let addr = proxy.proxy_addr;
    // Four callers, each sending GETs one after another for 8 s.
    let until = Instant::now() + Duration::from_secs(8);
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while Instant::now() < until {
                    let path = format!("/api/invoices/{i}");
                    statuses.push(get(addr, &path, &[("x-coupa-api-key", KEY)]).await.0);
                }
                statuses
            })
        })
        .collect();
    let mut served = 0;
    for t in tasks {
        for status in t.await.unwrap() {
            assert_eq!(
                status,
                StatusCode::OK,
                "every caller served, none given a 429"
            );
            served += 1;
        }
    }
    assert!(served >= 8, "{served}");
    let metrics = metrics(proxy.admin_addr).await;
    let rate: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("keybridge_shaping_rate{instance=\"prod\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(rate < 12.5, "cut at least twice in 8 s: {rate}");
    assert!(
        metrics.contains(
            "keybridge_coupa_rate_limited_total{instance=\"prod\",result=\"passed_back\"} 0"
        ),
        "{metrics}"
    );
}

/// Coupa's `Retry-After`, when it sends one, is honoured before the GET goes again.
#[tokio::test]
async fn coupas_retry_after_is_honoured() {
    let mock = coupa().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let proxy = start_proxy(&TestConfig::standard(&mock.base_url()).yaml()).await;
    wait_ready(proxy.admin_addr).await;
    mock.answer_429(1, Some("2"));
    let started = Instant::now();
    let (status, _, _) = get(
        proxy.proxy_addr,
        "/api/invoices/7",
        &[("x-coupa-api-key", KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    let gap = requests[1].received - requests[0].received;
    assert!(gap >= Duration::from_secs(2), "sent again after {gap:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// `max_wait: 0s`: nobody queues; what finds no free slot gets 429 at once.
#[tokio::test]
async fn with_no_wait_allowed_the_excess_is_refused_at_once() {
    let mock = mock().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let yaml = TestConfig::standard(&mock.base_url())
        .set(
            "instances.prod.rate_limit",
            serde_json::json!({"per_second": 1, "burst": 3, "max_wait": "0s"}),
        )
        .yaml();
    let proxy = start_proxy(&yaml).await;
    wait_ready(proxy.admin_addr).await;
    let started = Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (status, headers, body) = get(
            proxy.proxy_addr,
            "/api/invoices/1",
            &[("x-coupa-api-key", KEY)],
        )
        .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(headers["retry-after"], "1");
            let body = json(&body);
            assert_eq!(body["error"], "rate_limited");
            assert!(
                body["message"].as_str().unwrap().contains("`prod`"),
                "{body}"
            );
        }
        statuses.push(status.as_u16());
    }
    // A burst of 3 lets 2 go at once (one is kept back for jitter).
    assert_eq!(statuses, [200, 200, 429, 429]);
    assert!(started.elapsed() < Duration::from_secs(1), "nobody waited");
}

async fn metrics(admin: SocketAddr) -> String {
    let (_, _, body) = get(admin, "/metrics", &[]).await;
    String::from_utf8(body.to_vec()).unwrap()
}

/// What must be shown 4: two replicas sharing the budget through Redis keep Coupa
/// under its limit together; with Redis killed each keeps to half, so the total still
/// holds, and no request fails for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_budget_and_keep_to_half_each_without_redis() {
    let mock = coupa().start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let mut redis = tokio::task::spawn_blocking(support::redis_server::PrivateRedis::start)
        .await
        .unwrap();
    let replica = |name: &str| {
        let yaml = config(&mock.base_url(), [1, 1, 1])
            .set("fleet.replica", name)
            .set("fleet.redis_url", redis.url())
            .set("fleet.expected_replicas", 2)
            .yaml();
        let path = temp_path(&format!("{name}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let mut command = keybridge();
        command
            .args(["run", "--config"])
            .arg(path)
            .env("ERP_SYNC_SECRET", SECRET);
        command
    };
    let (a, b) = (replica("kb-a"), replica("kb-b"));
    let (a, b) = tokio::join!(
        tokio::task::spawn_blocking(move || Process::spawn(a)),
        tokio::task::spawn_blocking(move || Process::spawn(b)),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    wait_ready(a.admin()).await;
    wait_ready(b.admin()).await;
    let proxies = [a.proxy(), b.proxy()];

    // With Redis: one schedule for both.
    let started = Instant::now();
    let tallies = load(&proxies, 50, Duration::from_secs(8)).await;
    let elapsed = started.elapsed().as_secs_f64();
    no_failures(&tallies);
    let with_redis = seen_by(&mock, Duration::from_secs(1));
    eprintln!(
        "with Redis: {} served in {elapsed:.1} s, {} answered 429, busiest second {}",
        with_redis.served, with_redis.limited, with_redis.busiest
    );
    assert!(
        with_redis.limited * 100 <= with_redis.requests,
        "{} of {} got Coupa's 429",
        with_redis.limited,
        with_redis.requests
    );
    assert!(
        with_redis.busiest <= 45,
        "{} in one second",
        with_redis.busiest
    );
    assert!((with_redis.served as f64) <= 25.0 * elapsed + 20.0);
    assert!(
        metrics(a.admin())
            .await
            .contains("keybridge_shaping_shared{instance=\"prod\"} 1")
    );

    redis = tokio::task::spawn_blocking(move || {
        redis.kill();
        redis
    })
    .await
    .unwrap();
    // Past every queue of the first load, so this window is the fallback's alone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = mock.requests().len();
    let started = Instant::now();
    let tallies = load(&proxies, 50, Duration::from_secs(8)).await;
    let elapsed = started.elapsed().as_secs_f64();
    no_failures(&tallies);
    let requests = &mock.requests()[before..];
    let limited = requests.iter().filter(|r| r.status == 429).count();
    let served = requests.iter().filter(|r| r.status == 200).count();
    eprintln!("without Redis: {served} served in {elapsed:.1} s, {limited} answered 429");
    assert!(
        limited * 100 <= requests.len(),
        "{limited} of {} got Coupa's 429 without Redis",
        requests.len()
    );
    assert!(
        (served as f64) <= 25.0 * elapsed + 20.0,
        "{served} served in {elapsed:.1} s"
    );
    assert!(served >= 150, "each replica kept to its half: {served}");
    assert!(
        metrics(a.admin())
            .await
            .contains("keybridge_shaping_shared{instance=\"prod\"} 0")
    );
    drop(redis);
}

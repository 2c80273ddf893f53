//! Property: whatever headers a caller sends with its key, what reaches Coupa carries
//! exactly one `Authorization` (the mapped client's bearer), no key header in any
//! spelling, no hop-by-hop header nor any header the caller's `Connection` listed, and
//! the instance's authority — or the request is refused and nothing reaches Coupa.
//! Checked over real sockets: raw bytes in, the mock Coupa's record out.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod support;

use std::sync::OnceLock;

use keybridge::cli::mock::{MockAuth, MockHandle};
use keybridge::runtime::Running;
use proptest::prelude::*;
use support::*;

/// Names a hostile caller would reach for, mixed with arbitrary ones.
const INTERESTING: &[&str] = &[
    "authorization",
    "Authorization",
    "x_coupa_api_key",
    "X_Coupa-Api_Key",
    "x-coupa-api_key",
    "connection",
    "Connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "forwarded",
    "expect",
    "accept",
    "content-type",
];

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
    "transfer-encoding",
];

fn header_name() -> impl Strategy<Value = String> {
    let arbitrary = prop::collection::vec(
        prop::sample::select(b"abcdefghijklmnopqrstuvwxyz0123456789-_".to_vec()),
        1..16,
    )
    .prop_map(|b| format!("x{}", String::from_utf8(b).unwrap()));
    prop_oneof![
        prop::sample::select(INTERESTING).prop_map(str::to_owned),
        arbitrary,
    ]
}

fn header_value() -> impl Strategy<Value = String> {
    let printable = prop::collection::vec(0x20u8..0x7f, 0..24)
        .prop_map(|b| String::from_utf8(b).unwrap().trim().to_owned());
    let name_list = prop::collection::vec(prop::sample::select(INTERESTING), 1..4)
        .prop_map(|names| names.join(", "));
    prop_oneof![
        printable,
        name_list,
        Just(format!("Bearer {KEY}")),
        Just(KEY.to_owned()),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((header_name(), header_value()), 0..12)
}

struct Pair {
    rt: tokio::runtime::Runtime,
    mock: MockHandle,
    proxy: Running,
}

fn pair() -> &'static Pair {
    static PAIR: OnceLock<Pair> = OnceLock::new();
    PAIR.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (mock, proxy) = rt.block_on(start_pair(mock(), ""));
        Pair { rt, mock, proxy }
    })
}

fn check(extra: &[(String, String)]) -> Result<(), TestCaseError> {
    let Pair { rt, mock, proxy } = pair();
    let mut request =
        format!("GET /api/invoices/1 HTTP/1.1\r\nHost: evil.example\r\nX-COUPA-API-KEY: {KEY}\r\n");
    for (name, value) in extra {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    let before = mock.requests().len();
    let reply = rt.block_on(raw_exchange(proxy.proxy_addr, request.as_bytes()));
    let seen = mock.requests();
    let status = reply.get(9..12).unwrap_or("");
    if status != "200" {
        // Refused (two keys, an upgrade, a malformed head): nothing forwarded.
        prop_assert!(status.starts_with('4'), "unexpected reply {reply:.200}");
        prop_assert_eq!(seen.len(), before, "a refused request reached Coupa");
        return Ok(());
    }
    prop_assert_eq!(seen.len(), before + 1);
    let got = &seen[before];
    let auth: Vec<_> = got.headers.get_all("authorization").iter().collect();
    prop_assert_eq!(auth.len(), 1, "exactly one Authorization");
    prop_assert!(
        auth[0].as_bytes().starts_with(b"Bearer mock."),
        "our bearer"
    );
    prop_assert_eq!(
        &got.auth,
        &MockAuth::Bearer {
            client_id: "erp-sync-client".into()
        },
        "the mapped client's valid token"
    );
    prop_assert_eq!(got.headers["host"].to_str().unwrap(), mock.addr.to_string());
    let listed: Vec<String> = extra
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| {
            v.split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|n| !["authorization", "host", "x-forwarded-for"].contains(&n.as_str()))
        .collect();
    for name in got.headers.keys() {
        let n = name.as_str();
        prop_assert_ne!(
            n.replace('_', "-"),
            "x-coupa-api-key",
            "a key header reached Coupa"
        );
        prop_assert!(!HOP_BY_HOP.contains(&n), "hop-by-hop `{}` forwarded", n);
        prop_assert!(
            ![
                "x-http-method-override",
                "x-http-method",
                "x-method-override",
                "x-forwarded-host",
                "forwarded"
            ]
            .contains(&n),
            "override header `{}` forwarded",
            n
        );
        prop_assert!(
            !listed.iter().any(|l| l == n),
            "`{}` was listed in Connection",
            n
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn whatever_the_caller_sends_coupa_sees_one_bearer_and_no_key(extra in headers()) {
        check(&extra)?;
    }
}

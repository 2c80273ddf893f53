//! Any header block plus a key: what keybridge forwards carries exactly one
//! `Authorization` (ours), no key header in any spelling, no hop-by-hop header, and the
//! instance's authority whatever the request target. The key is looked up by digest.
#![no_main]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use keybridge::keys::Fingerprint;
use keybridge::proxy::headers::{self, Credential};
use keybridge::paths as uri;
use libfuzzer_sys::fuzz_target;

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "transfer-encoding",
];

fn config() -> &'static keybridge::config::Config {
    static CONFIG: OnceLock<keybridge::config::Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let yaml = "instances:\n  prod:\n    base_url: https://acme.coupahost.com\n\
                    integrations:\n  - name: probe\n    api_key_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n    mode: observe\n    instance: prod\n";
        keybridge::config::Config::from_yaml(yaml, std::path::Path::new("."), &HashMap::new())
            .expect("the fixed fuzz config is valid")
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let target = lines.next().unwrap_or("/");
    let mut map = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    // Key lookup is by digest only.
    if let Some(key) = map.get("x-coupa-api-key") {
        let fp = Fingerprint::of_key(key.as_bytes());
        assert_eq!(fp.to_string().len(), 64);
    }

    let bearer = HeaderValue::from_static("Bearer fuzz.token");
    headers::sanitize_request(&mut map, IpAddr::V4(Ipv4Addr::LOCALHOST));
    headers::set_credential(&mut map, Credential::Bearer(&bearer));
    let auth: Vec<_> = map.get_all("authorization").iter().collect();
    assert_eq!(auth, [&bearer]);
    for name in map.keys() {
        assert!(!headers::is_api_key_header(name), "key header {name} forwarded");
        assert!(!HOP_BY_HOP.contains(&name.as_str()), "hop-by-hop {name} forwarded");
    }
    assert!(map.get("host").is_none() && map.get("content-length").is_none());

    // Whatever the target, the upstream URI is the instance's.
    if let Ok(target) = target.parse::<Uri>() {
        if let Some(pq) = uri::path_and_query(&target) {
            let instance = &config().instances["prod"];
            if let Ok(u) = instance.uri_for(pq) {
                assert_eq!(u.authority().map(|a| a.as_str()), Some("acme.coupahost.com"));
                assert_eq!(u.scheme_str(), Some("https"));
            }
        }
    }
});

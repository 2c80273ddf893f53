//! Test configurations built as YAML trees and edited by field path, never as text:
//! `TestConfig::standard(url).set("token.settle_delay", "1s").yaml()`. Paths name
//! fields the way errors do (`integrations[0].mode`, `clients.second.scopes`); the
//! config loader still checks every field, so a typo in a test fails loudly.

use yaml_serde::{Mapping, Value};

use super::{KEY, temp_path};

/// A configuration under construction.
#[derive(Clone)]
pub struct TestConfig(Value);

impl TestConfig {
    /// One instance `prod` at `base_url`, client `erp-sync` (secret from
    /// `${ERP_SYNC_SECRET}`), integration `netsuite-bundle` with [`KEY`] in `oauth`,
    /// listeners on port 0, no settle delay, an audit file of its own.
    pub fn standard(base_url: &str) -> Self {
        let fp = keybridge::keys::Fingerprint::of_key(KEY.as_bytes()).to_string();
        let audit = temp_path("audit.db").display().to_string();
        let tree = serde_json::json!({
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "instances": {"prod": {"base_url": base_url}},
            "clients": {"erp-sync": {
                "instance": "prod",
                "client_id": "erp-sync-client",
                "client_secret": "${ERP_SYNC_SECRET}",
                "scopes": ["core.invoice.read", "core.invoice.write"],
            }},
            "integrations": [{
                "name": "netsuite-bundle",
                "api_key_sha256": fp,
                "client": "erp-sync",
            }],
            "token": {"settle_delay": "0s"},
            "audit": {"path": audit},
        });
        TestConfig(yaml_serde::to_value(tree).unwrap())
    }

    /// A configuration given as YAML text (for tests that start from one).
    pub fn from_yaml(yaml: &str) -> Self {
        TestConfig(yaml_serde::from_str(yaml).unwrap())
    }

    /// TLS on the proxy listener, with the fixture certificate (localhost, 127.0.0.1).
    pub fn tls_listener(self) -> Self {
        self.set(
            "tls.cert",
            super::fixture("server.pem").display().to_string(),
        )
        .set(
            "tls.key",
            super::fixture("server.key").display().to_string(),
        )
    }

    /// Sets the field at `path` to `value`, creating mappings on the way.
    pub fn set(mut self, path: &str, value: impl serde::Serialize) -> Self {
        let value = yaml_serde::to_value(value).unwrap();
        *slot(&mut self.0, path, true).unwrap_or_else(|| panic!("no field {path}")) = value;
        self
    }

    /// Removes the field at `path`.
    pub fn remove(mut self, path: &str) -> Self {
        let (parent, last) = path.rsplit_once('.').unwrap_or(("", path));
        let map = if parent.is_empty() {
            &mut self.0
        } else {
            slot(&mut self.0, parent, false).unwrap_or_else(|| panic!("no field {parent}"))
        };
        map.as_mapping_mut()
            .and_then(|m| m.remove(last))
            .unwrap_or_else(|| panic!("no field {path}"));
        self
    }

    /// Appends `value` to the list at `path` (`integrations`).
    pub fn push(mut self, path: &str, value: impl serde::Serialize) -> Self {
        let value = yaml_serde::to_value(value).unwrap();
        slot(&mut self.0, path, false)
            .and_then(Value::as_sequence_mut)
            .unwrap_or_else(|| panic!("no list {path}"))
            .push(value);
        self
    }

    /// Merges a YAML mapping into this one (nested mappings merge; the rest replaces).
    pub fn merge(mut self, yaml: &str) -> Self {
        if yaml.trim().is_empty() {
            return self;
        }
        let other: Value = yaml_serde::from_str(yaml).unwrap();
        merge(&mut self.0, other);
        self
    }

    pub fn yaml(&self) -> String {
        yaml_serde::to_string(&self.0).unwrap()
    }
}

/// The value at `path`; with `create`, missing mapping entries are added.
fn slot<'a>(mut at: &'a mut Value, path: &str, create: bool) -> Option<&'a mut Value> {
    for part in path.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (
                name,
                Some(rest.trim_end_matches(']').parse::<usize>().ok()?),
            ),
            None => (part, None),
        };
        if !name.is_empty() {
            if !at.is_mapping() {
                if !create {
                    return None;
                }
                *at = Value::Mapping(Mapping::new());
            }
            let map = at.as_mapping_mut()?;
            if !map.contains_key(name) {
                if !create {
                    return None;
                }
                map.insert(Value::from(name), Value::Null);
            }
            at = map.get_mut(name)?;
        }
        if let Some(i) = index {
            at = at.as_sequence_mut()?.get_mut(i)?;
        }
    }
    Some(at)
}

fn merge(into: &mut Value, other: Value) {
    match (into, other) {
        (Value::Mapping(into), Value::Mapping(other)) => {
            for (k, v) in other {
                match into.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        into.insert(k, v);
                    }
                }
            }
        }
        (into, other) => *into = other,
    }
}

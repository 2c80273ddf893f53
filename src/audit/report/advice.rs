//! Scope advice: the least set of OAuth scopes a client needs for the endpoints its
//! integrations really used (via [`crate::scopes`]), against what it is configured
//! with. Endpoints whose resource is not in that table are listed as unknown rather
//! than guessed.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use http::Method;

use super::model::*;
use crate::scopes::required_scope;

pub(super) fn scope_of(endpoint: &str) -> Option<String> {
    let (method, path) = endpoint.split_once(' ')?;
    required_scope(&Method::from_bytes(method.as_bytes()).ok()?, path)
}

/// The least scope set for what was used, against what is configured.
pub fn advise(
    endpoints: &[EndpointReport],
    configured: Option<&[String]>,
    fallbacks: &[FallbackReport],
    shadow_findings: &[ShadowReport],
) -> ScopeAdvice {
    let needed: BTreeSet<String> = endpoints.iter().filter_map(|e| e.scope.clone()).collect();
    let unknown_endpoints: Vec<String> = endpoints
        .iter()
        .filter(|e| e.scope.is_none())
        .map(|e| e.endpoint.clone())
        .collect();
    let implicated: BTreeSet<String> = fallbacks
        .iter()
        .filter_map(|f| f.scope.clone())
        .chain(shadow_findings.iter().filter_map(|s| s.scope.clone()))
        .collect();
    let requests_all_scopes = configured.is_some_and(|c| c.is_empty());
    let configured_set: BTreeSet<String> = configured.unwrap_or_default().iter().cloned().collect();
    let (missing, unused): (Vec<String>, Vec<String>) =
        if requests_all_scopes || configured.is_none() {
            (Vec::new(), Vec::new())
        } else {
            (
                needed.difference(&configured_set).cloned().collect(),
                if needed.is_empty() {
                    Vec::new()
                } else {
                    configured_set.difference(&needed).cloned().collect()
                },
            )
        };
    let list = |v: &BTreeSet<String>| v.iter().cloned().collect::<Vec<_>>().join(" ");
    let mut suggestion = if needed.is_empty() && unknown_endpoints.is_empty() {
        "no traffic yet: no advice".to_owned()
    } else if configured.is_none() {
        format!("create an OAuth client with scopes: {}", list(&needed))
    } else if requests_all_scopes {
        format!(
            "the client requests every granted scope (like the old admin key); request only: {}",
            list(&needed)
        )
    } else if !missing.is_empty() {
        format!("add scopes: {}", missing.join(" "))
    } else if !unused.is_empty() {
        format!(
            "scopes cover all traffic; consider removing: {}",
            unused.join(" ")
        )
    } else {
        "configured scopes are exactly what the traffic needs".to_owned()
    };
    if !unknown_endpoints.is_empty() {
        let _ = write!(
            suggestion,
            "; {} endpoint(s) with unknown scope: check /oauth2/scopes in Coupa",
            unknown_endpoints.len()
        );
    }
    ScopeAdvice {
        needed: needed.into_iter().collect(),
        configured: configured_set.into_iter().collect(),
        requests_all_scopes,
        missing,
        unused,
        implicated_by_fallbacks: implicated.into_iter().collect(),
        unknown_endpoints,
        suggestion,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::audit::report::model::EndpointReport;

    fn ep(endpoint: &str) -> EndpointReport {
        EndpointReport {
            endpoint: endpoint.into(),
            count: 1,
            statuses: BTreeMap::new(),
            scope: scope_of(endpoint),
        }
    }

    #[test]
    fn advice_finds_missing_unused_and_unknown() {
        let eps = [
            ep("GET /api/invoices/:id"),
            ep("POST /api/invoices"),
            ep("GET /api/widgets"),
        ];
        let configured = vec![
            "core.invoice.read".to_owned(),
            "core.supplier.read".to_owned(),
        ];
        let a = advise(&eps, Some(&configured), &[], &[]);
        assert_eq!(a.needed, ["core.invoice.read", "core.invoice.write"]);
        assert_eq!(a.missing, ["core.invoice.write"]);
        assert_eq!(a.unused, ["core.supplier.read"]);
        assert_eq!(a.unknown_endpoints, ["GET /api/widgets"]);
        assert!(
            a.suggestion.contains("add scopes: core.invoice.write"),
            "{}",
            a.suggestion
        );

        let all = advise(&eps, Some(&[]), &[], &[]);
        assert!(all.requests_all_scopes && all.missing.is_empty());
        assert!(
            all.suggestion
                .contains("request only: core.invoice.read core.invoice.write")
        );
    }
}

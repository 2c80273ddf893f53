//! `keybridge test-credentials`: prove an OAuth client works before cutting over.
//!
//! Fetch a token, wait out the settle delay, then call one read endpoint the client's
//! own scopes allow — one its integrations already use (from the audit) or the main
//! resource of its first `.read` scope — so a least-privilege client passes. Then compare
//! the scopes its integrations' recorded endpoints need with the scopes it requests.
//! Each way it can fail has its own message and exit code, so a script can tell them
//! apart.

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};

use crate::config::{Client, Config};
use crate::token::oauth::{self, TokenError};
use crate::upstream;

/// Why the check failed, with its exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// 2: the token endpoint could not be reached or answered nonsense.
    TokenEndpointUnreachable(String),
    /// 3: Coupa rejected the client id or secret.
    SecretRejected(String),
    /// 4: a scope is missing (rejected at the token endpoint, or 403 from the API).
    ScopeMissing(String),
    /// 5: the API call itself was refused or failed.
    ApiCallRefused(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::TokenEndpointUnreachable(_) => 2,
            Failure::SecretRejected(_) => 3,
            Failure::ScopeMissing(_) => 4,
            Failure::ApiCallRefused(_) => 5,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Failure::TokenEndpointUnreachable(m) => format!("token endpoint unreachable: {m}"),
            Failure::SecretRejected(m) => format!("secret rejected: {m}"),
            Failure::ScopeMissing(m) => format!("scope missing: {m}"),
            Failure::ApiCallRefused(m) => format!("API call refused: {m}"),
        }
    }
}

/// An endpoint an integration of the client called, from the audit.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub integration: String,
    /// `METHOD /api/resource/:id`, as the audit writes it.
    pub endpoint: String,
    pub scope: Option<String>,
}

/// The read call that proves the token, and why it was chosen.
struct Probe {
    path: String,
    scope: Option<String>,
    why: &'static str,
}

/// A GET the client's scopes allow: one its integrations already make (no `:id` in it),
/// else the main resource of its first read scope. With no `scopes:` (all granted) and
/// no traffic, `/api/users` (Coupa's own connection test). `None`: only write scopes.
fn probe(client: &Client, recorded: &[Recorded]) -> Option<Probe> {
    let allowed = |scope: &Option<String>| {
        client.scopes.is_empty() || scope.as_ref().is_some_and(|s| client.scopes.contains(s))
    };
    if let Some(r) = recorded.iter().find(|r| {
        r.endpoint.starts_with("GET /api/") && !r.endpoint.contains(':') && allowed(&r.scope)
    }) {
        return Some(Probe {
            path: format!("{}?limit=1", &r.endpoint["GET ".len()..]),
            scope: r.scope.clone(),
            why: "an endpoint its integrations use",
        });
    }
    if client.scopes.is_empty() {
        return Some(Probe {
            path: "/api/users?limit=1".to_owned(),
            scope: Some("core.user.read".to_owned()),
            why: "Coupa's connection test; no scopes are listed",
        });
    }
    client.scopes.iter().find_map(|scope| {
        let path = crate::scopes::read_endpoint(scope)?;
        Some(Probe {
            path: format!("{path}?limit=1"),
            scope: Some(scope.clone()),
            why: "allowed by its scopes",
        })
    })
}

/// Runs the check, printing progress through `say`. `recorded`: what the client's
/// integrations called so far (empty without an audit).
pub async fn check(
    config: &Config,
    client: &Client,
    recorded: &[Recorded],
    say: &mut dyn FnMut(&str),
) -> Result<(), Failure> {
    let http = upstream::build_client(&config.upstream)
        .map_err(|e| Failure::TokenEndpointUnreachable(e.to_string()))?;
    say(&format!(
        "1/3 token: POST {} as client_id {} (scopes: {})",
        client.instance.token_url,
        client.client_id,
        if client.scopes.is_empty() {
            "all granted".to_owned()
        } else {
            client.scopes.join(" ")
        }
    ));
    let grant = oauth::request_token(&http, client, config.token.request_timeout)
        .await
        .map_err(classify)?;
    say(&format!(
        "    ok: token issued, expires in {}s",
        grant.expires_in.as_secs()
    ));

    match probe(client, recorded) {
        Some(probe) => {
            let settle = config.token.settle_delay;
            if !settle.is_zero() {
                say(&format!(
                    "    waiting {}s for the new token to become active (Coupa's settle delay)",
                    settle.as_secs_f64()
                ));
                tokio::time::sleep(settle).await;
            }
            call(config, client, &http, grant.authorization, &probe, say).await?;
        }
        None => say("2/3 API: skipped: the client has only write scopes, and no read call to try"),
    }
    recorded_scopes(client, recorded, say)
}

/// Step 2: the read call.
async fn call(
    config: &Config,
    client: &Client,
    http: &upstream::HttpClient,
    authorization: http::HeaderValue,
    probe: &Probe,
    say: &mut dyn FnMut(&str),
) -> Result<(), Failure> {
    let path: http::uri::PathAndQuery = probe
        .path
        .parse()
        .map_err(|e| Failure::ApiCallRefused(format!("{}: {e}", probe.path)))?;
    let uri = client.instance.uri_for(path);
    let needs = probe
        .scope
        .as_deref()
        .unwrap_or("a scope keybridge does not know");
    say(&format!(
        "2/3 API: GET {uri} ({}; needs {needs})",
        probe.why
    ));
    let request = Request::get(uri)
        .header(ACCEPT, "application/json")
        .header(AUTHORIZATION, authorization)
        .body(Either::Right(Full::new(Bytes::new())))
        .map_err(|e| Failure::ApiCallRefused(e.to_string()))?;
    let response = tokio::time::timeout(config.upstream.response_timeout, http.request(request))
        .await
        .map_err(|_| {
            Failure::ApiCallRefused(format!(
                "no response within {:?}",
                config.upstream.response_timeout
            ))
        })?
        .map_err(|e| {
            Failure::ApiCallRefused(format!("instance unreachable: {}", crate::log::chain(&e)))
        })?;
    let status = response.status();
    let _ = Limited::new(response.into_body(), 64 * 1024)
        .collect()
        .await;
    match status {
        s if s.is_success() => {
            say(&format!("    ok: HTTP {}", s.as_u16()));
            Ok(())
        }
        StatusCode::FORBIDDEN => Err(Failure::ScopeMissing(format!(
            "Coupa answered 403 to GET {}: grant {needs} to this client in Coupa (and list it under scopes)",
            probe.path
        ))),
        StatusCode::UNAUTHORIZED => Err(Failure::ApiCallRefused(
            "Coupa answered 401: the token was not accepted (client disabled, or clock/settle issue)".into(),
        )),
        s => Err(Failure::ApiCallRefused(format!("Coupa answered HTTP {}", s.as_u16()))),
    }
}

/// Step 3: the scopes the integrations' recorded endpoints need, against the list.
fn recorded_scopes(
    client: &Client,
    recorded: &[Recorded],
    say: &mut dyn FnMut(&str),
) -> Result<(), Failure> {
    if recorded.is_empty() {
        say("3/3 scopes: no recorded traffic of its integrations yet; nothing to compare");
        return Ok(());
    }
    if client.scopes.is_empty() {
        say("3/3 scopes: not listed (all granted): list them under scopes to have them checked");
        return Ok(());
    }
    let missing: Vec<&Recorded> = recorded
        .iter()
        .filter(|r| r.scope.as_ref().is_some_and(|s| !client.scopes.contains(s)))
        .collect();
    if missing.is_empty() {
        say(&format!(
            "3/3 scopes: every recorded endpoint of its integrations ({}) is covered",
            recorded.len()
        ));
        return Ok(());
    }
    let mut scopes: Vec<&str> = missing.iter().filter_map(|r| r.scope.as_deref()).collect();
    scopes.sort_unstable();
    scopes.dedup();
    let calls: Vec<String> = missing
        .iter()
        .take(5)
        .map(|r| format!("{} ({})", r.endpoint, r.integration))
        .collect();
    Err(Failure::ScopeMissing(format!(
        "the credentials work, but its integrations call endpoints needing {} that client `{}` does not request: {}{}; grant them in Coupa and add them under clients.{}.scopes",
        scopes.join(" "),
        client.name,
        calls.join(", "),
        if missing.len() > calls.len() {
            ", …"
        } else {
            ""
        },
        client.name
    )))
}

fn classify(e: TokenError) -> Failure {
    match &e {
        TokenError::Rejected { error, .. } if error == "invalid_scope" => Failure::ScopeMissing(
            format!("{e} — the client is not granted every scope listed under `scopes`"),
        ),
        TokenError::Rejected { error, .. }
            if matches!(
                error.as_str(),
                "invalid_client" | "unauthorized_client" | "invalid_grant"
            ) =>
        {
            Failure::SecretRejected(format!("{e} — check client_id and client_secret"))
        }
        TokenError::Rejected { .. } => Failure::SecretRejected(e.to_string()),
        TokenError::Unreachable(_)
        | TokenError::Timeout(_)
        | TokenError::HttpStatus { .. }
        | TokenError::InvalidResponse(_)
        | TokenError::Internal(_) => Failure::TokenEndpointUnreachable(e.to_string()),
    }
}

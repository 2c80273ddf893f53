//! `keybridge test-credentials`: prove an OAuth client works before cutting over.
//!
//! Runs Coupa's (and Celigo's) connection test: fetch a token, wait out the settle
//! delay, call `GET /api/users?limit=1` (needs `core.user.read`). Each way it can fail
//! has its own message and exit code, so a script can tell them apart.

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

/// Runs the check, printing progress through `say`.
pub async fn check(
    config: &Config,
    client: &Client,
    say: &mut dyn FnMut(&str),
) -> Result<(), Failure> {
    let http = upstream::build_client(&config.upstream)
        .map_err(|e| Failure::TokenEndpointUnreachable(e.to_string()))?;
    say(&format!(
        "1/2 token: POST {} as client_id {} (scopes: {})",
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

    let settle = config.token.settle_delay;
    if !settle.is_zero() {
        say(&format!(
            "    waiting {}s for the new token to become active (Coupa's settle delay)",
            settle.as_secs_f64()
        ));
        tokio::time::sleep(settle).await;
    }

    let uri = client
        .instance
        .uri_for(http::uri::PathAndQuery::from_static("/api/users?limit=1"));
    say(&format!("2/2 API: GET {uri} (needs core.user.read)"));
    let request = Request::get(uri)
        .header(ACCEPT, "application/json")
        .header(AUTHORIZATION, grant.authorization)
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
        StatusCode::FORBIDDEN => Err(Failure::ScopeMissing(
            "Coupa answered 403 to GET /api/users: grant core.user.read to this client (and list it under scopes)".into(),
        )),
        StatusCode::UNAUTHORIZED => Err(Failure::ApiCallRefused(
            "Coupa answered 401: the token was not accepted (client disabled, or clock/settle issue)".into(),
        )),
        s => Err(Failure::ApiCallRefused(format!("Coupa answered HTTP {}", s.as_u16()))),
    }
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

//! The OAuth 2.0 client-credentials grant (RFC 6749 §4.4) against Coupa's
//! `/oauth2/token`.
//!
//! The reply is untrusted input: the body is read with a size cap, `access_token` must
//! be an RFC 6750 `b64token` (so it can never smuggle CR/LF or spaces into a header),
//! `token_type` must be `bearer`, and `expires_in` is validated and clamped. Errors carry
//! Coupa's `error`/`error_description` (sanitised) and never the secret.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use serde::Deserialize;

use crate::config::{Client, ClientAuth};
use crate::upstream::HttpClient;

/// Largest token response body read (a very long JWT plus JSON framing).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Largest `access_token` accepted. Coupa's JWTs grow with the scope count; even an
/// all-scopes token is far below this.
pub const MAX_TOKEN_LEN: usize = 32 * 1024;
/// `expires_in` above this is clamped (Coupa issues 86 399 s).
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Assumed lifetime when the endpoint omits `expires_in` (RFC 6749 makes it optional).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// Why no token could be obtained. Display is safe to log and to show callers' admins.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token endpoint unreachable: {0}")]
    Unreachable(String),
    #[error("token endpoint did not answer within {0:?}")]
    Timeout(Duration),
    #[error("token endpoint refused the request (HTTP {status}): {error}{}", describe(.description))]
    Rejected {
        status: u16,
        /// RFC 6749 `error`, e.g. `invalid_client`, `invalid_scope`.
        error: String,
        description: Option<String>,
    },
    #[error("token endpoint answered HTTP {status} without an OAuth error body")]
    HttpStatus { status: u16 },
    #[error("token endpoint sent an unusable response: {0}")]
    InvalidResponse(String),
    /// A keybridge bug, not the endpoint's doing.
    #[error("internal error in the token cache: {0}")]
    Internal(String),
}

fn describe(d: &Option<String>) -> String {
    d.as_deref().map(|d| format!(" ({d})")).unwrap_or_default()
}

/// A successfully granted token, before the cache stamps it with times.
pub struct Grant {
    /// `Bearer <token>`, marked sensitive.
    pub authorization: HeaderValue,
    pub expires_in: Duration,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    error_description: Option<String>,
}

/// Requests a token for `client`, bounded by `timeout` end to end.
pub async fn request_token(
    http: &HttpClient,
    client: &Client,
    timeout: Duration,
) -> Result<Grant, TokenError> {
    match tokio::time::timeout(timeout, request_token_unbounded(http, client)).await {
        Ok(result) => result,
        Err(_) => Err(TokenError::Timeout(timeout)),
    }
}

async fn request_token_unbounded(http: &HttpClient, client: &Client) -> Result<Grant, TokenError> {
    let request = build_request(client)?;
    let response = http
        .request(request)
        .await
        .map_err(|e| TokenError::Unreachable(crate::log::chain(&e)))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                TokenError::InvalidResponse(format!("body larger than {MAX_RESPONSE_BYTES} bytes"))
            } else {
                TokenError::Unreachable(format!("reading response: {e}"))
            }
        })?
        .to_bytes();
    let secret = client.client_secret.expose();
    if status.is_success() {
        parse_grant(&body)
    } else {
        Err(parse_error(status, &body, secret))
    }
}

fn build_request(client: &Client) -> Result<Request<crate::body::UpstreamBody>, TokenError> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials");
    if client.auth == ClientAuth::Body {
        form.append_pair("client_id", &client.client_id);
        form.append_pair("client_secret", client.client_secret.expose());
    }
    if !client.scopes.is_empty() {
        form.append_pair("scope", &client.scopes.join(" "));
    }
    let body = form.finish();

    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(client.instance.token_url.clone())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, concat!("keybridge/", env!("CARGO_PKG_VERSION")));
    if client.auth == ClientAuth::Basic {
        // RFC 6749 §2.3.1: both parts form-urlencoded, then Basic.
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let creds = format!(
            "{}:{}",
            enc(&client.client_id),
            enc(client.client_secret.expose())
        );
        let mut value = HeaderValue::try_from(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(creds)
        ))
        .map_err(|_| {
            TokenError::InvalidResponse("client credentials are not header-safe".into())
        })?;
        value.set_sensitive(true);
        builder = builder.header(AUTHORIZATION, value);
    }
    builder
        .body(Either::Right(Full::new(Bytes::from(body))))
        .map_err(|e| TokenError::Internal(format!("cannot build token request: {e}")))
}

/// Parses and validates a 2xx token response.
pub fn parse_grant(body: &[u8]) -> Result<Grant, TokenError> {
    let invalid = |m: &str| TokenError::InvalidResponse(m.to_owned());
    let parsed: TokenResponse = serde_json::from_slice(body)
        .map_err(|_| invalid("body is not a JSON object with token fields"))?;
    let token = parsed
        .access_token
        .ok_or_else(|| invalid("no `access_token` in the response"))?;
    if token.is_empty() {
        return Err(invalid("`access_token` is empty"));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::InvalidResponse(format!(
            "`access_token` is {} bytes, more than the {MAX_TOKEN_LEN} allowed",
            token.len()
        )));
    }
    if !is_b64token(&token) {
        return Err(invalid(
            "`access_token` contains characters not allowed in a bearer token (RFC 6750 b64token)",
        ));
    }
    match parsed.token_type.as_deref() {
        None => {}
        Some(t) if t.eq_ignore_ascii_case("bearer") => {}
        Some(_) => return Err(invalid("`token_type` is not `bearer`")),
    }
    let expires_in = match parsed.expires_in {
        None => DEFAULT_LIFETIME,
        Some(v) => parse_expires_in(&v)?,
    };
    let mut authorization =
        bearer_header(token).map_err(|_| invalid("`access_token` is not header-safe"))?;
    authorization.set_sensitive(true);
    Ok(Grant {
        authorization,
        expires_in,
    })
}

/// `Bearer <token>` in memory that is zeroed when the last request using it is done
/// (every clone of the header shares the one buffer); the parsed `token` is zeroed now.
fn bearer_header(mut token: String) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    use zeroize::Zeroize as _;
    let mut value = zeroize::Zeroizing::new(Vec::with_capacity(7 + token.len()));
    value.extend_from_slice(b"Bearer ");
    value.extend_from_slice(token.as_bytes());
    token.zeroize();
    HeaderValue::from_maybe_shared(Bytes::from_owner(value))
}

fn parse_expires_in(v: &serde_json::Value) -> Result<Duration, TokenError> {
    let secs: f64 = match v {
        serde_json::Value::Number(n) => n.as_f64().unwrap_or(-1.0),
        serde_json::Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| TokenError::InvalidResponse("`expires_in` is not a number".into()))?,
        _ => {
            return Err(TokenError::InvalidResponse(
                "`expires_in` is not a number".into(),
            ));
        }
    };
    if !secs.is_finite() || secs < 1.0 {
        return Err(TokenError::InvalidResponse(
            "`expires_in` is not a positive number of seconds".into(),
        ));
    }
    Ok(Duration::from_secs_f64(
        secs.min(MAX_LIFETIME.as_secs_f64()),
    ))
}

/// RFC 6750 §2.1: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

fn parse_error(status: StatusCode, body: &[u8], secret: &str) -> TokenError {
    match serde_json::from_slice::<ErrorResponse>(body) {
        Ok(e) => TokenError::Rejected {
            status: status.as_u16(),
            error: sanitize(&e.error, secret),
            description: e.error_description.map(|d| sanitize(&d, secret)),
        },
        Err(_) => TokenError::HttpStatus {
            status: status.as_u16(),
        },
    }
}

/// Makes a server-provided string safe to log: printable ASCII only, bounded, and with
/// the client secret removed should the endpoint ever echo it.
fn sanitize(s: &str, secret: &str) -> String {
    let s = if !secret.is_empty() && s.contains(secret) {
        s.replace(secret, "<redacted>")
    } else {
        s.to_owned()
    };
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(200)
        .collect();
    if s.chars().count() > 200 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_coupa_shaped_response() {
        let g = parse_grant(
            br#"{"access_token":"eyJhbGciOi.abc-_~+/=","token_type":"bearer","expires_in":86399}"#,
        )
        .unwrap();
        assert_eq!(g.expires_in, Duration::from_secs(86399));
        assert!(g.authorization.is_sensitive());
        assert_eq!(
            g.authorization.to_str().unwrap(),
            "Bearer eyJhbGciOi.abc-_~+/="
        );
    }

    #[test]
    fn rejects_hostile_tokens_and_lifetimes() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"access_token":"a\r\nX-Evil: 1","token_type":"bearer","expires_in":60}"#,
                "b64token",
            ),
            (
                r#"{"access_token":"a b","token_type":"bearer","expires_in":60}"#,
                "b64token",
            ),
            (
                r#"{"access_token":"a\u0000b","token_type":"bearer","expires_in":60}"#,
                "b64token",
            ),
            (
                r#"{"access_token":"tökén","token_type":"bearer","expires_in":60}"#,
                "b64token",
            ),
            (
                r#"{"access_token":"","token_type":"bearer","expires_in":60}"#,
                "empty",
            ),
            (
                r#"{"token_type":"bearer","expires_in":60}"#,
                "no `access_token`",
            ),
            (
                r#"{"access_token":"abc","token_type":"mac","expires_in":60}"#,
                "token_type",
            ),
            (
                r#"{"access_token":"abc","token_type":"bearer","expires_in":0}"#,
                "positive",
            ),
            (
                r#"{"access_token":"abc","token_type":"bearer","expires_in":-5}"#,
                "positive",
            ),
            (
                r#"{"access_token":"abc","token_type":"bearer","expires_in":"soon"}"#,
                "not a number",
            ),
            ("<html>oops</html>", "not a JSON"),
        ];
        for (body, want) in cases {
            let err = parse_grant(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{body} -> {err}");
        }
        let huge = format!(
            r#"{{"access_token":"{}","expires_in":60}}"#,
            "a".repeat(MAX_TOKEN_LEN + 1)
        );
        assert!(
            parse_grant(huge.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("allowed")
        );
    }

    #[test]
    fn clamps_and_coerces_lifetimes() {
        let g = parse_grant(br#"{"access_token":"abc","expires_in":1000000000000}"#).unwrap();
        assert_eq!(g.expires_in, MAX_LIFETIME);
        let g = parse_grant(br#"{"access_token":"abc","expires_in":"120"}"#).unwrap();
        assert_eq!(g.expires_in, Duration::from_secs(120));
        let g = parse_grant(br#"{"access_token":"abc"}"#).unwrap();
        assert_eq!(g.expires_in, DEFAULT_LIFETIME);
    }

    #[test]
    fn error_bodies_are_sanitised_and_never_echo_the_secret() {
        let body = br#"{"error":"invalid_client","error_description":"bad secret s3cr3t\r\n"}"#;
        let err = parse_error(StatusCode::BAD_REQUEST, body, "s3cr3t");
        let text = err.to_string();
        assert!(text.contains("invalid_client"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(!text.contains('\n'));
        assert_eq!(
            parse_error(StatusCode::BAD_GATEWAY, b"<html>", "x"),
            TokenError::HttpStatus { status: 502 }
        );
    }
}

//! Who is calling, and which way their request goes.
//!
//! One `X-COUPA-API-KEY` → the integration owning its fingerprint, whose plan picks the
//! route ([`super::cutover::route`]); a key nobody owns → `unknown_keys`; no key but a
//! bearer → `bearer_requests`; nothing → 401.

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request};

use super::cutover::{self, Route};
use super::error::ProxyError;
use super::handled::{Handled, Who};
use super::headers::{Credential, X_COUPA_API_KEY};
use super::view::Proxy;
use crate::audit::Outcome;
use crate::body::{CallerBody, Inbound};
use crate::config::{BearerRequests, UnknownKeys};
use crate::keys::Fingerprint;
use crate::shaping::Flow;
use crate::upstream::Upstream;

impl<B: Inbound, U: Upstream<B>> Proxy<U, B> {
    /// Authenticates the request and sends it down the route its caller's plan picks.
    pub(super) async fn dispatch(
        &self,
        req: Request<CallerBody<B>>,
        target: PathAndQuery,
        endpoint: &str,
    ) -> Handled<U::Body> {
        let mut keys = req.headers().get_all(&X_COUPA_API_KEY).iter();
        let key = match (keys.next(), keys.next()) {
            (Some(_), Some(_)) => {
                return Handled::rejected(Who::Anonymous, ProxyError::AmbiguousApiKey);
            }
            (Some(key), None) => match normalise_key(key) {
                Ok(key) => key,
                Err(e) => return Handled::rejected(Who::Anonymous, e),
            },
            (None, _) => return Box::pin(self.without_key(req, target)).await,
        };
        let (fingerprint, caller) = self.state.caller(key.as_bytes());
        let Some(caller) = caller.cloned() else {
            return Box::pin(self.unknown_key(req, target, fingerprint, &key)).await;
        };
        let safe = matches!(*req.method(), Method::GET | Method::HEAD);
        let integration = Arc::clone(&caller.integration);
        match cutover::route(&integration.plan, safe) {
            Route::Deny => Handled::new(
                Who::Caller(caller),
                Outcome::Denied,
                Err(ProxyError::Denied {
                    integration: Arc::clone(&integration.name),
                }),
            ),
            Route::Key { instance } => {
                let flow = Flow {
                    name: &integration.name,
                    weight: integration.share,
                };
                let result = self
                    .forward(req, target, instance, Credential::Key(&key), flow)
                    .await;
                Handled::new(Who::Caller(caller), Outcome::ApiKey, result)
            }
            // Boxed, like the other less travelled routes: every request's future is
            // as large as its largest route and is copied whole (see
            // proxy::tests::the_request_future_stays_small).
            Route::KeyAndShadow { client } => {
                Box::pin(self.forward_key_and_shadow(req, target, caller, client, &key, endpoint))
                    .await
            }
            Route::Oauth { client } => self.forward_oauth(req, target, caller, client, None).await,
            Route::OauthWithFallback { client } => {
                Box::pin(self.forward_oauth(req, target, caller, client, Some(&key))).await
            }
        }
    }

    /// No key: a native bearer caller, or nobody.
    async fn without_key(
        &self,
        req: Request<CallerBody<B>>,
        target: PathAndQuery,
    ) -> Handled<U::Body> {
        let bearer = req
            .headers()
            .get(AUTHORIZATION)
            .map(HeaderValue::as_bytes)
            .is_some_and(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "));
        if !bearer {
            return Handled::rejected(Who::Anonymous, ProxyError::MissingApiKey);
        }
        let config = &self.state.config;
        match (config.bearer_requests, &config.default_instance) {
            (BearerRequests::Forward, Some(instance)) => {
                let flow = Flow {
                    name: &self.state.bystanders.native_flow,
                    weight: 1,
                };
                let result = self
                    .forward(req, target, instance, Credential::Caller, flow)
                    .await;
                Handled::new(Who::Native, Outcome::Native, result)
            }
            (BearerRequests::Reject, _) => {
                Handled::rejected(Who::Native, ProxyError::BearerRejected)
            }
            (BearerRequests::Forward, None) => {
                Handled::rejected(Who::Native, ProxyError::BearerNotRouted)
            }
        }
    }

    /// A key no integration owns.
    async fn unknown_key(
        &self,
        req: Request<CallerBody<B>>,
        target: PathAndQuery,
        fp: Fingerprint,
        key: &HeaderValue,
    ) -> Handled<U::Body> {
        let config = &self.state.config;
        match (config.unknown_keys, &config.default_instance) {
            (UnknownKeys::Observe, Some(instance)) => {
                let flow = Flow {
                    name: &self.state.bystanders.unknown_flow,
                    weight: 1,
                };
                let result = self
                    .forward(req, target, instance, Credential::Key(key), flow)
                    .await;
                Handled::new(Who::Unknown(fp), Outcome::ApiKey, result)
            }
            (UnknownKeys::Observe, None) | (UnknownKeys::Reject, _) => Handled::rejected(
                Who::Unknown(fp),
                ProxyError::UnknownApiKey {
                    fingerprint: fp.short(),
                },
            ),
        }
    }
}

/// The key as Coupa would read it: surrounding spaces and tabs trimmed (HTTP/1 parsers
/// drop them, HTTP/2 keeps them — a denied key with a trailing space must still be the
/// denied key), control characters refused. What is hashed is what is forwarded.
fn normalise_key(raw: &HeaderValue) -> Result<HeaderValue, ProxyError> {
    let bytes = raw.as_bytes();
    let trimmed = bytes.trim_ascii();
    if trimmed.is_empty() || trimmed.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(ProxyError::MalformedApiKey);
    }
    if trimmed.len() == bytes.len() {
        return Ok(raw.clone());
    }
    HeaderValue::from_bytes(trimmed).map_err(|_| ProxyError::MalformedApiKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_trimmed_and_control_characters_refused() {
        let v = |s: &[u8]| HeaderValue::from_bytes(s).unwrap();
        assert_eq!(normalise_key(&v(b"abc")).unwrap(), "abc");
        for padded in [&b"abc "[..], b" abc", b"\tabc\t", b"  abc \t "] {
            assert_eq!(normalise_key(&v(padded)).unwrap(), "abc", "{padded:?}");
        }
        // HeaderValue already refuses other control bytes; an inner tab is what remains.
        for bad in [&b""[..], b"   ", b"a\tc", b" a\tc "] {
            assert!(normalise_key(&v(bad)).is_err(), "{bad:?}");
        }
    }
}

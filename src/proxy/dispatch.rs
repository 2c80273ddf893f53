//! Who is calling, and which way their request goes.
//!
//! One `X-COUPA-API-KEY` → the integration owning its fingerprint, whose plan picks the
//! route ([`crate::cutover::route`]); a key nobody owns → `unknown_keys`; no key but a
//! bearer → `bearer_requests`; nothing → 401.

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request};

use super::handle::Proxy;
use super::handled::{Handled, Who};
use super::headers::{Credential, X_COUPA_API_KEY};
use super::send::Upstream;
use crate::audit::Outcome;
use crate::body::{CallerBody, Inbound};
use crate::config::{BearerRequests, UnknownKeys};
use crate::cutover::{self, Route};
use crate::error::ProxyError;
use crate::keys::Fingerprint;

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
            (Some(key), None) => key.clone(),
            (None, _) => return self.without_key(req, target).await,
        };
        let (fingerprint, caller) = self.routes.caller(key.as_bytes());
        let Some(caller) = caller.cloned() else {
            return self.unknown_key(req, target, fingerprint, &key).await;
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
                let result = self
                    .forward(req, target, instance, Credential::Key(&key))
                    .await;
                Handled::new(Who::Caller(caller), Outcome::ApiKey, result)
            }
            Route::KeyAndShadow { client } => {
                self.forward_key_and_shadow(req, target, caller, client, &key, endpoint)
                    .await
            }
            Route::Oauth { client } => self.forward_oauth(req, target, caller, client, None).await,
            Route::OauthWithFallback { client } => {
                self.forward_oauth(req, target, caller, client, Some(&key))
                    .await
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
        let config = &self.routes.config;
        match (config.bearer_requests, &config.default_instance) {
            (BearerRequests::Forward, Some(instance)) => {
                let result = self
                    .forward(req, target, instance, Credential::Caller)
                    .await;
                Handled::new(Who::Native, Outcome::Native, result)
            }
            (BearerRequests::Reject, _) | (BearerRequests::Forward, None) => {
                Handled::rejected(Who::Native, ProxyError::BearerRejected)
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
        let config = &self.routes.config;
        match (config.unknown_keys, &config.default_instance) {
            (UnknownKeys::Observe, Some(instance)) => {
                let result = self
                    .forward(req, target, instance, Credential::Key(key))
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

//! Forwarding: build the request for Coupa, send it, carry out the retry decision, pass
//! the response back. One function per kind of route.

use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response};
use http_body::Body as _;

use super::error::ProxyError;
use super::handled::{Handled, Who};
use super::headers::Credential;
use super::outbound::{Outbound, pass_back};
use super::pace::Pacing;
use super::retry::{OauthRoute, Step, next_step, token_refused};
use super::send::send;
use super::shadow::Replay;
use super::state::Caller;
use super::view::Proxy;
use crate::audit::Outcome;
use crate::body::{BodyIdle, CallerBody, Inbound, RequestBody, ResponseBody};
use crate::config::{Client, Instance};
use crate::shaping::Flow;
use crate::token::Token;
use crate::upstream::Upstream;

impl<B: Inbound, U: Upstream<B>> Proxy<U, B> {
    /// Streams the request to `instance` with `credential` in its turn; only a bodiless
    /// one is sent again (after a 429 from Coupa).
    pub(super) async fn forward(
        &self,
        req: Request<CallerBody<B>>,
        target: PathAndQuery,
        instance: &Instance,
        credential: Credential<'_>,
        flow: Flow<'_>,
    ) -> Result<Response<ResponseBody<U::Body>>, ProxyError> {
        let (parts, body) = req.into_parts();
        let out = Outbound::from_parts(parts, target, instance, &self.peer);
        let Some(pacing) = Pacing::new(self.state.shaping.get(instance), flow) else {
            let request = out.into_request(credential, RequestBody::streaming(body).send_body());
            let response = send(&*self.upstream, &self.state, request, instance).await?;
            return Ok(pass_back(response));
        };
        let mut body = RequestBody::unbuffered(body);
        let response = self
            .send_paced(&pacing, &out, &mut body, credential, instance)
            .await?;
        Ok(pass_back(response))
    }

    /// One send of `out`: in its turn when the instance has a budget.
    async fn send_out(
        &self,
        pacing: Option<&Pacing<'_>>,
        out: &Outbound,
        body: &mut RequestBody<B>,
        credential: Credential<'_>,
        instance: &Instance,
    ) -> Result<http::Response<U::Body>, ProxyError> {
        match pacing {
            Some(pacing) => {
                self.send_paced(pacing, out, body, credential, instance)
                    .await
            }
            None => {
                let request = out.build(credential, body.send_body());
                send(&*self.upstream, &self.state, request, instance).await
            }
        }
    }

    /// `shadow`: serve with the key, then replay a copy with OAuth in the background.
    pub(super) async fn forward_key_and_shadow(
        &self,
        req: Request<CallerBody<B>>,
        target: PathAndQuery,
        caller: Arc<Caller>,
        client: &Arc<Client>,
        key: &HeaderValue,
        endpoint: &str,
    ) -> Handled<U::Body> {
        let copy = self
            .state
            .shadow_limiter
            .try_acquire()
            .then(|| (req.method().clone(), target.clone(), req.headers().clone()));
        let flow = Flow {
            name: &caller.integration.name,
            weight: caller.integration.share,
        };
        let result = self
            .forward(req, target, &client.instance, Credential::Key(key), flow)
            .await;
        if let (Some((method, target, headers)), Ok(response)) = (copy, &result) {
            let replay = Replay {
                state: Arc::clone(&self.state),
                upstream: Arc::clone(&self.upstream),
                caller: Arc::clone(&caller),
                client: Arc::clone(client),
                request: Outbound::new(method, target, headers, &client.instance, &self.peer),
                endpoint: endpoint.to_owned(),
                key_status: response.status().as_u16(),
            };
            tokio::spawn(replay.run::<B>());
        }
        Handled::new(Who::Caller(caller), Outcome::ApiKey, result)
    }

    /// `oauth`, and canary's OAuth share (`fallback_key` set). What happens after Coupa's
    /// answer is [`next_step`]'s decision; this only carries it out.
    pub(super) async fn forward_oauth(
        &self,
        req: Request<CallerBody<B>>,
        target: PathAndQuery,
        caller: Arc<Caller>,
        client: &Arc<Client>,
        fallback_key: Option<&HeaderValue>,
    ) -> Handled<U::Body> {
        let who = || Who::Caller(Arc::clone(&caller));
        let instance = &client.instance;
        let flow = Flow {
            name: &caller.integration.name,
            weight: caller.integration.share,
        };
        let tokens = &self.state.tokens;
        let token = match tokens.get(&client.name).await {
            Ok(token) => token,
            Err(source) => {
                if let Some(key) = fallback_key {
                    // A canary must not break its caller over our token trouble.
                    tracing::warn!(integration = %caller.integration.name, client = %client.name, error = %source, "no token; canary request sent with the key");
                    let result =
                        Box::pin(self.forward(req, target, instance, Credential::Key(key), flow))
                            .await;
                    return Handled::new(who(), Outcome::ApiKey, result);
                }
                return Handled::rejected(who(), ProxyError::token(&client.name, source));
            }
        };
        let (route, limit) = match fallback_key {
            // canary buffers small bodies so a 401/403 can fall back to the key; oauth
            // streams every body (no per-request buffering) and retries only bodiless ones.
            Some(_) => (
                OauthRoute::Canary,
                self.state.config.cutover.replay_body_limit,
            ),
            None => (OauthRoute::Oauth, 0),
        };
        let (parts, body) = req.into_parts();
        let out = Outbound::from_parts(parts, target, instance, &self.peer);
        // A body buffered for a replay holds its share of the budget until this request
        // is done; with the budget used up, it streams (no key fallback for it).
        let (limit, _budget) = match body.size_hint().exact() {
            Some(n) if n > 0 && n <= limit => {
                let kib = u32::try_from(n.div_ceil(1024)).unwrap_or(u32::MAX);
                match Arc::clone(&self.state.replay_budget).try_acquire_many_owned(kib) {
                    Ok(permit) => (limit, Some(permit)),
                    Err(_) => {
                        tracing::debug!(integration = %caller.integration.name, "replay buffer budget used up; streaming this canary body");
                        (0, None)
                    }
                }
            }
            _ => (limit, None),
        };
        // Buffering (canary only) is boxed: out of every oauth request's future.
        let body = if limit == 0 {
            Ok(RequestBody::unbuffered(body))
        } else {
            Box::pin(RequestBody::replayable(body, limit)).await
        };
        let mut body = match body {
            Ok(body) => body,
            // A body that stalled while being buffered is a 408, as when streamed.
            Err(e) if e.is::<BodyIdle>() => {
                return Handled::rejected(who(), ProxyError::ClientBodyTimeout);
            }
            Err(e) => return Handled::rejected(who(), ProxyError::ClientBody(e)),
        };
        let pacing = Pacing::new(self.state.shaping.get(instance), flow);
        let first = Credential::Bearer(token.authorization());
        let response = match self
            .send_out(pacing.as_ref(), &out, &mut body, first, instance)
            .await
        {
            Ok(response) => response,
            Err(e) => return Handled::new(who(), Outcome::Oauth, Err(e)),
        };
        let status = response.status();
        if token_refused(status) {
            Box::pin(tokens.refused(&client.name, token.serial)).await; // rare: out of line
        }
        let resend = match next_step(route, status, body.can_replay(), 0) {
            Step::PassBack => None,
            Step::FallBackToKey => fallback_key.map(Resend::WithKey),
            // The refused token may still serve other requests while its replacement
            // settles; this one waits (bounded) for the replacement itself.
            Step::RetryWithFreshToken => Box::pin(tokens.replacement(&client.name, token.serial))
                .await
                .map(Resend::WithToken),
        };
        let Some(resend) = resend else {
            return Handled::new(who(), Outcome::Oauth, Ok(pass_back(response)));
        };
        drop(response);
        let name = &caller.integration.name;
        let (credential, outcome, fallback_status) = match &resend {
            Resend::WithKey(key) => {
                tracing::info!(integration = %name, status = status.as_u16(), "OAuth refused; retrying once with the API key (canary fallback)");
                (
                    Credential::Key(key),
                    Outcome::Fallback,
                    Some(status.as_u16()),
                )
            }
            Resend::WithToken(fresh) => {
                tracing::info!(integration = %name, client = %client.name, "Coupa refused the token; retrying once with a fresh one");
                (
                    Credential::Bearer(fresh.authorization()),
                    Outcome::Oauth,
                    None,
                )
            }
        };
        // The second send is rare: boxed, out of every request's future.
        let result =
            Box::pin(self.send_out(pacing.as_ref(), &out, &mut body, credential, instance))
                .await
                .map(pass_back);
        Handled {
            result,
            who: who(),
            outcome,
            fallback_status,
        }
    }
}

/// How a refused OAuth request is sent again.
enum Resend<'a> {
    WithKey(&'a HeaderValue),
    WithToken(Arc<Token>),
}

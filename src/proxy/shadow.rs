//! Shadow replays: prove an OAuth client suffices before any caller depends on it.
//!
//! After a `shadow` integration's GET/HEAD was answered with its key, a copy is sent
//! with the integration's OAuth token; the response is read and discarded, and the two
//! statuses are recorded (a difference is a finding, typically a missing scope). Only
//! safe methods are replayed, never writes.

use std::sync::Arc;

use http_body_util::{BodyExt, Either, Full, Limited};

use super::headers::Credential;
use super::outbound::Outbound;
use super::retry::token_refused;
use super::send::send;
use super::state::{Caller, State};
use crate::body::{Inbound, UpstreamBody};
use crate::config::Client;
use crate::upstream::Upstream;

/// Bytes of a replayed response read before it is dropped.
const DRAIN_LIMIT: usize = 1024 * 1024;

pub(super) struct Replay<U> {
    pub state: Arc<State>,
    pub upstream: Arc<U>,
    pub caller: Arc<Caller>,
    pub client: Arc<Client>,
    /// The original request, sanitized, without credential or body (GET/HEAD).
    pub request: Outbound,
    pub endpoint: String,
    pub key_status: u16,
}

impl<U> Replay<U> {
    pub(super) async fn run<B: Inbound>(self)
    where
        U: Upstream<B>,
    {
        let integration = &self.caller.integration;
        let client = &self.client;
        let token = match self.state.tokens.get(&client.name).await {
            Ok(token) => token,
            Err(e) => {
                tracing::warn!(integration = %integration.name, client = %client.name, error = %e, "shadow replay skipped: no token");
                return;
            }
        };
        // A replay is an extra request: it takes a free slot of the instance's budget or
        // is skipped, never queued before a caller's request.
        let shaper = self.state.shaping.get(&client.instance);
        if let Some(shaper) = shaper
            && !shaper.try_now().await
        {
            tracing::debug!(integration = %integration.name, "shadow replay skipped: the instance's rate limit has no free slot");
            return;
        }
        let body: UpstreamBody<B> = Either::Right(Full::default());
        let request = self
            .request
            .into_request(Credential::Bearer(token.authorization()), body);
        let oauth_status = match send(&*self.upstream, &self.state, request, &client.instance).await
        {
            Ok(response) => {
                let status = response.status();
                // Read (bounded) so the pooled connection can be reused.
                let _ = Limited::new(response.into_body(), DRAIN_LIMIT)
                    .collect()
                    .await;
                if token_refused(status) {
                    self.state.tokens.refused(&client.name, token.serial).await;
                }
                if let Some(shaper) = shaper
                    && matches!(status.as_u16(), 429 | 503)
                {
                    shaper.coupa_refused(None).await;
                }
                status.as_u16()
            }
            Err(e) => {
                tracing::warn!(integration = %integration.name, error = %e, "shadow replay failed");
                return;
            }
        };
        self.state.recorder.record_shadow(
            &self.caller.audit,
            &self.endpoint,
            self.key_status,
            oauth_status,
        );
        if oauth_status != self.key_status {
            tracing::info!(
                integration = %integration.name,
                client = %client.name,
                endpoint = %self.endpoint,
                key_status = self.key_status,
                oauth_status,
                "shadow replay differs: the OAuth client may lack a scope"
            );
        }
    }
}

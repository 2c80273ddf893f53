//! Shadow replays: prove an OAuth client suffices before any caller depends on it.
//!
//! After a `shadow` integration's GET/HEAD was answered with its key, a copy is sent
//! with the integration's OAuth token; the response is read and discarded, and the two
//! statuses are recorded (a difference is a finding, typically a missing scope). Only
//! safe methods are replayed, never writes.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};

use super::headers::Credential;
use super::{Caller, Outbound, Shared, send};
use crate::upstream::UpstreamBody;

/// Bytes of a replayed response read before it is dropped.
const DRAIN_LIMIT: usize = 1024 * 1024;

pub struct Replay {
    pub shared: Arc<Shared>,
    pub caller: Arc<Caller>,
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub peer: SocketAddr,
    pub endpoint: String,
    pub key_status: u16,
}

impl Replay {
    pub async fn run(self) {
        let integration = &self.caller.integration;
        let Some(client) = integration.client.as_ref() else {
            return;
        };
        let token = match self.shared.tokens.get(&client.name).await {
            Ok(token) => token,
            Err(e) => {
                tracing::warn!(integration = %integration.name, client = %client.name, error = %e, "shadow replay skipped: no token");
                return;
            }
        };
        let out = match Outbound::new(
            self.method,
            &self.uri,
            self.headers,
            &client.instance,
            self.peer,
        ) {
            Ok(out) => out,
            Err(e) => {
                tracing::debug!(error = %e, "shadow replay skipped");
                return;
            }
        };
        let body: UpstreamBody = http_body_util::Either::Right(http_body_util::Full::default());
        let request = out.into_request(Credential::Bearer(token.authorization()), body);
        let oauth_status = match send(&self.shared, request, &client.instance).await {
            Ok(response) => {
                let status = response.status();
                // Read (bounded) so the pooled connection can be reused.
                let _ = Limited::new(response.into_body(), DRAIN_LIMIT)
                    .collect()
                    .await;
                if status == StatusCode::UNAUTHORIZED {
                    self.shared
                        .tokens
                        .invalidate(&client.name, token.serial)
                        .await;
                }
                status.as_u16()
            }
            Err(e) => {
                tracing::warn!(integration = %integration.name, error = %e, "shadow replay failed");
                return;
            }
        };
        self.shared.recorder.record_shadow(
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

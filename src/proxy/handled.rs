//! What dispatch did with a request: who called, the outcome, and the response or the
//! error — everything the recording tail needs.

use std::sync::Arc;

use http::Response;

use super::error::ProxyError;
use super::state::Caller;
use crate::audit::Outcome;
use crate::body::ResponseBody;
use crate::keys::Fingerprint;

/// Who sent a request, as far as the proxy could tell.
pub(super) enum Who {
    Caller(Arc<Caller>),
    Unknown(Fingerprint),
    Native,
    Anonymous,
}

impl Who {
    /// How logs name the caller (never the key: unknown keys by fingerprint prefix).
    pub(super) fn name(&self) -> String {
        match self {
            Who::Caller(c) => c.integration.name.to_string(),
            Who::Unknown(fp) => format!("unknown:{}", fp.short()),
            Who::Native => "(bearer caller)".to_owned(),
            Who::Anonymous => "-".to_owned(),
        }
    }
}

/// What dispatch did with a request.
pub(super) struct Handled<B> {
    pub result: Result<Response<ResponseBody<B>>, ProxyError>,
    pub who: Who,
    pub outcome: Outcome,
    /// OAuth's status when the request fell back to the key.
    pub fallback_status: Option<u16>,
}

impl<B> Handled<B> {
    pub(super) fn new(
        who: Who,
        outcome: Outcome,
        result: Result<Response<ResponseBody<B>>, ProxyError>,
    ) -> Self {
        // However far it got, a request that found no turn at Coupa was throttled.
        let outcome = match &result {
            Err(ProxyError::Throttled { .. }) => Outcome::Throttled,
            _ => outcome,
        };
        Handled {
            result,
            who,
            outcome,
            fallback_status: None,
        }
    }

    pub(super) fn rejected(who: Who, err: ProxyError) -> Self {
        Self::new(who, Outcome::Rejected, Err(err))
    }
}

//! The responses keybridge writes itself, shared by the proxy, the admin listener and
//! the tower stack: the JSON error body, `Retry-After`, and the 401 challenge.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

/// The challenge of keybridge's own 401s: a legacy client is expected to send its API
/// key in the `X-COUPA-API-KEY` header. `Coupa-API-Key` is not a registered scheme (none
/// exists for API-key headers); its `header` parameter names what to send, and clients
/// that do not know the scheme treat the 401 as a plain refusal, as before.
pub fn api_key_challenge() -> HeaderValue {
    HeaderValue::from_static(r#"Coupa-API-Key realm="keybridge", header="X-COUPA-API-KEY""#)
}

/// `Retry-After` in whole seconds (at least 1).
pub fn retry_after_value(d: Duration) -> HeaderValue {
    HeaderValue::from(d.as_secs().max(1))
}

/// `{"error": code, "message": message}` with the given status.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

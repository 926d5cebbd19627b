//! Anthropic Messages as a client API: the error shape (`{"type":"error","error":{"type",
//! "message"},"request_id"}` with Anthropic's error type per status), stream error and ping
//! events, and the model list shape the anthropic SDK expects.

use serde::Serialize;

use crate::error::{ApiError, ErrorKind};

/// Anthropic's error `type` for a gateway error.
pub fn error_type(err: &ApiError) -> &'static str {
    match err.kind {
        ErrorKind::Unauthorized => "authentication_error",
        ErrorKind::Forbidden => "permission_error",
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::PayloadTooLarge => "request_too_large",
        ErrorKind::QueueFull => "rate_limit_error",
        ErrorKind::Unavailable | ErrorKind::ShuttingDown | ErrorKind::Overloaded => {
            "overloaded_error"
        }
        ErrorKind::RequestTimeout | ErrorKind::QueueTimeout => "timeout_error",
        ErrorKind::Internal
        | ErrorKind::UpstreamTransport
        | ErrorKind::UpstreamInvalid
        | ErrorKind::ClientCancelled => "api_error",
        ErrorKind::BadRequest
        | ErrorKind::MethodNotAllowed
        | ErrorKind::ClientTimeout
        | ErrorKind::HeadersTooLarge => "invalid_request_error",
    }
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: Inner<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

#[derive(Serialize)]
struct Inner<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

/// The error body for `err`, with the request id when known.
pub fn error_body(err: &ApiError, request_id: Option<&str>) -> Vec<u8> {
    let body = Body {
        kind: "error",
        error: Inner {
            kind: error_type(err),
            message: &err.message,
        },
        request_id,
    };
    // Serializing strings into a Vec cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The `error` event that ends a stream that had begun.
pub fn error_event(err: &ApiError) -> Vec<u8> {
    let body = error_body(err, None);
    let mut out = Vec::with_capacity(body.len() + 24);
    out.extend_from_slice(b"event: error\ndata: ");
    out.extend_from_slice(&body);
    out.extend_from_slice(b"\n\n");
    out
}

/// The keep-alive event Anthropic streams carry while the model is silent.
pub const PING_EVENT: &[u8] = b"event: ping\ndata: {\"type\": \"ping\"}\n\n";

#[derive(Serialize)]
pub struct ModelInfo<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: &'a str,
    pub display_name: &'a str,
    /// RFC 3339.
    pub created_at: &'a str,
}

#[derive(Serialize)]
pub struct ModelPage<'a> {
    pub data: Vec<ModelInfo<'a>>,
    pub has_more: bool,
    pub first_id: Option<&'a str>,
    pub last_id: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shapes() {
        let e = ApiError::new(ErrorKind::NotFound, "model_not_found", "no such model");
        let v: serde_json::Value = serde_json::from_slice(&error_body(&e, Some("req_1"))).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "not_found_error");
        assert_eq!(v["error"]["message"], "no such model");
        assert_eq!(v["request_id"], "req_1");
        let event = String::from_utf8(error_event(&ApiError::internal())).unwrap();
        assert!(
            event.starts_with("event: error\ndata: {\"type\":\"error\""),
            "{event}"
        );
        assert!(event.ends_with("\n\n"));
        let full = ApiError::new(ErrorKind::QueueFull, "queue_full", "busy");
        assert_eq!(error_type(&full), "rate_limit_error");
    }
}

//! The APIs the gateway speaks to clients: what routing needs from a request ([`head`]), and how
//! the gateway's own errors, stream errors and keep-alives are written in each client API's
//! shape (the bodies themselves come from the format codecs in `crate::formats`).

pub mod anthropic;
pub mod head;
pub mod openai;

pub use head::{JsonDepthError, RouteHead};

use crate::error::ApiError;
use crate::formats::{self, Format};
use crate::http::Response;
use crate::job::ClientApi;

/// The error response for a client of `api`: OpenAI's `{"error":{...}}` with the gateway's
/// stable `code`, or Anthropic's `{"type":"error","error":{...}}` with the type for the status.
pub fn error_response(api: ClientApi, err: &ApiError) -> Response {
    let body = match api.format() {
        // No client speaks Bedrock (`ClientApi::format` never names it).
        Format::OpenAiChat | Format::OpenAiResponses | Format::Bedrock => err.body(),
        Format::Anthropic => formats::anthropic::error_body(err.status(), None, &err.message, None),
        Format::Gemini => formats::gemini::error_body(err.status(), None, &err.message, None),
    };
    let mut r = Response::json(err.status(), body);
    if let Some(s) = err.retry_after_s {
        r.headers.push(("retry-after", s.to_string()));
    }
    r
}

/// The event that ends a begun stream of a client of `api` with `err`.
pub fn error_event(api: ClientApi, err: &ApiError) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + err.message.len());
    match api.format() {
        Format::OpenAiChat | Format::Bedrock => formats::openai_chat::error_event(
            err.status(),
            Some(err.kind.error_type()),
            &err.message,
            Some(err.code),
            &mut out,
        ),
        Format::Anthropic => {
            formats::anthropic::error_event(err.status(), None, &err.message, &mut out)
        }
        Format::Gemini => formats::gemini::error_event(err.status(), &err.message, None, &mut out),
        Format::OpenAiResponses => {
            responses_error_event(&formats::responses::StreamWatch::default(), err, &mut out)
        }
    }
    out
}

/// The events that end a begun Responses stream with `err` (`error`, then `response.failed`),
/// numbered after the events `watch` saw go by and naming the response it saw created.
pub fn responses_error_event(
    watch: &formats::responses::StreamWatch,
    err: &ApiError,
    out: &mut Vec<u8>,
) {
    watch.failure(
        err.status(),
        err.kind.error_type(),
        &err.message,
        Some(err.code),
        out,
    );
}

/// A keep-alive event for a stream of a client of `api` while the upstream is silent:
/// Anthropic's `ping`, an SSE comment for OpenAI clients.
pub fn keepalive_event(api: ClientApi) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    match api.format() {
        Format::OpenAiChat | Format::OpenAiResponses | Format::Bedrock => {
            formats::openai_chat::StreamEncoder::keepalive(&mut out)
        }
        Format::Anthropic => formats::anthropic::StreamEncoder::ping(&mut out),
        Format::Gemini => formats::openai_chat::StreamEncoder::keepalive(&mut out),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn errors_in_each_shape() {
        let e = ApiError::new(ErrorKind::NotFound, "model_not_found", "no such model");
        let r = error_response(ClientApi::AnthropicMessages, &e);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!((v["type"].as_str(), r.status), (Some("error"), 404));
        assert_eq!(v["error"]["type"], "not_found_error");
        assert_eq!(v["error"]["message"], "no such model");
        let r = error_response(ClientApi::OpenAiChat, &e);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        let full = ApiError::new(ErrorKind::QueueFull, "queue_full", "busy").with_retry_after(1);
        let r = error_response(ClientApi::AnthropicMessages, &full);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert!(r.headers.contains(&("retry-after", "1".to_string())));
        let event = String::from_utf8(error_event(ClientApi::AnthropicMessages, &e)).unwrap();
        assert!(
            event.starts_with("event: error\ndata: {\"type\":\"error\""),
            "{event}"
        );
        let event = String::from_utf8(error_event(ClientApi::OpenAiChat, &e)).unwrap();
        assert!(event.starts_with("data: {\"error\":{"), "{event}");
        let event = String::from_utf8(error_event(ClientApi::OpenAiResponses, &e)).unwrap();
        assert!(
            event.starts_with("event: error\ndata: {\"type\":\"error\""),
            "{event}"
        );
        assert!(event.contains("event: response.failed\n"), "{event}");
        let r = error_response(ClientApi::OpenAiResponses, &e);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        for api in [
            ClientApi::OpenAiChat,
            ClientApi::AnthropicMessages,
            ClientApi::OpenAiResponses,
        ] {
            assert!(keepalive_event(api).ends_with(b"\n\n"));
        }
    }
}

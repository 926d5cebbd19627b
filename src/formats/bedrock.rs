//! AWS Bedrock Converse as a wire format: a provider format only (no client speaks it). Requests
//! for `POST /model/{modelId}/converse` and `/converse-stream` from the neutral model, their
//! answers and ConverseStream events back into it, Bedrock's errors, and the InvokeModel bodies
//! of its embedding models ([`embeddings`]). Here lives the vocabulary they share: stop reasons,
//! error types and their statuses, usage, image formats.

pub mod embeddings;
mod request;
mod response;
mod stream;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::chat::{FinishReason, Usage};
use super::json::write_value;
use super::{truncate_message, UpstreamError, UPSTREAM_ERROR_MESSAGE_BYTES_MAX};

pub use request::encode_request;
pub use response::{decode_response, encode_response};
pub use stream::StreamDecoder;

/// The neutral reason for a Converse `stopReason`; `stop_sequence` is the matched sequence when
/// the model reports it (Anthropic models do, in `additionalModelResponseFields.stop_sequence`).
pub fn stop_reason_from(s: &str, stop_sequence: Option<&str>) -> FinishReason {
    match s {
        "end_turn" => FinishReason::Stop,
        "tool_use" => FinishReason::ToolCalls,
        "max_tokens" => FinishReason::Length,
        "stop_sequence" => FinishReason::StopSequence(stop_sequence.map(str::to_owned)),
        "guardrail_intervened" | "content_filtered" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_owned()),
    }
}

/// Converse's `stopReason` for a neutral one.
pub fn stop_reason_str(r: &FinishReason) -> &str {
    match r {
        FinishReason::Stop => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::StopSequence(_) => "stop_sequence",
        FinishReason::ContentFilter | FinishReason::Refusal => "content_filtered",
        FinishReason::Other(s) => match s.as_str() {
            "guardrail_intervened"
            | "model_context_window_exceeded"
            | "malformed_model_output"
            | "malformed_tool_use" => s,
            _ => "end_turn",
        },
    }
}

/// Bedrock runtime's error types and the statuses it answers them with (its API model). Stream
/// exceptions carry the same names in lower camel case (`throttlingException`).
/// `ModelStreamErrorException` (the model failed mid-stream; 424 in the API model) is reported as
/// 502: the client sees a failure of the upstream, not of its own request.
const ERROR_TYPES: &[(&str, u16)] = &[
    ("ValidationException", 400),
    ("ServiceQuotaExceededException", 400),
    ("AccessDeniedException", 403),
    ("UnrecognizedClientException", 403),
    ("InvalidSignatureException", 403),
    ("IncompleteSignatureException", 403),
    ("MissingAuthenticationTokenException", 403),
    ("ExpiredTokenException", 403),
    ("ResourceNotFoundException", 404),
    ("ModelTimeoutException", 408),
    ("ConflictException", 409),
    ("ModelErrorException", 424),
    ("ModelNotReadyException", 429),
    ("ThrottlingException", 429),
    ("InternalServerException", 500),
    ("InternalFailure", 500),
    ("ModelStreamErrorException", 502),
    ("ServiceUnavailableException", 503),
];

/// The status of a Bedrock error type (either case of its first letter); 500 for a type it does
/// not define.
pub fn status_for_error_type(error_type: &str) -> u16 {
    ERROR_TYPES
        .iter()
        .find(|(t, _)| t.eq_ignore_ascii_case(error_type))
        .map_or(500, |(_, s)| *s)
}

/// Bedrock's error type for a status: 400 `ValidationException` (and any other 4xx), 403
/// `AccessDeniedException`, 404 `ResourceNotFoundException`, 408 `ModelTimeoutException`, 424
/// `ModelErrorException`, 429 `ThrottlingException`, 503 `ServiceUnavailableException`, 500
/// `InternalServerException` (and any other 5xx).
pub fn error_type_for_status(status: u16) -> &'static str {
    match status {
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        424 => "ModelErrorException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        400..=499 => "ValidationException",
        _ => "InternalServerException",
    }
}

/// Read a Bedrock error body (`{"message": ...}`; the type travels in the `x-amzn-errortype`
/// header, which the caller passes on when it has it; some front ends put it in `__type`).
pub fn decode_error(status: u16, body: &[u8]) -> UpstreamError {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow, default)]
        message: Option<Cow<'a, str>>,
        #[serde(rename = "Message", borrow, default)]
        message_upper: Option<Cow<'a, str>>,
        #[serde(rename = "__type", borrow, default)]
        ty: Option<Cow<'a, str>>,
    }
    let parsed: Option<Body> = serde_json::from_slice(body).ok();
    let (ty, message) = match parsed {
        Some(b) => (b.ty, b.message.or(b.message_upper)),
        None => (None, None),
    };
    UpstreamError {
        status,
        error_type: ty
            .map(|t| error_type_name(&t).to_owned())
            .unwrap_or_else(|| error_type_for_status(status).to_owned()),
        message: match message {
            Some(m) if !m.is_empty() => {
                truncate_message(&m, UPSTREAM_ERROR_MESSAGE_BYTES_MAX).to_owned()
            }
            _ => format!("the provider answered HTTP {status}"),
        },
        code: None,
    }
}

/// The name in an AWS error type, without the namespace some senders add
/// (`ThrottlingException:http://internal.amazon.com/...`, `com.amazon.coral#ThrottlingException`).
pub fn error_type_name(raw: &str) -> &str {
    let name = raw.split(':').next().unwrap_or(raw);
    name.rsplit('#').next().unwrap_or(name).trim()
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
}

/// Bedrock's error body, `{"message": ...}` (the type is a header, not part of the body).
pub fn error_body(
    _status: u16,
    _error_type: Option<&str>,
    message: &str,
    _code: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + message.len());
    write_value(&mut out, &ErrorBody { message });
    out
}

/// Token counts as Converse reports them (`usage` of an answer, of a `metadata` event).
/// `inputTokens` leaves out the tokens read from and written to the prompt cache.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_write_input_tokens: Option<u64>,
}

impl WireUsage {
    /// The neutral input count includes the cache reads and writes.
    fn to_neutral(self) -> Usage {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let write = self.cache_write_input_tokens.unwrap_or(0);
        Usage {
            input_tokens: self.input_tokens.unwrap_or(0) + read + write,
            output_tokens: self.output_tokens.unwrap_or(0),
            cache_read_tokens: read,
            cache_write_tokens: write,
            reasoning_tokens: 0,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutUsage {
    input_tokens: u64,
    output_tokens: u64,
    total_tokens: u64,
    /// Left out when no cache was used, as Bedrock does.
    #[serde(skip_serializing_if = "is_zero")]
    cache_read_input_tokens: u64,
    #[serde(skip_serializing_if = "is_zero")]
    cache_write_input_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl OutUsage {
    fn from_neutral(u: &Usage) -> Self {
        OutUsage {
            input_tokens: u.uncached_input_tokens(),
            output_tokens: u.output_tokens,
            total_tokens: u.input_tokens + u.output_tokens,
            cache_read_input_tokens: u.cache_read_tokens,
            cache_write_input_tokens: u.cache_write_tokens,
        }
    }
}

/// Converse's image `format` for a media type (`image/png` -> `png`); `None` for a type Converse
/// does not take.
pub fn image_format(media_type: &str) -> Option<&'static str> {
    match media_type.trim().to_ascii_lowercase().as_str() {
        "image/png" => Some("png"),
        "image/jpeg" | "image/jpg" => Some("jpeg"),
        "image/gif" => Some("gif"),
        "image/webp" => Some("webp"),
        _ => None,
    }
}

/// The media type of a Converse image `format`.
pub fn image_media_type(format: &str) -> String {
    match format {
        "jpeg" | "jpg" => "image/jpeg".to_owned(),
        other => format!("image/{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons_both_ways() {
        for s in [
            "end_turn",
            "tool_use",
            "max_tokens",
            "stop_sequence",
            "content_filtered",
            "model_context_window_exceeded",
            "malformed_tool_use",
        ] {
            assert_eq!(stop_reason_str(&stop_reason_from(s, None)), s);
        }
        assert_eq!(
            stop_reason_from("guardrail_intervened", None),
            FinishReason::ContentFilter
        );
        assert_eq!(
            stop_reason_from("stop_sequence", Some("###")),
            FinishReason::StopSequence(Some("###".into()))
        );
        assert_eq!(stop_reason_str(&FinishReason::Refusal), "content_filtered");
        assert_eq!(
            stop_reason_str(&FinishReason::Other("pause_turn".into())),
            "end_turn"
        );
    }

    #[test]
    fn error_types_and_statuses() {
        for (t, status) in [
            ("ThrottlingException", 429),
            ("throttlingException", 429),
            ("serviceUnavailableException", 503),
            ("internalServerException", 500),
            ("validationException", 400),
            ("modelStreamErrorException", 502),
            ("AccessDeniedException", 403),
            ("UnrecognizedClientException", 403),
            ("InvalidSignatureException", 403),
            ("SomethingNewException", 500),
        ] {
            assert_eq!(status_for_error_type(t), status, "{t}");
        }
        for (status, t) in [
            (400, "ValidationException"),
            (403, "AccessDeniedException"),
            (404, "ResourceNotFoundException"),
            (408, "ModelTimeoutException"),
            (422, "ValidationException"),
            (424, "ModelErrorException"),
            (429, "ThrottlingException"),
            (500, "InternalServerException"),
            (502, "InternalServerException"),
            (503, "ServiceUnavailableException"),
        ] {
            assert_eq!(error_type_for_status(status), t, "{status}");
        }
        assert_eq!(
            error_type_name(
                "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"
            ),
            "ThrottlingException"
        );
        assert_eq!(
            error_type_name("com.amazon.coral.service#UnrecognizedClientException"),
            "UnrecognizedClientException"
        );
    }

    #[test]
    fn upstream_errors_are_read() {
        let e = decode_error(
            429,
            br#"{"message":"Too many requests, please wait before trying again."}"#,
        );
        assert_eq!(
            (e.status, e.error_type.as_str(), e.message.as_str()),
            (
                429,
                "ThrottlingException",
                "Too many requests, please wait before trying again."
            )
        );
        let e = decode_error(
            403,
            br#"{"Message":"User is not authorized","__type":"com.amazon.coral.service#AccessDeniedException"}"#,
        );
        assert_eq!(
            (e.error_type.as_str(), e.message.as_str()),
            ("AccessDeniedException", "User is not authorized")
        );
        let e = decode_error(503, b"<html>");
        assert_eq!(
            (e.error_type.as_str(), e.message.as_str()),
            (
                "ServiceUnavailableException",
                "the provider answered HTTP 503"
            )
        );
        assert_eq!(error_body(400, None, "bad", None), br#"{"message":"bad"}"#);
    }

    #[test]
    fn usage_input_includes_the_cache() {
        let w: WireUsage = serde_json::from_str(
            r#"{"inputTokens":10,"outputTokens":5,"totalTokens":1115,"cacheReadInputTokens":1000,"cacheWriteInputTokens":100}"#,
        )
        .unwrap();
        let u = w.to_neutral();
        assert_eq!(
            (
                u.input_tokens,
                u.output_tokens,
                u.cache_read_tokens,
                u.cache_write_tokens
            ),
            (1110, 5, 1000, 100)
        );
        let back = OutUsage::from_neutral(&u);
        assert_eq!((back.input_tokens, back.total_tokens), (10, 1115));
    }

    #[test]
    fn image_formats() {
        assert_eq!(image_format("image/png"), Some("png"));
        assert_eq!(image_format("IMAGE/JPG"), Some("jpeg"));
        assert_eq!(image_format("image/webp"), Some("webp"));
        assert_eq!(image_format("application/pdf"), None);
        assert_eq!(image_media_type("jpeg"), "image/jpeg");
        assert_eq!(image_media_type("gif"), "image/gif");
    }
}

//! Anthropic Messages (`POST /v1/messages`, `POST /v1/messages/count_tokens`) as a wire format:
//! request, response and stream codecs to and from the neutral model, error bodies and events,
//! the token-count estimate, and the vocabulary they share (stop reasons, usage, error types).

mod request;
mod response;
mod stream;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::chat::{ChatRequest, FinishReason, ImageSource, Part, Usage};
use super::estimate_tokens;
use super::json::{sse_begin, sse_end, write_value};
use super::{truncate_message, UpstreamError, UPSTREAM_ERROR_MESSAGE_BYTES_MAX};

pub use request::{decode_request, encode_request};
pub use response::{decode_response, encode_response};
pub use stream::{StreamDecoder, StreamEncoder};

/// Tokens counted for one image by [`count_tokens`]: about what Anthropic charges for an image
/// of 1.15 megapixels, the size it scales larger images down to.
pub const IMAGE_TOKENS_ESTIMATE: u64 = 1600;

/// Anthropic's `stop_reason` for a neutral one.
pub fn stop_reason_str(r: &FinishReason) -> &str {
    match r {
        FinishReason::Stop => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::StopSequence(_) => "stop_sequence",
        FinishReason::ContentFilter | FinishReason::Refusal => "refusal",
        FinishReason::Other(s) => match s.as_str() {
            "pause_turn" | "model_context_window_exceeded" => s,
            "function_call" => "tool_use",
            _ => "end_turn",
        },
    }
}

/// The neutral reason for Anthropic's `stop_reason` (and `stop_sequence`).
pub fn stop_reason_from(s: &str, stop_sequence: Option<&str>) -> FinishReason {
    match s {
        "end_turn" => FinishReason::Stop,
        "max_tokens" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "stop_sequence" => FinishReason::StopSequence(stop_sequence.map(str::to_owned)),
        "refusal" => FinishReason::Refusal,
        other => FinishReason::Other(other.to_owned()),
    }
}

/// Anthropic's error types (the API reference's list, plus `request_too_large`, which the
/// front of the API answers for 413).
const ERROR_TYPES: &[(&str, u16)] = &[
    ("invalid_request_error", 400),
    ("authentication_error", 401),
    ("billing_error", 402),
    ("permission_error", 403),
    ("not_found_error", 404),
    ("request_too_large", 413),
    ("rate_limit_error", 429),
    ("api_error", 500),
    ("timeout_error", 504),
    ("overloaded_error", 529),
];

/// Anthropic's `error.type` for a status: 400 `invalid_request_error` (and any other 4xx),
/// 401 `authentication_error`, 402 `billing_error`, 403 `permission_error`, 404
/// `not_found_error`, 413 `request_too_large`, 429 `rate_limit_error`, 500 `api_error` (and any
/// other 5xx), 503 and 529 `overloaded_error`, 504 `timeout_error`.
pub fn error_type_for_status(status: u16) -> &'static str {
    match status {
        503 => "overloaded_error",
        _ => match ERROR_TYPES.iter().find(|(_, s)| *s == status) {
            Some((ty, _)) => ty,
            None if status < 500 => "invalid_request_error",
            None => "api_error",
        },
    }
}

/// The status Anthropic answers with an error type (500 for types it does not define).
pub fn status_for_error_type(error_type: &str) -> u16 {
    ERROR_TYPES
        .iter()
        .find(|(t, _)| *t == error_type)
        .map_or(500, |(_, s)| *s)
}

/// `error_type` when Anthropic defines it, else the type for `status`.
fn client_error_type(status: u16, error_type: Option<&str>) -> &str {
    match error_type {
        Some(t) if ERROR_TYPES.iter().any(|(known, _)| *known == t) => t,
        _ => error_type_for_status(status),
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    message: &'a str,
}

fn write_error(out: &mut Vec<u8>, status: u16, error_type: Option<&str>, message: &str) {
    write_value(
        out,
        &ErrorBody {
            ty: "error",
            error: ErrorObject {
                ty: client_error_type(status, error_type),
                message,
            },
        },
    );
}

/// `{"type":"error","error":{"type":..,"message":..}}`. `error_type` is used when it is one of
/// Anthropic's types; otherwise (another format's vocabulary, or `None`) the type for `status`.
/// `code` has no place in this format and is ignored.
pub fn error_body(
    status: u16,
    error_type: Option<&str>,
    message: &str,
    _code: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + message.len());
    write_error(&mut out, status, error_type, message);
    out
}

/// The SSE `error` event that ends a stream after it started.
pub fn error_event(status: u16, error_type: Option<&str>, message: &str, out: &mut Vec<u8>) {
    sse_begin(out, Some("error"));
    write_error(out, status, error_type, message);
    sse_end(out);
}

/// Read an Anthropic error body (`{"type":"error","error":{"type","message"},"request_id"}`).
pub fn decode_error(status: u16, body: &[u8]) -> UpstreamError {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        error: Object<'a>,
    }
    #[derive(Deserialize)]
    struct Object<'a> {
        #[serde(rename = "type", borrow, default)]
        ty: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        message: Option<Cow<'a, str>>,
    }
    let parsed = serde_json::from_slice::<Body>(body).ok().map(|b| b.error);
    let (ty, message) = match parsed {
        Some(o) => (o.ty, o.message),
        None => (None, None),
    };
    UpstreamError {
        status,
        error_type: ty
            .map(Cow::into_owned)
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

/// Token counts as Anthropic reports them (`usage` of a message, `message_delta`).
#[derive(Deserialize, Default, Clone, Copy)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens_details: Option<OutputDetails>,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct OutputDetails {
    #[serde(default)]
    thinking_tokens: Option<u64>,
}

impl WireUsage {
    /// Anthropic's `input_tokens` excludes cache reads and writes: the neutral input is the sum.
    fn to_neutral(self) -> Usage {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let write = self.cache_creation_input_tokens.unwrap_or(0);
        Usage {
            input_tokens: self.input_tokens.unwrap_or(0) + read + write,
            output_tokens: self.output_tokens.unwrap_or(0),
            cache_read_tokens: read,
            cache_write_tokens: write,
            reasoning_tokens: self
                .output_tokens_details
                .and_then(|d| d.thinking_tokens)
                .unwrap_or(0),
        }
    }

    /// Later counts (a `message_delta`'s cumulative usage) over earlier ones.
    fn merge(&mut self, later: WireUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
        self.output_tokens_details = later.output_tokens_details.or(self.output_tokens_details);
    }
}

#[derive(Serialize)]
struct OutUsage {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    output_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_tokens_details: Option<OutOutputDetails>,
}

#[derive(Serialize)]
struct OutOutputDetails {
    thinking_tokens: u64,
}

impl OutUsage {
    fn from_neutral(u: &Usage) -> Self {
        OutUsage {
            input_tokens: u.uncached_input_tokens(),
            cache_creation_input_tokens: u.cache_write_tokens,
            cache_read_input_tokens: u.cache_read_tokens,
            output_tokens: u.output_tokens,
            output_tokens_details: (u.reasoning_tokens > 0).then_some(OutOutputDetails {
                thinking_tokens: u.reasoning_tokens,
            }),
        }
    }
}

/// An estimate of the input tokens of a request, for `POST /v1/messages/count_tokens`: one token
/// per four characters of every text the model reads (system prompt, messages, tool results,
/// reasoning, tool calls' arguments, tools' names, descriptions and schemas, opaque blocks) and
/// [`IMAGE_TOKENS_ESTIMATE`] per image. Not the provider's tokenizer: counts can differ by tens
/// of percent.
pub fn count_tokens(req: &ChatRequest) -> u64 {
    let mut n: u64 = req.system.iter().map(|b| estimate_tokens(&b.text)).sum();
    for m in &req.messages {
        n += m.content.iter().map(part_tokens).sum::<u64>();
    }
    for t in &req.tools {
        n += estimate_tokens(&t.name);
        n += t.description.as_deref().map_or(0, estimate_tokens);
        n += t
            .input_schema
            .as_ref()
            .map_or(0, |s| estimate_tokens(s.get()));
    }
    n + req
        .native_tools
        .iter()
        .map(|t| estimate_tokens(t.get()))
        .sum::<u64>()
}

fn part_tokens(p: &Part) -> u64 {
    match p {
        Part::Text { text, .. } | Part::Reasoning { text, .. } => estimate_tokens(text),
        Part::Image { source, .. } => match source {
            ImageSource::Url(_) | ImageSource::Base64 { .. } => IMAGE_TOKENS_ESTIMATE,
        },
        Part::ToolCall {
            name,
            arguments_json,
            ..
        } => estimate_tokens(name) + estimate_tokens(arguments_json),
        Part::ToolResult { content, .. } => content.iter().map(part_tokens).sum(),
        Part::RedactedReasoning { .. } => 0,
        Part::Opaque { raw, .. } => estimate_tokens(raw.get()),
    }
}

/// The `count_tokens` answer: `{"input_tokens":N}`.
pub fn count_tokens_body(input_tokens: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(b"{\"input_tokens\":");
    super::json::write_u64(&mut out, input_tokens);
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons_both_ways() {
        for s in [
            "end_turn",
            "max_tokens",
            "tool_use",
            "pause_turn",
            "refusal",
            "model_context_window_exceeded",
        ] {
            assert_eq!(stop_reason_str(&stop_reason_from(s, None)), s);
        }
        assert_eq!(
            stop_reason_from("stop_sequence", Some("###")),
            FinishReason::StopSequence(Some("###".into()))
        );
        assert_eq!(stop_reason_str(&FinishReason::ContentFilter), "refusal");
        assert_eq!(
            stop_reason_str(&FinishReason::Other("function_call".into())),
            "tool_use"
        );
        assert_eq!(
            stop_reason_str(&FinishReason::Other("weird".into())),
            "end_turn"
        );
    }

    #[test]
    fn error_types_per_status() {
        for (status, ty) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (402, "billing_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (405, "invalid_request_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
            (504, "timeout_error"),
            (529, "overloaded_error"),
        ] {
            let v: serde_json::Value =
                serde_json::from_slice(&error_body(status, None, "m", None)).unwrap();
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], ty, "{status}");
            assert_eq!(v["error"]["message"], "m");
        }
        // Another format's type is replaced by this format's type for the status.
        let v: serde_json::Value =
            serde_json::from_slice(&error_body(503, Some("upstream_error"), "m", None)).unwrap();
        assert_eq!(v["error"]["type"], "overloaded_error");
        assert_eq!(status_for_error_type("overloaded_error"), 529);
        assert_eq!(status_for_error_type("something_new"), 500);
        let mut out = Vec::new();
        error_event(529, Some("overloaded_error"), "Overloaded", &mut out);
        assert_eq!(
            out,
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"
        );
    }

    #[test]
    fn upstream_errors_are_read() {
        let e = decode_error(
            529,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}"#,
        );
        assert_eq!(
            (e.status, e.error_type.as_str(), e.message.as_str()),
            (529, "overloaded_error", "Overloaded")
        );
        let e = decode_error(413, b"<html>too large</html>");
        assert_eq!(
            (e.error_type.as_str(), e.message.as_str()),
            ("request_too_large", "the provider answered HTTP 413")
        );
    }

    #[test]
    fn usage_input_includes_the_cache() {
        let w = WireUsage {
            input_tokens: Some(10),
            output_tokens: Some(5),
            cache_creation_input_tokens: Some(100),
            cache_read_input_tokens: Some(1000),
            output_tokens_details: None,
        };
        let u = w.to_neutral();
        assert_eq!(
            (
                u.input_tokens,
                u.cache_read_tokens,
                u.cache_write_tokens,
                u.uncached_input_tokens()
            ),
            (1110, 1000, 100, 10)
        );
        let back = OutUsage::from_neutral(&u);
        assert_eq!(
            (
                back.input_tokens,
                back.cache_read_input_tokens,
                back.cache_creation_input_tokens
            ),
            (10, 1000, 100)
        );
    }

    #[test]
    fn token_count_estimate() {
        let req = decode_request(
            br#"{"model":"m","system":"12345678","messages":[{"role":"user","content":[{"type":"text","text":"abcd"},{"type":"image","source":{"type":"url","url":"https://x/y.png"}}]}],"tools":[{"name":"abcd","input_schema":{"type":"object"}}]}"#,
        )
        .unwrap();
        // system 2 + text 1 + image 1600 + tool name 1 + schema 5 (17 chars).
        assert_eq!(count_tokens(&req), 2 + 1 + IMAGE_TOKENS_ESTIMATE + 1 + 5);
        assert_eq!(count_tokens_body(7), br#"{"input_tokens":7}"#);
    }
}

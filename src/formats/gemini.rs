//! Google Gemini (`generateContent`, `streamGenerateContent?alt=sse`, `batchEmbedContents`; the
//! same bodies on Google AI Studio and on Vertex AI, whose embeddings are `:predict`) as a wire
//! format: request, response and stream codecs to and from the neutral model, JSON Schema to
//! Gemini's OpenAPI-subset schema, error bodies (`{"error":{"code","message","status"}}`),
//! usage, finish reasons and safety blocks, and the embeddings bodies of both services.

mod embeddings;
mod request;
mod response;
mod schema;
mod stream;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::chat::{FinishReason, Usage};
use super::json::{sse_begin, sse_end, write_value};
use super::{truncate_message, UpstreamError, UPSTREAM_ERROR_MESSAGE_BYTES_MAX};

pub use embeddings::{
    decode_embeddings_response, encode_embeddings_request, EmbeddingsDialect, EmbeddingsInfo,
};
pub use request::{decode_request, encode_request};
pub use response::{decode_response, encode_response};
pub use schema::to_gemini_schema;
pub use stream::{StreamDecoder, StreamEncoder};

/// Gemini's `finishReason`s that mean a safety or policy filter stopped the answer; all become
/// the neutral [`FinishReason::ContentFilter`] (OpenAI `content_filter`, Anthropic `refusal`).
pub const FILTER_FINISH_REASONS: [&str; 8] = [
    "SAFETY",
    "RECITATION",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
    "IMAGE_RECITATION",
];

/// The neutral reason for Gemini's `finishReason`: `STOP` a natural stop, `MAX_TOKENS` the
/// limit, the [`FILTER_FINISH_REASONS`] a content filter, anything else (`MALFORMED_FUNCTION_CALL`,
/// `UNEXPECTED_TOOL_CALL`, `LANGUAGE`, `OTHER`, ...) kept by name in lower case. A stop with
/// function calls in the answer is a stop for tool calls (Gemini says `STOP` there too).
pub fn finish_reason_from(s: &str, has_calls: bool) -> FinishReason {
    match s {
        "STOP" | "FINISH_REASON_UNSPECIFIED" if has_calls => FinishReason::ToolCalls,
        "STOP" | "FINISH_REASON_UNSPECIFIED" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        r if FILTER_FINISH_REASONS.contains(&r) => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_ascii_lowercase()),
    }
}

/// Gemini's `finishReason` for a neutral one (tool calls stop with `STOP`).
pub fn finish_reason_str(r: &FinishReason) -> &'static str {
    match r {
        FinishReason::Stop | FinishReason::StopSequence(_) | FinishReason::ToolCalls => "STOP",
        FinishReason::Length => "MAX_TOKENS",
        FinishReason::ContentFilter | FinishReason::Refusal => "SAFETY",
        FinishReason::Other(s) => match s.as_str() {
            "malformed_function_call" => "MALFORMED_FUNCTION_CALL",
            "model_context_window_exceeded" => "MAX_TOKENS",
            _ => "OTHER",
        },
    }
}

/// Google's canonical status names by HTTP status (`google.rpc.Code`).
const STATUSES: &[(u16, &str)] = &[
    (400, "INVALID_ARGUMENT"),
    (401, "UNAUTHENTICATED"),
    (403, "PERMISSION_DENIED"),
    (404, "NOT_FOUND"),
    (409, "ABORTED"),
    (429, "RESOURCE_EXHAUSTED"),
    (499, "CANCELLED"),
    (500, "INTERNAL"),
    (501, "UNIMPLEMENTED"),
    (503, "UNAVAILABLE"),
    (504, "DEADLINE_EXCEEDED"),
];

/// Google's `error.status` for an HTTP status (`INVALID_ARGUMENT` for other 4xx, `INTERNAL` for
/// other 5xx).
pub fn status_name(status: u16) -> &'static str {
    match STATUSES.iter().find(|(s, _)| *s == status) {
        Some((_, name)) => name,
        None if status < 500 => "INVALID_ARGUMENT",
        None => "INTERNAL",
    }
}

/// The HTTP status of a Google status name (500 for names it does not know).
pub fn status_of_name(name: &str) -> u16 {
    STATUSES
        .iter()
        .find(|(_, n)| *n == name)
        .map_or(500, |(s, _)| *s)
}

/// The error type a client of another format sees for a status: the gateway's OpenAI-style
/// vocabulary (`invalid_request_error`, `authentication_error`, `permission_error`,
/// `rate_limit_error`, `server_error`, `upstream_error`); Google's status name goes to `code`.
fn error_type_for_status(status: u16) -> &'static str {
    super::openai_chat::error_type_for_status(status)
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    code: u16,
    message: &'a str,
    status: &'a str,
}

/// `{"error":{"code":<status>,"message":..,"status":<Google's name>}}`. The status name is
/// `code` when it is one of Google's names, else the name for `status`.
pub fn error_body(
    status: u16,
    _error_type: Option<&str>,
    message: &str,
    code: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + message.len());
    write_error(&mut out, status, message, code);
    out
}

fn write_error(out: &mut Vec<u8>, status: u16, message: &str, code: Option<&str>) {
    let name = match code {
        Some(c) if STATUSES.iter().any(|(_, n)| *n == c) => c,
        _ => status_name(status),
    };
    write_value(
        out,
        &ErrorBody {
            error: ErrorObject {
                code: status,
                message,
                status: name,
            },
        },
    );
}

/// An error event in a Gemini stream (`data: {"error":{...}}`).
pub fn error_event(status: u16, message: &str, code: Option<&str>, out: &mut Vec<u8>) {
    sse_begin(out, None);
    write_error(out, status, message, code);
    sse_end(out);
}

#[derive(Deserialize)]
struct WireErrorBody<'a> {
    #[serde(borrow)]
    error: WireError<'a>,
}

#[derive(Deserialize)]
pub(crate) struct WireError<'a> {
    #[serde(default)]
    pub(crate) code: Option<u16>,
    #[serde(borrow, default)]
    pub(crate) message: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) status: Option<Cow<'a, str>>,
}

/// Read a Gemini or Vertex error body: `{"error":{"code","message","status"}}`, or the same
/// inside a one-element array (Vertex streams). The client sees the gateway's error type for the
/// status and Google's status name (`RESOURCE_EXHAUSTED`, ...) as `code`.
pub fn decode_error(status: u16, body: &[u8]) -> UpstreamError {
    let parsed = if body.trim_ascii_start().starts_with(b"[") {
        serde_json::from_slice::<Vec<WireErrorBody>>(body)
            .ok()
            .and_then(|mut v| v.pop())
    } else {
        serde_json::from_slice::<WireErrorBody>(body).ok()
    }
    .map(|b| b.error);
    let (message, name) = match parsed {
        Some(e) => (e.message, e.status),
        None => (None, None),
    };
    UpstreamError {
        status,
        error_type: error_type_for_status(status).to_owned(),
        message: match message {
            Some(m) if !m.is_empty() => {
                truncate_message(&m, UPSTREAM_ERROR_MESSAGE_BYTES_MAX).to_owned()
            }
            _ => format!("the provider answered HTTP {status}"),
        },
        code: Some(
            name.map(Cow::into_owned)
                .unwrap_or_else(|| status_name(status).to_owned()),
        ),
    }
}

/// Token counts as Gemini reports them (`usageMetadata`).
#[derive(Deserialize, Default, Clone, Copy, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WireUsage {
    #[serde(default)]
    prompt_token_count: Option<u64>,
    #[serde(default)]
    candidates_token_count: Option<u64>,
    #[serde(default)]
    cached_content_token_count: Option<u64>,
    #[serde(default)]
    thoughts_token_count: Option<u64>,
    #[serde(default)]
    tool_use_prompt_token_count: Option<u64>,
}

impl WireUsage {
    /// `promptTokenCount` already includes `cachedContentTokenCount`; tool-use prompt tokens are
    /// input too. `candidatesTokenCount` leaves out the thoughts, which the neutral output
    /// includes.
    pub(crate) fn to_neutral(self) -> Usage {
        let thoughts = self.thoughts_token_count.unwrap_or(0);
        Usage {
            input_tokens: self.prompt_token_count.unwrap_or(0)
                + self.tool_use_prompt_token_count.unwrap_or(0),
            output_tokens: self.candidates_token_count.unwrap_or(0) + thoughts,
            cache_read_tokens: self.cached_content_token_count.unwrap_or(0),
            cache_write_tokens: 0,
            reasoning_tokens: thoughts,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutUsage {
    prompt_token_count: u64,
    candidates_token_count: u64,
    total_token_count: u64,
    #[serde(skip_serializing_if = "is_zero")]
    cached_content_token_count: u64,
    #[serde(skip_serializing_if = "is_zero")]
    thoughts_token_count: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl OutUsage {
    fn from_neutral(u: &Usage) -> Self {
        OutUsage {
            prompt_token_count: u.input_tokens,
            candidates_token_count: u.output_tokens.saturating_sub(u.reasoning_tokens),
            total_token_count: u.input_tokens + u.output_tokens,
            cached_content_token_count: u.cache_read_tokens,
            thoughts_token_count: u.reasoning_tokens,
        }
    }
}

/// The answer's usage in Gemini's format (zeros without `usageMetadata`), for passthrough
/// accounting; `None` when the body is not a JSON object.
pub fn answer_usage(body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct WithUsage {
        #[serde(default)]
        usage_metadata: Option<WireUsage>,
    }
    let w: WithUsage = serde_json::from_slice(body).ok()?;
    Some(w.usage_metadata.unwrap_or_default().to_neutral())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reasons() {
        assert_eq!(finish_reason_from("STOP", false), FinishReason::Stop);
        assert_eq!(finish_reason_from("STOP", true), FinishReason::ToolCalls);
        assert_eq!(
            finish_reason_from("MAX_TOKENS", false),
            FinishReason::Length
        );
        for r in FILTER_FINISH_REASONS {
            assert_eq!(
                finish_reason_from(r, false),
                FinishReason::ContentFilter,
                "{r}"
            );
        }
        assert_eq!(
            finish_reason_from("MALFORMED_FUNCTION_CALL", false),
            FinishReason::Other("malformed_function_call".into())
        );
        for r in ["STOP", "MAX_TOKENS", "SAFETY", "MALFORMED_FUNCTION_CALL"] {
            assert_eq!(finish_reason_str(&finish_reason_from(r, false)), r);
        }
    }

    #[test]
    fn errors_both_ways() {
        let e = decode_error(
            429,
            br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#,
        );
        assert_eq!(e.error_type, "rate_limit_error");
        assert_eq!(e.code.as_deref(), Some("RESOURCE_EXHAUSTED"));
        assert_eq!(e.message, "Resource has been exhausted (e.g. check quota).");
        let e = decode_error(
            400,
            br#"[{"error":{"code":400,"message":"bad","status":"INVALID_ARGUMENT"}}]"#,
        );
        assert_eq!(
            (e.message.as_str(), e.code.as_deref()),
            ("bad", Some("INVALID_ARGUMENT"))
        );
        let e = decode_error(502, b"<html>");
        assert_eq!(e.message, "the provider answered HTTP 502");
        assert_eq!(e.code.as_deref(), Some("INTERNAL"));
        let v: serde_json::Value =
            serde_json::from_slice(&error_body(404, None, "no model", None)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error":{"code":404,"message":"no model","status":"NOT_FOUND"}})
        );
        let v: serde_json::Value = serde_json::from_slice(&error_body(
            429,
            Some("rate_limit_error"),
            "m",
            Some("RESOURCE_EXHAUSTED"),
        ))
        .unwrap();
        assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
        assert_eq!(status_of_name("UNAVAILABLE"), 503);
    }

    #[test]
    fn usage_counts_thoughts_as_output() {
        let w: WireUsage = serde_json::from_str(
            r#"{"promptTokenCount":100,"candidatesTokenCount":20,"thoughtsTokenCount":30,"cachedContentTokenCount":64,"totalTokenCount":150}"#,
        )
        .unwrap();
        let u = w.to_neutral();
        assert_eq!(
            (
                u.input_tokens,
                u.output_tokens,
                u.reasoning_tokens,
                u.cache_read_tokens
            ),
            (100, 50, 30, 64)
        );
        let back = OutUsage::from_neutral(&u);
        assert_eq!(
            (back.candidates_token_count, back.total_token_count),
            (20, 150)
        );
    }
}

//! OpenAI Chat Completions (`POST /v1/chat/completions`) as a wire format: request, response and
//! stream codecs to and from the neutral model, error bodies, and the vocabulary both share
//! (finish reasons, usage). The same codec serves OpenAI itself and OpenAI-compatible servers
//! (vLLM, Ollama, DeepSeek, ...), whose `reasoning_content`/`reasoning` fields it also reads.

mod request;
mod response;
mod stream;

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::chat::{FinishReason, Usage};
use super::json::{sse_begin, sse_end, write_value};
use super::{truncate_message, UpstreamError, UPSTREAM_ERROR_MESSAGE_BYTES_MAX};

pub use request::{decode_request, encode_request};
pub(crate) use request::{image_source, needs_openai};
pub use response::{decode_response, encode_response};
pub use stream::{StreamDecoder, StreamEncoder};

/// The stream terminator.
pub const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";
/// The keep-alive the stream encoder writes: an SSE comment, ignored by clients.
pub const KEEPALIVE_EVENT: &[u8] = b": keep-alive\n\n";

/// OpenAI's `finish_reason` for a neutral one.
pub fn finish_reason_str(r: &FinishReason) -> &'static str {
    match r {
        FinishReason::Stop | FinishReason::StopSequence(_) => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter | FinishReason::Refusal => "content_filter",
        FinishReason::Other(s) => match s.as_str() {
            "function_call" => "function_call",
            "model_context_window_exceeded" => "length",
            _ => "stop",
        },
    }
}

/// The neutral reason for OpenAI's `finish_reason`.
pub fn finish_reason_from(s: &str) -> FinishReason {
    match s {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "tool_calls" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_owned()),
    }
}

/// OpenAI's `error.type` for a status, in the gateway's vocabulary (see `error.rs`).
pub fn error_type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        500 => "server_error",
        400..=499 => "invalid_request_error",
        _ => "upstream_error",
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    ty: &'a str,
    param: Option<()>,
    code: Option<&'a str>,
}

/// `{"error":{"message","type","param":null,"code"}}`. `error_type` defaults to the type for
/// `status` ([`error_type_for_status`]); pass `None` when translating another format's error.
pub fn error_body(
    status: u16,
    error_type: Option<&str>,
    message: &str,
    code: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + message.len());
    write_error_object(&mut out, status, error_type, message, code);
    out
}

/// The SSE event that reports an error mid-stream: `data: {"error":{...}}` (what the official
/// SDKs raise as an `APIError`).
pub fn error_event(
    status: u16,
    error_type: Option<&str>,
    message: &str,
    code: Option<&str>,
    out: &mut Vec<u8>,
) {
    sse_begin(out, None);
    write_error_object(out, status, error_type, message, code);
    sse_end(out);
}

fn write_error_object(
    out: &mut Vec<u8>,
    status: u16,
    error_type: Option<&str>,
    message: &str,
    code: Option<&str>,
) {
    let body = ErrorBody {
        error: ErrorObject {
            message,
            ty: error_type.unwrap_or_else(|| error_type_for_status(status)),
            param: None,
            code,
        },
    };
    write_value(out, &body);
}

/// Read an OpenAI-format provider's error body (`{"error":{...}}`, or the looser shapes
/// compatible servers send: `{"error":"..."}`, `{"message":"..."}`, `{"detail":"..."}`).
pub fn decode_error(status: u16, body: &[u8]) -> UpstreamError {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow, default)]
        error: Option<ErrorField<'a>>,
        #[serde(borrow, default)]
        message: LenientStr<'a>,
        #[serde(borrow, default)]
        detail: LenientStr<'a>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ErrorField<'a> {
        Object {
            #[serde(borrow, default)]
            message: LenientStr<'a>,
            #[serde(rename = "type", borrow, default)]
            ty: LenientStr<'a>,
            #[serde(default)]
            code: Option<serde_json::Value>,
        },
        Text(#[serde(borrow)] Cow<'a, str>),
    }
    let parsed: Option<Body> = serde_json::from_slice(body).ok();
    let (mut message, mut ty, mut code) = (None, None, None);
    if let Some(b) = parsed {
        match b.error {
            Some(ErrorField::Object {
                message: m,
                ty: t,
                code: c,
            }) => {
                message = m.0;
                ty = t.0;
                code = match c {
                    Some(serde_json::Value::String(s)) => Some(s),
                    Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                };
            }
            Some(ErrorField::Text(t)) => message = Some(t),
            None => message = b.message.0.or(b.detail.0),
        }
    }
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
        code,
    }
}

/// Token counts as OpenAI reports them (`usage`).
#[derive(Deserialize, Default)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize, Default)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    cache_write_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl WireUsage {
    /// OpenAI's `prompt_tokens` already includes cached tokens: it is the neutral input.
    fn to_neutral(&self) -> Usage {
        let p = self.prompt_tokens_details.as_ref();
        Usage {
            input_tokens: self.prompt_tokens.unwrap_or(0),
            output_tokens: self.completion_tokens.unwrap_or(0),
            cache_read_tokens: p.and_then(|p| p.cached_tokens).unwrap_or(0),
            cache_write_tokens: p.and_then(|p| p.cache_write_tokens).unwrap_or(0),
            reasoning_tokens: self
                .completion_tokens_details
                .as_ref()
                .and_then(|c| c.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

#[derive(Serialize)]
struct OutUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: OutPromptDetails,
    completion_tokens_details: OutCompletionDetails,
}

#[derive(Serialize)]
struct OutPromptDetails {
    cached_tokens: u64,
    #[serde(skip_serializing_if = "is_zero")]
    cache_write_tokens: u64,
}

#[derive(Serialize)]
struct OutCompletionDetails {
    reasoning_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl OutUsage {
    fn from_neutral(u: &Usage) -> Self {
        OutUsage {
            prompt_tokens: u.input_tokens,
            completion_tokens: u.output_tokens,
            total_tokens: u.input_tokens + u.output_tokens,
            prompt_tokens_details: OutPromptDetails {
                cached_tokens: u.cache_read_tokens,
                cache_write_tokens: u.cache_write_tokens,
            },
            completion_tokens_details: OutCompletionDetails {
                reasoning_tokens: u.reasoning_tokens,
            },
        }
    }
}

/// A string field that some compatible servers fill with other JSON: the string, or `None`
/// for anything else (which is skipped, not rejected).
#[derive(Debug, Default)]
pub(crate) struct LenientStr<'a>(pub(crate) Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for LenientStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LenientStrVisitor(std::marker::PhantomData))
    }
}

struct LenientStrVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for LenientStrVisitor<'a> {
    type Value = LenientStr<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(LenientStr(Some(Cow::Borrowed(v))))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(LenientStr(Some(Cow::Owned(v.to_owned()))))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(LenientStr(Some(Cow::Owned(v))))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(LenientStr(None))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(LenientStr(None))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(LenientStr(None))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(LenientStr(None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(LenientStr(None))
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(LenientStr(None))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        LenientStr::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(LenientStr(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(LenientStr(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reasons_both_ways() {
        for s in [
            "stop",
            "length",
            "tool_calls",
            "content_filter",
            "function_call",
        ] {
            assert_eq!(finish_reason_str(&finish_reason_from(s)), s);
        }
        assert_eq!(finish_reason_str(&FinishReason::Refusal), "content_filter");
        assert_eq!(
            finish_reason_str(&FinishReason::StopSequence(Some("x".into()))),
            "stop"
        );
        assert_eq!(
            finish_reason_str(&FinishReason::Other("model_context_window_exceeded".into())),
            "length"
        );
        assert_eq!(
            finish_reason_str(&FinishReason::Other("pause_turn".into())),
            "stop"
        );
    }

    #[test]
    fn error_bodies_per_status() {
        for (status, ty) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "invalid_request_error"),
            (413, "invalid_request_error"),
            (429, "rate_limit_error"),
            (500, "server_error"),
            (503, "upstream_error"),
            (529, "upstream_error"),
        ] {
            let v: serde_json::Value =
                serde_json::from_slice(&error_body(status, None, "m", Some("c"))).unwrap();
            assert_eq!(v["error"]["type"], ty, "{status}");
            assert_eq!(v["error"]["message"], "m");
            assert_eq!(v["error"]["code"], "c");
            assert!(v["error"]["param"].is_null());
        }
        let mut out = Vec::new();
        error_event(529, Some("overloaded_error"), "Overloaded", None, &mut out);
        assert_eq!(
            out,
            b"data: {\"error\":{\"message\":\"Overloaded\",\"type\":\"overloaded_error\",\"param\":null,\"code\":null}}\n\n"
        );
    }

    #[test]
    fn upstream_errors_are_read_in_every_shape() {
        let e = decode_error(
            429,
            br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        );
        assert_eq!(
            (
                e.status,
                e.error_type.as_str(),
                e.message.as_str(),
                e.code.as_deref()
            ),
            (
                429,
                "requests",
                "Rate limit reached",
                Some("rate_limit_exceeded")
            )
        );
        let e = decode_error(400, br#"{"error":"bad model"}"#);
        assert_eq!(
            (e.error_type.as_str(), e.message.as_str()),
            ("invalid_request_error", "bad model")
        );
        let e = decode_error(422, br#"{"detail":"field required"}"#);
        assert_eq!(e.message, "field required");
        let e = decode_error(400, br#"{"error":{"message":"x","code":400}}"#);
        assert_eq!(e.code.as_deref(), Some("400"));
        let e = decode_error(502, b"<html>bad gateway</html>");
        assert_eq!(
            (e.error_type.as_str(), e.message.as_str()),
            ("upstream_error", "the provider answered HTTP 502")
        );
        let long = format!(r#"{{"message":"{}"}}"#, "x".repeat(10_000));
        assert_eq!(
            decode_error(500, long.as_bytes()).message.len(),
            UPSTREAM_ERROR_MESSAGE_BYTES_MAX
        );
    }
}

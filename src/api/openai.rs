//! OpenAI Chat Completions: parse just what routing needs from a request body (borrowing the rest
//! as raw JSON), rewrite the `model` for the upstream, and the response shapes the gateway emits.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

use crate::error::ApiError;

/// Most entries of a request's own `fallbacks` list.
pub const REQUEST_FALLBACKS_MAX: usize = 8;

/// The JSON nesting depth of `body` exceeds `max` (or the body is not balanced JSON).
#[derive(Debug, PartialEq, Eq)]
pub struct JsonDepthError;

/// Check the nesting depth of a JSON document in one pass without parsing it, so that hostile
/// input (`[[[[...`) is rejected before serde recurses into it.
pub fn check_json_depth(body: &[u8], max: usize) -> Result<(), JsonDepthError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(JsonDepthError);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// A chat completion request as the gateway routes it: the model and stream flag are typed; every
/// other top-level field is kept as raw JSON and passed on unchanged.
#[derive(Debug)]
pub struct ChatRequest<'a> {
    pub model: String,
    pub stream: bool,
    /// The gateway's own `fallbacks: ["provider/model", ...]` (not sent upstream).
    pub fallbacks: Vec<String>,
    /// Top-level fields except `model`, in a stable order.
    fields: BTreeMap<String, &'a RawValue>,
}

impl<'a> ChatRequest<'a> {
    /// Parse and validate a request body. `depth_max` bounds the JSON nesting.
    pub fn parse(body: &'a [u8], depth_max: usize) -> Result<Self, ApiError> {
        if body.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_request_body",
                "the request body is empty; expected a JSON object",
            ));
        }
        check_json_depth(body, depth_max).map_err(|_| {
            ApiError::bad_request(
                "json_too_deep",
                format!("the request JSON is nested deeper than {depth_max} levels"),
            )
        })?;
        let mut fields: BTreeMap<String, &'a RawValue> =
            serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(
                    "invalid_json",
                    format!("the request body is not a valid JSON object: {e}"),
                )
            })?;
        let model = match fields.remove("model") {
            Some(raw) => match serde_json::from_str::<String>(raw.get()) {
                Ok(m) if !m.is_empty() => m,
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid_model",
                        "`model` must be a non-empty string",
                    ))
                }
            },
            None => {
                return Err(ApiError::bad_request(
                    "missing_model",
                    "you must provide a model parameter",
                ))
            }
        };
        match fields
            .get("messages")
            .map(|m| m.get().trim_start().as_bytes().first())
        {
            Some(Some(b'[')) => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "invalid_messages",
                    "`messages` must be an array",
                ))
            }
            None => {
                return Err(ApiError::bad_request(
                    "missing_messages",
                    "you must provide a messages parameter",
                ))
            }
        }
        let fallbacks = match fields.remove("fallbacks") {
            None => Vec::new(),
            Some(raw) => match serde_json::from_str::<Vec<String>>(raw.get()) {
                Ok(list) if list.len() <= REQUEST_FALLBACKS_MAX => list,
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid_fallbacks",
                        format!(
                            "`fallbacks` must be an array of at most {REQUEST_FALLBACKS_MAX} \"provider/model\" strings"
                        ),
                    ))
                }
            },
        };
        let stream = match fields.get("stream") {
            None => false,
            Some(raw) => match raw.get() {
                "true" => true,
                "false" | "null" => false,
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid_stream",
                        "`stream` must be a boolean",
                    ))
                }
            },
        };
        Ok(ChatRequest {
            model,
            stream,
            fallbacks,
            fields,
        })
    }

    /// Raw JSON of a top-level field other than `model`.
    pub fn field(&self, name: &str) -> Option<&'a RawValue> {
        self.fields.get(name).copied()
    }

    /// Whether a streaming client asked for the final usage chunk.
    pub fn wants_usage(&self) -> bool {
        #[derive(Deserialize)]
        struct StreamOptions {
            include_usage: Option<bool>,
        }
        self.field("stream_options")
            .and_then(|raw| serde_json::from_str::<StreamOptions>(raw.get()).ok())
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// Write the request as JSON with `model` replaced by `upstream_model`, into `out`. For a
    /// stream, `stream_options.include_usage` is set so that the gateway always learns the usage
    /// (the usage chunk is passed on only when the client asked for it).
    pub fn write_with_model(&self, upstream_model: &str, out: &mut Vec<u8>) {
        out.push(b'{');
        write_json_str(out, "model");
        out.push(b':');
        write_json_str(out, upstream_model);
        for (k, v) in &self.fields {
            if self.stream && k == "stream_options" {
                continue;
            }
            out.push(b',');
            write_json_str(out, k);
            out.push(b':');
            out.extend_from_slice(v.get().as_bytes());
        }
        if self.stream {
            out.extend_from_slice(b",\"stream_options\":");
            let mut options: serde_json::Map<String, serde_json::Value> = self
                .field("stream_options")
                .and_then(|raw| serde_json::from_str(raw.get()).ok())
                .unwrap_or_default();
            options.insert("include_usage".into(), serde_json::Value::Bool(true));
            let _ = serde_json::to_writer(&mut *out, &options);
        }
        out.push(b'}');
    }
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Serializing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// One message of a request, as the mock provider reads it.
#[derive(Deserialize)]
pub struct InMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<serde_json::Value>,
}

impl InMessage {
    /// The text of `content`: a string, or the `text` of each part of a multi-part content.
    pub fn text(&self) -> String {
        match &self.content {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        }
    }
}

#[derive(Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Serialize)]
pub struct OutMessage<'a> {
    pub role: &'static str,
    pub content: &'a str,
    pub refusal: Option<()>,
}

#[derive(Serialize)]
pub struct Choice<'a> {
    pub index: u32,
    pub message: OutMessage<'a>,
    pub logprobs: Option<()>,
    pub finish_reason: &'static str,
}

#[derive(Serialize)]
pub struct ChatCompletion<'a> {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<Choice<'a>>,
    pub usage: Usage,
    pub system_fingerprint: Option<()>,
}

#[derive(Serialize)]
pub struct ModelObject<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'a str,
}

#[derive(Serialize)]
pub struct ModelList<'a> {
    pub object: &'static str,
    pub data: Vec<ModelObject<'a>>,
}

/// Rough token count of a text: one token per four characters, at least one for non-empty text.
pub fn estimate_tokens(text: &str) -> u64 {
    let chars = text.chars().count() as u64;
    chars.div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_guard() {
        assert!(check_json_depth(br#"{"a":[{"b":1}]}"#, 3).is_ok());
        assert!(check_json_depth(br#"{"a":[{"b":1}]}"#, 2).is_err());
        assert!(check_json_depth(br#"{"a":"[[[[[[[[[\"[["}"#, 1).is_ok());
        let hostile = "[".repeat(100_000);
        assert!(check_json_depth(hostile.as_bytes(), 64).is_err());
    }

    #[test]
    fn parse_and_rewrite() {
        let body = br#"{"model":"openai/gpt-4o","messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#;
        let req = ChatRequest::parse(body, 64).unwrap();
        assert_eq!(req.model, "openai/gpt-4o");
        assert!(!req.stream);
        let mut out = Vec::new();
        req.write_with_model("gpt-4o", &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "gpt-4o");
        assert_eq!(v["temperature"], 0.5);
        assert_eq!(v["messages"][0]["content"], "hi");
    }

    #[test]
    fn stream_requests_always_ask_for_usage() {
        let body = br#"{"model":"m","messages":[],"stream":true,"stream_options":{"x":1}}"#;
        let req = ChatRequest::parse(body, 64).unwrap();
        assert!(req.stream && !req.wants_usage());
        let mut out = Vec::new();
        req.write_with_model("u", &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["x"], 1);
        let body =
            br#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#;
        assert!(ChatRequest::parse(body, 64).unwrap().wants_usage());
    }

    #[test]
    fn fallbacks_are_read_and_not_forwarded() {
        let body = br#"{"model":"a/b","messages":[],"fallbacks":["c/d","e/f"]}"#;
        let req = ChatRequest::parse(body, 64).unwrap();
        assert_eq!(req.fallbacks, ["c/d", "e/f"]);
        let mut out = Vec::new();
        req.write_with_model("b", &mut out);
        assert!(!String::from_utf8_lossy(&out).contains("fallbacks"));
        let bad = br#"{"model":"a/b","messages":[],"fallbacks":"c/d"}"#;
        assert_eq!(
            ChatRequest::parse(bad, 64).unwrap_err().code,
            "invalid_fallbacks"
        );
    }

    #[test]
    fn bad_requests() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "invalid_request_body"),
            (b"{", "invalid_json"),
            (b"[1]", "invalid_json"),
            (br#"{"messages":[]}"#, "missing_model"),
            (br#"{"model":3,"messages":[]}"#, "invalid_model"),
            (br#"{"model":"m"}"#, "missing_messages"),
            (br#"{"model":"m","messages":{}}"#, "invalid_messages"),
            (
                br#"{"model":"m","messages":[],"stream":"yes"}"#,
                "invalid_stream",
            ),
        ];
        for (body, code) in cases {
            let e = ChatRequest::parse(body, 64).unwrap_err();
            assert_eq!(e.code, *code, "{}", String::from_utf8_lossy(body));
            assert_eq!(e.status(), 400);
        }
    }

    #[test]
    fn message_text() {
        let m: InMessage = serde_json::from_str(
            r#"{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}"#,
        )
        .unwrap();
        assert_eq!(m.text(), "a b");
        assert_eq!(estimate_tokens("abcde"), 2);
    }
}

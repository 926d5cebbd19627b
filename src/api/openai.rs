//! OpenAI Chat Completions: parse just what routing needs from a request body (borrowing the rest
//! as raw JSON), rewrite the `model` for the upstream, and the response shapes the gateway emits.

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer as _, Serialize};
use serde_json::value::RawValue;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

use crate::error::ApiError;

/// Most entries of a request's own `fallbacks` list.
pub const REQUEST_FALLBACKS_MAX: usize = 8;
/// Most top-level fields of a chat request (OpenAI's API defines about 40). Reading stops at the
/// first field past it, so a body of a million keys costs no more than one of this many.
pub const REQUEST_FIELDS_MAX: usize = 256;
/// Most fields of `stream_options` (OpenAI's API defines 2).
pub const STREAM_OPTIONS_FIELDS_MAX: usize = 16;

const _: () = assert!(REQUEST_FIELDS_MAX >= 64 && STREAM_OPTIONS_FIELDS_MAX >= 2);

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
    /// The fields of `stream_options`, when it is an object.
    stream_options: Option<BTreeMap<String, &'a RawValue>>,
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
        let mut fields = object_fields(body, REQUEST_FIELDS_MAX).map_err(|e| match e {
            FieldsError::TooMany => ApiError::bad_request(
                "too_many_fields",
                format!("the request has more than {REQUEST_FIELDS_MAX} top-level fields"),
            ),
            FieldsError::Duplicate => ApiError::bad_request(
                "duplicate_field",
                "a top-level field of the request appears more than once",
            ),
            FieldsError::Json(e) => ApiError::bad_request(
                "invalid_json",
                format!("the request body is not a valid JSON object: {e}"),
            ),
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
            Some(raw) => match string_list(raw.get(), REQUEST_FALLBACKS_MAX) {
                Some(list) => list,
                None => {
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
        let stream_options = match fields.get("stream_options") {
            None => None,
            Some(raw) if raw.get() == "null" => None,
            Some(raw) => Some(
                object_fields(raw.get().as_bytes(), STREAM_OPTIONS_FIELDS_MAX).map_err(|_| {
                    ApiError::bad_request(
                        "invalid_stream_options",
                        format!(
                            "`stream_options` must be an object of at most \
                             {STREAM_OPTIONS_FIELDS_MAX} distinct fields"
                        ),
                    )
                })?,
            ),
        };
        Ok(ChatRequest {
            model,
            stream,
            fallbacks,
            fields,
            stream_options,
        })
    }

    /// Raw JSON of a top-level field other than `model`.
    pub fn field(&self, name: &str) -> Option<&'a RawValue> {
        self.fields.get(name).copied()
    }

    /// Whether a streaming client asked for the final usage chunk.
    pub fn wants_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.get("include_usage"))
            .is_some_and(|v| v.get() == "true")
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
            out.extend_from_slice(b",\"stream_options\":{");
            for (k, v) in self.stream_options.iter().flatten() {
                if k != "include_usage" {
                    write_json_str(out, k);
                    out.push(b':');
                    out.extend_from_slice(v.get().as_bytes());
                    out.push(b',');
                }
            }
            out.extend_from_slice(b"\"include_usage\":true}");
        }
        out.push(b'}');
    }
}

/// Why a JSON object's fields were not read.
#[derive(Debug)]
enum FieldsError {
    /// More fields than allowed (reading stopped at the first one past the limit).
    TooMany,
    /// A field name appears twice (parsers disagree on which value wins, so none is chosen).
    Duplicate,
    /// Not a JSON object.
    Json(serde_json::Error),
}

/// The fields of the JSON object `json` as raw values, reading at most `max` of them.
fn object_fields(json: &[u8], max: usize) -> Result<BTreeMap<String, &RawValue>, FieldsError> {
    let refused = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(json);
    let visitor = FieldsVisitor {
        max,
        refused: &refused,
    };
    let fields = (&mut de)
        .deserialize_map(visitor)
        .and_then(|fields| de.end().map(|()| fields));
    fields.map_err(|e| refused.take().unwrap_or(FieldsError::Json(e)))
}

/// Collects an object's fields, failing at the first one past `max` or at a repeated name;
/// `refused` says which (serde's error carries only text).
struct FieldsVisitor<'r> {
    max: usize,
    refused: &'r Cell<Option<FieldsError>>,
}

impl<'de> Visitor<'de> for FieldsVisitor<'_> {
    type Value = BTreeMap<String, &'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = BTreeMap::new();
        while let Some(name) = map.next_key::<String>()? {
            if fields.len() == self.max {
                self.refused.set(Some(FieldsError::TooMany));
                return Err(de::Error::custom("too many fields"));
            }
            let value: &'de RawValue = map.next_value()?;
            if fields.insert(name, value).is_some() {
                self.refused.set(Some(FieldsError::Duplicate));
                return Err(de::Error::custom("duplicate field"));
            }
        }
        Ok(fields)
    }
}

/// A JSON array of at most `max` strings; `None` for anything else. Reading stops at the first
/// element past `max`.
fn string_list(json: &str, max: usize) -> Option<Vec<String>> {
    struct ListVisitor(usize);
    impl<'de> Visitor<'de> for ListVisitor {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "an array of at most {} strings", self.0)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut list = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                if list.len() == self.0 {
                    return Err(de::Error::custom("too many elements"));
                }
                list.push(item);
            }
            Ok(list)
        }
    }
    let mut de = serde_json::Deserializer::from_str(json);
    let list = (&mut de).deserialize_seq(ListVisitor(max)).ok()?;
    de.end().ok()?;
    Some(list)
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

    /// A request with `extra` more top-level fields besides `model` and `messages`.
    fn with_fields(extra: usize) -> String {
        let mut body = String::from(r#"{"model":"a/b","messages":[]"#);
        for i in 0..extra {
            body.push_str(&format!(r#","f{i}":{i}"#));
        }
        body.push('}');
        body
    }

    #[test]
    fn top_level_fields_are_bounded() {
        let ok = with_fields(REQUEST_FIELDS_MAX - 2);
        assert!(ChatRequest::parse(ok.as_bytes(), 64).is_ok());
        for extra in [REQUEST_FIELDS_MAX - 1, 300_000] {
            let body = with_fields(extra);
            let e = ChatRequest::parse(body.as_bytes(), 64).unwrap_err();
            assert_eq!((e.status(), e.code), (400, "too_many_fields"));
        }
        // Past the limit, reading stops: what follows is never looked at.
        let mut body = with_fields(REQUEST_FIELDS_MAX);
        body.truncate(body.len() - 1);
        body.push_str(r#","late": not json at all"#);
        let e = ChatRequest::parse(body.as_bytes(), 64).unwrap_err();
        assert_eq!(e.code, "too_many_fields");
    }

    #[test]
    fn duplicate_fields_are_refused() {
        for body in [
            &br#"{"model":"a/b","messages":[],"model":"c/d"}"#[..],
            br#"{"model":"a/b","messages":[],"messages":[]}"#,
            br#"{"model":"a/b","messages":[],"t":1,"t":2}"#,
        ] {
            let e = ChatRequest::parse(body, 64).unwrap_err();
            assert_eq!(
                e.code,
                "duplicate_field",
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn stream_options_and_fallbacks_are_bounded() {
        let many: Vec<String> = (0..=STREAM_OPTIONS_FIELDS_MAX)
            .map(|i| format!(r#""o{i}":1"#))
            .collect();
        let body = format!(
            r#"{{"model":"m","messages":[],"stream":true,"stream_options":{{{}}}}}"#,
            many.join(",")
        );
        let e = ChatRequest::parse(body.as_bytes(), 64).unwrap_err();
        assert_eq!(e.code, "invalid_stream_options");
        for bad in [r#"5"#, r#"[]"#, r#"{"a":1,"a":2}"#] {
            let body = format!(r#"{{"model":"m","messages":[],"stream_options":{bad}}}"#);
            let e = ChatRequest::parse(body.as_bytes(), 64).unwrap_err();
            assert_eq!(e.code, "invalid_stream_options", "{bad}");
        }
        let body = br#"{"model":"m","messages":[],"stream":true,"stream_options":null}"#;
        let req = ChatRequest::parse(body, 64).unwrap();
        let mut out = Vec::new();
        req.write_with_model("u", &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_usage": true})
        );

        let list = |n: usize| (0..n).map(|i| format!("\"p/m{i}\"")).collect::<Vec<_>>();
        let ok = format!(
            r#"{{"model":"a/b","messages":[],"fallbacks":[{}]}}"#,
            list(REQUEST_FALLBACKS_MAX).join(",")
        );
        assert_eq!(
            ChatRequest::parse(ok.as_bytes(), 64)
                .unwrap()
                .fallbacks
                .len(),
            REQUEST_FALLBACKS_MAX
        );
        let long = format!(
            r#"{{"model":"a/b","messages":[],"fallbacks":[{}]}}"#,
            list(100_000).join(",")
        );
        let e = ChatRequest::parse(long.as_bytes(), 64).unwrap_err();
        assert_eq!(e.code, "invalid_fallbacks");
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

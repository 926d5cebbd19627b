//! What routing needs from a request body, read on the connection coroutine without building
//! anything from the rest: the model, the stream flags and the gateway's own `fallbacks`. Every
//! other field is only checked to be valid JSON (and skipped); the worker reads the body again to
//! rewrite or translate it. The number of top-level fields is bounded while parsing, so a hostile
//! body is refused before it costs much.

use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use crate::error::ApiError;
use crate::job::ClientApi;

/// Most top-level fields of a request body; more is refused with 400 while parsing.
pub const TOP_LEVEL_FIELDS_MAX: usize = 256;
/// Most entries of a request's own `fallbacks` list.
pub const REQUEST_FALLBACKS_MAX: usize = 8;
/// Most fields of `stream_options`.
pub const STREAM_OPTIONS_FIELDS_MAX: usize = 16;

/// The routing head of a chat request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RouteHead {
    pub model: String,
    pub stream: bool,
    /// OpenAI `stream_options.include_usage`.
    pub wants_usage: bool,
    /// The gateway's own `fallbacks: ["provider/model", ...]` (never sent upstream).
    pub fallbacks: Vec<String>,
}

/// What the visitor saw, before the API's own rules are checked.
#[derive(Default)]
struct Seen {
    model: Option<Option<String>>,
    stream: Option<Option<bool>>,
    /// `None` inside: `stream_options` is not an object of at most
    /// [`STREAM_OPTIONS_FIELDS_MAX`] fields.
    stream_options: Option<Option<StreamOptions>>,
    fallbacks: Option<Option<Vec<String>>>,
    messages_is_array: Option<bool>,
    has_max_tokens: bool,
    /// `input` (embeddings, Responses) is present.
    has_input: bool,
    /// `input` is a string or an array (what the Responses API takes).
    input_is_text_or_items: bool,
    /// `previous_response_id` (Responses) is present and not null.
    has_previous_response: bool,
    /// `prompt` (legacy completions) is present.
    has_prompt: bool,
}

/// Why the visitor stopped early.
const TOO_MANY_FIELDS: &str = "too many top-level fields";
const DUPLICATE_FIELD: &str = "duplicate top-level field";

#[derive(Default)]
struct StreamOptions {
    include_usage: Option<bool>,
}

impl<'de> Deserialize<'de> for StreamOptions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StreamOptions;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of stream options")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StreamOptions, A::Error> {
                let mut options = StreamOptions::default();
                let mut fields = 0usize;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    fields += 1;
                    if fields > STREAM_OPTIONS_FIELDS_MAX {
                        return Err(serde::de::Error::custom("too many stream options"));
                    }
                    if key == "include_usage" {
                        options.include_usage = map.next_value()?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(options)
            }
        }
        d.deserialize_map(V)
    }
}

/// At most [`REQUEST_FALLBACKS_MAX`] strings; the visitor stops at the next one.
struct Fallbacks(Vec<String>);

impl<'de> Deserialize<'de> for Fallbacks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fallbacks;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of strings")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Fallbacks, A::Error> {
                let mut list = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    if list.len() == REQUEST_FALLBACKS_MAX {
                        return Err(serde::de::Error::custom("too many fallbacks"));
                    }
                    list.push(s);
                }
                Ok(Fallbacks(list))
            }
        }
        d.deserialize_seq(V)
    }
}

/// The next value as a `T`, or `None` when it is valid JSON of another shape.
fn lenient<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
    map: &mut A,
) -> Result<Option<T>, A::Error> {
    let raw: &'de serde_json::value::RawValue = map.next_value()?;
    Ok(serde_json::from_str(raw.get()).ok())
}

impl<'de> Deserialize<'de> for Seen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Seen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Seen, A::Error> {
                let mut seen = Seen::default();
                // A request has a handful of fields: a linear search beats hashing them.
                let mut names: Vec<std::borrow::Cow<'de, str>> = Vec::with_capacity(16);
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if names.len() == TOP_LEVEL_FIELDS_MAX {
                        return Err(serde::de::Error::custom(TOO_MANY_FIELDS));
                    }
                    if names.contains(&key) {
                        return Err(serde::de::Error::custom(DUPLICATE_FIELD));
                    }
                    names.push(key.clone());
                    match key.as_ref() {
                        "model" => seen.model = Some(lenient(&mut map)?),
                        "stream" => seen.stream = Some(lenient(&mut map)?),
                        "fallbacks" => {
                            let list: Option<Fallbacks> = lenient(&mut map)?;
                            seen.fallbacks = Some(list.map(|f| f.0));
                        }
                        "stream_options" => seen.stream_options = Some(lenient(&mut map)?),
                        "messages" => {
                            let v: &serde_json::value::RawValue = map.next_value()?;
                            seen.messages_is_array = Some(v.get().starts_with('['));
                        }
                        "max_tokens" => {
                            seen.has_max_tokens = true;
                            map.next_value::<IgnoredAny>()?;
                        }
                        "input" => {
                            let v: &serde_json::value::RawValue = map.next_value()?;
                            seen.has_input = true;
                            seen.input_is_text_or_items = v.get().starts_with(['"', '[']);
                        }
                        "previous_response_id" => {
                            let v: &serde_json::value::RawValue = map.next_value()?;
                            seen.has_previous_response = v.get() != "null";
                        }
                        "prompt" => {
                            seen.has_prompt = true;
                            map.next_value::<IgnoredAny>()?;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(seen)
            }
        }
        d.deserialize_map(V)
    }
}

impl RouteHead {
    /// Read and check the routing head of a body sent to `api`. `depth_max` bounds the nesting.
    pub fn parse(api: ClientApi, body: &[u8], depth_max: usize) -> Result<RouteHead, ApiError> {
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
        let seen: Seen = match serde_json::from_slice::<Seen>(body) {
            Ok(seen) => seen,
            Err(e) if e.to_string().starts_with(TOO_MANY_FIELDS) => {
                return Err(ApiError::bad_request(
                    "too_many_fields",
                    format!("the request has more than {TOP_LEVEL_FIELDS_MAX} top-level fields"),
                ))
            }
            Err(e) if e.to_string().starts_with(DUPLICATE_FIELD) => {
                return Err(ApiError::bad_request(
                    "duplicate_field",
                    "the request repeats a top-level field",
                ))
            }
            Err(e) => {
                return Err(ApiError::bad_request(
                    "invalid_json",
                    format!("the request body is not a valid JSON object: {e}"),
                ))
            }
        };
        let model = match seen.model {
            None => {
                return Err(ApiError::bad_request(
                    "missing_model",
                    "you must provide a model parameter",
                ))
            }
            Some(Some(m)) if !m.is_empty() => m,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "invalid_model",
                    "`model` must be a non-empty string",
                ))
            }
        };
        let required = match api {
            ClientApi::OpenAiEmbeddings | ClientApi::OpenAiResponses => {
                Some(("input", seen.has_input))
            }
            ClientApi::OpenAiCompletions => Some(("prompt", seen.has_prompt)),
            _ => None,
        };
        match (required, seen.messages_is_array) {
            (Some((_, true)), _) => {}
            (Some((name, false)), _) => {
                return Err(ApiError::bad_request(
                    if name == "input" {
                        "missing_input"
                    } else {
                        "missing_prompt"
                    },
                    format!("you must provide a {name} parameter"),
                ))
            }
            (None, Some(true)) => {}
            (None, Some(false)) => {
                return Err(ApiError::bad_request(
                    "invalid_messages",
                    "`messages` must be an array",
                ))
            }
            (None, None) => {
                return Err(ApiError::bad_request(
                    "missing_messages",
                    "you must provide a messages parameter",
                ))
            }
        }
        if api == ClientApi::OpenAiResponses {
            check_responses(seen.input_is_text_or_items, seen.has_previous_response)?;
        }
        if api == ClientApi::AnthropicMessages && !seen.has_max_tokens {
            return Err(ApiError::bad_request(
                "missing_max_tokens",
                "max_tokens: Field required",
            ));
        }
        let stream = match seen.stream {
            None | Some(Some(false)) => false,
            Some(Some(true)) => true,
            Some(None) => {
                return Err(ApiError::bad_request(
                    "invalid_stream",
                    "`stream` must be a boolean",
                ))
            }
        };
        let wants_usage = match seen.stream_options {
            None => false,
            Some(Some(options)) => options.include_usage.unwrap_or(false),
            Some(None) => {
                return Err(ApiError::bad_request(
                    "invalid_stream_options",
                    format!(
                        "`stream_options` must be an object of at most {STREAM_OPTIONS_FIELDS_MAX} fields"
                    ),
                ))
            }
        };
        let fallbacks = match seen.fallbacks {
            None => Vec::new(),
            Some(Some(list)) if list.len() <= REQUEST_FALLBACKS_MAX => list,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "invalid_fallbacks",
                    format!(
                        "`fallbacks` must be an array of at most {REQUEST_FALLBACKS_MAX} \"provider/model\" strings"
                    ),
                ))
            }
        };
        Ok(RouteHead {
            model,
            // Token counts and embeddings never stream.
            stream: stream
                && !matches!(
                    api,
                    ClientApi::AnthropicCountTokens | ClientApi::OpenAiEmbeddings
                ),
            wants_usage,
            fallbacks,
        })
    }
}

/// The Responses API's own rules: `input` is a string or an array of items, and no
/// `previous_response_id` (the gateway keeps no conversation state, for any provider: the next
/// turn may go to another key, provider or fallback than the one that answered the last).
fn check_responses(
    input_is_text_or_items: bool,
    has_previous_response: bool,
) -> Result<(), ApiError> {
    if !input_is_text_or_items {
        return Err(ApiError::bad_request(
            "invalid_input",
            "`input` must be a string or an array of input items",
        ));
    }
    if has_previous_response {
        return Err(crate::formats::responses::previous_response_id_unsupported().into());
    }
    Ok(())
}

/// The JSON nesting depth of a body exceeds the limit (or the body is not balanced JSON).
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

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: ClientApi = ClientApi::OpenAiChat;

    #[test]
    fn depth_guard() {
        assert!(check_json_depth(br#"{"a":[{"b":1}]}"#, 3).is_ok());
        assert!(check_json_depth(br#"{"a":[{"b":1}]}"#, 2).is_err());
        assert!(check_json_depth(br#"{"a":"[[[[[[[[[\"[["}"#, 1).is_ok());
        let hostile = "[".repeat(100_000);
        assert!(check_json_depth(hostile.as_bytes(), 64).is_err());
    }

    #[test]
    fn reads_the_routing_head() {
        let body = br#"{"model":"openai/gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"fallbacks":["a/b"],"temperature":0.5}"#;
        let head = RouteHead::parse(CHAT, body, 64).unwrap();
        assert_eq!(
            head,
            RouteHead {
                model: "openai/gpt-4o".into(),
                stream: true,
                wants_usage: true,
                fallbacks: vec!["a/b".into()],
            }
        );
    }

    #[test]
    fn responses_need_input_and_no_previous_response() {
        const RESPONSES: ClientApi = ClientApi::OpenAiResponses;
        let head = RouteHead::parse(
            RESPONSES,
            br#"{"model":"m","input":"hi","stream":true,"previous_response_id":null}"#,
            64,
        )
        .unwrap();
        assert!(head.stream);
        let items = br#"{"model":"m","input":[{"role":"user","content":"hi"}]}"#;
        assert!(!RouteHead::parse(RESPONSES, items, 64).unwrap().stream);
        for (body, code) in [
            (&br#"{"model":"m"}"#[..], "missing_input"),
            (br#"{"model":"m","input":{"a":1}}"#, "invalid_input"),
            (
                br#"{"model":"m","input":"hi","previous_response_id":"resp_1"}"#,
                "previous_response_id_unsupported",
            ),
        ] {
            let e = RouteHead::parse(RESPONSES, body, 64).unwrap_err();
            assert_eq!((e.status(), e.code), (400, code));
        }
    }

    #[test]
    fn anthropic_needs_max_tokens_and_count_tokens_never_streams() {
        let body = br#"{"model":"m","messages":[]}"#;
        let e = RouteHead::parse(ClientApi::AnthropicMessages, body, 64).unwrap_err();
        assert_eq!(e.code, "missing_max_tokens");
        let body = br#"{"model":"m","messages":[],"stream":true}"#;
        let head = RouteHead::parse(ClientApi::AnthropicCountTokens, body, 64).unwrap();
        assert!(!head.stream);
    }

    #[test]
    fn bad_requests() {
        let many: String = (0..=TOP_LEVEL_FIELDS_MAX)
            .map(|i| format!("\"k{i}\":1,"))
            .collect();
        let many = format!("{{{many}\"model\":\"m\",\"messages\":[]}}");
        let cases: &[(&[u8], &str)] = &[
            (b"", "invalid_request_body"),
            (b"{", "invalid_json"),
            (b"[1]", "invalid_json"),
            (br#"{"messages":[]}"#, "missing_model"),
            (br#"{"model":3,"messages":[]}"#, "invalid_model"),
            (br#"{"model":"","messages":[]}"#, "invalid_model"),
            (br#"{"model":"m"}"#, "missing_messages"),
            (br#"{"model":"m","messages":{}}"#, "invalid_messages"),
            (
                br#"{"model":"m","messages":[],"stream":"yes"}"#,
                "invalid_stream",
            ),
            (
                br#"{"model":"m","messages":[],"fallbacks":"c/d"}"#,
                "invalid_fallbacks",
            ),
            (
                br#"{"model":"m","messages":[],"fallbacks":["a","b","c","d","e","f","g","h","i"]}"#,
                "invalid_fallbacks",
            ),
            (
                br#"{"model":"m","messages":[],"model":"n"}"#,
                "duplicate_field",
            ),
            (
                br#"{"model":"m","messages":[],"stream_options":3}"#,
                "invalid_stream_options",
            ),
            (many.as_bytes(), "too_many_fields"),
        ];
        for (body, code) in cases {
            let e = RouteHead::parse(CHAT, body, 64).unwrap_err();
            assert_eq!(e.code, *code, "{}", String::from_utf8_lossy(body));
            assert_eq!(e.status(), 400);
        }
    }
}

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
    wants_usage: Option<bool>,
    fallbacks: Option<Option<Vec<String>>>,
    messages_is_array: Option<bool>,
    has_max_tokens: bool,
    too_many_fields: bool,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// `model` as a string, or `None` when it is some other JSON value.
fn lenient<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
    map: &mut A,
) -> Result<Option<T>, A::Error> {
    let v: serde_json::Value = map.next_value()?;
    Ok(T::deserialize(v).ok())
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
                let mut fields = 0usize;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    fields += 1;
                    if fields > TOP_LEVEL_FIELDS_MAX {
                        seen.too_many_fields = true;
                        return Err(serde::de::Error::custom("too many top-level fields"));
                    }
                    match key.as_ref() {
                        "model" => seen.model = Some(lenient(&mut map)?),
                        "stream" => seen.stream = Some(lenient(&mut map)?),
                        "fallbacks" => seen.fallbacks = Some(lenient(&mut map)?),
                        "stream_options" => {
                            let options: Option<StreamOptions> = lenient(&mut map)?;
                            seen.wants_usage = options.and_then(|o| o.include_usage);
                        }
                        "messages" => {
                            let v: &serde_json::value::RawValue = map.next_value()?;
                            seen.messages_is_array = Some(v.get().starts_with('['));
                        }
                        "max_tokens" => {
                            seen.has_max_tokens = true;
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
            Err(e) if e.to_string().starts_with("too many top-level fields") => {
                return Err(ApiError::bad_request(
                    "too_many_fields",
                    format!("the request has more than {TOP_LEVEL_FIELDS_MAX} top-level fields"),
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
        match seen.messages_is_array {
            Some(true) => {}
            Some(false) => {
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
            // Token counting never streams.
            stream: stream && api != ClientApi::AnthropicCountTokens,
            wants_usage: seen.wants_usage.unwrap_or(false),
            fallbacks,
        })
    }
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
            (many.as_bytes(), "too_many_fields"),
        ];
        for (body, code) in cases {
            let e = RouteHead::parse(CHAT, body, 64).unwrap_err();
            assert_eq!(e.code, *code, "{}", String::from_utf8_lossy(body));
            assert_eq!(e.status(), 400);
        }
    }
}

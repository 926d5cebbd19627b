//! What the mock upstream answers: the model-name directives that drive fault injection, the
//! answer to a chat completion (text, a tool call, a tool result echoed, or a `json_schema`
//! object), and its OpenAI stream as `chat.completion.chunk` SSE events.

use serde_json::{json, Value};

use crate::tools::{has_trigger, instance_of, pick_tool};

/// The number right after `prefix` in a model name, e.g. `delay-250` in `gpt-delay-250`.
pub fn directive_number(model: &str, prefix: &str) -> Option<u64> {
    let mut from = 0;
    while let Some(found) = model[from..].find(prefix) {
        let at = from + found;
        // `chunkdelay-` must not be read as `delay-`: a directive starts the name or follows `-`.
        let starts_word =
            at == 0 || model.as_bytes()[at - 1] == b'-' || model.as_bytes()[at - 1] == b'/';
        let digits = &model[at + prefix.len()..];
        let end = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        if starts_word {
            if let Ok(n) = digits[..end].parse() {
                return Some(n);
            }
        }
        from = at + prefix.len();
    }
    None
}

/// A message's text: a string `content`, or the `text` parts of an array `content`.
pub fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// What the mock answers a chat completion with.
#[derive(Debug, PartialEq)]
pub enum ChatAnswer {
    /// Assistant content (`finish_reason: "stop"`).
    Text(String),
    /// A call of the named function with these JSON arguments (`finish_reason: "tool_calls"`).
    ToolCall { name: String, arguments: String },
}

/// The answer to a valid chat completion request, first match wins:
/// 1. the request has `tools`, no `tool` message follows the last `user` message, and that
///    message contains [`crate::tools::TOOL_TRIGGER`] or `tool_choice` forces a call: a call of
///    the forced function, else the one the message names, else the first, with arguments built
///    from that function's `parameters` (strings set to `tool_text`);
/// 2. `response_format` is `json_schema`: a JSON object built from its schema the same way;
/// 3. `tool` messages follow the last user message: `mock: tool result: <their contents>`;
/// 4. `mock: <last user message>`.
pub fn chat_answer(body: &Value, tool_text: &str) -> ChatAnswer {
    let messages: &[Value] = body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    fn role(m: &Value) -> &str {
        m.get("role").and_then(Value::as_str).unwrap_or("")
    }
    let last_user = messages.iter().rposition(|m| role(m) == "user");
    let after_user = &messages[last_user.map_or(0, |i| i + 1)..];
    let results: Vec<String> = after_user
        .iter()
        .filter(|m| role(m) == "tool")
        .map(message_text)
        .collect();
    let user_text = last_user
        .map(|i| message_text(&messages[i]))
        .unwrap_or_default();
    let functions: Vec<&Value> = body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("function"))
        .filter(|f| f.get("name").and_then(Value::as_str).is_some())
        .collect();
    // `tool_choice` `{type: function, function: {name}}` forces that function, `required` some.
    let forced = match body.get("tool_choice") {
        Some(Value::String(s)) if s == "required" => Some(""),
        Some(choice) => choice.pointer("/function/name").and_then(Value::as_str),
        None => None,
    };
    if results.is_empty() && (has_trigger(&user_text) || forced.is_some()) {
        let names: Vec<&str> = functions
            .iter()
            .filter_map(|f| f.get("name").and_then(Value::as_str))
            .collect();
        let chosen = forced
            .filter(|f| names.contains(f))
            .or_else(|| pick_tool(&names, &user_text));
        if let Some(name) = chosen {
            let params = functions
                .iter()
                .find(|f| f.get("name").and_then(Value::as_str) == Some(name))
                .and_then(|f| f.get("parameters"))
                .unwrap_or(&Value::Null);
            let arguments = match instance_of(params, tool_text) {
                v @ Value::Object(_) => v.to_string(),
                _ => "{}".to_string(),
            };
            return ChatAnswer::ToolCall {
                name: name.to_string(),
                arguments,
            };
        }
    }
    if body
        .pointer("/response_format/type")
        .and_then(Value::as_str)
        == Some("json_schema")
    {
        let schema = body
            .pointer("/response_format/json_schema/schema")
            .unwrap_or(&Value::Null);
        let object = match instance_of(schema, tool_text) {
            v @ Value::Object(_) => v,
            _ => json!({}),
        };
        return ChatAnswer::Text(object.to_string());
    }
    if !results.is_empty() {
        return ChatAnswer::Text(format!("mock: tool result: {}", results.join("\n")));
    }
    ChatAnswer::Text(format!("mock: {user_text}"))
}

/// `text` cut into `n` consecutive pieces of nearly equal length in characters (some empty when
/// the text is shorter than `n`); together they are exactly `text`.
pub fn split_even(text: &str, n: usize) -> Vec<&str> {
    let n = n.max(1);
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(text.len()))
        .collect();
    let chars = bounds.len() - 1;
    (0..n)
        .map(|k| &text[bounds[k * chars / n]..bounds[(k + 1) * chars / n]])
        .collect()
}

/// The fixed fields of every chunk of one stream.
pub struct ChunkMeta<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
}

impl ChunkMeta<'_> {
    fn event(&self, choices: Value, usage: Option<&Value>) -> Vec<u8> {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(u) = usage {
            c["usage"] = u.clone();
        }
        format!("data: {c}\n\n").into_bytes()
    }

    fn choice(delta: Value, finish: Value) -> Value {
        json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}])
    }

    /// The first event: the assistant role with empty content.
    pub fn role(&self) -> Vec<u8> {
        self.event(
            Self::choice(json!({"role": "assistant", "content": ""}), Value::Null),
            None,
        )
    }

    pub fn content(&self, piece: &str) -> Vec<u8> {
        self.event(Self::choice(json!({"content": piece}), Value::Null), None)
    }

    /// The last choice event: an empty delta with `finish_reason: "stop"`.
    pub fn finish(&self) -> Vec<u8> {
        self.finish_with("stop")
    }

    /// The last choice event with this `finish_reason` (`stop`, `tool_calls`).
    pub fn finish_with(&self, reason: &str) -> Vec<u8> {
        self.event(Self::choice(json!({}), json!(reason)), None)
    }

    /// The first event of a tool call: the assistant role, `content: null` and the call's id,
    /// type and function name with empty arguments.
    pub fn tool_call_start(&self, call_id: &str, name: &str) -> Vec<u8> {
        let delta = json!({"role": "assistant", "content": null, "tool_calls": [{
            "index": 0, "id": call_id, "type": "function",
            "function": {"name": name, "arguments": ""},
        }]});
        self.event(Self::choice(delta, Value::Null), None)
    }

    /// A fragment of the tool call's arguments.
    pub fn tool_call_arguments(&self, piece: &str) -> Vec<u8> {
        let delta = json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]});
        self.event(Self::choice(delta, Value::Null), None)
    }

    /// The usage event sent when the request had `stream_options.include_usage`.
    pub fn usage(&self, usage: &Value) -> Vec<u8> {
        self.event(json!([]), Some(usage))
    }
}

/// The end-of-stream event.
pub const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

/// A mid-stream failure as an SSE event with an OpenAI-style error object.
pub fn error_event(message: &str) -> Vec<u8> {
    let e = json!({"error": {
        "message": message, "type": "server_error", "param": null, "code": "mock_stream_failure",
    }});
    format!("data: {e}\n\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives() {
        assert_eq!(directive_number("gpt-delay-250", "delay-"), Some(250));
        assert_eq!(directive_number("x-status-503-y", "status-"), Some(503));
        assert_eq!(directive_number("gpt-4o", "delay-"), None);
        assert_eq!(directive_number("delay-", "delay-"), None);
        assert_eq!(directive_number("chunks-4-chunkdelay-100", "delay-"), None);
        assert_eq!(
            directive_number("chunks-4-chunkdelay-100", "chunkdelay-"),
            Some(100)
        );
        assert_eq!(
            directive_number("chunks-4-chunkdelay-100-delay-7", "delay-"),
            Some(7)
        );
        assert_eq!(
            directive_number("up/chunks-8-failafter-3", "chunks-"),
            Some(8)
        );
        assert_eq!(directive_number("delay-5", "delay-"), Some(5));
    }

    #[test]
    fn text_of_messages() {
        let m = json!({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]});
        assert_eq!(message_text(&m), "ab");
        assert_eq!(message_text(&json!({"content": "hi"})), "hi");
        assert_eq!(message_text(&json!({"content": null})), "");
    }

    #[test]
    fn chat_answers() {
        let tools = json!([
            {"type": "function", "function": {"name": "lookup", "parameters": {}}},
            {"type": "function", "function": {"name": "shell", "parameters": {
                "type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}}},
        ]);
        let ask = |text: &str, extra: Value| {
            let mut body = json!({"model": "m", "tools": tools,
                                  "messages": [{"role": "user", "content": text}]});
            if let Value::Object(extra) = extra {
                for (k, v) in extra {
                    body[k] = v;
                }
            }
            body
        };
        assert_eq!(
            chat_answer(&ask("hello", json!(null)), "x"),
            ChatAnswer::Text("mock: hello".into())
        );
        assert_eq!(
            chat_answer(&ask("use tool shell", json!(null)), "ls"),
            ChatAnswer::ToolCall {
                name: "shell".into(),
                arguments: r#"{"cmd":"ls"}"#.into()
            }
        );
        assert_eq!(
            chat_answer(&ask("USE TOOL", json!(null)), "ls"),
            ChatAnswer::ToolCall {
                name: "lookup".into(),
                arguments: "{}".into()
            }
        );
        // after the tool ran: its result echoed, not a second call
        let mut body = ask("use tool shell", json!(null));
        let msgs = body["messages"].as_array_mut().unwrap();
        msgs.push(json!({"role": "assistant", "content": null, "tool_calls": []}));
        msgs.push(json!({"role": "tool", "tool_call_id": "call_1", "content": "hello"}));
        assert_eq!(
            chat_answer(&body, "x"),
            ChatAnswer::Text("mock: tool result: hello".into())
        );
        let schema = json!({"response_format": {"type": "json_schema", "json_schema": {
            "name": "s", "strict": true, "schema": {"type": "object",
            "properties": {"city": {"type": "string"}, "n": {"type": "integer"}, "opt": {"type": "string"}},
            "required": ["city", "n"]}}}});
        assert_eq!(
            chat_answer(&ask("weather?", schema.clone()), "Paris"),
            ChatAnswer::Text(r#"{"city":"Paris","n":1}"#.into())
        );
        // the trigger wins over the schema; no tools: the schema
        assert!(matches!(
            chat_answer(&ask("use tool", schema.clone()), "x"),
            ChatAnswer::ToolCall { .. }
        ));
        let mut no_tools = ask("use tool", schema);
        no_tools["tools"] = json!([]);
        assert_eq!(
            chat_answer(&no_tools, "x"),
            ChatAnswer::Text(r#"{"city":"x","n":1}"#.into())
        );
    }

    #[test]
    fn split_covers_the_text_in_n_pieces() {
        for (text, n) in [
            ("mock: relay me", 4),
            ("héllo wörld", 3),
            ("ab", 5),
            ("", 2),
            ("x", 1),
        ] {
            let parts = split_even(text, n);
            assert_eq!(parts.len(), n);
            assert_eq!(parts.concat(), text);
            let lens: Vec<usize> = parts.iter().map(|p| p.chars().count()).collect();
            let (lo, hi) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
            assert!(hi - lo <= 1, "{lens:?}");
        }
        assert_eq!(split_even("abcdef", 0), vec!["abcdef"]);
    }

    #[test]
    fn chunk_events_are_openai_shaped() {
        let m = ChunkMeta {
            id: "chatcmpl-1",
            created: 7,
            model: "m",
        };
        let parse = |e: Vec<u8>| -> Value {
            let s = String::from_utf8(e).unwrap();
            let body = s
                .strip_prefix("data: ")
                .unwrap()
                .strip_suffix("\n\n")
                .unwrap();
            serde_json::from_str(body).unwrap()
        };
        let role = parse(m.role());
        assert_eq!(role["object"], "chat.completion.chunk");
        assert_eq!(role["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(
            parse(m.content("hi"))["choices"][0]["delta"]["content"],
            "hi"
        );
        let fin = parse(m.finish());
        assert_eq!(fin["choices"][0]["finish_reason"], "stop");
        let usage = parse(m.usage(&json!({"total_tokens": 3})));
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 3);
        let start = parse(m.tool_call_start("call_1", "shell"));
        assert_eq!(start["choices"][0]["delta"]["content"], Value::Null);
        assert_eq!(
            start["choices"][0]["delta"]["tool_calls"][0],
            json!({"index": 0, "id": "call_1", "type": "function",
                   "function": {"name": "shell", "arguments": ""}})
        );
        let args = parse(m.tool_call_arguments("{\"a"));
        assert_eq!(
            args["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
            "{\"a"
        );
        assert_eq!(
            parse(m.finish_with("tool_calls"))["choices"][0]["finish_reason"],
            "tool_calls"
        );
        let err = String::from_utf8(error_event("boom")).unwrap();
        assert!(err.starts_with("data: {\"error\":{"));
    }
}

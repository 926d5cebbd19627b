//! What the mock answers on Anthropic's Messages API: the text and tool calls of a `message`, its
//! SSE event sequence (`message_start` ... `message_stop`), error bodies and their types by status,
//! the model list and the token count of a request.

use serde_json::{json, Value};

use crate::completion::message_text;
use crate::tools::{has_trigger, instance_of, pick_tool};

/// The `anthropic-version` the mock names in its docs; any value is accepted.
pub const API_VERSION: &str = "2023-06-01";

/// Anthropic's error `type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// An error body: `{"type":"error","error":{"type":...,"message":...},"request_id":...}`.
pub fn error_body(status: u16, message: &str, request_id: &str) -> Vec<u8> {
    let body = json!({
        "type": "error",
        "error": {"type": error_type(status), "message": message},
        "request_id": request_id,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Why a Messages request is invalid, in the API's words, or `None` when it can be answered.
/// `count_tokens` requests need no `max_tokens`.
pub fn invalid_request(body: &Value, needs_max_tokens: bool) -> Option<String> {
    let Some(obj) = body.as_object() else {
        return Some("The request body is not valid JSON.".to_string());
    };
    if !obj.get("model").is_some_and(Value::is_string) {
        return Some("model: Field required".to_string());
    }
    if !obj.get("messages").is_some_and(Value::is_array) {
        return Some("messages: Field required".to_string());
    }
    if needs_max_tokens && !obj.get("max_tokens").is_some_and(Value::is_u64) {
        return Some("max_tokens: Field required".to_string());
    }
    None
}

/// The text of `system` (a string or text blocks) and of every message (text blocks, tool inputs
/// and results), in characters.
fn prompt_chars(body: &Value) -> usize {
    let system = match body.get("system") {
        Some(Value::String(s)) => s.chars().count(),
        Some(blocks @ Value::Array(_)) => {
            message_text(&json!({ "content": blocks })).chars().count()
        }
        _ => 0,
    };
    let messages: usize = body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(message_chars)
        .sum();
    system + messages
}

fn message_chars(message: &Value) -> usize {
    match message.get("content") {
        Some(Value::String(s)) => s.chars().count(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .map(|b| match b.get("type").and_then(Value::as_str) {
                Some("tool_use") => b.get("input").map_or(0, |i| i.to_string().chars().count()),
                Some("tool_result") => tool_result_text(b).chars().count(),
                _ => b
                    .get("text")
                    .and_then(Value::as_str)
                    .map_or(0, |t| t.chars().count()),
            })
            .sum(),
        _ => 0,
    }
}

/// Input tokens of a request as the mock counts them: a quarter of its characters, rounded up.
/// `count_tokens` and `usage.input_tokens` of the answer to the same body agree.
pub fn input_tokens(body: &Value) -> u64 {
    prompt_chars(body).div_ceil(4) as u64
}

/// A `tool_result` block's text: a string `content`, or its text blocks.
fn tool_result_text(block: &Value) -> String {
    match block.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(parts @ Value::Array(_)) => message_text(&json!({ "content": parts })),
        _ => String::new(),
    }
}

/// What the mock answers a Messages request with.
#[derive(Debug, PartialEq)]
pub enum Answer {
    Text(String),
    /// A call of the named tool with this input.
    ToolUse {
        name: String,
        input: Value,
    },
}

/// The answer to a valid Messages request. The last message with `role: "user"` decides: when it
/// holds `tool_result` blocks, text quoting their results; when it contains [`crate::tools::TOOL_TRIGGER`]
/// (or `tool_choice` forces a tool) and the request has `tools`, a `tool_use` of the forced tool,
/// else the tool it names, else the first, with an input built from that tool's `input_schema`
/// (strings set to `tool_text`); else `mock: <its text>`.
pub fn answer(body: &Value, tool_text: &str) -> Answer {
    let last_user = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|ms| {
            ms.iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        });
    let blocks = last_user
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array);
    let results: Vec<String> = blocks
        .into_iter()
        .flatten()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        .map(tool_result_text)
        .collect();
    if !results.is_empty() {
        return Answer::Text(format!("mock: tool result: {}", results.join("\n")));
    }
    let text = last_user.map(message_text).unwrap_or_default();
    let tools: Vec<&Value> = body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| t.get("name").and_then(Value::as_str).is_some())
        .collect();
    // `tool_choice` `{type: tool, name}` forces that tool, `{type: any}` some tool.
    let forced = match body.pointer("/tool_choice/type").and_then(Value::as_str) {
        Some("tool") => body.pointer("/tool_choice/name").and_then(Value::as_str),
        Some("any") => Some(""),
        _ => None,
    };
    if has_trigger(&text) || forced.is_some() {
        let names: Vec<&str> = tools
            .iter()
            .filter_map(|t| t.get("name").and_then(Value::as_str))
            .collect();
        let chosen = forced
            .filter(|f| names.contains(f))
            .or_else(|| pick_tool(&names, &text));
        if let Some(name) = chosen {
            let schema = tools
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
                .and_then(|t| t.get("input_schema"))
                .unwrap_or(&Value::Null);
            let input = match instance_of(schema, tool_text) {
                v @ Value::Object(_) => v,
                _ => json!({}),
            };
            return Answer::ToolUse {
                name: name.to_string(),
                input,
            };
        }
    }
    Answer::Text(format!("mock: {text}"))
}

/// Output tokens of an answer: a quarter of its characters (the tool input's JSON), rounded up.
pub fn output_tokens(answer: &Answer) -> u64 {
    let chars = match answer {
        Answer::Text(t) => t.chars().count(),
        Answer::ToolUse { input, .. } => input.to_string().chars().count(),
    };
    chars.div_ceil(4) as u64
}

/// One SSE event: `event: <name>` and its JSON data, whose `"type":"<name>"` comes first as the
/// API writes it (some clients and load tools classify events by the start of the line).
pub fn event(name: &str, data: &Value) -> Vec<u8> {
    let mut rest = data.clone();
    if let Some(obj) = rest.as_object_mut() {
        obj.remove("type");
    }
    let rest = rest.to_string();
    let fields = rest
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .unwrap_or("");
    let sep = if fields.is_empty() { "" } else { "," };
    format!(
        "event: {name}\ndata: {{\"type\":{}{sep}{fields}}}\n\n",
        Value::from(name)
    )
    .into_bytes()
}

/// A mid-stream failure: `event: error` with an `overloaded_error`, as the API sends one.
pub fn error_event(message: &str) -> Vec<u8> {
    event(
        "error",
        &json!({"type": "error", "error": {"type": "overloaded_error", "message": message}}),
    )
}

/// The fixed fields of one message.
pub struct MessageMeta<'a> {
    /// `msg_...`
    pub id: &'a str,
    pub model: &'a str,
    pub input_tokens: u64,
}

impl MessageMeta<'_> {
    fn usage(&self, output_tokens: u64) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
        })
    }

    /// The whole `message` object; `tool_id` (`toolu_...`) names a tool call.
    pub fn message(&self, answer: &Answer, tool_id: &str) -> Value {
        let (content, stop) = match answer {
            Answer::Text(t) => (json!([{"type": "text", "text": t}]), "end_turn"),
            Answer::ToolUse { name, input } => (
                json!([{"type": "tool_use", "id": tool_id, "name": name, "input": input}]),
                "tool_use",
            ),
        };
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": null,
            "usage": self.usage(output_tokens(answer)),
        })
    }

    /// The events before the first delta: `message_start` (empty content, one output token so
    /// far), `content_block_start` of block 0 (empty text, or the tool call with `input: {}`) and a
    /// `ping`.
    pub fn head(&self, answer: &Answer, tool_id: &str) -> Vec<u8> {
        let start = json!({"type": "message_start", "message": {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": null, "stop_sequence": null, "usage": self.usage(1),
        }});
        let block = match answer {
            Answer::Text(_) => json!({"type": "text", "text": ""}),
            Answer::ToolUse { name, .. } => {
                json!({"type": "tool_use", "id": tool_id, "name": name, "input": {}})
            }
        };
        let mut out = event("message_start", &start);
        out.extend(event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": block}),
        ));
        out.extend(event("ping", &json!({"type": "ping"})));
        out
    }

    /// One `content_block_delta` of block 0: a `text_delta`, or an `input_json_delta` fragment.
    pub fn delta(&self, answer: &Answer, piece: &str) -> Vec<u8> {
        let delta = match answer {
            Answer::Text(_) => json!({"type": "text_delta", "text": piece}),
            Answer::ToolUse { .. } => json!({"type": "input_json_delta", "partial_json": piece}),
        };
        event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        )
    }

    /// `content_block_stop`, `message_delta` (stop reason, output tokens) and `message_stop`.
    pub fn tail(&self, answer: &Answer) -> Vec<u8> {
        let stop = match answer {
            Answer::Text(_) => "end_turn",
            Answer::ToolUse { .. } => "tool_use",
        };
        let mut out = event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        );
        out.extend(event(
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": null},
                    "usage": {"output_tokens": output_tokens(answer)}}),
        ));
        out.extend(event("message_stop", &json!({"type": "message_stop"})));
        out
    }
}

/// `GET /v1/models` in Anthropic's shape.
pub fn models() -> Value {
    let model = |id: &str, name: &str| {
        json!({"type": "model", "id": id, "display_name": name,
               "created_at": "2025-01-01T00:00:00Z"})
    };
    json!({
        "data": [
            model("mock-claude-sonnet", "Mock Claude Sonnet"),
            model("mock-claude-haiku", "Mock Claude Haiku"),
        ],
        "has_more": false,
        "first_id": "mock-claude-sonnet",
        "last_id": "mock-claude-haiku",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(bytes: &[u8]) -> Vec<(String, Value)> {
        String::from_utf8(bytes.to_vec())
            .unwrap()
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once('\n').unwrap();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                let name = name.strip_prefix("event: ").unwrap().to_string();
                assert_eq!(
                    data["type"],
                    name.as_str(),
                    "event name and data type agree"
                );
                (name, data)
            })
            .collect()
    }

    fn request(last: Value, tools: Value) -> Value {
        json!({"model": "m", "max_tokens": 10, "tools": tools,
               "messages": [{"role": "user", "content": "hi"}, last]})
    }

    #[test]
    fn errors_by_status() {
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (503, "api_error"),
            (529, "overloaded_error"),
            (418, "invalid_request_error"),
        ] {
            let body: Value = serde_json::from_slice(&error_body(status, "m", "req_1")).unwrap();
            assert_eq!(body["type"], "error");
            assert_eq!(body["error"]["type"], kind, "{status}");
            assert_eq!(body["error"]["message"], "m");
            assert_eq!(body["request_id"], "req_1");
        }
    }

    #[test]
    fn validation_names_the_missing_field() {
        let ok = json!({"model": "m", "max_tokens": 5, "messages": []});
        assert_eq!(invalid_request(&ok, true), None);
        let no_max = json!({"model": "m", "messages": []});
        assert_eq!(
            invalid_request(&no_max, true).as_deref(),
            Some("max_tokens: Field required")
        );
        assert_eq!(invalid_request(&no_max, false), None);
        assert!(invalid_request(&json!({"messages": []}), true)
            .unwrap()
            .starts_with("model:"));
        assert!(
            invalid_request(&json!({"model": "m", "max_tokens": 1}), true)
                .unwrap()
                .starts_with("messages:")
        );
        assert!(invalid_request(&json!([1]), true).is_some());
    }

    #[test]
    fn text_tool_use_and_tool_result() {
        let tools = json!([
            {"name": "Agent", "input_schema": {"type": "object", "properties": {}}},
            {"name": "Bash", "input_schema": {"type": "object",
                "properties": {"command": {"type": "string"}, "timeout": {"type": "number"}},
                "required": ["command"]}},
        ]);
        let plain = request(json!({"role": "user", "content": "hello"}), tools.clone());
        assert_eq!(answer(&plain, "x"), Answer::Text("mock: hello".into()));
        let call = request(
            json!({"role": "user", "content": [{"type": "text", "text": "please use tool Bash"}]}),
            tools.clone(),
        );
        assert_eq!(
            answer(&call, "echo hi"),
            Answer::ToolUse {
                name: "Bash".into(),
                input: json!({"command": "echo hi"})
            }
        );
        let first = request(
            json!({"role": "user", "content": "use tool"}),
            tools.clone(),
        );
        assert!(matches!(answer(&first, "x"), Answer::ToolUse { name, .. } if name == "Agent"));
        // the trigger without tools is plain text
        let no_tools = request(json!({"role": "user", "content": "use tool"}), json!(null));
        assert_eq!(
            answer(&no_tools, "x"),
            Answer::Text("mock: use tool".into())
        );
        // a tool result wins over a trigger earlier in the conversation; a system message after it
        // (Claude Code sends one) does not hide the last user message
        let mut result = request(
            json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "hello\n"},
                {"type": "tool_result", "tool_use_id": "toolu_2",
                 "content": [{"type": "text", "text": "world"}]}]}),
            tools,
        );
        result["messages"]
            .as_array_mut()
            .unwrap()
            .push(json!({"role": "system", "content": "context"}));
        assert_eq!(
            answer(&result, "x"),
            Answer::Text("mock: tool result: hello\n\nworld".into())
        );
    }

    #[test]
    fn message_and_stream_shapes() {
        let meta = MessageMeta {
            id: "msg_1",
            model: "m",
            input_tokens: 7,
        };
        let text = Answer::Text("mock: hi".into());
        let m = meta.message(&text, "toolu_1");
        assert_eq!(m["type"], "message");
        assert_eq!(m["role"], "assistant");
        assert_eq!(m["content"][0], json!({"type": "text", "text": "mock: hi"}));
        assert_eq!(m["stop_reason"], "end_turn");
        assert_eq!(m["stop_sequence"], Value::Null);
        assert_eq!(
            m["usage"],
            json!({"input_tokens": 7, "cache_creation_input_tokens": 0,
                   "cache_read_input_tokens": 0, "output_tokens": 2})
        );
        let mut stream = meta.head(&text, "toolu_1");
        stream.extend(meta.delta(&text, "mock: "));
        stream.extend(meta.delta(&text, "hi"));
        stream.extend(meta.tail(&text));
        let evs = events(&stream);
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(evs[0].1["message"]["content"], json!([]));
        assert_eq!(evs[0].1["message"]["usage"]["input_tokens"], 7);
        assert_eq!(
            evs[1].1["content_block"],
            json!({"type": "text", "text": ""})
        );
        assert_eq!(
            evs[4].1["delta"],
            json!({"type": "text_delta", "text": "hi"})
        );
        assert_eq!(evs[6].1["delta"]["stop_reason"], "end_turn");
        assert_eq!(evs[6].1["usage"]["output_tokens"], 2);

        let tool = Answer::ToolUse {
            name: "Bash".into(),
            input: json!({"command": "x"}),
        };
        let m = meta.message(&tool, "toolu_9");
        assert_eq!(
            m["content"][0],
            json!({"type": "tool_use", "id": "toolu_9", "name": "Bash", "input": {"command": "x"}})
        );
        assert_eq!(m["stop_reason"], "tool_use");
        let evs = events(&meta.head(&tool, "toolu_9"));
        assert_eq!(
            evs[1].1["content_block"],
            json!({"type": "tool_use", "id": "toolu_9", "name": "Bash", "input": {}})
        );
        let evs = events(&meta.delta(&tool, "{\"com"));
        assert_eq!(
            evs[0].1["delta"],
            json!({"type": "input_json_delta", "partial_json": "{\"com"})
        );
        let evs = events(&meta.tail(&tool));
        assert_eq!(evs[1].1["delta"]["stop_reason"], "tool_use");
        let evs = events(&error_event("boom"));
        assert_eq!(evs[0].1["error"]["type"], "overloaded_error");
        // the type leads every event's data
        let raw = String::from_utf8(error_event("boom")).unwrap();
        assert!(
            raw.starts_with("event: error\ndata: {\"type\":\"error\",\"error\":{"),
            "{raw}"
        );
        let raw = String::from_utf8(meta.tail(&tool)).unwrap();
        assert!(raw.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    }

    #[test]
    fn token_counts() {
        let body = json!({
            "system": [{"type": "text", "text": "abcd"}],
            "messages": [
                {"role": "user", "content": "12345678"},
                {"role": "assistant", "content": [{"type": "tool_use", "input": {"a": 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "content": "xy"}]}
            ]
        });
        // 4 + 8 + len({"a":1}) = 7 + 2 = 21 chars -> 6 tokens
        assert_eq!(input_tokens(&body), 6);
        assert_eq!(input_tokens(&json!({"system": "abc", "messages": []})), 1);
    }

    #[test]
    fn model_list_shape() {
        let m = models();
        assert_eq!(m["has_more"], false);
        assert_eq!(m["data"][0]["type"], "model");
        assert_eq!(m["first_id"], m["data"][0]["id"]);
        assert_eq!(m["last_id"], m["data"][1]["id"]);
    }
}

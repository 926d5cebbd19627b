//! What the mock answers on Anthropic's Messages API: the text and tool calls of a `message`, its
//! SSE event sequence (`message_start` ... `message_stop`), error bodies and their types by status,
//! the model list and the token count of a request; with extended thinking enabled, a signed
//! `thinking` block (or a `redacted_thinking` one) before the answer, and the API's rules for the
//! thinking blocks a client sends back (signatures checked, and the last assistant turn of a tool
//! round trip must start with its thinking).

use base64::Engine as _;
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

/// The thinking the mock writes before its answer (thinking tokens count as output).
pub const THINKING_TEXT: &str = "mock: thinking about the request";
/// The prompt text that makes Anthropic answer with a `redacted_thinking` block (documented for
/// testing how clients handle one); the mock does the same.
pub const REDACTED_THINKING_TRIGGER: &str = "ANTHROPIC_MAGIC_STRING_TRIGGER_REDACTED_THINKING_46C9A13E193C177646C7398A98432ECCCE4C1253D5E2D82641AC0E52CC2876CB";

/// A thinking block the mock writes before its answer.
#[derive(Debug, PartialEq)]
pub enum Thinking {
    /// `{"type":"thinking","thinking":...,"signature":...}` (the text empty with
    /// `display: "omitted"`).
    Signed { text: String, signature: String },
    /// `{"type":"redacted_thinking","data":...}`.
    Redacted { data: String },
}

impl Thinking {
    fn block(&self) -> Value {
        match self {
            Thinking::Signed { text, signature } => {
                json!({"type": "thinking", "thinking": text, "signature": signature})
            }
            Thinking::Redacted { data } => json!({"type": "redacted_thinking", "data": data}),
        }
    }

    fn output_tokens(&self) -> u64 {
        match self {
            Thinking::Signed { text, .. } => text.chars().count().div_ceil(4) as u64,
            Thinking::Redacted { .. } => 0,
        }
    }
}

/// What the mock signs a thinking block's text (or a redacted block) with: base64 of a digest of
/// the kind and the text, so a block sent back with its text or signature changed is refused, as
/// Anthropic refuses one.
fn seal(kind: &str, text: &str) -> String {
    // FNV-1a, 64 bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in kind.bytes().chain([0]).chain(text.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let bytes = format!("mock-{kind}:{h:016x}");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Whether the request enables extended thinking (`thinking.type` `enabled` or `adaptive`).
pub fn thinking_enabled(body: &Value) -> bool {
    matches!(
        body.pointer("/thinking/type").and_then(Value::as_str),
        Some("enabled" | "adaptive")
    )
}

/// The thinking block of the answer to `body`: none unless thinking is enabled; redacted when
/// the last user message holds [`REDACTED_THINKING_TRIGGER`]; else signed, its text empty when
/// `thinking.display` is `omitted`.
pub fn thinking(body: &Value) -> Option<Thinking> {
    if !thinking_enabled(body) {
        return None;
    }
    let last_user = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|ms| {
            ms.iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        });
    if last_user.is_some_and(|m| message_text(m).contains(REDACTED_THINKING_TRIGGER)) {
        return Some(Thinking::Redacted {
            data: seal("redacted_thinking", ""),
        });
    }
    let omitted = body.pointer("/thinking/display").and_then(Value::as_str) == Some("omitted");
    let text = if omitted { "" } else { THINKING_TEXT };
    Some(Thinking::Signed {
        text: text.to_string(),
        signature: seal("thinking", text),
    })
}

/// Why the thinking blocks of a request are refused, in the API's words (400
/// `invalid_request_error`), or `None`: every `thinking` block must carry the signature the mock
/// gave its text, every `redacted_thinking` block the data it gave; and with thinking enabled,
/// when the last user message returns tool results, the last assistant message (the one with
/// the calls) must start with its thinking block.
pub fn thinking_error(body: &Value) -> Option<String> {
    let messages = body.get("messages").and_then(Value::as_array)?;
    for (i, m) in messages.iter().enumerate() {
        let Some(blocks) = m.get("content").and_then(Value::as_array) else {
            continue;
        };
        for (j, b) in blocks.iter().enumerate() {
            let field = |name: &str| b.get(name).and_then(Value::as_str).unwrap_or_default();
            match b.get("type").and_then(Value::as_str) {
                Some("thinking") if field("signature") != seal("thinking", field("thinking")) => {
                    return Some(format!(
                        "messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
                    ))
                }
                Some("redacted_thinking") if field("data") != seal("redacted_thinking", "") => {
                    return Some(format!(
                        "messages.{i}.content.{j}: Invalid `data` in `redacted_thinking` block"
                    ))
                }
                _ => {}
            }
        }
    }
    if !thinking_enabled(body) {
        return None;
    }
    let role = |m: &Value| m.get("role").and_then(Value::as_str).map(str::to_owned);
    let last_user = messages
        .iter()
        .rposition(|m| role(m).as_deref() == Some("user"))?;
    let returns_results = messages[last_user]
        .get("content")
        .and_then(Value::as_array)
        .is_some_and(|bs| {
            bs.iter()
                .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        });
    if !returns_results {
        return None;
    }
    let at = messages[..last_user]
        .iter()
        .rposition(|m| role(m).as_deref() == Some("assistant"))?;
    let first = match messages[at].get("content") {
        Some(Value::Array(blocks)) => blocks
            .first()
            .and_then(|b| b.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("nothing")
            .to_string(),
        _ => "text".to_string(),
    };
    if matches!(first.as_str(), "thinking" | "redacted_thinking") {
        return None;
    }
    Some(format!(
        "messages.{at}.content.0.type: Expected `thinking` or `redacted_thinking`, but found \
         `{first}`. When `thinking` is enabled, a final `assistant` message must start with a \
         thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). \
         We recommend you include thinking blocks from previous turns. To avoid this \
         requirement, disable `thinking`. Please consult our documentation at \
         https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
    ))
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
    /// The thinking block before the answer (block 0; the answer is then block 1).
    pub thinking: Option<&'a Thinking>,
}

impl MessageMeta<'_> {
    /// The index of the answer's block.
    fn answer_index(&self) -> u64 {
        u64::from(self.thinking.is_some())
    }

    /// Output tokens of the answer and its thinking.
    fn output_tokens(&self, answer: &Answer) -> u64 {
        output_tokens(answer) + self.thinking.map_or(0, Thinking::output_tokens)
    }

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
        let (block, stop) = match answer {
            Answer::Text(t) => (json!({"type": "text", "text": t}), "end_turn"),
            Answer::ToolUse { name, input } => (
                json!({"type": "tool_use", "id": tool_id, "name": name, "input": input}),
                "tool_use",
            ),
        };
        let content: Vec<Value> = self
            .thinking
            .map(Thinking::block)
            .into_iter()
            .chain([block])
            .collect();
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": null,
            "usage": self.usage(self.output_tokens(answer)),
        })
    }

    /// The events before the first delta: `message_start` (empty content, one output token so
    /// far); with thinking, its whole block 0 (a signed block's `content_block_start` with empty
    /// text and signature, a `thinking_delta` with its text unless empty, a `signature_delta` and
    /// `content_block_stop`; a redacted block's start and stop); then `content_block_start` of the
    /// answer's block (empty text, or the tool call with `input: {}`) and a `ping`.
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
        if let Some(thinking) = self.thinking {
            out.extend(thinking_events(thinking));
        }
        out.extend(event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": self.answer_index(),
                    "content_block": block}),
        ));
        out.extend(event("ping", &json!({"type": "ping"})));
        out
    }

    /// One `content_block_delta` of the answer's block: a `text_delta`, or an
    /// `input_json_delta` fragment.
    pub fn delta(&self, answer: &Answer, piece: &str) -> Vec<u8> {
        let delta = match answer {
            Answer::Text(_) => json!({"type": "text_delta", "text": piece}),
            Answer::ToolUse { .. } => json!({"type": "input_json_delta", "partial_json": piece}),
        };
        event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": self.answer_index(), "delta": delta}),
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
            &json!({"type": "content_block_stop", "index": self.answer_index()}),
        );
        out.extend(event(
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": null},
                    "usage": {"output_tokens": self.output_tokens(answer)}}),
        ));
        out.extend(event("message_stop", &json!({"type": "message_stop"})));
        out
    }
}

/// A thinking block streamed whole as block 0, as the API streams one.
fn thinking_events(thinking: &Thinking) -> Vec<u8> {
    let start = |block: Value| {
        event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": block}),
        )
    };
    let delta = |delta: Value| {
        event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        )
    };
    let mut out = Vec::new();
    match thinking {
        Thinking::Signed { text, signature } => {
            out.extend(start(
                json!({"type": "thinking", "thinking": "", "signature": ""}),
            ));
            if !text.is_empty() {
                out.extend(delta(json!({"type": "thinking_delta", "thinking": text})));
            }
            out.extend(delta(
                json!({"type": "signature_delta", "signature": signature}),
            ));
        }
        Thinking::Redacted { .. } => out.extend(start(thinking.block())),
    }
    out.extend(event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    out
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
            thinking: None,
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

    /// A tool round trip's second request: the assistant turn `assistant` (its calls), then the
    /// results, with thinking enabled.
    fn tool_turn(assistant: Value) -> Value {
        json!({"model": "m", "max_tokens": 2048, "thinking": {"type": "enabled", "budget_tokens": 1024},
               "messages": [
                   {"role": "user", "content": "use tool"},
                   {"role": "assistant", "content": assistant},
                   {"role": "user", "content": [
                       {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]}]})
    }

    #[test]
    fn thinking_comes_first_and_must_come_back_signed() {
        let call = json!({"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}});
        let plain = json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(thinking(&plain), None);
        let mut asked = plain.clone();
        asked["thinking"] = json!({"type": "adaptive"});
        let Some(Thinking::Signed { text, signature }) = thinking(&asked) else {
            panic!("{:?}", thinking(&asked));
        };
        assert_eq!(text, THINKING_TEXT);
        let block = json!({"type": "thinking", "thinking": text, "signature": signature});
        // Sent back unchanged before the calls: accepted.
        assert_eq!(
            thinking_error(&tool_turn(json!([block.clone(), call.clone()]))),
            None
        );
        // Without it, Anthropic's refusal.
        let e = thinking_error(&tool_turn(json!([call.clone()]))).unwrap();
        assert!(
            e.starts_with("messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `tool_use`."),
            "{e}"
        );
        // Changed text or signature: refused wherever it is.
        let mut forged = block.clone();
        forged["thinking"] = json!("something else");
        let e = thinking_error(&tool_turn(json!([forged, call.clone()]))).unwrap();
        assert_eq!(
            e,
            "messages.1.content.0: Invalid `signature` in `thinking` block"
        );
        let mut unsigned = block.clone();
        unsigned["signature"] = json!("");
        assert!(thinking_error(&tool_turn(json!([unsigned, call.clone()]))).is_some());
        // With thinking off, no thinking block is required.
        let mut off = tool_turn(json!([call.clone()]));
        off["thinking"] = json!({"type": "disabled"});
        assert_eq!(thinking_error(&off), None);
        // `display: omitted`: empty text, still signed.
        asked["thinking"]["display"] = json!("omitted");
        let Some(Thinking::Signed { text, signature }) = thinking(&asked) else {
            panic!();
        };
        assert!(text.is_empty());
        let block = json!({"type": "thinking", "thinking": "", "signature": signature});
        assert_eq!(
            thinking_error(&tool_turn(json!([block, call.clone()]))),
            None
        );
        // The test string: a redacted block, whose data must come back as given.
        asked["messages"][0]["content"] = json!(REDACTED_THINKING_TRIGGER);
        let Some(Thinking::Redacted { data }) = thinking(&asked) else {
            panic!();
        };
        let block = json!({"type": "redacted_thinking", "data": data});
        assert_eq!(
            thinking_error(&tool_turn(json!([block, call.clone()]))),
            None
        );
        let block = json!({"type": "redacted_thinking", "data": "forged"});
        let e = thinking_error(&tool_turn(json!([block, call]))).unwrap();
        assert_eq!(
            e,
            "messages.1.content.0: Invalid `data` in `redacted_thinking` block"
        );
    }

    #[test]
    fn thinking_is_block_zero_whole_and_streamed() {
        let thinking = Thinking::Signed {
            text: "hmm".into(),
            signature: "c2ln".into(),
        };
        let meta = MessageMeta {
            id: "msg_1",
            model: "m",
            input_tokens: 7,
            thinking: Some(&thinking),
        };
        let text = Answer::Text("mock: hi".into());
        let m = meta.message(&text, "toolu_1");
        assert_eq!(
            m["content"],
            json!([{"type": "thinking", "thinking": "hmm", "signature": "c2ln"},
                   {"type": "text", "text": "mock: hi"}])
        );
        // "hmm" is one more output token.
        assert_eq!(m["usage"]["output_tokens"], 3);
        let mut stream = meta.head(&text, "toolu_1");
        stream.extend(meta.delta(&text, "mock: hi"));
        stream.extend(meta.tail(&text));
        let evs = events(&stream);
        let shape: Vec<(String, Value)> = evs
            .iter()
            .map(|(n, v)| (n.clone(), v["index"].clone()))
            .collect();
        let at = |n: &str, i: Value| (n.to_string(), i);
        assert_eq!(
            shape,
            [
                at("message_start", Value::Null),
                at("content_block_start", json!(0)),
                at("content_block_delta", json!(0)),
                at("content_block_delta", json!(0)),
                at("content_block_stop", json!(0)),
                at("content_block_start", json!(1)),
                at("ping", Value::Null),
                at("content_block_delta", json!(1)),
                at("content_block_stop", json!(1)),
                at("message_delta", Value::Null),
                at("message_stop", Value::Null),
            ]
        );
        assert_eq!(
            evs[1].1["content_block"],
            json!({"type": "thinking", "thinking": "", "signature": ""})
        );
        assert_eq!(
            evs[2].1["delta"],
            json!({"type": "thinking_delta", "thinking": "hmm"})
        );
        assert_eq!(
            evs[3].1["delta"],
            json!({"type": "signature_delta", "signature": "c2ln"})
        );
        let redacted = Thinking::Redacted {
            data: "ZW5j".into(),
        };
        let meta = MessageMeta {
            thinking: Some(&redacted),
            ..meta
        };
        let evs = events(&meta.head(&text, "toolu_1"));
        assert_eq!(
            evs[1].1["content_block"],
            json!({"type": "redacted_thinking", "data": "ZW5j"})
        );
        assert_eq!(evs[2].0, "content_block_stop");
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

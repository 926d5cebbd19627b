//! What the mock answers on OpenAI's Responses API (`POST /v1/responses`): the request seen as a
//! chat completion (so that the answer follows the same rules: text, a tool call on the trigger,
//! a tool result echoed, a `json_schema` object), the `response` object, and its SSE event
//! sequence (`response.created` ... `response.completed`, every event with its
//! `sequence_number`), shaped after the API reference's examples.

use serde_json::{json, Value};

use crate::completion::{message_text, ChatAnswer};

/// The request as a chat completion body: `instructions` and `system`/`developer` items as
/// system messages, `message` items as messages, `function_call` items as assistant tool calls,
/// `function_call_output` items as `tool` messages; function tools, `tool_choice` and
/// `text.format` in their chat forms. Items of other types are left out.
pub fn chat_view(body: &Value) -> Value {
    let mut messages = Vec::new();
    if let Some(instructions) = body.get("instructions").and_then(Value::as_str) {
        messages.push(json!({"role": "system", "content": instructions}));
    }
    match body.get("input") {
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => {
            for item in items {
                let ty = item
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("message");
                match ty {
                    "message" => messages.push(json!({
                        "role": item.get("role").cloned().unwrap_or(Value::Null),
                        "content": item.get("content").cloned().unwrap_or(Value::Null),
                    })),
                    "function_call" => messages.push(json!({
                        "role": "assistant",
                        "content": null,
                        "tool_calls": [{
                            "id": item.get("call_id"),
                            "type": "function",
                            "function": {"name": item.get("name"), "arguments": item.get("arguments")},
                        }],
                    })),
                    "function_call_output" => messages.push(json!({
                        "role": "tool",
                        "tool_call_id": item.get("call_id"),
                        "content": item.get("output").cloned().unwrap_or(Value::Null),
                    })),
                    _ => {}
                }
            }
        }
        _ => {}
    }
    let tools: Vec<Value> = body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| t.get("type").and_then(Value::as_str) == Some("function"))
        .map(|t| {
            json!({"type": "function", "function": {
                "name": t.get("name"), "parameters": t.get("parameters"),
            }})
        })
        .collect();
    let mut chat = json!({
        "model": body.get("model"),
        "messages": messages,
        "tools": tools,
    });
    match body.get("tool_choice") {
        Some(Value::String(mode)) => chat["tool_choice"] = json!(mode),
        Some(choice) if choice.get("type").and_then(Value::as_str) == Some("function") => {
            chat["tool_choice"] =
                json!({"type": "function", "function": {"name": choice.get("name")}});
        }
        _ => {}
    }
    if body.pointer("/text/format/type").and_then(Value::as_str) == Some("json_schema") {
        chat["response_format"] = json!({"type": "json_schema", "json_schema": {
            "name": body.pointer("/text/format/name"),
            "schema": body.pointer("/text/format/schema"),
        }});
    }
    chat
}

/// Characters of every text the model reads: instructions and the text of every message.
pub fn prompt_chars(chat: &Value) -> usize {
    chat.get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|m| message_text(m).chars().count())
        .sum()
}

/// The fixed fields of one answer.
pub struct ResponseMeta<'a> {
    /// `resp_...`.
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
    /// The id of the answer's one output item (`msg_...` or `fc_...`).
    pub item_id: &'a str,
    /// The `call_id` of a function call.
    pub call_id: &'a str,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl ResponseMeta<'_> {
    /// The output item: `in_progress` and empty as `output_item.added` shows it, or whole.
    pub fn item(&self, answer: &ChatAnswer, whole: bool) -> Value {
        let status = if whole { "completed" } else { "in_progress" };
        match answer {
            ChatAnswer::Text(text) => json!({
                "id": self.item_id, "type": "message", "status": status,
                "content": if whole { vec![Self::output_text(text)] } else { vec![] },
                "role": "assistant",
            }),
            ChatAnswer::ToolCall { name, arguments } => json!({
                "id": self.item_id, "type": "function_call", "status": status,
                "arguments": if whole { arguments.as_str() } else { "" },
                "call_id": self.call_id, "name": name,
            }),
        }
    }

    fn output_text(text: &str) -> Value {
        json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text})
    }

    fn usage(&self) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.input_tokens + self.output_tokens,
        })
    }

    /// The `response` object: `status` `in_progress` (no output, no usage), `completed` (with
    /// `output`) or `failed` (with `error`).
    pub fn response(&self, status: &str, output: Vec<Value>, error: Option<Value>) -> Value {
        let done = status == "completed";
        json!({
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "background": false, "completed_at": if done { Some(self.created) } else { None },
            "error": error, "incomplete_details": null, "instructions": null,
            "max_output_tokens": null, "model": self.model, "output": output,
            "parallel_tool_calls": true, "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null}, "store": false, "temperature": 1.0,
            "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
            "top_p": 1.0, "truncation": "disabled",
            "usage": if done { self.usage() } else { Value::Null },
            "user": null, "metadata": {},
        })
    }

    /// The whole answer to a request without `stream`.
    pub fn whole(&self, answer: &ChatAnswer) -> Value {
        self.response("completed", vec![self.item(answer, true)], None)
    }

    /// The events before the content: `response.created`, `response.in_progress`,
    /// `response.output_item.added` and, for text, `response.content_part.added`; numbered from
    /// 0. Returns them and how many there are.
    pub fn head(&self, answer: &ChatAnswer) -> (Vec<u8>, u64) {
        let mut out = Vec::new();
        let mut seq = 0;
        let started = self.response("in_progress", vec![], None);
        for ty in ["response.created", "response.in_progress"] {
            push(&mut out, ty, &mut seq, json!({"response": started}));
        }
        let item = self.item(answer, false);
        push(
            &mut out,
            "response.output_item.added",
            &mut seq,
            json!({"output_index": 0, "item": item}),
        );
        if let ChatAnswer::Text(_) = answer {
            push(
                &mut out,
                "response.content_part.added",
                &mut seq,
                json!({"item_id": self.item_id, "output_index": 0, "content_index": 0,
                       "part": Self::output_text("")}),
            );
        }
        (out, seq)
    }

    /// One content event (a text delta or a piece of the arguments), numbered `seq`.
    pub fn delta(&self, answer: &ChatAnswer, piece: &str, seq: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut seq = seq;
        match answer {
            ChatAnswer::Text(_) => push(
                &mut out,
                "response.output_text.delta",
                &mut seq,
                json!({"item_id": self.item_id, "output_index": 0, "content_index": 0,
                       "delta": piece, "logprobs": []}),
            ),
            ChatAnswer::ToolCall { .. } => push(
                &mut out,
                "response.function_call_arguments.delta",
                &mut seq,
                json!({"item_id": self.item_id, "output_index": 0, "delta": piece}),
            ),
        }
        out
    }

    /// The events after the content, numbered from `seq`: the done events of the item and
    /// `response.completed`.
    pub fn tail(&self, answer: &ChatAnswer, seq: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut seq = seq;
        match answer {
            ChatAnswer::Text(text) => {
                let at = json!({"item_id": self.item_id, "output_index": 0, "content_index": 0});
                let mut done = at.clone();
                done["text"] = json!(text);
                done["logprobs"] = json!([]);
                push(&mut out, "response.output_text.done", &mut seq, done);
                let mut part = at;
                part["part"] = Self::output_text(text);
                push(&mut out, "response.content_part.done", &mut seq, part);
            }
            ChatAnswer::ToolCall { name, arguments } => push(
                &mut out,
                "response.function_call_arguments.done",
                &mut seq,
                json!({"item_id": self.item_id, "output_index": 0, "name": name,
                       "arguments": arguments}),
            ),
        }
        let item = self.item(answer, true);
        push(
            &mut out,
            "response.output_item.done",
            &mut seq,
            json!({"output_index": 0, "item": item}),
        );
        push(
            &mut out,
            "response.completed",
            &mut seq,
            json!({"response": self.whole(answer)}),
        );
        out
    }

    /// A mid-stream failure numbered from `seq`: an `error` event as the API sends it (the error
    /// nested under `error`), then `response.failed`.
    pub fn failure(&self, message: &str, seq: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut seq = seq;
        let error = json!({"type": "server_error", "code": "server_error", "message": message,
                           "param": null});
        push(&mut out, "error", &mut seq, json!({"error": error}));
        let failed = self.response(
            "failed",
            vec![],
            Some(json!({"code": "server_error", "message": message})),
        );
        push(
            &mut out,
            "response.failed",
            &mut seq,
            json!({"response": failed}),
        );
        out
    }
}

/// Append event `ty` with `fields` (an object), `type` first and `sequence_number` last.
fn push(out: &mut Vec<u8>, ty: &str, seq: &mut u64, fields: Value) {
    let mut event = serde_json::Map::new();
    event.insert("type".into(), json!(ty));
    if let Value::Object(fields) = fields {
        event.extend(fields);
    }
    event.insert("sequence_number".into(), json!(*seq));
    *seq += 1;
    out.extend_from_slice(format!("event: {ty}\ndata: {}\n\n", Value::Object(event)).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::completion::chat_answer;

    fn meta() -> ResponseMeta<'static> {
        ResponseMeta {
            id: "resp_1",
            created: 1,
            model: "m",
            item_id: "msg_1",
            call_id: "call_1",
            input_tokens: 3,
            output_tokens: 2,
        }
    }

    /// (name, JSON) of each event.
    fn events(sse: &[u8]) -> Vec<(String, Value)> {
        String::from_utf8_lossy(sse)
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once("\ndata: ").unwrap();
                (
                    name["event: ".len()..].to_owned(),
                    serde_json::from_str(data).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn codex_tool_turns_follow_the_chat_rules() {
        let tools = json!([{"type": "function", "name": "exec_command",
            "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}},
            {"type": "web_search"}]);
        let first = json!({"model": "m", "tools": tools, "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "sys"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "use tool exec_command"}]},
        ]});
        let answer = chat_answer(&chat_view(&first), "echo hello");
        assert_eq!(
            answer,
            ChatAnswer::ToolCall {
                name: "exec_command".into(),
                arguments: "{\"cmd\":\"echo hello\"}".into()
            }
        );
        let mut second = first.clone();
        let input = second["input"].as_array_mut().unwrap();
        input.push(
            json!({"type": "function_call", "call_id": "call_1", "name": "exec_command",
                          "arguments": "{\"cmd\":\"echo hello\"}"}),
        );
        input.push(
            json!({"type": "function_call_output", "call_id": "call_1", "output": "hello\n"}),
        );
        assert_eq!(
            chat_answer(&chat_view(&second), "echo hello"),
            ChatAnswer::Text("mock: tool result: hello\n".into())
        );
        let plain = json!({"model": "m", "input": "hi", "instructions": "be brief"});
        assert_eq!(
            chat_answer(&chat_view(&plain), "x"),
            ChatAnswer::Text("mock: hi".into())
        );
    }

    #[test]
    fn streams_are_numbered_and_end_completed() {
        let m = meta();
        let answer = ChatAnswer::Text("mock: hi".into());
        let (mut sse, next) = m.head(&answer);
        sse.extend(m.delta(&answer, "mock: ", next));
        sse.extend(m.delta(&answer, "hi", next + 1));
        sse.extend(m.tail(&answer, next + 2));
        let evs = events(&sse);
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, (name, v)) in evs.iter().enumerate() {
            assert_eq!(
                (v["type"].as_str(), v["sequence_number"].as_u64()),
                (Some(name.as_str()), Some(i as u64))
            );
        }
        assert_eq!(
            evs[9].1["response"]["output"][0]["content"][0]["text"],
            "mock: hi"
        );
        assert_eq!(evs[9].1["response"]["usage"]["total_tokens"], 5);
        let failed = events(&m.failure("boom", 4));
        assert_eq!(failed[0].1["error"]["message"], "boom");
        assert_eq!(failed[1].1["response"]["status"], "failed");
        assert_eq!(failed[1].1["sequence_number"], 5);
    }
}

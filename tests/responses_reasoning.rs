//! Reasoning through a Responses client, end to end on the real binaries: an `anthropic`
//! provider on the bench mock's Messages API, which (as Anthropic does with extended thinking)
//! answers a signed thinking block before its tool call and refuses the tool result's turn unless
//! the assistant turn starts with that block, signature intact. The client asks
//! `include: ["reasoning.encrypted_content"]` and sends the output items back, as Codex does: the
//! reasoning item's `encrypted_content` (the gateway's envelope) carries the signature (or a
//! redacted block's data) there and back, whole and streamed. Without `include` no state is
//! written; an `encrypted_content` the gateway did not write is dropped.

mod common;

use common::*;
use serde_json::{json, Value};

const KEY: &str = "sk-anthropic-upstream";

fn start() -> (Mock, Gateway) {
    let mock = Mock::start(&["--tool-text", "echo hello"]);
    let config = format!(
        r#"{base}
[providers.anth]
type = "anthropic"
base_url = "http://{addr}"
keys = [{{ key = "env:ANTH_KEY" }}]
max_retries = 0
"#,
        base = base_config(),
        addr = mock.addr
    );
    let gw = Gateway::start_with_env(&config, &[("ANTH_KEY", KEY)]);
    (mock, gw)
}

/// A first turn that makes the mock think and call `Bash`.
fn first_turn(prompt: &str, include: bool, stream: bool) -> Value {
    let mut body = json!({
        "model": "anth/claude-test",
        "input": [{"role": "user", "content": prompt}],
        "tools": [{"type": "function", "name": "Bash", "parameters": {
            "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}],
        "reasoning": {"effort": "high"},
        "store": false,
        "stream": stream,
    });
    if include {
        body["include"] = json!(["reasoning.encrypted_content"]);
    }
    body
}

/// The next turn: the first turn's input, its output items and a result for each call.
fn next_turn(first: &Value, output: &[Value]) -> Value {
    let mut body = first.clone();
    let input = body["input"].as_array_mut().unwrap();
    input.extend(output.iter().cloned());
    for call in output.iter().filter(|i| i["type"] == "function_call") {
        input.push(json!({"type": "function_call_output", "call_id": call["call_id"], "output": "hello\n"}));
    }
    body
}

fn post(gw: &Gateway, body: &Value) -> Response {
    request(
        gw.api,
        "POST",
        "/v1/responses",
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
}

/// A streamed request's events: (event name, data) each.
fn post_stream(gw: &Gateway, body: &Value) -> Vec<(String, Value)> {
    let r = post(gw, body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    String::from_utf8(r.body)
        .unwrap()
        .split("\n\n")
        .filter(|e| e.contains("data: "))
        .map(|e| {
            let name = e
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or_default();
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            (name.to_string(), serde_json::from_str(data).unwrap())
        })
        .collect()
}

/// The reasoning items of an output.
fn reasoning(output: &[Value]) -> Vec<&Value> {
    output.iter().filter(|i| i["type"] == "reasoning").collect()
}

#[test]
fn signed_thinking_survives_a_tool_round_trip() {
    let (mock, gw) = start();
    let first = first_turn("use tool Bash", true, false);
    let r = post(&gw, &first);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let output = r.json()["output"].as_array().unwrap().clone();
    let kinds: Vec<&str> = output.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["reasoning", "function_call"], "{output:#?}");
    let item = &output[0];
    assert_eq!(
        item["summary"][0]["text"],
        "mock: thinking about the request"
    );
    let content = item["encrypted_content"].as_str().unwrap();
    assert!(content.starts_with("deepintshield:v1:"), "{content}");
    // Anthropic got thinking enabled.
    assert_eq!(mock.stats()["last_body"]["thinking"]["type"], "adaptive");

    // The next turn, as the client sends it: accepted, the thinking block back in place.
    let r = post(&gw, &next_turn(&first, &output));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let answer = r.json();
    assert_eq!(
        answer["output"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["type"] == "message")
            .unwrap()["content"][0]["text"],
        "mock: tool result: hello\n"
    );
    let sent = &mock.stats()["last_body"]["messages"][1]["content"];
    assert_eq!(sent[0]["type"], "thinking", "{sent:#}");
    assert_eq!(sent[0]["thinking"], "mock: thinking about the request");
    assert_eq!(sent[1]["type"], "tool_use");

    // Without the state (a client that dropped it, or content not the gateway's), Anthropic's
    // refusal comes back.
    for lost in [Value::Null, json!("gAAAAABnot-ours")] {
        let mut output = output.clone();
        output[0]["encrypted_content"] = lost;
        let r = post(&gw, &next_turn(&first, &output));
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(
            message.contains("Expected `thinking` or `redacted_thinking`"),
            "{message}"
        );
    }
}

#[test]
fn without_include_no_state_is_written() {
    let (_mock, gw) = start();
    let r = post(&gw, &first_turn("use tool Bash", false, false));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let output = r.json()["output"].as_array().unwrap().clone();
    let items = reasoning(&output);
    assert_eq!(items.len(), 1);
    assert!(items[0].get("encrypted_content").is_none(), "{output:#?}");
}

#[test]
fn streamed_thinking_carries_its_signature_in_the_done_items() {
    let (mock, gw) = start();
    let first = first_turn("use tool Bash", true, true);
    let events = post_stream(&gw, &first);
    let done: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "response.output_item.done")
        .map(|(_, v)| &v["item"])
        .collect();
    assert_eq!(done[0]["type"], "reasoning");
    assert!(done[0]["encrypted_content"]
        .as_str()
        .is_some_and(|c| c.starts_with("deepintshield:v1:")));
    let (last, completed) = events.last().unwrap();
    assert_eq!(last, "response.completed");
    let output = completed["response"]["output"].as_array().unwrap().clone();
    assert_eq!(&output[0], done[0]);
    // The next turn, streamed too, is accepted.
    let events = post_stream(&gw, &next_turn(&first, &output));
    assert_eq!(
        events.last().unwrap().0,
        "response.completed",
        "{events:#?}"
    );
    let sent = &mock.stats()["last_body"]["messages"][1]["content"];
    assert_eq!(sent[0]["type"], "thinking", "{sent:#}");
}

#[test]
fn redacted_and_hidden_thinking_come_back_too() {
    let (mock, gw) = start();
    // Anthropic's test string: a redacted block, an item with an empty summary.
    let first = first_turn(
        "use tool Bash ANTHROPIC_MAGIC_STRING_TRIGGER_REDACTED_THINKING_46C9A13E193C177646C7398A98432ECCCE4C1253D5E2D82641AC0E52CC2876CB",
        true,
        false,
    );
    let r = post(&gw, &first);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let output = r.json()["output"].as_array().unwrap().clone();
    let items = reasoning(&output);
    assert_eq!(items.len(), 1, "{output:#?}");
    assert_eq!(items[0]["summary"], json!([]));
    let r = post(&gw, &next_turn(&first, &output));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let sent = &mock.stats()["last_body"]["messages"][1]["content"];
    assert_eq!(sent[0]["type"], "redacted_thinking", "{sent:#}");
}

//! End-to-end: the real mock binary on loopback, driven over HTTP the way clients drive the APIs it
//! imitates: Anthropic's Messages (whole, streamed, tool use, errors, count_tokens, models) and the
//! tool calls and `json_schema` answers of its OpenAI chat completions.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{Mock, Reply, IO_TIMEOUT};
use serde_json::{json, Value};

const KEY: &str = "sk-ant-mock-key";
const VERSION: &str = "2023-06-01";

impl Mock {
    /// `POST /v1/messages` (or another Anthropic path) with the key and version headers.
    fn anthropic(&self, path: &str, body: &Value) -> Reply {
        let headers = [("x-api-key", KEY), ("anthropic-version", VERSION)];
        self.call("POST", path, &headers, body.to_string().as_bytes())
    }

    fn chat(&self, body: &Value) -> Reply {
        self.call(
            "POST",
            "/v1/chat/completions",
            &[("authorization", "Bearer sk-openai")],
            body.to_string().as_bytes(),
        )
    }
}

impl Reply {
    /// Anthropic SSE: (event name, data) pairs; every data's `type` is checked against the name.
    fn events(&self) -> Vec<(String, Value)> {
        self.text()
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once('\n').expect("event and data lines");
                let name = name
                    .strip_prefix("event: ")
                    .expect("event line")
                    .to_string();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").expect("data line")).unwrap();
                assert_eq!(data["type"], name.as_str());
                (name, data)
            })
            .collect()
    }

    /// OpenAI SSE: the JSON of every `data:` event before `[DONE]`, and whether `[DONE]` came.
    fn chunks(&self) -> (Vec<Value>, bool) {
        let mut out = Vec::new();
        for e in self.text().split("\n\n").filter(|e| !e.is_empty()) {
            let data = e.strip_prefix("data: ").expect("data event");
            if data == "[DONE]" {
                return (out, true);
            }
            out.push(serde_json::from_str(data).unwrap());
        }
        (out, false)
    }
}

fn message(content: Value) -> Value {
    json!({"model": "claude-mock", "max_tokens": 64, "messages": [{"role": "user", "content": content}]})
}

fn bash_tools() -> Value {
    json!([
        {"name": "Agent", "description": "sub-agent", "input_schema": {"type": "object", "properties": {"prompt": {"type": "string"}}}},
        {"name": "Bash", "description": "run a command", "input_schema": {
            "type": "object",
            "properties": {"command": {"type": "string"}, "timeout": {"type": "number"}},
            "required": ["command"]}}
    ])
}

#[test]
fn anthropic_message_whole_and_streamed() {
    let mock = Mock::start(&["--stream-chunks", "4"]);
    let r = mock.anthropic("/v1/messages", &message(json!("hello")));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("request-id").unwrap().starts_with("req_"));
    let m = r.json();
    assert!(m["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(
        (&m["type"], &m["role"], &m["model"]),
        (
            &json!("message"),
            &json!("assistant"),
            &json!("claude-mock")
        )
    );
    assert_eq!(
        m["content"],
        json!([{"type": "text", "text": "mock: hello"}])
    );
    assert_eq!(
        (&m["stop_reason"], &m["stop_sequence"]),
        (&json!("end_turn"), &Value::Null)
    );
    let usage = m["usage"].as_object().unwrap();
    for field in [
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ] {
        assert!(usage[field].is_u64(), "{field}");
    }
    let stats = mock.stats();
    assert_eq!(stats["last_api_key"], KEY);
    assert_eq!(stats["last_model"], "claude-mock");
    assert_eq!(stats["last_headers"]["anthropic-version"], VERSION);

    let mut body = message(json!([{"type": "text", "text": "hello"}]));
    body["stream"] = json!(true);
    let r = mock.anthropic("/v1/messages?beta=true", &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = r.events();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(text, "mock: hello");
    assert_eq!(events[0].1["message"]["content"], json!([]));
    assert_eq!(events[8].1["delta"]["stop_reason"], "end_turn");
    assert_eq!(
        events[8].1["usage"]["output_tokens"],
        m["usage"]["output_tokens"]
    );
    let stats = mock.stats();
    assert_eq!(
        (&stats["messages_requests"], &stats["streams_completed"]),
        (&json!(2), &json!(1))
    );
}

#[test]
fn anthropic_tool_use_whole_streamed_and_result() {
    let mock = Mock::start(&["--stream-chunks", "5", "--tool-text", "echo hello"]);
    let mut body = message(json!("please use tool Bash"));
    body["tools"] = bash_tools();
    let m = mock.anthropic("/v1/messages", &body).json();
    assert_eq!(m["stop_reason"], "tool_use");
    let block = &m["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(block["name"], "Bash");
    assert_eq!(block["input"], json!({"command": "echo hello"}));

    body["stream"] = json!(true);
    let events = mock.anthropic("/v1/messages", &body).events();
    assert_eq!(events[1].1["content_block"]["type"], "tool_use");
    assert_eq!(events[1].1["content_block"]["name"], "Bash");
    assert_eq!(events[1].1["content_block"]["input"], json!({}));
    let fragments: Vec<String> = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(fragments.len(), 5, "{fragments:?}");
    let input: Value = serde_json::from_str(&fragments.concat()).unwrap();
    assert_eq!(input, json!({"command": "echo hello"}));
    let delta = events.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");

    // The client ran the tool and sends its result back.
    let id = block["id"].as_str().unwrap();
    let follow = json!({"model": "claude-mock", "max_tokens": 64, "tools": bash_tools(), "messages": [
        {"role": "user", "content": "please use tool Bash"},
        {"role": "assistant", "content": [block]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": "hello\n"}]}
    ]});
    let m = mock.anthropic("/v1/messages", &follow).json();
    assert_eq!(m["stop_reason"], "end_turn");
    assert_eq!(m["content"][0]["text"], "mock: tool result: hello\n");
    assert_eq!(mock.stats()["tool_calls"], 2);
}

#[test]
fn anthropic_checks_and_errors_in_its_shape() {
    let mock = Mock::start(&["--retry-after-s", "3"]);
    let error = |r: &Reply, status: u16, kind: &str| -> String {
        assert_eq!(r.status, status, "{}", r.text());
        let e = r.json();
        assert_eq!(e["type"], "error");
        assert_eq!(e["error"]["type"], kind, "{e}");
        assert!(e["request_id"].as_str().unwrap().starts_with("req_"));
        e["error"]["message"].as_str().unwrap().to_string()
    };
    let body = message(json!("hi")).to_string();
    let r = mock.call(
        "POST",
        "/v1/messages",
        &[("anthropic-version", VERSION)],
        body.as_bytes(),
    );
    error(&r, 401, "authentication_error");
    let r = mock.call(
        "POST",
        "/v1/messages",
        &[("x-api-key", KEY)],
        body.as_bytes(),
    );
    assert_eq!(
        error(&r, 400, "invalid_request_error"),
        "anthropic-version: header is required"
    );
    let headers = [("x-api-key", KEY), ("anthropic-version", VERSION)];
    let r = mock.call("POST", "/v1/messages", &headers, b"{not json");
    error(&r, 400, "invalid_request_error");
    let r = mock.anthropic(
        "/v1/messages",
        &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(
        error(&r, 400, "invalid_request_error"),
        "max_tokens: Field required"
    );
    let r = mock.anthropic("/v1/messages", &json!({"max_tokens": 5, "messages": []}));
    assert!(error(&r, 400, "invalid_request_error").starts_with("model:"));
    let r = mock.anthropic("/v1/messages", &json!({"model": "m", "max_tokens": 5}));
    assert!(error(&r, 400, "invalid_request_error").starts_with("messages:"));

    // Faults by model name, in Anthropic's shape.
    for (status, kind, retry) in [
        (401, "authentication_error", None),
        (429, "rate_limit_error", Some("3")),
        (500, "api_error", None),
        (529, "overloaded_error", Some("3")),
    ] {
        let mut body = message(json!("hi"));
        body["model"] = json!(format!("claude-status-{status}"));
        let r = mock.anthropic("/v1/messages", &body);
        error(&r, status, kind);
        assert_eq!(r.header("retry-after"), retry, "{status}");
    }
    let mut body = message(json!("hi"));
    body["model"] = json!("garbage");
    assert!(serde_json::from_slice::<Value>(&mock.anthropic("/v1/messages", &body).body).is_err());

    // Faults by rate: every call.
    let always = Mock::start(&["--error-rate", "529:1"]);
    let r = always.anthropic("/v1/messages", &message(json!("hi")));
    error(&r, 529, "overloaded_error");
    assert_eq!(r.header("retry-after"), Some("1"));
    let r = always.chat(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(r.status, 529);
    assert!(r.json()["error"]["message"].is_string(), "OpenAI's shape");
    assert_eq!(always.stats()["injected"]["status_529"], 2);
}

#[test]
fn anthropic_stream_failure_and_reset() {
    let mock = Mock::start(&["--stream-chunks", "6"]);
    let mut body = message(json!("a longer message to stream"));
    body["stream"] = json!(true);
    body["model"] = json!("claude-failafter-2");
    let events = mock.anthropic("/v1/messages", &body).events();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "error"
        ]
    );
    assert_eq!(events[5].1["error"]["type"], "overloaded_error");
    assert_eq!(mock.stats()["streams_failed"], 1);

    // resetafter-: the connection is cut after one delta, never a message_stop.
    body["model"] = json!("claude-resetafter-1");
    let mut s = TcpStream::connect(mock.addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let payload = body.to_string();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: mock\r\nx-api-key: {KEY}\r\n\
         anthropic-version: {VERSION}\r\ncontent-length: {}\r\n\r\n",
        payload.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(payload.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = s.read(&mut buf) {
        got.extend_from_slice(&buf[..n]);
    }
    let got = String::from_utf8_lossy(&got);
    assert!(got.contains("event: content_block_delta"), "{got}");
    assert!(!got.contains("message_stop"), "{got}");
    assert_eq!(mock.stats()["streams_reset"], 1);
}

#[test]
fn count_tokens_and_model_lists() {
    let mock = Mock::start(&[]);
    let mut body = message(json!("count these characters please"));
    body["system"] =
        json!([{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}]);
    let usage = mock.anthropic("/v1/messages", &body).json()["usage"]["input_tokens"].clone();
    body.as_object_mut().unwrap().remove("max_tokens");
    let r = mock.anthropic("/v1/messages/count_tokens", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"input_tokens": usage}));
    assert_eq!(mock.stats()["count_tokens_requests"], 1);
    let r = mock.call(
        "POST",
        "/v1/messages/count_tokens",
        &[],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 401);

    let anthropic = mock
        .call(
            "GET",
            "/v1/models",
            &[("anthropic-version", VERSION), ("x-api-key", KEY)],
            b"",
        )
        .json();
    assert_eq!(anthropic["has_more"], false);
    assert_eq!(anthropic["data"][0]["type"], "model");
    assert!(anthropic["first_id"].is_string() && anthropic.get("object").is_none());
    let openai = mock.call("GET", "/v1/models", &[], b"").json();
    assert_eq!(openai["object"], "list");
    assert_eq!(openai["data"][0]["object"], "model");
}

#[test]
fn openai_tool_calls_tool_results_and_json_schema() {
    let mock = Mock::start(&["--stream-chunks", "4", "--tool-text", "ls -l"]);
    let tools = json!([{"type": "function", "function": {"name": "shell", "parameters": {
        "type": "object", "properties": {"cmd": {"type": "string"}, "workdir": {"type": "string"}},
        "required": ["cmd"]}}}]);
    let ask = json!({"model": "gpt-mock", "tools": tools,
                     "messages": [{"role": "user", "content": "use tool shell"}]});
    let r = mock.chat(&ask).json();
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "shell");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"cmd": "ls -l"}));

    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (chunks, done) = mock.chat(&streamed).chunks();
    assert!(done);
    let first = &chunks[0]["choices"][0]["delta"];
    assert_eq!(first["role"], "assistant");
    assert_eq!(first["tool_calls"][0]["function"]["name"], "shell");
    assert!(first["tool_calls"][0]["id"]
        .as_str()
        .unwrap()
        .starts_with("call_"));
    let pieces: Vec<&str> = chunks[1..]
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(pieces.len(), 4, "{pieces:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&pieces.concat()).unwrap(),
        json!({"cmd": "ls -l"})
    );
    let n = chunks.len();
    assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "tool_calls");
    assert!(chunks[n - 1]["usage"]["total_tokens"].is_u64());

    let mut result = ask.clone();
    let msgs = result["messages"].as_array_mut().unwrap();
    msgs.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
    msgs.push(json!({"role": "tool", "tool_call_id": call["id"], "content": "total 0"}));
    let r = mock.chat(&result).json();
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        r["choices"][0]["message"]["content"],
        "mock: tool result: total 0"
    );

    let schema = json!({"model": "gpt-mock", "messages": [{"role": "user", "content": "weather?"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "strict": true,
            "schema": {"type": "object", "additionalProperties": false,
                "properties": {"city": {"type": "string"}, "celsius": {"type": "number"},
                               "unit": {"type": "string", "enum": ["C", "F"]}},
                "required": ["city", "celsius", "unit"]}}}});
    let r = mock.chat(&schema).json();
    let content: Value =
        serde_json::from_str(r["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(content, json!({"city": "ls -l", "celsius": 1, "unit": "C"}));
    let s = mock.stats();
    assert_eq!(
        (&s["tool_calls"], &s["last_authorization"]),
        (&json!(2), &json!("Bearer sk-openai"))
    );
}

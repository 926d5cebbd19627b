//! End to end: `bedrock` providers against the bench mock's Bedrock runtime, which checks every
//! request's SigV4 signature (session token included) as AWS does. OpenAI and Anthropic clients
//! get Converse answers, ConverseStream event streams and InvokeModel embeddings in their own
//! API; Bedrock's errors, stream exceptions and corrupt frames reach them in their own shape.

mod common;

use common::{base_config, request, Conn, Gateway, Mock};
use serde_json::{json, Value};

const AKID: &str = "AKIDBEDROCKTEST";
const SECRET: &str = "bedrock-test-secret/K7MDENG+bPxRfiCY";
const TOKEN: &str = "FwoGZXIvYXdzEXAMPLETOKEN//+abc==";
/// Retries of the test providers: an answer retried to the end takes this many calls plus one.
const RETRIES: u64 = 2;

struct Setup {
    mock: Mock,
    gw: Gateway,
}

/// The mock with its AWS key pair, and a gateway with two `bedrock` providers on it: `bed`
/// signs with the right credentials, `badsig` with a wrong secret.
fn setup() -> Setup {
    let mock = Mock::start(&[
        "--aws-access-key-id",
        AKID,
        "--aws-secret-access-key",
        SECRET,
        "--aws-session-token",
        TOKEN,
        "--aws-region",
        "eu-west-3",
        "--stream-chunks",
        "4",
    ]);
    let provider = |name: &str, secret_var: &str| {
        format!(
            "[providers.{name}]\ntype = \"bedrock\"\nbase_url = \"http://{addr}\"\nmax_retries = {RETRIES}\n\
             retry_backoff_ms_initial = 10\nretry_backoff_ms_max = 20\n\
             rate_limit_cooldown_ms_default = 50\nrate_limit_cooldown_ms_max = 50\n\n\
             [providers.{name}.breaker]\nenabled = false\n\n\
             [providers.{name}.bedrock]\nregion = \"eu-west-3\"\naccess_key_id = \"env:BR_AKID\"\n\
             secret_access_key = \"env:{secret_var}\"\nsession_token = \"env:BR_TOKEN\"\n\n",
            addr = mock.addr
        )
    };
    let config = format!(
        "{}{}{}",
        base_config(),
        provider("bed", "BR_SECRET"),
        provider("badsig", "BR_WRONG_SECRET")
    );
    let gw = Gateway::start_with_env(
        &config,
        &[
            ("BR_AKID", AKID),
            ("BR_SECRET", SECRET),
            ("BR_WRONG_SECRET", "not-the-secret"),
            ("BR_TOKEN", TOKEN),
        ],
    );
    Setup { mock, gw }
}

impl Setup {
    /// A request of the client API of `path` (Anthropic's carry `anthropic-version`).
    fn post(&self, path: &str, body: &Value) -> common::Response {
        let mut headers = vec![("content-type", "application/json")];
        if path.starts_with("/v1/messages") {
            headers.push(("anthropic-version", "2023-06-01"));
        }
        request(
            self.gw.api,
            "POST",
            path,
            &headers,
            body.to_string().as_bytes(),
        )
    }

    /// A streamed answer's events (`data:` payloads; Anthropic's named events keep their
    /// `event:` line) and whether it ended with `[DONE]`.
    fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let body = body.to_string();
        let mut c = Conn::new(self.gw.api);
        c.send(
            format!(
                "POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        let r = c.sse_response().expect("a streamed answer");
        assert_eq!(r.status, 200);
        r.events.into_iter().map(|(e, _)| e).collect()
    }

    fn bedrock_stats(&self) -> Value {
        self.mock.stats()["bedrock"].clone()
    }
}

fn chat(model: &str, content: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": content}]})
}

/// The `data` JSON of each event (an Anthropic event's `event:` line dropped).
fn payloads(events: &[String]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| {
            let data = e.rsplit("data: ").next().unwrap_or(e);
            serde_json::from_str(data).unwrap_or_else(|_| panic!("not JSON: {e}"))
        })
        .collect()
}

#[test]
fn openai_clients_chat_stream_and_call_tools_through_converse() {
    let s = setup();
    let r = s.post(
        "/v1/chat/completions",
        &chat("bed/anthropic.claude-3-haiku-20240307-v1:0", "hello"),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "mock: hello");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        s.mock.stats()["last_model"],
        "anthropic.claude-3-haiku-20240307-v1:0"
    );

    // Streamed, with the usage chunk: Converse's event stream in OpenAI chunks.
    let mut body = chat("bed/anthropic.claude-x", "stream me");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let events = s.stream("/v1/chat/completions", &body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks = payloads(&events);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "mock: stream me");
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("stop")]);
    let usage = &chunks.last().unwrap()["usage"];
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert_eq!(s.bedrock_stats()["streams_completed"], 1);

    // A tool call, and its result sent back.
    let tools = json!([{"type": "function", "function": {"name": "lookup", "description": "Look up",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]);
    let mut body = chat("bed/anthropic.claude-x", "please use tool");
    body["tools"] = tools.clone();
    let v = s.post("/v1/chat/completions", &body).json();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "lookup");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"q": "please use tool"}));
    let body = json!({
        "model": "bed/anthropic.claude-x",
        "tools": tools,
        "messages": [
            {"role": "user", "content": "please use tool"},
            v["choices"][0]["message"].clone(),
            {"role": "tool", "tool_call_id": call["id"], "content": "42 apples"}
        ]
    });
    let v = s.post("/v1/chat/completions", &body).json();
    assert_eq!(v["choices"][0]["message"]["content"], "mock: 42 apples");

    // An inference-profile ARN is one path segment, decoded by the upstream as it was named.
    let arn = "arn:aws:bedrock:eu-west-3:123456789012:inference-profile/eu.anthropic.claude-x-v1:0";
    let r = s.post("/v1/chat/completions", &chat(&format!("bed/{arn}"), "arn"));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(s.mock.stats()["last_model"], arn);
    assert_eq!(s.bedrock_stats()["signature_rejected"], 0);
}

#[test]
fn anthropic_clients_get_messages_and_streams() {
    let s = setup();
    let body = json!({"model": "bed/anthropic.claude-x", "max_tokens": 64,
        "system": "Be brief.", "messages": [{"role": "user", "content": "hi there"}]});
    let r = s.post("/v1/messages", &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], "mock: hi there");
    assert_eq!(v["stop_reason"], "end_turn");
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0);

    let mut body = body;
    body["stream"] = json!(true);
    let events = s.stream("/v1/messages", &body);
    let names: Vec<&str> = events
        .iter()
        .filter_map(|e| e.strip_prefix("event: "))
        .map(|e| e.split('\n').next().unwrap_or(""))
        .filter(|n| *n != "content_block_delta" && *n != "ping")
        .collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let text: String = payloads(&events)
        .iter()
        .filter_map(|p| p["delta"]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, "mock: hi there");
    let delta = payloads(&events)
        .into_iter()
        .find(|p| p["type"] == "message_delta")
        .unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0);
}

#[test]
fn embeddings_through_titan_and_cohere() {
    let s = setup();
    let body = json!({"model": "bed/amazon.titan-embed-text-v2:0", "input": ["one", "two", "three"], "dimensions": 256});
    let r = s.post("/v1/embeddings", &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data[2]["index"], 2);
    assert_eq!(data[0]["embedding"].as_array().unwrap().len(), 256);
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    // The mock counts a token per four characters: 1 + 1 + 2.
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    // Titan embeds one text per call.
    assert_eq!(s.bedrock_stats()["invoke"], 3);

    let body = json!({"model": "bed/cohere.embed-english-v3", "input": ["alpha", "beta"], "input_type": "search_query"});
    let v = s.post("/v1/embeddings", &body).json();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 1024);
    assert_eq!(
        v["usage"]["prompt_tokens"], 3,
        "from the call's token-count header: 2 + 1"
    );
    assert_eq!(
        s.bedrock_stats()["invoke"],
        4,
        "Cohere embeds every text in one call"
    );

    // Refused before any call: token input, an unknown model family, dimensions on Cohere v3.
    for (body, code) in [
        (
            json!({"model": "bed/amazon.titan-embed-text-v2:0", "input": [[1, 2]]}),
            "unsupported_input",
        ),
        (
            json!({"model": "bed/meta.llama3-8b", "input": "x"}),
            "unsupported_model",
        ),
        (
            json!({"model": "bed/cohere.embed-english-v3", "input": "x", "dimensions": 8}),
            "unsupported_parameter",
        ),
    ] {
        let r = s.post("/v1/embeddings", &body);
        assert_eq!((r.status, r.error_code()), (400, code.to_string()));
    }
    assert_eq!(s.bedrock_stats()["invoke"], 4);
}

#[test]
fn a_wrong_secret_gets_the_upstreams_403_in_the_clients_shape() {
    let s = setup();
    let r = s.post(
        "/v1/chat/completions",
        &chat("badsig/anthropic.claude-x", "hello"),
    );
    assert_eq!(r.status, 403);
    let v = r.json();
    assert_eq!(v["error"]["type"], "InvalidSignatureException");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "InvalidSignatureException: The request signature we calculated does not match"
        ),
        "{message}"
    );
    assert!(!String::from_utf8_lossy(&r.body).contains("not-the-secret"));
    let body = json!({"model": "badsig/anthropic.claude-x", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]});
    let r = s.post("/v1/messages", &body);
    assert_eq!(r.status, 403);
    let v = r.json();
    assert_eq!(
        (v["type"].as_str(), v["error"]["type"].as_str()),
        (Some("error"), Some("permission_error"))
    );
    // Refused signatures are not retried: the key pair is the same on every attempt.
    let stats = s.bedrock_stats();
    assert_eq!(
        (
            stats["signature_rejected"].as_u64(),
            stats["converse"].as_u64()
        ),
        (Some(2), Some(0))
    );
}

#[test]
fn stream_exceptions_and_corrupt_frames_end_with_an_error_event() {
    let s = setup();
    let stream = |model: &str| {
        let mut body = chat(model, "a long enough answer");
        body["stream"] = json!(true);
        s.stream("/v1/chat/completions", &body)
    };
    // A corrupt CRC after two deltas: what came before is delivered, then an error event.
    let events = stream("bed/anthropic.claude-x.badcrcafter-2");
    assert_ne!(events.last().map(String::as_str), Some("[DONE]"));
    let last = payloads(&events).pop().unwrap();
    assert_eq!(last["error"]["code"], "upstream_stream_corrupt", "{last}");
    assert!(last["error"]["message"]
        .as_str()
        .unwrap()
        .contains("CRC mismatch"));
    let text: String = payloads(&events)
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(
        !text.is_empty() && "mock: a long enough answer".starts_with(&text),
        "{text}"
    );
    assert_eq!(s.bedrock_stats()["crc_corrupted"], 1);

    // Modeled exceptions mid-stream: the client's error event carries Bedrock's message.
    for (directive, message) in [
        ("failafter-1", "mock: injected model stream error"),
        ("throttleafter-1", "Too many requests"),
        ("errorafter-1", "mock: injected stream error message"),
    ] {
        let events = stream(&format!("bed/anthropic.claude-x.{directive}"));
        assert_ne!(
            events.last().map(String::as_str),
            Some("[DONE]"),
            "{directive}"
        );
        let last = payloads(&events).pop().unwrap();
        let got = last["error"]["message"].as_str().unwrap_or_default();
        assert!(got.contains(message), "{directive}: {last}");
    }

    // The same for an Anthropic client: a typed `error` event.
    let body = json!({"model": "bed/x.throttleafter-1", "max_tokens": 16, "stream": true,
        "messages": [{"role": "user", "content": "anthropic stream"}]});
    let events = s.stream("/v1/messages", &body);
    let last = events.last().unwrap();
    assert!(last.starts_with("event: error\n"), "{last}");
    let error = payloads(&events).pop().unwrap();
    assert_eq!(error["error"]["type"], "rate_limit_error");
    // The gateway stays healthy: the next stream completes.
    let events = stream("bed/anthropic.claude-x");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
}

#[test]
fn bedrock_errors_follow_the_status_policy() {
    let s = setup();
    let converse = || s.bedrock_stats()["converse"].as_u64().unwrap();
    // ThrottlingException: the (key, model) pair cools down, retried to the end, relayed.
    let r = s.post("/v1/chat/completions", &chat("bed/x.status-429", "hi"));
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "ThrottlingException");
    assert_eq!(converse(), RETRIES + 1);
    // ServiceUnavailableException and InternalServerException: retried after a backoff.
    let r = s.post("/v1/chat/completions", &chat("bed/x.status-503", "hi"));
    assert_eq!(r.status, 503);
    assert_eq!(converse(), 2 * (RETRIES + 1));
    let r = s.post("/v1/chat/completions", &chat("bed/x.status-500", "hi"));
    assert_eq!(r.status, 500);
    assert_eq!(converse(), 3 * (RETRIES + 1));
    // ValidationException: relayed at once, in the client's shape.
    let body = json!({"model": "bed/x.status-400", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]});
    let r = s.post("/v1/messages", &body);
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("ValidationException: "));
    assert_eq!(converse(), 3 * (RETRIES + 1) + 1);
    // What Converse cannot take is refused by the gateway, before any call.
    let body = json!({"model": "bed/x", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]});
    let r = s.post("/v1/chat/completions", &body);
    assert_eq!(
        (r.status, r.error_code()),
        (400, "unsupported_content".to_string()),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(converse(), 3 * (RETRIES + 1) + 1);
}

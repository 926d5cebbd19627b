//! OpenAI's Responses API (`POST /v1/responses`) on the real binary, against a capturing upstream
//! that records the exact request the gateway sends and answers canned bytes: to an `openai`
//! provider that has the Responses API the body passes through byte for byte (but its model) and
//! the answer, whole or streamed, comes back byte for byte with its usage read; a stream cut
//! before `response.completed` ends with the gateway's `error` and `response.failed` events,
//! numbered after the upstream's and naming its response; an `openai` provider with
//! `responses = false` gets Chat Completions (hosted tools dropped) and the client a Responses
//! answer; `previous_response_id` is refused before any upstream call.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PROVIDER_KEY: &str = "sk-responses-provider-key";

/// One request as the upstream received it.
#[derive(Clone, Debug)]
struct Captured {
    target: String,
    headers: Vec<(String, String)>,
    body: String,
}

/// An HTTP/1.1 upstream that records each request and answers `content_type` + `body` to it.
struct Capture {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Captured>>>,
}

impl Capture {
    fn start(content_type: &'static str, body: String) -> Capture {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (seen, body) = (seen2.clone(), body.clone());
                std::thread::spawn(move || serve(conn, &seen, content_type, &body));
            }
        });
        Capture { addr, seen }
    }

    fn requests(&self) -> Vec<Captured> {
        self.seen.lock().unwrap().clone()
    }

    fn one(&self) -> Captured {
        let seen = self.requests();
        assert_eq!(seen.len(), 1, "{seen:?}");
        seen[0].clone()
    }
}

/// Requests with a Content-Length body (what the gateway sends), answered with one.
fn serve(mut conn: TcpStream, seen: &Mutex<Vec<Captured>>, content_type: &str, body: &str) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let target = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or_default()
            .to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        buf.drain(..head_end);
        while buf.len() < len {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let request: Vec<u8> = buf.drain(..len).collect();
        seen.lock().unwrap().push(Captured {
            target,
            headers,
            body: String::from_utf8(request).expect("a UTF-8 body"),
        });
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if conn.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// A gateway whose provider `up` is an `openai` provider on `upstream` (`responses` as given,
/// the default when `None`).
fn gateway(upstream: &Capture, responses: Option<bool>) -> Gateway {
    let flag = responses.map_or(String::new(), |r| format!("responses = {r}\n"));
    let cfg = format!(
        "{}[providers.up]\ntype = \"openai\"\nbase_url = \"http://{}/v1\"\nkeys = [{{ key = \"env:UP_KEY\" }}]\nmax_retries = 0\n{flag}",
        base_config(),
        upstream.addr
    );
    Gateway::start_with_env(&cfg, &[("UP_KEY", PROVIDER_KEY)])
}

fn post(gw: &Gateway, body: &str) -> common::Response {
    request(
        gw.api,
        "POST",
        "/v1/responses",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer client-key"),
        ],
        body.as_bytes(),
    )
}

/// A stream's body, de-chunked: the events as the client got them.
fn post_stream(gw: &Gateway, body: &str) -> (u16, String) {
    let mut s = connect(gw.api);
    let req = format!(
        "POST /v1/responses HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let head_end = find(&raw, b"\r\n\r\n").expect("a response head") + 4;
    let status: u16 = String::from_utf8_lossy(&raw[9..12]).parse().unwrap();
    let mut rest = &raw[head_end..];
    let mut events = Vec::new();
    while let Some(line_end) = find(rest, b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
        if size == 0 {
            break;
        }
        events.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
        rest = &rest[line_end + 4 + size..];
    }
    (status, String::from_utf8(events).unwrap())
}

/// (name, payload) of each event of an SSE text, comments left out.
fn events(sse: &str) -> Vec<(String, serde_json::Value)> {
    sse.split("\n\n")
        .filter(|e| !e.is_empty() && !e.starts_with(':'))
        .map(|e| {
            let (name, data) = e.split_once("\ndata: ").expect("named events");
            let name = name.strip_prefix("event: ").unwrap().to_string();
            (name, serde_json::from_str(data).expect("JSON data"))
        })
        .collect()
}

/// What Codex sends, with odd spacing and key order: developer items, `store: false`, encrypted
/// reasoning asked for, a function tool, a `namespace` tool and the hosted `web_search` tool.
const CODEX_REQUEST: &str = r#"{"model" :  "up/gpt-5-codex",
 "input":[{"type":"message","id":"msg_1","role":"developer","content":[{"type":"input_text","text":"You are Codex. caf\u00e9 \/"}]},
   {"type":"message","role":"user","content":[{"type":"input_text","text":"Run echo hello"}]}],
 "tools":[{"type":"function","name":"exec_command","description":"Runs a command","strict":false,"parameters":{"type":"object","properties":{"cmd":{"type":"string"}},"required":["cmd"],"additionalProperties":false}},
   {"type":"namespace","name":"multi_agent_v1","description":"agents","tools":[{"type":"function","name":"close_agent","parameters":{"type":"object"}}]},
   {"type":"web_search","external_web_access":false}],
 "tool_choice":"auto","parallel_tool_calls":true,"reasoning":{"summary":"auto"},"store":false,
 "include":["reasoning.encrypted_content"],"prompt_cache_key":"0192-abc","client_metadata":{"turn_id":"t1"},
 "fallbacks": [], "zz_future": [1.50, null]}"#;

const RESPONSE: &str = r#"{"id":"resp_up1","object":"response","created_at":1741476542,"status":"completed","error":null,"incomplete_details":null,"model":"gpt-5-codex", "output":[{"type":"message","id":"msg_up1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"ol\u00e1","annotations":[]}]}],"usage":{"input_tokens":11,"input_tokens_details":{"cached_tokens":4,"cache_write_tokens":0},"output_tokens":7,"output_tokens_details":{"reasoning_tokens":2},"total_tokens":18},"x_vendor":{"k":[1]}}"#;

#[test]
fn responses_pass_through_byte_for_byte_to_an_openai_upstream() {
    let up = Capture::start("application/json", RESPONSE.to_string());
    let gw = gateway(&up, None);
    let r = post(&gw, CODEX_REQUEST);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The answer as the upstream wrote it.
    assert_eq!(String::from_utf8(r.body.clone()).unwrap(), RESPONSE);
    assert_eq!(r.header("x-deepintshield-provider"), Some("up"));

    let seen = up.one();
    assert_eq!(seen.target, "/v1/responses");
    // The client's body, byte for byte, but the model and the gateway's own `fallbacks`.
    let want = CODEX_REQUEST
        .replacen("\"up/gpt-5-codex\"", "\"gpt-5-codex\"", 1)
        .replacen(",\n \"fallbacks\": []", "", 1);
    assert_eq!(seen.body, want);
    let auth = seen.headers.iter().find(|(k, _)| k == "authorization");
    assert_eq!(
        auth.map(|(_, v)| v.as_str()),
        Some(&*format!("Bearer {PROVIDER_KEY}"))
    );
    // Its usage was read on the way.
    let counters = &gw.stats()["pools"]["up"]["counters"];
    assert_eq!(counters["prompt_tokens"], 11, "{counters}");
    assert_eq!(counters["completion_tokens"], 7, "{counters}");
}

/// A Responses stream as OpenAI sends it (the reference's text example, with sequence numbers).
fn upstream_stream(complete: bool) -> String {
    let mut sse = String::new();
    let mut push =
        |name: &str, data: &str| sse.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    push(
        "response.created",
        r#"{"type":"response.created","response":{"id":"resp_s1","object":"response","created_at":1741290958,"status":"in_progress","model":"gpt-5.4","output":[],"usage":null},"sequence_number":0}"#,
    );
    push(
        "response.in_progress",
        r#"{"type":"response.in_progress","response":{"id":"resp_s1","object":"response","created_at":1741290958,"status":"in_progress","model":"gpt-5.4","output":[],"usage":null},"sequence_number":1}"#,
    );
    push(
        "response.output_item.added",
        r#"{"type":"response.output_item.added","output_index":0,"item":{"id":"msg_s1","type":"message","status":"in_progress","role":"assistant","content":[]},"sequence_number":2}"#,
    );
    push(
        "response.output_text.delta",
        r#"{"type":"response.output_text.delta","item_id":"msg_s1","output_index":0,"content_index":0,"delta":"H\u00ed","sequence_number":3}"#,
    );
    if complete {
        push(
            "response.output_item.done",
            r#"{"type":"response.output_item.done","output_index":0,"item":{"id":"msg_s1","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hí","annotations":[]}]},"sequence_number":4}"#,
        );
        push(
            "response.completed",
            r#"{"type":"response.completed","response":{"id":"resp_s1","object":"response","created_at":1741290958,"status":"completed","model":"gpt-5.4","output":[],"usage":{"input_tokens":37,"output_tokens":11,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":48}},"sequence_number":5}"#,
        );
    }
    sse
}

#[test]
fn responses_streams_pass_through_and_their_usage_is_read() {
    let sse = upstream_stream(true);
    let up = Capture::start("text/event-stream", sse.clone());
    let gw = gateway(&up, None);
    let body = r#"{"model":"up/gpt-5.4","input":"Hello!","stream":true,"instructions":"You are a helpful assistant."}"#;
    let (status, got) = post_stream(&gw, body);
    assert_eq!(status, 200);
    assert_eq!(got, sse, "the events byte for byte");
    assert_eq!(up.one().target, "/v1/responses");
    let counters = &gw.stats()["pools"]["up"]["counters"];
    assert_eq!(counters["prompt_tokens"], 37, "{counters}");
    assert_eq!(counters["completion_tokens"], 11, "{counters}");
}

#[test]
fn a_cut_responses_stream_ends_with_failure_events_that_continue_it() {
    let sse = upstream_stream(false);
    let up = Capture::start("text/event-stream", sse.clone());
    let gw = gateway(&up, None);
    let (status, got) = post_stream(
        &gw,
        r#"{"model":"up/gpt-5.4","input":"Hello!","stream":true}"#,
    );
    assert_eq!(status, 200);
    assert!(got.starts_with(&sse), "{got}");
    let tail = events(&got[sse.len()..]);
    let names: Vec<&str> = tail.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["error", "response.failed"], "{got}");
    // Numbered after the upstream's last event, naming the response it created.
    assert_eq!(tail[0].1["sequence_number"], 4);
    assert_eq!(tail[0].1["code"], "upstream_stream_truncated");
    assert_eq!(tail[0].1["error"]["code"], "upstream_stream_truncated");
    assert_eq!(tail[1].1["sequence_number"], 5);
    let failed = &tail[1].1["response"];
    assert_eq!(failed["id"], "resp_s1");
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "upstream_stream_truncated");
}

const CHAT_ANSWER: &str = r#"{"id":"chatcmpl-c1","object":"chat.completion","created":1700000000,"model":"gpt-4.1","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_c1","type":"function","function":{"name":"exec_command","arguments":"{\"cmd\":\"echo hello\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":20,"completion_tokens":9,"total_tokens":29}}"#;

#[test]
fn an_upstream_without_the_responses_api_gets_chat_completions() {
    let up = Capture::start("application/json", CHAT_ANSWER.to_string());
    let gw = gateway(&up, Some(false));
    let r = post(&gw, CODEX_REQUEST);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let seen = up.one();
    assert_eq!(seen.target, "/v1/chat/completions");
    let sent: serde_json::Value = serde_json::from_str(&seen.body).unwrap();
    assert_eq!(sent["model"], "gpt-5-codex");
    assert_eq!(sent["messages"][0]["role"], "developer");
    assert_eq!(sent["messages"][0]["content"], "You are Codex. café /");
    assert_eq!(sent["messages"][1]["role"], "user");
    // Only the function tool: the hosted and namespace tools are OpenAI's own.
    let tools = sent["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 1, "{sent}");
    assert_eq!(tools[0]["function"]["name"], "exec_command");
    assert_eq!(sent["tool_choice"], "auto");
    for field in [
        "include",
        "store",
        "prompt_cache_key",
        "client_metadata",
        "zz_future",
        "input",
    ] {
        assert!(sent.get(field).is_none(), "{field} in {sent}");
    }

    let v = r.json();
    assert_eq!(v["object"], "response");
    assert_eq!(v["id"], "resp_c1");
    assert_eq!(v["status"], "completed");
    // The model the provider says answered, as for every translated answer.
    assert_eq!(v["model"], "gpt-4.1");
    let call = &v["output"][0];
    assert_eq!(call["type"], "function_call");
    assert_eq!(call["call_id"], "call_c1");
    assert_eq!(call["name"], "exec_command");
    assert_eq!(call["arguments"], "{\"cmd\":\"echo hello\"}");
    assert_eq!(v["usage"]["input_tokens"], 20);
    assert_eq!(v["usage"]["total_tokens"], 29);
}

#[test]
fn previous_response_id_is_refused_before_any_upstream_call() {
    let up = Capture::start("application/json", RESPONSE.to_string());
    let gw = gateway(&up, None);
    let r = post(
        &gw,
        r#"{"model":"up/gpt-5","input":"and then?","previous_response_id":"resp_up1"}"#,
    );
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["error"]["code"], "previous_response_id_unsupported");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("keeps no conversation state"));
    let r = post(&gw, r#"{"model":"up/gpt-5"}"#);
    assert_eq!((r.status, r.error_code()), (400, "missing_input".into()));
    assert!(up.requests().is_empty());
}

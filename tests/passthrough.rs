//! Same-format requests pass through byte for byte: a capturing upstream in the test records the
//! exact request the gateway sends and answers with canned bytes. An OpenAI client to an `openai`
//! provider and an Anthropic client to an `anthropic` provider: every top-level field of the body
//! reaches the upstream as the client wrote it (unknown fields, odd key order, unicode escapes,
//! nested unknown objects, number spellings, `cache_control` blocks), except `model` (replaced by
//! the upstream model) and the gateway's own `fallbacks` (removed); Anthropic's `anthropic-version`
//! and `anthropic-beta` headers are passed on; the upstream's answer (whole or streamed) comes back
//! byte for byte. Also: the client's `x-request-id` reaches the upstream, the upstream's
//! `x-ratelimit-*` / `anthropic-ratelimit-*` headers reach the client, and `GET /v1/models/{id}`
//! takes a percent-encoded id.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The provider key the gateway sends upstream (never the client's).
const PROVIDER_KEY: &str = "sk-passthrough-provider-key";
/// The client's own key, which must not reach the upstream.
const CLIENT_KEY: &str = "sk-client-key-never-upstream";

/// One request as the capturing upstream received it.
#[derive(Clone, Debug)]
struct Captured {
    method: String,
    /// Path and query, as sent.
    target: String,
    /// Names lower-cased, values as sent.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Captured {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).expect("a UTF-8 upstream body")
    }
}

/// What the upstream answers: status, headers (content type included), body.
#[derive(Clone)]
struct Canned {
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    body: String,
}

/// A keep-alive HTTP/1.1 upstream that records every request and answers `canned` to each.
struct Capture {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Captured>>>,
}

impl Capture {
    fn start(canned: Canned) -> Capture {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (seen, canned) = (seen2.clone(), canned.clone());
                std::thread::spawn(move || serve(conn, &seen, &canned));
            }
        });
        Capture { addr, seen }
    }

    /// The only request received.
    fn one(&self) -> Captured {
        let seen = self.seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        seen[0].clone()
    }
}

fn serve(mut conn: TcpStream, seen: &Mutex<Vec<Captured>>, canned: &Canned) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut fill = |conn: &mut TcpStream, buf: &mut Vec<u8>| match conn.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    };
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if !fill(&mut conn, &mut buf) {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default().to_string();
        let target = request_line.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        buf.drain(..head_end);
        let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(p) = find(&buf, b"\r\n") {
                        break p;
                    }
                    if !fill(&mut conn, &mut buf) {
                        return;
                    }
                };
                let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .expect("chunk size");
                while buf.len() < line_end + 2 + size + 2 {
                    if !fill(&mut conn, &mut buf) {
                        return;
                    }
                }
                body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
                buf.drain(..line_end + 4 + size);
                if size == 0 {
                    break body;
                }
            }
        } else {
            let len: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < len {
                if !fill(&mut conn, &mut buf) {
                    return;
                }
            }
            buf.drain(..len).collect()
        };
        seen.lock().unwrap().push(Captured {
            method,
            target,
            headers,
            body,
        });
        let mut resp = format!(
            "HTTP/1.1 {} X\r\ncontent-length: {}\r\n",
            canned.status,
            canned.body.len()
        );
        for (k, v) in &canned.headers {
            resp.push_str(&format!("{k}: {v}\r\n"));
        }
        resp.push_str("\r\n");
        resp.push_str(&canned.body);
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// The top-level members of a JSON object as written: (key, value) with the text of each exactly
/// as in `json` (only the whitespace around them left out), in document order. A small scanner of
/// its own, so that the comparison does not rest on the gateway's JSON library.
fn members(json: &str) -> Vec<(String, String)> {
    let b = json.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    // The end (exclusive) of the string starting at `i` (a `"`).
    let string_end = |mut i: usize| {
        assert_eq!(b[i], b'"', "a string at {i} in {json}");
        i += 1;
        while b[i] != b'"' {
            i += if b[i] == b'\\' { 2 } else { 1 };
        }
        i + 1
    };
    skip_ws(&mut i);
    assert_eq!(b[i], b'{', "an object: {json}");
    i += 1;
    let mut out = Vec::new();
    loop {
        skip_ws(&mut i);
        if b[i] == b'}' {
            break;
        }
        let key_end = string_end(i);
        let key = json[i..key_end].to_string();
        i = key_end;
        skip_ws(&mut i);
        assert_eq!(b[i], b':', "a colon after {key} in {json}");
        i += 1;
        skip_ws(&mut i);
        let start = i;
        let mut depth = 0usize;
        while i < b.len() {
            match b[i] {
                b'"' => {
                    i = string_end(i);
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth > 0 => depth -= 1,
                b',' | b'}' if depth == 0 => break,
                _ => {}
            }
            i += 1;
        }
        out.push((key, json[start..i].trim_end().to_string()));
        skip_ws(&mut i);
        if b[i] == b',' {
            i += 1;
        }
    }
    out
}

#[test]
fn the_member_scanner_keeps_text_as_written() {
    let got = members(r#" { "a" : 1.50 , "b\"":{"c":[1,"}\\",{}]},"d":"x,y"}"#);
    let want = [
        (r#""a""#, "1.50"),
        (r#""b\"""#, r#"{"c":[1,"}\\",{}]}"#),
        (r#""d""#, r#""x,y""#),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(got, want);
}

/// The members of the client's body the upstream must receive unchanged: all but `model` and
/// `fallbacks`, in order.
fn kept(client_body: &str) -> Vec<(String, String)> {
    members(client_body)
        .into_iter()
        .filter(|(k, _)| k != "\"model\"" && k != "\"fallbacks\"")
        .collect()
}

/// The upstream body's members other than `model`, and its `model` value (exactly one).
fn split_model(upstream_body: &str) -> (Vec<(String, String)>, String) {
    let all = members(upstream_body);
    let models: Vec<&(String, String)> = all.iter().filter(|(k, _)| k == "\"model\"").collect();
    assert_eq!(models.len(), 1, "one model field: {upstream_body}");
    let model = models[0].1.clone();
    let rest = all.into_iter().filter(|(k, _)| k != "\"model\"").collect();
    (rest, model)
}

fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> common::Response {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    request(addr, "POST", path, &all, body.as_bytes())
}

/// A gateway with provider `up` (`kind`, on `upstream`) and a mock provider.
fn gateway(kind: &str, upstream: &Capture) -> Gateway {
    let base_url = match kind {
        "openai" => format!("http://{}/v1", upstream.addr),
        _ => format!("http://{}", upstream.addr),
    };
    let cfg = format!(
        "{}[providers.up]\ntype = \"{kind}\"\nbase_url = \"{base_url}\"\nkeys = [{{ key = \"env:UP_KEY\" }}]\nmax_retries = 0\n\n[providers.mock]\ntype = \"mock\"\nmodels = [\"gpt-4o\"]\n",
        base_config()
    );
    Gateway::start_with_env(&cfg, &[("UP_KEY", PROVIDER_KEY)])
}

/// An OpenAI request with unknown top-level fields (first, nested, odd numbers), keys in no
/// particular order, `model` in the middle, unicode escapes and raw UTF-8, odd spacing.
const OPENAI_REQUEST: &str = r#"{ "zz_vendor_first" : {"nested": {"deep": [1, 2.50, {"x": null, "y": "\u00e9\ud83d\ude00"}], "e": 1E+3}, "flag":true},
  "messages": [ {"role":"user","content":"caf\u00e9 \"quoted\" \/ slash \ud83d\ude00 tab\t end", "name" : "n"} ],
  "temperature":0.70,
  "fallbacks" : ["mock/gpt-4o"],
  "model":   "up/gpt-client-name",
  "metadata": {"b": "2", "a": "1"},
  "tools": [{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{},"x-vendor-ext":[true,false]}}}],
  "unicode_raw": "日本語 ✓",
  "big_int": 12345678901234567890123,
  "neg_zero": -0.0,
  "empty_obj": {}, "empty_arr": [],
  "max_completion_tokens": 64
}"#;

/// The upstream's answer: odd spacing, unknown fields, escapes; must reach the client unchanged.
const OPENAI_ANSWER: &str = r#"{"id":"chatcmpl-pt1", "object":"chat.completion","created":1700000000,"model":"gpt-client-name","choices":[{"index":0,"message":{"role":"assistant","content":"ol\u00e1 \ud83d\ude00 \/","vendor_field":{"k":[1,2]}},"finish_reason":"stop","logprobs":null}],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18},"system_fingerprint":"fp_1",  "x_unknown": 1.50 }"#;

#[test]
fn openai_request_fields_reach_an_openai_upstream_byte_for_byte() {
    let up = Capture::start(Canned {
        status: 200,
        headers: vec![
            ("content-type", "application/json"),
            ("x-ratelimit-limit-requests", "5000"),
            ("x-ratelimit-remaining-requests", "4999"),
            ("x-ratelimit-remaining-tokens", "159000"),
            ("x-ratelimit-reset-requests", "12ms"),
        ],
        body: OPENAI_ANSWER.to_string(),
    });
    let gw = gateway("openai", &up);
    let r = post(
        gw.api,
        "/v1/chat/completions",
        &[
            ("authorization", &format!("Bearer {CLIENT_KEY}")),
            ("x-request-id", "trace-openai-passthrough-1"),
        ],
        OPENAI_REQUEST,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let seen = up.one();
    assert_eq!(
        (seen.method.as_str(), seen.target.as_str()),
        ("POST", "/v1/chat/completions")
    );
    let (rest, model) = split_model(seen.body_str());
    assert_eq!(model, "\"gpt-client-name\"");
    let want = kept(OPENAI_REQUEST);
    assert_eq!(rest.len(), want.len(), "{}", seen.body_str());
    for (got, want) in rest.iter().zip(&want) {
        assert_eq!(got, want, "field as the client wrote it");
    }
    assert!(!seen.body_str().contains("fallbacks"));
    assert_eq!(
        seen.header("authorization"),
        Some(&*format!("Bearer {PROVIDER_KEY}"))
    );
    assert!(!format!("{:?}", seen.headers).contains(CLIENT_KEY));
    assert_eq!(
        seen.header("x-request-id"),
        Some("trace-openai-passthrough-1")
    );

    // The answer, byte for byte, with the upstream's rate-limit headers and the client's id.
    assert_eq!(String::from_utf8(r.body.clone()).unwrap(), OPENAI_ANSWER);
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("5000"));
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("4999"));
    assert_eq!(r.header("x-ratelimit-remaining-tokens"), Some("159000"));
    assert_eq!(r.header("x-ratelimit-reset-requests"), Some("12ms"));
    assert_eq!(r.header("x-request-id"), Some("trace-openai-passthrough-1"));
    assert_eq!(r.header("x-deepintshield-provider"), Some("up"));
    // Its usage was read on the way.
    let counters = &gw.stats()["pools"]["up"]["counters"];
    assert_eq!(counters["prompt_tokens"], 11, "{counters}");
    assert_eq!(counters["completion_tokens"], 7, "{counters}");
}

#[test]
fn an_answer_with_a_hundred_header_lines_is_read_and_relayed() {
    // Up to 48 header lines are parsed with slots on the worker's stack, more with slots on the
    // heap (vendor/ureq-proto/PATCHES.md): both sides, on one keep-alive upstream connection.
    for lines in [10usize, 100] {
        let mut headers = vec![("content-type", "application/json")];
        for i in 0..lines {
            let name: &'static str = Box::leak(format!("x-upstream-extra-{i}").into_boxed_str());
            headers.push((name, "v"));
        }
        headers.push(("x-ratelimit-remaining-requests", "42"));
        let up = Capture::start(Canned {
            status: 200,
            headers,
            body: OPENAI_ANSWER.to_string(),
        });
        let gw = gateway("openai", &up);
        for _ in 0..2 {
            let r = post(
                gw.api,
                "/v1/chat/completions",
                &[("authorization", &format!("Bearer {CLIENT_KEY}"))],
                OPENAI_REQUEST,
            );
            assert_eq!(
                r.status,
                200,
                "{lines} lines: {}",
                String::from_utf8_lossy(&r.body)
            );
            assert_eq!(String::from_utf8(r.body.clone()).unwrap(), OPENAI_ANSWER);
            assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("42"));
        }
    }
}

#[test]
fn openai_stream_fields_pass_through_with_usage_asked_for() {
    // The upstream's events; the usage chunk is not for a client that did not ask for it.
    let events = [
        r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}], "x_vendor": {"a":1}}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"h\u00e9llo"},"finish_reason":null}]}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
    ];
    let usage = r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
    let mut sse = String::new();
    for e in events.iter().chain([&usage]) {
        sse.push_str(&format!("data: {e}\n\n"));
    }
    sse.push_str("data: [DONE]\n\n");
    let up = Capture::start(Canned {
        status: 200,
        headers: vec![("content-type", "text/event-stream")],
        body: sse,
    });
    let gw = gateway("openai", &up);
    let body = r#"{"stream": true, "model":"up/streamer", "messages":[{"role":"user","content":"\u00e9"}], "zz_unknown": [1, {"b": 2, "a": 1}], "fallbacks": []}"#;
    let mut conn = Conn::new(gw.api);
    conn.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let resp = conn.sse_response().expect("a stream");
    assert_eq!(resp.status, 200);
    let got: Vec<&str> = resp.events.iter().map(|(e, _)| e.as_str()).collect();
    let mut want: Vec<&str> = events.to_vec();
    want.push("[DONE]");
    assert_eq!(
        got, want,
        "the events byte for byte, without the usage chunk"
    );

    let seen = up.one();
    let all = members(seen.body_str());
    let (rest, model) = split_model(seen.body_str());
    assert_eq!(model, "\"streamer\"");
    // Every field as written, and the usage asked for (the gateway always counts it).
    let options: Vec<&(String, String)> = all
        .iter()
        .filter(|(k, _)| k == "\"stream_options\"")
        .collect();
    assert_eq!(options.len(), 1, "{}", seen.body_str());
    let options: serde_json::Value = serde_json::from_str(&options[0].1).unwrap();
    assert_eq!(options, serde_json::json!({"include_usage": true}));
    let rest: Vec<(String, String)> = rest
        .into_iter()
        .filter(|(k, _)| k != "\"stream_options\"")
        .collect();
    assert_eq!(rest, kept(body));
    let counters = &gw.stats()["pools"]["up"]["counters"];
    assert_eq!(counters["prompt_tokens"], 5, "{counters}");
}

/// An Anthropic request as Claude Code writes them: `cache_control` on system, message and tool
/// blocks, a `system` message inside `messages`, betas' fields, unknown fields.
const ANTHROPIC_REQUEST: &str = r##"{"max_tokens": 1024,
 "system": [{"type":"text","text":"x-billing: cc"},{"type":"text","text":"sys \u00e9 \/","cache_control":{"type":"ephemeral","ttl":"1h"}}],
 "model" : "up/claude-client-name",
 "messages": [{"role":"user","content":[{"type":"text","text":"<reminder>"},{"type":"text","text":"hi \ud83d\ude00","cache_control":{"type":"ephemeral"}}]},{"role":"system","content":"# Environment"}],
 "tools": [{"name":"Bash","description":"Run","input_schema":{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","properties":{"command":{"type":"string"}},"required":["command"],"additionalProperties":false},"cache_control":{"type":"ephemeral"}},{"name":"Later","description":"d","input_schema":{"type":"object"},"defer_loading":true}],
 "thinking": {"type":"adaptive","display":"omitted"},
 "context_management": {"edits":[{"type":"clear_thinking_20251015","keep":"all"}]},
 "output_config": {"effort":"medium"},
 "metadata": {"user_id":"{\"device_id\":\"d1\",\"session_id\":\"s1\"}"},
 "fallbacks": ["mock/gpt-4o"],
 "top_k": 5, "zz_future_field": [null, true, 1.0e-5, {"z":1,"a":2}]}"##;

const ANTHROPIC_ANSWER: &str = r#"{"id":"msg_01PT","type":"message","role":"assistant","model":"claude-client-name","content":[{"type":"text","text":"ol\u00e1 \ud83d\ude00","citations":null}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":21,"cache_creation_input_tokens":3,"cache_read_input_tokens":4,"output_tokens":9,"service_tier":"standard"},  "container": null, "x_new_field":{"k":[1]}}"#;

/// Headers of an Anthropic client (the version and betas Claude Code sends).
const ANTHROPIC_VERSION: &str = "2023-06-01";
const ANTHROPIC_BETA: &str =
    "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27";

fn anthropic_headers(request_id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("x-api-key", CLIENT_KEY.to_string()),
        ("anthropic-version", ANTHROPIC_VERSION.to_string()),
        ("anthropic-beta", ANTHROPIC_BETA.to_string()),
        ("x-request-id", request_id.to_string()),
    ]
}

fn post_anthropic(gw: &Gateway, path: &str, request_id: &str, body: &str) -> common::Response {
    let headers = anthropic_headers(request_id);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    post(gw.api, path, &headers, body)
}

/// The upstream got the Anthropic client's headers, the provider's key and the client's id.
fn check_anthropic_headers(seen: &Captured, request_id: &str) {
    assert_eq!(seen.header("x-api-key"), Some(PROVIDER_KEY));
    assert_eq!(seen.header("authorization"), None);
    assert!(!format!("{:?}", seen.headers).contains(CLIENT_KEY));
    assert_eq!(seen.header("anthropic-version"), Some(ANTHROPIC_VERSION));
    assert_eq!(seen.header("anthropic-beta"), Some(ANTHROPIC_BETA));
    assert_eq!(seen.header("x-request-id"), Some(request_id));
}

#[test]
fn anthropic_request_fields_and_headers_reach_an_anthropic_upstream_byte_for_byte() {
    let up = Capture::start(Canned {
        status: 200,
        headers: vec![
            ("content-type", "application/json"),
            ("anthropic-ratelimit-requests-limit", "4000"),
            ("anthropic-ratelimit-requests-remaining", "3999"),
            ("anthropic-ratelimit-tokens-remaining", "390000"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2026-01-01T00:00:05Z",
            ),
        ],
        body: ANTHROPIC_ANSWER.to_string(),
    });
    let gw = gateway("anthropic", &up);
    let r = post_anthropic(
        &gw,
        "/v1/messages?beta=true",
        "trace-anthropic-passthrough-1",
        ANTHROPIC_REQUEST,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let seen = up.one();
    assert_eq!(
        (seen.method.as_str(), seen.target.as_str()),
        ("POST", "/v1/messages")
    );
    let (rest, model) = split_model(seen.body_str());
    assert_eq!(model, "\"claude-client-name\"");
    let want = kept(ANTHROPIC_REQUEST);
    assert_eq!(rest.len(), want.len(), "{}", seen.body_str());
    for (got, want) in rest.iter().zip(&want) {
        assert_eq!(got, want, "field as the client wrote it");
    }
    // cache_control blocks kept where the client put them (inside the fields compared above).
    assert_eq!(seen.body_str().matches("\"cache_control\"").count(), 3);
    assert!(!seen.body_str().contains("fallbacks"));
    check_anthropic_headers(&seen, "trace-anthropic-passthrough-1");

    assert_eq!(String::from_utf8(r.body.clone()).unwrap(), ANTHROPIC_ANSWER);
    assert_eq!(r.header("anthropic-ratelimit-requests-limit"), Some("4000"));
    assert_eq!(
        r.header("anthropic-ratelimit-requests-remaining"),
        Some("3999")
    );
    assert_eq!(
        r.header("anthropic-ratelimit-tokens-remaining"),
        Some("390000")
    );
    assert_eq!(
        r.header("anthropic-ratelimit-input-tokens-reset"),
        Some("2026-01-01T00:00:05Z")
    );
    assert_eq!(
        r.header("x-request-id"),
        Some("trace-anthropic-passthrough-1")
    );
    assert_eq!(
        r.header("request-id"),
        Some("trace-anthropic-passthrough-1")
    );
    // Anthropic's input_tokens leaves the cache out; the gateway counts all prompt tokens.
    let counters = &gw.stats()["pools"]["up"]["counters"];
    assert_eq!(counters["prompt_tokens"], 21 + 3 + 4, "{counters}");
    assert_eq!(counters["completion_tokens"], 9, "{counters}");
}

#[test]
fn anthropic_count_tokens_passes_through() {
    let answer =
        r#"{ "input_tokens" : 4242 , "context_management": {"original_input_tokens": 5000} }"#;
    let up = Capture::start(Canned {
        status: 200,
        headers: vec![("content-type", "application/json")],
        body: answer.to_string(),
    });
    let gw = gateway("anthropic", &up);
    let body = r#"{"messages":[{"role":"user","content":"count \u00e9"}], "model":"up/claude-counter", "tools": [], "zz": {"k": 1.10}, "system": [{"type":"text","text":"s","cache_control":{"type":"ephemeral"}}]}"#;
    let r = post_anthropic(
        &gw,
        "/anthropic/v1/messages/count_tokens",
        "trace-count-1",
        body,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(String::from_utf8(r.body.clone()).unwrap(), answer);
    assert_eq!(
        r.header("x-deepintshield-estimate"),
        None,
        "the provider's own count"
    );

    let seen = up.one();
    assert_eq!(seen.target, "/v1/messages/count_tokens");
    let (rest, model) = split_model(seen.body_str());
    assert_eq!(model, "\"claude-counter\"");
    assert_eq!(rest, kept(body));
    check_anthropic_headers(&seen, "trace-count-1");
}

#[test]
fn anthropic_stream_events_come_back_byte_for_byte() {
    let events = [
        (
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_s1","type":"message","role":"assistant","model":"claude-client-name","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":1}}}"#,
        ),
        (
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        ),
        ("ping", r#"{"type": "ping"}"#),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"h\u00e9 \ud83d\ude00"}}"#,
        ),
        (
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0 }"#,
        ),
        (
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":6},"x_new":{}}"#,
        ),
        ("message_stop", r#"{"type":"message_stop"}"#),
    ];
    let sse: String = events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect();
    let up = Capture::start(Canned {
        status: 200,
        headers: vec![("content-type", "text/event-stream")],
        body: sse,
    });
    let gw = gateway("anthropic", &up);
    let body = ANTHROPIC_REQUEST.replacen("{", "{\"stream\": true, ", 1);
    let mut head = String::from(
        "POST /v1/messages?beta=true HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n",
    );
    for (k, v) in anthropic_headers("trace-stream-1") {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut conn = Conn::new(gw.api);
    conn.send(format!("{head}{body}").as_bytes());
    let resp = conn.sse_response().expect("a stream");
    assert_eq!(resp.status, 200);
    let got: Vec<String> = resp.events.iter().map(|(e, _)| e.clone()).collect();
    let want: Vec<String> = events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}"))
        .collect();
    assert_eq!(got, want);

    let seen = up.one();
    let (rest, model) = split_model(seen.body_str());
    assert_eq!(model, "\"claude-client-name\"");
    assert_eq!(
        rest,
        kept(&body),
        "an Anthropic stream request is not rewritten"
    );
    check_anthropic_headers(&seen, "trace-stream-1");
}

#[test]
fn a_model_id_may_be_percent_encoded() {
    let up = Capture::start(Canned {
        status: 500,
        headers: vec![],
        body: String::new(),
    });
    let gw = gateway("openai", &up);
    let r = request(gw.api, "GET", "/v1/models/mock%2Fgpt-4o", &[], b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(
        (v["id"].as_str(), v["object"].as_str()),
        (Some("mock/gpt-4o"), Some("model"))
    );
    // Anthropic's shape for the anthropic SDK.
    let r = request(
        gw.api,
        "GET",
        "/anthropic/v1/models/mock%2Fgpt-4o",
        &[("anthropic-version", ANTHROPIC_VERSION)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(
        (v["id"].as_str(), v["type"].as_str()),
        (Some("mock/gpt-4o"), Some("model"))
    );
    let r = request(gw.api, "GET", "/v1/models/mock%2Fnot-listed", &[], b"");
    assert_eq!(r.status, 404);
    assert!(
        up.seen.lock().unwrap().is_empty(),
        "a model lookup asks no upstream"
    );
}

/// A streamed answer's head carries the upstream's rate-limit headers too (streams are what
/// Claude Code and most agents use).
#[test]
fn stream_answers_carry_the_upstreams_rate_limit_headers() {
    let cases = [
        (
            "openai",
            "x-ratelimit-remaining-requests",
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
            "/v1/chat/completions",
            "{\"model\":\"up/m\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
        ),
        (
            "anthropic",
            "anthropic-ratelimit-requests-remaining",
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":1}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            "/v1/messages",
            "{\"model\":\"up/m\",\"max_tokens\":8,\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
        ),
    ];
    for (kind, header, sse, path, body) in cases {
        let up = Capture::start(Canned {
            status: 200,
            headers: vec![("content-type", "text/event-stream"), (header, "77")],
            body: sse.to_string(),
        });
        let gw = gateway(kind, &up);
        let mut conn = Conn::new(gw.api);
        conn.send(
            format!(
                "POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\nanthropic-version: {ANTHROPIC_VERSION}\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        let resp = conn.sse_response().expect("a stream");
        assert_eq!(resp.status, 200, "{kind}");
        assert!(resp.events.len() >= 2, "{kind}: {:?}", resp.events);
        assert_eq!(
            resp.header(header),
            Some("77"),
            "{kind}: {:?}",
            resp.headers
        );
    }
}

#[test]
fn a_calls_protocol_state_is_a_pointer_in_the_frames_that_move_it() {
    // ureq moves a call's state from step to step by value, and its `run` keeps a slot for each
    // step's copy in one frame that stays on the worker's stack while the answer is read: boxed
    // (vendor/ureq-proto/PATCHES.md), each copy is a pointer, and a worker's deepest point is a
    // page higher.
    use std::mem::size_of;
    use ureq_proto::client::state::{Prepare, RecvBody, RecvResponse, SendBody, SendRequest};
    use ureq_proto::client::Call;
    let pointer = size_of::<usize>();
    assert_eq!(size_of::<Call<Prepare>>(), pointer);
    assert_eq!(size_of::<Call<SendRequest>>(), pointer);
    assert_eq!(size_of::<Call<SendBody>>(), pointer);
    assert_eq!(size_of::<Call<RecvResponse>>(), pointer);
    assert_eq!(size_of::<Call<RecvBody>>(), pointer);
}

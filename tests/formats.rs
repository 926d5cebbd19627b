//! Golden tests of the wire-format codecs: fixture requests, responses and stream transcripts
//! (`tests/fixtures/formats/*`, shaped after the providers' published examples) are decoded and
//! re-encoded in both directions and compared with the expected outputs in
//! `tests/fixtures/formats/expected/` (JSON compared as values, SSE byte for byte).
//!
//! After a deliberate change of output, `FORMATS_UPDATE_GOLDEN=1 cargo test --test formats`
//! rewrites the expected files; review the diff before committing it.

mod common;

use common::golden::{decode_sse, dump, encode_stream, parse_sse, Golden};
use deepintshield::formats::{
    anthropic, gemini, openai_chat, AnswerOptions, ChatResponse, EncodeInfo, EncodeOptions,
    FinishReason, Format, Part, PartKind, StreamEvent,
};
use serde_json::{json, Value};

const GOLDEN: Golden = Golden {
    inputs: "formats",
    expected: "formats/expected",
};

/// The `created` stamp the OpenAI encoders are given in these tests.
const CREATED: u64 = 1_700_000_000;

fn to_anthropic_sse(events: &[StreamEvent], model: &str) -> Vec<u8> {
    let opts = AnswerOptions::default();
    encode_stream(Format::Anthropic, model, opts, CREATED, events)
}

fn to_openai_sse(events: &[StreamEvent], model: &str, include_usage: bool) -> Vec<u8> {
    let opts = AnswerOptions {
        include_usage,
        ..AnswerOptions::default()
    };
    encode_stream(Format::OpenAiChat, model, opts, CREATED, events)
}

fn encode_anthropic_request(body: &[u8], opts: &EncodeOptions) -> (Vec<u8>, EncodeInfo) {
    let req = openai_chat::decode_request(body).unwrap();
    let mut out = Vec::new();
    let info =
        anthropic::encode_request(&req, "claude-sonnet-4-5-20250929", opts, &mut out).unwrap();
    (out, info)
}

// Requests.

#[test]
fn openai_request_to_anthropic() {
    let (out, info) = encode_anthropic_request(
        &GOLDEN.input("openai_request.json"),
        &EncodeOptions::default(),
    );
    assert_eq!(info, EncodeInfo::default());
    GOLDEN.json("openai_request.to_anthropic.json", &out);
}

#[test]
fn openai_request_to_openai_keeps_unknown_fields() {
    let req = openai_chat::decode_request(&GOLDEN.input("openai_request.json")).unwrap();
    let mut out = Vec::new();
    openai_chat::encode_request(
        &req,
        "gpt-4o-2024-08-06",
        &EncodeOptions::default(),
        &mut out,
    )
    .unwrap();
    GOLDEN.json("openai_request.to_openai.json", &out);
    let v: Value = serde_json::from_slice(&out).unwrap();
    for field in [
        "seed",
        "frequency_penalty",
        "service_tier",
        "store",
        "metadata",
    ] {
        let original: Value = serde_json::from_slice(&GOLDEN.input("openai_request.json")).unwrap();
        assert_eq!(v[field], original[field], "{field}");
    }
    assert!(v.get("fallbacks").is_none());
}

#[test]
fn anthropic_request_to_openai() {
    let req = anthropic::decode_request(&GOLDEN.input("anthropic_request.json")).unwrap();
    let mut out = Vec::new();
    let info =
        openai_chat::encode_request(&req, "gpt-4.1", &EncodeOptions::default(), &mut out).unwrap();
    assert_eq!(info, EncodeInfo::default());
    GOLDEN.json("anthropic_request.to_openai.json", &out);
}

#[test]
fn anthropic_request_to_anthropic_is_faithful() {
    let body = GOLDEN.input("anthropic_request.json");
    let req = anthropic::decode_request(&body).unwrap();
    let mut out = Vec::new();
    anthropic::encode_request(
        &req,
        "claude-sonnet-4-5-20250929",
        &EncodeOptions::default(),
        &mut out,
    )
    .unwrap();
    GOLDEN.json("anthropic_request.to_anthropic.json", &out);
    // Everything the client sent comes back, apart from the default-valued
    // `disable_parallel_tool_use: false`.
    let mut original: Value = serde_json::from_slice(&body).unwrap();
    original["tool_choice"] = json!({"type": "auto"});
    let actual: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(actual, original);
}

#[test]
fn structured_output_goes_to_anthropic_as_a_forced_tool() {
    let (out, info) = encode_anthropic_request(
        &GOLDEN.input("openai_request_structured.json"),
        &EncodeOptions::default(),
    );
    assert_eq!(
        info.structured_output_tool.as_deref(),
        Some("math_reasoning")
    );
    GOLDEN.json("openai_request_structured.to_anthropic.json", &out);
}

#[test]
fn structured_answer_comes_back_as_text() {
    let (_, info) = encode_anthropic_request(
        &GOLDEN.input("openai_request_structured.json"),
        &EncodeOptions::default(),
    );
    let mut resp =
        anthropic::decode_response(&GOLDEN.input("anthropic_response_structured.json"), &info)
            .unwrap();
    assert_eq!(resp.finish, FinishReason::Stop);
    resp.created = Some(CREATED);
    let mut out = Vec::new();
    openai_chat::encode_response(&resp, "gpt-4o-2024-08-06", &mut out);
    GOLDEN.json("anthropic_response_structured.to_openai.json", &out);
    let v: Value = serde_json::from_slice(&out).unwrap();
    let answer: Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(answer["final_answer"], "x = -15/4");

    let events = decode_sse(
        Format::Anthropic,
        &info,
        &GOLDEN.input("anthropic_stream_structured.sse"),
    );
    let sse = to_openai_sse(&events, "gpt-4o-2024-08-06", false);
    GOLDEN.text("anthropic_stream_structured.to_openai.sse", &sse);
    let text: String = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::TextDelta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["final_answer"], "x = -15/4");
    assert!(events.contains(&StreamEvent::Finish(FinishReason::Stop)));
}

#[test]
fn tool_choice_crosses_both_ways() {
    let tools = r#"[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]"#;
    for (openai, anthropic_choice) in [
        (json!("auto"), json!({"type": "auto"})),
        (json!("none"), json!({"type": "none"})),
        (json!("required"), json!({"type": "any"})),
        (
            json!({"type": "function", "function": {"name": "f"}}),
            json!({"type": "tool", "name": "f"}),
        ),
    ] {
        let body =
            format!(r#"{{"model":"m","messages":[],"tools":{tools},"tool_choice":{openai}}}"#);
        let (out, _) = encode_anthropic_request(body.as_bytes(), &EncodeOptions::default());
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["tool_choice"], anthropic_choice, "{openai}");
        // And back: an Anthropic client's choice as an OpenAI provider takes it.
        let body = json!({"model": "c", "max_tokens": 5, "messages": [],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": anthropic_choice});
        let req = anthropic::decode_request(body.to_string().as_bytes()).unwrap();
        let mut out = Vec::new();
        openai_chat::encode_request(&req, "g", &EncodeOptions::default(), &mut out).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["tool_choice"], openai);
    }
    let body = json!({"model": "c", "max_tokens": 5, "messages": [],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true}});
    let req = anthropic::decode_request(body.to_string().as_bytes()).unwrap();
    let mut out = Vec::new();
    openai_chat::encode_request(&req, "g", &EncodeOptions::default(), &mut out).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        (&v["tool_choice"], &v["parallel_tool_calls"]),
        (&json!("required"), &json!(false))
    );
}

// Responses.

#[test]
fn anthropic_response_to_openai() {
    let mut resp = anthropic::decode_response(
        &GOLDEN.input("anthropic_response.json"),
        &EncodeInfo::default(),
    )
    .unwrap();
    assert_eq!(
        (
            resp.usage.input_tokens,
            resp.usage.cache_read_tokens,
            resp.usage.cache_write_tokens
        ),
        (2095 + 12000 + 1800, 12000, 1800)
    );
    resp.created = Some(CREATED);
    let mut out = Vec::new();
    openai_chat::encode_response(&resp, "gpt-4o", &mut out);
    GOLDEN.json("anthropic_response.to_openai.json", &out);
}

#[test]
fn anthropic_response_to_anthropic_is_faithful() {
    let body = GOLDEN.input("anthropic_response.json");
    let resp = anthropic::decode_response(&body, &EncodeInfo::default()).unwrap();
    let mut out = Vec::new();
    anthropic::encode_response(&resp, "claude-sonnet-4-5-20250929", &mut out);
    GOLDEN.json("anthropic_response.to_anthropic.json", &out);
    let mut original: Value = serde_json::from_slice(&body).unwrap();
    original["usage"]
        .as_object_mut()
        .unwrap()
        .remove("service_tier");
    assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), original);
}

#[test]
fn openai_response_to_anthropic() {
    let resp = openai_chat::decode_response(
        &GOLDEN.input("openai_response.json"),
        &EncodeInfo::default(),
    )
    .unwrap();
    assert_eq!(
        (
            resp.usage.input_tokens,
            resp.usage.cache_read_tokens,
            resp.usage.reasoning_tokens
        ),
        (1117, 1024, 192)
    );
    let mut out = Vec::new();
    anthropic::encode_response(&resp, "claude-sonnet-4-5", &mut out);
    GOLDEN.json("openai_response.to_anthropic.json", &out);
}

#[test]
fn openai_response_to_openai() {
    let resp = openai_chat::decode_response(
        &GOLDEN.input("openai_response.json"),
        &EncodeInfo::default(),
    )
    .unwrap();
    let mut out = Vec::new();
    openai_chat::encode_response(&resp, "o4-mini", &mut out);
    GOLDEN.json("openai_response.to_openai.json", &out);
}

#[test]
fn finish_reasons_cross_both_ways() {
    let anthropic_to_openai = [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("tool_use", "tool_calls"),
        ("pause_turn", "stop"),
        ("refusal", "content_filter"),
        ("model_context_window_exceeded", "length"),
    ];
    for (stop_reason, finish_reason) in anthropic_to_openai {
        let body = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "c",
            "content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason,
            "stop_sequence": if stop_reason == "stop_sequence" { json!("###") } else { Value::Null },
            "usage": {"input_tokens": 1, "output_tokens": 1}});
        let resp = anthropic::decode_response(body.to_string().as_bytes(), &EncodeInfo::default())
            .unwrap();
        let mut out = Vec::new();
        openai_chat::encode_response(&resp, "m", &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["choices"][0]["finish_reason"], finish_reason,
            "{stop_reason}"
        );
        // And back to an Anthropic client unchanged, the matched sequence included.
        let mut out = Vec::new();
        anthropic::encode_response(&resp, "c", &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (&v["stop_reason"], &v["stop_sequence"]),
            (&body["stop_reason"], &body["stop_sequence"])
        );
    }
    let openai_to_anthropic = [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        ("function_call", "tool_use"),
    ];
    for (finish_reason, stop_reason) in openai_to_anthropic {
        let body = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}});
        let resp =
            openai_chat::decode_response(body.to_string().as_bytes(), &EncodeInfo::default())
                .unwrap();
        let mut out = Vec::new();
        anthropic::encode_response(&resp, "c", &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stop_reason"], stop_reason, "{finish_reason}");
        let mut out = Vec::new();
        openai_chat::encode_response(&resp, "m", &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], finish_reason);
    }
}

// Streams.

#[test]
fn openai_stream_to_anthropic() {
    let events = decode_sse(
        Format::OpenAiChat,
        &EncodeInfo::default(),
        &GOLDEN.input("openai_stream.sse"),
    );
    GOLDEN.text("openai_stream.events.txt", &dump(&events));
    // Two parallel tool calls, each with its arguments reassembled from the fragments.
    let mut calls: Vec<(String, String)> = Vec::new();
    for e in &events {
        match e {
            StreamEvent::PartStart {
                kind: PartKind::ToolCall { id, .. },
                ..
            } => calls.push((id.clone(), String::new())),
            StreamEvent::ToolArgsDelta { json, .. } => calls.last_mut().unwrap().1.push_str(json),
            _ => {}
        }
    }
    assert_eq!(calls.len(), 2);
    for (_, args) in &calls {
        serde_json::from_str::<Value>(args).unwrap();
    }
    GOLDEN.text(
        "openai_stream.to_anthropic.sse",
        &to_anthropic_sse(&events, "claude-sonnet-4-5"),
    );
}

#[test]
fn anthropic_stream_to_openai() {
    let events = decode_sse(
        Format::Anthropic,
        &EncodeInfo::default(),
        &GOLDEN.input("anthropic_stream.sse"),
    );
    GOLDEN.text("anthropic_stream.events.txt", &dump(&events));
    GOLDEN.text(
        "anthropic_stream.to_openai.sse",
        &to_openai_sse(&events, "gpt-4o", true),
    );
    // Without include_usage there is no usage chunk and no `usage` field.
    let plain = to_openai_sse(&events, "gpt-4o", false);
    let text = String::from_utf8(plain).unwrap();
    assert!(!text.contains("\"usage\""));
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[test]
fn stream_round_trips_keep_the_sequence() {
    let events = decode_sse(
        Format::Anthropic,
        &EncodeInfo::default(),
        &GOLDEN.input("anthropic_stream.sse"),
    );
    GOLDEN.text(
        "anthropic_stream.to_anthropic.sse",
        &to_anthropic_sse(&events, "claude-sonnet-4-5-20250929"),
    );
    // The same events, in the same order, as the provider sent them (pings aside).
    let sent: Vec<_> = parse_sse(&GOLDEN.input("anthropic_stream.sse"))
        .into_iter()
        .map(|e| e.event.unwrap())
        .collect();
    let again: Vec<_> = parse_sse(&to_anthropic_sse(&events, "m"))
        .into_iter()
        .map(|e| e.event.unwrap())
        .collect();
    assert_eq!(sent, again);

    let events = decode_sse(
        Format::OpenAiChat,
        &EncodeInfo::default(),
        &GOLDEN.input("openai_stream.sse"),
    );
    GOLDEN.text(
        "openai_stream.to_openai.sse",
        &to_openai_sse(&events, "gpt-4o-2024-08-06", true),
    );
}

#[test]
fn stream_errors_render_in_the_client_format() {
    let mut dec = anthropic::StreamDecoder::new(&EncodeInfo::default());
    let mut events = Vec::new();
    dec.feed(
        Some("error"),
        br#"{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}"#,
        &mut events,
    )
    .unwrap();
    let mut out = Vec::new();
    let mut enc = openai_chat::StreamEncoder::new("gpt-4o", false, CREATED);
    enc.encode(&events[0], &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "data: {\"error\":{\"message\":\"Overloaded\",\"type\":\"overloaded_error\",\"param\":null,\"code\":null}}\n\n"
    );

    let mut dec = openai_chat::StreamDecoder::new();
    let mut events = Vec::new();
    dec.feed(None, br#"{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}"#, &mut events)
        .unwrap();
    let mut out = Vec::new();
    anthropic::StreamEncoder::new("claude").encode(&events[0], &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"The server had an error\"}}\n\n"
    );
}

#[test]
fn keepalives() {
    let mut out = Vec::new();
    openai_chat::StreamEncoder::keepalive(&mut out);
    anthropic::StreamEncoder::ping(&mut out);
    assert_eq!(
        out,
        b": keep-alive\n\nevent: ping\ndata: {\"type\":\"ping\"}\n\n"
    );
}

// Errors.

#[test]
fn upstream_errors_translate_into_the_client_format() {
    let e = anthropic::decode_error(
        429,
        br#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#,
    );
    let body =
        openai_chat::error_body(e.status, Some(&e.error_type), &e.message, e.code.as_deref());
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"error": {"message": "Number of request tokens has exceeded your per-minute rate limit",
            "type": "rate_limit_error", "param": null, "code": null}})
    );
    let e = openai_chat::decode_error(
        401,
        br#"{"error":{"message":"Incorrect API key provided: sk-abc***. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
    );
    let body = anthropic::error_body(e.status, Some(&e.error_type), &e.message, None);
    let v: Value = serde_json::from_slice(&body).unwrap();
    // OpenAI calls a bad key an invalid request; an Anthropic client expects its 401 type.
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let body = anthropic::error_body(e.status, None, &e.message, None);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
}

#[test]
fn count_tokens_of_a_claude_code_request() {
    let req = anthropic::decode_request(&GOLDEN.input("anthropic_request.json")).unwrap();
    let n = anthropic::count_tokens(&req);
    // Three images and about 1.4 KB of text, schemas and arguments.
    assert!(
        (3 * anthropic::IMAGE_TOKENS_ESTIMATE + 200..3 * anthropic::IMAGE_TOKENS_ESTIMATE + 600)
            .contains(&n),
        "{n}"
    );
    assert_eq!(
        anthropic::count_tokens_body(n),
        format!("{{\"input_tokens\":{n}}}").into_bytes()
    );
}

#[test]
fn response_parts_survive_the_neutral_model() {
    // Reasoning without a signature (from an OpenAI-compatible provider) reaches an Anthropic
    // client with an empty signature; a later request carrying it back to Anthropic drops it.
    let resp = ChatResponse {
        id: "gen-1".into(),
        content: vec![
            Part::Reasoning {
                text: "hmm".into(),
                signature: None,
            },
            Part::text("answer"),
        ],
        ..ChatResponse::default()
    };
    let mut out = Vec::new();
    anthropic::encode_response(&resp, "m", &mut out);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v["content"][0],
        json!({"type": "thinking", "thinking": "hmm", "signature": ""})
    );
    let next = json!({"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": v["content"]},
        {"role": "user", "content": "more"}]});
    let req = anthropic::decode_request(next.to_string().as_bytes()).unwrap();
    let mut out = Vec::new();
    anthropic::encode_request(&req, "claude", &EncodeOptions::default(), &mut out).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v["messages"][1]["content"],
        json!([{"type": "text", "text": "answer"}])
    );
}

// Gemini (generateContent / streamGenerateContent?alt=sse).

/// Tool-call ids Gemini did not give are made up fresh: in a golden file they are replaced by
/// `call_<n>` in order of appearance (the signature riding in an id is kept).
fn stable_call_ids(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    let mut n = 0;
    while let Some(at) = rest.find("\"call_") {
        out.push_str(&rest[..at + 1]);
        let tail = &rest[at + 1..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(tail.len());
        let id = &tail[..end];
        let sig = id.find("__sig_").map_or("", |i| &id[i..]);
        out.push_str(&format!("call_{n}{sig}"));
        n += 1;
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn encode_gemini(req: &deepintshield::formats::ChatRequest) -> Vec<u8> {
    let mut out = Vec::new();
    gemini::encode_request(req, "gemini-2.5-flash", &EncodeOptions::default(), &mut out).unwrap();
    out
}

#[test]
fn openai_request_to_gemini() {
    let req = openai_chat::decode_request(&GOLDEN.input("openai_request.json")).unwrap();
    GOLDEN.json("openai_request.to_gemini.json", &encode_gemini(&req));
}

#[test]
fn anthropic_request_to_gemini() {
    let req = anthropic::decode_request(&GOLDEN.input("anthropic_request.json")).unwrap();
    GOLDEN.json("anthropic_request.to_gemini.json", &encode_gemini(&req));
}

#[test]
fn structured_output_goes_to_gemini_as_a_response_schema() {
    let req = openai_chat::decode_request(&GOLDEN.input("openai_request_structured.json")).unwrap();
    GOLDEN.json(
        "openai_request_structured.to_gemini.json",
        &encode_gemini(&req),
    );
}

#[test]
fn gemini_response_to_both_clients() {
    let mut resp = gemini::decode_response(
        &GOLDEN.input("gemini_response.json"),
        &EncodeInfo::default(),
    )
    .unwrap();
    resp.created = Some(CREATED);
    assert_eq!(resp.finish, FinishReason::ToolCalls);
    assert_eq!(
        (
            resp.usage.input_tokens,
            resp.usage.output_tokens,
            resp.usage.reasoning_tokens
        ),
        (1261, 159, 101)
    );
    let mut out = Vec::new();
    openai_chat::encode_response(&resp, "gemini-2.5-flash", &mut out);
    let text = stable_call_ids(&String::from_utf8(out).unwrap());
    GOLDEN.json("gemini_response.to_openai.json", text.as_bytes());
    let mut out = Vec::new();
    anthropic::encode_response(&resp, "gemini-2.5-flash", &mut out);
    let text = stable_call_ids(&String::from_utf8(out).unwrap());
    GOLDEN.json("gemini_response.to_anthropic.json", text.as_bytes());
}

#[test]
fn gemini_safety_stop_and_blocked_prompt() {
    let mut resp = gemini::decode_response(
        &GOLDEN.input("gemini_response_safety.json"),
        &EncodeInfo::default(),
    )
    .unwrap();
    resp.created = Some(CREATED);
    let mut out = Vec::new();
    openai_chat::encode_response(&resp, "gemini-2.0-flash", &mut out);
    GOLDEN.json("gemini_response_safety.to_openai.json", &out);
    let mut out = Vec::new();
    anthropic::encode_response(&resp, "gemini-2.0-flash", &mut out);
    GOLDEN.json("gemini_response_safety.to_anthropic.json", &out);
    let e = gemini::decode_response(&GOLDEN.input("gemini_blocked.json"), &EncodeInfo::default())
        .unwrap_err();
    assert_eq!((e.status, e.code), (400, "content_filter"));
}

#[test]
fn gemini_stream_to_both_clients() {
    let events = decode_sse(
        Format::Gemini,
        &EncodeInfo::default(),
        &GOLDEN.input("gemini_stream.sse"),
    );
    let dumped = stable_call_ids(&String::from_utf8(dump(&events)).unwrap());
    GOLDEN.text("gemini_stream.events.txt", dumped.as_bytes());
    let sse = to_openai_sse(&events, "gemini-2.5-flash", true);
    let text = stable_call_ids(&String::from_utf8(sse).unwrap());
    GOLDEN.text("gemini_stream.to_openai.sse", text.as_bytes());
    let sse = to_anthropic_sse(&events, "gemini-2.5-flash");
    let text = stable_call_ids(&String::from_utf8(sse).unwrap());
    GOLDEN.text("gemini_stream.to_anthropic.sse", text.as_bytes());
}

#[test]
fn thought_signatures_survive_an_openai_round_trip() {
    let resp = gemini::decode_response(
        &GOLDEN.input("gemini_response.json"),
        &EncodeInfo::default(),
    )
    .unwrap();
    let mut out = Vec::new();
    openai_chat::encode_response(&resp, "gemini-2.5-flash", &mut out);
    let answer: Value = serde_json::from_slice(&out).unwrap();
    let calls = answer["choices"][0]["message"]["tool_calls"].clone();
    let ids: Vec<&str> = calls
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    // The next turn, as the openai SDK sends it: the calls and their results.
    let next = json!({
        "model": "gemini-2.5-flash",
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": calls},
            {"role": "tool", "tool_call_id": ids[0], "content": "12 C"},
            {"role": "tool", "tool_call_id": ids[1], "content": "15 C"}
        ]
    });
    let req = openai_chat::decode_request(next.to_string().as_bytes()).unwrap();
    let body: Value = serde_json::from_slice(&encode_gemini(&req)).unwrap();
    assert_eq!(
        body["contents"][1]["parts"][0]["thoughtSignature"],
        "CiQB0e2Kb4k0rOXy8aZb1YqSvDd8VeA3nAr3nZ8zpOH3NzK9mYIKXgHR7Yp2"
    );
    assert!(body["contents"][1]["parts"][1]
        .get("thoughtSignature")
        .is_none());
    assert_eq!(
        body["contents"][2]["parts"],
        json!([
            {"functionResponse": {"name": "get_weather", "response": {"output": "12 C"}}},
            {"functionResponse": {"name": "get_weather", "response": {"output": "15 C"}}}
        ])
    );
}

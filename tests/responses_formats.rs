//! Golden tests of the OpenAI Responses codec (`tests/fixtures/responses/`): the API reference's
//! own examples (a text answer, a function call, a text stream) decoded and encoded again must
//! give back every field the reference has, with its values (but the ids of output items, which
//! are the gateway's, and the request settings a translated answer does not echo); a Codex
//! request is decoded and encoded for Anthropic and Chat Completions providers; the Anthropic
//! and Chat Completions stream fixtures of `tests/fixtures/formats/` are written as Responses
//! streams. The last two are compared with `tests/fixtures/responses/expected/` (JSON as values,
//! SSE byte for byte); `FORMATS_UPDATE_GOLDEN=1 cargo test --test responses_formats` rewrites
//! them after a deliberate change (review the diff).

mod common;

use common::golden::{decode_sse, encode_stream, parse_sse, Golden, Sse};
use deepintshield::formats::{
    anthropic, openai_chat, responses, AnswerOptions, EncodeInfo, EncodeOptions, Format,
    StreamEvent,
};
use serde_json::Value;

/// Inputs are named from `tests/fixtures/` (`responses/...`, `formats/...`).
const GOLDEN: Golden = Golden {
    inputs: "",
    expected: "responses/expected",
};

/// The `created_at` the stream encoder is given.
const CREATED: u64 = 1_741_290_958;

/// `actual` with every `"completed_at":<time>` set to 0 (the clock of the run).
fn without_clock(actual: &[u8]) -> Vec<u8> {
    const KEY: &[u8] = b"\"completed_at\":";
    let mut out = Vec::with_capacity(actual.len());
    let mut rest = actual;
    while let Some(at) = rest.windows(KEY.len()).position(|w| w == KEY) {
        out.extend_from_slice(&rest[..at + KEY.len()]);
        rest = &rest[at + KEY.len()..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 0 {
            out.push(b'0');
        }
        rest = &rest[digits..];
    }
    out.extend_from_slice(rest);
    out
}

/// `actual`, without its clock, must be expected file `name` (JSON compared as values).
fn golden(name: &str, actual: &[u8], json: bool) {
    let actual = without_clock(actual);
    match json {
        true => GOLDEN.json(name, &actual),
        false => GOLDEN.text(name, &actual),
    }
}

/// Fields where a translated answer legitimately differs from the reference: the ids of output
/// items (the gateway's own), the time it completed, and the request settings it does not echo.
const NOT_COMPARED: &[&str] = &[
    "completed_at",
    "instructions",
    "temperature",
    "top_p",
    "store",
    "tools",
];

/// `ours` has every field of `reference` with the same value (arrays element by element), but
/// the fields of [`NOT_COMPARED`] and item ids (`id` inside `output` and `item`, `item_id`).
fn assert_covers(ours: &Value, reference: &Value, path: &str) {
    match (ours, reference) {
        (Value::Object(o), Value::Object(r)) => {
            for (k, rv) in r {
                let at = format!("{path}.{k}");
                let Some(ov) = o.get(k) else {
                    panic!("{at} missing: ours {ours:#}");
                };
                let item_id = k == "item_id"
                    || (k == "id" && (path.contains(".output[") || path.ends_with(".item")));
                if NOT_COMPARED.contains(&k.as_str()) || item_id {
                    continue;
                }
                assert_covers(ov, rv, &at);
            }
        }
        (Value::Array(o), Value::Array(r)) => {
            assert_eq!(o.len(), r.len(), "{path}: {ours} vs {reference}");
            for (i, (ov, rv)) in o.iter().zip(r).enumerate() {
                assert_covers(ov, rv, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(ours, reference, "{path}"),
    }
}

#[test]
fn reference_answers_come_back_as_the_reference() {
    for name in ["reference_response.json", "reference_function_call.json"] {
        let body = GOLDEN.input(&format!("responses/{name}"));
        let reference: Value = serde_json::from_slice(&body).unwrap();
        let resp = responses::decode_response(&body, &EncodeInfo::default()).unwrap();
        let mut out = Vec::new();
        responses::encode_response(&resp, reference["model"].as_str().unwrap(), false, &mut out);
        let ours: Value = serde_json::from_slice(&out).unwrap();
        assert_covers(&ours, &reference, name);
    }
}

/// Neutral events written as a Responses stream (with the reasoning state when `state`).
fn responses_stream(events: &[StreamEvent], model: &str, state: bool) -> Vec<u8> {
    let opts = AnswerOptions {
        reasoning_state: state,
        ..AnswerOptions::default()
    };
    encode_stream(Format::OpenAiResponses, model, opts, CREATED, events)
}

/// The names of SSE events.
fn names(events: &[Sse]) -> Vec<Option<&str>> {
    events.iter().map(|e| e.event.as_deref()).collect()
}

#[test]
fn the_reference_stream_comes_back_as_the_reference() {
    let transcript = GOLDEN.input("responses/reference_stream.sse");
    let reference = parse_sse(&transcript);
    let neutral = decode_sse(Format::OpenAiResponses, &EncodeInfo::default(), &transcript);
    let ours = parse_sse(&responses_stream(&neutral, "gpt-5.4", false));
    assert_eq!(names(&ours), names(&reference));
    for (i, (o, r)) in ours.iter().zip(&reference).enumerate() {
        let name = o.event.as_deref().unwrap_or_default();
        let o: Value = serde_json::from_str(&o.data).unwrap();
        let r: Value = serde_json::from_str(&r.data).unwrap();
        assert_covers(&o, &r, &format!("[{i}] {name}"));
        assert_eq!(o["sequence_number"], i as u64, "{name}");
    }
}

#[test]
fn other_formats_streams_become_responses_streams() {
    for (name, format) in [
        ("anthropic_stream.sse", Format::Anthropic),
        ("openai_stream.sse", Format::OpenAiChat),
    ] {
        let transcript = GOLDEN.input(&format!("formats/{name}"));
        let neutral = decode_sse(format, &EncodeInfo::default(), &transcript);
        for state in [false, true] {
            let out = responses_stream(&neutral, "client-model", state);
            // Every event is well-formed and numbered in order.
            for (i, e) in parse_sse(&out).iter().enumerate() {
                let v: Value = serde_json::from_str(&e.data).unwrap();
                assert_eq!(
                    (v["type"].as_str(), v["sequence_number"].as_u64()),
                    (e.event.as_deref(), Some(i as u64))
                );
            }
            let suffix = if state {
                ".to_responses_with_reasoning_state.sse"
            } else {
                ".to_responses.sse"
            };
            // Only Anthropic's stream has reasoning state to carry.
            if !state || format == Format::Anthropic {
                golden(&name.replace(".sse", suffix), &out, false);
            }
        }
    }
}

#[test]
fn a_codex_request_is_translated_for_other_providers() {
    let body = GOLDEN.input("responses/codex_request.json");
    let req = responses::decode_request(&body).unwrap();
    let opts = EncodeOptions::default();
    let mut out = Vec::new();
    anthropic::encode_request(&req, "claude-sonnet-4-5", &opts, &mut out).unwrap();
    golden("codex_request.to_anthropic.json", &out, true);
    let mut out = Vec::new();
    openai_chat::encode_request(&req, "gpt-4.1", &opts, &mut out).unwrap();
    golden("codex_request.to_openai.json", &out, true);
}

/// A provider's answer with signed and redacted reasoning, written for a Responses client that
/// asked for `reasoning.encrypted_content`, then the client's next turn (the output items sent
/// back, with a result for each call), decoded: the reasoning comes back signed, and redacted,
/// as the provider wrote it.
fn next_turn_after(mut answer: deepintshield::formats::ChatResponse, name: &str) -> Vec<u8> {
    // What a provider may leave out (Bedrock names no answer id) is fixed, not the clock's.
    answer.created = Some(CREATED);
    if answer.id.is_empty() {
        answer.id = format!("msg_{name}");
    }
    let mut out = Vec::new();
    responses::encode_response(&answer, "client-model", true, &mut out);
    golden(&format!("{name}.to_responses.json"), &out, true);
    let response: Value = serde_json::from_slice(&out).unwrap();
    let output = response["output"].as_array().unwrap();
    let mut input = vec![serde_json::json!({"role": "user", "content": "What is the weather?"})];
    input.extend(output.iter().cloned());
    for call in output.iter().filter(|i| i["type"] == "function_call") {
        input.push(serde_json::json!({
            "type": "function_call_output", "call_id": call["call_id"], "output": "sunny"
        }));
    }
    serde_json::to_vec(&serde_json::json!({
        "model": "client-model", "input": input, "reasoning": {"effort": "high"},
        "include": ["reasoning.encrypted_content"], "store": false,
    }))
    .unwrap()
}

#[test]
fn anthropic_reasoning_survives_a_responses_round_trip() {
    let body = GOLDEN.input("formats/anthropic_response.json");
    let answer = anthropic::decode_response(&body, &EncodeInfo::default()).unwrap();
    let next = next_turn_after(answer, "anthropic_response");
    let req = responses::decode_request(&next).unwrap();
    let mut out = Vec::new();
    let opts = EncodeOptions::default();
    anthropic::encode_request(&req, "claude-sonnet-4-5", &opts, &mut out).unwrap();
    golden("anthropic_response.next_turn.to_anthropic.json", &out, true);
    // The assistant turn starts with the thinking blocks exactly as Anthropic wrote them.
    let sent: Value = serde_json::from_slice(&out).unwrap();
    let original: Value = serde_json::from_slice(&body).unwrap();
    let turn = &sent["messages"][1]["content"];
    assert_eq!(turn[0], original["content"][0], "{sent:#}");
    assert_eq!(turn[1], original["content"][1], "{sent:#}");
}

#[test]
fn bedrock_reasoning_survives_a_responses_round_trip() {
    use deepintshield::formats::bedrock;
    let body = GOLDEN.input("formats/bedrock_response_reasoning.json");
    let answer = bedrock::decode_response(&body, &EncodeInfo::default()).unwrap();
    let next = next_turn_after(answer, "bedrock_response_reasoning");
    let req = responses::decode_request(&next).unwrap();
    let mut out = Vec::new();
    let opts = EncodeOptions::default();
    bedrock::encode_request(&req, "anthropic.claude-sonnet-4-5", &opts, &mut out).unwrap();
    golden(
        "bedrock_response_reasoning.next_turn.to_bedrock.json",
        &out,
        true,
    );
    let sent: Value = serde_json::from_slice(&out).unwrap();
    let original: Value = serde_json::from_slice(&body).unwrap();
    let turn = &sent["messages"][1]["content"];
    let reasoning = &original["output"]["message"]["content"];
    assert_eq!(turn[0], reasoning[0], "{sent:#}");
    assert_eq!(turn[1], reasoning[1], "{sent:#}");
}

#[test]
fn without_include_the_reasoning_state_is_not_written() {
    let body = GOLDEN.input("formats/anthropic_response.json");
    let answer = anthropic::decode_response(&body, &EncodeInfo::default()).unwrap();
    let mut out = Vec::new();
    responses::encode_response(&answer, "client-model", false, &mut out);
    let response: Value = serde_json::from_slice(&out).unwrap();
    let output = response["output"].as_array().unwrap();
    assert!(output.iter().all(|i| i.get("encrypted_content").is_none()));
    // The redacted thinking has no item; the signed one is its summary alone.
    let reasoning: Vec<&Value> = output.iter().filter(|i| i["type"] == "reasoning").collect();
    assert_eq!(reasoning.len(), 1, "{response:#}");
}

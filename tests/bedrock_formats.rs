//! Golden tests of the Bedrock Converse codec: client requests (OpenAI and Anthropic) encoded for
//! Converse, and Converse answers and a ConverseStream transcript (shaped after the Bedrock API
//! reference and user guide examples: the `top_song` tool, reasoning, prompt-cache usage, the
//! stream's padding field) decoded and written for both client APIs. Inputs are in
//! `tests/fixtures/formats/bedrock_*`, expected outputs in `tests/fixtures/formats/expected/`
//! (JSON compared as values, SSE byte for byte). The stream also goes through real event stream
//! frames (`providers::frames`), whole and split at every byte offset.
//!
//! After a deliberate change of output, `FORMATS_UPDATE_GOLDEN=1 cargo test --test
//! bedrock_formats` rewrites the expected files; review the diff before committing it.

mod common;

use std::io::{BufReader, Read};

use common::golden::{dump, encode_stream, Golden};
use deepintshield::formats::{
    anthropic, bedrock, openai_chat, AnswerOptions, ChatRequest, EncodeInfo, EncodeOptions, Format,
    StreamEvent,
};
use deepintshield::providers::eventstream;
use deepintshield::providers::frames::{EventSource, EventStreamReader, Frame};
use serde_json::Value;

const GOLDEN: Golden = Golden {
    inputs: "formats",
    expected: "formats/expected",
};

/// The `created` stamp the OpenAI encoders are given in these tests.
const CREATED: u64 = 1_700_000_000;

fn encode_for_bedrock(req: &ChatRequest) -> (Vec<u8>, EncodeInfo) {
    let mut out = Vec::new();
    let info = bedrock::encode_request(req, "ignored", &EncodeOptions::default(), &mut out)
        .unwrap_or_else(|e| panic!("{e}"));
    (out, info)
}

#[test]
fn openai_request_to_bedrock() {
    let req = openai_chat::decode_request(&GOLDEN.input("bedrock_openai_request.json")).unwrap();
    let (body, info) = encode_for_bedrock(&req);
    assert_eq!(info, EncodeInfo::default());
    GOLDEN.json("bedrock_openai_request.to_bedrock.json", &body);
}

#[test]
fn anthropic_request_to_bedrock() {
    let req = anthropic::decode_request(&GOLDEN.input("bedrock_anthropic_request.json")).unwrap();
    let (body, _) = encode_for_bedrock(&req);
    GOLDEN.json("bedrock_anthropic_request.to_bedrock.json", &body);
}

#[test]
fn responses_to_both_clients() {
    for name in ["bedrock_response_tool", "bedrock_response_reasoning"] {
        let resp = bedrock::decode_response(
            &GOLDEN.input(&format!("{name}.json")),
            &EncodeInfo::default(),
        )
        .unwrap();
        let mut out = Vec::new();
        openai_chat::encode_response(&resp, "claude-via-bedrock", &mut out);
        let mut v: Value = serde_json::from_slice(&out).unwrap();
        // Converse answers carry no id: the client gets a fresh one.
        let id = v["id"].as_str().unwrap().to_owned();
        assert!(id.starts_with("chatcmpl-") && id.len() > 20, "{id}");
        v["id"] = Value::from("chatcmpl-fresh");
        let created = v["created"].as_u64().unwrap();
        assert!(created > CREATED, "stamped now");
        v["created"] = Value::from(CREATED);
        GOLDEN.json(&format!("{name}.to_openai.json"), v.to_string().as_bytes());

        let mut out = Vec::new();
        anthropic::encode_response(&resp, "claude-via-bedrock", &mut out);
        let mut v: Value = serde_json::from_slice(&out).unwrap();
        assert!(v["id"].as_str().unwrap().starts_with("msg_"));
        v["id"] = Value::from("msg_fresh");
        GOLDEN.json(
            &format!("{name}.to_anthropic.json"),
            v.to_string().as_bytes(),
        );

        // And back into Converse: the same answer (the metrics are not carried).
        let mut out = Vec::new();
        bedrock::encode_response(&resp, "m", &mut out);
        let mut fixture: Value =
            serde_json::from_slice(&GOLDEN.input(&format!("{name}.json"))).unwrap();
        fixture.as_object_mut().unwrap().remove("metrics");
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), fixture);
    }
}

/// The transcript's events: `:event-type` and JSON payload.
fn transcript() -> Vec<(String, Vec<u8>)> {
    String::from_utf8(GOLDEN.input("bedrock_stream.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["event"].as_str().unwrap().to_owned(),
                v["payload"].to_string().into_bytes(),
            )
        })
        .collect()
}

fn decode(events: &[(String, Vec<u8>)]) -> Vec<StreamEvent> {
    let mut dec = bedrock::StreamDecoder::new(&EncodeInfo::default());
    let mut out = Vec::new();
    for (name, data) in events {
        dec.feed(Some(name), data, &mut out).unwrap();
    }
    assert!(dec.is_complete());
    dec.finish().unwrap();
    out
}

/// A stream whose id is fresh, with every use of that id (the first `"id"`) renamed `named`.
fn with_id_named(stream: Vec<u8>, named: &str) -> Vec<u8> {
    let text = String::from_utf8(stream).unwrap();
    let id = text
        .split("\"id\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    text.replace(&id, named).into_bytes()
}

#[test]
fn stream_to_both_clients() {
    let events = decode(&transcript());
    GOLDEN.text("bedrock_stream.events.txt", &dump(&events));

    let opts = AnswerOptions {
        include_usage: true,
        ..AnswerOptions::default()
    };
    let out = encode_stream(
        Format::OpenAiChat,
        "claude-via-bedrock",
        opts,
        CREATED,
        &events,
    );
    GOLDEN.text(
        "bedrock_stream.to_openai.sse",
        &with_id_named(out, "chatcmpl-fresh"),
    );

    let opts = AnswerOptions::default();
    let out = encode_stream(
        Format::Anthropic,
        "claude-via-bedrock",
        opts,
        CREATED,
        &events,
    );
    GOLDEN.text(
        "bedrock_stream.to_anthropic.sse",
        &with_id_named(out, "msg_fresh"),
    );
}

/// A reader that hands out its bytes in the given pieces, one per read.
struct Pieces(Vec<Vec<u8>>);

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(p) = self.0.first_mut() else {
            return Ok(0);
        };
        let n = p.len().min(buf.len());
        buf[..n].copy_from_slice(&p[..n]);
        p.drain(..n);
        if p.is_empty() {
            self.0.remove(0);
        }
        Ok(n)
    }
}

fn read_frames(pieces: Vec<Vec<u8>>) -> Vec<(String, Vec<u8>)> {
    let mut r = EventStreamReader::new(BufReader::with_capacity(64, Pieces(pieces)));
    let mut out = Vec::new();
    while let Some(frame) = r.next_frame().unwrap() {
        match frame {
            Frame::Event { name, data } => {
                out.push((String::from_utf8(name.to_vec()).unwrap(), data.to_vec()))
            }
            Frame::Exception { error_type, .. } => panic!("exception {error_type}"),
        }
    }
    out
}

/// The transcript as AWS sends it (one event stream message per event) reads back the same,
/// whole or split at any byte offset.
#[test]
fn stream_through_event_stream_frames_at_every_split() {
    let events = transcript();
    let mut wire = Vec::new();
    for (name, payload) in &events {
        wire.extend(eventstream::encode_event(name, "application/json", payload).unwrap());
    }
    let expected = decode(&events);
    assert_eq!(decode(&read_frames(vec![wire.clone()])), expected);
    for k in 1..wire.len() {
        let (a, b) = wire.split_at(k);
        assert_eq!(
            read_frames(vec![a.to_vec(), b.to_vec()]),
            events,
            "split at {k}"
        );
    }
    let bytes: Vec<Vec<u8>> = wire.iter().map(|b| vec![*b]).collect();
    assert_eq!(decode(&read_frames(bytes)), expected);
}

//! Anthropic Messages answers: a provider's `message` into the neutral model (undoing a
//! structured answer sent as a forced tool), and the neutral model into a `message` for a client.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::request::{out_source, OutBlock, WireBlock};
use super::{stop_reason_from, stop_reason_str, OutUsage, WireUsage};
use crate::formats::chat::{client_tool_call_id, ChatResponse, FinishReason, Part};
use crate::formats::json::{arguments_object, own, raw_const};
use crate::formats::{restyle_id, EncodeInfo, FormatError};

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Vec<&'a RawValue>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    stop_sequence: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// Decode a provider's `message`. The `tool_use` of the structured-answer tool named in `info`
/// becomes the answer's text (its input JSON), and stopping for it alone is a natural stop.
/// Blocks without a neutral form (server tool use and results) are kept opaque.
pub fn decode_response(body: &[u8], info: &EncodeInfo) -> Result<ChatResponse, FormatError> {
    let invalid = |e: &dyn std::fmt::Display| FormatError::invalid_answer("a message", e);
    let w: WireMessage = serde_json::from_slice(body).map_err(|e| invalid(&e))?;
    let mut content = Vec::with_capacity(w.content.len());
    for raw in &w.content {
        let b: WireBlock = serde_json::from_str(raw.get()).map_err(|e| invalid(&e))?;
        content.push(response_part(b, raw, info));
    }
    let finish = match w.stop_reason.as_deref() {
        Some(r) => stop_reason_from(r, w.stop_sequence.as_deref()),
        None => FinishReason::Stop,
    };
    Ok(ChatResponse {
        id: w.id.map(Cow::into_owned).unwrap_or_default(),
        model: w.model.map(Cow::into_owned).unwrap_or_default(),
        created: None,
        finish: info.client_finish(
            finish,
            content.iter().any(|p| matches!(p, Part::ToolCall { .. })),
        ),
        content,
        usage: w.usage.unwrap_or_default().to_neutral(),
    })
}

fn response_part(b: WireBlock, raw: &RawValue, info: &EncodeInfo) -> Part {
    match &*b.ty {
        "text" => Part::text(b.text.unwrap_or_default()),
        "thinking" => Part::Reasoning {
            text: b.thinking.map(Cow::into_owned).unwrap_or_default(),
            signature: b.signature.map(Cow::into_owned),
        },
        "redacted_thinking" => Part::RedactedReasoning {
            data: b.data.map(Cow::into_owned).unwrap_or_default(),
        },
        "tool_use" => {
            let input = b.input.map_or("{}", RawValue::get);
            if b.name.is_some() && b.name.as_deref() == info.structured_output_tool.as_deref() {
                Part::text(input)
            } else {
                Part::ToolCall {
                    id: b.id.map(Cow::into_owned).unwrap_or_default(),
                    name: b.name.map(Cow::into_owned).unwrap_or_default(),
                    arguments_json: input.to_owned(),
                    cache_control: None,
                    signature: None,
                }
            }
        }
        other => Part::Opaque {
            kind: other.to_owned(),
            raw: own(raw),
        },
    }
}

#[derive(Serialize)]
struct OutMessage<'a> {
    id: String,
    #[serde(rename = "type")]
    ty: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<OutBlock<'a>>,
    stop_reason: &'a str,
    stop_sequence: Option<&'a str>,
    usage: OutUsage,
}

/// Encode a `message` for a client. The id takes the `msg_` style; tool-call arguments that are
/// not a JSON object are sent as `{}` (the `input` of a `tool_use` must be an object); reasoning
/// without a signature gets an empty one.
pub fn encode_response(resp: &ChatResponse, client_model: &str, out: &mut Vec<u8>) {
    let empty: &RawValue = raw_const("{}");
    let content = resp
        .content
        .iter()
        .filter_map(|p| {
            Some(match p {
                Part::Text { text, .. } => OutBlock::Text {
                    ty: "text",
                    text,
                    cache_control: None,
                },
                Part::Reasoning { text, signature } => OutBlock::Thinking {
                    ty: "thinking",
                    thinking: text,
                    signature: signature.as_deref().unwrap_or(""),
                },
                Part::RedactedReasoning { data } => OutBlock::RedactedThinking {
                    ty: "redacted_thinking",
                    data,
                },
                Part::ToolCall {
                    id,
                    name,
                    arguments_json,
                    signature,
                    ..
                } => OutBlock::ToolUse {
                    ty: "tool_use",
                    id: match signature {
                        None => Cow::Borrowed(id.as_str()),
                        Some(_) => Cow::Owned(client_tool_call_id(id, signature.as_deref())),
                    },
                    name,
                    input: arguments_object(arguments_json).unwrap_or(empty),
                    cache_control: None,
                },
                Part::Image { source, .. } => OutBlock::Image {
                    ty: "image",
                    source: out_source(source),
                    cache_control: None,
                },
                Part::Opaque { raw, .. } => OutBlock::Raw(raw),
                // Not answer content.
                Part::ToolResult { .. } => return None,
            })
        })
        .collect();
    let stop_sequence = match &resp.finish {
        FinishReason::StopSequence(s) => s.as_deref(),
        _ => None,
    };
    let wire = OutMessage {
        id: restyle_id(&resp.id, "msg_"),
        ty: "message",
        role: "assistant",
        model: client_model,
        content,
        stop_reason: stop_reason_str(&resp.finish),
        stop_sequence,
        usage: OutUsage::from_neutral(&resp.usage),
    };
    out.reserve(256 + resp.content.iter().map(part_len).sum::<usize>());
    crate::formats::json::write_value(out, &wire);
}

fn part_len(p: &Part) -> usize {
    match p {
        Part::Text { text, .. } | Part::Reasoning { text, .. } => text.len() + 32,
        Part::ToolCall {
            id,
            name,
            arguments_json,
            ..
        } => id.len() + name.len() + arguments_json.len() + 64,
        Part::RedactedReasoning { data } => data.len() + 48,
        Part::Opaque { raw, .. } => raw.get().len(),
        Part::Image { .. } | Part::ToolResult { .. } => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_answers_are_upstream_errors() {
        for body in [&b"not json"[..], br#"{"content":[{"text":"no type"}]}"#] {
            let e = decode_response(body, &EncodeInfo::default()).unwrap_err();
            assert_eq!((e.status, e.code), (502, "upstream_invalid_response"));
        }
    }

    #[test]
    fn server_tool_blocks_are_kept_opaque() {
        let r = decode_response(
            br#"{"id":"msg_1","model":"c","content":[{"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{"query":"q"}},{"type":"text","text":"t"}],"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":2}}"#,
            &EncodeInfo::default(),
        )
        .unwrap();
        assert!(matches!(&r.content[0], Part::Opaque { kind, .. } if kind == "server_tool_use"));
        let mut out = Vec::new();
        encode_response(&r, "c", &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["content"][0]["input"]["query"], "q");
    }

    #[test]
    fn foreign_arguments_that_are_not_objects_become_empty_input() {
        let resp = ChatResponse {
            id: "chatcmpl-9".into(),
            content: vec![Part::ToolCall {
                id: "call_1".into(),
                name: "f".into(),
                arguments_json: "{\"a\":".into(),
                cache_control: None,
                signature: None,
            }],
            finish: FinishReason::ToolCalls,
            ..ChatResponse::default()
        };
        let mut out = Vec::new();
        encode_response(&resp, "m", &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], "msg_9");
        assert_eq!(v["content"][0]["input"], serde_json::json!({}));
        assert_eq!(v["stop_reason"], "tool_use");
    }
}

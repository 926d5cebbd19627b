//! OpenAI Responses answers: the neutral model into a `response` object for a client, and a
//! provider's `response` object into the neutral model.

use std::borrow::Cow;

use serde::Deserialize;

use super::reasoning_state::{self, ReasoningState};
use super::{
    finish_of, write_function_call_item, write_message_item, write_reasoning_item, write_response,
    Head, Outcome, State, WireUsage, FUNCTION_CALL_ID_PREFIX, MESSAGE_ID_PREFIX,
    REASONING_ID_PREFIX, RESPONSE_ID_PREFIX,
};
use crate::formats::chat::{client_tool_call_id, ChatResponse, Part};
use crate::formats::{restyle_id, unix_now_s, EncodeInfo, FormatError};

/// A whole answer as a `response` object: one output item per part, in order (a `reasoning`
/// item with the reasoning as its summary, a `message` with one `output_text` per text part, a
/// `function_call` per tool call), `status` `completed` or `incomplete` (with
/// `incomplete_details`), and the usage. `reasoning_state` (the client's `include` asked for
/// `reasoning.encrypted_content`): a signed reasoning part's signature, and redacted reasoning
/// as an item of its own with an empty summary, go in the item's `encrypted_content` (see
/// `reasoning_state`); otherwise signatures and redacted reasoning are dropped.
pub fn encode_response(
    resp: &ChatResponse,
    client_model: &str,
    reasoning_state: bool,
    out: &mut Vec<u8>,
) {
    let head = Head {
        id: restyle_id(&resp.id, RESPONSE_ID_PREFIX),
        model: client_model.to_owned(),
        created_at: resp.created.unwrap_or_else(unix_now_s),
    };
    let mut items = Vec::with_capacity(256);
    let mut n = 0;
    for part in &resp.content {
        let at = items.len();
        if n > 0 {
            items.push(b',');
        }
        match part {
            Part::Text { text, .. } => {
                let id = head.item_id(MESSAGE_ID_PREFIX, n);
                write_message_item(&mut items, &id, "completed", Some(text));
            }
            Part::ToolCall {
                id: call_id,
                name,
                arguments_json,
                signature,
                ..
            } => {
                let id = head.item_id(FUNCTION_CALL_ID_PREFIX, n);
                write_function_call_item(
                    &mut items,
                    &id,
                    "completed",
                    &client_tool_call_id(call_id, signature.as_deref()),
                    name,
                    arguments_json,
                );
            }
            Part::Reasoning { text, signature } => {
                let id = head.item_id(REASONING_ID_PREFIX, n);
                let state = signature
                    .as_ref()
                    .filter(|s| reasoning_state && !s.is_empty())
                    .map(|s| ReasoningState::Signature(s.clone()));
                write_reasoning_item(&mut items, &id, Some(text), state.as_ref());
            }
            Part::RedactedReasoning { data } if reasoning_state => {
                let id = head.item_id(REASONING_ID_PREFIX, n);
                let state = ReasoningState::Redacted(data.clone());
                write_reasoning_item(&mut items, &id, None, Some(&state));
            }
            Part::Image { .. }
            | Part::ToolResult { .. }
            | Part::RedactedReasoning { .. }
            | Part::Opaque { .. } => {
                items.truncate(at);
                continue;
            }
        }
        n += 1;
    }
    out.reserve(items.len() + 1024);
    let state = State::Ended(Outcome::of(&resp.finish));
    write_response(out, &head, state, &items, Some(&resp.usage));
}

#[derive(Deserialize)]
struct WireResponse<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    created_at: Option<f64>,
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    incomplete_details: Option<WireIncomplete<'a>>,
    #[serde(borrow, default)]
    output: Vec<WireOutputItem<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
pub(super) struct WireIncomplete<'a> {
    #[serde(borrow, default)]
    pub(super) reason: Option<Cow<'a, str>>,
}

/// An output item (every kind's fields; `type` says which apply).
#[derive(Deserialize)]
pub(super) struct WireOutputItem<'a> {
    #[serde(rename = "type", borrow, default)]
    pub(super) ty: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) content: Vec<WireOutputPart<'a>>,
    #[serde(borrow, default)]
    pub(super) summary: Vec<WireOutputPart<'a>>,
    #[serde(borrow, default)]
    pub(super) call_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) arguments: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) encrypted_content: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(super) struct WireOutputPart<'a> {
    #[serde(borrow, default)]
    pub(super) text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) refusal: Option<Cow<'a, str>>,
}

/// Decode a provider's `response` object: `message` text (and refusals) as text parts,
/// `function_call` items as tool calls, `reasoning` summaries (else their reasoning text) as
/// reasoning, signed or redacted when `encrypted_content` is the gateway's envelope; items of
/// hosted tools are skipped.
pub fn decode_response(body: &[u8], _info: &EncodeInfo) -> Result<ChatResponse, FormatError> {
    let w: WireResponse = serde_json::from_slice(body)
        .map_err(|e| FormatError::invalid_answer("a Responses `response`", e))?;
    let mut content = Vec::with_capacity(w.output.len());
    for item in w.output {
        if let Some(part) = output_part(item) {
            content.push(part);
        }
    }
    let calls = content.iter().any(|p| matches!(p, Part::ToolCall { .. }));
    let reason = w
        .incomplete_details
        .as_ref()
        .and_then(|d| d.reason.as_deref());
    Ok(ChatResponse {
        id: w.id.map(Cow::into_owned).unwrap_or_default(),
        model: w.model.map(Cow::into_owned).unwrap_or_default(),
        created: w.created_at.map(|t| t as u64),
        finish: finish_of(w.status.as_deref(), reason, calls),
        content,
        usage: w.usage.unwrap_or_default().to_neutral(),
    })
}

/// The neutral part of one output item; `None` for items without one.
fn output_part(item: WireOutputItem) -> Option<Part> {
    let text_of = |parts: Vec<WireOutputPart>| -> String {
        let texts: Vec<Cow<str>> = parts
            .into_iter()
            .filter_map(|p| p.text.or(p.refusal))
            .collect();
        texts.concat()
    };
    match item.ty.as_deref()? {
        "message" => {
            let text = text_of(item.content);
            (!text.is_empty()).then(|| Part::text(text))
        }
        "function_call" => Some(Part::ToolCall {
            id: item.call_id.map(Cow::into_owned).unwrap_or_default(),
            name: item.name.map(Cow::into_owned).unwrap_or_default(),
            arguments_json: item.arguments.map(Cow::into_owned).unwrap_or_default(),
            cache_control: None,
            signature: None,
        }),
        "reasoning" => {
            let state = item
                .encrypted_content
                .as_deref()
                .and_then(reasoning_state::decode);
            let summary = text_of(item.summary);
            let text = if summary.is_empty() {
                text_of(item.content)
            } else {
                summary
            };
            match state {
                Some(ReasoningState::Redacted(data)) => Some(Part::RedactedReasoning { data }),
                Some(ReasoningState::Signature(signature)) => Some(Part::Reasoning {
                    text,
                    signature: Some(signature),
                }),
                None => (!text.is_empty()).then_some(Part::Reasoning {
                    text,
                    signature: None,
                }),
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::chat::{FinishReason, Usage};

    fn answer(content: Vec<Part>, finish: FinishReason) -> ChatResponse {
        ChatResponse {
            id: "chatcmpl-abc".into(),
            model: "up".into(),
            created: Some(1_700_000_000),
            content,
            finish,
            usage: Usage {
                input_tokens: 10,
                output_tokens: 5,
                cache_read_tokens: 4,
                cache_write_tokens: 0,
                reasoning_tokens: 2,
            },
        }
    }

    fn encode(resp: &ChatResponse) -> serde_json::Value {
        let mut out = Vec::new();
        encode_response(resp, "client-model", false, &mut out);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn parts_become_output_items() {
        let v = encode(&answer(
            vec![
                Part::Reasoning {
                    text: "hmm".into(),
                    signature: Some("sig".into()),
                },
                Part::text("hi"),
                Part::ToolCall {
                    id: "call_1".into(),
                    name: "f".into(),
                    arguments_json: "{\"a\":1}".into(),
                    cache_control: None,
                    signature: None,
                },
                Part::RedactedReasoning { data: "x".into() },
            ],
            FinishReason::ToolCalls,
        ));
        assert_eq!(v["id"], "resp_abc");
        assert_eq!(v["object"], "response");
        assert_eq!(v["status"], "completed");
        assert_eq!(v["model"], "client-model");
        assert_eq!(v["created_at"], 1_700_000_000);
        let output = v["output"].as_array().unwrap();
        assert_eq!(output.len(), 3);
        assert_eq!(output[0]["type"], "reasoning");
        assert_eq!(output[0]["id"], "rs_abc_0");
        assert_eq!(output[0]["summary"][0]["text"], "hmm");
        assert_eq!(output[1]["type"], "message");
        assert_eq!(output[1]["id"], "msg_abc_1");
        assert_eq!(output[1]["content"][0]["type"], "output_text");
        assert_eq!(output[1]["content"][0]["text"], "hi");
        assert_eq!(output[2]["type"], "function_call");
        assert_eq!(output[2]["call_id"], "call_1");
        assert_eq!(output[2]["arguments"], "{\"a\":1}");
        let u = &v["usage"];
        assert_eq!(u["input_tokens"], 10);
        assert_eq!(u["input_tokens_details"]["cached_tokens"], 4);
        assert_eq!(u["output_tokens_details"]["reasoning_tokens"], 2);
        assert_eq!(u["total_tokens"], 15);
        assert!(v["incomplete_details"].is_null() && v["error"].is_null());
    }

    #[test]
    fn asked_for_reasoning_state_goes_in_encrypted_content() {
        let resp = answer(
            vec![
                Part::Reasoning {
                    text: String::new(),
                    signature: Some("sig".into()),
                },
                Part::RedactedReasoning {
                    data: "opaque".into(),
                },
                Part::Reasoning {
                    text: "unsigned".into(),
                    signature: None,
                },
                Part::text("hi"),
            ],
            FinishReason::Stop,
        );
        let mut out = Vec::new();
        encode_response(&resp, "m", true, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let output = v["output"].as_array().unwrap();
        assert_eq!(output.len(), 4, "{v:#}");
        // Signed reasoning without text: an item with an empty summary and its state.
        assert_eq!(output[0]["summary"], serde_json::json!([]));
        let state = |i: usize| {
            output[i]["encrypted_content"]
                .as_str()
                .map(reasoning_state::decode)
        };
        assert_eq!(
            state(0),
            Some(Some(ReasoningState::Signature("sig".into())))
        );
        assert_eq!(output[1]["type"], "reasoning");
        assert_eq!(output[1]["id"], "rs_abc_1");
        assert_eq!(
            state(1),
            Some(Some(ReasoningState::Redacted("opaque".into())))
        );
        assert!(output[2].get("encrypted_content").is_none());
        // And it decodes back to the same parts.
        let back = decode_response(&out, &EncodeInfo::default()).unwrap();
        assert_eq!(back.content, resp.content);
        // Not asked: the signature and the redacted reasoning are left out.
        let v = encode(&resp);
        let output = v["output"].as_array().unwrap();
        assert_eq!(output.len(), 3, "{v:#}");
        assert!(output.iter().all(|i| i.get("encrypted_content").is_none()));
    }

    #[test]
    fn a_token_limit_is_incomplete() {
        let v = encode(&answer(vec![Part::text("cut")], FinishReason::Length));
        assert_eq!(v["status"], "incomplete");
        assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
        assert!(v["completed_at"].is_null());
    }

    #[test]
    fn answers_round_trip() {
        let resp = answer(
            vec![
                Part::Reasoning {
                    text: "hmm".into(),
                    signature: None,
                },
                Part::text("hi"),
                Part::ToolCall {
                    id: "call_1".into(),
                    name: "f".into(),
                    arguments_json: "{}".into(),
                    cache_control: None,
                    signature: None,
                },
            ],
            FinishReason::ToolCalls,
        );
        let mut out = Vec::new();
        encode_response(&resp, "up", false, &mut out);
        let back = decode_response(&out, &EncodeInfo::default()).unwrap();
        assert_eq!(back.id, "resp_abc");
        assert_eq!(back.content, resp.content);
        assert_eq!((back.finish, back.usage), (resp.finish, resp.usage));
        let e = decode_response(b"[1]", &EncodeInfo::default()).unwrap_err();
        assert_eq!((e.status, e.code), (502, "upstream_invalid_response"));
    }
}

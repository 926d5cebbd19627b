//! Converse answers: a provider's response into the neutral model (undoing a structured answer
//! sent as a forced tool), and the neutral model into a Converse response.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{
    image_format, image_media_type, stop_reason_from, stop_reason_str, OutUsage, WireUsage,
};
use crate::formats::chat::{ChatResponse, FinishReason, ImageSource, Part};
use crate::formats::json::{own, write_value};
use crate::formats::{EncodeInfo, FormatError};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse<'a> {
    #[serde(borrow, default)]
    output: Option<WireOutput<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(borrow, default)]
    additional_model_response_fields: Option<WireAdditional<'a>>,
}

#[derive(Deserialize)]
struct WireOutput<'a> {
    #[serde(borrow, default)]
    message: Option<WireMessage<'a>>,
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow, default)]
    content: Vec<&'a RawValue>,
}

/// What Anthropic's models add to a Converse answer.
#[derive(Deserialize)]
pub(super) struct WireAdditional<'a> {
    #[serde(borrow, default)]
    pub(super) stop_sequence: Option<Cow<'a, str>>,
}

/// One `ContentBlock` (a union: one member is set).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireBlock<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_use: Option<WireToolUse<'a>>,
    #[serde(borrow, default)]
    reasoning_content: Option<WireReasoning<'a>>,
    #[serde(borrow, default)]
    image: Option<WireImage<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireToolUse<'a> {
    #[serde(borrow, default)]
    tool_use_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireReasoning<'a> {
    #[serde(borrow, default)]
    reasoning_text: Option<WireReasoningText<'a>>,
    #[serde(borrow, default)]
    redacted_content: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireReasoningText<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    signature: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireImage<'a> {
    #[serde(borrow, default)]
    format: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    source: Option<WireBytes<'a>>,
}

#[derive(Deserialize)]
struct WireBytes<'a> {
    #[serde(borrow, default)]
    bytes: Option<Cow<'a, str>>,
}

/// Decode a Converse answer. The `toolUse` of the structured-answer tool named in `info` becomes
/// the answer's text (its input JSON), and stopping for it alone is a natural stop. Blocks
/// without a neutral form (citations, documents, ...) are kept opaque, named by their member.
/// Converse answers carry no id and no model name: both are left empty.
pub fn decode_response(body: &[u8], info: &EncodeInfo) -> Result<ChatResponse, FormatError> {
    let invalid = |e: &dyn std::fmt::Display| FormatError::invalid_answer("a Converse response", e);
    let w: WireResponse = serde_json::from_slice(body).map_err(|e| invalid(&e))?;
    let raw_blocks = w
        .output
        .and_then(|o| o.message)
        .map(|m| m.content)
        .ok_or_else(|| invalid(&"no output.message"))?;
    let mut content = Vec::with_capacity(raw_blocks.len());
    for raw in raw_blocks {
        let b: WireBlock = serde_json::from_str(raw.get()).map_err(|e| invalid(&e))?;
        if let Some(p) = response_part(b, raw, info) {
            content.push(p);
        }
    }
    let stop_sequence = w
        .additional_model_response_fields
        .as_ref()
        .and_then(|a| a.stop_sequence.as_deref());
    let finish = match w.stop_reason.as_deref() {
        Some(r) => stop_reason_from(r, stop_sequence),
        None => FinishReason::Stop,
    };
    let has_calls = content.iter().any(|p| matches!(p, Part::ToolCall { .. }));
    Ok(ChatResponse {
        id: String::new(),
        model: String::new(),
        created: None,
        finish: info.client_finish(finish, has_calls),
        content,
        usage: w.usage.unwrap_or_default().to_neutral(),
    })
}

fn response_part(b: WireBlock, raw: &RawValue, info: &EncodeInfo) -> Option<Part> {
    if let Some(text) = b.text {
        return Some(Part::text(text));
    }
    if let Some(t) = b.tool_use {
        let input = t.input.map_or("{}", RawValue::get);
        let name = t.name.map(Cow::into_owned).unwrap_or_default();
        if info.structured_output_tool.as_deref() == Some(name.as_str()) {
            return Some(Part::text(input));
        }
        return Some(Part::ToolCall {
            id: t.tool_use_id.map(Cow::into_owned).unwrap_or_default(),
            name,
            arguments_json: input.to_owned(),
            cache_control: None,
            signature: None,
        });
    }
    if let Some(r) = b.reasoning_content {
        if let Some(data) = r.redacted_content {
            return Some(Part::RedactedReasoning {
                data: data.into_owned(),
            });
        }
        let t = r.reasoning_text?;
        return Some(Part::Reasoning {
            text: t.text.map(Cow::into_owned).unwrap_or_default(),
            signature: t.signature.map(Cow::into_owned),
        });
    }
    if let Some(WireImage {
        format: Some(format),
        source: Some(WireBytes { bytes: Some(bytes) }),
    }) = b.image
    {
        return Some(Part::Image {
            source: ImageSource::Base64 {
                media_type: image_media_type(&format),
                data: bytes.into_owned(),
            },
            detail: None,
            cache_control: None,
        });
    }
    Some(Part::Opaque {
        kind: block_kind(raw),
        raw: own(raw),
    })
}

/// The member name of a union block, for an opaque part.
fn block_kind(raw: &RawValue) -> String {
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw.get())
        .ok()
        .and_then(|m| m.keys().next().cloned())
        .unwrap_or_default()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutResponse<'a> {
    output: OutOutput,
    stop_reason: &'a str,
    usage: OutUsage,
    #[serde(skip_serializing_if = "Option::is_none")]
    additional_model_response_fields: Option<OutAdditional<'a>>,
}

#[derive(Serialize)]
struct OutOutput {
    message: OutMessage,
}

#[derive(Serialize)]
struct OutMessage {
    role: &'static str,
    content: Vec<serde_json::Value>,
}

#[derive(Serialize)]
struct OutAdditional<'a> {
    stop_sequence: &'a str,
}

/// Encode a Converse response. Tool-call arguments that are not a JSON object are sent as `{}`;
/// reasoning without a signature is sent without one; opaque parts of the Converse format pass
/// as they came, others are left out.
pub fn encode_response(resp: &ChatResponse, _client_model: &str, out: &mut Vec<u8>) {
    use serde_json::{json, Value};
    let content: Vec<Value> = resp
        .content
        .iter()
        .filter_map(|p| {
            Some(match p {
                Part::Text { text, .. } => json!({ "text": text }),
                Part::ToolCall {
                    id,
                    name,
                    arguments_json,
                    ..
                } => {
                    let input: Value = serde_json::from_str(arguments_json)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({}));
                    json!({ "toolUse": { "toolUseId": id, "name": name, "input": input } })
                }
                Part::Reasoning { text, signature } => {
                    let mut t = json!({ "text": text });
                    if let Some(s) = signature {
                        t["signature"] = json!(s);
                    }
                    json!({ "reasoningContent": { "reasoningText": t } })
                }
                Part::RedactedReasoning { data } => {
                    json!({ "reasoningContent": { "redactedContent": data } })
                }
                Part::Image {
                    source: ImageSource::Base64 { media_type, data },
                    ..
                } => json!({ "image": {
                    "format": image_format(media_type)?,
                    "source": { "bytes": data }
                } }),
                Part::Opaque { raw, .. } => serde_json::from_str(raw.get()).ok()?,
                Part::Image { .. } | Part::ToolResult { .. } => return None,
            })
        })
        .collect();
    let stop_sequence = match &resp.finish {
        FinishReason::StopSequence(Some(s)) => Some(OutAdditional { stop_sequence: s }),
        _ => None,
    };
    let wire = OutResponse {
        output: OutOutput {
            message: OutMessage {
                role: "assistant",
                content,
            },
        },
        stop_reason: stop_reason_str(&resp.finish),
        usage: OutUsage::from_neutral(&resp.usage),
        additional_model_response_fields: stop_sequence,
    };
    write_value(out, &wire);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::chat::Usage;

    #[test]
    fn a_tool_use_answer() {
        let body = br#"{"output":{"message":{"role":"assistant","content":[{"text":"Let me check."},{"toolUse":{"toolUseId":"tooluse_kZJMlvQmRJ6eAyJE5GIl7Q","name":"top_song","input":{"sign":"WZPZ"}}}]}},"stopReason":"tool_use","usage":{"inputTokens":375,"outputTokens":60,"totalTokens":435},"metrics":{"latencyMs":1828}}"#;
        let r = decode_response(body, &EncodeInfo::default()).unwrap();
        assert_eq!(r.finish, FinishReason::ToolCalls);
        assert_eq!(r.content.len(), 2);
        assert_eq!(
            r.content[1],
            Part::ToolCall {
                id: "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q".into(),
                name: "top_song".into(),
                arguments_json: r#"{"sign":"WZPZ"}"#.into(),
                cache_control: None,
                signature: None,
            }
        );
        assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (375, 60));
        // And back: the same answer.
        let mut out = Vec::new();
        encode_response(&r, "m", &mut out);
        let again = decode_response(&out, &EncodeInfo::default()).unwrap();
        assert_eq!(again, r);
    }

    #[test]
    fn structured_answers_and_stop_sequences() {
        let info = EncodeInfo {
            structured_output_tool: Some("answer".into()),
            ..EncodeInfo::default()
        };
        let body = br#"{"output":{"message":{"role":"assistant","content":[{"toolUse":{"toolUseId":"t","name":"answer","input":{"a":"b"}}}]}},"stopReason":"tool_use","usage":{"inputTokens":1,"outputTokens":2}}"#;
        let r = decode_response(body, &info).unwrap();
        assert_eq!(r.content, [Part::text(r#"{"a":"b"}"#)]);
        assert_eq!(r.finish, FinishReason::Stop);
        let body = br#"{"output":{"message":{"role":"assistant","content":[{"text":"a"}]}},"stopReason":"stop_sequence","additionalModelResponseFields":{"stop_sequence":"///"},"usage":{"inputTokens":1,"outputTokens":2}}"#;
        let r = decode_response(body, &EncodeInfo::default()).unwrap();
        assert_eq!(r.finish, FinishReason::StopSequence(Some("///".into())));
    }

    #[test]
    fn reasoning_and_unknown_blocks() {
        let body = br#"{"output":{"message":{"role":"assistant","content":[{"reasoningContent":{"reasoningText":{"text":"think","signature":"sig"}}},{"reasoningContent":{"redactedContent":"ZW5j"}},{"citationsContent":{"content":[]}},{"text":"done"}]}},"stopReason":"end_turn","usage":{"inputTokens":3,"outputTokens":4,"cacheReadInputTokens":10}}"#;
        let r = decode_response(body, &EncodeInfo::default()).unwrap();
        assert_eq!(
            r.content[0],
            Part::Reasoning {
                text: "think".into(),
                signature: Some("sig".into())
            }
        );
        assert_eq!(
            r.content[1],
            Part::RedactedReasoning {
                data: "ZW5j".into()
            }
        );
        assert!(matches!(&r.content[2], Part::Opaque { kind, .. } if kind == "citationsContent"));
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 13,
                output_tokens: 4,
                cache_read_tokens: 10,
                ..Usage::default()
            }
        );
    }

    #[test]
    fn unreadable_answers_are_upstream_errors() {
        for body in [
            &b"<html>"[..],
            br#"{"output":{}}"#,
            br#"{"output":{"message":{"content":[1]}}}"#,
        ] {
            let e = decode_response(body, &EncodeInfo::default()).unwrap_err();
            assert_eq!((e.status, e.code), (502, "upstream_invalid_response"));
        }
    }
}

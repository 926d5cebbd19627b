//! Gemini `GenerateContentResponse`s: a provider's answer (its first candidate) into the neutral
//! model, safety blocks included, and the neutral model into an answer for a Gemini client.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::request::{image_part, OutCall, OutPart};
use super::{finish_reason_from, finish_reason_str, OutUsage, WireError, WireUsage};
use crate::formats::chat::{ChatResponse, FinishReason, ImageSource, Part};
use crate::formats::json::{arguments_object, raw_const, write_value};
use crate::formats::{restyle_id, EncodeInfo, FormatError};

/// One chunk of a stream, or a whole answer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WireResponse<'a> {
    #[serde(borrow, default)]
    pub(super) candidates: Vec<WireCandidate<'a>>,
    #[serde(borrow, default)]
    pub(super) prompt_feedback: Option<WirePromptFeedback<'a>>,
    #[serde(default)]
    pub(super) usage_metadata: Option<WireUsage>,
    #[serde(borrow, default)]
    pub(super) model_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) response_id: Option<Cow<'a, str>>,
    /// A stream's mid-way error event.
    #[serde(borrow, default)]
    pub(super) error: Option<WireError<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WireCandidate<'a> {
    #[serde(borrow, default)]
    pub(super) content: Option<WireContent<'a>>,
    #[serde(borrow, default)]
    pub(super) finish_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(super) index: Option<u32>,
}

#[derive(Deserialize)]
pub(super) struct WireContent<'a> {
    #[serde(borrow, default)]
    pub(super) parts: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WirePromptFeedback<'a> {
    #[serde(borrow, default)]
    pub(super) block_reason: Option<Cow<'a, str>>,
}

/// A part of any kind: the fields the neutral model reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WirePart<'a> {
    #[serde(borrow, default)]
    pub(super) text: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(super) thought: Option<bool>,
    #[serde(borrow, default)]
    pub(super) thought_signature: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) function_call: Option<WireCall<'a>>,
    #[serde(borrow, default)]
    inline_data: Option<WireBlob<'a>>,
    #[serde(borrow, default)]
    file_data: Option<WireFile<'a>>,
}

#[derive(Deserialize)]
pub(super) struct WireCall<'a> {
    #[serde(borrow, default)]
    pub(super) id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) args: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireBlob<'a> {
    #[serde(borrow, default)]
    mime_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireFile<'a> {
    #[serde(borrow, default)]
    file_uri: Option<Cow<'a, str>>,
}

impl<'a> WireResponse<'a> {
    /// The first candidate (`index` 0, else the first listed).
    pub(super) fn first(&self) -> Option<&WireCandidate<'a>> {
        self.candidates
            .iter()
            .find(|c| c.index.unwrap_or(0) == 0)
            .or(self.candidates.first())
    }
}

/// A fresh tool-call id, for calls Gemini gave none (it matches responses by name).
pub(super) fn fresh_call_id() -> String {
    restyle_id("", "call_")
}

/// What a prompt blocked before anything was generated becomes: a 400 `content_filter` error in
/// the client's format (what Azure OpenAI answers for a filtered prompt).
pub(super) fn blocked_prompt(reason: &str) -> FormatError {
    FormatError::bad_request(
        "content_filter",
        format!("the provider's safety filters blocked the prompt (blockReason {reason})"),
    )
}

/// A part of an answer; `None` for parts that carry nothing (an empty text).
pub(super) fn answer_part(raw: &RawValue) -> Result<Option<Part>, FormatError> {
    let p: WirePart = serde_json::from_str(raw.get()).map_err(|e| {
        FormatError::upstream(
            "upstream_invalid_response",
            format!("the provider's answer has an unreadable part: {e}"),
        )
    })?;
    if let Some(call) = p.function_call {
        return Ok(Some(Part::ToolCall {
            id: call.id.map(Cow::into_owned).unwrap_or_else(fresh_call_id),
            name: call.name.map(Cow::into_owned).unwrap_or_default(),
            arguments_json: call.args.map_or("{}", RawValue::get).to_owned(),
            cache_control: None,
            signature: p.thought_signature.map(Cow::into_owned),
        }));
    }
    if let Some(text) = p.text {
        if p.thought == Some(true) {
            return Ok(Some(Part::Reasoning {
                text: text.into_owned(),
                signature: p.thought_signature.map(Cow::into_owned),
            }));
        }
        // A signature on a plain text part is not needed back (Gemini validates only those of
        // function calls); it is dropped.
        return Ok((!text.is_empty()).then(|| Part::text(text)));
    }
    if let Some(blob) = p.inline_data {
        return Ok(Some(Part::Image {
            source: ImageSource::Base64 {
                media_type: blob.mime_type.map(Cow::into_owned).unwrap_or_default(),
                data: blob.data.map(Cow::into_owned).unwrap_or_default(),
            },
            detail: None,
            cache_control: None,
        }));
    }
    if let Some(uri) = p.file_data.and_then(|f| f.file_uri) {
        return Ok(Some(Part::Image {
            source: ImageSource::Url(uri.into_owned()),
            detail: None,
            cache_control: None,
        }));
    }
    // executableCode, codeExecutionResult and part kinds added later have no form in the
    // clients' formats (no client speaks Gemini): dropped.
    Ok(None)
}

/// Append `part` to `content`, joining it to the text or reasoning before it (Gemini may split
/// one text over several parts).
pub(super) fn push_joined(content: &mut Vec<Part>, part: Part) {
    match (content.last_mut(), part) {
        (Some(Part::Text { text, .. }), Part::Text { text: more, .. }) => text.push_str(&more),
        (
            Some(Part::Reasoning { text, signature }),
            Part::Reasoning {
                text: more,
                signature: sig,
            },
        ) => {
            text.push_str(&more);
            if sig.is_some() {
                *signature = sig;
            }
        }
        (_, part) => content.push(part),
    }
}

/// Decode a provider's answer (its first candidate). A candidate stopped by a safety or policy
/// filter answers with what it has and finish reason `ContentFilter`; a prompt blocked before
/// any candidate (`promptFeedback.blockReason`) is a 400 `content_filter` error.
pub fn decode_response(body: &[u8], _info: &EncodeInfo) -> Result<ChatResponse, FormatError> {
    let w: WireResponse = serde_json::from_slice(body)
        .map_err(|e| FormatError::invalid_answer("a GenerateContentResponse", e))?;
    let mut content = Vec::new();
    let mut reason = None;
    match w.first() {
        Some(c) => {
            for raw in c.content.iter().flat_map(|c| &c.parts) {
                if let Some(part) = answer_part(raw)? {
                    push_joined(&mut content, part);
                }
            }
            reason = c.finish_reason.as_deref();
        }
        None => {
            if let Some(block) = w
                .prompt_feedback
                .as_ref()
                .and_then(|f| f.block_reason.as_deref())
            {
                return Err(blocked_prompt(block));
            }
        }
    }
    let has_calls = content.iter().any(|p| matches!(p, Part::ToolCall { .. }));
    let finish = match reason {
        Some(r) => finish_reason_from(r, has_calls),
        None if has_calls => FinishReason::ToolCalls,
        None => FinishReason::Stop,
    };
    Ok(ChatResponse {
        id: w.response_id.map(Cow::into_owned).unwrap_or_default(),
        model: w.model_version.map(Cow::into_owned).unwrap_or_default(),
        created: None,
        content,
        finish,
        usage: w.usage_metadata.unwrap_or_default().to_neutral(),
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct OutResponse<'a> {
    pub(super) candidates: [OutCandidate<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) usage_metadata: Option<OutUsage>,
    pub(super) model_version: &'a str,
    pub(super) response_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct OutCandidate<'a> {
    pub(super) content: OutContent<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) finish_reason: Option<&'static str>,
    pub(super) index: u32,
}

#[derive(Serialize)]
pub(super) struct OutContent<'a> {
    pub(super) role: &'static str,
    pub(super) parts: Vec<OutPart<'a>>,
}

/// The parts of an answer for a Gemini client.
pub(super) fn out_parts(content: &[Part]) -> Vec<OutPart<'_>> {
    let empty = raw_const("{}");
    content
        .iter()
        .filter_map(|p| {
            Some(match p {
                Part::Text { text, .. } => OutPart::Text {
                    text,
                    thought: None,
                    thought_signature: None,
                },
                Part::Reasoning { text, signature } => OutPart::Text {
                    text,
                    thought: Some(true),
                    thought_signature: signature.as_deref(),
                },
                Part::ToolCall {
                    name,
                    arguments_json,
                    signature,
                    ..
                } => OutPart::Call {
                    function_call: OutCall {
                        name,
                        args: arguments_object(arguments_json).unwrap_or(empty),
                    },
                    thought_signature: signature.as_deref(),
                },
                Part::Image { source, .. } => image_part(source),
                Part::Opaque { raw, .. } => OutPart::Raw(raw),
                Part::RedactedReasoning { .. } | Part::ToolResult { .. } => return None,
            })
        })
        .collect()
}

/// Encode an answer for a Gemini client (`responseId` is the provider's id, `modelVersion` the
/// client's model name).
pub fn encode_response(resp: &ChatResponse, client_model: &str, out: &mut Vec<u8>) {
    let wire = OutResponse {
        candidates: [OutCandidate {
            content: OutContent {
                role: "model",
                parts: out_parts(&resp.content),
            },
            finish_reason: Some(finish_reason_str(&resp.finish)),
            index: 0,
        }],
        usage_metadata: Some(OutUsage::from_neutral(&resp.usage)),
        model_version: client_model,
        response_id: &resp.id,
    };
    write_value(out, &wire);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_prompts_and_filtered_answers() {
        let e = decode_response(
            br#"{"promptFeedback":{"blockReason":"SAFETY","safetyRatings":[]},"usageMetadata":{"promptTokenCount":8}}"#,
            &EncodeInfo::default(),
        )
        .unwrap_err();
        assert_eq!((e.status, e.code), (400, "content_filter"));
        assert!(e.message.contains("SAFETY"), "{}", e.message);
        let r = decode_response(
            br#"{"candidates":[{"finishReason":"SAFETY","index":0,"safetyRatings":[{"category":"HARM_CATEGORY_DANGEROUS_CONTENT","probability":"HIGH","blocked":true}]}]}"#,
            &EncodeInfo::default(),
        )
        .unwrap();
        assert_eq!(r.finish, FinishReason::ContentFilter);
        assert!(r.content.is_empty());
    }

    #[test]
    fn split_texts_join_and_calls_get_ids() {
        let r = decode_response(
            br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"},{"text":"lo"},{"functionCall":{"name":"f","args":{"a":1}},"thoughtSignature":"c2ln"},{"executableCode":{"language":"PYTHON","code":"1"}}]},"finishReason":"STOP"}]}"#,
            &EncodeInfo::default(),
        )
        .unwrap();
        assert_eq!(r.content[0], Part::text("Hello"));
        let Part::ToolCall { id, signature, .. } = &r.content[1] else {
            panic!("{:?}", r.content[1]);
        };
        assert!(id.starts_with("call_") && id.len() > 10, "{id}");
        assert_eq!(signature.as_deref(), Some("c2ln"));
        assert_eq!(r.content.len(), 2, "the executableCode part is dropped");
        assert_eq!(r.finish, FinishReason::ToolCalls);
        let e = decode_response(b"\"text\"", &EncodeInfo::default()).unwrap_err();
        assert_eq!((e.status, e.code), (502, "upstream_invalid_response"));
    }
}

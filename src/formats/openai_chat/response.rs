//! OpenAI Chat Completions answers: a provider's `chat.completion` into the neutral model, and
//! the neutral model into a `chat.completion` for a client.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::request::WireToolCall;
use super::{finish_reason_from, finish_reason_str, LenientStr, OutUsage, WireUsage};
use crate::formats::chat::{client_tool_call_id, ChatResponse, FinishReason, Part};
use crate::formats::{restyle_id, unix_now_s, EncodeInfo, FormatError};

#[derive(Deserialize)]
struct WireCompletion<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    created: Option<u64>,
    #[serde(borrow, default)]
    choices: Vec<WireChoice<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default)]
    message: Option<WireAnswer<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireAnswer<'a> {
    #[serde(borrow, default)]
    content: LenientStr<'a>,
    #[serde(borrow, default)]
    refusal: LenientStr<'a>,
    /// DeepSeek, vLLM, Qwen.
    #[serde(borrow, default)]
    reasoning_content: LenientStr<'a>,
    /// OpenRouter, Ollama.
    #[serde(borrow, default)]
    reasoning: LenientStr<'a>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<WireToolCall<'a>>>,
}

/// Decode a provider's `chat.completion` (its first choice). A refusal is kept as text.
pub fn decode_response(body: &[u8], _info: &EncodeInfo) -> Result<ChatResponse, FormatError> {
    let w: WireCompletion = serde_json::from_slice(body)
        .map_err(|e| FormatError::invalid_answer("a chat completion", e))?;
    let position = w
        .choices
        .iter()
        .position(|c| c.index.unwrap_or(0) == 0)
        .unwrap_or(0);
    let Some(choice) = w.choices.into_iter().nth(position) else {
        return Err(FormatError::upstream(
            "upstream_invalid_response",
            "the provider's answer has no choices",
        ));
    };
    let mut content = Vec::new();
    if let Some(m) = choice.message {
        let reasoning = m.reasoning_content.0.or(m.reasoning.0);
        if let Some(r) = reasoning.filter(|r| !r.is_empty()) {
            content.push(Part::Reasoning {
                text: r.into_owned(),
                signature: None,
            });
        }
        for t in [m.content.0, m.refusal.0].into_iter().flatten() {
            if !t.is_empty() {
                content.push(Part::text(t));
            }
        }
        for (i, call) in m.tool_calls.unwrap_or_default().into_iter().enumerate() {
            let f = call.function;
            content.push(Part::ToolCall {
                id: call
                    .id
                    .map(Cow::into_owned)
                    .unwrap_or_else(|| format!("call_{i}")),
                name: f
                    .as_ref()
                    .and_then(|f| f.name.as_deref())
                    .unwrap_or_default()
                    .to_owned(),
                arguments_json: f
                    .as_ref()
                    .and_then(|f| f.arguments.as_deref())
                    .unwrap_or_default()
                    .to_owned(),
                cache_control: None,
                signature: None,
            });
        }
    }
    let has_calls = content.iter().any(|p| matches!(p, Part::ToolCall { .. }));
    let finish = match choice.finish_reason {
        Some(r) => finish_reason_from(&r),
        None if has_calls => FinishReason::ToolCalls,
        None => FinishReason::Stop,
    };
    Ok(ChatResponse {
        id: w.id.map(Cow::into_owned).unwrap_or_default(),
        model: w.model.map(Cow::into_owned).unwrap_or_default(),
        created: w.created,
        content,
        finish,
        usage: w.usage.unwrap_or_default().to_neutral(),
    })
}

#[derive(Serialize)]
struct OutCompletion<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [OutChoice<'a>; 1],
    usage: OutUsage,
}

#[derive(Serialize)]
struct OutChoice<'a> {
    index: u32,
    message: OutAnswer<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct OutAnswer<'a> {
    role: &'static str,
    content: Option<Cow<'a, str>>,
    refusal: Option<()>,
    /// Reasoning text, as OpenAI-compatible servers name it (official clients ignore it).
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<OutToolCall<'a>>,
}

#[derive(Serialize)]
pub(super) struct OutToolCall<'a> {
    pub(super) id: Cow<'a, str>,
    #[serde(rename = "type")]
    pub(super) ty: &'static str,
    pub(super) function: OutFunctionCall<'a>,
}

#[derive(Serialize)]
pub(super) struct OutFunctionCall<'a> {
    pub(super) name: &'a str,
    pub(super) arguments: &'a str,
}

/// Join the texts of `parts` that `pick` selects: one borrowed, several with a blank line.
fn joined<'a>(
    parts: &'a [Part],
    pick: impl Fn(&'a Part) -> Option<&'a str>,
) -> Option<Cow<'a, str>> {
    let mut it = parts.iter().filter_map(pick);
    let first = it.next()?;
    match it.next() {
        None => Some(Cow::Borrowed(first)),
        Some(second) => {
            let mut s = String::with_capacity(first.len() + second.len() + 2);
            s.push_str(first);
            for t in std::iter::once(second).chain(it) {
                s.push_str("\n\n");
                s.push_str(t);
            }
            Some(Cow::Owned(s))
        }
    }
}

/// Encode a `chat.completion` for a client: texts joined by a blank line, reasoning as
/// `reasoning_content`, tool calls; signatures, redacted reasoning and other-format blocks are
/// left out. The id takes the `chatcmpl-` style.
pub fn encode_response(resp: &ChatResponse, client_model: &str, out: &mut Vec<u8>) {
    let tool_calls: Vec<OutToolCall> = resp
        .content
        .iter()
        .filter_map(|p| match p {
            Part::ToolCall {
                id,
                name,
                arguments_json,
                signature,
                ..
            } => Some(OutToolCall {
                id: match signature {
                    None => Cow::Borrowed(id.as_str()),
                    Some(_) => Cow::Owned(client_tool_call_id(id, signature.as_deref())),
                },
                ty: "function",
                function: OutFunctionCall {
                    name,
                    arguments: if arguments_json.is_empty() {
                        "{}"
                    } else {
                        arguments_json
                    },
                },
            }),
            _ => None,
        })
        .collect();
    let text = joined(&resp.content, |p| match p {
        Part::Text { text, .. } => Some(text),
        _ => None,
    });
    let content = match text {
        None if !tool_calls.is_empty() => None,
        None => Some(Cow::Borrowed("")),
        some => some,
    };
    let wire = OutCompletion {
        id: restyle_id(&resp.id, "chatcmpl-"),
        object: "chat.completion",
        created: resp.created.unwrap_or_else(unix_now_s),
        model: client_model,
        choices: [OutChoice {
            index: 0,
            message: OutAnswer {
                role: "assistant",
                content,
                refusal: None,
                reasoning_content: joined(&resp.content, |p| match p {
                    Part::Reasoning { text, .. } => Some(text),
                    _ => None,
                }),
                tool_calls,
            },
            logprobs: None,
            finish_reason: finish_reason_str(&resp.finish),
        }],
        usage: OutUsage::from_neutral(&resp.usage),
    };
    out.reserve(256 + resp.content.iter().map(part_len).sum::<usize>());
    crate::formats::json::write_value(out, &wire);
}

fn part_len(p: &Part) -> usize {
    match p {
        Part::Text { text, .. } | Part::Reasoning { text, .. } => text.len() + 8,
        Part::ToolCall {
            id,
            name,
            arguments_json,
            ..
        } => id.len() + name.len() + arguments_json.len() + 64,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::Usage;

    #[test]
    fn unreadable_answers_are_upstream_errors() {
        for body in [&b"not json"[..], br#"{"choices":[]}"#] {
            let e = decode_response(body, &EncodeInfo::default()).unwrap_err();
            assert_eq!((e.status, e.code), (502, "upstream_invalid_response"));
        }
    }

    #[test]
    fn compatible_servers_reasoning_and_missing_fields() {
        let r = decode_response(
            br#"{"choices":[{"message":{"role":"assistant","content":null,"reasoning":"hmm","tool_calls":[{"function":{"name":"f","arguments":"{}"}}]}}]}"#,
            &EncodeInfo::default(),
        )
        .unwrap();
        assert_eq!(r.finish, FinishReason::ToolCalls);
        assert!(matches!(&r.content[0], Part::Reasoning { text, .. } if text == "hmm"));
        assert!(matches!(&r.content[1], Part::ToolCall { id, .. } if id == "call_0"));
        assert_eq!(r.usage, Usage::default());
    }

    #[test]
    fn an_empty_answer_has_empty_content() {
        let mut out = Vec::new();
        let resp = ChatResponse {
            id: "x".into(),
            created: Some(1),
            ..ChatResponse::default()
        };
        encode_response(&resp, "m", &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "");
        assert_eq!(v["id"], "chatcmpl-x");
        assert_eq!(v["usage"]["total_tokens"], 0);
    }
}

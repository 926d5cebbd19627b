//! OpenAI Chat Completions streams: a provider's `chat.completion.chunk` events into neutral
//! stream events, and neutral events into chunks for a client.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::request::WireFunctionCall;
use super::{
    decode_error, error_event, finish_reason_from, finish_reason_str, LenientStr, OutUsage,
    WireUsage, DONE_EVENT, KEEPALIVE_EVENT,
};
use crate::formats::chat::{client_tool_call_id, PartKind, StreamError, StreamEvent, Usage};
use crate::formats::json::{sse_begin, sse_end, write_str, write_u64, write_value};
use crate::formats::{restyle_id, FormatError};

#[derive(Deserialize)]
struct WireChunk<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Vec<WireChunkChoice<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireChunkChoice<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default)]
    delta: Option<WireDelta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireDelta<'a> {
    #[serde(borrow, default)]
    content: LenientStr<'a>,
    #[serde(borrow, default)]
    refusal: LenientStr<'a>,
    #[serde(borrow, default)]
    reasoning_content: LenientStr<'a>,
    #[serde(borrow, default)]
    reasoning: LenientStr<'a>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<WireToolDelta<'a>>>,
}

#[derive(Deserialize)]
struct WireToolDelta<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<WireFunctionCall<'a>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OpenKind {
    Text,
    Reasoning,
    Tool,
}

struct ToolSlot {
    id: String,
    part: u32,
}

/// Reads a provider's chunks (one SSE `data:` payload at a time) into neutral events. Parts are
/// numbered in the order they appear (reasoning, text, each tool call); a part is stopped when
/// another starts or the choice finishes. Only choice 0 is read.
#[derive(Default)]
pub struct StreamDecoder {
    started: bool,
    next_part: u32,
    open: Option<(u32, OpenKind)>,
    /// Tool calls by the provider's `tool_calls[].index`.
    tools: HashMap<u32, ToolSlot>,
    done: bool,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `[DONE]` was seen.
    pub fn is_complete(&self) -> bool {
        self.done
    }

    /// Feed one SSE event (`event:` name, if any, and its `data:` payload).
    pub fn feed(
        &mut self,
        _event: Option<&str>,
        data: &[u8],
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), FormatError> {
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            self.close(out);
            self.done = true;
            return Ok(());
        }
        if self.done || data.is_empty() {
            return Ok(());
        }
        let chunk: WireChunk = serde_json::from_slice(data)
            .map_err(|e| FormatError::invalid_event("stream chunk", e))?;
        if chunk.error.is_some() {
            let e = decode_error(500, data);
            let status = e
                .code
                .as_deref()
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|s| (400..600).contains(s))
                .unwrap_or(500);
            out.push(StreamEvent::Error(StreamError {
                status,
                error_type: e.error_type,
                message: e.message,
            }));
            return Ok(());
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::MessageStart {
                id: chunk.id.as_deref().unwrap_or_default().to_owned(),
                model: chunk.model.as_deref().unwrap_or_default().to_owned(),
                usage: Usage::default(),
            });
        }
        for choice in chunk.choices {
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = choice.delta {
                self.delta(delta, out)?;
            }
            if let Some(reason) = choice.finish_reason {
                self.close(out);
                out.push(StreamEvent::Finish(finish_reason_from(&reason)));
            }
        }
        if let Some(u) = chunk.usage {
            out.push(StreamEvent::Usage(u.to_neutral()));
        }
        Ok(())
    }

    /// At the end of the provider's stream: an error when `[DONE]` never came.
    pub fn finish(&self) -> Result<(), FormatError> {
        FormatError::stream_end(self.done, "`[DONE]`")
    }

    fn delta(&mut self, d: WireDelta, out: &mut Vec<StreamEvent>) -> Result<(), FormatError> {
        if let Some(text) = d
            .reasoning_content
            .0
            .or(d.reasoning.0)
            .filter(|t| !t.is_empty())
        {
            let index = self.ensure(OpenKind::Reasoning, out);
            out.push(StreamEvent::ReasoningDelta {
                index,
                text: text.into_owned(),
            });
        }
        for text in [d.content.0, d.refusal.0].into_iter().flatten() {
            if !text.is_empty() {
                let index = self.ensure(OpenKind::Text, out);
                out.push(StreamEvent::TextDelta {
                    index,
                    text: text.into_owned(),
                });
            }
        }
        for (pos, call) in d.tool_calls.unwrap_or_default().into_iter().enumerate() {
            self.tool_delta(call, pos as u32, out)?;
        }
        Ok(())
    }

    fn tool_delta(
        &mut self,
        call: WireToolDelta,
        pos: u32,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), FormatError> {
        let wire_index = call.index.unwrap_or(pos);
        let known = self
            .tools
            .get(&wire_index)
            .filter(|t| call.id.as_deref().is_none_or(|id| id == t.id));
        let part = match known {
            Some(slot) => slot.part,
            None => {
                self.close(out);
                let part = self.next_part;
                self.next_part += 1;
                let id = match &call.id {
                    Some(id) => id.clone().into_owned(),
                    None => format!("call_{part}"),
                };
                let name = call
                    .function
                    .as_ref()
                    .and_then(|f| f.name.as_deref())
                    .unwrap_or_default()
                    .to_owned();
                out.push(StreamEvent::PartStart {
                    index: part,
                    kind: PartKind::ToolCall {
                        id: id.clone(),
                        name,
                        signature: None,
                    },
                });
                self.tools.insert(wire_index, ToolSlot { id, part });
                self.open = Some((part, OpenKind::Tool));
                part
            }
        };
        let args = call
            .function
            .and_then(|f| f.arguments)
            .filter(|a| !a.is_empty());
        if let Some(args) = args {
            if self.open != Some((part, OpenKind::Tool)) {
                return Err(FormatError::upstream(
                    "upstream_invalid_stream",
                    "the provider interleaved the arguments of parallel tool calls",
                ));
            }
            out.push(StreamEvent::ToolArgsDelta {
                index: part,
                json: args.into_owned(),
            });
        }
        Ok(())
    }

    /// The index of the open part of `kind`, starting one (and stopping another) if needed.
    fn ensure(&mut self, kind: OpenKind, out: &mut Vec<StreamEvent>) -> u32 {
        if let Some((index, k)) = self.open {
            if k == kind {
                return index;
            }
        }
        self.close(out);
        let index = self.next_part;
        self.next_part += 1;
        out.push(StreamEvent::PartStart {
            index,
            kind: match kind {
                OpenKind::Reasoning => PartKind::Reasoning,
                _ => PartKind::Text,
            },
        });
        self.open = Some((index, kind));
        index
    }

    fn close(&mut self, out: &mut Vec<StreamEvent>) {
        if let Some((index, _)) = self.open.take() {
            out.push(StreamEvent::PartStop { index });
        }
    }
}

/// Writes neutral events as `chat.completion.chunk` SSE events for a client: the role first,
/// then content, `reasoning_content` and `tool_calls` deltas (tool calls numbered from 0), a
/// finish chunk, then on [`StreamEncoder::finish`] the usage chunk (when the client set
/// `stream_options.include_usage`) and `data: [DONE]`. Signatures and redacted reasoning have no
/// OpenAI form and are left out.
pub struct StreamEncoder {
    model: String,
    created: u64,
    include_usage: bool,
    /// `data: {"id":..,"object":..,"created":..,"model":..,"choices":[{"index":0,"delta":`
    head: Vec<u8>,
    started: bool,
    /// OpenAI tool call index by neutral part index.
    tools: HashMap<u32, u32>,
    text_parts: u32,
    reasoning_parts: u32,
    usage: Option<Usage>,
    finish_sent: bool,
    done: bool,
}

impl StreamEncoder {
    /// `created`: the chunks' Unix timestamp, seconds.
    pub fn new(client_model: &str, include_usage: bool, created: u64) -> Self {
        StreamEncoder {
            model: client_model.to_owned(),
            created,
            include_usage,
            head: Vec::new(),
            started: false,
            tools: HashMap::new(),
            text_parts: 0,
            reasoning_parts: 0,
            usage: None,
            finish_sent: false,
            done: false,
        }
    }

    /// Append the SSE for one event.
    pub fn encode(&mut self, ev: &StreamEvent, out: &mut Vec<u8>) {
        if let StreamEvent::MessageStart { id, usage, .. } = ev {
            if !self.started {
                self.start(id, out);
            }
            if *usage != Usage::default() {
                self.usage = Some(*usage);
            }
            return;
        }
        match ev {
            StreamEvent::Usage(u) => self.usage = Some(*u),
            StreamEvent::Ping => Self::keepalive(out),
            StreamEvent::Error(e) => self.error(e, out),
            _ => {
                if !self.started {
                    self.start("", out);
                }
                self.content(ev, out);
            }
        }
    }

    fn content(&mut self, ev: &StreamEvent, out: &mut Vec<u8>) {
        match ev {
            StreamEvent::PartStart { index, kind } => match kind {
                PartKind::Text => {
                    self.text_parts += 1;
                    if self.text_parts > 1 {
                        self.delta(out, |o| delta_str(o, "content", "\n\n"));
                    }
                }
                PartKind::Reasoning => {
                    self.reasoning_parts += 1;
                    if self.reasoning_parts > 1 {
                        self.delta(out, |o| delta_str(o, "reasoning_content", "\n\n"));
                    }
                }
                PartKind::ToolCall {
                    id,
                    name,
                    signature,
                } => {
                    let k = self.tools.len() as u32;
                    self.tools.insert(*index, k);
                    let id = client_tool_call_id(id, signature.as_deref());
                    self.delta(out, |o| {
                        o.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
                        write_u64(o, k.into());
                        o.extend_from_slice(b",\"id\":");
                        write_str(o, &id);
                        o.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
                        write_str(o, name);
                        o.extend_from_slice(b",\"arguments\":\"\"}}]}");
                    });
                }
                PartKind::RedactedReasoning { .. } => {}
            },
            StreamEvent::TextDelta { text, .. } if !text.is_empty() => {
                self.delta(out, |o| delta_str(o, "content", text));
            }
            StreamEvent::ReasoningDelta { text, .. } if !text.is_empty() => {
                self.delta(out, |o| delta_str(o, "reasoning_content", text));
            }
            StreamEvent::ToolArgsDelta { index, json } if !json.is_empty() => {
                let Some(&k) = self.tools.get(index) else {
                    return;
                };
                self.delta(out, |o| {
                    o.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
                    write_u64(o, k.into());
                    o.extend_from_slice(b",\"function\":{\"arguments\":");
                    write_str(o, json);
                    o.extend_from_slice(b"}}]}");
                });
            }
            StreamEvent::Finish(reason) if !self.finish_sent => {
                self.finish_sent = true;
                self.finish_chunk(finish_reason_str(reason), out);
            }
            _ => {}
        }
    }

    /// Append the end of the stream: a finish chunk if none was sent, the usage chunk when the
    /// client asked for it and the usage is known, and `data: [DONE]`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if !self.started {
            self.start("", out);
        }
        if !self.finish_sent {
            self.finish_sent = true;
            self.finish_chunk("stop", out);
        }
        if let (true, Some(usage)) = (self.include_usage, self.usage) {
            sse_begin(out, None);
            // The head up to `"choices":[`.
            let cut = self.head.len() - b"{\"index\":0,\"delta\":".len();
            out.extend_from_slice(&self.head[b"data: ".len()..cut]);
            out.extend_from_slice(b"],\"usage\":");
            write_value(out, &OutUsage::from_neutral(&usage));
            out.push(b'}');
            sse_end(out);
        }
        out.extend_from_slice(DONE_EVENT);
        self.done = true;
    }

    /// A keep-alive: an SSE comment.
    pub fn keepalive(out: &mut Vec<u8>) {
        out.extend_from_slice(KEEPALIVE_EVENT);
    }

    /// An error event: `data: {"error":{...}}`. The type is passed on as given.
    pub fn error(&mut self, e: &StreamError, out: &mut Vec<u8>) {
        error_event(e.status, Some(&e.error_type), &e.message, None, out);
    }

    fn start(&mut self, id: &str, out: &mut Vec<u8>) {
        self.started = true;
        let id = restyle_id(id, "chatcmpl-");
        self.head.clear();
        self.head.extend_from_slice(b"data: {\"id\":");
        write_str(&mut self.head, &id);
        self.head
            .extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        write_u64(&mut self.head, self.created);
        self.head.extend_from_slice(b",\"model\":");
        write_str(&mut self.head, &self.model);
        self.head
            .extend_from_slice(b",\"choices\":[{\"index\":0,\"delta\":");
        self.delta(out, |o| {
            o.extend_from_slice(b"{\"role\":\"assistant\",\"content\":\"\"}")
        });
    }

    /// One chunk whose delta `write_delta` writes.
    fn delta(&self, out: &mut Vec<u8>, write_delta: impl FnOnce(&mut Vec<u8>)) {
        out.extend_from_slice(&self.head);
        write_delta(out);
        out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":null}]");
        self.tail(out);
    }

    fn finish_chunk(&self, reason: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b"{},\"logprobs\":null,\"finish_reason\":");
        write_str(out, reason);
        out.extend_from_slice(b"}]");
        self.tail(out);
    }

    fn tail(&self, out: &mut Vec<u8>) {
        if self.include_usage {
            out.extend_from_slice(b",\"usage\":null");
        }
        out.push(b'}');
        sse_end(out);
    }
}

fn delta_str(out: &mut Vec<u8>, field: &str, text: &str) {
    out.push(b'{');
    write_str(out, field);
    out.push(b':');
    write_str(out, text);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::chat::FinishReason;

    fn feed_all(payloads: &[&str]) -> (Vec<StreamEvent>, StreamDecoder) {
        let mut d = StreamDecoder::new();
        let mut evs = Vec::new();
        for p in payloads {
            d.feed(None, p.as_bytes(), &mut evs).unwrap();
        }
        (evs, d)
    }

    #[test]
    fn incomplete_streams_are_reported() {
        let (_, d) = feed_all(&[r#"{"id":"a","choices":[{"index":0,"delta":{"content":"x"}}]}"#]);
        assert_eq!(d.finish().unwrap_err().code, "upstream_stream_incomplete");
        let (_, d) = feed_all(&["[DONE]"]);
        assert!(d.finish().is_ok() && d.is_complete());
    }

    #[test]
    fn mid_stream_errors_become_error_events() {
        let (evs, _) =
            feed_all(&[r#"{"error":{"message":"Rate limit","type":"requests","code":"429"}}"#]);
        assert_eq!(
            evs,
            [StreamEvent::Error(StreamError {
                status: 429,
                error_type: "requests".into(),
                message: "Rate limit".into()
            })]
        );
    }

    #[test]
    fn unreadable_chunks_are_upstream_errors() {
        let mut d = StreamDecoder::new();
        let e = d.feed(None, b"{nope", &mut Vec::new()).unwrap_err();
        assert_eq!((e.status, e.code), (502, "upstream_invalid_stream"));
    }

    #[test]
    fn interleaved_tool_arguments_are_refused() {
        let mut d = StreamDecoder::new();
        let mut evs = Vec::new();
        for p in [
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"f","arguments":""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"b","function":{"name":"g","arguments":"{}"}}]}}]}"#,
        ] {
            d.feed(None, p.as_bytes(), &mut evs).unwrap();
        }
        let late =
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}}]}"#;
        assert_eq!(
            d.feed(None, late.as_bytes(), &mut evs).unwrap_err().code,
            "upstream_invalid_stream"
        );
    }

    #[test]
    fn reasoning_then_text_are_two_parts() {
        let (evs, _) = feed_all(&[
            r#"{"id":"x","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"","reasoning_content":"think"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}"#,
        ]);
        assert_eq!(
            evs,
            [
                StreamEvent::MessageStart {
                    id: "x".into(),
                    model: "m".into(),
                    usage: Usage::default()
                },
                StreamEvent::PartStart {
                    index: 0,
                    kind: PartKind::Reasoning
                },
                StreamEvent::ReasoningDelta {
                    index: 0,
                    text: "think".into()
                },
                StreamEvent::PartStop { index: 0 },
                StreamEvent::PartStart {
                    index: 1,
                    kind: PartKind::Text
                },
                StreamEvent::TextDelta {
                    index: 1,
                    text: "hi".into()
                },
                StreamEvent::PartStop { index: 1 },
                StreamEvent::Finish(FinishReason::Stop),
            ]
        );
    }

    #[test]
    fn encoder_without_usage_request_sends_no_usage() {
        let mut e = StreamEncoder::new("m", false, 7);
        let mut out = Vec::new();
        e.encode(
            &StreamEvent::MessageStart {
                id: "msg_1".into(),
                model: "x".into(),
                usage: Usage {
                    input_tokens: 3,
                    ..Usage::default()
                },
            },
            &mut out,
        );
        e.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n\
             data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n\
             data: [DONE]\n\n"
        );
    }
}

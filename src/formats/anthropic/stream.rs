//! Anthropic Messages streams: a provider's typed SSE events into neutral stream events, and
//! neutral events into Anthropic's exact event sequence for a client.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;

use super::request::WireBlock;
use super::{
    error_event, status_for_error_type, stop_reason_from, stop_reason_str, OutUsage, WireUsage,
};
use crate::formats::chat::{
    client_tool_call_id, FinishReason, PartKind, StreamError, StreamEvent, Usage,
};
use crate::formats::json::{sse_begin, sse_end, stream_event, write_str, write_u64, write_value};
use crate::formats::{restyle_id, EncodeInfo, FormatError};

#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(rename = "type", borrow, default)]
    ty: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<WireStart<'a>>,
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default)]
    content_block: Option<WireBlock<'a>>,
    #[serde(borrow, default)]
    delta: Option<WireDelta<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(borrow, default)]
    error: Option<WireError<'a>>,
}

#[derive(Deserialize)]
struct WireStart<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// A `content_block_delta`'s or a `message_delta`'s `delta`.
#[derive(Deserialize)]
struct WireDelta<'a> {
    #[serde(rename = "type", borrow, default)]
    ty: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    signature: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    stop_sequence: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireError<'a> {
    #[serde(rename = "type", borrow, default)]
    ty: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BlockRole {
    /// Passed on as a neutral part.
    Part,
    /// The structured-answer tool: its input is passed on as text.
    Answer,
    /// A server tool block: no neutral form in a stream; dropped.
    Dropped,
}

/// Reads a provider's events (`event:` name and `data:` payload, one at a time) into neutral
/// events. The stream is complete at `message_stop`. Part indices are Anthropic's block indices.
pub struct StreamDecoder {
    info: EncodeInfo,
    blocks: HashMap<u32, BlockRole>,
    usage: WireUsage,
    tool_calls: bool,
    done: bool,
}

impl StreamDecoder {
    /// `info`: what the request encoder did (a structured answer sent as a tool).
    pub fn new(info: &EncodeInfo) -> Self {
        StreamDecoder {
            info: info.clone(),
            blocks: HashMap::new(),
            usage: WireUsage::default(),
            tool_calls: false,
            done: false,
        }
    }

    /// Whether `message_stop` was seen.
    pub fn is_complete(&self) -> bool {
        self.done
    }

    /// At the end of the provider's stream: an error when `message_stop` never came.
    pub fn finish(&self) -> Result<(), FormatError> {
        FormatError::stream_end(self.done, "`message_stop`")
    }

    /// Feed one SSE event. The type comes from the payload's `type`, else the `event:` name.
    pub fn feed(
        &mut self,
        event: Option<&str>,
        data: &[u8],
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), FormatError> {
        let Some(ev) = stream_event::<WireEvent>(data, self.done)? else {
            return Ok(());
        };
        let ty = ev.ty.as_deref().or(event).unwrap_or_default();
        match ty {
            "message_start" => {
                let m = ev.message.unwrap_or(WireStart {
                    id: None,
                    model: None,
                    usage: None,
                });
                self.usage = m.usage.unwrap_or_default();
                out.push(StreamEvent::MessageStart {
                    id: m.id.map(Cow::into_owned).unwrap_or_default(),
                    model: m.model.map(Cow::into_owned).unwrap_or_default(),
                    usage: self.usage.to_neutral(),
                });
            }
            "content_block_start" => {
                if let (Some(index), Some(block)) = (ev.index, ev.content_block) {
                    self.block_start(index, block, out);
                }
            }
            "content_block_delta" => {
                if let (Some(index), Some(delta)) = (ev.index, ev.delta) {
                    self.block_delta(index, delta, out);
                }
            }
            "content_block_stop" => {
                if let Some(index) = ev.index {
                    if self.role(index) != BlockRole::Dropped {
                        out.push(StreamEvent::PartStop { index });
                    }
                }
            }
            "message_delta" => {
                if let Some(u) = ev.usage {
                    self.usage.merge(u);
                }
                if let Some(r) = ev.delta.as_ref().and_then(|d| d.stop_reason.as_deref()) {
                    let stop_sequence = ev.delta.as_ref().and_then(|d| d.stop_sequence.as_deref());
                    let finish = stop_reason_from(r, stop_sequence);
                    out.push(StreamEvent::Finish(self.answer_finish(finish)));
                }
                out.push(StreamEvent::Usage(self.usage.to_neutral()));
            }
            "message_stop" => self.done = true,
            "ping" => out.push(StreamEvent::Ping),
            "error" => {
                let e = ev.error.unwrap_or(WireError {
                    ty: None,
                    message: None,
                });
                let error_type =
                    e.ty.map(Cow::into_owned)
                        .unwrap_or_else(|| "api_error".to_owned());
                out.push(StreamEvent::Error(StreamError {
                    status: status_for_error_type(&error_type),
                    error_type,
                    message: e.message.map(Cow::into_owned).unwrap_or_default(),
                }));
            }
            // Event types added later are skipped, as the API reference asks.
            _ => {}
        }
        Ok(())
    }

    fn answer_finish(&self, finish: FinishReason) -> FinishReason {
        self.info.client_finish(finish, self.tool_calls)
    }

    fn role(&self, index: u32) -> BlockRole {
        self.blocks
            .get(&index)
            .copied()
            .unwrap_or(BlockRole::Dropped)
    }

    fn block_start(&mut self, index: u32, b: WireBlock, out: &mut Vec<StreamEvent>) {
        let (role, kind) = match &*b.ty {
            "text" => (BlockRole::Part, PartKind::Text),
            "thinking" => (BlockRole::Part, PartKind::Reasoning),
            "redacted_thinking" => (
                BlockRole::Part,
                PartKind::RedactedReasoning {
                    data: b.data.as_deref().unwrap_or_default().to_owned(),
                },
            ),
            "tool_use"
                if b.name.is_some()
                    && b.name.as_deref() == self.info.structured_output_tool.as_deref() =>
            {
                (BlockRole::Answer, PartKind::Text)
            }
            "tool_use" => {
                self.tool_calls = true;
                (
                    BlockRole::Part,
                    PartKind::ToolCall {
                        id: b.id.as_deref().unwrap_or_default().to_owned(),
                        name: b.name.as_deref().unwrap_or_default().to_owned(),
                        signature: None,
                    },
                )
            }
            _ => {
                self.blocks.insert(index, BlockRole::Dropped);
                return;
            }
        };
        self.blocks.insert(index, role);
        out.push(StreamEvent::PartStart { index, kind });
        if let Some(text) = b.text.filter(|t| !t.is_empty()) {
            out.push(StreamEvent::TextDelta {
                index,
                text: text.into_owned(),
            });
        }
        if let Some(text) = b.thinking.filter(|t| !t.is_empty()) {
            out.push(StreamEvent::ReasoningDelta {
                index,
                text: text.into_owned(),
            });
        }
        if let Some(signature) = b.signature.filter(|s| !s.is_empty()) {
            out.push(StreamEvent::SignatureDelta {
                index,
                signature: signature.into_owned(),
            });
        }
    }

    fn block_delta(&mut self, index: u32, d: WireDelta, out: &mut Vec<StreamEvent>) {
        let role = self.role(index);
        let ev = match (d.ty.as_deref(), role) {
            (_, BlockRole::Dropped) => return,
            (Some("text_delta"), _) => StreamEvent::TextDelta {
                index,
                text: d.text.map(Cow::into_owned).unwrap_or_default(),
            },
            (Some("input_json_delta"), BlockRole::Answer) => StreamEvent::TextDelta {
                index,
                text: d.partial_json.map(Cow::into_owned).unwrap_or_default(),
            },
            (Some("input_json_delta"), _) => StreamEvent::ToolArgsDelta {
                index,
                json: d.partial_json.map(Cow::into_owned).unwrap_or_default(),
            },
            (Some("thinking_delta"), _) => StreamEvent::ReasoningDelta {
                index,
                text: d.thinking.map(Cow::into_owned).unwrap_or_default(),
            },
            (Some("signature_delta"), _) => StreamEvent::SignatureDelta {
                index,
                signature: d.signature.map(Cow::into_owned).unwrap_or_default(),
            },
            // citations_delta and delta types added later.
            _ => return,
        };
        out.push(ev);
    }
}

/// Writes neutral events as Anthropic's event sequence for a client: `message_start`, then per
/// part `content_block_start`, `content_block_delta`s and `content_block_stop`, and on
/// [`StreamEncoder::finish`] one `message_delta` (stop reason and the final usage) and
/// `message_stop`. The finish reason and usage wait for `finish` because OpenAI providers send
/// usage only after the finish reason. Block indices count from 0 in the order parts start.
pub struct StreamEncoder {
    model: String,
    started: bool,
    next_block: u32,
    /// (neutral part index, block index) of the open block.
    open: Option<(u32, u32)>,
    usage: Usage,
    finish: Option<FinishReason>,
    done: bool,
}

impl StreamEncoder {
    pub fn new(client_model: &str) -> Self {
        StreamEncoder {
            model: client_model.to_owned(),
            started: false,
            next_block: 0,
            open: None,
            usage: Usage::default(),
            finish: None,
            done: false,
        }
    }

    /// Append the SSE for one event (nothing for events that must wait for `finish`).
    pub fn encode(&mut self, ev: &StreamEvent, out: &mut Vec<u8>) {
        match ev {
            StreamEvent::MessageStart { id, usage, .. } => {
                self.usage = *usage;
                if !self.started {
                    self.start(id, out);
                }
            }
            StreamEvent::Usage(u) => self.usage = *u,
            StreamEvent::Ping => Self::ping(out),
            StreamEvent::Error(e) => self.error(e, out),
            StreamEvent::Finish(r) => {
                self.close(out);
                self.finish = Some(r.clone());
            }
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
            StreamEvent::PartStart { index, kind } => self.block_start(*index, kind, out),
            StreamEvent::TextDelta { index, text } => {
                self.ensure(*index, &PartKind::Text, out);
                self.delta(out, "text_delta", "text", text);
            }
            StreamEvent::ReasoningDelta { index, text } => {
                self.ensure(*index, &PartKind::Reasoning, out);
                self.delta(out, "thinking_delta", "thinking", text);
            }
            StreamEvent::ToolArgsDelta { index, json } if self.is_open(*index) => {
                self.delta(out, "input_json_delta", "partial_json", json);
            }
            StreamEvent::SignatureDelta { index, signature } if self.is_open(*index) => {
                self.delta(out, "signature_delta", "signature", signature);
            }
            StreamEvent::PartStop { index } if self.is_open(*index) => self.close(out),
            _ => {}
        }
    }

    /// Append the end of the stream: `message_delta` with the stop reason (`end_turn` when none
    /// came) and the usage, and `message_stop`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if !self.started {
            self.start("", out);
        }
        self.close(out);
        let finish = self.finish.take().unwrap_or_default();
        let stop_sequence = match &finish {
            FinishReason::StopSequence(s) => s.as_deref(),
            _ => None,
        };
        sse_begin(out, Some("message_delta"));
        out.extend_from_slice(b"{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":");
        write_str(out, stop_reason_str(&finish));
        out.extend_from_slice(b",\"stop_sequence\":");
        match stop_sequence {
            Some(s) => write_str(out, s),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"},\"usage\":");
        write_value(out, &OutUsage::from_neutral(&self.usage));
        out.push(b'}');
        sse_end(out);
        out.extend_from_slice(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        self.done = true;
    }

    /// A keep-alive: `event: ping`.
    pub fn ping(out: &mut Vec<u8>) {
        out.extend_from_slice(b"event: ping\ndata: {\"type\":\"ping\"}\n\n");
    }

    /// An `error` event; a type of another format's vocabulary is replaced by Anthropic's type
    /// for the status.
    pub fn error(&mut self, e: &StreamError, out: &mut Vec<u8>) {
        error_event(e.status, Some(&e.error_type), &e.message, out);
    }

    fn start(&mut self, id: &str, out: &mut Vec<u8>) {
        self.started = true;
        sse_begin(out, Some("message_start"));
        out.extend_from_slice(b"{\"type\":\"message_start\",\"message\":{\"id\":");
        write_str(out, &restyle_id(id, "msg_"));
        out.extend_from_slice(b",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
        write_str(out, &self.model);
        out.extend_from_slice(
            b",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":",
        );
        write_value(out, &OutUsage::from_neutral(&self.usage));
        out.extend_from_slice(b"}}");
        sse_end(out);
    }

    fn is_open(&self, index: u32) -> bool {
        self.open.is_some_and(|(i, _)| i == index)
    }

    /// Open a text or thinking block for a delta whose part was not started.
    fn ensure(&mut self, index: u32, kind: &PartKind, out: &mut Vec<u8>) {
        if !self.is_open(index) {
            self.block_start(index, kind, out);
        }
    }

    fn block_start(&mut self, index: u32, kind: &PartKind, out: &mut Vec<u8>) {
        self.close(out);
        let block = self.next_block;
        self.next_block += 1;
        self.open = Some((index, block));
        sse_begin(out, Some("content_block_start"));
        out.extend_from_slice(b"{\"type\":\"content_block_start\",\"index\":");
        write_u64(out, block.into());
        out.extend_from_slice(b",\"content_block\":");
        match kind {
            PartKind::Text => out.extend_from_slice(b"{\"type\":\"text\",\"text\":\"\"}"),
            PartKind::Reasoning => out
                .extend_from_slice(b"{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}"),
            PartKind::RedactedReasoning { data } => {
                out.extend_from_slice(b"{\"type\":\"redacted_thinking\",\"data\":");
                write_str(out, data);
                out.push(b'}');
            }
            PartKind::ToolCall {
                id,
                name,
                signature,
            } => {
                out.extend_from_slice(b"{\"type\":\"tool_use\",\"id\":");
                write_str(out, &client_tool_call_id(id, signature.as_deref()));
                out.extend_from_slice(b",\"name\":");
                write_str(out, name);
                out.extend_from_slice(b",\"input\":{}}");
            }
        }
        out.push(b'}');
        sse_end(out);
    }

    fn delta(&self, out: &mut Vec<u8>, delta_type: &str, field: &str, value: &str) {
        let Some((_, block)) = self.open else {
            return;
        };
        sse_begin(out, Some("content_block_delta"));
        out.extend_from_slice(b"{\"type\":\"content_block_delta\",\"index\":");
        write_u64(out, block.into());
        out.extend_from_slice(b",\"delta\":{\"type\":");
        write_str(out, delta_type);
        out.push(b',');
        write_str(out, field);
        out.push(b':');
        write_str(out, value);
        out.extend_from_slice(b"}}");
        sse_end(out);
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((_, block)) = self.open.take() {
            sse_begin(out, Some("content_block_stop"));
            out.extend_from_slice(b"{\"type\":\"content_block_stop\",\"index\":");
            write_u64(out, block.into());
            out.push(b'}');
            sse_end(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_streams_are_reported() {
        let mut d = StreamDecoder::new(&EncodeInfo::default());
        let mut evs = Vec::new();
        d.feed(
            Some("message_start"),
            br#"{"type":"message_start","message":{"id":"msg_1","model":"c","usage":{"input_tokens":3,"output_tokens":1}}}"#,
            &mut evs,
        )
        .unwrap();
        assert_eq!(d.finish().unwrap_err().code, "upstream_stream_incomplete");
        d.feed(
            Some("message_stop"),
            br#"{"type":"message_stop"}"#,
            &mut evs,
        )
        .unwrap();
        assert!(d.finish().is_ok() && d.is_complete());
    }

    #[test]
    fn error_events_carry_the_status_of_their_type() {
        let mut d = StreamDecoder::new(&EncodeInfo::default());
        let mut evs = Vec::new();
        d.feed(
            Some("error"),
            br#"{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}"#,
            &mut evs,
        )
        .unwrap();
        assert_eq!(
            evs,
            [StreamEvent::Error(StreamError {
                status: 529,
                error_type: "overloaded_error".into(),
                message: "Overloaded".into()
            })]
        );
        let mut out = Vec::new();
        StreamEncoder::new("m").error(&evs_error(&evs), &mut out);
        assert!(out.starts_with(b"event: error\ndata: {\"type\":\"error\""));
    }

    fn evs_error(evs: &[StreamEvent]) -> StreamError {
        match &evs[0] {
            StreamEvent::Error(e) => e.clone(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn unknown_events_and_server_tool_blocks_are_skipped() {
        let mut d = StreamDecoder::new(&EncodeInfo::default());
        let mut evs = Vec::new();
        for (name, data) in [
            ("future_event", r#"{"type":"future_event","x":1}"#),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"server_tool_use","id":"s","name":"web_search","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{}"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
        ] {
            d.feed(Some(name), data.as_bytes(), &mut evs).unwrap();
        }
        assert!(evs.is_empty(), "{evs:?}");
        let e = d.feed(None, b"{", &mut evs).unwrap_err();
        assert_eq!((e.status, e.code), (502, "upstream_invalid_stream"));
    }

    #[test]
    fn an_empty_stream_still_has_the_full_sequence() {
        let mut e = StreamEncoder::new("claude");
        let mut out = Vec::new();
        e.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        let names: Vec<_> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(names, ["message_start", "message_delta", "message_stop"]);
        assert!(text.contains("\"stop_reason\":\"end_turn\""));
    }
}

//! ConverseStream: a provider's stream events (the `:event-type` and JSON payload of each event
//! stream message) and exceptions into neutral stream events.
//!
//! Bedrock's order: `messageStart`, per content block an optional `contentBlockStart` (tool use
//! only), `contentBlockDelta`s and `contentBlockStop`, then `messageStop` (the stop reason) and
//! `metadata` (usage and metrics). Text and reasoning blocks have no start event: their first
//! delta opens them.

use std::borrow::Cow;

use serde::Deserialize;

use super::response::WireAdditional;
use super::{status_for_error_type, stop_reason_from, WireUsage};
use crate::formats::chat::{PartKind, StreamError, StreamEvent};
use crate::formats::{truncate_message, EncodeInfo, FormatError, UPSTREAM_ERROR_MESSAGE_BYTES_MAX};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireEvent<'a> {
    #[serde(default)]
    content_block_index: Option<u32>,
    #[serde(borrow, default)]
    start: Option<WireStart<'a>>,
    #[serde(borrow, default)]
    delta: Option<WireDelta<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    additional_model_response_fields: Option<WireAdditional<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireStart<'a> {
    #[serde(borrow, default)]
    tool_use: Option<WireToolStart<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireToolStart<'a> {
    #[serde(borrow, default)]
    tool_use_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireDelta<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_use: Option<WireToolDelta<'a>>,
    #[serde(borrow, default)]
    reasoning_content: Option<WireReasoningDelta<'a>>,
}

#[derive(Deserialize)]
struct WireToolDelta<'a> {
    #[serde(borrow, default)]
    input: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireReasoningDelta<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    signature: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    redacted_content: Option<Cow<'a, str>>,
}

/// An exception's payload: `{"message": ...}`; `modelStreamErrorException` adds the model's own
/// status and message.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireException<'a> {
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(rename = "Message", borrow, default)]
    message_upper: Option<Cow<'a, str>>,
    #[serde(default)]
    original_status_code: Option<u16>,
    #[serde(borrow, default)]
    original_message: Option<Cow<'a, str>>,
}

/// What the open content block is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Open {
    Text,
    Reasoning,
    RedactedReasoning,
    ToolCall,
    /// The structured-answer tool: its input is passed on as text.
    Answer,
}

/// Reads ConverseStream events into neutral events. Part indices are Bedrock's
/// `contentBlockIndex`. The stream is complete at `metadata`; one that ends after `messageStop`
/// without it is complete too.
pub struct StreamDecoder {
    info: EncodeInfo,
    /// The open block: its index and kind.
    open: Option<(u32, Open)>,
    tool_calls: bool,
    stopped: bool,
    done: bool,
}

impl StreamDecoder {
    /// `info`: what the request encoder did (a structured answer sent as a tool).
    pub fn new(info: &EncodeInfo) -> Self {
        StreamDecoder {
            info: info.clone(),
            open: None,
            tool_calls: false,
            stopped: false,
            done: false,
        }
    }

    /// Whether `metadata` was read.
    pub fn is_complete(&self) -> bool {
        self.done
    }

    /// At the end of the provider's stream: an error when `messageStop` never came.
    pub fn finish(&self) -> Result<(), FormatError> {
        FormatError::stream_end(self.stopped, "`messageStop`")
    }

    /// Feed one event: `event` is its `:event-type`, `data` its JSON payload. Event types added
    /// later are skipped.
    pub fn feed(
        &mut self,
        event: Option<&str>,
        data: &[u8],
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), FormatError> {
        let Some(event) = event else {
            return Ok(());
        };
        if self.done {
            return Ok(());
        }
        let ev: WireEvent = serde_json::from_slice(data)
            .map_err(|e| FormatError::invalid_event(format_args!("`{event}` event"), e))?;
        match event {
            "messageStart" => out.push(StreamEvent::MessageStart {
                id: String::new(),
                model: String::new(),
                usage: Default::default(),
            }),
            "contentBlockStart" => {
                if let (Some(index), Some(tool)) =
                    (ev.content_block_index, ev.start.and_then(|s| s.tool_use))
                {
                    self.tool_start(index, tool, out);
                }
            }
            "contentBlockDelta" => {
                if let (Some(index), Some(delta)) = (ev.content_block_index, ev.delta) {
                    self.delta(index, delta, out);
                }
            }
            "contentBlockStop" => {
                if let Some(index) = ev.content_block_index {
                    if self.open.is_some_and(|(i, _)| i == index) {
                        self.close(out);
                    }
                }
            }
            "messageStop" => {
                self.close(out);
                self.stopped = true;
                let stop_sequence = ev
                    .additional_model_response_fields
                    .as_ref()
                    .and_then(|a| a.stop_sequence.as_deref());
                let finish = stop_reason_from(
                    ev.stop_reason.as_deref().unwrap_or("end_turn"),
                    stop_sequence,
                );
                out.push(StreamEvent::Finish(
                    self.info.client_finish(finish, self.tool_calls),
                ));
            }
            "metadata" => {
                if let Some(u) = ev.usage {
                    out.push(StreamEvent::Usage(u.to_neutral()));
                }
                self.done = true;
            }
            _ => {}
        }
        Ok(())
    }

    /// An exception the provider sent in the stream (`:message-type exception`, named by its
    /// `:exception-type`, or an `error` message with its code): the error event that ends it.
    pub fn exception(&mut self, error_type: &str, payload: &[u8]) -> StreamError {
        let w: Option<WireException> = serde_json::from_slice(payload).ok();
        let (message, original) = match w {
            Some(w) => (
                w.message.or(w.message_upper),
                w.original_message
                    .map(|m| (w.original_status_code, m.into_owned())),
            ),
            None => (None, None),
        };
        let mut message = match message {
            Some(m) if !m.is_empty() => m.into_owned(),
            _ => format!("the provider reported {error_type} in the stream"),
        };
        if let Some((status, original)) = original {
            match status {
                Some(s) => message.push_str(&format!(" (the model answered {s}: {original})")),
                None => message.push_str(&format!(" ({original})")),
            }
        }
        self.done = true;
        StreamError {
            status: status_for_error_type(error_type),
            error_type: error_type.to_owned(),
            message: truncate_message(&message, UPSTREAM_ERROR_MESSAGE_BYTES_MAX).to_owned(),
        }
    }

    fn close(&mut self, out: &mut Vec<StreamEvent>) {
        if let Some((index, _)) = self.open.take() {
            out.push(StreamEvent::PartStop { index });
        }
    }

    /// Open block `index` as `kind` (closing another open one) unless it is open already.
    fn ensure(&mut self, index: u32, kind: Open, part: PartKind, out: &mut Vec<StreamEvent>) {
        if self.open == Some((index, kind)) {
            return;
        }
        self.close(out);
        self.open = Some((index, kind));
        out.push(StreamEvent::PartStart { index, kind: part });
    }

    fn tool_start(&mut self, index: u32, tool: WireToolStart, out: &mut Vec<StreamEvent>) {
        let name = tool.name.map(Cow::into_owned).unwrap_or_default();
        if self.info.structured_output_tool.as_deref() == Some(name.as_str()) {
            self.ensure(index, Open::Answer, PartKind::Text, out);
            return;
        }
        self.tool_calls = true;
        let id = tool.tool_use_id.map(Cow::into_owned).unwrap_or_default();
        let kind = PartKind::ToolCall {
            id,
            name,
            signature: None,
        };
        self.ensure(index, Open::ToolCall, kind, out);
    }

    fn delta(&mut self, index: u32, d: WireDelta, out: &mut Vec<StreamEvent>) {
        if let Some(text) = d.text {
            self.ensure(index, Open::Text, PartKind::Text, out);
            if !text.is_empty() {
                out.push(StreamEvent::TextDelta {
                    index,
                    text: text.into_owned(),
                });
            }
        }
        if let Some(json) = d.tool_use.and_then(|t| t.input) {
            match self.open {
                Some((i, Open::Answer)) if i == index => out.push(StreamEvent::TextDelta {
                    index,
                    text: json.into_owned(),
                }),
                Some((i, Open::ToolCall)) if i == index => out.push(StreamEvent::ToolArgsDelta {
                    index,
                    json: json.into_owned(),
                }),
                // Input for a tool whose start never came has no call to belong to.
                _ => {}
            }
        }
        if let Some(r) = d.reasoning_content {
            self.reasoning_delta(index, r, out);
        }
    }

    fn reasoning_delta(&mut self, index: u32, r: WireReasoningDelta, out: &mut Vec<StreamEvent>) {
        if let Some(data) = r.redacted_content {
            let kind = PartKind::RedactedReasoning {
                data: data.into_owned(),
            };
            self.ensure(index, Open::RedactedReasoning, kind, out);
            return;
        }
        if r.text.is_some() || r.signature.is_some() {
            self.ensure(index, Open::Reasoning, PartKind::Reasoning, out);
        }
        if let Some(text) = r.text.filter(|t| !t.is_empty()) {
            out.push(StreamEvent::ReasoningDelta {
                index,
                text: text.into_owned(),
            });
        }
        if let Some(signature) = r.signature.filter(|s| !s.is_empty()) {
            out.push(StreamEvent::SignatureDelta {
                index,
                signature: signature.into_owned(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::chat::{FinishReason, Usage};

    fn run(d: &mut StreamDecoder, events: &[(&str, &str)]) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        for (name, data) in events {
            d.feed(Some(name), data.as_bytes(), &mut out).unwrap();
        }
        out
    }

    #[test]
    fn text_then_a_tool_call() {
        let mut d = StreamDecoder::new(&EncodeInfo::default());
        let evs = run(
            &mut d,
            &[
                ("messageStart", r#"{"p":"abc","role":"assistant"}"#),
                (
                    "contentBlockDelta",
                    r#"{"contentBlockIndex":0,"delta":{"text":"Hel"},"p":"x"}"#,
                ),
                (
                    "contentBlockDelta",
                    r#"{"contentBlockIndex":0,"delta":{"text":"lo"}}"#,
                ),
                ("contentBlockStop", r#"{"contentBlockIndex":0}"#),
                (
                    "contentBlockStart",
                    r#"{"contentBlockIndex":1,"start":{"toolUse":{"toolUseId":"tooluse_1","name":"f"}}}"#,
                ),
                (
                    "contentBlockDelta",
                    r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"{\"a\":"}}}"#,
                ),
                (
                    "contentBlockDelta",
                    r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"1}"}}}"#,
                ),
                ("contentBlockStop", r#"{"contentBlockIndex":1}"#),
                ("messageStop", r#"{"stopReason":"tool_use"}"#),
            ],
        );
        assert!(!d.is_complete() && d.finish().is_ok());
        let tail = run(
            &mut d,
            &[(
                "metadata",
                r#"{"usage":{"inputTokens":7,"outputTokens":3,"totalTokens":20,"cacheReadInputTokens":10},"metrics":{"latencyMs":5}}"#,
            )],
        );
        assert!(d.is_complete());
        assert_eq!(
            evs,
            [
                StreamEvent::MessageStart {
                    id: String::new(),
                    model: String::new(),
                    usage: Usage::default()
                },
                StreamEvent::PartStart {
                    index: 0,
                    kind: PartKind::Text
                },
                StreamEvent::TextDelta {
                    index: 0,
                    text: "Hel".into()
                },
                StreamEvent::TextDelta {
                    index: 0,
                    text: "lo".into()
                },
                StreamEvent::PartStop { index: 0 },
                StreamEvent::PartStart {
                    index: 1,
                    kind: PartKind::ToolCall {
                        id: "tooluse_1".into(),
                        name: "f".into(),
                        signature: None,
                    }
                },
                StreamEvent::ToolArgsDelta {
                    index: 1,
                    json: "{\"a\":".into()
                },
                StreamEvent::ToolArgsDelta {
                    index: 1,
                    json: "1}".into()
                },
                StreamEvent::PartStop { index: 1 },
                StreamEvent::Finish(FinishReason::ToolCalls),
            ]
        );
        assert_eq!(
            tail,
            [StreamEvent::Usage(Usage {
                input_tokens: 17,
                output_tokens: 3,
                cache_read_tokens: 10,
                ..Usage::default()
            })]
        );
    }

    #[test]
    fn reasoning_with_signature_and_redacted() {
        let mut d = StreamDecoder::new(&EncodeInfo::default());
        let evs = run(
            &mut d,
            &[
                (
                    "contentBlockDelta",
                    r#"{"contentBlockIndex":0,"delta":{"reasoningContent":{"text":"hmm"}}}"#,
                ),
                (
                    "contentBlockDelta",
                    r#"{"contentBlockIndex":0,"delta":{"reasoningContent":{"signature":"sig"}}}"#,
                ),
                ("contentBlockStop", r#"{"contentBlockIndex":0}"#),
                (
                    "contentBlockDelta",
                    r#"{"contentBlockIndex":1,"delta":{"reasoningContent":{"redactedContent":"ZW5j"}}}"#,
                ),
                ("contentBlockStop", r#"{"contentBlockIndex":1}"#),
                (
                    "contentBlockDelta",
                    r#"{"contentBlockIndex":2,"delta":{"text":"a"}}"#,
                ),
                ("messageStop", r#"{"stopReason":"end_turn"}"#),
            ],
        );
        assert_eq!(
            evs,
            [
                StreamEvent::PartStart {
                    index: 0,
                    kind: PartKind::Reasoning
                },
                StreamEvent::ReasoningDelta {
                    index: 0,
                    text: "hmm".into()
                },
                StreamEvent::SignatureDelta {
                    index: 0,
                    signature: "sig".into()
                },
                StreamEvent::PartStop { index: 0 },
                StreamEvent::PartStart {
                    index: 1,
                    kind: PartKind::RedactedReasoning {
                        data: "ZW5j".into()
                    }
                },
                StreamEvent::PartStop { index: 1 },
                StreamEvent::PartStart {
                    index: 2,
                    kind: PartKind::Text
                },
                StreamEvent::TextDelta {
                    index: 2,
                    text: "a".into()
                },
                StreamEvent::PartStop { index: 2 },
                StreamEvent::Finish(FinishReason::Stop),
            ]
        );
    }

    #[test]
    fn a_structured_answer_streams_as_text() {
        let info = EncodeInfo {
            structured_output_tool: Some("answer".into()),
            ..EncodeInfo::default()
        };
        let mut d = StreamDecoder::new(&info);
        let evs = run(
            &mut d,
            &[
                (
                    "contentBlockStart",
                    r#"{"contentBlockIndex":0,"start":{"toolUse":{"toolUseId":"t","name":"answer"}}}"#,
                ),
                (
                    "contentBlockDelta",
                    r#"{"contentBlockIndex":0,"delta":{"toolUse":{"input":"{}"}}}"#,
                ),
                ("messageStop", r#"{"stopReason":"tool_use"}"#),
            ],
        );
        assert_eq!(
            evs[1],
            StreamEvent::TextDelta {
                index: 0,
                text: "{}".into()
            }
        );
        assert_eq!(evs.last(), Some(&StreamEvent::Finish(FinishReason::Stop)));
    }

    #[test]
    fn exceptions_and_bad_events() {
        let mut d = StreamDecoder::new(&EncodeInfo::default());
        let e = d.exception(
            "modelStreamErrorException",
            br#"{"message":"boom","originalStatusCode":500,"originalMessage":"inner"}"#,
        );
        assert_eq!(e.status, 502);
        assert_eq!(e.error_type, "modelStreamErrorException");
        assert_eq!(e.message, "boom (the model answered 500: inner)");
        assert!(d.is_complete());
        let mut d = StreamDecoder::new(&EncodeInfo::default());
        let e = d.exception("throttlingException", b"");
        assert_eq!(e.status, 429);
        assert!(e.message.contains("throttlingException"));
        let mut d = StreamDecoder::new(&EncodeInfo::default());
        let mut out = Vec::new();
        let e = d.feed(Some("messageStart"), b"{", &mut out).unwrap_err();
        assert_eq!((e.status, e.code), (502, "upstream_invalid_stream"));
        assert_eq!(d.finish().unwrap_err().code, "upstream_stream_incomplete");
        d.feed(Some("futureEvent"), b"{}", &mut out).unwrap();
        assert!(out.is_empty());
    }
}

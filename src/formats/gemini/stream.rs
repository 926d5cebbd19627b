//! Gemini streams (`streamGenerateContent?alt=sse`): each SSE `data:` is a whole
//! `GenerateContentResponse` chunk, and there is no terminator: the stream ends at the end of the
//! body, complete when its last chunk carried a `finishReason`. A provider's chunks into neutral
//! events, and neutral events into chunks for a Gemini client.

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::response::{
    answer_part, blocked_prompt, out_parts, OutCandidate, OutContent, OutResponse, WireResponse,
};
use super::{
    error_event, error_type_for_status, finish_reason_from, finish_reason_str, status_of_name,
    OutUsage,
};
use crate::formats::chat::{FinishReason, Part, PartKind, StreamError, StreamEvent, Usage};
use crate::formats::json::{sse_begin, sse_end, write_value};
use crate::formats::FormatError;

#[derive(Clone, Copy, PartialEq, Eq)]
enum OpenKind {
    Text,
    Reasoning,
}

/// Reads a provider's chunks into neutral events. Parts are numbered in the order they appear;
/// text and thought text stay one part while they continue, a function call is a whole part of
/// its own (Gemini sends its arguments at once).
#[derive(Default)]
pub struct StreamDecoder {
    started: bool,
    next_part: u32,
    open: Option<(u32, OpenKind)>,
    calls: bool,
    /// The last chunk with a candidate carried a `finishReason`.
    finished: bool,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A Gemini stream has no terminator event: it is never complete before the body ends.
    pub fn is_complete(&self) -> bool {
        false
    }

    /// At the end of the provider's body: complete when the last chunk with a candidate carried
    /// a `finishReason`.
    pub fn finish(&self) -> Result<(), FormatError> {
        FormatError::stream_end(self.finished, "a chunk with a finishReason")
    }

    /// Feed one SSE event's `data:` payload (Gemini's events are unnamed).
    pub fn feed(
        &mut self,
        _event: Option<&str>,
        data: &[u8],
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), FormatError> {
        let data = data.trim_ascii();
        if data.is_empty() {
            return Ok(());
        }
        let chunk: WireResponse = serde_json::from_slice(data)
            .map_err(|e| FormatError::invalid_event("stream chunk", e))?;
        if let Some(e) = chunk.error {
            let status = e
                .code
                .filter(|c| (400..600).contains(c))
                .or_else(|| e.status.as_deref().map(status_of_name))
                .unwrap_or(500);
            out.push(StreamEvent::Error(StreamError {
                status,
                error_type: error_type_for_status(status).to_owned(),
                message: e
                    .message
                    .map(Cow::into_owned)
                    .unwrap_or_else(|| "the provider reported an error".to_owned()),
            }));
            return Ok(());
        }
        let usage = chunk.usage_metadata.map(|u| u.to_neutral());
        if !self.started {
            self.started = true;
            out.push(StreamEvent::MessageStart {
                id: chunk.response_id.as_deref().unwrap_or_default().to_owned(),
                model: chunk
                    .model_version
                    .as_deref()
                    .unwrap_or_default()
                    .to_owned(),
                usage: Usage {
                    input_tokens: usage.map_or(0, |u| u.input_tokens),
                    cache_read_tokens: usage.map_or(0, |u| u.cache_read_tokens),
                    ..Usage::default()
                },
            });
        }
        match chunk.first() {
            Some(c) => {
                for raw in c.content.iter().flat_map(|c| &c.parts) {
                    self.part(raw, out)?;
                }
                match c.finish_reason.as_deref() {
                    Some(r) => {
                        self.close(out);
                        out.push(StreamEvent::Finish(finish_reason_from(r, self.calls)));
                        self.finished = true;
                    }
                    None => self.finished = false,
                }
            }
            None => {
                let block = chunk
                    .prompt_feedback
                    .as_ref()
                    .and_then(|f| f.block_reason.as_deref());
                if let Some(reason) = block {
                    let e = blocked_prompt(reason);
                    out.push(StreamEvent::Error(StreamError {
                        status: e.status,
                        error_type: error_type_for_status(e.status).to_owned(),
                        message: e.message.into_owned(),
                    }));
                    return Ok(());
                }
            }
        }
        if let Some(u) = usage {
            out.push(StreamEvent::Usage(u));
        }
        Ok(())
    }

    fn part(&mut self, raw: &RawValue, out: &mut Vec<StreamEvent>) -> Result<(), FormatError> {
        let part = answer_part(raw)
            .map_err(|e| FormatError::upstream("upstream_invalid_stream", e.message))?;
        match part {
            None => {}
            Some(Part::Text { text, .. }) => {
                let index = self.ensure(OpenKind::Text, out);
                out.push(StreamEvent::TextDelta { index, text });
            }
            Some(Part::Reasoning { text, signature }) => {
                let index = self.ensure(OpenKind::Reasoning, out);
                if !text.is_empty() {
                    out.push(StreamEvent::ReasoningDelta { index, text });
                }
                if let Some(signature) = signature.filter(|s| !s.is_empty()) {
                    out.push(StreamEvent::SignatureDelta { index, signature });
                }
            }
            Some(Part::ToolCall {
                id,
                name,
                arguments_json,
                signature,
                ..
            }) => {
                self.close(out);
                self.calls = true;
                let index = self.next_index();
                out.push(StreamEvent::PartStart {
                    index,
                    kind: PartKind::ToolCall {
                        id,
                        name,
                        signature,
                    },
                });
                out.push(StreamEvent::ToolArgsDelta {
                    index,
                    json: arguments_json,
                });
                out.push(StreamEvent::PartStop { index });
            }
            // Images and other parts have no neutral stream form.
            Some(_) => {}
        }
        Ok(())
    }

    fn next_index(&mut self) -> u32 {
        let index = self.next_part;
        self.next_part += 1;
        index
    }

    /// The index of the open part of `kind`, starting one (and stopping another) if needed.
    fn ensure(&mut self, kind: OpenKind, out: &mut Vec<StreamEvent>) -> u32 {
        if let Some((index, k)) = self.open {
            if k == kind {
                return index;
            }
        }
        self.close(out);
        let index = self.next_index();
        out.push(StreamEvent::PartStart {
            index,
            kind: match kind {
                OpenKind::Text => PartKind::Text,
                OpenKind::Reasoning => PartKind::Reasoning,
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

/// A tool call being streamed to a Gemini client: sent whole when its part stops.
struct PendingCall {
    index: u32,
    name: String,
    signature: Option<String>,
    args: String,
}

/// Writes neutral events as Gemini chunks for a client: one chunk per text or thought delta, a
/// function call whole when its part stops, and on [`StreamEncoder::finish`] a last chunk with
/// the `finishReason` and `usageMetadata`. Nothing ends the stream but its end.
pub struct StreamEncoder {
    model: String,
    id: String,
    call: Option<PendingCall>,
    finish: Option<FinishReason>,
    usage: Usage,
    done: bool,
}

impl StreamEncoder {
    pub fn new(client_model: &str) -> Self {
        StreamEncoder {
            model: client_model.to_owned(),
            id: String::new(),
            call: None,
            finish: None,
            usage: Usage::default(),
            done: false,
        }
    }

    pub fn encode(&mut self, ev: &StreamEvent, out: &mut Vec<u8>) {
        match ev {
            StreamEvent::MessageStart { id, usage, .. } => {
                self.id.clone_from(id);
                self.usage = *usage;
            }
            StreamEvent::PartStart {
                index,
                kind: PartKind::ToolCall {
                    name, signature, ..
                },
            } => {
                self.flush_call(out);
                self.call = Some(PendingCall {
                    index: *index,
                    name: name.clone(),
                    signature: signature.clone(),
                    args: String::new(),
                });
            }
            StreamEvent::ToolArgsDelta { index, json } => {
                if let Some(c) = self.call.as_mut().filter(|c| c.index == *index) {
                    c.args.push_str(json);
                }
            }
            StreamEvent::PartStop { index }
                if self.call.as_ref().is_some_and(|c| c.index == *index) =>
            {
                self.flush_call(out);
            }
            StreamEvent::TextDelta { text, .. } if !text.is_empty() => {
                self.chunk(&[Part::text(text.as_str())], None, out);
            }
            StreamEvent::ReasoningDelta { text, .. } if !text.is_empty() => {
                let part = Part::Reasoning {
                    text: text.clone(),
                    signature: None,
                };
                self.chunk(&[part], None, out);
            }
            StreamEvent::SignatureDelta { signature, .. } => {
                let part = Part::Reasoning {
                    text: String::new(),
                    signature: Some(signature.clone()),
                };
                self.chunk(&[part], None, out);
            }
            StreamEvent::Usage(u) => self.usage = *u,
            StreamEvent::Finish(r) => self.finish = Some(r.clone()),
            StreamEvent::Error(e) => self.error(e, out),
            StreamEvent::Ping => out.extend_from_slice(b": keep-alive\n\n"),
            _ => {}
        }
    }

    /// The last chunk: the finish reason (`STOP` when none came) and the usage.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.flush_call(out);
        let finish = self.finish.take().unwrap_or_default();
        self.chunk(&[], Some(finish_reason_str(&finish)), out);
        self.done = true;
    }

    /// An error event: `data: {"error":{"code","message","status"}}`.
    pub fn error(&mut self, e: &StreamError, out: &mut Vec<u8>) {
        error_event(e.status, &e.message, None, out);
    }

    fn flush_call(&mut self, out: &mut Vec<u8>) {
        if let Some(c) = self.call.take() {
            let part = Part::ToolCall {
                id: String::new(),
                name: c.name,
                arguments_json: c.args,
                cache_control: None,
                signature: c.signature,
            };
            self.chunk(&[part], None, out);
        }
    }

    fn chunk(&self, parts: &[Part], finish: Option<&'static str>, out: &mut Vec<u8>) {
        let wire = OutResponse {
            candidates: [OutCandidate {
                content: OutContent {
                    role: "model",
                    parts: out_parts(parts),
                },
                finish_reason: finish,
                index: 0,
            }],
            usage_metadata: finish.map(|_| OutUsage::from_neutral(&self.usage)),
            model_version: &self.model,
            response_id: &self.id,
        };
        sse_begin(out, None);
        write_value(out, &wire);
        sse_end(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(d: &mut StreamDecoder, data: &str) -> Vec<StreamEvent> {
        let mut evs = Vec::new();
        d.feed(None, data.as_bytes(), &mut evs).unwrap();
        evs
    }

    #[test]
    fn complete_only_after_a_finish_reason() {
        let mut d = StreamDecoder::new();
        feed(
            &mut d,
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hi"}]},"index":0}],"responseId":"r1","modelVersion":"gemini-x"}"#,
        );
        assert_eq!(d.finish().unwrap_err().code, "upstream_stream_incomplete");
        let evs = feed(
            &mut d,
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"!"}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":2}}"#,
        );
        assert!(d.finish().is_ok() && !d.is_complete());
        assert_eq!(
            evs,
            [
                StreamEvent::TextDelta {
                    index: 0,
                    text: "!".into()
                },
                StreamEvent::PartStop { index: 0 },
                StreamEvent::Finish(FinishReason::Stop),
                StreamEvent::Usage(Usage {
                    input_tokens: 3,
                    output_tokens: 2,
                    ..Usage::default()
                }),
            ]
        );
        // A usage-only chunk after the finish keeps the stream complete.
        feed(
            &mut d,
            r#"{"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":2}}"#,
        );
        assert!(d.finish().is_ok());
    }

    #[test]
    fn calls_are_whole_parts_and_errors_and_blocks_are_errors() {
        let mut d = StreamDecoder::new();
        let evs = feed(
            &mut d,
            r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{"x":1}},"thoughtSignature":"sig"}]},"finishReason":"STOP"}]}"#,
        );
        assert!(
            matches!(&evs[1], StreamEvent::PartStart { kind: PartKind::ToolCall { name, signature: Some(s), .. }, .. } if name == "f" && s == "sig")
        );
        assert_eq!(
            evs[2],
            StreamEvent::ToolArgsDelta {
                index: 0,
                json: r#"{"x":1}"#.into()
            }
        );
        assert_eq!(evs[4], StreamEvent::Finish(FinishReason::ToolCalls));
        let mut d = StreamDecoder::new();
        let evs = feed(
            &mut d,
            r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#,
        );
        assert!(
            matches!(&evs[0], StreamEvent::Error(e) if e.status == 503 && e.message == "The model is overloaded.")
        );
        let mut d = StreamDecoder::new();
        let evs = feed(
            &mut d,
            r#"{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"}}"#,
        );
        assert!(matches!(&evs[1], StreamEvent::Error(e) if e.status == 400));
        let mut d = StreamDecoder::new();
        assert_eq!(
            d.feed(None, b"{", &mut Vec::new()).unwrap_err().code,
            "upstream_invalid_stream"
        );
    }
}

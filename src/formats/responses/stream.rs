//! OpenAI Responses streams: neutral events into the Responses API's exact event sequence for a
//! client, a provider's Responses events into neutral events, and the [`StreamWatch`] with which
//! the gateway ends a Responses stream it only forwards.

use std::borrow::Cow;

use serde::Deserialize;

use super::reasoning_state::ReasoningState;
use super::response::{WireIncomplete, WireOutputItem};
use super::{
    failure_code, finish_of, write_event, write_failure, write_function_call_item,
    write_message_item, write_output_text, write_reasoning_item, write_response,
    write_summary_text, Failure, Head, Outcome, State, WireUsage, FUNCTION_CALL_ID_PREFIX,
    MESSAGE_ID_PREFIX, REASONING_ID_PREFIX, RESPONSE_ID_PREFIX,
};
use crate::formats::chat::{
    client_tool_call_id, FinishReason, PartKind, StreamError, StreamEvent, Usage,
};
use crate::formats::json::write_u64;
use crate::formats::json::{stream_event, write_str};
use crate::formats::{restyle_id, FormatError};

/// Most bytes of output one streamed answer may accumulate (the text, arguments and reasoning
/// that `response.completed` repeats whole): as much as a whole answer may hold. Past it the
/// stream ends with `response.failed`.
pub const STREAM_OUTPUT_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The keep-alive the encoder writes for a provider's: an SSE comment, ignored by clients.
const KEEPALIVE_EVENT: &[u8] = b": keep-alive\n\n";

/// What kind of output item is open.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ItemKind {
    Message,
    FunctionCall {
        call_id: String,
        name: String,
    },
    Reasoning,
    /// Redacted reasoning, for a client that asked for the reasoning state: an item with an
    /// empty summary and the data in its `encrypted_content`.
    Redacted {
        data: String,
    },
    /// A part with no Responses form (redacted reasoning, for a client that did not ask for the
    /// reasoning state): its events are dropped.
    Skipped,
}

/// The output item being streamed.
struct OpenItem {
    /// The neutral part it carries.
    part: u32,
    kind: ItemKind,
    id: String,
    /// Its text, arguments or reasoning so far.
    text: String,
    /// A reasoning part's signature so far.
    signature: String,
}

/// Writes neutral events as the Responses API's event sequence: `response.created` and
/// `response.in_progress`; per part `response.output_item.added`, then for text
/// `response.content_part.added`, `response.output_text.delta`s, `response.output_text.done`,
/// `response.content_part.done`; for a tool call `response.function_call_arguments.delta`s and
/// `.done`; for reasoning `response.reasoning_summary_part.added`,
/// `response.reasoning_summary_text.delta`s, `.done` and `response.reasoning_summary_part.done`
/// (none of them for reasoning without text); then `response.output_item.done` with the whole
/// item; and at [`StreamEncoder::finish`] `response.completed` (or `response.incomplete`) with
/// every item and the usage. Every event carries `sequence_number`, counting from 0. Output
/// items count from 0 in the order parts start; each text part is a message of its own. With
/// `reasoning_state` (the client asked for `reasoning.encrypted_content`) a reasoning item's
/// signature, and redacted reasoning as an item of its own, go in the item's
/// `encrypted_content` in `response.output_item.done` and `response.completed`.
pub struct StreamEncoder {
    head: Head,
    reasoning_state: bool,
    started: bool,
    seq: u64,
    open: Option<OpenItem>,
    /// The items done so far, comma-separated JSON (for `response.completed`).
    items: Vec<u8>,
    item_count: usize,
    usage: Usage,
    finish: Option<FinishReason>,
    done: bool,
}

impl StreamEncoder {
    /// `created_at`: the Unix time the `response` carries; `reasoning_state`: reasoning items
    /// carry the provider's opaque state (see the type's header).
    pub fn new(client_model: &str, created_at: u64, reasoning_state: bool) -> Self {
        StreamEncoder {
            head: Head {
                id: String::new(),
                model: client_model.to_owned(),
                created_at,
            },
            reasoning_state,
            started: false,
            seq: 0,
            open: None,
            items: Vec::new(),
            item_count: 0,
            usage: Usage::default(),
            finish: None,
            done: false,
        }
    }

    /// Append the events for one neutral event (nothing for those that wait for `finish`).
    pub fn encode(&mut self, ev: &StreamEvent, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        match ev {
            StreamEvent::MessageStart { id, usage, .. } => {
                self.start(id, out);
                if *usage != Usage::default() {
                    self.usage = *usage;
                }
            }
            StreamEvent::Usage(u) => self.usage = *u,
            StreamEvent::Finish(r) => self.finish = Some(r.clone()),
            StreamEvent::Ping => out.extend_from_slice(KEEPALIVE_EVENT),
            StreamEvent::Error(e) => self.error(e, out),
            StreamEvent::SignatureDelta { index, signature } => {
                let reasoning = self
                    .open
                    .as_ref()
                    .is_some_and(|o| o.part == *index && o.kind == ItemKind::Reasoning);
                if reasoning && self.holds(signature.len(), out) {
                    if let Some(item) = self.open.as_mut() {
                        item.signature.push_str(signature);
                    }
                }
            }
            StreamEvent::PartStart { index, kind } => {
                self.start("", out);
                self.open_item(*index, kind, out);
            }
            StreamEvent::TextDelta { index, text } => self.delta(*index, text, out),
            StreamEvent::ToolArgsDelta { index, json } => self.delta(*index, json, out),
            StreamEvent::ReasoningDelta { index, text } => self.delta(*index, text, out),
            StreamEvent::PartStop { index } => {
                if self.open.as_ref().is_some_and(|o| o.part == *index) {
                    self.close_item(out);
                }
            }
        }
    }

    /// The end of the stream: the open item closed, then `response.completed` (or
    /// `response.incomplete` for a token limit or a content filter) with every item and the
    /// usage.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.start("", out);
        self.close_item(out);
        let outcome = Outcome::of(self.finish.as_ref().unwrap_or(&FinishReason::Stop));
        let ty = match outcome {
            Outcome::Completed => "response.completed",
            Outcome::Incomplete(_) => "response.incomplete",
        };
        let seq = self.next_seq();
        let (head, items, usage) = (&self.head, &self.items, &self.usage);
        write_event(out, ty, seq, |o| {
            o.extend_from_slice(b",\"response\":");
            write_response(o, head, State::Ended(outcome), items, Some(usage));
        });
        self.done = true;
    }

    /// A provider's error mid-stream: the `error` event and `response.failed` (with the items
    /// done so far); nothing follows.
    pub fn error(&mut self, e: &StreamError, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.start("", out);
        let code = failure_code(e.status, None);
        let failure = Failure {
            error_type: &e.error_type,
            message: &e.message,
            code,
        };
        self.seq = write_failure(
            out,
            &self.head,
            self.seq,
            failure,
            &self.items,
            Some(&self.usage),
        );
        self.done = true;
    }

    /// Whether `more` bytes can be held for the final events within
    /// [`STREAM_OUTPUT_BYTES_MAX`]; if not, the stream ends with `response.failed`.
    fn holds(&mut self, more: usize, out: &mut Vec<u8>) -> bool {
        let open = self
            .open
            .as_ref()
            .map_or(0, |o| o.text.len() + o.signature.len());
        if self.items.len() + open + more <= STREAM_OUTPUT_BYTES_MAX {
            return true;
        }
        let e = StreamError {
            status: 502,
            error_type: "upstream_error".to_owned(),
            message: format!(
                "the answer is longer than {STREAM_OUTPUT_BYTES_MAX} bytes, the most the gateway streams in the Responses API"
            ),
        };
        self.error(&e, out);
        false
    }

    fn next_seq(&mut self) -> u64 {
        let seq = self.seq;
        self.seq += 1;
        seq
    }

    /// `response.created` and `response.in_progress`, once.
    fn start(&mut self, id: &str, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        self.head.id = restyle_id(id, RESPONSE_ID_PREFIX);
        for ty in ["response.created", "response.in_progress"] {
            let seq = self.next_seq();
            let head = &self.head;
            write_event(out, ty, seq, |o| {
                o.extend_from_slice(b",\"response\":");
                write_response(o, head, State::InProgress, b"", None);
            });
        }
    }

    fn open_item(&mut self, part: u32, kind: &PartKind, out: &mut Vec<u8>) {
        self.close_item(out);
        let index = self.item_count;
        let (kind, id) = match kind {
            PartKind::Text => (
                ItemKind::Message,
                self.head.item_id(MESSAGE_ID_PREFIX, index),
            ),
            PartKind::ToolCall {
                id,
                name,
                signature,
            } => (
                ItemKind::FunctionCall {
                    call_id: client_tool_call_id(id, signature.as_deref()),
                    name: name.clone(),
                },
                self.head.item_id(FUNCTION_CALL_ID_PREFIX, index),
            ),
            PartKind::Reasoning => (
                ItemKind::Reasoning,
                self.head.item_id(REASONING_ID_PREFIX, index),
            ),
            PartKind::RedactedReasoning { data } if self.reasoning_state => (
                ItemKind::Redacted { data: data.clone() },
                self.head.item_id(REASONING_ID_PREFIX, index),
            ),
            PartKind::RedactedReasoning { .. } => (ItemKind::Skipped, String::new()),
        };
        let item = OpenItem {
            part,
            kind,
            id,
            text: String::new(),
            signature: String::new(),
        };
        if item.kind != ItemKind::Skipped {
            self.item_count += 1;
            let seq = self.next_seq();
            write_event(out, "response.output_item.added", seq, |o| {
                o.extend_from_slice(b",\"output_index\":");
                write_u64(o, index as u64);
                o.extend_from_slice(b",\"item\":");
                write_item(o, &item, "in_progress", false);
            });
            if item.kind == ItemKind::Message {
                let seq = self.next_seq();
                write_event(out, "response.content_part.added", seq, |o| {
                    item_fields(o, &item.id, index, Some(0));
                    o.extend_from_slice(b",\"part\":");
                    write_output_text(o, "");
                });
            }
            // A reasoning item's summary part is added with its first text: reasoning without
            // text (only a signature) has an empty summary.
        }
        self.open = Some(item);
    }

    /// A delta of part `part`: for the open item, else (a provider that sent none) for a new
    /// message item.
    fn delta(&mut self, part: u32, text: &str, out: &mut Vec<u8>) {
        if text.is_empty() {
            return;
        }
        if self.open.as_ref().is_none_or(|o| o.part != part) {
            self.start("", out);
            self.open_item(part, &PartKind::Text, out);
        }
        if !self.holds(text.len(), out) {
            return;
        }
        let index = self.item_count.saturating_sub(1);
        let (ty, content_index, summary_index) = match self.open.as_ref().map(|o| &o.kind) {
            Some(ItemKind::Message) => ("response.output_text.delta", Some(0), false),
            Some(ItemKind::FunctionCall { .. }) => {
                ("response.function_call_arguments.delta", None, false)
            }
            Some(ItemKind::Reasoning) => ("response.reasoning_summary_text.delta", None, true),
            Some(ItemKind::Redacted { .. } | ItemKind::Skipped) | None => return,
        };
        if summary_index && self.open.as_ref().is_some_and(|o| o.text.is_empty()) {
            let seq = self.next_seq();
            if let Some(item) = self.open.as_ref() {
                write_event(out, "response.reasoning_summary_part.added", seq, |o| {
                    item_fields(o, &item.id, index, None);
                    o.extend_from_slice(b",\"summary_index\":0,\"part\":");
                    write_summary_text(o, "");
                });
            }
        }
        let seq = self.next_seq();
        let Some(item) = self.open.as_mut() else {
            return;
        };
        item.text.push_str(text);
        write_event(out, ty, seq, |o| {
            item_fields(o, &item.id, index, content_index);
            if summary_index {
                o.extend_from_slice(b",\"summary_index\":0");
            }
            o.extend_from_slice(b",\"delta\":");
            write_str(o, text);
            if content_index.is_some() {
                o.extend_from_slice(b",\"logprobs\":[]");
            }
        });
    }

    /// The done events of the open item, which then joins the output.
    fn close_item(&mut self, out: &mut Vec<u8>) {
        let Some(item) = self.open.take() else {
            return;
        };
        if item.kind == ItemKind::Skipped {
            return;
        }
        let index = self.item_count - 1;
        match &item.kind {
            ItemKind::Message => {
                let seq = self.next_seq();
                write_event(out, "response.output_text.done", seq, |o| {
                    item_fields(o, &item.id, index, Some(0));
                    o.extend_from_slice(b",\"text\":");
                    write_str(o, &item.text);
                    o.extend_from_slice(b",\"logprobs\":[]");
                });
                let seq = self.next_seq();
                write_event(out, "response.content_part.done", seq, |o| {
                    item_fields(o, &item.id, index, Some(0));
                    o.extend_from_slice(b",\"part\":");
                    write_output_text(o, &item.text);
                });
            }
            ItemKind::FunctionCall { name, .. } => {
                let seq = self.next_seq();
                write_event(out, "response.function_call_arguments.done", seq, |o| {
                    item_fields(o, &item.id, index, None);
                    o.extend_from_slice(b",\"name\":");
                    write_str(o, name);
                    o.extend_from_slice(b",\"arguments\":");
                    write_str(o, &item.text);
                });
            }
            ItemKind::Reasoning if !item.text.is_empty() => {
                let seq = self.next_seq();
                write_event(out, "response.reasoning_summary_text.done", seq, |o| {
                    item_fields(o, &item.id, index, None);
                    o.extend_from_slice(b",\"summary_index\":0,\"text\":");
                    write_str(o, &item.text);
                });
                let seq = self.next_seq();
                write_event(out, "response.reasoning_summary_part.done", seq, |o| {
                    item_fields(o, &item.id, index, None);
                    o.extend_from_slice(b",\"summary_index\":0,\"part\":");
                    write_summary_text(o, &item.text);
                });
            }
            ItemKind::Reasoning | ItemKind::Redacted { .. } | ItemKind::Skipped => {}
        }
        let seq = self.next_seq();
        let state = self.reasoning_state;
        write_event(out, "response.output_item.done", seq, |o| {
            o.extend_from_slice(b",\"output_index\":");
            write_u64(o, index as u64);
            o.extend_from_slice(b",\"item\":");
            write_item(o, &item, "completed", state);
        });
        if !self.items.is_empty() {
            self.items.push(b',');
        }
        write_item(&mut self.items, &item, "completed", state);
    }
}

/// `,"item_id":..,"output_index":..` and `,"content_index":..` when given.
fn item_fields(out: &mut Vec<u8>, id: &str, output_index: usize, content_index: Option<u32>) {
    out.extend_from_slice(b",\"item_id\":");
    write_str(out, id);
    out.extend_from_slice(b",\"output_index\":");
    write_u64(out, output_index as u64);
    if let Some(c) = content_index {
        out.extend_from_slice(b",\"content_index\":");
        write_u64(out, c.into());
    }
}

/// The item as `output_item.added` (`status` `in_progress`: no content yet) or `.done` shows
/// it; `reasoning_state`: a reasoning item done carries the provider's state.
fn write_item(out: &mut Vec<u8>, item: &OpenItem, status: &str, reasoning_state: bool) {
    let whole = status != "in_progress";
    let text = whole.then_some(item.text.as_str());
    let with_state = whole && reasoning_state;
    match &item.kind {
        ItemKind::Message => write_message_item(out, &item.id, status, text),
        ItemKind::FunctionCall { call_id, name } => write_function_call_item(
            out,
            &item.id,
            status,
            call_id,
            name,
            text.unwrap_or_default(),
        ),
        ItemKind::Reasoning => {
            let state = (with_state && !item.signature.is_empty())
                .then(|| ReasoningState::Signature(item.signature.clone()));
            write_reasoning_item(out, &item.id, text, state.as_ref());
        }
        ItemKind::Redacted { data } => {
            let state = with_state.then(|| ReasoningState::Redacted(data.clone()));
            write_reasoning_item(out, &item.id, None, state.as_ref());
        }
        ItemKind::Skipped => {}
    }
}

/// One event of a provider's Responses stream (every kind's fields; `type` says which apply).
#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(rename = "type", borrow, default)]
    ty: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    response: Option<WireStreamResponse<'a>>,
    #[serde(borrow, default)]
    item: Option<WireOutputItem<'a>>,
    #[serde(borrow, default)]
    delta: Option<Cow<'a, str>>,
    #[serde(default)]
    summary_index: Option<u32>,
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    error: Option<WireError<'a>>,
}

#[derive(Deserialize)]
struct WireStreamResponse<'a> {
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
    error: Option<WireError<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireError<'a> {
    #[serde(rename = "type", borrow, default)]
    ty: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

/// The status of a Responses failure code.
fn status_for_code(code: &str) -> u16 {
    match code {
        "rate_limit_exceeded" | "insufficient_quota" => 429,
        "server_error" | "vector_store_timeout" => 500,
        c if c.starts_with("invalid") || c.starts_with("image") || c.contains("too_") => 400,
        _ => 502,
    }
}

/// Reads a provider's Responses events into neutral events: a part per `message` content part,
/// `function_call` item and `reasoning` item, in order (items of hosted tools are skipped). The
/// stream is complete at `response.completed`, `response.incomplete` or `response.failed`.
#[derive(Default)]
pub struct StreamDecoder {
    next_part: u32,
    /// The neutral part open now.
    open: Option<u32>,
    calls: bool,
    done: bool,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a terminating event was seen.
    pub fn is_complete(&self) -> bool {
        self.done
    }

    /// At the end of the provider's stream: an error when no terminating event came.
    pub fn finish(&self) -> Result<(), FormatError> {
        FormatError::stream_end(self.done, "`response.completed`")
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
            "response.created" => {
                let r = ev.response;
                out.push(StreamEvent::MessageStart {
                    id: r
                        .as_ref()
                        .and_then(|r| r.id.as_deref())
                        .unwrap_or("")
                        .to_owned(),
                    model: r
                        .as_ref()
                        .and_then(|r| r.model.as_deref())
                        .unwrap_or("")
                        .to_owned(),
                    usage: Usage::default(),
                });
            }
            "response.output_item.added" => {
                let Some(item) = ev.item else { return Ok(()) };
                match item.ty.as_deref() {
                    Some("function_call") => {
                        self.calls = true;
                        let kind = PartKind::ToolCall {
                            id: item.call_id.as_deref().unwrap_or_default().to_owned(),
                            name: item.name.as_deref().unwrap_or_default().to_owned(),
                            signature: None,
                        };
                        self.open_part(kind, out);
                    }
                    Some("reasoning") => self.open_part(PartKind::Reasoning, out),
                    _ => {}
                }
            }
            "response.content_part.added" => self.open_part(PartKind::Text, out),
            "response.output_text.delta" | "response.refusal.delta" => {
                if let (Some(index), Some(text)) = (self.open, ev.delta) {
                    out.push(StreamEvent::TextDelta {
                        index,
                        text: text.into_owned(),
                    });
                }
            }
            "response.function_call_arguments.delta" => {
                if let (Some(index), Some(json)) = (self.open, ev.delta) {
                    out.push(StreamEvent::ToolArgsDelta {
                        index,
                        json: json.into_owned(),
                    });
                }
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                if let (Some(index), Some(text)) = (self.open, ev.delta) {
                    out.push(StreamEvent::ReasoningDelta {
                        index,
                        text: text.into_owned(),
                    });
                }
            }
            "response.reasoning_summary_part.added" if ev.summary_index.unwrap_or(0) > 0 => {
                if let Some(index) = self.open {
                    out.push(StreamEvent::ReasoningDelta {
                        index,
                        text: "\n\n".to_owned(),
                    });
                }
            }
            "response.output_item.done" => {
                // A reasoning item's signature, in the gateway's envelope, comes whole here.
                let signature = ev
                    .item
                    .and_then(|i| i.encrypted_content)
                    .and_then(|c| super::reasoning_state::decode(&c));
                if let (Some(index), Some(ReasoningState::Signature(signature))) =
                    (self.open, signature)
                {
                    out.push(StreamEvent::SignatureDelta { index, signature });
                }
                self.close_part(out);
            }
            "response.content_part.done" => self.close_part(out),
            "response.completed" | "response.incomplete" => {
                self.close_part(out);
                let r = ev.response;
                let status = r.as_ref().and_then(|r| r.status.as_deref());
                let reason = r
                    .as_ref()
                    .and_then(|r| r.incomplete_details.as_ref())
                    .and_then(|d| d.reason.as_deref());
                let status = status.or(Some(if ty == "response.incomplete" {
                    "incomplete"
                } else {
                    "completed"
                }));
                out.push(StreamEvent::Finish(finish_of(status, reason, self.calls)));
                let usage = r.and_then(|r| r.usage).unwrap_or_default();
                out.push(StreamEvent::Usage(usage.to_neutral()));
                self.done = true;
            }
            "response.failed" | "error" => {
                let nested = ev.error.or_else(|| ev.response.and_then(|r| r.error));
                let code = ev
                    .code
                    .or_else(|| nested.as_ref().and_then(|e| e.code.clone()))
                    .unwrap_or(Cow::Borrowed("server_error"));
                let message = ev
                    .message
                    .or_else(|| nested.as_ref().and_then(|e| e.message.clone()))
                    .unwrap_or_default();
                let error_type = nested.and_then(|e| e.ty).unwrap_or(Cow::Borrowed(&*code));
                out.push(StreamEvent::Error(StreamError {
                    status: status_for_code(&code),
                    error_type: error_type.into_owned(),
                    message: message.into_owned(),
                }));
                self.done = true;
            }
            // Progress of hosted tools, annotations and event types added later.
            _ => {}
        }
        Ok(())
    }

    fn open_part(&mut self, kind: PartKind, out: &mut Vec<StreamEvent>) {
        self.close_part(out);
        let index = self.next_part;
        self.next_part += 1;
        self.open = Some(index);
        out.push(StreamEvent::PartStart { index, kind });
    }

    fn close_part(&mut self, out: &mut Vec<StreamEvent>) {
        if let Some(index) = self.open.take() {
            out.push(StreamEvent::PartStop { index });
        }
    }
}

/// What the gateway learns of a Responses stream it forwards (written by a worker: passed
/// through from OpenAI or encoded from another provider's) so that it can end it with its own
/// failure events: the response's id, model and creation time (from `response.created`) and
/// the number of events so far (the next `sequence_number`).
#[derive(Debug, Default)]
pub struct StreamWatch {
    head: Option<Head>,
    events: u64,
}

impl StreamWatch {
    /// Look at a chunk of whole events on its way to the client.
    pub fn observe(&mut self, chunk: &[u8]) {
        let mut first_data = None;
        let mut at = 0;
        while let Some(found) = find(&chunk[at..], b"data: ") {
            let start = at + found;
            if start == 0 || chunk[start - 1] == b'\n' {
                self.events += 1;
                first_data.get_or_insert(start + b"data: ".len());
            }
            at = start + b"data: ".len();
        }
        if self.head.is_none() {
            if let Some(start) = first_data {
                let end = find(&chunk[start..], b"\n").map_or(chunk.len(), |n| start + n);
                self.head = head_of(&chunk[start..end]);
            }
        }
    }

    /// The events that end the stream with a failure (`error`, `response.failed`), numbered
    /// after the events seen.
    pub fn failure(
        &self,
        status: u16,
        error_type: &str,
        message: &str,
        code: Option<&str>,
        out: &mut Vec<u8>,
    ) {
        let fresh;
        let head = match &self.head {
            Some(head) => head,
            None => {
                fresh = Head {
                    id: restyle_id("", RESPONSE_ID_PREFIX),
                    model: String::new(),
                    created_at: crate::formats::unix_now_s(),
                };
                &fresh
            }
        };
        let code = failure_code(status, code);
        let failure = Failure {
            error_type,
            message,
            code,
        };
        write_failure(out, head, self.events, failure, b"", None);
    }
}

/// The id, model and creation time in a `response.created` event.
fn head_of(data: &[u8]) -> Option<Head> {
    #[derive(Deserialize)]
    struct Created<'a> {
        #[serde(borrow)]
        response: WireStreamResponse<'a>,
    }
    let c: Created = serde_json::from_slice(data).ok()?;
    Some(Head {
        id: c.response.id?.into_owned(),
        model: c.response.model.map(Cow::into_owned).unwrap_or_default(),
        created_at: c.response.created_at.unwrap_or(0.0) as u64,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (event name, JSON) of each SSE event.
    fn events(sse: &[u8]) -> Vec<(String, serde_json::Value)> {
        String::from_utf8(sse.to_vec())
            .unwrap()
            .split("\n\n")
            .filter(|e| !e.is_empty() && !e.starts_with(':'))
            .map(|e| {
                let (name, data) = e.split_once("\ndata: ").unwrap();
                let name = name.strip_prefix("event: ").unwrap().to_owned();
                (name, serde_json::from_str(data).unwrap())
            })
            .collect()
    }

    fn text_stream(finish: FinishReason) -> Vec<u8> {
        let mut e = StreamEncoder::new("m", 5, false);
        let mut out = Vec::new();
        for ev in [
            StreamEvent::MessageStart {
                id: "msg_1".into(),
                model: "up".into(),
                usage: Usage::default(),
            },
            StreamEvent::PartStart {
                index: 0,
                kind: PartKind::Text,
            },
            StreamEvent::TextDelta {
                index: 0,
                text: "Hi ".into(),
            },
            StreamEvent::TextDelta {
                index: 0,
                text: "there".into(),
            },
            StreamEvent::PartStop { index: 0 },
            StreamEvent::Finish(finish),
            StreamEvent::Usage(Usage {
                input_tokens: 3,
                output_tokens: 2,
                ..Usage::default()
            }),
        ] {
            e.encode(&ev, &mut out);
        }
        e.finish(&mut out);
        out
    }

    #[test]
    fn a_text_stream_has_the_reference_sequence() {
        let evs = events(&text_stream(FinishReason::Stop));
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, (name, v)) in evs.iter().enumerate() {
            assert_eq!(v["type"], name.as_str());
            assert_eq!(v["sequence_number"], i as u64);
        }
        assert_eq!(evs[0].1["response"]["id"], "resp_1");
        assert_eq!(evs[0].1["response"]["status"], "in_progress");
        assert_eq!(evs[6].1["text"], "Hi there");
        assert_eq!(evs[8].1["item"]["content"][0]["text"], "Hi there");
        let done = &evs[9].1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"][0]["id"], evs[2].1["item"]["id"]);
        assert_eq!(done["usage"]["total_tokens"], 5);
    }

    #[test]
    fn a_token_limit_ends_incomplete() {
        let evs = events(&text_stream(FinishReason::Length));
        let (name, last) = evs.last().unwrap();
        assert_eq!(name, "response.incomplete");
        assert_eq!(
            last["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );
    }

    #[test]
    fn tool_calls_and_reasoning_stream_as_items() {
        let mut e = StreamEncoder::new("m", 5, false);
        let mut out = Vec::new();
        for ev in [
            StreamEvent::PartStart {
                index: 0,
                kind: PartKind::Reasoning,
            },
            StreamEvent::ReasoningDelta {
                index: 0,
                text: "think".into(),
            },
            StreamEvent::SignatureDelta {
                index: 0,
                signature: "sig".into(),
            },
            StreamEvent::PartStop { index: 0 },
            StreamEvent::PartStart {
                index: 1,
                kind: PartKind::ToolCall {
                    id: "call_9".into(),
                    name: "exec_command".into(),
                    signature: None,
                },
            },
            StreamEvent::ToolArgsDelta {
                index: 1,
                json: "{\"cmd\":".into(),
            },
            StreamEvent::ToolArgsDelta {
                index: 1,
                json: "\"echo hello\"}".into(),
            },
            StreamEvent::PartStop { index: 1 },
            StreamEvent::Finish(FinishReason::ToolCalls),
        ] {
            e.encode(&ev, &mut out);
        }
        e.finish(&mut out);
        let evs = events(&out);
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        assert_eq!(evs[7].1["item"]["summary"][0]["text"], "think");
        assert_eq!(evs[8].1["output_index"], 1);
        assert_eq!(evs[11].1["arguments"], "{\"cmd\":\"echo hello\"}");
        assert_eq!(evs[11].1["name"], "exec_command");
        let call = &evs[12].1["item"];
        assert_eq!(call["call_id"], "call_9");
        assert_eq!(call["status"], "completed");
        let output = evs[13].1["response"]["output"].as_array().unwrap();
        assert_eq!(output.len(), 2);
        assert_eq!(output[1]["arguments"], "{\"cmd\":\"echo hello\"}");
    }

    /// Signed reasoning (`text` may be empty), redacted reasoning, then text, encoded with and
    /// without the reasoning state.
    fn reasoning_stream(text: &str, state: bool) -> Vec<(String, serde_json::Value)> {
        let mut e = StreamEncoder::new("m", 5, state);
        let mut out = Vec::new();
        let mut evs = vec![StreamEvent::PartStart {
            index: 0,
            kind: PartKind::Reasoning,
        }];
        if !text.is_empty() {
            evs.push(StreamEvent::ReasoningDelta {
                index: 0,
                text: text.into(),
            });
        }
        evs.extend([
            StreamEvent::SignatureDelta {
                index: 0,
                signature: "si".into(),
            },
            StreamEvent::SignatureDelta {
                index: 0,
                signature: "g".into(),
            },
            StreamEvent::PartStop { index: 0 },
            StreamEvent::PartStart {
                index: 1,
                kind: PartKind::RedactedReasoning {
                    data: "opaque".into(),
                },
            },
            StreamEvent::PartStop { index: 1 },
            StreamEvent::PartStart {
                index: 2,
                kind: PartKind::Text,
            },
            StreamEvent::TextDelta {
                index: 2,
                text: "hi".into(),
            },
        ]);
        for ev in &evs {
            e.encode(ev, &mut out);
        }
        e.finish(&mut out);
        let evs = events(&out);
        for (i, (_, v)) in evs.iter().enumerate() {
            assert_eq!(v["sequence_number"], i as u64);
        }
        evs
    }

    #[test]
    fn asked_for_reasoning_state_rides_in_the_done_items() {
        let evs = reasoning_stream("think", true);
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names[2..12],
            [
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
            ]
        );
        let state = |item: &serde_json::Value| {
            item["encrypted_content"]
                .as_str()
                .and_then(super::super::reasoning_state::decode)
        };
        assert!(evs[2].1["item"].get("encrypted_content").is_none());
        let signed = &evs[7].1["item"];
        assert_eq!(signed["summary"][0]["text"], "think");
        assert_eq!(state(signed), Some(ReasoningState::Signature("sig".into())));
        let redacted = &evs[9].1["item"];
        assert_eq!(redacted["type"], "reasoning");
        assert_eq!(evs[9].1["output_index"], 1);
        assert_eq!(redacted["summary"], serde_json::json!([]));
        assert_eq!(
            state(redacted),
            Some(ReasoningState::Redacted("opaque".into()))
        );
        let output = &evs.last().unwrap().1["response"]["output"];
        assert_eq!(output.as_array().unwrap().len(), 3);
        assert_eq!(&output[0], signed);
        assert_eq!(&output[1], redacted);
        // Not asked: no state, and the redacted reasoning has no item.
        let evs = reasoning_stream("think", false);
        let output = &evs.last().unwrap().1["response"]["output"];
        assert_eq!(output.as_array().unwrap().len(), 2);
        assert!(output[0].get("encrypted_content").is_none());
    }

    #[test]
    fn reasoning_without_text_has_an_empty_summary() {
        let evs = reasoning_stream("", true);
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert!(!names.iter().any(|n| n.contains("summary")), "{names:?}");
        let item = &evs[3].1["item"];
        assert_eq!(evs[3].0, "response.output_item.done");
        assert_eq!(item["summary"], serde_json::json!([]));
        assert!(item["encrypted_content"].is_string());
    }

    #[test]
    fn errors_end_the_stream_with_failed() {
        let mut e = StreamEncoder::new("m", 5, false);
        let mut out = Vec::new();
        e.encode(
            &StreamEvent::TextDelta {
                index: 0,
                text: "partial".into(),
            },
            &mut out,
        );
        e.encode(
            &StreamEvent::Error(StreamError {
                status: 529,
                error_type: "overloaded_error".into(),
                message: "Overloaded".into(),
            }),
            &mut out,
        );
        e.finish(&mut out);
        let evs = events(&out);
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[names.len() - 2..], ["error", "response.failed"]);
        let failed = &evs.last().unwrap().1;
        assert_eq!(failed["response"]["error"]["code"], "server_error");
        assert_eq!(failed["response"]["error"]["message"], "Overloaded");
        for (i, (_, v)) in evs.iter().enumerate() {
            assert_eq!(v["sequence_number"], i as u64);
        }
    }

    #[test]
    fn redacted_reasoning_is_left_out_and_the_numbering_goes_on() {
        let mut e = StreamEncoder::new("m", 5, false);
        let mut out = Vec::new();
        for ev in [
            StreamEvent::PartStart {
                index: 0,
                kind: PartKind::RedactedReasoning { data: "x".into() },
            },
            StreamEvent::TextDelta {
                index: 0,
                text: "hidden".into(),
            },
            StreamEvent::PartStop { index: 0 },
            StreamEvent::PartStart {
                index: 1,
                kind: PartKind::Text,
            },
            StreamEvent::TextDelta {
                index: 1,
                text: "shown".into(),
            },
        ] {
            e.encode(&ev, &mut out);
        }
        e.finish(&mut out);
        let evs = events(&out);
        for (i, (_, v)) in evs.iter().enumerate() {
            assert_eq!(v["sequence_number"], i as u64);
        }
        let output = &evs.last().unwrap().1["response"]["output"];
        assert_eq!(output.as_array().unwrap().len(), 1);
        assert_eq!(output[0]["content"][0]["text"], "shown");
        assert_eq!(evs[2].1["output_index"], 0);
    }

    #[test]
    fn a_signature_past_the_bound_ends_failed() {
        let mut e = StreamEncoder::new("m", 5, true);
        let mut out = Vec::new();
        e.encode(
            &StreamEvent::PartStart {
                index: 0,
                kind: PartKind::Reasoning,
            },
            &mut out,
        );
        let half = "s".repeat(STREAM_OUTPUT_BYTES_MAX / 2 + 1);
        for _ in 0..2 {
            e.encode(
                &StreamEvent::SignatureDelta {
                    index: 0,
                    signature: half.clone(),
                },
                &mut out,
            );
        }
        e.finish(&mut out);
        let evs = events(&out);
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[names.len() - 2..], ["error", "response.failed"]);
    }

    #[test]
    fn an_answer_past_the_bound_ends_failed() {
        let mut e = StreamEncoder::new("m", 5, false);
        let mut out = Vec::new();
        let long = "x".repeat(STREAM_OUTPUT_BYTES_MAX + 1);
        e.encode(
            &StreamEvent::TextDelta {
                index: 0,
                text: long,
            },
            &mut out,
        );
        e.encode(
            &StreamEvent::TextDelta {
                index: 0,
                text: "more".into(),
            },
            &mut out,
        );
        e.finish(&mut out);
        let evs = events(&out);
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[names.len() - 2..], ["error", "response.failed"]);
        assert!(out.len() < 64 * 1024, "nothing of the answer was written");
    }

    #[test]
    fn streams_round_trip_through_the_decoder() {
        let sse = text_stream(FinishReason::Stop);
        let mut d = StreamDecoder::new();
        let mut neutral = Vec::new();
        for (name, v) in events(&sse) {
            d.feed(Some(&name), v.to_string().as_bytes(), &mut neutral)
                .unwrap();
        }
        assert!(d.is_complete() && d.finish().is_ok());
        let texts: String = neutral
            .iter()
            .filter_map(|e| match e {
                StreamEvent::TextDelta { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(texts, "Hi there");
        assert!(neutral.contains(&StreamEvent::Finish(FinishReason::Stop)));
        let mut d = StreamDecoder::new();
        d.feed(
            None,
            br#"{"type":"response.created","response":{"id":"r"}}"#,
            &mut neutral,
        )
        .unwrap();
        assert_eq!(d.finish().unwrap_err().code, "upstream_stream_incomplete");
    }

    #[test]
    fn the_watch_continues_the_numbering() {
        let sse = text_stream(FinishReason::Stop);
        let cut = sse.len() / 2;
        let cut = cut + find(&sse[cut..], b"\n\n").unwrap() + 2;
        let mut w = StreamWatch::default();
        w.observe(&sse[..cut]);
        let seen = events(&sse[..cut]).len() as u64;
        let mut out = Vec::new();
        w.failure(
            504,
            "upstream_error",
            "stalled",
            Some("stream_idle_timeout"),
            &mut out,
        );
        let evs = events(&out);
        assert_eq!(evs[0].1["sequence_number"], seen);
        assert_eq!(evs[0].1["code"], "stream_idle_timeout");
        assert_eq!(evs[1].1["response"]["id"], "resp_1");
        assert_eq!(evs[1].1["response"]["model"], "m");
    }
}

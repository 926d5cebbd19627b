//! OpenAI Responses (`POST /v1/responses`) as a wire format: a client's request into the neutral
//! model, neutral answers and streams into the Responses API's `response` object and its exact
//! event sequence, and the way back (a Responses answer or stream into the neutral model, a
//! neutral request into a Responses body), plus the pieces both directions share: output items,
//! the `response` object, usage, finish status and the failure events.
//!
//! A Responses client's request to a provider that has the Responses API is never decoded: it
//! passes through byte for byte (see `crate::providers::translate`). Decoding is for every other
//! provider, so the decoder keeps only what a chat provider can carry: hosted tools (`web_search`,
//! `file_search`, `namespace`, MCP, ...) and the items they produced are dropped, state kept by
//! OpenAI (`previous_response_id`, `conversation`, stored prompts, item references) is refused.
//! A provider's opaque reasoning state (signatures of thinking blocks, redacted thinking) rides
//! through the client in reasoning items' `encrypted_content` (see `responses/reasoning_state.rs`).
//! What each field becomes: the README's Translation section.

mod reasoning_state;
mod request;
mod response;
mod stream;

use serde::Deserialize;

use super::chat::{FinishReason, Usage};
use super::json::{sse_begin, sse_end, write_key, write_str, write_u64};

pub use reasoning_state::{decode as decode_reasoning_state, ReasoningState};
pub use request::{decode_request, encode_request, previous_response_id_unsupported};
pub use response::{decode_response, encode_response};
pub use stream::{StreamDecoder, StreamEncoder, StreamWatch};

/// Prefix of a response id.
pub const RESPONSE_ID_PREFIX: &str = "resp_";
/// Prefix of an output message item's id.
const MESSAGE_ID_PREFIX: &str = "msg_";
/// Prefix of a function call item's id (its `call_id` is the neutral tool-call id).
const FUNCTION_CALL_ID_PREFIX: &str = "fc_";
/// Prefix of a reasoning item's id.
const REASONING_ID_PREFIX: &str = "rs_";
/// `incomplete_details.reason` of an answer cut by the token limit.
const INCOMPLETE_MAX_OUTPUT_TOKENS: &str = "max_output_tokens";
/// `incomplete_details.reason` of an answer stopped by a content filter (or a refusal).
const INCOMPLETE_CONTENT_FILTER: &str = "content_filter";

pub use super::openai_chat::{decode_error, error_body};

/// How a response ended: `completed`, or `incomplete` with the reason for
/// `incomplete_details.reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed,
    Incomplete(&'static str),
}

impl Outcome {
    /// The outcome of a neutral finish reason: the token limit (and a context window that ran
    /// out) is `incomplete` for `max_output_tokens`, a content filter or refusal `incomplete`
    /// for `content_filter`; every other reason, tool calls included, is `completed`.
    pub(crate) fn of(finish: &FinishReason) -> Outcome {
        match finish {
            FinishReason::Length => Outcome::Incomplete(INCOMPLETE_MAX_OUTPUT_TOKENS),
            FinishReason::Other(r) if r == "model_context_window_exceeded" => {
                Outcome::Incomplete(INCOMPLETE_MAX_OUTPUT_TOKENS)
            }
            FinishReason::ContentFilter | FinishReason::Refusal => {
                Outcome::Incomplete(INCOMPLETE_CONTENT_FILTER)
            }
            FinishReason::Stop
            | FinishReason::StopSequence(_)
            | FinishReason::ToolCalls
            | FinishReason::Other(_) => Outcome::Completed,
        }
    }

    fn status(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Incomplete(_) => "incomplete",
        }
    }
}

/// The neutral finish reason of a Responses answer: its `status` and `incomplete_details.reason`,
/// and whether it called a function.
fn finish_of(status: Option<&str>, incomplete_reason: Option<&str>, calls: bool) -> FinishReason {
    match (status, incomplete_reason) {
        (Some("incomplete"), Some(INCOMPLETE_CONTENT_FILTER)) => FinishReason::ContentFilter,
        (Some("incomplete"), _) => FinishReason::Length,
        _ if calls => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

/// Token counts as the Responses API reports them (`usage`).
#[derive(Deserialize, Default)]
pub(crate) struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    input_tokens_details: Option<InputDetails>,
    #[serde(default)]
    output_tokens_details: Option<OutputDetails>,
}

#[derive(Deserialize, Default)]
struct InputDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    cache_write_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct OutputDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl WireUsage {
    /// Responses' `input_tokens` already includes cached tokens: it is the neutral input.
    pub(crate) fn to_neutral(&self) -> Usage {
        let input = self.input_tokens_details.as_ref();
        Usage {
            input_tokens: self.input_tokens.unwrap_or(0),
            output_tokens: self.output_tokens.unwrap_or(0),
            cache_read_tokens: input.and_then(|d| d.cached_tokens).unwrap_or(0),
            cache_write_tokens: input.and_then(|d| d.cache_write_tokens).unwrap_or(0),
            reasoning_tokens: self
                .output_tokens_details
                .as_ref()
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

/// `usage` as the Responses API writes it.
fn write_usage(out: &mut Vec<u8>, u: &Usage) {
    out.extend_from_slice(b"{\"input_tokens\":");
    write_u64(out, u.input_tokens);
    out.extend_from_slice(b",\"input_tokens_details\":{\"cached_tokens\":");
    write_u64(out, u.cache_read_tokens);
    out.extend_from_slice(b",\"cache_write_tokens\":");
    write_u64(out, u.cache_write_tokens);
    out.extend_from_slice(b"},\"output_tokens\":");
    write_u64(out, u.output_tokens);
    out.extend_from_slice(b",\"output_tokens_details\":{\"reasoning_tokens\":");
    write_u64(out, u.reasoning_tokens);
    out.extend_from_slice(b"},\"total_tokens\":");
    write_u64(out, u.input_tokens + u.output_tokens);
    out.push(b'}');
}

/// What a `response` object says of itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Head {
    /// `resp_...`.
    pub(crate) id: String,
    pub(crate) model: String,
    /// Unix seconds.
    pub(crate) created_at: u64,
}

impl Head {
    /// The id of output item `index` of this response: `<prefix><the response id's own
    /// part>_<index>`, unique within the response and stable across its events.
    fn item_id(&self, prefix: &str, index: usize) -> String {
        let bare = self.id.strip_prefix(RESPONSE_ID_PREFIX).unwrap_or(&self.id);
        format!("{prefix}{bare}_{index}")
    }
}

/// The state a `response` object is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State<'a> {
    InProgress,
    Ended(Outcome),
    Failed { code: &'a str, message: &'a str },
}

/// A `response` object. `output` is the items' JSON, comma-separated; `usage` is `null` when
/// `None`. The fields a client sent that the gateway does not echo when it wrote the answer
/// itself (instructions, tools, sampling, ...) take the API's defaults: see the README.
pub(crate) fn write_response(
    out: &mut Vec<u8>,
    head: &Head,
    state: State<'_>,
    output: &[u8],
    usage: Option<&Usage>,
) {
    let (status, completed_at) = match state {
        State::InProgress => ("in_progress", None),
        State::Ended(outcome @ Outcome::Completed) => (
            outcome.status(),
            Some(super::unix_now_s().max(head.created_at)),
        ),
        State::Ended(outcome) => (outcome.status(), None),
        State::Failed { .. } => ("failed", None),
    };
    out.extend_from_slice(b"{\"id\":");
    write_str(out, &head.id);
    out.extend_from_slice(b",\"object\":\"response\",\"created_at\":");
    write_u64(out, head.created_at);
    out.extend_from_slice(b",\"status\":");
    write_str(out, status);
    out.extend_from_slice(b",\"background\":false,\"completed_at\":");
    match completed_at {
        Some(t) => write_u64(out, t),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"error\":");
    match state {
        State::Failed { code, message } => {
            out.extend_from_slice(b"{\"code\":");
            write_str(out, code);
            out.extend_from_slice(b",\"message\":");
            write_str(out, message);
            out.push(b'}');
        }
        _ => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"incomplete_details\":");
    match state {
        State::Ended(Outcome::Incomplete(reason)) => {
            out.extend_from_slice(b"{\"reason\":");
            write_str(out, reason);
            out.push(b'}');
        }
        _ => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"instructions\":null,\"max_output_tokens\":null,\"model\":");
    write_str(out, &head.model);
    out.extend_from_slice(b",\"output\":[");
    out.extend_from_slice(output);
    out.extend_from_slice(
        b"],\"parallel_tool_calls\":true,\"previous_response_id\":null,\
          \"reasoning\":{\"effort\":null,\"summary\":null},\"store\":false,\
          \"temperature\":null,\"text\":{\"format\":{\"type\":\"text\"}},\
          \"tool_choice\":\"auto\",\"tools\":[],\"top_p\":null,\"truncation\":\"disabled\",\
          \"usage\":",
    );
    match usage {
        Some(u) => write_usage(out, u),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"user\":null,\"metadata\":{}}");
}

/// An `output_text` content part.
fn write_output_text(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(
        b"{\"type\":\"output_text\",\"annotations\":[],\"logprobs\":[],\"text\":",
    );
    write_str(out, text);
    out.push(b'}');
}

/// An assistant `message` item; `text` `None`: no content yet (an item just added).
fn write_message_item(out: &mut Vec<u8>, id: &str, status: &str, text: Option<&str>) {
    out.extend_from_slice(b"{\"id\":");
    write_str(out, id);
    out.extend_from_slice(b",\"type\":\"message\",\"status\":");
    write_str(out, status);
    out.extend_from_slice(b",\"content\":[");
    if let Some(text) = text {
        write_output_text(out, text);
    }
    out.extend_from_slice(b"],\"role\":\"assistant\"}");
}

/// A `function_call` item.
fn write_function_call_item(
    out: &mut Vec<u8>,
    id: &str,
    status: &str,
    call_id: &str,
    name: &str,
    arguments: &str,
) {
    out.extend_from_slice(b"{\"id\":");
    write_str(out, id);
    out.extend_from_slice(b",\"type\":\"function_call\",\"status\":");
    write_str(out, status);
    out.extend_from_slice(b",\"arguments\":");
    write_str(out, arguments);
    out.extend_from_slice(b",\"call_id\":");
    write_str(out, call_id);
    out.extend_from_slice(b",\"name\":");
    write_str(out, name);
    out.push(b'}');
}

/// A `reasoning` item whose summary is `summary` (none when `None` or empty), with the
/// provider's opaque state as `encrypted_content` when given (in the gateway's envelope, see
/// `reasoning_state`).
fn write_reasoning_item(
    out: &mut Vec<u8>,
    id: &str,
    summary: Option<&str>,
    state: Option<&ReasoningState>,
) {
    out.extend_from_slice(b"{\"id\":");
    write_str(out, id);
    out.extend_from_slice(b",\"type\":\"reasoning\",\"summary\":[");
    if let Some(text) = summary.filter(|t| !t.is_empty()) {
        write_summary_text(out, text);
    }
    out.push(b']');
    if let Some(state) = state {
        out.extend_from_slice(b",\"encrypted_content\":");
        write_str(out, &reasoning_state::encode(state));
    }
    out.push(b'}');
}

/// A `summary_text` part.
fn write_summary_text(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(b"{\"type\":\"summary_text\",\"text\":");
    write_str(out, text);
    out.push(b'}');
}

/// `error.code` of a failure: the gateway's own code when it has one, else the Responses API's
/// code for the status (`rate_limit_exceeded` for 429, `server_error` otherwise).
fn failure_code(status: u16, code: Option<&str>) -> &str {
    match code {
        Some(code) => code,
        None if status == 429 => "rate_limit_exceeded",
        None => "server_error",
    }
}

/// One stream event: `event: <type>` and `data: {"type":"<type>",<fields>,"sequence_number":n}`,
/// where `fields` writes the fields between (with their leading comma).
fn write_event(out: &mut Vec<u8>, ty: &str, seq: u64, fields: impl FnOnce(&mut Vec<u8>)) {
    sse_begin(out, Some(ty));
    out.extend_from_slice(b"{\"type\":");
    write_str(out, ty);
    fields(out);
    out.extend_from_slice(b",\"sequence_number\":");
    write_u64(out, seq);
    out.push(b'}');
    sse_end(out);
}

/// What a failed response reports: the error's type, message and `code`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Failure<'a> {
    pub(crate) error_type: &'a str,
    pub(crate) message: &'a str,
    pub(crate) code: &'a str,
}

/// The events that end a stream with a failure, from sequence number `seq`: an `error` event
/// (its fields both flat, as the API reference documents them, and under `error`, as the API
/// sends them and the official SDKs read them), then `response.failed` with `output` (the items
/// done so far, comma-separated) and the usage so far. Returns the next sequence number.
pub(crate) fn write_failure(
    out: &mut Vec<u8>,
    head: &Head,
    seq: u64,
    failure: Failure<'_>,
    output: &[u8],
    usage: Option<&Usage>,
) -> u64 {
    let Failure {
        error_type,
        message,
        code,
    } = failure;
    write_event(out, "error", seq, |o| {
        o.push(b',');
        write_key(o, "code");
        write_str(o, code);
        o.extend_from_slice(b",\"message\":");
        write_str(o, message);
        o.extend_from_slice(b",\"param\":null,\"error\":{\"type\":");
        write_str(o, error_type);
        o.extend_from_slice(b",\"code\":");
        write_str(o, code);
        o.extend_from_slice(b",\"message\":");
        write_str(o, message);
        o.extend_from_slice(b",\"param\":null}");
    });
    write_event(out, "response.failed", seq + 1, |o| {
        o.extend_from_slice(b",\"response\":");
        write_response(o, head, State::Failed { code, message }, output, usage);
    });
    seq + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_of_finish_reasons() {
        assert_eq!(Outcome::of(&FinishReason::Stop), Outcome::Completed);
        assert_eq!(Outcome::of(&FinishReason::ToolCalls), Outcome::Completed);
        assert_eq!(
            Outcome::of(&FinishReason::Length),
            Outcome::Incomplete("max_output_tokens")
        );
        assert_eq!(
            Outcome::of(&FinishReason::Other("model_context_window_exceeded".into())),
            Outcome::Incomplete("max_output_tokens")
        );
        assert_eq!(
            Outcome::of(&FinishReason::Refusal),
            Outcome::Incomplete("content_filter")
        );
        assert_eq!(
            finish_of(Some("completed"), None, true),
            FinishReason::ToolCalls
        );
        assert_eq!(
            finish_of(Some("incomplete"), Some("max_output_tokens"), false),
            FinishReason::Length
        );
        assert_eq!(
            finish_of(Some("incomplete"), Some("content_filter"), false),
            FinishReason::ContentFilter
        );
    }

    #[test]
    fn failure_events_carry_the_error_both_ways() {
        let head = Head {
            id: "resp_x".into(),
            model: "m".into(),
            created_at: 1,
        };
        let mut out = Vec::new();
        let failure = Failure {
            error_type: "upstream_error",
            message: "gone",
            code: "upstream_stream_interrupted",
        };
        let next = write_failure(&mut out, &head, 7, failure, b"", None);
        assert_eq!(next, 9);
        let text = String::from_utf8(out).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 2);
        assert!(events[0].starts_with("event: error\ndata: "), "{text}");
        let error: serde_json::Value =
            serde_json::from_str(events[0].split_once("data: ").unwrap().1).unwrap();
        assert_eq!(error["message"], "gone");
        assert_eq!(error["error"]["code"], "upstream_stream_interrupted");
        assert_eq!(error["sequence_number"], 7);
        let failed: serde_json::Value =
            serde_json::from_str(events[1].split_once("data: ").unwrap().1).unwrap();
        assert_eq!(failed["type"], "response.failed");
        assert_eq!(failed["sequence_number"], 8);
        assert_eq!(failed["response"]["status"], "failed");
        assert_eq!(failed["response"]["id"], "resp_x");
        assert_eq!(failed["response"]["error"]["message"], "gone");
    }
}

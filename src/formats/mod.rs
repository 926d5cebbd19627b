//! Wire formats and the translation between them: the format-neutral model of a chat exchange
//! ([`chat`]) and one codec per wire format ([`openai_chat`], [`anthropic`], [`responses`],
//! [`gemini`], [`bedrock`]), each turning a client's request into the neutral model, the neutral
//! model into a provider's request, a provider's response and stream back into the neutral model,
//! and that into the client's format. Pure functions and small state machines: no I/O, no clocks
//! except the `created` stamp of an answer that lacks one. What each direction drops or rejects:
//! the README's Translation section.

pub mod anthropic;
pub mod bedrock;
pub mod chat;
pub mod codec;
pub mod embeddings;
pub mod gemini;
pub mod openai_chat;
pub mod responses;

mod json;

use std::borrow::Cow;
use std::fmt;

use serde_json::value::RawValue;

use crate::error::{ApiError, ErrorKind};

pub use chat::{
    ChatRequest, ChatResponse, FinishReason, Format, ImageSource, Message, Part, PartKind, RawJson,
    ReasoningEffort, ReasoningMode, ReasoningRequest, Role, StreamError, StreamEvent,
    StructuredOutput, TextBlock, ThinkingDisplay, Tool, ToolChoice, Usage,
};

/// `max_tokens` sent to a provider that requires it (Anthropic) when the client gave none.
pub const MAX_TOKENS_DEFAULT: u32 = 4096;
/// Anthropic's smallest thinking budget, tokens.
pub const THINKING_BUDGET_MIN_TOKENS: u32 = 1024;
/// Longest error message kept from an upstream error body, bytes (the rest is cut).
pub const UPSTREAM_ERROR_MESSAGE_BYTES_MAX: usize = 2048;
/// Name of the tool that carries a structured answer to Anthropic when the client's schema has
/// no name of its own (OpenAI `json_object`, Anthropic-style schemas).
pub const STRUCTURED_OUTPUT_TOOL_NAME_DEFAULT: &str = "json_response";
/// What the tool that carries a structured answer tells the model when the client's schema has
/// no description.
const STRUCTURED_OUTPUT_TOOL_DESCRIPTION: &str =
    "Give the final answer by calling this tool once; its input is the answer.";
/// The input schema of a tool that declares none.
pub(crate) const EMPTY_OBJECT_SCHEMA: &str = r#"{"type":"object","properties":{}}"#;
/// The schema of a structured answer whose client asked only for "a JSON object".
pub(crate) const ANY_OBJECT_SCHEMA: &str = r#"{"type":"object"}"#;

const _: () = assert!(THINKING_BUDGET_MIN_TOKENS < MAX_TOKENS_DEFAULT);

/// A request the codec cannot decode or cannot translate (400), or a provider answer it cannot
/// read (502).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatError {
    pub status: u16,
    /// Stable machine-readable code (`invalid_json`, `unsupported_parameter`, ...).
    pub code: &'static str,
    /// Safe to show to the client.
    pub message: Cow<'static, str>,
}

impl FormatError {
    /// The client's request is malformed or cannot be translated: 400.
    pub fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        FormatError {
            status: 400,
            code,
            message: message.into(),
        }
    }

    /// The provider's answer cannot be read: 502.
    pub fn upstream(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        FormatError {
            status: 502,
            code,
            message: message.into(),
        }
    }
}

impl FormatError {
    /// The provider's answer is not `what` ("a message"): 502 `upstream_invalid_response`.
    pub(crate) fn invalid_answer(what: &str, e: impl fmt::Display) -> Self {
        Self::upstream(
            "upstream_invalid_response",
            format!("the provider's answer is not {what}: {e}"),
        )
    }

    /// A provider's stream sent `what` ("stream event") that cannot be read: 502
    /// `upstream_invalid_stream`.
    pub(crate) fn invalid_event(what: impl fmt::Display, e: impl fmt::Display) -> Self {
        Self::upstream(
            "upstream_invalid_stream",
            format!("the provider sent an unreadable {what}: {e}"),
        )
    }

    /// At the end of a provider's stream: `Ok` when its terminator was read, else 502
    /// `upstream_stream_incomplete` naming `terminator`.
    pub(crate) fn stream_end(terminated: bool, terminator: &str) -> Result<(), Self> {
        if terminated {
            return Ok(());
        }
        Err(Self::upstream(
            "upstream_stream_incomplete",
            format!("the provider's stream ended before {terminator}"),
        ))
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for FormatError {}

impl From<FormatError> for ApiError {
    fn from(e: FormatError) -> Self {
        let kind = if e.status == 400 {
            ErrorKind::BadRequest
        } else {
            ErrorKind::UpstreamInvalid
        };
        ApiError::new(kind, e.code, e.message)
    }
}

/// An error answer of a provider, read from its body: what to tell the client, in any format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamError {
    pub status: u16,
    /// The provider's error type (`invalid_request_error`, `overloaded_error`, ...), or the
    /// provider format's type for `status` when the body had none.
    pub error_type: String,
    /// The provider's message (at most [`UPSTREAM_ERROR_MESSAGE_BYTES_MAX`] bytes), or a
    /// generic one naming the status when the body had none.
    pub message: String,
    /// OpenAI's `error.code` when present.
    pub code: Option<String>,
}

pub use crate::config::{MaxTokensField, StructuredOutputStyle, ThinkingStyle, ToolCallIdFormat};

/// What a provider's request encoder may decide on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeOptions {
    /// `max_tokens` when the client gave none and the provider requires one (Anthropic), tokens.
    pub max_tokens_default: u32,
    /// Ask the provider for usage in streams (OpenAI `stream_options.include_usage`) even when
    /// the client did not, so that the gateway always learns the usage. Off for a provider that
    /// refuses `stream_options`: none is sent.
    pub stream_usage: bool,
    pub thinking_style: ThinkingStyle,
    pub structured_output_style: StructuredOutputStyle,
    pub max_tokens_field: MaxTokensField,
    /// Whether the OpenAI-format provider's model takes `reasoning_effort` (reasoning models do;
    /// OpenAI rejects it for others). Decides only for requests from another format: an OpenAI
    /// client's own `reasoning_effort` is always passed on.
    pub reasoning_effort: bool,
    /// The tool-call ids the OpenAI-format provider accepts; other ids are rewritten.
    pub tool_call_id_format: ToolCallIdFormat,
    /// Whether the OpenAI-format provider takes `tools` (false: a request offering tools is
    /// refused with 400 `unsupported_tool`).
    pub tools: bool,
    /// Whether the OpenAI-format provider takes `parallel_tool_calls` (false: never sent).
    pub parallel_tool_calls: bool,
    /// Send earlier assistant turns' reasoning back as `reasoning_content` (OpenAI-compatible
    /// servers whose thinking mode needs it; OpenAI itself takes none).
    pub reasoning_history: bool,
    /// Which of Google's embeddings APIs a Gemini-format provider speaks.
    pub google_embeddings: gemini::EmbeddingsDialect,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            max_tokens_default: MAX_TOKENS_DEFAULT,
            stream_usage: true,
            thinking_style: ThinkingStyle::default(),
            structured_output_style: StructuredOutputStyle::default(),
            max_tokens_field: MaxTokensField::default(),
            reasoning_effort: true,
            tool_call_id_format: ToolCallIdFormat::Any,
            tools: true,
            parallel_tool_calls: true,
            reasoning_history: false,
            google_embeddings: gemini::EmbeddingsDialect::default(),
        }
    }
}

/// What the client asked of its answer's form, beyond the content the provider gave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnswerOptions {
    /// OpenAI's usage chunk at the end of a stream (`stream_options.include_usage`).
    pub include_usage: bool,
    /// Reasoning items carry the provider's opaque reasoning state in `encrypted_content` (a
    /// Responses client's `include: ["reasoning.encrypted_content"]`; see
    /// [`ChatRequest::reasoning_state`]).
    pub reasoning_state: bool,
}

/// What a request encoder did that the response and stream decoders must undo.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodeInfo {
    /// The structured answer was asked for as a forced call of this tool: its arguments are the
    /// answer's text, and a stop for this call alone is a natural stop.
    pub structured_output_tool: Option<String>,
    /// An OpenAI embeddings request was translated for a Google provider (see
    /// [`gemini::EmbeddingsInfo`]).
    pub embeddings: Option<gemini::EmbeddingsInfo>,
}

impl EncodeInfo {
    /// The provider's stop reason as the client sees it: a stop for tool use whose only tool
    /// call was the structured answer (`other_calls`: whether the model made any other) is a
    /// natural stop.
    pub(crate) fn client_finish(&self, finish: FinishReason, other_calls: bool) -> FinishReason {
        if finish == FinishReason::ToolCalls
            && self.structured_output_tool.is_some()
            && !other_calls
        {
            FinishReason::Stop
        } else {
            finish
        }
    }
}

/// The tool that carries a structured answer to `provider` ("an Anthropic provider"), whose
/// models answer in a forced tool call: its name (the schema's own, or
/// [`STRUCTURED_OUTPUT_TOOL_NAME_DEFAULT`]) after checking that no tool of the client has it
/// and that `schema` describes an object (tool inputs are objects), and its description.
pub(crate) fn structured_output_tool<'a>(
    req: &'a ChatRequest,
    so: &'a StructuredOutput,
    schema: &RawValue,
    provider: &str,
) -> Result<(&'a str, &'a str), FormatError> {
    #[derive(serde::Deserialize)]
    struct Root<'b> {
        #[serde(rename = "type", borrow, default)]
        ty: Option<Cow<'b, str>>,
    }
    let root: Option<Root> = serde_json::from_str(schema.get()).ok();
    if root.and_then(|r| r.ty).as_deref() != Some("object") {
        return Err(FormatError::bad_request(
            "unsupported_parameter",
            format!("`response_format.json_schema.schema` must describe an object (`\"type\": \"object\"`) for {provider}"),
        ));
    }
    let name = so
        .name
        .as_deref()
        .unwrap_or(STRUCTURED_OUTPUT_TOOL_NAME_DEFAULT);
    if req.tools.iter().any(|t| t.name == name) {
        return Err(FormatError::bad_request(
            "unsupported_parameter",
            format!("the response format's name `{name}` is also the name of a tool"),
        ));
    }
    let description = so
        .description
        .as_deref()
        .unwrap_or(STRUCTURED_OUTPUT_TOOL_DESCRIPTION);
    Ok((name, description))
}

/// Refuse (400) a request of another format that `provider` ("a Gemini provider") cannot
/// honour: a field kept in `extra` that `rejected` names (given the key and the trimmed JSON
/// value; `unsupported_parameter`), or server tools (`unsupported_tool`).
pub(crate) fn reject_foreign(
    req: &ChatRequest,
    provider: &str,
    rejected: impl Fn(&str, &str) -> bool,
) -> Result<(), FormatError> {
    for (k, v) in &req.extra {
        let v = v.get().trim();
        if rejected(k, v) {
            return Err(FormatError::bad_request(
                "unsupported_parameter",
                format!(
                    "`{k}` = {} cannot be used with {provider}",
                    truncate_message(v, 64)
                ),
            ));
        }
    }
    if !req.native_tools.is_empty() {
        return Err(FormatError::bad_request(
            "unsupported_tool",
            format!("only function tools can be used with {provider}"),
        ));
    }
    Ok(())
}

/// The thinking budget asked of an Anthropic model for an effort level, tokens.
///
/// | effort | budget |
/// |---|---|
/// | minimal | 1024 |
/// | low | 2048 |
/// | medium | 8192 |
/// | high | 16384 |
/// | xhigh | 32768 |
/// | max | 65536 |
///
/// `none` asks for no thinking (returns 0).
pub fn thinking_budget_tokens(effort: ReasoningEffort) -> u32 {
    match effort {
        ReasoningEffort::None => 0,
        ReasoningEffort::Minimal => THINKING_BUDGET_MIN_TOKENS,
        ReasoningEffort::Low => 2048,
        ReasoningEffort::Medium => 8192,
        ReasoningEffort::High => 16_384,
        ReasoningEffort::XHigh => 32_768,
        ReasoningEffort::Max => 65_536,
    }
}

/// The effort level sent to an OpenAI-format provider for an Anthropic thinking budget: the
/// level whose budget in [`thinking_budget_tokens`] is the largest not above it (at least `low`,
/// at most `high`, the levels every OpenAI reasoning model knows).
pub fn effort_for_budget(budget_tokens: u32) -> ReasoningEffort {
    if budget_tokens >= thinking_budget_tokens(ReasoningEffort::High) {
        ReasoningEffort::High
    } else if budget_tokens >= thinking_budget_tokens(ReasoningEffort::Medium) {
        ReasoningEffort::Medium
    } else {
        ReasoningEffort::Low
    }
}

/// Rough token count of a text: one token per four characters (rounded up). Used where the
/// gateway must estimate (token counting for providers without it, the built-in mock).
pub fn estimate_tokens(text: &str) -> u64 {
    let chars = text.chars().count() as u64;
    chars.div_ceil(4)
}

/// `id` in a format's style: kept when it already has `prefix`, else `prefix` + `id` without a
/// known foreign prefix; a fresh id when `id` is empty.
pub(crate) fn restyle_id(id: &str, prefix: &str) -> String {
    if id.starts_with(prefix) {
        return id.to_owned();
    }
    let bare = ["chatcmpl-", "msg_", "resp_"]
        .iter()
        .find_map(|p| id.strip_prefix(p))
        .unwrap_or(id);
    if bare.is_empty() {
        return format!("{prefix}{}", fresh_id_suffix());
    }
    let mut s = String::with_capacity(prefix.len() + bare.len());
    s.push_str(prefix);
    s.push_str(bare);
    s
}

/// 24 hex digits, unique within the process and unlikely to repeat across processes.
fn fresh_id_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{t:016x}{:08x}", n as u32)
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `s` cut to at most `max` bytes at a character boundary.
pub(crate) fn truncate_message(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_take_the_format_style() {
        assert_eq!(restyle_id("msg_01ABC", "chatcmpl-"), "chatcmpl-01ABC");
        assert_eq!(restyle_id("chatcmpl-xyz", "msg_"), "msg_xyz");
        assert_eq!(restyle_id("msg_01ABC", "msg_"), "msg_01ABC");
        assert_eq!(restyle_id("gen-123", "msg_"), "msg_gen-123");
        assert_eq!(restyle_id("chatcmpl-xyz", "resp_"), "resp_xyz");
        assert_eq!(restyle_id("resp_xyz", "msg_"), "msg_xyz");
        let fresh = restyle_id("", "msg_");
        assert!(
            fresh.starts_with("msg_") && fresh.len() == 4 + 24,
            "{fresh}"
        );
        assert_ne!(fresh, restyle_id("", "msg_"));
    }

    #[test]
    fn budgets_and_efforts_agree() {
        for e in [
            ReasoningEffort::Low,
            ReasoningEffort::Medium,
            ReasoningEffort::High,
        ] {
            assert_eq!(effort_for_budget(thinking_budget_tokens(e)), e);
        }
        assert_eq!(effort_for_budget(1024), ReasoningEffort::Low);
        assert_eq!(effort_for_budget(100_000), ReasoningEffort::High);
        assert_eq!(thinking_budget_tokens(ReasoningEffort::Minimal), 1024);
    }

    #[test]
    fn schema_constants_are_json() {
        for c in [EMPTY_OBJECT_SCHEMA, ANY_OBJECT_SCHEMA] {
            assert_eq!(json::raw_const(c).get(), c);
        }
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate_message("héllo", 2), "h");
        assert_eq!(truncate_message("héllo", 3), "hé");
        assert_eq!(truncate_message("abc", 10), "abc");
    }

    #[test]
    fn format_errors_become_api_errors() {
        let e: ApiError = FormatError::bad_request("invalid_json", "bad").into();
        assert_eq!((e.status(), e.code), (400, "invalid_json"));
        let e: ApiError = FormatError::upstream("upstream_invalid_response", "bad").into();
        assert_eq!(e.status(), 502);
    }
}

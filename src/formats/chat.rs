//! The format-neutral model of one chat exchange: the request a client sent, the response a
//! provider gave and the events of a stream, in terms every wire format in `formats/` translates
//! to and from. It owns no JSON parsing or writing; the codecs do.
//!
//! Conventions every codec keeps:
//! - **Usage.** [`Usage::input_tokens`] counts *all* prompt tokens, cache reads and cache writes
//!   included (OpenAI's `prompt_tokens`; Anthropic's `input_tokens + cache_read_input_tokens +
//!   cache_creation_input_tokens`). [`Usage::output_tokens`] counts all generated tokens,
//!   reasoning included (OpenAI's `completion_tokens`, Anthropic's `output_tokens`).
//! - **Opaque JSON** (`cache_control`, tool schemas, [`Part::Opaque`], `extra`) is kept as the
//!   client or provider wrote it, as raw JSON text, and is only ever re-emitted unchanged.
//! - **Streams are sequential**: at most one part is open at a time; a decoder stops the open part
//!   before it starts the next one.

use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// A JSON value kept verbatim (never parsed into a tree). Two are equal when their texts are.
#[derive(Clone, Debug)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// A copy of a borrowed raw value.
    pub fn copy_of(raw: &RawValue) -> Self {
        RawJson(raw.to_owned())
    }

    /// Parse JSON text (checked, kept verbatim).
    pub fn parse(json: &str) -> Result<Self, serde_json::Error> {
        RawValue::from_string(json.to_owned()).map(RawJson)
    }
}

impl Deref for RawJson {
    type Target = RawValue;
    fn deref(&self) -> &RawValue {
        &self.0
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(d).map(RawJson)
    }
}

/// The wire formats the gateway speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// OpenAI Chat Completions (`POST /v1/chat/completions`).
    #[default]
    OpenAiChat,
    /// Anthropic Messages (`POST /v1/messages`).
    Anthropic,
    /// Google Gemini `generateContent` / `streamGenerateContent` (Google AI Studio and Vertex
    /// AI speak the same bodies).
    Gemini,
    /// AWS Bedrock Converse (`POST /model/{modelId}/converse`, `/converse-stream`): a provider
    /// format only; no client speaks it.
    Bedrock,
    /// OpenAI Responses (`POST /v1/responses`).
    OpenAiResponses,
}

/// One chat request, as decoded from a client's body.
#[derive(Debug, Default)]
pub struct ChatRequest {
    /// The model the client asked for (routing resolves it; encoders write the upstream's name).
    pub model: String,
    /// The system prompt, in order: Anthropic's `system` blocks, or OpenAI's leading
    /// `system`/`developer` messages (one block per text part).
    pub system: Vec<TextBlock>,
    /// Whether the OpenAI client sent its leading instructions as `developer` messages.
    pub system_as_developer: bool,
    pub messages: Vec<Message>,
    /// Function tools (OpenAI `type: function`, Anthropic custom tools).
    pub tools: Vec<Tool>,
    /// Tools of the source format the neutral model has no slot for (Anthropic server tools such
    /// as `web_search_20250305`, OpenAI `custom` tools). Re-emitted only to the same format;
    /// any other format rejects the request.
    pub native_tools: Vec<RawJson>,
    pub tool_choice: Option<ToolChoice>,
    /// OpenAI `parallel_tool_calls`; Anthropic `!disable_parallel_tool_use`.
    pub parallel_tool_calls: Option<bool>,
    /// Stop sequences (OpenAI `stop`, Anthropic `stop_sequences`).
    pub stop: Vec<String>,
    /// Most tokens to generate, reasoning included (OpenAI `max_completion_tokens` or
    /// `max_tokens`, Anthropic `max_tokens`).
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    /// A JSON answer was asked for (OpenAI `response_format`, Anthropic `output_config.format`).
    pub structured_output: Option<StructuredOutput>,
    pub reasoning: Option<ReasoningRequest>,
    /// An end-user id (OpenAI `user`, Anthropic `metadata.user_id`).
    pub user_id: Option<String>,
    pub stream: bool,
    /// The client asked for usage in the stream (OpenAI `stream_options.include_usage`;
    /// Anthropic streams always carry usage).
    pub stream_usage: bool,
    /// The client asked for the provider's opaque reasoning state with the answer (a Responses
    /// client's `include: ["reasoning.encrypted_content"]`), so that it can send it back with
    /// the next turn. Clients of other formats get it in their own form whenever their format
    /// has one (Anthropic's signatures) and never ask.
    pub reasoning_state: bool,
    /// The format the request was decoded from: decides who may re-emit `extra`,
    /// `native_tools` and [`Part::Opaque`].
    pub source: Format,
    /// Top-level fields of the source format the neutral model has no slot for, in the order
    /// they came, re-emitted unchanged when encoding to the same format. Encoding to another
    /// format either drops each one or rejects the request (see the README, Translation).
    pub extra: Vec<(String, RawJson)>,
}

impl ChatRequest {
    /// The raw value of an `extra` field.
    pub fn extra_field(&self, name: &str) -> Option<&RawValue> {
        self.extra
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| &**v)
    }

    /// The text of a leading `system` or `developer` message (`role`; how OpenAI's clients give
    /// instructions), added to the system prompt; the first such message decides
    /// [`ChatRequest::system_as_developer`].
    pub(crate) fn push_system_message(&mut self, role: &str, parts: Vec<Part>) {
        if self.system.is_empty() {
            self.system_as_developer = role == "developer";
        }
        for part in parts {
            if let Part::Text { text, .. } = part {
                self.system.push(TextBlock {
                    text,
                    cache_control: None,
                });
            }
        }
    }

    /// A rough size of the request as JSON, bytes: sizes output buffers before encoding.
    pub fn approx_json_bytes(&self) -> usize {
        let mut n = 256 + self.model.len();
        n += self.system.iter().map(|b| b.text.len() + 32).sum::<usize>();
        for m in &self.messages {
            n += 32 + m.content.iter().map(Part::approx_json_bytes).sum::<usize>();
        }
        for t in &self.tools {
            n += 64 + t.name.len() + t.description.as_ref().map_or(0, String::len);
            n += t.input_schema.as_ref().map_or(0, |s| s.get().len());
        }
        n += self
            .native_tools
            .iter()
            .map(|t| t.get().len())
            .sum::<usize>();
        n += self
            .extra
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum::<usize>();
        n
    }
}

/// A text block with Anthropic's optional `cache_control` marker.
#[derive(Debug, Clone, PartialEq)]
pub struct TextBlock {
    pub text: String,
    pub cache_control: Option<RawJson>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Instructions in the middle of a conversation (an OpenAI `system`/`developer` message after
    /// the first non-system one). Anthropic encoders move them into the top-level `system`.
    System,
    User,
    Assistant,
    /// OpenAI `tool` messages; Anthropic carries tool results in `user` messages.
    Tool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Part>,
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    Url(String),
    Base64 { media_type: String, data: String },
}

/// One piece of message content.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text {
        text: String,
        cache_control: Option<RawJson>,
    },
    Image {
        source: ImageSource,
        /// OpenAI `image_url.detail` (`auto`, `low`, `high`).
        detail: Option<String>,
        cache_control: Option<RawJson>,
    },
    ToolCall {
        id: String,
        name: String,
        /// The arguments as JSON text (OpenAI sends a string; Anthropic an object).
        arguments_json: String,
        cache_control: Option<RawJson>,
        /// An opaque signature the provider attached to the call and wants back with it in the
        /// next turn (Gemini's `thoughtSignature`). Clients of other formats carry it inside the
        /// tool call's id (see [`client_tool_call_id`]).
        signature: Option<String>,
    },
    ToolResult {
        tool_call_id: String,
        /// Text and image parts (and [`Part::Opaque`] blocks of the source format).
        content: Vec<Part>,
        is_error: bool,
        cache_control: Option<RawJson>,
    },
    /// Visible reasoning (Anthropic `thinking`, OpenAI-compatible `reasoning_content`).
    Reasoning {
        text: String,
        /// Anthropic's signature: required to send the block back to Anthropic.
        signature: Option<String>,
    },
    /// Anthropic `redacted_thinking`: encrypted, passed back unchanged.
    RedactedReasoning { data: String },
    /// A content block of the source format with no neutral equivalent (Anthropic `document`,
    /// `search_result`, `server_tool_use`, ...; OpenAI `input_audio`, `file`), kept verbatim.
    Opaque {
        /// Its `type`.
        kind: String,
        raw: RawJson,
    },
}

impl Part {
    pub fn text(text: impl Into<String>) -> Part {
        Part::Text {
            text: text.into(),
            cache_control: None,
        }
    }

    fn approx_json_bytes(&self) -> usize {
        32 + match self {
            Part::Text { text, .. } => text.len(),
            Part::Image { source, .. } => match source {
                ImageSource::Url(u) => u.len(),
                ImageSource::Base64 { data, .. } => data.len() + 32,
            },
            Part::ToolCall {
                id,
                name,
                arguments_json,
                signature,
                ..
            } => {
                id.len()
                    + name.len()
                    + arguments_json.len()
                    + signature.as_ref().map_or(0, String::len)
            }
            Part::ToolResult {
                tool_call_id,
                content,
                ..
            } => tool_call_id.len() + content.iter().map(Part::approx_json_bytes).sum::<usize>(),
            Part::Reasoning { text, signature } => {
                text.len() + signature.as_ref().map_or(0, String::len)
            }
            Part::RedactedReasoning { data } => data.len(),
            Part::Opaque { raw, .. } => raw.get().len(),
        }
    }
}

/// What separates a tool call's own id from the provider signature carried inside it.
pub const TOOL_CALL_SIGNATURE_MARKER: &str = "__sig_";

/// The id a client of another format sees for a tool call: the id itself, or, when the provider
/// signed the call, `<id>__sig_<signature as unpadded base64url>`. OpenAI and Anthropic clients
/// send tool-call ids back verbatim, so the signature returns with the next turn
/// ([`split_tool_call_id`]); the id stays within `[A-Za-z0-9_-]` when the original did.
pub fn client_tool_call_id(id: &str, signature: Option<&str>) -> String {
    use base64::Engine as _;
    match signature.filter(|s| !s.is_empty()) {
        None => id.to_owned(),
        Some(sig) => {
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let mut out = String::with_capacity(id.len() + 8 + sig.len() * 4 / 3);
            out.push_str(id);
            out.push_str(TOOL_CALL_SIGNATURE_MARKER);
            b64.encode_string(sig.as_bytes(), &mut out);
            out
        }
    }
}

/// A tool-call id as a client sent it back: the original id and the signature it carried, if
/// any (the inverse of [`client_tool_call_id`]; an id whose tail does not decode is kept whole).
pub fn split_tool_call_id(id: &str) -> (String, Option<String>) {
    use base64::Engine as _;
    let Some(at) = id.rfind(TOOL_CALL_SIGNATURE_MARKER) else {
        return (id.to_owned(), None);
    };
    let tail = &id[at + TOOL_CALL_SIGNATURE_MARKER.len()..];
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    match b64
        .decode(tail)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
    {
        Some(sig) if !sig.is_empty() => (id[..at].to_owned(), Some(sig)),
        _ => (id.to_owned(), None),
    }
}

/// A function tool the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON schema of the arguments; `None`: the tool takes no arguments.
    pub input_schema: Option<RawJson>,
    /// OpenAI `function.strict`, Anthropic `strict`.
    pub strict: Option<bool>,
    pub cache_control: Option<RawJson>,
}

/// How the model should use the tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    /// Must call some tool (OpenAI `required`, Anthropic `any`).
    Required,
    /// Must call this tool.
    Tool(String),
}

/// The answer must be JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct StructuredOutput {
    /// OpenAI `json_schema.name`.
    pub name: Option<String>,
    pub description: Option<String>,
    /// The JSON schema; `None`: any JSON object (OpenAI `json_object`).
    pub schema: Option<RawJson>,
    pub strict: Option<bool>,
}

/// Thinking/reasoning as the client asked for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReasoningRequest {
    pub mode: Option<ReasoningMode>,
    pub effort: Option<ReasoningEffort>,
    /// Anthropic `thinking.display`.
    pub display: Option<ThinkingDisplay>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningMode {
    Disabled,
    /// Anthropic `thinking: {type: enabled, budget_tokens}`.
    Budget(u32),
    /// Anthropic `thinking: {type: adaptive}`: the model decides how much to think.
    Adaptive,
}

/// OpenAI `reasoning_effort`, Anthropic `output_config.effort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReasoningEffort {
    None,
    Minimal,
    Low,
    Medium,
    High,
    XHigh,
    Max,
}

impl ReasoningEffort {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Self::None,
            "minimal" => Self::Minimal,
            "low" => Self::Low,
            "medium" => Self::Medium,
            "high" => Self::High,
            "xhigh" => Self::XHigh,
            "max" => Self::Max,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Minimal => "minimal",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::XHigh => "xhigh",
            Self::Max => "max",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThinkingDisplay {
    Summarized,
    Omitted,
}

/// A whole (non-streamed) answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatResponse {
    /// The provider's id (`chatcmpl-...`, `msg_...`); encoders restyle it for the client.
    pub id: String,
    /// The model the provider says answered.
    pub model: String,
    /// OpenAI `created` (Unix seconds) when the provider gave one.
    pub created: Option<u64>,
    /// Text, tool calls, reasoning (with signature) and redacted reasoning, in order.
    pub content: Vec<Part>,
    pub finish: FinishReason,
    pub usage: Usage,
}

/// Token counts. See the module header for what `input_tokens` includes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// All prompt tokens, cache reads and writes included.
    pub input_tokens: u64,
    /// All generated tokens, reasoning included.
    pub output_tokens: u64,
    /// Prompt tokens read from the cache (part of `input_tokens`).
    pub cache_read_tokens: u64,
    /// Prompt tokens written to the cache (part of `input_tokens`).
    pub cache_write_tokens: u64,
    /// Generated reasoning tokens (part of `output_tokens`).
    pub reasoning_tokens: u64,
}

impl Usage {
    /// Prompt tokens neither read from nor written to the cache (Anthropic's `input_tokens`).
    pub fn uncached_input_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_sub(self.cache_read_tokens)
            .saturating_sub(self.cache_write_tokens)
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum FinishReason {
    /// A natural end (OpenAI `stop`, Anthropic `end_turn`).
    #[default]
    Stop,
    /// The token limit (OpenAI `length`, Anthropic `max_tokens`).
    Length,
    ToolCalls,
    ContentFilter,
    /// A stop sequence matched (Anthropic says which).
    StopSequence(Option<String>),
    /// The model refused (Anthropic `refusal`).
    Refusal,
    /// Any other reason, as the provider named it (Anthropic `pause_turn`,
    /// `model_context_window_exceeded`; OpenAI `function_call`).
    Other(String),
}

/// What kind of part a [`StreamEvent::PartStart`] opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartKind {
    Text,
    ToolCall {
        id: String,
        name: String,
        /// See [`Part::ToolCall`]'s `signature`.
        signature: Option<String>,
    },
    Reasoning,
    RedactedReasoning {
        data: String,
    },
}

/// An error reported inside a stream (or rendered by a stream encoder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    /// The HTTP status that best describes it (Anthropic's `overloaded_error` is 529).
    pub status: u16,
    /// The error type in the vocabulary of the format that reported it.
    pub error_type: String,
    pub message: String,
}

/// One event of a stream, in order. `index` numbers the parts of the answer from 0.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// The first event: the answer's id and model, and the usage known so far (Anthropic gives
    /// the input tokens here; OpenAI only at the end).
    MessageStart {
        id: String,
        model: String,
        usage: Usage,
    },
    PartStart {
        index: u32,
        kind: PartKind,
    },
    TextDelta {
        index: u32,
        text: String,
    },
    /// A fragment of a tool call's arguments JSON (not valid JSON on its own).
    ToolArgsDelta {
        index: u32,
        json: String,
    },
    ReasoningDelta {
        index: u32,
        text: String,
    },
    SignatureDelta {
        index: u32,
        signature: String,
    },
    PartStop {
        index: u32,
    },
    /// The cumulative usage so far (each replaces the previous one). OpenAI sends it after
    /// [`StreamEvent::Finish`].
    Usage(Usage),
    Finish(FinishReason),
    Error(StreamError),
    /// A keep-alive.
    Ping,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_ride_in_tool_call_ids_and_come_back() {
        assert_eq!(client_tool_call_id("call_1", None), "call_1");
        assert_eq!(client_tool_call_id("call_1", Some("")), "call_1");
        let sig = "CiQBjz1rX+/w==";
        let id = client_tool_call_id("call_1", Some(sig));
        assert!(id.starts_with("call_1__sig_"), "{id}");
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        assert_eq!(
            split_tool_call_id(&id),
            ("call_1".to_owned(), Some(sig.to_owned()))
        );
        assert_eq!(
            split_tool_call_id("toolu_01"),
            ("toolu_01".to_owned(), None)
        );
        // A marker followed by something that is not base64 is part of the id.
        assert_eq!(
            split_tool_call_id("a__sig_!!"),
            ("a__sig_!!".to_owned(), None)
        );
    }
}

//! The HTTP front's protocol limits, the circuit breaker's settings and the translation choices
//! as validated config values, with the documented defaults of the front (the config's leaf
//! types: the front, the pools and the codecs take them from here).

use std::time::Duration;

/// Protocol limits and timeouts of one listener. Defaults are the documented constants below.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most header lines in one request (431 past it).
    pub header_lines_max: usize,
    /// Most bytes in the request line plus headers (431 past it).
    pub header_bytes_max: usize,
    /// Most bytes in a request body, after chunked decoding (413 past it).
    pub body_bytes_max: usize,
    /// From the first byte of a request to the end of its headers.
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after this.
    pub idle_timeout: Duration,
    /// Longest gap while reading a request body.
    pub body_read_timeout: Duration,
    /// The whole body must arrive within this, counted from the end of the request head
    /// (408 `client_timeout` and the connection closed past it).
    pub body_timeout: Duration,
    /// Longest time one write to the client may block.
    pub write_timeout: Duration,
    /// Stack of each connection coroutine, in bytes.
    pub coroutine_stack_bytes: usize,
    /// Most open connections of the listener; a connection past it is answered 503 at once.
    pub connections_max: usize,
    /// Most bytes of request bodies the listener buffers at once, across all its connections; a
    /// body that would go past it is answered 503 (with `Retry-After`).
    pub body_buffer_bytes_max: usize,
}

pub const HEADER_LINES_MAX_DEFAULT: usize = 100;
pub const HEADER_BYTES_MAX_DEFAULT: usize = 32 * 1024;
pub const BODY_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;
pub const HEADER_READ_TIMEOUT_MS_DEFAULT: u64 = 10_000;
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 60_000;
pub const BODY_READ_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// A 16 MiB body needs about 2.2 Mbit/s to arrive within it.
pub const BODY_TIMEOUT_MS_DEFAULT: u64 = 60_000;
pub const WRITE_TIMEOUT_MS_DEFAULT: u64 = 30_000;
pub const COROUTINE_STACK_KB_DEFAULT: usize = 256;
/// Open connections per listener. The systemd unit's `LimitNOFILE` (1,048,576) leaves room for
/// both listeners at this cap plus every upstream connection. An idle keep-alive connection
/// costs about 24 KiB of resident memory (5,000 of them, release build), so about 1.5 GiB at
/// the cap.
pub const CONNECTIONS_MAX_DEFAULT: usize = 65_536;
/// Request body bytes buffered at once per listener: 16 bodies of the largest default size.
pub const BODY_BUFFER_BYTES_MAX_DEFAULT: usize = 256 * 1024 * 1024;
/// `LimitNOFILE` of systemd/deepintshield.service.
pub const SYSTEMD_LIMIT_NOFILE: usize = 1_048_576;

// The whole-body deadline is never shorter than one allowed gap.
const _: () = assert!(BODY_TIMEOUT_MS_DEFAULT >= BODY_READ_TIMEOUT_MS_DEFAULT);
// The largest body allowed by default fits the default budget, many times over.
const _: () = assert!(BODY_BUFFER_BYTES_MAX_DEFAULT >= 8 * BODY_BYTES_MAX_DEFAULT);
// Both listeners at their cap use at most a quarter of the unit's descriptors.
const _: () = assert!(2 * CONNECTIONS_MAX_DEFAULT <= SYSTEMD_LIMIT_NOFILE / 4);

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_lines_max: HEADER_LINES_MAX_DEFAULT,
            header_bytes_max: HEADER_BYTES_MAX_DEFAULT,
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
            header_read_timeout: Duration::from_millis(HEADER_READ_TIMEOUT_MS_DEFAULT),
            idle_timeout: Duration::from_millis(IDLE_TIMEOUT_MS_DEFAULT),
            body_read_timeout: Duration::from_millis(BODY_READ_TIMEOUT_MS_DEFAULT),
            body_timeout: Duration::from_millis(BODY_TIMEOUT_MS_DEFAULT),
            write_timeout: Duration::from_millis(WRITE_TIMEOUT_MS_DEFAULT),
            coroutine_stack_bytes: COROUTINE_STACK_KB_DEFAULT * 1024,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            body_buffer_bytes_max: BODY_BUFFER_BYTES_MAX_DEFAULT,
        }
    }
}

/// A provider's circuit breaker settings (see `crate::pool::breaker`).
#[derive(Clone, Debug)]
pub struct BreakerConfig {
    /// Off: never opens.
    pub enabled: bool,
    /// Open when failures / requests over the window reach this (0.0..=1.0)...
    pub failure_ratio: f64,
    /// ...and the window holds at least this many requests.
    pub min_requests: u32,
    pub window: Duration,
    /// Open after this many failures in a row (0 = off).
    pub consecutive_failures: u32,
    /// How long it stays open before letting probes through.
    pub open_for: Duration,
    /// Probe requests allowed while half-open; all must succeed to close.
    pub half_open_probes: u32,
}

/// How thinking is asked of an Anthropic model when the client gave only an effort (OpenAI
/// `reasoning_effort`). Models differ: Claude 4.5 and older know only `Budget`, the newest only
/// `Adaptive`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ThinkingStyle {
    /// `thinking: {type: adaptive}` and `output_config.effort`.
    #[default]
    Adaptive,
    /// `thinking: {type: enabled, budget_tokens}` with `crate::formats::thinking_budget_tokens` of the effort.
    Budget,
}

/// How a JSON-schema answer is asked of an Anthropic model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StructuredOutputStyle {
    /// A tool carrying the schema, forced with `tool_choice`; its `tool_use` input comes back as
    /// the answer's text. Works on every tool-capable model; disables thinking.
    #[default]
    ForcedTool,
    /// `output_config.format` (native structured outputs, newer models only).
    OutputFormat,
}

/// Which field carries the token limit to an OpenAI-format provider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MaxTokensField {
    /// `max_completion_tokens` (current OpenAI; required by reasoning models).
    #[default]
    MaxCompletionTokens,
    /// `max_tokens` (older OpenAI-compatible servers).
    MaxTokens,
}

/// Which tool-call ids an OpenAI-format provider accepts in a conversation's history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ToolCallIdFormat {
    /// Any string (OpenAI): ids are passed on as they are.
    #[default]
    Any,
    /// Exactly 9 letters or digits (Mistral): other ids of a translated request (Anthropic's
    /// `toolu_...`) are replaced by a 9-character digest of themselves, the same in every turn.
    Alphanumeric9,
}

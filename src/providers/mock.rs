//! The built-in `mock` provider: answers like an LLM after a configured latency, without any
//! network, in the API the client spoke (the request is read and the answer written by the same
//! codecs that translate for real providers). It echoes the last user message, calls a tool when
//! asked to, answers a tool result, and writes JSON for a structured-output request, so that
//! clients' tool round trips work end to end. It runs through the same pools as real providers,
//! so it also measures the gateway's own overhead.
//!
//! What it answers, by the request's last message (`system` messages aside):
//! - a tool result (an OpenAI `tool` message, an Anthropic `tool_result` block): `mock: tool
//!   result: <its text>`;
//! - `tool_choice` forces a tool, or the request offers tools and the last user text contains
//!   `use tool` (any case): a call of the forced tool, else the tool named as a whole word in that
//!   text, else the first tool, its arguments built from the tool's schema (every required
//!   property; strings are `mock.tool_text`);
//! - a structured output was asked for: a JSON object built from the schema the same way;
//! - otherwise `mock: <the last user text>`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::unsupported_operation;
use super::sse::{stream_duration_error, stream_idle_error};
use super::translate::count_tokens_estimate;
use super::{Call, StreamResult, StreamSink};
use crate::api::head::check_json_depth;
use crate::config::ProviderConfig;
use crate::error::ApiError;
use crate::formats::chat::RawJson;
use crate::formats::codec::{self, StreamEncoder};
use crate::formats::embeddings::{self, EmbeddingInput, EmbeddingsResponse};
use crate::formats::estimate_tokens;
use crate::formats::{
    AnswerOptions, ChatRequest, ChatResponse, FinishReason, Part, PartKind, Role, StreamEvent,
    Tool, ToolChoice,
};
use crate::job::{Answer, JobCtl, Operation, Usage};

/// Tokens added per message for role and framing, as OpenAI counts them.
const TOKENS_PER_MESSAGE: u64 = 3;
/// Longest single sleep while waiting, so a cancelled stream stops promptly.
const SLEEP_SLICE: Duration = Duration::from_millis(20);
/// The words in the last user message that make the mock call a tool.
const TOOL_TRIGGER: &str = "use tool";
/// Deepest nesting of a schema the mock builds a value for.
const SCHEMA_DEPTH_MAX: usize = 8;
/// Deepest JSON of a schema the mock parses: every level it reads ([`SCHEMA_DEPTH_MAX`] schema
/// objects, each with its `properties`, and an `enum` option). A deeper schema is not parsed (its
/// arguments are `{}`), so a client's nesting never sets how deep a worker's stack goes.
const SCHEMA_JSON_DEPTH_MAX: usize = 2 * SCHEMA_DEPTH_MAX + 2;
/// Length of a mock embedding vector when the request names no `dimensions`.
pub const MOCK_EMBEDDING_DIMENSIONS_DEFAULT: u32 = 1536;
/// Longest mock embedding vector.
pub const MOCK_EMBEDDING_DIMENSIONS_MAX: u32 = 8192;

pub struct MockProvider {
    latency: Duration,
    stream_chunks: usize,
    chunk_delay: Duration,
    /// The value of every string the mock makes up (tool arguments, structured answers).
    tool_text: String,
    next_id: AtomicU64,
}

/// What the mock answers: text or one tool call, and the token counts.
struct Reply {
    part: Part,
    usage: Usage,
}

impl MockProvider {
    pub fn new(cfg: &ProviderConfig) -> Self {
        MockProvider {
            latency: cfg.mock.latency,
            stream_chunks: cfg.mock.stream_chunks.max(1),
            chunk_delay: cfg.mock.chunk_delay,
            tool_text: cfg.mock.tool_text.clone(),
            next_id: AtomicU64::new(1),
        }
    }

    /// Read the request, decide the answer, then wait the configured latency (time to the first
    /// token of a stream).
    fn reply(&self, call: &Call<'_>) -> Result<Reply, ApiError> {
        #[cfg(feature = "fault-injection")]
        if call.job.upstream_model == "__panic__" {
            // Test-only trigger (the `fault-injection` feature, never in a release build): proves
            // a panicking job is answered 500 and the worker lives on.
            panic!("mock provider asked to panic");
        }
        #[cfg(feature = "fault-injection")]
        if call.job.upstream_model == "__stall__" {
            // Test-only trigger: a call that ignores its deadline and cancellation, as a worker
            // stuck in a library call would; the supervisor must replace this worker.
            std::thread::sleep(Duration::from_secs(10));
        }
        let request = &call.job.request;
        let req = codec::decode_request(request.api.format(), &request.body)?;
        let part = self.part_for(&req);
        let output = match &part {
            Part::Text { text, .. } => estimate_tokens(text),
            Part::ToolCall {
                name,
                arguments_json,
                ..
            } => estimate_tokens(name) + estimate_tokens(arguments_json),
            _ => 0,
        };
        let usage = Usage {
            input_tokens: prompt_tokens(&req),
            output_tokens: output.max(1),
            ..Usage::default()
        };
        self.wait(call.job.deadline, &call.job.ctl)?;
        Ok(Reply { part, usage })
    }

    fn part_for(&self, req: &ChatRequest) -> Part {
        // Instructions in the middle of a conversation (Claude Code sends one after the user's
        // turn) are not the turn being answered.
        let Some(last) = req.messages.iter().rev().find(|m| m.role != Role::System) else {
            return Part::text("mock: ");
        };
        let tool_result = last.content.iter().rev().find_map(|p| match p {
            Part::ToolResult { content, .. } => Some(last_text(content)),
            _ => None,
        });
        if let Some(text) = tool_result {
            return Part::text(format!("mock: tool result: {text}"));
        }
        let said = if last.role == Role::User {
            last_text(&last.content)
        } else {
            ""
        };
        let forced = match &req.tool_choice {
            Some(ToolChoice::Tool(name)) => req.tools.iter().find(|t| &t.name == name),
            Some(ToolChoice::Required) => named_tool(&req.tools, said).or(req.tools.first()),
            _ => None,
        };
        let asked = !req.tools.is_empty() && said.to_ascii_lowercase().contains(TOOL_TRIGGER);
        if forced.is_some() || asked {
            let tool = forced
                .or_else(|| named_tool(&req.tools, said))
                .unwrap_or(&req.tools[0]);
            let schema = tool.input_schema.as_ref().and_then(parse_schema);
            let arguments = self.value_for(schema.as_ref(), 0);
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            return Part::ToolCall {
                id: format!("call_mock{id:012x}"),
                name: tool.name.clone(),
                arguments_json: arguments.to_string(),
                cache_control: None,
                signature: None,
            };
        }
        if let Some(structured) = &req.structured_output {
            let schema = structured.schema.as_ref().and_then(parse_schema);
            return Part::text(self.value_for(schema.as_ref(), 0).to_string());
        }
        Part::text(format!("mock: {said}"))
    }

    /// A value of `schema`'s type: an object holds every required property (to
    /// [`SCHEMA_DEPTH_MAX`] levels).
    fn value_for(&self, schema: Option<&Value>, depth: usize) -> Value {
        let Some(schema) = schema.filter(|_| depth < SCHEMA_DEPTH_MAX) else {
            return Value::Object(Default::default());
        };
        let kind = schema
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("object");
        match kind {
            "string" => match schema.get("enum").and_then(Value::as_array) {
                Some(options) if !options.is_empty() => options[0].clone(),
                _ => Value::String(self.tool_text.clone()),
            },
            "integer" | "number" => Value::from(0),
            "boolean" => Value::Bool(false),
            "array" => Value::Array(Vec::new()),
            "null" => Value::Null,
            _ => {
                let mut object = serde_json::Map::new();
                let required = schema.get("required").and_then(Value::as_array);
                let properties = schema.get("properties");
                for name in required.into_iter().flatten().filter_map(Value::as_str) {
                    let property = properties.and_then(|p| p.get(name));
                    object.insert(name.to_string(), self.value_for(property, depth + 1));
                }
                Value::Object(object)
            }
        }
    }

    fn response(&self, call: &Call<'_>, reply: Reply) -> ChatResponse {
        let finish = match reply.part {
            Part::ToolCall { .. } => FinishReason::ToolCalls,
            _ => FinishReason::Stop,
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        ChatResponse {
            id: format!("mock{id:012x}"),
            model: call.job.upstream_model.clone(),
            created: Some(crate::formats::unix_now_s()),
            content: vec![reply.part],
            finish,
            usage: reply.usage,
        }
    }

    pub fn call(&self, call: &Call<'_>) -> Result<Answer, ApiError> {
        let request = &call.job.request;
        match request.api.operation() {
            Operation::CountTokens => return count_tokens_estimate(&request.body),
            Operation::Embeddings => return self.embeddings(call),
            Operation::Completions => {
                return Err(unsupported_operation("mock", Operation::Completions))
            }
            Operation::Chat => {}
        }
        let reply = self.reply(call)?;
        let usage = reply.usage;
        let resp = self.response(call, reply);
        let mut body = Vec::with_capacity(512);
        // The mock answers no reasoning: there is no reasoning state to carry.
        let opts = AnswerOptions::default();
        codec::encode_response(request.api.format(), &resp, &resp.model, opts, &mut body);
        Ok(Answer {
            status: 200,
            content_type: "application/json",
            body,
            headers: Vec::new(),
            usage,
        })
    }

    /// Stream the answer in the client's format: the text in `stream_chunks` pieces (or the tool
    /// call's arguments in as many fragments) `chunk_delay` apart, then the finish and the usage.
    /// A piece left empty (a text shorter than `stream_chunks`) is sent as a keep-alive.
    /// The stream keeps the bounds a real upstream's is held to (see [`MockProvider::pace`]).
    pub fn call_stream(
        &self,
        call: &Call<'_>,
        sink: &mut dyn StreamSink,
    ) -> Result<StreamResult, ApiError> {
        let request = &call.job.request;
        if request.api.operation() != Operation::Chat {
            return Err(unsupported_operation("mock", request.api.operation()));
        }
        let reply = self.reply(call)?;
        let usage = reply.usage;
        let done = |error| StreamResult::Streamed { error, usage };
        if !sink.start(Vec::new()) {
            return Ok(done(None));
        }
        let until = Instant::now() + call.stream_duration_max;
        let resp = self.response(call, reply);
        let opts = AnswerOptions {
            include_usage: request.wants_usage,
            reasoning_state: false,
        };
        let mut encoder = StreamEncoder::new(
            request.api.format(),
            &resp.model,
            opts,
            resp.created.unwrap_or(0),
        );
        let mut out = Vec::with_capacity(512);
        let mut send = |events: &[StreamEvent], out: &mut Vec<u8>| {
            for ev in events {
                encoder.encode(ev, out);
            }
            out.is_empty() || sink.event(out)
        };
        let start = StreamEvent::MessageStart {
            id: resp.id.clone(),
            model: resp.model.clone(),
            usage: Usage {
                input_tokens: usage.input_tokens,
                ..Usage::default()
            },
        };
        let (kind, text, args) = match &resp.content[0] {
            Part::ToolCall {
                id,
                name,
                arguments_json,
                ..
            } => (
                PartKind::ToolCall {
                    id: id.clone(),
                    name: name.clone(),
                    signature: None,
                },
                "",
                arguments_json.as_str(),
            ),
            Part::Text { text, .. } => (PartKind::Text, text.as_str(), ""),
            _ => (PartKind::Text, "", ""),
        };
        let piece_of = |s: &str| match kind {
            // An empty piece is no delta in any client API; a keep-alive keeps the cadence (and
            // lets a client that left be noticed at the next write).
            _ if s.is_empty() => StreamEvent::Ping,
            PartKind::ToolCall { .. } => StreamEvent::ToolArgsDelta {
                index: 0,
                json: s.to_string(),
            },
            _ => StreamEvent::TextDelta {
                index: 0,
                text: s.to_string(),
            },
        };
        let whole = if args.is_empty() { text } else { args };
        if !send(
            &[
                start,
                StreamEvent::PartStart {
                    index: 0,
                    kind: kind.clone(),
                },
            ],
            &mut out,
        ) {
            return Ok(done(None));
        }
        for piece in split_even(whole, self.stream_chunks) {
            match self.pace(call, until) {
                Ok(true) => {}
                Ok(false) => return Ok(done(None)),
                Err(cut) => return Ok(done(Some(cut))),
            }
            if !send(&[piece_of(piece)], &mut out) {
                return Ok(done(None));
            }
        }
        let end = [
            StreamEvent::PartStop { index: 0 },
            StreamEvent::Finish(resp.finish.clone()),
            StreamEvent::Usage(usage),
        ];
        for ev in &end {
            encoder.encode(ev, &mut out);
        }
        encoder.finish(&mut out);
        if sink.event(&mut out) {
            sink.complete();
        }
        Ok(done(None))
    }

    /// Deterministic embeddings: each text's vector is a unit vector drawn from a hash of the
    /// text, `dimensions` long (default [`MOCK_EMBEDDING_DIMENSIONS_DEFAULT`]), so equal texts get
    /// equal vectors and the answer is the same in every run.
    fn embeddings(&self, call: &Call<'_>) -> Result<Answer, ApiError> {
        let req = embeddings::decode_openai_request(&call.job.request.body)?;
        let dimensions = req
            .dimensions
            .unwrap_or(MOCK_EMBEDDING_DIMENSIONS_DEFAULT)
            .clamp(1, MOCK_EMBEDDING_DIMENSIONS_MAX) as usize;
        let (vectors, input_tokens) = match &req.input {
            EmbeddingInput::Texts(texts) => (
                texts
                    .iter()
                    .map(|t| unit_vector(t.as_bytes(), dimensions))
                    .collect(),
                texts.iter().map(|t| estimate_tokens(t)).sum(),
            ),
            EmbeddingInput::Tokens(lists) => (
                lists
                    .iter()
                    .map(|l| {
                        let bytes: Vec<u8> = l.iter().flat_map(|t| t.to_le_bytes()).collect();
                        unit_vector(&bytes, dimensions)
                    })
                    .collect(),
                lists.iter().map(|l| l.len() as u64).sum(),
            ),
        };
        self.wait(call.job.deadline, &call.job.ctl)?;
        let resp = EmbeddingsResponse {
            model: call.job.upstream_model.clone(),
            vectors,
            input_tokens,
        };
        let mut body = Vec::with_capacity(64 + resp.vectors.len() * dimensions * 12);
        embeddings::encode_openai_response(&resp, req.encoding, &mut body);
        Ok(Answer {
            status: 200,
            content_type: "application/json",
            body,
            headers: Vec::new(),
            usage: Usage {
                input_tokens,
                ..Usage::default()
            },
        })
    }

    /// Sleep the configured latency (this is a worker OS thread), but never past the deadline.
    fn wait(&self, deadline: Instant, ctl: &JobCtl) -> Result<(), ApiError> {
        if self.latency.is_zero() {
            return Ok(());
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if self.latency > remaining {
            self.pause(remaining, ctl);
            return Err(ApiError::request_timeout());
        }
        if !self.pause(self.latency, ctl) {
            return Err(ApiError::client_cancelled());
        }
        Ok(())
    }

    /// Wait `chunk_delay` before the next chunk, as an upstream read would: a pause longer than
    /// `stream_idle_timeout` ends the stream as idle after that timeout, one past the stream's
    /// `until` ends it as too long at `until`. Ok(false) when the job was stopped meanwhile.
    fn pace(&self, call: &Call<'_>, until: Instant) -> Result<bool, ApiError> {
        let left = until.saturating_duration_since(Instant::now());
        let idle = call.stream_idle_timeout;
        if self.chunk_delay <= idle && self.chunk_delay <= left {
            return Ok(self.pause(self.chunk_delay, &call.job.ctl));
        }
        let (wait, cut) = if left <= idle {
            let cut = stream_duration_error("provider mock: the stream ran longer than allowed");
            (left, cut)
        } else {
            (idle, stream_idle_error("provider mock: the stream stalled"))
        };
        if !self.pause(wait, &call.job.ctl) {
            return Ok(false);
        }
        Err(cut)
    }

    /// Sleep `d` in slices, stopping early when the job is cancelled; false when cancelled.
    fn pause(&self, d: Duration, ctl: &JobCtl) -> bool {
        let until = Instant::now() + d;
        loop {
            if ctl.is_cancelled() {
                return false;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(SLEEP_SLICE));
        }
    }
}

/// A unit vector of `dimensions` drawn from `seed` (FNV-1a, then xorshift64*).
fn unit_vector(seed: &[u8], dimensions: usize) -> Vec<f32> {
    let mut x = seed.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) | 1;
    let mut v: Vec<f32> = (0..dimensions)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
            (r as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let norm = v
        .iter()
        .map(|f| f * f)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.iter_mut().for_each(|f| *f /= norm);
    v
}

/// The last text part of `content` (the user's own words: clients put context blocks first).
fn last_text(content: &[Part]) -> &str {
    content
        .iter()
        .rev()
        .find_map(|p| match p {
            Part::Text { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .unwrap_or("")
}

/// The tool whose name appears as a whole word in `text`.
fn named_tool<'a>(tools: &'a [Tool], text: &str) -> Option<&'a Tool> {
    let words: Vec<&str> = text
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
        .collect();
    tools.iter().find(|t| words.contains(&t.name.as_str()))
}

/// Prompt tokens as OpenAI counts them roughly: the text of every message and the system prompt
/// (about four characters a token) plus a few tokens of framing per message.
fn prompt_tokens(req: &ChatRequest) -> u64 {
    let system: u64 = req.system.iter().map(|b| estimate_tokens(&b.text)).sum();
    let messages: u64 = req
        .messages
        .iter()
        .map(|m| {
            let text: u64 = m
                .content
                .iter()
                .map(|p| match p {
                    Part::Text { text, .. } => estimate_tokens(text),
                    Part::ToolCall { arguments_json, .. } => estimate_tokens(arguments_json),
                    Part::ToolResult { content, .. } => estimate_tokens(last_text(content)),
                    _ => 0,
                })
                .sum();
            TOKENS_PER_MESSAGE + text
        })
        .sum();
    system + messages + TOKENS_PER_MESSAGE
}

/// `text` cut into `n` pieces of about equal character counts (some empty when `text` is short).
fn split_even(text: &str, n: usize) -> Vec<&str> {
    let n = n.max(1);
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    let chars = bounds.len() - 1;
    (0..n)
        .map(|k| &text[bounds[k * chars / n]..bounds[(k + 1) * chars / n]])
        .collect()
}

/// A schema as JSON, when it nests at most [`SCHEMA_JSON_DEPTH_MAX`] levels (checked without
/// recursion before serde_json recurses into it).
fn parse_schema(schema: &RawJson) -> Option<Value> {
    let text = schema.get();
    check_json_depth(text.as_bytes(), SCHEMA_JSON_DEPTH_MAX).ok()?;
    serde_json::from_str(text).ok()
}

#[cfg(test)]
mod tests {
    use super::split_even;

    #[test]
    fn split_even_keeps_all_text() {
        for (text, n) in [
            ("mock: hello world", 4),
            ("ab", 5),
            ("héllo wörld", 3),
            ("", 2),
        ] {
            let parts = split_even(text, n);
            assert_eq!(parts.len(), n);
            assert_eq!(parts.concat(), text);
        }
    }
}

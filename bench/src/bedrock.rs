//! The mock's AWS Bedrock runtime: `POST /model/{modelId}/converse`, `/converse-stream` and
//! `/invoke`, answered as AWS does: SigV4 checked against one key pair, AWS-shaped errors
//! (`x-amzn-errortype` and a JSON `{"message": ...}`), Converse validation, text echo or tool
//! use, usage with cache tokens, and fault injection by rate and by directives in the model id.
//! The stream body is in `bedrock_stream.rs`, the embedding models in `embeddings.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use deepintshield::http::{Method, Request, Response};
use deepintshield::providers::aws_credentials::Credentials;
use deepintshield::providers::eventstream;
use deepintshield::providers::sigv4::{self, Expected, Incoming, Settings, SERVICE_BEDROCK};
use serde_json::{json, Map, Value};

use crate::bedrock_stream::{self, StreamFault, StreamPlan};
use crate::completion::directive_number;
use crate::dist::LATENCY_MAX;
use crate::embeddings;
use crate::faults::Fault;

/// Text in the last user message that makes a request with `toolConfig` answer with a tool call.
pub const TOOL_TRIGGER: &str = "use tool";
/// The region signatures are checked for unless `--aws-region` says otherwise.
pub const REGION_DEFAULT: &str = "us-east-1";
/// Most content deltas of one stream, so a typo cannot make a stream endless.
pub const STREAM_CHUNKS_MAX: u64 = 100_000;
/// Most messages, and content blocks per message, validated in one Converse request.
const MESSAGES_MAX: usize = 10_000;

/// The `x-amzn-errortype` suffix of Bedrock's own errors and of the request-signing layer's.
const BEDROCK_NS: &str = "http://internal.amazon.com/coral/com.amazon.bedrock/";
const CORAL_NS: &str = "http://internal.amazon.com/coral/com.amazon.coral.service/";

/// The key pair (and session token) signatures must be made with, and their region.
pub struct Auth {
    pub credentials: Credentials,
    pub region: String,
}

/// The three runtime operations served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Converse,
    ConverseStream,
    Invoke,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::Converse => "converse",
            Operation::ConverseStream => "converse-stream",
            Operation::Invoke => "invoke",
        }
    }
}

/// Whether a path is one of the mock's Bedrock paths (`/model/...`).
pub fn is_bedrock_path(path: &str) -> bool {
    path.starts_with("/model/")
}

/// The operation and the decoded model id of `POST /model/{modelId}/{operation}`. The model id is
/// one path segment: an ARN's `/` must travel as `%2F`.
pub fn route(method: Method, path: &str) -> Option<(Operation, String)> {
    let rest = path.strip_prefix("/model/")?;
    let (id, action) = rest.rsplit_once('/')?;
    if id.is_empty() || id.contains('/') || method != Method::Post {
        return None;
    }
    let op = match action {
        "converse" => Operation::Converse,
        "converse-stream" => Operation::ConverseStream,
        "invoke" => Operation::Invoke,
        _ => return None,
    };
    let id = String::from_utf8(sigv4::percent_decode(id)).ok()?;
    Some((op, id))
}

/// The decoded model id of a Bedrock path, for the record of the last request.
pub fn model_id(path: &str) -> String {
    path.strip_prefix("/model/")
        .and_then(|r| r.rsplit_once('/'))
        .map(|(id, _)| String::from_utf8_lossy(&sigv4::percent_decode(id)).into_owned())
        .unwrap_or_default()
}

/// What the rest of the mock decides per request: the `--error-rate` draw, a `--latency` sample,
/// and the stream pacing flags.
pub struct Knobs<'a> {
    pub draw_fault: &'a dyn Fn() -> Option<Fault>,
    pub sample_latency: &'a dyn Fn() -> Duration,
    pub stream_chunks: u64,
    pub chunk_delay: Duration,
    pub stall: Duration,
}

/// Counters shown under `bedrock` in `/mock/stats`.
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub converse: AtomicU64,
    pub converse_stream: AtomicU64,
    pub invoke: AtomicU64,
    pub ok: AtomicU64,
    pub signature_rejected: AtomicU64,
    pub injected: AtomicU64,
    pub streams_started: AtomicU64,
    pub streams_completed: AtomicU64,
    pub streams_failed: AtomicU64,
    pub streams_aborted: AtomicU64,
    pub streams_reset: AtomicU64,
    pub crc_corrupted: AtomicU64,
}

pub struct Bedrock {
    auth: Option<Auth>,
    /// `--bedrock-bad-crc-after`: every stream corrupts a CRC after this many deltas.
    bad_crc_after: Option<usize>,
    counters: Arc<Counters>,
    seq: AtomicU64,
}

/// An AWS error response: the status, `x-amzn-errortype: TYPE:NAMESPACE`, a request id and
/// `{"message": ...}`.
pub fn aws_error(
    status: u16,
    error_type: &str,
    namespace: &str,
    message: &str,
    id: &str,
) -> Response {
    let body = json!({ "message": message });
    let mut r = Response::json(status, serde_json::to_vec(&body).unwrap_or_default());
    r.headers
        .push(("x-amzn-errortype", format!("{error_type}:{namespace}")));
    r.headers.push(("x-amzn-requestid", id.to_string()));
    r
}

/// The error type and message Bedrock answers with for a status.
pub fn status_error_type(status: u16) -> (&'static str, &'static str) {
    match status {
        403 => (
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
        ),
        404 => (
            "ResourceNotFoundException",
            "Could not resolve the foundation model from the provided model identifier.",
        ),
        408 => (
            "ModelTimeoutException",
            "Model has timed out in processing the request. Try your request again.",
        ),
        424 => (
            "ModelErrorException",
            "The model produced an invalid response.",
        ),
        429 => (
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        ),
        503 => (
            "ServiceUnavailableException",
            "Bedrock is unable to process your request.",
        ),
        400..=499 => ("ValidationException", "mock: injected ValidationException"),
        _ => (
            "InternalServerException",
            "The server encountered an internal error while processing the request.",
        ),
    }
}

fn validation(message: impl AsRef<str>, id: &str) -> Response {
    aws_error(400, "ValidationException", BEDROCK_NS, message.as_ref(), id)
}

const START_WITH_USER: &str = "A conversation must start with a user message. Try again with a \
                               conversation that starts with a user message.";
/// Longest tool name Bedrock accepts (its pattern: `[a-zA-Z0-9_-]+`).
const TOOL_NAME_CHARS_MAX: usize = 64;

fn not_null(path: &str) -> String {
    format!(
        "1 validation error detected: Value null at '{path}' failed to satisfy constraint: \
         Member must not be null"
    )
}

/// A stream fault named in the model id (`failafter-<k>` and friends), if any.
fn stream_fault(directives: &str) -> Option<(usize, StreamFault)> {
    let exception = |t: &'static str, status: u64, message: &str| {
        let mut payload = json!({ "message": message });
        if t == "modelStreamErrorException" {
            payload["originalStatusCode"] = json!(status);
            payload["originalMessage"] = json!("mock: the model failed mid-stream");
        }
        StreamFault::Exception {
            exception_type: t,
            payload,
        }
    };
    let table: [(&str, StreamFault); 7] = [
        (
            "failafter-",
            exception(
                "modelStreamErrorException",
                500,
                "mock: injected model stream error",
            ),
        ),
        (
            "throttleafter-",
            exception(
                "throttlingException",
                429,
                "Too many requests, please wait before trying again.",
            ),
        ),
        (
            "unavailableafter-",
            exception(
                "serviceUnavailableException",
                503,
                "Bedrock is unable to process your request.",
            ),
        ),
        (
            "internalafter-",
            exception(
                "internalServerException",
                500,
                "The server encountered an internal error while processing the request.",
            ),
        ),
        (
            "validationafter-",
            exception(
                "validationException",
                400,
                "mock: injected validation error",
            ),
        ),
        (
            "errorafter-",
            StreamFault::Error {
                code: "InternalFailure",
                message: "mock: injected stream error message",
            },
        ),
        ("resetafter-", StreamFault::Reset),
    ];
    table
        .into_iter()
        .find_map(|(prefix, f)| directive_number(directives, prefix).map(|k| (k as usize, f)))
}

impl Bedrock {
    pub fn new(auth: Option<Auth>, bad_crc_after: Option<usize>) -> Bedrock {
        Bedrock {
            auth,
            bad_crc_after,
            counters: Arc::new(Counters::default()),
            seq: AtomicU64::new(0),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    fn request_id(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        format!("6d6f636b-0000-4000-8000-{n:012x}")
    }

    pub fn handle(&self, req: &Request, knobs: &Knobs<'_>) -> Response {
        let c = &self.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        let id = self.request_id();
        let Some((op, model)) = route(req.method, &req.path) else {
            return aws_error(
                404,
                "UnknownOperationException",
                CORAL_NS,
                &format!(
                    "mock: no Bedrock runtime operation at {:?} {}",
                    req.method, req.path
                ),
                &id,
            );
        };
        if let Err(e) = self.check_signature(req) {
            c.signature_rejected.fetch_add(1, Ordering::Relaxed);
            return aws_error(e.status(), e.error_type(), CORAL_NS, &e.message(), &id);
        }
        match op {
            Operation::Converse => &c.converse,
            Operation::ConverseStream => &c.converse_stream,
            Operation::Invoke => &c.invoke,
        }
        .fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        // Directives follow `-` or start the id; model ids use `.` and `:` as separators too.
        let directives = model.replace(['.', ':'], "-");
        match (knobs.draw_fault)() {
            Some(Fault::Status(code)) => {
                c.injected.fetch_add(1, Ordering::Relaxed);
                let (t, m) = status_error_type(code);
                return aws_error(code, t, BEDROCK_NS, m, &id);
            }
            Some(Fault::Reset) => {
                c.injected.fetch_add(1, Ordering::Relaxed);
                req.abort_handle().abort();
                return Response::json(500, Vec::new()); // never sent: the write fails
            }
            Some(Fault::Stall) => may::coroutine::sleep(knobs.stall),
            None => {}
        }
        let latency = match directive_number(&directives, "delay-") {
            Some(ms) => Duration::from_millis(ms).min(LATENCY_MAX),
            None => (knobs.sample_latency)(),
        };
        if !latency.is_zero() {
            may::coroutine::sleep(latency);
        }
        if let Some(status) = directive_number(&directives, "status-") {
            if (400..=599).contains(&status) {
                c.injected.fetch_add(1, Ordering::Relaxed);
                let (t, m) = status_error_type(status as u16);
                return aws_error(status as u16, t, BEDROCK_NS, m, &id);
            }
        }
        if directives.contains("garbage") {
            return garbage(op, &id);
        }
        let body: Value = match serde_json::from_slice(&req.body) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                return validation(
                    "Malformed input request, please reformat your input and try again.",
                    &id,
                )
            }
        };
        match op {
            Operation::Invoke => {
                let r = embeddings::invoke(&model, &body, started, &id);
                if r.status == 200 {
                    c.ok.fetch_add(1, Ordering::Relaxed);
                }
                r
            }
            Operation::Converse | Operation::ConverseStream => {
                let conv = match Conversation::parse(&body) {
                    Ok(conv) => conv,
                    Err(m) => return validation(m, &id),
                };
                let answer = conv.answer(&id, directives.contains("cachewrite"));
                if op == Operation::Converse {
                    c.ok.fetch_add(1, Ordering::Relaxed);
                    return converse_response(&answer, started, &id);
                }
                let chunks = directive_number(&directives, "chunks-")
                    .unwrap_or(knobs.stream_chunks)
                    .clamp(1, STREAM_CHUNKS_MAX) as usize;
                let plan = StreamPlan {
                    delay: directive_number(&directives, "chunkdelay-")
                        .map_or(knobs.chunk_delay, Duration::from_millis)
                        .min(LATENCY_MAX),
                    fault: stream_fault(&directives),
                    bad_crc_after: directive_number(&directives, "badcrcafter-")
                        .map(|k| k as usize)
                        .or(self.bad_crc_after),
                    abort: Some(req.abort_handle()),
                };
                match bedrock_stream::build(
                    &answer,
                    chunks,
                    plan,
                    started,
                    Arc::clone(&self.counters),
                ) {
                    Ok(stream) => {
                        let mut r = Response::stream(200, eventstream::MIME, Box::new(stream));
                        r.headers.push(("x-amzn-requestid", id));
                        r
                    }
                    Err(e) => aws_error(500, "InternalServerException", BEDROCK_NS, &e, &id),
                }
            }
        }
    }

    fn check_signature(&self, req: &Request) -> Result<(), sigv4::VerifyError> {
        let Some(auth) = &self.auth else {
            return Ok(());
        };
        let headers: Vec<(&str, &[u8])> = req.headers.iter().collect();
        let method = match req.method {
            Method::Post => "POST",
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Patch => "PATCH",
            Method::Other => "OTHER",
        };
        let incoming = Incoming {
            method,
            path: &req.path,
            query: &req.query,
            headers: &headers,
            body: &req.body,
        };
        let expected = Expected {
            credentials: &auth.credentials,
            region: &auth.region,
            service: SERVICE_BEDROCK,
            settings: Settings::default(),
        };
        sigv4::verify(&incoming, &expected, SystemTime::now()).map(|_| ())
    }

    /// The `bedrock` object of `/mock/stats`.
    pub fn stats(&self) -> Value {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "requests": get(&c.requests),
            "converse": get(&c.converse),
            "converse_stream": get(&c.converse_stream),
            "invoke": get(&c.invoke),
            "ok": get(&c.ok),
            "signature_rejected": get(&c.signature_rejected),
            "injected": get(&c.injected),
            "streams_started": get(&c.streams_started),
            "streams_completed": get(&c.streams_completed),
            "streams_failed": get(&c.streams_failed),
            "streams_aborted": get(&c.streams_aborted),
            "streams_reset": get(&c.streams_reset),
            "crc_corrupted": get(&c.crc_corrupted),
        })
    }
}

/// A 200 whose body is not what the operation promises.
fn garbage(op: Operation, id: &str) -> Response {
    let mut r = match op {
        Operation::ConverseStream => {
            let mut r = Response::json(200, b"<html>this is not an event stream</html>".to_vec());
            r.content_type = eventstream::MIME;
            r
        }
        _ => Response::json(200, b"<html>this is not json".to_vec()),
    };
    r.headers.push(("x-amzn-requestid", id.to_string()));
    r
}

/// A validated Converse request, reduced to what the answer needs.
#[derive(Debug, Default)]
pub struct Conversation {
    /// Characters of all text in `system` and `messages`.
    pub prompt_chars: usize,
    /// Of those, the characters before the first `cachePoint`.
    pub cached_chars: usize,
    pub last_user_text: String,
    pub tool: Option<ToolChoice>,
    pub max_tokens: Option<u64>,
    pub stop_sequences: Vec<String>,
}

/// The tool the answer calls, and its input.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolChoice {
    pub name: String,
    pub input: Value,
}

/// What the mock answers.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub text: String,
    /// `(toolUseId, name, input)`.
    pub tool_use: Option<(String, String, Value)>,
    pub stop_reason: &'static str,
    pub usage: Value,
}

/// Where the text of a block goes for counting.
struct Texts<'a> {
    chars: usize,
    cached: Option<usize>,
    last_user: &'a mut String,
}

impl Conversation {
    /// Checks a Converse body as Bedrock does (the parts a translator can get wrong) and reduces
    /// it. `Err` carries the ValidationException message.
    pub fn parse(body: &Value) -> Result<Conversation, String> {
        let Some(messages) = body.get("messages").filter(|m| !m.is_null()) else {
            return Err(not_null("messages"));
        };
        let Some(messages) = messages.as_array() else {
            return Err(
                "1 validation error detected: Value at 'messages' failed to satisfy \
                        constraint: Member must be a list"
                    .into(),
            );
        };
        if messages.is_empty() {
            return Err(START_WITH_USER.into());
        }
        if messages.len() > MESSAGES_MAX {
            return Err(format!("mock: more than {MESSAGES_MAX} messages"));
        }
        let tool_config = body.get("toolConfig").filter(|t| !t.is_null());
        let mut conv = Conversation::default();
        let mut last_user = String::new();
        let mut texts = Texts {
            chars: 0,
            cached: None,
            last_user: &mut last_user,
        };
        if let Some(system) = body.get("system").filter(|s| !s.is_null()) {
            let Some(blocks) = system.as_array() else {
                return Err(
                    "1 validation error detected: Value at 'system' failed to satisfy \
                            constraint: Member must be a list"
                        .into(),
                );
            };
            for (i, b) in blocks.iter().enumerate() {
                system_block(b, i, &mut texts)?;
            }
        }
        let mut uses_tools = false;
        let mut prev_role = "";
        for (i, m) in messages.iter().enumerate() {
            let role = match m.get("role").and_then(Value::as_str) {
                Some(r @ ("user" | "assistant")) => r,
                Some(r) => {
                    return Err(format!(
                        "1 validation error detected: Value '{r}' at 'messages.{}.member.role' \
                         failed to satisfy constraint: Member must satisfy enum value set: \
                         [user, assistant]",
                        i + 1
                    ))
                }
                None => return Err(not_null(&format!("messages.{}.member.role", i + 1))),
            };
            if i == 0 && role != "user" {
                return Err(START_WITH_USER.into());
            }
            if role == prev_role {
                return Err(
                    "A conversation must alternate between user and assistant roles. \
                            Make sure the conversation alternates between user and assistant \
                            roles and try again."
                        .into(),
                );
            }
            prev_role = role;
            let Some(content) = m.get("content").and_then(Value::as_array) else {
                return Err(not_null(&format!("messages.{}.member.content", i + 1)));
            };
            if content.len() > MESSAGES_MAX {
                return Err(format!("mock: more than {MESSAGES_MAX} content blocks"));
            }
            if role == "user" {
                texts.last_user.clear();
            }
            for (j, b) in content.iter().enumerate() {
                uses_tools |= content_block(b, i, j, role == "user", &mut texts)?;
            }
        }
        if uses_tools && tool_config.is_none() {
            return Err(
                "The toolConfig field must be defined when using toolUse and toolResult \
                        content blocks."
                    .into(),
            );
        }
        conv.prompt_chars = texts.chars;
        conv.cached_chars = texts.cached.unwrap_or(0);
        if let Some(cfg) = body.get("inferenceConfig").filter(|c| !c.is_null()) {
            inference_config(cfg, &mut conv)?;
        }
        conv.last_user_text = last_user;
        if let Some(tc) = tool_config {
            let tool = pick_tool(tc)?;
            let triggered = conv
                .last_user_text
                .to_ascii_lowercase()
                .contains(TOOL_TRIGGER);
            if triggered {
                let input = tool_input(&tool.1, &conv.last_user_text);
                conv.tool = Some(ToolChoice {
                    name: tool.0,
                    input,
                });
            }
        }
        Ok(conv)
    }

    /// The answer: a tool call when triggered, else `mock: <last user text>` cut by
    /// `stopSequences` and `maxTokens`.
    pub fn answer(&self, request_id: &str, cache_write: bool) -> Answer {
        let (mut text, mut stop_reason, tool_use) = match &self.tool {
            Some(t) => (
                format!("mock: calling {}", t.name),
                "tool_use",
                Some((
                    format!("tooluse_mock{}", &request_id[request_id.len() - 12..]),
                    t.name.clone(),
                    t.input.clone(),
                )),
            ),
            None => (format!("mock: {}", self.last_user_text), "end_turn", None),
        };
        if tool_use.is_none() {
            if let Some(at) = self
                .stop_sequences
                .iter()
                .filter(|s| !s.is_empty())
                .filter_map(|s| text.find(s.as_str()))
                .min()
            {
                text.truncate(at);
                stop_reason = "stop_sequence";
            }
            if let Some(max) = self.max_tokens {
                let max_chars = usize::try_from(max.saturating_mul(4)).unwrap_or(usize::MAX);
                if text.chars().count() > max_chars {
                    text = text.chars().take(max_chars).collect();
                    stop_reason = "max_tokens";
                }
            }
        }
        let tool_chars = tool_use
            .as_ref()
            .map_or(0, |(_, _, input)| input.to_string().chars().count());
        let output = (text.chars().count() + tool_chars).div_ceil(4) as u64;
        let cached = self.cached_chars.div_ceil(4) as u64;
        let input = (self.prompt_chars - self.cached_chars).div_ceil(4) as u64;
        let (read, write) = if cache_write {
            (0, cached)
        } else {
            (cached, 0)
        };
        let usage = json!({
            "inputTokens": input,
            "outputTokens": output,
            "totalTokens": input + output + read + write,
            "cacheReadInputTokens": read,
            "cacheWriteInputTokens": write,
        });
        Answer {
            text,
            tool_use,
            stop_reason,
            usage,
        }
    }
}

fn system_block(b: &Value, i: usize, texts: &mut Texts<'_>) -> Result<(), String> {
    let Some(obj) = b.as_object() else {
        return Err(format!("mock: system.{} is not an object", i + 1));
    };
    if let Some(t) = obj.get("text") {
        let Some(t) = t.as_str() else {
            return Err(format!("mock: system.{}.text is not a string", i + 1));
        };
        texts.chars += t.chars().count();
    } else if obj.contains_key("cachePoint") {
        texts.cached.get_or_insert(texts.chars);
    } else if !obj.contains_key("guardContent") {
        return Err(format!(
            "mock: system.{} has none of text, cachePoint, guardContent",
            i + 1
        ));
    }
    Ok(())
}

/// Validates one content block and counts its text; true when it is a toolUse or toolResult.
fn content_block(
    b: &Value,
    i: usize,
    j: usize,
    user: bool,
    texts: &mut Texts<'_>,
) -> Result<bool, String> {
    const KINDS: [&str; 12] = [
        "text",
        "image",
        "document",
        "video",
        "audio",
        "toolUse",
        "toolResult",
        "guardContent",
        "cachePoint",
        "reasoningContent",
        "citationsContent",
        "searchResult",
    ];
    let at = format!("messages.{}.member.content.{}", i + 1, j + 1);
    let Some(obj) = b.as_object() else {
        return Err(format!("mock: {at} is not an object"));
    };
    let mut kinds = obj.keys().filter(|k| KINDS.contains(&k.as_str()));
    let (Some(kind), None) = (kinds.next(), kinds.next()) else {
        return Err(format!(
            "mock: {at} must have exactly one of {}",
            KINDS.join(", ")
        ));
    };
    if let Some(unknown) = obj.keys().find(|k| !KINDS.contains(&k.as_str())) {
        return Err(format!("mock: {at} has an unknown member {unknown:?}"));
    }
    match kind.as_str() {
        "text" => {
            let Some(t) = obj["text"].as_str() else {
                return Err(format!("mock: {at}.text is not a string"));
            };
            texts.chars += t.chars().count();
            if user {
                texts.last_user.push_str(t);
            }
            Ok(false)
        }
        "cachePoint" => {
            texts.cached.get_or_insert(texts.chars);
            Ok(false)
        }
        "toolUse" => {
            let t = &obj["toolUse"];
            for k in ["toolUseId", "name"] {
                if t.get(k).and_then(Value::as_str).is_none() {
                    return Err(not_null(&format!("{at}.member.toolUse.{k}")));
                }
            }
            if t.get("input").is_none_or(Value::is_null) {
                return Err(not_null(&format!("{at}.member.toolUse.input")));
            }
            texts.chars += t["input"].to_string().chars().count();
            Ok(true)
        }
        "toolResult" => {
            let t = &obj["toolResult"];
            if t.get("toolUseId").and_then(Value::as_str).is_none() {
                return Err(not_null(&format!("{at}.member.toolResult.toolUseId")));
            }
            let Some(parts) = t.get("content").and_then(Value::as_array) else {
                return Err(not_null(&format!("{at}.member.toolResult.content")));
            };
            for p in parts {
                let text = match (p.get("text"), p.get("json")) {
                    (Some(Value::String(s)), _) => s.clone(),
                    (_, Some(j)) => j.to_string(),
                    _ => String::new(),
                };
                texts.chars += text.chars().count();
                if user {
                    texts.last_user.push_str(&text);
                }
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

fn inference_config(cfg: &Value, conv: &mut Conversation) -> Result<(), String> {
    let Some(obj) = cfg.as_object() else {
        return Err("mock: inferenceConfig is not an object".into());
    };
    if let Some(m) = obj.get("maxTokens") {
        match m.as_u64() {
            Some(n) if n >= 1 => conv.max_tokens = Some(n),
            _ => {
                return Err(format!(
                    "1 validation error detected: Value '{m}' at 'inferenceConfig.maxTokens' \
                     failed to satisfy constraint: Member must have value greater than or equal to 1"
                ))
            }
        }
    }
    for k in ["temperature", "topP"] {
        if let Some(v) = obj.get(k) {
            if !v.as_f64().is_some_and(|x| (0.0..=1.0).contains(&x)) {
                return Err(format!(
                    "1 validation error detected: Value '{v}' at 'inferenceConfig.{k}' failed \
                     to satisfy constraint: Member must have value between 0 and 1"
                ));
            }
        }
    }
    if let Some(s) = obj.get("stopSequences") {
        let Some(list) = s.as_array() else {
            return Err("mock: inferenceConfig.stopSequences is not a list".into());
        };
        for v in list {
            let Some(v) = v.as_str() else {
                return Err("mock: inferenceConfig.stopSequences holds a non-string".into());
            };
            conv.stop_sequences.push(v.to_string());
        }
    }
    Ok(())
}

/// The tool to call: `toolChoice.tool.name` when given, else the first tool. Validates the
/// `toolConfig` shape.
fn pick_tool(tc: &Value) -> Result<(String, Value), String> {
    let Some(tools) = tc.get("tools").and_then(Value::as_array) else {
        return Err(not_null("toolConfig.tools"));
    };
    if tools.is_empty() {
        return Err(
            "1 validation error detected: Value '[]' at 'toolConfig.tools' failed to \
                    satisfy constraint: Member must have length greater than or equal to 1"
                .into(),
        );
    }
    let mut specs = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let Some(spec) = t.get("toolSpec") else {
            if t.get("cachePoint").is_some() || t.get("systemTool").is_some() {
                continue;
            }
            return Err(not_null(&format!(
                "toolConfig.tools.{}.member.toolSpec",
                i + 1
            )));
        };
        let Some(name) = spec.get("name").and_then(Value::as_str) else {
            return Err(not_null(&format!(
                "toolConfig.tools.{}.member.toolSpec.name",
                i + 1
            )));
        };
        let name_ok = name.len() <= TOOL_NAME_CHARS_MAX
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok || name.is_empty() {
            return Err(format!(
                "1 validation error detected: Value '{name}' at \
                 'toolConfig.tools.{}.member.toolSpec.name' failed to satisfy constraint: Member \
                 must satisfy regular expression pattern: [a-zA-Z0-9_-]+",
                i + 1
            ));
        }
        let Some(schema) = spec.pointer("/inputSchema/json").filter(|s| s.is_object()) else {
            return Err(not_null(&format!(
                "toolConfig.tools.{}.member.toolSpec.inputSchema",
                i + 1
            )));
        };
        specs.push((name.to_string(), schema.clone()));
    }
    let wanted = tc.pointer("/toolChoice/tool/name").and_then(Value::as_str);
    let chosen = match wanted {
        Some(w) => specs.iter().find(|(n, _)| n == w).ok_or_else(|| {
            format!("mock: toolChoice names {w:?}, which is not in toolConfig.tools")
        })?,
        None => specs
            .first()
            .ok_or_else(|| "mock: toolConfig.tools has no toolSpec".to_string())?,
    };
    Ok(chosen.clone())
}

/// A tool input that satisfies the schema's `required` properties: strings get the user's
/// text, numbers 1, booleans true, arrays and objects empty.
pub fn tool_input(schema: &Value, text: &str) -> Value {
    let mut input = Map::new();
    let props = schema.get("properties");
    for name in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let ty = props
            .and_then(|p| p.get(name))
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("string");
        let v = match ty {
            "integer" | "number" => json!(1),
            "boolean" => json!(true),
            "array" => json!([]),
            "object" => json!({}),
            _ => json!(text),
        };
        input.insert(name.to_string(), v);
    }
    Value::Object(input)
}

fn converse_response(a: &Answer, started: Instant, id: &str) -> Response {
    let mut content = Vec::with_capacity(2);
    if !a.text.is_empty() {
        content.push(json!({ "text": a.text }));
    }
    if let Some((tool_use_id, name, input)) = &a.tool_use {
        content
            .push(json!({ "toolUse": { "toolUseId": tool_use_id, "name": name, "input": input } }));
    }
    let body = json!({
        "output": { "message": { "role": "assistant", "content": content } },
        "stopReason": a.stop_reason,
        "usage": a.usage,
        "metrics": { "latencyMs": started.elapsed().as_millis() as u64 },
    });
    let mut r = Response::json(200, serde_json::to_vec(&body).unwrap_or_default());
    r.headers.push(("x-amzn-requestid", id.to_string()));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_model_ids_and_arns() {
        let arn = "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.x-v1%3A0/converse-stream";
        assert_eq!(
            route(Method::Post, arn),
            Some((
                Operation::ConverseStream,
                "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.x-v1:0".into()
            ))
        );
        assert_eq!(
            route(Method::Post, "/model/amazon.titan-embed-text-v2:0/invoke"),
            Some((Operation::Invoke, "amazon.titan-embed-text-v2:0".into()))
        );
        for bad in [
            "/model//converse",
            "/model/a/b/converse",
            "/model/a/chat",
            "/model/converse",
            "/v1/chat/completions",
        ] {
            assert_eq!(route(Method::Post, bad), None, "{bad}");
        }
        assert_eq!(route(Method::Get, "/model/a/converse"), None);
        assert_eq!(
            model_id(arn),
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.x-v1:0"
        );
    }

    fn conv(body: Value) -> Result<Conversation, String> {
        Conversation::parse(&body)
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": [{"text": text}]})
    }

    #[test]
    fn validation_catches_translation_mistakes() {
        let err = |b: Value| conv(b).unwrap_err();
        assert!(err(json!({})).contains("'messages' failed"));
        assert!(
            err(json!({"messages": [{"role": "system", "content": []}]})).contains("enum value")
        );
        assert!(
            err(json!({"messages": [{"role": "assistant", "content": [{"text": "x"}]}]}))
                .starts_with("A conversation must start with a user message")
        );
        assert!(err(json!({"messages": [user("a"), user("b")]})).contains("alternate"));
        assert!(err(json!({"messages": []})).starts_with("A conversation must start"));
        let dotted = json!({"tools": [{"toolSpec": {"name": "a.b", "inputSchema": {"json": {}}}}]});
        assert!(err(json!({"messages": [user("a")], "toolConfig": dotted}))
            .contains("regular expression"));
        assert!(err(json!({"messages": [{"role": "user", "content": "hi"}]})).contains("content"));
        assert!(err(
            json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]})
        )
        .contains("unknown member"));
        let tool_use = json!({"messages": [
            user("a"),
            {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t", "name": "f", "input": {}}}]},
            {"role": "user", "content": [{"toolResult": {"toolUseId": "t", "content": [{"text": "42"}]}}]},
        ]});
        assert!(err(tool_use.clone()).starts_with("The toolConfig field must be defined"));
        let mut with_cfg = tool_use;
        with_cfg["toolConfig"] =
            json!({"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {}}}}]});
        let c = conv(with_cfg).unwrap();
        assert_eq!(c.last_user_text, "42");
        assert!(
            err(json!({"messages": [user("a")], "inferenceConfig": {"maxTokens": 0}}))
                .contains("maxTokens")
        );
        assert!(
            err(json!({"messages": [user("a")], "inferenceConfig": {"temperature": 2}}))
                .contains("temperature")
        );
        assert!(
            err(json!({"messages": [user("a")], "toolConfig": {"tools": []}})).contains("length")
        );
    }

    #[test]
    fn echo_usage_cache_and_limits() {
        let c = conv(json!({
            "system": [{"text": "be brief"}, {"cachePoint": {"type": "default"}}],
            "messages": [user("Hello there")],
        }))
        .unwrap();
        let a = c.answer("6d6f636b-0000-4000-8000-000000000001", false);
        assert_eq!(a.text, "mock: Hello there");
        assert_eq!(a.stop_reason, "end_turn");
        assert_eq!(a.usage["cacheReadInputTokens"], 2); // "be brief": 8 chars
        assert_eq!(a.usage["inputTokens"], 3); // "Hello there": 11 chars
        assert_eq!(a.usage["outputTokens"], 5);
        assert_eq!(a.usage["totalTokens"], 10);
        let w = c.answer("6d6f636b-0000-4000-8000-000000000001", true);
        assert_eq!(
            (
                w.usage["cacheReadInputTokens"].as_u64(),
                w.usage["cacheWriteInputTokens"].as_u64()
            ),
            (Some(0), Some(2))
        );

        let c = conv(
            json!({"messages": [user("abcdefghijklmnop")], "inferenceConfig": {"maxTokens": 2}}),
        )
        .unwrap();
        let a = c.answer("x-000000000001", false);
        assert_eq!((a.text.as_str(), a.stop_reason), ("mock: ab", "max_tokens"));
        let c = conv(json!({"messages": [user("one STOP two")], "inferenceConfig": {"stopSequences": ["STOP"]}})).unwrap();
        let a = c.answer("x-000000000001", false);
        assert_eq!(
            (a.text.as_str(), a.stop_reason),
            ("mock: one ", "stop_sequence")
        );
    }

    #[test]
    fn tool_use_when_triggered() {
        let tools = json!({"tools": [
            {"toolSpec": {"name": "other", "inputSchema": {"json": {"type": "object"}}}},
            {"toolSpec": {"name": "get_weather", "inputSchema": {"json": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "x": {"type": "string"}},
                "required": ["city", "days"],
            }}}},
        ], "toolChoice": {"tool": {"name": "get_weather"}}});
        let c =
            conv(json!({"messages": [user("Please USE TOOL now")], "toolConfig": tools})).unwrap();
        let a = c.answer("6d6f636b-0000-4000-8000-000000000007", false);
        assert_eq!(a.stop_reason, "tool_use");
        let (id, name, input) = a.tool_use.unwrap();
        assert_eq!(
            (id.as_str(), name.as_str()),
            ("tooluse_mock000000000007", "get_weather")
        );
        assert_eq!(input, json!({"city": "Please USE TOOL now", "days": 1}));
        let c = conv(json!({"messages": [user("no trigger")], "toolConfig": tools})).unwrap();
        assert!(c.tool.is_none());
        let c = conv(json!({"messages": [user("use tool")]})).unwrap();
        assert!(c.tool.is_none(), "no toolConfig, no tool call");
    }

    #[test]
    fn stream_fault_directives() {
        assert!(matches!(
            stream_fault("mock-failafter-2"),
            Some((
                2,
                StreamFault::Exception {
                    exception_type: "modelStreamErrorException",
                    ..
                }
            ))
        ));
        assert!(matches!(
            stream_fault("throttleafter-0"),
            Some((
                0,
                StreamFault::Exception {
                    exception_type: "throttlingException",
                    ..
                }
            ))
        ));
        assert!(matches!(
            stream_fault("x-errorafter-1"),
            Some((1, StreamFault::Error { .. }))
        ));
        assert!(matches!(
            stream_fault("x-resetafter-3"),
            Some((3, StreamFault::Reset))
        ));
        assert!(stream_fault("anthropic-claude-3-haiku-20240307-v1-0").is_none());
    }
}

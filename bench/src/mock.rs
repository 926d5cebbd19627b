//! `deepintshield-mock`: an OpenAI- and Anthropic-compatible mock upstream on the gateway's own
//! HTTP layer, for end-to-end tests and load runs on loopback: chat completions, Responses and
//! Messages (whole and streamed, with tool calls), latency distributions, real SSE streams with
//! paced chunks, fault injection by rate and by model name, and counters at `/mock/stats`.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deepintshield::error::{ApiError, ErrorKind};
use deepintshield::http::{
    serve, AbortHandle, BodyStream, Handler, Limits, Method, Request, Response, StreamPoll,
};
use deepintshield::objpool::ObjPool;
use deepintshield_bench::anthropic::{self, MessageMeta};
use deepintshield_bench::completion::{
    chat_answer, directive_number, error_event, message_text, split_even, ChatAnswer, ChunkMeta,
    DONE_EVENT,
};
use deepintshield_bench::dist::{Latency, SharedRng, LATENCY_MAX};
use deepintshield_bench::faults::{ErrorRates, Fault};
use deepintshield_bench::flags::Flags;
use deepintshield_bench::responses::{self, ResponseMeta};
use deepintshield_bench::tools::fragments;
use serde_json::{json, Value};

const USAGE: &str = "\
deepintshield-mock: an OpenAI- and Anthropic-compatible mock upstream

USAGE:
    deepintshield-mock [OPTIONS]

OPTIONS:
    --listen ADDR          address to listen on (default 127.0.0.1:0, a free port)
    --threads N            may scheduler threads (default: one per available core)
    --latency SPEC         time before each model call is answered (default fixed:0ms):
                             fixed:10ms | uniform:5ms..15ms | lognormal:median=10ms,sigma=0.5
    --delay-ms N           the same as --latency fixed:<N>ms
    --stream-chunks N      content chunks of a streamed answer (default 16); streamed tool
                           arguments are cut in at most N pieces
    --chunk-delay-ms N     pause between content chunks of a stream (default 0)
    --error-rate SPEC      faults injected at random by rate, e.g.
                             429:0.01,500:0.005,503:0.005,reset:0.001,stall:0.001
                           (a status in 400..=599, `reset` = close the connection without
                           answering, `stall` = wait --stall-ms, then answer normally)
    --retry-after-s N      Retry-After of injected 429s and 503s (and, on /v1/messages, 529s;
                           default 1)
    --stall-ms N           how long `stall` waits (default 60000)
    --tool-text TEXT       every string the mock puts in tool arguments and json_schema
                           answers (default \"mock\")
    --seed N               seed of the random draws (default 1)
    -h, --help             print this help

On start it prints one line, `deepintshield-mock listening on ADDR`, then serves until killed.

ENDPOINTS:
    POST /v1/chat/completions   a chat.completion answering \"mock: <last user message>\" with
                                usage; with `stream: true`, a real SSE stream: a role chunk, the
                                answer in --stream-chunks content chunks --chunk-delay-ms apart, a
                                chunk with finish_reason \"stop\", a usage chunk (choices: [])
                                when stream_options.include_usage is set, then data: [DONE].
                                Tools, first match wins: `tools` offered and the last user message
                                contains \"use tool\" (no `tool` message after it) -> a tool call
                                of the function it names (else the first), arguments built from
                                the function's `parameters` (required properties), finish_reason
                                \"tool_calls\", streamed as a start chunk then argument pieces;
                                `response_format: json_schema` -> content is a JSON object built
                                from the schema; `tool` messages after the last user message ->
                                \"mock: tool result: <their contents>\"
    POST /v1/responses          OpenAI Responses: `model` and `input` (a string or items) or 400;
                                a `previous_response_id` is 400 previous_response_not_found (the
                                mock stores nothing). The request is read as the chat completion it
                                amounts to (instructions and system/developer items as system
                                messages, function_call / function_call_output items as tool calls
                                and tool messages, function tools, tool_choice, text.format) and
                                answered by the same rules, as a `response` (resp_..., one output
                                item: a message or a function_call, usage); with `stream: true` the
                                SSE events response.created, response.in_progress,
                                response.output_item.added, response.content_part.added, the
                                --stream-chunks response.output_text.delta (or
                                response.function_call_arguments.delta) pieces, their .done events,
                                response.output_item.done and response.completed, each with its
                                sequence_number. failafter- sends an error event and
                                response.failed
    POST /v1/messages           Anthropic Messages: needs `x-api-key` (else 401) and
                                `anthropic-version` (else 400); `model`, `messages`, `max_tokens`
                                (else 400 invalid_request_error). A `message` (msg_..., usage with
                                cache fields) answering \"mock: <last user text>\"; with `stream:
                                true` the SSE events message_start, content_block_start, ping,
                                content_block_delta (--stream-chunks text_deltas), content_block_stop,
                                message_delta, message_stop. `tools` + \"use tool\" in the last user
                                message -> a tool_use block (toolu_..., the tool it names else the
                                first, input from its input_schema), stop_reason \"tool_use\",
                                streamed as input_json_delta pieces; `tool_result` blocks in the
                                last user message -> \"mock: tool result: <their text>\". Errors
                                in Anthropic's shape ({\"type\":\"error\",\"error\":{...}}), a
                                `request-id` header on every answer
    POST /v1/messages/count_tokens   {\"input_tokens\": N} (the same N as the answer's usage)
    GET  /v1/models             a model list: Anthropic's shape when `anthropic-version` is sent,
                                else OpenAI's
    GET  /mock/stats            counters (JSON):
        requests            model calls received (chat completions, responses and messages)
        messages_requests   of those, Anthropic messages
        responses_requests  of those, OpenAI Responses
        count_tokens_requests   count_tokens calls
        in_flight           model calls being answered now
        ok                  non-streamed 200 answers
        tool_calls          answers that called a tool
        injected            {status_<code>, reset, stall}: faults drawn by --error-rate
        streams_started     streamed answers begun
        streams_completed   streams that ended whole (data: [DONE], message_stop, response.completed)
        streams_aborted     streams whose client went away before the end
        streams_failed      streams ended by a failafter- error event
        streams_reset       streams cut by resetafter-
        last_authorization, last_api_key, last_model, last_headers   what the last call carried

FAULT INJECTION (directives inside the request's model name, e.g. chunks-8-failafter-3; the same
on both APIs, errors in each API's shape):
    delay-<ms>        that latency instead of --latency
    status-<code>     answer that HTTP status with an error body (after the latency); on
                      /v1/messages 429, 503 and 529 carry Retry-After
    garbage           answer 200 with a body that is not JSON
    chunks-<n>        that many content chunks instead of --stream-chunks
    chunkdelay-<ms>   that pause between content chunks instead of --chunk-delay-ms
    failafter-<k>     after k content chunks, send an error event and end (OpenAI:
                      data: {\"error\":{...}} without [DONE]; Responses: event: error and
                      response.failed; Anthropic: event: error with an overloaded_error)
    resetafter-<k>    after k content chunks, close the connection abruptly
";

/// Buffers lent to connections: enough for a few thousand concurrent connections without misses.
const BUFFER_POOL_CAPACITY: usize = 16_384;
const BUFFER_POOL_PREFILL: usize = 64;
const BUFFER_RETAIN_BYTES_MAX: usize = 1 << 20;
const BUFFER_BYTES_INITIAL: usize = 8 * 1024;
/// Connection coroutine stacks: serde_json on the mock's own small inputs needs little, and
/// benchmarks hold thousands of connections.
const COROUTINE_STACK_BYTES: usize = 64 * 1024;
/// Most content chunks of one stream, so a typo cannot make a stream endless.
const STREAM_CHUNKS_MAX: u64 = 100_000;
const STREAM_CHUNKS_DEFAULT: u64 = 16;
const RETRY_AFTER_S_DEFAULT: u64 = 1;
const STALL_MS_DEFAULT: u64 = 60_000;
const TOOL_TEXT_DEFAULT: &str = "mock";
/// Longest `--tool-text`, in bytes: it is copied into every tool call's arguments.
const TOOL_TEXT_BYTES_MAX: usize = 4096;

struct Options {
    listen: SocketAddr,
    threads: usize,
    latency: Latency,
    stream_chunks: u64,
    chunk_delay: Duration,
    errors: ErrorRates,
    retry_after_s: u64,
    stall: Duration,
    tool_text: String,
    seed: u64,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut o = Options {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        latency: Latency::Fixed(Duration::ZERO),
        stream_chunks: STREAM_CHUNKS_DEFAULT,
        chunk_delay: Duration::ZERO,
        errors: ErrorRates::default(),
        retry_after_s: RETRY_AFTER_S_DEFAULT,
        stall: Duration::from_millis(STALL_MS_DEFAULT),
        tool_text: TOOL_TEXT_DEFAULT.to_string(),
        seed: 1,
    };
    let mut flags = Flags::new(args);
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => {
                let v = flags.value()?;
                o.listen = v
                    .parse()
                    .map_err(|_| format!("--listen: not an address: {v}"))?;
            }
            "--threads" => o.threads = flags.positive()?,
            "--latency" => o.latency = Latency::parse(&flags.value()?)?,
            "--delay-ms" => o.latency = Latency::Fixed(flags.millis()?),
            "--stream-chunks" => o.stream_chunks = flags.positive()?,
            "--chunk-delay-ms" => o.chunk_delay = flags.millis()?,
            "--error-rate" => o.errors = ErrorRates::parse(&flags.value()?)?,
            "--retry-after-s" => o.retry_after_s = flags.parse()?,
            "--stall-ms" => o.stall = flags.millis()?,
            "--tool-text" => o.tool_text = flags.value()?,
            "--seed" => o.seed = flags.parse()?,
            _ => return Err(format!("unknown argument: {flag}")),
        }
    }
    if o.stream_chunks > STREAM_CHUNKS_MAX {
        return Err(format!("--stream-chunks: at most {STREAM_CHUNKS_MAX}"));
    }
    if o.tool_text.len() > TOOL_TEXT_BYTES_MAX {
        return Err(format!("--tool-text: at most {TOOL_TEXT_BYTES_MAX} bytes"));
    }
    if o.chunk_delay > LATENCY_MAX || o.stall > LATENCY_MAX {
        return Err(format!("delays are at most {LATENCY_MAX:?}"));
    }
    Ok(Some(o))
}

/// What the last model call looked like, for `/mock/stats`.
#[derive(Default)]
struct LastRequest {
    authorization: String,
    /// `x-api-key` (Anthropic's authentication header).
    api_key: String,
    model: String,
    headers: serde_json::Map<String, Value>,
}

/// Stream outcomes, shared by the handler and every stream.
#[derive(Default)]
struct StreamCounters {
    started: AtomicU64,
    completed: AtomicU64,
    aborted: AtomicU64,
    failed: AtomicU64,
    reset: AtomicU64,
}

struct Mock {
    latency: Latency,
    stream_chunks: u64,
    chunk_delay: Duration,
    errors: ErrorRates,
    /// One counter per configured fault, in the order of `errors`.
    injected: Vec<(Fault, AtomicU64)>,
    retry_after_s: u64,
    stall: Duration,
    tool_text: String,
    rng: SharedRng,
    /// Model calls: chat completions and messages (numbers their ids).
    requests: AtomicU64,
    messages_requests: AtomicU64,
    responses_requests: AtomicU64,
    count_tokens_requests: AtomicU64,
    in_flight: AtomicU64,
    ok: AtomicU64,
    tool_calls: AtomicU64,
    streams: Arc<StreamCounters>,
    /// Swapped in whole: the lock is held for a pointer swap, never across I/O or a wait.
    last: Mutex<Arc<LastRequest>>,
}

impl Handler for Mock {
    fn handle(&self, req: &mut Request) -> Response {
        match (req.method, req.path.as_str()) {
            (Method::Post, "/v1/chat/completions") => self.model_call(req, Self::chat_completion),
            (Method::Post, "/v1/messages") => self.model_call(req, Self::messages),
            (Method::Post, "/v1/responses") => self.model_call(req, Self::responses),
            (Method::Post, "/v1/messages/count_tokens") => self.count_tokens(req),
            (Method::Get | Method::Head, "/v1/models") => {
                if req.header("anthropic-version").is_some() {
                    json_response(200, &anthropic::models())
                } else {
                    models()
                }
            }
            (Method::Get | Method::Head, "/mock/stats") => self.stats(),
            (_, "/v1/messages" | "/v1/messages/count_tokens") => anthropic_error(
                405,
                "Method not allowed on this path",
                "req_mock000000000000",
                None,
            ),
            (_, "/v1/chat/completions" | "/v1/responses" | "/v1/models" | "/mock/stats") => {
                Response::error(&ApiError::new(
                    ErrorKind::MethodNotAllowed,
                    "method_not_allowed",
                    "method not allowed on this path",
                ))
            }
            _ => Response::error(&ApiError::new(
                ErrorKind::NotFound,
                "not_found",
                format!("no route for {}", req.path),
            )),
        }
    }
}

/// Which API a model call came in on: decides the shape of its errors and of its stream.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Api {
    OpenAi,
    Anthropic,
}

impl Mock {
    /// A model call, counted in `requests` and `in_flight` while it is answered.
    fn model_call(&self, req: &Request, answer: fn(&Self, &Request, u64) -> Response) -> Response {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let r = answer(self, req, n);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        r
    }

    fn chat_completion(&self, req: &Request, n: u64) -> Response {
        let parsed: Result<Value, _> = serde_json::from_slice(&req.body);
        let model = model_of(&parsed);
        self.record(req, &model);

        let body = match parsed {
            Ok(v) if v.is_object() => v,
            _ => {
                return Response::error(&ApiError::bad_request(
                    "invalid_json",
                    "the request body is not a JSON object",
                ))
            }
        };
        if model.is_empty() {
            return Response::error(&ApiError::bad_request(
                "missing_model",
                "`model` is required",
            ));
        }
        let Some(messages) = body.get("messages").and_then(Value::as_array) else {
            return Response::error(&ApiError::bad_request(
                "missing_messages",
                "`messages` must be an array",
            ));
        };
        if let Some(r) = self.faults(req, &model, Api::OpenAi, "") {
            return r;
        }

        let prompt_chars: usize = messages
            .iter()
            .map(|m| message_text(m).chars().count())
            .sum();
        let answer = chat_answer(&body, &self.tool_text);
        let answer_chars = match &answer {
            ChatAnswer::Text(t) => t.chars().count(),
            ChatAnswer::ToolCall { arguments, .. } => arguments.chars().count(),
        };
        let prompt_tokens = prompt_chars.div_ceil(4);
        let completion_tokens = answer_chars.div_ceil(4);
        let id = format!("chatcmpl-mock{n:012}");
        let call_id = format!("call_mock{n:012}");
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let usage = json!({
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        });
        if matches!(answer, ChatAnswer::ToolCall { .. }) {
            self.tool_calls.fetch_add(1, Ordering::Relaxed);
        }
        if body.get("stream").and_then(Value::as_bool) == Some(true) {
            let include_usage = body
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                == Some(true);
            let meta = ChunkMeta {
                id: &id,
                created,
                model: &model,
            };
            let plan = self.stream_plan(&model, req.abort_handle());
            let (head, pieces, finish) = match &answer {
                ChatAnswer::Text(content) => (
                    meta.role(),
                    split_even(content, plan.chunks)
                        .into_iter()
                        .map(|p| meta.content(p))
                        .collect(),
                    meta.finish(),
                ),
                ChatAnswer::ToolCall { name, arguments } => (
                    meta.tool_call_start(&call_id, name),
                    fragments(arguments, plan.chunks)
                        .into_iter()
                        .map(|p| meta.tool_call_arguments(p))
                        .collect(),
                    meta.finish_with("tool_calls"),
                ),
            };
            let mut tail = finish;
            if include_usage {
                tail.extend_from_slice(&meta.usage(&usage));
            }
            tail.extend_from_slice(DONE_EVENT);
            let failure = error_event("mock: injected mid-stream failure");
            return self.stream(plan, head, pieces, tail, failure);
        }
        let (message, finish) = match &answer {
            ChatAnswer::Text(content) => (json!({"role": "assistant", "content": content}), "stop"),
            ChatAnswer::ToolCall { name, arguments } => (
                json!({"role": "assistant", "content": null, "tool_calls": [{
                    "id": call_id, "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }]}),
                "tool_calls",
            ),
        };
        let answer = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": finish,
            }],
            "usage": usage,
        });
        self.ok.fetch_add(1, Ordering::Relaxed);
        json_response(200, &answer)
    }

    /// `POST /v1/responses`: OpenAI's Responses API, answered by the chat completion rules.
    fn responses(&self, req: &Request, n: u64) -> Response {
        self.responses_requests.fetch_add(1, Ordering::Relaxed);
        let parsed: Result<Value, _> = serde_json::from_slice(&req.body);
        let model = model_of(&parsed);
        self.record(req, &model);
        let body = match parsed {
            Ok(v) if v.is_object() => v,
            _ => {
                return Response::error(&ApiError::bad_request(
                    "invalid_json",
                    "the request body is not a JSON object",
                ))
            }
        };
        if model.is_empty() {
            return Response::error(&ApiError::bad_request(
                "missing_model",
                "`model` is required",
            ));
        }
        if !matches!(body.get("input"), Some(Value::String(_) | Value::Array(_))) {
            return Response::error(&ApiError::bad_request(
                "missing_input",
                "`input` must be a string or an array of items",
            ));
        }
        if body
            .get("previous_response_id")
            .is_some_and(|v| !v.is_null())
        {
            return Response::error(&ApiError::bad_request(
                "previous_response_not_found",
                "Previous response not found: the mock stores no responses",
            ));
        }
        if let Some(r) = self.faults(req, &model, Api::OpenAi, "") {
            return r;
        }
        let chat = responses::chat_view(&body);
        let answer = chat_answer(&chat, &self.tool_text);
        let answer_chars = match &answer {
            ChatAnswer::Text(t) => t.chars().count(),
            ChatAnswer::ToolCall { arguments, .. } => arguments.chars().count(),
        };
        let (id, call_id) = (format!("resp_mock{n:012}"), format!("call_mock{n:012}"));
        let item_id = match &answer {
            ChatAnswer::Text(_) => format!("msg_mock{n:012}"),
            ChatAnswer::ToolCall { .. } => {
                self.tool_calls.fetch_add(1, Ordering::Relaxed);
                format!("fc_mock{n:012}")
            }
        };
        let meta = ResponseMeta {
            id: &id,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: &model,
            item_id: &item_id,
            call_id: &call_id,
            input_tokens: responses::prompt_chars(&chat).div_ceil(4) as u64,
            output_tokens: answer_chars.div_ceil(4) as u64,
        };
        if body.get("stream").and_then(Value::as_bool) == Some(true) {
            let plan = self.stream_plan(&model, req.abort_handle());
            let texts = match &answer {
                ChatAnswer::Text(t) => split_even(t, plan.chunks),
                ChatAnswer::ToolCall { arguments, .. } => fragments(arguments, plan.chunks),
            };
            let (head, first) = meta.head(&answer);
            let pieces: Vec<Vec<u8>> = texts
                .iter()
                .zip(first..)
                .map(|(piece, seq)| meta.delta(&answer, piece, seq))
                .collect();
            let tail = meta.tail(&answer, first + pieces.len() as u64);
            let failed_at = first + plan.fail_after.unwrap_or(0) as u64;
            let failure = meta.failure("mock: injected mid-stream failure", failed_at);
            return self.stream(plan, head, pieces, tail, failure);
        }
        self.ok.fetch_add(1, Ordering::Relaxed);
        json_response(200, &meta.whole(&answer))
    }

    /// `POST /v1/messages`: Anthropic's Messages API.
    fn messages(&self, req: &Request, n: u64) -> Response {
        self.messages_requests.fetch_add(1, Ordering::Relaxed);
        let request_id = format!("req_mock{n:012}");
        let parsed: Result<Value, _> = serde_json::from_slice(&req.body);
        let model = model_of(&parsed);
        self.record(req, &model);
        let body = match anthropic_checks(req, parsed, true, &request_id) {
            Ok(body) => body,
            Err(r) => return r,
        };
        if let Some(r) = self.faults(req, &model, Api::Anthropic, &request_id) {
            return r;
        }

        let answer = anthropic::answer(&body, &self.tool_text);
        let tool_id = format!("toolu_mock{n:012}");
        let msg_id = format!("msg_mock{n:012}");
        let meta = MessageMeta {
            id: &msg_id,
            model: &model,
            input_tokens: anthropic::input_tokens(&body),
        };
        if matches!(answer, anthropic::Answer::ToolUse { .. }) {
            self.tool_calls.fetch_add(1, Ordering::Relaxed);
        }
        if body.get("stream").and_then(Value::as_bool) == Some(true) {
            let plan = self.stream_plan(&model, req.abort_handle());
            let pieces = match &answer {
                anthropic::Answer::Text(t) => split_even(t, plan.chunks)
                    .into_iter()
                    .map(|p| meta.delta(&answer, p))
                    .collect(),
                anthropic::Answer::ToolUse { input, .. } => {
                    let json = input.to_string();
                    fragments(&json, plan.chunks)
                        .into_iter()
                        .map(|p| meta.delta(&answer, p))
                        .collect()
                }
            };
            let head = meta.head(&answer, &tool_id);
            let tail = meta.tail(&answer);
            let failure = anthropic::error_event("mock: injected mid-stream failure");
            let mut r = self.stream(plan, head, pieces, tail, failure);
            r.headers.push(("request-id", request_id));
            return r;
        }
        self.ok.fetch_add(1, Ordering::Relaxed);
        let mut r = json_response(200, &meta.message(&answer, &tool_id));
        r.headers.push(("request-id", request_id));
        r
    }

    /// `POST /v1/messages/count_tokens`: the same checks as a message, no faults.
    fn count_tokens(&self, req: &Request) -> Response {
        let n = self.count_tokens_requests.fetch_add(1, Ordering::Relaxed) + 1;
        let request_id = format!("req_mockcount{n:07}");
        let parsed: Result<Value, _> = serde_json::from_slice(&req.body);
        let body = match anthropic_checks(req, parsed, false, &request_id) {
            Ok(body) => body,
            Err(r) => return r,
        };
        let mut r = json_response(
            200,
            &json!({"input_tokens": anthropic::input_tokens(&body)}),
        );
        r.headers.push(("request-id", request_id));
        r
    }

    /// The faults of one model call, in order: a draw against `--error-rate`, the latency, then the
    /// model name's `status-` and `garbage` directives. `Some` is the answer to send instead.
    fn faults(&self, req: &Request, model: &str, api: Api, request_id: &str) -> Option<Response> {
        match self.draw_fault() {
            Some(Fault::Status(code)) => {
                let retry = match api {
                    Api::OpenAi => matches!(code, 429 | 503),
                    Api::Anthropic => anthropic_retries(code),
                };
                return Some(self.error(api, code, retry, request_id));
            }
            Some(Fault::Reset) => {
                req.abort_handle().abort();
                return Some(Response::json(500, Vec::new())); // never sent: the write fails
            }
            Some(Fault::Stall) => may::coroutine::sleep(self.stall),
            None => {}
        }
        let latency = match directive_number(model, "delay-") {
            Some(ms) => Duration::from_millis(ms).min(LATENCY_MAX),
            None if self.latency.is_zero() => Duration::ZERO,
            None => self
                .latency
                .sample(self.rng.next_u64(), self.rng.next_u64()),
        };
        if !latency.is_zero() {
            may::coroutine::sleep(latency);
        }
        if let Some(status) = directive_number(model, "status-") {
            if (400..=599).contains(&status) {
                let code = status as u16;
                // OpenAI: as before, no Retry-After on directed statuses.
                let retry = api == Api::Anthropic && anthropic_retries(code);
                return Some(self.error(api, code, retry, request_id));
            }
        }
        if model.contains("garbage") {
            return Some(Response::json(200, b"<html>this is not json".to_vec()));
        }
        None
    }

    /// An injected error in `api`'s shape, with `Retry-After: --retry-after-s` when `retry`.
    fn error(&self, api: Api, code: u16, retry: bool, request_id: &str) -> Response {
        let retry_after_s = retry.then_some(self.retry_after_s);
        match api {
            Api::OpenAi => injected_status(code, retry_after_s),
            Api::Anthropic => anthropic_error(
                code,
                &format!("mock: injected status {code}"),
                request_id,
                retry_after_s,
            ),
        }
    }

    /// One draw against `--error-rate`, counted.
    fn draw_fault(&self) -> Option<Fault> {
        if self.errors.is_empty() {
            return None;
        }
        let fault = self.errors.pick(self.rng.next_f64())?;
        if let Some((_, c)) = self.injected.iter().find(|(f, _)| *f == fault) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        Some(fault)
    }

    fn stream_plan(&self, model: &str, abort: AbortHandle) -> StreamPlan {
        let chunks = directive_number(model, "chunks-")
            .unwrap_or(self.stream_chunks)
            .clamp(1, STREAM_CHUNKS_MAX);
        let delay = directive_number(model, "chunkdelay-")
            .map_or(self.chunk_delay, Duration::from_millis)
            .min(LATENCY_MAX);
        StreamPlan {
            chunks: chunks as usize,
            delay,
            fail_after: directive_number(model, "failafter-").map(|k| k as usize),
            reset_after: directive_number(model, "resetafter-").map(|k| k as usize),
            abort: Some(abort),
        }
    }

    /// A streamed answer: `head` at once, `pieces` paced by the plan, then `tail`; or `failure`
    /// after `fail_after` pieces.
    fn stream(
        &self,
        plan: StreamPlan,
        head: Vec<u8>,
        pieces: Vec<Vec<u8>>,
        tail: Vec<u8>,
        failure: Vec<u8>,
    ) -> Response {
        self.streams.started.fetch_add(1, Ordering::Relaxed);
        let stream = MockStream {
            head: Some(head),
            pieces,
            sent: 0,
            tail: Some(tail),
            failure,
            next_at: None,
            plan,
            counters: Arc::clone(&self.streams),
            finished: false,
        };
        Response::stream(200, "text/event-stream", Box::new(stream))
    }

    fn record(&self, req: &Request, model: &str) {
        let header = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        let last = LastRequest {
            authorization: req.header("authorization").map(header).unwrap_or_default(),
            api_key: req.header("x-api-key").map(header).unwrap_or_default(),
            model: model.to_string(),
            headers: req
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), Value::String(header(v))))
                .collect(),
        };
        let last = Arc::new(last);
        if let Ok(mut slot) = self.last.lock() {
            *slot = last;
        }
    }

    fn stats(&self) -> Response {
        let last = match self.last.lock() {
            Ok(slot) => Arc::clone(&slot),
            Err(_) => Arc::new(LastRequest::default()),
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let injected: serde_json::Map<String, Value> = self
            .injected
            .iter()
            .map(|(f, c)| (f.name(), json!(get(c))))
            .collect();
        let s = &self.streams;
        let body = json!({
            "requests": get(&self.requests),
            "messages_requests": get(&self.messages_requests),
            "responses_requests": get(&self.responses_requests),
            "count_tokens_requests": get(&self.count_tokens_requests),
            "in_flight": get(&self.in_flight),
            "ok": get(&self.ok),
            "tool_calls": get(&self.tool_calls),
            "injected": injected,
            "streams_started": get(&s.started),
            "streams_completed": get(&s.completed),
            "streams_aborted": get(&s.aborted),
            "streams_failed": get(&s.failed),
            "streams_reset": get(&s.reset),
            "last_authorization": last.authorization,
            "last_api_key": last.api_key,
            "last_model": last.model,
            "last_headers": last.headers,
        });
        json_response(200, &body)
    }
}

/// The `model` of a parsed request body, or empty.
fn model_of(parsed: &Result<Value, serde_json::Error>) -> String {
    parsed
        .as_ref()
        .ok()
        .and_then(|v| v.get("model"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// Whether Anthropic sends `Retry-After` with this status.
fn anthropic_retries(code: u16) -> bool {
    matches!(code, 429 | 503 | 529)
}

/// The checks every Anthropic call passes, in the API's order: `x-api-key` (401), then
/// `anthropic-version` (400), then a JSON body with `model`, `messages` and (for messages)
/// `max_tokens` (400).
fn anthropic_checks(
    req: &Request,
    parsed: Result<Value, serde_json::Error>,
    needs_max_tokens: bool,
    request_id: &str,
) -> Result<Value, Response> {
    if req.header("x-api-key").is_none_or(<[u8]>::is_empty) {
        return Err(anthropic_error(
            401,
            "x-api-key header is required",
            request_id,
            None,
        ));
    }
    if req.header("anthropic-version").is_none() {
        return Err(anthropic_error(
            400,
            "anthropic-version: header is required",
            request_id,
            None,
        ));
    }
    let body = match parsed {
        Ok(body) => body,
        Err(e) => {
            let msg = format!("There was an error parsing the body of your request: {e}");
            return Err(anthropic_error(400, &msg, request_id, None));
        }
    };
    if let Some(msg) = anthropic::invalid_request(&body, needs_max_tokens) {
        return Err(anthropic_error(400, &msg, request_id, None));
    }
    Ok(body)
}

/// An error in Anthropic's shape, with its `request-id` header.
fn anthropic_error(
    status: u16,
    message: &str,
    request_id: &str,
    retry_after_s: Option<u64>,
) -> Response {
    let mut r = Response::json(status, anthropic::error_body(status, message, request_id));
    r.headers.push(("request-id", request_id.to_string()));
    if let Some(s) = retry_after_s {
        r.headers.push(("retry-after", s.to_string()));
    }
    r
}

fn json_response(status: u16, body: &Value) -> Response {
    Response::json(status, serde_json::to_vec(body).unwrap_or_default())
}

/// How one stream unfolds.
struct StreamPlan {
    chunks: usize,
    /// Pause before every content chunk but the first.
    delay: Duration,
    fail_after: Option<usize>,
    reset_after: Option<usize>,
    /// Drops the connection for `reset_after` (`None` in unit tests, which have no socket).
    abort: Option<AbortHandle>,
}

/// A streamed answer: the head (OpenAI: the role chunk; Anthropic: `message_start`,
/// `content_block_start`, `ping`), then the content pieces paced by `plan.delay`, then the tail
/// (OpenAI: finish, usage, `[DONE]`; Anthropic: `content_block_stop`, `message_delta`,
/// `message_stop`); or the failure event after `fail_after` pieces, or a reset after
/// `reset_after`.
struct MockStream {
    head: Option<Vec<u8>>,
    pieces: Vec<Vec<u8>>,
    /// Content chunks yielded so far.
    sent: usize,
    tail: Option<Vec<u8>>,
    /// The error event sent for `fail_after`, in the API's shape.
    failure: Vec<u8>,
    /// When the next content chunk is due (`None`: at once).
    next_at: Option<Instant>,
    plan: StreamPlan,
    counters: Arc<StreamCounters>,
    /// Completed, failed or reset: a later `cancel` is not a client abort.
    finished: bool,
}

impl MockStream {
    fn end(&mut self, counter: fn(&StreamCounters) -> &AtomicU64) {
        self.finished = true;
        counter(&self.counters).fetch_add(1, Ordering::Relaxed);
    }
}

impl BodyStream for MockStream {
    fn poll(&mut self, wait: Duration) -> StreamPoll {
        if self.finished {
            return StreamPoll::End;
        }
        if let Some(head) = self.head.take() {
            return StreamPoll::Chunk(head);
        }
        if self.plan.reset_after == Some(self.sent) {
            self.end(|c| &c.reset);
            if let Some(a) = self.plan.abort {
                a.abort();
            }
            return StreamPoll::Pending; // the server sees the connection gone and stops
        }
        if self.plan.fail_after == Some(self.sent) {
            self.end(|c| &c.failed);
            return StreamPoll::Chunk(std::mem::take(&mut self.failure));
        }
        if self.sent == self.pieces.len() {
            let tail = self.tail.take().unwrap_or_default();
            self.end(|c| &c.completed);
            return StreamPoll::Chunk(tail);
        }
        if let Some(at) = self.next_at {
            let left = at.saturating_duration_since(Instant::now());
            if left > wait {
                may::coroutine::sleep(wait);
                return StreamPoll::Pending;
            }
            if !left.is_zero() {
                may::coroutine::sleep(left);
            }
        }
        let piece = std::mem::take(&mut self.pieces[self.sent]);
        self.sent += 1;
        self.next_at = Some(Instant::now() + self.plan.delay);
        StreamPoll::Chunk(piece)
    }

    fn cancel(&mut self) {
        if !self.finished {
            self.end(|c| &c.aborted);
        }
    }
}

fn injected_status(status: u16, retry_after_s: Option<u64>) -> Response {
    let kind = match status {
        401 | 403 => "authentication_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    let body = json!({
        "error": {
            "message": format!("mock: injected status {status}"),
            "type": kind,
            "param": null,
            "code": "mock_injected_status",
        }
    });
    let mut r = Response::json(status, serde_json::to_vec(&body).unwrap_or_default());
    if let Some(s) = retry_after_s {
        r.headers.push(("retry-after", s.to_string()));
    }
    r
}

fn models() -> Response {
    let model = |id: &str| json!({"id": id, "object": "model", "created": 0, "owned_by": "mock"});
    let body = json!({
        "object": "list",
        "data": [model("mock-gpt-4o-mini"), model("mock-gpt-4o")],
    });
    Response::json(200, serde_json::to_vec(&body).unwrap_or_default())
}

fn new_buffer() -> Vec<u8> {
    Vec::with_capacity(BUFFER_BYTES_INITIAL)
}

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("deepintshield-mock: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Precise latencies: may's timer thread and schedulers, started below, inherit a 1 ns timer
    // slack instead of the default 50 us, which would add to every injected delay.
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's (and its children's) slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    may::config().set_workers(opts.threads);

    let listener = match std::net::TcpListener::bind(opts.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("deepintshield-mock: cannot listen on {}: {e}", opts.listen);
            return ExitCode::from(1);
        }
    };
    let injected = opts
        .errors
        .faults()
        .map(|f| (f, AtomicU64::new(0)))
        .collect();
    let mock = Arc::new(Mock {
        latency: opts.latency,
        stream_chunks: opts.stream_chunks,
        chunk_delay: opts.chunk_delay,
        errors: opts.errors,
        injected,
        retry_after_s: opts.retry_after_s,
        stall: opts.stall,
        tool_text: opts.tool_text,
        rng: SharedRng::new(opts.seed),
        requests: AtomicU64::new(0),
        messages_requests: AtomicU64::new(0),
        responses_requests: AtomicU64::new(0),
        count_tokens_requests: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        tool_calls: AtomicU64::new(0),
        streams: Arc::new(StreamCounters::default()),
        last: Mutex::new(Arc::new(LastRequest::default())),
    });
    let buffers = ObjPool::new(
        "buffers",
        BUFFER_POOL_CAPACITY,
        BUFFER_POOL_PREFILL,
        BUFFER_RETAIN_BYTES_MAX,
        new_buffer,
    );
    let limits = Limits {
        coroutine_stack_bytes: COROUTINE_STACK_BYTES,
        ..Limits::default()
    };
    let server = match serve(listener, limits, mock, buffers) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("deepintshield-mock: cannot serve: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    if writeln!(
        out,
        "deepintshield-mock listening on {}",
        server.local_addr()
    )
    .and_then(|()| out.flush())
    .is_err()
    {
        return ExitCode::from(1);
    }
    drop(out);
    // Serve until killed; the listener and its coroutines live on may's worker threads.
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        let parse = |a: &[&str]| parse_args(a.iter().map(|s| s.to_string()));
        let o = parse(&["--listen", "127.0.0.1:9", "--delay-ms=5", "--threads", "3"])
            .unwrap()
            .unwrap();
        assert_eq!(o.listen.port(), 9);
        assert_eq!(o.latency, Latency::Fixed(Duration::from_millis(5)));
        assert_eq!(o.threads, 3);
        let o = parse(&[
            "--latency",
            "uniform:1ms..2ms",
            "--error-rate",
            "429:0.5,reset:0.1",
            "--stream-chunks",
            "4",
            "--chunk-delay-ms",
            "7",
        ])
        .unwrap()
        .unwrap();
        assert!(matches!(o.latency, Latency::Uniform { .. }));
        assert_eq!(o.errors.faults().count(), 2);
        assert_eq!(
            (o.stream_chunks, o.chunk_delay),
            (4, Duration::from_millis(7))
        );
        assert!(parse(&["--help"]).unwrap().is_none());
        assert!(parse(&["--threads", "0"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--listen"]).is_err());
        assert!(parse(&["--latency", "fixed"]).is_err());
        assert!(parse(&["--stream-chunks", "1000000"]).is_err());
        let o = parse(&["--tool-text", "echo hi"]).unwrap().unwrap();
        assert_eq!(o.tool_text, "echo hi");
        assert_eq!(parse(&[]).unwrap().unwrap().tool_text, TOOL_TEXT_DEFAULT);
        let long = "x".repeat(TOOL_TEXT_BYTES_MAX + 1);
        assert!(parse(&["--tool-text", &long]).is_err());
    }

    #[test]
    fn usage_names_the_tool_trigger() {
        let quoted = format!("\"{}\"", deepintshield_bench::tools::TOOL_TRIGGER);
        assert!(USAGE.contains(&quoted), "{quoted}");
    }

    fn stream(chunks: usize, fail: Option<usize>) -> (MockStream, Arc<StreamCounters>) {
        let counters = Arc::new(StreamCounters::default());
        let meta = ChunkMeta {
            id: "c",
            created: 0,
            model: "m",
        };
        let s = MockStream {
            head: Some(meta.role()),
            pieces: split_even("mock: hello", chunks)
                .into_iter()
                .map(|p| meta.content(p))
                .collect(),
            sent: 0,
            tail: Some([meta.finish(), DONE_EVENT.to_vec()].concat()),
            failure: error_event("mock: injected mid-stream failure"),
            next_at: None,
            plan: StreamPlan {
                chunks,
                delay: Duration::ZERO,
                fail_after: fail,
                reset_after: None,
                abort: None,
            },
            counters: Arc::clone(&counters),
            finished: false,
        };
        (s, counters)
    }

    fn drain(s: &mut MockStream) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for _ in 0..1000 {
            match s.poll(Duration::from_millis(10)) {
                StreamPoll::Chunk(c) => out.push(c),
                StreamPoll::Pending => {}
                StreamPoll::End => return out,
            }
        }
        panic!("stream did not end");
    }

    #[test]
    fn stream_yields_role_content_tail_and_counts() {
        let (mut s, counters) = stream(3, None);
        let events = drain(&mut s);
        assert_eq!(events.len(), 5);
        assert!(String::from_utf8_lossy(&events[0]).contains("\"role\":\"assistant\""));
        assert!(String::from_utf8_lossy(&events[4]).ends_with("data: [DONE]\n\n"));
        s.cancel(); // after the end: not an abort
        assert_eq!(counters.completed.load(Ordering::Relaxed), 1);
        assert_eq!(counters.aborted.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn stream_failure_and_abort() {
        let (mut s, counters) = stream(8, Some(3));
        let events = drain(&mut s);
        assert_eq!(events.len(), 5); // role, 3 content, error
        assert!(String::from_utf8_lossy(&events[4]).starts_with("data: {\"error\""));
        assert_eq!(counters.failed.load(Ordering::Relaxed), 1);
        let (mut s, counters) = stream(8, None);
        let _ = s.poll(Duration::ZERO);
        s.cancel();
        assert_eq!(counters.aborted.load(Ordering::Relaxed), 1);
    }
}

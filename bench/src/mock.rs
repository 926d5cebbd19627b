//! `deepintshield-mock`: an OpenAI-compatible mock upstream on the gateway's own HTTP layer, for
//! end-to-end tests and load runs on loopback: latency distributions, real SSE streams with
//! paced chunks, fault injection by rate and by model name, and counters at `/mock/stats`. It
//! also serves AWS Bedrock's runtime (`/model/{modelId}/...`, see `bedrock.rs`).

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
use deepintshield::providers::aws_credentials::Credentials;
use deepintshield_bench::bedrock::{self, Auth, Bedrock, Knobs, REGION_DEFAULT};
use deepintshield_bench::completion::{
    directive_number, error_event, message_text, split_even, ChunkMeta, DONE_EVENT,
};
use deepintshield_bench::dist::{Latency, SharedRng, LATENCY_MAX};
use deepintshield_bench::faults::{ErrorRates, Fault};
use deepintshield_bench::flags::Flags;
use serde_json::{json, Value};

const USAGE: &str = "\
deepintshield-mock: an OpenAI-compatible and AWS Bedrock runtime mock upstream

USAGE:
    deepintshield-mock [OPTIONS]

OPTIONS:
    --listen ADDR          address to listen on (default 127.0.0.1:0, a free port)
    --threads N            may scheduler threads (default: one per available core)
    --latency SPEC         time before each chat completion is answered (default fixed:0ms):
                             fixed:10ms | uniform:5ms..15ms | lognormal:median=10ms,sigma=0.5
    --delay-ms N           the same as --latency fixed:<N>ms
    --stream-chunks N      content chunks of a streamed answer (default 16)
    --chunk-delay-ms N     pause between content chunks of a stream (default 0)
    --error-rate SPEC      faults injected at random by rate, e.g.
                             429:0.01,500:0.005,503:0.005,reset:0.001,stall:0.001
                           (a status in 400..=599, `reset` = close the connection without
                           answering, `stall` = wait --stall-ms, then answer normally)
    --retry-after-s N      Retry-After of injected 429s and 503s (default 1)
    --stall-ms N           how long `stall` waits (default 60000)
    --seed N               seed of the random draws (default 1)
    --aws-access-key-id ID, --aws-secret-access-key SECRET
                           Bedrock requests must be SigV4-signed with this key pair (both or
                           neither; without them signatures are not checked)
    --aws-session-token T  ... and carry this session token (x-amz-security-token)
    --aws-region R         the region signatures are scoped to (default us-east-1)
    --bedrock-bad-crc-after K
                           every converse-stream sends the message after its K-th content
                           delta with a wrong CRC, then goes on (default: never)
    -h, --help             print this help

On start it prints one line, `deepintshield-mock listening on ADDR`, then serves until killed.

ENDPOINTS:
    POST /v1/chat/completions   a chat.completion answering \"mock: <last user message>\" with
                                usage; with `stream: true`, a real SSE stream: a role chunk, the
                                answer in --stream-chunks content chunks --chunk-delay-ms apart, a
                                chunk with finish_reason \"stop\", a usage chunk (choices: [])
                                when stream_options.include_usage is set, then data: [DONE]
    GET  /v1/models             a model list
    POST /model/{modelId}/converse          Bedrock Converse: \"mock: <last user text>\", or with
                                toolConfig and \"use tool\" in the last user message a toolUse of
                                the first tool (or toolChoice.tool) with its required inputs filled
    POST /model/{modelId}/converse-stream   Bedrock ConverseStream: the same answer as an
                                application/vnd.amazon.eventstream body: messageStart,
                                contentBlockDelta (text, --stream-chunks), contentBlockStop,
                                contentBlockStart/Delta/Stop for a toolUse, messageStop, metadata
    POST /model/{modelId}/invoke            embeddings: amazon.titan-embed-text-* (inputText,
                                dimensions, normalize) and cohere.embed-* (texts, input_type)
                                {modelId} is a model id or an ARN as one URL-encoded segment.
                                Bad or missing signatures get 403 with x-amzn-errortype
                                MissingAuthenticationTokenException, IncompleteSignatureException,
                                UnrecognizedClientException or InvalidSignatureException.
    GET  /mock/stats            counters (JSON):
        requests            chat completion requests received
        in_flight           requests being answered now (chat completions and Bedrock)
        ok                  non-streamed 200 answers
        injected            {status_<code>, reset, stall}: faults drawn by --error-rate
        streams_started     streamed answers begun
        streams_completed   streams that ended with data: [DONE]
        streams_aborted     streams whose client went away before the end
        streams_failed      streams ended by a failafter- error event
        streams_reset       streams cut by resetafter-
        last_authorization, last_model, last_headers   what the last request carried
        bedrock             the Bedrock endpoints' own counters: requests, converse,
                            converse_stream, invoke, ok, signature_rejected, injected,
                            streams_{started,completed,failed,aborted,reset}, crc_corrupted

FAULT INJECTION (directives inside the request's model name, e.g. chunks-8-failafter-3):
    delay-<ms>        that latency instead of --latency
    status-<code>     answer that HTTP status with an OpenAI-style error body (after the latency)
    garbage           answer 200 with a body that is not JSON
    chunks-<n>        that many content chunks instead of --stream-chunks
    chunkdelay-<ms>   that pause between content chunks instead of --chunk-delay-ms
    failafter-<k>     after k content chunks, send data: {\"error\":{...}} and end (no [DONE])
    resetafter-<k>    after k content chunks, close the connection abruptly
  Bedrock model ids take the same directives (`.` and `:` count as separators, e.g.
  mock.chunks-4-failafter-2-v1:0); status-<code> answers Bedrock's error type for it
  (400 ValidationException, 403 AccessDeniedException, 404 ResourceNotFoundException,
  408 ModelTimeoutException, 424 ModelErrorException, 429 ThrottlingException,
  500 InternalServerException, 503 ServiceUnavailableException), and in converse-stream:
    failafter-<k>         after k deltas, a modelStreamErrorException event, then the end
    throttleafter-<k>     ... a throttlingException event
    unavailableafter-<k>  ... a serviceUnavailableException event
    internalafter-<k>     ... an internalServerException event
    validationafter-<k>   ... a validationException event
    errorafter-<k>        ... a :message-type error message (InternalFailure)
    badcrcafter-<k>       the message after k deltas has a wrong CRC; the stream goes on
    cachewrite            usage reports the cached prefix as cacheWriteInputTokens
                          (else cacheReadInputTokens; the prefix is the text before the
                          first cachePoint)
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

struct Options {
    listen: SocketAddr,
    threads: usize,
    latency: Latency,
    stream_chunks: u64,
    chunk_delay: Duration,
    errors: ErrorRates,
    retry_after_s: u64,
    stall: Duration,
    seed: u64,
    aws_access_key_id: Option<String>,
    aws_secret_access_key: Option<String>,
    aws_session_token: Option<String>,
    aws_region: String,
    bedrock_bad_crc_after: Option<usize>,
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
        seed: 1,
        aws_access_key_id: None,
        aws_secret_access_key: None,
        aws_session_token: None,
        aws_region: REGION_DEFAULT.to_string(),
        bedrock_bad_crc_after: None,
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
            "--seed" => o.seed = flags.parse()?,
            "--aws-access-key-id" => o.aws_access_key_id = Some(flags.value()?),
            "--aws-secret-access-key" => o.aws_secret_access_key = Some(flags.value()?),
            "--aws-session-token" => o.aws_session_token = Some(flags.value()?),
            "--aws-region" => o.aws_region = flags.value()?,
            "--bedrock-bad-crc-after" => o.bedrock_bad_crc_after = Some(flags.parse()?),
            _ => return Err(format!("unknown argument: {flag}")),
        }
    }
    if o.stream_chunks > STREAM_CHUNKS_MAX {
        return Err(format!("--stream-chunks: at most {STREAM_CHUNKS_MAX}"));
    }
    if o.chunk_delay > LATENCY_MAX || o.stall > LATENCY_MAX {
        return Err(format!("delays are at most {LATENCY_MAX:?}"));
    }
    aws_auth(&o)?;
    Ok(Some(o))
}

/// The key pair Bedrock requests must be signed with, from the `--aws-*` flags.
fn aws_auth(o: &Options) -> Result<Option<Auth>, String> {
    let (id, secret) = match (&o.aws_access_key_id, &o.aws_secret_access_key) {
        (None, None) if o.aws_session_token.is_none() => return Ok(None),
        (Some(id), Some(secret)) => (id, secret),
        _ => return Err("--aws-access-key-id and --aws-secret-access-key go together".to_string()),
    };
    let credentials =
        Credentials::new(id, secret, o.aws_session_token.as_deref()).map_err(|e| e.to_string())?;
    let region_ok = !o.aws_region.is_empty()
        && o.aws_region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !region_ok {
        return Err(format!("--aws-region: not a region name: {}", o.aws_region));
    }
    Ok(Some(Auth {
        credentials,
        region: o.aws_region.clone(),
    }))
}

/// What the last chat-completion request looked like, for `/mock/stats`.
#[derive(Default)]
struct LastRequest {
    authorization: String,
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
    rng: SharedRng,
    completions: AtomicU64,
    in_flight: AtomicU64,
    ok: AtomicU64,
    streams: Arc<StreamCounters>,
    /// Swapped in whole: the lock is held for a pointer swap, never across I/O or a wait.
    last: Mutex<Arc<LastRequest>>,
    bedrock: Bedrock,
}

impl Handler for Mock {
    fn handle(&self, req: &mut Request) -> Response {
        match (req.method, req.path.as_str()) {
            (Method::Post, "/v1/chat/completions") => {
                self.in_flight.fetch_add(1, Ordering::Relaxed);
                let r = self.chat_completion(req);
                self.in_flight.fetch_sub(1, Ordering::Relaxed);
                r
            }
            (Method::Get | Method::Head, "/v1/models") => models(),
            (Method::Get | Method::Head, "/mock/stats") => self.stats(),
            (_, p) if bedrock::is_bedrock_path(p) => {
                self.in_flight.fetch_add(1, Ordering::Relaxed);
                self.record(req, &bedrock::model_id(p));
                let r = self.bedrock_call(req);
                self.in_flight.fetch_sub(1, Ordering::Relaxed);
                r
            }
            (_, "/v1/chat/completions" | "/v1/models" | "/mock/stats") => {
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

impl Mock {
    fn chat_completion(&self, req: &Request) -> Response {
        let n = self.completions.fetch_add(1, Ordering::Relaxed) + 1;
        let parsed: Result<Value, _> = serde_json::from_slice(&req.body);
        let model = parsed
            .as_ref()
            .ok()
            .and_then(|v| v.get("model"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
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

        match self.draw_fault() {
            Some(Fault::Status(code)) => return self.injected_status(code),
            Some(Fault::Reset) => {
                req.abort_handle().abort();
                return Response::json(500, Vec::new()); // never sent: the write fails
            }
            Some(Fault::Stall) => may::coroutine::sleep(self.stall),
            None => {}
        }
        let latency = match directive_number(&model, "delay-") {
            Some(ms) => Duration::from_millis(ms).min(LATENCY_MAX),
            None if self.latency.is_zero() => Duration::ZERO,
            None => self
                .latency
                .sample(self.rng.next_u64(), self.rng.next_u64()),
        };
        if !latency.is_zero() {
            may::coroutine::sleep(latency);
        }
        if let Some(status) = directive_number(&model, "status-") {
            if (400..=599).contains(&status) {
                return injected_status(status as u16, None);
            }
        }
        if model.contains("garbage") {
            return Response::json(200, b"<html>this is not json".to_vec());
        }

        let prompt_chars: usize = messages
            .iter()
            .map(|m| message_text(m).chars().count())
            .sum();
        let last_user = messages
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .map(message_text)
            .unwrap_or_default();
        let content = format!("mock: {last_user}");
        let prompt_tokens = prompt_chars.div_ceil(4);
        let completion_tokens = content.chars().count().div_ceil(4);
        let id = format!("chatcmpl-mock{n:012}");
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let usage = json!({
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        });
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
            return self.stream(plan, &meta, &content, include_usage.then_some(&usage));
        }
        let answer = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": usage,
        });
        self.ok.fetch_add(1, Ordering::Relaxed);
        Response::json(200, serde_json::to_vec(&answer).unwrap_or_default())
    }

    /// A Bedrock request, with what it takes from the flags shared with the OpenAI endpoints.
    fn bedrock_call(&self, req: &Request) -> Response {
        let draw_fault = || self.draw_fault();
        let sample_latency = || {
            if self.latency.is_zero() {
                Duration::ZERO
            } else {
                self.latency
                    .sample(self.rng.next_u64(), self.rng.next_u64())
            }
        };
        let knobs = Knobs {
            draw_fault: &draw_fault,
            sample_latency: &sample_latency,
            stream_chunks: self.stream_chunks,
            chunk_delay: self.chunk_delay,
            stall: self.stall,
        };
        self.bedrock.handle(req, &knobs)
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

    fn injected_status(&self, code: u16) -> Response {
        let retry = matches!(code, 429 | 503).then_some(self.retry_after_s);
        injected_status(code, retry)
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

    fn stream(
        &self,
        plan: StreamPlan,
        meta: &ChunkMeta<'_>,
        content: &str,
        usage: Option<&Value>,
    ) -> Response {
        let pieces: Vec<Vec<u8>> = split_even(content, plan.chunks)
            .into_iter()
            .map(|p| meta.content(p))
            .collect();
        let mut tail = meta.finish();
        if let Some(u) = usage {
            tail.extend_from_slice(&meta.usage(u));
        }
        tail.extend_from_slice(DONE_EVENT);
        self.streams.started.fetch_add(1, Ordering::Relaxed);
        let stream = MockStream {
            head: Some(meta.role()),
            pieces,
            sent: 0,
            tail: Some(tail),
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
            "requests": get(&self.completions),
            "in_flight": get(&self.in_flight),
            "ok": get(&self.ok),
            "injected": injected,
            "streams_started": get(&s.started),
            "streams_completed": get(&s.completed),
            "streams_aborted": get(&s.aborted),
            "streams_failed": get(&s.failed),
            "streams_reset": get(&s.reset),
            "last_authorization": last.authorization,
            "last_model": last.model,
            "last_headers": last.headers,
            "bedrock": self.bedrock.stats(),
        });
        Response::json(200, serde_json::to_vec(&body).unwrap_or_default())
    }
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

/// A streamed answer: the role chunk, then the content chunks paced by `plan.delay`, then the
/// finish (and usage) chunks and `[DONE]`; or a failure after `fail_after`/`reset_after` chunks.
struct MockStream {
    head: Option<Vec<u8>>,
    pieces: Vec<Vec<u8>>,
    /// Content chunks yielded so far.
    sent: usize,
    tail: Option<Vec<u8>>,
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
            return StreamPoll::Chunk(error_event("mock: injected mid-stream failure"));
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
    let auth = match aws_auth(&opts) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("deepintshield-mock: {msg}");
            return ExitCode::from(2);
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
        rng: SharedRng::new(opts.seed),
        completions: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        streams: Arc::new(StreamCounters::default()),
        last: Mutex::new(Arc::new(LastRequest::default())),
        bedrock: Bedrock::new(auth, opts.bedrock_bad_crc_after),
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
        let o = parse(&[
            "--aws-access-key-id",
            "AKID",
            "--aws-secret-access-key=SECRET",
            "--aws-region",
            "eu-west-3",
            "--bedrock-bad-crc-after",
            "2",
        ])
        .unwrap()
        .unwrap();
        let auth = aws_auth(&o).unwrap().unwrap();
        assert_eq!(
            (auth.credentials.access_key_id(), auth.region.as_str()),
            ("AKID", "eu-west-3")
        );
        assert_eq!(o.bedrock_bad_crc_after, Some(2));
        assert!(parse(&["--aws-access-key-id", "AKID"]).is_err());
        assert!(parse(&["--aws-session-token", "T"]).is_err());
        assert!(parse(&[
            "--aws-access-key-id",
            "A",
            "--aws-secret-access-key",
            "S",
            "--aws-region",
            "US"
        ])
        .is_err());
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

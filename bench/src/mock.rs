//! `deepintshield-mock`: an OpenAI-, Azure OpenAI-, Anthropic-, Gemini- and Bedrock-compatible
//! mock upstream on the gateway's own HTTP layer, for end-to-end tests and load runs on loopback:
//! chat completions, Responses, legacy completions, embeddings and Messages (whole and streamed,
//! with tool calls), Azure's deployment and v1 routes with an Entra ID token endpoint, Gemini on
//! AI Studio and Vertex AI with a token endpoint, AWS Bedrock's runtime (`/model/{modelId}/...`,
//! see `bedrock.rs`), latency distributions, real SSE streams with paced chunks, fault injection
//! by rate and by model name, and counters at `/mock/stats`.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deepintshield::error::{ApiError, ErrorKind};
use deepintshield::formats::embeddings::{
    decode_openai_request, encode_openai_response, EmbeddingInput, EmbeddingsResponse,
};
use deepintshield::http::{
    serve, AbortHandle, BodyStream, ConnBuf, Handler, Limits, Method, Request, Response, StreamPoll,
};
use deepintshield::objpool::ObjPool;
use deepintshield::providers::aws_credentials::Credentials;
use deepintshield_bench::anthropic::{self, MessageMeta};
use deepintshield_bench::azure::{self, AzureOp, AzureRoute, Tokens};
use deepintshield_bench::bedrock::{self, Auth, Bedrock, Knobs, REGION_DEFAULT};
use deepintshield_bench::completion::{
    chat_answer, directive_number, error_event, message_text, split_even, ChatAnswer, ChunkMeta,
    DONE_EVENT,
};
use deepintshield_bench::dist::{Latency, SharedRng, LATENCY_MAX};
use deepintshield_bench::faults::{ErrorRates, Fault};
use deepintshield_bench::flags::Flags;
use deepintshield_bench::gemini::{self, TokenIssuer};
use deepintshield_bench::legacy::{self, TextChunkMeta, EMBEDDING_DIMENSIONS_DEFAULT};
use deepintshield_bench::responses::{self, ResponseMeta};
use deepintshield_bench::tools::fragments;
use serde_json::{json, Value};

const USAGE: &str = "\
deepintshield-mock: an OpenAI- and Anthropic-compatible and AWS Bedrock runtime mock upstream

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
    --token-expires-s N    lifetime of the Entra ID tokens the token endpoint issues, seconds
                           (default 3600, at most 86400)
    --vertex-credentials FILE   a service-account key file (JSON) whose account the token
                           endpoint accepts (repeatable); only its public key is used
    --token-ttl-s N        lifetime of the access tokens POST /token issues (default 3600)
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
                                last user message -> \"mock: tool result: <their text>\". With
                                `thinking` enabled (type enabled or adaptive) a signed thinking
                                block comes first (empty text with display omitted; a
                                redacted_thinking block when the last user message holds
                                Anthropic's redacted-thinking test string), streamed as
                                thinking_delta and signature_delta; thinking blocks sent back
                                with a signature (or data) the mock did not give are refused (400
                                \"Invalid `signature` in `thinking` block\"), and with thinking
                                enabled a turn returning tool results whose last assistant message
                                does not start with its thinking block is refused (400 \"Expected
                                `thinking` or `redacted_thinking`, but found ...\"). Errors
                                in Anthropic's shape ({\"type\":\"error\",\"error\":{...}}), a
                                `request-id` header on every answer
    POST /v1/completions        a legacy text_completion answering \"mock: <prompt>\" (the prompt
                                string, or the first of a list) with usage; with `stream: true`
                                text_completion chunks (--stream-chunks pieces), a chunk with
                                finish_reason \"stop\", a usage chunk (choices: []) when
                                stream_options.include_usage is set, then data: [DONE]
    POST /v1/embeddings         an embeddings list: per input a unit vector of `dimensions`
                                floats (default 8) drawn from a hash of the input (equal inputs,
                                equal vectors), as floats or base64 (`encoding_format`)
    POST /openai/deployments/{deployment}/chat/completions (and /completions, /embeddings)
                                Azure OpenAI: needs an `api-version` query parameter (else 404
                                \"Resource not found\") and `api-key` (any non-empty value) or
                                `Authorization: Bearer <a token the endpoint below issued, not
                                expired>` (else 401); then answers as the OpenAI route. Errors in
                                Azure's shape ({\"error\":{\"code\":\"<status>\",...}})
    POST /openai/v1/chat/completions (and /completions, /embeddings, /responses)
                                Azure OpenAI's v1 API: the same without `api-version`, the
                                deployment named by the body's `model`; /responses answers as
                                /v1/responses
    POST /openai/responses      Azure's Responses API in the deployments style: needs
                                `api-version` (else 404) of 2025-03-01-preview or later (else 400
                                \"Azure OpenAI Responses API is enabled only for api-version
                                2025-03-01-preview and later\"), the deployment named by the
                                body's `model`; then as /v1/responses
    POST /entra/{tenant}/oauth2/v2.0/token
                                Entra ID client credentials: a form with grant_type
                                client_credentials, client_id, client_secret and scope (else 400
                                invalid_request; a client_secret starting with \"wrong\" gets 401
                                invalid_client) -> {\"token_type\":\"Bearer\",\"expires_in\":
                                --token-expires-s,\"access_token\":\"mocktoken-<n>\"}
    POST /v1/messages/count_tokens   {\"input_tokens\": N} (the same N as the answer's usage)
    GET  /v1/models             a model list: Anthropic's shape when `anthropic-version` is sent,
                                else OpenAI's
    POST /v1beta/models/{model}:generateContent   Google AI Studio's Gemini API: needs
                                `x-goog-api-key` (else 403 PERMISSION_DENIED). Refuses (400
                                INVALID_ARGUMENT, as Gemini does) unknown top-level fields, schema
                                keywords Gemini's Schema lacks (additionalProperties, $schema, ...),
                                empty text parts, and function calls sent back without the
                                thoughtSignature the mock gave them. Answers \"mock: <last user
                                text>\"; the tool trigger (or toolConfig mode ANY) with
                                functionDeclarations -> a functionCall part with a thoughtSignature;
                                functionResponse parts -> \"mock: tool result: <output>\"; a JSON
                                responseSchema -> an instance of it. Model names with `safety`
                                stop with finishReason SAFETY and no content; with `blocked` the
                                prompt is blocked (promptFeedback.blockReason, no candidates)
    POST /v1beta/models/{model}:streamGenerateContent   the same as SSE chunks (?alt=sse; no
                                terminator: the last chunk has finishReason and usageMetadata)
    POST /v1beta/models/{model}:batchEmbedContents   deterministic unit vectors
                                (outputDimensionality, default 768); no token count, as Google's
    POST /v1/projects/{p}/locations/{l}/publishers/google/models/{model}:generateContent,
         ...:streamGenerateContent, ...:predict   Vertex AI: the same bodies (predict: embeddings
                                with statistics.token_count), needing `Authorization: Bearer
                                <token>` of a live token from POST /token (else 401 UNAUTHENTICATED)
    POST /token                 OAuth2 jwt-bearer grant: the assertion must be RS256-signed by an
                                account of --vertex-credentials, with aud ending in /token and the
                                cloud-platform scope; answers {access_token, expires_in:
                                --token-ttl-s}; else 400 invalid_grant
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
        requests            model calls received (chat completions, responses and messages)
        messages_requests   of those, Anthropic messages
        responses_requests  of those, OpenAI Responses
        count_tokens_requests   count_tokens calls
        in_flight           model calls being answered now (Bedrock ones too)
        ok                  non-streamed 200 answers
        tool_calls          answers that called a tool
        injected            {status_<code>, reset, stall}: faults drawn by --error-rate
        streams_started     streamed answers begun
        streams_completed   streams that ended whole (data: [DONE], message_stop, response.completed)
        streams_aborted     streams whose client went away before the end
        streams_failed      streams ended by a failafter- error event
        streams_reset       streams cut by resetafter-
        completions_requests, embeddings_requests   legacy completion and embeddings calls
        azure_requests      calls on the Azure routes (answered or refused)
        token_requests      tokens issued by the Entra ID endpoint
        last_authorization, last_api_key, last_model, last_headers   what the last call carried
        last_path, last_query, last_body   its path, query string and JSON body (null if not JSON)
        last_azure_deployment, last_azure_api_version, last_azure_api_key   on an Azure route
        last_token_request  {tenant, client_id, scope} of the last token request
        gemini_requests, vertex_requests   Google calls
        google_embeddings_requests   embeddings calls on the Google APIs (both)
        google_token_requests   {<account>: n, refused: n}: POST /token calls
        last_goog_api_key   the x-goog-api-key of the last call
        bedrock             the Bedrock endpoints' own counters: requests, converse,
                            converse_stream, invoke, ok, signature_rejected, injected,
                            streams_{started,completed,failed,aborted,reset}, crc_corrupted

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
    retryms-<ms>      on an Azure route, a `status-` answer carries `retry-after-ms: <ms>`
                      (and no Retry-After)
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
const TOOL_TEXT_DEFAULT: &str = "mock";
/// Longest `--tool-text`, in bytes: it is copied into every tool call's arguments.
const TOOL_TEXT_BYTES_MAX: usize = 4096;
const TOKEN_EXPIRES_S_DEFAULT: u64 = 3600;
const TOKEN_EXPIRES_S_MAX: u64 = 86_400;
/// Lifetime of the access tokens `POST /token` issues, seconds (Google's are an hour).
const TOKEN_TTL_S_DEFAULT: u64 = 3600;

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
    token_expires: Duration,
    vertex_credentials: Vec<String>,
    token_ttl_s: u64,
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
        tool_text: TOOL_TEXT_DEFAULT.to_string(),
        seed: 1,
        token_expires: Duration::from_secs(TOKEN_EXPIRES_S_DEFAULT),
        vertex_credentials: Vec::new(),
        token_ttl_s: TOKEN_TTL_S_DEFAULT,
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
            "--tool-text" => o.tool_text = flags.value()?,
            "--seed" => o.seed = flags.parse()?,
            "--token-expires-s" => {
                let secs: u64 = flags.parse()?;
                if secs > TOKEN_EXPIRES_S_MAX {
                    return Err(format!("--token-expires-s: at most {TOKEN_EXPIRES_S_MAX}"));
                }
                o.token_expires = Duration::from_secs(secs);
            }
            "--vertex-credentials" => o.vertex_credentials.push(flags.value()?),
            "--token-ttl-s" => o.token_ttl_s = flags.positive()?,
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
    if o.tool_text.len() > TOOL_TEXT_BYTES_MAX {
        return Err(format!("--tool-text: at most {TOOL_TEXT_BYTES_MAX} bytes"));
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

/// What the last model call looked like, for `/mock/stats`.
#[derive(Default)]
struct LastRequest {
    authorization: String,
    /// `x-api-key` (Anthropic's authentication header).
    api_key: String,
    /// `x-goog-api-key` (Google AI Studio's).
    goog_api_key: String,
    model: String,
    headers: serde_json::Map<String, Value>,
    path: String,
    query: String,
    body: Value,
    /// Set on an Azure route: the deployment of its path, its `api-version`, its `api-key`.
    azure_deployment: String,
    azure_api_version: String,
    azure_api_key: String,
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
    completions_requests: AtomicU64,
    embeddings_requests: AtomicU64,
    azure_requests: AtomicU64,
    streams: Arc<StreamCounters>,
    /// Swapped in whole: the lock is held for a pointer swap, never across I/O or a wait.
    last: Mutex<Arc<LastRequest>>,
    /// The Entra ID token endpoint's tokens.
    tokens: Tokens,
    last_token_request: Mutex<Value>,
    google: gemini::Counters,
    /// The Vertex AI token endpoint's tokens.
    google_tokens: TokenIssuer,
    bedrock: Bedrock,
}

impl Handler for Mock {
    fn handle(&self, req: &mut Request) -> Response {
        if let Some(route) = azure::route(&req.path) {
            if req.method == Method::Post {
                return self.azure(req, route);
            }
        }
        if req.method == Method::Post && azure::token_tenant(&req.path).is_some() {
            return self.entra_token(req);
        }
        match (req.method, req.path.as_str()) {
            (Method::Post, "/v1/chat/completions") => self.model_call(req, Self::chat_completion),
            (Method::Post, "/v1/completions") => self.model_call(req, Self::text_completion),
            (Method::Post, "/v1/embeddings") => self.model_call(req, Self::embeddings),
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
            (Method::Post, "/token") => self.token(req),
            (Method::Post, path) if gemini::route(path).is_some() => {
                let route = gemini::route(path).unwrap_or(gemini::Route {
                    vertex: false,
                    model: String::new(),
                    method: String::new(),
                });
                self.model_call(req, |m, req, n| m.google(req, &route, n))
            }
            (_, "/v1/messages" | "/v1/messages/count_tokens") => anthropic_error(
                405,
                "Method not allowed on this path",
                "req_mock000000000000",
                None,
            ),
            (
                _,
                "/v1/chat/completions"
                | "/v1/responses"
                | "/v1/completions"
                | "/v1/embeddings"
                | "/v1/models"
                | "/mock/stats",
            ) => Response::error(&ApiError::new(
                ErrorKind::MethodNotAllowed,
                "method_not_allowed",
                "method not allowed on this path",
            )),
            (_, p) if bedrock::is_bedrock_path(p) => {
                self.in_flight.fetch_add(1, Ordering::Relaxed);
                self.record(req, &bedrock::model_id(p));
                let r = self.bedrock_call(req);
                self.in_flight.fetch_sub(1, Ordering::Relaxed);
                r
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
    /// OpenAI's bodies, Azure's error shape.
    Azure,
    /// Gemini on Google AI Studio or Vertex AI.
    Google,
}

impl Mock {
    /// A model call, counted in `requests` and `in_flight` while it is answered.
    fn model_call(
        &self,
        req: &Request,
        answer: impl Fn(&Self, &Request, u64) -> Response,
    ) -> Response {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let r = answer(self, req, n);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        r
    }

    fn chat_completion(&self, req: &Request, n: u64) -> Response {
        self.chat_completion_as(req, n, Api::OpenAi)
    }

    /// An OpenAI-shaped request's body and model, recorded; an OpenAI error when the body is not
    /// a JSON object or names no model.
    fn openai_body(&self, req: &Request) -> Result<(Value, String), Response> {
        let parsed: Result<Value, _> = serde_json::from_slice(&req.body);
        let model = model_of(&parsed);
        self.record(req, &model);
        let body = match parsed {
            Ok(v) if v.is_object() => v,
            _ => {
                return Err(Response::error(&ApiError::bad_request(
                    "invalid_json",
                    "the request body is not a JSON object",
                )))
            }
        };
        if model.is_empty() {
            return Err(Response::error(&ApiError::bad_request(
                "missing_model",
                "`model` is required",
            )));
        }
        Ok((body, model))
    }

    fn chat_completion_as(&self, req: &Request, n: u64, api: Api) -> Response {
        let (body, model) = match self.openai_body(req) {
            Ok(parsed) => parsed,
            Err(r) => return r,
        };
        let Some(messages) = body.get("messages").and_then(Value::as_array) else {
            return Response::error(&ApiError::bad_request(
                "missing_messages",
                "`messages` must be an array",
            ));
        };
        if let Some(r) = self.faults(req, &model, api, "") {
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
            return self.stream(plan, Some(head), pieces, tail, failure);
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
        self.responses_as(req, n, Api::OpenAi)
    }

    /// The Responses API on `api`'s routes (injected faults in its error shape).
    fn responses_as(&self, req: &Request, n: u64, api: Api) -> Response {
        self.responses_requests.fetch_add(1, Ordering::Relaxed);
        let (body, model) = match self.openai_body(req) {
            Ok(parsed) => parsed,
            Err(r) => return r,
        };
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
        if let Some(r) = self.faults(req, &model, api, "") {
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
            return self.stream(plan, Some(head), pieces, tail, failure);
        }
        self.ok.fetch_add(1, Ordering::Relaxed);
        json_response(200, &meta.whole(&answer))
    }

    /// `POST /v1/completions`: OpenAI's legacy completions.
    fn text_completion(&self, req: &Request, n: u64) -> Response {
        self.text_completion_as(req, n, Api::OpenAi)
    }

    fn text_completion_as(&self, req: &Request, n: u64, api: Api) -> Response {
        self.completions_requests.fetch_add(1, Ordering::Relaxed);
        let (body, model) = match self.openai_body(req) {
            Ok(parsed) => parsed,
            Err(r) => return r,
        };
        let Some(prompt) = legacy::prompt_text(&body) else {
            return Response::error(&ApiError::bad_request(
                "invalid_prompt",
                "`prompt` must be a string or a list of strings",
            ));
        };
        if let Some(r) = self.faults(req, &model, api, "") {
            return r;
        }
        let text = format!("mock: {prompt}");
        let (prompt_tokens, completion_tokens) = (
            prompt.chars().count().div_ceil(4),
            text.chars().count().div_ceil(4),
        );
        let usage = json!({
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        });
        let id = format!("cmpl-mock{n:012}");
        let meta = TextChunkMeta {
            id: &id,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: &model,
        };
        if body.get("stream").and_then(Value::as_bool) == Some(true) {
            let plan = self.stream_plan(&model, req.abort_handle());
            let mut pieces: Vec<Vec<u8>> = split_even(&text, plan.chunks)
                .into_iter()
                .map(|p| meta.text(p))
                .collect();
            let head = pieces.remove(0);
            let mut tail = meta.finish();
            if body
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                == Some(true)
            {
                tail.extend_from_slice(&meta.usage(&usage));
            }
            tail.extend_from_slice(DONE_EVENT);
            let failure = error_event("mock: injected mid-stream failure");
            return self.stream(plan, Some(head), pieces, tail, failure);
        }
        self.ok.fetch_add(1, Ordering::Relaxed);
        json_response(200, &meta.whole(&text, &usage))
    }

    /// `POST /v1/embeddings`: deterministic vectors, as floats or base64.
    fn embeddings(&self, req: &Request, n: u64) -> Response {
        self.embeddings_as(req, n, Api::OpenAi)
    }

    fn embeddings_as(&self, req: &Request, _n: u64, api: Api) -> Response {
        self.embeddings_requests.fetch_add(1, Ordering::Relaxed);
        let parsed: Result<Value, _> = serde_json::from_slice(&req.body);
        let model = model_of(&parsed);
        self.record(req, &model);
        let request = match decode_openai_request(&req.body) {
            Ok(r) => r,
            Err(e) => return Response::error(&ApiError::from(e)),
        };
        if let Some(r) = self.faults(req, &model, api, "") {
            return r;
        }
        let dimensions = request
            .dimensions
            .map_or(EMBEDDING_DIMENSIONS_DEFAULT, |d| d as usize);
        let (vectors, input_tokens) = match &request.input {
            EmbeddingInput::Texts(texts) => (
                texts
                    .iter()
                    .map(|t| legacy::embedding(t.as_bytes(), dimensions))
                    .collect(),
                texts
                    .iter()
                    .map(|t| t.chars().count().div_ceil(4) as u64)
                    .sum(),
            ),
            EmbeddingInput::Tokens(lists) => (
                lists
                    .iter()
                    .map(|l| {
                        let bytes: Vec<u8> = l.iter().flat_map(|t| t.to_le_bytes()).collect();
                        legacy::embedding(&bytes, dimensions)
                    })
                    .collect(),
                lists.iter().map(|l| l.len() as u64).sum(),
            ),
        };
        let resp = EmbeddingsResponse {
            model: request.model.clone(),
            vectors,
            input_tokens,
        };
        let mut out = Vec::new();
        encode_openai_response(&resp, request.encoding, &mut out);
        self.ok.fetch_add(1, Ordering::Relaxed);
        Response::json(200, out)
    }

    /// An Azure OpenAI route: `api-version` (deployment routes) and the credential are checked
    /// as Azure does, then the OpenAI answer is given, with errors in Azure's shape.
    fn azure(&self, req: &Request, route: AzureRoute<'_>) -> Response {
        self.azure_requests.fetch_add(1, Ordering::Relaxed);
        let version = azure::form_value(&req.query, "api-version").filter(|v| !v.is_empty());
        if route.versioned && version.is_none() {
            self.record(req, "");
            return azure_error(404, "Resource not found", None);
        }
        let old_responses = route.op == AzureOp::Responses
            && route.versioned
            && !version.as_deref().is_some_and(azure::responses_version_ok);
        if old_responses {
            self.record(req, "");
            return azure_error(400, azure::RESPONSES_VERSION_REQUIRED, None);
        }
        let bearer = req
            .header("authorization")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let authorized = req.header("api-key").is_some_and(|k| !k.is_empty())
            || bearer.is_some_and(|t| self.tokens.valid(t));
        if !authorized {
            self.record(req, "");
            return azure_error(401, azure::ACCESS_DENIED, None);
        }
        let answer: fn(&Self, &Request, u64, Api) -> Response = match route.op {
            AzureOp::Chat => Self::chat_completion_as,
            AzureOp::Completions => Self::text_completion_as,
            AzureOp::Embeddings => Self::embeddings_as,
            AzureOp::Responses => Self::responses_as,
        };
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let r = answer(self, req, n, Api::Azure);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        r
    }

    /// `POST /entra/{tenant}/oauth2/v2.0/token`: the client credentials grant.
    fn entra_token(&self, req: &Request) -> Response {
        let form = String::from_utf8_lossy(&req.body);
        let field = |name: &str| azure::form_value(&form, name).filter(|v| !v.is_empty());
        let tenant = azure::token_tenant(&req.path).unwrap_or_default();
        if let Ok(mut last) = self.last_token_request.lock() {
            *last = json!({
                "tenant": tenant,
                "client_id": field("client_id"),
                "scope": field("scope"),
            });
        }
        let oauth_error = |status: u16, error: &str, description: &str| {
            let body =
                json!({"error": error, "error_description": description, "error_codes": [0]});
            json_response(status, &body)
        };
        if field("grant_type").as_deref() != Some("client_credentials") {
            return oauth_error(
                400,
                "unsupported_grant_type",
                "grant_type must be client_credentials",
            );
        }
        let (Some(_), Some(secret), Some(_)) =
            (field("client_id"), field("client_secret"), field("scope"))
        else {
            return oauth_error(
                400,
                "invalid_request",
                "client_id, client_secret and scope are required",
            );
        };
        if secret.starts_with("wrong") {
            return oauth_error(401, "invalid_client", "Invalid client secret provided.");
        }
        let (token, expires_in) = self.tokens.issue();
        json_response(
            200,
            &json!({
                "token_type": "Bearer",
                "expires_in": expires_in,
                "ext_expires_in": expires_in,
                "access_token": token,
            }),
        )
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
        if let Some(msg) = anthropic::thinking_error(&body) {
            return anthropic_error(400, &msg, &request_id, None);
        }
        if let Some(r) = self.faults(req, &model, Api::Anthropic, &request_id) {
            return r;
        }

        let answer = anthropic::answer(&body, &self.tool_text);
        let thinking = anthropic::thinking(&body);
        let tool_id = format!("toolu_mock{n:012}");
        let msg_id = format!("msg_mock{n:012}");
        let meta = MessageMeta {
            id: &msg_id,
            model: &model,
            input_tokens: anthropic::input_tokens(&body),
            thinking: thinking.as_ref(),
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
            let mut r = self.stream(plan, Some(head), pieces, tail, failure);
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
                    Api::OpenAi | Api::Azure | Api::Google => matches!(code, 429 | 503),
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
                if api == Api::Azure {
                    return Some(azure_injected(code, directive_number(model, "retryms-")));
                }
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
            Api::Azure => {
                let mut r = azure_injected(code, None);
                if let Some(s) = retry_after_s {
                    r.headers.push(("retry-after", s.to_string()));
                }
                r
            }
            Api::Google => google_error(
                code,
                &format!("mock: injected status {code}"),
                retry_after_s,
            ),
            Api::Anthropic => anthropic_error(
                code,
                &format!("mock: injected status {code}"),
                request_id,
                retry_after_s,
            ),
        }
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
        head: Option<Vec<u8>>,
        pieces: Vec<Vec<u8>>,
        tail: Vec<u8>,
        failure: Vec<u8>,
    ) -> Response {
        self.streams.started.fetch_add(1, Ordering::Relaxed);
        let stream = MockStream {
            head,
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
        let route = azure::route(&req.path);
        let last = LastRequest {
            authorization: req.header("authorization").map(header).unwrap_or_default(),
            api_key: req.header("x-api-key").map(header).unwrap_or_default(),
            goog_api_key: req.header("x-goog-api-key").map(header).unwrap_or_default(),
            model: model.to_string(),
            headers: req
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), Value::String(header(v))))
                .collect(),
            path: req.path.clone(),
            query: req.query.clone(),
            body: serde_json::from_slice(&req.body).unwrap_or(Value::Null),
            azure_deployment: route
                .and_then(|r| r.deployment)
                .unwrap_or_default()
                .to_string(),
            azure_api_version: route
                .and_then(|_| azure::form_value(&req.query, "api-version"))
                .unwrap_or_default(),
            azure_api_key: route
                .and_then(|_| req.header("api-key"))
                .map(header)
                .unwrap_or_default(),
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
            "last_goog_api_key": last.goog_api_key,
            "gemini_requests": get(&self.google.gemini_requests),
            "vertex_requests": get(&self.google.vertex_requests),
            "google_embeddings_requests": get(&self.google.embeddings_requests),
            "google_token_requests": Value::Object(
                self.google
                    .token_requests
                    .lock()
                    .map(|m| m.clone())
                    .unwrap_or_default(),
            ),
            "last_model": last.model,
            "last_headers": last.headers,
            "last_path": last.path,
            "last_query": last.query,
            "last_body": last.body,
            "last_azure_deployment": last.azure_deployment,
            "last_azure_api_version": last.azure_api_version,
            "last_azure_api_key": last.azure_api_key,
            "completions_requests": get(&self.completions_requests),
            "embeddings_requests": get(&self.embeddings_requests),
            "azure_requests": get(&self.azure_requests),
            "token_requests": self.tokens.count(),
            "last_token_request": self
                .last_token_request
                .lock()
                .map(|v| v.clone())
                .unwrap_or(Value::Null),
            "bedrock": self.bedrock.stats(),
        });
        json_response(200, &body)
    }
}

impl Mock {
    /// `POST /token`: the OAuth2 jwt-bearer exchange.
    fn token(&self, req: &Request) -> Response {
        match self.google_tokens.exchange(&req.body) {
            Ok((account, answer)) => {
                self.google.count_token(&account);
                json_response(200, &answer)
            }
            Err(refusal) => {
                self.google.count_token("refused");
                Response::json(refusal.status, refusal.body)
            }
        }
    }

    /// A Gemini or Vertex AI call: authentication, the API's checks, faults, then the answer.
    fn google(&self, req: &Request, route: &gemini::Route, n: u64) -> Response {
        let counter = match route.vertex {
            true => &self.google.vertex_requests,
            false => &self.google.gemini_requests,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.record(req, &route.model);
        if route.vertex {
            if !self.google_tokens.valid(req.header("authorization")) {
                let msg = "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.";
                return google_error(401, msg, None);
            }
        } else if req.header("x-goog-api-key").is_none_or(<[u8]>::is_empty) {
            let msg = "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.";
            return google_error(403, msg, None);
        }
        let body: Value = match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(e) => {
                return google_error(400, &format!("Invalid JSON payload received. {e}"), None)
            }
        };
        let (embed, stream) = match (route.method.as_str(), route.vertex) {
            ("generateContent", _) => (false, false),
            ("streamGenerateContent", _) => (false, true),
            ("batchEmbedContents", false) | ("predict", true) => (true, false),
            _ => {
                let msg = format!(
                    "Method {} is not found for model {}.",
                    route.method, route.model
                );
                return google_error(404, &msg, None);
            }
        };
        if embed {
            self.google
                .embeddings_requests
                .fetch_add(1, Ordering::Relaxed);
            let answer = match route.vertex {
                true => gemini::predict(&body),
                false => gemini::batch_embed(&body, &route.model),
            };
            return match answer {
                Ok(v) => {
                    self.ok.fetch_add(1, Ordering::Relaxed);
                    json_response(200, &v)
                }
                Err(msg) => google_error(400, &msg, None),
            };
        }
        if let Some(msg) = gemini::invalid_request(&body) {
            return google_error(400, &msg, None);
        }
        if stream && req.query != "alt=sse" {
            return google_error(400, "mock: streams are served as SSE only (?alt=sse)", None);
        }
        if let Some(r) = self.faults(req, &route.model, Api::Google, "") {
            return r;
        }
        let answer = gemini::answer(&body, &route.model, &self.tool_text);
        if matches!(answer, gemini::Answer::Call { .. }) {
            self.tool_calls.fetch_add(1, Ordering::Relaxed);
        }
        let response_id = format!("mockresp{n:012}");
        let meta = gemini::Meta {
            response_id: &response_id,
            model: &route.model,
            prompt_tokens: gemini::prompt_tokens(&body),
        };
        if stream {
            let plan = self.stream_plan(&route.model, req.abort_handle());
            let text = match &answer {
                gemini::Answer::Text(t) => t.as_str(),
                _ => "",
            };
            let (pieces, tail) = meta.stream(&answer, &split_even(text, plan.chunks));
            let failure = gemini::error_event("mock: injected mid-stream failure");
            return self.stream(plan, None, pieces, tail, failure);
        }
        self.ok.fetch_add(1, Ordering::Relaxed);
        json_response(200, &meta.whole(&answer))
    }
}

/// An error in Google's shape (`{"error":{"code","message","status"}}`).
fn google_error(status: u16, message: &str, retry_after_s: Option<u64>) -> Response {
    let mut r = Response::json(status, gemini::error_body(status, message));
    if let Some(s) = retry_after_s {
        r.headers.push(("retry-after", s.to_string()));
    }
    r
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

/// An error in Azure OpenAI's shape, with `retry-after-ms` when given.
fn azure_error(status: u16, message: &str, retry_after_ms: Option<u64>) -> Response {
    let mut r = Response::json(status, azure::error_body(status, message));
    if let Some(ms) = retry_after_ms {
        r.headers.push(("retry-after-ms", ms.to_string()));
    }
    r
}

/// An injected status on an Azure route.
fn azure_injected(status: u16, retry_after_ms: Option<u64>) -> Response {
    azure_error(
        status,
        &format!("mock: injected status {status}"),
        retry_after_ms,
    )
}

fn models() -> Response {
    let model = |id: &str| json!({"id": id, "object": "model", "created": 0, "owned_by": "mock"});
    let body = json!({
        "object": "list",
        "data": [model("mock-gpt-4o-mini"), model("mock-gpt-4o")],
    });
    Response::json(200, serde_json::to_vec(&body).unwrap_or_default())
}

fn new_buffer() -> ConnBuf {
    ConnBuf(Vec::with_capacity(BUFFER_BYTES_INITIAL))
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
    let mut accounts = Vec::with_capacity(opts.vertex_credentials.len());
    for path in &opts.vertex_credentials {
        let account = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| gemini::Account::from_key_file(&text));
        match account {
            Ok(a) => accounts.push(a),
            Err(e) => {
                eprintln!("deepintshield-mock: --vertex-credentials {path}: {e}");
                return ExitCode::from(2);
            }
        }
    }
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
        tool_text: opts.tool_text,
        rng: SharedRng::new(opts.seed),
        requests: AtomicU64::new(0),
        messages_requests: AtomicU64::new(0),
        responses_requests: AtomicU64::new(0),
        count_tokens_requests: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        tool_calls: AtomicU64::new(0),
        completions_requests: AtomicU64::new(0),
        embeddings_requests: AtomicU64::new(0),
        azure_requests: AtomicU64::new(0),
        streams: Arc::new(StreamCounters::default()),
        last: Mutex::new(Arc::new(LastRequest::default())),
        tokens: Tokens::new(opts.token_expires),
        last_token_request: Mutex::new(Value::Null),
        google: gemini::Counters::default(),
        google_tokens: TokenIssuer::new(accounts, Duration::from_secs(opts.token_ttl_s)),
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

    #[test]
    fn parses_aws_flags() {
        let parse = |a: &[&str]| parse_args(a.iter().map(|s| s.to_string()));
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

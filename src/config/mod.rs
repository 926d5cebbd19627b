//! TOML config -> validated [`Config`]: file structs with every field optional and unknown keys
//! denied, defaults as documented constants, secrets only as `env:VAR` or `file:PATH` references.
//!
//! Flow: [`Config::load`] reads the file, `toml` fills the all-`Option` file structs (unknown keys
//! are errors with line and column), then a checker turns them into [`Config`], filling defaults
//! and collecting every error, each named by its key path (`providers.openai.pool.workers: ...`).
//! No error message ever holds a secret value: secrets are resolved here and only their reference
//! (`env:VAR`, `file:PATH`) is ever named.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::log::Level;

pub mod aws_credentials;
mod azure;
mod bedrock;
mod governance;
mod limits;
mod os;
mod presets;
mod vertex;

pub use azure::{
    AzureApiStyle, AzureAuth, AzureConfig, EntraConfig, AZURE_API_VERSION_DEFAULT,
    AZURE_RESPONSES_API_VERSION_DEFAULT, AZURE_SCOPE_DEFAULT, AZURE_TOKEN_URL_DEFAULT,
};
pub use bedrock::{runtime_base_url, BedrockConfig};
pub use governance::{
    hash_text, parse_hex32, sha256, AuthMode, KeyHash, PluginName, PluginsConfig, PricesConfig,
    StoreConfig, HASH_PREFIX,
};
pub use limits::{
    BreakerConfig, Limits, MaxTokensField, StructuredOutputStyle, ThinkingStyle, ToolCallIdFormat,
};
use limits::{
    BODY_BUFFER_BYTES_MAX_DEFAULT, BODY_BYTES_MAX_DEFAULT, BODY_READ_TIMEOUT_MS_DEFAULT,
    BODY_TIMEOUT_MS_DEFAULT, CONNECTIONS_MAX_DEFAULT, COROUTINE_STACK_KB_DEFAULT,
    HEADER_BYTES_MAX_DEFAULT, HEADER_LINES_MAX_DEFAULT, HEADER_READ_TIMEOUT_MS_DEFAULT,
    IDLE_TIMEOUT_MS_DEFAULT, WRITE_TIMEOUT_MS_DEFAULT,
};
pub use os::{OsNeeds, MAPS_PER_THREAD, SYSTEMD_TASKS_MAX, UPSTREAM_CONNECTIONS_PER_WORKER};
pub use presets::{Preset, PresetDefaults, PRESETS};
pub use vertex::{
    vertex_base_url, PrivateKey, ServiceAccount, VertexConfig, GEMINI_BASE_URL_DEFAULT,
    VERTEX_CREDENTIALS_BYTES_MAX, VERTEX_TOKEN_URI_DEFAULT,
};

// ---------------------------------------------------------------------------------------------
// Defaults and bounds. Each `*_DEFAULT` is what an absent key means; each `*_RANGE` is the
// inclusive range a present key must fall in (the front's own defaults live in `limits`).
// ---------------------------------------------------------------------------------------------

/// `server.listen`: the API listener.
pub const LISTEN_DEFAULT: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
/// `server.admin_listen`: `/stats` and `/health`.
pub const ADMIN_LISTEN_DEFAULT: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9090));
/// `server.threads`: 0 = one may scheduler thread per core (per listed `server.cores` if any,
/// else per core from `std::thread::available_parallelism`).
pub const THREADS_DEFAULT: u64 = 0;
pub const THREADS_RANGE: RangeInclusive<u64> = 0..=1024;
/// `server.coroutine_stack_kb`, KiB per connection coroutine (default
/// `limits::COROUTINE_STACK_KB_DEFAULT`), guard page included. The floor keeps a 2.5x margin
/// over the deepest connection measured (`tests/tls_upstream.rs`, `pools_and_connections_at_
/// the_smallest_stacks_...`: a 2 MiB body, and JSON nested to `json_depth_max = 128` in every
/// field routing reads, on both client APIs): 24 KiB in a debug build, less in a release build.
pub const COROUTINE_STACK_KB_RANGE: RangeInclusive<u64> = 64..=65_536;
/// `server.header_lines_max` (default `limits::HEADER_LINES_MAX_DEFAULT`).
pub const HEADER_LINES_MAX_RANGE: RangeInclusive<u64> = 1..=4096;
/// `server.header_bytes_max`, bytes (default `limits::HEADER_BYTES_MAX_DEFAULT`).
pub const HEADER_BYTES_MAX_RANGE: RangeInclusive<u64> = 1024..=1024 * 1024;
/// `server.body_bytes_max`, bytes (default `limits::BODY_BYTES_MAX_DEFAULT`).
pub const BODY_BYTES_MAX_RANGE: RangeInclusive<u64> = 1..=1024 * 1024 * 1024;
/// `server.connections_max`, open connections per listener (default
/// `limits::CONNECTIONS_MAX_DEFAULT`).
pub const CONNECTIONS_MAX_RANGE: RangeInclusive<u64> = 1..=1_048_576;
/// `server.body_buffer_bytes_max`, bytes of request bodies buffered at once per listener (default
/// `limits::BODY_BUFFER_BYTES_MAX_DEFAULT`); also at least `server.body_bytes_max`.
pub const BODY_BUFFER_BYTES_MAX_RANGE: RangeInclusive<u64> = 1..=64 * 1024 * 1024 * 1024;
/// `server.json_depth_max`: nesting depth of request JSON.
pub const JSON_DEPTH_MAX_DEFAULT: u64 = 64;
pub const JSON_DEPTH_MAX_RANGE: RangeInclusive<u64> = 1..=128; // serde_json recurses at most 128 levels
/// Every `*_timeout_ms` key: at least 1 ms (0 would mean "no timeout" to some callees), at most
/// one hour.
pub const TIMEOUT_MS_RANGE: RangeInclusive<u64> = 1..=3_600_000;
/// `server.shutdown_timeout_ms`: time to finish queued and in-flight jobs on SIGTERM.
pub const SHUTDOWN_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Most entries in `server.client_keys`.
pub const CLIENT_KEYS_MAX: usize = 1024;

/// `stats.stdout_interval_ms`: period of the stdout stats line; 0 = off.
pub const STATS_STDOUT_INTERVAL_MS_DEFAULT: u64 = 10_000;
/// Non-zero `stats.stdout_interval_ms` range: a faster line would flood the journal.
pub const STATS_STDOUT_INTERVAL_MS_RANGE: RangeInclusive<u64> = 100..=86_400_000;
/// `stats.objpool_hit_ratio_warn`: warn when an object pool's hit ratio stays below (0.0..=1.0).
pub const STATS_OBJPOOL_HIT_RATIO_WARN_DEFAULT: f64 = 0.9;

/// `log.level`: the most verbose level written to stderr.
pub const LOG_LEVEL_DEFAULT: Level = Level::Info;
/// `log.access`: one access-log line per chat request.
pub const LOG_ACCESS_DEFAULT: bool = true;

/// `objpools.buffers`: buffers held by the connection-buffer pool (a connection borrows one to
/// read while a request arrives and one to write while its answer goes out, and holds none while
/// its request is with a worker or once idle; past the pool's capacity they are made and freed).
pub const OBJPOOL_BUFFERS_DEFAULT: u64 = 1024;
pub const OBJPOOL_BUFFERS_RANGE: RangeInclusive<u64> = 1..=65_536;
/// `objpools.buffers_prefill`: buffers made at start-up (at most `objpools.buffers`), each of
/// [`OBJPOOL_BUFFER_BYTES_INITIAL`] plus a reply channel: the range's top costs about 150 MiB at
/// start (its old top, 1,048,576, cost 9.8 GB).
pub const OBJPOOL_BUFFERS_PREFILL_DEFAULT: u64 = 256;
pub const OBJPOOL_BUFFERS_PREFILL_RANGE: RangeInclusive<u64> = 0..=16_384;
/// Capacity of a connection buffer when it is made, bytes.
pub const OBJPOOL_BUFFER_BYTES_INITIAL: usize = 8 * 1024;
/// `objpools.buffer_retain_bytes_max`, bytes: larger buffers are dropped, not returned.
pub const OBJPOOL_BUFFER_RETAIN_BYTES_MAX_DEFAULT: u64 = 1024 * 1024;
pub const OBJPOOL_BUFFER_RETAIN_BYTES_MAX_RANGE: RangeInclusive<u64> = 1024..=64 * 1024 * 1024;
/// The most memory the idle buffers of the pool may keep, bytes: `objpools.buffers` x
/// `objpools.buffer_retain_bytes_max` must not exceed it (the defaults keep at most 1 GiB).
pub const OBJPOOL_RETAINED_BYTES_MAX: u64 = 8 * 1024 * 1024 * 1024;

/// Most providers in one config.
pub const PROVIDERS_MAX: usize = 256;
/// Longest provider name, bytes (names are `[a-z0-9_-]+`).
pub const PROVIDER_NAME_BYTES_MAX: usize = 64;
/// `providers.<name>.connect_timeout_ms`: TCP + TLS connect to the upstream.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Most entries in `providers.<name>.keys`.
pub const KEYS_MAX: usize = 1024;
/// `providers.<name>.keys[i].weight`: relative weight of the key in the weighted choice.
pub const KEY_WEIGHT_DEFAULT: u64 = 1;
pub const KEY_WEIGHT_RANGE: RangeInclusive<u64> = 1..=1_000_000;
/// Most entries in one `models` list (provider or key).
pub const MODELS_MAX: usize = 10_000;
/// Longest model or alias name, bytes.
pub const MODEL_NAME_BYTES_MAX: usize = 256;
/// Most extra upstream headers per provider.
pub const HEADERS_MAX: usize = 64;
/// Most entries in `[aliases]`.
pub const ALIASES_MAX: usize = 10_000;
/// Most fallbacks of one model.
pub const FALLBACKS_MAX: usize = 8;
/// Largest secret file, bytes.
pub const SECRET_FILE_BYTES_MAX: u64 = 64 * 1024;
/// Largest config file, bytes.
pub const CONFIG_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Largest `ca_file`, bytes (a full public root bundle is about 250 KiB).
pub const CA_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// `providers.<name>.mock.latency_ms`: fixed latency of each mock answer.
pub const MOCK_LATENCY_MS_DEFAULT: u64 = 0;
pub const MOCK_LATENCY_MS_RANGE: RangeInclusive<u64> = 0..=3_600_000;
/// `providers.<name>.mock.stream_chunks`: content chunks of a streamed mock answer.
pub const MOCK_STREAM_CHUNKS_DEFAULT: u64 = 16;
pub const MOCK_STREAM_CHUNKS_RANGE: RangeInclusive<u64> = 1..=10_000;
/// `providers.<name>.mock.chunk_delay_ms`: pause between streamed mock chunks.
pub const MOCK_CHUNK_DELAY_MS_DEFAULT: u64 = 0;
/// `providers.<name>.mock.tool_text`: the value of every string the mock makes up (tool-call
/// arguments, structured answers).
pub const MOCK_TOOL_TEXT_DEFAULT: &str = "mock";
/// Longest `mock.tool_text`, bytes.
pub const MOCK_TOOL_TEXT_BYTES_MAX: usize = 4096;
/// `providers.<name>.stream_idle_timeout_ms`: longest silence of an upstream stream before it is
/// ended with an error event.
pub const STREAM_IDLE_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// `providers.<name>.base_url` of type `anthropic` when absent.
pub const ANTHROPIC_BASE_URL_DEFAULT: &str = "https://api.anthropic.com";
/// `providers.<name>.anthropic_version`: the API version sent to an `anthropic` provider when
/// the client did not send its own.
pub const ANTHROPIC_VERSION_DEFAULT: &str = "2023-06-01";
/// Longest `anthropic_version` value, bytes.
pub const ANTHROPIC_VERSION_BYTES_MAX: usize = 64;
/// `providers.<name>.max_tokens_default`: `max_tokens` sent to a provider that requires it
/// (Anthropic) when a translated request has none.
pub const MAX_TOKENS_DEFAULT: u64 = 4096;
pub const MAX_TOKENS_RANGE: RangeInclusive<u64> = 1..=1_000_000;
/// `providers.<name>.reasoning_effort`: whether an OpenAI-format provider's models take
/// `reasoning_effort` (reasoning models do; OpenAI refuses it for the others), for requests
/// translated from Anthropic clients. Off: their thinking request is dropped.
pub const REASONING_EFFORT_DEFAULT: bool = false;
/// `providers.<name>.stream_usage`: whether an OpenAI-format provider is sent
/// `stream_options.include_usage` (so that the gateway learns a stream's usage); off for servers
/// that refuse the field.
pub const STREAM_USAGE_DEFAULT: bool = true;
/// `providers.<name>.tools_supported`: whether an OpenAI-format provider takes `tools` (off: a
/// translated request offering tools is refused with 400 `unsupported_tool`).
pub const TOOLS_SUPPORTED_DEFAULT: bool = true;
/// `providers.<name>.parallel_tool_calls_supported`: whether an OpenAI-format provider takes
/// `parallel_tool_calls` (off: a translated request's setting is not sent).
pub const PARALLEL_TOOL_CALLS_SUPPORTED_DEFAULT: bool = true;
/// `providers.<name>.reasoning_content_history`: whether earlier assistant turns' reasoning is sent
/// back to an OpenAI-format provider as `reasoning_content` (DeepSeek's thinking mode needs it).
pub const REASONING_CONTENT_HISTORY_DEFAULT: bool = false;
/// `providers.<name>.responses`: whether an `openai` provider has OpenAI's Responses API
/// (`POST {base_url}/responses`), or an `azure` provider Azure's (`{endpoint}/openai/v1/responses`,
/// or `{endpoint}/openai/responses?api-version=` in the `deployments` style). On: a Responses
/// client's request passes through to it unchanged but for the model (an Azure deployment).
/// Off (compatible servers without it, a region or deployment without it): it is translated to
/// Chat Completions. Read by types `openai` and `azure` (accepted and ignored for the others).
pub const RESPONSES_DEFAULT: bool = true;
/// `providers.<name>.stream_duration_ms_max`: longest stream, from the upstream's answer head to
/// its end, before it is ended with an error event. Generous: long generations and reasoning
/// models stream for minutes; `request_timeout_ms` bounds only the wait for a stream to begin.
pub const STREAM_DURATION_MS_MAX_DEFAULT: u64 = 3_600_000;
pub const STREAM_DURATION_MS_MAX_RANGE: RangeInclusive<u64> = 1..=86_400_000;

/// `providers.<name>.max_retries`: retries of a failed upstream attempt (transport errors, 5xx, 429).
pub const MAX_RETRIES_DEFAULT: u64 = 2;
pub const MAX_RETRIES_RANGE: RangeInclusive<u64> = 0..=10;
/// `providers.<name>.retry_backoff_ms_initial` / `_max`: exponential backoff with jitter.
pub const RETRY_BACKOFF_MS_INITIAL_DEFAULT: u64 = 100;
pub const RETRY_BACKOFF_MS_MAX_DEFAULT: u64 = 2_000;
/// `providers.<name>.rate_limit_cooldown_ms_default`: how long a (key, model) pair answered 429
/// without `Retry-After` is skipped.
pub const RATE_LIMIT_COOLDOWN_MS_DEFAULT: u64 = 1_000;
/// `providers.<name>.rate_limit_cooldown_ms_max`: the longest one 429 cools a (key, model) pair,
/// whatever its `Retry-After` (which still reaches the client when the 429 is relayed).
pub const RATE_LIMIT_COOLDOWN_MS_MAX_DEFAULT: u64 = 60_000;
pub const RATE_LIMIT_COOLDOWN_MS_MAX_RANGE: RangeInclusive<u64> = 1..=86_400_000;
/// Longest disable of a key: each disable in a row doubles the last, up to this.
pub const KEY_DISABLE_DOUBLED_MS_MAX: u64 = 3_600_000;
/// `providers.<name>.key_disable_ms`: how long a key answered 401 is out of service before it is
/// re-probed (doubling per disable in a row, up to [`KEY_DISABLE_DOUBLED_MS_MAX`]).
pub const KEY_DISABLE_MS_DEFAULT: u64 = 300_000;
pub const KEY_DISABLE_MS_RANGE: RangeInclusive<u64> = 1..=KEY_DISABLE_DOUBLED_MS_MAX;
/// `providers.<name>.breaker.*`: the circuit breaker.
pub const BREAKER_FAILURE_RATIO_DEFAULT: f64 = 0.5;
pub const BREAKER_MIN_REQUESTS_DEFAULT: u64 = 20;
pub const BREAKER_MIN_REQUESTS_RANGE: RangeInclusive<u64> = 1..=1_000_000;
pub const BREAKER_WINDOW_MS_DEFAULT: u64 = 10_000;
pub const BREAKER_CONSECUTIVE_FAILURES_DEFAULT: u64 = 5;
pub const BREAKER_CONSECUTIVE_FAILURES_RANGE: RangeInclusive<u64> = 0..=1_000_000;
pub const BREAKER_OPEN_MS_DEFAULT: u64 = 5_000;
pub const BREAKER_HALF_OPEN_PROBES_DEFAULT: u64 = 3;
pub const BREAKER_HALF_OPEN_PROBES_RANGE: RangeInclusive<u64> = 1..=1_000;
/// `providers.<name>.health.*`: optional cheap probe at start-up and while the breaker is open.
pub const HEALTH_INTERVAL_MS_DEFAULT: u64 = 2_000;
pub const HEALTH_TIMEOUT_MS_DEFAULT: u64 = 2_000;
pub const HEALTH_PATH_DEFAULT: &str = "/models";
/// `providers.<name>.pool.scale_*`: adaptive worker scaling between workers_min and workers_max.
pub const SCALE_INTERVAL_MS_DEFAULT: u64 = 1_000;
pub const SCALE_UP_UTILIZATION_DEFAULT: f64 = 0.5;
pub const SCALE_UP_FACTOR_DEFAULT: f64 = 2.0;
pub const SCALE_DOWN_UTILIZATION_DEFAULT: f64 = 0.1;
pub const SCALE_QUEUE_WAIT_MS_P99_MAX_DEFAULT: u64 = 50;
pub const SCALE_MIN_INTERVAL_MS_DEFAULT: u64 = 3_000;
/// `providers.<name>.pool.stall_grace_ms`: a job running this long past its deadline is stalled.
pub const STALL_GRACE_MS_DEFAULT: u64 = 2_000;

/// `providers.<name>.pool.workers`: pinned worker threads, i.e. the most concurrent upstream
/// requests of the provider. One default for every provider type; raise it for real upstreams,
/// where each request holds a worker for its whole duration.
pub const POOL_WORKERS_DEFAULT: u64 = 8;
pub const POOL_WORKERS_RANGE: RangeInclusive<u64> = 1..=16_384;
/// `providers.<name>.pool.queue_capacity`: jobs waiting for a worker.
pub const POOL_QUEUE_CAPACITY_DEFAULT: u64 = 1024;
pub const POOL_QUEUE_CAPACITY_RANGE: RangeInclusive<u64> = 1..=1_000_000;
/// `providers.<name>.pool.queue_policy`: what a full queue does.
pub const POOL_QUEUE_POLICY_DEFAULT: QueuePolicy = QueuePolicy::Drop;
/// `providers.<name>.pool.queue_wait_ms_max`: longest wait for queue space under `block`.
pub const POOL_QUEUE_WAIT_MS_MAX_DEFAULT: u64 = 1_000;
pub const POOL_QUEUE_WAIT_MS_MAX_RANGE: RangeInclusive<u64> = 0..=3_600_000;
/// `providers.<name>.pool.request_timeout_ms`: whole upstream request, queue wait included.
pub const POOL_REQUEST_TIMEOUT_MS_DEFAULT: u64 = 60_000;
/// Most worker threads of all pools together: the sum of every pool's `workers_max`.
pub const POOL_WORKERS_TOTAL_MAX: u64 = 32_768;
/// Most address space reserved for worker stacks by all pools together, bytes: the sum of every
/// pool's `workers_max` x `worker_stack_kb` (a stack takes memory only as deep as it is used,
/// but each is reserved whole when its thread starts).
pub const POOL_WORKER_STACKS_BYTES_TOTAL_MAX: u64 = 32 * 1024 * 1024 * 1024;
/// Bytes of one queue slot (a job and its stamp), allocated for the whole `queue_capacity` when a
/// pool starts (and again for the new pools of each reload).
pub const POOL_QUEUE_SLOT_BYTES: u64 = 128;
/// Most queue slots of all pools together (the sum of every `queue_capacity`): 256 MiB of slots.
pub const POOL_QUEUE_SLOTS_TOTAL_MAX: u64 = 2_097_152;
/// `providers.<name>.pool.worker_stack_kb`, KiB per worker thread, guard page included. The
/// floor is above the deepest worker call measured (`tests/tls_upstream.rs`,
/// `pools_and_connections_at_the_smallest_stacks_...`): a TLS handshake (rustls) to an HTTPS
/// upstream and a 2 MiB Anthropic request with a tool schema nested to `json_depth_max = 128`
/// translated for it, the mock answering the same request, and a panic unwinding: 144 KiB in a
/// debug build, 48 KiB in a release build (the old floor, 32, crashed the process on the first
/// HTTPS call). 256 KiB keeps a 1.7x margin in a debug build and 5x in a release build; a thread
/// uses memory only as deep as its stack goes (about 28 KiB during a plain call, bench/README.md),
/// so the floor costs address space, not resident memory.
pub const POOL_WORKER_STACK_KB_DEFAULT: u64 = 256;
pub const POOL_WORKER_STACK_KB_RANGE: RangeInclusive<u64> = 256..=65_536;

/// Most validation errors listed in one [`ConfigError`]; the rest are counted.
const ERRORS_SHOWN_MAX: usize = 50;

const fn within(value: u64, range: &RangeInclusive<u64>) -> bool {
    value >= *range.start() && value <= *range.end()
}

const _: () = assert!(within(THREADS_DEFAULT, &THREADS_RANGE));
const _: () = assert!(within(
    COROUTINE_STACK_KB_DEFAULT as u64,
    &COROUTINE_STACK_KB_RANGE
));
const _: () = assert!(within(
    HEADER_LINES_MAX_DEFAULT as u64,
    &HEADER_LINES_MAX_RANGE
));
const _: () = assert!(within(
    HEADER_BYTES_MAX_DEFAULT as u64,
    &HEADER_BYTES_MAX_RANGE
));
const _: () = assert!(within(BODY_BYTES_MAX_DEFAULT as u64, &BODY_BYTES_MAX_RANGE));
const _: () = assert!(within(JSON_DEPTH_MAX_DEFAULT, &JSON_DEPTH_MAX_RANGE));
const _: () = assert!(within(HEADER_READ_TIMEOUT_MS_DEFAULT, &TIMEOUT_MS_RANGE));
const _: () = assert!(within(IDLE_TIMEOUT_MS_DEFAULT, &TIMEOUT_MS_RANGE));
const _: () = assert!(within(BODY_READ_TIMEOUT_MS_DEFAULT, &TIMEOUT_MS_RANGE));
const _: () = assert!(within(WRITE_TIMEOUT_MS_DEFAULT, &TIMEOUT_MS_RANGE));
const _: () = assert!(within(SHUTDOWN_TIMEOUT_MS_DEFAULT, &TIMEOUT_MS_RANGE));
const _: () = assert!(within(
    STATS_STDOUT_INTERVAL_MS_DEFAULT,
    &STATS_STDOUT_INTERVAL_MS_RANGE
));
const _: () = assert!(
    STATS_OBJPOOL_HIT_RATIO_WARN_DEFAULT >= 0.0 && STATS_OBJPOOL_HIT_RATIO_WARN_DEFAULT <= 1.0
);
const _: () = assert!(within(OBJPOOL_BUFFERS_DEFAULT, &OBJPOOL_BUFFERS_RANGE));
const _: () = assert!(OBJPOOL_BUFFERS_PREFILL_DEFAULT <= OBJPOOL_BUFFERS_DEFAULT);
const _: () = assert!(within(
    OBJPOOL_BUFFERS_PREFILL_DEFAULT,
    &OBJPOOL_BUFFERS_PREFILL_RANGE
));
const _: () = assert!(*OBJPOOL_BUFFERS_PREFILL_RANGE.end() <= *OBJPOOL_BUFFERS_RANGE.end());
// The default pool keeps at most its bound of idle buffer memory.
const _: () = assert!(
    OBJPOOL_BUFFERS_DEFAULT * OBJPOOL_BUFFER_RETAIN_BYTES_MAX_DEFAULT <= OBJPOOL_RETAINED_BYTES_MAX
);
// One pool at the top of its ranges fits the totals of all pools.
const _: () = assert!(*POOL_WORKERS_RANGE.end() <= POOL_WORKERS_TOTAL_MAX);
const _: () = assert!(*POOL_QUEUE_CAPACITY_RANGE.end() <= POOL_QUEUE_SLOTS_TOTAL_MAX);
const _: () = assert!(
    POOL_WORKERS_DEFAULT * POOL_WORKER_STACK_KB_DEFAULT * 1024 * PROVIDERS_MAX as u64
        <= POOL_WORKER_STACKS_BYTES_TOTAL_MAX
);
const _: () = assert!(within(
    OBJPOOL_BUFFER_RETAIN_BYTES_MAX_DEFAULT,
    &OBJPOOL_BUFFER_RETAIN_BYTES_MAX_RANGE
));
// A buffer that held a maximal request head is worth keeping.
const _: () = assert!(OBJPOOL_BUFFER_RETAIN_BYTES_MAX_DEFAULT >= HEADER_BYTES_MAX_DEFAULT as u64);
const _: () = assert!(within(CONNECT_TIMEOUT_MS_DEFAULT, &TIMEOUT_MS_RANGE));
const _: () = assert!(within(KEY_WEIGHT_DEFAULT, &KEY_WEIGHT_RANGE));
// The sum of all key weights of a provider fits the `u32` the weighted choice uses.
const _: () = assert!(KEYS_MAX as u64 * *KEY_WEIGHT_RANGE.end() <= u32::MAX as u64);
const _: () = assert!(within(MOCK_LATENCY_MS_DEFAULT, &MOCK_LATENCY_MS_RANGE));
const _: () = assert!(within(MAX_TOKENS_DEFAULT, &MAX_TOKENS_RANGE));
const _: () = assert!(within(STREAM_IDLE_TIMEOUT_MS_DEFAULT, &TIMEOUT_MS_RANGE));
const _: () = assert!(within(
    STREAM_DURATION_MS_MAX_DEFAULT,
    &STREAM_DURATION_MS_MAX_RANGE
));
// A stream may by default last longer than the wait for its first event and its request.
const _: () = assert!(STREAM_DURATION_MS_MAX_DEFAULT > STREAM_IDLE_TIMEOUT_MS_DEFAULT);
const _: () = assert!(STREAM_DURATION_MS_MAX_DEFAULT > POOL_REQUEST_TIMEOUT_MS_DEFAULT);
const _: () = assert!(within(POOL_WORKERS_DEFAULT, &POOL_WORKERS_RANGE));
const _: () = assert!(within(
    POOL_QUEUE_CAPACITY_DEFAULT,
    &POOL_QUEUE_CAPACITY_RANGE
));
const _: () = assert!(within(
    POOL_QUEUE_WAIT_MS_MAX_DEFAULT,
    &POOL_QUEUE_WAIT_MS_MAX_RANGE
));
const _: () = assert!(within(POOL_REQUEST_TIMEOUT_MS_DEFAULT, &TIMEOUT_MS_RANGE));
// Waiting for queue space must leave time for the request itself.
const _: () = assert!(POOL_QUEUE_WAIT_MS_MAX_DEFAULT < POOL_REQUEST_TIMEOUT_MS_DEFAULT);
const _: () = assert!(within(
    POOL_WORKER_STACK_KB_DEFAULT,
    &POOL_WORKER_STACK_KB_RANGE
));
const _: () = assert!(*POOL_QUEUE_WAIT_MS_MAX_RANGE.end() <= *TIMEOUT_MS_RANGE.end());
const _: () = assert!(within(
    RATE_LIMIT_COOLDOWN_MS_MAX_DEFAULT,
    &RATE_LIMIT_COOLDOWN_MS_MAX_RANGE
));
// The default cool-down (a 429 without Retry-After) is within the default cap.
const _: () = assert!(RATE_LIMIT_COOLDOWN_MS_DEFAULT <= RATE_LIMIT_COOLDOWN_MS_MAX_DEFAULT);
const _: () = assert!(within(KEY_DISABLE_MS_DEFAULT, &KEY_DISABLE_MS_RANGE));

// ---------------------------------------------------------------------------------------------
// Validated types.
// ---------------------------------------------------------------------------------------------

/// A resolved secret (provider key, client key). Never printed: `Debug`/`Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Upstream wire format of a provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderType {
    /// Built-in LLM-like responder, no network; for trying the gateway and measuring its overhead.
    Mock,
    /// OpenAI Chat Completions and any compatible server (vLLM, Ollama, Groq, Together, ...).
    OpenAi,
    /// Anthropic Messages (`x-api-key`, `anthropic-version`).
    Anthropic,
    /// Azure OpenAI: OpenAI's wire format at a resource's deployments (`[providers.<name>.azure]`).
    Azure,
    /// Google AI Studio's Gemini API (`generateContent`, `x-goog-api-key`).
    Gemini,
    /// Gemini models on Vertex AI (the same bodies; OAuth2 access tokens of a service account).
    Vertex,
    /// AWS Bedrock's runtime (Converse, ConverseStream, InvokeModel), SigV4-signed.
    Bedrock,
}

impl ProviderType {
    /// Types that call a network upstream (and so need `base_url` and `keys`).
    pub fn is_network(self) -> bool {
        !matches!(self, ProviderType::Mock)
    }

    /// The name used in the config's `type`.
    pub fn name(self) -> &'static str {
        match self {
            ProviderType::Mock => "mock",
            ProviderType::OpenAi => "openai",
            ProviderType::Anthropic => "anthropic",
            ProviderType::Azure => "azure",
            ProviderType::Gemini => "gemini",
            ProviderType::Vertex => "vertex",
            ProviderType::Bedrock => "bedrock",
        }
    }
}

/// What a pool does when its queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueuePolicy {
    /// Reject at once: 429 with `Retry-After`.
    Drop,
    /// Reject at once: 503.
    Error,
    /// Wait for space up to `queue_wait_max`, then 503.
    Block,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Path the config was read from (for reload and messages).
    pub path: PathBuf,
    pub server: ServerConfig,
    pub stats: StatsConfig,
    pub log: LogConfig,
    pub objpools: ObjPoolsConfig,
    /// Keyed by provider name (the `<provider>` of `<provider>/<model>`).
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Alias model name -> `provider/model`.
    pub aliases: BTreeMap<String, String>,
    /// Model name as clients send it -> `provider/model`s tried in order when it fails.
    pub fallbacks: BTreeMap<String, Vec<String>>,
    /// The plugin pipeline (`[plugins]`).
    pub plugins: PluginsConfig,
    /// The embedded database (`[store]`); `None` when `store.path` is not set.
    pub store: Option<StoreConfig>,
    /// The price table override (`[prices]`).
    pub prices: PricesConfig,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// API listener; default [`LISTEN_DEFAULT`].
    pub listen: SocketAddr,
    /// `/stats` and `/health` listener; default [`ADMIN_LISTEN_DEFAULT`].
    pub admin_listen: SocketAddr,
    /// may scheduler threads; resolved (never 0: 0 in the file means one per available core).
    pub threads: usize,
    /// Cores for the scheduler threads; empty = may's default placement.
    pub cores: Vec<usize>,
    /// Front limits and timeouts; defaults are `limits`' constants.
    pub limits: Limits,
    /// Nesting depth of request JSON; default [`JSON_DEPTH_MAX_DEFAULT`].
    pub json_depth_max: usize,
    /// Default [`SHUTDOWN_TIMEOUT_MS_DEFAULT`].
    pub shutdown_timeout: Duration,
    /// Accepted static client keys, by their SHA-256 (`Authorization: Bearer`, `x-api-key` or
    /// `api-key`).
    pub client_keys: Vec<KeyHash>,
    /// Whether API requests need a key (`server.auth`); the file's default is
    /// [`AuthMode::Keys`].
    pub auth: AuthMode,
    /// The token the admin listener requires on `/stats`, `/metrics` and `/admin/`
    /// (`Authorization: Bearer`), by its SHA-256; `None`: those are open.
    pub admin_token: Option<KeyHash>,
}

#[derive(Clone, Debug)]
pub struct StatsConfig {
    /// Period of the stdout stats line; `None` = off (0 in the file).
    pub stdout_interval: Option<Duration>,
    /// Warn in the log when an object pool's hit ratio stays below this (0.0..=1.0).
    pub objpool_hit_ratio_warn: f64,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Most verbose level written; default [`LOG_LEVEL_DEFAULT`].
    pub level: Level,
    /// Whether each chat request writes an access line; default [`LOG_ACCESS_DEFAULT`].
    pub access: bool,
}

#[derive(Clone, Debug)]
pub struct ObjPoolsConfig {
    /// Buffers held by the connection-buffer pool.
    pub buffers: usize,
    /// Buffers made at start-up.
    pub buffers_prefill: usize,
    /// Buffers grown past this many bytes are dropped, not returned.
    pub buffer_retain_bytes_max: usize,
}

#[derive(Clone, Debug)]
pub struct KeyConfig {
    pub secret: Secret,
    /// Relative weight for the weighted random choice (>= 1).
    pub weight: u32,
    /// Upstream models this key may serve; empty = all.
    pub models: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Fixed latency of each answer (time to the first chunk of a stream).
    pub latency: Duration,
    /// Content chunks of a streamed answer.
    pub stream_chunks: usize,
    /// Pause between streamed chunks.
    pub chunk_delay: Duration,
    /// The value of every string the mock makes up (tool arguments, structured answers).
    pub tool_text: String,
}

#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Worker threads; default [`POOL_WORKERS_DEFAULT`].
    pub workers: usize,
    /// Default [`POOL_QUEUE_CAPACITY_DEFAULT`].
    pub queue_capacity: usize,
    /// Default [`POOL_QUEUE_POLICY_DEFAULT`].
    pub queue_policy: QueuePolicy,
    /// Default [`POOL_QUEUE_WAIT_MS_MAX_DEFAULT`]; never above `request_timeout`.
    pub queue_wait_max: Duration,
    /// Default [`POOL_REQUEST_TIMEOUT_MS_DEFAULT`].
    pub request_timeout: Duration,
    /// Cores the workers are pinned to round-robin; empty = all available cores.
    pub cores: Vec<usize>,
    /// Default [`POOL_WORKER_STACK_KB_DEFAULT`] KiB.
    pub worker_stack_bytes: usize,
    /// Adaptive scaling bounds; both default to `workers` (a fixed pool).
    pub workers_min: usize,
    pub workers_max: usize,
    pub scale_interval: Duration,
    /// Scale up when busy workers / workers reaches this...
    pub scale_up_utilization: f64,
    /// ...or the p99 queue wait over the last interval passes this; multiply workers by the factor.
    pub scale_queue_wait_p99_max: Duration,
    pub scale_up_factor: f64,
    /// Scale down (one step) when utilisation stays below this for a whole interval.
    pub scale_down_utilization: f64,
    /// Least time between two scaling changes.
    pub scale_min_interval: Duration,
    /// A job still running this long past its deadline is a stall: its worker is replaced.
    pub stall_grace: Duration,
    /// The upstream's rate limit in requests per second, for the suggested pool size; 0 = unknown.
    pub upstream_rps_max: f64,
}

/// Retries of one upstream call, inside the worker.
#[derive(Clone, Debug)]
pub struct RetryConfig {
    pub max_retries: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Cool-down of a (key, model) pair answered 429 without `Retry-After`.
    pub rate_limit_cooldown_default: Duration,
    /// Longest cool-down of a (key, model) pair after one 429, whatever its `Retry-After`.
    pub rate_limit_cooldown_max: Duration,
    /// First disable of a key answered 401 (doubled per disable in a row), before its re-probe.
    pub key_disable: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: MAX_RETRIES_DEFAULT as u32,
            backoff_initial: Duration::from_millis(RETRY_BACKOFF_MS_INITIAL_DEFAULT),
            backoff_max: Duration::from_millis(RETRY_BACKOFF_MS_MAX_DEFAULT),
            rate_limit_cooldown_default: Duration::from_millis(RATE_LIMIT_COOLDOWN_MS_DEFAULT),
            rate_limit_cooldown_max: Duration::from_millis(RATE_LIMIT_COOLDOWN_MS_MAX_DEFAULT),
            key_disable: Duration::from_millis(KEY_DISABLE_MS_DEFAULT),
        }
    }
}

/// The optional cheap probe of a provider (never a paid completion).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthCheck {
    None,
    /// TCP connect to the base URL's host and port.
    Connect,
    /// `GET <base_url><path>` with a provider key; any answer below 500 is healthy.
    Get(String),
}

#[derive(Clone, Debug)]
pub struct HealthConfig {
    pub check: HealthCheck,
    /// The cheap authenticated `GET` path (default [`HEALTH_PATH_DEFAULT`]): the `get` check's,
    /// and the re-probe of a disabled key's, whatever `check` is.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            check: HealthCheck::None,
            path: HEALTH_PATH_DEFAULT.to_string(),
            interval: Duration::from_millis(HEALTH_INTERVAL_MS_DEFAULT),
            timeout: Duration::from_millis(HEALTH_TIMEOUT_MS_DEFAULT),
        }
    }
}

/// The breaker settings every provider starts with.
pub fn breaker_default() -> BreakerConfig {
    BreakerConfig {
        enabled: true,
        failure_ratio: BREAKER_FAILURE_RATIO_DEFAULT,
        min_requests: BREAKER_MIN_REQUESTS_DEFAULT as u32,
        window: Duration::from_millis(BREAKER_WINDOW_MS_DEFAULT),
        consecutive_failures: BREAKER_CONSECUTIVE_FAILURES_DEFAULT as u32,
        open_for: Duration::from_millis(BREAKER_OPEN_MS_DEFAULT),
        half_open_probes: BREAKER_HALF_OPEN_PROBES_DEFAULT as u32,
    }
}

/// How requests translated from another wire format are encoded for one provider (see
/// `crate::formats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TranslationConfig {
    /// Send `reasoning_effort` to an OpenAI-format provider; [`REASONING_EFFORT_DEFAULT`].
    pub reasoning_effort: bool,
    /// How an effort becomes Anthropic thinking.
    pub thinking_style: ThinkingStyle,
    /// How a JSON-schema answer is asked of Anthropic.
    pub structured_output: StructuredOutputStyle,
    /// The token limit field sent to an OpenAI-format provider.
    pub max_tokens_field: MaxTokensField,
    /// Ask an OpenAI-format provider's streams for usage; [`STREAM_USAGE_DEFAULT`].
    pub stream_usage: bool,
    /// The tool-call ids an OpenAI-format provider accepts.
    pub tool_call_id_format: ToolCallIdFormat,
    /// [`TOOLS_SUPPORTED_DEFAULT`].
    pub tools_supported: bool,
    /// [`PARALLEL_TOOL_CALLS_SUPPORTED_DEFAULT`].
    pub parallel_tool_calls_supported: bool,
    /// [`REASONING_CONTENT_HISTORY_DEFAULT`].
    pub reasoning_content_history: bool,
}

impl Default for TranslationConfig {
    fn default() -> Self {
        TranslationConfig {
            reasoning_effort: REASONING_EFFORT_DEFAULT,
            thinking_style: ThinkingStyle::default(),
            structured_output: StructuredOutputStyle::default(),
            max_tokens_field: MaxTokensField::default(),
            stream_usage: STREAM_USAGE_DEFAULT,
            tool_call_id_format: ToolCallIdFormat::default(),
            tools_supported: TOOLS_SUPPORTED_DEFAULT,
            parallel_tool_calls_supported: PARALLEL_TOOL_CALLS_SUPPORTED_DEFAULT,
            reasoning_content_history: REASONING_CONTENT_HISTORY_DEFAULT,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderType,
    /// The OpenAI-compatible service an `openai` provider is (its defaults applied).
    pub preset: Option<Preset>,
    /// Where and how an `azure` provider is called; `None` for other types.
    pub azure: Option<AzureConfig>,
    /// Required for `openai`; e.g. `https://api.openai.com/v1` (no trailing slash). Empty or
    /// unchecked for `mock`.
    pub base_url: String,
    /// For `bedrock`: one implicit key standing for the AWS credentials (see `bedrock`).
    pub keys: Vec<KeyConfig>,
    /// Models listed by `GET /v1/models`; empty = none listed, any model accepted.
    pub models: Vec<String>,
    /// Extra headers sent upstream on every request.
    pub headers: Vec<(String, String)>,
    /// Default [`CONNECT_TIMEOUT_MS_DEFAULT`].
    pub connect_timeout: Duration,
    /// Longest silence between events of an upstream stream.
    pub stream_idle_timeout: Duration,
    /// Longest upstream stream, from its answer head to its end.
    pub stream_duration_max: Duration,
    /// Root certificates (PEM) trusted for this provider instead of the built-in webpki roots.
    pub ca_file: Option<PathBuf>,
    /// `anthropic-version` sent to an `anthropic` upstream when the client sent none.
    pub anthropic_version: String,
    /// Project, location and service account of a `vertex` provider (`None` for other types).
    pub vertex: Option<VertexConfig>,
    /// `max_tokens` of a translated request without one, for providers that require it.
    pub max_tokens_default: u32,
    /// An `openai` upstream has the Responses API; [`RESPONSES_DEFAULT`].
    pub responses: bool,
    /// How requests of another format are encoded for this provider.
    pub translation: TranslationConfig,
    /// Region and credentials of a `bedrock` provider; `None` for every other type.
    pub bedrock: Option<BedrockConfig>,
    pub mock: MockConfig,
    pub pool: PoolConfig,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    pub health: HealthConfig,
}

/// Why a config could not be loaded: one line per problem, each naming the file and the key path.
/// Never holds a secret value.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Read, parse and validate the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_config_file(path)?;
        Config::from_toml_str(&text, path)
    }

    /// Parse and validate `text` as if read from `path` (used in messages and to resolve relative
    /// `file:` and `ca_file` paths). Reads the process environment and this machine's cores.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cores: Option<Vec<usize>> =
            core_affinity::get_core_ids().map(|ids| ids.into_iter().map(|c| c.id).collect());
        parse(text, path, &|name| std::env::var_os(name), cores.as_deref())
    }
}

fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    let fail = |e: &dyn fmt::Display| ConfigError(format!("{}: cannot read: {e}", path.display()));
    let bytes = read_regular_file(path, CONFIG_FILE_BYTES_MAX).map_err(|e| fail(&e))?;
    String::from_utf8(bytes).map_err(|_| fail(&"not valid UTF-8"))
}

/// The contents of the regular file at `path`, at most `bytes_max` bytes. A FIFO, a device or a
/// directory is refused without reading it: the file is opened non-blocking (opening a FIFO
/// otherwise waits for a writer, and reading a device may never end), so `--check`, start-up and
/// a reload (and with it SIGTERM, which waits for the reload) can never hang on a file. Messages
/// never hold the contents.
pub fn read_regular_file(path: &Path, bytes_max: u64) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file (a FIFO, device or directory is refused)".into());
    }
    let mut bytes = Vec::new();
    file.take(bytes_max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > bytes_max {
        return Err(format!("larger than {bytes_max} bytes"));
    }
    Ok(bytes)
}

/// The root certificates of a provider's `ca_file`: PEM `CERTIFICATE` blocks (other blocks are
/// skipped), each a valid X.509 certificate usable as a trust anchor, at least one. Both
/// `--check` (and every config load) and the start of a provider's pool read it through here, so
/// a file `--check` accepts is one the gateway starts with.
pub fn ca_certificates(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let pem = read_regular_file(path, CA_FILE_BYTES_MAX)?;
    let mut certs: Vec<ureq::tls::Certificate<'static>> = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item.map_err(|e| e.to_string())? {
            ureq::tls::PemItem::Certificate(c) => certs.push(c),
            _ => continue,
        }
    }
    if certs.is_empty() {
        return Err("no certificate found (expected PEM \"BEGIN CERTIFICATE\" blocks)".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        let der = rustls::pki_types::CertificateDer::from(cert.der().to_vec());
        roots
            .add(der)
            .map_err(|e| format!("certificate {} of the file is not usable: {e}", i + 1))?;
    }
    Ok(certs)
}

// ---------------------------------------------------------------------------------------------
// Defaults for tests and for code that builds a config by hand.
// ---------------------------------------------------------------------------------------------

/// One scheduler thread per core available to this process (1 if that cannot be known).
fn threads_available() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: LISTEN_DEFAULT,
            admin_listen: ADMIN_LISTEN_DEFAULT,
            threads: threads_available(),
            cores: Vec::new(),
            limits: Limits::default(),
            json_depth_max: JSON_DEPTH_MAX_DEFAULT as usize,
            shutdown_timeout: Duration::from_millis(SHUTDOWN_TIMEOUT_MS_DEFAULT),
            client_keys: Vec::new(),
            auth: AuthMode::Keys,
            admin_token: None,
        }
    }
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            stdout_interval: Some(Duration::from_millis(STATS_STDOUT_INTERVAL_MS_DEFAULT)),
            objpool_hit_ratio_warn: STATS_OBJPOOL_HIT_RATIO_WARN_DEFAULT,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: LOG_LEVEL_DEFAULT,
            access: LOG_ACCESS_DEFAULT,
        }
    }
}

impl Default for ObjPoolsConfig {
    fn default() -> Self {
        ObjPoolsConfig {
            buffers: OBJPOOL_BUFFERS_DEFAULT as usize,
            buffers_prefill: OBJPOOL_BUFFERS_PREFILL_DEFAULT as usize,
            buffer_retain_bytes_max: OBJPOOL_BUFFER_RETAIN_BYTES_MAX_DEFAULT as usize,
        }
    }
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            latency: Duration::from_millis(MOCK_LATENCY_MS_DEFAULT),
            stream_chunks: MOCK_STREAM_CHUNKS_DEFAULT as usize,
            chunk_delay: Duration::from_millis(MOCK_CHUNK_DELAY_MS_DEFAULT),
            tool_text: MOCK_TOOL_TEXT_DEFAULT.to_string(),
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            workers: POOL_WORKERS_DEFAULT as usize,
            queue_capacity: POOL_QUEUE_CAPACITY_DEFAULT as usize,
            queue_policy: POOL_QUEUE_POLICY_DEFAULT,
            queue_wait_max: Duration::from_millis(POOL_QUEUE_WAIT_MS_MAX_DEFAULT),
            request_timeout: Duration::from_millis(POOL_REQUEST_TIMEOUT_MS_DEFAULT),
            cores: Vec::new(),
            worker_stack_bytes: POOL_WORKER_STACK_KB_DEFAULT as usize * 1024,
            workers_min: POOL_WORKERS_DEFAULT as usize,
            workers_max: POOL_WORKERS_DEFAULT as usize,
            scale_interval: Duration::from_millis(SCALE_INTERVAL_MS_DEFAULT),
            scale_up_utilization: SCALE_UP_UTILIZATION_DEFAULT,
            scale_queue_wait_p99_max: Duration::from_millis(SCALE_QUEUE_WAIT_MS_P99_MAX_DEFAULT),
            scale_up_factor: SCALE_UP_FACTOR_DEFAULT,
            scale_down_utilization: SCALE_DOWN_UTILIZATION_DEFAULT,
            scale_min_interval: Duration::from_millis(SCALE_MIN_INTERVAL_MS_DEFAULT),
            stall_grace: Duration::from_millis(STALL_GRACE_MS_DEFAULT),
            upstream_rps_max: 0.0,
        }
    }
}

impl ProviderConfig {
    /// A `mock` provider named `name` with every default: what `[providers.<name>]` with only
    /// `type = "mock"` gives.
    pub fn mock(name: &str) -> ProviderConfig {
        ProviderConfig {
            name: name.to_string(),
            kind: ProviderType::Mock,
            preset: None,
            azure: None,
            base_url: String::new(),
            anthropic_version: ANTHROPIC_VERSION_DEFAULT.to_string(),
            vertex: None,
            max_tokens_default: MAX_TOKENS_DEFAULT as u32,
            responses: RESPONSES_DEFAULT,
            translation: TranslationConfig::default(),
            bedrock: None,
            keys: Vec::new(),
            models: Vec::new(),
            headers: Vec::new(),
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS_DEFAULT),
            stream_idle_timeout: Duration::from_millis(STREAM_IDLE_TIMEOUT_MS_DEFAULT),
            stream_duration_max: Duration::from_millis(STREAM_DURATION_MS_MAX_DEFAULT),
            ca_file: None,
            mock: MockConfig::default(),
            pool: PoolConfig::default(),
            retry: RetryConfig::default(),
            breaker: breaker_default(),
            health: HealthConfig::default(),
        }
    }

    /// Every secret the provider sends upstream (its keys, and an Azure Entra client secret),
    /// for the redactor.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        let entra = match self.azure.as_ref().map(|a| &a.auth) {
            Some(AzureAuth::Entra(e)) => Some(e.client_secret.expose()),
            _ => None,
        };
        self.keys.iter().map(|k| k.secret.expose()).chain(entra)
    }
}

impl Default for Config {
    /// A valid config: every default, one `mock` provider named `mock`, no aliases, empty path.
    fn default() -> Self {
        let mut providers = BTreeMap::new();
        providers.insert("mock".to_string(), ProviderConfig::mock("mock"));
        Config {
            path: PathBuf::new(),
            server: ServerConfig::default(),
            stats: StatsConfig::default(),
            log: LogConfig::default(),
            objpools: ObjPoolsConfig::default(),
            providers,
            aliases: BTreeMap::new(),
            fallbacks: BTreeMap::new(),
            plugins: PluginsConfig { order: Vec::new() },
            store: None,
            prices: PricesConfig::default(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// File structs: the TOML as written, every field optional, unknown keys denied.
// Integers are u64 so that out-of-range values get our own message naming the key.
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    server: Option<ServerFile>,
    stats: Option<StatsFile>,
    log: Option<LogFile>,
    objpools: Option<ObjPoolsFile>,
    providers: Option<BTreeMap<String, ProviderFile>>,
    aliases: Option<BTreeMap<String, String>>,
    fallbacks: Option<BTreeMap<String, Vec<String>>>,
    plugins: Option<governance::PluginsFile>,
    store: Option<governance::StoreFile>,
    prices: Option<governance::PricesFile>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    listen: Option<String>,
    admin_listen: Option<String>,
    threads: Option<u64>,
    cores: Option<Vec<u64>>,
    coroutine_stack_kb: Option<u64>,
    header_lines_max: Option<u64>,
    header_bytes_max: Option<u64>,
    body_bytes_max: Option<u64>,
    json_depth_max: Option<u64>,
    header_read_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    body_read_timeout_ms: Option<u64>,
    body_timeout_ms: Option<u64>,
    write_timeout_ms: Option<u64>,
    connections_max: Option<u64>,
    body_buffer_bytes_max: Option<u64>,
    shutdown_timeout_ms: Option<u64>,
    client_keys: Option<Vec<String>>,
    auth: Option<String>,
    admin_token: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StatsFile {
    stdout_interval_ms: Option<u64>,
    objpool_hit_ratio_warn: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LogFile {
    level: Option<String>,
    access: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ObjPoolsFile {
    buffers: Option<u64>,
    buffers_prefill: Option<u64>,
    buffer_retain_bytes_max: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ProviderFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    preset: Option<String>,
    base_url: Option<String>,
    models: Option<Vec<String>>,
    headers: Option<BTreeMap<String, String>>,
    connect_timeout_ms: Option<u64>,
    stream_idle_timeout_ms: Option<u64>,
    stream_duration_ms_max: Option<u64>,
    ca_file: Option<String>,
    anthropic_version: Option<String>,
    max_tokens_default: Option<u64>,
    responses: Option<bool>,
    reasoning_effort: Option<bool>,
    thinking_style: Option<String>,
    structured_output: Option<String>,
    max_tokens_field: Option<String>,
    stream_usage: Option<bool>,
    tool_call_id_format: Option<String>,
    tools_supported: Option<bool>,
    parallel_tool_calls_supported: Option<bool>,
    reasoning_content_history: Option<bool>,
    keys: Option<Vec<KeyFile>>,
    bedrock: Option<bedrock::BedrockFile>,
    mock: Option<MockFile>,
    azure: Option<azure::AzureFile>,
    vertex: Option<vertex::VertexFile>,
    pool: Option<PoolFile>,
    max_retries: Option<u64>,
    retry_backoff_ms_initial: Option<u64>,
    retry_backoff_ms_max: Option<u64>,
    rate_limit_cooldown_ms_default: Option<u64>,
    rate_limit_cooldown_ms_max: Option<u64>,
    key_disable_ms: Option<u64>,
    breaker: Option<BreakerFile>,
    health: Option<HealthFile>,
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    expecting = "a key table like { key = \"env:VAR\" }"
)]
struct KeyFile {
    key: Option<String>,
    weight: Option<u64>,
    models: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MockFile {
    latency_ms: Option<u64>,
    stream_chunks: Option<u64>,
    chunk_delay_ms: Option<u64>,
    tool_text: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PoolFile {
    workers: Option<u64>,
    queue_capacity: Option<u64>,
    queue_policy: Option<String>,
    queue_wait_ms_max: Option<u64>,
    request_timeout_ms: Option<u64>,
    cores: Option<Vec<u64>>,
    worker_stack_kb: Option<u64>,
    workers_min: Option<u64>,
    workers_max: Option<u64>,
    scale_interval_ms: Option<u64>,
    scale_up_utilization: Option<f64>,
    scale_queue_wait_ms_p99_max: Option<u64>,
    scale_up_factor: Option<f64>,
    scale_down_utilization: Option<f64>,
    scale_min_interval_ms: Option<u64>,
    stall_grace_ms: Option<u64>,
    upstream_rps_max: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BreakerFile {
    enabled: Option<bool>,
    failure_ratio: Option<f64>,
    min_requests: Option<u64>,
    window_ms: Option<u64>,
    consecutive_failures: Option<u64>,
    open_ms: Option<u64>,
    half_open_probes: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HealthFile {
    check: Option<String>,
    path: Option<String>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// Parsing and validation.
// ---------------------------------------------------------------------------------------------

/// Looks up an environment variable (injected so tests need not touch the process environment).
type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// `cores`: the core ids this process may run on; `None` when they cannot be listed.
fn parse(
    text: &str,
    path: &Path,
    env: EnvLookup<'_>,
    cores: Option<&[usize]>,
) -> Result<Config, ConfigError> {
    let file: ConfigFile = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
    let mut checker = Checker {
        file: path,
        dir: path.parent().map_or_else(PathBuf::new, Path::to_path_buf),
        env,
        cores,
        errors: Vec::new(),
    };
    let config = checker.config(file);
    checker.finish(config)
}

/// `path:line:column: message`, with string values hidden: a literal secret in the wrong place
/// (`keys = ["sk-..."]`) would otherwise be echoed by serde's "invalid type: string ..." text.
fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let message = hide_strings(e.message().trim()).replace('\n', "; ");
    let Some(span) = e.span() else {
        return ConfigError(format!("{}: {message}", path.display()));
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ConfigError(format!("{}:{line}:{column}: {message}", path.display()))
}

/// Replaces each `string "<debug-escaped>"` of a serde message with `a string (value hidden)`.
fn hide_strings(message: &str) -> String {
    const MARK: &str = "string \"";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at]);
        out.push_str("string (value hidden)");
        let mut chars = rest[at + MARK.len()..].char_indices();
        let mut end = rest.len() - at - MARK.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &rest[at + MARK.len() + end..];
    }
    out.push_str(rest);
    out
}

/// Turns file structs into validated config, filling defaults and collecting every error.
struct Checker<'a> {
    /// The config file, named in every message.
    file: &'a Path,
    /// Directory relative `file:` and `ca_file` paths are resolved against.
    dir: PathBuf,
    env: EnvLookup<'a>,
    cores: Option<&'a [usize]>,
    errors: Vec<String>,
}

impl Checker<'_> {
    fn error(&mut self, key: &str, message: impl fmt::Display) {
        self.errors
            .push(format!("{}: {key}: {message}", self.file.display()));
    }

    fn finish(self, config: Config) -> Result<Config, ConfigError> {
        if self.errors.is_empty() {
            return Ok(config);
        }
        let hidden = self.errors.len().saturating_sub(ERRORS_SHOWN_MAX);
        let mut lines: Vec<String> = self.errors.into_iter().take(ERRORS_SHOWN_MAX).collect();
        if hidden > 0 {
            lines.push(format!("... and {hidden} more errors"));
        }
        Err(ConfigError(lines.join("\n")))
    }

    fn config(&mut self, f: ConfigFile) -> Config {
        let server = self.server(f.server.unwrap_or_default());
        let stats = self.stats(f.stats.unwrap_or_default());
        let log = self.log(f.log.unwrap_or_default());
        let objpools = self.objpools(f.objpools.unwrap_or_default());
        let providers = self.providers(f.providers.unwrap_or_default());
        self.pool_totals(&providers);
        let aliases = self.aliases(f.aliases.unwrap_or_default(), &providers);
        let fallbacks = self.fallbacks(f.fallbacks.unwrap_or_default(), &providers);
        let plugins = self.plugins(f.plugins.unwrap_or_default());
        let store = self.store(f.store.unwrap_or_default());
        let prices = self.prices(f.prices.unwrap_or_default());
        let config = Config {
            path: self.file.to_path_buf(),
            server,
            stats,
            log,
            objpools,
            providers,
            aliases,
            fallbacks,
            plugins,
            store,
            prices,
        };
        self.governance_rules(&config);
        config
    }

    // --- scalars ---

    /// `value` if within `range`, else an error and `default`.
    fn int(
        &mut self,
        key: &str,
        value: Option<u64>,
        default: u64,
        range: &RangeInclusive<u64>,
    ) -> u64 {
        debug_assert!(range.contains(&default));
        match value {
            None => default,
            Some(v) if range.contains(&v) => v,
            Some(v) => {
                let (lo, hi) = (range.start(), range.end());
                self.error(key, format!("{v} is out of range {lo}..={hi}"));
                default
            }
        }
    }

    /// Like [`Checker::int`] for a `usize` field (every range fits a `usize`).
    fn size(
        &mut self,
        key: &str,
        value: Option<u64>,
        default: u64,
        range: &RangeInclusive<u64>,
    ) -> usize {
        let v = self.int(key, value, default, range);
        usize::try_from(v).unwrap_or(usize::MAX)
    }

    /// A timeout in milliseconds within [`TIMEOUT_MS_RANGE`].
    fn timeout(&mut self, key: &str, value: Option<u64>, default: u64) -> Duration {
        Duration::from_millis(self.int(key, value, default, &TIMEOUT_MS_RANGE))
    }

    fn addr(&mut self, key: &str, value: Option<String>, default: SocketAddr) -> SocketAddr {
        let Some(text) = value else { return default };
        text.parse().unwrap_or_else(|_| {
            let hint = "expected an IP address and port, e.g. \"127.0.0.1:8080\"";
            self.error(key, format!("invalid socket address {text:?} ({hint})"));
            default
        })
    }

    /// Core ids, each one this process may run on, none twice.
    fn cores(&mut self, key: &str, value: Option<Vec<u64>>) -> Vec<usize> {
        let listed = value.unwrap_or_default();
        if listed.is_empty() {
            return Vec::new();
        }
        let Some(available) = self.cores else {
            self.error(key, "this machine's cores cannot be listed; leave it empty");
            return Vec::new();
        };
        let mut out: Vec<usize> = Vec::with_capacity(listed.len());
        for (i, &core) in listed.iter().enumerate() {
            let id = usize::try_from(core).unwrap_or(usize::MAX);
            if !available.contains(&id) {
                let have = core_ranges(available);
                let message = format!("core {core} does not exist on this machine (cores: {have})");
                self.error(&format!("{key}[{i}]"), message);
            } else if out.contains(&id) {
                self.error(
                    &format!("{key}[{i}]"),
                    format!("core {core} is listed twice"),
                );
            } else {
                out.push(id);
            }
        }
        out
    }

    // --- secrets ---

    /// Resolves an `env:VAR` or `file:PATH` reference. Messages name the reference, never the
    /// value.
    fn secret(&mut self, key: &str, reference: &str) -> Option<Secret> {
        let resolved = if let Some(var) = reference.strip_prefix("env:") {
            self.secret_env(var)
        } else if let Some(path) = reference.strip_prefix("file:") {
            self.secret_file(path)
        } else {
            Err(
                "literal secrets are not allowed; write \"env:VAR\" (an environment variable) \
                 or \"file:PATH\" (a file holding the secret)"
                    .to_string(),
            )
        };
        let checked = resolved.and_then(|value| {
            if value.bytes().all(|b| b.is_ascii_graphic()) {
                Ok(Secret::new(value))
            } else {
                Err(format!(
                    "the secret from {} holds spaces, control or non-ASCII characters, \
                     which an HTTP header cannot carry (value hidden)",
                    describe_reference(reference)
                ))
            }
        });
        checked.map_err(|message| self.error(key, message)).ok()
    }

    fn secret_env(&self, var: &str) -> Result<String, String> {
        if !is_env_name(var) {
            return Err(
                "\"env:\" must be followed by a variable name ([A-Za-z_][A-Za-z0-9_]*)".into(),
            );
        }
        match (self.env)(var).map(OsString::into_string) {
            None => Err(format!("environment variable {var} is not set")),
            Some(Err(_)) => Err(format!("environment variable {var} is not valid UTF-8")),
            Some(Ok(v)) if v.is_empty() => Err(format!("environment variable {var} is empty")),
            Some(Ok(v)) => Ok(v),
        }
    }

    fn secret_file(&self, path: &str) -> Result<String, String> {
        if path.is_empty() {
            return Err("\"file:\" must be followed by a path".into());
        }
        let full = self.dir.join(path);
        let shown = full.display();
        let bytes = read_regular_file(&full, SECRET_FILE_BYTES_MAX)
            .map_err(|e| format!("cannot read secret file \"{shown}\": {e}"))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("secret file \"{shown}\" is not valid UTF-8"))?;
        let value = text.trim_end_matches(['\n', '\r']);
        if value.is_empty() {
            return Err(format!("secret file \"{shown}\" is empty"));
        }
        Ok(value.to_string())
    }

    // --- sections ---

    fn server(&mut self, f: ServerFile) -> ServerConfig {
        let listen = self.addr("server.listen", f.listen.clone(), LISTEN_DEFAULT);
        let admin_listen = self.addr(
            "server.admin_listen",
            f.admin_listen.clone(),
            ADMIN_LISTEN_DEFAULT,
        );
        if listen == admin_listen && listen.port() != 0 {
            self.error(
                "server.admin_listen",
                format!("same address as server.listen ({listen})"),
            );
        }
        let cores = self.cores("server.cores", f.cores.clone());
        let threads = self.size("server.threads", f.threads, THREADS_DEFAULT, &THREADS_RANGE);
        let threads = match (threads, cores.len()) {
            (0, 0) => threads_available(),
            (0, listed) => listed,
            (n, _) => n,
        };
        let json_depth_max = self.size(
            "server.json_depth_max",
            f.json_depth_max,
            JSON_DEPTH_MAX_DEFAULT,
            &JSON_DEPTH_MAX_RANGE,
        );
        ServerConfig {
            listen,
            admin_listen,
            threads,
            cores,
            limits: self.limits(&f),
            json_depth_max,
            shutdown_timeout: self.timeout(
                "server.shutdown_timeout_ms",
                f.shutdown_timeout_ms,
                SHUTDOWN_TIMEOUT_MS_DEFAULT,
            ),
            client_keys: self.client_keys(f.client_keys.clone().unwrap_or_default()),
            auth: self.auth(f.auth.as_deref()),
            admin_token: f
                .admin_token
                .as_deref()
                .and_then(|t| self.key_hash("server.admin_token", t)),
        }
    }

    fn limits(&mut self, f: &ServerFile) -> Limits {
        let stack_kb = self.size(
            "server.coroutine_stack_kb",
            f.coroutine_stack_kb,
            COROUTINE_STACK_KB_DEFAULT as u64,
            &COROUTINE_STACK_KB_RANGE,
        );
        let body_bytes_max = self.size(
            "server.body_bytes_max",
            f.body_bytes_max,
            BODY_BYTES_MAX_DEFAULT as u64,
            &BODY_BYTES_MAX_RANGE,
        );
        let body_buffer_bytes_max = self.size(
            "server.body_buffer_bytes_max",
            f.body_buffer_bytes_max,
            BODY_BUFFER_BYTES_MAX_DEFAULT as u64,
            &BODY_BUFFER_BYTES_MAX_RANGE,
        );
        if body_buffer_bytes_max < body_bytes_max {
            self.error(
                "server.body_buffer_bytes_max",
                format!(
                    "{body_buffer_bytes_max} is less than server.body_bytes_max \
                     ({body_bytes_max}): a body of the largest allowed size could never be read"
                ),
            );
        }
        Limits {
            header_lines_max: self.size(
                "server.header_lines_max",
                f.header_lines_max,
                HEADER_LINES_MAX_DEFAULT as u64,
                &HEADER_LINES_MAX_RANGE,
            ),
            header_bytes_max: self.size(
                "server.header_bytes_max",
                f.header_bytes_max,
                HEADER_BYTES_MAX_DEFAULT as u64,
                &HEADER_BYTES_MAX_RANGE,
            ),
            body_bytes_max,
            header_read_timeout: self.timeout(
                "server.header_read_timeout_ms",
                f.header_read_timeout_ms,
                HEADER_READ_TIMEOUT_MS_DEFAULT,
            ),
            idle_timeout: self.timeout(
                "server.idle_timeout_ms",
                f.idle_timeout_ms,
                IDLE_TIMEOUT_MS_DEFAULT,
            ),
            body_read_timeout: self.timeout(
                "server.body_read_timeout_ms",
                f.body_read_timeout_ms,
                BODY_READ_TIMEOUT_MS_DEFAULT,
            ),
            body_timeout: self.timeout(
                "server.body_timeout_ms",
                f.body_timeout_ms,
                BODY_TIMEOUT_MS_DEFAULT,
            ),
            write_timeout: self.timeout(
                "server.write_timeout_ms",
                f.write_timeout_ms,
                WRITE_TIMEOUT_MS_DEFAULT,
            ),
            coroutine_stack_bytes: stack_kb * 1024,
            connections_max: self.size(
                "server.connections_max",
                f.connections_max,
                CONNECTIONS_MAX_DEFAULT as u64,
                &CONNECTIONS_MAX_RANGE,
            ),
            body_buffer_bytes_max,
        }
    }

    fn client_keys(&mut self, references: Vec<String>) -> Vec<KeyHash> {
        if references.len() > CLIENT_KEYS_MAX {
            self.error(
                "server.client_keys",
                format!("more than {CLIENT_KEYS_MAX} keys"),
            );
        }
        let mut keys = Vec::with_capacity(references.len());
        for (i, reference) in references.iter().enumerate() {
            keys.extend(self.key_hash(&format!("server.client_keys[{i}]"), reference));
        }
        keys
    }

    fn stats(&mut self, f: StatsFile) -> StatsConfig {
        let key = "stats.stdout_interval_ms";
        let stdout_interval = match f
            .stdout_interval_ms
            .unwrap_or(STATS_STDOUT_INTERVAL_MS_DEFAULT)
        {
            0 => None,
            ms => Some(Duration::from_millis(self.int(
                key,
                Some(ms),
                STATS_STDOUT_INTERVAL_MS_DEFAULT,
                &STATS_STDOUT_INTERVAL_MS_RANGE,
            ))),
        };
        let key = "stats.objpool_hit_ratio_warn";
        let ratio = f
            .objpool_hit_ratio_warn
            .unwrap_or(STATS_OBJPOOL_HIT_RATIO_WARN_DEFAULT);
        let objpool_hit_ratio_warn = if (0.0..=1.0).contains(&ratio) {
            ratio
        } else {
            self.error(key, format!("{ratio} is out of range 0.0..=1.0"));
            STATS_OBJPOOL_HIT_RATIO_WARN_DEFAULT
        };
        StatsConfig {
            stdout_interval,
            objpool_hit_ratio_warn,
        }
    }

    fn log(&mut self, f: LogFile) -> LogConfig {
        let level = match f.level.as_deref() {
            None => LOG_LEVEL_DEFAULT,
            Some(name) => Level::parse(name).unwrap_or_else(|| {
                let expected = "expected one of \"error\", \"warn\", \"info\", \"debug\"";
                self.error("log.level", format!("{expected} (found {name:?})"));
                LOG_LEVEL_DEFAULT
            }),
        };
        LogConfig {
            level,
            access: f.access.unwrap_or(LOG_ACCESS_DEFAULT),
        }
    }

    fn objpools(&mut self, f: ObjPoolsFile) -> ObjPoolsConfig {
        let buffers = self.size(
            "objpools.buffers",
            f.buffers,
            OBJPOOL_BUFFERS_DEFAULT,
            &OBJPOOL_BUFFERS_RANGE,
        );
        let prefill_top = *OBJPOOL_BUFFERS_PREFILL_RANGE.end();
        if f.buffers_prefill.is_some_and(|n| n > prefill_top) {
            let n = f.buffers_prefill.unwrap_or_default();
            let each = OBJPOOL_BUFFER_BYTES_INITIAL as u64;
            self.error(
                "objpools.buffers_prefill",
                format!(
                    "{n} is out of range 0..={prefill_top}: each prefilled buffer takes \
                     {each} bytes and a reply channel at start-up ({} for {n})",
                    bytes_shown(n.saturating_mul(each))
                ),
            );
        }
        let buffers_prefill = self.size(
            "objpools.buffers_prefill",
            f.buffers_prefill.filter(|n| *n <= prefill_top),
            OBJPOOL_BUFFERS_PREFILL_DEFAULT.min(buffers as u64),
            &OBJPOOL_BUFFERS_PREFILL_RANGE,
        );
        if buffers_prefill > buffers {
            let message = format!("{buffers_prefill} is more than objpools.buffers ({buffers})");
            self.error("objpools.buffers_prefill", message);
        }
        let buffer_retain_bytes_max = self.size(
            "objpools.buffer_retain_bytes_max",
            f.buffer_retain_bytes_max,
            OBJPOOL_BUFFER_RETAIN_BYTES_MAX_DEFAULT,
            &OBJPOOL_BUFFER_RETAIN_BYTES_MAX_RANGE,
        );
        let retained = (buffers as u64).saturating_mul(buffer_retain_bytes_max as u64);
        if retained > OBJPOOL_RETAINED_BYTES_MAX {
            self.error(
                "objpools.buffer_retain_bytes_max",
                format!(
                    "objpools.buffers ({buffers}) x buffer_retain_bytes_max \
                     ({buffer_retain_bytes_max}) = {} that idle buffers may keep, more than {}; \
                     lower either",
                    bytes_shown(retained),
                    bytes_shown(OBJPOOL_RETAINED_BYTES_MAX)
                ),
            );
        }
        ObjPoolsConfig {
            buffers,
            buffers_prefill: buffers_prefill.min(buffers),
            buffer_retain_bytes_max,
        }
    }

    /// What all pools together take: worker threads, their reserved stacks, and queue slots
    /// (allocated when the pools start, and again by each reload).
    fn pool_totals(&mut self, providers: &BTreeMap<String, ProviderConfig>) {
        let pools = providers.values().map(|p| &p.pool);
        let workers: u64 = pools.clone().map(|p| p.workers_max as u64).sum();
        let stacks: u64 = pools
            .clone()
            .map(|p| (p.workers_max as u64).saturating_mul(p.worker_stack_bytes as u64))
            .fold(0, u64::saturating_add);
        let slots: u64 = pools.map(|p| p.queue_capacity as u64).sum();
        if workers > POOL_WORKERS_TOTAL_MAX {
            let message = format!(
                "the pools' workers_max add up to {workers} worker threads, more than \
                 {POOL_WORKERS_TOTAL_MAX}"
            );
            self.error("providers", message);
        }
        if stacks > POOL_WORKER_STACKS_BYTES_TOTAL_MAX {
            let message = format!(
                "the pools' workers_max x worker_stack_kb add up to {} of worker stacks, more \
                 than {}",
                bytes_shown(stacks),
                bytes_shown(POOL_WORKER_STACKS_BYTES_TOTAL_MAX)
            );
            self.error("providers", message);
        }
        if slots > POOL_QUEUE_SLOTS_TOTAL_MAX {
            let message = format!(
                "the pools' queue_capacity add up to {slots} slots ({} allocated at start), \
                 more than {POOL_QUEUE_SLOTS_TOTAL_MAX}",
                bytes_shown(slots.saturating_mul(POOL_QUEUE_SLOT_BYTES))
            );
            self.error("providers", message);
        }
    }

    // --- providers ---

    fn providers(
        &mut self,
        files: BTreeMap<String, ProviderFile>,
    ) -> BTreeMap<String, ProviderConfig> {
        if files.is_empty() {
            let example = "e.g. [providers.mock] with type = \"mock\"";
            self.error(
                "providers",
                format!("at least one provider is required ({example})"),
            );
        }
        if files.len() > PROVIDERS_MAX {
            self.error("providers", format!("more than {PROVIDERS_MAX} providers"));
        }
        files
            .into_iter()
            .map(|(name, f)| {
                let provider = self.provider(&name, f);
                (name, provider)
            })
            .collect()
    }

    fn provider(&mut self, name: &str, f: ProviderFile) -> ProviderConfig {
        let at = provider_key(name);
        if !is_provider_name(name) {
            let rule = format!("1..={PROVIDER_NAME_BYTES_MAX} characters of a-z, 0-9, _ and -");
            self.error(&at, format!("provider names are {rule}"));
        }
        let kind = self.provider_type(&format!("{at}.type"), f.kind.as_deref());
        let preset = self.preset(&at, kind, f.preset.as_deref());
        let defaults = preset.map(Preset::defaults);
        let has_keys = f.keys.as_ref().is_some_and(|k| !k.is_empty());
        let azure = match kind {
            Some(ProviderType::Azure) => self.azure(&at, f.azure, has_keys),
            _ => {
                if f.azure.is_some() {
                    self.error(&format!("{at}.azure"), "only used with type = \"azure\"");
                }
                None
            }
        };
        let vertex = self.vertex(&at, kind, f.vertex);
        let base_url = match &azure {
            Some(azure) => {
                if f.base_url.is_some() {
                    let hint = "type \"azure\" is called at azure.endpoint";
                    self.error(&format!("{at}.base_url"), format!("not used ({hint})"));
                }
                azure.endpoint.clone()
            }
            None => {
                let preset_url = defaults.map(|d| d.base_url.to_string());
                let url = match (kind, &vertex, f.base_url) {
                    (Some(ProviderType::Vertex), Some(v), None) => {
                        Some(vertex_base_url(&v.location))
                    }
                    (_, _, url) => url.or(preset_url),
                };
                self.base_url(&at, kind, url)
            }
        };
        // Azure checks its own keys (they depend on its `auth`).
        let keys_required = kind.is_some_and(|k| k.is_network() && k != ProviderType::Azure)
            && defaults.is_none_or(|d| d.keys_required);
        let keys = self.keys(&at, kind, keys_required, f.keys.unwrap_or_default());
        let headers = self.headers(&format!("{at}.headers"), f.headers.unwrap_or_default());
        let (bedrock, base_url, keys) =
            self.bedrock_provider(&at, kind, f.bedrock, base_url, keys, &headers);
        let ca_file = f
            .ca_file
            .and_then(|p| self.ca_file(&format!("{at}.ca_file"), &p));
        let mock = f.mock.unwrap_or_default();
        ProviderConfig {
            name: name.to_string(),
            kind: kind.unwrap_or(ProviderType::Mock),
            preset,
            azure,
            base_url,
            keys,
            models: self.models(&format!("{at}.models"), f.models.unwrap_or_default()),
            headers,
            connect_timeout: self.timeout(
                &format!("{at}.connect_timeout_ms"),
                f.connect_timeout_ms,
                CONNECT_TIMEOUT_MS_DEFAULT,
            ),
            ca_file,
            anthropic_version: self
                .anthropic_version(&format!("{at}.anthropic_version"), f.anthropic_version),
            vertex,
            max_tokens_default: self.int(
                &format!("{at}.max_tokens_default"),
                f.max_tokens_default,
                MAX_TOKENS_DEFAULT,
                &MAX_TOKENS_RANGE,
            ) as u32,
            responses: f
                .responses
                .unwrap_or(defaults.map_or(RESPONSES_DEFAULT, |d| d.responses)),
            translation: TranslationConfig {
                reasoning_effort: f.reasoning_effort.unwrap_or(REASONING_EFFORT_DEFAULT),
                thinking_style: self.choice(
                    &format!("{at}.thinking_style"),
                    f.thinking_style.as_deref(),
                    &[
                        ("adaptive", ThinkingStyle::Adaptive),
                        ("budget", ThinkingStyle::Budget),
                    ],
                ),
                structured_output: self.choice(
                    &format!("{at}.structured_output"),
                    f.structured_output.as_deref(),
                    &[
                        ("forced_tool", StructuredOutputStyle::ForcedTool),
                        ("output_format", StructuredOutputStyle::OutputFormat),
                    ],
                ),
                max_tokens_field: match f.max_tokens_field.as_deref() {
                    None => defaults.map_or(MaxTokensField::default(), |d| d.max_tokens_field),
                    value => self.choice(
                        &format!("{at}.max_tokens_field"),
                        value,
                        &[
                            ("max_completion_tokens", MaxTokensField::MaxCompletionTokens),
                            ("max_tokens", MaxTokensField::MaxTokens),
                        ],
                    ),
                },
                stream_usage: f
                    .stream_usage
                    .or(defaults.map(|d| d.stream_usage))
                    .unwrap_or(STREAM_USAGE_DEFAULT),
                tool_call_id_format: match f.tool_call_id_format.as_deref() {
                    None => defaults.map_or(ToolCallIdFormat::default(), |d| d.tool_call_id_format),
                    value => self.choice(
                        &format!("{at}.tool_call_id_format"),
                        value,
                        &[
                            ("any", ToolCallIdFormat::Any),
                            ("alphanumeric9", ToolCallIdFormat::Alphanumeric9),
                        ],
                    ),
                },
                tools_supported: f
                    .tools_supported
                    .or(defaults.map(|d| d.tools_supported))
                    .unwrap_or(TOOLS_SUPPORTED_DEFAULT),
                parallel_tool_calls_supported: f
                    .parallel_tool_calls_supported
                    .or(defaults.map(|d| d.parallel_tool_calls_supported))
                    .unwrap_or(PARALLEL_TOOL_CALLS_SUPPORTED_DEFAULT),
                reasoning_content_history: f
                    .reasoning_content_history
                    .or(defaults.map(|d| d.reasoning_content_history))
                    .unwrap_or(REASONING_CONTENT_HISTORY_DEFAULT),
            },
            bedrock,
            stream_idle_timeout: self.timeout(
                &format!("{at}.stream_idle_timeout_ms"),
                f.stream_idle_timeout_ms,
                STREAM_IDLE_TIMEOUT_MS_DEFAULT,
            ),
            stream_duration_max: Duration::from_millis(self.int(
                &format!("{at}.stream_duration_ms_max"),
                f.stream_duration_ms_max,
                STREAM_DURATION_MS_MAX_DEFAULT,
                &STREAM_DURATION_MS_MAX_RANGE,
            )),
            mock: MockConfig {
                latency: Duration::from_millis(self.int(
                    &format!("{at}.mock.latency_ms"),
                    mock.latency_ms,
                    MOCK_LATENCY_MS_DEFAULT,
                    &MOCK_LATENCY_MS_RANGE,
                )),
                stream_chunks: self.int(
                    &format!("{at}.mock.stream_chunks"),
                    mock.stream_chunks,
                    MOCK_STREAM_CHUNKS_DEFAULT,
                    &MOCK_STREAM_CHUNKS_RANGE,
                ) as usize,
                chunk_delay: Duration::from_millis(self.int(
                    &format!("{at}.mock.chunk_delay_ms"),
                    mock.chunk_delay_ms,
                    MOCK_CHUNK_DELAY_MS_DEFAULT,
                    &MOCK_LATENCY_MS_RANGE,
                )),
                tool_text: match mock.tool_text {
                    Some(t) if t.len() > MOCK_TOOL_TEXT_BYTES_MAX => {
                        self.error(
                            &format!("{at}.mock.tool_text"),
                            format!("longer than {MOCK_TOOL_TEXT_BYTES_MAX} bytes"),
                        );
                        t
                    }
                    Some(t) => t,
                    None => MOCK_TOOL_TEXT_DEFAULT.to_string(),
                },
            },
            pool: self.pool(&format!("{at}.pool"), f.pool.unwrap_or_default()),
            retry: self.retry(
                &at,
                [
                    f.max_retries,
                    f.retry_backoff_ms_initial,
                    f.retry_backoff_ms_max,
                    f.rate_limit_cooldown_ms_default,
                    f.rate_limit_cooldown_ms_max,
                    f.key_disable_ms,
                ],
            ),
            breaker: self.breaker(&format!("{at}.breaker"), f.breaker.unwrap_or_default()),
            health: self.health(&format!("{at}.health"), f.health.unwrap_or_default()),
        }
    }

    /// `[max_retries, retry_backoff_ms_initial, retry_backoff_ms_max,
    /// rate_limit_cooldown_ms_default, rate_limit_cooldown_ms_max, key_disable_ms]`.
    fn retry(&mut self, at: &str, values: [Option<u64>; 6]) -> RetryConfig {
        let [max_retries, initial_ms, max_ms, cooldown_ms, cooldown_max_ms, disable_ms] = values;
        let key = |leaf: &str| format!("{at}.{leaf}");
        let backoff_initial = self.timeout(
            &key("retry_backoff_ms_initial"),
            initial_ms,
            RETRY_BACKOFF_MS_INITIAL_DEFAULT,
        );
        let backoff_max = self.timeout(
            &key("retry_backoff_ms_max"),
            max_ms,
            RETRY_BACKOFF_MS_MAX_DEFAULT,
        );
        if backoff_max < backoff_initial {
            self.error(
                &key("retry_backoff_ms_max"),
                "must be at least retry_backoff_ms_initial",
            );
        }
        let rate_limit_cooldown_default = self.timeout(
            &key("rate_limit_cooldown_ms_default"),
            cooldown_ms,
            RATE_LIMIT_COOLDOWN_MS_DEFAULT,
        );
        let rate_limit_cooldown_max = Duration::from_millis(self.int(
            &key("rate_limit_cooldown_ms_max"),
            cooldown_max_ms,
            RATE_LIMIT_COOLDOWN_MS_MAX_DEFAULT,
            &RATE_LIMIT_COOLDOWN_MS_MAX_RANGE,
        ));
        if rate_limit_cooldown_max < rate_limit_cooldown_default {
            self.error(
                &key("rate_limit_cooldown_ms_max"),
                "must be at least rate_limit_cooldown_ms_default",
            );
        }
        RetryConfig {
            max_retries: self.int(
                &key("max_retries"),
                max_retries,
                MAX_RETRIES_DEFAULT,
                &MAX_RETRIES_RANGE,
            ) as u32,
            backoff_initial,
            backoff_max,
            rate_limit_cooldown_default,
            rate_limit_cooldown_max,
            key_disable: Duration::from_millis(self.int(
                &key("key_disable_ms"),
                disable_ms,
                KEY_DISABLE_MS_DEFAULT,
                &KEY_DISABLE_MS_RANGE,
            )),
        }
    }

    /// A number within `range`, else an error and `default`.
    fn fraction(
        &mut self,
        key: &str,
        value: Option<f64>,
        default: f64,
        range: RangeInclusive<f64>,
    ) -> f64 {
        match value {
            None => default,
            Some(v) if range.contains(&v) => v,
            Some(v) => {
                let (lo, hi) = (range.start(), range.end());
                self.error(key, format!("{v} is out of range {lo}..={hi}"));
                default
            }
        }
    }

    fn breaker(&mut self, at: &str, f: BreakerFile) -> BreakerConfig {
        let key = |leaf: &str| format!("{at}.{leaf}");
        BreakerConfig {
            enabled: f.enabled.unwrap_or(true),
            failure_ratio: self.fraction(
                &key("failure_ratio"),
                f.failure_ratio,
                BREAKER_FAILURE_RATIO_DEFAULT,
                0.0..=1.0,
            ),
            min_requests: self.int(
                &key("min_requests"),
                f.min_requests,
                BREAKER_MIN_REQUESTS_DEFAULT,
                &BREAKER_MIN_REQUESTS_RANGE,
            ) as u32,
            window: self.timeout(&key("window_ms"), f.window_ms, BREAKER_WINDOW_MS_DEFAULT),
            consecutive_failures: self.int(
                &key("consecutive_failures"),
                f.consecutive_failures,
                BREAKER_CONSECUTIVE_FAILURES_DEFAULT,
                &BREAKER_CONSECUTIVE_FAILURES_RANGE,
            ) as u32,
            open_for: self.timeout(&key("open_ms"), f.open_ms, BREAKER_OPEN_MS_DEFAULT),
            half_open_probes: self.int(
                &key("half_open_probes"),
                f.half_open_probes,
                BREAKER_HALF_OPEN_PROBES_DEFAULT,
                &BREAKER_HALF_OPEN_PROBES_RANGE,
            ) as u32,
        }
    }

    fn health(&mut self, at: &str, f: HealthFile) -> HealthConfig {
        let key = |leaf: &str| format!("{at}.{leaf}");
        let path = f.path.unwrap_or_else(|| HEALTH_PATH_DEFAULT.to_string());
        if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
            self.error(&key("path"), "must start with \"/\" and be visible ASCII");
        }
        let check = match f.check.as_deref() {
            None | Some("none") => HealthCheck::None,
            Some("connect") => HealthCheck::Connect,
            Some("get") => HealthCheck::Get(path.clone()),
            Some(other) => {
                let expected = "expected one of \"none\", \"connect\", \"get\"";
                self.error(&key("check"), format!("{expected} (found {other:?})"));
                HealthCheck::None
            }
        };
        HealthConfig {
            check,
            path,
            interval: self.timeout(
                &key("interval_ms"),
                f.interval_ms,
                HEALTH_INTERVAL_MS_DEFAULT,
            ),
            timeout: self.timeout(&key("timeout_ms"), f.timeout_ms, HEALTH_TIMEOUT_MS_DEFAULT),
        }
    }

    /// One of `options` by name; the first option when absent.
    fn choice<T: Copy>(&mut self, key: &str, value: Option<&str>, options: &[(&str, T)]) -> T {
        let Some(value) = value else {
            return options[0].1;
        };
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == value) {
            return *v;
        }
        let names: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
        self.error(
            key,
            format!("expected one of {} (found {value:?})", names.join(", ")),
        );
        options[0].1
    }

    /// A visible-ASCII header value, at most [`ANTHROPIC_VERSION_BYTES_MAX`] bytes.
    fn anthropic_version(&mut self, key: &str, value: Option<String>) -> String {
        let Some(value) = value else {
            return ANTHROPIC_VERSION_DEFAULT.to_string();
        };
        if value.is_empty()
            || value.len() > ANTHROPIC_VERSION_BYTES_MAX
            || !value.bytes().all(|b| b.is_ascii_graphic())
        {
            self.error(
                key,
                format!(
                    "expected 1..={ANTHROPIC_VERSION_BYTES_MAX} visible ASCII characters, e.g. \"{ANTHROPIC_VERSION_DEFAULT}\""
                ),
            );
        }
        value
    }

    fn provider_type(&mut self, key: &str, value: Option<&str>) -> Option<ProviderType> {
        match value {
            Some("mock") => Some(ProviderType::Mock),
            Some("openai") => Some(ProviderType::OpenAi),
            Some("anthropic") => Some(ProviderType::Anthropic),
            Some("azure") => Some(ProviderType::Azure),
            Some("gemini") => Some(ProviderType::Gemini),
            Some("vertex") => Some(ProviderType::Vertex),
            Some("bedrock") => Some(ProviderType::Bedrock),
            other => {
                let found = other.map_or("missing".to_string(), |v| format!("found {v:?}"));
                let types = "\"mock\", \"openai\", \"anthropic\", \"azure\", \"gemini\", \"vertex\", \"bedrock\"";
                self.error(key, format!("expected one of {types} ({found})"));
                None
            }
        }
    }

    /// `preset` of an `openai` provider: one of [`PRESETS`].
    fn preset(
        &mut self,
        at: &str,
        kind: Option<ProviderType>,
        value: Option<&str>,
    ) -> Option<Preset> {
        let name = value?;
        let key = format!("{at}.preset");
        if kind.is_some_and(|k| k != ProviderType::OpenAi) {
            self.error(&key, "only used with type = \"openai\"");
            return None;
        }
        let preset = Preset::parse(name);
        if preset.is_none() {
            let names: Vec<String> = PRESETS.iter().map(|(n, _)| format!("{n:?}")).collect();
            let expected = names.join(", ");
            self.error(&key, format!("expected one of {expected} (found {name:?})"));
        }
        preset
    }

    /// Required and checked for `openai`, defaulted for `anthropic`; kept as written (trailing
    /// `/` stripped) for `mock`.
    fn base_url(&mut self, at: &str, kind: Option<ProviderType>, value: Option<String>) -> String {
        let key = format!("{at}.base_url");
        let value = match (kind, value) {
            (Some(ProviderType::Anthropic), None) => Some(ANTHROPIC_BASE_URL_DEFAULT.to_string()),
            (Some(ProviderType::Gemini), None) => Some(GEMINI_BASE_URL_DEFAULT.to_string()),
            (_, value) => value,
        };
        let url = value
            .as_deref()
            .unwrap_or("")
            .trim_end_matches('/')
            .to_string();
        // A `bedrock` provider's endpoint defaults from its region (`bedrock_provider`).
        if !kind.is_some_and(ProviderType::is_network)
            || (kind == Some(ProviderType::Bedrock) && value.is_none())
        {
            return url;
        }
        if value.is_none() {
            let example = "e.g. \"https://api.openai.com/v1\"";
            let preset = "or a preset, e.g. preset = \"groq\"";
            self.error(
                &key,
                format!("required for type \"openai\" ({example}, {preset})"),
            );
        } else if let Err(problem) = check_base_url(value.as_deref().unwrap_or("")) {
            self.error(&key, problem);
        }
        url
    }

    /// `required`: at least one key must be given.
    fn keys(
        &mut self,
        at: &str,
        kind: Option<ProviderType>,
        required: bool,
        files: Vec<KeyFile>,
    ) -> Vec<KeyConfig> {
        let key = format!("{at}.keys");
        if kind == Some(ProviderType::Vertex) {
            if !files.is_empty() {
                let why = "a vertex provider authenticates with vertex.credentials_file";
                self.error(&key, format!("not used by type \"vertex\" ({why})"));
            }
            // One key slot, with no secret of its own: the service account. It carries the
            // account's refusals (429 cool-downs per model, a 401 disable) like any key.
            return vec![KeyConfig {
                secret: Secret::new(String::new()),
                weight: 1,
                models: Vec::new(),
            }];
        }
        // A bedrock provider's one key stands for its AWS credentials (see `bedrock_provider`).
        let implicit = kind == Some(ProviderType::Bedrock);
        if let Some(kind) = kind.filter(|_| files.is_empty() && required && !implicit) {
            let example = "e.g. keys = [{ key = \"env:OPENAI_API_KEY\" }]";
            let name = kind.name();
            self.error(
                &key,
                format!("required for type \"{name}\": at least one key ({example})"),
            );
        }
        if files.len() > KEYS_MAX {
            self.error(&key, format!("more than {KEYS_MAX} keys"));
        }
        let mut keys = Vec::with_capacity(files.len());
        for (i, f) in files.into_iter().enumerate() {
            keys.extend(self.key(&format!("{key}[{i}]"), f));
        }
        keys
    }

    fn key(&mut self, at: &str, f: KeyFile) -> Option<KeyConfig> {
        let weight = self.int(
            &format!("{at}.weight"),
            f.weight,
            KEY_WEIGHT_DEFAULT,
            &KEY_WEIGHT_RANGE,
        );
        let models = self.models(&format!("{at}.models"), f.models.unwrap_or_default());
        let Some(reference) = f.key else {
            self.error(
                &format!("{at}.key"),
                "missing (e.g. key = \"env:OPENAI_API_KEY\")",
            );
            return None;
        };
        let secret = self.secret(&format!("{at}.key"), &reference)?;
        Some(KeyConfig {
            secret,
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
            models,
        })
    }

    fn models(&mut self, key: &str, models: Vec<String>) -> Vec<String> {
        if models.len() > MODELS_MAX {
            self.error(key, format!("more than {MODELS_MAX} models"));
        }
        let mut seen = BTreeSet::new();
        for (i, model) in models.iter().enumerate() {
            if !is_model_name(model) {
                let rule = format!("1..={MODEL_NAME_BYTES_MAX} visible ASCII characters");
                self.error(&format!("{key}[{i}]"), format!("model names are {rule}"));
            } else if !seen.insert(model.as_str()) {
                self.error(
                    &format!("{key}[{i}]"),
                    format!("model {model:?} is listed twice"),
                );
            }
        }
        models
    }

    fn headers(&mut self, key: &str, headers: BTreeMap<String, String>) -> Vec<(String, String)> {
        if headers.len() > HEADERS_MAX {
            self.error(key, format!("more than {HEADERS_MAX} headers"));
        }
        let mut seen = BTreeSet::new();
        for (name, value) in &headers {
            let at = format!("{key}.{name:?}");
            let lower = name.to_ascii_lowercase();
            if let Err(problem) = check_header(&lower, value) {
                self.error(&at, problem);
            } else if !seen.insert(lower) {
                self.error(&at, "listed twice (header names ignore case)");
            }
        }
        headers.into_iter().collect()
    }

    fn ca_file(&mut self, key: &str, path: &str) -> Option<PathBuf> {
        if path.is_empty() {
            self.error(key, "empty path");
            return None;
        }
        let full = self.dir.join(path);
        match ca_certificates(&full) {
            Ok(_) => Some(full),
            Err(e) => {
                self.error(key, format!("cannot read \"{}\": {e}", full.display()));
                None
            }
        }
    }

    fn pool(&mut self, at: &str, f: PoolFile) -> PoolConfig {
        let key = |leaf: &str| format!("{at}.{leaf}");
        let queue_wait_max = Duration::from_millis(self.int(
            &key("queue_wait_ms_max"),
            f.queue_wait_ms_max,
            POOL_QUEUE_WAIT_MS_MAX_DEFAULT,
            &POOL_QUEUE_WAIT_MS_MAX_RANGE,
        ));
        let request_timeout = self.timeout(
            &key("request_timeout_ms"),
            f.request_timeout_ms,
            POOL_REQUEST_TIMEOUT_MS_DEFAULT,
        );
        if queue_wait_max > request_timeout {
            let (wait, total) = (queue_wait_max.as_millis(), request_timeout.as_millis());
            let message = format!("{wait} ms is more than request_timeout_ms ({total} ms)");
            self.error(&key("queue_wait_ms_max"), message);
        }
        let stack_kb = self.size(
            &key("worker_stack_kb"),
            f.worker_stack_kb,
            POOL_WORKER_STACK_KB_DEFAULT,
            &POOL_WORKER_STACK_KB_RANGE,
        );
        let workers = self.size(
            &key("workers"),
            f.workers,
            POOL_WORKERS_DEFAULT,
            &POOL_WORKERS_RANGE,
        );
        let workers_min = self.size(
            &key("workers_min"),
            f.workers_min,
            workers as u64,
            &POOL_WORKERS_RANGE,
        );
        let workers_max = self.size(
            &key("workers_max"),
            f.workers_max,
            workers as u64,
            &POOL_WORKERS_RANGE,
        );
        if !(workers_min <= workers && workers <= workers_max) {
            let message = format!(
                "workers_min ({workers_min}) <= workers ({workers}) <= workers_max ({workers_max}) does not hold"
            );
            self.error(&key("workers"), message);
        }
        let upstream_rps_max =
            self.fraction(&key("upstream_rps_max"), f.upstream_rps_max, 0.0, 0.0..=1e9);
        PoolConfig {
            workers,
            workers_min,
            workers_max,
            scale_interval: self.timeout(
                &key("scale_interval_ms"),
                f.scale_interval_ms,
                SCALE_INTERVAL_MS_DEFAULT,
            ),
            scale_up_utilization: self.fraction(
                &key("scale_up_utilization"),
                f.scale_up_utilization,
                SCALE_UP_UTILIZATION_DEFAULT,
                0.0..=1.0,
            ),
            scale_queue_wait_p99_max: self.timeout(
                &key("scale_queue_wait_ms_p99_max"),
                f.scale_queue_wait_ms_p99_max,
                SCALE_QUEUE_WAIT_MS_P99_MAX_DEFAULT,
            ),
            scale_up_factor: self.fraction(
                &key("scale_up_factor"),
                f.scale_up_factor,
                SCALE_UP_FACTOR_DEFAULT,
                1.1..=16.0,
            ),
            scale_down_utilization: self.fraction(
                &key("scale_down_utilization"),
                f.scale_down_utilization,
                SCALE_DOWN_UTILIZATION_DEFAULT,
                0.0..=1.0,
            ),
            scale_min_interval: self.timeout(
                &key("scale_min_interval_ms"),
                f.scale_min_interval_ms,
                SCALE_MIN_INTERVAL_MS_DEFAULT,
            ),
            stall_grace: self.timeout(
                &key("stall_grace_ms"),
                f.stall_grace_ms,
                STALL_GRACE_MS_DEFAULT,
            ),
            upstream_rps_max,
            queue_capacity: self.size(
                &key("queue_capacity"),
                f.queue_capacity,
                POOL_QUEUE_CAPACITY_DEFAULT,
                &POOL_QUEUE_CAPACITY_RANGE,
            ),
            queue_policy: self.queue_policy(&key("queue_policy"), f.queue_policy.as_deref()),
            queue_wait_max,
            request_timeout,
            cores: self.cores(&key("cores"), f.cores),
            worker_stack_bytes: stack_kb * 1024,
        }
    }

    fn queue_policy(&mut self, key: &str, value: Option<&str>) -> QueuePolicy {
        match value {
            None => POOL_QUEUE_POLICY_DEFAULT,
            Some("drop") => QueuePolicy::Drop,
            Some("error") => QueuePolicy::Error,
            Some("block") => QueuePolicy::Block,
            Some(other) => {
                let message =
                    format!("expected one of \"drop\", \"error\", \"block\" (found {other:?})");
                self.error(key, message);
                POOL_QUEUE_POLICY_DEFAULT
            }
        }
    }

    // --- aliases ---

    fn aliases(
        &mut self,
        aliases: BTreeMap<String, String>,
        providers: &BTreeMap<String, ProviderConfig>,
    ) -> BTreeMap<String, String> {
        if aliases.len() > ALIASES_MAX {
            self.error("aliases", format!("more than {ALIASES_MAX} aliases"));
        }
        for (alias, target) in &aliases {
            let at = format!("aliases.{alias:?}");
            if !is_model_name(alias) {
                let rule = format!("1..={MODEL_NAME_BYTES_MAX} visible ASCII characters");
                self.error(&at, format!("alias names are {rule}"));
            }
            if let Err(problem) = check_alias_target(target, providers) {
                self.error(&at, problem);
            }
        }
        aliases
    }

    fn fallbacks(
        &mut self,
        fallbacks: BTreeMap<String, Vec<String>>,
        providers: &BTreeMap<String, ProviderConfig>,
    ) -> BTreeMap<String, Vec<String>> {
        for (model, targets) in &fallbacks {
            let at = format!("fallbacks.{model:?}");
            if !is_model_name(model) {
                let rule = format!("1..={MODEL_NAME_BYTES_MAX} visible ASCII characters");
                self.error(&at, format!("model names are {rule}"));
            }
            if targets.is_empty() || targets.len() > FALLBACKS_MAX {
                let expected = format!("expected 1..={FALLBACKS_MAX} \"provider/model\" entries");
                self.error(&at, expected);
            }
            for target in targets {
                if let Err(problem) = check_alias_target(target, providers) {
                    self.error(&at, problem);
                }
            }
        }
        fallbacks
    }
}

/// `provider/model` where the provider is configured and, if it lists models, lists this one.
fn check_alias_target(
    target: &str,
    providers: &BTreeMap<String, ProviderConfig>,
) -> Result<(), String> {
    let Some((provider, model)) = target
        .split_once('/')
        .filter(|(p, m)| !p.is_empty() && !m.is_empty())
    else {
        return Err(format!("expected \"provider/model\" (found {target:?})"));
    };
    let Some(config) = providers.get(provider) else {
        return Err(format!("provider {provider:?} is not configured"));
    };
    if !config.models.is_empty() && !config.models.iter().any(|m| m == model) {
        let list = provider_key(provider);
        return Err(format!("model {model:?} is not in {list}.models"));
    }
    Ok(())
}

/// `http://` or `https://`, a host, no user info (credentials belong in `keys`), no query or
/// fragment. Messages do not repeat the URL.
fn check_base_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must start with \"http://\" or \"https://\"")?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return Err("has no host".into());
    }
    if authority.contains('@') {
        return Err("must not hold credentials (user@host); put keys in keys".into());
    }
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be visible ASCII with no spaces".into());
    }
    if url.contains(['?', '#']) {
        return Err("must not have a query or fragment".into());
    }
    Ok(())
}

/// Header names set by the gateway itself or carrying credentials (which belong in `keys`).
const HEADERS_FORBIDDEN: [&str; 6] = [
    "authorization",
    "proxy-authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
];

/// `lower_name` is the lowercased name. Messages never repeat the value.
fn check_header(lower_name: &str, value: &str) -> Result<(), String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if lower_name.is_empty() || !lower_name.bytes().all(tchar) {
        return Err("not a valid header name (RFC 9110 token characters only)".into());
    }
    if HEADERS_FORBIDDEN.contains(&lower_name) {
        let why = if lower_name.contains("authorization") {
            "credentials belong in keys"
        } else {
            "the gateway sets it"
        };
        return Err(format!("this header may not be set here ({why})"));
    }
    if !value
        .bytes()
        .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
    {
        return Err("value must be visible ASCII, spaces or tabs (value hidden)".into());
    }
    Ok(())
}

fn is_provider_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= PROVIDER_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn is_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MODEL_NAME_BYTES_MAX
        && name.bytes().all(|b| b.is_ascii_graphic())
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `providers.<name>`, the name quoted when it is not a bare TOML key.
fn provider_key(name: &str) -> String {
    if is_provider_name(name) {
        format!("providers.{name}")
    } else {
        format!("providers.{name:?}")
    }
}

/// Names a secret reference for messages: `environment variable X` or `file "P"`.
fn describe_reference(reference: &str) -> String {
    match reference.split_once(':') {
        Some(("env", var)) => format!("environment variable {var}"),
        Some(("file", path)) => format!("file {path:?}"),
        _ => "a literal".to_string(),
    }
}

/// A byte count for messages: `512 KiB`, `300 MiB`, `9.8 GiB`.
fn bytes_shown(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    const GIB: u64 = 1024 * MIB;
    match bytes {
        b if b >= GIB => format!("{:.1} GiB", b as f64 / GIB as f64),
        b if b >= MIB => format!("{} MiB", b / MIB),
        b if b >= KIB => format!("{} KiB", b / KIB),
        b => format!("{b} bytes"),
    }
}

/// `0-3,6,8-9` from a sorted list of core ids.
fn core_ranges(cores: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cores.len() {
        let start = cores[i];
        while i + 1 < cores.len() && cores[i + 1] == cores[i] + 1 {
            i += 1;
        }
        parts.push(if cores[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", cores[i])
        });
        i += 1;
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOCK: &str = "[providers.mock]\ntype = \"mock\"\n";
    const CORES: &[usize] = &[0, 1, 2, 3];

    fn check_with(
        text: &str,
        env: &[(&str, &str)],
        cores: Option<&[usize]>,
    ) -> Result<Config, ConfigError> {
        let lookup = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        };
        parse(text, Path::new("test.toml"), &lookup, cores)
    }

    fn check(text: &str) -> Result<Config, ConfigError> {
        check_with(text, &[], Some(CORES))
    }

    fn err(text: &str) -> String {
        match check(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    fn err_with(text: &str, env: &[(&str, &str)]) -> String {
        match check_with(text, env, Some(CORES)) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    /// A file under the temp dir, unique to this process and `name`.
    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "deepintshield-config-{}-{name}",
            std::process::id()
        ));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn the_responses_flag_defaults_to_on() {
        let openai = |flag: &str| {
            let c = format!("[providers.o]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nkeys = [{{ key = \"env:K\" }}]\n{flag}");
            check_with(&c, &[("K", "sk-x")], Some(CORES)).map(|c| c.providers["o"].responses)
        };
        assert!(openai("").unwrap());
        assert!(!openai("responses = false").unwrap());
        let e = openai("responses = \"no\"").unwrap_err().to_string();
        assert!(e.contains("expected a boolean"), "{e}");
        // A preset without a Responses API turns it off unless the table says otherwise.
        let preset = |p: &str, flag: &str| {
            let c = format!("[providers.o]\ntype = \"openai\"\npreset = \"{p}\"\nkeys = [{{ key = \"env:K\" }}]\n{flag}");
            check_with(&c, &[("K", "sk-x")], Some(CORES)).map(|c| c.providers["o"].responses)
        };
        assert!(!preset("ollama", "").unwrap());
        assert!(preset("ollama", "responses = true").unwrap());
        assert!(preset("groq", "").unwrap());
    }

    #[test]
    fn defaults_from_a_single_mock_provider() {
        let c = check(MOCK).unwrap();
        assert_eq!(c.path, Path::new("test.toml"));
        let s = &c.server;
        assert_eq!(s.listen, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(
            s.admin_listen,
            "127.0.0.1:9090".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            s.threads,
            std::thread::available_parallelism().unwrap().get()
        );
        assert!(s.cores.is_empty() && s.client_keys.is_empty());
        assert_eq!(s.limits.header_lines_max, HEADER_LINES_MAX_DEFAULT);
        assert_eq!(s.limits.header_bytes_max, HEADER_BYTES_MAX_DEFAULT);
        assert_eq!(s.limits.body_bytes_max, BODY_BYTES_MAX_DEFAULT);
        assert_eq!(
            s.limits.header_read_timeout,
            Duration::from_millis(HEADER_READ_TIMEOUT_MS_DEFAULT)
        );
        assert_eq!(
            s.limits.idle_timeout,
            Duration::from_millis(IDLE_TIMEOUT_MS_DEFAULT)
        );
        assert_eq!(
            s.limits.body_read_timeout,
            Duration::from_millis(BODY_READ_TIMEOUT_MS_DEFAULT)
        );
        assert_eq!(
            s.limits.write_timeout,
            Duration::from_millis(WRITE_TIMEOUT_MS_DEFAULT)
        );
        assert_eq!(s.limits.coroutine_stack_bytes, 256 * 1024);
        assert_eq!(s.json_depth_max, 64);
        assert_eq!(s.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(c.stats.stdout_interval, Some(Duration::from_secs(10)));
        assert_eq!(c.stats.objpool_hit_ratio_warn, 0.9);
        assert_eq!(c.objpools.buffers, 1024);
        assert_eq!(c.objpools.buffers_prefill, 256);
        assert_eq!(c.objpools.buffer_retain_bytes_max, 1024 * 1024);
        assert!(c.aliases.is_empty());
        let p = &c.providers["mock"];
        assert_eq!((p.name.as_str(), p.kind), ("mock", ProviderType::Mock));
        assert!(p.base_url.is_empty() && p.keys.is_empty() && p.models.is_empty());
        assert!(p.headers.is_empty() && p.ca_file.is_none());
        assert_eq!(p.connect_timeout, Duration::from_secs(5));
        assert_eq!(p.stream_idle_timeout, Duration::from_secs(30));
        assert_eq!(p.stream_duration_max, Duration::from_secs(3600));
        assert_eq!(p.mock.latency, Duration::ZERO);
        let pool = &p.pool;
        assert_eq!((pool.workers, pool.queue_capacity), (8, 1024));
        assert_eq!(pool.queue_policy, QueuePolicy::Drop);
        assert_eq!(pool.queue_wait_max, Duration::from_secs(1));
        assert_eq!(pool.request_timeout, Duration::from_secs(60));
        assert!(pool.cores.is_empty());
        assert_eq!(pool.worker_stack_bytes, 256 * 1024);
    }

    #[test]
    fn hand_built_defaults_match_the_file_defaults() {
        let file = check(MOCK).unwrap();
        let built = Config::default();
        assert_eq!(format!("{:?}", file.server), format!("{:?}", built.server));
        assert_eq!(format!("{:?}", file.stats), format!("{:?}", built.stats));
        assert_eq!(
            format!("{:?}", file.objpools),
            format!("{:?}", built.objpools)
        );
        assert_eq!(
            format!("{:?}", file.providers),
            format!("{:?}", built.providers)
        );
    }

    #[test]
    fn full_example_parses() {
        let ca = temp_file("ca.pem", &ca_pem());
        let text = format!(
            r#"
[server]
listen = "0.0.0.0:8081"
admin_listen = "[::1]:9091"
threads = 0
cores = [1, 2]
coroutine_stack_kb = 128
header_lines_max = 50
header_bytes_max = 16384
body_bytes_max = 1048576
json_depth_max = 32
header_read_timeout_ms = 1000
idle_timeout_ms = 2000
body_read_timeout_ms = 3000
body_timeout_ms = 3500
write_timeout_ms = 4000
connections_max = 1000
body_buffer_bytes_max = 8388608
shutdown_timeout_ms = 5000
client_keys = ["env:DEEPINTSHIELD_CLIENT_KEY"]
admin_token = "env:DEEPINTSHIELD_ADMIN_TOKEN"

[stats]
stdout_interval_ms = 0
objpool_hit_ratio_warn = 0.5

[objpools]
buffers = 64
buffers_prefill = 64
buffer_retain_bytes_max = 65536

[providers.mock]
type = "mock"
models = ["gpt-4o-mini"]
[providers.mock.mock]
latency_ms = 7

[providers.openai]
type = "openai"
base_url = "https://api.openai.com/v1/"
models = ["gpt-4o", "gpt-4o-mini"]
headers = {{ "OpenAI-Organization" = "org-x" }}
connect_timeout_ms = 2500
stream_idle_timeout_ms = 90000
stream_duration_ms_max = 7200000
ca_file = {ca:?}
keys = [ {{ key = "env:OPENAI_API_KEY", weight = 3, models = ["gpt-4o"] }}, {{ key = "env:OPENAI_API_KEY_2" }} ]
[providers.openai.pool]
workers = 4
queue_capacity = 10
queue_policy = "block"
queue_wait_ms_max = 500
request_timeout_ms = 30000
cores = [3]
worker_stack_kb = 512

[aliases]
"gpt-4o-mini" = "mock/gpt-4o-mini"
"best" = "openai/gpt-4o"
"#
        );
        let env = [
            ("DEEPINTSHIELD_CLIENT_KEY", "client-1"),
            ("DEEPINTSHIELD_ADMIN_TOKEN", "admin-1"),
            ("OPENAI_API_KEY", "sk-one"),
            ("OPENAI_API_KEY_2", "sk-two"),
        ];
        let c = check_with(&text, &env, Some(CORES)).unwrap();
        std::fs::remove_file(&ca).unwrap();
        let s = &c.server;
        assert_eq!(s.listen.to_string(), "0.0.0.0:8081");
        assert_eq!(s.admin_listen.to_string(), "[::1]:9091");
        assert_eq!(
            (s.threads, s.cores.clone()),
            (2, vec![1, 2]),
            "threads 0 = one per listed core"
        );
        assert_eq!(s.limits.coroutine_stack_bytes, 128 * 1024);
        assert_eq!(
            (s.limits.header_lines_max, s.limits.header_bytes_max),
            (50, 16384)
        );
        assert_eq!(s.limits.body_bytes_max, 1048576);
        assert_eq!(s.limits.header_read_timeout, Duration::from_millis(1000));
        assert_eq!(s.limits.idle_timeout, Duration::from_millis(2000));
        assert_eq!(s.limits.body_read_timeout, Duration::from_millis(3000));
        assert_eq!(s.limits.write_timeout, Duration::from_millis(4000));
        assert_eq!(s.limits.body_timeout, Duration::from_millis(3500));
        assert_eq!(s.limits.connections_max, 1000);
        assert_eq!(s.limits.body_buffer_bytes_max, 8 * 1024 * 1024);
        assert_eq!(s.shutdown_timeout, Duration::from_millis(5000));
        assert_eq!(s.json_depth_max, 32);
        assert_eq!(s.client_keys[0].sha256, sha256(b"client-1"));
        assert_eq!(
            s.admin_token.as_ref().map(|t| t.sha256),
            Some(sha256(b"admin-1"))
        );
        assert_eq!(c.stats.stdout_interval, None);
        assert_eq!(c.stats.objpool_hit_ratio_warn, 0.5);
        assert_eq!((c.objpools.buffers, c.objpools.buffers_prefill), (64, 64));
        assert_eq!(c.objpools.buffer_retain_bytes_max, 65536);
        assert_eq!(c.providers["mock"].mock.latency, Duration::from_millis(7));
        let p = &c.providers["openai"];
        assert_eq!(p.kind, ProviderType::OpenAi);
        assert_eq!(p.base_url, "https://api.openai.com/v1");
        assert_eq!(p.models, ["gpt-4o", "gpt-4o-mini"]);
        assert_eq!(
            p.headers,
            [("OpenAI-Organization".to_string(), "org-x".to_string())]
        );
        assert_eq!(p.connect_timeout, Duration::from_millis(2500));
        assert_eq!(p.stream_idle_timeout, Duration::from_secs(90));
        assert_eq!(p.stream_duration_max, Duration::from_secs(7200));
        assert_eq!(p.ca_file.as_deref(), Some(ca.as_path()));
        assert_eq!(p.keys.len(), 2);
        assert_eq!((p.keys[0].secret.expose(), p.keys[0].weight), ("sk-one", 3));
        assert_eq!(p.keys[0].models, ["gpt-4o"]);
        assert_eq!((p.keys[1].secret.expose(), p.keys[1].weight), ("sk-two", 1));
        let pool = &p.pool;
        assert_eq!((pool.workers, pool.queue_capacity), (4, 10));
        assert_eq!(pool.queue_policy, QueuePolicy::Block);
        assert_eq!(pool.queue_wait_max, Duration::from_millis(500));
        assert_eq!(pool.request_timeout, Duration::from_secs(30));
        assert_eq!(
            (pool.cores.clone(), pool.worker_stack_bytes),
            (vec![3], 512 * 1024)
        );
        assert_eq!(c.aliases["best"], "openai/gpt-4o");
        assert_eq!(c.aliases["gpt-4o-mini"], "mock/gpt-4o-mini");
    }

    #[test]
    fn shipped_config_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/deepintshield.toml");
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let mock = &c.providers["mock"];
        assert_eq!(mock.kind, ProviderType::Mock);
        assert_eq!(c.aliases["gpt-4o-mini"], "mock/gpt-4o-mini");
        assert_eq!(c.aliases["gpt-4o"], "mock/gpt-4o");
        assert_eq!(
            c.providers.len(),
            1,
            "only the mock runs without an API key"
        );
    }

    #[test]
    fn shipped_config_examples_validate_when_uncommented() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/deepintshield.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let is_setting = |rest: &str| {
            let key = rest.split(" = ").next().unwrap_or("");
            rest.starts_with("[providers.")
                || (rest.contains(" = ")
                    && key != "ca_file"
                    && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        };
        let uncommented: String = text
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if is_setting(rest) => rest,
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            uncommented.contains("\n[providers.ollama]\n"),
            "{uncommented}"
        );
        // The Vertex example's key file: a throwaway service account made for the test.
        let key_file = test_service_account("shipped-example");
        let uncommented = uncommented.replace(
            "file:/etc/deepintshield/vertex-sa.json",
            &format!("file:{}", key_file.display()),
        );
        let env = [
            ("OPENAI_API_KEY", "sk-o"),
            ("OLLAMA_API_KEY", "ollama"),
            ("ANTHROPIC_API_KEY", "sk-ant"),
            ("AZURE_OPENAI_API_KEY", "az-key"),
            ("GROQ_API_KEY", "gsk"),
            ("MISTRAL_API_KEY", "mk"),
            ("OPENROUTER_API_KEY", "sk-or"),
            ("GEMINI_API_KEY", "gem-key"),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "aws-secret"),
        ];
        let c = check_with(&uncommented, &env, Some(CORES)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.providers["bedrock"].kind, ProviderType::Bedrock);
        assert_eq!(
            c.providers["bedrock"].base_url,
            "https://bedrock-runtime.us-east-1.amazonaws.com"
        );
        assert_eq!(c.providers["openai"].base_url, "https://api.openai.com/v1");
        assert_eq!(
            c.providers["anthropic"].base_url,
            "https://api.anthropic.com"
        );
        assert_eq!(c.providers["anthropic"].kind, ProviderType::Anthropic);
        assert_eq!(c.providers["ollama"].base_url, "http://127.0.0.1:11434/v1");
        assert_eq!(c.providers["openai"].pool.queue_policy, QueuePolicy::Block);
        assert!(c.providers["ollama"].keys.is_empty());
        let azure = c.providers["azure"].azure.as_ref().unwrap();
        assert_eq!(azure.deployment("gpt-4o"), "my-gpt4o-deployment");
        assert_eq!(
            c.providers["groq"].base_url,
            "https://api.groq.com/openai/v1"
        );
        assert_eq!(c.providers["openrouter"].headers.len(), 2);
        assert_eq!(
            c.providers["gemini"].base_url,
            "https://generativelanguage.googleapis.com/v1beta"
        );
        let vertex = &c.providers["vertex"];
        assert_eq!(
            vertex.base_url,
            "https://us-central1-aiplatform.googleapis.com/v1"
        );
        let v = vertex.vertex.as_ref().unwrap();
        assert_eq!(
            (v.project.as_str(), v.token_uri.as_str()),
            ("my-project", VERTEX_TOKEN_URI_DEFAULT)
        );
        assert_eq!(
            v.account.client_email,
            "shipped-example@p.iam.gserviceaccount.com"
        );
        assert_eq!(vertex.keys.len(), 1, "the service account is the one key");
    }

    /// A service-account key file with a fresh RSA key (`openssl genpkey`), in the temp dir.
    fn test_service_account(name: &str) -> PathBuf {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
            .expect("openssl (Debian package openssl) makes the test's throwaway key");
        assert!(out.status.success());
        let key = String::from_utf8(out.stdout).unwrap();
        let json = serde_json::json!({
            "type": "service_account",
            "client_email": format!("{name}@p.iam.gserviceaccount.com"),
            "private_key_id": "k1",
            "private_key": key,
        });
        let path = std::env::temp_dir().join(format!("{name}-{}.json", std::process::id()));
        std::fs::write(&path, json.to_string()).unwrap();
        path
    }

    #[test]
    fn vertex_tables_are_checked() {
        let key_file = test_service_account("vertex-table");
        let base = "[providers.v]\ntype = \"vertex\"\n[providers.v.vertex]\n";
        let ok = format!(
            "{base}project = \"p\"\nlocation = \"global\"\ncredentials_file = \"file:{}\"\ntoken_uri = \"http://127.0.0.1:9/token\"\n",
            key_file.display()
        );
        let c = check_with(&ok, &[], Some(CORES)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.providers["v"].base_url,
            "https://aiplatform.googleapis.com/v1"
        );
        let v = c.providers["v"].vertex.as_ref().unwrap();
        assert_eq!(v.token_uri, "http://127.0.0.1:9/token");
        assert_eq!(v.account.private_key_id.as_deref(), Some("k1"));
        assert_eq!(format!("{:?}", v.account.private_key), "***");
        let e = err(&format!(
            "{base}project = \"P!\"\nlocation = \"us central\"\ncredentials_file = \"/no/prefix\"\n"
        ));
        assert!(
            e.contains("providers.v.vertex.project: \"P!\" is not a valid name"),
            "{e}"
        );
        assert!(e.contains("providers.v.vertex.location: "), "{e}");
        assert!(
            e.contains("providers.v.vertex.credentials_file: expected \"file:PATH\""),
            "{e}"
        );
        let e = err(&format!(
            "{base}project = \"p\"\nlocation = \"l\"\ncredentials_file = \"file:/nonexistent/sa.json\"\n"
        ));
        assert!(e.contains("cannot read \"/nonexistent/sa.json\""), "{e}");
        let e = err(&format!("{MOCK}[providers.mock.vertex]\nproject = \"p\"\n"));
        assert!(
            e.contains("providers.mock.vertex: only for type \"vertex\""),
            "{e}"
        );
        let e = err("[providers.g]\ntype = \"gemini\"\n");
        assert!(
            e.contains("providers.g.keys: required for type \"gemini\""),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_are_named_with_line_and_column() {
        let e = err(&format!("{MOCK}bogus = 1\n"));
        assert!(e.contains("unknown field `bogus`"), "{e}");
        assert!(e.starts_with("test.toml:"), "{e}");
        let e = err("[sever]\nlisten = \"x\"\n");
        assert!(
            e.starts_with("test.toml:1:") && e.contains("unknown field `sever`"),
            "{e}"
        );
        let e = err(&format!("{MOCK}[providers.mock.pool]\nworkrs = 4\n"));
        assert!(
            e.starts_with("test.toml:4:1: ") && e.contains("unknown field `workrs`"),
            "{e}"
        );
        let e = err(&format!(
            "{MOCK}keys = [{{ key = \"env:X\", wieght = 2 }}]\n"
        ));
        assert!(
            e.starts_with("test.toml:3:") && e.contains("unknown field `wieght`"),
            "{e}"
        );
        let e = err("[server]\nthreads = \"four\"\n");
        assert!(
            e.starts_with("test.toml:2:11: ") && e.contains("invalid type"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_are_named_by_key_path() {
        let cases = [
            (
                "[server]\nlisten = \"x\"\n",
                "test.toml: server.listen: invalid socket address \"x\"",
            ),
            (
                "[providers.mock.pool]\nqueue_policy = \"dorp\"\n",
                "providers.mock.pool.queue_policy: expected one of \"drop\", \"error\", \"block\"",
            ),
            (
                "[providers.mock.pool]\nworkers = 0\n",
                "providers.mock.pool.workers: 0 is out of range 1..=16384",
            ),
            (
                "[providers.mock.pool]\nworker_stack_kb = 64\n",
                "providers.mock.pool.worker_stack_kb: 64 is out of range 256..=65536",
            ),
            (
                "[providers.mock.pool]\nqueue_capacity = 0\n",
                "providers.mock.pool.queue_capacity: 0 is out",
            ),
            (
                "[providers.mock.pool]\nqueue_wait_ms_max = 5000\nrequest_timeout_ms = 1000\n",
                "providers.mock.pool.queue_wait_ms_max: 5000 ms is more than request_timeout_ms",
            ),
            (
                "[server]\ncoroutine_stack_kb = 32\n",
                "server.coroutine_stack_kb: 32 is out of range 64..=",
            ),
            (
                "[server]\njson_depth_max = 129\n",
                "server.json_depth_max: 129 is out of range 1..=128",
            ),
            (
                "[server]\nidle_timeout_ms = 0\n",
                "server.idle_timeout_ms: 0 is out of range",
            ),
            (
                "[server]\nbody_timeout_ms = 0\n",
                "server.body_timeout_ms: 0 is out of range",
            ),
            (
                "[server]\nconnections_max = 0\n",
                "server.connections_max: 0 is out of range 1..=1048576",
            ),
            (
                "[server]\nbody_bytes_max = 2048\nbody_buffer_bytes_max = 1024\n",
                "server.body_buffer_bytes_max: 1024 is less than server.body_bytes_max (2048)",
            ),
            (
                "[server]\nadmin_listen = \"127.0.0.1:8080\"\n",
                "server.admin_listen: same address",
            ),
            (
                "[stats]\nstdout_interval_ms = 5\n",
                "stats.stdout_interval_ms: 5 is out of range 100..=",
            ),
            (
                "[stats]\nobjpool_hit_ratio_warn = 1.5\n",
                "stats.objpool_hit_ratio_warn: 1.5 is out",
            ),
            (
                "[objpools]\nbuffers = 8\nbuffers_prefill = 9\n",
                "objpools.buffers_prefill: 9 is more than",
            ),
            (
                "[providers.mock]\ntype = \"mock\"\nmodels = [\"a\", \"a\"]\n",
                "providers.mock.models[1]: model \"a\" is listed twice",
            ),
            (
                "[providers.mock]\ntype = \"mock\"\nmodels = [\"a b\"]\n",
                "providers.mock.models[0]: model names are",
            ),
            (
                "[providers.mock]\ntype = \"mock\"\nstream_duration_ms_max = 0\n",
                "providers.mock.stream_duration_ms_max: 0 is out of range 1..=86400000",
            ),
            (
                "[providers.Mock]\ntype = \"mock\"\n",
                "providers.\"Mock\": provider names are",
            ),
            (
                "[providers.x]\ntype = \"bedrock2\"\n",
                "providers.x.type: expected one of \"mock\", \"openai\", \"anthropic\", \"azure\", \"gemini\", \"vertex\", \"bedrock\" (found \"bedrock2\")",
            ),
            (
                "[providers.x]\n",
                "providers.x.type: expected one of \"mock\", \"openai\", \"anthropic\", \"azure\", \"gemini\", \"vertex\", \"bedrock\" (missing)",
            ),
        ];
        for (text, expected) in cases {
            let text = if text.contains("[providers.") && !text.contains("pool]") {
                text.to_string()
            } else {
                format!("{MOCK}{text}")
            };
            let e = err(&text);
            assert!(e.contains(expected), "expected {expected:?} in {e:?}");
            assert_eq!(e.lines().count(), 1, "one problem, one line: {e}");
        }
    }

    #[test]
    fn all_errors_are_reported_at_once() {
        let text = "[server]\nlisten = \"x\"\n[providers.mock]\ntype = \"mock\"\n[providers.mock.pool]\nworkers = 0\n";
        let e = err(text);
        assert!(
            e.contains("server.listen") && e.contains("providers.mock.pool.workers"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 2);
    }

    #[test]
    fn at_least_one_provider() {
        assert!(err("").contains("test.toml: providers: at least one provider is required"));
        assert!(err("[providers]\n").contains("providers: at least one provider is required"));
    }

    #[test]
    fn key_refusal_settings() {
        let env = [("K", "sk-k")];
        let base = "[providers.o]\ntype = \"openai\"\nbase_url = \"https://h/v1\"\nkeys = [{ key = \"env:K\" }]\n";
        let c = check_with(base, &env, Some(CORES)).unwrap_or_else(|e| panic!("{e}"));
        let r = &c.providers["o"].retry;
        assert_eq!(r.rate_limit_cooldown_max, Duration::from_secs(60));
        assert_eq!(r.key_disable, Duration::from_secs(300));
        assert_eq!(c.providers["o"].health.path, "/models");
        let text = format!(
            "{base}rate_limit_cooldown_ms_max = 5000\nkey_disable_ms = 1000\n[providers.o.health]\npath = \"/v2/models\"\n"
        );
        let c = check_with(&text, &env, Some(CORES)).unwrap_or_else(|e| panic!("{e}"));
        let p = &c.providers["o"];
        assert_eq!(p.retry.rate_limit_cooldown_max, Duration::from_secs(5));
        assert_eq!(p.retry.key_disable, Duration::from_secs(1));
        assert_eq!(
            (&p.health.check, p.health.path.as_str()),
            (&HealthCheck::None, "/v2/models")
        );
        for (setting, problem) in [
            (
                "rate_limit_cooldown_ms_default = 2000\nrate_limit_cooldown_ms_max = 1000",
                "rate_limit_cooldown_ms_max: must be at least rate_limit_cooldown_ms_default",
            ),
            (
                "rate_limit_cooldown_ms_max = 0",
                "rate_limit_cooldown_ms_max: 0 is out of range",
            ),
            ("key_disable_ms = 0", "key_disable_ms: 0 is out of range"),
            (
                "key_disable_ms = 3600001",
                "key_disable_ms: 3600001 is out of range",
            ),
        ] {
            let e = err_with(&format!("{base}{setting}\n"), &env);
            assert!(e.contains(&format!("providers.o.{problem}")), "{e}");
        }
    }

    #[test]
    fn openai_needs_base_url_and_keys() {
        let e = err("[providers.openai]\ntype = \"openai\"\n");
        assert!(
            e.contains("providers.openai.base_url: required for type \"openai\""),
            "{e}"
        );
        assert!(
            e.contains("providers.openai.keys: required for type \"openai\""),
            "{e}"
        );
        let env = [("K", "sk-k")];
        let base = "[providers.o]\ntype = \"openai\"\nkeys = [{ key = \"env:K\" }]\n";
        for (url, problem) in [
            ("ftp://x", "must start with"),
            ("https://", "has no host"),
            ("https://u:p@host/v1", "must not hold credentials"),
            ("https://host/v1?x=1", "query or fragment"),
            ("https://host /v1", "visible ASCII"),
        ] {
            let e = err_with(&format!("{base}base_url = {url:?}\n"), &env);
            assert!(
                e.contains("providers.o.base_url: ") && e.contains(problem),
                "{url}: {e}"
            );
            assert!(
                !e.contains(url) && !e.contains("u:p"),
                "the URL is not repeated: {e}"
            );
        }
        let ok = format!("{base}base_url = \"http://127.0.0.1:11434/v1//\"\n");
        let c = check_with(&ok, &env, Some(CORES)).unwrap();
        assert_eq!(c.providers["o"].base_url, "http://127.0.0.1:11434/v1");
        let text = "[providers.o]\ntype = \"openai\"\nbase_url = \"http://h\"\nkeys = []\n";
        assert!(err(text).contains("providers.o.keys: required for type \"openai\""));
    }

    #[test]
    fn mock_allows_but_ignores_base_url_and_takes_optional_keys() {
        let text =
            format!("{MOCK}base_url = \"not a url\"\nkeys = [{{ key = \"env:K\", weight = 2 }}]\n");
        let c = check_with(&text, &[("K", "sk-mock")], Some(CORES)).unwrap();
        let p = &c.providers["mock"];
        assert_eq!(p.keys[0].secret.expose(), "sk-mock");
        assert_eq!(p.keys[0].weight, 2);
        let e = err(&format!("{MOCK}keys = [{{ weight = 2 }}]\n"));
        assert!(e.contains("providers.mock.keys[0].key: missing"), "{e}");
        let e = err(&format!(
            "{MOCK}keys = [{{ key = \"env:K\", weight = 0 }}]\n"
        ));
        assert!(
            e.contains("providers.mock.keys[0].weight: 0 is out of range"),
            "{e}"
        );
    }

    #[test]
    fn literal_secrets_are_rejected() {
        let e = err("[server]\nclient_keys = [\"sk-literal-4711\"]\n");
        assert!(
            e.contains("server.client_keys[0]: literal secrets are not allowed"),
            "{e}"
        );
        assert!(e.contains("env:VAR") && e.contains("file:PATH"), "{e}");
        assert!(!e.contains("sk-literal-4711"), "{e}");
    }

    #[test]
    fn env_secrets_must_be_set_and_non_empty() {
        let text = format!("{MOCK}keys = [{{ key = \"env:DIS_UNSET_4711\" }}]\n");
        let e = err(&text);
        assert!(
            e.contains(
                "providers.mock.keys[0].key: environment variable DIS_UNSET_4711 is not set"
            ),
            "{e}"
        );
        let e = err_with(&text, &[("DIS_UNSET_4711", "")]);
        assert!(
            e.contains("environment variable DIS_UNSET_4711 is empty"),
            "{e}"
        );
        let e = err(&format!("{MOCK}keys = [{{ key = \"env:\" }}]\n"));
        assert!(
            e.contains("\"env:\" must be followed by a variable name"),
            "{e}"
        );
    }

    #[test]
    fn file_secrets_are_read_and_trimmed() {
        let good = temp_file("secret-good", "sk-from-file\r\n");
        let empty = temp_file("secret-empty", "\n");
        let text = |p: &Path| format!("[server]\nclient_keys = [\"file:{}\"]\n{MOCK}", p.display());
        let c = check(&text(&good)).unwrap();
        assert_eq!(c.server.client_keys[0].sha256, sha256(b"sk-from-file"));
        let e = err(&text(&empty));
        assert!(
            e.contains("server.client_keys[0]: secret file") && e.contains("is empty"),
            "{e}"
        );
        let missing = std::env::temp_dir().join("deepintshield-config-no-such-file");
        let e = err(&text(&missing));
        assert!(
            e.contains("server.client_keys[0]: cannot read secret file"),
            "{e}"
        );
        assert!(e.contains("deepintshield-config-no-such-file"), "{e}");
        std::fs::remove_file(good).unwrap();
        std::fs::remove_file(empty).unwrap();
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let secret = temp_file("secret-relative", "sk-relative\n");
        let name = secret.file_name().unwrap().to_str().unwrap();
        let text = format!("[server]\nclient_keys = [\"file:{name}\"]\n{MOCK}");
        let at = std::env::temp_dir().join("deepintshield.toml");
        let c = parse(&text, &at, &|_| None, Some(CORES)).unwrap();
        assert_eq!(c.server.client_keys[0].sha256, sha256(b"sk-relative"));
        std::fs::remove_file(secret).unwrap();
    }

    /// A self-signed certificate, PEM.
    fn ca_pem() -> String {
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .unwrap()
            .cert
            .pem()
    }

    /// A FIFO under the temp dir (nobody ever opens it for writing).
    fn temp_fifo(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "deepintshield-config-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        path
    }

    #[test]
    fn ca_file_must_hold_usable_certificates() {
        let good = temp_file("ca-good.pem", &ca_pem());
        let text = |p: &Path| format!("{MOCK}ca_file = {:?}\n", p.display().to_string());
        assert!(check(&text(&good)).is_ok());
        let cases = [
            ("ca-text.pem", "not a certificate\n".to_string(), "no certificate found"),
            (
                "ca-key.pem",
                "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n"
                    .to_string(),
                "no certificate found",
            ),
            (
                "ca-garbage.pem",
                "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n".to_string(),
                "certificate 1 of the file is not usable",
            ),
        ];
        for (name, contents, why) in cases {
            let bad = temp_file(name, &contents);
            let e = err(&text(&bad));
            assert!(
                e.contains("providers.mock.ca_file: cannot read") && e.contains(why),
                "{e}"
            );
            std::fs::remove_file(bad).unwrap();
        }
        let e = err(&text(&std::env::temp_dir()));
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::remove_file(good).unwrap();
    }

    #[test]
    fn fifos_and_devices_are_refused_without_blocking() {
        let fifo = temp_fifo("secret-fifo");
        let text = |p: &Path| format!("[server]\nclient_keys = [\"file:{}\"]\n{MOCK}", p.display());
        for path in [fifo.as_path(), Path::new("/dev/zero")] {
            let e = err(&text(path));
            assert!(
                e.contains("server.client_keys[0]: cannot read secret file")
                    && e.contains("not a regular file"),
                "{e}"
            );
        }
        let e = err(&format!(
            "{MOCK}ca_file = {:?}\n",
            fifo.display().to_string()
        ));
        assert!(e.contains("not a regular file"), "{e}");
        let e = Config::load(&fifo).unwrap_err().to_string();
        assert!(e.contains("cannot read: not a regular file"), "{e}");
        std::fs::remove_file(fifo).unwrap();
    }

    #[test]
    fn start_up_memory_is_bounded() {
        let e = err(&format!(
            "[objpools]\nbuffers = 65536\nbuffers_prefill = 1048576\n{MOCK}"
        ));
        assert!(
            e.contains("objpools.buffers_prefill: 1048576 is out of range 0..=16384")
                && e.contains("(8.0 GiB for 1048576)"),
            "{e}"
        );
        let e = err(&format!("[objpools]\nbuffers = 1048576\n{MOCK}"));
        assert!(
            e.contains("objpools.buffers: 1048576 is out of range 1..=65536"),
            "{e}"
        );
        let e = err(&format!(
            "[objpools]\nbuffers = 65536\nbuffer_retain_bytes_max = 16777216\n{MOCK}"
        ));
        assert!(
            e.contains("objpools.buffer_retain_bytes_max: objpools.buffers (65536) x")
                && e.contains("= 1024.0 GiB that idle buffers may keep, more than 8.0 GiB"),
            "{e}"
        );
        // Each pool within its ranges, all of them together past the totals.
        let pool = |name: &str, extra: &str| {
            format!("[providers.{name}]\ntype = \"mock\"\n[providers.{name}.pool]\n{extra}\n")
        };
        let threads: String = (0..3)
            .map(|i| pool(&format!("p{i}"), "workers = 16384"))
            .collect();
        let e = err(&threads);
        assert!(
            e.contains("providers: the pools' workers_max add up to 49152 worker threads"),
            "{e}"
        );
        let stacks = pool("big", "workers = 4096\nworker_stack_kb = 16384");
        let e = err(&stacks);
        assert!(
            e.contains("add up to 64.0 GiB of worker stacks, more than 32.0 GiB"),
            "{e}"
        );
        let queues: String = (0..3)
            .map(|i| pool(&format!("q{i}"), "queue_capacity = 1000000"))
            .collect();
        let e = err(&queues);
        assert!(
            e.contains("queue_capacity add up to 3000000 slots (366 MiB allocated at start)"),
            "{e}"
        );
        assert!(check(&pool("ok", "workers = 16384\nqueue_capacity = 1000000")).is_ok());
    }

    #[test]
    fn missing_ca_file_is_an_error() {
        let e = err(&format!(
            "{MOCK}ca_file = \"/nonexistent/deepintshield/roots.pem\"\n"
        ));
        assert!(
            e.contains(
                "providers.mock.ca_file: cannot read \"/nonexistent/deepintshield/roots.pem\""
            ),
            "{e}"
        );
    }

    #[test]
    fn cores_must_exist() {
        let e = err(&format!("[server]\ncores = [0, 7]\n{MOCK}"));
        assert!(
            e.contains("server.cores[1]: core 7 does not exist on this machine (cores: 0-3)"),
            "{e}"
        );
        let e = err(&format!(
            "{MOCK}[providers.mock.pool]\ncores = [2, 2, 99]\n"
        ));
        assert!(
            e.contains("providers.mock.pool.cores[1]: core 2 is listed twice"),
            "{e}"
        );
        assert!(
            e.contains("providers.mock.pool.cores[2]: core 99 does not exist"),
            "{e}"
        );
        let e = check_with(&format!("[server]\ncores = [0]\n{MOCK}"), &[], None).unwrap_err();
        assert!(
            e.0.contains("server.cores: this machine's cores cannot be listed"),
            "{e}"
        );
        // Against the real machine: no machine has a core 1_000_000.
        let real = Config::from_toml_str(
            &format!("[server]\ncores = [1000000]\n{MOCK}"),
            Path::new("t.toml"),
        );
        assert!(real
            .unwrap_err()
            .0
            .contains("server.cores[0]: core 1000000 does not exist"));
        assert_eq!(core_ranges(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    }

    #[test]
    fn aliases_point_at_configured_providers_and_models() {
        let e = err(&format!("{MOCK}[aliases]\n\"gpt-4o\" = \"nope/gpt-4o\"\n"));
        assert!(
            e.contains("test.toml: aliases.\"gpt-4o\": provider \"nope\" is not configured"),
            "{e}"
        );
        let e = err(&format!("{MOCK}[aliases]\n\"x\" = \"gpt-4o\"\n"));
        assert!(
            e.contains("aliases.\"x\": expected \"provider/model\""),
            "{e}"
        );
        let text =
            "[providers.mock]\ntype = \"mock\"\nmodels = [\"a\"]\n[aliases]\nb = \"mock/b\"\n";
        let e = err(text);
        assert!(
            e.contains("aliases.\"b\": model \"b\" is not in providers.mock.models"),
            "{e}"
        );
        let c = check(&format!("{MOCK}[aliases]\nbig = \"mock/org/model-x\"\n")).unwrap();
        assert_eq!(c.aliases["big"], "mock/org/model-x");
    }

    #[test]
    fn headers_are_checked() {
        let c = check(&format!("{MOCK}headers = {{ \"X-Team\" = \"a b\" }}\n")).unwrap();
        assert_eq!(
            c.providers["mock"].headers,
            [("X-Team".to_string(), "a b".to_string())]
        );
        for (header, problem) in [
            ("Authorization", "credentials belong in keys"),
            ("host", "the gateway sets it"),
            ("Content-Length", "the gateway sets it"),
            ("Bad Name", "not a valid header name"),
        ] {
            let e = err(&format!("{MOCK}headers = {{ {header:?} = \"v\" }}\n"));
            let at = format!("providers.mock.headers.{header:?}: ");
            assert!(e.contains(&at) && e.contains(problem), "{header}: {e}");
        }
        let e = err(&format!(
            "{MOCK}headers = {{ \"X-A\" = \"secret\\u0001value\" }}\n"
        ));
        assert!(e.contains("value hidden") && !e.contains("secret"), "{e}");
        let e = err(&format!(
            "{MOCK}headers = {{ \"X-A\" = \"1\", \"x-a\" = \"2\" }}\n"
        ));
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn no_error_message_holds_a_secret() {
        // Real environment: unique names, so no other test reads or writes them.
        let value = "sk-DISTINCTIVE-7c1f0e9a";
        std::env::set_var("DEEPINTSHIELD_TEST_SECRET_7C1F", value);
        std::env::set_var(
            "DEEPINTSHIELD_TEST_SPACED_7C1F",
            "sk-DISTINCTIVE with space",
        );
        let around = format!(
            "[server]\nlisten = \"x\"\nclient_keys = [\"env:DEEPINTSHIELD_TEST_SECRET_7C1F\", \
             \"env:DEEPINTSHIELD_TEST_SPACED_7C1F\"]\n\
             [providers.openai]\ntype = \"openai\"\nbase_url = \"https://{value}@h\"\n\
             keys = [{{ key = \"env:DEEPINTSHIELD_TEST_SECRET_7C1F\", weight = 0 }}]\n\
             headers = {{ \"Authorization\" = \"Bearer {value}\", \"X-Key\" = \"{value}\\n\" }}\n\
             [providers.openai.pool]\nworkers = 0\n\
             [aliases]\nx = \"nope/y\"\n"
        );
        let from_env = Config::from_toml_str(&around, Path::new("t.toml"))
            .unwrap_err()
            .0;
        assert!(
            from_env.contains("DEEPINTSHIELD_TEST_SPACED_7C1F holds spaces"),
            "{from_env}"
        );
        assert!(from_env.lines().count() >= 7, "{from_env}");
        let bad_file = temp_file("secret-bad", "sk-DISTINCTIVE\nsecond line\n");
        let literal = "sk-DISTINCTIVE-literal";
        let texts = [
            format!("{MOCK}keys = [\"{literal}\"]\n"),
            format!("{MOCK}keys = \"{literal}\"\n"),
            format!("{MOCK}keys = [{{ key = \"{literal}\", wieght = 1 }}]\n"),
            format!("{MOCK}keys = [{{ key = \"{literal}\" }}]\n"),
            format!("[server]\nclient_keys = \"{literal}\"\n"),
            format!("[server]\nclient_keys = [\"{literal}\", 5]\n"),
            format!(
                "[server]\nclient_keys = [\"file:{}\"]\n{MOCK}",
                bad_file.display()
            ),
        ];
        let mut messages = vec![from_env];
        messages.extend(texts.iter().map(|t| {
            Config::from_toml_str(t, Path::new("t.toml"))
                .expect_err(t)
                .0
        }));
        std::fs::remove_file(bad_file).unwrap();
        for m in &messages {
            assert!(!m.contains("DISTINCTIVE"), "secret leaked: {m}");
        }
        // A valid config with secrets prints none of them.
        let ok = format!("{MOCK}keys = [{{ key = \"env:DEEPINTSHIELD_TEST_SECRET_7C1F\" }}]\n");
        let c = Config::from_toml_str(&ok, Path::new("t.toml")).unwrap();
        assert_eq!(c.providers["mock"].keys[0].secret.expose(), value);
        assert!(!format!("{c:?}").contains(value));
        let secret = &c.providers["mock"].keys[0].secret;
        assert_eq!(
            (secret.to_string(), format!("{secret:?}")),
            ("***".to_string(), "***".to_string())
        );
    }

    #[test]
    fn hide_strings_hides_each_string_value() {
        let m = r#"invalid type: string "a\"b", expected x; string "c" end"#;
        assert_eq!(
            hide_strings(m),
            "invalid type: string (value hidden), expected x; string (value hidden) end"
        );
        assert_eq!(
            hide_strings("string \"unterminated"),
            "string (value hidden)"
        );
        assert_eq!(hide_strings("no strings"), "no strings");
    }

    #[test]
    fn load_names_an_unreadable_file() {
        let e = Config::load(Path::new("/nonexistent/deepintshield.toml")).unwrap_err();
        assert!(
            e.0.starts_with("/nonexistent/deepintshield.toml: cannot read: "),
            "{e}"
        );
    }

    #[test]
    fn log_section() {
        let c = check(MOCK).unwrap();
        assert_eq!(c.log.level, LOG_LEVEL_DEFAULT);
        assert_eq!(c.log.access, LOG_ACCESS_DEFAULT);
        let c = check(&format!("[log]\nlevel = \"debug\"\naccess = false\n{MOCK}")).unwrap();
        assert_eq!(c.log.level, Level::Debug);
        assert!(!c.log.access);
        let e = err(&format!("[log]\nlevel = \"loud\"\n{MOCK}"));
        assert!(e.contains("log.level") && e.contains("\"loud\""), "{e}");
        let e = err(&format!("[log]\nformat = \"json\"\n{MOCK}"));
        assert!(e.contains("format"), "{e}");
    }

    #[test]
    fn presets_fill_what_the_table_leaves_out() {
        let env = [("K", "sk-k")];
        let text = "[providers.m]\ntype = \"openai\"\npreset = \"mistral\"\nkeys = [{ key = \"env:K\" }]\n";
        let c = check_with(text, &env, Some(CORES)).unwrap();
        let p = &c.providers["m"];
        assert_eq!(p.preset, Some(Preset::Mistral));
        assert_eq!(p.base_url, "https://api.mistral.ai/v1");
        let t = p.translation;
        assert_eq!(t.max_tokens_field, MaxTokensField::MaxTokens);
        assert_eq!(t.tool_call_id_format, ToolCallIdFormat::Alphanumeric9);
        assert!(!t.stream_usage && t.tools_supported && t.parallel_tool_calls_supported);
        // Every value the preset sets can be overridden.
        let text = format!(
            "{text}base_url = \"http://127.0.0.1:9/v1\"\nmax_tokens_field = \"max_completion_tokens\"\n\
             stream_usage = true\ntool_call_id_format = \"any\"\n"
        );
        let p = check_with(&text, &env, Some(CORES)).unwrap().providers["m"].clone();
        assert_eq!(p.base_url, "http://127.0.0.1:9/v1");
        assert_eq!(
            p.translation.max_tokens_field,
            MaxTokensField::MaxCompletionTokens
        );
        assert_eq!(p.translation.tool_call_id_format, ToolCallIdFormat::Any);
        assert!(p.translation.stream_usage);
        // Local servers need no key; hosted services do.
        let c = check("[providers.o]\ntype = \"openai\"\npreset = \"ollama\"\n").unwrap();
        assert_eq!(c.providers["o"].base_url, "http://127.0.0.1:11434/v1");
        assert!(c.providers["o"].keys.is_empty());
        let e = err("[providers.g]\ntype = \"openai\"\npreset = \"groq\"\n");
        assert!(e.contains("providers.g.keys: required"), "{e}");
        let t = check("[providers.p]\ntype = \"openai\"\npreset = \"perplexity\"\nkeys = [{ key = \"env:K\" }]\n");
        assert!(t.is_err());
        let p = check_with(
            "[providers.p]\ntype = \"openai\"\npreset = \"perplexity\"\nkeys = [{ key = \"env:K\" }]\n",
            &env,
            Some(CORES),
        )
        .unwrap();
        assert!(!p.providers["p"].translation.tools_supported);
        let e = err("[providers.x]\ntype = \"openai\"\npreset = \"nope\"\n");
        assert!(
            e.contains("providers.x.preset: expected one of \"groq\""),
            "{e}"
        );
        let e = err("[providers.x]\ntype = \"anthropic\"\npreset = \"groq\"\n");
        assert!(
            e.contains("providers.x.preset: only used with type = \"openai\""),
            "{e}"
        );
        let e = err(&format!("{MOCK}tool_call_id_format = \"short\"\n"));
        assert!(
            e.contains("providers.mock.tool_call_id_format: expected one of"),
            "{e}"
        );
    }

    #[test]
    fn azure_with_a_key_or_entra() {
        let env = [
            ("AZ", "az-key-1234"),
            ("TENANT", "contoso.onmicrosoft.com"),
            ("CLIENT", "client-1"),
            ("SECRET", "entra-secret-value"),
        ];
        let base = "[providers.az]\ntype = \"azure\"\n";
        let text = format!(
            "{base}keys = [{{ key = \"env:AZ\" }}]\n[providers.az.azure]\n\
             endpoint = \"https://res.openai.azure.com/\"\ndeployments = {{ \"gpt-4o\" = \"prod-4o\" }}\n"
        );
        let p = check_with(&text, &env, Some(CORES)).unwrap().providers["az"].clone();
        let a = p.azure.as_ref().unwrap();
        assert_eq!(
            (p.kind, p.base_url.as_str()),
            (ProviderType::Azure, "https://res.openai.azure.com")
        );
        assert_eq!(a.api_style, AzureApiStyle::Deployments);
        assert_eq!(a.api_version.as_deref(), Some(AZURE_API_VERSION_DEFAULT));
        assert_eq!(a.responses_api_version, AZURE_RESPONSES_API_VERSION_DEFAULT);
        assert!(
            p.responses,
            "Azure has the Responses API unless told otherwise"
        );
        assert_eq!(
            (a.deployment("gpt-4o"), a.deployment("o3")),
            ("prod-4o", "o3")
        );
        assert!(matches!(a.auth, AzureAuth::ApiKey));
        let off = format!(
            "{base}keys = [{{ key = \"env:AZ\" }}]\nresponses = false\n[providers.az.azure]\n\
             endpoint = \"https://res.openai.azure.com\"\nresponses_api_version = \"2025-03-01-preview\"\n"
        );
        let p = check_with(&off, &env, Some(CORES)).unwrap().providers["az"].clone();
        assert!(!p.responses);
        assert_eq!(
            p.azure.as_ref().unwrap().responses_api_version,
            "2025-03-01-preview"
        );

        let entra = format!(
            "{base}[providers.az.azure]\nendpoint = \"https://res.openai.azure.com\"\napi_style = \"v1\"\n\
             auth = \"entra\"\ntenant = \"env:TENANT\"\nclient_id = \"env:CLIENT\"\nclient_secret = \"env:SECRET\"\n"
        );
        let p = check_with(&entra, &env, Some(CORES)).unwrap().providers["az"].clone();
        let a = p.azure.as_ref().unwrap();
        assert_eq!(
            (a.api_style, a.api_version.as_deref()),
            (AzureApiStyle::V1, None)
        );
        let AzureAuth::Entra(e) = &a.auth else {
            panic!("entra")
        };
        assert_eq!(
            e.token_url,
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(e.scope, AZURE_SCOPE_DEFAULT);
        assert!(p.keys.is_empty());
        assert!(
            p.secrets().any(|s| s == "entra-secret-value"),
            "the redactor hides it"
        );

        for (extra, problem) in [
            ("", "providers.az.azure: required for type \"azure\""),
            ("base_url = \"https://x\"\n[providers.az.azure]\nendpoint = \"https://x\"\n", "providers.az.base_url: not used"),
            ("[providers.az.azure]\nendpoint = \"https://x?a=1\"\n", "providers.az.azure.endpoint: must not have a query"),
            ("[providers.az.azure]\nendpoint = \"https://x\"\n", "providers.az.keys: required for type \"azure\" with auth = \"api_key\""),
            ("[providers.az.azure]\nendpoint = \"https://x\"\ndeployments = { m = \"a/b\" }\n", "deployment names are"),
            ("[providers.az.azure]\nendpoint = \"https://x\"\napi_version = \"2024 10\"\n", "providers.az.azure.api_version"),
            ("[providers.az.azure]\nendpoint = \"https://x\"\nresponses_api_version = \"a?b\"\n", "providers.az.azure.responses_api_version: 1..=64 letters"),
            ("[providers.az.azure]\nendpoint = \"https://x\"\napi_style = \"v1\"\nresponses_api_version = \"preview\"\n", "providers.az.azure.responses_api_version: only used with api_style = \"deployments\""),
            ("[providers.az.azure]\nendpoint = \"https://x\"\nauth = \"entra\"\n", "providers.az.azure.client_id: required with auth = \"entra\""),
            ("[providers.az.azure]\nendpoint = \"https://x\"\nauth = \"entra\"\nclient_id = \"env:CLIENT\"\nclient_secret = \"literal\"\ntenant = \"env:TENANT\"\n", "providers.az.azure.client_secret: literal secrets are not allowed"),
            ("[providers.az.azure]\nendpoint = \"https://x\"\ntenant = \"env:TENANT\"\n", "providers.az.azure.tenant: only used with auth = \"entra\""),
            ("keys = [{ key = \"env:AZ\" }]\n[providers.az.azure]\nendpoint = \"https://x\"\nauth = \"entra\"\nclient_id = \"env:CLIENT\"\nclient_secret = \"env:SECRET\"\ntenant = \"env:TENANT\"\n", "providers.az.keys: not used with auth = \"entra\""),
        ] {
            let e = err_with(&format!("{base}{extra}"), &env);
            assert!(e.contains(problem), "{extra}: {e}");
            assert!(!e.contains("entra-secret-value") && !e.contains("az-key-1234"), "{e}");
        }
        let e = err(&format!(
            "{MOCK}[providers.mock.azure]\nendpoint = \"https://x\"\n"
        ));
        assert!(
            e.contains("providers.mock.azure: only used with type = \"azure\""),
            "{e}"
        );
    }
}

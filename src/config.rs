//! TOML config -> validated [`Config`]: file structs with every field optional and unknown keys
//! denied, defaults as documented constants, secrets only as `env:VAR` or `file:PATH` references.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::http::Limits;

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

/// Upstream wire format of a provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderType {
    /// Built-in LLM-like responder, no network; for trying the gateway and measuring its overhead.
    Mock,
    /// OpenAI Chat Completions and any compatible server (vLLM, Ollama, Groq, Together, ...).
    OpenAi,
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
    pub objpools: ObjPoolsConfig,
    /// Keyed by provider name (the `<provider>` of `<provider>/<model>`).
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Alias model name -> `provider/model`.
    pub aliases: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// may scheduler threads; resolved (never 0: 0 in the file means one per available core).
    pub threads: usize,
    /// Cores for the scheduler threads; empty = may's default placement.
    pub cores: Vec<usize>,
    pub limits: Limits,
    pub json_depth_max: usize,
    pub shutdown_timeout: Duration,
    /// Accepted client keys (`Authorization: Bearer` or `x-api-key`); empty = no client auth.
    pub client_keys: Vec<Secret>,
}

#[derive(Clone, Debug)]
pub struct StatsConfig {
    /// Period of the stdout stats line; `None` = off (0 in the file).
    pub stdout_interval: Option<Duration>,
    /// Warn in the log when an object pool's hit ratio stays below this (0.0..=1.0).
    pub objpool_hit_ratio_warn: f64,
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
    /// Fixed latency of each answer.
    pub latency: Duration,
}

#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub workers: usize,
    pub queue_capacity: usize,
    pub queue_policy: QueuePolicy,
    pub queue_wait_max: Duration,
    pub request_timeout: Duration,
    /// Cores the workers are pinned to round-robin; empty = all available cores.
    pub cores: Vec<usize>,
    pub worker_stack_bytes: usize,
}

#[derive(Clone, Debug)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderType,
    /// Required for `openai`; e.g. `https://api.openai.com/v1` (no trailing slash).
    pub base_url: String,
    pub keys: Vec<KeyConfig>,
    /// Models listed by `GET /v1/models`; empty = none listed, any model accepted.
    pub models: Vec<String>,
    /// Extra headers sent upstream on every request.
    pub headers: Vec<(String, String)>,
    pub connect_timeout: Duration,
    /// Extra root certificates (PEM) trusted for this provider, besides the webpki roots.
    pub ca_file: Option<PathBuf>,
    pub mock: MockConfig,
    pub pool: PoolConfig,
}

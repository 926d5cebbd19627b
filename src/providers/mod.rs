//! Upstream providers. A [`Provider`] is shared by the workers of its pool; each worker owns a
//! [`WorkerCtx`] (its HTTP agent with keep-alive, its random state). Every network provider is an
//! [`http::HttpProvider`]: the shared executor around an [`adapter::Adapter`] that supplies only
//! the URL, the authentication and the wire format.

pub mod adapter;
pub mod anthropic;
pub mod azure;
pub mod entra;
pub mod gemini;
pub mod google_auth;
pub use crate::config::aws_credentials;
pub mod bedrock;
pub mod eventstream;
pub mod frames;
pub mod http;
pub mod keys;
pub mod mock;
pub mod openai;
pub mod redact;
pub mod resolve;
pub mod retry;
pub mod sigv4;
pub mod sse;
pub mod status;
pub mod tls;
pub mod translate;
pub mod transport;
pub mod vertex;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{ProviderConfig, ProviderType};
use crate::error::ApiError;
use crate::job::{Answer, Job, Usage};

/// What a worker hands to a provider: the job, and where attempt outcomes go.
pub struct Call<'a> {
    pub job: &'a Job,
    /// Longest silence between stream events (and after the answer head, before the first).
    pub stream_idle_timeout: Duration,
    /// Longest stream, from its beginning (`StreamSink::start`) to its end. The job's deadline
    /// bounds only the wait for the answer to begin.
    pub stream_duration_max: Duration,
    /// Called with each upstream attempt's outcome (true: a success for the circuit breaker).
    pub record_attempt: &'a dyn Fn(bool),
}

/// Where a provider delivers a streamed answer, event by event.
pub trait StreamSink {
    /// The upstream accepted the request: the client's stream begins, with `headers` of the
    /// upstream's answer passed on (rate-limit state). False: stop (client gone).
    fn start(&mut self, headers: Vec<(&'static str, String)>) -> bool;
    /// Complete events in the client's format, taken out of `bytes` (left empty, with an
    /// allocation the client's coroutine gave back: no allocation per event once a stream
    /// runs); also counts as activity of the stream. False: stop reading (the job was stopped,
    /// or its client does not read; the worker reports why).
    fn event(&mut self, bytes: &mut Vec<u8>) -> bool;
    /// The stream's terminator reached the client: whatever stops the call now, the stream is
    /// complete.
    fn complete(&mut self);
}

/// How a streamed call ended.
#[derive(Debug)]
pub enum StreamResult {
    /// The upstream answered with a whole body instead (an error status, or plain JSON): it is
    /// passed on as a normal response. Only before `StreamSink::start`.
    Whole(Answer),
    /// The stream ran; `error` is set when it ended badly after it started.
    Streamed {
        error: Option<ApiError>,
        usage: Usage,
    },
}

/// Per-worker state, built inside the worker thread after pinning.
pub struct WorkerCtx {
    pub agent: Option<ureq::Agent>,
    rng: u64,
}

impl WorkerCtx {
    /// xorshift64*: cheap per-worker randomness for weighted key choice.
    pub fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

pub enum Provider {
    Mock(mock::MockProvider),
    /// Boxed: its key pool makes it several times the mock's size (one per pool, never moved).
    Http(Box<http::HttpProvider>),
}

impl Provider {
    /// Build from validated config; `redact` holds every provider secret of the config, scanned
    /// for in what the upstream sends back. Fails on a `ca_file` that does not parse.
    pub fn from_config(
        cfg: &ProviderConfig,
        redact: Arc<redact::Redactor>,
    ) -> Result<Provider, String> {
        let adapter: Box<dyn adapter::Adapter> = match cfg.kind {
            ProviderType::Mock => return Ok(Provider::Mock(mock::MockProvider::new(cfg))),
            ProviderType::OpenAi => {
                Box::new(openai::OpenAiAdapter::new(&cfg.base_url, cfg.responses))
            }
            ProviderType::Anthropic => Box::new(anthropic::AnthropicAdapter::new(
                &cfg.base_url,
                &cfg.anthropic_version,
            )),
            ProviderType::Azure => match &cfg.azure {
                Some(azure) => Box::new(azure::AzureAdapter::new(&cfg.name, azure, cfg.responses)),
                None => return Err(format!("providers.{}.azure: missing", cfg.name)),
            },
            ProviderType::Gemini => Box::new(gemini::GeminiAdapter::new(&cfg.base_url)),
            ProviderType::Vertex => match &cfg.vertex {
                Some(v) => Box::new(vertex::VertexAdapter::new(&cfg.name, &cfg.base_url, v)?),
                None => return Err(format!("providers.{}.vertex: missing", cfg.name)),
            },
            ProviderType::Bedrock => {
                let Some(aws) = &cfg.bedrock else {
                    return Err(format!("providers.{}.bedrock: missing", cfg.name));
                };
                Box::new(bedrock::BedrockAdapter::new(&cfg.name, &cfg.base_url, aws)?)
            }
        };
        Ok(Provider::Http(Box::new(http::HttpProvider::new(
            cfg, adapter, redact,
        )?)))
    }

    /// Per-worker state; `seed` differs per worker.
    pub fn worker_ctx(&self, seed: u64) -> WorkerCtx {
        WorkerCtx {
            agent: match self {
                Provider::Mock(_) => None,
                Provider::Http(p) => Some(p.agent()),
            },
            rng: seed | 1,
        }
    }

    pub fn call(&self, ctx: &mut WorkerCtx, call: &Call<'_>) -> Result<Answer, ApiError> {
        match self {
            Provider::Mock(p) => p.call(call),
            Provider::Http(p) => p.call(ctx, call),
        }
    }

    /// A `stream: true` call. `Err` means it failed before the stream started.
    pub fn call_stream(
        &self,
        ctx: &mut WorkerCtx,
        call: &Call<'_>,
        sink: &mut dyn StreamSink,
    ) -> Result<StreamResult, ApiError> {
        match self {
            Provider::Mock(p) => p.call_stream(call, sink),
            Provider::Http(p) => p.call_stream(ctx, call, sink),
        }
    }

    /// The provider's cheap health probe (never a paid completion); the mock is always healthy.
    pub fn health_probe(
        &self,
        check: &crate::config::HealthCheck,
        timeout: Duration,
    ) -> Result<(), String> {
        match self {
            Provider::Mock(_) => Ok(()),
            Provider::Http(p) => p.health_probe(check, timeout),
        }
    }

    /// Per-key state for `/metrics` (empty for providers without keys).
    pub fn key_snapshots(&self) -> Vec<keys::KeySnapshot> {
        match self {
            Provider::Mock(_) => Vec::new(),
            Provider::Http(p) => p.key_snapshots(),
        }
    }

    /// Re-probe up to `max` keys whose disable has expired (the supervisor's job).
    pub fn probe_keys(&self, health: &crate::config::HealthConfig, max: usize) {
        match self {
            Provider::Mock(_) => {}
            Provider::Http(p) => p.probe_keys(health, max),
        }
    }

    /// Per-key state for `/stats` (empty for providers without keys).
    pub fn keys_json(&self) -> serde_json::Value {
        match self {
            Provider::Mock(_) => serde_json::json!([]),
            Provider::Http(p) => p.keys_json(),
        }
    }
}

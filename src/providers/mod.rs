//! Upstream formats, one file each. A [`Provider`] is shared by the workers of its pool; each
//! worker owns a [`WorkerCtx`] (its HTTP agent with keep-alive, its random state).

pub mod aws_credentials;
pub mod eventstream;
pub mod keys;
pub mod mock;
pub mod openai;
pub mod resolve;
pub mod retry;
pub mod sigv4;
pub mod sse;
pub mod transport;

use std::time::{Duration, Instant};

use crate::config::{ProviderConfig, ProviderType};
use crate::error::ApiError;

/// What a worker hands to a provider: the body already in the upstream's format, the upstream model.
pub struct Call<'a> {
    pub body: &'a [u8],
    pub upstream_model: &'a str,
    pub deadline: Instant,
    /// The client asked for the final usage chunk of a stream.
    pub client_wants_usage: bool,
    /// Longest silence between stream events.
    pub stream_idle_timeout: Duration,
    /// Cancellation shared with the client's coroutine.
    pub ctl: &'a crate::pool::JobCtl,
    /// Every upstream attempt's outcome is recorded here.
    pub breaker: &'a crate::pool::breaker::Breaker,
}

/// Where a provider delivers a streamed answer, event by event.
pub trait StreamSink {
    /// The upstream accepted the request: the client's stream begins. False: stop (client gone).
    fn start(&mut self) -> bool;
    /// One complete SSE event (`data: ...\n\n`). False: stop reading (client gone).
    fn event(&mut self, bytes: Vec<u8>) -> bool;
}

/// How a streamed call ended.
#[derive(Debug)]
pub enum StreamResult {
    /// The upstream answered with a whole body instead (an error status, or plain JSON): it is
    /// passed on as a normal response. Only before `StreamSink::start`.
    Whole(UpstreamReply),
    /// The stream ran; `error` is set when it ended badly after it started.
    Streamed {
        error: Option<ApiError>,
        prompt_tokens: u64,
        completion_tokens: u64,
    },
}

/// An upstream's answer, passed to the client faithfully (status, body, content type).
#[derive(Debug)]
pub struct UpstreamReply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// The upstream's `Retry-After`, passed on with 429/503.
    pub retry_after: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
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
    OpenAi(openai::OpenAiProvider),
}

impl Provider {
    /// Build from validated config. Fails on a `ca_file` that does not parse.
    pub fn from_config(cfg: &ProviderConfig) -> Result<Provider, String> {
        Ok(match cfg.kind {
            ProviderType::Mock => Provider::Mock(mock::MockProvider::new(cfg)),
            ProviderType::OpenAi => Provider::OpenAi(openai::OpenAiProvider::new(cfg)?),
        })
    }

    /// Per-worker state; `seed` differs per worker.
    pub fn worker_ctx(&self, seed: u64) -> WorkerCtx {
        WorkerCtx {
            agent: match self {
                Provider::Mock(_) => None,
                Provider::OpenAi(p) => Some(p.agent()),
            },
            rng: seed | 1,
        }
    }

    pub fn call(&self, ctx: &mut WorkerCtx, call: &Call<'_>) -> Result<UpstreamReply, ApiError> {
        match self {
            Provider::Mock(p) => p.call(call),
            Provider::OpenAi(p) => p.call(ctx, call),
        }
    }

    /// A `stream: true` call. `Err` means it failed before the stream started.
    /// The provider's cheap health probe (never a paid completion); the mock is always healthy.
    pub fn health_probe(
        &self,
        check: &crate::config::HealthCheck,
        timeout: std::time::Duration,
    ) -> Result<(), String> {
        match self {
            Provider::Mock(_) => Ok(()),
            Provider::OpenAi(p) => p.health_probe(check, timeout),
        }
    }

    /// Per-key state for `/stats` (empty for providers without keys).
    pub fn keys_json(&self) -> serde_json::Value {
        match self {
            Provider::Mock(_) => serde_json::json!([]),
            Provider::OpenAi(p) => p.keys_json(),
        }
    }

    pub fn call_stream(
        &self,
        ctx: &mut WorkerCtx,
        call: &Call<'_>,
        sink: &mut dyn StreamSink,
    ) -> Result<StreamResult, ApiError> {
        match self {
            Provider::Mock(p) => p.call_stream(call, sink),
            Provider::OpenAi(p) => p.call_stream(ctx, call, sink),
        }
    }
}

//! The `openai` provider: OpenAI Chat Completions over HTTPS (rustls) or HTTP, for OpenAI itself and
//! every compatible server (vLLM, Ollama, Groq, Together, ...). Upstream statuses and error bodies
//! reach the client faithfully.

use std::io::{BufReader, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::keys::{KeyPool, NoKey};
use super::retry::{backoff, parse_retry_after};
use super::sse::{
    chunk_usage, data_event, event_too_large_error, is_usage_only, stream_duration_error,
    stream_idle_error, SseError, SseItem, SseReader, DONE_EVENT,
};
use super::{Call, StreamResult, StreamSink, UpstreamReply, WorkerCtx};
use crate::config::{HealthCheck, ProviderConfig, RetryConfig};
use crate::error::{ApiError, ErrorKind};

/// Largest upstream response body accepted, in bytes.
pub const UPSTREAM_BODY_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Idle upstream connections each worker keeps for reuse.
pub const IDLE_CONNECTIONS_PER_WORKER: usize = 4;
/// Read and write buffers of each upstream connection, bytes.
pub const UPSTREAM_BUFFER_BYTES: usize = 16 * 1024;
/// Most bytes of one upstream event stream.
pub const UPSTREAM_STREAM_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// Read buffer of an upstream event stream.
const STREAM_READ_BUF_BYTES: usize = 16 * 1024;
/// How long an idle upstream connection is kept.
pub const IDLE_CONNECTION_AGE: Duration = Duration::from_secs(60);

pub struct OpenAiProvider {
    name: String,
    url: String,
    base_url: String,
    keys: KeyPool,
    retry: RetryConfig,
    headers: Vec<(String, String)>,
    connect_timeout: Duration,
    tls: ureq::tls::TlsConfig,
}

impl OpenAiProvider {
    pub fn new(cfg: &ProviderConfig) -> Result<Self, String> {
        let mut roots = ureq::tls::RootCerts::WebPki;
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("providers.{}.ca_file: {}: {e}", cfg.name, path.display()))?;
            let mut certs: Vec<ureq::tls::Certificate<'static>> = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                    Ok(_) => {}
                    Err(e) => {
                        return Err(format!(
                            "providers.{}.ca_file: {}: {e}",
                            cfg.name,
                            path.display()
                        ))
                    }
                }
            }
            if certs.is_empty() {
                return Err(format!(
                    "providers.{}.ca_file: {}: no certificate found",
                    cfg.name,
                    path.display()
                ));
            }
            // The file's CAs replace the built-in webpki roots for this provider (as curl's
            // --cacert does): a private vLLM behind an internal CA trusts only that CA.
            roots = ureq::tls::RootCerts::Specific(Arc::new(certs));
        }
        let tls = ureq::tls::TlsConfig::builder().root_certs(roots).build();
        Ok(OpenAiProvider {
            name: cfg.name.clone(),
            url: format!("{}/chat/completions", cfg.base_url.trim_end_matches('/')),
            base_url: cfg.base_url.trim_end_matches('/').to_string(),
            keys: KeyPool::new(&cfg.keys),
            retry: cfg.retry.clone(),
            headers: cfg.headers.clone(),
            connect_timeout: cfg.connect_timeout,
            tls,
        })
    }

    /// One agent per worker: keep-alive to the upstream, every timeout explicit.
    pub fn agent(&self) -> ureq::Agent {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(self.tls.clone())
            .timeout_connect(Some(self.connect_timeout))
            .timeout_resolve(Some(self.connect_timeout))
            // The per-call deadline is set on each request; this bounds anything left.
            .timeout_global(Some(Duration::from_secs(3600)))
            .max_redirects(0)
            .max_idle_connections(IDLE_CONNECTIONS_PER_WORKER)
            .max_idle_connections_per_host(IDLE_CONNECTIONS_PER_WORKER)
            .max_idle_age(IDLE_CONNECTION_AGE)
            .no_delay(true)
            .user_agent("deepintshield")
            .accept_encoding("gzip")
            // ureq's default is 128 KiB each way per connection, zero-filled: 256 KiB per worker
            // connection is most of the memory of a large pool. Requests and answers stream
            // through these; they need not hold a whole body.
            .input_buffer_size(UPSTREAM_BUFFER_BYTES)
            .output_buffer_size(UPSTREAM_BUFFER_BYTES)
            .build();
        use ureq::unversioned::transport::{ConnectProxyConnector, Connector, RustlsConnector};
        // ureq's default chain (proxy tunnel, TCP, rustls) with our leaner TCP transport.
        let connector =
            ().chain(ConnectProxyConnector::default())
                .chain(super::transport::LeanTcpConnector)
                .chain(RustlsConnector::default());
        ureq::Agent::with_parts(config, connector, super::resolve::ThreadResolver)
    }

    pub fn call(&self, ctx: &mut WorkerCtx, call: &Call<'_>) -> Result<UpstreamReply, ApiError> {
        let resp = self.send(ctx, call, false)?;
        self.whole(resp)
    }

    /// `connect`: a TCP connection to the upstream's host and port. `get`: `GET <base_url><path>`
    /// with a usable key; any status below 500 is healthy.
    pub fn health_probe(&self, check: &HealthCheck, timeout: Duration) -> Result<(), String> {
        match check {
            HealthCheck::None => Ok(()),
            HealthCheck::Connect => {
                let rest = self
                    .base_url
                    .strip_prefix("https://")
                    .map(|r| (r, 443))
                    .or_else(|| self.base_url.strip_prefix("http://").map(|r| (r, 80)));
                let Some((rest, default_port)) = rest else {
                    return Err("unsupported base_url scheme".into());
                };
                let authority = rest.split('/').next().unwrap_or(rest);
                let target = if authority
                    .rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                    && !authority.ends_with(']')
                {
                    authority.to_string()
                } else {
                    format!("{authority}:{default_port}")
                };
                let addr = std::net::ToSocketAddrs::to_socket_addrs(&target)
                    .map_err(|_| "host not found".to_string())?
                    .next()
                    .ok_or("host not found")?;
                std::net::TcpStream::connect_timeout(&addr, timeout)
                    .map(|_| ())
                    .map_err(|e| format!("connect failed: {}", e.kind()))
            }
            HealthCheck::Get(path) => {
                let key = self
                    .keys
                    .pick("", 0)
                    .or_else(|_| self.keys.pick_any())
                    .map_err(|_| "no usable key".to_string())?;
                let agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .tls_config(self.tls.clone())
                    .timeout_global(Some(timeout))
                    .max_redirects(0)
                    .build()
                    .new_agent();
                let mut req = agent
                    .get(format!("{}{path}", self.base_url))
                    .header("authorization", format!("Bearer {}", self.keys.secret(key)));
                for (name, value) in &self.headers {
                    req = req.header(name.as_str(), value.as_str());
                }
                match req.call() {
                    Ok(resp) if resp.status().as_u16() < 500 => Ok(()),
                    Ok(resp) => Err(format!("status {}", resp.status().as_u16())),
                    Err(e) => Err(self.transport_error(e).code.to_string()),
                }
            }
        }
    }

    /// Per-key state for `/stats`.
    pub fn keys_json(&self) -> serde_json::Value {
        self.keys.to_json()
    }

    /// Send the request with retries: transport errors and 500/502/503/504 are retried after an
    /// exponential backoff with jitter; a 429 cools its key down for the upstream's `Retry-After`
    /// and is retried on another key at once, or after the wait when no other key is free; 401/403
    /// disable the key. Never past the deadline, never after the client left. The last answer
    /// (whatever its status) is returned for the client.
    fn send(
        &self,
        ctx: &mut WorkerCtx,
        call: &Call<'_>,
        stream: bool,
    ) -> Result<ureq::http::Response<ureq::Body>, ApiError> {
        let mut attempt = 0u32;
        loop {
            if call.ctl.is_cancelled() {
                return Err(cancelled_error());
            }
            let retries_left = attempt < self.retry.max_retries;
            let key = match self.keys.pick(call.upstream_model, ctx.next_random()) {
                Ok(key) => key,
                Err(NoKey::CoolingDown(wait)) if retries_left && self.fits(call, wait) => {
                    self.pause(call, wait);
                    attempt += 1;
                    continue;
                }
                Err(no_key) => return Err(no_key.error(&self.name, call.upstream_model)),
            };
            let outcome = self.attempt(ctx, call, key, stream);
            let status = outcome.as_ref().map(|r| r.status().as_u16());
            let transport_failure =
                matches!(&outcome, Err(e) if e.kind == ErrorKind::UpstreamTransport);
            let timed_out = matches!(&outcome, Err(e) if e.kind == ErrorKind::RequestTimeout);
            call.breaker
                .record(!(transport_failure || timed_out || matches!(status, Ok(500..))));
            match status {
                Ok(429) => {
                    let resp = outcome?;
                    let wait = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()))
                        .unwrap_or(self.retry.rate_limit_cooldown_default);
                    self.keys.cool_down(key, wait);
                    // Retried at once on another free key; else after the wait if the deadline
                    // allows (handled by `pick` above); else the 429 goes to the client as it is.
                    let other_key_free = self.keys.pick(call.upstream_model, 0).is_ok();
                    if !retries_left || (!other_key_free && !self.fits(call, wait)) {
                        return Ok(resp);
                    }
                }
                Ok(401 | 403) => {
                    self.keys.disable(key);
                    return outcome;
                }
                Ok(500 | 502 | 503 | 504) | Err(_) if transport_failure || status.is_ok() => {
                    let pause = backoff(
                        attempt,
                        self.retry.backoff_initial,
                        self.retry.backoff_max,
                        ctx.next_random(),
                    );
                    if !retries_left || !self.fits(call, pause) {
                        return outcome;
                    }
                    self.pause(call, pause);
                }
                _ => return outcome,
            }
            attempt += 1;
        }
    }

    /// Whether waiting `wait` still leaves time before the deadline for another attempt.
    fn fits(&self, call: &Call<'_>, wait: Duration) -> bool {
        Instant::now() + wait < call.deadline
    }

    /// Sleep (this is a worker thread) in slices, returning early when the client leaves.
    fn pause(&self, call: &Call<'_>, wait: Duration) {
        let until = Instant::now() + wait;
        while !call.ctl.is_cancelled() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
    }

    /// One attempt with key `key`. A stream gets the request deadline for the upstream's answer
    /// head, `stream_idle_timeout` for every read after it and `stream_duration_max` for its whole
    /// body; a whole answer gets the deadline.
    fn attempt(
        &self,
        ctx: &mut WorkerCtx,
        call: &Call<'_>,
        key: usize,
        stream: bool,
    ) -> Result<ureq::http::Response<ureq::Body>, ApiError> {
        let remaining = call.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(timeout_error());
        }
        let Some(agent) = ctx.agent.as_ref() else {
            return Err(ApiError::internal());
        };
        let builder = agent.post(&self.url).config();
        let builder = if stream {
            builder
                .timeout_global(None)
                .timeout_recv_response(Some(remaining))
                .timeout_recv_body(Some(call.stream_duration_max))
                .timeout_per_read(Some(call.stream_idle_timeout))
        } else {
            builder.timeout_global(Some(remaining))
        };
        let mut req = builder
            .build()
            .header("authorization", format!("Bearer {}", self.keys.secret(key)))
            .header("content-type", "application/json")
            .header(
                "accept",
                if stream {
                    "text/event-stream"
                } else {
                    "application/json"
                },
            );
        for (name, value) in &self.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        req.send(call.body).map_err(|e| {
            if call.ctl.is_cancelled() {
                cancelled_error()
            } else {
                self.transport_error(e)
            }
        })
    }

    /// A `stream: true` call: events are passed on one by one as the upstream sends them. Every
    /// byte read (SSE comments such as `: ping` included) is activity of the stream; comments are
    /// not passed on. The stream ends at `[DONE]`: nothing after it is read or passed on.
    pub fn call_stream(
        &self,
        ctx: &mut WorkerCtx,
        call: &Call<'_>,
        sink: &mut dyn StreamSink,
    ) -> Result<StreamResult, ApiError> {
        let resp = self.send(ctx, call, true)?;
        let is_sse = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        if resp.status().as_u16() != 200 || !is_sse {
            return self.whole(resp).map(StreamResult::Whole);
        }
        let (mut prompt_tokens, mut completion_tokens) = (0, 0);
        let end = |error, prompt_tokens, completion_tokens| StreamResult::Streamed {
            error,
            prompt_tokens,
            completion_tokens,
        };
        if !sink.start() {
            return Ok(end(None, 0, 0));
        }
        let reader = resp
            .into_body()
            .into_with_config()
            .limit(UPSTREAM_STREAM_BYTES_MAX)
            .reader();
        let reader = Activity {
            inner: reader,
            ctl: call.ctl,
        };
        let mut events = SseReader::new(BufReader::with_capacity(STREAM_READ_BUF_BYTES, reader));
        loop {
            match events.next_item() {
                Ok(SseItem::Data(payload)) => {
                    if let Some((p, c)) = chunk_usage(&payload) {
                        (prompt_tokens, completion_tokens) = (p, c);
                        if !call.client_wants_usage && is_usage_only(&payload) {
                            continue;
                        }
                    }
                    if !sink.event(data_event(&payload)) {
                        return Ok(end(None, prompt_tokens, completion_tokens));
                    }
                }
                Ok(SseItem::Done) => {
                    sink.event(DONE_EVENT.to_vec());
                    // The stream is over. One look past `[DONE]` tells whether the body ends
                    // there, so that the connection goes back to the worker's pool; anything else
                    // after it is never read, and dropping the reader closes the connection.
                    let _ = events.at_end();
                    return Ok(end(None, prompt_tokens, completion_tokens));
                }
                Ok(SseItem::Eof) => {
                    let error = ApiError::new(
                        ErrorKind::UpstreamInvalid,
                        "upstream_stream_truncated",
                        format!("provider {}: the stream ended without [DONE]", self.name),
                    );
                    return Ok(end(Some(error), prompt_tokens, completion_tokens));
                }
                Err(e) => {
                    let error = if call.ctl.is_cancelled() {
                        None
                    } else {
                        Some(self.stream_error(e))
                    };
                    return Ok(end(error, prompt_tokens, completion_tokens));
                }
            }
        }
    }

    fn stream_error(&self, e: SseError) -> ApiError {
        let e = match e {
            SseError::TooLarge => {
                return event_too_large_error(format!(
                    "provider {}: an event is larger than the gateway accepts",
                    self.name
                ))
            }
            SseError::Io(e) => e,
        };
        let timeout = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<ureq::Error>())
            .and_then(|u| match u {
                ureq::Error::Timeout(t) => Some(*t),
                _ => None,
            });
        match timeout {
            Some(ureq::Timeout::RecvBody) => stream_duration_error(format!(
                "provider {}: the stream ran longer than the gateway allows",
                self.name
            )),
            Some(_) => stream_idle_error(format!("provider {}: the stream stalled", self.name)),
            None if e.kind() == std::io::ErrorKind::TimedOut => {
                stream_idle_error(format!("provider {}: the stream stalled", self.name))
            }
            None => ApiError::new(
                ErrorKind::UpstreamTransport,
                "upstream_stream_interrupted",
                format!("provider {}: the stream was interrupted", self.name),
            ),
        }
    }

    /// Read a whole answer (any status) to pass on as it is.
    fn whole(&self, mut resp: ureq::http::Response<ureq::Body>) -> Result<UpstreamReply, ApiError> {
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = header("retry-after");
        let json = header("content-type").is_some_and(|ct| ct.contains("json"));
        let mut body = Vec::new();
        resp.body_mut()
            .with_config()
            .limit(UPSTREAM_BODY_BYTES_MAX)
            .reader()
            .read_to_end(&mut body)
            .map_err(|e| self.read_error(e))?;
        let (prompt_tokens, completion_tokens) = if status == 200 {
            usage_of(&body)
        } else {
            (0, 0)
        };
        Ok(UpstreamReply {
            status,
            content_type: if json {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            },
            body,
            retry_after,
            prompt_tokens,
            completion_tokens,
        })
    }

    fn transport_error(&self, e: ureq::Error) -> ApiError {
        match e {
            ureq::Error::Timeout(_) => timeout_error(),
            ureq::Error::HostNotFound => ApiError::new(
                ErrorKind::UpstreamTransport,
                "upstream_unreachable",
                format!("provider {}: host not found", self.name),
            ),
            ureq::Error::Io(ref io) if is_tls_failure(io) => ApiError::new(
                ErrorKind::UpstreamTransport,
                "upstream_tls_error",
                format!("provider {}: TLS handshake failed", self.name),
            ),
            ureq::Error::ConnectionFailed | ureq::Error::Io(_) => ApiError::new(
                ErrorKind::UpstreamTransport,
                "upstream_unreachable",
                format!("provider {}: connection failed", self.name),
            ),
            ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => ApiError::new(
                ErrorKind::UpstreamTransport,
                "upstream_tls_error",
                format!("provider {}: TLS handshake failed", self.name),
            ),
            _ => ApiError::new(
                ErrorKind::UpstreamInvalid,
                "upstream_protocol_error",
                format!("provider {}: invalid response", self.name),
            ),
        }
    }

    fn read_error(&self, e: std::io::Error) -> ApiError {
        // ureq reports its own errors (timeouts, limits) wrapped in io::Error.
        match e.into_inner().map(|inner| inner.downcast::<ureq::Error>()) {
            Some(Ok(ureq_err)) => match *ureq_err {
                ureq::Error::BodyExceedsLimit(_) => ApiError::new(
                    ErrorKind::UpstreamInvalid,
                    "upstream_body_too_large",
                    format!("provider {}: response body too large", self.name),
                ),
                other => self.transport_error(other),
            },
            _ => ApiError::new(
                ErrorKind::UpstreamTransport,
                "upstream_read_error",
                format!("provider {}: reading the response failed", self.name),
            ),
        }
    }
}

/// An upstream stream's body: every read that brings bytes marks the job active, so that a
/// stream kept alive by comments alone is neither cut as idle nor taken for a stuck worker.
struct Activity<'a, R> {
    inner: R,
    ctl: &'a crate::pool::JobCtl,
}

impl<R: Read> Read for Activity<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.ctl.touch();
        }
        Ok(n)
    }
}

/// rustls reports a failed handshake (untrusted certificate, wrong name, ...) as an I/O error.
fn is_tls_failure(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

fn cancelled_error() -> ApiError {
    ApiError::new(
        ErrorKind::Unavailable,
        "client_cancelled",
        "the client went away",
    )
}

fn timeout_error() -> ApiError {
    ApiError::new(
        ErrorKind::RequestTimeout,
        "request_timeout",
        "the provider did not answer within the request timeout",
    )
}

/// `usage.prompt_tokens` and `usage.completion_tokens` of an OpenAI response, or zeros.
fn usage_of(body: &[u8]) -> (u64, u64) {
    #[derive(serde::Deserialize)]
    struct U {
        prompt_tokens: Option<u64>,
        completion_tokens: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct R {
        usage: Option<U>,
    }
    match serde_json::from_slice::<R>(body) {
        Ok(R { usage: Some(u) }) => (
            u.prompt_tokens.unwrap_or(0),
            u.completion_tokens.unwrap_or(0),
        ),
        _ => (0, 0),
    }
}

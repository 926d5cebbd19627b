//! The shared executor of every network provider: one [`HttpProvider`] per pool around the
//! provider's [`Adapter`]. Written once here: preparing the upstream body (passthrough or
//! translation), key choice and cool-downs, retries with backoff and Retry-After, breaker outcomes
//! (reported to the worker), the transport (rustls, our TCP connector, explicit timeouts), stream
//! reading with idle bounds, cancellation, and mapping transport failures to errors.

use std::io::{BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::adapter::{Adapter, Format, Framing, Headers, Operation, Outgoing};
use super::frames::{EventSource, EventStreamReader, Frame, FrameError};
use super::keys::{KeyPolicy, KeyPool, KeySnapshot, ModelMark, NoKey, ProbeOutcome};
use super::redact::Redactor;
use super::retry::{backoff, parse_retry_after, parse_retry_after_ms, RETRY_AFTER_MS};
use super::sse::{event_too_large_error, stream_duration_error, stream_idle_error, SseReader};
use super::status::{next_step, KeyEffect, NextStep, UpstreamVerdict};
use super::translate::{self, Mode, Step};
use super::{Call, StreamResult, StreamSink, WorkerCtx};
use crate::config::{
    HealthCheck, HealthConfig, KeyConfig, ProviderConfig, ProviderType, RetryConfig, Secret,
};
use crate::error::{ApiError, ErrorKind};
use crate::formats::bedrock::embeddings::{self, INPUT_TOKENS_HEADER};
use crate::formats::gemini::EmbeddingsDialect;
use crate::formats::EncodeOptions;
use crate::job::{clock_ms, Answer, JobCtl, Usage};
use crate::log;

/// Largest upstream response body accepted, in bytes.
pub const UPSTREAM_BODY_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Idle upstream connections each worker keeps for reuse.
pub const IDLE_CONNECTIONS_PER_WORKER: usize =
    crate::config::UPSTREAM_CONNECTIONS_PER_WORKER as usize;
/// Read and write buffers of each upstream connection, bytes. Our TCP transport lends both from
/// one process-wide pool only while bytes are in them (`transport::UpstreamBuffers`); over TLS
/// these are the encrypted side's, and ureq's TLS layer keeps a plaintext pair of this size per
/// connection. An answer's head must fit the read buffer
/// (providers send 1 to 3 KiB) and the longest line of a request head the write buffer; bodies
/// stream through both.
pub const UPSTREAM_BUFFER_BYTES: usize = super::transport::LENT_BUFFER_BYTES;
/// Most bytes of one upstream event stream.
pub const UPSTREAM_STREAM_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// Read buffer of an upstream event stream.
const STREAM_READ_BUF_BYTES: usize = 4 * 1024;
/// Header in which AWS names the type of an error answer (`ThrottlingException:<namespace>`).
const AWS_ERROR_TYPE_HEADER: &str = "x-amzn-errortype";
/// How long an idle upstream connection is kept.
pub const IDLE_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// Longest single sleep of a worker waiting (backoff, Retry-After), so a client that leaves is
/// noticed promptly.
const PAUSE_SLICE: Duration = Duration::from_millis(20);
/// `Retry-After` of a 503 for want of the gateway's own resources (descriptors free up as calls
/// end).
const LOCAL_SHORTAGE_RETRY_AFTER_S: u32 = 1;
/// At most one log line per provider this often about them.
const LOCAL_SHORTAGE_LOG_EVERY_MS: u64 = 10_000;

/// The upstream request of one job, built once and sent by every attempt.
struct Prepared {
    operation: Operation,
    /// The wire format of `url`: the adapter's, or the client's own at a native endpoint.
    wire: Format,
    url: String,
    body: Vec<u8>,
    mode: Mode,
}

/// What [`HttpProvider::send`] ends with.
enum Sent<T> {
    /// A 2xx, as the caller's `on_success` made it.
    Success(T),
    /// The upstream's own non-2xx answer (read whole, secrets redacted), for the client.
    Answer(Answer),
}

pub struct HttpProvider {
    name: String,
    adapter: Box<dyn Adapter>,
    keys: KeyPool,
    /// Every configured provider secret, scanned for in what is relayed (see [`Redactor`]).
    redact: Arc<Redactor>,
    retry: RetryConfig,
    /// Extra headers from the config, sent with every request.
    headers: Vec<(String, String)>,
    connect_timeout: Duration,
    /// ureq's TLS settings, for its own layer in the health probes.
    tls: ureq::tls::TlsConfig,
    /// The workers' TLS layer's configuration (one for all of them: see `providers::tls`).
    tls_client: Arc<rustls::ClientConfig>,
    /// What the request encoder may decide when it translates.
    encode: EncodeOptions,
    /// When a shortage of the gateway's own resources was last logged ([`clock_ms`]; 0: never).
    local_shortage_logged_ms: AtomicU64,
}

impl HttpProvider {
    /// Fails on a `ca_file` that does not hold a certificate.
    pub fn new(
        cfg: &ProviderConfig,
        adapter: Box<dyn Adapter>,
        redact: Arc<Redactor>,
    ) -> Result<Self, String> {
        let (tls, tls_client) = tls_config(cfg)?;
        Ok(HttpProvider {
            name: cfg.name.clone(),
            adapter,
            keys: KeyPool::new(
                &credential_slots(cfg),
                KeyPolicy {
                    disable_for: cfg.retry.key_disable,
                    // `GET <base_url><health.path>` re-probes a disabled key.
                    reprobe: true,
                },
            ),
            redact,
            retry: cfg.retry.clone(),
            headers: cfg.headers.clone(),
            connect_timeout: cfg.connect_timeout,
            tls,
            tls_client,
            encode: EncodeOptions {
                max_tokens_default: cfg.max_tokens_default,
                thinking_style: cfg.translation.thinking_style,
                structured_output_style: cfg.translation.structured_output,
                max_tokens_field: cfg.translation.max_tokens_field,
                reasoning_effort: cfg.translation.reasoning_effort,
                stream_usage: cfg.translation.stream_usage,
                tool_call_id_format: cfg.translation.tool_call_id_format,
                tools: cfg.translation.tools_supported,
                parallel_tool_calls: cfg.translation.parallel_tool_calls_supported,
                reasoning_history: cfg.translation.reasoning_content_history,
                google_embeddings: match cfg.kind {
                    ProviderType::Vertex => EmbeddingsDialect::VertexPredict,
                    _ => EmbeddingsDialect::BatchEmbedContents,
                },
            },
            local_shortage_logged_ms: AtomicU64::new(0),
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
        use ureq::unversioned::transport::{ConnectProxyConnector, Connector};
        // ureq's default chain (proxy tunnel, TCP, rustls) with our leaner TCP and TLS layers.
        let connector =
            ().chain(ConnectProxyConnector::default())
                .chain(super::transport::LeanTcpConnector)
                .chain(super::tls::LeanTlsConnector::new(Arc::clone(
                    &self.tls_client,
                )));
        ureq::Agent::with_parts(config, connector, super::resolve::ThreadResolver)
    }

    /// The upstream request of the job (the client's body with its model replaced when both speak
    /// the same format, else translated), or `Err(Ok(answer))` when the gateway answers by itself
    /// (a token count the upstream has no endpoint for).
    #[inline(never)]
    fn prepare(&self, call: &Call<'_>, stream: bool) -> Result<Prepared, Result<Answer, ApiError>> {
        let request = &call.job.request;
        let operation = request.api.operation();
        let model = call.job.upstream_model.as_str();
        let (wire, url) = match self.adapter.native_endpoint(request.api, model) {
            Some(native) => native,
            None => match self.adapter.url(operation, model, stream) {
                Some(url) => (self.adapter.format(), url),
                None => {
                    return Err(match operation {
                        Operation::CountTokens => translate::count_tokens_estimate(&request.body),
                        _ => Err(unsupported_operation(&self.name, operation)),
                    })
                }
            },
        };
        let mut body = Vec::with_capacity(request.body.len() + 256);
        let mode = translate::prepare(
            request.api,
            wire,
            &request.body,
            &self.adapter.body_model(model, wire),
            stream,
            &self.encode,
            &mut body,
        )
        .map_err(Err)?;
        Ok(Prepared {
            operation,
            wire,
            url,
            body,
            mode,
        })
    }

    pub fn call(&self, ctx: &mut WorkerCtx, call: &Call<'_>) -> Result<Answer, ApiError> {
        if call.job.request.api.operation() == Operation::Embeddings {
            let request = &call.job.request;
            let model = call.job.upstream_model.as_str();
            let wire = self.adapter.format();
            if let Some(plan) = translate::embeddings_plan(request.api, wire, &request.body, model)?
            {
                return self.call_embeddings(ctx, call, plan);
            }
        }
        let prepared = match self.prepare(call, false) {
            Ok(prepared) => prepared,
            Err(answer) => return answer,
        };
        let sent = self.send(ctx, call, &prepared, false, |resp| {
            self.success_body(resp, &prepared, &call.job.upstream_model)
        })?;
        match sent {
            Sent::Success(answer) | Sent::Answer(answer) => Ok(answer),
        }
    }

    /// An embeddings request translated for an upstream of another format: the plan's calls, one
    /// after another (each with the retries of [`HttpProvider::send`]), joined into one answer.
    /// The first call that ends in an error answer ends the request with it.
    #[inline(never)]
    fn call_embeddings(
        &self,
        ctx: &mut WorkerCtx,
        call: &Call<'_>,
        mut plan: embeddings::Plan,
    ) -> Result<Answer, ApiError> {
        let model = call.job.upstream_model.as_str();
        let Some(url) = self.adapter.url(Operation::Embeddings, model, false) else {
            return Err(unsupported_operation(&self.name, Operation::Embeddings));
        };
        let bodies = std::mem::take(&mut plan.bodies);
        let mut parts = Vec::with_capacity(bodies.len());
        let mut headers = Vec::new();
        for body in bodies {
            let prepared = Prepared {
                operation: Operation::Embeddings,
                url: url.clone(),
                wire: self.adapter.format(),
                body,
                mode: Mode::Translated {
                    client: Format::OpenAiChat,
                    info: Default::default(),
                    reasoning_state: false,
                },
            };
            let sent = self.send(ctx, call, &prepared, false, |resp| {
                let tokens = resp
                    .headers()
                    .get(INPUT_TOKENS_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                let answer = self.read_whole(resp)?;
                let part =
                    translate::embeddings_part(&plan, &answer.body, tokens).map_err(|e| match e
                        .kind
                    {
                        ErrorKind::UpstreamInvalid => self.invalid_response(&e.message),
                        _ => e,
                    })?;
                Ok((part, answer.headers))
            })?;
            match sent {
                Sent::Success((part, relayed)) => {
                    parts.push(part);
                    headers = relayed;
                }
                Sent::Answer(answer) => return Ok(answer),
            }
        }
        translate::embeddings_answer(&plan, parts, model, headers)
            .map_err(|e| self.invalid_response(&e.message))
    }

    /// `connect`: a TCP connection to the upstream's host and port. `get`: `GET <path>` with a
    /// usable key; any answer but a breaker failure is healthy (a 401 also disables that key).
    pub fn health_probe(&self, check: &HealthCheck, timeout: Duration) -> Result<(), String> {
        match check {
            HealthCheck::None => Ok(()),
            HealthCheck::Connect => {
                let (url, _) = self.adapter.probe("", "");
                connect_probe(&url, timeout)
            }
            HealthCheck::Get(path) => {
                let key = self
                    .keys
                    .pick("", 0)
                    .or_else(|_| self.keys.pick_any())
                    .map_err(|_| "no usable key".to_string())?;
                let status = self
                    .probe_get(key, path, timeout)
                    .map_err(|e| e.code.to_string())?;
                let verdict = UpstreamVerdict::classify(status, b"");
                if verdict.key_effect() == KeyEffect::Disable {
                    self.keys.disable(key, &self.name);
                }
                if verdict.healthy() {
                    Ok(())
                } else {
                    Err(format!("status {status}"))
                }
            }
        }
    }

    /// Re-probe keys whose disable has expired (at most `max` of them) with the health probe's
    /// `GET`: a 401 disables the key again for twice as long, any other status puts it back, no
    /// answer puts it back on trial. Runs on the pool's supervisor.
    pub fn probe_keys(&self, health: &HealthConfig, max: usize) {
        for key in self.keys.due_for_probe().into_iter().take(max) {
            let outcome = match self.probe_get(key, &health.path, health.timeout) {
                Ok(status) => match UpstreamVerdict::classify(status, b"").key_effect() {
                    KeyEffect::Disable => ProbeOutcome::Unauthorized,
                    _ => ProbeOutcome::Accepted,
                },
                Err(_) => ProbeOutcome::Inconclusive,
            };
            self.keys.probed(key, outcome, &self.name);
        }
    }

    /// `GET <path>` with key `key`: the status, the body left unread.
    fn probe_get(&self, key: usize, path: &str, timeout: Duration) -> Result<u16, ApiError> {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(self.tls.clone())
            .timeout_global(Some(timeout))
            .max_redirects(0)
            .build()
            .new_agent();
        let (url, headers) = self.adapter.probe(path, self.keys.secret(key));
        let mut req = agent.get(url);
        for (name, value) in headers.iter() {
            req = req.header(name.as_ref(), value.as_str());
        }
        for (name, value) in &self.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        req.call()
            .map(|resp| resp.status().as_u16())
            .map_err(|e| self.transport_error(e))
    }

    /// Per-key state for `/stats`.
    pub fn keys_json(&self) -> serde_json::Value {
        self.keys.to_json()
    }

    /// Per-key state for `/metrics`.
    pub fn key_snapshots(&self) -> Vec<KeySnapshot> {
        self.keys.snapshots()
    }

    /// Send the request with retries, never past the deadline, never after the client left. What
    /// each answer means (retry, key, breaker) is [`UpstreamVerdict`]'s: transport errors and
    /// 500/502/503/504/529 are retried after an exponential backoff with jitter (or the
    /// upstream's `Retry-After` when longer, capped); a 429 cools its (key, model) pair (for the
    /// `Retry-After`, capped by `rate_limit_cooldown_ms_max`) and is retried on another key at
    /// once, or after the wait when no other key is free; a 401 disables the key and a 403/404
    /// marks its (key, model) pair, both retried at once on another key that may serve the model;
    /// an `insufficient_quota` 429 is relayed at once. A 2xx goes to `on_success` (which reads or
    /// checks the body); any other answer is read whole, secrets redacted, and the last one is
    /// what the client gets when retries run out. Every attempt's outcome goes to the breaker
    /// through `call.record_attempt`.
    fn send<T>(
        &self,
        ctx: &mut WorkerCtx,
        call: &Call<'_>,
        prepared: &Prepared,
        stream: bool,
        mut on_success: impl FnMut(ureq::http::Response<ureq::Body>) -> Result<T, ApiError>,
    ) -> Result<Sent<T>, ApiError> {
        let model = call.job.upstream_model.as_str();
        let mut retries_left = self.retry.max_retries;
        let mut last: Option<Answer> = None;
        loop {
            if call.job.ctl.is_cancelled() {
                return Err(ApiError::client_cancelled());
            }
            let key = match self.keys.pick(model, ctx.next_random()) {
                Ok(key) => key,
                Err(NoKey::CoolingDown(wait)) if retries_left > 0 && fits(call, wait) => {
                    retries_left -= 1;
                    pause(call, wait);
                    continue;
                }
                Err(no_key) => {
                    return last
                        .map(Sent::Answer)
                        .ok_or_else(|| no_key.error(&self.name, model))
                }
            };
            let backoff = backoff(
                self.retry.max_retries - retries_left,
                self.retry.backoff_initial,
                self.retry.backoff_max,
                ctx.next_random(),
            );
            let (step, failure) = match self.attempt(ctx, call, prepared, key, stream) {
                Ok(resp) => match UpstreamVerdict::classify(resp.status().as_u16(), b"") {
                    UpstreamVerdict::Success => {
                        let result = on_success(resp);
                        (call.record_attempt)(!result.as_ref().is_err_and(is_breaker_failure));
                        if result.is_ok() {
                            self.keys.succeeded(key);
                        }
                        return result.map(Sent::Success);
                    }
                    UpstreamVerdict::Invalid => {
                        (call.record_attempt)(false);
                        return Err(self.invalid_status(resp.status().as_u16()));
                    }
                    _ => match self.read_answer(resp, prepared) {
                        Ok(answer) => {
                            let step = self.judge(call, key, &answer, backoff);
                            last = Some(answer);
                            (step, None)
                        }
                        Err(e) => self.failed(call, e, backoff)?,
                    },
                },
                Err(e) => self.failed(call, e, backoff)?,
            };
            match step {
                NextStep::Now if retries_left > 0 => retries_left -= 1,
                NextStep::After(wait) if retries_left > 0 && fits(call, wait) => {
                    retries_left -= 1;
                    pause(call, wait);
                }
                _ => {
                    return match (last, failure) {
                        (Some(answer), _) => Ok(Sent::Answer(answer)),
                        (None, Some(e)) => Err(e),
                        (None, None) => Err(ApiError::internal()),
                    }
                }
            }
        }
    }

    /// A non-2xx answer of key `key`: record it with the breaker, apply what it says of the key,
    /// and plan the next step.
    #[inline(never)]
    fn judge(&self, call: &Call<'_>, key: usize, answer: &Answer, backoff: Duration) -> NextStep {
        let model = call.job.upstream_model.as_str();
        let verdict = UpstreamVerdict::classify(answer.status, &answer.body);
        (call.record_attempt)(!verdict.breaker_failure());
        let retry_after = retry_after_of(&answer.headers, std::time::SystemTime::now());
        let upstream_wait = retry_after.unwrap_or(self.retry.rate_limit_cooldown_default);
        let cool_for = upstream_wait.min(self.retry.rate_limit_cooldown_max);
        match (verdict.key_effect(), verdict) {
            (KeyEffect::None, _) => {}
            (KeyEffect::Disable, _) => {
                self.adapter.unauthorized(self.keys.secret(key));
                self.keys.disable(key, &self.name);
            }
            (KeyEffect::DenyModel, _) => {
                let mark = if answer.status == 403 {
                    ModelMark::Forbidden
                } else {
                    ModelMark::NotFound
                };
                self.keys
                    .mark_model(key, model, mark, self.retry.key_disable);
            }
            (KeyEffect::CoolModel, UpstreamVerdict::QuotaExhausted) => {
                self.keys
                    .mark_model(key, model, ModelMark::QuotaExhausted, cool_for)
            }
            (KeyEffect::CoolModel, _) => {
                self.keys
                    .mark_model(key, model, ModelMark::RateLimited, cool_for)
            }
        }
        // An overloaded upstream's own `Retry-After` is honoured when longer than the backoff.
        let backoff = match retry_after {
            Some(wait) if verdict == UpstreamVerdict::Transient => {
                backoff.max(wait.min(self.retry.rate_limit_cooldown_max))
            }
            _ => backoff,
        };
        next_step(
            verdict.retry(),
            self.keys.other_key_free_in(model, key),
            upstream_wait,
            backoff,
            verdict == UpstreamVerdict::RateLimited,
        )
    }

    /// An attempt that got no answer: a breaker failure unless the client left; transport
    /// failures are retried after `backoff`, anything else ends the call.
    #[inline(never)]
    fn failed(
        &self,
        call: &Call<'_>,
        e: ApiError,
        backoff: Duration,
    ) -> Result<(NextStep, Option<ApiError>), ApiError> {
        if e.kind == ErrorKind::Overloaded {
            // The gateway's own shortage: the upstream was not reached, the breaker learns nothing.
            return Err(e);
        }
        (call.record_attempt)(!is_breaker_failure(&e));
        if e.kind == ErrorKind::UpstreamTransport && !call.job.ctl.is_cancelled() {
            Ok((NextStep::After(backoff), Some(e)))
        } else {
            Err(e)
        }
    }

    /// One attempt with key `key`. A stream gets the request deadline for the upstream's answer
    /// head, `stream_idle_timeout` for every read after it and `stream_duration_max` for its whole
    /// body; a whole answer gets the deadline.
    fn attempt(
        &self,
        ctx: &mut WorkerCtx,
        call: &Call<'_>,
        prepared: &Prepared,
        key: usize,
        stream: bool,
    ) -> Result<ureq::http::Response<ureq::Body>, ApiError> {
        let remaining = call.job.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ApiError::request_timeout());
        }
        let Some(agent) = ctx.agent.as_ref() else {
            return Err(ApiError::internal());
        };
        let request = self.upstream_request(agent, call, prepared, key, stream, remaining)?;
        agent.run(request).map_err(|e| {
            if call.job.ctl.is_cancelled() {
                ApiError::client_cancelled()
            } else {
                self.transport_error(e)
            }
        })
    }

    /// The upstream request of one attempt, with its timeouts. Built in a frame of its own: the
    /// builders are large values moved from step to step, and `attempt`'s frame stays on the
    /// worker's stack while the answer is awaited and parsed, the deepest a call goes.
    #[inline(never)]
    fn upstream_request<'b>(
        &self,
        agent: &ureq::Agent,
        call: &Call<'_>,
        prepared: &'b Prepared,
        key: usize,
        stream: bool,
        remaining: Duration,
    ) -> Result<ureq::http::Request<&'b [u8]>, ApiError> {
        let client = &call.job.request;
        let mut headers: Headers = Vec::with_capacity(8 + self.headers.len());
        headers.push(("content-type".into(), "application/json".into()));
        let accept = match stream {
            true => self.adapter.framing().1,
            false => "application/json",
        };
        headers.push(("accept".into(), accept.into()));
        for (name, value) in &client.forward_headers {
            if *name == "x-request-id" {
                headers.push(((*name).into(), value.clone()));
            }
        }
        for (name, value) in &self.headers {
            headers.push((name.clone().into(), value.clone()));
        }
        self.adapter.authorize(
            self.keys.secret(key),
            &mut Outgoing {
                method: "POST",
                url: &prepared.url,
                headers: &mut headers,
                body: &prepared.body,
                client,
            },
        )?;
        let mut req = ureq::http::Request::post(prepared.url.as_str());
        for (name, value) in headers.iter() {
            req = req.header(name.as_ref(), value.as_str());
        }
        let req = req
            .body(&prepared.body[..])
            .map_err(|e| self.transport_error(e.into()))?;
        let config = agent.configure_request(req);
        let config = if stream {
            config
                .timeout_global(None)
                .timeout_recv_response(Some(remaining))
                .timeout_recv_body(Some(call.stream_duration_max))
                .timeout_per_read(Some(call.stream_idle_timeout))
        } else {
            config.timeout_global(Some(remaining))
        };
        Ok(config.build())
    }

    /// A `stream: true` call: events are passed on one by one as the upstream sends them. Every
    /// byte read (SSE comments such as `: ping` included) is activity of the stream; comments are
    /// not passed on. The stream ends at its terminator: nothing after it is read or passed on.
    pub fn call_stream(
        &self,
        ctx: &mut WorkerCtx,
        call: &Call<'_>,
        sink: &mut dyn StreamSink,
    ) -> Result<StreamResult, ApiError> {
        let prepared = match self.prepare(call, true) {
            Ok(prepared) => prepared,
            Err(answer) => return answer.map(StreamResult::Whole),
        };
        let resp = match self.send(ctx, call, &prepared, true, |resp| self.event_stream(resp))? {
            Sent::Success(resp) => resp,
            Sent::Answer(answer) => return Ok(StreamResult::Whole(answer)),
        };
        let request = &call.job.request;
        let mut convert = translate::stream_converter(
            &prepared.mode,
            prepared.wire,
            request.wants_usage,
            &call.job.upstream_model,
        );
        let end = |error, usage| StreamResult::Streamed { error, usage };
        if !sink.start(relayed_headers(resp.headers())) {
            return Ok(end(None, Usage::default()));
        }
        let reader = resp
            .into_body()
            .into_with_config()
            .limit(UPSTREAM_STREAM_BYTES_MAX)
            .reader();
        let reader = Activity {
            inner: reader,
            ctl: &call.job.ctl,
        };
        let buffered = BufReader::with_capacity(STREAM_READ_BUF_BYTES, reader);
        let mut events: Box<dyn EventSource + '_> = match self.adapter.framing().0 {
            Framing::Sse => Box::new(SseReader::new(buffered)),
            Framing::EventStream => Box::new(EventStreamReader::new(buffered)),
        };
        let mut out = Vec::new();
        loop {
            let step = match events.next_frame() {
                Ok(Some(Frame::Event { name, data })) => {
                    // Error events are scanned for provider secrets; content is not.
                    let redacted = match contains(data, b"\"error\"") {
                        true => self.redact.redact(data),
                        false => None,
                    };
                    let data = redacted.as_deref().unwrap_or(data);
                    convert.event(name, data, &mut out)
                }
                Ok(Some(Frame::Exception {
                    error_type,
                    payload,
                })) => {
                    let redacted = self.redact.redact(payload);
                    let payload = redacted.as_deref().unwrap_or(payload);
                    convert.exception(error_type, payload, &mut out)
                }
                Ok(None) => {
                    return Ok(match convert.end_of_body(&mut out) {
                        Ok(()) => {
                            if !out.is_empty() && sink.event(&mut out) {
                                sink.complete();
                            }
                            end(None, convert.usage())
                        }
                        Err(mut e) => {
                            e.message = format!("provider {}: {}", self.name, e.message).into();
                            end(Some(e), convert.usage())
                        }
                    });
                }
                Err(e) => {
                    let error = if call.job.ctl.is_cancelled() {
                        None
                    } else {
                        Some(self.stream_error(e))
                    };
                    return Ok(end(error, convert.usage()));
                }
            };
            let step = match step {
                Ok(step) => step,
                Err(e) => return Ok(end(Some(e), convert.usage())),
            };
            if !out.is_empty() && !sink.event(&mut out) {
                return Ok(end(None, convert.usage()));
            }
            match step {
                Step::More => {}
                Step::Complete => {
                    sink.complete();
                    let reported = convert.take_reported_error().map(ApiError::already_sent);
                    // The stream is over. One look past the terminator tells whether the body
                    // ends there, so that the connection goes back to the worker's pool; anything
                    // else after it is never read, and dropping the reader closes the connection.
                    let _ = events.at_end();
                    return Ok(end(reported, convert.usage()));
                }
                Step::UpstreamError(e) => {
                    return Ok(StreamResult::Streamed {
                        error: Some(e.already_sent()),
                        usage: convert.usage(),
                    })
                }
            }
        }
    }

    fn stream_error(&self, e: FrameError) -> ApiError {
        let e = match e {
            FrameError::TooLarge => {
                return event_too_large_error(format!(
                    "provider {}: an event is larger than the gateway accepts",
                    self.name
                ))
            }
            FrameError::Corrupt(why) => {
                return ApiError::new(
                    ErrorKind::UpstreamInvalid,
                    "upstream_stream_corrupt",
                    format!("provider {}: the stream is corrupt: {why}", self.name),
                )
            }
            FrameError::Io(e) => e,
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

    /// A 2xx to a stream request must be an event stream of the adapter's framing.
    #[inline(never)]
    fn event_stream(
        &self,
        resp: ureq::http::Response<ureq::Body>,
    ) -> Result<ureq::http::Response<ureq::Body>, ApiError> {
        let media_type = self.adapter.framing().1;
        let is_stream = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with(media_type));
        if is_stream {
            Ok(resp)
        } else {
            Err(self.invalid_response("a stream request was not answered with an event stream"))
        }
    }

    /// A 2xx answer, read whole: it must be a JSON object (its usage is counted), translated
    /// for the client when the formats differ. Not scanned for secrets.
    #[inline(never)]
    fn success_body(
        &self,
        resp: ureq::http::Response<ureq::Body>,
        prepared: &Prepared,
        model: &str,
    ) -> Result<Answer, ApiError> {
        let mut answer = self.read_whole(resp)?;
        let body = std::mem::take(&mut answer.body);
        let (body, usage) = translate::success_answer(&prepared.mode, prepared.wire, body, model)
            .map_err(|e| match e.kind {
            ErrorKind::UpstreamInvalid => self.invalid_response(&e.message),
            _ => e,
        })?;
        answer.body = body;
        answer.content_type = "application/json";
        if prepared.operation != Operation::CountTokens {
            answer.usage = usage;
        }
        if translate::usage_estimated(&prepared.mode) {
            answer
                .headers
                .push((translate::ESTIMATE_HEADER, "embedding-tokens".to_string()));
        }
        Ok(answer)
    }

    /// A non-2xx answer, read whole to pass on, with every provider secret redacted (written
    /// again in the client's format when the formats differ).
    #[inline(never)]
    fn read_answer(
        &self,
        resp: ureq::http::Response<ureq::Body>,
        prepared: &Prepared,
    ) -> Result<Answer, ApiError> {
        let error_type = resp
            .headers()
            .get(AWS_ERROR_TYPE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| crate::formats::bedrock::error_type_name(v).to_owned());
        let mut answer = self.read_whole(resp)?;
        if let Mode::Translated { .. } = prepared.mode {
            let body = std::mem::take(&mut answer.body);
            answer.body = translate::error_answer(
                &prepared.mode,
                prepared.wire,
                answer.status,
                body,
                error_type.as_deref(),
            );
            answer.content_type = "application/json";
        }
        if let Some(body) = self.redact.redact(&answer.body) {
            answer.body = body;
        }
        Ok(answer)
    }

    /// Read a whole answer: status, content type, the relayed headers, body.
    #[inline(never)]
    fn read_whole(&self, mut resp: ureq::http::Response<ureq::Body>) -> Result<Answer, ApiError> {
        let status = resp.status().as_u16();
        let headers = relayed_headers(resp.headers());
        let json = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.contains("json"));
        let mut body = Vec::new();
        resp.body_mut()
            .with_config()
            .limit(UPSTREAM_BODY_BYTES_MAX)
            .reader()
            .read_to_end(&mut body)
            .map_err(|e| self.read_error(e))?;
        Ok(Answer {
            status,
            content_type: if json {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            },
            body,
            headers,
            usage: Usage::default(),
        })
    }

    fn invalid_response(&self, what: &str) -> ApiError {
        ApiError::new(
            ErrorKind::UpstreamInvalid,
            "upstream_invalid_response",
            format!("provider {}: {what}", self.name),
        )
    }

    #[inline(never)]
    fn invalid_status(&self, status: u16) -> ApiError {
        ApiError::new(
            ErrorKind::UpstreamInvalid,
            "upstream_invalid_status",
            format!(
                "provider {}: the upstream answered status {status}",
                self.name
            ),
        )
    }

    #[inline(never)]
    fn transport_error(&self, e: ureq::Error) -> ApiError {
        if let ureq::Error::Io(io) = &e {
            if let Some(what) = local_shortage(io) {
                return self.local_shortage_error(what, io);
            }
        }
        match e {
            ureq::Error::Timeout(_) => ApiError::request_timeout(),
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

    /// The gateway could not open a connection for want of its own resources: the provider is
    /// not at fault (no breaker failure, no retry that would need the same resources); the client
    /// gets a 503 with `Retry-After`, as when the front is at a limit of its own. Logged at most
    /// once every [`LOCAL_SHORTAGE_LOG_EVERY_MS`] per provider.
    #[cold]
    fn local_shortage_error(&self, what: &str, io: &std::io::Error) -> ApiError {
        let now = clock_ms();
        let last = self.local_shortage_logged_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= LOCAL_SHORTAGE_LOG_EVERY_MS)
            && self
                .local_shortage_logged_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log::warn(
                "cannot open a connection to the provider: the gateway is out of its own \
                 resources (raise LimitNOFILE or lower the pools' workers_max for descriptors)",
                &[("provider", &self.name), ("error", &io.to_string())],
            );
        }
        ApiError::new(
            ErrorKind::Overloaded,
            "gateway_out_of_resources",
            format!(
                "the gateway is out of {what} to reach provider {}; retry later",
                self.name
            ),
        )
        .with_retry_after(LOCAL_SHORTAGE_RETRY_AFTER_S)
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

/// rustls with the webpki roots, or only the CAs of the provider's `ca_file` (as curl's
/// `--cacert` does: a private vLLM behind an internal CA trusts only that CA).
fn tls_config(
    cfg: &ProviderConfig,
) -> Result<(ureq::tls::TlsConfig, Arc<rustls::ClientConfig>), String> {
    let mut roots = ureq::tls::RootCerts::WebPki;
    let mut ders = None;
    if let Some(path) = &cfg.ca_file {
        // The same reading and checks as the config's (`--check` accepts only what starts).
        let certs = crate::config::ca_certificates(path)
            .map_err(|e| format!("providers.{}.ca_file: {}: {e}", cfg.name, path.display()))?;
        ders = Some(certs.iter().map(|c| c.der().to_vec()).collect::<Vec<_>>());
        roots = ureq::tls::RootCerts::Specific(Arc::new(certs));
    }
    let client = super::tls::client_config(ders.as_deref())
        .map_err(|e| format!("providers.{}: {e}", cfg.name))?;
    Ok((
        ureq::tls::TlsConfig::builder().root_certs(roots).build(),
        client,
    ))
}

/// A TCP connection to the host and port of `url`.
fn connect_probe(url: &str, timeout: Duration) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .map(|r| (r, 443))
        .or_else(|| url.strip_prefix("http://").map(|r| (r, 80)));
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

/// The answer to an operation a provider has no endpoint for: a 404 that names both.
pub fn unsupported_operation(provider: &str, operation: Operation) -> ApiError {
    let what = match operation {
        Operation::Chat => "chat",
        Operation::CountTokens => "token counting",
        Operation::Embeddings => "embeddings",
        Operation::Completions => "legacy completions (/v1/completions)",
    };
    ApiError::new(
        ErrorKind::NotFound,
        "unsupported_operation",
        format!("provider {provider} does not offer {what}"),
    )
}

/// The upstream's response headers passed on to the client (rate-limit state; a `Retry-After`
/// only when it is a delay or a date). Azure's `retry-after-ms` is passed on too, and stands in
/// for a missing `Retry-After` (rounded up to whole seconds).
fn relayed_headers(from: &ureq::http::HeaderMap) -> Vec<(&'static str, String)> {
    let mut headers = Vec::new();
    for name in translate::RELAYED_HEADERS {
        let Some(v) = from.get(name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        if name == "retry-after" && parse_retry_after(v, std::time::SystemTime::now()).is_none() {
            continue;
        }
        headers.push((name, v.to_string()));
    }
    let retry_ms = from
        .get(RETRY_AFTER_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Some((v, parse_retry_after_ms(v)?)));
    if let Some((value, wait)) = retry_ms {
        if !headers.iter().any(|(n, _)| *n == "retry-after") {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.push(("retry-after", secs.to_string()));
        }
        headers.push((RETRY_AFTER_MS, value.to_string()));
    }
    headers
}

/// The wait an answer's headers ask for: Azure's `retry-after-ms` (the more precise) when it is
/// there, else `Retry-After`.
fn retry_after_of(
    headers: &[(&'static str, String)],
    now: std::time::SystemTime,
) -> Option<Duration> {
    let value = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v);
    value(RETRY_AFTER_MS)
        .and_then(|v| parse_retry_after_ms(v))
        .or_else(|| value("retry-after").and_then(|v| parse_retry_after(v, now)))
}

/// The slots of the key pool: the configured keys, or for a provider without keys (a local server,
/// Azure with Entra ID tokens) one slot with an empty secret, for which the adapter sends no key.
/// The pool's refusal handling then applies to the provider's one credential: a 401 takes it out
/// until its re-probe.
fn credential_slots(cfg: &ProviderConfig) -> Vec<KeyConfig> {
    if !cfg.keys.is_empty() {
        return cfg.keys.clone();
    }
    vec![KeyConfig {
        secret: Secret::new(String::new()),
        weight: 1,
        models: Vec::new(),
    }]
}

/// Whether an attempt's error counts against the provider in its circuit breaker: no answer, a
/// timeout or an unusable answer (a client that left is no failure of the provider).
fn is_breaker_failure(e: &ApiError) -> bool {
    matches!(
        e.kind,
        ErrorKind::UpstreamTransport | ErrorKind::UpstreamInvalid | ErrorKind::RequestTimeout
    )
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether waiting `wait` still leaves time before the deadline for another attempt.
fn fits(call: &Call<'_>, wait: Duration) -> bool {
    Instant::now() + wait < call.job.deadline
}

/// Sleep (this is a worker thread) in slices, returning early when the client leaves.
fn pause(call: &Call<'_>, wait: Duration) {
    let until = Instant::now() + wait;
    while !call.job.ctl.is_cancelled() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(PAUSE_SLICE));
    }
}

/// An upstream stream's body: every read that brings bytes marks the job active, so that a
/// stream kept alive by comments alone is neither cut as idle nor taken for a stuck worker.
struct Activity<'a, R> {
    inner: R,
    ctl: &'a JobCtl,
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

/// What the gateway itself ran out of when an upstream connection could not be opened (the
/// process's or the system's descriptors, local ports for a new connection, kernel memory), or
/// `None` for a failure of the network or the upstream.
fn local_shortage(e: &std::io::Error) -> Option<&'static str> {
    match e.raw_os_error()? {
        libc::EMFILE | libc::ENFILE => Some("file descriptors"),
        libc::EADDRNOTAVAIL => Some("local ports"),
        libc::ENOMEM | libc::ENOBUFS => Some("memory"),
        _ => None,
    }
}

/// rustls reports a failed handshake (untrusted certificate, wrong name, ...) as an I/O error.
fn is_tls_failure(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

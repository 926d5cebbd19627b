//! The gateway application behind the two listeners: the API (`/v1/chat/completions`,
//! `/v1/models`) and the admin listener (`/stats`, `/metrics`, `/health`).

use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::api::openai::{ModelList, ModelObject};
use crate::api::ChatRequest;
use crate::config::Config;
use crate::error::{ApiError, ErrorKind};
use crate::http::{BodyStream, FrontStats, Handler, Method, Request, Response, StreamPoll};
use crate::log::{self, AccessRecord};
use crate::objpool::{ObjPool, ObjPoolStats, Pooled};
use crate::pool::{
    clock_ms, shutting_down, waiters, CancelReason, FullReply, Job, ProviderPool, Reply,
    ReplyChannel,
};
use crate::providers::sse::{error_event, stream_duration_error, stream_idle_error, DONE_EVENT};
use crate::providers::status::UpstreamVerdict;
use crate::route::Router;
use crate::service::ServiceStats;
use crate::stats::prometheus;

/// How long past a bound a waiting request gives a worker to answer before giving up on it: past
/// the request deadline for the answer to begin, past the stream's idle timeout since its last
/// activity, past the stream's longest duration.
pub const REPLY_GRACE: Duration = Duration::from_millis(500);
/// Response header naming the provider that served a request.
pub const PROVIDER_HEADER: &str = "x-deepintshield-provider";

/// Everything the handlers share: one generation of the running config. Built at start-up and
/// again by each reload (see `crate::service`); handlers load the current one per request.
pub struct Gateway {
    pub router: Router,
    pub pools: Vec<Arc<ProviderPool>>,
    pub json_depth_max: usize,
    pub replies: Arc<ObjPool<ReplyChannel>>,
    pub objpools: Vec<Arc<dyn ObjPoolStats>>,
    pub started: Instant,
    /// Set when shutdown begins (health turns 503).
    pub draining: AtomicBool,
    /// The API listener's counters, set once it is serving.
    pub front: OnceLock<Arc<FrontStats>>,
    /// The config this generation was built from.
    pub config: Arc<Config>,
    /// 1 at start-up, +1 per applied reload.
    pub generation: u64,
}

impl Gateway {
    /// A gateway serving `config` through `pools` (one per provider, in `config.providers`
    /// order, which is the router's numbering). The object pools and `started` are shared by
    /// every generation.
    pub fn new(
        config: Arc<Config>,
        pools: Vec<Arc<ProviderPool>>,
        replies: Arc<ObjPool<ReplyChannel>>,
        objpools: Vec<Arc<dyn ObjPoolStats>>,
        started: Instant,
        generation: u64,
    ) -> Gateway {
        debug_assert_eq!(pools.len(), config.providers.len());
        Gateway {
            router: Router::new(&config),
            pools,
            json_depth_max: config.server.json_depth_max,
            replies,
            objpools,
            started,
            draining: AtomicBool::new(false),
            front: OnceLock::new(),
            config,
            generation,
        }
    }
}

impl Gateway {
    /// A chat completion: the primary route, then the model's configured fallbacks, then the
    /// request's own `fallbacks`, each tried when the one before failed in a way another provider
    /// may not (breaker open, queue full, transport failure, an unusable answer, or an upstream
    /// status whose [`UpstreamVerdict::fallback`] says so: 5xx, 429, 401). When all fail, the
    /// primary's answer is returned.
    fn chat(&self, req: &mut Request, rec: &mut AccessRecord) -> Result<Response, ApiError> {
        self.router.authorize(req)?;
        let chat = ChatRequest::parse(&req.body, self.json_depth_max)?;
        rec.model.clone_from(&chat.model);
        rec.stream = chat.stream;
        let mut routes = vec![self.router.resolve(&chat.model)?];
        for target in self.router.fallbacks_for(&chat.model) {
            routes.push(self.router.resolve(target)?);
        }
        for target in &chat.fallbacks {
            routes.push(self.router.resolve(target).map_err(|_| {
                ApiError::bad_request(
                    "invalid_fallbacks",
                    format!("fallback model `{target}` cannot be routed"),
                )
            })?);
        }
        let mut primary: Option<(Result<Response, ApiError>, String)> = None;
        for route in routes {
            let pool = self.pools.get(route.pool).ok_or_else(ApiError::internal)?;
            rec.provider = pool.name().to_string();
            match self.attempt(req, rec, &chat, pool, route.upstream_model) {
                Attempt::Done(result) => return result,
                Attempt::TryNext(result) => {
                    if primary.is_none() {
                        primary = Some((result, pool.name().to_string()));
                    }
                }
            }
        }
        let (result, provider) = primary.ok_or_else(ApiError::internal)?;
        rec.provider = provider;
        result
    }

    /// Send the request to one provider's pool and wait for its first reply.
    fn attempt(
        &self,
        req: &Request,
        rec: &mut AccessRecord,
        chat: &ChatRequest<'_>,
        pool: &Arc<ProviderPool>,
        upstream_model: String,
    ) -> Attempt {
        let deadline = req.received_at + pool.config().request_timeout;
        if Instant::now() >= deadline {
            return Attempt::TryNext(Err(ApiError::new(
                ErrorKind::RequestTimeout,
                "request_timeout",
                "the request timed out before a provider could take it",
            )));
        }
        if !pool.breaker().allow() {
            return Attempt::TryNext(Err(ApiError::new(
                ErrorKind::Unavailable,
                "circuit_open",
                format!(
                    "provider {} is failing and temporarily not used; retry later",
                    pool.name()
                ),
            )
            .with_retry_after(1)));
        }
        let mut body = Vec::with_capacity(req.body.len() + 48);
        chat.write_with_model(&upstream_model, &mut body);
        let mut channel = self.replies.get();
        // Declared after `channel`, so it leaves the registry before the channel is recycled.
        let watch = match waiters::watch(&channel.tx) {
            Ok(watch) => watch,
            Err(e) => {
                log::error("cannot wait for replies", &[("error", &e)]);
                return Attempt::Done(Err(ApiError::internal()));
            }
        };
        let job = Job {
            body,
            upstream_model,
            received_at: req.received_at,
            enqueued_at: Instant::now(),
            deadline,
            stream: chat.stream,
            client_wants_usage: chat.wants_usage(),
            reply: channel.tx.clone(),
            ctl: Arc::clone(&channel.ctl),
        };
        if let Err(e) = pool.submit(job) {
            return Attempt::fail(e);
        }
        let first = match wait_first_reply(req, &mut channel, pool, deadline) {
            Ok(first) => first,
            Err(e) if e.code == "client_cancelled" => return Attempt::Done(Err(e)),
            Err(e) => return Attempt::fail(e),
        };
        match first {
            Reply::Full(full) => {
                let FullReply { result, timings } = *full;
                rec.queue_wait_us = timings.queue_wait.as_micros() as u64;
                rec.upstream_us = timings.upstream.map_or(0, |d| d.as_micros() as u64);
                let up = match result {
                    Ok(up) => up,
                    Err(e) => return Attempt::fail(e),
                };
                rec.prompt_tokens = up.prompt_tokens;
                rec.completion_tokens = up.completion_tokens;
                let status = up.status;
                let fallback = UpstreamVerdict::classify(status, &up.body).fallback();
                let mut resp = Response::json(status, up.body);
                resp.content_type = up.content_type;
                resp.headers
                    .push((PROVIDER_HEADER, pool.name().to_string()));
                if let (Some(ra), 429 | 503) = (up.retry_after, status) {
                    resp.headers.push(("retry-after", ra));
                }
                if fallback {
                    Attempt::TryNext(Ok(resp))
                } else {
                    Attempt::Done(Ok(resp))
                }
            }
            Reply::StreamStart(timings) => {
                rec.queue_wait_us = timings.queue_wait.as_micros() as u64;
                rec.upstream_us = timings.upstream.map_or(0, |d| d.as_micros() as u64);
                rec.status = 200;
                let stream = GatewayStream {
                    _watch: watch,
                    channel,
                    pool: Arc::clone(pool),
                    rec: rec.clone(),
                    received_at: req.received_at,
                    last_message_ms: clock_ms(),
                    complete: false,
                    pending: None,
                    finished: false,
                };
                let mut resp = Response::stream(200, "text/event-stream", Box::new(stream));
                resp.headers.push(("cache-control", "no-cache".to_string()));
                resp.headers
                    .push((PROVIDER_HEADER, pool.name().to_string()));
                Attempt::Done(Ok(resp))
            }
            Reply::Event(_) | Reply::StreamEnd { .. } | Reply::Nudge => {
                // A worker never sends these before StreamStart (and nudges are consumed by
                // `wait_first_reply`); never reuse this channel.
                channel.mark_single_use();
                Attempt::Done(Err(ApiError::internal()))
            }
        }
    }

    fn models(&self, req: &Request) -> Result<Response, ApiError> {
        self.router.authorize(req)?;
        let created = self.created_s();
        let list = ModelList {
            object: "list",
            data: self
                .router
                .listed_models()
                .iter()
                .map(|(id, owner)| ModelObject {
                    id,
                    object: "model",
                    created,
                    owned_by: owner,
                })
                .collect(),
        };
        let body = serde_json::to_vec(&list).map_err(|_| ApiError::internal())?;
        Ok(Response::json(200, body))
    }

    fn model(&self, req: &Request, id: &str) -> Result<Response, ApiError> {
        self.router.authorize(req)?;
        let Some((id, owner)) = self.router.listed_models().iter().find(|(m, _)| m == id) else {
            self.router.resolve(id)?;
            // Routable but not listed (a provider that accepts any model): describe it anyway.
            let owner = id.split_once('/').map_or(id, |(p, _)| p);
            return self.model_object(id, owner);
        };
        self.model_object(id, owner)
    }

    fn model_object(&self, id: &str, owner: &str) -> Result<Response, ApiError> {
        let obj = ModelObject {
            id,
            object: "model",
            created: self.created_s(),
            owned_by: owner,
        };
        let body = serde_json::to_vec(&obj).map_err(|_| ApiError::internal())?;
        Ok(Response::json(200, body))
    }

    fn created_s(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .saturating_sub(self.started.elapsed().as_secs())
    }

    /// The `/stats` document.
    pub fn stats_json(&self) -> serde_json::Value {
        let mut pools = serde_json::Map::new();
        for p in &self.pools {
            pools.insert(p.name().to_string(), p.to_json());
        }
        let objpools: Vec<_> = self.objpools.iter().map(|p| p.snapshot()).collect();
        json!({
            "uptime_s": self.started.elapsed().as_secs(),
            "version": env!("CARGO_PKG_VERSION"),
            "draining": self.draining.load(Ordering::Relaxed),
            "front": self.front.get().map(|f| f.to_json()),
            "pools": pools,
            "objpools": objpools,
        })
    }
}

/// The API listener's handler: serves each request on the gateway current when it arrived.
pub struct ApiHandler(pub Arc<ArcSwap<Gateway>>);

impl ApiHandler {
    /// `g.chat`, retried once on the current gateway when `g` was swapped out by a reload and its
    /// pool closed before the job was submitted (so a reload never fails a request). Relies on
    /// `chat` leaving `req` as it found it when submitting fails.
    pub(crate) fn chat_current(
        &self,
        g: &Arc<Gateway>,
        req: &mut Request,
        rec: &mut AccessRecord,
    ) -> Result<Response, ApiError> {
        match g.chat(req, rec) {
            Err(e) if e.code == "shutting_down" => {
                let current = self.0.load_full();
                if Arc::ptr_eq(&current, g) {
                    return Err(e);
                }
                current.chat(req, rec)
            }
            other => other,
        }
    }
}

/// What an API request asks for, from its method and path alone.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Models,
    /// `GET /v1/models/{id}`.
    Model,
}

/// The endpoint of `req`, or the 404/405 it gets.
fn endpoint(req: &Request) -> Result<Endpoint, ApiError> {
    match (req.method, req.path.as_str()) {
        (Method::Post, "/v1/chat/completions") => Ok(Endpoint::Chat),
        (Method::Get | Method::Head, "/v1/models") => Ok(Endpoint::Models),
        (Method::Get | Method::Head, p) if p.starts_with("/v1/models/") => Ok(Endpoint::Model),
        (_, "/v1/chat/completions" | "/v1/models") => Err(method_not_allowed(req.method)),
        (_, p) => Err(not_found(p)),
    }
}

impl Handler for ApiHandler {
    /// Path, method and client key are checked on the head, so that a request bound to be
    /// refused never costs a body read. A refused chat request still writes its access line.
    fn admit(&self, req: &Request) -> Option<Response> {
        let refusal = match endpoint(req) {
            Err(e) => e,
            Ok(ep) => {
                let e = self.0.load().router.authorize(req).err()?;
                if ep == Endpoint::Chat {
                    log::access(&AccessRecord {
                        request_id: req.id.clone(),
                        status: e.status(),
                        error_code: e.code,
                        total_us: req.received_at.elapsed().as_micros() as u64,
                        ..AccessRecord::default()
                    });
                }
                e
            }
        };
        Some(Response::error(&refusal))
    }

    fn handle(&self, req: &mut Request) -> Response {
        let current = self.0.load_full();
        let g = &current;
        let result = match endpoint(req) {
            Ok(Endpoint::Chat) => return self.chat_logged(g, req),
            Ok(Endpoint::Models) => g.models(req),
            Ok(Endpoint::Model) => g.model(req, req.path.get("/v1/models/".len()..).unwrap_or("")),
            Err(e) => Err(e),
        };
        result.unwrap_or_else(|e| Response::error(&e))
    }
}

impl ApiHandler {
    /// A chat request, answered and written to the access log (a stream writes its line when
    /// it ends).
    fn chat_logged(&self, g: &Arc<Gateway>, req: &mut Request) -> Response {
        let mut rec = AccessRecord {
            request_id: req.id.clone(),
            ..AccessRecord::default()
        };
        let resp = self.chat_current(g, req, &mut rec).unwrap_or_else(|e| {
            rec.error_code = e.code;
            Response::error(&e)
        });
        rec.status = resp.status;
        rec.total_us = req.received_at.elapsed().as_micros() as u64;
        if resp.stream.is_none() {
            log::access(&rec);
        }
        resp
    }
}

/// The admin listener's handler.
pub struct AdminHandler {
    pub gateway: Arc<ArcSwap<Gateway>>,
    pub service: Arc<ServiceStats>,
}

impl AdminHandler {
    /// `/stats`: the gateway's document plus the config generation, reload counters and each
    /// pool's number of upstream keys (never the keys).
    fn stats(&self, g: &Gateway) -> serde_json::Value {
        let mut v = g.stats_json();
        v["config"] = json!({
            "path": g.config.path.display().to_string(),
            "generation": g.generation,
        });
        v["service"] = self.service.to_json();
        for (name, p) in &g.config.providers {
            if let Some(pool) = v["pools"].get_mut(name) {
                pool["keys"] = p.keys.len().into();
            }
        }
        v
    }

    fn metrics(&self, g: &Gateway) -> Response {
        let text = prometheus::render(&prometheus::Scrape {
            pools: &g.pools,
            front: g.front.get().map(|f| &**f),
            objpools: &g.objpools,
            service: &self.service,
            generation: g.generation,
            draining: g.draining.load(Ordering::Relaxed),
        });
        Response {
            status: 200,
            content_type: prometheus::CONTENT_TYPE,
            headers: Vec::new(),
            body: text.into_bytes(),
            stream: None,
        }
    }
}

impl Handler for AdminHandler {
    /// Every admin endpoint is a `GET`: anything else is answered before its body is read.
    fn admit(&self, req: &Request) -> Option<Response> {
        match (req.method, req.path.as_str()) {
            (Method::Get | Method::Head, "/health" | "/stats" | "/metrics") => None,
            (_, "/health" | "/stats" | "/metrics") => {
                Some(Response::error(&method_not_allowed(req.method)))
            }
            (_, path) => Some(Response::error(&not_found(path))),
        }
    }

    fn handle(&self, req: &mut Request) -> Response {
        let current = self.gateway.load_full();
        let g = &current;
        match (req.method, req.path.as_str()) {
            (Method::Get | Method::Head, "/health") => {
                if g.draining.load(Ordering::Relaxed) {
                    Response::json(503, br#"{"status":"draining"}"#.to_vec())
                } else {
                    Response::json(200, br#"{"status":"ok"}"#.to_vec())
                }
            }
            (Method::Get | Method::Head, "/stats") => {
                let body = serde_json::to_vec_pretty(&self.stats(g)).unwrap_or_default();
                Response::json(200, body)
            }
            (Method::Get | Method::Head, "/metrics") => self.metrics(g),
            (_, "/health" | "/stats" | "/metrics") => {
                Response::error(&method_not_allowed(req.method))
            }
            (_, path) => Response::error(&not_found(path)),
        }
    }
}

fn method_not_allowed(m: Method) -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        "method_not_allowed",
        format!("method {m:?} is not allowed on this path"),
    )
}

fn not_found(path: &str) -> ApiError {
    let shown: String = path.chars().take(200).collect();
    ApiError::new(
        ErrorKind::NotFound,
        "not_found",
        format!("no route for {shown}"),
    )
}

/// How one provider attempt of a request ended.
enum Attempt {
    /// The answer for the client (success, or a failure another provider would not fix).
    Done(Result<Response, ApiError>),
    /// A failure another provider may not have: try the next one (keep this if it is the primary).
    TryNext(Result<Response, ApiError>),
}

impl Attempt {
    fn fail(e: ApiError) -> Attempt {
        if e.kind.retryable() || e.kind == ErrorKind::RequestTimeout {
            Attempt::TryNext(Err(e))
        } else {
            Attempt::Done(Err(e))
        }
    }
}

fn client_cancelled() -> ApiError {
    ApiError::new(
        ErrorKind::Unavailable,
        "client_cancelled",
        "the client went away",
    )
}

/// Wait for a job's first reply without blocking the scheduler thread (and without a `may` timer:
/// see [`waiters`]; the channel must be registered there). Gives up (and stops the job) when the
/// client goes away, when the worker is stuck past the deadline, or when the shutdown deadline
/// passed (the pool was abandoned); each is checked at each nudge.
fn wait_first_reply(
    req: &Request,
    channel: &mut Pooled<ReplyChannel>,
    pool: &ProviderPool,
    deadline: Instant,
) -> Result<Reply, ApiError> {
    let give_up = deadline + REPLY_GRACE;
    loop {
        match channel.rx.recv() {
            Ok(Reply::Nudge) => {}
            Ok(reply) => return Ok(reply),
            // The channel holds a sender of its own: it cannot disconnect.
            Err(_) => {
                channel.mark_single_use();
                return Err(ApiError::internal());
            }
        }
        if pool.abandoned() {
            // The worker was told to stop and has not answered yet: answer for it.
            channel.ctl.cancel_for(CancelReason::Shutdown);
            channel.mark_single_use();
            return Err(shutting_down());
        }
        if Instant::now() >= give_up {
            // The worker is stuck past the deadline: answer now, never reuse this channel.
            channel.ctl.cancel_for(CancelReason::Stalled);
            channel.mark_single_use();
            let counters = &pool.stats().counters;
            counters.reply_timeouts.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(
                ErrorKind::RequestTimeout,
                "request_timeout",
                "the provider did not answer within the request timeout",
            ));
        }
        if req.client_gone() {
            channel.ctl.cancel();
            channel.mark_single_use();
            let counters = &pool.stats().counters;
            counters.client_cancelled.fetch_add(1, Ordering::Relaxed);
            return Err(client_cancelled());
        }
    }
}

/// A streamed answer on its way from a worker to the client: SSE events as the worker reads them.
struct GatewayStream {
    /// Before `channel`: leaves the nudge registry before the channel is recycled.
    _watch: waiters::Watch,
    channel: Pooled<ReplyChannel>,
    pool: Arc<ProviderPool>,
    rec: AccessRecord,
    received_at: Instant,
    /// When the last message came from the worker ([`clock_ms`]).
    last_message_ms: u64,
    /// The terminator (`data: [DONE]`) was passed on: nothing may follow it but the end.
    complete: bool,
    /// An error event to write before the end.
    pending: Option<Vec<u8>>,
    finished: bool,
}

impl GatewayStream {
    fn fail(&mut self, err: &ApiError) -> StreamPoll {
        self.finished = true;
        self.rec.error_code = err.code;
        StreamPoll::Chunk(error_event(err))
    }

    /// At a nudge: why to end the stream now although its worker has not, if it should be. The
    /// worker ends a stream at its own bounds; these catch a worker that does not (stuck) and
    /// the shutdown deadline. The stream's activity is the worker's (every byte it reads, SSE
    /// comments included), so a stream kept alive by comments is not taken for a stuck one.
    fn overdue(&self) -> Option<(ApiError, CancelReason)> {
        if self.pool.abandoned() {
            return Some((shutting_down(), CancelReason::Shutdown));
        }
        let ctl = &self.channel.ctl;
        let now_ms = clock_ms();
        let grace_ms = REPLY_GRACE.as_millis() as u64;
        let active_ms = ctl.activity_ms().max(self.last_message_ms);
        let idle_ms = self.pool.stream_idle_timeout().as_millis() as u64;
        if now_ms > active_ms + idle_ms + grace_ms {
            let e = stream_idle_error("the provider stopped sending events");
            return Some((e, CancelReason::Stalled));
        }
        match ctl.stream_until_ms() {
            Some(until_ms) if now_ms > until_ms + grace_ms => {
                let e = stream_duration_error("the stream ran longer than the gateway allows");
                Some((e, CancelReason::Stalled))
            }
            _ => None,
        }
    }
}

impl BodyStream for GatewayStream {
    /// Waits for the next event without a timer; the nudges of [`waiters`] (every
    /// `STREAM_POLL_WAIT`, the server's `wait`) bound the wait.
    fn poll(&mut self, _wait: Duration) -> StreamPoll {
        if let Some(event) = self.pending.take() {
            return StreamPoll::Chunk(event);
        }
        if self.finished {
            return StreamPoll::End;
        }
        match self.channel.rx.recv() {
            Ok(Reply::Event(bytes)) => {
                let ctl = &self.channel.ctl;
                ctl.events_in_flight.fetch_sub(1, Ordering::AcqRel);
                ctl.bytes_in_flight.fetch_sub(bytes.len(), Ordering::AcqRel);
                self.last_message_ms = clock_ms();
                self.complete |= bytes == DONE_EVENT;
                StreamPoll::Chunk(bytes)
            }
            Ok(Reply::StreamEnd {
                error,
                prompt_tokens,
                completion_tokens,
            }) => {
                self.rec.prompt_tokens = prompt_tokens;
                self.rec.completion_tokens = completion_tokens;
                match error {
                    Some(e) => self.fail(&e),
                    None => {
                        self.finished = true;
                        StreamPoll::End
                    }
                }
            }
            Ok(Reply::Full(_) | Reply::StreamStart(_)) => StreamPoll::Pending,
            // The channel holds a sender of its own: it cannot disconnect.
            Err(_) => {
                self.channel.mark_single_use();
                self.fail(&ApiError::internal())
            }
            Ok(Reply::Nudge) => {
                let Some((error, reason)) = self.overdue() else {
                    return StreamPoll::Pending;
                };
                self.channel.ctl.cancel_for(reason);
                self.channel.mark_single_use();
                if self.complete {
                    self.finished = true;
                    return StreamPoll::End;
                }
                let counters = &self.pool.stats().counters;
                if reason == CancelReason::Stalled {
                    counters.reply_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                counters.stream_errors.fetch_add(1, Ordering::Relaxed);
                self.fail(&error)
            }
        }
    }

    fn cancel(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.channel.ctl.cancel();
        self.channel.mark_single_use();
        let counters = &self.pool.stats().counters;
        counters.client_cancelled.fetch_add(1, Ordering::Relaxed);
        self.rec.error_code = "client_cancelled";
    }
}

impl Drop for GatewayStream {
    fn drop(&mut self) {
        self.rec.total_us = self.received_at.elapsed().as_micros() as u64;
        log::access(&self.rec);
    }
}

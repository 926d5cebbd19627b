//! One chat request on the coroutine: read its routing head, resolve the primary route and its
//! fallbacks, submit a job to each provider pool in turn, and wait for the first reply without
//! blocking the scheduler thread. The body itself is rewritten or translated by the worker.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::stream::GatewayStream;
use super::{error_for, ApiHandler, Gateway, PROVIDER_HEADER};
use crate::api::RouteHead;
use crate::error::{ApiError, ErrorKind};
use crate::http::{Request, Response};
use crate::job::Usage;
use crate::job::{
    CancelReason, ClientApi, ClientRequest, FullReply, Job, Reply, ReplyChannel, StreamStart,
    REPLY_GRACE,
};
use crate::log::{self, AccessRecord};
use crate::objpool::Pooled;
use crate::plugins::{Outcome, Pending, RequestCtx, Stop, Target};
use crate::pool::{waiters, ProviderPool};
use crate::providers::status::UpstreamVerdict;

/// Request headers an Anthropic client's request carries upstream (to an Anthropic provider).
const ANTHROPIC_FORWARDED: [&str; 2] = ["anthropic-version", "anthropic-beta"];
/// Longest forwarded header value, bytes; longer ones are not forwarded.
const FORWARDED_VALUE_BYTES_MAX: usize = 4096;

impl ApiHandler {
    /// `g.chat`, retried once on the current gateway when `g` was swapped out by a reload and its
    /// pool closed before the job was submitted (so a reload never fails a request).
    pub(crate) fn chat_current(
        &self,
        g: &Arc<Gateway>,
        req: &mut Request,
        api: ClientApi,
        rec: &mut AccessRecord,
    ) -> Result<Response, ApiError> {
        let principal = g.authorize(req)?;
        let head = RouteHead::parse(api, &req.body, g.json_depth_max)?;
        rec.model.clone_from(&head.model);
        rec.stream = head.stream;
        let routes = g.targets(&head)?;
        let body_bytes = req.body.len();
        let request = Arc::new(client_request(req, api, &head));
        let mut state = ChatState::default();
        if !g.pipeline.is_empty() {
            let mut ctx = RequestCtx {
                request_id: req.id.clone(),
                api,
                model: head.model.clone(),
                stream: head.stream,
                principal,
                routes,
                body_bytes,
                received_at: req.received_at,
                tokens_estimated: 0,
            };
            let run = g.pipeline.pre(&mut ctx);
            let pending = Pending {
                pipeline: Arc::clone(&g.pipeline),
                ctx,
                ran: run.ran,
            };
            match run.stop {
                None => state.pending = Some(pending),
                Some(stop) => return Ok(stopped(req, rec, pending, stop)),
            }
        } else {
            state.routes = routes;
        }
        let routes = match &state.pending {
            Some(p) => p.ctx.routes.clone(),
            None => std::mem::take(&mut state.routes),
        };
        let result = match g.chat(req, &request, &routes, rec, &mut state) {
            Err(e) if e.kind == ErrorKind::ShuttingDown => {
                let current = self.0.load_full();
                if Arc::ptr_eq(&current, g) {
                    Err(e)
                } else {
                    current.chat(req, &request, &routes, rec, &mut state)
                }
            }
            other => other,
        };
        if let Some(pending) = state.pending.take() {
            let (status, error_code) = match &result {
                Ok(resp) => (resp.status, ""),
                Err(e) => (e.status(), e.code),
            };
            pending.finish(Outcome {
                status,
                served: state.served.take(),
                usage: state.usage,
                error_code,
                ..Outcome::default()
            });
        }
        result
    }
}

/// The answer of a request a pre-hook stopped, after the post-hooks of the plugins that ran.
fn stopped(req: &Request, rec: &mut AccessRecord, pending: Pending, stop: Stop) -> Response {
    let resp = match stop {
        Stop::Reject(r) => {
            rec.error_code = r.error.code;
            let mut resp = error_for(req, &r.error);
            resp.headers.extend(r.headers);
            resp
        }
        Stop::Answer(resp) => resp,
    };
    pending.finish(Outcome {
        status: resp.status,
        error_code: rec.error_code,
        ..Outcome::default()
    });
    resp
}

/// The route that answered an attempt and the usage it reported.
type Served = (Option<Target>, Usage);

/// A request's progress through its routes, for its post-hooks: the pipeline state (taken by a
/// stream, whose end runs them), the route that answered and the usage it reported.
#[derive(Default)]
pub(crate) struct ChatState {
    pending: Option<Pending>,
    routes: Vec<Target>,
    served: Option<Target>,
    usage: Usage,
}

impl Gateway {
    /// The routes of a request: its model's, then the model's configured fallbacks, then the
    /// request's own `fallbacks`.
    fn targets(&self, head: &RouteHead) -> Result<Vec<Target>, ApiError> {
        let target = |route: crate::route::Route| -> Result<Target, ApiError> {
            let pool = self.pools.get(route.pool).ok_or_else(ApiError::internal)?;
            let kind = self
                .config
                .providers
                .get(pool.name())
                .map_or("", |p| p.kind.name());
            Ok(Target {
                provider: pool.name().to_string(),
                kind,
                model: route.upstream_model,
            })
        };
        let mut routes = vec![target(self.router.resolve(&head.model)?)?];
        for name in self.router.fallbacks_for(&head.model) {
            routes.push(target(self.router.resolve(name)?)?);
        }
        for name in &head.fallbacks {
            let route = self.router.resolve(name).map_err(|_| {
                ApiError::bad_request(
                    "invalid_fallbacks",
                    format!("fallback model `{name}` cannot be routed"),
                )
            })?;
            routes.push(target(route)?);
        }
        Ok(routes)
    }
}

/// What every attempt of the request shares: the body (moved out of the connection's request),
/// its flags and the headers passed on upstream.
fn client_request(req: &mut Request, api: ClientApi, head: &RouteHead) -> ClientRequest {
    let mut forward_headers = vec![("x-request-id", req.id.clone())];
    if api.is_anthropic() {
        for name in ANTHROPIC_FORWARDED {
            let value = req
                .header(name)
                .filter(|v| v.len() <= FORWARDED_VALUE_BYTES_MAX);
            if let Some(value) = value.and_then(|v| std::str::from_utf8(v).ok()) {
                forward_headers.push((name, value.to_string()));
            }
        }
    }
    ClientRequest {
        api,
        body: std::mem::take(&mut req.body),
        stream: head.stream,
        wants_usage: head.wants_usage,
        forward_headers,
    }
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

impl Gateway {
    /// A chat request: the primary route, then the model's configured fallbacks, then the
    /// request's own `fallbacks`, each tried when the one before failed in a way another provider
    /// may not (breaker open, queue full, transport failure, an unusable answer, or an upstream
    /// status whose [`UpstreamVerdict::fallback`] says so: 5xx, 429, 401). When all fail, the
    /// primary's answer is returned.
    fn chat(
        &self,
        req: &Request,
        request: &Arc<ClientRequest>,
        routes: &[Target],
        rec: &mut AccessRecord,
        state: &mut ChatState,
    ) -> Result<Response, ApiError> {
        let mut primary: Option<(Result<Response, ApiError>, String, Served)> = None;
        for target in routes {
            let pool = self
                .router
                .pool_index(&target.provider)
                .and_then(|i| self.pools.get(i))
                .ok_or_else(ApiError::internal)?;
            rec.provider = pool.name().to_string();
            match self.attempt(req, request, rec, pool, target, state) {
                Attempt::Done(result) => return result,
                Attempt::TryNext(result) => {
                    if primary.is_none() {
                        let served = (state.served.take(), std::mem::take(&mut state.usage));
                        primary = Some((result, pool.name().to_string(), served));
                    }
                }
            }
        }
        let (result, provider, (served, usage)) = primary.ok_or_else(ApiError::internal)?;
        rec.provider = provider;
        state.served = served;
        state.usage = usage;
        result
    }

    /// Send the request to one provider's pool and wait for its first reply.
    fn attempt(
        &self,
        req: &Request,
        request: &Arc<ClientRequest>,
        rec: &mut AccessRecord,
        pool: &Arc<ProviderPool>,
        target: &Target,
        state: &mut ChatState,
    ) -> Attempt {
        state.served = None;
        state.usage = Usage::default();
        let upstream_model = target.model.clone();
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
            request: Arc::clone(request),
            upstream_model,
            received_at: req.received_at,
            enqueued_at: Instant::now(),
            deadline,
            reply: channel.tx.clone(),
            ctl: Arc::clone(&channel.ctl),
        };
        if let Err(e) = pool.submit(job) {
            return Attempt::fail(e);
        }
        let first = match wait_first_reply(req, &mut channel, pool, deadline) {
            Ok(first) => first,
            Err(e) if e.kind == ErrorKind::ClientCancelled => return Attempt::Done(Err(e)),
            Err(e) => return Attempt::fail(e),
        };
        match first {
            Reply::Full(full) => {
                let FullReply { result, timings } = *full;
                rec.queue_wait_us = timings.queue_wait.as_micros() as u64;
                rec.upstream_us = timings.upstream.map_or(0, |d| d.as_micros() as u64);
                let answer = match result {
                    Ok(answer) => answer,
                    Err(e) => return Attempt::fail(e),
                };
                rec.prompt_tokens = answer.usage.input_tokens;
                rec.completion_tokens = answer.usage.output_tokens;
                state.served = Some(target.clone());
                state.usage = answer.usage;
                let status = answer.status;
                let mut resp = Response::json(status, answer.body);
                resp.content_type = answer.content_type;
                resp.headers.extend(answer.headers);
                resp.headers
                    .push((PROVIDER_HEADER, pool.name().to_string()));
                if UpstreamVerdict::classify(status, &resp.body).fallback() {
                    Attempt::TryNext(Ok(resp))
                } else {
                    Attempt::Done(Ok(resp))
                }
            }
            Reply::StreamStart(start) => {
                let StreamStart { timings, headers } = *start;
                rec.queue_wait_us = timings.queue_wait.as_micros() as u64;
                rec.upstream_us = timings.upstream.map_or(0, |d| d.as_micros() as u64);
                rec.status = 200;
                let stream = GatewayStream::new(
                    watch,
                    channel,
                    Arc::clone(pool),
                    rec.clone(),
                    request.api,
                    req.received_at,
                )
                .with_post_hooks(state.pending.take(), target.clone());
                let mut resp = Response::stream(200, "text/event-stream", Box::new(stream));
                resp.headers.push(("cache-control", "no-cache".to_string()));
                resp.headers.extend(headers);
                resp.headers
                    .push((PROVIDER_HEADER, pool.name().to_string()));
                Attempt::Done(Ok(resp))
            }
            Reply::Event(_) | Reply::StreamEnd(_) | Reply::Nudge => {
                // A worker never sends these before StreamStart (and nudges are consumed by
                // `wait_first_reply`); never reuse this channel.
                channel.mark_single_use();
                Attempt::Done(Err(ApiError::internal()))
            }
        }
    }
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
            return Err(ApiError::shutting_down());
        }
        if Instant::now() >= give_up {
            // The worker is stuck past the deadline: answer now, never reuse this channel.
            channel.ctl.cancel_for(CancelReason::Stalled);
            channel.mark_single_use();
            let counters = &pool.stats().counters;
            counters.reply_timeouts.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::request_timeout());
        }
        if req.client_gone() {
            channel.ctl.cancel();
            channel.mark_single_use();
            let counters = &pool.stats().counters;
            counters.client_cancelled.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::client_cancelled());
        }
    }
}

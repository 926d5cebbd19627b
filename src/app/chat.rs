//! One chat request on the coroutine: read its routing head, resolve the primary route and its
//! fallbacks, submit a job to each provider pool in turn, and wait for the first reply without
//! blocking the scheduler thread. The body itself is rewritten or translated by the worker.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::stream::GatewayStream;
use super::{ApiHandler, Gateway, PROVIDER_HEADER};
use crate::api::RouteHead;
use crate::error::{ApiError, ErrorKind};
use crate::http::{Request, Response};
use crate::job::{
    CancelReason, ClientApi, ClientRequest, FullReply, Job, Reply, ReplyChannel, StreamStart,
    REPLY_GRACE,
};
use crate::log::{self, AccessRecord};
use crate::objpool::Pooled;
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
        g.authorize(req)?;
        let head = RouteHead::parse(api, &req.body, g.json_depth_max)?;
        rec.model.clone_from(&head.model);
        rec.stream = head.stream;
        let request = Arc::new(client_request(req, api, &head));
        match g.chat(req, &request, &head, rec) {
            Err(e) if e.kind == ErrorKind::ShuttingDown => {
                let current = self.0.load_full();
                if Arc::ptr_eq(&current, g) {
                    return Err(e);
                }
                current.chat(req, &request, &head, rec)
            }
            other => other,
        }
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
        head: &RouteHead,
        rec: &mut AccessRecord,
    ) -> Result<Response, ApiError> {
        let mut routes = vec![self.router.resolve(&head.model)?];
        for target in self.router.fallbacks_for(&head.model) {
            routes.push(self.router.resolve(target)?);
        }
        for target in &head.fallbacks {
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
            match self.attempt(req, request, rec, pool, route.upstream_model) {
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
        request: &Arc<ClientRequest>,
        rec: &mut AccessRecord,
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
                );
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

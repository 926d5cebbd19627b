//! A streamed answer on its way from a worker to the client: events in the client's format as
//! the worker produces them, a keep-alive while the upstream is silent, and an error event in the
//! client's format when the stream ends badly (for a Responses client, numbered after the events
//! it got and naming its response: see [`StreamWatch`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api;
use crate::error::ApiError;
use crate::formats::responses::StreamWatch;
use crate::http::{BodyStream, StreamPoll};
use crate::job::Usage;
use crate::job::{clock_ms, CancelReason, ClientApi, Reply, ReplyChannel, StreamEnd, REPLY_GRACE};
use crate::log::{self, AccessRecord};
use crate::objpool::Pooled;
use crate::plugins::{Outcome, Pending, Target};
use crate::pool::{waiters, ProviderPool};
use crate::providers::sse::{stream_duration_error, stream_idle_error};

/// A keep-alive is written after this much silence (Anthropic `ping`, an SSE comment for OpenAI
/// clients), so that proxies and clients keep a slow stream open.
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(10);

pub struct GatewayStream {
    /// Before `channel`: leaves the nudge registry before the channel is recycled.
    _watch: waiters::Watch,
    channel: Pooled<ReplyChannel>,
    pool: Arc<ProviderPool>,
    rec: AccessRecord,
    api: ClientApi,
    received_at: Instant,
    /// When the last message came from the worker ([`clock_ms`]).
    last_message_ms: u64,
    /// When the client was last written to (an event or a keep-alive).
    last_write: Instant,
    finished: bool,
    /// For a Responses client: what its stream's failure events must continue.
    responses: Option<StreamWatch>,
    /// The request's post-hooks, run when the stream is dropped (its end, or the client gone).
    pending: Option<Pending>,
    /// The route streaming the answer.
    served: Option<Target>,
    /// The usage the worker reported at the stream's end.
    usage: Usage,
    /// The access record is written and the post-hooks ran ([`GatewayStream::complete`]).
    completed: bool,
}

impl GatewayStream {
    pub fn new(
        watch: waiters::Watch,
        channel: Pooled<ReplyChannel>,
        pool: Arc<ProviderPool>,
        rec: AccessRecord,
        api: ClientApi,
        received_at: Instant,
    ) -> GatewayStream {
        let now = Instant::now();
        GatewayStream {
            _watch: watch,
            channel,
            pool,
            rec,
            api,
            received_at,
            last_message_ms: clock_ms(),
            last_write: now,
            finished: false,
            responses: (api == ClientApi::OpenAiResponses).then(StreamWatch::default),
            pending: None,
            served: None,
            usage: Usage::default(),
            completed: false,
        }
    }

    /// Run `pending`'s post-hooks when the stream ends, as served by `served`.
    pub fn with_post_hooks(mut self, pending: Option<Pending>, served: Target) -> GatewayStream {
        self.pending = pending;
        self.served = Some(served);
        self
    }

    fn fail(&mut self, err: &ApiError) -> StreamPoll {
        self.finished = true;
        self.rec.error_code = err.code;
        if err.delivered {
            return StreamPoll::End;
        }
        match &self.responses {
            Some(watch) => {
                let mut out = Vec::with_capacity(1024);
                api::responses_error_event(watch, err, &mut out);
                StreamPoll::Chunk(out)
            }
            None => StreamPoll::Chunk(api::error_event(self.api, err)),
        }
    }

    fn end(&mut self, end: StreamEnd) -> StreamPoll {
        self.rec.prompt_tokens = end.usage.input_tokens;
        self.rec.completion_tokens = end.usage.output_tokens;
        self.usage = end.usage;
        match end.error {
            Some(e) => self.fail(&e),
            None => {
                self.finished = true;
                StreamPoll::End
            }
        }
    }

    /// At a nudge: why to end the stream now although its worker has not, if it should be. The
    /// worker ends a stream at its own bounds; these catch a worker that does not (stuck) and
    /// the shutdown deadline. The stream's activity is the worker's (every byte it reads, SSE
    /// comments included), so a stream kept alive by comments is not taken for a stuck one.
    fn overdue(&self) -> Option<(ApiError, CancelReason)> {
        if self.pool.abandoned() {
            return Some((ApiError::shutting_down(), CancelReason::Shutdown));
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

    /// A nudge: the stream has been silent. Keep the client's connection alive, or end a stream
    /// its worker should have ended (stuck, or the shutdown deadline passed).
    fn silent(&mut self) -> StreamPoll {
        if let Some((error, reason)) = self.overdue() {
            self.channel.ctl.cancel_for(reason);
            self.channel.mark_single_use();
            if self.channel.ctl.is_complete() {
                self.finished = true;
                return StreamPoll::End;
            }
            let counters = &self.pool.stats().counters;
            if reason == CancelReason::Stalled {
                counters.reply_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            counters.stream_errors.fetch_add(1, Ordering::Relaxed);
            return self.fail(&error);
        }
        if self.last_write.elapsed() >= KEEPALIVE_EVERY {
            self.last_write = Instant::now();
            return StreamPoll::Chunk(api::keepalive_event(self.api));
        }
        StreamPoll::Pending
    }
}

impl GatewayStream {
    /// What a message from the worker means for the client; `None` for one that brings nothing
    /// to write (a stray start, or a nudge while events are flowing).
    fn on_reply(&mut self, reply: Reply) -> Option<StreamPoll> {
        match reply {
            Reply::Event(bytes) => {
                let ctl = &self.channel.ctl;
                ctl.events_in_flight.fetch_sub(1, Ordering::AcqRel);
                ctl.bytes_in_flight.fetch_sub(bytes.len(), Ordering::AcqRel);
                self.last_message_ms = clock_ms();
                self.last_write = Instant::now();
                if let Some(watch) = &mut self.responses {
                    watch.observe(&bytes);
                }
                Some(StreamPoll::Chunk(bytes))
            }
            Reply::StreamEnd(end) => Some(self.end(*end)),
            Reply::Full(_) | Reply::StreamStart(_) | Reply::Nudge => None,
        }
    }
}

impl BodyStream for GatewayStream {
    /// Waits for the next event without a timer; the nudges of [`waiters`] (every
    /// `STREAM_POLL_WAIT`, the server's `wait`) bound the wait.
    fn poll(&mut self, _wait: Duration) -> StreamPoll {
        if self.finished {
            return StreamPoll::End;
        }
        match self.channel.rx.recv() {
            Ok(Reply::Nudge) => self.silent(),
            Ok(reply) => self.on_reply(reply).unwrap_or(StreamPoll::Pending),
            // The channel holds a sender of its own: it cannot disconnect.
            Err(_) => {
                self.channel.mark_single_use();
                self.fail(&ApiError::internal())
            }
        }
    }

    /// An event the worker already sent, if any (a nudge among them is passed over: events are
    /// flowing, so the stream is not silent).
    fn try_poll(&mut self) -> Option<StreamPoll> {
        if self.finished {
            return Some(StreamPoll::End);
        }
        loop {
            let reply = self.channel.rx.try_recv().ok()?;
            if let Some(poll) = self.on_reply(reply) {
                return Some(poll);
            }
        }
    }

    fn recycle(&mut self, chunk: Vec<u8>) {
        self.channel.ctl.give_spare(chunk);
    }

    fn finish(&mut self) {
        self.complete();
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

impl GatewayStream {
    /// The access record and the post-hooks (usage, spend, ledger), once: at the stream's end,
    /// before its last bytes go out, or when it is dropped early (the client gone, a write failed).
    fn complete(&mut self) {
        if std::mem::replace(&mut self.completed, true) {
            return;
        }
        self.rec.total_us = self.received_at.elapsed().as_micros() as u64;
        log::access(&self.rec);
        if let Some(pending) = self.pending.take() {
            pending.finish(Outcome {
                status: self.rec.status,
                served: self.served.take(),
                usage: std::mem::take(&mut self.usage),
                error_code: self.rec.error_code,
                ..Outcome::default()
            });
        }
    }
}

impl Drop for GatewayStream {
    fn drop(&mut self) {
        self.complete();
    }
}

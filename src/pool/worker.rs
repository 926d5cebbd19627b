//! A pool worker: an OS thread pinned to one core (pinned inside the thread, before it builds its
//! state) that takes jobs from the pool queue, calls the upstream under `catch_unwind`, records
//! latencies into its core's stats shard and replies.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::idle::Parker;
use super::{shutting_down, Shared, WORKER_POLL};
use crate::error::{ApiError, ErrorKind};
use crate::job::{
    ms_at, Answer, CancelReason, Job, JobCtl, Reply, StreamStart, Timings, Usage,
    STREAM_BYTES_IN_FLIGHT_MAX, STREAM_EVENTS_IN_FLIGHT_MAX,
};
use crate::providers::sse::stream_idle_error;
use crate::providers::{Call, StreamResult, StreamSink, WorkerCtx};
use crate::stats::PoolCounters;

/// Pause of a worker whose stream client has too many events not yet taken.
const BACKPRESSURE_PAUSE: Duration = Duration::from_micros(200);

/// What the supervisor sees of a worker, to detect stalls: the deadline of the job it runs and,
/// once that job's stream began, the stream's activity and end (in the job's [`JobCtl`]).
#[derive(Default)]
pub struct WorkerSlot {
    /// Deadline of the current job ([`super::clock_ms`]); 0 when idle.
    pub job_deadline_ms: AtomicU64,
    /// The current job's control, so a stall can interrupt its upstream call. Cleared, with
    /// `job_deadline_ms`, before the job's last reply is sent: after that the control may serve
    /// another request.
    pub ctl: Mutex<Option<Arc<JobCtl>>>,
    /// Set by the supervisor: a replacement runs; exit as soon as the stuck call returns.
    pub stalled: AtomicBool,
    pub name: String,
}

/// Start one more worker of the pool, named `<pool>-<n>` and pinned to the next core in turn.
pub(super) fn spawn(shared: &Arc<Shared>) -> Result<(), String> {
    let n = shared.next_worker.fetch_add(1, Ordering::Relaxed);
    let cores = &shared.cores;
    let core = (!cores.is_empty()).then(|| cores[n % cores.len()]);
    let shard = n % cores.len().max(1);
    let name = format!("{}-{n}", shared.name);
    let slot = Arc::new(WorkerSlot {
        name: name.clone(),
        ..WorkerSlot::default()
    });
    shared.workers_alive.fetch_add(1, Ordering::AcqRel);
    let (mine, my_slot) = (Arc::clone(shared), Arc::clone(&slot));
    let spawned = std::thread::Builder::new()
        .name(name.clone())
        .stack_size(shared.cfg.worker_stack_bytes)
        .spawn(move || {
            let shared = mine;
            if let Some(core) = core {
                if !core_affinity::set_for_current(core) {
                    crate::log::warn(
                        "pinning a worker to its core failed",
                        &[("worker", &my_slot.name), ("core", &core.id.to_string())],
                    );
                }
            }
            let retired = run(&shared, &my_slot, n, shard);
            if !retired {
                shared.workers_alive.fetch_sub(1, Ordering::AcqRel);
            }
            if my_slot.stalled.load(Ordering::Acquire) {
                shared.stalled_now.fetch_sub(1, Ordering::AcqRel);
            }
            shared.forget_slot(&my_slot);
        });
    match spawned {
        Ok(handle) => {
            shared.lock_slots().push(slot);
            let mut handles = shared.lock_handles();
            handles.retain(|h| !h.is_finished());
            handles.push(handle);
            Ok(())
        }
        Err(e) => {
            shared.workers_alive.fetch_sub(1, Ordering::AcqRel);
            Err(format!("cannot start worker thread {name}: {e}"))
        }
    }
}

/// The worker loop; true when the worker retired itself (scaled down, already uncounted).
fn run(shared: &Shared, slot: &WorkerSlot, n: usize, shard: usize) -> bool {
    let seed = (n as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ std::process::id() as u64;
    let mut ctx = shared.provider.worker_ctx(seed);
    let rx = &shared.rx;
    let me = Parker::current(shard);
    let retired = loop {
        // Idle workers sleep until a job comes, the pool closes, or a long poll passes (to
        // retire when scaled down): no busy polling by idle thousands.
        let next = match rx.take() {
            Some(job) => Some(job),
            None => shared.idle.wait(&me, WORKER_POLL, rx, &shared.closed),
        };
        match next {
            Some(job) => {
                let survived = handle(shared, slot, &mut ctx, job, shard);
                if slot.stalled.load(Ordering::Acquire) {
                    // A replacement took this worker's place while it was stuck.
                    break false;
                }
                if !survived {
                    // A panic or an interrupted call may have left the agent mid-request.
                    ctx = shared.provider.worker_ctx(seed.rotate_left(7));
                }
            }
            None => {
                if shared.closed.load(Ordering::Acquire) && rx.is_empty() {
                    break false;
                }
            }
        }
        if shared.try_retire() {
            break true;
        }
    };
    shared.idle.forget(&me);
    retired
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Handle one job; false when it panicked (the worker then rebuilds its state).
fn handle(shared: &Shared, slot: &WorkerSlot, ctx: &mut WorkerCtx, job: Job, shard: usize) -> bool {
    let deadline_ms = ms_at(job.deadline);
    slot.job_deadline_ms
        .store(deadline_ms.max(1), Ordering::Release);
    *lock(&slot.ctl) = Some(Arc::clone(&job.ctl));
    let counters = &shared.stats.counters;
    let started = Instant::now();
    let queue_wait = started.saturating_duration_since(job.enqueued_at);
    counters.busy_workers.fetch_add(1, Ordering::Relaxed);
    let mut survived = true;
    let early = if shared.abandon.load(Ordering::Acquire) {
        Some(shutting_down())
    } else if job.ctl.is_cancelled() {
        Some(ApiError::client_cancelled())
    } else if queue_wait > shared.cfg.queue_wait_max {
        PoolCounters::inc(&counters.queue_timeouts);
        Some(ApiError::new(
            ErrorKind::QueueTimeout,
            "queue_timeout",
            format!(
                "the request waited longer than {} ms for a worker",
                shared.cfg.queue_wait_max.as_millis()
            ),
        ))
    } else if started >= job.deadline {
        PoolCounters::inc(&counters.request_timeouts);
        Some(ApiError::new(
            ErrorKind::RequestTimeout,
            "request_timeout",
            "the request timed out before a worker could take it",
        ))
    } else {
        None
    };
    let mut upstream = None;
    let last = match early {
        Some(e) => Reply::full(
            Err(e),
            Timings {
                queue_wait,
                upstream: None,
            },
        ),
        None => {
            if let Some(agent) = &ctx.agent {
                job.ctl.attach(agent);
            }
            let record_attempt = |ok: bool| shared.breaker.record(ok);
            let call = Call {
                job: &job,
                stream_idle_timeout: shared.stream_idle_timeout,
                stream_duration_max: shared.stream_duration_max,
                record_attempt: &record_attempt,
            };
            let reply = if job.stream() {
                stream_job(shared, ctx, &job, &call, shard, queue_wait, &mut survived)
            } else {
                whole_job(shared, ctx, &call, queue_wait, &mut survived)
            };
            job.ctl.detach();
            if job.ctl.is_cancelled() {
                // The agent was shut down to interrupt the call: start with a fresh one.
                survived = false;
            }
            upstream = Some(started.elapsed());
            reply
        }
    };
    shared
        .stats
        .record(shard, queue_wait, upstream, job.received_at.elapsed());
    counters.completed.fetch_add(1, Ordering::Relaxed);
    counters.busy_workers.fetch_sub(1, Ordering::Relaxed);
    *lock(&slot.ctl) = None;
    slot.job_deadline_ms.store(0, Ordering::Release);
    // The waiter may have given up (its own deadline); then the reply is simply dropped.
    let _ = job.reply.send(last);
    survived
}

/// The error a stopped job answers with, by why it was stopped; `None` when its client is gone
/// (nobody to answer) or it was not stopped.
fn cut_error(ctl: &JobCtl, stream: bool) -> Option<ApiError> {
    match ctl.cancel_reason()? {
        CancelReason::Client => None,
        CancelReason::Shutdown => Some(shutting_down()),
        CancelReason::Stalled if stream => {
            Some(stream_idle_error("the provider stopped sending events"))
        }
        CancelReason::Stalled => Some(ApiError::new(
            ErrorKind::RequestTimeout,
            "request_timeout",
            "the provider did not answer within the request timeout",
        )),
    }
}

fn count_error(counters: &PoolCounters, e: &ApiError) {
    match e.kind {
        ErrorKind::RequestTimeout => PoolCounters::inc(&counters.request_timeouts),
        ErrorKind::UpstreamTransport | ErrorKind::UpstreamInvalid => {
            PoolCounters::inc(&counters.transport_errors)
        }
        // From a worker, only a connection the gateway could not open for want of its own
        // resources (see `HttpProvider::transport_error`).
        ErrorKind::Overloaded => PoolCounters::inc(&counters.local_resource_errors),
        _ => {}
    }
}

fn count_reply(counters: &PoolCounters, reply: &Answer) {
    counters.count_status(reply.status);
    count_usage(counters, &reply.usage);
}

fn count_usage(counters: &PoolCounters, usage: &Usage) {
    counters
        .prompt_tokens
        .fetch_add(usage.input_tokens, Ordering::Relaxed);
    counters
        .completion_tokens
        .fetch_add(usage.output_tokens, Ordering::Relaxed);
}

fn whole_job(
    shared: &Shared,
    ctx: &mut WorkerCtx,
    call: &Call<'_>,
    queue_wait: Duration,
    survived: &mut bool,
) -> Reply {
    let counters = &shared.stats.counters;
    let started = Instant::now();
    let result = match catch_unwind(AssertUnwindSafe(|| shared.provider.call(ctx, call))) {
        Ok(Ok(reply)) => {
            count_reply(counters, &reply);
            Ok(reply)
        }
        Ok(Err(e)) => {
            count_error(counters, &e);
            Err(cut_error(&call.job.ctl, false).unwrap_or(e))
        }
        Err(_panic) => {
            PoolCounters::inc(&counters.panics);
            *survived = false;
            Err(ApiError::internal())
        }
    };
    Reply::full(
        result,
        Timings {
            queue_wait,
            upstream: Some(started.elapsed()),
        },
    )
}

fn stream_job(
    shared: &Shared,
    ctx: &mut WorkerCtx,
    job: &Job,
    call: &Call<'_>,
    shard: usize,
    queue_wait: Duration,
    survived: &mut bool,
) -> Reply {
    let counters = &shared.stats.counters;
    let started = Instant::now();
    let mut sink = Sink {
        shared,
        job,
        shard,
        queue_wait,
        started,
        first_event: None,
        last_event: started,
        began: false,
        complete: false,
        cut: None,
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        shared.provider.call_stream(ctx, call, &mut sink)
    }));
    let began = sink.began;
    let timings = Timings {
        queue_wait,
        upstream: Some(started.elapsed()),
    };
    // A stream that began ends with an error event whenever it was cut, whatever cut it: the
    // provider's own error, a stop by the supervisor or the shutdown, the sink giving up on a
    // client that does not read, a panic. Only a client that went away gets nothing.
    let (error, usage) = match outcome {
        Ok(Ok(StreamResult::Whole(reply))) => {
            count_reply(counters, &reply);
            return Reply::full(Ok(reply), timings);
        }
        Ok(Ok(StreamResult::Streamed { .. })) if !began => {
            // Stopped before the stream began (the sink refused to start): a whole answer.
            let e = cut_error(&call.job.ctl, false).unwrap_or_else(ApiError::client_cancelled);
            return Reply::full(Err(e), timings);
        }
        Ok(Ok(StreamResult::Streamed { error, usage })) => {
            counters.count_status(200);
            PoolCounters::inc(&counters.streams);
            count_usage(counters, &usage);
            // After the terminator the stream is complete, whatever stopped the call then (an
            // error the upstream reported in it and the client got is still counted).
            let error = if sink.complete {
                error.filter(|e| e.delivered)
            } else {
                cut_error(&call.job.ctl, true).or(sink.cut.take()).or(error)
            };
            (error, usage)
        }
        Ok(Err(e)) if !began => {
            count_error(counters, &e);
            let e = cut_error(&call.job.ctl, false).unwrap_or(e);
            return Reply::full(Err(e), timings);
        }
        Ok(Err(e)) => (
            Some(cut_error(&call.job.ctl, true).unwrap_or(e)),
            Usage::default(),
        ),
        Err(_panic) => {
            PoolCounters::inc(&counters.panics);
            *survived = false;
            if !began {
                return Reply::full(Err(ApiError::internal()), timings);
            }
            (Some(ApiError::internal()), Usage::default())
        }
    };
    if let Some(e) = &error {
        count_error(counters, e);
        PoolCounters::inc(&counters.stream_errors);
    }
    Reply::stream_end(error, usage)
}

/// Hands a provider's stream events to the client's coroutine, one message per event, with at
/// most [`STREAM_EVENTS_IN_FLIGHT_MAX`] events and [`STREAM_BYTES_IN_FLIGHT_MAX`] bytes not yet
/// taken.
struct Sink<'a> {
    shared: &'a Shared,
    job: &'a Job,
    shard: usize,
    queue_wait: Duration,
    started: Instant,
    first_event: Option<Instant>,
    last_event: Instant,
    began: bool,
    /// The stream's terminator went to the client.
    complete: bool,
    /// Why the sink refused an event other than the client leaving (a client that stopped
    /// reading): the stream's error event.
    cut: Option<ApiError>,
}

impl Sink<'_> {
    /// Whether the client has taken too little of what was sent to be sent more now.
    fn backlogged(ctl: &JobCtl) -> bool {
        let events = ctl.events_in_flight.load(Ordering::Acquire);
        events >= STREAM_EVENTS_IN_FLIGHT_MAX
            || (events > 0
                && ctl.bytes_in_flight.load(Ordering::Acquire) >= STREAM_BYTES_IN_FLIGHT_MAX)
    }
}

impl StreamSink for Sink<'_> {
    fn start(&mut self, headers: Vec<(&'static str, String)>) -> bool {
        let ctl = &self.job.ctl;
        if ctl.is_cancelled() {
            return false;
        }
        self.began = true;
        ctl.begin_stream(self.shared.stream_duration_max);
        let timings = Timings {
            queue_wait: self.queue_wait,
            upstream: Some(self.started.elapsed()),
        };
        self.job
            .reply
            .send(Reply::StreamStart(Box::new(StreamStart {
                timings,
                headers,
            })))
            .is_ok()
    }

    fn event(&mut self, out: &mut Vec<u8>) -> bool {
        let ctl = &self.job.ctl;
        ctl.touch();
        let waited_since = Instant::now();
        while Self::backlogged(ctl) {
            // The client reads slowly: slow the upstream reads down instead of buffering.
            if ctl.is_cancelled() {
                return false;
            }
            if waited_since.elapsed() > self.shared.stream_idle_timeout {
                self.cut = Some(ApiError::new(
                    ErrorKind::ClientTimeout,
                    "client_timeout",
                    "the client did not read the stream in time",
                ));
                return false;
            }
            std::thread::sleep(BACKPRESSURE_PAUSE);
        }
        if ctl.is_cancelled() {
            return false;
        }
        let now = Instant::now();
        let stats = &self.shared.stats;
        match self.first_event {
            None => {
                self.first_event = Some(now);
                stats.record_ttft(
                    self.shard,
                    now.saturating_duration_since(self.job.received_at),
                );
            }
            Some(_) => stats.record_gap(self.shard, now.saturating_duration_since(self.last_event)),
        }
        self.last_event = now;
        let bytes = std::mem::replace(out, ctl.take_spare());
        let counters = &stats.counters;
        PoolCounters::inc(&counters.stream_events);
        counters
            .stream_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        ctl.events_in_flight.fetch_add(1, Ordering::AcqRel);
        ctl.bytes_in_flight.fetch_add(bytes.len(), Ordering::AcqRel);
        self.job.reply.send(Reply::Event(bytes)).is_ok()
    }

    fn complete(&mut self) {
        self.complete = true;
        self.job.ctl.mark_complete();
    }
}

//! A pool worker: an OS thread pinned to one core (pinned inside the thread, before it builds its
//! state) that takes jobs from the pool queue, calls the upstream under `catch_unwind`, records
//! latencies into its core's stats shard and replies.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use super::{shutting_down, Job, JobReceiver, Reply, Shared, Timings, WORKER_POLL};
use crate::error::{ApiError, ErrorKind};
use crate::providers::Call;
use crate::providers::UpstreamReply;
use crate::stats::PoolCounters;

/// Start worker `n` of a pool, named `<pool>-<n>`.
pub(super) fn spawn(
    shared: &Arc<Shared>,
    rx: JobReceiver,
    n: usize,
    core: Option<core_affinity::CoreId>,
    shard: usize,
) -> Result<JoinHandle<()>, String> {
    shared.workers_alive.fetch_add(1, Ordering::AcqRel);
    let name = format!("{}-{n}", shared.name);
    let mine = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name(name.clone())
        .stack_size(shared.cfg.worker_stack_bytes)
        .spawn(move || {
            let shared = mine;
            if let Some(core) = core {
                if !core_affinity::set_for_current(core) {
                    crate::log::warn(
                        "pinning a worker to its core failed",
                        &[
                            ("worker", &format!("{}-{n}", shared.name)),
                            ("core", &core.id.to_string()),
                        ],
                    );
                }
            }
            run(&shared, &rx, n, shard);
            shared.workers_alive.fetch_sub(1, Ordering::AcqRel);
        });
    spawned.map_err(|e| {
        shared.workers_alive.fetch_sub(1, Ordering::AcqRel);
        format!("cannot start worker thread {name}: {e}")
    })
}

fn run(shared: &Shared, rx: &JobReceiver, n: usize, shard: usize) {
    let seed = (n as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ std::process::id() as u64;
    let mut ctx = shared.provider.worker_ctx(seed);
    loop {
        match rx.recv_timeout(WORKER_POLL) {
            Ok(job) => {
                if !handle(shared, &mut ctx, job, shard) {
                    // A panic may have left the agent mid-request: start afresh.
                    ctx = shared.provider.worker_ctx(seed.rotate_left(7));
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if shared.closed.load(Ordering::Acquire) && rx.is_empty() {
                    return;
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Handle one job; false when it panicked.
fn handle(shared: &Shared, ctx: &mut crate::providers::WorkerCtx, job: Job, shard: usize) -> bool {
    let counters = &shared.stats.counters;
    let started = Instant::now();
    let queue_wait = started.saturating_duration_since(job.enqueued_at);
    counters.busy_workers.fetch_add(1, Ordering::Relaxed);
    let mut upstream = None;
    let mut survived = true;
    let result: Result<UpstreamReply, ApiError> = if shared.abandon.load(Ordering::Acquire) {
        Err(shutting_down())
    } else if queue_wait > shared.cfg.queue_wait_max {
        PoolCounters::inc(&counters.queue_timeouts);
        Err(ApiError::new(
            ErrorKind::QueueTimeout,
            "queue_timeout",
            format!(
                "the request waited longer than {} ms for a worker",
                shared.cfg.queue_wait_max.as_millis()
            ),
        ))
    } else if started >= job.deadline {
        PoolCounters::inc(&counters.request_timeouts);
        Err(ApiError::new(
            ErrorKind::RequestTimeout,
            "request_timeout",
            "the request timed out before a worker could take it",
        ))
    } else {
        let call = Call {
            body: &job.body,
            upstream_model: &job.upstream_model,
            deadline: job.deadline,
        };
        let result = catch_unwind(AssertUnwindSafe(|| shared.provider.call(ctx, &call)));
        upstream = Some(started.elapsed());
        match result {
            Ok(Ok(reply)) => {
                counters.count_status(reply.status);
                counters
                    .prompt_tokens
                    .fetch_add(reply.prompt_tokens, Ordering::Relaxed);
                counters
                    .completion_tokens
                    .fetch_add(reply.completion_tokens, Ordering::Relaxed);
                Ok(reply)
            }
            Ok(Err(e)) => {
                match e.kind {
                    ErrorKind::RequestTimeout => PoolCounters::inc(&counters.request_timeouts),
                    ErrorKind::UpstreamTransport | ErrorKind::UpstreamInvalid => {
                        PoolCounters::inc(&counters.transport_errors)
                    }
                    _ => {}
                }
                Err(e)
            }
            Err(_panic) => {
                PoolCounters::inc(&counters.panics);
                survived = false;
                Err(ApiError::internal())
            }
        }
    };
    shared
        .stats
        .record(shard, queue_wait, upstream, job.received_at.elapsed());
    counters.completed.fetch_add(1, Ordering::Relaxed);
    counters.busy_workers.fetch_sub(1, Ordering::Relaxed);
    // The waiter may have given up (its own deadline); then the reply is simply dropped.
    let reply = Reply {
        result,
        timings: Timings {
            queue_wait,
            upstream,
        },
    };
    let _ = job.reply.send(reply);
    survived
}

//! A provider pool: a bounded crossbeam queue of [`Job`]s with its full-queue policy, and `workers`
//! OS threads pinned round-robin to the pool's cores that call the upstream, each job under
//! `catch_unwind`. Replies go back over `may` channels so waiting coroutines never block a
//! scheduler thread.

pub mod breaker;
mod idle;
mod inbox;
mod room;
mod supervisor;
pub mod waiters;
mod worker;

use crossbeam_channel::{Sender, TrySendError};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{PoolConfig, ProviderConfig, QueuePolicy};
use crate::error::{ApiError, ErrorKind};
use crate::job::{CancelReason, Job, Reply, Timings};
use crate::providers::keys::KeySnapshot;
use crate::providers::redact::Redactor;
use crate::providers::Provider;
use crate::stats::PoolStats;

// A queue slot (a job and the channel's stamp) fits the size the config's memory bound assumes.
const _: () = assert!(
    std::mem::size_of::<Job>() + std::mem::size_of::<usize>()
        <= crate::config::POOL_QUEUE_SLOT_BYTES as usize
);

/// `Retry-After` (seconds) sent with a `drop`-policy 429.
pub const DROP_RETRY_AFTER_S: u32 = 1;
/// Longest single sleep of a coroutine waiting for queue space under `block`.
const BLOCK_POLL_MAX: Duration = Duration::from_millis(2);
/// How often an idle worker wakes to see whether it should retire (scaling down). Closing the
/// pool wakes idle workers at once.
const WORKER_POLL: Duration = Duration::from_secs(1);

/// State shared by the pool handle and its workers.
pub(crate) struct Shared {
    pub name: String,
    pub provider: Provider,
    pub cfg: PoolConfig,
    /// Longest silence between the events of an upstream stream.
    pub stream_idle_timeout: Duration,
    /// Longest stream, from its beginning to its end.
    pub stream_duration_max: Duration,
    pub breaker: breaker::Breaker,
    pub stats: Arc<PoolStats>,
    /// Set when shutdown begins: no new jobs are accepted.
    pub closed: AtomicBool,
    /// Set when the shutdown deadline passed: queued jobs are answered 503 without an upstream call.
    pub abandon: AtomicBool,
    pub workers_alive: AtomicU64,
    /// The pool's queue, for workers started later (scaling, stall replacement).
    pub rx: JobReceiver,
    /// Cores the workers are pinned to, round-robin.
    pub cores: Vec<core_affinity::CoreId>,
    pub next_worker: AtomicUsize,
    /// Workers the pool should have (adaptive scaling moves it within workers_min..=workers_max).
    pub workers_target: AtomicUsize,
    /// Workers marked stalled and not yet exited.
    pub stalled_now: AtomicUsize,
    pub slots: Mutex<Vec<Arc<worker::WorkerSlot>>>,
    pub handles: Mutex<Vec<JoinHandle<()>>>,
    /// When the pool started (the times of `/stats` scaling events).
    pub epoch: Instant,
    pub supervisor: supervisor::State,
    /// Idle workers, parked until a job is queued or the pool closes.
    pub idle: idle::IdleWorkers,
}

impl Shared {
    pub(crate) fn lock_slots(&self) -> std::sync::MutexGuard<'_, Vec<Arc<worker::WorkerSlot>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn lock_handles(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn forget_slot(&self, slot: &Arc<worker::WorkerSlot>) {
        self.lock_slots().retain(|s| !Arc::ptr_eq(s, slot));
    }

    /// Workers that take jobs: alive minus those stuck and already replaced.
    pub(crate) fn workers_effective(&self) -> usize {
        let alive = self.workers_alive.load(Ordering::Acquire) as usize;
        alive.saturating_sub(self.stalled_now.load(Ordering::Acquire))
    }

    /// Called by an idle worker: leave the pool when it has more workers than its target.
    pub(crate) fn try_retire(&self) -> bool {
        let target = self.workers_target.load(Ordering::Acquire);
        let stalled = self.stalled_now.load(Ordering::Acquire) as u64;
        let alive = self.workers_alive.load(Ordering::Acquire);
        alive.saturating_sub(stalled) > target as u64
            && self
                .workers_alive
                .compare_exchange(alive, alive - 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

pub struct ProviderPool {
    shared: Arc<Shared>,
    tx: Sender<Job>,
}

impl ProviderPool {
    /// Build the provider, the queue and start the pinned workers. `core_ids` are the machine's cores.
    /// Its answers are scanned for its own keys only (see [`ProviderPool::start_with_stats`]).
    pub fn start(cfg: &ProviderConfig, core_ids: &[core_affinity::CoreId]) -> Result<Self, String> {
        let redact = Redactor::new(cfg.secrets());
        Self::start_with_stats(cfg, core_ids, None, Arc::new(redact))
    }

    /// Like [`ProviderPool::start`], recording into `stats` when given: a pool that replaces one of
    /// the same name on reload continues its counters and histograms (monotonic across reloads).
    /// `redact` holds the secrets to hide from what the upstream sends back (every provider's).
    pub fn start_with_stats(
        cfg: &ProviderConfig,
        core_ids: &[core_affinity::CoreId],
        stats: Option<Arc<PoolStats>>,
        redact: Arc<Redactor>,
    ) -> Result<Self, String> {
        let provider = Provider::from_config(cfg, redact)?;
        let cores: Vec<core_affinity::CoreId> = if cfg.pool.cores.is_empty() {
            core_ids.to_vec()
        } else {
            let mut v = Vec::new();
            for &c in &cfg.pool.cores {
                let id = core_ids
                    .iter()
                    .find(|id| id.id == c)
                    .copied()
                    .ok_or_else(|| {
                        format!(
                            "providers.{}.pool.cores: core {c} does not exist on this machine",
                            cfg.name
                        )
                    })?;
                v.push(id);
            }
            v
        };
        let stats =
            stats.unwrap_or_else(|| Arc::new(PoolStats::new(&cfg.name, cores.len().max(1))));
        let (tx, rx) = crossbeam_channel::bounded(cfg.pool.queue_capacity);
        let workers = cfg.pool.workers;
        let core_list: Vec<usize> = cores.iter().map(|c| c.id).collect();
        let shared = Arc::new(Shared {
            name: cfg.name.clone(),
            provider,
            cfg: cfg.pool.clone(),
            stream_idle_timeout: cfg.stream_idle_timeout,
            stream_duration_max: cfg.stream_duration_max,
            breaker: breaker::Breaker::new(cfg.breaker.clone()),
            stats,
            closed: AtomicBool::new(false),
            abandon: AtomicBool::new(false),
            workers_alive: AtomicU64::new(0),
            rx: inbox::JobInbox::new(rx),
            cores,
            next_worker: AtomicUsize::new(0),
            workers_target: AtomicUsize::new(workers),
            stalled_now: AtomicUsize::new(0),
            slots: Mutex::new(Vec::with_capacity(workers)),
            handles: Mutex::new(Vec::with_capacity(workers)),
            epoch: Instant::now(),
            supervisor: supervisor::State::new(&cfg.health),
            idle: idle::IdleWorkers::new(&core_list),
        });
        for _ in 0..workers {
            worker::spawn(&shared)?;
        }
        supervisor::spawn(&shared, cfg)?;
        Ok(ProviderPool { shared, tx })
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn stats(&self) -> &Arc<PoolStats> {
        &self.shared.stats
    }

    pub fn config(&self) -> &PoolConfig {
        &self.shared.cfg
    }

    /// Workers the pool aims at (moved by adaptive scaling).
    pub fn workers_target(&self) -> u64 {
        self.shared.workers_target.load(Ordering::Relaxed) as u64
    }

    /// Pool size suggested by Little's law over the last scaling interval.
    pub fn workers_suggested(&self) -> u64 {
        self.shared
            .supervisor
            .suggested_workers
            .load(Ordering::Relaxed)
    }

    /// The provider's circuit breaker.
    pub fn breaker(&self) -> &breaker::Breaker {
        &self.shared.breaker
    }

    /// Longest silence between the events of an upstream stream.
    pub fn stream_idle_timeout(&self) -> Duration {
        self.shared.stream_idle_timeout
    }

    /// Longest stream, from its beginning to its end.
    pub fn stream_duration_max(&self) -> Duration {
        self.shared.stream_duration_max
    }

    /// Whether the shutdown deadline passed: what this pool still runs is answered
    /// `shutting_down` (see [`ProviderPool::abandon`]).
    pub fn abandoned(&self) -> bool {
        self.shared.abandon.load(Ordering::Acquire)
    }

    pub fn queue_depth(&self) -> usize {
        self.tx.len()
    }

    /// Worker threads running (fewer than `workers` only while starting, shutting down, or when a
    /// worker died).
    pub fn workers_alive(&self) -> u64 {
        self.shared.workers_alive.load(Ordering::Relaxed)
    }

    /// Put a job on the queue under the pool's full-queue policy. Never blocks an OS thread: the
    /// `block` policy waits with coroutine sleeps.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(shutting_down());
        }
        let counters = &self.shared.stats.counters;
        let job = match self.try_queue(job) {
            Ok(done) => return done,
            Err(job) => job,
        };
        match self.shared.cfg.queue_policy {
            QueuePolicy::Drop => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                Err(ApiError::new(
                    ErrorKind::QueueFull,
                    "queue_full",
                    format!("provider {} is at capacity; retry later", self.shared.name),
                )
                .with_retry_after(DROP_RETRY_AFTER_S))
            }
            QueuePolicy::Error => {
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                Err(self.overloaded())
            }
            QueuePolicy::Block => self.submit_blocking(job),
        }
    }

    fn submit_blocking(&self, mut job: Job) -> Result<(), ApiError> {
        let counters = &self.shared.stats.counters;
        let give_up = job.enqueued_at + self.shared.cfg.queue_wait_max;
        let mut pause = Duration::from_micros(50);
        loop {
            let now = Instant::now();
            if now >= give_up || self.shared.closed.load(Ordering::Acquire) {
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(self.overloaded());
            }
            may::coroutine::sleep(pause.min(give_up - now));
            pause = (pause * 2).min(BLOCK_POLL_MAX);
            job = match self.try_queue(job) {
                Ok(done) => return done,
                Err(job) => job,
            };
        }
    }

    /// Queue `job` and wake an idle worker for it; the job back when the queue is full.
    fn try_queue(&self, job: Job) -> Result<Result<(), ApiError>, Job> {
        match self.tx.try_send(job) {
            Ok(()) => {
                let counters = &self.shared.stats.counters;
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                // No worker waited for it: a pool that may grow grows now, not at its next
                // scaling interval (a burst of long streams is served instead of queued).
                if !self.shared.idle.wake_one()
                    && self.shared.workers_target.load(Ordering::Relaxed)
                        < self.shared.cfg.workers_max
                {
                    self.shared.supervisor.want_workers();
                }
                Ok(Ok(()))
            }
            Err(TrySendError::Disconnected(_)) => Ok(Err(shutting_down())),
            Err(TrySendError::Full(job)) => Err(job),
        }
    }

    fn overloaded(&self) -> ApiError {
        ApiError::new(
            ErrorKind::Unavailable,
            "provider_overloaded",
            format!("provider {} is overloaded; retry later", self.shared.name),
        )
        .with_retry_after(DROP_RETRY_AFTER_S)
    }

    /// Stop taking new jobs (answered 503 from now on).
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.idle.wake_all();
    }

    /// The shutdown deadline passed: queued jobs are answered 503 `shutting_down` without an
    /// upstream call, and running ones are stopped (their upstream calls interrupted) and answered
    /// the same, a stream with an SSE error event. A worker that does not answer is left to the
    /// waiting coroutine, which sees [`ProviderPool::abandoned`] at its next nudge.
    pub fn abandon(&self) {
        self.close();
        self.shared.abandon.store(true, Ordering::Release);
        for slot in self.shared.lock_slots().iter() {
            if let Some(ctl) = worker::lock(&slot.ctl).as_ref() {
                ctl.cancel_for(CancelReason::Shutdown);
            }
        }
        self.shared.idle.wake_all();
    }

    /// The latest sign of life of the jobs running now (bytes read by a stream, SSE comments
    /// included), on the [`clock_ms`] clock; 0 when none showed any.
    pub fn activity_ms(&self) -> u64 {
        self.shared
            .lock_slots()
            .iter()
            .filter_map(|slot| worker::lock(&slot.ctl).as_ref().map(|c| c.activity_ms()))
            .max()
            .unwrap_or(0)
    }

    /// Whether every worker has exited (after [`ProviderPool::close`]).
    pub fn workers_exited(&self) -> bool {
        self.shared.workers_alive.load(Ordering::Acquire) == 0
    }

    /// Once every worker has exited: join their threads and answer `shutting_down` any job that
    /// slipped into the queue as the last worker left, so that none is lost.
    pub fn finish(&self) {
        if !self.workers_exited() {
            return;
        }
        let handles = std::mem::take(&mut *self.shared.lock_handles());
        for h in handles {
            let _ = h.join();
        }
        while let Some(job) = self.shared.rx.take() {
            let _ = job
                .reply
                .send(Reply::full(Err(shutting_down()), Timings::default()));
        }
    }

    /// Stop taking jobs; workers finish what is queued and in flight until `deadline`, then what
    /// remains is abandoned (answered 503, see [`ProviderPool::abandon`]). Returns once every
    /// worker has exited, or at `deadline` plus `grace` with a warning.
    pub fn shutdown(&self, deadline: Instant, grace: Duration) {
        self.close();
        if !wait_until(deadline, || self.workers_exited()) {
            self.abandon();
            if !wait_until(deadline + grace, || self.workers_exited()) {
                let alive = self.shared.workers_alive.load(Ordering::Acquire);
                crate::log::warn(
                    "workers still busy at the end of shutdown",
                    &[("pool", &self.shared.name), ("workers", &alive.to_string())],
                );
                return;
            }
        }
        self.finish();
    }

    /// `/stats` JSON of this pool.
    pub fn to_json(&self) -> serde_json::Value {
        let cfg = &self.shared.cfg;
        let mut v = self.shared.stats.to_json();
        v["queue_depth"] = self.queue_depth().into();
        v["queue_capacity"] = cfg.queue_capacity.into();
        v["queue_policy"] = format!("{:?}", cfg.queue_policy).to_lowercase().into();
        v["workers"] = cfg.workers.into();
        v["workers_alive"] = self.shared.workers_alive.load(Ordering::Relaxed).into();
        v["workers_target"] = self.shared.workers_target.load(Ordering::Relaxed).into();
        v["workers_min"] = cfg.workers_min.into();
        v["workers_max"] = cfg.workers_max.into();
        v["workers_stalled"] = self.shared.stalled_now.load(Ordering::Relaxed).into();
        v["supervisor"] = self.shared.supervisor.to_json();
        v["breaker"] = self.shared.breaker.to_json();
        v["key_pool"] = self.shared.provider.keys_json();
        v
    }

    /// Per-key state of the provider's key pool (empty for providers without keys).
    pub fn key_snapshots(&self) -> Vec<KeySnapshot> {
        self.shared.provider.key_snapshots()
    }

    /// The periodic stdout line of this pool.
    pub fn stats_line(&self) -> String {
        let cfg = &self.shared.cfg;
        self.shared
            .stats
            .interval_line(self.queue_depth(), cfg.queue_capacity, cfg.workers)
    }
}

/// First pause of a shutdown waiting for something to happen; it doubles up to
/// [`SHUTDOWN_POLL_MAX`] (a pool retired by a reload may wait for a stream of up to an hour).
const SHUTDOWN_POLL: Duration = Duration::from_millis(5);
const SHUTDOWN_POLL_MAX: Duration = Duration::from_millis(50);

/// Poll `done` until it holds (true) or `until` passes (false). For the threads that run a
/// shutdown, never for a coroutine.
pub fn wait_until(until: Instant, mut done: impl FnMut() -> bool) -> bool {
    let mut pause = SHUTDOWN_POLL;
    loop {
        if done() {
            return true;
        }
        let now = Instant::now();
        if now >= until {
            return false;
        }
        std::thread::sleep(pause.min(until - now));
        pause = (pause * 2).min(SHUTDOWN_POLL_MAX);
    }
}

pub(crate) fn shutting_down() -> ApiError {
    ApiError::shutting_down()
}

/// Receiving end type of a pool queue (for the worker module).
pub(crate) type JobReceiver = inbox::JobInbox<Job>;

//! The pool supervisor: one thread per pool that replaces stuck workers (stall detection: a job
//! past its deadline, or a running stream without activity or past its longest duration), scales
//! the pool between `workers_min` and `workers_max` (on its interval, and at once when a job is
//! queued with no idle worker to take it), suggests a pool size from Little's law, runs
//! the provider's optional health probe at start-up and while its breaker is open, and re-probes
//! provider keys whose disable has expired (never on a request's path). Every decision is logged
//! and kept for `/stats`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use super::{worker, Shared};
use crate::config::{HealthCheck, HealthConfig, ProviderConfig};
use crate::job::{clock_ms, CancelReason};
use crate::log;
use crate::stats::PoolCounters;

/// How often the supervisor looks at its pool.
const TICK: Duration = Duration::from_millis(100);
/// After a growth fell short (threads could not start), the wait before growing again on a
/// queued job.
const GROW_RETRY_MS: u64 = 1_000;
/// Scaling decisions kept for `/stats`.
const EVENTS_MAX: usize = 16;
/// Disabled provider keys re-probed per tick (each probe waits up to `health.timeout_ms`, and the
/// stall checks wait for it).
const KEY_PROBES_PER_TICK_MAX: usize = 1;

/// What `/stats` shows of the supervisor.
pub struct State {
    health: Mutex<serde_json::Value>,
    events: Mutex<VecDeque<serde_json::Value>>,
    /// Little's law: observed throughput x mean upstream time.
    pub suggested_workers: AtomicU64,
    /// Workers that the configured upstream rate limit can keep busy (0 = no limit configured).
    pub workers_for_rate_limit: AtomicU64,
    /// The supervisor's thread, unparked when the pool should grow at once.
    thread: OnceLock<Thread>,
    /// A job was queued with no idle worker to take it, and the supervisor has not looked yet.
    grow_wanted: AtomicBool,
    /// Growing on a queued job waits until then ([`clock_ms`]) after a growth fell short.
    grow_blocked_until_ms: AtomicU64,
}

impl State {
    pub fn new(health: &HealthConfig) -> Self {
        let status = if health.check == HealthCheck::None {
            "off"
        } else {
            "unknown"
        };
        State {
            health: Mutex::new(serde_json::json!({ "status": status })),
            events: Mutex::new(VecDeque::new()),
            suggested_workers: AtomicU64::new(0),
            workers_for_rate_limit: AtomicU64::new(0),
            thread: OnceLock::new(),
            grow_wanted: AtomicBool::new(false),
            grow_blocked_until_ms: AtomicU64::new(0),
        }
    }

    /// A job was queued and no idle worker took it: have the supervisor grow the pool now (one
    /// wake-up until it has looked, however many jobs ask).
    pub fn want_workers(&self) {
        if !self.grow_wanted.swap(true, Ordering::AcqRel) {
            if let Some(thread) = self.thread.get() {
                thread.unpark();
            }
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let events: Vec<_> = lock(&self.events).iter().cloned().collect();
        serde_json::json!({
            "health": lock(&self.health).clone(),
            "scaling_events": events,
            "suggested_workers": self.suggested_workers.load(Ordering::Relaxed),
            "workers_for_rate_limit": self.workers_for_rate_limit.load(Ordering::Relaxed),
        })
    }

    fn event(&self, event: serde_json::Value) {
        let mut events = lock(&self.events);
        if events.len() == EVENTS_MAX {
            events.pop_front();
        }
        events.push_back(event);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Start the supervisor of a pool; it ends when the pool is closed and its workers are gone.
pub(super) fn spawn(shared: &Arc<Shared>, cfg: &ProviderConfig) -> Result<(), String> {
    let shared = Arc::clone(shared);
    let health = cfg.health.clone();
    let name = format!("{}-supervisor", shared.name);
    std::thread::Builder::new()
        .name(name.clone())
        .stack_size(256 * 1024)
        .spawn(move || run(&shared, &health))
        .map(|_| ())
        .map_err(|e| format!("cannot start thread {name}: {e}"))
}

fn run(shared: &Arc<Shared>, health: &HealthConfig) {
    let started = Instant::now();
    let mut next_scale = started + shared.cfg.scale_interval;
    let mut last_change = started;
    let mut last_completed = 0u64;
    let mut last_scale_at = started;
    let mut next_health = started;
    let mut next_tick = started + TICK;
    let sup = &shared.supervisor;
    let _ = sup.thread.set(std::thread::current());
    loop {
        // Parked until the next tick, or until a queued job finds no idle worker.
        let now = Instant::now();
        if now < next_tick {
            std::thread::park_timeout(next_tick - now);
        }
        if sup.grow_wanted.swap(false, Ordering::AcqRel) && !shared.closed.load(Ordering::Acquire) {
            grow(shared, &mut last_change);
        }
        if Instant::now() < next_tick {
            continue;
        }
        next_tick = Instant::now() + TICK;
        let closed = shared.closed.load(Ordering::Acquire);
        if closed && shared.workers_alive.load(Ordering::Acquire) == 0 {
            return;
        }
        check_stalls(shared);
        if closed {
            continue;
        }
        let now = Instant::now();
        if now >= next_scale {
            next_scale = now + shared.cfg.scale_interval;
            let completed = shared.stats.counters.completed.load(Ordering::Relaxed);
            let window = now.saturating_duration_since(last_scale_at);
            last_scale_at = now;
            let rate = completed.saturating_sub(last_completed) as f64 / window.as_secs_f64();
            last_completed = completed;
            scale(shared, rate, &mut last_change);
        }
        if health.check != HealthCheck::None
            && now >= next_health
            && (now == started || shared.breaker.is_open() || next_health == started)
        {
            next_health = now + health.interval;
            probe(shared, health);
        }
        shared.provider.probe_keys(health, KEY_PROBES_PER_TICK_MAX);
    }
}

/// What the supervisor knows of a running job, all on the [`clock_ms`] clock.
#[derive(Clone, Copy, Debug)]
struct Running {
    /// The request deadline: bounds a whole answer, and a stream until it begins.
    deadline_ms: u64,
    /// Once a stream began: its last activity and its end.
    stream: Option<(u64, u64)>,
}

/// Mark `slot` stalled and interrupt its upstream call when its job is stuck; true when it was.
fn mark_if_stuck(slot: &worker::WorkerSlot, now_ms: u64, idle_ms: u64, grace_ms: u64) -> bool {
    let deadline_ms = slot.job_deadline_ms.load(Ordering::Acquire);
    if deadline_ms == 0 || slot.stalled.load(Ordering::Acquire) {
        return false;
    }
    // Decided and acted on under the slot's lock: the worker clears the slot under it before its
    // job's last reply, after which the control may serve another request.
    let ctl = lock(&slot.ctl);
    let Some(ctl) = ctl.as_ref() else {
        return false;
    };
    let job = Running {
        deadline_ms,
        stream: ctl
            .stream_until_ms()
            .map(|until| (ctl.activity_ms(), until)),
    };
    if !is_stuck(job, now_ms, idle_ms, grace_ms) {
        return false;
    }
    slot.stalled.store(true, Ordering::Release);
    // A whole answer's client was answered at its deadline already; a stream's client gets an
    // error event once the interrupted call returns (or from its coroutine, if it never does).
    ctl.cancel_for(CancelReason::Stalled);
    true
}

/// Whether a job is stuck at `now_ms`: `grace_ms` past its deadline, or for a stream that began,
/// `grace_ms` past its idle timeout since its last activity or past its end. A long stream that
/// keeps reading is healthy, whatever the request deadline.
fn is_stuck(job: Running, now_ms: u64, idle_ms: u64, grace_ms: u64) -> bool {
    match job.stream {
        Some((activity_ms, until_ms)) => {
            now_ms > activity_ms.saturating_add(idle_ms + grace_ms)
                || now_ms > until_ms.saturating_add(grace_ms)
        }
        None => now_ms > job.deadline_ms.saturating_add(grace_ms),
    }
}

/// Replace every worker whose job is stuck (see [`is_stuck`]).
fn check_stalls(shared: &Arc<Shared>) {
    let now_ms = clock_ms();
    let grace_ms = shared.cfg.stall_grace.as_millis() as u64;
    let idle_ms = shared.stream_idle_timeout.as_millis() as u64;
    let mut stuck = Vec::new();
    for slot in shared.lock_slots().iter() {
        if mark_if_stuck(slot, now_ms, idle_ms, grace_ms) {
            stuck.push(Arc::clone(slot));
        }
    }
    for slot in stuck {
        shared.stalled_now.fetch_add(1, Ordering::AcqRel);
        PoolCounters::inc(&shared.stats.counters.stalled_workers);
        log::warn(
            "worker stuck in its job; starting a replacement",
            &[("pool", &shared.name), ("worker", &slot.name)],
        );
        // Bounded: stuck threads plus replacements never pass twice the pool's maximum.
        let alive = shared.workers_alive.load(Ordering::Acquire) as usize;
        if alive >= 2 * shared.cfg.workers_max {
            log::error(
                "too many stalled workers; not replacing more",
                &[
                    ("pool", &shared.name),
                    ("workers_alive", &alive.to_string()),
                ],
            );
            continue;
        }
        if let Err(e) = worker::spawn(shared) {
            log::error(
                "cannot replace a stalled worker",
                &[("pool", &shared.name), ("error", &e)],
            );
        }
    }
}

/// One scaling decision from the last interval: utilisation and p99 queue wait up, idleness down.
fn scale(shared: &Arc<Shared>, rate: f64, last_change: &mut Instant) {
    let cfg = &shared.cfg;
    let (queue_wait_p99_us, upstream_mean_us) = shared.stats.take_scale_window();
    let upstream_s = upstream_mean_us / 1e6;
    let suggested = (rate * upstream_s).ceil() as u64;
    let sup = &shared.supervisor;
    sup.suggested_workers.store(suggested, Ordering::Relaxed);
    if cfg.upstream_rps_max > 0.0 {
        let by_limit = (cfg.upstream_rps_max * upstream_s).ceil() as u64;
        sup.workers_for_rate_limit
            .store(by_limit, Ordering::Relaxed);
    }
    if cfg.workers_min >= cfg.workers_max || last_change.elapsed() < cfg.scale_min_interval {
        return;
    }
    let target = shared.workers_target.load(Ordering::Acquire);
    let busy = shared.stats.counters.busy_workers.load(Ordering::Relaxed) as f64;
    let utilization = busy / target.max(1) as f64;
    let depth = shared.rx.len();
    let queue_wait_hot = queue_wait_p99_us > cfg.scale_queue_wait_p99_max.as_micros() as u64;
    let (new, reason) = if (utilization >= cfg.scale_up_utilization || queue_wait_hot)
        && target < cfg.workers_max
    {
        let new = ((target as f64 * cfg.scale_up_factor).ceil() as usize)
            .clamp(target + 1, cfg.workers_max);
        (
            new,
            if queue_wait_hot {
                "queue_wait_p99"
            } else {
                "utilization"
            },
        )
    } else if utilization < cfg.scale_down_utilization && depth == 0 && target > cfg.workers_min {
        let new = ((target as f64 / cfg.scale_up_factor).floor() as usize)
            .clamp(cfg.workers_min, target - 1);
        (new, "idle")
    } else {
        return;
    };
    let why = Why {
        reason,
        utilization,
        queue_wait_p99_us,
        depth,
    };
    resize(shared, target, new, &why, last_change);
}

/// A job waits with no idle worker to take it: grow at once towards `workers_max`, by the scale
/// factor or by the jobs waiting, whichever is more. The queue is the evidence, so neither
/// `scale_interval_ms` nor `scale_min_interval_ms` applies; shrinking still waits for both.
fn grow(shared: &Arc<Shared>, last_change: &mut Instant) {
    let cfg = &shared.cfg;
    let target = shared.workers_target.load(Ordering::Acquire);
    let depth = shared.rx.len();
    // Workers started by the last growth may not have taken their jobs yet: count them, so that
    // one burst does not double the pool twice.
    let busy = shared.stats.counters.busy_workers.load(Ordering::Relaxed);
    let free = shared.workers_effective().saturating_sub(busy as usize);
    if cfg.workers_min >= cfg.workers_max
        || target >= cfg.workers_max
        || depth <= free
        || clock_ms()
            < shared
                .supervisor
                .grow_blocked_until_ms
                .load(Ordering::Acquire)
    {
        return;
    }
    let new = ((target as f64 * cfg.scale_up_factor).ceil() as usize)
        .max(target + depth - free)
        .clamp(target + 1, cfg.workers_max);
    let why = Why {
        reason: "queued",
        utilization: busy as f64 / target.max(1) as f64,
        queue_wait_p99_us: 0,
        depth,
    };
    resize(shared, target, new, &why, last_change);
}

/// What a scaling decision was based on (logged and kept for `/stats`).
struct Why {
    reason: &'static str,
    utilization: f64,
    queue_wait_p99_us: u64,
    depth: usize,
}

/// Move the pool's target from `target` to `new`: start the workers a growing pool lacks (idle
/// workers above a lower target retire themselves after their current job).
fn resize(shared: &Arc<Shared>, target: usize, new: usize, why: &Why, last_change: &mut Instant) {
    let sup = &shared.supervisor;
    shared.workers_target.store(new, Ordering::Release);
    *last_change = Instant::now();
    let up = new > target;
    let counters = &shared.stats.counters;
    PoolCounters::inc(if up {
        &counters.scale_ups
    } else {
        &counters.scale_downs
    });
    if up {
        let want = new.saturating_sub(shared.workers_effective());
        let room = super::room::threads_room().unwrap_or(usize::MAX);
        if room < want {
            log::warn(
                "a pool cannot grow as far as it should: the process is near the kernel's limit \
                 of memory maps (each thread takes 4; raise it with sysctl vm.max_map_count)",
                &[
                    ("pool", &shared.name),
                    ("wanted", &want.to_string()),
                    ("room", &room.to_string()),
                ],
            );
        }
        for _ in 0..want.min(room) {
            if let Err(e) = worker::spawn(shared) {
                log::error(
                    "cannot start a worker",
                    &[("pool", &shared.name), ("error", &e)],
                );
                break;
            }
        }
        let running = shared.workers_effective();
        if running < new {
            // What runs is the target; growing again waits a second (each look reads the
            // process's memory maps).
            shared
                .workers_target
                .store(running.max(target), Ordering::Release);
            sup.grow_blocked_until_ms
                .store(clock_ms() + GROW_RETRY_MS, Ordering::Release);
        }
    }
    let (from, to) = (target.to_string(), new.to_string());
    let (util, qw) = (
        format!("{:.2}", why.utilization),
        why.queue_wait_p99_us.to_string(),
    );
    log::info(
        "pool scaled",
        &[
            ("pool", &shared.name),
            ("from", &from),
            ("to", &to),
            ("reason", why.reason),
            ("utilization", &util),
            ("queue_wait_us_p99", &qw),
        ],
    );
    sup.event(serde_json::json!({
        "at_s": shared.epoch.elapsed().as_secs_f64(),
        "from": target,
        "to": new,
        "reason": why.reason,
        "utilization": why.utilization,
        "queue_wait_us_p99": why.queue_wait_p99_us,
        "queue_depth": why.depth,
    }));
}

fn probe(shared: &Arc<Shared>, health: &HealthConfig) {
    let result = shared.provider.health_probe(&health.check, health.timeout);
    let at_s = shared.epoch.elapsed().as_secs_f64();
    let value = match &result {
        Ok(()) => serde_json::json!({ "status": "ok", "checked_at_s": at_s }),
        Err(e) => serde_json::json!({ "status": "failed", "error": e, "checked_at_s": at_s }),
    };
    let changed = lock(&shared.supervisor.health).get("status") != value.get("status");
    *lock(&shared.supervisor.health) = value;
    match result {
        Ok(()) => {
            shared.breaker.health_probe_ok();
            if changed {
                log::info("health check passed", &[("pool", &shared.name)]);
            }
        }
        Err(e) => {
            let e: &str = &e;
            if changed {
                log::warn(
                    "health check failed",
                    &[("pool", &shared.name), ("error", e)],
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{is_stuck, Running};

    #[test]
    fn a_whole_answer_is_judged_by_its_deadline() {
        let job = Running {
            deadline_ms: 1_000,
            stream: None,
        };
        assert!(!is_stuck(job, 1_200, 300, 200));
        assert!(is_stuck(job, 1_201, 300, 200));
    }

    #[test]
    fn a_stream_is_judged_by_its_activity_and_its_end_not_the_deadline() {
        // Began before its deadline, active ever since: healthy long past the deadline.
        let active = Running {
            deadline_ms: 1_000,
            stream: Some((59_900, 3_600_000)),
        };
        assert!(!is_stuck(active, 60_000, 300, 200));
        // Silent past its idle timeout plus the grace.
        assert!(!is_stuck(active, 60_400, 300, 200));
        assert!(is_stuck(active, 60_401, 300, 200));
        // Past its end plus the grace, however active.
        let long = Running {
            deadline_ms: 1_000,
            stream: Some((3_600_150, 3_600_000)),
        };
        assert!(!is_stuck(long, 3_600_200, 300, 200));
        assert!(is_stuck(long, 3_600_201, 300, 200));
    }
}

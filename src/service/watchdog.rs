//! The systemd watchdog: `WATCHDOG=1` every half `WATCHDOG_USEC`, sent only while the gateway is
//! alive. Alive means: the coroutine scheduler runs (a heartbeat coroutine ticks), both accept
//! loops run, and every pool of the current gateway has all its workers and makes progress (when
//! work is waiting, some job finishes or a running stream shows activity within its request
//! timeout: a pool busy with long streams is alive). When a check fails the pings
//! stop, so systemd restarts a hung gateway (`Restart=on-failure`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::notify::Notifier;
use super::ServiceStats;
use crate::app::Gateway;
use crate::http::ServerHandle;
use crate::log;
use crate::pool::ProviderPool;

/// How often the heartbeat coroutine ticks.
const HEARTBEAT_PERIOD: Duration = Duration::from_millis(100);
/// The scheduler counts as stalled when the heartbeat is older than this.
const HEARTBEAT_STALE_MAX: Duration = Duration::from_secs(5);
/// Stack of the heartbeat coroutine: it only sleeps and stores a number.
const HEARTBEAT_STACK_BYTES: usize = 32 * 1024;
/// Added to a pool's request timeout before "no job finished while work waits" means stuck: the
/// reply grace of a request plus scheduling slack.
const STUCK_SLACK: Duration = Duration::from_secs(5);
/// Longest single sleep of the ping thread, so that stopping it is prompt.
const PING_SLEEP_MAX: Duration = Duration::from_millis(50);

const _: () = assert!(HEARTBEAT_PERIOD.as_millis() * 10 <= HEARTBEAT_STALE_MAX.as_millis());

/// Progress of one pool between two checks.
#[derive(Clone, Copy, Debug)]
struct Progress {
    completed: u64,
    /// Latest activity of the running jobs (see [`ProviderPool::activity_ms`]).
    activity_ms: u64,
    /// Since when the pool has had work and finished nothing.
    since: Instant,
}

/// What one liveness check reads of a pool.
#[derive(Clone, Debug)]
struct PoolSample {
    name: String,
    workers: u64,
    workers_alive: u64,
    queue_depth: usize,
    busy: u64,
    completed: u64,
    activity_ms: u64,
    request_timeout: Duration,
}

impl PoolSample {
    fn of(pool: &ProviderPool) -> PoolSample {
        let c = &pool.stats().counters;
        PoolSample {
            name: pool.name().to_string(),
            workers: pool.config().workers as u64,
            workers_alive: pool.workers_alive(),
            queue_depth: pool.queue_depth(),
            busy: c.busy_workers.load(Ordering::Relaxed),
            completed: c.completed.load(Ordering::Relaxed),
            activity_ms: pool.activity_ms(),
            request_timeout: pool.config().request_timeout,
        }
    }
}

/// Ok when the pool is alive; else why not. Updates `track`.
fn pool_verdict(track: &mut Progress, s: &PoolSample, now: Instant) -> Result<(), String> {
    if s.workers_alive < s.workers {
        return Err(format!(
            "pool {}: {} of {} workers alive",
            s.name, s.workers_alive, s.workers
        ));
    }
    let has_work = s.queue_depth > 0 || s.busy > 0;
    let progressed = s.completed != track.completed || s.activity_ms != track.activity_ms;
    if progressed || !has_work {
        *track = Progress {
            completed: s.completed,
            activity_ms: s.activity_ms,
            since: now,
        };
        return Ok(());
    }
    let stalled = now.saturating_duration_since(track.since);
    if stalled > s.request_timeout + STUCK_SLACK {
        return Err(format!(
            "pool {}: no job finished or streamed for {} s while {} were queued and {} workers busy",
            s.name,
            stalled.as_secs(),
            s.queue_depth,
            s.busy
        ));
    }
    Ok(())
}

/// The checks behind each ping.
struct Probe {
    gateway: Arc<ArcSwap<Gateway>>,
    listeners: Vec<(&'static str, Arc<ServerHandle>)>,
    /// Milliseconds since `base` at the heartbeat coroutine's last tick.
    heartbeat_ms: Arc<AtomicU64>,
    base: Instant,
    progress: HashMap<String, Progress>,
}

impl Probe {
    fn check(&mut self) -> Result<(), String> {
        let now = Instant::now();
        let beat = self.base + Duration::from_millis(self.heartbeat_ms.load(Ordering::Acquire));
        let age = now.saturating_duration_since(beat);
        if age > HEARTBEAT_STALE_MAX {
            let ms = age.as_millis();
            return Err(format!(
                "coroutine scheduler stalled: no heartbeat for {ms} ms"
            ));
        }
        for (name, listener) in &self.listeners {
            if !listener.accepting() {
                return Err(format!("the {name} listener's accept loop is not running"));
            }
        }
        let gateway = self.gateway.load();
        self.progress
            .retain(|name, _| gateway.pools.iter().any(|p| p.name() == name));
        for pool in &gateway.pools {
            let sample = PoolSample::of(pool);
            let track = self
                .progress
                .entry(sample.name.clone())
                .or_insert(Progress {
                    completed: sample.completed,
                    activity_ms: sample.activity_ms,
                    since: now,
                });
            pool_verdict(track, &sample, now)?;
        }
        Ok(())
    }
}

/// The running watchdog; stops (no more pings) on [`Watchdog::stop`] or drop.
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Start the heartbeat coroutine and the ping thread (pings every `timeout / 2`).
    pub fn start(
        notifier: Arc<Notifier>,
        timeout: Duration,
        gateway: Arc<ArcSwap<Gateway>>,
        listeners: Vec<(&'static str, Arc<ServerHandle>)>,
        stats: Arc<ServiceStats>,
    ) -> Result<Watchdog, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let base = Instant::now();
        let heartbeat_ms = Arc::new(AtomicU64::new(0));
        start_heartbeat(base, Arc::clone(&heartbeat_ms), Arc::clone(&stop))?;
        let mut probe = Probe {
            gateway,
            listeners,
            heartbeat_ms,
            base,
            progress: HashMap::new(),
        };
        let period = timeout / 2;
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                let mut failing: Option<String> = None;
                while sleep_unless(&stopping, period) {
                    match probe.check() {
                        Ok(()) => {
                            if let Some(why) = failing.take() {
                                log::info("watchdog: alive again", &[("was", &why)]);
                            }
                            if let Err(e) = notifier.watchdog() {
                                log::debug("watchdog ping failed", &[("error", &e.to_string())]);
                            }
                        }
                        Err(why) => {
                            stats.watchdog_failures.fetch_add(1, Ordering::Relaxed);
                            if failing.as_deref() != Some(why.as_str()) {
                                log::error(
                                    "watchdog: not alive, withholding WATCHDOG=1",
                                    &[("reason", &why)],
                                );
                            }
                            failing = Some(why);
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the watchdog thread: {e}"))?;
        log::info(
            "systemd watchdog on",
            &[
                ("timeout_ms", &timeout.as_millis().to_string()),
                ("ping_every_ms", &period.as_millis().to_string()),
            ],
        );
        Ok(Watchdog {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop pinging (shutdown). Returns once the ping thread exited.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sleep `total` in short steps; false as soon as `stop` is set.
fn sleep_unless(stop: &AtomicBool, total: Duration) -> bool {
    let until = Instant::now() + total;
    loop {
        if stop.load(Ordering::Acquire) {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(PING_SLEEP_MAX));
    }
}

/// A coroutine that stores the time every [`HEARTBEAT_PERIOD`]: it ticks only while the may
/// scheduler runs coroutines and their timers (which the accept loops and connections need).
fn start_heartbeat(
    base: Instant,
    beat: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let tick = move || {
        while !stop.load(Ordering::Acquire) {
            beat.store(base.elapsed().as_millis() as u64, Ordering::Release);
            may::coroutine::sleep(HEARTBEAT_PERIOD);
        }
    };
    // SAFETY: the coroutine touches no thread-local state (an atomic store and a may sleep) and
    // needs little stack.
    let spawned = unsafe {
        may::coroutine::Builder::new()
            .name("heartbeat".into())
            .stack_size(crate::http::stack_words(HEARTBEAT_STACK_BYTES))
            .spawn(tick)
    };
    spawned
        .map(drop)
        .map_err(|e| format!("cannot start the heartbeat coroutine: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(queue_depth: usize, busy: u64, completed: u64) -> PoolSample {
        PoolSample {
            name: "p".into(),
            workers: 4,
            workers_alive: 4,
            queue_depth,
            busy,
            completed,
            activity_ms: 0,
            request_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_pool_that_finishes_jobs_is_alive() {
        let t0 = Instant::now();
        let mut track = Progress {
            completed: 0,
            activity_ms: 0,
            since: t0,
        };
        for i in 1..100u64 {
            let now = t0 + Duration::from_secs(i * 60);
            assert!(pool_verdict(&mut track, &sample(10, 4, i), now).is_ok());
        }
    }

    #[test]
    fn an_idle_pool_is_alive() {
        let t0 = Instant::now();
        let mut track = Progress {
            completed: 5,
            activity_ms: 0,
            since: t0,
        };
        let later = t0 + Duration::from_secs(3600);
        assert!(pool_verdict(&mut track, &sample(0, 0, 5), later).is_ok());
        // Work arrives: the clock starts now, not at t0.
        let soon = later + Duration::from_secs(1);
        assert!(pool_verdict(&mut track, &sample(3, 4, 5), soon).is_ok());
    }

    #[test]
    fn a_pool_stuck_past_its_request_timeout_is_not_alive() {
        let t0 = Instant::now();
        let mut track = Progress {
            completed: 7,
            activity_ms: 0,
            since: t0,
        };
        let within = t0 + Duration::from_secs(10) + STUCK_SLACK;
        assert!(pool_verdict(&mut track, &sample(2, 4, 7), within).is_ok());
        let past = within + Duration::from_secs(1);
        let err = pool_verdict(&mut track, &sample(2, 4, 7), past).unwrap_err();
        assert!(err.contains("pool p: no job finished"), "{err}");
        // One job finishes: alive again.
        assert!(pool_verdict(&mut track, &sample(2, 4, 8), past).is_ok());
    }

    #[test]
    fn a_pool_busy_with_active_streams_is_alive_past_its_request_timeout() {
        let t0 = Instant::now();
        let mut track = Progress {
            completed: 7,
            activity_ms: 1,
            since: t0,
        };
        let mut s = sample(0, 4, 7);
        for i in 1..100u64 {
            s.activity_ms = 1 + i * 60_000;
            let now = t0 + Duration::from_secs(i * 60);
            assert!(pool_verdict(&mut track, &s, now).is_ok());
        }
        // The streams fall silent: stuck after the request timeout.
        let past = t0 + Duration::from_secs(99 * 60) + Duration::from_secs(10) + STUCK_SLACK;
        let err = pool_verdict(&mut track, &s, past + Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("no job finished or streamed"), "{err}");
    }

    #[test]
    fn a_pool_that_lost_a_worker_is_not_alive() {
        let mut s = sample(0, 0, 0);
        s.workers_alive = 3;
        let now = Instant::now();
        let mut track = Progress {
            completed: 0,
            activity_ms: 0,
            since: now,
        };
        let err = pool_verdict(&mut track, &s, now).unwrap_err();
        assert_eq!(err, "pool p: 3 of 4 workers alive");
    }
}

//! A provider's circuit breaker. Closed: requests flow and outcomes are counted in a rolling
//! window. It opens when the failure ratio over the window passes a threshold (with a minimum
//! number of requests) or after N consecutive failures; open rejects at once for a cool-down; then
//! half-open lets a few probe requests through: all succeed -> closed, one fails -> open again.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

pub use crate::config::BreakerConfig;

/// Buckets of the rolling window.
const WINDOW_BUCKETS: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Bucket {
    /// Which window slot this bucket currently counts (start time / bucket length).
    slot: u64,
    ok: u32,
    failed: u32,
}

pub struct Breaker {
    cfg: BreakerConfig,
    epoch: Instant,
    state: AtomicU8,
    /// When the breaker opened (ms since epoch).
    opened_at_ms: AtomicU64,
    consecutive: AtomicU32,
    probes_started: AtomicU32,
    probes_ok: AtomicU32,
    window: Mutex<[Bucket; WINDOW_BUCKETS]>,
    pub rejected: AtomicU64,
    pub transitions: AtomicU64,
    /// The last transitions, newest last: (ms since start, state entered).
    history: Mutex<Vec<(u64, State)>>,
}

/// Transitions kept for `/stats`.
const HISTORY_MAX: usize = 16;

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        Breaker {
            cfg,
            epoch: Instant::now(),
            state: AtomicU8::new(State::Closed as u8),
            opened_at_ms: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            probes_started: AtomicU32::new(0),
            probes_ok: AtomicU32::new(0),
            window: Mutex::new([Bucket::default(); WINDOW_BUCKETS]),
            rejected: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
            history: Mutex::new(Vec::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            1 => State::Open,
            2 => State::HalfOpen,
            _ => State::Closed,
        }
    }

    fn enter(&self, from: State, to: State) -> bool {
        let moved = self
            .state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if moved {
            self.transitions.fetch_add(1, Ordering::Relaxed);
            let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            if h.len() == HISTORY_MAX {
                h.remove(0);
            }
            h.push((self.now_ms(), to));
            crate::log::warn(
                "circuit breaker state change",
                &[("from", from.as_str()), ("to", to.as_str())],
            );
        }
        moved
    }

    /// May a request go to this provider now? Open rejects (counted); after the cool-down the
    /// first callers become half-open probes, up to `half_open_probes` at a time.
    pub fn allow(&self) -> bool {
        if !self.cfg.enabled {
            return true;
        }
        match self.state() {
            State::Closed => true,
            State::Open => {
                let opened = self.opened_at_ms.load(Ordering::Acquire);
                if self.now_ms() < opened + self.cfg.open_for.as_millis() as u64 {
                    self.rejected.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                if self.enter(State::Open, State::HalfOpen) {
                    self.probes_started.store(0, Ordering::Release);
                    self.probes_ok.store(0, Ordering::Release);
                }
                self.allow_probe()
            }
            State::HalfOpen => self.allow_probe(),
        }
    }

    fn allow_probe(&self) -> bool {
        // Probes that never reported (rejected by a full queue, cancelled by their client) must
        // not hold the breaker half-open forever: after another cool-down, admit new probes.
        let now = self.now_ms();
        let since = self.opened_at_ms.load(Ordering::Acquire);
        if now >= since + 2 * self.cfg.open_for.as_millis() as u64
            && self
                .opened_at_ms
                .compare_exchange(
                    since,
                    now.saturating_sub(self.cfg.open_for.as_millis() as u64),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            self.probes_started.store(0, Ordering::Release);
        }
        let n = self.probes_started.fetch_add(1, Ordering::AcqRel);
        if n < self.cfg.half_open_probes {
            return true;
        }
        self.probes_started.fetch_sub(1, Ordering::AcqRel);
        self.rejected.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Whether the breaker is open now (for health checks: probe only then).
    pub fn is_open(&self) -> bool {
        self.cfg.enabled && self.state() == State::Open
    }

    /// Record the outcome of one upstream attempt.
    pub fn record(&self, ok: bool) {
        if !self.cfg.enabled {
            return;
        }
        match self.state() {
            State::HalfOpen => {
                if ok {
                    let done = self.probes_ok.fetch_add(1, Ordering::AcqRel) + 1;
                    if done >= self.cfg.half_open_probes {
                        self.close();
                    }
                } else {
                    self.open(State::HalfOpen);
                }
            }
            State::Open => {}
            State::Closed => {
                let consecutive = if ok {
                    self.consecutive.store(0, Ordering::Relaxed);
                    0
                } else {
                    self.consecutive.fetch_add(1, Ordering::AcqRel) + 1
                };
                let (requests, failed) = self.count(ok);
                let by_streak = self.cfg.consecutive_failures > 0
                    && consecutive >= self.cfg.consecutive_failures;
                let by_ratio = requests >= self.cfg.min_requests
                    && f64::from(failed) >= self.cfg.failure_ratio * f64::from(requests);
                if !ok && (by_streak || by_ratio) {
                    self.open(State::Closed);
                }
            }
        }
    }

    /// A successful probe from outside (health check) while open: let requests probe now.
    pub fn health_probe_ok(&self) {
        if self.state() == State::Open {
            self.opened_at_ms.store(0, Ordering::Release);
        }
    }

    fn open(&self, from: State) {
        self.opened_at_ms.store(self.now_ms(), Ordering::Release);
        if self.enter(from, State::Open) {
            self.consecutive.store(0, Ordering::Relaxed);
            self.reset_window();
        }
    }

    fn close(&self) {
        if self.enter(State::HalfOpen, State::Closed) {
            self.consecutive.store(0, Ordering::Relaxed);
            self.reset_window();
        }
    }

    fn reset_window(&self) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        *w = [Bucket::default(); WINDOW_BUCKETS];
    }

    /// Count one outcome; return (requests, failures) over the window.
    fn count(&self, ok: bool) -> (u32, u32) {
        let bucket_ms = (self.cfg.window.as_millis() as u64 / WINDOW_BUCKETS as u64).max(1);
        let slot = self.now_ms() / bucket_ms;
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let b = &mut w[(slot % WINDOW_BUCKETS as u64) as usize];
        if b.slot != slot {
            *b = Bucket {
                slot,
                ok: 0,
                failed: 0,
            };
        }
        if ok {
            b.ok += 1;
        } else {
            b.failed += 1;
        }
        let oldest = slot.saturating_sub(WINDOW_BUCKETS as u64 - 1);
        w.iter()
            .filter(|b| b.slot >= oldest && b.slot <= slot)
            .fold((0, 0), |(r, f), b| (r + b.ok + b.failed, f + b.failed))
    }

    pub fn to_json(&self) -> serde_json::Value {
        let history: Vec<_> = self
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(ms, s)| serde_json::json!({"at_ms": ms, "state": s.as_str()}))
            .collect();
        serde_json::json!({
            "enabled": self.cfg.enabled,
            "state": self.state().as_str(),
            "rejected": self.rejected.load(Ordering::Relaxed),
            "transitions": self.transitions.load(Ordering::Relaxed),
            "history": history,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            enabled: true,
            failure_ratio: 0.5,
            min_requests: 10,
            window: Duration::from_secs(10),
            consecutive_failures: 5,
            open_for: Duration::from_millis(50),
            half_open_probes: 2,
        }
    }

    #[test]
    fn opens_on_consecutive_failures_then_half_opens_and_closes() {
        let b = Breaker::new(cfg());
        for _ in 0..4 {
            b.record(false);
        }
        assert_eq!(b.state(), State::Closed);
        b.record(false);
        assert_eq!(b.state(), State::Open);
        assert!(!b.allow());
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allow() && b.allow());
        assert_eq!(b.state(), State::HalfOpen);
        assert!(!b.allow(), "only two probes at a time");
        b.record(true);
        b.record(true);
        assert_eq!(b.state(), State::Closed);
        assert!(b.allow());
    }

    #[test]
    fn opens_on_failure_ratio_and_a_failed_probe_reopens() {
        // Long enough that the checks right after the reopen fall inside the cool-down even on
        // a loaded machine.
        let open_for = Duration::from_millis(500);
        let b = Breaker::new(BreakerConfig {
            consecutive_failures: 0,
            open_for,
            ..cfg()
        });
        for i in 0..12 {
            b.record(i % 2 == 0);
        }
        assert_eq!(b.state(), State::Open);
        assert!(!b.allow(), "open: rejected at once");
        assert_eq!(b.rejected.load(Ordering::Relaxed), 1);
        std::thread::sleep(open_for + Duration::from_millis(10));
        assert!(b.allow(), "after the cool-down: a half-open probe");
        assert_eq!(b.state(), State::HalfOpen);
        b.record(false);
        assert_eq!(b.state(), State::Open);
        // The reopened breaker rejects (and counts it) for a whole new cool-down.
        assert!(!b.allow(), "a failed probe reopens the breaker");
        assert_eq!(b.rejected.load(Ordering::Relaxed), 2);
        assert_eq!(b.transitions.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn disabled_breaker_never_opens() {
        let b = Breaker::new(BreakerConfig {
            enabled: false,
            ..cfg()
        });
        for _ in 0..100 {
            b.record(false);
        }
        assert!(b.allow());
    }
}

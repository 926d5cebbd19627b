//! Service-level counters shared by every gateway generation: reloads, draining pools, watchdog
//! failures (for `/stats` and `/metrics`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

/// Service-level counters, shared by every gateway generation (for `/stats` and `/metrics`).
pub struct ServiceStats {
    /// When the service started (Unix time, seconds).
    pub started_unix_s: f64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Whether the last reload applied (true before any).
    pub last_reload_ok: AtomicBool,
    /// Unix time (s) of the last successful reload, or of the start.
    pub last_reload_ok_unix_s: AtomicU64,
    /// Pools swapped out by a reload that are still finishing their work.
    pub pools_draining: AtomicU64,
    /// Watchdog checks that failed (each withheld one `WATCHDOG=1`).
    pub watchdog_failures: AtomicU64,
    /// Draining generations abandoned because a reload would have left too many draining.
    pub generations_abandoned: AtomicU64,
}

impl ServiceStats {
    pub fn new() -> ServiceStats {
        let now = unix_now();
        ServiceStats {
            started_unix_s: now.as_secs_f64(),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_reload_ok: AtomicBool::new(true),
            last_reload_ok_unix_s: AtomicU64::new(now.as_secs()),
            pools_draining: AtomicU64::new(0),
            watchdog_failures: AtomicU64::new(0),
            generations_abandoned: AtomicU64::new(0),
        }
    }

    /// The `service` part of `/stats`.
    pub fn to_json(&self) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "reloads_ok": g(&self.reloads_ok),
            "reloads_failed": g(&self.reloads_failed),
            "last_reload_ok": self.last_reload_ok.load(Ordering::Relaxed),
            "last_reload_ok_unix_s": g(&self.last_reload_ok_unix_s),
            "pools_draining": g(&self.pools_draining),
            "generations_abandoned": g(&self.generations_abandoned),
            "watchdog_failures": g(&self.watchdog_failures),
            "log_lines_dropped": crate::log::dropped_lines(),
        })
    }
}

impl Default for ServiceStats {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

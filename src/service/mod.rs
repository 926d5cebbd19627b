//! The gateway as a systemd service: start-up (pools, object pools, listeners), the notify protocol
//! (`READY=1` once listeners are bound and pools run, `RELOADING=1`/`READY=1` around a reload,
//! `STOPPING=1`), the watchdog, SIGHUP reload without dropping requests, and SIGTERM shutdown.
//!
//! Reload: handlers load the current [`Gateway`] from an [`ArcSwap`] per request. A reload builds
//! a new gateway with new pools from the re-read config and swaps it in; requests already holding
//! the old one finish on the old pools, which drain in the background (see [`reload::retire`]).

mod notify;
mod reload;
mod signals;
mod watchdog;

pub use notify::{monotonic_usec, watchdog_timeout, Notifier};
pub use reload::{restart_only_changes, GENERATIONS_DRAINING_MAX, RETIRE_SUBMIT_GRACE};
pub use signals::{Event, SignalSet};

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::admin::AdminHandler;
use crate::app::{ApiHandler, Gateway};
use crate::config::{AuthMode, Config};
use crate::cost::PriceTable;
use crate::http::{self, ServerHandle};
use crate::job::ReplyChannel;
use crate::log;
use crate::objpool::{ObjPool, ObjPoolStats};
use crate::plugins::Shared;
use crate::pool::{wait_until, waiters};
use crate::stats::ServiceStats;

/// Time past `shutdown_timeout` for the requests still running then to be answered 503
/// `shutting_down` (a stream with an SSE error event) and written, before the process exits:
/// their workers are interrupted at once, and a coroutine whose worker does not answer answers
/// itself at its next nudge.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
const _: () = assert!(SHUTDOWN_GRACE.as_millis() >= 2 * waiters::NUDGE_EVERY.as_millis());
/// Raise the soft descriptor limit to the hard one (as the Go runtime and many servers do: the
/// soft limit, often 1024, is a default for programs that may use `select`, which this one does
/// not), then warn when it, or the tasks this process may start (its cgroup's `pids.max`, which
/// systemd's `TasksMax` sets, and `RLIMIT_NPROC`), is below what the config can use at its most
/// ([`Config::os_needs`]): past the descriptors, accept() fails (counted as
/// `accept_fd_exhausted`) and new clients wait in the kernel's queue instead of getting a 503;
/// past the tasks, a pool cannot grow and a reload fails.
fn check_os_limits(config: &Config) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid `rlimit` it is given.
    let nofile = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        None
    } else {
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            // SAFETY: setrlimit reads the valid `rlimit` it is given; raising the soft limit up
            // to the hard one needs no privilege.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                log::info(
                    "raised the file descriptor limit (soft) to the hard limit",
                    &[
                        ("from", &limit.rlim_cur.to_string()),
                        ("to", &raised.rlim_cur.to_string()),
                    ],
                );
                limit = raised;
            }
        }
        Some(limit.rlim_cur)
    };
    for warning in config.os_limit_warnings(
        tasks_limit(),
        nofile,
        (
            "this process's task limit: its cgroup's pids.max, which TasksMax sets, or RLIMIT_NPROC",
            "this process's RLIMIT_NOFILE, which LimitNOFILE sets",
        ),
    ) {
        log::warn(&warning, &[]);
    }
    if let Some(warning) = max_map_count().and_then(|max| config.map_count_warning(max)) {
        log::warn(&warning, &[]);
    }
}

/// The kernel's `vm.max_map_count`, when it can be read.
pub fn max_map_count() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The most tasks (threads) this process may have: the smaller of its cgroup's `pids.max`
/// (cgroup v2; what systemd's `TasksMax` sets) and `RLIMIT_NPROC` (counted per user, so an
/// upper bound); `None` when neither is set.
fn tasks_limit() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| {
            let path = text
                .lines()
                .find_map(|l| l.strip_prefix("0::"))?
                .trim()
                .to_owned();
            let max = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/pids.max")).ok()?;
            max.trim().parse::<u64>().ok()
        });
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid `rlimit` it is given.
    let nproc = (unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut limit) } == 0
        && limit.rlim_cur != libc::RLIM_INFINITY)
        .then_some(limit.rlim_cur);
    match (cgroup, nproc) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Warnings about how authentication is set: off on a listener other machines reach, or static
/// client keys given as plain text rather than hashes.
fn warn_about_auth(config: &Config) {
    let s = &config.server;
    if s.auth == AuthMode::Off && !s.listen.ip().is_loopback() {
        log::warn(
            "client authentication is off (server.auth = \"off\") on a listener other machines \
             can reach: anyone who can connect spends the provider keys",
            &[("listen", &s.listen.to_string())],
        );
    }
    let plain = s.client_keys.iter().filter(|k| k.plain).count();
    if plain > 0 {
        log::warn(
            "server.client_keys holds plain-text keys (env:/file: references), which is \
             deprecated: write each as its hash, \"sha256:<hex>\" (deepintshield hash-key prints \
             it), or use virtual keys",
            &[("keys", &plain.to_string())],
        );
    }
}

/// The price table of `config`: the bundled one read over by `[prices] path`.
pub fn load_prices(config: &Config) -> Result<Arc<PriceTable>, String> {
    PriceTable::load(config.prices.path.as_deref()).map(Arc::new)
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// A running gateway service.
pub struct Service {
    config_path: PathBuf,
    gateway: Arc<ArcSwap<Gateway>>,
    api: Arc<ServerHandle>,
    admin: Arc<ServerHandle>,
    core_ids: Vec<core_affinity::CoreId>,
    notifier: Option<Arc<Notifier>>,
    watchdog: Option<watchdog::Watchdog>,
    stats: Arc<ServiceStats>,
    /// Generations of pools swapped out by reloads, while they drain (at most
    /// [`GENERATIONS_DRAINING_MAX`]): a shutdown stops them too.
    draining: Mutex<Vec<reload::Draining>>,
}

impl Service {
    /// Start the pools and both listeners on `config` (the may scheduler must be configured
    /// already), print the `listening on` line, and tell systemd `READY=1`.
    pub fn start(config: Config) -> Result<Service, String> {
        let notifier = match Notifier::from_env() {
            Ok(n) => n.map(Arc::new),
            Err(e) => {
                log::warn("not notifying systemd", &[("error", &e)]);
                None
            }
        };
        if let Some(problem) = config.auth_problem() {
            return Err(problem);
        }
        warn_about_auth(&config);
        let prices = load_prices(&config)?;
        let shared = Arc::new(Shared::start(&config)?);
        let config = Arc::new(config);
        let core_ids = core_affinity::get_core_ids().unwrap_or_default();
        let pools = reload::start_pools(&config, &core_ids, &[])?;
        crate::pool::waiters::start()?;
        let o = &config.objpools;
        let buffers = ObjPool::new(
            "connection_buffers",
            o.buffers,
            o.buffers_prefill,
            o.buffer_retain_bytes_max,
            || {
                http::ConnBuf(Vec::with_capacity(
                    crate::config::OBJPOOL_BUFFER_BYTES_INITIAL,
                ))
            },
        );
        let replies = ObjPool::new(
            "reply_channels",
            o.buffers,
            o.buffers_prefill,
            0,
            ReplyChannel::new,
        );
        // The upstream connections' buffers (process-wide, lent while bytes are in them).
        let upstream: Arc<dyn ObjPoolStats> = crate::providers::transport::lent_buffers().clone();
        let objpools: Vec<Arc<dyn ObjPoolStats>> = vec![buffers.clone(), replies.clone(), upstream];
        let gateway = Gateway::new(
            Arc::clone(&config),
            pools,
            replies,
            objpools,
            Instant::now(),
            1,
        )
        .with_plugins(shared, prices);
        let gateway = Arc::new(ArcSwap::from_pointee(gateway));
        let stats = Arc::new(ServiceStats::new());

        let bind = |addr| {
            std::net::TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))
        };
        check_os_limits(&config);
        let api_listener = bind(config.server.listen)?;
        let admin_listener = bind(config.server.admin_listen)?;
        let limits = config.server.limits.clone();
        let api = http::serve(
            api_listener,
            limits.clone(),
            Arc::new(ApiHandler(Arc::clone(&gateway))),
            buffers.clone(),
        )
        .map_err(|e| format!("cannot serve the API listener: {e}"))?;
        let admin_handler = AdminHandler {
            gateway: Arc::clone(&gateway),
            service: Arc::clone(&stats),
        };
        let admin = http::serve(admin_listener, limits, Arc::new(admin_handler), buffers)
            .map_err(|e| format!("cannot serve the admin listener: {e}"))?;
        let _ = gateway.load().front.set(api.stats().clone());
        let (api, admin) = (Arc::new(api), Arc::new(admin));
        // Tests and operators wait for this line: both listeners accept from here on.
        println!(
            "deepintshield {} listening on http://{} (api), http://{} (admin)",
            env!("CARGO_PKG_VERSION"),
            api.local_addr(),
            admin.local_addr()
        );
        let _ = std::io::Write::flush(&mut std::io::stdout());

        let mut service = Service {
            config_path: config.path.clone(),
            gateway,
            api,
            admin,
            core_ids,
            notifier,
            watchdog: None,
            stats,
            draining: Mutex::new(Vec::new()),
        };
        service.notify("READY=1", |n| n.ready(&service.status_line()));
        service.start_watchdog();
        Ok(service)
    }

    /// The current gateway (the stdout reporter reads it at each line).
    pub fn gateway(&self) -> Arc<ArcSwap<Gateway>> {
        Arc::clone(&self.gateway)
    }

    /// Answer signals until SIGTERM or SIGINT, then shut down gracefully.
    pub fn run(mut self, signals: &mut SignalSet) {
        loop {
            match signals.wait() {
                Event::Reload => self.reload(),
                Event::Shutdown(name) => {
                    log::info(
                        "shutting down: draining queued and in-flight requests",
                        &[("signal", name)],
                    );
                    break;
                }
            }
        }
        self.shutdown();
    }

    fn start_watchdog(&mut self) {
        let (Some(notifier), Some(timeout)) = (&self.notifier, watchdog_timeout()) else {
            return;
        };
        let listeners = vec![
            ("api", Arc::clone(&self.api)),
            ("admin", Arc::clone(&self.admin)),
        ];
        match watchdog::Watchdog::start(
            Arc::clone(notifier),
            timeout,
            Arc::clone(&self.gateway),
            listeners,
            Arc::clone(&self.stats),
        ) {
            Ok(w) => self.watchdog = Some(w),
            // No pings: systemd restarts the service after the timeout, which is what a gateway
            // that cannot watch itself deserves.
            Err(e) => log::error("cannot start the watchdog", &[("error", &e)]),
        }
    }

    /// Send a state to systemd (when run by it); a failure is logged, never fatal.
    fn notify(&self, what: &str, send: impl FnOnce(&Notifier) -> std::io::Result<()>) {
        if let Some(n) = &self.notifier {
            if let Err(e) = send(n) {
                log::warn(
                    "cannot notify systemd",
                    &[("state", what), ("error", &e.to_string())],
                );
            }
        }
    }

    fn status_line(&self) -> String {
        let g = self.gateway.load();
        format!(
            "serving {} providers on {} (config generation {})",
            g.pools.len(),
            self.api.local_addr(),
            g.generation
        )
    }

    /// SIGHUP: re-read and validate the config; apply it, or keep the running one and log why.
    fn reload(&mut self) {
        let started = Instant::now();
        log::info(
            "reload: re-reading the config",
            &[("path", &self.config_path.display().to_string())],
        );
        self.notify("RELOADING=1", Notifier::reloading);
        let outcome = self.apply(&self.config_path.clone());
        let stats = &self.stats;
        match &outcome {
            Ok(()) => {
                stats.reloads_ok.fetch_add(1, Ordering::Relaxed);
                stats.last_reload_ok.store(true, Ordering::Relaxed);
                let now = unix_now().as_secs();
                stats.last_reload_ok_unix_s.store(now, Ordering::Relaxed);
                log::info(
                    "reload: config applied",
                    &[
                        ("generation", &self.gateway.load().generation.to_string()),
                        ("ms", &started.elapsed().as_millis().to_string()),
                    ],
                );
            }
            Err(e) => {
                stats.reloads_failed.fetch_add(1, Ordering::Relaxed);
                stats.last_reload_ok.store(false, Ordering::Relaxed);
                log::error(
                    "reload failed: still serving the previous config",
                    &[("error", e)],
                );
            }
        }
        let status = match &outcome {
            Ok(()) => self.status_line(),
            Err(_) => format!("{}; last reload failed (see the log)", self.status_line()),
        };
        self.notify("READY=1", |n| n.ready(&status));
    }

    /// Load, validate and apply the config at `path`; on error the running config stays (only a
    /// draining generation abandoned to make room for the new one stays abandoned).
    fn apply(&self, path: &Path) -> Result<(), String> {
        let mut config = Config::load(path).map_err(|e| e.to_string())?;
        if let Some(problem) = config.auth_problem() {
            return Err(problem);
        }
        let prices = load_prices(&config)?;
        // Room for the generation this reload retires, before its successor's threads start:
        // a burst of reloads never holds more than the bound of generations (plus the one
        // running, and abandoned ones for the milliseconds their workers take to exit).
        self.make_room();
        let old = self.gateway.load_full();
        for change in restart_only_changes(&old.config, &config) {
            log::warn(
                "reload: setting changed but only a restart applies it; keeping the running value",
                &[("change", &change)],
            );
        }
        reload::keep_restart_only(&old.config, &mut config);
        warn_about_auth(&config);
        // The store opens once; a reload that first names one opens it.
        let shared = if old.plugins.store.is_none() && config.store.is_some() {
            Arc::new(Shared::start(&config)?)
        } else {
            Arc::clone(&old.plugins)
        };
        let config = Arc::new(config);
        let pools = reload::start_pools(&config, &self.core_ids, &old.pools)?;
        let next = Gateway::new(
            Arc::clone(&config),
            pools,
            Arc::clone(&old.replies),
            old.objpools.clone(),
            old.started,
            old.generation + 1,
        )
        .with_plugins(shared, prices);
        if let Some(front) = old.front.get() {
            let _ = next.front.set(Arc::clone(front));
        }
        log::set_level(config.log.level);
        log::set_access(config.log.access);
        self.api.set_limits(config.server.limits.clone());
        self.admin.set_limits(config.server.limits.clone());
        self.gateway.store(Arc::new(next));
        let retiring = reload::retire(old.pools.clone(), Arc::clone(&self.stats));
        self.draining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(retiring);
        Ok(())
    }

    /// Abandon the oldest draining generations while a reload would leave more than
    /// [`GENERATIONS_DRAINING_MAX`] draining (see [`reload::make_room`]).
    fn make_room(&self) {
        let mut draining = self.draining.lock().unwrap_or_else(|p| p.into_inner());
        let abandoned = reload::make_room(&mut draining);
        if abandoned > 0 {
            self.stats
                .generations_abandoned
                .fetch_add(abandoned as u64, Ordering::Relaxed);
            log::warn(
                "reload: too many generations draining; abandoned the oldest (its requests are \
                 answered 503 shutting_down)",
                &[
                    ("abandoned", &abandoned.to_string()),
                    ("draining_max", &GENERATIONS_DRAINING_MAX.to_string()),
                ],
            );
        }
    }

    /// Stop accepting, finish queued and in-flight requests up to `shutdown_timeout`, then answer
    /// every request still running 503 `shutting_down` (a stream that began: an SSE error event)
    /// and let those answers be written before returning (and the process exiting).
    fn shutdown(mut self) {
        self.notify("STOPPING=1", Notifier::stopping);
        if let Some(mut w) = self.watchdog.take() {
            w.stop();
        }
        let gateway = self.gateway.load_full();
        gateway.draining.store(true, Ordering::Relaxed);
        self.api.stop_accepting();
        let deadline = Instant::now() + gateway.config.server.shutdown_timeout;
        // Pools retired by a reload hold requests too.
        let mut pools = gateway.pools.clone();
        let draining = self.draining.lock().unwrap_or_else(|p| p.into_inner());
        pools.extend(draining.iter().flat_map(reload::Draining::pools));
        drop(draining);
        for p in &pools {
            p.close();
        }
        let in_flight = &self.api.stats().requests_in_flight;
        let answered = || in_flight.load(Ordering::Acquire) == 0;
        let finished = wait_until(deadline, || {
            pools.iter().all(|p| {
                p.finish();
                p.workers_exited()
            }) && answered()
        });
        if !finished {
            for p in &pools {
                p.abandon();
            }
            if !wait_until(deadline + SHUTDOWN_GRACE, answered) {
                log::warn(
                    "requests still unanswered at the end of shutdown",
                    &[("requests", &in_flight.load(Ordering::Acquire).to_string())],
                );
            }
        }
        for p in &pools {
            p.finish();
        }
        self.admin.stop_accepting();
        if let Some(store) = &gateway.plugins.store {
            store.close();
        }
        log::info("shutdown complete", &[]);
    }
}

//! The `deepintshield` binary: command line, start-up (scheduler, pools, listeners), the stats
//! reporter, signals and graceful shutdown. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or
//! config.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use deepintshield::app::{AdminHandler, ApiHandler, Gateway};
use deepintshield::config::{Config, ServerConfig};
use deepintshield::http;
use deepintshield::log;
use deepintshield::objpool::{ObjPool, ObjPoolStats};
use deepintshield::pool::{ProviderPool, ReplyChannel};
use deepintshield::route::Router;

/// Config used when no `--config` is given.
const CONFIG_PATH_DEFAULT: &str = "config/deepintshield.toml";
/// Extra time past `shutdown_timeout` for workers to answer what they abandoned.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// Initial capacity of a pooled connection buffer.
const BUFFER_BYTES_INITIAL: usize = 8 * 1024;

const USAGE: &str = "\
usage: deepintshield [--config PATH]   run the gateway (default config: config/deepintshield.toml)
       deepintshield --check [PATH]    validate a config and exit (0 valid, 2 invalid)
       deepintshield --version
       deepintshield --help

signals: SIGTERM/SIGINT drain and exit 0";

enum Command {
    Run(PathBuf),
    Check(PathBuf),
    Version,
    Help,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut it = args.iter();
    let mut cmd = None;
    let mut config = None;
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-c" | "--config" => {
                config = Some(it.next().ok_or("--config needs a path")?.clone());
            }
            "--check" => {
                cmd = Some("check");
                if let Some(p) = it.clone().next().filter(|p| !p.starts_with('-')) {
                    config = Some(p.clone());
                    it.next();
                }
            }
            "-V" | "--version" => return Ok(Command::Version),
            "-h" | "--help" => return Ok(Command::Help),
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    let path = PathBuf::from(config.unwrap_or_else(|| CONFIG_PATH_DEFAULT.to_string()));
    Ok(match cmd {
        Some(_) => Command::Check(path),
        None => Command::Run(path),
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse_args(&args) {
        Ok(Command::Run(path)) => run(&path),
        Ok(Command::Check(path)) => match Config::load(&path) {
            Ok(c) => {
                println!(
                    "config OK: {} ({} providers, {} aliases)",
                    path.display(),
                    c.providers.len(),
                    c.aliases.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("deepintshield: invalid config: {e}");
                ExitCode::from(2)
            }
        },
        Ok(Command::Version) => {
            println!("deepintshield {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Command::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("deepintshield: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("deepintshield: invalid config: {e}");
            return ExitCode::from(2);
        }
    };
    match start(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deepintshield: {e}");
            ExitCode::from(1)
        }
    }
}

fn start(config: &Config) -> Result<(), String> {
    // Signals are blocked from delivery-by-default before any thread starts, so every thread
    // inherits the registration and SIGTERM never kills the process mid-request.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;

    start_scheduler(&config.server)?;
    let core_ids = core_affinity::get_core_ids().unwrap_or_default();
    let mut pools = Vec::new();
    for p in config.providers.values() {
        pools.push(Arc::new(ProviderPool::start(p, &core_ids)?));
    }
    let o = &config.objpools;
    let buffers = ObjPool::new(
        "connection_buffers",
        o.buffers,
        o.buffers_prefill,
        o.buffer_retain_bytes_max,
        || Vec::with_capacity(BUFFER_BYTES_INITIAL),
    );
    let replies = ObjPool::new(
        "reply_channels",
        o.buffers,
        o.buffers_prefill,
        0,
        ReplyChannel::new,
    );
    let objpools: Vec<Arc<dyn ObjPoolStats>> = vec![buffers.clone(), replies.clone()];
    let gateway = Arc::new(Gateway {
        router: Router::new(config),
        pools: pools.clone(),
        json_depth_max: config.server.json_depth_max,
        replies,
        objpools: objpools.clone(),
        started: Instant::now(),
        draining: Default::default(),
        front: OnceLock::new(),
    });

    let bind = |addr| {
        std::net::TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))
    };
    let api_listener = bind(config.server.listen)?;
    let admin_listener = bind(config.server.admin_listen)?;
    let limits = config.server.limits.clone();
    let api = http::serve(
        api_listener,
        limits.clone(),
        Arc::new(ApiHandler(gateway.clone())),
        buffers.clone(),
    )
    .map_err(|e| format!("cannot serve the API listener: {e}"))?;
    let admin = http::serve(
        admin_listener,
        limits,
        Arc::new(AdminHandler(gateway.clone())),
        buffers,
    )
    .map_err(|e| format!("cannot serve the admin listener: {e}"))?;
    let _ = gateway.front.set(api.stats().clone());
    println!(
        "deepintshield {} listening on http://{} (api), http://{} (admin)",
        env!("CARGO_PKG_VERSION"),
        api.local_addr(),
        admin.local_addr()
    );
    let _ = std::io::stdout().flush();
    start_reporter(config, &pools, objpools);

    for signal in signals.forever() {
        if signal == signal_hook::consts::SIGHUP {
            log::warn("SIGHUP: live reload is not supported by this version; restart to apply config changes", &[]);
            continue;
        }
        break;
    }
    log::info("shutting down: draining queued and in-flight requests", &[]);
    gateway.draining.store(true, Ordering::Relaxed);
    api.stop_accepting();
    let deadline = Instant::now() + config.server.shutdown_timeout;
    for p in &pools {
        p.close();
    }
    for p in &pools {
        p.shutdown(deadline, SHUTDOWN_GRACE);
    }
    // Let coroutines write the last answers.
    let in_flight = &api.stats().requests_in_flight;
    while in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline + SHUTDOWN_GRACE {
        std::thread::sleep(Duration::from_millis(5));
    }
    admin.stop_accepting();
    log::info("shutdown complete", &[]);
    Ok(())
}

/// Configure the `may` scheduler (threads, coroutine stacks, cores) and start it.
fn start_scheduler(server: &ServerConfig) -> Result<(), String> {
    let cfg = may::config();
    cfg.set_workers(server.threads);
    cfg.set_stack_size(server.limits.coroutine_stack_bytes);
    if server.cores.is_empty() {
        // may pins scheduler thread i to core i.
        start_may();
        return Ok(());
    }
    // may pins thread i to the i-th core of the calling thread's affinity mask: narrow the mask to
    // the configured cores while the scheduler starts, then restore it for the pool workers.
    let saved = affinity::get()?;
    affinity::set(&server.cores)?;
    start_may();
    affinity::set_mask(&saved)
}

fn start_may() {
    // SAFETY: the coroutine touches no thread-local state.
    let h = unsafe { may::coroutine::spawn(|| ()) };
    let _ = h.join();
}

/// The periodic stdout line per pool and the object-pool hit-ratio warnings.
fn start_reporter(
    config: &Config,
    pools: &[Arc<ProviderPool>],
    objpools: Vec<Arc<dyn ObjPoolStats>>,
) {
    let Some(interval) = config.stats.stdout_interval else {
        return;
    };
    let warn_below = config.stats.objpool_hit_ratio_warn;
    let pools = pools.to_vec();
    let spawned = std::thread::Builder::new()
        .name("stats-reporter".into())
        .spawn(move || {
            let mut last: Vec<(u64, u64)> = vec![(0, 0); objpools.len()];
            loop {
                std::thread::sleep(interval);
                let mut out = std::io::stdout().lock();
                for p in &pools {
                    let _ = writeln!(out, "{}", p.stats_line());
                }
                let _ = out.flush();
                for (p, prev) in objpools.iter().zip(last.iter_mut()) {
                    let s = p.snapshot();
                    let (gets, hits) = (s.gets - prev.0, s.hits - prev.1);
                    *prev = (s.gets, s.hits);
                    if gets >= 100 && (hits as f64) < warn_below * gets as f64 {
                        log::warn(
                            "object pool hit ratio below the warning threshold over the last interval; raise objpools.buffers",
                            &[
                                ("pool", s.name),
                                ("hit_ratio", &format!("{:.3}", hits as f64 / gets as f64)),
                                ("threshold", &format!("{warn_below:.3}")),
                                ("gets", &gets.to_string()),
                            ],
                        );
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::warn(
            "cannot start the stats reporter",
            &[("error", &e.to_string())],
        );
    }
}

/// The calling thread's CPU affinity mask (Linux `sched_{get,set}affinity`).
mod affinity {
    pub fn get() -> Result<libc::cpu_set_t, String> {
        // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer and size for the calling thread (pid 0).
        let rc =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        if rc != 0 {
            return Err(format!(
                "sched_getaffinity: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(set)
    }

    pub fn set(cores: &[usize]) -> Result<(), String> {
        // SAFETY: as above.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &c in cores {
            // SAFETY: CPU_SET bounds-checks against the set size.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
        set_mask(&set)
    }

    pub fn set_mask(set: &libc::cpu_set_t) -> Result<(), String> {
        // SAFETY: valid pointer and size.
        let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
        if rc != 0 {
            return Err(format!(
                "server.cores: cannot pin the scheduler threads: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }
}

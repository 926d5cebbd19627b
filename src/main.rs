//! The `deepintshield` binary: command line, the may scheduler, the stdout stats reporter, and
//! the service (`deepintshield::service`: pools, listeners, systemd notify and watchdog, SIGHUP
//! reload, SIGTERM shutdown). Exit codes: 0 ok, 1 runtime failure, 2 bad usage or config.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use deepintshield::app::Gateway;
use deepintshield::config::{Config, ServerConfig};
use deepintshield::log;
use deepintshield::objpool::ObjPoolStats;
use deepintshield::service::{Service, SignalSet};

/// Finished coroutines may keeps for reuse.
const COROUTINE_POOL_CAPACITY: usize = 64;
/// Config used when no `--config` is given.
const CONFIG_PATH_DEFAULT: &str = "config/deepintshield.toml";

const USAGE: &str = "\
usage: deepintshield [--config PATH]   run the gateway (default config: config/deepintshield.toml)
       deepintshield --check [PATH]    validate a config and exit (0 valid, 2 invalid)
       deepintshield --version
       deepintshield --help
       deepintshield keys|teams|usage|hash-key ...   manage virtual keys, teams and usage
                                       (deepintshield keys --help lists them)

signals: SIGHUP re-reads the config (applied, or the old one kept if the new one is invalid);
         SIGTERM/SIGINT drain and exit 0
systemd: Type=notify (READY=1, RELOADING=1, STOPPING=1) and WatchdogSec= are supported";

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

/// Commands of the governance command line (`deepintshield::cli`).
const CLI_COMMANDS: [&str; 4] = ["keys", "teams", "usage", "hash-key"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .first()
        .is_some_and(|a| CLI_COMMANDS.contains(&a.as_str()))
    {
        if args.iter().any(|a| a == "--help" || a == "-h") {
            println!("{}", deepintshield::cli::USAGE);
            return ExitCode::SUCCESS;
        }
        return ExitCode::from(deepintshield::cli::run(&args, CONFIG_PATH_DEFAULT));
    }
    match parse_args(&args) {
        Ok(Command::Run(path)) => run(&path),
        Ok(Command::Check(path)) => match check(&path) {
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

/// `--check`: the config, whether it can accept keys, and its price table.
fn check(path: &Path) -> Result<Config, String> {
    let c = Config::load(path).map_err(|e| e.to_string())?;
    if let Some(problem) = c.auth_problem() {
        return Err(problem);
    }
    deepintshield::service::load_prices(&c)?;
    let maps = deepintshield::service::max_map_count().and_then(|max| c.map_count_warning(max));
    for warning in c.systemd_unit_warnings().into_iter().chain(maps) {
        eprintln!("deepintshield: warning: {warning}");
    }
    Ok(c)
}

fn run(path: &Path) -> ExitCode {
    // Signals are registered before any thread starts, so every thread inherits the registration
    // and SIGTERM never kills the process mid-request.
    let mut signals = match SignalSet::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("deepintshield: {e}");
            return ExitCode::from(1);
        }
    };
    log::detect_journal();
    log::start();
    log::install_panic_hook();
    let code = run_logged(path, &mut signals);
    // The last lines (shutdown complete, or why the start failed) are written before the
    // process exits, unless stderr stays stalled past the flush timeout.
    log::flush();
    code
}

fn run_logged(path: &Path, signals: &mut SignalSet) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("deepintshield: invalid config: {e}");
            return ExitCode::from(2);
        }
    };
    log::set_level(config.log.level);
    log::set_access(config.log.access);
    match start(config, signals) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error("cannot start", &[("error", &e)]);
            ExitCode::from(1)
        }
    }
}

fn start(config: Config, signals: &mut SignalSet) -> Result<(), String> {
    start_scheduler(&config.server)?;
    let service = Service::start(config)?;
    start_reporter(service.gateway());
    service.run(signals);
    Ok(())
}

/// Configure the `may` scheduler (threads, coroutine stacks, cores) and start it.
fn start_scheduler(server: &ServerConfig) -> Result<(), String> {
    let cfg = may::config();
    cfg.set_workers(server.threads);
    cfg.set_stack_size(deepintshield::http::stack_words(
        server.limits.coroutine_stack_bytes,
    ));
    // may keeps this many finished coroutines for reuse (default 1000, each with its stack):
    // enough for bursts of new connections without holding megabytes while idle.
    cfg.set_pool_capacity(COROUTINE_POOL_CAPACITY);
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

/// How often the stdout reporter looks again while `stats.stdout_interval_ms` is 0 (a reload may
/// switch it on).
const REPORTER_IDLE_POLL: Duration = Duration::from_secs(1);

/// The periodic stdout line per pool and the object-pool hit-ratio warnings. Reads the current
/// gateway (pools, interval, threshold) at each line, so a reload applies to it.
fn start_reporter(gateway: Arc<ArcSwap<Gateway>>) {
    let spawned = std::thread::Builder::new()
        .name("stats-reporter".into())
        .spawn(move || {
            let mut last: Vec<(u64, u64)> = Vec::new();
            loop {
                let Some(interval) = gateway.load().config.stats.stdout_interval else {
                    std::thread::sleep(REPORTER_IDLE_POLL);
                    continue;
                };
                std::thread::sleep(interval);
                let g = gateway.load_full();
                let mut out = std::io::stdout().lock();
                for p in &g.pools {
                    let _ = writeln!(out, "{}", p.stats_line());
                }
                let _ = out.flush();
                drop(out);
                warn_objpools(
                    &g.objpools,
                    g.config.stats.objpool_hit_ratio_warn,
                    &mut last,
                );
            }
        });
    if let Err(e) = spawned {
        log::warn(
            "cannot start the stats reporter",
            &[("error", &e.to_string())],
        );
    }
}

/// Warn about each object pool whose hit ratio over the interval since `last` was below
/// `warn_below`.
fn warn_objpools(objpools: &[Arc<dyn ObjPoolStats>], warn_below: f64, last: &mut Vec<(u64, u64)>) {
    last.resize(objpools.len(), (0, 0));
    for (p, prev) in objpools.iter().zip(last.iter_mut()) {
        let s = p.snapshot();
        let (gets, hits) = (s.gets - prev.0.min(s.gets), s.hits - prev.1.min(s.hits));
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

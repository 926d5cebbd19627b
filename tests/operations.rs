//! Running the gateway under hostile operating conditions, end to end on the real binary: a log
//! reader that stalls, hostile values in the access log, secrets and CA files that are not
//! regular files or not certificates, a burst of reloads, start-up memory past its bounds, the
//! admin listener's token, and a descriptor limit below what the listeners need.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A mock provider with a few workers, on free ports.
fn mock_config() -> String {
    format!(
        "{}[providers.mock]\ntype = \"mock\"\n[providers.mock.pool]\nworkers = 4\n",
        base_config()
    )
}

/// A chat request on a fresh connection, with `x-request-id: id`.
fn chat_with_id(gw: &Gateway, id: &str, model: &str) -> Response {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
    });
    request(
        gw.api,
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json"), ("x-request-id", id)],
        body.to_string().as_bytes(),
    )
}

// --- logs -------------------------------------------------------------------------------------

/// Requests sent while nobody reads the gateway's stderr: more access lines than the pipe (64 KiB)
/// and the log queue (4096 lines) hold together.
const REQUESTS_WHILE_STALLED: usize = 6000;
/// Client threads sending them.
const CLIENTS: usize = 4;

#[test]
fn a_stalled_log_reader_holds_no_request() {
    let (gw, stderr) = Gateway::start_stderr_held(&mock_config());
    let api = gw.api;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            std::thread::spawn(move || {
                let body = r#"{"model":"mock/m","messages":[{"role":"user","content":"hi"}]}"#;
                let req = format!(
                    "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let mut conn = Conn::new(api);
                for i in 0..REQUESTS_WHILE_STALLED / CLIENTS {
                    conn.send(req.as_bytes());
                    let r = conn
                        .response()
                        .unwrap_or_else(|| panic!("client {c}: no answer to request {i}"));
                    assert_eq!(r.status, 200, "client {c}, request {i}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    // The admin listener answers too, and the lost lines are counted.
    let health = request(gw.admin, "GET", "/health", &[], b"");
    assert_eq!(health.status, 200);
    let dropped = gw.stats()["service"]["log_lines_dropped"].as_u64().unwrap();
    assert!(dropped > 0, "nothing dropped: the stall was not reached");
    let (_, metrics) = gw.metrics();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("deepintshield_log_lines_dropped_total "))
        .expect("the dropped-lines counter in /metrics");
    let counted: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(counted >= dropped, "{line} vs {dropped}");

    // The reader comes back: logging resumes, and says how much it lost.
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let kept = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            kept.lock().unwrap().push(line);
        }
    });
    let logged = |needle: &str| lines.lock().unwrap().iter().any(|l| l.contains(needle));
    assert!(
        eventually(Duration::from_secs(10), || logged(
            "msg=\"log lines dropped"
        )),
        "the loss is reported once the reader is back"
    );
    // Requests keep coming; once the queue has drained, their access lines are written again.
    let mut n = 0;
    let resumed = eventually(Duration::from_secs(10), || {
        n += 1;
        let id = format!("after-the-stall-{n}");
        assert_eq!(chat_with_id(&gw, &id, "mock/m").status, 200);
        std::thread::sleep(Duration::from_millis(50));
        logged(&format!("request_id={id} "))
    });
    assert!(resumed, "no access line after the reader came back");
}

#[test]
fn client_values_in_the_access_log_are_bounded_and_escaped() {
    let (gw, log) = Gateway::start_logged(&mock_config(), &[]);
    // A 1 MB model name: the access line carries a bounded prefix and the length.
    let long = format!("mock/{}", "m".repeat(1_000_000));
    assert_eq!(chat_with_id(&gw, "long-model", &long).status, 200);
    let line = log
        .wait_for(IO_TIMEOUT, |l| l.contains("request_id=long-model"))
        .expect("the access line");
    assert!(line.len() < 1024, "{} bytes", line.len());
    assert!(line.contains("...(1000005 bytes)\""), "{line}");

    // Characters that break lines or hide text on a terminal are escaped, even without any
    // ASCII character that needs quoting.
    let hidden = "mock/nel\u{85}ls\u{2028}rlo\u{202e}esc\u{1b}";
    assert_eq!(chat_with_id(&gw, "hidden-model", hidden).status, 200);
    let line = log
        .wait_for(IO_TIMEOUT, |l| l.contains("request_id=hidden-model"))
        .expect("the access line");
    assert!(
        line.contains(r#"model="mock/nel\u{85}ls\u{2028}rlo\u{202e}esc\u{1b}""#),
        "{line}"
    );
    let forged = "mock/x\r\nlevel=error msg=forged";
    assert_eq!(chat_with_id(&gw, "forged-line", forged).status, 200);
    let line = log
        .wait_for(IO_TIMEOUT, |l| l.contains("request_id=forged-line"))
        .expect("the access line");
    assert!(
        line.contains(r#"model="mock/x\r\nlevel=error msg=forged""#),
        "{line}"
    );
    assert!(!log
        .lines()
        .iter()
        .any(|l| l.starts_with("level=error msg=forged")));
}

// --- files behind the config --------------------------------------------------------------------

/// `deepintshield --check <config>`: (exit code, stdout + stderr), or None when it ran past
/// `timeout` (then it is killed).
fn check_config(config: &std::path::Path, timeout: Duration) -> Option<(i32, String)> {
    run_gateway("--check", config, timeout)
}

/// `deepintshield <flag> <config>` until it exits: (exit code, stdout + stderr), or None when it
/// ran past `timeout` (then it is killed).
fn run_gateway(flag: &str, config: &std::path::Path, timeout: Duration) -> Option<(i32, String)> {
    let mut child = std::process::Command::new(gateway_bin())
        .arg(flag)
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn --check");
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().expect("output");
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            return Some((status.code().unwrap_or(-1), text));
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A FIFO in the test temp dir that nobody writes to.
fn fifo(name: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("{name}-{}.fifo", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let status = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("mkfifo");
    assert!(status.success());
    path
}

#[test]
fn a_fifo_secret_is_refused_without_hanging() {
    let pipe = fifo("client-key");
    let with_fifo = mock_config().replace(
        "[server]\n",
        &format!("[server]\nclient_keys = [\"file:{}\"]\n", pipe.display()),
    );
    // --check (the unit's ExecStartPre) answers at once.
    let config = write_config(&with_fifo);
    let (code, out) =
        check_config(&config, Duration::from_secs(5)).expect("--check hung on a FIFO");
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("server.client_keys[0]") && out.contains("not a regular file"),
        "{out}"
    );

    // A reload onto it fails at once; the gateway keeps serving and still stops on SIGTERM.
    let (mut gw, log) = Gateway::start_logged(&mock_config(), &[]);
    gw.reload_with(&with_fifo);
    let failed = log.wait_for(Duration::from_secs(5), |l| l.contains("reload failed"));
    let failed = failed.expect("the reload did not fail in time");
    assert!(failed.contains("not a regular file"), "{failed}");
    assert_eq!(gw.chat("mock/m", "still here").status, 200);
    gw.proc.signal(libc::SIGTERM);
    assert_eq!(gw.proc.wait_exit(Duration::from_secs(10)), Some(0));
    std::fs::remove_file(pipe).unwrap();
}

#[test]
fn check_refuses_a_ca_file_that_is_no_certificate() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let ca = dir.join(format!("not-a-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, "this is not a certificate\n").unwrap();
    let config = write_config(&format!(
        "{}[providers.up]\ntype = \"openai\"\nbase_url = \"https://127.0.0.1:1/v1\"\nkeys = [{{ key = \"env:HOME\" }}]\nca_file = \"{}\"\n",
        base_config(),
        ca.display()
    ));
    let (code, out) = check_config(&config, Duration::from_secs(10)).expect("--check");
    assert_eq!(code, 2, "--check accepted it: {out}");
    assert!(
        out.contains("providers.up.ca_file") && out.contains("no certificate found"),
        "{out}"
    );
    // What --check refuses, start refuses the same way.
    let out = std::process::Command::new(gateway_bin())
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("providers.up.ca_file"));
}

// --- the admin listener -----------------------------------------------------------------------

const ADMIN_TOKEN: &str = "adm-7f3c9e21b4";

#[test]
fn the_admin_token_guards_stats_and_metrics_but_not_health() {
    let cfg = mock_config().replace(
        "[server]\n",
        "[server]\nadmin_token = \"env:TEST_ADMIN_TOKEN\"\n",
    );
    let (gw, log) = Gateway::start_logged(&cfg, &[("TEST_ADMIN_TOKEN", ADMIN_TOKEN)]);
    let get = |path: &str, auth: Option<&str>| {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        request(gw.admin, "GET", path, &headers, b"")
    };
    // Load balancers probe /health without credentials.
    assert_eq!(get("/health", None).status, 200);
    for path in ["/stats", "/metrics"] {
        let r = get(path, None);
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.error_code(), "missing_admin_token");
        assert!(r
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")));
        let r = get(path, Some("Bearer wrong-token"));
        assert_eq!(
            (r.status, r.error_code()),
            (401, "invalid_admin_token".into()),
            "{path}"
        );
        assert!(!String::from_utf8_lossy(&r.body).contains(ADMIN_TOKEN));
        let r = get(path, Some(&format!("Basic {ADMIN_TOKEN}")));
        assert_eq!(r.status, 401, "{path}: only the Bearer scheme");
        for scheme in ["Bearer", "bearer"] {
            let r = get(path, Some(&format!("{scheme} {ADMIN_TOKEN}")));
            assert_eq!(r.status, 200, "{path} with {scheme}");
        }
    }
    // The API's client keys are another matter: the API needs none here.
    assert_eq!(gw.chat("mock/m", "x").status, 200);
    // On loopback with a token: no warning; the token never reaches the log.
    assert!(
        !log.lines()
            .iter()
            .any(|l| l.contains("admin_token") || l.contains(ADMIN_TOKEN)),
        "{:?}",
        log.lines()
    );
}

#[test]
fn an_admin_listener_beyond_loopback_needs_a_token() {
    let open = mock_config().replace(
        "admin_listen = \"127.0.0.1:0\"",
        "admin_listen = \"0.0.0.0:0\"",
    );
    // Refused by --check and at start, naming the key.
    let path = write_config(&open);
    let (code, out) = check_config(&path, IO_TIMEOUT).expect("--check hung");
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("server.admin_token: the admin listener"),
        "{out}"
    );
    let (code, out) = run_gateway("--config", &path, IO_TIMEOUT).expect("started without a token");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("server.admin_token"), "{out}");

    // With a token, the same listener starts, and nothing about the token is logged.
    let guarded = open.replace(
        "[server]\n",
        "[server]\nadmin_token = \"env:TEST_ADMIN_TOKEN\"\n",
    );
    let (gw, log) = Gateway::start_logged(&guarded, &[("TEST_ADMIN_TOKEN", ADMIN_TOKEN)]);
    assert_eq!(gw.chat("mock/m", "x").status, 200);
    assert!(
        !log.lines().iter().any(|l| l.contains("admin_token")),
        "{:?}",
        log.lines()
    );
}

// --- the descriptor limit ---------------------------------------------------------------------

/// Start a gateway on `toml` under a soft descriptor limit of `soft` (hard `hard`, or unchanged).
fn start_under_fd_limit(toml: &str, soft: u64, hard: Option<u64>) -> (Gateway, StderrLog) {
    Gateway::start_logged_with(toml, move |cmd| {
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls (getrlimit, setrlimit) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let mut l = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                l.rlim_max = hard.unwrap_or(l.rlim_max);
                l.rlim_cur = soft.min(l.rlim_max);
                if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
    })
}

/// `(soft, hard)` of "Max open files" in /proc/<pid>/limits.
fn open_files_limit(pid: i32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let values: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (values[0], values[1])
}

#[test]
fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
    let mut ours = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit into a valid rlimit.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut ours) },
        0
    );
    let hard = ours.rlim_max.min(1 << 20);
    assert!(
        hard >= 2048,
        "this machine's hard limit ({hard}) is too low for the test"
    );
    // Enough descriptors once raised to the hard limit: no warning then.
    let connections_max = 512;
    let cfg = mock_config().replace(
        "[server]\n",
        &format!("[server]\nconnections_max = {connections_max}\n"),
    );
    let (gw, log) = start_under_fd_limit(&cfg, 256, Some(hard));
    assert_eq!(open_files_limit(gw.proc.pid()), (hard, hard));
    log.wait_for(IO_TIMEOUT, |l| {
        l.contains("raised the file descriptor limit")
    })
    .expect("the raise is logged");
    assert_eq!(gw.chat("mock/m", "x").status, 200);
    assert!(
        !log.lines()
            .iter()
            .any(|l| l.contains("file descriptors, more than")),
        "{:?}",
        log.lines()
    );

    // A hard limit below what the listeners need: raised as far as it goes, then the warning.
    let short = mock_config().replace("[server]\n", "[server]\nconnections_max = 4096\n");
    let (gw, log) = start_under_fd_limit(&short, 256, Some(2048));
    assert_eq!(open_files_limit(gw.proc.pid()), (2048, 2048));
    let warning = log
        .wait_for(IO_TIMEOUT, |l| l.contains("file descriptors, more than"))
        .expect("the warning");
    assert!(
        warning.contains("more than 2048 (this process's RLIMIT_NOFILE"),
        "{warning}"
    );
}

// --- reloads ----------------------------------------------------------------------------------

/// SIGHUPs of the burst, and the time between two.
const RELOADS: usize = 60;
const RELOAD_GAP: Duration = Duration::from_millis(25);
/// Generations that may drain at once (`GENERATIONS_DRAINING_MAX` in src/service/reload.rs).
const GENERATIONS_DRAINING_MAX: usize = 4;
/// Workers of the test's one pool.
const RELOAD_WORKERS: usize = 16;

/// `Threads:` of /proc/<pid>/status.
fn threads_of(pid: i32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_burst_of_reloads_keeps_the_threads_bounded_and_serves_throughout() {
    let cfg = format!(
        "{}[providers.mock]\ntype = \"mock\"\n[providers.mock.pool]\nworkers = {RELOAD_WORKERS}\n",
        base_config()
    );
    let gw = Gateway::start(&cfg);
    let pid = gw.proc.pid();
    assert_eq!(gw.chat("mock/m", "x").status, 200);
    let base = threads_of(pid);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Watch the thread count, and keep a client busy, for the whole burst.
    let (watch, stop_watch) = (Arc::new(Mutex::new(0usize)), Arc::clone(&stop));
    let peak = Arc::clone(&watch);
    let watcher = std::thread::spawn(move || {
        while !stop_watch.load(std::sync::atomic::Ordering::Relaxed) {
            let n = threads_of(pid);
            let mut p = peak.lock().unwrap();
            *p = (*p).max(n);
            drop(p);
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let (api, stop_client) = (gw.api, Arc::clone(&stop));
    let client = std::thread::spawn(move || {
        let mut answered = 0;
        let body = r#"{"model":"mock/m","messages":[{"role":"user","content":"hi"}]}"#;
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        // One keep-alive connection, as an SDK keeps one: its requests go to whichever
        // generation is current when each arrives.
        let mut conn = Conn::new(api);
        while !stop_client.load(std::sync::atomic::Ordering::Relaxed) {
            conn.send(req.as_bytes());
            let r = conn.response().expect("an answer during the burst");
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            answered += 1;
        }
        answered
    });
    let mut gw = gw;
    for i in 0..RELOADS {
        gw.proc.signal(libc::SIGHUP);
        std::thread::sleep(RELOAD_GAP);
        if let Ok(Some(status)) = gw.proc.child.try_wait() {
            panic!("the gateway exited during the burst, at SIGHUP {i}: {status:?}");
        }
        assert_eq!(request(gw.admin, "GET", "/health", &[], b"").status, 200);
    }
    // The reloads coalesced or not, they end; the generations left drain.
    let settled = eventually(Duration::from_secs(20), || {
        let s = gw.stats();
        s["service"]["pools_draining"] == 0
            && s["config"]["generation"].as_u64()
                == s["service"]["reloads_ok"].as_u64().map(|n| n + 1)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    let answered = client.join().unwrap();
    let stats = gw.stats();
    assert!(settled, "{}", stats["service"]);
    let reloads = stats["service"]["reloads_ok"].as_u64().unwrap();
    assert!(
        reloads >= 1 && reloads <= RELOADS as u64,
        "{reloads} reloads"
    );
    assert_eq!(stats["service"]["reloads_failed"], 0);
    assert!(answered > 0);
    // The running generation (in `base`), at most GENERATIONS_DRAINING_MAX draining ones, the
    // next one starting, and abandoned ones for the milliseconds their workers take to exit:
    // far below a generation per SIGHUP. A generation: its workers, its supervisor, and the
    // thread that drains it once retired.
    let per_generation = RELOAD_WORKERS + 2;
    let bound = base + (GENERATIONS_DRAINING_MAX + 2) * per_generation;
    let peak = *watch.lock().unwrap();
    eprintln!(
        "threads: {base} before, {peak} at most during {RELOADS} reloads ({reloads} applied)"
    );
    assert!(
        peak <= bound,
        "{peak} threads (bound {bound}, {base} before the burst)"
    );
    assert_eq!(gw.chat("mock/m", "after").status, 200);
}

// --- memory at start --------------------------------------------------------------------------

#[test]
fn check_refuses_what_would_exhaust_memory_at_start() {
    // The largest prefill the old ranges allowed: 9.8 GB allocated before the first request.
    let config = write_config(&format!(
        "{}[objpools]\nbuffers = 1048576\nbuffers_prefill = 1048576\n",
        mock_config()
    ));
    let (code, out) = check_config(&config, Duration::from_secs(10)).expect("--check");
    assert_eq!(code, 2, "--check accepted it: {out}");
    assert!(
        out.contains("objpools.buffers_prefill: 1048576 is out of range 0..=16384")
            && out.contains("8.0 GiB for 1048576"),
        "{out}"
    );
    assert!(
        out.contains("objpools.buffers: 1048576 is out of range 1..=65536"),
        "{out}"
    );
    // The start refuses it the same way, before allocating anything.
    let out = std::process::Command::new(gateway_bin())
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("objpools.buffers_prefill"));
}

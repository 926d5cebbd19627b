//! End-to-end tests of the gateway as a systemd service: the notify protocol against a fake
//! `NOTIFY_SOCKET`, SIGHUP reload under load (nothing dropped, changes visible), invalid reloads,
//! log configuration, and the shape of `GET /metrics`.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY_A: &str = "sk-reload-key-a-5150";
const KEY_B: &str = "sk-reload-key-b-7878";
const CLIENT_KEY: &str = "client-key-never-logged-9191";

/// A unix datagram socket standing in for systemd's notify socket.
struct FakeSystemd {
    socket: UnixDatagram,
    path: PathBuf,
    /// Every datagram received so far, with its arrival time.
    seen: Vec<(Instant, String)>,
}

impl FakeSystemd {
    fn bind() -> FakeSystemd {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("notify-{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind the fake notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        FakeSystemd {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    fn env(&self) -> String {
        self.path.to_str().unwrap().to_string()
    }

    /// Receive until a datagram satisfies `pred` (returned) or `timeout` passes (None).
    fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            let Ok(n) = self.socket.recv(&mut buf) else {
                continue;
            };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.seen.push((Instant::now(), msg.clone()));
            if pred(&msg) {
                return Some(msg);
            }
        }
        None
    }

    /// The received datagrams other than watchdog pings, in order.
    fn states(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter(|(_, m)| m != "WATCHDOG=1")
            .map(|(_, m)| m.clone())
            .collect()
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

fn monotonic_usec() -> u64 {
    // SAFETY: clock_gettime into a valid, zeroed timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

fn mock_only(pool: &str) -> String {
    format!(
        "{}[providers.mock]\ntype = \"mock\"\n\n[providers.mock.pool]\n{pool}\n\n\
         [aliases]\n\"gpt-4o-mini\" = \"mock/gpt-4o-mini\"\n",
        base_config()
    )
}

#[test]
fn notify_protocol_ready_watchdog_reload_stopping() {
    let mut systemd = FakeSystemd::bind();
    let socket = systemd.env();
    let mut gw = Gateway::start_with_env(
        &mock_only("workers = 2"),
        &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "300000")],
    );

    let ready = systemd.wait_for(IO_TIMEOUT, |m| has_line(m, "READY=1"));
    let ready = ready.expect("READY=1");
    assert!(ready.contains("STATUS="), "{ready}");
    assert_eq!(
        systemd.seen.len(),
        1,
        "READY=1 comes first: {:?}",
        systemd.seen
    );
    // READY=1 means the port accepts and the pools answer.
    assert_eq!(gw.chat("gpt-4o-mini", "ready?").status, 200);

    // WATCHDOG=1 every half WATCHDOG_USEC (150 ms), steadily.
    let first_ping = Instant::now();
    for _ in 0..4 {
        assert!(
            systemd
                .wait_for(Duration::from_secs(5), |m| m == "WATCHDOG=1")
                .is_some(),
            "watchdog pings stopped: {:?}",
            systemd.seen
        );
    }
    assert!(
        first_ping.elapsed() >= Duration::from_millis(300),
        "pings come every half timeout, not faster"
    );

    // SIGHUP: RELOADING=1 with the monotonic time, then READY=1.
    let before = monotonic_usec();
    gw.proc.signal(libc::SIGHUP);
    let reloading = systemd
        .wait_for(IO_TIMEOUT, |m| has_line(m, "RELOADING=1"))
        .expect("RELOADING=1");
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC")
        .parse()
        .unwrap();
    assert!(
        usec >= before && usec <= monotonic_usec(),
        "{usec} {before}"
    );
    systemd
        .wait_for(IO_TIMEOUT, |m| has_line(m, "READY=1"))
        .expect("READY=1 after the reload");
    assert!(systemd
        .wait_for(Duration::from_secs(5), |m| m == "WATCHDOG=1")
        .is_some());
    assert_eq!(gw.chat("gpt-4o-mini", "after reload").status, 200);

    // SIGTERM: STOPPING=1, then a clean exit.
    gw.proc.signal(libc::SIGTERM);
    systemd
        .wait_for(IO_TIMEOUT, |m| has_line(m, "STOPPING=1"))
        .expect("STOPPING=1");
    assert_eq!(gw.proc.wait_exit(IO_TIMEOUT), Some(0));
    let states: Vec<String> = systemd
        .states()
        .iter()
        .map(|m| m.lines().next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        states,
        ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"],
        "{:?}",
        systemd.seen
    );
}

/// A gateway with the built-in mock (`chat` alias) and an `openai` provider `up` in front of the
/// bench mock.
fn reload_config(mock: &Mock, mock_pool: &str, keys: &str, server: &str, aliases: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nthreads = 2\n\
         shutdown_timeout_ms = 3000\n{server}\n\n[stats]\nstdout_interval_ms = 0\n\n\
         [providers.mock]\ntype = \"mock\"\n\n[providers.mock.mock]\nlatency_ms = 20\n\n\
         [providers.mock.pool]\n{mock_pool}\n\n\
         [providers.up]\ntype = \"openai\"\nbase_url = \"{}\"\nkeys = {keys}\n\n\
         [providers.up.pool]\nworkers = 2\n\n\
         [aliases]\n\"chat\" = \"mock/chat\"\n{aliases}\n",
        mock.base_url()
    )
}

/// Runs `threads` clients sending chats in a loop (alternating the built-in mock and `up`) until
/// stopped; every outcome is kept.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    outcomes: Arc<Mutex<Vec<(String, u16, String)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(api: std::net::SocketAddr, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|t| {
                let (stop, done, outcomes) = (stop.clone(), done.clone(), outcomes.clone());
                std::thread::spawn(move || {
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) {
                        let model = if i % 2 == 0 { "chat" } else { "up/m" };
                        i += 1;
                        let body = serde_json::json!({
                            "model": model,
                            "messages": [{"role": "user", "content": "steady"}],
                        });
                        let r = request(
                            api,
                            "POST",
                            "/v1/chat/completions",
                            &[("content-type", "application/json")],
                            body.to_string().as_bytes(),
                        );
                        let text = String::from_utf8_lossy(&r.body).into_owned();
                        outcomes
                            .lock()
                            .unwrap()
                            .push((model.to_string(), r.status, text));
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            done,
            outcomes,
            threads,
        }
    }

    /// Wait until `n` more requests finished.
    fn wait_more(&self, n: usize) {
        let target = self.done.load(Ordering::Relaxed) + n;
        assert!(
            eventually(Duration::from_secs(20), || self
                .done
                .load(Ordering::Relaxed)
                >= target),
            "the load stalled"
        );
    }

    fn finish(self) -> Vec<(String, u16, String)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let out = self.outcomes.lock().unwrap();
        out.clone()
    }
}

fn big_chat(gw: &Gateway, model: &str) -> Response {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "x".repeat(8 * 1024)}],
    });
    request(
        gw.api,
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn generation(gw: &Gateway) -> u64 {
    gw.stats()["config"]["generation"].as_u64().unwrap()
}

#[test]
fn reload_under_load_drops_nothing_and_applies_everything() {
    let mock = Mock::start(&[]);
    let env = [("KEY_A", KEY_A), ("KEY_B", KEY_B)];
    let one_key = "[{ key = \"env:KEY_A\" }]";
    let two_keys =
        "[{ key = \"env:KEY_A\", weight = 1 }, { key = \"env:KEY_B\", weight = 1000000 }]";
    let first = reload_config(&mock, "workers = 2\nqueue_capacity = 64", one_key, "", "");
    let gw = Gateway::start_with_env(&first, &env);

    // Before: one key, two workers, no alias `chat2`, large bodies accepted.
    let s = gw.stats();
    assert_eq!(s["pools"]["up"]["keys"], 1);
    assert_eq!(s["pools"]["mock"]["workers"], 2);
    assert_eq!(gw.chat("chat2", "x").error_code(), "model_not_found");
    assert_eq!(big_chat(&gw, "chat").status, 200);
    assert_eq!(gw.chat("up/m", "x").status, 200);
    assert_eq!(
        mock.stats()["last_authorization"],
        format!("Bearer {KEY_A}")
    );

    let load = Load::start(gw.api, 6);
    load.wait_more(60);
    // Reload 1: pool resized, key added, alias added, a front limit lowered.
    gw.reload_with(&reload_config(
        &mock,
        "workers = 5\nqueue_capacity = 128",
        two_keys,
        "body_bytes_max = 4096",
        "\"chat2\" = \"mock/chat2\"",
    ));
    assert!(eventually(IO_TIMEOUT, || generation(&gw) == 2));
    // The first generation's pools finish their queued work in the background.
    let draining = gw.stats()["service"]["pools_draining"].as_u64().unwrap();
    assert_eq!(draining, 2, "both retired pools drain for a while");
    load.wait_more(60);
    // Reload 2: resized again while the first generation's pools may still drain.
    gw.reload_with(&reload_config(
        &mock,
        "workers = 3\nqueue_capacity = 32",
        two_keys,
        "body_bytes_max = 4096",
        "\"chat2\" = \"mock/chat2\"",
    ));
    assert!(eventually(IO_TIMEOUT, || generation(&gw) == 3));
    load.wait_more(60);
    let outcomes = load.finish();

    let failed: Vec<_> = outcomes.iter().filter(|(_, s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across reloads: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)]
    );

    // Every change is visible and in effect.
    let s = gw.stats();
    assert_eq!(s["pools"]["mock"]["workers"], 3, "{s}");
    assert_eq!(s["pools"]["mock"]["queue_capacity"], 32);
    assert_eq!(s["pools"]["up"]["keys"], 2);
    assert_eq!(s["service"]["reloads_ok"], 2);
    assert_eq!(s["service"]["reloads_failed"], 0);
    assert_eq!(gw.chat("chat2", "x").status, 200);
    assert_eq!(big_chat(&gw, "chat").error_code(), "payload_too_large");
    assert_eq!(gw.chat("up/m", "x").status, 200);
    assert_eq!(
        mock.stats()["last_authorization"],
        format!("Bearer {KEY_B}")
    );

    // Counters continued across generations: each pool counted every request it answered.
    let mock_requests = outcomes.iter().filter(|(m, _, _)| m == "chat").count() as u64;
    let up_requests = outcomes.len() as u64 - mock_requests;
    let completed = |pool: &str| s["pools"][pool]["counters"]["completed"].as_u64().unwrap();
    // Plus the one big chat on mock and the one `up/m` sent before the load.
    assert_eq!(completed("mock"), mock_requests + 1);
    assert_eq!(completed("up"), up_requests + 1);
    let (_, metrics) = gw.metrics();
    assert!(
        metrics.contains("deepintshield_config_reloads_total{result=\"success\"} 2\n"),
        "{metrics}"
    );
    assert!(metrics.contains("deepintshield_config_generation 3\n"));
}

#[test]
fn invalid_reload_keeps_serving_and_logs_why() {
    let good = mock_only("workers = 2");
    let (gw, log) = Gateway::start_logged(&good, &[]);
    assert_eq!(gw.chat("gpt-4o-mini", "before").status, 200);

    gw.reload_with(&mock_only("workers = 0"));
    let line = log
        .wait_for(IO_TIMEOUT, |l| l.contains("reload failed"))
        .expect("the failed reload is logged");
    assert!(line.starts_with("level=error"), "{line}");
    assert!(line.contains("providers.mock.pool.workers"), "{line}");
    assert!(line.contains("still serving the previous config"), "{line}");

    // Still serving on the old config.
    assert_eq!(gw.chat("gpt-4o-mini", "after").status, 200);
    let s = gw.stats();
    assert_eq!(s["config"]["generation"], 1);
    assert_eq!(s["service"]["reloads_failed"], 1);
    assert_eq!(s["service"]["last_reload_ok"], false);
    assert_eq!(s["pools"]["mock"]["workers"], 2);
    let (_, metrics) = gw.metrics();
    assert!(metrics.contains("deepintshield_config_last_reload_successful 0\n"));

    // Not TOML at all: same.
    gw.reload_with("this is not [toml");
    assert!(eventually(IO_TIMEOUT, || gw.stats()["service"]
        ["reloads_failed"]
        == 2));
    assert_eq!(gw.chat("gpt-4o-mini", "still").status, 200);

    // A valid config that changes a restart-only setting: applied, with a warning about it.
    let threads_changed = good.replace("threads = 2", "threads = 1");
    gw.reload_with(&threads_changed.replace("workers = 2", "workers = 4"));
    let warn = log
        .wait_for(IO_TIMEOUT, |l| l.contains("only a restart applies it"))
        .expect("restart-only change is logged");
    assert!(warn.contains("server.threads: 2 -> 1"), "{warn}");
    assert!(eventually(IO_TIMEOUT, || generation(&gw) == 2));
    let s = gw.stats();
    assert_eq!(s["pools"]["mock"]["workers"], 4);
    assert_eq!(s["service"]["last_reload_ok"], true);
    assert_eq!(gw.chat("gpt-4o-mini", "applied").status, 200);
}

#[test]
fn log_level_and_access_log_follow_the_config_and_never_show_secrets() {
    let mock = Mock::start(&[]);
    let config = |log: &str| {
        format!(
            "{}[log]\n{log}\n\n[providers.up]\ntype = \"openai\"\nbase_url = \"{}\"\n\
             keys = [{{ key = \"env:UP_KEY\" }}]\n\n[providers.up.pool]\nworkers = 2\n",
            base_config().replace(
                "shutdown_timeout_ms = 3000\n",
                "shutdown_timeout_ms = 3000\nclient_keys = [\"env:CLIENT_KEY\"]\n"
            ),
            mock.base_url()
        )
    };
    let env = [("UP_KEY", KEY_A), ("CLIENT_KEY", CLIENT_KEY)];
    let (gw, log) = Gateway::start_logged(&config("level = \"warn\"\naccess = false"), &env);
    let chat = |key: &str| {
        let body = r#"{"model":"up/m","messages":[{"role":"user","content":"hello"}]}"#;
        let bearer = format!("Bearer {key}");
        request(
            gw.api,
            "POST",
            "/v1/chat/completions",
            &[("authorization", &bearer)],
            body.as_bytes(),
        )
    };
    assert_eq!(chat(CLIENT_KEY).status, 200);
    assert_eq!(chat("wrong-key").status, 401);

    // Access log on, level info: the reload's own "applied" line marks where the switch happened.
    gw.reload_with(&config("level = \"info\"\naccess = true"));
    log.wait_for(IO_TIMEOUT, |l| l.contains("reload: config applied"))
        .expect("reload applied");
    let before = log.lines();
    assert!(
        !before.iter().any(|l| l.contains("msg=access")),
        "access log was off: {before:?}"
    );
    assert!(
        !before.iter().any(|l| l.contains("re-reading")),
        "info lines were filtered at level warn: {before:?}"
    );

    let ok = chat(CLIENT_KEY);
    assert_eq!(ok.status, 200);
    let id = ok.header("x-request-id").unwrap().to_string();
    let line = log
        .wait_for(IO_TIMEOUT, |l| {
            l.contains("msg=access") && l.contains(&format!("request_id={id}"))
        })
        .expect("an access line for the request");
    for field in [
        "level=info",
        "model=up/m",
        "provider=up",
        "status=200",
        "queue_wait_us=",
        "upstream_us=",
        "total_us=",
        "prompt_tokens=",
        "completion_tokens=",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    assert_eq!(chat("wrong-key").status, 401);
    log.wait_for(IO_TIMEOUT, |l| l.contains("error=invalid_api_key"))
        .expect("rejected requests are logged too");

    for l in log.lines() {
        assert!(
            !l.contains(KEY_A) && !l.contains(CLIENT_KEY) && !l.contains("wrong-key"),
            "a secret reached the log: {l}"
        );
    }
}

/// `(name, labels, value)` of every sample line; panics on a malformed line.
fn samples(text: &str) -> Vec<(String, String, f64)> {
    let mut out = Vec::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap().to_string();
            assert!(typed.insert(name.clone()), "family {name} typed twice");
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name value");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        assert!(
            name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "bad name in {line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "sample before its # TYPE: {line}");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        out.push((name.to_string(), labels.to_string(), value));
    }
    out
}

#[test]
fn metrics_have_the_documented_shape() {
    let gw = Gateway::start(&mock_only("workers = 3"));
    for i in 0..5 {
        assert_eq!(gw.chat("gpt-4o-mini", &format!("m{i}")).status, 200);
    }
    assert_eq!(gw.chat("nope/x", "x").status, 404);
    let (content_type, text) = gw.metrics();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let all = samples(&text);
    let value = |name: &str, labels: &str| {
        all.iter()
            .find(|(n, l, _)| n == name && l == labels)
            .map(|(_, _, v)| *v)
            .unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{text}"))
    };
    let pool = "pool=\"mock\"";
    assert_eq!(
        value("deepintshield_pool_requests_completed_total", pool),
        5.0
    );
    assert_eq!(
        value("deepintshield_pool_requests_accepted_total", pool),
        5.0
    );
    assert_eq!(
        value(
            "deepintshield_pool_upstream_responses_total",
            "pool=\"mock\",class=\"2xx\""
        ),
        5.0
    );
    assert_eq!(value("deepintshield_pool_workers", pool), 3.0);
    assert_eq!(value("deepintshield_pool_workers_alive", pool), 3.0);
    assert_eq!(value("deepintshield_pool_queue_depth", pool), 0.0);
    assert!(
        value(
            "deepintshield_pool_tokens_total",
            "pool=\"mock\",type=\"prompt\""
        ) > 0.0
    );

    // The same histograms as /stats shows them (microseconds), read after the scrape with no
    // request in between.
    let latency = gw.stats()["pools"]["mock"]["latency_us"].clone();
    for (h, in_stats) in [
        ("deepintshield_pool_queue_wait_seconds", "queue_wait"),
        ("deepintshield_pool_upstream_duration_seconds", "upstream"),
        ("deepintshield_pool_request_duration_seconds", "total"),
        (
            "deepintshield_pool_time_to_first_token_seconds",
            "time_to_first_token",
        ),
    ] {
        let buckets: Vec<f64> = all
            .iter()
            .filter(|(n, l, _)| n == &format!("{h}_bucket") && l.starts_with(pool))
            .map(|(_, _, v)| *v)
            .collect();
        assert!(buckets.len() >= 10, "{h}: {buckets:?}");
        assert!(
            buckets.windows(2).all(|w| w[0] <= w[1]),
            "{h} not cumulative"
        );
        let count = value(&format!("{h}_count"), pool);
        assert_eq!(
            value(&format!("{h}_bucket"), "pool=\"mock\",le=\"+Inf\""),
            count
        );
        let expected = if h.contains("first_token") { 0.0 } else { 5.0 };
        assert_eq!(count, expected, "{h}");
        // Every value is recorded as at least 1 us, so a histogram with values sums above 0;
        // the sum is count x mean of the same histogram in /stats (mean rounded to 0.1 us).
        let sum = value(&format!("{h}_sum"), pool);
        let mean_us = latency[in_stats]["mean"].as_f64().unwrap();
        assert_eq!(latency[in_stats]["count"].as_f64().unwrap(), count, "{h}");
        assert!(
            (sum - mean_us * count / 1e6).abs() <= 1e-7 * count,
            "{h}: sum {sum}, mean {mean_us} us"
        );
        assert_eq!(sum > 0.0, count > 0.0, "{h}: sum {sum}");
    }
    assert!(
        value(
            "deepintshield_objpool_hit_ratio",
            "pool=\"connection_buffers\""
        ) > 0.0
    );
    assert!(value("deepintshield_front_requests_total", "listener=\"api\"") >= 6.0);
    assert!(value("process_resident_memory_bytes", "") > 1e6);
    assert!(value("process_threads", "") >= 3.0);
    assert!(value("process_open_fds", "") >= 3.0);
    assert!(value("process_max_fds", "") >= value("process_open_fds", ""));
    assert!(value("process_start_time_seconds", "") > 1.6e9);
    assert_eq!(value("deepintshield_config_generation", ""), 1.0);
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    assert_eq!(value("deepintshield_build_info", &version), 1.0);

    let post = request(gw.admin, "POST", "/metrics", &[], b"");
    assert_eq!(post.status, 405);
}

//! `deepintshield-load`: the open-loop, constant-rate load tool (`run`), its interleaved A/B mode
//! that reports added latency over a baseline with the gateway's CPU time and memory (`compare`),
//! and a rate sweep that finds the highest rate each target sustains under a p99 bound (`sweep`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use deepintshield_bench::engine::{self, Load, RunResult, Target};
use deepintshield_bench::flags::Flags;
use deepintshield_bench::procfs;
use deepintshield_bench::report::{rate_text, Added, Summary};
use deepintshield_bench::request::{
    build_request, check_header, Url, DEFAULT_CHAT_BODY, DEFAULT_STREAM_BODY,
};
use deepintshield_bench::schedule::{RATE_MAX, RATE_MIN};
use serde_json::{json, Value};

const USAGE: &str = "\
deepintshield-load: open-loop HTTP load at a constant rate, latency from the intended send time

USAGE:
    deepintshield-load run     --url URL [OPTIONS]
    deepintshield-load compare --target NAME=URL --target NAME=URL ... [OPTIONS]
    deepintshield-load sweep   --target NAME=URL ... --from R --to R --step R --p99-max-us N [OPTIONS]

Requests are scheduled every 1/RATE seconds whatever the target does; latency is measured from
that intended time to the complete response, so a target that stalls is charged for the whole
queue it causes (no coordinated omission). Latencies go into HdrHistograms in microseconds
(4 significant digits: exact to 1 us up to 32 ms).

LOAD OPTIONS (all subcommands):
    --rate R            requests per second (default 1000)
    --duration D        measured time per run, e.g. 10s (default 10s; compare: per round)
    --warmup D          sent at the rate but not recorded, before each run (default 2s;
                        compare: before each round, default 1s)
    --connections N     keep-alive connections (default 64); when all are busy, due requests
                        wait in the tool and their latency keeps counting
    --threads N         load threads, each with its own epoll loop (default 1)
    --timeout D         longest wait for a response once sent (default 30s)
    --method M          HTTP method (default POST)
    --body FILE         request body (default: a small chat completion for model `bench`)
    --header 'K: V'     extra request header, repeatable
    --alt-header 'K: V' odd-numbered connections send these headers instead of the --header
                        ones (two clients in one run, e.g. two keys), repeatable
    --stream            parse SSE responses: time to first event and gaps between events
                        (default body then has `stream: true`)
    --json FILE         also write every number as JSON

run:
    --url URL           http://HOST:PORT/PATH

compare (first target is the baseline; rounds run interleaved A B A B ...):
    --target NAME=URL   repeatable, at least two
    --rounds N          rounds per target (default 3)
    --pid NAME=PID      read that process's CPU time and memory from /proc for target NAME
    --gateway-pid PID   the same for every target but the baseline

sweep (rate steps run each target in turn; a target stops at its first failing step):
    --target NAME=URL   repeatable; with two or more, the first is the baseline and the bound
                        applies to p99 added over it at the same rate
    --from R --to R --step R   rates to try
    --p99-max-us N      the p99 bound, microseconds
    --rounds N          interleaved rounds per step (default 1)
    --pid NAME=PID, --gateway-pid PID   as for compare
    A step passes with no errors, achieved rate >= 98% of offered, and p99 (added) <= bound.

Error classes: connect, timeout, closed (connection closed or reset before the response was
complete), parse, unsent (never sent before the run gave up), status_<code>, and in stream mode
stream_error (an error event or not an event stream) and stream_incomplete (no [DONE]).
";

/// A step of a sweep passes only if this share of the offered rate completed.
const SWEEP_ACHIEVED_MIN: f64 = 0.98;
/// Most targets in one compare or sweep.
const TARGETS_MAX: usize = 16;
/// Most rounds and sweep steps.
const ROUNDS_MAX: u32 = 1000;
const STEPS_MAX: u64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Run,
    Compare,
    Sweep,
}

/// Everything the command line says, validated.
struct Options {
    mode: Mode,
    load: Load,
    method: String,
    headers: Vec<String>,
    alt_headers: Vec<String>,
    body: Option<Vec<u8>>,
    json: Option<PathBuf>,
    /// `(name, url)`; `run` has one, named `target`.
    targets: Vec<(String, Url)>,
    rounds: u32,
    pids: Vec<(String, u32)>,
    gateway_pid: Option<u32>,
    sweep: Option<Sweep>,
}

#[derive(Clone, Copy, Debug)]
struct Sweep {
    from: f64,
    to: f64,
    step: f64,
    p99_max_us: u64,
}

fn parse_args(args: Vec<String>) -> Result<Option<Options>, String> {
    let mut flags = Flags::new(args);
    let mode = match flags.next_flag().as_deref() {
        Some("run") => Mode::Run,
        Some("compare") => Mode::Compare,
        Some("sweep") => Mode::Sweep,
        Some("-h" | "--help" | "help") | None => return Ok(None),
        Some(other) => return Err(format!("unknown subcommand: {other}")),
    };
    let mut o = Options {
        mode,
        load: Load {
            rate: 1000.0,
            warmup: Duration::from_secs(if mode == Mode::Compare { 1 } else { 2 }),
            duration: Duration::from_secs(10),
            connections: 64,
            threads: 1,
            timeout: Duration::from_secs(30),
            stream: false,
        },
        method: "POST".to_string(),
        headers: Vec::new(),
        alt_headers: Vec::new(),
        body: None,
        json: None,
        targets: Vec::new(),
        rounds: if mode == Mode::Compare { 3 } else { 1 },
        pids: Vec::new(),
        gateway_pid: None,
        sweep: None,
    };
    let (mut from, mut to, mut step, mut p99_max) = (None, None, None, None);
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--rate" => o.load.rate = flags.positive()?,
            "--duration" => o.load.duration = flags.duration()?,
            "--warmup" => o.load.warmup = flags.duration()?,
            "--connections" => o.load.connections = flags.positive()?,
            "--threads" => o.load.threads = flags.positive()?,
            "--timeout" => o.load.timeout = flags.duration()?,
            "--stream" => o.load.stream = true,
            "--method" => o.method = flags.value()?,
            "--body" => {
                let path = flags.value()?;
                let body = std::fs::read(&path).map_err(|e| format!("--body {path}: {e}"))?;
                o.body = Some(body);
            }
            "--header" => {
                let h = flags.value()?;
                check_header(&h)?;
                o.headers.push(h);
            }
            "--alt-header" => {
                let h = flags.value()?;
                check_header(&h)?;
                o.alt_headers.push(h);
            }
            "--json" => o.json = Some(PathBuf::from(flags.value()?)),
            "--url" if mode == Mode::Run => {
                o.targets = vec![("target".to_string(), Url::parse(&flags.value()?)?)]
            }
            "--target" if mode != Mode::Run => {
                let v = flags.value()?;
                let (name, url) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--target {v}: expected NAME=URL"))?;
                if name.is_empty() || o.targets.iter().any(|(n, _)| n == name) {
                    return Err(format!("--target {v}: names must be unique and non-empty"));
                }
                o.targets.push((name.to_string(), Url::parse(url)?));
            }
            "--rounds" if mode != Mode::Run => o.rounds = flags.positive()?,
            "--pid" if mode != Mode::Run => {
                let v = flags.value()?;
                let parsed = v
                    .split_once('=')
                    .and_then(|(n, p)| Some((n, p.parse().ok()?)));
                let Some((name, pid)) = parsed else {
                    return Err(format!("--pid {v}: expected NAME=PID"));
                };
                o.pids.push((name.to_string(), pid));
            }
            "--gateway-pid" if mode != Mode::Run => o.gateway_pid = Some(flags.parse()?),
            "--from" if mode == Mode::Sweep => from = Some(flags.positive::<f64>()?),
            "--to" if mode == Mode::Sweep => to = Some(flags.positive::<f64>()?),
            "--step" if mode == Mode::Sweep => step = Some(flags.positive::<f64>()?),
            "--p99-max-us" if mode == Mode::Sweep => p99_max = Some(flags.positive::<u64>()?),
            _ => return Err(format!("unknown argument for {mode:?}: {flag}")),
        }
    }
    validate(&mut o, from, to, step, p99_max)?;
    Ok(Some(o))
}

fn validate(
    o: &mut Options,
    from: Option<f64>,
    to: Option<f64>,
    step: Option<f64>,
    p99_max: Option<u64>,
) -> Result<(), String> {
    match o.mode {
        Mode::Run if o.targets.is_empty() => return Err("run needs --url".to_string()),
        Mode::Compare if o.targets.len() < 2 => {
            return Err("compare needs at least two --target".to_string())
        }
        Mode::Sweep if o.targets.is_empty() => {
            return Err("sweep needs at least one --target".to_string())
        }
        _ => {}
    }
    if o.targets.len() > TARGETS_MAX || o.rounds > ROUNDS_MAX {
        return Err(format!(
            "at most {TARGETS_MAX} targets and {ROUNDS_MAX} rounds"
        ));
    }
    if let Some((name, _)) = o
        .pids
        .iter()
        .find(|(n, _)| !o.targets.iter().any(|(t, _)| t == n))
    {
        return Err(format!("--pid {name}=...: no such target"));
    }
    if o.mode == Mode::Sweep {
        let (Some(from), Some(to), Some(step), Some(p99_max_us)) = (from, to, step, p99_max) else {
            return Err("sweep needs --from, --to, --step and --p99-max-us".to_string());
        };
        if from > to || ((to - from) / step) as u64 >= STEPS_MAX {
            return Err(format!(
                "sweep: need from <= to and at most {STEPS_MAX} steps"
            ));
        }
        o.load.rate = from;
        o.sweep = Some(Sweep {
            from,
            to,
            step,
            p99_max_us,
        });
    }
    let top = o.sweep.map_or(o.load.rate, |s| s.to);
    if !(RATE_MIN..=RATE_MAX).contains(&o.load.rate) || top > RATE_MAX {
        return Err(format!("rates must be in {RATE_MIN}..={RATE_MAX}"));
    }
    if o.load.connections < o.load.threads || o.load.connections > engine::CONNECTIONS_MAX {
        return Err(format!(
            "--connections must be in --threads..={}",
            engine::CONNECTIONS_MAX
        ));
    }
    if o.load.threads > engine::THREADS_MAX || o.load.duration.is_zero() {
        return Err(format!(
            "--threads at most {}, --duration above zero",
            engine::THREADS_MAX
        ));
    }
    Ok(())
}

fn targets(o: &Options) -> Vec<Target> {
    let default_body = if o.load.stream {
        DEFAULT_STREAM_BODY
    } else {
        DEFAULT_CHAT_BODY
    };
    let body = o.body.as_deref().unwrap_or(default_body.as_bytes());
    o.targets
        .iter()
        .map(|(name, url)| Target {
            name: name.clone(),
            addr: url.addr,
            request: Arc::new(build_request(&o.method, url, &o.headers, body)),
            alt_request: (!o.alt_headers.is_empty())
                .then(|| Arc::new(build_request(&o.method, url, &o.alt_headers, body))),
            head_request: o.method.eq_ignore_ascii_case("HEAD"),
        })
        .collect()
}

/// The process watched for target `i`, if any.
fn pid_of(o: &Options, i: usize) -> Option<u32> {
    let name = &o.targets[i].0;
    o.pids
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| *p)
        .or(if i > 0 { o.gateway_pid } else { None })
}

/// One target's measurements across rounds, with the CPU time of its watched process.
struct Tally {
    result: RunResult,
    cpu: Duration,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            result: RunResult::default(),
            cpu: Duration::ZERO,
        }
    }
}

/// Run the targets `active` (indices into `targets`) once each at `load`, in order, adding to
/// `tallies` (one per active target).
fn round(
    o: &Options,
    targets: &[Target],
    active: &[usize],
    load: &Load,
    tallies: &mut [Tally],
    label: &str,
) -> Result<(), String> {
    for (slot, &i) in active.iter().enumerate() {
        let t = &targets[i];
        let pid = pid_of(o, i);
        let before = pid.map(procfs::cpu_time).transpose()?;
        let r = engine::run(t, load)?;
        if let (Some(pid), Some(before)) = (pid, before) {
            tallies[slot].cpu += procfs::cpu_time(pid)?.saturating_sub(before);
        }
        let s = Summary::of(&r.latency);
        eprintln!(
            "{label} {:<12} {}/s ok={} errors={} p50={}us p99={}us p99.9={}us",
            t.name,
            rate_text(r.achieved_rate()),
            r.ok,
            r.error_count(),
            s.p50,
            s.p99,
            s.p999
        );
        tallies[slot].result.merge(&r);
    }
    Ok(())
}

fn errors_text(r: &RunResult) -> String {
    if r.errors.is_empty() {
        return "none".to_string();
    }
    r.errors
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn result_json(name: &str, url: &Url, r: &RunResult, stream: bool) -> Value {
    let mut v = json!({
        "name": name,
        "url": format!("http://{}{}", url.authority, url.path),
        "requests": r.measured,
        "ok": r.ok,
        "errors": r.errors,
        "achieved_rate": (r.achieved_rate() * 10.0).round() / 10.0,
        "latency": Summary::of(&r.latency).to_json(),
        "send_lag": Summary::of(&r.send_lag).to_json(),
        "queued_max": r.queued_max,
        "tool_cpu_s": (r.tool_cpu_s * 1000.0).round() / 1000.0,
    });
    if stream {
        v["ttft"] = Summary::of(&r.ttft).to_json();
        v["event_gap"] = Summary::of(&r.gaps).to_json();
        v["stream_events"] = json!(r.stream_events);
    }
    v
}

fn print_latency_header(first: &str) {
    println!(
        "{first:<22}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "p50", "p90", "p99", "p99.9", "max"
    );
}

fn cmd_run(o: &Options) -> Result<Value, String> {
    let targets = targets(o);
    let r = engine::run(&targets[0], &o.load)?;
    let (_, url) = &o.targets[0];
    println!(
        "deepintshield-load run: http://{}{}\n  offered {}/s for {:?} after {:?} warm-up, {} connections, {} thread(s)\n  achieved {}/s: {} requests, {} ok, errors: {}",
        url.authority,
        url.path,
        rate_text(o.load.rate),
        o.load.duration,
        o.load.warmup,
        o.load.connections,
        o.load.threads,
        rate_text(r.achieved_rate()),
        r.measured,
        r.ok,
        errors_text(&r)
    );
    print_latency_header("latency (us)");
    println!("{:<22}{}", "  response", Summary::of(&r.latency).cells());
    if o.load.stream {
        println!(
            "{:<22}{}",
            "  first event (TTFT)",
            Summary::of(&r.ttft).cells()
        );
        println!(
            "{:<22}{}",
            "  gap between events",
            Summary::of(&r.gaps).cells()
        );
    }
    println!(
        "{:<22}{}",
        "  send lag (tool)",
        Summary::of(&r.send_lag).cells()
    );
    println!("  most requests queued in the tool: {}", r.queued_max);
    println!(
        "  tool CPU: {:.2} s, {:.0}% of one core over the run",
        r.tool_cpu_s,
        100.0 * r.tool_cpu_s / run_seconds(&o.load)
    );
    let mut v = result_json("target", url, &r, o.load.stream);
    v["mode"] = json!("run");
    v["load"] = load_json(&o.load);
    Ok(v)
}

/// Wall time of one run's schedule (warm-up included), seconds.
fn run_seconds(l: &Load) -> f64 {
    (l.warmup + l.duration).as_secs_f64().max(1e-3)
}

fn load_json(l: &Load) -> Value {
    json!({
        "rate": l.rate,
        "duration_s": l.duration.as_secs_f64(),
        "warmup_s": l.warmup.as_secs_f64(),
        "connections": l.connections,
        "threads": l.threads,
        "timeout_s": l.timeout.as_secs_f64(),
        "stream": l.stream,
    })
}

fn cmd_compare(o: &Options) -> Result<Value, String> {
    let targets = targets(o);
    let mut tallies: Vec<Tally> = targets.iter().map(|_| Tally::new()).collect();
    let all: Vec<usize> = (0..targets.len()).collect();
    for n in 1..=o.rounds {
        let label = format!("round {n}/{}", o.rounds);
        round(o, &targets, &all, &o.load, &mut tallies, &label)?;
    }
    println!(
        "deepintshield-load compare: {}/s, {} rounds of {:?} per target (+{:?} warm-up each), {} connections, {} thread(s), interleaved {}",
        rate_text(o.load.rate),
        o.rounds,
        o.load.duration,
        o.load.warmup,
        o.load.connections,
        o.load.threads,
        targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(" ")
    );
    let mut out = Vec::new();
    print_latency_header("response (us)");
    for (t, tally) in targets.iter().zip(&tallies) {
        let r = &tally.result;
        println!("  {:<20}{}", t.name, Summary::of(&r.latency).cells());
    }
    if o.load.stream {
        print_latency_header("first event (us)");
        for (t, tally) in targets.iter().zip(&tallies) {
            println!(
                "  {:<20}{}",
                t.name,
                Summary::of(&tally.result.ttft).cells()
            );
        }
    }
    let base = Summary::of(&tallies[0].result.latency);
    let base_ttft = Summary::of(&tallies[0].result.ttft);
    println!(
        "{:<22}{:>10}{:>10}{:>10}{:>10}{}",
        format!("added over {} (us)", targets[0].name),
        "p50",
        "p90",
        "p99",
        "p99.9",
        if o.load.stream {
            "   ttft p50   ttft p99"
        } else {
            ""
        }
    );
    for (i, (t, tally)) in targets.iter().zip(&tallies).enumerate() {
        let r = &tally.result;
        let added = Added::over(&Summary::of(&r.latency), &base);
        let added_ttft = Added::over(&Summary::of(&r.ttft), &base_ttft);
        if i > 0 {
            let ttft = if o.load.stream {
                format!("{:>+11}{:>+11}", added_ttft.p50, added_ttft.p99)
            } else {
                String::new()
            };
            println!(
                "  {:<20}{:>+10}{:>+10}{:>+10}{:>+10}{ttft}",
                t.name, added.p50, added.p90, added.p99, added.p999
            );
        }
        let mut v = result_json(&t.name, &o.targets[i].1, r, o.load.stream);
        v["added"] = added.to_json();
        if o.load.stream {
            v["added_ttft"] = added_ttft.to_json();
        }
        if let Some(pid) = pid_of(o, i) {
            v["process"] = process_json(pid, tally)?;
        }
        out.push(v);
    }
    println!(
        "{:<22}{:>10}{:>10}{:>12}{:>12}",
        "outcome", "ok", "errors", "achieved/s", "tool queue"
    );
    for (t, tally) in targets.iter().zip(&tallies) {
        let r = &tally.result;
        println!(
            "  {:<20}{:>10}{:>10}{:>12}{:>12}   {}",
            t.name,
            r.ok,
            r.error_count(),
            rate_text(r.achieved_rate()),
            r.queued_max,
            errors_text(r)
        );
    }
    print_processes(o, &targets, &out);
    Ok(json!({"mode": "compare", "load": load_json(&o.load), "rounds": o.rounds, "targets": out}))
}

fn process_json(pid: u32, tally: &Tally) -> Result<Value, String> {
    let (rss_kb, hwm_kb) = procfs::memory_kb(pid)?;
    let requests = tally.result.completed_all.max(1);
    Ok(json!({
        "pid": pid,
        "cpu_s": tally.cpu.as_secs_f64(),
        "cpu_us_per_request": (tally.cpu.as_secs_f64() * 1e6 / requests as f64 * 10.0).round() / 10.0,
        "rss_kb": rss_kb,
        "peak_rss_kb": hwm_kb,
    }))
}

fn print_processes(o: &Options, targets: &[Target], out: &[Value]) {
    let watched: Vec<usize> = (0..targets.len())
        .filter(|&i| pid_of(o, i).is_some())
        .collect();
    if watched.is_empty() {
        return;
    }
    println!(
        "{:<22}{:>12}{:>10}{:>14}",
        "process (/proc)", "cpu us/req", "rss MB", "peak rss MB"
    );
    for i in watched {
        let p = &out[i]["process"];
        let mb = |k: &str| p[k].as_f64().unwrap_or(0.0) / 1024.0;
        println!(
            "  {:<20}{:>12.1}{:>10.1}{:>14.1}",
            targets[i].name,
            p["cpu_us_per_request"].as_f64().unwrap_or(0.0),
            mb("rss_kb"),
            mb("peak_rss_kb")
        );
    }
}

fn cmd_sweep(o: &Options) -> Result<Value, String> {
    let Some(sw) = o.sweep else {
        return Err("sweep without a range".to_string());
    };
    let targets = targets(o);
    let added_mode = targets.len() > 1;
    let mut alive = vec![true; targets.len()];
    let mut best: Vec<Option<f64>> = vec![None; targets.len()];
    let mut steps = Vec::new();
    println!(
        "deepintshield-load sweep: {}..{} step {}/s, {} round(s) of {:?} (+{:?} warm-up), bound p99{} <= {} us",
        rate_text(sw.from),
        rate_text(sw.to),
        rate_text(sw.step),
        o.rounds,
        o.load.duration,
        o.load.warmup,
        if added_mode { " added" } else { "" },
        sw.p99_max_us
    );
    println!(
        "{:>9}  {:<14}{:>11}{:>9}{:>9}{:>11}{:>8}{:>11}  verdict",
        "rate/s", "target", "achieved/s", "p50", "p99", "added p99", "errors", "cpu us/req"
    );
    let mut k = 0u64;
    loop {
        let rate = sw.from + sw.step * k as f64;
        if rate > sw.to + 1e-9 || !alive.iter().skip(usize::from(added_mode)).any(|&a| a) {
            break;
        }
        let load = Load {
            rate,
            ..o.load.clone()
        };
        let active: Vec<usize> = (0..targets.len()).filter(|&i| alive[i]).collect();
        let mut tallies: Vec<Tally> = active.iter().map(|_| Tally::new()).collect();
        for n in 1..=o.rounds {
            let label = format!("{}/s round {n}", rate_text(rate));
            round(o, &targets, &active, &load, &mut tallies, &label)?;
        }
        let base_p99 = Summary::of(&tallies[0].result.latency).p99;
        for (slot, &i) in active.iter().enumerate() {
            let r = &tallies[slot].result;
            let s = Summary::of(&r.latency);
            let added = (added_mode && i > 0).then(|| s.p99 as i64 - base_p99 as i64);
            let bounded = match added {
                Some(a) => a <= sw.p99_max_us as i64,
                None if added_mode => true, // the baseline is not held to the added bound
                None => s.p99 <= sw.p99_max_us,
            };
            let achieved = r.achieved_rate();
            let pass = bounded && r.error_count() == 0 && achieved >= rate * SWEEP_ACHIEVED_MIN;
            let cpu = pid_of(o, i)
                .map(|_| tallies[slot].cpu.as_secs_f64() * 1e6 / r.completed_all.max(1) as f64);
            println!(
                "{:>9}  {:<14}{:>11}{:>9}{:>9}{:>11}{:>8}{:>11}  {}",
                rate_text(rate),
                targets[i].name,
                rate_text(achieved),
                s.p50,
                s.p99,
                added.map_or("-".to_string(), |a| format!("{a:+}")),
                r.error_count(),
                cpu.map_or("-".to_string(), |c| format!("{c:.1}")),
                if pass { "ok" } else { "FAIL" }
            );
            steps.push(json!({
                "rate": rate, "target": targets[i].name, "pass": pass,
                "achieved_rate": (achieved * 10.0).round() / 10.0,
                "latency": s.to_json(), "added_p99_us": added, "errors": r.errors,
                "cpu_us_per_request": cpu, "queued_max": r.queued_max,
            }));
            if pass {
                best[i] = Some(rate);
            } else {
                alive[i] = false;
            }
        }
        k += 1;
    }
    let mut summary = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let b = best[i];
        let role = if added_mode && i == 0 {
            " (baseline)"
        } else {
            ""
        };
        println!(
            "highest sustained rate: {}{role} {}",
            t.name,
            b.map_or("none (failed the first step)".to_string(), |r| format!(
                "{}/s",
                rate_text(r)
            ))
        );
        summary.push(json!({"target": t.name, "highest_rate": b}));
        if let Some(pid) = pid_of(o, i) {
            let (rss, hwm) = procfs::memory_kb(pid)?;
            println!(
                "  {}: rss {:.1} MB, peak rss {:.1} MB",
                t.name,
                rss as f64 / 1024.0,
                hwm as f64 / 1024.0
            );
        }
    }
    Ok(json!({
        "mode": "sweep", "load": load_json(&o.load), "rounds": o.rounds,
        "from": sw.from, "to": sw.to, "step": sw.step, "p99_max_us": sw.p99_max_us,
        "added": added_mode, "steps": steps, "highest": summary,
    }))
}

fn main() -> ExitCode {
    let o = match parse_args(std::env::args().skip(1).collect()) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("deepintshield-load: {msg}\n(see deepintshield-load --help)");
            return ExitCode::from(2);
        }
    };
    let result = match o.mode {
        Mode::Run => cmd_run(&o),
        Mode::Compare => cmd_compare(&o),
        Mode::Sweep => cmd_sweep(&o),
    };
    let value = match result {
        Ok(v) => v,
        Err(msg) => {
            eprintln!("deepintshield-load: {msg}");
            return ExitCode::from(1);
        }
    };
    if let Some(path) = &o.json {
        let text = serde_json::to_string_pretty(&value).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("deepintshield-load: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(a: &[&str]) -> Result<Option<Options>, String> {
        parse_args(a.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn subcommands_and_validation() {
        let o = parse(&[
            "run",
            "--url",
            "http://127.0.0.1:1/x",
            "--rate=5000",
            "--stream",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (o.mode, o.load.rate, o.load.stream),
            (Mode::Run, 5000.0, true)
        );
        assert!(parse(&["--help"]).unwrap().is_none());
        assert!(parse(&["run"]).is_err());
        assert!(parse(&["bogus"]).is_err());
        assert!(parse(&[
            "run",
            "--url",
            "http://127.0.0.1:1/",
            "--target",
            "a=http://x/"
        ])
        .is_err());
        let c = [
            "compare",
            "--target",
            "m=http://127.0.0.1:1/",
            "--target",
            "g=http://127.0.0.1:2/",
        ];
        let o = parse(&[&c[..], &["--gateway-pid", "42", "--pid", "m=7"]].concat())
            .unwrap()
            .unwrap();
        assert_eq!((pid_of(&o, 0), pid_of(&o, 1)), (Some(7), Some(42)));
        assert!(parse(&c[..3]).is_err(), "compare needs two targets");
        assert!(parse(&[&c[..], &["--pid", "zz=1"]].concat()).is_err());
        let s = [
            "sweep",
            "--target",
            "g=http://127.0.0.1:2/",
            "--from",
            "1000",
            "--to",
            "3000",
        ];
        assert!(parse(&s).is_err(), "sweep needs a step and a bound");
        let o = parse(&[&s[..], &["--step", "1000", "--p99-max-us", "1000"]].concat())
            .unwrap()
            .unwrap();
        assert_eq!(o.load.rate, 1000.0);
        assert!(parse(&[
            "run",
            "--url",
            "http://127.0.0.1:1/",
            "--connections",
            "1",
            "--threads",
            "2"
        ])
        .is_err());
    }
}

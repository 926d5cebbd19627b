//! End-to-end bounds of streamed answers, against a scripted SSE upstream in the test and the
//! built-in mock: a healthy stream outlives `request_timeout_ms` (only the wait for it to begin is
//! bounded by it), a silent one and one past `stream_duration_ms_max` end with an SSE error event,
//! `: ping` comments keep a stream alive, an event that never ends is cut at its bound with memory
//! bounded, nothing after `[DONE]` reaches the client, and a shutdown answers what it cuts.

mod common;

use common::*;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Short bounds, so that a stream of a couple of seconds is "long": it outlives the request
/// timeout plus the stall grace several times over.
const BOUNDS: &str =
    "[providers.up.pool]\nworkers = 4\nrequest_timeout_ms = 500\nqueue_wait_ms_max = 400\nstall_grace_ms = 200\n";

/// A keep-alive HTTP/1.1 upstream that answers each chat request by the script named by its
/// model (see [`script`]). Threads end with the test process.
struct Upstream {
    addr: SocketAddr,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || serve(conn));
            }
        });
        Upstream { addr }
    }
}

/// Serve requests on one connection until it closes or a script fails to write.
fn serve(mut conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: serde_json::Value =
            serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or_default();
        buf.drain(..head_end + len);
        let model = body["model"].as_str().unwrap_or_default().to_string();
        let mut out = Out { conn: &mut conn };
        if script(&model, &mut out).is_err() {
            return;
        }
    }
}

/// The answer being written to the gateway.
struct Out<'a> {
    conn: &'a mut TcpStream,
}

impl Out<'_> {
    fn sse_head(&mut self) -> io::Result<()> {
        self.conn.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        )
    }

    /// `bytes` as one HTTP chunk.
    fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut c = format!("{:x}\r\n", bytes.len()).into_bytes();
        c.extend_from_slice(bytes);
        c.extend_from_slice(b"\r\n");
        self.conn.write_all(&c)
    }

    /// A chat.completion.chunk carrying `content`.
    fn content(&mut self, content: &str) -> io::Result<()> {
        let chunk = serde_json::json!({
            "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}],
        });
        self.raw(format!("data: {chunk}\n\n").as_bytes())
    }

    fn done(&mut self) -> io::Result<()> {
        self.raw(b"data: [DONE]\n\n")?;
        self.conn.write_all(b"0\r\n\r\n")
    }

    fn json(&mut self, body: &str) -> io::Result<()> {
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        self.conn.write_all(head.as_bytes())?;
        self.conn.write_all(body.as_bytes())
    }
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// What the upstream answers, by model.
fn script(model: &str, out: &mut Out<'_>) -> io::Result<()> {
    if model == "slow-whole" {
        sleep_ms(10_000);
        return out.json(r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"late"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#);
    }
    out.sse_head()?;
    out.content("")?;
    match model {
        "short" => {
            out.content("hello")?;
            out.done()
        }
        // 20 events 100 ms apart, then [DONE].
        "long" => {
            for i in 0..20 {
                sleep_ms(100);
                out.content(&format!("{i} "))?;
            }
            out.done()
        }
        // One event, then silence (the connection stays open).
        "silent" => {
            sleep_ms(6_000);
            Ok(())
        }
        // Only `: ping` comments for 3 s, then the answer.
        "pings" => {
            for _ in 0..15 {
                sleep_ms(200);
                out.raw(b": ping\n\n")?;
            }
            out.content("after the pings")?;
            out.done()
        }
        // Events 100 ms apart for up to 20 s.
        "endless" => {
            for i in 0..200 {
                sleep_ms(100);
                out.content(&format!("{i} "))?;
            }
            out.done()
        }
        // `data:` lines of 64 KiB that never end their event: up to 64 MiB, then silence.
        "huge-event" => {
            let line = [b"data: ".as_slice(), &[b'x'; 64 * 1024], b"\n"].concat();
            for _ in 0..1024 {
                out.raw(&line)?;
            }
            sleep_ms(6_000);
            Ok(())
        }
        // [DONE], then more events for 3 s, then the end of the body.
        "after-done" => {
            out.content("before")?;
            out.raw(b"data: [DONE]\n\n")?;
            for _ in 0..30 {
                sleep_ms(100);
                out.content("after [DONE]")?;
            }
            out.conn.write_all(b"0\r\n\r\n")
        }
        other => panic!("no script for model {other}"),
    }
}

fn gateway(up: &Upstream, extra: &str, pool: &str) -> Gateway {
    let cfg = format!(
        "{}[providers.up]\ntype = \"openai\"\nbase_url = \"http://{}/v1\"\nkeys = [{{ key = \"env:UP_KEY\" }}]\nmax_retries = 0\n{extra}\n[providers.up.breaker]\nenabled = false\n{pool}",
        base_config(),
        up.addr,
    );
    Gateway::start_with_env(&cfg, &[("UP_KEY", "sk-bounds")])
}

fn stream(gw: &Gateway, model: &str) -> SseResponse {
    stream_of(gw, model, "x")
}

/// A streamed chat request saying `content`. The built-in mock streams its answer (`mock:
/// <content>`) in at most one chunk per character, so a mock stream of N chunks needs a content
/// of at least N characters.
fn stream_of(gw: &Gateway, model: &str, content: &str) -> SseResponse {
    let mut c = Conn::new(gw.api);
    c.send(&stream_request(model, content, false));
    c.sse_response()
        .unwrap_or_else(|| panic!("{model}: the stream was cut without its end"))
}

/// The `error.code` of the stream's last event, if that event is an error.
fn error_code(r: &SseResponse) -> Option<String> {
    let last = &r.events.last()?.0;
    let v: serde_json::Value = serde_json::from_str(last).ok()?;
    v["error"]["code"].as_str().map(str::to_string)
}

fn counter(gw: &Gateway, pool: &str, name: &str) -> u64 {
    gw.stats()["pools"][pool]["counters"][name]
        .as_u64()
        .unwrap_or_default()
}

#[test]
fn a_healthy_stream_outlives_the_request_timeout() {
    let up = Upstream::start();
    let gw = gateway(&up, "stream_idle_timeout_ms = 1000", BOUNDS);
    let t0 = Instant::now();
    let r = stream(&gw, "up/long");
    assert!(t0.elapsed() >= Duration::from_millis(1500), "a 2 s stream");
    assert_eq!(r.status, 200);
    assert_eq!(r.events.last().map(|e| e.0.as_str()), Some("[DONE]"));
    let expected: String = (0..20).map(|i| format!("{i} ")).collect();
    assert_eq!(r.content(), expected);
    assert_eq!(counter(&gw, "up", "stalled_workers"), 0);
    assert_eq!(counter(&gw, "up", "stream_errors"), 0);

    // The built-in mock: 20 chunks 100 ms apart under the same bounds.
    let cfg = format!(
        "{}[providers.mock]\ntype = \"mock\"\nstream_idle_timeout_ms = 1000\n[providers.mock.mock]\nstream_chunks = 20\nchunk_delay_ms = 100\n{}",
        base_config(),
        BOUNDS.replace("providers.up", "providers.mock")
    );
    let gw = Gateway::start(&cfg);
    let content = "x".repeat(20);
    let t0 = Instant::now();
    let r = stream_of(&gw, "mock/m", &content);
    assert!(t0.elapsed() >= Duration::from_millis(1500), "a 2 s stream");
    assert_eq!(r.events.last().map(|e| e.0.as_str()), Some("[DONE]"));
    assert_eq!(r.content(), format!("mock: {content}"));
    assert_eq!(counter(&gw, "mock", "stalled_workers"), 0);
    assert_eq!(counter(&gw, "mock", "stream_errors"), 0);
}

#[test]
fn a_silent_stream_ends_with_an_error_event() {
    // The idle timeout is longer than the request timeout plus the stall grace: the stream is
    // judged by its silence, not by the request deadline.
    let up = Upstream::start();
    let gw = gateway(&up, "stream_idle_timeout_ms = 1000", BOUNDS);
    let t0 = Instant::now();
    let r = stream(&gw, "up/silent");
    assert_eq!(r.status, 200);
    assert_eq!(
        error_code(&r).as_deref(),
        Some("stream_idle_timeout"),
        "{:?}",
        r.events
    );
    assert!(t0.elapsed() >= Duration::from_millis(1000));
    assert!(
        t0.elapsed() < Duration::from_millis(5000),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(counter(&gw, "up", "stream_errors"), 1);
    assert_eq!(counter(&gw, "up", "stalled_workers"), 0);
}

#[test]
fn comment_keep_alives_keep_a_stream_alive() {
    let up = Upstream::start();
    let gw = gateway(&up, "stream_idle_timeout_ms = 1000", BOUNDS);
    let r = stream(&gw, "up/pings");
    assert_eq!(
        r.events.last().map(|e| e.0.as_str()),
        Some("[DONE]"),
        "{:?}",
        r.events
    );
    assert_eq!(r.content(), "after the pings");
    assert_eq!(
        r.events.len(),
        3,
        "comments are not passed on: {:?}",
        r.events
    );
    assert_eq!(counter(&gw, "up", "stalled_workers"), 0);
    assert_eq!(counter(&gw, "up", "stream_errors"), 0);
}

#[test]
fn a_stream_past_its_longest_duration_ends_with_an_error_event() {
    let up = Upstream::start();
    let gw = gateway(
        &up,
        "stream_idle_timeout_ms = 1000\nstream_duration_ms_max = 1500",
        BOUNDS,
    );
    let t0 = Instant::now();
    let r = stream(&gw, "up/endless");
    assert_eq!(
        error_code(&r).as_deref(),
        Some("stream_duration_exceeded"),
        "{:?}",
        r.events.last()
    );
    assert!(r.events.len() > 5, "events flowed until the bound");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert_eq!(counter(&gw, "up", "stalled_workers"), 0);

    // The built-in mock keeps the same bound.
    let cfg = format!(
        "{}[providers.mock]\ntype = \"mock\"\nstream_duration_ms_max = 1500\n[providers.mock.mock]\nstream_chunks = 100\nchunk_delay_ms = 100\n{}",
        base_config(),
        BOUNDS.replace("providers.up", "providers.mock")
    );
    let gw = Gateway::start(&cfg);
    // 100 chunks 100 ms apart: 10 s, cut at 1.5 s.
    let r = stream_of(&gw, "mock/m", &"x".repeat(100));
    assert_eq!(error_code(&r).as_deref(), Some("stream_duration_exceeded"));
    assert_eq!(counter(&gw, "mock", "stalled_workers"), 0);
}

/// Peak resident memory of a process, KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn an_event_that_never_ends_is_cut_and_memory_stays_bounded() {
    let up = Upstream::start();
    let gw = gateway(
        &up,
        "stream_idle_timeout_ms = 3000",
        "[providers.up.pool]\nworkers = 4\nrequest_timeout_ms = 10000\n",
    );
    let pid = gw.proc.child.id();
    let warm = stream(&gw, "up/short");
    assert_eq!(warm.content(), "hello");
    let before = peak_rss_kib(pid);
    let api = gw.api;
    let streams: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Conn::new(api);
                c.send(&stream_request("up/huge-event", "x", false));
                c.sse_response()
            })
        })
        .collect();
    let ends: Vec<_> = streams.into_iter().map(|s| s.join().unwrap()).collect();
    // Generous: each stream may hold one bounded event (4 MiB) and a line; without the bound
    // every one of the four holds all the 64 MiB its upstream sends.
    let grown = peak_rss_kib(pid).saturating_sub(before);
    assert!(grown < 96 * 1024, "peak RSS grew by {grown} KiB");
    for r in ends {
        let r = r.expect("the stream ends with its end");
        assert_eq!(error_code(&r).as_deref(), Some("upstream_event_too_large"));
    }
    assert_eq!(counter(&gw, "up", "stream_errors"), 4);
}

#[test]
fn nothing_after_done_reaches_the_client() {
    // A request timeout long enough that only the stream's own bounds matter.
    let up = Upstream::start();
    let gw = gateway(
        &up,
        "stream_idle_timeout_ms = 1000",
        "[providers.up.pool]\nrequest_timeout_ms = 10000\n",
    );
    let r = stream(&gw, "up/after-done");
    let events: Vec<&str> = r.events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[2], "[DONE]");
    assert_eq!(r.content(), "before");
    assert_eq!(counter(&gw, "up", "stream_errors"), 0);
    // The gateway stopped reading: the next stream works as usual.
    let r = stream(&gw, "up/long");
    assert_eq!(r.events.last().map(|e| e.0.as_str()), Some("[DONE]"));
}

#[test]
fn shutdown_answers_what_it_cuts_before_exiting() {
    let up = Upstream::start();
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nthreads = 2\nshutdown_timeout_ms = 1000\n\n[stats]\nstdout_interval_ms = 0\n\n[providers.up]\ntype = \"openai\"\nbase_url = \"http://{}/v1\"\nkeys = [{{ key = \"env:UP_KEY\" }}]\nmax_retries = 0\n[providers.up.pool]\nworkers = 4\nrequest_timeout_ms = 30000\n",
        up.addr
    );
    let mut gw = Gateway::start_with_env(&cfg, &[("UP_KEY", "sk-bounds")]);
    let api = gw.api;
    let streamed = std::thread::spawn(move || {
        let mut c = Conn::new(api);
        c.send(&stream_request("up/endless", "x", false));
        c.sse_response()
    });
    let whole = std::thread::spawn(move || {
        let body = r#"{"model":"up/slow-whole","messages":[{"role":"user","content":"a"}]}"#;
        let mut s = connect(api);
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        read_response(&mut s)
    });
    assert!(eventually(Duration::from_secs(5), || {
        gw.stats()["pools"]["up"]["busy_workers"] == 2
    }));
    gw.proc.signal(libc::SIGTERM);
    let whole = whole
        .join()
        .unwrap()
        .expect("the whole request is answered");
    assert_eq!(
        whole.status,
        503,
        "{}",
        String::from_utf8_lossy(&whole.body)
    );
    assert_eq!(whole.error_code(), "shutting_down");
    let streamed = streamed
        .join()
        .unwrap()
        .expect("the stream ends with its end");
    assert_eq!(streamed.status, 200);
    assert!(
        streamed.events.len() > 3,
        "the stream ran until the deadline"
    );
    assert_eq!(error_code(&streamed).as_deref(), Some("shutting_down"));
    assert_eq!(gw.proc.wait_exit(Duration::from_secs(10)), Some(0));
}

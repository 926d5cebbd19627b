//! End-to-end tests of `stream: true`: Server-Sent Events through the real gateway binary, from
//! the built-in mock and from an `openai` provider in front of the bench mock.

mod common;

use common::*;
use std::io::Write;
use std::time::{Duration, Instant};

fn builtin(chunks: usize, delay_ms: u64, workers: usize) -> Gateway {
    let cfg = format!(
        "{}[providers.mock]\ntype = \"mock\"\n[providers.mock.mock]\nstream_chunks = {chunks}\nchunk_delay_ms = {delay_ms}\n[providers.mock.pool]\nworkers = {workers}\nqueue_capacity = 4096\n",
        base_config()
    );
    Gateway::start(&cfg)
}

#[test]
fn builtin_mock_streams_events_and_keeps_the_connection() {
    let gw = builtin(5, 60, 2);
    let mut c = Conn::new(gw.api);
    let t0 = Instant::now();
    c.send(&stream_request("mock/m", "hello streaming world", false));
    let r = c.sse_response().expect("stream");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.header("x-deepintshield-provider"), Some("mock"));
    assert_eq!(r.events.last().map(|e| e.0.as_str()), Some("[DONE]"));
    assert_eq!(r.content(), "mock: hello streaming world");
    let chunks = r.chunks();
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    assert!(
        chunks
            .iter()
            .all(|c| c["choices"].as_array().is_some_and(|a| !a.is_empty())),
        "no usage chunk unless asked"
    );
    // Events arrive as they are produced, not together at the end.
    let first = r.events[1].1;
    let last_content = r.events[5].1;
    assert!(
        last_content - first >= Duration::from_millis(200),
        "{:?}",
        last_content - first
    );
    assert!(first - t0 < Duration::from_millis(200));
    // The same connection serves the next request.
    c.send(&stream_request("mock/m", "again", true));
    let r = c.sse_response().expect("second stream");
    assert_eq!(r.content(), "mock: again");
    let usage = r.chunks().last().cloned().unwrap();
    assert_eq!(usage["choices"].as_array().map(Vec::len), Some(0));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let stats = gw.stats();
    let counters = &stats["pools"]["mock"]["counters"];
    assert_eq!(counters["streams"], 2);
    assert!(
        counters["completion_tokens"].as_u64().unwrap() > 0,
        "usage recorded for both"
    );
    assert_eq!(
        stats["pools"]["mock"]["latency_us"]["time_to_first_token"]["count"],
        2
    );
}

#[test]
fn client_leaving_mid_stream_frees_the_worker_and_leaks_no_fds() {
    let gw = builtin(50, 20, 1);
    let pid = gw.proc.child.id();
    // Warm up so that lazily created state is not counted as a leak.
    let mut c = Conn::new(gw.api);
    c.send(&stream_request("mock/m", "warm", false));
    let _ = c.s.set_read_timeout(Some(Duration::from_millis(300)));
    let mut buf = [0u8; 1024];
    let _ = std::io::Read::read(&mut c.s, &mut buf);
    drop(c);
    assert!(eventually(Duration::from_secs(3), || {
        gw.stats()["pools"]["mock"]["counters"]["client_cancelled"] == 1
    }));
    std::thread::sleep(Duration::from_millis(200));
    let before = fd_count(pid);
    for _ in 0..200 {
        let mut s = connect(gw.api);
        s.write_all(&stream_request("mock/m", "bye", false))
            .unwrap();
        let mut head = [0u8; 256];
        let _ = std::io::Read::read(&mut s, &mut head);
        drop(s);
    }
    // One worker: each cancelled stream must free it within about one chunk delay.
    assert!(
        eventually(Duration::from_secs(60), || {
            gw.stats()["pools"]["mock"]["counters"]["client_cancelled"] == 201
        }),
        "{}",
        gw.stats()["pools"]["mock"]["counters"]
    );
    let r = gw.chat("mock/after", "still serving");
    assert_eq!(r.status, 200);
    assert!(
        eventually(Duration::from_secs(5), || fd_count(pid) <= before + 2),
        "fds before {before}, after {}",
        fd_count(pid)
    );
}

#[test]
fn client_leaving_before_the_first_token_cancels_the_job() {
    let cfg = format!(
        "{}[providers.mock]\ntype = \"mock\"\n[providers.mock.mock]\nlatency_ms = 3000\n[providers.mock.pool]\nworkers = 1\n",
        base_config()
    );
    let gw = Gateway::start(&cfg);
    let mut s = connect(gw.api);
    s.write_all(&stream_request("mock/m", "x", false)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
    let t0 = Instant::now();
    assert!(eventually(Duration::from_secs(2), || {
        gw.stats()["pools"]["mock"]["counters"]["client_cancelled"] == 1
    }));
    // The single worker is free again well before the 3 s latency would have passed.
    assert!(eventually(Duration::from_secs(2), || {
        gw.stats()["pools"]["mock"]["busy_workers"] == 0
    }));
    assert!(t0.elapsed() < Duration::from_millis(2500));
}

#[test]
fn many_concurrent_streams_do_not_slow_plain_requests() {
    let gw = builtin(16, 50, 256);
    let addr = gw.api;
    let streams: Vec<_> = (0..200)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Conn::new(addr);
                c.send(&stream_request("mock/m", &format!("stream {i}"), false));
                c.sse_response().map(|r| r.content())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(150));
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t0 = Instant::now();
        assert_eq!(gw.chat("mock/plain", "p").status, 200);
        worst = worst.max(t0.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    for (i, h) in streams.into_iter().enumerate() {
        assert_eq!(
            h.join().unwrap().as_deref(),
            Some(format!("mock: stream {i}").as_str())
        );
    }
    // Generous for a loaded 2-core machine; a blocked scheduler would take > 1 s.
    assert!(
        worst < Duration::from_millis(250),
        "worst plain latency {worst:?}"
    );
}

#[test]
fn head_of_a_stream_is_an_error_before_it_starts() {
    let gw = builtin(4, 0, 1);
    let mut c = Conn::new(gw.api);
    c.send(&stream_request("nope/m", "x", false));
    let r = c.sse_response().expect("response");
    assert_eq!(r.status, 404);
    assert!(r.events[0].0.contains("model_not_found"));
}

/// A gateway with an `openai` provider `up` in front of the bench mock.
fn via_bench_mock(extra: &str) -> (Mock, Gateway) {
    let mock = Mock::start(&[]);
    let cfg = format!(
        "{}[providers.up]\ntype = \"openai\"\nbase_url = \"{}\"\nkeys = [{{ key = \"env:UP_KEY\" }}]\n{extra}\n",
        base_config(),
        mock.base_url()
    );
    let gw = Gateway::start_with_env(&cfg, &[("UP_KEY", "sk-stream")]);
    (mock, gw)
}

#[test]
fn upstream_stream_is_relayed_event_by_event() {
    let (mock, gw) = via_bench_mock("");
    let mut c = Conn::new(gw.api);
    c.send(&stream_request(
        "up/chunks-4-chunkdelay-100",
        "relay me",
        true,
    ));
    let r = c.sse_response().expect("stream");
    assert_eq!(r.status, 200);
    assert_eq!(r.content(), "mock: relay me");
    assert_eq!(r.events.last().map(|e| e.0.as_str()), Some("[DONE]"));
    let usage = r.chunks().last().cloned().unwrap();
    assert!(
        usage["usage"]["total_tokens"].as_u64().unwrap() > 0,
        "{usage}"
    );
    let content: Vec<_> = r
        .chunks()
        .iter()
        .zip(&r.events)
        .filter(|(c, _)| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .map(|(_, e)| e.1)
        .collect();
    assert!(content.len() >= 2);
    assert!(
        *content.last().unwrap() - content[0] >= Duration::from_millis(150),
        "events must not be buffered"
    );
    // Without include_usage the usage chunk is not passed on, but still counted.
    c.send(&stream_request("up/chunks-2", "no usage", false));
    let r = c.sse_response().expect("stream");
    assert!(r
        .chunks()
        .iter()
        .all(|c| c["choices"].as_array().is_some_and(|a| !a.is_empty())));
    let counters = &gw.stats()["pools"]["up"]["counters"];
    assert!(
        counters["completion_tokens"].as_u64().unwrap() > 0,
        "{counters}"
    );
    assert_eq!(mock.stats()["streams_completed"], 2);
}

#[test]
fn mid_stream_upstream_error_becomes_an_sse_error_event() {
    let (_mock, gw) = via_bench_mock("");
    let mut c = Conn::new(gw.api);
    c.send(&stream_request("up/chunks-8-failafter-3", "x", false));
    let r = c.sse_response().expect("stream");
    assert_eq!(r.status, 200);
    let last = &r.events.last().expect("events").0;
    let v: serde_json::Value = serde_json::from_str(last).expect("json error event");
    assert!(v["error"].is_object(), "{last}");
    assert!(r.events.iter().all(|e| e.0 != "[DONE]"));
    // An abrupt close of the upstream is reported, not a silent truncation.
    let mut c = Conn::new(gw.api);
    c.send(&stream_request("up/chunks-8-resetafter-3", "x", false));
    let r = c.sse_response().expect("stream");
    let last = &r.events.last().expect("events").0;
    assert!(last.contains("\"error\""), "{last}");
    assert!(
        gw.stats()["pools"]["up"]["counters"]["stream_errors"]
            .as_u64()
            .unwrap()
            >= 2
    );
}

#[test]
fn stalled_upstream_stream_is_ended_with_an_error() {
    let (_mock, gw) = via_bench_mock("stream_idle_timeout_ms = 300");
    let mut c = Conn::new(gw.api);
    let t0 = Instant::now();
    c.send(&stream_request("up/chunks-3-chunkdelay-2000", "x", false));
    let r = c.sse_response().expect("stream");
    let last = &r.events.last().expect("events").0;
    assert!(last.contains("stream_idle_timeout"), "{last}");
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn client_leaving_mid_stream_stops_the_upstream_stream() {
    let (mock, gw) = via_bench_mock("");
    let mut c = Conn::new(gw.api);
    c.send(&stream_request("up/chunks-100-chunkdelay-100", "x", false));
    let mut buf = [0u8; 512];
    let _ = std::io::Read::read(&mut c.s, &mut buf);
    std::thread::sleep(Duration::from_millis(250));
    drop(c);
    let t0 = Instant::now();
    assert!(
        eventually(Duration::from_secs(3), || mock.stats()["streams_aborted"]
            == 1),
        "{}",
        mock.stats()
    );
    assert!(
        t0.elapsed() < Duration::from_millis(1200),
        "{:?}",
        t0.elapsed()
    );
    assert!(eventually(Duration::from_secs(2), || {
        gw.stats()["pools"]["up"]["counters"]["client_cancelled"] == 1
    }));
    // 200 more cancelled streams: every upstream stream stops and no descriptor is left behind.
    let pid = gw.proc.child.id();
    std::thread::sleep(Duration::from_millis(200));
    let before = fd_count(pid);
    for _ in 0..200 {
        let mut s = connect(gw.api);
        s.write_all(&stream_request("up/chunks-100-chunkdelay-50", "x", false))
            .unwrap();
        let mut head = [0u8; 256];
        let _ = std::io::Read::read(&mut s, &mut head);
    }
    assert!(
        eventually(Duration::from_secs(30), || mock.stats()["streams_aborted"]
            == 201),
        "{}",
        mock.stats()
    );
    assert!(
        eventually(Duration::from_secs(5), || fd_count(pid) <= before + 2),
        "fds before {before}, after {}",
        fd_count(pid)
    );
    assert_eq!(gw.chat("up/after", "ok").status, 200);
}

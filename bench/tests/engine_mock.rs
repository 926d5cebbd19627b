//! End-to-end: the load engine against the real mock binary on loopback. Checks behaviour (every
//! request accounted for, faults classified, stream events timed), not speed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Mock;
use deepintshield_bench::engine::{self, Load, Target};
use deepintshield_bench::report::Summary;
use deepintshield_bench::request::{build_request, Url, DEFAULT_CHAT_BODY, DEFAULT_STREAM_BODY};

impl Mock {
    fn target(&self, body: &str) -> Target {
        let url = Url::parse(&format!("http://{}/v1/chat/completions", self.addr)).unwrap();
        Target {
            name: "mock".into(),
            addr: self.addr,
            request: Arc::new(build_request("POST", &url, &[], body.as_bytes())),
            alt_request: None,
            head_request: false,
        }
    }
}

fn load(rate: f64, duration_ms: u64, stream: bool) -> Load {
    Load {
        rate,
        warmup: Duration::ZERO,
        duration: Duration::from_millis(duration_ms),
        connections: 8,
        threads: 1,
        timeout: Duration::from_secs(5),
        stream,
    }
}

#[test]
fn every_request_is_accounted_for_and_faults_are_classified() {
    let mock = Mock::start(&["--error-rate", "429:0.3,reset:0.1", "--seed", "7"]);
    let r = engine::run(&mock.target(DEFAULT_CHAT_BODY), &load(400.0, 500, false)).unwrap();
    assert_eq!(r.measured, 200);
    let errors = |k: &str| r.errors.get(k).copied().unwrap_or(0);
    assert_eq!(
        r.ok + errors("status_429") + errors("closed"),
        200,
        "{:?}",
        r.errors
    );
    assert_eq!(r.latency.len(), r.ok);
    let stats = mock.stats();
    assert_eq!(stats["requests"], 200);
    assert_eq!(stats["injected"]["status_429"], errors("status_429"));
    assert_eq!(stats["injected"]["reset"], errors("closed"));
    assert!(
        errors("status_429") > 20 && errors("closed") > 0 && r.ok > 80,
        "{:?}",
        r.errors
    );
}

#[test]
fn stream_mode_times_the_first_event_and_the_gaps() {
    let mock = Mock::start(&[
        "--delay-ms",
        "20",
        "--stream-chunks",
        "4",
        "--chunk-delay-ms",
        "10",
    ]);
    let r = engine::run(&mock.target(DEFAULT_STREAM_BODY), &load(50.0, 400, true)).unwrap();
    assert_eq!((r.measured, r.ok), (20, 20), "{:?}", r.errors);
    // role + 4 content + finish + usage events per stream
    assert_eq!(r.stream_events, 20 * 7);
    let (ttft, gaps, total) = (
        Summary::of(&r.ttft),
        Summary::of(&r.gaps),
        Summary::of(&r.latency),
    );
    assert!(
        ttft.p50 >= 20_000,
        "first event after the 20 ms latency: {ttft:?}"
    );
    assert!(gaps.max >= 10_000, "content chunks 10 ms apart: {gaps:?}");
    assert!(total.p50 >= 50_000, "20 ms + 3 pauses of 10 ms: {total:?}");
    assert_eq!(mock.stats()["streams_completed"], 20);
}

#[test]
fn stream_mode_reads_anthropic_messages_streams() {
    let mock = Mock::start(&["--stream-chunks", "3"]);
    let url = Url::parse(&format!("http://{}/v1/messages", mock.addr)).unwrap();
    let headers = [
        "x-api-key: sk-ant-load".to_string(),
        "anthropic-version: 2023-06-01".to_string(),
        "content-type: application/json".to_string(),
    ];
    let body = br#"{"model":"claude-mock","max_tokens":32,"stream":true,"messages":[{"role":"user","content":"load me"}]}"#;
    let target = Target {
        name: "mock".into(),
        addr: mock.addr,
        request: Arc::new(build_request("POST", &url, &headers, body)),
        alt_request: None,
        head_request: false,
    };
    let r = engine::run(&target, &load(50.0, 200, true)).unwrap();
    assert_eq!((r.measured, r.ok), (10, 10), "{:?}", r.errors);
    // message_start, content_block_start, ping, 3 deltas, content_block_stop, message_delta; then
    // message_stop, the end (not counted, as [DONE] is not)
    assert_eq!(r.stream_events, 10 * 8);
    let stats = mock.stats();
    assert_eq!(stats["streams_completed"], 10);
    assert_eq!(stats["last_api_key"], "sk-ant-load");

    // A mid-stream `event: error` is a failed stream, not a success.
    let failing = br#"{"model":"failafter-1","max_tokens":32,"stream":true,"messages":[{"role":"user","content":"x"}]}"#;
    let target = Target {
        request: Arc::new(build_request("POST", &url, &headers, failing)),
        ..target
    };
    let r = engine::run(&target, &load(50.0, 100, true)).unwrap();
    assert_eq!((r.measured, r.ok), (5, 0), "{:?}", r.errors);
}

#[test]
fn a_dead_target_is_a_setup_error() {
    let mock = Mock::start(&[]);
    let target = mock.target(DEFAULT_CHAT_BODY);
    drop(mock);
    assert!(engine::run(&target, &load(10.0, 100, false)).is_err());
}

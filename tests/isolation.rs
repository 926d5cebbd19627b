//! Provider isolation, measured: one provider stalling completely must not change another
//! provider's latency. Alone in its test binary so that no other test shares the machine with
//! the measurement.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// p99 latency of `n` requests paced at `rate` per second against `model`.
fn paced_p99(gw: &Gateway, model: &str, rate: u64, n: usize) -> Duration {
    let addr = gw.api;
    let gap = Duration::from_nanos(1_000_000_000 / rate);
    let start = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let model = model.to_string();
            let at = start + gap * i as u32;
            std::thread::spawn(move || {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                let body = format!(
                    r#"{{"model":"{model}","messages":[{{"role":"user","content":"i"}}]}}"#
                );
                let r = request(addr, "POST", "/v1/chat/completions", &[], body.as_bytes());
                assert_eq!(r.status, 200);
                // Measured from the scheduled time: no coordinated omission.
                at.elapsed()
            })
        })
        .collect();
    let mut lat: Vec<Duration> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    lat.sort();
    lat[(lat.len() * 99 / 100).min(lat.len() - 1)]
}

#[test]
fn a_stalled_provider_does_not_slow_another() {
    let cfg = format!(
        "{}[providers.a]\ntype = \"mock\"\n[providers.a.mock]\nlatency_ms = 30000\n[providers.a.pool]\nworkers = 4\nqueue_capacity = 10000\nrequest_timeout_ms = 60000\nqueue_wait_ms_max = 60000\n\
         [providers.b]\ntype = \"mock\"\n[providers.b.pool]\nworkers = 4\n",
        base_config()
    );
    let gw = Gateway::start(&cfg);
    let healthy = paced_p99(&gw, "b/m", 500, 500);
    // Provider a stalls completely: its workers are all stuck and its queue fills up.
    let addr = gw.api;
    let stuck: Vec<_> = (0..200)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = connect(addr);
                let body = r#"{"model":"a/m","messages":[{"role":"user","content":"s"}]}"#;
                let req = format!(
                    "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
                std::thread::sleep(Duration::from_secs(4));
            })
        })
        .collect();
    assert!(eventually(Duration::from_secs(3), || {
        gw.stats()["pools"]["a"]["queue_depth"].as_u64().unwrap() >= 150
    }));
    let stalled = paced_p99(&gw, "b/m", 500, 500);
    for h in stuck {
        h.join().unwrap();
    }
    // Within 2x, with a 2 ms floor for scheduler noise on a small shared machine.
    eprintln!("b p99 with a healthy: {healthy:?}, with a stalled: {stalled:?}");
    let bound = (healthy * 2).max(healthy + Duration::from_millis(2));
    assert!(
        stalled <= bound,
        "b p99 healthy {healthy:?}, with a stalled {stalled:?}"
    );
}

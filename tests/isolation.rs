//! Provider isolation: one provider stalling completely (every worker stuck, its queue filling)
//! must not hold another provider's requests. Checked by behaviour: every request to the healthy
//! provider is answered while the stalled one has answered nothing, and each pool accepted only
//! its own requests. How much the stall moves the healthy provider's latency is a speed claim: it
//! is measured by `bench/run-isolation.sh` (bench/README.md, "Isolation").

mod common;

use common::*;
use std::time::Duration;

/// Requests the stalled provider is sent; its 4 workers take 4, the rest wait in its queue.
const STALLED_REQUESTS: usize = 200;
/// Requests to the healthy provider while the other is stalled.
const HEALTHY_REQUESTS: usize = 300;

#[test]
fn a_stalled_provider_does_not_hold_another() {
    // a answers after 30 s, far past the test: while the test runs, it answers nothing.
    let cfg = format!(
        "{}[providers.a]\ntype = \"mock\"\n[providers.a.mock]\nlatency_ms = 30000\n[providers.a.pool]\nworkers = 4\nqueue_capacity = 10000\nrequest_timeout_ms = 60000\nqueue_wait_ms_max = 60000\n\
         [providers.b]\ntype = \"mock\"\n[providers.b.pool]\nworkers = 4\n",
        base_config()
    );
    let gw = Gateway::start(&cfg);
    let addr = gw.api;
    // Provider a stalls completely: its workers are all stuck and its queue fills up. The
    // connections stay open (the requests stay queued) until the test ends.
    let stuck: Vec<_> = (0..STALLED_REQUESTS)
        .map(|_| {
            let mut s = connect(addr);
            let body = r#"{"model":"a/m","messages":[{"role":"user","content":"s"}]}"#;
            let req = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
            s
        })
        .collect();
    let a_queued = STALLED_REQUESTS as u64 - 4;
    assert!(
        eventually(Duration::from_secs(10), || {
            gw.stats()["pools"]["a"]["queue_depth"].as_u64() == Some(a_queued)
        }),
        "a's queue: {}",
        gw.stats()["pools"]["a"]
    );

    // b answers every request, from several clients at once, while a is stalled.
    let clients: Vec<_> = (0..4)
        .map(|c| {
            std::thread::spawn(move || {
                for i in 0..HEALTHY_REQUESTS / 4 {
                    let body = format!(
                        r#"{{"model":"b/m","messages":[{{"role":"user","content":"b{c}-{i}"}}]}}"#
                    );
                    let r = request(addr, "POST", "/v1/chat/completions", &[], body.as_bytes());
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                    assert_eq!(
                        r.json()["choices"][0]["message"]["content"],
                        format!("mock: b{c}-{i}")
                    );
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }

    let stats = gw.stats();
    let (a, b) = (&stats["pools"]["a"], &stats["pools"]["b"]);
    // a is still stalled: it answered nothing, so nothing of b's can have waited behind it.
    assert_eq!(a["counters"]["completed"], 0, "{a}");
    assert_eq!(a["queue_depth"].as_u64(), Some(a_queued), "{a}");
    assert_eq!(a["busy_workers"], 4, "{a}");
    // Each pool took only its own requests: none of b's went through a's queue.
    assert_eq!(a["counters"]["accepted"], STALLED_REQUESTS as u64, "{a}");
    let healthy = HEALTHY_REQUESTS as u64;
    assert_eq!(b["counters"]["accepted"], healthy, "{b}");
    assert_eq!(b["counters"]["completed"], healthy, "{b}");
    assert_eq!(b["latency_us"]["queue_wait"]["count"], healthy, "{b}");
    for counter in ["dropped", "rejected", "queue_timeouts", "request_timeouts"] {
        assert_eq!(b["counters"][counter], 0, "{counter}: {b}");
    }
    drop(stuck);
}

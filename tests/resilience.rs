//! Resilience end to end: stall detection, circuit breaker with fallbacks, per-request fallbacks,
//! adaptive scaling, provider isolation, retries and key cool-downs (with the bench mock's fault
//! injection).

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (tests/run enables it)"
)]
fn a_stalled_worker_is_replaced_and_its_client_answered() {
    let cfg = format!(
        "{}[providers.mock]\ntype = \"mock\"\n[providers.mock.pool]\nworkers = 1\nrequest_timeout_ms = 500\nqueue_wait_ms_max = 400\nstall_grace_ms = 300\n",
        base_config()
    );
    let gw = Gateway::start(&cfg);
    let t0 = Instant::now();
    let r = gw.chat("mock/__stall__", "x");
    assert_eq!(r.status, 504, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        t0.elapsed() < Duration::from_millis(2000),
        "{:?}",
        t0.elapsed()
    );
    assert!(eventually(Duration::from_secs(3), || {
        gw.stats()["pools"]["mock"]["counters"]["stalled_workers"] == 1
    }));
    // The replacement serves at once although the stuck worker sleeps for 10 s.
    let t1 = Instant::now();
    assert_eq!(gw.chat("mock/ok", "x").status, 200);
    assert!(t1.elapsed() < Duration::from_millis(500));
    let pool = &gw.stats()["pools"]["mock"];
    assert_eq!(pool["workers_stalled"], 1);
    assert_eq!(pool["counters"]["reply_timeouts"], 1);
}

#[test]
fn breaker_opens_falls_back_then_closes_after_recovery() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let primary = Mock::start(&["--listen", &listen]);
    let cfg = format!(
        "{}[providers.a]\ntype = \"openai\"\nbase_url = \"http://{listen}/v1\"\nkeys = [{{ key = \"env:A_KEY\" }}]\nmax_retries = 0\n\
         [providers.a.breaker]\nconsecutive_failures = 3\nopen_ms = 700\nhalf_open_probes = 1\n\
         [providers.b]\ntype = \"mock\"\n\n[aliases]\n\"m\" = \"a/m\"\n\n[fallbacks]\n\"m\" = [\"b/m\"]\n",
        base_config().replace("[server]\n", "[server]\nclient_keys = []\n")
    );
    let gw = Gateway::start_with_env(&cfg, &[("A_KEY", "sk-a")]);
    let r = gw.chat("m", "x");
    assert_eq!(r.header("x-deepintshield-provider"), Some("a"));
    drop(primary); // the primary goes down: connection refused
    for _ in 0..6 {
        let r = gw.chat("m", "x");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("x-deepintshield-provider"), Some("b"));
    }
    let breaker = gw.stats()["pools"]["a"]["breaker"].clone();
    assert_eq!(breaker["state"], "open", "{breaker}");
    assert!(breaker["rejected"].as_u64().unwrap() >= 1, "{breaker}");
    // The primary recovers on the same address; after the cool-down a probe closes the breaker.
    let _primary = Mock::start(&["--listen", &listen]);
    std::thread::sleep(Duration::from_millis(800));
    assert!(eventually(Duration::from_secs(5), || {
        gw.chat("m", "x").header("x-deepintshield-provider") == Some("a")
    }));
    let breaker = gw.stats()["pools"]["a"]["breaker"].clone();
    assert_eq!(breaker["state"], "closed", "{breaker}");
    let states: Vec<&str> = breaker["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["open", "half_open", "closed"], "{breaker}");
}

#[test]
fn per_request_fallbacks_are_honoured() {
    let port = free_port();
    let cfg = format!(
        "{}[providers.dead]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\nkeys = [{{ key = \"env:A_KEY\" }}]\nmax_retries = 0\n[providers.mock]\ntype = \"mock\"\n",
        base_config()
    );
    let gw = Gateway::start_with_env(&cfg, &[("A_KEY", "sk-a")]);
    let body =
        r#"{"model":"dead/x","messages":[{"role":"user","content":"hi"}],"fallbacks":["mock/y"]}"#;
    let r = request(gw.api, "POST", "/v1/chat/completions", &[], body.as_bytes());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-deepintshield-provider"), Some("mock"));
    assert_eq!(r.json()["model"], "y");
    // Without fallbacks the primary's error is the answer.
    let r = gw.chat("dead/x", "hi");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (502, "upstream_unreachable")
    );
    // A fallback that cannot be routed is the client's mistake.
    let body = r#"{"model":"dead/x","messages":[],"fallbacks":["nope/y"]}"#;
    let r = request(gw.api, "POST", "/v1/chat/completions", &[], body.as_bytes());
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "invalid_fallbacks")
    );
}

/// `n` chat requests to `mock/m` at once, each on its own thread; join for their statuses.
fn burst_of_chats(addr: SocketAddr, n: usize) -> Vec<std::thread::JoinHandle<u16>> {
    (0..n)
        .map(|_| {
            std::thread::spawn(move || {
                let body = r#"{"model":"mock/m","messages":[{"role":"user","content":"b"}]}"#;
                request(addr, "POST", "/v1/chat/completions", &[], body.as_bytes()).status
            })
        })
        .collect()
}

#[test]
fn pool_scales_up_under_a_burst_and_back_down_when_idle() {
    let cfg = format!(
        "{}[providers.mock]\ntype = \"mock\"\n[providers.mock.mock]\nlatency_ms = 300\n[providers.mock.pool]\nworkers = 1\nworkers_min = 1\nworkers_max = 8\nqueue_capacity = 100\nqueue_wait_ms_max = 10000\nrequest_timeout_ms = 20000\nscale_interval_ms = 200\nscale_min_interval_ms = 200\n",
        base_config()
    );
    let gw = Gateway::start(&cfg);
    let addr = gw.api;
    let burst = burst_of_chats(addr, 40);
    let mut peak = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(4) {
        let alive = gw.stats()["pools"]["mock"]["workers_alive"]
            .as_u64()
            .unwrap();
        peak = peak.max(alive);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(burst.into_iter().all(|h| h.join().unwrap() == 200));
    assert_eq!(peak, 8, "the burst grows the pool to workers_max");
    assert!(
        eventually(Duration::from_secs(10), || {
            gw.stats()["pools"]["mock"]["workers_alive"] == 1
        }),
        "idle shrinks it to workers_min: {}",
        gw.stats()["pools"]["mock"]
    );
    let pool = &gw.stats()["pools"]["mock"];
    assert!(pool["counters"]["scale_ups"].as_u64().unwrap() >= 1);
    assert!(pool["counters"]["scale_downs"].as_u64().unwrap() >= 1);
    assert!(!pool["supervisor"]["scaling_events"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn a_burst_of_long_requests_grows_the_pool_at_once_instead_of_queueing() {
    // The interval scaler would take seconds per doubling here (scale_min_interval_ms = 3000 by
    // default): 100 requests of 1 s each on 2 workers finish in about 2 s only if the pool grows
    // as the jobs are queued.
    let cfg = format!(
        "{}[providers.mock]\ntype = \"mock\"\n[providers.mock.mock]\nlatency_ms = 1000\n[providers.mock.pool]\nworkers = 2\nworkers_min = 2\nworkers_max = 256\nqueue_capacity = 1000\nrequest_timeout_ms = 20000\n",
        base_config()
    );
    let gw = Gateway::start(&cfg);
    let addr = gw.api;
    let t0 = Instant::now();
    let burst = burst_of_chats(addr, 100);
    assert!(burst.into_iter().all(|h| h.join().unwrap() == 200));
    let took = t0.elapsed();
    let pool = &gw.stats()["pools"]["mock"];
    assert!(
        took < Duration::from_millis(3500),
        "100 requests of 1 s took {took:?}: {pool}"
    );
    let alive = pool["workers_alive"].as_u64().unwrap();
    assert!(
        (100..=256).contains(&alive),
        "grown to cover the burst: {pool}"
    );
    let events = pool["supervisor"]["scaling_events"].as_array().unwrap();
    assert_eq!(events[0]["reason"], "queued", "{events:?}");
}

#[test]
fn health_probes_run_at_start_up_and_report_in_stats() {
    let mock = Mock::start(&[]);
    let dead = free_port();
    let cfg = format!(
        "{}[providers.live]\ntype = \"openai\"\nbase_url = \"{}\"\nkeys = [{{ key = \"env:K\" }}]\n[providers.live.health]\ncheck = \"get\"\npath = \"/models\"\n\
         [providers.dead]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:{dead}/v1\"\nkeys = [{{ key = \"env:K\" }}]\n[providers.dead.health]\ncheck = \"connect\"\n\
         [providers.quiet]\ntype = \"mock\"\n",
        base_config(),
        mock.base_url()
    );
    let gw = Gateway::start_with_env(&cfg, &[("K", "sk-health")]);
    let status = |pool: &str| {
        gw.stats()["pools"][pool]["supervisor"]["health"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(eventually(Duration::from_secs(3), || status("live") == "ok"));
    assert!(eventually(Duration::from_secs(3), || status("dead") == "failed"));
    assert_eq!(status("quiet"), "off");
    // The probe is a GET of the models list, never a (paid) completion.
    assert_eq!(mock.stats()["requests"], 0);
}

#[test]
fn no_descriptor_for_an_upstream_connection_is_a_503_and_not_the_providers_fault() {
    const NOFILE: u64 = 64;
    let listen = format!("127.0.0.1:{}", free_port());
    let _up = Mock::start(&["--listen", &listen]);
    // A breaker that one failure opens for a minute: a shortage of the gateway's own must not.
    let cfg = format!(
        "{}[providers.a]\ntype = \"openai\"\nbase_url = \"http://{listen}/v1\"\nkeys = [{{ key = \"env:A_KEY\" }}]\nmax_retries = 2\n\
         [providers.a.breaker]\nconsecutive_failures = 1\nopen_ms = 60000\n",
        base_config().replace("[server]\n", "[server]\nclient_keys = []\n")
    );
    let (gw, log) = Gateway::start_logged_with(&cfg, |cmd| {
        cmd.env("A_KEY", "sk-a");
        limit_fds(cmd, NOFILE);
    });
    // More clients than the gateway has descriptors: it takes what it can (the first ones, in
    // order), then accept() fails and every descriptor is held by a client connection.
    let mut clients: Vec<std::net::TcpStream> = (0..NOFILE).map(|_| connect(gw.api)).collect();
    log.wait_for(Duration::from_secs(10), |l| {
        l.contains("out of file descriptors")
    })
    .expect("the accept loop ran out of descriptors");
    let body = r#"{"model":"a/m","messages":[{"role":"user","content":"hi"}]}"#;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    use std::io::Write;
    clients[0]
        .write_all(format!("{head}{body}").as_bytes())
        .unwrap();
    let r = read_response(&mut clients[0]).expect("an answer");
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code(), "gateway_out_of_resources");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("out of file descriptors to reach provider a"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    log.wait_for(Duration::from_secs(5), |l| {
        l.contains("cannot open a connection to the provider") && l.contains("provider=a")
    })
    .expect("a log line about the shortage");
    drop(clients);
    // Descriptors free again: the provider was never held at fault, so it serves at once.
    assert!(eventually(Duration::from_secs(5), || gw
        .chat("a/m", "x")
        .status
        == 200));
    let pool = &gw.stats()["pools"]["a"];
    assert_eq!(pool["breaker"]["state"], "closed", "{pool}");
    assert_eq!(pool["counters"]["local_resource_errors"], 1, "{pool}");
    assert_eq!(pool["counters"]["transport_errors"], 0, "{pool}");
}

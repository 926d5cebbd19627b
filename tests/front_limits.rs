//! End-to-end tests of the front's defences against hostile clients, on the real `deepintshield`
//! binary over loopback: the whole-body deadline, `connections_max`, the request body budget,
//! client keys checked before the body is read, bounded JSON parsing, the `Bearer` scheme in any
//! case, bare LF in a request head, half-closed clients, and running out of file descriptors.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

const CLIENT_KEY: &str = "sk-client-front-7a1c";

/// `base_config()` with `server` lines added to its `[server]` section, the built-in mock (with
/// `mock` lines in its `[providers.mock.mock]` section) and `rest` after it.
fn config(server: &str, mock: &str, rest: &str) -> String {
    let base = base_config().replacen("[server]\n", &format!("[server]\n{server}\n"), 1);
    format!("{base}[providers.mock]\ntype = \"mock\"\n[providers.mock.mock]\n{mock}\n{rest}")
}

fn chat_body(content: &str) -> String {
    serde_json::json!({
        "model": "mock/m",
        "messages": [{"role": "user", "content": content}],
    })
    .to_string()
}

/// A chat request head for a body of `len` bytes, with extra header lines (each ending CRLF).
fn chat_head(len: usize, extra: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
         {extra}content-length: {len}\r\n\r\n"
    )
}

fn front(gw: &Gateway) -> serde_json::Value {
    gw.stats()["front"].clone()
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Whether the server has closed `s` (end-of-file or reset within `within`).
fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn a_body_trickling_in_gets_408_at_the_whole_body_deadline() {
    // Each gap (100 ms) is far below body_read_timeout_ms: only the whole-body deadline cuts it.
    let gw = Gateway::start(&config(
        "body_timeout_ms = 1000\nbody_read_timeout_ms = 30000",
        "",
        "",
    ));
    let mut s = connect(gw.api);
    s.write_all(chat_head(1000, "").as_bytes()).unwrap();
    let mut writer = s.try_clone().unwrap();
    let started = Instant::now();
    let trickle = std::thread::spawn(move || {
        for _ in 0..200 {
            if writer.write_all(b" ").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let r = read_response(&mut s).expect("an answer before the body is complete");
    let elapsed = started.elapsed();
    assert_eq!(r.status, 408, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code(), "client_timeout");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    assert!(closed_by_server(&mut s, Duration::from_secs(5)));
    let _ = s.shutdown(Shutdown::Both);
    trickle.join().unwrap();
    assert!(front(&gw)["timeouts"].as_u64().unwrap() >= 1);
    assert_eq!(gw.chat("mock/m", "still here").status, 200);
}

#[test]
fn connections_past_connections_max_get_503_and_the_others_keep_working() {
    let gw = Gateway::start(&config("connections_max = 4", "", ""));
    let models = b"GET /v1/models HTTP/1.1\r\nhost: t\r\n\r\n";
    let mut open: Vec<Conn> = (0..4).map(|_| Conn::new(gw.api)).collect();
    for c in &mut open {
        c.send(models);
        assert_eq!(c.response().expect("answer").status, 200);
    }
    let mut extra = connect(gw.api);
    let r = read_response(&mut extra).expect("a refusal");
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "too_many_connections");
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(closed_by_server(&mut extra, Duration::from_secs(5)));
    for c in &mut open {
        c.send(models);
        assert_eq!(c.response().expect("still served").status, 200);
    }
    let f = front(&gw);
    assert_eq!(f["connections_refused"], 1, "{f}");
    assert_eq!(f["connections_active"], 4, "{f}");
    let (_, metrics) = gw.metrics();
    assert!(
        metrics.contains("deepintshield_front_connections_refused_total{listener=\"api\"} 1"),
        "{metrics}"
    );
    // One closes: a new client gets in.
    drop(open.pop());
    assert!(eventually(Duration::from_secs(5), || front(&gw)
        ["connections_active"]
        == 3));
    let r = request(gw.api, "GET", "/v1/models", &[], b"");
    assert_eq!(r.status, 200);
}

#[test]
fn unauthenticated_requests_are_refused_before_their_body_is_read() {
    let gw = Gateway::start_with_env(
        &config("client_keys = [\"env:CLIENT_KEY\"]", "", ""),
        &[("CLIENT_KEY", CLIENT_KEY)],
    );
    let pid = gw.proc.child.id();
    assert_eq!(gw.chat("mock/m", "warm up").status, 401);
    let rss_before = vm_rss_kib(pid);

    // 50 clients each declare a 16 MiB body and send 1 MiB of it.
    let part = vec![b' '; 1024 * 1024];
    let mut clients = Vec::new();
    for _ in 0..50 {
        let mut s = connect(gw.api);
        s.write_all(chat_head(16 * 1024 * 1024, "").as_bytes())
            .unwrap();
        let _ = s.write_all(&part);
        clients.push(s);
    }
    let rss_during = vm_rss_kib(pid);
    for s in &mut clients {
        let r = read_response(s).expect("an answer without the body");
        assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.error_code(), "missing_api_key");
        assert_eq!(r.header("connection"), Some("close"));
    }
    // Reading the bodies would have taken 50 MiB or more; a generous bound well below that.
    assert!(
        rss_during < rss_before + 24 * 1024,
        "RSS {rss_before} KiB before, {rss_during} KiB with 50 refused 16 MiB bodies"
    );
    drop(clients);

    // Unknown paths and wrong methods are answered before the body too.
    let mut s = connect(gw.api);
    s.write_all(b"POST /v1/nowhere HTTP/1.1\r\nhost: t\r\ncontent-length: 16777216\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).expect("404").status, 404);
    let mut s = connect(gw.api);
    s.write_all(b"PUT /v1/models HTTP/1.1\r\nhost: t\r\ncontent-length: 16777216\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).expect("405").status, 405);

    // A small refused body that arrived whole is skipped: the connection stays usable.
    let body = chat_body("no key");
    let mut c = Conn::new(gw.api);
    c.send(format!("{}{body}", chat_head(body.len(), "")).as_bytes());
    assert_eq!(c.response().expect("401").status, 401);
    let bearer = format!("authorization: Bearer {CLIENT_KEY}\r\n");
    c.send(format!("{}{body}", chat_head(body.len(), &bearer)).as_bytes());
    assert_eq!(
        c.response().expect("200 on the same connection").status,
        200
    );

    let f = front(&gw);
    assert!(
        f["requests_answered_before_body"].as_u64().unwrap() >= 54,
        "{f}"
    );
    assert_eq!(f["body_buffer_bytes"], 0, "{f}");
}

#[test]
fn the_body_budget_refuses_a_body_past_it() {
    let gw = Gateway::start(&config(
        "body_bytes_max = 1048576\nbody_buffer_bytes_max = 1048576",
        "",
        "",
    ));
    // A: a valid 1 MiB chat request of which 900 KiB arrive; the rest waits.
    let pad = 1024 * 1024 - chat_body("").len();
    let big = chat_body(&"x".repeat(pad));
    assert_eq!(big.len(), 1024 * 1024);
    let mut a = Conn::new(gw.api);
    a.send(chat_head(big.len(), "").as_bytes());
    a.send(&big.as_bytes()[..900 * 1024]);
    assert!(
        eventually(Duration::from_secs(5), || front(&gw)["body_buffer_bytes"]
            == 1024 * 1024),
        "{}",
        front(&gw)
    );
    // B: any other body is over the budget now.
    let small = chat_body("small");
    let r = request(
        gw.api,
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        small.as_bytes(),
    );
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code(), "body_buffer_full");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(front(&gw)["body_buffer_refusals"], 1);
    // A completes and is served; its bytes go back to the budget and B gets through.
    a.send(&big.as_bytes()[900 * 1024..]);
    assert_eq!(a.response().expect("A answered").status, 200);
    assert!(eventually(Duration::from_secs(5), || front(&gw)
        ["body_buffer_bytes"]
        == 0));
    assert_eq!(gw.chat("mock/m", "small").status, 200);
    let (_, metrics) = gw.metrics();
    assert!(
        metrics.contains("deepintshield_front_body_buffer_refusals_total{listener=\"api\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_body_of_300k_top_level_keys_is_refused_and_others_are_served() {
    let gw = Gateway::start(&config("", "", ""));
    let mut body = String::from(r#"{"model":"mock/m","messages":[{"role":"user","content":"x"}]"#);
    for i in 0..300_000 {
        body.push_str(&format!(r#","k{i}":0"#));
    }
    body.push('}');
    let api = gw.api;
    let hostile: Vec<_> = (0..2)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || {
                (0..3)
                    .map(|_| {
                        let r = request(api, "POST", "/v1/chat/completions", &[], body.as_bytes());
                        (r.status, r.error_code())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let r = gw.chat("mock/m", "a normal request");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    for h in hostile {
        for (status, code) in h.join().unwrap() {
            assert_eq!((status, code.as_str()), (400, "too_many_fields"));
        }
    }
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let gw = Gateway::start_with_env(
        &config("client_keys = [\"env:CLIENT_KEY\"]", "", ""),
        &[("CLIENT_KEY", CLIENT_KEY)],
    );
    let body = chat_body("hi");
    for (scheme, status) in [
        ("Bearer", 200),
        ("BEARER", 200),
        ("bearer", 200),
        ("Basic", 401),
    ] {
        let auth = format!("{scheme} {CLIENT_KEY}");
        let r = request(
            gw.api,
            "POST",
            "/v1/chat/completions",
            &[("authorization", &auth)],
            body.as_bytes(),
        );
        assert_eq!(r.status, status, "{scheme}");
    }
}

#[test]
fn a_bare_lf_in_the_request_head_is_refused() {
    let gw = Gateway::start_with_env(
        &config("client_keys = [\"env:CLIENT_KEY\"]", "", ""),
        &[("CLIENT_KEY", CLIENT_KEY)],
    );
    // Split at the bare LF, the key would be a header of its own (and the request authorized);
    // a proxy in front may see one `x-note` value instead. Refused either way.
    let raw_request = format!(
        "GET /v1/models HTTP/1.1\r\nhost: t\r\nx-note: a\nauthorization: Bearer {CLIENT_KEY}\r\n\r\n"
    );
    let mut s = connect(gw.api);
    s.write_all(raw_request.as_bytes()).unwrap();
    let r = read_response(&mut s).expect("an answer");
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code(), "malformed_request");
    assert_eq!(r.header("connection"), Some("close"));
    let ok = format!("GET /v1/models HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {CLIENT_KEY}\r\nconnection: close\r\n\r\n");
    assert_eq!(raw(gw.api, ok.as_bytes()).expect("ok").status, 200);
}

/// Everything a client reads until the server closes, without the interim 1xx responses.
fn final_response(s: &mut TcpStream) -> Response {
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("read to the end");
    while all.starts_with(b"HTTP/1.1 1") {
        let end = find(&all, b"\r\n\r\n").expect("end of an interim head") + 4;
        all.drain(..end);
    }
    let head_end = find(&all, b"\r\n\r\n").expect("a final head") + 4;
    let head = String::from_utf8_lossy(&all[..head_end]).to_string();
    let status = head[9..12].parse().expect("status");
    let headers = head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: all[head_end..].to_vec(),
    }
}

#[test]
fn a_client_that_half_closes_after_its_request_still_gets_the_answer() {
    let gw = Gateway::start(&config("", "latency_ms = 800", ""));
    let body = chat_body("half");
    let mut s = connect(gw.api);
    s.write_all(format!("{}{body}", chat_head(body.len(), "")).as_bytes())
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let r = final_response(&mut s);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["choices"][0]["message"]["content"], "mock: half");
    let counters = &gw.stats()["pools"]["mock"]["counters"];
    assert_eq!(counters["client_cancelled"], 0, "{counters}");
}

#[test]
fn a_client_that_closes_while_its_request_waits_still_cancels_it() {
    let gw = Gateway::start(&config(
        "",
        "latency_ms = 3000",
        "[providers.mock.pool]\nworkers = 1\n",
    ));
    let body = chat_body("gone");
    let mut s = connect(gw.api);
    s.write_all(format!("{}{body}", chat_head(body.len(), "")).as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
    assert!(
        eventually(Duration::from_secs(2), || gw.stats()["pools"]["mock"]
            ["counters"]["client_cancelled"]
            == 1),
        "{}",
        gw.stats()["pools"]["mock"]["counters"]
    );
}

#[test]
fn running_out_of_file_descriptors_on_accept_is_counted_and_logged() {
    const NOFILE: u64 = 64;
    let path = write_config(&config("", "", ""));
    let mut cmd = Command::new(gateway_bin());
    cmd.arg("--config").arg(&path);
    limit_fds(&mut cmd, NOFILE);
    let (proc, log) = Proc::spawn_logged(cmd, "listening on");
    let addrs: Vec<SocketAddr> = proc
        .first_line
        .split("http://")
        .skip(1)
        .filter_map(|s| s.split(' ').next()?.parse().ok())
        .collect();
    let (api, admin) = (addrs[0], addrs[1]);
    // More clients than the process has descriptors left: the kernel queues them all, the
    // gateway takes what it can, then accept() fails.
    let clients: Vec<TcpStream> = (0..NOFILE).map(|_| connect(api)).collect();
    log.wait_for(Duration::from_secs(10), |l| {
        l.contains("out of file descriptors")
    })
    .expect("a log line about the descriptor limit");
    drop(clients);
    let stats = || {
        let r = request(admin, "GET", "/stats", &[], b"");
        r.json()["front"]["accept_fd_exhausted"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(eventually(Duration::from_secs(10), || stats() > 0));
    // Descriptors free again: the gateway serves.
    let body = chat_body("after");
    let r = request(
        api,
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200);
    let r = request(admin, "GET", "/metrics", &[], b"");
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        text.lines().any(|l| l
            .starts_with("deepintshield_front_accept_fd_exhausted_total{listener=\"api\"} ")
            && !l.ends_with(" 0")),
        "{text}"
    );
}

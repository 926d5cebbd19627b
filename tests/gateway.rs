//! End-to-end tests of the real `deepintshield` binary, with the bench mock as the upstream.

mod common;

use common::*;
use std::time::{Duration, Instant};

const KEY: &str = "sk-upstream-test-4242";

/// A gateway with the built-in mock plus an `openai` provider `up` in front of `mock`.
fn config_with_upstream(mock: &Mock, pool: &str) -> String {
    format!(
        "{}[providers.mock]\ntype = \"mock\"\nmodels = [\"gpt-4o-mini\"]\n\n\
         [providers.up]\ntype = \"openai\"\nbase_url = \"{}\"\nkeys = [{{ key = \"env:UP_KEY\" }}]\n\
         headers = {{ \"x-extra\" = \"yes\" }}\n\n[providers.up.pool]\n{pool}\n\n\
         [aliases]\n\"gpt-4o-mini\" = \"mock/gpt-4o-mini\"\n\"fast\" = \"up/fast-model\"\n",
        base_config(),
        mock.base_url()
    )
}

fn start_pair(pool: &str) -> (Mock, Gateway) {
    let mock = Mock::start(&[]);
    let gw = Gateway::start_with_env(&config_with_upstream(&mock, pool), &[("UP_KEY", KEY)]);
    (mock, gw)
}

#[test]
fn default_config_serves_the_builtin_mock() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/deepintshield.toml"
    ))
    .unwrap()
    .replace("127.0.0.1:8080", "127.0.0.1:0")
    .replace("127.0.0.1:9090", "127.0.0.1:0");
    let gw = Gateway::start(&text);
    let r = gw.chat("gpt-4o-mini", "hello there");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "mock: hello there");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        v["usage"]["total_tokens"].as_u64().unwrap(),
        v["usage"]["prompt_tokens"].as_u64().unwrap()
            + v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    assert!(r.header("x-request-id").is_some_and(|id| !id.is_empty()));
    assert_eq!(r.header("x-deepintshield-provider"), Some("mock"));
    // provider/model naming works for any model of the mock
    assert_eq!(gw.chat("mock/gpt-4o", "x").status, 200);

    let models = request(gw.api, "GET", "/v1/models", &[], b"");
    assert_eq!(models.status, 200);
    let ids: Vec<String> = models.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.contains(&"gpt-4o-mini".to_string()), "{ids:?}");
    // Embeddings as OpenAI SDK code asks for them, from the mock's deterministic vectors.
    let body = br#"{"model":"text-embedding-3-small","input":["a","b"]}"#;
    let e = request(gw.api, "POST", "/v1/embeddings", &[], body);
    assert_eq!(e.status, 200, "{}", String::from_utf8_lossy(&e.body));
    assert_eq!(e.json()["data"].as_array().map(Vec::len), Some(2));

    let health = request(gw.admin, "GET", "/health", &[], b"");
    assert_eq!(health.status, 200);
    let stats = gw.stats();
    assert!(
        stats["pools"]["mock"]["counters"]["completed"]
            .as_u64()
            .unwrap()
            >= 2
    );
    // Two requests answered: the total-time histogram holds them, each at least 1 us, and its
    // median is not above its maximum.
    let total = &stats["pools"]["mock"]["latency_us"]["total"];
    let completed = stats["pools"]["mock"]["counters"]["completed"]
        .as_u64()
        .unwrap();
    assert_eq!(total["count"].as_u64(), Some(completed));
    let (p50, max) = (
        total["p50"].as_u64().unwrap(),
        total["max"].as_u64().unwrap(),
    );
    assert!(p50 >= 1 && p50 <= max, "{total}");
    assert!(stats["objpools"].as_array().is_some_and(|a| !a.is_empty()));
}

#[test]
fn openai_provider_sends_provider_key_and_upstream_model() {
    let (mock, gw) = start_pair("workers = 2");
    let body = serde_json::json!({
        "model": "up/gpt-real",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "ping"}],
        "temperature": 0.2,
    });
    let r = request(
        gw.api,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer client-key-should-not-leak")],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["choices"][0]["message"]["content"], "mock: ping");
    assert_eq!(r.header("x-deepintshield-provider"), Some("up"));
    let s = mock.stats();
    assert_eq!(s["last_authorization"], format!("Bearer {KEY}"));
    assert_eq!(s["last_model"], "gpt-real");
    assert_eq!(s["last_headers"]["x-extra"], "yes");
    // alias to the openai provider
    let r = gw.chat("fast", "via alias");
    assert_eq!(r.status, 200);
    assert_eq!(mock.stats()["last_model"], "fast-model");
}

#[test]
fn upstream_errors_pass_through_faithfully() {
    let (_mock, gw) = start_pair("workers = 2");
    let r = gw.chat("up/status-400", "x");
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].is_object());
    let r = gw.chat("up/status-503", "x");
    assert_eq!(r.status, 503);
    let s = gw.stats();
    assert_eq!(s["pools"]["up"]["counters"]["upstream_4xx"], 1);
    assert_eq!(s["pools"]["up"]["counters"]["upstream_5xx"], 1);
}

#[test]
fn upstream_down_is_a_502() {
    // Bind then drop: a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = format!(
        "{}[providers.dead]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\nkeys = [{{ key = \"env:UP_KEY\" }}]\n",
        base_config()
    );
    let gw = Gateway::start_with_env(&cfg, &[("UP_KEY", KEY)]);
    let r = gw.chat("dead/m", "x");
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_unreachable");
    assert!(!String::from_utf8_lossy(&r.body).contains(KEY));
}

/// Fire `n` concurrent chat requests; return the statuses.
fn burst(gw: &Gateway, model: &str, n: usize) -> Vec<(u16, Option<String>, String)> {
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let addr = gw.api;
            let model = model.to_string();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20 * i as u64));
                let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": "b"}]});
                let r = request(addr, "POST", "/v1/chat/completions", &[], body.to_string().as_bytes());
                let code = if r.status == 200 { String::new() } else { r.error_code() };
                (r.status, r.header("retry-after").map(str::to_string), code)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn queue_policy_drop_answers_429_with_retry_after() {
    let (_mock, gw) = start_pair(
        "workers = 1\nqueue_capacity = 1\nqueue_policy = \"drop\"\nqueue_wait_ms_max = 5000",
    );
    let results = burst(&gw, "up/delay-400", 4);
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let dropped: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert!((1..=2).contains(&ok), "{results:?}");
    assert!(!dropped.is_empty(), "{results:?}");
    assert!(
        dropped.iter().all(|r| r.1.is_some() && r.2 == "queue_full"),
        "{results:?}"
    );
    assert!(
        gw.stats()["pools"]["up"]["counters"]["dropped"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

#[test]
fn queue_policy_error_answers_503() {
    let (_mock, gw) = start_pair(
        "workers = 1\nqueue_capacity = 1\nqueue_policy = \"error\"\nqueue_wait_ms_max = 5000",
    );
    let results = burst(&gw, "up/delay-400", 4);
    assert!(
        results
            .iter()
            .any(|r| r.0 == 503 && r.2 == "provider_overloaded"),
        "{results:?}"
    );
    assert!(results.iter().any(|r| r.0 == 200), "{results:?}");
    assert!(
        results.iter().all(|r| r.0 == 200 || r.0 == 503),
        "{results:?}"
    );
}

#[test]
fn queue_policy_block_waits_for_space() {
    let (_mock, gw) = start_pair(
        "workers = 1\nqueue_capacity = 1\nqueue_policy = \"block\"\nqueue_wait_ms_max = 4000",
    );
    let results = burst(&gw, "up/delay-200", 4);
    assert!(results.iter().all(|r| r.0 == 200), "{results:?}");
    let (_mock, gw) = start_pair(
        "workers = 1\nqueue_capacity = 1\nqueue_policy = \"block\"\nqueue_wait_ms_max = 150",
    );
    let results = burst(&gw, "up/delay-600", 4);
    assert!(results.iter().any(|r| r.0 == 503), "{results:?}");
}

#[test]
fn queue_wait_expiry_is_504_without_upstream_call() {
    let (mock, gw) = start_pair(
        "workers = 1\nqueue_capacity = 4\nqueue_policy = \"drop\"\nqueue_wait_ms_max = 200",
    );
    let slow = {
        let addr = gw.api;
        std::thread::spawn(move || {
            let body = r#"{"model":"up/delay-700","messages":[{"role":"user","content":"a"}]}"#;
            request(addr, "POST", "/v1/chat/completions", &[], body.as_bytes()).status
        })
    };
    assert!(eventually(Duration::from_secs(5), || mock.stats()
        ["requests"]
        == 1));
    let r = gw.chat("up/queued", "b");
    assert_eq!(r.status, 504, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code(), "queue_timeout");
    assert_eq!(slow.join().unwrap(), 200);
    assert_eq!(
        mock.stats()["requests"],
        1,
        "the expired job must not reach the upstream"
    );
    assert_eq!(gw.stats()["pools"]["up"]["counters"]["queue_timeouts"], 1);
}

#[test]
fn request_timeout_is_504() {
    let (_mock, gw) = start_pair("workers = 2\nrequest_timeout_ms = 300\nqueue_wait_ms_max = 100");
    let t0 = Instant::now();
    let r = gw.chat("up/delay-3000", "x");
    assert_eq!(r.status, 504);
    assert_eq!(r.error_code(), "request_timeout");
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(gw.chat("up/fine", "x").status, 200);
    assert_eq!(gw.stats()["pools"]["up"]["counters"]["request_timeouts"], 1);
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (tests/run enables it)"
)]
fn worker_panic_is_a_500_and_the_worker_lives_on() {
    let cfg = format!(
        "{}[providers.mock]\ntype = \"mock\"\n[providers.mock.pool]\nworkers = 1\n",
        base_config()
    );
    let gw = Gateway::start(&cfg);
    let r = gw.chat("mock/__panic__", "x");
    assert_eq!(r.status, 500);
    assert_eq!(r.error_code(), "internal_error");
    assert!(!String::from_utf8_lossy(&r.body).contains("panic"));
    for _ in 0..3 {
        assert_eq!(gw.chat("mock/ok", "x").status, 200);
    }
    let s = gw.stats();
    assert_eq!(s["pools"]["mock"]["counters"]["panics"], 1);
    assert_eq!(s["pools"]["mock"]["workers_alive"], 1);
}

#[test]
fn bad_requests_get_clear_errors() {
    let cfg = format!(
        "{}[providers.mock]\ntype = \"mock\"\nmodels = [\"only\"]\n\n[aliases]\n\"a\" = \"mock/only\"\n",
        base_config()
    );
    let gw = Gateway::start(&cfg);
    let post = |body: &str| request(gw.api, "POST", "/v1/chat/completions", &[], body.as_bytes());
    let cases = [
        (
            r#"{"model":"nope/x","messages":[]}"#,
            404,
            "model_not_found",
        ),
        (
            r#"{"model":"mock/other","messages":[]}"#,
            404,
            "model_not_found",
        ),
        (r#"{"model":"plain","messages":[]}"#, 404, "model_not_found"),
        (r#"{"model":"a","messages":"#, 400, "invalid_json"),
        (r#"{"messages":[]}"#, 400, "missing_model"),
        (r#"{"model":"a"}"#, 400, "missing_messages"),
        ("", 400, "invalid_request_body"),
    ];
    for (body, status, code) in cases {
        let r = post(body);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (status, code),
            "{body}"
        );
        assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    }
    let deep = format!(
        r#"{{"model":"a","messages":[{}]}}"#,
        "[".repeat(5000) + &"]".repeat(5000)
    );
    let r = post(&deep);
    assert_eq!((r.status, r.error_code().as_str()), (400, "json_too_deep"));
    assert_eq!(
        request(gw.api, "GET", "/v1/chat/completions", &[], b"").status,
        405
    );
    assert_eq!(request(gw.api, "GET", "/nope", &[], b"").status, 404);
    // Protocol faults through the real binary; after each a fresh connection still works.
    let big = vec![b'x'; 17 * 1024 * 1024];
    let mut head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n",
        big.len()
    )
    .into_bytes();
    head.extend_from_slice(&big[..1024]);
    assert_eq!(raw(gw.api, &head).map(|r| r.status), Some(413));
    assert_eq!(post(r#"{"model":"a","messages":[]}"#).status, 200);
    let mut many = String::from("GET /v1/models HTTP/1.1\r\nhost: t\r\n");
    for i in 0..150 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(raw(gw.api, many.as_bytes()).map(|r| r.status), Some(431));
    let bad_cl = b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: 12x\r\n\r\n";
    assert_eq!(raw(gw.api, bad_cl).map(|r| r.status), Some(400));
    let smuggle = b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(raw(gw.api, smuggle).map(|r| r.status), Some(400));
    assert_eq!(
        raw(gw.api, b"\x16\x03\x01garbage\r\n\r\n").map(|r| r.status),
        Some(400)
    );
    assert_eq!(post(r#"{"model":"a","messages":[]}"#).status, 200);
}

#[test]
fn client_keys_are_enforced() {
    let cfg = format!(
        "{}[providers.mock]\ntype = \"mock\"\n",
        base_config().replace(
            "[server]\n",
            "[server]\nclient_keys = [\"env:GW_CLIENT_KEY\"]\n"
        )
    );
    let gw = Gateway::start_with_env(&cfg, &[("GW_CLIENT_KEY", "gw-secret-1")]);
    let body = br#"{"model":"mock/m","messages":[{"role":"user","content":"x"}]}"#;
    let r = request(gw.api, "POST", "/v1/chat/completions", &[], body);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (401, "missing_api_key")
    );
    let r = request(
        gw.api,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer wrong")],
        body,
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (401, "invalid_api_key")
    );
    assert!(!String::from_utf8_lossy(&r.body).contains("gw-secret-1"));
    let r = request(
        gw.api,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer gw-secret-1")],
        body,
    );
    assert_eq!(r.status, 200);
    let r = request(
        gw.api,
        "POST",
        "/v1/chat/completions",
        &[("x-api-key", "gw-secret-1")],
        body,
    );
    assert_eq!(r.status, 200);
    assert_eq!(request(gw.api, "GET", "/v1/models", &[], b"").status, 401);
}

#[test]
fn graceful_shutdown_finishes_in_flight_requests() {
    let (_mock, mut gw) = start_pair("workers = 2");
    let addr = gw.api;
    let in_flight = std::thread::spawn(move || {
        let body = r#"{"model":"up/delay-800","messages":[{"role":"user","content":"a"}]}"#;
        request(addr, "POST", "/v1/chat/completions", &[], body.as_bytes()).status
    });
    std::thread::sleep(Duration::from_millis(250));
    gw.proc.signal(libc::SIGTERM);
    assert_eq!(
        in_flight.join().unwrap(),
        200,
        "the in-flight request completes"
    );
    assert_eq!(gw.proc.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
}

#[test]
fn check_flag_validates_configs() {
    let good = write_config(&format!(
        "{}[providers.mock]\ntype = \"mock\"\n",
        base_config()
    ));
    let out = std::process::Command::new(gateway_bin())
        .arg("--check")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = write_config(&format!(
        "{}[providers.mock]\ntype = \"mock\"\nworkerz = 3\n",
        base_config()
    ));
    let out = std::process::Command::new(gateway_bin())
        .arg("--check")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("workerz"), "{err}");
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/config/deepintshield.toml");
    let out = std::process::Command::new(gateway_bin())
        .arg("--check")
        .arg(default)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn keep_alive_and_pipelining_through_the_gateway() {
    let cfg = format!("{}[providers.mock]\ntype = \"mock\"\n", base_config());
    let gw = Gateway::start(&cfg);
    let mut c = Conn::new(gw.api);
    let body = r#"{"model":"mock/m","messages":[{"role":"user","content":"p"}]}"#;
    let one = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    c.send(format!("{one}{one}{one}").as_bytes());
    for _ in 0..3 {
        let r = c.response().expect("pipelined response");
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["choices"][0]["message"]["content"], "mock: p");
    }
    c.send(one.as_bytes());
    assert_eq!(c.response().map(|r| r.status), Some(200));
}

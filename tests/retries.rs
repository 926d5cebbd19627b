//! Retries and key pools end to end, against a scripted upstream in the test: 429 with
//! `Retry-After` on one key, 500s then success, 400 not retried, 401 disabling a key.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as the scripted upstream saw it.
#[derive(Clone, Debug)]
struct Seen {
    key: String,
    model: String,
    at: Instant,
}

type Script = dyn Fn(&Seen, &[Seen]) -> (u16, Vec<(String, String)>) + Send + Sync;

/// A keep-alive HTTP/1.1 upstream whose answers `script` decides from the request and the
/// history of requests before it. Threads end with the test process.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    fn start(script: Box<Script>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::from(script);
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (seen, script) = (seen2.clone(), script.clone());
                std::thread::spawn(move || serve(conn, &seen, &*script));
            }
        });
        Upstream { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(mut conn: TcpStream, seen: &Mutex<Vec<Seen>>, script: &Script) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
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
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let header = |name: &str| {
            head.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                })
                .unwrap_or_default()
        };
        let len: usize = header("content-length").parse().unwrap_or(0);
        while buf.len() < head_end + len {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: serde_json::Value =
            serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or_default();
        buf.drain(..head_end + len);
        let now = Seen {
            key: header("authorization")
                .trim_start_matches("Bearer ")
                .to_string(),
            model: body["model"].as_str().unwrap_or_default().to_string(),
            at: Instant::now(),
        };
        let (status, headers) = {
            let mut history = seen.lock().unwrap();
            let answer = script(&now, &history);
            history.push(now);
            answer
        };
        let body = if status == 200 {
            r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#.to_string()
        } else {
            format!(r#"{{"error":{{"message":"scripted {status}","type":"x","code":"scripted"}}}}"#)
        };
        let mut resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            resp.push_str(&format!("{k}: {v}\r\n"));
        }
        resp.push_str("\r\n");
        resp.push_str(&body);
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn gateway(up: &Upstream, keys: &[&str], extra: &str) -> Gateway {
    let key_list: Vec<String> = (0..keys.len())
        .map(|i| format!("{{ key = \"env:K{i}\" }}"))
        .collect();
    let cfg = format!(
        "{}[providers.up]\ntype = \"openai\"\nbase_url = \"http://{}/v1\"\nkeys = [{}]\nretry_backoff_ms_initial = 50\nretry_backoff_ms_max = 200\n{extra}\n[providers.up.breaker]\nenabled = false\n",
        base_config(),
        up.addr,
        key_list.join(", ")
    );
    let env: Vec<(String, String)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (format!("K{i}"), k.to_string()))
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    Gateway::start_with_env(&cfg, &env)
}

/// Key `sk-a` is rate limited for 2 s after its first use; `sk-b` always works.
fn rate_limit_a(now: &Seen, history: &[Seen]) -> (u16, Vec<(String, String)>) {
    let first_a = history.iter().find(|s| s.key == "sk-a").map(|s| s.at);
    let limited = now.key == "sk-a"
        && first_a.is_none_or(|t| now.at.duration_since(t) < Duration::from_secs(2));
    if limited {
        (429, vec![("retry-after".into(), "2".into())])
    } else {
        (200, vec![])
    }
}

#[test]
fn a_rate_limited_key_is_skipped_for_its_retry_after() {
    let up = Upstream::start(Box::new(rate_limit_a));
    let gw = gateway(&up, &["sk-a", "sk-b"], "");
    let t0 = Instant::now();
    for _ in 0..30 {
        assert_eq!(gw.chat("up/m", "x").status, 200);
    }
    let seen = up.seen();
    let a: Vec<&Seen> = seen.iter().filter(|s| s.key == "sk-a").collect();
    // Key a was tried (and answered 429) at most once in the first 2 s; b carried the rest.
    let a_early = a
        .iter()
        .filter(|s| s.at.duration_since(t0) < Duration::from_millis(1900))
        .count();
    assert!(a_early <= 1, "{a:?}");
    assert!(seen.iter().filter(|s| s.key == "sk-b").count() >= 29);
    let keys = &gw.stats()["pools"]["up"]["key_pool"];
    let rate_limited: u64 = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["rate_limited"].as_u64().unwrap())
        .sum();
    assert_eq!(rate_limited as usize, a_early);
    assert!(!keys.to_string().contains("sk-"), "no secret in /stats");
}

#[test]
fn with_one_key_the_retry_waits_for_retry_after() {
    let up = Upstream::start(Box::new(rate_limit_a));
    let gw = gateway(
        &up,
        &["sk-a"],
        "[providers.up.pool]\nrequest_timeout_ms = 10000\nqueue_wait_ms_max = 1000",
    );
    let t0 = Instant::now();
    let r = gw.chat("up/m", "x");
    let took = t0.elapsed();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_millis(3500),
        "{took:?}"
    );
    assert_eq!(up.seen().len(), 2);
}

#[test]
fn a_retry_after_beyond_the_deadline_passes_the_429_on() {
    let up = Upstream::start(Box::new(|_, _| {
        (429, vec![("retry-after".into(), "30".into())])
    }));
    let gw = gateway(
        &up,
        &["sk-a"],
        "[providers.up.pool]\nrequest_timeout_ms = 2000\nqueue_wait_ms_max = 1000",
    );
    let t0 = Instant::now();
    let r = gw.chat("up/m", "x");
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("30"));
    assert!(
        t0.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(up.seen().len(), 1);
}

#[test]
fn server_errors_are_retried_with_backoff_and_client_errors_are_not() {
    // The first two attempts of each model fail with 500, the third succeeds.
    let up = Upstream::start(Box::new(|now, history| {
        let before = history.iter().filter(|s| s.model == now.model).count();
        match now.model.as_str() {
            "bad" => (400, vec![]),
            _ if before < 2 => (500, vec![]),
            _ => (200, vec![]),
        }
    }));
    let gw = gateway(&up, &["sk-a"], "max_retries = 2");
    let r = gw.chat("up/flaky", "x");
    assert_eq!(r.status, 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 3);
    let gap = seen[2].at.duration_since(seen[1].at);
    assert!(
        gap >= Duration::from_millis(25),
        "backoff between retries: {gap:?}"
    );
    let r = gw.chat("up/bad", "x");
    assert_eq!(r.status, 400);
    assert_eq!(
        up.seen().iter().filter(|s| s.model == "bad").count(),
        1,
        "400 is not retried"
    );
    // With retries exhausted the upstream's 500 is passed on.
    let r = gw.chat("up/other", "x");
    assert_eq!(r.status, 200, "third attempt of a fresh model succeeds");
    let gw0 = gateway(&up, &["sk-a"], "max_retries = 0");
    assert_eq!(gw0.chat("up/never-seen", "x").status, 500);
}

#[test]
fn a_rejected_key_is_disabled_and_no_usable_key_fails_fast() {
    let up = Upstream::start(Box::new(|now, _| {
        if now.key == "sk-bad" {
            (401, vec![])
        } else {
            (200, vec![])
        }
    }));
    let gw = gateway(&up, &["sk-bad", "sk-good"], "");
    let statuses: Vec<u16> = (0..20).map(|_| gw.chat("up/m", "x").status).collect();
    // At most one request met the bad key (401 passed on); every later one used the good key.
    assert!(
        statuses.iter().filter(|s| **s == 401).count() <= 1,
        "{statuses:?}"
    );
    let bad = up.seen().iter().filter(|s| s.key == "sk-bad").count();
    assert!(bad <= 1, "{bad}");
    let only_bad = gateway(&up, &["sk-bad"], "");
    assert_eq!(only_bad.chat("up/m", "x").status, 401);
    let r = only_bad.chat("up/m", "x");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "provider_keys_rejected")
    );
}

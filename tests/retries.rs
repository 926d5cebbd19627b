//! Retries, key pools and the upstream status policy end to end, against a scripted upstream in
//! the test: 429 with `Retry-After` on one key, 500s then success, 400 not retried; refusals
//! scoped to the (key, model) that earned them (403/404, a day-long `Retry-After` capped); a 401
//! disabling a key until a re-probe (`GET /models`) finds it good; `insufficient_quota` relayed at
//! once; the upstream's own answer when retries run out; secrets redacted from error bodies and
//! error events; unusable answers (2xx garbage, odd statuses) as 502.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as the scripted upstream saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    key: String,
    model: String,
    at: Instant,
}

/// What the scripted upstream answers: status, extra headers, and a body (default: a chat
/// completion for 200, an OpenAI-style error otherwise) with its content type.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Option<(String, String)>,
}

impl From<(u16, Vec<(String, String)>)> for Answer {
    fn from((status, headers): (u16, Vec<(String, String)>)) -> Answer {
        Answer {
            status,
            headers,
            body: None,
        }
    }
}

impl Answer {
    fn status(status: u16) -> Answer {
        (status, vec![]).into()
    }

    fn body(status: u16, content_type: &str, body: &str) -> Answer {
        Answer {
            status,
            headers: vec![],
            body: Some((content_type.to_string(), body.to_string())),
        }
    }
}

type Script = dyn Fn(&Seen, &[Seen]) -> Answer + Send + Sync;

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

    /// Chat requests only (not the key re-probes).
    fn chats(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == "POST")
            .collect()
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
        let mut request_line = head.split(' ');
        let now = Seen {
            method: request_line.next().unwrap_or_default().to_string(),
            path: request_line.next().unwrap_or_default().to_string(),
            key: header("authorization")
                .trim_start_matches("Bearer ")
                .to_string(),
            model: body["model"].as_str().unwrap_or_default().to_string(),
            at: Instant::now(),
        };
        let answer = {
            let mut history = seen.lock().unwrap();
            let answer = script(&now, &history);
            history.push(now);
            answer
        };
        let status = answer.status;
        let (content_type, body) = answer.body.unwrap_or_else(|| {
            let body = if status == 200 {
                r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#.to_string()
            } else {
                format!(r#"{{"error":{{"message":"scripted {status}","type":"x","code":"scripted"}}}}"#)
            };
            ("application/json".to_string(), body)
        });
        let mut resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in answer.headers {
            resp.push_str(&format!("{k}: {v}\r\n"));
        }
        resp.push_str("\r\n");
        resp.push_str(&body);
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// A gateway with provider `up` on the scripted upstream; `extra` goes in `[providers.up]`.
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
fn rate_limit_a(now: &Seen, history: &[Seen]) -> Answer {
    let first_a = history.iter().find(|s| s.key == "sk-a").map(|s| s.at);
    let limited = now.key == "sk-a"
        && first_a.is_none_or(|t| now.at.duration_since(t) < Duration::from_secs(2));
    if limited {
        (429, vec![("retry-after".into(), "2".into())]).into()
    } else {
        Answer::status(200)
    }
}

/// `/stats` of key `index` of pool `up`.
fn key_stats(gw: &Gateway, index: usize) -> serde_json::Value {
    gw.stats()["pools"]["up"]["key_pool"][index].clone()
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
        (429, vec![("retry-after".into(), "30".into())]).into()
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
            "bad" => Answer::status(400),
            _ if before < 2 => Answer::status(500),
            _ => Answer::status(200),
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
fn a_rejected_key_is_disabled_and_another_key_serves_at_once() {
    let up = Upstream::start(Box::new(|now, _| {
        Answer::status(if now.key == "sk-bad" { 401 } else { 200 })
    }));
    let gw = gateway(&up, &["sk-bad", "sk-good"], "");
    let statuses: Vec<u16> = (0..20).map(|_| gw.chat("up/m", "x").status).collect();
    // The request that met the bad key was retried on the good one; no 401 reached a client.
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let bad = up.seen().iter().filter(|s| s.key == "sk-bad").count();
    assert!(bad <= 1, "{bad}");
    // With only the bad key: its 401 is passed on, then the gateway fails fast without it.
    let only_bad = gateway(&up, &["sk-bad"], "");
    let r = only_bad.chat("up/m", "x");
    assert_eq!((r.status, r.error_code().as_str()), (401, "scripted"));
    let r = only_bad.chat("up/m", "x");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "provider_keys_rejected")
    );
}

#[test]
fn a_403_on_one_model_leaves_the_key_serving_the_others() {
    // Key a is refused model "denied" (403, as OpenAI answers for a model the project may not
    // use); key b may use it. Model "missing" exists for no key (404).
    let up = Upstream::start(Box::new(|now, _| {
        match (now.key.as_str(), now.model.as_str()) {
            ("sk-a", "denied") => Answer::status(403),
            (_, "missing") => Answer::status(404),
            _ => Answer::status(200),
        }
    }));
    let one = gateway(&up, &["sk-a"], "");
    let r = one.chat("up/denied", "x");
    assert_eq!((r.status, r.error_code().as_str()), (403, "scripted"));
    // Model B is still served by the same key, at once and every time.
    for _ in 0..5 {
        assert_eq!(one.chat("up/other", "x").status, 200);
    }
    // With no other key, model A still reaches the upstream: the client gets its own answer.
    let r = one.chat("up/denied", "x");
    assert_eq!((r.status, r.error_code().as_str()), (403, "scripted"));
    let k = key_stats(&one, 0);
    assert_eq!(k["state"], "cooling_down", "{k}");
    assert_eq!(k["forbidden"], 2, "{k}");
    assert_eq!(k["disables"], 0, "{k}");
    let marks = k["model_cooldowns"].as_array().unwrap();
    assert_eq!(marks.len(), 1, "{k}");
    assert_eq!(
        (&marks[0]["model"], &marks[0]["reason"]),
        (&"denied".into(), &"forbidden".into())
    );

    // Two keys: the 403 of key a is retried on key b at once, and later requests for that model
    // go to key b while key a keeps serving the others.
    let two = gateway(&up, &["sk-a", "sk-b"], "max_retries = 2");
    for _ in 0..10 {
        assert_eq!(two.chat("up/denied", "x").status, 200);
    }
    let denied_a = up
        .chats()
        .iter()
        .filter(|s| s.key == "sk-a" && s.model == "denied")
        .count();
    assert!(
        denied_a <= 3,
        "key a met the denied model {denied_a} times (2 from the one-key gateway)"
    );
    let before = up.chats().len();
    for _ in 0..20 {
        assert_eq!(two.chat("up/other", "x").status, 200);
    }
    let a_other = up.chats()[before..]
        .iter()
        .filter(|s| s.key == "sk-a")
        .count();
    assert!(a_other > 0, "key a still serves other models");
    // A model no key may use: the upstream's 404 comes back after one try per key.
    let before = up.chats().len();
    let r = two.chat("up/missing", "x");
    assert_eq!((r.status, r.error_code().as_str()), (404, "scripted"));
    assert_eq!(up.chats().len() - before, 2);
}

#[test]
fn a_day_long_retry_after_cools_only_that_model_and_only_for_the_cap() {
    // Model "limited" is answered 429 with Retry-After: 86400 the first time, then 200.
    let up = Upstream::start(Box::new(|now, history| {
        let before = history.iter().filter(|s| s.model == now.model).count();
        if now.model == "limited" && before == 0 {
            (429, vec![("retry-after".into(), "86400".into())]).into()
        } else {
            Answer::status(200)
        }
    }));
    let gw = gateway(
        &up,
        &["sk-a"],
        "rate_limit_cooldown_ms_max = 1000\n[providers.up.pool]\nrequest_timeout_ms = 10000",
    );
    let t0 = Instant::now();
    let r = gw.chat("up/limited", "x");
    // The upstream's wait does not fit the deadline: its 429 is passed on at once, Retry-After
    // and all.
    assert_eq!((r.status, r.error_code().as_str()), (429, "scripted"));
    assert_eq!(r.header("retry-after"), Some("86400"));
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    let k = key_stats(&gw, 0);
    let marks = k["model_cooldowns"].as_array().unwrap();
    assert_eq!(marks.len(), 1, "{k}");
    assert_eq!(marks[0]["model"], "limited");
    assert!(marks[0]["ms_left"].as_u64().unwrap() <= 1000, "{k}");
    // Another model is served by the same key at once.
    let t1 = Instant::now();
    assert_eq!(gw.chat("up/other", "x").status, 200);
    assert!(
        t1.elapsed() < Duration::from_millis(900),
        "{:?}",
        t1.elapsed()
    );
    // The limited model is back after the cap, not after a day.
    let r = gw.chat("up/limited", "x");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let limited: Vec<Instant> = up
        .chats()
        .iter()
        .filter(|s| s.model == "limited")
        .map(|s| s.at)
        .collect();
    assert_eq!(limited.len(), 2);
    let gap = limited[1].duration_since(limited[0]);
    assert!(
        gap >= Duration::from_millis(990) && gap < Duration::from_secs(5),
        "{gap:?}"
    );
}

#[test]
fn a_401_disables_the_key_until_a_reprobe_finds_it_good() {
    // The first chat is refused (401); the first re-probe too; then everything is accepted.
    let up = Upstream::start(Box::new(|now, history| {
        let before = history.iter().filter(|s| s.method == now.method).count();
        Answer::status(if before == 0 { 401 } else { 200 })
    }));
    let gw = gateway(&up, &["sk-a"], "key_disable_ms = 300");
    let r = gw.chat("up/m", "x");
    assert_eq!((r.status, r.error_code().as_str()), (401, "scripted"));
    let r = gw.chat("up/other-model", "x");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "provider_keys_rejected")
    );
    let k = key_stats(&gw, 0);
    assert_eq!(
        (&k["state"], &k["disabled_reason"]),
        (&"disabled".into(), &"unauthorized".into()),
        "{k}"
    );
    assert!(k["disabled_ms_left"].as_u64().unwrap() <= 300, "{k}");
    assert!(
        k["disabled_until_unix_ms"].as_u64().unwrap() > 1_600_000_000_000,
        "{k}"
    );
    // The re-probe after the expiry is answered 401: disabled again, for twice as long.
    assert!(eventually(Duration::from_secs(5), || {
        key_stats(&gw, 0)["disabled_reason"] == "probe_unauthorized"
    }));
    // The second re-probe is accepted: the key is back.
    assert!(eventually(Duration::from_secs(5), || key_stats(&gw, 0)
        ["state"]
        == "ok"));
    assert_eq!(gw.chat("up/m", "x").status, 200);
    let probes: Vec<Seen> = up
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET")
        .collect();
    assert_eq!(probes.len(), 2, "{probes:?}");
    assert!(probes
        .iter()
        .all(|p| p.path == "/v1/models" && p.key == "sk-a"));
    let gap = probes[1].at.duration_since(probes[0].at);
    assert!(
        gap >= Duration::from_millis(590),
        "the second disable doubled: {gap:?}"
    );
    let k = key_stats(&gw, 0);
    assert_eq!(k["probes"]["unauthorized"], 1, "{k}");
    assert_eq!(k["probes"]["accepted"], 1, "{k}");
    assert_eq!(k["disables"], 2, "{k}");
    assert_eq!(k["strikes"], 0, "a success ends the run: {k}");
    let metrics = request(gw.admin, "GET", "/metrics", &[], b"");
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("deepintshield_pool_key_disables_total{pool=\"up\",key=\"0\"} 2"),
        "{text}"
    );
    assert!(text.contains(
        "deepintshield_pool_key_probes_total{pool=\"up\",key=\"0\",result=\"accepted\"} 1"
    ));
    assert!(text.contains("deepintshield_pool_key_state{pool=\"up\",key=\"0\",state=\"ok\"} 1"));
    assert!(!text.contains("sk-a"));
}

const QUOTA_BODY: &str = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;

#[test]
fn insufficient_quota_is_relayed_at_once() {
    let up = Upstream::start(Box::new(|now, _| {
        if now.key == "sk-a" {
            let mut a = Answer::body(429, "application/json", QUOTA_BODY);
            a.headers.push(("retry-after".into(), "1".into()));
            a
        } else {
            Answer::status(200)
        }
    }));
    // Keys are picked at random: send until a request meets key a.
    let gw = gateway(&up, &["sk-a", "sk-b"], "max_retries = 2");
    let mut quota = None;
    for _ in 0..40 {
        let r = gw.chat("up/m", "x");
        if r.status == 429 {
            quota = Some(r);
            break;
        }
    }
    let r = quota.expect("a request met key a");
    assert_eq!(
        r.json(),
        serde_json::from_str::<serde_json::Value>(QUOTA_BODY).unwrap()
    );
    let chats = up.chats();
    let last = chats.last().unwrap();
    assert_eq!(last.key, "sk-a", "not retried on key b: {chats:?}");
    // For the cap, the model goes to key b only.
    let before = up.chats().len();
    for _ in 0..10 {
        assert_eq!(gw.chat("up/m", "x").status, 200);
    }
    assert!(up.chats()[before..].iter().all(|s| s.key == "sk-b"));
    let k = key_stats(&gw, 0);
    assert_eq!(k["quota_exhausted"], 1, "{k}");
    assert_eq!(k["model_cooldowns"][0]["reason"], "quota_exhausted", "{k}");
}

#[test]
fn when_retries_run_out_the_client_gets_the_upstreams_own_answer() {
    let up = Upstream::start(Box::new(|now, _| match now.model.as_str() {
        "limited" => (429, vec![("retry-after".into(), "1".into())]).into(),
        _ => Answer::status(503),
    }));
    let gw = gateway(&up, &["sk-a"], "max_retries = 1");
    let t0 = Instant::now();
    let r = gw.chat("up/limited", "x");
    assert_eq!((r.status, r.error_code().as_str()), (429, "scripted"));
    assert_eq!(r.header("retry-after"), Some("1"));
    // One retry, after the upstream's wait.
    assert_eq!(up.chats().len(), 2);
    assert!(
        t0.elapsed() >= Duration::from_millis(990),
        "{:?}",
        t0.elapsed()
    );
    let r = gw.chat("up/down", "x");
    assert_eq!((r.status, r.error_code().as_str()), (503, "scripted"));
    assert_eq!(up.chats().len(), 4);
}

const KEY: &str = "sk-proj-Zx81LkQ0vT3bBlbkFJ7Pq";
const OTHER_KEY: &str = "sk-other-9f8e7d6c5b4a3210";

#[test]
fn error_bodies_and_error_events_never_show_a_provider_key() {
    let up = Upstream::start(Box::new(|now, _| {
        let quoted = format!(
            r#"{{"error":{{"message":"Incorrect API key provided: Bearer {}; also {} and {}...","type":"invalid_request_error","code":"invalid_api_key"}}}}"#,
            now.key,
            OTHER_KEY,
            &now.key[..12]
        );
        match now.model.as_str() {
            "stream" => Answer::body(
                200,
                "text/event-stream",
                &format!(
                    "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"hi\"}}}}]}}\n\ndata: {quoted}\n\ndata: [DONE]\n\n"
                ),
            ),
            _ => Answer::body(400, "application/json", &quoted),
        }
    }));
    // A second provider's key is hidden too, though this upstream was never sent it.
    let tail = format!(
        "[providers.other]\ntype = \"openai\"\nbase_url = \"http://{}/v1\"\nkeys = [{{ key = \"env:OTHER\" }}]\n",
        up.addr
    );
    let cfg = format!(
        "{}[providers.up]\ntype = \"openai\"\nbase_url = \"http://{}/v1\"\nkeys = [{{ key = \"env:K0\" }}]\n{tail}",
        base_config(),
        up.addr,
    );
    let gw = Gateway::start_with_env(&cfg, &[("K0", KEY), ("OTHER", OTHER_KEY)]);
    let r = gw.chat("up/m", "x");
    assert_eq!(r.status, 400);
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        !body.contains("sk-proj") && !body.contains("Zx81LkQ0") && !body.contains("sk-other"),
        "{body}"
    );
    assert_eq!(
        r.json()["error"]["message"],
        "Incorrect API key provided: Bearer [REDACTED]; also [REDACTED] and [REDACTED]...",
    );
    assert_eq!(r.error_code(), "invalid_api_key");
    // The same echo inside a stream's error event.
    let mut c = Conn::new(gw.api);
    c.send(&stream_request("up/stream", "x", false));
    let s = c.sse_response().expect("stream");
    assert_eq!(s.status, 200);
    let events: Vec<&str> = s.events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events[0].contains("\"hi\""));
    assert!(
        events[1].contains("[REDACTED]") && !events[1].contains("Zx81"),
        "{}",
        events[1]
    );
    assert_eq!(events[2], "[DONE]");
}

#[test]
fn unusable_answers_are_502s() {
    let up = Upstream::start(Box::new(|now, _| match now.model.as_str() {
        "garbage" => Answer::body(200, "text/html", "<html>a captive portal</html>"),
        "json-for-stream" => Answer::status(200),
        "odd-status" => Answer::status(600),
        "switching" => Answer::status(101),
        _ => Answer::status(200),
    }));
    let gw = gateway(&up, &["sk-a"], "");
    let r = gw.chat("up/garbage", "x");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (502, "upstream_invalid_response")
    );
    let r = gw.chat("up/odd-status", "x");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (502, "upstream_invalid_status")
    );
    let r = gw.chat("up/switching", "x");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (502, "upstream_invalid_status")
    );
    let mut c = Conn::new(gw.api);
    c.send(&stream_request("up/json-for-stream", "x", false));
    let r = c.response().expect("response");
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code(), "upstream_invalid_response");
    // None of them was retried, and the gateway still serves.
    assert_eq!(up.chats().len(), 4);
    assert_eq!(gw.chat("up/fine", "x").status, 200);
}

#[test]
fn a_refused_key_or_an_unusable_answer_falls_back_to_another_provider() {
    let up = Upstream::start(Box::new(|now, _| match now.model.as_str() {
        "refused" => Answer::status(401),
        "garbage" => Answer::body(200, "text/html", "<html>a captive portal</html>"),
        _ => Answer::status(403),
    }));
    let cfg = format!(
        "{}[providers.up]\ntype = \"openai\"\nbase_url = \"http://{}/v1\"\nkeys = [{{ key = \"env:K0\" }}]\nkey_disable_ms = 60000\n[providers.mock]\ntype = \"mock\"\n[fallbacks]\n\"up/refused\" = [\"mock/x\"]\n\"up/garbage\" = [\"mock/x\"]\n\"up/denied\" = [\"mock/x\"]\n",
        base_config(),
        up.addr,
    );
    let gw = Gateway::start_with_env(&cfg, &[("K0", "sk-a")]);
    // A 403 is the answer for this model (not for this key), not a failure of the provider.
    let r = gw.chat("up/denied", "x");
    assert_eq!(
        (r.status, r.header("x-deepintshield-provider")),
        (403, Some("up"))
    );
    for model in ["up/garbage", "up/refused"] {
        let r = gw.chat(model, "x");
        assert_eq!(
            r.status,
            200,
            "{model}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            r.header("x-deepintshield-provider"),
            Some("mock"),
            "{model}"
        );
    }
}

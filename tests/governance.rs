//! Governance end to end on the real binaries: virtual keys and their outcomes in both client
//! APIs (401, 403, 429 with its headers, budgets before and during a stream), budgets counted for
//! every provider kind, hooks once per request across fallbacks, spend across a restart and a
//! SIGHUP, the ledger against the responses' own usage, hostile keys and admin calls, the CLI
//! beside a running gateway, and no secret anywhere a run leaves traces.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "adm-7f3c9e1b5d2a4c6e8f0a1b3c5d7e9f1a";
const UP_KEY: &str = "sk-upstream-8d1e5f2a9c3b7d4e6f0a";
const STATIC_KEY: &str = "static-client-key-5e8a1c3f7b9d2e4a";

/// A fresh directory for one test's database and price file.
fn test_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("gov-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Prices for the test providers: the models the tests use on `mock`, `up` and `anth` at $1000 per
/// million input and $2000 per million output tokens (cents a request); any other model (such as
/// `free-model`) has no price.
fn write_prices(dir: &Path) -> PathBuf {
    let path = dir.join("prices.toml");
    std::fs::write(
        &path,
        "[[price]]\nproviders = [\"mock\", \"up\", \"anth\"]\nmodels = [\"m\", \"a\", \"b\", \"c\", \"priced*\", \"allowed*\", \"rescue\", \"status-*\"]\ninput = 1000\noutput = 2000\n",
    )
    .unwrap();
    path
}

/// A governed gateway: the ledger and governance plugins over `dir/gov.db`, the built-in mock,
/// and when `mock` is given an `openai` provider `up` and an `anthropic` provider `anth` on it.
fn config(dir: &Path, mock: Option<&Mock>, server_extra: &str) -> String {
    let prices = write_prices(dir);
    let mut c = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nthreads = 2\n\
         shutdown_timeout_ms = 3000\nadmin_token = \"env:GOV_ADMIN\"\n{server_extra}\n\
         [stats]\nstdout_interval_ms = 0\n\n\
         [plugins]\norder = [\"ledger\", \"governance\"]\n\n\
         [store]\npath = \"{}\"\nbatch_interval_ms = 20\nkeys_poll_ms = 100\n\n\
         [prices]\npath = \"{}\"\n\n\
         [providers.mock]\ntype = \"mock\"\n",
        dir.join("gov.db").display(),
        prices.display()
    );
    if let Some(m) = mock {
        c.push_str(&format!(
            "\n[providers.up]\ntype = \"openai\"\nbase_url = \"{}\"\nkeys = [{{ key = \"env:UP_KEY\" }}]\nmax_retries = 0\n\
             [providers.up.breaker]\nenabled = false\n\n\
             [providers.anth]\ntype = \"anthropic\"\nbase_url = \"http://{}\"\nkeys = [{{ key = \"env:UP_KEY\" }}]\nmax_retries = 0\n",
            m.base_url(),
            m.addr
        ));
    }
    c
}

const ENV: [(&str, &str); 3] = [
    ("GOV_ADMIN", ADMIN_TOKEN),
    ("UP_KEY", UP_KEY),
    ("STATIC_KEY", STATIC_KEY),
];

/// `/stats`, with the admin token that the configs here set (it guards `/stats` too).
fn stats(gw: &Gateway) -> Value {
    let r = admin(gw, "GET", "/stats", &Value::Null);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// `/metrics`, with the admin token.
fn metrics(gw: &Gateway) -> String {
    let r = admin(gw, "GET", "/metrics", &Value::Null);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    String::from_utf8(r.body).expect("UTF-8 metrics")
}

fn admin(gw: &Gateway, method: &str, path: &str, body: &Value) -> Response {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    request(
        gw.admin,
        method,
        path,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        &body,
    )
}

/// Create a key through the admin API: its secret.
fn create_key(gw: &Gateway, spec: Value) -> String {
    let r = admin(gw, "POST", "/admin/keys", &spec);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["key"].as_str().unwrap().to_string()
}

/// What can be sent API requests: a gateway, or its API address (which threads can share).
trait Api {
    fn api(&self) -> std::net::SocketAddr;
}

impl Api for Gateway {
    fn api(&self) -> std::net::SocketAddr {
        self.api
    }
}

impl Api for std::net::SocketAddr {
    fn api(&self) -> std::net::SocketAddr {
        *self
    }
}

fn chat_body(model: &str, content: &str, stream: bool) -> Vec<u8> {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
    });
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    body.to_string().into_bytes()
}

fn messages_body(model: &str, content: &str, stream: bool) -> Vec<u8> {
    json!({
        "model": model,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
    })
    .to_string()
    .into_bytes()
}

/// An OpenAI chat request with `Authorization: Bearer <key>`.
fn openai(gw: &impl Api, key: &str, model: &str) -> Response {
    let auth = format!("Bearer {key}");
    request(
        gw.api(),
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        &chat_body(model, "hello governance", false),
    )
}

/// An Anthropic messages request with `x-api-key: <key>`.
fn anthropic(gw: &impl Api, key: &str, model: &str) -> Response {
    request(
        gw.api(),
        "POST",
        "/v1/messages",
        &[
            ("x-api-key", key),
            ("anthropic-version", "2023-06-01"),
            ("content-type", "application/json"),
        ],
        &messages_body(model, "hello governance", false),
    )
}

/// A streamed request in either API, read to its end: (status, events' JSON payloads).
fn stream(gw: &impl Api, key: &str, model: &str, anthropic_api: bool) -> (u16, Vec<Value>) {
    let (path, body, auth_name, auth) = if anthropic_api {
        (
            "/v1/messages",
            messages_body(model, "stream for governance please", true),
            "x-api-key",
            key.to_string(),
        )
    } else {
        (
            "/v1/chat/completions",
            chat_body(model, "stream for governance please", true),
            "authorization",
            format!("Bearer {key}"),
        )
    };
    let mut conn = Conn::new(gw.api());
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
         anthropic-version: 2023-06-01\r\n{auth_name}: {auth}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    if !anthropic_api {
        req = req.replace("anthropic-version: 2023-06-01\r\n", "");
    }
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(&body);
    conn.send(&bytes);
    let r = conn.sse_response().expect("a response");
    let events = r
        .events
        .iter()
        .filter_map(|(e, _)| {
            let data = e
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap_or(e);
            serde_json::from_str(data).ok()
        })
        .collect();
    (r.status, events)
}

/// Input and output tokens a whole answer reports, in either API.
fn usage_of(body: &Value) -> (u64, u64) {
    let u = &body["usage"];
    if let Some(p) = u["prompt_tokens"].as_u64() {
        return (p, u["completion_tokens"].as_u64().unwrap_or(0));
    }
    let input = u["input_tokens"].as_u64().unwrap_or(0)
        + u["cache_read_input_tokens"].as_u64().unwrap_or(0)
        + u["cache_creation_input_tokens"].as_u64().unwrap_or(0);
    (input, u["output_tokens"].as_u64().unwrap_or(0))
}

/// Input and output tokens a stream reports, in either API.
fn stream_usage(events: &[Value]) -> (u64, u64) {
    let (mut input, mut output) = (0, 0);
    for e in events {
        if let Some(p) = e["usage"]["prompt_tokens"].as_u64() {
            input = p;
            output = e["usage"]["completion_tokens"].as_u64().unwrap_or(0);
        }
        if e["type"] == "message_start" {
            let (i, _) = usage_of(&e["message"]);
            input = i;
        }
        if e["type"] == "message_delta" {
            output = e["usage"]["output_tokens"].as_u64().unwrap_or(output);
            if let Some(i) = e["usage"]["input_tokens"].as_u64() {
                input = i
                    + e["usage"]["cache_read_input_tokens"].as_u64().unwrap_or(0)
                    + e["usage"]["cache_creation_input_tokens"]
                        .as_u64()
                        .unwrap_or(0);
            }
        }
    }
    (input, output)
}

/// The usage report (the admin API flushes the ledger before it reads).
fn usage(gw: &Gateway, query: &str) -> Value {
    let r = admin(gw, "GET", &format!("/admin/usage?{query}"), &Value::Null);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn live_spend_usd(gw: &Gateway, key: &str) -> f64 {
    let r = admin(gw, "GET", &format!("/admin/keys/{key}"), &Value::Null);
    assert_eq!(r.status, 200);
    r.json()["live"]["spend"]["day"]["usd"].as_f64().unwrap()
}

#[test]
fn each_outcome_in_both_client_apis() {
    let dir = test_dir("outcomes");
    let gw = Gateway::start_with_env(&config(&dir, None, ""), &ENV);
    let key = create_key(
        &gw,
        json!({"name": "app", "models": ["mock/allowed*"], "rpm": 2, "tpm": 100000}),
    );

    // No key, an unknown key: 401 in each API's shape.
    let r = request(
        gw.api,
        "POST",
        "/v1/chat/completions",
        &[],
        &chat_body("mock/allowed", "x", false),
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (401, "missing_api_key")
    );
    let r = anthropic(&gw, "dis-unknown", "mock/allowed");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    assert_eq!(r.json()["type"], "error");

    // A model the key may not use: 403.
    let r = openai(&gw, &key, "mock/other");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "model_not_allowed")
    );
    let r = anthropic(&gw, &key, "mock/other");
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["type"], "permission_error");

    // Two requests a minute: the third is 429 with Retry-After and the rate-limit headers.
    assert_eq!(openai(&gw, &key, "mock/allowed").status, 200);
    assert_eq!(anthropic(&gw, &key, "mock/allowed").status, 200);
    for r in [
        openai(&gw, &key, "mock/allowed"),
        anthropic(&gw, &key, "mock/allowed"),
    ] {
        assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("2"));
        assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
        assert!(r.header("x-ratelimit-reset-requests").is_some());
        assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("100000"));
        assert!(r.header("x-ratelimit-remaining-tokens").is_some());
        assert!(r.header("x-ratelimit-reset-tokens").is_some());
    }
    let r = openai(&gw, &key, "mock/allowed");
    assert_eq!(r.error_code(), "rate_limit_exceeded");
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    let r = anthropic(&gw, &key, "mock/allowed");
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");

    // A budget spent: 429 budget_exceeded, naming the budget and when it resets.
    let budgeted = create_key(&gw, json!({"name": "budgeted", "budget_usd": "0.001/day"}));
    assert_eq!(openai(&gw, &budgeted, "mock/m").status, 200);
    let r = openai(&gw, &budgeted, "mock/m");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (429, "budget_exceeded")
    );
    assert_eq!(r.json()["error"]["type"], "insufficient_quota");
    assert_eq!(r.header("x-should-retry"), Some("false"));
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("USD budget of key \"budgeted\"") && message.contains("resets at"),
        "{message}"
    );
    let r = anthropic(&gw, &budgeted, "mock/m");
    assert_eq!(r.status, 429);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("budget"));

    // A disabled key, a key that refuses models without a price.
    let r = admin(&gw, "POST", "/admin/keys/app/disable", &Value::Null);
    assert_eq!(r.status, 200);
    let r = openai(&gw, &key, "mock/allowed");
    assert_eq!((r.status, r.error_code().as_str()), (401, "key_disabled"));
    let careful = create_key(
        &gw,
        json!({"name": "careful", "budget_usd": "10/month", "refuse_unknown_cost": true}),
    );
    let r = openai(&gw, &careful, "mock/free-model");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "model_cost_unknown")
    );
    assert_eq!(openai(&gw, &careful, "mock/priced").status, 200);
}

#[test]
fn a_budget_spent_during_a_stream_lets_it_finish_and_refuses_the_next() {
    let dir = test_dir("stream-budget");
    let gw = Gateway::start_with_env(&config(&dir, None, ""), &ENV);
    for anthropic_api in [false, true] {
        let name = format!("streamer-{anthropic_api}");
        // One answer costs more than the whole budget.
        let key = create_key(&gw, json!({"name": name, "budget_usd": "0.001/day"}));
        let (status, events) = stream(&gw, &key, "mock/m", anthropic_api);
        assert_eq!(status, 200);
        let (input, output) = stream_usage(&events);
        assert!(input > 0 && output > 0, "{events:?}");
        let last = events.last().unwrap();
        if anthropic_api {
            assert_eq!(last["type"], "message_stop", "the stream finished");
        }
        assert!(events.iter().all(|e| e.get("error").is_none()));
        // The spend went past the budget: the next request, streamed or not, is refused.
        let (status, events) = stream(&gw, &key, "mock/m", anthropic_api);
        assert_eq!(status, 429, "{events:?}");
        let r = openai(&gw, &key, "mock/m");
        assert_eq!(r.error_code(), "budget_exceeded");
    }
}

#[test]
fn budgets_count_every_provider_kind_streamed_or_not() {
    let mock = Mock::start(&[]);
    let dir = test_dir("kinds");
    let gw = Gateway::start_with_env(&config(&dir, Some(&mock), ""), &ENV);
    for (provider, model) in [("mock", "mock/m"), ("up", "up/m"), ("anth", "anth/m")] {
        for anthropic_api in [false, true] {
            for streamed in [false, true] {
                let name = format!("{provider}-{anthropic_api}-{streamed}");
                let key = create_key(&gw, json!({"name": name, "budget_usd": "100/day"}));
                let (input, output) = if streamed {
                    let (status, events) = stream(&gw, &key, model, anthropic_api);
                    assert_eq!(status, 200, "{name}: {events:?}");
                    stream_usage(&events)
                } else {
                    let r = if anthropic_api {
                        anthropic(&gw, &key, model)
                    } else {
                        openai(&gw, &key, model)
                    };
                    assert_eq!(
                        r.status,
                        200,
                        "{name}: {}",
                        String::from_utf8_lossy(&r.body)
                    );
                    usage_of(&r.json())
                };
                assert!(input > 0 && output > 0, "{name}");
                let expected = (input * 1000 + output * 2000) as f64 / 1e6;
                let spent = live_spend_usd(&gw, &name);
                assert!(
                    (spent - expected).abs() < 1e-9,
                    "{name}: {spent} != {expected}"
                );
            }
        }
    }
}

#[test]
fn hooks_run_once_per_request_across_fallbacks() {
    let mock = Mock::start(&[]);
    let dir = test_dir("fallbacks");
    let gw = Gateway::start_with_env(&config(&dir, Some(&mock), ""), &ENV);
    let key = create_key(&gw, json!({"name": "fb", "rpm": 2}));
    let body = json!({
        "model": "up/status-500",
        "messages": [{"role": "user", "content": "x"}],
        "fallbacks": ["mock/rescue"],
    })
    .to_string();
    let auth = format!("Bearer {key}");
    let send = |body: &str, auth: &str| {
        request(
            gw.api,
            "POST",
            "/v1/chat/completions",
            &[
                ("authorization", auth),
                ("content-type", "application/json"),
            ],
            body.as_bytes(),
        )
    };
    // Two requests, each failing on `up` and answered by `mock`: one request each against the
    // limit of two, not two attempts each.
    for _ in 0..2 {
        let r = send(&body, &auth);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("x-deepintshield-provider"), Some("mock"));
    }
    assert_eq!(send(&body, &auth).status, 429);
    // One ledger row per request, against the route that answered.
    let u = usage(&gw, "group_by=key,provider,model");
    let rows: Vec<(String, String, u64)> = u["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["provider"].as_str().unwrap().to_string(),
                g["model"].as_str().unwrap().to_string(),
                g["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        rows.contains(&("mock".into(), "rescue".into(), 2)),
        "{rows:?}"
    );
    assert!(
        rows.contains(&("up".into(), "status-500".into(), 1)),
        "{rows:?}"
    );
    // Pre-hooks timed against the primary's pool, post-hooks against the pool that answered.
    let s = stats(&gw);
    let up = &s["pools"]["up"]["plugins"]["governance"];
    assert_eq!(up["pre_us"]["count"], 3, "{up}");
    assert_eq!(up["rejected"], 1);
    assert_eq!(
        s["pools"]["mock"]["plugins"]["ledger"]["post_us"]["count"],
        2
    );

    // A fallback the key may not use is never tried: the primary's answer comes back.
    let narrow = create_key(&gw, json!({"name": "narrow", "models": ["up/*"]}));
    let r = send(&body, &format!("Bearer {narrow}"));
    assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-deepintshield-provider"), Some("up"));
}

#[test]
fn spend_survives_a_restart_and_a_reload() {
    let dir = test_dir("persist");
    let toml = config(&dir, None, "");
    let mut gw = Gateway::start_with_env(&toml, &ENV);
    let key = create_key(
        &gw,
        json!({"name": "persist", "budget_usd": "0.00005/month"}),
    );
    let mut spent = 0.0;
    while openai(&gw, &key, "mock/m").status == 200 {
        spent = live_spend_usd(&gw, "persist");
        assert!(spent < 1.0, "the budget never bound");
    }
    assert!(spent >= 0.00005, "{spent}");
    let before = usage(&gw, "group_by=key");
    gw.proc.signal(libc::SIGTERM);
    assert_eq!(gw.proc.wait_exit(Duration::from_secs(10)), Some(0));

    // A new process on the same database: the spend is rebuilt from the ledger.
    let gw = Gateway::start_with_env(&toml, &ENV);
    assert_eq!(usage(&gw, "group_by=key")["groups"], before["groups"]);
    assert!((live_spend_usd(&gw, "persist") - spent).abs() < 1e-12);
    assert_eq!(openai(&gw, &key, "mock/m").error_code(), "budget_exceeded");

    // A reload keeps the counters.
    gw.reload_with(&toml);
    assert!(eventually(IO_TIMEOUT, || stats(&gw)["service"]
        ["reloads_ok"]
        == 1));
    assert_eq!(openai(&gw, &key, "mock/m").error_code(), "budget_exceeded");
    assert!((live_spend_usd(&gw, "persist") - spent).abs() < 1e-12);
}

#[test]
fn the_ledger_matches_the_usage_of_thousands_of_mixed_requests() {
    let mock = Mock::start(&[]);
    let dir = test_dir("ledger");
    let gw = Gateway::start_with_env(&config(&dir, Some(&mock), ""), &ENV);
    let keys: Vec<String> = (0..4)
        .map(|i| create_key(&gw, json!({"name": format!("k{i}")})))
        .collect();
    const THREADS: usize = 4;
    const PER_THREAD: usize = 600;
    let models = ["mock/a", "up/b", "anth/c"];
    let totals = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (gw, key, models) = (gw.api, &keys[t], &models);
                s.spawn(move || {
                    let mut sums: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
                    for i in 0..PER_THREAD {
                        let model = models[i % models.len()];
                        let anthropic_api = i % 2 == 0;
                        let (input, output) = if i % 5 == 0 {
                            let (status, events) = stream(&gw, key, model, anthropic_api);
                            assert_eq!(status, 200);
                            stream_usage(&events)
                        } else {
                            let r = if anthropic_api {
                                anthropic(&gw, key, model)
                            } else {
                                openai(&gw, key, model)
                            };
                            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                            usage_of(&r.json())
                        };
                        let e = sums.entry(model).or_default();
                        *e = (e.0 + 1, e.1 + input, e.2 + output);
                    }
                    sums
                })
            })
            .collect();
        let mut totals: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
        for h in handles {
            for (m, (n, i, o)) in h.join().unwrap() {
                let e = totals.entry(m).or_default();
                *e = (e.0 + n, e.1 + i, e.2 + o);
            }
        }
        totals
    });
    let report = usage(&gw, "group_by=provider,model");
    let mut ledger: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    let mut cost_nusd = 0;
    for g in report["groups"].as_array().unwrap() {
        let name = format!(
            "{}/{}",
            g["provider"].as_str().unwrap(),
            g["model"].as_str().unwrap()
        );
        let n = |f: &str| g[f].as_u64().unwrap();
        ledger.insert(name, (n("requests"), n("input_tokens"), n("output_tokens")));
        cost_nusd += n("cost_nusd");
    }
    let expected: BTreeMap<String, (u64, u64, u64)> =
        totals.iter().map(|(m, v)| (m.to_string(), *v)).collect();
    assert_eq!(ledger, expected);
    let (input, output) = expected
        .values()
        .fold((0, 0), |(i, o), v| (i + v.1, o + v.2));
    assert_eq!(cost_nusd, input * 1_000_000 + output * 2_000_000);
    let s = stats(&gw);
    assert_eq!(s["governance"]["ledger"]["dropped"], 0);
    assert_eq!(
        s["governance"]["ledger"]["written"],
        (THREADS * PER_THREAD) as u64
    );
}

#[test]
fn hostile_keys_and_admin_calls_are_refused() {
    let dir = test_dir("hostile");
    let gw = Gateway::start_with_env(&config(&dir, None, ""), &ENV);
    let key = create_key(&gw, json!({"name": "real"}));
    assert_eq!(openai(&gw, &key, "mock/m").status, 200);
    let forged = format!("dis-{}", "A".repeat(43));
    let truncated = &key[..key.len() - 1];
    let longer = format!("{key}x");
    let prefix_only = &key[..10];
    for bad in [
        forged.as_str(),
        truncated,
        &longer,
        prefix_only,
        "dis-",
        "bearer",
    ] {
        let r = openai(&gw, bad, "mock/m");
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (401, "invalid_api_key"),
            "{bad}"
        );
    }
    // The key in a header it is not read from, or without the Bearer scheme.
    let body = chat_body("mock/m", "x", false);
    let basic = format!("Basic {key}");
    let wrong: [(&str, &str); 4] = [
        ("authorization", &key),
        ("authorization", &basic),
        ("x-auth-token", &key),
        ("cookie", &key),
    ];
    for (name, value) in wrong {
        let r = request(
            gw.api,
            "POST",
            "/v1/chat/completions",
            &[(name, value)],
            &body,
        );
        assert_eq!(r.status, 401, "{name}");
    }
    let path = format!("/v1/chat/completions?api_key={key}");
    assert_eq!(request(gw.api, "POST", &path, &[], &body).status, 401);
    // Azure clients' header is read.
    let r = request(
        gw.api,
        "POST",
        "/v1/chat/completions",
        &[("api-key", &key)],
        &body,
    );
    assert_eq!(r.status, 200);

    // Admin calls without the token, with a wrong one, with it in the wrong header, or with the
    // API's client key.
    let wrong_admin = [
        vec![],
        vec![("authorization", "Bearer not-the-token".to_string())],
        vec![("x-api-key", ADMIN_TOKEN.to_string())],
        vec![("authorization", ADMIN_TOKEN.to_string())],
        vec![("authorization", format!("Bearer {key}"))],
    ];
    for headers in wrong_admin {
        let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        for (method, path) in [
            ("GET", "/admin/keys"),
            ("POST", "/admin/keys"),
            ("GET", "/admin/usage"),
            ("DELETE", "/admin/keys/real"),
        ] {
            let r = request(gw.admin, method, path, &h, b"{\"name\":\"x\"}");
            assert_eq!(r.status, 401, "{method} {path} {h:?}");
        }
    }
    assert_eq!(
        openai(&gw, &key, "mock/m").status,
        200,
        "nothing was deleted"
    );

    // Names that look like SQL are names.
    for name in [
        "x'); DROP TABLE keys; --",
        "\" OR 1=1 --",
        "robert'); DELETE FROM usage;",
    ] {
        let k = create_key(&gw, json!({"name": name}));
        assert_eq!(openai(&gw, &k, "mock/m").status, 200);
        let shown = admin(
            &gw,
            "GET",
            &format!("/admin/keys/{}", encode(name)),
            &Value::Null,
        );
        assert_eq!(shown.json()["record"]["name"], name);
    }
    let list = admin(&gw, "GET", "/admin/keys", &Value::Null).json();
    assert_eq!(list["keys"].as_array().unwrap().len(), 4);
    let u = usage(&gw, "group_by=key");
    assert_eq!(u["groups"].as_array().unwrap().len(), 4);
    // A name of digits only would be read as an id: refused; a name taken: 409.
    let r = admin(&gw, "POST", "/admin/keys", &json!({"name": "42"}));
    assert_eq!(r.status, 400);
    let r = admin(&gw, "POST", "/admin/keys", &json!({"name": "real"}));
    assert_eq!((r.status, r.error_code().as_str()), (409, "conflict"));
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn the_cli_manages_keys_beside_a_running_gateway() {
    let dir = test_dir("cli");
    let db = dir.join("gov.db");
    let gw = Gateway::start_with_env(&config(&dir, None, ""), &ENV);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(gateway_bin())
            .args(args)
            .args(["--db", db.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = cli(&[
        "keys",
        "create",
        "--name",
        "ci",
        "--budget-usd",
        "50/month",
        "--rpm",
        "600",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let key = out.lines().next().unwrap().to_string();
    assert!(key.starts_with("dis-") && key.len() == 47, "{out}");
    // The running gateway picks the key up within keys_poll_ms.
    assert!(eventually(IO_TIMEOUT, || openai(&gw, &key, "mock/m")
        .status
        == 200));
    let (code, out, _) = cli(&["keys", "list"]);
    assert_eq!(code, Some(0));
    assert!(out.contains(" ci ") && out.contains("$50.00/month") && !out.contains(&key));
    assert_eq!(cli(&["keys", "disable", "ci"]).0, Some(0));
    assert!(eventually(IO_TIMEOUT, || openai(&gw, &key, "mock/m")
        .status
        == 401));
    let (code, out, _) = cli(&["keys", "rotate", "ci"]);
    assert_eq!(code, Some(0));
    let rotated = out.lines().next().unwrap().to_string();
    assert_ne!(rotated, key);
    assert_eq!(cli(&["keys", "enable", "ci"]).0, Some(0));
    assert!(eventually(IO_TIMEOUT, || openai(&gw, &rotated, "mock/m")
        .status
        == 200));
    assert_eq!(
        openai(&gw, &key, "mock/m").status,
        401,
        "the old key is gone"
    );
    let (code, csv, _) = cli(&["usage", "--group-by", "key", "--format", "csv"]);
    assert_eq!(code, Some(0));
    assert!(csv.starts_with("key,requests,"), "{csv}");
    assert_eq!(cli(&["keys", "frobnicate"]).0, Some(2));
    assert_eq!(cli(&["keys", "show", "nobody"]).0, Some(1));
    let (code, hash, _) = {
        let mut child = std::process::Command::new(gateway_bin())
            .arg("hash-key")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"abc\n").unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            (),
        )
    };
    assert_eq!(code, Some(0));
    assert_eq!(
        hash.trim(),
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn authentication_is_only_off_when_the_config_says_so() {
    // No key source and no `auth`: the gateway refuses to start, and --check says why.
    let dir = test_dir("authoff");
    let path = dir.join("open.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[providers.mock]\ntype = \"mock\"\n",
    )
    .unwrap();
    for args in [vec!["--config"], vec!["--check"]] {
        let out = std::process::Command::new(gateway_bin())
            .args(&args)
            .arg(&path)
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(0));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("server.auth"), "{err}");
    }
    // Static keys: hashes accepted, plain references deprecated with a warning.
    let hash = {
        let digest = ring_free_sha256(STATIC_KEY.as_bytes());
        format!("sha256:{digest}")
    };
    let toml = format!(
        "{}[providers.mock]\ntype = \"mock\"\n",
        base_config().replace(
            "[server]\n",
            &format!("[server]\nclient_keys = [\"{hash}\", \"env:STATIC_KEY\"]\n")
        )
    );
    let (gw, log) = Gateway::start_logged(&toml, &ENV);
    assert!(log
        .wait_for(IO_TIMEOUT, |l| l.contains("plain-text keys")
            && l.contains("deprecated"))
        .is_some());
    assert_eq!(openai(&gw, STATIC_KEY, "mock/m").status, 200);
    assert_eq!(openai(&gw, "wrong", "mock/m").status, 401);
    // Switched off on a listener other machines reach: a warning.
    let open = "[server]\nlisten = \"0.0.0.0:0\"\nadmin_listen = \"127.0.0.1:0\"\nthreads = 2\nauth = \"off\"\n[stats]\nstdout_interval_ms = 0\n[providers.mock]\ntype = \"mock\"\n";
    let (_gw, log) = Gateway::start_logged(open, &ENV);
    assert!(log
        .wait_for(IO_TIMEOUT, |l| l.contains("client authentication is off"))
        .is_some());
}

/// SHA-256 in hex, by the system's `sha256sum` (the test does not link ring itself).
fn ring_free_sha256(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

#[test]
fn no_secret_in_logs_stats_metrics_the_ledger_or_error_bodies() {
    let mock = Mock::start(&[]);
    let dir = test_dir("secrets");
    let toml = config(&dir, Some(&mock), "client_keys = [\"env:STATIC_KEY\"]\n");
    let (gw, log) = Gateway::start_logged(&toml, &ENV);
    let key = create_key(
        &gw,
        json!({"name": "leaky", "rpm": 5, "models": ["up/*", "anth/*", "mock/*"]}),
    );
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    for model in [
        "up/m",
        "anth/m",
        "mock/m",
        "up/status-401",
        "anth/status-403",
        "other/x",
    ] {
        for k in [key.as_str(), STATIC_KEY] {
            bodies.push(openai(&gw, k, model).body);
            bodies.push(anthropic(&gw, k, model).body);
        }
    }
    let (_, events) = stream(&gw, &key, "up/m", false);
    bodies.push(serde_json::to_vec(&events).unwrap());
    bodies.push(openai(&gw, &format!("{key}x"), "up/m").body);
    let rotated = admin(&gw, "POST", "/admin/keys/leaky/rotate", &Value::Null);
    let new_key = rotated.json()["key"].as_str().unwrap().to_string();
    bodies.push(openai(&gw, &new_key, "up/m").body);
    bodies.push(admin(&gw, "GET", "/admin/keys", &Value::Null).body);
    bodies.push(admin(&gw, "GET", "/admin/keys/leaky", &Value::Null).body);
    bodies.push(
        admin(
            &gw,
            "GET",
            "/admin/usage?group_by=key,model&format=csv",
            &Value::Null,
        )
        .body,
    );
    bodies.push(admin(&gw, "GET", "/stats", &Value::Null).body);
    bodies.push(metrics(&gw).into_bytes());
    gw.proc.signal(libc::SIGTERM);
    let mut gw = gw;
    assert_eq!(gw.proc.wait_exit(Duration::from_secs(10)), Some(0));
    let mut files: Vec<(String, Vec<u8>)> =
        vec![("log".into(), log.lines().join("\n").into_bytes())];
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.to_string_lossy().contains("gov.db") {
            files.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    for (i, b) in bodies.into_iter().enumerate() {
        files.push((format!("body {i}"), b));
    }
    let secrets = [
        key.as_str(),
        new_key.as_str(),
        STATIC_KEY,
        UP_KEY,
        ADMIN_TOKEN,
    ];
    for (what, bytes) in &files {
        for s in secrets {
            assert!(
                find(bytes, s.as_bytes()).is_none(),
                "a secret ({}...) in {what}",
                &s[..6]
            );
        }
    }
    assert!(files.len() > 20);
}

#[test]
fn a_team_limits_and_budgets_every_key_in_it() {
    let dir = test_dir("teams");
    let gw = Gateway::start_with_env(&config(&dir, None, ""), &ENV);
    let r = admin(
        &gw,
        "POST",
        "/admin/teams",
        &json!({"name": "ml", "rpm": 2}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let a = create_key(&gw, json!({"name": "ml-a", "team": "ml"}));
    let b = create_key(&gw, json!({"name": "ml-b", "team": "ml"}));
    assert_eq!(openai(&gw, &a, "mock/m").status, 200);
    assert_eq!(openai(&gw, &b, "mock/m").status, 200);
    // Each key is within its own (absent) limit; the team's two a minute bind both.
    let r = openai(&gw, &a, "mock/m");
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-ratelimit-scope"), Some("team"));
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("team \"ml\""));
    // A team budget: spent by one key, it refuses the other.
    let r = admin(
        &gw,
        "POST",
        "/admin/teams",
        &json!({"name": "small", "budget_usd": "0.001/day"}),
    );
    assert_eq!(r.status, 201);
    let c = create_key(&gw, json!({"name": "small-c", "team": "small"}));
    let d = create_key(&gw, json!({"name": "small-d", "team": "small"}));
    assert_eq!(openai(&gw, &c, "mock/m").status, 200);
    let r = openai(&gw, &d, "mock/m");
    assert_eq!(r.error_code(), "budget_exceeded");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("team \"small\""));
    // A disabled team refuses its keys.
    assert_eq!(
        admin(&gw, "POST", "/admin/teams/ml/disable", &Value::Null).status,
        200
    );
    assert_eq!(openai(&gw, &b, "mock/m").error_code(), "team_disabled");
    let u = usage(&gw, "group_by=team");
    let teams: Vec<&str> = u["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["team"].as_str().unwrap())
        .collect();
    assert_eq!(teams, ["ml", "small"]);
}

#[test]
fn prices_are_read_again_on_sighup_and_unknown_models_are_counted() {
    let dir = test_dir("prices");
    let toml = config(&dir, None, "");
    let gw = Gateway::start_with_env(&toml, &ENV);
    let key = create_key(&gw, json!({"name": "p"}));
    let r = openai(&gw, &key, "mock/m");
    let (input, output) = usage_of(&r.json());
    let first = live_spend_usd(&gw, "p");
    assert!((first - (input * 1000 + output * 2000) as f64 / 1e6).abs() < 1e-12);
    // Ten times the price, from the next request on.
    std::fs::write(
        dir.join("prices.toml"),
        "[[price]]\nproviders = [\"mock\"]\nmodels = [\"m\"]\ninput = 10000\noutput = 20000\n",
    )
    .unwrap();
    gw.reload_with(&toml);
    assert!(eventually(IO_TIMEOUT, || stats(&gw)["service"]
        ["reloads_ok"]
        == 1));
    let r = openai(&gw, &key, "mock/m");
    let (input, output) = usage_of(&r.json());
    let second = live_spend_usd(&gw, "p") - first;
    assert!((second - (input * 10_000 + output * 20_000) as f64 / 1e6).abs() < 1e-12);
    // A price file that does not parse fails the reload and keeps the table.
    std::fs::write(dir.join("prices.toml"), "[[price]]\nmodels = 3\n").unwrap();
    gw.reload_with(&toml);
    assert!(eventually(IO_TIMEOUT, || stats(&gw)["service"]
        ["reloads_failed"]
        == 1));
    // A model without a price is "cost unknown", never $0.
    let before = live_spend_usd(&gw, "p");
    assert_eq!(openai(&gw, &key, "mock/unpriced").status, 200);
    assert_eq!(live_spend_usd(&gw, "p"), before);
    let u = usage(&gw, "group_by=model");
    let unpriced = u["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["model"] == "unpriced")
        .cloned()
        .unwrap();
    assert_eq!(unpriced["cost_unknown_requests"], 1);
    assert_eq!(stats(&gw)["governance"]["counters"]["cost_unknown"], 1);
    let metrics = metrics(&gw);
    assert!(
        metrics.contains("deepintshield_governance_cost_unknown_total 1\n"),
        "{metrics}"
    );
}

#[test]
fn a_key_lists_and_describes_only_the_models_it_may_use() {
    let mock = Mock::start(&[]);
    let dir = test_dir("models");
    let cfg = config(&dir, Some(&mock), "")
        .replace(
            "[providers.mock]\ntype = \"mock\"\n",
            "[providers.mock]\ntype = \"mock\"\nmodels = [\"a\", \"b\"]\n",
        )
        .replace(
            "[providers.up]\ntype = \"openai\"\n",
            "[providers.up]\ntype = \"openai\"\nmodels = [\"m\"]\n",
        );
    let gw = Gateway::start_with_env(&cfg, &ENV);
    let narrow = create_key(&gw, json!({"name": "narrow", "models": ["mock/a"]}));
    let wide = create_key(&gw, json!({"name": "wide"}));
    let get = |key: &str, path: &str, anthropic: bool| {
        let auth = format!("Bearer {key}");
        let mut headers = vec![("authorization", auth.as_str())];
        if anthropic {
            headers.push(("anthropic-version", "2023-06-01"));
        }
        request(gw.api, "GET", path, &headers, b"")
    };
    let ids = |r: Response| -> Vec<String> {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(get(&narrow, "/v1/models", false)), ["mock/a"]);
    assert_eq!(ids(get(&narrow, "/v1/models", true)), ["mock/a"]);
    let all = ids(get(&wide, "/v1/models", false));
    assert!(
        ["mock/a", "mock/b", "up/m"]
            .iter()
            .all(|m| all.contains(&m.to_string())),
        "{all:?}"
    );
    // One model: the allowed one is described, the others are as if they did not exist.
    assert_eq!(get(&narrow, "/v1/models/mock/a", false).status, 200);
    for path in ["/v1/models/mock/b", "/v1/models/up/m"] {
        let r = get(&narrow, path, false);
        assert_eq!(
            (r.status, r.error_code()),
            (404, "model_not_found".into()),
            "{path}"
        );
        assert_eq!(get(&wide, path, false).status, 200, "{path}");
    }
    // Without a key: 401, as for every API request.
    assert_eq!(request(gw.api, "GET", "/v1/models", &[], b"").status, 401);
}

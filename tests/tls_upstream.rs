//! HTTPS to a provider: the gateway verifies the upstream's certificate (rustls), trusts a
//! provider's own `ca_file`, and refuses an upstream it cannot verify.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A one-thread HTTPS server on loopback answering every request with a fixed chat completion,
/// recording the Authorization header it saw. Runs until the test process ends.
struct TlsUpstream {
    port: u16,
    cert_pem: String,
    handshakes_ok: Arc<AtomicUsize>,
    last_auth: Arc<std::sync::Mutex<String>>,
}

fn start_tls_upstream() -> TlsUpstream {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let cert_der = ck.cert.der().clone();
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert_der], key_der)
    .expect("server config");
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let handshakes_ok = Arc::new(AtomicUsize::new(0));
    let last_auth = Arc::new(std::sync::Mutex::new(String::new()));
    let (ok, auth) = (handshakes_ok.clone(), last_auth.clone());
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let (config, ok, auth) = (config.clone(), ok.clone(), auth.clone());
            std::thread::spawn(move || serve_tls(tcp, config, ok, auth));
        }
    });
    TlsUpstream {
        port,
        cert_pem: ck.cert.pem(),
        handshakes_ok,
        last_auth,
    }
}

/// Serve keep-alive requests on one TLS connection until the client closes or fails the handshake.
fn serve_tls(
    tcp: std::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
    ok: Arc<AtomicUsize>,
    auth: Arc<std::sync::Mutex<String>>,
) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break Some(i + 4);
            }
            match tls.read(&mut chunk) {
                Ok(0) | Err(_) => break None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let Some(head_end) = head_end else { break };
        ok.fetch_add(1, Ordering::SeqCst);
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if let Some(a) = String::from_utf8_lossy(&buf[..head_end])
            .lines()
            .find_map(|l| {
                l.strip_prefix("authorization: ")
                    .or_else(|| l.strip_prefix("Authorization: "))
            })
        {
            *auth.lock().unwrap() = a.to_string();
        }
        while buf.len() < head_end + len {
            match tls.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..(head_end + len).min(buf.len()));
        let body = r#"{"id":"chatcmpl-tls","object":"chat.completion","created":1,"model":"tls-model","choices":[{"index":0,"message":{"role":"assistant","content":"over tls"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if tls
            .write_all(resp.as_bytes())
            .and_then(|_| tls.flush())
            .is_err()
        {
            break;
        }
    }
}

fn gateway_for(up: &TlsUpstream, ca_file: Option<&std::path::Path>) -> Gateway {
    let ca = ca_file.map_or(String::new(), |p| {
        format!("ca_file = \"{}\"\n", p.display())
    });
    let cfg = format!(
        "{}[providers.secure]\ntype = \"openai\"\nbase_url = \"https://localhost:{}/v1\"\nkeys = [{{ key = \"env:TLS_KEY\" }}]\n{ca}",
        base_config(),
        up.port
    );
    Gateway::start_with_env(&cfg, &[("TLS_KEY", "sk-tls-secret")])
}

#[test]
fn https_upstream_with_its_ca_file() {
    let up = start_tls_upstream();
    let ca =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ca-{}.pem", up.port));
    std::fs::write(&ca, &up.cert_pem).unwrap();
    let gw = gateway_for(&up, Some(&ca));
    for _ in 0..3 {
        let r = gw.chat("secure/tls-model", "hi");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["choices"][0]["message"]["content"], "over tls");
    }
    assert_eq!(
        up.last_auth.lock().unwrap().as_str(),
        "Bearer sk-tls-secret"
    );
}

#[test]
fn https_upstream_that_cannot_be_verified_is_refused() {
    let up = start_tls_upstream();
    // Without the CA, the self-signed certificate is not trusted by the webpki roots.
    let gw = gateway_for(&up, None);
    let r = gw.chat("secure/tls-model", "hi");
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code(), "upstream_tls_error");
    assert_eq!(
        up.handshakes_ok.load(Ordering::SeqCst),
        0,
        "no request may reach it"
    );
}

/// The documented floor of a range, read from the gateway's own message for `key_path = 0` in
/// `config` (so the test follows the range).
fn range_floor(config: &str, key_path: &str) -> u64 {
    let config = write_config(config);
    let out = std::process::Command::new(gateway_bin())
        .arg("--check")
        .arg(&config)
        .output()
        .expect("--check");
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    let message = format!("{key_path}: 0 is out of range ");
    let at = text
        .find(&message)
        .unwrap_or_else(|| panic!("no range message for {key_path}: {text}"));
    let rest = &text[at + message.len()..];
    rest.split("..=").next().unwrap().parse().unwrap()
}

/// The floors of `worker_stack_kb` and `coroutine_stack_kb`, KiB (or the values of
/// `STACK_TEST_WORKER_KB` and `STACK_TEST_COROUTINE_KB`, to measure what the calls need).
fn stack_floors_kb() -> (u64, u64) {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
    let mock = "[providers.mock]\ntype = \"mock\"\n";
    let worker = env("STACK_TEST_WORKER_KB").unwrap_or_else(|| {
        let config = format!(
            "{}{mock}[providers.mock.pool]\nworker_stack_kb = 0\n",
            base_config()
        );
        range_floor(&config, "providers.mock.pool.worker_stack_kb")
    });
    let coroutine = env("STACK_TEST_COROUTINE_KB").unwrap_or_else(|| {
        let server = "[server]\ncoroutine_stack_kb = 0\n";
        let config = format!("{}{mock}", base_config().replace("[server]\n", server));
        range_floor(&config, "server.coroutine_stack_kb")
    });
    (worker, coroutine)
}

/// `depth` nested object schemas, each requiring its one property: the deepest tool schema a
/// request may carry under `json_depth_max = 128`.
fn nested_schema(depth: usize) -> serde_json::Value {
    let mut schema = serde_json::json!({"type": "string"});
    for _ in 0..depth {
        schema =
            serde_json::json!({"type": "object", "properties": {"a": schema}, "required": ["a"]});
    }
    schema
}

/// An Anthropic Messages request of about `bytes` bytes of text with a tool whose schema nests
/// `depth` levels.
fn large_anthropic_request(model: &str, bytes: usize, depth: usize) -> String {
    let turns = 64;
    let text = "x".repeat(bytes / turns);
    let messages: Vec<serde_json::Value> = (0..turns)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            serde_json::json!({"role": role, "content": [{"type": "text", "text": text}]})
        })
        .chain(std::iter::once(
            serde_json::json!({"role": "user", "content": "use tool deep"}),
        ))
        .collect();
    serde_json::json!({
        "model": model,
        "max_tokens": 64,
        "system": "be brief",
        "messages": messages,
        "tools": [{"name": "deep", "description": "nested", "input_schema": nested_schema(depth)}],
    })
    .to_string()
}

/// Nesting of the deep tool schema: with the request's own levels (body, tools, tool, schema
/// and its properties objects) it reaches `json_depth_max = 128`, the top of its range.
const SCHEMA_DEPTH: usize = 62;

#[test]
fn pools_and_connections_at_the_smallest_stacks_survive_the_deepest_calls() {
    let (worker_kb, coroutine_kb) = stack_floors_kb();
    eprintln!("worker_stack_kb = {worker_kb}, coroutine_stack_kb = {coroutine_kb}");
    let up = start_tls_upstream();
    let ca =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ca-{}.pem", up.port));
    std::fs::write(&ca, &up.cert_pem).unwrap();
    let cfg = format!(
        "{}[providers.secure]\ntype = \"openai\"\nbase_url = \"https://localhost:{}/v1\"\nkeys = [{{ key = \"env:TLS_KEY\" }}]\nca_file = \"{}\"\n[providers.secure.pool]\nworkers = 2\nworker_stack_kb = {worker_kb}\n\
         [providers.mock]\ntype = \"mock\"\n[providers.mock.pool]\nworkers = 2\nworker_stack_kb = {worker_kb}\n",
        base_config().replace(
            "[server]\n",
            &format!("[server]\ncoroutine_stack_kb = {coroutine_kb}\njson_depth_max = 128\n"),
        ),
        up.port,
        ca.display()
    );
    let gw = Gateway::start_with_env(&cfg, &[("TLS_KEY", "sk-tls-secret")]);
    let anthropic = [
        ("content-type", "application/json"),
        ("anthropic-version", "2023-06-01"),
    ];
    // A TLS handshake and an OpenAI call over it (a fresh connection per worker).
    for _ in 0..2 {
        let r = gw.chat("secure/tls-model", "hi");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    // An Anthropic client's large request with the deepest schema, translated for the OpenAI
    // provider over TLS, its answer translated back.
    {
        let body = large_anthropic_request("secure/tls-model", 2 << 20, SCHEMA_DEPTH);
        let r = request(gw.api, "POST", "/v1/messages", &anthropic, body.as_bytes());
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["content"][0]["text"], "over tls");
    }
    // The mock decodes the same request and builds tool arguments from the deep schema.
    {
        let body = large_anthropic_request("mock/m", 2 << 20, SCHEMA_DEPTH);
        let r = request(gw.api, "POST", "/v1/messages", &anthropic, body.as_bytes());
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["content"][0]["type"], "tool_use");
    }
    // The connection coroutines read the fields routing needs from the deepest JSON allowed.
    {
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let message = r#"[{"role":"user","content":"hi"}]"#;
        for field in [
            "model",
            "stream",
            "fallbacks",
            "stream_options",
            "messages",
            "metadata",
        ] {
            for (api, path) in [
                ("openai", "/v1/chat/completions"),
                ("anthropic", "/v1/messages"),
            ] {
                let value = deep(127);
                let body = match field {
                    "model" => {
                        format!(r#"{{"model":{value},"messages":{message},"max_tokens":8}}"#)
                    }
                    "messages" => {
                        format!(r#"{{"model":"mock/m","messages":{value},"max_tokens":8}}"#)
                    }
                    _ => format!(
                        r#"{{"model":"mock/m","messages":{message},"max_tokens":8,"{field}":{value}}}"#
                    ),
                };
                let r = request(gw.api, "POST", path, &anthropic, body.as_bytes());
                assert!(
                    [200, 400].contains(&r.status),
                    "{api} {field}: {} {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                );
                let over = body.replacen('[', "[[", 1).replacen(']', "]]", 1);
                let r = request(gw.api, "POST", path, &anthropic, over.as_bytes());
                assert_eq!(r.status, 400, "{api} {field}");
            }
        }
    }
    // A panic unwinds a worker's stack (with the fault-injection triggers compiled in).
    if cfg!(feature = "fault-injection") {
        let r = gw.chat("mock/__panic__", "x");
        assert_eq!(r.status, 500);
    }
    // Every worker lived through it all.
    let stats = gw.stats();
    for pool in ["secure", "mock"] {
        assert_eq!(stats["pools"][pool]["workers_alive"], 2, "{pool}");
    }
    assert_eq!(gw.chat("mock/m", "still alive").status, 200);
}

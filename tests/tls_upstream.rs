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
    /// TCP connections accepted, and TLS handshakes that resumed an earlier session.
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    resumed: AtomicUsize,
    /// Requests asking for a slow answer that were read whole and wait for it.
    slow_waiting: AtomicUsize,
}

/// Buffers the gateway's upstream connections hold now (lent from its pool, not yet back).
fn upstream_buffers_lent(gw: &Gateway) -> u64 {
    let stats = gw.stats();
    let pool = stats["objpools"]
        .as_array()
        .expect("objpools")
        .iter()
        .find(|p| p["name"] == "upstream_buffers")
        .expect("the upstream buffer pool in /stats")
        .clone();
    let n = |k: &str| pool[k].as_u64().unwrap();
    n("gets") - n("returns") - n("discards")
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
    let counts = Arc::new(Counts::default());
    let (ok, auth, c) = (handshakes_ok.clone(), last_auth.clone(), counts.clone());
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            c.connections.fetch_add(1, Ordering::SeqCst);
            let (config, ok, auth, c) = (config.clone(), ok.clone(), auth.clone(), c.clone());
            std::thread::spawn(move || serve_tls(tcp, config, ok, auth, c));
        }
    });
    TlsUpstream {
        port,
        cert_pem: ck.cert.pem(),
        handshakes_ok,
        last_auth,
        counts,
    }
}

/// A streamed chat answer: five events in separate TLS records 20 ms apart, then `[DONE]`.
fn write_stream(tls: &mut impl Write) -> std::io::Result<()> {
    tls.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    )?;
    tls.flush()?;
    let mut events: Vec<String> = (0..5)
        .map(|i| {
            format!(
                "data: {{\"id\":\"chatcmpl-tls\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"tls-model\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"finish_reason\":null}}]}}\n\n"
            )
        })
        .collect();
    events.push("data: [DONE]\n\n".to_string());
    for event in events {
        std::thread::sleep(Duration::from_millis(20));
        tls.write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())?;
        tls.flush()?;
    }
    tls.write_all(b"0\r\n\r\n")?;
    tls.flush()
}

/// Serve keep-alive requests on one TLS connection until the client closes or fails the handshake.
fn serve_tls(
    tcp: std::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
    ok: Arc<AtomicUsize>,
    auth: Arc<std::sync::Mutex<String>>,
    counts: Arc<Counts>,
) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut buf = Vec::new();
    let mut first = true;
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
        if std::mem::take(&mut first)
            && tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
        {
            counts.resumed.fetch_add(1, Ordering::SeqCst);
        }
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
        let request: Vec<u8> = buf.drain(..(head_end + len).min(buf.len())).collect();
        let request = String::from_utf8_lossy(&request[head_end..]).to_string();
        if request.contains("slow") {
            counts.slow_waiting.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(600));
            counts.slow_waiting.fetch_sub(1, Ordering::SeqCst);
        }
        if request.contains("\"stream\":true") {
            if write_stream(&mut tls).is_err() {
                break;
            }
            continue;
        }
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

/// The upstream's certificate as a CA file for the gateway's `ca_file`.
fn write_ca(up: &TlsUpstream) -> std::path::PathBuf {
    let ca =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ca-{}.pem", up.port));
    std::fs::write(&ca, &up.cert_pem).unwrap();
    ca
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
    let ca = write_ca(&up);
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
fn https_upstream_streams_keeps_its_connections_and_shares_sessions_between_workers() {
    let up = start_tls_upstream();
    let ca = write_ca(&up);
    let cfg = format!(
        "{}[providers.secure]\ntype = \"openai\"\nbase_url = \"https://localhost:{}/v1\"\nkeys = [{{ key = \"env:TLS_KEY\" }}]\nca_file = \"{}\"\n[providers.secure.pool]\nworkers = 2\n",
        base_config(),
        up.port,
        ca.display()
    );
    let gw = Gateway::start_with_env(&cfg, &[("TLS_KEY", "sk-tls-secret")]);
    // Answers whole and streamed, one after another: the streamed events come in separate
    // records 20 ms apart and are relayed as they come.
    for _ in 0..3 {
        let r = gw.chat("secure/tls-model", "hi");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["choices"][0]["message"]["content"], "over tls");
        let mut conn = Conn::new(gw.api);
        conn.send(&stream_request("secure/tls-model", "hi", false));
        let s = conn.sse_response().expect("a streamed answer");
        assert_eq!(s.status, 200);
        assert_eq!(s.content(), "tok0 tok1 tok2 tok3 tok4 ");
        let spread = s.events.last().unwrap().1 - s.events.first().unwrap().1;
        assert!(
            spread >= Duration::from_millis(60),
            "relayed at once: {spread:?}"
        );
    }
    let connections = up.counts.connections.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&connections),
        "six answers over kept-alive connections, one per worker at most: {connections}"
    );
    // Both workers busy at once: each has its connection, and the later handshake resumes the
    // session of the earlier one (one TLS configuration for the provider, not one per worker).
    // While they wait for the answers, neither holds a buffer, plaintext or encrypted.
    let api = gw.api;
    std::thread::scope(|s| {
        let calls: Vec<_> = (0..2)
            .map(|_| s.spawn(|| chat_at(api, "secure/tls-model", "slow").status))
            .collect();
        assert!(
            eventually(Duration::from_secs(5), || up
                .counts
                .slow_waiting
                .load(Ordering::SeqCst)
                == 2),
            "both requests reach the upstream"
        );
        assert!(
            eventually(Duration::from_millis(400), || upstream_buffers_lent(&gw)
                == 0),
            "buffers held while waiting: {}",
            upstream_buffers_lent(&gw)
        );
        for call in calls {
            assert_eq!(call.join().unwrap(), 200);
        }
    });
    assert_eq!(up.counts.connections.load(Ordering::SeqCst), 2);
    assert_eq!(
        up.counts.resumed.load(Ordering::SeqCst),
        1,
        "the second worker's connection resumed the first's session"
    );
}

#[test]
fn a_handshake_that_never_completes_ends_at_the_connect_timeout() {
    // A listener that takes the connection and never answers the ClientHello.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().take(1).flatten().collect();
        std::thread::sleep(Duration::from_secs(5));
        drop(held);
    });
    let cfg = format!(
        "{}[providers.secure]\ntype = \"openai\"\nbase_url = \"https://localhost:{port}/v1\"\nkeys = [{{ key = \"env:TLS_KEY\" }}]\nconnect_timeout_ms = 300\nmax_retries = 0\n",
        base_config()
    );
    let gw = Gateway::start_with_env(&cfg, &[("TLS_KEY", "sk-tls-secret")]);
    let started = std::time::Instant::now();
    let r = gw.chat("secure/tls-model", "hi");
    let took = started.elapsed();
    assert!(r.status >= 500, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        took < Duration::from_secs(2),
        "the handshake waited past the connect timeout: {took:?}"
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
    let ca = write_ca(&up);
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

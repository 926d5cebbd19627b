//! Google providers end to end on the real binary: a Gemini stream has no terminator event, so a
//! scripted upstream that ends its body after a chunk with `finishReason` gives the client a
//! whole stream (`[DONE]`), and one that ends before it an error event; and a `vertex` provider
//! whose service-account key file is not a usable key is refused by `--check`, the message naming
//! the key, never its content. (The SDK tests in `tests/python/test_google.py` cover the rest
//! against the bench mock.)

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;

/// An upstream that answers every request with `body` as an event stream and then closes the
/// connection (no length, no chunking: the body ends at end-of-file, as Google's streams do
/// when they are read over HTTP/1.0-style framing). It records the request heads it saw.
fn eof_upstream(body: &'static str) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // The head, then the body by its content-length.
            while let Ok(n) = conn.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = find(&buf, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        seen2.lock().unwrap().push(head);
                        break;
                    }
                }
            }
            let _ = conn.write_all(
                format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{body}")
                    .as_bytes(),
            );
        }
    });
    (addr, seen)
}

fn gateway_for(upstream: SocketAddr) -> Gateway {
    let config = format!(
        "{}[providers.gem]\ntype = \"gemini\"\nbase_url = \"http://{upstream}/v1beta\"\nkeys = [{{ key = \"env:GEM_KEY\" }}]\nmax_retries = 0\n",
        base_config()
    );
    Gateway::start_with_env(&config, &[("GEM_KEY", "gem-test-key-0123")])
}

const TEXT_CHUNK: &str = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hel\"}],\"role\": \"model\"},\"index\": 0}],\"modelVersion\": \"gemini-x\",\"responseId\": \"r1\"}\r\n\r\n";
const LAST_CHUNK: &str = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"lo\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 4,\"candidatesTokenCount\": 2,\"totalTokenCount\": 6},\"modelVersion\": \"gemini-x\",\"responseId\": \"r1\"}\r\n\r\n";

#[test]
fn a_stream_that_ends_after_its_finish_reason_is_whole() {
    let body: &'static str = Box::leak(format!("{TEXT_CHUNK}{LAST_CHUNK}").into_boxed_str());
    let (upstream, seen) = eof_upstream(body);
    let gw = gateway_for(upstream);
    let mut c = Conn::new(gw.api);
    c.send(&stream_request("gem/gemini-x", "hi", true));
    let r = c.sse_response().expect("a stream");
    assert_eq!(r.status, 200);
    assert_eq!(r.content(), "Hello");
    let last = r.events.last().map(|(e, _)| e.as_str());
    assert_eq!(last, Some("[DONE]"), "{:?}", r.events);
    let chunks = r.chunks();
    assert!(
        chunks.iter().all(|c| c.get("error").is_none()),
        "{chunks:?}"
    );
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(
        (
            usage["prompt_tokens"].as_u64(),
            usage["completion_tokens"].as_u64()
        ),
        (Some(4), Some(2))
    );
    let head = seen.lock().unwrap()[0].clone();
    assert!(
        head.starts_with("POST /v1beta/models/gemini-x:streamGenerateContent?alt=sse "),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("x-goog-api-key: gem-test-key-0123"),
        "{head}"
    );
}

#[test]
fn a_stream_cut_before_its_finish_reason_ends_with_an_error_event() {
    let (upstream, _) = eof_upstream(TEXT_CHUNK);
    let gw = gateway_for(upstream);
    let mut c = Conn::new(gw.api);
    c.send(&stream_request("gem/gemini-x", "hi", false));
    let r = c.sse_response().expect("a stream");
    assert_eq!(r.status, 200);
    assert_eq!(r.content(), "Hel");
    let (last, _) = r.events.last().unwrap();
    let last: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(last["error"]["code"], "upstream_stream_truncated", "{last}");
    assert!(r.events.iter().all(|(e, _)| e != "[DONE]"));
}

#[test]
fn check_refuses_a_vertex_key_file_that_is_not_a_key() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let key = dir.join(format!("sa-bad-{}.json", std::process::id()));
    // A key file whose private key is not a PEM PKCS#8 RSA key (its body must never be echoed).
    std::fs::write(
        &key,
        r#"{"type":"service_account","client_email":"a@p.iam.gserviceaccount.com","private_key":"-----BEGIN PRIVATE KEY-----\nU0VDUkVUU0VDUkVU\n-----END PRIVATE KEY-----\n"}"#,
    )
    .unwrap();
    let config = format!(
        "{}[providers.v]\ntype = \"vertex\"\n[providers.v.vertex]\nproject = \"p\"\nlocation = \"us-central1\"\ncredentials_file = \"file:{}\"\n",
        base_config(),
        key.display()
    );
    let path = write_config(&config);
    let out = Command::new(gateway_bin())
        .arg("--check")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("providers.v.vertex.credentials_file"), "{err}");
    assert!(err.contains("not an RSA key"), "{err}");
    assert!(!err.contains("U0VDUkVU"), "{err}");
    // And a vertex provider takes no `keys`.
    let config = format!(
        "{}[providers.v]\ntype = \"vertex\"\nkeys = [{{ key = \"env:HOME\" }}]\n",
        base_config()
    );
    let out = Command::new(gateway_bin())
        .arg("--check")
        .arg(write_config(&config))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("providers.v.keys: not used by type \"vertex\""),
        "{err}"
    );
    assert!(
        err.contains("providers.v.vertex: required for type \"vertex\""),
        "{err}"
    );
}

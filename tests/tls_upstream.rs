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

//! Running the gateway under hostile operating conditions, end to end on the real binary: a log
//! reader that stalls, hostile values in the access log, secrets and CA files that are not
//! regular files or not certificates, a burst of reloads, start-up memory past its bounds, the
//! admin listener's token, and a descriptor limit below what the listeners need.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A mock provider with a few workers, on free ports.
fn mock_config() -> String {
    format!(
        "{}[providers.mock]\ntype = \"mock\"\n[providers.mock.pool]\nworkers = 4\n",
        base_config()
    )
}

/// A chat request on a fresh connection, with `x-request-id: id`.
fn chat_with_id(gw: &Gateway, id: &str, model: &str) -> Response {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
    });
    request(
        gw.api,
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json"), ("x-request-id", id)],
        body.to_string().as_bytes(),
    )
}

// --- logs -------------------------------------------------------------------------------------

/// Requests sent while nobody reads the gateway's stderr: more access lines than the pipe (64 KiB)
/// and the log queue (4096 lines) hold together.
const REQUESTS_WHILE_STALLED: usize = 6000;
/// Client threads sending them.
const CLIENTS: usize = 4;

#[test]
fn a_stalled_log_reader_holds_no_request() {
    let (gw, stderr) = Gateway::start_stderr_held(&mock_config());
    let api = gw.api;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            std::thread::spawn(move || {
                let body = r#"{"model":"mock/m","messages":[{"role":"user","content":"hi"}]}"#;
                let req = format!(
                    "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let mut conn = Conn::new(api);
                for i in 0..REQUESTS_WHILE_STALLED / CLIENTS {
                    conn.send(req.as_bytes());
                    let r = conn
                        .response()
                        .unwrap_or_else(|| panic!("client {c}: no answer to request {i}"));
                    assert_eq!(r.status, 200, "client {c}, request {i}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    // The admin listener answers too, and the lost lines are counted.
    let health = request(gw.admin, "GET", "/health", &[], b"");
    assert_eq!(health.status, 200);
    let dropped = gw.stats()["service"]["log_lines_dropped"].as_u64().unwrap();
    assert!(dropped > 0, "nothing dropped: the stall was not reached");
    let (_, metrics) = gw.metrics();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("deepintshield_log_lines_dropped_total "))
        .expect("the dropped-lines counter in /metrics");
    let counted: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(counted >= dropped, "{line} vs {dropped}");

    // The reader comes back: logging resumes, and says how much it lost.
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let kept = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            kept.lock().unwrap().push(line);
        }
    });
    let logged = |needle: &str| lines.lock().unwrap().iter().any(|l| l.contains(needle));
    assert!(
        eventually(Duration::from_secs(10), || logged(
            "msg=\"log lines dropped"
        )),
        "the loss is reported once the reader is back"
    );
    // Requests keep coming; once the queue has drained, their access lines are written again.
    let mut n = 0;
    let resumed = eventually(Duration::from_secs(10), || {
        n += 1;
        let id = format!("after-the-stall-{n}");
        assert_eq!(chat_with_id(&gw, &id, "mock/m").status, 200);
        std::thread::sleep(Duration::from_millis(50));
        logged(&format!("request_id={id} "))
    });
    assert!(resumed, "no access line after the reader came back");
}

#[test]
fn client_values_in_the_access_log_are_bounded_and_escaped() {
    let (gw, log) = Gateway::start_logged(&mock_config(), &[]);
    // A 1 MB model name: the access line carries a bounded prefix and the length.
    let long = format!("mock/{}", "m".repeat(1_000_000));
    assert_eq!(chat_with_id(&gw, "long-model", &long).status, 200);
    let line = log
        .wait_for(IO_TIMEOUT, |l| l.contains("request_id=long-model"))
        .expect("the access line");
    assert!(line.len() < 1024, "{} bytes", line.len());
    assert!(line.contains("...(1000005 bytes)\""), "{line}");

    // Characters that break lines or hide text on a terminal are escaped, even without any
    // ASCII character that needs quoting.
    let hidden = "mock/nel\u{85}ls\u{2028}rlo\u{202e}esc\u{1b}";
    assert_eq!(chat_with_id(&gw, "hidden-model", hidden).status, 200);
    let line = log
        .wait_for(IO_TIMEOUT, |l| l.contains("request_id=hidden-model"))
        .expect("the access line");
    assert!(
        line.contains(r#"model="mock/nel\u{85}ls\u{2028}rlo\u{202e}esc\u{1b}""#),
        "{line}"
    );
    let forged = "mock/x\r\nlevel=error msg=forged";
    assert_eq!(chat_with_id(&gw, "forged-line", forged).status, 200);
    let line = log
        .wait_for(IO_TIMEOUT, |l| l.contains("request_id=forged-line"))
        .expect("the access line");
    assert!(
        line.contains(r#"model="mock/x\r\nlevel=error msg=forged""#),
        "{line}"
    );
    assert!(!log
        .lines()
        .iter()
        .any(|l| l.starts_with("level=error msg=forged")));
}

//! `deepintshield-mock`: an OpenAI-compatible mock upstream on the gateway's own HTTP layer, for
//! end-to-end tests and load runs on loopback. Fault injection is driven by the model name, since
//! the gateway forwards it unchanged.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deepintshield::error::{ApiError, ErrorKind};
use deepintshield::http::{serve, Handler, Limits, Method, Request, Response};
use deepintshield::objpool::ObjPool;
use serde_json::{json, Value};

const USAGE: &str = "\
deepintshield-mock: an OpenAI-compatible mock upstream

USAGE:
    deepintshield-mock [--listen ADDR] [--delay-ms N] [--threads N]

OPTIONS:
    --listen ADDR    address to listen on (default 127.0.0.1:0, a free port)
    --delay-ms N     fixed delay of every chat completion, in milliseconds (default 0)
    --threads N      may scheduler threads (default: one per available core)
    -h, --help       print this help

On start it prints one line, `deepintshield-mock listening on ADDR`, then serves until killed.

ENDPOINTS:
    POST /v1/chat/completions   a chat.completion answering \"mock: <last user message>\";
                                `stream: true` gets the same as one buffered SSE body
    GET  /v1/models             a model list
    GET  /mock/stats            {requests, last_authorization, last_model, last_headers}

FAULT INJECTION (directives inside the request's model name):
    delay-<ms>      sleep that long instead of --delay-ms
    status-<code>   answer that HTTP status with an OpenAI-style error body
    garbage         answer 200 with a body that is not JSON
";

/// Buffers lent to connections: enough for a few thousand concurrent connections without misses.
const BUFFER_POOL_CAPACITY: usize = 4096;
const BUFFER_POOL_PREFILL: usize = 64;
const BUFFER_RETAIN_BYTES_MAX: usize = 1 << 20;
const BUFFER_BYTES_INITIAL: usize = 8 * 1024;
/// Longest fault-injection delay honoured, so a typo cannot park a connection for days.
const DELAY_MS_MAX: u64 = 600_000;

struct Options {
    listen: SocketAddr,
    delay_ms: u64,
    threads: usize,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut opts = Options {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        delay_ms: 0,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                opts.listen = v
                    .parse()
                    .map_err(|_| format!("--listen: not an address: {v}"))?;
            }
            "--delay-ms" => {
                let v = value()?;
                opts.delay_ms = v
                    .parse()
                    .map_err(|_| format!("--delay-ms: not a number: {v}"))?;
            }
            "--threads" => {
                let v = value()?;
                opts.threads = match v.parse() {
                    Ok(n) if n > 0 => n,
                    _ => return Err(format!("--threads: not a positive number: {v}")),
                };
            }
            _ => return Err(format!("unknown argument: {arg}")),
        }
    }
    Ok(Some(opts))
}

/// What the last chat-completion request looked like, for `/mock/stats`.
#[derive(Default)]
struct LastRequest {
    authorization: String,
    model: String,
    headers: serde_json::Map<String, Value>,
}

struct Mock {
    delay_ms: u64,
    completions: AtomicU64,
    /// Swapped in whole: the lock is held for a pointer swap, never across I/O or a wait.
    last: Mutex<Arc<LastRequest>>,
}

impl Handler for Mock {
    fn handle(&self, req: &mut Request) -> Response {
        match (req.method, req.path.as_str()) {
            (Method::Post, "/v1/chat/completions") => self.chat_completion(req),
            (Method::Get | Method::Head, "/v1/models") => models(),
            (Method::Get | Method::Head, "/mock/stats") => self.stats(),
            (_, "/v1/chat/completions" | "/v1/models" | "/mock/stats") => {
                Response::error(&ApiError::new(
                    ErrorKind::MethodNotAllowed,
                    "method_not_allowed",
                    "method not allowed on this path",
                ))
            }
            _ => Response::error(&ApiError::new(
                ErrorKind::NotFound,
                "not_found",
                format!("no route for {}", req.path),
            )),
        }
    }
}

impl Mock {
    fn chat_completion(&self, req: &Request) -> Response {
        let n = self.completions.fetch_add(1, Ordering::Relaxed) + 1;
        let parsed: Result<Value, _> = serde_json::from_slice(&req.body);
        let model = parsed
            .as_ref()
            .ok()
            .and_then(|v| v.get("model"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        self.record(req, &model);

        let body = match parsed {
            Ok(v) if v.is_object() => v,
            _ => {
                return Response::error(&ApiError::bad_request(
                    "invalid_json",
                    "the request body is not a JSON object",
                ))
            }
        };
        if model.is_empty() {
            return Response::error(&ApiError::bad_request(
                "missing_model",
                "`model` is required",
            ));
        }
        let Some(messages) = body.get("messages").and_then(Value::as_array) else {
            return Response::error(&ApiError::bad_request(
                "missing_messages",
                "`messages` must be an array",
            ));
        };

        let delay_ms = directive_number(&model, "delay-").unwrap_or(self.delay_ms);
        if delay_ms > 0 {
            may::coroutine::sleep(Duration::from_millis(delay_ms.min(DELAY_MS_MAX)));
        }
        if let Some(status) = directive_number(&model, "status-") {
            if (400..=599).contains(&status) {
                return injected_status(status as u16);
            }
        }
        if model.contains("garbage") {
            let mut r = Response::json(200, b"<html>this is not json".to_vec());
            r.content_type = "application/json";
            return r;
        }

        let prompt_chars: usize = messages
            .iter()
            .map(|m| message_text(m).chars().count())
            .sum();
        let last_user = messages
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .map(message_text)
            .unwrap_or_default();
        let content = format!("mock: {last_user}");
        let prompt_tokens = prompt_chars.div_ceil(4);
        let completion_tokens = content.chars().count().div_ceil(4);
        let id = format!("chatcmpl-mock{n:012}");
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let usage = json!({
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        });
        if body.get("stream").and_then(Value::as_bool) == Some(true) {
            return sse_completion(&id, created, &model, &content, usage);
        }
        let answer = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": usage,
        });
        Response::json(200, serde_json::to_vec(&answer).unwrap_or_default())
    }

    fn record(&self, req: &Request, model: &str) {
        let header = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        let last = LastRequest {
            authorization: req.header("authorization").map(header).unwrap_or_default(),
            model: model.to_string(),
            headers: req
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), Value::String(header(v))))
                .collect(),
        };
        let last = Arc::new(last);
        if let Ok(mut slot) = self.last.lock() {
            *slot = last;
        }
    }

    fn stats(&self) -> Response {
        let last = match self.last.lock() {
            Ok(slot) => Arc::clone(&slot),
            Err(_) => Arc::new(LastRequest::default()),
        };
        let body = json!({
            "requests": self.completions.load(Ordering::Relaxed),
            "last_authorization": last.authorization,
            "last_model": last.model,
            "last_headers": last.headers,
        });
        Response::json(200, serde_json::to_vec(&body).unwrap_or_default())
    }
}

/// The number right after `prefix` in a model name, e.g. `delay-250` in `gpt-delay-250`.
fn directive_number(model: &str, prefix: &str) -> Option<u64> {
    let at = model.find(prefix)? + prefix.len();
    let digits: &str = &model[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// A message's text: a string `content`, or the `text` parts of an array `content`.
fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn injected_status(status: u16) -> Response {
    let kind = match status {
        401 | 403 => "authentication_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    let body = json!({
        "error": {
            "message": format!("mock: injected status {status}"),
            "type": kind,
            "param": null,
            "code": "mock_injected_status",
        }
    });
    Response::json(status, serde_json::to_vec(&body).unwrap_or_default())
}

/// `stream: true`: the chunks of an OpenAI stream in one buffered `text/event-stream` body.
fn sse_completion(id: &str, created: u64, model: &str, content: &str, usage: Value) -> Response {
    let chunk = |delta: Value, finish: Value, usage: Option<&Value>| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if let Some(u) = usage {
            c["usage"] = u.clone();
        }
        format!("data: {c}\n\n")
    };
    let mut body = String::new();
    body.push_str(&chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
        None,
    ));
    for word in content.split_inclusive(' ') {
        body.push_str(&chunk(json!({"content": word}), Value::Null, None));
    }
    body.push_str(&chunk(json!({}), json!("stop"), Some(&usage)));
    body.push_str("data: [DONE]\n\n");
    let mut r = Response::json(200, body.into_bytes());
    r.content_type = "text/event-stream";
    r
}

fn models() -> Response {
    let model = |id: &str| json!({"id": id, "object": "model", "created": 0, "owned_by": "mock"});
    let body = json!({
        "object": "list",
        "data": [model("mock-gpt-4o-mini"), model("mock-gpt-4o")],
    });
    Response::json(200, serde_json::to_vec(&body).unwrap_or_default())
}

fn new_buffer() -> Vec<u8> {
    Vec::with_capacity(BUFFER_BYTES_INITIAL)
}

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("deepintshield-mock: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    may::config().set_workers(opts.threads);

    let listener = match std::net::TcpListener::bind(opts.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("deepintshield-mock: cannot listen on {}: {e}", opts.listen);
            return ExitCode::from(1);
        }
    };
    let mock = Arc::new(Mock {
        delay_ms: opts.delay_ms,
        completions: AtomicU64::new(0),
        last: Mutex::new(Arc::new(LastRequest::default())),
    });
    let buffers = ObjPool::new(
        "buffers",
        BUFFER_POOL_CAPACITY,
        BUFFER_POOL_PREFILL,
        BUFFER_RETAIN_BYTES_MAX,
        new_buffer,
    );
    let server = match serve(listener, Limits::default(), mock, buffers) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("deepintshield-mock: cannot serve: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    if writeln!(
        out,
        "deepintshield-mock listening on {}",
        server.local_addr()
    )
    .and_then(|()| out.flush())
    .is_err()
    {
        return ExitCode::from(1);
    }
    drop(out);
    // Serve until killed; the listener and its coroutines live on may's worker threads.
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives() {
        assert_eq!(directive_number("gpt-delay-250", "delay-"), Some(250));
        assert_eq!(directive_number("x-status-503-y", "status-"), Some(503));
        assert_eq!(directive_number("gpt-4o", "delay-"), None);
        assert_eq!(directive_number("delay-", "delay-"), None);
    }

    #[test]
    fn args() {
        let parse = |a: &[&str]| parse_args(a.iter().map(|s| s.to_string()));
        let o = parse(&["--listen", "127.0.0.1:9", "--delay-ms=5", "--threads", "3"])
            .unwrap()
            .unwrap();
        assert_eq!(o.listen.port(), 9);
        assert_eq!((o.delay_ms, o.threads), (5, 3));
        assert!(parse(&["--help"]).unwrap().is_none());
        assert!(parse(&["--threads", "0"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--listen"]).is_err());
    }

    #[test]
    fn text_of_messages() {
        let m = json!({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]});
        assert_eq!(message_text(&m), "ab");
        assert_eq!(message_text(&json!({"content": "hi"})), "hi");
    }
}

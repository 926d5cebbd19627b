//! Shared end-to-end test harness: start the real `deepintshield` and `deepintshield-mock` binaries
//! on free loopback ports, talk HTTP to them, and stop every process on drop.
#![allow(dead_code)]

pub mod golden;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Every socket read in tests gives up after this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub fn gateway_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_deepintshield"))
}

/// The mock upstream binary, built next to the gateway by `cargo build --workspace --bins`.
pub fn mock_bin() -> PathBuf {
    let p = gateway_bin().with_file_name("deepintshield-mock");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (tests/run does)",
        p.display()
    );
    p
}

/// A child process killed on drop; its stdout lines after the first are drained in a thread and
/// its stderr is echoed to the test's output.
pub struct Proc {
    pub child: Child,
    pub first_line: String,
    pub stdout_lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(cmd: Command, ready_prefix: &str) -> Proc {
        Self::spawn_logged(cmd, ready_prefix).0
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Wait for exit up to `timeout`; the exit code, or None on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A child that ended on its own is reported (a failing test's output then shows a crash,
        // with its signal, instead of only the connections it closed).
        if let Ok(Some(status)) = self.child.try_wait() {
            eprintln!("[child {} had exited: {status}]", self.child.id());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bench mock upstream.
pub struct Mock {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Mock {
    pub fn start(args: &[&str]) -> Mock {
        let mut cmd = Command::new(mock_bin());
        cmd.args(["--listen", "127.0.0.1:0", "--threads", "1"])
            .args(args);
        let proc = Proc::spawn(cmd, "listening on");
        let addr = proc
            .first_line
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .expect("mock address");
        Mock { proc, addr }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn stats(&self) -> serde_json::Value {
        let r = request(self.addr, "GET", "/mock/stats", &[], b"");
        assert_eq!(r.status, 200);
        r.json()
    }
}

/// A running gateway.
pub struct Gateway {
    pub proc: Proc,
    pub api: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
}

/// Start `cmd` under a descriptor limit of `n`, soft and hard (lowering needs no privilege).
pub fn limit_fds(cmd: &mut Command, n: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and touches only the child being started.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Write `toml` to a fresh file in the test temp dir (see [`auth_off_unless_keyed`]).
pub fn write_config(toml: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("gw-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, auth_off_unless_keyed(toml)).expect("write config");
    path
}

/// `toml` with `server.auth = "off"` added when it sets no authentication of its own (no
/// `auth`, no client keys, no governance plugin): authentication is on unless switched off, and
/// most tests are not about it.
pub fn auth_off_unless_keyed(toml: &str) -> String {
    // A config that does not parse is written as it is: the test is about the error.
    let Ok(doc) = toml.parse::<toml::Table>() else {
        return toml.to_string();
    };
    let server = doc.get("server").and_then(toml::Value::as_table);
    let keyed = server.is_some_and(|s| {
        s.contains_key("auth")
            || s.get("client_keys")
                .and_then(toml::Value::as_array)
                .is_some_and(|k| !k.is_empty())
    }) || doc
        .get("plugins")
        .and_then(|p| p.get("order"))
        .and_then(toml::Value::as_array)
        .is_some_and(|o| o.iter().any(|p| p.as_str() == Some("governance")));
    if keyed {
        return toml.to_string();
    }
    match toml.find("[server]\n") {
        Some(at) => {
            let end = at + "[server]\n".len();
            format!("{}auth = \"off\"\n{}", &toml[..end], &toml[end..])
        }
        None => format!("[server]\nauth = \"off\"\n\n{toml}"),
    }
}

/// A minimal config header with both listeners on free ports and quiet stdout stats.
pub fn base_config() -> String {
    "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nthreads = 2\nshutdown_timeout_ms = 3000\n\n[stats]\nstdout_interval_ms = 0\n\n".to_string()
}

impl Gateway {
    pub fn start(toml: &str) -> Gateway {
        Self::start_with_env(toml, &[])
    }

    pub fn start_with_env(toml: &str, env: &[(&str, &str)]) -> Gateway {
        let config_path = write_config(toml);
        let mut cmd = Command::new(gateway_bin());
        cmd.arg("--config").arg(&config_path);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn(cmd, "listening on");
        let addrs = listen_addrs(&proc.first_line);
        Gateway {
            proc,
            api: addrs[0],
            admin: addrs[1],
            config_path,
        }
    }

    pub fn chat(&self, model: &str, content: &str) -> Response {
        chat_at(self.api, model, content)
    }

    pub fn stats(&self) -> serde_json::Value {
        let r = request(self.admin, "GET", "/stats", &[], b"");
        assert_eq!(r.status, 200);
        r.json()
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// A one-message chat completion to the gateway's API at `api` (usable from other threads).
pub fn chat_at(api: SocketAddr, model: &str, content: &str) -> Response {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": content}],
    });
    request(
        api,
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// One request on a fresh connection with `Connection: close`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut s = connect(addr);
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).expect("write");
    read_response(&mut s).expect("a response")
}

/// Send raw bytes on a fresh connection and read one response.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Option<Response> {
    let mut s = connect(addr);
    let _ = s.write_all(bytes);
    read_response(&mut s)
}

/// Read one response (Content-Length framed, or until close). None if the peer closed first.
/// Bytes after the response are lost: use [`Conn`] for pipelined responses.
pub fn read_response(s: &mut TcpStream) -> Option<Response> {
    let mut buf = Vec::new();
    read_response_buffered(s, &mut buf)
}

/// A client connection that keeps bytes read past one response for the next.
pub struct Conn {
    pub s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Conn {
        Conn {
            s: connect(addr),
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write");
    }

    pub fn response(&mut self) -> Option<Response> {
        read_response_buffered(&mut self.s, &mut self.buf)
    }
}

/// Header names (lower-cased) and values of a response.
pub type Headers = Vec<(String, String)>;

/// Read up to the end of a response head into `buf`: (head length, status, headers).
fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(usize, u16, Headers)> {
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((head_end, status, headers))
}

fn read_response_buffered(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Response> {
    let mut chunk = [0u8; 8192];
    let (head_end, status, headers) = read_head(s, buf)?;
    let cl = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let body = match cl {
        Some(n) => {
            while buf.len() < head_end + n {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
            }
            let end = (head_end + n).min(buf.len());
            let body = buf[head_end..end].to_vec();
            buf.drain(..end);
            body
        }
        None => {
            let _ = s.read_to_end(buf);
            let body = buf[head_end..].to_vec();
            buf.clear();
            body
        }
    };
    Some(Response {
        status,
        headers,
        body,
    })
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Poll `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// A streamed (chunked) response read event by event, with arrival times.
pub struct SseResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// `data:` payloads in order, each with the time it arrived.
    pub events: Vec<(String, Instant)>,
}

impl SseResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The JSON chunks (every event but `[DONE]`).
    pub fn chunks(&self) -> Vec<serde_json::Value> {
        self.events
            .iter()
            .filter(|(e, _)| e != "[DONE]")
            .map(|(e, _)| serde_json::from_str(e).unwrap_or_else(|_| panic!("bad chunk {e}")))
            .collect()
    }

    /// The concatenated `delta.content` of all chunks.
    pub fn content(&self) -> String {
        self.chunks()
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect()
    }
}

impl Conn {
    /// Read the head of a response, then (when chunked) every chunk up to the last, splitting
    /// the SSE events. A non-chunked response's body becomes one event.
    pub fn sse_response(&mut self) -> Option<SseResponse> {
        let mut chunk = [0u8; 8192];
        let (head_end, status, headers) = read_head(&mut self.s, &mut self.buf)?;
        self.buf.drain(..head_end);
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v == "chunked");
        let mut resp = SseResponse {
            status,
            headers,
            events: Vec::new(),
        };
        if !chunked {
            let n: usize = resp.header("content-length")?.parse().ok()?;
            while self.buf.len() < n {
                match self.s.read(&mut chunk) {
                    Ok(0) | Err(_) => return None,
                    Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                }
            }
            let body: Vec<u8> = self.buf.drain(..n).collect();
            resp.events
                .push((String::from_utf8_lossy(&body).to_string(), Instant::now()));
            return Some(resp);
        }
        let mut pending = String::new();
        loop {
            let line_end = loop {
                if let Some(p) = find(&self.buf, b"\r\n") {
                    break p;
                }
                match self.s.read(&mut chunk) {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&self.buf[..line_end]).ok()?, 16).ok()?;
            while self.buf.len() < line_end + 2 + size + 2 {
                match self.s.read(&mut chunk) {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
            let data =
                String::from_utf8_lossy(&self.buf[line_end + 2..line_end + 2 + size]).to_string();
            self.buf.drain(..line_end + 4 + size);
            if size == 0 {
                return Some(resp);
            }
            pending.push_str(&data);
            while let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                // A comment-only event (`: keep-alive`) is no event to an SSE client.
                if event.trim_end().lines().all(|l| l.starts_with(':')) {
                    continue;
                }
                let payload = event
                    .trim_end()
                    .strip_prefix("data: ")
                    .unwrap_or(event.trim_end());
                resp.events.push((payload.to_string(), Instant::now()));
            }
        }
    }
}

/// A chat completion request with `stream: true` (and usage when asked), as raw bytes.
pub fn stream_request(model: &str, content: &str, include_usage: bool) -> Vec<u8> {
    let mut body = serde_json::json!({
        "model": model,
        "stream": true,
        "messages": [{"role": "user", "content": content}],
    });
    if include_usage {
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    let body = body.to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Lines a child wrote to stderr, kept for assertions (see [`Gateway::start_logged`]).
#[derive(Clone, Default)]
pub struct StderrLog(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl StderrLog {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The first line (from the start) matching `pred`, waiting up to `timeout` for it.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let mut found = None;
        eventually(timeout, || {
            found = self.lines().into_iter().find(|l| pred(l));
            found.is_some()
        });
        found
    }
}

impl Proc {
    /// Start `cmd` with stdout and stderr piped: the child, its stderr, and its stdout lines as
    /// a reader thread receives them.
    fn start_piped(mut cmd: Command) -> (Child, ChildStderr, mpsc::Receiver<String>) {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        (child, stderr, rx)
    }

    /// Wait up to 20 s for the stdout line holding `ready_prefix`; else kill the child and panic
    /// with what `why` says of it.
    fn wait_ready(
        mut child: Child,
        rx: mpsc::Receiver<String>,
        ready_prefix: &str,
        why: impl FnOnce() -> String,
    ) -> Proc {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(ready_prefix) => {
                    return Proc {
                        child,
                        first_line: line,
                        stdout_lines: rx,
                    };
                }
                Ok(_) => continue,
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    panic!(
                        "process did not print {ready_prefix:?} (exit {status:?}){}",
                        why()
                    );
                }
            }
        }
    }

    /// Start `cmd` and wait for its ready line; every stderr line is echoed and kept in the log.
    pub fn spawn_logged(cmd: Command, ready_prefix: &str) -> (Proc, StderrLog) {
        let (child, stderr, rx) = Proc::start_piped(cmd);
        let log = StderrLog::default();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[child stderr] {line}");
                if let Ok(mut l) = kept.0.lock() {
                    l.push(line);
                }
            }
        });
        let proc = Proc::wait_ready(child, rx, ready_prefix, || {
            format!("; stderr: {:?}", log.lines())
        });
        (proc, log)
    }

    /// Start `cmd` and wait for its ready line on stdout; its stderr is a pipe handed back
    /// unread (it fills as the child writes, as a stalled journal would).
    pub fn spawn_stderr_held(cmd: Command, ready_prefix: &str) -> (Proc, ChildStderr) {
        let (child, stderr, rx) = Proc::start_piped(cmd);
        (
            Proc::wait_ready(child, rx, ready_prefix, String::new),
            stderr,
        )
    }
}

impl Gateway {
    /// Start a gateway on `toml` whose stderr (its logs) is a pipe handed back unread.
    pub fn start_stderr_held(toml: &str) -> (Gateway, ChildStderr) {
        let config_path = write_config(toml);
        let mut cmd = Command::new(gateway_bin());
        cmd.arg("--config").arg(&config_path);
        let (proc, stderr) = Proc::spawn_stderr_held(cmd, "listening on");
        let addrs = listen_addrs(&proc.first_line);
        let gw = Gateway {
            proc,
            api: addrs[0],
            admin: addrs[1],
            config_path,
        };
        (gw, stderr)
    }

    /// Start a gateway on `toml` with extra environment, keeping its stderr (logs) for assertions.
    pub fn start_logged(toml: &str, env: &[(&str, &str)]) -> (Gateway, StderrLog) {
        Self::start_logged_with(toml, |cmd| {
            for (k, v) in env {
                cmd.env(k, v);
            }
        })
    }

    /// [`Gateway::start_logged`] with the command set up by `setup` (environment, pre_exec).
    pub fn start_logged_with(toml: &str, setup: impl FnOnce(&mut Command)) -> (Gateway, StderrLog) {
        let config_path = write_config(toml);
        let mut cmd = Command::new(gateway_bin());
        cmd.arg("--config").arg(&config_path);
        setup(&mut cmd);
        let (proc, log) = Proc::spawn_logged(cmd, "listening on");
        let addrs = listen_addrs(&proc.first_line);
        let gw = Gateway {
            proc,
            api: addrs[0],
            admin: addrs[1],
            config_path,
        };
        (gw, log)
    }

    /// Rewrite the config file with `toml` and send SIGHUP (the reload is asynchronous).
    pub fn reload_with(&self, toml: &str) {
        std::fs::write(&self.config_path, auth_off_unless_keyed(toml)).expect("rewrite config");
        self.proc.signal(libc::SIGHUP);
    }

    /// `GET /metrics` on the admin listener: (content type, body).
    pub fn metrics(&self) -> (String, String) {
        let r = request(self.admin, "GET", "/metrics", &[], b"");
        assert_eq!(r.status, 200);
        let ct = r.header("content-type").unwrap_or_default().to_string();
        (ct, String::from_utf8(r.body).expect("UTF-8 metrics"))
    }
}

/// The API and admin addresses of the gateway's start line:
/// "deepintshield X listening on http://A (api), http://B (admin)".
fn listen_addrs(line: &str) -> [SocketAddr; 2] {
    let addrs: Vec<SocketAddr> = line
        .split("http://")
        .skip(1)
        .filter_map(|s| s.split(' ').next()?.parse().ok())
        .collect();
    addrs
        .try_into()
        .unwrap_or_else(|_| panic!("two addresses in: {line}"))
}

//! End-to-end tests of the HTTP/1.1 front (`deepintshield::http::serve`): a real listener on
//! loopback, raw HTTP over std sockets, every read under a timeout.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deepintshield::http::{
    serve, BodyStream, ConnBuf, Handler, Limits, Method, Request, Response, ServerHandle,
    StreamPoll,
};
use deepintshield::objpool::ObjPool;

/// Every client read gives up after this: a test fails instead of hanging.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

struct EchoHandler;

/// Streams cancelled by the server (the client went away), across all tests.
static CANCELLED: AtomicUsize = AtomicUsize::new(0);

/// Yields `left` chunks `tick N\n`, one every `gap`, waiting with coroutine sleeps.
struct Ticker {
    left: usize,
    n: usize,
    gap: Duration,
    next_at: Instant,
}

impl BodyStream for Ticker {
    fn poll(&mut self, wait: Duration) -> StreamPoll {
        if self.left == 0 {
            return StreamPoll::End;
        }
        let now = Instant::now();
        if now < self.next_at {
            let nap = (self.next_at - now).min(wait);
            may::coroutine::sleep(nap);
            if Instant::now() < self.next_at {
                return StreamPoll::Pending;
            }
        }
        self.left -= 1;
        self.n += 1;
        self.next_at = Instant::now() + self.gap;
        StreamPoll::Chunk(format!("data: tick {}\n\n", self.n).into_bytes())
    }

    fn cancel(&mut self) {
        CANCELLED.fetch_add(1, Ordering::SeqCst);
    }
}

/// Chunks handed back by the server for reuse, across all tests.
static RECYCLED: AtomicUsize = AtomicUsize::new(0);

/// Yields `left` chunks that are all ready at once: the server takes the first with `poll` and
/// the rest with `try_poll`, counting `poll`s in `polls`.
struct Burst {
    left: usize,
    n: usize,
    polls: Arc<AtomicUsize>,
}

impl Burst {
    fn next(&mut self) -> StreamPoll {
        if self.left == 0 {
            return StreamPoll::End;
        }
        self.left -= 1;
        self.n += 1;
        StreamPoll::Chunk(format!("data: burst {}\n\n", self.n).into_bytes())
    }
}

impl BodyStream for Burst {
    fn poll(&mut self, _wait: Duration) -> StreamPoll {
        self.polls.fetch_add(1, Ordering::SeqCst);
        self.next()
    }

    fn try_poll(&mut self) -> Option<StreamPoll> {
        Some(self.next())
    }

    fn recycle(&mut self, chunk: Vec<u8>) {
        assert!(
            chunk.starts_with(b"data: burst "),
            "a written chunk comes back whole"
        );
        RECYCLED.fetch_add(1, Ordering::SeqCst);
    }

    fn cancel(&mut self) {}
}

/// Ends of `/recorded` streams recorded by their `finish`.
static FINISHED: AtomicUsize = AtomicUsize::new(0);

/// Two chunks, then the end, whose recording (`finish`) takes 150 ms, as post-hooks might.
struct Recorded {
    left: usize,
}

impl BodyStream for Recorded {
    fn poll(&mut self, _wait: Duration) -> StreamPoll {
        if self.left == 0 {
            return StreamPoll::End;
        }
        self.left -= 1;
        StreamPoll::Chunk(b"data: x\n\n".to_vec())
    }

    fn finish(&mut self) {
        may::coroutine::sleep(Duration::from_millis(150));
        FINISHED.fetch_add(1, Ordering::SeqCst);
    }

    fn cancel(&mut self) {}
}

/// `poll` calls of the `/burst` streams, across all tests.
static BURST_POLLS: std::sync::LazyLock<Arc<AtomicUsize>> =
    std::sync::LazyLock::new(|| Arc::new(AtomicUsize::new(0)));

impl Handler for EchoHandler {
    /// `/refuse` is answered 403 from the head alone.
    fn admit(&self, req: &Request) -> Option<Response> {
        (req.path == "/refuse").then(|| Response::json(403, br#"{"refused":true}"#.to_vec()))
    }

    fn handle(&self, req: &mut Request) -> Response {
        match req.path.as_str() {
            "/panic" => panic!("test handler panic"),
            "/sleep" => {
                let ms = req
                    .query
                    .strip_prefix("ms=")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(100);
                may::coroutine::sleep(Duration::from_millis(ms));
            }
            "/stream" => {
                let n = req
                    .query
                    .strip_prefix("n=")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(3);
                let ticker = Ticker {
                    left: n,
                    n: 0,
                    gap: Duration::from_millis(100),
                    next_at: Instant::now(),
                };
                return Response::stream(200, "text/event-stream", Box::new(ticker));
            }
            "/burst" => {
                let burst = Burst {
                    left: 5,
                    n: 0,
                    polls: Arc::clone(&BURST_POLLS),
                };
                return Response::stream(200, "text/event-stream", Box::new(burst));
            }
            "/recorded" => {
                let recorded = Recorded { left: 2 };
                return Response::stream(200, "text/event-stream", Box::new(recorded));
            }
            "/big" => {
                let mut r = Response::json(200, vec![b'x'; 200 * 1024]);
                r.content_type = "text/plain";
                return r;
            }
            _ => {}
        }
        let method = match req.method {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Patch => "PATCH",
            Method::Other => "OTHER",
        };
        let body = serde_json::json!({
            "method": method,
            "path": req.path,
            "query": req.query,
            "body_len": req.body.len(),
            "body": String::from_utf8_lossy(&req.body),
            "id": req.id,
            "header_count": req.headers.len(),
            "user_agent": req.header("user-agent").map(|v| String::from_utf8_lossy(v).into_owned()),
        });
        let mut r = Response::json(200, serde_json::to_vec(&body).unwrap_or_default());
        r.headers.push(("x-echo", "1".to_string()));
        r
    }
}

fn test_limits() -> Limits {
    Limits {
        body_bytes_max: 64 * 1024,
        header_read_timeout: Duration::from_secs(3),
        idle_timeout: Duration::from_secs(3),
        body_read_timeout: Duration::from_secs(3),
        write_timeout: Duration::from_secs(3),
        ..Limits::default()
    }
}

fn start(limits: Limits) -> ServerHandle {
    start_with_buffers(limits).0
}

/// A server and the pool that lends its connections' buffers.
fn start_with_buffers(limits: Limits) -> (ServerHandle, Arc<ObjPool<ConnBuf>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let buffers = ObjPool::new("buffers", 64, 8, 1 << 20, ConnBuf::default);
    let server = serve(
        listener,
        limits,
        Arc::new(EchoHandler),
        Arc::clone(&buffers),
    );
    (server.expect("serve"), buffers)
}

/// Buffers the pool has lent and not got back: (gets, lent now).
fn buffers_lent(pool: &ObjPool<ConnBuf>) -> (u64, u64) {
    let s = pool.snapshot();
    (s.gets, s.gets - s.returns - s.discards)
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
    fn closes(&self) -> bool {
        self.header("connection") == Some("close")
    }
}

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    fn read_more(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Read one response; `head_only` for answers to HEAD (content-length without body).
    fn response_with(&mut self, head_only: bool) -> Resp {
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match self.read_more() {
                Ok(0) => panic!(
                    "connection closed before a response; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(_) => {}
                Err(e) => panic!("reading response head: {e}"),
            }
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).expect("ascii head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status: u16 = status_line[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(": ").expect("header line");
                (n.to_string(), v.to_string())
            })
            .collect();
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        let len = if status == 100 || head_only {
            0
        } else {
            resp.header("content-length")
                .expect("content-length")
                .parse::<usize>()
                .unwrap()
        };
        while self.buf.len() < head_end + len {
            match self.read_more() {
                Ok(0) => panic!("connection closed inside a body"),
                Ok(_) => {}
                Err(e) => panic!("reading body: {e}"),
            }
        }
        resp.body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        resp
    }

    fn response(&mut self) -> Resp {
        self.response_with(false)
    }

    fn request(&mut self, bytes: &[u8]) -> Resp {
        self.send(bytes);
        self.response()
    }

    /// The server closed (EOF or reset) with nothing more to read, within `within`.
    fn assert_closed(&mut self, within: Duration) {
        self.stream.set_read_timeout(Some(within)).unwrap();
        let mut chunk = [0u8; 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {}
            Ok(n) => panic!(
                "expected close, got {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected close, got {e}"),
        }
        assert!(self.buf.is_empty(), "unread bytes: {:?}", self.buf);
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
}

/// A fresh connection still gets a 200: the server survived whatever came before.
fn assert_healthy(server: &ServerHandle) {
    let mut c = Client::connect(server.local_addr());
    let r = c.request(&get("/health"));
    assert_eq!(r.status, 200);
}

/// Send a bad request; expect an error status with a JSON error body, then the close.
fn assert_rejected(server: &ServerHandle, request: &[u8], status: u16, code: &str) {
    let mut c = Client::connect(server.local_addr());
    c.send(request);
    let r = c.response();
    assert_eq!(
        r.status,
        status,
        "{} -> {:?}",
        String::from_utf8_lossy(request),
        String::from_utf8_lossy(&r.body)
    );
    assert!(r.closes(), "no connection: close on {:?}", r.headers);
    assert_eq!(r.json()["error"]["code"], code);
    assert!(r.header("x-request-id").is_some());
    c.assert_closed(Duration::from_secs(3));
    assert_healthy(server);
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn simple_get_and_post() {
    let server = start(test_limits());
    let mut c = Client::connect(server.local_addr());
    let r = c.request(b"GET /v1/models?limit=2 HTTP/1.1\r\nHost: t\r\nUser-Agent: raw\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-echo"), Some("1"));
    assert!(!r.closes());
    let v = r.json();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/v1/models");
    assert_eq!(v["query"], "limit=2");
    assert_eq!(v["user_agent"], "raw");

    let r = c.request(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
          Content-Length: 13\r\n\r\n{\"model\":\"m\"}",
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["body_len"], 13);
    assert_eq!(v["body"], "{\"model\":\"m\"}");
    let stats = server.stats().to_json();
    assert_eq!(stats["requests"], 2);
    assert_eq!(stats["connections_accepted"], 1);
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let server = start(test_limits());
    let mut c = Client::connect(server.local_addr());
    for i in 0..3 {
        let r = c.request(&get(&format!("/n{i}")));
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["path"], format!("/n{i}"));
        assert!(!r.closes());
    }
    assert_eq!(
        server.stats().connections_accepted.load(Ordering::Relaxed),
        1
    );
}

#[test]
fn connections_hold_buffers_only_while_they_use_them() {
    let (server, pool) = start_with_buffers(test_limits());
    let mut clients: Vec<Client> = (0..16)
        .map(|_| Client::connect(server.local_addr()))
        .collect();
    let active = || server.stats().connections_active.load(Ordering::Relaxed);
    // New connections that have sent nothing yet hold no buffer (one that waited by reading
    // into a buffer would hold it for its first idle poll, 500 ms).
    wait_until("16 connections accepted", READ_TIMEOUT, || active() == 16);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        buffers_lent(&pool),
        (0, 0),
        "no buffer lent to a silent connection"
    );
    // While their requests are with the handler, the connections hold none either.
    for c in &mut clients {
        c.send(&get("/sleep?ms=1000"));
    }
    wait_until("16 requests read and handed on", READ_TIMEOUT, || {
        let (gets, lent) = buffers_lent(&pool);
        gets >= 16 && lent == 0 && active() == 16
    });
    for c in &mut clients {
        assert_eq!(c.response().status, 200);
    }
    // Idle keep-alive connections hold none either: they wait with a peek (a connection that
    // waited by reading into its buffer would hold it for its first idle poll, 500 ms).
    wait_until(
        "idle connections to return their buffers",
        Duration::from_millis(300),
        || buffers_lent(&pool).1 == 0 && active() == 16,
    );
    // They still serve requests, pipelined ones too, in order.
    for (i, c) in clients.iter_mut().enumerate() {
        let mut two = get(&format!("/a{i}"));
        two.extend_from_slice(&get(&format!("/b{i}")));
        c.send(&two);
        assert_eq!(c.response().json()["path"], format!("/a{i}"));
        assert_eq!(c.response().json()["path"], format!("/b{i}"));
    }
}

#[test]
fn connection_close_is_honoured() {
    let server = start(test_limits());
    let mut c = Client::connect(server.local_addr());
    let r = c.request(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.closes());
    c.assert_closed(Duration::from_secs(3));
}

#[test]
fn http10_closes_unless_keep_alive() {
    let server = start(test_limits());
    let mut c = Client::connect(server.local_addr());
    let r = c.request(b"GET /old HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.closes());
    c.assert_closed(Duration::from_secs(3));

    let mut c = Client::connect(server.local_addr());
    let r = c.request(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("keep-alive"));
    let r = c.request(b"GET /b HTTP/1.0\r\n\r\n");
    assert_eq!(r.json()["path"], "/b");
    assert!(r.closes());
    c.assert_closed(Duration::from_secs(3));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = start(test_limits());
    let mut c = Client::connect(server.local_addr());
    c.send(
        b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n\
          POST /second HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
          POST /third HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    let a = c.response();
    let b = c.response();
    let d = c.response();
    assert_eq!(a.json()["path"], "/first");
    assert_eq!(b.json()["path"], "/second");
    assert_eq!(b.json()["body"], "hello");
    assert_eq!(d.json()["path"], "/third");
    assert_eq!(d.json()["body"], "abc");
    // The connection is still usable afterwards.
    let r = c.request(&get("/fourth"));
    assert_eq!(r.json()["path"], "/fourth");
    wait_until("in-flight back to 0", Duration::from_secs(2), || {
        server.stats().requests_in_flight.load(Ordering::Relaxed) == 0
    });
}

#[test]
fn pipelined_large_responses_keep_framing() {
    let server = start(test_limits());
    let mut c = Client::connect(server.local_addr());
    c.send(b"GET /big HTTP/1.1\r\n\r\nGET /big HTTP/1.1\r\n\r\nGET /after HTTP/1.1\r\n\r\n");
    assert_eq!(c.response().body.len(), 200 * 1024);
    assert_eq!(c.response().body.len(), 200 * 1024);
    assert_eq!(c.response().json()["path"], "/after");
}

#[test]
fn large_body_arriving_in_pieces() {
    let server = start(Limits {
        body_bytes_max: 1 << 20,
        ..test_limits()
    });
    let mut c = Client::connect(server.local_addr());
    let len = 300 * 1024;
    c.send(format!("POST /big-in HTTP/1.1\r\nContent-Length: {len}\r\n\r\n").as_bytes());
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(20));
        c.send(&vec![b'z'; len / 3]);
    }
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], len);
    // Stray CRLFs between requests are skipped.
    c.send(b"\r\n\r\n");
    let r = c.request(b"\r\nGET /after HTTP/1.1\r\n\r\n");
    assert_eq!(r.json()["path"], "/after");
}

#[test]
fn expect_100_continue() {
    let server = start(test_limits());
    let mut c = Client::connect(server.local_addr());
    c.send(
        b"POST /upload HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    );
    let interim = c.response();
    assert_eq!(interim.status, 100);
    assert!(interim.headers.is_empty());
    c.send(b"hello");
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body"], "hello");

    // Chunked, too.
    c.send(
        b"POST /up2 HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\
          Transfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(c.response().status, 100);
    c.send(b"2\r\nok\r\n0\r\n\r\n");
    assert_eq!(c.response().json()["body"], "ok");

    // Body already sent with the head: no 100.
    let r = c.request(
        b"POST /eager HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body"], "hi");

    // Too large: 413 at once, no 100.
    let mut c = Client::connect(server.local_addr());
    c.send(
        b"POST /huge HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 10000000\r\n\r\n",
    );
    let r = c.response();
    assert_eq!(r.status, 413);
    assert!(r.closes());
    c.assert_closed(Duration::from_secs(3));
}

#[test]
fn chunked_body_with_extensions_and_trailer() {
    let server = start(test_limits());
    let mut c = Client::connect(server.local_addr());
    c.send(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhel");
    std::thread::sleep(Duration::from_millis(50));
    c.send(b"lo\r\n6 ; name=\"v\"\r\n world\r\n0\r\nx-trailer: yes\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body"], "hello world");
    assert!(!r.closes());
    assert_eq!(c.request(&get("/next")).json()["path"], "/next");
}

#[test]
fn many_headers_like_the_openai_sdk_are_fine() {
    let server = start(test_limits());
    let mut req =
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n".to_vec();
    for i in 0..97 {
        req.extend_from_slice(format!("X-Stainless-H{i}: v{i}\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n{}");
    let mut c = Client::connect(server.local_addr());
    let r = c.request(&req);
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["header_count"], 99);
}

#[test]
fn too_many_header_lines_is_431() {
    let server = start(test_limits());
    let mut req = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..101 {
        req.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    assert_rejected(&server, &req, 431, "headers_too_large");
    assert_eq!(server.stats().headers_too_large.load(Ordering::Relaxed), 1);
}

#[test]
fn oversized_header_block_is_431() {
    let server = start(test_limits());
    let mut req = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 40 * 1024));
    req.extend_from_slice(b"\r\n\r\n");
    assert_rejected(&server, &req, 431, "headers_too_large");
}

#[test]
fn body_over_limit_is_413() {
    let server = start(Limits {
        body_bytes_max: 1024,
        ..test_limits()
    });
    let mut req = b"POST / HTTP/1.1\r\nContent-Length: 2048\r\n\r\n".to_vec();
    req.extend(std::iter::repeat_n(b'b', 2048));
    assert_rejected(&server, &req, 413, "payload_too_large");

    let mut req = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        req.extend_from_slice(b"200\r\n");
        req.extend(std::iter::repeat_n(b'c', 0x200));
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    assert_rejected(&server, &req, 413, "payload_too_large");

    // Exactly at the limit is fine.
    let mut req = b"POST / HTTP/1.1\r\nContent-Length: 1024\r\n\r\n".to_vec();
    req.extend(std::iter::repeat_n(b'd', 1024));
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.request(&req).json()["body_len"], 1024);
    assert_eq!(server.stats().bodies_too_large.load(Ordering::Relaxed), 2);
}

#[test]
fn ambiguous_framing_is_400_and_closes() {
    let server = start(test_limits());
    let cases: &[(&[u8], &str)] = &[
        (
            b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
            "invalid_content_length",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
            "invalid_content_length",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "invalid_content_length",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhello",
            "invalid_content_length",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            "request_smuggling",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "request_smuggling",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "unsupported_transfer_encoding",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            "invalid_chunk",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXY0\r\n\r\n",
            "invalid_chunk",
        ),
        (b"GARBAGE\r\n\r\n", "malformed_request"),
        (b"GET http://evil/ HTTP/1.1\r\n\r\n", "malformed_request"),
        (b"GET / HTTP/3.0\r\n\r\n", "unsupported_http_version"),
    ];
    for (req, code) in cases {
        assert_rejected(&server, req, 400, code);
    }
    assert_eq!(
        server.stats().bad_requests.load(Ordering::Relaxed),
        cases.len() as u64
    );
}

#[test]
fn slowloris_is_cut_off_at_the_header_deadline() {
    let server = start(Limits {
        header_read_timeout: Duration::from_millis(500),
        ..test_limits()
    });
    let mut c = Client::connect(server.local_addr());
    let mut writer = c.stream.try_clone().unwrap();
    let started = Instant::now();
    let trickle = std::thread::spawn(move || {
        // One byte every 50 ms, never finishing the head; stops when the server closes.
        for &b in b"GET / HTTP/1.1\r\nX-Slow: "
            .iter()
            .chain([b'a'; 200].iter())
        {
            if writer.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let r = c.response();
    let elapsed = started.elapsed();
    assert_eq!(r.status, 408);
    assert!(r.closes());
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    c.assert_closed(Duration::from_secs(3));
    let _ = trickle.join();
    assert!(server.stats().timeouts.load(Ordering::Relaxed) >= 1);
    assert_healthy(&server);
}

#[test]
fn slow_body_is_cut_off() {
    let server = start(Limits {
        body_read_timeout: Duration::from_millis(300),
        ..test_limits()
    });
    let mut c = Client::connect(server.local_addr());
    let started = Instant::now();
    c.send(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nhalf!");
    let r = c.response();
    assert_eq!(r.status, 408);
    assert!(started.elapsed() < Duration::from_millis(1500));
    c.assert_closed(Duration::from_secs(3));
    assert_healthy(&server);
}

#[test]
fn idle_connection_is_closed_after_idle_timeout() {
    let server = start(Limits {
        idle_timeout: Duration::from_millis(300),
        ..test_limits()
    });
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.request(&get("/once")).status, 200);
    let started = Instant::now();
    c.assert_closed(Duration::from_secs(3));
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    // A connection that never sends anything is closed too.
    let mut silent = Client::connect(server.local_addr());
    silent.assert_closed(Duration::from_secs(3));
    wait_until("idle timeouts counted", Duration::from_secs(2), || {
        server.stats().idle_timeouts.load(Ordering::Relaxed) == 2
    });
}

#[test]
fn handler_panic_is_a_500_and_the_server_lives_on() {
    let server = start(test_limits());
    let mut c = Client::connect(server.local_addr());
    let r = c.request(&get("/panic"));
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["type"], "server_error");
    assert!(!r.closes());
    // Same connection keeps working, and a new one too.
    assert_eq!(c.request(&get("/after")).status, 200);
    assert_healthy(&server);
    assert_eq!(server.stats().handler_panics.load(Ordering::Relaxed), 1);
    // Decremented once the write returned, which may be just after the client read it.
    wait_until("in-flight back to 0", Duration::from_secs(2), || {
        server.stats().requests_in_flight.load(Ordering::Relaxed) == 0
    });
}

#[test]
fn request_id_is_echoed_or_generated() {
    let server = start(test_limits());
    let mut c = Client::connect(server.local_addr());
    let r = c.request(b"GET / HTTP/1.1\r\nX-Request-Id: client-id-42\r\n\r\n");
    assert_eq!(r.header("x-request-id"), Some("client-id-42"));
    assert_eq!(r.json()["id"], "client-id-42");

    let a = c.request(&get("/"));
    let b = c.request(&get("/"));
    let (a, b) = (
        a.header("x-request-id").unwrap(),
        b.header("x-request-id").unwrap(),
    );
    assert!(a.starts_with("req_"), "{a}");
    assert_ne!(a, b);

    // Not sane (too long, or with a space): replaced.
    let long = "x".repeat(129);
    let r = c.request(format!("GET / HTTP/1.1\r\nX-Request-Id: {long}\r\n\r\n").as_bytes());
    assert!(r.header("x-request-id").unwrap().starts_with("req_"));
    let r = c.request(b"GET / HTTP/1.1\r\nX-Request-Id: a b\r\n\r\n");
    assert!(r.header("x-request-id").unwrap().starts_with("req_"));

    // Errors carry one as well.
    let mut c = Client::connect(server.local_addr());
    let r = c.request(b"NOT HTTP\r\n\r\n");
    assert_eq!(r.status, 400);
    assert!(r.header("x-request-id").unwrap().starts_with("req_"));
}

#[test]
fn head_requests_get_no_body() {
    let server = start(test_limits());
    let mut c = Client::connect(server.local_addr());
    c.send(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.response_with(true);
    assert_eq!(r.status, 200);
    let len: usize = r.header("content-length").unwrap().parse().unwrap();
    assert!(len > 0);
    // The next response starts right away: no body bytes were sent for HEAD.
    let r = c.request(&get("/after-head"));
    assert_eq!(r.json()["path"], "/after-head");
}

#[test]
fn stop_accepting_refuses_new_connections_and_finishes_in_flight() {
    let server = start(test_limits());
    let addr = server.local_addr();

    let mut idle = Client::connect(addr);
    assert_eq!(idle.request(&get("/warm")).status, 200);

    let mut busy = Client::connect(addr);
    busy.send(&get("/sleep?ms=700"));
    // `requests` counts handler calls: the second one is the slow request, now sleeping.
    wait_until(
        "the slow request in the handler",
        Duration::from_secs(2),
        || server.stats().requests.load(Ordering::Relaxed) == 2,
    );

    let stopped_at = Instant::now();
    server.stop_accepting();
    server.stop_accepting(); // idempotent

    // New connections are refused (listener closed) or closed unserved; never answered.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut refused = false;
    while Instant::now() < deadline {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Err(_) => {
                refused = true;
                break;
            }
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                let _ = s.write_all(&get("/should-not-be-served"));
                let mut buf = [0u8; 64];
                match s.read(&mut buf) {
                    Ok(n) => assert_eq!(n, 0, "a connection made after stop was served"),
                    Err(e) => assert!(
                        e.kind() == io::ErrorKind::ConnectionReset
                            || e.kind() == io::ErrorKind::WouldBlock
                            || e.kind() == io::ErrorKind::TimedOut,
                        "{e}"
                    ),
                }
            }
        }
    }
    assert!(refused, "the listener was not closed");

    // The request in progress still gets its answer, then the connection closes.
    let r = busy.response();
    assert_eq!(r.status, 200);
    assert!(r.closes());
    busy.assert_closed(Duration::from_secs(3));

    // The idle keep-alive connection is closed at its next idle check.
    idle.assert_closed(Duration::from_secs(3));
    assert!(stopped_at.elapsed() < Duration::from_secs(3));

    wait_until("all connections gone", Duration::from_secs(3), || {
        server.stats().connections_active.load(Ordering::Relaxed) == 0
    });
    assert_eq!(server.stats().requests_in_flight.load(Ordering::Relaxed), 0);
    let _ = busy.stream.shutdown(Shutdown::Both);
}

#[test]
fn server_handle_is_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ServerHandle>();
}

/// Read one chunked body from `c`, returning each chunk's payload with its arrival time.
fn read_chunks(c: &mut Client) -> Vec<(Vec<u8>, Instant)> {
    let mut out = Vec::new();
    loop {
        let line_end = loop {
            if let Some(p) = c.buf.windows(2).position(|w| w == b"\r\n") {
                break p;
            }
            assert!(
                c.read_more().expect("chunk size") > 0,
                "closed inside chunked body"
            );
        };
        let size = usize::from_str_radix(std::str::from_utf8(&c.buf[..line_end]).unwrap(), 16)
            .expect("hex chunk size");
        while c.buf.len() < line_end + 2 + size + 2 {
            assert!(
                c.read_more().expect("chunk data") > 0,
                "closed inside chunk"
            );
        }
        let data = c.buf[line_end + 2..line_end + 2 + size].to_vec();
        assert_eq!(&c.buf[line_end + 2 + size..line_end + 4 + size], b"\r\n");
        c.buf.drain(..line_end + 4 + size);
        if size == 0 {
            return out;
        }
        out.push((data, Instant::now()));
    }
}

#[test]
fn streamed_response_arrives_chunk_by_chunk_and_keeps_the_connection() {
    let server = start(test_limits());
    let mut c = Client::connect(server.local_addr());
    c.send(&get("/stream?n=4"));
    let t0 = Instant::now();
    let head_end = loop {
        if let Some(p) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        assert!(c.read_more().unwrap() > 0);
    };
    let head = String::from_utf8_lossy(&c.buf[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    c.buf.drain(..head_end);
    let chunks = read_chunks(&mut c);
    assert_eq!(chunks.len(), 4);
    for (i, (data, _)) in chunks.iter().enumerate() {
        assert_eq!(data, format!("data: tick {}\n\n", i + 1).as_bytes());
    }
    // Spread out in time, not delivered together at the end.
    let spread = chunks[3].1 - chunks[0].1;
    assert!(spread >= Duration::from_millis(250), "{spread:?}");
    assert!(chunks[0].1 - t0 < Duration::from_millis(150));
    // Keep-alive after the stream.
    let r = c.request(&get("/after"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/after");
}

#[test]
fn chunks_ready_together_go_out_in_order_and_come_back_for_reuse() {
    let server = start(test_limits());
    let mut c = Client::connect(server.local_addr());
    let (polls, recycled) = (
        BURST_POLLS.load(Ordering::SeqCst),
        RECYCLED.load(Ordering::SeqCst),
    );
    c.send(&get("/burst"));
    let head_end = loop {
        if let Some(p) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        assert!(c.read_more().unwrap() > 0);
    };
    c.buf.drain(..head_end);
    let chunks = read_chunks(&mut c);
    let got: Vec<_> = chunks.iter().map(|(data, _)| data.clone()).collect();
    let want: Vec<_> = (1..=5)
        .map(|i| format!("data: burst {i}\n\n").into_bytes())
        .collect();
    assert_eq!(got, want, "each chunk framed on its own, in order");
    // One wait for the first; the four behind it were taken as ready, into the same write.
    assert_eq!(BURST_POLLS.load(Ordering::SeqCst) - polls, 1);
    assert_eq!(RECYCLED.load(Ordering::SeqCst) - recycled, 5);
    let r = c.request(&get("/after"));
    assert_eq!(r.status, 200, "the connection stays usable");
}

#[test]
fn client_leaving_mid_stream_cancels_it() {
    let server = start(test_limits());
    let before = CANCELLED.load(Ordering::SeqCst);
    let mut c = Client::connect(server.local_addr());
    c.send(&get("/stream?n=1000"));
    assert!(c.read_more().unwrap() > 0);
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(2);
    while CANCELLED.load(Ordering::SeqCst) == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        CANCELLED.load(Ordering::SeqCst) > before,
        "stream not cancelled"
    );
    assert!(server.stats().streams_cancelled.load(Ordering::Relaxed) >= 1);
    assert_healthy(&server);
}

#[test]
fn a_stream_end_is_recorded_before_the_client_sees_it() {
    // What a stream's end records (usage, spend) must be in place when the client reads the end
    // and sends its next request: a budget spent by one stream refuses the next.
    let server = start(test_limits());
    let mut c = Client::connect(server.local_addr());
    for round in 1..=2 {
        c.send(b"GET /recorded HTTP/1.1\r\nHost: t\r\n\r\n");
        // The last data chunk's line end, then the zero-size chunk (after the head, whose last
        // field may end in a 0 too).
        let end = loop {
            let head_end = c.buf.windows(4).position(|w| w == b"\r\n\r\n");
            if let Some(h) = head_end {
                let body = &c.buf[h + 4..];
                if let Some(p) = body.windows(7).position(|w| w == b"\r\n0\r\n\r\n") {
                    break h + 4 + p + 7;
                }
            }
            assert!(c.read_more().expect("reading the stream") > 0, "closed");
        };
        let text = String::from_utf8_lossy(&c.buf[..end]).to_string();
        assert!(text.contains("data: x\n\n"), "{text}");
        assert_eq!(
            FINISHED.load(Ordering::SeqCst),
            round,
            "end seen before it was recorded"
        );
        c.buf.drain(..end);
    }
}

#[test]
fn http10_stream_is_close_delimited() {
    let server = start(test_limits());
    let mut c = Client::connect(server.local_addr());
    c.send(b"GET /stream?n=2 HTTP/1.0\r\n\r\n");
    let mut all = Vec::new();
    c.stream.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.contains("connection: close"), "{text}");
    assert!(!text.contains("transfer-encoding"), "{text}");
    assert!(text.ends_with("data: tick 1\n\ndata: tick 2\n\n"), "{text}");
}

#[test]
fn admit_answers_from_the_head_and_skips_only_a_body_already_read() {
    let server = start(test_limits());
    // The whole body arrived with the head: skipped, and the next request is served.
    let mut c = Client::connect(server.local_addr());
    c.send(b"POST /refuse HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /after HTTP/1.1\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 403);
    assert!(!r.closes());
    let r = c.response();
    assert_eq!((r.status, r.json()["path"].as_str()), (200, Some("/after")));
    // A body still on its way, or a chunked one, is never read: answer, then close.
    for head in [
        &b"POST /refuse HTTP/1.1\r\nContent-Length: 100000\r\n\r\npartial"[..],
        b"POST /refuse HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"POST /refuse HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    ] {
        let mut c = Client::connect(server.local_addr());
        c.send(head);
        let r = c.response();
        assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(head));
        assert!(r.closes());
        c.assert_closed(Duration::from_secs(3));
    }
    let stats = server.stats();
    assert_eq!(
        stats.requests_answered_before_body.load(Ordering::Relaxed),
        4
    );
    assert_eq!(stats.body_buffer_bytes.load(Ordering::Relaxed), 0);
    assert_healthy(&server);
}

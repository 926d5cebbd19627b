//! Connection loop: accept, read, parse, dispatch to the handler, write.
//!
//! One `may` coroutine accepts; each connection gets its own coroutine that reads into a pooled
//! buffer, parses request heads with `httparse` (header slots on its stack, up to the limit in
//! [`Limits`]), decodes Content-Length or chunked bodies, calls the [`Handler`] under
//! `catch_unwind`, and appends the responses of pipelined requests to one pooled write buffer that
//! is written in a single call. A connection holds its read and write buffers only while they hold
//! bytes: not while its request is with a worker, nor once it has been idle for a while, so that
//! thousands of calls in flight or idle keep-alive connections do not each keep 16 KiB.
//! Every protocol fault is answered with the gateway's JSON error body and, where the framing can no
//! longer be trusted, the connection is closed (no request smuggling).

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use may::net::{TcpListener, TcpStream};

use super::{
    peer_state, reason_phrase, BodyStream, Handler, Limits, Method, Peer, Probe, Request, Response,
    StreamPoll, CONTINUE_100, STREAM_POLL_WAIT,
};
use crate::error::{ApiError, ErrorKind};
use crate::log;
use crate::objpool::{ObjPool, Pooled, Recycle};

/// Initial size of a connection's read buffer; it grows up to `header_bytes_max` for large heads.
const READ_BUF_BYTES_INITIAL: usize = 8 * 1024;
/// Pending pipelined responses are written once the write buffer holds this much.
const WRITE_BUF_FLUSH_BYTES: usize = 64 * 1024;
/// While a stream's chunks flow, how often the socket is looked at for a client that reset the
/// connection (a write to it fails anyway, one chunk later).
const STREAM_PEER_CHECK_EVERY: Duration = Duration::from_millis(50);
/// Longest chunk-size line (with extensions) or trailer line of a chunked body.
const CHUNK_LINE_BYTES_MAX: usize = 4 * 1024;
/// Most bytes of trailer fields after the last chunk.
const CHUNK_TRAILER_BYTES_MAX: usize = 16 * 1024;
/// A request body buffer larger than this is not kept for the connection's next request.
const BODY_BUF_KEEP_BYTES_MAX: usize = 64 * 1024;
/// First allocation step of a Content-Length body that is not yet in the read buffer.
const BODY_READ_STEP_BYTES: usize = 64 * 1024;
/// How often an idle keep-alive connection looks at the stop flag.
const IDLE_POLL_MS: u64 = 500;
/// After an error response: how long and how much unread input is drained before closing, so the
/// client sees the response rather than a reset.
const LINGER_MS: u64 = 1_000;
const LINGER_BYTES_MAX: usize = 1024 * 1024;
/// Accept errors (e.g. out of file descriptors) back off this long instead of spinning.
const ACCEPT_ERROR_BACKOFF_MS: u64 = 20;
/// While accept() keeps failing for lack of file descriptors, one log line per this period.
const FD_EXHAUSTED_LOG_INTERVAL_MS: u64 = 10_000;
/// `Retry-After` (seconds) of the 503 answers to a connection past `connections_max` or a body
/// past `body_buffer_bytes_max`.
const OVERLOAD_RETRY_AFTER_S: u32 = 1;
/// Pending connections the kernel queues for the accept loop.
const ACCEPT_BACKLOG: libc::c_int = 4096;
/// Stack of the accept coroutine: it only accepts and spawns.
const ACCEPT_STACK_BYTES: usize = 64 * 1024;
/// Longest client-supplied `x-request-id` that is echoed.
const REQUEST_ID_BYTES_MAX: usize = 128;
/// Smallest read timeout handed to the socket (a zero timeout means "none" to the OS).
const READ_TIMEOUT_MIN: Duration = Duration::from_millis(1);

const _: () = assert!(CHUNK_LINE_BYTES_MAX < READ_BUF_BYTES_INITIAL);
const _: () = assert!(REQUEST_ID_BYTES_MAX <= 128);
const _: () = assert!(FD_EXHAUSTED_LOG_INTERVAL_MS >= 100 * ACCEPT_ERROR_BACKOFF_MS);

/// Counters of one listener (relaxed atomics).
#[derive(Default)]
pub struct FrontStats {
    pub connections_accepted: AtomicU64,
    pub connections_active: AtomicU64,
    pub requests: AtomicU64,
    /// Requests being handled or whose response is being written.
    pub requests_in_flight: AtomicU64,
    pub bad_requests: AtomicU64,
    pub headers_too_large: AtomicU64,
    pub bodies_too_large: AtomicU64,
    /// Header, body and write timeouts (the connection is closed).
    pub timeouts: AtomicU64,
    pub handler_panics: AtomicU64,
    /// Streamed responses cut short because the client went away or a write failed.
    pub streams_cancelled: AtomicU64,
    /// Keep-alive connections closed after `idle_timeout` without a request (not an error).
    pub idle_timeouts: AtomicU64,
    /// Connections answered 503 and closed at once because `connections_max` were open (not
    /// counted in `connections_accepted`).
    pub connections_refused: AtomicU64,
    /// Failed accept() calls for lack of file descriptors (EMFILE, ENFILE). The pending
    /// connection stays in the kernel's queue and is tried again after a short back-off.
    pub accept_fd_exhausted: AtomicU64,
    /// Bytes of request bodies buffered now (what `body_buffer_bytes_max` bounds).
    pub body_buffer_bytes: AtomicU64,
    /// Bodies refused 503 because they would have taken the buffered bytes past
    /// `body_buffer_bytes_max`.
    pub body_buffer_refusals: AtomicU64,
    /// Requests the handler answered from the head alone ([`Handler::admit`]), body unread.
    pub requests_answered_before_body: AtomicU64,
}

impl FrontStats {
    pub fn to_json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "connections_accepted": get(&self.connections_accepted),
            "connections_active": get(&self.connections_active),
            "requests": get(&self.requests),
            "requests_in_flight": get(&self.requests_in_flight),
            "bad_requests": get(&self.bad_requests),
            "headers_too_large": get(&self.headers_too_large),
            "bodies_too_large": get(&self.bodies_too_large),
            "timeouts": get(&self.timeouts),
            "handler_panics": get(&self.handler_panics),
            "streams_cancelled": get(&self.streams_cancelled),
            "idle_timeouts": get(&self.idle_timeouts),
            "connections_refused": get(&self.connections_refused),
            "accept_fd_exhausted": get(&self.accept_fd_exhausted),
            "body_buffer_bytes": get(&self.body_buffer_bytes),
            "body_buffer_refusals": get(&self.body_buffer_refusals),
            "requests_answered_before_body": get(&self.requests_answered_before_body),
        })
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What every coroutine of one listener shares. Replaced as a whole by
/// [`ServerHandle::set_limits`]: a connection keeps the `Shared` it was accepted with.
struct Shared {
    limits: Limits,
    handler: Arc<dyn Handler>,
    buffers: Arc<ObjPool<ConnBuf>>,
    stats: Arc<FrontStats>,
    /// The same flag in every version of `Shared` of a listener.
    stopping: Arc<AtomicBool>,
}

/// A running listener.
pub struct ServerHandle {
    local_addr: SocketAddr,
    stats: Arc<FrontStats>,
    /// The version of `Shared` that newly accepted connections get.
    current: Arc<arc_swap::ArcSwap<Shared>>,
    /// True while the accept loop runs (false once it returned or unwound).
    accepting: Arc<AtomicBool>,
    accept: may::coroutine::Coroutine,
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
    pub fn stats(&self) -> &Arc<FrontStats> {
        &self.stats
    }
    /// Whether the accept loop is running: false after [`ServerHandle::stop_accepting`] or if it
    /// died (for the service watchdog).
    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    /// New limits for connections accepted from now on (config reload); open connections keep
    /// theirs until they close.
    pub fn set_limits(&self, limits: Limits) {
        let old = self.current.load_full();
        self.current.store(Arc::new(Shared {
            limits,
            handler: Arc::clone(&old.handler),
            buffers: Arc::clone(&old.buffers),
            stats: Arc::clone(&old.stats),
            stopping: Arc::clone(&old.stopping),
        }));
    }

    /// Stop accepting new connections; open connections finish their current request, then close.
    /// The listening socket is closed promptly, so new connects are refused. Idempotent.
    pub fn stop_accepting(&self) {
        if self.current.load().stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        // SAFETY: cancelling makes the accept coroutine unwind at its current (or next) yield
        // point. It only owns the listener, an `Arc` of the current `Shared` and the `accepting`
        // guard, all released by unwinding (the guard clears the flag), and it holds no lock or
        // half-done state: between yields it either accepts or spawns.
        unsafe { self.accept.cancel() };
    }
}

/// Serve `listener` (already bound) with `handler`, one coroutine per connection.
/// `buffers` lends the read and write buffers of connections.
pub fn serve(
    listener: std::net::TcpListener,
    limits: Limits,
    handler: Arc<dyn Handler>,
    buffers: Arc<ObjPool<ConnBuf>>,
) -> io::Result<ServerHandle> {
    use std::os::unix::io::{FromRawFd, IntoRawFd};

    let local_addr = listener.local_addr()?;
    let fd = listener.into_raw_fd();
    // std binds with a backlog of 128, which overflows when hundreds of clients connect at once
    // (their SYNs are dropped and retried seconds later). Listening again on a listening socket
    // only raises the backlog (capped by net.core.somaxconn); failing to do so is harmless.
    // SAFETY: `fd` is a valid, open listening socket owned by this function.
    let _ = unsafe { libc::listen(fd, ACCEPT_BACKLOG) };
    // SAFETY: `fd` was just released by an owned, bound std listener, so ownership moves to the
    // may listener exactly once. may's `from_raw_fd` panics if it cannot register the socket with
    // its event loop; that start-up failure becomes an error here (the fd is then leaked, once).
    let listener = catch_unwind(|| unsafe { TcpListener::from_raw_fd(fd) })
        .map_err(|_| io::Error::other("cannot register the listener with the may event loop"))?;

    let stats = Arc::new(FrontStats::default());
    let shared = Arc::new(Shared {
        limits,
        handler,
        buffers,
        stats: Arc::clone(&stats),
        stopping: Arc::new(AtomicBool::new(false)),
    });
    let current = Arc::new(arc_swap::ArcSwap::new(shared));
    let accepting = Arc::new(AtomicBool::new(true));
    let accept_current = Arc::clone(&current);
    let accept_alive = AcceptingGuard(Arc::clone(&accepting));
    // SAFETY: `spawn` is unsafe because a coroutine may move between OS threads at yield points, so
    // thread-local state must not be relied upon across them, and its stack is fixed. The accept
    // loop touches no thread-locals and needs little stack (it only accepts and spawns).
    let join = unsafe {
        may::coroutine::Builder::new()
            .stack_size(super::stack_words(ACCEPT_STACK_BYTES))
            .spawn(move || {
                let _alive = accept_alive;
                accept_loop(listener, accept_current)
            })
    }?;
    Ok(ServerHandle {
        local_addr,
        stats,
        current,
        accepting,
        accept: join.coroutine().clone(),
    })
}

/// Clears the listener's `accepting` flag when the accept coroutine ends, even by unwinding.
struct AcceptingGuard(Arc<AtomicBool>);

impl Drop for AcceptingGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn accept_loop(listener: TcpListener, current: Arc<arc_swap::ArcSwap<Shared>>) {
    let stopping = Arc::clone(&current.load().stopping);
    let mut fd_exhausted = FdExhaustedLog::default();
    while !stopping.load(Ordering::Acquire) {
        let stream = match listener.accept() {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                    bump(&current.load().stats.accept_fd_exhausted);
                    fd_exhausted.note(&e);
                }
                // Nothing to answer; back off instead of spinning.
                may::coroutine::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS));
                continue;
            }
        };
        if stopping.load(Ordering::Acquire) {
            break; // dropping the stream closes it unserved
        }
        // The limits current now (a reload may have changed them while accept() waited).
        let conn_shared = current.load_full();
        let stats = &conn_shared.stats;
        // Only this coroutine adds connections, so the count cannot pass the cap between the
        // check and the increment.
        if stats.connections_active.load(Ordering::Relaxed)
            >= conn_shared.limits.connections_max as u64
        {
            bump(&stats.connections_refused);
            refuse_connection(&stream);
            continue;
        }
        stats.connections_active.fetch_add(1, Ordering::Relaxed);
        let active = ActiveGuard(Arc::clone(stats));
        bump(&stats.connections_accepted);
        let stack_bytes = conn_shared.limits.coroutine_stack_bytes;
        // Small responses must not wait for Nagle; failure only costs latency.
        let _ = stream.set_nodelay(true);
        // SAFETY: the connection coroutine keeps no reference to thread-local state across a yield
        // (all its state lives on its own stack or behind `Arc`s), and handlers are documented to
        // wait only on may-aware primitives. Its stack size comes from the validated limits.
        let spawned = unsafe {
            may::coroutine::Builder::new()
                .stack_size(super::stack_words(stack_bytes))
                .spawn(move || {
                    let _active = active;
                    serve_connection(stream, conn_shared)
                })
        };
        // A failed spawn drops the stream (closing it) and the guard; the JoinHandle of a good
        // one is detached.
        drop(spawned);
    }
}

/// Rate-limited logging of accept() failing for lack of file descriptors.
#[derive(Default)]
struct FdExhaustedLog {
    last: Option<Instant>,
    /// Failures since the last line.
    unlogged: u64,
}

impl FdExhaustedLog {
    fn note(&mut self, e: &io::Error) {
        self.unlogged += 1;
        let interval = Duration::from_millis(FD_EXHAUSTED_LOG_INTERVAL_MS);
        if self.last.is_some_and(|at| at.elapsed() < interval) {
            return;
        }
        self.last = Some(Instant::now());
        let failures = std::mem::take(&mut self.unlogged).to_string();
        log::warn(
            "cannot accept connections: out of file descriptors (raise LimitNOFILE or lower \
             server.connections_max)",
            &[("error", &e.to_string()), ("failures", &failures)],
        );
    }
}

/// Answer a connection past `connections_max` with a short 503 and close it, without reading
/// anything and without waiting: the answer goes out with one non-blocking send into the
/// empty socket buffer. (A request the client already sent is left unread; the close then
/// resets the connection, which on Linux still lets the client read the answer before it.)
fn refuse_connection(stream: &TcpStream) {
    let err = ApiError::new(
        ErrorKind::Overloaded,
        "too_many_connections",
        "the gateway has too many open connections; retry later",
    )
    .with_retry_after(OVERLOAD_RETRY_AFTER_S);
    let response = Response::error(&err);
    let mut out = Vec::with_capacity(384);
    let id = generate_request_id();
    let body = write_response_head(
        &mut out,
        &response,
        &id,
        ConnHeader::Close,
        OutFraming::Length,
    );
    out.extend_from_slice(body);
    let _ = super::send_now(stream.as_raw_fd(), &out);
    let _ = stream.shutdown(Shutdown::Write);
}

/// Keeps `connections_active` right even if the connection coroutine unwinds.
struct ActiveGuard(Arc<FrontStats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_write_timeout(Some(shared.limits.write_timeout));
    let mut conn = Conn::new(stream, &shared);
    let end = loop {
        if let Err(end) = conn.serve_one() {
            break end;
        }
    };
    if end == End::Linger {
        conn.linger_close();
    }
}

/// Why a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// EOF, idle timeout, I/O error: just close.
    Quiet,
    /// A final response was produced: write it, half-close, drain briefly, close.
    Linger,
}

/// A protocol fault answered with a JSON error, after which the connection closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    BadRequest(&'static str, &'static str),
    HeadersTooLarge(&'static str),
    PayloadTooLarge,
    Timeout(&'static str),
    /// The body would take the listener's buffered body bytes past `body_buffer_bytes_max`.
    BodyBufferFull,
}

impl Fault {
    fn count(self, stats: &FrontStats) {
        match self {
            Fault::BadRequest(..) => bump(&stats.bad_requests),
            Fault::HeadersTooLarge(_) => bump(&stats.headers_too_large),
            Fault::PayloadTooLarge => bump(&stats.bodies_too_large),
            Fault::Timeout(_) => bump(&stats.timeouts),
            Fault::BodyBufferFull => bump(&stats.body_buffer_refusals),
        }
    }

    fn error(self) -> ApiError {
        match self {
            Fault::BadRequest(code, message) => ApiError::new(ErrorKind::BadRequest, code, message),
            Fault::HeadersTooLarge(message) => {
                ApiError::new(ErrorKind::HeadersTooLarge, "headers_too_large", message)
            }
            Fault::PayloadTooLarge => ApiError::new(
                ErrorKind::PayloadTooLarge,
                "payload_too_large",
                "the request body exceeds the size limit",
            ),
            Fault::Timeout(message) => {
                ApiError::new(ErrorKind::ClientTimeout, "client_timeout", message)
            }
            Fault::BodyBufferFull => ApiError::new(
                ErrorKind::Overloaded,
                "body_buffer_full",
                "the gateway is buffering too many request bodies; retry later",
            )
            .with_retry_after(OVERLOAD_RETRY_AFTER_S),
        }
    }
}

/// How a request's body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyKind {
    None,
    Length(u64),
    Chunked,
}

/// What the connection loop needs from a parsed request head (the rest went into `Request`).
#[derive(Debug)]
struct Head {
    /// Bytes of the request line and header block.
    len: usize,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    minor_version: u8,
    keep_alive: bool,
    expect_continue: bool,
    is_head: bool,
    /// A framing fault is reported after the request id is known, so its error echoes it.
    body: Result<BodyKind, Fault>,
}

struct Conn<'s> {
    stream: TcpStream,
    shared: &'s Shared,
    /// Lent by `shared.buffers` while bytes are read into it or wait in it (`None` otherwise,
    /// and then `rpos == rend == 0`). Always fully initialised (`len` is the usable size); bytes
    /// `rpos..rend` are unconsumed.
    rbuf: Option<Pooled<ConnBuf>>,
    rpos: usize,
    rend: usize,
    /// Responses not yet written; lent while it holds some.
    wbuf: Option<Pooled<ConnBuf>>,
    /// Responses in `wbuf` counted in `requests_in_flight`.
    wpending: u64,
    req: Request,
    /// The current request's head was parsed (its path and headers are known).
    head_parsed: bool,
    /// The read timeout last given to the socket (setting it is a system call).
    read_timeout: Option<Duration>,
    /// Bytes of `body_buffer_bytes` this connection's current request holds.
    body_reserved: usize,
    /// When the current request's body must be complete (`body_timeout` after its head).
    body_deadline: Instant,
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if self.wpending > 0 {
            let in_flight = &self.shared.stats.requests_in_flight;
            in_flight.fetch_sub(self.wpending, Ordering::Relaxed);
        }
        self.release_body();
    }
}

impl<'s> Conn<'s> {
    fn new(stream: TcpStream, shared: &'s Shared) -> Self {
        let fd = stream.as_raw_fd();
        Conn {
            stream,
            shared,
            rbuf: None,
            rpos: 0,
            rend: 0,
            wbuf: None,
            wpending: 0,
            req: Request::empty(fd),
            head_parsed: false,
            read_timeout: None,
            body_reserved: 0,
            body_deadline: Instant::now(),
        }
    }

    fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
    }

    /// Read, handle and answer one request. `Err` ends the connection.
    fn serve_one(&mut self) -> Result<(), End> {
        loop {
            // Stray CRLFs between requests are tolerated (RFC 9112 section 2.2).
            while self.rpos < self.rend && matches!(self.unread()[0], b'\r' | b'\n') {
                self.consume(1);
            }
            if self.rpos < self.rend {
                break;
            }
            // Nothing buffered: pending pipelined responses go out before waiting.
            self.flush()?;
            self.wait_idle()?;
        }
        let head = self.read_head()?;
        let body = match head.body {
            Ok(kind) => kind,
            Err(fault) => return self.fail(fault),
        };
        let handler = &self.shared.handler;
        let req = &self.req;
        let early = catch_unwind(AssertUnwindSafe(|| handler.admit(req))).unwrap_or_else(|_| {
            bump(&self.shared.stats.handler_panics);
            Some(Response::error(&ApiError::internal()))
        });
        if let Some(response) = early {
            return self.answer_before_body(response, &head, body);
        }
        self.body_deadline = Instant::now() + self.shared.limits.body_timeout;
        match body {
            BodyKind::None => {}
            BodyKind::Length(n) => self.read_sized_body(n, &head)?,
            BodyKind::Chunked => self.read_chunked_body(&head)?,
        }
        self.dispatch(&head)
    }

    /// Wait for the first bytes of the next request, up to `idle_timeout`, closing early when the
    /// server stops. The connection holds no buffer while it waits: it watches its socket with a
    /// peek and borrows the read buffer when bytes are there. (Reading into a lent buffer for a
    /// first poll made every connection idle after its answer, or new and not yet sent on, hold
    /// 8 KiB for that poll, and the pool keep what was lent at the peak; the peek's system call
    /// cost nothing measurable.)
    fn wait_idle(&mut self) -> Result<(), End> {
        debug_assert_eq!(self.rpos, self.rend);
        self.rbuf = None;
        let deadline = Instant::now() + self.shared.limits.idle_timeout;
        loop {
            if self.stopping() {
                return Err(End::Quiet);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bump(&self.shared.stats.idle_timeouts);
                return Err(End::Quiet);
            }
            let wait = left.min(Duration::from_millis(IDLE_POLL_MS));
            // Bytes arrived: read them now (the read does not wait).
            let got = match self.peek(wait) {
                Ok(n) if n > 0 => self.fill(wait, READ_BUF_BYTES_INITIAL),
                other => other,
            };
            match got {
                Ok(0) => return Err(End::Quiet),
                Ok(_) => return Ok(()),
                Err(e) if is_timeout(&e) => continue,
                Err(_) => return Err(End::Quiet),
            }
        }
    }

    /// Wait up to `timeout` for bytes without taking them (`Ok(0)`: the peer closed).
    fn peek(&mut self, timeout: Duration) -> io::Result<usize> {
        self.set_read_timeout(timeout)?;
        let mut one = [0u8; 1];
        loop {
            match self.stream.peek(&mut one) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }

    /// The bytes read and not yet consumed.
    fn unread(&self) -> &[u8] {
        unread(&self.rbuf, self.rpos, self.rend)
    }

    /// Give the read buffer back to the pool when it holds nothing unconsumed.
    fn return_read_buf(&mut self) {
        if self.rpos == self.rend {
            self.rbuf = None;
        }
    }

    /// Parse the request head, reading more under the header deadline while it is incomplete.
    fn read_head(&mut self) -> Result<Head, End> {
        // Errors before the head is parsed get a fresh id, not the previous request's.
        self.req.id.clear();
        self.head_parsed = false;
        let shared = self.shared;
        let limits = &shared.limits;
        let deadline = Instant::now() + limits.header_read_timeout;
        let cap = limits.header_bytes_max.max(READ_BUF_BYTES_INITIAL);
        loop {
            let buf = unread(&self.rbuf, self.rpos, self.rend);
            match parse_head(buf, limits.header_lines_max, &mut self.req) {
                Ok(Some(head)) => {
                    self.head_parsed = true;
                    if head.len > limits.header_bytes_max {
                        return self.fail(Fault::HeadersTooLarge("the request head is too large"));
                    }
                    self.consume(head.len);
                    return Ok(head);
                }
                Ok(None) => {}
                Err(fault) => return self.fail(fault),
            }
            if self.rend - self.rpos >= limits.header_bytes_max {
                return self.fail(Fault::HeadersTooLarge("the request head is too large"));
            }
            self.flush()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return self.fail(Fault::Timeout("the request head was not received in time"));
            }
            match self.fill(left, cap) {
                Ok(0) => return Err(End::Quiet),
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {
                    return self.fail(Fault::Timeout("the request head was not received in time"))
                }
                Err(_) => return Err(End::Quiet),
            }
        }
    }

    fn read_sized_body(&mut self, len: u64, head: &Head) -> Result<(), End> {
        let shared = self.shared;
        let limits = &shared.limits;
        let len = match usize::try_from(len) {
            Ok(n) if n <= limits.body_bytes_max => n,
            _ => return self.fail(Fault::PayloadTooLarge),
        };
        let have = (self.rend - self.rpos).min(len);
        self.reserve_body(have)?;
        let unread = unread(&self.rbuf, self.rpos, self.rpos + have);
        self.req.body.extend_from_slice(unread);
        self.consume(have);
        if have == len {
            return Ok(());
        }
        if head.expect_continue && have == 0 && head.minor_version == 1 {
            lend(&mut self.wbuf, &self.shared.buffers).extend_from_slice(CONTINUE_100);
        }
        self.flush()?;
        // The rest is read straight into the body, never past it (the next pipelined request
        // stays in the socket). The body grows with what arrived, so a large Content-Length
        // alone does not make the server allocate it (nor take it from the body budget).
        let mut filled = have;
        while filled < len {
            if filled == self.req.body.len() {
                let grown = filled.saturating_mul(2).max(BODY_READ_STEP_BYTES).min(len);
                self.reserve_body(grown)?;
                self.req.body.resize(grown, 0);
            }
            let wait = self.body_wait()?;
            if self.set_read_timeout(wait).is_err() {
                return Err(End::Quiet);
            }
            match self.stream.read(&mut self.req.body[filled..]) {
                Ok(0) => return Err(End::Quiet),
                Ok(n) => filled += n,
                Err(e) if is_timeout(&e) => return self.fail(self.body_timeout_fault()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(End::Quiet),
            }
        }
        Ok(())
    }

    fn read_chunked_body(&mut self, head: &Head) -> Result<(), End> {
        let body_max = self.shared.limits.body_bytes_max;
        let mut decoder = ChunkedDecoder::new();
        let mut asked_continue = !head.expect_continue || head.minor_version == 0;
        if self.rend > self.rpos {
            asked_continue = true; // the client did not wait for a 100
        }
        loop {
            // Decoded data is never longer than its encoding: with room for all the input, the
            // decoder never grows the body past what was taken from the budget.
            let room = (self.req.body.len() + (self.rend - self.rpos)).min(body_max);
            if room > self.req.body.capacity() {
                let grown = self.req.body.capacity().saturating_mul(2);
                self.reserve_body(room.max(grown).min(body_max))?;
            }
            let input = unread(&self.rbuf, self.rpos, self.rend);
            let step = decoder.decode(input, &mut self.req.body, body_max);
            let (used, done) = match step {
                Ok(step) => step,
                Err(ChunkError::TooLarge) => return self.fail(Fault::PayloadTooLarge),
                Err(ChunkError::Invalid(message)) => {
                    return self.fail(Fault::BadRequest("invalid_chunk", message))
                }
            };
            self.consume(used);
            if done {
                return Ok(());
            }
            if !asked_continue {
                lend(&mut self.wbuf, &self.shared.buffers).extend_from_slice(CONTINUE_100);
                asked_continue = true;
            }
            self.flush()?;
            let wait = self.body_wait()?;
            let cap = self
                .rbuf
                .as_ref()
                .map_or(READ_BUF_BYTES_INITIAL, |b| b.0.len());
            match self.fill(wait, cap) {
                Ok(0) => return Err(End::Quiet),
                Ok(_) => {}
                Err(e) if is_timeout(&e) => return self.fail(self.body_timeout_fault()),
                Err(_) => return Err(End::Quiet),
            }
        }
    }

    /// How long the next body read may wait: the gap bound, cut to what is left of the whole
    /// body's deadline; a fault when that has passed.
    fn body_wait(&mut self) -> Result<Duration, End> {
        let left = self.body_deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return self.fail(self.body_timeout_fault());
        }
        Ok(left.min(self.shared.limits.body_read_timeout))
    }

    /// The 408 for a body read that timed out: the whole-body deadline, or one gap too long.
    fn body_timeout_fault(&self) -> Fault {
        if Instant::now() >= self.body_deadline {
            Fault::Timeout("the request body was not received within the time allowed for it")
        } else {
            Fault::Timeout("the request body was not received in time")
        }
    }

    /// Make sure the body buffer can hold `total` bytes, taking what it did not hold yet from
    /// the listener's body budget first. Refused (503, connection closed) past the budget.
    fn reserve_body(&mut self, total: usize) -> Result<(), End> {
        if total > self.body_reserved {
            let extra = (total - self.body_reserved) as u64;
            let max = self.shared.limits.body_buffer_bytes_max as u64;
            let buffered = &self.shared.stats.body_buffer_bytes;
            let taken = buffered.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(extra).filter(|&sum| sum <= max)
            });
            if taken.is_err() {
                return self.fail(Fault::BodyBufferFull);
            }
            self.body_reserved = total;
        }
        let len = self.req.body.len();
        if total > len {
            self.req.body.reserve_exact(total - len);
        }
        Ok(())
    }

    /// The request's body is no longer needed: return its bytes to the budget and drop a large
    /// buffer (a small one is kept for the connection's next request; `connections_max` bounds
    /// those).
    fn release_body(&mut self) {
        if self.req.body.capacity() > BODY_BUF_KEEP_BYTES_MAX {
            self.req.body = Vec::new();
        } else {
            self.req.body.clear();
        }
        let reserved = std::mem::take(&mut self.body_reserved) as u64;
        if reserved > 0 {
            let buffered = &self.shared.stats.body_buffer_bytes;
            buffered.fetch_sub(reserved, Ordering::AcqRel);
        }
    }

    /// Answer a request that [`Handler::admit`] refused, without reading its body. The
    /// connection stays open only when there is no body or all of it is already buffered (it
    /// is then skipped); otherwise it closes after the answer, since the framing of the next
    /// request is behind the unread body.
    fn answer_before_body(
        &mut self,
        mut response: Response,
        head: &Head,
        body: BodyKind,
    ) -> Result<(), End> {
        if let Some(mut stream) = response.stream.take() {
            stream.cancel(); // an early answer is a plain one
        }
        let stats = &self.shared.stats;
        bump(&stats.requests);
        bump(&stats.requests_answered_before_body);
        stats.requests_in_flight.fetch_add(1, Ordering::Relaxed);
        self.wpending += 1;
        let buffered = self.rend - self.rpos;
        let skippable = match body {
            BodyKind::None => Some(0),
            BodyKind::Length(n) => usize::try_from(n).ok().filter(|&n| n <= buffered),
            BodyKind::Chunked => None,
        };
        if let Some(n) = skippable {
            self.consume(n);
        }
        let keep_alive = skippable.is_some() && head.keep_alive && !self.stopping();
        let conn_header = match (keep_alive, head.minor_version) {
            (false, _) => ConnHeader::Close,
            (true, 0) => ConnHeader::KeepAlive,
            (true, _) => ConnHeader::None,
        };
        self.queue_response(&response, conn_header, head.is_head)?;
        if keep_alive {
            Ok(())
        } else {
            Err(End::Linger)
        }
    }

    /// Call the handler and queue its response.
    fn dispatch(&mut self, head: &Head) -> Result<(), End> {
        let stats = &self.shared.stats;
        bump(&stats.requests);
        stats.requests_in_flight.fetch_add(1, Ordering::Relaxed);
        self.wpending += 1;
        let handler = &self.shared.handler;
        // While the handler runs (a worker makes the upstream call), a read buffer with nothing
        // pipelined in it serves other connections.
        self.return_read_buf();
        // A 1xx probe may go out while the handler runs only if nothing is queued before it.
        let probe = if head.minor_version >= 1 && self.wbuf.is_none() {
            Probe::Ready
        } else {
            Probe::Off
        };
        self.req.probe.store(probe as u8, Ordering::Release);
        let req = &mut self.req;
        let mut response =
            catch_unwind(AssertUnwindSafe(|| handler.handle(req))).unwrap_or_else(|_| {
                bump(&stats.handler_panics);
                Response::error(&ApiError::internal())
            });
        self.req.probe.store(Probe::Off as u8, Ordering::Release);
        self.release_body();
        if let Some(stream) = response.stream.take() {
            return self.stream_response(&response, stream, head);
        }
        let keep_alive = head.keep_alive && !self.stopping();
        let conn_header = match (keep_alive, head.minor_version) {
            (false, _) => ConnHeader::Close,
            (true, 0) => ConnHeader::KeepAlive,
            (true, _) => ConnHeader::None,
        };
        self.queue_response(&response, conn_header, head.is_head)?;
        if !keep_alive {
            return Err(End::Linger);
        }
        if self
            .wbuf
            .as_ref()
            .is_some_and(|b| b.0.len() >= WRITE_BUF_FLUSH_BYTES)
        {
            self.flush()?;
        }
        Ok(())
    }

    /// Write a streamed response: the head, then every chunk as soon as the stream yields it
    /// (chunked encoding on HTTP/1.1; close-delimited on HTTP/1.0). While the stream has nothing,
    /// the client is checked; a client that went away cancels the stream.
    fn stream_response(
        &mut self,
        response: &Response,
        mut stream: Box<dyn BodyStream>,
        head: &Head,
    ) -> Result<(), End> {
        let chunked = head.minor_version >= 1;
        let keep_alive = chunked && head.keep_alive && !self.stopping();
        let conn_header = if keep_alive {
            ConnHeader::None
        } else {
            ConnHeader::Close
        };
        let id = self.response_id();
        let framing = if chunked {
            OutFraming::Chunked
        } else {
            OutFraming::UntilClose
        };
        let wbuf = lend(&mut self.wbuf, &self.shared.buffers);
        write_response_head(wbuf, response, &id, conn_header, framing);
        if head.is_head {
            stream.cancel();
            return if keep_alive { Ok(()) } else { Err(End::Linger) };
        }
        // The head goes out at once (with any pipelined responses before it).
        let result = self.pump(&mut *stream, chunked);
        let pending = std::mem::take(&mut self.wpending);
        self.shared
            .stats
            .requests_in_flight
            .fetch_sub(pending, Ordering::Relaxed);
        if result.is_err() {
            stream.cancel();
            bump(&self.shared.stats.streams_cancelled);
            return Err(End::Quiet);
        }
        if keep_alive {
            Ok(())
        } else {
            Err(End::Linger)
        }
    }

    /// Move chunks from `stream` to the socket until the stream ends or the client is gone. The
    /// chunks that are ready together go out in one write (at most [`WRITE_BUF_FLUSH_BYTES`]
    /// gathered), and each chunk's allocation goes back to the stream. A client that reset the
    /// connection is noticed at the next failed write, or when the stream is quiet, by a look at
    /// the socket at most every [`STREAM_PEER_CHECK_EVERY`] while chunks flow.
    fn pump(&mut self, stream: &mut dyn BodyStream, chunked: bool) -> Result<(), End> {
        self.write_all_counted(None)?;
        let mut peer_checked = Instant::now();
        loop {
            let mut next = Some(stream.poll(STREAM_POLL_WAIT));
            let mut wrote = false;
            let mut ended = false;
            while let Some(poll) = next.take() {
                match poll {
                    StreamPoll::Chunk(bytes) => {
                        let wbuf = lend(&mut self.wbuf, &self.shared.buffers);
                        if !bytes.is_empty() {
                            frame_chunk(wbuf, &bytes, chunked);
                            wrote = true;
                        }
                        let full = wbuf.len() >= WRITE_BUF_FLUSH_BYTES;
                        stream.recycle(bytes);
                        if !full {
                            next = stream.try_poll();
                        }
                    }
                    StreamPoll::Pending => {}
                    StreamPoll::End => {
                        stream.finish();
                        if chunked {
                            lend(&mut self.wbuf, &self.shared.buffers)
                                .extend_from_slice(b"0\r\n\r\n");
                        }
                        ended = true;
                    }
                }
            }
            if self.wbuf.is_some() {
                self.write_all_counted(None)?;
            }
            if ended {
                return Ok(());
            }
            // End-of-file alone is not the end: a client may half-close its side and still
            // read. A closed client answers the chunks written since with a reset.
            if !wrote || peer_checked.elapsed() >= STREAM_PEER_CHECK_EVERY {
                peer_checked = Instant::now();
                if peer_state(self.req.fd) == Peer::Gone {
                    return Err(End::Quiet);
                }
            }
        }
    }

    /// The request id to answer with: the request's, or a fresh one when it has none yet.
    fn response_id(&self) -> String {
        if is_valid_request_id(self.req.id.as_bytes()) {
            self.req.id.clone()
        } else {
            generate_request_id()
        }
    }

    /// Append a response to the write buffer; a large body is written straight from the response.
    fn queue_response(
        &mut self,
        response: &Response,
        conn_header: ConnHeader,
        head_only: bool,
    ) -> Result<(), End> {
        let fresh_id;
        let id = if is_valid_request_id(self.req.id.as_bytes()) {
            self.req.id.as_str()
        } else {
            fresh_id = generate_request_id();
            fresh_id.as_str()
        };
        let wbuf = lend(&mut self.wbuf, &self.shared.buffers);
        let body = write_response_head(wbuf, response, id, conn_header, OutFraming::Length);
        if head_only || body.is_empty() {
            return Ok(());
        }
        if wbuf.len() + body.len() <= WRITE_BUF_FLUSH_BYTES {
            wbuf.extend_from_slice(body);
            return Ok(());
        }
        // Large body: write what is queued, then the body itself, without copying it.
        let pending = std::mem::take(&mut self.wpending);
        let result = self
            .write_all_counted(None)
            .and_then(|()| self.write_all_counted(Some(body)));
        self.shared
            .stats
            .requests_in_flight
            .fetch_sub(pending, Ordering::Relaxed);
        result
    }

    /// Answer a protocol fault and end the connection. Once the head was parsed, the handler
    /// writes the error in the shape of the API the request speaks.
    fn fail<T>(&mut self, fault: Fault) -> Result<T, End> {
        fault.count(&self.shared.stats);
        if !is_valid_request_id(self.req.id.as_bytes()) {
            self.req.id = generate_request_id();
        }
        let err = fault.error();
        let response = if self.head_parsed {
            let (handler, req) = (&self.shared.handler, &self.req);
            catch_unwind(AssertUnwindSafe(|| handler.error_response(req, &err)))
                .unwrap_or_else(|_| Response::error(&err))
        } else {
            Response::error(&err)
        };
        self.queue_response(&response, ConnHeader::Close, false)?;
        Err(End::Linger)
    }

    /// Write every queued response.
    fn flush(&mut self) -> Result<(), End> {
        if self.wbuf.is_none() {
            return Ok(());
        }
        let result = self.write_all_counted(None);
        let pending = std::mem::take(&mut self.wpending);
        if pending > 0 {
            let in_flight = &self.shared.stats.requests_in_flight;
            in_flight.fetch_sub(pending, Ordering::Relaxed);
        }
        result
    }

    /// Write `extra`, or the write buffer (then given back to the pool) when `None`; a timeout is
    /// counted.
    fn write_all_counted(&mut self, extra: Option<&[u8]>) -> Result<(), End> {
        let result = match (extra, self.wbuf.take()) {
            (Some(bytes), wbuf) => {
                self.wbuf = wbuf;
                self.stream.write_all(bytes)
            }
            (None, Some(wbuf)) => self.stream.write_all(&wbuf.0),
            (None, None) => Ok(()),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                if is_timeout(&e) {
                    bump(&self.shared.stats.timeouts);
                }
                Err(End::Quiet)
            }
        }
    }

    /// Half-close after a final response and drain what the client still sends, briefly, so the
    /// response is not destroyed by a reset.
    fn linger_close(&mut self) {
        if self.flush().is_err() {
            return;
        }
        let _ = self.stream.shutdown(Shutdown::Write);
        let deadline = Instant::now() + Duration::from_millis(LINGER_MS);
        let mut drained = 0usize;
        while drained < LINGER_BYTES_MAX {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.set_read_timeout(left).is_err() {
                return;
            }
            let buf = lend_read(&mut self.rbuf, &self.shared.buffers);
            match self.stream.read(buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    }

    fn consume(&mut self, n: usize) {
        debug_assert!(self.rpos + n <= self.rend);
        self.rpos += n;
        if self.rpos == self.rend {
            self.rpos = 0;
            self.rend = 0;
        }
    }

    /// Read more input after `rend`, making room by compacting or growing up to `cap` bytes.
    fn fill(&mut self, timeout: Duration, cap: usize) -> io::Result<usize> {
        self.set_read_timeout(timeout)?;
        let rbuf = lend_read(&mut self.rbuf, &self.shared.buffers);
        if self.rend == rbuf.len() {
            if self.rpos > 0 {
                rbuf.copy_within(self.rpos..self.rend, 0);
                self.rend -= self.rpos;
                self.rpos = 0;
            } else if rbuf.len() < cap {
                let size = rbuf.len().saturating_mul(2).max(1).min(cap);
                rbuf.resize(size, 0);
            } else {
                return Err(io::Error::other("read buffer full"));
            }
        }
        loop {
            match self.stream.read(&mut rbuf[self.rend..]) {
                Ok(n) => {
                    self.rend += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        let timeout = Some(timeout.max(READ_TIMEOUT_MIN));
        if self.read_timeout != timeout {
            self.stream.set_read_timeout(timeout)?;
            self.read_timeout = timeout;
        }
        Ok(())
    }
}

/// Bytes `from..to` of a connection's read buffer (none when it has no buffer: then both are 0).
fn unread(rbuf: &Option<Pooled<ConnBuf>>, from: usize, to: usize) -> &[u8] {
    match rbuf {
        Some(buf) => &buf.0[from..to],
        None => &[],
    }
}

/// A connection buffer as a listener's pool keeps it: its bytes stay as they were (`Vec::len`
/// is how many are initialised), so a read buffer is lent again without being zero-filled again;
/// a write buffer is emptied when lent.
#[derive(Default)]
pub struct ConnBuf(pub Vec<u8>);

impl Recycle for ConnBuf {
    fn reset(&mut self) {}
    fn retained_bytes(&self) -> usize {
        self.0.capacity()
    }
}

/// The connection's write buffer, empty, borrowed from `pool` if it has none.
fn lend<'a>(
    slot: &'a mut Option<Pooled<ConnBuf>>,
    pool: &Arc<ObjPool<ConnBuf>>,
) -> &'a mut Vec<u8> {
    let buf = slot.get_or_insert_with(|| {
        let mut buf = pool.get();
        buf.0.clear();
        buf
    });
    &mut buf.0
}

/// The connection's read buffer, borrowed from `pool` if it has none: all of it is usable, at
/// least its initial size (only bytes never initialised before are zero-filled).
fn lend_read<'a>(
    slot: &'a mut Option<Pooled<ConnBuf>>,
    pool: &Arc<ObjPool<ConnBuf>>,
) -> &'a mut Vec<u8> {
    let buf = slot.get_or_insert_with(|| {
        let mut buf = pool.get();
        if buf.0.len() < READ_BUF_BYTES_INITIAL {
            buf.0.resize(READ_BUF_BYTES_INITIAL, 0);
        }
        buf
    });
    &mut buf.0
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

// ---------------------------------------------------------------------------------------------
// Request heads
// ---------------------------------------------------------------------------------------------

/// Header lines a head is first parsed with, in slots on the coroutine's stack; a head with more
/// (up to `header_lines_max`) is parsed again with slots on the heap. Connections keep no slots.
const HEADER_SLOTS_ON_STACK: usize = 32;

/// Parse a request head of at most `lines_max` header lines at the start of `buf` into `req`.
/// `Ok(None)`: incomplete, read more. `req` is only touched once the head is complete.
fn parse_head(buf: &[u8], lines_max: usize, req: &mut Request) -> Result<Option<Head>, Fault> {
    let lines_max = lines_max.max(1);
    let first = lines_max.min(HEADER_SLOTS_ON_STACK);
    let mut slots =
        [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADER_SLOTS_ON_STACK];
    match parse_head_with(buf, &mut slots[..first], req) {
        Err(Fault::HeadersTooLarge(_)) if lines_max > first => {
            let mut slots: Vec<MaybeUninit<httparse::Header<'_>>> =
                (0..lines_max).map(|_| MaybeUninit::uninit()).collect();
            parse_head_with(buf, &mut slots, req)
        }
        other => other,
    }
}

fn parse_head_with<'b>(
    buf: &'b [u8],
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
    req: &mut Request,
) -> Result<Option<Head>, Fault> {
    {
        let mut parsed = httparse::Request::new(&mut []);
        match parsed.parse_with_uninit_headers(buf, slots) {
            Ok(httparse::Status::Complete(len)) if has_bare_lf(&buf[..len]) => {
                Err(Fault::BadRequest(
                    "malformed_request",
                    "a line of the request head ends in a bare LF; lines must end in CRLF",
                ))
            }
            Ok(httparse::Status::Complete(len)) => fill_request(&parsed, len, req).map(Some),
            Ok(httparse::Status::Partial) => Ok(None),
            Err(httparse::Error::TooManyHeaders) => Err(Fault::HeadersTooLarge(
                "the request has too many header lines",
            )),
            Err(httparse::Error::Version) => Err(Fault::BadRequest(
                "unsupported_http_version",
                "only HTTP/1.0 and HTTP/1.1 are supported",
            )),
            Err(_) => Err(Fault::BadRequest(
                "malformed_request",
                "the request line or headers are malformed",
            )),
        }
    }
}

/// Whether a request head has an LF not preceded by CR. httparse takes a bare LF as the end of a
/// line (RFC 9112 allows that), so `a: 1\nb: 2` would be two fields here, while a proxy in
/// front that does not may see one: a request whose fields two parsers read differently is
/// refused rather than guessed at.
fn has_bare_lf(head: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in head {
        if b == b'\n' && prev != b'\r' {
            return true;
        }
        prev = b;
    }
    false
}

/// Copy a complete head into `req` and work out its framing.
fn fill_request(
    parsed: &httparse::Request<'_, '_>,
    len: usize,
    req: &mut Request,
) -> Result<Head, Fault> {
    let malformed = Fault::BadRequest("malformed_request", "the request line is malformed");
    let (Some(method), Some(target), Some(minor_version)) =
        (parsed.method, parsed.path, parsed.version)
    else {
        return Err(malformed);
    };
    // Origin-form only: absolute-form and `*` targets are not for a gateway endpoint.
    if !target.starts_with('/') {
        return Err(Fault::BadRequest(
            "malformed_request",
            "the request target must be an absolute path",
        ));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    req.method = parse_method(method);
    req.path.clear();
    req.path.push_str(path);
    req.query.clear();
    req.query.push_str(query);
    req.headers.clear();
    if req.body.capacity() > BODY_BUF_KEEP_BYTES_MAX {
        req.body = Vec::new();
    } else {
        req.body.clear();
    }
    req.id.clear();
    req.extension.take();

    let mut framing = Framing::default();
    for h in parsed.headers.iter() {
        framing.observe(h.name, h.value);
        if h.name.eq_ignore_ascii_case("x-request-id") && req.id.is_empty() {
            if let Ok(id) = std::str::from_utf8(h.value) {
                if is_valid_request_id(id.as_bytes()) {
                    req.id.push_str(id);
                }
            }
        }
        req.headers.push(h.name, h.value);
    }
    if req.id.is_empty() {
        req.id = generate_request_id();
    }
    req.received_at = Instant::now();

    let keep_alive = match minor_version {
        0 => framing.conn_keep_alive && !framing.conn_close,
        _ => !framing.conn_close,
    };
    Ok(Head {
        len,
        minor_version,
        keep_alive,
        expect_continue: framing.expect_continue,
        is_head: req.method == Method::Head,
        body: framing.body_kind(minor_version),
    })
}

fn parse_method(m: &str) -> Method {
    match m {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "OPTIONS" => Method::Options,
        "PATCH" => Method::Patch,
        _ => Method::Other,
    }
}

/// The headers that decide how a request is framed and whether the connection stays open.
#[derive(Default, Debug)]
struct Framing {
    content_length: Option<Result<u64, ()>>,
    content_length_count: u32,
    transfer_encoding_count: u32,
    transfer_encoding_chunked: bool,
    conn_close: bool,
    conn_keep_alive: bool,
    expect_continue: bool,
}

impl Framing {
    fn observe(&mut self, name: &str, value: &[u8]) {
        if name.eq_ignore_ascii_case("content-length") {
            self.content_length_count += 1;
            self.content_length = Some(parse_content_length(value).ok_or(()));
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            self.transfer_encoding_count += 1;
            self.transfer_encoding_chunked = value.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    self.conn_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.conn_keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            self.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
    }

    /// Strict framing: any ambiguity that a proxy in front could read differently is refused.
    fn body_kind(&self, minor_version: u8) -> Result<BodyKind, Fault> {
        let smuggling = |message| Fault::BadRequest("request_smuggling", message);
        if self.transfer_encoding_count > 0 {
            if self.content_length_count > 0 {
                return Err(smuggling(
                    "Content-Length and Transfer-Encoding must not both be present",
                ));
            }
            if minor_version == 0 {
                return Err(smuggling("Transfer-Encoding is not allowed in HTTP/1.0"));
            }
            if self.transfer_encoding_count > 1 || !self.transfer_encoding_chunked {
                return Err(Fault::BadRequest(
                    "unsupported_transfer_encoding",
                    "only Transfer-Encoding: chunked is supported",
                ));
            }
            return Ok(BodyKind::Chunked);
        }
        match (self.content_length_count, self.content_length) {
            (0, _) => Ok(BodyKind::None),
            (1, Some(Ok(0))) => Ok(BodyKind::None),
            (1, Some(Ok(n))) => Ok(BodyKind::Length(n)),
            (1, _) => Err(Fault::BadRequest(
                "invalid_content_length",
                "Content-Length must be a decimal number of bytes",
            )),
            _ => Err(smuggling("only one Content-Length header is allowed")),
        }
    }
}

/// A Content-Length value: 1 to 19 ASCII digits, nothing else (no sign, space, or list).
fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in value {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

// ---------------------------------------------------------------------------------------------
// Request ids
// ---------------------------------------------------------------------------------------------

/// 1..=128 bytes of visible ASCII (0x21..=0x7e): safe to echo in a header and a log line.
fn is_valid_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= REQUEST_ID_BYTES_MAX
        && id.iter().all(|&b| (0x21..=0x7e).contains(&b))
}

/// `req_` + 8 hex digits fixed per process (start time and pid) + 12 hex digits of a counter.
fn generate_request_id() -> String {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mixed = now ^ (u64::from(std::process::id()) << 40);
        (mixed ^ (mixed >> 32)) as u32
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff_ffff;
    let mut id = String::with_capacity(24);
    id.push_str("req_");
    push_hex(&mut id, u64::from(prefix), 8);
    push_hex(&mut id, n, 12);
    id
}

fn push_hex(out: &mut String, value: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(char::from(HEX[((value >> (i * 4)) & 0xf) as usize]));
    }
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnHeader {
    None,
    KeepAlive,
    Close,
}

/// Headers the server owns; a handler's copy of them is dropped.
fn is_server_owned(name: &str) -> bool {
    [
        "content-length",
        "transfer-encoding",
        "connection",
        "x-request-id",
    ]
    .iter()
    .any(|owned| owned.eq_ignore_ascii_case(name))
}

fn is_valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_valid_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Append the status line and headers; returns the body bytes that belong on the wire (empty for
/// statuses without a body).
fn write_response_head<'r>(
    out: &mut Vec<u8>,
    response: &'r Response,
    id: &str,
    conn_header: ConnHeader,
    framing: OutFraming,
) -> &'r [u8] {
    // A handler may only produce final statuses; anything else is a bug answered as 500.
    let status = if (200..=599).contains(&response.status) {
        response.status
    } else {
        500
    };
    let bodyless = status == 204 || status == 304;
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    if !response.content_type.is_empty() && !bodyless {
        out.extend_from_slice(b"\r\ncontent-type: ");
        out.extend_from_slice(response.content_type.as_bytes());
    }
    match framing {
        _ if bodyless => {}
        OutFraming::Length => {
            out.extend_from_slice(b"\r\ncontent-length: ");
            push_decimal(out, response.body.len() as u64);
        }
        OutFraming::Chunked => out.extend_from_slice(b"\r\ntransfer-encoding: chunked"),
        OutFraming::UntilClose => {}
    }
    out.extend_from_slice(b"\r\nx-request-id: ");
    out.extend_from_slice(id.as_bytes());
    for (name, value) in &response.headers {
        if is_server_owned(name) || !is_valid_header_name(name) || !is_valid_header_value(value) {
            continue;
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
    }
    match conn_header {
        ConnHeader::None => {}
        ConnHeader::KeepAlive => out.extend_from_slice(b"\r\nconnection: keep-alive"),
        ConnHeader::Close => out.extend_from_slice(b"\r\nconnection: close"),
    }
    out.extend_from_slice(b"\r\n\r\n");
    if bodyless {
        &[]
    } else {
        &response.body
    }
}

/// How a response body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutFraming {
    Length,
    Chunked,
    /// HTTP/1.0 streams: the body ends when the connection closes.
    UntilClose,
}

/// Append one piece of a streamed body: as a chunk of the chunked encoding, or as it is.
fn frame_chunk(out: &mut Vec<u8>, bytes: &[u8], chunked: bool) {
    if chunked {
        push_hex_len(out, bytes.len());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(bytes);
    }
}

/// Append `n` in lower-case hex (a chunk size line).
fn push_hex_len(out: &mut Vec<u8>, n: usize) {
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(n >> (i * 4)) & 0xf]);
    }
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

// ---------------------------------------------------------------------------------------------
// Chunked request bodies
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkError {
    /// The decoded body would exceed the limit.
    TooLarge,
    /// Broken framing; the message is safe to show.
    Invalid(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Expecting `HEX[;ext]\r\n`.
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting the `\r\n` after chunk data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty line.
    Trailer,
    Done,
}

/// Incremental decoder of a chunked body (RFC 9112 section 7.1). Lines must end in CRLF; chunk
/// extensions and trailer fields are tolerated and discarded.
#[derive(Debug)]
struct ChunkedDecoder {
    state: ChunkState,
    trailer_bytes: usize,
}

impl ChunkedDecoder {
    fn new() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            trailer_bytes: 0,
        }
    }

    /// Decode from `input` into `out`. Returns the bytes consumed and whether the body is
    /// complete; unconsumed input (a partial line) must be offered again with more after it.
    fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        body_max: usize,
    ) -> Result<(usize, bool), ChunkError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match self.state {
                ChunkState::Done => return Ok((pos, true)),
                ChunkState::Size => {
                    let Some(line) = take_line(rest)? else {
                        return Ok((pos, false));
                    };
                    let size = parse_chunk_size(&rest[..line])?;
                    pos += line + 2;
                    if size == 0 {
                        self.state = ChunkState::Trailer;
                    } else {
                        let room = body_max.saturating_sub(out.len()) as u64;
                        if size > room {
                            return Err(ChunkError::TooLarge);
                        }
                        self.state = ChunkState::Data(size);
                    }
                }
                ChunkState::Data(left) => {
                    if rest.is_empty() {
                        return Ok((pos, false));
                    }
                    let take = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&rest[..take]);
                    pos += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        pos += 2;
                        self.state = ChunkState::Size;
                    }
                    [] | [b'\r'] => return Ok((pos, false)),
                    _ => return Err(ChunkError::Invalid("chunk data is not followed by CRLF")),
                },
                ChunkState::Trailer => {
                    let Some(line) = take_line(rest)? else {
                        return Ok((pos, false));
                    };
                    pos += line + 2;
                    if line == 0 {
                        self.state = ChunkState::Done;
                        continue;
                    }
                    self.trailer_bytes += line + 2;
                    if self.trailer_bytes > CHUNK_TRAILER_BYTES_MAX {
                        return Err(ChunkError::Invalid("the chunked trailer is too large"));
                    }
                    if !rest[..line]
                        .iter()
                        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
                    {
                        return Err(ChunkError::Invalid("invalid chunked trailer field"));
                    }
                }
            }
        }
    }
}

/// The length of the CRLF-terminated line at the start of `input` (without the CRLF), `None`
/// when incomplete. A bare LF, or a line longer than the limit, is invalid.
fn take_line(input: &[u8]) -> Result<Option<usize>, ChunkError> {
    let window = &input[..input.len().min(CHUNK_LINE_BYTES_MAX + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(lf) if lf > 0 && window[lf - 1] == b'\r' => Ok(Some(lf - 1)),
        Some(_) => Err(ChunkError::Invalid("chunk lines must end with CRLF")),
        None if input.len() > CHUNK_LINE_BYTES_MAX + 1 => {
            Err(ChunkError::Invalid("chunk line too long"))
        }
        None => Ok(None),
    }
}

/// `HEX [BWS ; extensions]`: at least one hex digit, no overflow, no control characters.
fn parse_chunk_size(line: &[u8]) -> Result<u64, ChunkError> {
    let invalid = ChunkError::Invalid("invalid chunk size");
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(invalid);
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(d)))
            .ok_or(invalid)?;
    }
    let rest = &line[digits..];
    let ws = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    match &rest[ws..] {
        [] => Ok(size),
        [b';', ext @ ..] if ext.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)) => Ok(size),
        _ => Err(invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], body_max: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let (used, done) = d.decode(input, &mut out, body_max)?;
        assert!(done, "incomplete: {:?}", d.state);
        Ok((out, used))
    }

    #[test]
    fn chunked_basic_extensions_trailers() {
        let (body, used) =
            decode_all(b"5\r\nhello\r\n6;name=val\r\n world\r\n0\r\n\r\nNEXT", 100).unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(used, 35);
        let input = b"A ; ext\r\n0123456789\r\n0\r\nx-trailer: 1\r\nother: 2\r\n\r\n";
        let (body, used) = decode_all(input, 100).unwrap();
        assert_eq!(body, b"0123456789");
        assert_eq!(used, input.len());
    }

    #[test]
    fn chunked_byte_by_byte() {
        let input = b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nt: v\r\n\r\n";
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let mut done = false;
        for &b in input.iter() {
            buf.push(b);
            let (used, finished) = d.decode(&buf, &mut out, 1000).unwrap();
            buf.drain(..used);
            done = finished;
        }
        assert!(done);
        assert!(buf.is_empty());
        assert_eq!(out, b"abc0123456789abcdef");
    }

    #[test]
    fn chunked_rejects_bad_framing() {
        let bad: &[&[u8]] = &[
            b"x\r\n",
            b"-1\r\n",
            b"\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5x\r\nhello\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"5;\x01\r\nhello\r\n0\r\n\r\n",
            b"0\r\nbad\x01trailer\r\n\r\n",
        ];
        for input in bad {
            let mut d = ChunkedDecoder::new();
            let r = d.decode(input, &mut Vec::new(), 1 << 20);
            assert!(
                matches!(r, Err(ChunkError::Invalid(_))),
                "{:?} -> {r:?}",
                String::from_utf8_lossy(input)
            );
        }
        let long = vec![b'1'; CHUNK_LINE_BYTES_MAX + 10];
        let r = ChunkedDecoder::new().decode(&long, &mut Vec::new(), 1 << 20);
        assert!(matches!(r, Err(ChunkError::Invalid(_))));
    }

    #[test]
    fn chunked_enforces_body_limit() {
        let r = decode_all(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", 10);
        assert_eq!(r, Err(ChunkError::TooLarge));
        assert!(decode_all(b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n", 10).is_ok());
        let r = ChunkedDecoder::new().decode(b"ffffffffffffffff\r\n", &mut Vec::new(), 10);
        assert_eq!(r, Err(ChunkError::TooLarge));
    }

    #[test]
    fn content_length_validation() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"0012"), Some(12));
        assert_eq!(
            parse_content_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"+5",
            b"-5",
            b"5,5",
            b"5 5",
            b" 5",
            b"0x10",
            b"1e3",
            b"18446744073709551616",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_content_length(bad), None, "{:?}", bad);
        }
    }

    #[test]
    fn request_id_sanity() {
        assert!(is_valid_request_id(b"abc-123_XYZ"));
        assert!(is_valid_request_id(&[b'a'; 128]));
        assert!(!is_valid_request_id(&[b'a'; 129]));
        assert!(!is_valid_request_id(b""));
        assert!(!is_valid_request_id(b"has space"));
        assert!(!is_valid_request_id(b"crlf\r\nx: y"));
        assert!(!is_valid_request_id("é".as_bytes()));
        let a = generate_request_id();
        let b = generate_request_id();
        assert_ne!(a, b);
        assert!(a.starts_with("req_") && a.len() == 24, "{a}");
        assert!(is_valid_request_id(a.as_bytes()));
    }

    fn parse(buf: &[u8]) -> (Result<Option<Head>, Fault>, Request) {
        let mut req = Request::empty(-1);
        let r = parse_head(buf, 100, &mut req);
        (r, req)
    }

    #[test]
    fn heads_with_more_lines_than_the_stack_slots_parse_up_to_the_limit() {
        let head = |lines: usize| {
            let mut h = String::from("GET /v1/models HTTP/1.1\r\n");
            for i in 0..lines {
                h.push_str(&format!("x-h{i}: v{i}\r\n"));
            }
            h.push_str("\r\n");
            h
        };
        for (lines, max, ok) in [
            (HEADER_SLOTS_ON_STACK, 100, true),
            (HEADER_SLOTS_ON_STACK + 1, 100, true),
            (100, 100, true),
            (101, 100, false),
            (11, 10, false),
            (10, 10, true),
            (HEADER_SLOTS_ON_STACK + 5, HEADER_SLOTS_ON_STACK + 4, false),
        ] {
            let mut req = Request::empty(-1);
            let r = parse_head(head(lines).as_bytes(), max, &mut req);
            if ok {
                assert!(matches!(r, Ok(Some(_))), "{lines} lines, max {max}: {r:?}");
                assert_eq!(req.headers.len(), lines);
                let last = req.headers.iter().last().map(|(_, v)| v.to_vec());
                assert_eq!(last, Some(format!("v{}", lines - 1).into_bytes()));
            } else {
                assert!(
                    matches!(r, Err(Fault::HeadersTooLarge(_))),
                    "{lines} lines, max {max}: {r:?}"
                );
            }
        }
    }

    #[test]
    fn head_parsing_and_framing() {
        let buf: &[u8] = b"POST /v1/chat?x=1&y HTTP/1.1\r\nHost: a\r\nX-Request-ID: abc\r\n\
                           Content-Length: 5\r\n\r\nhello";
        let (r, req) = parse(buf);
        let head = r.unwrap().unwrap();
        assert_eq!(head.body, Ok(BodyKind::Length(5)));
        assert_eq!(head.len, buf.len() - 5);
        assert!(head.keep_alive);
        assert_eq!(req.method, Method::Post);
        assert_eq!(
            (req.path.as_str(), req.query.as_str()),
            ("/v1/chat", "x=1&y")
        );
        assert_eq!(req.id, "abc");
        assert_eq!(req.header("x-request-id"), Some(&b"abc"[..]));
        let names: Vec<&str> = req.headers.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["host", "x-request-id", "content-length"]);
        assert_eq!(req.header("X-REQUEST-ID"), Some(&b"abc"[..]));

        let (r, req) = parse(b"GET / HTTP/1.0\r\n\r\n");
        let head = r.unwrap().unwrap();
        assert!(!head.keep_alive);
        assert!(req.id.starts_with("req_"));
        let (r, _) = parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(r.unwrap().unwrap().keep_alive);
        let (r, _) = parse(b"GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n");
        assert!(!r.unwrap().unwrap().keep_alive);
        let (r, _) = parse(b"GET / HTTP/1.1\r\nHost: a\r\n");
        assert!(r.unwrap().is_none());
        let (r, _) = parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(r.unwrap().unwrap().body, Ok(BodyKind::Chunked));
    }

    #[test]
    fn head_rejections() {
        let bad_request = |buf: &[u8]| {
            let (r, _) = parse(buf);
            match r {
                Ok(Some(head)) => match head.body {
                    Err(Fault::BadRequest(code, _)) => code,
                    other => panic!("{other:?}"),
                },
                Err(Fault::BadRequest(code, _)) => code,
                other => panic!("{other:?}"),
            }
        };
        let cases: &[(&[u8], &str)] = &[
            (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", "request_smuggling"),
            (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "request_smuggling"),
            (b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n", "invalid_content_length"),
            (b"POST / HTTP/1.1\r\nContent-Length: 5,5\r\n\r\n", "invalid_content_length"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "unsupported_transfer_encoding"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "unsupported_transfer_encoding"),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "request_smuggling"),
            (b"GET http://a/ HTTP/1.1\r\n\r\n", "malformed_request"),
            (b"GET / HTTP/2.0\r\n\r\n", "unsupported_http_version"),
            (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", "malformed_request"),
            (b"GET / HTTP/1.1\r\nName : v\r\n\r\n", "malformed_request"),
            (b"GET / HTTP/1.1\r\nA: 1\nB: 2\r\n\r\n", "malformed_request"),
            (b"GET / HTTP/1.1\nHost: a\n\n", "malformed_request"),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\n", "malformed_request"),
        ];
        for (buf, code) in cases {
            assert_eq!(bad_request(buf), *code, "{}", String::from_utf8_lossy(buf));
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..101 {
            many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&many).0, Err(Fault::HeadersTooLarge(_))));
    }

    #[test]
    fn bare_lf_detection() {
        assert!(!has_bare_lf(b"GET / HTTP/1.1\r\nA: 1\r\n\r\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\r\nA: 1\nB: 2\r\n\r\n"));
        assert!(has_bare_lf(b"\n"));
        assert!(!has_bare_lf(b""));
    }

    #[test]
    fn response_head_format() {
        let mut r = Response::json(429, b"{}".to_vec());
        r.headers.push(("retry-after", "2".into()));
        r.headers.push(("content-length", "99".into()));
        r.headers.push(("x-bad", "a\r\nb".into()));
        let mut out = Vec::new();
        let body =
            write_response_head(&mut out, &r, "req_1", ConnHeader::Close, OutFraming::Length);
        assert_eq!(body, b"{}");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
             content-length: 2\r\nx-request-id: req_1\r\nretry-after: 2\r\n\
             connection: close\r\n\r\n"
        );
        let mut out = Vec::new();
        push_decimal(&mut out, 0);
        out.push(b' ');
        push_decimal(&mut out, u64::MAX);
        assert_eq!(out, b"0 18446744073709551615");
    }
}

//! The HTTP/1.1 front: a `may` coroutine per connection, request parsing with `httparse` under
//! configurable limits, Content-Length and chunked bodies, pipelining answered in order with one
//! batched write, keep-alive, timeouts, and OpenAI-style JSON errors for every protocol fault.

use std::time::{Duration, Instant};

mod server;

pub use server::{serve, FrontStats, ServerHandle};

/// Largest wait of one [`BodyStream::poll`]; between polls the server checks the client is there.
pub const STREAM_POLL_WAIT: Duration = Duration::from_millis(250);

/// Protocol limits and timeouts of one listener. Defaults are the documented constants below.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most header lines in one request (431 past it).
    pub header_lines_max: usize,
    /// Most bytes in the request line plus headers (431 past it).
    pub header_bytes_max: usize,
    /// Most bytes in a request body, after chunked decoding (413 past it).
    pub body_bytes_max: usize,
    /// From the first byte of a request to the end of its headers.
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after this.
    pub idle_timeout: Duration,
    /// Longest gap while reading a request body.
    pub body_read_timeout: Duration,
    /// Longest time one write to the client may block.
    pub write_timeout: Duration,
    /// Stack of each connection coroutine, in bytes.
    pub coroutine_stack_bytes: usize,
}

pub const HEADER_LINES_MAX_DEFAULT: usize = 100;
pub const HEADER_BYTES_MAX_DEFAULT: usize = 32 * 1024;
pub const BODY_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;
pub const HEADER_READ_TIMEOUT_MS_DEFAULT: u64 = 10_000;
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 60_000;
pub const BODY_READ_TIMEOUT_MS_DEFAULT: u64 = 30_000;
pub const WRITE_TIMEOUT_MS_DEFAULT: u64 = 30_000;
pub const COROUTINE_STACK_KB_DEFAULT: usize = 256;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_lines_max: HEADER_LINES_MAX_DEFAULT,
            header_bytes_max: HEADER_BYTES_MAX_DEFAULT,
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
            header_read_timeout: Duration::from_millis(HEADER_READ_TIMEOUT_MS_DEFAULT),
            idle_timeout: Duration::from_millis(IDLE_TIMEOUT_MS_DEFAULT),
            body_read_timeout: Duration::from_millis(BODY_READ_TIMEOUT_MS_DEFAULT),
            write_timeout: Duration::from_millis(WRITE_TIMEOUT_MS_DEFAULT),
            coroutine_stack_bytes: COROUTINE_STACK_KB_DEFAULT * 1024,
        }
    }
}

/// may takes coroutine stack sizes in machine words, not bytes: the value to pass for `bytes`
/// (kept even, since an odd size makes may track stack usage on every coroutine).
pub fn stack_words(bytes: usize) -> usize {
    (bytes / std::mem::size_of::<usize>()) & !1
}

/// HTTP methods the gateway distinguishes; anything else is `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
    Other,
}

/// One parsed request, handed to the [`Handler`] inside the connection coroutine.
#[derive(Debug)]
pub struct Request {
    /// `x-request-id`: the client's when it sent a sane one (<= 128 visible ASCII chars), else
    /// generated. Echoed on the response by the server.
    pub id: String,
    pub method: Method,
    /// Path without the query string, e.g. `/v1/chat/completions`.
    pub path: String,
    /// The query string without `?`, empty when none.
    pub query: String,
    /// Header names lower-cased; values as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The decoded body (Content-Length or chunked).
    pub body: Vec<u8>,
    /// When the request's headers were fully read.
    pub received_at: Instant,
    /// The connection's socket, for [`Request::client_gone`]; -1 when there is none.
    pub(crate) fd: i32,
}

impl Request {
    /// A request with nothing read yet, for the connection on socket `fd` (-1: none). The
    /// connection loop refills one `Request` for each request it reads.
    pub(crate) fn empty(fd: i32) -> Request {
        Request {
            id: String::new(),
            method: Method::Other,
            path: String::new(),
            query: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
            received_at: Instant::now(),
            fd,
        }
    }

    /// Whether the client has closed its side of the connection (checked without blocking and
    /// without consuming input). Lets a handler that waits long notice an abandoned request.
    pub fn client_gone(&self) -> bool {
        socket_closed_by_peer(self.fd)
    }

    /// A handle that drops this request's connection abruptly, for fault injection (the bench
    /// mock's `reset` faults). Use it only while the request is handled or its stream polled.
    pub fn abort_handle(&self) -> AbortHandle {
        AbortHandle { fd: self.fd }
    }

    /// First header of that name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Drops a connection without answering: see [`Request::abort_handle`].
#[derive(Clone, Copy, Debug)]
pub struct AbortHandle {
    fd: i32,
}

impl AbortHandle {
    /// Set `SO_LINGER` to zero and shut the socket down both ways: the peer reads end-of-file at
    /// once, the server's next write fails, and the close that follows sends a reset. Nothing
    /// that is still queued is sent.
    pub fn abort(&self) {
        if self.fd < 0 {
            return;
        }
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: `fd` is the open socket of the connection whose request or stream holds this
        // handle (documented on `abort_handle`); setsockopt reads `linger` for its size only.
        unsafe {
            libc::setsockopt(
                self.fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
            libc::shutdown(self.fd, libc::SHUT_RDWR);
        }
    }
}

/// Whether the peer of socket `fd` has closed the connection: a non-blocking `MSG_PEEK` read
/// that returns 0 bytes, or fails with anything but "would block". Pipelined input counts as alive.
pub fn socket_closed_by_peer(fd: i32) -> bool {
    if fd < 0 {
        return false;
    }
    let mut byte = 0u8;
    // SAFETY: a one-byte peek into a valid local buffer; `fd` is an open socket of this process
    // for as long as the connection (and so the request or stream holding it) lives.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => true,
        n if n > 0 => false,
        _ => {
            let err = std::io::Error::last_os_error().raw_os_error();
            !matches!(err, Some(libc::EAGAIN) | Some(libc::EINTR))
        }
    }
}

/// What one poll of a [`BodyStream`] yielded.
#[derive(Debug)]
pub enum StreamPoll {
    /// Bytes to write (and flush) at once.
    Chunk(Vec<u8>),
    /// Nothing within the wait: the server checks the client is still there and polls again.
    Pending,
    /// The body is complete.
    End,
}

/// A response body produced piece by piece (Server-Sent Events). The server writes every chunk as
/// soon as it is yielded, with chunked transfer encoding, so the connection stays reusable.
pub trait BodyStream: Send {
    /// Wait up to `wait` for the next piece. Runs in the connection coroutine: wait only on
    /// `may`-aware primitives.
    fn poll(&mut self, wait: Duration) -> StreamPoll;
    /// The client went away or a write failed: stop producing (free the upstream call).
    fn cancel(&mut self);
}

/// What a handler answers. The server adds `content-length` (or `transfer-encoding: chunked` for a
/// stream), `x-request-id` and `connection`; handlers never set those.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Extra headers, e.g. `retry-after`.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// When set, the body is streamed from here (and `body` is ignored).
    pub stream: Option<Box<dyn BodyStream>>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("content_type", &self.content_type)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .field("stream", &self.stream.is_some())
            .finish()
    }
}

impl Response {
    pub fn json(status: u16, body: Vec<u8>) -> Self {
        Response {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body,
            stream: None,
        }
    }

    /// A streamed `200` (or other status) response, e.g. `text/event-stream`.
    pub fn stream(status: u16, content_type: &'static str, stream: Box<dyn BodyStream>) -> Self {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: Vec::new(),
            stream: Some(stream),
        }
    }

    /// The one way an [`crate::error::ApiError`] becomes a response.
    pub fn error(err: &crate::error::ApiError) -> Self {
        let mut r = Response::json(err.status(), err.body());
        if let Some(s) = err.retry_after_s {
            r.headers.push(("retry-after", s.to_string()));
        }
        r
    }
}

/// The application behind a listener. `handle` runs inside the connection's coroutine: it may wait
/// on `may`-aware primitives only (never a crossbeam `recv` or `std::thread::sleep`).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: &mut Request) -> Response;

    /// The response for a protocol fault of a request whose head was read (so its path and
    /// headers are known): the handler renders it in the shape of the API the request speaks.
    fn error_response(&self, _req: &Request, err: &crate::error::ApiError) -> Response {
        Response::error(err)
    }
}

/// Standard reason phrases for the statuses the gateway emits.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

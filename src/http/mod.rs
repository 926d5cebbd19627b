//! The HTTP/1.1 front: a `may` coroutine per connection, request parsing with `httparse` under
//! configurable limits, Content-Length and chunked bodies, pipelining answered in order with one
//! batched write, keep-alive, timeouts, and OpenAI-style JSON errors for every protocol fault.

use std::any::Any;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod server;

pub use server::{serve, ConnBuf, FrontStats, ServerHandle};

/// Largest wait of one [`BodyStream::poll`]; between polls the server checks the client is there.
pub const STREAM_POLL_WAIT: Duration = Duration::from_millis(250);

pub use crate::config::Limits;

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
    pub headers: Headers,
    /// The decoded body (Content-Length or chunked).
    pub body: Vec<u8>,
    /// When the request's headers were fully read.
    pub received_at: Instant,
    /// The connection's socket, for [`Request::client_gone`]; -1 when there is none.
    pub(crate) fd: i32,
    /// Whether [`Request::client_gone`] may send an interim `100 Continue` to tell a client that
    /// half-closed its side from one that is gone (a [`Probe`] value).
    pub(crate) probe: AtomicU8,
    /// What [`Handler::admit`] learnt from the head for the handler (who sent the request), so
    /// that nothing is worked out twice. Empty for each new request.
    pub extension: OnceLock<Box<dyn Any + Send + Sync>>,
}

/// States of [`Request::probe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Probe {
    /// Not allowed: HTTP/1.0 (no 1xx may be sent), or earlier pipelined responses are not yet
    /// written (a 1xx would overtake them), or the handler has returned.
    Off = 0,
    /// Allowed and not sent yet.
    Ready = 1,
    /// Sent once; a client that is gone has answered it with a reset.
    Sent = 2,
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
            headers: Headers::default(),
            body: Vec::new(),
            received_at: Instant::now(),
            fd,
            probe: AtomicU8::new(Probe::Off as u8),
            extension: OnceLock::new(),
        }
    }

    /// Whether the client has gone away (checked without blocking and without consuming input).
    /// Lets a handler that waits long notice an abandoned request.
    ///
    /// A reset or error on the socket means gone. End-of-file alone does not: a client may
    /// half-close its side after a complete request and still wait for the answer, and TCP
    /// cannot tell that from a client that closed its socket. So, the first time end-of-file is
    /// seen on an HTTP/1.1 request with nothing else queued for the client, an interim
    /// `HTTP/1.1 100 Continue` is sent (HTTP/1.1 clients must accept unexpected 1xx responses):
    /// a half-closed client reads past it, a closed one answers with a reset, which the next
    /// check sees. Where no 1xx may be sent (HTTP/1.0, or pipelined answers still queued), a
    /// client after end-of-file is taken to be waiting, and its request runs to its deadline.
    pub fn client_gone(&self) -> bool {
        match peer_state(self.fd) {
            Peer::Open => false,
            Peer::Gone => true,
            Peer::HalfClosed => {
                let ready = self.probe.compare_exchange(
                    Probe::Ready as u8,
                    Probe::Sent as u8,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                if ready.is_err() {
                    return false;
                }
                match send_now(self.fd, CONTINUE_100) {
                    Some(sent) => !sent,
                    None => {
                        // No room to send: try again at the next check.
                        self.probe.store(Probe::Ready as u8, Ordering::Release);
                        false
                    }
                }
            }
        }
    }

    /// A handle that drops this request's connection abruptly, for fault injection (the bench
    /// mock's `reset` faults). Use it only while the request is handled or its stream polled.
    pub fn abort_handle(&self) -> AbortHandle {
        AbortHandle { fd: self.fd }
    }

    /// First header of that name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name)
    }
}

/// A request's header fields in the order sent: names lower-cased, values as sent, all in one
/// buffer that the connection reuses from request to request (no allocation per field).
#[derive(Debug, Default)]
pub struct Headers {
    bytes: Vec<u8>,
    /// Each field's name start, name end (its value's start) and value end in `bytes`.
    fields: Vec<(usize, usize, usize)>,
}

impl Headers {
    /// Append a field; `name` is stored lower-cased.
    pub fn push(&mut self, name: &str, value: &[u8]) {
        let start = self.bytes.len();
        self.bytes
            .extend(name.bytes().map(|b| b.to_ascii_lowercase()));
        let name_end = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.fields.push((start, name_end, self.bytes.len()));
    }

    /// Forget every field, keeping the buffers.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.fields.clear();
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The value of the first field named `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let name = name.as_bytes();
        self.fields.iter().find_map(|&(start, name_end, end)| {
            self.bytes[start..name_end]
                .eq_ignore_ascii_case(name)
                .then(|| &self.bytes[name_end..end])
        })
    }

    /// Every field as (lower-cased name, value), in the order sent. Names are HTTP tokens
    /// (ASCII), so each is valid UTF-8.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.fields.iter().map(|&(start, name_end, end)| {
            let name = std::str::from_utf8(&self.bytes[start..name_end]).unwrap_or_default();
            (name, &self.bytes[name_end..end])
        })
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

/// The interim response [`Request::client_gone`] probes with (and `Expect: 100-continue` gets).
pub(crate) const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What a socket's peer has done, as far as can be seen without reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    /// Connected; it may have sent input not read yet.
    Open,
    /// It sent end-of-file (shut its side down, or closed its socket: TCP does not say which).
    HalfClosed,
    /// The connection was reset or failed: nothing more can reach the client.
    Gone,
}

/// The state of socket `fd`'s peer: a zero-timeout `poll`. `POLLHUP` or `POLLERR` (a reset, or
/// both directions shut) is gone; `POLLRDHUP` alone is end-of-file from the peer.
pub(crate) fn peer_state(fd: i32) -> Peer {
    if fd < 0 {
        return Peer::Open;
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout (never blocks); `fd` is an open socket of this
    // process for as long as the connection (and so the request or stream holding it) lives.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n <= 0 {
        return Peer::Open; // nothing to report (or EINTR: look again at the next check)
    }
    if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
        Peer::Gone
    } else if pfd.revents & libc::POLLRDHUP != 0 {
        Peer::HalfClosed
    } else {
        Peer::Open
    }
}

/// Write `bytes` (a few, so never split in practice) to socket `fd` without blocking: `Some(true)`
/// sent, `Some(false)` the connection failed or only part went out, `None` no room right now.
pub(crate) fn send_now(fd: i32, bytes: &[u8]) -> Option<bool> {
    // SAFETY: sends from a valid buffer of `bytes.len()` bytes; MSG_NOSIGNAL turns a closed
    // peer into EPIPE instead of SIGPIPE; `fd` is open as for `peer_state`.
    let n = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    match usize::try_from(n) {
        Ok(n) => Some(n == bytes.len()),
        Err(_) => match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR) => None,
            _ => Some(false),
        },
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
/// soon as it is yielded (with those already waiting behind it, in one write), with chunked
/// transfer encoding, so the connection stays reusable.
pub trait BodyStream: Send {
    /// Wait up to `wait` for the next piece. Runs in the connection coroutine: wait only on
    /// `may`-aware primitives.
    fn poll(&mut self, wait: Duration) -> StreamPoll;
    /// The next piece if one is ready now, without waiting; `None` when nothing is. The server
    /// writes the pieces that are ready together, in one write.
    fn try_poll(&mut self) -> Option<StreamPoll> {
        None
    }
    /// A chunk's allocation, back once its bytes are written, for the stream to reuse.
    fn recycle(&mut self, _chunk: Vec<u8>) {}
    /// The stream yielded [`StreamPoll::End`]: called before its last bytes are written, so that
    /// what the stream's end records (usage, spend) is in place before the client can see the end
    /// and send its next request.
    fn finish(&mut self) {}
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
    /// Called once the request head is read and before its body is: `Some` answers the request
    /// at once and its body is never read (the connection then closes unless the whole body was
    /// already buffered, as it is for small requests). For checks that need no body (client
    /// keys, unknown path or method), so that a request bound to be refused costs no body
    /// buffer. `req.body` is empty here. The default admits every request.
    fn admit(&self, req: &Request) -> Option<Response> {
        let _ = req;
        None
    }

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
        409 => "Conflict",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_order_lower_case_names_and_reuse_their_buffer() {
        let mut h = Headers::default();
        assert!(h.is_empty() && h.get("host").is_none());
        h.push("Host", b"a");
        h.push("X-Stainless-Lang", b"python");
        h.push("host", b"second");
        h.push("X-Bytes", b"\x80\xff ok");
        assert_eq!(h.len(), 4);
        assert_eq!(h.get("HOST"), Some(&b"a"[..]), "the first of two");
        assert_eq!(h.get("x-stainless-lang"), Some(&b"python"[..]));
        assert_eq!(h.get("x-bytes"), Some(&b"\x80\xff ok"[..]));
        assert_eq!(h.get("x-missing"), None);
        let fields: Vec<(&str, &[u8])> = h.iter().collect();
        assert_eq!(fields[1], ("x-stainless-lang", &b"python"[..]));
        assert_eq!(fields[2], ("host", &b"second"[..]));
        let cap = h.bytes.capacity();
        h.clear();
        assert!(h.is_empty() && h.get("host").is_none());
        h.push("Content-Length", b"2");
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            [("content-length", &b"2"[..])]
        );
        assert_eq!(h.bytes.capacity(), cap, "the buffer is kept");
    }
}

//! The TCP transport under each worker's `ureq` agent: ureq's own behaviour with fewer system
//! calls per upstream request (ureq's TLS and proxy layers sit on top of it unchanged).
//!
//! * Checking that a pooled connection is still open takes one `recv(MSG_PEEK | MSG_DONTWAIT)`
//!   (ureq: switch to non-blocking, read, switch back: three calls, before and after each call).
//! * The first write of a request (its head) is held back and goes out with the body in one
//!   `writev`, so the upstream reads one segment instead of being woken twice; anything held is
//!   written before the first read.
//! * ureq probes a connection twice per request: when it goes back to the pool after an answer
//!   and when it is taken out for the next one. The first probe is answered without a system
//!   call: the second sees everything it would (bytes after the answer, a close), before the
//!   connection is used again.
//! * Socket timeouts are set only when the time left differs from the one already set by more than
//!   [`TIMEOUT_SLACK`] (ureq sets them whenever they differ, which a per-request deadline makes
//!   every time): a read or write may end up to that much off its deadline.
//! * A connection's buffers are lent from a process-wide pool only while bytes are in them
//!   ([`UpstreamBuffers`]): the output buffer while a request is written, the read buffer from an
//!   answer's first byte to its last. A worker waiting for an answer waits for its first byte with
//!   a one-byte peek (one system call more per request) and holds no buffer; a connection idle in
//!   the pool holds none either (ureq's `LazyBuffers` keep both, zero-filled, for the connection's
//!   life and grow the read buffer to 10 KiB on every request with a body).

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Weak};
use std::time::Duration;

use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, NextTimeout, ShutdownHandle, Transport,
};

use crate::objpool::{ObjPool, Pooled, Recycle};

/// How far an already-set socket timeout may be from the time actually left.
pub const TIMEOUT_SLACK: Duration = Duration::from_millis(20);
/// Reads after a request that wait for their first byte with a peek, holding no read buffer;
/// later reads of the same answer (a stream's events) keep the buffer between them, where a peek
/// per event would cost more CPU than the buffer's memory is worth.
const PEEKED_READS: u8 = 4;
/// Most bytes of a first write held back to go out with the next one.
const HOLD_BYTES_MAX: usize = 8 * 1024;
/// Size of the buffers the process-wide pool lends (the gateway's agents use it for both
/// directions); an agent configured with another size gets its own buffers per connection instead.
pub const LENT_BUFFER_BYTES: usize = 8 * 1024;
/// Buffers the pool keeps for reuse: about the number of requests being written or answers being
/// read at once.
const LENT_BUFFERS_KEPT_MAX: usize = 1024;
/// Scratch space ureq reads a chunked request body into (the read buffer's free part) is grown
/// to at least this; a sized body is read straight into the output buffer.
const TMP_BYTES_MIN: usize = 4 * 1024;

/// A buffer as the pool keeps it: zero-filled once when made, never cleared (ureq writes what it
/// sends before sending it, and reads only the bytes a read put in).
pub struct LentBuf(Box<[u8]>);

impl Recycle for LentBuf {
    fn reset(&mut self) {}
    fn retained_bytes(&self) -> usize {
        self.0.len()
    }
}

/// The pool lending the buffers of [`LENT_BUFFER_BYTES`].
pub fn lent_buffers() -> &'static Arc<ObjPool<LentBuf>> {
    static POOL: std::sync::OnceLock<Arc<ObjPool<LentBuf>>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        ObjPool::new(
            "upstream_buffers",
            LENT_BUFFERS_KEPT_MAX,
            0,
            usize::MAX,
            || LentBuf(vec![0; LENT_BUFFER_BYTES].into_boxed_slice()),
        )
    })
}

/// One direction's buffer of a connection: held only while bytes are in it.
enum Held {
    None,
    Lent(Pooled<LentBuf>),
    /// Another size than the pool's, or the input grown past it (scratch space for a chunked
    /// request body): kept with the connection.
    Own(Vec<u8>),
}

impl Held {
    /// The buffer, lent from the pool (or made, for another size) if none is held.
    fn get(&mut self, size: usize) -> &mut [u8] {
        if matches!(self, Held::None) {
            *self = if size == LENT_BUFFER_BYTES {
                Held::Lent(lent_buffers().get())
            } else {
                Held::Own(vec![0; size])
            };
        }
        self.bytes_mut()
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Held::Lent(buf) => &buf.0,
            Held::Own(buf) => buf,
            Held::None => &[],
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Held::Lent(buf) => &mut buf.0,
            Held::Own(buf) => buf,
            Held::None => &mut [],
        }
    }

    /// A lent buffer goes back to the pool (one of the connection's own stays).
    fn release(&mut self) {
        if matches!(self, Held::Lent(_)) {
            *self = Held::None;
        }
    }

    fn is_held(&self) -> bool {
        !matches!(self, Held::None)
    }
}

/// The read and write buffers of one upstream connection ([`Buffers`], as ureq's `LazyBuffers`
/// behave, with each buffer lent only while bytes are in it).
pub struct UpstreamBuffers {
    /// At least `input_size` bytes while held; bytes `consumed..filled` are unconsumed.
    input: Held,
    input_size: usize,
    filled: usize,
    consumed: usize,
    /// The last consume took bytes (ureq parses the input again only after progress).
    progress: bool,
    output_size: usize,
    output: Held,
}

impl UpstreamBuffers {
    pub fn new(input_size: usize, output_size: usize) -> Self {
        UpstreamBuffers {
            input: Held::None,
            input_size: input_size.max(1),
            filled: 0,
            consumed: 0,
            progress: false,
            output_size: output_size.max(1),
            output: Held::None,
        }
    }

    /// The input's free part, after moving unconsumed bytes to the front when that frees half.
    fn input_free(&mut self) -> &mut [u8] {
        let (consumed, filled) = (self.consumed, self.filled);
        let input = self.input.get(self.input_size);
        if consumed > 0 {
            if consumed == filled {
                (self.consumed, self.filled) = (0, 0);
            } else if filled > input.len() / 2 {
                input.copy_within(consumed..filled, 0);
                self.filled -= consumed;
                self.consumed = 0;
            }
        }
        &mut self.input.bytes_mut()[self.filled..]
    }

    /// Whether unconsumed input is held.
    pub fn input_is_empty(&self) -> bool {
        self.consumed == self.filled
    }

    /// Nothing unconsumed: a lent input buffer goes back to the pool.
    pub fn release_input(&mut self) {
        if self.input_is_empty() && matches!(self.input, Held::Lent(_)) {
            self.input = Held::None;
            (self.consumed, self.filled) = (0, 0);
        }
    }

    /// Whether an input buffer is held now.
    pub fn holds_input(&self) -> bool {
        self.input.is_held()
    }

    /// The request is written: a lent output buffer goes back to the pool.
    pub fn release_output(&mut self) {
        self.output.release();
    }

    /// Whether an output buffer is held now.
    pub fn holds_output(&self) -> bool {
        self.output.is_held()
    }
}

impl Buffers for UpstreamBuffers {
    fn output(&mut self) -> &mut [u8] {
        self.output.get(self.output_size)
    }

    fn input(&self) -> &[u8] {
        &self.input.bytes()[self.consumed..self.filled]
    }

    fn input_append_buf(&mut self) -> &mut [u8] {
        self.input_free()
    }

    fn input_appended(&mut self, amount: usize) {
        self.filled += amount;
        assert!(
            self.filled <= self.input.bytes().len(),
            "appended past the input buffer"
        );
    }

    fn input_consume(&mut self, amount: usize) {
        self.progress = amount > 0;
        self.consumed += amount;
        assert!(self.consumed <= self.filled, "consumed past the input");
    }

    fn tmp_and_output(&mut self) -> (&mut [u8], &mut [u8]) {
        let free = self.input_free().len();
        if free < TMP_BYTES_MIN {
            // Grown, the buffer becomes the connection's own.
            let mut grown = self.input.bytes().to_vec();
            grown.resize(grown.len() + (TMP_BYTES_MIN - free), 0);
            self.input = Held::Own(grown);
        }
        let output = self.output.get(self.output_size);
        (&mut self.input.bytes_mut()[self.filled..], output)
    }

    fn can_use_input(&self) -> bool {
        self.consumed < self.filled && self.progress
    }
}

/// Opens plain TCP connections (see the module docs); passes on a connection an earlier
/// connector in the chain made (a proxy tunnel).
#[derive(Debug, Default)]
pub struct LeanTcpConnector;

impl<In: Transport> Connector<In> for LeanTcpConnector {
    type Out = Either<In, LeanTcpTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        if let Some(chained) = chained {
            return Ok(Some(Either::A(chained)));
        }
        let config = details.config;
        let timeout = details.timeout;
        let started = std::time::Instant::now();
        let mut last_err = None;
        let addrs: Vec<SocketAddr> = details.addrs.iter().copied().collect();
        for (i, addr) in addrs.iter().enumerate() {
            // The time left is shared among the addresses still to try.
            let left = timeout.not_zero().map(|t| {
                let left = t.saturating_sub(started.elapsed());
                (left / (addrs.len() - i) as u32).max(Duration::from_millis(10))
            });
            let attempt = match left {
                Some(t) => TcpStream::connect_timeout(addr, t),
                None => TcpStream::connect(addr),
            };
            match attempt {
                Ok(stream) => {
                    if config.no_delay() {
                        stream.set_nodelay(true)?;
                    }
                    let transport = LeanTcpTransport::new(
                        stream,
                        UpstreamBuffers::new(
                            config.input_buffer_size(),
                            config.output_buffer_size(),
                        ),
                    );
                    (details.register_shutdown)(
                        Arc::downgrade(&transport.stream) as Weak<dyn ShutdownHandle>
                    )?;
                    return Ok(Some(Either::B(transport)));
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    last_err = Some(ureq::Error::Timeout(timeout.reason));
                }
                Err(e) => last_err = Some(e.into()),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused").into()
        }))
    }
}

pub struct LeanTcpTransport {
    stream: Arc<TcpStream>,
    buffers: UpstreamBuffers,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    /// A first write held back to go out with the next.
    held: Vec<u8>,
    /// The next write starts a request (nothing written since the last read).
    first_write: bool,
    /// An answer was read and nothing written since: the next open-check is ureq's as the
    /// connection goes back to the pool, and the one before its next use follows.
    answer_read: bool,
    /// Reads since the last request was written. The first [`PEEKED_READS`] wait for their
    /// first byte without a read buffer: the wait for the answer is the upstream's whole think
    /// time, and over TLS a session ticket may come first, alone.
    reads_since_request: u8,
}

impl std::fmt::Debug for LeanTcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeanTcpTransport")
            .field("peer", &self.stream.peer_addr().ok())
            .finish()
    }
}

/// Whether a socket timeout of `set` may stand in for `wanted`.
fn close_enough(set: Option<Duration>, wanted: Option<Duration>) -> bool {
    match (set, wanted) {
        (None, None) => true,
        (Some(s), Some(w)) => s.abs_diff(w) <= TIMEOUT_SLACK,
        _ => false,
    }
}

fn update(
    current: &mut Option<Duration>,
    timeout: &NextTimeout,
    set: impl FnOnce(Option<Duration>) -> io::Result<()>,
) -> io::Result<()> {
    let wanted = timeout.not_zero().map(|t| *t);
    if !close_enough(*current, wanted) {
        set(wanted)?;
        *current = wanted;
    }
    Ok(())
}

fn map_io(e: io::Error, timeout: &NextTimeout) -> ureq::Error {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ureq::Error::Timeout(timeout.reason),
        _ => e.into(),
    }
}

impl LeanTcpTransport {
    pub fn new(stream: TcpStream, buffers: UpstreamBuffers) -> Self {
        LeanTcpTransport {
            stream: Arc::new(stream),
            buffers,
            read_timeout: None,
            write_timeout: None,
            held: Vec::new(),
            first_write: true,
            answer_read: false,
            reads_since_request: PEEKED_READS,
        }
    }

    fn set_write_timeout(&mut self, timeout: &NextTimeout) -> Result<(), ureq::Error> {
        if timeout.after.is_zero() {
            return Err(ureq::Error::Timeout(timeout.reason));
        }
        let stream = &self.stream;
        update(&mut self.write_timeout, timeout, |t| {
            stream.set_write_timeout(t)
        })?;
        Ok(())
    }

    /// Write what is held, then `rest`, in as few calls as the socket takes.
    fn write_with_held(&mut self, rest_len: usize) -> io::Result<()> {
        let mut stream = &*self.stream;
        let held = std::mem::take(&mut self.held);
        let rest = match rest_len {
            0 => &[][..],
            n => &self.buffers.output()[..n],
        };
        let (mut a, mut b) = (&held[..], rest);
        while !a.is_empty() || !b.is_empty() {
            let n = match stream.write_vectored(&[IoSlice::new(a), IoSlice::new(b)]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let from_a = n.min(a.len());
            a = &a[from_a..];
            b = &b[n - from_a..];
        }
        self.held = held;
        self.held.clear();
        Ok(())
    }
}

/// One read (or a peek, which leaves the bytes in the socket) into `buf`, blocking until bytes
/// or the end of the stream arrive, or `timeout` (counted from `started`) passes. `read_timeout`
/// is the socket timeout now set.
fn read_within(
    stream: &TcpStream,
    read_timeout: &mut Option<Duration>,
    timeout: &NextTimeout,
    started: std::time::Instant,
    buf: &mut [u8],
    peek: bool,
) -> Result<usize, ureq::Error> {
    loop {
        let got = if peek {
            stream.peek(buf)
        } else {
            (&*stream).read(buf)
        };
        match got {
            Ok(n) => return Ok(n),
            // Linux does not restart a socket read with a timeout after a signal: go on with
            // the time left.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                let Some(t) = timeout.not_zero() else {
                    return Err(e.into());
                };
                let left = t.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(ureq::Error::Timeout(timeout.reason));
                }
                stream.set_read_timeout(Some(left))?;
                *read_timeout = Some(left);
            }
            Err(e) => return Err(map_io(e, timeout)),
        }
    }
}

impl Transport for LeanTcpTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.answer_read = false;
        self.reads_since_request = 0;
        let timeout = timeout.for_write();
        if self.first_write && amount <= HOLD_BYTES_MAX {
            self.first_write = false;
            self.held.clear();
            self.held
                .extend_from_slice(&self.buffers.output()[..amount]);
            return Ok(());
        }
        self.first_write = false;
        self.set_write_timeout(&timeout)?;
        self.write_with_held(amount)
            .map_err(|e| map_io(e, &timeout))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        if !self.held.is_empty() {
            let write_timeout = timeout.for_write();
            self.set_write_timeout(&write_timeout)?;
            self.write_with_held(0)
                .map_err(|e| map_io(e, &write_timeout))?;
        }
        // The request is out: its output buffer serves another worker's while this one waits.
        self.buffers.release_output();
        self.first_write = true;
        let timeout = timeout.for_read();
        if timeout.after.is_zero() {
            return Err(ureq::Error::Timeout(timeout.reason));
        }
        let stream = Arc::clone(&self.stream);
        update(&mut self.read_timeout, &timeout, |t| {
            stream.set_read_timeout(t)
        })?;
        let started = std::time::Instant::now();
        if self.reads_since_request < PEEKED_READS && self.buffers.input_is_empty() {
            // Nothing unconsumed: wait for the first byte without a read buffer.
            self.buffers.release_input();
            let mut byte = [0u8; 1];
            read_within(
                &stream,
                &mut self.read_timeout,
                &timeout,
                started,
                &mut byte,
                true,
            )?;
        }
        let input = self.buffers.input_append_buf();
        let amount = read_within(
            &stream,
            &mut self.read_timeout,
            &timeout,
            started,
            input,
            false,
        )?;
        self.buffers.input_appended(amount);
        self.answer_read = true;
        self.reads_since_request = self.reads_since_request.saturating_add(1);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        if !self.held.is_empty() {
            return false;
        }
        // Probed as it goes back to the pool or before its next use: nothing unconsumed is kept
        // for a next request, so an idle connection holds no read buffer.
        self.buffers.release_input();
        if std::mem::take(&mut self.answer_read) {
            // Going back to the pool: the probe before the next use decides (see the module docs).
            return true;
        }
        let mut byte = 0u8;
        // SAFETY: a one-byte peek into a local through the socket this transport owns.
        let n = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        // Nothing to read is the only healthy answer: bytes nobody asked for, end of stream or
        // an error all mean the connection must not be reused.
        n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn timeouts_within_the_slack_are_kept() {
        let s = |ms| Some(Duration::from_millis(ms));
        assert!(close_enough(None, None));
        assert!(close_enough(s(30_000), s(29_990)));
        assert!(close_enough(s(29_990), s(30_000)));
        assert!(!close_enough(s(30_000), s(29_000)));
        assert!(!close_enough(None, s(1)));
        assert!(!close_enough(s(1), None));
    }

    fn pair() -> (LeanTcpTransport, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (
            LeanTcpTransport::new(client, UpstreamBuffers::new(4096, 4096)),
            server,
        )
    }

    fn send(t: &mut LeanTcpTransport, bytes: &[u8]) {
        t.buffers().output()[..bytes.len()].copy_from_slice(bytes);
        t.transmit_output(bytes.len(), NextTimeout::default())
            .unwrap();
    }

    fn read_exactly(server: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        server.read_exact(&mut got).unwrap();
        got
    }

    fn nothing_to_read(server: &TcpStream) -> bool {
        server.set_nonblocking(true).unwrap();
        let r = (&*server).read(&mut [0u8; 64]);
        server.set_nonblocking(false).unwrap();
        matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    #[test]
    fn a_request_head_waits_for_its_body_and_both_leave_together() {
        let (mut t, mut server) = pair();
        let head = b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 2\r\n\r\n";
        send(&mut t, head);
        std::thread::sleep(Duration::from_millis(20));
        assert!(nothing_to_read(&server), "the head is held back");
        send(&mut t, b"{}");
        let got = read_exactly(&mut server, head.len() + 2);
        assert!(got.starts_with(b"POST ") && got.ends_with(b"{}"));
        // A later write of the same request goes out at once.
        send(&mut t, b"more");
        assert_eq!(read_exactly(&mut server, 4), b"more");
    }

    #[test]
    fn a_held_head_goes_out_before_the_answer_is_awaited() {
        let (mut t, mut server) = pair();
        let head = b"GET /v1/models HTTP/1.1\r\n\r\n";
        send(&mut t, head);
        let answer = std::thread::spawn(move || {
            let got = read_exactly(&mut server, head.len());
            (&server)
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .unwrap();
            (got, server)
        });
        assert!(t.await_input(NextTimeout::default()).unwrap());
        let (got, server) = answer.join().unwrap();
        assert_eq!(got, head);
        assert!(t.buffers().input().starts_with(b"HTTP/1.1 204"));
        // The next request's head is held again.
        let len = t.buffers().input().len();
        t.buffers().input_consume(len);
        send(&mut t, head);
        std::thread::sleep(Duration::from_millis(20));
        assert!(nothing_to_read(&server));
    }

    #[test]
    fn the_output_buffer_is_lent_while_a_request_is_written() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let mut t = LeanTcpTransport::new(
            client,
            UpstreamBuffers::new(LENT_BUFFER_BYTES, LENT_BUFFER_BYTES),
        );
        let pool = lent_buffers();
        let returns = pool.snapshot().returns;
        assert!(!t.buffers.holds_output());
        let head = b"POST / HTTP/1.1\r\ncontent-length: 2\r\n\r\n";
        send(&mut t, head);
        send(&mut t, b"{}");
        assert!(
            t.buffers.holds_output(),
            "held while the request is written"
        );
        (&server)
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .unwrap();
        assert!(t.await_input(NextTimeout::default()).unwrap());
        assert!(
            !t.buffers.holds_output(),
            "given back once the answer is awaited"
        );
        assert!(pool.snapshot().returns > returns);
        assert_eq!(
            read_exactly(&mut server, head.len() + 2).len(),
            head.len() + 2
        );
        // Another size than the pool's is the connection's own and kept.
        let (mut t, _server) = pair();
        send(&mut t, b"GET / HTTP/1.1\r\n\r\n");
        assert!(matches!(t.buffers.output, Held::Own(ref b) if b.len() == 4096));
    }

    #[test]
    fn upstream_buffers_consume_shift_and_keep_their_size() {
        let mut b = UpstreamBuffers::new(64, 32);
        assert!(b.input().is_empty() && !b.can_use_input());
        let free = b.input_append_buf();
        assert_eq!(free.len(), 64);
        free[..10].copy_from_slice(b"0123456789");
        b.input_appended(10);
        assert_eq!(b.input(), b"0123456789");
        assert!(!b.can_use_input(), "no progress yet: read more first");
        b.input_consume(4);
        assert!(b.can_use_input());
        assert_eq!(b.input(), b"456789");
        b.input_consume(0);
        assert!(
            !b.can_use_input(),
            "a consume of nothing asks for more input"
        );
        // Everything consumed: the next append starts at the front again.
        b.input_consume(6);
        assert_eq!(b.input_append_buf().len(), 64);
        // More than half filled: unconsumed bytes move to the front.
        b.input_append_buf()[..40].fill(b'x');
        b.input_appended(40);
        b.input_consume(30);
        assert_eq!(b.input_append_buf().len(), 54);
        assert_eq!(b.input(), b"xxxxxxxxxx");
        b.input_consume(10);
        // A request body's scratch space is the free input; the buffer keeps its size.
        let (tmp, out) = b.tmp_and_output();
        assert_eq!((tmp.len(), out.len()), (TMP_BYTES_MIN, 32));
        assert!(
            matches!(b.input, Held::Own(ref buf) if buf.len() == TMP_BYTES_MIN),
            "grown once to the scratch minimum"
        );
        let mut b = UpstreamBuffers::new(LENT_BUFFER_BYTES, LENT_BUFFER_BYTES);
        for _ in 0..3 {
            let (tmp, out) = b.tmp_and_output();
            assert_eq!(
                (tmp.len(), out.len()),
                (LENT_BUFFER_BYTES, LENT_BUFFER_BYTES)
            );
            b.release_output();
        }
        assert!(matches!(b.input, Held::Lent(ref buf) if buf.0.len() == LENT_BUFFER_BYTES));
        // Unconsumed bytes keep the buffer; once they are consumed it can go back.
        b.input_append_buf()[..3].copy_from_slice(b"abc");
        b.input_appended(3);
        b.release_input();
        assert_eq!(b.input(), b"abc");
        b.input_consume(3);
        b.release_input();
        assert!(!b.holds_input() && b.input().is_empty() && !b.can_use_input());
        assert_eq!(b.input_append_buf().len(), LENT_BUFFER_BYTES);
    }

    #[test]
    fn the_read_buffer_is_lent_only_while_an_answer_is_read() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let mut t = LeanTcpTransport::new(
            client,
            UpstreamBuffers::new(LENT_BUFFER_BYTES, LENT_BUFFER_BYTES),
        );
        // An answer in two parts: the buffer is held while a part is unconsumed.
        (&server).write_all(b"HTTP/1.1 200 OK\r\n").unwrap();
        assert!(t.await_input(NextTimeout::default()).unwrap());
        assert!(t.buffers.holds_input());
        assert_eq!(t.buffers().input(), b"HTTP/1.1 200 OK\r\n");
        // More is needed with bytes unconsumed: read straight into the held buffer.
        (&server).write_all(b"content-length: 0\r\n\r\n").unwrap();
        assert!(t.await_input(NextTimeout::default()).unwrap());
        let len = t.buffers().input().len();
        assert_eq!(len, 17 + 21);
        t.buffers().input_consume(len);
        assert!(
            t.buffers.holds_input(),
            "kept until the connection is probed"
        );
        // Back to the pool: the probe gives the buffer back.
        assert!(t.is_open());
        assert!(!t.buffers.holds_input());
        // Waiting for an answer that does not come holds no buffer, before or after the wait.
        send(&mut t, b"GET / HTTP/1.1\r\n\r\n");
        let timeout = NextTimeout {
            after: ureq::unversioned::transport::time::Duration::from(Duration::from_millis(30)),
            ..NextTimeout::default()
        };
        assert!(t.await_input(timeout).is_err());
        assert!(!t.buffers.holds_input());
        // A byte after the wait is read whole, not consumed by the wait.
        (&server).write_all(b"xyz").unwrap();
        assert!(t.await_input(NextTimeout::default()).unwrap());
        assert_eq!(t.buffers().input(), b"xyz");
        // The first reads after a request wait without the buffer (a TLS session ticket may
        // come alone before the answer); later reads of the same answer (a stream's events)
        // keep it between them.
        t.buffers().input_consume(3);
        for _ in 1..PEEKED_READS {
            (&server).write_all(b"part").unwrap();
            assert!(t.await_input(NextTimeout::default()).unwrap());
            assert_eq!(t.buffers().input(), b"part");
            t.buffers().input_consume(4);
        }
        (&server).write_all(b"more").unwrap();
        assert!(t.await_input(NextTimeout::default()).unwrap());
        assert_eq!(t.buffers().input(), b"more");
        t.buffers().input_consume(4);
        assert!(t.buffers.holds_input());
        // The end of the stream after a wait is an empty read.
        send(&mut t, b"GET / HTTP/1.1\r\n\r\n");
        server.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(!t.await_input(NextTimeout::default()).unwrap());
    }

    #[test]
    fn is_open_until_the_peer_closes_or_sends_unasked() {
        let (mut t, server) = pair();
        assert!(t.is_open());
        (&server).write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!t.is_open(), "bytes nobody asked for");
        let (mut t, server) = pair();
        drop(server);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!t.is_open(), "closed by the peer");
        let (mut t, _server) = pair();
        send(&mut t, b"GET / HTTP/1.1\r\n\r\n");
        assert!(!t.is_open(), "a request half sent is never reused");
    }

    #[test]
    fn a_connection_is_probed_once_per_request_before_its_use() {
        let (mut t, server) = pair();
        // An answer was read: the check as it goes back to the pool passes without a look ...
        (&server)
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .unwrap();
        assert!(t.await_input(NextTimeout::default()).unwrap());
        let len = t.buffers().input().len();
        t.buffers().input_consume(len);
        (&server).write_all(b"stray").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(t.is_open(), "the return to the pool is not probed");
        // ... and the check before the next use sees what came after the answer.
        assert!(!t.is_open(), "the probe before reuse sees the stray bytes");
        // Without an answer read since the last request, a closed peer is seen at once.
        let (mut t, server) = pair();
        drop(server);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!t.is_open());
    }

    #[test]
    fn a_read_times_out() {
        let (mut t, _server) = pair();
        let timeout = NextTimeout {
            after: ureq::unversioned::transport::time::Duration::from(Duration::from_millis(50)),
            ..NextTimeout::default()
        };
        let t0 = std::time::Instant::now();
        let err = t.await_input(timeout).unwrap_err();
        assert!(matches!(err, ureq::Error::Timeout(_)), "{err:?}");
        assert!(t0.elapsed() >= Duration::from_millis(40));
    }
}

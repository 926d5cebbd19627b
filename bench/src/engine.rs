//! The open-loop load engine. Each load thread owns an `epoll` instance and a set of keep-alive
//! connections with non-blocking sockets; it releases requests at their intended times (see
//! [`crate::schedule`]), writes the prebuilt request on an idle connection, and timestamps the
//! complete response. When every connection is busy, due requests wait inside the tool and their
//! latency keeps counting from the intended time: the target is charged for the queue it caused.
//!
//! One request per connection at a time (no pipelining), as HTTP clients and SDKs do. Sleeps use
//! `epoll_pwait2` (nanosecond timeouts) with the thread's timer slack at 1 ns, shortened by a
//! running estimate of how late wake-ups are (about 20 us on a VM), and the last few microseconds
//! before a send are spun; how late each send still was is itself measured (`send_lag`).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::report::{new_hist, record_ns, Hist};
use crate::response::{ResponseParser, Step, HEAD_BYTES_MAX};
use crate::schedule::{request_count, Schedule};
use crate::sse::{SseEvent, SseScanner};

/// Read buffer of a load thread: a whole head (plus a partial carry) always fits.
const SCRATCH_BYTES: usize = 2 * HEAD_BYTES_MAX + 64 * 1024;
/// Events taken from epoll per wait.
const EVENTS_MAX: usize = 1024;
/// How often busy connections are checked against the timeout, and the longest sleep.
const SCAN_NS: u64 = 10_000_000;
/// A send due within this long is waited for by spinning rather than sleeping: a timed sleep on a
/// VM overshoots by ~20 us, spinning costs at most this much CPU per request.
const SPIN_NS: u64 = 10_000;
/// First estimate of how late a timed sleep wakes up, and the most it is trusted.
const WAKE_LATE_NS_INITIAL: u64 = 20_000;
const WAKE_LATE_NS_MAX: u64 = 200_000;
/// A connection whose reconnect failed is retried after this.
const RECONNECT_BACKOFF_NS: u64 = 100_000_000;
/// Time allowed to open each connection before the run starts.
const SETUP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The schedule starts this long after every thread is connected.
const START_DELAY_NS: u64 = 5_000_000;
/// Most connections per run (each is a file descriptor in the tool and in the target).
pub const CONNECTIONS_MAX: usize = 100_000;
/// Most load threads.
pub const THREADS_MAX: usize = 64;

/// What is sent where.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
    /// The complete request bytes, written as is.
    pub request: Arc<Vec<u8>>,
    /// When set, what odd-numbered connections send instead (another client's key, so that a
    /// run loads two clients at once).
    pub alt_request: Option<Arc<Vec<u8>>>,
    pub head_request: bool,
}

/// How a run loads its target.
#[derive(Clone, Debug)]
pub struct Load {
    /// Requests per second, all threads together.
    pub rate: f64,
    /// Sent at the rate but not recorded, before the measured part.
    pub warmup: Duration,
    pub duration: Duration,
    pub connections: usize,
    pub threads: usize,
    /// Longest wait for a response after its request was sent.
    pub timeout: Duration,
    /// Parse SSE bodies: time to first event and gaps between events.
    pub stream: bool,
}

/// What one run (or several merged) measured. Histograms are in microseconds.
#[derive(Debug)]
pub struct RunResult {
    /// From intended send to complete response, successful (2xx) measured requests.
    pub latency: Hist,
    /// Stream mode: from intended send to the first SSE data event.
    pub ttft: Hist,
    /// Stream mode: between consecutive SSE data events of one response.
    pub gaps: Hist,
    /// How late each measured request was written after its intended time (the tool's own lag,
    /// including waits for a free connection).
    pub send_lag: Hist,
    pub ok: u64,
    /// Failed measured requests by class (`timeout`, `closed`, `parse`, `status_503`, ...), and
    /// connection attempts that failed (`connect`).
    pub errors: BTreeMap<String, u64>,
    /// Requests in the measured part of the schedule.
    pub measured: u64,
    /// Measured requests that got a complete response (any status).
    pub measured_completed: u64,
    /// Responses of the whole run, warm-up included (for CPU time per request).
    pub completed_all: u64,
    /// Seconds from the first measured intended send to the last measured response.
    pub span_s: f64,
    /// Most requests waiting inside the tool for a free connection at one time.
    pub queued_max: u64,
    pub stream_events: u64,
    /// CPU time (user + system) the load threads used during their runs, seconds: how close the
    /// tool itself came to being the bottleneck.
    pub tool_cpu_s: f64,
}

impl Default for RunResult {
    fn default() -> Self {
        RunResult {
            latency: new_hist(),
            ttft: new_hist(),
            gaps: new_hist(),
            send_lag: new_hist(),
            ok: 0,
            errors: BTreeMap::new(),
            measured: 0,
            measured_completed: 0,
            completed_all: 0,
            span_s: 0.0,
            queued_max: 0,
            stream_events: 0,
            tool_cpu_s: 0.0,
        }
    }
}

impl RunResult {
    /// Add another run's measurements (a thread's, or another round's).
    pub fn merge(&mut self, other: &RunResult) {
        // Histograms share bounds and precision, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.ttft.add(&other.ttft);
        let _ = self.gaps.add(&other.gaps);
        let _ = self.send_lag.add(&other.send_lag);
        self.ok += other.ok;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.measured += other.measured;
        self.measured_completed += other.measured_completed;
        self.completed_all += other.completed_all;
        self.span_s += other.span_s;
        self.queued_max = self.queued_max.max(other.queued_max);
        self.stream_events += other.stream_events;
        self.tool_cpu_s += other.tool_cpu_s;
    }

    pub fn error_count(&self) -> u64 {
        self.errors
            .iter()
            .filter(|(k, _)| k.as_str() != "connect")
            .map(|(_, v)| v)
            .sum()
    }

    /// Measured responses per second over the measured span.
    pub fn achieved_rate(&self) -> f64 {
        if self.span_s > 0.0 {
            self.measured_completed as f64 / self.span_s
        } else {
            0.0
        }
    }

    fn error(&mut self, class: &str) {
        *self.errors.entry(class.to_string()).or_default() += 1;
    }
}

/// Run `load` against `target` and return the merged measurements of all load threads.
pub fn run(target: &Target, load: &Load) -> Result<RunResult, String> {
    let threads = load.threads.clamp(1, THREADS_MAX);
    if load.connections < threads || load.connections > CONNECTIONS_MAX {
        return Err(format!(
            "--connections must be in {threads}..={CONNECTIONS_MAX} (at least one per thread)"
        ));
    }
    let warmup_n = if load.warmup.is_zero() {
        0
    } else {
        request_count(load.rate, load.warmup.as_secs_f64())
    };
    let total = warmup_n + request_count(load.rate, load.duration.as_secs_f64());
    let base = Instant::now();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut starts = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    for k in 0..threads {
        let (start_tx, start_rx) = mpsc::channel::<Option<u64>>();
        starts.push(start_tx);
        let conns = load.connections / threads + usize::from(k < load.connections % threads);
        let (target, load, ready) = (target.clone(), load.clone(), ready_tx.clone());
        let shape = Shape {
            threads: threads as u64,
            thread: k as u64,
            total,
            warmup_n,
        };
        let h = std::thread::Builder::new()
            .name(format!("load-{k}"))
            .spawn(move || thread_main(&target, &load, shape, conns, base, &ready, &start_rx))
            .map_err(|e| format!("cannot start a load thread: {e}"))?;
        handles.push(h);
    }
    drop(ready_tx);
    let mut setup: Result<(), String> = Ok(());
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => setup = Err(e),
            Err(_) => setup = Err("a load thread died during set-up".to_string()),
        }
    }
    let start_ns = now_ns(base) + START_DELAY_NS;
    for s in &starts {
        let _ = s.send(setup.is_ok().then_some(start_ns));
    }
    let mut merged = RunResult::default();
    let (mut first_ns, mut last_ns) = (u64::MAX, 0u64);
    for h in handles {
        match h.join() {
            Ok(Some(t)) => {
                merged.merge(&t.result);
                first_ns = first_ns.min(t.first_measured_ns);
                last_ns = last_ns.max(t.last_done_ns);
            }
            Ok(None) => {}
            Err(_) => setup = Err("a load thread panicked".to_string()),
        }
    }
    setup?;
    merged.span_s = if last_ns > first_ns {
        (last_ns - first_ns) as f64 / 1e9
    } else {
        0.0
    };
    Ok(merged)
}

/// Which requests of the run a thread owns and which are warm-up.
#[derive(Clone, Copy, Debug)]
struct Shape {
    threads: u64,
    thread: u64,
    total: u64,
    warmup_n: u64,
}

struct ThreadOutcome {
    result: RunResult,
    first_measured_ns: u64,
    last_done_ns: u64,
}

fn thread_main(
    target: &Target,
    load: &Load,
    shape: Shape,
    conns: usize,
    base: Instant,
    ready: &mpsc::Sender<Result<(), String>>,
    start: &mpsc::Receiver<Option<u64>>,
) -> Option<ThreadOutcome> {
    // Precise wake-ups: the default 50 us timer slack would delay every scheduled send.
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let worker = Worker::connect(target, load, shape, conns, base);
    let mut worker = match worker {
        Ok(w) => {
            let _ = ready.send(Ok(()));
            w
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return None;
        }
    };
    let start_ns = start.recv().ok().flatten()?;
    let cpu_before = thread_cpu_s();
    worker.run(start_ns);
    worker.result.tool_cpu_s = thread_cpu_s() - cpu_before;
    Some(ThreadOutcome {
        first_measured_ns: worker.first_measured_ns,
        last_done_ns: worker.last_done_ns,
        result: worker.result,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnState {
    Idle,
    /// A request is partly written.
    Writing,
    /// The request is written; the response is being read.
    Reading,
    /// A non-blocking connect is in progress.
    Connecting,
    /// Closed; reconnect at `retry_at_ns`.
    Down,
}

struct Conn {
    sock: Option<TcpStream>,
    state: ConnState,
    written: usize,
    intended_ns: u64,
    sent_ns: u64,
    measured: bool,
    parser: ResponseParser,
    sse: SseScanner,
    first_event_ns: u64,
    last_event_ns: u64,
    saw_done: bool,
    saw_error: bool,
    /// Unparsed bytes of an incomplete head or chunk line, prepended to the next read.
    carry: Vec<u8>,
    retry_at_ns: u64,
}

impl Conn {
    fn new(sock: TcpStream) -> Conn {
        Conn {
            sock: Some(sock),
            state: ConnState::Idle,
            written: 0,
            intended_ns: 0,
            sent_ns: 0,
            measured: false,
            parser: ResponseParser::new(),
            sse: SseScanner::default(),
            first_event_ns: 0,
            last_event_ns: 0,
            saw_done: false,
            saw_error: false,
            carry: Vec::new(),
            retry_at_ns: 0,
        }
    }

    fn busy(&self) -> bool {
        matches!(self.state, ConnState::Writing | ConnState::Reading)
    }
}

struct Worker<'a> {
    target: &'a Target,
    load: &'a Load,
    shape: Shape,
    base: Instant,
    epoll: OwnedFd,
    conns: Vec<Conn>,
    /// Idle connections, most recently used last (reused first: warm in the target's caches).
    idle: Vec<usize>,
    busy: usize,
    scratch: Vec<u8>,
    result: RunResult,
    first_measured_ns: u64,
    last_done_ns: u64,
    /// Running estimate of how late timed sleeps wake up; sleeps are shortened by it.
    wake_late_ns: u64,
}

fn now_ns(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

impl<'a> Worker<'a> {
    fn connect(
        target: &'a Target,
        load: &'a Load,
        shape: Shape,
        n: usize,
        base: Instant,
    ) -> Result<Worker<'a>, String> {
        // SAFETY: epoll_create1 returns a new descriptor (or -1), owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(format!("epoll_create1: {}", io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut w = Worker {
            target,
            load,
            shape,
            base,
            epoll,
            conns: Vec::with_capacity(n),
            idle: Vec::with_capacity(n),
            busy: 0,
            scratch: vec![0; SCRATCH_BYTES],
            result: RunResult::default(),
            first_measured_ns: u64::MAX,
            last_done_ns: 0,
            wake_late_ns: WAKE_LATE_NS_INITIAL,
        };
        for i in 0..n {
            let sock = TcpStream::connect_timeout(&target.addr, SETUP_CONNECT_TIMEOUT)
                .and_then(|s| s.set_nodelay(true).map(|()| s))
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .map_err(|e| format!("cannot connect to {} ({}): {e}", target.name, target.addr))?;
            w.conns.push(Conn::new(sock));
            w.register(libc::EPOLL_CTL_ADD, i, false)
                .map_err(|e| format!("epoll_ctl: {e}"))?;
            w.idle.push(i);
        }
        Ok(w)
    }

    fn now(&self) -> u64 {
        now_ns(self.base)
    }

    /// Add or change connection `i`'s registration (`out`: also wait for writability).
    fn register(&self, op: i32, i: usize, out: bool) -> io::Result<()> {
        match self.conns.get(i).and_then(|c| c.sock.as_ref()) {
            Some(sock) => epoll_ctl(&self.epoll, op, sock.as_raw_fd(), i, out),
            None => Ok(()),
        }
    }

    fn run(&mut self, start_ns: u64) {
        let sched = Schedule::new(
            self.load.rate,
            self.shape.total,
            self.shape.threads,
            self.shape.thread,
            start_ns,
        );
        let len = sched.len();
        let timeout_ns = self.load.timeout.as_nanos() as u64;
        // Past this, requests still waiting are given up (the target is hopelessly behind).
        let give_up_ns = if len == 0 {
            start_ns
        } else {
            sched.intended_ns(len - 1) + timeout_ns + SCAN_NS
        };
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_MAX];
        let mut next: u64 = 0;
        let mut next_scan_ns = start_ns;
        loop {
            let now = self.now();
            let due = sched.due(now);
            while next < due {
                let Some(i) = self.idle.pop() else { break };
                self.send(i, &sched, next);
                next += 1;
            }
            self.result.queued_max = self.result.queued_max.max(due - next);
            if next == len && self.busy == 0 {
                break;
            }
            if now >= next_scan_ns {
                self.scan(now, timeout_ns);
                next_scan_ns = now + SCAN_NS;
            }
            if now >= give_up_ns {
                self.give_up(&sched, next, len);
                break;
            }
            let timed = next < len && next >= due;
            let wait_ns = if timed {
                let until = sched.intended_ns(next).saturating_sub(now);
                if until <= SPIN_NS && std::env::var_os("NO_SPIN").is_none() {
                    self.spin_until(sched.intended_ns(next));
                    continue;
                }
                until
                    .saturating_sub(self.wake_late_ns)
                    .clamp(1_000, SCAN_NS)
            } else {
                SCAN_NS
            };
            let n = self.wait(&mut events, wait_ns);
            if n == 0 && timed {
                let late = self
                    .now()
                    .saturating_sub(now + wait_ns)
                    .min(WAKE_LATE_NS_MAX);
                self.wake_late_ns = (self.wake_late_ns * 7 + late) / 8;
            }
            for ev in &events[..n] {
                let (i, flags) = (ev.u64 as usize, ev.events);
                self.on_event(i, flags);
            }
        }
    }

    fn spin_until(&self, t_ns: u64) {
        while self.now() < t_ns {
            std::hint::spin_loop();
        }
    }

    fn wait(&self, events: &mut [libc::epoll_event], wait_ns: u64) -> usize {
        let ts = libc::timespec {
            tv_sec: (wait_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (wait_ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: `events` is a valid buffer of `len` entries; `ts` outlives the call.
        let n = unsafe {
            libc::epoll_pwait2(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                &ts,
                std::ptr::null(),
            )
        };
        usize::try_from(n).unwrap_or(0) // EINTR: go round again
    }

    /// Write request `j` of the schedule on idle connection `i`.
    fn send(&mut self, i: usize, sched: &Schedule, j: u64) {
        let intended = sched.intended_ns(j);
        let measured = sched.global_index(j) >= self.shape.warmup_n;
        let now = self.now();
        if measured {
            self.result.measured += 1;
            self.first_measured_ns = self.first_measured_ns.min(intended);
            record_ns(&mut self.result.send_lag, now.saturating_sub(intended));
        }
        let c = &mut self.conns[i];
        c.state = ConnState::Writing;
        c.written = 0;
        c.intended_ns = intended;
        c.sent_ns = now;
        c.measured = measured;
        c.parser.begin(self.target.head_request);
        c.sse.reset();
        c.first_event_ns = 0;
        c.saw_done = false;
        c.saw_error = false;
        c.carry.clear();
        self.busy += 1;
        self.write_more(i);
    }

    /// Continue writing the request of connection `i`.
    fn write_more(&mut self, i: usize) {
        let request = match &self.target.alt_request {
            Some(alt) if i % 2 == 1 => Arc::clone(alt),
            _ => Arc::clone(&self.target.request),
        };
        let c = &mut self.conns[i];
        let Some(sock) = c.sock.as_mut() else {
            return self.fail(i, "closed");
        };
        while c.written < request.len() {
            match sock.write(&request[c.written..]) {
                Ok(0) => return self.fail(i, "closed"),
                Ok(n) => c.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let _ = self.register(libc::EPOLL_CTL_MOD, i, true);
                    return;
                }
                Err(_) => return self.fail(i, "closed"),
            }
        }
        if c.state == ConnState::Writing {
            c.state = ConnState::Reading;
        }
    }

    fn on_event(&mut self, i: usize, flags: u32) {
        let Some(c) = self.conns.get(i) else { return };
        match c.state {
            ConnState::Connecting => self.on_connected(i, flags),
            ConnState::Down => {}
            ConnState::Writing if flags & libc::EPOLLOUT as u32 != 0 => {
                self.write_more(i);
                if self.conns[i].state == ConnState::Reading {
                    let _ = self.register(libc::EPOLL_CTL_MOD, i, false);
                }
            }
            _ => self.on_readable(i),
        }
    }

    fn on_readable(&mut self, i: usize) {
        loop {
            let carry_len = self.conns[i].carry.len();
            let c = &mut self.conns[i];
            let Some(sock) = c.sock.as_mut() else { return };
            let read = sock.read(&mut self.scratch[carry_len..]);
            let n = match read {
                Ok(0) => return self.on_eof(i),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.fail_or_reconnect(i, "closed"),
            };
            self.scratch[..carry_len].copy_from_slice(&c.carry);
            c.carry.clear();
            if !c.busy() {
                // Bytes nobody asked for: the framing of this connection cannot be trusted.
                return self.fail_or_reconnect(i, "parse");
            }
            let filled = carry_len + n;
            if !self.parse(i, filled) || filled < self.scratch.len() {
                return;
            }
        }
    }

    /// Parse `scratch[..filled]` for connection `i`. `false` when the connection is done with it.
    fn parse(&mut self, i: usize, filled: usize) -> bool {
        let now = self.now();
        let stream = self.load.stream;
        let Worker {
            conns,
            scratch,
            result,
            ..
        } = self;
        let c = &mut conns[i];
        let input = &scratch[..filled];
        let measured = c.measured;
        let intended = c.intended_ns;
        let mut on_body = |bytes: &[u8]| {
            if !stream {
                return;
            }
            c.sse.feed(bytes, &mut |ev| match ev {
                SseEvent::Data => {
                    result.stream_events += 1;
                    if c.first_event_ns == 0 {
                        c.first_event_ns = now;
                        if measured {
                            record_ns(&mut result.ttft, now.saturating_sub(intended));
                        }
                    } else if measured {
                        record_ns(&mut result.gaps, now.saturating_sub(c.last_event_ns));
                    }
                    c.last_event_ns = now;
                }
                SseEvent::Done => c.saw_done = true,
                SseEvent::Error => c.saw_error = true,
            });
        };
        match c.parser.advance(input, &mut on_body) {
            Ok((used, Step::NeedMore)) => {
                c.carry.extend_from_slice(&input[used..]);
                true
            }
            Ok((used, Step::Complete)) => {
                let extra = used < filled;
                self.complete(i, now, extra);
                false
            }
            Err(_) => {
                self.fail(i, "parse");
                false
            }
        }
    }

    fn on_eof(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.state == ConnState::Reading && c.parser.at_eof() == Ok(Step::Complete) {
            let now = self.now();
            return self.complete(i, now, true);
        }
        self.fail_or_reconnect(i, "closed");
    }

    /// The response on connection `i` is complete.
    fn complete(&mut self, i: usize, now: u64, close: bool) {
        self.busy -= 1;
        self.result.completed_all += 1;
        let stream = self.load.stream;
        let c = &mut self.conns[i];
        // An early answer before the request was fully written leaves the framing unknown.
        let close = close || c.parser.close() || c.state == ConnState::Writing;
        c.state = ConnState::Idle;
        if c.measured {
            self.result.measured_completed += 1;
            self.last_done_ns = self.last_done_ns.max(now);
            let status = c.parser.status();
            let class = if !(200..300).contains(&status) {
                Some(format!("status_{status}"))
            } else if stream && (c.saw_error || !c.parser.event_stream()) {
                Some("stream_error".to_string())
            } else if stream && !c.saw_done {
                Some("stream_incomplete".to_string())
            } else {
                None
            };
            match class {
                Some(class) => self.result.error(&class),
                None => {
                    self.result.ok += 1;
                    record_ns(&mut self.result.latency, now.saturating_sub(c.intended_ns));
                }
            }
        }
        if close {
            self.reconnect(i);
        } else {
            self.idle.push(i);
        }
    }

    /// A busy connection failed: count it against its request; an idle one just reconnects.
    fn fail_or_reconnect(&mut self, i: usize, class: &str) {
        if self.conns[i].busy() {
            self.fail(i, class);
        } else {
            self.idle.retain(|&x| x != i);
            self.reconnect(i);
        }
    }

    fn fail(&mut self, i: usize, class: &str) {
        let c = &mut self.conns[i];
        if c.busy() {
            self.busy -= 1;
            if c.measured {
                self.result.error(class);
            }
        }
        self.reconnect(i);
    }

    /// Close connection `i` and start a non-blocking connect in its place.
    fn reconnect(&mut self, i: usize) {
        let now = self.now();
        let c = &mut self.conns[i];
        c.sock = None; // closing removes it from epoll
        c.carry.clear();
        c.state = ConnState::Down;
        c.retry_at_ns = now;
        match connect_nonblocking(self.target.addr) {
            Ok(sock) => {
                self.conns[i].sock = Some(sock);
                if self.register(libc::EPOLL_CTL_ADD, i, true).is_ok() {
                    self.conns[i].state = ConnState::Connecting;
                    return;
                }
                self.connect_failed(i, now);
            }
            Err(_) => self.connect_failed(i, now),
        }
    }

    fn connect_failed(&mut self, i: usize, now: u64) {
        self.result.error("connect");
        let c = &mut self.conns[i];
        c.sock = None;
        c.state = ConnState::Down;
        c.retry_at_ns = now + RECONNECT_BACKOFF_NS;
    }

    fn on_connected(&mut self, i: usize, flags: u32) {
        let c = &mut self.conns[i];
        let ok = flags & (libc::EPOLLERR | libc::EPOLLHUP) as u32 == 0
            && c.sock
                .as_ref()
                .is_some_and(|s| matches!(s.take_error(), Ok(None)));
        if !ok {
            let now = self.now();
            return self.connect_failed(i, now);
        }
        c.state = ConnState::Idle;
        let _ = self.register(libc::EPOLL_CTL_MOD, i, false);
        self.idle.push(i);
    }

    /// Time out requests waiting too long for their response; retry connections that are down.
    fn scan(&mut self, now: u64, timeout_ns: u64) {
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            if c.busy() && now.saturating_sub(c.sent_ns) > timeout_ns {
                self.fail(i, "timeout");
            } else if c.state == ConnState::Down && now >= c.retry_at_ns {
                self.reconnect(i);
            }
        }
    }

    /// The run is over: what is still outstanding or never sent counts as timed out.
    fn give_up(&mut self, sched: &Schedule, next: u64, len: u64) {
        for i in 0..self.conns.len() {
            if self.conns[i].busy() {
                self.fail(i, "timeout");
            }
        }
        let unsent = (next..len)
            .filter(|&j| sched.global_index(j) >= self.shape.warmup_n)
            .count() as u64;
        if unsent > 0 {
            self.result.measured += unsent;
            *self.result.errors.entry("unsent".to_string()).or_default() += unsent;
        }
    }
}

fn epoll_ctl(epoll: &OwnedFd, op: i32, fd: i32, i: usize, out: bool) -> io::Result<()> {
    let mut flags = libc::EPOLLIN | libc::EPOLLRDHUP;
    if out {
        flags |= libc::EPOLLOUT;
    }
    let mut ev = libc::epoll_event {
        events: flags as u32,
        u64: i as u64,
    };
    // SAFETY: both descriptors are open (owned by the caller); `ev` outlives the call.
    let r = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut ev) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CPU time of the calling thread, seconds.
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a valid local.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Start a TCP connect without waiting for it (completion is reported as writability).
fn connect_nonblocking(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking(),
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_nodelay(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(socket.into())
}

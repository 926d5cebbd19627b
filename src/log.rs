//! Logs to stderr (journald under systemd) as logfmt lines: `level=info msg="..." key=value`,
//! a level filter, the access log (one line per request) that can be switched off, and the log
//! thread that writes them. Secrets never reach a log line: callers pass names and ids, never keys.
//!
//! No caller ever waits for stderr: a line goes into a bounded queue ([`LOG_QUEUE_LINES_MAX`]
//! lines, [`LOG_QUEUE_BYTES_MAX`] bytes) that the `log-writer` thread drains. When the reader of
//! stderr stalls (journald stuck, a pipe nobody reads), the writer blocks, the queue fills, and
//! further lines are dropped and counted ([`dropped_lines`], in `/stats` and `/metrics`) instead
//! of blocking a connection coroutine, and with it every connection of its scheduler thread.
//! Once the reader is back, the writer logs how many lines were lost. [`flush`] waits (bounded)
//! for the queue to empty, for the last lines before the process exits; panics are logged
//! through the queue too ([`install_panic_hook`]).
//!
//! When stderr is the journal (systemd sets `JOURNAL_STREAM` to its device and inode), every line
//! starts with a syslog priority prefix (`<3>` error .. `<7>` debug) that journald strips and
//! stores as the entry's priority, so `journalctl -p warning` filters by level.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// Lines waiting for the log thread; a line that finds the queue full is dropped and counted.
/// With the pipe's own buffer in front of the reader, this absorbs a stall of the journal of
/// about half a second at 10,000 requests/s, without holding any request.
pub const LOG_QUEUE_LINES_MAX: usize = 4096;
/// Bytes of the lines waiting for the log thread (the same rule).
pub const LOG_QUEUE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most bytes the log thread writes to stderr in one call (queued lines are batched).
const LOG_WRITE_BYTES_MAX: usize = 64 * 1024;
/// How long [`flush`] waits for the queued lines to be written: the last lines before exit must
/// not hold a shutdown (or a failed start) behind a stalled journal for longer.
pub const LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How often [`flush`] looks whether the queue is empty.
const LOG_FLUSH_POLL: Duration = Duration::from_millis(5);
/// Stack of the log thread: it only moves bytes.
const LOG_THREAD_STACK_BYTES: usize = 256 * 1024;
/// Longest client-supplied value (model name, request id) written in an access line, bytes; a
/// longer one is cut and marked with its length.
pub const ACCESS_CLIENT_VALUE_BYTES_MAX: usize = 256;
/// Longest panic message logged, bytes.
const PANIC_MESSAGE_BYTES_MAX: usize = 4096;
const _: () = assert!(LOG_WRITE_BYTES_MAX <= LOG_QUEUE_BYTES_MAX);

/// Severity, most severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    /// The level named `name` (`error`, `warn`, `info`, `debug`).
    pub fn parse(name: &str) -> Option<Level> {
        match name {
            "error" => Some(Level::Error),
            "warn" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" => Some(Level::Debug),
            _ => None,
        }
    }

    /// syslog priority of the level (journald's `PRIORITY`).
    fn syslog_priority(self) -> &'static str {
        match self {
            Level::Error => "<3>",
            Level::Warn => "<4>",
            Level::Info => "<6>",
            Level::Debug => "<7>",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static ACCESS: AtomicBool = AtomicBool::new(true);
/// Whether lines carry a syslog priority prefix (stderr is the journal).
static JOURNAL: AtomicBool = AtomicBool::new(false);

/// Turn on journald priority prefixes when stderr is connected to the journal: `JOURNAL_STREAM`
/// (`<device>:<inode>`) names stderr's file. Call once at start-up.
pub fn detect_journal() {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return;
    };
    // SAFETY: fstat on fd 2 into a zeroed, valid stat buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; a closed fd 2 only makes fstat fail.
    if unsafe { libc::fstat(2, &mut st) } == 0 && st.st_dev as u64 == dev && st.st_ino as u64 == ino
    {
        JOURNAL.store(true, Ordering::Relaxed);
    }
}

/// Start a line of `level`: the journal priority prefix when on, then `level=<level>`.
fn start_line(line: &mut String, level: Level) {
    if JOURNAL.load(Ordering::Relaxed) {
        line.push_str(level.syslog_priority());
    }
    line.push_str("level=");
    line.push_str(level.as_str());
}

/// Set the most verbose level written.
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Switch the access log on or off.
pub fn set_access(on: bool) {
    ACCESS.store(on, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Append ` key=value`. The value is written bare when it is visible ASCII without `"` or `=`;
/// otherwise it is quoted, with `"`, `\\`, line breaks and every control or invisible formatting
/// character escaped, so that no value can start a line of its own, forge
/// fields, or hide or reorder text on a terminal.
pub fn field(line: &mut String, key: &str, value: &str) {
    line.push(' ');
    line.push_str(key);
    line.push('=');
    if !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=')
    {
        line.push_str(value);
        return;
    }
    line.push('"');
    for c in value.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if is_hidden(c) => {
                let _ = write!(line, "\\u{{{:x}}}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

/// Control characters (C0, DEL, C1) and the invisible Unicode characters that break lines or
/// reorder or hide text when a log is viewed: line and paragraph separators, zero-width
/// characters, bidirectional embeddings, overrides and isolates, and the byte-order mark.
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{feff}'
        )
}

/// [`field`] for a value a client chose: at most [`ACCESS_CLIENT_VALUE_BYTES_MAX`] bytes of it
/// (cut at a character boundary), then `...(<length> bytes)` when it was longer.
pub fn client_field(line: &mut String, key: &str, value: &str) {
    if value.len() <= ACCESS_CLIENT_VALUE_BYTES_MAX {
        field(line, key, value);
        return;
    }
    let mut end = ACCESS_CLIENT_VALUE_BYTES_MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let cut = format!("{}...({} bytes)", &value[..end], value.len());
    field(line, key, &cut);
}

/// Write one line: `level=.. msg=".." k=v ...`.
pub fn log(level: Level, msg: &str, fields: &[(&str, &str)]) {
    if !enabled(level) {
        return;
    }
    let mut line = String::with_capacity(64 + msg.len());
    start_line(&mut line, level);
    field(&mut line, "msg", msg);
    for (k, v) in fields {
        field(&mut line, k, v);
    }
    line.push('\n');
    emit(line);
}

pub fn error(msg: &str, fields: &[(&str, &str)]) {
    log(Level::Error, msg, fields);
}

pub fn warn(msg: &str, fields: &[(&str, &str)]) {
    log(Level::Warn, msg, fields);
}

pub fn info(msg: &str, fields: &[(&str, &str)]) {
    log(Level::Info, msg, fields);
}

pub fn debug(msg: &str, fields: &[(&str, &str)]) {
    log(Level::Debug, msg, fields);
}

/// What the access log records about one request.
#[derive(Clone, Debug, Default)]
pub struct AccessRecord {
    pub request_id: String,
    /// The model as the client named it.
    pub model: String,
    /// The provider that served (or rejected) it; empty when routing failed.
    pub provider: String,
    pub status: u16,
    pub stream: bool,
    pub queue_wait_us: u64,
    pub upstream_us: u64,
    pub total_us: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The gateway's error code when it answered an error itself.
    pub error_code: &'static str,
}

/// Write the access line of a request (when the access log is on).
pub fn access(r: &AccessRecord) {
    if !ACCESS.load(Ordering::Relaxed) {
        return;
    }
    let mut line = String::with_capacity(256);
    start_line(&mut line, Level::Info);
    line.push_str(" msg=access");
    // The request id and the model are the client's: bounded here, whatever let them through.
    client_field(&mut line, "request_id", &r.request_id);
    client_field(&mut line, "model", &r.model);
    field(&mut line, "provider", &r.provider);
    let num = |line: &mut String, k: &str, v: u64| {
        let _ = write!(line, " {k}={v}");
    };
    num(&mut line, "status", u64::from(r.status));
    line.push_str(if r.stream {
        " stream=true"
    } else {
        " stream=false"
    });
    num(&mut line, "queue_wait_us", r.queue_wait_us);
    num(&mut line, "upstream_us", r.upstream_us);
    num(&mut line, "total_us", r.total_us);
    num(&mut line, "prompt_tokens", r.prompt_tokens);
    num(&mut line, "completion_tokens", r.completion_tokens);
    if !r.error_code.is_empty() {
        field(&mut line, "error", r.error_code);
    }
    line.push('\n');
    emit(line);
}

// ---------------------------------------------------------------------------------------------
// The log thread.
// ---------------------------------------------------------------------------------------------

/// Lines dropped because the queue was full, since start.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The queue in front of the log thread.
struct Queue {
    tx: Sender<String>,
    /// Bytes of the lines in the queue.
    bytes: AtomicUsize,
    /// Lines queued or being written (0: everything logged so far is written).
    pending: AtomicUsize,
}

/// The queue, with its thread started on first use; `None` when the thread could not be started
/// (then lines are written directly, as a last resort).
fn queue() -> Option<&'static Queue> {
    static QUEUE: OnceLock<Option<Queue>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = crossbeam_channel::bounded(LOG_QUEUE_LINES_MAX);
            std::thread::Builder::new()
                .name("log-writer".into())
                .stack_size(LOG_THREAD_STACK_BYTES)
                .spawn(move || write_lines(&rx))
                .ok()
                .map(|_| Queue {
                    tx,
                    bytes: AtomicUsize::new(0),
                    pending: AtomicUsize::new(0),
                })
        })
        .as_ref()
}

/// Start the log thread now (it starts on the first line otherwise).
pub fn start() {
    let _ = queue();
}

/// Hand a finished line to the log thread; drop and count it when the queue is full. Never waits.
fn emit(line: String) {
    let Some(q) = queue() else {
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
        return;
    };
    let len = line.len();
    if q.bytes.fetch_add(len, Ordering::AcqRel) + len > LOG_QUEUE_BYTES_MAX {
        q.bytes.fetch_sub(len, Ordering::AcqRel);
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    q.pending.fetch_add(1, Ordering::AcqRel);
    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = q.tx.try_send(line) {
        q.bytes.fetch_sub(len, Ordering::AcqRel);
        q.pending.fetch_sub(1, Ordering::AcqRel);
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// The log thread: write queued lines to stderr in batches; after a batch, report lines dropped
/// since the last report (the reader is back, so the report is read).
fn write_lines(rx: &Receiver<String>) {
    // This thread starts inside `queue()`'s initialisation: this call waits for it to finish.
    let Some(q) = queue() else { return };
    let mut batch: Vec<u8> = Vec::with_capacity(LOG_WRITE_BYTES_MAX);
    let mut reported = 0u64;
    while let Ok(first) = rx.recv() {
        batch.clear();
        batch.extend_from_slice(first.as_bytes());
        let mut lines = 1;
        while batch.len() < LOG_WRITE_BYTES_MAX {
            let Ok(line) = rx.try_recv() else { break };
            batch.extend_from_slice(line.as_bytes());
            lines += 1;
        }
        let _ = std::io::stderr().lock().write_all(&batch);
        q.bytes.fetch_sub(batch.len(), Ordering::AcqRel);
        let dropped = DROPPED.load(Ordering::Relaxed);
        if dropped > reported {
            let report = dropped_report(dropped - reported, dropped);
            let _ = std::io::stderr().lock().write_all(report.as_bytes());
            reported = dropped;
        }
        q.pending.fetch_sub(lines, Ordering::AcqRel);
    }
}

/// The warning that `lost` lines (`total` since start) were dropped.
fn dropped_report(lost: u64, total: u64) -> String {
    let mut line = String::with_capacity(160);
    start_line(&mut line, Level::Warn);
    field(
        &mut line,
        "msg",
        "log lines dropped: stderr (the journal) was not read fast enough",
    );
    let _ = write!(line, " dropped={lost} dropped_total={total}");
    line.push('\n');
    line
}

/// Lines dropped since start because the log queue was full (`/stats`, `/metrics`).
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Wait until every line logged so far is written, at most [`LOG_FLUSH_TIMEOUT`]; `false` if
/// lines were still waiting then. For the end of the process (not for a coroutine).
pub fn flush() -> bool {
    let Some(q) = queue() else { return true };
    let deadline = Instant::now() + LOG_FLUSH_TIMEOUT;
    while q.pending.load(Ordering::Acquire) > 0 {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(LOG_FLUSH_POLL);
    }
    true
}

/// Log panics as one error line through the queue (thread, location, message) instead of the
/// default hook's direct write to stderr, which would block a coroutine's scheduler thread
/// while stderr is stalled. The panic is still caught and answered where it was before.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(not a string)");
        let mut end = message.len().min(PANIC_MESSAGE_BYTES_MAX);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        error(
            "panic",
            &[
                ("thread", thread.name().unwrap_or("unnamed")),
                ("location", &location),
                ("message", &message[..end]),
            ],
        );
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_when_needed() {
        let mut s = String::new();
        field(&mut s, "a", "plain");
        field(&mut s, "b", "two words");
        field(&mut s, "c", "q\"uote\n");
        field(&mut s, "d", "");
        assert_eq!(s, r#" a=plain b="two words" c="q\"uote\n" d="""#);
    }

    #[test]
    fn hidden_characters_are_escaped() {
        let mut s = String::new();
        field(&mut s, "m", "a\u{2028}b\u{202e}c\u{85}d\re\tf\u{1b}[31m");
        assert_eq!(s, r#" m="a\u{2028}b\u{202e}c\u{85}d\re\tf\u{1b}[31m""#);
        let mut s = String::new();
        field(&mut s, "m", "caf\u{e9}");
        assert_eq!(s, " m=\"caf\u{e9}\"", "non-ASCII text is kept, quoted");
    }

    #[test]
    fn client_values_are_cut_at_the_bound() {
        let mut s = String::new();
        client_field(&mut s, "model", &"m".repeat(ACCESS_CLIENT_VALUE_BYTES_MAX));
        assert_eq!(s.len(), " model=".len() + ACCESS_CLIENT_VALUE_BYTES_MAX);
        let mut s = String::new();
        // A two-byte character straddles the bound: the cut keeps whole characters.
        let long = format!("a{}", "\u{e9}".repeat(1000));
        client_field(&mut s, "model", &long);
        let expected = format!(
            " model=\"a{}...({} bytes)\"",
            "\u{e9}".repeat((ACCESS_CLIENT_VALUE_BYTES_MAX - 1) / 2),
            long.len()
        );
        assert_eq!(s, expected);
    }

    #[test]
    fn the_dropped_report_names_both_counts() {
        let line = dropped_report(3, 10);
        assert!(
            line.contains("level=warn msg=\"log lines dropped"),
            "{line}"
        );
        assert!(line.ends_with(" dropped=3 dropped_total=10\n"), "{line}");
    }

    #[test]
    fn level_names_round_trip() {
        for l in [Level::Error, Level::Warn, Level::Info, Level::Debug] {
            assert_eq!(Level::parse(l.as_str()), Some(l));
        }
        assert_eq!(Level::parse("verbose"), None);
        assert_eq!(Level::parse("INFO"), None);
    }

    #[test]
    fn journal_lines_carry_the_priority() {
        let mut line = String::new();
        start_line(&mut line, Level::Warn);
        assert_eq!(line, "level=warn");
        JOURNAL.store(true, Ordering::Relaxed);
        let mut line = String::new();
        start_line(&mut line, Level::Error);
        JOURNAL.store(false, Ordering::Relaxed);
        assert_eq!(line, "<3>level=error");
    }

    #[test]
    fn levels_filter() {
        set_level(Level::Warn);
        assert!(enabled(Level::Error) && enabled(Level::Warn));
        assert!(!enabled(Level::Info));
        set_level(Level::Info);
    }
}

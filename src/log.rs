//! Logs to stderr (journald under systemd) as logfmt lines: `level=info msg="..." key=value`,
//! a level filter, and the access log (one line per request) that can be switched off.
//! Secrets never reach a log line: callers pass names and ids, never keys.
//!
//! When stderr is the journal (systemd sets `JOURNAL_STREAM` to its device and inode), every line
//! starts with a syslog priority prefix (`<3>` error .. `<7>` debug) that journald strips and
//! stores as the entry's priority, so `journalctl -p warning` filters by level.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

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

/// Append ` key=value`, quoting the value when it holds spaces, quotes or `=`.
pub fn field(line: &mut String, key: &str, value: &str) {
    line.push(' ');
    line.push_str(key);
    line.push('=');
    if !value.is_empty()
        && !value
            .bytes()
            .any(|b| b <= b' ' || b == b'"' || b == b'=' || b == 0x7f)
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
            c if c.is_control() => {
                let _ = write!(line, "\\u{{{:x}}}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
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
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
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
    field(&mut line, "request_id", &r.request_id);
    field(&mut line, "model", &r.model);
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
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
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

//! Logs to stderr (journald under systemd) as logfmt lines: `level=info msg="..." key=value`,
//! a level filter, and the access log (one line per request) that can be switched off.
//! Secrets never reach a log line: callers pass names and ids, never keys.

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
    line.push_str("level=");
    line.push_str(level.as_str());
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
    line.push_str("level=info msg=access");
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
    fn levels_filter() {
        set_level(Level::Warn);
        assert!(enabled(Level::Error) && enabled(Level::Warn));
        assert!(!enabled(Level::Info));
        set_level(Level::Info);
    }
}

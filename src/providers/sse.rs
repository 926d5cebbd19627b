//! Server-Sent Events from an upstream: read event by event (bounded line and event sizes), each
//! with its `event:` name and its `data:` lines joined, into buffers reused for the whole stream;
//! and the errors that end a stream after it began.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, BufRead, Read};

use crate::error::{ApiError, ErrorKind};
use crate::job::STREAM_BYTES_IN_FLIGHT_MAX;

/// Longest SSE line accepted from an upstream, bytes.
pub const SSE_LINE_BYTES_MAX: usize = 1024 * 1024;
/// Most `data` bytes of one event (its lines joined): a stream that never ends an event is cut
/// here instead of growing without bound.
pub const SSE_EVENT_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Longest `event:` name kept, bytes.
const SSE_NAME_BYTES_MAX: usize = 64;
/// Initial capacity of the line and data buffers.
const SSE_BUFFER_BYTES_INITIAL: usize = 1024;

const _: () = assert!(SSE_LINE_BYTES_MAX <= SSE_EVENT_BYTES_MAX);
// One event must always fit what a stream may have in flight to its client.
const _: () = assert!(STREAM_BYTES_IN_FLIGHT_MAX >= SSE_EVENT_BYTES_MAX);

/// Why reading an upstream event stream failed.
#[derive(Debug)]
pub enum SseError {
    /// The transport failed (or timed out).
    Io(io::Error),
    /// A line over [`SSE_LINE_BYTES_MAX`] or an event over [`SSE_EVENT_BYTES_MAX`].
    TooLarge,
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::Io(e) => write!(f, "{e}"),
            SseError::TooLarge => f.write_str("SSE event too large"),
        }
    }
}

impl From<io::Error> for SseError {
    fn from(e: io::Error) -> Self {
        SseError::Io(e)
    }
}

/// One event: its name (empty when the upstream sent none, i.e. `message`) and its data.
#[derive(Debug, PartialEq, Eq)]
pub struct SseEvent<'a> {
    pub name: &'a [u8],
    pub data: &'a [u8],
}

pub struct SseReader<R: BufRead> {
    r: R,
    line: Vec<u8>,
    name: Vec<u8>,
    data: Vec<u8>,
    /// The current event had a `data:` line (an empty one counts).
    data_line: bool,
    /// The last event was handed out: its buffers are cleared on the next read.
    handed_out: bool,
    /// Lines read so far, comments included: any of them shows the upstream is alive.
    lines: u64,
}

impl<R: BufRead> SseReader<R> {
    pub fn new(r: R) -> Self {
        SseReader {
            r,
            line: Vec::with_capacity(SSE_BUFFER_BYTES_INITIAL),
            name: Vec::new(),
            data: Vec::with_capacity(SSE_BUFFER_BYTES_INITIAL),
            data_line: false,
            handed_out: false,
            lines: 0,
        }
    }

    /// Lines read so far, comments (`: ping`) included.
    pub fn lines_read(&self) -> u64 {
        self.lines
    }

    /// Read up to the end of the next event; `None` at the end of the stream.
    pub fn next_event(&mut self) -> Result<Option<SseEvent<'_>>, SseError> {
        if self.handed_out {
            self.handed_out = false;
            self.data.clear();
            self.name.clear();
        }
        loop {
            self.line.clear();
            let n = (&mut self.r)
                .take(SSE_LINE_BYTES_MAX as u64 + 1)
                .read_until(b'\n', &mut self.line)?;
            if n == 0 {
                if !self.data_line {
                    return Ok(None);
                }
                // An event cut by the end of the stream still counts.
                return Ok(Some(self.take_event()));
            }
            self.lines += 1;
            if self.line.last() != Some(&b'\n') && n > SSE_LINE_BYTES_MAX {
                return Err(SseError::TooLarge);
            }
            let line = trim_eol(&self.line);
            if line.is_empty() {
                if self.data_line {
                    return Ok(Some(self.take_event()));
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix(b"data:") {
                let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                let joined = self.data.len() + usize::from(self.data_line) + rest.len();
                if joined > SSE_EVENT_BYTES_MAX {
                    return Err(SseError::TooLarge);
                }
                if self.data_line {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(rest);
                self.data_line = true;
            } else if let Some(rest) = line.strip_prefix(b"event:") {
                let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                self.name.clear();
                self.name
                    .extend_from_slice(&rest[..rest.len().min(SSE_NAME_BYTES_MAX)]);
            }
            // Comments (`: ping`), `id:` and `retry:` lines carry nothing we use.
        }
    }

    /// After the stream's terminator: whether the body ends right there. Looks at what is
    /// buffered, else reads once more; true only when that read sees the end (so that the
    /// upstream connection can be reused), false when anything follows or the read fails.
    pub fn at_end(&mut self) -> bool {
        matches!(self.r.fill_buf(), Ok(rest) if rest.is_empty())
    }

    fn take_event(&mut self) -> SseEvent<'_> {
        self.data_line = false;
        self.handed_out = true;
        SseEvent {
            name: &self.name,
            data: &self.data,
        }
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Append `event: <name>\n` (when named) and `data: <payload>\n\n` to `out`.
pub fn push_event(out: &mut Vec<u8>, name: &[u8], payload: &[u8]) {
    out.reserve(payload.len() + name.len() + 16);
    if !name.is_empty() {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name);
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\n\n");
}

/// A stream silent longer than `stream_idle_timeout_ms` (or whose worker stopped reading).
pub fn stream_idle_error(message: impl Into<Cow<'static, str>>) -> ApiError {
    ApiError::new(ErrorKind::RequestTimeout, "stream_idle_timeout", message)
}

/// A stream that ran longer than `stream_duration_ms_max`.
pub fn stream_duration_error(message: impl Into<Cow<'static, str>>) -> ApiError {
    ApiError::new(
        ErrorKind::RequestTimeout,
        "stream_duration_exceeded",
        message,
    )
}

/// An upstream event over [`SSE_EVENT_BYTES_MAX`] (or a line over [`SSE_LINE_BYTES_MAX`]).
pub fn event_too_large_error(message: impl Into<Cow<'static, str>>) -> ApiError {
    ApiError::new(
        ErrorKind::UpstreamInvalid,
        "upstream_event_too_large",
        message,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(input: &[u8]) -> Vec<(String, String)> {
        let mut r = SseReader::new(io::BufReader::with_capacity(3, input));
        let mut out = Vec::new();
        while let Some(e) = r.next_event().unwrap() {
            out.push((
                String::from_utf8_lossy(e.name).into_owned(),
                String::from_utf8_lossy(e.data).into_owned(),
            ));
        }
        out
    }

    #[test]
    fn splits_events_with_names() {
        let input = b": ping\n\ndata: {\"a\":1}\n\ndata: x\r\ndata: y\r\n\r\nevent: message_stop\ndata: {}\n\ndata: [DONE]\n\n";
        assert_eq!(
            events(input),
            vec![
                (String::new(), "{\"a\":1}".into()),
                (String::new(), "x\ny".into()),
                ("message_stop".into(), "{}".into()),
                (String::new(), "[DONE]".into()),
            ]
        );
        // An event cut by the end of the stream still counts.
        assert_eq!(events(b"data: z"), vec![(String::new(), "z".into())]);
        // An empty data line is an event with empty data.
        assert_eq!(events(b"data:\n\n"), vec![(String::new(), String::new())]);
    }

    #[test]
    fn comments_count_as_lines() {
        let mut r = SseReader::new(io::BufReader::new(&b": ping\n: ping\n"[..]));
        assert!(r.next_event().unwrap().is_none());
        assert_eq!(r.lines_read(), 2);
    }

    #[test]
    fn overlong_line_and_event_are_errors() {
        let long = vec![b'a'; SSE_LINE_BYTES_MAX + 10];
        let mut r = SseReader::new(io::BufReader::new(&long[..]));
        assert!(matches!(r.next_event(), Err(SseError::TooLarge)));
        let line = format!("data: {}\n", "b".repeat(SSE_LINE_BYTES_MAX - 16));
        let endless = line.repeat(SSE_EVENT_BYTES_MAX / SSE_LINE_BYTES_MAX + 2);
        let mut r = SseReader::new(io::BufReader::new(endless.as_bytes()));
        assert!(matches!(r.next_event(), Err(SseError::TooLarge)));
        assert!(r.data.len() <= SSE_EVENT_BYTES_MAX);
    }

    #[test]
    fn comments_between_events_do_not_add_up() {
        let mut input = Vec::new();
        for _ in 0..SSE_EVENT_BYTES_MAX / 8 + 1 {
            input.extend_from_slice(b": ping\n\n");
        }
        input.extend_from_slice(b"data: x\n\n");
        assert_eq!(events(&input), vec![(String::new(), "x".into())]);
    }

    #[test]
    fn at_end_after_the_terminator() {
        let mut r = SseReader::new(io::BufReader::new(&b"data: [DONE]\n\n"[..]));
        assert!(r.next_event().unwrap().is_some());
        assert!(r.at_end());
        let mut r = SseReader::new(io::BufReader::new(&b"data: [DONE]\n\ndata: more\n\n"[..]));
        assert!(r.next_event().unwrap().is_some());
        assert!(!r.at_end());
    }

    #[test]
    fn push_event_frames() {
        let mut out = Vec::new();
        push_event(&mut out, b"", b"x");
        push_event(&mut out, b"ping", b"{}");
        assert_eq!(out, b"data: x\n\nevent: ping\ndata: {}\n\n");
    }
}

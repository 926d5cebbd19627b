//! Server-Sent Events: reading an upstream event stream event by event (bounded line and event
//! sizes), writing the events the gateway sends (`data: ...\n\n`, `data: [DONE]`, error events),
//! and the errors that end a stream after it began.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, BufRead, Read};

use crate::error::{ApiError, ErrorKind};

/// Longest SSE line accepted from an upstream, bytes (bounds the line buffer).
pub const SSE_LINE_BYTES_MAX: usize = 1024 * 1024;
/// Largest SSE event accepted from an upstream: all its lines (`data:`, comments, `event:`, ...)
/// up to the blank line that ends it, bytes. An upstream that never ends its event would
/// otherwise grow one buffer without bound.
pub const SSE_EVENT_BYTES_MAX: usize = 4 * 1024 * 1024;
const _: () = assert!(SSE_LINE_BYTES_MAX <= SSE_EVENT_BYTES_MAX);
/// The OpenAI stream terminator.
pub const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

/// What the next read of an upstream stream produced.
#[derive(Debug, PartialEq, Eq)]
pub enum SseItem {
    /// The payload of one event (its `data:` lines joined by `\n`).
    Data(Vec<u8>),
    /// `data: [DONE]`.
    Done,
    /// The upstream closed the stream.
    Eof,
}

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

pub struct SseReader<R: BufRead> {
    r: R,
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    /// Bytes of the event being read so far (every line since the last blank one).
    event_bytes: usize,
}

impl<R: BufRead> SseReader<R> {
    pub fn new(r: R) -> Self {
        SseReader {
            r,
            line: Vec::with_capacity(1024),
            data: Vec::with_capacity(1024),
            has_data: false,
            event_bytes: 0,
        }
    }

    /// Read up to the end of the next event.
    pub fn next_item(&mut self) -> Result<SseItem, SseError> {
        loop {
            self.line.clear();
            let n = (&mut self.r)
                .take(SSE_LINE_BYTES_MAX as u64 + 1)
                .read_until(b'\n', &mut self.line)?;
            if n == 0 {
                return Ok(if self.has_data {
                    self.take_event()
                } else {
                    SseItem::Eof
                });
            }
            self.event_bytes += n;
            let too_long = self.line.last() != Some(&b'\n') && n > SSE_LINE_BYTES_MAX;
            if too_long || self.event_bytes > SSE_EVENT_BYTES_MAX {
                return Err(SseError::TooLarge);
            }
            let line = trim_eol(&self.line);
            if line.is_empty() {
                self.event_bytes = 0;
                if self.has_data {
                    return Ok(self.take_event());
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix(b"data:") {
                let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(rest);
                self.has_data = true;
            }
            // Comments (`: ping`), `event:`, `id:` and `retry:` lines carry nothing we forward.
        }
    }

    /// After `[DONE]`: whether the stream ends right there. Looks at what is buffered, else reads
    /// once more; true only when that read sees the end (so that the upstream connection can be
    /// reused), false when anything follows or the read fails.
    pub fn at_end(&mut self) -> bool {
        matches!(self.r.fill_buf(), Ok(rest) if rest.is_empty())
    }

    fn take_event(&mut self) -> SseItem {
        self.has_data = false;
        let payload = std::mem::take(&mut self.data);
        if payload == b"[DONE]" {
            SseItem::Done
        } else {
            SseItem::Data(payload)
        }
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `data: <payload>\n\n`.
pub fn data_event(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\n\n");
    out
}

/// The SSE event that reports an error after a stream started: `data: {"error":{...}}`.
pub fn error_event(err: &ApiError) -> Vec<u8> {
    data_event(&err.body())
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

/// Token counts of a chunk that carries `usage` (OpenAI's final chunk under `include_usage`).
pub fn chunk_usage(payload: &[u8]) -> Option<(u64, u64)> {
    if !contains(payload, b"\"usage\":{") && !contains(payload, b"\"usage\": {") {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Usage {
        prompt_tokens: Option<u64>,
        completion_tokens: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct Chunk {
        usage: Option<Usage>,
    }
    let chunk: Chunk = serde_json::from_slice(payload).ok()?;
    let u = chunk.usage?;
    Some((
        u.prompt_tokens.unwrap_or(0),
        u.completion_tokens.unwrap_or(0),
    ))
}

/// Whether a chunk is the usage-only chunk (`"choices":[]`).
pub fn is_usage_only(payload: &[u8]) -> bool {
    contains(payload, b"\"choices\":[]") || contains(payload, b"\"choices\": []")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(input: &[u8]) -> Vec<SseItem> {
        let mut r = SseReader::new(io::BufReader::with_capacity(3, input));
        let mut out = Vec::new();
        loop {
            let item = r.next_item().unwrap();
            let end = item == SseItem::Eof;
            out.push(item);
            if end {
                return out;
            }
        }
    }

    #[test]
    fn splits_events() {
        let input =
            b": ping\n\ndata: {\"a\":1}\n\ndata: x\r\ndata: y\r\n\r\nevent: e\ndata: [DONE]\n\n";
        assert_eq!(
            items(input),
            vec![
                SseItem::Data(b"{\"a\":1}".to_vec()),
                SseItem::Data(b"x\ny".to_vec()),
                SseItem::Done,
                SseItem::Eof
            ]
        );
        // An event cut by EOF still counts.
        assert_eq!(
            items(b"data: z"),
            vec![SseItem::Data(b"z".to_vec()), SseItem::Eof]
        );
    }

    #[test]
    fn overlong_line_is_an_error() {
        let long = vec![b'a'; SSE_LINE_BYTES_MAX + 10];
        let mut r = SseReader::new(io::BufReader::new(&long[..]));
        assert!(matches!(r.next_item(), Err(SseError::TooLarge)));
    }

    #[test]
    fn an_event_that_never_ends_is_an_error_at_its_bound() {
        // 64 KiB data lines with no blank line between them: one event that only grows.
        let line = [b"data: ".as_slice(), &[b'x'; 64 * 1024], b"\n"].concat();
        let lines = SSE_EVENT_BYTES_MAX / line.len() + 1;
        let mut input = b"data: first\n\n".to_vec();
        for _ in 0..lines {
            input.extend_from_slice(&line);
        }
        let mut r = SseReader::new(io::BufReader::new(&input[..]));
        assert_eq!(r.next_item().unwrap(), SseItem::Data(b"first".to_vec()));
        assert!(matches!(r.next_item(), Err(SseError::TooLarge)));
        assert!(r.data.len() <= SSE_EVENT_BYTES_MAX);
        // Just under the bound, ended by a blank line: one event.
        let mut input = Vec::new();
        for _ in 0..lines - 2 {
            input.extend_from_slice(&line);
        }
        input.extend_from_slice(b"\n: ping\n\n");
        let mut r = SseReader::new(io::BufReader::new(&input[..]));
        assert!(matches!(r.next_item(), Ok(SseItem::Data(d)) if d.len() > SSE_EVENT_BYTES_MAX / 2));
        assert_eq!(r.next_item().unwrap(), SseItem::Eof);
    }

    #[test]
    fn comments_between_events_do_not_add_up() {
        // Keep-alive comments, each ending its own (empty) event, never reach the bound.
        let mut input = Vec::new();
        for _ in 0..SSE_EVENT_BYTES_MAX / 8 + 1 {
            input.extend_from_slice(b": ping\n\n");
        }
        input.extend_from_slice(b"data: x\n\n");
        let mut r = SseReader::new(io::BufReader::new(&input[..]));
        assert_eq!(r.next_item().unwrap(), SseItem::Data(b"x".to_vec()));
    }

    #[test]
    fn at_end_after_done() {
        let mut r = SseReader::new(io::BufReader::new(&b"data: [DONE]\n\n"[..]));
        assert_eq!(r.next_item().unwrap(), SseItem::Done);
        assert!(r.at_end());
        let mut r = SseReader::new(io::BufReader::new(&b"data: [DONE]\n\ndata: more\n\n"[..]));
        assert_eq!(r.next_item().unwrap(), SseItem::Done);
        assert!(!r.at_end());
    }

    #[test]
    fn usage_detection() {
        let p = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;
        assert_eq!(chunk_usage(p), Some((5, 7)));
        assert!(is_usage_only(p));
        assert_eq!(
            chunk_usage(br#"{"choices":[{"delta":{}}],"usage":null}"#),
            None
        );
        assert_eq!(data_event(b"x"), b"data: x\n\n");
    }
}

//! Server-Sent Events from an upstream: read event by event (bounded line and event sizes), each
//! with its `event:` name and its `data:` lines joined, into buffers reused for the whole stream.

use std::io::{self, BufRead, Read};

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
    pub fn next_event(&mut self) -> io::Result<Option<SseEvent<'_>>> {
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
                return Err(invalid("SSE line too long"));
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
                    return Err(invalid("SSE event too large"));
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

    fn take_event(&mut self) -> SseEvent<'_> {
        self.data_line = false;
        self.handed_out = true;
        SseEvent {
            name: &self.name,
            data: &self.data,
        }
    }
}

fn invalid(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
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
        assert!(r.next_event().is_err());
        let line = format!("data: {}\n", "b".repeat(SSE_LINE_BYTES_MAX - 16));
        let endless = line.repeat(SSE_EVENT_BYTES_MAX / SSE_LINE_BYTES_MAX + 2);
        let mut r = SseReader::new(io::BufReader::new(endless.as_bytes()));
        assert_eq!(
            r.next_event().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn push_event_frames() {
        let mut out = Vec::new();
        push_event(&mut out, b"", b"x");
        push_event(&mut out, b"ping", b"{}");
        assert_eq!(out, b"data: x\n\nevent: ping\ndata: {}\n\n");
    }
}

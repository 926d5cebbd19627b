//! Server-Sent Events: reading an upstream event stream event by event (bounded line length), and
//! writing the events the gateway sends (`data: ...\n\n`, `data: [DONE]`, error events).

use std::io::{self, BufRead, Read};

use crate::error::ApiError;

/// Longest SSE line accepted from an upstream, bytes.
pub const SSE_LINE_BYTES_MAX: usize = 1024 * 1024;
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

pub struct SseReader<R: BufRead> {
    r: R,
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
}

impl<R: BufRead> SseReader<R> {
    pub fn new(r: R) -> Self {
        SseReader {
            r,
            line: Vec::with_capacity(1024),
            data: Vec::with_capacity(1024),
            has_data: false,
        }
    }

    /// Read up to the end of the next event.
    pub fn next_item(&mut self) -> io::Result<SseItem> {
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
            if self.line.last() != Some(&b'\n') && n > SSE_LINE_BYTES_MAX {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "SSE line too long",
                ));
            }
            let line = trim_eol(&self.line);
            if line.is_empty() {
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
        assert!(r.next_item().is_err());
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

//! Server-Sent Events scanning for the load tool's stream mode: finds event boundaries in a
//! response body fed in arbitrary pieces and classifies each event by its first `data:` line
//! (content; the end: OpenAI's `[DONE]` or Anthropic's `message_stop`; an error: OpenAI's
//! `{"error":...}` or Anthropic's `{"type":"error",...}`) without copying the body.

/// Bytes of a line kept to classify it: enough for `data: {"error"`.
const LINE_PREFIX_BYTES: usize = 32;

/// One complete event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SseEvent {
    /// A data event (a chunk of the answer).
    Data,
    /// The end of the stream: OpenAI's `data: [DONE]`, Anthropic's `{"type":"message_stop"}`.
    Done,
    /// The upstream failed mid-stream: `data: {"error": ...}` (OpenAI) or
    /// `data: {"type":"error", ...}` (Anthropic).
    Error,
}

/// Event splitter state across body pieces.
#[derive(Debug, Default)]
pub struct SseScanner {
    prefix: [u8; LINE_PREFIX_BYTES],
    /// Bytes of the current line so far (only the first `LINE_PREFIX_BYTES` are kept).
    line_len: usize,
    /// The kind of the event being read, set by its first `data:` line.
    event: Option<SseEvent>,
}

impl SseScanner {
    pub fn reset(&mut self) {
        self.line_len = 0;
        self.event = None;
    }

    /// Scan `bytes`, calling `on_event` for every event completed by a blank line.
    pub fn feed(&mut self, mut bytes: &[u8], on_event: &mut dyn FnMut(SseEvent)) {
        while !bytes.is_empty() {
            let nl = bytes.iter().position(|&b| b == b'\n');
            let segment = &bytes[..nl.unwrap_or(bytes.len())];
            if self.line_len < LINE_PREFIX_BYTES {
                let take = segment.len().min(LINE_PREFIX_BYTES - self.line_len);
                self.prefix[self.line_len..self.line_len + take].copy_from_slice(&segment[..take]);
            }
            self.line_len += segment.len();
            let Some(nl) = nl else {
                return;
            };
            self.end_line(on_event);
            bytes = &bytes[nl + 1..];
        }
    }

    fn end_line(&mut self, on_event: &mut dyn FnMut(SseEvent)) {
        let kept = self.line_len.min(LINE_PREFIX_BYTES);
        let mut text = &self.prefix[..kept];
        if self.line_len == kept {
            text = text.strip_suffix(b"\r").unwrap_or(text);
        }
        if text.is_empty() {
            if let Some(event) = self.event.take() {
                on_event(event);
            }
        } else if self.event.is_none() {
            if let Some(payload) = text.strip_prefix(b"data:") {
                let payload = payload.strip_prefix(b" ").unwrap_or(payload);
                self.event = Some(
                    if payload.starts_with(b"[DONE]")
                        || payload.starts_with(b"{\"type\":\"message_stop\"")
                    {
                        SseEvent::Done
                    } else if payload.starts_with(b"{\"error\"")
                        || payload.starts_with(b"{\"type\":\"error\"")
                    {
                        SseEvent::Error
                    } else {
                        SseEvent::Data
                    },
                );
            }
        }
        self.line_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_split(body: &[u8], cut: usize) -> Vec<SseEvent> {
        let mut s = SseScanner::default();
        let mut events = Vec::new();
        s.feed(&body[..cut], &mut |e| events.push(e));
        s.feed(&body[cut..], &mut |e| events.push(e));
        events
    }

    #[test]
    fn classifies_events_at_every_split() {
        let body = b"data: {\"id\":\"1\",\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
                     : a comment\n\n\
                     event: message\r\ndata: {\"choices\":[]}\r\n\r\n\
                     data: {\"error\":{\"message\":\"boom\"}}\n\n\
                     data: [DONE]\n\n";
        let want = vec![
            SseEvent::Data,
            SseEvent::Data,
            SseEvent::Error,
            SseEvent::Done,
        ];
        for cut in 0..=body.len() {
            assert_eq!(scan_split(body, cut), want, "cut at {cut}");
        }
    }

    #[test]
    fn classifies_anthropic_events() {
        let body = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\n\
                     event: ping\ndata: {\"type\": \"ping\"}\n\n\
                     event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n\
                     event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let want = vec![
            SseEvent::Data,
            SseEvent::Data,
            SseEvent::Error,
            SseEvent::Done,
        ];
        for cut in 0..=body.len() {
            assert_eq!(scan_split(body, cut), want, "cut at {cut}");
        }
    }

    #[test]
    fn incomplete_event_is_not_reported() {
        assert!(scan_split(b"data: {\"a\":1}\n", 3).is_empty());
        let mut s = SseScanner::default();
        s.feed(b"data: x\n", &mut |_| panic!("no event yet"));
        s.reset();
        s.feed(b"\n", &mut |_| panic!("reset forgot the event"));
    }

    #[test]
    fn long_lines_are_classified_by_their_start() {
        let mut body = b"data: ".to_vec();
        body.extend(std::iter::repeat_n(b'x', 10_000));
        body.extend_from_slice(b"\r\n\r\n");
        assert_eq!(scan_split(&body, 5000), vec![SseEvent::Data]);
    }
}

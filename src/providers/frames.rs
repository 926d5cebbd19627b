//! One reader of an upstream's streamed answer whatever its framing, behind [`EventSource`]:
//! Server-Sent Events (`text/event-stream`, through [`SseReader`]) or AWS event stream messages
//! (`application/vnd.amazon.eventstream`, through [`EventStreamReader`]). Either yields named
//! events, or exceptions the upstream reports outside its events; a framing fault (a bad CRC, a
//! message over the bound) is an error value that ends the stream, never a panic.

use std::fmt;
use std::io::{self, BufRead};

use super::eventstream::{Decoder, Message, MessageKind};
use super::sse::{SseError, SseReader, SSE_EVENT_BYTES_MAX};

/// Largest event stream message accepted from an upstream, bytes: the bound of one SSE event.
pub const EVENT_STREAM_MESSAGE_BYTES_MAX: usize = SSE_EVENT_BYTES_MAX;

/// One unit of an upstream stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// An event: its name (SSE `event:`, empty when unnamed; an event stream's `:event-type`)
    /// and its payload.
    Event { name: &'a [u8], data: &'a [u8] },
    /// An error the upstream reported in the stream outside its events (an event stream's
    /// `:message-type exception`, named by `:exception-type`, or `error`, named by
    /// `:error-code` with `{"message": <:error-message>}` as payload).
    Exception {
        error_type: &'a str,
        payload: &'a [u8],
    },
}

/// Why reading an upstream stream failed.
#[derive(Debug)]
pub enum FrameError {
    /// The transport failed (or timed out).
    Io(io::Error),
    /// An event over its bound ([`SSE_EVENT_BYTES_MAX`], [`EVENT_STREAM_MESSAGE_BYTES_MAX`]).
    TooLarge,
    /// The stream cannot be read past this point (a CRC mismatch, a malformed message, a body
    /// that ends inside a message): what went wrong.
    Corrupt(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "{e}"),
            FrameError::TooLarge => f.write_str("stream event too large"),
            FrameError::Corrupt(why) => f.write_str(why),
        }
    }
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

impl From<SseError> for FrameError {
    fn from(e: SseError) -> Self {
        match e {
            SseError::Io(e) => FrameError::Io(e),
            SseError::TooLarge => FrameError::TooLarge,
        }
    }
}

/// An upstream stream, frame by frame.
pub trait EventSource {
    /// The next frame; `None` at a clean end of the body.
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError>;

    /// After the stream's terminator: whether the body ends right there (so that the upstream
    /// connection can be reused). Reads at most once more.
    fn at_end(&mut self) -> bool;
}

impl<R: BufRead> EventSource for SseReader<R> {
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        Ok(self.next_event()?.map(|e| Frame::Event {
            name: e.name,
            data: e.data,
        }))
    }

    fn at_end(&mut self) -> bool {
        SseReader::at_end(self)
    }
}

/// AWS event stream messages read from a body, each decoded (both CRCs checked) as its bytes
/// arrive: at most one message is buffered, and none over [`EVENT_STREAM_MESSAGE_BYTES_MAX`].
pub struct EventStreamReader<R: BufRead> {
    r: R,
    decoder: Decoder,
    /// The message handed out last.
    message: Option<Message>,
    /// The payload made for an `error` message.
    error_payload: Vec<u8>,
}

impl<R: BufRead> EventStreamReader<R> {
    pub fn new(r: R) -> Self {
        EventStreamReader {
            r,
            decoder: Decoder::with_frame_bytes_max(EVENT_STREAM_MESSAGE_BYTES_MAX),
            message: None,
            error_payload: Vec::new(),
        }
    }

    /// Read until one whole message is decoded; `None` at a clean end of the body.
    fn read_message(&mut self) -> Result<Option<Message>, FrameError> {
        loop {
            let buf = self.r.fill_buf()?;
            if buf.is_empty() {
                return match self.decoder.finish() {
                    Ok(()) => Ok(None),
                    Err(e) => Err(FrameError::Corrupt(e.to_string())),
                };
            }
            let mut input = buf;
            let before = input.len();
            let decoded = self.decoder.decode(&mut input);
            let used = before - input.len();
            self.r.consume(used);
            match decoded {
                Ok(Some(m)) => return Ok(Some(m)),
                Ok(None) => {}
                Err(super::eventstream::DecodeError::FrameTooLarge { .. }) => {
                    return Err(FrameError::TooLarge)
                }
                Err(e) => return Err(FrameError::Corrupt(e.to_string())),
            }
        }
    }
}

impl<R: BufRead> EventSource for EventStreamReader<R> {
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        self.message = self.read_message()?;
        let Some(m) = self.message.as_ref() else {
            return Ok(None);
        };
        Ok(Some(match m.kind() {
            MessageKind::Event { event_type } => Frame::Event {
                name: event_type.as_bytes(),
                data: &m.payload,
            },
            MessageKind::Exception { exception_type } => Frame::Exception {
                error_type: exception_type,
                payload: &m.payload,
            },
            MessageKind::Error { code, message } => {
                self.error_payload.clear();
                // Serializing a map of one string cannot fail.
                let _ = serde_json::to_writer(
                    &mut self.error_payload,
                    &serde_json::json!({ "message": message }),
                );
                Frame::Exception {
                    error_type: code,
                    payload: &self.error_payload,
                }
            }
            MessageKind::Malformed => {
                return Err(FrameError::Corrupt(
                    "an event stream message without a usable :message-type".into(),
                ))
            }
        }))
    }

    fn at_end(&mut self) -> bool {
        self.decoder.buffered_bytes() == 0
            && matches!(self.r.fill_buf(), Ok(rest) if rest.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::eventstream::{encode_error, encode_event, encode_exception};
    use std::io::{BufReader, Read};

    const JSON: &str = "application/json";

    /// A reader that hands out its bytes in the given pieces, one per read.
    struct Pieces {
        pieces: Vec<Vec<u8>>,
        next: usize,
    }

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some(p) = self.pieces.get_mut(self.next) else {
                return Ok(0);
            };
            let n = p.len().min(buf.len());
            buf[..n].copy_from_slice(&p[..n]);
            p.drain(..n);
            if p.is_empty() {
                self.next += 1;
            }
            Ok(n)
        }
    }

    fn stream() -> Vec<u8> {
        let mut wire = Vec::new();
        for (name, payload) in [
            ("messageStart", r#"{"role":"assistant","p":"abcd"}"#),
            (
                "contentBlockDelta",
                r#"{"contentBlockIndex":0,"delta":{"text":"Hello"}}"#,
            ),
            ("contentBlockStop", r#"{"contentBlockIndex":0}"#),
            ("messageStop", r#"{"stopReason":"end_turn"}"#),
        ] {
            wire.extend(encode_event(name, JSON, payload.as_bytes()).unwrap());
        }
        wire.extend(
            encode_exception("throttlingException", JSON, br#"{"message":"slow down"}"#).unwrap(),
        );
        wire.extend(encode_error("InternalFailure", "oops").unwrap());
        wire
    }

    /// Every frame as (kind, name, payload) until the end or an error.
    fn frames(pieces: Vec<Vec<u8>>) -> (Vec<(bool, String, String)>, Option<String>) {
        let mut r = EventStreamReader::new(BufReader::with_capacity(7, Pieces { pieces, next: 0 }));
        let mut out = Vec::new();
        loop {
            match r.next_frame() {
                Ok(None) => return (out, None),
                Ok(Some(Frame::Event { name, data })) => out.push((
                    true,
                    String::from_utf8_lossy(name).into_owned(),
                    String::from_utf8_lossy(data).into_owned(),
                )),
                Ok(Some(Frame::Exception {
                    error_type,
                    payload,
                })) => out.push((
                    false,
                    error_type.to_owned(),
                    String::from_utf8_lossy(payload).into_owned(),
                )),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
    }

    #[test]
    fn events_exceptions_and_errors() {
        let (got, err) = frames(vec![stream()]);
        assert_eq!(err, None);
        let names: Vec<&str> = got.iter().map(|(_, n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "messageStart",
                "contentBlockDelta",
                "contentBlockStop",
                "messageStop",
                "throttlingException",
                "InternalFailure"
            ]
        );
        assert!(got[..4].iter().all(|(event, _, _)| *event));
        assert_eq!(
            got[4],
            (
                false,
                "throttlingException".into(),
                r#"{"message":"slow down"}"#.into()
            )
        );
        assert_eq!(
            got[5],
            (
                false,
                "InternalFailure".into(),
                r#"{"message":"oops"}"#.into()
            )
        );
    }

    /// The body split at every byte offset (and in single bytes) reads the same frames.
    #[test]
    fn every_split_reads_the_same() {
        let wire = stream();
        let (whole, _) = frames(vec![wire.clone()]);
        for k in 1..wire.len() {
            let (a, b) = wire.split_at(k);
            let (got, err) = frames(vec![a.to_vec(), b.to_vec()]);
            assert_eq!((got, err), (whole.clone(), None), "split at {k}");
        }
        let bytes: Vec<Vec<u8>> = wire.iter().map(|b| vec![*b]).collect();
        assert_eq!(frames(bytes), (whole, None));
    }

    #[test]
    fn corruption_and_truncation_end_the_stream_cleanly() {
        let wire = stream();
        let first =
            encode_event("messageStart", JSON, br#"{"role":"assistant","p":"abcd"}"#).unwrap();
        let mut bad = wire.clone();
        let at = first.len() + 20;
        bad[at] ^= 0x20;
        let (got, err) = frames(vec![bad]);
        assert_eq!(got.len(), 1);
        assert!(err.unwrap().contains("CRC mismatch"));
        let (got, err) = frames(vec![wire[..wire.len() - 3].to_vec()]);
        assert_eq!(got.len(), 5);
        assert!(err.unwrap().contains("ended inside a message"));
        let (got, err) = frames(vec![b"<html>not an event stream</html>".to_vec()]);
        assert!(got.is_empty() && err.is_some());
    }

    #[test]
    fn at_end_after_the_last_message() {
        let one = encode_event("metadata", JSON, b"{}").unwrap();
        let mut r = EventStreamReader::new(BufReader::new(&one[..]));
        assert!(r.next_frame().unwrap().is_some());
        assert!(r.at_end());
        let two = [one.clone(), one].concat();
        let mut r = EventStreamReader::new(BufReader::new(&two[..]));
        assert!(r.next_frame().unwrap().is_some());
        assert!(!r.at_end());
    }
}

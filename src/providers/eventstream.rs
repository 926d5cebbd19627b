//! The binary `application/vnd.amazon.eventstream` framing (Bedrock `ConverseStream`,
//! `InvokeModelWithResponseStream`): an incremental, bounded decoder that accepts the body in
//! arbitrary slices and checks both CRCs, and a small encoder.
//!
//! A message on the wire:
//!
//! ```text
//! total length u32 | headers length u32 | prelude CRC32 u32      (the 12-byte prelude)
//! headers: (name length u8, name, value type u8, value)*
//! payload
//! message CRC32 u32 (of everything before it)
//! ```
//!
//! All integers are big-endian. Header value types: 0 true, 1 false, 2 byte, 3 short, 4 int,
//! 5 long, 6 bytes (u16 length), 7 string (u16 length, UTF-8), 8 timestamp (i64 ms), 9 uuid.

use std::fmt;

/// Bytes of the prelude: total length, headers length, prelude CRC.
pub const PRELUDE_BYTES: usize = 12;
/// Bytes of the trailing message CRC.
pub const MESSAGE_CRC_BYTES: usize = 4;
/// The smallest message: a prelude and a CRC, no headers, no payload.
pub const FRAME_BYTES_MIN: usize = PRELUDE_BYTES + MESSAGE_CRC_BYTES;
/// The largest message accepted (AWS's limit is 16 MB); a larger prelude is an error before any
/// of the message is buffered.
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;
/// The largest headers section accepted (AWS's limit).
pub const HEADERS_BYTES_MAX: usize = 128 * 1024;
/// A decoder keeps a buffer up to this size between frames; a larger one is freed.
pub const BUFFER_RETAIN_BYTES_MAX: usize = 64 * 1024;

const _: () = assert!(FRAME_BYTES_MIN < HEADERS_BYTES_MAX && HEADERS_BYTES_MAX < FRAME_BYTES_MAX);
const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);

pub const MESSAGE_TYPE: &str = ":message-type";
pub const EVENT_TYPE: &str = ":event-type";
pub const EXCEPTION_TYPE: &str = ":exception-type";
pub const CONTENT_TYPE: &str = ":content-type";
pub const ERROR_CODE: &str = ":error-code";
pub const ERROR_MESSAGE: &str = ":error-message";

/// The MIME type of an event stream body.
pub const MIME: &str = "application/vnd.amazon.eventstream";

/// A header value, by wire type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderValue {
    Bool(bool),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Bytes(Vec<u8>),
    String(String),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
    Uuid([u8; 16]),
}

impl HeaderValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::String(s) => Some(s),
            _ => None,
        }
    }

    fn type_byte(&self) -> u8 {
        match self {
            HeaderValue::Bool(true) => 0,
            HeaderValue::Bool(false) => 1,
            HeaderValue::Byte(_) => 2,
            HeaderValue::Short(_) => 3,
            HeaderValue::Int(_) => 4,
            HeaderValue::Long(_) => 5,
            HeaderValue::Bytes(_) => 6,
            HeaderValue::String(_) => 7,
            HeaderValue::Timestamp(_) => 8,
            HeaderValue::Uuid(_) => 9,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: HeaderValue,
}

impl Header {
    pub fn string(name: &str, value: &str) -> Header {
        Header {
            name: name.to_string(),
            value: HeaderValue::String(value.to_string()),
        }
    }
}

/// One decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub headers: Vec<Header>,
    pub payload: Vec<u8>,
}

/// What a message carries, from its `:message-type` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind<'a> {
    /// `:message-type: event`; the payload is the event named by `:event-type`.
    Event { event_type: &'a str },
    /// `:message-type: exception`; the payload is the modeled error named by `:exception-type`.
    Exception { exception_type: &'a str },
    /// `:message-type: error`: an unmodeled error in the `:error-code`/`:error-message` headers.
    Error { code: &'a str, message: &'a str },
    /// No `:message-type`, an unknown one, or its companion header missing.
    Malformed,
}

impl Message {
    /// The first header of that name.
    pub fn header(&self, name: &str) -> Option<&HeaderValue> {
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| &h.value)
    }

    /// The first header of that name when it is a string.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(HeaderValue::as_str)
    }

    pub fn content_type(&self) -> Option<&str> {
        self.header_str(CONTENT_TYPE)
    }

    pub fn kind(&self) -> MessageKind<'_> {
        match self.header_str(MESSAGE_TYPE) {
            Some("event") => match self.header_str(EVENT_TYPE) {
                Some(event_type) => MessageKind::Event { event_type },
                None => MessageKind::Malformed,
            },
            Some("exception") => match self.header_str(EXCEPTION_TYPE) {
                Some(exception_type) => MessageKind::Exception { exception_type },
                None => MessageKind::Malformed,
            },
            Some("error") => match self.header_str(ERROR_CODE) {
                Some(code) => MessageKind::Error {
                    code,
                    message: self.header_str(ERROR_MESSAGE).unwrap_or(""),
                },
                None => MessageKind::Malformed,
            },
            _ => MessageKind::Malformed,
        }
    }
}

/// Why a stream could not be decoded. After one, the decoder has lost the frame boundaries and
/// returns the same error for every later call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The prelude's CRC does not match: the length fields cannot be trusted.
    PreludeCrc { expected: u32, actual: u32 },
    /// The message's CRC does not match.
    MessageCrc { expected: u32, actual: u32 },
    /// Total length below [`FRAME_BYTES_MIN`].
    FrameTooSmall { total_bytes: u32 },
    /// Total length above the decoder's bound ([`FRAME_BYTES_MAX`] unless set lower).
    FrameTooLarge {
        total_bytes: u32,
        limit_bytes: usize,
    },
    /// Headers length above [`HEADERS_BYTES_MAX`] or beyond the frame.
    HeadersLength {
        headers_bytes: u32,
        total_bytes: u32,
    },
    /// A header that does not parse: the reason.
    BadHeader(&'static str),
    /// A header value type outside 0..=9.
    UnknownHeaderType(u8),
    /// The body ended inside a message (from [`Decoder::finish`]).
    Truncated { buffered_bytes: usize },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::PreludeCrc { expected, actual } => write!(
                f,
                "event stream prelude CRC mismatch (expected {expected:#010x}, computed {actual:#010x})"
            ),
            DecodeError::MessageCrc { expected, actual } => write!(
                f,
                "event stream message CRC mismatch (expected {expected:#010x}, computed {actual:#010x})"
            ),
            DecodeError::FrameTooSmall { total_bytes } => {
                write!(f, "event stream message of {total_bytes} bytes is below the minimum {FRAME_BYTES_MIN}")
            }
            DecodeError::FrameTooLarge {
                total_bytes,
                limit_bytes,
            } => {
                write!(f, "event stream message of {total_bytes} bytes exceeds {limit_bytes}")
            }
            DecodeError::HeadersLength {
                headers_bytes,
                total_bytes,
            } => write!(
                f,
                "event stream headers length {headers_bytes} does not fit a message of {total_bytes} bytes"
            ),
            DecodeError::BadHeader(why) => write!(f, "event stream header: {why}"),
            DecodeError::UnknownHeaderType(t) => write!(f, "event stream header type {t} unknown"),
            DecodeError::Truncated { buffered_bytes } => write!(
                f,
                "event stream ended inside a message ({buffered_bytes} bytes of it received)"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// An incremental decoder: feed it the body in slices of any size, in order.
pub struct Decoder {
    /// The part of the current message received so far (prelude first).
    buf: Vec<u8>,
    /// The current message's total length, once its prelude is checked; 0 before.
    total: usize,
    /// Largest message accepted, bytes.
    frame_bytes_max: usize,
    failed: Option<DecodeError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            buf: Vec::new(),
            total: 0,
            frame_bytes_max: FRAME_BYTES_MAX,
            failed: None,
        }
    }
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("buffered", &self.buf.len())
            .field("total", &self.total)
            .field("failed", &self.failed)
            .finish()
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// A decoder that refuses messages over `frame_bytes_max` bytes (at most [`FRAME_BYTES_MAX`])
    /// from their prelude, before buffering any of them.
    pub fn with_frame_bytes_max(frame_bytes_max: usize) -> Decoder {
        Decoder {
            frame_bytes_max: frame_bytes_max.clamp(FRAME_BYTES_MIN, FRAME_BYTES_MAX),
            ..Decoder::default()
        }
    }

    /// Takes bytes from the front of `input` until one message is complete and returns it,
    /// leaving the rest in `input`; `Ok(None)` when `input` ran out first (what was taken is kept
    /// for the next call). Call again while `input` is not empty. At most one message's bytes are
    /// buffered, and never more than [`FRAME_BYTES_MAX`].
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Message>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.decode_inner(input);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
            self.buf = Vec::new();
            self.total = 0;
        }
        r
    }

    fn decode_inner(&mut self, input: &mut &[u8]) -> Result<Option<Message>, DecodeError> {
        // A whole message at the front of `input` and nothing buffered: parse it in place.
        if self.buf.is_empty() && input.len() >= PRELUDE_BYTES {
            let total = check_prelude(&input[..PRELUDE_BYTES], self.frame_bytes_max)?;
            if input.len() >= total {
                let (frame, rest) = input.split_at(total);
                *input = rest;
                return parse_frame(frame).map(Some);
            }
        }
        if self.buf.len() < PRELUDE_BYTES {
            let take = (PRELUDE_BYTES - self.buf.len()).min(input.len());
            self.buf.extend_from_slice(&input[..take]);
            *input = &input[take..];
            if self.buf.len() < PRELUDE_BYTES {
                return Ok(None);
            }
            self.total = check_prelude(&self.buf, self.frame_bytes_max)?;
            // Grow with what arrives: a prelude alone does not commit the announced size.
            self.buf
                .reserve(self.total.min(BUFFER_RETAIN_BYTES_MAX) - PRELUDE_BYTES);
        }
        let take = (self.total - self.buf.len()).min(input.len());
        self.buf.extend_from_slice(&input[..take]);
        *input = &input[take..];
        if self.buf.len() < self.total {
            return Ok(None);
        }
        let msg = parse_frame(&self.buf);
        self.total = 0;
        if self.buf.capacity() > BUFFER_RETAIN_BYTES_MAX {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        msg.map(Some)
    }

    /// Every message in `input`, appended to `out`, stopping at the first error.
    pub fn decode_all(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<Message>,
    ) -> Result<(), DecodeError> {
        while !input.is_empty() {
            match self.decode(&mut input)? {
                Some(m) => out.push(m),
                None => break,
            }
        }
        Ok(())
    }

    /// Bytes of an incomplete message held.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// At the end of the body: an error when it stopped inside a message or after an error.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Truncated {
                buffered_bytes: self.buf.len(),
            })
        }
    }
}

/// Checks a prelude; returns the message's total length.
fn check_prelude(p: &[u8], frame_bytes_max: usize) -> Result<usize, DecodeError> {
    let expected = be_u32(&p[8..12]);
    let actual = crc32fast::hash(&p[..8]);
    if expected != actual {
        return Err(DecodeError::PreludeCrc { expected, actual });
    }
    let total_bytes = be_u32(&p[0..4]);
    let headers_bytes = be_u32(&p[4..8]);
    let total = total_bytes as usize;
    if total < FRAME_BYTES_MIN {
        return Err(DecodeError::FrameTooSmall { total_bytes });
    }
    if total > frame_bytes_max {
        return Err(DecodeError::FrameTooLarge {
            total_bytes,
            limit_bytes: frame_bytes_max,
        });
    }
    if headers_bytes as usize > HEADERS_BYTES_MAX
        || headers_bytes as usize > total - FRAME_BYTES_MIN
    {
        return Err(DecodeError::HeadersLength {
            headers_bytes,
            total_bytes,
        });
    }
    Ok(total)
}

/// Parses one complete message whose prelude was checked.
fn parse_frame(frame: &[u8]) -> Result<Message, DecodeError> {
    let body_end = frame.len() - MESSAGE_CRC_BYTES;
    let expected = be_u32(&frame[body_end..]);
    let actual = crc32fast::hash(&frame[..body_end]);
    if expected != actual {
        return Err(DecodeError::MessageCrc { expected, actual });
    }
    let headers_end = PRELUDE_BYTES + be_u32(&frame[4..8]) as usize;
    let headers = parse_headers(&frame[PRELUDE_BYTES..headers_end])?;
    Ok(Message {
        headers,
        payload: frame[headers_end..body_end].to_vec(),
    })
}

/// A cursor over the headers section; every read is bounds-checked.
struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(DecodeError::BadHeader("truncated"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u16_len(&mut self) -> Result<usize, DecodeError> {
        Ok(usize::from(u16::from_be_bytes(self.array()?)))
    }
}

fn parse_headers(b: &[u8]) -> Result<Vec<Header>, DecodeError> {
    let mut c = Cursor { b };
    let mut headers = Vec::new();
    while !c.b.is_empty() {
        let name_len = usize::from(c.take(1)?[0]);
        if name_len == 0 {
            return Err(DecodeError::BadHeader("empty name"));
        }
        let name = std::str::from_utf8(c.take(name_len)?)
            .map_err(|_| DecodeError::BadHeader("name is not UTF-8"))?
            .to_string();
        let value = match c.take(1)?[0] {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Byte(i8::from_be_bytes(c.array()?)),
            3 => HeaderValue::Short(i16::from_be_bytes(c.array()?)),
            4 => HeaderValue::Int(i32::from_be_bytes(c.array()?)),
            5 => HeaderValue::Long(i64::from_be_bytes(c.array()?)),
            6 => {
                let n = c.u16_len()?;
                HeaderValue::Bytes(c.take(n)?.to_vec())
            }
            7 => {
                let n = c.u16_len()?;
                let s = std::str::from_utf8(c.take(n)?)
                    .map_err(|_| DecodeError::BadHeader("string value is not UTF-8"))?;
                HeaderValue::String(s.to_string())
            }
            8 => HeaderValue::Timestamp(i64::from_be_bytes(c.array()?)),
            9 => HeaderValue::Uuid(c.array()?),
            t => return Err(DecodeError::UnknownHeaderType(t)),
        };
        headers.push(Header { name, value });
    }
    Ok(headers)
}

/// Why a message could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// A header name empty or longer than 255 bytes.
    HeaderName,
    /// A bytes or string value longer than 65,535 bytes.
    HeaderValueTooLong,
    HeadersTooLarge,
    FrameTooLarge,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EncodeError::HeaderName => "event stream header name empty or over 255 bytes",
            EncodeError::HeaderValueTooLong => "event stream header value over 65535 bytes",
            EncodeError::HeadersTooLarge => "event stream headers over the limit",
            EncodeError::FrameTooLarge => "event stream message over the limit",
        })
    }
}

impl std::error::Error for EncodeError {}

/// Appends one message to `out`.
pub fn encode_into(
    out: &mut Vec<u8>,
    headers: &[Header],
    payload: &[u8],
) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; PRELUDE_BYTES]);
    for h in headers {
        let name = h.name.as_bytes();
        let Ok(name_len) = u8::try_from(name.len()) else {
            out.truncate(start);
            return Err(EncodeError::HeaderName);
        };
        if name_len == 0 {
            out.truncate(start);
            return Err(EncodeError::HeaderName);
        }
        out.push(name_len);
        out.extend_from_slice(name);
        out.push(h.value.type_byte());
        match &h.value {
            HeaderValue::Bool(_) => {}
            HeaderValue::Byte(v) => out.extend_from_slice(&v.to_be_bytes()),
            HeaderValue::Short(v) => out.extend_from_slice(&v.to_be_bytes()),
            HeaderValue::Int(v) => out.extend_from_slice(&v.to_be_bytes()),
            HeaderValue::Long(v) | HeaderValue::Timestamp(v) => {
                out.extend_from_slice(&v.to_be_bytes())
            }
            HeaderValue::Bytes(v) => {
                if put_u16_len(out, v.len()).is_err() {
                    out.truncate(start);
                    return Err(EncodeError::HeaderValueTooLong);
                }
                out.extend_from_slice(v);
            }
            HeaderValue::String(v) => {
                if put_u16_len(out, v.len()).is_err() {
                    out.truncate(start);
                    return Err(EncodeError::HeaderValueTooLong);
                }
                out.extend_from_slice(v.as_bytes());
            }
            HeaderValue::Uuid(v) => out.extend_from_slice(v),
        }
    }
    let headers_len = out.len() - start - PRELUDE_BYTES;
    if headers_len > HEADERS_BYTES_MAX {
        out.truncate(start);
        return Err(EncodeError::HeadersTooLarge);
    }
    let total = PRELUDE_BYTES + headers_len + payload.len() + MESSAGE_CRC_BYTES;
    if total > FRAME_BYTES_MAX {
        out.truncate(start);
        return Err(EncodeError::FrameTooLarge);
    }
    out.extend_from_slice(payload);
    let prelude = &mut out[start..start + PRELUDE_BYTES];
    prelude[0..4].copy_from_slice(&(total as u32).to_be_bytes());
    prelude[4..8].copy_from_slice(&(headers_len as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&prelude[..8]);
    prelude[8..12].copy_from_slice(&prelude_crc.to_be_bytes());
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
    Ok(())
}

fn put_u16_len(out: &mut Vec<u8>, len: usize) -> Result<(), ()> {
    let n = u16::try_from(len).map_err(|_| ())?;
    out.extend_from_slice(&n.to_be_bytes());
    Ok(())
}

/// One message as a new buffer.
pub fn encode(headers: &[Header], payload: &[u8]) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(FRAME_BYTES_MIN + payload.len() + 64 * headers.len());
    encode_into(&mut out, headers, payload)?;
    Ok(out)
}

/// An event message as AWS sends it: `:event-type`, `:content-type`, `:message-type: event`.
pub fn encode_event(
    event_type: &str,
    content_type: &str,
    payload: &[u8],
) -> Result<Vec<u8>, EncodeError> {
    encode(
        &[
            Header::string(EVENT_TYPE, event_type),
            Header::string(CONTENT_TYPE, content_type),
            Header::string(MESSAGE_TYPE, "event"),
        ],
        payload,
    )
}

/// A modeled exception message: `:exception-type`, `:content-type`, `:message-type: exception`.
pub fn encode_exception(
    exception_type: &str,
    content_type: &str,
    payload: &[u8],
) -> Result<Vec<u8>, EncodeError> {
    encode(
        &[
            Header::string(EXCEPTION_TYPE, exception_type),
            Header::string(CONTENT_TYPE, content_type),
            Header::string(MESSAGE_TYPE, "exception"),
        ],
        payload,
    )
}

/// An unmodeled error message: `:error-code`, `:error-message`, `:message-type: error`.
pub fn encode_error(code: &str, message: &str) -> Result<Vec<u8>, EncodeError> {
    encode(
        &[
            Header::string(ERROR_CODE, code),
            Header::string(ERROR_MESSAGE, message),
            Header::string(MESSAGE_TYPE, "error"),
        ],
        &[],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_types() -> Vec<Header> {
        let h = |name: &str, value| Header {
            name: name.into(),
            value,
        };
        vec![
            h("t", HeaderValue::Bool(true)),
            h("f", HeaderValue::Bool(false)),
            h("byte", HeaderValue::Byte(-7)),
            h("short", HeaderValue::Short(-300)),
            h("int", HeaderValue::Int(70_000)),
            h("long", HeaderValue::Long(-5_000_000_000)),
            h("bytes", HeaderValue::Bytes(vec![0, 1, 255])),
            h("string", HeaderValue::String("héllo".into())),
            h("ts", HeaderValue::Timestamp(1_732_867_509_000)),
            h("uuid", HeaderValue::Uuid(*b"0123456789abcdef")),
        ]
    }

    fn sample_stream() -> (Vec<u8>, Vec<Message>) {
        let msgs = vec![
            Message {
                headers: all_types(),
                payload: b"{\"a\":1}".to_vec(),
            },
            Message {
                headers: vec![],
                payload: vec![],
            },
            Message {
                headers: vec![
                    Header::string(EVENT_TYPE, "contentBlockDelta"),
                    Header::string(CONTENT_TYPE, "application/json"),
                    Header::string(MESSAGE_TYPE, "event"),
                ],
                payload: br#"{"contentBlockIndex":0,"delta":{"text":"hi"}}"#.to_vec(),
            },
        ];
        let mut wire = Vec::new();
        for m in &msgs {
            encode_into(&mut wire, &m.headers, &m.payload).unwrap();
        }
        (wire, msgs)
    }

    fn decode_chunks(chunks: &[&[u8]]) -> Result<Vec<Message>, DecodeError> {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for c in chunks {
            d.decode_all(c, &mut out)?;
        }
        d.finish()?;
        Ok(out)
    }

    /// A message checked byte for byte against the AWS SDK for Python's event stream decoder.
    #[test]
    fn known_answer() {
        let frame = encode_event(
            "messageStart",
            "application/json",
            br#"{"role":"assistant"}"#,
        )
        .unwrap();
        let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, KNOWN_EVENT_HEX);
        let m = decode_chunks(&[&frame]).unwrap();
        assert_eq!(
            m[0].kind(),
            MessageKind::Event {
                event_type: "messageStart"
            }
        );
        assert_eq!(m[0].content_type(), Some("application/json"));
        assert_eq!(m[0].payload, br#"{"role":"assistant"}"#);
        let empty = encode(&[], &[]).unwrap();
        // total 16, headers 0, CRC32 of eight bytes 00 00 00 10 00 00 00 00, message CRC.
        assert_eq!(
            &empty[..12],
            &[0, 0, 0, 16, 0, 0, 0, 0, 0x05, 0xc2, 0x48, 0xeb]
        );
    }

    const KNOWN_EVENT_HEX: &str = "000000760000005296d5fade0b3a6576656e742d7479706507000c6d6573736167\
        6553746172740d3a636f6e74656e742d747970650700106170706c69636174696f6e2f6a736f6e0d3a6d65737361\
        67652d747970650700056576656e747b22726f6c65223a22617373697374616e74227d6fa8c599";

    #[test]
    fn every_split_offset_decodes_the_same() {
        let (wire, msgs) = sample_stream();
        assert_eq!(decode_chunks(&[&wire]).unwrap(), msgs);
        for k in 0..=wire.len() {
            let (a, b) = wire.split_at(k);
            assert_eq!(decode_chunks(&[a, b]).unwrap(), msgs, "split at {k}");
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(decode_chunks(&bytes).unwrap(), msgs);
        for size in [2, 3, 5, 13, 64] {
            let chunks: Vec<&[u8]> = wire.chunks(size).collect();
            assert_eq!(decode_chunks(&chunks).unwrap(), msgs, "chunks of {size}");
        }
    }

    #[test]
    fn decode_leaves_the_rest_of_the_input() {
        let (wire, msgs) = sample_stream();
        let mut d = Decoder::new();
        let mut input = &wire[..];
        let first = d.decode(&mut input).unwrap().unwrap();
        assert_eq!(first, msgs[0]);
        assert_eq!(input.len(), wire.len() - (be_u32(&wire) as usize));
        assert_eq!(d.buffered_bytes(), 0);
    }

    #[test]
    fn message_kinds() {
        let dec = |frame: Vec<u8>| decode_chunks(&[&frame]).unwrap().remove(0);
        let m = dec(encode_exception("throttlingException", "application/json", b"{}").unwrap());
        assert_eq!(
            m.kind(),
            MessageKind::Exception {
                exception_type: "throttlingException"
            }
        );
        let m = dec(encode_error("InternalFailure", "boom").unwrap());
        assert_eq!(
            m.kind(),
            MessageKind::Error {
                code: "InternalFailure",
                message: "boom"
            }
        );
        let m = dec(encode(&[Header::string(MESSAGE_TYPE, "event")], b"").unwrap());
        assert_eq!(m.kind(), MessageKind::Malformed);
        let m = dec(encode(&[], b"").unwrap());
        assert_eq!(m.kind(), MessageKind::Malformed);
    }

    #[test]
    fn crc_errors_are_values_and_sticky() {
        let (wire, _) = sample_stream();
        let mut bad = wire.clone();
        bad[5] ^= 1; // headers length: the prelude CRC no longer matches
        let e = decode_chunks(&[&bad]).unwrap_err();
        assert!(matches!(e, DecodeError::PreludeCrc { .. }), "{e}");
        let mut bad = wire.clone();
        bad[20] ^= 0x40; // inside the first message's headers
        let e = decode_chunks(&[&bad]).unwrap_err();
        assert!(matches!(e, DecodeError::MessageCrc { .. }), "{e}");
        let mut d = Decoder::new();
        let mut out = Vec::new();
        assert!(d.decode_all(&bad, &mut out).is_err());
        assert!(d.decode_all(&wire, &mut out).is_err(), "an error is final");
        assert!(d.finish().is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn bounds_are_clean_errors() {
        let prelude = |total: u32, headers: u32| {
            let mut p = Vec::new();
            p.extend_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&headers.to_be_bytes());
            let crc = crc32fast::hash(&p);
            p.extend_from_slice(&crc.to_be_bytes());
            p
        };
        let big = (FRAME_BYTES_MAX + 1) as u32;
        assert_eq!(
            decode_chunks(&[&prelude(big, 0)]).unwrap_err(),
            DecodeError::FrameTooLarge {
                total_bytes: big,
                limit_bytes: FRAME_BYTES_MAX
            }
        );
        let mut small = Decoder::with_frame_bytes_max(1024);
        let mut out = Vec::new();
        assert_eq!(
            small.decode_all(&prelude(1025, 0), &mut out).unwrap_err(),
            DecodeError::FrameTooLarge {
                total_bytes: 1025,
                limit_bytes: 1024
            }
        );
        assert_eq!(small.buffered_bytes(), 0);
        assert_eq!(
            decode_chunks(&[&prelude(15, 0)]).unwrap_err(),
            DecodeError::FrameTooSmall { total_bytes: 15 }
        );
        assert!(matches!(
            decode_chunks(&[&prelude(100, 85)]).unwrap_err(),
            DecodeError::HeadersLength { .. }
        ));
        assert!(matches!(
            decode_chunks(&[&prelude(200_000, 140_000)]).unwrap_err(),
            DecodeError::HeadersLength { .. }
        ));
        // A valid prelude announcing the largest frame, then the body stops: truncated.
        let p = prelude(FRAME_BYTES_MAX as u32, 0);
        assert_eq!(
            decode_chunks(&[&p, &[0u8; 100]]).unwrap_err(),
            DecodeError::Truncated {
                buffered_bytes: 112
            }
        );
        assert_eq!(
            decode_chunks(&[&[0u8; 5]]).unwrap_err(),
            DecodeError::Truncated { buffered_bytes: 5 }
        );
    }

    #[test]
    fn encoder_bounds() {
        let long = "x".repeat(256);
        assert_eq!(
            encode(&[Header::string(&long, "v")], b""),
            Err(EncodeError::HeaderName)
        );
        assert_eq!(
            encode(&[Header::string("", "v")], b""),
            Err(EncodeError::HeaderName)
        );
        let huge = "v".repeat(70_000);
        assert_eq!(
            encode(&[Header::string("n", &huge)], b""),
            Err(EncodeError::HeaderValueTooLong)
        );
        assert_eq!(
            encode(&[], &vec![0u8; FRAME_BYTES_MAX]),
            Err(EncodeError::FrameTooLarge)
        );
        let mut out = vec![9u8];
        assert!(encode_into(&mut out, &[Header::string("", "v")], b"").is_err());
        assert_eq!(
            out,
            vec![9u8],
            "a failed encode leaves the buffer as it was"
        );
    }

    /// xorshift64*: deterministic bytes for the fuzz-style tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn feed_randomly(rng: &mut Rng, data: &[u8]) {
        let mut d = Decoder::new();
        let mut rest = data;
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len().min(64));
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let mut input = chunk;
            while !input.is_empty() {
                match d.decode(&mut input) {
                    Ok(Some(m)) => {
                        let _ = m.kind();
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
        let _ = d.finish();
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2_000 {
            let n = rng.below(300);
            let data = rng.bytes(n);
            feed_randomly(&mut rng, &data);
        }
    }

    #[test]
    fn random_headers_with_valid_crcs_never_panic() {
        // Frames whose CRCs are right but whose headers are noise: the header parser's bounds.
        let mut rng = Rng(42);
        let mut decoded = 0;
        for _ in 0..5_000 {
            let headers_len = rng.below(40);
            let payload_len = rng.below(8);
            let total = PRELUDE_BYTES + headers_len + payload_len + MESSAGE_CRC_BYTES;
            let mut f = Vec::with_capacity(total);
            f.extend_from_slice(&(total as u32).to_be_bytes());
            f.extend_from_slice(&(headers_len as u32).to_be_bytes());
            let crc = crc32fast::hash(&f);
            f.extend_from_slice(&crc.to_be_bytes());
            let mut body = rng.bytes(headers_len + payload_len);
            if headers_len > 5 && rng.below(2) == 0 {
                // A plausible start: a 1..=3 byte name, then a type byte in or just past 0..=9.
                let name_len = 1 + rng.below(3);
                body[0] = name_len as u8;
                body[1 + name_len] = rng.below(11) as u8;
            }
            f.extend_from_slice(&body);
            let crc = crc32fast::hash(&f);
            f.extend_from_slice(&crc.to_be_bytes());
            if decode_chunks(&[&f]).is_ok() {
                decoded += 1;
            }
            feed_randomly(&mut rng, &f);
        }
        assert!(decoded > 0, "some random header sections are valid");
    }

    #[test]
    fn mutated_valid_streams_never_panic() {
        let (wire, _) = sample_stream();
        let mut rng = Rng(7);
        for _ in 0..3_000 {
            let mut w = wire.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(w.len());
                w[i] = rng.next() as u8;
            }
            if rng.below(4) == 0 {
                w.truncate(rng.below(w.len()));
            }
            feed_randomly(&mut rng, &w);
        }
    }
}

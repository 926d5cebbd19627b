//! Incremental HTTP/1.1 response parsing for the load tool: the head with `httparse`, then the
//! body framed by Content-Length, chunked encoding or the close of the connection. Body bytes are
//! handed to a callback as they arrive (the stream mode scans them for SSE events); nothing of the
//! body is copied or kept.

/// Largest response head accepted.
pub const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Most header lines in a response head.
const HEADER_LINES_MAX: usize = 64;
/// Longest chunk-size line or trailer line.
pub const CHUNK_LINE_BYTES_MAX: usize = 4 * 1024;
/// Largest chunk size accepted (hex digits beyond this are a malformed response).
const CHUNK_BYTES_MAX: u64 = 1 << 40;

/// Why a response could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseError(pub &'static str);

/// Where parsing stands after the input given so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Feed the unconsumed rest again with more bytes after it.
    NeedMore,
    /// The response is complete; bytes after it were not consumed.
    Complete,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Head,
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data; how many of its bytes were seen.
    ChunkEnd(u8),
    Trailer,
    UntilClose,
    Done,
}

/// One response being read.
#[derive(Debug)]
pub struct ResponseParser {
    state: State,
    head_request: bool,
    status: u16,
    close: bool,
    event_stream: bool,
}

impl Default for ResponseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseParser {
    pub fn new() -> Self {
        ResponseParser {
            state: State::Head,
            head_request: false,
            status: 0,
            close: false,
            event_stream: false,
        }
    }

    /// Start reading the response to a new request (`head_request`: it was a HEAD, no body).
    pub fn begin(&mut self, head_request: bool) {
        *self = ResponseParser::new();
        self.head_request = head_request;
    }

    /// The status code, once the head was parsed.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the server closes the connection after this response.
    pub fn close(&self) -> bool {
        self.close
    }

    /// Whether the response is `text/event-stream`.
    pub fn event_stream(&self) -> bool {
        self.event_stream
    }

    /// Whether the head has been parsed.
    pub fn head_done(&self) -> bool {
        self.state != State::Head
    }

    /// Parse as much of `input` as possible, handing body bytes to `body`. Returns how many bytes
    /// were consumed; the caller keeps the rest and calls again with more appended.
    pub fn advance(
        &mut self,
        input: &[u8],
        body: &mut dyn FnMut(&[u8]),
    ) -> Result<(usize, Step), ParseError> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            match self.state {
                State::Done => return Ok((at, Step::Complete)),
                State::Head => match self.parse_head(rest)? {
                    Some(n) => at += n,
                    None => return Ok((at, Step::NeedMore)),
                },
                State::Length(left) => {
                    if left == 0 {
                        self.state = State::Done;
                        continue;
                    }
                    if rest.is_empty() {
                        return Ok((at, Step::NeedMore));
                    }
                    let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    body(&rest[..n]);
                    at += n;
                    self.state = State::Length(left - n as u64);
                }
                State::UntilClose => {
                    if !rest.is_empty() {
                        body(rest);
                    }
                    return Ok((input.len(), Step::NeedMore));
                }
                State::ChunkSize => match line(rest)? {
                    Some((text, n)) => {
                        let size = parse_chunk_size(text)?;
                        at += n;
                        self.state = if size == 0 {
                            State::Trailer
                        } else {
                            State::ChunkData(size)
                        };
                    }
                    None => return Ok((at, Step::NeedMore)),
                },
                State::ChunkData(left) => {
                    if rest.is_empty() {
                        return Ok((at, Step::NeedMore));
                    }
                    let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    body(&rest[..n]);
                    at += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::ChunkEnd(0)
                    } else {
                        State::ChunkData(left)
                    };
                }
                State::ChunkEnd(seen) => {
                    let Some(&b) = rest.first() else {
                        return Ok((at, Step::NeedMore));
                    };
                    let want = if seen == 0 { b'\r' } else { b'\n' };
                    if b != want {
                        return Err(ParseError("chunk data not followed by CRLF"));
                    }
                    at += 1;
                    self.state = if seen == 0 {
                        State::ChunkEnd(1)
                    } else {
                        State::ChunkSize
                    };
                }
                State::Trailer => match line(rest)? {
                    Some((text, n)) => {
                        at += n;
                        if text.is_empty() {
                            self.state = State::Done;
                        }
                    }
                    None => return Ok((at, Step::NeedMore)),
                },
            }
        }
    }

    /// The peer closed the connection: a close-delimited body is complete, anything else is cut.
    pub fn at_eof(&mut self) -> Result<Step, ParseError> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(Step::Complete)
            }
            _ => Err(ParseError(
                "connection closed before the response was complete",
            )),
        }
    }

    /// Parse a complete head at the start of `input`: `Some(bytes)` consumed, `None` incomplete.
    fn parse_head(&mut self, input: &[u8]) -> Result<Option<usize>, ParseError> {
        let mut headers = [httparse::EMPTY_HEADER; HEADER_LINES_MAX];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(input) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if input.len() >= HEAD_BYTES_MAX => {
                return Err(ParseError("response head too large"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(ParseError("malformed response head")),
        };
        let status = resp.code.unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            return Ok(Some(len)); // an interim response: the real head follows
        }
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut keep_alive = false;
        let mut close = resp.version == Some(0);
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or(ParseError("malformed content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(ParseError("conflicting content-length"));
                }
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = h.value.eq_ignore_ascii_case(b"chunked");
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            } else if h.name.eq_ignore_ascii_case("content-type") {
                self.event_stream = h.value.starts_with(b"text/event-stream");
            }
        }
        if resp.version == Some(0) && keep_alive {
            close = false;
        }
        self.status = status;
        self.close = close;
        self.state = if self.head_request || status == 204 || status == 304 {
            State::Done
        } else if chunked {
            State::ChunkSize
        } else if let Some(n) = length {
            State::Length(n)
        } else {
            self.close = true;
            State::UntilClose
        };
        Ok(Some(len))
    }
}

/// A CRLF- (or LF-) terminated line at the start of `input`: its text and bytes with the ending.
fn line(input: &[u8]) -> Result<Option<(&[u8], usize)>, ParseError> {
    match input.iter().position(|&b| b == b'\n') {
        Some(nl) if nl > CHUNK_LINE_BYTES_MAX => Err(ParseError("chunk line too long")),
        Some(nl) => {
            let text = &input[..nl];
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            Ok(Some((text, nl + 1)))
        }
        None if input.len() > CHUNK_LINE_BYTES_MAX => Err(ParseError("chunk line too long")),
        None => Ok(None),
    }
}

/// The hex size of a chunk-size line, ignoring chunk extensions.
fn parse_chunk_size(text: &[u8]) -> Result<u64, ParseError> {
    let bad = ParseError("malformed chunk size");
    let digits = text
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() {
        return Err(bad);
    }
    let mut size: u64 = 0;
    for &d in digits {
        let v = (d as char).to_digit(16).ok_or(bad)?;
        size = size * 16 + u64::from(v);
        if size > CHUNK_BYTES_MAX {
            return Err(bad);
        }
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input` split at `cut` the way the load tool does (keeping unconsumed bytes).
    fn parse_split(input: &[u8], cut: usize) -> Result<(u16, Vec<u8>, bool), ParseError> {
        let mut p = ResponseParser::new();
        let mut body = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        for piece in [&input[..cut], &input[cut..]] {
            pending.extend_from_slice(piece);
            let (used, step) = p.advance(&pending, &mut |b| body.extend_from_slice(b))?;
            pending.drain(..used);
            if step == Step::Complete {
                assert!(pending.is_empty(), "bytes left after the response");
                return Ok((p.status(), body, p.close()));
            }
        }
        match p.at_eof()? {
            Step::Complete => Ok((p.status(), body, p.close())),
            Step::NeedMore => unreachable!(),
        }
    }

    fn parse_every_split(input: &[u8]) -> Result<(u16, Vec<u8>, bool), ParseError> {
        let whole = parse_split(input, input.len());
        for cut in 0..input.len() {
            assert_eq!(parse_split(input, cut), whole, "cut at {cut}");
        }
        whole
    }

    #[test]
    fn content_length() {
        let r =
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: application/json\r\n\r\nhello";
        assert_eq!(parse_every_split(r), Ok((200, b"hello".to_vec(), false)));
        let r =
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        assert_eq!(parse_every_split(r), Ok((503, Vec::new(), true)));
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n";
        let (status, body, close) = parse_every_split(r).unwrap();
        assert_eq!((status, close), (200, false));
        assert_eq!(body, b"helloabcdefghijklmnopqrstuvwxyz");
    }

    #[test]
    fn interim_and_bodyless_responses() {
        let r = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(parse_every_split(r), Ok((204, Vec::new(), false)));
        let mut p = ResponseParser::new();
        p.begin(true);
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(p.advance(r, &mut |_| {}), Ok((r.len(), Step::Complete)));
    }

    #[test]
    fn close_delimited_body_and_http10() {
        let r = b"HTTP/1.0 200 OK\r\n\r\nuntil close";
        assert_eq!(
            parse_every_split(r),
            Ok((200, b"until close".to_vec(), true))
        );
        let r = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx";
        assert_eq!(parse_every_split(r), Ok((200, b"x".to_vec(), false)));
    }

    #[test]
    fn malformed_responses() {
        let cases: [&[u8]; 6] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY",
            b"NOT HTTP\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        ];
        for r in cases {
            assert!(
                parse_split(r, r.len()).is_err(),
                "{:?}",
                String::from_utf8_lossy(r)
            );
        }
        let huge = vec![b'a'; HEAD_BYTES_MAX + 1];
        let mut p = ResponseParser::new();
        assert!(p.advance(&huge, &mut |_| {}).is_err());
    }

    #[test]
    fn event_stream_flag_and_leftover() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 2\r\n\r\nokEXTRA";
        let mut p = ResponseParser::new();
        let (used, step) = p.advance(r, &mut |_| {}).unwrap();
        assert_eq!(step, Step::Complete);
        assert_eq!(&r[used..], b"EXTRA");
        assert!(p.event_stream());
    }
}

//! The request the load tool sends: a target URL (`http://host:port/path`, plain HTTP only) and
//! the request bytes built once before a run, so sending is one `write` of a shared buffer.

use std::net::{SocketAddr, ToSocketAddrs};

/// A chat completion small enough to measure the gateway rather than JSON throughput. The model
/// name `bench` is routed by the bench gateway configs (`bench/config/`).
pub const DEFAULT_CHAT_BODY: &str = r#"{"model":"bench","messages":[{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32}"#;
/// The same with `stream: true` and a usage chunk.
pub const DEFAULT_STREAM_BODY: &str = r#"{"model":"bench","messages":[{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32,"stream":true,"stream_options":{"include_usage":true}}"#;

/// Where requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// `host:port` as written, for the `Host` header.
    pub authority: String,
    pub addr: SocketAddr,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    /// `http://HOST:PORT/PATH` (port defaults to 80, path to `/`). The host is resolved once.
    pub fn parse(url: &str) -> Result<Url, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url}: expected http://HOST:PORT/PATH"));
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("{url}: cannot resolve {with_port}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url}: {with_port} has no address"))?;
        Ok(Url {
            authority: authority.to_string(),
            addr,
            path: path.to_string(),
        })
    }
}

/// The bytes of one HTTP/1.1 request: `headers` are `Name: value` lines added after `Host`,
/// `Content-Length` (when there is a body) and a `Content-Type` of JSON (unless one is given).
pub fn build_request(method: &str, url: &Url, headers: &[String], body: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(256 + body.len());
    r.extend_from_slice(
        format!(
            "{method} {} HTTP/1.1\r\nHost: {}\r\n",
            url.path, url.authority
        )
        .as_bytes(),
    );
    let has = |name: &str| {
        headers.iter().any(|h| {
            h.split_once(':')
                .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        })
    };
    if !body.is_empty() || method == "POST" {
        if !has("content-type") {
            r.extend_from_slice(b"Content-Type: application/json\r\n");
        }
        r.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    for h in headers {
        r.extend_from_slice(h.trim().as_bytes());
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(body);
    r
}

/// A header given on the command line must be `Name: value` with a token name and no line breaks.
pub fn check_header(h: &str) -> Result<(), String> {
    let (name, _) = h
        .split_once(':')
        .ok_or_else(|| format!("header {h:?}: expected 'Name: value'"))?;
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) || h.contains(['\r', '\n']) {
        return Err(format!("header {h:?}: not a valid header line"));
    }
    let lower = name.to_ascii_lowercase();
    if ["host", "content-length", "transfer-encoding"].contains(&lower.as_str()) {
        return Err(format!("header {h:?}: set by the tool"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = Url::parse("http://127.0.0.1:8080/v1/chat/completions?x=1").unwrap();
        assert_eq!(u.authority, "127.0.0.1:8080");
        assert_eq!(u.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(u.path, "/v1/chat/completions?x=1");
        let u = Url::parse("http://127.0.0.1").unwrap();
        assert_eq!((u.addr.port(), u.path.as_str()), (80, "/"));
        let u = Url::parse("http://[::1]:9/").unwrap();
        assert_eq!(u.addr, "[::1]:9".parse().unwrap());
        assert!(Url::parse("https://127.0.0.1/").is_err());
        assert!(Url::parse("http:///x").is_err());
        assert!(Url::parse("http://u@127.0.0.1/").is_err());
    }

    #[test]
    fn builds_requests() {
        let u = Url::parse("http://127.0.0.1:1/p").unwrap();
        let r = build_request("POST", &u, &["Authorization: Bearer k".into()], b"{}");
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "POST /p HTTP/1.1\r\nHost: 127.0.0.1:1\r\nContent-Type: application/json\r\n\
             Content-Length: 2\r\nAuthorization: Bearer k\r\n\r\n{}"
        );
        let r = build_request("GET", &u, &[], b"");
        assert_eq!(r, b"GET /p HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n");
        let r = build_request("POST", &u, &["content-type: text/plain".into()], b"x");
        assert_eq!(
            r.windows(12)
                .filter(|w| w.eq_ignore_ascii_case(b"content-type"))
                .count(),
            1
        );
    }

    #[test]
    fn checks_headers() {
        assert!(check_header("X-Api-Key: abc").is_ok());
        assert!(check_header("no colon").is_err());
        assert!(check_header("bad name: x").is_err());
        assert!(check_header("Host: x").is_err());
        assert!(check_header("X: a\r\nY: b").is_err());
    }
}

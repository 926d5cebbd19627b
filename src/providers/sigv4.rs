//! AWS Signature Version 4 (`AWS4-HMAC-SHA256`) in the `Authorization` header: the canonical
//! request, the string to sign, the derived signing key (cached per day), the headers a signed
//! request carries, and the verifier a test upstream uses to check an incoming signature.
//!
//! Implemented from AWS's published algorithm ("Create a signed AWS API request", IAM user
//! guide). The canonical URI follows the AWS SDKs for every service but S3: the path *as sent*
//! (each segment already URI-encoded once, so a Bedrock model id `a:b/c` travels as
//! `a%3Ab%2Fc`) is normalized and URI-encoded once more (`a%253Ab%252Fc`), because the service
//! computes its canonical request from the raw path it received. Build wire paths with
//! [`uri_encode_segment`] / [`bedrock_model_path`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use ring::{digest, hmac};

use crate::config::aws_credentials::Credentials;

/// The only algorithm signed and verified.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The signing name of Bedrock's runtime (`bedrock-runtime.{region}.amazonaws.com`).
pub const SERVICE_BEDROCK: &str = "bedrock";
/// The last element of every credential scope.
pub const SCOPE_TERMINATOR: &str = "aws4_request";
/// Hex SHA-256 of an empty payload.
pub const EMPTY_PAYLOAD_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// Most headers one signature may cover (signing or verifying); more is an error.
pub const SIGNED_HEADERS_MAX: usize = 64;
/// Longest region or service name accepted (AWS region names are under 20 characters).
pub const SCOPE_PART_CHARS_MAX: usize = 64;
/// Largest difference between a request's `x-amz-date` and the verifier's clock, as AWS allows.
pub const CLOCK_SKEW_MAX: Duration = Duration::from_secs(5 * 60);

const _: () = assert!(SIGNED_HEADERS_MAX >= 8); // host, x-amz-*, content-type and a few more

/// How the payload enters the signature.
#[derive(Clone, Copy, Debug)]
pub enum Payload<'a> {
    /// The body bytes: their SHA-256 is signed (Bedrock signs the payload).
    Bytes(&'a [u8]),
    /// A precomputed value for the payload hash: a hex SHA-256, or a marker such as
    /// `UNSIGNED-PAYLOAD` for services that accept it.
    Precomputed(&'a str),
}

/// Signing variants, named as in AWS's signers. The default is right for every service but S3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Remove `.`/`..` and empty segments from the path before encoding (off for S3).
    pub normalize_uri_path: bool,
    /// URI-encode the path as sent once more (off for S3, which signs the path as sent).
    pub double_uri_encode: bool,
    /// Add and sign `x-amz-content-sha256` with the payload hash.
    pub content_sha256_header: bool,
    /// Sign `x-amz-security-token`; when false it is sent unsigned (a few services want that).
    pub sign_session_token: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            normalize_uri_path: true,
            double_uri_encode: true,
            content_sha256_header: false,
            sign_session_token: true,
        }
    }
}

/// The request to sign. `headers` are the ones to cover besides those the signer adds (`host`
/// when absent, `x-amz-date`, and `x-amz-security-token` / `x-amz-content-sha256` as set): they
/// must be sent exactly as given. `authorization` is never signed.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// `scheme://host[:port]/path[?query]`, with the path as it goes on the wire.
    pub url: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub payload: Payload<'a>,
}

/// What signing produced.
#[derive(Clone)]
pub struct Signed {
    /// Headers to add to the request, lower-case names: `authorization`, `x-amz-date`, and
    /// `x-amz-security-token` / `x-amz-content-sha256` when they apply.
    pub headers: Vec<(&'static str, String)>,
    /// The `host` value that was signed (from the URL unless the request carried one: the port
    /// only when it is not the scheme's default, as HTTP clients send it).
    pub host: String,
    /// Hex HMAC-SHA256 signature.
    pub signature: String,
    /// The canonical request; it holds the session token when one is signed.
    pub canonical_request: String,
    pub string_to_sign: String,
}

impl Signed {
    /// The value of one of the added headers.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Debug for Signed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| match *n {
                "x-amz-security-token" => (*n, "<redacted>"),
                _ => (*n, v.as_str()),
            })
            .collect();
        f.debug_struct("Signed")
            .field("headers", &headers)
            .field("host", &self.host)
            .field("signature", &self.signature)
            .finish_non_exhaustive()
    }
}

/// Why a request could not be signed. Never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SigningError {
    /// The URL is not `http(s)://host[:port]/...` (or carries user info).
    BadUrl(&'static str),
    /// The request carries a header the signer sets itself.
    ReservedHeader(String),
    /// A header name is empty or not an HTTP token.
    BadHeaderName(String),
    TooManyHeaders,
    /// Region or service empty, too long, or not `[a-z0-9-]`.
    BadScope(&'static str),
    /// The time is before 1970 or after 9999.
    BadTime,
}

impl fmt::Display for SigningError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SigningError::BadUrl(why) => write!(f, "cannot sign: bad URL: {why}"),
            SigningError::ReservedHeader(h) => {
                write!(f, "cannot sign: header {h} is set by the signer")
            }
            SigningError::BadHeaderName(h) => write!(f, "cannot sign: bad header name {h:?}"),
            SigningError::TooManyHeaders => {
                write!(f, "cannot sign: more than {SIGNED_HEADERS_MAX} headers")
            }
            SigningError::BadScope(what) => write!(f, "cannot sign: bad {what}"),
            SigningError::BadTime => f.write_str("cannot sign: time out of range"),
        }
    }
}

impl std::error::Error for SigningError {}

/// The runtime endpoint host of Bedrock in `region`.
pub fn bedrock_runtime_host(region: &str) -> String {
    format!("bedrock-runtime.{region}.amazonaws.com")
}

/// `/model/{modelId}/{action}` with the model id (a plain id or an ARN with `:` and `/`) encoded
/// as one path segment, e.g. `/model/arn%3Aaws%3Abedrock%3A...%2Fid/converse`.
pub fn bedrock_model_path(model_id: &str, action: &str) -> String {
    format!("/model/{}/{action}", uri_encode_segment(model_id))
}

/// AWS URI encoding of one path segment or query component: every byte but `A-Za-z0-9-._~`
/// becomes `%XX` (upper-case hex), `/` included.
pub fn uri_encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    uri_encode_into(s.as_bytes(), true, &mut out);
    out
}

fn uri_encode_into(bytes: &[u8], encode_slash: bool, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (b == b'/' && !encode_slash);
        if keep {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

/// Percent-decoding; a `%` not followed by two hex digits stays as it is.
pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

/// The canonical URI of a path as sent (see the module docs).
pub fn canonical_uri(path: &str, settings: &Settings) -> String {
    let path = if path.is_empty() { "/" } else { path };
    let normalized;
    let path = if settings.normalize_uri_path {
        normalized = normalize_path(path);
        normalized.as_str()
    } else {
        path
    };
    if !settings.double_uri_encode {
        return path.to_string();
    }
    let mut out = String::with_capacity(path.len() + 16);
    uri_encode_into(path.as_bytes(), false, &mut out);
    out
}

/// RFC 3986 dot-segment removal plus empty-segment removal, keeping a trailing slash.
fn normalize_path(path: &str) -> String {
    let mut segs: Vec<&str> = Vec::new();
    let mut trailing = path.ends_with('/');
    for seg in path.split('/') {
        match seg {
            "" => {}
            "." => trailing = true,
            ".." => {
                segs.pop();
                trailing = true;
            }
            s => {
                segs.push(s);
                trailing = path.ends_with('/');
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segs {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    out
}

/// The canonical query string: each name and value decoded, then AWS-URI-encoded, sorted by
/// name then value, joined with `&` (a parameter without `=` has an empty value).
pub fn canonical_query(query: &str) -> String {
    let mut params: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let mut ek = String::with_capacity(k.len());
            uri_encode_into(&percent_decode(k), true, &mut ek);
            let mut ev = String::with_capacity(v.len());
            uri_encode_into(&percent_decode(v), true, &mut ev);
            (ek, ev)
        })
        .collect();
    params.sort();
    let mut out = String::with_capacity(query.len() + 8);
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// A header value as signed: trimmed, each run of whitespace one space.
fn canonical_value(value: &[u8], out: &mut Vec<u8>) {
    let mut pending_space = false;
    let mut any = false;
    for &b in value {
        if matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
            pending_space = any;
            continue;
        }
        if pending_space {
            out.push(b' ');
            pending_space = false;
        }
        out.push(b);
        any = true;
    }
}

fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Canonical headers (`name:value\n` each, sorted by name, values of repeated names joined with
/// `,` in the order sent) and the signed-headers list, from lower-case names.
fn canonical_headers(headers: &mut [(String, &[u8])]) -> (Vec<u8>, String) {
    headers.sort_by(|a, b| a.0.cmp(&b.0)); // stable: repeated names keep their order
    let mut canon = Vec::with_capacity(256);
    let mut signed = String::with_capacity(64);
    let mut prev: Option<&str> = None;
    for (name, value) in headers.iter() {
        if prev == Some(name.as_str()) {
            canon.pop(); // the '\n' of the previous value
            canon.push(b',');
        } else {
            if prev.is_some() {
                signed.push(';');
            }
            signed.push_str(name);
            canon.extend_from_slice(name.as_bytes());
            canon.push(b':');
        }
        canonical_value(value, &mut canon);
        canon.push(b'\n');
        prev = Some(name.as_str());
    }
    (canon, signed)
}

fn canonical_request_bytes(
    method: &str,
    uri: &str,
    query: &str,
    headers: &[u8],
    signed_headers: &str,
    payload_hash: &str,
) -> Vec<u8> {
    let mut c = Vec::with_capacity(
        method.len() + uri.len() + query.len() + headers.len() + signed_headers.len() + 80,
    );
    for part in [
        method.as_bytes(),
        b"\n",
        uri.as_bytes(),
        b"\n",
        query.as_bytes(),
        b"\n",
    ] {
        c.extend_from_slice(part);
    }
    c.extend_from_slice(headers);
    for part in [
        b"\n",
        signed_headers.as_bytes(),
        b"\n",
        payload_hash.as_bytes(),
    ] {
        c.extend_from_slice(part);
    }
    c
}

fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &[u8]) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request)
    )
}

/// The signing key of `date` (`YYYYMMDD`), `region` and `service`: four chained HMACs.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> hmac::Key {
    let mut k = Vec::with_capacity(4 + secret.len());
    k.extend_from_slice(b"AWS4");
    k.extend_from_slice(secret.as_bytes());
    let mut tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &k), date.as_bytes());
    for part in [region, service, SCOPE_TERMINATOR] {
        tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, tag.as_ref()),
            part.as_bytes(),
        );
    }
    hmac::Key::new(hmac::HMAC_SHA256, tag.as_ref())
}

fn scope_part_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= SCOPE_PART_CHARS_MAX
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The parts of a URL that signing needs.
struct Url<'a> {
    host: String,
    path: &'a str,
    query: &'a str,
}

fn parse_url(url: &str) -> Result<Url<'_>, SigningError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or(SigningError::BadUrl("no scheme"))?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => "443",
        "http" => "80",
        _ => return Err(SigningError::BadUrl("scheme is not http or https")),
    };
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(split);
    if authority.is_empty() {
        return Err(SigningError::BadUrl("no host"));
    }
    if authority.contains('@') {
        return Err(SigningError::BadUrl("user info in the URL"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    // The port follows the last ':' unless that ':' is inside an IPv6 literal.
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    if host.is_empty() {
        return Err(SigningError::BadUrl("no host"));
    }
    let host = match port {
        Some(p) if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(SigningError::BadUrl("bad port"))
        }
        Some(p) if p != default_port => format!("{}:{p}", host.to_ascii_lowercase()),
        _ => host.to_ascii_lowercase(),
    };
    Ok(Url { host, path, query })
}

/// Signs `req` for `region`/`service` at `time` with a freshly derived key.
pub fn sign(
    req: &Request<'_>,
    credentials: &Credentials,
    region: &str,
    service: &str,
    settings: &Settings,
    time: SystemTime,
) -> Result<Signed, SigningError> {
    check_scope(region, service)?;
    let when = AmzTime::from_system(time)?;
    let key = signing_key(
        credentials.secret_access_key(),
        when.date(),
        region,
        service,
    );
    sign_with_key(req, credentials, region, service, settings, &when, &key)
}

fn check_scope(region: &str, service: &str) -> Result<(), SigningError> {
    if !scope_part_ok(region) {
        return Err(SigningError::BadScope("region"));
    }
    if !scope_part_ok(service) {
        return Err(SigningError::BadScope("service"));
    }
    Ok(())
}

const RESERVED: [&str; 4] = [
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
];

fn sign_with_key(
    req: &Request<'_>,
    credentials: &Credentials,
    region: &str,
    service: &str,
    settings: &Settings,
    when: &AmzTime,
    key: &hmac::Key,
) -> Result<Signed, SigningError> {
    let url = parse_url(req.url)?;
    let payload_hash = match req.payload {
        Payload::Bytes(b) => sha256_hex(b),
        Payload::Precomputed(h) => h.to_string(),
    };
    let token = credentials.session_token();
    if req.headers.len() + RESERVED.len() + 1 > SIGNED_HEADERS_MAX {
        return Err(SigningError::TooManyHeaders);
    }
    let mut headers: Vec<(String, &[u8])> = Vec::with_capacity(req.headers.len() + 4);
    let mut host = None;
    for (name, value) in req.headers {
        if !is_token(name) {
            return Err(SigningError::BadHeaderName((*name).to_string()));
        }
        let lower = name.to_ascii_lowercase();
        if RESERVED.contains(&lower.as_str()) {
            return Err(SigningError::ReservedHeader(lower));
        }
        if lower == "host" && host.is_none() {
            host = Some(value.trim().to_string());
        }
        headers.push((lower, value.as_bytes()));
    }
    let host = match host {
        Some(h) => h,
        None => {
            headers.push(("host".to_string(), url.host.as_bytes()));
            url.host.clone()
        }
    };
    headers.push(("x-amz-date".to_string(), when.stamp().as_bytes()));
    if let (Some(t), true) = (token, settings.sign_session_token) {
        headers.push(("x-amz-security-token".to_string(), t.as_bytes()));
    }
    if settings.content_sha256_header {
        headers.push(("x-amz-content-sha256".to_string(), payload_hash.as_bytes()));
    }
    let (canon_headers, signed_headers) = canonical_headers(&mut headers);
    let canonical = canonical_request_bytes(
        req.method,
        &canonical_uri(url.path, settings),
        &canonical_query(url.query),
        &canon_headers,
        &signed_headers,
        &payload_hash,
    );
    let scope = format!("{}/{region}/{service}/{SCOPE_TERMINATOR}", when.date());
    let sts = string_to_sign(when.stamp(), &scope, &canonical);
    let signature = hex(hmac::sign(key, sts.as_bytes()).as_ref());
    let mut out = Vec::with_capacity(4);
    out.push((
        "authorization",
        format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            credentials.access_key_id()
        ),
    ));
    out.push(("x-amz-date", when.stamp().to_string()));
    if let Some(t) = token {
        out.push(("x-amz-security-token", t.to_string()));
    }
    if settings.content_sha256_header {
        out.push(("x-amz-content-sha256", payload_hash));
    }
    Ok(Signed {
        headers: out,
        host,
        signature,
        canonical_request: String::from_utf8(canonical)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        string_to_sign: sts,
    })
}

/// A request time in SigV4's two forms: `YYYYMMDDTHHMMSSZ` and its first eight characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmzTime {
    stamp: String,
    unix_s: i64,
}

impl AmzTime {
    pub fn from_system(t: SystemTime) -> Result<AmzTime, SigningError> {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| SigningError::BadTime)?
            .as_secs();
        AmzTime::from_unix(i64::try_from(secs).map_err(|_| SigningError::BadTime)?)
    }

    pub fn from_unix(unix_s: i64) -> Result<AmzTime, SigningError> {
        let days = unix_s.div_euclid(86_400);
        let secs = unix_s.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        if !(1970..=9999).contains(&y) {
            return Err(SigningError::BadTime);
        }
        let stamp = format!(
            "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        );
        Ok(AmzTime { stamp, unix_s })
    }

    /// Parses `YYYYMMDDTHHMMSSZ` strictly.
    pub fn parse(stamp: &str) -> Option<AmzTime> {
        let b = stamp.as_bytes();
        if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            let s = stamp.get(r)?;
            if !s.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
        let (h, mi, s) = (num(9..11)?, num(11..13)?, num(13..15)?);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 59 {
            return None;
        }
        let days = days_from_civil(y, mo, d);
        if civil_from_days(days) != (y, mo, d) {
            return None; // e.g. February 30
        }
        let t = AmzTime::from_unix(days * 86_400 + h * 3600 + mi * 60 + s).ok()?;
        (t.stamp == stamp).then_some(t)
    }

    /// `YYYYMMDDTHHMMSSZ`.
    pub fn stamp(&self) -> &str {
        &self.stamp
    }

    /// `YYYYMMDD`.
    pub fn date(&self) -> &str {
        &self.stamp[..8]
    }

    pub fn unix_s(&self) -> i64 {
        self.unix_s
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The signing key of one day, kept by a [`Signer`].
struct CachedKey {
    date: String,
    key: hmac::Key,
}

/// Signs requests for one set of credentials, region and service. The derived signing key is
/// kept for the day it belongs to: reading it is one lock-free atomic load; on a new day (or the
/// first call) it is derived again and swapped in. Shared by the threads that sign.
pub struct Signer {
    credentials: Credentials,
    region: String,
    service: String,
    settings: Settings,
    key: ArcSwapOption<CachedKey>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("credentials", &self.credentials)
            .field("region", &self.region)
            .field("service", &self.service)
            .field("settings", &self.settings)
            .finish()
    }
}

impl Signer {
    pub fn new(
        credentials: Credentials,
        region: &str,
        service: &str,
    ) -> Result<Signer, SigningError> {
        check_scope(region, service)?;
        Ok(Signer {
            credentials,
            region: region.to_string(),
            service: service.to_string(),
            settings: Settings::default(),
            key: ArcSwapOption::empty(),
        })
    }

    pub fn with_settings(mut self, settings: Settings) -> Signer {
        self.settings = settings;
        self
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// Signs `req` at `time` (the current time in production; injected in tests).
    pub fn sign(&self, req: &Request<'_>, time: SystemTime) -> Result<Signed, SigningError> {
        let when = AmzTime::from_system(time)?;
        let cached = self.key.load();
        let key = match cached.as_ref() {
            Some(k) if k.date == when.date() => Arc::clone(k),
            _ => {
                let fresh = Arc::new(CachedKey {
                    date: when.date().to_string(),
                    key: signing_key(
                        self.credentials.secret_access_key(),
                        when.date(),
                        &self.region,
                        &self.service,
                    ),
                });
                self.key.store(Some(Arc::clone(&fresh)));
                fresh
            }
        };
        drop(cached);
        sign_with_key(
            req,
            &self.credentials,
            &self.region,
            &self.service,
            &self.settings,
            &when,
            &key.key,
        )
    }
}

// ------------------------------------------------------------------------------------------------
// Verification (the test upstream's side).

/// An incoming request as a server received it: the raw path and query from the request line,
/// the header names and values as sent, the body.
#[derive(Clone, Copy, Debug)]
pub struct Incoming<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a [(&'a str, &'a [u8])],
    pub body: &'a [u8],
}

impl Incoming<'_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

/// What the verifier expects: the one key pair it knows, the region and the service.
#[derive(Clone, Debug)]
pub struct Expected<'a> {
    pub credentials: &'a Credentials,
    pub region: &'a str,
    pub service: &'a str,
    pub settings: Settings,
}

/// Why a request's signature was refused, with the error type and message AWS answers (403).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyError {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not a complete SigV4 header, or no `x-amz-date`.
    Incomplete(String),
    /// An access key id or a session token the verifier does not know.
    UnknownClient,
    /// Scope, clock or signature mismatch; the message says which.
    Invalid(String),
}

impl VerifyError {
    /// The `x-amzn-errortype` AWS sends.
    pub fn error_type(&self) -> &'static str {
        match self {
            VerifyError::Missing => "MissingAuthenticationTokenException",
            VerifyError::Incomplete(_) => "IncompleteSignatureException",
            VerifyError::UnknownClient => "UnrecognizedClientException",
            VerifyError::Invalid(_) => "InvalidSignatureException",
        }
    }

    /// The HTTP status AWS answers with.
    pub fn status(&self) -> u16 {
        403
    }

    /// The `message` of AWS's JSON error body.
    pub fn message(&self) -> String {
        match self {
            VerifyError::Missing => "Missing Authentication Token".to_string(),
            VerifyError::UnknownClient => {
                "The security token included in the request is invalid.".to_string()
            }
            VerifyError::Incomplete(m) | VerifyError::Invalid(m) => m.clone(),
        }
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type(), self.message())
    }
}

/// The parts of a SigV4 `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
struct AuthHeader<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    terminator: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<AuthHeader<'_>, VerifyError> {
    let incomplete = |m: &str| VerifyError::Incomplete(m.to_string());
    let rest = value
        .strip_prefix(ALGORITHM)
        .filter(|r| r.starts_with(' '))
        .ok_or_else(|| {
            incomplete("Authorization header requires the AWS4-HMAC-SHA256 algorithm.")
        })?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        } else {
            return Err(VerifyError::Incomplete(format!(
                "'{part}' not a valid key=value pair (missing equal-sign) in Authorization header: '{value}'."
            )));
        }
    }
    let mut missing = String::new();
    for (name, v) in [
        ("Credential", credential),
        ("Signature", signature),
        ("SignedHeaders", signed),
    ] {
        if v.is_none() {
            missing.push_str(&format!(
                "Authorization header requires '{name}' parameter. "
            ));
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) = (credential, signed, signature)
    else {
        return Err(VerifyError::Incomplete(missing.trim_end().to_string()));
    };
    let parts: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminator] = parts[..] else {
        return Err(VerifyError::Incomplete(format!(
            "Credential should have five parts: '{credential}'."
        )));
    };
    Ok(AuthHeader {
        access_key_id,
        date,
        region,
        service,
        terminator,
        signed_headers,
        signature,
    })
}

fn decode_hex_32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = hex_val(b[2 * i])? << 4 | hex_val(b[2 * i + 1])?;
    }
    Some(out)
}

/// Checks the SigV4 signature of `req` against the expected key pair, region and service at
/// time `now`, as AWS does: the payload hash is computed from the body received. Returns the
/// access key id on success.
pub fn verify<'a>(
    req: &Incoming<'_>,
    expected: &Expected<'a>,
    now: SystemTime,
) -> Result<&'a str, VerifyError> {
    let Some(auth) = req.header("authorization") else {
        return Err(VerifyError::Missing);
    };
    let auth = std::str::from_utf8(auth)
        .map_err(|_| VerifyError::Incomplete("Authorization header is not UTF-8.".into()))?;
    let a = parse_authorization(auth)?;
    let creds = expected.credentials;
    if a.access_key_id != creds.access_key_id() {
        return Err(VerifyError::UnknownClient);
    }
    let sent_token = req.header("x-amz-security-token");
    if sent_token != creds.session_token().map(str::as_bytes) {
        return Err(VerifyError::UnknownClient);
    }
    let stamp = req
        .header("x-amz-date")
        .and_then(|v| std::str::from_utf8(v).ok())
        .ok_or_else(|| {
            VerifyError::Incomplete(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
                    .into(),
            )
        })?;
    let when = AmzTime::parse(stamp).ok_or_else(|| {
        VerifyError::Incomplete(format!(
            "Date must be in ISO-8601 'basic format'. Got '{stamp}'."
        ))
    })?;
    if a.date != when.date() {
        return Err(VerifyError::Invalid(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}', from '{stamp}'.",
            a.date,
            when.date()
        )));
    }
    if a.region != expected.region {
        return Err(VerifyError::Invalid(format!(
            "Credential should be scoped to a valid region, not '{}'. ",
            a.region
        )));
    }
    if a.service != expected.service {
        return Err(VerifyError::Invalid(format!(
            "Credential should be scoped to correct service: '{}'. ",
            expected.service
        )));
    }
    if a.terminator != SCOPE_TERMINATOR {
        return Err(VerifyError::Invalid(format!(
            "Credential should be scoped with a valid terminator: '{SCOPE_TERMINATOR}', not '{}'. ",
            a.terminator
        )));
    }
    check_clock(&when, now)?;
    let names: Vec<&str> = a.signed_headers.split(';').collect();
    if names.len() > SIGNED_HEADERS_MAX {
        return Err(VerifyError::Invalid("Too many signed headers.".into()));
    }
    if !names.contains(&"host") {
        return Err(VerifyError::Incomplete(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.".into(),
        ));
    }
    let mut headers: Vec<(String, &[u8])> = Vec::with_capacity(names.len() + 2);
    for name in &names {
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(VerifyError::Invalid(format!(
                "Signed header names must be lower-case and not empty: '{}'.",
                a.signed_headers
            )));
        }
        for (n, v) in req.headers {
            if n.eq_ignore_ascii_case(name) {
                headers.push((name.to_string(), v));
            }
        }
    }
    let (canon_headers, signed_list) = canonical_headers(&mut headers);
    let payload_hash = sha256_hex(req.body);
    let canonical = canonical_request_bytes(
        req.method,
        &canonical_uri(req.path, &expected.settings),
        &canonical_query(req.query),
        &canon_headers,
        a.signed_headers,
        &payload_hash,
    );
    let scope = format!(
        "{}/{}/{}/{SCOPE_TERMINATOR}",
        when.date(),
        expected.region,
        expected.service
    );
    let sts = string_to_sign(when.stamp(), &scope, &canonical);
    let key = signing_key(
        creds.secret_access_key(),
        when.date(),
        expected.region,
        expected.service,
    );
    let signature_ok = signed_list == a.signed_headers
        && decode_hex_32(a.signature)
            .is_some_and(|tag| hmac::verify(&key, sts.as_bytes(), &tag).is_ok());
    if !signature_ok {
        return Err(VerifyError::Invalid(format!(
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service \
             documentation for details.\n\nThe Canonical String for this request should have \
             been\n'{}'\n\nThe String-to-Sign should have been\n'{sts}'\n",
            String::from_utf8_lossy(&canonical)
        )));
    }
    Ok(creds.access_key_id())
}

fn check_clock(when: &AmzTime, now: SystemTime) -> Result<(), VerifyError> {
    let now = AmzTime::from_system(now)
        .map_err(|_| VerifyError::Invalid("The server's clock is out of range.".into()))?;
    let skew = CLOCK_SKEW_MAX.as_secs() as i64;
    let fmt = |t: i64| {
        AmzTime::from_unix(t)
            .map(|t| t.stamp)
            .unwrap_or_else(|_| t.to_string())
    };
    if when.unix_s() < now.unix_s() - skew {
        return Err(VerifyError::Invalid(format!(
            "Signature expired: {} is now earlier than {} ({} - 5 min.)",
            when.stamp(),
            fmt(now.unix_s() - skew),
            now.stamp()
        )));
    }
    if when.unix_s() > now.unix_s() + skew {
        return Err(VerifyError::Invalid(format!(
            "Signature not yet current: {} is still later than {} ({} + 5 min.)",
            when.stamp(),
            fmt(now.unix_s() + skew),
            now.stamp()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's documentation example key pair.
    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const ARN: &str = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/\
                       us.anthropic.claude-3-5-sonnet-20240620-v1:0";
    const BODY: &[u8] = br#"{"messages":[{"role":"user","content":[{"text":"Hello"}]}]}"#;

    fn creds(token: Option<&str>) -> Credentials {
        Credentials::new(AKID, SECRET, token).unwrap()
    }

    /// 2024-11-29T08:05:09Z.
    fn time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_732_867_509)
    }

    fn bedrock_url(model: &str, action: &str) -> String {
        format!(
            "https://{}{}",
            bedrock_runtime_host("us-east-1"),
            bedrock_model_path(model, action)
        )
    }

    fn sign_bedrock(url: &str, token: Option<&str>) -> Signed {
        let req = Request {
            method: "POST",
            url,
            headers: &[("Content-Type", "application/json")],
            payload: Payload::Bytes(BODY),
        };
        sign(
            &req,
            &creds(token),
            "us-east-1",
            SERVICE_BEDROCK,
            &Settings::default(),
            time(),
        )
        .unwrap()
    }

    #[test]
    fn model_ids_and_arns_are_one_encoded_segment() {
        assert_eq!(
            bedrock_model_path("anthropic.claude-3-haiku-20240307-v1:0", "converse"),
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
        );
        assert_eq!(
            bedrock_model_path(ARN, "converse-stream"),
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2F\
             us.anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream"
        );
        assert_eq!(uri_encode_segment("a b+c~é"), "a%20b%2Bc~%C3%A9");
        assert_eq!(percent_decode("a%3Ab%2fc%zz%4"), b"a:b/c%zz%4");
    }

    /// The signatures the AWS SDK for Python (botocore's SigV4Auth) computes for the same
    /// requests, key pair and time.
    #[test]
    fn matches_the_aws_sdk_for_bedrock_requests() {
        let s = sign_bedrock(
            &bedrock_url("anthropic.claude-3-haiku-20240307-v1:0", "converse"),
            None,
        );
        assert_eq!(
            s.header("authorization").unwrap(),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20241129/us-east-1/bedrock/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=795a0bfc154683852ba3c5d15ecd4af5bcaddb04c9500cc0a62f76ce822883c0"
        );
        assert_eq!(s.header("x-amz-date"), Some("20241129T080509Z"));
        assert_eq!(s.header("x-amz-security-token"), None);
        assert_eq!(s.host, "bedrock-runtime.us-east-1.amazonaws.com");

        let token = "FwoGZXIvYXdzEXAMPLETOKEN//+abc==";
        let s = sign_bedrock(&bedrock_url(ARN, "converse-stream"), Some(token));
        assert_eq!(
            s.canonical_request.lines().nth(1).unwrap(),
            "/model/arn%253Aaws%253Abedrock%253Aus-east-1%253A123456789012%253A\
             inference-profile%252Fus.anthropic.claude-3-5-sonnet-20240620-v1%253A0/converse-stream"
        );
        assert_eq!(
            s.signature,
            "11b05f349c3d933c2edc03e5284965d12fc5730dbefb2100423e82e1ba288f3e"
        );
        assert_eq!(s.header("x-amz-security-token"), Some(token));
        assert!(!format!("{s:?}").contains(token), "Debug redacts the token");
    }

    /// The time of a documented example, from its `x-amz-date`.
    fn at(stamp: &str) -> SystemTime {
        let t = AmzTime::parse(stamp).unwrap();
        UNIX_EPOCH + Duration::from_secs(t.unix_s() as u64)
    }

    /// The worked example of AWS's "Signature Version 4 signing process" (General Reference:
    /// create a canonical request, create a string to sign, calculate the signature): IAM
    /// `ListUsers` by `GET` with the documentation's key pair on 2015-08-30. Every value the
    /// documentation prints is checked: the canonical request and its hash, the string to
    /// sign, the derived signing key and the signature.
    #[test]
    fn matches_the_documented_iam_get_example() {
        let req = Request {
            method: "GET",
            url: "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08",
            headers: &[(
                "Content-Type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )],
            payload: Payload::Bytes(b""),
        };
        let s = sign(
            &req,
            &creds(None),
            "us-east-1",
            "iam",
            &Settings::default(),
            at("20150830T123600Z"),
        )
        .unwrap();
        assert_eq!(
            s.canonical_request,
            "GET\n/\nAction=ListUsers&Version=2010-05-08\n\
             content-type:application/x-www-form-urlencoded; charset=utf-8\n\
             host:iam.amazonaws.com\nx-amz-date:20150830T123600Z\n\n\
             content-type;host;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(s.canonical_request.as_bytes()),
            "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
        );
        assert_eq!(
            s.string_to_sign,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/iam/aws4_request\n\
             f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
        );
        assert_eq!(
            s.signature,
            "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
        assert_eq!(
            s.header("authorization").unwrap(),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
        assert_eq!(s.header("x-amz-date"), Some("20150830T123600Z"));
        // The documented signing key (kSigning) signs the string to sign into the same
        // signature as the key this module derives.
        let documented =
            decode_hex_32("c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9")
                .unwrap();
        let key = hmac::Key::new(hmac::HMAC_SHA256, &documented);
        let derived = signing_key(SECRET, "20150830", "us-east-1", "iam");
        for k in [&key, &derived] {
            assert_eq!(
                hex(hmac::sign(k, s.string_to_sign.as_bytes()).as_ref()),
                s.signature
            );
        }
        assert_eq!(
            verify_for(&req, &s, "iam", "20150830T123600Z"),
            Ok("AKIDEXAMPLE".to_owned()),
            "the verifier accepts the documented request"
        );
    }

    /// The older edition of the same documentation ("Signed Signature Version 4 Requests
    /// Examples"): `ListUsers` by `POST` with a form body on 2011-09-09, whose `Authorization`
    /// header the page prints.
    #[test]
    fn matches_the_documented_iam_post_example() {
        let body = b"Action=ListUsers&Version=2010-05-08";
        let req = Request {
            method: "POST",
            url: "http://iam.amazonaws.com/",
            headers: &[(
                "Content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )],
            payload: Payload::Bytes(body),
        };
        let s = sign(
            &req,
            &creds(None),
            "us-east-1",
            "iam",
            &Settings::default(),
            at("20110909T233600Z"),
        )
        .unwrap();
        assert_eq!(
            s.header("authorization").unwrap(),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20110909/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=ced6826de92d2bdeed8f846f0bf508e8559e98e4b0199114b84c54174deb456c"
        );
        assert_eq!(
            s.canonical_request.rsplit('\n').next(),
            Some(sha256_hex(body).as_str())
        );
    }

    /// Verify what `sign` made of `req`, as a server that received it at `stamp`.
    fn verify_for(
        req: &Request<'_>,
        s: &Signed,
        service: &str,
        stamp: &str,
    ) -> Result<String, VerifyError> {
        let url = parse_url(req.url).unwrap();
        let mut headers: Vec<(&str, &[u8])> = req
            .headers
            .iter()
            .map(|(n, v)| (*n, v.as_bytes()))
            .collect();
        headers.push(("host", s.host.as_bytes()));
        for (n, v) in &s.headers {
            headers.push((n, v.as_bytes()));
        }
        let body = match req.payload {
            Payload::Bytes(b) => b,
            Payload::Precomputed(_) => b"",
        };
        let incoming = Incoming {
            method: req.method,
            path: url.path,
            query: url.query,
            headers: &headers,
            body,
        };
        let credentials = creds(None);
        let expected = Expected {
            credentials: &credentials,
            region: "us-east-1",
            service,
            settings: Settings::default(),
        };
        verify(&incoming, &expected, at(stamp)).map(str::to_owned)
    }

    #[test]
    fn content_sha256_header_and_precomputed_payloads() {
        let url = bedrock_url("m", "invoke");
        let settings = Settings {
            content_sha256_header: true,
            ..Settings::default()
        };
        let req = |payload| Request {
            method: "POST",
            url: &url,
            headers: &[],
            payload,
        };
        let a = sign(
            &req(Payload::Bytes(b"")),
            &creds(None),
            "us-east-1",
            "bedrock",
            &settings,
            time(),
        )
        .unwrap();
        assert_eq!(a.header("x-amz-content-sha256"), Some(EMPTY_PAYLOAD_SHA256));
        assert!(a
            .header("authorization")
            .unwrap()
            .contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date,"));
        let b = sign(
            &req(Payload::Precomputed(EMPTY_PAYLOAD_SHA256)),
            &creds(None),
            "us-east-1",
            "bedrock",
            &settings,
            time(),
        )
        .unwrap();
        assert_eq!(a.signature, b.signature);
        let c = sign(
            &req(Payload::Precomputed("UNSIGNED-PAYLOAD")),
            &creds(None),
            "us-east-1",
            "bedrock",
            &settings,
            time(),
        )
        .unwrap();
        assert!(c.canonical_request.ends_with("\nUNSIGNED-PAYLOAD"));
    }

    #[test]
    fn canonical_pieces() {
        let d = Settings::default();
        assert_eq!(canonical_uri("", &d), "/");
        assert_eq!(canonical_uri("//a/./b/../c//", &d), "/a/c/");
        assert_eq!(canonical_uri("/a/b/..", &d), "/a/");
        assert_eq!(canonical_uri("/a b/%2F", &d), "/a%20b/%252F");
        let s3 = Settings {
            normalize_uri_path: false,
            double_uri_encode: false,
            ..d
        };
        assert_eq!(canonical_uri("/a/../b%20c//", &s3), "/a/../b%20c//");
        assert_eq!(canonical_query(""), "");
        assert_eq!(canonical_query("b=2&a=1&a=0&c"), "a=0&a=1&b=2&c=");
        assert_eq!(
            canonical_query("k=a%20b+c&%E1%88%B4=x"),
            "%E1%88%B4=x&k=a%20b%2Bc"
        );
        let mut out = Vec::new();
        canonical_value(b"  a   b \t c  ", &mut out);
        assert_eq!(out, b"a b c");
    }

    #[test]
    fn urls_and_hosts() {
        let host = |u: &str| parse_url(u).map(|u| u.host);
        assert_eq!(host("https://Example.com/x").unwrap(), "example.com");
        assert_eq!(host("https://example.com:443/").unwrap(), "example.com");
        assert_eq!(host("http://127.0.0.1:8080/m").unwrap(), "127.0.0.1:8080");
        assert_eq!(host("http://[::1]:9/").unwrap(), "[::1]:9");
        assert_eq!(host("http://[::1]/").unwrap(), "[::1]");
        let u = parse_url("https://h/p/q?x=1#frag").unwrap();
        assert_eq!((u.path, u.query), ("/p/q", "x=1"));
        let u = parse_url("https://h?x").unwrap();
        assert_eq!((u.path, u.query), ("", "x"));
        for bad in [
            "h/x",
            "ftp://h/",
            "https:///x",
            "https://u:p@h/",
            "https://h:x/",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refuses_reserved_and_bad_headers_and_scopes() {
        let url = bedrock_url("m", "converse");
        let try_sign = |headers: &[(&str, &str)], region: &str| {
            let req = Request {
                method: "POST",
                url: &url,
                headers,
                payload: Payload::Bytes(b""),
            };
            sign(
                &req,
                &creds(None),
                region,
                "bedrock",
                &Settings::default(),
                time(),
            )
        };
        assert_eq!(
            try_sign(&[("X-Amz-Date", "x")], "us-east-1").unwrap_err(),
            SigningError::ReservedHeader("x-amz-date".into())
        );
        assert!(try_sign(&[("bad name", "x")], "us-east-1").is_err());
        assert!(try_sign(&[], "US-EAST-1").is_err());
        assert!(try_sign(&[], "").is_err());
        let many: Vec<(&str, &str)> = vec![("x-h", "v"); SIGNED_HEADERS_MAX];
        assert_eq!(
            try_sign(&many, "us-east-1").unwrap_err(),
            SigningError::TooManyHeaders
        );
        // A caller's own Host is signed as given.
        let s = try_sign(&[("Host", "proxy.example:8443")], "us-east-1").unwrap();
        assert_eq!(s.host, "proxy.example:8443");
        assert!(s.canonical_request.contains("\nhost:proxy.example:8443\n"));
    }

    #[test]
    fn amz_time() {
        let t = AmzTime::from_system(time()).unwrap();
        assert_eq!((t.stamp(), t.date()), ("20241129T080509Z", "20241129"));
        assert_eq!(AmzTime::parse("20241129T080509Z"), Some(t));
        let leap = AmzTime::parse("20240229T235959Z").unwrap();
        assert_eq!(
            AmzTime::from_unix(leap.unix_s() + 1).unwrap().stamp(),
            "20240301T000000Z"
        );
        assert_eq!(AmzTime::from_unix(0).unwrap().stamp(), "19700101T000000Z");
        for bad in [
            "20230229T000000Z",
            "20241329T000000Z",
            "20241129T240000Z",
            "20241129 080509Z",
            "2024112T0805090Z",
            "+0241129T080509Z",
            "",
        ] {
            assert_eq!(AmzTime::parse(bad), None, "{bad}");
        }
        assert_eq!(
            AmzTime::from_system(UNIX_EPOCH - Duration::from_secs(1)),
            Err(SigningError::BadTime)
        );
    }

    #[test]
    fn signer_caches_the_key_per_day_and_matches_uncached_signing() {
        let signer = Signer::new(creds(Some("tok")), "eu-west-3", SERVICE_BEDROCK).unwrap();
        let url = bedrock_url(ARN, "converse");
        let req = Request {
            method: "POST",
            url: &url,
            headers: &[("content-type", "application/json")],
            payload: Payload::Bytes(BODY),
        };
        for t in [
            time(),
            time() + Duration::from_secs(60),
            time() + Duration::from_secs(86_400),
            time(),
        ] {
            let cached = signer.sign(&req, t).unwrap();
            let fresh = sign(
                &req,
                &creds(Some("tok")),
                "eu-west-3",
                "bedrock",
                &Settings::default(),
                t,
            )
            .unwrap();
            assert_eq!(cached.signature, fresh.signature);
            assert_eq!(
                signer.key.load().as_ref().map(|k| k.date.clone()),
                Some(AmzTime::from_system(t).unwrap().date().to_string())
            );
        }
        assert!(!format!("{signer:?}").contains("tok\""), "{signer:?}");
        assert!(!format!("{signer:?}").contains(SECRET));
    }

    // ---- verification ---------------------------------------------------------------------

    struct Wire {
        path: String,
        query: String,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
    }

    /// A request as a server receives it after `sign` (host and the added headers on the wire).
    fn wire(url: &str, body: &[u8], token: Option<&str>, secret: &str) -> Wire {
        let req = Request {
            method: "POST",
            url,
            headers: &[("content-type", "application/json")],
            payload: Payload::Bytes(body),
        };
        let c = Credentials::new(AKID, secret, token).unwrap();
        let s = sign(
            &req,
            &c,
            "us-east-1",
            "bedrock",
            &Settings::default(),
            time(),
        )
        .unwrap();
        let target = &url[url.find("/model").unwrap()..];
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut headers = vec![
            ("host".to_string(), s.host.clone().into_bytes()),
            ("content-type".to_string(), b"application/json".to_vec()),
            ("user-agent".to_string(), b"test".to_vec()),
        ];
        for (n, v) in &s.headers {
            headers.push((n.to_string(), v.clone().into_bytes()));
        }
        Wire {
            path: path.into(),
            query: query.into(),
            headers,
            body: body.to_vec(),
        }
    }

    fn check(w: &Wire, token: Option<&str>, now: SystemTime) -> Result<String, VerifyError> {
        let headers: Vec<(&str, &[u8])> = w
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        let incoming = Incoming {
            method: "POST",
            path: &w.path,
            query: &w.query,
            headers: &headers,
            body: &w.body,
        };
        let c = creds(token);
        let expected = Expected {
            credentials: &c,
            region: "us-east-1",
            service: "bedrock",
            settings: Settings::default(),
        };
        verify(&incoming, &expected, now).map(str::to_string)
    }

    #[test]
    fn verify_accepts_what_sign_produces() {
        let url = bedrock_url(ARN, "converse-stream") + "?b=2&a=1";
        let w = wire(&url, BODY, None, SECRET);
        assert_eq!(check(&w, None, time()).unwrap(), AKID);
        let w = wire(&url, BODY, Some("tok"), SECRET);
        assert_eq!(
            check(&w, Some("tok"), time() + CLOCK_SKEW_MAX).unwrap(),
            AKID
        );
    }

    #[test]
    fn verify_refuses_as_aws_does() {
        let url = bedrock_url(ARN, "converse");
        let good = wire(&url, BODY, None, SECRET);
        let kind = |r: Result<String, VerifyError>| r.unwrap_err().error_type();

        let wrong_secret = wire(&url, BODY, None, "not-the-secret");
        let e = check(&wrong_secret, None, time()).unwrap_err();
        assert_eq!(e.error_type(), "InvalidSignatureException");
        assert_eq!(e.status(), 403);
        assert!(e
            .message()
            .starts_with("The request signature we calculated does not match"));
        assert!(!e.message().contains(SECRET));

        let mut tampered = wire(&url, BODY, None, SECRET);
        tampered.body.push(b' ');
        assert_eq!(
            kind(check(&tampered, None, time())),
            "InvalidSignatureException"
        );

        let mut other_path = wire(&url, BODY, None, SECRET);
        other_path.path = other_path.path.replace("converse", "invoke");
        assert_eq!(
            kind(check(&other_path, None, time())),
            "InvalidSignatureException"
        );

        let mut unsigned = wire(&url, BODY, None, SECRET);
        unsigned.headers.retain(|(n, _)| n != "authorization");
        assert_eq!(
            kind(check(&unsigned, None, time())),
            "MissingAuthenticationTokenException"
        );

        let mut other_key = wire(&url, BODY, None, SECRET);
        for (n, v) in other_key.headers.iter_mut() {
            if n == "authorization" {
                *v = String::from_utf8_lossy(v)
                    .replace(AKID, "AKIDOTHER")
                    .into_bytes();
            }
        }
        assert_eq!(
            kind(check(&other_key, None, time())),
            "UnrecognizedClientException"
        );

        // A token the verifier does not expect, or none where one is expected.
        let with_token = wire(&url, BODY, Some("tok"), SECRET);
        assert_eq!(
            kind(check(&with_token, None, time())),
            "UnrecognizedClientException"
        );
        assert_eq!(
            kind(check(&good, Some("tok"), time())),
            "UnrecognizedClientException"
        );

        let late = time() + CLOCK_SKEW_MAX + Duration::from_secs(1);
        let e = check(&good, None, late).unwrap_err();
        assert!(
            e.message()
                .starts_with("Signature expired: 20241129T080509Z"),
            "{e}"
        );
        let early = time() - CLOCK_SKEW_MAX - Duration::from_secs(1);
        assert!(check(&good, None, early)
            .unwrap_err()
            .message()
            .starts_with("Signature not yet current"));

        let mut garbled = wire(&url, BODY, None, SECRET);
        for (n, v) in garbled.headers.iter_mut() {
            if n == "authorization" {
                *v = b"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20241129/us-east-1/bedrock/aws4_request".to_vec();
            }
        }
        let e = check(&garbled, None, time()).unwrap_err();
        assert_eq!(e.error_type(), "IncompleteSignatureException");
        assert!(e.message().contains("'Signature'") && e.message().contains("'SignedHeaders'"));
    }

    #[test]
    fn verify_checks_the_scope() {
        let url = bedrock_url("m", "converse");
        let w = wire(&url, BODY, None, SECRET);
        let headers: Vec<(&str, &[u8])> = w
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        let incoming = Incoming {
            method: "POST",
            path: &w.path,
            query: &w.query,
            headers: &headers,
            body: &w.body,
        };
        let c = creds(None);
        for (region, service, needle) in [
            ("us-west-2", "bedrock", "valid region"),
            ("us-east-1", "sts", "correct service"),
        ] {
            let expected = Expected {
                credentials: &c,
                region,
                service,
                settings: Settings::default(),
            };
            let e = verify(&incoming, &expected, time()).unwrap_err();
            assert!(e.message().contains(needle), "{e}");
        }
    }
}

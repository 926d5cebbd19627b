//! Microsoft Entra ID access tokens for Azure OpenAI (`auth = "entra"`): the OAuth 2.0 client
//! credentials grant against the configured token endpoint, on the worker thread that needs the
//! token. One token is cached per provider and refreshed before it expires; one fetch runs at a
//! time (the others keep using the still-valid token, or wait for the fetch when there is none);
//! every fetch is bounded in time and size, and after a failed fetch none is tried again for a
//! moment. The token and the client secret are never logged or put in an error message.

use std::io::Read;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::config::{EntraConfig, Secret};
use crate::error::{ApiError, ErrorKind};
use crate::log;

/// Longest token request, connect to last byte.
pub const TOKEN_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A token is refreshed when less than this is left of it (or half its lifetime, if shorter).
pub const TOKEN_REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);
/// Longest lifetime believed from a token answer.
pub const TOKEN_LIFETIME_MAX: Duration = Duration::from_secs(86_400);
/// Largest token endpoint answer read, bytes.
pub const TOKEN_RESPONSE_BYTES_MAX: u64 = 64 * 1024;
/// After a failed fetch, requests needing a new token fail at once for this long (the token
/// endpoint is not asked again by every waiting worker).
pub const TOKEN_FAILURE_BACKOFF: Duration = Duration::from_secs(1);
/// Longest `error` code of a token endpoint's error answer kept for the message, bytes.
const TOKEN_ERROR_CODE_BYTES_MAX: usize = 64;

const _: () = assert!(TOKEN_REFRESH_BEFORE_EXPIRY.as_secs() < TOKEN_LIFETIME_MAX.as_secs());

/// A token and when to stop and start replacing it.
struct Cached {
    token: Secret,
    expires_at: Instant,
    refresh_at: Instant,
}

#[derive(Default)]
struct State {
    cached: Option<Cached>,
    /// The last failed fetch: when, and what the requests needing a token were told.
    failed: Option<(Instant, ApiError)>,
}

/// The Entra ID token source of one provider, shared by its workers.
pub struct EntraTokens {
    provider: String,
    cfg: EntraConfig,
    agent: ureq::Agent,
    /// Held only to read or replace the cache, never across a fetch.
    state: Mutex<State>,
    /// Held for the whole of a fetch: the single flight.
    fetching: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EntraTokens {
    pub fn new(provider: &str, cfg: &EntraConfig) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(TOKEN_FETCH_TIMEOUT))
            .max_redirects(0)
            .user_agent("deepintshield")
            .build()
            .new_agent();
        EntraTokens {
            provider: provider.to_string(),
            cfg: cfg.clone(),
            agent,
            state: Mutex::new(State::default()),
            fetching: Mutex::new(()),
        }
    }

    /// A token to send now. Blocks (on this worker thread, at most about
    /// [`TOKEN_FETCH_TIMEOUT`]) only when no valid token is cached.
    pub fn token(&self) -> Result<Secret, ApiError> {
        let valid = {
            let state = lock(&self.state);
            let now = Instant::now();
            match &state.cached {
                Some(c) if now < c.refresh_at => return Ok(c.token.clone()),
                Some(c) if now < c.expires_at => Some(c.token.clone()),
                _ => None,
            }
        };
        if let Some(valid) = valid {
            // Due for a refresh but still good: one worker refreshes, the others go on with it.
            let Ok(_fetching) = self.fetching.try_lock() else {
                return Ok(valid);
            };
            return Ok(self.fetch_and_cache().unwrap_or(valid));
        }
        let _fetching = lock(&self.fetching);
        {
            let state = lock(&self.state);
            let now = Instant::now();
            if let Some(c) = state.cached.as_ref().filter(|c| now < c.expires_at) {
                return Ok(c.token.clone());
            }
            if let Some((at, e)) = &state.failed {
                if at.elapsed() < TOKEN_FAILURE_BACKOFF {
                    return Err(e.clone());
                }
            }
        }
        self.fetch_and_cache()
    }

    /// Forget the cached token (the upstream refused it): the next request fetches a new one.
    pub fn invalidate(&self) {
        lock(&self.state).cached = None;
    }

    /// One fetch (the caller holds `fetching`), its outcome cached.
    fn fetch_and_cache(&self) -> Result<Secret, ApiError> {
        let asked_at = Instant::now();
        match self.fetch() {
            Ok((token, lifetime)) => {
                let lifetime = lifetime.min(TOKEN_LIFETIME_MAX);
                let early = TOKEN_REFRESH_BEFORE_EXPIRY.min(lifetime / 2);
                let mut state = lock(&self.state);
                state.cached = Some(Cached {
                    token: token.clone(),
                    expires_at: asked_at + lifetime,
                    refresh_at: asked_at + (lifetime - early),
                });
                state.failed = None;
                Ok(token)
            }
            Err(e) => {
                log::warn(
                    "entra token fetch failed",
                    &[("provider", &self.provider), ("error", &e.message)],
                );
                lock(&self.state).failed = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// The client credentials grant: the token and its lifetime.
    fn fetch(&self) -> Result<(Secret, Duration), ApiError> {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.cfg.client_id.expose()),
            ("client_secret", self.cfg.client_secret.expose()),
            ("scope", self.cfg.scope.as_str()),
        ];
        let mut body = String::with_capacity(256);
        for (i, (name, value)) in form.iter().enumerate() {
            if i > 0 {
                body.push('&');
            }
            body.push_str(name);
            body.push('=');
            form_encode(value, &mut body);
        }
        let mut resp = self
            .agent
            .post(&self.cfg.token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .send(body.as_bytes())
            .map_err(|e| self.failure(&format!("unreachable ({})", transport_reason(&e))))?;
        let status = resp.status().as_u16();
        let mut text = Vec::new();
        resp.body_mut()
            .with_config()
            .limit(TOKEN_RESPONSE_BYTES_MAX)
            .reader()
            .take(TOKEN_RESPONSE_BYTES_MAX)
            .read_to_end(&mut text)
            .map_err(|_| self.failure("its answer could not be read"))?;
        if status != 200 {
            #[derive(Deserialize)]
            struct ErrorBody {
                error: Option<String>,
            }
            let code = serde_json::from_slice::<ErrorBody>(&text)
                .ok()
                .and_then(|b| b.error)
                .filter(|c| {
                    c.len() <= TOKEN_ERROR_CODE_BYTES_MAX
                        && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                });
            let what = match code {
                Some(code) => format!("answered status {status} ({code})"),
                None => format!("answered status {status}"),
            };
            return Err(self.failure(&what));
        }
        parse_token(&text).ok_or_else(|| self.failure("answered without a usable access_token"))
    }

    fn failure(&self, what: &str) -> ApiError {
        ApiError::new(
            ErrorKind::UpstreamTransport,
            "upstream_auth_failed",
            format!(
                "provider {}: the Entra ID token endpoint {what}",
                self.provider
            ),
        )
    }
}

/// `access_token` (visible ASCII, as a header value must be) and `expires_in` (seconds, a number
/// or a string of one) of a token answer.
fn parse_token(body: &[u8]) -> Option<(Secret, Duration)> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Seconds {
        Number(u64),
        Text(String),
    }
    #[derive(Deserialize)]
    struct TokenBody {
        access_token: String,
        expires_in: Seconds,
    }
    let t: TokenBody = serde_json::from_slice(body).ok()?;
    let secs = match t.expires_in {
        Seconds::Number(n) => n,
        Seconds::Text(s) => s.trim().parse().ok()?,
    };
    if t.access_token.is_empty() || !t.access_token.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    Some((Secret::new(t.access_token), Duration::from_secs(secs)))
}

/// `application/x-www-form-urlencoded` encoding of `value`, appended to `out`.
fn form_encode(value: &str, out: &mut String) {
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 15)]));
            }
        }
    }
}

/// A short, secret-free reason for a failed token request.
fn transport_reason(e: &ureq::Error) -> &'static str {
    match e {
        ureq::Error::Timeout(_) => "timed out",
        ureq::Error::HostNotFound => "host not found",
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => "TLS failed",
        _ => "connection failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_answers() {
        let (t, d) =
            parse_token(br#"{"token_type":"Bearer","expires_in":3599,"access_token":"eyJ0"}"#)
                .unwrap();
        assert_eq!((t.expose(), d), ("eyJ0", Duration::from_secs(3599)));
        let (_, d) = parse_token(br#"{"expires_in":"60","access_token":"a"}"#).unwrap();
        assert_eq!(d, Duration::from_secs(60));
        assert!(parse_token(br#"{"expires_in":60,"access_token":"a b"}"#).is_none());
        assert!(parse_token(br#"{"expires_in":60}"#).is_none());
        assert!(parse_token(b"<html>").is_none());
    }

    #[test]
    fn form_encoding() {
        let mut out = String::new();
        form_encode("a b+c/d=é~", &mut out);
        assert_eq!(out, "a+b%2Bc%2Fd%3D%C3%A9~");
    }

    #[test]
    fn failures_never_show_the_secret() {
        let cfg = EntraConfig {
            client_id: Secret::new("client-id-4711".into()),
            client_secret: Secret::new("very-secret-value".into()),
            // Nothing listens on port 9 of loopback (discard): the connection is refused.
            token_url: "http://127.0.0.1:9/token".into(),
            scope: "s".into(),
        };
        let tokens = EntraTokens::new("az", &cfg);
        let e = tokens.token().unwrap_err();
        assert_eq!(
            (e.kind, e.code),
            (ErrorKind::UpstreamTransport, "upstream_auth_failed")
        );
        assert!(!e.message.contains("very-secret"), "{}", e.message);
        // Within the back-off the endpoint is not asked again: the same error at once.
        let again = tokens.token().unwrap_err();
        assert_eq!(again.message, e.message);
    }
}

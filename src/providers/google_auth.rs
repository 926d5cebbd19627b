//! OAuth2 access tokens for Google Cloud APIs from a service account, without an async runtime:
//! a JWT (RS256, `iss` = the account, `scope` = cloud-platform, `aud` = the token URI) signed
//! with the account's key is exchanged at the token URI (`grant_type` jwt-bearer) for a
//! short-lived access token, which [`TokenCache`] keeps and refreshes before it expires. The
//! refresh runs on the worker thread that needs the token (blocking, bounded); one worker
//! refreshes at a time while the others use the still-valid token or wait a bounded time. No
//! message carries the key, the assertion or a token.

use std::io::Read;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde::{Deserialize, Serialize};

use crate::config::ServiceAccount;

/// What the access tokens may do: every Google Cloud API the account is allowed.
pub const TOKEN_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The `grant_type` of the exchange (RFC 7523).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// How long a signed assertion is valid (Google accepts at most an hour).
pub const ASSERTION_LIFETIME_S: u64 = 3600;
/// A token is refreshed this long before it expires (at most half its lifetime before).
pub const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Longest a worker waits for another worker's refresh when it has no valid token.
pub const TOKEN_WAIT_MAX: Duration = Duration::from_secs(10);
/// Longest token exchange (connect, send, answer).
pub const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed refresh, requests without a valid token get the same error at once for this
/// long instead of asking the token endpoint again (a failing endpoint is asked once per hold).
pub const TOKEN_FAILURE_HOLD: Duration = Duration::from_secs(1);
/// Largest token endpoint answer read, bytes.
pub const TOKEN_RESPONSE_BYTES_MAX: u64 = 64 * 1024;
/// Longest token lifetime believed (a larger `expires_in` is cut to it).
pub const TOKEN_LIFETIME_MAX: Duration = Duration::from_secs(24 * 3600);

const _: () = assert!(TOKEN_FAILURE_HOLD.as_millis() < TOKEN_REFRESH_MARGIN.as_millis());
const _: () = assert!(TOKEN_WAIT_MAX.as_millis() >= TOKEN_REQUEST_TIMEOUT.as_millis());

/// An access token and how long it lives from when it was asked for.
#[derive(Clone)]
pub struct Token {
    pub value: String,
    pub lifetime: Duration,
}

/// Why no token could be had. The message is safe to show: it never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenError {
    /// Another try may succeed (no answer, a 5xx or 429 of the token endpoint).
    pub retryable: bool,
    pub message: String,
}

impl TokenError {
    fn new(retryable: bool, message: impl Into<String>) -> Self {
        TokenError {
            retryable,
            message: message.into(),
        }
    }
}

/// A service account ready to sign assertions.
pub struct Signer {
    client_email: String,
    key_id: Option<String>,
    key: RsaKeyPair,
    rng: SystemRandom,
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    typ: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'static str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

impl Signer {
    /// Fails when the key cannot sign (the config checks it at load time).
    pub fn new(account: &ServiceAccount) -> Result<Signer, String> {
        let key = RsaKeyPair::from_pkcs8(account.private_key.pkcs8_der())
            .map_err(|e| format!("the service account's key cannot sign ({e})"))?;
        Ok(Signer {
            client_email: account.client_email.clone(),
            key_id: account.private_key_id.clone(),
            key,
            rng: SystemRandom::new(),
        })
    }

    /// A signed assertion for `aud` (the token URI), issued at `now_s` (Unix seconds).
    pub fn assertion(&self, aud: &str, now_s: u64) -> Result<String, TokenError> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = serde_json::to_vec(&Header {
            alg: "RS256",
            typ: "JWT",
            kid: self.key_id.as_deref(),
        })
        .unwrap_or_default();
        let claims = serde_json::to_vec(&Claims {
            iss: &self.client_email,
            scope: TOKEN_SCOPE,
            aud,
            iat: now_s,
            exp: now_s + ASSERTION_LIFETIME_S,
        })
        .unwrap_or_default();
        let mut jwt = b64.encode(header);
        jwt.push('.');
        b64.encode_string(claims, &mut jwt);
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &self.rng, jwt.as_bytes(), &mut signature)
            .map_err(|_| TokenError::new(false, "signing the token request failed"))?;
        jwt.push('.');
        b64.encode_string(signature, &mut jwt);
        Ok(jwt)
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An agent for token exchanges: every timeout explicit, no redirects.
pub fn token_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(TOKEN_REQUEST_TIMEOUT))
        .max_redirects(0)
        .user_agent("deepintshield")
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::WebPki)
                .build(),
        )
        .build()
        .new_agent()
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct OAuthError {
    #[serde(default)]
    error: Option<String>,
}

/// Exchange a signed assertion at `token_uri` for an access token.
pub fn exchange(
    agent: &ureq::Agent,
    token_uri: &str,
    assertion: &str,
) -> Result<Token, TokenError> {
    // The grant type is written percent-encoded; an assertion is base64url and dots only.
    let body = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
    );
    let mut resp = agent
        .post(token_uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .send(body.as_bytes())
        .map_err(|e| {
            let what = match e {
                ureq::Error::Timeout(_) => "timed out",
                _ => "could not be reached",
            };
            TokenError::new(true, format!("the token endpoint {what}"))
        })?;
    let status = resp.status().as_u16();
    let mut text = Vec::new();
    resp.body_mut()
        .with_config()
        .limit(TOKEN_RESPONSE_BYTES_MAX)
        .reader()
        .read_to_end(&mut text)
        .map_err(|_| TokenError::new(true, "reading the token endpoint's answer failed"))?;
    if !(200..300).contains(&status) {
        // OAuth's `error` is a short code (`invalid_grant`); its description is not relayed.
        let code = serde_json::from_slice::<OAuthError>(&text)
            .ok()
            .and_then(|e| e.error)
            .filter(|c| {
                !c.is_empty()
                    && c.len() <= 64
                    && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            });
        let retryable = status == 429 || status >= 500;
        let message = match code {
            Some(c) => {
                format!("the token endpoint refused the service account (HTTP {status}, {c})")
            }
            None => format!("the token endpoint answered HTTP {status}"),
        };
        return Err(TokenError::new(retryable, message));
    }
    let answer: TokenAnswer = serde_json::from_slice(&text)
        .map_err(|_| TokenError::new(false, "the token endpoint's answer is not JSON"))?;
    let value = answer
        .access_token
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            TokenError::new(
                false,
                "the token endpoint's answer holds no usable access_token",
            )
        })?;
    let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(ASSERTION_LIFETIME_S))
        .min(TOKEN_LIFETIME_MAX);
    Ok(Token { value, lifetime })
}

struct Cached {
    value: String,
    refresh_at: Instant,
    expires_at: Instant,
}

#[derive(Default)]
struct State {
    token: Option<Cached>,
    refreshing: bool,
    failure: Option<(Instant, TokenError)>,
}

impl State {
    /// The token while it has not expired.
    fn valid(&self, now: Instant) -> Option<String> {
        self.token
            .as_ref()
            .filter(|t| now < t.expires_at)
            .map(|t| t.value.clone())
    }
}

/// One access token shared by a provider's workers, refreshed single-flight before it expires.
#[derive(Default)]
pub struct TokenCache {
    state: Mutex<State>,
    changed: Condvar,
}

/// Clears `refreshing` if the refresh never finished (the fetch panicked), so that waiting
/// workers are not left waiting for it.
struct RefreshGuard<'a> {
    cache: &'a TokenCache,
    armed: bool,
}

impl Drop for RefreshGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.cache.lock().refreshing = false;
            self.cache.changed.notify_all();
        }
    }
}

impl TokenCache {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A usable access token. A token past its refresh time (its lifetime less
    /// [`TOKEN_REFRESH_MARGIN`], at most half of it) is refreshed by the first caller with
    /// `fetch`, while the others go on with it until it expires; without a valid token the others
    /// wait for that refresh, at most [`TOKEN_WAIT_MAX`]. A failed refresh keeps a still-valid
    /// token in use, and its error is returned at once to callers without one for
    /// [`TOKEN_FAILURE_HOLD`].
    pub fn get(
        &self,
        fetch: impl FnOnce() -> Result<Token, TokenError>,
    ) -> Result<String, TokenError> {
        let deadline = Instant::now() + TOKEN_WAIT_MAX;
        let mut st = self.lock();
        loop {
            let now = Instant::now();
            if let Some(t) = st.token.as_ref().filter(|t| now < t.refresh_at) {
                return Ok(t.value.clone());
            }
            if !st.refreshing {
                let held = st
                    .failure
                    .as_ref()
                    .filter(|(at, _)| now < *at + TOKEN_FAILURE_HOLD)
                    .map(|(_, e)| e.clone());
                if let Some(e) = held {
                    return st.valid(now).ok_or(e);
                }
                st.refreshing = true;
                break;
            }
            if let Some(value) = st.valid(now) {
                return Ok(value);
            }
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                return Err(TokenError::new(
                    true,
                    "timed out waiting for an access token",
                ));
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        drop(st);
        let mut guard = RefreshGuard {
            cache: self,
            armed: true,
        };
        let asked_at = Instant::now();
        let result = fetch();
        let mut st = self.lock();
        guard.armed = false;
        st.refreshing = false;
        let out = match result {
            Ok(token) => {
                let lifetime = token.lifetime.min(TOKEN_LIFETIME_MAX);
                let margin = TOKEN_REFRESH_MARGIN.min(lifetime / 2);
                st.token = Some(Cached {
                    value: token.value.clone(),
                    refresh_at: asked_at + lifetime - margin,
                    expires_at: asked_at + lifetime,
                });
                st.failure = None;
                Ok(token.value)
            }
            Err(e) => {
                st.failure = Some((Instant::now(), e.clone()));
                st.valid(Instant::now()).ok_or(e)
            }
        };
        drop(st);
        self.changed.notify_all();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn token(value: &str, lifetime_ms: u64) -> Token {
        Token {
            value: value.into(),
            lifetime: Duration::from_millis(lifetime_ms),
        }
    }

    #[test]
    fn cached_until_refresh_time_then_refreshed() {
        let cache = TokenCache::new();
        let calls = AtomicUsize::new(0);
        let fetch = |v: &'static str| {
            let calls = &calls;
            move || {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(token(v, 400))
            }
        };
        assert_eq!(cache.get(fetch("a")).unwrap(), "a");
        assert_eq!(cache.get(fetch("b")).unwrap(), "a");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Past half the lifetime (the margin is capped at half of it): refreshed.
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(cache.get(fetch("c")).unwrap(), "c");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn one_refresh_for_many_workers() {
        let cache = Arc::new(TokenCache::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (cache, calls) = (Arc::clone(&cache), Arc::clone(&calls));
                std::thread::spawn(move || {
                    cache.get(|| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(100));
                        Ok(token("t", 60_000))
                    })
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap().unwrap(), "t");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn failures_are_held_and_a_valid_token_survives_them() {
        let cache = TokenCache::new();
        let fail = || Err(TokenError::new(false, "refused"));
        assert_eq!(cache.get(fail).unwrap_err().message, "refused");
        // Within the hold: the same error without asking again.
        let e = cache
            .get(|| -> Result<Token, TokenError> { panic!("asked again") })
            .unwrap_err();
        assert_eq!(e.message, "refused");
        std::thread::sleep(TOKEN_FAILURE_HOLD);
        assert_eq!(cache.get(|| Ok(token("ok", 400))).unwrap(), "ok");
        std::thread::sleep(Duration::from_millis(250));
        // Due for a refresh that fails: the old token is still valid and used.
        assert_eq!(cache.get(fail).unwrap(), "ok");
    }

    #[test]
    fn a_panicking_refresh_does_not_block_the_others() {
        let cache = Arc::new(TokenCache::new());
        let c = Arc::clone(&cache);
        let r =
            std::thread::spawn(move || c.get(|| -> Result<Token, TokenError> { panic!("boom") }))
                .join();
        assert!(r.is_err());
        assert_eq!(cache.get(|| Ok(token("after", 60_000))).unwrap(), "after");
    }
}

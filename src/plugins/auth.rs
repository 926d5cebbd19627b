//! Who sent a request, decided on its head before the body is read: a virtual key (the governance
//! plugin's table), a static client key (`server.client_keys`), or nobody when authentication is
//! off. Keys are accepted from `Authorization: Bearer` (OpenAI clients), `x-api-key` (Anthropic
//! clients) and `api-key` (Azure clients).
//!
//! A presented key is hashed (SHA-256) before anything is compared, and only hashes are compared:
//! static hashes all of them, without an early exit; virtual keys by a hash-table lookup of the
//! digest. The time taken depends on the key's length, never on how much of it is right.

use std::sync::Arc;

use super::governance::{KeyEntry, State};
use crate::config::{sha256, AuthMode, Config};
use crate::error::{ApiError, ErrorKind};
use crate::http::Request;

/// Who a request comes from.
#[derive(Clone)]
pub enum Principal {
    /// Authentication is off and no virtual key was presented.
    Open,
    /// The static client key at this position of `server.client_keys`.
    ClientKey(usize),
    /// A virtual key.
    Key(Arc<KeyEntry>),
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Open => f.write_str("Open"),
            Principal::ClientKey(i) => write!(f, "ClientKey({i})"),
            Principal::Key(k) => write!(f, "Key({})", k.record.id),
        }
    }
}

/// One config generation's authentication.
pub struct Auth {
    mode: AuthMode,
    client_keys: Vec<[u8; 32]>,
    /// The virtual keys, when the governance plugin is on.
    keys: Option<Arc<State>>,
}

/// The key a request presents: `Authorization: Bearer <key>` (the scheme in any case),
/// `x-api-key: <key>` or `api-key: <key>`, in that order.
pub fn presented_key(req: &Request) -> Option<&[u8]> {
    req.header("authorization")
        .and_then(crate::route::bearer_token)
        .or_else(|| req.header("x-api-key"))
        .or_else(|| req.header("api-key"))
        .map(trim_ascii)
}

fn trim_ascii(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// Whether two digests are equal, looking at every byte.
fn digest_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized(code: &'static str, message: &'static str) -> ApiError {
    ApiError::new(ErrorKind::Unauthorized, code, message)
}

impl Auth {
    /// Authentication for `config`, with the virtual keys of `state` when the governance plugin
    /// is on.
    pub fn new(config: &Config, state: &Arc<State>) -> Auth {
        let governance = config
            .plugins
            .order
            .contains(&crate::config::PluginName::Governance);
        Auth {
            mode: config.server.auth,
            client_keys: config.server.client_keys.iter().map(|k| k.sha256).collect(),
            keys: governance.then(|| Arc::clone(state)),
        }
    }

    /// Who sent `req`, or why it is refused (401).
    pub fn authenticate(&self, req: &Request) -> Result<Principal, ApiError> {
        if self.mode == AuthMode::Off && self.keys.is_none() {
            // Nothing to match a key against (client keys and "off" exclude each other).
            return Ok(Principal::Open);
        }
        let presented = presented_key(req).filter(|k| !k.is_empty());
        let Some(presented) = presented else {
            return match self.mode {
                AuthMode::Off => Ok(Principal::Open),
                AuthMode::Keys => Err(unauthorized(
                    "missing_api_key",
                    "no API key provided: send Authorization: Bearer <key> (or x-api-key)",
                )),
            };
        };
        let hash = sha256(presented);
        let mut matched = None;
        for (i, k) in self.client_keys.iter().enumerate() {
            if digest_eq(k, &hash) && matched.is_none() {
                matched = Some(i);
            }
        }
        if let Some(i) = matched {
            return Ok(Principal::ClientKey(i));
        }
        if let Some(state) = &self.keys {
            if let Some(entry) = state.find(&hash) {
                return entry
                    .admissible(crate::cost::now_unix_s())
                    .map(|()| Principal::Key(entry));
            }
        }
        match self.mode {
            AuthMode::Off => Ok(Principal::Open),
            AuthMode::Keys => Err(unauthorized(
                "invalid_api_key",
                "incorrect API key provided",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PluginName;
    use crate::store::records::{generate_key, KeyRecord, Limits};
    use std::time::{Duration, Instant};

    fn auth_with(key: &str) -> Auth {
        let state = Arc::new(State::new());
        let record = KeyRecord {
            id: 1,
            name: "k".into(),
            hash: sha256(key.as_bytes()),
            prefix: key[..10].into(),
            owner: None,
            team_id: None,
            providers: Vec::new(),
            models: Vec::new(),
            limits: Limits::default(),
            refuse_unknown_cost: false,
            expires_at: None,
            enabled: true,
            created_at: 0,
            updated_at: 0,
        };
        state.install(vec![record], Vec::new());
        let mut config = Config::default();
        config.plugins.order = vec![PluginName::Governance];
        Auth::new(&config, &state)
    }

    fn request(header: &str, value: &str) -> Request {
        let mut r = Request::empty(-1);
        r.headers.push(header, value.as_bytes());
        r
    }

    #[test]
    fn keys_are_read_from_three_headers_only() {
        let key = generate_key().unwrap();
        let auth = auth_with(&key);
        let bearer = format!("bEaReR {key}");
        for (h, v) in [
            ("authorization", bearer.as_str()),
            ("x-api-key", &key),
            ("api-key", &key),
        ] {
            assert!(
                matches!(auth.authenticate(&request(h, v)), Ok(Principal::Key(_))),
                "{h}"
            );
        }
        for (h, v) in [("authorization", key.as_str()), ("x-auth-token", &key)] {
            let e = auth.authenticate(&request(h, v)).unwrap_err();
            assert_eq!(e.code, "missing_api_key", "{h}");
        }
        let e = auth.authenticate(&request("x-api-key", &key[..key.len() - 1]));
        assert_eq!(e.unwrap_err().code, "invalid_api_key");
    }

    /// The least time of `rounds` batches of `batch` authentications of `req`.
    fn fastest(auth: &Auth, req: &Request, batch: usize) -> Duration {
        let started = Instant::now();
        for _ in 0..batch {
            let _ = std::hint::black_box(auth.authenticate(std::hint::black_box(req)));
        }
        started.elapsed()
    }

    /// A forged key that shares all but the last character of the real key takes as long to
    /// refuse as one that differs from its first character: the comparison is of digests.
    #[test]
    fn refusal_time_does_not_depend_on_the_right_prefix() {
        let key = generate_key().unwrap();
        let auth = auth_with(&key);
        let mut near = key.clone();
        near.pop();
        near.push(if key.ends_with('A') { 'B' } else { 'A' });
        let mut far = String::from("x");
        far.push_str(&"y".repeat(key.len() - 1));
        let (near, far) = (request("x-api-key", &near), request("x-api-key", &far));
        let (mut best_near, mut best_far) = (Duration::MAX, Duration::MAX);
        for _ in 0..200 {
            best_near = best_near.min(fastest(&auth, &near, 50));
            best_far = best_far.min(fastest(&auth, &far, 50));
        }
        let ratio = best_near.as_nanos() as f64 / best_far.as_nanos() as f64;
        assert!(
            (0.75..=1.33).contains(&ratio),
            "near {best_near:?}, far {best_far:?}"
        );
    }
}

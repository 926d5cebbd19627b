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

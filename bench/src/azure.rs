//! The mock upstream as Azure OpenAI: its routes (`/openai/deployments/{deployment}/...` with an
//! `api-version` query parameter, `/openai/v1/...`, and the Responses API at
//! `/openai/v1/responses` and `/openai/responses?api-version=`), its error bodies
//! (`{"error":{"code":"<status>","message":...}}`), and a Microsoft Entra ID token endpoint for
//! the client credentials grant, whose tokens the Azure routes accept as `Authorization: Bearer`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

/// Azure's message for a missing or wrong `api-key` (401).
pub const ACCESS_DENIED: &str = "Access denied due to invalid subscription key or wrong API \
endpoint. Make sure to provide a valid key for an active subscription and use a correct regional \
API endpoint for your resource.";
/// Tokens the mock remembers as issued (older ones are no longer accepted).
pub const TOKENS_KEPT_MAX: usize = 64;
/// The first `api-version` with which Azure serves the Responses API on `/openai/responses`.
pub const RESPONSES_API_VERSION_MIN: &str = "2025-03-01-preview";
/// Azure's message for the Responses API asked with an older `api-version` (400).
pub const RESPONSES_VERSION_REQUIRED: &str =
    "Azure OpenAI Responses API is enabled only for api-version 2025-03-01-preview and later";

/// Which operation an Azure route serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AzureOp {
    Chat,
    Completions,
    Embeddings,
    /// The Responses API (`/openai/v1/responses`, `/openai/responses`).
    Responses,
}

/// A request path on Azure's data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AzureRoute<'a> {
    /// The deployment named in the path; `None` on `/openai/v1/...` and `/openai/responses`
    /// (the body's `model` names it).
    pub deployment: Option<&'a str>,
    pub op: AzureOp,
    /// The route needs an `api-version` (the deployment routes and `/openai/responses`; the v1
    /// API does not).
    pub versioned: bool,
}

fn op_of(rest: &str) -> Option<AzureOp> {
    match rest {
        "/chat/completions" => Some(AzureOp::Chat),
        "/completions" => Some(AzureOp::Completions),
        "/embeddings" => Some(AzureOp::Embeddings),
        _ => None,
    }
}

/// The Azure route of `path`, if it is one.
pub fn route(path: &str) -> Option<AzureRoute<'_>> {
    if let Some(rest) = path.strip_prefix("/openai/v1") {
        let op = match rest {
            "/responses" => AzureOp::Responses,
            _ => op_of(rest)?,
        };
        return Some(AzureRoute {
            deployment: None,
            op,
            versioned: false,
        });
    }
    if path == "/openai/responses" {
        return Some(AzureRoute {
            deployment: None,
            op: AzureOp::Responses,
            versioned: true,
        });
    }
    let rest = path.strip_prefix("/openai/deployments/")?;
    let (deployment, rest) = rest.split_at(rest.find('/')?);
    if deployment.is_empty() {
        return None;
    }
    Some(AzureRoute {
        deployment: Some(deployment),
        op: op_of(rest)?,
        versioned: true,
    })
}

/// Whether `/openai/responses` serves `api_version`: a dated preview from
/// [`RESPONSES_API_VERSION_MIN`] on (`YYYY-MM-DD-preview`).
pub fn responses_version_ok(api_version: &str) -> bool {
    let Some(date) = api_version.strip_suffix("-preview") else {
        return false;
    };
    let dated = date.len() == 10
        && date.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    dated && api_version >= RESPONSES_API_VERSION_MIN
}

/// The tenant of a token endpoint path `/entra/{tenant}/oauth2/v2.0/token`.
pub fn token_tenant(path: &str) -> Option<&str> {
    let tenant = path
        .strip_prefix("/entra/")?
        .strip_suffix("/oauth2/v2.0/token")?;
    (!tenant.is_empty() && !tenant.contains('/')).then_some(tenant)
}

/// Azure's error body: `{"error":{"code":"<status>","message":...}}`.
pub fn error_body(status: u16, message: &str) -> Vec<u8> {
    let body = json!({"error": {"code": status.to_string(), "message": message}});
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The value of `name` in a query string or form body (`a=1&b=2`), percent- and `+`-decoded.
pub fn form_value(text: &str, name: &str) -> Option<String> {
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == name).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| char::from(b).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Tokens issued by the mock's token endpoint, each valid for `lifetime`.
pub struct Tokens {
    lifetime: Duration,
    issued: Mutex<VecDeque<(String, Instant)>>,
    count: AtomicU64,
}

impl Tokens {
    pub fn new(lifetime: Duration) -> Self {
        Tokens {
            lifetime,
            issued: Mutex::new(VecDeque::with_capacity(TOKENS_KEPT_MAX)),
            count: AtomicU64::new(0),
        }
    }

    /// A new token (`mocktoken-<n>`) and its lifetime in seconds.
    pub fn issue(&self) -> (String, u64) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let token = format!("mocktoken-{n}");
        if let Ok(mut issued) = self.issued.lock() {
            if issued.len() == TOKENS_KEPT_MAX {
                issued.pop_front();
            }
            issued.push_back((token.clone(), Instant::now() + self.lifetime));
        }
        (token, self.lifetime.as_secs())
    }

    /// Whether `token` was issued and has not expired.
    pub fn valid(&self, token: &str) -> bool {
        let now = Instant::now();
        self.issued
            .lock()
            .map(|issued| issued.iter().any(|(t, until)| t == token && now < *until))
            .unwrap_or(false)
    }

    /// Tokens issued so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("/openai/deployments/my-4o/chat/completions"),
            Some(AzureRoute {
                deployment: Some("my-4o"),
                op: AzureOp::Chat,
                versioned: true,
            })
        );
        assert_eq!(
            route("/openai/deployments/emb/embeddings").map(|r| r.op),
            Some(AzureOp::Embeddings)
        );
        assert_eq!(
            route("/openai/v1/completions"),
            Some(AzureRoute {
                deployment: None,
                op: AzureOp::Completions,
                versioned: false,
            })
        );
        // The Responses API: under v1, and the versioned route without a deployment.
        assert_eq!(
            route("/openai/v1/responses"),
            Some(AzureRoute {
                deployment: None,
                op: AzureOp::Responses,
                versioned: false,
            })
        );
        assert_eq!(
            route("/openai/responses"),
            Some(AzureRoute {
                deployment: None,
                op: AzureOp::Responses,
                versioned: true,
            })
        );
        assert_eq!(route("/openai/deployments/d/responses"), None);
        assert_eq!(route("/openai/deployments//chat/completions"), None);
        assert_eq!(route("/openai/deployments/x/images"), None);
        assert_eq!(route("/v1/chat/completions"), None);
        assert_eq!(
            token_tenant("/entra/contoso/oauth2/v2.0/token"),
            Some("contoso")
        );
        assert_eq!(token_tenant("/entra//oauth2/v2.0/token"), None);
    }

    #[test]
    fn responses_need_a_recent_preview_version() {
        for ok in [
            "2025-03-01-preview",
            "2025-04-01-preview",
            "2026-01-01-preview",
        ] {
            assert!(responses_version_ok(ok), "{ok}");
        }
        for old in [
            "2024-10-21",
            "2025-01-01-preview",
            "preview",
            "2025-4-01-preview",
            "",
        ] {
            assert!(!responses_version_ok(old), "{old}");
        }
    }

    #[test]
    fn forms() {
        let f = "grant_type=client_credentials&scope=https%3A%2F%2Fx%2F.default&a=b+c";
        assert_eq!(
            form_value(f, "grant_type").as_deref(),
            Some("client_credentials")
        );
        assert_eq!(
            form_value(f, "scope").as_deref(),
            Some("https://x/.default")
        );
        assert_eq!(form_value(f, "a").as_deref(), Some("b c"));
        assert_eq!(form_value(f, "missing"), None);
        assert_eq!(form_value("x=%zz%4", "x").as_deref(), Some("%zz%4"));
    }

    #[test]
    fn tokens_expire_and_are_bounded() {
        let t = Tokens::new(Duration::from_secs(60));
        let (first, secs) = t.issue();
        assert_eq!((first.as_str(), secs), ("mocktoken-1", 60));
        assert!(t.valid(&first) && !t.valid("mocktoken-99"));
        for _ in 0..TOKENS_KEPT_MAX {
            t.issue();
        }
        assert!(!t.valid(&first), "the oldest is forgotten");
        let short = Tokens::new(Duration::ZERO);
        let (tok, _) = short.issue();
        assert!(!short.valid(&tok));
    }
}

//! The `openai` provider: OpenAI Chat Completions over HTTPS (rustls) or HTTP, for OpenAI itself and
//! every compatible server (vLLM, Ollama, Groq, Together, ...). Upstream statuses and error bodies
//! reach the client faithfully.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{pick_key, Call, UpstreamReply, WorkerCtx};
use crate::config::{KeyConfig, ProviderConfig};
use crate::error::{ApiError, ErrorKind};

/// Largest upstream response body accepted, in bytes.
pub const UPSTREAM_BODY_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Idle upstream connections each worker keeps for reuse.
pub const IDLE_CONNECTIONS_PER_WORKER: usize = 4;
/// How long an idle upstream connection is kept.
pub const IDLE_CONNECTION_AGE: Duration = Duration::from_secs(60);

pub struct OpenAiProvider {
    name: String,
    url: String,
    keys: Vec<KeyConfig>,
    headers: Vec<(String, String)>,
    connect_timeout: Duration,
    tls: ureq::tls::TlsConfig,
}

impl OpenAiProvider {
    pub fn new(cfg: &ProviderConfig) -> Result<Self, String> {
        let mut roots = ureq::tls::RootCerts::WebPki;
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("providers.{}.ca_file: {}: {e}", cfg.name, path.display()))?;
            let mut certs: Vec<ureq::tls::Certificate<'static>> = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                    Ok(_) => {}
                    Err(e) => {
                        return Err(format!(
                            "providers.{}.ca_file: {}: {e}",
                            cfg.name,
                            path.display()
                        ))
                    }
                }
            }
            if certs.is_empty() {
                return Err(format!(
                    "providers.{}.ca_file: {}: no certificate found",
                    cfg.name,
                    path.display()
                ));
            }
            // The file's CAs replace the built-in webpki roots for this provider (as curl's
            // --cacert does): a private vLLM behind an internal CA trusts only that CA.
            roots = ureq::tls::RootCerts::Specific(Arc::new(certs));
        }
        let tls = ureq::tls::TlsConfig::builder().root_certs(roots).build();
        Ok(OpenAiProvider {
            name: cfg.name.clone(),
            url: format!("{}/chat/completions", cfg.base_url.trim_end_matches('/')),
            keys: cfg.keys.clone(),
            headers: cfg.headers.clone(),
            connect_timeout: cfg.connect_timeout,
            tls,
        })
    }

    /// One agent per worker: keep-alive to the upstream, every timeout explicit.
    pub fn agent(&self) -> ureq::Agent {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(self.tls.clone())
            .timeout_connect(Some(self.connect_timeout))
            .timeout_resolve(Some(self.connect_timeout))
            // The per-call deadline is set on each request; this bounds anything left.
            .timeout_global(Some(Duration::from_secs(3600)))
            .max_redirects(0)
            .max_idle_connections(IDLE_CONNECTIONS_PER_WORKER)
            .max_idle_connections_per_host(IDLE_CONNECTIONS_PER_WORKER)
            .max_idle_age(IDLE_CONNECTION_AGE)
            .no_delay(true)
            .user_agent("deepintshield")
            .accept_encoding("gzip")
            .build();
        ureq::Agent::new_with_config(config)
    }

    pub fn call(&self, ctx: &mut WorkerCtx, call: &Call<'_>) -> Result<UpstreamReply, ApiError> {
        let key = pick_key(&self.keys, call.upstream_model, ctx)?;
        let remaining = call.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(timeout_error());
        }
        let Some(agent) = ctx.agent.as_ref() else {
            return Err(ApiError::internal());
        };
        let mut req = agent
            .post(&self.url)
            .config()
            .timeout_global(Some(remaining))
            .build()
            .header("authorization", format!("Bearer {}", key.secret.expose()))
            .header("content-type", "application/json")
            .header("accept", "application/json");
        for (name, value) in &self.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        let mut resp = req.send(call.body).map_err(|e| self.transport_error(e))?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = header("retry-after");
        let json = header("content-type").is_some_and(|ct| ct.contains("json"));
        let mut body = Vec::new();
        resp.body_mut()
            .with_config()
            .limit(UPSTREAM_BODY_BYTES_MAX)
            .reader()
            .read_to_end(&mut body)
            .map_err(|e| self.read_error(e))?;
        let (prompt_tokens, completion_tokens) = if status == 200 {
            usage_of(&body)
        } else {
            (0, 0)
        };
        Ok(UpstreamReply {
            status,
            content_type: if json {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            },
            body,
            retry_after,
            prompt_tokens,
            completion_tokens,
        })
    }

    fn transport_error(&self, e: ureq::Error) -> ApiError {
        match e {
            ureq::Error::Timeout(_) => timeout_error(),
            ureq::Error::HostNotFound => ApiError::new(
                ErrorKind::UpstreamTransport,
                "upstream_unreachable",
                format!("provider {}: host not found", self.name),
            ),
            ureq::Error::ConnectionFailed | ureq::Error::Io(_) => ApiError::new(
                ErrorKind::UpstreamTransport,
                "upstream_unreachable",
                format!("provider {}: connection failed", self.name),
            ),
            ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => ApiError::new(
                ErrorKind::UpstreamTransport,
                "upstream_tls_error",
                format!("provider {}: TLS handshake failed", self.name),
            ),
            _ => ApiError::new(
                ErrorKind::UpstreamInvalid,
                "upstream_protocol_error",
                format!("provider {}: invalid response", self.name),
            ),
        }
    }

    fn read_error(&self, e: std::io::Error) -> ApiError {
        // ureq reports its own errors (timeouts, limits) wrapped in io::Error.
        match e.into_inner().map(|inner| inner.downcast::<ureq::Error>()) {
            Some(Ok(ureq_err)) => match *ureq_err {
                ureq::Error::BodyExceedsLimit(_) => ApiError::new(
                    ErrorKind::UpstreamInvalid,
                    "upstream_body_too_large",
                    format!("provider {}: response body too large", self.name),
                ),
                other => self.transport_error(other),
            },
            _ => ApiError::new(
                ErrorKind::UpstreamTransport,
                "upstream_read_error",
                format!("provider {}: reading the response failed", self.name),
            ),
        }
    }
}

fn timeout_error() -> ApiError {
    ApiError::new(
        ErrorKind::RequestTimeout,
        "request_timeout",
        "the provider did not answer within the request timeout",
    )
}

/// `usage.prompt_tokens` and `usage.completion_tokens` of an OpenAI response, or zeros.
fn usage_of(body: &[u8]) -> (u64, u64) {
    #[derive(serde::Deserialize)]
    struct U {
        prompt_tokens: Option<u64>,
        completion_tokens: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct R {
        usage: Option<U>,
    }
    match serde_json::from_slice::<R>(body) {
        Ok(R { usage: Some(u) }) => (
            u.prompt_tokens.unwrap_or(0),
            u.completion_tokens.unwrap_or(0),
        ),
        _ => (0, 0),
    }
}

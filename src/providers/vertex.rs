//! The `vertex` provider: Gemini models on Vertex AI (`POST {base_url}/projects/{project}/
//! locations/{location}/publishers/google/models/{model}:generateContent`,
//! `:streamGenerateContent?alt=sse`, `:predict` for embeddings), authenticated with
//! `Authorization: Bearer <access token>` of a service account (see [`super::google_auth`]).
//! The bodies are Gemini's.

use super::adapter::{Adapter, Format, Headers, Operation, Outgoing};
use super::gemini::{chat_method, model_segment};
use super::google_auth::{exchange, token_agent, unix_now_s, Signer, TokenCache, TokenError};
use crate::config::VertexConfig;
use crate::error::{ApiError, ErrorKind};

pub struct VertexAdapter {
    /// The provider's name, for messages.
    name: String,
    /// `{base_url}/projects/{project}/locations/{location}/publishers/google`.
    publisher_url: String,
    token_uri: String,
    signer: Signer,
    tokens: TokenCache,
    /// Token exchanges only (the provider's calls use the worker's agent).
    agent: ureq::Agent,
}

impl VertexAdapter {
    /// Fails when the service account's key cannot sign (checked by the config already).
    pub fn new(name: &str, base_url: &str, vertex: &VertexConfig) -> Result<Self, String> {
        Ok(VertexAdapter {
            name: name.to_string(),
            publisher_url: format!(
                "{}/projects/{}/locations/{}/publishers/google",
                base_url.trim_end_matches('/'),
                vertex.project,
                vertex.location
            ),
            token_uri: vertex.token_uri.clone(),
            signer: Signer::new(&vertex.account)
                .map_err(|e| format!("providers.{name}.vertex.credentials_file: {e}"))?,
            tokens: TokenCache::new(),
            agent: token_agent(),
        })
    }

    /// A usable access token (cached, or refreshed on this thread).
    fn token(&self) -> Result<String, ApiError> {
        self.tokens
            .get(|| {
                let assertion = self.signer.assertion(&self.token_uri, unix_now_s())?;
                exchange(&self.agent, &self.token_uri, &assertion)
            })
            .map_err(|e| self.auth_error(e))
    }

    /// A token failure for the client: 502 `upstream_auth_failed` (retried when another try may
    /// succeed).
    fn auth_error(&self, e: TokenError) -> ApiError {
        let kind = if e.retryable {
            ErrorKind::UpstreamTransport
        } else {
            ErrorKind::UpstreamInvalid
        };
        ApiError::new(
            kind,
            "upstream_auth_failed",
            format!(
                "provider {}: no access token for the service account: {}",
                self.name, e.message
            ),
        )
    }
}

impl Adapter for VertexAdapter {
    fn format(&self) -> Format {
        Format::Gemini
    }

    fn url(&self, operation: Operation, model: &str, stream: bool) -> Option<String> {
        let method = match operation {
            Operation::Chat => chat_method(stream),
            Operation::Embeddings => ":predict",
            Operation::CountTokens | Operation::Completions => return None,
        };
        Some(format!(
            "{}/models/{}{method}",
            self.publisher_url,
            model_segment(model)
        ))
    }

    /// The key slot of a `vertex` provider has no secret: the token is the service account's.
    fn authorize(&self, _key: &str, req: &mut Outgoing<'_>) -> Result<(), ApiError> {
        let token = self.token()?;
        req.headers
            .push(("authorization".into(), format!("Bearer {token}")));
        Ok(())
    }

    /// `GET {publisher_url}{path}` with the current token (none when it cannot be had: the
    /// probe then sees the upstream's 401).
    fn probe(&self, path: &str, _key: &str) -> (String, Headers) {
        let headers = match self.token() {
            Ok(token) => vec![("authorization".into(), format!("Bearer {token}"))],
            Err(_) => Vec::new(),
        };
        (format!("{}{path}", self.publisher_url), headers)
    }
}

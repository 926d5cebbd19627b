//! The `anthropic` provider: the Anthropic Messages API (`POST {base_url}/v1/messages`,
//! `/v1/messages/count_tokens`), authenticated with `x-api-key` and versioned with
//! `anthropic-version`. A client that spoke Anthropic has its `anthropic-version` and
//! `anthropic-beta` headers passed on; other clients get the provider's configured version.

use super::adapter::{forwarded, Adapter, Format, Headers, Operation, Outgoing};
use crate::error::ApiError;

pub struct AnthropicAdapter {
    /// `base_url` without a trailing `/`, e.g. `https://api.anthropic.com`.
    base_url: String,
    /// `anthropic-version` sent when the client did not send one.
    version: String,
}

impl AnthropicAdapter {
    pub fn new(base_url: &str, version: &str) -> Self {
        AnthropicAdapter {
            base_url: base_url.trim_end_matches('/').to_string(),
            version: version.to_string(),
        }
    }
}

impl Adapter for AnthropicAdapter {
    fn format(&self) -> Format {
        Format::Anthropic
    }

    fn url(&self, operation: Operation, _model: &str, _stream: bool) -> Option<String> {
        Some(match operation {
            Operation::Chat => format!("{}/v1/messages", self.base_url),
            Operation::CountTokens => format!("{}/v1/messages/count_tokens", self.base_url),
            Operation::Embeddings | Operation::Completions => return None,
        })
    }

    fn authorize(&self, key: &str, req: &mut Outgoing<'_>) -> Result<(), ApiError> {
        let client = req.client;
        req.headers.push(("x-api-key".into(), key.to_string()));
        let version = forwarded(client, "anthropic-version").unwrap_or(&self.version);
        req.headers
            .push(("anthropic-version".into(), version.to_string()));
        if let Some(beta) = forwarded(client, "anthropic-beta") {
            req.headers
                .push(("anthropic-beta".into(), beta.to_string()));
        }
        Ok(())
    }

    fn probe(&self, path: &str, key: &str) -> (String, Headers) {
        (
            format!("{}/v1{path}", self.base_url),
            vec![
                ("x-api-key".into(), key.to_string()),
                ("anthropic-version".into(), self.version.clone()),
            ],
        )
    }
}

//! The `openai` provider: OpenAI Chat Completions over HTTPS or HTTP, for OpenAI itself and every
//! compatible server (vLLM, Ollama, Groq, Together, ...; see `config::Preset`).
//! `Authorization: Bearer <key>`, none for a provider without keys (a local server).

use super::adapter::{Adapter, Format, Headers, Operation, Outgoing};
use crate::error::ApiError;

pub struct OpenAiAdapter {
    /// `base_url` without a trailing `/`, e.g. `https://api.openai.com/v1`.
    base_url: String,
}

impl OpenAiAdapter {
    pub fn new(base_url: &str) -> Self {
        OpenAiAdapter {
            base_url: base_url.trim_end_matches('/').to_string(),
        }
    }
}

impl Adapter for OpenAiAdapter {
    fn format(&self) -> Format {
        Format::OpenAiChat
    }

    fn url(&self, operation: Operation, _model: &str, _stream: bool) -> Option<String> {
        match operation {
            Operation::Chat => Some(format!("{}/chat/completions", self.base_url)),
            Operation::CountTokens => None,
            Operation::Embeddings => Some(format!("{}/embeddings", self.base_url)),
            Operation::Completions => Some(format!("{}/completions", self.base_url)),
        }
    }

    fn authorize(&self, key: &str, req: &mut Outgoing<'_>) -> Result<(), ApiError> {
        req.headers.extend(bearer(key));
        Ok(())
    }

    fn probe(&self, path: &str, key: &str) -> (String, Headers) {
        (format!("{}{path}", self.base_url), bearer(key).collect())
    }
}

/// `Authorization: Bearer <key>`, nothing for the keyless slot of a provider without keys.
fn bearer(key: &str) -> impl Iterator<Item = (std::borrow::Cow<'static, str>, String)> {
    (!key.is_empty())
        .then(|| ("authorization".into(), format!("Bearer {key}")))
        .into_iter()
}

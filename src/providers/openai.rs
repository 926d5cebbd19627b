//! The `openai` provider: OpenAI Chat Completions over HTTPS or HTTP, for OpenAI itself and every
//! compatible server (vLLM, Ollama, Groq, Together, ...; see `config::Preset`), and OpenAI's
//! Responses API for the clients that speak it (unless the provider's `responses = false`: a
//! compatible server without `/responses` gets those requests translated to Chat Completions).
//! `Authorization: Bearer <key>`, none for a provider without keys (a local server).

use super::adapter::{Adapter, Format, Headers, Operation, Outgoing};
use crate::error::ApiError;
use crate::job::ClientApi;

pub struct OpenAiAdapter {
    /// `base_url` without a trailing `/`, e.g. `https://api.openai.com/v1`.
    base_url: String,
    /// The upstream has the Responses API (`POST {base_url}/responses`).
    responses: bool,
}

impl OpenAiAdapter {
    pub fn new(base_url: &str, responses: bool) -> Self {
        OpenAiAdapter {
            base_url: base_url.trim_end_matches('/').to_string(),
            responses,
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

    fn native_endpoint(&self, api: ClientApi, _model: &str) -> Option<(Format, String)> {
        (self.responses && api == ClientApi::OpenAiResponses).then(|| {
            (
                Format::OpenAiResponses,
                format!("{}/responses", self.base_url),
            )
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_clients_get_the_responses_api_when_the_upstream_has_it() {
        let with = OpenAiAdapter::new("https://api.openai.com/v1/", true);
        assert_eq!(
            with.native_endpoint(ClientApi::OpenAiResponses, "m"),
            Some((
                Format::OpenAiResponses,
                "https://api.openai.com/v1/responses".to_string()
            ))
        );
        assert_eq!(with.native_endpoint(ClientApi::OpenAiChat, "m"), None);
        let without = OpenAiAdapter::new("http://vllm:8000/v1", false);
        assert_eq!(
            without.native_endpoint(ClientApi::OpenAiResponses, "m"),
            None
        );
    }
}

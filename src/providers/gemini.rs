//! The `gemini` provider: Google AI Studio's Gemini API (`POST {base_url}/models/{model}:
//! generateContent`, `:streamGenerateContent?alt=sse`, `:batchEmbedContents`), authenticated
//! with `x-goog-api-key`. Requests of every client API are translated (see `formats::gemini`).

use super::adapter::{Adapter, Format, Headers, Operation, Outgoing};
use crate::error::ApiError;

pub struct GeminiAdapter {
    /// `base_url` without a trailing `/`, e.g. `https://generativelanguage.googleapis.com/v1beta`.
    base_url: String,
}

impl GeminiAdapter {
    pub fn new(base_url: &str) -> Self {
        GeminiAdapter {
            base_url: base_url.trim_end_matches('/').to_string(),
        }
    }
}

/// The method suffix of `operation` on a Gemini model (`None`: no such endpoint; token counts
/// are then estimated by the gateway). Shared with Vertex AI, which differs only for embeddings.
pub(super) fn chat_method(stream: bool) -> &'static str {
    if stream {
        ":streamGenerateContent?alt=sse"
    } else {
        ":generateContent"
    }
}

/// A model name as one URL path segment: `models/` dropped, every byte but the unreserved ones
/// (`A-Z a-z 0-9 - . _ ~`) percent-encoded, so that a client's model name cannot reach another
/// path of the upstream.
pub(super) fn model_segment(model: &str) -> String {
    let model = model.strip_prefix("models/").unwrap_or(model);
    let mut out = String::with_capacity(model.len());
    for b in model.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Adapter for GeminiAdapter {
    fn format(&self) -> Format {
        Format::Gemini
    }

    fn url(&self, operation: Operation, model: &str, stream: bool) -> Option<String> {
        let method = match operation {
            Operation::Chat => chat_method(stream),
            Operation::Embeddings => ":batchEmbedContents",
            Operation::CountTokens | Operation::Completions => return None,
        };
        Some(format!(
            "{}/models/{}{method}",
            self.base_url,
            model_segment(model)
        ))
    }

    fn authorize(&self, key: &str, req: &mut Outgoing<'_>) -> Result<(), ApiError> {
        req.headers.push(("x-goog-api-key".into(), key.to_string()));
        Ok(())
    }

    fn probe(&self, path: &str, key: &str) -> (String, Headers) {
        (
            format!("{}{path}", self.base_url),
            vec![("x-goog-api-key".into(), key.to_string())],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_per_operation_and_safe_models() {
        let a = GeminiAdapter::new("https://g/v1beta/");
        assert_eq!(
            a.url(Operation::Chat, "gemini-2.5-flash", false).unwrap(),
            "https://g/v1beta/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(
            a.url(Operation::Chat, "models/gemini-2.5-flash", true)
                .unwrap(),
            "https://g/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            a.url(Operation::Embeddings, "text-embedding-004", false)
                .unwrap(),
            "https://g/v1beta/models/text-embedding-004:batchEmbedContents"
        );
        assert!(a.url(Operation::CountTokens, "m", false).is_none());
        assert_eq!(model_segment("../x?y:z#"), "..%2Fx%3Fy%3Az%23");
    }
}

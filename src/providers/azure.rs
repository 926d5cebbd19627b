//! The `azure` provider: Azure OpenAI, which speaks OpenAI's wire format at a resource's model
//! deployments. URLs in one of two shapes (`api_style`): `deployments`
//! (`{endpoint}/openai/deployments/{deployment}/{operation}?api-version={version}`, the
//! deployment chosen by the model's entry in `deployments`, else the model's own name) or `v1`
//! (`{endpoint}/openai/v1/{operation}`, the deployment named as the body's `model`). Responses
//! clients pass through to Azure's Responses API (unless the provider's `responses = false`):
//! `{endpoint}/openai/v1/responses`, or in the `deployments` style
//! `{endpoint}/openai/responses?api-version={responses_api_version}`, the deployment named as the
//! body's `model` in both. Authenticated with the `api-key` header from the key pool, or with an
//! Entra ID bearer token ([`super::entra`]).

use std::borrow::Cow;

use super::adapter::{Adapter, Format, Headers, Operation, Outgoing};
use super::entra::EntraTokens;
use crate::config::{AzureApiStyle, AzureAuth, AzureConfig};
use crate::error::ApiError;
use crate::job::ClientApi;

pub struct AzureAdapter {
    cfg: AzureConfig,
    /// Set for `auth = "entra"`.
    tokens: Option<EntraTokens>,
    /// Responses clients pass through to Azure's Responses API (the provider's `responses`).
    responses: bool,
}

impl AzureAdapter {
    pub fn new(provider: &str, cfg: &AzureConfig, responses: bool) -> Self {
        let tokens = match &cfg.auth {
            AzureAuth::ApiKey => None,
            AzureAuth::Entra(entra) => Some(EntraTokens::new(provider, entra)),
        };
        AzureAdapter {
            cfg: cfg.clone(),
            tokens,
            responses,
        }
    }

    /// Azure's Responses API: `{endpoint}/openai/v1/responses` (with `?api-version=` only when
    /// configured), or `{endpoint}/openai/responses?api-version={responses_api_version}`. Neither
    /// names the deployment: the body's `model` does ([`Adapter::body_model`]).
    fn responses_url(&self) -> String {
        match self.cfg.api_style {
            AzureApiStyle::V1 => self.url_of(None, "/responses"),
            AzureApiStyle::Deployments => format!(
                "{}/openai/responses?api-version={}",
                self.cfg.endpoint, self.cfg.responses_api_version
            ),
        }
    }

    /// `{endpoint}/openai/deployments/{deployment}{path}?api-version=...` or
    /// `{endpoint}/openai/v1{path}` (with `?api-version=` only when configured).
    fn url_of(&self, model: Option<&str>, path: &str) -> String {
        let mut url = String::with_capacity(self.cfg.endpoint.len() + path.len() + 96);
        url.push_str(&self.cfg.endpoint);
        match (self.cfg.api_style, model) {
            (AzureApiStyle::Deployments, Some(model)) => {
                url.push_str("/openai/deployments/");
                push_path_segment(&mut url, self.cfg.deployment(model));
            }
            (AzureApiStyle::Deployments, None) => url.push_str("/openai"),
            (AzureApiStyle::V1, _) => url.push_str("/openai/v1"),
        }
        url.push_str(path);
        if let Some(version) = &self.cfg.api_version {
            url.push(if path.contains('?') { '&' } else { '?' });
            url.push_str("api-version=");
            url.push_str(version);
        }
        url
    }

    /// The authentication header for `key` (the pool's key, empty with Entra ID).
    fn credential(&self, key: &str) -> Result<(Cow<'static, str>, String), ApiError> {
        match &self.tokens {
            None => Ok(("api-key".into(), key.to_string())),
            Some(tokens) => {
                let token = tokens.token()?;
                Ok(("authorization".into(), format!("Bearer {}", token.expose())))
            }
        }
    }
}

impl Adapter for AzureAdapter {
    fn format(&self) -> Format {
        Format::OpenAiChat
    }

    fn url(&self, operation: Operation, model: &str, _stream: bool) -> Option<String> {
        let path = match operation {
            Operation::Chat => "/chat/completions",
            Operation::Embeddings => "/embeddings",
            Operation::Completions => "/completions",
            Operation::CountTokens => return None,
        };
        Some(self.url_of(Some(model), path))
    }

    fn native_endpoint(&self, api: ClientApi, _model: &str) -> Option<(Format, String)> {
        (self.responses && api == ClientApi::OpenAiResponses)
            .then(|| (Format::OpenAiResponses, self.responses_url()))
    }

    fn authorize(&self, key: &str, req: &mut Outgoing<'_>) -> Result<(), ApiError> {
        req.headers.push(self.credential(key)?);
        Ok(())
    }

    /// `GET {endpoint}/openai{path}?api-version=` (e.g. `/models`), or under `/openai/v1`. With
    /// Entra ID a token is fetched for it; when none can be had, the probe goes without one.
    fn probe(&self, path: &str, key: &str) -> (String, Headers) {
        let url = self.url_of(None, path);
        (url, self.credential(key).into_iter().collect())
    }

    /// The `v1` style names the deployment in the body; the `deployments` style in the URL, but
    /// for the Responses API, whose URL names none.
    fn body_model<'a>(&self, model: &'a str, wire: Format) -> Cow<'a, str> {
        match (self.cfg.api_style, wire) {
            (AzureApiStyle::V1, _) | (_, Format::OpenAiResponses) => {
                Cow::Owned(self.cfg.deployment(model).to_string())
            }
            (AzureApiStyle::Deployments, _) => Cow::Borrowed(model),
        }
    }

    fn unauthorized(&self, _key: &str) {
        if let Some(tokens) = &self.tokens {
            tokens.invalidate();
        }
    }
}

/// `segment` percent-encoded as one URL path segment (a model without a deployment entry is sent
/// as its own name, whatever characters it holds).
fn push_path_segment(url: &mut String, segment: &str) {
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            url.push(char::from(b));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            url.push('%');
            url.push(char::from(HEX[usize::from(b >> 4)]));
            url.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn adapter(style: AzureApiStyle, version: Option<&str>) -> AzureAdapter {
        adapter_with(style, version, true)
    }

    fn adapter_with(style: AzureApiStyle, version: Option<&str>, responses: bool) -> AzureAdapter {
        let mut deployments = BTreeMap::new();
        deployments.insert("gpt-4o".to_string(), "prod-4o".to_string());
        AzureAdapter::new(
            "az",
            &AzureConfig {
                endpoint: "https://res.openai.azure.com".into(),
                api_style: style,
                api_version: version.map(str::to_string),
                responses_api_version: crate::config::AZURE_RESPONSES_API_VERSION_DEFAULT.into(),
                deployments,
                auth: AzureAuth::ApiKey,
            },
            responses,
        )
    }

    #[test]
    fn deployment_urls() {
        let a = adapter(AzureApiStyle::Deployments, Some("2024-10-21"));
        assert_eq!(
            a.url(Operation::Chat, "gpt-4o", false).unwrap(),
            "https://res.openai.azure.com/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            a.url(Operation::Embeddings, "text-embedding-3-small", false).unwrap(),
            "https://res.openai.azure.com/openai/deployments/text-embedding-3-small/embeddings?api-version=2024-10-21"
        );
        assert_eq!(
            a.url(Operation::Completions, "a b/c", false).unwrap(),
            "https://res.openai.azure.com/openai/deployments/a%20b%2Fc/completions?api-version=2024-10-21"
        );
        assert_eq!(a.url(Operation::CountTokens, "gpt-4o", false), None);
        assert_eq!(a.body_model("gpt-4o", Format::OpenAiChat), "gpt-4o");
        assert_eq!(
            a.probe("/models", "k").0,
            "https://res.openai.azure.com/openai/models?api-version=2024-10-21"
        );
    }

    #[test]
    fn v1_urls_name_the_deployment_in_the_body() {
        let a = adapter(AzureApiStyle::V1, None);
        assert_eq!(
            a.url(Operation::Chat, "gpt-4o", true).unwrap(),
            "https://res.openai.azure.com/openai/v1/chat/completions"
        );
        assert_eq!(a.body_model("gpt-4o", Format::OpenAiChat), "prod-4o");
        assert_eq!(a.body_model("other", Format::OpenAiChat), "other");
        let a = adapter(AzureApiStyle::V1, Some("preview"));
        assert_eq!(
            a.url(Operation::Embeddings, "x", false).unwrap(),
            "https://res.openai.azure.com/openai/v1/embeddings?api-version=preview"
        );
    }

    #[test]
    fn responses_urls_of_both_styles() {
        let native = |a: &AzureAdapter| a.native_endpoint(ClientApi::OpenAiResponses, "gpt-4o");
        let responses = |url: &str| Some((Format::OpenAiResponses, url.to_string()));
        // Deployments: Azure's Responses route names no deployment and takes its own preview
        // api-version; the body's model is the deployment.
        let a = adapter(AzureApiStyle::Deployments, Some("2024-10-21"));
        assert_eq!(
            native(&a),
            responses(
                "https://res.openai.azure.com/openai/responses?api-version=2025-04-01-preview"
            )
        );
        assert_eq!(a.body_model("gpt-4o", Format::OpenAiResponses), "prod-4o");
        assert_eq!(a.body_model("o3", Format::OpenAiResponses), "o3");
        // v1: under /openai/v1, api-version only when configured.
        let a = adapter(AzureApiStyle::V1, None);
        assert_eq!(
            native(&a),
            responses("https://res.openai.azure.com/openai/v1/responses")
        );
        assert_eq!(a.body_model("gpt-4o", Format::OpenAiResponses), "prod-4o");
        let a = adapter(AzureApiStyle::V1, Some("preview"));
        assert_eq!(
            native(&a),
            responses("https://res.openai.azure.com/openai/v1/responses?api-version=preview")
        );
        // Other client APIs, or `responses = false`: translated to chat completions.
        assert_eq!(a.native_endpoint(ClientApi::OpenAiChat, "gpt-4o"), None);
        for style in [AzureApiStyle::Deployments, AzureApiStyle::V1] {
            assert_eq!(native(&adapter_with(style, Some("x"), false)), None);
        }
    }

    #[test]
    fn api_key_header() {
        let a = adapter(AzureApiStyle::V1, None);
        let (url, headers) = a.probe("/models", "secret-key");
        assert_eq!(url, "https://res.openai.azure.com/openai/v1/models");
        assert_eq!(
            headers,
            vec![(Cow::Borrowed("api-key"), "secret-key".to_string())]
        );
    }

    #[test]
    fn azure_error_bodies_are_read() {
        let e = crate::formats::codec::decode_error(
            Format::OpenAiChat,
            429,
            br#"{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation have exceeded the rate limit. Please retry after 3 seconds."}}"#,
        );
        assert_eq!(e.code.as_deref(), Some("429"));
        assert!(e
            .message
            .starts_with("Requests to the ChatCompletions_Create"));
        let e = crate::formats::codec::decode_error(
            Format::OpenAiChat,
            400,
            br#"{"error":{"message":"filtered","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation"}}}"#,
        );
        assert_eq!(
            (e.code.as_deref(), e.message.as_str()),
            (Some("content_filter"), "filtered")
        );
    }
}

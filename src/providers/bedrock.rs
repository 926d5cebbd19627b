//! The `bedrock` provider: AWS Bedrock's runtime. Chat through Converse (`POST
//! {base_url}/model/{modelId}/converse`, and `/converse-stream`, answered as an AWS event
//! stream), embeddings through InvokeModel (`/model/{modelId}/invoke`). Model ids and
//! inference-profile ARNs travel as one URL-encoded path segment. Every request is signed with
//! SigV4 (service `bedrock`) over its final URL, `content-type` and body, with the credentials
//! resolved when the config was loaded; the key pool's one implicit key only carries the
//! per-model cool-downs.

use std::time::SystemTime;

use super::adapter::{Adapter, Format, Framing, Headers, Operation, Outgoing};
use super::eventstream;
use super::sigv4::{self, Payload, Request, Signer, SERVICE_BEDROCK};
use crate::config::BedrockConfig;
use crate::error::{ApiError, ErrorKind};
use crate::log;

pub struct BedrockAdapter {
    /// `base_url` without a trailing `/`, e.g. `https://bedrock-runtime.us-east-1.amazonaws.com`.
    base_url: String,
    signer: Signer,
    /// The provider's name, for log lines.
    name: String,
}

impl BedrockAdapter {
    /// Fails when the region cannot scope a signature (the config checks it first).
    pub fn new(name: &str, base_url: &str, cfg: &BedrockConfig) -> Result<Self, String> {
        let signer = Signer::new(cfg.credentials.clone(), &cfg.region, SERVICE_BEDROCK)
            .map_err(|e| format!("providers.{name}.bedrock: {e}"))?;
        Ok(BedrockAdapter {
            base_url: base_url.trim_end_matches('/').to_string(),
            signer,
            name: name.to_string(),
        })
    }

    /// The SigV4 headers of a request (`authorization`, `x-amz-date`, and
    /// `x-amz-security-token` with temporary credentials), signed now.
    fn sign(
        &self,
        method: &str,
        url: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Vec<(&'static str, String)>, sigv4::SigningError> {
        let content_type = content_type.map(|ct| ("content-type", ct));
        let headers: Vec<(&str, &str)> = content_type.into_iter().collect();
        let req = Request {
            method,
            url,
            headers: &headers,
            payload: Payload::Bytes(body),
        };
        self.signer
            .sign(&req, SystemTime::now())
            .map(|signed| signed.headers)
    }
}

impl Adapter for BedrockAdapter {
    fn format(&self) -> Format {
        Format::Bedrock
    }

    fn url(&self, operation: Operation, model: &str, stream: bool) -> Option<String> {
        let action = match (operation, stream) {
            (Operation::Chat, false) => "converse",
            (Operation::Chat, true) => "converse-stream",
            (Operation::Embeddings, _) => "invoke",
            (Operation::CountTokens | Operation::Completions, _) => return None,
        };
        Some(format!(
            "{}{}",
            self.base_url,
            sigv4::bedrock_model_path(model, action)
        ))
    }

    fn authorize(&self, _key: &str, req: &mut Outgoing<'_>) -> Result<(), ApiError> {
        let content_type = req
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.clone());
        let signed = self
            .sign(req.method, req.url, content_type.as_deref(), req.body)
            .map_err(|e| {
                log::error(
                    "cannot sign a request",
                    &[("provider", &self.name), ("error", &e.to_string())],
                );
                ApiError::new(
                    ErrorKind::Internal,
                    "request_signing_failed",
                    "the request could not be signed for the upstream",
                )
            })?;
        for (name, value) in signed {
            req.headers.push((name.into(), value));
        }
        Ok(())
    }

    fn framing(&self) -> (Framing, &'static str) {
        (Framing::EventStream, eventstream::MIME)
    }

    /// A signed `GET <base_url><path>`; unsigned when it cannot be signed (any answer still shows
    /// whether the endpoint is up).
    fn probe(&self, path: &str, _key: &str) -> (String, Headers) {
        let url = format!("{}{path}", self.base_url);
        let headers = self
            .sign("GET", &url, None, b"")
            .map(|signed| signed.into_iter().map(|(n, v)| (n.into(), v)).collect())
            .unwrap_or_default();
        (url, headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::aws_credentials::{Credentials, Source};
    use crate::job::{ClientApi, ClientRequest};
    use sigv4::{Expected, Incoming, Settings};

    fn adapter(token: Option<&str>) -> BedrockAdapter {
        let cfg = BedrockConfig {
            region: "eu-west-3".into(),
            credentials: Credentials::new(
                "AKIDEXAMPLE",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                token,
            )
            .unwrap(),
            source: Source::Config,
        };
        BedrockAdapter::new("aws", "http://127.0.0.1:9/", &cfg).unwrap()
    }

    #[test]
    fn urls_for_models_and_arns() {
        let a = adapter(None);
        assert_eq!(
            a.url(
                Operation::Chat,
                "anthropic.claude-3-haiku-20240307-v1:0",
                false
            )
            .unwrap(),
            "http://127.0.0.1:9/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
        );
        let arn = "arn:aws:bedrock:eu-west-3:123456789012:inference-profile/eu.anthropic.claude-3-haiku-20240307-v1:0";
        assert_eq!(
            a.url(Operation::Chat, arn, true).unwrap(),
            "http://127.0.0.1:9/model/arn%3Aaws%3Abedrock%3Aeu-west-3%3A123456789012%3Ainference-profile%2Feu.anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream"
        );
        assert!(a
            .url(Operation::Embeddings, "amazon.titan-embed-text-v2:0", false)
            .unwrap()
            .ends_with("/model/amazon.titan-embed-text-v2%3A0/invoke"));
        assert_eq!(a.url(Operation::CountTokens, "m", false), None);
        assert_eq!(a.url(Operation::Completions, "m", false), None);
        assert_eq!(a.framing(), (Framing::EventStream, eventstream::MIME));
    }

    /// What `authorize` adds verifies as AWS would check it, session token included.
    #[test]
    fn authorized_requests_verify() {
        let token = "FwoGZXIvYXdzEXAMPLE//token==";
        let a = adapter(Some(token));
        let url = a
            .url(
                Operation::Chat,
                "arn:aws:bedrock:eu-west-3:1:application-inference-profile/x",
                false,
            )
            .unwrap();
        let body = br#"{"messages":[]}"#;
        let client = ClientRequest {
            api: ClientApi::OpenAiChat,
            body: Vec::new(),
            stream: false,
            wants_usage: false,
            forward_headers: Vec::new(),
        };
        let mut headers: Headers = vec![
            ("content-type".into(), "application/json".into()),
            ("accept".into(), "application/json".into()),
        ];
        a.authorize(
            "ignored",
            &mut Outgoing {
                method: "POST",
                url: &url,
                headers: &mut headers,
                body,
                client: &client,
            },
        )
        .unwrap();
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_ref()).collect();
        assert!(names.contains(&"authorization") && names.contains(&"x-amz-date"));
        assert!(headers
            .iter()
            .any(|(n, v)| n == "x-amz-security-token" && v == token));
        let path = url.strip_prefix("http://127.0.0.1:9").unwrap();
        let mut received: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(n, v)| (n.as_ref(), v.as_bytes()))
            .collect();
        received.push(("host", b"127.0.0.1:9"));
        let credentials = a.signer.credentials().clone();
        let incoming = Incoming {
            method: "POST",
            path,
            query: "",
            headers: &received,
            body,
        };
        let expected = Expected {
            credentials: &credentials,
            region: "eu-west-3",
            service: SERVICE_BEDROCK,
            settings: Settings::default(),
        };
        sigv4::verify(&incoming, &expected, SystemTime::now()).unwrap();
        // A changed body does not verify.
        let tampered = Incoming {
            body: b"{}",
            ..incoming
        };
        assert!(sigv4::verify(&tampered, &expected, SystemTime::now()).is_err());
    }

    #[test]
    fn probes_are_signed_gets() {
        let (url, headers) = adapter(None).probe("/models", "");
        assert_eq!(url, "http://127.0.0.1:9/models");
        assert!(headers.iter().any(|(n, v)| n == "authorization"
            && v.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
            && v.contains("/eu-west-3/bedrock/aws4_request")));
    }
}

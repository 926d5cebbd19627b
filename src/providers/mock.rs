//! The built-in `mock` provider: answers like an LLM (echo-style content, realistic `usage`) after
//! a configured latency, without any network. It runs through the same pools as real providers,
//! so it measures the gateway's own overhead.

use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Call, UpstreamReply};
use crate::api::openai::{estimate_tokens, ChatCompletion, Choice, InMessage, OutMessage, Usage};
use crate::config::ProviderConfig;
use crate::error::{ApiError, ErrorKind};

/// Tokens added per message for role and framing, as OpenAI counts them.
const TOKENS_PER_MESSAGE: u64 = 3;

pub struct MockProvider {
    latency: Duration,
    next_id: AtomicU64,
}

#[derive(Deserialize)]
struct MockRequest {
    messages: Vec<InMessage>,
}

impl MockProvider {
    pub fn new(cfg: &ProviderConfig) -> Self {
        MockProvider {
            latency: cfg.mock.latency,
            next_id: AtomicU64::new(1),
        }
    }

    pub fn call(&self, call: &Call<'_>) -> Result<UpstreamReply, ApiError> {
        #[cfg(debug_assertions)]
        if call.upstream_model == "__panic__" {
            // Test-only trigger (compiled out of release builds): proves a panicking job is
            // answered 500 and the worker lives on.
            panic!("mock provider asked to panic");
        }
        let req: MockRequest = serde_json::from_slice(call.body).map_err(|e| {
            ApiError::bad_request("invalid_messages", format!("invalid messages: {e}"))
        })?;
        let last_user = req
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(InMessage::text)
            .unwrap_or_default();
        let content = format!("mock: {last_user}");
        let prompt_tokens: u64 = req
            .messages
            .iter()
            .map(|m| TOKENS_PER_MESSAGE + estimate_tokens(&m.text()))
            .sum::<u64>()
            + TOKENS_PER_MESSAGE;
        let completion_tokens = estimate_tokens(&content).max(1);
        self.wait(call.deadline)?;
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let completion = ChatCompletion {
            id: format!("chatcmpl-mock{id:012x}"),
            object: "chat.completion",
            created,
            model: call.upstream_model,
            choices: vec![Choice {
                index: 0,
                message: OutMessage {
                    role: "assistant",
                    content: &content,
                    refusal: None,
                },
                logprobs: None,
                finish_reason: "stop",
            }],
            usage: Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
            },
            system_fingerprint: None,
        };
        let body = serde_json::to_vec(&completion).map_err(|_| ApiError::internal())?;
        Ok(UpstreamReply {
            status: 200,
            content_type: "application/json",
            body,
            retry_after: None,
            prompt_tokens,
            completion_tokens,
        })
    }

    /// Sleep the configured latency (this is a worker OS thread), but never past the deadline.
    fn wait(&self, deadline: Instant) -> Result<(), ApiError> {
        if self.latency.is_zero() {
            return Ok(());
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if self.latency > remaining {
            std::thread::sleep(remaining);
            return Err(ApiError::new(
                ErrorKind::RequestTimeout,
                "request_timeout",
                "the provider did not answer within the request timeout",
            ));
        }
        std::thread::sleep(self.latency);
        Ok(())
    }
}

//! The built-in `mock` provider: answers like an LLM (echo-style content, realistic `usage`) after
//! a configured latency, without any network. It runs through the same pools as real providers,
//! so it measures the gateway's own overhead.

use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::sse::{push_event, stream_duration_error, stream_idle_error};
use super::{Call, StreamResult, StreamSink};
use crate::api::openai::{
    estimate_tokens, ChatCompletion, Choice, InMessage, OutMessage, Usage as OpenAiUsage,
};
use crate::config::ProviderConfig;
use crate::error::ApiError;
use crate::job::{Answer, JobCtl, Usage};

/// Tokens added per message for role and framing, as OpenAI counts them.
const TOKENS_PER_MESSAGE: u64 = 3;

/// Longest single sleep while waiting, so a cancelled stream stops promptly.
const SLEEP_SLICE: Duration = Duration::from_millis(20);

pub struct MockProvider {
    latency: Duration,
    stream_chunks: usize,
    chunk_delay: Duration,
    next_id: AtomicU64,
}

/// What the mock answers to a request: the content and its token counts.
struct MockAnswer {
    content: String,
    prompt_tokens: u64,
    completion_tokens: u64,
}

#[derive(Deserialize)]
struct MockRequest {
    messages: Vec<InMessage>,
}

impl MockProvider {
    pub fn new(cfg: &ProviderConfig) -> Self {
        MockProvider {
            latency: cfg.mock.latency,
            stream_chunks: cfg.mock.stream_chunks.max(1),
            chunk_delay: cfg.mock.chunk_delay,
            next_id: AtomicU64::new(1),
        }
    }

    /// Read the request, compute the answer, then wait the configured latency (time to the first
    /// token of a stream).
    fn answer(&self, call: &Call<'_>) -> Result<MockAnswer, ApiError> {
        #[cfg(debug_assertions)]
        if call.job.upstream_model == "__panic__" {
            // Test-only trigger (compiled out of release builds): proves a panicking job is
            // answered 500 and the worker lives on.
            panic!("mock provider asked to panic");
        }
        #[cfg(debug_assertions)]
        if call.job.upstream_model == "__stall__" {
            // Test-only trigger: a call that ignores its deadline and cancellation, as a worker
            // stuck in a library call would; the supervisor must replace this worker.
            std::thread::sleep(Duration::from_secs(10));
        }
        let req: MockRequest = serde_json::from_slice(&call.job.request.body).map_err(|e| {
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
        self.wait(call.job.deadline, &call.job.ctl)?;
        Ok(MockAnswer {
            content,
            prompt_tokens,
            completion_tokens,
        })
    }

    fn created_s() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// Stream the answer as OpenAI `chat.completion.chunk` events: a role chunk, `stream_chunks`
    /// content chunks `chunk_delay` apart, a finish chunk, the usage chunk when asked, `[DONE]`.
    /// The stream keeps the bounds a real upstream's is held to (see [`MockProvider::pace`]).
    pub fn call_stream(
        &self,
        call: &Call<'_>,
        sink: &mut dyn StreamSink,
    ) -> Result<StreamResult, ApiError> {
        let MockAnswer {
            content,
            prompt_tokens,
            completion_tokens,
        } = self.answer(call)?;
        let usage = Usage {
            input_tokens: prompt_tokens,
            output_tokens: completion_tokens,
            ..Usage::default()
        };
        let done = |error| StreamResult::Streamed { error, usage };
        if !sink.start() {
            return Ok(done(None));
        }
        let until = Instant::now() + call.stream_duration_max;
        let id = format!(
            "chatcmpl-mock{:012x}",
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let model = serde_json::to_string(&call.job.upstream_model).unwrap_or_default();
        let head = format!(
            r#"{{"id":"{id}","object":"chat.completion.chunk","created":{},"model":{model},"system_fingerprint":null,"choices":"#,
            Self::created_s()
        );
        let chunk = |choices: &str, usage: &str| {
            let mut out = Vec::new();
            push_event(
                &mut out,
                b"",
                format!(r#"{head}{choices},"usage":{usage}}}"#).as_bytes(),
            );
            out
        };
        let first = r#"[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]"#;
        if !sink.event(chunk(first, "null")) {
            return Ok(done(None));
        }
        for piece in split_even(&content, self.stream_chunks) {
            match self.pace(call, until) {
                Ok(true) => {}
                Ok(false) => return Ok(done(None)),
                Err(cut) => return Ok(done(Some(cut))),
            }
            let text = serde_json::to_string(piece).unwrap_or_default();
            let choices = format!(
                r#"[{{"index":0,"delta":{{"content":{text}}},"logprobs":null,"finish_reason":null}}]"#
            );
            if !sink.event(chunk(&choices, "null")) {
                return Ok(done(None));
            }
        }
        let last = r#"[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]"#;
        if !sink.event(chunk(last, "null")) {
            return Ok(done(None));
        }
        if call.job.request.wants_usage {
            let usage = format!(
                r#"{{"prompt_tokens":{prompt_tokens},"completion_tokens":{completion_tokens},"total_tokens":{}}}"#,
                prompt_tokens + completion_tokens
            );
            if !sink.event(chunk("[]", &usage)) {
                return Ok(done(None));
            }
        }
        if sink.event(b"data: [DONE]\n\n".to_vec()) {
            sink.complete();
        }
        Ok(done(None))
    }

    pub fn call(&self, call: &Call<'_>) -> Result<Answer, ApiError> {
        let MockAnswer {
            content,
            prompt_tokens,
            completion_tokens,
        } = self.answer(call)?;
        let created = Self::created_s();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let completion = ChatCompletion {
            id: format!("chatcmpl-mock{id:012x}"),
            object: "chat.completion",
            created,
            model: &call.job.upstream_model,
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
            usage: OpenAiUsage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
            },
            system_fingerprint: None,
        };
        let body = serde_json::to_vec(&completion).map_err(|_| ApiError::internal())?;
        Ok(Answer {
            status: 200,
            content_type: "application/json",
            body,
            headers: Vec::new(),
            usage: Usage {
                input_tokens: prompt_tokens,
                output_tokens: completion_tokens,
                ..Usage::default()
            },
        })
    }

    /// Sleep the configured latency (this is a worker OS thread), but never past the deadline.
    fn wait(&self, deadline: Instant, ctl: &JobCtl) -> Result<(), ApiError> {
        if self.latency.is_zero() {
            return Ok(());
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if self.latency > remaining {
            self.pause(remaining, ctl);
            return Err(ApiError::request_timeout());
        }
        if !self.pause(self.latency, ctl) {
            return Err(ApiError::client_cancelled());
        }
        Ok(())
    }

    /// Wait `chunk_delay` before the next chunk, as an upstream read would: a pause longer than
    /// `stream_idle_timeout` ends the stream as idle after that timeout, one past the stream's
    /// `until` ends it as too long at `until`. Ok(false) when the job was stopped meanwhile.
    fn pace(&self, call: &Call<'_>, until: Instant) -> Result<bool, ApiError> {
        let left = until.saturating_duration_since(Instant::now());
        let idle = call.stream_idle_timeout;
        if self.chunk_delay <= idle && self.chunk_delay <= left {
            return Ok(self.pause(self.chunk_delay, &call.job.ctl));
        }
        let (wait, cut) = if left <= idle {
            let cut = stream_duration_error("provider mock: the stream ran longer than allowed");
            (left, cut)
        } else {
            (idle, stream_idle_error("provider mock: the stream stalled"))
        };
        if !self.pause(wait, &call.job.ctl) {
            return Ok(false);
        }
        Err(cut)
    }

    /// Sleep `d` in slices, stopping early when the job is cancelled; false when cancelled.
    fn pause(&self, d: Duration, ctl: &JobCtl) -> bool {
        let until = Instant::now() + d;
        loop {
            if ctl.is_cancelled() {
                return false;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(SLEEP_SLICE));
        }
    }
}

/// `text` cut into `n` pieces of about equal character counts (some empty when `text` is short).
fn split_even(text: &str, n: usize) -> Vec<&str> {
    let n = n.max(1);
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    let chars = bounds.len() - 1;
    (0..n)
        .map(|k| &text[bounds[k * chars / n]..bounds[(k + 1) * chars / n]])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::split_even;

    #[test]
    fn split_even_keeps_all_text() {
        for (text, n) in [
            ("mock: hello world", 4),
            ("ab", 5),
            ("héllo wörld", 3),
            ("", 2),
        ] {
            let parts = split_even(text, n);
            assert_eq!(parts.len(), n);
            assert_eq!(parts.concat(), text);
        }
    }
}

//! What the mock upstream answers: the model-name directives that drive fault injection, the
//! text of a chat completion, and its OpenAI stream as `chat.completion.chunk` SSE events.

use serde_json::{json, Value};

/// The number right after `prefix` in a model name, e.g. `delay-250` in `gpt-delay-250`.
pub fn directive_number(model: &str, prefix: &str) -> Option<u64> {
    let mut from = 0;
    while let Some(found) = model[from..].find(prefix) {
        let at = from + found;
        // `chunkdelay-` must not be read as `delay-`: a directive starts the name or follows `-`.
        let starts_word =
            at == 0 || model.as_bytes()[at - 1] == b'-' || model.as_bytes()[at - 1] == b'/';
        let digits = &model[at + prefix.len()..];
        let end = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        if starts_word {
            if let Ok(n) = digits[..end].parse() {
                return Some(n);
            }
        }
        from = at + prefix.len();
    }
    None
}

/// A message's text: a string `content`, or the `text` parts of an array `content`.
pub fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// `text` cut into `n` consecutive pieces of nearly equal length in characters (some empty when
/// the text is shorter than `n`); together they are exactly `text`.
pub fn split_even(text: &str, n: usize) -> Vec<&str> {
    let n = n.max(1);
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(text.len()))
        .collect();
    let chars = bounds.len() - 1;
    (0..n)
        .map(|k| &text[bounds[k * chars / n]..bounds[(k + 1) * chars / n]])
        .collect()
}

/// The fixed fields of every chunk of one stream.
pub struct ChunkMeta<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
}

impl ChunkMeta<'_> {
    fn event(&self, choices: Value, usage: Option<&Value>) -> Vec<u8> {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(u) = usage {
            c["usage"] = u.clone();
        }
        format!("data: {c}\n\n").into_bytes()
    }

    fn choice(delta: Value, finish: Value) -> Value {
        json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}])
    }

    /// The first event: the assistant role with empty content.
    pub fn role(&self) -> Vec<u8> {
        self.event(
            Self::choice(json!({"role": "assistant", "content": ""}), Value::Null),
            None,
        )
    }

    pub fn content(&self, piece: &str) -> Vec<u8> {
        self.event(Self::choice(json!({"content": piece}), Value::Null), None)
    }

    /// The last choice event: an empty delta with `finish_reason: "stop"`.
    pub fn finish(&self) -> Vec<u8> {
        self.event(Self::choice(json!({}), json!("stop")), None)
    }

    /// The usage event sent when the request had `stream_options.include_usage`.
    pub fn usage(&self, usage: &Value) -> Vec<u8> {
        self.event(json!([]), Some(usage))
    }
}

/// The end-of-stream event.
pub const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

/// A mid-stream failure as an SSE event with an OpenAI-style error object.
pub fn error_event(message: &str) -> Vec<u8> {
    let e = json!({"error": {
        "message": message, "type": "server_error", "param": null, "code": "mock_stream_failure",
    }});
    format!("data: {e}\n\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives() {
        assert_eq!(directive_number("gpt-delay-250", "delay-"), Some(250));
        assert_eq!(directive_number("x-status-503-y", "status-"), Some(503));
        assert_eq!(directive_number("gpt-4o", "delay-"), None);
        assert_eq!(directive_number("delay-", "delay-"), None);
        assert_eq!(directive_number("chunks-4-chunkdelay-100", "delay-"), None);
        assert_eq!(
            directive_number("chunks-4-chunkdelay-100", "chunkdelay-"),
            Some(100)
        );
        assert_eq!(
            directive_number("chunks-4-chunkdelay-100-delay-7", "delay-"),
            Some(7)
        );
        assert_eq!(
            directive_number("up/chunks-8-failafter-3", "chunks-"),
            Some(8)
        );
        assert_eq!(directive_number("delay-5", "delay-"), Some(5));
    }

    #[test]
    fn text_of_messages() {
        let m = json!({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]});
        assert_eq!(message_text(&m), "ab");
        assert_eq!(message_text(&json!({"content": "hi"})), "hi");
        assert_eq!(message_text(&json!({"content": null})), "");
    }

    #[test]
    fn split_covers_the_text_in_n_pieces() {
        for (text, n) in [
            ("mock: relay me", 4),
            ("héllo wörld", 3),
            ("ab", 5),
            ("", 2),
            ("x", 1),
        ] {
            let parts = split_even(text, n);
            assert_eq!(parts.len(), n);
            assert_eq!(parts.concat(), text);
            let lens: Vec<usize> = parts.iter().map(|p| p.chars().count()).collect();
            let (lo, hi) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
            assert!(hi - lo <= 1, "{lens:?}");
        }
        assert_eq!(split_even("abcdef", 0), vec!["abcdef"]);
    }

    #[test]
    fn chunk_events_are_openai_shaped() {
        let m = ChunkMeta {
            id: "chatcmpl-1",
            created: 7,
            model: "m",
        };
        let parse = |e: Vec<u8>| -> Value {
            let s = String::from_utf8(e).unwrap();
            let body = s
                .strip_prefix("data: ")
                .unwrap()
                .strip_suffix("\n\n")
                .unwrap();
            serde_json::from_str(body).unwrap()
        };
        let role = parse(m.role());
        assert_eq!(role["object"], "chat.completion.chunk");
        assert_eq!(role["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(
            parse(m.content("hi"))["choices"][0]["delta"]["content"],
            "hi"
        );
        let fin = parse(m.finish());
        assert_eq!(fin["choices"][0]["finish_reason"], "stop");
        let usage = parse(m.usage(&json!({"total_tokens": 3})));
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 3);
        let err = String::from_utf8(error_event("boom")).unwrap();
        assert!(err.starts_with("data: {\"error\":{"));
    }
}

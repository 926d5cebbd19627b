//! What the mock upstream answers on OpenAI's endpoints beside chat: legacy completions
//! (`POST /v1/completions`, a `text_completion` and its stream) and embeddings
//! (`POST /v1/embeddings`, deterministic unit vectors drawn from a hash of each input).

use serde_json::{json, Value};

/// Length of an embedding vector when the request names no `dimensions`.
pub const EMBEDDING_DIMENSIONS_DEFAULT: usize = 8;
/// Longest embedding vector the mock makes.
pub const EMBEDDING_DIMENSIONS_MAX: usize = 4096;

/// The prompt of a legacy completion request: a string, or the first string of an array.
pub fn prompt_text(body: &Value) -> Option<String> {
    match body.get("prompt")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => items.first().and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// The fixed fields of every chunk of one legacy completion stream.
pub struct TextChunkMeta<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
}

impl TextChunkMeta<'_> {
    fn event(&self, choices: Value, usage: Option<&Value>) -> Vec<u8> {
        let mut c = json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(u) = usage {
            c["usage"] = u.clone();
        }
        format!("data: {c}\n\n").into_bytes()
    }

    /// A piece of the text.
    pub fn text(&self, piece: &str) -> Vec<u8> {
        let choice = json!([{"text": piece, "index": 0, "logprobs": null, "finish_reason": null}]);
        self.event(choice, None)
    }

    /// The last choice event: empty text, `finish_reason: "stop"`.
    pub fn finish(&self) -> Vec<u8> {
        let choice = json!([{"text": "", "index": 0, "logprobs": null, "finish_reason": "stop"}]);
        self.event(choice, None)
    }

    /// The usage event sent when the request had `stream_options.include_usage`.
    pub fn usage(&self, usage: &Value) -> Vec<u8> {
        self.event(json!([]), Some(usage))
    }

    /// The whole (non-streamed) answer.
    pub fn whole(&self, text: &str, usage: &Value) -> Value {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage,
        })
    }
}

/// A unit vector of `dimensions` floats drawn from a hash of `input`: equal inputs get equal
/// vectors, in every run.
pub fn embedding(input: &[u8], dimensions: usize) -> Vec<f32> {
    let dimensions = dimensions.clamp(1, EMBEDDING_DIMENSIONS_MAX);
    let mut state = input.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut v: Vec<f32> = (0..dimensions)
        .map(|_| {
            // SplitMix64 steps from the input's hash.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 11) as f32 / (1u64 << 53) as f32 - 0.5
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts() {
        assert_eq!(prompt_text(&json!({"prompt": "hi"})).as_deref(), Some("hi"));
        assert_eq!(
            prompt_text(&json!({"prompt": ["a", "b"]})).as_deref(),
            Some("a")
        );
        assert_eq!(prompt_text(&json!({"prompt": 3})), None);
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding(b"hello", 16);
        assert_eq!(a, embedding(b"hello", 16));
        assert_ne!(a, embedding(b"hellp", 16));
        assert_eq!(a.len(), 16);
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }

    #[test]
    fn stream_chunks() {
        let m = TextChunkMeta {
            id: "cmpl-1",
            created: 1,
            model: "m",
        };
        let t = String::from_utf8(m.text("ab")).unwrap();
        assert!(
            t.starts_with("data: {") && t.contains("\"text\":\"ab\""),
            "{t}"
        );
        let u = String::from_utf8(m.usage(&json!({"prompt_tokens": 1}))).unwrap();
        assert!(
            u.contains("\"choices\":[]") && u.contains("\"usage\""),
            "{u}"
        );
    }
}

//! Embeddings, format-neutral, and OpenAI's embeddings API (`POST /v1/embeddings`): what a client
//! asks (texts or token arrays, `dimensions`, `encoding_format`) and the vectors answered, in
//! OpenAI's list shape with each vector as JSON floats or as base64 of little-endian `f32`s.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::FormatError;

/// Most inputs of one embeddings request (OpenAI's own limit).
pub const EMBEDDING_INPUTS_MAX: usize = 2048;

/// What is to be embedded.
#[derive(Clone, Debug, PartialEq)]
pub enum EmbeddingInput {
    Texts(Vec<String>),
    /// Token ids (OpenAI accepts pre-tokenized input); only providers that take them can serve it.
    Tokens(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    pub fn len(&self) -> usize {
        match self {
            EmbeddingInput::Texts(t) => t.len(),
            EmbeddingInput::Tokens(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How vectors are written to the client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EncodingFormat {
    #[default]
    Float,
    /// Base64 of the little-endian `f32` bytes (what the openai SDK asks for by default).
    Base64,
}

/// One embeddings request.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: EmbeddingInput,
    /// Length of each vector, for models that can shorten them.
    pub dimensions: Option<u32>,
    pub encoding: EncodingFormat,
    pub user: Option<String>,
}

/// The vectors of an embeddings answer, in input order, and the tokens the inputs took.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EmbeddingsResponse {
    pub model: String,
    pub vectors: Vec<Vec<f32>>,
    pub input_tokens: u64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireInput {
    One(String),
    Many(Vec<String>),
    TokenList(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Deserialize)]
struct WireRequest {
    model: String,
    input: WireInput,
    #[serde(default)]
    dimensions: Option<u32>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

/// An OpenAI embeddings request, decoded.
pub fn decode_openai_request(body: &[u8]) -> Result<EmbeddingsRequest, FormatError> {
    let w: WireRequest = serde_json::from_slice(body).map_err(|e| {
        FormatError::bad_request(
            "invalid_request_body",
            format!("invalid embeddings request: {e}"),
        )
    })?;
    let input = match w.input {
        WireInput::One(s) => EmbeddingInput::Texts(vec![s]),
        WireInput::Many(v) => EmbeddingInput::Texts(v),
        WireInput::TokenList(t) => EmbeddingInput::Tokens(vec![t]),
        WireInput::TokenLists(t) => EmbeddingInput::Tokens(t),
    };
    if input.is_empty() || input.len() > EMBEDDING_INPUTS_MAX {
        return Err(FormatError::bad_request(
            "invalid_input",
            format!("`input` must hold 1..={EMBEDDING_INPUTS_MAX} items"),
        ));
    }
    let encoding = match w.encoding_format.as_deref() {
        None | Some("float") => EncodingFormat::Float,
        Some("base64") => EncodingFormat::Base64,
        Some(other) => {
            return Err(FormatError::bad_request(
                "invalid_encoding_format",
                format!("`encoding_format` must be \"float\" or \"base64\", not {other:?}"),
            ))
        }
    };
    Ok(EmbeddingsRequest {
        model: w.model,
        input,
        dimensions: w.dimensions,
        encoding,
        user: w.user,
    })
}

#[derive(Serialize)]
struct OutItem<'a> {
    object: &'static str,
    index: usize,
    embedding: OutVector<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutVector<'a> {
    Floats(&'a [f32]),
    Base64(String),
}

#[derive(Serialize)]
struct OutUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

#[derive(Serialize)]
struct OutList<'a> {
    object: &'static str,
    data: Vec<OutItem<'a>>,
    model: &'a str,
    usage: OutUsage,
}

/// An OpenAI embeddings answer (`{"object":"list","data":[...],"model","usage"}`), appended to
/// `out`.
pub fn encode_openai_response(
    resp: &EmbeddingsResponse,
    encoding: EncodingFormat,
    out: &mut Vec<u8>,
) {
    let data = resp
        .vectors
        .iter()
        .enumerate()
        .map(|(index, v)| OutItem {
            object: "embedding",
            index,
            embedding: match encoding {
                EncodingFormat::Float => OutVector::Floats(v),
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                    OutVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            },
        })
        .collect();
    let list = OutList {
        object: "list",
        data,
        model: &resp.model,
        usage: OutUsage {
            prompt_tokens: resp.input_tokens,
            total_tokens: resp.input_tokens,
        },
    };
    // Serializing numbers and strings into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &list);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_shape_decodes() {
        for (body, n) in [
            (r#"{"model":"m","input":"a"}"#, 1),
            (r#"{"model":"m","input":["a","b"]}"#, 2),
            (r#"{"model":"m","input":[1,2,3]}"#, 1),
            (r#"{"model":"m","input":[[1],[2]]}"#, 2),
        ] {
            let r = decode_openai_request(body.as_bytes()).unwrap();
            assert_eq!(r.input.len(), n, "{body}");
        }
        let r = decode_openai_request(
            br#"{"model":"m","input":"a","dimensions":8,"encoding_format":"base64","user":"u"}"#,
        )
        .unwrap();
        assert_eq!(
            (r.dimensions, r.encoding, r.user.as_deref()),
            (Some(8), EncodingFormat::Base64, Some("u"))
        );
        for bad in [
            r#"{"model":"m","input":[]}"#,
            r#"{"model":"m","input":"a","encoding_format":"hex"}"#,
            r#"{"model":"m","input":{}}"#,
        ] {
            assert_eq!(
                decode_openai_request(bad.as_bytes()).unwrap_err().status,
                400
            );
        }
    }

    #[test]
    fn answers_in_floats_and_base64() {
        let resp = EmbeddingsResponse {
            model: "m".into(),
            vectors: vec![vec![1.0, -0.5]],
            input_tokens: 3,
        };
        let mut out = Vec::new();
        encode_openai_response(&resp, EncodingFormat::Float, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"][0]["embedding"], serde_json::json!([1.0, -0.5]));
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        let mut out = Vec::new();
        encode_openai_response(&resp, EncodingFormat::Base64, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let b64 = v["data"][0]["embedding"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(
            bytes,
            [1.0f32.to_le_bytes(), (-0.5f32).to_le_bytes()].concat()
        );
    }
}

//! Embeddings on Google's services, from the neutral embeddings request: Google AI Studio's
//! `models/{model}:batchEmbedContents` (one `EmbedContentRequest` per input; the answer carries no
//! token count, so the gateway estimates it) and Vertex AI's `models/{model}:predict` (one
//! instance per input; each prediction counts its tokens). `dimensions` becomes
//! `outputDimensionality` on both.

use serde::{Deserialize, Serialize};

use crate::formats::embeddings::{
    EmbeddingInput, EmbeddingsRequest, EmbeddingsResponse, EncodingFormat,
};
use crate::formats::json::write_value;
use crate::formats::{estimate_tokens, FormatError};

/// Which of Google's embeddings APIs a provider speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EmbeddingsDialect {
    /// Google AI Studio: `:batchEmbedContents`.
    #[default]
    BatchEmbedContents,
    /// Vertex AI: `:predict`.
    VertexPredict,
}

/// What the embeddings request encoder did that the answer needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddingsInfo {
    pub dialect: EmbeddingsDialect,
    /// How the client wants its vectors written.
    pub encoding: EncodingFormat,
    /// The model named in the answer.
    pub model: String,
    /// How many vectors must come back.
    pub inputs: usize,
    /// The gateway's estimate of the input tokens (a quarter of the characters), used when the
    /// answer gives no count.
    pub estimated_tokens: u64,
}

#[derive(Serialize)]
struct OutBatch<'a> {
    requests: Vec<OutEmbed<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutEmbed<'a> {
    model: &'a str,
    content: OutContent<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimensionality: Option<u32>,
}

#[derive(Serialize)]
struct OutContent<'a> {
    parts: [OutText<'a>; 1],
}

#[derive(Serialize)]
struct OutText<'a> {
    text: &'a str,
}

#[derive(Serialize)]
struct OutPredict<'a> {
    instances: Vec<OutInstance<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<OutParameters>,
}

#[derive(Serialize)]
struct OutInstance<'a> {
    content: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutParameters {
    output_dimensionality: u32,
}

/// Encode an embeddings request for `dialect` with model `upstream_model`. Token arrays (OpenAI's
/// pre-tokenized input) are refused: Google's APIs embed text only.
pub fn encode_embeddings_request(
    req: &EmbeddingsRequest,
    upstream_model: &str,
    dialect: EmbeddingsDialect,
    out: &mut Vec<u8>,
) -> Result<EmbeddingsInfo, FormatError> {
    let EmbeddingInput::Texts(texts) = &req.input else {
        return Err(FormatError::bad_request(
            "unsupported_parameter",
            "token arrays cannot be embedded by a Gemini or Vertex provider; send text",
        ));
    };
    match dialect {
        EmbeddingsDialect::BatchEmbedContents => {
            let model = format!("models/{}", upstream_model.trim_start_matches("models/"));
            let requests = texts
                .iter()
                .map(|text| OutEmbed {
                    model: &model,
                    content: OutContent {
                        parts: [OutText { text }],
                    },
                    output_dimensionality: req.dimensions,
                })
                .collect();
            write_value(out, &OutBatch { requests });
        }
        EmbeddingsDialect::VertexPredict => {
            let wire = OutPredict {
                instances: texts.iter().map(|t| OutInstance { content: t }).collect(),
                parameters: req.dimensions.map(|d| OutParameters {
                    output_dimensionality: d,
                }),
            };
            write_value(out, &wire);
        }
    }
    Ok(EmbeddingsInfo {
        dialect,
        encoding: req.encoding,
        model: upstream_model.to_owned(),
        inputs: texts.len(),
        estimated_tokens: texts.iter().map(|t| estimate_tokens(t)).sum(),
    })
}

#[derive(Deserialize)]
struct WireBatch {
    #[serde(default)]
    embeddings: Vec<WireValues>,
}

#[derive(Deserialize)]
struct WireValues {
    #[serde(default)]
    values: Vec<f32>,
}

#[derive(Deserialize)]
struct WirePredict {
    #[serde(default)]
    predictions: Vec<WirePrediction>,
}

#[derive(Deserialize)]
struct WirePrediction {
    embeddings: WireVertexEmbedding,
}

#[derive(Deserialize)]
struct WireVertexEmbedding {
    #[serde(default)]
    values: Vec<f32>,
    #[serde(default)]
    statistics: Option<WireStatistics>,
}

#[derive(Deserialize)]
struct WireStatistics {
    #[serde(default)]
    token_count: Option<f64>,
}

/// Decode a provider's embeddings answer. The bool says whether the token count is the
/// gateway's estimate (AI Studio gives none; Vertex counts per prediction).
pub fn decode_embeddings_response(
    body: &[u8],
    info: &EmbeddingsInfo,
) -> Result<(EmbeddingsResponse, bool), FormatError> {
    let invalid = |e: &dyn std::fmt::Display| {
        FormatError::upstream(
            "upstream_invalid_response",
            format!("the provider's embeddings answer cannot be read: {e}"),
        )
    };
    let (vectors, counted) = match info.dialect {
        EmbeddingsDialect::BatchEmbedContents => {
            let w: WireBatch = serde_json::from_slice(body).map_err(|e| invalid(&e))?;
            (
                w.embeddings
                    .into_iter()
                    .map(|e| e.values)
                    .collect::<Vec<_>>(),
                None,
            )
        }
        EmbeddingsDialect::VertexPredict => {
            let w: WirePredict = serde_json::from_slice(body).map_err(|e| invalid(&e))?;
            let mut counted = Some(0u64);
            let mut vectors = Vec::with_capacity(w.predictions.len());
            for p in w.predictions {
                let n = p.embeddings.statistics.and_then(|s| s.token_count);
                counted = counted.zip(n).map(|(sum, n)| sum + n.max(0.0) as u64);
                vectors.push(p.embeddings.values);
            }
            (vectors, counted)
        }
    };
    if vectors.len() != info.inputs {
        return Err(invalid(&format_args!(
            "{} vectors for {} inputs",
            vectors.len(),
            info.inputs
        )));
    }
    let resp = EmbeddingsResponse {
        model: info.model.clone(),
        vectors,
        input_tokens: counted.unwrap_or(info.estimated_tokens),
    };
    Ok((resp, counted.is_none()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::embeddings::decode_openai_request;
    use serde_json::json;

    fn encode(body: &str, dialect: EmbeddingsDialect) -> (serde_json::Value, EmbeddingsInfo) {
        let req = decode_openai_request(body.as_bytes()).unwrap();
        let mut out = Vec::new();
        let info =
            encode_embeddings_request(&req, "text-embedding-004", dialect, &mut out).unwrap();
        (serde_json::from_slice(&out).unwrap(), info)
    }

    #[test]
    fn both_dialects() {
        let body = r#"{"model":"g/e","input":["hello","world!!"],"dimensions":8}"#;
        let (v, info) = encode(body, EmbeddingsDialect::BatchEmbedContents);
        assert_eq!(
            v["requests"][1],
            json!({"model":"models/text-embedding-004","content":{"parts":[{"text":"world!!"}]},"outputDimensionality":8})
        );
        assert_eq!((info.inputs, info.estimated_tokens), (2, 4));
        let (resp, estimated) = decode_embeddings_response(
            br#"{"embeddings":[{"values":[0.1,0.2]},{"values":[0.3,0.4]}]}"#,
            &info,
        )
        .unwrap();
        assert!(estimated);
        assert_eq!((resp.vectors.len(), resp.input_tokens), (2, 4));
        let (v, info) = encode(body, EmbeddingsDialect::VertexPredict);
        assert_eq!(
            v,
            json!({"instances":[{"content":"hello"},{"content":"world!!"}],"parameters":{"outputDimensionality":8}})
        );
        let (resp, estimated) = decode_embeddings_response(
            br#"{"predictions":[{"embeddings":{"values":[1.0],"statistics":{"token_count":1,"truncated":false}}},{"embeddings":{"values":[2.0],"statistics":{"token_count":2.0,"truncated":false}}}]}"#,
            &info,
        )
        .unwrap();
        assert!(!estimated);
        assert_eq!(resp.input_tokens, 3);
        let e = decode_embeddings_response(br#"{"predictions":[]}"#, &info).unwrap_err();
        assert_eq!(e.code, "upstream_invalid_response");
        let req = decode_openai_request(br#"{"model":"m","input":[1,2]}"#).unwrap();
        let e =
            encode_embeddings_request(&req, "m", EmbeddingsDialect::VertexPredict, &mut Vec::new())
                .unwrap_err();
        assert_eq!(e.code, "unsupported_parameter");
    }
}

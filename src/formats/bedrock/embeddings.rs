//! Embeddings on Bedrock through `POST /model/{modelId}/invoke`, for an OpenAI embeddings client:
//! the request becomes the InvokeModel bodies of the model's family, chosen by its id, and their
//! answers become one OpenAI list.
//!
//! - Amazon Titan Text Embeddings (`amazon.titan-embed-text-*`): one text per call
//!   (`inputText`), so an `input` array takes one call per text, in order. `dimensions` is
//!   passed on; v2 models are asked for unit-length vectors (`normalize: true`), as OpenAI's are.
//! - Cohere Embed (`cohere.embed-*`): every text in one call (`texts`), with `input_type` from
//!   the client's own `input_type` field or [`COHERE_INPUT_TYPE_DEFAULT`]; `truncate` is passed on
//!   when given. `dimensions` becomes `output_dimension` for Embed v4 and is refused for v3.
//!
//! At most [`EMBEDDING_INPUTS_MAX`] inputs per request (Cohere's limit per call; for Titan a
//! bound on the calls one request makes). Token arrays are refused: Bedrock embeds text only.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::formats::embeddings::{
    decode_openai_request, encode_openai_response, EmbeddingInput, EmbeddingsResponse,
    EncodingFormat,
};
use crate::formats::json::write_value;
use crate::formats::FormatError;

/// Most inputs of one embeddings request to Bedrock: Cohere's limit per call, and the most
/// Titan calls (one per input) one request makes.
pub const EMBEDDING_INPUTS_MAX: usize = 96;
/// Cohere's `input_type` when the client names none: the texts are documents to search.
pub const COHERE_INPUT_TYPE_DEFAULT: &str = "search_document";
/// The response header in which Bedrock reports an InvokeModel call's input tokens.
pub const INPUT_TOKENS_HEADER: &str = "x-amzn-bedrock-input-token-count";

/// The embedding model families the gateway can call, by model id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Titan { v2: bool },
    Cohere { v4: bool },
}

impl Family {
    /// The family of a model id (a plain id, a cross-region id such as `us.cohere.embed-v4:0`, or
    /// a foundation-model ARN); `None` for a model of neither family, or an id that does not say.
    pub fn of(model: &str) -> Option<Family> {
        if model.contains("amazon.titan-embed-text") {
            Some(Family::Titan {
                v2: model.contains("-v2"),
            })
        } else if model.contains("cohere.embed") {
            Some(Family::Cohere {
                v4: model.contains("embed-v4"),
            })
        } else {
            None
        }
    }
}

/// The InvokeModel calls that answer one embeddings request.
#[derive(Debug)]
pub struct Plan {
    pub family: Family,
    /// How the client wants the vectors written.
    pub encoding: EncodingFormat,
    /// One body per call, in input order.
    pub bodies: Vec<Vec<u8>>,
    /// Inputs in the request (vectors the answer must hold).
    pub inputs: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TitanBody<'a> {
    input_text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    normalize: Option<bool>,
}

#[derive(Serialize)]
struct CohereBody<'a> {
    texts: &'a [String],
    input_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    truncate: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimension: Option<u32>,
}

/// Fields of the client's body that only Cohere reads.
#[derive(Deserialize, Default)]
struct CohereFields<'a> {
    #[serde(borrow, default)]
    input_type: Option<&'a str>,
    #[serde(borrow, default)]
    truncate: Option<&'a str>,
}

/// The calls for an OpenAI embeddings request `body` to Bedrock model `model`.
pub fn plan(body: &[u8], model: &str) -> Result<Plan, FormatError> {
    let req = decode_openai_request(body)?;
    let texts = match req.input {
        EmbeddingInput::Texts(t) => t,
        EmbeddingInput::Tokens(_) => {
            return Err(FormatError::bad_request(
                "unsupported_input",
                "token arrays cannot be embedded by a Bedrock provider; send the text",
            ))
        }
    };
    if texts.len() > EMBEDDING_INPUTS_MAX {
        return Err(FormatError::bad_request(
            "too_many_inputs",
            format!(
                "a Bedrock provider embeds at most {EMBEDDING_INPUTS_MAX} inputs per request ({} given)",
                texts.len()
            ),
        ));
    }
    let family = Family::of(model).ok_or_else(|| {
        FormatError::bad_request(
            "unsupported_model",
            format!(
                "model {model:?} is not an embedding model the gateway can call on Bedrock \
                 (amazon.titan-embed-text-* or cohere.embed-*)"
            ),
        )
    })?;
    let mut bodies = Vec::with_capacity(texts.len());
    match family {
        Family::Titan { v2 } => {
            for text in &texts {
                let mut out = Vec::with_capacity(text.len() + 48);
                let titan = TitanBody {
                    input_text: text,
                    dimensions: req.dimensions,
                    normalize: v2.then_some(true),
                };
                write_value(&mut out, &titan);
                bodies.push(out);
            }
        }
        Family::Cohere { v4 } => {
            if req.dimensions.is_some() && !v4 {
                return Err(FormatError::bad_request(
                    "unsupported_parameter",
                    "`dimensions` cannot be used with Cohere Embed v3 on Bedrock (its vectors have one size)",
                ));
            }
            let extra: CohereFields = serde_json::from_slice(body).unwrap_or_default();
            let cohere = CohereBody {
                texts: &texts,
                input_type: extra.input_type.unwrap_or(COHERE_INPUT_TYPE_DEFAULT),
                truncate: extra.truncate,
                output_dimension: req.dimensions,
            };
            let mut out = Vec::with_capacity(texts.iter().map(|t| t.len() + 4).sum::<usize>() + 64);
            write_value(&mut out, &cohere);
            bodies.push(out);
        }
    }
    Ok(Plan {
        family,
        encoding: req.encoding,
        bodies,
        inputs: texts.len(),
    })
}

/// The vectors of one call's answer and the input tokens it reports.
#[derive(Debug, Default, PartialEq)]
pub struct Vectors {
    pub vectors: Vec<Vec<f32>>,
    pub input_tokens: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TitanAnswer {
    embedding: Vec<f32>,
    #[serde(default)]
    input_text_token_count: Option<u64>,
}

#[derive(Deserialize)]
struct CohereAnswer<'a> {
    #[serde(borrow)]
    embeddings: &'a RawValue,
}

#[derive(Deserialize)]
struct CohereByType {
    float: Vec<Vec<f32>>,
}

/// One call's answer, read.
pub fn decode_answer(family: Family, body: &[u8]) -> Result<Vectors, FormatError> {
    let invalid = |e: &dyn std::fmt::Display| {
        FormatError::upstream(
            "upstream_invalid_response",
            format!("the provider's embeddings answer cannot be read: {e}"),
        )
    };
    match family {
        Family::Titan { .. } => {
            let a: TitanAnswer = serde_json::from_slice(body).map_err(|e| invalid(&e))?;
            Ok(Vectors {
                vectors: vec![a.embedding],
                input_tokens: a.input_text_token_count,
            })
        }
        Family::Cohere { .. } => {
            let a: CohereAnswer = serde_json::from_slice(body).map_err(|e| invalid(&e))?;
            // `embeddings` is a list of vectors, or (when types were asked for) an object by type.
            let vectors = match serde_json::from_str::<Vec<Vec<f32>>>(a.embeddings.get()) {
                Ok(v) => v,
                Err(_) => {
                    serde_json::from_str::<CohereByType>(a.embeddings.get())
                        .map_err(|e| invalid(&e))?
                        .float
                }
            };
            Ok(Vectors {
                vectors,
                input_tokens: None,
            })
        }
    }
}

/// The OpenAI answer from every call's vectors, in order, for model `model`; the usage is the sum
/// of the calls' input tokens. An error when the calls answered another number of vectors than
/// there were inputs.
pub fn answer(
    plan: &Plan,
    parts: Vec<Vectors>,
    model: &str,
    out: &mut Vec<u8>,
) -> Result<u64, FormatError> {
    let mut vectors = Vec::with_capacity(plan.inputs);
    let mut tokens = 0;
    for p in parts {
        tokens += p.input_tokens.unwrap_or(0);
        vectors.extend(p.vectors);
    }
    if vectors.len() != plan.inputs {
        return Err(FormatError::upstream(
            "upstream_invalid_response",
            format!(
                "the provider answered {} vectors for {} inputs",
                vectors.len(),
                plan.inputs
            ),
        ));
    }
    let resp = EmbeddingsResponse {
        model: model.to_owned(),
        vectors,
        input_tokens: tokens,
    };
    encode_openai_response(&resp, plan.encoding, out);
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn bodies(p: &Plan) -> Vec<Value> {
        p.bodies
            .iter()
            .map(|b| serde_json::from_slice(b).unwrap())
            .collect()
    }

    #[test]
    fn families_by_model_id() {
        assert_eq!(
            Family::of("amazon.titan-embed-text-v2:0"),
            Some(Family::Titan { v2: true })
        );
        assert_eq!(
            Family::of("amazon.titan-embed-text-v1"),
            Some(Family::Titan { v2: false })
        );
        assert_eq!(
            Family::of("us.cohere.embed-v4:0"),
            Some(Family::Cohere { v4: true })
        );
        assert_eq!(
            Family::of("cohere.embed-english-v3"),
            Some(Family::Cohere { v4: false })
        );
        assert_eq!(Family::of("anthropic.claude-3-haiku"), None);
    }

    #[test]
    fn titan_takes_one_text_per_call() {
        let p = plan(
            br#"{"model":"m","input":["a","b"],"dimensions":256}"#,
            "amazon.titan-embed-text-v2:0",
        )
        .unwrap();
        assert_eq!(
            bodies(&p),
            [
                json!({"inputText": "a", "dimensions": 256, "normalize": true}),
                json!({"inputText": "b", "dimensions": 256, "normalize": true})
            ]
        );
        let p = plan(
            br#"{"model":"m","input":"a"}"#,
            "amazon.titan-embed-text-v1",
        )
        .unwrap();
        assert_eq!(bodies(&p), [json!({"inputText": "a"})]);
    }

    #[test]
    fn cohere_takes_every_text_at_once() {
        let p = plan(
            br#"{"model":"m","input":["a","b"],"input_type":"search_query","truncate":"END"}"#,
            "cohere.embed-english-v3",
        )
        .unwrap();
        assert_eq!(
            bodies(&p),
            [json!({"texts": ["a", "b"], "input_type": "search_query", "truncate": "END"})]
        );
        let p = plan(
            br#"{"model":"m","input":"a"}"#,
            "cohere.embed-multilingual-v3",
        )
        .unwrap();
        assert_eq!(
            bodies(&p),
            [json!({"texts": ["a"], "input_type": "search_document"})]
        );
        let p = plan(
            br#"{"model":"m","input":"a","dimensions":512}"#,
            "cohere.embed-v4:0",
        )
        .unwrap();
        assert_eq!(bodies(&p)[0]["output_dimension"], 512);
    }

    #[test]
    fn what_bedrock_cannot_embed_is_refused() {
        let many = json!({"model": "m", "input": vec!["x"; EMBEDDING_INPUTS_MAX + 1]}).to_string();
        for (body, model, code) in [
            (
                r#"{"model":"m","input":[1,2]}"#,
                "cohere.embed-english-v3",
                "unsupported_input",
            ),
            (
                many.as_str(),
                "amazon.titan-embed-text-v2:0",
                "too_many_inputs",
            ),
            (
                r#"{"model":"m","input":"a"}"#,
                "meta.llama3",
                "unsupported_model",
            ),
            (
                r#"{"model":"m","input":"a","dimensions":8}"#,
                "cohere.embed-english-v3",
                "unsupported_parameter",
            ),
        ] {
            let e = plan(body.as_bytes(), model).unwrap_err();
            assert_eq!((e.status, e.code), (400, code), "{model}");
        }
    }

    #[test]
    fn answers_are_read_and_joined() {
        let t = Family::Titan { v2: true };
        let a = decode_answer(t, br#"{"embedding":[0.5,-0.5],"inputTextTokenCount":3}"#).unwrap();
        let b = decode_answer(t, br#"{"embedding":[1.0,0.0],"inputTextTokenCount":4}"#).unwrap();
        let p = plan(
            br#"{"model":"m","input":["a","b"]}"#,
            "amazon.titan-embed-text-v2:0",
        )
        .unwrap();
        let mut out = Vec::new();
        assert_eq!(answer(&p, vec![a, b], "titan", &mut out).unwrap(), 7);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"][1]["embedding"], json!([1.0, 0.0]));
        assert_eq!(
            (v["usage"]["prompt_tokens"].as_u64(), v["model"].as_str()),
            (Some(7), Some("titan"))
        );

        let c = Family::Cohere { v4: false };
        let floats = decode_answer(c, br#"{"id":"x","embeddings":[[0.1],[0.2]],"texts":["a","b"],"response_type":"embeddings_floats"}"#).unwrap();
        assert_eq!(floats.vectors, [vec![0.1], vec![0.2]]);
        let by_type =
            decode_answer(c, br#"{"embeddings":{"float":[[0.3]],"int8":[[1]]}}"#).unwrap();
        assert_eq!(by_type.vectors, [vec![0.3]]);
        let e = answer(&p, vec![by_type], "m", &mut Vec::new()).unwrap_err();
        assert_eq!(e.code, "upstream_invalid_response");
        assert!(decode_answer(t, b"{}").is_err());
    }
}

//! The mock's InvokeModel embedding models, with their request checks and response bodies:
//! Amazon Titan Text Embeddings (`amazon.titan-embed-text-*`: `inputText`, `dimensions`,
//! `normalize`, `embeddingTypes`) and Cohere Embed (`cohere.embed-*`: `texts`, `input_type`,
//! `truncate`, `embedding_types`). Vectors are deterministic in the text, so equal inputs embed
//! equally.

use std::time::Instant;

use deepintshield::http::Response;
use serde_json::{json, Map, Value};

use crate::bedrock::aws_error;
use crate::dist::mix64;

/// Titan v2's output sizes; the first is the default.
pub const TITAN_DIMENSIONS: [u64; 3] = [1024, 512, 256];
/// Cohere embed v3 vector size (the `-light-` models: [`COHERE_LIGHT_DIMENSIONS`]).
pub const COHERE_DIMENSIONS: usize = 1024;
pub const COHERE_LIGHT_DIMENSIONS: usize = 384;
/// Most texts in one Cohere request, as on Bedrock.
pub const COHERE_TEXTS_MAX: usize = 96;
/// Longest Titan input accepted, in characters (Titan v2 takes up to 50,000).
pub const TITAN_INPUT_CHARS_MAX: usize = 50_000;

const BEDROCK_NS: &str = "http://internal.amazon.com/coral/com.amazon.bedrock/";
const TITAN_KEYS: [&str; 4] = ["inputText", "dimensions", "normalize", "embeddingTypes"];
const COHERE_KEYS: [&str; 5] = [
    "texts",
    "images",
    "input_type",
    "truncate",
    "embedding_types",
];
const COHERE_INPUT_TYPES: [&str; 5] = [
    "search_document",
    "search_query",
    "classification",
    "clustering",
    "image",
];
const COHERE_TYPES: [&str; 5] = ["float", "int8", "uint8", "binary", "ubinary"];

/// Bedrock's message for a body the model's schema refuses.
fn malformed(detail: &str, id: &str) -> Response {
    aws_error(
        400,
        "ValidationException",
        BEDROCK_NS,
        &format!("Malformed input request: {detail}, please reformat your input and try again."),
        id,
    )
}

/// InvokeModel for an embedding model.
pub fn invoke(model: &str, body: &Value, started: Instant, id: &str) -> Response {
    let result = if model.contains("titan-embed") {
        titan(body)
    } else if model.contains("cohere.embed") {
        cohere(model, body)
    } else {
        return aws_error(
            400,
            "ValidationException",
            BEDROCK_NS,
            "mock: InvokeModel serves only amazon.titan-embed-* and cohere.embed-* models",
            id,
        );
    };
    let (answer, tokens) = match result {
        Ok(x) => x,
        Err(detail) => return malformed(&detail, id),
    };
    let mut r = Response::json(200, serde_json::to_vec(&answer).unwrap_or_default());
    r.headers.push(("x-amzn-requestid", id.to_string()));
    r.headers
        .push(("x-amzn-bedrock-input-token-count", tokens.to_string()));
    r.headers.push((
        "x-amzn-bedrock-invocation-latency",
        started.elapsed().as_millis().to_string(),
    ));
    r
}

fn extraneous(obj: &Map<String, Value>, allowed: &[&str]) -> Result<(), String> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("#: extraneous key [{k}] is not permitted")),
        None => Ok(()),
    }
}

fn tokens_of(text: &str) -> u64 {
    text.chars().count().div_ceil(4) as u64
}

/// A deterministic vector for `text`: uniform in [-1, 1], optionally of unit length.
pub fn vector(text: &str, dims: usize, normalize: bool) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let mut v: Vec<f64> = (0..dims as u64)
        .map(|i| (mix64(h.wrapping_add(i)) >> 11) as f64 / (1u64 << 52) as f64 - 1.0)
        .collect();
    if normalize {
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
    }
    v.into_iter().map(|x| x as f32).collect()
}

/// Packs signs into bytes, most significant bit first (`binary`: as i8, `ubinary`: as u8).
fn packed_bits(v: &[f32], signed: bool) -> Value {
    let bytes: Vec<Value> = v
        .chunks(8)
        .map(|c| {
            let byte = c
                .iter()
                .enumerate()
                .fold(0u8, |acc, (i, x)| acc | (u8::from(*x > 0.0) << (7 - i)));
            if signed {
                json!(byte as i8)
            } else {
                json!(byte)
            }
        })
        .collect();
    Value::Array(bytes)
}

fn titan(body: &Value) -> Result<(Value, u64), String> {
    let obj = body.as_object().ok_or("#: expected type: JSONObject")?;
    extraneous(obj, &TITAN_KEYS)?;
    let text = match obj.get("inputText") {
        None => return Err("#: required key [inputText] not found".into()),
        Some(Value::String(s)) => s,
        Some(_) => return Err("#/inputText: expected type: String".into()),
    };
    if text.chars().count() > TITAN_INPUT_CHARS_MAX {
        return Err(format!(
            "#/inputText: expected maxLength: {TITAN_INPUT_CHARS_MAX}"
        ));
    }
    let dims = match obj.get("dimensions") {
        None => TITAN_DIMENSIONS[0],
        Some(d) => match d.as_u64() {
            Some(n) if TITAN_DIMENSIONS.contains(&n) => n,
            _ => return Err(format!("#/dimensions: {d} is not a valid enum value")),
        },
    };
    let normalize = match obj.get("normalize") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("#/normalize: expected type: Boolean".into()),
    };
    let types: Vec<&str> = match obj.get("embeddingTypes") {
        None => vec!["float"],
        Some(Value::Array(a)) => {
            let mut t = Vec::with_capacity(a.len());
            for v in a {
                match v.as_str() {
                    Some(s @ ("float" | "binary")) => t.push(s),
                    _ => return Err(format!("#/embeddingTypes: {v} is not a valid enum value")),
                }
            }
            t
        }
        Some(_) => return Err("#/embeddingTypes: expected type: JSONArray".into()),
    };
    let v = vector(text, dims as usize, normalize);
    let mut by_type = Map::new();
    for t in types {
        let value = match t {
            "binary" => packed_bits(&v, false),
            _ => json!(v),
        };
        by_type.insert(t.to_string(), value);
    }
    let tokens = tokens_of(text);
    Ok((
        json!({ "embedding": v, "embeddingsByType": by_type, "inputTextTokenCount": tokens }),
        tokens,
    ))
}

fn cohere(model: &str, body: &Value) -> Result<(Value, u64), String> {
    let obj = body.as_object().ok_or("#: expected type: JSONObject")?;
    extraneous(obj, &COHERE_KEYS)?;
    match obj.get("input_type") {
        None => return Err("#: required key [input_type] not found".into()),
        Some(Value::String(s)) if COHERE_INPUT_TYPES.contains(&s.as_str()) => {}
        Some(v) => return Err(format!("#/input_type: {v} is not a valid enum value")),
    }
    let texts = match obj.get("texts") {
        None => return Err("#: required key [texts] not found".into()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err("#/texts: expected type: JSONArray".into()),
    };
    if texts.len() > COHERE_TEXTS_MAX {
        return Err(format!(
            "#/texts: expected maximum item count: {COHERE_TEXTS_MAX}, found: {}",
            texts.len()
        ));
    }
    let mut strings = Vec::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        match t.as_str() {
            Some(s) => strings.push(s),
            None => return Err(format!("#/texts/{i}: expected type: String")),
        }
    }
    if let Some(t) = obj.get("truncate") {
        if !matches!(t.as_str(), Some("NONE" | "START" | "END")) {
            return Err(format!("#/truncate: {t} is not a valid enum value"));
        }
    }
    let types: Option<Vec<&str>> = match obj.get("embedding_types") {
        None => None,
        Some(Value::Array(a)) => {
            let mut t = Vec::with_capacity(a.len());
            for v in a {
                match v.as_str() {
                    Some(s) if COHERE_TYPES.contains(&s) => t.push(s),
                    _ => return Err(format!("#/embedding_types: {v} is not a valid enum value")),
                }
            }
            Some(t)
        }
        Some(_) => return Err("#/embedding_types: expected type: JSONArray".into()),
    };
    let dims = if model.contains("light") {
        COHERE_LIGHT_DIMENSIONS
    } else {
        COHERE_DIMENSIONS
    };
    let vectors: Vec<Vec<f32>> = strings.iter().map(|s| vector(s, dims, true)).collect();
    let tokens: u64 = strings.iter().map(|s| tokens_of(s)).sum();
    let id = format!("{:016x}", mix64(tokens ^ vectors.len() as u64));
    let answer = match types {
        None => json!({
            "id": id,
            "texts": strings,
            "embeddings": vectors,
            "response_type": "embeddings_floats",
        }),
        Some(types) => {
            let mut by_type = Map::new();
            for t in types {
                let per_text: Vec<Value> = vectors
                    .iter()
                    .map(|v| match t {
                        "int8" => json!(v
                            .iter()
                            .map(|x| (x * 127.0).round() as i8)
                            .collect::<Vec<_>>()),
                        "uint8" => json!(v
                            .iter()
                            .map(|x| ((x + 1.0) * 127.5).round() as u8)
                            .collect::<Vec<_>>()),
                        "binary" => packed_bits(v, true),
                        "ubinary" => packed_bits(v, false),
                        _ => json!(v),
                    })
                    .collect();
                by_type.insert(t.to_string(), Value::Array(per_text));
            }
            json!({
                "id": id,
                "texts": strings,
                "embeddings": by_type,
                "response_type": "embeddings_by_type",
            })
        }
    };
    Ok((answer, tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titan_shapes_and_checks() {
        let (a, tokens) = titan(&json!({"inputText": "hello world", "dimensions": 256})).unwrap();
        let v = a["embedding"].as_array().unwrap();
        assert_eq!(v.len(), 256);
        let norm: f64 = v
            .iter()
            .map(|x| x.as_f64().unwrap().powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "{norm}");
        assert_eq!((a["inputTextTokenCount"].as_u64(), tokens), (Some(3), 3));
        assert_eq!(a["embeddingsByType"]["float"], a["embedding"]);
        let (b, _) = titan(&json!({"inputText": "hello world", "dimensions": 256})).unwrap();
        assert_eq!(a, b, "deterministic");
        let (c, _) =
            titan(&json!({"inputText": "x", "embeddingTypes": ["binary"], "normalize": false}))
                .unwrap();
        assert_eq!(c["embedding"].as_array().unwrap().len(), 1024);
        assert_eq!(
            c["embeddingsByType"]["binary"].as_array().unwrap().len(),
            128
        );
        for (bad, needle) in [
            (json!({}), "required key [inputText]"),
            (json!({"inputText": 3}), "expected type: String"),
            (
                json!({"inputText": "x", "dimensions": 100}),
                "100 is not a valid enum value",
            ),
            (json!({"inputText": "x", "normalize": "yes"}), "Boolean"),
            (
                json!({"inputText": "x", "model": "m"}),
                "extraneous key [model]",
            ),
        ] {
            let e = titan(&bad).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn cohere_shapes_and_checks() {
        let body = json!({"texts": ["a", "bb"], "input_type": "search_document"});
        let (a, tokens) = cohere("cohere.embed-english-v3", &body).unwrap();
        assert_eq!(a["response_type"], "embeddings_floats");
        let e = a["embeddings"].as_array().unwrap();
        assert_eq!(
            (e.len(), e[0].as_array().unwrap().len(), tokens),
            (2, 1024, 2)
        );
        assert_eq!(a["texts"], json!(["a", "bb"]));
        let body = json!({"texts": ["a"], "input_type": "search_query", "embedding_types": ["float", "int8", "ubinary"]});
        let (b, _) = cohere("cohere.embed-multilingual-light-v3", &body).unwrap();
        assert_eq!(b["response_type"], "embeddings_by_type");
        assert_eq!(b["embeddings"]["float"][0].as_array().unwrap().len(), 384);
        assert_eq!(b["embeddings"]["ubinary"][0].as_array().unwrap().len(), 48);
        for (bad, needle) in [
            (json!({"texts": ["a"]}), "required key [input_type]"),
            (
                json!({"input_type": "search_query"}),
                "required key [texts]",
            ),
            (
                json!({"texts": ["a"], "input_type": "query"}),
                "not a valid enum value",
            ),
            (
                json!({"texts": [1], "input_type": "clustering"}),
                "#/texts/0",
            ),
            (
                json!({"texts": vec!["a"; 97], "input_type": "clustering"}),
                "maximum item count: 96",
            ),
            (
                json!({"texts": ["a"], "input_type": "clustering", "encoding_format": "float"}),
                "extraneous",
            ),
        ] {
            let e = cohere("cohere.embed-english-v3", &bad).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }
}

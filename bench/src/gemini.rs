//! What the mock answers on Google's APIs: Gemini `generateContent` / `streamGenerateContent`
//! bodies (the same on Google AI Studio and Vertex AI), the checks the real API makes that a
//! gateway could fail (unknown fields, schema keywords Gemini refuses, empty text parts, function
//! calls sent back without their `thoughtSignature`), Google's error bodies, embeddings
//! (`batchEmbedContents`, Vertex `predict`), and the OAuth2 token endpoint of a service account:
//! the RS256 assertion verified against the account's public key, short-lived tokens issued.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::tools::{has_trigger, instance_of, pick_tool};

/// The keys of Gemini's `Schema` object; any other key in a function's `parameters` or a
/// `responseSchema` is refused, as the API does.
pub const SCHEMA_KEYS: [&str; 22] = [
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

/// The top-level fields of a `GenerateContentRequest` (Vertex adds `labels`).
const REQUEST_KEYS: [&str; 8] = [
    "contents",
    "systemInstruction",
    "tools",
    "toolConfig",
    "generationConfig",
    "safetySettings",
    "cachedContent",
    "labels",
];

/// Most tokens the token endpoint keeps at once (expired ones are dropped first).
pub const TOKENS_MAX: usize = 10_000;
/// Length of an embedding vector when the request names no `outputDimensionality`.
pub const EMBEDDING_DIMENSIONS_DEFAULT: usize = 768;
/// Longest embedding vector.
pub const EMBEDDING_DIMENSIONS_MAX: usize = 3072;

/// Google's status name for an HTTP status.
pub fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        405..=498 => "FAILED_PRECONDITION",
        _ => "INTERNAL",
    }
}

/// `{"error":{"code","message","status"}}`.
pub fn error_body(status: u16, message: &str) -> Vec<u8> {
    let body =
        json!({"error": {"code": status, "message": message, "status": status_name(status)}});
    serde_json::to_vec(&body).unwrap_or_default()
}

/// A mid-stream failure: an error chunk, as Gemini sends one.
pub fn error_event(message: &str) -> Vec<u8> {
    let mut out = b"data: ".to_vec();
    out.extend(error_body(503, message));
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// One stream chunk.
pub fn chunk(data: &Value) -> Vec<u8> {
    format!("data: {data}\r\n\r\n").into_bytes()
}

/// Which endpoint of which service a path names.
#[derive(Debug, PartialEq, Eq)]
pub struct Route {
    pub vertex: bool,
    pub model: String,
    pub method: String,
}

/// `/v1beta/models/{model}:{method}` (AI Studio) or
/// `/v1/projects/{p}/locations/{l}/publishers/google/models/{model}:{method}` (Vertex).
pub fn route(path: &str) -> Option<Route> {
    let (vertex, rest) = if let Some(rest) = path.strip_prefix("/v1beta/models/") {
        (false, rest)
    } else {
        let rest = path.strip_prefix("/v1/projects/")?;
        let (_, rest) = rest.split_once("/publishers/google/models/")?;
        (true, rest)
    };
    let (model, method) = rest.rsplit_once(':')?;
    if model.is_empty() || model.contains('/') {
        return None;
    }
    Some(Route {
        vertex,
        model: model.to_string(),
        method: method.to_string(),
    })
}

/// The signature the mock puts on a function call it makes, and requires back with it.
pub fn thought_signature(name: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("mock-thought:{name}"))
}

/// Why a request is invalid, in the API's words (a 400), or `None`.
pub fn invalid_request(body: &Value) -> Option<String> {
    let Some(obj) = body.as_object() else {
        return Some("Invalid JSON payload received.".into());
    };
    if let Some(k) = obj.keys().find(|k| !REQUEST_KEYS.contains(&k.as_str())) {
        return Some(format!(
            "Invalid JSON payload received. Unknown name \"{k}\": Cannot find field."
        ));
    }
    let Some(contents) = obj
        .get("contents")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
    else {
        return Some("* GenerateContentRequest.contents: contents is not specified".into());
    };
    for (i, c) in contents.iter().enumerate() {
        let Some(parts) = c
            .get("parts")
            .and_then(Value::as_array)
            .filter(|p| !p.is_empty())
        else {
            return Some(format!(
                "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
            ));
        };
        for p in parts {
            if p.get("text").and_then(Value::as_str) == Some("") {
                return Some("Unable to submit request because it has an empty text parameter. Add a value to the parameter and try again.".into());
            }
            if let Some(call) = p.get("functionCall") {
                let name = call.get("name").and_then(Value::as_str).unwrap_or("");
                match p.get("thoughtSignature").and_then(Value::as_str) {
                    None => return Some(format!("Function call is missing a thought_signature in functionCall parts. This is required for tools to work correctly, and missing thought_signature may lead to degraded model performance. Additional data, function call `{name}` , position {i}.")),
                    Some(s) if s != thought_signature(name) => {
                        return Some("Corrupted thought signature.".into())
                    }
                    Some(_) => {}
                }
            }
        }
    }
    let declarations = obj
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("functionDeclarations").and_then(Value::as_array))
        .flatten();
    for (i, f) in declarations.enumerate() {
        if let Some(params) = f.get("parameters") {
            let at = format!("tools[0].function_declarations[{i}].parameters");
            if let Some(e) = schema_error(params, &at) {
                return Some(e);
            }
        }
    }
    if let Some(schema) = body.pointer("/generationConfig/responseSchema") {
        if let Some(e) = schema_error(schema, "generation_config.response_schema") {
            return Some(e);
        }
    }
    None
}

/// The first key of `schema` (or of a schema inside it) that Gemini's `Schema` does not know.
fn schema_error(schema: &Value, at: &str) -> Option<String> {
    let obj = schema.as_object()?;
    if let Some(k) = obj.keys().find(|k| !SCHEMA_KEYS.contains(&k.as_str())) {
        return Some(format!(
            "Invalid JSON payload received. Unknown name \"{k}\" at '{at}': Cannot find field."
        ));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, p) in props {
            if let Some(e) = schema_error(p, &format!("{at}.properties[{name}].value")) {
                return Some(e);
            }
        }
    }
    if let Some(items) = obj.get("items") {
        if let Some(e) = schema_error(items, &format!("{at}.items")) {
            return Some(e);
        }
    }
    for branch in obj
        .get("anyOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(e) = schema_error(branch, &format!("{at}.any_of")) {
            return Some(e);
        }
    }
    None
}

/// A Gemini schema with its types in lower case (Gemini accepts `OBJECT` and `object`), for
/// [`instance_of`].
fn lower_types(schema: &Value) -> Value {
    match schema {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    ("type", Value::String(t)) => {
                        (k.clone(), Value::String(t.to_ascii_lowercase()))
                    }
                    _ => (k.clone(), lower_types(v)),
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(lower_types).collect()),
        other => other.clone(),
    }
}

/// What the mock answers a `generateContent` request with.
#[derive(Debug, PartialEq)]
pub enum Answer {
    Text(String),
    /// A call of the named function with these arguments.
    Call {
        name: String,
        args: Value,
    },
    /// A candidate stopped by the safety filters, with no content.
    Safety,
    /// The prompt blocked before any candidate.
    Blocked,
}

/// The text of a content's parts (function responses as their `output`, `error` or JSON).
fn parts_text(content: &Value) -> (String, Vec<String>) {
    let mut text = String::new();
    let mut results = Vec::new();
    for p in content
        .get("parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = p.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(r) = p.pointer("/functionResponse/response") {
            results.push(match r.get("output").or_else(|| r.get("error")) {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => r.to_string(),
            });
        }
    }
    (text, results)
}

/// The answer to a valid request. `safety` / `blocked` in the model name give the filtered
/// answers; otherwise the last `user` content decides: function responses -> `mock: tool result:
/// <their output>`; the tool trigger (or `toolConfig` mode `ANY`) with functions declared -> a
/// call of the forced, named or first function with arguments built from its `parameters`; a
/// JSON `responseSchema` -> an instance of it; else `mock: <its text>`.
pub fn answer(body: &Value, model: &str, tool_text: &str) -> Answer {
    if model.contains("blocked") {
        return Answer::Blocked;
    }
    if model.contains("safety") {
        return Answer::Safety;
    }
    let last_user = body
        .get("contents")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .rev()
                .find(|c| c.get("role").and_then(Value::as_str) != Some("model"))
        });
    let (text, results) = last_user.map(parts_text).unwrap_or_default();
    if !results.is_empty() {
        return Answer::Text(format!("mock: tool result: {}", results.join("\n")));
    }
    let functions: Vec<&Value> = body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("functionDeclarations").and_then(Value::as_array))
        .flatten()
        .collect();
    let names: Vec<&str> = functions
        .iter()
        .filter_map(|f| f.get("name").and_then(Value::as_str))
        .collect();
    let config = body.pointer("/toolConfig/functionCallingConfig");
    let forced = config.and_then(|c| c.get("mode")).and_then(Value::as_str) == Some("ANY");
    let allowed: Vec<&str> = config
        .and_then(|c| c.get("allowedFunctionNames"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !names.is_empty() && (forced || has_trigger(&text)) {
        let candidates: Vec<&str> = if allowed.is_empty() {
            names.clone()
        } else {
            names
                .iter()
                .copied()
                .filter(|n| allowed.contains(n))
                .collect()
        };
        if let Some(name) = pick_tool(&candidates, &text) {
            let params = functions
                .iter()
                .find(|f| f.get("name").and_then(Value::as_str) == Some(name))
                .and_then(|f| f.get("parameters"))
                .map(lower_types)
                .unwrap_or(Value::Null);
            let args = match instance_of(&params, tool_text) {
                v @ Value::Object(_) => v,
                _ => json!({}),
            };
            return Answer::Call {
                name: name.to_string(),
                args,
            };
        }
    }
    let json_answer = body
        .pointer("/generationConfig/responseMimeType")
        .and_then(Value::as_str)
        == Some("application/json");
    if let (true, Some(schema)) = (
        json_answer,
        body.pointer("/generationConfig/responseSchema"),
    ) {
        return Answer::Text(instance_of(&lower_types(schema), tool_text).to_string());
    }
    Answer::Text(format!("mock: {text}"))
}

/// Prompt tokens as the mock counts them: a quarter of the characters of every text part and of
/// the system instruction, rounded up.
pub fn prompt_tokens(body: &Value) -> u64 {
    let contents = body
        .get("contents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    let system = body.get("systemInstruction").into_iter();
    let chars: usize = contents
        .chain(system)
        .map(|c| {
            let (text, results) = parts_text(c);
            text.chars().count() + results.iter().map(|r| r.chars().count()).sum::<usize>()
        })
        .sum();
    chars.div_ceil(4) as u64
}

fn output_tokens(answer: &Answer) -> u64 {
    let chars = match answer {
        Answer::Text(t) => t.chars().count(),
        Answer::Call { args, .. } => args.to_string().chars().count(),
        Answer::Safety | Answer::Blocked => 0,
    };
    chars.div_ceil(4) as u64
}

/// The fixed fields of one answer.
pub struct Meta<'a> {
    pub response_id: &'a str,
    pub model: &'a str,
    pub prompt_tokens: u64,
}

impl Meta<'_> {
    fn usage(&self, answer: &Answer) -> Value {
        let out = output_tokens(answer);
        json!({"promptTokenCount": self.prompt_tokens, "candidatesTokenCount": out,
               "totalTokenCount": self.prompt_tokens + out})
    }

    fn candidate(&self, parts: Value, finish: Option<&str>) -> Value {
        let mut c = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        if let Some(f) = finish {
            c["finishReason"] = json!(f);
        }
        c
    }

    fn response(&self, candidates: Value, usage: Option<Value>) -> Value {
        let mut r = json!({"candidates": candidates, "modelVersion": self.model,
                           "responseId": self.response_id});
        if let Some(u) = usage {
            r["usageMetadata"] = u;
        }
        r
    }

    fn call_part(name: &str, args: &Value) -> Value {
        json!({"functionCall": {"name": name, "args": args}, "thoughtSignature": thought_signature(name)})
    }

    /// The whole answer.
    pub fn whole(&self, answer: &Answer) -> Value {
        let usage = Some(self.usage(answer));
        match answer {
            Answer::Text(t) => self.response(json!([self.candidate(json!([{"text": t}]), Some("STOP"))]), usage),
            Answer::Call { name, args } => self.response(
                json!([self.candidate(json!([Self::call_part(name, args)]), Some("STOP"))]),
                usage,
            ),
            Answer::Safety => self.response(
                json!([{"finishReason": "SAFETY", "index": 0, "safetyRatings": [
                    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true}]}]),
                usage,
            ),
            Answer::Blocked => json!({
                "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [
                    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}]},
                "usageMetadata": {"promptTokenCount": self.prompt_tokens, "totalTokenCount": self.prompt_tokens},
                "modelVersion": self.model, "responseId": self.response_id,
            }),
        }
    }

    /// A streamed answer: the text in `pieces` chunks without a finish reason, the last one with
    /// `finishReason` and usage; a function call (or a filtered answer) as one final chunk.
    pub fn stream(&self, answer: &Answer, pieces: &[&str]) -> (Vec<Vec<u8>>, Vec<u8>) {
        match answer {
            Answer::Text(_) => {
                let (last, rest) = pieces.split_last().unwrap_or((&"", &[]));
                let usage = |done: bool| {
                    let mut u = json!({"promptTokenCount": self.prompt_tokens});
                    if done {
                        u = self.usage(answer);
                    }
                    u
                };
                let body = rest
                    .iter()
                    .map(|p| {
                        chunk(&self.response(
                            json!([self.candidate(json!([{"text": p}]), None)]),
                            Some(usage(false)),
                        ))
                    })
                    .collect();
                let tail = chunk(&self.response(
                    json!([self.candidate(json!([{"text": last}]), Some("STOP"))]),
                    Some(usage(true)),
                ));
                (body, tail)
            }
            other => (Vec::new(), chunk(&self.whole(other))),
        }
    }
}

/// A deterministic unit vector of `n` values for `text`.
pub fn embedding(text: &str, n: usize) -> Vec<f64> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let raw: Vec<f64> = (0..n)
        .map(|_| {
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            ((h >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        })
        .collect();
    let norm = raw
        .iter()
        .map(|v| v * v)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    raw.into_iter().map(|v| v / norm).collect()
}

fn dimensions(v: Option<&Value>) -> Result<usize, String> {
    match v {
        None | Some(Value::Null) => Ok(EMBEDDING_DIMENSIONS_DEFAULT),
        Some(d) => d
            .as_u64()
            .map(|d| d as usize)
            .filter(|d| (1..=EMBEDDING_DIMENSIONS_MAX).contains(d))
            .ok_or_else(|| format!("outputDimensionality must be 1..={EMBEDDING_DIMENSIONS_MAX}")),
    }
}

/// `:batchEmbedContents`: one vector per request; every request's `model` must be the URL's.
pub fn batch_embed(body: &Value, model: &str) -> Result<Value, String> {
    let requests = body
        .get("requests")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
        .ok_or("* BatchEmbedContentsRequest.requests: requests is not specified")?;
    let mut out = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        if r.get("model").and_then(Value::as_str) != Some(&format!("models/{model}")) {
            return Err(format!(
                "requests[{i}].model: the model must be models/{model}"
            ));
        }
        let (text, _) = parts_text(r.get("content").unwrap_or(&Value::Null));
        let n = dimensions(r.get("outputDimensionality"))?;
        out.push(json!({"values": embedding(&text, n)}));
    }
    Ok(json!({"embeddings": out}))
}

/// Vertex `:predict`: one prediction per instance, with its token count.
pub fn predict(body: &Value) -> Result<Value, String> {
    let instances = body
        .get("instances")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
        .ok_or("instances is required")?;
    let n = dimensions(body.pointer("/parameters/outputDimensionality"))?;
    let predictions: Vec<Value> = instances
        .iter()
        .map(|i| {
            let text = i.get("content").and_then(Value::as_str).unwrap_or("");
            json!({"embeddings": {"values": embedding(text, n),
                   "statistics": {"token_count": text.chars().count().div_ceil(4), "truncated": false}}})
        })
        .collect();
    Ok(json!({"predictions": predictions, "metadata": {"billableCharacterCount": 0}}))
}

/// A service account the token endpoint knows: its email and RSA public key.
pub struct Account {
    pub client_email: String,
    public_key: Vec<u8>,
}

impl Account {
    /// From a service-account key file (the same JSON the gateway reads).
    pub fn from_key_file(text: &str) -> Result<Account, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let email = v
            .get("client_email")
            .and_then(Value::as_str)
            .ok_or("no client_email")?;
        let pem = v
            .get("private_key")
            .and_then(Value::as_str)
            .ok_or("no private_key")?;
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map_err(|e| format!("private_key: {e}"))?;
        let pair = ring::signature::RsaKeyPair::from_pkcs8(&der)
            .map_err(|e| format!("private_key: {e}"))?;
        use ring::signature::KeyPair as _;
        Ok(Account {
            client_email: email.to_string(),
            public_key: pair.public_key().as_ref().to_vec(),
        })
    }
}

/// The OAuth2 token endpoint of the mock.
pub struct TokenIssuer {
    accounts: Vec<Account>,
    ttl: Duration,
    /// Token -> (account, expiry).
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    issued: Mutex<u64>,
}

/// A token endpoint failure: status and the OAuth error body.
pub struct TokenRefusal {
    pub status: u16,
    pub body: Vec<u8>,
}

fn refuse(status: u16, error: &str, description: &str) -> TokenRefusal {
    TokenRefusal {
        status,
        body: serde_json::to_vec(&json!({"error": error, "error_description": description}))
            .unwrap_or_default(),
    }
}

fn form_value<'a>(form: &'a str, key: &str) -> Option<&'a str> {
    form.split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

impl TokenIssuer {
    pub fn new(accounts: Vec<Account>, ttl: Duration) -> Self {
        TokenIssuer {
            accounts,
            ttl,
            tokens: Mutex::new(HashMap::new()),
            issued: Mutex::new(0),
        }
    }

    /// `POST /token`: a form with `grant_type` (jwt-bearer) and `assertion` (a JWT signed RS256
    /// by a known account, `aud` ending in `/token`, the cloud-platform scope, issued within a
    /// minute and valid at most an hour). Returns the account's email with the answer.
    pub fn exchange(&self, form: &[u8]) -> Result<(String, Value), TokenRefusal> {
        let form =
            std::str::from_utf8(form).map_err(|_| refuse(400, "invalid_request", "not a form"))?;
        if form_value(form, "grant_type")
            != Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer")
        {
            return Err(refuse(400, "unsupported_grant_type", "Invalid grant_type."));
        }
        let jwt = form_value(form, "assertion").ok_or_else(|| {
            refuse(
                400,
                "invalid_request",
                "Missing required parameter: assertion",
            )
        })?;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let parts: Vec<&str> = jwt.split('.').collect();
        let [header, claims, signature] = parts.as_slice() else {
            return Err(refuse(400, "invalid_grant", "Invalid JWT."));
        };
        let decode =
            |s: &str| -> Option<Value> { serde_json::from_slice(&b64.decode(s).ok()?).ok() };
        let (Some(h), Some(c)) = (decode(header), decode(claims)) else {
            return Err(refuse(400, "invalid_grant", "Invalid JWT."));
        };
        if h.get("alg").and_then(Value::as_str) != Some("RS256") {
            return Err(refuse(
                400,
                "invalid_grant",
                "Invalid JWT: alg must be RS256.",
            ));
        }
        let iss = c.get("iss").and_then(Value::as_str).unwrap_or("");
        let Some(account) = self.accounts.iter().find(|a| a.client_email == iss) else {
            return Err(refuse(
                400,
                "invalid_grant",
                "Invalid grant: account not found",
            ));
        };
        let sig = b64
            .decode(signature)
            .map_err(|_| refuse(400, "invalid_grant", "Invalid JWT Signature."))?;
        let signed = &jwt[..header.len() + 1 + claims.len()];
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            &account.public_key,
        )
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| refuse(400, "invalid_grant", "Invalid JWT Signature."))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (iat, exp) = (
            c.get("iat").and_then(Value::as_u64).unwrap_or(0),
            c.get("exp").and_then(Value::as_u64).unwrap_or(0),
        );
        let aud_ok = c
            .get("aud")
            .and_then(Value::as_str)
            .is_some_and(|a| a.ends_with("/token"));
        let scope_ok = c.get("scope").and_then(Value::as_str).is_some_and(|s| {
            s.split(' ')
                .any(|s| s == "https://www.googleapis.com/auth/cloud-platform")
        });
        if !aud_ok || !scope_ok || iat > now + 60 || exp <= now || exp.saturating_sub(iat) > 3600 {
            return Err(refuse(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe."));
        }
        let n = {
            let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
            *issued += 1;
            *issued
        };
        let token = format!(
            "ya29.mock{n:08}{:016x}",
            now.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        );
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let at = Instant::now();
        if tokens.len() >= TOKENS_MAX {
            tokens.retain(|_, (_, until)| *until > at);
        }
        if tokens.len() < TOKENS_MAX {
            tokens.insert(token.clone(), (iss.to_string(), at + self.ttl));
        }
        let answer = json!({"access_token": token, "expires_in": self.ttl.as_secs(), "token_type": "Bearer"});
        Ok((iss.to_string(), answer))
    }

    /// Whether `authorization` carries a live token the endpoint issued.
    pub fn valid(&self, authorization: Option<&[u8]>) -> bool {
        let Some(token) = authorization
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens
            .get(token)
            .is_some_and(|(_, until)| *until > Instant::now())
    }
}

/// Counters of the Google endpoints, for `/mock/stats`.
#[derive(Default)]
pub struct Counters {
    pub gemini_requests: std::sync::atomic::AtomicU64,
    pub vertex_requests: std::sync::atomic::AtomicU64,
    pub embeddings_requests: std::sync::atomic::AtomicU64,
    /// Token requests by account (refused ones under `refused`).
    pub token_requests: Mutex<Map<String, Value>>,
}

impl Counters {
    pub fn count_token(&self, account: &str) {
        let mut m = self
            .token_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = m.get(account).and_then(Value::as_u64).unwrap_or(0) + 1;
        m.insert(account.to_string(), json!(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("/v1beta/models/gemini-2.5-flash:streamGenerateContent"),
            Some(Route {
                vertex: false,
                model: "gemini-2.5-flash".into(),
                method: "streamGenerateContent".into()
            })
        );
        assert_eq!(
            route("/v1/projects/p/locations/us-central1/publishers/google/models/gemini-x:predict"),
            Some(Route {
                vertex: true,
                model: "gemini-x".into(),
                method: "predict".into()
            })
        );
        assert_eq!(route("/v1/chat/completions"), None);
        assert_eq!(route("/v1beta/models/a/b:generateContent"), None);
    }

    #[test]
    fn checks_like_the_api() {
        let ok = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
        assert_eq!(invalid_request(&ok), None);
        for (bad, needle) in [
            (
                json!({"model": "x", "contents": ok["contents"]}),
                "Unknown name \"model\"",
            ),
            (json!({"contents": []}), "contents is not specified"),
            (
                json!({"contents": [{"parts": [{"text": ""}]}]}),
                "empty text",
            ),
            (
                json!({"contents": [{"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]}]}),
                "thought_signature",
            ),
            (
                json!({"contents": ok["contents"], "tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "string", "additionalProperties": false}}}}]}]}),
                "additionalProperties",
            ),
        ] {
            let e = invalid_request(&bad).unwrap_or_default();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        let signed = json!({"contents": [{"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": thought_signature("f")}]}]});
        assert_eq!(invalid_request(&signed), None);
    }

    #[test]
    fn answers() {
        let tools = json!([{"functionDeclarations": [{"name": "get_weather", "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]}}]}]);
        let body = json!({"contents": [{"role": "user", "parts": [{"text": "use tool please"}]}], "tools": tools});
        assert_eq!(
            answer(&body, "m", "x"),
            Answer::Call {
                name: "get_weather".into(),
                args: json!({"city": "x"})
            }
        );
        let body = json!({"contents": [{"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"output": "sunny"}}}]}]});
        assert_eq!(
            answer(&body, "m", "x"),
            Answer::Text("mock: tool result: sunny".into())
        );
        assert_eq!(answer(&body, "m-safety", "x"), Answer::Safety);
        let meta = Meta {
            response_id: "r",
            model: "m",
            prompt_tokens: 3,
        };
        let (pieces, tail) = meta.stream(&Answer::Text("mock: hi".into()), &["mock", ": hi"]);
        assert_eq!(pieces.len(), 1);
        let tail = String::from_utf8(tail).unwrap();
        assert!(
            tail.contains("\"finishReason\":\"STOP\"") && tail.contains("candidatesTokenCount"),
            "{tail}"
        );
    }

    #[test]
    fn embeddings_have_the_asked_length() {
        let v = batch_embed(&json!({"requests": [{"model": "models/e", "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 8}]}), "e").unwrap();
        assert_eq!(v["embeddings"][0]["values"].as_array().unwrap().len(), 8);
        assert!(batch_embed(
            &json!({"requests": [{"model": "models/x", "content": {}}]}),
            "e"
        )
        .is_err());
        let v = predict(&json!({"instances": [{"content": "abcdefgh"}]})).unwrap();
        assert_eq!(
            v["predictions"][0]["embeddings"]["statistics"]["token_count"],
            2
        );
        let a = embedding("same", 4);
        assert_eq!(a, embedding("same", 4));
        assert!((a.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-9);
    }
}

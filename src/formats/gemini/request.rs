//! Gemini `generateContent` requests: the neutral model into a body for a Gemini or Vertex
//! provider (the model and `stream` go in the URL, not the body).

use std::collections::HashMap;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::schema::to_gemini_schema;
use crate::formats::chat::{
    ChatRequest, Format, ImageSource, Part, ReasoningEffort, ReasoningMode, Role, ThinkingDisplay,
    ToolChoice,
};
use crate::formats::json::{request_arguments, write_value};
use crate::formats::openai_chat::needs_openai;
use crate::formats::{
    reject_foreign, thinking_budget_tokens, EncodeInfo, EncodeOptions, FormatError,
};

/// The largest thinking budget sent for an effort level, tokens: the highest every Gemini 2.5
/// model accepts (Flash and Flash-Lite stop at 24576; Pro at 32768).
pub const THINKING_BUDGET_MAX_TOKENS: u32 = 24_576;
/// `thinkingBudget` that lets the model decide (Anthropic's adaptive thinking).
const THINKING_BUDGET_DYNAMIC: i64 = -1;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutRequest<'a> {
    contents: Vec<OutContent<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<OutSystem<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<OutTools<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<OutToolConfig<'a>>,
    #[serde(skip_serializing_if = "OutGenerationConfig::is_empty")]
    generation_config: OutGenerationConfig<'a>,
}

#[derive(Serialize)]
struct OutSystem<'a> {
    parts: Vec<OutPart<'a>>,
}

#[derive(Serialize)]
struct OutContent<'a> {
    role: &'static str,
    parts: Vec<OutPart<'a>>,
}

/// One part of a `content` (requests and responses).
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum OutPart<'a> {
    Text {
        text: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        thought: Option<bool>,
        #[serde(rename = "thoughtSignature", skip_serializing_if = "Option::is_none")]
        thought_signature: Option<&'a str>,
    },
    Inline {
        #[serde(rename = "inlineData")]
        inline_data: OutBlob<'a>,
    },
    File {
        #[serde(rename = "fileData")]
        file_data: OutFile<'a>,
    },
    Call {
        #[serde(rename = "functionCall")]
        function_call: OutCall<'a>,
        #[serde(rename = "thoughtSignature", skip_serializing_if = "Option::is_none")]
        thought_signature: Option<&'a str>,
    },
    Response {
        #[serde(rename = "functionResponse")]
        function_response: OutResponse<'a>,
    },
    Raw(&'a RawValue),
}

#[derive(Serialize)]
pub(super) struct OutBlob<'a> {
    #[serde(rename = "mimeType")]
    mime_type: &'a str,
    data: &'a str,
}

#[derive(Serialize)]
pub(super) struct OutFile<'a> {
    #[serde(rename = "mimeType")]
    mime_type: &'a str,
    #[serde(rename = "fileUri")]
    file_uri: &'a str,
}

#[derive(Serialize)]
pub(super) struct OutCall<'a> {
    pub(super) name: &'a str,
    pub(super) args: &'a RawValue,
}

#[derive(Serialize)]
pub(super) struct OutResponse<'a> {
    name: &'a str,
    response: Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutTools<'a> {
    function_declarations: Vec<OutFunction<'a>>,
}

#[derive(Serialize)]
struct OutFunction<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutToolConfig<'a> {
    function_calling_config: OutCallingConfig<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutCallingConfig<'a> {
    mode: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allowed_function_names: Vec<&'a str>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct OutGenerationConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u32>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_config: Option<OutThinking>,
}

impl OutGenerationConfig<'_> {
    fn is_empty(&self) -> bool {
        self.max_output_tokens.is_none()
            && self.temperature.is_none()
            && self.top_p.is_none()
            && self.top_k.is_none()
            && self.stop_sequences.is_empty()
            && self.seed.is_none()
            && self.presence_penalty.is_none()
            && self.frequency_penalty.is_none()
            && self.response_mime_type.is_none()
            && self.thinking_config.is_none()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutThinking {
    thinking_budget: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    include_thoughts: Option<bool>,
}

/// Gemini requests come only from the gateway's own encoder: no client API speaks Gemini, so a
/// Gemini body from a client is refused.
pub fn decode_request(_body: &[u8]) -> Result<ChatRequest, FormatError> {
    Err(FormatError::bad_request(
        "unsupported_format",
        "the gateway does not accept Gemini requests from clients",
    ))
}

/// Encode a `generateContent` body for a Gemini or Vertex provider. The system prompt (and
/// instructions from the middle of the conversation) becomes `systemInstruction`; user and tool
/// turns `user` contents, assistant turns `model` contents (consecutive turns of one side
/// merged); tool results `functionResponse` parts named after their call; tool calls keep their
/// `thoughtSignature`. A request from another format is refused (400) when it needs what Gemini
/// cannot do (OpenAI `n` > 1, `logprobs`, audio, `logit_bias`, legacy `functions`, web search
/// options, custom and server tools, file and audio parts).
pub fn encode_request(
    req: &ChatRequest,
    _upstream_model: &str,
    _opts: &EncodeOptions,
    out: &mut Vec<u8>,
) -> Result<EncodeInfo, FormatError> {
    let native = req.source == Format::Gemini;
    if !native {
        reject_foreign(req, "a Gemini provider", needs_more_than_gemini)?;
    }
    let (system, contents) = encode_contents(req, native)?;
    let functions: Vec<OutFunction> = req
        .tools
        .iter()
        .map(|t| OutFunction {
            name: &t.name,
            description: t.description.as_deref(),
            parameters: t
                .input_schema
                .as_ref()
                .and_then(|s| to_gemini_schema(s.get()))
                // A function without arguments has no `parameters` (Gemini refuses an object
                // schema without properties there).
                .filter(|s| s.get("properties").is_some()),
        })
        .collect();
    let tool_config = match (&req.tool_choice, functions.is_empty()) {
        (_, true) | (None, false) => None,
        (Some(choice), false) => Some(OutToolConfig {
            function_calling_config: match choice {
                ToolChoice::Auto => calling("AUTO", Vec::new()),
                ToolChoice::None => calling("NONE", Vec::new()),
                ToolChoice::Required => calling("ANY", Vec::new()),
                ToolChoice::Tool(name) => calling("ANY", vec![name.as_str()]),
            },
        }),
    };
    let openai = req.source == Format::OpenAiChat;
    let extra = |name: &str| {
        req.extra_field(name)
            .filter(|v| openai && v.get().trim() != "null")
    };
    let so = req.structured_output.as_ref();
    let wire = OutRequest {
        contents,
        system_instruction: (!system.is_empty()).then_some(OutSystem { parts: system }),
        tools: if functions.is_empty() {
            Vec::new()
        } else {
            vec![OutTools {
                function_declarations: functions,
            }]
        },
        tool_config,
        generation_config: OutGenerationConfig {
            max_output_tokens: req.max_tokens,
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: req.top_k,
            stop_sequences: &req.stop,
            seed: extra("seed"),
            presence_penalty: extra("presence_penalty"),
            frequency_penalty: extra("frequency_penalty"),
            response_mime_type: so.map(|_| "application/json"),
            response_schema: so
                .and_then(|s| s.schema.as_ref())
                .and_then(|s| to_gemini_schema(s.get())),
            thinking_config: thinking(req),
        },
    };
    out.reserve(req.approx_json_bytes());
    write_value(out, &wire);
    Ok(EncodeInfo::default())
}

fn calling<'a>(mode: &'static str, allowed_function_names: Vec<&'a str>) -> OutCallingConfig<'a> {
    OutCallingConfig {
        mode,
        allowed_function_names,
    }
}

/// `thinkingConfig`: thinking off (`thinkingBudget: 0`) for a disabled request or effort
/// `none`; Anthropic's budget as `thinkingBudget` with the thoughts included (unless their
/// display is `omitted`); adaptive thinking as the dynamic budget (-1); an effort alone (OpenAI
/// `reasoning_effort`) as the budget of [`thinking_budget_tokens`], at most
/// [`THINKING_BUDGET_MAX_TOKENS`], without the thoughts.
fn thinking(req: &ChatRequest) -> Option<OutThinking> {
    let r = req.reasoning.as_ref()?;
    let include = Some(r.display != Some(ThinkingDisplay::Omitted));
    let for_effort =
        |e: ReasoningEffort| i64::from(thinking_budget_tokens(e).min(THINKING_BUDGET_MAX_TOKENS));
    Some(match (r.mode, r.effort) {
        (Some(ReasoningMode::Disabled), _) | (None, Some(ReasoningEffort::None)) => OutThinking {
            thinking_budget: 0,
            include_thoughts: None,
        },
        (Some(ReasoningMode::Budget(n)), _) => OutThinking {
            thinking_budget: i64::from(n),
            include_thoughts: include,
        },
        (Some(ReasoningMode::Adaptive), e) => OutThinking {
            thinking_budget: e.map_or(THINKING_BUDGET_DYNAMIC, for_effort),
            include_thoughts: include,
        },
        (None, Some(e)) => OutThinking {
            thinking_budget: for_effort(e),
            include_thoughts: None,
        },
        (None, None) => return None,
    })
}

/// What an OpenAI or Anthropic request asked that Gemini cannot do.
fn needs_more_than_gemini(key: &str, value: &str) -> bool {
    needs_openai(key, value) || (key == "mcp_servers" && value != "null" && value != "[]")
}

type SystemAndContents<'a> = (Vec<OutPart<'a>>, Vec<OutContent<'a>>);

fn encode_contents(req: &ChatRequest, native: bool) -> Result<SystemAndContents<'_>, FormatError> {
    // Gemini names a function response after its call: the names of every call in the history.
    let mut names: HashMap<&str, &str> = HashMap::new();
    for m in &req.messages {
        for p in &m.content {
            if let Part::ToolCall { id, name, .. } = p {
                names.insert(id, name);
            }
        }
    }
    let mut system: Vec<OutPart> = req
        .system
        .iter()
        .filter(|b| !b.text.is_empty())
        .map(|b| text_part(&b.text))
        .collect();
    let mut contents: Vec<OutContent> = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        let role = match m.role {
            Role::System => {
                system.extend(m.content.iter().filter_map(|p| match p {
                    Part::Text { text, .. } if !text.is_empty() => Some(text_part(text)),
                    _ => None,
                }));
                continue;
            }
            Role::User | Role::Tool => "user",
            Role::Assistant => "model",
        };
        let mut parts = Vec::with_capacity(m.content.len());
        for p in &m.content {
            encode_part(p, native, &names, &mut parts)?;
        }
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some(last) if last.role == role => last.parts.extend(parts),
            _ => contents.push(OutContent { role, parts }),
        }
    }
    Ok((system, contents))
}

fn text_part(text: &str) -> OutPart<'_> {
    OutPart::Text {
        text,
        thought: None,
        thought_signature: None,
    }
}

fn encode_part<'a>(
    p: &'a Part,
    native: bool,
    names: &HashMap<&str, &'a str>,
    parts: &mut Vec<OutPart<'a>>,
) -> Result<(), FormatError> {
    match p {
        // Gemini refuses empty text parts.
        Part::Text { text, .. } if text.is_empty() => {}
        Part::Text { text, .. } => parts.push(text_part(text)),
        Part::Image { source, .. } => parts.push(image_part(source)),
        Part::ToolCall {
            id,
            name,
            arguments_json,
            signature,
            ..
        } => parts.push(OutPart::Call {
            function_call: OutCall {
                name,
                args: request_arguments(id, arguments_json)?,
            },
            thought_signature: signature.as_deref().filter(|s| !s.is_empty()),
        }),
        Part::ToolResult {
            tool_call_id,
            content,
            is_error,
            ..
        } => {
            let Some(name) = names.get(tool_call_id.as_str()) else {
                return Err(FormatError::bad_request(
                    "invalid_field",
                    format!(
                        "tool result `{tool_call_id}` answers no tool call of the conversation \
                         (a Gemini provider needs the call's function name)"
                    ),
                ));
            };
            let mut texts: Vec<&str> = Vec::new();
            let mut media = Vec::new();
            for c in content {
                match c {
                    Part::Text { text, .. } => texts.push(text),
                    Part::Image { source, .. } => media.push(image_part(source)),
                    Part::Opaque { raw, .. } if native => media.push(OutPart::Raw(raw)),
                    Part::Opaque { kind, .. } => return Err(unsupported(kind)),
                    _ => {}
                }
            }
            let key = if *is_error { "error" } else { "output" };
            let mut response = serde_json::Map::new();
            response.insert(key.to_owned(), Value::String(texts.join("\n")));
            parts.push(OutPart::Response {
                function_response: OutResponse {
                    name,
                    response: Value::Object(response),
                },
            });
            // Images of a tool result follow it in the same turn.
            parts.extend(media);
        }
        // Thought summaries are not sent back; what Gemini needs of its reasoning rides in the
        // tool calls' signatures. Another provider's reasoning means nothing to Gemini.
        Part::Reasoning {
            text,
            signature: Some(sig),
        } if native => parts.push(OutPart::Text {
            text,
            thought: Some(true),
            thought_signature: Some(sig),
        }),
        Part::Reasoning { .. } | Part::RedactedReasoning { .. } => {}
        Part::Opaque { raw, .. } if native => parts.push(OutPart::Raw(raw)),
        Part::Opaque { kind, .. } => return Err(unsupported(kind)),
    }
    Ok(())
}

fn unsupported(kind: &str) -> FormatError {
    FormatError::bad_request(
        "unsupported_content",
        format!("content parts of type `{kind}` cannot be sent to a Gemini provider"),
    )
}

/// An image: `inlineData` for base64 data, `fileData` for a URL (its MIME type guessed from the
/// extension, `image/jpeg` when it names none).
pub(super) fn image_part(source: &ImageSource) -> OutPart<'_> {
    match source {
        ImageSource::Base64 { media_type, data } => OutPart::Inline {
            inline_data: OutBlob {
                mime_type: media_type,
                data,
            },
        },
        ImageSource::Url(url) => OutPart::File {
            file_data: OutFile {
                mime_type: mime_of_url(url),
                file_uri: url,
            },
        },
    }
}

/// The image MIME type a URL's extension names (`image/jpeg` when none).
pub(super) fn mime_of_url(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        _ => "image/jpeg",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::{anthropic, openai_chat};
    use serde_json::json;

    fn encode(req: &ChatRequest) -> Result<Value, FormatError> {
        let mut out = Vec::new();
        encode_request(req, "gemini-x", &EncodeOptions::default(), &mut out)?;
        Ok(serde_json::from_slice(&out).unwrap())
    }

    fn from_openai(body: &str) -> ChatRequest {
        openai_chat::decode_request(body.as_bytes()).unwrap()
    }

    #[test]
    fn openai_only_features_are_refused() {
        for extra in [
            r#""n":2"#,
            r#""logprobs":true"#,
            r#""audio":{"voice":"alloy","format":"wav"}"#,
            r#""logit_bias":{"50256":-100}"#,
            r#""tools":[{"type":"custom","custom":{"name":"x"}}]"#,
        ] {
            let req = from_openai(&format!(r#"{{"model":"m","messages":[],{extra}}}"#));
            assert_eq!(encode(&req).unwrap_err().status, 400, "{extra}");
        }
        let req = from_openai(
            r#"{"model":"m","messages":[],"seed":7,"frequency_penalty":0.5,"presence_penalty":null}"#,
        );
        let v = encode(&req).unwrap();
        assert_eq!(
            v["generationConfig"],
            json!({"seed":7,"frequencyPenalty":0.5})
        );
    }

    #[test]
    fn tool_results_need_their_call_and_are_named_after_it() {
        let req = from_openai(
            r#"{"model":"m","messages":[{"role":"tool","tool_call_id":"nope","content":"x"}]}"#,
        );
        assert_eq!(encode(&req).unwrap_err().code, "invalid_field");
        let req = anthropic::decode_request(
            br#"{"model":"m","max_tokens":5,"messages":[
              {"role":"user","content":"q"},
              {"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"f","input":{"a":1}}]},
              {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","is_error":true,"content":[{"type":"text","text":"boom"},{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBO"}}]}]}]}"#,
        )
        .unwrap();
        let v = encode(&req).unwrap();
        assert_eq!(
            v["contents"][2]["parts"],
            json!([{"functionResponse":{"name":"f","response":{"error":"boom"}}},
                   {"inlineData":{"mimeType":"image/png","data":"iVBO"}}])
        );
    }

    #[test]
    fn thinking_by_request_kind() {
        let cases = [
            (r#""reasoning_effort":"none""#, json!({"thinkingBudget":0})),
            (
                r#""reasoning_effort":"high""#,
                json!({"thinkingBudget":16384}),
            ),
            (
                r#""reasoning_effort":"xhigh""#,
                json!({"thinkingBudget":24576}),
            ),
        ];
        for (field, want) in cases {
            let req = from_openai(&format!(r#"{{"model":"m","messages":[],{field}}}"#));
            assert_eq!(
                encode(&req).unwrap()["generationConfig"]["thinkingConfig"],
                want
            );
        }
        let req = anthropic::decode_request(
            br#"{"model":"m","max_tokens":9000,"messages":[],"thinking":{"type":"enabled","budget_tokens":2048}}"#,
        )
        .unwrap();
        assert_eq!(
            encode(&req).unwrap()["generationConfig"]["thinkingConfig"],
            json!({"thinkingBudget":2048,"includeThoughts":true})
        );
        let req = anthropic::decode_request(
            br#"{"model":"m","max_tokens":9000,"messages":[],"thinking":{"type":"adaptive"}}"#,
        )
        .unwrap();
        assert_eq!(
            encode(&req).unwrap()["generationConfig"]["thinkingConfig"]["thinkingBudget"],
            -1
        );
    }

    #[test]
    fn image_urls_guess_their_type() {
        assert_eq!(mime_of_url("https://x/a.PNG?size=2"), "image/png");
        assert_eq!(mime_of_url("gs://bucket/photo"), "image/jpeg");
        assert_eq!(mime_of_url("https://x/doc.pdf"), "application/pdf");
    }

    #[test]
    fn bad_arguments_are_refused() {
        let req = from_openai(
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{oops"}}]}]}"#,
        );
        assert_eq!(encode(&req).unwrap_err().code, "invalid_tool_arguments");
    }
}

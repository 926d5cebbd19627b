//! Converse requests: the neutral model into the body of `POST /model/{modelId}/converse` (or
//! `/converse-stream`; the body is the same, and the model travels in the path, not the body).

use serde::Serialize;
use serde_json::value::RawValue;

use super::image_format;
use crate::formats::chat::{
    ChatRequest, Format, ImageSource, Part, ReasoningEffort, ReasoningMode, Role, ToolChoice,
};
use crate::formats::json::{raw_const, request_arguments, write_value};
use crate::formats::openai_chat::needs_openai;
use crate::formats::{
    reject_foreign, structured_output_tool, thinking_budget_tokens, truncate_message, EncodeInfo,
    EncodeOptions, FormatError, ANY_OBJECT_SCHEMA, EMPTY_OBJECT_SCHEMA, THINKING_BUDGET_MIN_TOKENS,
};

/// How a Bedrock provider is named in the refusals of what it cannot do.
const PROVIDER: &str = "a Bedrock provider";
/// The only cache point type Converse defines.
const CACHE_POINT: CachePoint = CachePoint { ty: "default" };
/// Fields of an Anthropic client's request that need what Converse cannot do.
const ANTHROPIC_FIELDS_REJECTED: &[&str] = &["mcp_servers", "container"];

#[derive(Serialize, Clone, Copy)]
struct CachePoint {
    #[serde(rename = "type")]
    ty: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutRequest<'a> {
    messages: Vec<OutMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<OutSystem<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inference_config: Option<OutInference<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<OutToolConfig<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    additional_model_request_fields: Option<OutAdditional>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutSystem<'a> {
    Text {
        text: &'a str,
    },
    CachePoint {
        #[serde(rename = "cachePoint")]
        cache_point: CachePoint,
    },
}

#[derive(Serialize)]
struct OutMessage<'a> {
    role: &'static str,
    content: Vec<OutBlock<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutBlock<'a> {
    Text {
        text: &'a str,
    },
    Image {
        image: OutImage<'a>,
    },
    ToolUse {
        #[serde(rename = "toolUse")]
        tool_use: OutToolUse<'a>,
    },
    ToolResult {
        #[serde(rename = "toolResult")]
        tool_result: OutToolResult<'a>,
    },
    Reasoning {
        #[serde(rename = "reasoningContent")]
        reasoning: OutReasoning<'a>,
    },
    CachePoint {
        #[serde(rename = "cachePoint")]
        cache_point: CachePoint,
    },
}

#[derive(Serialize)]
struct OutImage<'a> {
    format: &'static str,
    source: OutBytes<'a>,
}

/// A blob: base64 in Converse's JSON.
#[derive(Serialize)]
struct OutBytes<'a> {
    bytes: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutToolUse<'a> {
    tool_use_id: &'a str,
    name: &'a str,
    input: &'a RawValue,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutToolResult<'a> {
    tool_use_id: &'a str,
    content: Vec<OutResultBlock<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutResultBlock<'a> {
    Text { text: &'a str },
    Image { image: OutImage<'a> },
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutReasoning<'a> {
    Text {
        #[serde(rename = "reasoningText")]
        reasoning_text: OutReasoningText<'a>,
    },
    Redacted {
        #[serde(rename = "redactedContent")]
        redacted_content: &'a str,
    },
}

#[derive(Serialize)]
struct OutReasoningText<'a> {
    text: &'a str,
    signature: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutInference<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop_sequences: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutToolConfig<'a> {
    tools: Vec<OutTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<OutToolChoice<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutTool<'a> {
    Spec {
        #[serde(rename = "toolSpec")]
        tool_spec: OutToolSpec<'a>,
    },
    CachePoint {
        #[serde(rename = "cachePoint")]
        cache_point: CachePoint,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutToolSpec<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: OutSchema<'a>,
}

#[derive(Serialize)]
struct OutSchema<'a> {
    json: &'a RawValue,
}

/// `{}`: the payload of `toolChoice.auto` and `toolChoice.any`.
#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
#[serde(untagged)]
enum OutToolChoice<'a> {
    Auto { auto: Empty },
    Any { any: Empty },
    Tool { tool: OutNamed<'a> },
}

#[derive(Serialize)]
struct OutNamed<'a> {
    name: &'a str,
}

/// `additionalModelRequestFields`: what Converse has no field of its own for, in the request
/// shape of Anthropic's models on Bedrock.
#[derive(Serialize)]
struct OutAdditional {
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<OutThinking>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u32>,
}

#[derive(Serialize)]
struct OutThinking {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    budget_tokens: Option<u32>,
}

/// Encode a Converse request body. `upstream_model` is not written: Converse names the model in
/// the URL. Rejected (400): image URLs (Converse takes image bytes only), images of a type it
/// does not take, content blocks and server tools without a Converse form, and what the source
/// format asked that Converse cannot do (OpenAI `n` > 1, `logprobs`, audio, `logit_bias`, legacy
/// `functions`; Anthropic `mcp_servers`). A structured answer is asked for as a forced tool
/// call, as for Anthropic. Reasoning goes in `additionalModelRequestFields.thinking`, which
/// Anthropic's models on Bedrock read.
pub fn encode_request(
    req: &ChatRequest,
    _upstream_model: &str,
    opts: &EncodeOptions,
    out: &mut Vec<u8>,
) -> Result<EncodeInfo, FormatError> {
    reject_foreign(req, PROVIDER, |k, v| needs_more_than_converse(req, k, v))?;
    let mut info = EncodeInfo::default();
    let (system, messages) = encode_messages(req)?;
    let (tools, forced_tool) = tools(req)?;
    if let Some(name) = forced_tool {
        info.structured_output_tool = Some(name.to_owned());
    }
    let tool_config = tool_config(req, tools, forced_tool);
    let thinking = thinking(req, opts, forced_tool.is_some());
    // Anthropic's models refuse sampling changes while thinking: a request from another format
    // that asked for both gets the thinking (as with an Anthropic provider).
    let sampling_free = req.source == Format::Anthropic || thinking.is_none();
    let inference = inference_config(req, opts, thinking.is_some(), sampling_free);
    let top_k = req.top_k.filter(|_| sampling_free);
    let wire = OutRequest {
        messages,
        system,
        inference_config: inference,
        tool_config,
        additional_model_request_fields: (thinking.is_some() || top_k.is_some())
            .then_some(OutAdditional { thinking, top_k }),
    };
    out.reserve(req.approx_json_bytes());
    write_value(out, &wire);
    Ok(info)
}

/// The tool specs (a `cachePoint` after each tool marked for caching), and the tool that carries
/// a structured answer, added last when one was asked for.
fn tools(req: &ChatRequest) -> Result<(Vec<OutTool<'_>>, Option<&str>), FormatError> {
    let empty_schema = raw_const(EMPTY_OBJECT_SCHEMA);
    let mut tools: Vec<OutTool> = Vec::with_capacity(req.tools.len() + 1);
    for t in &req.tools {
        tools.push(OutTool::Spec {
            tool_spec: OutToolSpec {
                name: &t.name,
                description: t.description.as_deref().filter(|d| !d.is_empty()),
                input_schema: OutSchema {
                    json: t.input_schema.as_deref().unwrap_or(empty_schema),
                },
            },
        });
        if t.cache_control.is_some() {
            tools.push(OutTool::CachePoint {
                cache_point: CACHE_POINT,
            });
        }
    }
    let Some(so) = &req.structured_output else {
        return Ok((tools, None));
    };
    let schema = so.schema.as_deref().unwrap_or(raw_const(ANY_OBJECT_SCHEMA));
    let (name, description) = structured_output_tool(req, so, schema, PROVIDER)?;
    tools.push(OutTool::Spec {
        tool_spec: OutToolSpec {
            name,
            description: Some(description),
            input_schema: OutSchema { json: schema },
        },
    });
    Ok((tools, Some(name)))
}

/// `inferenceConfig`, or `None` when the request sets none of it. `maxTokens` is the client's, or
/// `max_tokens_default` when thinking needs a limit above its budget.
fn inference_config<'a>(
    req: &'a ChatRequest,
    opts: &EncodeOptions,
    thinking_on: bool,
    sampling_free: bool,
) -> Option<OutInference<'a>> {
    let inference = OutInference {
        max_tokens: req
            .max_tokens
            .or(thinking_on.then_some(opts.max_tokens_default)),
        // Converse's models take 0..1 (OpenAI's range is 0..2): a larger value is sent as 1.
        temperature: req
            .temperature
            .filter(|_| sampling_free)
            .map(|t| t.min(1.0)),
        top_p: req
            .top_p
            .map(|p| if sampling_free { p } else { p.clamp(0.95, 1.0) }),
        stop_sequences: &req.stop,
    };
    let any = inference.max_tokens.is_some()
        || inference.temperature.is_some()
        || inference.top_p.is_some()
        || !inference.stop_sequences.is_empty();
    any.then_some(inference)
}

/// What the source format asked that Converse cannot do.
fn needs_more_than_converse(req: &ChatRequest, key: &str, value: &str) -> bool {
    match req.source {
        Format::OpenAiChat => needs_openai(key, value),
        Format::Anthropic => ANTHROPIC_FIELDS_REJECTED.contains(&key),
        _ => false,
    }
}

/// `toolConfig`: the tools and the choice. Converse has no "none": a `none` choice leaves the
/// tools out, unless the conversation holds tool calls or results (Converse then requires the
/// tools), in which case they are sent without a choice. A structured answer sent as a tool
/// forces that tool (or some tool, when the client lets the model use tools of its own).
fn tool_config<'a>(
    req: &'a ChatRequest,
    tools: Vec<OutTool<'a>>,
    forced_tool: Option<&'a str>,
) -> Option<OutToolConfig<'a>> {
    if tools.is_empty() {
        return None;
    }
    let named = |name| {
        Some(OutToolChoice::Tool {
            tool: OutNamed { name },
        })
    };
    let tool_choice = match (forced_tool, &req.tool_choice) {
        (_, Some(ToolChoice::Tool(name))) => named(name.as_str()),
        (Some(_), None | Some(ToolChoice::Auto | ToolChoice::Required))
            if !req.tools.is_empty() =>
        {
            Some(OutToolChoice::Any { any: Empty {} })
        }
        (Some(name), _) => named(name),
        (None, Some(ToolChoice::Auto)) => Some(OutToolChoice::Auto { auto: Empty {} }),
        (None, Some(ToolChoice::Required)) => Some(OutToolChoice::Any { any: Empty {} }),
        (None, Some(ToolChoice::None)) if !has_tool_blocks(req) => return None,
        (None, Some(ToolChoice::None) | None) => None,
    };
    Some(OutToolConfig { tools, tool_choice })
}

fn has_tool_blocks(req: &ChatRequest) -> bool {
    req.messages.iter().any(|m| {
        m.content
            .iter()
            .any(|p| matches!(p, Part::ToolCall { .. } | Part::ToolResult { .. }))
    })
}

/// `thinking` for Anthropic's models: a client's own budget or adaptive thinking is passed on;
/// an effort alone (OpenAI `reasoning_effort`) becomes a budget from [`thinking_budget_tokens`]
/// kept below `max_tokens` (none when that leaves less than the minimum). A forced tool
/// (structured answer) rules thinking out.
fn thinking(req: &ChatRequest, opts: &EncodeOptions, forced_tool: bool) -> Option<OutThinking> {
    let r = req.reasoning.as_ref()?;
    if forced_tool {
        return None;
    }
    match (r.mode, r.effort) {
        (Some(ReasoningMode::Disabled), _) | (None, Some(ReasoningEffort::None)) => None,
        (Some(ReasoningMode::Budget(n)), _) => Some(OutThinking {
            ty: "enabled",
            budget_tokens: Some(n),
        }),
        (Some(ReasoningMode::Adaptive), _) => Some(OutThinking {
            ty: "adaptive",
            budget_tokens: None,
        }),
        (None, Some(level)) => {
            let max_tokens = req.max_tokens.unwrap_or(opts.max_tokens_default);
            let budget = thinking_budget_tokens(level).min(max_tokens.saturating_sub(1));
            (budget >= THINKING_BUDGET_MIN_TOKENS).then_some(OutThinking {
                ty: "enabled",
                budget_tokens: Some(budget),
            })
        }
        (None, None) => None,
    }
}

type SystemAndMessages<'a> = (Vec<OutSystem<'a>>, Vec<OutMessage<'a>>);

/// The system prompt (mid-conversation instructions moved to its end; a `cachePoint` after each
/// block marked for caching) and the turns: tool results ride in user turns, and consecutive
/// turns of one side are merged (Converse wants them to alternate).
fn encode_messages(req: &ChatRequest) -> Result<SystemAndMessages<'_>, FormatError> {
    let mut system: Vec<OutSystem> = Vec::with_capacity(req.system.len());
    for b in &req.system {
        if !b.text.is_empty() {
            system.push(OutSystem::Text { text: &b.text });
        }
        if b.cache_control.is_some() {
            system.push(OutSystem::CachePoint {
                cache_point: CACHE_POINT,
            });
        }
    }
    let mut messages: Vec<OutMessage> = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        let role = match m.role {
            Role::System => {
                for p in &m.content {
                    if let Part::Text {
                        text,
                        cache_control,
                    } = p
                    {
                        if !text.is_empty() {
                            system.push(OutSystem::Text { text });
                        }
                        if cache_control.is_some() {
                            system.push(OutSystem::CachePoint {
                                cache_point: CACHE_POINT,
                            });
                        }
                    }
                }
                continue;
            }
            Role::User | Role::Tool => "user",
            Role::Assistant => "assistant",
        };
        let content = out_blocks(&m.content)?;
        if content.is_empty() {
            continue;
        }
        match messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(content),
            _ => messages.push(OutMessage { role, content }),
        }
    }
    Ok((system, messages))
}

fn cache_point<'a>(out: &mut Vec<OutBlock<'a>>, marked: bool) {
    if marked {
        out.push(OutBlock::CachePoint {
            cache_point: CACHE_POINT,
        });
    }
}

fn out_blocks(parts: &[Part]) -> Result<Vec<OutBlock<'_>>, FormatError> {
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        match p {
            Part::Text {
                text,
                cache_control,
            } => {
                // Converse rejects blank text blocks.
                if !text.trim().is_empty() {
                    out.push(OutBlock::Text { text });
                }
                cache_point(&mut out, cache_control.is_some());
            }
            Part::Image {
                source,
                cache_control,
                ..
            } => {
                out.push(OutBlock::Image {
                    image: out_image(source)?,
                });
                cache_point(&mut out, cache_control.is_some());
            }
            Part::ToolCall {
                id,
                name,
                arguments_json,
                cache_control,
                ..
            } => {
                out.push(OutBlock::ToolUse {
                    tool_use: OutToolUse {
                        tool_use_id: id,
                        name,
                        input: request_arguments(id, arguments_json)?,
                    },
                });
                cache_point(&mut out, cache_control.is_some());
            }
            Part::ToolResult {
                tool_call_id,
                content,
                is_error,
                cache_control,
            } => {
                out.push(OutBlock::ToolResult {
                    tool_result: OutToolResult {
                        tool_use_id: tool_call_id,
                        content: result_blocks(content)?,
                        status: is_error.then_some("error"),
                    },
                });
                cache_point(&mut out, cache_control.is_some());
            }
            // Anthropic's models verify signatures: reasoning without one cannot be sent back.
            Part::Reasoning {
                text,
                signature: Some(signature),
            } if !signature.is_empty() => out.push(OutBlock::Reasoning {
                reasoning: OutReasoning::Text {
                    reasoning_text: OutReasoningText { text, signature },
                },
            }),
            Part::Reasoning { .. } => {}
            Part::RedactedReasoning { data } => out.push(OutBlock::Reasoning {
                reasoning: OutReasoning::Redacted {
                    redacted_content: data,
                },
            }),
            Part::Opaque { kind, .. } => return Err(unsupported_content(kind)),
        }
    }
    Ok(out)
}

fn unsupported_content(kind: &str) -> FormatError {
    FormatError::bad_request(
        "unsupported_content",
        format!("content parts of type `{kind}` cannot be sent to a Bedrock provider"),
    )
}

/// A tool result's content: text and images (blank texts left out).
fn result_blocks(parts: &[Part]) -> Result<Vec<OutResultBlock<'_>>, FormatError> {
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        match p {
            Part::Text { text, .. } if text.trim().is_empty() => {}
            Part::Text { text, .. } => out.push(OutResultBlock::Text { text }),
            Part::Image { source, .. } => out.push(OutResultBlock::Image {
                image: out_image(source)?,
            }),
            Part::Opaque { kind, .. } => return Err(unsupported_content(kind)),
            other => {
                let kind = match other {
                    Part::ToolCall { .. } => "tool_call",
                    Part::ToolResult { .. } => "tool_result",
                    _ => "reasoning",
                };
                return Err(unsupported_content(kind));
            }
        }
    }
    Ok(out)
}

fn out_image(source: &ImageSource) -> Result<OutImage<'_>, FormatError> {
    match source {
        ImageSource::Url(_) => Err(FormatError::bad_request(
            "unsupported_content",
            "image URLs cannot be sent to a Bedrock provider: Converse takes the image's bytes; \
             send it as base64 data (a data: URL, or an Anthropic base64 source)",
        )),
        ImageSource::Base64 { media_type, data } => {
            let format = image_format(media_type).ok_or_else(|| {
                FormatError::bad_request(
                    "unsupported_content",
                    format!(
                        "images of type `{}` cannot be sent to a Bedrock provider (png, jpeg, gif and webp can)",
                        truncate_message(media_type, 64)
                    ),
                )
            })?;
            Ok(OutImage {
                format,
                source: OutBytes { bytes: data },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::{anthropic, openai_chat};
    use serde_json::{json, Value};

    fn encode(req: &ChatRequest) -> Result<(Value, EncodeInfo), FormatError> {
        let mut out = Vec::new();
        let info = encode_request(req, "ignored", &EncodeOptions::default(), &mut out)?;
        Ok((serde_json::from_slice(&out).unwrap(), info))
    }

    fn from_openai(body: Value) -> ChatRequest {
        openai_chat::decode_request(body.to_string().as_bytes()).unwrap()
    }

    fn from_anthropic(body: Value) -> ChatRequest {
        anthropic::decode_request(body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn a_plain_openai_request() {
        let req = from_openai(json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": [{"type": "text", "text": "More"}]}
            ],
            "max_tokens": 100, "temperature": 1.5, "top_p": 0.9, "stop": "END"
        }));
        let (v, info) = encode(&req).unwrap();
        assert_eq!(info, EncodeInfo::default());
        assert_eq!(
            v,
            json!({
                "messages": [
                    {"role": "user", "content": [{"text": "Hi"}]},
                    {"role": "assistant", "content": [{"text": "Hello"}]},
                    {"role": "user", "content": [{"text": "More"}]}
                ],
                "system": [{"text": "Be brief."}],
                "inferenceConfig": {"maxTokens": 100, "temperature": 1.0, "topP": 0.9, "stopSequences": ["END"]}
            })
        );
        assert!(v.get("modelId").is_none() && v.get("model").is_none());
    }

    #[test]
    fn tools_calls_and_results() {
        let req = from_openai(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "user", "content": "thanks"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "required"
        }));
        let (v, _) = encode(&req).unwrap();
        assert_eq!(
            v["messages"],
            json!([
                {"role": "user", "content": [{"text": "weather?"}]},
                {"role": "assistant", "content": [{"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}}]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "call_1", "content": [{"text": "sunny"}]}},
                    {"text": "thanks"}
                ]}
            ])
        );
        assert_eq!(
            v["toolConfig"],
            json!({
                "tools": [{"toolSpec": {"name": "get_weather", "description": "Weather", "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}}}}}],
                "toolChoice": {"any": {}}
            })
        );
    }

    #[test]
    fn tool_choices() {
        let with = |choice: Value| {
            let mut body = json!({
                "model": "m", "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}]
            });
            body["tool_choice"] = choice;
            encode(&from_openai(body)).unwrap().0
        };
        assert_eq!(
            with(json!("auto"))["toolConfig"]["toolChoice"],
            json!({"auto": {}})
        );
        assert_eq!(
            with(json!({"type": "function", "function": {"name": "f"}}))["toolConfig"]
                ["toolChoice"],
            json!({"tool": {"name": "f"}})
        );
        assert_eq!(
            with(json!("auto"))["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"],
            json!({"type": "object", "properties": {}})
        );
        // Converse has no "none": the tools are left out.
        assert!(with(json!("none")).get("toolConfig").is_none());
    }

    #[test]
    fn anthropic_cache_control_becomes_cache_points() {
        let req = from_anthropic(json!({
            "model": "m", "max_tokens": 10,
            "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
            "tools": [{"name": "t", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "long doc", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "question"}
            ]}]
        }));
        let (v, _) = encode(&req).unwrap();
        assert_eq!(
            v["system"],
            json!([{"text": "sys"}, {"cachePoint": {"type": "default"}}])
        );
        assert_eq!(
            v["messages"][0]["content"],
            json!([{"text": "long doc"}, {"cachePoint": {"type": "default"}}, {"text": "question"}])
        );
        assert_eq!(
            v["toolConfig"]["tools"][1],
            json!({"cachePoint": {"type": "default"}})
        );
    }

    #[test]
    fn images_need_bytes() {
        let req = from_openai(json!({
            "model": "m",
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]}]
        }));
        let (v, _) = encode(&req).unwrap();
        assert_eq!(
            v["messages"][0]["content"][0],
            json!({"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}})
        );
        let req = from_openai(json!({
            "model": "m",
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
            ]}]
        }));
        let e = encode(&req).unwrap_err();
        assert_eq!((e.status, e.code), (400, "unsupported_content"));
        assert!(e.message.contains("image URLs"), "{}", e.message);
    }

    #[test]
    fn tool_results_with_errors_and_images() {
        let req = from_anthropic(json!({
            "model": "m", "max_tokens": 10,
            "tools": [{"name": "shot", "input_schema": {"type": "object"}}],
            "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "shot", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": true, "content": [
                    {"type": "text", "text": "failed"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}}
                ]}]}
            ]
        }));
        let (v, _) = encode(&req).unwrap();
        assert_eq!(
            v["messages"][2]["content"][0],
            json!({"toolResult": {"toolUseId": "toolu_1", "status": "error", "content": [
                {"text": "failed"},
                {"image": {"format": "jpeg", "source": {"bytes": "/9j/"}}}
            ]}})
        );
    }

    #[test]
    fn reasoning_and_thinking() {
        let req = from_anthropic(json!({
            "model": "m", "max_tokens": 4000,
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "ZW5j"},
                    {"type": "text", "text": "a"}
                ]},
                {"role": "user", "content": "q2"}
            ]
        }));
        let (v, _) = encode(&req).unwrap();
        assert_eq!(
            v["additionalModelRequestFields"],
            json!({"thinking": {"type": "enabled", "budget_tokens": 2048}})
        );
        assert_eq!(
            v["messages"][1]["content"],
            json!([
                {"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "sig"}}},
                {"reasoningContent": {"redactedContent": "ZW5j"}},
                {"text": "a"}
            ])
        );
        // An OpenAI effort becomes a budget below maxTokens; sampling changes give way.
        let req = from_openai(json!({
            "model": "m", "messages": [{"role": "user", "content": "q"}],
            "reasoning_effort": "high", "max_tokens": 10000, "temperature": 0.2
        }));
        let (v, _) = encode(&req).unwrap();
        assert_eq!(
            v["additionalModelRequestFields"]["thinking"],
            json!({"type": "enabled", "budget_tokens": 9999})
        );
        assert!(v["inferenceConfig"].get("temperature").is_none());
        assert_eq!(v["inferenceConfig"]["maxTokens"], 10000);
    }

    #[test]
    fn structured_output_is_a_forced_tool() {
        let req = from_openai(json!({
            "model": "m", "messages": [{"role": "user", "content": "q"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}}
        }));
        let (v, info) = encode(&req).unwrap();
        assert_eq!(info.structured_output_tool.as_deref(), Some("answer"));
        assert_eq!(
            v["toolConfig"]["toolChoice"],
            json!({"tool": {"name": "answer"}})
        );
        assert_eq!(v["toolConfig"]["tools"][0]["toolSpec"]["name"], "answer");
    }

    #[test]
    fn what_converse_cannot_do_is_refused() {
        for (body, code) in [
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}),
                "unsupported_parameter",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": true}),
                "unsupported_parameter",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]}]}),
                "unsupported_content",
            ),
        ] {
            let e = encode(&from_openai(body)).unwrap_err();
            assert_eq!((e.status, e.code), (400, code));
        }
        let req = from_anthropic(json!({
            "model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "web_search_20250305", "name": "web_search"}]
        }));
        assert_eq!(encode(&req).unwrap_err().code, "unsupported_tool");
    }
}

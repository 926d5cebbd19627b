//! OpenAI Responses requests: a client's body into the neutral model, for a provider that does not
//! have the Responses API. Only what such a provider can carry is kept (see the module header of
//! `formats::responses`); what would change the answer and cannot be carried is refused with 400.

use std::borrow::Cow;

use serde::de::{IgnoredAny, MapAccess};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::reasoning_state::{self, ReasoningState};
use crate::formats::chat::{
    split_tool_call_id, ChatRequest, Format, Message, Part, ReasoningEffort, ReasoningRequest,
    Role, StructuredOutput, TextBlock, Tool, ToolChoice,
};
use crate::formats::json::{
    decode_top_level, own, parse_raw, required_model, CowStr, StrOrSeq, TopLevel,
};
use crate::formats::openai_chat::image_source;
use crate::formats::{EncodeInfo, EncodeOptions, FormatError};

#[derive(Default)]
struct Wire<'a> {
    model: Option<CowStr<'a>>,
    input: Option<StrOrSeq<'a, &'a RawValue>>,
    instructions: Option<CowStr<'a>>,
    tools: Option<Vec<&'a RawValue>>,
    tool_choice: Option<&'a RawValue>,
    parallel_tool_calls: Option<bool>,
    max_output_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_logprobs: Option<u32>,
    text: Option<WireTextConfig<'a>>,
    reasoning: Option<WireReasoning<'a>>,
    user: Option<CowStr<'a>>,
    safety_identifier: Option<CowStr<'a>>,
    stream: Option<bool>,
    previous_response_id: Option<CowStr<'a>>,
    background: Option<bool>,
    /// `include`: what the answer should carry beyond its defaults.
    include: Option<Vec<CowStr<'a>>>,
    /// Fields that need state kept at OpenAI (`conversation`, `prompt`): present and not null.
    stateful: Option<&'static str>,
    /// Unknown fields are not kept: no provider of another API could use them.
    dropped: Vec<(String, crate::formats::RawJson)>,
}

impl<'de> TopLevel<'de> for Wire<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "model" => self.model = map.next_value()?,
            "input" => self.input = map.next_value()?,
            "instructions" => self.instructions = map.next_value()?,
            "tools" => self.tools = map.next_value()?,
            "tool_choice" => self.tool_choice = map.next_value()?,
            "parallel_tool_calls" => self.parallel_tool_calls = map.next_value()?,
            "max_output_tokens" => self.max_output_tokens = map.next_value()?,
            "temperature" => self.temperature = map.next_value()?,
            "top_p" => self.top_p = map.next_value()?,
            "top_logprobs" => self.top_logprobs = map.next_value()?,
            "text" => self.text = map.next_value()?,
            "reasoning" => self.reasoning = map.next_value()?,
            "user" => self.user = map.next_value()?,
            "safety_identifier" => self.safety_identifier = map.next_value()?,
            "stream" => self.stream = map.next_value()?,
            "previous_response_id" => self.previous_response_id = map.next_value()?,
            "background" => self.background = map.next_value()?,
            "include" => self.include = map.next_value()?,
            "conversation" | "prompt" => {
                let v: Option<&RawValue> = map.next_value()?;
                if v.is_some() {
                    self.stateful = Some(if key == "prompt" {
                        "prompt"
                    } else {
                        "conversation"
                    });
                }
            }
            // Everything else (`store`, `metadata`, `prompt_cache_key`,
            // `service_tier`, `truncation`, `stream_options`, the gateway's own `fallbacks`,
            // fields added later) has no meaning for another provider.
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(true)
    }

    fn extra(&mut self) -> &mut Vec<(String, crate::formats::RawJson)> {
        &mut self.dropped
    }
}

#[derive(Deserialize)]
struct WireTextConfig<'a> {
    #[serde(borrow, default)]
    format: Option<WireFormat<'a>>,
}

#[derive(Deserialize)]
struct WireFormat<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    schema: Option<&'a RawValue>,
    #[serde(default)]
    strict: Option<bool>,
}

#[derive(Deserialize)]
struct WireReasoning<'a> {
    #[serde(borrow, default)]
    effort: Option<Cow<'a, str>>,
}

/// One input item (every kind's fields; `type` says which apply).
#[derive(Deserialize)]
struct WireItem<'a> {
    #[serde(rename = "type", borrow, default)]
    ty: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<StrOrSeq<'a, &'a RawValue>>,
    #[serde(borrow, default)]
    call_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
    /// A custom tool call's input.
    #[serde(borrow, default)]
    input: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    output: Option<StrOrSeq<'a, &'a RawValue>>,
    #[serde(borrow, default)]
    summary: Option<Vec<WireText<'a>>>,
    /// A reasoning item's opaque state: the gateway's envelope, or OpenAI's own.
    #[serde(borrow, default)]
    encrypted_content: Option<Cow<'a, str>>,
}

/// A content part of a message, a tool output, or a reasoning item's summary or content.
#[derive(Deserialize)]
struct WirePart<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    image_url: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    detail: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireText<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireTool<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    parameters: Option<&'a RawValue>,
    #[serde(default)]
    strict: Option<bool>,
}

#[derive(Deserialize)]
struct WireToolChoice<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    mode: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tools: Option<Vec<WireToolChoice<'a>>>,
}

/// The `include` entry that asks for reasoning items' `encrypted_content`.
const INCLUDE_REASONING_STATE: &str = "reasoning.encrypted_content";

fn unsupported(what: impl Into<Cow<'static, str>>) -> FormatError {
    FormatError::bad_request("unsupported_parameter", what)
}

/// Decode a client's Responses request for a provider without the Responses API. Refused (400):
/// `previous_response_id` (`previous_response_id_unsupported`), `conversation`, `prompt`,
/// `background: true`, `top_logprobs` above 0, item references, a `tool_choice` that forces a
/// hosted or custom tool, and stored files (`file_id`). Dropped: hosted and custom tools and the
/// items of hosted tool calls, `encrypted_content` the gateway did not write (OpenAI's), and
/// every field without a neutral meaning. A reasoning item whose `encrypted_content` is the
/// gateway's envelope becomes the signed or redacted reasoning it carries.
pub fn decode_request(body: &[u8]) -> Result<ChatRequest, FormatError> {
    let w: Wire = decode_top_level(body)?;
    let model = required_model(w.model, "you must provide a model parameter")?;
    if w.previous_response_id.is_some() {
        return Err(previous_response_id_unsupported());
    }
    if let Some(field) = w.stateful {
        return Err(unsupported(format!(
            "`{field}` refers to state kept by OpenAI; the gateway keeps none: send the whole conversation in `input`"
        )));
    }
    if w.background == Some(true) {
        return Err(unsupported(
            "`background: true` needs a response stored by OpenAI; this provider answers in the foreground only",
        ));
    }
    if w.top_logprobs.unwrap_or(0) > 0 {
        return Err(unsupported(
            "`top_logprobs` cannot be translated for this provider",
        ));
    }
    let mut req = ChatRequest {
        model,
        source: Format::OpenAiResponses,
        parallel_tool_calls: w.parallel_tool_calls,
        max_tokens: w.max_output_tokens,
        temperature: w.temperature,
        top_p: w.top_p,
        user_id: w.user.or(w.safety_identifier).map(|u| u.0.into_owned()),
        stream: w.stream.unwrap_or(false),
        reasoning_state: w
            .include
            .iter()
            .flatten()
            .any(|i| i.0 == INCLUDE_REASONING_STATE),
        ..ChatRequest::default()
    };
    if let Some(CowStr(text)) = w.instructions {
        req.system.push(TextBlock {
            text: text.into_owned(),
            cache_control: None,
        });
    }
    match w.input {
        Some(StrOrSeq::Str(text)) => req.messages.push(Message {
            role: Role::User,
            content: vec![Part::text(text)],
        }),
        Some(StrOrSeq::Seq(items)) => decode_items(&items, &mut req)?,
        Some(StrOrSeq::Null) | None => {
            return Err(FormatError::bad_request(
                "missing_input",
                "you must provide an input parameter",
            ))
        }
    }
    for raw in w.tools.unwrap_or_default() {
        let t: WireTool = parse_raw(raw, "a tool")?;
        // Hosted tools (web_search, file_search, namespace, mcp, ...) and custom tools are
        // OpenAI's own: dropped.
        if t.ty == "function" {
            req.tools.push(Tool {
                name: t.name.map(Cow::into_owned).unwrap_or_default(),
                description: t.description.map(Cow::into_owned),
                input_schema: t.parameters.filter(|p| p.get() != "null").map(own),
                strict: t.strict,
                cache_control: None,
            });
        }
    }
    if let Some(raw) = w.tool_choice {
        req.tool_choice = Some(decode_tool_choice(raw, &mut req.tools)?);
    }
    if let Some(format) = w.text.and_then(|t| t.format) {
        req.structured_output = structured_output(format)?;
    }
    if let Some(e) = w.reasoning.and_then(|r| r.effort) {
        let effort = ReasoningEffort::parse(&e).ok_or_else(|| {
            FormatError::bad_request(
                "invalid_field",
                format!("`reasoning.effort`: unknown value `{e}`"),
            )
        })?;
        req.reasoning = Some(ReasoningRequest {
            effort: Some(effort),
            ..ReasoningRequest::default()
        });
    }
    Ok(req)
}

/// `previous_response_id` names a response stored by OpenAI; the gateway keeps no conversation
/// state (and may send the next turn to another key, provider or fallback), so it is refused
/// for every provider.
pub fn previous_response_id_unsupported() -> FormatError {
    FormatError::bad_request(
        "previous_response_id_unsupported",
        "`previous_response_id` is not supported: the gateway keeps no conversation state; send the whole conversation in `input` (with `store: false`)",
    )
}

/// The input items, in order. Consecutive assistant items (messages, function calls, reasoning)
/// make one assistant turn; each tool output is a `tool` message.
fn decode_items(items: &[&RawValue], req: &mut ChatRequest) -> Result<(), FormatError> {
    req.messages.reserve(items.len());
    let mut leading = true;
    for (i, raw) in items.iter().enumerate() {
        let item: WireItem = parse_raw(raw, "an input item")?;
        let ty = item
            .ty
            .as_deref()
            .unwrap_or(if item.role.is_some() { "message" } else { "" });
        match ty {
            "message" => {
                let role = item.role.as_deref().unwrap_or_default();
                if leading && matches!(role, "system" | "developer") {
                    req.push_system_message(role, content_parts(item.content, i)?);
                    continue;
                }
                let role = match role {
                    "system" | "developer" => Role::System,
                    "user" => Role::User,
                    "assistant" => Role::Assistant,
                    other => {
                        return Err(FormatError::bad_request(
                            "invalid_role",
                            format!("input[{i}]: role `{other}` is not supported (use system, developer, user or assistant)"),
                        ))
                    }
                };
                leading = false;
                let parts = content_parts(item.content, i)?;
                match role {
                    Role::Assistant => assistant_turn(req).extend(parts),
                    _ => req.messages.push(Message {
                        role,
                        content: parts,
                    }),
                }
            }
            "function_call" | "custom_tool_call" => {
                leading = false;
                let Some(id) = item.call_id else {
                    return Err(FormatError::bad_request(
                        "invalid_field",
                        format!("input[{i}]: a {ty} needs `call_id`"),
                    ));
                };
                let arguments_json = match (ty, item.input) {
                    // A custom tool's free-form input, as the one argument of a function.
                    ("custom_tool_call", Some(input)) => {
                        serde_json::json!({ "input": input }).to_string()
                    }
                    _ => item.arguments.map(Cow::into_owned).unwrap_or_default(),
                };
                // A provider's signature rides in the id the client was given.
                let (id, signature) = split_tool_call_id(&id);
                assistant_turn(req).push(Part::ToolCall {
                    id,
                    name: item.name.map(Cow::into_owned).unwrap_or_default(),
                    arguments_json,
                    cache_control: None,
                    signature,
                });
            }
            "function_call_output" | "custom_tool_call_output" => {
                leading = false;
                let Some(id) = item.call_id else {
                    return Err(FormatError::bad_request(
                        "missing_tool_call_id",
                        format!("input[{i}]: a {ty} needs `call_id`"),
                    ));
                };
                req.messages.push(Message {
                    role: Role::Tool,
                    content: vec![Part::ToolResult {
                        tool_call_id: split_tool_call_id(&id).0,
                        content: content_parts(item.output, i)?,
                        is_error: false,
                        cache_control: None,
                    }],
                });
            }
            "reasoning" => {
                leading = false;
                if let Some(part) = reasoning_part(item) {
                    assistant_turn(req).push(part);
                }
            }
            "item_reference" => {
                return Err(unsupported(format!(
                    "input[{i}]: `item_reference` refers to an item stored by OpenAI; the gateway keeps no state: send the item itself"
                )))
            }
            "" => {
                return Err(FormatError::bad_request(
                    "invalid_field",
                    format!("input[{i}]: an input item needs `type` (or a message `role`)"),
                ))
            }
            // Calls of hosted tools and their results (web_search_call, file_search_call,
            // computer_call, local_shell_call, mcp_call, image_generation_call, ...), compaction
            // items and item types added later: OpenAI's own, dropped.
            _ => leading = false,
        }
    }
    Ok(())
}

/// The neutral part of a `reasoning` item: the reasoning the gateway's envelope in
/// `encrypted_content` carries (a signed thinking block, the summary its text, even when empty;
/// or a redacted one), else the summary alone, unsigned (`None` when empty). Content the
/// gateway did not write (OpenAI's own) is dropped: no other provider could read it.
fn reasoning_part(item: WireItem) -> Option<Part> {
    let text: Vec<Cow<str>> = item
        .summary
        .unwrap_or_default()
        .into_iter()
        .filter_map(|s| s.text)
        .filter(|t| !t.is_empty())
        .collect();
    let text = text.join("\n\n");
    match item
        .encrypted_content
        .as_deref()
        .and_then(reasoning_state::decode)
    {
        Some(ReasoningState::Signature(signature)) => Some(Part::Reasoning {
            text,
            signature: Some(signature),
        }),
        Some(ReasoningState::Redacted(data)) => Some(Part::RedactedReasoning { data }),
        None => (!text.is_empty()).then_some(Part::Reasoning {
            text,
            signature: None,
        }),
    }
}

/// The parts of the assistant turn being built: the last message when it is the assistant's,
/// else a new one.
fn assistant_turn(req: &mut ChatRequest) -> &mut Vec<Part> {
    let open = req
        .messages
        .last()
        .is_some_and(|m| m.role == Role::Assistant);
    if !open {
        req.messages.push(Message {
            role: Role::Assistant,
            content: Vec::new(),
        });
    }
    let last = req.messages.len() - 1;
    &mut req.messages[last].content
}

fn content_parts(content: Option<StrOrSeq<&RawValue>>, i: usize) -> Result<Vec<Part>, FormatError> {
    match content {
        None | Some(StrOrSeq::Null) => Ok(Vec::new()),
        Some(StrOrSeq::Str(s)) => Ok(vec![Part::text(s)]),
        Some(StrOrSeq::Seq(raws)) => raws.into_iter().map(|raw| content_part(raw, i)).collect(),
    }
}

fn content_part(raw: &RawValue, i: usize) -> Result<Part, FormatError> {
    let p: WirePart = parse_raw(raw, "a content part")?;
    Ok(match &*p.ty {
        "input_text" | "output_text" | "text" | "summary_text" | "reasoning_text" => {
            match p.text {
                Some(t) => Part::text(t),
                None => {
                    return Err(FormatError::bad_request(
                        "invalid_field",
                        format!("input[{i}]: a `{}` part needs `text`", p.ty),
                    ))
                }
            }
        }
        "refusal" => Part::text(p.refusal.unwrap_or_default()),
        "input_image" => match p.image_url {
            Some(url) => Part::Image {
                source: image_source(&url),
                detail: p.detail.map(Cow::into_owned),
                cache_control: None,
            },
            None => {
                return Err(FormatError::bad_request(
                    "unsupported_content",
                    format!("input[{i}]: an `input_image` without `image_url` (a `file_id` stored by OpenAI) cannot be sent to this provider"),
                ))
            }
        },
        // input_file, input_audio, ...: kept, and refused by the provider's encoder.
        other => Part::Opaque {
            kind: other.to_owned(),
            raw: own(raw),
        },
    })
}

/// The neutral choice of a `tool_choice`. `allowed_tools` narrows `tools` to the functions it
/// names. A choice that forces a hosted or custom tool (dropped) is refused.
fn decode_tool_choice(raw: &RawValue, tools: &mut Vec<Tool>) -> Result<ToolChoice, FormatError> {
    let mode = |s: &str| match s {
        "auto" => Ok(ToolChoice::Auto),
        "none" => Ok(ToolChoice::None),
        "required" => Ok(ToolChoice::Required),
        other => Err(FormatError::bad_request(
            "invalid_field",
            format!("`tool_choice`: unknown value `{other}`"),
        )),
    };
    if raw.get().starts_with('"') {
        let s: CowStr = parse_raw(raw, "`tool_choice`")?;
        return mode(&s.0);
    }
    let c: WireToolChoice = parse_raw(raw, "`tool_choice`")?;
    match (&*c.ty, c.name) {
        ("function", Some(name)) => Ok(ToolChoice::Tool(name.into_owned())),
        ("allowed_tools", _) => {
            let allowed: Vec<Cow<str>> = c
                .tools
                .unwrap_or_default()
                .into_iter()
                .filter(|t| t.ty == "function")
                .filter_map(|t| t.name)
                .collect();
            tools.retain(|t| allowed.iter().any(|a| *a == t.name));
            let choice = mode(c.mode.as_deref().unwrap_or("auto"))?;
            if tools.is_empty() && choice == ToolChoice::Required {
                return Err(unsupported(
                    "`tool_choice` requires one of `allowed_tools`, and none of them is a function tool this provider can call",
                ));
            }
            Ok(choice)
        }
        (ty, _) => Err(unsupported(format!(
            "`tool_choice` forces the `{ty}` tool, which only a provider with the Responses API offers"
        ))),
    }
}

fn structured_output(f: WireFormat) -> Result<Option<StructuredOutput>, FormatError> {
    match &*f.ty {
        "text" => Ok(None),
        "json_object" => Ok(Some(StructuredOutput {
            name: None,
            description: None,
            schema: None,
            strict: None,
        })),
        "json_schema" => Ok(Some(StructuredOutput {
            name: f.name.map(Cow::into_owned),
            description: f.description.map(Cow::into_owned),
            schema: f.schema.map(own),
            strict: f.strict,
        })),
        other => Err(FormatError::bad_request(
            "invalid_field",
            format!("`text.format`: unsupported type `{other}`"),
        )),
    }
}

/// The gateway translates from the Responses API, never into it: a Responses request reaches a
/// provider that has the Responses API only by passthrough, and every other client API is sent
/// to providers in their own format. Refused with 400.
pub fn encode_request(
    _req: &ChatRequest,
    _upstream_model: &str,
    _opts: &EncodeOptions,
    _out: &mut Vec<u8>,
) -> Result<EncodeInfo, FormatError> {
    Err(FormatError::bad_request(
        "unsupported_operation",
        "requests of other APIs are not translated into the OpenAI Responses API",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &str) -> ChatRequest {
        decode_request(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"))
    }

    #[test]
    fn a_string_input_is_one_user_message() {
        let r = decode(
            r#"{"model":"m","input":"hi","instructions":"be brief","max_output_tokens":9,"stream":true}"#,
        );
        assert_eq!(r.source, Format::OpenAiResponses);
        assert_eq!(r.system[0].text, "be brief");
        assert_eq!(r.messages.len(), 1);
        assert_eq!(r.messages[0].role, Role::User);
        assert_eq!(r.messages[0].content, vec![Part::text("hi")]);
        assert_eq!((r.max_tokens, r.stream), (Some(9), true));
    }

    #[test]
    fn codex_history_becomes_turns() {
        let r = decode(
            r#"{"model":"m","input":[
              {"type":"message","role":"developer","content":[{"type":"input_text","text":"sys"}]},
              {"type":"message","role":"user","content":[{"type":"input_text","text":"<env/>"}]},
              {"type":"message","role":"user","content":[{"type":"input_text","text":"Run echo hello"}]},
              {"type":"reasoning","id":"rs_1","summary":[{"type":"summary_text","text":"thinking"}],"encrypted_content":"gAAA"},
              {"type":"function_call","id":"fc_1","call_id":"call_1","name":"exec_command","arguments":"{\"cmd\":\"echo hello\"}","status":"completed"},
              {"type":"function_call_output","call_id":"call_1","output":"hello\n"},
              {"type":"web_search_call","id":"ws_1","status":"completed"}
            ],"tools":[
              {"type":"function","name":"exec_command","strict":false,"parameters":{"type":"object","properties":{"cmd":{"type":"string"}},"required":["cmd"]}},
              {"type":"namespace","name":"multi_agent_v1","tools":[]},
              {"type":"web_search","external_web_access":false}
            ],"tool_choice":"auto","parallel_tool_calls":true,"reasoning":{"summary":"auto"},"store":false,
            "include":["reasoning.encrypted_content"],"prompt_cache_key":"k","client_metadata":{"a":"b"}}"#,
        );
        assert!(r.system_as_developer);
        assert_eq!(r.system[0].text, "sys");
        let roles: Vec<Role> = r.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::User, Role::User, Role::Assistant, Role::Tool]);
        assert!(
            matches!(&r.messages[2].content[0], Part::Reasoning { text, signature: None } if text == "thinking")
        );
        assert!(
            matches!(&r.messages[2].content[1], Part::ToolCall { id, name, .. } if id == "call_1" && name == "exec_command")
        );
        assert!(
            matches!(&r.messages[3].content[0], Part::ToolResult { tool_call_id, .. } if tool_call_id == "call_1")
        );
        let names: Vec<&str> = r.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["exec_command"]);
        assert!(r.native_tools.is_empty() && r.extra.is_empty());
        assert_eq!(r.tool_choice, Some(ToolChoice::Auto));
        assert_eq!(r.reasoning, None);
    }

    #[test]
    fn the_gateways_reasoning_state_comes_back_signed_or_redacted() {
        let signed = reasoning_state::encode(&ReasoningState::Signature("sig-1".into()));
        let redacted = reasoning_state::encode(&ReasoningState::Redacted("data-1".into()));
        let body = format!(
            r#"{{"model":"m","include":["reasoning.encrypted_content"],"input":[
              {{"role":"user","content":"x"}},
              {{"type":"reasoning","id":"rs_1","summary":[{{"type":"summary_text","text":"thought"}}],"encrypted_content":"{signed}"}},
              {{"type":"reasoning","id":"rs_2","summary":[],"encrypted_content":"{redacted}"}},
              {{"type":"reasoning","id":"rs_3","summary":[],"encrypted_content":"{signed}"}},
              {{"type":"reasoning","id":"rs_4","summary":[],"encrypted_content":"gAAAAABforeign"}},
              {{"type":"function_call","call_id":"c","name":"f","arguments":"{{}}"}}
            ]}}"#
        );
        let r = decode(&body);
        assert!(r.reasoning_state);
        assert_eq!(
            r.messages[1].content,
            vec![
                Part::Reasoning {
                    text: "thought".into(),
                    signature: Some("sig-1".into())
                },
                Part::RedactedReasoning {
                    data: "data-1".into()
                },
                // Signed reasoning whose text the provider did not show still goes back.
                Part::Reasoning {
                    text: String::new(),
                    signature: Some("sig-1".into())
                },
                // OpenAI's own content, without a summary: nothing.
                Part::ToolCall {
                    id: "c".into(),
                    name: "f".into(),
                    arguments_json: "{}".into(),
                    cache_control: None,
                    signature: None,
                },
            ]
        );
        // `include` without the reasoning state, or none: not asked.
        assert!(
            !decode(r#"{"model":"m","input":"x","include":["message.output_text.logprobs"]}"#)
                .reasoning_state
        );
        assert!(!decode(r#"{"model":"m","input":"x","include":null}"#).reasoning_state);
    }

    #[test]
    fn settings_map_to_the_neutral_model() {
        let r = decode(
            r#"{"model":"m","input":[{"role":"user","content":"x"}],"temperature":0.2,"top_p":0.9,
            "text":{"format":{"type":"json_schema","name":"out","schema":{"type":"object"},"strict":true}},
            "reasoning":{"effort":"high"},"user":"u1","tool_choice":{"type":"function","name":"f"},
            "tools":[{"type":"function","name":"f","parameters":null,"strict":null}]}"#,
        );
        assert_eq!((r.temperature, r.top_p), (Some(0.2), Some(0.9)));
        let so = r.structured_output.unwrap();
        assert_eq!(so.name.as_deref(), Some("out"));
        assert_eq!(so.strict, Some(true));
        assert_eq!(r.reasoning.unwrap().effort, Some(ReasoningEffort::High));
        assert_eq!(r.user_id.as_deref(), Some("u1"));
        assert_eq!(r.tool_choice, Some(ToolChoice::Tool("f".into())));
        assert_eq!(r.tools[0].input_schema, None);
    }

    #[test]
    fn allowed_tools_narrow_the_tools() {
        let r = decode(
            r#"{"model":"m","input":"x","tools":[{"type":"function","name":"a"},{"type":"function","name":"b"}],
            "tool_choice":{"type":"allowed_tools","mode":"required","tools":[{"type":"function","name":"b"},{"type":"web_search"}]}}"#,
        );
        assert_eq!(r.tools.len(), 1);
        assert_eq!(r.tools[0].name, "b");
        assert_eq!(r.tool_choice, Some(ToolChoice::Required));
    }

    #[test]
    fn state_and_hosted_choices_are_refused() {
        let cases = [
            (r#"{"input":"x"}"#, "missing_model"),
            (r#"{"model":"m"}"#, "missing_input"),
            (r#"{"model":"m","input":3}"#, "invalid_field"),
            (
                r#"{"model":"m","input":"x","previous_response_id":"resp_1"}"#,
                "previous_response_id_unsupported",
            ),
            (
                r#"{"model":"m","input":"x","conversation":"conv_1"}"#,
                "unsupported_parameter",
            ),
            (
                r#"{"model":"m","input":"x","prompt":{"id":"pmpt_1"}}"#,
                "unsupported_parameter",
            ),
            (
                r#"{"model":"m","input":"x","background":true}"#,
                "unsupported_parameter",
            ),
            (
                r#"{"model":"m","input":"x","top_logprobs":2}"#,
                "unsupported_parameter",
            ),
            (
                r#"{"model":"m","input":"x","tool_choice":{"type":"web_search_preview"}}"#,
                "unsupported_parameter",
            ),
            (
                r#"{"model":"m","input":[{"type":"item_reference","id":"msg_1"}]}"#,
                "unsupported_parameter",
            ),
            (
                r#"{"model":"m","input":[{"role":"user","content":[{"type":"input_image","file_id":"file_1","detail":"auto"}]}]}"#,
                "unsupported_content",
            ),
            (
                r#"{"model":"m","input":[{"role":"tool","content":"x"}]}"#,
                "invalid_role",
            ),
            (
                r#"{"model":"m","input":[{"type":"function_call_output","output":"x"}]}"#,
                "missing_tool_call_id",
            ),
            (
                r#"{"model":"m","input":"x","reasoning":{"effort":"huge"}}"#,
                "invalid_field",
            ),
        ];
        for (body, code) in cases {
            let e = decode_request(body.as_bytes()).unwrap_err();
            assert_eq!((e.status, e.code), (400, code), "{body}: {}", e.message);
        }
        // null means absent.
        decode(r#"{"model":"m","input":"x","previous_response_id":null,"conversation":null}"#);
    }

    #[test]
    fn images_and_tool_output_parts() {
        let r = decode(
            r#"{"model":"m","input":[
              {"role":"user","content":[{"type":"input_text","text":"look"},{"type":"input_image","image_url":"data:image/png;base64,iVBOR","detail":"low"}]},
              {"type":"function_call_output","call_id":"c","output":[{"type":"input_text","text":"a"},{"type":"input_file","file_id":"f"}]}
            ]}"#,
        );
        assert!(
            matches!(&r.messages[0].content[1], Part::Image { detail: Some(d), .. } if d == "low")
        );
        let Part::ToolResult { content, .. } = &r.messages[1].content[0] else {
            panic!("{:?}", r.messages[1]);
        };
        assert!(matches!(&content[1], Part::Opaque { kind, .. } if kind == "input_file"));
    }
}

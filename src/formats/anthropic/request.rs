//! Anthropic Messages requests: a client's body (Claude Code, the anthropic SDKs) into the
//! neutral model, and the neutral model into a body for an Anthropic provider.

use std::borrow::Cow;

use serde::de::MapAccess;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::formats::chat::{
    split_tool_call_id, ChatRequest, Format, ImageSource, Message, Part, RawJson, ReasoningEffort,
    ReasoningMode, ReasoningRequest, Role, StructuredOutput, TextBlock, ThinkingDisplay, Tool,
    ToolChoice,
};
use crate::formats::json::{
    append_fields, decode_top_level, own, parse_raw, raw_const, request_arguments, required_model,
    CowStr, StrOrSeq, TopLevel,
};
use crate::formats::openai_chat::needs_openai;
use crate::formats::{
    reject_foreign, structured_output_tool, thinking_budget_tokens, EncodeInfo, EncodeOptions,
    FormatError, StructuredOutputStyle, ThinkingStyle, ANY_OBJECT_SCHEMA, EMPTY_OBJECT_SCHEMA,
    THINKING_BUDGET_MIN_TOKENS,
};

/// How an Anthropic provider is named in the refusals of what it cannot do.
const PROVIDER: &str = "an Anthropic provider";

#[derive(Default)]
struct Wire<'a> {
    model: Option<CowStr<'a>>,
    messages: Option<Vec<WireMessage<'a>>>,
    system: Option<StrOrSeq<'a, &'a RawValue>>,
    max_tokens: Option<u32>,
    metadata: Option<WireMetadata<'a>>,
    stop_sequences: Option<Vec<CowStr<'a>>>,
    stream: Option<bool>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u32>,
    tools: Option<Vec<&'a RawValue>>,
    tool_choice: Option<WireToolChoice<'a>>,
    thinking: Option<WireThinking<'a>>,
    output_config: Option<WireOutputConfig<'a>>,
    extra: Vec<(String, RawJson)>,
}

impl<'de> TopLevel<'de> for Wire<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "model" => self.model = map.next_value()?,
            "messages" => self.messages = map.next_value()?,
            "system" => self.system = map.next_value()?,
            "max_tokens" => self.max_tokens = map.next_value()?,
            "metadata" => self.metadata = map.next_value()?,
            "stop_sequences" => self.stop_sequences = map.next_value()?,
            "stream" => self.stream = map.next_value()?,
            "temperature" => self.temperature = map.next_value()?,
            "top_p" => self.top_p = map.next_value()?,
            "top_k" => self.top_k = map.next_value()?,
            "tools" => self.tools = map.next_value()?,
            "tool_choice" => self.tool_choice = map.next_value()?,
            "thinking" => self.thinking = map.next_value()?,
            "output_config" => self.output_config = map.next_value()?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn extra(&mut self) -> &mut Vec<(String, RawJson)> {
        &mut self.extra
    }
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow)]
    content: StrOrSeq<'a, &'a RawValue>,
}

#[derive(Deserialize)]
struct WireMetadata<'a> {
    #[serde(borrow, default)]
    user_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireToolChoice<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(default)]
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Deserialize)]
struct WireThinking<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default)]
    budget_tokens: Option<u32>,
    #[serde(borrow, default)]
    display: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireOutputConfig<'a> {
    #[serde(borrow, default)]
    effort: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    format: Option<WireOutputFormat<'a>>,
}

#[derive(Deserialize)]
struct WireOutputFormat<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    schema: Option<&'a RawValue>,
}

/// A content block of any type: the fields the neutral model reads, the rest skipped.
#[derive(Deserialize)]
pub(super) struct WireBlock<'a> {
    #[serde(rename = "type", borrow)]
    pub(super) ty: Cow<'a, str>,
    #[serde(borrow, default)]
    pub(super) text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    source: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_use_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(default)]
    is_error: Option<bool>,
    #[serde(borrow, default)]
    pub(super) thinking: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) signature: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) data: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    cache_control: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireSource<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    media_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    url: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireTool<'a> {
    #[serde(rename = "type", borrow, default)]
    ty: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    input_schema: Option<&'a RawValue>,
    #[serde(default)]
    strict: Option<bool>,
    #[serde(borrow, default)]
    cache_control: Option<&'a RawValue>,
}

/// Decode a client's Messages request (also a `count_tokens` body, which has no `max_tokens`).
/// Unknown top-level fields are kept in `extra`.
pub fn decode_request(body: &[u8]) -> Result<ChatRequest, FormatError> {
    let w: Wire = decode_top_level(body)?;
    let model = required_model(w.model, "model: Field required")?;
    let Some(wire_messages) = w.messages else {
        return Err(FormatError::bad_request(
            "missing_messages",
            "messages: Field required",
        ));
    };
    let stream = w.stream.unwrap_or(false);
    let mut req = ChatRequest {
        model,
        source: Format::Anthropic,
        max_tokens: w.max_tokens,
        temperature: w.temperature,
        top_p: w.top_p,
        top_k: w.top_k,
        user_id: w.metadata.and_then(|m| m.user_id).map(Cow::into_owned),
        stop: w
            .stop_sequences
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.0.into_owned())
            .collect(),
        stream,
        // Anthropic streams always carry usage.
        stream_usage: stream,
        extra: w.extra,
        ..ChatRequest::default()
    };
    req.system = decode_system(w.system)?;
    req.messages.reserve(wire_messages.len());
    for (i, m) in wire_messages.into_iter().enumerate() {
        let role = match &*m.role {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "system" => Role::System,
            other => {
                return Err(FormatError::bad_request(
                    "invalid_role",
                    format!("messages.{i}.role: `{other}` is not one of user, assistant"),
                ))
            }
        };
        req.messages.push(Message {
            role,
            content: blocks(m.content, false)?,
        });
    }
    for raw in w.tools.unwrap_or_default() {
        decode_tool(raw, &mut req)?;
    }
    if let Some(c) = w.tool_choice {
        req.tool_choice = Some(match &*c.ty {
            "auto" => ToolChoice::Auto,
            "any" => ToolChoice::Required,
            "none" => ToolChoice::None,
            "tool" => ToolChoice::Tool(c.name.map(Cow::into_owned).ok_or_else(|| {
                FormatError::bad_request("invalid_field", "tool_choice.name: Field required")
            })?),
            other => {
                return Err(FormatError::bad_request(
                    "invalid_field",
                    format!("tool_choice.type: unknown value `{other}`"),
                ))
            }
        });
        req.parallel_tool_calls = c.disable_parallel_tool_use.map(|d| !d);
    }
    decode_reasoning(w.thinking, w.output_config.as_ref(), &mut req)?;
    if let Some(f) = w.output_config.and_then(|o| o.format) {
        if f.ty != "json_schema" {
            return Err(FormatError::bad_request(
                "invalid_field",
                format!("output_config.format.type: unknown value `{}`", f.ty),
            ));
        }
        req.structured_output = Some(StructuredOutput {
            name: None,
            description: None,
            schema: f.schema.map(own),
            strict: None,
        });
    }
    Ok(req)
}

fn decode_system(system: Option<StrOrSeq<&RawValue>>) -> Result<Vec<TextBlock>, FormatError> {
    match system {
        None | Some(StrOrSeq::Null) => Ok(Vec::new()),
        Some(StrOrSeq::Str(s)) => Ok(vec![TextBlock {
            text: s.into_owned(),
            cache_control: None,
        }]),
        Some(StrOrSeq::Seq(raws)) => raws
            .into_iter()
            .map(|raw| {
                let b: WireBlock = parse_raw(raw, "a system block")?;
                match (&*b.ty, b.text) {
                    ("text", Some(text)) => Ok(TextBlock {
                        text: text.into_owned(),
                        cache_control: b.cache_control.map(own),
                    }),
                    _ => Err(FormatError::bad_request(
                        "invalid_field",
                        "system: every block must be a text block",
                    )),
                }
            })
            .collect(),
    }
}

/// The blocks of a message (`in_result`: of a tool result, where a nested tool result is kept
/// opaque, so that hostile nesting cannot recurse).
fn blocks(content: StrOrSeq<&RawValue>, in_result: bool) -> Result<Vec<Part>, FormatError> {
    match content {
        StrOrSeq::Null => Ok(Vec::new()),
        StrOrSeq::Str(s) => Ok(vec![Part::text(s)]),
        StrOrSeq::Seq(raws) => raws.into_iter().map(|raw| block(raw, in_result)).collect(),
    }
}

fn block(raw: &RawValue, in_result: bool) -> Result<Part, FormatError> {
    let b: WireBlock = parse_raw(raw, "a content block")?;
    if in_result && b.ty == "tool_result" {
        return Ok(opaque(&b.ty, raw));
    }
    let cache_control = b.cache_control.map(own);
    let missing = |field: &str| {
        FormatError::bad_request(
            "invalid_field",
            format!("a `{}` block needs `{field}`", b.ty),
        )
    };
    Ok(match &*b.ty {
        "text" => Part::Text {
            text: b.text.ok_or_else(|| missing("text"))?.into_owned(),
            cache_control,
        },
        "image" => {
            let source: WireSource = parse_raw(
                b.source.ok_or_else(|| missing("source"))?,
                "an image source",
            )?;
            let source = match (&*source.ty, source.media_type, source.data, source.url) {
                ("base64", Some(media_type), Some(data), _) => ImageSource::Base64 {
                    media_type: media_type.into_owned(),
                    data: data.into_owned(),
                },
                ("url", _, _, Some(url)) => ImageSource::Url(url.into_owned()),
                // A Files API reference has no form outside Anthropic.
                _ => return Ok(opaque(&b.ty, raw)),
            };
            Part::Image {
                source,
                detail: None,
                cache_control,
            }
        }
        "tool_use" => {
            let (id, signature) = split_tool_call_id(&b.id.ok_or_else(|| missing("id"))?);
            Part::ToolCall {
                id,
                name: b.name.ok_or_else(|| missing("name"))?.into_owned(),
                arguments_json: b.input.map_or("{}", RawValue::get).to_owned(),
                cache_control,
                signature,
            }
        }
        "tool_result" => Part::ToolResult {
            tool_call_id: split_tool_call_id(&b.tool_use_id.ok_or_else(|| missing("tool_use_id"))?)
                .0,
            content: match b.content {
                None => Vec::new(),
                Some(raw) => blocks(parse_raw(raw, "a tool_result's content")?, true)?,
            },
            is_error: b.is_error.unwrap_or(false),
            cache_control,
        },
        "thinking" => Part::Reasoning {
            text: b.thinking.ok_or_else(|| missing("thinking"))?.into_owned(),
            signature: b.signature.map(Cow::into_owned),
        },
        "redacted_thinking" => Part::RedactedReasoning {
            data: b.data.ok_or_else(|| missing("data"))?.into_owned(),
        },
        other => opaque(other, raw),
    })
}

fn opaque(kind: &str, raw: &RawValue) -> Part {
    Part::Opaque {
        kind: kind.to_owned(),
        raw: own(raw),
    }
}

fn decode_tool(raw: &RawValue, req: &mut ChatRequest) -> Result<(), FormatError> {
    let t: WireTool = parse_raw(raw, "a tool")?;
    match (t.ty.as_deref(), t.name) {
        (None | Some("custom"), Some(name)) => req.tools.push(Tool {
            name: name.into_owned(),
            description: t.description.map(Cow::into_owned),
            input_schema: t.input_schema.map(own),
            strict: t.strict,
            cache_control: t.cache_control.map(own),
        }),
        (None | Some("custom"), None) => {
            return Err(FormatError::bad_request(
                "invalid_field",
                "tools: every tool needs a `name`",
            ))
        }
        // Server tools (web search, code execution, ...) run at the provider.
        _ => req.native_tools.push(own(raw)),
    }
    Ok(())
}

fn decode_reasoning(
    thinking: Option<WireThinking>,
    output: Option<&WireOutputConfig>,
    req: &mut ChatRequest,
) -> Result<(), FormatError> {
    let mut r = ReasoningRequest::default();
    if let Some(t) = thinking {
        r.mode = Some(match (&*t.ty, t.budget_tokens) {
            ("enabled", Some(n)) => ReasoningMode::Budget(n),
            ("enabled", None) => {
                return Err(FormatError::bad_request(
                    "invalid_field",
                    "thinking.budget_tokens: Field required",
                ))
            }
            ("adaptive", _) => ReasoningMode::Adaptive,
            ("disabled", _) => ReasoningMode::Disabled,
            (other, _) => {
                return Err(FormatError::bad_request(
                    "invalid_field",
                    format!("thinking.type: unknown value `{other}`"),
                ))
            }
        });
        r.display = match t.display.as_deref() {
            None => None,
            Some("summarized") => Some(ThinkingDisplay::Summarized),
            Some("omitted") => Some(ThinkingDisplay::Omitted),
            Some(other) => {
                return Err(FormatError::bad_request(
                    "invalid_field",
                    format!("thinking.display: unknown value `{other}`"),
                ))
            }
        };
    }
    if let Some(e) = output.and_then(|o| o.effort.as_deref()) {
        r.effort = Some(ReasoningEffort::parse(e).ok_or_else(|| {
            FormatError::bad_request(
                "invalid_field",
                format!("output_config.effort: unknown value `{e}`"),
            )
        })?);
    }
    if r != ReasoningRequest::default() {
        req.reasoning = Some(r);
    }
    Ok(())
}

#[derive(Serialize)]
struct OutRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<OutSystem<'a>>,
    messages: Vec<OutMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<OutTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<OutToolChoice<'a>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<OutThinking>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_config: Option<OutOutputConfig<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<OutMetadata<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutSystem<'a> {
    Text(&'a str),
    Blocks(Vec<OutBlock<'a>>),
}

#[derive(Serialize)]
pub(super) struct OutMessage<'a> {
    role: &'static str,
    content: Vec<OutBlock<'a>>,
}

/// A content block written to an Anthropic body (requests and responses).
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum OutBlock<'a> {
    Text {
        #[serde(rename = "type")]
        ty: &'static str,
        text: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'a RawValue>,
    },
    Image {
        #[serde(rename = "type")]
        ty: &'static str,
        source: OutSource<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'a RawValue>,
    },
    ToolUse {
        #[serde(rename = "type")]
        ty: &'static str,
        id: Cow<'a, str>,
        name: &'a str,
        input: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'a RawValue>,
    },
    ToolResult {
        #[serde(rename = "type")]
        ty: &'static str,
        tool_use_id: &'a str,
        content: OutResultContent<'a>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        is_error: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'a RawValue>,
    },
    Thinking {
        #[serde(rename = "type")]
        ty: &'static str,
        thinking: &'a str,
        signature: &'a str,
    },
    RedactedThinking {
        #[serde(rename = "type")]
        ty: &'static str,
        data: &'a str,
    },
    Raw(&'a RawValue),
}

#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum OutResultContent<'a> {
    Text(&'a str),
    Blocks(Vec<OutBlock<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum OutSource<'a> {
    Base64 { media_type: &'a str, data: &'a str },
    Url { url: &'a str },
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutTool<'a> {
    Custom {
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        description: Option<&'a str>,
        input_schema: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        strict: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'a RawValue>,
    },
    Raw(&'a RawValue),
}

#[derive(Serialize)]
struct OutToolChoice<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Serialize)]
struct OutThinking {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    budget_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<&'static str>,
}

#[derive(Serialize)]
struct OutOutputConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    effort: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<OutFormat<'a>>,
}

#[derive(Serialize)]
struct OutFormat<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    schema: &'a RawValue,
}

#[derive(Serialize)]
struct OutMetadata<'a> {
    user_id: &'a str,
}

/// Encode a request for an Anthropic provider, with `model` = `upstream_model`. `max_tokens` is
/// the client's or [`EncodeOptions::max_tokens_default`]. A request from another format is
/// rejected (400) when it needs what this format cannot do (OpenAI `n` > 1, `logprobs`, audio,
/// `logit_bias`, legacy `functions`, web search options, custom tools, file and audio parts).
pub fn encode_request(
    req: &ChatRequest,
    upstream_model: &str,
    opts: &EncodeOptions,
    out: &mut Vec<u8>,
) -> Result<EncodeInfo, FormatError> {
    let native = req.source == Format::Anthropic;
    if !native {
        reject_foreign(req, PROVIDER, needs_openai)?;
    }
    let max_tokens = req.max_tokens.unwrap_or(opts.max_tokens_default);
    let structured_style = if native {
        StructuredOutputStyle::OutputFormat
    } else {
        opts.structured_output_style
    };
    let any_object = raw_const(ANY_OBJECT_SCHEMA);
    let empty_schema = raw_const(EMPTY_OBJECT_SCHEMA);
    let mut info = EncodeInfo::default();
    let mut tools: Vec<OutTool> = req
        .tools
        .iter()
        .map(|t| OutTool::Custom {
            name: &t.name,
            description: t.description.as_deref(),
            input_schema: t.input_schema.as_deref().unwrap_or(empty_schema),
            strict: t.strict,
            cache_control: t.cache_control.as_deref(),
        })
        .collect();
    tools.extend(req.native_tools.iter().map(|t| OutTool::Raw(t)));
    let mut format = None;
    let mut forced_tool = None;
    if let Some(so) = &req.structured_output {
        let schema = so.schema.as_deref().unwrap_or(any_object);
        match structured_style {
            StructuredOutputStyle::OutputFormat => {
                format = Some(OutFormat {
                    ty: "json_schema",
                    schema,
                })
            }
            StructuredOutputStyle::ForcedTool => {
                let (name, description) = structured_output_tool(req, so, schema, PROVIDER)?;
                tools.push(OutTool::Custom {
                    name,
                    description: Some(description),
                    input_schema: schema,
                    strict: None,
                    cache_control: None,
                });
                info.structured_output_tool = Some(name.to_owned());
                forced_tool = Some(name);
            }
        }
    }
    let tool_choice = if tools.is_empty() {
        None
    } else {
        tool_choice(req, forced_tool)
    };
    let forced = tool_choice
        .as_ref()
        .is_some_and(|c| c.ty == "any" || c.ty == "tool");
    let (thinking, effort) = reasoning(req, opts, max_tokens, forced && forced_tool.is_some());
    let (system, messages) = encode_messages(req, native)?;
    // Anthropic refuses sampling changes while thinking (temperature, top_k; top_p below
    // 0.95): a foreign request that asked for both gets the thinking.
    let thinking_on = thinking.as_ref().is_some_and(|t| t.ty != "disabled");
    let sampling_free = native || !thinking_on;
    let wire = OutRequest {
        model: upstream_model,
        max_tokens,
        system,
        messages,
        tools,
        tool_choice,
        stop_sequences: &req.stop,
        // Anthropic's range is 0..1 (OpenAI's 0..2): a foreign value above 1 is sent as 1.
        temperature: req.temperature.filter(|_| sampling_free).map(|t| {
            if native {
                t
            } else {
                t.min(1.0)
            }
        }),
        top_p: req
            .top_p
            .map(|p| if sampling_free { p } else { p.clamp(0.95, 1.0) }),
        top_k: req.top_k.filter(|_| sampling_free),
        thinking,
        output_config: (effort.is_some() || format.is_some())
            .then_some(OutOutputConfig { effort, format }),
        metadata: req
            .user_id
            .as_deref()
            .map(|user_id| OutMetadata { user_id }),
        stream: req.stream,
    };
    out.reserve(req.approx_json_bytes());
    crate::formats::json::write_value(out, &wire);
    if native {
        append_fields(out, &req.extra);
    }
    Ok(info)
}

/// The client's choice; a structured answer sent as a tool forces that tool (or, when the
/// client has tools of its own that it lets the model use, forces some tool call).
fn tool_choice<'a>(
    req: &'a ChatRequest,
    forced_tool: Option<&'a str>,
) -> Option<OutToolChoice<'a>> {
    let disable_parallel = req.parallel_tool_calls.map(|p| !p).filter(|d| *d);
    let choice = |ty, name| {
        Some(OutToolChoice {
            ty,
            name,
            disable_parallel_tool_use: if ty == "none" { None } else { disable_parallel },
        })
    };
    match (forced_tool, &req.tool_choice) {
        (_, Some(ToolChoice::Tool(name))) => choice("tool", Some(name.as_str())),
        (Some(_), None | Some(ToolChoice::Auto | ToolChoice::Required))
            if !req.tools.is_empty() =>
        {
            choice("any", None)
        }
        (Some(name), _) => choice("tool", Some(name)),
        (None, Some(ToolChoice::Auto)) => choice("auto", None),
        (None, Some(ToolChoice::Required)) => choice("any", None),
        (None, Some(ToolChoice::None)) => choice("none", None),
        (None, None) => disable_parallel.and_then(|_| choice("auto", None)),
    }
}

/// `thinking` and `output_config.effort`. An Anthropic client's own settings are passed on; an
/// effort alone (OpenAI `reasoning_effort`) becomes adaptive thinking with that effort, or a
/// budget from [`thinking_budget_tokens`] kept below `max_tokens` (no thinking when that leaves
/// less than Anthropic's minimum), as [`EncodeOptions::thinking_style`] says. A forced tool
/// (structured answer) rules thinking out.
fn reasoning(
    req: &ChatRequest,
    opts: &EncodeOptions,
    max_tokens: u32,
    forced_tool: bool,
) -> (Option<OutThinking>, Option<&'static str>) {
    let Some(r) = &req.reasoning else {
        return (None, None);
    };
    let display = r.display.map(|d| match d {
        ThinkingDisplay::Summarized => "summarized",
        ThinkingDisplay::Omitted => "omitted",
    });
    let thinking = |ty, budget_tokens| {
        Some(OutThinking {
            ty,
            budget_tokens,
            display,
        })
    };
    let effort = r
        .effort
        .filter(|e| *e != ReasoningEffort::None)
        .map(anthropic_effort);
    let (t, e) = match (r.mode, r.effort) {
        (Some(ReasoningMode::Disabled), _) | (None, Some(ReasoningEffort::None)) => {
            (thinking("disabled", None), None)
        }
        (Some(ReasoningMode::Budget(n)), _) => (thinking("enabled", Some(n)), effort),
        (Some(ReasoningMode::Adaptive), _) => (thinking("adaptive", None), effort),
        (None, Some(level)) => match opts.thinking_style {
            ThinkingStyle::Adaptive => (thinking("adaptive", None), effort),
            ThinkingStyle::Budget => {
                let budget = thinking_budget_tokens(level).min(max_tokens.saturating_sub(1));
                if budget >= THINKING_BUDGET_MIN_TOKENS {
                    (thinking("enabled", Some(budget)), None)
                } else {
                    (None, None)
                }
            }
        },
        (None, None) => (None, None),
    };
    if forced_tool {
        return (None, e);
    }
    (t, e)
}

/// Anthropic's effort levels are low..max: `minimal` is sent as `low`.
fn anthropic_effort(e: ReasoningEffort) -> &'static str {
    match e {
        ReasoningEffort::None | ReasoningEffort::Minimal => "low",
        other => other.as_str(),
    }
}

type SystemAndMessages<'a> = (Option<OutSystem<'a>>, Vec<OutMessage<'a>>);

/// The system prompt (with mid-conversation instructions moved to its end) and the turns, with
/// consecutive turns of one side merged (tool results ride in user turns, and Anthropic wants
/// all results of one assistant turn in the next user turn).
fn encode_messages(req: &ChatRequest, native: bool) -> Result<SystemAndMessages<'_>, FormatError> {
    let mut system: Vec<OutBlock> = req
        .system
        .iter()
        .map(|b| OutBlock::Text {
            ty: "text",
            text: &b.text,
            cache_control: b.cache_control.as_deref(),
        })
        .collect();
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
                        system.push(OutBlock::Text {
                            ty: "text",
                            text,
                            cache_control: cache_control.as_deref(),
                        });
                    }
                }
                continue;
            }
            Role::User | Role::Tool => "user",
            Role::Assistant => "assistant",
        };
        let content = out_blocks(&m.content, native)?;
        if content.is_empty() {
            continue;
        }
        match messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(content),
            _ => messages.push(OutMessage { role, content }),
        }
    }
    let system = match system.as_slice() {
        [] => None,
        [OutBlock::Text {
            text,
            cache_control: None,
            ..
        }] => Some(OutSystem::Text(text)),
        _ => Some(OutSystem::Blocks(system)),
    };
    Ok((system, messages))
}

pub(super) fn out_blocks(parts: &[Part], native: bool) -> Result<Vec<OutBlock<'_>>, FormatError> {
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        out.push(match p {
            // Anthropic rejects empty text blocks.
            Part::Text { text, .. } if text.is_empty() => continue,
            Part::Text {
                text,
                cache_control,
            } => OutBlock::Text {
                ty: "text",
                text,
                cache_control: cache_control.as_deref(),
            },
            Part::Image {
                source,
                cache_control,
                ..
            } => OutBlock::Image {
                ty: "image",
                source: out_source(source),
                cache_control: cache_control.as_deref(),
            },
            Part::ToolCall {
                id,
                name,
                arguments_json,
                cache_control,
                ..
            } => OutBlock::ToolUse {
                ty: "tool_use",
                id: Cow::Borrowed(id),
                name,
                input: request_arguments(id, arguments_json)?,
                cache_control: cache_control.as_deref(),
            },
            Part::ToolResult {
                tool_call_id,
                content,
                is_error,
                cache_control,
            } => OutBlock::ToolResult {
                ty: "tool_result",
                tool_use_id: tool_call_id,
                content: match content.as_slice() {
                    [Part::Text {
                        text,
                        cache_control: None,
                    }] => OutResultContent::Text(text),
                    _ => OutResultContent::Blocks(out_blocks(content, native)?),
                },
                is_error: *is_error,
                cache_control: cache_control.as_deref(),
            },
            // Anthropic verifies signatures: reasoning from elsewhere cannot be sent back.
            Part::Reasoning {
                text,
                signature: Some(signature),
            } if !signature.is_empty() => OutBlock::Thinking {
                ty: "thinking",
                thinking: text,
                signature,
            },
            Part::Reasoning { .. } => continue,
            Part::RedactedReasoning { data } => OutBlock::RedactedThinking {
                ty: "redacted_thinking",
                data,
            },
            Part::Opaque { raw, .. } if native => OutBlock::Raw(raw),
            Part::Opaque { kind, .. } => {
                return Err(FormatError::bad_request(
                    "unsupported_content",
                    format!(
                        "content parts of type `{kind}` cannot be sent to an Anthropic provider"
                    ),
                ))
            }
        });
    }
    Ok(out)
}

pub(super) fn out_source(source: &ImageSource) -> OutSource<'_> {
    match source {
        ImageSource::Url(url) => OutSource::Url { url },
        ImageSource::Base64 { media_type, data } => OutSource::Base64 { media_type, data },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::openai_chat;

    fn encode(req: &ChatRequest, opts: &EncodeOptions) -> Result<serde_json::Value, FormatError> {
        let mut out = Vec::new();
        encode_request(req, "claude-x", opts, &mut out)?;
        Ok(serde_json::from_slice(&out).unwrap())
    }

    fn from_openai(body: &str) -> ChatRequest {
        openai_chat::decode_request(body.as_bytes()).unwrap()
    }

    #[test]
    fn bad_requests_have_stable_codes() {
        let cases = [
            (r#"{"messages":[]}"#, "missing_model"),
            (r#"{"model":"m"}"#, "missing_messages"),
            (
                r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#,
                "invalid_role",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"tool_use","id":"a"}]}]}"#,
                "invalid_field",
            ),
            (
                r#"{"model":"m","messages":[],"thinking":{"type":"enabled"}}"#,
                "invalid_field",
            ),
            (
                r#"{"model":"m","messages":[],"tool_choice":{"type":"tool"}}"#,
                "invalid_field",
            ),
            (
                r#"{"model":"m","messages":[],"system":[{"type":"image"}]}"#,
                "invalid_field",
            ),
            (
                r#"{"model":"m","messages":[],"output_config":{"effort":"extreme"}}"#,
                "invalid_field",
            ),
        ];
        for (body, code) in cases {
            let e = decode_request(body.as_bytes()).unwrap_err();
            assert_eq!((e.status, e.code), (400, code), "{body}: {}", e.message);
        }
    }

    #[test]
    fn openai_only_features_are_refused() {
        for extra in [
            r#""n":2"#,
            r#""logprobs":true"#,
            r#""top_logprobs":3"#,
            r#""audio":{"voice":"alloy","format":"wav"}"#,
            r#""modalities":["text","audio"]"#,
            r#""logit_bias":{"50256":-100}"#,
            r#""functions":[{"name":"f"}]"#,
            r#""web_search_options":{}"#,
            r#""tool_choice":{"type":"allowed_tools","allowed_tools":{"mode":"auto","tools":[]}}"#,
            r#""tools":[{"type":"custom","custom":{"name":"x"}}]"#,
        ] {
            let req = from_openai(&format!(r#"{{"model":"m","messages":[],{extra}}}"#));
            let e = encode(&req, &EncodeOptions::default()).unwrap_err();
            assert_eq!(e.status, 400, "{extra}");
        }
        for fine in [
            r#""n":1"#,
            r#""logprobs":false"#,
            r#""logit_bias":{ }"#,
            r#""modalities":["text"]"#,
            r#""seed":3"#,
            r#""frequency_penalty":0.5"#,
        ] {
            let req = from_openai(&format!(r#"{{"model":"m","messages":[],{fine}}}"#));
            let v = encode(&req, &EncodeOptions::default()).unwrap();
            assert!(v.get("seed").is_none() && v.get("n").is_none(), "{fine}");
        }
        let req = from_openai(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"x","format":"wav"}}]}]}"#,
        );
        assert_eq!(
            encode(&req, &EncodeOptions::default()).unwrap_err().code,
            "unsupported_content"
        );
    }

    #[test]
    fn effort_becomes_thinking_by_style() {
        let req = from_openai(
            r#"{"model":"m","messages":[],"reasoning_effort":"high","max_tokens":10000}"#,
        );
        let v = encode(&req, &EncodeOptions::default()).unwrap();
        assert_eq!(v["thinking"], serde_json::json!({"type":"adaptive"}));
        assert_eq!(v["output_config"]["effort"], "high");
        let budget = EncodeOptions {
            thinking_style: ThinkingStyle::Budget,
            ..EncodeOptions::default()
        };
        let v = encode(&req, &budget).unwrap();
        // 16384 does not fit under max_tokens 10000.
        assert_eq!(
            v["thinking"],
            serde_json::json!({"type":"enabled","budget_tokens":9999})
        );
        assert!(v.get("output_config").is_none());
        let small = from_openai(
            r#"{"model":"m","messages":[],"reasoning_effort":"low","max_tokens":1000}"#,
        );
        assert!(encode(&small, &budget).unwrap().get("thinking").is_none());
        let none = from_openai(r#"{"model":"m","messages":[],"reasoning_effort":"none"}"#);
        let v = encode(&none, &EncodeOptions::default()).unwrap();
        assert_eq!(v["thinking"], serde_json::json!({"type":"disabled"}));
        assert_eq!(v["max_tokens"], crate::formats::MAX_TOKENS_DEFAULT);
    }

    #[test]
    fn tool_arguments_must_be_objects() {
        let req = from_openai(
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{oops"}}]}]}"#,
        );
        assert_eq!(
            encode(&req, &EncodeOptions::default()).unwrap_err().code,
            "invalid_tool_arguments"
        );
    }

    #[test]
    fn structured_answers_need_object_schemas_and_free_names() {
        let arr = from_openai(
            r#"{"model":"m","messages":[],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"array"}}}}"#,
        );
        assert_eq!(
            encode(&arr, &EncodeOptions::default()).unwrap_err().code,
            "unsupported_parameter"
        );
        let clash = from_openai(
            r#"{"model":"m","messages":[],"tools":[{"type":"function","function":{"name":"x"}}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object"}}}}"#,
        );
        assert!(encode(&clash, &EncodeOptions::default()).is_err());
        let native = EncodeOptions {
            structured_output_style: StructuredOutputStyle::OutputFormat,
            ..EncodeOptions::default()
        };
        let v = encode(&arr, &native).unwrap();
        assert_eq!(v["output_config"]["format"]["schema"]["type"], "array");
        assert!(v.get("tools").is_none());
    }

    #[test]
    fn structured_answer_with_client_tools_forces_some_tool() {
        let req = from_openai(
            r#"{"model":"m","messages":[],"parallel_tool_calls":false,"tools":[{"type":"function","function":{"name":"f"}}],"response_format":{"type":"json_object"}}"#,
        );
        let v = encode(&req, &EncodeOptions::default()).unwrap();
        assert_eq!(
            v["tool_choice"],
            serde_json::json!({"type":"any","disable_parallel_tool_use":true})
        );
        assert_eq!(v["tools"][1]["name"], "json_response");
        assert_eq!(
            v["tools"][1]["input_schema"],
            serde_json::json!({"type":"object"})
        );
        assert_eq!(
            v["tools"][0]["input_schema"],
            serde_json::json!({"type":"object","properties":{}})
        );
    }

    #[test]
    fn later_instructions_join_the_system_prompt_and_turns_merge() {
        let req = from_openai(
            r#"{"model":"m","messages":[{"role":"system","content":"a"},{"role":"user","content":"q"},{"role":"assistant","content":""},{"role":"system","content":"b"},{"role":"user","content":"r"}]}"#,
        );
        let v = encode(&req, &EncodeOptions::default()).unwrap();
        assert_eq!(
            v["system"],
            serde_json::json!([{"type":"text","text":"a"},{"type":"text","text":"b"}])
        );
        // The empty assistant turn is left out, so the two user turns become one.
        assert_eq!(
            v["messages"],
            serde_json::json!([{"role":"user","content":[{"type":"text","text":"q"},{"type":"text","text":"r"}]}])
        );
    }

    #[test]
    fn nested_tool_results_do_not_recurse() {
        let depth = 50_000;
        let mut body = String::from(r#"{"model":"m","messages":[{"role":"user","content":["#);
        for _ in 0..depth {
            body.push_str(r#"{"type":"tool_result","tool_use_id":"t","content":["#);
        }
        body.push_str(&"]}".repeat(depth));
        body.push_str("]}]}");
        let req = decode_request(body.as_bytes()).unwrap();
        let Part::ToolResult { content, .. } = &req.messages[0].content[0] else {
            panic!("not a tool result");
        };
        assert!(matches!(&content[0], Part::Opaque { kind, .. } if kind == "tool_result"));
    }

    #[test]
    fn thinking_takes_precedence_over_foreign_sampling() {
        let req = from_openai(
            r#"{"model":"m","messages":[],"reasoning_effort":"low","temperature":0.2,"top_p":0.5,"top_k":5}"#,
        );
        let v = encode(&req, &EncodeOptions::default()).unwrap();
        assert!(v.get("temperature").is_none() && v.get("top_k").is_none());
        assert_eq!(v["top_p"], 0.95);
        let req = decode_request(
            br#"{"model":"m","messages":[],"thinking":{"type":"adaptive"},"temperature":0.2}"#,
        )
        .unwrap();
        assert_eq!(
            encode(&req, &EncodeOptions::default()).unwrap()["temperature"],
            0.2
        );
    }

    #[test]
    fn temperature_is_capped_for_foreign_requests() {
        let req = from_openai(r#"{"model":"m","messages":[],"temperature":1.7}"#);
        assert_eq!(
            encode(&req, &EncodeOptions::default()).unwrap()["temperature"],
            1.0
        );
        let req = decode_request(br#"{"model":"m","messages":[],"temperature":0.3}"#).unwrap();
        assert_eq!(
            encode(&req, &EncodeOptions::default()).unwrap()["temperature"],
            0.3
        );
    }
}

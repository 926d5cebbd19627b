//! OpenAI Chat Completions requests: a client's body into the neutral model, and the neutral
//! model into a body for an OpenAI-format provider.

use std::borrow::Cow;

use serde::de::{IgnoredAny, MapAccess};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::formats::chat::{
    split_tool_call_id, ChatRequest, Format, ImageSource, Message, Part, RawJson, ReasoningEffort,
    ReasoningMode, ReasoningRequest, Role, StructuredOutput, Tool, ToolChoice,
};
use crate::formats::json::{
    append_fields, decode_top_level, own, parse_raw, required_model, CowStr, StrOrSeq, TopLevel,
};
use crate::formats::{
    effort_for_budget, EncodeInfo, EncodeOptions, FormatError, MaxTokensField, ToolCallIdFormat,
    STRUCTURED_OUTPUT_TOOL_NAME_DEFAULT,
};

/// Top-level fields of an Anthropic request that an OpenAI-format provider cannot honour and
/// that change the answer: the request is rejected rather than silently degraded.
const ANTHROPIC_FIELDS_REJECTED: &[&str] = &["mcp_servers"];

#[derive(Default)]
struct Wire<'a> {
    model: Option<CowStr<'a>>,
    messages: Option<Vec<WireMessage<'a>>>,
    tools: Option<Vec<&'a RawValue>>,
    tool_choice: Option<&'a RawValue>,
    parallel_tool_calls: Option<bool>,
    stop: Option<StrOrSeq<'a, CowStr<'a>>>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u32>,
    response_format: Option<WireResponseFormat<'a>>,
    reasoning_effort: Option<CowStr<'a>>,
    user: Option<CowStr<'a>>,
    stream: Option<bool>,
    stream_options: Option<&'a RawValue>,
    extra: Vec<(String, RawJson)>,
}

impl<'de> TopLevel<'de> for Wire<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "model" => self.model = map.next_value()?,
            "messages" => self.messages = map.next_value()?,
            "tools" => self.tools = map.next_value()?,
            "tool_choice" => self.tool_choice = map.next_value()?,
            "parallel_tool_calls" => self.parallel_tool_calls = map.next_value()?,
            "stop" => self.stop = map.next_value()?,
            "max_tokens" => self.max_tokens = map.next_value()?,
            "max_completion_tokens" => self.max_completion_tokens = map.next_value()?,
            "temperature" => self.temperature = map.next_value()?,
            "top_p" => self.top_p = map.next_value()?,
            "top_k" => self.top_k = map.next_value()?,
            "response_format" => self.response_format = map.next_value()?,
            "reasoning_effort" => self.reasoning_effort = map.next_value()?,
            "user" => self.user = map.next_value()?,
            "stream" => self.stream = map.next_value()?,
            "stream_options" => {
                let raw: Option<&'de RawValue> = map.next_value()?;
                if let Some(raw) = raw {
                    self.stream_options = Some(raw);
                    self.extra.push(("stream_options".to_owned(), own(raw)));
                }
            }
            // The gateway's own field: read by routing, never sent upstream.
            "fallbacks" => {
                map.next_value::<IgnoredAny>()?;
            }
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
    #[serde(borrow, default)]
    content: Option<StrOrSeq<'a, &'a RawValue>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    tool_call_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WirePart<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    image_url: Option<WireImageUrl<'a>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireImageUrl<'a> {
    #[serde(borrow)]
    url: Cow<'a, str>,
    #[serde(borrow, default)]
    detail: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(super) struct WireToolCall<'a> {
    #[serde(borrow, default)]
    pub(super) id: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow, default)]
    pub(super) ty: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) function: Option<WireFunctionCall<'a>>,
}

#[derive(Deserialize)]
pub(super) struct WireFunctionCall<'a> {
    #[serde(borrow, default)]
    pub(super) name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireTool<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    function: Option<WireFunctionDef<'a>>,
}

#[derive(Deserialize)]
struct WireFunctionDef<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    parameters: Option<&'a RawValue>,
    #[serde(default)]
    strict: Option<bool>,
}

#[derive(Deserialize)]
struct WireNamedChoice<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    function: Option<WireName<'a>>,
}

#[derive(Deserialize)]
struct WireName<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

#[derive(Deserialize)]
struct WireResponseFormat<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    json_schema: Option<WireJsonSchema<'a>>,
}

#[derive(Deserialize)]
struct WireJsonSchema<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    schema: Option<&'a RawValue>,
    #[serde(default)]
    strict: Option<bool>,
}

/// Decode a client's Chat Completions request. Unknown top-level fields (and `stream_options`)
/// are kept in `extra`; the gateway's own `fallbacks` is left out.
pub fn decode_request(body: &[u8]) -> Result<ChatRequest, FormatError> {
    let w: Wire = decode_top_level(body)?;
    let model = required_model(w.model, "you must provide a model parameter")?;
    let Some(wire_messages) = w.messages else {
        return Err(FormatError::bad_request(
            "missing_messages",
            "you must provide a messages parameter",
        ));
    };
    let mut req = ChatRequest {
        model,
        source: Format::OpenAiChat,
        parallel_tool_calls: w.parallel_tool_calls,
        max_tokens: w.max_completion_tokens.or(w.max_tokens),
        temperature: w.temperature,
        top_p: w.top_p,
        top_k: w.top_k,
        user_id: w.user.map(|u| u.0.into_owned()),
        stream: w.stream.unwrap_or(false),
        stream_usage: stream_usage(w.stream_options)?,
        extra: w.extra,
        ..ChatRequest::default()
    };
    decode_messages(wire_messages, &mut req)?;
    if let Some(tools) = w.tools {
        decode_tools(&tools, &mut req)?;
    }
    if let Some(raw) = w.tool_choice {
        match decode_tool_choice(raw)? {
            Some(choice) => req.tool_choice = Some(choice),
            // `allowed_tools` and custom-tool choices have no neutral form: kept for OpenAI.
            None => req.extra.push(("tool_choice".to_owned(), own(raw))),
        }
    }
    req.stop = match w.stop {
        Some(StrOrSeq::Str(s)) => vec![s.into_owned()],
        Some(StrOrSeq::Seq(v)) => v.into_iter().map(|s| s.0.into_owned()).collect(),
        Some(StrOrSeq::Null) | None => Vec::new(),
    };
    req.structured_output = w
        .response_format
        .map(structured_output)
        .transpose()?
        .flatten();
    if let Some(CowStr(e)) = w.reasoning_effort {
        let effort = ReasoningEffort::parse(&e).ok_or_else(|| {
            FormatError::bad_request(
                "invalid_field",
                format!("`reasoning_effort`: unknown value `{e}`"),
            )
        })?;
        req.reasoning = Some(ReasoningRequest {
            effort: Some(effort),
            ..ReasoningRequest::default()
        });
    }
    Ok(req)
}

fn stream_usage(raw: Option<&RawValue>) -> Result<bool, FormatError> {
    #[derive(Deserialize)]
    struct StreamOptions {
        #[serde(default)]
        include_usage: Option<bool>,
    }
    match raw {
        None => Ok(false),
        Some(raw) => Ok(parse_raw::<StreamOptions>(raw, "`stream_options`")?
            .include_usage
            .unwrap_or(false)),
    }
}

fn decode_messages(wire: Vec<WireMessage>, req: &mut ChatRequest) -> Result<(), FormatError> {
    req.messages.reserve(wire.len());
    let mut leading = true;
    for (i, m) in wire.into_iter().enumerate() {
        let role = match &*m.role {
            "system" | "developer" => {
                if leading {
                    req.push_system_message(&m.role, content_parts(m.content, i)?);
                    continue;
                }
                Role::System
            }
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => {
                return Err(FormatError::bad_request(
                    "invalid_role",
                    format!("messages[{i}]: role `{other}` is not supported (use system, developer, user, assistant or tool)"),
                ))
            }
        };
        leading = false;
        let content = match role {
            Role::Assistant => assistant_parts(m, i)?,
            Role::Tool => {
                let Some(id) = m.tool_call_id else {
                    return Err(FormatError::bad_request(
                        "missing_tool_call_id",
                        format!("messages[{i}]: a tool message needs `tool_call_id`"),
                    ));
                };
                vec![Part::ToolResult {
                    tool_call_id: split_tool_call_id(&id).0,
                    content: content_parts(m.content, i)?,
                    is_error: false,
                    cache_control: None,
                }]
            }
            Role::System | Role::User => content_parts(m.content, i)?,
        };
        req.messages.push(Message { role, content });
    }
    Ok(())
}

fn content_parts(content: Option<StrOrSeq<&RawValue>>, i: usize) -> Result<Vec<Part>, FormatError> {
    match content {
        None | Some(StrOrSeq::Null) => Ok(Vec::new()),
        Some(StrOrSeq::Str(s)) => Ok(vec![Part::text(s)]),
        Some(StrOrSeq::Seq(raws)) => raws.into_iter().map(|raw| content_part(raw, i)).collect(),
    }
}

fn content_part(raw: &RawValue, i: usize) -> Result<Part, FormatError> {
    let p: WirePart = parse_raw(raw, "a message content part")?;
    Ok(match &*p.ty {
        "text" => match p.text {
            Some(t) => Part::text(t),
            None => {
                return Err(FormatError::bad_request(
                    "invalid_field",
                    format!("messages[{i}]: a text part needs `text`"),
                ))
            }
        },
        "refusal" => Part::text(p.refusal.unwrap_or_default()),
        "image_url" => match p.image_url {
            Some(img) => Part::Image {
                source: image_source(&img.url),
                detail: img.detail.map(Cow::into_owned),
                cache_control: None,
            },
            None => {
                return Err(FormatError::bad_request(
                    "invalid_field",
                    format!("messages[{i}]: an image_url part needs `image_url`"),
                ))
            }
        },
        other => Part::Opaque {
            kind: other.to_owned(),
            raw: own(raw),
        },
    })
}

/// A `data:<media type>;base64,<data>` URL as base64 data; anything else as a URL.
pub(crate) fn image_source(url: &str) -> ImageSource {
    if let Some((meta, data)) = url.strip_prefix("data:").and_then(|r| r.split_once(',')) {
        if let Some(media_type) = meta.strip_suffix(";base64") {
            return ImageSource::Base64 {
                media_type: media_type.to_owned(),
                data: data.to_owned(),
            };
        }
    }
    ImageSource::Url(url.to_owned())
}

fn assistant_parts(m: WireMessage, i: usize) -> Result<Vec<Part>, FormatError> {
    let mut parts = Vec::new();
    if let Some(r) = m.reasoning_content.filter(|r| !r.is_empty()) {
        parts.push(Part::Reasoning {
            text: r.into_owned(),
            signature: None,
        });
    }
    parts.extend(content_parts(m.content, i)?);
    if let Some(r) = m.refusal.filter(|r| !r.is_empty()) {
        parts.push(Part::text(r));
    }
    for raw in m.tool_calls.unwrap_or_default() {
        let call: WireToolCall = parse_raw(raw, "an assistant tool call")?;
        match (call.ty.as_deref(), call.function) {
            (None | Some("function"), Some(f)) => {
                let Some(id) = call.id else {
                    return Err(FormatError::bad_request(
                        "invalid_field",
                        format!("messages[{i}]: a tool call needs `id`"),
                    ));
                };
                let (id, signature) = split_tool_call_id(&id);
                parts.push(Part::ToolCall {
                    id,
                    name: f.name.map(Cow::into_owned).unwrap_or_default(),
                    arguments_json: f.arguments.map(Cow::into_owned).unwrap_or_default(),
                    cache_control: None,
                    signature,
                });
            }
            (ty, _) => parts.push(Part::Opaque {
                kind: ty.unwrap_or("tool_call").to_owned(),
                raw: own(raw),
            }),
        }
    }
    Ok(parts)
}

fn decode_tools(raws: &[&RawValue], req: &mut ChatRequest) -> Result<(), FormatError> {
    for raw in raws {
        let t: WireTool = parse_raw(raw, "a tool")?;
        match (&*t.ty, t.function) {
            ("function", Some(f)) => req.tools.push(Tool {
                name: f.name.into_owned(),
                description: f.description.map(Cow::into_owned),
                input_schema: f.parameters.map(own),
                strict: f.strict,
                cache_control: None,
            }),
            ("function", None) => {
                return Err(FormatError::bad_request(
                    "invalid_field",
                    "a function tool needs `function`",
                ))
            }
            _ => req.native_tools.push(own(raw)),
        }
    }
    Ok(())
}

/// `None`: a choice with no neutral form (kept raw for OpenAI).
fn decode_tool_choice(raw: &RawValue) -> Result<Option<ToolChoice>, FormatError> {
    if raw.get().starts_with('"') {
        let s: CowStr = parse_raw(raw, "`tool_choice`")?;
        return match &*s.0 {
            "auto" => Ok(Some(ToolChoice::Auto)),
            "none" => Ok(Some(ToolChoice::None)),
            "required" => Ok(Some(ToolChoice::Required)),
            other => Err(FormatError::bad_request(
                "invalid_field",
                format!("`tool_choice`: unknown value `{other}`"),
            )),
        };
    }
    let c: WireNamedChoice = parse_raw(raw, "`tool_choice`")?;
    Ok(match (&*c.ty, c.function) {
        ("function", Some(f)) => Some(ToolChoice::Tool(f.name.into_owned())),
        _ => None,
    })
}

fn structured_output(f: WireResponseFormat) -> Result<Option<StructuredOutput>, FormatError> {
    match (&*f.ty, f.json_schema) {
        ("text", _) => Ok(None),
        ("json_object", _) => Ok(Some(StructuredOutput {
            name: None,
            description: None,
            schema: None,
            strict: None,
        })),
        ("json_schema", Some(s)) => Ok(Some(StructuredOutput {
            name: s.name.map(Cow::into_owned),
            description: s.description.map(Cow::into_owned),
            schema: s.schema.map(own),
            strict: s.strict,
        })),
        (other, _) => Err(FormatError::bad_request(
            "invalid_field",
            format!("`response_format`: unsupported type `{other}` (or `json_schema` missing)"),
        )),
    }
}

#[derive(Serialize)]
struct OutRequest<'a> {
    model: &'a str,
    messages: Vec<OutMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u32>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<OutTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<OutToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<OutResponseFormat<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Serialize)]
struct OutMessage<'a> {
    role: &'static str,
    content: OutContent<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<OutToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<Cow<'a, str>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutContent<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<OutPart<'a>>),
    Null(Option<()>),
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutPart<'a> {
    Text {
        #[serde(rename = "type")]
        ty: &'static str,
        text: &'a str,
    },
    Image {
        #[serde(rename = "type")]
        ty: &'static str,
        image_url: OutImageUrl<'a>,
    },
    Raw(&'a RawValue),
}

#[derive(Serialize)]
struct OutImageUrl<'a> {
    url: ImageUrl<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

/// An image as OpenAI's `image_url.url`: the URL, or a `data:` URL written straight into the
/// output (no copy of the base64 data).
struct ImageUrl<'a>(&'a ImageSource);

impl Serialize for ImageUrl<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            ImageSource::Url(u) => s.serialize_str(u),
            ImageSource::Base64 { media_type, data } => {
                s.collect_str(&format_args!("data:{media_type};base64,{data}"))
            }
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutToolCall<'a> {
    Function {
        id: Cow<'a, str>,
        #[serde(rename = "type")]
        ty: &'static str,
        function: OutFunctionCall<'a>,
    },
    Raw(&'a RawValue),
}

#[derive(Serialize)]
struct OutFunctionCall<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutTool<'a> {
    Function {
        #[serde(rename = "type")]
        ty: &'static str,
        function: OutFunctionDef<'a>,
    },
    Raw(&'a RawValue),
}

#[derive(Serialize)]
struct OutFunctionDef<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutToolChoice<'a> {
    Mode(&'static str),
    Named {
        #[serde(rename = "type")]
        ty: &'static str,
        function: OutName<'a>,
    },
}

#[derive(Serialize)]
struct OutName<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct OutResponseFormat<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    json_schema: Option<OutJsonSchema<'a>>,
}

#[derive(Serialize)]
struct OutJsonSchema<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    schema: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

/// Encode a request for an OpenAI-format provider, with `model` = `upstream_model`. A request
/// from another format is rejected (400) when it needs what this format cannot carry: that
/// format's server tools, content blocks without an OpenAI form (documents, ...), MCP servers.
pub fn encode_request(
    req: &ChatRequest,
    upstream_model: &str,
    opts: &EncodeOptions,
    out: &mut Vec<u8>,
) -> Result<EncodeInfo, FormatError> {
    let native = req.source == Format::OpenAiChat;
    if !native {
        reject_foreign(req)?;
    }
    let offers_tools = !(req.tools.is_empty() && req.native_tools.is_empty());
    if offers_tools && !opts.tools {
        return Err(FormatError::bad_request(
            "unsupported_tool",
            "this provider does not support tools (tools_supported = false)",
        ));
    }
    let messages = encode_messages(req, native, opts)?;
    let mut tools: Vec<OutTool> = req
        .tools
        .iter()
        .map(|t| OutTool::Function {
            ty: "function",
            function: OutFunctionDef {
                name: &t.name,
                description: t.description.as_deref(),
                parameters: t.input_schema.as_deref(),
                strict: t.strict,
            },
        })
        .collect();
    tools.extend(req.native_tools.iter().map(|t| OutTool::Raw(t)));
    let tool_settings_allowed = native || !tools.is_empty();
    let (max_completion_tokens, max_tokens) = match opts.max_tokens_field {
        MaxTokensField::MaxCompletionTokens => (req.max_tokens, None),
        MaxTokensField::MaxTokens => (None, req.max_tokens),
    };
    let wire = OutRequest {
        model: upstream_model,
        messages,
        max_completion_tokens,
        max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        // Not an OpenAI parameter: only an OpenAI-format client's own value is passed on.
        top_k: req.top_k.filter(|_| native),
        stop: &req.stop,
        tools,
        tool_choice: req
            .tool_choice
            .as_ref()
            .filter(|_| tool_settings_allowed)
            .map(encode_tool_choice),
        parallel_tool_calls: req
            .parallel_tool_calls
            .filter(|_| tool_settings_allowed && opts.parallel_tool_calls),
        response_format: req.structured_output.as_ref().map(encode_response_format),
        reasoning_effort: reasoning_effort(req).filter(|_| native || opts.reasoning_effort),
        user: req.user_id.as_deref(),
        stream: req.stream,
        stream_options: stream_options(req, opts),
    };
    out.reserve(req.approx_json_bytes());
    crate::formats::json::write_value(out, &wire);
    if native {
        // A stream's `stream_options` was merged above.
        let stream = req.stream;
        append_fields(
            out,
            req.extra
                .iter()
                .filter(|(k, _)| !(stream && k == "stream_options")),
        );
    }
    Ok(EncodeInfo::default())
}

/// Whether a field an OpenAI client sent (kept in `extra`; `value` its trimmed JSON) asks for
/// what a provider of another format cannot do: several choices, log probabilities, audio,
/// legacy functions, web search, a tool choice without a neutral form, token biases.
pub(crate) fn needs_openai(key: &str, value: &str) -> bool {
    match key {
        "n" => !matches!(value, "1" | "null"),
        "logprobs" => value == "true",
        "top_logprobs" => !matches!(value, "0" | "null"),
        "audio" | "functions" | "function_call" | "web_search_options" | "tool_choice" => {
            value != "null"
        }
        "modalities" => value.contains("\"audio\""),
        "logit_bias" => !matches!(
            value.replace(char::is_whitespace, "").as_str(),
            "{}" | "null"
        ),
        _ => false,
    }
}

fn reject_foreign(req: &ChatRequest) -> Result<(), FormatError> {
    if let Some(raw) = req.native_tools.first() {
        #[derive(Deserialize)]
        struct Typed<'a> {
            #[serde(rename = "type", borrow, default)]
            ty: Option<Cow<'a, str>>,
        }
        let ty = serde_json::from_str::<Typed>(raw.get())
            .ok()
            .and_then(|t| t.ty.map(Cow::into_owned))
            .unwrap_or_default();
        return Err(FormatError::bad_request(
            "unsupported_tool",
            format!("the server tool `{ty}` cannot be used with an OpenAI-format provider"),
        ));
    }
    for field in ANTHROPIC_FIELDS_REJECTED {
        if req.extra_field(field).is_some() {
            return Err(FormatError::bad_request(
                "unsupported_parameter",
                format!("`{field}` cannot be used with an OpenAI-format provider"),
            ));
        }
    }
    Ok(())
}

fn unsupported_block(kind: &str) -> FormatError {
    FormatError::bad_request(
        "unsupported_content",
        format!("content blocks of type `{kind}` cannot be sent to an OpenAI-format provider"),
    )
}

fn encode_messages<'a>(
    req: &'a ChatRequest,
    native: bool,
    opts: &EncodeOptions,
) -> Result<Vec<OutMessage<'a>>, FormatError> {
    let system_role = if req.system_as_developer {
        "developer"
    } else {
        "system"
    };
    let mut out = Vec::with_capacity(req.messages.len() + 1);
    if !req.system.is_empty() {
        let content = match req.system.as_slice() {
            [one] => OutContent::Text(Cow::Borrowed(&one.text)),
            blocks => OutContent::Parts(
                blocks
                    .iter()
                    .map(|b| OutPart::Text {
                        ty: "text",
                        text: &b.text,
                    })
                    .collect(),
            ),
        };
        out.push(plain_message(system_role, content));
    }
    for m in &req.messages {
        match m.role {
            Role::System => {
                let parts = user_parts(&m.content, native)?;
                out.push(plain_message(system_role, content_of(parts)));
            }
            Role::User | Role::Tool => encode_user(&m.content, native, opts, &mut out)?,
            Role::Assistant => out.push(encode_assistant(&m.content, opts)),
        }
    }
    Ok(out)
}

fn plain_message<'a>(role: &'static str, content: OutContent<'a>) -> OutMessage<'a> {
    OutMessage {
        role,
        content,
        reasoning_content: None,
        tool_calls: Vec::new(),
        tool_call_id: None,
    }
}

/// A single text part as a plain string, anything else as parts.
fn content_of(parts: Vec<OutPart>) -> OutContent {
    match parts.as_slice() {
        [OutPart::Text { text, .. }] => OutContent::Text(Cow::Borrowed(text)),
        _ => OutContent::Parts(parts),
    }
}

fn user_parts(content: &[Part], native: bool) -> Result<Vec<OutPart<'_>>, FormatError> {
    let mut parts = Vec::with_capacity(content.len());
    for p in content {
        match p {
            Part::Text { text, .. } => parts.push(OutPart::Text { ty: "text", text }),
            Part::Image { source, detail, .. } => parts.push(image_part(source, detail)),
            Part::Opaque { raw, .. } if native => parts.push(OutPart::Raw(raw)),
            Part::Opaque { kind, .. } => return Err(unsupported_block(kind)),
            // Not user content in any format; nothing to send.
            Part::ToolCall { .. }
            | Part::ToolResult { .. }
            | Part::Reasoning { .. }
            | Part::RedactedReasoning { .. } => {}
        }
    }
    Ok(parts)
}

fn image_part<'a>(source: &'a ImageSource, detail: &'a Option<String>) -> OutPart<'a> {
    OutPart::Image {
        ty: "image_url",
        image_url: OutImageUrl {
            url: ImageUrl(source),
            detail: detail.as_deref(),
        },
    }
}

/// A user turn: each tool result becomes a `tool` message (OpenAI tool messages carry text only,
/// so a result's images follow in a user message), then the rest of the turn as a user message.
fn encode_user<'a>(
    content: &'a [Part],
    native: bool,
    opts: &EncodeOptions,
    out: &mut Vec<OutMessage<'a>>,
) -> Result<(), FormatError> {
    let mut tool_images = Vec::new();
    for p in content {
        let Part::ToolResult {
            tool_call_id,
            content: result,
            ..
        } = p
        else {
            continue;
        };
        let mut texts = Vec::with_capacity(result.len());
        for r in result {
            match r {
                Part::Text { text, .. } => texts.push(text.as_str()),
                Part::Image { source, detail, .. } => tool_images.push(image_part(source, detail)),
                Part::Opaque { raw, .. } if native => tool_images.push(OutPart::Raw(raw)),
                Part::Opaque { kind, .. } => return Err(unsupported_block(kind)),
                _ => {}
            }
        }
        let text = match texts.as_slice() {
            [one] => Cow::Borrowed(*one),
            many => Cow::Owned(many.join("\n")),
        };
        out.push(OutMessage {
            role: "tool",
            content: OutContent::Text(text),
            reasoning_content: None,
            tool_calls: Vec::new(),
            tool_call_id: Some(tool_call_id_for(tool_call_id, opts.tool_call_id_format)),
        });
    }
    let rest = user_parts(content, native)?;
    if tool_images.is_empty() && rest.is_empty() {
        return Ok(());
    }
    let content = if tool_images.is_empty() {
        content_of(rest)
    } else {
        tool_images.extend(rest);
        OutContent::Parts(tool_images)
    };
    out.push(plain_message("user", content));
    Ok(())
}

/// An assistant turn: its text (blocks joined by a blank line) and tool calls. Reasoning is sent
/// back as `reasoning_content` only when the provider asks for it (`reasoning_history`): OpenAI
/// takes none back.
fn encode_assistant<'a>(content: &'a [Part], opts: &EncodeOptions) -> OutMessage<'a> {
    let mut texts: Vec<&str> = Vec::new();
    let mut reasoning: Vec<&str> = Vec::new();
    let mut tool_calls = Vec::new();
    for p in content {
        match p {
            Part::Text { text, .. } => texts.push(text),
            Part::Reasoning { text, .. } if opts.reasoning_history => reasoning.push(text),
            Part::ToolCall {
                id,
                name,
                arguments_json,
                ..
            } => tool_calls.push(OutToolCall::Function {
                id: tool_call_id_for(id, opts.tool_call_id_format),
                ty: "function",
                function: OutFunctionCall {
                    name,
                    arguments: if arguments_json.is_empty() {
                        "{}"
                    } else {
                        arguments_json
                    },
                },
            }),
            // Only an OpenAI client's own non-function tool calls are opaque here.
            Part::Opaque { raw, .. } => tool_calls.push(OutToolCall::Raw(raw)),
            _ => {}
        }
    }
    let content = match texts.as_slice() {
        [] if !tool_calls.is_empty() => OutContent::Null(None),
        [one] => OutContent::Text(Cow::Borrowed(*one)),
        many => OutContent::Text(Cow::Owned(many.join("\n\n"))),
    };
    let reasoning_content = match reasoning.as_slice() {
        [] => None,
        [one] => Some(Cow::Borrowed(*one)),
        many => Some(Cow::Owned(many.concat())),
    };
    OutMessage {
        role: "assistant",
        content,
        reasoning_content,
        tool_calls,
        tool_call_id: None,
    }
}

/// Characters of an [`ToolCallIdFormat::Alphanumeric9`] id.
const ALPHANUMERIC9_LEN: usize = 9;
const ALPHANUMERIC: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
// 62^9 distinct ids fit the 64-bit digest they are drawn from.
const _: () = assert!(62u64.checked_pow(ALPHANUMERIC9_LEN as u32).is_some());

/// A tool-call id in the form the provider accepts: kept when it already fits, else (for
/// [`ToolCallIdFormat::Alphanumeric9`]) 9 letters and digits from a 64-bit FNV-1a digest of
/// the id, so a call and its result, sent again in every later turn, keep matching.
fn tool_call_id_for(id: &str, format: ToolCallIdFormat) -> Cow<'_, str> {
    let fits =
        |id: &str| id.len() == ALPHANUMERIC9_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric());
    match format {
        ToolCallIdFormat::Any => Cow::Borrowed(id),
        ToolCallIdFormat::Alphanumeric9 if fits(id) => Cow::Borrowed(id),
        ToolCallIdFormat::Alphanumeric9 => {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in id.bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            let mut out = String::with_capacity(ALPHANUMERIC9_LEN);
            for _ in 0..ALPHANUMERIC9_LEN {
                out.push(char::from(ALPHANUMERIC[(h % 62) as usize]));
                h /= 62;
            }
            Cow::Owned(out)
        }
    }
}

fn encode_tool_choice(c: &ToolChoice) -> OutToolChoice<'_> {
    match c {
        ToolChoice::Auto => OutToolChoice::Mode("auto"),
        ToolChoice::None => OutToolChoice::Mode("none"),
        ToolChoice::Required => OutToolChoice::Mode("required"),
        ToolChoice::Tool(name) => OutToolChoice::Named {
            ty: "function",
            function: OutName { name },
        },
    }
}

fn encode_response_format(s: &StructuredOutput) -> OutResponseFormat<'_> {
    match &s.schema {
        None => OutResponseFormat {
            ty: "json_object",
            json_schema: None,
        },
        Some(schema) => OutResponseFormat {
            ty: "json_schema",
            json_schema: Some(OutJsonSchema {
                name: s
                    .name
                    .as_deref()
                    .unwrap_or(STRUCTURED_OUTPUT_TOOL_NAME_DEFAULT),
                description: s.description.as_deref(),
                schema,
                strict: s.strict,
            }),
        },
    }
}

/// The client's effort, or one derived from an Anthropic thinking budget. Disabled and adaptive
/// thinking without an effort send none (the model's default).
fn reasoning_effort(req: &ChatRequest) -> Option<&'static str> {
    let r = req.reasoning.as_ref()?;
    if let Some(e) = r.effort {
        return Some(e.as_str());
    }
    match r.mode {
        Some(ReasoningMode::Budget(n)) => Some(effort_for_budget(n).as_str()),
        Some(ReasoningMode::Adaptive | ReasoningMode::Disabled) | None => None,
    }
}

/// `stream_options` for a streamed request: the client's own (OpenAI clients) with
/// `include_usage` set, the gateway always wanting the usage; none for a provider that refuses
/// the field (`stream_usage` off; such servers send the usage unasked).
fn stream_options(
    req: &ChatRequest,
    opts: &EncodeOptions,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    if !req.stream || !opts.stream_usage {
        return None;
    }
    let mut map: serde_json::Map<String, serde_json::Value> = req
        .extra_field("stream_options")
        .filter(|_| req.source == Format::OpenAiChat)
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or_default();
    map.insert("include_usage".to_owned(), serde_json::Value::Bool(true));
    (!map.is_empty()).then_some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &str) -> ChatRequest {
        decode_request(body.as_bytes()).unwrap()
    }

    fn encode(req: &ChatRequest) -> serde_json::Value {
        let mut out = Vec::new();
        encode_request(req, "up", &EncodeOptions::default(), &mut out).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn bad_requests_have_stable_codes() {
        let cases = [
            ("", "invalid_request_body"),
            ("[]", "invalid_json"),
            (r#"{"messages":[]}"#, "missing_model"),
            (r#"{"model":""}"#, "missing_model"),
            (r#"{"model":"m"}"#, "missing_messages"),
            (r#"{"model":"m","messages":{}}"#, "invalid_field"),
            (
                r#"{"model":"m","messages":[{"role":"function","content":"x"}]}"#,
                "invalid_role",
            ),
            (
                r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#,
                "missing_tool_call_id",
            ),
            (
                r#"{"model":"m","messages":[],"reasoning_effort":"huge"}"#,
                "invalid_field",
            ),
            (
                r#"{"model":"m","messages":[],"tool_choice":"sometimes"}"#,
                "invalid_field",
            ),
            (
                r#"{"model":"m","messages":[],"temperature":"hot"}"#,
                "invalid_field",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}"#,
                "invalid_field",
            ),
        ];
        for (body, code) in cases {
            let e = decode_request(body.as_bytes()).unwrap_err();
            assert_eq!((e.status, e.code), (400, code), "{body}: {}", e.message);
        }
    }

    #[test]
    fn leading_instructions_become_the_system_prompt() {
        let r = decode(
            r#"{"model":"m","messages":[{"role":"developer","content":"a"},{"role":"system","content":[{"type":"text","text":"b"}]},{"role":"user","content":"hi"},{"role":"system","content":"late"}]}"#,
        );
        assert!(r.system_as_developer);
        let sys: Vec<_> = r.system.iter().map(|b| b.text.as_str()).collect();
        assert_eq!(sys, ["a", "b"]);
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.messages[1].role, Role::System);
        let v = encode(&r);
        assert_eq!(v["messages"][0]["role"], "developer");
        assert_eq!(v["messages"][0]["content"][1]["text"], "b");
        assert_eq!(v["messages"][2]["role"], "developer");
        assert_eq!(v["messages"][2]["content"], "late");
    }

    #[test]
    fn data_urls_are_base64_images() {
        assert_eq!(
            image_source("data:image/png;base64,iVBOR"),
            ImageSource::Base64 {
                media_type: "image/png".into(),
                data: "iVBOR".into()
            }
        );
        assert_eq!(
            image_source("https://x/y.png"),
            ImageSource::Url("https://x/y.png".into())
        );
        assert_eq!(
            image_source("data:text/plain,hello"),
            ImageSource::Url("data:text/plain,hello".into())
        );
    }

    #[test]
    fn stream_usage_is_asked_and_client_options_kept() {
        let r = decode(
            r#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_obfuscation":false}}"#,
        );
        assert!(r.stream && !r.stream_usage);
        let v = encode(&r);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["include_obfuscation"], false);
        let mut out = Vec::new();
        let opts = EncodeOptions {
            stream_usage: false,
            ..EncodeOptions::default()
        };
        let r = decode(r#"{"model":"m","messages":[],"stream":true}"#);
        encode_request(&r, "up", &opts, &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v.get("stream_options").is_none());
    }

    #[test]
    fn fallbacks_are_not_kept() {
        let r = decode(r#"{"model":"m","messages":[],"fallbacks":["a/b"],"seed":7}"#);
        assert_eq!(r.extra.len(), 1);
        assert_eq!(r.extra_field("seed").map(RawValue::get), Some("7"));
    }

    #[test]
    fn reasoning_effort_for_foreign_requests_follows_the_options() {
        let thinking = crate::formats::anthropic::decode_request(
            br#"{"model":"c","max_tokens":9000,"messages":[],"thinking":{"type":"enabled","budget_tokens":2048}}"#,
        )
        .unwrap();
        assert_eq!(encode(&thinking)["reasoning_effort"], "low");
        let opts = EncodeOptions {
            reasoning_effort: false,
            ..EncodeOptions::default()
        };
        let mut out = Vec::new();
        encode_request(&thinking, "gpt-4.1", &opts, &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v.get("reasoning_effort").is_none());
        // An OpenAI client's own effort is its choice.
        let own = decode(r#"{"model":"m","messages":[],"reasoning_effort":"high"}"#);
        let mut out = Vec::new();
        encode_request(&own, "o3", &opts, &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["reasoning_effort"], "high");
    }

    fn encode_with(
        req: &ChatRequest,
        opts: &EncodeOptions,
    ) -> Result<serde_json::Value, FormatError> {
        let mut out = Vec::new();
        encode_request(req, "up", opts, &mut out)?;
        Ok(serde_json::from_slice(&out).unwrap())
    }

    /// An Anthropic conversation: a thinking turn that called a tool, and its result.
    fn anthropic_tool_turns() -> ChatRequest {
        crate::formats::anthropic::decode_request(
            br#"{"model":"c","max_tokens":100,"tools":[{"name":"get_weather","input_schema":{"type":"object"}}],
            "tool_choice":{"type":"auto","disable_parallel_tool_use":true},
            "messages":[{"role":"user","content":"weather?"},
            {"role":"assistant","content":[{"type":"thinking","thinking":"Let me look.","signature":""},
              {"type":"tool_use","id":"toolu_01A09q90qw90lq917835lq9","name":"get_weather","input":{}}]},
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_01A09q90qw90lq917835lq9","content":"sunny"}]}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn tool_call_ids_follow_the_provider_format() {
        let req = anthropic_tool_turns();
        let v = encode_with(&req, &EncodeOptions::default()).unwrap();
        assert_eq!(
            v["messages"][1]["tool_calls"][0]["id"],
            "toolu_01A09q90qw90lq917835lq9"
        );
        let opts = EncodeOptions {
            tool_call_id_format: ToolCallIdFormat::Alphanumeric9,
            ..EncodeOptions::default()
        };
        let v = encode_with(&req, &opts).unwrap();
        let call = v["messages"][1]["tool_calls"][0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(v["messages"][2]["tool_call_id"], call.as_str(), "{v}");
        assert!(
            call.len() == 9 && call.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{call}"
        );
        // The same id in every later turn; an id that already fits is kept.
        assert_eq!(
            encode_with(&req, &opts).unwrap()["messages"][1]["tool_calls"][0]["id"],
            call.as_str()
        );
        assert_eq!(
            tool_call_id_for("D681PevKs", ToolCallIdFormat::Alphanumeric9),
            "D681PevKs"
        );
        assert_ne!(
            tool_call_id_for("call_1", ToolCallIdFormat::Alphanumeric9),
            tool_call_id_for("call_2", ToolCallIdFormat::Alphanumeric9)
        );
    }

    #[test]
    fn tools_and_parallel_tool_calls_follow_the_provider() {
        let req = anthropic_tool_turns();
        assert_eq!(encode(&req)["parallel_tool_calls"], false);
        let opts = EncodeOptions {
            parallel_tool_calls: false,
            ..EncodeOptions::default()
        };
        let v = encode_with(&req, &opts).unwrap();
        assert!(
            v.get("parallel_tool_calls").is_none() && v["tools"].is_array(),
            "{v}"
        );
        let opts = EncodeOptions {
            tools: false,
            ..EncodeOptions::default()
        };
        let e = encode_with(&req, &opts).unwrap_err();
        assert_eq!((e.status, e.code), (400, "unsupported_tool"));
        // Without tools offered the request goes through.
        let plain = decode(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#);
        assert!(encode_with(&plain, &opts).is_ok());
    }

    #[test]
    fn reasoning_goes_back_only_when_the_provider_needs_it() {
        let req = anthropic_tool_turns();
        let v = encode(&req);
        assert!(v["messages"][1].get("reasoning_content").is_none(), "{v}");
        let opts = EncodeOptions {
            reasoning_history: true,
            ..EncodeOptions::default()
        };
        let v = encode_with(&req, &opts).unwrap();
        assert_eq!(v["messages"][1]["reasoning_content"], "Let me look.");
        assert!(v["messages"][0].get("reasoning_content").is_none());
    }

    #[test]
    fn max_tokens_field_follows_the_options() {
        let r = decode(r#"{"model":"m","messages":[],"max_tokens":5}"#);
        assert_eq!(encode(&r)["max_completion_tokens"], 5);
        let mut out = Vec::new();
        let opts = EncodeOptions {
            max_tokens_field: MaxTokensField::MaxTokens,
            ..EncodeOptions::default()
        };
        encode_request(&r, "up", &opts, &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (v["max_tokens"].as_u64(), v.get("max_completion_tokens")),
            (Some(5), None)
        );
    }
}

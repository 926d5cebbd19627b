//! Between the client's wire format and the upstream's, on the worker thread. When both speak
//! the same format the body passes through with only its `model` replaced (and the gateway's own
//! `fallbacks` field removed): every other field, unknown ones included, reaches the upstream as
//! the client wrote it, and answers and stream events come back byte for byte while their usage is
//! read on the way. Otherwise the request is decoded into the format-neutral model and encoded for
//! the upstream, and its answer, errors and stream events are decoded and encoded back for the
//! client (see `crate::formats`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::adapter::Format;
use super::sse::push_event;
use crate::error::{ApiError, ErrorKind};
use crate::formats::bedrock::embeddings;
use crate::formats::codec::{self, StreamDecoder, StreamEncoder};
use crate::formats::responses::WireUsage as ResponsesUsage;
use crate::formats::{AnswerOptions, EncodeInfo, EncodeOptions, StreamError, StreamEvent};
use crate::job::{Answer, ClientApi, Usage};

/// Response headers of an upstream passed on to the client: rate-limit state and `Retry-After`.
pub const RELAYED_HEADERS: [&str; 22] = [
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-limit",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-limit",
    "anthropic-ratelimit-output-tokens-remaining",
    "anthropic-ratelimit-output-tokens-reset",
    "anthropic-priority-input-tokens-limit",
    "anthropic-priority-input-tokens-remaining",
    "anthropic-priority-output-tokens-remaining",
];

/// The gateway's own request field (tried providers), never sent upstream.
const FALLBACKS_FIELD: &str = "fallbacks";

/// Whether a client of `api` and an upstream speaking `wire` share the wire format.
pub fn same_format(api: ClientApi, wire: Format) -> bool {
    matches!(
        (api, wire),
        (
            ClientApi::OpenAiChat | ClientApi::OpenAiEmbeddings | ClientApi::OpenAiCompletions,
            Format::OpenAiChat
        ) | (
            ClientApi::AnthropicMessages | ClientApi::AnthropicCountTokens,
            Format::Anthropic
        ) | (ClientApi::OpenAiResponses, Format::OpenAiResponses)
    )
}

/// How a job's upstream body was made, and so what its answer needs on the way back.
#[derive(Debug)]
pub enum Mode {
    /// The same format: the body passed through with its model replaced.
    Passthrough,
    /// Translated from the client's format; `info` is what the encoder did; `reasoning_state`:
    /// the client asked for the provider's reasoning state with the answer (see
    /// [`crate::formats::ChatRequest::reasoning_state`]).
    Translated {
        client: Format,
        info: EncodeInfo,
        reasoning_state: bool,
    },
}

/// The upstream body of a job, appended to `out`: the client's body rewritten when the formats
/// match, else decoded and encoded for `wire`. `stream` asks an OpenAI upstream for the usage,
/// unless `opts.stream_usage` is off: such a provider refuses `stream_options`, so none is sent.
pub fn prepare(
    api: ClientApi,
    wire: Format,
    body: &[u8],
    upstream_model: &str,
    stream: bool,
    opts: &EncodeOptions,
    out: &mut Vec<u8>,
) -> Result<Mode, ApiError> {
    if same_format(api, wire) {
        let edit = match (stream && wire == Format::OpenAiChat, opts.stream_usage) {
            (false, _) => StreamOptionsEdit::Keep,
            (true, true) => StreamOptionsEdit::ForceUsage,
            (true, false) => StreamOptionsEdit::Remove,
        };
        rewrite_passthrough_with(body, upstream_model, edit, out)?;
        return Ok(Mode::Passthrough);
    }
    if api.operation() == crate::job::Operation::Embeddings && wire == Format::Gemini {
        return prepare_google_embeddings(body, upstream_model, opts, out);
    }
    if api.operation() != crate::job::Operation::Chat {
        // Operations other than chat pass through to a provider of their own API only.
        return Err(ApiError::new(
            ErrorKind::NotFound,
            "unsupported_operation",
            "this provider does not offer this operation",
        ));
    }
    let client = api.format();
    let mut req = codec::decode_request(client, body)?;
    req.stream = stream;
    let info = codec::encode_request(wire, &req, upstream_model, opts, out)?;
    Ok(Mode::Translated {
        client,
        info,
        reasoning_state: req.reasoning_state,
    })
}

/// An OpenAI embeddings request for a Google provider (AI Studio's `batchEmbedContents` or
/// Vertex's `predict`, as `opts.google_embeddings` says).
fn prepare_google_embeddings(
    body: &[u8],
    upstream_model: &str,
    opts: &EncodeOptions,
    out: &mut Vec<u8>,
) -> Result<Mode, ApiError> {
    let req = crate::formats::embeddings::decode_openai_request(body)?;
    let embeddings = crate::formats::gemini::encode_embeddings_request(
        &req,
        upstream_model,
        opts.google_embeddings,
        out,
    )?;
    Ok(Mode::Translated {
        client: Format::OpenAiChat,
        info: EncodeInfo {
            embeddings: Some(embeddings),
            ..EncodeInfo::default()
        },
        reasoning_state: false,
    })
}

/// Whether the usage of an answer in `mode` is the gateway's estimate (embeddings of a Google
/// provider that reports no token count), for the [`ESTIMATE_HEADER`].
pub fn usage_estimated(mode: &Mode) -> bool {
    match mode {
        Mode::Translated {
            info: EncodeInfo {
                embeddings: Some(e),
                ..
            },
            ..
        } => e.dialect == crate::formats::gemini::EmbeddingsDialect::BatchEmbedContents,
        _ => false,
    }
}

/// A successful whole answer of `wire` for the client: its body (translated when the mode says
/// so) and its usage; `None` when the body cannot be read.
pub fn success_answer(
    mode: &Mode,
    wire: Format,
    body: Vec<u8>,
    upstream_model: &str,
) -> Result<(Vec<u8>, Usage), ApiError> {
    match mode {
        Mode::Passthrough => {
            let usage = answer_usage(wire, &body).ok_or_else(|| {
                ApiError::new(
                    ErrorKind::UpstreamInvalid,
                    "upstream_invalid_response",
                    "the answer is not JSON",
                )
            })?;
            Ok((body, usage))
        }
        Mode::Translated {
            info: EncodeInfo {
                embeddings: Some(e),
                ..
            },
            ..
        } => {
            let (resp, _) = crate::formats::gemini::decode_embeddings_response(&body, e)?;
            let mut out = Vec::with_capacity(resp.vectors.len() * 64 + 128);
            crate::formats::embeddings::encode_openai_response(&resp, e.encoding, &mut out);
            let usage = Usage {
                input_tokens: resp.input_tokens,
                ..Usage::default()
            };
            Ok((out, usage))
        }
        Mode::Translated {
            client,
            info,
            reasoning_state,
        } => {
            let resp = codec::decode_response(wire, &body, info)?;
            let model = if resp.model.is_empty() {
                upstream_model
            } else {
                resp.model.as_str()
            };
            let mut out = Vec::with_capacity(body.len() + 256);
            let opts = AnswerOptions {
                include_usage: false,
                reasoning_state: *reasoning_state,
            };
            codec::encode_response(*client, &resp, model, opts, &mut out);
            Ok((out, resp.usage))
        }
    }
}

/// An upstream error answer for the client: as it is when the formats match, else read and
/// written again in the client's format (status kept). `error_type` is the type the upstream
/// named outside the body (AWS's `x-amzn-errortype`); it prefixes the message.
pub fn error_answer(
    mode: &Mode,
    wire: Format,
    status: u16,
    body: Vec<u8>,
    error_type: Option<&str>,
) -> Vec<u8> {
    match mode {
        Mode::Passthrough => body,
        Mode::Translated { client, .. } => {
            let mut e = codec::decode_error(wire, status, &body);
            if let Some(t) = error_type.filter(|t| !t.is_empty()) {
                e.message = format!("{t}: {}", e.message);
                e.error_type = t.to_owned();
            }
            codec::error_body(
                *client,
                status,
                Some(&e.error_type),
                &e.message,
                e.code.as_deref(),
            )
        }
    }
}

/// The calls that answer an embeddings request for an upstream of another format: `None` when
/// the formats match (the request passes through); an error when the upstream's format has no
/// embeddings the gateway can translate to (only Bedrock's InvokeModel has).
pub fn embeddings_plan(
    api: ClientApi,
    wire: Format,
    body: &[u8],
    upstream_model: &str,
) -> Result<Option<embeddings::Plan>, ApiError> {
    if same_format(api, wire) {
        return Ok(None);
    }
    match wire {
        Format::Bedrock => Ok(Some(embeddings::plan(body, upstream_model)?)),
        // Google's embeddings are one call, prepared like any other request.
        Format::Gemini => Ok(None),
        Format::OpenAiChat | Format::Anthropic | Format::OpenAiResponses => Err(ApiError::new(
            ErrorKind::NotFound,
            "unsupported_operation",
            "this provider does not offer this operation",
        )),
    }
}

/// One call's answer of an embeddings plan; `input_tokens` is what the call's response headers
/// reported, when they did.
pub fn embeddings_part(
    plan: &embeddings::Plan,
    body: &[u8],
    input_tokens: Option<u64>,
) -> Result<embeddings::Vectors, ApiError> {
    let mut part = embeddings::decode_answer(plan.family, body)?;
    part.input_tokens = input_tokens.or(part.input_tokens);
    Ok(part)
}

/// The client's answer from every call's vectors, with the usage.
pub fn embeddings_answer(
    plan: &embeddings::Plan,
    parts: Vec<embeddings::Vectors>,
    upstream_model: &str,
    headers: Vec<(&'static str, String)>,
) -> Result<Answer, ApiError> {
    let mut body = Vec::new();
    let tokens = embeddings::answer(plan, parts, upstream_model, &mut body)?;
    Ok(Answer {
        status: 200,
        content_type: "application/json",
        body,
        headers,
        usage: Usage {
            input_tokens: tokens,
            ..Usage::default()
        },
    })
}

/// Response header marking an answer the gateway estimated instead of asking the provider.
pub const ESTIMATE_HEADER: &str = "x-deepintshield-estimate";

/// Anthropic's `count_tokens` answered by the gateway for a provider without that endpoint: an
/// estimate (about four characters a token, see `formats::anthropic::count_tokens`), marked by
/// [`ESTIMATE_HEADER`].
pub fn count_tokens_estimate(body: &[u8]) -> Result<Answer, ApiError> {
    let req = codec::decode_request(Format::Anthropic, body)?;
    let tokens = crate::formats::anthropic::count_tokens(&req);
    Ok(Answer {
        status: 200,
        content_type: "application/json",
        body: crate::formats::anthropic::count_tokens_body(tokens),
        headers: vec![(ESTIMATE_HEADER, "token-count".to_string())],
        usage: Usage::default(),
    })
}

/// Top-level fields of a JSON object in document order, values as raw JSON.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
                while let Some(entry) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(V)
    }
}

/// The client's body for an upstream of the same format: `model` replaced by `upstream_model`,
/// `fallbacks` removed, and for an OpenAI stream `stream_options.include_usage` set (the gateway
/// always learns the usage; the usage chunk reaches the client only when it asked). Everything
/// else is copied byte for byte: the edits are spliced into the client's own text (keys,
/// escapes, order and whitespace kept).
pub fn rewrite_passthrough(
    body: &[u8],
    upstream_model: &str,
    force_stream_usage: bool,
    out: &mut Vec<u8>,
) -> Result<(), ApiError> {
    let edit = match force_stream_usage {
        true => StreamOptionsEdit::ForceUsage,
        false => StreamOptionsEdit::Keep,
    };
    rewrite_passthrough_with(body, upstream_model, edit, out)
}

/// What a passthrough rewrite does to `stream_options`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamOptionsEdit {
    /// Left as the client wrote it (or left out).
    Keep,
    /// `include_usage: true` set, the member added when missing.
    ForceUsage,
    /// The member removed (a provider that refuses the field).
    Remove,
}

/// [`rewrite_passthrough`] with any [`StreamOptionsEdit`].
pub fn rewrite_passthrough_with(
    body: &[u8],
    upstream_model: &str,
    stream_options: StreamOptionsEdit,
    out: &mut Vec<u8>,
) -> Result<(), ApiError> {
    let force_stream_usage = stream_options == StreamOptionsEdit::ForceUsage;
    let invalid = |e: serde_json::Error| {
        ApiError::bad_request(
            "invalid_json",
            format!("the request body is not a valid JSON object: {e}"),
        )
    };
    let Fields(fields) = serde_json::from_slice(body).map_err(invalid)?;
    // Where each member's value lies in `body` (serde_json borrows raw values from the input).
    let base = body.as_ptr() as usize;
    let span = |raw: &RawValue| {
        let start = raw.get().as_ptr() as usize - base;
        (start, start + raw.get().len())
    };
    let open = body.iter().position(|&b| b == b'{').unwrap_or(0);
    let close = body.iter().rposition(|&b| b == b'}').unwrap_or(body.len());
    // (start, end, replacement) of every edit, in body order.
    let mut edits: Vec<(usize, usize, Vec<u8>)> = Vec::with_capacity(3);
    let mut has_options = false;
    let removed: Vec<bool> = fields
        .iter()
        .map(|(key, _)| {
            key == FALLBACKS_FIELD
                || (key == "stream_options" && stream_options == StreamOptionsEdit::Remove)
        })
        .collect();
    // Each run of removed members goes with one comma that separates it from its neighbours:
    // the one before it, or for a run at the start, the one after it.
    let mut i = 0;
    while i < fields.len() {
        if !removed[i] {
            i += 1;
            continue;
        }
        let first = i;
        while i + 1 < fields.len() && removed[i + 1] {
            i += 1;
        }
        let end = span(fields[i].1).1;
        let cut = match first.checked_sub(1) {
            Some(prev) => (span(fields[prev].1).1, end),
            None => {
                let next_comma = body[end..close]
                    .iter()
                    .position(|&b| b == b',')
                    .map_or(close, |at| end + at + 1);
                (open + 1, next_comma)
            }
        };
        edits.push((cut.0, cut.1, Vec::new()));
        i += 1;
    }
    for (i, (key, value)) in fields.iter().enumerate() {
        let (start, end) = span(value);
        match key.as_ref() {
            _ if removed[i] => {}
            "model" => {
                let mut model = Vec::with_capacity(upstream_model.len() + 2);
                write_json_str(&mut model, upstream_model);
                edits.push((start, end, model));
            }
            "stream_options" if force_stream_usage => {
                has_options = true;
                let mut options: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(value.get()).unwrap_or_default();
                options.insert("include_usage".into(), serde_json::Value::Bool(true));
                // Serializing a map of JSON values cannot fail.
                let text = serde_json::to_vec(&options).unwrap_or_default();
                edits.push((start, end, text));
            }
            _ => {}
        }
    }
    if force_stream_usage && !has_options {
        let member = b",\"stream_options\":{\"include_usage\":true}".to_vec();
        edits.push((close, close, member));
    }
    edits.sort_by_key(|e| e.0);
    out.reserve(body.len() + upstream_model.len() + 48);
    let mut at = 0;
    for (start, end, replacement) in edits {
        if start < at {
            continue;
        }
        out.extend_from_slice(&body[at..start]);
        out.extend_from_slice(&replacement);
        at = end;
    }
    out.extend_from_slice(&body[at..]);
    Ok(())
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Serializing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[derive(Deserialize, Default)]
struct OpenAiUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize, Default)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl OpenAiUsage {
    fn neutral(&self) -> Usage {
        let cached = self
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0)
            .min(self.prompt_tokens);
        Usage {
            input_tokens: self.prompt_tokens,
            output_tokens: self.completion_tokens,
            cache_read_tokens: cached,
            cache_write_tokens: 0,
            reasoning_tokens: self
                .completion_tokens_details
                .as_ref()
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

#[derive(Deserialize, Default)]
struct AnthropicUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// Fold these counts into `usage`: a count that is present replaces the one before (a
    /// stream's `message_delta` carries cumulative totals). Anthropic's `input_tokens` leaves out
    /// the cached tokens, which the neutral count includes.
    fn merge_into(&self, usage: &mut Usage) {
        let uncached = usage
            .input_tokens
            .saturating_sub(usage.cache_read_tokens + usage.cache_write_tokens);
        let uncached = self.input_tokens.unwrap_or(uncached);
        if let Some(v) = self.cache_creation_input_tokens {
            usage.cache_write_tokens = v;
        }
        if let Some(v) = self.cache_read_input_tokens {
            usage.cache_read_tokens = v;
        }
        usage.input_tokens = uncached + usage.cache_read_tokens + usage.cache_write_tokens;
        if let Some(v) = self.output_tokens {
            usage.output_tokens = v;
        }
    }
}

#[derive(Deserialize)]
struct WithUsage<U> {
    usage: Option<U>,
}

/// The usage of a whole successful answer in `wire`'s format (zeros when it has none); `None`
/// when the body is not a JSON object.
pub fn answer_usage(wire: Format, body: &[u8]) -> Option<Usage> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    Some(match wire {
        Format::OpenAiChat => serde_json::from_slice::<WithUsage<OpenAiUsage>>(body)
            .ok()?
            .usage
            .map(|u| u.neutral())
            .unwrap_or_default(),
        Format::Anthropic => {
            let mut usage = Usage::default();
            if let Some(u) = serde_json::from_slice::<WithUsage<AnthropicUsage>>(body)
                .ok()?
                .usage
            {
                u.merge_into(&mut usage);
            }
            usage
        }
        Format::Gemini => crate::formats::gemini::answer_usage(body)?,
        Format::Bedrock => {
            codec::decode_response(Format::Bedrock, body, &EncodeInfo::default())
                .ok()?
                .usage
        }
        Format::OpenAiResponses => serde_json::from_slice::<WithUsage<ResponsesUsage>>(body)
            .ok()?
            .usage
            .map(|u| u.to_neutral())
            .unwrap_or_default(),
    })
}

/// What one upstream event did to a stream.
#[derive(Debug)]
pub enum Step {
    /// More events follow.
    More,
    /// The stream is complete (its terminator was read and passed on).
    Complete,
    /// The upstream reported an error in the stream; the event describing it was passed on to
    /// the client as it is, and the stream ends with this error.
    UpstreamError(ApiError),
}

/// Turns upstream stream events into the client's stream bytes, reading the usage on the way.
pub trait StreamConvert {
    /// One upstream event (`name` empty when unnamed): append what the client gets to `out`.
    fn event(&mut self, name: &[u8], data: &[u8], out: &mut Vec<u8>) -> Result<Step, ApiError>;
    /// The usage read so far.
    fn usage(&self) -> Usage;
    /// The upstream's name for the stream's terminator, for messages.
    fn terminator(&self) -> &'static str;
    /// An error the upstream reported inside a stream it then went on with (passed on to the
    /// client already; counted once the stream ends).
    fn take_reported_error(&mut self) -> Option<ApiError> {
        None
    }

    /// An exception the upstream reported outside its events (an AWS event stream's
    /// `:message-type exception` or `error`): append the client's error event to `out`, or
    /// return the error the client then gets as one.
    fn exception(
        &mut self,
        error_type: &str,
        _payload: &[u8],
        _out: &mut Vec<u8>,
    ) -> Result<Step, ApiError> {
        Err(ApiError::new(
            ErrorKind::UpstreamInvalid,
            "upstream_stream_error",
            format!("the provider reported {error_type} in the stream"),
        ))
    }

    /// The upstream's body ended: `Ok` (with what closes the client's stream appended to `out`)
    /// when that is a complete stream in its format, else the error the client gets.
    fn end_of_body(&mut self, _out: &mut Vec<u8>) -> Result<(), ApiError> {
        Err(ApiError::new(
            ErrorKind::UpstreamInvalid,
            "upstream_stream_truncated",
            format!("the stream ended without {}", self.terminator()),
        ))
    }
}

/// The converter for a stream from an upstream of `wire` in `mode`. `wants_usage`: the client
/// asked for OpenAI's usage chunk; `model` is the model named to the client.
pub fn stream_converter(
    mode: &Mode,
    wire: Format,
    wants_usage: bool,
    model: &str,
) -> Box<dyn StreamConvert> {
    match (mode, wire) {
        (
            Mode::Translated {
                client,
                info,
                reasoning_state,
            },
            _,
        ) => Box::new(Translated {
            decoder: StreamDecoder::new(wire, info),
            encoder: StreamEncoder::new(
                *client,
                model,
                AnswerOptions {
                    include_usage: wants_usage,
                    reasoning_state: *reasoning_state,
                },
                crate::formats::unix_now_s(),
            ),
            events: Vec::new(),
            usage: Usage::default(),
            terminator: match wire {
                Format::OpenAiChat => "[DONE]",
                Format::Anthropic => "message_stop",
                Format::Gemini => "a chunk with a finishReason",
                Format::Bedrock => "messageStop",
                Format::OpenAiResponses => RESPONSES_TERMINATOR,
            },
        }),
        (Mode::Passthrough, Format::Gemini) => Box::new(GeminiPassthrough::default()),
        (Mode::Passthrough, Format::Anthropic) => Box::new(AnthropicPassthrough::default()),
        (Mode::Passthrough, Format::OpenAiResponses) => Box::new(ResponsesPassthrough::default()),
        // No client speaks Bedrock: a Bedrock stream is always translated.
        (Mode::Passthrough, Format::OpenAiChat | Format::Bedrock) => Box::new(OpenAiPassthrough {
            wants_usage,
            usage: Usage::default(),
            reported: None,
        }),
    }
}

/// A stream of another format: each upstream event decoded into neutral events, written again
/// for the client; what the client's format holds back (Anthropic's stop reason waits for
/// OpenAI's usage) is written at the end.
struct Translated {
    decoder: StreamDecoder,
    encoder: StreamEncoder,
    /// Neutral events of the current upstream event (reused).
    events: Vec<StreamEvent>,
    usage: Usage,
    terminator: &'static str,
}

impl Translated {
    /// The client's error event for an error the upstream reported, and the step that ends the
    /// stream with it: rate limits and 5xx count as the upstream's failure, the rest as an
    /// unusable answer.
    fn upstream_error(&mut self, e: StreamError, out: &mut Vec<u8>) -> Step {
        self.encoder.error(&e, out);
        let kind = if e.status == 429 || e.status >= 500 {
            ErrorKind::UpstreamTransport
        } else {
            ErrorKind::UpstreamInvalid
        };
        Step::UpstreamError(ApiError::new(kind, "upstream_stream_error", e.message).already_sent())
    }
}

impl StreamConvert for Translated {
    fn event(&mut self, name: &[u8], data: &[u8], out: &mut Vec<u8>) -> Result<Step, ApiError> {
        let name = std::str::from_utf8(name).ok().filter(|n| !n.is_empty());
        self.events.clear();
        self.decoder.feed(name, data, &mut self.events)?;
        let mut error: Option<StreamError> = None;
        for ev in &self.events {
            match ev {
                StreamEvent::MessageStart { usage, .. } | StreamEvent::Usage(usage) => {
                    self.usage = *usage;
                }
                StreamEvent::Error(e) => {
                    error = Some(e.clone());
                    break;
                }
                _ => {}
            }
            self.encoder.encode(ev, out);
        }
        if let Some(e) = error {
            return Ok(self.upstream_error(e, out));
        }
        if self.decoder.is_complete() {
            self.encoder.finish(out);
            return Ok(Step::Complete);
        }
        Ok(Step::More)
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn terminator(&self) -> &'static str {
        self.terminator
    }

    fn exception(
        &mut self,
        error_type: &str,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Step, ApiError> {
        let e = self.decoder.exception(error_type, payload);
        Ok(self.upstream_error(e, out))
    }

    fn end_of_body(&mut self, out: &mut Vec<u8>) -> Result<(), ApiError> {
        self.decoder.finish().map_err(|e| {
            ApiError::new(
                ErrorKind::UpstreamInvalid,
                "upstream_stream_truncated",
                e.message,
            )
        })?;
        self.encoder.finish(out);
        Ok(())
    }
}

/// OpenAI chunks passed on as they are; the usage chunk only when the client asked for it. An
/// `{"error":{...}}` chunk is passed on too, and the stream goes on as the upstream sends it.
struct OpenAiPassthrough {
    wants_usage: bool,
    usage: Usage,
    reported: Option<ApiError>,
}

impl StreamConvert for OpenAiPassthrough {
    fn event(&mut self, _name: &[u8], data: &[u8], out: &mut Vec<u8>) -> Result<Step, ApiError> {
        if data == b"[DONE]" {
            push_event(out, b"", data);
            return Ok(Step::Complete);
        }
        if contains(data, b"\"usage\":{") || contains(data, b"\"usage\": {") {
            if let Ok(WithUsage { usage: Some(u) }) =
                serde_json::from_slice::<WithUsage<OpenAiUsage>>(data)
            {
                self.usage = u.neutral();
            }
            let usage_only =
                contains(data, b"\"choices\":[]") || contains(data, b"\"choices\": []");
            if usage_only && !self.wants_usage {
                return Ok(Step::More);
            }
        }
        if self.reported.is_none() && contains(data, b"\"error\"") {
            self.reported = openai_stream_error(data);
        }
        push_event(out, b"", data);
        Ok(Step::More)
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn terminator(&self) -> &'static str {
        "[DONE]"
    }

    fn take_reported_error(&mut self) -> Option<ApiError> {
        self.reported.take()
    }
}

/// An OpenAI-style `{"error":{...}}` event sent mid-stream.
fn openai_stream_error(data: &[u8]) -> Option<ApiError> {
    #[derive(Deserialize)]
    struct Inner {
        message: Option<String>,
    }
    #[derive(Deserialize)]
    struct Outer {
        error: Inner,
    }
    let outer: Outer = serde_json::from_slice(data).ok()?;
    Some(ApiError::new(
        ErrorKind::UpstreamInvalid,
        "upstream_stream_error",
        outer
            .error
            .message
            .unwrap_or_else(|| "the provider reported an error".into()),
    ))
}

/// Anthropic events passed on as they are (names kept); usage read from `message_start` and
/// `message_delta`.
#[derive(Default)]
struct AnthropicPassthrough {
    usage: Usage,
}

impl StreamConvert for AnthropicPassthrough {
    fn event(&mut self, name: &[u8], data: &[u8], out: &mut Vec<u8>) -> Result<Step, ApiError> {
        push_event(out, name, data);
        match name {
            b"message_start" => {
                #[derive(Deserialize)]
                struct Start {
                    message: WithUsage<AnthropicUsage>,
                }
                if let Ok(Start {
                    message: WithUsage { usage: Some(u) },
                }) = serde_json::from_slice(data)
                {
                    u.merge_into(&mut self.usage);
                }
            }
            b"message_delta" => {
                if let Ok(WithUsage { usage: Some(u) }) =
                    serde_json::from_slice::<WithUsage<AnthropicUsage>>(data)
                {
                    u.merge_into(&mut self.usage);
                }
            }
            b"message_stop" => return Ok(Step::Complete),
            b"error" => {
                return Ok(Step::UpstreamError(
                    ApiError::new(
                        ErrorKind::UpstreamInvalid,
                        "upstream_stream_error",
                        "the provider reported an error in the stream",
                    )
                    .already_sent(),
                ))
            }
            _ => {}
        }
        Ok(Step::More)
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn terminator(&self) -> &'static str {
        "message_stop"
    }
}

/// Gemini chunks passed on as they are; the usage read from each `usageMetadata`. The stream has
/// no terminator event: it is complete at the end of the body when its last chunk with a
/// candidate carried a `finishReason`.
#[derive(Default)]
struct GeminiPassthrough {
    usage: Usage,
    finished: bool,
}

impl StreamConvert for GeminiPassthrough {
    fn event(&mut self, _name: &[u8], data: &[u8], out: &mut Vec<u8>) -> Result<Step, ApiError> {
        push_event(out, b"", data);
        if let Some(u) = crate::formats::gemini::answer_usage(data) {
            if u != Usage::default() {
                self.usage = u;
            }
        }
        if contains(data, b"\"candidates\"") {
            self.finished = contains(data, b"\"finishReason\"");
        }
        if contains(data, b"\"error\"") && !contains(data, b"\"candidates\"") {
            return Ok(Step::UpstreamError(
                ApiError::new(
                    ErrorKind::UpstreamInvalid,
                    "upstream_stream_error",
                    "the provider reported an error in the stream",
                )
                .already_sent(),
            ));
        }
        Ok(Step::More)
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn terminator(&self) -> &'static str {
        "a chunk with a finishReason"
    }

    fn end_of_body(&mut self, _out: &mut Vec<u8>) -> Result<(), ApiError> {
        if self.finished {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorKind::UpstreamInvalid,
                "upstream_stream_truncated",
                format!("the stream ended without {}", self.terminator()),
            ))
        }
    }
}

/// The event that completes a Responses stream (`response.incomplete` and `response.failed` end
/// one too), for messages.
const RESPONSES_TERMINATOR: &str = "response.completed";

/// Responses events passed on as they are (names kept); the usage read from the event that ends
/// the stream: `response.completed`, `response.incomplete` or `response.failed` (the last also
/// ends it with the error the client just got). An `error` event is passed on and remembered;
/// the stream goes on as the upstream sends it.
#[derive(Default)]
struct ResponsesPassthrough {
    usage: Usage,
    reported: Option<ApiError>,
}

impl ResponsesPassthrough {
    fn read_usage(&mut self, data: &[u8]) {
        #[derive(Deserialize)]
        struct Terminal {
            response: Option<WithUsage<ResponsesUsage>>,
        }
        if let Ok(Terminal {
            response: Some(WithUsage { usage: Some(u) }),
        }) = serde_json::from_slice(data)
        {
            self.usage = u.to_neutral();
        }
    }
}

impl StreamConvert for ResponsesPassthrough {
    fn event(&mut self, name: &[u8], data: &[u8], out: &mut Vec<u8>) -> Result<Step, ApiError> {
        push_event(out, name, data);
        let typed;
        let ty = if name.is_empty() {
            typed = event_type(data);
            typed.as_deref().unwrap_or_default().as_bytes()
        } else {
            name
        };
        let reported = || {
            ApiError::new(
                ErrorKind::UpstreamInvalid,
                "upstream_stream_error",
                "the provider reported an error in the stream",
            )
        };
        match ty {
            b"response.completed" | b"response.incomplete" => {
                self.read_usage(data);
                Ok(Step::Complete)
            }
            b"response.failed" => {
                self.read_usage(data);
                Ok(Step::UpstreamError(reported().already_sent()))
            }
            b"error" => {
                self.reported.get_or_insert_with(reported);
                Ok(Step::More)
            }
            _ => Ok(Step::More),
        }
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn terminator(&self) -> &'static str {
        RESPONSES_TERMINATOR
    }

    fn take_reported_error(&mut self) -> Option<ApiError> {
        self.reported.take()
    }
}

/// The `type` of an event's payload (for events sent without an `event:` name).
fn event_type(data: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Typed<'a> {
        #[serde(rename = "type", borrow)]
        ty: Option<Cow<'a, str>>,
    }
    serde_json::from_slice::<Typed>(data)
        .ok()?
        .ty
        .map(Cow::into_owned)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough_keeps_every_field_in_order() {
        let body = br#"{"temperature":0.5,"model":"alias","x_unknown":{"a":[1,2]},"fallbacks":["a/b"],"messages":[{"role":"user","content":"hi"}]}"#;
        let mut out = Vec::new();
        rewrite_passthrough(body, "gpt-4o", false, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"temperature":0.5,"model":"gpt-4o","x_unknown":{"a":[1,2]},"messages":[{"role":"user","content":"hi"}]}"#
        );
        // Keys with escapes, whitespace and a leading `fallbacks` stay as written.
        let body = br#" { "fallbacks" : ["a/b"] , "caf\u00e9" : "x\/y",  "model":"m" } "#;
        let mut out = Vec::new();
        rewrite_passthrough(body, "u", false, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#" { "caf\u00e9" : "x\/y",  "model":"u" } "#
        );
    }

    #[test]
    fn stream_options_are_removed_for_providers_that_refuse_them() {
        for (body, want) in [
            (
                r#"{"fallbacks":["a/b"],"stream_options":{"include_usage":true},"model":"m","stream":true}"#,
                r#"{"model":"u","stream":true}"#,
            ),
            (
                r#"{"model":"m","stream_options":{},"fallbacks":[],"stream":true}"#,
                r#"{"model":"u","stream":true}"#,
            ),
            (
                r#"{"model":"m", "stream_options" : {} }"#,
                r#"{"model":"u" }"#,
            ),
            (r#"{"stream_options":{},"fallbacks":[]}"#, r#"{}"#),
        ] {
            let mut out = Vec::new();
            rewrite_passthrough_with(body.as_bytes(), "u", StreamOptionsEdit::Remove, &mut out)
                .unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), want, "{body}");
        }
    }

    #[test]
    fn openai_streams_always_ask_for_usage() {
        let body = br#"{"model":"m","messages":[],"stream":true,"stream_options":{"x":1}}"#;
        let mut out = Vec::new();
        rewrite_passthrough(body, "u", true, &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["x"], 1);
        assert_eq!(v["model"], "u");
    }

    #[test]
    fn usage_of_answers() {
        let openai = br#"{"usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}"#;
        let u = answer_usage(Format::OpenAiChat, openai).unwrap();
        let got = (u.input_tokens, u.cache_read_tokens, u.output_tokens);
        assert_eq!((got, u.reasoning_tokens), ((10, 4, 5), 2));
        let anthropic = br#"{"usage":{"input_tokens":3,"output_tokens":7,"cache_creation_input_tokens":11,"cache_read_input_tokens":13}}"#;
        let u = answer_usage(Format::Anthropic, anthropic).unwrap();
        let got = (u.input_tokens, u.output_tokens);
        assert_eq!(
            (got, u.cache_write_tokens, u.cache_read_tokens),
            ((27, 7), 11, 13)
        );
        assert_eq!(answer_usage(Format::Anthropic, b"not json"), None);
        assert_eq!(
            answer_usage(Format::OpenAiChat, b"{}"),
            Some(Usage::default())
        );
    }

    #[test]
    fn openai_stream_passthrough_hides_the_usage_chunk_unless_asked() {
        let usage = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7}}"#;
        for wants in [false, true] {
            let mut c = stream_converter(&Mode::Passthrough, Format::OpenAiChat, wants, "m");
            let mut out = Vec::new();
            assert!(matches!(
                c.event(b"", br#"{"choices":[{"delta":{"content":"a"}}]}"#, &mut out),
                Ok(Step::More)
            ));
            c.event(b"", usage, &mut out).unwrap();
            assert!(matches!(
                c.event(b"", b"[DONE]", &mut out),
                Ok(Step::Complete)
            ));
            let text = String::from_utf8(out).unwrap();
            assert_eq!(text.contains("\"usage\""), wants, "{text}");
            assert!(text.ends_with("data: [DONE]\n\n"));
            assert_eq!((c.usage().input_tokens, c.usage().output_tokens), (5, 7));
        }
    }

    #[test]
    fn anthropic_stream_passthrough_keeps_names_and_reads_usage() {
        let mut c = stream_converter(&Mode::Passthrough, Format::Anthropic, false, "m");
        let mut out = Vec::new();
        let start = br#"{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":25,"output_tokens":1,"cache_read_input_tokens":4}}}"#;
        c.event(b"message_start", start, &mut out).unwrap();
        c.event(
            b"message_delta",
            br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#,
            &mut out,
        )
        .unwrap();
        assert!(matches!(
            c.event(b"message_stop", br#"{"type":"message_stop"}"#, &mut out),
            Ok(Step::Complete)
        ));
        let u = c.usage();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.cache_read_tokens),
            (29, 15, 4)
        );
        assert!(String::from_utf8(out)
            .unwrap()
            .starts_with("event: message_start\ndata: {"));
    }
}

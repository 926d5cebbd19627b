//! One entry point per codec operation, dispatched by [`Format`]: the code that translates
//! (the worker's executor, the built-in mock) names a format, never a codec module.

use super::chat::{ChatRequest, ChatResponse, Format, StreamError, StreamEvent};
use super::{
    anthropic, bedrock, gemini, openai_chat, responses, AnswerOptions, EncodeInfo, EncodeOptions,
    FormatError, UpstreamError,
};

/// A client's request in `format`, decoded.
pub fn decode_request(format: Format, body: &[u8]) -> Result<ChatRequest, FormatError> {
    match format {
        Format::OpenAiChat => openai_chat::decode_request(body),
        Format::Anthropic => anthropic::decode_request(body),
        Format::Gemini => gemini::decode_request(body),
        Format::Bedrock => Err(FormatError::bad_request(
            "unsupported_format",
            "Bedrock Converse is a provider format; clients speak OpenAI or Anthropic",
        )),
        Format::OpenAiResponses => responses::decode_request(body),
    }
}

/// A provider's request in `format`, with `model` = `upstream_model`, appended to `out`.
pub fn encode_request(
    format: Format,
    req: &ChatRequest,
    upstream_model: &str,
    opts: &EncodeOptions,
    out: &mut Vec<u8>,
) -> Result<EncodeInfo, FormatError> {
    match format {
        Format::OpenAiChat => openai_chat::encode_request(req, upstream_model, opts, out),
        Format::Anthropic => anthropic::encode_request(req, upstream_model, opts, out),
        Format::Gemini => gemini::encode_request(req, upstream_model, opts, out),
        Format::Bedrock => bedrock::encode_request(req, upstream_model, opts, out),
        Format::OpenAiResponses => responses::encode_request(req, upstream_model, opts, out),
    }
}

/// A provider's whole answer in `format`, decoded.
pub fn decode_response(
    format: Format,
    body: &[u8],
    info: &EncodeInfo,
) -> Result<ChatResponse, FormatError> {
    match format {
        Format::OpenAiChat => openai_chat::decode_response(body, info),
        Format::Anthropic => anthropic::decode_response(body, info),
        Format::Gemini => gemini::decode_response(body, info),
        Format::Bedrock => bedrock::decode_response(body, info),
        Format::OpenAiResponses => responses::decode_response(body, info),
    }
}

/// A whole answer for a client of `format`, appended to `out`, in the form `opts` asks.
pub fn encode_response(
    format: Format,
    resp: &ChatResponse,
    client_model: &str,
    opts: AnswerOptions,
    out: &mut Vec<u8>,
) {
    match format {
        Format::OpenAiChat => openai_chat::encode_response(resp, client_model, out),
        Format::Anthropic => anthropic::encode_response(resp, client_model, out),
        Format::Gemini => gemini::encode_response(resp, client_model, out),
        Format::Bedrock => bedrock::encode_response(resp, client_model, out),
        Format::OpenAiResponses => {
            responses::encode_response(resp, client_model, opts.reasoning_state, out)
        }
    }
}

/// A provider's error answer in `format`, read.
pub fn decode_error(format: Format, status: u16, body: &[u8]) -> UpstreamError {
    match format {
        Format::OpenAiChat => openai_chat::decode_error(status, body),
        Format::Anthropic => anthropic::decode_error(status, body),
        Format::Gemini => gemini::decode_error(status, body),
        Format::Bedrock => bedrock::decode_error(status, body),
        Format::OpenAiResponses => responses::decode_error(status, body),
    }
}

/// An error body for a client of `format`; `error_type` is used when the format knows it.
pub fn error_body(
    format: Format,
    status: u16,
    error_type: Option<&str>,
    message: &str,
    code: Option<&str>,
) -> Vec<u8> {
    match format {
        Format::OpenAiChat => openai_chat::error_body(status, error_type, message, code),
        Format::Anthropic => anthropic::error_body(status, error_type, message, code),
        Format::Gemini => gemini::error_body(status, error_type, message, code),
        Format::Bedrock => bedrock::error_body(status, error_type, message, code),
        Format::OpenAiResponses => responses::error_body(status, error_type, message, code),
    }
}

/// A provider's stream, read event by event into neutral events.
pub enum StreamDecoder {
    OpenAiChat(openai_chat::StreamDecoder),
    Anthropic(anthropic::StreamDecoder),
    Gemini(gemini::StreamDecoder),
    Bedrock(bedrock::StreamDecoder),
    OpenAiResponses(responses::StreamDecoder),
}

impl StreamDecoder {
    pub fn new(format: Format, info: &EncodeInfo) -> StreamDecoder {
        match format {
            Format::OpenAiChat => StreamDecoder::OpenAiChat(openai_chat::StreamDecoder::new()),
            Format::Anthropic => StreamDecoder::Anthropic(anthropic::StreamDecoder::new(info)),
            Format::Gemini => StreamDecoder::Gemini(gemini::StreamDecoder::new()),
            Format::Bedrock => StreamDecoder::Bedrock(bedrock::StreamDecoder::new(info)),
            Format::OpenAiResponses => {
                StreamDecoder::OpenAiResponses(responses::StreamDecoder::new())
            }
        }
    }

    /// One event: its name (SSE `event:`, or an event stream's `:event-type`) if any, and its
    /// payload (SSE `data:`).
    pub fn feed(
        &mut self,
        event: Option<&str>,
        data: &[u8],
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), FormatError> {
        match self {
            StreamDecoder::OpenAiChat(d) => d.feed(event, data, out),
            StreamDecoder::Anthropic(d) => d.feed(event, data, out),
            StreamDecoder::Gemini(d) => d.feed(event, data, out),
            StreamDecoder::Bedrock(d) => d.feed(event, data, out),
            StreamDecoder::OpenAiResponses(d) => d.feed(event, data, out),
        }
    }

    /// At the end of the provider's stream: whether it ended as the format requires (an error
    /// when its terminator never came, for the formats that have one).
    pub fn finish(&self) -> Result<(), FormatError> {
        match self {
            StreamDecoder::OpenAiChat(d) => d.finish(),
            StreamDecoder::Anthropic(d) => d.finish(),
            StreamDecoder::Gemini(d) => d.finish(),
            StreamDecoder::Bedrock(d) => d.finish(),
            StreamDecoder::OpenAiResponses(d) => d.finish(),
        }
    }

    /// Whether the stream's terminator was read.
    pub fn is_complete(&self) -> bool {
        match self {
            StreamDecoder::OpenAiChat(d) => d.is_complete(),
            StreamDecoder::Anthropic(d) => d.is_complete(),
            StreamDecoder::Gemini(d) => d.is_complete(),
            StreamDecoder::Bedrock(d) => d.is_complete(),
            StreamDecoder::OpenAiResponses(d) => d.is_complete(),
        }
    }

    /// An exception the provider sent in the stream, outside its events (an event stream's
    /// `:message-type exception` named `error_type`, its payload `payload`): the error that
    /// ends the stream. Formats without such messages report a 502 of that name.
    pub fn exception(&mut self, error_type: &str, payload: &[u8]) -> StreamError {
        match self {
            StreamDecoder::Bedrock(d) => d.exception(error_type, payload),
            StreamDecoder::OpenAiChat(_)
            | StreamDecoder::Anthropic(_)
            | StreamDecoder::Gemini(_)
            | StreamDecoder::OpenAiResponses(_) => StreamError {
                status: 502,
                error_type: error_type.to_owned(),
                message: format!("the provider reported {error_type} in the stream"),
            },
        }
    }
}

/// Neutral events written as a client's stream.
pub enum StreamEncoder {
    OpenAiChat(openai_chat::StreamEncoder),
    Anthropic(anthropic::StreamEncoder),
    Gemini(gemini::StreamEncoder),
    OpenAiResponses(responses::StreamEncoder),
}

impl StreamEncoder {
    /// `opts`: the form the client asked for (OpenAI's final usage chunk, Responses' reasoning
    /// state); `created`: the Unix time OpenAI chunks and Responses' `response` carry.
    pub fn new(format: Format, client_model: &str, opts: AnswerOptions, created: u64) -> Self {
        match format {
            // No client speaks Bedrock (`ClientApi::format` never names it).
            Format::OpenAiChat | Format::Bedrock => StreamEncoder::OpenAiChat(
                openai_chat::StreamEncoder::new(client_model, opts.include_usage, created),
            ),
            Format::Anthropic => {
                StreamEncoder::Anthropic(anthropic::StreamEncoder::new(client_model))
            }
            Format::Gemini => StreamEncoder::Gemini(gemini::StreamEncoder::new(client_model)),
            Format::OpenAiResponses => StreamEncoder::OpenAiResponses(
                responses::StreamEncoder::new(client_model, created, opts.reasoning_state),
            ),
        }
    }

    pub fn encode(&mut self, ev: &StreamEvent, out: &mut Vec<u8>) {
        match self {
            StreamEncoder::OpenAiChat(e) => e.encode(ev, out),
            StreamEncoder::Anthropic(e) => e.encode(ev, out),
            StreamEncoder::Gemini(e) => e.encode(ev, out),
            StreamEncoder::OpenAiResponses(e) => e.encode(ev, out),
        }
    }

    /// The end of the stream: what was held back (usage, stop reason) and the terminator.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        match self {
            StreamEncoder::OpenAiChat(e) => e.finish(out),
            StreamEncoder::Anthropic(e) => e.finish(out),
            StreamEncoder::Gemini(e) => e.finish(out),
            StreamEncoder::OpenAiResponses(e) => e.finish(out),
        }
    }

    /// An error event that ends the stream.
    pub fn error(&mut self, err: &StreamError, out: &mut Vec<u8>) {
        match self {
            StreamEncoder::OpenAiChat(e) => e.error(err, out),
            StreamEncoder::Anthropic(e) => e.error(err, out),
            StreamEncoder::Gemini(e) => e.error(err, out),
            StreamEncoder::OpenAiResponses(e) => e.error(err, out),
        }
    }
}

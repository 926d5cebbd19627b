//! What a network provider supplies to the shared executor ([`super::http::HttpProvider`]): the
//! wire format it speaks, its URLs, and how a request is authenticated. Everything else (keys,
//! retries, Retry-After, breaker outcomes, transport, timeouts, cancellation, translation) is
//! written once in the executor.

use std::borrow::Cow;

use crate::error::ApiError;

pub use crate::formats::Format;
use crate::job::{ClientApi, ClientRequest};

/// Headers of one upstream request, in sending order.
pub type Headers = Vec<(Cow<'static, str>, String)>;

pub use crate::job::Operation;

/// How an upstream frames a streamed answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Server-Sent Events (`text/event-stream`).
    Sse,
    /// AWS event stream messages (`application/vnd.amazon.eventstream`): binary frames with
    /// CRCs, each an event (`:event-type`) or an exception (`:exception-type`).
    EventStream,
}

/// One upstream request as it will be sent, for the adapter to authenticate: the final URL,
/// the headers so far (the adapter appends its own) and the body (a signature covers it).
pub struct Outgoing<'a> {
    pub method: &'static str,
    pub url: &'a str,
    pub headers: &'a mut Headers,
    pub body: &'a [u8],
    /// What the client sent, for headers passed on from it (e.g. `anthropic-beta`).
    pub client: &'a ClientRequest,
}

pub trait Adapter: Send + Sync {
    /// The wire format of the upstream.
    fn format(&self) -> Format;

    /// The URL of `operation` for `model`; `None` when the upstream has no such endpoint (the
    /// executor then answers without calling it, e.g. a token count estimate).
    fn url(&self, operation: Operation, model: &str, stream: bool) -> Option<String>;

    /// An endpoint of the upstream that speaks the client's API `api` itself although it is
    /// not [`Adapter::format`] (OpenAI's Responses API beside Chat Completions): its format and
    /// URL. The request then passes through unchanged but for its model. `None` (the default):
    /// the request is translated to `format()` and sent to [`Adapter::url`].
    fn native_endpoint(&self, _api: ClientApi, _model: &str) -> Option<(Format, String)> {
        None
    }

    /// Authentication (`key`, the secret the key pool chose) and protocol headers of one
    /// request. Runs on the worker thread and may block briefly (a token refresh); an error ends
    /// the attempt (the client gets it).
    fn authorize(&self, key: &str, req: &mut Outgoing<'_>) -> Result<(), ApiError>;

    /// How the upstream frames a streamed answer, and its media type (the `accept` header that
    /// asks for it, and the `content-type` a streamed answer must have).
    fn framing(&self) -> (Framing, &'static str) {
        (Framing::Sse, "text/event-stream")
    }

    /// `GET <path>` with `key` for health probes: the URL and the headers.
    fn probe(&self, path: &str, key: &str) -> (String, Headers);

    /// The model named in the upstream body for `model` (e.g. an Azure deployment name), in a
    /// body of format `wire` (the adapter's own, or a native endpoint's).
    fn body_model<'a>(&self, model: &'a str, _wire: Format) -> Cow<'a, str> {
        Cow::Borrowed(model)
    }

    /// The upstream answered 401 to a request authorized with `key`: a cached credential derived
    /// from it (a bearer token) must not be used again.
    fn unauthorized(&self, _key: &str) {}
}

/// The value of header `name` among `client`'s forwarded headers.
pub fn forwarded<'a>(client: &'a ClientRequest, name: &str) -> Option<&'a str> {
    client
        .forward_headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

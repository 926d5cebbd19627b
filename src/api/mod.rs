//! The APIs the gateway speaks to clients: what routing needs from a request ([`head`]), and how
//! errors, stream errors and keep-alives are written in each client API's own shape.

pub mod anthropic;
pub mod head;
pub mod openai;

pub use head::{JsonDepthError, RouteHead};

use crate::error::ApiError;
use crate::http::Response;
use crate::job::ClientApi;

/// The error response for a client of `api`.
pub fn error_response(api: ClientApi, err: &ApiError, request_id: Option<&str>) -> Response {
    let body = if api.is_anthropic() {
        anthropic::error_body(err, request_id)
    } else {
        openai::error_body(err)
    };
    let mut r = Response::json(err.status(), body);
    if let Some(s) = err.retry_after_s {
        r.headers.push(("retry-after", s.to_string()));
    }
    r
}

/// The event that ends a begun stream of a client of `api` with `err`.
pub fn error_event(api: ClientApi, err: &ApiError) -> Vec<u8> {
    if api.is_anthropic() {
        anthropic::error_event(err)
    } else {
        openai::error_event(err)
    }
}

/// A keep-alive event for a stream of a client of `api` while the upstream is silent.
pub fn keepalive_event(api: ClientApi) -> &'static [u8] {
    if api.is_anthropic() {
        anthropic::PING_EVENT
    } else {
        openai::KEEPALIVE_EVENT
    }
}

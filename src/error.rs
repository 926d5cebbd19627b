//! The gateway's one error type and the one place that maps errors to HTTP status codes and
//! OpenAI-style JSON error bodies (`{"error":{"message","type","code"}}`).

use std::borrow::Cow;
use std::fmt;

/// Where a failure happened; decides the error `type` a client sees and whether a retry may help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed HTTP, bad JSON, a missing or wrong field: 400.
    BadRequest,
    /// Missing or wrong client key: 401.
    Unauthorized,
    /// A valid client may not do this (a model or provider it is not allowed): 403.
    Forbidden,
    /// Unknown path or unknown model: 404.
    NotFound,
    /// Known path, wrong method: 405.
    MethodNotAllowed,
    /// A name already taken (an admin call creating a key or team): 409.
    Conflict,
    /// The client was too slow sending its request (header or body read timeout): 408.
    ClientTimeout,
    /// Body over `body_bytes_max`: 413.
    PayloadTooLarge,
    /// Header block over `header_bytes_max` or `header_lines_max`: 431.
    HeadersTooLarge,
    /// Queue full under `queue_policy = "drop"`: 429 with `Retry-After`.
    QueueFull,
    /// A virtual key's or team's rate limit: 429 with `Retry-After` and `x-ratelimit-*`.
    RateLimited,
    /// A virtual key's or team's budget is spent until its period turns: 429
    /// (`insufficient_quota`), not worth retrying.
    BudgetExceeded,
    /// Queue full under `error`/`block`, or the gateway shutting down: 503.
    Unavailable,
    /// The front is at a limit of its own (open connections, buffered body bytes): 503 with
    /// `Retry-After`.
    Overloaded,
    /// The job waited in the queue past `queue_wait_ms_max`: 504, upstream not called.
    QueueTimeout,
    /// The request ran past `request_timeout_ms`: 504.
    RequestTimeout,
    /// Connect, TLS, read or write to the upstream failed: 502.
    UpstreamTransport,
    /// The upstream answered something the gateway could not use: 502.
    UpstreamInvalid,
    /// A fault inside the gateway (a caught panic): 500, never with detail.
    Internal,
    /// The gateway is draining (SIGTERM) or the pool was swapped out by a reload: 503.
    ShuttingDown,
    /// The client went away; nothing is sent. 499 in logs and stats (nginx's convention).
    ClientCancelled,
}

impl ErrorKind {
    /// The HTTP status for this kind. The single status mapping of the gateway.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::Conflict => 409,
            ErrorKind::ClientTimeout => 408,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::HeadersTooLarge => 431,
            ErrorKind::QueueFull | ErrorKind::RateLimited | ErrorKind::BudgetExceeded => 429,
            ErrorKind::Unavailable | ErrorKind::ShuttingDown | ErrorKind::Overloaded => 503,
            ErrorKind::QueueTimeout | ErrorKind::RequestTimeout => 504,
            ErrorKind::UpstreamTransport | ErrorKind::UpstreamInvalid => 502,
            ErrorKind::Internal => 500,
            ErrorKind::ClientCancelled => 499,
        }
    }

    /// OpenAI's `error.type` vocabulary.
    pub fn error_type(self) -> &'static str {
        match self {
            ErrorKind::BadRequest
            | ErrorKind::NotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::Conflict
            | ErrorKind::ClientTimeout
            | ErrorKind::PayloadTooLarge
            | ErrorKind::HeadersTooLarge => "invalid_request_error",
            ErrorKind::Unauthorized => "authentication_error",
            ErrorKind::Forbidden => "permission_error",
            ErrorKind::QueueFull | ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::BudgetExceeded => "insufficient_quota",
            ErrorKind::Unavailable
            | ErrorKind::ShuttingDown
            | ErrorKind::ClientCancelled
            | ErrorKind::QueueTimeout
            | ErrorKind::RequestTimeout
            | ErrorKind::UpstreamTransport
            | ErrorKind::UpstreamInvalid => "upstream_error",
            ErrorKind::Internal | ErrorKind::Overloaded => "server_error",
        }
    }

    /// Whether retrying the same request elsewhere or later may succeed (a fallback is tried).
    /// An unusable upstream answer is the upstream's fault, as a 5xx is.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::QueueFull
                | ErrorKind::Unavailable
                | ErrorKind::ShuttingDown
                | ErrorKind::Overloaded
                | ErrorKind::QueueTimeout
                | ErrorKind::UpstreamTransport
                | ErrorKind::UpstreamInvalid
        )
    }
}

/// An error answered to a client: what failed, a message safe to show, a stable code.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub kind: ErrorKind,
    /// Safe for clients: never internals, never secrets.
    pub message: Cow<'static, str>,
    /// Stable machine-readable code, e.g. `model_not_found`, `queue_full`.
    pub code: &'static str,
    /// Sent as `Retry-After` (seconds) when set.
    pub retry_after_s: Option<u32>,
    /// The client already got an event describing this error (an upstream's own error event,
    /// passed on): count it, write nothing more.
    pub delivered: bool,
}

impl ApiError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            code,
            retry_after_s: None,
            delivered: false,
        }
    }

    /// Marks an error whose event the client already received.
    pub fn already_sent(mut self) -> Self {
        self.delivered = true;
        self
    }

    /// The client went away before its answer.
    pub fn client_cancelled() -> Self {
        Self::new(
            ErrorKind::ClientCancelled,
            "client_cancelled",
            "the client went away",
        )
    }

    /// The request ran out of time waiting for the provider.
    pub fn request_timeout() -> Self {
        Self::new(
            ErrorKind::RequestTimeout,
            "request_timeout",
            "the provider did not answer within the request timeout",
        )
    }

    /// The gateway is draining and takes no new work.
    pub fn shutting_down() -> Self {
        Self::new(
            ErrorKind::ShuttingDown,
            "shutting_down",
            "the gateway is shutting down; retry on another instance",
        )
    }

    pub fn with_retry_after(mut self, seconds: u32) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::BadRequest, code, message)
    }

    pub fn internal() -> Self {
        Self::new(
            ErrorKind::Internal,
            "internal_error",
            "the gateway failed to process this request",
        )
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The JSON body: `{"error":{"message":..,"type":..,"param":null,"code":..}}`.
    pub fn body(&self) -> Vec<u8> {
        let body = serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind.error_type(),
                "param": null,
                "code": self.code,
            }
        });
        // Serializing a json! value of strings cannot fail.
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.status(), self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_openai_shaped() {
        let e = ApiError::new(ErrorKind::NotFound, "model_not_found", "no such model: x");
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["message"], "no such model: x");
        assert_eq!(e.status(), 404);
    }

    #[test]
    fn statuses() {
        assert_eq!(ErrorKind::QueueFull.status(), 429);
        assert_eq!(ErrorKind::HeadersTooLarge.status(), 431);
        assert_eq!(ErrorKind::QueueTimeout.status(), 504);
        assert_eq!(ErrorKind::Internal.status(), 500);
    }
}

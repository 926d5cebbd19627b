//! The upstream status policy, in one place: from an upstream's status (and, for a 429, its error
//! body) what the gateway makes of an answer: whether it counts as a breaker failure, is retried
//! and how, what it does to the key that earned it, whether it triggers a fallback, and whether
//! it is relayed at all. Pure functions, no I/O; the provider, the health probe and the
//! fallback decision all ask here.

use std::time::Duration;

/// What one upstream answer means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamVerdict {
    /// 2xx: the answer is used (its body must still be valid: JSON, or SSE for a stream).
    Success,
    /// 401: the key itself was refused. The key is disabled (for `key_disable_ms`, then
    /// re-probed); the request is retried at once on another key when one is free.
    KeyRejected,
    /// 403 or 404: this key may not use this model (OpenAI answers either). Only the (key, model)
    /// pair is marked; the request is retried at once on another key when one may serve it.
    ModelDenied,
    /// 429 rate limit: the (key, model) pair cools down for the `Retry-After` (capped); retried
    /// on another key at once, or after the wait when it fits the deadline.
    RateLimited,
    /// 429 with `insufficient_quota` in the error's `code` or `type`: the account behind the key
    /// is out of quota. Relayed at once, never retried; the (key, model) pair cools down (capped).
    QuotaExhausted,
    /// 500, 502, 503, 504 and 529 (Anthropic's `overloaded_error`): retried after a backoff (or
    /// the upstream's `Retry-After` when longer); a breaker failure.
    Transient,
    /// Another 5xx (501, 505, ...): a breaker failure, relayed, not retried.
    ServerFault,
    /// Any other status from 200 to 599 (400, 409, 422, 3xx, ...): the answer for the client.
    Final,
    /// 1xx (ureq hands over only 101) or a status outside 100..=599: no answer a client can use;
    /// the client gets 502 `upstream_invalid_status`.
    Invalid,
}

/// What happens to the key that earned an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyEffect {
    /// Nothing (the key stays as it is; a success ends a run of disables).
    None,
    /// The key is taken out of service for every model.
    Disable,
    /// The (key, model) pair is marked denied (403/404): other keys are preferred for the model.
    DenyModel,
    /// The (key, model) pair cools down for the upstream's wait, capped.
    CoolModel,
}

/// Whether and how an attempt is followed by another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryKind {
    /// Never: the answer goes to the client.
    No,
    /// On another key of the pool, at once, or after the soonest key is free again.
    OtherKey,
    /// On any key after an exponential backoff with jitter.
    Backoff,
}

impl UpstreamVerdict {
    /// The verdict on `status`; `body` is read only for a 429 (to tell a quota from a rate limit).
    pub fn classify(status: u16, body: &[u8]) -> UpstreamVerdict {
        match status {
            200..=299 => UpstreamVerdict::Success,
            401 => UpstreamVerdict::KeyRejected,
            403 | 404 => UpstreamVerdict::ModelDenied,
            429 if is_insufficient_quota(body) => UpstreamVerdict::QuotaExhausted,
            429 => UpstreamVerdict::RateLimited,
            500 | 502 | 503 | 504 | 529 => UpstreamVerdict::Transient,
            505..=599 | 501 => UpstreamVerdict::ServerFault,
            300..=499 => UpstreamVerdict::Final,
            _ => UpstreamVerdict::Invalid,
        }
    }

    /// Whether the attempt counts as a failure of the provider for its circuit breaker.
    pub fn breaker_failure(self) -> bool {
        matches!(
            self,
            UpstreamVerdict::Transient | UpstreamVerdict::ServerFault | UpstreamVerdict::Invalid
        )
    }

    /// Whether a health probe that got this answer finds the provider up (anything but a
    /// breaker failure: a 401 or 404 to the probe still shows a working upstream).
    pub fn healthy(self) -> bool {
        !self.breaker_failure()
    }

    /// What the answer does to the key that earned it.
    pub fn key_effect(self) -> KeyEffect {
        match self {
            UpstreamVerdict::KeyRejected => KeyEffect::Disable,
            UpstreamVerdict::ModelDenied => KeyEffect::DenyModel,
            UpstreamVerdict::RateLimited | UpstreamVerdict::QuotaExhausted => KeyEffect::CoolModel,
            _ => KeyEffect::None,
        }
    }

    /// Whether the attempt may be followed by another inside the worker.
    pub fn retry(self) -> RetryKind {
        match self {
            UpstreamVerdict::KeyRejected
            | UpstreamVerdict::ModelDenied
            | UpstreamVerdict::RateLimited => RetryKind::OtherKey,
            UpstreamVerdict::Transient => RetryKind::Backoff,
            _ => RetryKind::No,
        }
    }

    /// Whether another provider (a fallback) may succeed where this answer, after the worker's
    /// retries, failed: rate limits and quotas, the provider refusing its own keys, and 5xx.
    pub fn fallback(self) -> bool {
        matches!(
            self,
            UpstreamVerdict::KeyRejected
                | UpstreamVerdict::RateLimited
                | UpstreamVerdict::QuotaExhausted
                | UpstreamVerdict::Transient
                | UpstreamVerdict::ServerFault
                | UpstreamVerdict::Invalid
        )
    }

    /// Whether the answer is relayed to the client as it is (status and body): everything but
    /// [`UpstreamVerdict::Invalid`].
    pub fn relayed(self) -> bool {
        self != UpstreamVerdict::Invalid
    }
}

/// The next step after a failed attempt, from the verdict's [`RetryKind`] and the pool's state:
/// `other_key_free_in` is how long until another key may serve the model (`None`: no other key
/// ever may, before a reload or a re-enable), `upstream_wait` the upstream's own `Retry-After`
/// (or the configured default) for a 429, `backoff` the backoff this retry would take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextStep {
    /// Relay the answer (or the error) now.
    Stop,
    /// Try again at once.
    Now,
    /// Try again after this wait (if it fits the deadline and a retry is left).
    After(Duration),
}

/// See [`NextStep`].
pub fn next_step(
    verdict: RetryKind,
    other_key_free_in: Option<Duration>,
    upstream_wait: Duration,
    backoff: Duration,
    this_key_usable_again: bool,
) -> NextStep {
    match verdict {
        RetryKind::No => NextStep::Stop,
        RetryKind::Backoff => NextStep::After(backoff),
        RetryKind::OtherKey => {
            // This key comes back after the upstream's wait (429) or not at all (401/403/404).
            let this = this_key_usable_again.then_some(upstream_wait);
            match (other_key_free_in, this) {
                (Some(other), _) if other.is_zero() => NextStep::Now,
                (Some(other), Some(this)) => NextStep::After(other.min(this)),
                (Some(other), None) => NextStep::After(other),
                (None, Some(this)) => NextStep::After(this),
                (None, None) => NextStep::Stop,
            }
        }
    }
}

/// OpenAI's "out of quota" 429: `{"error":{"code":"insufficient_quota", ...}}` (or that `type`).
/// Only the `error` object's `code` and `type` are looked at; anything unparsable is a plain rate
/// limit.
pub fn is_insufficient_quota(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Inner {
        code: Option<serde_json::Value>,
        #[serde(rename = "type")]
        kind: Option<serde_json::Value>,
    }
    #[derive(serde::Deserialize)]
    struct Outer {
        error: Option<Inner>,
    }
    const QUOTA: &str = "insufficient_quota";
    match serde_json::from_slice::<Outer>(body) {
        Ok(Outer { error: Some(e) }) => [e.code, e.kind]
            .iter()
            .any(|v| v.as_ref().and_then(|v| v.as_str()) == Some(QUOTA)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::UpstreamVerdict as V;
    use super::*;

    const QUOTA: &[u8] =
        br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
    const LIMIT: &[u8] =
        br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;

    #[test]
    fn statuses_classify() {
        assert_eq!(V::classify(200, b""), V::Success);
        assert_eq!(V::classify(201, b""), V::Success);
        assert_eq!(V::classify(401, b""), V::KeyRejected);
        assert_eq!(V::classify(403, b""), V::ModelDenied);
        assert_eq!(V::classify(404, b""), V::ModelDenied);
        assert_eq!(V::classify(429, LIMIT), V::RateLimited);
        assert_eq!(V::classify(429, b"not json"), V::RateLimited);
        assert_eq!(V::classify(429, QUOTA), V::QuotaExhausted);
        for s in [500, 502, 503, 504] {
            assert_eq!(V::classify(s, b""), V::Transient, "{s}");
        }
        for s in [501, 505, 599] {
            assert_eq!(V::classify(s, b""), V::ServerFault, "{s}");
        }
        for s in [400, 402, 409, 422, 301, 304] {
            assert_eq!(V::classify(s, b""), V::Final, "{s}");
        }
        for s in [0, 99, 100, 101, 199, 600, 999, u16::MAX] {
            assert_eq!(V::classify(s, b""), V::Invalid, "{s}");
        }
    }

    #[test]
    fn quota_is_read_from_code_or_type_only() {
        assert!(is_insufficient_quota(
            br#"{"error":{"code":"insufficient_quota"}}"#
        ));
        assert!(is_insufficient_quota(
            br#"{"error":{"type":"insufficient_quota","code":null}}"#
        ));
        assert!(!is_insufficient_quota(
            br#"{"error":{"message":"insufficient_quota","code":429}}"#
        ));
        assert!(!is_insufficient_quota(br#"{"code":"insufficient_quota"}"#));
        assert!(!is_insufficient_quota(b"insufficient_quota"));
        assert!(!is_insufficient_quota(b""));
    }

    #[test]
    fn the_policy_table() {
        // (verdict, breaker failure, key effect, retry, fallback, relayed)
        let table = [
            (
                V::Success,
                false,
                KeyEffect::None,
                RetryKind::No,
                false,
                true,
            ),
            (
                V::KeyRejected,
                false,
                KeyEffect::Disable,
                RetryKind::OtherKey,
                true,
                true,
            ),
            (
                V::ModelDenied,
                false,
                KeyEffect::DenyModel,
                RetryKind::OtherKey,
                false,
                true,
            ),
            (
                V::RateLimited,
                false,
                KeyEffect::CoolModel,
                RetryKind::OtherKey,
                true,
                true,
            ),
            (
                V::QuotaExhausted,
                false,
                KeyEffect::CoolModel,
                RetryKind::No,
                true,
                true,
            ),
            (
                V::Transient,
                true,
                KeyEffect::None,
                RetryKind::Backoff,
                true,
                true,
            ),
            (
                V::ServerFault,
                true,
                KeyEffect::None,
                RetryKind::No,
                true,
                true,
            ),
            (V::Final, false, KeyEffect::None, RetryKind::No, false, true),
            (
                V::Invalid,
                true,
                KeyEffect::None,
                RetryKind::No,
                true,
                false,
            ),
        ];
        for (v, breaker, key, retry, fallback, relayed) in table {
            assert_eq!(v.breaker_failure(), breaker, "{v:?}");
            assert_eq!(v.healthy(), !breaker, "{v:?}");
            assert_eq!(v.key_effect(), key, "{v:?}");
            assert_eq!(v.retry(), retry, "{v:?}");
            assert_eq!(v.fallback(), fallback, "{v:?}");
            assert_eq!(v.relayed(), relayed, "{v:?}");
        }
    }

    #[test]
    fn next_steps() {
        let s = Duration::from_secs;
        let b = Duration::from_millis(100);
        assert_eq!(
            next_step(RetryKind::No, Some(s(0)), s(1), b, true),
            NextStep::Stop
        );
        assert_eq!(
            next_step(RetryKind::Backoff, None, s(1), b, true),
            NextStep::After(b)
        );
        // Another key free now: at once, whatever this key's wait.
        assert_eq!(
            next_step(RetryKind::OtherKey, Some(s(0)), s(9), b, true),
            NextStep::Now
        );
        // Only this key (429): after the upstream's own wait.
        assert_eq!(
            next_step(RetryKind::OtherKey, None, s(86_400), b, true),
            NextStep::After(s(86_400))
        );
        // Another key cooling for less than this key's wait: after the other's.
        assert_eq!(
            next_step(RetryKind::OtherKey, Some(s(2)), s(30), b, true),
            NextStep::After(s(2))
        );
        assert_eq!(
            next_step(RetryKind::OtherKey, Some(s(40)), s(30), b, true),
            NextStep::After(s(30))
        );
        // 401/403/404: this key does not come back; no other key: relay.
        assert_eq!(
            next_step(RetryKind::OtherKey, None, s(1), b, false),
            NextStep::Stop
        );
        assert_eq!(
            next_step(RetryKind::OtherKey, Some(s(3)), s(1), b, false),
            NextStep::After(s(3))
        );
    }
}

//! The provider's opaque reasoning state carried through a Responses client: the signature of a
//! signed thinking block (Anthropic's `thinking.signature`, Bedrock's
//! `reasoningContent.reasoningText.signature`) or the data of a redacted one (`redacted_thinking`,
//! `redactedContent`), which the provider requires back, unchanged, with the conversation's next
//! turn. A Responses client keeps such state in a `reasoning` item's `encrypted_content` and
//! sends the item back (Codex does, asking `include: ["reasoning.encrypted_content"]`), so the
//! gateway writes it there in an envelope of its own and reads it back on the next request.
//!
//! The envelope: [`ENVELOPE_PREFIX`] (`deepintshield:v1:`) and the unpadded base64url of a
//! compact JSON object, `{"kind":"thinking","signature":...}` or
//! `{"kind":"redacted","data":...}`. The prefix holds `:`, which no base64 token has, so an
//! `encrypted_content` of OpenAI's own (a passthrough turn earlier in the conversation) or of
//! anything else is never mistaken for one; such content, an envelope of another version, or one
//! that does not decode, is not the gateway's and is dropped.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// What every `encrypted_content` the gateway writes starts with: who wrote it, and the
/// envelope's version.
pub const ENVELOPE_PREFIX: &str = "deepintshield:v1:";

/// The opaque state of one reasoning part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReasoningState {
    /// A signed thinking block's signature (its text is the reasoning item's summary).
    Signature(String),
    /// A redacted thinking block's encrypted data.
    Redacted(String),
}

/// The envelope's JSON.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Wire<'a> {
    Thinking {
        #[serde(borrow)]
        signature: std::borrow::Cow<'a, str>,
    },
    Redacted {
        #[serde(borrow)]
        data: std::borrow::Cow<'a, str>,
    },
}

/// `state` in the gateway's envelope, for a reasoning item's `encrypted_content`.
pub fn encode(state: &ReasoningState) -> String {
    let wire = match state {
        ReasoningState::Signature(s) => Wire::Thinking {
            signature: s.as_str().into(),
        },
        ReasoningState::Redacted(d) => Wire::Redacted {
            data: d.as_str().into(),
        },
    };
    // Serializing two strings cannot fail.
    let json = serde_json::to_vec(&wire).unwrap_or_default();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut out = String::with_capacity(ENVELOPE_PREFIX.len() + json.len() * 4 / 3 + 4);
    out.push_str(ENVELOPE_PREFIX);
    b64.encode_string(&json, &mut out);
    out
}

/// The state in an `encrypted_content`, when the gateway wrote it (this version); `None` for
/// anything else (OpenAI's own, another version, a damaged envelope, an empty signature or
/// data).
pub fn decode(encrypted_content: &str) -> Option<ReasoningState> {
    let tail = encrypted_content.strip_prefix(ENVELOPE_PREFIX)?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let json = b64.decode(tail).ok()?;
    let state = match serde_json::from_slice::<Wire>(&json).ok()? {
        Wire::Thinking { signature } => ReasoningState::Signature(signature.into_owned()),
        Wire::Redacted { data } => ReasoningState::Redacted(data.into_owned()),
    };
    match &state {
        ReasoningState::Signature(s) | ReasoningState::Redacted(s) if s.is_empty() => None,
        _ => Some(state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_in_the_envelope() {
        for state in [
            ReasoningState::Signature("EqQBCkgIARABGAIiQL+/w==".into()),
            ReasoningState::Redacted("EmwKAhgBEgy3va3pzix/LafPsn4aDFIT".into()),
        ] {
            let wrapped = encode(&state);
            assert!(wrapped.starts_with("deepintshield:v1:"), "{wrapped}");
            let tail = &wrapped[ENVELOPE_PREFIX.len()..];
            assert!(tail
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(decode(&wrapped), Some(state));
        }
    }

    #[test]
    fn the_envelope_is_compact_json_that_names_its_kind() {
        let wrapped = encode(&ReasoningState::Signature("sig".into()));
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&wrapped[ENVELOPE_PREFIX.len()..])
            .unwrap();
        assert_eq!(json, br#"{"kind":"thinking","signature":"sig"}"#);
        let wrapped = encode(&ReasoningState::Redacted("d".into()));
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&wrapped[ENVELOPE_PREFIX.len()..])
            .unwrap();
        assert_eq!(json, br#"{"kind":"redacted","data":"d"}"#);
    }

    #[test]
    fn content_that_is_not_ours_is_not_read() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let of = |json: &str| format!("{ENVELOPE_PREFIX}{}", b64.encode(json));
        for foreign in [
            // OpenAI's own (a Fernet token).
            "gAAAAABoxyz-_abc==".to_string(),
            String::new(),
            // Another version, a tail that is not base64 or not the JSON.
            format!(
                "deepintshield:v2:{}",
                b64.encode(r#"{"kind":"thinking","signature":"s"}"#)
            ),
            format!("{ENVELOPE_PREFIX}!!"),
            of(r#"{"kind":"future","x":1}"#),
            of(r#"{"kind":"thinking"}"#),
            of(r#"{"kind":"thinking","signature":""}"#),
            of("[]"),
        ] {
            assert_eq!(decode(&foreign), None, "{foreign}");
        }
        // Fields added later are ignored.
        assert_eq!(
            decode(&of(r#"{"kind":"redacted","data":"d","v":2}"#)),
            Some(ReasoningState::Redacted("d".into()))
        );
    }
}

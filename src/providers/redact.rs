//! Redaction of provider secrets from what an upstream sends back: an upstream (or a proxy in front
//! of it) that quotes the request's `Authorization` header in an error must not show the key to
//! the client. The rule: every run of the text that is a substring of at least
//! [`SECRET_FRAGMENT_BYTES_MIN`] bytes of a configured provider secret is replaced by
//! [`REDACTED`]. Secrets shorter than that are not looked for (they cannot be told from ordinary
//! words). Only what can carry an echo is scanned: the bodies of non-2xx answers and stream
//! events that hold an `"error"` member, never the 2xx bodies and content chunks.

use std::collections::HashSet;

/// Shortest secret fragment that is redacted, bytes. Shorter runs are too common in ordinary text.
pub const SECRET_FRAGMENT_BYTES_MIN: usize = 8;
/// What a redacted run is replaced by (valid inside a JSON string).
pub const REDACTED: &[u8] = b"[REDACTED]";
/// Filter bits per distinct secret window: few false hits send the scan to the exact set.
const FILTER_BITS_PER_WINDOW: usize = 16;
/// Size bounds of the pre-filter, bits (8 KiB .. 2 MiB).
const FILTER_BITS_MIN: usize = 1 << 16;
const FILTER_BITS_MAX: usize = 1 << 24;

// Windows are read as one `u64`.
const _: () = assert!(SECRET_FRAGMENT_BYTES_MIN == 8);

/// The secrets' fragments, ready to scan for. Built once per config generation.
pub struct Redactor {
    /// Every 8-byte window of every secret, as a little-endian `u64`.
    windows: HashSet<u64>,
    /// One bit per hash of a window: a clear bit rules a window out without the set lookup.
    filter: Vec<u64>,
    /// 64 minus log2 of the filter's bits: the hash's top bits index the filter.
    filter_shift: u32,
}

impl Redactor {
    /// From the secrets to hide (provider keys); secrets shorter than the minimum are skipped.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Redactor {
        let mut windows = HashSet::new();
        for s in secrets {
            for w in s.as_bytes().windows(SECRET_FRAGMENT_BYTES_MIN) {
                windows.insert(window(w));
            }
        }
        let bits = (windows.len() * FILTER_BITS_PER_WINDOW)
            .next_power_of_two()
            .clamp(FILTER_BITS_MIN, FILTER_BITS_MAX);
        let filter_shift = 64 - bits.trailing_zeros();
        let mut filter = vec![0u64; bits / 64];
        for &w in &windows {
            let h = filter_index(w, filter_shift);
            filter[h / 64] |= 1 << (h % 64);
        }
        Redactor {
            windows,
            filter,
            filter_shift,
        }
    }

    /// Whether there is anything to look for.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// `text` with every secret fragment replaced, or `None` when it holds none (no copy made).
    pub fn redact(&self, text: &[u8]) -> Option<Vec<u8>> {
        if self.windows.is_empty() || text.len() < SECRET_FRAGMENT_BYTES_MIN {
            return None;
        }
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (i, w) in text.windows(SECRET_FRAGMENT_BYTES_MIN).enumerate() {
            let w = window(w);
            let h = filter_index(w, self.filter_shift);
            if self.filter[h / 64] & (1 << (h % 64)) == 0 || !self.windows.contains(&w) {
                continue;
            }
            let end = i + SECRET_FRAGMENT_BYTES_MIN;
            match runs.last_mut() {
                Some((_, run_end)) if i <= *run_end => *run_end = end,
                _ => runs.push((i, end)),
            }
        }
        if runs.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(text.len());
        let mut at = 0;
        for (start, end) in runs {
            // Whole UTF-8 characters only, so the result stays valid text.
            let start = char_start(text, start).max(at);
            let end = char_end(text, end);
            out.extend_from_slice(&text[at..start]);
            if end > start {
                out.extend_from_slice(REDACTED);
            }
            at = end.max(at);
        }
        out.extend_from_slice(&text[at..]);
        Some(out)
    }

    /// A stream event's payload, redacted when it is an error event (holds `"error"`); content
    /// chunks are passed through without a scan.
    pub fn redact_event(&self, payload: Vec<u8>) -> Vec<u8> {
        if self.windows.is_empty() || !contains(&payload, b"\"error\"") {
            return payload;
        }
        self.redact(&payload).unwrap_or(payload)
    }
}

fn window(w: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&w[..8]);
    u64::from_le_bytes(b)
}

/// Top bits of a multiplicative hash of the window.
fn filter_index(w: u64, shift: u32) -> usize {
    (w.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> shift) as usize
}

/// The start of the UTF-8 character that byte `i` belongs to.
fn char_start(text: &[u8], mut i: usize) -> usize {
    while i > 0 && i < text.len() && text[i] & 0xC0 == 0x80 {
        i -= 1;
    }
    i
}

/// The end of the UTF-8 character that byte `end - 1` belongs to.
fn char_end(text: &[u8], mut end: usize) -> usize {
    while end < text.len() && text[end] & 0xC0 == 0x80 {
        end += 1;
    }
    end
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";

    fn r(text: &str) -> String {
        let red = Redactor::new([KEY, "short"]);
        match red.redact(text.as_bytes()) {
            Some(v) => String::from_utf8(v).unwrap(),
            None => text.to_string(),
        }
    }

    #[test]
    fn the_whole_key_and_long_fragments_go() {
        assert_eq!(r(&format!("Bearer {KEY}")), "Bearer [REDACTED]");
        assert_eq!(
            r(&format!(
                r#"{{"error":{{"message":"Incorrect API key provided: {KEY}."}}}}"#
            )),
            r#"{"error":{"message":"Incorrect API key provided: [REDACTED]."}}"#
        );
        // OpenAI's own masking shows the head and tail: both are long fragments.
        assert_eq!(
            r("Incorrect API key provided: sk-proj-********************6789."),
            "Incorrect API key provided: [REDACTED]********************6789."
        );
        // Exactly 8 bytes of it, in the middle: gone. 7 bytes: kept.
        assert_eq!(r("x IjKlMnOp y"), "x [REDACTED] y");
        assert_eq!(r("x IjKlMnO y"), "x IjKlMnO y");
        // Two fragments, twice the key.
        assert_eq!(r(&format!("{KEY}/{KEY}")), "[REDACTED]/[REDACTED]");
    }

    #[test]
    fn text_without_secrets_is_not_copied() {
        let red = Redactor::new([KEY]);
        assert!(red
            .redact(b"{\"error\":{\"message\":\"no key here\"}}")
            .is_none());
        assert!(red.redact(b"").is_none());
        assert!(red.redact(b"sk-proj").is_none());
        // A short secret is never looked for.
        let short = Redactor::new(["ollama"]);
        assert!(short.is_empty());
        assert!(short.redact(b"ollama ollama ollama").is_none());
    }

    #[test]
    fn multibyte_characters_stay_whole() {
        let key = "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}"; // 12 bytes of 2-byte characters
        let red = Redactor::new([key]);
        // A fragment that starts in the middle of a character in the text.
        let text = format!("a\u{e9}{key}b");
        let out = String::from_utf8(red.redact(text.as_bytes()).unwrap()).unwrap();
        assert_eq!(out, "a[REDACTED]b");
    }

    #[test]
    fn only_error_events_are_scanned() {
        let red = Redactor::new([KEY]);
        let chunk = format!(r#"{{"choices":[{{"delta":{{"content":"{KEY}"}}}}]}}"#);
        assert_eq!(
            red.redact_event(chunk.clone().into_bytes()),
            chunk.as_bytes()
        );
        let err = format!(r#"{{"error":{{"message":"bad key {KEY}"}}}}"#);
        assert_eq!(
            red.redact_event(err.into_bytes()),
            br#"{"error":{"message":"bad key [REDACTED]"}}"#
        );
    }

    #[test]
    fn many_secrets() {
        let keys: Vec<String> = (0..1024).map(|i| format!("sk-{i:040}-{i:x}")).collect();
        let red = Redactor::new(keys.iter().map(String::as_str));
        let text = format!("a {} b", keys[777]);
        assert_eq!(
            red.redact(text.as_bytes()).as_deref(),
            Some(&b"a [REDACTED] b"[..])
        );
        assert!(red.redact(b"nothing to see here, really nothing").is_none());
    }
}

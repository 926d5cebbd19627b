//! Golden files of the codec tests: fixtures read from `tests/fixtures/`, outputs compared with
//! the expected files beside them (JSON as values, anything else byte for byte), and the SSE and
//! neutral-event helpers those tests share. With `FORMATS_UPDATE_GOLDEN` set, the expected files
//! are rewritten instead of compared (after a deliberate change of output; review the diff).

use std::fs;
use std::path::PathBuf;

use deepintshield::formats::{codec, AnswerOptions, EncodeInfo, Format, StreamEvent};
use serde_json::Value;

/// A set of fixtures: inputs under `tests/fixtures/<inputs>`, expected outputs under
/// `tests/fixtures/<expected>`.
pub struct Golden {
    pub inputs: &'static str,
    pub expected: &'static str,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn updating() -> bool {
    std::env::var_os("FORMATS_UPDATE_GOLDEN").is_some()
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap()
}

impl Golden {
    /// The bytes of input fixture `name`.
    pub fn input(&self, name: &str) -> Vec<u8> {
        let path = fixtures().join(self.inputs).join(name);
        fs::read(path).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn expected_path(&self, name: &str) -> PathBuf {
        fixtures().join(self.expected).join(name)
    }

    /// `actual` must be the JSON of expected file `name`.
    pub fn json(&self, name: &str, actual: &[u8]) {
        let actual: Value = serde_json::from_slice(actual).unwrap_or_else(|e| {
            panic!(
                "{name}: output is not JSON ({e}): {}",
                String::from_utf8_lossy(actual)
            )
        });
        let path = self.expected_path(name);
        if updating() {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, pretty(&actual) + "\n").unwrap();
            return;
        }
        let expected: Value =
            serde_json::from_slice(&fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}")))
                .unwrap();
        assert!(
            actual == expected,
            "{name} differs\n--- expected\n{}\n--- actual\n{}",
            pretty(&expected),
            pretty(&actual)
        );
    }

    /// `actual` must be the bytes of expected file `name`.
    pub fn text(&self, name: &str, actual: &[u8]) {
        let path = self.expected_path(name);
        if updating() {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, actual).unwrap();
            return;
        }
        let expected = fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            actual == expected,
            "{name} differs\n--- expected\n{}\n--- actual\n{}",
            String::from_utf8_lossy(&expected),
            String::from_utf8_lossy(actual)
        );
    }
}

/// One SSE event of a transcript: its `event:` name and its `data:` lines joined.
pub struct Sse {
    pub event: Option<String>,
    pub data: String,
}

/// The events of an SSE transcript (comments and empty events skipped).
pub fn parse_sse(bytes: &[u8]) -> Vec<Sse> {
    let text = String::from_utf8(bytes.to_vec())
        .unwrap()
        .replace("\r\n", "\n");
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let (mut event, mut data): (Option<String>, Option<String>) = (None, None);
        for line in block.lines() {
            if let Some(name) = line.strip_prefix("event:") {
                event = Some(name.trim().to_owned());
            } else if let Some(d) = line.strip_prefix("data:") {
                let d = d.strip_prefix(' ').unwrap_or(d);
                data = Some(match data {
                    Some(prev) => prev + "\n" + d,
                    None => d.to_owned(),
                });
            }
        }
        if let Some(data) = data {
            events.push(Sse { event, data });
        }
    }
    events
}

/// Neutral events, one per line.
pub fn dump(events: &[StreamEvent]) -> Vec<u8> {
    events
        .iter()
        .map(|e| format!("{e:?}\n"))
        .collect::<String>()
        .into_bytes()
}

/// A provider's SSE transcript read into neutral events by `format`'s decoder (which must find
/// the stream complete); `info`: what the request encoder did.
pub fn decode_sse(format: Format, info: &EncodeInfo, transcript: &[u8]) -> Vec<StreamEvent> {
    let mut dec = codec::StreamDecoder::new(format, info);
    let mut events = Vec::new();
    for e in parse_sse(transcript) {
        dec.feed(e.event.as_deref(), e.data.as_bytes(), &mut events)
            .unwrap();
    }
    dec.finish().unwrap();
    events
}

/// Neutral events written as a client's stream in `format`, ended.
pub fn encode_stream(
    format: Format,
    model: &str,
    opts: AnswerOptions,
    created: u64,
    events: &[StreamEvent],
) -> Vec<u8> {
    let mut enc = codec::StreamEncoder::new(format, model, opts, created);
    let mut out = Vec::new();
    for ev in events {
        enc.encode(ev, &mut out);
    }
    enc.finish(&mut out);
    out
}

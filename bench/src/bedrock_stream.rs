//! The mock's ConverseStream body: the answer as `application/vnd.amazon.eventstream` messages in
//! Bedrock's order (messageStart; text deltas and contentBlockStop; for a tool call
//! contentBlockStart, input deltas and contentBlockStop; messageStop; metadata with usage and
//! latency), paced like the OpenAI stream, with mid-stream exceptions, error messages, resets and
//! a corrupted CRC on demand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deepintshield::http::{AbortHandle, BodyStream, StreamPoll};
use deepintshield::providers::eventstream;
use serde_json::{json, Value};

use crate::bedrock::{Answer, Counters};
use crate::completion::split_even;

/// Pieces a tool call's input JSON is streamed in.
pub const TOOL_INPUT_PIECES: usize = 3;
/// Longest `p` padding field Bedrock-style events carry.
const PADDING_CHARS_MAX: usize = 40;
const PADDING: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

const _: () = assert!(PADDING_CHARS_MAX < PADDING.len());

/// What goes wrong mid-stream.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamFault {
    /// A modeled exception message (`:message-type: exception`), then the end of the body.
    Exception {
        exception_type: &'static str,
        payload: Value,
    },
    /// An unmodeled error message (`:message-type: error`), then the end of the body.
    Error {
        code: &'static str,
        message: &'static str,
    },
    /// The connection is dropped.
    Reset,
}

/// How one stream unfolds.
pub struct StreamPlan {
    /// Pause before every content delta but the first.
    pub delay: Duration,
    /// After this many deltas, this fault.
    pub fault: Option<(usize, StreamFault)>,
    /// After this many deltas, the next message goes out with a wrong CRC; the stream goes on.
    pub bad_crc_after: Option<usize>,
    /// Drops the connection for `StreamFault::Reset` (`None` in unit tests).
    pub abort: Option<AbortHandle>,
}

/// One encoded message, and whether it is a content delta (paced and counted).
struct Frame {
    bytes: Vec<u8>,
    delta: bool,
}

/// Every event payload carries a `p` field of varying length, as Bedrock's do, so clients that
/// reject unknown fields fail here as they would there.
fn event(kind: &str, mut payload: Value, n: usize) -> Result<Vec<u8>, String> {
    let pad = &PADDING[..1 + (n * 7) % PADDING_CHARS_MAX];
    payload["p"] = json!(pad);
    let bytes = serde_json::to_vec(&payload).map_err(|e| e.to_string())?;
    eventstream::encode_event(kind, "application/json", &bytes).map_err(|e| e.to_string())
}

/// The stream of `answer`, its text in `chunks` deltas.
pub fn build(
    answer: &Answer,
    chunks: usize,
    plan: StreamPlan,
    started: Instant,
    counters: Arc<Counters>,
) -> Result<BedrockStream, String> {
    let mut frames = Vec::with_capacity(chunks + TOOL_INPUT_PIECES + 6);
    let mut push = |kind: &str, payload: Value, delta: bool| -> Result<(), String> {
        let n = frames.len();
        frames.push(Frame {
            bytes: event(kind, payload, n)?,
            delta,
        });
        Ok(())
    };
    push("messageStart", json!({"role": "assistant"}), false)?;
    let mut index = 0;
    if !answer.text.is_empty() {
        for piece in split_even(&answer.text, chunks)
            .into_iter()
            .filter(|p| !p.is_empty())
        {
            push(
                "contentBlockDelta",
                json!({"contentBlockIndex": index, "delta": {"text": piece}}),
                true,
            )?;
        }
        push(
            "contentBlockStop",
            json!({"contentBlockIndex": index}),
            false,
        )?;
        index += 1;
    }
    if let Some((tool_use_id, name, input)) = &answer.tool_use {
        push(
            "contentBlockStart",
            json!({"contentBlockIndex": index, "start": {"toolUse": {"toolUseId": tool_use_id, "name": name}}}),
            false,
        )?;
        let input = input.to_string();
        for piece in split_even(&input, TOOL_INPUT_PIECES)
            .into_iter()
            .filter(|p| !p.is_empty())
        {
            push(
                "contentBlockDelta",
                json!({"contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}}),
                true,
            )?;
        }
        push(
            "contentBlockStop",
            json!({"contentBlockIndex": index}),
            false,
        )?;
    }
    push(
        "messageStop",
        json!({"stopReason": answer.stop_reason}),
        false,
    )?;
    counters.streams_started.fetch_add(1, Ordering::Relaxed);
    Ok(BedrockStream {
        frames,
        next: 0,
        deltas_sent: 0,
        next_at: None,
        usage: answer.usage.clone(),
        started,
        plan,
        counters,
        finished: false,
    })
}

/// The body, polled by the HTTP layer.
pub struct BedrockStream {
    frames: Vec<Frame>,
    /// The next frame to send; `frames.len()`: the metadata event is next.
    next: usize,
    deltas_sent: usize,
    next_at: Option<Instant>,
    usage: Value,
    started: Instant,
    plan: StreamPlan,
    counters: Arc<Counters>,
    finished: bool,
}

impl BedrockStream {
    fn end(&mut self, counter: fn(&Counters) -> &AtomicU64) {
        self.finished = true;
        counter(&self.counters).fetch_add(1, Ordering::Relaxed);
    }

    /// The metadata event, with the latency measured now.
    fn metadata(&self) -> Vec<u8> {
        let payload = json!({
            "usage": self.usage,
            "metrics": {"latencyMs": self.started.elapsed().as_millis() as u64},
        });
        event("metadata", payload, self.frames.len()).unwrap_or_default()
    }

    /// The injected fault, when its time has come (never before messageStart).
    fn fault_due(&mut self) -> Option<StreamPoll> {
        let (k, _) = self.plan.fault.as_ref()?;
        if self.next == 0 || self.deltas_sent != *k {
            return None;
        }
        let (_, fault) = self.plan.fault.take()?;
        let bytes = match fault {
            StreamFault::Reset => {
                self.end(|c| &c.streams_reset);
                if let Some(a) = self.plan.abort {
                    a.abort();
                }
                return Some(StreamPoll::Pending); // the server sees the connection gone
            }
            StreamFault::Exception {
                exception_type,
                payload,
            } => serde_json::to_vec(&payload).ok().and_then(|p| {
                eventstream::encode_exception(exception_type, "application/json", &p).ok()
            }),
            StreamFault::Error { code, message } => eventstream::encode_error(code, message).ok(),
        };
        self.end(|c| &c.streams_failed);
        Some(StreamPoll::Chunk(bytes.unwrap_or_default()))
    }
}

impl BodyStream for BedrockStream {
    fn poll(&mut self, wait: Duration) -> StreamPoll {
        if self.finished {
            return StreamPoll::End;
        }
        if let Some(p) = self.fault_due() {
            return p;
        }
        let delta = self.frames.get(self.next).is_some_and(|f| f.delta);
        if delta && self.deltas_sent > 0 {
            if let Some(at) = self.next_at {
                let left = at.saturating_duration_since(Instant::now());
                if left > wait {
                    may::coroutine::sleep(wait);
                    return StreamPoll::Pending;
                }
                if !left.is_zero() {
                    may::coroutine::sleep(left);
                }
            }
        }
        let mut bytes = match self.frames.get_mut(self.next) {
            Some(f) => std::mem::take(&mut f.bytes),
            None => self.metadata(),
        };
        if self.next > 0 && self.plan.bad_crc_after == Some(self.deltas_sent) {
            self.plan.bad_crc_after = None;
            if let Some(last) = bytes.last_mut() {
                *last ^= 0xff;
                self.counters.crc_corrupted.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.next == self.frames.len() {
            self.end(|c| &c.streams_completed);
        }
        self.next += 1;
        if delta {
            self.deltas_sent += 1;
            self.next_at = Some(Instant::now() + self.plan.delay);
        }
        StreamPoll::Chunk(bytes)
    }

    fn cancel(&mut self) {
        if !self.finished {
            self.end(|c| &c.streams_aborted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deepintshield::providers::eventstream::{DecodeError, Decoder, Message, MessageKind};

    fn answer(tool: bool) -> Answer {
        Answer {
            text: "mock: hello world".into(),
            tool_use: tool.then(|| ("tooluse_1".into(), "f".into(), json!({"city": "Paris"}))),
            stop_reason: if tool { "tool_use" } else { "end_turn" },
            usage: json!({"inputTokens": 3, "outputTokens": 5, "totalTokens": 8,
                          "cacheReadInputTokens": 0, "cacheWriteInputTokens": 0}),
        }
    }

    fn plan(fault: Option<(usize, StreamFault)>, bad_crc_after: Option<usize>) -> StreamPlan {
        StreamPlan {
            delay: Duration::ZERO,
            fault,
            bad_crc_after,
            abort: None,
        }
    }

    fn run(a: &Answer, chunks: usize, p: StreamPlan) -> (Vec<u8>, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        let mut s = build(a, chunks, p, Instant::now(), Arc::clone(&counters)).unwrap();
        let mut wire = Vec::new();
        for _ in 0..1000 {
            match s.poll(Duration::from_millis(10)) {
                StreamPoll::Chunk(c) => wire.extend_from_slice(&c),
                StreamPoll::Pending => {}
                StreamPoll::End => return (wire, counters),
            }
        }
        panic!("the stream did not end");
    }

    fn decode(wire: &[u8]) -> Result<Vec<Message>, DecodeError> {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        d.decode_all(wire, &mut out)?;
        d.finish()?;
        Ok(out)
    }

    fn kinds(msgs: &[Message]) -> Vec<String> {
        msgs.iter()
            .map(|m| match m.kind() {
                MessageKind::Event { event_type } => event_type.to_string(),
                MessageKind::Exception { exception_type } => format!("!{exception_type}"),
                MessageKind::Error { code, .. } => format!("error:{code}"),
                MessageKind::Malformed => "?".into(),
            })
            .collect()
    }

    #[test]
    fn text_then_tool_in_bedrock_order() {
        let (wire, counters) = run(&answer(true), 4, plan(None, None));
        let msgs = decode(&wire).unwrap();
        assert_eq!(
            kinds(&msgs),
            [
                "messageStart",
                "contentBlockDelta",
                "contentBlockDelta",
                "contentBlockDelta",
                "contentBlockDelta",
                "contentBlockStop",
                "contentBlockStart",
                "contentBlockDelta",
                "contentBlockDelta",
                "contentBlockDelta",
                "contentBlockStop",
                "messageStop",
                "metadata"
            ]
        );
        let json = |m: &Message| serde_json::from_slice::<Value>(&m.payload).unwrap();
        let text: String = msgs[1..5]
            .iter()
            .map(|m| json(m)["delta"]["text"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(text, "mock: hello world");
        assert_eq!(json(&msgs[6])["start"]["toolUse"]["name"], "f");
        assert_eq!(json(&msgs[6])["contentBlockIndex"], 1);
        let input: String = msgs[7..10]
            .iter()
            .map(|m| {
                json(m)["delta"]["toolUse"]["input"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&input).unwrap(),
            json!({"city": "Paris"})
        );
        assert_eq!(json(&msgs[11])["stopReason"], "tool_use");
        assert_eq!(json(&msgs[12])["usage"]["totalTokens"], 8);
        assert!(json(&msgs[12])["metrics"]["latencyMs"].is_u64());
        assert!(msgs
            .iter()
            .all(|m| m.content_type() == Some("application/json")));
        assert_eq!(counters.streams_completed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn exception_after_k_deltas_ends_the_stream() {
        let fault = StreamFault::Exception {
            exception_type: "modelStreamErrorException",
            payload: json!({"message": "boom", "originalStatusCode": 500}),
        };
        let (wire, counters) = run(&answer(false), 4, plan(Some((2, fault)), None));
        let msgs = decode(&wire).unwrap();
        assert_eq!(
            kinds(&msgs),
            [
                "messageStart",
                "contentBlockDelta",
                "contentBlockDelta",
                "!modelStreamErrorException"
            ]
        );
        assert_eq!(counters.streams_failed.load(Ordering::Relaxed), 1);
        let err = StreamFault::Error {
            code: "InternalFailure",
            message: "m",
        };
        let (wire, _) = run(&answer(false), 4, plan(Some((0, err)), None));
        assert_eq!(
            kinds(&decode(&wire).unwrap()),
            ["messageStart", "error:InternalFailure"]
        );
    }

    #[test]
    fn corrupted_crc_is_a_decoder_error_after_k_deltas() {
        let (wire, counters) = run(&answer(false), 4, plan(None, Some(1)));
        let mut d = Decoder::new();
        let mut out = Vec::new();
        let e = d.decode_all(&wire, &mut out).unwrap_err();
        assert!(matches!(e, DecodeError::MessageCrc { .. }), "{e}");
        assert_eq!(kinds(&out), ["messageStart", "contentBlockDelta"]);
        assert_eq!(counters.crc_corrupted.load(Ordering::Relaxed), 1);
        assert_eq!(counters.streams_completed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn abort_is_counted_once() {
        let counters = Arc::new(Counters::default());
        let mut s = build(
            &answer(false),
            2,
            plan(None, None),
            Instant::now(),
            Arc::clone(&counters),
        )
        .unwrap();
        let _ = s.poll(Duration::ZERO);
        s.cancel();
        s.cancel();
        assert_eq!(counters.streams_aborted.load(Ordering::Relaxed), 1);
    }
}

//! The contract between the front and the workers: a [`Job`] (one request on its way to a
//! provider), the [`Reply`]s a worker sends back over a [`crate::handoff`] channel, the reusable
//! [`ReplyChannel`] they travel on, and [`JobCtl`], the cancellation a waiting coroutine and the
//! worker share. Nothing here knows a wire format or a provider.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use crate::error::ApiError;
use crate::formats::Format;
pub use crate::formats::Usage;
use crate::objpool::Recycle;

/// How long past a bound a waiting request gives a worker to answer before giving up on it: past
/// the request deadline for the answer to begin, past the stream's idle timeout since its last
/// activity, past the stream's longest duration.
pub const REPLY_GRACE: Duration = Duration::from_millis(500);

/// Where a job's time went, for stats and the access log.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    pub queue_wait: Duration,
    /// `None` when the upstream was not called.
    pub upstream: Option<Duration>,
}

/// What a worker sends back for a job: one `Full`, or (for `stream: true` answered with an event
/// stream) `StreamStart`, any number of `Event`s and one `StreamEnd`.
///
/// Large payloads are boxed: every message on a reply channel is a node of its own (a `Reply`
/// and a pointer), made and freed once per message, so a small `Reply` keeps that allocation in
/// the allocator's smallest size classes (32 bytes instead of 120).
pub enum Reply {
    Full(Box<FullReply>),
    /// The upstream accepted the request and its events follow.
    StreamStart(Box<StreamStart>),
    /// One complete Server-Sent Event (`data: ...\n\n`), to be written as it is.
    Event(Vec<u8>),
    /// The stream is over: cleanly, or with an error to send as a final error event.
    StreamEnd(Box<StreamEnd>),
    /// Not from a worker: the periodic wake-up of a waiting coroutine (`pool::waiters`), at which it
    /// checks its client and its deadline.
    Nudge,
}

/// A whole answer (or an error before any event).
pub struct FullReply {
    pub result: Result<Answer, ApiError>,
    pub timings: Timings,
}

/// A stream began: where the time went so far, and the upstream's headers for the client
/// (rate-limit state).
pub struct StreamStart {
    pub timings: Timings,
    pub headers: Vec<(&'static str, String)>,
}

/// How a stream ended, with the usage it reported.
pub struct StreamEnd {
    pub error: Option<ApiError>,
    pub usage: Usage,
}

impl Reply {
    pub fn full(result: Result<Answer, ApiError>, timings: Timings) -> Reply {
        Reply::Full(Box::new(FullReply { result, timings }))
    }

    pub fn stream_end(error: Option<ApiError>, usage: Usage) -> Reply {
        Reply::StreamEnd(Box::new(StreamEnd { error, usage }))
    }
}

/// Most stream events a worker may have sent that the client's coroutine has not yet taken: a
/// slow client slows the worker's upstream reads instead of growing memory.
pub const STREAM_EVENTS_IN_FLIGHT_MAX: usize = 64;
/// Most bytes of those events: with events of up to `SSE_EVENT_BYTES_MAX` each, the count alone
/// would let one slow client hold 64 of them. One event is always let through, whatever its size.
pub const STREAM_BYTES_IN_FLIGHT_MAX: usize = 8 * 1024 * 1024;

/// Event buffers a stream's coroutine gives back to its worker once written, so that a running
/// stream carries its events without an allocation each (two: one being filled, one in flight).
pub const STREAM_SPARE_BUFFERS: usize = 2;
/// A buffer that grew past this is freed instead of given back (bounds what a pooled reply
/// channel can hold: 2 x 16 KiB while its stream runs, nothing once recycled).
pub const STREAM_SPARE_BYTES_MAX: usize = 16 * 1024;

/// Milliseconds on the process's monotonic clock (0 at its first use): the time stamps that
/// workers, the supervisor and waiting coroutines share through [`JobCtl`] and worker slots.
pub fn clock_ms() -> u64 {
    ms_at(Instant::now())
}

/// `t` on the clock of [`clock_ms`] (0 for instants before its start).
pub fn ms_at(t: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    t.saturating_duration_since(start).as_millis() as u64
}

/// Why a job was stopped before its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelReason {
    /// The client went away: nobody is left to answer.
    Client,
    /// The supervisor found the worker stuck (past its deadline, or a stream without activity).
    Stalled,
    /// The shutdown deadline passed: the client gets `shutting_down`.
    Shutdown,
}

impl CancelReason {
    fn code(self) -> u8 {
        match self {
            CancelReason::Client => 1,
            CancelReason::Stalled => 2,
            CancelReason::Shutdown => 3,
        }
    }

    fn from_code(code: u8) -> Option<CancelReason> {
        match code {
            1 => Some(CancelReason::Client),
            2 => Some(CancelReason::Stalled),
            3 => Some(CancelReason::Shutdown),
            _ => None,
        }
    }
}

/// Shared by a job's waiting coroutine and the worker running it (and seen by the supervisor).
pub struct JobCtl {
    /// 0 while running, else a [`CancelReason`] code (the first reason wins).
    cancelled: AtomicU8,
    /// The running worker's HTTP agent: shutting it down interrupts a blocked upstream read.
    agent: Mutex<Option<ureq::Agent>>,
    /// Stream events sent and not yet taken (bounded by [`STREAM_EVENTS_IN_FLIGHT_MAX`]).
    pub events_in_flight: AtomicUsize,
    /// Their bytes (bounded by [`STREAM_BYTES_IN_FLIGHT_MAX`]).
    pub bytes_in_flight: AtomicUsize,
    /// When the upstream call last showed life (any bytes read, SSE comments included), on the
    /// [`clock_ms`] clock; 0 before.
    activity_ms: AtomicU64,
    /// When the running stream must be over ([`clock_ms`]); 0 while no stream has begun.
    stream_until_ms: AtomicU64,
    /// The stream's terminator was sent to the client: nothing may follow it but the end.
    complete: AtomicBool,
    /// Written event buffers on their way back to the worker (see [`STREAM_SPARE_BUFFERS`]).
    spare: ArrayQueue<Vec<u8>>,
}

impl Default for JobCtl {
    fn default() -> Self {
        JobCtl {
            cancelled: AtomicU8::new(0),
            agent: Mutex::new(None),
            events_in_flight: AtomicUsize::new(0),
            bytes_in_flight: AtomicUsize::new(0),
            activity_ms: AtomicU64::new(0),
            stream_until_ms: AtomicU64::new(0),
            complete: AtomicBool::new(false),
            spare: ArrayQueue::new(STREAM_SPARE_BUFFERS),
        }
    }
}

impl JobCtl {
    /// An empty buffer for the next stream events: one given back by the client's coroutine, or
    /// a new one while none is.
    pub fn take_spare(&self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    /// A buffer whose events were written to the client, for the worker to fill again (freed
    /// when it grew past [`STREAM_SPARE_BYTES_MAX`] or enough are waiting).
    pub fn give_spare(&self, mut buf: Vec<u8>) {
        if buf.capacity() <= STREAM_SPARE_BYTES_MAX {
            buf.clear();
            let _ = self.spare.push(buf);
        }
    }

    /// The client went away: stop the job, interrupting its upstream call at once.
    pub fn cancel(&self) {
        self.cancel_for(CancelReason::Client);
    }

    /// Stop the job for `reason`, interrupting its upstream call at once. A job already stopped
    /// keeps its first reason.
    pub fn cancel_for(&self, reason: CancelReason) {
        let _ =
            self.cancelled
                .compare_exchange(0, reason.code(), Ordering::AcqRel, Ordering::Acquire);
        let agent = match self.agent.lock() {
            Ok(mut slot) => slot.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(agent) = agent {
            agent.shutdown();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire) != 0
    }

    /// Why the job was stopped; `None` while it runs.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        CancelReason::from_code(self.cancelled.load(Ordering::Acquire))
    }

    /// The upstream call showed life now.
    pub fn touch(&self) {
        self.activity_ms.store(clock_ms().max(1), Ordering::Release);
    }

    /// Last sign of life of the upstream call ([`clock_ms`]); 0 before any.
    pub fn activity_ms(&self) -> u64 {
        self.activity_ms.load(Ordering::Acquire)
    }

    /// The stream began now and may run for `duration_max`: from here on it is judged by its
    /// activity and that end, not by the request deadline.
    pub fn begin_stream(&self, duration_max: Duration) {
        let until = clock_ms().saturating_add(duration_max.as_millis() as u64);
        self.stream_until_ms.store(until.max(1), Ordering::Release);
        self.touch();
    }

    /// The worker sent the stream's terminator.
    pub fn mark_complete(&self) {
        self.complete.store(true, Ordering::Release);
    }

    /// Whether the stream's terminator was sent.
    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    /// When the running stream must be over ([`clock_ms`]); `None` before it began.
    pub fn stream_until_ms(&self) -> Option<u64> {
        match self.stream_until_ms.load(Ordering::Acquire) {
            0 => None,
            until => Some(until),
        }
    }

    /// The worker registers its agent for the duration of the upstream call; false when the job
    /// was cancelled already.
    pub fn attach(&self, agent: &ureq::Agent) -> bool {
        let mut slot = match self.agent.lock() {
            Ok(slot) => slot,
            Err(p) => p.into_inner(),
        };
        if self.is_cancelled() {
            return false;
        }
        *slot = Some(agent.clone());
        true
    }

    /// The upstream call is over; must happen before the job's last reply is sent.
    pub fn detach(&self) {
        match self.agent.lock() {
            Ok(mut slot) => slot.take(),
            Err(p) => p.into_inner().take(),
        };
    }

    fn reset(&self) {
        self.cancelled.store(0, Ordering::Release);
        self.events_in_flight.store(0, Ordering::Release);
        self.bytes_in_flight.store(0, Ordering::Release);
        self.activity_ms.store(0, Ordering::Release);
        self.stream_until_ms.store(0, Ordering::Release);
        self.complete.store(false, Ordering::Release);
        // An idle channel holds no event buffers.
        while self.spare.pop().is_some() {}
        self.detach();
    }
}

/// The API a client spoke: decides how its request is read and how every answer, error and
/// stream event goes back to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientApi {
    /// OpenAI Chat Completions (`POST /v1/chat/completions`).
    OpenAiChat,
    /// Anthropic Messages (`POST /v1/messages`).
    AnthropicMessages,
    /// Anthropic token counting (`POST /v1/messages/count_tokens`).
    AnthropicCountTokens,
    /// OpenAI embeddings (`POST /v1/embeddings`).
    OpenAiEmbeddings,
    /// OpenAI legacy completions (`POST /v1/completions`).
    OpenAiCompletions,
    /// OpenAI Responses (`POST /v1/responses`): a chat answer in the Responses API.
    OpenAiResponses,
}

/// What a request asks of a provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A chat answer (OpenAI Chat Completions, Anthropic Messages, OpenAI Responses).
    Chat,
    /// A token count of a chat request.
    CountTokens,
    /// Embedding vectors of texts.
    Embeddings,
    /// A legacy text completion.
    Completions,
}

impl ClientApi {
    /// The wire format of the client's requests and answers (for the operations that are not
    /// chat, the API family whose errors it speaks).
    pub fn format(self) -> Format {
        match self {
            ClientApi::OpenAiChat | ClientApi::OpenAiEmbeddings | ClientApi::OpenAiCompletions => {
                Format::OpenAiChat
            }
            ClientApi::AnthropicMessages | ClientApi::AnthropicCountTokens => Format::Anthropic,
            ClientApi::OpenAiResponses => Format::OpenAiResponses,
        }
    }

    /// What the request asks of the provider.
    pub fn operation(self) -> Operation {
        match self {
            ClientApi::OpenAiChat | ClientApi::AnthropicMessages | ClientApi::OpenAiResponses => {
                Operation::Chat
            }
            ClientApi::AnthropicCountTokens => Operation::CountTokens,
            ClientApi::OpenAiEmbeddings => Operation::Embeddings,
            ClientApi::OpenAiCompletions => Operation::Completions,
        }
    }

    /// Whether errors go back in Anthropic's shape.
    pub fn is_anthropic(self) -> bool {
        matches!(
            self,
            ClientApi::AnthropicMessages | ClientApi::AnthropicCountTokens
        )
    }
}

/// A whole answer for the client, already in the client's wire format.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Response headers passed on to the client (`retry-after`, `x-ratelimit-*`, ...).
    pub headers: Vec<(&'static str, String)>,
    pub usage: Usage,
}

/// What a client asked, shared by every attempt of one request (its fallbacks included).
#[derive(Debug)]
pub struct ClientRequest {
    pub api: ClientApi,
    /// The body as the client sent it.
    pub body: Vec<u8>,
    /// `stream: true`: answer with an event stream.
    pub stream: bool,
    /// The client asked for the final usage chunk (`stream_options.include_usage`).
    pub wants_usage: bool,
    /// Request headers passed on to the upstream: `x-request-id` always, `anthropic-beta` and
    /// `anthropic-version` when the client spoke Anthropic.
    pub forward_headers: Vec<(&'static str, String)>,
}

/// One request on its way to an upstream.
pub struct Job {
    pub request: Arc<ClientRequest>,
    pub upstream_model: String,
    /// When the front finished reading the request.
    pub received_at: Instant,
    pub enqueued_at: Instant,
    /// The request must be answered by then.
    pub deadline: Instant,
    pub reply: crate::handoff::Sender<Reply>,
    pub ctl: Arc<JobCtl>,
}

impl Job {
    /// `stream: true`: answer with an event stream.
    pub fn stream(&self) -> bool {
        self.request.stream
    }
}

/// A reusable reply channel. Reused only when the previous job's reply was received; a channel whose
/// waiter gave up is marked single-use so that a late reply can never reach another request.
pub struct ReplyChannel {
    pub tx: crate::handoff::Sender<Reply>,
    pub rx: crate::handoff::Receiver<Reply>,
    pub ctl: Arc<JobCtl>,
}

impl ReplyChannel {
    pub fn new() -> Self {
        let (tx, rx) = crate::handoff::channel();
        ReplyChannel {
            tx,
            rx,
            ctl: Arc::new(JobCtl::default()),
        }
    }
}

impl Default for ReplyChannel {
    fn default() -> Self {
        Self::new()
    }
}

impl Recycle for ReplyChannel {
    fn reset(&mut self) {
        while self.rx.try_recv().is_ok() {}
        self.ctl.reset();
    }
    fn retained_bytes(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_buffers_go_round_and_stay_bounded() {
        use super::{JobCtl, STREAM_SPARE_BUFFERS, STREAM_SPARE_BYTES_MAX};
        let ctl = JobCtl::default();
        assert_eq!(
            ctl.take_spare().capacity(),
            0,
            "none given back yet: a new one"
        );
        let mut buf = Vec::with_capacity(512);
        buf.extend_from_slice(b"data: {}\n\n");
        let at = buf.as_ptr();
        ctl.give_spare(buf);
        let again = ctl.take_spare();
        assert!(again.is_empty(), "given back cleared");
        assert_eq!(again.as_ptr(), at, "the same allocation comes back");
        // Too large: freed. More than the bound: the extra ones freed.
        ctl.give_spare(Vec::with_capacity(STREAM_SPARE_BYTES_MAX + 1));
        assert_eq!(ctl.take_spare().capacity(), 0);
        for _ in 0..STREAM_SPARE_BUFFERS + 3 {
            ctl.give_spare(Vec::with_capacity(64));
        }
        let kept = std::iter::from_fn(|| Some(ctl.take_spare()))
            .take_while(|b| b.capacity() > 0)
            .count();
        assert_eq!(kept, STREAM_SPARE_BUFFERS);
        // A recycled channel holds none.
        ctl.give_spare(Vec::with_capacity(64));
        ctl.reset();
        assert_eq!(ctl.take_spare().capacity(), 0);
    }

    #[test]
    fn replies_stay_small() {
        // Each message on a reply channel is a node of its own (see `Reply`).
        assert!(std::mem::size_of::<super::Reply>() <= 32);
    }
}

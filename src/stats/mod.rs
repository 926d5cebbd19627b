//! Per-pool statistics: counters (relaxed atomics), HDR latency histograms in microseconds sharded
//! per worker core (a worker only ever shares a shard with workers pinned to the same core), the
//! collector that merges shards, the `/stats` JSON pieces and the periodic stdout line.

mod service;

pub use service::ServiceStats;

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Largest latency a histogram records, in microseconds (10 minutes); larger values saturate.
pub const LATENCY_US_MAX: u64 = 600_000_000;
/// Significant figures of every latency histogram.
pub const LATENCY_SIGFIG: u8 = 3;

/// Counters of one provider pool.
#[derive(Default)]
pub struct PoolCounters {
    /// Jobs that entered the queue.
    pub accepted: AtomicU64,
    /// Jobs answered by a worker (any status).
    pub completed: AtomicU64,
    /// Rejected at once by `queue_policy = "drop"` (429).
    pub dropped: AtomicU64,
    /// Rejected by `queue_policy = "error"` or after a `block` wait (503).
    pub rejected: AtomicU64,
    /// Taken by a worker after waiting past `queue_wait_ms_max` (504, upstream not called).
    pub queue_timeouts: AtomicU64,
    /// Upstream call ran past the request deadline (504).
    pub request_timeouts: AtomicU64,
    /// The client side gave up waiting for a worker's answer (a worker stuck past its deadline).
    pub reply_timeouts: AtomicU64,
    /// Jobs whose handling panicked (500); the worker lived on.
    pub panics: AtomicU64,
    pub upstream_2xx: AtomicU64,
    pub upstream_4xx: AtomicU64,
    pub upstream_5xx: AtomicU64,
    /// Connect, TLS, read or write failures talking to the upstream.
    pub transport_errors: AtomicU64,
    /// Upstream connections the gateway could not open for want of its own resources (file
    /// descriptors, local ports, memory): answered 503 and not held against the provider.
    pub local_resource_errors: AtomicU64,
    /// Workers currently handling a job.
    pub busy_workers: AtomicU64,
    /// Prompt and completion tokens reported by upstream `usage`.
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Streamed answers (`stream: true` answered with an event stream).
    pub streams: AtomicU64,
    /// Events and bytes passed on in streams.
    pub stream_events: AtomicU64,
    pub stream_bytes: AtomicU64,
    /// Requests whose client went away before the answer was complete (the upstream call stopped).
    pub client_cancelled: AtomicU64,
    /// Streams ended by an error event (upstream failure, stall) after they started.
    pub stream_errors: AtomicU64,
    /// Workers found stuck past their job's deadline and replaced.
    pub stalled_workers: AtomicU64,
    /// Adaptive scaling decisions.
    pub scale_ups: AtomicU64,
    pub scale_downs: AtomicU64,
}

impl PoolCounters {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Count an upstream HTTP status into its class.
    pub fn count_status(&self, status: u16) {
        let c = match status {
            200..=299 => &self.upstream_2xx,
            400..=499 => &self.upstream_4xx,
            _ => &self.upstream_5xx,
        };
        Self::inc(c);
    }

    fn to_json(&self) -> Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "accepted": g(&self.accepted),
            "completed": g(&self.completed),
            "dropped": g(&self.dropped),
            "rejected": g(&self.rejected),
            "queue_timeouts": g(&self.queue_timeouts),
            "request_timeouts": g(&self.request_timeouts),
            "reply_timeouts": g(&self.reply_timeouts),
            "panics": g(&self.panics),
            "upstream_2xx": g(&self.upstream_2xx),
            "upstream_4xx": g(&self.upstream_4xx),
            "upstream_5xx": g(&self.upstream_5xx),
            "transport_errors": g(&self.transport_errors),
            "local_resource_errors": g(&self.local_resource_errors),
            "prompt_tokens": g(&self.prompt_tokens),
            "completion_tokens": g(&self.completion_tokens),
            "streams": g(&self.streams),
            "stream_events": g(&self.stream_events),
            "stream_bytes": g(&self.stream_bytes),
            "client_cancelled": g(&self.client_cancelled),
            "stream_errors": g(&self.stream_errors),
            "stalled_workers": g(&self.stalled_workers),
            "scale_ups": g(&self.scale_ups),
            "scale_downs": g(&self.scale_downs),
        })
    }
}

fn new_hist() -> Histogram<u64> {
    // Bounds are constants checked below; creation cannot fail with them.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGFIG)
        .unwrap_or_else(|_| Histogram::new(LATENCY_SIGFIG).unwrap_or_else(|_| unreachable!()))
}

const _: () = assert!(LATENCY_US_MAX >= 2 && LATENCY_SIGFIG <= 5);

/// The latencies of jobs, in microseconds.
#[derive(Clone)]
struct Hists {
    queue_wait: Histogram<u64>,
    upstream: Histogram<u64>,
    total: Histogram<u64>,
    /// Time to first token: request received -> first stream event read from the upstream.
    ttft: Histogram<u64>,
    /// Gaps between consecutive stream events.
    gap: Histogram<u64>,
}

impl Hists {
    fn new() -> Self {
        Hists {
            queue_wait: new_hist(),
            upstream: new_hist(),
            total: new_hist(),
            ttft: new_hist(),
            gap: new_hist(),
        }
    }

    fn each_mut(&mut self) -> [&mut Histogram<u64>; 5] {
        [
            &mut self.queue_wait,
            &mut self.upstream,
            &mut self.total,
            &mut self.ttft,
            &mut self.gap,
        ]
    }

    fn each(&self) -> [&Histogram<u64>; 5] {
        [
            &self.queue_wait,
            &self.upstream,
            &self.total,
            &self.ttft,
            &self.gap,
        ]
    }

    /// Add `other`. An empty histogram is skipped: adding walks every bucket (tens of thousands),
    /// and most shards of a quiet pool, and the stream histograms of a non-streaming one, are empty.
    fn add(&mut self, other: &Hists) {
        for (mine, theirs) in self.each_mut().into_iter().zip(other.each()) {
            if !theirs.is_empty() {
                // Same bounds everywhere: adding cannot fail.
                let _ = mine.add(theirs);
            }
        }
    }

    fn reset(&mut self) {
        for h in self.each_mut() {
            if !h.is_empty() {
                h.reset();
            }
        }
    }
}

/// One of a pool's latency histograms (for [`PoolStats::with_histogram`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Latency {
    /// Enqueued -> taken by a worker.
    QueueWait,
    /// The upstream call (not recorded when the upstream was not called).
    Upstream,
    /// Request received -> answered.
    Total,
    /// Request received -> first stream event from the upstream (streams only).
    TimeToFirstToken,
    /// Between consecutive stream events (streams only).
    StreamEventGap,
}

/// A shard on its own cache lines so that workers of different cores never share one.
#[repr(align(128))]
struct Shard(Mutex<Hists>);

/// What the collector keeps: everything since start, and the part since the last stdout line.
struct Collected {
    all: Hists,
    interval: Hists,
    /// Since the scaler last looked.
    scale: Hists,
    interval_started: Instant,
    interval_completed_start: u64,
}

/// Statistics of one provider pool.
pub struct PoolStats {
    pub name: String,
    pub counters: PoolCounters,
    shards: Box<[Shard]>,
    collected: Mutex<Collected>,
}

impl PoolStats {
    /// `shards`: one per distinct core the pool's workers are pinned to.
    pub fn new(name: &str, shards: usize) -> Self {
        let shards = (0..shards.max(1))
            .map(|_| Shard(Mutex::new(Hists::new())))
            .collect();
        PoolStats {
            name: name.to_string(),
            counters: PoolCounters::default(),
            shards,
            collected: Mutex::new(Collected {
                all: Hists::new(),
                interval: Hists::new(),
                scale: Hists::new(),
                interval_started: Instant::now(),
                interval_completed_start: 0,
            }),
        }
    }

    /// Record one finished job. `upstream` is `None` when the upstream was not called.
    pub fn record(
        &self,
        shard: usize,
        queue_wait: Duration,
        upstream: Option<Duration>,
        total: Duration,
    ) {
        let us = |d: Duration| (d.as_micros() as u64).clamp(1, LATENCY_US_MAX);
        let shard = &self.shards[shard % self.shards.len()];
        // A poisoned shard only means a panic elsewhere mid-record; the counts are still usable.
        let mut h = shard.0.lock().unwrap_or_else(|p| p.into_inner());
        h.queue_wait.saturating_record(us(queue_wait));
        if let Some(u) = upstream {
            h.upstream.saturating_record(us(u));
        }
        h.total.saturating_record(us(total));
    }

    fn shard(&self, shard: usize) -> std::sync::MutexGuard<'_, Hists> {
        let shard = &self.shards[shard % self.shards.len()];
        shard.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a stream's time to first token.
    pub fn record_ttft(&self, shard: usize, ttft: Duration) {
        let us = (ttft.as_micros() as u64).clamp(1, LATENCY_US_MAX);
        self.shard(shard).ttft.saturating_record(us);
    }

    /// Record the gap between two consecutive stream events.
    pub fn record_gap(&self, shard: usize, gap: Duration) {
        let us = (gap.as_micros() as u64).clamp(1, LATENCY_US_MAX);
        self.shard(shard).gap.saturating_record(us);
    }

    /// Merge every shard into the collected histograms and clear the shards.
    pub fn collect(&self) {
        let mut c = self.collected.lock().unwrap_or_else(|p| p.into_inner());
        for shard in self.shards.iter() {
            let mut h = shard.0.lock().unwrap_or_else(|p| p.into_inner());
            c.all.add(&h);
            c.interval.add(&h);
            c.scale.add(&h);
            h.reset();
        }
    }

    /// Run `f` on the cumulative (since start) histogram of `which`, in microseconds, after merging
    /// the shards. `f` runs under the collector's lock: keep it short (e.g. read bucket counts).
    pub fn with_histogram<R>(&self, which: Latency, f: impl FnOnce(&Histogram<u64>) -> R) -> R {
        self.collect();
        let c = self.collected.lock().unwrap_or_else(|p| p.into_inner());
        let h = &c.all;
        f(match which {
            Latency::QueueWait => &h.queue_wait,
            Latency::Upstream => &h.upstream,
            Latency::Total => &h.total,
            Latency::TimeToFirstToken => &h.ttft,
            Latency::StreamEventGap => &h.gap,
        })
    }

    /// For the scaler: p99 queue wait and mean upstream time (microseconds) since its last call.
    pub fn take_scale_window(&self) -> (u64, f64) {
        self.collect();
        let mut c = self.collected.lock().unwrap_or_else(|p| p.into_inner());
        let out = (
            c.scale.queue_wait.value_at_quantile(0.99),
            c.scale.upstream.mean(),
        );
        c.scale.reset();
        out
    }

    /// JSON for `/stats`: counters plus latency summaries since start.
    pub fn to_json(&self) -> Value {
        self.collect();
        let c = self.collected.lock().unwrap_or_else(|p| p.into_inner());
        json!({
            "counters": self.counters.to_json(),
            "busy_workers": self.counters.busy_workers.load(Ordering::Relaxed),
            "latency_us": {
                "queue_wait": summary(&c.all.queue_wait),
                "upstream": summary(&c.all.upstream),
                "total": summary(&c.all.total),
                "time_to_first_token": summary(&c.all.ttft),
                "stream_event_gap": summary(&c.all.gap),
            },
        })
    }

    /// One stdout line for the interval since the previous call, then start a new interval.
    pub fn interval_line(
        &self,
        queue_depth: usize,
        queue_capacity: usize,
        workers: usize,
    ) -> String {
        self.collect();
        let mut c = self.collected.lock().unwrap_or_else(|p| p.into_inner());
        let completed = self.counters.completed.load(Ordering::Relaxed);
        let secs = c.interval_started.elapsed().as_secs_f64().max(1e-3);
        let rate = (completed - c.interval_completed_start.min(completed)) as f64 / secs;
        let t = &c.interval.total;
        let line = format!(
            "stats pool={} rate={:.1}/s p50_us={} p99_us={} max_us={} queue={}/{} busy={}/{} completed={}",
            self.name,
            rate,
            t.value_at_quantile(0.5),
            t.value_at_quantile(0.99),
            t.max(),
            queue_depth,
            queue_capacity,
            self.counters.busy_workers.load(Ordering::Relaxed),
            workers,
            completed,
        );
        c.interval.reset();
        c.interval_started = Instant::now();
        c.interval_completed_start = completed;
        line
    }
}

/// p50, p90, p99, p99.9, max, mean and count of a histogram.
pub fn summary(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.5),
        "p90": h.value_at_quantile(0.9),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_merge_across_shards() {
        let s = PoolStats::new("p", 2);
        for i in 0..100u64 {
            s.record(
                i as usize,
                Duration::from_micros(10),
                Some(Duration::from_micros(1000 + i)),
                Duration::from_micros(2000),
            );
        }
        s.record(0, Duration::from_micros(5), None, Duration::from_micros(7));
        let v = s.to_json();
        assert_eq!(v["latency_us"]["queue_wait"]["count"], 101);
        assert_eq!(v["latency_us"]["upstream"]["count"], 100);
        let p50 = v["latency_us"]["upstream"]["p50"].as_u64().unwrap();
        assert!((1040..=1060).contains(&p50), "p50 {p50}");
        // Collecting again does not double count.
        assert_eq!(s.to_json()["latency_us"]["total"]["count"], 101);
    }

    #[test]
    fn interval_line_resets() {
        let s = PoolStats::new("p", 1);
        s.counters.completed.store(10, Ordering::Relaxed);
        s.record(0, Duration::ZERO, None, Duration::from_micros(500));
        let line = s.interval_line(3, 10, 4);
        assert!(line.starts_with("stats pool=p rate="), "{line}");
        assert!(line.contains("queue=3/10"), "{line}");
        assert!(line.contains("p50_us=500"), "{line}");
        let line = s.interval_line(0, 10, 4);
        assert!(line.contains("p50_us=0"), "{line}");
    }
}

//! Prometheus text exposition (format 0.0.4) for `GET /metrics` on the admin listener: per-pool
//! counters, gauges and latency histograms in seconds (bucket counts derived from the cumulative
//! HDR histograms), the API front's counters, object pools, config reloads, and the process (RSS,
//! threads, open fds, CPU). Metric names are the constants below; every family is written whole
//! (all its series together), as the format requires.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hdrhistogram::Histogram;

use crate::http::FrontStats;
use crate::objpool::{ObjPoolSnapshot, ObjPoolStats};
use crate::pool::breaker::State;
use crate::pool::ProviderPool;
use crate::providers::keys::{KeySnapshot, KEY_STATES};
use crate::stats::{Latency, ServiceStats, LATENCY_US_MAX};

/// `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the latency buckets, in microseconds (100 us .. 5 min; `+Inf` is implied).
/// LLM calls run from milliseconds (cached, mock) to minutes (long generations).
pub const LATENCY_BUCKETS_US: [u64; 20] = [
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    120_000_000,
    300_000_000,
];
const _: () = assert!(LATENCY_BUCKETS_US[LATENCY_BUCKETS_US.len() - 1] < LATENCY_US_MAX);

// Per pool (label `pool`).
pub const POOL_ACCEPTED: &str = "deepintshield_pool_requests_accepted_total";
pub const POOL_COMPLETED: &str = "deepintshield_pool_requests_completed_total";
pub const POOL_DROPPED: &str = "deepintshield_pool_requests_dropped_total";
pub const POOL_REJECTED: &str = "deepintshield_pool_requests_rejected_total";
pub const POOL_QUEUE_TIMEOUTS: &str = "deepintshield_pool_queue_timeouts_total";
pub const POOL_REQUEST_TIMEOUTS: &str = "deepintshield_pool_request_timeouts_total";
pub const POOL_REPLY_TIMEOUTS: &str = "deepintshield_pool_reply_timeouts_total";
pub const POOL_PANICS: &str = "deepintshield_pool_panics_total";
pub const POOL_UPSTREAM_RESPONSES: &str = "deepintshield_pool_upstream_responses_total";
pub const POOL_TRANSPORT_ERRORS: &str = "deepintshield_pool_upstream_transport_errors_total";
pub const POOL_LOCAL_RESOURCE_ERRORS: &str = "deepintshield_pool_local_resource_errors_total";
pub const POOL_TOKENS: &str = "deepintshield_pool_tokens_total";
pub const POOL_STREAMS: &str = "deepintshield_pool_streams_total";
pub const POOL_STREAM_EVENTS: &str = "deepintshield_pool_stream_events_total";
pub const POOL_STREAM_BYTES: &str = "deepintshield_pool_stream_bytes_total";
pub const POOL_STREAM_ERRORS: &str = "deepintshield_pool_stream_errors_total";
pub const POOL_CLIENT_CANCELLED: &str = "deepintshield_pool_client_cancelled_total";
pub const POOL_STALLED_WORKERS: &str = "deepintshield_pool_stalled_workers_total";
pub const POOL_SCALE_EVENTS: &str = "deepintshield_pool_scale_events_total";
pub const POOL_BREAKER_STATE: &str = "deepintshield_pool_breaker_state";
pub const POOL_BREAKER_REJECTED: &str = "deepintshield_pool_breaker_rejected_total";
pub const POOL_WORKERS_TARGET: &str = "deepintshield_pool_workers_target";
pub const POOL_WORKERS_SUGGESTED: &str = "deepintshield_pool_workers_suggested";
pub const POOL_QUEUE_DEPTH: &str = "deepintshield_pool_queue_depth";
pub const POOL_QUEUE_CAPACITY: &str = "deepintshield_pool_queue_capacity";
pub const POOL_WORKERS: &str = "deepintshield_pool_workers";
pub const POOL_WORKERS_ALIVE: &str = "deepintshield_pool_workers_alive";
pub const POOL_WORKERS_BUSY: &str = "deepintshield_pool_workers_busy";
pub const POOL_WORKERS_IDLE: &str = "deepintshield_pool_workers_idle";
pub const POOL_QUEUE_WAIT_SECONDS: &str = "deepintshield_pool_queue_wait_seconds";
pub const POOL_UPSTREAM_SECONDS: &str = "deepintshield_pool_upstream_duration_seconds";
pub const POOL_TOTAL_SECONDS: &str = "deepintshield_pool_request_duration_seconds";
pub const POOL_TTFT_SECONDS: &str = "deepintshield_pool_time_to_first_token_seconds";
pub const POOL_STREAM_GAP_SECONDS: &str = "deepintshield_pool_stream_event_gap_seconds";
// Per provider key (labels `pool`, `key`: the key's position in the config, never the key).
pub const KEY_USES: &str = "deepintshield_pool_key_uses_total";
pub const KEY_REFUSALS: &str = "deepintshield_pool_key_refusals_total";
pub const KEY_DISABLES: &str = "deepintshield_pool_key_disables_total";
pub const KEY_PROBES: &str = "deepintshield_pool_key_probes_total";
pub const KEY_COOLDOWNS_DROPPED: &str = "deepintshield_pool_key_model_cooldowns_dropped_total";
pub const KEY_STATE: &str = "deepintshield_pool_key_state";
pub const KEY_MODEL_COOLDOWNS: &str = "deepintshield_pool_key_model_cooldowns";
// The API listener (label `listener`).
pub const FRONT_CONNECTIONS: &str = "deepintshield_front_connections_accepted_total";
pub const FRONT_CONNECTIONS_ACTIVE: &str = "deepintshield_front_connections_active";
pub const FRONT_REQUESTS: &str = "deepintshield_front_requests_total";
pub const FRONT_REQUESTS_IN_FLIGHT: &str = "deepintshield_front_requests_in_flight";
pub const FRONT_ERRORS: &str = "deepintshield_front_errors_total";
pub const FRONT_STREAMS_CANCELLED: &str = "deepintshield_front_streams_cancelled_total";
pub const FRONT_IDLE_TIMEOUTS: &str = "deepintshield_front_idle_timeouts_total";
pub const FRONT_CONNECTIONS_REFUSED: &str = "deepintshield_front_connections_refused_total";
pub const FRONT_ACCEPT_FD_EXHAUSTED: &str = "deepintshield_front_accept_fd_exhausted_total";
pub const FRONT_BODY_BUFFER_BYTES: &str = "deepintshield_front_body_buffer_bytes";
pub const FRONT_BODY_BUFFER_REFUSALS: &str = "deepintshield_front_body_buffer_refusals_total";
pub const FRONT_ANSWERED_BEFORE_BODY: &str =
    "deepintshield_front_requests_answered_before_body_total";
// Object pools (label `pool`).
pub const OBJPOOL_GETS: &str = "deepintshield_objpool_gets_total";
pub const OBJPOOL_HITS: &str = "deepintshield_objpool_hits_total";
pub const OBJPOOL_MISSES: &str = "deepintshield_objpool_misses_total";
pub const OBJPOOL_RETURNS: &str = "deepintshield_objpool_returns_total";
pub const OBJPOOL_DISCARDS: &str = "deepintshield_objpool_discards_total";
pub const OBJPOOL_HIT_RATIO: &str = "deepintshield_objpool_hit_ratio";
pub const OBJPOOL_CAPACITY: &str = "deepintshield_objpool_capacity";
pub const OBJPOOL_AVAILABLE: &str = "deepintshield_objpool_available";
// The service.
pub const BUILD_INFO: &str = "deepintshield_build_info";
pub const DRAINING: &str = "deepintshield_draining";
pub const CONFIG_GENERATION: &str = "deepintshield_config_generation";
pub const CONFIG_RELOADS: &str = "deepintshield_config_reloads_total";
pub const CONFIG_LAST_RELOAD_OK: &str = "deepintshield_config_last_reload_successful";
pub const CONFIG_LAST_RELOAD_OK_TIME: &str =
    "deepintshield_config_last_reload_success_timestamp_seconds";
pub const POOLS_DRAINING: &str = "deepintshield_pools_draining";
pub const GENERATIONS_ABANDONED: &str = "deepintshield_config_generations_abandoned_total";
pub const WATCHDOG_FAILURES: &str = "deepintshield_watchdog_check_failures_total";
pub const LOG_LINES_DROPPED: &str = "deepintshield_log_lines_dropped_total";
// The process (the names every Prometheus client library uses).
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
pub const PROCESS_VSIZE: &str = "process_virtual_memory_bytes";
pub const PROCESS_THREADS: &str = "process_threads";
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
pub const PROCESS_START_TIME: &str = "process_start_time_seconds";

/// What one scrape reads.
pub struct Scrape<'a> {
    pub pools: &'a [Arc<ProviderPool>],
    /// The API listener's counters (absent before it serves).
    pub front: Option<&'a FrontStats>,
    pub objpools: &'a [Arc<dyn ObjPoolStats>],
    pub service: &'a ServiceStats,
    /// The running config's generation (1 at start, +1 per applied reload).
    pub generation: u64,
    /// Shutdown has begun.
    pub draining: bool,
}

/// The whole exposition.
pub fn render(s: &Scrape<'_>) -> String {
    let mut w = Writer {
        out: String::with_capacity(16 * 1024 + s.pools.len() * 12 * 1024),
    };
    pools(&mut w, s.pools);
    keys(&mut w, s.pools);
    if let Some(front) = s.front {
        front_metrics(&mut w, front);
    }
    let snaps: Vec<ObjPoolSnapshot> = s.objpools.iter().map(|p| p.snapshot()).collect();
    objpools(&mut w, &snaps);
    service(&mut w, s);
    process(&mut w, s.service.started_unix_s);
    w.out
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

struct Writer {
    out: String,
}

impl Writer {
    fn head(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = write!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    /// One sample line; `value` is written with `Display` (integers exact, floats shortest).
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with one series per item of `items`.
    fn family<T>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        items: &[T],
        mut each: impl FnMut(&mut Writer, &T),
    ) {
        self.head(name, kind, help);
        for item in items {
            each(self, item);
        }
    }

    /// `_bucket`, `_sum` and `_count` of histogram `h` (microseconds), in seconds.
    fn histogram(&mut self, name: &str, label: (&str, &str), h: &Histogram<u64>) {
        let (buckets, sum_us) = bucket_counts(h);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (bound_us, count) in LATENCY_BUCKETS_US.iter().zip(buckets) {
            cumulative += count;
            let le = seconds(*bound_us);
            self.sample(&bucket, &[label, ("le", &le)], cumulative);
        }
        self.sample(&bucket, &[label, ("le", "+Inf")], h.len());
        self.sample(&format!("{name}_sum"), &[label], sum_us / 1e6);
        self.sample(&format!("{name}_count"), &[label], h.len());
    }
}

/// Per bucket of [`LATENCY_BUCKETS_US`] the count of values in it (not cumulative), and the sum
/// of all values in microseconds. A value counts in the first bucket whose bound is at least the
/// lowest value of its HDR bucket (so bucket edges are as precise as the histogram: 3 significant
/// figures).
fn bucket_counts(h: &Histogram<u64>) -> ([u64; LATENCY_BUCKETS_US.len()], f64) {
    let mut counts = [0u64; LATENCY_BUCKETS_US.len()];
    let mut sum_us = 0f64;
    for v in h.iter_recorded() {
        let value = v.value_iterated_to();
        let n = v.count_at_value();
        sum_us += h.median_equivalent(value) as f64 * n as f64;
        let low = h.lowest_equivalent(value);
        if let Some(i) = LATENCY_BUCKETS_US.iter().position(|&b| low <= b) {
            counts[i] += n;
        }
    }
    (counts, sum_us)
}

/// Microseconds as seconds, e.g. `0.00025`, `1`, `300`.
fn seconds(us: u64) -> String {
    format!("{}", us as f64 / 1e6)
}

/// Label values escape `\`, `"` and newlines.
fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn pools(w: &mut Writer, pools: &[Arc<ProviderPool>]) {
    type Counter = fn(&crate::stats::PoolCounters) -> &AtomicU64;
    let counters: [(&str, &str, Counter); 15] = [
        (
            POOL_ACCEPTED,
            "Requests that entered the pool's queue.",
            |c| &c.accepted,
        ),
        (
            POOL_COMPLETED,
            "Requests answered by a worker (any status).",
            |c| &c.completed,
        ),
        (
            POOL_DROPPED,
            "Requests answered 429 at once: queue full, policy drop.",
            |c| &c.dropped,
        ),
        (
            POOL_REJECTED,
            "Requests answered 503: queue full, policy error or block wait over.",
            |c| &c.rejected,
        ),
        (
            POOL_QUEUE_TIMEOUTS,
            "Requests that waited longer than queue_wait_ms_max for a worker (504).",
            |c| &c.queue_timeouts,
        ),
        (
            POOL_REQUEST_TIMEOUTS,
            "Requests that ran past request_timeout_ms (504).",
            |c| &c.request_timeouts,
        ),
        (
            POOL_REPLY_TIMEOUTS,
            "Requests whose worker did not answer by the deadline plus grace.",
            |c| &c.reply_timeouts,
        ),
        (
            POOL_PANICS,
            "Jobs whose handling panicked (500); the worker lived on.",
            |c| &c.panics,
        ),
        (
            POOL_TRANSPORT_ERRORS,
            "Connect, TLS, read or write failures talking to the upstream.",
            |c| &c.transport_errors,
        ),
        (
            POOL_LOCAL_RESOURCE_ERRORS,
            "Upstream connections not opened for want of the gateway's own file descriptors, local \
             ports or memory (503, not a provider failure).",
            |c| &c.local_resource_errors,
        ),
        (
            POOL_STREAMS,
            "Answers streamed as server-sent events.",
            |c| &c.streams,
        ),
        (
            POOL_STREAM_EVENTS,
            "Stream events passed on to clients.",
            |c| &c.stream_events,
        ),
        (
            POOL_STREAM_BYTES,
            "Stream bytes passed on to clients.",
            |c| &c.stream_bytes,
        ),
        (
            POOL_STREAM_ERRORS,
            "Streams ended by an error event after they started.",
            |c| &c.stream_errors,
        ),
        (
            POOL_STALLED_WORKERS,
            "Workers found stuck past their job's deadline and replaced.",
            |c| &c.stalled_workers,
        ),
    ];
    for (name, help, get) in counters {
        w.family(name, Kind::Counter, help, pools, |w, p| {
            w.sample(name, &[("pool", p.name())], load(get(&p.stats().counters)));
        });
    }
    w.family(
        POOL_CLIENT_CANCELLED,
        Kind::Counter,
        "Requests whose client went away before the answer was complete.",
        pools,
        |w, p| {
            let c = &p.stats().counters;
            w.sample(
                POOL_CLIENT_CANCELLED,
                &[("pool", p.name())],
                load(&c.client_cancelled),
            );
        },
    );
    w.family(
        POOL_UPSTREAM_RESPONSES,
        Kind::Counter,
        "Upstream HTTP responses by status class.",
        pools,
        |w, p| {
            let c = &p.stats().counters;
            for (class, v) in [
                ("2xx", &c.upstream_2xx),
                ("4xx", &c.upstream_4xx),
                ("5xx", &c.upstream_5xx),
            ] {
                w.sample(
                    POOL_UPSTREAM_RESPONSES,
                    &[("pool", p.name()), ("class", class)],
                    load(v),
                );
            }
        },
    );
    w.family(
        POOL_TOKENS,
        Kind::Counter,
        "Tokens reported by upstream usage, by type.",
        pools,
        |w, p| {
            let c = &p.stats().counters;
            for (kind, v) in [
                ("prompt", &c.prompt_tokens),
                ("completion", &c.completion_tokens),
            ] {
                w.sample(POOL_TOKENS, &[("pool", p.name()), ("type", kind)], load(v));
            }
        },
    );
    w.family(
        POOL_SCALE_EVENTS,
        Kind::Counter,
        "Adaptive scaling decisions, by direction.",
        pools,
        |w, p| {
            let c = &p.stats().counters;
            for (dir, v) in [("up", &c.scale_ups), ("down", &c.scale_downs)] {
                w.sample(
                    POOL_SCALE_EVENTS,
                    &[("pool", p.name()), ("direction", dir)],
                    load(v),
                );
            }
        },
    );
    w.family(
        POOL_BREAKER_REJECTED,
        Kind::Counter,
        "Requests not sent because the circuit breaker was open.",
        pools,
        |w, p| {
            let v = load(&p.breaker().rejected);
            w.sample(POOL_BREAKER_REJECTED, &[("pool", p.name())], v);
        },
    );
    w.family(
        POOL_BREAKER_STATE,
        Kind::Gauge,
        "Circuit breaker state: 1 for the current state, 0 for the others.",
        pools,
        |w, p| {
            let now = p.breaker().state();
            for state in [State::Closed, State::Open, State::HalfOpen] {
                w.sample(
                    POOL_BREAKER_STATE,
                    &[("pool", p.name()), ("state", state.as_str())],
                    u64::from(now == state),
                );
            }
        },
    );
    pool_gauges(w, pools);
    let hists = [
        (
            POOL_QUEUE_WAIT_SECONDS,
            "Time requests waited in the queue for a worker.",
            Latency::QueueWait,
        ),
        (
            POOL_UPSTREAM_SECONDS,
            "Time of upstream calls.",
            Latency::Upstream,
        ),
        (
            POOL_TOTAL_SECONDS,
            "Time from request received to answered.",
            Latency::Total,
        ),
        (
            POOL_TTFT_SECONDS,
            "Time from request received to the first streamed event (streams only).",
            Latency::TimeToFirstToken,
        ),
        (
            POOL_STREAM_GAP_SECONDS,
            "Time between consecutive events of a stream.",
            Latency::StreamEventGap,
        ),
    ];
    for (name, help, which) in hists {
        w.family(name, Kind::Histogram, help, pools, |w, p| {
            p.stats()
                .with_histogram(which, |h| w.histogram(name, ("pool", p.name()), h));
        });
    }
}

fn pool_gauges(w: &mut Writer, pools: &[Arc<ProviderPool>]) {
    type Gauge = fn(&ProviderPool) -> u64;
    let busy: Gauge = |p| load(&p.stats().counters.busy_workers);
    let gauges: [(&str, &str, Gauge); 8] = [
        (
            POOL_WORKERS_TARGET,
            "Workers the pool aims at (adaptive scaling).",
            ProviderPool::workers_target,
        ),
        (
            POOL_WORKERS_SUGGESTED,
            "Pool size suggested by Little's law (throughput x upstream time).",
            ProviderPool::workers_suggested,
        ),
        (POOL_QUEUE_DEPTH, "Requests waiting in the queue.", |p| {
            p.queue_depth() as u64
        }),
        (POOL_QUEUE_CAPACITY, "Capacity of the queue.", |p| {
            p.config().queue_capacity as u64
        }),
        (POOL_WORKERS, "Configured worker threads.", |p| {
            p.config().workers as u64
        }),
        (
            POOL_WORKERS_ALIVE,
            "Worker threads running.",
            ProviderPool::workers_alive,
        ),
        (
            POOL_WORKERS_BUSY,
            "Workers handling a request (those of pools draining after a reload included).",
            busy,
        ),
        (
            POOL_WORKERS_IDLE,
            "Running workers not handling a request.",
            |p| {
                p.workers_alive()
                    .saturating_sub(load(&p.stats().counters.busy_workers))
            },
        ),
    ];
    for (name, help, get) in gauges {
        w.family(name, Kind::Gauge, help, pools, |w, p| {
            w.sample(name, &[("pool", p.name())], get(p));
        });
    }
}

/// The provider keys of every pool: counters since the pool was built (a reload rebuilds the key
/// pool, so these series restart from zero then), state and active model cool-downs.
fn keys(w: &mut Writer, pools: &[Arc<ProviderPool>]) {
    let snaps: Vec<(&str, Vec<KeySnapshot>, Vec<String>)> = pools
        .iter()
        .map(|p| {
            let keys = p.key_snapshots();
            let labels = keys.iter().map(|k| k.index.to_string()).collect();
            (p.name(), keys, labels)
        })
        .collect();
    type Each = fn(&mut Writer, &str, &[(&str, &str)], &KeySnapshot);
    let families: [(&str, Kind, &str, Each); 7] = [
        (
            KEY_USES,
            Kind::Counter,
            "Upstream attempts made with the key.",
            |w, name, l, k| w.sample(name, l, k.uses),
        ),
        (
            KEY_REFUSALS,
            Kind::Counter,
            "Upstream refusals of the key, by reason (429 rate_limited or quota_exhausted, 403 forbidden, 404 not_found, 401 unauthorized).",
            |w, name, l, k| {
                for (reason, n) in k.refusals {
                    w.sample(name, &[l[0], l[1], ("reason", reason)], n);
                }
            },
        ),
        (
            KEY_DISABLES,
            Kind::Counter,
            "Times the key was taken out of service after a 401.",
            |w, name, l, k| w.sample(name, l, k.disables),
        ),
        (
            KEY_PROBES,
            Kind::Counter,
            "Re-probes of the key after a disable expired, by result.",
            |w, name, l, k| {
                for (result, n) in k.probes {
                    w.sample(name, &[l[0], l[1], ("result", result)], n);
                }
            },
        ),
        (
            KEY_COOLDOWNS_DROPPED,
            Kind::Counter,
            "Model cool-downs of the key not kept because its table was full of longer ones.",
            |w, name, l, k| w.sample(name, l, k.marks_dropped),
        ),
        (
            KEY_STATE,
            Kind::Gauge,
            "Key state: 1 for the current state, 0 for the others.",
            |w, name, l, k| {
                for state in KEY_STATES {
                    w.sample(
                        name,
                        &[l[0], l[1], ("state", state)],
                        u64::from(k.state == state),
                    );
                }
            },
        ),
        (
            KEY_MODEL_COOLDOWNS,
            Kind::Gauge,
            "Models the key is cooling down or denied for now.",
            |w, name, l, k| w.sample(name, l, k.model_cooldowns.len()),
        ),
    ];
    for (name, kind, help, each) in families {
        w.head(name, kind, help);
        for (pool, keys, labels) in &snaps {
            for (k, label) in keys.iter().zip(labels) {
                each(w, name, &[("pool", pool), ("key", label)], k);
            }
        }
    }
}

fn front_metrics(w: &mut Writer, f: &FrontStats) {
    let l = [("listener", "api")];
    let one = [()];
    let simple: [(&str, Kind, &str, &AtomicU64); 11] = [
        (
            FRONT_CONNECTIONS,
            Kind::Counter,
            "Connections accepted.",
            &f.connections_accepted,
        ),
        (
            FRONT_CONNECTIONS_ACTIVE,
            Kind::Gauge,
            "Connections open.",
            &f.connections_active,
        ),
        (FRONT_REQUESTS, Kind::Counter, "Requests read.", &f.requests),
        (
            FRONT_REQUESTS_IN_FLIGHT,
            Kind::Gauge,
            "Requests being handled or answered.",
            &f.requests_in_flight,
        ),
        (
            FRONT_STREAMS_CANCELLED,
            Kind::Counter,
            "Streamed responses cut short by the client or a failed write.",
            &f.streams_cancelled,
        ),
        (
            FRONT_IDLE_TIMEOUTS,
            Kind::Counter,
            "Keep-alive connections closed after idle_timeout_ms.",
            &f.idle_timeouts,
        ),
        (
            FRONT_CONNECTIONS_REFUSED,
            Kind::Counter,
            "Connections answered 503 at connections_max.",
            &f.connections_refused,
        ),
        (
            FRONT_ACCEPT_FD_EXHAUSTED,
            Kind::Counter,
            "accept() failures for lack of file descriptors.",
            &f.accept_fd_exhausted,
        ),
        (
            FRONT_BODY_BUFFER_BYTES,
            Kind::Gauge,
            "Request body bytes buffered now.",
            &f.body_buffer_bytes,
        ),
        (
            FRONT_BODY_BUFFER_REFUSALS,
            Kind::Counter,
            "Request bodies refused 503 at body_buffer_bytes_max.",
            &f.body_buffer_refusals,
        ),
        (
            FRONT_ANSWERED_BEFORE_BODY,
            Kind::Counter,
            "Requests answered from the head alone (refused before the body was read).",
            &f.requests_answered_before_body,
        ),
    ];
    for (name, kind, help, v) in simple {
        w.family(name, kind, help, &one, |w, _| w.sample(name, &l, load(v)));
    }
    w.family(
        FRONT_ERRORS,
        Kind::Counter,
        "Protocol faults answered by the front, by kind.",
        &one,
        |w, _| {
            for (kind, v) in [
                ("bad_request", &f.bad_requests),
                ("headers_too_large", &f.headers_too_large),
                ("body_too_large", &f.bodies_too_large),
                ("timeout", &f.timeouts),
                ("handler_panic", &f.handler_panics),
            ] {
                w.sample(FRONT_ERRORS, &[l[0], ("kind", kind)], load(v));
            }
        },
    );
}

fn objpools(w: &mut Writer, snaps: &[ObjPoolSnapshot]) {
    type Get = fn(&ObjPoolSnapshot) -> u64;
    let counters: [(&str, &str, Get); 5] = [
        (OBJPOOL_GETS, "Objects taken from the pool.", |s| s.gets),
        (OBJPOOL_HITS, "Takes served by a pooled object.", |s| s.hits),
        (
            OBJPOOL_MISSES,
            "Takes that had to make a new object.",
            |s| s.misses,
        ),
        (OBJPOOL_RETURNS, "Objects returned to the pool.", |s| {
            s.returns
        }),
        (
            OBJPOOL_DISCARDS,
            "Objects dropped instead of returned (pool full or too large).",
            |s| s.discards,
        ),
    ];
    for (name, help, get) in counters {
        w.family(name, Kind::Counter, help, snaps, |w, s| {
            w.sample(name, &[("pool", s.name)], get(s));
        });
    }
    w.family(
        OBJPOOL_HIT_RATIO,
        Kind::Gauge,
        "Hits over gets since start (1 before any get).",
        snaps,
        |w, s| {
            w.sample(OBJPOOL_HIT_RATIO, &[("pool", s.name)], s.hit_ratio);
        },
    );
    w.family(
        OBJPOOL_CAPACITY,
        Kind::Gauge,
        "Most objects the pool holds.",
        snaps,
        |w, s| {
            w.sample(OBJPOOL_CAPACITY, &[("pool", s.name)], s.capacity);
        },
    );
    w.family(
        OBJPOOL_AVAILABLE,
        Kind::Gauge,
        "Objects in the pool now.",
        snaps,
        |w, s| {
            w.sample(OBJPOOL_AVAILABLE, &[("pool", s.name)], s.available);
        },
    );
}

fn service(w: &mut Writer, s: &Scrape<'_>) {
    let one = [()];
    let st = s.service;
    w.family(
        BUILD_INFO,
        Kind::Gauge,
        "Always 1; the version is a label.",
        &one,
        |w, _| {
            w.sample(BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))], 1);
        },
    );
    let gauges: [(&str, &str, u64); 4] = [
        (
            DRAINING,
            "1 once shutdown has begun.",
            u64::from(s.draining),
        ),
        (
            CONFIG_GENERATION,
            "Config generation: 1 at start, +1 per applied reload.",
            s.generation,
        ),
        (
            CONFIG_LAST_RELOAD_OK,
            "1 when the last reload applied (or none was tried).",
            u64::from(st.last_reload_ok.load(Ordering::Relaxed)),
        ),
        (
            POOLS_DRAINING,
            "Pools swapped out by a reload and still finishing their requests.",
            load(&st.pools_draining),
        ),
    ];
    for (name, help, v) in gauges {
        w.family(name, Kind::Gauge, help, &one, |w, _| w.sample(name, &[], v));
    }
    w.family(
        CONFIG_LAST_RELOAD_OK_TIME,
        Kind::Gauge,
        "Unix time of the last applied reload (of the start before any).",
        &one,
        |w, _| {
            w.sample(
                CONFIG_LAST_RELOAD_OK_TIME,
                &[],
                load(&st.last_reload_ok_unix_s),
            )
        },
    );
    w.family(
        CONFIG_RELOADS,
        Kind::Counter,
        "Config reloads (SIGHUP) by result.",
        &one,
        |w, _| {
            w.sample(
                CONFIG_RELOADS,
                &[("result", "success")],
                load(&st.reloads_ok),
            );
            w.sample(
                CONFIG_RELOADS,
                &[("result", "failure")],
                load(&st.reloads_failed),
            );
        },
    );
    w.family(
        WATCHDOG_FAILURES,
        Kind::Counter,
        "Watchdog checks that failed (each withheld one WATCHDOG=1 ping).",
        &one,
        |w, _| w.sample(WATCHDOG_FAILURES, &[], load(&st.watchdog_failures)),
    );
    w.family(
        GENERATIONS_ABANDONED,
        Kind::Counter,
        "Draining pool generations abandoned because a reload would have left too many draining.",
        &one,
        |w, _| w.sample(GENERATIONS_ABANDONED, &[], load(&st.generations_abandoned)),
    );
    w.family(
        LOG_LINES_DROPPED,
        Kind::Counter,
        "Log lines dropped because stderr (the journal) was not read fast enough.",
        &one,
        |w, _| w.sample(LOG_LINES_DROPPED, &[], crate::log::dropped_lines()),
    );
}

/// What `/proc/self` says about this process.
#[derive(Debug, Default, PartialEq)]
struct ProcessStat {
    cpu_seconds: f64,
    threads: u64,
    vsize_bytes: u64,
    rss_bytes: u64,
}

/// Parse `/proc/self/stat`: fields after the `(comm)` (which may hold spaces or parentheses).
fn parse_proc_stat(text: &str, ticks_per_s: f64, page_bytes: u64) -> Option<ProcessStat> {
    let after = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // f[0] is field 3 (state): field n is f[n - 3].
    let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(ProcessStat {
        cpu_seconds: (num(14)? + num(15)?) as f64 / ticks_per_s,
        threads: num(20)?,
        vsize_bytes: num(23)?,
        rss_bytes: num(24)? * page_bytes,
    })
}

fn process(w: &mut Writer, started_unix_s: f64) {
    let one = [()];
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let stat = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| parse_proc_stat(&t, ticks.max(1) as f64, page.max(1) as u64));
    if let Some(st) = stat {
        w.family(
            PROCESS_CPU,
            Kind::Counter,
            "User and system CPU time spent, in seconds.",
            &one,
            |w, _| {
                w.sample(PROCESS_CPU, &[], st.cpu_seconds);
            },
        );
        let gauges: [(&str, &str, u64); 3] = [
            (PROCESS_RSS, "Resident memory size in bytes.", st.rss_bytes),
            (
                PROCESS_VSIZE,
                "Virtual memory size in bytes.",
                st.vsize_bytes,
            ),
            (PROCESS_THREADS, "OS threads of the process.", st.threads),
        ];
        for (name, help, v) in gauges {
            w.family(name, Kind::Gauge, help, &one, |w, _| w.sample(name, &[], v));
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let open = dir.count() as u64;
        w.family(
            PROCESS_OPEN_FDS,
            Kind::Gauge,
            "Open file descriptors.",
            &one,
            |w, _| {
                w.sample(PROCESS_OPEN_FDS, &[], open);
            },
        );
    }
    // SAFETY: getrlimit writes into a valid, zeroed rlimit.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        w.family(
            PROCESS_MAX_FDS,
            Kind::Gauge,
            "Most open file descriptors allowed.",
            &one,
            |w, _| {
                w.sample(PROCESS_MAX_FDS, &[], lim.rlim_cur);
            },
        );
    }
    w.family(
        PROCESS_START_TIME,
        Kind::Gauge,
        "Start time of the process, Unix seconds.",
        &one,
        |w, _| {
            w.sample(PROCESS_START_TIME, &[], started_unix_s);
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values_us: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).unwrap();
        for &v in values_us {
            h.record(v).unwrap();
        }
        h
    }

    #[test]
    fn histogram_buckets_are_cumulative_seconds() {
        let h = hist(&[50, 100, 101, 2_000, 1_000_000, 400_000_000]);
        let mut w = Writer { out: String::new() };
        w.histogram("x_seconds", ("pool", "p"), &h);
        let out = w.out;
        assert!(
            out.contains("x_seconds_bucket{pool=\"p\",le=\"0.0001\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{pool=\"p\",le=\"0.00025\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{pool=\"p\",le=\"0.0025\"} 4\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{pool=\"p\",le=\"1\"} 5\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{pool=\"p\",le=\"300\"} 5\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{pool=\"p\",le=\"+Inf\"} 6\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_count{pool=\"p\"} 6\n"), "{out}");
        let sum: f64 = out
            .lines()
            .find(|l| l.starts_with("x_seconds_sum"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap();
        assert!((sum - 401.002251).abs() < 401.0 * 0.001, "{sum}");
    }

    #[test]
    fn labels_are_escaped() {
        let mut w = Writer { out: String::new() };
        w.sample("m", &[("a", "x\"y\\z\nw")], 1);
        assert_eq!(w.out, "m{a=\"x\\\"y\\\\z\\nw\"} 1\n");
    }

    #[test]
    fn bucket_bounds_print_as_seconds() {
        assert_eq!(seconds(100), "0.0001");
        assert_eq!(seconds(250), "0.00025");
        assert_eq!(seconds(1_000_000), "1");
        assert_eq!(seconds(2_500_000), "2.5");
        assert!(LATENCY_BUCKETS_US.windows(2).all(|b| b[0] < b[1]));
    }

    #[test]
    fn proc_stat_parses_past_odd_command_names() {
        let text = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    17 0 12345 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0";
        let st = parse_proc_stat(text, 100.0, 4096).unwrap();
        assert_eq!(
            st,
            ProcessStat {
                cpu_seconds: 3.0,
                threads: 17,
                vsize_bytes: 104_857_600,
                rss_bytes: 2560 * 4096,
            }
        );
        assert_eq!(parse_proc_stat("garbage", 100.0, 4096), None);
    }
}

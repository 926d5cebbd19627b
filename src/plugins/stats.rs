//! Time spent in each plugin's hooks, per pool: lock-free log-linear histograms (hooks run on every
//! scheduler thread at once, so no lock), kept for the life of the process across reloads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// Sub-buckets per power of two: values are kept to within 1/4 (25 %) of their size.
const SUB_BUCKETS_LOG2: u32 = 2;
const SUB_BUCKETS: usize = 1 << SUB_BUCKETS_LOG2;
/// Buckets cover 1 ns to 2^40 ns (18 minutes); longer times land in the last one.
const MAGNITUDES: usize = 40;
const BUCKETS: usize = MAGNITUDES * SUB_BUCKETS;

/// A histogram of durations in nanoseconds, written with relaxed atomic adds.
pub struct AtomicHistogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        AtomicHistogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }
}

/// The bucket of `ns`: its power of two, then which quarter of it.
fn bucket_of(ns: u64) -> usize {
    let ns = ns.max(1);
    let magnitude = 63 - ns.leading_zeros();
    let sub = if magnitude >= SUB_BUCKETS_LOG2 {
        (ns >> (magnitude - SUB_BUCKETS_LOG2)) as usize & (SUB_BUCKETS - 1)
    } else {
        (ns as usize) & (SUB_BUCKETS - 1)
    };
    (magnitude as usize * SUB_BUCKETS + sub).min(BUCKETS - 1)
}

/// The largest value of bucket `i` (what quantiles report: an upper bound).
fn bucket_top(i: usize) -> u64 {
    let magnitude = (i / SUB_BUCKETS) as u32;
    let sub = (i % SUB_BUCKETS) as u64;
    if magnitude < SUB_BUCKETS_LOG2 {
        return (1u64 << magnitude).max(sub);
    }
    let step = 1u64 << (magnitude - SUB_BUCKETS_LOG2);
    (SUB_BUCKETS as u64 + sub) * step + step - 1
}

/// What a histogram holds, read at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub count: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
}

impl AtomicHistogram {
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let max_ns = self.max_ns.load(Ordering::Relaxed);
        let quantile = |q: f64| -> u64 {
            if total == 0 {
                return 0;
            }
            let rank = ((q * total as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return bucket_top(i).min(max_ns);
                }
            }
            max_ns
        };
        HistogramSnapshot {
            count: total,
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
            max_ns,
            p50_ns: quantile(0.5),
            p99_ns: quantile(0.99),
        }
    }
}

/// One plugin's hook times in one pool, and how often its pre-hook stopped a request.
#[derive(Default)]
pub struct HookTimes {
    pub pre: AtomicHistogram,
    pub post: AtomicHistogram,
    rejected: AtomicU64,
    answered: AtomicU64,
}

/// [`HookTimes`] read at once.
#[derive(Clone, Copy, Debug, Default)]
pub struct HookSnapshot {
    pub pre: HistogramSnapshot,
    pub post: HistogramSnapshot,
    pub rejected: u64,
    pub answered: u64,
}

impl HookTimes {
    pub fn count_rejection(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_answer(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HookSnapshot {
        HookSnapshot {
            pre: self.pre.snapshot(),
            post: self.post.snapshot(),
            rejected: self.rejected.load(Ordering::Relaxed),
            answered: self.answered.load(Ordering::Relaxed),
        }
    }
}

/// Every `(pool, plugin)`'s [`HookTimes`], for the life of the process (a reload keeps them).
/// The lock is taken when a generation is built and when stats are read, never per request.
#[derive(Default)]
pub struct PluginStats {
    times: Mutex<BTreeMap<(String, &'static str), Arc<HookTimes>>>,
}

impl PluginStats {
    /// The times of `plugin` in `pool`, made on first use.
    pub fn times(&self, pool: &str, plugin: &'static str) -> Arc<HookTimes> {
        let mut map = self.times.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry((pool.to_string(), plugin)).or_default())
    }

    /// `(pool, plugin, snapshot)` for every pair seen, sorted.
    pub fn snapshot(&self) -> Vec<(String, &'static str, HookSnapshot)> {
        let map = self.times.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|((pool, plugin), t)| (pool.clone(), *plugin, t.snapshot()))
            .collect()
    }

    /// `/stats` of one pool: `{plugin: {pre: {...}, post: {...}, rejected, answered}}`, in
    /// microseconds.
    pub fn pool_json(&self, pool: &str) -> Value {
        let mut out = serde_json::Map::new();
        for (p, plugin, s) in self.snapshot() {
            if p == pool {
                out.insert(
                    plugin.to_string(),
                    json!({
                        "pre_us": histogram_json(&s.pre),
                        "post_us": histogram_json(&s.post),
                        "rejected": s.rejected,
                        "answered": s.answered,
                    }),
                );
            }
        }
        Value::Object(out)
    }
}

fn histogram_json(h: &HistogramSnapshot) -> Value {
    let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
    let mean = h.sum_ns.checked_div(h.count).map_or(0.0, us);
    json!({
        "count": h.count,
        "p50": us(h.p50_ns),
        "p99": us(h.p99_ns),
        "max": us(h.max_ns),
        "mean": mean,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_values() {
        for ns in [
            1u64,
            2,
            3,
            4,
            5,
            7,
            8,
            100,
            1000,
            12_345,
            1 << 30,
            u64::MAX / 2,
        ] {
            let top = bucket_top(bucket_of(ns));
            assert!(top >= ns || bucket_of(ns) == BUCKETS - 1, "{ns} -> {top}");
            assert!(top <= ns + ns / 4 + 1 || ns < 8, "{ns} -> {top}");
        }
    }

    #[test]
    fn quantiles_within_a_quarter() {
        let h = AtomicHistogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 1000);
        assert!((500_000..=625_000).contains(&s.p50_ns), "{}", s.p50_ns);
        assert!((990_000..=1_000_000).contains(&s.p99_ns), "{}", s.p99_ns);
        assert_eq!(s.max_ns, 1_000_000);
    }
}

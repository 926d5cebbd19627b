//! Latency histograms and what is reported from them: HdrHistogram in microseconds with 4
//! significant digits (exact to 1 us up to 32 ms, so tens of microseconds of added latency on a
//! 10 ms upstream are resolved), percentile summaries, added latency over a baseline, and the
//! human table cells.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Highest latency recorded, microseconds (one hour); longer values are clamped to it.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant digits of every histogram.
pub const SIGFIG: u8 = 4;

/// A latency histogram in microseconds.
pub type Hist = Histogram<u64>;

pub fn new_hist() -> Hist {
    // Bounds and precision are constants known to be valid.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGFIG).unwrap_or_else(|_| unreachable!())
}

/// Record a duration given in nanoseconds, rounded to the nearest microsecond.
pub fn record_ns(h: &mut Hist, ns: u64) {
    h.saturating_record(ns.saturating_add(500) / 1000);
}

/// The percentiles reported everywhere, microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Summary {
    pub fn of(h: &Hist) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "count": self.count,
            "mean_us": (self.mean * 10.0).round() / 10.0,
            "p50_us": self.p50,
            "p90_us": self.p90,
            "p99_us": self.p99,
            "p999_us": self.p999,
            "max_us": self.max,
        })
    }

    /// `p50 p90 p99 p99.9 max` as right-aligned table cells.
    pub fn cells(&self) -> String {
        if self.count == 0 {
            return format!("{:>10}{:>10}{:>10}{:>10}{:>10}", "-", "-", "-", "-", "-");
        }
        format!(
            "{:>10}{:>10}{:>10}{:>10}{:>10}",
            self.p50, self.p90, self.p99, self.p999, self.max
        )
    }
}

/// A target's latency minus the baseline's at the same percentiles, microseconds (may be
/// negative: at these resolutions noise can make a proxy look faster than no proxy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Added {
    pub p50: i64,
    pub p90: i64,
    pub p99: i64,
    pub p999: i64,
}

impl Added {
    pub fn over(target: &Summary, baseline: &Summary) -> Added {
        let d = |a: u64, b: u64| a as i64 - b as i64;
        Added {
            p50: d(target.p50, baseline.p50),
            p90: d(target.p90, baseline.p90),
            p99: d(target.p99, baseline.p99),
            p999: d(target.p999, baseline.p999),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "p50_us": self.p50, "p90_us": self.p90, "p99_us": self.p99, "p999_us": self.p999,
        })
    }
}

/// Format a rate with one decimal below 100/s and none above.
pub fn rate_text(r: f64) -> String {
    if r < 100.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microsecond_resolution_at_ten_milliseconds() {
        let mut h = new_hist();
        for us in 10_000..=10_999u64 {
            record_ns(&mut h, us * 1000 + 400); // rounds down
        }
        let s = Summary::of(&h);
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50, 10_499);
        assert_eq!(s.p99, 10_989);
        assert_eq!(s.p999, 10_998);
        assert_eq!(s.max, 10_999);
        assert!((s.mean - 10_499.5).abs() < 1.0);
    }

    #[test]
    fn added_latency_is_the_signed_percentile_difference() {
        let base = Summary {
            count: 1,
            mean: 0.0,
            p50: 10_050,
            p90: 10_080,
            p99: 10_200,
            p999: 10_400,
            max: 11_000,
        };
        let target = Summary {
            p50: 10_071,
            p90: 10_070,
            p99: 10_290,
            p999: 10_600,
            ..base
        };
        let a = Added::over(&target, &base);
        assert_eq!((a.p50, a.p90, a.p99, a.p999), (21, -10, 90, 200));
    }

    #[test]
    fn clamps_and_empty() {
        let mut h = new_hist();
        record_ns(&mut h, u64::MAX);
        record_ns(&mut h, 0);
        assert_eq!(h.len(), 2);
        assert!(Summary::of(&h).max >= LATENCY_US_MAX);
        assert_eq!(Summary::of(&new_hist()), Summary::default());
        assert_eq!(rate_text(12.34), "12.3");
        assert_eq!(rate_text(5000.4), "5000");
    }
}

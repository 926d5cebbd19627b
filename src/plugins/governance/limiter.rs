//! Lock-free counters for one key or team: request and token rate limits as GCRA (one `AtomicU64`
//! each, the theoretical arrival time, updated by compare-and-swap), and spend per calendar period
//! (an atomic sum and the start of the period it belongs to).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::store::Period;

/// The window of a per-minute limit, nanoseconds.
pub const WINDOW_NS: u64 = 60_000_000_000;

/// Nanoseconds on the process's monotonic clock (1 at its first use, never 0).
pub fn clock_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    (start.elapsed().as_nanos() as u64).saturating_add(1)
}

/// A limit's state after a request was admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// Units left in the window now.
    pub remaining: u64,
    /// Nanoseconds until the window is whole again.
    pub reset_ns: u64,
}

/// A refusal: nanoseconds until the request would be admitted, and the window's reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub wait_ns: u64,
    pub reset_ns: u64,
}

/// The generic cell rate algorithm over a one-minute window: `per_minute` units a minute, a
/// burst of a whole minute's worth. Admitted at most `per_minute * t / 60 s + per_minute` units
/// in any `t`, with no lock and no background reset.
#[derive(Default)]
pub struct Gcra {
    /// The theoretical arrival time: when the units taken so far will have drained.
    tat_ns: AtomicU64,
}

fn interval_ns(per_minute: u64) -> u64 {
    (WINDOW_NS / per_minute.max(1)).max(1)
}

impl Gcra {
    /// Take `cost` units at `now_ns` if the window has room for them (a cost larger than the
    /// window is admitted into an empty one, and the debt drains before the next).
    pub fn take(&self, now_ns: u64, per_minute: u64, cost: u64) -> Result<Admitted, Refused> {
        let interval = interval_ns(per_minute);
        let cost_ns = cost.saturating_mul(interval);
        let mut tat = self.tat_ns.load(Ordering::Acquire);
        loop {
            let base = tat.max(now_ns);
            let level = base - now_ns;
            let needed = cost_ns.min(WINDOW_NS);
            if level + needed > WINDOW_NS {
                return Err(Refused {
                    wait_ns: level + needed - WINDOW_NS,
                    reset_ns: level,
                });
            }
            let new = base.saturating_add(cost_ns);
            match self
                .tat_ns
                .compare_exchange_weak(tat, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let level = new - now_ns;
                    return Ok(Admitted {
                        remaining: WINDOW_NS.saturating_sub(level) / interval,
                        reset_ns: level,
                    });
                }
                Err(seen) => tat = seen,
            }
        }
    }

    /// Add `delta` units (positive: more used than charged; negative: a refund, never below now).
    pub fn adjust(&self, now_ns: u64, per_minute: u64, delta: i64) {
        if delta == 0 {
            return;
        }
        let step = delta.unsigned_abs().saturating_mul(interval_ns(per_minute));
        let mut tat = self.tat_ns.load(Ordering::Acquire);
        loop {
            let new = if delta > 0 {
                tat.max(now_ns).saturating_add(step)
            } else if tat <= now_ns {
                return;
            } else {
                tat.saturating_sub(step).max(now_ns)
            };
            match self
                .tat_ns
                .compare_exchange_weak(tat, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(seen) => tat = seen,
            }
        }
    }

    /// The window's state at `now_ns` without taking anything.
    pub fn peek(&self, now_ns: u64, per_minute: u64) -> Admitted {
        let level = self.tat_ns.load(Ordering::Acquire).saturating_sub(now_ns);
        Admitted {
            remaining: WINDOW_NS.saturating_sub(level) / interval_ns(per_minute),
            reset_ns: level,
        }
    }
}

/// A sum over the current calendar period: what was spent since the period began.
#[derive(Default)]
pub struct PeriodSum {
    /// Unix seconds at which the period of `sum` began.
    start_s: AtomicU64,
    sum: AtomicU64,
}

impl PeriodSum {
    /// The sum in the period holding `now_s`.
    pub fn get(&self, now_s: u64, period: Period) -> u64 {
        if self.start_s.load(Ordering::Acquire) == period.start_s(now_s) {
            self.sum.load(Ordering::Acquire)
        } else {
            0
        }
    }

    /// Add `amount` in the period holding `now_s`; the first add of a new period starts it from
    /// zero. (An add racing with that start, at the instant the period turns, may land in either
    /// period.)
    pub fn add(&self, now_s: u64, period: Period, amount: u64) {
        let start = period.start_s(now_s);
        let seen = self.start_s.load(Ordering::Acquire);
        if seen < start
            && self
                .start_s
                .compare_exchange(seen, start, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.sum.store(0, Ordering::Release);
        }
        if self.start_s.load(Ordering::Acquire) == start {
            self.sum.fetch_add(amount, Ordering::AcqRel);
        }
    }

    /// Set the sum of the period starting at `start_s` (rebuilt from the ledger at start).
    pub fn set(&self, start_s: u64, sum: u64) {
        self.start_s.store(start_s, Ordering::Release);
        self.sum.store(sum, Ordering::Release);
    }
}

/// A key's or a team's counters: rate limits, and spend (nano-dollars and tokens) per period
/// kind, so that a budget whose period is changed reads the right sum.
#[derive(Default)]
pub struct Counters {
    pub requests: Gcra,
    pub tokens: Gcra,
    /// Nano-dollars per day, week, month.
    pub spend_nusd: [PeriodSum; 3],
    /// Tokens (input + output) per day, week, month.
    pub spend_tokens: [PeriodSum; 3],
}

/// Index of a period in [`Counters`]' arrays.
pub fn slot(period: Period) -> usize {
    match period {
        Period::Day => 0,
        Period::Week => 1,
        Period::Month => 2,
    }
}

/// Every period, in slot order.
pub const PERIODS: [Period; 3] = [Period::Day, Period::Week, Period::Month];

impl Counters {
    /// Record what a request cost, in every period.
    pub fn spend(&self, now_s: u64, nusd: u64, tokens: u64) {
        for p in PERIODS {
            if nusd > 0 {
                self.spend_nusd[slot(p)].add(now_s, p, nusd);
            }
            if tokens > 0 {
                self.spend_tokens[slot(p)].add(now_s, p, tokens);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_minute_of_burst_then_the_rate() {
        let g = Gcra::default();
        let t0 = 100 * S;
        for i in 0..60 {
            let a = g.take(t0, 60, 1).unwrap();
            assert_eq!(a.remaining, 59 - i);
        }
        let r = g.take(t0, 60, 1).unwrap_err();
        assert_eq!(r.wait_ns, S);
        assert!(g.take(t0 + S - 1, 60, 1).is_err());
        assert!(g.take(t0 + S, 60, 1).is_ok());
        assert!(g.take(t0 + S, 60, 1).is_err());
    }

    #[test]
    fn adjustments_charge_and_refund() {
        let g = Gcra::default();
        let t0 = 100 * S;
        g.take(t0, 600, 300).unwrap(); // half the window
        g.adjust(t0, 600, 300); // the answer used 300 more
        assert!(g.take(t0, 600, 1).is_err());
        g.adjust(t0, 600, -600);
        assert_eq!(g.peek(t0, 600).remaining, 600);
        // A cost over the window is admitted into an empty one; the next waits for the debt.
        g.take(t0, 600, 10_000).unwrap();
        assert!(g.take(t0, 600, 1).is_err());
    }

    #[test]
    fn concurrent_takes_never_overshoot() {
        let g = std::sync::Arc::new(Gcra::default());
        let t0 = 100 * S;
        let admitted: u64 = (0..4)
            .map(|_| {
                let g = std::sync::Arc::clone(&g);
                std::thread::spawn(move || {
                    (0..10_000).filter(|_| g.take(t0, 1000, 1).is_ok()).count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap() as u64)
            .sum();
        assert_eq!(admitted, 1000);
    }

    #[test]
    fn period_sums_restart_with_the_period() {
        let s = PeriodSum::default();
        let day1 = 20_000 * 86_400 + 10;
        s.add(day1, Period::Day, 5);
        s.add(day1 + 100, Period::Day, 7);
        assert_eq!(s.get(day1, Period::Day), 12);
        assert_eq!(s.get(day1 + 86_400, Period::Day), 0);
        s.add(day1 + 86_400, Period::Day, 1);
        assert_eq!(s.get(day1 + 86_400, Period::Day), 1);
    }
}

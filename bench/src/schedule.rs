//! The open-loop schedule: request `g` of a run at rate R is intended for `start + g / R`, whatever
//! happened to earlier requests. Latency is measured from that intended time, so a stalled target
//! is charged for every request it delayed (no coordinated omission). With several load threads,
//! thread `k` of `T` owns the requests `g = j*T + k`.
//!
//! The arithmetic is exact integer math on nanoseconds: the rate is kept in requests per 1000 s
//! (millihertz), so rates like 3333.3/s do not drift over long runs.

/// Nanoseconds per second, times 1000 for a rate in requests per 1000 s.
const NS_PER_KILOSECOND: u128 = 1_000_000_000_000;
/// Lowest and highest rates accepted, requests per second.
pub const RATE_MIN: f64 = 0.001;
pub const RATE_MAX: f64 = 100_000_000.0;

/// One load thread's share of a constant-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Requests per 1000 seconds, all threads together.
    rate_mhz: u128,
    threads: u64,
    thread: u64,
    /// Requests in the whole run, all threads together.
    total: u64,
    start_ns: u64,
}

impl Schedule {
    /// Thread `thread` of `threads`, `total` requests at `rate` per second from `start_ns`.
    pub fn new(rate: f64, total: u64, threads: u64, thread: u64, start_ns: u64) -> Schedule {
        assert!((RATE_MIN..=RATE_MAX).contains(&rate), "rate out of range");
        assert!(threads > 0 && thread < threads);
        Schedule {
            rate_mhz: (rate * 1000.0).round() as u128,
            threads,
            thread,
            total,
            start_ns,
        }
    }

    /// The global index of this thread's `j`-th request.
    pub fn global_index(&self, j: u64) -> u64 {
        j * self.threads + self.thread
    }

    /// How many requests this thread sends.
    pub fn len(&self) -> u64 {
        if self.total <= self.thread {
            0
        } else {
            (self.total - self.thread).div_ceil(self.threads)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When this thread's `j`-th request is due, in ns on the run's clock.
    pub fn intended_ns(&self, j: u64) -> u64 {
        let g = u128::from(self.global_index(j));
        self.start_ns + (g * NS_PER_KILOSECOND / self.rate_mhz) as u64
    }

    /// How many of this thread's requests are due at `now_ns` (intended at or before it).
    pub fn due(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns {
            return 0;
        }
        // intended(g) <= now  <=>  g * 1e12 < (elapsed + 1) * rate_mhz
        let elapsed = u128::from(now_ns - self.start_ns);
        let due_global = ((elapsed + 1) * self.rate_mhz).div_ceil(NS_PER_KILOSECOND);
        let due_global = u64::try_from(due_global).unwrap_or(u64::MAX);
        let mine = if due_global <= self.thread {
            0
        } else {
            (due_global - self.thread).div_ceil(self.threads)
        };
        mine.min(self.len())
    }
}

/// Requests in a run of `seconds` at `rate` per second (at least one).
pub fn request_count(rate: f64, seconds: f64) -> u64 {
    ((rate * seconds).round() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intended_times_are_evenly_spaced() {
        let s = Schedule::new(1000.0, 10, 1, 0, 5_000);
        assert_eq!(s.len(), 10);
        assert_eq!(s.intended_ns(0), 5_000);
        assert_eq!(s.intended_ns(1), 1_005_000);
        assert_eq!(s.intended_ns(9), 9_005_000);
        // A fractional period does not drift: 3 per second, request 3000 at exactly 1000 s.
        let s = Schedule::new(3.0, 10_000, 1, 0, 0);
        assert_eq!(s.intended_ns(3000), 1_000_000_000_000);
        assert_eq!(s.intended_ns(1), 333_333_333);
    }

    #[test]
    fn threads_interleave_and_cover_every_request_once() {
        let total = 103;
        let mut seen = vec![0u32; total as usize];
        for k in 0..4 {
            let s = Schedule::new(50_000.0, total, 4, k, 0);
            for j in 0..s.len() {
                seen[s.global_index(j) as usize] += 1;
                assert_eq!(s.intended_ns(j), s.global_index(j) * 20_000);
            }
        }
        assert!(seen.iter().all(|&n| n == 1));
        assert!(Schedule::new(1.0, 2, 4, 3, 0).is_empty());
    }

    #[test]
    fn due_matches_intended_times_exactly() {
        for (rate, threads) in [(1000.0, 1), (3333.3, 3), (7.0, 2), (50_000.0, 1)] {
            for k in 0..threads {
                let s = Schedule::new(rate, 500, threads, k, 1_000);
                let mut probes: Vec<u64> = (0..s.len())
                    .flat_map(|j| {
                        let t = s.intended_ns(j);
                        [t - 1, t, t + 1]
                    })
                    .collect();
                probes.extend([0, 999, u64::MAX / 4]);
                for now in probes {
                    let brute = (0..s.len()).filter(|&j| s.intended_ns(j) <= now).count() as u64;
                    assert_eq!(s.due(now), brute, "rate {rate} thread {k} now {now}");
                }
            }
        }
    }

    #[test]
    fn counts() {
        assert_eq!(request_count(5000.0, 60.0), 300_000);
        assert_eq!(request_count(0.1, 1.0), 1);
    }
}

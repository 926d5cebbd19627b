//! Random draws for the mock: a shared, lock-free, deterministic generator (SplitMix64 over an
//! atomic counter: each draw is one `fetch_add`, no dependency, reproducible for a given seed and
//! request order) and the latency distributions `fixed`, `uniform` and `lognormal`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::flags::parse_duration;

/// SplitMix64's increment (the golden ratio in 64 bits).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
/// Longest latency any distribution yields, so a heavy tail cannot park a request for hours.
pub const LATENCY_MAX: Duration = Duration::from_secs(600);
/// Largest `sigma` accepted for a log-normal (e^(3*8) is already absurd).
const SIGMA_MAX: f64 = 8.0;

/// SplitMix64's output function: a good 64-bit mix of a counter.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform draw in [0, 1) from 64 random bits (53 bits of mantissa).
pub fn unit_f64(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A generator shared by all connection coroutines.
pub struct SharedRng {
    state: AtomicU64,
}

impl SharedRng {
    pub fn new(seed: u64) -> Self {
        SharedRng {
            state: AtomicU64::new(seed),
        }
    }

    pub fn next_u64(&self) -> u64 {
        mix64(
            self.state
                .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
                .wrapping_add(GOLDEN_GAMMA),
        )
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&self) -> f64 {
        unit_f64(self.next_u64())
    }
}

/// How long the mock waits before answering.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Latency {
    Fixed(Duration),
    /// Uniform between the bounds (inclusive of `lo`).
    Uniform {
        lo: Duration,
        hi: Duration,
    },
    /// exp(N(ln(median), sigma)): the usual shape of service latency, with a long right tail.
    LogNormal {
        median: Duration,
        sigma: f64,
    },
}

impl Latency {
    /// `fixed:10ms`, `uniform:5ms..15ms`, `lognormal:median=10ms,sigma=0.5`.
    pub fn parse(spec: &str) -> Result<Latency, String> {
        let (kind, args) = spec
            .split_once(':')
            .ok_or_else(|| format!("latency {spec:?}: expected KIND:ARGS"))?;
        let latency = match kind {
            "fixed" => Latency::Fixed(parse_duration(args)?),
            "uniform" => {
                let (lo, hi) = args
                    .split_once("..")
                    .ok_or_else(|| format!("latency {spec:?}: expected uniform:LO..HI"))?;
                let (lo, hi) = (parse_duration(lo)?, parse_duration(hi)?);
                if lo > hi {
                    return Err(format!("latency {spec:?}: LO is above HI"));
                }
                Latency::Uniform { lo, hi }
            }
            "lognormal" => parse_lognormal(spec, args)?,
            _ => {
                return Err(format!(
                    "latency {spec:?}: unknown kind (fixed, uniform, lognormal)"
                ))
            }
        };
        Ok(latency)
    }

    /// One draw; `bits1`/`bits2` are independent random words (only used by random kinds).
    pub fn sample(&self, bits1: u64, bits2: u64) -> Duration {
        let d = match *self {
            Latency::Fixed(d) => d,
            Latency::Uniform { lo, hi } => lo + (hi - lo).mul_f64(unit_f64(bits1)),
            Latency::LogNormal { median, sigma } => {
                let z = standard_normal(bits1, bits2);
                let secs = median.as_secs_f64() * (sigma * z).exp();
                Duration::try_from_secs_f64(secs).unwrap_or(LATENCY_MAX)
            }
        };
        d.min(LATENCY_MAX)
    }

    /// Whether every draw is zero (the mock then skips the sleep entirely).
    pub fn is_zero(&self) -> bool {
        matches!(*self, Latency::Fixed(d) if d.is_zero())
    }
}

fn parse_lognormal(spec: &str, args: &str) -> Result<Latency, String> {
    let (mut median, mut sigma) = (None, None);
    for part in args.split(',') {
        match part.split_once('=') {
            Some(("median", v)) => median = Some(parse_duration(v)?),
            Some(("sigma", v)) => {
                sigma = Some(
                    v.parse::<f64>()
                        .map_err(|_| format!("latency {spec:?}: bad sigma"))?,
                )
            }
            _ => return Err(format!("latency {spec:?}: expected median=D,sigma=S")),
        }
    }
    match (median, sigma) {
        (Some(median), Some(sigma)) if (0.0..=SIGMA_MAX).contains(&sigma) => {
            Ok(Latency::LogNormal { median, sigma })
        }
        (Some(_), Some(_)) => Err(format!(
            "latency {spec:?}: sigma must be in 0..={SIGMA_MAX}"
        )),
        _ => Err(format!("latency {spec:?}: needs median= and sigma=")),
    }
}

/// A standard normal draw by Box-Muller from two uniform words.
fn standard_normal(bits1: u64, bits2: u64) -> f64 {
    // 1 - u is in (0, 1], so the logarithm is finite.
    let u1 = 1.0 - unit_f64(bits1);
    let u2 = unit_f64(bits2);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        assert_eq!(
            Latency::parse("fixed:10ms"),
            Ok(Latency::Fixed(Duration::from_millis(10)))
        );
        assert_eq!(
            Latency::parse("uniform:5ms..15ms"),
            Ok(Latency::Uniform {
                lo: Duration::from_millis(5),
                hi: Duration::from_millis(15)
            })
        );
        assert_eq!(
            Latency::parse("lognormal:median=10ms,sigma=0.5"),
            Ok(Latency::LogNormal {
                median: Duration::from_millis(10),
                sigma: 0.5
            })
        );
        for bad in [
            "10ms",
            "fixed:",
            "uniform:15ms..5ms",
            "uniform:5ms",
            "lognormal:median=10ms",
            "lognormal:median=1ms,sigma=-1",
            "gamma:1ms",
        ] {
            assert!(Latency::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn draws_follow_the_distribution() {
        let rng = SharedRng::new(7);
        let uni = Latency::parse("uniform:5ms..15ms").unwrap();
        let logn = Latency::parse("lognormal:median=10ms,sigma=0.5").unwrap();
        let n = 20_000;
        let mut u: Vec<f64> = Vec::with_capacity(n);
        let mut l: Vec<f64> = Vec::with_capacity(n);
        for _ in 0..n {
            u.push(uni.sample(rng.next_u64(), rng.next_u64()).as_secs_f64());
            l.push(logn.sample(rng.next_u64(), rng.next_u64()).as_secs_f64());
        }
        assert!(u.iter().all(|&x| (0.005..=0.015).contains(&x)));
        let mean_u = u.iter().sum::<f64>() / n as f64;
        assert!((mean_u - 0.010).abs() < 0.0002, "{mean_u}");
        l.sort_by(f64::total_cmp);
        let median = l[n / 2];
        assert!((median - 0.010).abs() < 0.0004, "{median}");
        // P(Z > 1.2816) = 10%: the 90th percentile is median * e^(0.5 * 1.2816).
        let p90 = l[n * 9 / 10];
        assert!(
            (p90 / 0.010 - (0.5f64 * 1.2816).exp()).abs() < 0.05,
            "{p90}"
        );
    }

    #[test]
    fn generator_is_deterministic_and_uniform() {
        let (a, b) = (SharedRng::new(1), SharedRng::new(1));
        assert_eq!(a.next_u64(), b.next_u64());
        let hits = (0..10_000).filter(|_| a.next_f64() < 0.25).count();
        assert!((2300..2700).contains(&hits), "{hits}");
    }
}

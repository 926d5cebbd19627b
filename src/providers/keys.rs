//! A provider's key pool: weighted random choice among the keys allowed for a model, skipping keys
//! cooling down after a 429 (for the upstream's `Retry-After`) and keys disabled after a 401/403
//! (until the config is reloaded). Lock-free: every key's state is a few atomics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::KeyConfig;
use crate::error::{ApiError, ErrorKind};

/// Why no key could be picked.
#[derive(Debug, PartialEq, Eq)]
pub enum NoKey {
    /// No configured key may serve this model.
    NotForModel,
    /// Every key for the model is cooling down; the first is usable again after this long.
    CoolingDown(Duration),
    /// Every key for the model was refused by the upstream (401/403).
    Disabled,
}

impl NoKey {
    /// The client-facing error; it names the reason, never a key.
    pub fn error(&self, provider: &str, model: &str) -> ApiError {
        match self {
            NoKey::NotForModel => ApiError::new(
                ErrorKind::Unavailable,
                "no_key_for_model",
                format!("provider {provider} has no key configured for model {model}"),
            ),
            NoKey::CoolingDown(wait) => ApiError::new(
                ErrorKind::QueueFull,
                "provider_rate_limited",
                format!(
                    "every key of provider {provider} is rate limited by the upstream; retry later"
                ),
            )
            .with_retry_after(wait.as_secs_f64().ceil().max(1.0) as u32),
            NoKey::Disabled => ApiError::new(
                ErrorKind::Unavailable,
                "provider_keys_rejected",
                format!("the upstream of provider {provider} rejected every key for model {model}"),
            ),
        }
    }
}

struct KeyState {
    cfg: KeyConfig,
    /// Milliseconds since the pool's epoch until which the key is skipped; 0 = usable.
    cool_until_ms: AtomicU64,
    disabled: AtomicBool,
    uses: AtomicU64,
    rate_limited: AtomicU64,
    rejected: AtomicU64,
}

pub struct KeyPool {
    keys: Vec<KeyState>,
    epoch: Instant,
}

impl KeyPool {
    pub fn new(keys: &[KeyConfig]) -> Self {
        KeyPool {
            keys: keys
                .iter()
                .map(|k| KeyState {
                    cfg: k.clone(),
                    cool_until_ms: AtomicU64::new(0),
                    disabled: AtomicBool::new(false),
                    uses: AtomicU64::new(0),
                    rate_limited: AtomicU64::new(0),
                    rejected: AtomicU64::new(0),
                })
                .collect(),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The secret of key `index`.
    pub fn secret(&self, index: usize) -> &str {
        self.keys[index].cfg.secret.expose()
    }

    /// Pick a usable key for `model` by weight; `random` is any uniformly random number.
    pub fn pick(&self, model: &str, random: u64) -> Result<usize, NoKey> {
        let now = self.now_ms();
        let for_model =
            |k: &KeyState| k.cfg.models.is_empty() || k.cfg.models.iter().any(|m| m == model);
        let usable = |k: &KeyState| {
            for_model(k)
                && !k.disabled.load(Ordering::Relaxed)
                && k.cool_until_ms.load(Ordering::Relaxed) <= now
        };
        let total: u64 = self
            .keys
            .iter()
            .filter(|k| usable(k))
            .map(|k| u64::from(k.cfg.weight))
            .sum();
        if total == 0 {
            let mut any = false;
            let mut soonest = u64::MAX;
            for k in self.keys.iter().filter(|k| for_model(k)) {
                any = true;
                if !k.disabled.load(Ordering::Relaxed) {
                    soonest = soonest.min(k.cool_until_ms.load(Ordering::Relaxed));
                }
            }
            return Err(match (any, soonest) {
                (false, _) => NoKey::NotForModel,
                (true, u64::MAX) => NoKey::Disabled,
                (true, until) => {
                    NoKey::CoolingDown(Duration::from_millis(until.saturating_sub(now)))
                }
            });
        }
        let mut ticket = random % total;
        for (i, k) in self.keys.iter().enumerate().filter(|(_, k)| usable(k)) {
            let w = u64::from(k.cfg.weight);
            if ticket < w {
                k.uses.fetch_add(1, Ordering::Relaxed);
                return Ok(i);
            }
            ticket -= w;
        }
        Err(NoKey::NotForModel)
    }

    /// Any key that is not disabled (for health probes, whatever the model lists say).
    pub fn pick_any(&self) -> Result<usize, NoKey> {
        self.keys
            .iter()
            .position(|k| !k.disabled.load(Ordering::Relaxed))
            .ok_or(NoKey::Disabled)
    }

    /// The upstream answered 429 with this key: skip it for `wait`.
    pub fn cool_down(&self, index: usize, wait: Duration) {
        let k = &self.keys[index];
        let until = self.now_ms() + wait.as_millis() as u64;
        k.cool_until_ms.fetch_max(until, Ordering::Relaxed);
        k.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// The upstream answered 401/403 with this key: never use it again (until reload).
    pub fn disable(&self, index: usize) {
        let k = &self.keys[index];
        k.disabled.store(true, Ordering::Relaxed);
        k.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Per-key state for `/stats`: position, weight, uses, 429s, 401/403s, state. Never the secret.
    pub fn to_json(&self) -> serde_json::Value {
        let now = self.now_ms();
        self.keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let until = k.cool_until_ms.load(Ordering::Relaxed);
                let state = if k.disabled.load(Ordering::Relaxed) {
                    "disabled"
                } else if until > now {
                    "cooling_down"
                } else {
                    "ok"
                };
                serde_json::json!({
                    "index": i,
                    "weight": k.cfg.weight,
                    "uses": k.uses.load(Ordering::Relaxed),
                    "rate_limited": k.rate_limited.load(Ordering::Relaxed),
                    "rejected": k.rejected.load(Ordering::Relaxed),
                    "state": state,
                    "cooldown_ms_left": until.saturating_sub(now),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn key(v: &str, weight: u32, models: &[&str]) -> KeyConfig {
        KeyConfig {
            secret: Secret::new(v.into()),
            weight,
            models: models.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn rng() -> impl FnMut() -> u64 {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    #[test]
    fn weights_and_model_lists() {
        let pool = KeyPool::new(&[key("a", 3, &[]), key("b", 1, &[]), key("c", 5, &["other"])]);
        let mut r = rng();
        let mut counts = [0u32; 3];
        for _ in 0..4000 {
            counts[pool.pick("m", r()).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0);
        assert!((2700..3300).contains(&counts[0]), "{counts:?}");
        assert_eq!(
            pool.pick("other", 7).map(|i| pool.secret(i).to_string()),
            Ok("c".to_string())
        );
        let only_c = KeyPool::new(&[key("c", 1, &["other"])]);
        assert_eq!(only_c.pick("m", 1), Err(NoKey::NotForModel));
    }

    #[test]
    fn cooling_and_disabled_keys_are_skipped() {
        let pool = KeyPool::new(&[key("a", 1, &[]), key("b", 1, &[])]);
        pool.cool_down(0, Duration::from_secs(60));
        let mut r = rng();
        assert!((0..100).all(|_| pool.pick("m", r()) == Ok(1)));
        pool.disable(1);
        match pool.pick("m", 1) {
            Err(NoKey::CoolingDown(wait)) => assert!(wait > Duration::from_secs(50)),
            other => panic!("{other:?}"),
        }
        let e = NoKey::CoolingDown(Duration::from_millis(1500)).error("p", "m");
        assert_eq!((e.status(), e.retry_after_s), (429, Some(2)));
        let pool = KeyPool::new(&[key("a", 1, &[])]);
        pool.disable(0);
        assert_eq!(pool.pick("m", 1), Err(NoKey::Disabled));
        let json = pool.to_json().to_string();
        assert!(
            json.contains("disabled") && !json.contains("\"a\""),
            "{json}"
        );
    }
}

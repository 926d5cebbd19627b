//! A provider's key pool: weighted random choice among the keys allowed for a model, skipping what
//! the upstream refused. Refusals are scoped to what earned them:
//! - a 429 (rate limit or quota) cools the (key, model) pair, for at most the configured cap;
//! - a 403/404 marks the (key, model) pair denied: other keys are preferred for that model, and
//!   when no other key may serve it a denied key is still tried (the client then gets the
//!   upstream's own answer, not a guess of the gateway's);
//! - only a 401 takes the key out for every model, for `key_disable_ms`; after that the pool's
//!   supervisor re-probes it with the provider's cheap authenticated `GET` ([`KeyPool::due_for_probe`]):
//!   a 401 again disables it for twice as long (up to [`KEY_DISABLE_DOUBLED_MS_MAX`]), anything
//!   else puts it back. Without a probe the key comes back after the expiry, as a trial.
//!
//! Each key holds at most [`MODEL_COOLDOWNS_PER_KEY_MAX`] (key, model) marks. When they are all
//! in use, a new mark replaces the one that matters least (a denial before a cool-down, then the
//! one ending soonest) if the new one matters more, and is dropped (counted) otherwise: a dropped
//! or replaced mark costs at most one more refusal from the upstream, retried on another key,
//! and never takes the key out for other models.
//!
//! `pick` is lock-free: a few relaxed atomic loads per key, plus one pool-wide load that skips the
//! per-model tables while no mark is active anywhere. Writers (the rare refusals) serialize on a
//! per-key mutex that only they and `/stats` take.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::KeyConfig;
pub use crate::config::KEY_DISABLE_DOUBLED_MS_MAX;
use crate::error::{ApiError, ErrorKind};
use crate::log;

/// (key, model) marks one key holds at once.
pub const MODEL_COOLDOWNS_PER_KEY_MAX: usize = 8;
/// Longest model name kept for `/stats`, bytes (the match itself uses the whole name's hash).
const MODEL_NAME_SHOWN_BYTES_MAX: usize = 128;
/// Bits of a mark's packed word that hold its end (ms since the pool's epoch: ~8,900 years).
const UNTIL_BITS: u32 = 48;
const UNTIL_MASK: u64 = (1 << UNTIL_BITS) - 1;

/// Why no key could be picked.
#[derive(Debug, PartialEq, Eq)]
pub enum NoKey {
    /// No configured key may serve this model.
    NotForModel,
    /// Every key for the model is cooling down; the first is usable again after this long.
    CoolingDown(Duration),
    /// Every key for the model was refused by the upstream (401) and is not back yet.
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

/// What the upstream said of a (key, model) pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ModelMark {
    /// 429: rate limited. The pair is skipped until the mark ends.
    RateLimited = 1,
    /// 429 `insufficient_quota`. Skipped like a rate limit.
    QuotaExhausted = 2,
    /// 403. Other keys are preferred for the model until the mark ends.
    Forbidden = 3,
    /// 404. Like 403.
    NotFound = 4,
}

impl ModelMark {
    fn from_bits(b: u64) -> Option<ModelMark> {
        Some(match b {
            1 => ModelMark::RateLimited,
            2 => ModelMark::QuotaExhausted,
            3 => ModelMark::Forbidden,
            4 => ModelMark::NotFound,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ModelMark::RateLimited => "rate_limited",
            ModelMark::QuotaExhausted => "quota_exhausted",
            ModelMark::Forbidden => "forbidden",
            ModelMark::NotFound => "not_found",
        }
    }

    /// A cool-down blocks the pair; a denial only steers away from it.
    fn blocks(self) -> bool {
        matches!(self, ModelMark::RateLimited | ModelMark::QuotaExhausted)
    }
}

/// Why a key is disabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum DisableReason {
    /// A request with the key was answered 401.
    Unauthorized = 1,
    /// The re-probe after an expiry was answered 401.
    ProbeUnauthorized = 2,
}

/// What a re-probe of a disabled key found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// Any status but 401: the key is accepted again.
    Accepted,
    /// 401: disabled again, for twice as long.
    Unauthorized,
    /// No answer (transport failure, timeout): back in service as a trial.
    Inconclusive,
}

/// How the pool treats refused keys (from the provider's config).
#[derive(Clone, Copy, Debug)]
pub struct KeyPolicy {
    /// First disable of a key after a 401; doubled per disable in a row.
    pub disable_for: Duration,
    /// Whether the supervisor re-probes a key after its disable expires (else it comes back
    /// after the expiry on trial).
    pub reprobe: bool,
}

/// One (key, model) mark: the model's keyed hash (0 = empty) and `until | mark << 56`.
struct Slot {
    model_hash: AtomicU64,
    until_mark: AtomicU64,
}

/// Per-key counters, for `/stats` and `/metrics`.
#[derive(Default)]
struct KeyCounters {
    uses: AtomicU64,
    rate_limited: AtomicU64,
    quota_exhausted: AtomicU64,
    forbidden: AtomicU64,
    not_found: AtomicU64,
    unauthorized: AtomicU64,
    disables: AtomicU64,
    probes_accepted: AtomicU64,
    probes_unauthorized: AtomicU64,
    probes_inconclusive: AtomicU64,
    marks_dropped: AtomicU64,
}

struct KeyState {
    cfg: KeyConfig,
    /// Ms since the pool's epoch until which the key is out for every model; 0 = in service.
    disabled_until_ms: AtomicU64,
    disabled_reason: AtomicU8,
    /// Disables in a row without a success in between (the next disable lasts 2^strikes times).
    strikes: AtomicU32,
    /// The latest end of any of this key's marks: past it, the slots need no look.
    marks_until_max_ms: AtomicU64,
    slots: [Slot; MODEL_COOLDOWNS_PER_KEY_MAX],
    /// The marked models' names for `/stats` (truncated); writers of `slots` hold this lock.
    names: Mutex<[Option<Box<str>>; MODEL_COOLDOWNS_PER_KEY_MAX]>,
    counters: KeyCounters,
}

/// How a key stands for one model right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Use {
    NotForModel,
    Usable,
    /// Marked 403/404 for the model: used only when no usable key is left.
    Denied,
    /// Marked 429 for the model until this ms.
    Cooling(u64),
    Disabled,
}

pub struct KeyPool {
    keys: Vec<KeyState>,
    policy: KeyPolicy,
    epoch: Instant,
    /// `epoch` as Unix time, for `/stats`.
    epoch_unix_ms: u64,
    /// Keyed (per process) hash of model names: clients cannot aim a name at another's mark.
    hasher: RandomState,
    /// The latest end of any mark of any key: past it, `pick` looks at no table.
    marks_until_max_ms: AtomicU64,
}

/// A key's state for `/stats` and `/metrics`. Never the secret.
#[derive(Clone, Debug)]
pub struct KeySnapshot {
    pub index: usize,
    pub weight: u32,
    /// `ok`, `cooling_down` (a model mark is active), `disabled`, `awaiting_probe`.
    pub state: &'static str,
    pub disabled_reason: Option<&'static str>,
    pub disabled_ms_left: u64,
    pub disabled_until_unix_ms: Option<u64>,
    pub strikes: u32,
    /// Active marks: model (truncated), reason, ms left.
    pub model_cooldowns: Vec<(String, &'static str, u64)>,
    pub uses: u64,
    /// Upstream refusals by reason: rate_limited, quota_exhausted, forbidden, not_found,
    /// unauthorized.
    pub refusals: [(&'static str, u64); 5],
    pub disables: u64,
    /// Re-probes by result: accepted, unauthorized, inconclusive.
    pub probes: [(&'static str, u64); 3],
    pub marks_dropped: u64,
}

/// The states a key can be in, as named in `/stats` and `/metrics`.
pub const KEY_STATES: [&str; 4] = ["ok", "cooling_down", "disabled", "awaiting_probe"];

impl KeyPool {
    pub fn new(keys: &[KeyConfig], policy: KeyPolicy) -> Self {
        let epoch = Instant::now();
        let epoch_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        KeyPool {
            keys: keys
                .iter()
                .map(|k| KeyState {
                    cfg: k.clone(),
                    disabled_until_ms: AtomicU64::new(0),
                    disabled_reason: AtomicU8::new(0),
                    strikes: AtomicU32::new(0),
                    marks_until_max_ms: AtomicU64::new(0),
                    slots: std::array::from_fn(|_| Slot {
                        model_hash: AtomicU64::new(0),
                        until_mark: AtomicU64::new(0),
                    }),
                    names: Mutex::new(std::array::from_fn(|_| None)),
                    counters: KeyCounters::default(),
                })
                .collect(),
            policy,
            epoch,
            epoch_unix_ms,
            hasher: RandomState::new(),
            marks_until_max_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn model_hash(&self, model: &str) -> u64 {
        // 0 marks an empty slot.
        self.hasher.hash_one(model).max(1)
    }

    /// The secret of key `index`.
    pub fn secret(&self, index: usize) -> &str {
        self.keys[index].cfg.secret.expose()
    }

    /// Every secret of the pool (for the redactor).
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.cfg.secret.expose())
    }

    /// How key `k` stands for `model`; `hash` is the model's hash when any mark may be active.
    fn use_of(&self, k: &KeyState, model: &str, hash: Option<u64>, now: u64) -> Use {
        if !(k.cfg.models.is_empty() || k.cfg.models.iter().any(|m| m == model)) {
            return Use::NotForModel;
        }
        let disabled = k.disabled_until_ms.load(Ordering::Relaxed);
        if disabled != 0 && (disabled > now || self.policy.reprobe) {
            return Use::Disabled;
        }
        let Some(hash) = hash else {
            return Use::Usable;
        };
        if k.marks_until_max_ms.load(Ordering::Relaxed) <= now {
            return Use::Usable;
        }
        for slot in &k.slots {
            if slot.model_hash.load(Ordering::Acquire) != hash {
                continue;
            }
            let word = slot.until_mark.load(Ordering::Acquire);
            let until = word & UNTIL_MASK;
            if until <= now {
                break;
            }
            return match ModelMark::from_bits(word >> 56) {
                Some(m) if m.blocks() => Use::Cooling(until),
                Some(_) => Use::Denied,
                None => Use::Usable,
            };
        }
        Use::Usable
    }

    /// The model's hash when some mark may still be active anywhere in the pool, else `None`.
    fn hash_if_marked(&self, model: &str, now: u64) -> Option<u64> {
        (self.marks_until_max_ms.load(Ordering::Relaxed) > now).then(|| self.model_hash(model))
    }

    /// Pick a key for `model` by weight; `random` is any uniformly random number. Usable keys
    /// first; when none is left, keys denied (403/404) for the model, as a trial.
    pub fn pick(&self, model: &str, random: u64) -> Result<usize, NoKey> {
        let now = self.now_ms();
        let hash = self.hash_if_marked(model, now);
        let (mut usable, mut denied, mut any, mut soonest) = (0u64, 0u64, false, u64::MAX);
        for k in &self.keys {
            let w = u64::from(k.cfg.weight);
            match self.use_of(k, model, hash, now) {
                Use::NotForModel => continue,
                Use::Usable => usable += w,
                Use::Denied => denied += w,
                Use::Cooling(until) => soonest = soonest.min(until),
                Use::Disabled => {}
            }
            any = true;
        }
        let (want, total) = match (usable, denied) {
            (0, 0) => {
                return Err(match (any, soonest) {
                    (false, _) => NoKey::NotForModel,
                    (true, u64::MAX) => NoKey::Disabled,
                    (true, until) => {
                        NoKey::CoolingDown(Duration::from_millis(until.saturating_sub(now)))
                    }
                })
            }
            (0, d) => (Use::Denied, d),
            (u, _) => (Use::Usable, u),
        };
        let mut ticket = random % total;
        let mut first = None;
        for (i, k) in self.keys.iter().enumerate() {
            if self.use_of(k, model, hash, now) != want {
                continue;
            }
            first.get_or_insert(i);
            let w = u64::from(k.cfg.weight);
            if ticket < w {
                first = Some(i);
                break;
            }
            ticket -= w;
        }
        // `first` is the ticket's key, or (when another worker marked a key between the two
        // passes) the first key still eligible.
        let i = first.ok_or(NoKey::Disabled)?;
        self.keys[i].counters.uses.fetch_add(1, Ordering::Relaxed);
        Ok(i)
    }

    /// How long until a key other than `except` may serve `model`: zero when one is usable now
    /// (denied keys do not count), `None` when none will without a re-enable.
    pub fn other_key_free_in(&self, model: &str, except: usize) -> Option<Duration> {
        let now = self.now_ms();
        let hash = self.hash_if_marked(model, now);
        let mut soonest = None::<u64>;
        for (i, k) in self.keys.iter().enumerate() {
            if i == except {
                continue;
            }
            match self.use_of(k, model, hash, now) {
                Use::Usable => return Some(Duration::ZERO),
                Use::Cooling(until) => soonest = Some(soonest.map_or(until, |s| s.min(until))),
                _ => {}
            }
        }
        soonest.map(|until| Duration::from_millis(until.saturating_sub(now)))
    }

    /// Any key that is in service (for health probes, whatever the model lists say).
    pub fn pick_any(&self) -> Result<usize, NoKey> {
        let now = self.now_ms();
        self.keys
            .iter()
            .position(|k| self.use_of(k, "", None, now) != Use::Disabled)
            .ok_or(NoKey::Disabled)
    }

    /// The upstream refused `model` with key `index` (429, 403, 404): mark the pair for `wait`.
    pub fn mark_model(&self, index: usize, model: &str, mark: ModelMark, wait: Duration) {
        let k = &self.keys[index];
        let c = &k.counters;
        match mark {
            ModelMark::RateLimited => &c.rate_limited,
            ModelMark::QuotaExhausted => &c.quota_exhausted,
            ModelMark::Forbidden => &c.forbidden,
            ModelMark::NotFound => &c.not_found,
        }
        .fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let until = (now + wait.as_millis() as u64).min(UNTIL_MASK);
        let hash = self.model_hash(model);
        let mut names = lock(&k.names);
        let Some(i) = self.slot_for(k, hash, mark, until, now) else {
            c.marks_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let slot = &k.slots[i];
        // Readers that see the new end also see the new model (release/acquire on `until_mark`).
        slot.until_mark.store(0, Ordering::Release);
        slot.model_hash.store(hash, Ordering::Release);
        slot.until_mark
            .store(until | (mark as u64) << 56, Ordering::Release);
        let mut shown = model;
        while shown.len() > MODEL_NAME_SHOWN_BYTES_MAX {
            let mut end = MODEL_NAME_SHOWN_BYTES_MAX;
            while !shown.is_char_boundary(end) {
                end -= 1;
            }
            shown = &shown[..end];
        }
        names[i] = Some(shown.into());
        drop(names);
        k.marks_until_max_ms.fetch_max(until, Ordering::Release);
        self.marks_until_max_ms.fetch_max(until, Ordering::Release);
    }

    /// The slot a new mark goes in: the model's own, a free or ended one, else the one that
    /// matters least if the new mark matters more (a cool-down over a denial, then the later
    /// end); `None`: the new mark is dropped. Called with the key's `names` lock held.
    fn slot_for(
        &self,
        k: &KeyState,
        hash: u64,
        mark: ModelMark,
        until: u64,
        now: u64,
    ) -> Option<usize> {
        let rank = |m: Option<ModelMark>, until: u64| (m.is_some_and(ModelMark::blocks), until);
        let word_of = |i: usize| k.slots[i].until_mark.load(Ordering::Acquire);
        let slots = 0..k.slots.len();
        if let Some(i) = slots
            .clone()
            .find(|&i| k.slots[i].model_hash.load(Ordering::Acquire) == hash)
        {
            return Some(i);
        }
        if let Some(i) = slots.clone().find(|&i| word_of(i) & UNTIL_MASK <= now) {
            return Some(i);
        }
        slots
            .map(|i| {
                let word = word_of(i);
                (i, rank(ModelMark::from_bits(word >> 56), word & UNTIL_MASK))
            })
            .min_by_key(|&(_, r)| r)
            .filter(|&(_, r)| rank(Some(mark), until) > r)
            .map(|(i, _)| i)
    }

    /// The upstream answered 401 with key `index`: take it out of service for every model. A key
    /// already out (a 401 of a request that was in flight) stays as it is.
    pub fn disable(&self, index: usize, provider: &str) {
        let k = &self.keys[index];
        k.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let current = k.disabled_until_ms.load(Ordering::Acquire);
        if current != 0 && (current > now || self.policy.reprobe) {
            return;
        }
        self.set_disabled(
            k,
            index,
            now,
            current,
            DisableReason::Unauthorized,
            provider,
        );
    }

    /// Disable for `disable_for * 2^strikes` (capped) unless another thread changed the state.
    fn set_disabled(
        &self,
        k: &KeyState,
        index: usize,
        now: u64,
        current: u64,
        reason: DisableReason,
        provider: &str,
    ) {
        let strikes = k.strikes.load(Ordering::Relaxed);
        let base = self.policy.disable_for.as_millis() as u64;
        let for_ms = base
            .saturating_mul(1u64 << strikes.min(32))
            .min(KEY_DISABLE_DOUBLED_MS_MAX.max(base));
        let until = (now + for_ms.max(1)).min(UNTIL_MASK);
        if k.disabled_until_ms
            .compare_exchange(current, until, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        k.strikes.fetch_add(1, Ordering::Relaxed);
        k.disabled_reason.store(reason as u8, Ordering::Relaxed);
        k.counters.disables.fetch_add(1, Ordering::Relaxed);
        let why = match reason {
            DisableReason::Unauthorized => "upstream answered 401",
            DisableReason::ProbeUnauthorized => "re-probe answered 401",
        };
        log::warn(
            "provider key disabled",
            &[
                ("pool", provider),
                ("key", &index.to_string()),
                ("reason", why),
                ("for_ms", &for_ms.to_string()),
            ],
        );
    }

    /// A request with key `index` succeeded (2xx): it ends a run of disables, and a key on trial
    /// is back for good. Two relaxed loads when there is nothing to clear.
    pub fn succeeded(&self, index: usize) {
        let k = &self.keys[index];
        if k.strikes.load(Ordering::Relaxed) != 0 {
            k.strikes.store(0, Ordering::Relaxed);
        }
        if k.disabled_until_ms.load(Ordering::Relaxed) != 0 {
            k.disabled_until_ms.store(0, Ordering::Release);
        }
    }

    /// Keys whose disable has expired and that wait for a re-probe (empty without `reprobe`).
    pub fn due_for_probe(&self) -> Vec<usize> {
        if !self.policy.reprobe {
            return Vec::new();
        }
        let now = self.now_ms();
        self.keys
            .iter()
            .enumerate()
            .filter(|(_, k)| {
                let until = k.disabled_until_ms.load(Ordering::Acquire);
                until != 0 && until <= now
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// What the re-probe of key `index` found.
    pub fn probed(&self, index: usize, outcome: ProbeOutcome, provider: &str) {
        let k = &self.keys[index];
        let c = &k.counters;
        let now = self.now_ms();
        let current = k.disabled_until_ms.load(Ordering::Acquire);
        if current == 0 || current > now {
            return;
        }
        match outcome {
            ProbeOutcome::Unauthorized => {
                c.probes_unauthorized.fetch_add(1, Ordering::Relaxed);
                let reason = DisableReason::ProbeUnauthorized;
                self.set_disabled(k, index, now, current, reason, provider);
            }
            ProbeOutcome::Accepted | ProbeOutcome::Inconclusive => {
                let (counter, result) = if outcome == ProbeOutcome::Accepted {
                    (&c.probes_accepted, "accepted")
                } else {
                    (&c.probes_inconclusive, "inconclusive: back on trial")
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if k.disabled_until_ms
                    .compare_exchange(current, 0, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    log::info(
                        "provider key re-enabled",
                        &[
                            ("pool", provider),
                            ("key", &index.to_string()),
                            ("probe", result),
                        ],
                    );
                }
            }
        }
    }

    /// Every key's state, in config order.
    pub fn snapshots(&self) -> Vec<KeySnapshot> {
        let now = self.now_ms();
        self.keys
            .iter()
            .enumerate()
            .map(|(index, k)| self.snapshot(index, k, now))
            .collect()
    }

    fn snapshot(&self, index: usize, k: &KeyState, now: u64) -> KeySnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut model_cooldowns = Vec::new();
        {
            let names = lock(&k.names);
            for (slot, name) in k.slots.iter().zip(names.iter()) {
                let word = slot.until_mark.load(Ordering::Acquire);
                let until = word & UNTIL_MASK;
                if let (Some(mark), Some(name), true) =
                    (ModelMark::from_bits(word >> 56), name, until > now)
                {
                    model_cooldowns.push((name.to_string(), mark.as_str(), until - now));
                }
            }
        }
        let disabled = k.disabled_until_ms.load(Ordering::Acquire);
        let state = match disabled {
            0 if model_cooldowns.is_empty() => "ok",
            0 => "cooling_down",
            d if d > now => "disabled",
            _ if self.policy.reprobe => "awaiting_probe",
            _ => "ok",
        };
        let disabled_reason =
            (disabled != 0).then(|| match k.disabled_reason.load(Ordering::Relaxed) {
                2 => "probe_unauthorized",
                _ => "unauthorized",
            });
        let c = &k.counters;
        KeySnapshot {
            index,
            weight: k.cfg.weight,
            state,
            disabled_reason,
            disabled_ms_left: disabled.saturating_sub(now),
            disabled_until_unix_ms: (disabled != 0).then(|| self.epoch_unix_ms + disabled),
            strikes: k.strikes.load(Ordering::Relaxed),
            model_cooldowns,
            uses: load(&c.uses),
            refusals: [
                ("rate_limited", load(&c.rate_limited)),
                ("quota_exhausted", load(&c.quota_exhausted)),
                ("forbidden", load(&c.forbidden)),
                ("not_found", load(&c.not_found)),
                ("unauthorized", load(&c.unauthorized)),
            ],
            disables: load(&c.disables),
            probes: [
                ("accepted", load(&c.probes_accepted)),
                ("unauthorized", load(&c.probes_unauthorized)),
                ("inconclusive", load(&c.probes_inconclusive)),
            ],
            marks_dropped: load(&c.marks_dropped),
        }
    }

    /// Per-key state for `/stats`. Never the secret.
    pub fn to_json(&self) -> serde_json::Value {
        self.snapshots().iter().map(KeySnapshot::to_json).collect()
    }
}

impl KeySnapshot {
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "index": self.index,
            "weight": self.weight,
            "state": self.state,
            "disabled_reason": self.disabled_reason,
            "disabled_ms_left": self.disabled_ms_left,
            "disabled_until_unix_ms": self.disabled_until_unix_ms,
            "strikes": self.strikes,
            "model_cooldowns": self.model_cooldowns.iter().map(|(model, reason, left)| {
                serde_json::json!({ "model": model, "reason": reason, "ms_left": left })
            }).collect::<Vec<_>>(),
            "uses": self.uses,
            "disables": self.disables,
            "model_cooldowns_dropped": self.marks_dropped,
        });
        for (reason, n) in self.refusals {
            v[reason] = n.into();
        }
        v["probes"] = self
            .probes
            .iter()
            .map(|(result, n)| (result.to_string(), serde_json::Value::from(*n)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        v
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

    fn policy(disable_ms: u64, reprobe: bool) -> KeyPolicy {
        KeyPolicy {
            disable_for: Duration::from_millis(disable_ms),
            reprobe,
        }
    }

    fn pool(keys: &[KeyConfig]) -> KeyPool {
        KeyPool::new(keys, policy(60_000, true))
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

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn weights_and_model_lists() {
        let pool = pool(&[key("a", 3, &[]), key("b", 1, &[]), key("c", 5, &["other"])]);
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
        let only_c = super::KeyPool::new(&[key("c", 1, &["other"])], policy(1, true));
        assert_eq!(only_c.pick("m", 1), Err(NoKey::NotForModel));
    }

    #[test]
    fn a_cool_down_holds_for_its_model_only() {
        let pool = pool(&[key("a", 1, &[]), key("b", 1, &[])]);
        pool.mark_model(0, "m", ModelMark::RateLimited, MIN);
        let mut r = rng();
        assert!((0..100).all(|_| pool.pick("m", r()) == Ok(1)));
        // Key a still serves every other model.
        let mut seen = [0; 2];
        for _ in 0..100 {
            seen[pool.pick("n", r()).unwrap()] += 1;
        }
        assert!(seen[0] > 20 && seen[1] > 20, "{seen:?}");
        assert!(pool.other_key_free_in("m", 1).unwrap() > Duration::from_secs(50));
        assert_eq!(pool.other_key_free_in("m", 0), Some(Duration::ZERO));
        pool.mark_model(1, "m", ModelMark::QuotaExhausted, MIN / 2);
        match pool.pick("m", 1) {
            Err(NoKey::CoolingDown(wait)) => {
                assert!(
                    wait > Duration::from_secs(25) && wait <= MIN / 2,
                    "{wait:?}"
                )
            }
            other => panic!("{other:?}"),
        }
        let e = NoKey::CoolingDown(Duration::from_millis(1500)).error("p", "m");
        assert_eq!((e.status(), e.retry_after_s), (429, Some(2)));
        let snap = &pool.snapshots()[0];
        assert_eq!(snap.state, "cooling_down");
        assert_eq!(snap.model_cooldowns.len(), 1);
        assert_eq!(
            (
                snap.model_cooldowns[0].0.as_str(),
                snap.model_cooldowns[0].1
            ),
            ("m", "rate_limited")
        );
        assert!(snap.model_cooldowns[0].2 > 50_000);
    }

    #[test]
    fn a_cool_down_ends() {
        let pool = pool(&[key("a", 1, &[])]);
        pool.mark_model(0, "m", ModelMark::RateLimited, Duration::from_millis(30));
        assert!(matches!(pool.pick("m", 1), Err(NoKey::CoolingDown(_))));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(pool.pick("m", 1), Ok(0));
        assert_eq!(pool.snapshots()[0].state, "ok");
    }

    #[test]
    fn denied_keys_are_a_last_resort() {
        let pool = pool(&[key("a", 1, &[]), key("b", 1, &[])]);
        pool.mark_model(0, "m", ModelMark::Forbidden, MIN);
        let mut r = rng();
        assert!((0..100).all(|_| pool.pick("m", r()) == Ok(1)));
        // Denied keys do not count as free for a retry.
        assert_eq!(pool.other_key_free_in("m", 1), None);
        pool.mark_model(1, "m", ModelMark::NotFound, MIN);
        // Both denied: one is still tried, so the client gets the upstream's own answer.
        assert!(pool.pick("m", r()).is_ok());
        assert!(pool.pick("n", r()).is_ok());
    }

    #[test]
    fn a_full_table_drops_the_least_important_mark() {
        let pool = pool(&[key("a", 1, &[]), key("b", 1, &[])]);
        for i in 0..MODEL_COOLDOWNS_PER_KEY_MAX {
            pool.mark_model(0, &format!("junk-{i}"), ModelMark::NotFound, MIN);
        }
        // A rate limit evicts a denial.
        pool.mark_model(0, "real", ModelMark::RateLimited, MIN);
        assert_eq!(pool.pick("real", 0), Ok(1));
        // More denials never evict it, whatever their end.
        for i in 0..4 * MODEL_COOLDOWNS_PER_KEY_MAX {
            pool.mark_model(0, &format!("more-{i}"), ModelMark::NotFound, MIN * 10);
        }
        assert_eq!(pool.pick("real", 0), Ok(1));
        let snap = &pool.snapshots()[0];
        assert_eq!(snap.model_cooldowns.len(), MODEL_COOLDOWNS_PER_KEY_MAX);
        assert!(snap.model_cooldowns.iter().any(|(m, _, _)| m == "real"));
        // The key stays usable for any unmarked model.
        let mut r = rng();
        assert!((0..50).any(|_| pool.pick("fresh", r()) == Ok(0)));
        // A table full of rate limits: a later-ending one replaces the soonest; else dropped.
        let full = super::KeyPool::new(&[key("a", 1, &[])], policy(1, true));
        for i in 0..MODEL_COOLDOWNS_PER_KEY_MAX {
            let wait = MIN + Duration::from_secs(i as u64);
            full.mark_model(0, &format!("m{i}"), ModelMark::RateLimited, wait);
        }
        full.mark_model(0, "short", ModelMark::RateLimited, Duration::from_secs(1));
        assert_eq!(full.snapshots()[0].marks_dropped, 1);
        assert_eq!(full.pick("short", 0), Ok(0));
        full.mark_model(0, "long", ModelMark::RateLimited, MIN * 2);
        assert!(matches!(full.pick("long", 0), Err(NoKey::CoolingDown(_))));
        assert_eq!(
            full.pick("m0", 0),
            Ok(0),
            "the soonest-ending mark was replaced"
        );
        // A very long model name is kept short for /stats.
        full.mark_model(0, &"x".repeat(10_000), ModelMark::RateLimited, MIN * 3);
        assert!(full.snapshots()[0]
            .model_cooldowns
            .iter()
            .all(|(m, _, _)| m.len() <= MODEL_NAME_SHOWN_BYTES_MAX));
    }

    #[test]
    fn a_disabled_key_is_reprobed_and_its_disable_doubles() {
        let pool = KeyPool::new(&[key("a", 1, &[])], policy(20, true));
        pool.disable(0, "p");
        assert_eq!(pool.pick("m", 1), Err(NoKey::Disabled));
        let snap = &pool.snapshots()[0];
        assert_eq!(
            (snap.state, snap.disabled_reason),
            ("disabled", Some("unauthorized"))
        );
        assert!(snap.disabled_ms_left <= 20 && snap.disabled_until_unix_ms.is_some());
        assert!(pool.due_for_probe().is_empty());
        std::thread::sleep(Duration::from_millis(30));
        // Expired but not yet probed: still out.
        assert_eq!(pool.pick("m", 1), Err(NoKey::Disabled));
        assert_eq!(pool.snapshots()[0].state, "awaiting_probe");
        assert_eq!(pool.due_for_probe(), vec![0]);
        pool.probed(0, ProbeOutcome::Unauthorized, "p");
        let snap = &pool.snapshots()[0];
        assert_eq!(
            (snap.state, snap.disabled_reason, snap.strikes),
            ("disabled", Some("probe_unauthorized"), 2)
        );
        assert!(
            snap.disabled_ms_left > 20 && snap.disabled_ms_left <= 40,
            "{snap:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
        pool.probed(0, ProbeOutcome::Accepted, "p");
        assert_eq!(pool.pick("m", 1), Ok(0));
        let snap = &pool.snapshots()[0];
        assert_eq!(
            (snap.state, snap.probes[0].1, snap.probes[1].1),
            ("ok", 1, 1)
        );
        // Still two strikes until a request succeeds; then the next disable is short again.
        pool.succeeded(0);
        assert_eq!(pool.snapshots()[0].strikes, 0);
        pool.disable(0, "p");
        assert!(pool.snapshots()[0].disabled_ms_left <= 20);
        // A second 401 of a request in flight changes nothing.
        pool.disable(0, "p");
        assert_eq!(pool.snapshots()[0].disables, 3);
        assert_eq!(pool.snapshots()[0].refusals[4].1, 3);
    }

    #[test]
    fn the_disable_is_capped() {
        // 60 s doubled 40 times would be years: it stops at the cap.
        let pool = KeyPool::new(&[key("a", 1, &[])], policy(60_000, true));
        for _ in 0..40 {
            pool.keys[0].disabled_until_ms.store(0, Ordering::Relaxed);
            pool.disable(0, "p");
        }
        let snap = &pool.snapshots()[0];
        assert_eq!(snap.strikes, 40);
        assert!(
            snap.disabled_ms_left <= KEY_DISABLE_DOUBLED_MS_MAX
                && snap.disabled_ms_left > KEY_DISABLE_DOUBLED_MS_MAX - 1_000,
            "{snap:?}"
        );
    }

    #[test]
    fn without_a_probe_a_key_comes_back_on_trial() {
        let pool = KeyPool::new(&[key("a", 1, &[])], policy(20, false));
        pool.disable(0, "p");
        assert_eq!(pool.pick("m", 1), Err(NoKey::Disabled));
        std::thread::sleep(Duration::from_millis(30));
        assert!(pool.due_for_probe().is_empty());
        assert_eq!(pool.pick("m", 1), Ok(0));
        // A 401 on trial disables it again, for twice as long.
        pool.disable(0, "p");
        let left = pool.snapshots()[0].disabled_ms_left;
        assert!(left > 20 && left <= 40, "{left}");
    }

    #[test]
    fn stats_never_show_a_secret() {
        let pool = pool(&[key("sk-secret-value", 1, &[])]);
        pool.disable(0, "p");
        pool.mark_model(0, "m", ModelMark::RateLimited, MIN);
        let json = pool.to_json().to_string();
        assert!(
            json.contains("disabled") && !json.contains("sk-secret"),
            "{json}"
        );
    }
}

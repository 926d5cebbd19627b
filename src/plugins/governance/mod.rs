//! The governance plugin: virtual keys with their teams, the models they may use, request and
//! token rate limits, and USD and token budgets. Its pre-hook works on memory only (the key table
//! behind an `ArcSwap`, lock-free counters per key and team); its post-hook records what the
//! answer used. The table is loaded from the store at start and replaced whenever keys or teams
//! change (through the admin API, or the CLI in another process); counters are kept per key and
//! team id across those changes and across config reloads, and budgets are rebuilt from the
//! ledger at start.

pub mod limiter;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rusqlite::Connection;

use self::limiter::{clock_ns, slot, Counters, Gcra, Refused, PERIODS};
use super::{Outcome, Plugin, Pre, Principal, Rejection, RequestCtx, Target};
use crate::cost::{glob_match, PriceTable};
use crate::error::{ApiError, ErrorKind};
use crate::store::{records, Budget, KeyRecord, Limits, Store, TeamRecord};

/// A team as the pre-hook sees it.
pub struct TeamEntry {
    pub record: TeamRecord,
    pub counters: Arc<Counters>,
}

/// A virtual key as the pre-hook sees it.
pub struct KeyEntry {
    pub record: KeyRecord,
    pub counters: Arc<Counters>,
    pub team: Option<Arc<TeamEntry>>,
}

fn unauthorized(code: &'static str, message: &'static str) -> ApiError {
    ApiError::new(ErrorKind::Unauthorized, code, message)
}

impl KeyEntry {
    /// Whether the key may be used at `now_s` (enabled, not expired, its team enabled).
    pub fn admissible(&self, now_s: u64) -> Result<(), ApiError> {
        if !self.record.enabled {
            return Err(unauthorized("key_disabled", "this API key is disabled"));
        }
        if self.record.expires_at.is_some_and(|e| e <= now_s as i64) {
            return Err(unauthorized("key_expired", "this API key has expired"));
        }
        if self.team.as_ref().is_some_and(|t| !t.record.enabled) {
            return Err(unauthorized(
                "team_disabled",
                "the team of this API key is disabled",
            ));
        }
        Ok(())
    }

    /// Whether the key may use `route`: its provider patterns match the provider, and its model
    /// patterns match `provider/model`, or the name the client asked for (`client_model`, given
    /// for the primary route only: a fallback is judged by where it goes).
    pub fn allows(&self, route: &Target, client_model: Option<&str>) -> bool {
        let r = &self.record;
        let provider_ok = r.providers.is_empty()
            || r.providers
                .iter()
                .any(|p| glob_match(p.as_bytes(), route.provider.as_bytes()));
        if !provider_ok {
            return false;
        }
        if r.models.is_empty() {
            return true;
        }
        let full = format!("{}/{}", route.provider, route.model);
        r.models.iter().any(|p| {
            glob_match(p.as_bytes(), full.as_bytes())
                || client_model.is_some_and(|m| glob_match(p.as_bytes(), m.as_bytes()))
        })
    }
}

/// What governance refused or saw, for `/stats` and `/metrics`.
#[derive(Default)]
pub struct GovernanceCounters {
    pub model_forbidden: AtomicU64,
    pub cost_unknown_refused: AtomicU64,
    pub rate_limited_requests: AtomicU64,
    pub rate_limited_tokens: AtomicU64,
    pub budget_exceeded: AtomicU64,
    /// Answers whose model has no price (their cost is unknown, not $0).
    pub cost_unknown: AtomicU64,
    /// Nano-dollars of known cost recorded.
    pub spend_nusd: AtomicU64,
    /// Tokens (input + output) recorded.
    pub tokens: AtomicU64,
}

impl GovernanceCounters {
    pub fn to_json(&self) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "model_forbidden": g(&self.model_forbidden),
            "cost_unknown_refused": g(&self.cost_unknown_refused),
            "rate_limited_requests": g(&self.rate_limited_requests),
            "rate_limited_tokens": g(&self.rate_limited_tokens),
            "budget_exceeded": g(&self.budget_exceeded),
            "cost_unknown": g(&self.cost_unknown),
            "spend_usd": g(&self.spend_nusd) as f64 / crate::cost::NANO_PER_USD,
            "tokens": g(&self.tokens),
        })
    }
}

type KeyTable = HashMap<[u8; 32], Arc<KeyEntry>>;

/// Governance state for the life of the process.
pub struct State {
    table: ArcSwap<KeyTable>,
    key_counters: Mutex<HashMap<i64, Arc<Counters>>>,
    team_counters: Mutex<HashMap<i64, Arc<Counters>>>,
    pub counters: GovernanceCounters,
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    pub fn new() -> State {
        State {
            table: ArcSwap::from_pointee(HashMap::new()),
            key_counters: Mutex::new(HashMap::new()),
            team_counters: Mutex::new(HashMap::new()),
            counters: GovernanceCounters::default(),
        }
    }

    /// The key whose SHA-256 is `hash`.
    pub fn find(&self, hash: &[u8; 32]) -> Option<Arc<KeyEntry>> {
        self.table.load().get(hash).cloned()
    }

    /// Keys in the table.
    pub fn keys(&self) -> usize {
        self.table.load().len()
    }

    /// What the key (or team, `team: true`) with this id has spent in the current day, week
    /// and month, and its rate-limit windows: the admin API's view of the live counters.
    pub fn live_json(&self, id: i64, limits: &Limits, team: bool) -> serde_json::Value {
        let map = if team {
            &self.team_counters
        } else {
            &self.key_counters
        };
        let c = Self::counters_of(map, id);
        let now_s = crate::cost::now_unix_s();
        let now_ns = clock_ns();
        let mut spend = serde_json::Map::new();
        for p in PERIODS {
            spend.insert(
                p.as_str().to_string(),
                serde_json::json!({
                    "usd": c.spend_nusd[slot(p)].get(now_s, p) as f64 / crate::cost::NANO_PER_USD,
                    "tokens": c.spend_tokens[slot(p)].get(now_s, p),
                    "resets_at": rfc3339(p.end_s(now_s)),
                }),
            );
        }
        let window = |limit: Option<u64>, g: &Gcra| {
            limit.map(|l| {
                let s = g.peek(now_ns, l);
                serde_json::json!({"limit": l, "remaining": s.remaining, "reset": reset_text(s.reset_ns)})
            })
        };
        serde_json::json!({
            "spend": spend,
            "requests_window": window(limits.rpm, &c.requests),
            "tokens_window": window(limits.tpm, &c.tokens),
        })
    }

    fn counters_of(map: &Mutex<HashMap<i64, Arc<Counters>>>, id: i64) -> Arc<Counters> {
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(m.entry(id).or_default())
    }

    /// Replace the table with `keys` and `teams`, keeping every id's counters.
    pub fn install(&self, keys: Vec<KeyRecord>, teams: Vec<TeamRecord>) {
        let teams: HashMap<i64, Arc<TeamEntry>> = teams
            .into_iter()
            .map(|t| {
                let counters = Self::counters_of(&self.team_counters, t.id);
                (
                    t.id,
                    Arc::new(TeamEntry {
                        record: t,
                        counters,
                    }),
                )
            })
            .collect();
        let table: KeyTable = keys
            .into_iter()
            .map(|k| {
                let counters = Self::counters_of(&self.key_counters, k.id);
                let team = k.team_id.and_then(|id| teams.get(&id).cloned());
                let hash = k.hash;
                (
                    hash,
                    Arc::new(KeyEntry {
                        record: k,
                        counters,
                        team,
                    }),
                )
            })
            .collect();
        self.table.store(Arc::new(table));
    }

    /// Load the table from `conn` (keys and teams).
    fn reload(&self, conn: &Connection) -> Result<(), String> {
        let keys = records::keys(conn).map_err(|e| e.to_string())?;
        let teams = records::teams(conn).map_err(|e| e.to_string())?;
        self.install(keys, teams);
        Ok(())
    }

    /// Rebuild every budget counter from the ledger (at start), then load the table and keep it
    /// current as keys and teams change.
    pub fn attach(state: &Arc<State>, store: &Store) -> Result<(), String> {
        let now_s = crate::cost::now_unix_s();
        for p in PERIODS {
            let start = p.start_s(now_s);
            let sums = store
                .run(move |c: &mut Connection| {
                    crate::store::ledger::spend_since(c, start as i64 * 1000)
                })
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let (keys, teams) = sums;
            for (map, sums) in [(&state.key_counters, keys), (&state.team_counters, teams)] {
                for (id, (nusd, tokens)) in sums {
                    let c = Self::counters_of(map, id);
                    c.spend_nusd[slot(p)].set(start, nusd);
                    c.spend_tokens[slot(p)].set(start, tokens);
                }
            }
        }
        let listener = Arc::clone(state);
        store
            .on_keys_changed(Box::new(move |conn: &Connection| {
                if let Err(e) = listener.reload(conn) {
                    crate::log::error(
                        "governance: cannot load keys; keeping the previous table",
                        &[("error", &e)],
                    );
                }
            }))
            .map_err(|e| e.to_string())
    }
}

/// The plugin of one config generation.
pub struct Governance {
    state: Arc<State>,
    prices: Arc<PriceTable>,
}

/// Who a limit or budget belongs to, in messages.
#[derive(Clone, Copy)]
enum Scope<'a> {
    Key(&'a str),
    Team(&'a str),
}

impl Scope<'_> {
    fn describe(self) -> String {
        match self {
            Scope::Key(n) => format!("key {n:?}"),
            Scope::Team(n) => format!("team {n:?}"),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Scope::Key(_) => "key",
            Scope::Team(_) => "team",
        }
    }
}

/// `850ms`, `12s`, `1m30s`: a duration as OpenAI writes `x-ratelimit-reset-*`.
pub fn reset_text(ns: u64) -> String {
    let ms = ns.div_ceil(1_000_000);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms.div_ceil(1000);
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

/// The time of day of a Unix time, RFC 3339 (UTC).
fn rfc3339(unix_s: u64) -> String {
    let (y, m, d) = crate::cost::civil_from_days((unix_s / 86_400) as i64);
    let rem = unix_s % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One rate-limited party's limits and counters.
struct Party<'a> {
    scope: Scope<'a>,
    limits: &'a Limits,
    counters: &'a Counters,
}

impl Party<'_> {
    /// Take one request and `tokens` from this party's windows; on a refusal nothing is taken.
    fn take(&self, now_ns: u64, tokens: u64) -> Result<(), (bool, Refused)> {
        if let Some(rpm) = self.limits.rpm {
            self.counters
                .requests
                .take(now_ns, rpm, 1)
                .map_err(|r| (false, r))?;
        }
        if let Some(tpm) = self.limits.tpm {
            if let Err(r) = self.counters.tokens.take(now_ns, tpm, tokens) {
                self.refund(now_ns, 1, 0);
                return Err((true, r));
            }
        }
        Ok(())
    }

    fn refund(&self, now_ns: u64, requests: i64, tokens: i64) {
        if let Some(rpm) = self.limits.rpm {
            self.counters.requests.adjust(now_ns, rpm, -requests);
        }
        if let (Some(tpm), true) = (self.limits.tpm, tokens != 0) {
            self.counters.tokens.adjust(now_ns, tpm, -tokens);
        }
    }

    /// The rate-limit headers of this party, `x-ratelimit-*` as OpenAI names them.
    fn headers(&self, now_ns: u64, out: &mut Vec<(&'static str, String)>) {
        let mut add = |limit: Option<u64>, g: &Gcra, names: [&'static str; 3]| {
            if let Some(limit) = limit {
                let state = g.peek(now_ns, limit);
                out.push((names[0], limit.to_string()));
                out.push((names[1], state.remaining.to_string()));
                out.push((names[2], reset_text(state.reset_ns)));
            }
        };
        add(
            self.limits.rpm,
            &self.counters.requests,
            [
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ],
        );
        add(
            self.limits.tpm,
            &self.counters.tokens,
            [
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
            ],
        );
    }

    /// A budget of this party that is spent, as a refusal.
    fn spent(&self, now_s: u64) -> Option<ApiError> {
        let check = |b: &Option<Budget>, sums: &[limiter::PeriodSum; 3], usd: bool| {
            let b = (*b)?;
            let spent = sums[slot(b.period)].get(now_s, b.period);
            (spent >= b.amount).then(|| {
                let (spent, amount) = if usd {
                    (
                        format!("${:.2}", spent as f64 / crate::cost::NANO_PER_USD),
                        format!("${:.2}", b.amount as f64 / crate::cost::NANO_PER_USD),
                    )
                } else {
                    (format!("{spent} tokens"), format!("{} tokens", b.amount))
                };
                let kind = if usd { "USD" } else { "token" };
                ApiError::new(
                    ErrorKind::BudgetExceeded,
                    "budget_exceeded",
                    format!(
                        "the {} budget of {} is spent ({spent} of {amount} this {}); it resets at \
                         {}",
                        kind,
                        self.scope.describe(),
                        b.period.as_str(),
                        rfc3339(b.period.end_s(now_s))
                    ),
                )
            })
        };
        check(&self.limits.budget_usd, &self.counters.spend_nusd, true).or_else(|| {
            check(
                &self.limits.budget_tokens,
                &self.counters.spend_tokens,
                false,
            )
        })
    }
}

/// Estimated tokens of a request body before it is answered: about four bytes a token.
pub fn estimate_tokens(body_bytes: usize) -> u64 {
    (body_bytes as u64 / 4).max(1)
}

impl Governance {
    pub fn new(state: Arc<State>, prices: Arc<PriceTable>) -> Governance {
        Governance { state, prices }
    }

    fn forbid(&self, code: &'static str, message: String) -> Pre {
        let counter = if code == "model_not_allowed" {
            &self.state.counters.model_forbidden
        } else {
            &self.state.counters.cost_unknown_refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Pre::Reject(ApiError::new(ErrorKind::Forbidden, code, message).into())
    }

    fn rate_limited(&self, party: &Party<'_>, tokens: bool, refused: Refused, now_ns: u64) -> Pre {
        let c = &self.state.counters;
        let (counter, what) = if tokens {
            (&c.rate_limited_tokens, "tokens")
        } else {
            (&c.rate_limited_requests, "requests")
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let retry_s = refused.wait_ns.div_ceil(1_000_000_000).max(1);
        let error = ApiError::new(
            ErrorKind::RateLimited,
            "rate_limit_exceeded",
            format!(
                "rate limit of {} reached: {what} per minute; retry in {}",
                party.scope.describe(),
                reset_text(refused.wait_ns)
            ),
        )
        .with_retry_after(retry_s.min(u64::from(u32::MAX)) as u32);
        let mut headers = Vec::with_capacity(8);
        party.headers(now_ns, &mut headers);
        headers.push(("x-ratelimit-scope", party.scope.name().to_string()));
        Pre::Reject(Rejection { error, headers })
    }

    /// The route check of the pre-hook: the primary must be allowed (403), fallbacks that are not
    /// are taken out.
    fn check_routes(&self, entry: &KeyEntry, ctx: &mut RequestCtx, now_s: u64) -> Option<Pre> {
        let refuse_unknown = entry.record.refuse_unknown_cost;
        let primary = ctx.routes.first()?;
        if !entry.allows(primary, Some(&ctx.model)) {
            let message = format!(
                "this API key may not use the model `{}`",
                truncate(&ctx.model, 200)
            );
            return Some(self.forbid("model_not_allowed", message));
        }
        if refuse_unknown && self.prices.lookup(primary, now_s).is_none() {
            let message = format!(
                "the model `{}` has no price, and this API key refuses models whose cost is unknown",
                truncate(&ctx.model, 200)
            );
            return Some(self.forbid("model_cost_unknown", message));
        }
        let prices = &self.prices;
        let mut first = true;
        ctx.routes.retain(|t| {
            // The primary passed above; fallbacks by where they go.
            let keep = first
                || (entry.allows(t, None)
                    && (!refuse_unknown || prices.lookup(t, now_s).is_some()));
            first = false;
            keep
        });
        None
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

impl Plugin for Governance {
    fn name(&self) -> &'static str {
        "governance"
    }

    fn pre(&self, ctx: &mut RequestCtx) -> Pre {
        let Principal::Key(entry) = &ctx.principal else {
            return Pre::Continue;
        };
        let entry = Arc::clone(entry);
        let now_s = crate::cost::now_unix_s();
        if let Some(refusal) = self.check_routes(&entry, ctx, now_s) {
            return refusal;
        }
        let key = Party {
            scope: Scope::Key(&entry.record.name),
            limits: &entry.record.limits,
            counters: &entry.counters,
        };
        let team = entry.team.as_ref().map(|t| Party {
            scope: Scope::Team(&t.record.name),
            limits: &t.record.limits,
            counters: &t.counters,
        });
        let spent = key
            .spent(now_s)
            .or_else(|| team.as_ref().and_then(|t| t.spent(now_s)));
        if let Some(error) = spent {
            self.state
                .counters
                .budget_exceeded
                .fetch_add(1, Ordering::Relaxed);
            return Pre::Reject(Rejection {
                error,
                headers: vec![("x-should-retry", "false".to_string())],
            });
        }
        let now_ns = clock_ns();
        let tokens = estimate_tokens(ctx.body_bytes);
        if let Err((is_tokens, refused)) = key.take(now_ns, tokens) {
            return self.rate_limited(&key, is_tokens, refused, now_ns);
        }
        if let Some(team) = &team {
            if let Err((is_tokens, refused)) = team.take(now_ns, tokens) {
                key.refund(now_ns, 1, tokens as i64);
                return self.rate_limited(team, is_tokens, refused, now_ns);
            }
        }
        ctx.tokens_estimated = tokens;
        Pre::Continue
    }

    fn post(&self, ctx: &RequestCtx, outcome: &Outcome) {
        let Principal::Key(entry) = &ctx.principal else {
            return;
        };
        let u = &outcome.usage;
        let tokens = u.input_tokens + u.output_tokens;
        if ctx.tokens_estimated > 0 {
            let now_ns = clock_ns();
            let delta = tokens as i64 - ctx.tokens_estimated as i64;
            let limits = std::iter::once((&entry.record.limits, &entry.counters))
                .chain(entry.team.as_ref().map(|t| (&t.record.limits, &t.counters)));
            for (limits, counters) in limits {
                if let Some(tpm) = limits.tpm {
                    counters.tokens.adjust(now_ns, tpm, delta);
                }
            }
        }
        let c = &self.state.counters;
        if outcome.served.is_some() && outcome.cost.is_none() && tokens > 0 {
            c.cost_unknown.fetch_add(1, Ordering::Relaxed);
        }
        let nusd = outcome.cost.map_or(0, |c| c.nusd);
        if nusd == 0 && tokens == 0 {
            return;
        }
        c.spend_nusd.fetch_add(nusd, Ordering::Relaxed);
        c.tokens.fetch_add(tokens, Ordering::Relaxed);
        let now_s = crate::cost::now_unix_s();
        entry.counters.spend(now_s, nusd, tokens);
        if let Some(team) = &entry.team {
            team.counters.spend(now_s, nusd, tokens);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_texts() {
        assert_eq!(reset_text(1), "1ms");
        assert_eq!(reset_text(999_000_000), "999ms");
        assert_eq!(reset_text(1_000_000_001), "2s");
        assert_eq!(reset_text(90_000_000_000), "1m30s");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}

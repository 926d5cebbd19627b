//! The price table and the cost of a request: per model, USD per million input, output,
//! cache-read and cache-write tokens with effective dates (`config/prices.toml`, compiled in as
//! the default and extended or overridden by `[prices] path`), and a request's cost from its
//! normalised usage in nano-dollars (integers, so sums are exact). A model without a price has no
//! cost (`None`, "cost unknown"), never $0.

use std::collections::HashMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::formats::Usage;

/// The bundled table (`config/prices.toml`).
pub const BUNDLED: &str = include_str!("../../config/prices.toml");
/// Largest price file read, bytes.
pub const PRICE_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Most entries in the bundled table and an override together.
pub const ENTRIES_MAX: usize = 100_000;
/// Highest price accepted, USD per million tokens (a typo guard).
pub const PRICE_USD_PER_MTOK_MAX: f64 = 100_000.0;
/// Nano-dollars per dollar: costs are kept in nano-dollars.
pub const NANO_PER_USD: f64 = 1e9;

/// The cost of one request, in nano-dollars (1e-9 USD).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cost {
    pub nusd: u64,
}

impl Cost {
    pub fn usd(self) -> f64 {
        self.nusd as f64 / NANO_PER_USD
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's days_from_civil).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `(year, month, day)` of a day number since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Unix seconds of a `YYYY-MM-DD` date (UTC midnight).
pub fn parse_date(text: &str) -> Option<u64> {
    let mut parts = text.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if text.len() != 10 || !(1970..=9999).contains(&y) || !(1..=12).contains(&m) {
        return None;
    }
    if !(1..=31).contains(&d) || civil_from_days(days_from_civil(y, m, d)) != (y, m, d) {
        return None;
    }
    u64::try_from(days_from_civil(y, m, d) * 86_400).ok()
}

/// A model name pattern: `*` any run, `?` one character.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern {
    text: String,
    /// Characters that are not wildcards (the more, the more specific).
    literal: usize,
    exact: bool,
}

impl Pattern {
    fn new(text: &str) -> Pattern {
        let literal = text.chars().filter(|c| *c != '*' && *c != '?').count();
        Pattern {
            text: text.to_string(),
            literal,
            exact: literal == text.chars().count(),
        }
    }

    fn matches(&self, name: &str) -> bool {
        if self.exact {
            return self.text == name;
        }
        glob_match(self.text.as_bytes(), name.as_bytes())
    }
}

/// Whether `name` matches `pattern` (`*` any run of bytes, `?` one byte); iterative with one
/// backtrack point, so linear in practice and never recursive.
pub fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// USD per million tokens of each kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rates {
    pub input: f64,
    pub output: f64,
    pub cache_read: f64,
    pub cache_write: f64,
}

impl Rates {
    /// Nano-dollars of `usage` at these rates. `usage.input_tokens` counts every prompt token,
    /// cache reads and writes included: the uncached rest is priced at `input`.
    fn nusd(&self, usage: &Usage) -> u64 {
        let cached = usage.cache_read_tokens + usage.cache_write_tokens;
        let uncached = usage.input_tokens.saturating_sub(cached);
        // Tokens x USD per million x 1e9 nano per USD / 1e6 = tokens x price x 1e3.
        let nano = (uncached as f64 * self.input
            + usage.cache_read_tokens as f64 * self.cache_read
            + usage.cache_write_tokens as f64 * self.cache_write
            + usage.output_tokens as f64 * self.output)
            * 1e3;
        nano.round().max(0.0) as u64
    }
}

/// One model's prices from a date on.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    providers: Vec<String>,
    patterns: Vec<Pattern>,
    pub rates: Rates,
    /// Long-context tier: above this many input tokens, `rates_above` apply.
    pub above_input_tokens: Option<u64>,
    pub rates_above: Rates,
    pub effective_from_s: u64,
}

impl Entry {
    fn rates_for(&self, usage: &Usage) -> &Rates {
        match self.above_input_tokens {
            Some(limit) if usage.input_tokens > limit => &self.rates_above,
            _ => &self.rates,
        }
    }

    fn same_key(&self, other: &Entry) -> bool {
        self.providers == other.providers
            && self.patterns == other.patterns
            && self.effective_from_s == other.effective_from_s
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    #[serde(default)]
    price: Vec<PriceEntryFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceEntryFile {
    providers: Vec<String>,
    models: Vec<String>,
    input: f64,
    output: Option<f64>,
    cache_read: Option<f64>,
    cache_write: Option<f64>,
    effective_from: Option<String>,
    above_input_tokens: Option<u64>,
    input_above: Option<f64>,
    output_above: Option<f64>,
    cache_read_above: Option<f64>,
}

/// What a model lookup needs to know about the route.
pub trait Priced {
    /// The provider's name.
    fn provider(&self) -> &str;
    /// The provider's type.
    fn kind(&self) -> &str;
    /// The upstream model.
    fn model(&self) -> &str;
}

/// Every price, indexed by the provider names and types they apply to.
#[derive(Debug, Default)]
pub struct PriceTable {
    entries: Vec<Entry>,
    /// Provider (type or name) -> indexes into `entries`.
    by_provider: HashMap<String, Vec<usize>>,
}

impl PriceTable {
    /// The bundled table, read over by the file at `path` when given.
    pub fn load(path: Option<&Path>) -> Result<PriceTable, String> {
        let mut entries = parse("the bundled price table", BUNDLED)?;
        if let Some(path) = path {
            let text = read_file(path)?;
            let shown = path.display().to_string();
            for entry in parse(&shown, &text)? {
                match entries.iter_mut().find(|e| e.same_key(&entry)) {
                    Some(existing) => *existing = entry,
                    None => entries.push(entry),
                }
            }
        }
        if entries.len() > ENTRIES_MAX {
            return Err(format!("more than {ENTRIES_MAX} price entries"));
        }
        Ok(PriceTable::from_entries(entries))
    }

    fn from_entries(entries: Vec<Entry>) -> PriceTable {
        let mut by_provider: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            for p in &e.providers {
                by_provider.entry(p.clone()).or_default().push(i);
            }
        }
        PriceTable {
            entries,
            by_provider,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry that prices `route` at `now_s`: of those in effect that name its provider (type
    /// or name) and match its model, an exact name before a pattern, more literal characters
    /// before fewer, the latest effective date, and the later entry (an override) last.
    pub fn lookup(&self, route: &dyn Priced, now_s: u64) -> Option<&Entry> {
        // (exact, literal characters, effective from, position): the larger, the better.
        type Rank = (bool, usize, u64, usize);
        let mut best: Option<(Rank, &Entry)> = None;
        let lists = [route.kind(), route.provider()];
        for (n, key) in lists.iter().enumerate() {
            if n == 1 && lists[0] == lists[1] {
                break;
            }
            for &i in self.by_provider.get(*key).map_or(&[][..], Vec::as_slice) {
                let e = &self.entries[i];
                if e.effective_from_s > now_s {
                    continue;
                }
                for pattern in &e.patterns {
                    if !pattern.matches(route.model()) {
                        continue;
                    }
                    let rank = (pattern.exact, pattern.literal, e.effective_from_s, i);
                    if best.as_ref().is_none_or(|(r, _)| rank > *r) {
                        best = Some((rank, e));
                    }
                }
            }
        }
        best.map(|(_, e)| e)
    }

    /// The cost of `usage` on `route` at `now_s`; `None` when the model has no price.
    pub fn cost(&self, route: &dyn Priced, usage: &Usage, now_s: u64) -> Option<Cost> {
        let entry = self.lookup(route, now_s)?;
        Some(Cost {
            nusd: entry.rates_for(usage).nusd(usage),
        })
    }
}

fn read_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let shown = path.display();
    let file =
        std::fs::File::open(path).map_err(|e| format!("{shown}: cannot read the prices: {e}"))?;
    let mut text = String::new();
    file.take(PRICE_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{shown}: cannot read the prices: {e}"))?;
    if text.len() as u64 > PRICE_FILE_BYTES_MAX {
        return Err(format!("{shown}: larger than {PRICE_FILE_BYTES_MAX} bytes"));
    }
    Ok(text)
}

fn parse(source: &str, text: &str) -> Result<Vec<Entry>, String> {
    let file: PriceFile = toml::from_str(text).map_err(|e| format!("{source}: {e}"))?;
    let mut out = Vec::with_capacity(file.price.len());
    for (i, f) in file.price.into_iter().enumerate() {
        let at = |m: &str| format!("{source}: price[{i}]: {m}");
        if f.providers.is_empty() || f.providers.iter().any(String::is_empty) {
            return Err(at("providers must name at least one provider"));
        }
        if f.models.is_empty() || f.models.iter().any(String::is_empty) {
            return Err(at("models must hold at least one non-empty pattern"));
        }
        let price = |name: &str, v: f64| -> Result<f64, String> {
            if v.is_finite() && (0.0..=PRICE_USD_PER_MTOK_MAX).contains(&v) {
                Ok(v)
            } else {
                Err(at(&format!(
                    "{name} must be within 0..={PRICE_USD_PER_MTOK_MAX} USD per million tokens"
                )))
            }
        };
        let input = price("input", f.input)?;
        let rates = Rates {
            input,
            output: price("output", f.output.unwrap_or(0.0))?,
            cache_read: price("cache_read", f.cache_read.unwrap_or(input))?,
            cache_write: price("cache_write", f.cache_write.unwrap_or(input))?,
        };
        let rates_above = Rates {
            input: price("input_above", f.input_above.unwrap_or(rates.input))?,
            output: price("output_above", f.output_above.unwrap_or(rates.output))?,
            cache_read: price(
                "cache_read_above",
                f.cache_read_above.unwrap_or(rates.cache_read),
            )?,
            cache_write: rates.cache_write,
        };
        let effective_from_s = match f.effective_from.as_deref() {
            None => 0,
            Some(d) => {
                parse_date(d).ok_or_else(|| at("effective_from must be a YYYY-MM-DD date"))?
            }
        };
        out.push(Entry {
            providers: f.providers,
            patterns: f.models.iter().map(|m| Pattern::new(m)).collect(),
            rates,
            above_input_tokens: f.above_input_tokens,
            rates_above,
            effective_from_s,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct R(&'static str, &'static str, &'static str);
    impl Priced for R {
        fn provider(&self) -> &str {
            self.0
        }
        fn kind(&self) -> &str {
            self.1
        }
        fn model(&self) -> &str {
            self.2
        }
    }

    fn usage(input: u64, output: u64, read: u64, write: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: read,
            cache_write_tokens: write,
            ..Usage::default()
        }
    }

    const NOW: u64 = 1_795_000_000; // 2026-11

    #[test]
    fn globs() {
        assert!(glob_match(b"gpt-4o*", b"gpt-4o-2024-08-06"));
        assert!(glob_match(
            b"*anthropic.claude-sonnet-4*",
            b"us.anthropic.claude-sonnet-4-5-v1:0"
        ));
        assert!(glob_match(b"a?c", b"abc") && !glob_match(b"a?c", b"ac"));
        assert!(glob_match(b"*", b"") && !glob_match(b"x*", b""));
        assert!(!glob_match(b"gpt-4o", b"gpt-4o-mini"));
    }

    #[test]
    fn the_bundled_table_parses_and_prices_each_family() {
        let t = PriceTable::load(None).unwrap();
        assert!(t.len() > 50);
        let cases: [(R, f64); 9] = [
            (R("openai", "openai", "gpt-4o-2024-08-06"), 2.50),
            (R("azure", "azure", "gpt-4o-mini"), 0.15),
            (R("claude", "anthropic", "claude-sonnet-4-5-20250929"), 3.00),
            (
                R(
                    "bedrock",
                    "bedrock",
                    "us.anthropic.claude-haiku-4-5-20251001-v1:0",
                ),
                1.00,
            ),
            (R("bedrock", "bedrock", "amazon.nova-pro-v1:0"), 0.80),
            (R("vertex", "vertex", "gemini-2.5-flash"), 0.30),
            (R("groq", "openai", "llama-3.3-70b-versatile"), 0.59),
            (R("xai", "openai", "grok-4"), 3.00),
            (R("mistral", "openai", "mistral-small-latest"), 0.10),
        ];
        for (route, input) in cases {
            let e = t
                .lookup(&route, NOW)
                .unwrap_or_else(|| panic!("{}", route.2));
            assert_eq!(e.rates.input, input, "{}", route.2);
        }
        assert!(t.lookup(&R("mock", "mock", "gpt-4o"), NOW).is_none());
        assert!(t
            .lookup(&R("openai", "openai", "no-such-model"), NOW)
            .is_none());
    }

    #[test]
    fn more_specific_patterns_win() {
        let t = PriceTable::load(None).unwrap();
        let mini = t.lookup(&R("openai", "openai", "gpt-4o-mini-2024-07-18"), NOW);
        assert_eq!(mini.unwrap().rates.input, 0.15);
        let nano = t.lookup(&R("openai", "openai", "gpt-5-nano"), NOW);
        assert_eq!(nano.unwrap().rates.input, 0.05);
    }

    #[test]
    fn effective_dates_pick_the_price_of_the_day() {
        let t = PriceTable::load(None).unwrap();
        let r = R("deepseek", "openai", "deepseek-chat");
        let before = parse_date("2025-06-01").unwrap();
        assert_eq!(t.lookup(&r, before).unwrap().rates.input, 0.27);
        assert_eq!(t.lookup(&r, NOW).unwrap().rates.input, 0.28);
        assert!(t.lookup(&r, parse_date("2024-01-01").unwrap()).is_none());
    }

    #[test]
    fn costs_split_cached_tokens_out_of_the_input() {
        let t = PriceTable::load(None).unwrap();
        let r = R("anthropic", "anthropic", "claude-sonnet-4-5");
        // 1M uncached at $3, 1M cache reads at $0.30, 1M cache writes at $3.75, 1M out at $15.
        let c = t.cost(&r, &usage(3_000_000, 1_000_000, 1_000_000, 1_000_000), NOW);
        assert_eq!(c.unwrap().nusd, 22_050_000_000);
        let c = t.cost(&r, &usage(10, 5, 0, 0), NOW).unwrap();
        assert_eq!(c.nusd, 30_000 + 75_000);
    }

    #[test]
    fn long_context_tier() {
        let t = PriceTable::load(None).unwrap();
        let r = R("gemini", "gemini", "gemini-2.5-pro");
        let short = t.cost(&r, &usage(200_000, 0, 0, 0), NOW).unwrap();
        let long = t.cost(&r, &usage(200_001, 0, 0, 0), NOW).unwrap();
        assert_eq!(short.nusd, 250_000_000);
        assert_eq!(long.nusd, 500_002_500);
    }

    #[test]
    fn an_override_replaces_and_adds() {
        let dir = std::env::temp_dir().join(format!("dis-prices-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.toml");
        std::fs::write(
            &path,
            "[[price]]\nproviders = [\"openai\", \"azure\"]\nmodels = [\"gpt-4o\", \"gpt-4o-20*\", \"chatgpt-4o*\"]\ninput = 9\neffective_from = \"2024-10-01\"\n\n[[price]]\nproviders = [\"mock\"]\nmodels = [\"*\"]\ninput = 1\noutput = 2\n",
        )
        .unwrap();
        let t = PriceTable::load(Some(&path)).unwrap();
        let e = t.lookup(&R("openai", "openai", "gpt-4o"), NOW).unwrap();
        assert_eq!(e.rates.input, 9.0);
        let c = t.cost(
            &R("mock", "mock", "anything"),
            &usage(1000, 1000, 0, 0),
            NOW,
        );
        assert_eq!(c, Some(Cost { nusd: 3_000_000 }));
        std::fs::write(
            &path,
            "[[price]]\nproviders = [\"x\"]\nmodels = [\"y\"]\ninput = -1\n",
        )
        .unwrap();
        let e = PriceTable::load(Some(&path)).unwrap_err();
        assert!(e.contains("price[0]: input"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2024-02-29"), Some(1_709_164_800));
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(parse_date("2024-2-1"), None);
        assert_eq!(
            civil_from_days(days_from_civil(2026, 11, 29)),
            (2026, 11, 29)
        );
    }
}

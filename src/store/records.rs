//! Virtual keys and teams as stored: their records, the changes an operator asks for (the admin
//! API and the CLI share them), validation, key material (`dis-` keys, shown once, stored as
//! SHA-256), and the statements that read and write them. Every value reaches SQL as a bound
//! parameter, never as text of the statement.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use crate::config::sha256;

/// What every virtual key starts with.
pub const KEY_PREFIX: &str = "dis-";
/// Random bytes in a key (256 bits), written as 43 base64url characters.
pub const KEY_RANDOM_BYTES: usize = 32;
/// Characters of a key kept in clear to tell keys apart in lists (`dis-` and 6 more).
pub const KEY_SHOWN_CHARS: usize = KEY_PREFIX.len() + 6;
/// Longest key or team name, characters.
pub const NAME_CHARS_MAX: usize = 128;
/// Most provider or model patterns of one key.
pub const PATTERNS_MAX: usize = 64;
/// Longest pattern, bytes.
pub const PATTERN_BYTES_MAX: usize = 256;
/// Largest USD budget, dollars.
pub const BUDGET_USD_MAX: f64 = 1e9;
/// Largest rate limit (requests or tokens per minute).
pub const RATE_PER_MINUTE_MAX: u64 = 1_000_000_000;
/// Most keys and most teams the store holds (the gateway keeps every key in memory).
pub const KEYS_MAX: i64 = 1_000_000;

/// A budget's window: calendar periods in UTC (weeks start on Monday).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    pub fn parse(text: &str) -> Option<Period> {
        match text {
            "day" | "daily" => Some(Period::Day),
            "week" | "weekly" => Some(Period::Week),
            "month" | "monthly" => Some(Period::Month),
            _ => None,
        }
    }

    /// Unix seconds at which the period holding `now_s` began.
    pub fn start_s(self, now_s: u64) -> u64 {
        let days = (now_s / 86_400) as i64;
        let start_day = match self {
            Period::Day => days,
            // 1970-01-01 was a Thursday: Monday is 3 days before.
            Period::Week => days - (days + 3).rem_euclid(7),
            Period::Month => {
                let (y, m, _) = crate::cost::civil_from_days(days);
                crate::cost::days_from_civil(y, m, 1)
            }
        };
        (start_day.max(0) as u64) * 86_400
    }

    /// Unix seconds at which the period holding `now_s` ends (the next one begins).
    pub fn end_s(self, now_s: u64) -> u64 {
        let start = self.start_s(now_s);
        match self {
            Period::Day => start + 86_400,
            Period::Week => start + 7 * 86_400,
            Period::Month => {
                let (y, m, _) = crate::cost::civil_from_days((start / 86_400) as i64);
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (crate::cost::days_from_civil(y, m, 1).max(0) as u64) * 86_400
            }
        }
    }
}

/// A spending limit over a period: nano-dollars or tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub amount: u64,
    pub period: Period,
}

/// Limits and budgets shared by keys and teams.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Requests per minute; `None`: unlimited.
    pub rpm: Option<u64>,
    /// Tokens (input + output) per minute; `None`: unlimited.
    pub tpm: Option<u64>,
    /// USD budget in nano-dollars.
    pub budget_usd: Option<Budget>,
    /// Token budget (input + output).
    pub budget_tokens: Option<Budget>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeamRecord {
    pub id: i64,
    pub name: String,
    pub limits: Limits,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: i64,
    pub name: String,
    /// SHA-256 of the whole key.
    pub hash: [u8; 32],
    /// The key's first [`KEY_SHOWN_CHARS`] characters.
    pub prefix: String,
    pub owner: Option<String>,
    pub team_id: Option<i64>,
    /// Provider name patterns it may use; empty: any.
    pub providers: Vec<String>,
    /// Model patterns (`provider/model`, or the model as the client names it); empty: any.
    pub models: Vec<String>,
    pub limits: Limits,
    /// Refuse models the price table does not know (only meaningful with a USD budget).
    pub refuse_unknown_cost: bool,
    /// Unix seconds after which the key is refused.
    pub expires_at: Option<i64>,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A change to a key or a team, as the admin API (JSON) and the CLI (flags) give it: an absent
/// field is left as it is; an empty string or 0 clears a limit.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub name: Option<String>,
    /// Keys only: who holds it (free text).
    pub owner: Option<String>,
    /// Keys only: the team's name ("" for none).
    pub team: Option<String>,
    /// Keys only.
    pub providers: Option<Vec<String>>,
    /// Keys only.
    pub models: Option<Vec<String>>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// `"<usd>/<day|week|month>"`, "" for none.
    pub budget_usd: Option<String>,
    /// `"<tokens>/<day|week|month>"`, "" for none.
    pub budget_tokens: Option<String>,
    /// Keys only.
    pub refuse_unknown_cost: Option<bool>,
    /// Keys only: `YYYY-MM-DD` (UTC midnight), or Unix seconds; "" for never.
    pub expires: Option<String>,
    pub enabled: Option<bool>,
}

/// Why an operation on keys or teams failed; the admin API maps it to a status.
#[derive(Debug, PartialEq, Eq)]
pub enum StoreError {
    /// Bad input: 400.
    Invalid(String),
    /// No such key or team: 404.
    NotFound(String),
    /// A name already taken: 409.
    Conflict(String),
    /// The database failed: 500 (the text is for the log).
    Db(String),
    /// The store thread is busy or gone: 503.
    Busy,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Invalid(m) | StoreError::NotFound(m) | StoreError::Conflict(m) => {
                f.write_str(m)
            }
            StoreError::Db(m) => write!(f, "database error: {m}"),
            StoreError::Busy => f.write_str("the store is busy; retry"),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        if let rusqlite::Error::SqliteFailure(f, _) = &e {
            if f.code == rusqlite::ErrorCode::ConstraintViolation {
                return StoreError::Conflict("that name is already taken".to_string());
            }
        }
        StoreError::Db(e.to_string())
    }
}

/// A new key: `dis-` and 43 base64url characters of 32 random bytes from the system's CSPRNG.
pub fn generate_key() -> Result<String, StoreError> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; KEY_RANDOM_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| StoreError::Db("the system random source failed".into()))?;
    let mut key = String::from(KEY_PREFIX);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(bytes, &mut key);
    Ok(key)
}

/// Whether `text` has the shape of a key this gateway makes.
pub fn looks_like_key(text: &[u8]) -> bool {
    text.len() == KEY_PREFIX.len() + 43
        && text.starts_with(KEY_PREFIX.as_bytes())
        && text[KEY_PREFIX.len()..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

fn check_name(name: &str) -> Result<String, StoreError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > NAME_CHARS_MAX {
        return Err(StoreError::Invalid(format!(
            "a name has 1..={NAME_CHARS_MAX} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(StoreError::Invalid(
            "a name may not hold control characters".into(),
        ));
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(StoreError::Invalid(
            "a name may not be all digits (digits alone name an id)".into(),
        ));
    }
    Ok(name.to_string())
}

fn check_patterns(what: &str, list: &[String]) -> Result<Vec<String>, StoreError> {
    if list.len() > PATTERNS_MAX {
        return Err(StoreError::Invalid(format!(
            "at most {PATTERNS_MAX} {what} patterns"
        )));
    }
    let mut out = Vec::with_capacity(list.len());
    for p in list {
        let p = p.trim();
        if p.is_empty() || p.len() > PATTERN_BYTES_MAX || p.chars().any(char::is_control) {
            return Err(StoreError::Invalid(format!(
                "a {what} pattern has 1..={PATTERN_BYTES_MAX} printable bytes"
            )));
        }
        out.push(p.to_string());
    }
    Ok(out)
}

fn check_rate(what: &str, v: u64) -> Result<Option<u64>, StoreError> {
    match v {
        0 => Ok(None),
        v if v <= RATE_PER_MINUTE_MAX => Ok(Some(v)),
        _ => Err(StoreError::Invalid(format!(
            "{what} is at most {RATE_PER_MINUTE_MAX}"
        ))),
    }
}

/// `"<amount>/<period>"`; "" or "none" is no budget. `usd`: the amount is dollars (kept in
/// nano-dollars), else tokens.
pub fn parse_budget(text: &str, usd: bool) -> Result<Option<Budget>, StoreError> {
    let text = text.trim();
    if text.is_empty() || text == "none" {
        return Ok(None);
    }
    let bad = || {
        StoreError::Invalid(format!(
            "a budget is \"<{}>/<day|week|month>\", e.g. \"{}\"",
            if usd { "usd" } else { "tokens" },
            if usd { "50/month" } else { "1000000/day" }
        ))
    };
    let (amount, period) = text.split_once('/').ok_or_else(bad)?;
    let period = Period::parse(period.trim()).ok_or_else(bad)?;
    let amount = amount.trim().trim_start_matches('$');
    let amount = if usd {
        let dollars: f64 = amount.parse().map_err(|_| bad())?;
        if !dollars.is_finite() || dollars <= 0.0 || dollars > BUDGET_USD_MAX {
            return Err(StoreError::Invalid(format!(
                "a USD budget is more than 0 and at most {BUDGET_USD_MAX}"
            )));
        }
        (dollars * crate::cost::NANO_PER_USD).round() as u64
    } else {
        let tokens: u64 = amount.parse().map_err(|_| bad())?;
        if tokens == 0 {
            return Err(bad());
        }
        tokens
    };
    Ok(Some(Budget { amount, period }))
}

/// `YYYY-MM-DD` or Unix seconds; "" or "never" is none.
pub fn parse_expiry(text: &str) -> Result<Option<i64>, StoreError> {
    let text = text.trim();
    if text.is_empty() || text == "never" {
        return Ok(None);
    }
    if let Ok(s) = text.parse::<i64>() {
        return Ok(Some(s));
    }
    crate::cost::parse_date(text)
        .map(|s| Some(s as i64))
        .ok_or_else(|| StoreError::Invalid("an expiry is YYYY-MM-DD or Unix seconds".into()))
}

/// Apply the limit fields of `c` to `l`.
fn apply_limits(l: &mut Limits, c: &Change) -> Result<(), StoreError> {
    if let Some(v) = c.rpm {
        l.rpm = check_rate("rpm", v)?;
    }
    if let Some(v) = c.tpm {
        l.tpm = check_rate("tpm", v)?;
    }
    if let Some(b) = &c.budget_usd {
        l.budget_usd = parse_budget(b, true)?;
    }
    if let Some(b) = &c.budget_tokens {
        l.budget_tokens = parse_budget(b, false)?;
    }
    Ok(())
}

fn now_s() -> i64 {
    crate::cost::now_unix_s() as i64
}

fn budget_cols(b: Option<Budget>) -> (Option<i64>, Option<&'static str>) {
    match b {
        Some(b) => (Some(b.amount as i64), Some(b.period.as_str())),
        None => (None, None),
    }
}

fn budget_of(amount: Option<i64>, period: Option<String>) -> Option<Budget> {
    Some(Budget {
        amount: u64::try_from(amount?).ok()?,
        period: Period::parse(period.as_deref()?)?,
    })
}

fn limits_of(row: &Row<'_>, at: usize) -> rusqlite::Result<Limits> {
    let int = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(row
            .get::<_, Option<i64>>(i)?
            .and_then(|v| u64::try_from(v).ok()))
    };
    Ok(Limits {
        rpm: int(at)?,
        tpm: int(at + 1)?,
        budget_usd: budget_of(row.get(at + 2)?, row.get(at + 3)?),
        budget_tokens: budget_of(row.get(at + 4)?, row.get(at + 5)?),
    })
}

const TEAM_COLUMNS: &str = "id, name, rpm, tpm, budget_usd_nusd, budget_usd_period, \
     budget_tokens, budget_tokens_period, enabled, created_at, updated_at";

fn team_of(row: &Row<'_>) -> rusqlite::Result<TeamRecord> {
    Ok(TeamRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        limits: limits_of(row, 2)?,
        enabled: row.get::<_, i64>(8)? != 0,
        created_at: row.get(9)?,
        updated_at: row.get(10)?,
    })
}

const KEY_COLUMNS: &str = "id, name, hash, prefix, owner, team_id, providers, models, rpm, tpm, \
     budget_usd_nusd, budget_usd_period, budget_tokens, budget_tokens_period, \
     refuse_unknown_cost, expires_at, enabled, created_at, updated_at";

fn key_of(row: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    let hash: Vec<u8> = row.get(2)?;
    let mut h = [0u8; 32];
    if hash.len() == 32 {
        h.copy_from_slice(&hash);
    }
    let list = |i: usize| -> rusqlite::Result<Vec<String>> {
        let text: String = row.get(i)?;
        Ok(serde_json::from_str(&text).unwrap_or_default())
    };
    Ok(KeyRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        hash: h,
        prefix: row.get(3)?,
        owner: row.get(4)?,
        team_id: row.get(5)?,
        providers: list(6)?,
        models: list(7)?,
        limits: limits_of(row, 8)?,
        refuse_unknown_cost: row.get::<_, i64>(14)? != 0,
        expires_at: row.get(15)?,
        enabled: row.get::<_, i64>(16)? != 0,
        created_at: row.get(17)?,
        updated_at: row.get(18)?,
    })
}

/// Every team, by id.
pub fn teams(conn: &Connection) -> Result<Vec<TeamRecord>, StoreError> {
    let mut st = conn.prepare_cached(&format!("SELECT {TEAM_COLUMNS} FROM teams ORDER BY id"))?;
    let rows = st.query_map([], team_of)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every key, by id.
pub fn keys(conn: &Connection) -> Result<Vec<KeyRecord>, StoreError> {
    let mut st = conn.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY id"))?;
    let rows = st.query_map([], key_of)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The team `reference` names: an id (digits) or a name.
pub fn team(conn: &Connection, reference: &str) -> Result<TeamRecord, StoreError> {
    let (sql, by_id) = lookup_sql("teams", TEAM_COLUMNS, reference);
    let found = match by_id {
        Some(id) => conn.query_row(&sql, [id], team_of).optional()?,
        None => conn.query_row(&sql, [reference], team_of).optional()?,
    };
    found.ok_or_else(|| StoreError::NotFound(format!("no team {reference:?}")))
}

/// The key `reference` names: an id (digits) or a name.
pub fn key(conn: &Connection, reference: &str) -> Result<KeyRecord, StoreError> {
    let (sql, by_id) = lookup_sql("keys", KEY_COLUMNS, reference);
    let found = match by_id {
        Some(id) => conn.query_row(&sql, [id], key_of).optional()?,
        None => conn.query_row(&sql, [reference], key_of).optional()?,
    };
    found.ok_or_else(|| StoreError::NotFound(format!("no key {reference:?}")))
}

fn lookup_sql(table: &str, columns: &str, reference: &str) -> (String, Option<i64>) {
    match reference.parse::<i64>() {
        Ok(id) => (
            format!("SELECT {columns} FROM {table} WHERE id = ?1"),
            Some(id),
        ),
        Err(_) => (
            format!("SELECT {columns} FROM {table} WHERE name = ?1"),
            None,
        ),
    }
}

fn count(conn: &Connection, table: &str) -> Result<i64, StoreError> {
    Ok(conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?)
}

/// Create a team from `c` (a name is required).
pub fn create_team(conn: &Connection, c: &Change) -> Result<TeamRecord, StoreError> {
    let name = check_name(c.name.as_deref().unwrap_or(""))?;
    only_team_fields(c)?;
    if count(conn, "teams")? >= KEYS_MAX {
        return Err(StoreError::Invalid(format!("at most {KEYS_MAX} teams")));
    }
    let mut limits = Limits::default();
    apply_limits(&mut limits, c)?;
    let now = now_s();
    let (bu, bup) = budget_cols(limits.budget_usd);
    let (bt, btp) = budget_cols(limits.budget_tokens);
    conn.execute(
        "INSERT INTO teams (name, rpm, tpm, budget_usd_nusd, budget_usd_period, budget_tokens, \
         budget_tokens_period, enabled, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
        params![
            name,
            limits.rpm.map(|v| v as i64),
            limits.tpm.map(|v| v as i64),
            bu,
            bup,
            bt,
            btp,
            i64::from(c.enabled.unwrap_or(true)),
            now
        ],
    )?;
    team(conn, &conn.last_insert_rowid().to_string())
}

fn only_team_fields(c: &Change) -> Result<(), StoreError> {
    let key_only = c.owner.is_some()
        || c.team.is_some()
        || c.providers.is_some()
        || c.models.is_some()
        || c.refuse_unknown_cost.is_some()
        || c.expires.is_some();
    if key_only {
        return Err(StoreError::Invalid(
            "teams take name, rpm, tpm, budget_usd, budget_tokens and enabled".into(),
        ));
    }
    Ok(())
}

/// Change the team `reference` names.
pub fn update_team(
    conn: &Connection,
    reference: &str,
    c: &Change,
) -> Result<TeamRecord, StoreError> {
    only_team_fields(c)?;
    let mut t = team(conn, reference)?;
    if let Some(name) = &c.name {
        t.name = check_name(name)?;
    }
    apply_limits(&mut t.limits, c)?;
    if let Some(e) = c.enabled {
        t.enabled = e;
    }
    let (bu, bup) = budget_cols(t.limits.budget_usd);
    let (bt, btp) = budget_cols(t.limits.budget_tokens);
    conn.execute(
        "UPDATE teams SET name = ?2, rpm = ?3, tpm = ?4, budget_usd_nusd = ?5, \
         budget_usd_period = ?6, budget_tokens = ?7, budget_tokens_period = ?8, enabled = ?9, \
         updated_at = ?10 WHERE id = ?1",
        params![
            t.id,
            t.name,
            t.limits.rpm.map(|v| v as i64),
            t.limits.tpm.map(|v| v as i64),
            bu,
            bup,
            bt,
            btp,
            i64::from(t.enabled),
            now_s()
        ],
    )?;
    team(conn, &t.id.to_string())
}

/// Delete the team `reference` names; its keys stay, without a team.
pub fn delete_team(conn: &Connection, reference: &str) -> Result<TeamRecord, StoreError> {
    let t = team(conn, reference)?;
    conn.execute("DELETE FROM teams WHERE id = ?1", [t.id])?;
    Ok(t)
}

fn team_id_of(conn: &Connection, name: &str) -> Result<Option<i64>, StoreError> {
    if name.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some(team(conn, name.trim())?.id))
}

/// Create a key from `c` (a name is required): the record and the key itself, which is shown
/// this once and never stored.
pub fn create_key(conn: &Connection, c: &Change) -> Result<(KeyRecord, String), StoreError> {
    let name = check_name(c.name.as_deref().unwrap_or(""))?;
    if count(conn, "keys")? >= KEYS_MAX {
        return Err(StoreError::Invalid(format!("at most {KEYS_MAX} keys")));
    }
    let secret = generate_key()?;
    let mut k = KeyRecord {
        id: 0,
        name,
        hash: sha256(secret.as_bytes()),
        prefix: secret[..KEY_SHOWN_CHARS].to_string(),
        owner: None,
        team_id: None,
        providers: Vec::new(),
        models: Vec::new(),
        limits: Limits::default(),
        refuse_unknown_cost: false,
        expires_at: None,
        enabled: true,
        created_at: now_s(),
        updated_at: now_s(),
    };
    apply_key_change(conn, &mut k, c)?;
    write_key(conn, &k, true)?;
    let created = key(conn, &conn.last_insert_rowid().to_string())?;
    Ok((created, secret))
}

fn apply_key_change(conn: &Connection, k: &mut KeyRecord, c: &Change) -> Result<(), StoreError> {
    if let Some(name) = &c.name {
        k.name = check_name(name)?;
    }
    if let Some(owner) = &c.owner {
        let owner = owner.trim();
        if owner.chars().count() > NAME_CHARS_MAX || owner.chars().any(char::is_control) {
            return Err(StoreError::Invalid(format!(
                "an owner has at most {NAME_CHARS_MAX} printable characters"
            )));
        }
        k.owner = (!owner.is_empty()).then(|| owner.to_string());
    }
    if let Some(team) = &c.team {
        k.team_id = team_id_of(conn, team)?;
    }
    if let Some(p) = &c.providers {
        k.providers = check_patterns("provider", p)?;
    }
    if let Some(m) = &c.models {
        k.models = check_patterns("model", m)?;
    }
    apply_limits(&mut k.limits, c)?;
    if let Some(r) = c.refuse_unknown_cost {
        k.refuse_unknown_cost = r;
    }
    if let Some(e) = &c.expires {
        k.expires_at = parse_expiry(e)?;
    }
    if let Some(e) = c.enabled {
        k.enabled = e;
    }
    Ok(())
}

fn write_key(conn: &Connection, k: &KeyRecord, insert: bool) -> Result<(), StoreError> {
    let (bu, bup) = budget_cols(k.limits.budget_usd);
    let (bt, btp) = budget_cols(k.limits.budget_tokens);
    let providers = serde_json::to_string(&k.providers).unwrap_or_else(|_| "[]".into());
    let models = serde_json::to_string(&k.models).unwrap_or_else(|_| "[]".into());
    let sql = if insert {
        "INSERT INTO keys (name, hash, prefix, owner, team_id, providers, models, rpm, tpm, \
         budget_usd_nusd, budget_usd_period, budget_tokens, budget_tokens_period, \
         refuse_unknown_cost, expires_at, enabled, created_at, updated_at) \
         VALUES (?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?18)"
    } else {
        "UPDATE keys SET name = ?2, hash = ?3, prefix = ?4, owner = ?5, team_id = ?6, \
         providers = ?7, models = ?8, rpm = ?9, tpm = ?10, budget_usd_nusd = ?11, \
         budget_usd_period = ?12, budget_tokens = ?13, budget_tokens_period = ?14, \
         refuse_unknown_cost = ?15, expires_at = ?16, enabled = ?17, updated_at = ?18 \
         WHERE id = ?1"
    };
    conn.execute(
        sql,
        params![
            k.id,
            k.name,
            &k.hash[..],
            k.prefix,
            k.owner,
            k.team_id,
            providers,
            models,
            k.limits.rpm.map(|v| v as i64),
            k.limits.tpm.map(|v| v as i64),
            bu,
            bup,
            bt,
            btp,
            i64::from(k.refuse_unknown_cost),
            k.expires_at,
            i64::from(k.enabled),
            now_s()
        ],
    )?;
    Ok(())
}

/// Change the key `reference` names.
pub fn update_key(conn: &Connection, reference: &str, c: &Change) -> Result<KeyRecord, StoreError> {
    let mut k = key(conn, reference)?;
    apply_key_change(conn, &mut k, c)?;
    write_key(conn, &k, false)?;
    key(conn, &k.id.to_string())
}

/// Give the key `reference` names a new secret (shown this once); the old one stops working at
/// once. Limits, budgets and spend stay with the key.
pub fn rotate_key(conn: &Connection, reference: &str) -> Result<(KeyRecord, String), StoreError> {
    let mut k = key(conn, reference)?;
    let secret = generate_key()?;
    k.hash = sha256(secret.as_bytes());
    k.prefix = secret[..KEY_SHOWN_CHARS].to_string();
    write_key(conn, &k, false)?;
    Ok((key(conn, &k.id.to_string())?, secret))
}

/// Delete the key `reference` names (its ledger rows stay, under its id).
pub fn delete_key(conn: &Connection, reference: &str) -> Result<KeyRecord, StoreError> {
    let k = key(conn, reference)?;
    conn.execute("DELETE FROM keys WHERE id = ?1", [k.id])?;
    Ok(k)
}

/// The version key and team changes bump (a trigger does), to notice another process's edits.
pub fn keys_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT value FROM meta WHERE name = 'keys_version'",
        [],
        |r| r.get(0),
    )?)
}

fn budget_json(b: &Option<Budget>, usd: bool) -> serde_json::Value {
    match b {
        None => serde_json::Value::Null,
        Some(b) if usd => serde_json::json!({
            "usd": b.amount as f64 / crate::cost::NANO_PER_USD, "period": b.period.as_str()
        }),
        Some(b) => serde_json::json!({"tokens": b.amount, "period": b.period.as_str()}),
    }
}

fn limits_json(l: &Limits) -> serde_json::Value {
    serde_json::json!({
        "rpm": l.rpm,
        "tpm": l.tpm,
        "budget_usd": budget_json(&l.budget_usd, true),
        "budget_tokens": budget_json(&l.budget_tokens, false),
    })
}

impl TeamRecord {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "limits": limits_json(&self.limits),
            "enabled": self.enabled,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

impl KeyRecord {
    /// The record for the admin API and the CLI: never the hash, only the shown prefix.
    pub fn to_json(&self, team: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "owner": self.owner,
            "team": team,
            "providers": self.providers,
            "models": self.models,
            "limits": limits_json(&self.limits),
            "refuse_unknown_cost": self.refuse_unknown_cost,
            "expires_at": self.expires_at,
            "enabled": self.enabled,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        c.execute_batch("PRAGMA foreign_keys = ON;").unwrap();
        super::super::schema::migrate(&mut c).unwrap();
        c
    }

    fn change(name: &str) -> Change {
        Change {
            name: Some(name.into()),
            ..Change::default()
        }
    }

    #[test]
    fn periods_follow_the_utc_calendar() {
        let t = crate::cost::parse_date("2026-11-29").unwrap() + 3600; // a Sunday
        assert_eq!(Period::Day.start_s(t), t - 3600);
        assert_eq!(
            Period::Week.start_s(t),
            crate::cost::parse_date("2026-11-23").unwrap()
        );
        assert_eq!(
            Period::Month.end_s(t),
            crate::cost::parse_date("2026-12-01").unwrap()
        );
        let dec = crate::cost::parse_date("2026-12-31").unwrap();
        assert_eq!(
            Period::Month.end_s(dec),
            crate::cost::parse_date("2027-01-01").unwrap()
        );
    }

    #[test]
    fn budgets_parse() {
        let b = parse_budget("50/month", true).unwrap().unwrap();
        assert_eq!((b.amount, b.period), (50_000_000_000, Period::Month));
        assert_eq!(
            parse_budget("1000/day", false).unwrap().unwrap().amount,
            1000
        );
        assert_eq!(parse_budget("", true).unwrap(), None);
        for bad in ["50", "50/year", "-1/day", "x/day", "0/day"] {
            assert!(parse_budget(bad, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_round_trip_and_secrets_are_hashed() {
        let c = db();
        let team = create_team(&c, &change("ml")).unwrap();
        let mut ch = change("ci");
        ch.team = Some("ml".into());
        ch.models = Some(vec!["openai/*".into()]);
        ch.rpm = Some(600);
        ch.budget_usd = Some("50/month".into());
        let (k, secret) = create_key(&c, &ch).unwrap();
        assert!(looks_like_key(secret.as_bytes()), "{secret}");
        assert_eq!(k.hash, sha256(secret.as_bytes()));
        assert_eq!(k.team_id, Some(team.id));
        assert_eq!(k.limits.rpm, Some(600));
        let stored: Vec<u8> = c
            .query_row("SELECT hash FROM keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, k.hash.to_vec());
        let dump: String = c
            .query_row("SELECT group_concat(prefix || name) FROM keys", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(!dump.contains(&secret));
        let (rotated, new_secret) = rotate_key(&c, "ci").unwrap();
        assert_ne!(rotated.hash, k.hash);
        assert_ne!(new_secret, secret);
        let off = Change {
            enabled: Some(false),
            rpm: Some(0),
            ..Change::default()
        };
        let k = update_key(&c, &k.id.to_string(), &off).unwrap();
        assert!(!k.enabled && k.limits.rpm.is_none());
        assert_eq!(
            create_key(&c, &change("ci")).unwrap_err(),
            StoreError::Conflict("that name is already taken".into())
        );
        delete_team(&c, "ml").unwrap();
        assert_eq!(key(&c, "ci").unwrap().team_id, None);
        delete_key(&c, "ci").unwrap();
        assert!(matches!(key(&c, "ci"), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn sql_looking_names_are_plain_names() {
        let c = db();
        let name = "x'); DROP TABLE keys; --";
        let (k, _) = create_key(&c, &change(name)).unwrap();
        assert_eq!(key(&c, name).unwrap().id, k.id);
        assert_eq!(keys(&c).unwrap().len(), 1);
        assert!(create_key(&c, &change("12345")).is_err());
        assert!(create_key(&c, &change("a\nb")).is_err());
    }

    #[test]
    fn the_version_moves_with_every_change() {
        let c = db();
        let v0 = keys_version(&c).unwrap();
        create_key(&c, &change("a")).unwrap();
        create_team(&c, &change("t")).unwrap();
        assert_eq!(keys_version(&c).unwrap(), v0 + 2);
    }
}

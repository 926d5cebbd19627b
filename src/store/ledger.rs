//! The usage ledger: one row per request, written by one writer thread in batches (one
//! transaction each) from a bounded queue the request path only ever `try_send`s to (a full queue
//! drops the row and counts it); bounded retention; the reports grouped by key, team, provider and
//! model; and the spend sums budgets are rebuilt from at start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use rusqlite::{params, Connection};
use serde::Serialize;

use super::StoreError;
use crate::config::StoreConfig;
use crate::log;

/// How often the writer deletes rows past retention.
pub const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// Rows deleted per retention step (each its own transaction, so the writer never holds the
/// database long).
pub const RETENTION_STEP_ROWS: i64 = 10_000;
/// Most groups a usage report returns.
pub const REPORT_GROUPS_MAX: usize = 100_000;

/// One request, as the ledger keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerRow {
    pub ts_ms: i64,
    pub request_id: String,
    pub key_id: Option<i64>,
    pub team_id: Option<i64>,
    pub provider: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    /// `None`: cost unknown (no price for the model) or nothing served.
    pub cost_nusd: Option<u64>,
    pub status: u16,
    pub latency_ms: u64,
    pub stream: bool,
    /// The client API (`openai_chat`, `anthropic_messages`, ...).
    pub api: &'static str,
}

/// What the writer thread is sent.
pub(super) enum Message {
    Row(Box<LedgerRow>),
    /// Commit everything queued before this, then answer.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// The ledger's counters (for `/stats` and `/metrics`).
#[derive(Default)]
pub struct LedgerCounters {
    /// Rows queued for the writer.
    pub queued: AtomicU64,
    /// Rows dropped because the queue was full (the request never waits).
    pub dropped: AtomicU64,
    /// Rows committed.
    pub written: AtomicU64,
    /// Batches whose commit failed (their rows are lost and counted here).
    pub write_errors: AtomicU64,
    pub rows_lost: AtomicU64,
    /// Rows deleted past retention.
    pub expired: AtomicU64,
}

impl LedgerCounters {
    pub fn to_json(&self) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "queued": g(&self.queued),
            "dropped": g(&self.dropped),
            "written": g(&self.written),
            "write_errors": g(&self.write_errors),
            "rows_lost": g(&self.rows_lost),
            "expired": g(&self.expired),
        })
    }
}

const INSERT: &str = "INSERT INTO usage (ts_ms, request_id, key_id, team_id, provider, model, \
     input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, \
     cost_nusd, status, latency_ms, stream, api) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)";

fn insert_batch(conn: &mut Connection, rows: &[LedgerRow]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut st = tx.prepare_cached(INSERT)?;
        for r in rows {
            st.execute(params![
                r.ts_ms,
                r.request_id,
                r.key_id,
                r.team_id,
                r.provider,
                r.model,
                r.input_tokens as i64,
                r.output_tokens as i64,
                r.cache_read_tokens as i64,
                r.cache_write_tokens as i64,
                r.reasoning_tokens as i64,
                r.cost_nusd.map(|c| c as i64),
                i64::from(r.status),
                r.latency_ms as i64,
                i64::from(r.stream),
                r.api,
            ])?;
        }
    }
    tx.commit()
}

/// Delete rows older than `retention_days`, a step at a time; how many were deleted.
pub fn expire(conn: &Connection, retention_days: u32, now_ms: i64) -> rusqlite::Result<u64> {
    let cutoff = now_ms - i64::from(retention_days) * 86_400_000;
    let mut total = 0u64;
    loop {
        let n = conn.execute(
            "DELETE FROM usage WHERE id IN \
             (SELECT id FROM usage WHERE ts_ms < ?1 ORDER BY id LIMIT ?2)",
            params![cutoff, RETENTION_STEP_ROWS],
        )?;
        total += n as u64;
        if (n as i64) < RETENTION_STEP_ROWS {
            return Ok(total);
        }
    }
}

/// The writer thread's loop: every `batch_interval` it takes what is queued, committing it in
/// batches of up to `batch_rows_max` rows (one transaction each), answers the flushes queued
/// behind those rows, and every [`RETENTION_EVERY`] deletes what is past retention. It never
/// blocks on the queue: a sender never has a sleeping receiver to wake, so queueing a row costs
/// the request path no system call. Returns when every sender is gone and the queue is drained.
pub(super) fn run_writer(
    mut conn: Connection,
    rx: Receiver<Message>,
    config: StoreConfig,
    counters: Arc<LedgerCounters>,
) {
    let mut batch: Vec<LedgerRow> = Vec::with_capacity(config.batch_rows_max);
    let mut flushes: Vec<std::sync::mpsc::SyncSender<()>> = Vec::new();
    let mut next_expiry = Instant::now();
    loop {
        std::thread::sleep(config.batch_interval);
        let closed = loop {
            match rx.try_recv() {
                Ok(Message::Row(r)) => {
                    batch.push(*r);
                    if batch.len() >= config.batch_rows_max {
                        commit(&mut conn, &mut batch, &counters);
                    }
                }
                Ok(Message::Flush(f)) => {
                    // Everything queued before the flush is in `batch` or committed.
                    commit(&mut conn, &mut batch, &counters);
                    flushes.push(f);
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        commit(&mut conn, &mut batch, &counters);
        for f in flushes.drain(..) {
            let _ = f.send(());
        }
        if Instant::now() >= next_expiry {
            next_expiry = Instant::now() + RETENTION_EVERY;
            match expire(&conn, config.retention_days, crate::cost::now_unix_ms()) {
                Ok(n) => {
                    counters.expired.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => log::warn(
                    "ledger retention failed; will retry",
                    &[("error", &e.to_string())],
                ),
            }
        }
        if closed {
            return;
        }
    }
}

fn commit(conn: &mut Connection, batch: &mut Vec<LedgerRow>, counters: &LedgerCounters) {
    if batch.is_empty() {
        return;
    }
    match insert_batch(conn, batch) {
        Ok(()) => {
            counters
                .written
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        Err(e) => {
            counters.write_errors.fetch_add(1, Ordering::Relaxed);
            counters
                .rows_lost
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            log::error(
                "ledger: a batch could not be written; its rows are lost",
                &[
                    ("rows", &batch.len().to_string()),
                    ("error", &e.to_string()),
                ],
            );
        }
    }
    batch.clear();
}

/// A column a usage report groups by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Key,
    Team,
    Provider,
    Model,
}

impl GroupBy {
    pub fn parse(text: &str) -> Option<GroupBy> {
        match text {
            "key" => Some(GroupBy::Key),
            "team" => Some(GroupBy::Team),
            "provider" => Some(GroupBy::Provider),
            "model" => Some(GroupBy::Model),
            _ => None,
        }
    }

    /// A comma-separated list (`key,model`); each once.
    pub fn parse_list(text: &str) -> Result<Vec<GroupBy>, StoreError> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let g = GroupBy::parse(part).ok_or_else(|| {
                StoreError::Invalid(format!(
                    "cannot group by {part:?}: use key, team, provider, model"
                ))
            })?;
            if !out.contains(&g) {
                out.push(g);
            }
        }
        Ok(out)
    }
}

/// One group of a usage report.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct UsageGroup {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    /// Sum of the known costs, USD.
    pub cost_usd: f64,
    /// The same in nano-dollars (exact).
    pub cost_nusd: u64,
    /// Requests answered (status below 400) by a model that has no price.
    pub cost_unknown_requests: u64,
}

/// Usage between `from_ms` (inclusive) and `to_ms` (exclusive), grouped by `group`.
pub fn report(
    conn: &Connection,
    from_ms: i64,
    to_ms: i64,
    group: &[GroupBy],
) -> Result<Vec<UsageGroup>, StoreError> {
    let mut select = Vec::new();
    let mut by = Vec::new();
    for g in group {
        let (col, key) = match g {
            GroupBy::Key => (
                "COALESCE(k.name, CASE WHEN u.key_id IS NULL THEN '(none)' \
                 ELSE '#' || u.key_id END)",
                "u.key_id",
            ),
            GroupBy::Team => (
                "COALESCE(t.name, CASE WHEN u.team_id IS NULL THEN '(none)' \
                 ELSE '#' || u.team_id END)",
                "u.team_id",
            ),
            GroupBy::Provider => ("u.provider", "u.provider"),
            GroupBy::Model => ("u.model", "u.model"),
        };
        select.push(col.to_string());
        by.push(key);
    }
    let group_sql = if by.is_empty() {
        String::new()
    } else {
        format!("GROUP BY {}", by.join(", "))
    };
    let lead = if select.is_empty() {
        String::new()
    } else {
        format!("{}, ", select.join(", "))
    };
    let sql = format!(
        "SELECT {lead}COUNT(*), SUM(u.status >= 400), SUM(u.input_tokens), \
         SUM(u.output_tokens), SUM(u.cache_read_tokens), SUM(u.cache_write_tokens), \
         SUM(u.reasoning_tokens), SUM(COALESCE(u.cost_nusd, 0)), \
         SUM(u.cost_nusd IS NULL AND u.status < 400) \
         FROM usage u LEFT JOIN keys k ON k.id = u.key_id LEFT JOIN teams t ON t.id = u.team_id \
         WHERE u.ts_ms >= ?1 AND u.ts_ms < ?2 {group_sql} ORDER BY 1 LIMIT {REPORT_GROUPS_MAX}"
    );
    let mut st = conn.prepare(&sql)?;
    let n = group.len();
    let rows = st.query_map(params![from_ms, to_ms], |r| {
        let num = |i: usize| -> rusqlite::Result<u64> {
            Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
        };
        let mut g = UsageGroup {
            requests: num(n)?,
            errors: num(n + 1)?,
            input_tokens: num(n + 2)?,
            output_tokens: num(n + 3)?,
            cache_read_tokens: num(n + 4)?,
            cache_write_tokens: num(n + 5)?,
            reasoning_tokens: num(n + 6)?,
            cost_nusd: num(n + 7)?,
            cost_unknown_requests: num(n + 8)?,
            ..UsageGroup::default()
        };
        g.cost_usd = g.cost_nusd as f64 / crate::cost::NANO_PER_USD;
        for (i, kind) in group.iter().enumerate() {
            let v: Option<String> = r.get(i)?;
            match kind {
                GroupBy::Key => g.key = v,
                GroupBy::Team => g.team = v,
                GroupBy::Provider => g.provider = v,
                GroupBy::Model => g.model = v,
            }
        }
        Ok(g)
    })?;
    let groups: Vec<UsageGroup> = rows.collect::<Result<_, _>>()?;
    // An empty ledger still answers one all-zero row without groups; leave it out.
    Ok(groups.into_iter().filter(|g| g.requests > 0).collect())
}

/// A report as CSV (RFC 4180: every text field quoted, quotes doubled).
pub fn report_csv(groups: &[UsageGroup], group: &[GroupBy]) -> String {
    let mut out = String::new();
    for g in group {
        out.push_str(match g {
            GroupBy::Key => "key,",
            GroupBy::Team => "team,",
            GroupBy::Provider => "provider,",
            GroupBy::Model => "model,",
        });
    }
    out.push_str(
        "requests,errors,input_tokens,output_tokens,cache_read_tokens,cache_write_tokens,\
         reasoning_tokens,cost_usd,cost_unknown_requests\r\n",
    );
    for row in groups {
        for g in group {
            let v = match g {
                GroupBy::Key => &row.key,
                GroupBy::Team => &row.team,
                GroupBy::Provider => &row.provider,
                GroupBy::Model => &row.model,
            };
            out.push('"');
            out.push_str(&v.as_deref().unwrap_or("").replace('"', "\"\""));
            out.push_str("\",");
        }
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{:.9},{}\r\n",
            row.requests,
            row.errors,
            row.input_tokens,
            row.output_tokens,
            row.cache_read_tokens,
            row.cache_write_tokens,
            row.reasoning_tokens,
            row.cost_usd,
            row.cost_unknown_requests
        ));
    }
    out
}

/// Spend since a time, per key or team: nano-dollars and tokens (input + output).
pub type SpendSums = HashMap<i64, (u64, u64)>;

/// Per key and per team, what was spent since `since_ms`.
pub fn spend_since(conn: &Connection, since_ms: i64) -> Result<(SpendSums, SpendSums), StoreError> {
    let sums = |column: &str| -> Result<SpendSums, StoreError> {
        let sql = format!(
            "SELECT {column}, SUM(COALESCE(cost_nusd, 0)), SUM(input_tokens + output_tokens) \
             FROM usage WHERE ts_ms >= ?1 AND {column} IS NOT NULL GROUP BY {column}"
        );
        let mut st = conn.prepare(&sql)?;
        let rows = st.query_map([since_ms], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                (
                    r.get::<_, i64>(1)?.max(0) as u64,
                    r.get::<_, i64>(2)?.max(0) as u64,
                ),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    };
    Ok((sums("key_id")?, sums("team_id")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut c).unwrap();
        c
    }

    fn row(ts_ms: i64, key: Option<i64>, model: &str, cost: Option<u64>) -> LedgerRow {
        LedgerRow {
            ts_ms,
            request_id: "r".into(),
            key_id: key,
            provider: "p".into(),
            model: model.into(),
            input_tokens: 10,
            output_tokens: 5,
            cost_nusd: cost,
            status: 200,
            api: "openai_chat",
            ..LedgerRow::default()
        }
    }

    #[test]
    fn reports_group_and_sum_exactly() {
        let mut c = db();
        let rows = vec![
            row(1000, Some(1), "a", Some(7)),
            row(1001, Some(1), "b", None),
            row(1002, None, "a", Some(3)),
            row(5000, Some(1), "a", Some(100)),
        ];
        insert_batch(&mut c, &rows).unwrap();
        let all = report(&c, 0, 2000, &[]).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].requests, all[0].input_tokens), (3, 30));
        assert_eq!((all[0].cost_nusd, all[0].cost_unknown_requests), (10, 1));
        let by_model = report(&c, 0, 10_000, &[GroupBy::Model]).unwrap();
        assert_eq!(by_model[0].model.as_deref(), Some("a"));
        assert_eq!(by_model[0].cost_nusd, 110);
        let by_key = report(&c, 0, 10_000, &[GroupBy::Key]).unwrap();
        let names: Vec<_> = by_key.iter().map(|g| g.key.clone().unwrap()).collect();
        assert_eq!(names, ["#1", "(none)"]);
        let csv = report_csv(&by_key, &[GroupBy::Key]);
        assert!(csv.starts_with("key,requests,"), "{csv}");
        assert!(csv.contains("\"#1\",3,0,30,15"), "{csv}");
        let (keys, teams) = spend_since(&c, 1001).unwrap();
        assert_eq!(keys[&1], (100, 30));
        assert!(teams.is_empty());
        assert!(report(&c, 0, 10, &[GroupBy::Key]).unwrap().is_empty());
    }

    #[test]
    fn retention_deletes_only_old_rows() {
        let mut c = db();
        let day = 86_400_000;
        let rows: Vec<_> = (0..25).map(|i| row(i, None, "m", None)).collect();
        insert_batch(&mut c, &rows).unwrap();
        insert_batch(&mut c, &[row(10 * day, None, "m", None)]).unwrap();
        assert_eq!(expire(&c, 2, 11 * day).unwrap(), 25);
        assert_eq!(report(&c, 0, i64::MAX, &[]).unwrap()[0].requests, 1);
    }
}

//! The admin API of governance, under `/admin/` on the admin listener: virtual keys and teams
//! (create, list, show, update, disable, enable, rotate, delete) and usage and spend grouped by
//! key, team, provider and model over a time range, as JSON or CSV. Every call needs the admin
//! token (`Authorization: Bearer`, `server.admin_token`); each database operation runs on the
//! store thread while the connection's coroutine waits on a `may` channel.

use std::collections::HashMap;

use rusqlite::Connection;
use serde_json::{json, Value};

use crate::app::{percent_decode, Gateway};
use crate::config::{sha256, KeyHash};
use crate::error::{ApiError, ErrorKind};
use crate::http::{Method, Request, Response};
use crate::store::records::{self, Change, StoreError};
use crate::store::{ledger, GroupBy, Store};

/// The path prefix of the governance admin API.
pub const PREFIX: &str = "/admin/";

/// Whether `req` carries the admin token (`Authorization: Bearer <token>`), compared by its
/// SHA-256 and every byte of it.
pub fn token_ok(req: &Request, token: &KeyHash) -> bool {
    let Some(presented) = req
        .header("authorization")
        .and_then(crate::route::bearer_token)
    else {
        return false;
    };
    let start = presented
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(presented.len());
    let hash = sha256(&presented[start..]);
    hash.iter()
        .zip(&token.sha256)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// The refusal of an `/admin/` request before its body is read, if any: no admin token
/// configured (403), a missing or wrong one (401).
pub fn admit(g: &Gateway, req: &Request) -> Option<Response> {
    let Some(token) = &g.config.server.admin_token else {
        return Some(Response::error(&ApiError::new(
            ErrorKind::Forbidden,
            "admin_token_not_set",
            "the admin API needs an admin token: set server.admin_token",
        )));
    };
    if !token_ok(req, token) {
        return Some(Response::error(&ApiError::new(
            ErrorKind::Unauthorized,
            "invalid_admin_token",
            "send the admin token as Authorization: Bearer <token>",
        )));
    }
    None
}

fn error(e: &StoreError) -> Response {
    let (kind, code) = match e {
        StoreError::Invalid(_) => (ErrorKind::BadRequest, "invalid_request"),
        StoreError::NotFound(_) => (ErrorKind::NotFound, "not_found"),
        StoreError::Conflict(_) => (ErrorKind::Conflict, "conflict"),
        StoreError::Db(m) => {
            crate::log::error("admin: database error", &[("error", m)]);
            return Response::error(&ApiError::internal());
        }
        StoreError::Busy => (ErrorKind::Unavailable, "store_busy"),
    };
    Response::error(&ApiError::new(kind, code, e.to_string()))
}

fn ok(status: u16, v: &Value) -> Response {
    Response::json(status, serde_json::to_vec_pretty(v).unwrap_or_default())
}

/// Run `f` on the store thread; its `Err` becomes the error response.
fn on_store<F>(store: &Store, status: u16, f: F) -> Response
where
    F: FnOnce(&mut Connection) -> Result<Value, StoreError> + Send + 'static,
{
    match store.run(f) {
        Ok(Ok(v)) => ok(status, &v),
        Ok(Err(e)) | Err(e) => error(&e),
    }
}

fn team_names(conn: &Connection) -> Result<HashMap<i64, String>, StoreError> {
    Ok(records::teams(conn)?
        .into_iter()
        .map(|t| (t.id, t.name))
        .collect())
}

fn key_json(conn: &Connection, k: &records::KeyRecord) -> Result<Value, StoreError> {
    let names = team_names(conn)?;
    Ok(k.to_json(k.team_id.and_then(|id| names.get(&id)).map(String::as_str)))
}

fn parse_change(body: &[u8]) -> Result<Change, StoreError> {
    if body.is_empty() {
        return Ok(Change::default());
    }
    serde_json::from_slice(body).map_err(|e| StoreError::Invalid(format!("invalid body: {e}")))
}

/// Answer an `/admin/` request (already admitted).
pub fn handle(g: &Gateway, req: &Request) -> Response {
    let Some(store) = g.plugins.store.clone() else {
        return Response::error(&ApiError::new(
            ErrorKind::NotFound,
            "store_not_configured",
            "keys, teams and usage live in the store: set store.path",
        ));
    };
    let rest = &req.path[PREFIX.len()..];
    let parts: Vec<String> = rest.split('/').map(percent_decode).collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    match (req.method, parts.as_slice()) {
        (Method::Get, ["keys"]) => on_store(&store, 200, |c| {
            let names = team_names(c)?;
            let keys: Vec<Value> = records::keys(c)?
                .iter()
                .map(|k| k.to_json(k.team_id.and_then(|id| names.get(&id)).map(String::as_str)))
                .collect();
            Ok(json!({ "keys": keys }))
        }),
        (Method::Post, ["keys"]) => match parse_change(&req.body) {
            Err(e) => error(&e),
            Ok(change) => on_store(&store, 201, move |c| {
                let (k, secret) = records::create_key(c, &change)?;
                Ok(json!({ "key": secret, "record": key_json(c, &k)? }))
            }),
        },
        (Method::Get, ["keys", reference]) => {
            let reference = reference.to_string();
            let mut resp = on_store(&store, 200, move |c| {
                let k = records::key(c, &reference)?;
                Ok(json!({ "record": key_json(c, &k)?, "id": k.id }))
            });
            add_live(g, &mut resp, false);
            resp
        }
        (Method::Patch, ["keys", reference]) => match parse_change(&req.body) {
            Err(e) => error(&e),
            Ok(change) => {
                let reference = reference.to_string();
                on_store(&store, 200, move |c| {
                    key_json(c, &records::update_key(c, &reference, &change)?)
                })
            }
        },
        (Method::Post, ["keys", reference, action]) => key_action(&store, reference, action),
        (Method::Delete, ["keys", reference]) => {
            let reference = reference.to_string();
            on_store(&store, 200, move |c| {
                let k = records::delete_key(c, &reference)?;
                Ok(json!({ "deleted": k.id, "name": k.name }))
            })
        }
        (Method::Get, ["teams"]) => on_store(&store, 200, |c| {
            let teams: Vec<Value> = records::teams(c)?.iter().map(|t| t.to_json()).collect();
            Ok(json!({ "teams": teams }))
        }),
        (Method::Post, ["teams"]) => match parse_change(&req.body) {
            Err(e) => error(&e),
            Ok(change) => on_store(&store, 201, move |c| {
                Ok(records::create_team(c, &change)?.to_json())
            }),
        },
        (Method::Get, ["teams", reference]) => {
            let reference = reference.to_string();
            let mut resp = on_store(&store, 200, move |c| {
                let t = records::team(c, &reference)?;
                Ok(json!({ "record": t.to_json(), "id": t.id }))
            });
            add_live(g, &mut resp, true);
            resp
        }
        (Method::Patch, ["teams", reference]) => match parse_change(&req.body) {
            Err(e) => error(&e),
            Ok(change) => {
                let reference = reference.to_string();
                on_store(&store, 200, move |c| {
                    Ok(records::update_team(c, &reference, &change)?.to_json())
                })
            }
        },
        (Method::Post, ["teams", reference, "disable" | "enable"]) => {
            let change = Change {
                enabled: Some(parts[2] == "enable"),
                ..Change::default()
            };
            let reference = reference.to_string();
            on_store(&store, 200, move |c| {
                Ok(records::update_team(c, &reference, &change)?.to_json())
            })
        }
        (Method::Delete, ["teams", reference]) => {
            let reference = reference.to_string();
            on_store(&store, 200, move |c| {
                let t = records::delete_team(c, &reference)?;
                Ok(json!({ "deleted": t.id, "name": t.name }))
            })
        }
        (Method::Get, ["usage"]) => usage(&store, &req.query),
        (_, ["keys" | "teams" | "usage", ..]) => {
            Response::error(&crate::app::method_not_allowed(req.method))
        }
        _ => Response::error(&crate::app::not_found(&req.path)),
    }
}

fn key_action(store: &Store, reference: &str, action: &str) -> Response {
    let reference = reference.to_string();
    match action {
        "rotate" => on_store(store, 200, move |c| {
            let (k, secret) = records::rotate_key(c, &reference)?;
            Ok(json!({ "key": secret, "record": key_json(c, &k)? }))
        }),
        "disable" | "enable" => {
            let change = Change {
                enabled: Some(action == "enable"),
                ..Change::default()
            };
            on_store(store, 200, move |c| {
                key_json(c, &records::update_key(c, &reference, &change)?)
            })
        }
        _ => Response::error(&crate::app::not_found(action)),
    }
}

/// Put the live counters (`spend`, rate-limit windows) of the shown key or team into `resp`.
fn add_live(g: &Gateway, resp: &mut Response, team: bool) {
    if resp.status != 200 {
        return;
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(&resp.body) else {
        return;
    };
    let Some(id) = v["id"].as_i64() else { return };
    let limits = limits_of(&v["record"]["limits"]);
    v["live"] = g.plugins.governance.live_json(id, &limits, team);
    *resp = ok(200, &v);
}

fn limits_of(v: &Value) -> crate::store::Limits {
    crate::store::Limits {
        rpm: v["rpm"].as_u64(),
        tpm: v["tpm"].as_u64(),
        ..crate::store::Limits::default()
    }
}

/// `from`/`to` of a usage query: `YYYY-MM-DD` (UTC midnight) or Unix seconds.
fn time_ms(text: &str) -> Result<i64, StoreError> {
    if let Ok(s) = text.parse::<i64>() {
        return Ok(s.saturating_mul(1000));
    }
    crate::cost::parse_date(text)
        .map(|s| s as i64 * 1000)
        .ok_or_else(|| StoreError::Invalid(format!("{text:?} is not YYYY-MM-DD or Unix seconds")))
}

/// What a usage query asks: `from` (default: the start of this month), `to` (default: now),
/// `group_by` (a comma list of key, team, provider, model), `format` (`json` or `csv`).
pub struct UsageQuery {
    pub from_ms: i64,
    pub to_ms: i64,
    pub group: Vec<GroupBy>,
    pub csv: bool,
}

impl UsageQuery {
    pub fn parse(query: &str) -> Result<UsageQuery, StoreError> {
        let now_s = crate::cost::now_unix_s();
        let mut q = UsageQuery {
            from_ms: crate::store::Period::Month.start_s(now_s) as i64 * 1000,
            to_ms: crate::cost::now_unix_ms() + 1,
            group: Vec::new(),
            csv: false,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "from" => q.from_ms = time_ms(&v)?,
                "to" => q.to_ms = time_ms(&v)?,
                "group_by" => q.group = GroupBy::parse_list(&v)?,
                "format" => {
                    q.csv = match v.as_str() {
                        "csv" => true,
                        "json" => false,
                        _ => return Err(StoreError::Invalid("format is json or csv".into())),
                    }
                }
                _ => return Err(StoreError::Invalid(format!("unknown parameter {k:?}"))),
            }
        }
        Ok(q)
    }
}

fn usage(store: &Store, query: &str) -> Response {
    let q = match UsageQuery::parse(query) {
        Ok(q) => q,
        Err(e) => return error(&e),
    };
    let (from, to, group) = (q.from_ms, q.to_ms, q.group.clone());
    let rows = store.run_after_flush(move |c| ledger::report(c, from, to, &group));
    let groups = match rows {
        Ok(Ok(g)) => g,
        Ok(Err(e)) | Err(e) => return error(&e),
    };
    if q.csv {
        let mut r = Response::json(200, ledger::report_csv(&groups, &q.group).into_bytes());
        r.content_type = "text/csv; charset=utf-8";
        return r;
    }
    ok(
        200,
        &json!({ "from_ms": q.from_ms, "to_ms": q.to_ms, "groups": groups }),
    )
}

/// The governance, ledger and plugin series of `/metrics`.
pub fn metrics(g: &Gateway, out: &mut String) {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering;
    let c = &g.plugins.governance.counters;
    let counter = |out: &mut String, name: &str, help: &str, lines: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (labels, v) in lines {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let refusals = [
        ("model_forbidden", &c.model_forbidden),
        ("cost_unknown", &c.cost_unknown_refused),
        ("rate_limited_requests", &c.rate_limited_requests),
        ("rate_limited_tokens", &c.rate_limited_tokens),
        ("budget_exceeded", &c.budget_exceeded),
    ];
    let lines: Vec<(String, u64)> = refusals
        .iter()
        .map(|(r, v)| (format!("{{reason=\"{r}\"}}"), v.load(Ordering::Relaxed)))
        .collect();
    counter(
        out,
        "deepintshield_governance_refusals_total",
        "Requests governance refused, by reason.",
        &lines,
    );
    counter(
        out,
        "deepintshield_governance_cost_unknown_total",
        "Answers whose model has no price (cost unknown, not zero).",
        &[(String::new(), c.cost_unknown.load(Ordering::Relaxed))],
    );
    counter(
        out,
        "deepintshield_governance_tokens_total",
        "Tokens (input and output) used through virtual keys.",
        &[(String::new(), c.tokens.load(Ordering::Relaxed))],
    );
    let _ = writeln!(
        out,
        "# HELP deepintshield_governance_spend_usd_total Known cost of the answers to virtual keys, USD.\n# TYPE deepintshield_governance_spend_usd_total counter\ndeepintshield_governance_spend_usd_total {}",
        c.spend_nusd.load(Ordering::Relaxed) as f64 / crate::cost::NANO_PER_USD
    );
    let _ = writeln!(
        out,
        "# HELP deepintshield_governance_keys Virtual keys loaded.\n# TYPE deepintshield_governance_keys gauge\ndeepintshield_governance_keys {}",
        g.plugins.governance.keys()
    );
    if let Some(store) = &g.plugins.store {
        let l = &store.counters;
        let rows = [
            ("queued", &l.queued),
            ("dropped", &l.dropped),
            ("written", &l.written),
            ("lost", &l.rows_lost),
            ("expired", &l.expired),
        ];
        let lines: Vec<(String, u64)> = rows
            .iter()
            .map(|(r, v)| (format!("{{outcome=\"{r}\"}}"), v.load(Ordering::Relaxed)))
            .collect();
        counter(
            out,
            "deepintshield_ledger_rows_total",
            "Usage ledger rows, by outcome (dropped: the queue was full).",
            &lines,
        );
        let _ = writeln!(
            out,
            "# HELP deepintshield_ledger_queue_depth Ledger rows waiting for the writer.\n# TYPE deepintshield_ledger_queue_depth gauge\ndeepintshield_ledger_queue_depth {}",
            store.queue_depth()
        );
    }
    let snapshot = g.plugins.stats.snapshot();
    if snapshot.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP deepintshield_plugin_hook_seconds_total Time spent in plugin hooks.\n# TYPE deepintshield_plugin_hook_seconds_total counter"
    );
    for (pool, plugin, s) in &snapshot {
        for (phase, h) in [("pre", &s.pre), ("post", &s.post)] {
            let _ = writeln!(
                out,
                "deepintshield_plugin_hook_seconds_total{{pool=\"{pool}\",plugin=\"{plugin}\",phase=\"{phase}\"}} {}",
                h.sum_ns as f64 / 1e9
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP deepintshield_plugin_hook_calls_total Plugin hook calls.\n# TYPE deepintshield_plugin_hook_calls_total counter"
    );
    for (pool, plugin, s) in &snapshot {
        for (phase, h) in [("pre", &s.pre), ("post", &s.post)] {
            let _ = writeln!(
                out,
                "deepintshield_plugin_hook_calls_total{{pool=\"{pool}\",plugin=\"{plugin}\",phase=\"{phase}\"}} {}",
                h.count
            );
        }
    }
}

/// The governance part of `/stats`.
pub fn stats_json(g: &Gateway) -> Value {
    let ledger = g.plugins.store.as_ref().map(|s| {
        let mut v = s.counters.to_json();
        v["queue_depth"] = s.queue_depth().into();
        v["path"] = s.config().path.display().to_string().into();
        v
    });
    json!({
        "plugins": g.config.plugins.order.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "keys": g.plugins.governance.keys(),
        "counters": g.plugins.governance.counters.to_json(),
        "ledger": ledger,
        "prices": g.pipeline.prices().len(),
    })
}

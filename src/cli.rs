//! The operator's command line for governance: `deepintshield keys|teams|usage|hash-key ...`,
//! working on the same database as the gateway (WAL lets both use it at once; a running gateway
//! notices key and team changes within `store.keys_poll_ms`). Errors go to stderr; the exit code
//! is 0 on success, 1 when the operation failed, 2 on bad usage.

use std::io::{Read, Write};
use std::path::PathBuf;

use rusqlite::Connection;
use serde_json::{json, Value};

use crate::config::{hash_text, Config, StoreConfig};
use crate::store::records::{self, Change, StoreError};
use crate::store::{ledger, open_direct};

pub const USAGE: &str = "\
usage: deepintshield keys create --name NAME [OPTIONS]     create a key; prints it once
       deepintshield keys list
       deepintshield keys show|disable|enable|rotate|delete KEY    (KEY: a name or an id)
       deepintshield keys update KEY [OPTIONS]
       deepintshield teams create --name NAME [--rpm N] [--tpm N] [--budget-usd ..] [--budget-tokens ..]
       deepintshield teams list
       deepintshield teams show|disable|enable|delete TEAM
       deepintshield teams update TEAM [OPTIONS]
       deepintshield usage [--from DATE] [--to DATE] [--group-by key,team,provider,model] [--format json|csv]
       deepintshield hash-key          read a key on stdin, print its sha256:<hex> for server.client_keys

options of keys and teams:
  --name NAME               a name (not all digits)
  --owner TEXT              who holds the key
  --team TEAM               the key's team (\"\" for none)
  --providers P1,P2         provider patterns the key may use (* and ?); empty: any
  --models M1,M2            model patterns (provider/model or the name clients send); empty: any
  --rpm N, --tpm N          requests / tokens per minute; 0: unlimited
  --budget-usd USD/PERIOD   e.g. 50/month (PERIOD: day, week, month; UTC); \"\" for none
  --budget-tokens N/PERIOD  e.g. 1000000/day
  --refuse-unknown-cost     refuse models without a price (--allow-unknown-cost undoes it)
  --expires DATE            YYYY-MM-DD (UTC) or Unix seconds; \"never\"
  --disabled                create or set the key disabled (--enabled undoes it)

every command takes --config PATH (default config/deepintshield.toml: its [store] path) or
--db PATH (the database file itself, without reading the config)";

/// Where the database is: `--db`, else the config's `[store] path`.
struct Target {
    db: Option<PathBuf>,
    config: PathBuf,
}

fn store_config(t: &Target) -> Result<StoreConfig, String> {
    if let Some(db) = &t.db {
        return Ok(StoreConfig::at(db.clone()));
    }
    let config = Config::load(&t.config).map_err(|e| format!("invalid config: {e}"))?;
    config.store.ok_or_else(|| {
        format!(
            "{}: no [store] path: keys, teams and usage live in the store (or pass --db PATH)",
            t.config.display()
        )
    })
}

/// Run a governance command (`args` after the binary's name); the process exit code.
pub fn run(args: &[String], default_config: &str) -> u8 {
    match dispatch(args, default_config) {
        Ok(out) => {
            // A reader that stops early (`| head -1`) is no failure of the command.
            if !out.is_empty() {
                let _ = writeln!(std::io::stdout(), "{out}");
            }
            0
        }
        Err(Failure::Usage(m)) => {
            eprintln!("deepintshield: {m}\n{USAGE}");
            2
        }
        Err(Failure::Failed(m)) => {
            eprintln!("deepintshield: {m}");
            1
        }
    }
}

enum Failure {
    Usage(String),
    Failed(String),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure::Failed(e.to_string())
    }
}

/// Flags and positional words of a command line.
#[derive(Default)]
struct Parsed {
    words: Vec<String>,
    change: Change,
    target_db: Option<PathBuf>,
    target_config: Option<PathBuf>,
    query: Vec<String>,
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn parse(args: &[String]) -> Result<Parsed, Failure> {
    let mut p = Parsed::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| Failure::Usage(format!("{name} needs a value")))
        };
        let number = |name: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| Failure::Usage(format!("{name} needs a number")))
        };
        let c = &mut p.change;
        match arg.as_str() {
            "--config" | "-c" => p.target_config = Some(PathBuf::from(value(arg)?)),
            "--db" => p.target_db = Some(PathBuf::from(value(arg)?)),
            "--name" => c.name = Some(value(arg)?),
            "--owner" => c.owner = Some(value(arg)?),
            "--team" => c.team = Some(value(arg)?),
            "--providers" => c.providers = Some(list(&value(arg)?)),
            "--models" => c.models = Some(list(&value(arg)?)),
            "--rpm" => c.rpm = Some(number(arg, value(arg)?)?),
            "--tpm" => c.tpm = Some(number(arg, value(arg)?)?),
            "--budget-usd" => c.budget_usd = Some(value(arg)?),
            "--budget-tokens" => c.budget_tokens = Some(value(arg)?),
            "--refuse-unknown-cost" => c.refuse_unknown_cost = Some(true),
            "--allow-unknown-cost" => c.refuse_unknown_cost = Some(false),
            "--expires" => c.expires = Some(value(arg)?),
            "--disabled" => c.enabled = Some(false),
            "--enabled" => c.enabled = Some(true),
            "--from" | "--to" | "--group-by" | "--format" => {
                let key = arg.trim_start_matches("--").replace('-', "_");
                p.query.push(format!("{key}={}", value(arg)?));
            }
            other if other.starts_with('-') => {
                return Err(Failure::Usage(format!("unknown option {other}")))
            }
            other => p.words.push(other.to_string()),
        }
    }
    Ok(p)
}

fn dispatch(args: &[String], default_config: &str) -> Result<String, Failure> {
    let (command, rest) = args
        .split_first()
        .ok_or_else(|| Failure::Usage("no command".into()))?;
    if command == "hash-key" {
        return hash_key();
    }
    let p = parse(rest)?;
    let target = Target {
        db: p.target_db.clone(),
        config: p
            .target_config
            .clone()
            .unwrap_or_else(|| PathBuf::from(default_config)),
    };
    let open = || -> Result<Connection, Failure> {
        let config = store_config(&target).map_err(Failure::Failed)?;
        open_direct(&config).map_err(Failure::Failed)
    };
    let words: Vec<&str> = p.words.iter().map(String::as_str).collect();
    match (command.as_str(), words.as_slice()) {
        ("keys", ["create"]) => {
            let conn = open()?;
            let (k, secret) = records::create_key(&conn, &p.change)?;
            Ok(format!(
                "{secret}\n\nThe key is shown this once; only its hash is stored.\n{}",
                pretty(&key_json(&conn, &k)?)
            ))
        }
        ("keys", ["list"]) => keys_table(&open()?),
        ("keys", ["show", r]) => {
            let conn = open()?;
            Ok(pretty(&key_json(&conn, &records::key(&conn, r)?)?))
        }
        ("keys", ["update", r]) => {
            let conn = open()?;
            Ok(pretty(&key_json(
                &conn,
                &records::update_key(&conn, r, &p.change)?,
            )?))
        }
        ("keys", [action @ ("disable" | "enable"), r]) => {
            let conn = open()?;
            let change = Change {
                enabled: Some(*action == "enable"),
                ..Change::default()
            };
            Ok(pretty(&key_json(
                &conn,
                &records::update_key(&conn, r, &change)?,
            )?))
        }
        ("keys", ["rotate", r]) => {
            let conn = open()?;
            let (k, secret) = records::rotate_key(&conn, r)?;
            Ok(format!(
                "{secret}\n\nThe new key is shown this once; the old one no longer works.\n{}",
                pretty(&key_json(&conn, &k)?)
            ))
        }
        ("keys", ["delete", r]) => {
            let k = records::delete_key(&open()?, r)?;
            Ok(format!("deleted key {} ({})", k.id, k.name))
        }
        ("teams", ["create"]) => Ok(pretty(
            &records::create_team(&open()?, &p.change)?.to_json(),
        )),
        ("teams", ["list"]) => {
            let teams: Vec<Value> = records::teams(&open()?)?
                .iter()
                .map(|t| t.to_json())
                .collect();
            Ok(pretty(&json!(teams)))
        }
        ("teams", ["show", r]) => Ok(pretty(&records::team(&open()?, r)?.to_json())),
        ("teams", ["update", r]) => Ok(pretty(
            &records::update_team(&open()?, r, &p.change)?.to_json(),
        )),
        ("teams", [action @ ("disable" | "enable"), r]) => {
            let change = Change {
                enabled: Some(*action == "enable"),
                ..Change::default()
            };
            Ok(pretty(
                &records::update_team(&open()?, r, &change)?.to_json(),
            ))
        }
        ("teams", ["delete", r]) => {
            let t = records::delete_team(&open()?, r)?;
            Ok(format!("deleted team {} ({})", t.id, t.name))
        }
        ("usage", []) => {
            let q = crate::admin::governance::UsageQuery::parse(&p.query.join("&"))?;
            let groups = ledger::report(&open()?, q.from_ms, q.to_ms, &q.group)?;
            if q.csv {
                Ok(ledger::report_csv(&groups, &q.group).trim_end().to_string())
            } else {
                Ok(pretty(
                    &json!({ "from_ms": q.from_ms, "to_ms": q.to_ms, "groups": groups }),
                ))
            }
        }
        _ => Err(Failure::Usage(format!(
            "unknown command: {}",
            args.join(" ")
        ))),
    }
}

fn hash_key() -> Result<String, Failure> {
    let mut key = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut key)
        .map_err(|e| Failure::Failed(format!("cannot read stdin: {e}")))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(Failure::Usage("hash-key reads the key on stdin".into()));
    }
    Ok(hash_text(key.as_bytes()))
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn key_json(conn: &Connection, k: &records::KeyRecord) -> Result<Value, StoreError> {
    let team = match k.team_id {
        Some(id) => Some(records::team(conn, &id.to_string())?.name),
        None => None,
    };
    Ok(k.to_json(team.as_deref()))
}

fn keys_table(conn: &Connection) -> Result<String, Failure> {
    let teams: std::collections::HashMap<i64, String> = records::teams(conn)?
        .into_iter()
        .map(|t| (t.id, t.name))
        .collect();
    let mut out = format!(
        "{:>6}  {:<24} {:<12} {:<16} {:>8} {:>10} {:<18} {}",
        "id", "name", "prefix", "team", "rpm", "tpm", "budget", "state"
    );
    for k in records::keys(conn)? {
        let budget = k.limits.budget_usd.map_or_else(
            || "-".to_string(),
            |b| {
                format!(
                    "${:.2}/{}",
                    b.amount as f64 / crate::cost::NANO_PER_USD,
                    b.period.as_str()
                )
            },
        );
        let now = crate::cost::now_unix_s() as i64;
        let state = match (k.enabled, k.expires_at) {
            (false, _) => "disabled",
            (true, Some(e)) if e <= now => "expired",
            _ => "enabled",
        };
        let num = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        let team = k
            .team_id
            .and_then(|id| teams.get(&id))
            .map_or("-", String::as_str);
        out.push_str(&format!(
            "\n{:>6}  {:<24} {:<12} {:<16} {:>8} {:>10} {:<18} {}",
            k.id,
            k.name,
            k.prefix,
            team,
            num(k.limits.rpm),
            num(k.limits.tpm),
            budget,
            state
        ));
    }
    Ok(out)
}

//! The database schema and its migrations: `PRAGMA user_version` is the number of migrations
//! applied; each runs once, in order, in one transaction with its version bump. WAL mode, foreign
//! keys on, and a busy timeout are set on every connection.

use std::time::Duration;

use rusqlite::Connection;

/// The migrations, in order. Never edit one that has shipped: add the next.
const MIGRATIONS: &[&str] = &[
    // 1: teams, keys, the usage ledger, and the version the gateway watches to notice key and
    // team changes made by another process (the CLI). The ledger has one index, by time: every
    // report and spend sum reads a time range, and each index more is paid on every insert.
    "CREATE TABLE teams (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        rpm INTEGER,
        tpm INTEGER,
        budget_usd_nusd INTEGER,
        budget_usd_period TEXT,
        budget_tokens INTEGER,
        budget_tokens_period TEXT,
        enabled INTEGER NOT NULL DEFAULT 1,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE keys (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        hash BLOB NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        owner TEXT,
        team_id INTEGER REFERENCES teams(id) ON DELETE SET NULL,
        providers TEXT NOT NULL DEFAULT '[]',
        models TEXT NOT NULL DEFAULT '[]',
        rpm INTEGER,
        tpm INTEGER,
        budget_usd_nusd INTEGER,
        budget_usd_period TEXT,
        budget_tokens INTEGER,
        budget_tokens_period TEXT,
        refuse_unknown_cost INTEGER NOT NULL DEFAULT 0,
        expires_at INTEGER,
        enabled INTEGER NOT NULL DEFAULT 1,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX keys_team ON keys(team_id);
    CREATE TABLE usage (
        id INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        request_id TEXT NOT NULL,
        key_id INTEGER,
        team_id INTEGER,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cache_read_tokens INTEGER NOT NULL,
        cache_write_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        cost_nusd INTEGER,
        status INTEGER NOT NULL,
        latency_ms INTEGER NOT NULL,
        stream INTEGER NOT NULL,
        api TEXT NOT NULL
    ) STRICT;
    CREATE INDEX usage_ts ON usage(ts_ms);
    CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;
    INSERT INTO meta(name, value) VALUES ('keys_version', 0);
    CREATE TRIGGER keys_insert AFTER INSERT ON keys
        BEGIN UPDATE meta SET value = value + 1 WHERE name = 'keys_version'; END;
    CREATE TRIGGER keys_update AFTER UPDATE ON keys
        BEGIN UPDATE meta SET value = value + 1 WHERE name = 'keys_version'; END;
    CREATE TRIGGER keys_delete AFTER DELETE ON keys
        BEGIN UPDATE meta SET value = value + 1 WHERE name = 'keys_version'; END;
    CREATE TRIGGER teams_insert AFTER INSERT ON teams
        BEGIN UPDATE meta SET value = value + 1 WHERE name = 'keys_version'; END;
    CREATE TRIGGER teams_update AFTER UPDATE ON teams
        BEGIN UPDATE meta SET value = value + 1 WHERE name = 'keys_version'; END;
    CREATE TRIGGER teams_delete AFTER DELETE ON teams
        BEGIN UPDATE meta SET value = value + 1 WHERE name = 'keys_version'; END;",
];

/// The schema version a fully migrated database has.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Open a connection with the gateway's settings: WAL journal, `synchronous = NORMAL` (a commit
/// survives a process crash; a power loss may take the last commits, never corrupt the file),
/// foreign keys, and `busy` as the lock wait.
pub fn connect(path: &std::path::Path, busy: Duration) -> Result<Connection, String> {
    let shown = path.display();
    let conn =
        Connection::open(path).map_err(|e| format!("{shown}: cannot open the database: {e}"))?;
    let fail = |e: rusqlite::Error| format!("{shown}: {e}");
    conn.busy_timeout(busy).map_err(fail)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(fail)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("{shown}: cannot switch to WAL mode (got {mode})"));
    }
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
        .map_err(fail)?;
    Ok(conn)
}

/// Apply the migrations `conn` has not had yet. A database newer than this binary is refused.
pub fn migrate(conn: &mut Connection) -> Result<(), String> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if version > SCHEMA_VERSION {
        return Err(format!(
            "the database has schema version {version}, newer than this gateway's \
             {SCHEMA_VERSION}: upgrade the gateway"
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        tx.execute_batch(sql)
            .map_err(|e| format!("migration {}: {e}", i + 1))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_refuses_a_newer_database() {
        let dir = std::env::temp_dir().join(format!("dis-schema-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.db");
        let mut c = connect(&path, Duration::from_secs(1)).unwrap();
        migrate(&mut c).unwrap();
        migrate(&mut c).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        assert!(migrate(&mut c).unwrap_err().contains("newer"));
        drop(c);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

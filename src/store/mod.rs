//! The embedded SQLite database (`[store] path`): virtual keys, teams and the per-request usage
//! ledger. Created and migrated at start, in WAL mode, so `sqlite3` can read it (and back it up
//! with `.backup`) while the gateway runs, and the CLI can change keys beside it.
//!
//! No database call ever runs on a connection coroutine. Two dedicated threads own a connection
//! each: the ledger writer ([`ledger`]), fed by a bounded queue that the request path only
//! `try_send`s to, and the store thread, which runs the admin API's operations (a bounded queue
//! in, a `may` channel back, so an admin coroutine waits without blocking its scheduler thread)
//! and watches for key and team changes made by another process.

pub mod ledger;
pub mod records;
pub mod schema;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use rusqlite::Connection;

use crate::config::StoreConfig;
use crate::log;
pub use ledger::{GroupBy, LedgerCounters, LedgerRow, UsageGroup};
pub use records::{Budget, Change, KeyRecord, Limits, Period, StoreError, TeamRecord};

/// Operations the store thread holds at once; more are refused (503), never queued unbounded.
pub const OPS_QUEUE_CAPACITY: usize = 64;
/// Longest an admin request waits for its operation's answer.
pub const OP_WAIT_MAX: Duration = Duration::from_secs(30);
/// Longest a flush of the ledger (before a report, at shutdown) waits for the writer.
pub const FLUSH_WAIT_MAX: Duration = Duration::from_secs(10);

/// An operation for the store thread; it returns the keys version it left (read before its
/// caller is answered, so a change another process makes right after is still noticed).
type Op = Box<dyn FnOnce(&mut Connection) -> Option<i64> + Send>;
/// Called on the store thread with its connection when keys or teams changed (from here or from
/// another process).
pub type KeysListener = Box<dyn Fn(&Connection) + Send>;

/// The open store: its two threads and their queues.
pub struct Store {
    config: StoreConfig,
    rows: Sender<ledger::Message>,
    ops: Sender<Op>,
    listener: Arc<Mutex<Option<KeysListener>>>,
    pub counters: Arc<LedgerCounters>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Store {
    /// Open (creating and migrating) the database and start its threads.
    pub fn open(config: &StoreConfig) -> Result<Store, String> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
        }
        let mut conn = schema::connect(&config.path, config.busy_timeout)?;
        schema::migrate(&mut conn).map_err(|e| format!("{}: {e}", config.path.display()))?;
        let writer_conn = schema::connect(&config.path, config.busy_timeout)?;
        let counters = Arc::new(LedgerCounters::default());
        let (rows, rows_rx) = crossbeam_channel::bounded(config.queue_capacity);
        let writer = {
            let (config, counters) = (config.clone(), Arc::clone(&counters));
            std::thread::Builder::new()
                .name("ledger-writer".into())
                .spawn(move || ledger::run_writer(writer_conn, rows_rx, config, counters))
                .map_err(|e| format!("cannot start the ledger writer: {e}"))?
        };
        let (ops, ops_rx) = crossbeam_channel::bounded::<Op>(OPS_QUEUE_CAPACITY);
        let listener: Arc<Mutex<Option<KeysListener>>> = Arc::new(Mutex::new(None));
        {
            let (poll, listener) = (config.keys_poll_interval, Arc::clone(&listener));
            std::thread::Builder::new()
                .name("store".into())
                .spawn(move || run_ops(conn, ops_rx, poll, listener))
                .map_err(|e| format!("cannot start the store thread: {e}"))?;
        }
        Ok(Store {
            config: config.clone(),
            rows,
            ops,
            listener,
            counters,
            writer: Mutex::new(Some(writer)),
        })
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Queue a ledger row without waiting: a full queue drops it (counted).
    pub fn record(&self, row: LedgerRow) {
        match self.rows.try_send(ledger::Message::Row(Box::new(row))) {
            Ok(()) => {
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Rows queued and not yet taken by the writer.
    pub fn queue_depth(&self) -> usize {
        self.rows.len()
    }

    /// Wait until every row queued before now is committed. Call from a thread, not a coroutine
    /// (the store thread does, before a report).
    pub fn flush(&self) -> bool {
        flush_rows(&self.rows)
    }

    /// Install the function run (on the store thread) whenever keys or teams change, and run it
    /// once now with the current tables.
    pub fn on_keys_changed(&self, listener: KeysListener) -> Result<(), StoreError> {
        *self.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(listener);
        let handle = self.listener_handle();
        self.run(move |conn: &mut Connection| notify_listener(conn, &handle))
    }

    fn listener_handle(&self) -> Arc<Mutex<Option<KeysListener>>> {
        Arc::clone(&self.listener)
    }

    /// Run `f` on the store thread and wait for its result. From a coroutine this waits on a
    /// `may` channel (its scheduler thread keeps running others); from a thread it blocks. A
    /// full queue is [`StoreError::Busy`] at once. `f` may change keys or teams: the listener
    /// runs after it when they changed.
    pub fn run<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> R + Send + 'static,
    {
        self.submit(f, false)
    }

    /// [`Store::run`] after the ledger rows queued before the call are committed (the writer
    /// takes them within `batch_interval_ms`): for reports, which must read what was answered
    /// before they were asked.
    pub fn run_after_flush<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> R + Send + 'static,
    {
        self.submit(f, true)
    }

    fn submit<R, F>(&self, f: F, flush: bool) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> R + Send + 'static,
    {
        let (tx, rx) = may::sync::mpsc::channel();
        let listener = self.listener_handle();
        let rows = self.rows.clone();
        let op: Op = Box::new(move |conn: &mut Connection| {
            let before = records::keys_version(conn).ok();
            if flush {
                flush_rows(&rows);
            }
            let out = f(conn);
            let after = records::keys_version(conn).ok();
            if after != before {
                notify_listener(conn, &listener);
            }
            let _ = tx.send(out);
            after
        });
        self.ops.try_send(op).map_err(|_| StoreError::Busy)?;
        rx.recv_timeout(OP_WAIT_MAX).map_err(|_| StoreError::Busy)
    }

    /// Commit what is queued and stop the writer (at shutdown; from a thread).
    pub fn close(&self) {
        if !self.flush() {
            log::warn(
                "ledger: rows still queued at shutdown were not written",
                &[],
            );
        }
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(handle); // the writer exits with the process; everything queued is committed
    }
}

fn flush_rows(rows: &Sender<ledger::Message>) -> bool {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    if rows
        .send_timeout(ledger::Message::Flush(tx), FLUSH_WAIT_MAX)
        .is_err()
    {
        return false;
    }
    rx.recv_timeout(FLUSH_WAIT_MAX).is_ok()
}

fn notify_listener(conn: &Connection, listener: &Mutex<Option<KeysListener>>) {
    let guard = listener.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(f) = guard.as_ref() {
        f(conn);
    }
}

/// The store thread: run operations as they come; between them, every `poll`, look whether
/// another process changed keys or teams.
fn run_ops(
    mut conn: Connection,
    ops: Receiver<Op>,
    poll: Duration,
    listener: Arc<Mutex<Option<KeysListener>>>,
) {
    let mut seen = records::keys_version(&conn).ok();
    let mut next_poll = Instant::now() + poll;
    loop {
        let wait = next_poll.saturating_duration_since(Instant::now());
        match ops.recv_timeout(wait) {
            Ok(op) => seen = op(&mut conn),
            Err(RecvTimeoutError::Timeout) => {
                next_poll = Instant::now() + poll;
                let now = records::keys_version(&conn).ok();
                if now.is_some() && now != seen {
                    seen = now;
                    notify_listener(&conn, &listener);
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Open the database at `config.path` for a command-line tool (migrated, same settings).
pub fn open_direct(config: &StoreConfig) -> Result<Connection, String> {
    let mut conn = schema::connect(&config.path, config.busy_timeout)?;
    schema::migrate(&mut conn).map_err(|e| format!("{}: {e}", config.path.display()))?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_config(name: &str) -> (StoreConfig, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("dis-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut c = StoreConfig::at(dir.join("g.db"));
        c.batch_interval = Duration::from_millis(20);
        c.keys_poll_interval = Duration::from_millis(100);
        (c, dir)
    }

    #[test]
    fn rows_are_batched_flushed_and_read_back() {
        let (config, dir) = temp_config("rows");
        let store = Store::open(&config).unwrap();
        // Recent rows: older ones would be the writer's first retention pass's to delete.
        let now_ms = crate::cost::now_unix_ms();
        for i in 0..100 {
            store.record(LedgerRow {
                ts_ms: now_ms + i,
                request_id: format!("r{i}"),
                provider: "p".into(),
                model: "m".into(),
                input_tokens: 2,
                status: 200,
                api: "openai_chat",
                ..LedgerRow::default()
            });
        }
        let groups = store
            .run_after_flush(|c: &mut Connection| ledger::report(c, 0, i64::MAX, &[]))
            .unwrap_or_else(|e| panic!("{e:?}"))
            .unwrap();
        assert_eq!((groups[0].requests, groups[0].input_tokens), (100, 200));
        assert_eq!(store.counters.written.load(Ordering::Relaxed), 100);
        store.close();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (mut config, dir) = temp_config("full");
        config.queue_capacity = 1;
        config.batch_interval = Duration::from_secs(10);
        let store = Store::open(&config).unwrap();
        for _ in 0..1000 {
            store.record(LedgerRow::default());
        }
        let c = &store.counters;
        let (queued, dropped) = (
            c.queued.load(Ordering::Relaxed),
            c.dropped.load(Ordering::Relaxed),
        );
        assert_eq!(queued + dropped, 1000);
        assert!(dropped > 0, "queued {queued}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn another_process_changes_are_noticed() {
        let (config, dir) = temp_config("watch");
        let store = Store::open(&config).unwrap();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let s = Arc::clone(&seen);
        store
            .on_keys_changed(Box::new(move |c: &Connection| {
                s.store(records::keys(c).unwrap().len(), Ordering::SeqCst);
            }))
            .unwrap();
        let other = open_direct(&config).unwrap();
        let change = Change {
            name: Some("from-cli".into()),
            ..Change::default()
        };
        records::create_key(&other, &change).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.load(Ordering::SeqCst) != 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Coroutines waiting for a worker's reply, nudged a few times a second.
//!
//! A coroutine that waits on a `may` channel with a timeout arms a timer of may's global timer
//! thread, and cancelling that timer (the reply came first, as it nearly always does) wakes the
//! timer thread: a futex wake and a context switch for every reply and every stream event.
//! Instead a waiter registers its reply channel here and waits without a timeout; one thread sends
//! every registered channel a [`Reply::Nudge`] each [`NUDGE_EVERY`], at which the waiter looks at
//! its client and its deadline and waits again. Registering and leaving cost a short lock of one
//! of [`SHARDS`] shards, which nothing holds for long.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::job::Reply;

/// How often a waiting coroutine is woken to check its client and deadline.
pub const NUDGE_EVERY: Duration = crate::http::STREAM_POLL_WAIT;
/// How often the nudging thread looks for waiters due a nudge.
const TICK: Duration = Duration::from_millis(50);
/// Independent registries, so that coroutines on different scheduler threads rarely meet.
const SHARDS: usize = 16;

struct Entry {
    tx: crate::handoff::Sender<Reply>,
    next: Instant,
}

#[derive(Default)]
struct Shard {
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
}

static SHARD_LIST: [Mutex<Shard>; SHARDS] = [const {
    Mutex::new(Shard {
        slots: Vec::new(),
        free: Vec::new(),
    })
}; SHARDS];
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);
static STARTED: AtomicBool = AtomicBool::new(false);
static START: Mutex<()> = Mutex::new(());

fn lock(shard: usize) -> MutexGuard<'static, Shard> {
    SHARD_LIST[shard].lock().unwrap_or_else(|p| p.into_inner())
}

/// Start the nudging thread (once per process; later calls return at once).
pub fn start() -> Result<(), String> {
    if STARTED.load(Ordering::Acquire) {
        return Ok(());
    }
    let _once = START.lock().unwrap_or_else(|p| p.into_inner());
    if STARTED.load(Ordering::Acquire) {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("reply-nudger".into())
        .stack_size(64 * 1024)
        .spawn(run)
        .map_err(|e| format!("cannot start thread reply-nudger: {e}"))?;
    STARTED.store(true, Ordering::Release);
    Ok(())
}

fn run() {
    loop {
        std::thread::sleep(TICK);
        nudge_due(Instant::now());
    }
}

/// Nudge every waiter whose last nudge (or registration) is [`NUDGE_EVERY`] old. The send happens
/// under the shard's lock, so a waiter that has left can never be nudged afterwards.
fn nudge_due(now: Instant) -> usize {
    let mut sent = 0;
    for shard in 0..SHARDS {
        let mut s = lock(shard);
        for entry in s.slots.iter_mut().flatten() {
            if entry.next <= now {
                entry.next = now + NUDGE_EVERY;
                let _ = entry.tx.send(Reply::Nudge);
                sent += 1;
            }
        }
    }
    sent
}

/// A registered waiter; leaves the registry when dropped. Drop it before its reply channel goes
/// back to the channel pool.
pub struct Watch {
    shard: usize,
    slot: usize,
}

/// Register `tx` (the sending half of the channel a coroutine waits on) for nudges. Fails only when
/// the nudging thread cannot be started.
pub fn watch(tx: &crate::handoff::Sender<Reply>) -> Result<Watch, String> {
    start()?;
    Ok(register(tx, Instant::now() + NUDGE_EVERY))
}

/// Register `tx` for its first nudge at `next`.
fn register(tx: &crate::handoff::Sender<Reply>, next: Instant) -> Watch {
    let shard = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
    let entry = Entry {
        tx: tx.clone(),
        next,
    };
    let mut s = lock(shard);
    let slot = match s.free.pop() {
        Some(slot) => {
            s.slots[slot] = Some(entry);
            slot
        }
        None => {
            s.slots.push(Some(entry));
            s.slots.len() - 1
        }
    };
    Watch { shard, slot }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let entry = {
            let mut s = lock(self.shard);
            let entry = s.slots[self.slot].take();
            s.free.push(self.slot);
            entry
        };
        // The sender clone is dropped outside the lock.
        drop(entry);
    }
}

/// Waiters registered now (for tests and stats).
pub fn registered() -> usize {
    (0..SHARDS)
        .map(|shard| {
            let s = lock(shard);
            s.slots.len() - s.free.len()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_waiters_are_nudged_once_per_period_and_a_dropped_watch_never() {
        // Due an hour from now, so the running nudger (if another test started it) never is.
        let first = Instant::now() + Duration::from_secs(3600);
        let (tx, rx) = crate::handoff::channel();
        let w = register(&tx, first);
        let (tx2, rx2) = crate::handoff::channel();
        let w2 = register(&tx2, first + NUDGE_EVERY * 2);
        assert!(registered() >= 2);
        nudge_due(first - TICK);
        assert!(rx.try_recv().is_err(), "not due yet");
        nudge_due(first);
        assert!(matches!(rx.try_recv(), Ok(Reply::Nudge)));
        assert!(rx2.try_recv().is_err(), "the other is due later");
        nudge_due(first + TICK);
        assert!(rx.try_recv().is_err(), "once per period, not once per tick");
        nudge_due(first + NUDGE_EVERY);
        assert!(matches!(rx.try_recv(), Ok(Reply::Nudge)));
        drop(w);
        nudge_due(first + NUDGE_EVERY * 2);
        assert!(rx.try_recv().is_err(), "a dropped watch is never nudged");
        assert!(matches!(rx2.try_recv(), Ok(Reply::Nudge)));
        drop(w2);
    }

    #[test]
    fn freed_slots_are_reused() {
        let first = Instant::now() + Duration::from_secs(3600);
        let (tx, _rx) = crate::handoff::channel();
        let held: Vec<Watch> = (0..SHARDS * 4).map(|_| register(&tx, first)).collect();
        let len_before: usize = (0..SHARDS).map(|s| lock(s).slots.len()).sum();
        drop(held);
        let again: Vec<Watch> = (0..SHARDS * 4).map(|_| register(&tx, first)).collect();
        let len_after: usize = (0..SHARDS).map(|s| lock(s).slots.len()).sum();
        // Other tests may register meanwhile, but never as many as were freed here.
        assert!(
            len_after < len_before + SHARDS * 4,
            "{len_before} -> {len_after}"
        );
        drop(again);
    }
}

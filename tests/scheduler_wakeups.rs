//! The `may` scheduler thread is woken through its eventfd only while it sleeps (the vendored
//! patch, vendor/may/PATCHES.md): a coroutine made ready from another thread while the
//! scheduler is busy is collected before it sleeps again. Lost wake-ups would show here as a
//! coroutine that never receives what was sent to it; nothing here measures speed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Messages each sender thread sends.
const MESSAGES: u64 = 20_000;
/// Sender threads (worker threads replying to coroutines, in the gateway).
const SENDERS: u64 = 3;

#[test]
fn coroutines_woken_from_other_threads_miss_no_wake_up() {
    may::config().set_workers(1);
    let received = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    let mut coroutines = Vec::new();
    for s in 0..SENDERS {
        let (tx, rx) = may::sync::mpsc::channel::<u64>();
        let got = Arc::clone(&received);
        // SAFETY: the coroutine touches no thread-local state.
        let co = unsafe {
            may::coroutine::spawn(move || {
                let mut next = 0;
                while next < MESSAGES {
                    let n = rx.recv().expect("the sender waits for us");
                    assert_eq!(n, next, "in order");
                    next += 1;
                    got.fetch_add(1, Ordering::Relaxed);
                    if n % 1000 == 0 {
                        // Busy for a while: messages arrive while the scheduler thread runs.
                        let t0 = Instant::now();
                        while t0.elapsed() < Duration::from_micros(200) {}
                    }
                }
            })
        };
        coroutines.push(co);
        senders.push(std::thread::spawn(move || {
            for n in 0..MESSAGES {
                tx.send(n).expect("the coroutine is alive");
                match (n + s) % 500 {
                    // Now and then long enough for the scheduler thread to fall asleep.
                    0 => std::thread::sleep(Duration::from_millis(2)),
                    1..=3 => std::thread::yield_now(),
                    _ => {}
                }
            }
        }));
    }
    for s in senders {
        s.join().expect("sender");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) < SENDERS * MESSAGES {
        assert!(
            Instant::now() < deadline,
            "a wake-up was lost: {} of {} received",
            received.load(Ordering::Relaxed),
            SENDERS * MESSAGES
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    for co in coroutines {
        co.join().expect("coroutine");
    }
}

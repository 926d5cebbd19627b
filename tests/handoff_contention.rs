//! Worker threads hand their replies to the front's coroutines through the gateway's reply
//! channel (`deepintshield::handoff`), whose wake-up queues the coroutine on may's scheduler's
//! global queue. With thousands of worker threads on two cores, a thread preempted inside that
//! queue's push (while it installs the queue's next block, or between reserving a slot and
//! filling it) must not leave every other pusher, and the scheduler thread that pops, spinning
//! for it: that turned a burst of replies into a livelock that held both cores for many minutes.

use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

/// Replies from `threads` OS threads released at once, each to its own waiting coroutine.
fn burst(threads: usize) -> Duration {
    let (done_tx, done_rx) = mpsc::channel::<usize>();
    let mut senders = Vec::with_capacity(threads);
    for _ in 0..threads {
        let (tx, rx) = deepintshield::handoff::channel::<usize>();
        let done = done_tx.clone();
        // SAFETY: the coroutine touches no thread-local state.
        unsafe {
            may::coroutine::Builder::new()
                .stack_size(16 * 1024 / std::mem::size_of::<usize>())
                .spawn(move || {
                    if let Ok(v) = rx.recv() {
                        let _ = done.send(v);
                    }
                })
                .expect("spawn a coroutine");
        }
        senders.push(tx);
    }
    let start = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, tx)| {
            let start = Arc::clone(&start);
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    start.wait();
                    tx.send(i).expect("the coroutine waits");
                })
                .expect("spawn a thread")
        })
        .collect();
    let began = Instant::now();
    start.wait();
    let deadline = began + Duration::from_secs(60);
    let mut seen = vec![false; threads];
    for _ in 0..threads {
        let left = deadline.saturating_duration_since(Instant::now());
        let i = done_rx
            .recv_timeout(left)
            .expect("every reply reaches its coroutine within 60 s");
        assert!(!std::mem::replace(&mut seen[i], true), "reply {i} twice");
    }
    let took = began.elapsed();
    for h in handles {
        h.join().expect("a sender panicked");
    }
    took
}

#[test]
fn a_burst_of_replies_from_thousands_of_threads_reaches_its_coroutines() {
    may::config().set_workers(1);
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        worst = worst.max(burst(3_000));
    }
    eprintln!("worst burst of 3,000 replies: {worst:?}");
}

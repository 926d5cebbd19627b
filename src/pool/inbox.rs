//! How workers take jobs from their pool's bounded crossbeam channel: one worker at a time.
//!
//! In crossbeam's bounded (array) channel a receiver that reaches a slot a sender has claimed but
//! not yet written spins until the write lands, and receivers racing for the same head back off by
//! spinning too. With hundreds of workers over eight cores at saturation, the workers spent most of
//! the gateway's CPU there (82 % of the samples in `try_recv`, bench/README.md "Scaling with
//! cores"): every running worker spun whenever a sender was preempted halfway through its send.
//! Here a worker first looks whether anything is queued at all (two loads, nothing waits) and
//! then takes its turn behind a lock to receive. At most one worker is inside the channel's receive
//! at a time; the others sleep on the lock (a futex) instead of spinning, and a receive held up by
//! a preempted sender holds up one worker, not all that are running.

use std::sync::Mutex;

use crossbeam_channel::Receiver;

/// The receiving side of a pool's job channel, shared by its workers.
pub(crate) struct JobInbox<T> {
    rx: Receiver<T>,
    turn: Mutex<()>,
}

impl<T> JobInbox<T> {
    pub fn new(rx: Receiver<T>) -> JobInbox<T> {
        JobInbox {
            rx,
            turn: Mutex::new(()),
        }
    }

    /// The job at the head of the queue, if one is queued.
    pub fn take(&self) -> Option<T> {
        if self.rx.is_empty() {
            return None;
        }
        let _turn = self.turn.lock().unwrap_or_else(|p| p.into_inner());
        self.rx.try_recv().ok()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Jobs queued now.
    pub fn len(&self) -> usize {
        self.rx.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn every_job_is_taken_once_in_order_per_sender() {
        const SENDERS: u32 = 2;
        const JOBS: u32 = 50_000;
        let (tx, rx) = bounded::<(u32, u32)>(64);
        let inbox = JobInbox::new(rx);
        let done = AtomicBool::new(false);
        let taken: Vec<Vec<(u32, u32)>> = std::thread::scope(|s| {
            let senders: Vec<_> = (0..SENDERS)
                .map(|sender| {
                    let tx = tx.clone();
                    s.spawn(move || {
                        for i in 0..JOBS {
                            tx.send((sender, i)).unwrap();
                        }
                    })
                })
                .collect();
            let takers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut got = Vec::new();
                        loop {
                            match inbox.take() {
                                Some(job) => got.push(job),
                                None if done.load(Ordering::Acquire) && inbox.is_empty() => {
                                    return got
                                }
                                None => std::thread::yield_now(),
                            }
                        }
                    })
                })
                .collect();
            for sender in senders {
                sender.join().unwrap();
            }
            while !inbox.is_empty() {
                std::thread::yield_now();
            }
            done.store(true, Ordering::Release);
            takers.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let mut all: Vec<(u32, u32)> = Vec::new();
        for got in &taken {
            // One taker sees each sender's jobs in the order they were sent.
            for sender in 0..SENDERS {
                let mine: Vec<u32> = got.iter().filter(|j| j.0 == sender).map(|j| j.1).collect();
                assert!(mine.windows(2).all(|w| w[0] < w[1]), "out of order");
            }
            all.extend(got);
        }
        all.sort_unstable();
        let want: Vec<(u32, u32)> = (0..SENDERS)
            .flat_map(|s| (0..JOBS).map(move |i| (s, i)))
            .collect();
        assert_eq!(all.len(), want.len(), "a job lost or taken twice");
        assert_eq!(all, want);
    }
}

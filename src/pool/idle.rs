//! How idle workers sleep and how a queued job wakes one of them.
//!
//! The jobs themselves travel on the pool's bounded crossbeam channel; only the sleeping is done
//! here. A worker blocked in crossbeam's `recv` is woken by the sender while the sender still
//! holds the channel's waker lock, and the first thing the woken worker does is take that lock to
//! unregister: on two cores it nearly always finds it held, sleeps on it and is woken a second
//! time (measured: 3 voluntary context switches per request in a worker instead of 2). Here a
//! worker with nothing to do lists itself, checks the queue once more and parks its thread; a
//! submitter that queued a job pops the most recently idle worker (its stack is the warmest) and
//! unparks it after letting go of the list's lock. Thread parking is a bare futex.
//!
//! No wake-up is lost: a worker lists itself before its last look at the queue, a submitter
//! queues before it looks at the list, and a fence on each side orders the two. A worker listed
//! once stays listed until popped, so the list never holds more entries than there are workers.

use std::sync::atomic::{fence, AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::Thread;

use crossbeam_channel::Receiver;
use std::time::Duration;

const BUSY: u8 = 0;
const WAITING: u8 = 1;
const WOKEN: u8 = 2;

/// One worker's side of the idle list.
pub(crate) struct Parker {
    thread: Thread,
    state: AtomicU8,
    /// Whether the list holds this parker (changed only under the list's lock).
    listed: AtomicBool,
}

impl Parker {
    /// The parker of the calling thread.
    pub fn current() -> Arc<Parker> {
        Arc::new(Parker {
            thread: std::thread::current(),
            state: AtomicU8::new(BUSY),
            listed: AtomicBool::new(false),
        })
    }
}

/// A pool's idle workers, most recently idle last.
#[derive(Default)]
pub(crate) struct IdleWorkers {
    list: Mutex<Vec<Arc<Parker>>>,
    /// Entries in `list`, for the submitter's fast path.
    len: AtomicUsize,
}

impl IdleWorkers {
    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Parker>>> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pop(&self) -> Option<Arc<Parker>> {
        let mut list = self.lock();
        let p = list.pop();
        if let Some(p) = &p {
            p.listed.store(false, Ordering::Relaxed);
        }
        self.len.store(list.len(), Ordering::Relaxed);
        p
    }

    /// Call after queueing a job: wake one waiting worker, if one waits. False when none waited.
    pub fn wake_one(&self) -> bool {
        fence(Ordering::SeqCst);
        if self.len.load(Ordering::Relaxed) == 0 {
            return false;
        }
        // Entries of workers that found a job on their own are stale: skip them.
        while let Some(p) = self.pop() {
            if p.state
                .compare_exchange(WAITING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                p.thread.unpark();
                return true;
            }
        }
        false
    }

    /// Wake every listed worker (the pool is closing).
    pub fn wake_all(&self) {
        let all: Vec<Arc<Parker>> = {
            let mut list = self.lock();
            self.len.store(0, Ordering::Relaxed);
            std::mem::take(&mut *list)
        };
        for p in all {
            p.listed.store(false, Ordering::Relaxed);
            p.state.store(WOKEN, Ordering::Release);
            p.thread.unpark();
        }
    }

    /// Wait up to `timeout` for a job from `rx`; nothing waits once `closed` is set. `None` after
    /// the timeout, or a wake-up whose job another worker took first.
    pub fn wait<T>(
        &self,
        me: &Arc<Parker>,
        timeout: Duration,
        rx: &Receiver<T>,
        closed: &AtomicBool,
    ) -> Option<T> {
        me.state.store(WAITING, Ordering::SeqCst);
        {
            let mut list = self.lock();
            if !me.listed.load(Ordering::Relaxed) {
                list.push(Arc::clone(me));
                me.listed.store(true, Ordering::Relaxed);
                self.len.store(list.len(), Ordering::Relaxed);
            }
        }
        fence(Ordering::SeqCst);
        if let Ok(job) = rx.try_recv() {
            // If a submitter had just picked this worker to wake, its job may still be queued
            // with nobody woken for it: pass the wake-up on.
            if me.state.swap(BUSY, Ordering::SeqCst) == WOKEN && !rx.is_empty() {
                self.wake_one();
            }
            return Some(job);
        }
        if closed.load(Ordering::Acquire) {
            me.state.store(BUSY, Ordering::SeqCst);
            return None;
        }
        std::thread::park_timeout(timeout);
        // After a timeout or a spurious return the entry stays listed; the next wait reuses it.
        me.state.store(BUSY, Ordering::SeqCst);
        rx.try_recv().ok()
    }

    /// Drop a worker's entry (it is exiting).
    pub fn forget(&self, me: &Arc<Parker>) {
        let mut list = self.lock();
        if me.listed.load(Ordering::Relaxed) {
            list.retain(|p| !Arc::ptr_eq(p, me));
            me.listed.store(false, Ordering::Relaxed);
            self.len.store(list.len(), Ordering::Relaxed);
        }
    }

    /// Entries listed now (stale ones included).
    #[cfg(test)]
    fn listed(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;
    use std::time::Instant;

    #[test]
    fn a_queued_job_wakes_a_parked_worker_at_once() {
        let idle = Arc::new(IdleWorkers::default());
        let (tx, rx) = bounded::<u32>(16);
        let (done_tx, done_rx) = bounded::<(u32, Duration)>(16);
        let worker = {
            let idle = Arc::clone(&idle);
            std::thread::spawn(move || {
                let me = Parker::current();
                loop {
                    let t0 = Instant::now();
                    let job = rx.try_recv().ok().or_else(|| {
                        idle.wait(&me, Duration::from_secs(30), &rx, &AtomicBool::new(false))
                    });
                    if let Some(job) = job {
                        done_tx.send((job, t0.elapsed())).unwrap();
                        if job == 0 {
                            idle.forget(&me);
                            return;
                        }
                    }
                }
            })
        };
        for job in [3, 2, 1, 0] {
            // Let the worker park first.
            let t0 = Instant::now();
            while idle.len.load(Ordering::Relaxed) == 0 && t0.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(5));
            tx.send(job).unwrap();
            idle.wake_one();
            let (got, _) = done_rx.recv_timeout(Duration::from_secs(5)).expect("woken");
            assert_eq!(got, job);
        }
        worker.join().unwrap();
        assert_eq!(idle.listed(), 0, "an exiting worker leaves the list");
    }

    #[test]
    fn no_job_is_left_behind_by_many_workers_and_submitters() {
        const WORKERS: usize = 4;
        const JOBS: u32 = 20_000;
        let idle = Arc::new(IdleWorkers::default());
        let (tx, rx) = bounded::<u32>(64);
        let (done_tx, done_rx) = bounded::<u32>(JOBS as usize);
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let (idle, rx, done_tx, stop) = (
                    Arc::clone(&idle),
                    rx.clone(),
                    done_tx.clone(),
                    Arc::clone(&stop),
                );
                std::thread::spawn(move || {
                    let me = Parker::current();
                    loop {
                        // A long timeout: a lost wake-up would show as a stuck job.
                        let job = rx
                            .try_recv()
                            .ok()
                            .or_else(|| idle.wait(&me, Duration::from_secs(60), &rx, &stop));
                        match job {
                            Some(job) => done_tx.send(job).unwrap(),
                            None if stop.load(Ordering::Acquire) => return,
                            None => {}
                        }
                    }
                })
            })
            .collect();
        let submitters: Vec<_> = (0..2u32)
            .map(|s| {
                let (idle, tx) = (Arc::clone(&idle), tx.clone());
                std::thread::spawn(move || {
                    for i in 0..JOBS / 2 {
                        tx.send(s * JOBS + i).unwrap();
                        idle.wake_one();
                        if i % 64 == 0 {
                            // Bursts and pauses, so workers both park and find work on their own.
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    }
                })
            })
            .collect();
        for s in submitters {
            s.join().unwrap();
        }
        let mut got = 0;
        while got < JOBS {
            done_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("every queued job is taken without waiting for a timeout");
            got += 1;
        }
        stop.store(true, Ordering::Release);
        idle.wake_all();
        for w in workers {
            w.join().unwrap();
        }
        assert!(idle.listed() <= WORKERS);
    }
}

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
//! Idle workers are listed by the core they are pinned to, and a submitter wakes one on its own
//! core when there is one: the hand-off (and the reply after the call) then stays on that core,
//! so the woken thread runs when the submitter's scheduler thread goes back to sleep instead of
//! being sent to another core with an interrupt (on a virtual machine, an exit and an entry each
//! way). Only when that core has no idle worker is one of another core woken.
//!
//! No wake-up is lost: a worker lists itself before its last look at the queue, a submitter
//! queues before it looks at the lists, and a fence on each side orders the two. A worker listed
//! once stays listed until popped, so the lists never hold more entries than there are workers.

use std::sync::atomic::{fence, AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::Thread;

use super::inbox::JobInbox;
use std::time::Duration;

const BUSY: u8 = 0;
const WAITING: u8 = 1;
const WOKEN: u8 = 2;

/// One worker's side of the idle lists.
pub(crate) struct Parker {
    thread: Thread,
    state: AtomicU8,
    /// Whether a list holds this parker (changed only under that list's lock).
    listed: AtomicBool,
    /// The list it goes on: its core's.
    slot: usize,
}

impl Parker {
    /// The parker of the calling thread, a worker pinned to the pool's core number `slot`.
    pub fn current(slot: usize) -> Arc<Parker> {
        Arc::new(Parker {
            thread: std::thread::current(),
            state: AtomicU8::new(BUSY),
            listed: AtomicBool::new(false),
            slot,
        })
    }
}

/// A pool's idle workers, one list per core of the pool, most recently idle last.
pub(crate) struct IdleWorkers {
    lists: Box<[Mutex<Vec<Arc<Parker>>>]>,
    /// Entries in all lists, for the submitter's fast path.
    len: AtomicUsize,
    /// For each CPU id of the machine, the list of the workers pinned to it (`usize::MAX`: the
    /// pool has no worker there).
    slot_of_cpu: Box<[usize]>,
}

impl IdleWorkers {
    /// Lists for workers pinned to `cpus` (the pool's cores, in the order workers are placed);
    /// one list when the pool's workers are not pinned (`cpus` empty).
    pub fn new(cpus: &[usize]) -> IdleWorkers {
        let lists = cpus.len().max(1);
        let mut slot_of_cpu = vec![usize::MAX; cpus.iter().max().map_or(0, |&c| c + 1)];
        for (slot, &cpu) in cpus.iter().enumerate() {
            if slot_of_cpu[cpu] == usize::MAX {
                slot_of_cpu[cpu] = slot;
            }
        }
        IdleWorkers {
            lists: (0..lists).map(|_| Mutex::new(Vec::new())).collect(),
            len: AtomicUsize::new(0),
            slot_of_cpu: slot_of_cpu.into_boxed_slice(),
        }
    }

    fn lock(&self, slot: usize) -> MutexGuard<'_, Vec<Arc<Parker>>> {
        self.lists[slot % self.lists.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The list of the core the calling thread runs on (the first when it is not one of the
    /// pool's cores).
    fn local_slot(&self) -> usize {
        if self.lists.len() == 1 {
            return 0;
        }
        // SAFETY: sched_getcpu takes no arguments; it returns -1 on failure.
        let cpu = unsafe { libc::sched_getcpu() };
        match usize::try_from(cpu)
            .ok()
            .and_then(|c| self.slot_of_cpu.get(c))
        {
            Some(&slot) if slot != usize::MAX => slot,
            _ => 0,
        }
    }

    fn pop(&self, slot: usize) -> Option<Arc<Parker>> {
        let mut list = self.lock(slot);
        let p = list.pop();
        if let Some(p) = &p {
            p.listed.store(false, Ordering::Relaxed);
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        p
    }

    /// Call after queueing a job: wake one waiting worker, if one waits, preferring one pinned to
    /// the calling thread's core. False when none waited.
    pub fn wake_one(&self) -> bool {
        fence(Ordering::SeqCst);
        if self.len.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let first = self.local_slot();
        let lists = self.lists.len();
        for i in 0..lists {
            // Entries of workers that found a job on their own are stale: skip them.
            while let Some(p) = self.pop((first + i) % lists) {
                if p.state
                    .compare_exchange(WAITING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    p.thread.unpark();
                    return true;
                }
            }
        }
        false
    }

    /// Wake every listed worker (the pool is closing).
    pub fn wake_all(&self) {
        let mut all: Vec<Arc<Parker>> = Vec::new();
        for slot in 0..self.lists.len() {
            let mut list = self.lock(slot);
            self.len.fetch_sub(list.len(), Ordering::Relaxed);
            all.append(&mut list);
        }
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
        rx: &JobInbox<T>,
        closed: &AtomicBool,
    ) -> Option<T> {
        me.state.store(WAITING, Ordering::SeqCst);
        {
            let mut list = self.lock(me.slot);
            if !me.listed.load(Ordering::Relaxed) {
                list.push(Arc::clone(me));
                me.listed.store(true, Ordering::Relaxed);
                self.len.fetch_add(1, Ordering::Relaxed);
            }
        }
        fence(Ordering::SeqCst);
        if let Some(job) = rx.take() {
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
        rx.take()
    }

    /// Drop a worker's entry (it is exiting).
    pub fn forget(&self, me: &Arc<Parker>) {
        let mut list = self.lock(me.slot);
        if me.listed.load(Ordering::Relaxed) {
            list.retain(|p| !Arc::ptr_eq(p, me));
            me.listed.store(false, Ordering::Relaxed);
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Entries listed now (stale ones included).
    #[cfg(test)]
    fn listed(&self) -> usize {
        (0..self.lists.len()).map(|s| self.lock(s).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;
    use std::time::Instant;

    #[test]
    fn a_queued_job_wakes_a_parked_worker_at_once() {
        let idle = Arc::new(IdleWorkers::new(&[]));
        let (tx, rx) = bounded::<u32>(16);
        let rx = JobInbox::new(rx);
        let (done_tx, done_rx) = bounded::<(u32, Duration)>(16);
        let worker = {
            let idle = Arc::clone(&idle);
            std::thread::spawn(move || {
                let me = Parker::current(0);
                loop {
                    let t0 = Instant::now();
                    let job = rx.take().or_else(|| {
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
        // Two lists, as for a pool on two cores: jobs are never lost between them.
        let idle = Arc::new(IdleWorkers::new(&[0, 1]));
        let (tx, rx) = bounded::<u32>(64);
        let rx = Arc::new(JobInbox::new(rx));
        let (done_tx, done_rx) = bounded::<u32>(JOBS as usize);
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (idle, rx, done_tx, stop) = (
                    Arc::clone(&idle),
                    Arc::clone(&rx),
                    done_tx.clone(),
                    Arc::clone(&stop),
                );
                std::thread::spawn(move || {
                    let me = Parker::current(w % 2);
                    loop {
                        // A long timeout: a lost wake-up would show as a stuck job.
                        let job = rx
                            .take()
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

    #[test]
    fn a_submitter_wakes_a_worker_of_its_own_core_first() {
        // SAFETY: no arguments; -1 on failure.
        let Ok(cpu) = usize::try_from(unsafe { libc::sched_getcpu() }) else {
            return;
        };
        // Pin this thread where it is, so that its core stays the same during the test.
        let _ = core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
        let other = cpu + 1;
        let idle = IdleWorkers::new(&[other, cpu]);
        let (tx, _rx) = bounded::<u32>(4);
        let parked = |slot: usize| {
            let me = Parker::current(slot);
            // Listed, then no job: it would park (the test does not let it).
            me.state.store(WAITING, Ordering::SeqCst);
            idle.lock(slot).push(Arc::clone(&me));
            me.listed.store(true, Ordering::Relaxed);
            idle.len.fetch_add(1, Ordering::Relaxed);
            me
        };
        let far = parked(0);
        let near = parked(1);
        let state = |p: &Arc<Parker>| p.state.load(Ordering::SeqCst);
        for (job, woken, what) in [
            (1, &near, "this core's worker"),
            (2, &far, "then another core's"),
        ] {
            tx.send(job).unwrap();
            assert!(idle.wake_one(), "{what}");
            assert_eq!(state(woken), WOKEN, "{what}");
            if job == 1 {
                assert_eq!(state(&far), WAITING, "the other core's waits meanwhile");
            }
        }
        assert_eq!(idle.listed(), 0);
    }
}

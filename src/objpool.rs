//! Lock-free object pools for per-request buffers and messages, filled at start-up, with
//! statistics: gets, hits, misses, returns, discards, acquisition and reset times.
//!
//! The objects sit in a fixed array of slots, linked in two stacks: slots holding an object and
//! empty slots. A `get` pops a full slot, takes its object and pushes the slot on the empty stack;
//! a return does the reverse. Each push and pop is one compare-and-swap of the stack's head, which
//! holds a slot index and a tag counting the head's changes (a slot popped and pushed again
//! between another thread's read and its swap changes the tag, so that swap fails and retries).
//! No step waits for another thread's: a thread preempted in the middle of a `get` holds its slot
//! and nothing else. A queue whose slots pass through a claimed-but-not-yet-written state (such
//! as crossbeam's `ArrayQueue`) makes everyone behind a preempted thread spin until it runs again;
//! with hundreds of worker threads on a few cores, that spinning took 14 % of the gateway's CPU
//! at saturation. The stacks are also LIFO: the object returned last, warm in cache, goes out
//! first.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The end of a stack (no slot).
const NIL: u32 = u32::MAX;

/// A stack's head: the top slot's index (low 32 bits) and a tag changed by every push and pop.
fn head(tag: u64, index: u32) -> u64 {
    (tag << 32) | u64::from(index)
}

/// Fixed slots of objects, in the two stacks described in the module's documentation.
struct Slots<T> {
    cells: Box<[UnsafeCell<MaybeUninit<T>>]>,
    /// Each slot's successor in the stack that holds it.
    next: Box<[AtomicU32]>,
    full: AtomicU64,
    empty: AtomicU64,
}

// SAFETY: a slot's cell is touched only by the thread that popped the slot from a stack, until it
// pushes the slot again; the swaps of the heads (release on push, acquire on pop) order the
// object's writes before its reads. Objects move between threads, hence `T: Send`.
unsafe impl<T: Send> Sync for Slots<T> {}
unsafe impl<T: Send> Send for Slots<T> {}

impl<T> Slots<T> {
    fn new(capacity: usize) -> Slots<T> {
        let capacity = capacity.min(NIL as usize - 1);
        let next: Box<[AtomicU32]> = (0..capacity)
            .map(|i| AtomicU32::new(if i + 1 < capacity { i as u32 + 1 } else { NIL }))
            .collect();
        Slots {
            cells: (0..capacity)
                .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
                .collect(),
            next,
            full: AtomicU64::new(head(0, NIL)),
            empty: AtomicU64::new(head(0, if capacity > 0 { 0 } else { NIL })),
        }
    }

    fn capacity(&self) -> usize {
        self.cells.len()
    }

    fn pop_slot(&self, stack: &AtomicU64) -> Option<u32> {
        let mut h = stack.load(Ordering::Acquire);
        loop {
            let index = h as u32;
            if index == NIL {
                return None;
            }
            // Read before the swap; if the slot left the stack meanwhile, the tag moved on and the
            // swap fails.
            let next = self.next[index as usize].load(Ordering::Relaxed);
            match stack.compare_exchange_weak(
                h,
                head((h >> 32).wrapping_add(1), next),
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(index),
                Err(now) => h = now,
            }
        }
    }

    fn push_slot(&self, stack: &AtomicU64, index: u32) {
        let mut h = stack.load(Ordering::Relaxed);
        loop {
            self.next[index as usize].store(h as u32, Ordering::Relaxed);
            match stack.compare_exchange_weak(
                h,
                head((h >> 32).wrapping_add(1), index),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => h = now,
            }
        }
    }

    /// The object pushed last, if any.
    fn pop(&self) -> Option<T> {
        let index = self.pop_slot(&self.full)?;
        // SAFETY: a slot on the full stack holds an initialised object, and popping the slot
        // gave this thread sole access to it until it is pushed again.
        let obj = unsafe { (*self.cells[index as usize].get()).assume_init_read() };
        self.push_slot(&self.empty, index);
        Some(obj)
    }

    /// Keep `obj`, or hand it back when every slot is full.
    fn push(&self, obj: T) -> Result<(), T> {
        let Some(index) = self.pop_slot(&self.empty) else {
            return Err(obj);
        };
        // SAFETY: a slot on the empty stack holds no object, and popping it gave this thread sole
        // access to it until it is pushed again.
        unsafe { (*self.cells[index as usize].get()).write(obj) };
        self.push_slot(&self.full, index);
        Ok(())
    }
}

impl<T> Drop for Slots<T> {
    fn drop(&mut self) {
        while self.pop().is_some() {}
    }
}

/// An object that can be reset for reuse and can tell whether it is still worth keeping.
pub trait Recycle {
    /// Clear the contents, keep the allocation.
    fn reset(&mut self);
    /// Bytes held by the object, compared against the pool's `retain_bytes_max`.
    fn retained_bytes(&self) -> usize;
}

impl Recycle for Vec<u8> {
    fn reset(&mut self) {
        self.clear();
    }
    fn retained_bytes(&self) -> usize {
        self.capacity()
    }
}

/// Counters of one pool. Relaxed atomics: they are statistics, not synchronisation.
#[derive(Default)]
pub struct ObjPoolCounters {
    pub gets: AtomicU64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub returns: AtomicU64,
    pub discards: AtomicU64,
    pub get_ns_total: AtomicU64,
    pub reset_ns_total: AtomicU64,
}

/// A point-in-time copy of a pool's counters.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ObjPoolSnapshot {
    pub name: &'static str,
    pub capacity: usize,
    pub available: usize,
    pub gets: u64,
    pub hits: u64,
    pub misses: u64,
    pub returns: u64,
    pub discards: u64,
    pub hit_ratio: f64,
    pub get_ns_avg: u64,
    pub reset_ns_avg: u64,
}

/// A bounded pool of reusable objects. `get` never blocks: an empty pool makes a new object (a miss).
pub struct ObjPool<T: Recycle> {
    name: &'static str,
    slots: Slots<T>,
    /// Objects made at start (the pool holds `prefilled + returns - hits` of them).
    prefilled: u64,
    make: fn() -> T,
    retain_bytes_max: usize,
    pub counters: ObjPoolCounters,
}

impl<T: Recycle> ObjPool<T> {
    /// A pool holding up to `capacity` objects, `prefill` of them made now (start-up, not the hot
    /// path). Objects that grew past `retain_bytes_max` are dropped instead of returned.
    pub fn new(
        name: &'static str,
        capacity: usize,
        prefill: usize,
        retain_bytes_max: usize,
        make: fn() -> T,
    ) -> Arc<Self> {
        let slots = Slots::new(capacity.max(1));
        let prefilled = prefill.min(slots.capacity());
        for _ in 0..prefilled {
            let _ = slots.push(make());
        }
        Arc::new(ObjPool {
            name,
            slots,
            prefilled: prefilled as u64,
            make,
            retain_bytes_max,
            counters: ObjPoolCounters::default(),
        })
    }

    /// Take an object (reset, ready to use); it goes back to the pool when the guard drops.
    pub fn get(self: &Arc<Self>) -> Pooled<T> {
        let t0 = Instant::now();
        let c = &self.counters;
        c.gets.fetch_add(1, Ordering::Relaxed);
        let obj = match self.slots.pop() {
            Some(obj) => {
                c.hits.fetch_add(1, Ordering::Relaxed);
                obj
            }
            None => {
                c.misses.fetch_add(1, Ordering::Relaxed);
                (self.make)()
            }
        };
        c.get_ns_total
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Pooled {
            obj: Some(obj),
            pool: Arc::clone(self),
            single_use: false,
        }
    }

    fn put_back(&self, mut obj: T) {
        let c = &self.counters;
        if obj.retained_bytes() > self.retain_bytes_max {
            c.discards.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let t0 = Instant::now();
        obj.reset();
        c.reset_ns_total
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match self.slots.push(obj) {
            Ok(()) => c.returns.fetch_add(1, Ordering::Relaxed),
            Err(_) => c.discards.fetch_add(1, Ordering::Relaxed),
        };
    }

    pub fn snapshot(&self) -> ObjPoolSnapshot {
        let c = &self.counters;
        let gets = c.gets.load(Ordering::Relaxed);
        let hits = c.hits.load(Ordering::Relaxed);
        let returns = c.returns.load(Ordering::Relaxed);
        ObjPoolSnapshot {
            name: self.name,
            capacity: self.slots.capacity(),
            // Exact when no get or return is under way.
            available: (self.prefilled + returns).saturating_sub(hits) as usize,
            gets,
            hits,
            misses: c.misses.load(Ordering::Relaxed),
            returns,
            discards: c.discards.load(Ordering::Relaxed),
            hit_ratio: if gets == 0 {
                1.0
            } else {
                hits as f64 / gets as f64
            },
            get_ns_avg: c.get_ns_total.load(Ordering::Relaxed) / gets.max(1),
            reset_ns_avg: c.reset_ns_total.load(Ordering::Relaxed) / returns.max(1),
        }
    }
}

/// An object on loan from an [`ObjPool`].
pub struct Pooled<T: Recycle> {
    obj: Option<T>,
    pool: Arc<ObjPool<T>>,
    single_use: bool,
}

impl<T: Recycle> Pooled<T> {
    /// Do not return this object to the pool (e.g. it was handed to code that may keep state in it).
    pub fn mark_single_use(&mut self) {
        self.single_use = true;
    }

    /// Take the object out; it will not return to the pool.
    pub fn into_inner(mut self) -> T {
        self.pool.counters.discards.fetch_add(1, Ordering::Relaxed);
        match self.obj.take() {
            Some(obj) => obj,
            None => (self.pool.make)(),
        }
    }
}

impl<T: Recycle> Deref for Pooled<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // `obj` is only None after `into_inner`, which consumes the guard.
        self.obj.as_ref().expect("pooled object present until drop")
    }
}

impl<T: Recycle> DerefMut for Pooled<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.obj.as_mut().expect("pooled object present until drop")
    }
}

impl<T: Recycle> Drop for Pooled<T> {
    fn drop(&mut self) {
        if let Some(obj) = self.obj.take() {
            if self.single_use {
                self.pool.counters.discards.fetch_add(1, Ordering::Relaxed);
            } else {
                self.pool.put_back(obj);
            }
        }
    }
}

/// Anything that can report pool statistics (pools of different `T` in one list).
pub trait ObjPoolStats: Send + Sync {
    fn snapshot(&self) -> ObjPoolSnapshot;
}

impl<T: Recycle + Send> ObjPoolStats for ObjPool<T> {
    fn snapshot(&self) -> ObjPoolSnapshot {
        ObjPool::snapshot(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make_buf() -> Vec<u8> {
        Vec::with_capacity(64)
    }

    #[test]
    fn hits_misses_returns_discards() {
        let pool = ObjPool::new("t", 2, 1, 1024, make_buf);
        {
            let mut a = pool.get(); // hit
            a.extend_from_slice(b"hello");
            let _b = pool.get(); // miss
        }
        let s = pool.snapshot();
        assert_eq!((s.gets, s.hits, s.misses, s.returns), (2, 1, 1, 2));
        let a = pool.get();
        assert!(a.is_empty(), "returned objects are reset");
        drop(a);
        {
            let mut big = pool.get();
            big.reserve(4096); // grown past the cap: discarded
        }
        {
            let mut once = pool.get();
            once.mark_single_use();
        }
        let s = pool.snapshot();
        assert_eq!(s.discards, 2);
        assert!(s.hit_ratio > 0.5);
    }

    #[test]
    fn full_pool_discards_extra() {
        let pool = ObjPool::new("t", 1, 0, 1024, make_buf);
        let a = pool.get();
        let b = pool.get();
        drop(a);
        drop(b);
        let s = pool.snapshot();
        assert_eq!(s.returns, 1);
        assert_eq!(s.discards, 1);
        assert_eq!(s.available, 1);
    }

    #[test]
    fn the_object_returned_last_goes_out_first() {
        let pool = ObjPool::new("t", 4, 0, 1024, make_buf);
        let (mut a, mut b) = (pool.get(), pool.get());
        a.push(1);
        b.push(2);
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        drop(a);
        drop(b);
        assert_eq!(pool.get().as_ptr(), pb);
        assert_eq!(
            pool.get().as_ptr(),
            pb,
            "the same one again after its return"
        );
        let (x, y) = (pool.get(), pool.get());
        assert_eq!((x.as_ptr(), y.as_ptr()), (pb, pa));
    }

    /// An object that knows whether it is on loan, and counts its drops.
    struct Token {
        lent: std::sync::atomic::AtomicBool,
        drops: &'static std::sync::atomic::AtomicUsize,
    }

    impl Recycle for Token {
        fn reset(&mut self) {}
        fn retained_bytes(&self) -> usize {
            0
        }
    }

    impl Drop for Token {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::Relaxed);
        }
    }

    static TOKEN_DROPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    fn make_token() -> Token {
        Token {
            lent: std::sync::atomic::AtomicBool::new(false),
            drops: &TOKEN_DROPS,
        }
    }

    #[test]
    fn no_object_is_lent_twice_or_lost_by_many_threads() {
        const THREADS: usize = 8;
        const ROUNDS: usize = 50_000;
        let pool = ObjPool::new("t", 6, 6, 1024, make_token);
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    for i in 0..ROUNDS {
                        let a = pool.get();
                        assert!(!a.lent.swap(true, Ordering::AcqRel), "an object lent twice");
                        let b = (i % 3 == 0).then(|| pool.get());
                        if let Some(b) = &b {
                            assert!(!b.lent.swap(true, Ordering::AcqRel), "an object lent twice");
                            b.lent.store(false, Ordering::Release);
                        }
                        a.lent.store(false, Ordering::Release);
                    }
                });
            }
        });
        let s = pool.snapshot();
        assert_eq!(s.hits + s.misses, s.gets);
        assert_eq!(
            s.returns + s.discards,
            s.gets,
            "every object came back or was dropped"
        );
        assert_eq!(s.available, 6, "the pool is full again");
        let made = 6 + s.misses as usize;
        let dropped_before = TOKEN_DROPS.load(Ordering::Relaxed);
        assert_eq!(dropped_before, s.discards as usize);
        drop(pool);
        assert_eq!(
            TOKEN_DROPS.load(Ordering::Relaxed),
            made,
            "the pool drops what it holds"
        );
    }
}

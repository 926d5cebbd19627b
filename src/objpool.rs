//! Lock-free object pools (crossbeam `ArrayQueue`) for per-request buffers and messages, filled at
//! start-up, with statistics: gets, hits, misses, returns, discards, acquisition and reset times.

use crossbeam_queue::ArrayQueue;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

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
    queue: ArrayQueue<T>,
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
        let capacity = capacity.max(1);
        let queue = ArrayQueue::new(capacity);
        for _ in 0..prefill.min(capacity) {
            let _ = queue.push(make());
        }
        Arc::new(ObjPool {
            name,
            queue,
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
        let obj = match self.queue.pop() {
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
        match self.queue.push(obj) {
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
            capacity: self.queue.capacity(),
            available: self.queue.len(),
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
}

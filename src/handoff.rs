//! The channel a worker thread's replies travel on to the coroutine waiting for them (and the
//! nudges of [`crate::pool::waiters`]): many senders, one receiver, which may wait in a coroutine
//! or in a thread without blocking a scheduler thread.
//!
//! may's own channel keeps two blocks of 64 slots per channel (5.2 KiB for a reply), allocated
//! when the channel is made and kept while it lives; with a reply channel per call in flight that
//! was the largest part of a waiting call's heap. Here an empty channel holds nothing: a message
//! travels in a node of its own, pushed onto a lock-free stack that the receiver takes whole and
//! reverses, so it reads messages in the order they were sent. Nothing ever waits for another
//! thread to finish a step: a sender preempted in its push leaves the receiver seeing an empty
//! channel, and the sender's wake-up comes after its push.

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::mpsc::{RecvError, SendError, TryRecvError};
use std::sync::Arc;

use may::sync::{AtomicOption, Blocker};

struct Node<T> {
    value: T,
    /// In `Shared::pushed`: the message sent before this one. In `Receiver::taken`: the one after.
    next: *mut Node<T>,
}

struct Shared<T> {
    /// Messages sent and not yet taken by the receiver, the newest first.
    pushed: AtomicPtr<Node<T>>,
    /// The receiver waiting for a message, if it waits.
    to_wake: AtomicOption<Arc<Blocker>>,
    senders: AtomicUsize,
    receiver_gone: AtomicBool,
}

// SAFETY: the nodes are reached only through the atomic stack (moved whole to the receiver) and
// their values are `Send`.
unsafe impl<T: Send> Send for Shared<T> {}
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        free_list(self.pushed.swap(ptr::null_mut(), Ordering::Acquire));
    }
}

/// Free a list of nodes linked by `next`, dropping their values.
fn free_list<T>(mut node: *mut Node<T>) {
    while !node.is_null() {
        // SAFETY: every node was made by `Box::into_raw` and is in one list only.
        let boxed = unsafe { Box::from_raw(node) };
        node = boxed.next;
    }
}

/// A new channel: the sending half (clone it for more senders) and the receiving half.
pub fn channel<T: Send>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        pushed: AtomicPtr::new(ptr::null_mut()),
        to_wake: AtomicOption::none(),
        senders: AtomicUsize::new(1),
        receiver_gone: AtomicBool::new(false),
    });
    let rx = Receiver {
        shared: Arc::clone(&shared),
        taken: Cell::new(ptr::null_mut()),
    };
    (Sender { shared }, rx)
}

pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T: Send> Sender<T> {
    /// Queue `value` and wake the receiver if it waits. Fails (giving `value` back) once the
    /// receiver is gone.
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        let shared = &self.shared;
        if shared.receiver_gone.load(Ordering::Acquire) {
            return Err(SendError(value));
        }
        let node = Box::into_raw(Box::new(Node {
            value,
            next: ptr::null_mut(),
        }));
        let mut head = shared.pushed.load(Ordering::Relaxed);
        loop {
            // SAFETY: the node is not yet shared.
            unsafe { (*node).next = head };
            // AcqRel: a receiver's take before this push (which found nothing, after it stored
            // its blocker) is seen whole, so the `to_wake` read below sees that blocker.
            match shared.pushed.compare_exchange_weak(
                head,
                node,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => head = now,
            }
        }
        if let Some(waiter) = shared.to_wake.take() {
            waiter.unpark();
        }
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::AcqRel);
        Sender {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last sender: a waiting receiver learns that nothing more comes.
            if let Some(waiter) = self.shared.to_wake.take() {
                waiter.unpark();
            }
        }
    }
}

pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// Messages taken from `shared.pushed` and not yet returned, the oldest first.
    taken: Cell<*mut Node<T>>,
}

// SAFETY: the receiver owns the nodes in `taken`, whose values are `Send`; `Cell` keeps it from
// being shared between threads.
unsafe impl<T: Send> Send for Receiver<T> {}

impl<T: Send> Receiver<T> {
    /// The next message if one was sent; `Disconnected` when none is left and every sender is
    /// gone.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        if let Some(value) = self.pop_taken() {
            return Ok(value);
        }
        // Read before the stack is taken: a sender's last message is pushed before it is dropped.
        let senders_left = self.shared.senders.load(Ordering::Acquire);
        // AcqRel: see `Sender::send`.
        let mut node = self.shared.pushed.swap(ptr::null_mut(), Ordering::AcqRel);
        if node.is_null() {
            return Err(if senders_left == 0 {
                TryRecvError::Disconnected
            } else {
                TryRecvError::Empty
            });
        }
        // Newest first -> oldest first.
        let mut reversed = ptr::null_mut();
        while !node.is_null() {
            // SAFETY: the stack was taken whole; its nodes are this receiver's now.
            let next = unsafe { (*node).next };
            unsafe { (*node).next = reversed };
            reversed = node;
            node = next;
        }
        self.taken.set(reversed);
        Ok(self.pop_taken().expect("a message was taken"))
    }

    /// Wait for the next message: a coroutine yields to its scheduler, a thread parks. `Err`
    /// when none is left and every sender is gone.
    pub fn recv(&self) -> Result<T, RecvError> {
        loop {
            match self.try_recv() {
                Ok(value) => return Ok(value),
                Err(TryRecvError::Disconnected) => return Err(RecvError),
                Err(TryRecvError::Empty) => {}
            }
            let me = Blocker::current();
            self.shared.to_wake.store(Arc::clone(&me));
            // A message sent before the store found no one to wake: look again before parking.
            match self.try_recv() {
                Ok(value) => {
                    self.shared.to_wake.clear();
                    return Ok(value);
                }
                Err(TryRecvError::Disconnected) => {
                    self.shared.to_wake.clear();
                    return Err(RecvError);
                }
                Err(TryRecvError::Empty) => {
                    // A cancelled coroutine returns early; the loop looks again.
                    let _ = me.park(None);
                }
            }
        }
    }

    fn pop_taken(&self) -> Option<T> {
        let node = self.taken.get();
        if node.is_null() {
            return None;
        }
        // SAFETY: nodes in `taken` are owned by this receiver, made by `Box::into_raw`.
        let boxed = unsafe { Box::from_raw(node) };
        self.taken.set(boxed.next);
        Some(boxed.value)
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.receiver_gone.store(true, Ordering::Release);
        self.shared.to_wake.clear();
        free_list(self.taken.replace(ptr::null_mut()));
        // What is sent from now on is freed with the channel (`Shared`'s drop).
        free_list(self.shared.pushed.swap(ptr::null_mut(), Ordering::Acquire));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn messages_arrive_in_order_across_takes() {
        let (tx, rx) = channel();
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        assert_eq!(rx.try_recv(), Ok(1));
        tx.send(3).unwrap();
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Ok(3));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn each_sender_s_messages_keep_their_order() {
        let (tx, rx) = channel::<(usize, usize)>();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        tx.send((t, i)).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        let mut next = [0usize; 4];
        let mut got = 0;
        while let Ok((t, i)) = rx.recv() {
            assert_eq!(i, next[t], "sender {t} out of order");
            next[t] += 1;
            got += 1;
        }
        assert_eq!(got, 40_000, "recv ends only when every sender is gone");
        for h in threads {
            h.join().unwrap();
        }
    }

    #[test]
    fn a_waiting_thread_is_woken_by_a_send_and_by_the_last_sender_leaving() {
        let (tx, rx) = channel::<u32>();
        let tx2 = tx.clone();
        let waiter = std::thread::spawn(move || (rx.recv(), rx.recv()));
        std::thread::sleep(Duration::from_millis(50));
        tx.send(7).unwrap();
        drop(tx);
        std::thread::sleep(Duration::from_millis(50));
        drop(tx2);
        assert_eq!(waiter.join().unwrap(), (Ok(7), Err(RecvError)));
    }

    /// Run `f` on a coroutine of 16 KiB. `f` must hold nothing thread-local across its waits.
    fn spawn_coroutine(f: impl FnOnce() + Send + 'static) {
        // SAFETY: the callers' closures hold nothing thread-local across a yield.
        unsafe {
            may::coroutine::Builder::new()
                .stack_size(16 * 1024 / std::mem::size_of::<usize>())
                .spawn(f)
                .expect("spawn a coroutine");
        }
    }

    #[test]
    fn a_waiting_coroutine_is_woken_by_a_send_from_a_thread() {
        let (tx, rx) = channel::<u32>();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        spawn_coroutine(move || {
            let _ = done_tx.send(rx.recv());
        });
        std::thread::sleep(Duration::from_millis(50));
        tx.send(9).unwrap();
        let got = done_rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(got, Ok(Ok(9)));
    }

    #[test]
    fn a_coroutine_woken_from_a_thread_resumes_on_the_scheduler_thread_it_waited_on() {
        const WAKES: u32 = 16;
        let (tx, rx) = channel::<u32>();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        // The coroutine asks the kernel for the id of the thread it runs on (nothing thread-local).
        spawn_coroutine(move || {
            let mut moved = 0;
            for _ in 0..WAKES {
                // SAFETY: gettid takes no arguments.
                let before = unsafe { libc::gettid() };
                if rx.recv().is_err() {
                    break;
                }
                moved += u32::from(unsafe { libc::gettid() } != before);
            }
            let _ = done_tx.send(moved);
        });
        for i in 0..WAKES {
            // Let the coroutine park first, so that the send wakes it.
            std::thread::sleep(Duration::from_millis(5));
            tx.send(i).unwrap();
        }
        let moved = done_rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(
            moved,
            Ok(0),
            "wake-ups that moved the coroutine to another thread"
        );
    }

    #[test]
    fn a_send_after_the_receiver_left_fails_and_nothing_leaks() {
        let value = Arc::new(());
        let (tx, rx) = channel();
        tx.send(Arc::clone(&value)).unwrap();
        tx.send(Arc::clone(&value)).unwrap();
        assert!(rx.try_recv().is_ok());
        drop(rx);
        assert!(tx.send(Arc::clone(&value)).is_err());
        assert_eq!(
            Arc::strong_count(&value),
            1,
            "queued messages dropped with the receiver"
        );
        let (tx, rx) = channel();
        tx.send(Arc::clone(&value)).unwrap();
        drop(tx);
        drop(rx);
        assert_eq!(Arc::strong_count(&value), 1);
    }
}

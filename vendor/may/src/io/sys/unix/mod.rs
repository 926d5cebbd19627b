#[cfg(any(target_os = "linux", target_os = "android"))]
#[path = "epoll.rs"]
mod select;

#[cfg(any(
    target_os = "dragonfly",
    target_os = "freebsd",
    target_os = "ios",
    target_os = "macos",
    target_os = "netbsd",
    target_os = "openbsd"
))]
#[path = "kqueue.rs"]
mod select;

#[cfg(feature = "io_cancel")]
pub mod cancel;
pub mod co_io;
pub mod net;
pub mod wait_io;

#[cfg(feature = "io_timeout")]
use std::sync::Mutex;
use std::ops::Deref;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::{fmt, io};

use crate::coroutine_impl::{run_coroutine, CoroutineImpl};
use crate::io::thread::ASSOCIATED_IO_RET;
use crate::likely::likely;
use crate::scheduler::get_scheduler;
use crate::sync::AtomicOption;
#[cfg(feature = "io_timeout")]
use crate::timeout_list::{TimeOutList, TimeoutHandle};
use crate::yield_now::get_co_para;
#[cfg(feature = "io_timeout")]
use crate::yield_now::set_co_para;

pub(crate) use self::select::{Selector, SysEvent};

#[inline]
pub fn add_socket<T: AsRawFd + ?Sized>(t: &T) -> io::Result<IoData> {
    get_scheduler().get_selector().add_fd(IoData::new(t))
}

#[inline]
pub fn mod_socket(io: &IoData, is_read: bool) -> io::Result<()> {
    get_scheduler().get_selector().mod_fd(io, is_read)
}

#[inline]
fn del_socket(io: &IoData) {
    // transfer the io to the selector
    get_scheduler().get_selector().del_fd(io);
}

// deal with the io result
#[inline]
fn co_io_result(is_coroutine: bool) -> io::Result<()> {
    if likely(is_coroutine) {
        match get_co_para() {
            None => Ok(()),
            Some(err) => Err(err),
        }
    } else {
        let err = ASSOCIATED_IO_RET.with(|io_ret| io_ret.take());
        match err {
            None => Ok(()),
            Some(err) => Err(*err),
        }
    }
}

#[inline]
fn from_nix_error(err: nix::Error) -> ::std::io::Error {
    std::io::Error::from_raw_os_error(err as i32)
}

#[cfg(feature = "io_timeout")]
fn timeout_handler(data: TimerData) {
    if data.event_data.is_null() {
        return;
    }

    let event_data = unsafe { &mut *data.event_data };
    // A timer of an earlier wait that could not be removed in time: the io it guarded is done,
    // and the coroutine may be waiting on another io of this fd by now; leave that one alone.
    if event_data.timer_gen.load(Ordering::Acquire) != data.gen {
        return;
    }
    // remove the event timer
    drop(event_data.take_timer());

    // get and check the coroutine
    let mut co = match event_data.co.take() {
        Some(co) => co,
        None => {
            // The coroutine has not stored itself yet (its thread was preempted between adding
            // the timer and subscribing). Flag the io so that it looks again once it has, and
            // waits anew, instead of waiting without a timer.
            event_data.io_flag.fetch_or(1, Ordering::AcqRel);
            return;
        }
    };

    set_co_para(&mut co, io::Error::new(io::ErrorKind::TimedOut, "timeout"));

    // resume the coroutine with timeout error
    run_coroutine(co);
}

// the timeout data
#[cfg(feature = "io_timeout")]
pub struct TimerData {
    event_data: *mut EventData,
    /// `EventData::timer_gen` when the timer was added.
    gen: usize,
}

#[cfg(feature = "io_timeout")]
pub type TimerList = TimeOutList<TimerData>;
#[cfg(feature = "io_timeout")]
pub type TimerHandle = TimeoutHandle<TimerData>;

// event associated io data, must be construct in
// each file handle, the epoll event.data would point to it
pub struct EventData {
    pub fd: RawFd,
    pub io_flag: AtomicUsize,
    /// The timer of the current wait. Set by the waiting coroutine's thread, taken by whichever
    /// thread completes the wait (the selector's on an event or a timeout, the coroutine's own,
    /// a canceller's), so it is locked, never borrowed: a `RefCell` here was taken by two threads
    /// at once under load ("already borrowed", an abort).
    #[cfg(feature = "io_timeout")]
    pub timer: Mutex<Option<TimerHandle>>,
    /// Counts the timers added for this fd, so that a timeout handler can tell a timer of an
    /// earlier wait from the current one.
    #[cfg(feature = "io_timeout")]
    pub timer_gen: AtomicUsize,
    pub co: AtomicOption<CoroutineImpl>,
}

unsafe impl Send for EventData {}
unsafe impl Sync for EventData {}

impl EventData {
    pub fn new(fd: RawFd) -> EventData {
        EventData {
            fd,
            io_flag: AtomicUsize::new(0),
            #[cfg(feature = "io_timeout")]
            timer: Mutex::new(None),
            #[cfg(feature = "io_timeout")]
            timer_gen: AtomicUsize::new(0),
            co: AtomicOption::none(),
        }
    }

    /// The data of a new timer for the next wait: it becomes the current generation.
    #[cfg(feature = "io_timeout")]
    pub fn timer_data(&self) -> TimerData {
        TimerData {
            event_data: self as *const _ as *mut _,
            gen: self.timer_gen.fetch_add(1, Ordering::AcqRel).wrapping_add(1),
        }
    }

    /// Take the current timer out; the lock is released before the caller acts on it.
    #[cfg(feature = "io_timeout")]
    pub fn take_timer(&self) -> Option<TimerHandle> {
        self.timer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Install the timer of the current wait.
    #[cfg(feature = "io_timeout")]
    pub fn set_timer(&self, h: TimerHandle) {
        *self.timer.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
    }

    /// Remove the current timer, telling its handler not to cancel the io (the entry may
    /// already be on its way to the handler, which then finds no coroutine or a newer
    /// generation).
    #[cfg(feature = "io_timeout")]
    pub fn remove_timer(&self) {
        if let Some(h) = self.take_timer() {
            unsafe {
                h.with_mut_data(|value| value.data.event_data = std::ptr::null_mut());
            }
            h.remove();
        }
    }

    #[inline]
    pub fn schedule(&self) {
        let co = match self.co.take() {
            Some(co) => co,
            None => return, // it's already take by selector
        };

        #[cfg(feature = "io_timeout")]
        self.remove_timer();

        // schedule the coroutine
        get_scheduler().schedule(co);
    }

    /// used by local re-schedule that in `subscribe`
    #[inline]
    pub fn fast_schedule(&self) {
        let co = match self.co.take() {
            Some(co) => co,
            None => return, // it's already take by selector
        };

        #[cfg(feature = "io_timeout")]
        self.remove_timer();

        // run the coroutine
        run_coroutine(co);
    }
}

// each file associated data
pub struct IoData(Arc<EventData>);

impl IoData {
    pub fn new<T: AsRawFd + ?Sized>(t: &T) -> Self {
        let fd = t.as_raw_fd();
        let event_data = Arc::new(EventData::new(fd));
        IoData(event_data)
    }

    // clear the io flag
    #[inline]
    pub fn reset(&self) -> usize {
        self.io_flag.swap(0, Ordering::AcqRel)
    }
}

impl Deref for IoData {
    type Target = Arc<EventData>;

    fn deref(&self) -> &Arc<EventData> {
        &self.0
    }
}

impl fmt::Debug for IoData {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "IoData = {{ ... }}")
    }
}

impl Drop for IoData {
    fn drop(&mut self) {
        del_socket(self);
    }
}

impl AsFd for IoData {
    fn as_fd(&self) -> BorrowedFd<'_> {
        unsafe { BorrowedFd::borrow_raw(self.0.fd) }
    }
}

unsafe impl Send for IoData {}

//! The atomics and the futex the rings use, swappable for loom's models.
//!
//! Production code uses `std`'s atomics and the Linux futex (see [`crate::futex`]).
//! Under `--cfg loom` the same names resolve to loom's atomics, and [`WakeWord`]
//! becomes a futex model built from loom's `Mutex` and `Condvar`: `wait` checks the
//! word and goes to sleep atomically with respect to `wake`, exactly the guarantee
//! the kernel gives, so a lost wake-up shows up in loom as a deadlock.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use std::time::Duration;

/// The address of the wake word whose next `FUTEX_WAKE` is dropped (0: none), set by the
/// `fault-injection` test hook. Only ever tested on the wake path, which makes a syscall anyway.
#[cfg(all(feature = "fault-injection", not(loom)))]
static DROP_WAKE_OF: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Busy-wait hint; a scheduling point under loom so that spin loops terminate there.
#[inline]
pub(crate) fn spin_loop() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// Gives up the CPU.
#[inline]
pub(crate) fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

/// A 32-bit word one side sleeps on and the other side wakes.
///
/// The word is `0` while nobody sleeps and `1` while its waiter has announced that it
/// is about to sleep (see the wake-up protocol in [`crate::ring::spsc`]).
#[cfg(not(loom))]
#[repr(C)]
#[derive(Debug)]
pub struct WakeWord {
    word: AtomicU32,
}

/// A 32-bit word one side sleeps on and the other side wakes (loom model).
#[cfg(loom)]
#[derive(Debug)]
pub struct WakeWord {
    word: AtomicU32,
    lock: loom::sync::Mutex<()>,
    cond: loom::sync::Condvar,
}

impl WakeWord {
    /// A word with nobody waiting (loom models only; in a segment the zeroed page is the initial state).
    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        WakeWord { word: AtomicU32::new(0), lock: loom::sync::Mutex::new(()), cond: loom::sync::Condvar::new() }
    }

    /// The word itself, for the announce/check half of the protocol.
    #[inline]
    pub(crate) fn word(&self) -> &AtomicU32 {
        &self.word
    }

    /// Sleeps while the word equals `expected`, for at most `timeout`.
    ///
    /// Returns on a wake, on a value mismatch, on a signal, on a timeout, or spuriously:
    /// the caller always re-checks its condition. Returns `true` only on a timeout.
    #[cfg(not(loom))]
    pub(crate) fn wait(&self, expected: u32, timeout: Option<Duration>) -> bool {
        crate::futex::wait(&self.word, expected, timeout)
    }

    /// Wakes every process sleeping on the word. The caller has already changed the word.
    #[cfg(not(loom))]
    pub(crate) fn wake(&self) {
        #[cfg(feature = "fault-injection")]
        if self.take_dropped_wake() {
            return;
        }
        crate::futex::wake_all(&self.word);
    }

    /// Arms the fault injection of [`crate::Producer::drop_next_wake`] for this word.
    #[cfg(all(feature = "fault-injection", not(loom)))]
    pub(crate) fn drop_next_wake(&self) {
        // Relaxed: a lone flag guarding no other data; the producer that arms it is the
        // one whose next publish reads it.
        DROP_WAKE_OF.store(self.word.as_ptr() as usize, Ordering::Relaxed);
    }

    /// Whether the next wake on this word was to be dropped (and disarms it).
    #[cfg(all(feature = "fault-injection", not(loom)))]
    fn take_dropped_wake(&self) -> bool {
        let me = self.word.as_ptr() as usize;
        // Relaxed: a single flag with no data behind it.
        DROP_WAKE_OF.load(Ordering::Relaxed) == me
            && DROP_WAKE_OF.compare_exchange(me, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// Model of `FUTEX_WAIT`: checking the word and sleeping is atomic against `wake`.
    /// Loom has no clock, so the timeout is ignored: a lost wake-up deadlocks the model.
    #[cfg(loom)]
    pub(crate) fn wait(&self, expected: u32, _timeout: Option<Duration>) -> bool {
        let guard = self.lock.lock().unwrap();
        if self.word.load(Ordering::SeqCst) != expected {
            return false;
        }
        drop(self.cond.wait(guard).unwrap());
        false
    }

    /// Model of `FUTEX_WAKE`.
    #[cfg(loom)]
    pub(crate) fn wake(&self) {
        let _guard = self.lock.lock().unwrap();
        self.cond.notify_all();
    }
}

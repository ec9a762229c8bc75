//! The Linux futex, wrapped once.
//!
//! Futex words live in shared memory mapped by several processes, so every call uses
//! the shared form (`FUTEX_WAIT` / `FUTEX_WAKE` without `FUTEX_PRIVATE_FLAG`): the
//! kernel keys the wait queue by the backing page, not by the virtual address.
//! See [futex(2)](https://man7.org/linux/man-pages/man2/futex.2.html).
//! Neither `nix` nor `std` exposes the futex, so this module calls `libc::syscall`.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleeps while `*word == expected`, for at most `timeout` (forever when `None`).
///
/// Every outcome (woken, value already different, interrupted by a signal, timed out)
/// returns normally: callers re-check their condition and their deadline in a loop,
/// which makes spurious wake-ups harmless. Returns `true` only when the timeout expired.
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> bool {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned 4-byte atomic (in a mapping that outlives this
    // call); the kernel only reads it. `ts_ptr` is null or points to a timespec on our
    // stack. FUTEX_WAIT with a relative timeout takes no other pointer.
    let rc = unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, ts_ptr, std::ptr::null::<u32>(), 0u32)
    };
    rc == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT)
}

/// Wakes every waiter on `word`; returns how many were woken.
pub(crate) fn wake_all(word: &AtomicU32) -> usize {
    // SAFETY: `word` is a live, aligned 4-byte atomic; FUTEX_WAKE reads no other argument
    // as a pointer.
    let woken = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    usize::try_from(woken).unwrap_or(0)
}

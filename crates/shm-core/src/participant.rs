//! Who is attached to a segment, and whether they are still alive.
//!
//! Each producer and consumer holds an open-file-description (OFD) write lock on one
//! byte of the segment's lock file, at `LOCK_BASE + slot`; the kernel drops the lock when
//! the process dies, however it dies. The slot in the segment records the pid and uid
//! for display only (pids are reused, and differ between PID namespaces). A role is taken
//! by taking its lock, so two live producers on one spsc ring are impossible, and a
//! producer that was killed is replaced as soon as its lock is gone, never earlier.
//!
//! The lock file is the segment itself for posix, file and anon segments (byte-range
//! locks need no file of their own, and vanish with it), and
//! `/dev/shm/.shmring-sysv-<key>.lock` for SysV segments, which have no file descriptor.
//! OFD locks belong to an open file description, so each attachment re-opens the file
//! (through `/proc/self/fd`) and two handles in one process conflict like two processes.
//! See [fcntl(2)](https://man7.org/linux/man-pages/man2/fcntl.2.html), "Open file description locks".
//!
//! # Fork
//! A child created by `fork` inherits every descriptor, and with them a reference to
//! each open file description holding a role lock: the role would stay "alive" after
//! the process that took it died, for as long as the child lives. So a role belongs to
//! the process that took it: every held lock descriptor is registered in a fixed table
//! ([`MAX_HELD`] entries, plain atomics, no allocation), and a `pthread_atfork` child
//! handler points each of them at a fresh placeholder descriptor (`dup3` of an
//! `eventfd`) in the child, dropping the child's reference to the locked description
//! without freeing the descriptor number (the inherited handle still owns it and will
//! close it). Only the parent's reference keeps the lock, and the kernel releases it
//! when the parent dies. An inherited handle never marks the parent's slot detached
//! either. A child that wants a role attaches itself. (`vfork` and `posix_spawn` run no
//! fork handlers; they `exec` at once, and the lock descriptors are close-on-exec.)
//!
//! Until that exec, though, the child's copy of the descriptor table still refers to
//! every lock its parent held when it was spawned. A thread that detaches a role while
//! another thread of its process is spawning a child (a daemon running a hook, a test
//! harness running tests in parallel) leaves the lock held for that moment, with its
//! slot already marked detached. An attach that finds a detached slot's lock held waits
//! for it, up to `INHERITED_LOCK_PATIENCE`, rather than refusing a free role: every kind's
//! attach takes its lock through `take_role_lock`, told how that kind marks a clean detach
//! (a participant slot's state; a broadcast consumer's cursor slot; an mpmc worker's line).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::AtomicI32;

use nix::fcntl::{FcntlArg, fcntl};

use crate::layout::{Header, ParticipantSlot};
use crate::sync::Ordering;

/// Byte offset of slot 0's lock; far beyond any segment's data, so locks never cover it.
const LOCK_BASE: i64 = 1 << 50;

/// Slot states stored in [`ParticipantSlot::state`].
const STATE_ATTACHED: u32 = 1;
const STATE_DETACHED: u32 = 2;
/// The lock is held and the holder is writing its details.
const STATE_CLAIMING: u32 = 3;

/// What a participant does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Writes records.
    Producer,
    /// Reads records.
    Consumer,
}

impl Role {
    /// The value stored in the segment.
    pub const fn code(self) -> u32 {
        match self {
            Role::Producer => 1,
            Role::Consumer => 2,
        }
    }

    /// The role for a stored value.
    pub const fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Role::Producer),
            2 => Some(Role::Consumer),
            _ => None,
        }
    }

    /// The slot a spsc ring reserves for this role.
    pub(crate) const fn spsc_slot(self) -> usize {
        match self {
            Role::Producer => 0,
            Role::Consumer => 1,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
        })
    }
}

/// Whether a participant is alive, by its kernel lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// Its lock is held: the process is alive.
    Alive,
    /// It never detached and its lock is gone: the process died.
    Dead,
    /// It detached cleanly.
    Detached,
    /// The lock cannot be checked (a SysV segment without its lock file).
    Unknown,
}

/// One participant as recorded in the segment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Participant {
    /// Its slot.
    pub slot: usize,
    /// Its role, `None` if the slot holds an unknown value.
    pub role: Option<Role>,
    /// Its pid when it attached (display only).
    pub pid: u32,
    /// Its uid.
    pub uid: u32,
    /// When it attached, nanoseconds since the Unix epoch.
    pub attached_unix_ns: u64,
    /// Alive, dead or detached.
    pub liveness: Liveness,
}

fn flock(kind: libc::c_short, slot: usize) -> libc::flock {
    // SAFETY: `flock` is a plain C struct for which all-zero bytes are valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = LOCK_BASE + slot as i64;
    fl.l_len = 1;
    fl
}

/// Takes the write lock of `slot` on `fd`'s open file description without waiting.
/// `Ok(false)` when another description holds it.
pub(crate) fn try_lock(fd: impl AsFd, slot: usize) -> nix::Result<bool> {
    try_set(fd, libc::F_WRLCK as libc::c_short, slot)
}

/// Takes a read lock on every slot's byte on `fd`'s open file description without
/// waiting: held, it keeps every role from being taken (a participant's write lock
/// conflicts with it), and it can only be had while no participant is alive (their
/// write locks conflict with it). A read lock needs only a read-only descriptor.
/// `Ok(false)` when a live participant holds a slot; then nothing is kept locked that
/// outlives `fd`.
pub(crate) fn try_fence_all(fd: impl AsFd, slots: usize) -> nix::Result<bool> {
    let fd = fd.as_fd();
    for slot in 0..slots {
        if !try_set(fd, libc::F_RDLCK as libc::c_short, slot)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Takes the write lock of every slot's byte on `fd`'s open file description without
/// waiting: held, no role can be taken and no other process fences or repairs the
/// segment. Needs a writable descriptor. `Ok(false)` when any byte is held by another
/// description; then nothing is kept locked that outlives `fd`.
pub(crate) fn try_lock_all(fd: impl AsFd, slots: usize) -> nix::Result<bool> {
    let fd = fd.as_fd();
    for slot in 0..slots {
        if !try_lock(fd, slot)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn try_set(fd: impl AsFd, kind: libc::c_short, slot: usize) -> nix::Result<bool> {
    match fcntl(fd, FcntlArg::F_OFD_SETLK(&flock(kind, slot))) {
        Ok(_) => Ok(true),
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether an open file description other than `fd`'s holds the lock of `slot`.
pub(crate) fn is_locked(fd: impl AsFd, slot: usize) -> nix::Result<bool> {
    let mut fl = flock(libc::F_WRLCK as libc::c_short, slot);
    fcntl(fd, FcntlArg::F_OFD_GETLK(&mut fl))?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Reads the participant table, checking each recorded slot's lock through `lock_fd`.
pub(crate) fn read_table(header: &Header, lock_fd: Option<&OwnedFd>) -> Vec<Participant> {
    header
        .participants
        .iter()
        .enumerate()
        .filter_map(|(slot, p)| {
            // Acquire: pairs with the Release store of `state` in `Attachment::record`.
            let state = p.state.load(Ordering::Acquire);
            if state == 0 {
                return None;
            }
            let locked = lock_fd.map(|fd| is_locked(fd, slot));
            let liveness = match (state, locked) {
                (_, Some(Ok(true))) => Liveness::Alive,
                (STATE_DETACHED, _) => Liveness::Detached,
                (_, Some(Ok(false))) => Liveness::Dead,
                _ => Liveness::Unknown,
            };
            Some(Participant {
                slot,
                role: Role::from_code(p.role.load(Ordering::Relaxed)),
                pid: p.pid.load(Ordering::Relaxed),
                uid: p.uid.load(Ordering::Relaxed),
                attached_unix_ns: p.attached_unix_ns.load(Ordering::Relaxed),
                liveness,
            })
        })
        .collect()
}

/// The pid recorded by the live holder of a slot's lock, for an error message: the
/// holder takes the lock first and records itself just after, so wait briefly (this is
/// an error path) until the record is complete and stable. `None` if it never is.
pub(crate) fn holder_pid(slot: &ParticipantSlot) -> Option<u32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
    let mut last = None;
    loop {
        // Acquire: pairs with the Release store of `state` in `Attachment::record`.
        let state = slot.state.load(Ordering::Acquire);
        let pid = slot.pid.load(Ordering::Relaxed);
        let now = (state == STATE_ATTACHED && pid != 0).then_some(pid);
        if now.is_some() && now == last {
            return now;
        }
        if std::time::Instant::now() >= deadline {
            return now;
        }
        last = now;
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// How long an attach waits for a role whose holder detached but whose lock is still
/// held. The lock's open file description is shared by every child a thread of the
/// holder's process was spawning when it detached (`posix_spawn` and `fork` copy the
/// descriptor table; the copy closes at the child's exec, being close-on-exec), which
/// takes microseconds to a few milliseconds on a loaded machine.
pub(crate) const INHERITED_LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(500);

/// Takes role-lock byte `byte` through `lock` (a fresh open file description of the lock
/// file), for every kind's roles. When the byte is held but `detached` says the role's
/// last holder let it go cleanly, the lock is a copy inherited by a child being spawned
/// (see [`INHERITED_LOCK_PATIENCE`]): wait for that copy to close, up to the patience.
/// `Ok(false)`: a holder that has not detached holds it, or the copy outlived the patience.
pub(crate) fn take_role_lock(lock: impl AsFd, byte: usize, detached: impl Fn() -> bool) -> nix::Result<bool> {
    let lock = lock.as_fd();
    let deadline = std::time::Instant::now() + INHERITED_LOCK_PATIENCE;
    while !try_lock(lock, byte)? {
        if !detached() || std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    Ok(true)
}

/// Whether the slot's last holder detached cleanly (its lock may still be held for a
/// moment by a spawning child: see [`INHERITED_LOCK_PATIENCE`]; or already by a new
/// holder that has not recorded itself yet, which records itself promptly).
pub(crate) fn detached(slot: &ParticipantSlot) -> bool {
    // Acquire: pairs with the Release store of `state` in `Attachment::record`.
    slot.state.load(Ordering::Acquire) == STATE_DETACHED
}

/// Whether a holder that has not detached holds a slot's lock, checked through
/// `lock_fd`: someone really uses the segment. (A detached slot's lock still held is a
/// spawning child's copy: see [`INHERITED_LOCK_PATIENCE`].) An error counts as held.
pub(crate) fn any_attached_holder(header: &Header, lock_fd: impl AsFd) -> bool {
    let fd = lock_fd.as_fd();
    header.participants.iter().enumerate().any(|(slot, p)| !detached(p) && is_locked(fd, slot).unwrap_or(true))
}

/// How many role locks one process can hold at once (each attached producer or consumer
/// holds one).
pub const MAX_HELD: usize = 256;

/// The descriptors of the role locks this process holds, `-1` for a free entry: what
/// the fork handler detaches in a child. Atomics, because the handler may not take a
/// lock (another thread may have held it when `fork` was called).
static HELD: [AtomicI32; MAX_HELD] = [const { AtomicI32::new(-1) }; MAX_HELD];

/// Registers the fork handler once per process.
static FORK_HANDLER: std::sync::Once = std::sync::Once::new();

/// The `pthread_atfork` child handler: in the new child, replaces every registered role
/// lock descriptor by a placeholder, so the child holds no reference to a locked open
/// file description. Async-signal-safe: only atomic loads and raw system calls.
extern "C" fn drop_inherited_roles() {
    // SAFETY: eventfd takes plain integers; the placeholder is never read.
    let placeholder = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    for entry in &HELD {
        // Relaxed: the child is single-threaded here and sees its parent's memory as of
        // the fork.
        let fd = entry.load(Ordering::Relaxed);
        if fd < 0 {
            continue;
        }
        if placeholder >= 0 {
            // SAFETY: `fd` is open in the child (inherited); dup3 atomically closes it
            // and makes it refer to the placeholder, so its number stays owned.
            unsafe { libc::dup3(placeholder, fd, libc::O_CLOEXEC) };
        } else {
            // No placeholder (eventfd failed): close it to drop the reference; the entry
            // is cleared so the inherited handle knows not to close the number again
            // (see `Attachment::drop`).
            // SAFETY: `fd` is open in the child, and nothing else will close it.
            unsafe { libc::close(fd) };
            entry.store(-1, Ordering::Relaxed);
        }
    }
    if placeholder >= 0 {
        // SAFETY: our own descriptor, no longer needed (each dup3 made its own).
        unsafe { libc::close(placeholder) };
    }
}

/// Records `fd` as a held role lock; `None` if the table is full.
fn register_held(fd: i32) -> Option<usize> {
    FORK_HANDLER.call_once(|| {
        // SAFETY: registers a handler that is async-signal-safe (see above).
        unsafe { libc::pthread_atfork(None, None, Some(drop_inherited_roles)) };
    });
    // Relaxed: the table is read only by this process's fork handler, in the thread that
    // calls fork, which is ordered after this by the fork itself when that thread is
    // this one; a fork racing from another thread may miss the newest entry, as it
    // would miss a lock taken a moment later.
    HELD.iter().position(|e| e.compare_exchange(-1, fd, Ordering::Relaxed, Ordering::Relaxed).is_ok())
}

/// A held participant lock and its slot; marks the slot detached and drops the lock
/// when dropped, in the process that took it.
pub(crate) struct Attachment {
    lock: Option<OwnedFd>,
    /// `None` for a role that has a lock byte and no table slot (a broadcast consumer,
    /// which records itself in its cursor slot; an mpmc worker).
    slot: Option<std::ptr::NonNull<ParticipantSlot>>,
    /// The process that took the role (a forked child's copy holds nothing).
    owner: u32,
    /// Its entry in [`HELD`].
    held: usize,
    _keep: Arc<dyn Send + Sync>,
}

// SAFETY: `slot` points into shared memory kept alive by `_keep`, accessed only through
// atomics; nothing about it is tied to a thread.
unsafe impl Send for Attachment {}

impl Attachment {
    /// Records the caller in `slot`, whose lock `lock` already holds. `None` if this
    /// process already holds [`MAX_HELD`] roles (the lock is then dropped).
    ///
    /// # Safety
    /// `slot` must point to a participant slot inside memory that `keep` keeps mapped.
    pub(crate) unsafe fn record(
        lock: OwnedFd,
        slot: std::ptr::NonNull<ParticipantSlot>,
        role: Role,
        keep: Arc<dyn Send + Sync>,
    ) -> Option<Self> {
        use std::os::fd::AsRawFd;
        let held = register_held(lock.as_raw_fd())?;
        // SAFETY: valid by the caller's contract.
        let s = unsafe { slot.as_ref() };
        // First say the details are being replaced, so that nobody takes a previous
        // holder's pid for ours (see `holder_pid`).
        s.state.store(STATE_CLAIMING, Ordering::Relaxed);
        // Relaxed: published by the Release store of `state` below.
        s.role.store(role.code(), Ordering::Relaxed);
        s.pid.store(std::process::id(), Ordering::Relaxed);
        s.uid.store(nix::unistd::geteuid().as_raw(), Ordering::Relaxed);
        s.attached_unix_ns.store(crate::clock::unix_ns(), Ordering::Relaxed);
        // Release: pairs with the Acquire load in `read_table`.
        s.state.store(STATE_ATTACHED, Ordering::Release);
        Some(Attachment { lock: Some(lock), slot: Some(slot), owner: std::process::id(), held, _keep: keep })
    }

    /// Holds `lock` (a role-lock byte with no participant-table slot, such as an mpmc
    /// worker's) for this process. `None` if this process already holds [`MAX_HELD`] roles.
    pub(crate) fn lock_only(lock: OwnedFd, keep: Arc<dyn Send + Sync>) -> Option<Self> {
        use std::os::fd::AsRawFd;
        let held = register_held(lock.as_raw_fd())?;
        Some(Attachment { lock: Some(lock), slot: None, owner: std::process::id(), held, _keep: keep })
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        // Relaxed (both entry accesses): the table is this process's own bookkeeping.
        if std::process::id() != self.owner {
            // A forked child's copy: the role is the parent's, so its slot is left alone.
            // The descriptor is a placeholder now, unless the fork handler had to close
            // it (entry cleared): then its number is not ours to close.
            if HELD[self.held].load(Ordering::Relaxed) < 0 {
                std::mem::forget(self.lock.take());
            }
            HELD[self.held].store(-1, Ordering::Relaxed);
            return;
        }
        if let Some(slot) = self.slot {
            // SAFETY: `_keep` is still alive (fields drop after this), so the slot is mapped.
            let s = unsafe { slot.as_ref() };
            // Release: pairs with the Acquire load in `read_table`. The lock is released
            // after this, when `lock` drops.
            s.state.store(STATE_DETACHED, Ordering::Release);
        }
        // Cleared before the descriptor closes: a fork in between leaves the child a
        // reference for its lifetime, rather than one onto an unrelated reused number.
        HELD[self.held].store(-1, Ordering::Relaxed);
    }
}

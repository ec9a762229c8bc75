//! [`RobustMutex<T>`]: a process-shared lock over data in shared memory that survives a
//! holder killed inside its critical section.
//!
//! It is the pthread robust mutex (`PTHREAD_PROCESS_SHARED` + `PTHREAD_MUTEX_ROBUST`):
//! the kernel keeps a list of the robust mutexes each thread holds (the robust-futex
//! list, see [set_robust_list(2)](https://man7.org/linux/man-pages/man2/set_robust_list.2.html))
//! and, when the thread dies however it dies, marks each one "owner died" and wakes a
//! waiter. The next locker gets `EOWNERDEAD`: it owns the lock, but the data may be half
//! updated. It must repair the data and then call `pthread_mutex_consistent`; if it
//! unlocks without doing so, the mutex becomes permanently unusable (`ENOTRECOVERABLE`),
//! which is the safe failure. See
//! [pthread_mutexattr_setrobust(3)](https://man7.org/linux/man-pages/man3/pthread_mutexattr_setrobust.3.html).
//!
//! The API makes the repair impossible to skip: [`RobustMutex::lock`] returns
//! [`Locked`], whose [`Locked::OwnerDied`] variant yields a guard only through
//! [`OwnerDied::repair`], which runs the repair closure and then marks the lock
//! consistent. Dropping an `OwnerDied` unrepaired unlocks it unrecovered: every later
//! `lock` fails with [`LockError::NotRecoverable`], never hands out the torn data.
//!
//! This is for shared *state* across processes (the seed's parent/child counter); the
//! rings take no lock in their data path. `T` must be plain data (integers and arrays of
//! them, `#[repr(C)]`): another process maps the same bytes, so no pointers, and since a
//! holder may die anywhere, any bit pattern its partial update can leave must be safe to
//! read and repair.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// An earlier locker found the owner dead and unlocked without repairing: the data's
    /// state is unknown and the lock is unusable for good (`ENOTRECOVERABLE`).
    #[error("the lock is not recoverable: a previous holder died and its successor did not repair the data")]
    NotRecoverable,
    /// Another pthread error.
    #[error("pthread mutex call failed")]
    Os(#[source] std::io::Error),
}

fn check(rc: libc::c_int) -> Result<(), LockError> {
    match rc {
        0 => Ok(()),
        libc::ENOTRECOVERABLE => Err(LockError::NotRecoverable),
        rc => Err(LockError::Os(std::io::Error::from_raw_os_error(rc))),
    }
}

/// A robust, process-shared mutex and the `T` it guards, laid out `#[repr(C)]` so that
/// it can live in a segment mapped by several processes.
#[repr(C)]
pub struct RobustMutex<T> {
    mutex: UnsafeCell<libc::pthread_mutex_t>,
    data: UnsafeCell<T>,
}

// SAFETY: the data is only reached through a guard, which the process-shared mutex makes
// exclusive across threads and processes alike.
unsafe impl<T: Send> Sync for RobustMutex<T> {}
// SAFETY: as above; `T: Send` is required to hand it between threads.
unsafe impl<T: Send> Send for RobustMutex<T> {}

impl<T> std::fmt::Debug for RobustMutex<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RobustMutex").finish_non_exhaustive()
    }
}

impl<T> RobustMutex<T> {
    /// Initialises a mutex guarding `value` at `at`, and returns it.
    ///
    /// # Safety
    /// `at` is valid for reads and writes of `size_of::<Self>()` bytes, aligned for
    /// `Self`, in memory that stays mapped for `'a`; nobody else uses those bytes while
    /// this runs (a fresh segment: never re-initialise one that may be live, it would
    /// wipe a holder's lock).
    pub unsafe fn init<'a>(at: NonNull<Self>, value: T) -> Result<&'a Self, LockError> {
        let this = at.as_ptr();
        let mut attr = MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        // SAFETY: `attr` is a local the init call fills in; each call below takes the
        // initialised attribute object, and `mutex` points into memory the caller gave us
        // exclusively (contract above), where `pthread_mutex_init` writes the mutex.
        unsafe {
            check(libc::pthread_mutexattr_init(attr.as_mut_ptr()))?;
            let rc = libc::pthread_mutexattr_setpshared(attr.as_mut_ptr(), libc::PTHREAD_PROCESS_SHARED);
            let rc = if rc == 0 {
                libc::pthread_mutexattr_setrobust(attr.as_mut_ptr(), libc::PTHREAD_MUTEX_ROBUST)
            } else {
                rc
            };
            let rc = if rc == 0 {
                libc::pthread_mutex_init(std::ptr::addr_of_mut!((*this).mutex).cast(), attr.as_ptr())
            } else {
                rc
            };
            libc::pthread_mutexattr_destroy(attr.as_mut_ptr());
            check(rc)?;
            std::ptr::addr_of_mut!((*this).data).cast::<T>().write(value);
            Ok(&*this)
        }
    }

    /// The mutex another process initialised at `at`.
    ///
    /// # Safety
    /// `at` points to a `RobustMutex<T>` that [`RobustMutex::init`] initialised (in any
    /// process), in shared memory that stays mapped for `'a`.
    pub unsafe fn from_ptr<'a>(at: NonNull<Self>) -> &'a Self {
        // SAFETY: the caller's contract.
        unsafe { at.as_ref() }
    }

    fn raw(&self) -> *mut libc::pthread_mutex_t {
        self.mutex.get()
    }

    /// Takes the lock, waiting for it. If its previous holder died inside the critical
    /// section, the lock is taken all the same and [`Locked::OwnerDied`] says so: repair
    /// the data through it to get the guard.
    pub fn lock(&self) -> Result<Locked<'_, T>, LockError> {
        // SAFETY: `raw` points to a mutex initialised by `init` (the constructors'
        // contracts), which lives as long as `self`.
        match unsafe { libc::pthread_mutex_lock(self.raw()) } {
            0 => Ok(Locked::Clean(RobustGuard { mutex: self, _thread: PhantomData })),
            libc::EOWNERDEAD => Ok(Locked::OwnerDied(OwnerDied { mutex: self, _thread: PhantomData })),
            rc => check(rc).map(|()| unreachable!("check(rc) is an error for any rc but 0")),
        }
    }

    /// Takes the lock and, if its previous holder died inside the critical section, runs
    /// `repair` on the data first. `repair` runs exactly once per death.
    pub fn lock_or_repair(&self, repair: impl FnOnce(&mut T)) -> Result<RobustGuard<'_, T>, LockError> {
        match self.lock()? {
            Locked::Clean(guard) => Ok(guard),
            Locked::OwnerDied(died) => died.repair(repair),
        }
    }
}

/// What [`RobustMutex::lock`] got.
#[derive(Debug)]
#[must_use = "an OwnerDied lock must be repaired, or the mutex becomes unrecoverable"]
pub enum Locked<'a, T> {
    /// The previous holder unlocked normally.
    Clean(RobustGuard<'a, T>),
    /// The previous holder died holding the lock: the data may be half updated.
    OwnerDied(OwnerDied<'a, T>),
}

/// Makes a guard neither `Send` nor `Sync`: a pthread mutex is unlocked by the thread
/// that locked it (another thread's unlock of a robust mutex fails with `EPERM` and
/// leaves it held), and the kernel's robust list that reports a dead holder is per thread.
type HeldByThisThread = PhantomData<*const ()>;

/// The lock, held, after its previous holder died inside the critical section. The only
/// way to the data is [`repair`](OwnerDied::repair).
///
/// Like the guard, it stays on the thread that locked:
/// ```compile_fail
/// fn send<S: Send>(_: S) {}
/// let lock = shm_core::robust::SharedRobust::new_anonymous(0u64).unwrap();
/// if let shm_core::robust::Locked::OwnerDied(died) = lock.lock().unwrap() {
///     send(died);
/// }
/// ```
#[must_use = "dropping it unrepaired makes the mutex unrecoverable"]
pub struct OwnerDied<'a, T> {
    mutex: &'a RobustMutex<T>,
    _thread: HeldByThisThread,
}

impl<T> std::fmt::Debug for OwnerDied<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OwnerDied")
    }
}

impl<'a, T> OwnerDied<'a, T> {
    /// Runs `repair` on the data (restore its invariants from whatever the dead holder
    /// left), then marks the lock consistent and returns the guard.
    pub fn repair(self, repair: impl FnOnce(&mut T)) -> Result<RobustGuard<'a, T>, LockError> {
        let mutex = self.mutex;
        // SAFETY: we hold the lock (EOWNERDEAD hands it over), so the data is ours alone.
        repair(unsafe { &mut *mutex.data.get() });
        // SAFETY: the mutex is initialised and held by this thread in the owner-died state.
        let rc = unsafe { libc::pthread_mutex_consistent(mutex.raw()) };
        std::mem::forget(self);
        let guard = RobustGuard { mutex, _thread: PhantomData };
        check(rc)?;
        Ok(guard)
    }
}

impl<T> Drop for OwnerDied<'_, T> {
    fn drop(&mut self) {
        // Unlocking without `pthread_mutex_consistent` makes the mutex unrecoverable:
        // later lockers get ENOTRECOVERABLE instead of data nobody repaired.
        // SAFETY: held by this thread.
        unsafe { libc::pthread_mutex_unlock(self.mutex.raw()) };
    }
}

/// Exclusive access to the data; unlocks when dropped, on the thread that locked (it
/// is not `Send`), and shares the data across threads only where `T: Sync`, as
/// [`std::sync::MutexGuard`] does:
/// ```compile_fail
/// fn send<S: Send>(_: S) {}
/// let lock = shm_core::robust::SharedRobust::new_anonymous(0u64).unwrap();
/// send(lock.lock_or_repair(|_| {}).unwrap());
/// ```
/// ```compile_fail
/// fn share<S: Sync>(_: &S) {}
/// let lock = shm_core::robust::SharedRobust::new_anonymous(std::cell::Cell::new(0u64)).unwrap();
/// share(&lock.lock_or_repair(|_| {}).unwrap());
/// ```
pub struct RobustGuard<'a, T> {
    mutex: &'a RobustMutex<T>,
    _thread: HeldByThisThread,
}

// SAFETY: a shared guard lends only `&T` (`DerefMut` needs `&mut` of the guard), so
// sharing it across threads is sharing `&T`, sound for `T: Sync`.
unsafe impl<T: Sync> Sync for RobustGuard<'_, T> {}

impl<T> std::fmt::Debug for RobustGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RobustGuard")
    }
}

impl<T> Deref for RobustGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock, so no other thread or process touches the data.
        unsafe { &*self.mutex.data.get() }
    }
}

impl<T> DerefMut for RobustGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only view.
        unsafe { &mut *self.mutex.data.get() }
    }
}

impl<T> Drop for RobustGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the guard holds the lock; this thread took it.
        unsafe { libc::pthread_mutex_unlock(self.mutex.raw()) };
    }
}

/// A [`RobustMutex<T>`] in its own anonymous shared mapping (`MAP_SHARED|MAP_ANONYMOUS`):
/// children forked after it is made share it, as the seed's section 2.2 shares its counter.
pub struct SharedRobust<T> {
    ptr: NonNull<RobustMutex<T>>,
    len: usize,
}

// SAFETY: the mapping is owned by this handle and the mutex is `Sync` for `T: Send`.
unsafe impl<T: Send> Send for SharedRobust<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SharedRobust<T> {}

impl<T> std::fmt::Debug for SharedRobust<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRobust").field("len", &self.len).finish()
    }
}

impl<T> SharedRobust<T> {
    /// Maps a fresh shared anonymous region and initialises the mutex in it with `value`.
    pub fn new_anonymous(value: T) -> Result<Self, LockError> {
        let len = std::mem::size_of::<RobustMutex<T>>().max(1);
        let size =
            std::num::NonZeroUsize::new(len).ok_or(LockError::Os(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        // SAFETY: a new anonymous mapping aliases nothing; it is page-aligned, which is
        // enough for any `T` of ordinary alignment (checked below).
        let ptr = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                size,
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED,
            )
        }
        .map_err(|e| LockError::Os(e.into()))?;
        assert!(std::mem::align_of::<RobustMutex<T>>() <= 4096, "a page-aligned mapping holds it");
        let ptr = ptr.cast::<RobustMutex<T>>();
        // SAFETY: fresh, exclusive, aligned, `len` bytes, mapped until `Drop`.
        unsafe { RobustMutex::init(ptr, value) }?;
        Ok(SharedRobust { ptr, len })
    }
}

impl<T> Deref for SharedRobust<T> {
    type Target = RobustMutex<T>;
    fn deref(&self) -> &RobustMutex<T> {
        // SAFETY: initialised in `new_anonymous`, mapped until `Drop`.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> Drop for SharedRobust<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping this handle made; no borrow of it outlives `self`.
        // A forked child's copy of the mapping is its own and stays valid.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.len) };
    }
}

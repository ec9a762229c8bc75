//! What a bench run leaves in the system while it runs, and how it goes away: shared-memory
//! objects named `/shmctl-bench-<pid>-<n>`, file segments in a private directory
//! `$TMPDIR/shmctl-bench-<pid>`, and the forked children of the case that is running.
//!
//! Each is removed when its owner is dropped (errors and panics included). For SIGINT and
//! SIGTERM, every name is also written into a fixed table that the signal handler reads:
//! the handler allocates nothing and takes no lock; it kills the children, unlinks what the
//! table holds and exits 130 (143 for SIGTERM).

use std::cell::UnsafeCell;
use std::ffi::CStr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU64, Ordering};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, UnlinkatFlags, getpid};
use shm_core::{Location, RingKind, Segment, WaitStrategy};

use super::CaseError;

/// Names the handler can hold at once (a case uses at most two segments, or a directory).
const SLOTS: usize = 32;
/// Longest name the table holds, with its NUL; a longer path is still removed on drop.
const PATH_BYTES: usize = 512;

/// Slot states. A slot is claimed (`FREE` -> `WRITING`), filled, then marked with its kind.
const FREE: u8 = 0;
const WRITING: u8 = 1;
const SHM: u8 = 2;
const FILE: u8 = 3;
const DIR: u8 = 4;

struct Slot {
    state: AtomicU8,
    path: UnsafeCell<[u8; PATH_BYTES]>,
}

// SAFETY: `path` is written only by the holder of the slot, between winning it
// (compare_exchange FREE -> WRITING) and the Release store of its kind; it is read only
// after an Acquire load sees that kind, and the slot is not reused until its holder stores
// FREE. The signal handler runs on the interrupted thread, never alongside a writer.
unsafe impl Sync for Slot {}

static TABLE: [Slot; SLOTS] =
    [const { Slot { state: AtomicU8::new(FREE), path: UnsafeCell::new([0; PATH_BYTES]) } }; SLOTS];
/// The process that installed the handler: a forked child only exits on the signal.
static OWNER: AtomicI32 = AtomicI32::new(0);
/// Children one case may have at once.
pub const MAX_CHILDREN: usize = 8;
/// The running case's children, 0 where there is none.
static CHILDREN: [AtomicI32; MAX_CHILDREN] = [const { AtomicI32::new(0) }; MAX_CHILDREN];
/// The `<n>` of the next name.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Installs the SIGINT/SIGTERM handler for this process.
pub fn install() -> anyhow::Result<()> {
    // Relaxed: read by the handler of this same thread, after this store.
    OWNER.store(getpid().as_raw(), Ordering::Relaxed);
    for (signal, code) in [(signal_hook::consts::SIGINT, 130), (signal_hook::consts::SIGTERM, 143)] {
        // SAFETY: `on_signal` is async-signal-safe: it reads atomics and fixed buffers,
        // and makes only kill, shm_unlink, unlink, rmdir and _exit calls; it allocates nothing.
        unsafe { signal_hook::low_level::register(signal, move || on_signal(code)) }?;
    }
    Ok(())
}

fn on_signal(code: i32) {
    if getpid().as_raw() != OWNER.load(Ordering::Relaxed) {
        signal_hook::low_level::exit(code);
    }
    for child in &CHILDREN {
        let child = child.load(Ordering::Relaxed);
        if child > 0 {
            let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
        }
    }
    // Files before the directory holding them.
    for kind in [SHM, FILE, DIR] {
        for slot in &TABLE {
            // Acquire: pairs with the Release store in `Registered::new`; the path is complete.
            if slot.state.load(Ordering::Acquire) != kind {
                continue;
            }
            // SAFETY: the slot holds a complete path (see `impl Sync for Slot`).
            let bytes = unsafe { &*slot.path.get() };
            let Ok(path) = CStr::from_bytes_until_nul(bytes) else { continue };
            let _ = match kind {
                SHM => nix::sys::mman::shm_unlink(path),
                FILE => nix::unistd::unlink(path),
                _ => nix::unistd::unlinkat(nix::fcntl::AT_FDCWD, path, UnlinkatFlags::RemoveDir),
            };
        }
    }
    signal_hook::low_level::exit(code);
}

/// Tells the handler which child to kill in place `slot` (`None` once it is reaped).
pub fn set_child(slot: usize, pid: Option<Pid>) {
    // Relaxed: only this thread's handler reads it.
    CHILDREN[slot].store(pid.map_or(0, Pid::as_raw), Ordering::Relaxed);
}

/// A name in the handler's table, taken out when dropped (after its owner removed it).
struct Registered(Option<usize>);

impl Registered {
    fn new(kind: u8, path: &[u8]) -> Registered {
        if path.len() >= PATH_BYTES || path.contains(&0) {
            return Registered(None);
        }
        for (i, slot) in TABLE.iter().enumerate() {
            // Acquire: pairs with the Release store of FREE by the previous holder.
            if slot.state.compare_exchange(FREE, WRITING, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                // SAFETY: the slot is ours (WRITING) and nobody reads a WRITING slot.
                let buf = unsafe { &mut *slot.path.get() };
                buf[..path.len()].copy_from_slice(path);
                buf[path.len()] = 0;
                // Release: the handler's Acquire load of the kind sees the whole path.
                slot.state.store(kind, Ordering::Release);
                return Registered(Some(i));
            }
        }
        Registered(None)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            // Release: the next holder's writes come after our last use.
            TABLE[i].state.store(FREE, Ordering::Release);
        }
    }
}

/// A name for a POSIX shared-memory object no other run uses: `/shmctl-bench-<pid>-<n>`.
fn unique_shm_name() -> String {
    // Relaxed: only uniqueness matters.
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("/{}{n}", shm_prefix(std::process::id()))
}

/// The prefix (without the leading `/`) of every shared-memory name of run `pid`.
pub fn shm_prefix(pid: u32) -> String {
    format!("shmctl-bench-{pid}-")
}

/// Where a segment lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// `/dev/shm`, by `shm_open`.
    Posix,
    /// A file in the run's private temporary directory.
    File,
}

/// A segment with a unique name, unlinked when dropped.
pub struct TempSegment {
    pub segment: Segment,
    location: Location,
    _registered: Registered,
}

impl TempSegment {
    /// Creates an spsc ring of `capacity` bytes whose handles wait with `wait`.
    pub fn create(
        backing: Backing,
        scratch: &Scratch,
        capacity: u64,
        wait: WaitStrategy,
    ) -> Result<TempSegment, CaseError> {
        TempSegment::create_kind(backing, scratch, capacity, wait, RingKind::Spsc)
    }

    /// Creates a ring of `kind` and `capacity` bytes whose handles wait with `wait`.
    pub fn create_kind(
        backing: Backing,
        scratch: &Scratch,
        capacity: u64,
        wait: WaitStrategy,
        kind: RingKind,
    ) -> Result<TempSegment, CaseError> {
        let (location, registered) = match backing {
            Backing::Posix => {
                let name = unique_shm_name();
                let registered = Registered::new(SHM, name.as_bytes());
                (Location::posix(&name).map_err(CaseError::other)?, registered)
            }
            Backing::File => {
                // Relaxed: only uniqueness matters.
                let path = scratch.dir()?.join(format!("ring-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
                let registered = Registered::new(FILE, path.as_os_str().as_encoded_bytes());
                (Location::File(path), registered)
            }
        };
        let segment = Segment::builder(location.clone())
            .capacity(capacity)
            .wait_strategy(wait)
            .kind(kind)
            .create()
            .map_err(|e| CaseError::other(format!("creating a {capacity}-byte {} ring: {e}", kind.name())))?;
        Ok(TempSegment { segment, location, _registered: registered })
    }
}

impl Drop for TempSegment {
    fn drop(&mut self) {
        let _ = Segment::unlink(&self.location);
    }
}

/// A POSIX shared-memory object with a unique name, for the minimal ring. The caller maps
/// it and drops this right away: the name goes, the mapping stays.
pub struct TempShm {
    pub fd: std::os::fd::OwnedFd,
    name: String,
    _registered: Registered,
}

impl TempShm {
    /// Creates it (`O_EXCL`, mode 0600) with `len` bytes.
    pub fn create(len: u64) -> Result<TempShm, CaseError> {
        use nix::fcntl::OFlag;
        use nix::sys::stat::Mode;
        let name = unique_shm_name();
        let registered = Registered::new(SHM, name.as_bytes());
        let fd = nix::sys::mman::shm_open(
            name.as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .map_err(|e| CaseError::other(format!("shm_open {name}: {e}")))?;
        let shm = TempShm { fd, name, _registered: registered };
        let len = i64::try_from(len).map_err(CaseError::other)?;
        nix::unistd::ftruncate(&shm.fd, len).map_err(|e| CaseError::other(format!("ftruncate {}: {e}", shm.name)))?;
        Ok(shm)
    }
}

impl Drop for TempShm {
    fn drop(&mut self) {
        let _ = nix::sys::mman::shm_unlink(self.name.as_str());
    }
}

/// The run's private directory for file segments, made on first use (mode 0700, since the
/// file backend refuses a world-writable directory) and removed when dropped.
#[derive(Default)]
pub struct Scratch {
    dir: std::cell::OnceCell<(PathBuf, Registered)>,
}

impl Scratch {
    fn dir(&self) -> Result<&Path, CaseError> {
        if let Some((dir, _)) = self.dir.get() {
            return Ok(dir);
        }
        let dir = std::env::temp_dir().join(format!("shmctl-bench-{}", std::process::id()));
        let registered = Registered::new(DIR, dir.as_os_str().as_encoded_bytes());
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| CaseError::other(format!("creating {}: {e}", dir.display())))?;
        Ok(&self.dir.get_or_init(|| (dir, registered)).0)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some((dir, _)) = self.dir.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

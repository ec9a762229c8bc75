//! The four ways to get shared memory, behind one shape.
//!
//! Each backend creates or opens its object and returns a [`Backing`]: the mapping, and
//! the file whose byte-range locks track participants. Creation is exclusive and
//! leaves nothing behind on failure; opening never creates, checks what it found
//! (`fstat` or `IPC_STAT`) before mapping it, and waits up to a timeout for a creator
//! that is still initialising. Header initialisation and validation are the same for
//! every backend and live in [`crate::segment`].
//!
//! # A co-tenant that changes the size
//! Everything inside a segment is validated before use, but its size is the kernel's
//! business. Another process that may write a posix or file segment can `ftruncate` it
//! shorter: every process that then touches a page past the new end gets `SIGBUS` and
//! dies (producers, consumers, `shmctl peek`). Nothing in a mapping can prevent that;
//! only the permissions can, which is why segments are created `0600` (or shared with a
//! trusted group) and opening refuses world-writable ones. A SysV segment cannot be
//! resized once created (`shmget` fixes its size). The anon backend's memfd is sealed
//! against shrinking and growing once sized ([`anon`]). Our own tools never resize a
//! segment: the only `ftruncate` here sizes a new object in [`finish_create`], on the
//! descriptor the exclusive create just returned, before anything maps it; opening
//! compares the size with the header and refuses a mismatch, it never repairs it.

pub(crate) mod anon;
pub(crate) mod file;
pub(crate) mod posix;
pub(crate) mod sysv;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};

use crate::error::{CreateError, OpenError, UnlinkError, io_err};
use crate::layout::{HEADER_SIZE, Header, MAGIC};
use crate::mapping::Mapping;
use crate::name::Location;
use crate::placement::HugePages;
use crate::sync::Ordering;

/// A created or opened segment's memory and lock file.
pub(crate) struct Backing {
    pub(crate) mapping: Mapping,
    /// The file participants lock bytes of (`None`: liveness unknown).
    pub(crate) lock_fd: Option<OwnedFd>,
    /// The SysV id, for `IPC_STAT`.
    pub(crate) sysv_id: Option<i32>,
}

/// What a creator asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CreateSpec {
    pub(crate) size: u64,
    pub(crate) mode: u32,
    pub(crate) group: Option<u32>,
    /// The NUMA node to bind the memory to, before any of it is allocated.
    pub(crate) numa_node: Option<u32>,
    /// Huge pages (hugetlbfs, `SHM_HUGETLB`): `size` is whole pages of this pool.
    pub(crate) huge: Option<HugePages>,
    /// Map every page at create, not only reserve it.
    pub(crate) prefault: bool,
}

/// What an opener accepts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenSpec {
    pub(crate) writable: bool,
    /// `None` accepts any owner (read-only inspection by an operator).
    pub(crate) expected_owner: Option<u32>,
    pub(crate) init_timeout: Duration,
}

/// Finishes creating an fd-backed segment (posix, file, anon): group, exact mode, size,
/// reserved memory, mapping. The caller removes the name if this fails.
pub(crate) fn finish_create(fd: OwnedFd, location: &Location, spec: CreateSpec) -> Result<Backing, CreateError> {
    let io = |op| move |e| CreateError::Io { location: location.clone(), op, source: io_err(e) };
    if let Some(gid) = spec.group {
        nix::unistd::fchown(&fd, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| match e {
            nix::errno::Errno::EPERM => CreateError::Permission { location: location.clone(), source: io_err(e) },
            e => io("fchown")(e),
        })?;
    }
    // fchmod after creation: the mode passed to open is filtered by the umask, this is not.
    nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(spec.mode)).map_err(io("fchmod"))?;
    let size = i64::try_from(spec.size).map_err(|_| CreateError::InvalidOptions {
        location: location.clone(),
        reason: format!("size {} is too large", spec.size),
    })?;
    nix::unistd::ftruncate(&fd, size).map_err(|e| shortage(location, spec, e, "ftruncate"))?;
    let len = usize::try_from(spec.size).map_err(|_| CreateError::InvalidOptions {
        location: location.clone(),
        reason: "size does not fit this address space".into(),
    })?;
    // Map before allocating anything, so the NUMA binding is in place for every page.
    let mapping = Mapping::map_fd(&fd, len, true).map_err(|e| shortage(location, spec, e, "mmap"))?;
    allocate(&mapping, location, spec, Some((&fd, size)))?;
    Ok(Backing { mapping, lock_fd: Some(fd), sysv_id: None })
}

/// Allocates a new segment's memory, after binding it to its NUMA node: with
/// `posix_fallocate` when there is a file (on tmpfs it honours the binding, which belongs
/// to the object; `fallocate` is the fd and its size), else (SysV, huge pages, whose `fallocate` ignores the binding) by
/// faulting every page in through the mapping. Either way a shortage is an error now,
/// never SIGBUS later. `prefault` also maps the fallocated pages into this process.
pub(crate) fn allocate(
    mapping: &Mapping,
    location: &Location,
    spec: CreateSpec,
    fallocate: Option<(&OwnedFd, i64)>,
) -> Result<(), CreateError> {
    if let Some(node) = spec.numa_node {
        mapping.bind_to_node(node).map_err(|source| CreateError::Io {
            location: location.clone(),
            op: "mbind to the NUMA node",
            source,
        })?;
    }
    match fallocate {
        Some((fd, size)) if spec.huge.is_none() => {
            // Reserve every page now, so a full /dev/shm is ENOSPC here and never SIGBUS later.
            nix::fcntl::posix_fallocate(fd, 0, size).map_err(|e| shortage(location, spec, e, "posix_fallocate"))?;
            if spec.prefault {
                mapping.populate_new().map_err(|e| shortage(location, spec, e, "madvise(MADV_POPULATE_WRITE)"))?;
            }
        }
        _ => mapping.populate_new().map_err(|e| shortage(location, spec, e, "madvise(MADV_POPULATE_WRITE)"))?,
    }
    Ok(())
}

/// Maps a failed exclusive create of the file at `path` (the segment's name) to a
/// [`CreateError`], naming the owner of what is already there.
pub(crate) fn exclusive_create_error(
    location: &Location,
    path: &std::path::Path,
    op: &'static str,
    e: nix::errno::Errno,
) -> CreateError {
    use std::os::unix::fs::MetadataExt;
    match e {
        nix::errno::Errno::EEXIST => CreateError::Exists {
            location: location.clone(),
            owner: std::fs::symlink_metadata(path).ok().map(|m| m.uid()),
        },
        nix::errno::Errno::EACCES => CreateError::Permission { location: location.clone(), source: io_err(e) },
        e => CreateError::Io { location: location.clone(), op, source: io_err(e) },
    }
}

/// Maps a failure to get memory to [`CreateError::NoSpace`], or for huge pages to
/// [`CreateError::HugePages`] with the pool as it is now; anything else to `Io`.
pub(crate) fn shortage(location: &Location, spec: CreateSpec, e: nix::errno::Errno, op: &'static str) -> CreateError {
    use nix::errno::Errno;
    match (e, spec.huge) {
        (Errno::ENOSPC | Errno::ENOMEM | Errno::EFAULT, Some(before)) => {
            hugepages_shortage(location, &HugePages::read().unwrap_or(before), spec.size, Some(io_err(e)))
        }
        // EFAULT: MADV_POPULATE_WRITE met a page that would have been SIGBUS (tmpfs full).
        (Errno::ENOSPC | Errno::ENOMEM | Errno::EFBIG | Errno::EFAULT, _) => {
            CreateError::NoSpace { location: location.clone(), size: spec.size, source: io_err(e) }
        }
        (e, _) => CreateError::Io { location: location.clone(), op, source: io_err(e) },
    }
}

/// [`CreateError::HugePages`]: `size` bytes of huge pages wanted from `pool` (as read
/// when the shortage was found).
pub(crate) fn hugepages_shortage(
    location: &Location,
    pool: &HugePages,
    size: u64,
    source: Option<std::io::Error>,
) -> CreateError {
    CreateError::HugePages {
        location: location.clone(),
        page_size: pool.page_size,
        needed: size.div_ceil(pool.page_size),
        available: pool.available(),
        total: pool.total,
        source,
    }
}

/// Flags for opening an existing segment file: never create, never follow a symlink,
/// never block on a FIFO.
pub(crate) fn open_flags(writable: bool) -> OFlag {
    let access = if writable { OFlag::O_RDWR } else { OFlag::O_RDONLY };
    access | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK
}

/// Maps an `open`/`shm_open` failure to an [`OpenError`].
pub(crate) fn open_error(location: &Location, e: nix::errno::Errno) -> OpenError {
    use nix::errno::Errno;
    match e {
        Errno::ENOENT => OpenError::NotFound { location: location.clone() },
        Errno::EACCES | Errno::EPERM => OpenError::Permission { location: location.clone(), source: io_err(e) },
        Errno::ELOOP => OpenError::NotRegular { location: location.clone(), what: "symbolic link" },
        Errno::EISDIR => OpenError::NotRegular { location: location.clone(), what: "directory" },
        Errno::ENXIO => OpenError::NotRegular { location: location.clone(), what: "special file" },
        e => OpenError::Io { location: location.clone(), op: "open", source: io_err(e) },
    }
}

/// Checks an opened file before mapping it: a regular file, the expected owner, not
/// world-writable. Returns its size.
pub(crate) fn check_fd(fd: &OwnedFd, location: &Location, spec: OpenSpec) -> Result<u64, OpenError> {
    let st = nix::sys::stat::fstat(fd).map_err(|e| OpenError::Io {
        location: location.clone(),
        op: "fstat",
        source: io_err(e),
    })?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFREG {
        let what = match kind {
            SFlag::S_IFDIR => "directory",
            SFlag::S_IFIFO => "FIFO",
            SFlag::S_IFSOCK => "socket",
            SFlag::S_IFLNK => "symbolic link",
            _ => "device or special file",
        };
        return Err(OpenError::NotRegular { location: location.clone(), what });
    }
    check_owner_mode(location, st.st_uid, st.st_mode, spec)?;
    Ok(u64::try_from(st.st_size).unwrap_or(0))
}

/// The owner and mode checks shared by files and SysV segments.
pub(crate) fn check_owner_mode(location: &Location, uid: u32, mode: u32, spec: OpenSpec) -> Result<(), OpenError> {
    if let Some(expected) = spec.expected_owner
        && uid != expected
    {
        return Err(OpenError::WrongOwner { location: location.clone(), found: uid, expected });
    }
    if mode & 0o002 != 0 {
        return Err(OpenError::WorldWritable { location: location.clone(), mode: mode & 0o7777 });
    }
    Ok(())
}

/// Opens an fd-backed segment (posix, file): checks, maps, waits for initialisation.
pub(crate) fn finish_open(fd: OwnedFd, location: &Location, spec: OpenSpec) -> Result<Backing, OpenError> {
    let mapping = wait_initialised(location, spec.init_timeout, || {
        let size = check_fd(&fd, location, spec)?;
        if size < HEADER_SIZE as u64 {
            return not_yet_sized(location, size);
        }
        let len = usize::try_from(size).map_err(|_| OpenError::Io {
            location: location.clone(),
            op: "mmap",
            source: std::io::Error::from_raw_os_error(libc::EFBIG),
        })?;
        Mapping::map_fd(&fd, len, spec.writable).map(Some).map_err(|e| OpenError::Io {
            location: location.clone(),
            op: "mmap",
            source: io_err(e),
        })
    })?;
    Ok(Backing { mapping, lock_fd: Some(fd), sysv_id: None })
}

/// An object smaller than a header: empty means a creator is between creating it and
/// sizing it (wait); anything else is not a segment (creators size it in one step).
pub(crate) fn not_yet_sized(location: &Location, size: u64) -> Result<Option<Mapping>, OpenError> {
    if size == 0 {
        Ok(None)
    } else {
        Err(OpenError::Header { location: location.clone(), source: crate::layout::HeaderError::TooSmall { size } })
    }
}

/// Calls `probe` until it maps a segment whose creator has finished (magic and version
/// set) or that is clearly not ours (another magic), or until `timeout` passes.
pub(crate) fn wait_initialised(
    location: &Location,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Option<Mapping>, OpenError>,
) -> Result<Mapping, OpenError> {
    let started = Instant::now();
    let mut last_magic = None;
    loop {
        if let Some(mapping) = probe()? {
            // SAFETY: the mapping is at least HEADER_SIZE bytes (the probe checked) and
            // page-aligned, and `Header` is all atomics, valid for any bytes.
            let header = unsafe { mapping.ptr().cast::<Header>().as_ref() };
            // Acquire: pairs with the creator's Release store of the version.
            let version = header.identity.0.layout_version.load(Ordering::Acquire);
            let magic = header.identity.0.magic.load(Ordering::Relaxed);
            if magic != 0 && (version != 0 || magic != MAGIC) {
                return Ok(mapping);
            }
            last_magic = Some(magic);
        }
        if started.elapsed() >= timeout {
            return Err(not_initialised(location, timeout, last_magic));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Why waiting for a creator ran out: a sized object whose magic number is still zero
/// had no creator write it within the wait (creators write it right after reserving
/// the memory), so it is not a shmring segment; our magic without a version is a
/// creator that died or stopped half-way; an object that never got a size is not
/// initialised either way.
fn not_initialised(location: &Location, waited: Duration, last_magic: Option<u64>) -> OpenError {
    match last_magic {
        Some(0) => {
            OpenError::Header { location: location.clone(), source: crate::layout::HeaderError::BadMagic { found: 0 } }
        }
        _ => OpenError::NotInitialised { location: location.clone(), waited },
    }
}

/// Opens a new open file description of `fd` (through `/proc/self/fd`), so that its
/// byte-range locks are its own.
pub(crate) fn reopen(fd: &OwnedFd, writable: bool) -> nix::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    let access = if writable { OFlag::O_RDWR } else { OFlag::O_RDONLY };
    nix::fcntl::open(path.as_str(), access | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK, Mode::empty())
}

/// Removes the name at `location` if it still leads to the object open as `lock_fd`
/// (device and inode of the name, not followed, against `fstat` of the descriptor; for
/// SysV, the id behind the key against `sysv_id`, and the lock file by inode). The check
/// and the removal are adjacent system calls: what remains is the window between two
/// syscalls, not the one between a decision and its action.
pub(crate) fn unlink_if_same(location: &Location, lock_fd: &OwnedFd, sysv_id: Option<i32>) -> Result<(), UnlinkError> {
    let io = |op| move |source| UnlinkError::Io { location: location.clone(), op, source };
    let ours = nix::sys::stat::fstat(lock_fd).map_err(|e| io("fstat")(io_err(e)))?;
    let same_file = |path: &std::path::Path| -> Result<bool, UnlinkError> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::symlink_metadata(path) {
            Ok(m) => Ok(m.dev() == ours.st_dev && m.ino() == ours.st_ino),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(UnlinkError::NotFound { location: location.clone() })
            }
            Err(e) => Err(io("stat of the name")(e)),
        }
    };
    let replaced = || UnlinkError::Replaced { location: location.clone() };
    match location {
        Location::Posix(name) => {
            if !same_file(&name.dev_shm_path())? {
                return Err(replaced());
            }
            posix::unlink(name, location)
        }
        Location::File(path) => {
            if !same_file(path)? {
                return Err(replaced());
            }
            file::unlink(path, location)
        }
        Location::Sysv(key) => {
            let checked = sysv_id.ok_or_else(replaced)?;
            sysv::remove_if_same(*key, checked, location, &same_file)
        }
        Location::Anon => Ok(()),
    }
}

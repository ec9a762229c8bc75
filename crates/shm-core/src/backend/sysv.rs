//! SysV shared memory (`shmget`/`shmat`), for programs built around IPC keys.
//!
//! `nix` has no SysV shared memory, so the calls are wrapped here once, in its style.
//! SysV ignores the umask, so the mode given is the mode the segment gets. Segments
//! have no file descriptor: participants lock bytes of a companion lock file,
//! `/dev/shm/.shmring-sysv-<key>.lock`, created and removed with the segment.
//! See [shmget(2)](https://man7.org/linux/man-pages/man2/shmget.2.html),
//! [shmctl(2)](https://man7.org/linux/man-pages/man2/shmctl.2.html).

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::{Backing, CreateSpec, OpenSpec, check_owner_mode, open_flags, wait_initialised};
use crate::error::{CreateError, OpenError, UnlinkError, io_err};
use crate::layout::HEADER_SIZE;
use crate::mapping::Mapping;
use crate::name::{Location, SysvKey};

/// What `IPC_STAT` says about a SysV segment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SysvStat {
    /// The segment id.
    pub id: i32,
    /// The key.
    pub key: i32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Creator uid.
    pub cuid: u32,
    /// Permission bits.
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Number of current attaches.
    pub nattch: u64,
    /// Pid of the creator.
    pub cpid: i32,
    /// Pid of the last `shmat`/`shmdt`.
    pub lpid: i32,
    /// Last attach time (Unix seconds).
    pub atime: i64,
    /// Last detach time (Unix seconds).
    pub dtime: i64,
    /// Last change time (Unix seconds).
    pub ctime: i64,
    /// Marked for destruction (`SHM_DEST`): removed once the last process detaches.
    pub destroyed: bool,
}

/// `SHM_DEST` from <linux/shm.h>: marked for removal at the last detach (not in `libc`).
const SHM_DEST: u32 = 0o1000;

/// `shmget(key, size, flags)`.
fn shmget(key: SysvKey, size: usize, flags: i32) -> io::Result<i32> {
    // SAFETY: plain integer arguments.
    let id = unsafe { libc::shmget(key.raw(), size, flags) };
    if id == -1 { Err(io::Error::last_os_error()) } else { Ok(id) }
}

/// `shmctl(id, IPC_STAT)`.
pub(crate) fn stat(id: i32) -> io::Result<SysvStat> {
    // SAFETY: all-zero bytes are a valid `shmid_ds`.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid, writable shmid_ds for the kernel to fill.
    if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(SysvStat {
        id,
        key: ds.shm_perm.__key,
        uid: ds.shm_perm.uid,
        gid: ds.shm_perm.gid,
        cuid: ds.shm_perm.cuid,
        mode: u32::from(ds.shm_perm.mode) & 0o777,
        size: ds.shm_segsz as u64,
        nattch: ds.shm_nattch as u64,
        cpid: ds.shm_cpid,
        lpid: ds.shm_lpid,
        atime: ds.shm_atime,
        dtime: ds.shm_dtime,
        ctime: ds.shm_ctime,
        destroyed: u32::from(ds.shm_perm.mode) & SHM_DEST != 0,
    })
}

/// `shmctl(id, IPC_SET)` of the group.
fn set_group(id: i32, gid: u32) -> io::Result<()> {
    // SAFETY: all-zero bytes are a valid `shmid_ds`.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid, writable shmid_ds.
    if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } == -1 {
        return Err(io::Error::last_os_error());
    }
    ds.shm_perm.gid = gid;
    // SAFETY: `ds` is a valid shmid_ds filled by IPC_STAT.
    if unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `shmctl(id, IPC_RMID)`.
fn remove(id: i32) -> io::Result<()> {
    // SAFETY: IPC_RMID takes no buffer.
    if unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The companion lock file of a key.
pub fn lock_path(key: SysvKey) -> PathBuf {
    PathBuf::from(format!("/dev/shm/.shmring-sysv-{:08x}.lock", key.raw() as u32))
}

/// The id of the segment with `key`, if one exists.
pub(crate) fn id_of(key: SysvKey) -> io::Result<i32> {
    shmget(key, 0, 0)
}

pub(crate) fn create(key: SysvKey, location: &Location, spec: CreateSpec) -> Result<Backing, CreateError> {
    let size = usize::try_from(spec.size).map_err(|_| CreateError::InvalidOptions {
        location: location.clone(),
        reason: "size does not fit this address space".into(),
    })?;
    let huge = if spec.huge.is_some() { libc::SHM_HUGETLB } else { 0 };
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | huge | (spec.mode & 0o777) as i32;
    let id = shmget(key, size, flags).map_err(|source| match source.raw_os_error() {
        // The huge page pool is reserved at shmget.
        Some(e @ (libc::ENOMEM | libc::ENOSPC)) if spec.huge.is_some() => {
            super::shortage(location, spec, nix::errno::Errno::from_raw(e), "shmget")
        }
        Some(libc::EEXIST) => {
            CreateError::Exists { location: location.clone(), owner: id_of(key).and_then(stat).ok().map(|s| s.uid) }
        }
        Some(libc::EACCES | libc::EPERM) => CreateError::Permission { location: location.clone(), source },
        Some(libc::EINVAL | libc::ENOSPC | libc::ENOMEM) => {
            CreateError::NoSpace { location: location.clone(), size: spec.size, source }
        }
        _ => CreateError::Io { location: location.clone(), op: "shmget", source },
    })?;
    let result = (|| {
        let io = |op| move |source| CreateError::Io { location: location.clone(), op, source };
        if let Some(gid) = spec.group {
            set_group(id, gid).map_err(io("IPC_SET"))?;
        }
        let mapping = Mapping::attach_sysv(id, size, true).map_err(io("shmat"))?;
        // SysV has no fallocate: touch every page now (after the NUMA binding) so a
        // shortage is an error, not SIGBUS.
        super::allocate(&mapping, location, spec, None)?;
        let lock = create_lock_file(key, location, spec)?;
        Ok(Backing { mapping, lock_fd: Some(lock), sysv_id: Some(id) })
    })();
    if result.is_err() {
        // We created the segment: remove it, so a failed create leaves nothing behind.
        let _ = remove(id);
    }
    result
}

/// Creates the lock file exclusively. One already there is replaced only if it is a
/// stale one of ours (a regular file owned by this user: the segment it belonged to is
/// gone, since our `IPC_EXCL` create just succeeded); anything else, another user's file
/// above all, is reported and left alone, whoever we are.
fn create_lock_file(key: SysvKey, location: &Location, spec: CreateSpec) -> Result<OwnedFd, CreateError> {
    let path = lock_path(key);
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mode = Mode::from_bits_truncate(spec.mode & 0o666);
    let io = |op| move |e| CreateError::Io { location: location.clone(), op, source: io_err(e) };
    let fd = match nix::fcntl::open(&path, flags, mode) {
        Err(nix::errno::Errno::EEXIST) => {
            let me = nix::unistd::geteuid().as_raw();
            let meta = std::fs::symlink_metadata(&path).map_err(|source| CreateError::Io {
                location: location.clone(),
                op: "stat of the existing lock file",
                source,
            })?;
            let problem = if !meta.file_type().is_file() {
                Some(format!("is a {}, not a lock file", file_kind(meta.mode())))
            } else if meta.uid() != me {
                Some(format!("was made by uid {}, not by this user (uid {me})", meta.uid()))
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(CreateError::UntrustedLockFile {
                    location: location.clone(),
                    path: path.display().to_string(),
                    problem,
                });
            }
            std::fs::remove_file(&path).map_err(|source| CreateError::Io {
                location: location.clone(),
                op: "remove stale lock file",
                source,
            })?;
            nix::fcntl::open(&path, flags, mode).map_err(io("create lock file"))?
        }
        other => other.map_err(io("create lock file"))?,
    };
    if let Some(gid) = spec.group {
        nix::unistd::fchown(&fd, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(io("fchown lock file"))?;
    }
    nix::sys::stat::fchmod(&fd, mode).map_err(io("fchmod lock file"))?;
    Ok(fd)
}

/// What a file of mode `mode` is, for messages.
fn file_kind(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symbolic link",
        libc::S_IFIFO => "FIFO",
        libc::S_IFSOCK => "socket",
        libc::S_IFREG => "regular file",
        _ => "device or special file",
    }
}

/// Checks an opened lock file with the rules of segments, against the segment: a
/// regular file, owned by the segment's owner or its creator (who made the lock file;
/// `IPC_SET` may since have given the segment away), not writable by every user.
fn check_lock_file(
    fd: &OwnedFd,
    path: &std::path::Path,
    location: &Location,
    (owner, creator): (u32, u32),
) -> Result<(), OpenError> {
    let st = nix::sys::stat::fstat(fd).map_err(|e| OpenError::Io {
        location: location.clone(),
        op: "fstat of the lock file",
        source: io_err(e),
    })?;
    let problem = if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        format!("is a {}, not a lock file", file_kind(st.st_mode))
    } else if st.st_uid != owner && st.st_uid != creator {
        format!("is owned by uid {}, but the segment by uid {owner} (created by uid {creator})", st.st_uid)
    } else if st.st_mode & 0o002 != 0 {
        format!("has mode {:04o}: every user may write it", st.st_mode & 0o7777)
    } else {
        return Ok(());
    };
    Err(OpenError::UntrustedLockFile { location: location.clone(), path: path.display().to_string(), problem })
}

pub(crate) fn open(key: SysvKey, location: &Location, spec: OpenSpec) -> Result<Backing, OpenError> {
    let not_found_or = |op, source: io::Error| match source.raw_os_error() {
        Some(libc::ENOENT | libc::EIDRM | libc::EINVAL) => OpenError::NotFound { location: location.clone() },
        Some(libc::EACCES | libc::EPERM) => OpenError::Permission { location: location.clone(), source },
        _ => OpenError::Io { location: location.clone(), op, source },
    };
    let (mut id, mut owner) = (0, (0, 0));
    let mapping = wait_initialised(location, spec.init_timeout, || {
        id = id_of(key).map_err(|e| not_found_or("shmget", e))?;
        let st = stat(id).map_err(|e| not_found_or("IPC_STAT", e))?;
        check_owner_mode(location, st.uid, st.mode, spec)?;
        owner = (st.uid, st.cuid);
        if st.size < HEADER_SIZE as u64 {
            return super::not_yet_sized(location, st.size);
        }
        let len = usize::try_from(st.size).map_err(|_| OpenError::Io {
            location: location.clone(),
            op: "shmat",
            source: io::Error::from_raw_os_error(libc::EFBIG),
        })?;
        Mapping::attach_sysv(id, len, spec.writable).map(Some).map_err(|e| not_found_or("shmat", e))
    })?;
    let path = lock_path(key);
    let lock_fd = match nix::fcntl::open(&path, open_flags(spec.writable), Mode::empty()) {
        Ok(fd) => {
            check_lock_file(&fd, &path, location, owner)?;
            Some(fd)
        }
        Err(nix::errno::Errno::ELOOP) => {
            let problem = "is a symbolic link, not a lock file".to_owned();
            return Err(OpenError::UntrustedLockFile {
                location: location.clone(),
                path: path.display().to_string(),
                problem,
            });
        }
        Err(nix::errno::Errno::ENOENT) => None,
        // An inspector that may not read the lock file cannot check liveness: "unknown"
        // (`lock_fd: None`), which is never taken for "dead".
        Err(nix::errno::Errno::EACCES) if !spec.writable => None,
        Err(e) => return Err(super::open_error(location, e)),
    };
    Ok(Backing { mapping, lock_fd, sysv_id: Some(id) })
}

/// Maps a failed SysV removal step to an [`UnlinkError`].
fn unlink_error(location: &Location, op: &'static str, source: io::Error) -> UnlinkError {
    match source.raw_os_error() {
        Some(libc::ENOENT | libc::EIDRM | libc::EINVAL) => UnlinkError::NotFound { location: location.clone() },
        Some(libc::EACCES | libc::EPERM) => UnlinkError::Permission { location: location.clone(), source },
        _ => UnlinkError::Io { location: location.clone(), op, source },
    }
}

pub(crate) fn unlink(key: SysvKey, location: &Location) -> Result<(), UnlinkError> {
    let id = id_of(key).map_err(|e| unlink_error(location, "shmget", e))?;
    remove(id).map_err(|e| unlink_error(location, "IPC_RMID", e))?;
    match std::fs::remove_file(lock_path(key)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(unlink_error(location, "remove lock file", e)),
        _ => Ok(()),
    }
}

/// Removes segment `checked` if `key` still leads to it (`IPC_RMID` acts on the id, so
/// nothing created at the key meanwhile can be hit), and its lock file if `is_ours`
/// says the file at the lock path is still the one that was locked.
pub(crate) fn remove_if_same(
    key: SysvKey,
    checked: i32,
    location: &Location,
    is_ours: &dyn Fn(&std::path::Path) -> Result<bool, UnlinkError>,
) -> Result<(), UnlinkError> {
    if id_of(key).map_err(|e| unlink_error(location, "shmget", e))? != checked {
        return Err(UnlinkError::Replaced { location: location.clone() });
    }
    let path = lock_path(key);
    let lock_file_is_ours = is_ours(&path)?;
    remove(checked).map_err(|e| unlink_error(location, "IPC_RMID", e))?;
    if lock_file_is_ours {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(unlink_error(location, "remove lock file", e)),
            _ => {}
        }
    }
    Ok(())
}

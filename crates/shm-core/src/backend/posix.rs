//! POSIX shared-memory objects (`shm_open`), the default backend.
//! They live on `/dev/shm` (tmpfs), which cannot hold huge pages.
//! See [shm_open(3)](https://man7.org/linux/man-pages/man3/shm_open.3.html).

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::{
    Backing, CreateSpec, OpenSpec, exclusive_create_error, finish_create, finish_open, open_error, open_flags,
};
use crate::error::{CreateError, OpenError, UnlinkError, io_err};
use crate::name::{Location, SegmentName};

pub(crate) fn create(name: &SegmentName, location: &Location, spec: CreateSpec) -> Result<Backing, CreateError> {
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::sys::mman::shm_open(name.as_str(), flags, Mode::from_bits_truncate(spec.mode & 0o777))
        .map_err(|e| exclusive_create_error(location, &name.dev_shm_path(), "shm_open", e))?;
    finish_create(fd, location, spec).inspect_err(|_| {
        // We created the name: remove it, so a failed create leaves nothing behind.
        let _ = nix::sys::mman::shm_unlink(name.as_str());
    })
}

pub(crate) fn open(name: &SegmentName, location: &Location, spec: OpenSpec) -> Result<Backing, OpenError> {
    let fd = nix::sys::mman::shm_open(name.as_str(), open_flags(spec.writable), Mode::empty()).map_err(|e| {
        // glibc's shm_open reports a directory as EINVAL, not EISDIR: look, without
        // following links, so the error says what is there.
        if e == nix::errno::Errno::EINVAL && std::fs::symlink_metadata(name.dev_shm_path()).is_ok_and(|m| m.is_dir()) {
            return OpenError::NotRegular { location: location.clone(), what: "directory" };
        }
        open_error(location, e)
    })?;
    finish_open(fd, location, spec)
}

pub(crate) fn unlink(name: &SegmentName, location: &Location) -> Result<(), UnlinkError> {
    nix::sys::mman::shm_unlink(name.as_str()).map_err(|e| match e {
        nix::errno::Errno::ENOENT => UnlinkError::NotFound { location: location.clone() },
        nix::errno::Errno::EACCES | nix::errno::Errno::EPERM => {
            UnlinkError::Permission { location: location.clone(), source: io_err(e) }
        }
        e => UnlinkError::Io { location: location.clone(), op: "shm_unlink", source: io_err(e) },
    })
}

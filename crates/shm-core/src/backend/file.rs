//! Segments in regular files, mapped shared: a ring that survives restarts of both
//! sides (and, with a flush policy, of the machine).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::{
    Backing, CreateSpec, OpenSpec, exclusive_create_error, finish_create, finish_open, open_error, open_flags,
};
use crate::error::{CreateError, OpenError, UnlinkError};
use crate::name::Location;

pub(crate) fn create(path: &Path, location: &Location, spec: CreateSpec) -> Result<Backing, CreateError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(dir).map_err(|source| CreateError::Io {
        location: location.clone(),
        op: "stat of the directory",
        source,
    })?;
    if meta.mode() & 0o002 != 0 {
        return Err(CreateError::UnsafeDirectory { location: location.clone(), dir: dir.display().to_string() });
    }
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::open(path, flags, Mode::from_bits_truncate(spec.mode & 0o777))
        .map_err(|e| exclusive_create_error(location, path, "open", e))?;
    finish_create(fd, location, spec).inspect_err(|_| {
        // We created the file: remove it, so a failed create leaves nothing behind.
        let _ = std::fs::remove_file(path);
    })
}

pub(crate) fn open(path: &Path, location: &Location, spec: OpenSpec) -> Result<Backing, OpenError> {
    let fd = nix::fcntl::open(path, open_flags(spec.writable), Mode::empty()).map_err(|e| open_error(location, e))?;
    finish_open(fd, location, spec)
}

pub(crate) fn unlink(path: &Path, location: &Location) -> Result<(), UnlinkError> {
    std::fs::remove_file(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => UnlinkError::NotFound { location: location.clone() },
        std::io::ErrorKind::PermissionDenied => UnlinkError::Permission { location: location.clone(), source },
        _ => UnlinkError::Io { location: location.clone(), op: "unlink", source },
    })
}

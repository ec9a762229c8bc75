//! Segments in regular files, mapped shared: a ring that survives restarts of both
//! sides (and, with a flush policy, of the machine). A file on hugetlbfs (such as
//! `/dev/hugepages/ring`) is how a named segment gets huge pages.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::{
    Backing, CreateSpec, OpenSpec, exclusive_create_error, finish_create, finish_open, open_error, open_flags,
};
use crate::error::{CreateError, OpenError, UnlinkError};
use crate::name::Location;
use crate::placement;

/// The directory a file segment is created in.
fn directory(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Refuses placement options the file's filesystem cannot honour: huge pages need
/// hugetlbfs (and hugetlbfs needs them), a NUMA binding needs memory-backed pages
/// (tmpfs or hugetlbfs; a disk filesystem's page cache ignores `mbind`).
pub(crate) fn check_placement(
    path: &Path,
    location: &Location,
    hugepages: bool,
    numa_node: Option<u32>,
) -> Result<(), CreateError> {
    let dir = directory(path);
    let io = |source| CreateError::Io { location: location.clone(), op: "statfs of the directory", source };
    let invalid = |reason: String| CreateError::InvalidOptions { location: location.clone(), reason };
    let on_hugetlbfs = placement::is_hugetlbfs(dir).map_err(io)?;
    if hugepages && !on_hugetlbfs {
        return Err(invalid(format!(
            "huge pages need the file on a hugetlbfs mount, and {} is not one (mount one, for example `mount -t hugetlbfs none /dev/hugepages`, and put the segment there), or use the sysv or anon backend",
            dir.display()
        )));
    }
    if !hugepages && on_hugetlbfs {
        return Err(invalid(format!("{} is a hugetlbfs mount: create the segment with huge pages", dir.display())));
    }
    if let Some(node) = numa_node
        && !placement::honours_numa_policy(dir).map_err(io)?
    {
        return Err(invalid(format!(
            "NUMA node {node}: {} is on a disk filesystem, whose page cache ignores a NUMA binding; put the file on tmpfs or hugetlbfs, or use the posix or sysv backend",
            dir.display()
        )));
    }
    Ok(())
}

pub(crate) fn create(path: &Path, location: &Location, spec: CreateSpec) -> Result<Backing, CreateError> {
    let dir = directory(path);
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

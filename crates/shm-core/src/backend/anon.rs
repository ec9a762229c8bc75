//! Anonymous shared segments (a memfd) for a process and the children it forks.
//! See [memfd_create(2)](https://man7.org/linux/man-pages/man2/memfd_create.2.html).
//!
//! A memfd rather than `MAP_ANONYMOUS`: it gives the same memory plus a file
//! descriptor, which participants lock bytes of for liveness and `fstat` can check.
//! With huge pages it is a hugetlbfs memfd (`MFD_HUGETLB`), the memfd form of
//! `MAP_HUGETLB`.

use nix::sys::memfd::{MFdFlags, memfd_create};

use super::{Backing, CreateSpec, finish_create};
use crate::error::{CreateError, io_err};
use crate::name::Location;

pub(crate) fn create(location: &Location, spec: CreateSpec) -> Result<Backing, CreateError> {
    let huge = if spec.huge.is_some() { MFdFlags::MFD_HUGETLB } else { MFdFlags::empty() };
    let fd = memfd_create("shmring-anon", MFdFlags::MFD_CLOEXEC | huge).map_err(|e| CreateError::Io {
        location: location.clone(),
        op: "memfd_create",
        source: io_err(e),
    })?;
    finish_create(fd, location, spec)
}

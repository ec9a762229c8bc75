//! Anonymous shared segments (a memfd) for a process and the children it forks.
//! See [memfd_create(2)](https://man7.org/linux/man-pages/man2/memfd_create.2.html).
//!
//! A memfd rather than `MAP_ANONYMOUS`: it gives the same memory plus a file
//! descriptor, which participants lock bytes of for liveness and `fstat` can check.
//! With huge pages it is a hugetlbfs memfd (`MFD_HUGETLB`), the memfd form of
//! `MAP_HUGETLB`.

//!
//! Once sized, the memfd is sealed against shrinking and growing (`F_SEAL_SHRINK |
//! F_SEAL_GROW`, see [memfd_create(2)](https://man7.org/linux/man-pages/man2/memfd_create.2.html)
//! and [fcntl(2)](https://man7.org/linux/man-pages/man2/fcntl.2.html)): a child that
//! inherits the descriptor cannot truncate the memory from under the others (which would
//! be SIGBUS for every process touching the pages cut off). Named backends cannot be
//! sealed; see [`super`] for what a co-tenant that truncates them can do.

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

use super::{Backing, CreateSpec, finish_create};
use crate::error::{CreateError, io_err};
use crate::name::Location;

pub(crate) fn create(location: &Location, spec: CreateSpec) -> Result<Backing, CreateError> {
    let huge = if spec.huge.is_some() { MFdFlags::MFD_HUGETLB } else { MFdFlags::empty() };
    let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING | huge;
    let io = |op| move |e| CreateError::Io { location: location.clone(), op, source: io_err(e) };
    let fd = memfd_create("shmring-anon", flags).map_err(io("memfd_create"))?;
    let backing = finish_create(fd, location, spec)?;
    let fd = backing.lock_fd.as_ref().expect("finish_create keeps the descriptor");
    fcntl(fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW))
        .map_err(io("fcntl(F_ADD_SEALS)"))?;
    Ok(backing)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Once sized, the memfd can neither shrink (a SIGBUS for every process that maps the
    /// pages cut off) nor grow: whoever holds the descriptor, `ftruncate` fails.
    #[test]
    fn an_anon_segment_cannot_be_resized_once_created() {
        let size = crate::layout::HEADER_SIZE as u64 + 4096;
        let spec = CreateSpec { size, mode: 0o600, group: None, numa_node: None, huge: None, prefault: false };
        let backing = create(&Location::Anon, spec).expect("create an anon segment");
        let fd = backing.lock_fd.as_ref().expect("an anon segment has its memfd");
        for new_size in [0, 4096, size as i64 * 2] {
            assert_eq!(
                nix::unistd::ftruncate(fd, new_size),
                Err(nix::errno::Errno::EPERM),
                "ftruncate to {new_size} bytes must be refused by the seals"
            );
        }
        assert_eq!(nix::sys::stat::fstat(fd).expect("fstat").st_size as u64, size);
    }
}

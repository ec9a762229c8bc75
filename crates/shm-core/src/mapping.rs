//! A shared mapping of a segment, unmapped on drop.

use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;

use nix::sys::mman::{MapFlags, MsFlags, ProtFlags};

/// How the memory was mapped, and so how to unmap it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mmap,
    SysvAttach,
}

/// `len` bytes of shared memory at `ptr`, page-aligned, valid until dropped.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    kind: Kind,
    writable: bool,
}

// SAFETY: the mapping is plain shared memory; every access to it goes through atomics or
// through byte ranges the ring protocol hands to one thread, so it may be shared and sent.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` shared, read-write or read-only.
    /// See [mmap(2)](https://man7.org/linux/man-pages/man2/mmap.2.html).
    pub(crate) fn map_fd(fd: impl AsFd, len: usize, writable: bool) -> nix::Result<Mapping> {
        let len_nz = NonZeroUsize::new(len).ok_or(nix::errno::Errno::EINVAL)?;
        let prot = if writable { ProtFlags::PROT_READ | ProtFlags::PROT_WRITE } else { ProtFlags::PROT_READ };
        // SAFETY: a new shared mapping at an address the kernel picks; it aliases no Rust
        // object, and we only access it through raw pointers and atomics.
        let ptr = unsafe { nix::sys::mman::mmap(None, len_nz, prot, MapFlags::MAP_SHARED, fd, 0)? };
        Ok(Mapping { ptr: ptr.cast(), len, kind: Kind::Mmap, writable })
    }

    /// Attaches SysV segment `shmid`.
    /// See [shmat(2)](https://man7.org/linux/man-pages/man2/shmat.2.html).
    pub(crate) fn attach_sysv(shmid: i32, len: usize, writable: bool) -> std::io::Result<Mapping> {
        let flags = if writable { 0 } else { libc::SHM_RDONLY };
        // SAFETY: shmat with a null address lets the kernel choose where; it aliases no
        // Rust object.
        let ptr = unsafe { libc::shmat(shmid, std::ptr::null(), flags) };
        if ptr as isize == -1 {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| std::io::Error::other("shmat returned null"))?;
        Ok(Mapping { ptr, len, kind: Kind::SysvAttach, writable })
    }

    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn writable(&self) -> bool {
        self.writable
    }

    /// Touches every page for writing so that a shortage shows now as an error, not later
    /// as SIGBUS. Returns `Ok` on kernels without `MADV_POPULATE_WRITE` (before 5.14).
    pub(crate) fn populate(&self) -> nix::Result<()> {
        // SAFETY: the range is exactly this live mapping; POPULATE_WRITE changes no contents.
        let r = unsafe {
            nix::sys::mman::madvise(self.ptr.cast(), self.len, nix::sys::mman::MmapAdvise::MADV_POPULATE_WRITE)
        };
        match r {
            Err(nix::errno::Errno::EINVAL) => Ok(()),
            other => other,
        }
    }

    /// Writes dirty pages back to the file (`msync(MS_SYNC)`).
    /// See [msync(2)](https://man7.org/linux/man-pages/man2/msync.2.html).
    pub(crate) fn sync(&self) -> nix::Result<()> {
        // SAFETY: the range is exactly this live mapping.
        unsafe { nix::sys::mman::msync(self.ptr.cast(), self.len, MsFlags::MS_SYNC) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        match self.kind {
            Kind::Mmap => {
                // SAFETY: unmapping exactly what `map_fd` mapped; every handle that could
                // point into it holds an `Arc` of its owner, so none is left.
                let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.len) };
            }
            Kind::SysvAttach => {
                // SAFETY: detaching exactly what `attach_sysv` attached; as above.
                let _ = unsafe { libc::shmdt(self.ptr.as_ptr().cast()) };
            }
        }
    }
}

//! A shared mapping of a segment, unmapped on drop.

use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;

use nix::sys::mman::{MapFlags, MsFlags, ProtFlags};

/// The smallest page size: the step of the fallback touch loops (a huge page is
/// touched several times, which is harmless).
const PAGE: usize = 4096;

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

    /// Binds the mapping's memory to NUMA node `node` (see [`crate::placement`]). Call it
    /// before any page is allocated: pages already there are moved, which is slower.
    pub(crate) fn bind_to_node(&self, node: u32) -> std::io::Result<()> {
        crate::placement::mbind(self.ptr, self.len, node)
    }

    /// The NUMA node the mapping's memory is bound to, if one.
    pub(crate) fn bound_node(&self) -> std::io::Result<Option<u32>> {
        crate::placement::bound_node(self.ptr)
    }

    /// Allocates and maps every page of a segment being created, so that a shortage shows
    /// now as an error, not later as SIGBUS (`MADV_POPULATE_WRITE`). On kernels without it
    /// (before 5.14), writes each page's first byte back to itself: only safe while no
    /// other process writes the memory, as during create.
    /// See [madvise(2)](https://man7.org/linux/man-pages/man2/madvise.2.html).
    pub(crate) fn populate_new(&self) -> nix::Result<()> {
        self.populate(nix::sys::mman::MmapAdvise::MADV_POPULATE_WRITE, |p| {
            // SAFETY: `p` is inside this live, writable mapping, and during create nobody
            // else writes it (openers wait for the header), so the read-then-write of the
            // same byte loses nothing.
            unsafe { p.write_volatile(p.read_volatile()) }
        })
    }

    /// Maps every page of an existing segment into this process without changing any
    /// contents (`MADV_POPULATE_WRITE`, or `_READ` for a read-only mapping), so the first
    /// records pay no page faults. On kernels without it, reads one byte of each page.
    pub(crate) fn prefault(&self) -> nix::Result<()> {
        use nix::sys::mman::MmapAdvise;
        let advice = if self.writable { MmapAdvise::MADV_POPULATE_WRITE } else { MmapAdvise::MADV_POPULATE_READ };
        self.populate(advice, |p| {
            // SAFETY: `p` is inside this live mapping; a volatile read of a byte another
            // process may be writing is a plain load of shared memory.
            unsafe { p.read_volatile() };
        })
    }

    /// `advice` (a POPULATE one) over the whole mapping; on a kernel without it
    /// (`EINVAL`, before 5.14), `touch` on the first byte of each page instead.
    fn populate(&self, advice: nix::sys::mman::MmapAdvise, touch: impl Fn(*mut u8)) -> nix::Result<()> {
        match self.madvise(advice) {
            Err(nix::errno::Errno::EINVAL) => {
                for offset in (0..self.len).step_by(PAGE) {
                    // SAFETY: `offset < len`, so the pointer is inside this live mapping.
                    touch(unsafe { self.ptr.as_ptr().add(offset) });
                }
                Ok(())
            }
            other => other,
        }
    }

    fn madvise(&self, advice: nix::sys::mman::MmapAdvise) -> nix::Result<()> {
        // SAFETY: the range is exactly this live mapping; the POPULATE advice changes no
        // contents.
        unsafe { nix::sys::mman::madvise(self.ptr.cast(), self.len, advice) }
    }

    /// Writes dirty pages back to the file (`msync(MS_SYNC)`).
    /// See [msync(2)](https://man7.org/linux/man-pages/man2/msync.2.html).
    pub(crate) fn sync(&self) -> nix::Result<()> {
        self.sync_range(0..self.len)
    }

    /// Writes the dirty pages of bytes `range` back to the file (`msync(MS_SYNC)` of the
    /// pages that hold them; a range past the end is cut to it).
    pub(crate) fn sync_range(&self, range: std::ops::Range<usize>) -> nix::Result<()> {
        let start = range.start & !(PAGE - 1);
        let end = range.end.min(self.len);
        if start >= end {
            return Ok(());
        }
        // SAFETY: `start` is page-aligned and `start..end` lies within this live mapping.
        unsafe { nix::sys::mman::msync(self.ptr.add(start).cast(), end - start, MsFlags::MS_SYNC) }
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

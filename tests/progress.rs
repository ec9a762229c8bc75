//! A peer's progress, published through a small shared file so that a test can kill the
//! peer at a chosen point and then bound what it had done.
//!
//! Four words, each a sequence number plus one (0: nothing yet):
//! - `start`: the first record this peer took on (a producer's resume point, a
//!   consumer's first record).
//! - `begun`: stored *before* the peer starts on a record (a producer's claim, a
//!   consumer's read). The peer may have gone further than `done`, never beyond `begun`.
//! - `done`: stored *after* the ring holds the outcome (a producer's publish returned,
//!   a consumer's release). The peer has done at least this much.
//! - `stalled`: the record the peer stopped in for good (`--stall-at`).
//!
//! A kill can land between the ring operation and the store that reports it, so
//! `begun` and `done` are bounds, not exact values: after a kill, the first record the
//! peer had not finished lies in `done ..= begun`.

use std::num::NonZeroUsize;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::mman::{MapFlags, ProtFlags};

const LEN: usize = 4096;

/// A mapped progress file.
#[derive(Debug)]
pub struct Progress {
    words: NonNull<[AtomicU64; 4]>,
}

// SAFETY: the mapping is only accessed through atomics and lives as long as `self`.
unsafe impl Send for Progress {}
// SAFETY: as above.
unsafe impl Sync for Progress {}

impl Progress {
    /// Creates (or truncates to zero) the file and maps it.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        file.set_len(LEN as u64)?;
        Self::map(&file)
    }

    /// Maps an existing file.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
        if file.metadata()?.len() < LEN as u64 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "progress file too short"));
        }
        Self::map(&file)
    }

    fn map(file: &std::fs::File) -> std::io::Result<Self> {
        let len = NonZeroUsize::new(LEN).expect("LEN is not zero");
        // SAFETY: a new shared mapping of a file we just checked is LEN bytes long; it
        // aliases no Rust object, and is only accessed through the atomics below.
        let ptr = unsafe {
            nix::sys::mman::mmap(None, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, file, 0)
        }
        .map_err(std::io::Error::from)?;
        Ok(Progress { words: ptr.cast() })
    }

    fn words(&self) -> &[AtomicU64; 4] {
        // SAFETY: the mapping is page-aligned, LEN >= 32 bytes, lives until `drop`, and
        // `AtomicU64` is valid for any bytes.
        unsafe { self.words.as_ref() }
    }

    // Release stores pair with the Acquire loads of the getters: a reader that sees a
    // value also sees the stores made before it.

    /// The peer's first record is `seq`.
    pub fn start_at(&self, seq: u64) {
        self.words()[0].store(seq + 1, Ordering::Release);
    }

    /// The peer is starting on record `seq`.
    pub fn begin(&self, seq: u64) {
        self.words()[1].store(seq + 1, Ordering::Release);
    }

    /// The ring holds the outcome of every record below `end`.
    pub fn done_below(&self, end: u64) {
        self.words()[2].store(end, Ordering::Release);
    }

    /// The peer stops for good in the middle of record `seq`.
    pub fn stall_at(&self, seq: u64) {
        self.words()[3].store(seq + 1, Ordering::Release);
    }

    /// The peer's first record.
    pub fn start(&self) -> Option<u64> {
        self.words()[0].load(Ordering::Acquire).checked_sub(1)
    }

    /// Records below this number have been started on.
    pub fn begun(&self) -> u64 {
        self.words()[1].load(Ordering::Acquire)
    }

    /// Records below this number are done.
    pub fn done(&self) -> u64 {
        self.words()[2].load(Ordering::Acquire)
    }

    /// The record the peer stalled in.
    pub fn stalled(&self) -> Option<u64> {
        self.words()[3].load(Ordering::Acquire).checked_sub(1)
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped; no reference into it outlives `self`.
        let _ = unsafe { nix::sys::mman::munmap(self.words.cast(), LEN) };
    }
}

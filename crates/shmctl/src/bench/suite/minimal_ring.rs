//! The baseline: the least a shared-memory ring of fixed slots can do, written out in full
//! so that every ratio says what shmring costs over it.
//!
//! A `shm_open`'d segment (unlinked once mapped): the consumer's `head` on the first
//! 128-byte line, the producer's `tail` on the second, then a power of two of slots of
//! the record size. Each side stores its own cursor with Release after each record, loads
//! the other's with Acquire only when its cached copy says it must wait, and busy-spins.
//! No framing, no counters, no wake-ups, no validation of what the other side wrote.

use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags, madvise, mmap, munmap};

use super::CaseError;
use super::cleanup::TempShm;
use super::process::Spinner;
use super::transport::{Checker, Rx, Tx};

/// Offset of the consumer's cursor.
const HEAD: usize = 0;
/// Offset of the producer's cursor.
const TAIL: usize = 128;
/// Offset of slot 0.
const SLOTS: usize = 256;

pub struct MinimalRing {
    base: NonNull<u8>,
    len: usize,
    /// Record bytes; a slot is this, rounded up to 8.
    record: usize,
    slot: usize,
    mask: u64,
    /// Whether each side maps every page before it starts (as the shmring rings do).
    prefault: bool,
}

// SAFETY: the mapping is plain shared memory; the cursors are accessed only as atomics and
// each slot only by the side the cursors give it to.
unsafe impl Send for MinimalRing {}
// SAFETY: as above.
unsafe impl Sync for MinimalRing {}

impl MinimalRing {
    /// A ring of at most `capacity` data bytes (at least two slots) for `record`-byte records.
    pub fn new(capacity: u64, record: usize, prefault: bool) -> Result<MinimalRing, CaseError> {
        let slot = record.next_multiple_of(8);
        let slots = (capacity as usize / slot).max(2);
        let slots = if slots.is_power_of_two() { slots } else { slots.next_power_of_two() / 2 };
        let len = SLOTS + slots * slot;
        let shm = TempShm::create(len as u64)?;
        // SAFETY: a fresh shared mapping of the whole object at an address the kernel
        // picks: it aliases nothing and is zeroed (both cursors 0); a forked child inherits it.
        let base = unsafe {
            mmap(
                None,
                NonZeroUsize::new(len).expect("non-zero"),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &shm.fd,
                0,
            )
        }
        .map_err(|e| CaseError::other(format!("mmap: {e}")))?;
        Ok(MinimalRing { base: base.cast(), len, record, slot, mask: slots as u64 - 1, prefault })
    }

    /// Maps every page into this process, if the ring was made to (a forked child shares
    /// the mapping but not its page tables).
    fn prefault(&self) -> Result<(), CaseError> {
        if !self.prefault {
            return Ok(());
        }
        // SAFETY: exactly this live mapping; the advice changes no contents.
        match unsafe { madvise(self.base.cast(), self.len, MmapAdvise::MADV_POPULATE_WRITE) } {
            // A kernel older than 5.14: touch a byte of each page instead, as shm-core does.
            Err(nix::errno::Errno::EINVAL) => {
                for offset in (0..self.len).step_by(4096) {
                    // SAFETY: inside this live mapping; a volatile load of shared memory.
                    unsafe { self.base.as_ptr().add(offset).read_volatile() };
                }
                Ok(())
            }
            other => other.map_err(|e| CaseError::other(format!("minimal ring: madvise(MADV_POPULATE_WRITE): {e}"))),
        }
    }

    fn cursor(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: HEAD and TAIL are 8-aligned (the mapping is page-aligned) and inside it,
        // and only ever accessed as atomics while `self` keeps it mapped.
        unsafe { self.base.add(offset).cast::<AtomicU64>().as_ref() }
    }

    fn slot(&self, position: u64) -> *mut u8 {
        // SAFETY: `position & mask` is below the slot count, so the slot is inside the mapping.
        unsafe { self.base.as_ptr().add(SLOTS + (position & self.mask) as usize * self.slot) }
    }
}

impl Drop for MinimalRing {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length; no reference into it outlives `self`.
        let _ = unsafe { munmap(self.base.cast(), self.len) };
    }
}

pub struct MinimalTx {
    ring: Arc<MinimalRing>,
    tail: u64,
    cached_head: u64,
    record: Vec<u8>,
}

impl MinimalTx {
    pub fn new(ring: Arc<MinimalRing>) -> Result<MinimalTx, CaseError> {
        ring.prefault()?;
        let record = vec![0x5a; ring.record];
        Ok(MinimalTx { ring, tail: 0, cached_head: 0, record })
    }
}

impl Tx for MinimalTx {
    fn send(&mut self, first: u64, _max: u64) -> Result<u64, CaseError> {
        let mut spin = Spinner::new("minimal ring: waiting for space");
        while self.tail - self.cached_head > self.ring.mask {
            // Acquire: pairs with the consumer's Release store of head; it is done with the slot.
            self.cached_head = self.ring.cursor(HEAD).load(Ordering::Acquire);
            spin.step()?;
        }
        self.record[..8].copy_from_slice(&first.to_le_bytes());
        // SAFETY: the slot at `tail` is free (tail - head < slots), only we write slots, and
        // it holds `record` bytes.
        unsafe { std::ptr::copy_nonoverlapping(self.record.as_ptr(), self.ring.slot(self.tail), self.record.len()) };
        self.tail += 1;
        // Release: the consumer's Acquire load of tail sees the slot written.
        self.ring.cursor(TAIL).store(self.tail, Ordering::Release);
        Ok(1)
    }
}

pub struct MinimalRx {
    ring: Arc<MinimalRing>,
    head: u64,
    cached_tail: u64,
}

impl MinimalRx {
    pub fn new(ring: Arc<MinimalRing>) -> Result<MinimalRx, CaseError> {
        ring.prefault()?;
        Ok(MinimalRx { ring, head: 0, cached_tail: 0 })
    }
}

impl Rx for MinimalRx {
    fn recv(&mut self, check: &mut Checker) -> Result<(), CaseError> {
        let mut spin = Spinner::new("minimal ring: waiting for data");
        while self.head == self.cached_tail {
            // Acquire: pairs with the producer's Release store of tail; the slot is written.
            self.cached_tail = self.ring.cursor(TAIL).load(Ordering::Acquire);
            spin.step()?;
        }
        // SAFETY: the slot at `head` is published (head < tail), holds `record` bytes, and
        // the producer does not write it again until we store a head past it.
        let data = unsafe { std::slice::from_raw_parts(self.ring.slot(self.head), self.ring.record) };
        let checked = check.record(data);
        self.head += 1;
        // Release: our read of the slot is done before the producer reuses it.
        self.ring.cursor(HEAD).store(self.head, Ordering::Release);
        checked
    }
}

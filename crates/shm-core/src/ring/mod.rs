//! Rings: the algorithms that move records through a segment's data region.
//!
//! Each ring kind is one file, readable top to bottom; this module holds what they
//! share: wait strategies, errors, and `RingRefs`, the view of the shared fields a
//! ring handle uses. The ring code runs over any memory with the [`crate::layout`]
//! shape: a mapped segment in production, a heap buffer in unit tests and benches,
//! loom-modelled cells under `--cfg loom`.

pub mod broadcast;
pub mod frame;
pub mod heap;
pub mod mpmc;
pub mod mpsc;
pub mod spsc;
pub(crate) mod wait;

use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use crate::layout::{CursorSlot, Line, MpmcArea, MpscArea, ProducerLine, STAT_SLOTS, StatSlot, WakeWord};

/// How a blocked handle waits for the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WaitStrategy {
    /// Busy-wait: lowest latency, burns a core while idle.
    Spin,
    /// Busy-wait with `sched_yield` between checks.
    Yield,
    /// Sleep on the futex at once: no CPU while idle, a wake-up costs a syscall on each side.
    Futex,
    /// Spin for a short while, then sleep on the futex (default).
    #[default]
    Hybrid,
}

impl WaitStrategy {
    /// Every strategy, for help texts and benchmarks.
    pub const ALL: [WaitStrategy; 4] =
        [WaitStrategy::Spin, WaitStrategy::Yield, WaitStrategy::Futex, WaitStrategy::Hybrid];

    /// The value stored as the segment's wait hint.
    pub const fn code(self) -> u32 {
        match self {
            WaitStrategy::Spin => 1,
            WaitStrategy::Yield => 2,
            WaitStrategy::Futex => 3,
            WaitStrategy::Hybrid => 4,
        }
    }

    /// The strategy for a stored hint (unknown values give the default).
    pub const fn from_code(code: u32) -> Self {
        match code {
            1 => WaitStrategy::Spin,
            2 => WaitStrategy::Yield,
            3 => WaitStrategy::Futex,
            _ => WaitStrategy::Hybrid,
        }
    }

    /// Its name as the CLI and config spell it.
    pub const fn name(self) -> &'static str {
        match self {
            WaitStrategy::Spin => "spin",
            WaitStrategy::Yield => "yield",
            WaitStrategy::Futex => "futex",
            WaitStrategy::Hybrid => "hybrid",
        }
    }
}

impl std::str::FromStr for WaitStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        WaitStrategy::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| format!("unknown wait strategy {s:?} (expected spin, yield, futex or hybrid)"))
    }
}

/// How long `hybrid` busy-waits before sleeping. Long enough that a steady stream never
/// sleeps, short enough that an idle consumer costs nothing measurable.
pub const HYBRID_SPIN: Duration = Duration::from_micros(50);

/// The longest single futex sleep: every wait re-checks at least this often, so even a
/// peer that died in the middle of the wake-up protocol costs latency, never a hang.
pub const MAX_SLEEP: Duration = Duration::from_millis(100);

/// What the ring found wrong in memory another process can write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt ring: {what} (value {value}, at position {position})")]
pub struct Corruption {
    /// Which invariant failed.
    pub what: &'static str,
    /// The offending value.
    pub value: u64,
    /// The ring position where it was found.
    pub position: u64,
}

/// What [`crate::Segment::peek_view`] saw: the records a consumer would read next, the
/// frames between them that no consumer is handed, and where the walk stopped early.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PeekView {
    /// Copies of the records, in the order a consumer reads them.
    pub records: Vec<spsc::PeekedRecord>,
    /// Frames passed without a record (wrap padding, abandoned claims, dead producers'
    /// holes, acknowledged mpmc records), in ring order: at most as many as `max` asked.
    pub skipped: Vec<SkippedFrame>,
    /// Set when the walk stopped before `max` records at a claim not yet committed (mpsc
    /// and mpmc): nothing after it is visible to a consumer until it is.
    pub stopped_at: Option<PeekStop>,
    /// Broadcast: the named consumer was lapped (its next records were overwritten), so
    /// the view starts at the oldest record still in the ring instead.
    pub consumer_lapped: bool,
}

/// A frame a peek passed without a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SkippedFrame {
    /// Its ring position.
    pub position: u64,
    /// Its length in the ring, header included.
    pub bytes: u64,
    /// What it is: `padding`, `abandoned` (a claim its live producer dropped),
    /// `unblocked` (a dead producer's hole) or `acknowledged` (an mpmc record done with).
    pub what: &'static str,
    /// The producer id it belongs to (`None` for padding).
    pub producer: Option<usize>,
}

/// Where a peek stopped: a claim not yet committed, and who it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PeekStop {
    /// Ring position of the claim's frame.
    pub position: u64,
    /// Who holds it up, as [`crate::Segment::mpsc_status`] says it.
    pub waiting_for: mpsc::HeadClaim,
}

/// A file segment's flush policy could not write ring bytes back to the file: the
/// `msync` of segment bytes `start..end` failed, so they are not known to be on disk.
///
/// The spsc producer that met it is poisoned: see "Durability" in [`spsc`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("msync of segment bytes {start}..{end} failed")]
pub struct FlushError {
    /// First byte of the range (from the segment's start).
    pub start: usize,
    /// One past its last byte.
    pub end: usize,
    /// What `msync` said.
    #[source]
    pub errno: nix::errno::Errno,
}

/// Why [`spsc::Producer::try_claim`] gave no claim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TryClaimError {
    /// Not enough free space now.
    #[error("ring is full")]
    Full,
    /// The record is larger than the ring's maximum.
    #[error("record of {len} bytes is larger than the ring's maximum of {max} bytes")]
    TooLarge {
        /// Requested payload bytes.
        len: usize,
        /// The ring's maximum.
        max: u64,
    },
    /// The consumer's cursor is impossible.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    /// The producer's flush policy failed earlier (or on this call): it is poisoned.
    #[error("the flush policy could not make records durable")]
    Flush(#[from] FlushError),
}

/// Why a blocking claim or publish failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// Still no space when the timeout ran out.
    #[error("ring stayed full for {0:?}")]
    TimedOut(Duration),
    /// The record is larger than the ring's maximum.
    #[error("record of {len} bytes is larger than the ring's maximum of {max} bytes")]
    TooLarge {
        /// Requested payload bytes.
        len: usize,
        /// The ring's maximum.
        max: u64,
    },
    /// The consumer's cursor is impossible.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    /// The producer's flush policy failed earlier (or on this call): it is poisoned.
    #[error("the flush policy could not make records durable")]
    Flush(#[from] FlushError),
}

/// Why [`spsc::Consumer::try_read`] gave no record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TryReadError {
    /// No committed record now.
    #[error("ring is empty")]
    Empty,
    /// A cursor or a frame is impossible.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
}

/// Why a blocking read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Still no record when the timeout ran out.
    #[error("ring stayed empty for {0:?}")]
    TimedOut(Duration),
    /// A cursor or a frame is impossible.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
}

/// Why [`spsc::Consumer::read_batch`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum BatchError<E> {
    /// The sink refused a record; the ones before it were released, it and the rest were not.
    #[error("sink refused a record after {accepted} accepted: {error}")]
    Sink {
        /// Records accepted (and released) before the refusal.
        accepted: usize,
        /// What the sink said.
        error: E,
    },
    /// A cursor or a frame is impossible; records accepted before it were released.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
}

/// Where a producer is in making records durable; what a [`PublishHook`] is told.
/// File segments `msync` at each step per their flush policy, so that a frame reaches
/// the file before the cursor that covers it, and the read cursor that freed space
/// reaches it before that space is overwritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishStep {
    /// The consumer freed space (its read cursor moved to `read_cursor`), which the
    /// producer is about to overwrite: the freeing read cursor must be durable first.
    Reclaimed {
        /// The read cursor just seen.
        read_cursor: u64,
    },
    /// Frames at ring positions `from..to` are written, and the write cursor does not
    /// cover them yet: make them durable.
    Written {
        /// First position.
        from: u64,
        /// One past the last.
        to: u64,
    },
    /// The write cursor now covers them (it is `to` of the last `Written`).
    Published,
}

/// Called at each [`PublishStep`]; file segments use it to `msync` per their flush
/// policy. An error stops the step it was called for (see "Durability" in [`spsc`]).
pub type PublishHook = Box<dyn FnMut(PublishStep) -> Result<(), FlushError> + Send>;

/// Pointers to the shared fields of one ring, valid while `_keep` lives.
pub(crate) struct RingRefs {
    pub(crate) producer: NonNull<ProducerLine>,
    pub(crate) cursor: NonNull<CursorSlot>,
    pub(crate) data_wake: NonNull<WakeWord>,
    pub(crate) space_wake: NonNull<WakeWord>,
    /// `None` in the loom models that leave counters out to keep the state space small.
    pub(crate) stats: Option<NonNull<[Line<StatSlot>; STAT_SLOTS]>>,
    /// The mpsc fields (in every segment; only mpsc rings use them).
    pub(crate) mpsc: Option<NonNull<MpscArea>>,
    /// The mpmc fields (in every segment; only mpmc rings use them).
    pub(crate) mpmc: Option<NonNull<MpmcArea>>,
    pub(crate) data: Region,
    pub(crate) capacity: u64,
    pub(crate) max_record: u64,
    /// The heap memory of an in-process ring, so its consumer can share it.
    pub(crate) heap: Option<Arc<heap::HeapSegment>>,
    pub(crate) _keep: Arc<dyn Send + Sync>,
}

impl RingRefs {
    /// The spsc ring of the segment whose header is at `header`.
    ///
    /// # Safety
    /// `header` points to a [`crate::layout::Header`] that is followed, at
    /// `HEADER_SIZE`, by `capacity` bytes of ring data (a power of two), the whole
    /// kept mapped or allocated by `keep`.
    pub(crate) unsafe fn from_header(
        header: NonNull<crate::layout::Header>,
        capacity: u64,
        max_record: u64,
        heap: Option<Arc<heap::HeapSegment>>,
        keep: Arc<dyn Send + Sync>,
    ) -> Self {
        // SAFETY: valid by the caller's contract; all atomics.
        let h = unsafe { header.as_ref() };
        // SAFETY: `capacity` bytes follow the header (caller's contract).
        let data = unsafe { header.cast::<u8>().add(crate::layout::HEADER_SIZE) };
        RingRefs {
            producer: NonNull::from(&h.producer.0),
            cursor: NonNull::from(&h.cursors[0].0),
            data_wake: NonNull::from(&h.data_wake.0),
            space_wake: NonNull::from(&h.space_wake.0),
            stats: Some(NonNull::from(&h.stats)),
            mpsc: Some(NonNull::from(&h.mpsc)),
            mpmc: Some(NonNull::from(&h.mpmc)),
            // SAFETY: page-aligned data of `capacity` bytes, kept by `keep`.
            data: unsafe { Region::new(data, capacity) },
            capacity,
            max_record,
            heap,
            _keep: keep,
        }
    }

    pub(crate) fn producer_line(&self) -> &ProducerLine {
        // SAFETY: `producer` points into memory that `_keep` keeps mapped (the contract of
        // every constructor), and shared memory is only ever accessed through atomics.
        unsafe { self.producer.as_ref() }
    }
    pub(crate) fn cursor(&self) -> &CursorSlot {
        // SAFETY: as in `producer_line`.
        unsafe { self.cursor.as_ref() }
    }
    pub(crate) fn data_wake(&self) -> &WakeWord {
        // SAFETY: as in `producer_line`.
        unsafe { self.data_wake.as_ref() }
    }
    pub(crate) fn space_wake(&self) -> &WakeWord {
        // SAFETY: as in `producer_line`.
        unsafe { self.space_wake.as_ref() }
    }
    /// Stores a counter's running value (each counter has one writer). Release: pairs
    /// with the Acquire loads in `stats::read_values`, so a reader that sees a consumed
    /// total also sees the produced total the consumer had seen (a plain store on x86-64).
    pub(crate) fn store_counter(&self, counter: crate::stats::Counter, value: u64) {
        if let Some(cells) = self.counters() {
            cells.cell(counter).store(value, crate::sync::Ordering::Release);
        }
    }

    /// The mpsc area. Every constructor of an mpsc ring sets it; `None` only for a
    /// heap spsc ring under loom.
    pub(crate) fn mpsc_area(&self) -> Option<&MpscArea> {
        // SAFETY: as in `producer_line`.
        self.mpsc.map(|p| unsafe { p.as_ref() })
    }

    /// The mpmc area. Every constructor of an mpmc ring sets it.
    pub(crate) fn mpmc_area(&self) -> Option<&MpmcArea> {
        // SAFETY: as in `producer_line`.
        self.mpmc.map(|p| unsafe { p.as_ref() })
    }

    pub(crate) fn counters(&self) -> Option<crate::stats::CounterCells<'_>> {
        // SAFETY: as in `producer_line`.
        self.stats.map(|p| crate::stats::CounterCells::new(unsafe { p.as_ref() }))
    }
}

/// What loom keeps for each 8-byte word of a region: a cell that records plain
/// accesses, and the atomic that stands for the word when it is a frame header read and
/// written atomically (the mpsc ring's commit word).
#[cfg(loom)]
pub(crate) struct LoomWord {
    cell: loom::cell::UnsafeCell<()>,
    atomic: crate::sync::AtomicU64,
}

/// One loom word per 8-byte word of a region.
#[cfg(loom)]
pub(crate) fn loom_cells(capacity: u64) -> Arc<[LoomWord]> {
    (0..capacity / 8)
        .map(|_| LoomWord { cell: loom::cell::UnsafeCell::new(()), atomic: crate::sync::AtomicU64::new(0) })
        .collect()
}

/// The ring's data bytes: `capacity` bytes from `base`, valid while the owning
/// `RingRefs::_keep` lives.
///
/// Who may touch which bytes when is the ring protocol's business; `Region` only turns
/// positions into pointers. The word accessors are safe to call with any index: they
/// mask it to an 8-byte-aligned index inside the region in every build, so a position
/// taken from a hostile segment can give a wrong value (which the caller validates),
/// never an access outside the mapping. Under loom it also records every access to each
/// 8-byte word in a loom cell, so a frame read that is not ordered after its write (a
/// missing Release/Acquire pair) fails the model.
pub(crate) struct Region {
    base: NonNull<u8>,
    mask: u64,
    #[cfg(loom)]
    cells: Arc<[LoomWord]>,
    /// Loom only: the words are overwritten under readers' copies (see
    /// [`Region::overwritten_under_copies`]).
    #[cfg(loom)]
    overwritten_under_copies: bool,
}

impl Region {
    /// # Safety
    /// `base` must be valid for reads and writes of `capacity` bytes (a power of two,
    /// at least 8) and 8-byte aligned, for as long as the `Region` is used.
    pub(crate) unsafe fn new(base: NonNull<u8>, capacity: u64) -> Self {
        debug_assert!(capacity.is_power_of_two() && capacity >= 8);
        Region {
            base,
            mask: capacity - 1,
            #[cfg(loom)]
            cells: loom_cells(capacity),
            #[cfg(loom)]
            overwritten_under_copies: false,
        }
    }

    /// A region whose loom cells are shared with the other side's region over the same
    /// bytes, so loom sees both sides' accesses to each word (loom models only).
    ///
    /// # Safety
    /// As for [`Region::new`]; `cells` has one cell per 8 bytes of the region.
    #[cfg(loom)]
    pub(crate) unsafe fn with_cells(base: NonNull<u8>, capacity: u64, cells: Arc<[LoomWord]>) -> Self {
        debug_assert!(cells.len() as u64 == capacity / 8);
        Region { base, mask: capacity - 1, cells, overwritten_under_copies: false }
    }

    /// Loom only, on both sides of a lossy broadcast ring: the producer laps a consumer
    /// without waiting and may overwrite the words it is copying; the consumer discards
    /// a copy whose position was lapped meanwhile (`lapped_at` after the copy, a seqlock).
    /// Those reads race by design, so loom's race detector cannot judge them. Instead the
    /// words are modelled as what a seqlock needs them to be, Relaxed atomics: the
    /// producer's word writes (and, at its commit, [`Region::mirror`] of the payload it
    /// wrote through its claim) store each word's value into that word's loom atomic, and
    /// the consumer's reads take the values from there. Loom then runs the producer's
    /// stores between the words of a copy, with the memory model's answer to what the
    /// consumer may see, and the models judge the outcome (no torn or foreign record
    /// handed over).
    #[cfg(loom)]
    pub(crate) fn overwritten_under_copies(&mut self) {
        self.overwritten_under_copies = true;
    }

    /// Index in the data region of ring position `pos`.
    #[inline]
    pub(crate) fn index(&self, pos: u64) -> u64 {
        pos & self.mask
    }

    /// The address of byte `index`; only computed here (no access), so it needs no
    /// precondition. Whoever reads or writes through it shows that the access stays
    /// inside the region.
    #[inline]
    fn ptr(&self, index: u64) -> *mut u8 {
        self.base.as_ptr().wrapping_add(index as usize)
    }

    /// The aligned word index that `index` names: itself when the caller validated it
    /// (8-aligned, below capacity), else some word inside the region.
    #[inline]
    fn word_index(&self, index: u64) -> u64 {
        debug_assert!(index % 8 == 0 && index <= self.mask, "unchecked word index {index}");
        // `mask` without its low three bits: the start of a whole word inside the region.
        // Callers index with `pos & mask`, so this costs one AND with a constant.
        index & self.mask & !7
    }

    /// Reads the word at `index` (callers pass an 8-aligned index below capacity, which
    /// they have checked; any other index reads some other word of the region).
    ///
    /// A volatile read: another process may be changing these bytes (a hostile one, or
    /// a producer reusing space), so the value is read exactly once, into a local.
    #[inline]
    pub(crate) fn read_word(&self, index: u64) -> u64 {
        let index = self.word_index(index);
        self.track(index, 8, false);
        #[cfg(loom)]
        if self.overwritten_under_copies {
            return u64::from_le(self.cells[(index / 8) as usize].atomic.load(crate::sync::Ordering::Relaxed));
        }
        // SAFETY: `word_index` masks the index to an 8-aligned one below capacity, and
        // `base` is 8-aligned and valid for `capacity` bytes, so the 8 bytes are inside
        // the region and aligned.
        u64::from_le(unsafe { self.ptr(index).cast::<u64>().read_volatile() })
    }

    /// Writes the word at `index` (as [`read_word`](Self::read_word)).
    #[inline]
    pub(crate) fn write_word(&self, index: u64, word: u64) {
        let index = self.word_index(index);
        self.track(index, 8, true);
        // SAFETY: in bounds and aligned, as in `read_word`. Only the producer writes the
        // data region, and only at positions the protocol has handed to it.
        unsafe { self.ptr(index).cast::<u64>().write_volatile(word.to_le()) }
        #[cfg(loom)]
        if self.overwritten_under_copies {
            self.cells[(index / 8) as usize].atomic.store(word.to_le(), crate::sync::Ordering::Relaxed);
        }
    }

    /// Loom only: stores the words of `index .. index + len` (8-aligned, inside the region),
    /// as they are in memory, into their loom atomics, for a region whose words are
    /// [`overwritten under copies`](Self::overwritten_under_copies) (nothing otherwise):
    /// the payload the producer wrote through its claim, at its commit.
    #[cfg(loom)]
    pub(crate) fn mirror(&self, index: u64, len: u64) {
        if !self.overwritten_under_copies {
            return;
        }
        for word in (index..index + len).step_by(8) {
            let word = self.word_index(word);
            // SAFETY: in bounds and aligned, as in `read_word`.
            let value = unsafe { self.ptr(word).cast::<u64>().read_volatile() };
            self.cells[(word / 8) as usize].atomic.store(value, crate::sync::Ordering::Relaxed);
        }
    }

    /// Copies `len` bytes from `index` (8-aligned) with volatile word reads, for bytes
    /// another process may be writing meanwhile: no reference to them is ever made, and
    /// the copy is the caller's to validate. Reads whole words, so the bytes up to the
    /// next multiple of 8 must belong to the same frame (frames are padded to 8).
    pub(crate) fn copy_words(&self, index: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len.next_multiple_of(8)];
        self.copy_words_into(index, &mut out);
        out.truncate(len);
        out
    }

    /// Fills `out` from `index` (8-aligned) as [`copy_words`](Self::copy_words) does, a
    /// word per 8 bytes of `out` (a trailing part word is left as it is): into a buffer
    /// the caller keeps, so that a copy per record allocates nothing and checks no capacity.
    /// The start is masked once and the words are read in a row: only those inside the
    /// region from the start (all of them for a frame the caller validated; fewer for a
    /// bad one, never an access outside).
    #[inline]
    pub(crate) fn copy_words_into(&self, index: u64, out: &mut [u8]) {
        let start = self.word_index(index);
        let words = (out.len() / 8).min(((self.mask + 1 - start) / 8) as usize);
        self.track(start, 8 * words as u64, false);
        #[cfg(loom)]
        if self.overwritten_under_copies {
            for word in 0..words {
                let value = self.cells[(start / 8) as usize + word].atomic.load(crate::sync::Ordering::Relaxed);
                out[8 * word..8 * word + 8].copy_from_slice(&value.to_ne_bytes());
            }
            return;
        }
        let (src, dst) = (self.ptr(start).cast::<u64>(), out.as_mut_ptr());
        for word in 0..words {
            // SAFETY: `start` is 8-aligned and below capacity, and `start + 8 * word` is
            // below capacity too (`words` counts only the words left in the region), so
            // the 8 bytes are inside the region and aligned. `out` holds at least
            // `8 * words` bytes, and a `&mut` borrow is the only view of them. The word
            // is copied as it is in memory, so its bytes keep their order.
            unsafe { dst.add(8 * word).cast::<u64>().write_unaligned(src.add(word).read_volatile()) };
        }
    }

    /// The frame header word at `index` as an atomic, for rings whose commit is a store
    /// to the header word (mpsc). `index` is reduced to an 8-aligned index inside the
    /// region, so a bad index gives a wrong word, never an access outside the region.
    #[inline]
    pub(crate) fn atomic_word(&self, index: u64) -> &crate::sync::AtomicU64 {
        let index = index & self.mask & !7;
        #[cfg(loom)]
        {
            &self.cells[(index / 8) as usize].atomic
        }
        #[cfg(not(loom))]
        // SAFETY: `index` is 8-aligned and below capacity, `base` is 8-aligned, so the 8
        // bytes are inside the region and aligned for an `AtomicU64`; the mapping lives as
        // long as `self`, and another process accessing them concurrently does so
        // atomically (the protocol accesses header words only through this method).
        unsafe {
            crate::sync::AtomicU64::from_ptr(self.ptr(index).cast::<u64>())
        }
    }

    /// Zeroes `index .. index + len` (8-aligned, inside the region), header words through
    /// their atomics. Relaxed: the caller publishes the zeros with a later Release store
    /// (the read cursor) before anyone may write these bytes again.
    ///
    /// # Safety
    /// No other process reads or writes these bytes plainly while this runs (true of a
    /// frame the consumer has passed and not yet released).
    #[inline]
    pub(crate) unsafe fn zero(&self, index: u64, len: u64) {
        debug_assert!(index % 8 == 0 && len % 8 == 0 && index + len <= self.mask + 1);
        self.track(index, len, true);
        #[cfg(loom)]
        for word in (index..index + len).step_by(8) {
            self.atomic_word(word).store(0, crate::sync::Ordering::Relaxed);
        }
        // SAFETY: in bounds and not accessed concurrently (the caller's contract).
        unsafe { std::ptr::write_bytes(self.ptr(index), 0, len as usize) }
    }

    /// The bytes `index .. index + len`.
    ///
    /// # Safety
    /// `index + len <= capacity`, and no process writes these bytes while the slice lives
    /// (the protocol guarantees this for a committed record until it is released).
    #[inline]
    pub(crate) unsafe fn slice(&self, index: u64, len: usize) -> &[u8] {
        // SAFETY: in bounds by the caller's contract; not written concurrently by it.
        unsafe { std::slice::from_raw_parts(self.ptr(index), len) }
    }

    /// The bytes `index .. index + len`, writable.
    ///
    /// # Safety
    /// `index + len <= capacity`, and no other process reads or writes these bytes while
    /// the slice lives (true of a claim until it is committed).
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice_mut(&self, index: u64, len: usize) -> &mut [u8] {
        // SAFETY: in bounds and exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(index), len) }
    }

    /// Records an access to `index .. index + len` for loom's race detector (no-op otherwise).
    #[inline]
    pub(crate) fn track(&self, index: u64, len: u64, write: bool) {
        #[cfg(loom)]
        {
            let first = (index / 8) as usize;
            let last = ((index + len.max(1) - 1) / 8) as usize;
            for cell in &self.cells[first..=last] {
                if write {
                    cell.cell.with_mut(|_| ());
                } else if !self.overwritten_under_copies {
                    cell.cell.with(|_| ());
                }
            }
        }
        #[cfg(not(loom))]
        let _ = (index, len, write);
    }
}

//! The spsc ring over heap memory, for threads of one process, unit tests, benchmarks
//! and loom models: the same ring code as in a segment, with no segment around it.

use std::ptr::NonNull;
use std::sync::Arc;

use super::spsc::{Consumer, Producer};
use super::{RingRefs, WaitStrategy};
use crate::layout::max_payload_for;

/// Why [`spsc_pair`] refused its arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "heap ring: capacity must be a power of two of at least 16 bytes and max_record from 1 to capacity/2 - 8 (got {capacity}, {max_record})"
)]
pub struct HeapRingError {
    /// Requested capacity.
    pub capacity: u64,
    /// Requested max record.
    pub max_record: u64,
}

/// A producer and a consumer of one spsc ring on the heap (no liveness, no flush).
/// Capacity may be as small as 16 bytes here, for tests and models.
pub fn spsc_pair(capacity: u64, max_record: u64, wait: WaitStrategy) -> Result<(Producer, Consumer), HeapRingError> {
    pair_over(capacity, max_record, wait, memory::refs)
}

/// The pair of a new ring over the memory `refs` allocates, once the geometry is checked.
fn pair_over(
    capacity: u64,
    max_record: u64,
    wait: WaitStrategy,
    refs: fn(u64, u64) -> RingRefs,
) -> Result<(Producer, Consumer), HeapRingError> {
    if !capacity.is_power_of_two() || capacity < 16 || max_record == 0 || max_record > max_payload_for(capacity) {
        return Err(HeapRingError { capacity, max_record });
    }
    let producer =
        Producer::attach(refs(capacity, max_record), wait, None, None).expect("a fresh ring has consistent cursors");
    let consumer =
        Consumer::attach(memory::refs_of(&producer), wait, None).expect("a fresh ring has consistent cursors");
    Ok((producer, consumer))
}

#[cfg(not(loom))]
mod memory {
    use std::alloc::{Layout, alloc_zeroed, dealloc};

    use super::*;
    use crate::layout::{HEADER_SIZE, Header};

    /// A zeroed, page-aligned header plus data, freed on drop: the layout of a segment.
    pub(crate) struct HeapSegment {
        ptr: NonNull<u8>,
        layout: Layout,
        pub(super) capacity: u64,
        pub(super) max_record: u64,
    }

    // SAFETY: plain memory accessed through atomics and protocol-owned byte ranges.
    unsafe impl Send for HeapSegment {}
    // SAFETY: as above.
    unsafe impl Sync for HeapSegment {}

    impl Drop for HeapSegment {
        fn drop(&mut self) {
            // SAFETY: allocated in `refs` with this layout; no handle outlives the Arc.
            unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
        }
    }

    pub(super) fn refs(capacity: u64, max_record: u64) -> RingRefs {
        let layout =
            Layout::from_size_align(HEADER_SIZE + capacity as usize, 4096).expect("size checked by the caller");
        // SAFETY: the layout has non-zero size.
        let ptr =
            NonNull::new(unsafe { alloc_zeroed(layout) }).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        let seg = Arc::new(HeapSegment { ptr, layout, capacity, max_record });
        build(seg)
    }

    pub(super) fn refs_of(producer: &Producer) -> RingRefs {
        let seg = producer.heap_owner().expect("heap producers own a HeapSegment");
        build(seg)
    }

    pub(super) fn refs_of_heap(seg: &Arc<HeapSegment>) -> RingRefs {
        build(seg.clone())
    }

    pub(super) fn mpsc_refs(capacity: u64, max_record: u64) -> RingRefs {
        refs(capacity, max_record)
    }

    fn build(seg: Arc<HeapSegment>) -> RingRefs {
        let (capacity, max_record) = (seg.capacity, seg.max_record);
        // SAFETY: the allocation is a zeroed, page-aligned header followed by `capacity`
        // bytes of data, and `seg` (kept by the refs) owns it.
        unsafe { RingRefs::from_header(seg.ptr.cast::<Header>(), capacity, max_record, Some(seg.clone()), seg) }
    }
}

/// A ring's produced and consumed totals, read as `shmctl stat` reads them (loom models).
#[cfg(loom)]
pub struct Totals(Arc<HeapSegment>);

#[cfg(loom)]
impl Totals {
    /// `(total_produced, total_consumed)`, loaded consumer side first.
    pub fn read(&self) -> (u64, u64) {
        let values = crate::stats::read_values(self.0.stats.as_ref().expect("a counted pair has counters"));
        use crate::stats::Counter;
        (values[Counter::TotalProduced.slot()], values[Counter::TotalConsumed.slot()])
    }
}

/// Like [`spsc_pair`], with the ring's counters kept, and a view of its totals (loom
/// models only: the plain pair leaves counters out to keep the state space small).
#[cfg(loom)]
pub fn spsc_pair_counted(
    capacity: u64,
    max_record: u64,
    wait: WaitStrategy,
) -> Result<(Producer, Consumer, Totals), HeapRingError> {
    let (producer, consumer) = pair_over(capacity, max_record, wait, memory::counted_refs)?;
    let totals = Totals(producer.heap_owner().expect("heap producers own a HeapSegment"));
    Ok((producer, consumer, totals))
}

#[cfg(loom)]
mod memory {
    use super::*;
    use crate::layout::{
        CursorSlot, Line, MpmcArea, MpmcReleaseLine, MpmcTakeLine, MpmcWorkerSlot, MpscArea, MpscLedger,
        MpscProducerSlot, MpscTally, ProducerLine, PublishSlot, ReleaseSlot, STAT_SLOTS, StatSlot, WakeWord,
    };
    use crate::ring::Region;
    use crate::sync::{AtomicU32, AtomicU64};

    /// The shared fields of one ring as separate loom objects (counters only if asked for).
    pub(crate) struct HeapSegment {
        producer: ProducerLine,
        /// As many cursor slots as a broadcast model scans (spsc and mpsc use slot 0),
        /// each in its line, as in a header.
        cursors: Box<[Line<CursorSlot>; crate::ring::broadcast::CONSUMER_SLOTS]>,
        data_wake: WakeWord,
        space_wake: WakeWord,
        pub(super) stats: Option<Box<[Line<StatSlot>; STAT_SLOTS]>>,
        data: Box<[std::cell::UnsafeCell<u64>]>,
        /// One loom word per data word, shared by every handle's region so that loom
        /// checks every cross-side access.
        cells: Arc<[crate::ring::LoomWord]>,
        /// Only mpsc rings build it (each atomic is a loom object).
        mpsc: Option<Box<MpscArea>>,
        /// Built with the mpsc area (the heap ring serves both kinds).
        mpmc: Option<Box<MpmcArea>>,
        pub(super) capacity: u64,
        pub(super) max_record: u64,
    }

    // SAFETY: loom objects and protocol-owned bytes, as in a segment.
    unsafe impl Send for HeapSegment {}
    // SAFETY: as above.
    unsafe impl Sync for HeapSegment {}

    pub(super) fn refs(capacity: u64, max_record: u64) -> RingRefs {
        new_refs(capacity, max_record, false, None)
    }

    type Areas = Option<(Box<MpscArea>, Box<MpmcArea>)>;

    pub(super) fn counted_refs(capacity: u64, max_record: u64) -> RingRefs {
        new_refs(capacity, max_record, true, None)
    }

    pub(super) fn mpsc_refs(capacity: u64, max_record: u64) -> RingRefs {
        let z = || AtomicU64::new(0);
        let tally = || MpscTally { consumed: z(), unblocked: z() };
        let ledger = || MpscLedger { producers: std::array::from_fn(|_| tally()) };
        let producer = || {
            Line(MpscProducerSlot {
                intent_start: z(),
                intent_end: z(),
                orphan_start: z(),
                orphan_end: z(),
                records: z(),
                bytes: z(),
                blocks: z(),
                sleeps: z(),
                unblocked: z(),
                consumed: z(),
            })
        };
        let area = MpscArea { ledgers: [ledger(), ledger()], producers: std::array::from_fn(|_| producer()) };
        let worker = || {
            Line(MpmcWorkerSlot {
                holding: z(),
                orphan: z(),
                pid: z(),
                taken: z(),
                acknowledged: z(),
                redelivered: z(),
                detached: z(),
            })
        };
        let mpmc = MpmcArea {
            take: Line(MpmcTakeLine { take_cursor: z(), handoff: z() }),
            release: Line(MpmcReleaseLine { token: z(), handoffs: z() }),
            workers: std::array::from_fn(|_| worker()),
        };
        new_refs(capacity, max_record, false, Some((Box::new(area), Box::new(mpmc))))
    }

    pub(super) fn refs_of_heap(seg: &Arc<HeapSegment>) -> RingRefs {
        build(seg.clone())
    }

    fn stat_slot() -> Line<StatSlot> {
        let z = || AtomicU64::new(0);
        Line(StatSlot { value: z(), label: [z(), z(), z(), z()], in_use: AtomicU32::new(0) })
    }

    fn new_refs(capacity: u64, max_record: u64, counted: bool, areas: Areas) -> RingRefs {
        let (mpsc, mpmc) = areas.unzip();
        let seg = Arc::new(HeapSegment {
            producer: ProducerLine {
                write_cursor: AtomicU64::new(0),
                publishes: [publish_slot(), publish_slot()],
                horizon: AtomicU64::new(0),
                space_floor: AtomicU64::new(0),
                dead_passes: AtomicU64::new(0),
            },
            cursors: Box::new(std::array::from_fn(|_| {
                Line(CursorSlot {
                    read_cursor: AtomicU64::new(0),
                    releases: [release_slot(), release_slot()],
                    missed: [AtomicU64::new(0), AtomicU64::new(0)],
                    first_seq: AtomicU64::new(0),
                    name: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
                    pid: AtomicU32::new(0),
                    state: AtomicU32::new(0),
                })
            })),
            data_wake: WakeWord::new(),
            space_wake: WakeWord::new(),
            stats: counted.then(|| Box::new(std::array::from_fn(|_| stat_slot()))),
            data: (0..capacity / 8).map(|_| std::cell::UnsafeCell::new(0)).collect(),
            cells: crate::ring::loom_cells(capacity),
            mpsc,
            mpmc,
            capacity,
            max_record,
        });
        build(seg)
    }

    pub(super) fn refs_of(producer: &Producer) -> RingRefs {
        build(producer.heap_owner().expect("heap producers own a HeapSegment"))
    }

    fn publish_slot() -> PublishSlot {
        let z = || AtomicU64::new(0);
        PublishSlot { position: z(), records: z(), bytes: z(), last_frame: z() }
    }

    fn release_slot() -> ReleaseSlot {
        let z = || AtomicU64::new(0);
        ReleaseSlot { position: z(), records: z(), bytes: z() }
    }

    fn build(seg: Arc<HeapSegment>) -> RingRefs {
        let data = NonNull::new(seg.data.as_ptr().cast_mut().cast::<u8>()).expect("boxed slice is non-null");
        RingRefs {
            producer: NonNull::from(&seg.producer),
            cursor: NonNull::from(&seg.cursors[0].0),
            data_wake: NonNull::from(&seg.data_wake),
            space_wake: NonNull::from(&seg.space_wake),
            stats: seg.stats.as_deref().map(NonNull::from),
            mpsc: seg.mpsc.as_deref().map(NonNull::from),
            mpmc: seg.mpmc.as_deref().map(NonNull::from),
            // SAFETY: `capacity` bytes, 8-aligned, owned by `seg`, which the refs keep;
            // `seg.cells` has one cell per word.
            data: unsafe { Region::with_cells(data, seg.capacity, seg.cells.clone()) },
            capacity: seg.capacity,
            max_record: seg.max_record,
            heap: Some(seg.clone()),
            _keep: seg,
        }
    }
}

pub(crate) use memory::HeapSegment;

/// A broadcast ring on the heap, for threads of one process, tests and loom models.
/// Liveness is a flag per consumer slot that [`kill`](Self::kill) clears: the model of
/// a consumer whose kernel lock is gone.
pub struct BroadcastHeapRing {
    seg: Arc<HeapSegment>,
    alive: Arc<[std::sync::atomic::AtomicBool; super::broadcast::CONSUMER_SLOTS]>,
    lossy: bool,
    wait: WaitStrategy,
}

impl std::fmt::Debug for BroadcastHeapRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastHeapRing").field("lossy", &self.lossy).finish_non_exhaustive()
    }
}

impl BroadcastHeapRing {
    /// A zeroed ring. Capacity may be as small as 64 bytes here.
    pub fn new(capacity: u64, lossy: bool, wait: WaitStrategy) -> Result<Self, HeapRingError> {
        let max_record = max_payload_for(capacity);
        if !capacity.is_power_of_two() || capacity < 64 {
            return Err(HeapRingError { capacity, max_record });
        }
        let seg = memory::refs(capacity, max_record).heap.expect("heap refs own their memory");
        Ok(BroadcastHeapRing { seg, alive: Arc::new(std::array::from_fn(|_| false.into())), lossy, wait })
    }

    /// Attaches the producer.
    ///
    /// # Panics
    /// If the ring's cursors are inconsistent.
    pub fn producer(&self) -> super::broadcast::Producer {
        let alive = self.alive.clone();
        let probe = Box::new(move |k: usize| alive.get(k).is_some_and(|a| a.load(std::sync::atomic::Ordering::SeqCst)));
        super::broadcast::Producer::attach(memory::refs_of_heap(&self.seg), self.wait, self.lossy, probe, None)
            .expect("consistent ring")
    }

    /// Attaches the consumer called `name` (resuming it, or joining at the newest record)
    /// and marks it alive.
    ///
    /// # Panics
    /// If the name is invalid, no slot is free, or the ring is inconsistent.
    pub fn consumer(&self, name: &str) -> super::broadcast::Consumer {
        let name = super::broadcast::ConsumerName::new(name).expect("valid name");
        let refs = memory::refs_of_heap(&self.seg);
        let (k, entry) = super::broadcast::find_slot(&refs, &name).expect("a free slot");
        self.alive[k].store(true, std::sync::atomic::Ordering::SeqCst);
        super::broadcast::Consumer::attach(refs, k, name, entry, self.wait, self.lossy, None).expect("consistent ring")
    }

    /// The ring's references, for reads that need no handle (peek).
    #[cfg(test)]
    pub(crate) fn refs(&self) -> RingRefs {
        memory::refs_of_heap(&self.seg)
    }

    /// Kills `consumer` as `kill -9` would: its lock is gone, and nothing it would have
    /// done on the way out (release, detach) happens.
    pub fn kill(&self, consumer: super::broadcast::Consumer) {
        self.alive[consumer.slot()].store(false, std::sync::atomic::Ordering::SeqCst);
        std::mem::forget(consumer);
    }
}

/// An mpsc (or mpmc) ring on the heap, for threads of one process, tests and loom
/// models. Liveness is a flag per producer id that [`kill`](Self::kill) clears (and per
/// worker id, [`kill_worker`](Self::kill_worker)): the model of a kernel lock gone.
pub struct MpscHeapRing {
    pub(crate) refs: RingRefs,
    seg: Arc<HeapSegment>,
    alive: Arc<[std::sync::atomic::AtomicBool; crate::layout::MPSC_PRODUCERS]>,
    workers_alive: Arc<[std::sync::atomic::AtomicBool; crate::layout::MPMC_WORKERS]>,
    wait: WaitStrategy,
}

impl std::fmt::Debug for MpscHeapRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpscHeapRing").field("capacity", &self.refs.capacity).finish_non_exhaustive()
    }
}

impl MpscHeapRing {
    /// A zeroed ring. Capacity may be as small as 16 bytes here.
    pub fn new(capacity: u64, max_record: u64, wait: WaitStrategy) -> Result<Self, HeapRingError> {
        if !capacity.is_power_of_two() || capacity < 16 || max_record == 0 || max_record > max_payload_for(capacity) {
            return Err(HeapRingError { capacity, max_record });
        }
        let refs = memory::mpsc_refs(capacity, max_record);
        let seg = refs.heap.clone().expect("heap refs own their memory");
        let (alive, workers_alive) =
            (Arc::new(std::array::from_fn(|_| false.into())), Arc::new(std::array::from_fn(|_| false.into())));
        Ok(MpscHeapRing { refs, seg, alive, workers_alive, wait })
    }

    /// Attaches producer `id` (`0..16`) and marks it alive.
    ///
    /// # Panics
    /// If `id` is out of range or the ring's cursors are inconsistent.
    pub fn producer(&self, id: usize) -> super::mpsc::Producer {
        self.alive[id].store(true, std::sync::atomic::Ordering::SeqCst);
        super::mpsc::Producer::attach(memory::refs_of_heap(&self.seg), id, self.wait, None).expect("consistent ring")
    }

    /// Attaches the consumer.
    ///
    /// # Panics
    /// If the ring's cursors are inconsistent.
    pub fn consumer(&self) -> super::mpsc::Consumer {
        let alive = self.alive.clone();
        let probe =
            Box::new(move |id: usize| alive.get(id).is_some_and(|a| a.load(std::sync::atomic::Ordering::SeqCst)));
        super::mpsc::Consumer::attach(memory::refs_of_heap(&self.seg), self.wait, probe, None).expect("consistent ring")
    }

    /// Attaches mpmc worker `id` (`0..6`) and marks it alive.
    ///
    /// # Panics
    /// If `id` is out of range or the ring's cursors are inconsistent.
    pub fn worker(&self, id: usize) -> super::mpmc::Worker {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        self.workers_alive[id].store(true, SeqCst);
        fn probe<const N: usize>(flags: Arc<[AtomicBool; N]>) -> super::mpsc::ProducerLiveness {
            Box::new(move |id: usize| flags.get(id).is_some_and(|a| a.load(SeqCst)))
        }
        let (producers, workers) = (probe(self.alive.clone()), probe(self.workers_alive.clone()));
        super::mpmc::Worker::attach(memory::refs_of_heap(&self.seg), id, self.wait, producers, workers, None)
            .expect("consistent ring")
    }

    /// The release cursor (cursor slot 0's read cursor) as the producers see it.
    pub fn release_cursor(&self) -> u64 {
        // SeqCst: a test's observation, ordered with everything else it checks.
        self.refs.cursor().read_cursor.load(crate::sync::Ordering::SeqCst)
    }

    /// Marks worker `id` dead, as the kernel does when its process dies.
    pub fn kill_worker(&self, id: usize) {
        self.workers_alive[id].store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Marks producer `id` dead, as the kernel does when its process dies.
    pub fn kill(&self, id: usize) {
        self.alive[id].store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether producer `id` is marked alive.
    pub fn is_alive(&self, id: usize) -> bool {
        self.alive[id].load(std::sync::atomic::Ordering::SeqCst)
    }
}

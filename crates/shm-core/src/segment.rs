//! [`Segment`]: one named piece of shared memory holding a ring, whatever its backend.
//!
//! # A co-tenant that changes the size
//! Everything inside a segment is validated before use, but its size is the kernel's.
//! A process allowed to write a posix or file segment can `ftruncate` it shorter, and
//! every process that then touches a page past the new end gets `SIGBUS`: only the
//! permissions (`0600` by default; world-writable segments are refused) keep such a
//! process out. A SysV segment's size is fixed by `shmget`; an anon segment's memfd is
//! sealed against shrinking and growing once sized. shmring itself never resizes a
//! segment after creating it: opening compares the size with the header and refuses a
//! mismatch.

use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{self, Backing, CreateSpec, OpenSpec};
use crate::error::{AttachError, CreateError, OpenError, OpenOrCreateError, PeekError, UnlinkError, io_err};
use crate::layout::{BROADCAST_CONSUMERS, BROADCAST_LOCK_BASE};
use crate::layout::{
    Geometry, HEADER_SIZE, Header, MAX_CAPACITY, MIN_CAPACITY, RawIdentity, RingKind, max_payload_for,
};
use crate::layout::{MPMC_LOCK_BASE, MPMC_WORKERS, MPSC_PARTICIPANT_BASE, MPSC_PRODUCERS};
use crate::name::Location;
use crate::participant::{self, Attachment, Liveness, Participant, Role};
use crate::placement::{self, HugePages};
use crate::ring::spsc::{Consumer, PowerLossRepair, Producer};
use crate::ring::{FlushError, PublishHook, PublishStep, RingRefs, WaitStrategy};
use crate::ring::{broadcast, mpmc, mpsc};
use crate::stats::StatsSnapshot;

pub use crate::backend::sysv::SysvStat;

/// Ring data bytes of a segment whose builder was not given a capacity: 16 MiB.
pub const DEFAULT_CAPACITY: u64 = 16 << 20;

/// When a file-backed segment's producer writes its pages back to disk.
///
/// Every policy survives a crash of any process: the file's pages live in the page
/// cache, which the kernel writes back eventually. What survives a crash of the machine
/// (power loss, kernel panic) is what had reached the disk, and the kernel writes dirty
/// pages back whenever it likes and in any order, so:
///
/// - [`FlushPolicy::Sync`]: every publish first `msync`s the pages of its frames, then
///   stores the write cursor, then `msync`s the header that holds it, before it returns;
///   and before the producer overwrites space the consumer freed, it `msync`s the
///   header holding the read cursor that freed it. So at every instant the file's
///   cursors cover only frames whose bytes are on disk, and its write cursor covers
///   every record whose publish returned. After a power loss the file holds every such
///   record that the consumer had not released (and possibly a few it had read but not
///   released, again), every frame under its cursors whole. One window needs repair,
///   which opening makes (see "Power loss" below). The test `file_durability_copies`
///   (a modelled disk copied at random instants) shows each of these, and how often the
///   window was seen.
/// - [`FlushPolicy::Interval`]: the same data-then-cursor order, but only at the first
///   publish after each interval. Between those, the kernel may write the header (with
///   a newer write cursor) back before the frames it covers: after a power loss the
///   file may hold a cursor over frames that are not on disk (stale or zero bytes).
///   Use it where losing the tail is acceptable and the reader checks records (as the
///   generator format's checksum does); it bounds the cost, not the consistency.
/// - [`FlushPolicy::None`]: no `msync`; after a power loss, anything, as for Interval.
///
/// An `msync` that fails is the publish's error ([`crate::FlushError`]): the cursor is
/// not stored over frames that were not synced, and the producer is poisoned (see
/// "Durability" in [`crate::ring::spsc`]). Only spsc rings take a flush policy: creating
/// another kind with one is refused, and so is attaching a producer of another kind
/// through a segment opened with one (an mpsc record is published by its own commit
/// word, not by a cursor the policy could order after its frames).
///
/// # Power loss
/// The consumer's read cursor is on another page than the write cursor, and the kernel
/// may write that page back on its own; if it does after the consumer read a publish
/// whose header `msync` had not finished yet, a power loss leaves the file with its read
/// cursor ahead of its write cursor, by at most that publish's frames, which are whole
/// on disk (they were synced before the cursor was stored) and were all consumed.
///
/// [`SegmentBuilder::open`] repairs such a spsc file segment when it opens it writable
/// and nobody is attached: it takes the write lock of every role byte without waiting
/// (after a reboot nobody holds one), walks the frames from the write cursor with the
/// consumer's frame checks, and only if they land exactly on the read cursor (at most a
/// ring away, through at least one record, from a publish slot that matches the write
/// cursor, and to the counts of the read cursor's release slot) does it write the
/// producer's next publish slot for the read cursor, store the write cursor there and
/// `msync` the header, before it lets the locks go. The ring then opens empty, with
/// exact counters, and the producer's `last_committed` finds the last record walked.
/// [`Segment::power_loss_repair`] says what was repaired, for the opener to report.
///
/// Otherwise the file is left as it is and refused as [`crate::Corruption`] (reader
/// ahead of writer) by the cursor check of `peek` and of every attach: while a process
/// is attached (a live producer never shows this state, so it is corruption), when the
/// frames do not prove the repair (a hostile or damaged file), and when it is opened
/// read-only (a read-only open never writes; open it writable once, as the daemons do).
/// An attach racing the repair itself finds its role taken, as during
/// [`Segment::unlink_unused`]'s fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlushPolicy {
    /// Leave it to the page cache (survives process crashes, not power loss).
    #[default]
    None,
    /// `msync(MS_SYNC)` of the new frames, then of the cursor, at a publish when this
    /// long has passed since the last one (not crash-consistent in between; see above).
    Interval(Duration),
    /// `msync(MS_SYNC)` of each publish's frames, then of the cursor, before the publish
    /// returns: after a power loss at any instant the file's cursors cover every record
    /// whose publish returned and only whole frames (see above for the one window in
    /// which the read cursor can be ahead, and its repair at open).
    Sync,
}

/// Told the byte range of the mapping (offsets from the segment's start) after each
/// `msync` a flush policy makes, in order: how tests check what reached the file when.
#[doc(hidden)]
pub type FlushObserver =
    Arc<dyn Fn(std::ops::Range<usize>) + Send + Sync + std::panic::RefUnwindSafe + std::panic::UnwindSafe>;

/// Creates or opens a [`Segment`].
///
/// ```
/// # use shm_core::{Location, Segment};
/// let name = format!("/shmring-doc-builder-{}", std::process::id());
/// let location = Location::posix(&name)?;
/// let segment = Segment::builder(location.clone()).capacity(64 * 1024).create()?;
/// assert_eq!(segment.geometry().capacity, 64 * 1024);
/// let again = Segment::builder(location.clone()).open()?; // never re-initialises
/// assert_eq!(again.geometry(), segment.geometry());
/// Segment::unlink(&location)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct SegmentBuilder {
    location: Location,
    capacity: u64,
    max_record: Option<u64>,
    mode: u32,
    group: Option<u32>,
    kind: RingKind,
    wait: WaitStrategy,
    flush: FlushPolicy,
    writable: bool,
    expected_owner: Option<u32>,
    init_timeout: Duration,
    numa_node: Option<u32>,
    hugepages: bool,
    prefault: bool,
    lossy: bool,
    flush_observer: Option<FlushObserver>,
}

impl SegmentBuilder {
    /// Ring data bytes: a power of two from 4 KiB to 1 TiB (default 16 MiB, larger than a
    /// core's L2 cache: a streaming producer then rarely writes lines the consumer still
    /// holds, which measured 2-3x the batched throughput of a 1 MiB ring; see
    /// docs/BENCHMARKS.md).
    pub fn capacity(mut self, bytes: u64) -> Self {
        self.capacity = bytes;
        self
    }

    /// Largest payload (default and maximum: `capacity / 2 - 8`).
    pub fn max_record(mut self, bytes: u64) -> Self {
        self.max_record = Some(bytes);
        self
    }

    /// Permission bits of a new segment (default `0o600`; never world-writable). The
    /// umask does not change them.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Group of a new segment (default: the creator's).
    pub fn group(mut self, gid: u32) -> Self {
        self.group = Some(gid);
        self
    }

    /// A lossy broadcast ring: slow consumers are lapped instead of holding the producer
    /// back, and every record a consumer misses is counted for it (broadcast only).
    pub fn lossy(mut self, on: bool) -> Self {
        self.lossy = on;
        self
    }

    /// Ring kind of a new segment (default spsc).
    pub fn kind(mut self, kind: RingKind) -> Self {
        self.kind = kind;
        self
    }

    /// Wait strategy stored as the segment's hint, and used by handles from it.
    pub fn wait_strategy(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }

    /// Flush policy of a file-backed segment's producer.
    pub fn flush(mut self, flush: FlushPolicy) -> Self {
        self.flush = flush;
        self
    }

    /// Calls `observer` after each `msync` the flush policy makes (tests only).
    #[doc(hidden)]
    pub fn flush_observer(mut self, observer: FlushObserver) -> Self {
        self.flush_observer = Some(observer);
        self
    }

    /// Open read-only: the kernel refuses any write, so inspecting never disturbs a ring.
    pub fn read_only(mut self) -> Self {
        self.writable = false;
        self
    }

    /// Which owner `open` accepts: a uid, or `None` for any (default: the caller's euid).
    pub fn expected_owner(mut self, uid: Option<u32>) -> Self {
        self.expected_owner = uid;
        self
    }

    /// How long `open` waits for a creator that is still initialising (default 2 s).
    pub fn init_timeout(mut self, timeout: Duration) -> Self {
        self.init_timeout = timeout;
        self
    }

    /// NUMA node a new segment's memory is bound to (`mbind` with `MPOL_BIND`, before any
    /// page is allocated); `None` (default) leaves placement to the kernel. The node must
    /// exist. The binding belongs to the segment, so every process that maps it gets
    /// memory from that node; an existing segment keeps its own. File segments need
    /// tmpfs or hugetlbfs. See [`crate::placement`].
    pub fn numa_node(mut self, node: Option<u32>) -> Self {
        self.numa_node = node;
        self
    }

    /// Back a new segment with huge pages of the default size (`Hugepagesize` in
    /// `/proc/meminfo`): fewer TLB misses on a large ring. SysV uses `SHM_HUGETLB`, anon a
    /// hugetlbfs memfd, a file segment must be on a hugetlbfs mount; POSIX objects cannot
    /// (`/dev/shm` is tmpfs). The segment is rounded up to whole huge pages, and the system
    /// must have that many free (`sysctl vm.nr_hugepages`), else
    /// [`CreateError::HugePages`] says how many are missing. Default off.
    pub fn hugepages(mut self, on: bool) -> Self {
        self.hugepages = on;
        self
    }

    /// Map every page into this process up front, so the first records pay no page faults:
    /// at create, after reserving them (`MADV_POPULATE_WRITE`); at open, without changing
    /// any contents (`MADV_POPULATE_WRITE`, or `_READ` when read-only). Default off
    /// (create still reserves every page, so a shortage is an error, never SIGBUS).
    pub fn prefault(mut self, on: bool) -> Self {
        self.prefault = on;
        self
    }

    /// Creates the segment exclusively: an existing name is an error, never reused.
    ///
    /// ```
    /// use shm_core::{CreateError, Location, RingKind, Segment};
    ///
    /// let location = Location::posix(&format!("/shmring-doc-create-{}", std::process::id()))?;
    /// let segment = Segment::builder(location.clone())
    ///     .capacity(1 << 20) // ring data bytes: a power of two
    ///     .max_record(4096)
    ///     .kind(RingKind::Spsc) // the default; also Mpsc, Broadcast, Mpmc
    ///     .mode(0o600)
    ///     .create()?;
    /// assert_eq!(segment.geometry().max_record, 4096);
    ///
    /// let again = Segment::builder(location.clone()).create();
    /// assert!(matches!(again, Err(CreateError::Exists { .. })));
    /// Segment::unlink(&location)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create(&self) -> Result<Segment, CreateError> {
        let location = &self.location;
        let invalid = |reason: String| CreateError::InvalidOptions { location: location.clone(), reason };
        let cap = self.capacity;
        if !cap.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&cap) {
            return Err(invalid(format!("capacity {cap} must be a power of two from 4 KiB to 1 TiB")));
        }
        let max_payload = max_payload_for(cap);
        let max_record = self.max_record.unwrap_or(max_payload);
        if max_record == 0 || max_record > max_payload {
            return Err(invalid(format!(
                "max record {max_record} must be from 1 to {max_payload} bytes for a {cap}-byte ring (half the ring less 8)"
            )));
        }
        if self.mode & !0o777 != 0 || self.mode & 0o002 != 0 {
            return Err(invalid(format!(
                "mode {:04o} must be permission bits only, and not writable by others",
                self.mode
            )));
        }
        if self.lossy && self.kind != RingKind::Broadcast {
            return Err(invalid(format!("a {} ring cannot be lossy (only broadcast rings can)", self.kind.name())));
        }
        if self.flush != FlushPolicy::None && !matches!(location, Location::File(_)) {
            return Err(invalid("a flush policy applies to file segments only".into()));
        }
        if self.flush != FlushPolicy::None && self.kind != RingKind::Spsc {
            return Err(invalid(format!("a flush policy applies to spsc rings only, not {}", self.kind.name())));
        }
        let spec = self.placement(HEADER_SIZE as u64 + cap)?;
        let backing = match location {
            Location::Posix(name) => backend::posix::create(name, location, spec)?,
            Location::Sysv(key) => backend::sysv::create(*key, location, spec)?,
            Location::File(path) => backend::file::create(path, location, spec)?,
            Location::Anon => backend::anon::create(location, spec)?,
        };
        // SAFETY: the mapping is `HEADER_SIZE + cap` bytes, page-aligned, and `Header`
        // is all atomics; the memory is freshly zeroed and nobody else has it initialised.
        let header = unsafe { backing.mapping.ptr().cast::<Header>().as_ref() };
        crate::stats::write_labels(header);
        let flags = if self.lossy { crate::layout::FLAG_LOSSY } else { 0 };
        header.identity.0.publish(&RawIdentity::new(self.kind, cap, max_record, self.wait.code(), flags));
        let geometry = Geometry {
            kind: self.kind,
            capacity: cap,
            max_record,
            minor: crate::layout::LAYOUT_MINOR,
            lossy: self.lossy,
        };
        Ok(self.segment(backing, geometry))
    }

    /// Checks the placement options and turns them into what the backends need: the
    /// segment rounded up to whole huge pages, which must be free now.
    fn placement(&self, size: u64) -> Result<CreateSpec, CreateError> {
        let location = &self.location;
        let invalid = |reason: String| CreateError::InvalidOptions { location: location.clone(), reason };
        if let Some(node) = self.numa_node
            && !placement::node_exists(node)
        {
            let online = placement::online_nodes()
                .map(|nodes| format!("node(s) {}", placement::format_list(&nodes)))
                .unwrap_or_else(|e| format!("nodes that could not be read ({e})"));
            return Err(invalid(format!(
                "NUMA node {node} does not exist; this machine has {online} (/sys/devices/system/node/online)"
            )));
        }
        match location {
            Location::Posix(_) if self.hugepages => {
                return Err(invalid(
                    "huge pages: a POSIX segment lives on /dev/shm (tmpfs), which cannot hold them; use a file segment on a hugetlbfs mount (for example /dev/hugepages/NAME) or the sysv backend".into(),
                ));
            }
            Location::File(path) => backend::file::check_placement(path, location, self.hugepages, self.numa_node)?,
            _ => {}
        }
        let mut spec = CreateSpec {
            size,
            mode: self.mode,
            group: self.group,
            numa_node: self.numa_node,
            huge: None,
            prefault: self.prefault,
        };
        if self.hugepages {
            let pool = HugePages::read().map_err(|e| invalid(format!("huge pages: {e}")))?;
            spec.size = pool.round_up(size).ok_or_else(|| invalid(format!("size {size} is too large")))?;
            if pool.available() < spec.size / pool.page_size {
                return Err(crate::backend::hugepages_shortage(location, &pool, spec.size, None));
            }
            spec.huge = Some(pool);
        }
        Ok(spec)
    }

    /// Opens an existing segment: checks the object (`fstat`/`IPC_STAT`), waits for its
    /// creator to finish, validates the header. Never creates, never re-initialises.
    ///
    /// The geometry and kind come from the segment's header, not from the builder.
    ///
    /// ```
    /// use shm_core::{Location, OpenError, RingKind, Segment};
    ///
    /// let location = Location::posix(&format!("/shmring-doc-open-{}", std::process::id()))?;
    /// let missing = Segment::builder(location.clone()).open();
    /// assert!(matches!(missing, Err(OpenError::NotFound { .. })));
    ///
    /// // Another process created it (here: this one, a moment ago).
    /// Segment::builder(location.clone()).capacity(8192).kind(RingKind::Mpsc).create()?;
    /// let segment = Segment::builder(location.clone()).open()?;
    /// assert_eq!((segment.geometry().capacity, segment.geometry().kind), (8192, RingKind::Mpsc));
    ///
    /// // An observer such as `shmctl stat`: read-only, never writes to the segment.
    /// let observer = Segment::builder(location.clone()).read_only().open()?;
    /// assert_eq!(observer.stats().total_produced, 0);
    /// Segment::unlink(&location)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(&self) -> Result<Segment, OpenError> {
        let location = &self.location;
        let spec =
            OpenSpec { writable: self.writable, expected_owner: self.expected_owner, init_timeout: self.init_timeout };
        let backing = match location {
            Location::Posix(name) => backend::posix::open(name, location, spec)?,
            Location::Sysv(key) => backend::sysv::open(*key, location, spec)?,
            Location::File(path) => backend::file::open(path, location, spec)?,
            Location::Anon => return Err(OpenError::NotFound { location: location.clone() }),
        };
        // SAFETY: `wait_initialised` returned a mapping of at least HEADER_SIZE bytes.
        let header = unsafe { backing.mapping.ptr().cast::<Header>().as_ref() };
        let geometry = RawIdentity::read(&header.identity.0)
            .validate(backing.mapping.len() as u64)
            .map_err(|source| OpenError::Header { location: location.clone(), source })?;
        if self.prefault {
            backing.mapping.prefault().map_err(|e| OpenError::Io {
                location: location.clone(),
                op: "madvise(MADV_POPULATE)",
                source: io_err(e),
            })?;
        }
        self.segment(backing, geometry).repair_power_loss()
    }

    /// Opens the segment if it exists, else creates it (and if another process creates
    /// it first, opens theirs).
    ///
    /// What two processes that may start in either order both call (see the
    /// `two_process` example); the builder's geometry applies only if this call creates.
    ///
    /// ```
    /// use shm_core::{Location, Segment};
    ///
    /// let location = Location::posix(&format!("/shmring-doc-open-or-create-{}", std::process::id()))?;
    /// let builder = Segment::builder(location.clone()).capacity(4096);
    /// let first = builder.open_or_create()?; // creates
    /// let second = builder.open_or_create()?; // opens the same segment
    /// first.producer()?.try_publish(b"shared")?;
    /// assert_eq!(&*second.consumer()?.try_read()?, b"shared");
    /// Segment::unlink(&location)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_or_create(&self) -> Result<Segment, OpenOrCreateError> {
        match self.open() {
            Err(OpenError::NotFound { .. }) => match self.create() {
                Err(CreateError::Exists { .. }) => Ok(self.open()?),
                other => Ok(other?),
            },
            other => Ok(other?),
        }
    }

    fn segment(&self, backing: Backing, geometry: Geometry) -> Segment {
        Segment {
            inner: Arc::new(Inner {
                location: self.location.clone(),
                backing,
                geometry,
                flush: self.flush,
                wait: self.wait,
                flush_observer: self.flush_observer.clone(),
                #[cfg(feature = "fault-injection")]
                msyncs_before_failure: Default::default(),
            }),
            repaired: None,
        }
    }
}

/// A mapped segment holding one ring. Cheap to clone; the memory stays mapped while
/// any clone, producer or consumer of it lives. Dropping it never removes it:
/// [`Segment::unlink`] does, explicitly.
///
/// ```
/// # use shm_core::{Location, Segment};
/// let location = Location::posix(&format!("/shmring-doc-segment-{}", std::process::id()))?;
/// let segment = Segment::builder(location.clone()).capacity(4096).create()?;
/// let mut producer = segment.producer()?;
/// let mut consumer = segment.consumer()?;
/// producer.try_publish(b"hello")?;
/// assert_eq!(&*consumer.try_read()?, b"hello");
/// assert_eq!(segment.stats().total_consumed, 1);
/// Segment::unlink(&location)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Segment {
    inner: Arc<Inner>,
    /// What opening repaired after a power loss (see [`Segment::power_loss_repair`]).
    repaired: Option<PowerLossRepair>,
}

struct Inner {
    location: Location,
    backing: Backing,
    geometry: Geometry,
    flush: FlushPolicy,
    wait: WaitStrategy,
    flush_observer: Option<FlushObserver>,
    /// Fault injection: the number of `msync`s still to succeed before one fails with
    /// `EIO` (0: none fails). See [`Segment::fail_msync_after`].
    #[cfg(feature = "fault-injection")]
    msyncs_before_failure: std::sync::atomic::AtomicU64,
}

impl Inner {
    /// `msync` of mapping bytes `range`, told to the observer once it succeeded. A
    /// failure is the publish's: what the range holds is not known to be on disk.
    fn sync_range(&self, range: std::ops::Range<usize>) -> Result<(), FlushError> {
        let failed = |errno| FlushError { start: range.start, end: range.end, errno };
        #[cfg(feature = "fault-injection")]
        {
            use std::sync::atomic::Ordering;
            // Relaxed: a test's countdown with no data behind it.
            let left =
                self.msyncs_before_failure.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            if left == Ok(1) {
                return Err(failed(nix::errno::Errno::EIO));
            }
        }
        self.backing.mapping.sync_range(range.clone()).map_err(failed)?;
        if let Some(observe) = &self.flush_observer {
            observe(range);
        }
        Ok(())
    }

    /// The header: the cursors and the publish slots.
    fn sync_header(&self) -> Result<(), FlushError> {
        self.sync_range(0..HEADER_SIZE)
    }

    /// The data bytes of ring positions `from..to` (one or two ranges, around the end).
    fn sync_frames(&self, from: u64, to: u64) -> Result<(), FlushError> {
        let capacity = self.geometry.capacity;
        let len = to.saturating_sub(from).min(capacity);
        let index = from & (capacity - 1);
        let first = len.min(capacity - index);
        // Fits: `index + first <= capacity`, and the mapping holds `capacity` data bytes.
        self.sync_range(HEADER_SIZE + index as usize..HEADER_SIZE + (index + first) as usize)?;
        if len > first {
            self.sync_range(HEADER_SIZE..HEADER_SIZE + (len - first) as usize)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for SegmentBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentBuilder")
            .field("location", &self.location)
            .field("capacity", &self.capacity)
            .field("kind", &self.kind)
            .field("flush", &self.flush)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment").field("location", &self.location).field("geometry", &self.geometry).finish()
    }
}

/// One broadcast consumer as `shmctl stat` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BroadcastConsumerStatus {
    /// Alive, dead or detached, by its kernel lock.
    pub liveness: participant::Liveness,
    /// Its name, tallies, cursor and lag.
    #[serde(flatten)]
    pub row: broadcast::ConsumerRow,
}

/// An mpsc ring's producers and whom its consumer waits for ([`Segment::mpsc_status`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MpscStatus {
    /// One row per producer id ever used.
    pub producers: Vec<MpscProducerStatus>,
    /// What the consumer finds at the first frame not committed.
    pub head: mpsc::HeadClaim,
    /// The pid recorded for the producer the consumer waits for (display only).
    pub waiting_for_pid: Option<u32>,
}

/// An mpmc ring's workers and producers ([`Segment::mpmc_status`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MpmcStatus {
    /// One row per worker id ever used.
    pub workers: Vec<MpmcWorkerStatus>,
    /// One row per producer id ever used (mpsc's rows).
    pub producers: Vec<MpscProducerStatus>,
    /// The take cursor (next frame no worker has taken).
    pub take_cursor: u64,
    /// Records handed over from dead workers so far.
    pub handoffs: u64,
}

/// One mpmc worker id: its counters and its lock's liveness.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MpmcWorkerStatus {
    /// Alive or dead, by its role-lock byte.
    pub liveness: Liveness,
    /// Its counters.
    #[serde(flatten)]
    pub row: mpmc::WorkerRow,
}

/// One mpsc producer id: its counters, and its participant slot's pid and liveness.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MpscProducerStatus {
    /// Pid recorded by its last holder (display only).
    pub pid: Option<u32>,
    /// Alive, dead or detached, by its kernel lock.
    pub liveness: Option<participant::Liveness>,
    /// Its counters.
    #[serde(flatten)]
    pub row: mpsc::ProducerRow,
}

/// Identity and ownership of a segment, as `shmctl stat` shows them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SegmentInfo {
    /// `posix`, `sysv`, `file` or `anon`.
    pub backend: &'static str,
    /// A lossy broadcast ring.
    pub lossy: bool,
    /// The name, key or path.
    pub name: String,
    /// The file behind it, where there is one.
    pub path: Option<String>,
    /// Bytes in the segment.
    pub size: u64,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Permission bits (JSON: `"0600"`).
    #[serde(serialize_with = "crate::owner::serialize_mode")]
    pub mode: u32,
    /// `major.minor`.
    pub layout_version: String,
    /// Ring kind.
    pub kind: RingKind,
    /// Ring data bytes.
    pub capacity: u64,
    /// Largest payload.
    pub max_record: u64,
    /// The creator's suggested wait strategy.
    pub wait_hint: WaitStrategy,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_unix_ns: u64,
    /// Creator's pid (display only).
    pub creator_pid: u32,
    /// Creator's uid.
    pub creator_uid: u32,
    /// The name no longer leads to this segment (unlinked while mapped).
    pub unlinked: bool,
    /// SysV details (`nattch`, `cpid`, `lpid`, times).
    pub sysv: Option<SysvStat>,
    /// The NUMA node its memory is bound to (`get_mempolicy`), if bound to one.
    pub numa_node: Option<u32>,
}

impl Segment {
    /// Starts building a segment at `location`: a spsc ring of 16 MiB, mode `0600`, that
    /// must be owned by this user when opened. Finish with [`SegmentBuilder::create`],
    /// [`open`](SegmentBuilder::open) or [`open_or_create`](SegmentBuilder::open_or_create).
    ///
    /// ```
    /// use shm_core::{Location, Segment, SysvKey};
    ///
    /// // Where a segment lives: a POSIX name, a SysV key, a file, or anonymous memory.
    /// let posix = Location::posix("/high_perf_ring")?;
    /// let sysv = Location::Sysv(SysvKey::new(0x5348_0001)?);
    /// let file = Location::File("/var/lib/app/ring".into());
    /// let anon = Location::Anon; // shared with children forked after create
    ///
    /// let segment = Segment::builder(anon).capacity(4096).create()?;
    /// assert_eq!(segment.geometry().capacity, 4096);
    /// # let _ = (posix, sysv, file);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder(location: Location) -> SegmentBuilder {
        SegmentBuilder {
            location,
            capacity: DEFAULT_CAPACITY,
            max_record: None,
            mode: 0o600,
            group: None,
            kind: RingKind::Spsc,
            lossy: false,
            wait: WaitStrategy::default(),
            flush: FlushPolicy::None,
            writable: true,
            expected_owner: Some(nix::unistd::geteuid().as_raw()),
            init_timeout: Duration::from_secs(2),
            numa_node: None,
            hugepages: false,
            prefault: false,
            flush_observer: None,
        }
    }

    /// Removes the segment's name (its memory lives on until the last process unmaps it).
    pub fn unlink(location: &Location) -> Result<(), UnlinkError> {
        match location {
            Location::Posix(name) => backend::posix::unlink(name, location),
            Location::Sysv(key) => backend::sysv::unlink(*key, location),
            Location::File(path) => backend::file::unlink(path, location),
            Location::Anon => Ok(()),
        }
    }

    /// Removes the segment's name unless a live process is attached, deciding and
    /// acting on this very object:
    ///
    /// 1. read-locks every participant slot's lock byte through a new open file
    ///    description, without waiting: that succeeds only if no live participant holds
    ///    a role (their write locks conflict), and while held, nobody can take a role
    ///    (an attach in between is refused with [`AttachError::RoleTaken`]);
    /// 2. checks that the name still leads to this object (device and inode, or the
    ///    SysV id behind the key), so a segment someone re-created at the name is never
    ///    removed ([`UnlinkError::Replaced`]);
    /// 3. removes the name, still holding the locks, and then lets them go.
    ///
    /// A process that opened the segment before and attaches after keeps the memory
    /// it mapped (the name is gone; [`Segment::is_unlinked`] says so). A segment whose
    /// liveness cannot be checked (a SysV segment without a readable lock file) is kept:
    /// [`UnlinkError::LivenessUnknown`]. Works on a read-only segment. Anonymous
    /// segments have no name: nothing to do.
    pub fn unlink_unused(&self) -> Result<(), UnlinkError> {
        self.unlink_unused_with(unlink_gate)
    }

    /// [`Segment::unlink_unused`], calling `before_act` between the decision (locks
    /// held) and the name check and removal: tests race other processes there.
    pub fn unlink_unused_with(&self, before_act: impl FnOnce()) -> Result<(), UnlinkError> {
        let location = &self.inner.location;
        if let Location::Anon = location {
            return Ok(());
        }
        let Some(lock_fd) = self.inner.backing.lock_fd.as_ref() else {
            let reason = match location {
                Location::Sysv(key) => {
                    format!("its lock file {} is missing or unreadable", backend::sysv::lock_path(*key).display())
                }
                _ => "it has no lock file".to_owned(),
            };
            return Err(UnlinkError::LivenessUnknown { location: location.clone(), reason });
        };
        let io = |op| move |e| UnlinkError::Io { location: location.clone(), op, source: io_err(e) };
        // Its own open file description: OFD locks belong to it, and go when it drops.
        let fence = backend::reopen(lock_fd, false).map_err(io("re-open for locking"))?;
        let deadline = Instant::now() + participant::INHERITED_LOCK_PATIENCE;
        while !participant::try_fence_all(&fence, crate::layout::ROLE_LOCK_BYTES).map_err(io("fcntl(F_OFD_SETLK)"))? {
            // Only detached slots' locks held: a child being spawned still has a copy.
            if participant::any_attached_holder(self.header(), lock_fd) || Instant::now() >= deadline {
                let participants =
                    self.participants().into_iter().filter(|p| p.liveness == participant::Liveness::Alive).collect();
                return Err(UnlinkError::InUse { location: location.clone(), participants });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        before_act();
        let removed = backend::unlink_if_same(location, lock_fd, self.inner.backing.sysv_id);
        drop(fence);
        removed
    }

    /// The repair opening made of a file left by a power loss with its read cursor
    /// ahead of its write cursor (see "Power loss" in [`FlushPolicy`]); `None` when
    /// there was nothing to repair, or it could not be proven (then attaching reports
    /// the cursors as [`crate::Corruption`]). Only the process that opened the file
    /// when it was repaired sees it: tools and daemons report it from here.
    pub fn power_loss_repair(&self) -> Option<PowerLossRepair> {
        self.repaired
    }

    /// At open, repairs a spsc file segment whose read cursor a power loss left ahead
    /// of its write cursor, if nobody is attached (see "Power loss" in
    /// [`FlushPolicy`]). Holds the write lock of every role byte throughout: taken
    /// without waiting, it proves no live process holds a role (a live producer never
    /// shows this state, so with one attached it is corruption, left to the attach
    /// checks), and it keeps any from being taken or fenced until the repair is on disk.
    fn repair_power_loss(mut self) -> Result<Self, OpenError> {
        let inner = &self.inner;
        let location = &inner.location;
        let refs = self.ring_refs();
        if !matches!(location, Location::File(_))
            || inner.geometry.kind != RingKind::Spsc
            || !inner.backing.mapping.writable()
            || !crate::ring::spsc::reader_ahead(&refs)
        {
            return Ok(self);
        }
        let Some(lock_fd) = inner.backing.lock_fd.as_ref() else { return Ok(self) };
        let io = |op| move |e| OpenError::Io { location: location.clone(), op, source: io_err(e) };
        // Its own open file description: the locks go when it drops.
        let locks = backend::reopen(lock_fd, true).map_err(io("re-open for locking"))?;
        if !participant::try_lock_all(&locks, crate::layout::ROLE_LOCK_BYTES).map_err(io("fcntl(F_OFD_SETLK)"))? {
            return Ok(self);
        }
        let repaired = crate::ring::spsc::repair_reader_ahead(&refs);
        if repaired.is_some() {
            // Whatever the opener's flush policy: once per power loss, and the file
            // then needs no repair again.
            inner.backing.mapping.sync_range(0..HEADER_SIZE).map_err(io("msync"))?;
        }
        drop(locks);
        self.repaired = repaired;
        Ok(self)
    }

    /// Where the segment lives.
    pub fn location(&self) -> &Location {
        &self.inner.location
    }

    /// What the validated header says.
    pub fn geometry(&self) -> Geometry {
        self.inner.geometry
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping holds at least a validated header and lives as long as
        // `self.inner`; `Header` is all atomics.
        unsafe { self.inner.backing.mapping.ptr().cast::<Header>().as_ref() }
    }

    /// Reads the ring's statistics without writing to the segment. In an mpsc ring the
    /// producer-side figures are the sums of the producers' own.
    ///
    /// ```
    /// use shm_core::{Location, Segment};
    ///
    /// let location = Location::posix(&format!("/shmring-doc-stats-{}", std::process::id()))?;
    /// let segment = Segment::builder(location.clone()).capacity(4096).create()?;
    /// let mut producer = segment.producer()?;
    /// producer.try_publish(b"one")?;
    /// producer.try_publish(b"two")?;
    /// segment.consumer()?.try_read()?.release();
    ///
    /// // Any process that opens the segment sees the same figures.
    /// let stats = Segment::builder(location.clone()).read_only().open()?.stats();
    /// assert_eq!((stats.total_produced, stats.total_consumed, stats.records_in_flight), (2, 1, 1));
    /// assert_eq!((stats.bytes_produced, stats.capacity), (6, 4096));
    /// assert!(stats.used_bytes > 0 && stats.fill_percent() < 100.0);
    /// Segment::unlink(&location)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> StatsSnapshot {
        let mut stats = StatsSnapshot::read(self.header(), self.inner.geometry.capacity);
        let producers = match self.inner.geometry.kind {
            RingKind::Mpsc | RingKind::Mpmc => Some(self.mpsc_rows()),
            RingKind::Spsc | RingKind::Broadcast => None,
        };
        if let Some(producers) = producers {
            let sum = |f: fn(&mpsc::ProducerRow) -> u64| producers.iter().map(|p| f(&p.row)).sum::<u64>();
            stats.set_producer_side(sum(|r| r.records), sum(|r| r.bytes), sum(|r| r.blocks));
        }
        stats
    }

    /// For an mpsc ring: a row per producer id ever used, with its liveness and pid, and
    /// who (if anyone) holds the consumer up. `None` for other kinds. Reads only.
    pub fn mpsc_status(&self) -> Option<MpscStatus> {
        if self.inner.geometry.kind != crate::layout::RingKind::Mpsc {
            return None;
        }
        let (producers, head) = self.mpsc_rows_and_head();
        let waiting_for_pid = match head {
            mpsc::HeadClaim::WaitingFor { producer } => {
                producers.iter().find(|p| p.row.id == producer).and_then(|p| p.pid)
            }
            _ => None,
        };
        Some(MpscStatus { producers, head, waiting_for_pid })
    }

    /// The producer rows of an mpsc or mpmc ring.
    fn mpsc_rows(&self) -> Vec<MpscProducerStatus> {
        self.mpsc_rows_and_head().0
    }

    fn mpsc_rows_and_head(&self) -> (Vec<MpscProducerStatus>, mpsc::HeadClaim) {
        let participants = self.participants();
        let alive = self.producer_liveness();
        let (rows, head) = mpsc::status(&self.ring_refs(), &*alive);
        let pid_of =
            |id: usize| participants.iter().find(|p| p.slot == MPSC_PARTICIPANT_BASE + id).map(|p| (p.pid, p.liveness));
        let producers = rows
            .into_iter()
            .map(|row| {
                let (pid, liveness) = pid_of(row.id).map_or((None, None), |(pid, l)| (Some(pid), Some(l)));
                MpscProducerStatus { pid, liveness, row }
            })
            .collect();
        (producers, head)
    }

    /// For an mpsc ring: how many records of producer `id` the consumer has released, with
    /// the read cursor that figure is exact at (a racing release may make it newer; it only
    /// grows). Once the cursor has passed every claim producer `id` made, the figure is its
    /// exact number of delivered records: where a restarted generator resumes. `None` for
    /// other kinds, an id out of range, or a ledger that matches no release slot. An mpmc
    /// ring keeps the same ledger for its release cursor: the figures are its too.
    pub fn mpsc_released(&self, id: usize) -> Option<(u64, u64)> {
        if !matches!(self.inner.geometry.kind, RingKind::Mpsc | RingKind::Mpmc) {
            return None;
        }
        mpsc::released_records(&self.ring_refs(), id)
    }

    /// Whether mpsc producer `id` holds its kernel lock (`true` when that cannot be
    /// told, so a claim is never reclaimed without proof of death).
    fn producer_liveness(&self) -> mpsc::ProducerLiveness {
        self.lock_liveness(MPSC_PARTICIPANT_BASE)
    }

    /// Whether the holder of lock byte `base + id` is alive (`true` when that cannot be told).
    fn lock_liveness(&self, base: usize) -> mpsc::ProducerLiveness {
        let inner = self.inner.clone();
        Box::new(move |id: usize| match inner.backing.lock_fd.as_ref() {
            Some(fd) => participant::is_locked(fd, base + id).unwrap_or(true),
            None => true,
        })
    }

    /// Attaches as producer `id` (`0..16`) of an mpsc ring, with the segment's wait
    /// strategy. Fails if a live process holds that id; adopts the pending claim of a
    /// dead one (see [`crate::ring::mpsc`]).
    /// An mpmc ring's producers are mpsc's: this attaches them too.
    ///
    /// ```
    /// use std::time::Duration;
    /// use shm_core::{Location, RingKind, Segment};
    ///
    /// let location = Location::posix(&format!("/shmring-doc-mpsc-{}", std::process::id()))?;
    /// let segment = Segment::builder(location.clone()).capacity(4096).kind(RingKind::Mpsc).create()?;
    /// let mut first = segment.mpsc_producer(0)?; // each producer process takes its own id
    /// let mut second = segment.mpsc_producer(1)?;
    /// first.publish(b"from 0", Some(Duration::from_secs(1)))?;
    /// second.publish(b"from 1", Some(Duration::from_secs(1)))?;
    ///
    /// let mut consumer = segment.mpsc_consumer()?;
    /// let record = consumer.read(Some(Duration::from_secs(1)))?;
    /// assert_eq!((record.producer(), &*record), (0, &b"from 0"[..]));
    /// drop(record);
    /// assert_eq!(consumer.try_read()?.producer(), 1);
    /// Segment::unlink(&location)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn mpsc_producer(&self, id: usize) -> Result<mpsc::Producer, AttachError> {
        if self.inner.geometry.kind != crate::layout::RingKind::Mpmc {
            self.check_kind(crate::layout::RingKind::Mpsc)?;
        }
        if id >= MPSC_PRODUCERS {
            return Err(AttachError::ProducerId { location: self.inner.location.clone(), id, max: MPSC_PRODUCERS });
        }
        self.check_no_flush()?;
        let attachment = self.attach_slot(Role::Producer, MPSC_PARTICIPANT_BASE + id)?;
        mpsc::Producer::attach(self.ring_refs(), id, self.inner.wait, Some(attachment))
            .map_err(|source| AttachError::Corrupt { location: self.inner.location.clone(), source })
    }

    /// Attaches as the consumer of an mpsc ring, with the segment's wait strategy.
    pub fn mpsc_consumer(&self) -> Result<mpsc::Consumer, AttachError> {
        self.check_kind(crate::layout::RingKind::Mpsc)?;
        let attachment = self.attach(Role::Consumer)?;
        mpsc::Consumer::attach(self.ring_refs(), self.inner.wait, self.producer_liveness(), Some(attachment))
            .map_err(|source| AttachError::Corrupt { location: self.inner.location.clone(), source })
    }

    /// Attaches as the producer of a broadcast ring, with the segment's wait strategy.
    /// Fails if a live producer is attached; resumes after the last record if one died.
    ///
    /// ```
    /// use std::time::Duration;
    /// use shm_core::{Location, RingKind, Segment};
    ///
    /// let location = Location::posix(&format!("/shmring-doc-broadcast-{}", std::process::id()))?;
    /// let segment = Segment::builder(location.clone()).capacity(4096).kind(RingKind::Broadcast).create()?;
    /// // Consumers join at the newest record: attach them before the records they want.
    /// let mut audit = segment.broadcast_consumer("audit")?;
    /// let mut metrics = segment.broadcast_consumer("metrics")?;
    /// let mut producer = segment.broadcast_producer()?;
    /// producer.publish(b"to everyone", Some(Duration::from_secs(1)))?;
    ///
    /// for consumer in [&mut audit, &mut metrics] {
    ///     let record = consumer.read(Some(Duration::from_secs(1)))?;
    ///     assert_eq!((record.data, record.seq, record.missed), (&b"to everyone"[..], 0, 0));
    /// }
    /// audit.release();
    /// assert_eq!(audit.tallies().delivered, 1);
    /// Segment::unlink(&location)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn broadcast_producer(&self) -> Result<broadcast::Producer, AttachError> {
        self.check_kind(RingKind::Broadcast)?;
        self.check_no_flush()?;
        let attachment = self.attach(Role::Producer)?;
        let alive = self.lock_liveness(BROADCAST_LOCK_BASE);
        let lossy = self.inner.geometry.lossy;
        broadcast::Producer::attach(self.ring_refs(), self.inner.wait, lossy, alive, Some(attachment))
            .map_err(|source| AttachError::Corrupt { location: self.inner.location.clone(), source })
    }

    /// Attaches as the broadcast consumer called `name`: resumes that name's cursor, with
    /// its exact tallies, if the ring has it; else joins at the newest record in a new
    /// slot. Fails if a live process holds that name. See
    /// [`broadcast_producer`](Self::broadcast_producer) for an example.
    pub fn broadcast_consumer(&self, name: &str) -> Result<broadcast::Consumer, AttachError> {
        self.check_kind(RingKind::Broadcast)?;
        let location = &self.inner.location;
        let name = broadcast::ConsumerName::new(name)
            .map_err(|source| AttachError::ConsumerName { location: location.clone(), source })?;
        let refs = self.ring_refs();
        for _ in 0..BROADCAST_CONSUMERS {
            let (k, entry) = broadcast::find_slot(&refs, &name)
                .ok_or(AttachError::NoConsumerSlot { location: location.clone(), max: BROADCAST_CONSUMERS })?;
            let Some(lock) = self.try_lock_byte(BROADCAST_LOCK_BASE + k, || broadcast::slot_detached(&refs, k))? else {
                match entry {
                    broadcast::Entry::Resume => {
                        let pid = Some(broadcast::slot_pid(&refs, k));
                        return Err(AttachError::RoleTaken { location: location.clone(), role: Role::Consumer, pid });
                    }
                    // Another process is naming that slot: look again.
                    broadcast::Entry::Join => {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                }
            };
            if entry == broadcast::Entry::Join && !broadcast::slot_unused(&refs, k) {
                continue; // named by another process since we looked
            }
            let attachment =
                participant::Attachment::lock_only(lock, self.inner.clone()).ok_or_else(|| AttachError::Io {
                    location: location.clone(),
                    op: "hold another role in this process",
                    source: std::io::Error::other(format!(
                        "this process already holds {} roles",
                        participant::MAX_HELD
                    )),
                })?;
            let lossy = self.inner.geometry.lossy;
            return broadcast::Consumer::attach(refs, k, name, entry, self.inner.wait, lossy, Some(attachment))
                .map_err(|source| AttachError::Corrupt { location: location.clone(), source });
        }
        Err(AttachError::NoConsumerSlot { location: location.clone(), max: BROADCAST_CONSUMERS })
    }

    /// For a broadcast ring: a row per named consumer with its liveness by kernel lock.
    /// `None` for other kinds. Reads only.
    pub fn broadcast_status(&self) -> Option<Vec<BroadcastConsumerStatus>> {
        if self.inner.geometry.kind != RingKind::Broadcast {
            return None;
        }
        let fd = self.inner.backing.lock_fd.as_ref();
        let rows = broadcast::status(&self.ring_refs());
        Some(
            rows.into_iter()
                .map(|row| {
                    let locked = fd.map(|fd| participant::is_locked(fd, BROADCAST_LOCK_BASE + row.slot));
                    let liveness = match (row.state, locked) {
                        (_, Some(Ok(true))) => participant::Liveness::Alive,
                        (broadcast::SLOT_DETACHED, _) => participant::Liveness::Detached,
                        (_, Some(Ok(false))) => participant::Liveness::Dead,
                        _ => participant::Liveness::Unknown,
                    };
                    BroadcastConsumerStatus { liveness, row }
                })
                .collect(),
        )
    }

    /// Attaches as worker `id` (`0..6`) of an mpmc ring, with the segment's wait strategy.
    /// Fails if a live process holds that id; a dead predecessor's unacknowledged record
    /// is handed to a worker (see [`crate::ring::mpmc`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use shm_core::{Location, RingKind, Segment};
    ///
    /// let location = Location::posix(&format!("/shmring-doc-mpmc-{}", std::process::id()))?;
    /// let segment = Segment::builder(location.clone()).capacity(4096).kind(RingKind::Mpmc).create()?;
    /// let mut producer = segment.mpsc_producer(0)?; // mpmc's producers are mpsc's
    /// producer.publish(b"job 1", None)?;
    /// producer.publish(b"job 2", None)?;
    ///
    /// let mut worker = segment.mpmc_worker(0)?; // one id per worker process, 0..6
    /// let mut other = segment.mpmc_worker(1)?;
    /// let job = worker.take(Some(Duration::from_secs(1)))?;
    /// assert_eq!((&*job, job.redelivered()), (&b"job 1"[..], false));
    /// job.ack()?; // each job goes to one worker
    /// assert_eq!(&*other.take(Some(Duration::from_secs(1)))?, b"job 2");
    /// Segment::unlink(&location)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn mpmc_worker(&self, id: usize) -> Result<mpmc::Worker, AttachError> {
        self.check_kind(crate::layout::RingKind::Mpmc)?;
        let location = &self.inner.location;
        if id >= MPMC_WORKERS {
            return Err(AttachError::WorkerId { location: location.clone(), id, max: MPMC_WORKERS });
        }
        let refs = self.ring_refs();
        let Some(lock) = self.try_lock_byte(MPMC_LOCK_BASE + id, || mpmc::worker_detached(&refs, id))? else {
            return Err(AttachError::RoleTaken { location: location.clone(), role: Role::Consumer, pid: None });
        };
        let attachment = Attachment::lock_only(lock, self.inner.clone()).ok_or_else(|| AttachError::Io {
            location: location.clone(),
            op: "hold another role in this process",
            source: std::io::Error::other(format!("this process already holds {} roles", participant::MAX_HELD)),
        })?;
        mpmc::Worker::attach(
            refs,
            id,
            self.inner.wait,
            self.producer_liveness(),
            self.worker_liveness(),
            Some(attachment),
        )
        .map_err(|source| AttachError::Worker { location: location.clone(), source })
    }

    /// Takes role-lock byte `byte` on a fresh open file description: `None` when a live
    /// process holds it. Held while `detached` says its last holder let it go, it waits
    /// out a spawning child's copy (`participant::take_role_lock`).
    fn try_lock_byte(
        &self,
        byte: usize,
        detached: impl Fn() -> bool,
    ) -> Result<Option<std::os::fd::OwnedFd>, AttachError> {
        let lock = self.lock_description(Role::Consumer)?;
        let held = participant::take_role_lock(&lock, byte, detached).map_err(|e| AttachError::Io {
            location: self.inner.location.clone(),
            op: "fcntl(F_OFD_SETLK)",
            source: io_err(e),
        })?;
        Ok(held.then_some(lock))
    }

    /// Whether mpmc worker `id` holds its kernel lock (`true` when that cannot be told).
    fn worker_liveness(&self) -> mpsc::ProducerLiveness {
        self.lock_liveness(MPMC_LOCK_BASE)
    }

    /// For an mpmc ring: a row per worker id ever used, with its liveness, and the shared
    /// figures. `None` for other kinds. Reads only.
    pub fn mpmc_status(&self) -> Option<MpmcStatus> {
        if self.inner.geometry.kind != crate::layout::RingKind::Mpmc {
            return None;
        }
        let alive = self.worker_liveness();
        let has_lock = self.inner.backing.lock_fd.is_some();
        let (rows, take_cursor, handoffs) = mpmc::status(&self.ring_refs());
        let workers = rows
            .into_iter()
            .map(|row| {
                let liveness = match (has_lock, alive(row.id)) {
                    (false, _) => Liveness::Unknown,
                    (true, true) => Liveness::Alive,
                    (true, false) => Liveness::Dead,
                };
                MpmcWorkerStatus { liveness, row }
            })
            .collect();
        let producers = self.mpsc_rows();
        Some(MpmcStatus { workers, producers, take_cursor, handoffs })
    }

    fn check_kind(&self, wanted: crate::layout::RingKind) -> Result<(), AttachError> {
        let found = self.inner.geometry.kind;
        if found == wanted {
            return Ok(());
        }
        Err(AttachError::WrongKind {
            location: self.inner.location.clone(),
            found: found.name(),
            wanted: wanted.name(),
        })
    }

    /// Refuses a flush policy to a producer that would ignore it: only the spsc
    /// producer runs one (see [`FlushPolicy`]).
    fn check_no_flush(&self) -> Result<(), AttachError> {
        if self.inner.flush == FlushPolicy::None {
            return Ok(());
        }
        Err(AttachError::FlushUnsupported {
            location: self.inner.location.clone(),
            kind: self.inner.geometry.kind.name(),
        })
    }

    /// Copies up to `max` records that a consumer would read next, in the order it reads
    /// them, without consuming them or writing anything (works read-only): the records of
    /// [`peek_view`](Self::peek_view) without a consumer name.
    pub fn peek(&self, max: usize) -> Result<Vec<crate::ring::spsc::PeekedRecord>, PeekError> {
        self.peek_view(max, None).map(|view| view.records)
    }

    /// Copies up to `max` records that a consumer would read next, without consuming them
    /// or writing anything (works read-only), with what lies between and around them. Per
    /// kind (the "Peek" section of each ring module says how a racing writer is detected):
    /// - spsc: committed records from the read cursor.
    /// - mpsc: committed records from the read cursor in claim order (with their producer
    ///   ids), padding and holes as skipped frames, stopping at the first claim not yet
    ///   committed, with whom it waits for.
    /// - broadcast: from the cursor of the consumer named `consumer`, or without a name
    ///   (or when that consumer was lapped) from the oldest record still in the ring, with
    ///   sequence numbers.
    /// - mpmc: records not yet acknowledged from the release cursor, those a worker took
    ///   marked [`PeekedState::Taken`](crate::ring::spsc::PeekedState), stopping at a claim
    ///   as mpsc does.
    ///
    /// `consumer` is for broadcast rings only ([`PeekError::NamedConsumerUnsupported`]).
    pub fn peek_view(&self, max: usize, consumer: Option<&str>) -> Result<crate::ring::PeekView, PeekError> {
        let location = || self.inner.location.clone();
        let kind = self.inner.geometry.kind;
        let ring = self.ring_refs();
        let corrupt = |source| PeekError::Corrupt { location: location(), source };
        if consumer.is_some() && kind != RingKind::Broadcast {
            return Err(PeekError::NamedConsumerUnsupported { location: location(), kind: kind.name() });
        }
        match kind {
            RingKind::Spsc => crate::ring::spsc::peek(&ring, max)
                .map(|records| crate::ring::PeekView { records, ..Default::default() })
                .map_err(corrupt),
            RingKind::Mpsc => mpsc::peek(&ring, max, &*self.producer_liveness()).map_err(corrupt),
            RingKind::Mpmc => mpmc::peek(&ring, max, &*self.producer_liveness()).map_err(corrupt),
            RingKind::Broadcast => {
                let slot = match consumer {
                    None => None,
                    Some(name) => {
                        let missing = || PeekError::NoSuchConsumer { location: location(), name: name.into() };
                        let name = broadcast::ConsumerName::new(name).map_err(|_| missing())?;
                        match broadcast::find_slot(&ring, &name) {
                            Some((k, broadcast::Entry::Resume)) => Some(k),
                            _ => return Err(missing()),
                        }
                    }
                };
                broadcast::peek(&ring, max, slot).map_err(corrupt)
            }
        }
    }

    /// Everyone who attached, with their liveness by kernel lock.
    pub fn participants(&self) -> Vec<Participant> {
        participant::read_table(self.header(), self.inner.backing.lock_fd.as_ref())
    }

    /// Whether the name no longer leads to this segment (it was unlinked or replaced).
    pub fn is_unlinked(&self) -> bool {
        match (&self.inner.location, &self.inner.backing.lock_fd) {
            (Location::Anon, _) => false,
            (Location::Sysv(key), _) => {
                let id = self.inner.backing.sysv_id;
                backend::sysv::id_of(*key).ok() != id
                    || id.and_then(|id| backend::sysv::stat(id).ok()).is_none_or(|s| s.destroyed)
            }
            (_, Some(fd)) => nix::sys::stat::fstat(fd).map(|st| st.st_nlink == 0).unwrap_or(true),
            (_, None) => false,
        }
    }

    /// Identity, ownership and, for SysV, attach information.
    pub fn info(&self) -> Result<SegmentInfo, OpenError> {
        let inner = &self.inner;
        let location = &inner.location;
        let raw = RawIdentity::read(&self.header().identity.0);
        let (uid, gid, mode, size, sysv) = if let Some(id) = inner.backing.sysv_id {
            let st = backend::sysv::stat(id).map_err(|source| OpenError::Io {
                location: location.clone(),
                op: "IPC_STAT",
                source,
            })?;
            (st.uid, st.gid, st.mode, st.size, Some(st))
        } else if let Some(fd) = &inner.backing.lock_fd {
            let st = nix::sys::stat::fstat(fd).map_err(|e| OpenError::Io {
                location: location.clone(),
                op: "fstat",
                source: io_err(e),
            })?;
            (st.st_uid, st.st_gid, st.st_mode & 0o7777, st.st_size as u64, None)
        } else {
            (raw.creator_uid, 0, 0, inner.backing.mapping.len() as u64, None)
        };
        let (name, path) = match location {
            Location::Posix(n) => (n.to_string(), Some(n.dev_shm_path().display().to_string())),
            Location::Sysv(k) => (k.to_string(), None),
            Location::File(p) => (p.display().to_string(), Some(p.display().to_string())),
            Location::Anon => ("(anonymous)".into(), None),
        };
        Ok(SegmentInfo {
            backend: location.backend(),
            lossy: inner.geometry.lossy,
            name,
            path,
            size,
            uid,
            gid,
            mode,
            layout_version: format!("{}.{}", raw.layout_version >> 16, raw.layout_version & 0xffff),
            kind: inner.geometry.kind,
            capacity: inner.geometry.capacity,
            max_record: inner.geometry.max_record,
            wait_hint: WaitStrategy::from_code(raw.wait_hint),
            created_unix_ns: raw.created_unix_ns,
            creator_pid: raw.creator_pid,
            creator_uid: raw.creator_uid,
            unlinked: self.is_unlinked(),
            sysv,
            numa_node: inner.backing.mapping.bound_node().ok().flatten(),
        })
    }

    /// Attaches as the ring's producer, with the segment's wait strategy.
    pub fn producer(&self) -> Result<Producer, AttachError> {
        self.producer_with(self.inner.wait)
    }

    /// Attaches as the ring's producer. Fails if a live producer is attached; resumes
    /// after the last committed record if a previous one died.
    pub fn producer_with(&self, wait: WaitStrategy) -> Result<Producer, AttachError> {
        self.check_kind(crate::layout::RingKind::Spsc)?;
        let attachment = self.attach(Role::Producer)?;
        Producer::attach(self.ring_refs(), wait, self.publish_hook(), Some(attachment))
            .map_err(|source| AttachError::Corrupt { location: self.inner.location.clone(), source })
    }

    /// Attaches as the ring's consumer, with the segment's wait strategy.
    pub fn consumer(&self) -> Result<Consumer, AttachError> {
        self.consumer_with(self.inner.wait)
    }

    /// Attaches as the ring's consumer. Fails if a live consumer is attached; resumes at
    /// the read cursor in the segment (the first record not yet released).
    pub fn consumer_with(&self, wait: WaitStrategy) -> Result<Consumer, AttachError> {
        self.check_kind(crate::layout::RingKind::Spsc)?;
        let attachment = self.attach(Role::Consumer)?;
        Consumer::attach(self.ring_refs(), wait, Some(attachment))
            .map_err(|source| AttachError::Corrupt { location: self.inner.location.clone(), source })
    }

    /// Maps every page of the segment into this process now, without changing any
    /// contents, so the records that follow pay no page faults: what
    /// [`SegmentBuilder::prefault`] does at create or open, for a segment already open.
    /// A process forked after the segment was mapped needs it: the kernel does not copy
    /// a shared mapping's page tables to the child, so the child would otherwise fault on
    /// the first touch of every page (a few microseconds each, in the tail of its first
    /// lap around the ring).
    pub fn prefault(&self) -> std::io::Result<()> {
        self.inner.backing.mapping.prefault().map_err(io_err)
    }

    /// Fault injection for tests (the `fault-injection` feature): the `n`th `msync` a
    /// flush policy makes from now (1: the next) fails with `EIO` without being made;
    /// 0 disarms it.
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn fail_msync_after(&self, n: u64) {
        // Relaxed: a test's countdown with no data behind it.
        self.inner.msyncs_before_failure.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Writes the whole segment back to its file (`msync(MS_SYNC)`); a no-op in effect
    /// for memory-only backends.
    pub fn flush(&self) -> std::io::Result<()> {
        self.inner.backing.mapping.sync().map_err(io_err)
    }

    fn attach(&self, role: Role) -> Result<Attachment, AttachError> {
        self.attach_slot(role, role.spsc_slot())
    }

    fn attach_slot(&self, role: Role, slot: usize) -> Result<Attachment, AttachError> {
        let location = &self.inner.location;
        let lock = self.lock_description(role)?;
        let io = |op| move |e| AttachError::Io { location: location.clone(), op, source: io_err(e) };
        let recorded = &self.header().participants[slot];
        let taken = participant::take_role_lock(&lock, slot, || participant::detached(recorded))
            .map_err(io("fcntl(F_OFD_SETLK)"))?;
        if !taken {
            let pid = participant::holder_pid(recorded);
            return Err(AttachError::RoleTaken { location: location.clone(), role, pid });
        }
        let slot_ptr = NonNull::from(&self.header().participants[slot]);
        // SAFETY: the slot lies in the header of the mapping that `inner` keeps alive.
        unsafe { Attachment::record(lock, slot_ptr, role, self.inner.clone()) }.ok_or_else(|| AttachError::Io {
            location: location.clone(),
            op: "hold another role in this process",
            source: std::io::Error::other(format!("this process already holds {} roles", participant::MAX_HELD)),
        })
    }

    /// A new open file description of the lock file, for one role's lock (writable
    /// segments only).
    fn lock_description(&self, role: Role) -> Result<std::os::fd::OwnedFd, AttachError> {
        let location = &self.inner.location;
        if !self.inner.backing.mapping.writable() {
            return Err(AttachError::ReadOnly { location: location.clone(), role });
        }
        let fd = self.inner.backing.lock_fd.as_ref().ok_or_else(|| AttachError::Io {
            location: location.clone(),
            op: "open the lock file",
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        })?;
        backend::reopen(fd, true).map_err(|e| AttachError::Io {
            location: location.clone(),
            op: "re-open for locking",
            source: io_err(e),
        })
    }

    fn ring_refs(&self) -> RingRefs {
        let g = self.inner.geometry;
        // SAFETY: the mapping holds a validated header followed by `capacity` bytes of
        // ring data, and `inner` keeps it mapped.
        unsafe {
            RingRefs::from_header(
                self.inner.backing.mapping.ptr().cast(),
                g.capacity,
                g.max_record,
                None,
                self.inner.clone(),
            )
        }
    }

    /// The producer's hook for the flush policy (see [`FlushPolicy`] for what each
    /// guarantees): frames, then the cursor; the freeing read cursor before reuse.
    fn publish_hook(&self) -> Option<PublishHook> {
        let every = match self.inner.flush {
            FlushPolicy::None => return None,
            FlushPolicy::Sync => None,
            FlushPolicy::Interval(every) => Some(every),
        };
        let inner = self.inner.clone();
        let mut last = Instant::now();
        // Whether this publish syncs (decided at `Written`, for its `Published`).
        let mut due = false;
        Some(Box::new(move |step| match step {
            PublishStep::Reclaimed { .. } if every.is_none() => inner.sync_header(),
            PublishStep::Reclaimed { .. } => Ok(()),
            PublishStep::Written { from, to } => {
                due = every.is_none_or(|every| last.elapsed() >= every);
                if due { inner.sync_frames(from, to) } else { Ok(()) }
            }
            PublishStep::Published => {
                if due {
                    inner.sync_header()?;
                    last = Instant::now();
                }
                Ok(())
            }
        }))
    }
}

/// The environment variable of the test hook in [`unlink_gate`].
#[cfg(feature = "fault-injection")]
const UNLINK_GATE: &str = "SHMRING_TEST_UNLINK_GATE";

/// Fault injection for tests (the `fault-injection` feature, which only the tests'
/// dev-dependency turns on; a shipped build has no such hook and ignores the variable):
/// between [`Segment::unlink_unused`]'s decision (its role locks held) and its name
/// check and removal, with `SHMRING_TEST_UNLINK_GATE=PATH` set, creates `PATH.waiting`
/// and waits until `PATH` exists (at most 30 s), so that a test can attach or
/// re-create the segment at exactly that point from another process.
#[cfg(feature = "fault-injection")]
fn unlink_gate() {
    let Some(gate) = std::env::var_os(UNLINK_GATE).map(std::path::PathBuf::from) else { return };
    let mut waiting = gate.clone().into_os_string();
    waiting.push(".waiting");
    let _ = std::fs::write(&waiting, b"");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gate.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Without the `fault-injection` feature the gate does nothing.
#[cfg(not(feature = "fault-injection"))]
fn unlink_gate() {}

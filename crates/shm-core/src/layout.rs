//! The segment layout: one `#[repr(C)]` header of atomics, then the ring's data.
//!
//! ```text
//! offset  size   what                                   written by
//! 0       128    Identity: magic, version, geometry     creator, once (version last)
//! 128     128    ProducerLine: write cursor, 2 publish slots producer
//! 256     128    data wake word (consumer sleeps on it) consumer announces, producer clears
//! 384     128    space wake word (producer sleeps)      producer announces, consumer clears
//! 512     2048   16 statistics slots, 128 bytes each    one writer per slot
//! 2560    2048   32 participant slots, 64 bytes each    each participant its own slot
//! 4608    512    mpsc: 2 consumer ledgers, per producer  the consumer (layout 1.1)
//! 5120    2048   mpsc: 16 producer slots, 128 bytes each each producer its own slot (1.1)
//! 7168    1024   mpmc: take line, release line, 6 workers each worker its own line (1.2)
//! 8192    8192   64 read-cursor slots, 128 bytes each   each consumer its own slot
//! 16384   cap    ring data (power of two, 4 KiB ..= 1 TiB)
//! ```
//!
//! Everything another process can write is an atomic integer: no pointers, no `bool`,
//! no enums. A zeroed page is a valid initial state for every field, so a fresh
//! mapping needs no constructor; the creator fills in the [`Identity`] and publishes
//! the segment by storing [`Identity::layout_version`] last, with `Release`.
//!
//! Hot fields each own a 128-byte line (two 64-byte lines, because the adjacent-line
//! prefetcher moves pairs), so the producer and the consumer never write the same line.
//!
//! The identity names the ring kind and where the cursor table is, so each kind is a new
//! file under `ring/`, not a new layout: it uses more cursor and participant slots, and
//! fields in what layout 1.0 reserved (a minor version step: a 1.0 reader refuses the
//! new kind by its code, and finds every spsc field where it was).
//!
//! # Kinds
//! - `spsc` ([`crate::ring::spsc`]): the producer line's `write_cursor` and publish
//!   slots, cursor slot 0, participant slots 0 (producer) and 1 (consumer).
//! - `mpsc` ([`crate::ring::mpsc`]): `write_cursor` is the *claim* cursor every producer
//!   advances by compare-and-swap (the publish slots are unused); cursor slot 0 and
//!   participant slot 1 are the consumer's, as in spsc; producer `k` (0..16) holds
//!   participant slot `2 + k` and [`MpscArea::producers`]`[k]`; the consumer's exact
//!   per-producer tallies alternate between [`MpscArea::ledgers`] with its release slots.
//! - `broadcast` ([`crate::ring::broadcast`], layout 1.2): one producer (participant slot
//!   0, as spsc) writes `write_cursor`, its publish slots and the producer line's
//!   `horizon`, `space_floor` and `dead_passes`; consumer `k` (0..[`BROADCAST_CONSUMERS`])
//!   owns cursor slot `k` (its name, pid, release slots and `missed` tallies) and the role
//!   lock byte `BROADCAST_LOCK_BASE + k` (no participant record). [`FLAG_LOSSY`] in
//!   `flags` lets the producer lap slow consumers instead of waiting for them.
//! - `mpmc` ([`crate::ring::mpmc`], layout 1.2): the producers are mpsc's (claim cursor,
//!   producer slots, participant slots `2 + k`); cursor slot 0 is the *release* cursor
//!   the producers see, with mpsc's ledgers; [`MpmcArea`] holds the shared take cursor,
//!   the hand-off word, the release token and one line per worker (its "holding" word).
//!   Worker `w` (0..6) holds role-lock byte `MPMC_LOCK_BASE + w` and no participant slot.

pub use crate::sync::WakeWord;
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// `b"SHMRING\0"` read as a little-endian `u64`: the first eight bytes of every segment.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHMRING\0");
/// Layout major version: a reader refuses any other.
pub const LAYOUT_MAJOR: u16 = 1;
/// Layout minor version: additions a version-1 reader may ignore.
pub const LAYOUT_MINOR: u16 = 2;
/// Bytes from the start of the segment to the ring data.
pub const HEADER_SIZE: usize = 16384;
/// The smallest ring capacity in bytes.
pub const MIN_CAPACITY: u64 = 4096;
/// The largest ring capacity in bytes (1 TiB).
pub const MAX_CAPACITY: u64 = 1 << 40;
/// Size of one hot line.
pub const LINE: usize = 128;
/// Number of statistics slots.
pub const STAT_SLOTS: usize = 16;
/// Number of participant slots.
pub const PARTICIPANT_SLOTS: usize = 32;
/// Number of read-cursor slots.
pub const CURSOR_SLOTS: usize = 64;
/// Offset of the statistics table.
pub const STATS_OFFSET: usize = 512;
/// Offset of the participant table.
pub const PARTICIPANTS_OFFSET: usize = 2560;
/// Offset of the read-cursor table.
pub const CURSORS_OFFSET: usize = 8192;
/// Offset of the mpsc area (layout 1.1).
pub const MPSC_OFFSET: usize = 4608;
/// End of the mpsc area; the rest up to the cursor table is reserved.
pub const MPSC_END: usize = 7168;
/// Producers an mpsc ring can have at once.
pub const MPSC_PRODUCERS: usize = 16;
/// Participant slot of mpsc producer 0; producer `k` holds `MPSC_PARTICIPANT_BASE + k`.
pub const MPSC_PARTICIPANT_BASE: usize = 2;
/// Offset of the mpmc area (layout 1.2).
pub const MPMC_OFFSET: usize = MPSC_END;
/// Workers an mpmc ring can have at once (the release token names its owner in 3 bits).
pub const MPMC_WORKERS: usize = 6;
/// Role-lock byte of mpmc worker 0; worker `w` locks `MPMC_LOCK_BASE + w` (no table slot).
pub const MPMC_LOCK_BASE: usize = 128;

/// Consumers a broadcast ring can have at once, each with its own named cursor slot.
pub const BROADCAST_CONSUMERS: usize = CURSOR_SLOTS;
/// Role-lock byte of broadcast consumer 0; consumer `k` locks `BROADCAST_LOCK_BASE + k`.
pub const BROADCAST_LOCK_BASE: usize = 64;
/// Bytes of a broadcast consumer's name (NUL-padded).
pub const CONSUMER_NAME_LEN: usize = 24;
/// `Identity::flags` bit: a lossy broadcast ring (slow consumers are lapped, and counted).
pub const FLAG_LOSSY: u32 = 1;

/// Role-lock bytes any kind uses: participant slots, broadcast consumers, mpmc workers.
/// `shmctl unlink` fences them all before it removes a name.
pub const ROLE_LOCK_BYTES: usize = MPMC_LOCK_BASE + MPMC_WORKERS;

/// Largest payload any ring accepts: a frame's length field is 32 bits.
pub const MAX_RECORD_LIMIT: u64 = u32::MAX as u64 - 15;

/// Largest payload a ring of `capacity` bytes accepts: half the ring less the 8-byte
/// frame header (so a record always fits in an empty ring even when it must wrap),
/// and at most [`MAX_RECORD_LIMIT`].
pub const fn max_payload_for(capacity: u64) -> u64 {
    let half = (capacity / 2).saturating_sub(8);
    if half < MAX_RECORD_LIMIT { half } else { MAX_RECORD_LIMIT }
}

/// Packs a major and minor version into the `layout_version` word.
pub const fn pack_version(major: u16, minor: u16) -> u32 {
    ((major as u32) << 16) | minor as u32
}

/// Pads `T` to its own 128-byte line.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct Line<T>(pub T);

/// Which ring algorithm a segment holds (`Identity::ring_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RingKind {
    /// One producer, one consumer.
    Spsc,
    /// Many producers, one consumer.
    Mpsc,
    /// One producer, many consumers that each see every record.
    Broadcast,
    /// Many producers, competing workers: each record goes to one of them.
    Mpmc,
}

impl RingKind {
    /// The value stored in the segment.
    pub const fn code(self) -> u32 {
        match self {
            RingKind::Spsc => 1,
            RingKind::Mpsc => 2,
            RingKind::Broadcast => 3,
            RingKind::Mpmc => 4,
        }
    }

    /// The kind for a stored value, if it is one this build knows.
    pub const fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(RingKind::Spsc),
            2 => Some(RingKind::Mpsc),
            3 => Some(RingKind::Broadcast),
            4 => Some(RingKind::Mpmc),
            _ => None,
        }
    }

    /// Its name as the CLI and config spell it.
    pub const fn name(self) -> &'static str {
        match self {
            RingKind::Spsc => "spsc",
            RingKind::Mpsc => "mpsc",
            RingKind::Broadcast => "broadcast",
            RingKind::Mpmc => "mpmc",
        }
    }

    /// Every kind this build knows.
    pub const ALL: [RingKind; 4] = [RingKind::Spsc, RingKind::Mpsc, RingKind::Broadcast, RingKind::Mpmc];

    /// Read-cursor slots the kind uses (`Identity::cursor_slots`).
    pub const fn cursor_slots(self) -> u32 {
        match self {
            RingKind::Broadcast => BROADCAST_CONSUMERS as u32,
            _ => 1,
        }
    }
}

impl std::str::FromStr for RingKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RingKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown ring kind {s:?}: this build knows spsc, mpsc, broadcast and mpmc"))
    }
}

/// The first line: what the segment is. Written once by the creator.
#[repr(C)]
#[derive(Debug)]
pub struct Identity {
    /// [`MAGIC`].
    pub magic: AtomicU64,
    /// `major << 16 | minor`; `0` until the creator has finished initialising.
    pub layout_version: AtomicU32,
    /// [`RingKind::code`].
    pub ring_kind: AtomicU32,
    /// [`HEADER_SIZE`] for layout 1.
    pub header_size: AtomicU32,
    /// The creator's suggested wait strategy ([`crate::WaitStrategy::code`]).
    pub wait_hint: AtomicU32,
    /// Ring data bytes, a power of two.
    pub capacity: AtomicU64,
    /// Largest payload a producer may publish.
    pub max_record: AtomicU64,
    /// Offset of the ring data from the start of the segment.
    pub data_offset: AtomicU64,
    /// `data_offset + capacity`.
    pub segment_size: AtomicU64,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_unix_ns: AtomicU64,
    /// Pid of the creator (for display only: pids are reused).
    pub creator_pid: AtomicU32,
    /// Uid of the creator.
    pub creator_uid: AtomicU32,
    /// Reserved flags (lossy rings, ...); `0` in layout 1.0.
    pub flags: AtomicU32,
    /// [`PARTICIPANT_SLOTS`].
    pub participant_slots: AtomicU32,
    /// [`PARTICIPANTS_OFFSET`].
    pub participants_offset: AtomicU64,
    /// Number of read-cursor slots in use by this ring kind (1 for spsc).
    pub cursor_slots: AtomicU32,
    /// [`STAT_SLOTS`].
    pub stat_slots: AtomicU32,
    /// [`CURSORS_OFFSET`].
    pub cursors_offset: AtomicU64,
    /// [`STATS_OFFSET`].
    pub stats_offset: AtomicU64,
}

/// What one publish recorded, written before the cursor store it belongs to. The
/// producer alternates between two of these, so the one whose `position` equals
/// `write_cursor` is always complete: a successor resumes its counts (and finds the last
/// record) from it, exactly, however its predecessor died.
#[repr(C)]
#[derive(Debug)]
pub struct PublishSlot {
    /// `write_cursor` after this publish.
    pub position: AtomicU64,
    /// Records committed up to `position`.
    pub records: AtomicU64,
    /// Payload bytes committed up to `position`.
    pub bytes: AtomicU64,
    /// Start of the last frame below `position`.
    pub last_frame: AtomicU64,
}

/// The producer's line. Only the producer writes it.
#[repr(C)]
#[derive(Debug)]
pub struct ProducerLine {
    /// Byte position one past the last committed frame; only grows. Stored with
    /// `Release` after the frames and the publish slot it covers.
    pub write_cursor: AtomicU64,
    /// The two most recent publishes, written alternately.
    pub publishes: [PublishSlot; 2],
    /// Broadcast (1.2): one past the last byte the producer may be writing; stored before
    /// it writes there, so a consumer can tell that the bytes it copied were overwritten.
    pub horizon: AtomicU64,
    /// Broadcast (1.2): the slowest live consumer's cursor as the producer last computed it.
    pub space_floor: AtomicU64,
    /// Broadcast (1.2): times the producer found a dead consumer's cursor in its way and
    /// passed it.
    pub dead_passes: AtomicU64,
}

/// What one release recorded, written before the read-cursor store it belongs to
/// (alternating, as [`PublishSlot`]).
#[repr(C)]
#[derive(Debug)]
pub struct ReleaseSlot {
    /// `read_cursor` after this release.
    pub position: AtomicU64,
    /// Records released up to `position`.
    pub records: AtomicU64,
    /// Payload bytes released up to `position`.
    pub bytes: AtomicU64,
}

/// One statistics slot: a labelled counter with a single writer.
#[repr(C)]
#[derive(Debug)]
pub struct StatSlot {
    /// The counter.
    pub value: AtomicU64,
    /// The label, NUL-padded ASCII, 32 bytes read as four little-endian words.
    pub label: [AtomicU64; 4],
    /// `1` when the slot holds a counter, `0` when unused.
    pub in_use: AtomicU32,
}

/// One participant slot: who holds the lock of the same index (see [`crate::Participant`]).
#[repr(C)]
#[derive(Debug)]
pub struct ParticipantSlot {
    /// `0` never used, `1` attached, `2` detached cleanly.
    pub state: AtomicU32,
    /// [`crate::Role::code`].
    pub role: AtomicU32,
    /// Pid of the holder (display only).
    pub pid: AtomicU32,
    /// Uid of the holder.
    pub uid: AtomicU32,
    /// When it attached, nanoseconds since the Unix epoch.
    pub attached_unix_ns: AtomicU64,
    /// Reserved.
    pub reserved: [AtomicU64; 5],
}

/// One read cursor. Only its consumer writes it.
#[repr(C)]
#[derive(Debug)]
pub struct CursorSlot {
    /// Byte position one past the last released frame; only grows. Stored with `Release`
    /// after the consumer is done with the bytes it covers.
    pub read_cursor: AtomicU64,
    /// The two most recent releases, written alternately.
    pub releases: [ReleaseSlot; 2],
    /// Broadcast (1.2): records this consumer missed up to `releases[i].position`
    /// (written with release slot `i`).
    pub missed: [AtomicU64; 2],
    /// Broadcast (1.2): sequence number of the first record this consumer was entitled to
    /// (the records published before it joined).
    pub first_seq: AtomicU64,
    /// Broadcast (1.2): the consumer's name, NUL-padded ASCII read as little-endian
    /// words; all zero for a slot never named.
    pub name: [AtomicU64; 3],
    /// Broadcast (1.2): pid of the last holder (display only).
    pub pid: AtomicU32,
    /// Broadcast (1.2): `0` never used, `1` attached, `2` detached cleanly, `3` being named.
    pub state: AtomicU32,
}

/// One mpsc producer's line. Only that producer writes it (and its successor, which
/// holds the same participant lock); the consumer reads it to find whose claim a hole is.
#[repr(C)]
#[derive(Debug)]
pub struct MpscProducerSlot {
    /// Start of the range this producer is claiming or has claimed and not yet fully
    /// committed: stored before its compare-and-swap of the claim cursor.
    pub intent_start: AtomicU64,
    /// End of that range.
    pub intent_end: AtomicU64,
    /// A dead predecessor's intent that was still pending when this producer attached:
    /// a range whose owner is known dead, so the consumer may reclaim it.
    pub orphan_start: AtomicU64,
    /// End of the orphan range.
    pub orphan_end: AtomicU64,
    /// Records this producer id committed (display; the consumer's ledger is exact).
    pub records: AtomicU64,
    /// Payload bytes committed.
    pub bytes: AtomicU64,
    /// Times it found the ring full.
    pub blocks: AtomicU64,
    /// Times it slept waiting for space.
    pub sleeps: AtomicU64,
    /// Holes of this producer the consumer turned into padding (a copy of the ledger,
    /// stored by the consumer after its cursor).
    pub unblocked: AtomicU64,
    /// Records of this producer the consumer released (a copy of the ledger).
    pub consumed: AtomicU64,
}

/// What the consumer released of one producer, exact: written with the release slot of
/// the same index, before the read cursor.
#[repr(C)]
#[derive(Debug)]
pub struct MpscTally {
    /// Records released.
    pub consumed: AtomicU64,
    /// Holes passed (records whose producer died between claim and commit).
    pub unblocked: AtomicU64,
}

/// The consumer's per-producer tallies as of one release.
#[repr(C)]
#[derive(Debug)]
pub struct MpscLedger {
    /// One per producer id.
    pub producers: [MpscTally; MPSC_PRODUCERS],
}

/// The fields only mpsc rings use (zero in every other kind).
#[repr(C)]
#[derive(Debug)]
pub struct MpscArea {
    /// Ledger `i` belongs to the consumer's release slot `i`.
    pub ledgers: [MpscLedger; 2],
    /// One line per producer id.
    pub producers: [Line<MpscProducerSlot>; MPSC_PRODUCERS],
}

/// The shared take side of an mpmc ring ([`crate::ring::mpmc`], "Take").
#[repr(C)]
#[derive(Debug)]
pub struct MpmcTakeLine {
    /// Ring position of the next frame no worker has taken; only grows, by compare-and-swap.
    pub take_cursor: AtomicU64,
    /// A dead worker's record waiting for another worker: `position | 1`, or `0`.
    pub handoff: AtomicU64,
}

/// The release side of an mpmc ring: who may advance the release cursor now.
#[repr(C)]
#[derive(Debug)]
pub struct MpmcReleaseLine {
    /// `sequence << 8 | (owner + 1)`, or `sequence << 8` when free.
    pub token: AtomicU64,
    /// Records handed over from a dead worker (written by the token holder that posted them).
    pub handoffs: AtomicU64,
}

/// One mpmc worker's line. Only that worker (and its successor, which holds the same
/// lock) writes it, except that the release-token holder clears the holding words of a
/// dead worker with a compare-and-swap when it hands the record over.
#[repr(C)]
#[derive(Debug)]
pub struct MpmcWorkerSlot {
    /// `position | INTENT` before a take's compare-and-swap, `position | HELD` after it,
    /// `0` when holding nothing.
    pub holding: AtomicU64,
    /// A dead predecessor's holding word, adopted at attach: treated as dead.
    pub orphan: AtomicU64,
    /// Pid of the worker (display only).
    pub pid: AtomicU64,
    /// Records returned to the application (display).
    pub taken: AtomicU64,
    /// Records acknowledged (display; the release ledger is exact).
    pub acknowledged: AtomicU64,
    /// Records this worker received from a dead worker.
    pub redelivered: AtomicU64,
    /// `1` once this id's worker detached cleanly (dropped its handle), `0` while one is
    /// attached, and in a segment no worker of this id has left: an attach that finds the
    /// lock still held waits out a spawning child's copy of it only after a clean detach.
    pub detached: AtomicU64,
}

/// The fields only mpmc rings use (zero in every other kind).
#[repr(C)]
#[derive(Debug)]
pub struct MpmcArea {
    /// The take cursor and the hand-off word.
    pub take: Line<MpmcTakeLine>,
    /// The release token.
    pub release: Line<MpmcReleaseLine>,
    /// One line per worker id.
    pub workers: [Line<MpmcWorkerSlot>; MPMC_WORKERS],
}

/// The whole header, as it lies at offset 0 of a segment.
#[repr(C)]
#[derive(Debug)]
pub struct Header {
    /// What the segment is.
    pub identity: Line<Identity>,
    /// The producer's cursor.
    pub producer: Line<ProducerLine>,
    /// The consumer sleeps here waiting for data.
    pub data_wake: Line<WakeWord>,
    /// The producer sleeps here waiting for space.
    pub space_wake: Line<WakeWord>,
    /// Labelled counters.
    pub stats: [Line<StatSlot>; STAT_SLOTS],
    /// Who is attached.
    pub participants: [ParticipantSlot; PARTICIPANT_SLOTS],
    /// Fields of the mpsc kind.
    pub mpsc: MpscArea,
    /// Fields of the mpmc kind.
    pub mpmc: MpmcArea,
    /// Read cursors; spsc uses slot 0.
    pub cursors: [Line<CursorSlot>; CURSOR_SLOTS],
}

#[cfg(not(loom))]
const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<Header>() == HEADER_SIZE);
    assert!(align_of::<Header>() == LINE);
    assert!(size_of::<Identity>() <= LINE);
    assert!(size_of::<ProducerLine>() <= LINE);
    assert!(size_of::<CursorSlot>() <= LINE);
    assert!(size_of::<StatSlot>() <= LINE);
    assert!(size_of::<ParticipantSlot>() == 64);
    assert!(BROADCAST_LOCK_BASE >= PARTICIPANT_SLOTS && BROADCAST_LOCK_BASE + BROADCAST_CONSUMERS <= 128);
    assert!(CONSUMER_NAME_LEN == 3 * 8);
    assert!(offset_of!(Header, identity) == 0);
    assert!(offset_of!(Header, producer) == 128);
    assert!(offset_of!(Header, data_wake) == 256);
    assert!(offset_of!(Header, space_wake) == 384);
    assert!(offset_of!(Header, stats) == STATS_OFFSET);
    assert!(offset_of!(Header, participants) == PARTICIPANTS_OFFSET);
    assert!(offset_of!(Header, cursors) == CURSORS_OFFSET);
    assert!(offset_of!(Header, mpsc) == MPSC_OFFSET);
    assert!(size_of::<MpscLedger>() == 256);
    assert!(size_of::<MpscProducerSlot>() <= LINE);
    assert!(MPSC_OFFSET + size_of::<MpscArea>() == MPSC_END);
    assert!(MPSC_PARTICIPANT_BASE + MPSC_PRODUCERS <= PARTICIPANT_SLOTS);
    assert!(offset_of!(Header, mpmc) == MPMC_OFFSET);
    assert!(MPMC_OFFSET + size_of::<MpmcArea>() == CURSORS_OFFSET);
    assert!(size_of::<MpmcWorkerSlot>() <= LINE);
    assert!(MPMC_WORKERS < 8);
    assert!(HEADER_SIZE % 4096 == 0);
};

/// The identity fields, read once into locals (see [`RawIdentity::read`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawIdentity {
    /// As stored.
    pub magic: u64,
    /// As stored.
    pub layout_version: u32,
    /// As stored.
    pub ring_kind: u32,
    /// As stored.
    pub header_size: u32,
    /// As stored.
    pub wait_hint: u32,
    /// As stored.
    pub capacity: u64,
    /// As stored.
    pub max_record: u64,
    /// As stored.
    pub data_offset: u64,
    /// As stored.
    pub segment_size: u64,
    /// As stored.
    pub created_unix_ns: u64,
    /// As stored.
    pub creator_pid: u32,
    /// As stored.
    pub creator_uid: u32,
    /// As stored.
    pub flags: u32,
    /// As stored.
    pub participant_slots: u32,
    /// As stored.
    pub participants_offset: u64,
    /// As stored.
    pub cursor_slots: u32,
    /// As stored.
    pub stat_slots: u32,
    /// As stored.
    pub cursors_offset: u64,
    /// As stored.
    pub stats_offset: u64,
}

impl RawIdentity {
    /// Reads every identity field once. `layout_version` is read first with `Acquire`
    /// (pairs with the creator's `Release` store of it when it publishes the segment), so a
    /// non-zero version guarantees the other fields are the creator's.
    pub fn read(id: &Identity) -> Self {
        let layout_version = id.layout_version.load(Ordering::Acquire);
        // Relaxed: ordered after the Acquire load above.
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let r32 = |a: &AtomicU32| a.load(Ordering::Relaxed);
        RawIdentity {
            magic: r(&id.magic),
            layout_version,
            ring_kind: r32(&id.ring_kind),
            header_size: r32(&id.header_size),
            wait_hint: r32(&id.wait_hint),
            capacity: r(&id.capacity),
            max_record: r(&id.max_record),
            data_offset: r(&id.data_offset),
            segment_size: r(&id.segment_size),
            created_unix_ns: r(&id.created_unix_ns),
            creator_pid: r32(&id.creator_pid),
            creator_uid: r32(&id.creator_uid),
            flags: r32(&id.flags),
            participant_slots: r32(&id.participant_slots),
            participants_offset: r(&id.participants_offset),
            cursor_slots: r32(&id.cursor_slots),
            stat_slots: r32(&id.stat_slots),
            cursors_offset: r(&id.cursors_offset),
            stats_offset: r(&id.stats_offset),
        }
    }

    /// Checks every field against what this build can use, and against the size of
    /// the memory actually mapped. Never panics, whatever the bytes.
    pub fn validate(&self, mapped_len: u64) -> Result<Geometry, HeaderError> {
        if self.magic != MAGIC {
            return Err(HeaderError::BadMagic { found: self.magic });
        }
        if self.layout_version == 0 {
            return Err(HeaderError::NotInitialised);
        }
        let (major, minor) = ((self.layout_version >> 16) as u16, self.layout_version as u16);
        if major != LAYOUT_MAJOR {
            return Err(HeaderError::Version { major, minor });
        }
        let kind = RingKind::from_code(self.ring_kind).ok_or(HeaderError::Field {
            field: "ring_kind",
            value: u64::from(self.ring_kind),
            expected: "1 (spsc), 2 (mpsc), 3 (broadcast) or 4 (mpmc)",
        })?;
        let expect = |field: &'static str, value: u64, want: u64, expected: &'static str| {
            if value == want { Ok(()) } else { Err(HeaderError::Field { field, value, expected }) }
        };
        expect("header_size", self.header_size.into(), HEADER_SIZE as u64, "16384")?;
        expect("data_offset", self.data_offset, HEADER_SIZE as u64, "16384")?;
        expect("stats_offset", self.stats_offset, STATS_OFFSET as u64, "512")?;
        expect("stat_slots", self.stat_slots.into(), STAT_SLOTS as u64, "16")?;
        expect("participants_offset", self.participants_offset, PARTICIPANTS_OFFSET as u64, "2560")?;
        expect("participant_slots", self.participant_slots.into(), PARTICIPANT_SLOTS as u64, "32")?;
        expect("cursors_offset", self.cursors_offset, CURSORS_OFFSET as u64, "8192")?;
        expect("cursor_slots", self.cursor_slots.into(), kind.cursor_slots().into(), "1, or 64 for broadcast")?;
        let cap = self.capacity;
        if !cap.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&cap) {
            return Err(HeaderError::Field {
                field: "capacity",
                value: cap,
                expected: "a power of two from 4 KiB to 1 TiB",
            });
        }
        if self.max_record == 0 || self.max_record > max_payload_for(cap) {
            return Err(HeaderError::Field {
                field: "max_record",
                value: self.max_record,
                expected: "1 ..= min(capacity/2 - 8, 4 GiB - 16)",
            });
        }
        expect("segment_size", self.segment_size, HEADER_SIZE as u64 + cap, "header + capacity")?;
        if self.segment_size > mapped_len {
            return Err(HeaderError::Truncated { claimed: self.segment_size, actual: mapped_len });
        }
        Ok(Geometry {
            kind,
            capacity: cap,
            max_record: self.max_record,
            minor,
            lossy: kind == RingKind::Broadcast && self.flags & FLAG_LOSSY != 0,
        })
    }
}

/// What a validated header says about the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// The ring algorithm.
    pub kind: RingKind,
    /// Ring data bytes (a power of two).
    pub capacity: u64,
    /// Largest payload.
    pub max_record: u64,
    /// Layout minor version found.
    pub minor: u16,
    /// A lossy broadcast ring ([`FLAG_LOSSY`]).
    pub lossy: bool,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The first eight bytes are not [`MAGIC`]: not a shmring segment.
    #[error("not a shmring segment (magic {found:#018x}, expected {MAGIC:#018x})")]
    BadMagic {
        /// What was found.
        found: u64,
    },
    /// The creator has not finished initialising it.
    #[error("not initialised (layout version is 0)")]
    NotInitialised,
    /// Smaller than a header, yet not empty: no creator ever makes such an object.
    #[error("not a shmring segment ({size} bytes, smaller than the {HEADER_SIZE}-byte header)")]
    TooSmall {
        /// Its size.
        size: u64,
    },
    /// A layout this build cannot read.
    #[error("layout version {major}.{minor} is not supported (this build reads {LAYOUT_MAJOR}.x)")]
    Version {
        /// Found major.
        major: u16,
        /// Found minor.
        minor: u16,
    },
    /// A field holds a value this layout does not allow.
    #[error("corrupt header: {field} is {value}, expected {expected}")]
    Field {
        /// Which field.
        field: &'static str,
        /// What it holds.
        value: u64,
        /// What it may hold.
        expected: &'static str,
    },
    /// The header claims more bytes than the segment has.
    #[error("corrupt header: claims {claimed} bytes but the segment has {actual}")]
    Truncated {
        /// Bytes the header claims.
        claimed: u64,
        /// Bytes the segment has.
        actual: u64,
    },
}

impl Identity {
    /// Fills in every field, then publishes the segment by storing the version last.
    pub(crate) fn publish(&self, init: &RawIdentity) {
        // Relaxed: nobody may read these before the Release store of the version below.
        let w = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        let w32 = |a: &AtomicU32, v: u32| a.store(v, Ordering::Relaxed);
        w(&self.magic, init.magic);
        w32(&self.ring_kind, init.ring_kind);
        w32(&self.header_size, init.header_size);
        w32(&self.wait_hint, init.wait_hint);
        w(&self.capacity, init.capacity);
        w(&self.max_record, init.max_record);
        w(&self.data_offset, init.data_offset);
        w(&self.segment_size, init.segment_size);
        w(&self.created_unix_ns, init.created_unix_ns);
        w32(&self.creator_pid, init.creator_pid);
        w32(&self.creator_uid, init.creator_uid);
        w32(&self.flags, init.flags);
        w32(&self.participant_slots, init.participant_slots);
        w(&self.participants_offset, init.participants_offset);
        w32(&self.cursor_slots, init.cursor_slots);
        w32(&self.stat_slots, init.stat_slots);
        w(&self.cursors_offset, init.cursors_offset);
        w(&self.stats_offset, init.stats_offset);
        // Release: pairs with the Acquire load in `RawIdentity::read`; everything above
        // (and the statistics labels written before this call) is visible to a reader
        // that sees the version.
        self.layout_version.store(init.layout_version, Ordering::Release);
    }
}

impl RawIdentity {
    /// The identity a creator writes for a new ring.
    pub(crate) fn new(kind: RingKind, capacity: u64, max_record: u64, wait_hint: u32, flags: u32) -> Self {
        RawIdentity {
            magic: MAGIC,
            layout_version: pack_version(LAYOUT_MAJOR, LAYOUT_MINOR),
            ring_kind: kind.code(),
            header_size: HEADER_SIZE as u32,
            wait_hint,
            capacity,
            max_record,
            data_offset: HEADER_SIZE as u64,
            segment_size: HEADER_SIZE as u64 + capacity,
            created_unix_ns: crate::clock::unix_ns(),
            creator_pid: std::process::id(),
            creator_uid: nix::unistd::geteuid().as_raw(),
            flags,
            participant_slots: PARTICIPANT_SLOTS as u32,
            participants_offset: PARTICIPANTS_OFFSET as u64,
            cursor_slots: kind.cursor_slots(),
            stat_slots: STAT_SLOTS as u32,
            cursors_offset: CURSORS_OFFSET as u64,
            stats_offset: STATS_OFFSET as u64,
        }
    }
}

//! Bad input never panics: corrupt headers, hostile cursors, impossible frames and random
//! bytes in a live segment give a clear error (`OpenError::Header`, `AttachError::Corrupt`,
//! a `Corrupt` read or claim), never a panic, a crash or an out-of-bounds access.
//!
//! Each test creates its own POSIX segment (a unique name, unlinked on drop, so tests run
//! in parallel) and corrupts it through a second, raw mapping made here with `shm_open` +
//! `mmap`, as another process would. Field offsets come from `offset_of!` on the library's
//! `#[repr(C)]` layout types, and one test pins them to the documented map.
//!
//! Tests named `bug_*` fail on the current library: each shows a defect, described at the test.

use std::mem::{offset_of, size_of};
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags};
use nix::sys::stat::Mode;
use proptest::prelude::*;
use shm_core::layout::{
    CursorSlot, HEADER_SIZE, Header, Identity, Line, MAGIC, ProducerLine, RawIdentity, StatSlot, pack_version,
};
use shm_core::ring::frame::{PADDING, RESERVED_TYPES, decode, encode, framed_len, framed_len_u32};
use shm_core::{
    AttachError, BatchError, ClaimError, Consumer, Counter, HeaderError, Location, OpenError, Producer, ReadError,
    RingKind, Segment, TryClaimError, TryReadError,
};

// ---------------------------------------------------------------------------------------
// Layout: where the fields live, from the library's own types.
// ---------------------------------------------------------------------------------------

const MAGIC_AT: usize = offset_of!(Header, identity.0) + offset_of!(Identity, magic);
const VERSION_AT: usize = offset_of!(Header, identity.0) + offset_of!(Identity, layout_version);
const RING_KIND_AT: usize = offset_of!(Header, identity.0) + offset_of!(Identity, ring_kind);
const HEADER_SIZE_AT: usize = offset_of!(Header, identity.0) + offset_of!(Identity, header_size);
const WAIT_HINT_AT: usize = offset_of!(Header, identity.0) + offset_of!(Identity, wait_hint);
const CAPACITY_AT: usize = offset_of!(Header, identity.0) + offset_of!(Identity, capacity);
const MAX_RECORD_AT: usize = offset_of!(Header, identity.0) + offset_of!(Identity, max_record);
const DATA_OFFSET_AT: usize = offset_of!(Header, identity.0) + offset_of!(Identity, data_offset);
const SEGMENT_SIZE_AT: usize = offset_of!(Header, identity.0) + offset_of!(Identity, segment_size);
const WRITE_CURSOR_AT: usize = offset_of!(Header, producer.0) + offset_of!(ProducerLine, write_cursor);
/// Slot 0 of the cursor table (`offset_of!` cannot index arrays).
const READ_CURSOR_AT: usize = offset_of!(Header, cursors) + offset_of!(CursorSlot, read_cursor);
const DATA_WAKE_AT: usize = offset_of!(Header, data_wake);
const SPACE_WAKE_AT: usize = offset_of!(Header, space_wake);
const PARTICIPANTS_AT: usize = offset_of!(Header, participants);
/// The value word of `counter`'s statistics slot.
const fn counter_at(counter: Counter) -> usize {
    offset_of!(Header, stats) + counter.slot() * size_of::<Line<StatSlot>>() + offset_of!(StatSlot, value)
}
/// The ring data follows the header.
const DATA_AT: usize = size_of::<Header>();

/// Ring capacity of every test segment: the smallest allowed, so segments are cheap.
const CAP: u64 = 4096;
/// The default (and largest) max record for [`CAP`].
const MAX_RECORD: u64 = CAP / 2 - 8;
/// How long `open` waits for an uninitialised header: short, so those cases are fast.
const INIT_TIMEOUT: Duration = Duration::from_millis(50);

#[test]
fn layout_offsets_match_the_documented_map() {
    let offsets = [
        ("magic", MAGIC_AT, 0),
        ("layout_version", VERSION_AT, 8),
        ("ring_kind", RING_KIND_AT, 12),
        ("header_size", HEADER_SIZE_AT, 16),
        ("wait_hint", WAIT_HINT_AT, 20),
        ("capacity", CAPACITY_AT, 24),
        ("max_record", MAX_RECORD_AT, 32),
        ("data_offset", DATA_OFFSET_AT, 40),
        ("segment_size", SEGMENT_SIZE_AT, 48),
        ("write_cursor", WRITE_CURSOR_AT, 128),
        ("data_wake", DATA_WAKE_AT, 256),
        ("space_wake", SPACE_WAKE_AT, 384),
        ("participants", PARTICIPANTS_AT, 2560),
        ("stats[0].value", counter_at(Counter::TotalProduced), 512),
        ("stats[1].value", counter_at(Counter::TotalConsumed), 640),
        ("read_cursor[0]", READ_CURSOR_AT, 8192),
        ("data", DATA_AT, 16384),
    ];
    for (field, found, documented) in offsets {
        assert_eq!(found, documented, "offset of {field}");
    }
    assert_eq!(DATA_AT, HEADER_SIZE);
}

// ---------------------------------------------------------------------------------------
// Fixtures.
// ---------------------------------------------------------------------------------------

static NEXT_SEGMENT: AtomicUsize = AtomicUsize::new(0);

/// Held shared by every test while it has segment handles, and exclusively while a test
/// forks (see [`Scribbler::start`]).
static FORK_GATE: RwLock<()> = RwLock::new(());

/// A POSIX segment name unique to this process and test, unlinked on drop.
struct TestSegment {
    name: String,
    location: Location,
    _gate: Option<RwLockReadGuard<'static, ()>>,
}

impl TestSegment {
    fn new() -> Self {
        Self::with_gate(Some(FORK_GATE.read().unwrap_or_else(|poisoned| poisoned.into_inner())))
    }

    /// For the test that forks: it takes the gate itself.
    fn new_ungated() -> Self {
        Self::with_gate(None)
    }

    fn with_gate(gate: Option<RwLockReadGuard<'static, ()>>) -> Self {
        let n = NEXT_SEGMENT.fetch_add(1, Ordering::Relaxed);
        let name = format!("/shmring-test-corrupt-{}-{n}", std::process::id());
        let location = Location::posix(&name).expect("the test name is valid");
        TestSegment { name, location, _gate: gate }
    }

    /// A new segment of [`CAP`] bytes, created by the library.
    fn create(&self) -> Segment {
        Segment::builder(self.location.clone()).capacity(CAP).create().expect("create the test segment")
    }

    fn open(&self) -> Result<Segment, OpenError> {
        Segment::builder(self.location.clone()).init_timeout(INIT_TIMEOUT).open()
    }

    /// The object's file descriptor, read-write, as another process would open it.
    fn raw_fd(&self) -> OwnedFd {
        nix::sys::mman::shm_open(self.name.as_str(), OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
            .expect("shm_open the test segment")
    }

    /// A second, raw read-write mapping of the whole object.
    fn raw(&self) -> RawMapping {
        RawMapping::new(&self.raw_fd())
    }

    /// A library-created segment, its handle dropped, and a raw mapping of it.
    fn created_and_mapped(&self) -> RawMapping {
        drop(self.create());
        self.raw()
    }
}

impl Drop for TestSegment {
    fn drop(&mut self) {
        // Ignore errors: a test may have unlinked it already, or never created it.
        let _ = nix::sys::mman::shm_unlink(self.name.as_str());
    }
}

/// A raw shared mapping of a segment file, unmapped on drop. Every access goes through
/// atomics, like the library's, so the test never races the library's own accesses.
struct RawMapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl RawMapping {
    fn new(fd: &OwnedFd) -> Self {
        let size = nix::sys::stat::fstat(fd).expect("fstat").st_size;
        let len = usize::try_from(size).expect("a non-negative size");
        let len_nz = NonZeroUsize::new(len).expect("a non-empty segment");
        // SAFETY: a new shared mapping at an address the kernel picks; it aliases no Rust
        // object, and this test touches it only through atomics in `word` and `half`.
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                len_nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }
        .expect("mmap the test segment");
        RawMapping { ptr: ptr.cast(), len }
    }

    /// The 64-bit word at byte `offset` (8-aligned, in bounds).
    fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset % 8 == 0 && offset + 8 <= self.len, "word at {offset} outside {} bytes", self.len);
        // SAFETY: `offset + 8 <= len` keeps it in the mapping, which is page-aligned, so the
        // pointer is 8-aligned; the mapping lives as long as `&self`, and every access to
        // it (here and in the library) is atomic or volatile.
        unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(offset).cast()) }
    }

    /// The 32-bit word at byte `offset` (4-aligned, in bounds).
    fn half(&self, offset: usize) -> &AtomicU32 {
        assert!(offset % 4 == 0 && offset + 4 <= self.len, "u32 at {offset} outside {} bytes", self.len);
        // SAFETY: as in `word`, with 4-byte alignment and size.
        unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(offset).cast()) }
    }

    fn set(&self, offset: usize, value: u64) {
        // Relaxed: the library under test runs on this thread, after the store.
        self.word(offset).store(value, Ordering::Relaxed);
    }

    fn set32(&self, offset: usize, value: u32) {
        self.half(offset).store(value, Ordering::Relaxed);
    }

    /// Writes the frame header word at ring data index `index`.
    fn set_frame(&self, index: u64, len: u32, record_type: u32) {
        self.set(DATA_AT + index as usize, encode(len, record_type));
    }

    fn set_cursors(&self, read: u64, write: u64) {
        self.set(READ_CURSOR_AT, read);
        self.set(WRITE_CURSOR_AT, write);
    }

    /// The identity fields as stored (the library's own reader, over our mapping).
    fn identity(&self) -> RawIdentity {
        // SAFETY: the mapping holds at least a header (checked), is page-aligned, and
        // `Identity` is all atomics, valid for any bytes.
        let identity = unsafe {
            assert!(self.len >= HEADER_SIZE);
            self.ptr.cast::<Identity>().as_ref()
        };
        RawIdentity::read(identity)
    }
}

impl Drop for RawMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped; no reference from `word`/`half`
        // outlives `&self`.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.len) };
    }
}

/// A small deterministic RNG (SplitMix64), so every run scribbles the same bytes.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The header error of a failed open; panics with the outcome otherwise.
fn header_error(result: Result<Segment, OpenError>) -> HeaderError {
    match result {
        Err(OpenError::Header { source, .. }) => source,
        Err(other) => panic!("expected a header error, got {other:?}"),
        Ok(segment) => panic!("expected a header error, but it opened: {:?}", segment.geometry()),
    }
}

fn assert_field_error(error: HeaderError, want_field: &str, want_value: u64) {
    match error {
        HeaderError::Field { field, value, .. } => {
            assert_eq!((field, value), (want_field, want_value), "field error names the field and its value");
        }
        other => panic!("expected a field error for {want_field} = {want_value}, got {other:?}"),
    }
}

fn assert_read_corrupt(consumer: &mut Consumer, case: &str) {
    match consumer.try_read() {
        Err(TryReadError::Corrupt(_)) => {}
        Ok(record) => panic!("{case}: read a record of {} bytes at {}", record.len(), record.position()),
        Err(other) => panic!("{case}: expected Corrupt, got {other:?}"),
    }
}

/// The three read entry points all refuse the same corruption.
fn assert_every_read_corrupt(consumer: &mut Consumer, case: &str) {
    assert_read_corrupt(consumer, case);
    match consumer.read(Some(Duration::from_millis(10))) {
        Err(ReadError::Corrupt(_)) => {}
        Ok(record) => panic!("{case}: blocking read gave a record of {} bytes", record.len()),
        Err(other) => panic!("{case}: blocking read: expected Corrupt, got {other:?}"),
    }
    match consumer.read_batch(16, |_| Ok::<_, ()>(())) {
        Err(BatchError::Corrupt(_)) => {}
        other => panic!("{case}: read_batch: expected Corrupt, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Frames.
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn frame_header_round_trips(len: u32, record_type: u32) {
        prop_assert_eq!(decode(encode(len, record_type)), (len, record_type));
    }

    #[test]
    fn any_word_decodes_and_re_encodes_to_itself(word: u64) {
        let (len, record_type) = decode(word);
        prop_assert_eq!(encode(len, record_type), word);
    }

    #[test]
    fn framed_len_is_header_plus_payload_rounded_up_to_eight(len: u64) {
        match framed_len(len) {
            Some(framed) => {
                prop_assert!(len <= u64::MAX - 15, "len {} should overflow", len);
                prop_assert_eq!(framed % 8, 0);
                prop_assert!(framed >= len + 8 && framed < len + 16, "framed {} for len {}", framed, len);
            }
            None => prop_assert!(len > u64::MAX - 15, "len {} should fit", len),
        }
    }

    #[test]
    fn framed_len_u32_agrees_with_framed_len(len: u32) {
        prop_assert_eq!(Some(framed_len_u32(len)), framed_len(u64::from(len)));
    }
}

// ---------------------------------------------------------------------------------------
// Header validation, as a property over arbitrary identities.
// ---------------------------------------------------------------------------------------

/// What `validate` must say, worked out from the documented rules independently of it.
#[derive(Debug, PartialEq)]
enum Verdict {
    Valid {
        capacity: u64,
        max_record: u64,
        minor: u16,
    },
    BadMagic,
    NotInitialised,
    Version,
    /// Some field is wrong; `truncated_only` when the sole problem is the mapped length.
    Invalid {
        truncated_only: bool,
    },
}

fn verdict(id: &RawIdentity, mapped_len: u64) -> Verdict {
    if id.magic != MAGIC {
        return Verdict::BadMagic;
    }
    if id.layout_version == 0 {
        return Verdict::NotInitialised;
    }
    if id.layout_version >> 16 != 1 {
        return Verdict::Version;
    }
    let cap = id.capacity;
    let capacity_ok = cap.is_power_of_two() && (4096..=1 << 40).contains(&cap);
    let max_payload = (cap / 2).saturating_sub(8).min(u64::from(u32::MAX) - 15);
    let fields_ok = capacity_ok
        && RingKind::from_code(id.ring_kind).is_some()
        && id.header_size == 16384
        && id.data_offset == 16384
        && id.stats_offset == 512
        && id.stat_slots == 16
        && id.participants_offset == 2560
        && id.participant_slots == 32
        && id.cursors_offset == 8192
        && id.cursor_slots == 1
        && (1..=max_payload).contains(&id.max_record)
        && Some(id.segment_size) == cap.checked_add(16384);
    if !fields_ok {
        return Verdict::Invalid { truncated_only: false };
    }
    if id.segment_size > mapped_len {
        return Verdict::Invalid { truncated_only: true };
    }
    Verdict::Valid { capacity: cap, max_record: id.max_record, minor: id.layout_version as u16 }
}

/// A field that is mostly valid and sometimes anything, so that valid and invalid
/// identities are both common.
fn mostly(valid: u64) -> impl Strategy<Value = u64> {
    prop_oneof![4 => Just(valid), 1 => any::<u64>()]
}

fn mostly32(valid: u32) -> impl Strategy<Value = u32> {
    prop_oneof![8 => Just(valid), 1 => any::<u32>(), 1 => Just(valid + 1)]
}

fn capacity_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => (12u32..=40).prop_map(|shift| 1u64 << shift),
        1 => (0u32..64).prop_map(|shift| 1u64 << shift),
        1 => any::<u64>(),
        1 => Just(0u64),
        1 => (12u32..=40).prop_map(|shift| (1u64 << shift) + 8),
    ]
}

prop_compose! {
    fn identity_strategy()(
        magic in prop_oneof![8 => Just(MAGIC), 1 => any::<u64>(), 1 => Just(0u64)],
        major in prop_oneof![8 => Just(1u16), 1 => any::<u16>()],
        minor in any::<u16>(),
        ring_kind in mostly32(1),
        header_size in mostly32(16384),
        capacity in capacity_strategy(),
        max_record_pick in 0u8..6,
        any_max_record in any::<u64>(),
        data_offset in mostly(16384),
        segment_size_pick in 0u8..4,
        any_segment_size in any::<u64>(),
        rest in (mostly32(32), mostly(2560), mostly32(1), mostly32(16), mostly(8192), mostly(512)),
        display in (any::<u32>(), any::<u64>(), any::<u32>(), any::<u32>(), any::<u32>()),
    ) -> RawIdentity {
        let max_payload = (capacity / 2).saturating_sub(8).min(u64::from(u32::MAX) - 15);
        let max_record = match max_record_pick {
            0 => 1,
            1 => max_payload,
            2 => max_payload.wrapping_add(1),
            3 => 0,
            4 => (max_payload / 2).max(1),
            _ => any_max_record,
        };
        let segment_size = match segment_size_pick {
            0 | 1 => capacity.wrapping_add(16384),
            2 => capacity.wrapping_add(16384 + 8),
            _ => any_segment_size,
        };
        let (participant_slots, participants_offset, cursor_slots, stat_slots, cursors_offset, stats_offset) = rest;
        let (wait_hint, created_unix_ns, creator_pid, creator_uid, flags) = display;
        RawIdentity {
            magic,
            layout_version: pack_version(major, minor),
            ring_kind,
            header_size,
            wait_hint,
            capacity,
            max_record,
            data_offset,
            segment_size,
            created_unix_ns,
            creator_pid,
            creator_uid,
            flags,
            participant_slots,
            participants_offset,
            cursor_slots,
            stat_slots,
            cursors_offset,
            stats_offset,
        }
    }
}

fn mapped_len_strategy(segment_size: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(segment_size),
        Just(segment_size.saturating_sub(1)),
        Just(segment_size.saturating_add(4096)),
        any::<u64>(),
        Just(u64::MAX),
        Just(0u64),
    ]
}

/// Checks `validate` against [`verdict`]; shared by the property and the real-segment fuzz.
fn check_validate(id: &RawIdentity, mapped_len: u64) -> Result<(), TestCaseError> {
    let result = id.validate(mapped_len);
    match (verdict(id, mapped_len), result) {
        (Verdict::Valid { capacity, max_record, minor }, Ok(geometry)) => {
            prop_assert_eq!(Some(geometry.kind), RingKind::from_code(id.ring_kind));
            prop_assert_eq!((geometry.capacity, geometry.max_record, geometry.minor), (capacity, max_record, minor));
        }
        (Verdict::BadMagic, Err(HeaderError::BadMagic { found })) => prop_assert_eq!(found, id.magic),
        (Verdict::NotInitialised, Err(HeaderError::NotInitialised)) => {}
        (Verdict::Version, Err(HeaderError::Version { major, minor })) => {
            prop_assert_eq!(pack_version(major, minor), id.layout_version);
        }
        (Verdict::Invalid { truncated_only: false }, Err(HeaderError::Field { .. })) => {}
        (Verdict::Invalid { truncated_only: true }, Err(HeaderError::Truncated { claimed, actual })) => {
            prop_assert_eq!((claimed, actual), (id.segment_size, mapped_len));
        }
        (want, got) => {
            prop_assert!(false, "expected {:?}, validate gave {:?} for {:?} mapped {}", want, got, id, mapped_len)
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8192))]

    /// `validate` accepts exactly the documented geometry, refuses the rest with the
    /// matching error, and never panics.
    #[test]
    fn validate_accepts_exactly_the_documented_geometry(
        (id, mapped_len) in identity_strategy().prop_flat_map(|id| {
            let size = id.segment_size;
            (Just(id), mapped_len_strategy(size))
        })
    ) {
        check_validate(&id, mapped_len)?;
    }

    /// Pure noise as a header: always refused (the magic alone makes acceptance
    /// a 2^-64 event), never a panic.
    #[test]
    fn random_identity_bytes_never_panic(words in proptest::array::uniform16(any::<u64>()), mapped_len: u64) {
        let w = words;
        let id = RawIdentity {
            magic: w[0],
            layout_version: w[1] as u32,
            ring_kind: (w[1] >> 32) as u32,
            header_size: w[2] as u32,
            wait_hint: (w[2] >> 32) as u32,
            capacity: w[3],
            max_record: w[4],
            data_offset: w[5],
            segment_size: w[6],
            created_unix_ns: w[7],
            creator_pid: w[8] as u32,
            creator_uid: (w[8] >> 32) as u32,
            flags: w[9] as u32,
            participant_slots: (w[9] >> 32) as u32,
            participants_offset: w[10],
            cursor_slots: w[11] as u32,
            stat_slots: (w[11] >> 32) as u32,
            cursors_offset: w[12],
            stats_offset: w[13],
        };
        check_validate(&id, mapped_len)?;
    }
}

// ---------------------------------------------------------------------------------------
// Real segments with a corrupt header.
// ---------------------------------------------------------------------------------------

#[test]
fn wrong_magic_is_refused_as_not_a_segment() {
    let seg = TestSegment::new();
    let raw = seg.created_and_mapped();
    raw.set(MAGIC_AT, 0x0123_4567_89ab_cdef);
    assert_eq!(header_error(seg.open()), HeaderError::BadMagic { found: 0x0123_4567_89ab_cdef });
}

#[test]
fn zero_version_is_not_initialised_and_zero_magic_not_a_segment_after_the_timeout() {
    let seg = TestSegment::new();
    let raw = seg.created_and_mapped();
    raw.set32(VERSION_AT, 0);
    match seg.open() {
        Err(OpenError::NotInitialised { waited, .. }) => assert_eq!(waited, INIT_TIMEOUT),
        other => panic!("version 0: expected NotInitialised, got {other:?}"),
    }
    raw.set32(VERSION_AT, pack_version(1, 0));
    raw.set(MAGIC_AT, 0);
    // Zero magic after the wait: no creator ever wrote it, so not a shmring segment.
    assert_eq!(header_error(seg.open()), HeaderError::BadMagic { found: 0 }, "zero magic");
    raw.set(MAGIC_AT, MAGIC);
    seg.open().expect("the restored header opens");
}

#[test]
fn other_major_versions_are_refused() {
    let seg = TestSegment::new();
    let raw = seg.created_and_mapped();
    for (major, minor) in [(2, 0), (2, 7), (0, 1), (u16::MAX, u16::MAX)] {
        raw.set32(VERSION_AT, pack_version(major, minor));
        assert_eq!(header_error(seg.open()), HeaderError::Version { major, minor });
    }
    // A newer minor of the same major is readable.
    raw.set32(VERSION_AT, pack_version(1, 9));
    assert_eq!(seg.open().expect("version 1.9 opens").geometry().minor, 9);
}

#[test]
fn impossible_capacity_is_a_field_error() {
    let seg = TestSegment::new();
    let raw = seg.created_and_mapped();
    for capacity in [0, 1, 8, 2048, 4095, 4097, 6144, CAP + 8, 1 << 41, 1 << 63, u64::MAX] {
        raw.set(CAPACITY_AT, capacity);
        assert_field_error(header_error(seg.open()), "capacity", capacity);
    }
}

#[test]
fn max_record_outside_one_to_half_the_ring_less_eight_is_a_field_error() {
    let seg = TestSegment::new();
    let raw = seg.created_and_mapped();
    for max_record in [0, MAX_RECORD + 1, CAP, CAP * 2, u64::MAX] {
        raw.set(MAX_RECORD_AT, max_record);
        assert_field_error(header_error(seg.open()), "max_record", max_record);
    }
    for max_record in [1, MAX_RECORD] {
        raw.set(MAX_RECORD_AT, max_record);
        assert_eq!(seg.open().expect("a max record in range opens").geometry().max_record, max_record);
    }
}

#[test]
fn header_claiming_more_than_the_file_is_truncated() {
    let seg = TestSegment::new();
    let raw = seg.created_and_mapped();
    let actual = HEADER_SIZE as u64 + CAP;
    // A consistent header for a ring twice the size of the file's.
    raw.set(CAPACITY_AT, 2 * CAP);
    raw.set(SEGMENT_SIZE_AT, HEADER_SIZE as u64 + 2 * CAP);
    assert_eq!(header_error(seg.open()), HeaderError::Truncated { claimed: HEADER_SIZE as u64 + 2 * CAP, actual });
    // A segment size that disagrees with the capacity is refused before it is compared.
    raw.set(CAPACITY_AT, CAP);
    raw.set(SEGMENT_SIZE_AT, u64::MAX);
    assert_field_error(header_error(seg.open()), "segment_size", u64::MAX);
}

#[test]
fn layout_fields_other_than_geometry_must_match_layout_1() {
    let seg = TestSegment::new();
    let raw = seg.created_and_mapped();
    // Kinds this build does not know are refused by code (2 is mpsc since layout 1.1, 3
    // broadcast since 1.2).
    raw.set32(RING_KIND_AT, 99);
    assert_field_error(header_error(seg.open()), "ring_kind", 99);
    raw.set32(RING_KIND_AT, RingKind::Spsc.code());
    raw.set32(HEADER_SIZE_AT, 4096);
    assert_field_error(header_error(seg.open()), "header_size", 4096);
    raw.set32(HEADER_SIZE_AT, HEADER_SIZE as u32);
    raw.set(DATA_OFFSET_AT, 0);
    assert_field_error(header_error(seg.open()), "data_offset", 0);
    raw.set(DATA_OFFSET_AT, HEADER_SIZE as u64);
    seg.open().expect("the restored header opens");
}

/// Random bytes over the identity line of a real segment: `open` gives exactly what the
/// documented rules say (the same oracle as the property above), and a segment that
/// opens still attaches and reads.
#[test]
fn random_bytes_in_the_identity_give_the_documented_verdict() {
    let seg = TestSegment::new();
    let raw = seg.created_and_mapped();
    let identity_words = size_of::<Identity>().div_ceil(8);
    let pristine: Vec<u64> = (0..identity_words).map(|i| raw.word(i * 8).load(Ordering::Relaxed)).collect();
    let mapped_len = (HEADER_SIZE as u64) + CAP;
    let mut rng = SplitMix64(0x1DE7_1717);
    for round in 0..400 {
        for (i, word) in pristine.iter().enumerate() {
            raw.set(i * 8, *word);
        }
        for _ in 0..=rng.below(3) {
            let word = raw.word(rng.below(identity_words as u64) as usize * 8);
            let flip = rng.next() & (0xff << (8 * rng.below(8)));
            word.fetch_xor(flip, Ordering::Relaxed);
        }
        let id = raw.identity();
        let result = Segment::builder(seg.location.clone()).init_timeout(Duration::from_millis(5)).open();
        match (verdict(&id, mapped_len), result) {
            (Verdict::Valid { capacity, max_record, .. }, Ok(segment)) => {
                let g = segment.geometry();
                assert_eq!((g.capacity, g.max_record), (capacity, max_record), "round {round}");
                let mut consumer = segment.consumer().expect("zeroed cursors attach");
                assert!(matches!(consumer.try_read(), Err(TryReadError::Empty)), "round {round}");
            }
            // A zero magic after the wait is not a segment, like any other wrong magic.
            (Verdict::BadMagic, Err(OpenError::Header { source: HeaderError::BadMagic { .. }, .. })) => {}
            // Our magic with a zero version reads as a creator still initialising.
            (Verdict::NotInitialised, Err(OpenError::NotInitialised { .. })) => {
                assert!(id.magic == MAGIC && id.layout_version == 0, "round {round}: {id:?}");
            }
            (Verdict::Version, Err(OpenError::Header { source: HeaderError::Version { .. }, .. })) => {}
            (
                Verdict::Invalid { truncated_only: false },
                Err(OpenError::Header { source: HeaderError::Field { .. }, .. }),
            ) => {}
            (
                Verdict::Invalid { truncated_only: true },
                Err(OpenError::Header { source: HeaderError::Truncated { .. }, .. }),
            ) => {}
            (want, got) => panic!("round {round}: expected {want:?}, open gave {got:?} for {id:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Truncated files.
// ---------------------------------------------------------------------------------------

/// An empty object reads as a segment whose creator has not sized it yet.
fn assert_not_initialised(result: Result<Segment, OpenError>, case: &str) {
    match result {
        Err(OpenError::NotInitialised { .. }) => {}
        other => panic!("{case}: expected NotInitialised, got {other:?}"),
    }
}

/// A non-empty object smaller than a header is not a segment at all (creators size
/// theirs in one step), and is refused at once, without waiting.
fn assert_too_small(result: Result<Segment, OpenError>, size: u64, case: &str) {
    match result {
        Err(OpenError::Header { source: HeaderError::TooSmall { size: s }, .. }) if s == size => {}
        other => panic!("{case}: expected TooSmall {{ size: {size} }}, got {other:?}"),
    }
}

#[test]
fn file_shorter_than_the_header_is_not_a_segment() {
    let seg = TestSegment::new();
    let fd = nix::sys::mman::shm_open(
        seg.name.as_str(),
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .expect("create a raw object");
    assert_not_initialised(seg.open(), "empty file");
    nix::unistd::ftruncate(&fd, 100).expect("ftruncate");
    // Even with our magic in it: 100 bytes cannot hold a header.
    let raw = RawMapping::new(&fd);
    raw.set(MAGIC_AT, MAGIC);
    raw.set32(VERSION_AT, pack_version(1, 0));
    assert_too_small(seg.open(), 100, "100-byte file with a magic");
}

#[test]
fn library_segment_truncated_below_its_header_is_not_a_segment() {
    let seg = TestSegment::new();
    drop(seg.create());
    nix::unistd::ftruncate(seg.raw_fd(), 100).expect("ftruncate");
    assert_too_small(seg.open(), 100, "segment cut to 100 bytes");
}

#[test]
fn library_segment_truncated_into_its_ring_is_truncated() {
    let seg = TestSegment::new();
    drop(seg.create());
    let short = HEADER_SIZE as u64 + 100;
    nix::unistd::ftruncate(seg.raw_fd(), short as i64).expect("ftruncate");
    assert_eq!(header_error(seg.open()), HeaderError::Truncated { claimed: HEADER_SIZE as u64 + CAP, actual: short });
}

// ---------------------------------------------------------------------------------------
// Hostile cursors.
// ---------------------------------------------------------------------------------------

/// Attaching checks the cursors: `0 <= write - read <= capacity`, both 8-aligned.
#[test]
fn impossible_cursors_refuse_to_attach() {
    let seg = TestSegment::new();
    let segment = seg.create();
    let raw = seg.raw();
    let mut rng = SplitMix64(0xC0_FFEE);
    let mut cases: Vec<(u64, u64)> = vec![
        (64, 0),            // reader ahead of writer
        (8, 0),             // reader ahead by one word
        (0, CAP + 8),       // more in flight than the ring holds
        (0, u64::MAX),      // writer at the end of time
        (u64::MAX, 0),      // reader at the end of time
        (4, 12),            // unaligned
        (0, 3),             // unaligned writer
        (1 << 40, 1 << 20), // both large, reader ahead
        (0, CAP),           // valid: full ring
        (CAP * 3, CAP * 3), // valid: empty ring further on
    ];
    cases.extend((0..200).map(|_| (0, rng.next())));
    cases.extend((0..200).map(|_| (rng.next(), rng.next())));
    for (read, write) in cases {
        raw.set_cursors(read, write);
        let valid = read <= write && write - read <= CAP && read % 8 == 0 && write % 8 == 0;
        let consumer = segment.consumer();
        let producer = segment.producer();
        match (valid, &consumer, &producer) {
            (true, Ok(_), Ok(_)) => {}
            (false, Err(AttachError::Corrupt { .. }), Err(AttachError::Corrupt { .. })) => {}
            _ => panic!("cursors read {read} write {write}: consumer {consumer:?}, producer {producer:?}"),
        }
    }
}

#[test]
fn write_cursor_moved_to_an_impossible_value_gives_corrupt_reads() {
    let seg = TestSegment::new();
    let segment = seg.create();
    let raw = seg.raw();
    let mut producer = segment.producer().unwrap();
    let mut consumer = segment.consumer().unwrap();
    producer.try_publish(b"ok").unwrap();
    assert_eq!(&*consumer.try_read().unwrap(), b"ok");
    drop(producer);
    // The consumer has seen write cursor 16 and stands there.
    for write in [8, 0, 16 + CAP + 8, CAP * 4, u64::MAX, u64::MAX - 7] {
        raw.set(WRITE_CURSOR_AT, write);
        assert_every_read_corrupt(&mut consumer, &format!("write cursor {write}"));
    }
    raw.set(WRITE_CURSOR_AT, 16);
    assert!(matches!(consumer.try_read(), Err(TryReadError::Empty)), "restored cursor reads as empty");
    // A cursor that is in range but unaligned: the (zeroed) frame at 16 would end past it.
    raw.set(WRITE_CURSOR_AT, 20);
    assert_every_read_corrupt(&mut consumer, "write cursor 20");
}

fn fill_until_error(producer: &mut Producer) -> TryClaimError {
    let payload = [0x5a_u8; 64];
    for _ in 0..=CAP / 64 + 1 {
        if let Err(error) = producer.try_publish(&payload) {
            return error;
        }
    }
    panic!("published more than the ring holds without an error");
}

#[test]
fn read_cursor_moved_ahead_of_the_producer_gives_corrupt_claims() {
    let seg = TestSegment::new();
    let segment = seg.create();
    let raw = seg.raw();
    let mut producer = segment.producer().unwrap();
    raw.set(READ_CURSOR_AT, 1 << 40);
    assert!(matches!(fill_until_error(&mut producer), TryClaimError::Corrupt(_)));
    assert!(matches!(producer.publish(&[1; 64], Some(Duration::from_millis(10))), Err(ClaimError::Corrupt(_))));
    assert!(matches!(producer.claim(64, Some(Duration::from_millis(10))), Err(ClaimError::Corrupt(_))));
}

#[test]
fn read_cursor_moved_backwards_gives_corrupt_claims() {
    let seg = TestSegment::new();
    let segment = seg.create();
    let raw = seg.raw();
    let mut producer = segment.producer().unwrap();
    let mut consumer = segment.consumer().unwrap();
    assert_eq!(fill_until_error(&mut producer), TryClaimError::Full);
    let drained = consumer.read_batch(usize::MAX, |_| Ok::<_, ()>(())).unwrap();
    assert!(drained > 0);
    // The producer reloads the read cursor (now past 0) and fills the ring again.
    assert_eq!(fill_until_error(&mut producer), TryClaimError::Full);
    raw.set(READ_CURSOR_AT, 0);
    assert!(matches!(producer.try_publish(&[2; 64]), Err(TryClaimError::Corrupt(_))));
}

// ---------------------------------------------------------------------------------------
// Impossible frames.
// ---------------------------------------------------------------------------------------

#[test]
fn impossible_frame_headers_give_corrupt_reads() {
    let seg = TestSegment::new();
    let segment = seg.create();
    let raw = seg.raw();
    let mut producer = segment.producer().unwrap();
    let mut consumer = segment.consumer().unwrap();
    producer.try_publish(b"hello").unwrap(); // frame at index 0, write cursor 16
    let cases = [
        ("length twice the ring", 2 * CAP as u32, 0),
        ("length u32::MAX", u32::MAX, 0),
        ("length one over max_record", MAX_RECORD as u32 + 1, 0),
        ("length past the write cursor", 9, 0),
        ("reserved record type", 5, RESERVED_TYPES),
        ("reserved record type just below padding", 5, PADDING - 1),
        ("padding frame that does not reach the ring's end", 8, PADDING),
        ("padding frame reaching the ring's end but past the write cursor", CAP as u32 - 8, PADDING),
    ];
    for (case, len, record_type) in cases {
        raw.set_frame(0, len, record_type);
        assert_every_read_corrupt(&mut consumer, case);
    }
    raw.set_frame(0, 5, 0);
    assert_eq!(&*consumer.try_read().expect("the restored frame reads"), b"hello");
}

/// A padding frame written by the producer at the wrap is checked too: it must end
/// exactly at the ring's end.
#[test]
fn padding_frame_must_end_at_the_ring_end() {
    let seg = TestSegment::new();
    let segment = seg.create();
    let raw = seg.raw();
    // Start both cursors 16 bytes before the end, so a 24-byte frame needs a padding frame.
    raw.set_cursors(CAP - 16, CAP - 16);
    let mut producer = segment.producer().unwrap();
    let mut consumer = segment.consumer().unwrap();
    producer.try_publish(b"wrapped!!").unwrap();
    let padding_word = raw.word(DATA_AT + (CAP - 16) as usize).load(Ordering::Relaxed);
    assert_eq!(decode(padding_word), (8, PADDING), "the producer padded to the end");
    // (A length of 1 to 8 also frames to 16 bytes, so it is a valid padding frame.)
    for len in [0, 9, 16, 24, u32::MAX] {
        raw.set_frame(CAP - 16, len, PADDING);
        assert_every_read_corrupt(&mut consumer, &format!("padding of length {len}"));
    }
    raw.set_frame(CAP - 16, 8, PADDING);
    let record = consumer.try_read().expect("the restored padding is skipped");
    assert_eq!((&*record, record.position()), (&b"wrapped!!"[..], CAP));
}

// ---------------------------------------------------------------------------------------
// Random bytes in a live segment.
// ---------------------------------------------------------------------------------------

/// One random write somewhere a hostile process could reach: mostly the ring data (with
/// plausible frame headers mixed in, so reads get past the first check), sometimes the
/// cursors (plausible or random), the wake words or the participant table. Counters are
/// left alone: `bug_counters_at_u64_max_...` covers them. Allocates nothing and cannot
/// panic, so a forked child may run it.
fn scribble_once(raw: &RawMapping, rng: &mut SplitMix64) {
    let data_words = CAP / 8;
    let participant_words = (64 * 32 / 8) as u64;
    let r = rng.next();
    let data_word = DATA_AT + (rng.next() % data_words) as usize * 8;
    let (offset, value) = match r % 256 {
        0..=7 => {
            // A plausible write cursor: up to a ring's worth past the read cursor.
            let head = raw.word(READ_CURSOR_AT).load(Ordering::Relaxed);
            (WRITE_CURSOR_AT, head.wrapping_add((rng.next() % (data_words + 1)) * 8))
        }
        8 => (WRITE_CURSOR_AT, rng.next()),
        9 => (READ_CURSOR_AT, rng.next()),
        10 | 11 => {
            // A consistent pair somewhere else: the next attach starts from there.
            let head = (rng.next() % (1 << 30)) * 8;
            raw.word(READ_CURSOR_AT).store(head, Ordering::Relaxed);
            (WRITE_CURSOR_AT, head + (rng.next() % (data_words + 1)) * 8)
        }
        12 => (DATA_WAKE_AT, rng.next() % 3),
        13 => (SPACE_WAKE_AT, rng.next() % 3),
        14 => (PARTICIPANTS_AT + (rng.next() % participant_words) as usize * 8, rng.next()),
        // Frame headers: mostly short records, some up to just past the maximum, some padding.
        15..=150 => (data_word, encode((rng.next() % 48) as u32, (rng.next() % 4) as u32)),
        151..=170 => (data_word, encode((rng.next() % (MAX_RECORD + 16)) as u32, 0)),
        171..=185 => (data_word, encode((rng.next() % CAP) as u32, PADDING)),
        _ => (data_word, rng.next()),
    };
    raw.word(offset).store(value, Ordering::Relaxed);
}

/// What the reader saw, to show the scribbling reached every outcome.
#[derive(Debug, Default)]
struct Outcomes {
    records: u64,
    empty: u64,
    corrupt: u64,
    published: u64,
    full: u64,
    attach_refused: u64,
}

impl Outcomes {
    fn record(&mut self, len: usize, round: u64) {
        assert!(len as u64 <= MAX_RECORD, "round {round}: a record of {len} bytes, over the maximum");
        self.records += 1;
    }
}

/// A consumer and a producer that re-attach after a refusal, driven with random calls.
/// Every outcome must be a record (inside the limits), Empty/Full, a timeout, or Corrupt.
struct Exerciser<'a> {
    segment: &'a Segment,
    consumer: Option<Consumer>,
    producer: Option<Producer>,
    seen: Outcomes,
    payload: Vec<u8>,
}

impl<'a> Exerciser<'a> {
    fn new(segment: &'a Segment) -> Self {
        Exerciser {
            segment,
            consumer: None,
            producer: None,
            seen: Outcomes::default(),
            payload: vec![0xA5; MAX_RECORD as usize],
        }
    }

    fn step(&mut self, rng: &mut SplitMix64, round: u64) {
        if round % 500 == 0 {
            // Re-attach now and then: the cursors left in the segment are checked again.
            self.consumer = None;
            self.producer = None;
        }
        if self.consumer.is_none() {
            match self.segment.consumer() {
                Ok(c) => self.consumer = Some(c),
                Err(AttachError::Corrupt { .. }) => self.seen.attach_refused += 1,
                Err(other) => panic!("round {round}: consumer attach: {other}"),
            }
        }
        if self.producer.is_none() {
            match self.segment.producer() {
                Ok(p) => self.producer = Some(p),
                Err(AttachError::Corrupt { .. }) => self.seen.attach_refused += 1,
                Err(other) => panic!("round {round}: producer attach: {other}"),
            }
        }
        let choice = rng.below(16);
        if let (2..=5, Some(producer)) = (choice, self.producer.as_mut()) {
            let len = rng.below(MAX_RECORD + 1) as usize;
            match producer.try_publish(&self.payload[..len]) {
                Ok(()) => self.seen.published += 1,
                Err(TryClaimError::Full) => self.seen.full += 1,
                Err(TryClaimError::Corrupt(_)) => self.seen.corrupt += 1,
                Err(other) => panic!("round {round}: try_publish of {len} bytes: {other}"),
            }
            return;
        }
        let Some(consumer) = self.consumer.as_mut() else { return };
        match choice {
            0 => {
                let mut lens = Vec::new();
                match consumer.read_batch(8, |r| {
                    lens.push(r.data.len());
                    Ok::<_, ()>(())
                }) {
                    Ok(n) => assert_eq!(n, lens.len(), "round {round}"),
                    Err(BatchError::Corrupt(_)) => self.seen.corrupt += 1,
                    Err(other) => panic!("round {round}: read_batch: {other:?}"),
                }
                lens.into_iter().for_each(|len| self.seen.record(len, round));
            }
            1 if round % 64 == 1 => match consumer.read(Some(Duration::from_millis(1))) {
                Ok(r) => {
                    let len = r.len();
                    drop(r);
                    self.seen.record(len, round);
                }
                Err(ReadError::Corrupt(_)) => self.seen.corrupt += 1,
                Err(ReadError::TimedOut(_)) => self.seen.empty += 1,
            },
            _ => match consumer.try_read() {
                Ok(r) => {
                    // Touch every byte lent to us: all of it must lie inside the mapping.
                    std::hint::black_box(r.iter().fold(0u8, |a, b| a ^ b));
                    let len = r.len();
                    drop(r);
                    self.seen.record(len, round);
                }
                Err(TryReadError::Empty) => self.seen.empty += 1,
                Err(TryReadError::Corrupt(_)) => self.seen.corrupt += 1,
            },
        }
        if round % 1000 == 0 {
            let stats = self.segment.stats();
            assert!(stats.used_bytes <= CAP, "round {round}: {stats:?}");
            std::hint::black_box(self.segment.participants());
        }
    }
}

/// Random writes between the reader's calls, from one seeded RNG: reproducible.
#[test]
fn random_bytes_between_calls_never_panic() {
    let seg = TestSegment::new();
    let segment = seg.create();
    let raw = seg.raw();
    let mut rng = SplitMix64(0x5C41_B8E5);
    let mut exerciser = Exerciser::new(&segment);
    for round in 0..40_000 {
        for _ in 0..rng.below(4) {
            scribble_once(&raw, &mut rng);
        }
        exerciser.step(&mut rng, round);
    }
    let seen = exerciser.seen;
    assert!(seen.records > 0 && seen.corrupt > 0 && seen.published > 0, "some outcome never happened: {seen:?}");
}

/// A page shared with a forked child: a stop flag and the child's write count.
struct Control {
    ptr: NonNull<u8>,
}

impl Control {
    const LEN: usize = 4096;

    fn new() -> Self {
        // SAFETY: a new anonymous shared mapping; it aliases no Rust object and is only
        // accessed through the atomics below.
        let ptr = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                NonZeroUsize::new(Self::LEN).expect("non-zero"),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }
        .expect("mmap a control page");
        Control { ptr: ptr.cast() }
    }

    fn stop(&self) -> &AtomicU64 {
        // SAFETY: the first word of a live, page-aligned, zeroed mapping of `LEN` bytes.
        unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().cast()) }
    }

    fn writes(&self) -> &AtomicU64 {
        // SAFETY: the second word of the same mapping.
        unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(8).cast()) }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped; no reference outlives `&self`.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), Self::LEN) };
    }
}

/// The forked scribbler; stops and reaps it on drop, even if the test panics.
struct Scribbler<'a> {
    child: nix::unistd::Pid,
    control: &'a Control,
}

impl Scribbler<'_> {
    /// Forks a child that scribbles over `raw` until stopped. Returns once the child has
    /// closed the descriptors it inherited and started writing.
    fn start<'a>(raw: &RawMapping, control: &'a Control, seed: u64) -> Scribbler<'a> {
        // Participant locks are open-file-description locks: a child holding a copy of
        // another test's lock descriptor would keep that role taken after the test drops
        // it. Holding the gate exclusively means no test has a handle while we fork.
        let gate = FORK_GATE.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        // SAFETY: the child runs only `scribble_in_child`, which allocates nothing, takes
        // no lock and leaves with `_exit`, so the harness threads that fork does not copy
        // cannot leave it stuck on a lock they held.
        let child = match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => scribble_in_child(raw, control, seed),
            nix::unistd::ForkResult::Parent { child } => child,
        };
        while control.writes().load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        drop(gate);
        Scribbler { child, control }
    }

    /// Stops the child and returns how it ended.
    fn stop(&mut self) -> nix::sys::wait::WaitStatus {
        self.control.stop().store(1, Ordering::Relaxed);
        nix::sys::wait::waitpid(self.child, None).expect("waitpid")
    }
}

impl Drop for Scribbler<'_> {
    fn drop(&mut self) {
        if self.control.stop().load(Ordering::Relaxed) == 0 {
            let _ = self.stop();
        }
    }
}

/// The child's whole life: close every inherited descriptor, scribble until told to stop,
/// `_exit`. It never returns into the test harness it inherited.
fn scribble_in_child(raw: &RawMapping, control: &Control, seed: u64) -> ! {
    // SAFETY: close_range(2) only closes descriptors; the child needs none (its memory
    // is already mapped), and closing them drops its copies of other tests' locks.
    unsafe { libc::close_range(3, u32::MAX, 0) };
    let mut rng = SplitMix64(seed);
    while control.stop().load(Ordering::Relaxed) == 0 {
        scribble_once(raw, &mut rng);
        control.writes().fetch_add(1, Ordering::Relaxed);
    }
    // SAFETY: `_exit` ends the child at once, without running the parent's atexit
    // handlers or unwinding into the test harness.
    unsafe { libc::_exit(0) }
}

/// Another process writes random bytes over the live segment, concurrently, while this
/// one reads, publishes and re-attaches in a loop.
#[test]
fn random_bytes_from_another_process_never_crash_a_reader() {
    let seg = TestSegment::new_ungated();
    let segment = seg.create();
    let raw = seg.raw();
    let control = Control::new();
    let mut scribbler = Scribbler::start(&raw, &control, 0xBAD_5EED);
    let _gate = FORK_GATE.read().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut rng = SplitMix64(0x0DD_BA11);
    let mut exerciser = Exerciser::new(&segment);
    // Run until both sides have done their share, however the two are scheduled.
    let started = std::time::Instant::now();
    let mut round = 0;
    let enough = |seen: &Outcomes| seen.records >= 100 && seen.corrupt >= 100;
    while round < 40_000 || control.writes().load(Ordering::Relaxed) < 200_000 || !enough(&exerciser.seen) {
        let (elapsed, writes) = (started.elapsed(), control.writes().load(Ordering::Relaxed));
        assert!(elapsed < Duration::from_secs(20), "after {elapsed:?}, {writes} writes: {:?}", exerciser.seen);
        exerciser.step(&mut rng, round);
        round += 1;
    }
    let seen = std::mem::take(&mut exerciser.seen);
    drop(exerciser);
    let status = scribbler.stop();
    assert_eq!(status, nix::sys::wait::WaitStatus::Exited(scribbler.child, 0), "the scribbler ran to the end");
    assert!(seen.published > 0, "the producer never published: {seen:?}");
}

// ---------------------------------------------------------------------------------------
// Defects found: these fail on the current library.
// ---------------------------------------------------------------------------------------

/// BUG (crates/shm-core/src/ring/spsc.rs, `Consumer::frame_at_pos`, the check
/// `self.pos + framed > self.cached_tail`; and `check_cursors`, which accepts the cursors):
/// cursors near `u64::MAX` pass the attach check (ordered, aligned, at most `capacity`
/// apart), and then `pos + framed` overflows. In a release build it wraps to a small number,
/// so a frame that extends past the write cursor is handed out as a record (and the consumer
/// moves to position 0, far behind the write cursor, and reads unpublished bytes next); in a
/// debug build the addition panics. Either way, bad input is not refused with an error.
#[test]
fn cursors_near_u64_max_are_refused_so_no_frame_past_the_write_cursor_is_read() {
    let seg = TestSegment::new();
    let segment = seg.create();
    let raw = seg.raw();
    let read = u64::MAX - 15; // 8-aligned; data index CAP - 16
    let write = u64::MAX - 7; // 8 bytes in flight
    raw.set_cursors(read, write);
    // A 16-byte frame (8-byte payload) where only 8 bytes are published.
    raw.set_frame(CAP - 16, 8, 0);
    let mut consumer = match segment.consumer() {
        Err(AttachError::Corrupt { .. }) => return, // refusing such cursors is a fix too
        other => other.expect("attach"),
    };
    match consumer.try_read() {
        Err(TryReadError::Corrupt(_)) => {}
        Ok(record) => panic!(
            "BUG: read a {}-byte record at {:#x} whose frame ends past the write cursor {write:#x}",
            record.len(),
            record.position()
        ),
        Err(other) => panic!("expected Corrupt, got {other:?}"),
    }
}

/// BUG (crates/shm-core/src/ring/spsc.rs, `Producer::free_space`:
/// `(self.cached_head + self.ring.capacity).saturating_sub(self.pos)`): with both cursors
/// within `capacity` of `u64::MAX` (accepted by `check_cursors`) the addition overflows.
/// In a release build it wraps, so an empty ring reports `Full` for ever (a blocking
/// publish times out; no error says the segment is corrupt); in a debug build it panics.
#[test]
fn cursors_near_u64_max_are_refused_before_the_producer_computes_free_space() {
    let seg = TestSegment::new();
    let segment = seg.create();
    let raw = seg.raw();
    let at = u64::MAX - (CAP - 1); // CAP-aligned, so data index 0; the ring is empty
    raw.set_cursors(at, at);
    let mut producer = match segment.producer() {
        Err(AttachError::Corrupt { .. }) => return, // refusing such cursors is a fix too
        other => other.expect("attach"),
    };
    match producer.try_publish(b"x") {
        Ok(()) | Err(TryClaimError::Corrupt(_)) => {}
        Err(TryClaimError::Full) => panic!("BUG: an empty ring at position {at:#x} reports Full"),
        Err(other) => panic!("expected Ok or Corrupt, got {other:?}"),
    }
}

/// Counters live in memory any process can write. Totals are corrected on attach from the
/// publish and release slots that belong to the cursors (here: cursors at 0, so nothing was
/// ever produced or consumed, whatever the counters claim); counters that nothing can
/// verify (blocks, sleeps) only grow by saturating addition. Neither panics nor wraps.
#[test]
fn hostile_counters_are_corrected_from_the_cursors_or_saturate() {
    let seg = TestSegment::new();
    let segment = seg.create();
    let raw = seg.raw();
    for counter in Counter::ALL {
        raw.set(counter_at(counter), u64::MAX);
    }
    let mut producer = segment.producer().expect("the cursors are fine");
    let mut consumer = segment.consumer().expect("the cursors are fine");
    producer.try_publish(b"x").expect("an empty ring takes a record");
    assert_eq!(&*consumer.try_read().expect("the record is there"), b"x");
    assert!(matches!(consumer.try_read(), Err(TryReadError::Empty)));
    let stats = segment.stats();
    let value = |c: Counter| stats.get(c.label()).expect("every counter is labelled");
    assert_eq!(
        [Counter::TotalProduced, Counter::BytesProduced, Counter::TotalConsumed, Counter::BytesConsumed].map(value),
        [1, 1, 1, 1],
        "totals must be the exact counts behind the cursors"
    );
    assert_eq!(stats.records_in_flight, 0);
    assert_eq!(value(Counter::ConsumerBlocks), u64::MAX, "an unverifiable counter saturates, never wraps");
}

// ---------------------------------------------------------------------------------------
// Broadcast rings (layout 1.2): hostile values in the fields only they use.
// ---------------------------------------------------------------------------------------

/// The words a broadcast ring reads that another process can write: the producer line's
/// horizon, floor and publish slots, and every word of the first consumer slots.
fn broadcast_words() -> Vec<usize> {
    let producer = offset_of!(Header, producer.0);
    let mut words: Vec<usize> = (0..size_of::<ProducerLine>() / 8).map(|w| producer + 8 * w).collect();
    for k in 0..3 {
        let slot = offset_of!(Header, cursors) + k * size_of::<Line<CursorSlot>>();
        words.extend((0..size_of::<CursorSlot>() / 8).map(|w| slot + 8 * w));
    }
    words
}

/// A broadcast segment with a producer and two consumers that have moved some records;
/// then, for each case, hostile values in its words and every call a process makes on
/// it: never a panic, and a hostile cursor or sequence number is a `Corrupt` error or a
/// counted gap, never a record read from outside the ring.
#[test]
fn hostile_broadcast_fields_give_errors_never_panics() {
    let words = broadcast_words();
    let mut rng = SplitMix64(0xB40A_DCA5);
    for case in 0..300 {
        let seg = TestSegment::new();
        let segment = Segment::builder(seg.location.clone())
            .kind(RingKind::Broadcast)
            .lossy(case % 2 == 1)
            .capacity(CAP)
            .create()
            .expect("create");
        let raw = seg.raw();
        let mut producer = segment.broadcast_producer().expect("producer");
        let mut a = segment.broadcast_consumer("a").expect("consumer a");
        let mut b = segment.broadcast_consumer("b").expect("consumer b");
        for i in 0..(rng.below(200)) {
            let _ = producer.try_publish(&vec![i as u8; (i % 50) as usize]);
            if i % 3 == 0 {
                let _ = a.try_read();
            }
        }
        for _ in 0..1 + rng.below(4) {
            let at = words[rng.below(words.len() as u64) as usize];
            let value = match rng.below(4) {
                0 => rng.next(),
                1 => rng.below(4 * CAP) & !7,
                2 => u64::MAX - rng.below(16),
                _ => raw.word(at).load(Ordering::Relaxed).wrapping_add(8 * rng.below(64)),
            };
            raw.set(at, value);
        }
        for _ in 0..20 {
            let _ = producer.try_publish(&[7; 24]);
            for c in [&mut a, &mut b] {
                if let Ok(r) = c.try_read() {
                    assert!(r.data.len() as u64 <= CAP / 2, "case {case}: a record larger than the ring");
                }
            }
        }
        let _ = segment.broadcast_status();
        drop((a, b, producer));
        // Re-attach every role over the damaged fields.
        if let Ok(mut c) = segment.broadcast_consumer("a") {
            let _ = c.try_read();
        }
        if let Ok(mut c) = segment.broadcast_consumer("newcomer") {
            let _ = c.try_read();
        }
        if let Ok(mut p) = segment.broadcast_producer() {
            let _ = p.try_publish(&[1; 8]);
        }
    }
}

#[test]
fn a_broadcast_header_with_the_wrong_cursor_count_is_refused_and_lossy_is_read_from_its_flags() {
    let seg = TestSegment::new();
    drop(Segment::builder(seg.location.clone()).kind(RingKind::Broadcast).capacity(CAP).create().expect("create"));
    let raw = seg.raw();
    let cursor_slots = offset_of!(Header, identity.0) + offset_of!(Identity, cursor_slots);
    let flags = offset_of!(Header, identity.0) + offset_of!(Identity, flags);
    raw.set32(cursor_slots, 1);
    assert_field_error(header_error(seg.open()), "cursor_slots", 1);
    raw.set32(cursor_slots, 64);
    assert!(!seg.open().expect("a broadcast ring").geometry().lossy);
    raw.set32(flags, 1);
    assert!(seg.open().expect("a lossy broadcast ring").geometry().lossy);
    // Flags stay reserved for the other kinds: an spsc ring with the bit set is not lossy.
    raw.set32(offset_of!(Header, identity.0) + offset_of!(Identity, ring_kind), 1);
    raw.set32(cursor_slots, 1);
    assert!(!seg.open().expect("an spsc ring").geometry().lossy);
}

// ---------------------------------------------------------------------------------------
// mpmc: hostile words in the worker area (layout 1.2).
// ---------------------------------------------------------------------------------------

/// The words of the mpmc area another process could scribble on: the take cursor, the
/// hand-off, the release token, workers 0 and 1's holding and orphan words, and the
/// release and claim cursors.
fn mpmc_words() -> [usize; 8] {
    use shm_core::layout::{MpmcArea, MpmcReleaseLine, MpmcTakeLine, MpmcWorkerSlot};
    let area = offset_of!(Header, mpmc);
    let worker = |w: usize| area + offset_of!(MpmcArea, workers) + w * size_of::<Line<MpmcWorkerSlot>>();
    [
        area + offset_of!(MpmcArea, take) + offset_of!(MpmcTakeLine, take_cursor),
        area + offset_of!(MpmcArea, take) + offset_of!(MpmcTakeLine, handoff),
        area + offset_of!(MpmcArea, release) + offset_of!(MpmcReleaseLine, token),
        worker(0) + offset_of!(MpmcWorkerSlot, holding),
        worker(0) + offset_of!(MpmcWorkerSlot, orphan),
        worker(1) + offset_of!(MpmcWorkerSlot, holding),
        READ_CURSOR_AT,
        WRITE_CURSOR_AT,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Any value (or a small, plausible one) in any of the mpmc words: attaching a worker,
    /// taking, acknowledging and `mpmc_status` give values or errors, never a panic.
    #[test]
    fn hostile_mpmc_words_give_errors_not_panics(
        which in 0usize..8,
        value in prop_oneof![any::<u64>(), 0u64..64, (0u64..8).prop_map(|v| v * 8 + 1)],
    ) {
        let test = TestSegment::new();
        let seg = Segment::builder(test.location.clone()).capacity(CAP).kind(RingKind::Mpmc).create().unwrap();
        let raw = test.raw();
        let mut producer = seg.mpsc_producer(0).unwrap();
        producer.try_publish(b"one").unwrap();
        producer.try_publish(b"two").unwrap();
        raw.set(mpmc_words()[which], value);
        if let Ok(mut worker) = seg.mpmc_worker(1) {
            for _ in 0..4 {
                if let Ok(job) = worker.try_take() {
                    let _ = job.ack();
                }
            }
        }
        let _ = seg.mpmc_status();
        let _ = seg.stats();
    }
}

// ---------------------------------------------------------------------------------------
// peek of mpsc, broadcast and mpmc rings: hostile words give errors, never panics.
// ---------------------------------------------------------------------------------------

/// Data words of the first records (where every kind's frames start) and the words each
/// kind's peek reads: both cursors, the take cursor, the broadcast horizon and the first
/// consumer slots, the mpmc holding words.
fn peek_words() -> Vec<usize> {
    let mut words: Vec<usize> = (0..16).map(|w| DATA_AT + 8 * w).collect();
    words.extend(mpmc_words());
    words.extend(broadcast_words());
    words
}

/// A ring of `kind` with records in every state its peek shows (committed, taken,
/// acknowledged, a claim in flight), then hostile values in the words peek reads: peek
/// with and without a consumer name returns a view or an error, never a panic, and never
/// a record longer than the ring allows.
#[test]
fn hostile_words_under_peek_of_every_new_kind_give_errors_never_panics() {
    let words = peek_words();
    let mut rng = SplitMix64(0x9EEC_0F4B_1D00);
    let mut corrupt = 0;
    for case in 0..240 {
        let kind = [RingKind::Mpsc, RingKind::Broadcast, RingKind::Mpmc][case % 3];
        let seg = TestSegment::new();
        let segment = Segment::builder(seg.location.clone()).kind(kind).capacity(CAP).create().expect("create");
        let raw = seg.raw();
        // Handles stay alive through the damage, as they would in other processes.
        let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
        match kind {
            RingKind::Mpsc | RingKind::Mpmc => {
                let mut a = segment.mpsc_producer(0).expect("producer 0");
                let mut b = segment.mpsc_producer(1).expect("producer 1");
                for i in 0..rng.below(40) {
                    let _ = [&mut a, &mut b][(i % 2) as usize].try_publish(&vec![i as u8 + 1; (i % 70) as usize]);
                }
                if kind == RingKind::Mpmc {
                    let mut w = segment.mpmc_worker(0).expect("worker");
                    if let Ok(job) = w.try_take() {
                        job.hold_for_retry();
                    }
                    keep.push(Box::new(w));
                }
                std::mem::forget(b.try_claim(16));
                keep.push(Box::new((a, b)));
            }
            _ => {
                let mut p = segment.broadcast_producer().expect("producer");
                let mut c = segment.broadcast_consumer("c").expect("consumer");
                for i in 0..rng.below(200) {
                    let _ = p.try_publish(&vec![i as u8; (i % 90) as usize]);
                    if i % 4 == 0 {
                        let _ = c.try_read();
                    }
                }
                keep.push(Box::new((p, c)));
            }
        }
        for _ in 0..1 + rng.below(3) {
            let at = words[rng.below(words.len() as u64) as usize];
            let value = match rng.below(4) {
                0 => rng.next(),
                1 => rng.below(4 * CAP) & !7,
                2 => u64::MAX - rng.below(16),
                _ => raw.word(at).load(Ordering::Relaxed).wrapping_add(8 * rng.below(64)),
            };
            raw.set(at, value);
        }
        for consumer in [None, Some("c"), Some("nobody")] {
            let result = segment.peek_view(64, consumer);
            corrupt += usize::from(matches!(result, Err(shm_core::PeekError::Corrupt { .. })));
            if let Ok(view) = result {
                assert!(view.records.len() <= 64 && view.skipped.len() <= 64, "case {case}: more than asked");
                for r in &view.records {
                    assert!(r.data.len() as u64 <= CAP / 2, "case {case} ({kind:?}): a record larger than the ring");
                }
            }
        }
        drop(keep);
    }
    // The damage reaches the peeks: many cases are reported corrupt (the rest land on
    // values a ring can hold, or on words peek does not read).
    assert!(corrupt > 20, "only {corrupt} peeks found the damage");
}

/// Crafted frames at the read cursor that no writer makes: each kind's peek says corrupt.
#[test]
fn impossible_frames_at_the_head_make_peek_of_every_new_kind_corrupt() {
    use shm_core::PeekError;
    use shm_core::ring::mpsc::committed;
    for kind in [RingKind::Mpsc, RingKind::Broadcast, RingKind::Mpmc] {
        let seg = TestSegment::new();
        let segment = Segment::builder(seg.location.clone()).kind(kind).capacity(CAP).create().expect("create");
        let raw = seg.raw();
        if kind == RingKind::Broadcast {
            segment.broadcast_producer().expect("producer").try_publish(b"hello").expect("publish");
        } else {
            segment.mpsc_producer(0).expect("producer").try_publish(b"hello").expect("publish");
        }
        // (header word at the read cursor, write cursor to set, what is wrong)
        let committed0 = if kind == RingKind::Broadcast { 0 } else { committed(0, 0) };
        let mut cases = vec![
            (encode(CAP as u32, committed0), None, "longer than the ring"),
            (encode(8, PADDING), None, "padding not ending the lap"),
            (encode(64, committed0), None, "running past the write (claim) cursor"),
        ];
        if kind == RingKind::Broadcast {
            // Inside the ring and below the write cursor, but longer than a record can be.
            cases.push((encode(3000, 0), Some(CAP), "longer than the largest record"));
        } else {
            cases.push((encode(1, 0xFFFF_0000), None, "a reserved type"));
        }
        for (header, write_cursor, what) in cases {
            raw.set(DATA_AT, header);
            if let Some(w) = write_cursor {
                raw.set(WRITE_CURSOR_AT, w);
            }
            let result = segment.peek_view(10, None);
            assert!(matches!(result, Err(PeekError::Corrupt { .. })), "{kind:?}, a frame {what}: {result:?}");
        }
    }
}

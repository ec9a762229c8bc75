//! Memory another process can write, tried as a hostile co-tenant would.
//!
//! - Crafted images: the three segments a review built by hand, each of which crashed or
//!   hung a real binary (an unaligned last-frame offset in a publish slot made
//!   `shmctl publish` die with SIGSEGV on attach; a read cursor one byte short of the end
//!   of a 4 KiB ring made `shmctl peek` die with SIGSEGV; cursors near `u64::MAX` with a
//!   padding frame made `shmctl peek` spin for ever). Each runs the real `shmctl` with a
//!   deadline: a signal or a hang fails the test, a typed error (exit 65) or sane output
//!   passes.
//! - Busy peek: a producer and a consumer stream through a 4 KiB ring while another thread
//!   peeks 100 000 times; a peek that reports corruption, or copies a torn record, fails.
//! - Image fuzzer: a valid segment image mutated word by word with boundary values in
//!   every field (header, cursors, publish and release slots, wake words, counters,
//!   participant table, frame headers), then random combinations of those mutations
//!   (proptest, fixed seed). Each image goes through open, attach as producer and as
//!   consumer, read everything, peek, stat and a publish. It runs in this process: a
//!   signal kills the test binary (a visible failure), and a watchdog aborts it, naming
//!   the image, if one image takes longer than [`IMAGE_DEADLINE`].
//!   `SHMRING_FUZZ_CASES` sets the number of random images (default [`FUZZ_CASES`]).
//!
//! Each test prints one `RELIABILITY` line for `scripts/reliability-report`.

#[allow(unused_macros)] // `checks!` is for the per-backend suites
mod shmctl_support;

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::json;
use shm_core::layout::{CursorSlot, Header, Line, ParticipantSlot, ProducerLine, PublishSlot, StatSlot};
use shm_core::ring::frame::{PADDING, encode};
use shm_core::{AttachError, Counter, Location, OpenError, Segment, TryClaimError, TryReadError, WaitStrategy};
use shmctl_support::{DATA, poke, raw_bytes, shmctl_on};
use shmring_tests::ledger::Figures;
use shmring_tests::{Backend, Finished, Fixture, reliability};

/// Ring capacity of every image: the smallest a segment can have.
const CAP: u64 = 4096;
/// Where the ring data starts.
const DATA_AT: usize = size_of::<Header>();
const WRITE_CURSOR_AT: usize = offset_of!(Header, producer.0) + offset_of!(ProducerLine, write_cursor);
const READ_CURSOR_AT: usize = offset_of!(Header, cursors) + offset_of!(CursorSlot, read_cursor);

/// Offset of word `field` (a byte offset inside [`PublishSlot`]) of publish slot `slot`.
const fn publish_slot_at(slot: usize, field: usize) -> usize {
    offset_of!(Header, producer.0) + offset_of!(ProducerLine, publishes) + slot * size_of::<PublishSlot>() + field
}

/// Writes a little-endian word into the segment behind the library's back.
fn poke_word(location: &Location, offset: usize, value: u64) {
    poke(location, offset, &value.to_le_bytes());
}

/// A new 4 KiB posix segment, created by the library and left with no handle.
fn new_segment(fx: &Fixture) -> Location {
    let location = fx.location(Backend::Posix);
    drop(Segment::builder(location.clone()).capacity(CAP).create().expect("create the segment"));
    location
}

/// Runs `shmctl SUB` on the segment with a deadline (the fixture kills it and fails the
/// test if it hangs), and fails on a signal.
#[track_caller]
fn shmctl_survives(fx: &Fixture, sub: &str, location: &Location, extra: &[&str]) -> Finished {
    let f = shmctl_on(fx, sub, location, extra);
    assert!(
        f.status.code().is_some(),
        "shmctl {sub} was killed by {}\nstdout:\n{}\nstderr:\n{}",
        f.status,
        f.stdout,
        f.stderr
    );
    f
}

/// `shmctl SUB` must refuse the image as corrupt (exit 65, saying so).
#[track_caller]
fn refused_as_corrupt(fx: &Fixture, sub: &str, location: &Location, extra: &[&str]) -> String {
    let f = shmctl_survives(fx, sub, location, extra);
    f.assert_code(DATA);
    assert!(f.stderr.contains("corrupt"), "shmctl {sub} does not say what is corrupt:\n{}", f.stderr);
    f.stderr.trim().to_owned()
}

/// A publish slot naming a last frame that is unaligned and one byte short of the ring's
/// end: the restarted producer checked its range, not its alignment, and read a word
/// across the end of the mapping (SIGSEGV in `shmctl publish` and `producerd`). Now the
/// offset is not a frame, so the producer resumes without a last record.
#[test]
fn a_publish_slot_naming_an_unaligned_last_frame_does_not_crash_a_producer() {
    let fx = Fixture::new("hostile-last-frame");
    let location = new_segment(&fx);
    let cursor = 2 * CAP + 1024; // empty ring, third lap
    poke_word(&location, READ_CURSOR_AT, cursor);
    poke_word(&location, WRITE_CURSOR_AT, cursor);
    poke_word(&location, publish_slot_at(0, offset_of!(PublishSlot, position)), cursor);
    poke_word(&location, publish_slot_at(0, offset_of!(PublishSlot, last_frame)), 2 * CAP - 1);

    let published = shmctl_survives(&fx, "publish", &location, &["after the crafted slot"]);
    published.assert_success();
    let peeked = shmctl_survives(&fx, "peek", &location, &[]);
    peeked.assert_success();
    assert!(peeked.stdout.contains("after the crafted slot"), "peek:\n{}", peeked.stdout);
    shmctl_survives(&fx, "stat", &location, &[]).assert_success();
    reliability::report(
        "hostile_unaligned_last_frame",
        "publish slot's last frame unaligned, one byte short of the ring's end (crafted image)",
        3,
        "shmctl publish, peek, stat exit 0; the producer resumes without a last record",
        &Figures::NoRecords,
        serde_json::Value::Null,
    );
}

/// A read cursor one byte short of the end of the ring: `peek` read a frame header word
/// across the end of the mapping (SIGSEGV). Now every command refuses the cursor.
#[test]
fn a_read_cursor_one_byte_short_of_the_ring_end_is_refused() {
    let fx = Fixture::new("hostile-read-cursor");
    let location = new_segment(&fx);
    poke_word(&location, READ_CURSOR_AT, CAP - 1);
    poke_word(&location, WRITE_CURSOR_AT, CAP + 8);

    let peek = refused_as_corrupt(&fx, "peek", &location, &[]);
    let publish = refused_as_corrupt(&fx, "publish", &location, &["x"]);
    shmctl_survives(&fx, "stat", &location, &[]).assert_success();
    reliability::report(
        "hostile_read_cursor_one_short",
        "read cursor one byte short of a 4 KiB ring's end (crafted image)",
        3,
        "shmctl peek and publish exit 65, stat exits 0",
        &Figures::NoRecords,
        json!({ "peek": peek, "publish": publish }),
    );
}

/// Cursors near `u64::MAX` with a padding frame: `pos + to_end` wrapped to 0 in `peek`,
/// which then walked padding after padding for 2^52 steps (100% CPU, no end). Now the
/// cursors are refused before any frame is read.
#[test]
fn cursors_near_u64_max_with_padding_are_refused_not_walked() {
    let fx = Fixture::new("hostile-padding-spin");
    let location = new_segment(&fx);
    poke_word(&location, READ_CURSOR_AT, u64::MAX - (CAP - 1)); // data index 0
    poke_word(&location, WRITE_CURSOR_AT, u64::MAX - 7);
    poke_word(&location, DATA_AT, encode((CAP - 8) as u32, PADDING)); // one padding frame, the whole ring

    let started = Instant::now();
    let peek = refused_as_corrupt(&fx, "peek", &location, &[]);
    let took = started.elapsed();
    let publish = refused_as_corrupt(&fx, "publish", &location, &["x"]);
    shmctl_survives(&fx, "stat", &location, &[]).assert_success();
    reliability::report(
        "hostile_cursors_near_u64_max",
        "cursors near u64::MAX with padding frames (crafted image)",
        3,
        &format!("shmctl peek exits 65 in {} ms, publish exits 65, stat exits 0", took.as_millis()),
        &Figures::NoRecords,
        json!({ "peek": peek, "publish": publish }),
    );
}

// ---------------------------------------------------------------------------------------
// Busy peek.
// ---------------------------------------------------------------------------------------

/// Peeks taken while the ring streams (at least).
const PEEKS: u64 = 100_000;
/// Records the ring streams while peek runs (at least).
const STREAMED_WHILE_PEEKING: u64 = 100_000;

/// The payload of record `seq`: its sequence number, then bytes that depend on it, so a
/// copy torn between two records does not pass for either.
fn stream_record(seq: u64, buf: &mut Vec<u8>) {
    let len = 8 + (seq * 13 % 120) as usize;
    buf.clear();
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend((8..len).map(|i| (seq as u8).wrapping_mul(31).wrapping_add(i as u8)));
}

fn is_stream_record(data: &[u8]) -> bool {
    let Some(seq) = data.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))) else {
        return false;
    };
    let mut want = Vec::new();
    stream_record(seq, &mut want);
    data == want
}

/// A healthy busy ring never makes `peek` report corruption: a frame the consumer released
/// and the producer overwrote while peek was copying it is a retry, and every record peek
/// returns is one the producer wrote, whole.
#[test]
fn peek_on_a_busy_ring_never_reports_corruption_or_a_torn_record() {
    let fx = Fixture::new("hostile-busy-peek");
    let location = fx.location(Backend::Posix);
    let segment = Segment::builder(location).capacity(CAP).create().expect("create");
    let mut producer = segment.producer_with(WaitStrategy::Spin).expect("producer");
    let mut consumer = segment.consumer_with(WaitStrategy::Spin).expect("consumer");
    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let producing = {
        let (stop, produced) = (stop.clone(), produced.clone());
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                stream_record(seq, &mut buf);
                match producer.try_publish(&buf) {
                    Ok(()) => seq += 1,
                    Err(TryClaimError::Full) => std::hint::spin_loop(),
                    Err(e) => panic!("publish {seq}: {e}"),
                }
                produced.store(seq, Ordering::Relaxed);
            }
        })
    };
    let consuming = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut next = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match consumer.try_read() {
                    Ok(r) => {
                        assert!(is_stream_record(&r), "consumer read a torn record");
                        let seq = u64::from_le_bytes(r[..8].try_into().expect("8 bytes"));
                        assert_eq!(seq, next, "consumer order");
                        next += 1;
                    }
                    Err(TryReadError::Empty) => std::hint::spin_loop(),
                    Err(e) => panic!("read {next}: {e}"),
                }
            }
            next
        })
    };
    shmring_tests::wait_until(Duration::from_secs(10), "the stream to start", || {
        produced.load(Ordering::Relaxed) > 1000
    });
    let (mut corrupt, mut torn, mut with_records, mut copied) = (0u64, 0u64, 0u64, 0u64);
    let mut first_error = None;
    let before = produced.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut peeks = 0;
    // At least PEEKS peeks, and as many as it takes for the ring to stream a few laps
    // meanwhile (on a loaded machine the other two threads may wait for a CPU).
    while peeks < PEEKS || produced.load(Ordering::Relaxed) - before < STREAMED_WHILE_PEEKING {
        assert!(started.elapsed() < Duration::from_secs(60), "the ring did not stream while peeking");
        peeks += 1;
        // Every waiting record (up to a ring's worth): the longer the walk, the likelier
        // the consumer and then the producer overtake it.
        match segment.peek(CAP as usize / 8) {
            Ok(records) => {
                with_records += u64::from(!records.is_empty());
                copied += records.len() as u64;
                torn += records.iter().filter(|r| !is_stream_record(&r.data)).count() as u64;
            }
            Err(e) => {
                corrupt += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let during = produced.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    producing.join().expect("producer thread");
    let consumed = consuming.join().expect("consumer thread");
    let produced = produced.load(Ordering::Relaxed);
    assert_eq!((corrupt, torn), (0, 0), "false corruption reports, torn copies; first: {first_error:?}");
    assert!(with_records > 0, "no peek saw a record: {during} records streamed");
    reliability::report(
        "hostile_busy_peek",
        "peek in a loop on a 4 KiB ring while a producer and a consumer stream through it",
        peeks,
        &format!("0 corruption reports, 0 torn copies; {with_records} peeks returned records"),
        &Figures::NoRecords,
        json!({
            "records_streamed": consumed,
            "records_produced": produced,
            "produced_while_peeking": during,
            "records_copied": copied,
        }),
    );
}

// ---------------------------------------------------------------------------------------
// The image fuzzer.
// ---------------------------------------------------------------------------------------

/// Random images in a CI run; `SHMRING_FUZZ_CASES` raises it for a long run.
const FUZZ_CASES: u32 = 20_000;
/// The longest one image may take through every step before the watchdog aborts.
const IMAGE_DEADLINE: Duration = Duration::from_secs(10);

/// Words of the image replaced together: one word with a boundary value, or a few that
/// only make sense together (both cursors moved consistently, a publish slot that names
/// the write cursor).
#[derive(Debug, Clone)]
struct Mutation {
    name: String,
    writes: Vec<(usize, u64)>,
}

/// The boundary values every word gets, around `original` (its value in the valid image).
fn boundary_values(original: u64) -> Vec<u64> {
    let mut values = vec![0, 1, 7, 8, CAP - 1, CAP, CAP + 1, u64::MAX, u64::MAX - 7, 1 << 63];
    for delta in [1, 7, 8, CAP] {
        values.push(original.wrapping_add(delta));
        values.push(original.wrapping_sub(delta));
    }
    // Unaligned and aligned neighbours of the end of its lap, where a word read runs off
    // the end of the ring.
    let lap_end = original | (CAP - 1);
    values.extend([lap_end, lap_end - 3, lap_end - 7, lap_end.wrapping_add(1)]);
    values.push(original ^ (1 << 32));
    values.sort_unstable();
    values.dedup();
    values.retain(|&v| v != original);
    values
}

/// Extra values for a frame header word at data index `index`: padding of every
/// interesting length, and records at and past the maximum.
fn frame_values(index: u64, max_record: u64) -> Vec<u64> {
    let to_end = CAP - index;
    let mut values = Vec::new();
    for len in [0, to_end.saturating_sub(8), to_end, CAP - 8, CAP / 2, u64::from(u32::MAX)] {
        values.push(encode(len as u32, PADDING));
    }
    for len in [max_record, max_record + 1, to_end - 8, to_end, CAP, u64::from(u32::MAX)] {
        values.push(encode(len as u32, 0));
    }
    values.push(encode(1, 0xFFFF_0000));
    values
}

/// A valid image to mutate: a 4 KiB ring that has wrapped (so there are padding frames),
/// with records waiting, both publish and release slots written, and a producer and a
/// consumer that attached and left (so the participant table has entries); and the
/// mutations to try on it.
fn valid_image(fx: &Fixture) -> (Location, Vec<u8>, Vec<Mutation>) {
    let location = fx.location(Backend::Posix);
    let segment = Segment::builder(location.clone()).capacity(CAP).create().expect("create");
    let mut producer = segment.producer().expect("producer");
    let mut consumer = segment.consumer().expect("consumer");
    let mut buf = Vec::new();
    for seq in 0..200 {
        stream_record(seq, &mut buf);
        producer.try_publish(&buf).expect("room: the consumer keeps up");
        if seq < 190 {
            drop(consumer.try_read().expect("the record just published"));
        }
    }
    consumer.release_read();
    let max_record = segment.geometry().max_record;
    drop((producer, consumer, segment));
    let image = raw_bytes(&location);
    let word = |offset: usize| u64::from_le_bytes(image[offset..offset + 8].try_into().expect("8 bytes"));
    let mut mutations = Vec::new();
    let mut words = |name: String, offset: usize, extra: Vec<u64>| {
        let mut values = boundary_values(word(offset));
        values.extend(extra);
        for value in values {
            mutations.push(Mutation { name: format!("{name} = {value:#x}"), writes: vec![(offset, value)] });
        }
    };
    for offset in (0..size_of::<shm_core::layout::Identity>()).step_by(8) {
        words(format!("identity+{offset}"), offset, Vec::new());
    }
    for offset in (0..size_of::<ProducerLine>()).step_by(8) {
        words(format!("producer line+{offset}"), offset_of!(Header, producer.0) + offset, Vec::new());
    }
    words("data wake".into(), offset_of!(Header, data_wake), Vec::new());
    words("space wake".into(), offset_of!(Header, space_wake), Vec::new());
    for counter in Counter::ALL {
        let slot = offset_of!(Header, stats) + counter.slot() * size_of::<Line<StatSlot>>();
        words(format!("{} value", counter.label()), slot + offset_of!(StatSlot, value), Vec::new());
        words(format!("{} in_use", counter.label()), slot + offset_of!(StatSlot, in_use), Vec::new());
    }
    for slot in 0..2 {
        for offset in (0..size_of::<ParticipantSlot>()).step_by(8) {
            let at = offset_of!(Header, participants) + slot * size_of::<ParticipantSlot>() + offset;
            words(format!("participant {slot}+{offset}"), at, Vec::new());
        }
    }
    for offset in (0..size_of::<CursorSlot>()).step_by(8) {
        words(format!("cursor slot+{offset}"), offset_of!(Header, cursors) + offset, Vec::new());
    }
    // Every frame header from the read cursor to the write cursor, and a few other words.
    let (head, tail) = (word(READ_CURSOR_AT), word(WRITE_CURSOR_AT));
    let mut pos = head;
    while pos < tail {
        let index = pos % CAP;
        let header = word(DATA_AT + index as usize);
        words(format!("frame at {pos}"), DATA_AT + index as usize, frame_values(index, max_record));
        let framed = if (header >> 32) as u32 == PADDING { CAP - index } else { (u64::from(header as u32) + 15) & !7 };
        pos += framed;
    }
    for index in [0, 8, CAP / 2, CAP - 16, CAP - 8] {
        words(format!("data word {index}"), DATA_AT + index as usize, frame_values(index, max_record));
    }
    // Both cursors moved together, so they stay consistent with each other and with the
    // frames (same data indices): near u64::MAX, at 2^63, past the largest real position.
    let used = tail - head;
    for base in [u64::MAX - 2 * CAP + 1, u64::MAX - CAP + 1, 1 << 63, u64::MAX - (1 << 42)] {
        let read = (base & !(CAP - 1)) + head % CAP;
        let Some(write) = read.checked_add(used) else { continue };
        let both = vec![(READ_CURSOR_AT, read), (WRITE_CURSOR_AT, write)];
        mutations.push(Mutation { name: format!("cursors moved to {read:#x}..{write:#x}"), writes: both });
    }
    // The review's crafted images: a read cursor in the last word of a lap; cursors near
    // u64::MAX over a ring-long padding frame; a publish slot naming the write cursor with
    // a last frame near the end of a lap.
    for k in 1..8 {
        let read = CAP - k;
        mutations.push(Mutation {
            name: format!("read cursor {read}"),
            writes: vec![(READ_CURSOR_AT, read), (WRITE_CURSOR_AT, CAP + 8)],
        });
    }
    mutations.push(Mutation {
        name: "cursors near u64::MAX over padding".into(),
        writes: vec![
            (READ_CURSOR_AT, u64::MAX - (CAP - 1)),
            (WRITE_CURSOR_AT, u64::MAX - 7),
            (DATA_AT, encode((CAP - 8) as u32, PADDING)),
        ],
    });
    for slot in 0..2 {
        for last in [tail - 1, (tail & !(CAP - 1)) - 1, (tail & !(CAP - 1)) - 5, tail - 8, tail.wrapping_add(8)] {
            mutations.push(Mutation {
                name: format!("publish slot {slot} at the write cursor, last frame {last:#x}"),
                writes: vec![
                    (publish_slot_at(slot, offset_of!(PublishSlot, position)), tail),
                    (publish_slot_at(slot, offset_of!(PublishSlot, last_frame)), last),
                ],
            });
        }
    }
    (location, image, mutations)
}

/// What the images did, for the report and to show every path was reached.
#[derive(Debug, Default)]
struct Outcomes {
    images: u64,
    opened: u64,
    open_refused: u64,
    producer_attached: u64,
    consumer_attached: u64,
    attach_refused: u64,
    records_read: u64,
    read_corrupt: u64,
    peeks_ok: u64,
    peek_corrupt: u64,
    published: u64,
    publish_refused: u64,
}

/// Runs one image through everything a process does with a segment. Any panic, signal or
/// hang is a failure; every refusal must be a typed error.
fn exercise(location: &Location, seen: &mut Outcomes) {
    seen.images += 1;
    let segment = match Segment::builder(location.clone()).expected_owner(None).init_timeout(Duration::ZERO).open() {
        Ok(s) => s,
        Err(OpenError::Header { .. } | OpenError::NotInitialised { .. }) => {
            seen.open_refused += 1;
            return;
        }
        Err(other) => panic!("open: unexpected error {other}"),
    };
    seen.opened += 1;
    let capacity = segment.geometry().capacity;
    let max_record = segment.geometry().max_record;
    let stats = segment.stats();
    assert!(stats.used_bytes <= capacity, "stat: {stats:?}");
    std::hint::black_box((segment.info().expect("info"), segment.participants()));
    match segment.peek(usize::MAX) {
        Ok(records) => {
            seen.peeks_ok += 1;
            assert!(records.len() as u64 <= capacity / 8, "peek returned {} records", records.len());
            assert!(records.iter().all(|r| r.data.len() as u64 <= max_record), "peek: a record over the maximum");
        }
        Err(_) => seen.peek_corrupt += 1,
    }
    let mut consumer = match segment.consumer() {
        Ok(c) => {
            seen.consumer_attached += 1;
            Some(c)
        }
        Err(AttachError::Corrupt { .. }) => {
            seen.attach_refused += 1;
            None
        }
        Err(other) => panic!("consumer attach: unexpected error {other}"),
    };
    if let Some(consumer) = consumer.as_mut() {
        // Every frame is at least 8 bytes, so a ring holds at most capacity / 8 of them:
        // reading more than that before Empty or Corrupt would be a loop the image chose.
        let mut reads = 0;
        loop {
            match consumer.try_read() {
                Ok(r) => {
                    assert!(r.len() as u64 <= max_record, "read a record over the maximum");
                    std::hint::black_box(r.iter().fold(0u8, |a, b| a ^ b));
                    seen.records_read += 1;
                }
                Err(TryReadError::Empty) => break,
                Err(TryReadError::Corrupt(_)) => {
                    seen.read_corrupt += 1;
                    break;
                }
            }
            reads += 1;
            assert!(reads <= capacity / 8 + 1, "more records than the ring can hold");
        }
    }
    match segment.producer() {
        Ok(mut p) => {
            seen.producer_attached += 1;
            std::hint::black_box(p.last_committed());
            // One byte: every valid max_record allows it, so TooLarge would be a bug.
            match p.try_publish(b"f") {
                Ok(()) => seen.published += 1,
                Err(TryClaimError::Full | TryClaimError::Corrupt(_)) => seen.publish_refused += 1,
                Err(other) => panic!("publish: unexpected error {other}"),
            }
        }
        Err(AttachError::Corrupt { .. }) => seen.attach_refused += 1,
        Err(other) => panic!("producer attach: unexpected error {other}"),
    }
}

/// Aborts the process, naming the image, if one image runs past [`IMAGE_DEADLINE`].
struct Watchdog {
    current: Arc<Mutex<(String, Instant)>>,
    done: Arc<AtomicBool>,
}

impl Watchdog {
    fn start() -> Self {
        let current = Arc::new(Mutex::new((String::from("(none yet)"), Instant::now())));
        let done = Arc::new(AtomicBool::new(false));
        let (watched, finished) = (current.clone(), done.clone());
        std::thread::spawn(move || {
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let (image, since) = watched.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if since.elapsed() > IMAGE_DEADLINE {
                    eprintln!("image {image} hung for more than {IMAGE_DEADLINE:?}: aborting");
                    std::process::abort();
                }
            }
        });
        Watchdog { current, done }
    }

    fn now_on(&self, image: String) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = (image, Instant::now());
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// Writes `image` with `mutations` applied into the segment, and runs it.
fn run_image(location: &Location, image: &[u8], mutations: &[(usize, u64)], seen: &mut Outcomes) {
    let mut bytes = image.to_vec();
    for &(offset, value) in mutations {
        bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
    }
    poke(location, 0, &bytes);
    exercise(location, seen);
}

#[test]
fn mutated_segment_images_never_crash_hang_or_panic() {
    let fx = Fixture::new("hostile-fuzz");
    let (location, image, mutations) = valid_image(&fx);
    let watchdog = Watchdog::start();
    let mut seen = Outcomes::default();
    let started = Instant::now();
    // Every mutation alone.
    for mutation in &mutations {
        watchdog.now_on(mutation.name.clone());
        run_image(&location, &image, &mutation.writes, &mut seen);
    }
    let single = seen.images;
    // Then two to four at once, from a fixed seed.
    let cases = std::env::var("SHMRING_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(FUZZ_CASES);
    let strategy = proptest::collection::vec(0..mutations.len(), 2..=4);
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[0x5E; 32]));
    for _ in 0..cases {
        let picked = strategy.new_tree(&mut runner).expect("a case").current();
        let names: Vec<&str> = picked.iter().map(|&m| mutations[m].name.as_str()).collect();
        watchdog.now_on(names.join(", "));
        let writes: Vec<(usize, u64)> = picked.iter().flat_map(|&m| mutations[m].writes.iter().copied()).collect();
        run_image(&location, &image, &writes, &mut seen);
    }
    drop(watchdog);
    let took = started.elapsed();
    assert!(
        seen.opened > 0
            && seen.open_refused > 0
            && seen.attach_refused > 0
            && seen.records_read > 0
            && seen.read_corrupt > 0
            && seen.peek_corrupt > 0
            && seen.published > 0,
        "some outcome never happened: {seen:?}"
    );
    reliability::report(
        "hostile_image_fuzzer",
        "segment images mutated word by word with boundary values in every field, then up to 4 at once",
        seen.images,
        &format!("no signal, panic or hang in {:.1} s; every refusal a typed error", took.as_secs_f64()),
        &Figures::NoRecords,
        json!({
            "mutations": mutations.len(),
            "single_mutations": single,
            "random_combinations": cases,
            "opened": seen.opened,
            "open_refused": seen.open_refused,
            "producer_attached": seen.producer_attached,
            "consumer_attached": seen.consumer_attached,
            "attach_refused": seen.attach_refused,
            "records_read": seen.records_read,
            "read_corrupt": seen.read_corrupt,
            "peeks_ok": seen.peeks_ok,
            "peek_corrupt": seen.peek_corrupt,
            "published": seen.published,
            "publish_refused": seen.publish_refused,
        }),
    );
}

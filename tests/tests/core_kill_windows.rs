//! What a kill in the middle of a publish or a release leaves behind, reproduced exactly.
//!
//! A random `SIGKILL` (as in `core_cross_process`) lands in a window of a few stores only
//! rarely, so these tests build the state such a kill leaves by hand: a producer stores
//! its counters, then its cursor (`publish_pending`); a consumer stores its cursor, then
//! its counters (`release_to`). Killed between the two, each leaves counters that do not
//! match the cursors, and a successor must not carry the mismatch on for the life of
//! the segment.
//!
//! The state is written through the header's public layout ([`shm_core::layout`]),
//! with the values the library itself would have written.

use std::num::NonZeroUsize;

use nix::sys::mman::{MapFlags, ProtFlags};
use shm_core::layout::{HEADER_SIZE, Header};
use shm_core::{Counter, Location, Segment, TryReadError};
use shmring_tests::{Backend, Fixture};

const RECORDS: [&[u8]; 3] = [b"one", b"two", b"three"];

/// Calls `f` with the header of the posix segment at `location`, mapped separately.
fn with_header(location: &Location, f: impl FnOnce(&Header)) {
    let Location::Posix(name) = location else { panic!("{location} is not posix") };
    let file = std::fs::OpenOptions::new().read(true).write(true).open(name.dev_shm_path()).expect("open");
    let len = NonZeroUsize::new(HEADER_SIZE).expect("HEADER_SIZE is not zero");
    // SAFETY: a new shared mapping of the first HEADER_SIZE bytes of a segment (which is
    // larger); it aliases no Rust object.
    let ptr = unsafe {
        nix::sys::mman::mmap(None, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, &file, 0)
    }
    .expect("mmap");
    // SAFETY: the mapping is HEADER_SIZE bytes, page-aligned, and `Header` is all atomics
    // (valid for any bytes); it lives until the munmap below, after `f` returns.
    f(unsafe { ptr.cast::<Header>().as_ref() });
    // SAFETY: unmapping exactly what was mapped above; `f` has returned, so nothing
    // borrows it.
    unsafe { nix::sys::mman::munmap(ptr, HEADER_SIZE) }.expect("munmap");
}

fn set_counter(location: &Location, counter: Counter, value: u64) {
    // SeqCst: a plain store, as the library's own; nothing else runs meanwhile.
    with_header(location, |h| h.stats[counter.slot()].0.value.store(value, std::sync::atomic::Ordering::SeqCst));
}

fn payload_bytes(records: &[&[u8]]) -> u64 {
    records.iter().map(|r| r.len() as u64).sum()
}

#[test]
fn a_producer_killed_between_its_counter_and_cursor_stores() {
    let fx = Fixture::new("kill-window-producer");
    let location = fx.location(Backend::Posix);
    let segment = Segment::builder(location.clone()).capacity(4096).create().expect("create");
    let mut producer = segment.producer().expect("producer");
    for record in RECORDS {
        producer.try_publish(record).expect("publish");
    }
    drop(producer);
    // Publishing "four", it stored its counters and was killed before its cursor: the
    // record is not in the ring, but the counters say it is.
    set_counter(&location, Counter::TotalProduced, 4);
    set_counter(&location, Counter::BytesProduced, payload_bytes(&RECORDS) + 4);

    // Its successor resumes after "three" and publishes "four" again.
    let mut producer = segment.producer().expect("successor");
    assert_eq!(producer.last_committed(), Some((0, b"three".to_vec())));
    producer.try_publish(b"four").expect("publish");
    let mut consumer = segment.consumer().expect("consumer");
    for record in [RECORDS[0], RECORDS[1], RECORDS[2], b"four"] {
        assert_eq!(&*consumer.try_read().expect("a record"), record);
    }
    assert_eq!(consumer.try_read().unwrap_err(), TryReadError::Empty);

    // Four records went through an empty ring; the statistics must say so.
    let stats = segment.stats();
    assert_eq!(
        (stats.total_produced, stats.bytes_produced, stats.records_in_flight),
        (4, payload_bytes(&RECORDS) + 4, 0),
        "after a producer killed between its counter and cursor stores: {stats:#?}"
    );
}

#[test]
fn a_consumer_killed_between_its_cursor_and_counter_stores() {
    let fx = Fixture::new("kill-window-consumer");
    let location = fx.location(Backend::Posix);
    let segment = Segment::builder(location.clone()).capacity(4096).create().expect("create");
    let mut producer = segment.producer().expect("producer");
    for record in RECORDS {
        producer.try_publish(record).expect("publish");
    }
    let mut consumer = segment.consumer().expect("consumer");
    for record in RECORDS {
        assert_eq!(&*consumer.try_read().expect("a record"), record);
    }
    drop(consumer);
    // Releasing "three", it stored its cursor and was killed before its counters: the
    // record is released, but the counters say it is not.
    set_counter(&location, Counter::TotalConsumed, 2);
    set_counter(&location, Counter::BytesConsumed, payload_bytes(&RECORDS[..2]));

    // Its successor finds the ring empty (the record was released) and goes on.
    let mut consumer = segment.consumer().expect("successor");
    assert_eq!(consumer.try_read().unwrap_err(), TryReadError::Empty);
    producer.try_publish(b"four").expect("publish");
    assert_eq!(&*consumer.try_read().expect("a record"), b"four");

    // Four records went through an empty ring; the statistics must say so.
    let stats = segment.stats();
    assert_eq!(
        (stats.total_consumed, stats.bytes_consumed, stats.records_in_flight),
        (4, payload_bytes(&RECORDS) + 4, 0),
        "after a consumer killed between its cursor and counter stores: {stats:#?}"
    );
}

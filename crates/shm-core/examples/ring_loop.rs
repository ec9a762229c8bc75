//! A fixed amount of ring work for instruction counting (`valgrind --tool=callgrind`),
//! the one figure that this noisy shared machine measures exactly: one thread pushes
//! `CHUNK` 64-byte records one call at a time, then reads them back one call at a time,
//! `N` records in all (first argument, default 10^5). Run it at two sizes and take the
//! difference per record (see docs/BENCHMARKS.md):
//!
//! ```sh
//! cargo build --release -p shm-core --example ring_loop
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/ring_loop 100000
//! ```
//!
//! A second argument picks another ring kind for the same one-call-each loop:
//! * `mpsc`: an mpsc ring with one producer;
//! * `broadcast [C]`: a broadcast ring, every record read by each of `C` consumers
//!   (default 1); divide the difference by `C` for the cost per consumer;
//! * `mpmc`: a work queue with one producer and one worker (take, then acknowledge).

use std::hint::black_box;

use shm_core::WaitStrategy;
use shm_core::ring::heap::spsc_pair;

const RECORD: usize = 64;
const CHUNK: u64 = 16;

fn main() {
    let n: u64 = std::env::args().nth(1).map_or(100_000, |a| a.parse().expect("a record count"));
    let records = match std::env::args().nth(2).as_deref() {
        Some("mpsc") => {
            let ring = shm_core::ring::heap::MpscHeapRing::new(64 * 1024, RECORD as u64, WaitStrategy::Spin)
                .expect("valid heap ring geometry");
            let (mut producer, mut consumer) = (ring.producer(0), ring.consumer());
            one_call_loop(
                n,
                |record| producer.try_publish(black_box(record)).expect("room for a chunk"),
                || seq_of(&consumer.try_read().expect("a record is there")),
            )
        }
        Some("broadcast") => {
            let consumers: usize = std::env::args().nth(3).map_or(1, |a| a.parse().expect("a consumer count"));
            let ring = shm_core::ring::heap::BroadcastHeapRing::new(64 * 1024, false, WaitStrategy::Spin)
                .expect("valid heap ring geometry");
            let mut producer = ring.producer();
            let mut readers: Vec<_> = (0..consumers).map(|i| ring.consumer(&format!("reader-{i}"))).collect();
            one_call_loop(
                n,
                |record| producer.try_publish(black_box(record)).expect("room for a chunk"),
                || {
                    // No allocation per read: the loop measures the ring, not the allocator.
                    let mut seqs = readers.iter_mut().map(|r| seq_of(r.try_read().expect("a record is there").data));
                    let first = seqs.next().expect("at least one consumer");
                    assert!(seqs.all(|seq| seq == first), "every consumer reads the same record");
                    first
                },
            )
        }
        Some("mpmc") => {
            let ring = shm_core::ring::heap::MpscHeapRing::new(64 * 1024, RECORD as u64, WaitStrategy::Spin)
                .expect("valid heap ring geometry");
            let (mut producer, mut worker) = (ring.producer(0), ring.worker(0));
            one_call_loop(
                n,
                |record| producer.try_publish(black_box(record)).expect("room for a chunk"),
                || {
                    let job = worker.try_take().expect("a record is there");
                    let seq = seq_of(&job);
                    job.ack().expect("no corruption");
                    seq
                },
            )
        }
        Some("batch") => batch_loop(n),
        _ => {
            let (mut producer, mut consumer) =
                spsc_pair(64 * 1024, RECORD as u64, WaitStrategy::Spin).expect("valid heap ring geometry");
            one_call_loop(
                n,
                |record| producer.try_publish(black_box(record)).expect("room for a chunk"),
                || seq_of(&consumer.try_read().expect("a record is there")),
            )
        }
    };
    println!("{records} records");
}

/// The sequence number a record starts with.
fn seq_of(record: &[u8]) -> u64 {
    u64::from_le_bytes(record[..8].try_into().expect("64-byte records"))
}

/// Publishes `CHUNK` records one `publish` call each, then reads them back one `read`
/// call each (it returns the record's sequence number), `n` records in all; returns how
/// many it read, each checked to be the next in sequence.
fn one_call_loop(n: u64, mut publish: impl FnMut(&[u8]), mut read: impl FnMut() -> u64) -> u64 {
    let mut record = [0x5au8; RECORD];
    let (mut seq, mut expect) = (0u64, 0u64);
    while seq < n {
        for _ in 0..CHUNK {
            record[..8].copy_from_slice(&seq.to_le_bytes());
            publish(&record);
            seq += 1;
        }
        for _ in 0..CHUNK {
            assert_eq!(read(), expect, "record out of sequence");
            expect += 1;
        }
    }
    expect
}

/// The spsc ring through its batch calls: `CHUNK` records per `Producer::batch` and per
/// `Consumer::read_batch`.
fn batch_loop(n: u64) -> u64 {
    let (mut producer, mut consumer) =
        spsc_pair(64 * 1024, RECORD as u64, WaitStrategy::Spin).expect("valid heap ring geometry");
    let mut record = [0x5au8; RECORD];
    let (mut seq, mut expect) = (0u64, 0u64);
    while seq < n {
        let mut b = producer.batch();
        for _ in 0..CHUNK {
            record[..8].copy_from_slice(&seq.to_le_bytes());
            b.try_push(black_box(&record)).expect("room for a chunk");
            seq += 1;
        }
        drop(b);
        let got = consumer
            .read_batch(CHUNK as usize, |r| {
                assert_eq!(seq_of(r.data), expect, "record out of sequence");
                expect += 1;
                Ok::<(), ()>(())
            })
            .expect("no corruption");
        assert_eq!(got as u64, CHUNK);
    }
    expect
}

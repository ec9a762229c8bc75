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
//! A second argument `mpsc` runs the same loop through an mpsc ring with one producer.

use std::hint::black_box;

use shm_core::WaitStrategy;
use shm_core::ring::heap::spsc_pair;

const RECORD: usize = 64;
const CHUNK: u64 = 16;

fn main() {
    let n: u64 = std::env::args().nth(1).map_or(100_000, |a| a.parse().expect("a record count"));
    let mode = std::env::args().nth(2);
    if mode.as_deref() == Some("mpsc") {
        return mpsc_loop(n);
    }
    let batch = mode.as_deref() == Some("batch");
    let (mut producer, mut consumer) =
        spsc_pair(64 * 1024, RECORD as u64, WaitStrategy::Spin).expect("valid heap ring geometry");
    let mut record = [0x5au8; RECORD];
    let mut seq = 0u64;
    let mut expect = 0u64;
    while seq < n {
        if batch {
            let mut b = producer.batch();
            for _ in 0..CHUNK {
                record[..8].copy_from_slice(&seq.to_le_bytes());
                b.try_push(black_box(&record)).expect("room for a chunk");
                seq += 1;
            }
            drop(b);
            let got = consumer
                .read_batch(CHUNK as usize, |r| {
                    let s = u64::from_le_bytes(r.data[..8].try_into().expect("64-byte records"));
                    assert_eq!(s, expect, "record out of sequence");
                    expect += 1;
                    Ok::<(), ()>(())
                })
                .expect("no corruption");
            assert_eq!(got as u64, CHUNK);
        } else {
            for _ in 0..CHUNK {
                record[..8].copy_from_slice(&seq.to_le_bytes());
                producer.try_publish(black_box(&record)).expect("room for a chunk");
                seq += 1;
            }
            for _ in 0..CHUNK {
                let guard = consumer.try_read().expect("a record is there");
                let s = u64::from_le_bytes(guard[..8].try_into().expect("64-byte records"));
                assert_eq!(s, expect, "record out of sequence");
                expect += 1;
            }
        }
    }
    println!("{expect} records");
}

/// The one-call-each loop through an mpsc ring with one live producer.
fn mpsc_loop(n: u64) {
    let ring = shm_core::ring::heap::MpscHeapRing::new(64 * 1024, RECORD as u64, WaitStrategy::Spin)
        .expect("valid heap ring geometry");
    let (mut producer, mut consumer) = (ring.producer(0), ring.consumer());
    let mut record = [0x5au8; RECORD];
    let (mut seq, mut expect) = (0u64, 0u64);
    while seq < n {
        for _ in 0..CHUNK {
            record[..8].copy_from_slice(&seq.to_le_bytes());
            producer.try_publish(black_box(&record)).expect("room for a chunk");
            seq += 1;
        }
        for _ in 0..CHUNK {
            let guard = consumer.try_read().expect("a record is there");
            let s = u64::from_le_bytes(guard[..8].try_into().expect("64-byte records"));
            assert_eq!(s, expect, "record out of sequence");
            expect += 1;
        }
    }
    println!("{expect} records");
}

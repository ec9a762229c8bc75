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
    let mode = std::env::args().nth(2);
    match mode.as_deref() {
        Some("mpsc") => return mpsc_loop(n),
        Some("broadcast") => {
            let consumers = std::env::args().nth(3).map_or(1, |a| a.parse().expect("a consumer count"));
            return broadcast_loop(n, consumers);
        }
        Some("mpmc") => return mpmc_loop(n),
        _ => {}
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

/// The one-call-each loop through a broadcast ring: every record is read by each of
/// `consumers` named consumers.
fn broadcast_loop(n: u64, consumers: usize) {
    let ring = shm_core::ring::heap::BroadcastHeapRing::new(64 * 1024, false, WaitStrategy::Spin)
        .expect("valid heap ring geometry");
    let mut producer = ring.producer();
    let mut readers: Vec<_> = (0..consumers).map(|i| ring.consumer(&format!("reader-{i}"))).collect();
    let mut record = [0x5au8; RECORD];
    let (mut seq, mut expect) = (0u64, 0u64);
    while seq < n {
        for _ in 0..CHUNK {
            record[..8].copy_from_slice(&seq.to_le_bytes());
            producer.try_publish(black_box(&record)).expect("room for a chunk");
            seq += 1;
        }
        for reader in &mut readers {
            for i in 0..CHUNK {
                let r = reader.try_read().expect("a record is there");
                let s = u64::from_le_bytes(r.data[..8].try_into().expect("64-byte records"));
                assert_eq!(s, expect + i, "record out of sequence");
            }
        }
        expect += CHUNK;
    }
    println!("{expect} records to each of {consumers} consumer(s)");
}

/// The one-call-each loop through a work queue with one producer and one worker, which
/// takes and acknowledges each record.
fn mpmc_loop(n: u64) {
    let ring = shm_core::ring::heap::MpscHeapRing::new(64 * 1024, RECORD as u64, WaitStrategy::Spin)
        .expect("valid heap ring geometry");
    let (mut producer, mut worker) = (ring.producer(0), ring.worker(0));
    let mut record = [0x5au8; RECORD];
    let (mut seq, mut expect) = (0u64, 0u64);
    while seq < n {
        for _ in 0..CHUNK {
            record[..8].copy_from_slice(&seq.to_le_bytes());
            producer.try_publish(black_box(&record)).expect("room for a chunk");
            seq += 1;
        }
        for _ in 0..CHUNK {
            let job = worker.try_take().expect("a record is there");
            let s = u64::from_le_bytes(job[..8].try_into().expect("64-byte records"));
            assert_eq!(s, expect, "record out of sequence");
            job.ack().expect("no corruption");
            expect += 1;
        }
    }
    println!("{expect} records");
}

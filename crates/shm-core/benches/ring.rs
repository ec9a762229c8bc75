//! In-process cost of the spsc ring over heap memory: one thread alternates producing
//! and consuming 64-byte records, so the figures are the ring's own instructions and
//! cache traffic, with no second core, no syscall and no waiting. For regression
//! tracking; the two-process figures come from `shmctl bench` (see `docs/BENCHMARKS.md`).
//!
//! `cargo bench -p shm-core --bench ring`

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use shm_core::WaitStrategy;
use shm_core::ring::heap::spsc_pair;

/// Payload bytes per record; the first 8 are a sequence number the consumer checks.
const RECORD: usize = 64;
/// Ring data bytes: small enough to stay in L2, large enough to wrap only every ~900 records.
const CAPACITY: u64 = 64 * 1024;
/// Records per producer batch and per `read_batch`.
const BATCH: usize = 32;

/// A 64-byte record carrying `seq` in its first 8 bytes.
fn record(seq: u64) -> [u8; RECORD] {
    let mut r = [0x5a; RECORD];
    r[..8].copy_from_slice(&seq.to_le_bytes());
    r
}

/// The sequence number in a record's first 8 bytes, checked against `expected`.
fn check(expected: u64, data: &[u8]) {
    let seq = u64::from_le_bytes(data[..8].try_into().expect("records are 64 bytes"));
    assert_eq!(seq, expected, "record out of sequence");
}

fn spsc_heap(c: &mut Criterion) {
    let pair = || spsc_pair(CAPACITY, RECORD as u64, WaitStrategy::Spin).expect("valid heap ring geometry");

    let mut group = c.benchmark_group("spsc_heap_64B");
    group.throughput(Throughput::Elements(1));
    group.bench_function("claim_commit_read_release", |b| {
        let (mut producer, mut consumer) = pair();
        let mut seq = 0u64;
        b.iter(|| {
            let mut claim = producer.try_claim(RECORD).expect("an empty ring has room");
            claim.copy_from_slice(&record(seq));
            claim.commit().expect("a heap ring has no flush policy");
            let guard = consumer.try_read().expect("a record was just committed");
            check(seq, black_box(&guard));
            drop(guard);
            seq += 1;
        });
    });
    group.bench_function("try_publish_try_read", |b| {
        let (mut producer, mut consumer) = pair();
        let mut seq = 0u64;
        b.iter(|| {
            producer.try_publish(black_box(&record(seq))).expect("an empty ring has room");
            check(seq, black_box(&consumer.try_read().expect("a record was just published")));
            seq += 1;
        });
    });
    group.finish();

    let mut group = c.benchmark_group("spsc_heap_64B_batch32");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("batch_try_push_read_batch", |b| {
        let (mut producer, mut consumer) = pair();
        let mut seq = 0u64;
        b.iter(|| {
            let mut batch = producer.batch();
            for i in 0..BATCH as u64 {
                batch.try_push(black_box(&record(seq + i))).expect("32 records fit in an empty ring");
            }
            drop(batch);
            let read = consumer
                .read_batch(BATCH, |r| {
                    check(seq, black_box(r.data));
                    seq += 1;
                    Ok::<(), ()>(())
                })
                .expect("the sink accepts every record");
            assert_eq!(read, BATCH);
        });
    });
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    spsc_heap(&mut criterion);
    criterion.final_summary();
}

//! Library edges of issue 12, each with its `RELIABILITY` row (the library's own unit
//! tests and loom models check the same from inside; these go through the public API):
//!
//! - counter ordering: while a producer and a consumer stream through a 4 KiB ring, a
//!   third thread reads the segment's statistics over and over and never sees more
//!   records consumed than produced (each side stores its totals before its cursor);
//! - the anon backend's memfd is sealed: no `ftruncate` of it, by any holder, takes;
//! - `read_batch_durable` whose sink or durability hook panics, caught by a caller that
//!   keeps the consumer: nothing the hook did not see is released, and what comes again
//!   is delivered once in the batches whose hook returned.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use shm_core::{Location, Segment, TryClaimError, TryReadError};
use shmring_tests::ledger::{Evidence, Figures, OWN_LEDGER, OWN_READER};
use shmring_tests::reliability::report;
use shmring_tests::{Backend, Fixture};

/// Records streamed while the statistics are read.
const STREAMED: u64 = 200_000;

fn segment_at(location: Location) -> Segment {
    Segment::builder(location).capacity(4096).create().expect("create a 4 KiB segment")
}

#[test]
fn statistics_never_show_more_consumed_than_produced() {
    let fx = Fixture::new("counter-order");
    let segment = segment_at(fx.location(Backend::File));
    let done = AtomicBool::new(false);
    let (acknowledged, delivered, reads, inverted) = std::thread::scope(|s| {
        let producing = s.spawn(|| {
            let mut producer = segment.producer().expect("attach a producer");
            let mut acknowledged = Vec::with_capacity(STREAMED as usize);
            for seq in 0..STREAMED {
                loop {
                    match producer.try_publish(&seq.to_le_bytes()) {
                        Ok(()) => break,
                        Err(TryClaimError::Full) => std::thread::yield_now(),
                        Err(e) => panic!("publish {seq}: {e}"),
                    }
                }
                acknowledged.push(seq);
            }
            acknowledged
        });
        let consuming = s.spawn(|| {
            let mut consumer = segment.consumer().expect("attach a consumer");
            let mut delivered = Vec::with_capacity(STREAMED as usize);
            let started = Instant::now();
            while (delivered.len() as u64) < STREAMED {
                assert!(started.elapsed() < Duration::from_secs(120), "the stream stalled");
                match consumer.try_read() {
                    Ok(record) => delivered.push(record.as_ref().try_into().map_or(u64::MAX, u64::from_le_bytes)),
                    Err(TryReadError::Empty) => std::thread::yield_now(),
                    Err(e) => panic!("read: {e}"),
                }
            }
            done.store(true, Ordering::Relaxed);
            delivered
        });
        let (mut reads, mut inverted) = (0u64, Vec::new());
        while !done.load(Ordering::Relaxed) {
            let stats = segment.stats();
            reads += 1;
            if stats.total_consumed > stats.total_produced && inverted.len() < 5 {
                inverted.push(format!("consumed {} > produced {}", stats.total_consumed, stats.total_produced));
            }
        }
        (producing.join().expect("producer"), consuming.join().expect("consumer"), reads, inverted)
    });
    let evidence = Evidence::compare(OWN_LEDGER, acknowledged, OWN_READER, delivered);
    let outcome = if inverted.is_empty() && evidence.exact() {
        format!("pass: {reads} statistics reads while streaming, none with consumed > produced")
    } else {
        format!("failed: {} of {reads} reads inverted ({})", inverted.len(), inverted.join("; "))
    };
    report(
        "counters_consumed_never_above_produced",
        "a third thread reads the statistics while 2*10^5 records stream through a 4 KiB ring",
        reads,
        &outcome,
        &Figures::Counted(evidence.clone()),
        json!({ "inverted_reads": inverted.len() }),
    );
    assert!(inverted.is_empty(), "{outcome}");
    evidence.assert_exact();
}

/// The anon segment's memfd, found among this process's descriptors by its name.
fn memfd_of_this_process() -> i32 {
    let fds = std::fs::read_dir("/proc/self/fd").expect("list /proc/self/fd");
    let found = fds.filter_map(Result::ok).find(|entry| {
        std::fs::read_link(entry.path()).is_ok_and(|target| target.to_string_lossy().contains("memfd:shmring-anon"))
    });
    let entry = found.expect("the anon segment's memfd among /proc/self/fd");
    entry.file_name().to_string_lossy().parse().expect("a descriptor number")
}

#[test]
fn an_anon_segment_cannot_be_truncated_or_grown() {
    // The only anon segment of this test binary: the others are files, so the memfd
    // found by name is this one.
    let segment = segment_at(Location::Anon);
    let fd = memfd_of_this_process();
    // SAFETY: the descriptor is the segment's memfd, open for as long as `segment` lives,
    // which outlives this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let size = nix::sys::stat::fstat(fd).expect("fstat").st_size;
    let attempts = [0, 1, size / 2, size - 1, size + 1, size * 2];
    let taken: Vec<String> = attempts
        .iter()
        .filter_map(|&to| match nix::unistd::ftruncate(fd, to) {
            Err(nix::errno::Errno::EPERM) => None,
            other => Some(format!("ftruncate({}, {to}) gave {other:?}", fd.as_raw_fd())),
        })
        .collect();
    let size_after = nix::sys::stat::fstat(fd).expect("fstat").st_size;
    let kept = taken.is_empty() && size_after == size;
    report(
        "anon_memfd_sealed",
        "ftruncate of an anon segment's memfd to 0, 1, half, size-1, size+1 and twice its size",
        attempts.len() as u64,
        &if kept {
            format!("pass: every ftruncate refused (EPERM, F_SEAL_SHRINK | F_SEAL_GROW); size stays {size}")
        } else {
            format!("failed: {}; size {size} -> {size_after}", taken.join("; "))
        },
        &Figures::NoRecords,
        serde_json::Value::Null,
    );
    assert!(kept, "{taken:?}, size {size} -> {size_after}");
    // Still a working ring.
    shmring_tests::ledger::stream_through(&segment, 100).assert_exact();
}

#[test]
fn a_panicking_sink_or_hook_releases_nothing_the_hook_did_not_see() {
    const RECORDS: u64 = 40;
    let fx = Fixture::new("durable-panic");
    let segment = segment_at(fx.location(Backend::File));
    let acknowledged = shmring_tests::ledger::publish_own(&segment, 0..RECORDS);
    let mut consumer = segment.consumer().expect("attach a consumer");
    let released = |segment: &Segment| segment.stats().total_consumed;
    // The reader: what the sink took in batches whose hook returned Ok (what a durable
    // sink keeps), and nothing of a batch that panicked.
    let (mut delivered, mut panics, mut rounds) = (Vec::new(), 0u64, 0u64);
    let seq_of = |data: &[u8]| data.try_into().map_or(u64::MAX, u64::from_le_bytes);
    // Until a batch that went through finds nothing left.
    loop {
        rounds += 1;
        assert!(rounds < 100, "no progress after {rounds} batches");
        let before = released(&segment);
        let mut batch = Vec::new();
        // Every third round the sink panics on its third record, every third the hook
        // panics, the others go through: 4 records a batch.
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            consumer.read_batch_durable(
                4,
                |record| -> Result<(), ()> {
                    if rounds % 3 == 1 && batch.len() == 2 {
                        panic!("the sink panics");
                    }
                    batch.push(seq_of(record.data));
                    Ok(())
                },
                |_| if rounds % 3 == 2 { panic!("the hook panics") } else { Ok(()) },
            )
        }));
        match outcome {
            Ok(result) => {
                if result.expect("a batch") == 0 {
                    break;
                }
                delivered.extend(batch);
            }
            Err(_) => {
                panics += 1;
                assert_eq!(released(&segment), before, "a batch whose sink or hook panicked released records");
            }
        }
    }
    let evidence = Evidence::compare(
        "this test's producer (each publish that returned Ok)",
        acknowledged,
        "this test's durable sink (records of batches whose hook returned)",
        delivered,
    );
    report(
        "read_batch_durable_panic_guard",
        "the sink panics mid-batch or the durability hook panics; the caller catches it and keeps the consumer",
        panics,
        &if evidence.exact() {
            format!(
                "pass: {panics} panics caught in {rounds} batches, none released anything; every record delivered once"
            )
        } else {
            format!(
                "failed: {panics} panics caught in {rounds} batches; lost {}, duplicated {}",
                evidence.lost, evidence.duplicated
            )
        },
        &Figures::Counted(evidence.clone()),
        json!({ "batches": rounds }),
    );
    evidence.assert_exact();
    assert!(panics >= 2, "the test made only {panics} panics");
}

//! The anonymous backend across `fork`: a memfd segment created here and shared with a
//! forked child, the only way another process can reach it.
//!
//! - `anon_stream`: the child consumes 10^7 records of mixed sizes through a 64 KiB
//!   ring while this process produces them, with the same checks as the named backends
//!   in `core_cross_process` (sequence, checksum, counters, no lost wake-up).
//! - `anon_killed_producer`: a child holding the producer role is reported alive, keeps
//!   the role from this process, is reported dead once killed, and its role can be taken.
//!
//! Runs without the test harness (`harness = false`), so the process is single-threaded
//! when it forks and the child may allocate and print. A child never returns into the
//! test: it leaves with `_exit`, so it cannot run the fixture's `Drop` (which would kill
//! its siblings and remove the parent's files).

use std::time::{Duration, Instant};

use shm_core::{AttachError, Liveness, Role, Segment};
use shmring_tests::forked::{self, fork_child};
use shmring_tests::stream::{self, Options};
use shmring_tests::{Backend, Fixture, Summary, records, wait_until};

const RECORDS: u64 = 10_000_000;
const CAPACITY: u64 = 64 * 1024;
const DEADLINE: Duration = Duration::from_secs(240);
const TIMEOUT: Option<Duration> = Some(Duration::from_secs(20));

fn anon_stream() {
    let fx = Fixture::new("anon-stream");
    let segment = Segment::builder(fx.location(Backend::Anon)).capacity(CAPACITY).create().expect("create");
    let report = fx.path("consumer-report");
    let consumer = fork_child(&fx, "consumer", || {
        let mut consumer = segment.consumer().expect("attach the consumer");
        let opts = Options { total: RECORDS, timeout: TIMEOUT, ..Options::default() };
        match stream::consume(&segment, &mut consumer, &opts) {
            Ok(summary) => std::fs::write(&report, summary).map_or(74, |()| 0),
            Err(e) => {
                eprintln!("anon consumer: {e}");
                65
            }
        }
    });
    let started = Instant::now();
    let mut producer = segment.producer().expect("attach the producer");
    let opts = Options { total: RECORDS, timeout: TIMEOUT, ..Options::default() };
    stream::produce(&segment, &mut producer, &opts).unwrap_or_else(|e| panic!("producer: {e}"));
    fx.wait(&consumer, DEADLINE).assert_success();
    let elapsed = started.elapsed();

    let summary = Summary::parse(&std::fs::read_to_string(&report).expect("the consumer's report"));
    let bytes = records::total_len(0..RECORDS, segment.geometry().max_record as usize);
    assert_eq!(
        (summary.u64("first"), summary.u64("last"), summary.u64("count"), summary.u64("bytes")),
        (0, RECORDS - 1, RECORDS, bytes)
    );
    let stats = segment.stats();
    assert_eq!((stats.total_produced, stats.total_consumed), (RECORDS, RECORDS), "{stats:#?}");
    assert_eq!((stats.bytes_produced, stats.bytes_consumed), (bytes, bytes), "{stats:#?}");
    assert_eq!(stats.get("producer_missed_wakes"), Some(0), "{stats:#?}");
    assert_eq!(stats.get("consumer_missed_wakes"), Some(0), "{stats:#?}");
    assert_eq!(stats.read_cursor, stats.write_cursor, "{stats:#?}");
    assert!(stats.write_cursor / CAPACITY > 10_000, "the ring barely wrapped: {stats:#?}");
    eprintln!("anon: {RECORDS} records, {bytes} payload bytes in {elapsed:.2?}");
}

fn anon_killed_producer() {
    let fx = Fixture::new("anon-killed-producer");
    let segment = Segment::builder(fx.location(Backend::Anon)).capacity(4096).create().expect("create");
    let child = fork_child(&fx, "producer", || {
        let _producer = segment.producer().expect("attach the producer");
        stream::stall();
    });
    let holder = || segment.participants().into_iter().find(|p| p.role == Some(Role::Producer));
    wait_until(Duration::from_secs(10), "the child is the live producer", || {
        holder().is_some_and(|p| p.liveness == Liveness::Alive && p.pid == child.pid())
    });
    match segment.producer() {
        Err(AttachError::RoleTaken { role: Role::Producer, pid, .. }) => assert_eq!(pid, Some(child.pid())),
        other => panic!("a second producer beside a live one: {other:?}"),
    }
    let killed = fx.kill(&child);
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&killed.status), Some(9), "{killed:?}");
    assert_eq!(holder().map(|p| (p.liveness, p.pid)), Some((Liveness::Dead, child.pid())));
    let _producer = segment.producer().expect("the dead producer's role is free");
    assert_eq!(holder().map(|p| (p.liveness, p.pid)), Some((Liveness::Alive, std::process::id())));
}

fn main() {
    forked::main(&[("anon_stream", anon_stream), ("anon_killed_producer", anon_killed_producer)]);
}

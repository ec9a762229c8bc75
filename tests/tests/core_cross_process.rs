//! A producer and a consumer in two separate processes, on every named backend.
//!
//! - `stream_*`: 10^7 records of mixed sizes through a 64 KiB ring (so it wraps, with
//!   padding frames, tens of thousands of times). The consumer checks every record
//!   (sequence: nothing lost, duplicated or reordered; checksum: nothing torn); the
//!   segment's counters must agree, with no lost wake-up on either side.
//! - `stream_posix_futex`: 10^6 records with the futex strategy, which sleeps at every
//!   wait, so the wake-up protocol runs all the time.
//! - `producer_restart_*` / `consumer_restart_*`: that side is killed with `SIGKILL` at a
//!   random point while the other side runs throughout; a successor resumes (a producer
//!   after the ring's last committed record, a consumer at its read cursor) and is
//!   killed in the middle of a record (holding a half-written claim, or a checked record
//!   unreleased); a third finishes. Each successor must start within what its
//!   predecessor was known to have finished, the last exactly at the unfinished record,
//!   and the consumer side must see every record exactly once and none torn.
//! - `*_killed_many_times`: the same with 100 random kills in a row (posix).
//!
//! The peers publish their progress in a small shared file (see `Progress`), which lets
//! the test kill them at a known point and bound what they had done: a kill can land
//! between a ring operation and the progress store that reports it, so each check is
//! "within these bounds", never "close enough". The anonymous backend, which needs
//! `fork`, is covered by `core_anon_fork`.

use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use shm_core::ring::frame::framed_len;
use shm_core::{Liveness, Location, Role, Segment, StatsSnapshot};
use shmring_tests::records::{self, splitmix64};
use shmring_tests::{Backend, Finished, Fixture, Proc, Progress, location_args, seed, wait_until};

const PEER: &str = env!("CARGO_BIN_EXE_ring-peer");

/// Records in each streaming test.
const STREAM_RECORDS: u64 = 10_000_000;
/// Records in the futex-strategy stream (each wait is a syscall: slower per record).
const FUTEX_RECORDS: u64 = 1_000_000;
/// Records in each restart test: enough that every kill lands mid-stream.
const RESTART_RECORDS: u64 = 4_000_000;
/// Ring data bytes: small, so the ring wraps all the time.
const CAPACITY: u64 = 64 * 1024;
/// The longest any peer may take before the test gives up on it.
const DEADLINE: Duration = Duration::from_secs(240);
/// How long a peer may take to reach a point the test waits for.
const REACH: Duration = Duration::from_secs(60);
/// Random kills in the `*_killed_many_times` tests.
const MANY_KILLS: u64 = 100;
/// The most records a peer handles between two progress stores (a batch).
const BATCH_SLACK: u64 = records::BLOCK;

/// Two busy processes fill a 2-core machine: streams run one at a time, or they would
/// spend their time descheduled and spinning rather than streaming.
static ONE_STREAM_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_stream_at_a_time() -> MutexGuard<'static, ()> {
    ONE_STREAM_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Spawns `ring-peer <command> <backend> <name> <args...>`.
fn peer(fx: &Fixture, label: &str, command: &str, location: &Location, args: &[&str]) -> Proc {
    fx.spawn(label, Command::new(PEER).arg(command).args(location_args(location)).args(args))
}

/// A new progress file for a peer.
fn progress(fx: &Fixture, label: &str) -> (Progress, String) {
    let path = fx.path(label);
    let progress = Progress::create(&path).expect("create progress file");
    (progress, path.display().to_string())
}

/// A new segment of the test's geometry at a new location of `backend`.
fn segment(fx: &Fixture, backend: Backend) -> (Location, Segment) {
    let location = fx.location(backend);
    let segment = Segment::builder(location.clone()).capacity(CAPACITY).create().expect("create segment");
    (location, segment)
}

fn max_record(segment: &Segment) -> usize {
    segment.geometry().max_record as usize
}

/// Kills `proc`, which must still have been running (else the test proved nothing).
#[track_caller]
fn kill_running(fx: &Fixture, proc: &Proc) -> Finished {
    assert!(fx.is_running(proc), "{} exited before the test killed it: {:?}", proc.label(), fx.kill(proc));
    let killed = fx.kill(proc);
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&killed.status), Some(9), "{killed:?}");
    killed
}

/// The liveness the segment reports for `role`.
fn liveness(segment: &Segment, role: Role) -> Option<(Liveness, u32)> {
    segment.participants().into_iter().find(|p| p.role == Some(role)).map(|p| (p.liveness, p.pid))
}

/// Checks what the segment's counters say about a finished stream.
#[track_caller]
fn assert_stream_stats(stats: &StatsSnapshot, records: u64, bytes: u64) {
    assert_eq!(stats.total_produced, records, "{stats:#?}");
    assert_eq!(stats.total_consumed, records, "{stats:#?}");
    assert_eq!((stats.bytes_produced, stats.bytes_consumed), (bytes, bytes), "{stats:#?}");
    assert_no_lost_wakeups(stats);
}

#[track_caller]
fn assert_no_lost_wakeups(stats: &StatsSnapshot) {
    assert_eq!(stats.get("producer_missed_wakes"), Some(0), "{stats:#?}");
    assert_eq!(stats.get("consumer_missed_wakes"), Some(0), "{stats:#?}");
    assert_eq!(stats.read_cursor, stats.write_cursor, "the ring is not drained: {stats:#?}");
}

fn stream(backend: Backend) {
    stream_with(backend, STREAM_RECORDS, "hybrid");
}

/// Streams `count` records with the wait strategy `wait` on both sides.
fn stream_with(backend: Backend, count: u64, wait: &str) {
    let _turn = one_stream_at_a_time();
    let fx = Fixture::new(&format!("stream-{}-{wait}", backend.name()));
    let (location, segment) = segment(&fx, backend);
    let total = count.to_string();
    let started = Instant::now();
    let consumer = peer(&fx, "consumer", "consume", &location, &["--total", &total, "--wait", wait]);
    let producer = peer(&fx, "producer", "produce", &location, &["--total", &total, "--wait", wait]);
    let report = fx.wait_all(&[&producer, &consumer], DEADLINE)[1].summary();
    let elapsed = started.elapsed();

    let max = max_record(&segment);
    let bytes = records::total_len(0..count, max);
    assert_eq!(
        (report.u64("first"), report.u64("last"), report.u64("count"), report.u64("bytes")),
        (0, count - 1, count, bytes)
    );
    assert!(report.u64("via_read") > 0 && report.u64("via_batch") > 0, "both read APIs are used: {report:?}");
    let stats = segment.stats();
    assert_stream_stats(&stats, count, bytes);
    // The cursor moved by every frame plus the padding at each wrap: there was padding.
    let framed: u64 = (0..count).map(|s| framed_len(records::record_len(s, max) as u64).unwrap()).sum();
    let padding = stats.write_cursor - framed;
    assert!(padding > 0 && stats.write_cursor / CAPACITY > count / 1000, "the ring barely wrapped: {stats:#?}");
    eprintln!(
        "{} ({wait}): {count} records, {bytes} payload bytes, {} wraps, {padding} padding bytes in {elapsed:.2?} \
         ({:.1} M records/s); producer sleeps {}, consumer sleeps {}",
        backend.name(),
        stats.write_cursor / CAPACITY,
        count as f64 / elapsed.as_secs_f64() / 1e6,
        stats.get("producer_sleeps").unwrap_or(0),
        stats.get("consumer_sleeps").unwrap_or(0),
    );
}

#[test]
fn stream_posix() {
    stream(Backend::Posix);
}

#[test]
fn stream_sysv() {
    stream(Backend::Sysv);
}

#[test]
fn stream_file() {
    stream(Backend::File);
}

/// With the futex strategy every wait sleeps at once, so the wake-up protocol runs on
/// nearly every record: a lost wake-up would show as a missed-wake count (or a stall).
#[test]
fn stream_posix_futex() {
    stream_with(Backend::Posix, FUTEX_RECORDS, "futex");
}

/// Kills the `victim` side `random_kills` times at random points while the other side
/// runs throughout, then kills a successor in the middle of a record, then lets one
/// finish. The consumer side checks every record it gets; the test checks that each
/// successor started within what its predecessor was known to have finished, and that
/// the side never killed counted exactly. Returns the final statistics.
fn restart(backend: Backend, victim: Role, random_kills: u64) -> StatsSnapshot {
    let _turn = one_stream_at_a_time();
    let name = format!("{victim}-restart-{}-{random_kills}", backend.name());
    let mut rng = seed(&name);
    let mut random = |bound: u64| {
        rng = splitmix64(rng);
        rng % bound
    };
    let fx = Fixture::new(&name);
    let (location, segment) = segment(&fx, backend);
    let total = RESTART_RECORDS.to_string();
    let (victim_command, other_command) = match victim {
        Role::Producer => ("produce", "consume"),
        Role::Consumer => ("consume", "produce"),
    };
    let other = peer(&fx, "other", other_command, &location, &["--total", &total]);
    let spawn_victim = |args: &[&str]| {
        peer(&fx, &victim.to_string(), victim_command, &location, &[&["--total", &total][..], args].concat())
    };

    // What the last victim was known to have finished (`done`) and begun (`begun`): a
    // producer had published everything below `done` and claimed nothing from `begun`, a
    // consumer had released everything below `done` and checked everything below
    // `begun`. Its successor must start in `done..=begun`: anywhere else, a record was
    // lost or delivered twice. The first starts from 0 and checks that it does.
    let (mut done, mut begun) = (0, 0);
    let spread = RESTART_RECORDS / random_kills;
    let mut kills = 0;
    // A victim runs on between the moment it is seen far enough and its kill; on a
    // loaded machine that can be many thousands of records. The kills stop with an
    // eighth of the stream left, so the stall and the last victim below always have
    // records to do.
    let kills_end = RESTART_RECORDS - RESTART_RECORDS / 8;
    while kills < random_kills && done < kills_end {
        let kill = kills;
        let (progress, path) = progress(&fx, "progress");
        let resume = if kill == 0 { vec![] } else { vec!["--resume"] };
        let proc = spawn_victim(&[&resume[..], &["--progress", &path]].concat());
        // Short steps (about 4500 records at 100 kills) leave the victim's run-on past
        // its kill point most of the stream: 100 kills fit on a loaded machine too.
        let kill_after = done + spread / 20 + random(spread / 8);
        // Polled without sleeping, so the kill lands close to `kill_after`.
        let deadline = std::time::Instant::now() + REACH;
        while progress.done() < kill_after {
            fx.assert_running(&other);
            fx.assert_running(&proc);
            assert!(std::time::Instant::now() < deadline, "{victim} {kill} never got far enough");
            std::thread::yield_now();
        }
        kill_running(&fx, &proc);
        kills += 1;
        let started = progress.start().expect("the victim reported where it started");
        assert!(
            (done..=begun).contains(&started),
            "{victim} {kill} started at {started}, but its predecessor had finished {done} and begun {begun} records"
        );
        (done, begun) = (progress.done(), progress.begun());
        assert!(done <= begun && begun - done <= BATCH_SLACK, "done {done}, begun {begun}");
        assert_eq!(liveness(&segment, victim), Some((Liveness::Dead, proc.pid())));
    }

    // Then one stops for good in the middle of a record (a producer holding a
    // half-written claim, a consumer holding a checked record unreleased).
    let stall_at = begun + 1000 + random((RESTART_RECORDS - begun) / 4);
    let (progress, path) = progress(&fx, "progress");
    let proc = spawn_victim(&["--resume", "--progress", &path, "--stall-at", &stall_at.to_string()]);
    wait_until(REACH, &format!("the {victim} stalls"), || {
        fx.assert_running(&other);
        fx.assert_running(&proc);
        progress.stalled() == Some(stall_at)
    });
    let started = progress.start().expect("the stalling victim reported where it started");
    assert!((done..=begun).contains(&started), "started at {started}, predecessor finished {done}, begun {begun}");
    assert_eq!(progress.done(), stall_at, "everything before the stalled record is finished");
    kill_running(&fx, &proc);

    // The last must start exactly at the record its predecessor never finished.
    let proc = spawn_victim(&["--resume"]);
    let [last, other] = <[_; 2]>::try_from(fx.wait_all(&[&proc, &other], DEADLINE)).expect("two reports");
    let (last, other) = (last.summary(), other.summary());
    assert_eq!(last.u64("first"), stall_at, "the last {victim} did not start at the unfinished record: {last:?}");

    // The consumer (one that ran throughout, or the last one) saw its records in order,
    // each once and whole: it checks as it goes.
    let (consumer, consumer_first) = match victim {
        Role::Producer => (other, 0),
        Role::Consumer => (last, stall_at),
    };
    let max = max_record(&segment);
    assert_eq!(
        (consumer.u64("first"), consumer.u64("last"), consumer.u64("count"), consumer.u64("bytes")),
        (
            consumer_first,
            RESTART_RECORDS - 1,
            RESTART_RECORDS - consumer_first,
            records::total_len(consumer_first..RESTART_RECORDS, max)
        )
    );

    let stats = segment.stats();
    let bytes = records::total_len(0..RESTART_RECORDS, max);
    let (kept, kept_bytes) = match victim {
        Role::Producer => (stats.total_consumed, stats.bytes_consumed),
        Role::Consumer => (stats.total_produced, stats.bytes_produced),
    };
    assert_eq!((kept, kept_bytes), (RESTART_RECORDS, bytes), "the side never killed miscounted: {stats:#?}");
    assert_eq!(stats.read_cursor, stats.write_cursor, "the ring is not drained: {stats:#?}");
    // If a kill lands between the victim's cursor store and its look at the other side's
    // wake word, the other side sleeps until its timeout with the cursor moved. Its
    // verdict (`missed_wake` in shm-core's ring::wait) waits up to 10 ms for the word to
    // clear or the cursor to move again. The dead victim does neither, but its successor
    // can, within those 10 ms: its first publish (or release) stores the cursor *before*
    // its own look at the word, so a sleeper that sees the cursor move between the two
    // counts a miss no protocol could have prevented. That needs a kill in the
    // store-to-check window (a few instructions) and a successor publishing within 10 ms
    // of the sleeper's timeout: at most one per kill, and in practice none.
    let counter = |label| stats.get(label).unwrap_or_else(|| panic!("no {label} counter: {stats:#?}"));
    let missed = counter("producer_missed_wakes") + counter("consumer_missed_wakes");
    assert!(missed <= kills, "{missed} missed wake-ups with {kills} random kills: {stats:#?}");
    // Every kill the test's name claims happened.
    assert_eq!(kills, random_kills, "only {kills} of {random_kills} kills before the stream's last eighth");
    stats
}

/// Runs [`restart`] and checks the killed side's counters exactly: a successor rewrites
/// the counts from the publish (or release) slot its predecessor's cursor store names,
/// so no kill leaves them off.
fn killed_and_restarted(backend: Backend, victim: Role, random_kills: u64) {
    let stats = restart(backend, victim, random_kills);
    let killed = if victim == Role::Producer { stats.total_produced } else { stats.total_consumed };
    assert_eq!(killed, RESTART_RECORDS, "the {victim}, killed {random_kills} times, miscounted: {stats:#?}");
}

#[test]
fn producer_restart_posix() {
    killed_and_restarted(Backend::Posix, Role::Producer, 1);
}

#[test]
fn producer_restart_sysv() {
    killed_and_restarted(Backend::Sysv, Role::Producer, 1);
}

#[test]
fn producer_restart_file() {
    killed_and_restarted(Backend::File, Role::Producer, 1);
}

#[test]
fn consumer_restart_posix() {
    killed_and_restarted(Backend::Posix, Role::Consumer, 1);
}

#[test]
fn consumer_restart_sysv() {
    killed_and_restarted(Backend::Sysv, Role::Consumer, 1);
}

#[test]
fn consumer_restart_file() {
    killed_and_restarted(Backend::File, Role::Consumer, 1);
}

#[test]
fn producer_killed_many_times() {
    killed_and_restarted(Backend::Posix, Role::Producer, MANY_KILLS);
}

#[test]
fn consumer_killed_many_times() {
    killed_and_restarted(Backend::Posix, Role::Consumer, MANY_KILLS);
}

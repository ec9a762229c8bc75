//! The fault tests of the reliability catalogue (`RELIABILITY.md`), on real processes.
//!
//! - `kill9_torture_*`: a rate-limited generator streams into a `binary` file sink
//!   through the real `producerd` and `consumerd`, while a controller `SIGKILL`s one of
//!   them (chosen at random) every 50-300 ms, one time in eight the one just restarted
//!   within 5 ms of its start, and restarts it: 200 kills (`SHMRING_TORTURE_KILLS` sets another number). Then both
//!   stop cleanly, and the file must hold every record the ring committed
//!   (`0..total_produced`) exactly once, in order, none torn or corrupt.
//! - `sigstop_*`: a producer (or consumer) is stopped with `SIGSTOP` for 3 s, longer than
//!   every timeout of the daemons (100 ms steps) and the library (100 ms longest sleep).
//!   Alive-but-slow is never reclaimed: a second daemon in that role is refused (69) and
//!   `shmctl stat` shows the stopped one alive. After `SIGCONT` the stream goes on and the
//!   verify sink counts nothing lost, duplicated, reordered or corrupt.
//! - `wakeup_storm_*`: 10^6 single-record bursts (`SHMRING_STORM_RECORDS` sets another
//!   number) from this process, each published only once the consumer (a `ring-peer`
//!   with the futex strategy) has taken the previous one and fallen asleep on the futex.
//!   No wake-up may be lost (both missed-wake counters 0), every record arrives in order,
//!   and the consumer must really have slept for most of them.
//! - `racing_creators_*`: 8 `shmctl create` on one name, released at the same moment by a
//!   FIFO that all of them are blocked opening: exactly one exits 0, the others 73 with
//!   "already exists". Then 8 daemons (4 `producerd`, 4 `consumerd`) with
//!   `create = "if-missing"`, released the same way: one segment, created by one of them
//!   and never re-initialised (its creation time stays), one producer and one consumer
//!   attached, the others refused (69) naming the winner's pid, and a verified stream.
//!   For posix, sysv and file.
//!
//! Each test prints one line `RELIABILITY {json}` to stdout (`"test"`, `"fault"`, `"runs"`,
//! `"outcome"`, `"lost"`, `"duplicated"`, and figures of its own) for a report generator
//! that reads `cargo test -- --nocapture`. Random choices print their seed;
//! `SHMRING_TEST_SEED` repeats a run.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use shm_core::{Liveness, Location, Role, Segment, StatsSnapshot, WaitStrategy};
use shmring_tests::daemons::{
    self, Daemon, Kind, PATIENCE, binary_file_sink, fifo, generator_seq, observe, observe_when_created,
    open_fifo_writer, segment_section, wait_consumed, wait_drained, wait_produced,
};
use shmring_tests::fixture::binary;
use shmring_tests::records::{self, Api, splitmix64};
use shmring_tests::{Backend, Finished, Fixture, Proc, location_args, seed, wait_until};

const PEER: &str = env!("CARGO_BIN_EXE_ring-peer");

/// Kills in the torture test; `SHMRING_TORTURE_KILLS` overrides it (e.g. 1000).
const TORTURE_KILLS: u64 = 200;
/// The torture generator's rate, records per second.
const TORTURE_RATE: u64 = 100_000;
/// Bursts in the wake-up storm (about 14 s here); `SHMRING_STORM_RECORDS` overrides it.
const STORM_RECORDS: u64 = 1_000_000;
/// How long a stopped process stays stopped: well past every timeout of the daemons
/// (100 ms steps) and the library (100 ms longest futex sleep, 2 s init timeout).
const STOP_FOR: Duration = Duration::from_secs(3);
/// Processes in each creation race.
const RACERS: usize = 8;
/// Rounds of the `shmctl create` race per backend.
const CREATE_ROUNDS: usize = 5;
/// Rounds of the `create = "if-missing"` race per backend.
const IF_MISSING_ROUNDS: usize = 3;

/// The torture and the storm each keep both cores busy and measure what happens under
/// load of their own making: they run one at a time.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The number in the environment variable `var`, else `default`.
fn env_count(var: &str, default: u64) -> u64 {
    match std::env::var(var) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{var}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Prints the test's `RELIABILITY` line: `pass` or `fail`, then `extra`.
fn report(test: &str, fault: &str, runs: u64, pass: bool, lost: u64, duplicated: u64, extra: Value) {
    let outcome = if pass { "pass" } else { "fail" };
    shmring_tests::reliability::report(test, fault, runs, outcome, lost, duplicated, extra);
}

/// A producer config: a generator at `rate` records per second (`0`: as fast as the
/// ring takes them) of `min..=max` bytes, with the `[segment]` lines `segment`.
fn generator(location: &Location, segment: &[&str], rate: u64, (min, max): (u64, u64)) -> String {
    format!(
        "{}[source]\nkind = \"generator\"\nrate = {rate}\nmin_size = {min}\nmax_size = {max}\n",
        segment_section(location, segment)
    )
}

/// A consumer config with the `[segment]` lines `segment` and the `[sink]` lines `sink`.
fn consumer(location: &Location, segment: &[&str], sink: &str) -> String {
    format!("{}[sink]\n{sink}\n", segment_section(location, segment))
}

/// Waits for `READY=1` unless the daemon has sent it already.
fn ensure_ready(fx: &Fixture, daemon: &mut Daemon) {
    if !daemon.has_been_ready() {
        daemon.wait_for(fx, "READY=1");
    }
}

/// The state letter in `/proc/<pid>/stat` (`R`, `S`, `T`, ...), read through `stat`, an
/// open handle of that file (re-read from offset 0: one syscall).
fn proc_state(stat: &fs::File) -> Option<u8> {
    let mut buf = [0u8; 512];
    let n = stat.read_at(&mut buf, 0).ok()?;
    // `pid (comm) S ...`: the comm may hold anything, so look after its last ')'.
    let close = buf[..n].iter().rposition(|&b| b == b')')?;
    buf.get(close + 2).copied()
}

fn open_proc_stat(pid: u32) -> fs::File {
    fs::File::open(format!("/proc/{pid}/stat")).unwrap_or_else(|e| panic!("open /proc/{pid}/stat: {e}"))
}

/// What a generator-record file holds, against the records `0..committed` the ring
/// committed.
#[derive(Debug, Default)]
struct Tally {
    records: u64,
    lost: u64,
    duplicated: u64,
    /// Records not after the one before them (a duplicate of the one before included).
    reordered: u64,
    corrupt: u64,
    /// Bytes at the end that are not a whole frame.
    torn_bytes: u64,
    /// Records with a sequence number the ring never committed.
    beyond: u64,
}

impl Tally {
    /// Reads a `binary` file of generator records.
    fn of_file(path: &Path, committed: u64) -> Tally {
        let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let mut seen = vec![false; usize::try_from(committed).expect("fits in memory")];
        let mut t = Tally::default();
        let mut previous: Option<u64> = None;
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let len = rest.get(..4).map(|l| u32::from_le_bytes(l.try_into().expect("4 bytes")) as usize);
            let Some(frame) = len.and_then(|len| rest.get(4..4 + len)) else {
                t.torn_bytes = rest.len() as u64;
                break;
            };
            rest = &rest[4 + frame.len()..];
            t.records += 1;
            let Some(seq) = generator_seq(frame) else {
                t.corrupt += 1;
                continue;
            };
            match seen.get_mut(seq as usize) {
                None => t.beyond += 1,
                Some(true) => t.duplicated += 1,
                Some(slot) => *slot = true,
            }
            if previous.is_some_and(|p| seq <= p) {
                t.reordered += 1;
            }
            previous = Some(seq);
        }
        t.lost = seen.iter().filter(|&&s| !s).count() as u64;
        t
    }

    fn clean(&self) -> bool {
        (self.lost, self.duplicated, self.reordered, self.corrupt, self.torn_bytes, self.beyond) == (0, 0, 0, 0, 0, 0)
    }
}

#[test]
fn kill9_torture_file_sink_keeps_every_committed_record_exactly_once() {
    let _turn = heavy();
    let wanted = env_count("SHMRING_TORTURE_KILLS", TORTURE_KILLS);
    let seed = seed("kill9_torture");
    let mut rng = seed;
    let mut random = |bound: u64| {
        rng = splitmix64(rng);
        rng % bound
    };
    let fx = Fixture::new("torture");
    let location = fx.location(Backend::Posix);
    let out = fx.path("records.bin");
    let segment = ["capacity = \"256KiB\"", "wait_for_segment = \"10s\""];
    let producer_launch = Daemon::launch(&fx, Kind::Producer, &generator(&location, &segment, TORTURE_RATE, (24, 64)));
    let consumer_launch = Daemon::launch(&fx, Kind::Consumer, &consumer(&location, &segment, &binary_file_sink(&out)));
    let mut producer = producer_launch.start(&fx);
    producer.wait_for(&fx, "READY=1");
    let ring = observe(&location);
    let mut consumer = consumer_launch.start(&fx);
    consumer.wait_for(&fx, "READY=1");
    wait_until(PATIENCE, "the stream flows", || ring.stats().total_consumed > 1000);

    let started = Instant::now();
    let (mut producer_kills, mut consumer_kills, mut early_kills) = (0u64, 0u64, 0u64);
    let mut last_started = Kind::Consumer;
    // A dropped `Daemon` waits for its notification reader to notice (up to 50 ms):
    // another thread drops them, so that a restart is not delayed and an early kill
    // really lands early.
    let (graveyard, bodies) = std::sync::mpsc::channel::<Daemon>();
    let buried = std::thread::spawn(move || bodies.into_iter().for_each(drop));
    while producer_kills + consumer_kills < wanted {
        // Where the kill lands is chosen by time, so sleeping is the point: mostly either
        // daemon 50-300 ms into the stream; one time in eight the daemon started last,
        // 0-5 ms after its start, while it may still be attaching or recovering.
        let (victim, delay) = if random(8) == 0 {
            (last_started, random(6))
        } else {
            (if random(2) == 0 { Kind::Producer } else { Kind::Consumer }, 50 + random(251))
        };
        std::thread::sleep(Duration::from_millis(delay));
        let (daemon, launch, kills) = match victim {
            Kind::Producer => (&mut producer, &producer_launch, &mut producer_kills),
            Kind::Consumer => (&mut consumer, &consumer_launch, &mut consumer_kills),
        };
        if !daemon.has_been_ready() {
            early_kills += 1;
        }
        // Asserts that it was still running and died of SIGKILL: every kill counts.
        daemon.kill(&fx);
        *kills += 1;
        let killed = std::mem::replace(daemon, launch.start(&fx));
        graveyard.send(killed).expect("the graveyard outlives the loop");
        last_started = victim;
    }
    drop(graveyard);
    buried.join().expect("dropping killed daemons");
    let torture_time = started.elapsed();

    ensure_ready(&fx, &mut producer);
    ensure_ready(&fx, &mut consumer);
    let after = ring.stats();
    wait_produced(&ring, after.total_produced + 10_000);
    wait_consumed(&ring, after.total_produced);
    producer.stop(&fx).assert_success();
    wait_drained(&ring);
    consumer.stop(&fx).assert_success();
    let stats = ring.stats();
    let tally = Tally::of_file(&out, stats.total_produced);
    let kills = producer_kills + consumer_kills;
    eprintln!(
        "torture: {kills} kills ({producer_kills} producer, {consumer_kills} consumer, {early_kills} before READY) \
         in {torture_time:.1?}; {} records committed; {tally:?}",
        stats.total_produced
    );
    report(
        "kill9_torture",
        "SIGKILL of producerd or consumerd at random moments, restarted each time",
        kills,
        tally.clean() && tally.records == stats.total_produced,
        tally.lost,
        tally.duplicated,
        json!({
            "kills_producer": producer_kills,
            "kills_consumer": consumer_kills,
            "kills_before_ready": early_kills,
            "records": stats.total_produced,
            "reordered": tally.reordered,
            "corrupt": tally.corrupt,
            "torn_bytes": tally.torn_bytes,
            "seconds": torture_time.as_secs_f64(),
            "seed": seed,
        }),
    );
    assert!(producer_kills > 0 && consumer_kills > 0, "both sides must have been killed");
    assert_eq!(stats.total_consumed, stats.total_produced, "{stats:#?}");
    assert!(tally.clean(), "the file is not exactly the committed records: {tally:?}");
    assert_eq!(tally.records, stats.total_produced, "{tally:?}");
    // The stream ran throughout, not just in its first moments.
    assert!(stats.total_produced > kills * 1000, "only {} records in {kills} kills", stats.total_produced);
}

/// Runs `shmctl stat --json` on `location`.
fn shmctl_stat(fx: &Fixture, location: &Location) -> Value {
    let [backend, name] = location_args(location);
    let proc =
        fx.spawn("shmctl", Command::new(binary("shmctl")).args(["stat", &name, "--backend", &backend, "--json"]));
    let f = fx.wait(&proc, PATIENCE);
    f.assert_success();
    serde_json::from_str(&f.stdout).unwrap_or_else(|e| panic!("shmctl stat --json printed {:?}: {e}", f.stdout))
}

/// Stops the `victim` daemon with `SIGSTOP` for [`STOP_FOR`] while the other runs, checks
/// that it keeps its role meanwhile, continues it, and verifies the whole stream.
fn sigstop(victim: Kind) {
    let role = match victim {
        Kind::Producer => Role::Producer,
        Kind::Consumer => Role::Consumer,
    };
    let fx = Fixture::new(&format!("stop-{role}"));
    let location = fx.location(Backend::Posix);
    let segment = ["capacity = \"256KiB\"", "wait_for_segment = \"10s\""];
    let producer_launch = Daemon::launch(&fx, Kind::Producer, &generator(&location, &segment, 50_000, (64, 64)));
    let consumer_launch = Daemon::launch(&fx, Kind::Consumer, &consumer(&location, &segment, "kind = \"verify\""));
    let mut producer = producer_launch.start(&fx);
    producer.wait_for(&fx, "READY=1");
    let ring = observe(&location);
    let mut consumer = consumer_launch.start(&fx);
    consumer.wait_for(&fx, "READY=1");
    wait_until(PATIENCE, "the stream flows", || ring.stats().total_consumed > 5_000);

    let (stopped, launch) = match victim {
        Kind::Producer => (&producer, &producer_launch),
        Kind::Consumer => (&consumer, &consumer_launch),
    };
    stopped.signal(&fx, Signal::SIGSTOP);
    let stat = open_proc_stat(stopped.pid());
    wait_until(PATIENCE, "the process is stopped", || proc_state(&stat) == Some(b'T'));
    let at_stop = ring.stats();
    // Time is the point: stay stopped past every timeout there is.
    std::thread::sleep(STOP_FOR);
    let during = ring.stats();

    // A second daemon in the same role is refused: the role is held by a live process.
    let second = launch.start(&fx).wait(&fx);
    second.assert_code(69);
    let holder = format!("a {role} is already attached (pid {})", stopped.pid());
    assert!(second.stderr.contains(&holder), "expected {holder:?} in:\n{}", second.stderr);
    let participants = shmctl_stat(&fx, &location)["participants"].clone();
    let shown = participants
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["role"] == role.to_string()))
        .unwrap_or_else(|| panic!("shmctl stat shows no {role}: {participants}"));
    assert_eq!(shown["liveness"], "alive", "{shown}");
    assert_eq!(shown["pid"].as_u64(), Some(u64::from(stopped.pid())), "{shown}");
    assert!(
        ring.participants().iter().any(|p| p.role == Some(role) && p.liveness == Liveness::Alive),
        "{:?}",
        ring.participants()
    );
    match victim {
        // Nothing was produced while the only producer was stopped.
        Kind::Producer => assert_eq!(during.total_produced, at_stop.total_produced, "{during:#?}"),
        // Records wait in the ring, untouched, and the producer filled it meanwhile.
        Kind::Consumer => {
            assert_eq!(during.total_consumed, at_stop.total_consumed, "{during:#?}");
            assert!(during.records_in_flight > 0 && during.total_produced > at_stop.total_produced, "{during:#?}");
        }
    }

    stopped.signal(&fx, Signal::SIGCONT);
    match victim {
        Kind::Producer => {
            wait_produced(&ring, during.total_produced + 5_000);
        }
        Kind::Consumer => {
            let waiting = ring.stats().total_produced;
            wait_consumed(&ring, waiting);
        }
    }
    producer.stop(&fx).assert_success();
    let stats = wait_drained(&ring);
    let finished = consumer.stop(&fx);
    let summary = consumer.summary();
    let count = |key: &str| summary.0.get(key).and_then(Value::as_u64).unwrap_or(u64::MAX);
    report(
        &format!("sigstop_{role}"),
        &format!("SIGSTOP of the {role} for {} s, a second {role} started meanwhile, then SIGCONT", STOP_FOR.as_secs()),
        1,
        finished.status.success()
            && count("received") == stats.total_produced
            && ["lost", "duplicated", "reordered", "corrupt"].iter().all(|k| count(k) == 0),
        count("lost"),
        count("duplicated"),
        json!({
            "records": stats.total_produced,
            "reordered": count("reordered"),
            "corrupt": count("corrupt"),
            "second_exit": second.status.code(),
            "stopped_seconds": STOP_FOR.as_secs_f64(),
        }),
    );
    finished.assert_success();
    summary.assert_verified(stats.total_produced);
}

#[test]
fn sigstop_producer_past_every_timeout_is_not_reclaimed() {
    sigstop(Kind::Producer);
}

#[test]
fn sigstop_consumer_past_every_timeout_is_not_reclaimed() {
    sigstop(Kind::Consumer);
}

/// Publishes record `seq` of the `records` stream (with the record type the stream
/// gives it, which the consuming `ring-peer` checks).
fn publish_one(producer: &mut shm_core::Producer, seq: u64, max: usize) {
    let mut claim = producer
        .claim(records::record_len(seq, max), Some(PATIENCE))
        .unwrap_or_else(|e| panic!("claim record {seq}: {e}"));
    records::encode(seq, &mut claim);
    claim.set_record_type(Api::for_seq(seq).record_type());
    claim.commit();
}

#[test]
fn wakeup_storm_single_record_bursts_to_a_sleeping_consumer_lose_no_wakeup() {
    let _turn = heavy();
    let count = env_count("SHMRING_STORM_RECORDS", STORM_RECORDS);
    let fx = Fixture::new("storm");
    let location = fx.location(Backend::Posix);
    let segment = Segment::builder(location.clone()).capacity(64 * 1024).create().expect("create the segment");
    let max = segment.geometry().max_record as usize;
    let consumer = fx.spawn(
        "consumer",
        Command::new(PEER).arg("consume").args(location_args(&location)).args([
            "--total",
            &count.to_string(),
            "--wait",
            "futex",
        ]),
    );
    let mut producer = segment.producer_with(WaitStrategy::Futex).expect("attach the producer");
    wait_until(PATIENCE, "the consumer attaches", || {
        segment.participants().iter().any(|p| p.role == Some(Role::Consumer) && p.liveness == Liveness::Alive)
    });
    let stat = open_proc_stat(consumer.pid());

    let started = Instant::now();
    let mut polls = 0u64;
    for seq in 0..count {
        // Each burst goes to a sleeper: wait until the consumer has released every record
        // so far and is asleep (state `S`; with nothing to read, the futex is the only
        // thing it sleeps on).
        let deadline = Instant::now() + PATIENCE;
        while !(segment.stats().total_consumed == seq && proc_state(&stat) == Some(b'S')) {
            polls += 1;
            if polls % 4096 == 0 {
                assert!(fx.is_running(&consumer), "the consumer exited: {:?}", fx.kill(&consumer));
                assert!(Instant::now() < deadline, "record {seq}: the consumer never slept again");
            }
            std::hint::spin_loop();
        }
        publish_one(&mut producer, seq, max);
    }
    let consumed = fx.wait(&consumer, PATIENCE);
    let elapsed = started.elapsed();
    let stats: StatsSnapshot = segment.stats();
    let get = |label: &str| stats.get(label).unwrap_or_else(|| panic!("no {label} in {stats:#?}"));
    let (sleeps, wakes) = (get("consumer_sleeps"), get("producer_wakes"));
    let missed = (get("consumer_missed_wakes"), get("producer_missed_wakes"));
    eprintln!(
        "storm: {count} single-record bursts in {elapsed:.2?} ({:.1} us each); consumer_sleeps {sleeps}, \
         producer_wakes {wakes}, missed wakes {missed:?}",
        elapsed.as_secs_f64() * 1e6 / count as f64
    );
    let summary = consumed.status.success().then(|| consumed.summary());
    let received = summary.as_ref().map_or(0, |s| s.u64("count"));
    report(
        "wakeup_storm",
        "single-record bursts, each to a consumer asleep on the futex",
        count,
        consumed.status.success() && missed == (0, 0) && received == count && sleeps > count / 10,
        count - received.min(count),
        received.saturating_sub(count),
        json!({
            "consumer_sleeps": sleeps,
            "producer_wakes": wakes,
            "consumer_missed_wakes": missed.0,
            "producer_missed_wakes": missed.1,
            "seconds": elapsed.as_secs_f64(),
        }),
    );
    consumed.assert_success();
    let summary = summary.expect("it succeeded");
    assert_eq!((summary.u64("first"), summary.u64("last"), summary.u64("count")), (0, count - 1, count));
    assert_eq!((stats.total_produced, stats.total_consumed), (count, count), "{stats:#?}");
    assert_eq!(missed, (0, 0), "lost wake-ups: {stats:#?}");
    // Not vacuous: the consumer slept (and was woken) for most bursts.
    assert!(sleeps > count / 10, "the consumer slept only {sleeps} times in {count} bursts: {stats:#?}");
    assert!(wakes > count / 10, "the producer woke a sleeper only {wakes} times in {count} bursts: {stats:#?}");
}

/// A shell that waits at the gate (opening the FIFO `$SHMRING_TEST_GATE` for reading
/// blocks until the test opens it for writing), then runs its arguments in its own pid.
const GATED: &str = "exec \"$0\" \"$@\" <\"$SHMRING_TEST_GATE\"";

/// Whether `pid` is blocked opening a FIFO for reading (waiting for a writer).
fn waits_at_gate(pid: u32) -> bool {
    let wchan = fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    if wchan.contains("partner") || wchan.contains("fifo") {
        return true;
    }
    // Kernels that hide wchan still show the syscall being waited in.
    let syscall = fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    syscall.split_whitespace().next().and_then(|n| n.parse::<i64>().ok()) == Some(libc::SYS_openat)
}

/// Waits until every one of `pids` is blocked at the gate, then opens it: they all
/// go at once. Returns the writing end (keep it open until they are done).
fn open_gate(gate: &Path, pids: &[u32]) -> fs::File {
    wait_until(PATIENCE, "every racer waits at the gate", || pids.iter().all(|&pid| waits_at_gate(pid)));
    open_fifo_writer(gate)
}

/// Races `shmctl create` of one name in [`RACERS`] processes, [`CREATE_ROUNDS`] times.
fn racing_shmctl_create(backend: Backend) {
    let fx = Fixture::new(&format!("race-create-{}", backend.name()));
    let shmctl = binary("shmctl");
    let mut outcome = Vec::new();
    for _ in 0..CREATE_ROUNDS {
        let location = fx.location(backend);
        let [backend_arg, name] = location_args(&location);
        let gate = fifo(&fx, "gate");
        let racers: Vec<Proc> = (0..RACERS)
            .map(|_| {
                let mut cmd = Command::new("/bin/sh");
                cmd.args(["-c", GATED])
                    .arg(&shmctl)
                    .args(["create", &name, "--backend", &backend_arg, "--capacity", "64KiB"])
                    .env("SHMRING_TEST_GATE", &gate);
                fx.spawn("shmctl-create", &mut cmd)
            })
            .collect();
        let pids: Vec<u32> = racers.iter().map(Proc::pid).collect();
        let writer = open_gate(&gate, &pids);
        let finished: Vec<Finished> = racers.iter().map(|p| fx.wait(p, PATIENCE)).collect();
        drop(writer);
        let codes: Vec<Option<i32>> = finished.iter().map(|f| f.status.code()).collect();
        let winners: Vec<&Finished> = finished.iter().filter(|f| f.status.success()).collect();
        outcome.push(codes.clone());
        assert_eq!(winners.len(), 1, "exactly one creator must win; exit codes {codes:?}\n{finished:#?}");
        assert!(winners[0].stdout.starts_with("created "), "{:?}", winners[0]);
        for f in finished.iter().filter(|f| !f.status.success()) {
            f.assert_code(73);
            assert!(f.stderr.contains("already exists"), "a loser should say why: {:?}", f.stderr);
        }
        // The segment is the winner's, whole and valid.
        let info = observe(&location).info().expect("segment info");
        let winner_pid = pids[finished.iter().position(|f| f.status.success()).expect("one won")];
        assert_eq!(info.creator_pid, winner_pid, "{info:?}");
        assert_eq!(info.capacity, 64 * 1024, "{info:?}");
    }
    report(
        &format!("racing_creators_shmctl_{}", backend.name()),
        &format!("{RACERS} shmctl create of one name released at once"),
        CREATE_ROUNDS as u64,
        true,
        0,
        0,
        json!({ "racers": RACERS, "exit_codes": outcome }),
    );
}

/// Races [`RACERS`] daemons (half producerd, half consumerd) with `create = "if-missing"`
/// on one name, then streams through the one segment they must all have found;
/// [`IF_MISSING_ROUNDS`] times.
fn racing_if_missing(backend: Backend) {
    let fx = Fixture::new(&format!("race-open-{}", backend.name()));
    let (mut records, mut lost, mut duplicated, mut pass) = (0, 0, 0, true);
    for _ in 0..IF_MISSING_ROUNDS {
        let (summary, produced, ok) = if_missing_round(&fx, backend);
        let count = |key: &str| summary.0.get(key).and_then(Value::as_u64).unwrap_or(u64::MAX);
        records += produced;
        lost += count("lost");
        duplicated += count("duplicated");
        pass &= ok
            && count("received") == produced
            && ["lost", "duplicated", "reordered", "corrupt"].iter().all(|k| count(k) == 0);
        if !pass {
            break;
        }
    }
    report(
        &format!("racing_creators_if_missing_{}", backend.name()),
        &format!("{RACERS} daemons (half producerd, half consumerd) with create = if-missing released at once"),
        IF_MISSING_ROUNDS as u64,
        pass,
        lost,
        duplicated,
        json!({ "racers": RACERS, "records": records }),
    );
    assert!(pass, "the stream through the raced segment was not exact: see the RELIABILITY line");
}

/// One round of [`racing_if_missing`]: the verify sink's summary, the records produced,
/// and whether the consumer exited 0.
fn if_missing_round(fx: &Fixture, backend: Backend) -> (daemons::Report, u64, bool) {
    let location = fx.location(backend);
    let gate = fifo(fx, "gate");
    let segment = ["capacity = \"64KiB\"", "create = \"if-missing\""];
    let producer_launch =
        Daemon::launch(fx, Kind::Producer, &generator(&location, &segment, 50_000, (64, 64))).stdin_from(&gate);
    let consumer_launch =
        Daemon::launch(fx, Kind::Consumer, &consumer(&location, &segment, "kind = \"verify\"")).stdin_from(&gate);
    let mut racers: Vec<(Kind, Daemon)> = (0..RACERS)
        .map(|i| match i % 2 {
            0 => (Kind::Producer, producer_launch.start(fx)),
            _ => (Kind::Consumer, consumer_launch.start(fx)),
        })
        .collect();
    let pids: Vec<u32> = racers.iter().map(|(_, d)| d.pid()).collect();
    let writer = open_gate(&gate, &pids);
    let ring = observe_when_created(&location);
    let created = ring.info().expect("segment info");

    // All but one of each kind give up; the two left are the winners.
    wait_until(PATIENCE, "all but one producer and one consumer exit", || {
        racers.iter().filter(|(_, d)| !fx.is_running(d.proc())).count() >= RACERS - 2
    });
    drop(writer);
    let running: Vec<usize> = (0..RACERS).filter(|&i| fx.is_running(racers[i].1.proc())).collect();
    let winner = |kind: Kind| running.iter().copied().find(|&i| racers[i].0 == kind);
    let (Some(p), Some(c)) = (winner(Kind::Producer), winner(Kind::Consumer)) else {
        panic!("the two left running must be a producer and a consumer: {running:?} of {racers:#?}");
    };
    for (i, (kind, loser)) in racers.iter().enumerate().filter(|&(i, _)| i != p && i != c) {
        let f = loser.wait(fx);
        f.assert_code(69);
        // Refused by the winner, attached to the very segment they found.
        let (role, pid) = match kind {
            Kind::Producer => ("producer", racers[p].1.pid()),
            Kind::Consumer => ("consumer", racers[c].1.pid()),
        };
        let holder = format!("a {role} is already attached (pid {pid})");
        assert!(f.stderr.contains(&holder), "racer {i}: expected {holder:?} in:\n{}", f.stderr);
    }
    assert!(pids.contains(&created.creator_pid), "created by pid {}, not a racer ({pids:?})", created.creator_pid);

    ensure_ready(fx, &mut racers[p].1);
    ensure_ready(fx, &mut racers[c].1);
    wait_produced(&ring, 10_000);
    wait_consumed(&ring, 10_000);
    racers[p].1.stop(fx).assert_success();
    let stats = wait_drained(&ring);
    let finished = racers[c].1.stop(fx);
    let summary = racers[c].1.summary();
    // Never re-initialised: the name still leads to the segment first seen, created once.
    let now = observe(&location).info().expect("segment info");
    assert_eq!(
        (now.created_unix_ns, now.creator_pid),
        (created.created_unix_ns, created.creator_pid),
        "the segment was replaced or re-initialised"
    );
    if !finished.status.success() {
        eprintln!("consumer: {finished:?}");
    }
    (summary, stats.total_produced, finished.status.success())
}

mod racing_creators {
    use super::{Backend, racing_if_missing, racing_shmctl_create};

    #[test]
    fn shmctl_create_posix() {
        racing_shmctl_create(Backend::Posix);
    }

    #[test]
    fn shmctl_create_sysv() {
        racing_shmctl_create(Backend::Sysv);
    }

    #[test]
    fn shmctl_create_file() {
        racing_shmctl_create(Backend::File);
    }

    #[test]
    fn if_missing_daemons_posix() {
        racing_if_missing(Backend::Posix);
    }

    #[test]
    fn if_missing_daemons_sysv() {
        racing_if_missing(Backend::Sysv);
    }

    #[test]
    fn if_missing_daemons_file() {
        racing_if_missing(Backend::File);
    }
}

//! The daemons under crashes and signals: `SIGKILL` at random moments, `SIGHUP` mid-stream.
//!
//! - `consumer_killed_*`: consumerd is killed with `SIGKILL` several times while the
//!   generator runs, and restarted each time. With the file sink (its `PATH.progress`)
//!   the file must hold every record exactly once, in order; with the verify sink and its
//!   `state` file, the last consumer's summary must count every record exactly once.
//!   `consumer_killed_in_its_first_batch_*` aims the kill at the first batch a new file
//!   sink writes, before it has recorded any progress.
//! - `producer_killed_*`: producerd is killed the same way and restarted on the live
//!   segment; the generator must continue after the last record the ring committed (the
//!   verify sink, which runs throughout, sees no gap and no duplicate).
//! - `sighup_*`: a reload mid-stream keeps both daemons up (`RELOADING=1`, then `READY=1`)
//!   and loses nothing; a broken config is logged and the running one kept; the generator
//!   takes its new rate; the file sink re-opens its file (log rotation) without losing or
//!   repeating a record.
//!
//! Kill moments are random: the seed is printed, and `SHMRING_TEST_SEED` repeats a run.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use shm_core::{Location, Segment};
use shmring_tests::daemons::{
    self, Daemon, Kind, assert_generator_file, assert_generator_stream, binary_file_sink, generator, observe,
    segment_section, toml_string, wait_drained, wait_produced,
};
use shmring_tests::records::splitmix64;
use shmring_tests::{Backend, Fixture, seed, wait_until};

/// Restarts in each kill test.
const KILLS: u64 = 5;

/// A consumer config on `location` with the `[sink]` lines `sink`.
fn consumer(location: &Location, sink: &str) -> String {
    format!("{}[sink]\n{sink}\n", segment_section(location, &["wait_for_segment = \"10s\""]))
}

/// Lets the stream run to a random moment in the next 100 ms (the point is *where* the
/// kill lands, which only time chooses here), after the records so far grew by `at_least`.
fn random_moment(ring: &Segment, rng: &mut u64, at_least: u64) {
    let from = ring.stats().total_consumed;
    wait_until(daemons::PATIENCE, "the stream moves", || ring.stats().total_consumed >= from + at_least);
    *rng = splitmix64(*rng);
    std::thread::sleep(Duration::from_micros(*rng % 100_000));
}

/// Kills the consumer `KILLS` times, each a while after it became ready; then a last one
/// runs until the producer has stopped and the ring is drained. Returns the last one and
/// the records produced.
fn kill_consumers(fx: &Fixture, location: &Location, sink: &str, test: &str) -> (Daemon, u64) {
    let mut rng = seed(test);
    let producer = Daemon::ready(fx, Kind::Producer, &generator(location, 50_000));
    let ring = observe(location);
    let launch = Daemon::launch(fx, Kind::Consumer, &consumer(location, sink));
    for _ in 0..KILLS {
        let mut c = launch.start(fx);
        c.wait_for(fx, "READY=1");
        random_moment(&ring, &mut rng, 500);
        c.kill(fx);
    }
    let mut last = launch.start(fx);
    last.wait_for(fx, "READY=1");
    random_moment(&ring, &mut rng, 500);
    producer.stop(fx).assert_success();
    wait_drained(&ring);
    last.stop(fx).assert_success();
    (last, ring.stats().total_produced)
}

#[test]
fn consumer_killed_file_sink_keeps_every_record_exactly_once() {
    let fx = Fixture::new("kill-c-file");
    let location = fx.location(Backend::Posix);
    let out = fx.path("records.bin");
    let (last, produced) = kill_consumers(&fx, &location, &binary_file_sink(&out), "consumer_killed_file_sink");
    assert!(last.log().contains("file sink resumes after its recorded progress"), "{}", last.log());
    assert_generator_file(&out, produced);
}

#[test]
fn consumer_killed_verify_state_counts_every_record_exactly_once() {
    let fx = Fixture::new("kill-c-verify");
    let location = fx.location(Backend::Posix);
    let state = fx.path("verify.state");
    let sink = format!("kind = \"verify\"\nstate = {}", toml_string(&state.display().to_string()));
    let (last, produced) = kill_consumers(&fx, &location, &sink, "consumer_killed_verify_state");
    assert!(last.log().contains("verify: continuing from its state file"), "{}", last.log());
    let summary = last.summary();
    summary.assert_verified(produced);
    assert_eq!(summary.0["next_expected"].as_u64(), Some(produced), "{}", summary.0);
}

#[test]
fn consumer_killed_in_its_first_batch_file_sink_keeps_every_record_exactly_once() {
    const RECORDS: u64 = 1500;
    // Retried until the kill lands in the window; a run that never does proves nothing,
    // so it fails.
    const ATTEMPTS: usize = 20;
    let fx = Fixture::new("kill-c-first");
    for attempt in 1..=ATTEMPTS {
        let location = fx.location(Backend::Posix);
        // 1500 records of 8 KiB wait in the ring: the consumer's first batch (1024 records)
        // is 8 MiB, written in 64 KiB pieces and fsynced before its progress is recorded
        // and the ring releases it. Nearly all of that time is "written, not recorded".
        let config = format!(
            "{}[source]\nkind = \"generator\"\ncount = {RECORDS}\nmin_size = \"8KiB\"\nmax_size = \"8KiB\"\n",
            segment_section(&location, &["capacity = \"16MiB\""])
        );
        Daemon::launch(&fx, Kind::Producer, &config).start(&fx).wait(&fx).assert_success();
        let ring = observe(&location);
        let out = fx.path("records.bin");
        let sink = format!("{}\nfsync = \"batch\"", binary_file_sink(&out));
        let launch = Daemon::launch(&fx, Kind::Consumer, &consumer(&location, &sink));

        // Kill it as soon as the file has bytes of the first batch: written, and (unless
        // this test was too slow to see it) not acknowledged yet. A busy loop: the window
        // is a few milliseconds.
        let first = launch.start(&fx);
        let written = || std::fs::metadata(&out).map_or(0, |m| m.len());
        let deadline = Instant::now() + daemons::PATIENCE;
        while written() == 0 && ring.stats().total_consumed == 0 {
            fx.assert_running(first.proc());
            assert!(Instant::now() < deadline, "the consumer never wrote anything");
        }
        first.kill(&fx);
        let (left, released) = (written(), ring.stats().total_consumed);
        let caught = left > 0 && released == 0;
        eprintln!("attempt {attempt}: killed with {left} bytes in the file and {released} records released");
        if !caught {
            assert!(attempt < ATTEMPTS, "{ATTEMPTS} kills, none between the file write and the release");
            continue;
        }

        let last = launch.start(&fx);
        let stats = wait_drained(&ring);
        last.stop(&fx).assert_success();
        assert_eq!(stats.total_consumed, RECORDS);
        assert_generator_file(&out, RECORDS);
        return;
    }
}

#[test]
fn producer_killed_generator_resumes_after_the_last_committed_record() {
    let mut rng = seed("producer_killed");
    let fx = Fixture::new("kill-p");
    let location = fx.location(Backend::Posix);
    let launch = Daemon::launch(&fx, Kind::Producer, &generator(&location, 50_000));
    let mut producer = launch.start(&fx);
    producer.wait_for(&fx, "READY=1");
    let ring = observe(&location);
    let consumer = Daemon::ready(&fx, Kind::Consumer, &consumer(&location, "kind = \"verify\""));
    for round in 0..=KILLS {
        if round > 0 {
            producer = launch.start(&fx);
            producer.wait_for(&fx, "READY=1");
            producer.wait_log(&fx, "resuming after the last committed record");
        }
        let produced = ring.stats().total_produced;
        wait_produced(&ring, produced + 500);
        random_moment(&ring, &mut rng, 0);
        if round < KILLS {
            producer.kill(&fx);
        }
    }
    producer.stop(&fx).assert_success();
    let stats = wait_drained(&ring);
    consumer.stop(&fx).assert_success();
    consumer.summary().assert_verified(stats.total_produced);
}

/// A generator at `rate` into the verify sink on a new posix segment, both ready.
fn verified_stream(fx: &Fixture, rate: u64) -> (Location, Daemon, Daemon) {
    let location = fx.location(Backend::Posix);
    let producer = Daemon::ready(fx, Kind::Producer, &generator(&location, rate));
    let consumer = Daemon::ready(fx, Kind::Consumer, &consumer(&location, "kind = \"verify\""));
    (location, producer, consumer)
}

/// Sends `SIGHUP` and waits for the reload to finish: `RELOADING=1`, then `READY=1`.
fn reload(fx: &Fixture, daemon: &mut Daemon) {
    daemon.signal(fx, Signal::SIGHUP);
    daemon.wait_for(fx, "RELOADING=1");
    daemon.wait_for(fx, "READY=1");
}

/// Stops the producer, then the consumer; both must exit 0, and the verify sink must have
/// seen every record produced exactly once.
fn stop_and_verify(fx: &Fixture, location: &Location, producer: &Daemon, consumer: &Daemon) {
    producer.stop(fx).assert_success();
    consumer.stop(fx).assert_success();
    let stats = observe(location).stats();
    consumer.summary().assert_verified(stats.total_produced);
}

#[test]
fn sighup_mid_stream_keeps_both_up_and_loses_nothing() {
    let fx = Fixture::new("hup");
    let (location, mut producer, mut consumer) = verified_stream(&fx, 50_000);
    let ring = observe(&location);
    wait_produced(&ring, 5_000);
    reload(&fx, &mut producer);
    reload(&fx, &mut consumer);
    producer.wait_log(&fx, "config reloaded");
    consumer.wait_log(&fx, "config reloaded");
    // Still streaming after the reload.
    let produced = ring.stats().total_produced;
    wait_produced(&ring, produced + 5_000);
    stop_and_verify(&fx, &location, &producer, &consumer);
}

#[test]
fn sighup_with_a_broken_config_keeps_the_running_one() {
    let fx = Fixture::new("hup-broken");
    let (location, mut producer, mut consumer) = verified_stream(&fx, 50_000);
    let ring = observe(&location);
    wait_produced(&ring, 5_000);
    for daemon in [&mut producer, &mut consumer] {
        std::fs::write(daemon.config_path(), "this is [not toml\n").expect("overwrite the config");
        reload(&fx, daemon);
        daemon.wait_log(&fx, "reload failed, keeping the running config");
        assert!(daemon.log().contains("line 1"), "the error should name the line:\n{}", daemon.log());
    }
    let produced = ring.stats().total_produced;
    wait_produced(&ring, produced + 5_000);
    stop_and_verify(&fx, &location, &producer, &consumer);
}

#[test]
fn sighup_applies_a_new_generator_rate() {
    let fx = Fixture::new("hup-rate");
    let (location, mut producer, consumer) = verified_stream(&fx, 100_000);
    let ring = observe(&location);
    // Bounds that hold on a loaded machine: a window is timed by what it really took (a
    // sleep may overrun), the generator never sends more than its rate allows since the
    // reload (plus one batch, 256), and a starved one only sends less. So the fast rate
    // is shown by a count 1000/s could not reach in the time it took, and the slow one
    // by a count that never exceeds 1000/s.
    const BATCH: u64 = 256;
    let at_most_slow = |elapsed: Duration| (elapsed.as_secs_f64() * 1000.0) as u64 + BATCH;
    let started = Instant::now();
    let before = ring.stats().total_produced;
    let fast = wait_produced(&ring, before + 20_000).total_produced - before;
    let fast_took = started.elapsed();
    assert!(fast > at_most_slow(fast_took), "at 100 000/s, only {fast} records in {fast_took:?}");
    std::fs::write(producer.config_path(), generator(&location, 1000)).expect("rewrite the config");
    let reloaded_from = Instant::now();
    reload(&fx, &mut producer);
    producer.wait_log(&fx, "config reloaded");
    // The records of the old rate still being published when the reload lands: one batch.
    let before = ring.stats().total_produced + BATCH;
    // Time passing is the point: a window at the new rate.
    std::thread::sleep(Duration::from_millis(500));
    let slow = ring.stats().total_produced.saturating_sub(before);
    let slow_window = reloaded_from.elapsed();
    assert!(slow <= at_most_slow(slow_window), "at 1000/s, {slow} records in {slow_window:?}");
    // And it still sends.
    wait_produced(&ring, before + 100);
    stop_and_verify(&fx, &location, &producer, &consumer);
}

#[test]
fn sighup_reopens_the_file_sink_for_log_rotation() {
    let fx = Fixture::new("hup-rotate");
    let location = fx.location(Backend::Posix);
    let out = fx.path("records.bin");
    let rotated = fx.path("records.bin.1");
    let producer = Daemon::ready(&fx, Kind::Producer, &generator(&location, 50_000));
    let mut consumer = Daemon::ready(&fx, Kind::Consumer, &consumer(&location, &binary_file_sink(&out)));
    let ring = observe(&location);
    wait_until(daemons::PATIENCE, "records are consumed", || ring.stats().total_consumed > 5_000);

    std::fs::rename(&out, &rotated).expect("rotate the file");
    reload(&fx, &mut consumer);
    consumer.wait_log(&fx, "file re-opened");
    wait_until(daemons::PATIENCE, "the new file fills", || std::fs::metadata(&out).is_ok_and(|m| m.len() > 10_000));
    producer.stop(&fx).assert_success();
    let stats = wait_drained(&ring);
    consumer.stop(&fx).assert_success();

    let old = std::fs::read(&rotated).expect("read the rotated file");
    let new = std::fs::read(&out).expect("read the new file");
    assert!(!old.is_empty() && !new.is_empty(), "{} + {} bytes", old.len(), new.len());
    assert_generator_stream(&[old, new].concat(), "the rotated file and the new one", stats.total_produced);
}

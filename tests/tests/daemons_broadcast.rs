//! The daemons on a broadcast ring (issue 13): one `producerd` generator and two
//! `consumerd` with their own names (`sink.consumer_name`), each with a file sink. The
//! evidence is the generator's ledger (`SHMRING_TEST_LEDGER`) against each consumer's
//! output, decoded by the test.
//!
//! - `a_killed_broadcast_consumer_*`: consumer `b`, whose file sink fails one progress
//!   write on the way (`SHMRING_TEST_FAIL_STATE_WRITE`), is killed with `SIGKILL`
//!   mid-stream and restarted under its name: both outputs hold every acknowledged record
//!   once, in order. The producer is stopped (`SIGSTOP`) across the kill and the restart, so the
//!   ring cannot pass the dead consumer (a passed consumer is the lossy test's case).
//! - `a_lapped_and_killed_lossy_consumer_*`: in a lossy ring, `b` is stopped until the
//!   producer laps it, killed, and restarted under its name: what its output lacks is
//!   exactly what the ring counted as missed for it, and nothing is duplicated.
//!
//! One RELIABILITY row each.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use shm_core::{Location, Segment};
use shmring_tests::daemons::{Daemon, Kind, binary_file_sink, observe_when_created, segment_section};
use shmring_tests::ledger::{Evidence, Figures, GENERATOR_LEDGER_VAR, per_producer_evidence, read_ledger};
use shmring_tests::reliability::report;
use shmring_tests::{Backend, Fixture, wait_until};

/// The `[segment]` lines every daemon of these tests has.
fn broadcast_segment(location: &Location, capacity: &str, lossy: bool) -> String {
    let capacity = format!("capacity = \"{capacity}\"");
    let lossy = format!("lossy = {lossy}");
    segment_section(location, &["kind = \"broadcast\"", &capacity, &lossy, "create = \"if-missing\""])
}

/// The generator: `count` records of 64 to 512 bytes at `rate` per second (0: at once).
fn generator(segment: &str, count: u64, rate: u64) -> String {
    format!("{segment}[source]\nkind = \"generator\"\ncount = {count}\nrate = {rate}\nmin_size = 64\nmax_size = 512\n")
}

fn consumer(segment: &str, name: &str, out: &Path) -> String {
    format!("{segment}wait_for_segment = \"10s\"\n[sink]\nconsumer_name = \"{name}\"\n{}\n", binary_file_sink(out))
}

/// `(delivered, missed)` of the consumer called `name`, from the segment.
fn tallies(ring: &Segment, name: &str) -> (u64, u64) {
    let rows = ring.broadcast_status().expect("a broadcast ring");
    let row = rows.iter().find(|r| r.row.name.as_deref() == Some(name)).unwrap_or_else(|| panic!("no {name}"));
    (row.row.tallies.delivered, row.row.tallies.missed)
}

/// Waits until every named consumer has accounted for (delivered or missed) `records`.
fn wait_accounted(ring: &Segment, names: &[&str], records: u64) {
    wait_until(Duration::from_secs(60), &format!("{names:?} accounted for {records} records"), || {
        names.iter().all(|n| {
            let (delivered, missed) = tallies(ring, n);
            delivered + missed >= records
        })
    });
}

struct Setup {
    fx: Fixture,
    location: Location,
    segment: String,
    ledger: PathBuf,
    outs: [PathBuf; 2],
}

fn setup(stem: &str, capacity: &str, lossy: bool) -> Setup {
    let fx = Fixture::new(stem);
    let location = fx.location(Backend::Posix);
    let segment = broadcast_segment(&location, capacity, lossy);
    let (ledger, outs) = (fx.path("generator.ledger"), [fx.path("a.bin"), fx.path("b.bin")]);
    Setup { fx, location, segment, ledger, outs }
}

impl Setup {
    fn consumer(&self, i: usize) -> Daemon {
        self.consumer_with(i, &[])
    }

    /// Consumer `i` (named a or b) with `env` set, once it is ready.
    fn consumer_with(&self, i: usize, env: &[(&str, &str)]) -> Daemon {
        let name = ["a", "b"][i];
        let launch = Daemon::launch(&self.fx, Kind::Consumer, &consumer(&self.segment, name, &self.outs[i]));
        let mut daemon = env.iter().fold(launch, |l, (k, v)| l.env(k, v)).start(&self.fx);
        daemon.wait_for(&self.fx, "READY=1");
        daemon
    }

    fn producer(&self, count: u64, rate: u64) -> Daemon {
        Daemon::launch(&self.fx, Kind::Producer, &generator(&self.segment, count, rate))
            .env(GENERATOR_LEDGER_VAR, &self.ledger.display().to_string())
            .start(&self.fx)
    }

    fn evidence(&self, i: usize) -> Evidence {
        per_producer_evidence(&[(0, &self.ledger)], &self.outs[i])
    }
}

#[test]
fn a_killed_broadcast_consumer_restarts_under_its_name_with_nothing_lost_or_duplicated() {
    let test = "a_killed_broadcast_consumer_restarts_under_its_name_with_nothing_lost_or_duplicated";
    const RECORDS: u64 = 30_000;
    let s = setup("bcast-kill", "256KiB", false);
    let a = s.consumer(0);
    // b's 20th progress write fails once (EIO): that batch must stay in the ring, unreleased,
    // and be written again once.
    let b = s.consumer_with(1, &[("SHMRING_TEST_FAIL_STATE_WRITE", "20")]);
    let producer = s.producer(RECORDS, 20_000);
    wait_until(Duration::from_secs(30), "records acknowledged", || read_ledger(&s.ledger).len() > 3_000);
    // Stopped across the kill, so the ring cannot pass the dead consumer; b's cursor holds
    // records it has not released when it dies.
    producer.signal(&s.fx, Signal::SIGSTOP);
    let ring = observe_when_created(&s.location);
    let before_kill = tallies(&ring, "b");
    b.kill(&s.fx);
    let b = s.consumer(1);
    producer.signal(&s.fx, Signal::SIGCONT);
    producer.wait(&s.fx).assert_success();
    wait_accounted(&ring, &["a", "b"], RECORDS);
    let (missed_a, missed_b) = (tallies(&ring, "a").1, tallies(&ring, "b").1);
    a.stop(&s.fx).assert_success();
    b.stop(&s.fx).assert_success();

    let (ea, eb) = (s.evidence(0), s.evidence(1));
    let both = Evidence::sum(&[ea.clone(), eb.clone()]);
    report(
        test,
        "broadcast ring, 1 producerd generator + 2 consumerd (file sinks, names a and b): one failed progress write in b, then SIGKILL consumer b mid-stream (producer stopped across the kill), restart it under its name",
        1,
        if both.exact() && missed_a + missed_b == 0 { "pass" } else { "FAIL" },
        &Figures::Counted(both.clone()),
        json!({
            "records": RECORDS,
            "b_delivered_before_the_kill": before_kill.0,
            "missed_reported_by_the_ring": missed_a + missed_b,
            "consumer_a": { "lost": ea.lost, "duplicated": ea.duplicated, "delivered": ea.delivered },
            "consumer_b": { "lost": eb.lost, "duplicated": eb.duplicated, "delivered": eb.delivered },
        }),
    );
    ea.assert_exact();
    eb.assert_exact();
    assert_eq!((missed_a, missed_b), (0, 0), "a lossless ring with its producer stopped passes nobody");
    assert_eq!((ea.acknowledged, eb.acknowledged), (RECORDS, RECORDS));
    assert!(before_kill.0 > 0 && before_kill.0 < RECORDS, "killed mid-stream: {before_kill:?}");
}

#[test]
fn a_lapped_and_killed_lossy_consumer_misses_exactly_what_the_ring_counts() {
    let test = "a_lapped_and_killed_lossy_consumer_misses_exactly_what_the_ring_counts";
    const RECORDS: u64 = 20_000;
    let s = setup("bcast-lossy", "64KiB", true);
    let a = s.consumer(0);
    let b = s.consumer(1);
    let ring = observe_when_created(&s.location);
    let producer = s.producer(RECORDS, 40_000);
    wait_until(Duration::from_secs(30), "records acknowledged", || read_ledger(&s.ledger).len() > 2_000);
    b.signal(&s.fx, Signal::SIGSTOP);
    // More than a ring's worth published while b is stopped: it is lapped.
    let at_stop = read_ledger(&s.ledger).len();
    wait_until(Duration::from_secs(30), "the producer lapped b", || read_ledger(&s.ledger).len() > at_stop + 2_000);
    b.kill(&s.fx);
    let b = s.consumer(1);
    producer.wait(&s.fx).assert_success();
    wait_accounted(&ring, &["a", "b"], RECORDS);
    let (missed_a, missed_b) = (tallies(&ring, "a").1, tallies(&ring, "b").1);
    a.stop(&s.fx).assert_success();
    b.stop(&s.fx).assert_success();

    let (ea, eb) = (s.evidence(0), s.evidence(1));
    let exact_to_the_ring = ea.lost == missed_a && eb.lost == missed_b;
    let clean = |e: &Evidence| e.duplicated == 0 && e.reordered == 0;
    // The row's lost column is what is missing beyond what the ring told each consumer
    // it missed (lapping is what a lossy ring does, and is counted); the lapped records
    // themselves are in missed_reported_by_the_ring.
    let mut both = Evidence::sum(&[ea.clone(), eb.clone()]);
    both.lost = ea.lost.abs_diff(missed_a) + eb.lost.abs_diff(missed_b);
    report(
        test,
        "lossy broadcast ring, 1 producerd generator + 2 consumerd (file sinks): SIGSTOP consumer b until it is lapped, SIGKILL it, restart it under its name; lost = records missing beyond the missed count the ring reports to each consumer",
        1,
        if exact_to_the_ring && clean(&ea) && clean(&eb) && missed_b > 0 { "pass" } else { "FAIL" },
        &Figures::Counted(both),
        json!({
            "records": RECORDS,
            "missed_reported_by_the_ring": { "a": missed_a, "b": missed_b },
            "lost_by_the_ledger": { "a": ea.lost, "b": eb.lost },
        }),
    );
    assert!(missed_b > 0, "b was lapped while stopped: {eb:?}");
    assert_eq!((ea.lost, eb.lost), (missed_a, missed_b), "lost = the ring's missed, per consumer");
    assert!(clean(&ea) && clean(&eb), "{ea:?} {eb:?}");
    assert_eq!((ea.acknowledged, eb.acknowledged), (RECORDS, RECORDS));
}

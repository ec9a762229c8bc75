//! The daemons on an mpsc ring (issue 13): two `producerd` generators (producer ids 0 and
//! 1) and one `consumerd` on one segment.
//!
//! - `two_generators_*`: the verify sink checks each producer's records arrive exactly
//!   once and in its order (per-producer sequence numbers carried in the records).
//! - `a_killed_generator_*`: one producerd is killed with `SIGKILL` mid-stream and
//!   restarted: each producer's ledger (`SHMRING_TEST_LEDGER`) against the file sink's
//!   output, decoded by the test, shows 0 lost, 0 duplicated, in order per producer; a
//!   hole the kill left (if it landed between a claim and its commit) is reclaimed and
//!   counted (`unblocked_records`). The consumer is stopped (`SIGSTOP`) across the kill and
//!   the restart, so the ring still holds unread records of the killed producer when its
//!   successor looks for where to resume. One RELIABILITY row.
//! - `each_producer_exports_*`: two stdin producers with metrics endpoints: each exports
//!   its own producer's counters, labelled `participant`, so the sum over both equals the
//!   ring's total (the segment's totals exported by each would count every record twice).

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use shm_core::Location;
use std::io::Write;
use std::net::SocketAddr;

use shmring_tests::daemons::{self, Daemon, Kind, Scrape, observe_when_created, segment_section};
use shmring_tests::ledger::{Figures, GENERATOR_LEDGER_VAR, per_producer_evidence, read_ledger};
use shmring_tests::reliability::report;
use shmring_tests::{Backend, Fixture, ProcStat, wait_until};

/// The `[segment]` lines every daemon of these tests has: an mpsc ring of 256 KiB.
fn mpsc_segment(location: &Location) -> String {
    segment_section(location, &["kind = \"mpsc\"", "capacity = \"256KiB\"", "create = \"if-missing\""])
}

/// Generator `id`: `count` records of 64 to 512 bytes at `rate` per second (0: at once).
fn generator(location: &Location, id: u8, count: u64, rate: u64) -> String {
    format!(
        "{}[source]\nkind = \"generator\"\nproducer_id = {id}\ncount = {count}\nrate = {rate}\n\
         min_size = 64\nmax_size = 512\n",
        mpsc_segment(location)
    )
}

fn consumer(location: &Location, sink: &str) -> String {
    format!("{}wait_for_segment = \"10s\"\n[sink]\nconsumer_name = \"mpsc-test\"\n{sink}\n", mpsc_segment(location))
}

/// Waits until the ring's consumer has released `records` records.
fn wait_released(location: &Location, records: u64) {
    let ring = observe_when_created(location);
    wait_until(Duration::from_secs(60), &format!("{records} records released"), || {
        ring.stats().total_consumed >= records
    });
}

#[test]
fn two_generators_feed_one_consumer_each_producer_exactly_once_in_order() {
    const EACH: u64 = 20_000;
    let fx = Fixture::new("mpsc-verify");
    let location = fx.location(Backend::Posix);
    let consumer = Daemon::ready(&fx, Kind::Consumer, &consumer(&location, "kind = \"verify\""));
    let producers: Vec<Daemon> =
        (0..2).map(|id| Daemon::ready(&fx, Kind::Producer, &generator(&location, id, EACH, 0))).collect();
    for p in &producers {
        p.wait(&fx).assert_success();
    }
    wait_released(&location, 2 * EACH);
    consumer.stop(&fx).assert_success();
    let summary = consumer.summary();
    summary.assert_verified(2 * EACH);
    assert_eq!(
        summary.0["next_expected_per_producer"],
        json!({ "0": EACH, "1": EACH }),
        "each producer's stream ends where its count does: {}",
        summary.0
    );
}

#[test]
fn a_killed_generator_restarts_with_nothing_lost_or_duplicated_per_producer() {
    let test = "a_killed_generator_restarts_with_nothing_lost_or_duplicated_per_producer";
    const EACH: u64 = 30_000;
    let fx = Fixture::new("mpsc-kill");
    let location = fx.location(Backend::Posix);
    let out = fx.path("records.bin");
    let ledgers = [fx.path("p0.ledger"), fx.path("p1.ledger")];
    let sink = format!("kind = \"file\"\nformat = \"binary\"\npath = \"{}\"", out.display());
    let consumer = Daemon::ready(&fx, Kind::Consumer, &consumer(&location, &sink));
    let start = |id: u8, rate: u64| {
        Daemon::launch(&fx, Kind::Producer, &generator(&location, id, EACH, rate))
            .env(GENERATOR_LEDGER_VAR, &ledgers[usize::from(id)].display().to_string())
            .start(&fx)
    };
    let steady = start(0, 20_000);
    let victim = start(1, 20_000);
    // Kill it once some of its records are acknowledged, well before its count ends.
    wait_until(Duration::from_secs(30), "producer 1 acknowledged records", || read_ledger(&ledgers[1]).len() > 2_000);
    // The consumer stopped first, so the ring holds records of producer 1 it has not read
    // when the restarted producer 1 looks for its resume point.
    consumer.signal(&fx, Signal::SIGSTOP);
    let consumer_stat = ProcStat::open(consumer.pid());
    wait_until(Duration::from_secs(30), "the consumer is stopped", || consumer_stat.state() == Some(b'T'));
    victim.kill(&fx);
    let before_kill = read_ledger(&ledgers[1]).len() as u64;
    let restarted = start(1, 0);
    // It looks for its resume point while the consumer is stopped.
    restarted.wait_log(&fx, "waiting for the consumer to pass the ring's earlier records");
    consumer.signal(&fx, Signal::SIGCONT);
    steady.wait(&fx).assert_success();
    restarted.wait(&fx).assert_success();
    let acknowledged: u64 = ledgers.iter().map(|l| read_ledger(l).len() as u64).sum();
    wait_released(&location, acknowledged);
    let ring = observe_when_created(&location);
    let status = ring.mpsc_status().expect("an mpsc ring");
    consumer.stop(&fx).assert_success();

    let found = per_producer_evidence(&[(0, &ledgers[0]), (1, &ledgers[1])], Path::new(&out));
    let unblocked: u64 = status.producers.iter().map(|p| p.row.unblocked_records).sum();
    report(
        test,
        "mpsc ring, 2 producerd generators + 1 consumerd (file sink): SIGKILL producer 1 mid-stream while the consumer is stopped, restart it, resume the consumer",
        1,
        if found.exact() { "pass" } else { "FAIL" },
        &Figures::Counted(found.clone()),
        json!({
            "records_per_run": EACH,
            "acknowledged_by_producer_1_before_the_kill": before_kill,
            "unblocked_records": unblocked,
            "reordered": found.reordered,
        }),
    );
    found.assert_exact();
    assert!(found.acknowledged >= EACH + before_kill, "{found:?}");
}

#[test]
fn each_producer_exports_its_own_counters_so_a_sum_over_jobs_counts_each_record_once() {
    const LINES: [u64; 2] = [300, 700];
    let fx = Fixture::new("mpsc-metrics");
    let location = fx.location(Backend::Posix);
    let consumer = Daemon::ready(&fx, Kind::Consumer, &consumer(&location, "kind = \"discard\""));
    let mut producers = Vec::new();
    for (id, lines) in LINES.iter().enumerate() {
        let input = daemons::fifo(&fx, &format!("stdin-{id}"));
        let addr: SocketAddr = format!("127.0.0.1:{}", daemons::free_tcp_port()).parse().expect("an address");
        let config = format!(
            "{}[source]\nkind = \"stdin\"\nproducer_id = {id}\n[metrics]\nlisten = \"{addr}\"\n",
            mpsc_segment(&location)
        );
        let mut producer = Daemon::launch(&fx, Kind::Producer, &config).stdin_from(&input).start(&fx);
        // The writer stays open: the producer keeps running (and serving) after the lines.
        let mut stdin = daemons::open_fifo_writer(&input);
        producer.wait_for(&fx, "READY=1");
        let text: String = (0..*lines).map(|i| format!("producer {id} line {i}\n")).collect();
        stdin.write_all(text.as_bytes()).expect("write stdin");
        producers.push((producer, stdin, addr));
    }
    wait_released(&location, LINES.iter().sum());
    let ring = observe_when_created(&location);
    let mut sum = 0.0;
    for (id, (_, _, addr)) in producers.iter().enumerate() {
        let scrape = Scrape::get(*addr);
        let (_, labels) = scrape.sample("shmring_records_produced");
        assert!(labels.contains(&("participant".to_owned(), id.to_string())), "{labels:?}");
        let produced = scrape.value("shmring_records_produced");
        assert_eq!(produced, LINES[id] as f64, "producer {id}:\n{}", scrape.text);
        assert_eq!(scrape.value("producerd_records_committed"), produced, "{}", scrape.text);
        assert_eq!(scrape.value("shmring_unblocked_records"), 0.0, "{}", scrape.text);
        // Wake-ups are counted for the ring, not per producer: not exported as anyone's.
        assert!(!scrape.exposition.families.contains_key("shmring_producer_wakes"), "{}", scrape.text);
        sum += produced;
    }
    assert_eq!(sum, ring.stats().total_produced as f64, "the sum over both jobs is the ring's total");
    for (producer, stdin, _) in producers {
        drop(stdin);
        producer.wait(&fx).assert_success();
    }
    consumer.stop(&fx).assert_success();
}

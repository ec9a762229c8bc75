//! Rings bridged through a real NATS JetStream server (issue 15):
//!
//! producerd (generator) -> ring A -> consumerd (`nats` sink) -> stream ->
//! producerd (`nats` source) -> ring B -> consumerd (file sink, decoded by the test).
//!
//! - `bridge_carries_every_record_once_in_order`: N records (10^5; `SHMRING_NATS_RECORDS`
//!   sets another count, 10^6 for the long run) arrive once each, in order, checked
//!   against the generator's test ledger (`SHMRING_TEST_LEDGER`).
//! - `bridge_survives_kill9_of_both_bridging_daemons`: the same while the bridging
//!   consumerd and producerd are killed with SIGKILL several times mid-stream and
//!   restarted: 0 lost, 0 duplicated, 0 reordered; a RELIABILITY row.
//!
//! Lost and duplicated are counted from the ledger and the file, never from the
//! daemons' counters. `nats-server` must be installed (CI installs it): without it the
//! tests fail and say so.

use std::time::{Duration, Instant};

use serde_json::json;
use shm_core::Location;
use shmring_tests::daemons::{self, Daemon, Kind, observe_when_created, segment_section, toml_string};
use shmring_tests::ledger::{Figures, GeneratorStream};
use shmring_tests::nats_server::NatsServer;
use shmring_tests::records::splitmix64;
use shmring_tests::reliability::report;
use shmring_tests::{Backend, Fixture, seed, wait_until};

/// Records per run unless `SHMRING_NATS_RECORDS` says otherwise.
const DEFAULT_RECORDS: u64 = 100_000;

fn records() -> u64 {
    std::env::var("SHMRING_NATS_RECORDS").ok().and_then(|n| n.parse().ok()).unwrap_or(DEFAULT_RECORDS)
}

/// How long ring B may stay still before the run counts what it has.
const SETTLED: Duration = Duration::from_secs(5);

/// How long a whole run may take: generous, since the machine is shared.
fn patience(records: u64) -> Duration {
    Duration::from_secs(60 + records / 2_000)
}

/// The four daemons' configs of one bridge.
struct Bridge {
    stream: GeneratorStream,
    ring_a: Location,
    ring_b: Location,
    generator: String,
    sink: String,
    source: String,
    reader: String,
}

impl Bridge {
    fn new(fx: &Fixture, server: &NatsServer, count: u64) -> Bridge {
        let stream = GeneratorStream::new(fx, "bridged");
        let (ring_a, ring_b) = (fx.location(Backend::Posix), fx.location(Backend::Posix));
        // The sink publishes to one subject per producer id; the source reads them all.
        // (Each test has a server of its own: the names need not be unique.)
        let nats = |last_token: &str, extra: &str| {
            format!(
                "[nats]\nservers = [{}]\nstream = {}\nsubject = {}\n{extra}",
                toml_string(&server.url()),
                toml_string("BRIDGE"),
                toml_string(&format!("bridge.{last_token}")),
            )
        };
        let wait = ["wait_for_segment = \"30s\""];
        let generator = format!(
            "{}[source]\nkind = \"generator\"\ncount = {count}\nmin_size = \"64\"\nmax_size = \"64\"\n",
            segment_section(&ring_a, &["capacity = \"1MiB\""])
        );
        let sink = format!(
            "{}[sink]\nkind = \"nats\"\n{}",
            segment_section(&ring_a, &wait),
            nats("{producer}", "max_in_flight = 1024\n")
        );
        let state = fx.path("bridge-in.state");
        let source = format!(
            "{}[source]\nkind = \"nats\"\n{}",
            segment_section(&ring_b, &["capacity = \"1MiB\""]),
            nats(
                "*",
                &format!(
                    "consumer = \"in\"\nstate = {}\nbatch = 512\nmax_in_flight = 4096\n",
                    toml_string(&state.display().to_string())
                )
            ),
        );
        let reader = format!("{}[sink]\n{}\n", segment_section(&ring_b, &wait), stream.sink());
        Bridge { stream, ring_a, ring_b, generator, sink, source, reader }
    }
}

/// Runs one bridge of `count` records, killing the bridging daemons `kills` times each
/// (alternately) mid-stream; returns the evidence and how long it took.
fn run_bridge(test: &str, count: u64, kills: u64) -> (shmring_tests::ledger::Evidence, Duration) {
    let fx = Fixture::new(test);
    let server = NatsServer::start(&fx);
    let bridge = Bridge::new(&fx, &server, count);
    let started = Instant::now();
    let reader = Daemon::launch(&fx, Kind::Consumer, &bridge.reader).start(&fx);
    let source_launch = Daemon::launch(&fx, Kind::Producer, &bridge.source);
    let mut source = source_launch.start(&fx);
    source.wait_for(&fx, "READY=1");
    let sink_launch = Daemon::launch(&fx, Kind::Consumer, &bridge.sink);
    let mut sink = sink_launch.start(&fx);
    let generator = bridge.stream.producer(Daemon::launch(&fx, Kind::Producer, &bridge.generator)).start(&fx);
    let ring_a = observe_when_created(&bridge.ring_a);
    let ring_b = observe_when_created(&bridge.ring_b);
    let mut rng = seed(test);
    for kill in 0..2 * kills {
        // A kill at a random point of the stream, once records move through ring B.
        let step = count / (2 * kills + 1);
        let target = step * (kill + 1);
        wait_until(patience(count), "records reach ring B", || ring_b.stats().total_produced >= target);
        rng = splitmix64(rng);
        std::thread::sleep(Duration::from_micros(rng % 20_000));
        if kill % 2 == 0 {
            sink.kill(&fx);
            sink = sink_launch.start(&fx);
        } else {
            source.kill(&fx);
            source = source_launch.start(&fx);
        }
    }
    wait_until(patience(count), "the generator has published every record", || ring_a.stats().total_produced >= count);
    generator.wait(&fx).assert_success();
    // Every record left ring A; then ring B gets all of them, or stops growing (records
    // lost on the way: the evidence below counts them).
    daemons::wait_drained(&ring_a);
    let mut last = (ring_b.stats().total_produced, Instant::now());
    wait_until(patience(count), "ring B has every record or stops growing", || {
        let now = ring_b.stats().total_produced;
        if now != last.0 {
            last = (now, Instant::now());
        }
        now >= count || last.1.elapsed() > SETTLED
    });
    // Any duplicate would come now: give it a moment to show.
    std::thread::sleep(Duration::from_millis(300));
    daemons::wait_drained(&ring_b);
    for daemon in [&sink, &source, &reader] {
        daemon.stop(&fx).assert_success();
    }
    let took = started.elapsed();
    let found = bridge.stream.evidence();
    assert_eq!(ring_b.stats().total_produced, found.delivered, "ring B holds what the file holds");
    (found, took)
}

#[test]
fn bridge_carries_every_record_once_in_order() {
    let test = "bridge_carries_every_record_once_in_order";
    let count = records();
    let (found, took) = run_bridge(test, count, 0);
    eprintln!("{count} records bridged in {took:?} ({:.0}/s)", count as f64 / took.as_secs_f64());
    found.assert_exact();
    assert_eq!((found.acknowledged, found.delivered), (count, count), "{found:?}");
}

#[test]
fn bridge_survives_kill9_of_both_bridging_daemons() {
    let test = "bridge_survives_kill9_of_both_bridging_daemons";
    let count = records();
    let kills = 3;
    let (found, took) = run_bridge(test, count, kills);
    report(
        test,
        "bridging consumerd (nats sink) and producerd (nats source) each SIGKILLed 3 times mid-stream",
        2 * kills,
        if found.exact() && found.delivered == count { "pass" } else { "FAIL" },
        &Figures::Counted(found.clone()),
        json!({ "records": count, "reordered": found.reordered, "seconds": took.as_secs_f64() }),
    );
    found.assert_exact();
    assert_eq!((found.acknowledged, found.delivered), (count, count), "{found:?}");
}

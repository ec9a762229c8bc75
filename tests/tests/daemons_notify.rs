//! What the daemons tell systemd (sd_notify) and Prometheus (the metrics endpoint).
//!
//! - `notify_lifecycle`: `READY=1` with `MAINPID=` (the daemon's pid) and a `STATUS=`;
//!   `STATUS=` updates while running; `STOPPING=1` on `SIGTERM`, then exit 0.
//! - `watchdog_pings_while_running`: with `WATCHDOG_USEC` (and no `WATCHDOG_PID`) both
//!   daemons ping `WATCHDOG=1` about every `WATCHDOG_USEC / 2`; with a `WATCHDOG_PID`
//!   that is not theirs, they never do.
//! - `reload_notifies_then_acknowledges`: on `SIGHUP`, `RELOADING=1` with a `MONOTONIC_USEC=`
//!   taken during the reload (systemd 253+ needs it), then `READY=1`; and under a
//!   `$RUNTIME_DIRECTORY`, `reloaded.<pid>` counts the reloads handled and says how the
//!   last one ended (`1 applied`, then `2 refused` for a broken config), written after
//!   that `READY=1` (what the units' waiting `ExecReload=` reads, and fails on `refused`).
//! - `metrics_exposition_parses_with_names_types_labels_and_moving_values`: `GET /metrics`
//!   on each daemon parses as OpenMetrics; each family has the expected name, type, unit
//!   and `segment`/`role` labels; a segment's counters come from one daemon only (the
//!   producer's side from producerd, the consumer's side and the gauges from consumerd);
//!   the verify latency histogram has buckets from 100 ns to 1 s; values move; other
//!   paths are 404.

use std::net::SocketAddr;
use std::time::Duration;

use openmetrics_parser::{OpenMetricsType, OpenMetricsValue};
use shm_core::Location;
use shmring_tests::daemons::{self, Daemon, Kind, Scrape, generator, observe, segment_section, wait_produced};
use shmring_tests::{Backend, Fixture, wait_until};

/// A consumer config: the verify sink on `location`, then `extra`.
fn verify(location: &Location, extra: &str) -> String {
    format!("{}[sink]\nkind = \"verify\"\n{extra}", segment_section(location, &["wait_for_segment = \"10s\""]))
}

#[test]
fn notify_lifecycle() {
    let fx = Fixture::new("notify");
    let location = fx.location(Backend::Posix);
    let mut producer = Daemon::launch(&fx, Kind::Producer, &generator(&location, 20_000)).start(&fx);
    let mut consumer = Daemon::launch(&fx, Kind::Consumer, &verify(&location, "")).start(&fx);
    for (daemon, status) in [(&mut producer, "records committed"), (&mut consumer, "records delivered")] {
        let ready = daemon.wait_for(&fx, "READY=1");
        assert!(ready.lines().any(|l| l == format!("MAINPID={}", daemon.pid())), "{ready:?}");
        assert!(ready.lines().any(|l| l.starts_with("STATUS=")), "{ready:?}");
        // Then a status line of its own, about once a second.
        let update =
            daemon.wait_for_match(&fx, "a STATUS= update", |d| d.starts_with("STATUS=") && !d.contains("READY=1"));
        assert!(update.contains(status), "{update:?}");
    }
    let ring = observe(&location);
    wait_produced(&ring, 1000);
    for daemon in [&mut producer, &mut consumer] {
        daemon.signal(&fx, nix::sys::signal::Signal::SIGTERM);
        daemon.wait_for(&fx, "STOPPING=1");
        daemon.wait_for(&fx, "STATUS=stopped");
        daemon.wait(&fx).assert_success();
        let texts: Vec<String> = daemon.notifications().into_iter().map(|(_, d)| d).collect();
        let ready = texts.iter().filter(|d| d.contains("READY=1")).count();
        assert_eq!(ready, 1, "one READY=1 without a reload: {texts:?}");
    }
}

#[test]
fn watchdog_pings_while_running() {
    let fx = Fixture::new("watchdog");
    let location = fx.location(Backend::Posix);
    let mut producer =
        Daemon::launch(&fx, Kind::Producer, &generator(&location, 20_000)).env("WATCHDOG_USEC", "200000").start(&fx);
    let mut consumer =
        Daemon::launch(&fx, Kind::Consumer, &verify(&location, "")).env("WATCHDOG_USEC", "200000").start(&fx);
    // A producer on a segment of its own, told the watchdog is some other process's.
    let other = fx.location(Backend::Posix);
    let mut not_ours = Daemon::launch(&fx, Kind::Producer, &generator(&other, 1000))
        .env("WATCHDOG_USEC", "200000")
        .env("WATCHDOG_PID", "1")
        .start(&fx);
    for daemon in [&mut producer, &mut consumer, &mut not_ours] {
        daemon.wait_for(&fx, "READY=1");
    }
    let pings = |d: &Daemon| -> Vec<std::time::Instant> {
        d.notifications().iter().filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1")).map(|(t, _)| *t).collect()
    };
    // Ten pings each: about a second at one per 100 ms.
    wait_until(daemons::PATIENCE, "ten watchdog pings from each", || {
        fx.assert_running(producer.proc());
        fx.assert_running(consumer.proc());
        pings(&producer).len() >= 10 && pings(&consumer).len() >= 10
    });
    for daemon in [&producer, &consumer] {
        let times = pings(daemon);
        let mean = (times[times.len() - 1] - times[0]) / (times.len() as u32 - 1);
        // One per WATCHDOG_USEC / 2 = 100 ms, and not a flood: a loaded machine can only
        // delay pings, so the bound that holds there is a lower one on the mean (ten pings
        // arriving at all, within PATIENCE, is the liveness half, asserted above).
        assert!(
            mean >= Duration::from_millis(50),
            "{} pings, {mean:?} apart on average: {:?}",
            times.len(),
            daemon.notifications()
        );
    }
    assert!(pings(&not_ours).is_empty(), "pinged for a watchdog that is not its own");
    for daemon in [&producer, &consumer, &not_ours] {
        daemon.stop(&fx).assert_success();
    }
}

/// `CLOCK_MONOTONIC` now, in microseconds, as systemd's `MONOTONIC_USEC=` counts.
fn monotonic_usec() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1_000
}

#[test]
fn reload_notifies_then_acknowledges() {
    let fx = Fixture::new("reload-ack");
    let location = fx.location(Backend::Posix);
    let runtime = fx.path("runtime");
    std::fs::create_dir(&runtime).unwrap();
    let runtime_text = runtime.to_str().unwrap();
    let mut producer = Daemon::launch(&fx, Kind::Producer, &generator(&location, 20_000))
        .env("RUNTIME_DIRECTORY", runtime_text)
        .start(&fx);
    let mut consumer =
        Daemon::launch(&fx, Kind::Consumer, &verify(&location, "")).env("RUNTIME_DIRECTORY", runtime_text).start(&fx);
    for daemon in [&mut producer, &mut consumer] {
        daemon.wait_for(&fx, "READY=1");
        let acknowledged = runtime.join(format!("reloaded.{}", daemon.pid()));
        assert!(!acknowledged.exists(), "an acknowledgement before any reload");
        let good = std::fs::read_to_string(daemon.config_path()).unwrap();
        for (round, outcome) in [(1, "applied"), (2, "refused")] {
            if outcome == "refused" {
                std::fs::write(daemon.config_path(), format!("{good}\n[bogus]\n")).unwrap();
            }
            let before = monotonic_usec();
            daemon.signal(&fx, nix::sys::signal::Signal::SIGHUP);
            let reloading = daemon.wait_for(&fx, "RELOADING=1");
            let after = monotonic_usec();
            let stamp: u64 = reloading
                .lines()
                .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
                .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC=: {reloading:?}"))
                .parse()
                .unwrap();
            assert!((before..=after).contains(&stamp), "MONOTONIC_USEC={stamp} not within {before}..={after}");
            daemon.wait_for(&fx, "READY=1");
            let want = format!("{round} {outcome}\n");
            wait_until(daemons::PATIENCE, "the reload acknowledged", || {
                std::fs::read_to_string(&acknowledged).is_ok_and(|text| text == want)
            });
        }
        std::fs::write(daemon.config_path(), good).unwrap();
    }
    for daemon in [&producer, &consumer] {
        daemon.stop(&fx).assert_success();
    }
}

/// A `reloaded.<pid>` left by an earlier process with the same pid (killed with -9, so it
/// never removed its own) holds the very text the first reload writes: `ExecReload=` would
/// wait for a change until its timeout. Each daemon removes it before `READY=1`, and its
/// own when it stops.
#[test]
fn a_reload_acknowledgement_left_under_a_reused_pid_is_removed() {
    let fx = Fixture::new("reload-stale");
    let location = fx.location(Backend::Posix);
    let runtime = fx.path("runtime");
    std::fs::create_dir(&runtime).unwrap();
    let runtime_text = runtime.to_str().unwrap();
    let stale = "printf '1 applied\\n' >\"$RUNTIME_DIRECTORY/reloaded.$$\"";
    let launches = [
        Daemon::launch(&fx, Kind::Producer, &generator(&location, 20_000)),
        Daemon::launch(&fx, Kind::Consumer, &verify(&location, "")),
    ];
    for launch in launches {
        let mut daemon = launch.env("RUNTIME_DIRECTORY", runtime_text).before_exec(stale).start(&fx);
        let acknowledged = runtime.join(format!("reloaded.{}", daemon.pid()));
        daemon.wait_for(&fx, "READY=1");
        assert!(!acknowledged.exists(), "{}: the stale acknowledgement is still there", acknowledged.display());
        daemon.signal(&fx, nix::sys::signal::Signal::SIGHUP);
        wait_until(daemons::PATIENCE, "the reload acknowledged", || {
            std::fs::read_to_string(&acknowledged).is_ok_and(|text| text == "1 applied\n")
        });
        daemon.stop(&fx).assert_success();
        assert!(!acknowledged.exists(), "{}: it outlived its daemon", acknowledged.display());
    }
}

#[test]
fn metrics_exposition_parses_with_names_types_labels_and_moving_values() {
    let fx = Fixture::new("metrics");
    let location = fx.location(Backend::Posix);
    let p_port = daemons::free_tcp_port();
    let c_port = std::iter::repeat_with(daemons::free_tcp_port).find(|&p| p != p_port).expect("another port");
    let (p_addr, c_addr) = (SocketAddr::from(([127, 0, 0, 1], p_port)), SocketAddr::from(([127, 0, 0, 1], c_port)));
    let producer = Daemon::ready(
        &fx,
        Kind::Producer,
        &format!("{}[metrics]\nlisten = \"{p_addr}\"\n", generator(&location, 20_000)),
    );
    let consumer =
        Daemon::ready(&fx, Kind::Consumer, &verify(&location, &format!("[metrics]\nlisten = \"{c_addr}\"\n")));
    let ring = observe(&location);
    wait_produced(&ring, 2000);
    let [_, name] = shmring_tests::location_args(&location);
    let labels = |role: &str| vec![("role".to_owned(), role.to_owned()), ("segment".to_owned(), name.clone())];

    // The producer: its side's counters, its own, nothing of the consumer's side.
    let p = Scrape::get(p_addr);
    assert!(p.head.starts_with("HTTP/1.0 200"), "{}", p.head);
    // Header names are case-insensitive (hyper writes them in lower case).
    let content_type = "content-type: application/openmetrics-text; version=1.0.0";
    assert!(p.head.to_ascii_lowercase().contains(content_type), "{}", p.head);
    for family in PRODUCER_COUNTERS.iter().chain(["producerd_records_committed", "producerd_source_errors"].iter()) {
        assert_eq!(p.family(family).family_type, OpenMetricsType::Counter, "{family}");
        assert_eq!(p.sample(family).1, labels("producer"), "{family}");
    }
    for family in CONSUMER_COUNTERS.iter().chain(SEGMENT_GAUGES.iter()) {
        assert!(!p.exposition.families.contains_key(*family), "{family} exported by the producer too:\n{}", p.text);
    }
    let produced = p.value("shmring_records_produced");
    assert!(produced >= 2000.0 && p.value("producerd_records_committed") >= 2000.0, "{}", p.text);
    assert!(p.value("shmring_bytes_produced") >= produced * 16.0, "{}", p.text);

    // The consumer: its side's counters, the segment's gauges with their unit, the
    // verify sink's latency histogram; nothing of the producer's side.
    wait_until(daemons::PATIENCE, "the consumer delivered what the producer had", || {
        ring.stats().total_consumed as f64 >= produced
    });
    let c = Scrape::get(c_addr);
    for family in CONSUMER_COUNTERS.iter().chain(["consumerd_records_delivered", "consumerd_verify_received"].iter()) {
        assert_eq!(c.family(family).family_type, OpenMetricsType::Counter, "{family}");
        assert_eq!(c.sample(family).1, labels("consumer"), "{family}");
    }
    for family in SEGMENT_GAUGES {
        assert_eq!(c.family(family).family_type, OpenMetricsType::Gauge, "{family}");
        assert_eq!(c.sample(family).1, labels("consumer"), "{family}");
    }
    for family in PRODUCER_COUNTERS {
        assert!(!c.exposition.families.contains_key(family), "{family} exported by the consumer too:\n{}", c.text);
    }
    assert_eq!(c.family("shmring_capacity_bytes").unit, "bytes");
    assert_eq!(c.value("shmring_capacity_bytes"), ring.stats().capacity as f64);
    assert!(c.value("shmring_records_consumed") >= produced, "{}", c.text);
    assert!(c.value("consumerd_verify_received") >= produced, "{}", c.text);
    assert_eq!(c.value("consumerd_verify_lost"), 0.0, "{}", c.text);

    let latency = c.family("consumerd_verify_latency_seconds");
    assert_eq!(latency.family_type, OpenMetricsType::Histogram);
    let (OpenMetricsValue::Histogram(histogram), histogram_labels) = c.sample("consumerd_verify_latency_seconds")
    else {
        panic!("not a histogram:\n{}", c.text)
    };
    assert_eq!(histogram_labels, labels("consumer"));
    let bounds: Vec<f64> = histogram.buckets.iter().map(|b| b.upper_bound).collect();
    assert_eq!(
        (bounds.first(), bounds.iter().rev().nth(1), bounds.last()),
        (Some(&1e-7), Some(&1.0), Some(&f64::INFINITY))
    );
    let count = histogram.count.expect("a _count");
    assert!(count as f64 >= produced, "{count} latencies for {produced} records:\n{}", c.text);
    assert!(histogram.sum.expect("a _sum").as_f64() > 0.0, "{}", c.text);

    for scrape in [&p, &c] {
        for family in scrape.exposition.families.values() {
            assert!(!family.help.is_empty(), "{} has no HELP", family.family_name);
        }
    }

    // Values move: a later scrape sees more produced.
    wait_produced(&ring, produced as u64 + 1000);
    assert!(Scrape::get(p_addr).value("shmring_records_produced") > produced);

    // `/metrics` only.
    for path in ["/", "/metrics/x", "/favicon.ico"] {
        let response = daemons::http_get(p_addr, path);
        assert!(response.starts_with("HTTP/1.0 404"), "{path}: {response}");
    }

    producer.stop(&fx).assert_success();
    consumer.stop(&fx).assert_success();
}

/// The producer's side of a segment's counters (family names, as in the `TYPE` lines).
const PRODUCER_COUNTERS: [&str; 6] = [
    "shmring_records_produced",
    "shmring_bytes_produced",
    "shmring_producer_blocks",
    "shmring_producer_sleeps",
    "shmring_producer_wakes",
    "shmring_producer_missed_wakes",
];

/// The consumer's side.
const CONSUMER_COUNTERS: [&str; 6] = [
    "shmring_records_consumed",
    "shmring_bytes_consumed",
    "shmring_consumer_blocks",
    "shmring_consumer_sleeps",
    "shmring_consumer_wakes",
    "shmring_consumer_missed_wakes",
];

/// The segment's gauges, exported by the consumer.
const SEGMENT_GAUGES: [&str; 3] = ["shmring_capacity_bytes", "shmring_used_bytes", "shmring_records_in_flight"];

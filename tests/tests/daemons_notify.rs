//! What the daemons tell systemd (sd_notify) and Prometheus (the metrics endpoint).
//!
//! - `notify_lifecycle`: `READY=1` with `MAINPID=` (the daemon's pid) and a `STATUS=`;
//!   `STATUS=` updates while running; `STOPPING=1` on `SIGTERM`, then exit 0.
//! - `watchdog_pings_while_running`: with `WATCHDOG_USEC` (and no `WATCHDOG_PID`) both
//!   daemons ping `WATCHDOG=1` about every `WATCHDOG_USEC / 2`; with a `WATCHDOG_PID`
//!   that is not theirs, they never do.
//! - `reload_notifies_then_acknowledges`: on `SIGHUP`, `RELOADING=1` with a `MONOTONIC_USEC=`
//!   taken during the reload (systemd 253+ needs it), then `READY=1`; and under a
//!   `$RUNTIME_DIRECTORY`, `reloaded.<pid>` counts the reloads handled, written after that
//!   `READY=1` (what the units' waiting `ExecReload=` reads).
//! - `metrics_endpoint_serves_prometheus_text`: a plain HTTP GET on `[metrics] listen`
//!   returns the segment's counters labelled with the segment, and each daemon's own.

use std::net::SocketAddr;
use std::time::Duration;

use shm_core::Location;
use shmring_tests::daemons::{self, Daemon, Kind, generator, observe, segment_section, wait_produced};
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
        for round in 1..=2 {
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
            let want = format!("{round}\n");
            wait_until(daemons::PATIENCE, "the reload acknowledged", || {
                std::fs::read_to_string(&acknowledged).is_ok_and(|text| text == want)
            });
        }
    }
    for daemon in [&producer, &consumer] {
        daemon.stop(&fx).assert_success();
    }
}

#[test]
fn metrics_endpoint_serves_prometheus_text() {
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
    let produced = format!("shmring_total_produced{{segment=\"{name}\"}}");

    let p = daemons::http_get(p_addr);
    assert!(p.starts_with("HTTP/1.0 200"), "{p}");
    assert!(p.contains("Content-Type: text/plain; version=0.0.4"), "{p}");
    assert!(p.contains("# TYPE shmring_total_produced counter"), "{p}");
    let p_total = daemons::metric(&p, &produced).unwrap_or_else(|| panic!("no {produced} in\n{p}"));
    let committed = daemons::metric(&p, "producerd_committed_total").unwrap_or_else(|| panic!("no committed in\n{p}"));
    assert!(p_total >= 2000 && committed >= 2000, "{p}");

    // Counters are live: a later scrape of the consumer sees at least what the producer's did.
    wait_until(daemons::PATIENCE, "the consumer delivered what the producer had", || {
        ring.stats().total_consumed >= p_total
    });
    let c = daemons::http_get(c_addr);
    assert!(c.starts_with("HTTP/1.0 200"), "{c}");
    let c_total = daemons::metric(&c, &produced).unwrap_or_else(|| panic!("no {produced} in\n{c}"));
    let delivered = daemons::metric(&c, "consumerd_delivered_total").unwrap_or_else(|| panic!("no delivered in\n{c}"));
    let verified = daemons::metric(&c, "consumerd_verify_received").unwrap_or_else(|| panic!("no verify in\n{c}"));
    assert!(c_total >= p_total && delivered >= p_total && verified >= p_total, "{c}");
    assert_eq!(daemons::metric(&c, "consumerd_verify_lost"), Some(0), "{c}");

    producer.stop(&fx).assert_success();
    consumer.stop(&fx).assert_success();
}

//! A segment unlinked under running daemons (`shmctl unlink --force`, `rm` in /dev/shm, an
//! operator's mistake): both daemons notice within about a second, log it, and act as
//! `on_unlinked` says — `exit` (code 75, so systemd restarts them on a fresh segment) or
//! `recreate` (carry on in-process on a re-created segment). Neither goes on writing into
//! a segment nobody else can reach.

use std::time::{Duration, Instant};

use serde_json::Value;
use shm_core::{Location, Segment};
use shmring_tests::daemons::{Daemon, Kind, observe, observe_when_created, segment_section, wait_consumed};
use shmring_tests::ledger::{Figures, GeneratorStream, read_ledger};
use shmring_tests::{Backend, Fixture, reliability, wait_until};

/// The exit code of a daemon whose segment was unlinked (`shm_daemon::exit::UNLINKED`).
const UNLINKED: i32 = 75;

fn producer(location: &Location, extra: &[&str]) -> String {
    format!("{}[source]\nkind = \"generator\"\nrate = 50000\n", segment_section(location, extra))
}

fn consumer(location: &Location, extra: &[&str], sink: &str) -> String {
    let mut lines = vec!["wait_for_segment = \"10s\""];
    lines.extend_from_slice(extra);
    format!("{}[sink]\n{sink}\n", segment_section(location, &lines))
}

/// The verify sink's lines, for the tests that count with consumerd's own summary.
const VERIFY: &str = "kind = \"verify\"";

#[test]
fn by_default_both_daemons_exit_75_soon_after_the_unlink() {
    for backend in Backend::NAMED {
        let fx = Fixture::new("unlinked-exit");
        let location = fx.location(backend);
        let stream = GeneratorStream::new(&fx, "stream");
        let consumerd = Daemon::launch(&fx, Kind::Consumer, &consumer(&location, &[], &stream.sink())).start(&fx);
        let mut producerd = stream.producer(Daemon::launch(&fx, Kind::Producer, &producer(&location, &[]))).start(&fx);
        producerd.wait_for(&fx, "READY=1");
        wait_consumed(&observe(&location), 1000);

        let unlinked_at = Instant::now();
        Segment::unlink(&location).expect("unlink the running segment");
        for (name, daemon) in [("producerd", &producerd), ("consumerd", &consumerd)] {
            let finished = daemon.wait(&fx);
            assert_eq!(finished.status.code(), Some(UNLINKED), "{backend:?} {name}: {finished:?}");
            assert!(daemon.log().contains("unlinked while in use"), "{backend:?} {name} log:\n{}", daemon.log());
        }
        let noticed = unlinked_at.elapsed();
        assert!(noticed < Duration::from_secs(3), "{backend:?}: took {noticed:?} to notice and stop");
        let evidence = stream.evidence();
        reliability::report(
            &format!("unlinked_exit_{}", backend.name()),
            "segment unlinked under running daemons (on_unlinked = exit)",
            1,
            &format!("both exited 75 within {:.1} s", noticed.as_secs_f64()),
            &Figures::Counted(evidence.clone()),
            Value::Null,
        );
        evidence.assert_exact();
        assert!(evidence.delivered >= 1000, "{backend:?}: {evidence:?}");
    }
}

/// The consumer notices the unlink first while the producer, stopped (SIGSTOP), has not:
/// the producer publishes again when it is continued, until it notices too, and those
/// records are acknowledged. consumerd's drain must last until no producer is attached
/// (within its drain timeout), or they are lost: a clean-clone CI run once lost 56 this
/// way, when the consumer's unlink check came first by chance.
#[test]
fn the_consumer_that_notices_the_unlink_first_waits_for_the_producer_still_attached() {
    use nix::sys::signal::Signal;
    let fx = Fixture::new("unlinked-first");
    let location = fx.location(Backend::Posix);
    let stream = GeneratorStream::new(&fx, "stream");
    let config = format!("{}[shutdown]\ndrain_timeout = \"10s\"\n", consumer(&location, &[], &stream.sink()));
    let consumerd = Daemon::launch(&fx, Kind::Consumer, &config).start(&fx);
    let mut producerd = stream.producer(Daemon::launch(&fx, Kind::Producer, &producer(&location, &[]))).start(&fx);
    producerd.wait_for(&fx, "READY=1");
    wait_consumed(&observe(&location), 1000);

    producerd.signal(&fx, Signal::SIGSTOP);
    let before = read_ledger(&stream.ledger).len();
    Segment::unlink(&location).expect("unlink the running segment");
    // It noticed the unlink (nothing else stops it): its drain has begun.
    consumerd.wait_log(&fx, "draining");
    // The stopped producer is still attached: the consumer must not finish its drain.
    let waited = Instant::now();
    while waited.elapsed() < Duration::from_secs(1) {
        assert!(
            fx.is_running(consumerd.proc()),
            "consumerd exited while a producer was still attached to the unlinked segment\nlog:\n{}",
            consumerd.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    producerd.signal(&fx, Signal::SIGCONT);
    for (name, daemon) in [("producerd", &producerd), ("consumerd", &consumerd)] {
        let finished = daemon.wait(&fx);
        assert_eq!(finished.status.code(), Some(UNLINKED), "{name}: {finished:?}");
    }
    let after = read_ledger(&stream.ledger).len();
    let evidence = stream.evidence();
    reliability::report(
        "unlinked_exit_consumer_first",
        "segment unlinked with the producer stopped (SIGSTOP), so the consumer notices first; SIGCONT 1 s later",
        1,
        &format!(
            "both exited 75; consumerd waited for the producer, which published {} records after it was continued",
            after - before
        ),
        &Figures::Counted(evidence.clone()),
        Value::Null,
    );
    evidence.assert_exact();
}

#[test]
fn with_recreate_the_stream_continues_on_a_new_segment() {
    let fx = Fixture::new("unlinked-recreate");
    let location = fx.location(Backend::Posix);
    let recreate = ["on_unlinked = \"recreate\""];
    let stream = GeneratorStream::new(&fx, "stream");
    let consumerd = Daemon::launch(&fx, Kind::Consumer, &consumer(&location, &recreate, &stream.sink())).start(&fx);
    let mut producerd =
        stream.producer(Daemon::launch(&fx, Kind::Producer, &producer(&location, &recreate))).start(&fx);
    producerd.wait_for(&fx, "READY=1");
    let old = observe(&location);
    wait_consumed(&old, 1000);
    let old_created = old.info().expect("info").created_unix_ns;
    let consumed_before = old.stats().total_consumed;
    drop(old);

    Segment::unlink(&location).expect("unlink the running segment");
    // A new segment appears under the same name, and records flow through it.
    let mut new = observe_when_created(&location);
    wait_until(Duration::from_secs(10), "a re-created segment", || {
        if new.info().is_ok_and(|i| i.created_unix_ns != old_created) {
            return true;
        }
        if let Ok(s) = Segment::builder(location.clone()).read_only().expected_owner(None).open() {
            new = s;
        }
        false
    });
    wait_consumed(&new, 1000);
    assert!(producerd.log().contains("re-creating it"), "producer log:\n{}", producerd.log());
    assert!(consumerd.log().contains("waiting for it to be re-created"), "consumer log:\n{}", consumerd.log());

    let produced = producerd.stop(&fx);
    assert!(produced.status.success(), "{produced:?}");
    let consumed = consumerd.stop(&fx);
    // The generator carried its sequence over: a restart at 0 would show as duplicates.
    let evidence = stream.evidence();
    reliability::report(
        "unlinked_recreate",
        "segment unlinked under running daemons (on_unlinked = recreate)",
        1,
        &format!("both carried on on a re-created segment, {} records delivered", evidence.delivered),
        &Figures::Counted(evidence.clone()),
        Value::Null,
    );
    consumed.assert_success();
    evidence.assert_exact();
    assert!(evidence.delivered > consumed_before + 1000, "{evidence:?}");
}

/// A stop asked for while a daemon waits for its unlinked segment to come back is kept:
/// the daemon stops as soon as it has the new segment, instead of attaching and running
/// on (the signal once went to the listener of the run that had ended).
#[test]
fn a_stop_while_waiting_for_the_re_created_segment_is_kept() {
    let fx = Fixture::new("unlinked-stop");
    let location = fx.location(Backend::Posix);
    let create = || Segment::builder(location.clone()).capacity(1 << 20).create().expect("create the segment");
    let _first = create();
    let keys = ["on_unlinked = \"recreate\"", "create = \"never\"", "wait_for_segment = \"20s\""];
    let config = format!("{}[sink]\nkind = \"discard\"\n", segment_section(&location, &keys));
    let consumerd = Daemon::ready(&fx, Kind::Consumer, &config);

    Segment::unlink(&location).expect("unlink the running segment");
    consumerd.wait_log(&fx, "waiting for it to be re-created");
    consumerd.signal(&fx, nix::sys::signal::Signal::SIGTERM);
    // Time is the point: the stop must arrive while the daemon waits for the segment.
    std::thread::sleep(Duration::from_millis(200));
    let _second = create();
    let finished = fx.wait(consumerd.proc(), Duration::from_secs(5));
    assert!(finished.status.success(), "{finished:?}\nlog:\n{}", consumerd.log());
}

/// A generator's `count` counts across a re-created segment: the records sent before
/// and after the unlink add up to it, with the sequence carried on.
#[test]
fn a_generator_count_spans_the_re_created_segment() {
    const COUNT: u64 = 6000;
    let fx = Fixture::new("unlinked-count");
    let location = fx.location(Backend::Posix);
    let recreate = ["on_unlinked = \"recreate\""];
    let consumerd = Daemon::launch(&fx, Kind::Consumer, &consumer(&location, &recreate, VERIFY)).start(&fx);
    let config = format!(
        "{}[source]\nkind = \"generator\"\nrate = 5000\ncount = {COUNT}\n",
        segment_section(&location, &recreate)
    );
    let producerd = Daemon::ready(&fx, Kind::Producer, &config);
    let old = observe(&location);
    wait_consumed(&old, 1000);
    let old_created = old.info().expect("info").created_unix_ns;
    drop(old);

    Segment::unlink(&location).expect("unlink the running segment");
    producerd.wait_log(&fx, "re-creating it");
    let produced = producerd.wait(&fx);
    assert!(produced.status.success(), "{produced:?}");
    let new = observe(&location);
    assert_ne!(new.info().expect("info").created_unix_ns, old_created, "still the old segment");
    wait_until(Duration::from_secs(10), "the rest consumed", || {
        let s = new.stats();
        s.total_consumed == s.total_produced
    });
    let consumed = consumerd.stop(&fx);
    assert!(consumed.status.success(), "{consumed:?}");
    let summary = consumerd.summary();
    assert_eq!(summary.u64("received"), COUNT, "{}", summary.0);
    for key in ["lost", "duplicated", "reordered", "corrupt"] {
        assert_eq!(summary.u64(key), 0, "{key}: {}", summary.0);
    }
}

//! What the daemons refuse to start with, and the exit code that says why.
//!
//! - `config_*`: every kind of invalid config (TOML syntax, an unknown key, a wrong type,
//!   a bad size, a bad segment name, a key of another source or sink kind) makes both
//!   daemons exit 78 with a message naming the key and its line, with `--check-config`
//!   and when starting; a daemon that refuses its config never becomes ready and never
//!   creates the segment. A valid config passes `--check-config` (the control).
//! - `missing_segment_*`: `create = "never"` and a segment that never appears: exit 66
//!   once `wait_for_segment` has passed.
//! - `a_second_*_is_refused`: a role already held by a live daemon: exit 69, and the
//!   first one runs on.

use std::time::{Duration, Instant};

use shm_core::{Location, Segment};
use shmring_tests::daemons::{Daemon, Kind, segment_section};
use shmring_tests::{Backend, Fixture};

/// A config the daemon must refuse, and what its message must name.
struct Refused {
    kind: Kind,
    config: String,
    names: Vec<String>,
}

fn refused(kind: Kind, config: String, names: &[&str]) -> Refused {
    Refused { kind, config, names: names.iter().map(|n| (*n).to_owned()).collect() }
}

/// Runs every case with `--check-config` and as a real start; panics listing every case
/// that was not refused with exit 78 and a message naming what it must.
#[track_caller]
fn assert_all_refused(fx: &Fixture, location: &Location, cases: &[Refused]) {
    let mut failures = Vec::new();
    for case in cases {
        let launch = Daemon::launch(fx, case.kind, &case.config);
        let checked = launch.check_config(fx);
        let started = launch.start(fx);
        let start = started.wait(fx);
        for (mode, out) in [("--check-config", &checked), ("starting", &start)] {
            let missing: Vec<_> = case.names.iter().filter(|n| !out.stderr.contains(n.as_str())).collect();
            if out.status.code() != Some(78) || !missing.is_empty() {
                failures.push(format!(
                    "{} {mode}: exit {:?}, message missing {missing:?}\n  config: {:?}\n  stderr: {}",
                    case.kind.binary(),
                    out.status.code(),
                    case.config,
                    out.stderr.trim()
                ));
            }
        }
        assert!(!started.has_been_ready(), "{} became ready with an invalid config", case.kind.binary());
        assert!(
            Segment::builder(location.clone()).read_only().expected_owner(None).open().is_err(),
            "{} created the segment before refusing its config {:?}",
            case.kind.binary(),
            case.config
        );
    }
    assert!(failures.is_empty(), "{} of {} runs went wrong:\n{}", failures.len(), cases.len() * 2, failures.join("\n"));
}

/// The same `[segment]` damage for both daemons.
fn both(config: &str, names: &[&str]) -> Vec<Refused> {
    vec![refused(Kind::Producer, config.to_owned(), names), refused(Kind::Consumer, config.to_owned(), names)]
}

#[test]
fn config_a_valid_one_passes_the_check() {
    let fx = Fixture::new("cfg-valid");
    let location = fx.location(Backend::Posix);
    for (kind, extra) in [(Kind::Producer, "[source]\nrate = 1000\n"), (Kind::Consumer, "[sink]\nkind = \"discard\"\n")]
    {
        let launch = Daemon::launch(&fx, kind, &format!("{}{extra}", segment_section(&location, &[])));
        let out = launch.check_config(&fx);
        out.assert_success();
        assert!(out.stdout.contains("config OK"), "{out:?}");
    }
    assert!(Segment::builder(location).read_only().open().is_err(), "--check-config created the segment");
}

#[test]
fn config_toml_syntax_error_names_the_key_and_line() {
    let fx = Fixture::new("cfg-syntax");
    let location = fx.location(Backend::Posix);
    // An unterminated string on line 4.
    let config = segment_section(&location, &["capacity = \"1MiB"]);
    assert_all_refused(&fx, &location, &both(&config, &["capacity", "line 4"]));
}

#[test]
fn config_unknown_key_names_the_key_and_line() {
    let fx = Fixture::new("cfg-unknown");
    let location = fx.location(Backend::Posix);
    let mut cases = both(&segment_section(&location, &["size = \"1MiB\""]), &["size", "line 4"]);
    let section = segment_section(&location, &[]);
    cases.push(refused(
        Kind::Producer,
        format!("{section}[source]\nkind = \"generator\"\nspeed = 5\n"),
        &["speed", "line 6"],
    ));
    cases.push(refused(
        Kind::Consumer,
        format!("{section}[sink]\nkind = \"verify\"\nstrict = true\n"),
        &["strict", "line 6"],
    ));
    assert_all_refused(&fx, &location, &cases);
}

#[test]
fn config_wrong_type_names_the_key_and_line() {
    let fx = Fixture::new("cfg-type");
    let location = fx.location(Backend::Posix);
    let mut cases = both(&segment_section(&location, &["capacity = true"]), &["capacity", "line 4"]);
    let section = segment_section(&location, &[]);
    cases.push(refused(Kind::Producer, format!("{section}[source]\nrate = \"fast\"\n"), &["rate", "line 5"]));
    cases.push(refused(
        Kind::Consumer,
        format!("{section}[shutdown]\ndrain_timeout = 5\n"),
        &["drain_timeout", "line 5"],
    ));
    assert_all_refused(&fx, &location, &cases);
}

#[test]
fn config_bad_size_names_the_key_and_line() {
    let fx = Fixture::new("cfg-size");
    let location = fx.location(Backend::Posix);
    let mut cases = both(&segment_section(&location, &["capacity = \"3000\""]), &["segment.capacity", "line 4"]);
    cases.extend(both(
        &segment_section(&location, &["capacity = \"12 parsecs\""]),
        &["segment.capacity", "line 4", "12 parsecs"],
    ));
    assert_all_refused(&fx, &location, &cases);
}

#[test]
fn config_bad_segment_name_names_the_key_and_line() {
    let fx = Fixture::new("cfg-name");
    let location = fx.location(Backend::Posix);
    let config = "[segment]\nname = \"nope\"\nbackend = \"posix\"\n";
    assert_all_refused(&fx, &location, &both(config, &["segment.name", "line 2", "nope"]));
}

#[test]
fn config_key_of_another_kind_names_the_key_and_line() {
    let fx = Fixture::new("cfg-foreign");
    let location = fx.location(Backend::Posix);
    let section = segment_section(&location, &[]);
    let cases = [
        refused(
            Kind::Producer,
            format!("{section}[source]\nkind = \"udp\"\nbind = \"127.0.0.1:9\"\nrate = 10\n"),
            &["source.rate", "line 7", "udp"],
        ),
        refused(
            Kind::Producer,
            format!("{section}[source]\nkind = \"generator\"\nformat = \"binary\"\n"),
            &["source.format", "line 6"],
        ),
        refused(
            Kind::Consumer,
            format!("{section}[sink]\nkind = \"verify\"\npath = \"/tmp/records.log\"\n"),
            &["sink.path", "line 6", "verify"],
        ),
        refused(
            Kind::Consumer,
            format!("{section}[sink]\nkind = \"file\"\npath = \"/tmp/x\"\ntarget = \"127.0.0.1:9\"\n"),
            &["sink.target", "line 7"],
        ),
    ];
    assert_all_refused(&fx, &location, &cases);
}

#[test]
fn missing_segment_with_create_never_exits_66() {
    let fx = Fixture::new("missing");
    let location = fx.location(Backend::Posix);
    let config = segment_section(&location, &["create = \"never\"", "wait_for_segment = \"300ms\""]);
    for (kind, extra) in [(Kind::Producer, ""), (Kind::Consumer, "[sink]\nkind = \"discard\"\n")] {
        let started = Instant::now();
        let daemon = Daemon::launch(&fx, kind, &format!("{config}{extra}")).start(&fx);
        let out = daemon.wait(&fx);
        out.assert_code(66);
        assert!(started.elapsed() >= Duration::from_millis(300), "{} gave up before wait_for_segment", kind.binary());
        assert!(out.stderr.contains("waiting for the segment to appear"), "{}", out.stderr);
        assert!(!daemon.has_been_ready(), "ready without a segment");
    }
    assert!(Segment::builder(location).read_only().open().is_err(), "a daemon created the segment");
}

#[test]
fn a_second_producer_or_consumer_is_refused_with_69() {
    let fx = Fixture::new("taken");
    let location = fx.location(Backend::Posix);
    let producer_config = format!("{}[source]\nrate = 10000\n", segment_section(&location, &[]));
    let consumer_config = format!("{}[sink]\nkind = \"verify\"\n", segment_section(&location, &[]));
    let producer = Daemon::ready(&fx, Kind::Producer, &producer_config);
    let consumer = Daemon::ready(&fx, Kind::Consumer, &consumer_config);
    for (kind, config) in [(Kind::Producer, &producer_config), (Kind::Consumer, &consumer_config)] {
        let second = Daemon::launch(&fx, kind, config).start(&fx);
        let out = second.wait(&fx);
        out.assert_code(69);
    }
    fx.assert_running(producer.proc());
    fx.assert_running(consumer.proc());
    producer.stop(&fx).assert_success();
    consumer.stop(&fx).assert_success();
}

#[test]
fn config_ring_kind_producer_id_and_consumer_name_name_the_key_and_line() {
    let fx = Fixture::new("cfg-kind");
    let location = fx.location(Backend::Posix);
    let spsc = segment_section(&location, &[]);
    let mpsc = segment_section(&location, &["kind = \"mpsc\""]);
    let broadcast = segment_section(&location, &["kind = \"broadcast\""]);
    let mpmc = segment_section(&location, &["kind = \"mpmc\""]);
    let mut cases =
        both(&segment_section(&location, &["kind = \"ring\""]), &["segment.kind", "line 4", "ring", "mpmc"]);
    cases.extend(both(&segment_section(&location, &["kind = \"mpsc\"", "lossy = true"]), &["segment.lossy", "line 5"]));
    cases.extend([
        refused(
            Kind::Consumer,
            format!("{broadcast}[sink]\nkind = \"discard\"\n"),
            &["sink.consumer_name", "required", "broadcast"],
        ),
        refused(
            Kind::Producer,
            format!("{broadcast}[source]\nproducer_id = 0\n"),
            &["source.producer_id", "line 6", "one producer"],
        ),
        refused(Kind::Producer, format!("{mpmc}[source]\nrate = 10\n"), &["source.producer_id", "required", "mpmc"]),
        refused(
            Kind::Consumer,
            format!("{mpmc}[sink]\nkind = \"discard\"\n"),
            &["sink.worker_id", "required", "0 to 5"],
        ),
        refused(
            Kind::Consumer,
            format!("{mpmc}[sink]\nkind = \"discard\"\nworker_id = 6\n"),
            &["sink.worker_id", "line 7", "0 to 5"],
        ),
        refused(
            Kind::Consumer,
            format!("{mpsc}[sink]\nkind = \"discard\"\nworker_id = 0\n"),
            &["sink.worker_id", "line 7", "mpmc\" only"],
        ),
    ]);
    cases.extend([
        refused(Kind::Producer, format!("{mpsc}[source]\nrate = 10\n"), &["source.producer_id", "required", "mpsc"]),
        refused(
            Kind::Producer,
            format!("{mpsc}[source]\nproducer_id = 16\n"),
            &["source.producer_id", "line 6", "16", "0 to 15"],
        ),
        refused(
            Kind::Producer,
            format!("{spsc}[source]\nproducer_id = 0\n"),
            &["source.producer_id", "line 5", "\"mpmc\" only", "spsc ring has one producer"],
        ),
        refused(
            Kind::Consumer,
            format!("{mpsc}[sink]\nkind = \"discard\"\nconsumer_name = \"two words\"\n"),
            &["sink.consumer_name", "line 7", "two words"],
        ),
    ]);
    assert_all_refused(&fx, &location, &cases);
}

/// A flush policy works for spsc rings only: on an mpsc ring it would be ignored.
#[test]
fn config_flush_on_an_mpsc_ring_names_the_key_and_the_kind() {
    let fx = Fixture::new("cfg-flush-kind");
    let location = fx.location(Backend::File);
    let section = segment_section(&location, &["kind = \"mpsc\"", "flush = \"sync\""]);
    let cases = [
        refused(Kind::Producer, format!("{section}[source]\nproducer_id = 0\n"), &["segment.flush", "line 5", "mpsc"]),
        refused(Kind::Consumer, format!("{section}[sink]\nkind = \"discard\"\n"), &["segment.flush", "line 5", "mpsc"]),
    ];
    assert_all_refused(&fx, &location, &cases);
}

#[test]
fn a_segment_of_another_kind_is_refused_with_78_naming_the_key_and_both_kinds() {
    let fx = Fixture::new("cfg-wrong-kind");
    for (created, configured, extra) in [
        (shm_core::RingKind::Spsc, "mpsc", "[source]\nproducer_id = 0\n"),
        (shm_core::RingKind::Mpsc, "spsc", "[source]\nrate = 10\n"),
        (shm_core::RingKind::Spsc, "mpsc", "[sink]\nkind = \"discard\"\n"),
        (shm_core::RingKind::Mpsc, "spsc", "[sink]\nkind = \"discard\"\n"),
    ] {
        let location = fx.location(Backend::Posix);
        let segment = Segment::builder(location.clone()).kind(created).create().expect("create the segment");
        let config = format!("{}{extra}", segment_section(&location, &[&format!("kind = \"{configured}\"")]));
        let kind = if extra.contains("[sink]") { Kind::Consumer } else { Kind::Producer };
        let daemon = Daemon::launch(&fx, kind, &config).start(&fx);
        let out = daemon.wait(&fx);
        out.assert_code(78);
        for needle in ["segment.kind", &format!("configured \"{configured}\""), &format!("\"{}\" ring", created.name())]
        {
            assert!(out.stderr.contains(needle), "{}: {needle:?} missing from {}", kind.binary(), out.stderr);
        }
        assert!(!daemon.has_been_ready(), "{} became ready on a segment of another kind", kind.binary());
        drop(segment);
    }
}

//! `shmctl`'s output for scripts, through the real binary: every subcommand that reports
//! something takes `--json` and prints its one documented schema (docs/CLI.md), parsed
//! here with serde_json; `list` takes lsipc's habits.
//!
//! - `create_json`: the segment's identity, the mode as `"0600"`.
//! - `unlink_json`: `{"removed", "forced"}`.
//! - `gc_json`: `{"dry_run", "segments": [{"name", "action", "reason"}]}`.
//! - `publish_json`: `{"segment", "bytes", "record_type", "position"}`.
//! - `peek_json`: payloads as UTF-8 text or base64, as `encoding` says.
//! - `peek_json_of_an_mpsc_ring_...`: records of real producer processes in claim order
//!   with their `producer`, and `stopped_at` naming the producer whose claim holds it up,
//!   alive then dead.
//! - `peek_json_of_broadcast_and_mpmc_rings`: `seq` from a named consumer's cursor or the
//!   oldest record; `state` `taken` with its `worker`, then `waiting`.
//! - `list_json_and_lsipc_options`: `--json`; `-o` columns, `--noheadings`, `--raw`,
//!   `-b`, and widths that fit the longest name.
//! - `stat_json_and_watch_ndjson`: `--json` is one object; `--watch --json` one object a
//!   line with rates from the second on; `--watch` into a pipe never clears the screen.

// Its `checks!` macro is for tests per backend, which this file does not have.
#[allow(unused_macros)]
mod shmctl_support;

use base64::Engine as _;
use serde_json::Value;
use shm_core::{Location, RingKind};
use shmctl_support::{PATIENCE, args_on, command, create, json, name, num, publish, shmctl, shmctl_on, text};
use shmring_tests::{Backend, Fixture, wait_until};

/// Ring data bytes of the segments here.
const CAPACITY: u64 = 64 * 1024;

fn fresh(fx: &Fixture) -> Location {
    let location = fx.location(Backend::Posix);
    create(fx, &location, &["--capacity", "64KiB"]);
    location
}

#[test]
fn create_json() {
    let fx = Fixture::new("json-create");
    let location = fx.location(Backend::Posix);
    let info = json(&create(&fx, &location, &["--capacity", "64KiB", "--mode", "0640", "--json"]));
    assert_eq!((text(&info, "/name"), text(&info, "/backend")), (name(&location).as_str(), "posix"), "{info:#}");
    assert_eq!(text(&info, "/mode"), "0640", "{info:#}");
    assert_eq!((num(&info, "/capacity"), text(&info, "/kind")), (CAPACITY, "spsc"), "{info:#}");
}

#[test]
fn unlink_json() {
    let fx = Fixture::new("json-unlink");
    let location = fresh(&fx);
    let removed = json(&shmctl_on(&fx, "unlink", &location, &["--json"]));
    assert_eq!(removed, serde_json::json!({ "removed": name(&location), "forced": false }));
    assert!(shmring_tests::os_stat(&location).is_err(), "still there");
}

#[test]
fn gc_json() {
    let fx = Fixture::new("json-gc");
    let location = fresh(&fx);
    let only = name(&location);
    let dry = json(&shmctl(&fx, ["gc", "--json", "--dry-run", "--include-idle", &only]));
    assert_eq!(dry["dry_run"], true, "{dry:#}");
    let segments = dry["segments"].as_array().expect("segments");
    assert_eq!(segments.len(), 1, "{dry:#}");
    assert_eq!((text(&segments[0], "/name"), text(&segments[0], "/action")), (only.as_str(), "would_remove"));
    assert_eq!(text(&segments[0], "/reason"), "idle", "{dry:#}");

    let kept = json(&shmctl(&fx, ["gc", "--json", &only]));
    assert_eq!(text(&kept, "/segments/0/action"), "kept", "{kept:#}");
    let removed = json(&shmctl(&fx, ["gc", "--json", "--include-idle", &only]));
    assert_eq!((removed["dry_run"].clone(), text(&removed, "/segments/0/action")), (Value::from(false), "removed"));
    assert!(shmring_tests::os_stat(&location).is_err(), "still there");
}

#[test]
fn publish_json() {
    let fx = Fixture::new("json-publish");
    let location = fresh(&fx);
    let first = json(&shmctl_on(&fx, "publish", &location, &["hello", "--json"]));
    assert_eq!(first, serde_json::json!({ "segment": name(&location), "bytes": 5, "record_type": 0, "position": 0 }));
    let second = json(&shmctl_on(&fx, "publish", &location, &["again", "--type", "7", "--json"]));
    assert_eq!((num(&second, "/record_type"), num(&second, "/bytes")), (7, 5), "{second:#}");
    assert!(num(&second, "/position") > 0, "{second:#}");
}

#[test]
fn peek_json() {
    let fx = Fixture::new("json-peek");
    let location = fresh(&fx);
    publish(&fx, &location, "héllo");
    let binary = fx.path("binary");
    let bytes = [0xff_u8, 0x00, 0xfe, b'a'];
    std::fs::write(&binary, bytes).expect("write the record");
    shmctl_on(&fx, "publish", &location, &["--file", binary.to_str().expect("utf-8")]).assert_success();

    let peeked = json(&shmctl_on(&fx, "peek", &location, &["--json"]));
    assert_eq!(text(&peeked, "/segment"), name(&location), "{peeked:#}");
    let records = peeked["records"].as_array().expect("records");
    assert_eq!(records.len(), 2, "{peeked:#}");
    assert_eq!((text(&records[0], "/encoding"), text(&records[0], "/data")), ("utf8", "héllo"));
    assert_eq!(num(&records[0], "/len"), "héllo".len() as u64);
    assert_eq!(text(&records[1], "/encoding"), "base64", "{peeked:#}");
    let decoded = base64::engine::general_purpose::STANDARD.decode(text(&records[1], "/data")).expect("base64");
    assert_eq!(decoded, bytes);
    // The fields other kinds fill are there, empty, for an spsc ring.
    assert_eq!((&records[0]["producer"], &records[0]["seq"]), (&Value::Null, &Value::Null), "{peeked:#}");
    assert_eq!((text(&records[0], "/state"), &peeked["stopped_at"]), ("waiting", &Value::Null), "{peeked:#}");
}

const MPSC_PEER: &str = env!("CARGO_BIN_EXE_mpsc-peer");

/// `(producer, seq)` of each record of `peek --json`, from its `producer` field and from
/// its payload (`mpsc-peer`'s layout: `seq` then the producer id, both u64 LE).
fn mpsc_records(peeked: &Value) -> Vec<(u64, u64)> {
    let records = peeked["records"].as_array().unwrap_or_else(|| panic!("records: {peeked:#}"));
    records
        .iter()
        .map(|r| {
            let data = match text(r, "/encoding") {
                "utf8" => text(r, "/data").as_bytes().to_vec(),
                _ => base64::engine::general_purpose::STANDARD.decode(text(r, "/data")).expect("base64"),
            };
            let word = |i: usize| u64::from_le_bytes(data[8 * i..8 * i + 8].try_into().expect("8 bytes"));
            assert_eq!(num(r, "/producer"), word(1), "{r:#}");
            (word(1), word(0))
        })
        .collect()
}

#[test]
fn peek_json_of_an_mpsc_ring_stops_at_a_claim_and_names_its_producer() {
    let fx = Fixture::new("json-peek-mpsc");
    let (segment, name) = fx.create_posix_ring(RingKind::Mpsc, CAPACITY);
    let location = Location::posix(&name).expect("a name");
    fx.wait(&fx.spawn_mpsc_producer(MPSC_PEER, &name, 0, 3, None), PATIENCE).assert_success();
    let go = fx.path("never");
    let hanging = fx.spawn_mpsc_producer(MPSC_PEER, &name, 1, 5, Some((2, &go)));
    wait_until(PATIENCE, "producer 1 holds its claim", || fx.stdout_so_far(&hanging).contains("claimed=2"));

    let peeked = json(&shmctl_on(&fx, "peek", &location, &["--json"]));
    assert_eq!(text(&peeked, "/kind"), "mpsc", "{peeked:#}");
    assert_eq!(mpsc_records(&peeked), [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)], "{peeked:#}");
    let waiting_for = &peeked["stopped_at"]["waiting_for"];
    assert_eq!(*waiting_for, serde_json::json!({ "state": "waiting_for", "producer": 1 }), "{peeked:#}");

    fx.kill(&hanging);
    let peeked = json(&shmctl_on(&fx, "peek", &location, &["--json", "-n", "2"]));
    assert_eq!(mpsc_records(&peeked), [(0, 0), (0, 1)], "-n 2: {peeked:#}");
    let peeked = json(&shmctl_on(&fx, "peek", &location, &["--json"]));
    let waiting_for = &peeked["stopped_at"]["waiting_for"];
    assert_eq!((text(waiting_for, "/state"), num(waiting_for, "/producer")), ("dead", 1), "{peeked:#}");
    let plain = shmctl_on(&fx, "peek", &location, &[]);
    plain.assert_success();
    assert!(plain.stdout.contains("stopped") && plain.stdout.contains("producer 1 is dead"), "{}", plain.stdout);
    // Peek moved nothing: the consumer has all five records still to read.
    let stats = segment.stats();
    assert_eq!((stats.total_consumed, segment.mpsc_consumer().expect("consumer").position()), (0, 0));
}

#[test]
fn peek_json_of_broadcast_and_mpmc_rings() {
    let fx = Fixture::new("json-peek-kinds");
    let (segment, name) = fx.create_posix_ring(RingKind::Broadcast, CAPACITY);
    let location = Location::posix(&name).expect("a name");
    let mut producer = segment.broadcast_producer().expect("producer");
    let mut a = segment.broadcast_consumer("a").expect("consumer a");
    for record in ["zero", "one", "two"] {
        producer.try_publish(record.as_bytes()).expect("publish");
    }
    assert_eq!(a.try_read().expect("a record").data, b"zero");
    a.release();
    let seqs = |peeked: &Value| -> Vec<(u64, String)> {
        let records = peeked["records"].as_array().unwrap_or_else(|| panic!("records: {peeked:#}"));
        records.iter().map(|r| (num(r, "/seq"), text(r, "/data").to_owned())).collect()
    };
    let from_a = json(&shmctl_on(&fx, "peek", &location, &["--json", "--consumer", "a"]));
    assert_eq!(seqs(&from_a), [(1, "one".into()), (2, "two".into())], "{from_a:#}");
    assert_eq!((text(&from_a, "/consumer"), &from_a["consumer_lapped"]), ("a", &Value::Bool(false)));
    let oldest = json(&shmctl_on(&fx, "peek", &location, &["--json"]));
    assert_eq!(seqs(&oldest).len(), 3, "from the oldest record: {oldest:#}");

    let (segment, name) = fx.create_posix_ring(RingKind::Mpmc, CAPACITY);
    let location = Location::posix(&name).expect("a name");
    let mut producer = segment.mpsc_producer(3).expect("producer");
    for record in ["first", "second"] {
        producer.try_publish(record.as_bytes()).expect("publish");
    }
    let mut worker = segment.mpmc_worker(2).expect("worker");
    let job = worker.try_take().expect("a job");
    let peeked = json(&shmctl_on(&fx, "peek", &location, &["--json"]));
    let records = peeked["records"].as_array().unwrap_or_else(|| panic!("records: {peeked:#}"));
    let got: Vec<_> = records.iter().map(|r| (text(r, "/data"), text(r, "/state"), r["worker"].clone())).collect();
    assert_eq!(got, [("first", "taken", Value::from(2)), ("second", "waiting", Value::Null)], "{peeked:#}");
    assert!(records.iter().all(|r| num(r, "/producer") == 3), "{peeked:#}");
    drop(job);
}

#[test]
fn list_json_and_lsipc_options() {
    let fx = Fixture::new("json-list");
    let short = fresh(&fx);
    // A name longer than any fixed width the table once had (22).
    let long = Location::posix(&format!("{}-and-a-much-longer-name", name(&short))).expect("a name");
    fx.track_segment(long.clone());
    create(&fx, &long, &["--capacity", "64KiB", "--mode", "0640"]);

    let list = json(&shmctl(&fx, ["list", "--json"]));
    let segments = list["segments"].as_array().expect("segments");
    let ours = segments.iter().find(|s| s["name"] == name(&long)).unwrap_or_else(|| panic!("{list:#}"));
    assert_eq!((text(ours, "/mode"), num(ours, "/capacity")), ("0640", CAPACITY), "{ours:#}");

    let plain = shmctl(&fx, ["list", "-o", "NAME,SIZE,PERMS", "--noheadings", "-b"]);
    plain.assert_success();
    assert!(!plain.stdout.contains("NAME"), "a header line:\n{}", plain.stdout);
    let row = |out: &str, n: &str| -> Vec<String> {
        let line =
            out.lines().find(|l| l.split_whitespace().next() == Some(n)).unwrap_or_else(|| panic!("{n}:\n{out}"));
        line.split_whitespace().map(str::to_owned).collect()
    };
    let size = (CAPACITY + shm_core::layout::HEADER_SIZE as u64).to_string();
    assert_eq!(row(&plain.stdout, &name(&long)), [name(&long), size.clone(), "0640".into()]);
    // Aligned: the second column starts at the same place on every line.
    let starts: Vec<usize> = [name(&short), name(&long)]
        .iter()
        .map(|n| {
            let line = plain.stdout.lines().find(|l| l.starts_with(&format!("{n} "))).expect("a row");
            line[n.len()..].find(|c: char| c != ' ').expect("a second column") + n.len()
        })
        .collect();
    assert_eq!(starts[0], starts[1], "columns not aligned:\n{}", plain.stdout);

    let raw = shmctl(&fx, ["list", "--raw", "-o", "name,size,producer"]);
    raw.assert_success();
    assert_eq!(raw.stdout.lines().next(), Some("NAME SIZE PRODUCER"), "{}", raw.stdout);
    let line = raw.stdout.lines().find(|l| l.starts_with(&format!("{} ", name(&short)))).expect("a row");
    assert_eq!(line, format!("{} 80\\x20KiB -", name(&short)), "{}", raw.stdout);
}

#[test]
fn stat_json_and_watch_ndjson() {
    let fx = Fixture::new("json-stat");
    let location = fresh(&fx);
    publish(&fx, &location, "one");
    let stat = json(&shmctl_on(&fx, "stat", &location, &["--json"]));
    assert_eq!((text(&stat, "/segment/mode"), num(&stat, "/counters/total_produced")), ("0600", 1), "{stat:#}");

    let watch = fx.spawn("watch-json", &mut command(args_on("stat", &location, &["--watch", "100ms", "--json"])));
    wait_until(PATIENCE, "three lines", || {
        fx.assert_running(&watch);
        fx.stdout_so_far(&watch).lines().count() >= 3
    });
    let pid = nix::unistd::Pid::from_raw(i32::try_from(watch.pid()).expect("a pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let done = fx.wait(&watch, PATIENCE);
    done.assert_success();
    let lines: Vec<Value> = done
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object a line ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3, "{}", done.stdout);
    assert!(lines[0]["rates"].is_null(), "no rates before a second snapshot: {:#}", lines[0]);
    for line in &lines[1..] {
        assert!(line["rates"]["records_produced_per_second"].is_number(), "{line:#}");
        assert_eq!(num(line, "/counters/total_produced"), 1, "{line:#}");
    }
    assert!(num(&lines[1], "/time_unix_ns") > num(&lines[0], "/time_unix_ns"));

    // Into a pipe, the human --watch prints plain frames: no escape sequences.
    let human = fx.spawn("watch-text", &mut command(args_on("stat", &location, &["--watch", "100ms"])));
    wait_until(PATIENCE, "two frames", || {
        fx.assert_running(&human);
        fx.stdout_so_far(&human).matches("(every 100ms").count() >= 2
    });
    let pid = nix::unistd::Pid::from_raw(i32::try_from(human.pid()).expect("a pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let done = fx.wait(&human, PATIENCE);
    done.assert_success();
    assert!(!done.stdout.contains('\x1b'), "escape sequences into a pipe:\n{:?}", done.stdout);
}

//! `shmctl` through the real binary, command by command, on posix, sysv and file
//! segments: what each command does and prints when it works.
//!
//! - `create`: mode 0600 by default (checked on the object itself), `--mode`,
//!   `--capacity` and `--max-record` with units, `--group` by gid, `--json`.
//! - `stat`: the human report and `--json` (one object, stable snake_case fields, SysV
//!   details); snapshots taken while two peers stream at full speed are monotonic and
//!   within bounds and disturb nothing; inspecting never writes to the segment, and works
//!   on read-only objects; `--watch` prints rates and stops cleanly on SIGINT.
//! - `list`: our segments with producer and consumer liveness, `--json`, `--dir` for file
//!   segments, `--all` adding foreign shared memory in lsipc's columns.
//! - `unlink`: removes, refuses while a participant is alive unless `--force`.
//! - `gc`: removes segments whose participant died, keeps live and idle ones,
//!   `--dry-run` removes nothing, `--include-idle` (tried only with `--dry-run`, since gc
//!   acts on every segment of the host, other tests' too).
//! - `publish` and `peek`: text, `--file`, `--file -`, `--type`; peek as text, `--hex`,
//!   `--json` and `-n`, moving no cursor.
//! - `completions`.
//!
//! Refusals and the exit code of every error are in `shmctl_errors`.

#[macro_use]
mod shmctl_support;

use std::io::Write as _;

use base64::Engine as _;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde_json::Value;
use shm_core::layout::HEADER_SIZE;
use shm_core::ring::frame::framed_len;
use shm_core::{Location, Segment};
use shmctl_support::{
    NO_INPUT, PATIENCE, PEER, UNAVAILABLE, args_on, assert_fails, attach, command, create, euid, exists, foreign_posix,
    foreign_sysv, json, line_of, name, num, publish, raw_bytes, root_or_skip, run, set_owner_mode, shared_location,
    shmctl, shmctl_as, shmctl_on, stat_json, text,
};
use shmring_tests::{Backend, Fixture, location_args, os_stat, records, wait_until};

/// Ring data bytes of most segments here.
const CAPACITY: u64 = 64 * 1024;
/// Bytes of the header before the ring data.
const HEADER: u64 = HEADER_SIZE as u64;
/// Records streamed while `stat` watches: about a second at full speed.
const STREAM_RECORDS: u64 = 1_500_000;

/// Two streaming peers fill a 2-core machine: streams run one at a time.
static ONE_STREAM_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_stream_at_a_time() -> MutexGuard<'static, ()> {
    ONE_STREAM_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `--dir <fixture dir>` for file segments, which `list` and `gc` find only there.
fn dir_args(fx: &Fixture, backend: Backend) -> Vec<String> {
    if backend == Backend::File { vec!["--dir".into(), fx.dir().display().to_string()] } else { Vec::new() }
}

fn with(base: &[&str], more: &[String]) -> Vec<String> {
    base.iter().map(|s| (*s).to_owned()).chain(more.iter().cloned()).collect()
}

// ---- create ----------------------------------------------------------------------

fn create_defaults_to_mode_0600(backend: Backend) {
    let fx = Fixture::new("create-default");
    let location = fx.location(backend);
    let out = create(&fx, &location, &[]);
    let expected = format!("created {} ({}, spsc ring of 16 MiB, ", name(&location), backend.name());
    assert!(out.stdout.starts_with(&expected) && out.stdout.contains("mode 0600"), "{}", out.stdout);
    let os = os_stat(&location).expect("the object exists");
    assert_eq!((os.mode, os.uid, os.size), (0o600, euid(), HEADER + (16 << 20)), "{os:?}");
}

fn create_with_options_and_json(backend: Backend) {
    let fx = Fixture::new("create-options");
    let location = fx.location(backend);
    // As root any group will do; otherwise only our own.
    let gid = if nix::unistd::geteuid().is_root() { 65534 } else { nix::unistd::getegid().as_raw() };
    let gid_arg = gid.to_string();
    let opts = ["--capacity", "64KiB", "--max-record", "1KiB", "--mode", "0640", "--group", &gid_arg, "--json"];
    let info = json(&create(&fx, &location, &opts));
    assert_eq!(text(&info, "/backend"), backend.name(), "{info:#}");
    assert_eq!(text(&info, "/name"), name(&location), "{info:#}");
    assert_eq!(
        [num(&info, "/capacity"), num(&info, "/max_record"), num(&info, "/gid")],
        [CAPACITY, 1024, u64::from(gid)],
        "{info:#}"
    );
    assert_eq!(text(&info, "/mode"), "0640", "{info:#}");
    assert_eq!(num(&info, "/size"), HEADER + CAPACITY, "{info:#}");
    let os = os_stat(&location).expect("the object exists");
    assert_eq!((os.mode, os.size), (0o640, HEADER + CAPACITY), "{os:?}");
    // The group as the OS has it.
    let stat = stat_json(&fx, &location);
    assert_eq!(num(&stat, "/segment/gid"), u64::from(gid), "{stat:#}");
    if let Some(path) = shmctl_support::object_path(&location) {
        let meta = std::fs::metadata(path).expect("stat");
        assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), gid);
    }
}

// ---- stat ------------------------------------------------------------------------

/// The value printed after `label` in the human report's counter list.
fn counter_value(report: &str, label: &str) -> String {
    line_of(report, label).split_whitespace().nth(1).expect("a value").replace(',', "")
}

fn stat_reports_identity_counters_and_participants(backend: Backend) {
    let fx = Fixture::new("stat-report");
    let location = fx.location(backend);
    let creator = create(&fx, &location, &["--capacity", "64KiB", "--json"]);
    let creator_pid = num(&json(&creator), "/creator_pid");
    publish(&fx, &location, "hello");
    shmctl_on(&fx, "publish", &location, &["--type", "7", "world!"]).assert_success();
    let consumer = attach(&fx, &location, "consumer");

    let human = shmctl_on(&fx, "stat", &location, &[]);
    human.assert_success();
    let report = &human.stdout;
    assert!(report.starts_with(&format!("{}  ({}", name(&location), backend.name())), "{report}");
    assert!(report.contains("capacity 64 KiB") && report.contains("mode 0600"), "{report}");
    assert!(report.contains("2 records in flight"), "{report}");
    for (label, value) in [
        ("total_produced", "2"),
        ("total_consumed", "0"),
        ("producer_blocks", "0"),
        ("consumer_blocks", "0"),
        ("bytes_produced", "11"),
    ] {
        assert_eq!(counter_value(report, label), value, "{label} in:\n{report}");
    }
    let participants = report.split("\nparticipants\n").nth(1).expect("a participants section");
    let row = participants
        .lines()
        .find(|l| l.contains("consumer"))
        .unwrap_or_else(|| panic!("no consumer in:\n{participants}"));
    assert!(row.contains(&consumer.pid().to_string()) && row.ends_with("alive"), "{row}");
    assert!(participants.lines().any(|l| l.contains("producer") && l.ends_with("detached")), "{participants}");

    let stat = stat_json(&fx, &location);
    assert_snake_case_keys(&stat, "");
    let seg = &stat["segment"];
    assert_eq!((text(seg, "/backend"), text(seg, "/name")), (backend.name(), name(&location).as_str()));
    assert_eq!(
        [num(seg, "/size"), num(seg, "/uid"), num(seg, "/capacity"), num(seg, "/creator_pid")],
        [HEADER + CAPACITY, u64::from(euid()), CAPACITY, creator_pid],
        "{stat:#}"
    );
    assert_eq!(text(seg, "/mode"), "0600", "{stat:#}");
    let framed = framed_len(5).unwrap() + framed_len(6).unwrap();
    let ring = &stat["ring"];
    assert_eq!(
        [
            num(ring, "/capacity"),
            num(ring, "/used_bytes"),
            num(ring, "/records_in_flight"),
            num(ring, "/write_cursor"),
            num(ring, "/read_cursor")
        ],
        [CAPACITY, framed, 2, framed, 0],
        "{stat:#}"
    );
    assert!(ring["fill_percent"].as_f64().is_some_and(|p| (0.0..1.0).contains(&p)), "{stat:#}");
    let counters = stat["counters"].as_object().expect("counters is an object");
    assert!(counters.values().all(Value::is_u64), "every counter is a number: {stat:#}");
    assert_eq!(
        [
            num(&stat, "/counters/total_produced"),
            num(&stat, "/counters/total_consumed"),
            num(&stat, "/counters/producer_blocks"),
            num(&stat, "/counters/consumer_blocks"),
            num(&stat, "/counters/bytes_produced"),
            num(&stat, "/counters/bytes_consumed")
        ],
        [2, 0, 0, 0, 11, 0],
        "{stat:#}"
    );
    let participants = stat["participants"].as_array().expect("participants is an array");
    assert!(
        participants.iter().any(|p| p["role"] == "consumer"
            && p["liveness"] == "alive"
            && p["pid"].as_u64() == Some(u64::from(consumer.pid()))),
        "{stat:#}"
    );
    if backend == Backend::Sysv {
        // The consumer and this stat are attached.
        assert!(num(seg, "/sysv/nattch") >= 2, "{stat:#}");
        assert_eq!(num(seg, "/sysv/cpid"), creator_pid, "{stat:#}");
        assert!(num(seg, "/sysv/lpid") > 0, "{stat:#}");
    } else {
        assert!(seg["sysv"].is_null(), "{stat:#}");
    }
}

/// Panics unless every key of every object in `v` is snake_case.
fn assert_snake_case_keys(v: &Value, path: &str) {
    match v {
        Value::Object(map) => {
            for (key, value) in map {
                let snake = key.starts_with(|c: char| c.is_ascii_lowercase())
                    && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                assert!(snake, "{path}/{key} is not snake_case");
                assert_snake_case_keys(value, &format!("{path}/{key}"));
            }
        }
        Value::Array(items) => {
            items.iter().enumerate().for_each(|(i, item)| assert_snake_case_keys(item, &format!("{path}/{i}")))
        }
        _ => {}
    }
}

/// A property of one `stat --json` snapshot, and what it says.
type SnapshotCheck = (&'static str, fn(&Value) -> bool);

/// Counters and cursors that only grow, between two `stat --json` snapshots.
const MONOTONIC: [&str; 8] = [
    "/counters/total_produced",
    "/counters/total_consumed",
    "/counters/producer_blocks",
    "/counters/consumer_blocks",
    "/counters/bytes_produced",
    "/counters/bytes_consumed",
    "/ring/write_cursor",
    "/ring/read_cursor",
];

fn stat_while_streaming_is_consistent_and_disturbs_nothing(backend: Backend) {
    let _turn = one_stream_at_a_time();
    let fx = Fixture::new("stat-stream");
    let location = fx.location(backend);
    create(&fx, &location, &["--capacity", "64KiB"]);
    let total = STREAM_RECORDS.to_string();
    let peer = |role: &str, command: &str| {
        fx.spawn(role, Command::new(PEER).arg(command).args(location_args(&location)).args(["--total", &total]))
    };
    let consumer = peer("consumer", "consume");
    let producer = peer("producer", "produce");
    let mut snapshots = Vec::new();
    while fx.is_running(&producer) || fx.is_running(&consumer) {
        snapshots.push(stat_json(&fx, &location));
    }
    let finished = fx.wait_all(&[&producer, &consumer], PATIENCE);
    let report = finished[1].summary();
    assert_eq!(
        (report.u64("first"), report.u64("last"), report.u64("count")),
        (0, STREAM_RECORDS - 1, STREAM_RECORDS),
        "the consumer verified every record: {report:?}"
    );

    let mid_stream =
        snapshots.iter().filter(|s| (1..STREAM_RECORDS).contains(&num(s, "/counters/total_produced"))).count();
    assert!(mid_stream >= 2, "only {mid_stream} of {} snapshots were taken mid-stream", snapshots.len());
    for s in &snapshots {
        assert!(num(s, "/ring/used_bytes") <= CAPACITY, "{s:#}");
        assert!(s["ring"]["fill_percent"].as_f64().is_some_and(|p| (0.0..=100.0).contains(&p)), "{s:#}");
    }
    for pair in snapshots.windows(2) {
        for field in MONOTONIC {
            assert!(num(&pair[0], field) <= num(&pair[1], field), "{field} went back:\n{:#}\n{:#}", pair[0], pair[1]);
        }
    }
    let last = stat_json(&fx, &location);
    let max = usize::try_from(num(&last, "/ring/max_record")).expect("fits");
    let bytes = records::total_len(0..STREAM_RECORDS, max);
    assert_eq!(
        [
            num(&last, "/counters/total_produced"),
            num(&last, "/counters/total_consumed"),
            num(&last, "/counters/bytes_produced"),
            num(&last, "/counters/bytes_consumed"),
            num(&last, "/ring/used_bytes")
        ],
        [STREAM_RECORDS, STREAM_RECORDS, bytes, bytes, 0],
        "{last:#}"
    );
    eprintln!("{}: {} stat snapshots, {mid_stream} mid-stream", backend.name(), snapshots.len());

    // One snapshot is one reading: nothing consumed before it was produced, and the
    // counters agree with the gauges beside them.
    let checks: [SnapshotCheck; 3] = [
        ("counters.total_consumed <= counters.total_produced", |s| {
            num(s, "/counters/total_consumed") <= num(s, "/counters/total_produced")
        }),
        ("counters.bytes_consumed <= counters.bytes_produced", |s| {
            num(s, "/counters/bytes_consumed") <= num(s, "/counters/bytes_produced")
        }),
        ("ring.records_in_flight == counters.total_produced - counters.total_consumed", |s| {
            let (produced, consumed) = (num(s, "/counters/total_produced"), num(s, "/counters/total_consumed"));
            produced.checked_sub(consumed) == Some(num(s, "/ring/records_in_flight"))
        }),
    ];
    let mut violations = Vec::new();
    for (what, holds) in checks {
        let failed: Vec<&Value> = snapshots.iter().filter(|s| !holds(s)).collect();
        if let Some(first) = failed.first() {
            violations.push(format!(
                "{} of {} snapshots break {what}, first:\n{first:#}",
                failed.len(),
                snapshots.len()
            ));
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

fn inspecting_never_writes_to_the_segment(backend: Backend) {
    let fx = Fixture::new("stat-read-only");
    let location = fx.location(backend);
    create(&fx, &location, &["--capacity", "64KiB"]);
    publish(&fx, &location, "one");
    publish(&fx, &location, "two");
    let before = raw_bytes(&location);
    for _ in 0..3 {
        for args in [&["stat"][..], &["stat", "--json"], &["peek"], &["peek", "--hex"], &["peek", "--json"]] {
            shmctl_on(&fx, args[0], &location, &args[1..]).assert_success();
        }
        shmctl(&fx, with(&["list", "--json"], &dir_args(&fx, backend))).assert_success();
    }
    let after = raw_bytes(&location);
    assert_eq!(before.len(), after.len());
    if let Some(at) = before.iter().zip(&after).position(|(a, b)| a != b) {
        panic!("inspection changed byte {at} of the segment ({:#04x} -> {:#04x})", before[at], after[at]);
    }
}

fn stat_works_on_read_only_objects(backend: Backend) {
    let fx = Fixture::new("stat-0400");
    let location = shared_location(&fx, backend);
    create(&fx, &location, &["--capacity", "64KiB"]);
    publish(&fx, &location, "kept");
    for mode in [0o400, 0o444] {
        set_owner_mode(&location, None, mode);
        let stat = stat_json(&fx, &location);
        assert_eq!(text(&stat, "/segment/mode"), format!("{mode:04o}"), "{stat:#}");
        assert_eq!(num(&stat, "/counters/total_produced"), 1, "{stat:#}");
        shmctl_on(&fx, "peek", &location, &[]).assert_success();
    }
    // Root reads anything: make the kernel's read-only check count, as a user that owns
    // a 0400 segment.
    if !root_or_skip("stat_works_on_read_only_objects (as the owner, not root)") {
        return;
    }
    set_owner_mode(&location, Some((65534, 65534)), 0o400);
    let stat = shmctl_as(&fx, 65534, 65534, args_on("stat", &location, &["--json"]));
    assert_eq!(num(&json(&stat), "/segment/uid"), 65534, "{}", stat.stdout);
    shmctl_as(&fx, 65534, 65534, args_on("peek", &location, &[])).assert_success();
    // Writing is another matter.
    let publish = shmctl_as(&fx, 65534, 65534, args_on("publish", &location, &["more"]));
    assert_fails(&publish, shmctl_support::NO_PERM, &[&name(&location)]);
}

fn stat_watch_prints_rates_until_sigint(backend: Backend) {
    let fx = Fixture::new("stat-watch");
    let location = fx.location(backend);
    create(&fx, &location, &["--capacity", "64KiB"]);
    let watch = fx.spawn("watch", &mut command(args_on("stat", &location, &["--watch", "200ms"])));
    let frames = |fx: &Fixture| fx.stdout_so_far(&watch).matches("(every 200ms").count();
    wait_until(PATIENCE, "two frames", || {
        fx.assert_running(&watch);
        frames(&fx) >= 2
    });
    // A record in, and the next frame's rate shows it.
    publish(&fx, &location, "counted");
    wait_until(PATIENCE, "a frame with an input rate", || {
        fx.assert_running(&watch);
        fx.stdout_so_far(&watch)
            .lines()
            .filter(|l| l.trim_start().starts_with("rate"))
            .any(|l| l.split_whitespace().nth(2).is_some_and(|n| n != "0"))
    });
    let pid = nix::unistd::Pid::from_raw(i32::try_from(watch.pid()).expect("a pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let done = fx.wait(&watch, PATIENCE);
    done.assert_success();
    assert!(done.stdout.contains("rec/s") && done.stdout.contains("MB/s"), "{}", done.stdout);
    assert!(done.stdout.contains(&name(&location)), "{}", done.stdout);
    assert!(frames(&fx) >= 3, "{}", done.stdout);
}

// ---- list ------------------------------------------------------------------------

fn list_shows_segments_with_liveness(backend: Backend) {
    let fx = Fixture::new("list");
    let (busy, idle) = (fx.location(backend), fx.location(backend));
    create(&fx, &busy, &["--capacity", "64KiB"]);
    create(&fx, &idle, &["--capacity", "64KiB"]);
    publish(&fx, &busy, "waiting");
    let producer = attach(&fx, &busy, "producer");
    let dir = dir_args(&fx, backend);

    let out = shmctl(&fx, with(&["list"], &dir));
    out.assert_success();
    let header = line_of(&out.stdout, "NAME");
    assert!(header.contains("PRODUCER") && header.contains("CONSUMER"), "{}", out.stdout);
    let row: Vec<&str> = line_of(&out.stdout, &name(&busy)).split_whitespace().collect();
    assert_eq!(row[1], backend.name(), "{row:?}");
    let producer_cell = format!("alive ({})", producer.pid());
    assert!(row.join(" ").contains(&format!("{producer_cell} -")), "producer alive, no consumer: {row:?}");
    let row: Vec<&str> = line_of(&out.stdout, &name(&idle)).split_whitespace().collect();
    assert_eq!(row[row.len() - 2..], ["-", "-"], "{row:?}");
    assert!(!out.stdout.contains("NAME/KEY"), "no foreign section without --all:\n{}", out.stdout);

    let list = json(&shmctl(&fx, with(&["list", "--json"], &dir)));
    let segments = list["segments"].as_array().expect("segments is an array");
    let ours = segments.iter().find(|s| s["name"] == name(&busy)).unwrap_or_else(|| panic!("{list:#}"));
    assert_eq!(ours["backend"], backend.name());
    assert_eq!(
        [num(ours, "/capacity"), num(ours, "/total_produced"), num(ours, "/records_in_flight")],
        [CAPACITY, 1, 1],
        "{ours:#}"
    );
    let p = &ours["participants"][0];
    assert_eq!((&p["role"], &p["liveness"]), (&Value::from("producer"), &Value::from("alive")), "{ours:#}");
    assert_eq!(num(p, "/pid"), u64::from(producer.pid()), "{ours:#}");
    assert!(segments.iter().any(|s| s["name"] == name(&idle)), "{list:#}");
    assert!(list.get("other").is_none(), "no foreign section without --all: {list:#}");

    if backend == Backend::File {
        // File segments are found only where we say.
        let out = shmctl(&fx, ["list"]);
        out.assert_success();
        assert!(!out.stdout.contains(&name(&busy)), "{}", out.stdout);
    }
}

/// A segment created bound to a NUMA node says so in `stat`, human and JSON; one created
/// without a node says nothing of the kind.
#[test]
fn stat_shows_the_numa_binding() {
    let fx = Fixture::new("stat-numa");
    let bound = fx.location(Backend::Posix);
    let free = fx.location(Backend::Posix);
    create(&fx, &bound, &["--capacity", "64KiB", "--numa-node", "0"]);
    create(&fx, &free, &["--capacity", "64KiB"]);
    let human = shmctl_on(&fx, "stat", &bound, &[]);
    human.assert_success();
    assert!(line_of(&human.stdout, "owner").ends_with("bound to NUMA node 0"), "{}", human.stdout);
    assert_eq!(stat_json(&fx, &bound)["segment"]["numa_node"], 0, "the JSON names the node");
    let human = shmctl_on(&fx, "stat", &free, &[]);
    human.assert_success();
    assert!(!human.stdout.contains("NUMA"), "{}", human.stdout);
    assert!(stat_json(&fx, &free)["segment"]["numa_node"].is_null(), "no node in the JSON");
}

#[test]
fn list_all_adds_foreign_shared_memory_like_lsipc() {
    let fx = Fixture::new("list-all");
    let ours = fx.location(Backend::Posix);
    create(&fx, &ours, &["--capacity", "64KiB"]);
    let posix = foreign_posix(&fx, &[0x42; 100]);
    let (sysv, sysv_id) = foreign_sysv(&fx, 4096);
    let file = fx.path("foreign");
    std::fs::write(&file, [0x42; 100]).expect("write a foreign file");
    let dir = fx.dir().display().to_string();

    let out = shmctl(&fx, ["list", "--all", "--dir", &dir]);
    out.assert_success();
    let header = line_of(&out.stdout, "NAME/KEY");
    for column in ["ID", "PERMS", "OWNER", "SIZE", "NATTCH", "STATUS", "CTIME", "CPID", "LPID", "COMMAND"] {
        assert!(header.split_whitespace().any(|c| c == column), "no {column} column: {header}");
    }
    let posix_row: Vec<&str> = line_of(&out.stdout, &name(&posix)).split_whitespace().collect();
    assert_eq!(posix_row[1..5], ["-", "640", &my_user_name(), "100"], "{posix_row:?}");
    let sysv_row: Vec<&str> = line_of(&out.stdout, &name(&sysv)).split_whitespace().collect();
    let me = std::process::id().to_string();
    assert_eq!(sysv_row[1..3], [sysv_id.to_string().as_str(), "600"], "{sysv_row:?}");
    assert_eq!(sysv_row[4..7], ["4", "KiB", "0"], "size and nattch: {sysv_row:?}");
    assert!(sysv_row.contains(&me.as_str()), "cpid is the test process {me}: {sysv_row:?}");
    line_of(&out.stdout, &file.display().to_string());
    // Ours is in the first table, not among the others.
    let (first, others) = out.stdout.split_once("NAME/KEY").expect("two tables");
    assert!(first.contains(&name(&ours)) && !others.contains(&name(&ours)), "{}", out.stdout);

    let list = json(&shmctl(&fx, ["list", "--all", "--json", "--dir", &dir]));
    let others = list["other"].as_array().unwrap_or_else(|| panic!("no other: {list:#}"));
    let find = |n: &str| others.iter().find(|o| o["name"] == n).unwrap_or_else(|| panic!("{n} not in {list:#}"));
    let p = find(&name(&posix));
    assert_eq!((&p["backend"], num(p, "/size"), text(p, "/perms")), (&Value::from("posix"), 100, "0640"), "{p:#}");
    let s = find(&name(&sysv));
    assert_eq!(
        [num(s, "/id"), num(s, "/size"), num(s, "/nattch"), num(s, "/cpid")],
        [u64::try_from(sysv_id).unwrap(), 4096, 0, u64::from(std::process::id())],
        "{s:#}"
    );
    assert_eq!(find(&file.display().to_string())["backend"], "file");
    assert!(list["segments"].as_array().unwrap().iter().any(|s| s["name"] == name(&ours)), "{list:#}");

    // Without --all, none of them.
    let out = shmctl(&fx, ["list", "--dir", &dir]);
    out.assert_success();
    assert!(!out.stdout.contains(&name(&posix)) && !out.stdout.contains(&name(&sysv)), "{}", out.stdout);
}

/// Our user name as `list --all` shows it.
fn my_user_name() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid()).ok().flatten().map_or_else(|| euid().to_string(), |u| u.name)
}

// ---- unlink ----------------------------------------------------------------------

fn unlink_removes_and_refuses_while_attached(backend: Backend) {
    let fx = Fixture::new("unlink");
    let location = fx.location(backend);
    create(&fx, &location, &["--capacity", "64KiB"]);
    let consumer = attach(&fx, &location, "consumer");
    let refused = shmctl_on(&fx, "unlink", &location, &[]);
    assert_fails(&refused, UNAVAILABLE, &[&name(&location), &format!("consumer pid {}", consumer.pid()), "--force"]);
    assert!(exists(&location), "refused, yet removed");

    let forced = shmctl_on(&fx, "unlink", &location, &["--force"]);
    forced.assert_success();
    assert!(forced.stdout.starts_with("removed ") && forced.stdout.contains(&name(&location)), "{}", forced.stdout);
    assert!(!exists(&location));
    if let Location::Sysv(key) = location {
        assert!(!shm_core::sysv_lock_path(key).exists(), "the lock file is removed too");
    }
    assert_fails(&shmctl_on(&fx, "stat", &location, &[]), NO_INPUT, &[&name(&location), "no such segment"]);

    // Nobody attached: removed without --force.
    fx.kill(&consumer);
    create(&fx, &location, &["--capacity", "64KiB"]);
    shmctl_on(&fx, "unlink", &location, &[]).assert_success();
    assert!(!exists(&location));
}

// ---- gc --------------------------------------------------------------------------

/// gc acts on every segment of the host, so one test covers every backend: parallel
/// tests each running gc would remove each other's dead segments mid-check.
#[test]
fn gc_removes_segments_whose_participants_died() {
    let fx = Fixture::new("gc");
    let dir = fx.dir().display().to_string();
    struct Case {
        dead: Location,
        dead_pid: u32,
        live: Location,
        idle: Location,
    }
    let cases: Vec<Case> = Backend::NAMED
        .iter()
        .map(|&backend| {
            let [dead, live, idle] = [(); 3].map(|()| fx.location(backend));
            for l in [&dead, &live, &idle] {
                create(&fx, l, &["--capacity", "64KiB"]);
            }
            let victim = attach(&fx, &dead, "producer");
            let killed = fx.kill(&victim);
            assert_eq!(std::os::unix::process::ExitStatusExt::signal(&killed.status), Some(9), "{killed:?}");
            attach(&fx, &live, "consumer");
            Case { dead, dead_pid: victim.pid(), live, idle }
        })
        .collect();
    // `would remove NAME (why)`, `kept    NAME: why`, `removed NAME (why)`.
    let line = |out: &str, prefix: &str, location: &Location| {
        let n = name(location);
        out.lines()
            .find(|l| {
                l.strip_prefix(prefix).and_then(|rest| rest.split_whitespace().next()).map(|w| w.trim_end_matches(':'))
                    == Some(n.as_str())
            })
            .map(str::to_owned)
    };

    let dry = shmctl(&fx, ["gc", "--dry-run", "--dir", &dir]);
    dry.assert_success();
    for c in &cases {
        let would = line(&dry.stdout, "would remove", &c.dead).unwrap_or_else(|| panic!("{}", dry.stdout));
        assert!(would.contains(&format!("producer pid {} died", c.dead_pid)), "{would}");
        let kept = line(&dry.stdout, "kept", &c.live).unwrap_or_else(|| panic!("{}", dry.stdout));
        assert!(kept.contains("alive"), "{kept}");
        let kept = line(&dry.stdout, "kept", &c.idle).unwrap_or_else(|| panic!("{}", dry.stdout));
        assert!(kept.contains("idle") && kept.contains("--include-idle"), "{kept}");
    }
    let idle_too = shmctl(&fx, ["gc", "--dry-run", "--include-idle", "--dir", &dir]);
    idle_too.assert_success();
    for c in &cases {
        let would = line(&idle_too.stdout, "would remove", &c.idle).unwrap_or_else(|| panic!("{}", idle_too.stdout));
        assert!(would.contains("(idle)"), "{would}");
        assert!(line(&idle_too.stdout, "kept", &c.live).is_some(), "{}", idle_too.stdout);
        assert!([&c.dead, &c.live, &c.idle].iter().all(|l| exists(l)), "a dry run removed something");
    }

    let gc = shmctl(&fx, ["gc", "--dir", &dir]);
    // A segment another test removes between gc's survey and its unlink is reported as
    // not removed (and gc exits 1): tolerate that for segments not ours.
    let failures: Vec<&str> = gc.stdout.lines().filter(|l| l.starts_with("could not remove")).collect();
    assert!(failures.iter().all(|l| l.contains("no such segment")), "{}", gc.stdout);
    gc.assert_code(if failures.is_empty() { 0 } else { 1 });
    for c in &cases {
        let removed = line(&gc.stdout, "removed", &c.dead).unwrap_or_else(|| panic!("{}", gc.stdout));
        assert!(removed.contains(&format!("producer pid {} died", c.dead_pid)), "{removed}");
        assert!(!exists(&c.dead), "{} is still there", c.dead);
        if let Location::Sysv(key) = c.dead {
            assert!(!shm_core::sysv_lock_path(key).exists(), "the lock file of {key} is still there");
        }
        assert!(exists(&c.live) && exists(&c.idle), "gc removed a live or idle segment:\n{}", gc.stdout);
    }
}

// ---- publish and peek ------------------------------------------------------------

fn publish_then_peek_moves_no_cursor(backend: Backend) {
    let fx = Fixture::new("peek");
    let location = fx.location(backend);
    create(&fx, &location, &["--capacity", "64KiB"]);
    let out = shmctl_on(&fx, "publish", &location, &["hello world"]);
    out.assert_success();
    assert_eq!(out.stdout.trim(), "published 11 bytes (type 0) at position 0");
    let binary: Vec<u8> = (0..=255).collect();
    let file = fx.path("record");
    std::fs::write(&file, &binary).expect("write the record file");
    let second = framed_len(11).unwrap();
    let out = shmctl_on(&fx, "publish", &location, &["--file", &file.display().to_string(), "--type", "7"]);
    out.assert_success();
    assert_eq!(out.stdout.trim(), format!("published 256 bytes (type 7) at position {second}"));
    // From stdin.
    let mut child = command(args_on("publish", &location, &["--file", "-"]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shmctl");
    child.stdin.take().expect("stdin").write_all(b"from stdin").expect("write stdin");
    let out = child.wait_with_output().expect("shmctl publish --file -");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let third = second + framed_len(256).unwrap();

    let before = stat_json(&fx, &location);
    let peek = shmctl_on(&fx, "peek", &location, &[]);
    peek.assert_success();
    let lines: Vec<&str> = peek.stdout.lines().collect();
    assert_eq!(lines[0..2], ["@0 type 0 len 11", "  \"hello world\""], "{}", peek.stdout);
    assert_eq!(lines[2], format!("@{second} type 7 len 256"), "{}", peek.stdout);
    assert!(lines[3].trim().starts_with("00 01 02 03") && lines[3].ends_with("..."), "{}", peek.stdout);
    assert_eq!(lines[4..], [format!("@{third} type 0 len 10").as_str(), "  \"from stdin\""], "{}", peek.stdout);

    let hex = shmctl_on(&fx, "peek", &location, &["--hex", "-n", "2"]);
    hex.assert_success();
    assert!(hex.stdout.contains("  00000000  68 65 6c 6c 6f 20 77 6f 72 6c 64"), "{}", hex.stdout);
    assert!(hex.stdout.contains("|hello world|"), "{}", hex.stdout);
    assert!(hex.stdout.contains("  000000f0  f0 f1 f2"), "{}", hex.stdout);
    assert_eq!(hex.stdout.lines().filter(|l| l.starts_with("  0000")).count(), 1 + 16, "{}", hex.stdout);
    assert!(!hex.stdout.contains("from stdin"), "-n 2 shows two records:\n{}", hex.stdout);

    let peeked = json(&shmctl_on(&fx, "peek", &location, &["--json"]));
    let records = peeked["records"].as_array().expect("an array");
    let bytes = |r: &Value| -> Vec<u8> {
        match text(r, "/encoding") {
            "utf8" => text(r, "/data").as_bytes().to_vec(),
            "base64" => base64::engine::general_purpose::STANDARD.decode(text(r, "/data")).expect("base64"),
            other => panic!("encoding {other:?}"),
        }
    };
    assert_eq!(records.len(), 3);
    assert_eq!((num(&records[1], "/position"), num(&records[1], "/record_type")), (second, 7));
    assert_eq!(
        [bytes(&records[0]), bytes(&records[1]), bytes(&records[2])],
        [b"hello world".to_vec(), binary.clone(), b"from stdin".to_vec()]
    );
    let one = shmctl_on(&fx, "peek", &location, &["-n", "1"]);
    assert_eq!(one.stdout.lines().filter(|l| l.starts_with('@')).count(), 1, "{}", one.stdout);

    // Nothing moved, and a consumer still gets every record.
    let after = stat_json(&fx, &location);
    for part in ["ring", "counters", "participants"] {
        assert_eq!(before[part], after[part], "peek changed {part}");
    }
    let segment = Segment::builder(location.clone()).open().expect("open");
    let mut consumer = segment.consumer().expect("consumer");
    for (data, ty) in [(&b"hello world"[..], 0), (&binary[..], 7), (&b"from stdin"[..], 0)] {
        let record = consumer.try_read().expect("a record");
        assert_eq!((&*record, record.record_type()), (data, ty));
    }
}

// ---- names -----------------------------------------------------------------------

/// Every way to write a name, with the backend guessed from its shape or given.
#[test]
fn names_in_every_form() {
    let fx = Fixture::new("names");
    let in_dir = |args: &[&str]| run(&fx, command(args).current_dir(fx.dir()));

    // POSIX: `/name`.
    let posix = fx.location(Backend::Posix);
    create(&fx, &posix, &["--capacity", "4KiB"]);
    let f = shmctl(&fx, ["stat", &name(&posix)]);
    assert!(f.stdout.starts_with(&format!("{}  (posix", name(&posix))), "{}", f.stdout);

    // SysV: `0x...`, decimal, `ftok:PATH:ID`.
    let sysv = fx.location(Backend::Sysv);
    let Location::Sysv(key) = sysv else { unreachable!() };
    shmctl(&fx, ["create", &name(&sysv), "--capacity", "4KiB"]).assert_success();
    let decimal = (key.raw() as u32).to_string();
    for form in [&name(&sysv), &decimal] {
        let f = shmctl(&fx, ["stat", form.as_str(), "--json"]);
        assert_eq!((text(&json(&f), "/segment/backend"), text(&json(&f), "/segment/name")), ("sysv", &*name(&sysv)));
    }
    let ftok_key = shm_core::SysvKey::ftok(fx.dir(), 7).expect("ftok");
    let ftok = Location::Sysv(ftok_key);
    fx.track_segment(ftok.clone());
    let ftok_name = format!("ftok:{}:7", fx.dir().display());
    shmctl(&fx, ["create", &ftok_name, "--capacity", "4KiB"]).assert_success();
    assert_eq!(text(&stat_json(&fx, &ftok), "/segment/name"), name(&ftok));

    // Files: a path, relative or absolute; a name that looks like a key needs --backend.
    let file = fx.location(Backend::File);
    create(&fx, &file, &["--capacity", "4KiB"]);
    let f = shmctl(&fx, ["stat", &name(&file), "--json"]);
    assert_eq!(text(&json(&f), "/segment/backend"), "file");
    let digits = Location::File(fx.dir().join("12345"));
    fx.track_segment(digits.clone());
    in_dir(&["create", "12345", "--backend", "file", "--capacity", "4KiB"]).assert_success();
    assert_eq!(os_stat(&digits).expect("the file").mode, 0o600);
    let f = in_dir(&["stat", "./12345", "--json"]);
    assert_eq!(text(&json(&f), "/segment/backend"), "file");
    // Without --backend, digits are a SysV key (one nobody holds here).
    let f = in_dir(&["stat", "12345"]);
    if f.status.code() != Some(0) {
        assert_fails(&f, NO_INPUT, &["sysv key 0x00003039"]);
    }
}

// ---- completions -----------------------------------------------------------------

#[test]
fn completions_print_a_script() {
    let fx = Fixture::new("completions");
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef shmctl"), ("fish", "complete -c shmctl")] {
        let out = shmctl(&fx, ["completions", shell]);
        out.assert_success();
        assert!(out.stdout.contains("shmctl") && out.stdout.contains(marker), "{shell}:\n{}", out.stdout);
        for sub in ["create", "stat", "gc", "publish", "peek"] {
            assert!(out.stdout.contains(sub), "{shell} completion lacks {sub}");
        }
    }
}

// ---- One test per check and backend ---------------------------------------------

macro_rules! every_backend {
    ($backend:ident) => {
        checks!($backend:
            create_defaults_to_mode_0600,
            create_with_options_and_json,
            stat_reports_identity_counters_and_participants,
            stat_while_streaming_is_consistent_and_disturbs_nothing,
            inspecting_never_writes_to_the_segment,
            stat_works_on_read_only_objects,
            stat_watch_prints_rates_until_sigint,
            list_shows_segments_with_liveness,
            unlink_removes_and_refuses_while_attached,
            publish_then_peek_moves_no_cursor,
        );
    };
}

mod posix {
    every_backend!(Posix);
}

mod sysv {
    every_backend!(Sysv);
}

mod file {
    every_backend!(File);
}

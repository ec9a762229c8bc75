//! Placement options of the daemons, on real processes.
//!
//! - `pinned_ring_threads_on_a_bound_prefaulted_segment_move_every_record`: producerd
//!   creates the segment with `numa_node = 0` and `prefault = true` and pins its ring
//!   thread to the first allowed CPU; consumerd opens it with `prefault = true` and pins
//!   its ring thread to the last. Both log what they applied, the kernel reports each
//!   `ring` thread's `Cpus_allowed_list` as configured (and the main thread unpinned),
//!   the segment is bound to node 0, and the verify sink counts every record produced.
//! - `the_daemons_prefault_unless_told_not_to`: with no `prefault` key, producerd's and
//!   consumerd's mappings of the segment are whole (`Rss` in `/proc/PID/smaps` is the
//!   segment's size) while they stream; with `prefault = false`, neither is whole
//!   before a record has moved.
//! - `a_cpu_the_process_may_not_use_is_a_config_error`: `cpu_affinity = [4096]` (and a
//!   NUMA node that does not exist) make both daemons exit 78, with `--check-config` and
//!   when starting, naming the key, its line and the CPU; no segment is created.

use shm_core::Segment;
use shm_core::placement::{allowed_cpus, format_list};
use shmring_tests::daemons::{Daemon, Kind, observe, segment_section, wait_produced};
use shmring_tests::{Backend, Fixture};

/// `Cpus_allowed_list` of each thread of `pid` named `name` (`/proc/PID/task/*/comm`).
fn threads_cpus(pid: u32, name: &str) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the daemon's tasks");
    tasks
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            (comm.trim() == name).then_some(())?;
            let status = std::fs::read_to_string(dir.join("status")).ok()?;
            status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(|v| v.trim().to_owned())
        })
        .collect()
}

#[test]
fn pinned_ring_threads_on_a_bound_prefaulted_segment_move_every_record() {
    let fx = Fixture::new("place-pin");
    let location = fx.location(Backend::Posix);
    let allowed = allowed_cpus().expect("sched_getaffinity");
    let (first, last) = (allowed[0], allowed[allowed.len() - 1]);
    if first == last {
        println!("note: one CPU allowed ({first}); both ring threads go on it");
    }
    let producer_config = format!(
        "{}[source]\nkind = \"generator\"\nrate = 50000\ncpu_affinity = [{first}]\n",
        segment_section(&location, &["capacity = \"256KiB\"", "numa_node = 0", "prefault = true"])
    );
    let consumer_config = format!(
        "{}[sink]\nkind = \"verify\"\ncpu_affinity = [{last}]\n",
        segment_section(&location, &["wait_for_segment = \"10s\"", "prefault = true"])
    );
    let producer = Daemon::ready(&fx, Kind::Producer, &producer_config);
    let consumer = Daemon::ready(&fx, Kind::Consumer, &consumer_config);
    // The ring thread pins itself as it starts, which may be just after READY=1.
    producer.wait_log(&fx, "ring thread pinned");
    consumer.wait_log(&fx, "ring thread pinned");
    for (daemon, cpu) in [(&producer, first), (&consumer, last)] {
        assert_eq!(threads_cpus(daemon.pid(), "ring"), [cpu.to_string()], "{} ring thread", daemon.proc().label());
        let main_thread = threads_cpus(daemon.pid(), daemon.proc().label());
        assert_eq!(main_thread, [format_list(&allowed)], "{}: only the ring thread is pinned", daemon.proc().label());
    }
    assert!(producer.log().contains("created=true"), "placement not logged:\n{}", producer.log());
    assert_eq!(observe(&location).info().expect("info").numa_node, Some(0), "the segment is bound to node 0");
    wait_produced(&observe(&location), 5_000);

    producer.stop(&fx).assert_success();
    consumer.stop(&fx).assert_success();
    let stats = observe(&location).stats();
    consumer.summary().assert_verified(stats.total_produced);
    assert_eq!(stats.total_consumed, stats.total_produced, "{stats:#?}");
    assert!(stats.total_produced > 2_000, "the stream hardly ran: {stats:#?}");
    println!(
        "{} records; producer log: {}",
        stats.total_produced,
        producer
            .log()
            .lines()
            .filter(|l| l.contains("pinned") || l.contains("placement"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
}

/// `Rss` in bytes of each mapping of `pid` whose path ends with `name`.
fn mapped_bytes(pid: u32, name: &str) -> Vec<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let mut found = Vec::new();
    let mut ours = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            ours = line.trim_end().trim_end_matches(" (deleted)").ends_with(name);
        } else if ours && let Some(kb) = line.strip_prefix("Rss:") {
            found.push(kb.trim().trim_end_matches("kB").trim().parse::<u64>().expect("Rss in kB") * 1024);
        }
    }
    found
}

#[test]
fn the_daemons_prefault_unless_told_not_to() {
    const CAPACITY: u64 = 1 << 20;
    let size = shm_core::layout::HEADER_SIZE as u64 + CAPACITY;
    for prefault in [None, Some(false)] {
        let fx = Fixture::new("place-prefault");
        let location = fx.location(Backend::Posix);
        let name = location.to_string();
        let setting = prefault.map(|p| format!("prefault = {p}"));
        let mut producer_keys = vec!["capacity = \"1MiB\""];
        let mut consumer_keys = vec!["wait_for_segment = \"10s\""];
        producer_keys.extend(setting.as_deref());
        consumer_keys.extend(setting.as_deref());
        // A slow stream: 100 records a second touch 2 pages of the 256 in a second.
        let producer = Daemon::ready(
            &fx,
            Kind::Producer,
            &format!("{}[source]\nkind = \"generator\"\nrate = 100\n", segment_section(&location, &producer_keys)),
        );
        let consumer = Daemon::ready(
            &fx,
            Kind::Consumer,
            &format!("{}[sink]\nkind = \"verify\"\n", segment_section(&location, &consumer_keys)),
        );
        for daemon in [&producer, &consumer] {
            let label = daemon.proc().label();
            let maps = mapped_bytes(daemon.pid(), &name);
            assert!(!maps.is_empty(), "{label} has no mapping of {name}");
            if prefault.is_none() {
                assert!(maps.contains(&size), "{label}: not every page of {name} is mapped: {maps:?} of {size}");
            } else {
                assert!(maps.iter().all(|&m| m < size / 2), "{label}: prefault = false, yet mapped {maps:?}");
            }
        }
        producer.stop(&fx).assert_success();
        consumer.stop(&fx).assert_success();
    }
}

#[test]
fn a_cpu_the_process_may_not_use_is_a_config_error() {
    let fx = Fixture::new("place-badcpu");
    let location = fx.location(Backend::Posix);
    let section = segment_section(&location, &[]);
    let cases = [
        (
            Kind::Producer,
            format!("{section}[source]\ncpu_affinity = [4096]\n"),
            ["source.cpu_affinity (line 5)", "4096"],
        ),
        (
            Kind::Consumer,
            format!("{section}[sink]\nkind = \"discard\"\ncpu_affinity = [4096]\n"),
            ["sink.cpu_affinity (line 6)", "4096"],
        ),
        (Kind::Producer, segment_section(&location, &["numa_node = 999"]), ["segment.numa_node (line 4)", "999"]),
    ];
    for (kind, config, names) in cases {
        let launch = Daemon::launch(&fx, kind, &config);
        let checked = launch.check_config(&fx);
        let started = launch.start(&fx).wait(&fx);
        for out in [&checked, &started] {
            out.assert_code(78);
            for name in names {
                assert!(out.stderr.contains(name), "{} stderr lacks {name:?}: {}", kind.binary(), out.stderr);
            }
        }
        println!("{}: {}", kind.binary(), started.stderr.trim());
    }
    assert!(Segment::builder(location).read_only().open().is_err(), "a refused daemon created the segment");
}

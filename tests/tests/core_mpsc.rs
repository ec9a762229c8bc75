//! The mpsc ring across real processes: several `mpsc-peer` producers and one consumer on
//! a posix segment, with per-producer sequence checks done by the consumer process (every
//! record whole, each producer's records in order, none lost or repeated).
//!
//! - Streaming: 3 producer processes, 10^6 records in all (`SHMRING_MPSC_RECORDS` sets it).
//! - A producer killed with `SIGKILL` between claim and commit: the consumer carries on
//!   once the kernel has dropped that producer's lock, and counts the hole for it.
//! - A producer stopped with `SIGSTOP` between claim and commit, for longer than every
//!   timeout in the ring: never reclaimed, the segment says the consumer waits for it, and
//!   after `SIGCONT` its record arrives with nothing lost or counted.
//!
//! The ledgers are the test's own: what each producer was told it published (its exit
//! status after `N` commits), and what the consumer process checked record by record.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use shm_core::ring::mpsc::HeadClaim;
use shm_core::{Liveness, RingKind};
use shmring_tests::ledger::{Evidence, Figures};
use shmring_tests::{Fixture, Proc, wait_until};

const PEER: &str = env!("CARGO_BIN_EXE_mpsc-peer");

fn consumer(fx: &Fixture, name: &str, expect: &[(usize, u64)]) -> Proc {
    let expect: Vec<String> = expect.iter().map(|(k, n)| format!("{k}:{n}")).collect();
    fx.spawn("consumer", Command::new(PEER).args(["consume", name, "--expect", &expect.join(",")]))
}

/// The row's figures from this test's own ledgers: `acknowledged` is what the producer
/// processes committed (each commits its records in order and exits 0 only after the last;
/// the killed one committed exactly those before its claim), `delivered` what the consumer
/// process checked record by record; it fails on any duplicate or reordering, so a
/// successful run has none.
fn evidence(acknowledged: u64, delivered: u64) -> Evidence {
    Evidence {
        acknowledged,
        delivered,
        lost: acknowledged.saturating_sub(delivered),
        duplicated: 0,
        reordered: 0,
        unacknowledged: delivered.saturating_sub(acknowledged),
        ledger: "the producer processes' committed sequence numbers (0..N each, exit 0 after the last)",
        reader: "mpsc-peer consume: every record checked against its producer's next sequence number",
    }
}

fn records() -> u64 {
    std::env::var("SHMRING_MPSC_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
}

#[test]
fn three_producer_processes_stream_a_million_records_to_one_consumer() {
    let fx = Fixture::new("mpsc-stream");
    let (segment, name) = fx.create_posix_ring(RingKind::Mpsc, 256 * 1024);
    let per = records() / 3;
    let consuming = consumer(&fx, &name, &[(0, per), (1, per), (2, per)]);
    let producing: Vec<Proc> = (0..3).map(|id| fx.spawn_mpsc_producer(PEER, &name, id, per, None)).collect();
    let started = Instant::now();
    for p in &producing {
        fx.wait(p, Duration::from_secs(300)).assert_success();
    }
    let done = fx.wait(&consuming, Duration::from_secs(300));
    done.assert_success();
    let summary = done.summary();
    assert_eq!(summary.u64("records"), 3 * per);
    assert_eq!(summary.u64("unblocked"), 0);
    let stats = segment.stats();
    assert_eq!((stats.total_produced, stats.total_consumed), (3 * per, 3 * per));
    eprintln!("{} records from 3 producers in {:?}", 3 * per, started.elapsed());
}

#[test]
fn a_producer_killed_between_claim_and_commit_leaves_a_hole_the_consumer_reclaims_and_counts() {
    let fx = Fixture::new("mpsc-kill");
    let (segment, name) = fx.create_posix_ring(RingKind::Mpsc, 64 * 1024);
    let (streamed, hang_at) = (200_000, 1_000);
    let go = fx.path("never");
    let consuming = consumer(&fx, &name, &[(0, streamed), (1, hang_at)]);
    let victim = fx.spawn_mpsc_producer(PEER, &name, 1, 2 * hang_at, Some((hang_at, &go)));
    wait_until(Duration::from_secs(30), "producer 1 holds its claim", || {
        fx.stdout_so_far(&victim).contains(&format!("claimed={hang_at}"))
    });
    let streaming = fx.spawn_mpsc_producer(PEER, &name, 0, streamed, None);
    fx.kill(&victim);
    let streamed_all = fx.wait(&streaming, Duration::from_secs(120));
    let done = fx.wait(&consuming, Duration::from_secs(120));
    let pass = done.status.success() && streamed_all.status.success();
    let summary = if pass { Some(done.summary()) } else { None };
    let unblocked = summary.as_ref().map_or(0, |s| s.u64("unblocked_1"));
    let delivered = summary.as_ref().map_or(0, |s| s.u64("records"));
    let evidence = evidence(streamed + hang_at, delivered);
    shmring_tests::reliability::report(
        "mpsc_producer_killed_between_claim_and_commit",
        "SIGKILL an mpsc producer holding an uncommitted claim while another streams",
        1,
        if pass && unblocked == 1 && evidence.exact() { "pass" } else { "fail" },
        &Figures::Counted(evidence),
        json!({ "unblocked_records": unblocked }),
    );
    streamed_all.assert_success();
    done.assert_success();
    assert_eq!(unblocked, 1, "the hole is counted once, for producer 1");
    let status = segment.mpsc_status().expect("an mpsc ring");
    let row = status.producers.iter().find(|p| p.row.id == 1).expect("producer 1 has a row");
    assert_eq!((row.liveness, row.row.unblocked_records), (Some(Liveness::Dead), 1));
    assert_eq!(status.head, HeadClaim::Clear);
}

#[test]
fn a_stopped_producer_is_waited_for_past_every_timeout_and_never_reclaimed() {
    let fx = Fixture::new("mpsc-stop");
    let (segment, name) = fx.create_posix_ring(RingKind::Mpsc, 64 * 1024);
    let (streamed, hang_at, total) = (20_000, 500, 1_000);
    let go = fx.path("go");
    let consuming = consumer(&fx, &name, &[(0, streamed), (1, total)]);
    let sleeper = fx.spawn_mpsc_producer(PEER, &name, 1, total, Some((hang_at, &go)));
    wait_until(Duration::from_secs(30), "producer 1 holds its claim", || {
        fx.stdout_so_far(&sleeper).contains(&format!("claimed={hang_at}"))
    });
    let pid = nix::unistd::Pid::from_raw(sleeper.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let streaming = fx.spawn_mpsc_producer(PEER, &name, 0, streamed, None);
    // Past every timeout of the ring: the hole check's rate limit (1 ms), the longest futex
    // sleep (100 ms), the hybrid spin, many times over.
    let stopped_for = Duration::from_secs(3);
    std::thread::sleep(stopped_for);
    let status = segment.mpsc_status().expect("an mpsc ring");
    let stats = segment.stats();
    let waited_for =
        status.head == HeadClaim::WaitingFor { producer: 1 } && status.waiting_for_pid == Some(sleeper.pid());
    let never_reclaimed = status.producers.iter().all(|p| p.row.unblocked_records == 0);
    let shmctl =
        Command::new(shmring_tests::fixture::binary("shmctl")).args(["stat", &name]).output().expect("shmctl stat");
    let shown = String::from_utf8_lossy(&shmctl.stdout).into_owned();
    let named = format!("waits for producer 1 (pid {}, stopped)", sleeper.pid());
    fx.assert_running(&consuming);
    std::fs::write(&go, b"").expect("create the go file");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
    fx.wait(&sleeper, Duration::from_secs(60)).assert_success();
    fx.wait(&streaming, Duration::from_secs(60)).assert_success();
    let done = fx.wait(&consuming, Duration::from_secs(60));
    let pass = done.status.success() && waited_for && never_reclaimed && shown.contains(&named);
    let unblocked = if done.status.success() { done.summary().u64("unblocked") } else { u64::MAX };
    let delivered = if done.status.success() { done.summary().u64("records") } else { 0 };
    let evidence = evidence(streamed + total, delivered);
    shmring_tests::reliability::report(
        "mpsc_producer_stopped_between_claim_and_commit",
        "SIGSTOP an mpsc producer holding an uncommitted claim for 3 s, then SIGCONT",
        1,
        if pass && unblocked == 0 && evidence.exact() { "pass" } else { "fail" },
        &Figures::Counted(evidence),
        json!({ "stopped_ms": stopped_for.as_millis() as u64, "consumed_while_stopped": stats.total_consumed, "unblocked_records": unblocked }),
    );
    assert!(waited_for, "the segment names producer 1 (pid {}) as the one waited for: {status:?}", sleeper.pid());
    assert!(never_reclaimed, "a stopped producer's claim was reclaimed: {status:?}");
    assert!(shown.contains(&named), "shmctl stat does not say {named:?}:\n{shown}");
    done.assert_success();
    assert_eq!(unblocked, 0);
}

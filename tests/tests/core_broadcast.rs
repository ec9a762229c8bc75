//! The broadcast ring across real processes: one `broadcast-peer` producer and two named
//! consumer processes on a posix segment, each consumer checking every record (whole, in
//! sequence, nothing repeated, every gap reported to it as missed).
//!
//! - Streaming: 10^6 records to two consumers (`SHMRING_BROADCAST_RECORDS` sets it).
//! - A consumer killed with `SIGKILL` mid-stream: the producer is not held back by it
//!   (it publishes many rings' worth while it is dead), and the consumer, restarted under
//!   its name, resumes its cursor and is told exactly how many records it missed.
//!
//! The ledgers are the test's own: what the producer process was told it published
//! (`0..N`, exit 0 after the last), and the consumer's ledger file, one line per record
//! its sink accepted, with the count of records it was told it missed before it.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use shm_core::{Liveness, RingKind};
use shmring_tests::ledger::{Evidence, Figures};
use shmring_tests::{Fixture, Proc, wait_until};

const PEER: &str = env!("CARGO_BIN_EXE_broadcast-peer");

fn producer(fx: &Fixture, name: &str, total: u64) -> Proc {
    fx.spawn("producer", Command::new(PEER).args(["produce", name, "--total", &total.to_string()]))
}

/// Starts consumer `who` and waits until it has attached (joined or resumed).
fn consumer(fx: &Fixture, name: &str, who: &str, total: u64, ledger: Option<&std::path::Path>) -> Proc {
    let mut cmd = Command::new(PEER);
    cmd.args(["consume", name, "--as", who, "--total", &total.to_string()]);
    if let Some(path) = ledger {
        cmd.arg("--ledger").arg(path);
    }
    let proc = fx.spawn(who, &mut cmd);
    wait_until(Duration::from_secs(30), &format!("consumer {who} attached"), || {
        fx.stdout_so_far(&proc).contains("attached")
    });
    proc
}

fn records() -> u64 {
    std::env::var("SHMRING_BROADCAST_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
}

#[test]
fn one_producer_streams_a_million_records_to_two_consumer_processes() {
    let fx = Fixture::new("broadcast-stream");
    let (segment, name) = fx.create_posix_ring(RingKind::Broadcast, 256 * 1024);
    let total = records();
    let consumers = [consumer(&fx, &name, "recorder", total, None), consumer(&fx, &name, "live", total, None)];
    let producing = producer(&fx, &name, total);
    fx.wait(&producing, Duration::from_secs(300)).assert_success();
    for c in &consumers {
        let done = fx.wait(c, Duration::from_secs(300));
        done.assert_success();
        let summary = done.summary();
        assert_eq!((summary.u64("delivered"), summary.u64("missed")), (total, 0), "{}", c.label());
    }
    let rows = segment.broadcast_status().expect("a broadcast ring");
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!((row.row.tallies.delivered, row.row.tallies.missed, row.row.lag_records), (total, 0, 0));
        assert_eq!(row.liveness, Liveness::Detached);
    }
    assert_eq!(segment.stats().total_produced, total);
}

/// A consumer's ledger file: the records its sink accepted, and the ranges it was told
/// it missed (the `MISSED` records before each one, and those before `end NEXT`).
fn read_ledger(path: &std::path::Path) -> (Vec<u64>, BTreeSet<u64>) {
    let text = std::fs::read_to_string(path).expect("the ledger");
    let (mut delivered, mut missed) = (Vec::new(), BTreeSet::new());
    let mut next = 0;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (first, second) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let (seq, told): (u64, u64) = if first == "end" {
            (second.parse().expect("end NEXT"), u64::MAX)
        } else {
            (first.parse().expect("SEQ"), second.parse().expect("MISSED"))
        };
        if told == u64::MAX {
            // Records counted missed by a last lap with no record after it.
            missed.extend(next..seq);
            break;
        }
        // A restarted consumer's first record may report what it missed while away.
        missed.extend(seq.saturating_sub(told)..seq);
        delivered.push(seq);
        next = seq + 1;
    }
    (delivered, missed)
}

#[test]
fn a_killed_consumer_does_not_hold_the_producer_back_and_returns_knowing_exactly_what_it_missed() {
    let fx = Fixture::new("broadcast-kill");
    let capacity = 64 * 1024;
    let (segment, name) = fx.create_posix_ring(RingKind::Broadcast, capacity);
    let total = 400_000;
    let ledger = fx.path("ledger");
    let steady = consumer(&fx, &name, "steady", total, None);
    let victim = consumer(&fx, &name, "victim", total, Some(&ledger));
    let producing = producer(&fx, &name, total);
    wait_until(Duration::from_secs(60), "the victim has taken 1000 records", || {
        std::fs::read_to_string(&ledger).is_ok_and(|t| t.lines().count() >= 1000)
    });
    fx.kill(&victim);
    let at_kill = segment.stats().total_produced;
    // The last record the victim's sink took before the kill: it can have missed nothing
    // before it (the ring never skips a live consumer's records).
    let last_taken = *read_ledger(&ledger).0.last().expect("the victim took 1000 records");
    // Not held back: many rings' worth published while the victim is dead (a record is
    // at most 64 bytes framed, so 10 rings are at least 10 * 64 KiB / 64 records).
    let past = at_kill + 10 * capacity / 64;
    wait_until(Duration::from_secs(120), "the producer publishes ten rings past the dead consumer", || {
        segment.stats().total_produced >= past.min(total)
    });
    let row = |who: &str| {
        segment.broadcast_status().expect("broadcast").into_iter().find(|r| r.row.name.as_deref() == Some(who))
    };
    assert_eq!(row("victim").map(|r| r.liveness), Some(Liveness::Dead));
    let at_restart = segment.stats().total_produced;
    let back = consumer(&fx, &name, "victim", total, Some(&ledger));
    wait_until(Duration::from_secs(60), "the restarted victim has attached", || {
        row("victim").is_some_and(|r| r.liveness != Liveness::Dead)
    });
    // Once attached it holds the producer back again: nothing published after this is
    // missed. So the missed records lie in last_taken..at_attach, and at least those
    // published before the restart that a ring cannot still hold (a frame is at least
    // 8 bytes) were overwritten.
    let at_attach = segment.stats().total_produced;
    let missed_bound = (at_restart.saturating_sub(last_taken + 1 + capacity / 8), at_attach - last_taken);
    let produced = fx.wait(&producing, Duration::from_secs(300));
    let steady_done = fx.wait(&steady, Duration::from_secs(300));
    let back_done = fx.wait(&back, Duration::from_secs(300));
    let (accepted, told_missed) = read_ledger(&ledger);
    // The sink writes a record's line before the next read releases it. Killed between
    // the two, and lapped while dead, the victim cannot be handed that record again: the
    // ring counts it missed (delivered means handed and released) and says so with the
    // first record after the restart. So the ledger may hold exactly one record it was
    // also told it missed (about one run in four), never more.
    let (unreleased, delivered): (Vec<u64>, Vec<u64>) = accepted.into_iter().partition(|s| told_missed.contains(s));
    let acknowledged: Vec<u64> = (0..total).filter(|s| !told_missed.contains(s)).collect();
    let evidence = Evidence::compare(
        "the producer process's published sequence numbers (0..N, exit 0 after the last), less those the consumer was told it missed",
        acknowledged,
        "the killed-and-restarted consumer's ledger file (one line per record its sink accepted), less the one it held unreleased when killed if it was overwritten while it was dead (told missed)",
        delivered.clone(),
    );
    let victim_row = row("victim").expect("the victim's row");
    let missed = told_missed.len() as u64;
    let outside_window = told_missed.iter().filter(|&&seq| seq < last_taken || seq >= at_attach).count();
    let within_bound = outside_window == 0 && (missed_bound.0..=missed_bound.1).contains(&missed);
    let steady_summary = steady_done.status.success().then(|| steady_done.summary());
    let steady_exact = steady_summary.as_ref().is_some_and(|s| (s.u64("delivered"), s.u64("missed")) == (total, 0));
    let pass = produced.status.success()
        && back_done.status.success()
        && steady_exact
        && evidence.exact()
        && missed > 0
        && within_bound
        && unreleased.len() <= 1
        && victim_row.row.tallies.missed == missed
        && victim_row.row.tallies.delivered == delivered.len() as u64;
    shmring_tests::reliability::report(
        "broadcast_consumer_killed_and_resumed",
        "SIGKILL one of two broadcast consumers mid-stream; restart it under its name",
        1,
        if pass { "pass" } else { "fail" },
        &Figures::Counted(evidence.clone()),
        json!({
            "missed_reported": missed,
            "missed_bound_from_producer_positions": [missed_bound.0, missed_bound.1],
            "missed_outside_kill_to_attach": outside_window,
            "missed_in_segment": victim_row.row.tallies.missed,
            "published_while_dead": segment.stats().total_produced.min(past) - at_kill,
            "accepted_unreleased_then_missed": unreleased.len(),
        }),
    );
    produced.assert_success();
    steady_done.assert_success();
    back_done.assert_success();
    assert!(steady_exact, "the live consumer got every record: {steady_summary:?}");
    evidence.assert_exact();
    assert!(missed > 0, "ten rings passed while it was dead: it must have missed some");
    assert!(
        within_bound,
        "told it missed {missed} records ({outside_window} outside {last_taken}..{at_attach}); \
         the producer's positions allow {missed_bound:?}"
    );
    assert!(unreleased.len() <= 1, "only the record held when killed may be accepted and missed: {unreleased:?}");
    assert_eq!(victim_row.row.tallies.missed, missed, "the segment's tally is what the consumer was told");
    assert_eq!(victim_row.row.tallies.delivered, delivered.len() as u64);
    assert_eq!(delivered.len() as u64 + missed, total, "every record delivered once or reported missed");
}

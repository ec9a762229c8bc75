//! The mpmc (work-queue) ring across real processes: `mpsc-peer` producers and
//! `mpmc-peer` workers on a posix segment.
//!
//! - Streaming: 2 producer processes and 2 worker processes, 10^6 records in all
//!   (`SHMRING_MPMC_RECORDS` sets it): the union of what the workers got is everything
//!   produced, each record once, each producer's records in order within each worker.
//! - A worker killed with `SIGKILL` while it holds a record it has not acknowledged: the
//!   record is handed to the other worker (flagged and counted `redelivered`), nothing lost.
//!
//! The ledgers are the test's own: what each producer process committed (`0..N` in order,
//! exit 0 after the last), and what each worker process wrote down record by record
//! (producer id, sequence number, redelivered flag), read back here and compared.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use shm_core::{Liveness, RingKind};
use shmring_tests::ledger::{Evidence, Figures};
use shmring_tests::{Fixture, Proc, wait_until};

const PRODUCER: &str = env!("CARGO_BIN_EXE_mpsc-peer");
const WORKER: &str = env!("CARGO_BIN_EXE_mpmc-peer");

fn worker(fx: &Fixture, name: &str, id: usize, stop: &Path, hold_at: Option<u64>) -> (Proc, PathBuf) {
    let out = fx.path(&format!("worker-{id}.out"));
    let mut cmd = Command::new(WORKER);
    cmd.args(["work", name, "--id", &id.to_string(), "--stop"]).arg(stop).arg("--out").arg(&out);
    if let Some(n) = hold_at {
        cmd.args(["--hold-at", &n.to_string()]);
    }
    (fx.spawn(&format!("worker-{id}"), &mut cmd), out)
}

/// What one worker wrote down: `(producer, seq, redelivered)` in the order it took them.
fn read_out(path: &Path) -> Vec<(u64, u64, bool)> {
    let bytes = std::fs::read(path).expect("worker output");
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    bytes.chunks_exact(17).map(|c| (word(&c[..8]), word(&c[8..16]), c[16] == 1)).collect()
}

/// The comparison of the producers' ledger (`per` records `0..per` of each producer) with
/// the union of the workers' outputs. `duplicated` counts repeats that were *not* flagged
/// as redeliveries; flagged ones are returned apart (expected, and counted by the ring).
/// `reordered`: within one worker, a producer's records not in increasing order (a
/// redelivered record is out of order by nature and is not counted).
fn compare(producers: u64, per: u64, outputs: &[Vec<(u64, u64, bool)>]) -> (Evidence, u64) {
    let mut seen: HashMap<(u64, u64), u64> = HashMap::new();
    let (mut reordered, mut redelivered, mut delivered) = (0, 0, 0);
    for out in outputs {
        let mut last: HashMap<u64, u64> = HashMap::new();
        for &(k, seq, again) in out {
            delivered += 1;
            *seen.entry((k, seq)).or_default() += 1;
            if again {
                redelivered += 1;
                continue;
            }
            if last.get(&k).is_some_and(|&l| l >= seq) {
                reordered += 1;
            }
            last.insert(k, seq);
        }
    }
    let acknowledged = producers * per;
    let lost = (0..producers).flat_map(|k| (0..per).map(move |s| (k, s))).filter(|r| !seen.contains_key(r)).count();
    let repeats: u64 = seen.values().map(|&n| n - 1).sum();
    let evidence = Evidence {
        acknowledged,
        delivered,
        lost: lost as u64,
        duplicated: repeats.saturating_sub(redelivered),
        reordered,
        unacknowledged: seen.keys().filter(|&&(k, s)| k >= producers || s >= per).count() as u64,
        ledger: "the producer processes' committed sequence numbers (0..N each, exit 0 after the last)",
        reader: "the union of the mpmc-peer workers' outputs (producer, seq, redelivered flag per record)",
    };
    (evidence, redelivered)
}

fn records() -> u64 {
    std::env::var("SHMRING_MPMC_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
}

#[test]
fn two_producers_and_two_worker_processes_share_a_million_records_each_once() {
    let fx = Fixture::new("mpmc-stream");
    let (segment, name) = fx.create_posix_ring(RingKind::Mpmc, 256 * 1024);
    let per = records() / 2;
    let stop = fx.path("stop");
    let workers: Vec<_> = (0..2).map(|id| worker(&fx, &name, id, &stop, None)).collect();
    let started = Instant::now();
    let producing: Vec<Proc> = (0..2).map(|id| fx.spawn_mpsc_producer(PRODUCER, &name, id, per, None)).collect();
    for p in &producing {
        fx.wait(p, Duration::from_secs(300)).assert_success();
    }
    std::fs::write(&stop, b"").expect("stop file");
    for (w, _) in &workers {
        fx.wait(w, Duration::from_secs(300)).assert_success();
    }
    let outputs: Vec<_> = workers.iter().map(|(_, out)| read_out(out)).collect();
    let (evidence, redelivered) = compare(2, per, &outputs);
    eprintln!(
        "{} records from 2 producers to 2 workers ({} and {}) in {:?}",
        2 * per,
        outputs[0].len(),
        outputs[1].len(),
        started.elapsed()
    );
    assert!(evidence.exact(), "{evidence:?}");
    assert_eq!((evidence.delivered, redelivered), (2 * per, 0));
    let stats = segment.stats();
    assert_eq!((stats.total_produced, stats.total_consumed), (2 * per, 2 * per));
}

#[test]
fn a_worker_killed_holding_a_record_has_it_handed_to_the_other_worker() {
    let fx = Fixture::new("mpmc-kill");
    let (segment, name) = fx.create_posix_ring(RingKind::Mpmc, 64 * 1024);
    let (per, hold_at) = (50_000, 1_000);
    let stop = fx.path("stop");
    let (victim, victim_out) = worker(&fx, &name, 0, &stop, Some(hold_at));
    let producing: Vec<Proc> = (0..2).map(|id| fx.spawn_mpsc_producer(PRODUCER, &name, id, per, None)).collect();
    wait_until(Duration::from_secs(60), "worker 0 holds a record", || fx.stdout_so_far(&victim).contains("holding="));
    let held = fx.stdout_so_far(&victim);
    fx.kill(&victim);
    let (survivor, survivor_out) = worker(&fx, &name, 1, &stop, None);
    let produced: Vec<_> = producing.iter().map(|p| fx.wait(p, Duration::from_secs(120))).collect();
    std::fs::write(&stop, b"").expect("stop file");
    let done = fx.wait(&survivor, Duration::from_secs(120));
    let pass = done.status.success() && produced.iter().all(|p| p.status.success());
    let outputs = vec![read_out(&victim_out), read_out(&survivor_out)];
    let (evidence, redelivered) = compare(2, per, &outputs);
    let handed: Vec<_> = outputs[1].iter().filter(|r| r.2).map(|&(k, s, _)| format!("{k}:{s}")).collect();
    let counted = segment.mpmc_status().map_or(0, |s| s.workers.iter().map(|w| w.row.redelivered).sum::<u64>());
    let exact_handover = handed.len() == 1 && held.contains(&format!("holding={}", handed[0])) && counted == 1;
    shmring_tests::reliability::report(
        "mpmc_worker_killed_holding_a_record",
        "SIGKILL an mpmc worker holding an unacknowledged record while producers stream",
        1,
        if pass && exact_handover && evidence.exact() { "pass" } else { "fail" },
        &Figures::Counted(evidence.clone()),
        json!({
            "redelivered": redelivered,
            "note": "the held record goes to the other worker once, flagged redelivered: an expected, counted duplicate at most (the killed worker never wrote it down), not in `duplicated`"
        }),
    );
    for p in &produced {
        p.assert_success();
    }
    done.assert_success();
    assert!(evidence.exact(), "{evidence:?}");
    assert_eq!(handed.len(), 1, "exactly one record handed over: {handed:?}");
    assert!(held.contains(&format!("holding={}", handed[0])), "the held one: {held} vs {handed:?}");
    assert_eq!(counted, 1, "the ring counts the hand-over");
    let status = segment.mpmc_status().expect("an mpmc ring");
    let dead = status.workers.iter().find(|w| w.row.id == 0).expect("worker 0 has a row");
    assert_eq!(dead.liveness, Liveness::Dead);
}

//! `broadcast-peer`: the producer or one named consumer of a broadcast ring in its own
//! process, for the integration tests.
//!
//! ```text
//! broadcast-peer produce <posix-name> --total N
//! broadcast-peer consume <posix-name> --as NAME --total N [--ledger PATH] [--timeout-ms MS]
//! ```
//!
//! `produce` publishes records `0..N`: each is `seq: u64 LE` then `seq % 41` filler bytes
//! equal to `seq as u8`, waiting for space as long as needed (the ring is held back only by
//! live consumers); prints `produced=N dead_passes=D`.
//!
//! `consume` attaches as consumer `NAME` (joining at the newest record, or resuming that
//! name's cursor), prints `attached next=SEQ`, then reads until it has accounted for every
//! record below `N` (delivered or told missed). It checks each record: whole, its payload's
//! sequence number equal to the ring's, and exactly the next one expected after the
//! records it was told it missed. With `--ledger PATH` it appends `SEQ MISSED_BEFORE` to
//! the file for each record before asking for the next one (which releases it), and at
//! the end `end NEXT`: a sink that, restarted, skips the one record it may be handed again
//! (the last in its ledger). If that record was overwritten while it was dead it is not
//! handed again but counted missed by the ring (never released, so never delivered), and
//! the first record after the restart reports it among the missed: the ledger then holds
//! it as accepted and inside a later line's missed range. Prints `delivered=D missed=M laps=L`.
//!
//! Exit codes: 0 success; 64 usage; 65 the stream is wrong; 69 nothing arrived within the
//! timeout (default 30 s of silence); 74 any other failure.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use shm_core::ReadError;
use shmring_tests::peer::{self, DATA, IO, Outcome, UNAVAILABLE, number, open, option, required, required_number};

fn main() -> ExitCode {
    peer::main("broadcast-peer", &[("produce", produce), ("consume", consume)])
}

/// The payload of record `seq`.
fn record(seq: u64) -> Vec<u8> {
    let mut r = seq.to_le_bytes().to_vec();
    r.resize(8 + (seq % 41) as usize, seq as u8);
    r
}

fn produce(args: &[String]) -> Outcome {
    let segment = open(args)?;
    let total = required_number(args, "--total")?;
    let mut producer = segment.broadcast_producer().map_err(|e| (IO, e.to_string()))?;
    for seq in producer.records()..total {
        producer.publish(&record(seq), Some(Duration::from_secs(60))).map_err(|e| (UNAVAILABLE, e.to_string()))?;
    }
    Ok(format!("produced={total} dead_passes={}", producer.dead_passes()))
}

/// The last sequence number in a ledger written by an earlier run, if any.
fn last_in_ledger(path: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().rev().find_map(|l| l.split_whitespace().next()?.parse().ok())
}

fn consume(args: &[String]) -> Outcome {
    let segment = open(args)?;
    let name = required(args, "--as")?;
    let total = required_number(args, "--total")?;
    let silence = Duration::from_millis(number(args, "--timeout-ms")?.unwrap_or(30_000));
    let ledger_path = option(args, "--ledger");
    let already = ledger_path.and_then(last_in_ledger);
    let mut ledger = match ledger_path {
        Some(path) => {
            Some(std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| (IO, e.to_string()))?)
        }
        None => None,
    };
    let mut consumer = segment.broadcast_consumer(name).map_err(|e| (IO, e.to_string()))?;
    println!("attached next={}", consumer.next_seq());
    let _ = std::io::stdout().flush();
    let (mut delivered, mut missed) = (0u64, 0u64);
    let mut last: Option<u64> = None;
    while consumer.next_seq() < total {
        let r = match consumer.read(Some(silence)) {
            Ok(r) => r,
            Err(ReadError::TimedOut(_)) => {
                return Err((UNAVAILABLE, format!("nothing for {silence:?}; next {}", consumer.next_seq())));
            }
            Err(e) => return Err((DATA, e.to_string())),
        };
        let seq = r.seq;
        if r.data != record(seq) {
            return Err((DATA, format!("record {seq}: payload is not record {seq} ({} bytes)", r.data.len())));
        }
        if let Some(last) = last
            && seq != last + 1 + r.missed
        {
            return Err((DATA, format!("record {seq} after {last} with {} reported missed", r.missed)));
        }
        last = Some(seq);
        missed += r.missed;
        if already.is_some_and(|a| seq <= a) {
            continue; // handed again after a restart: the sink has it
        }
        delivered += 1;
        if let Some(file) = ledger.as_mut() {
            // One write per line (O_APPEND), so a kill never leaves half a line.
            file.write_all(format!("{seq} {}\n", r.missed).as_bytes()).map_err(|e| (IO, e.to_string()))?;
        }
    }
    consumer.release();
    if let Some(file) = ledger.as_mut() {
        file.write_all(format!("end {}\n", consumer.next_seq()).as_bytes()).map_err(|e| (IO, e.to_string()))?;
    }
    let tallies = consumer.tallies();
    Ok(format!(
        "delivered={delivered} missed={missed} laps={} total_delivered={} total_missed={}",
        consumer.laps(),
        tallies.delivered,
        tallies.missed
    ))
}

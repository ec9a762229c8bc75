//! `mpsc-peer`: one producer or the consumer of an mpsc ring in its own process, for the
//! integration tests.
//!
//! ```text
//! mpsc-peer produce <posix-name> --id K --total N [--hang-at SEQ --go PATH]
//! mpsc-peer consume <posix-name> --expect K:N[,K:N...] [--timeout-ms MS]
//! ```
//!
//! `produce` publishes records `0..N` as producer `K`: each is `seq: u64 LE`, `K: u64 LE`,
//! then `seq % 41` filler bytes equal to `(seq + K) as u8`. With `--hang-at SEQ` it claims
//! record `SEQ`, half-writes it, prints `claimed=SEQ` and waits (without committing) until
//! the file `PATH` exists, then commits it and carries on: a test kills it (a hole whose
//! owner dies) or stops it (an owner alive but stopped) at exactly that point.
//!
//! `consume` reads until it has seen exactly `N` records of each `K` listed, checking that
//! each producer's records arrive whole and in sequence (0, 1, 2, ...) with nothing
//! duplicated, lost in the middle or torn; then prints
//! `records=... unblocked=... unblocked_K=...` for the listed producers. A record of a
//! producer past its expected count is a failure too.
//!
//! Exit codes: 0 success; 64 usage; 65 the stream is wrong; 69 nothing arrived within the
//! timeout (default 30 s of silence); 74 any other failure.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use shm_core::ReadError;
use shmring_tests::peer::{
    self, DATA, Failure, IO, Outcome, UNAVAILABLE, USAGE, mpsc_record, number, open, option, required, required_number,
};

fn main() -> ExitCode {
    peer::main("mpsc-peer", &[("produce", produce), ("consume", consume)])
}

fn produce(args: &[String]) -> Outcome {
    let segment = open(args)?;
    let id = required_number(args, "--id")?;
    let total = required_number(args, "--total")?;
    let hang_at = number(args, "--hang-at")?;
    let go = option(args, "--go");
    let mut producer = segment.mpsc_producer(id as usize).map_err(|e| (IO, e.to_string()))?;
    let timeout = Some(Duration::from_secs(30));
    for seq in 0..total {
        let data = mpsc_record(seq, id);
        let mut claim = producer.claim(data.len(), timeout).map_err(|e| (UNAVAILABLE, e.to_string()))?;
        if Some(seq) == hang_at {
            claim[..8].copy_from_slice(&data[..8]);
            println!("claimed={seq}");
            let go = go.ok_or((USAGE, "--hang-at needs --go".to_owned()))?;
            while !std::path::Path::new(go).exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        claim.copy_from_slice(&data);
        claim.commit();
    }
    Ok(format!("produced={total} id={id}"))
}

fn consume(args: &[String]) -> Outcome {
    let segment = open(args)?;
    let expect: Vec<(usize, u64)> = required(args, "--expect")?
        .split(',')
        .map(|pair| {
            let (k, n) = pair.split_once(':').ok_or((USAGE, format!("--expect {pair}: want K:N")))?;
            Ok((
                k.parse().map_err(|_| (USAGE, format!("bad id {k}")))?,
                n.parse().map_err(|_| (USAGE, format!("bad count {n}")))?,
            ))
        })
        .collect::<Result<_, Failure>>()?;
    let silence = Duration::from_millis(number(args, "--timeout-ms")?.unwrap_or(30_000));
    let mut next = [0u64; 16];
    let mut wanted = [0u64; 16];
    for &(k, n) in &expect {
        *wanted.get_mut(k).ok_or((USAGE, format!("producer id {k} out of range")))? = n;
    }
    let mut consumer = segment.mpsc_consumer().map_err(|e| (IO, e.to_string()))?;
    let mut records = 0u64;
    let started = Instant::now();
    while next != wanted {
        let r = match consumer.read(Some(silence)) {
            Ok(r) => r,
            Err(ReadError::TimedOut(_)) => {
                return Err((UNAVAILABLE, format!("nothing for {silence:?}; have {next:?}, want {wanted:?}")));
            }
            Err(e) => return Err((DATA, e.to_string())),
        };
        let k = r.producer();
        let seq = next[k];
        if seq >= wanted[k] {
            return Err((DATA, format!("producer {k}: record beyond the {} expected", wanted[k])));
        }
        if *r != *mpsc_record(seq, k as u64) {
            let got = r.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
            return Err((DATA, format!("producer {k}: expected record {seq}, got seq {got:?} ({} bytes)", r.len())));
        }
        next[k] += 1;
        records += 1;
    }
    let elapsed = started.elapsed();
    let unblocked: Vec<String> =
        expect.iter().map(|&(k, _)| format!("unblocked_{k}={}", consumer.unblocked(k))).collect();
    let total: u64 = (0..16).map(|k| consumer.unblocked(k)).sum();
    Ok(format!("records={records} unblocked={total} {} elapsed_ms={}", unblocked.join(" "), elapsed.as_millis()))
}

//! `mpmc-peer`: one worker of an mpmc ring in its own process, for the integration tests
//! (the producers are `mpsc-peer produce`: an mpmc ring's producers are mpsc's).
//!
//! ```text
//! mpmc-peer work <posix-name> --id W --out PATH --stop PATH [--hold-at N]
//! ```
//!
//! Takes records until the file given by `--stop` exists and nothing came for 200 ms.
//! For each record it appends 17 bytes to `--out`: the record's producer id and sequence
//! number (`u64` LE each, from the `mpsc-peer` record layout) and `1` if it was handed
//! over from a dead worker, else `0`; then it acknowledges the record. It checks each
//! record whole against the `mpsc-peer` layout. With `--hold-at N` it flushes its output
//! after `N` records, takes record `N + 1`, prints `holding=K:SEQ` and waits forever
//! without acknowledging it: the test kills it there.
//! Prints `taken=... redelivered=...` at the end.
//!
//! Exit codes: 0 success; 64 usage; 65 a torn or foreign record; 74 any other failure.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use shm_core::ReadError;
use shmring_tests::peer::{
    self, DATA, IO, Outcome, mpsc_record, mpsc_record_header, number, open, required, required_number,
};

fn main() -> ExitCode {
    peer::main("mpmc-peer", &[("work", work)])
}

/// Checks a record against the `mpsc-peer` layout; returns `(producer, seq)`.
fn check(data: &[u8]) -> Result<(u64, u64), String> {
    let Some((seq, id)) = mpsc_record_header(data) else { return Err(format!("short record of {} bytes", data.len())) };
    if *data != *mpsc_record(seq, id) {
        return Err(format!("torn record of producer {id}, seq {seq} ({} bytes)", data.len()));
    }
    Ok((id, seq))
}

fn work(args: &[String]) -> Outcome {
    let segment = open(args)?;
    let id = required_number(args, "--id")? as usize;
    let stop = std::path::PathBuf::from(required(args, "--stop")?);
    let hold_at = number(args, "--hold-at")?;
    let out = std::fs::File::create(required(args, "--out")?).map_err(|e| (IO, e.to_string()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    let mut worker = segment.mpmc_worker(id).map_err(|e| (IO, e.to_string()))?;
    let mut count = 0u64;
    let mut idle_since: Option<Instant> = None;
    loop {
        let job = match worker.take(Some(Duration::from_millis(20))) {
            Ok(job) => job,
            Err(ReadError::TimedOut(_)) => {
                if stop.exists() && idle_since.get_or_insert_with(Instant::now).elapsed() >= Duration::from_millis(200)
                {
                    break;
                }
                continue;
            }
            Err(e) => return Err((DATA, e.to_string())),
        };
        idle_since = None;
        let (producer, seq) = check(&job).map_err(|e| (DATA, e))?;
        if producer != job.producer() as u64 {
            return Err((DATA, format!("record says producer {producer}, the frame {}", job.producer())));
        }
        if Some(count) == hold_at {
            out.flush().map_err(|e| (IO, e.to_string()))?;
            println!("holding={producer}:{seq}");
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        let mut line = [0u8; 17];
        line[..8].copy_from_slice(&producer.to_le_bytes());
        line[8..16].copy_from_slice(&seq.to_le_bytes());
        line[16] = u8::from(job.redelivered());
        out.write_all(&line).map_err(|e| (IO, e.to_string()))?;
        job.ack().map_err(|e| (DATA, e.to_string()))?;
        count += 1;
    }
    out.flush().map_err(|e| (IO, e.to_string()))?;
    Ok(format!("taken={} redelivered={}", worker.taken(), worker.redelivered()))
}

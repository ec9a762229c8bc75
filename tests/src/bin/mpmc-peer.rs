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

use shm_core::{Location, ReadError, Segment};

const USAGE: u8 = 64;
const DATA: u8 = 65;
const IO: u8 = 74;

type Outcome = Result<String, (u8, String)>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("work") => work(&args[1..]),
        _ => Err((USAGE, "usage: mpmc-peer work <posix-name> ...".to_owned())),
    };
    match outcome {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err((code, message)) => {
            eprintln!("mpmc-peer: {message}");
            ExitCode::from(code)
        }
    }
}

fn option<'a>(args: &'a [String], name: &str) -> Result<&'a str, (u8, String)> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .ok_or((USAGE, format!("{name} is required")))
}

/// Checks a record against the `mpsc-peer` layout; returns `(producer, seq)`.
fn check(data: &[u8]) -> Result<(u64, u64), String> {
    let word = |i: usize| data.get(i..i + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
    let (Some(seq), Some(id)) = (word(0), word(8)) else { return Err(format!("short record of {} bytes", data.len())) };
    let filler = (seq + id) as u8;
    if data.len() != 16 + (seq % 41) as usize || data[16..].iter().any(|&b| b != filler) {
        return Err(format!("torn record of producer {id}, seq {seq} ({} bytes)", data.len()));
    }
    Ok((id, seq))
}

fn work(args: &[String]) -> Outcome {
    let name = args.first().ok_or((USAGE, "missing segment name".to_owned()))?;
    let location = Location::posix(name).map_err(|e| (USAGE, e.to_string()))?;
    let segment = Segment::builder(location).open().map_err(|e| (IO, e.to_string()))?;
    let id: usize = option(args, "--id")?.parse().map_err(|e| (USAGE, format!("--id: {e}")))?;
    let stop = std::path::PathBuf::from(option(args, "--stop")?);
    let hold_at: Option<u64> = option(args, "--hold-at")
        .ok()
        .map(|v| v.parse())
        .transpose()
        .map_err(|e| (USAGE, format!("--hold-at: {e}")))?;
    let out = std::fs::File::create(option(args, "--out")?).map_err(|e| (IO, e.to_string()))?;
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

//! What the `mpsc-peer`, `broadcast-peer` and `mpmc-peer` binaries share: the command
//! dispatch and its one-line report, option lookup, opening the posix segment named first,
//! and the record layout `mpsc-peer` produces (which `mpmc-peer` checks).
//!
//! Each command returns an [`Outcome`]: the summary line printed on success, or an exit
//! code (sysexits) and a message printed on stderr.

use std::process::ExitCode;

use shm_core::{Location, Segment};

/// Exit code: bad command line.
pub const USAGE: u8 = 64;
/// Exit code: the stream is wrong.
pub const DATA: u8 = 65;
/// Exit code: the other side did not move within the timeout.
pub const UNAVAILABLE: u8 = 69;
/// Exit code: any other failure.
pub const IO: u8 = 74;

/// An exit code and what went wrong.
pub type Failure = (u8, String);

/// A command's summary line, or why it failed.
pub type Outcome = Result<String, Failure>;

/// A subcommand: its name and what runs it on the arguments after the name.
pub type Command = (&'static str, fn(&[String]) -> Outcome);

/// Runs the subcommand named by the first argument, prints its summary line (or
/// `binary: message` on stderr) and returns its exit code.
pub fn main(binary: &str, commands: &[Command]) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().and_then(|first| commands.iter().find(|(name, _)| name == first));
    let outcome = match command {
        Some((_, run)) => run(&args[1..]),
        None => {
            let names: Vec<&str> = commands.iter().map(|(name, _)| *name).collect();
            Err((USAGE, format!("usage: {binary} {} <posix-name> ...", names.join("|"))))
        }
    };
    match outcome {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err((code, message)) => {
            eprintln!("{binary}: {message}");
            ExitCode::from(code)
        }
    }
}

/// The value after `--name`, if given.
pub fn option<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

/// The value after `--name`, which must be given.
pub fn required<'a>(args: &'a [String], name: &str) -> Result<&'a str, Failure> {
    option(args, name).ok_or((USAGE, format!("{name} is required")))
}

/// The number after `--name`, if given.
pub fn number(args: &[String], name: &str) -> Result<Option<u64>, Failure> {
    option(args, name).map(|v| v.parse().map_err(|e| (USAGE, format!("{name} {v}: {e}")))).transpose()
}

/// The number after `--name`, which must be given.
pub fn required_number(args: &[String], name: &str) -> Result<u64, Failure> {
    number(args, name)?.ok_or((USAGE, format!("{name} is required")))
}

/// Opens the posix segment named by the first argument.
pub fn open(args: &[String]) -> Result<Segment, Failure> {
    let name = args.first().ok_or((USAGE, "missing segment name".to_owned()))?;
    let location = Location::posix(name).map_err(|e| (USAGE, e.to_string()))?;
    Segment::builder(location).open().map_err(|e| (IO, e.to_string()))
}

/// The payload `mpsc-peer` publishes as record `seq` of producer `id`: `seq: u64 LE`,
/// `id: u64 LE`, then `seq % 41` filler bytes equal to `(seq + id) as u8`.
pub fn mpsc_record(seq: u64, id: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(16 + 41);
    r.extend_from_slice(&seq.to_le_bytes());
    r.extend_from_slice(&id.to_le_bytes());
    r.resize(16 + (seq % 41) as usize, (seq + id) as u8);
    r
}

/// The `(seq, id)` an [`mpsc_record`] starts with, if it is long enough to hold them.
pub fn mpsc_record_header(data: &[u8]) -> Option<(u64, u64)> {
    let word = |i: usize| data.get(i..i + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
    Some((word(0)?, word(8)?))
}

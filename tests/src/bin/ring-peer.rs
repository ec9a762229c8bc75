//! `ring-peer`: one side of a ring in its own process, for the integration tests.
//!
//! ```text
//! ring-peer produce <backend> <name> --total N [--resume] [common options]
//! ring-peer consume <backend> <name> --total N [--resume] [common options]
//! ring-peer create  <backend> <name> [--capacity BYTES] [--mode OCTAL] [--umask OCTAL]
//! ring-peer attach  <backend> <name> --role producer|consumer
//!
//! common options: --wait spin|yield|futex|hybrid (default hybrid)
//!                 --timeout-ms MS   (longest single wait for the other side; default 20000)
//!                 --progress PATH   (an existing progress file to publish to, see shmring_tests::progress)
//!                 --stall-at SEQ    (stop for good in the middle of record SEQ)
//! ```
//!
//! `produce` writes records `0..N` of the stream in [`shmring_tests::records`] (each
//! through the API its sequence number picks); with `--resume` it starts after the last
//! record the ring committed (`Producer::last_committed`), as a restarted producer does.
//! `consume` reads and checks records until it has seen `N - 1`, alternating between
//! `Consumer::read` and `Consumer::read_batch`, and releases each record only after it
//! passed its checks; it expects the stream to start at 0, or with `--resume` at
//! whatever record the ring gives it first. `--stall-at` makes a producer stop after
//! claiming and half-writing that record, and a consumer stop while it holds that record
//! unreleased, so that a test can kill it at exactly that point.
//!
//! Each prints one `key=value` line on success. `create` creates a segment (with the
//! given umask, to show that it does not matter) and prints its mode; `attach` takes a
//! role and holds it until killed.
//!
//! Exit codes (sysexits): 0 success; 64 usage; 65 the stream is wrong (lost, duplicated,
//! reordered, torn or mistyped record); 66 no such segment; 69 role taken, or the other
//! side did not move within the timeout; 73 segment exists; 74 any other failure;
//! 78 invalid segment options.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use shm_core::{AttachError, CreateError, Location, OpenError, Segment, WaitStrategy};
use shmring_tests::Progress;
use shmring_tests::stream::{self, StreamError};

const USAGE: u8 = 64;
const DATA: u8 = 65;
const NO_INPUT: u8 = 66;
const UNAVAILABLE: u8 = 69;
const CANT_CREATE: u8 = 73;
const IO: u8 = 74;
const CONFIG: u8 = 78;

/// A failure and its exit code.
struct Failure {
    code: u8,
    message: String,
}

fn fail(code: u8, message: impl std::fmt::Display) -> Failure {
    Failure { code, message: message.to_string() }
}

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("ring-peer: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// The parsed command line.
struct Args {
    command: String,
    location: Location,
    options: HashMap<String, String>,
    resume: bool,
}

impl Args {
    fn parse(argv: Vec<String>) -> Result<Self, Failure> {
        let mut it = argv.into_iter();
        let (Some(command), Some(backend), Some(name)) = (it.next(), it.next(), it.next()) else {
            return Err(fail(USAGE, "usage: ring-peer produce|consume|create|attach <backend> <name> [options]"));
        };
        let location = Location::parse(&backend, &name).map_err(|e| fail(USAGE, e))?;
        let (mut options, mut resume) = (HashMap::new(), false);
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--resume" => resume = true,
                "--total" | "--wait" | "--timeout-ms" | "--progress" | "--stall-at" | "--capacity" | "--mode"
                | "--umask" | "--role" => {
                    let value = it.next().ok_or_else(|| fail(USAGE, format!("{arg} needs a value")))?;
                    options.insert(arg[2..].to_owned(), value);
                }
                _ => return Err(fail(USAGE, format!("unknown argument {arg:?}"))),
            }
        }
        Ok(Args { command, location, options, resume })
    }

    fn number(&self, key: &str, radix: u32) -> Result<Option<u64>, Failure> {
        self.options
            .get(key)
            .map(|v| u64::from_str_radix(v, radix).map_err(|_| fail(USAGE, format!("--{key} {v:?} is not a number"))))
            .transpose()
    }

    fn wait(&self) -> Result<WaitStrategy, Failure> {
        self.options.get("wait").map_or(Ok(WaitStrategy::Hybrid), |w| w.parse().map_err(|e| fail(USAGE, e)))
    }

    fn stream_options(&self) -> Result<stream::Options, Failure> {
        let progress = self
            .options
            .get("progress")
            .map(|p| Progress::open(p.as_ref()).map_err(|e| fail(IO, format!("progress file {p}: {e}"))))
            .transpose()?;
        Ok(stream::Options {
            total: self.number("total", 10)?.ok_or_else(|| fail(USAGE, "--total is required"))?,
            resume: self.resume,
            timeout: Some(Duration::from_millis(self.number("timeout-ms", 10)?.unwrap_or(20_000))),
            stall_at: self.number("stall-at", 10)?,
            progress,
        })
    }

    fn open(&self) -> Result<Segment, Failure> {
        Segment::builder(self.location.clone()).open().map_err(|e| match e {
            OpenError::NotFound { .. } => fail(NO_INPUT, e),
            e => fail(IO, e),
        })
    }
}

fn run(argv: Vec<String>) -> Result<String, Failure> {
    let args = Args::parse(argv)?;
    match args.command.as_str() {
        "produce" => produce(&args),
        "consume" => consume(&args),
        "create" => create(&args),
        "attach" => attach(&args),
        other => Err(fail(USAGE, format!("unknown command {other:?}"))),
    }
}

fn attach_error(e: AttachError) -> Failure {
    match e {
        AttachError::RoleTaken { .. } => fail(UNAVAILABLE, e),
        e => fail(IO, e),
    }
}

fn stream_error(e: StreamError) -> Failure {
    let code = match e {
        StreamError::Violation(_) => DATA,
        StreamError::TimedOut(_) => UNAVAILABLE,
        StreamError::Ring(_) => IO,
    };
    fail(code, e)
}

fn produce(args: &Args) -> Result<String, Failure> {
    let opts = args.stream_options()?;
    let segment = args.open()?;
    let mut producer = segment.producer_with(args.wait()?).map_err(attach_error)?;
    stream::produce(&segment, &mut producer, &opts).map_err(stream_error)
}

fn consume(args: &Args) -> Result<String, Failure> {
    let opts = args.stream_options()?;
    let segment = args.open()?;
    let mut consumer = segment.consumer_with(args.wait()?).map_err(attach_error)?;
    stream::consume(&segment, &mut consumer, &opts).map_err(stream_error)
}

fn create(args: &Args) -> Result<String, Failure> {
    if let Some(umask) = args.number("umask", 8)? {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask as libc::mode_t));
    }
    let mut builder = Segment::builder(args.location.clone());
    if let Some(capacity) = args.number("capacity", 10)? {
        builder = builder.capacity(capacity);
    }
    if let Some(mode) = args.number("mode", 8)? {
        builder = builder.mode(mode as u32);
    }
    let segment = builder.create().map_err(|e| match e {
        CreateError::Exists { .. } => fail(CANT_CREATE, e),
        CreateError::InvalidOptions { .. } => fail(CONFIG, e),
        e => fail(IO, e),
    })?;
    let info = segment.info().map_err(|e| fail(IO, e))?;
    Ok(format!("created backend={} mode={:04o} size={}", info.backend, info.mode, info.size))
}

fn attach(args: &Args) -> Result<String, Failure> {
    let segment = args.open()?;
    let role = args.options.get("role").map(String::as_str);
    // Hold the handle (and so the role) until killed.
    match role {
        Some("producer") => {
            let _producer = segment.producer().map_err(attach_error)?;
            println!("attached role=producer pid={}", std::process::id());
            stream::stall();
        }
        Some("consumer") => {
            let _consumer = segment.consumer().map_err(attach_error)?;
            println!("attached role=consumer pid={}", std::process::id());
            stream::stall();
        }
        _ => Err(fail(USAGE, "--role producer|consumer is required")),
    }
}

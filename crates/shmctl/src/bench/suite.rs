//! `shmctl bench`: shmring against pipes, Unix sockets, TCP and a minimal hand-written ring,
//! measured on this machine, with the producer and the consumer in separate processes.
//!
//! Every case forks: the parent is the consumer (throughput) or the pinger (round trips)
//! and keeps the time, the child is the producer or the echoer. With two or more CPUs
//! allowed, the parent runs on the first and the child on the second. Repetitions run every
//! case once in turn, so the drift of a shared machine hits all cases alike; ratios are
//! taken within a repetition, then the median of them. Every record carries its sequence
//! number and the receiving side checks it: a skipped, repeated or torn record fails the
//! case, and the run exits non-zero at the end.
//!
//! * [`transport`]: the transports and their two ends; [`minimal_ring`]: the baseline.
//! * [`kinds`]: the ring kinds (spsc, mpsc, broadcast, mpmc) with several producers or
//!   consumers, each in its own process.
//! * [`measure`]: throughput, round trips, idle CPU, wake-ups, memcpy.
//! * [`process`]: the fork, the shared control page, CPU pinning.
//! * [`cleanup`]: unique names, unlinked on drop and on SIGINT/SIGTERM.
//! * [`report`]: tables and JSON; [`plot`]: the SVG charts.

mod cleanup;
mod kinds;
mod measure;
mod minimal_ring;
mod plot;
mod process;
mod report;
mod transport;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use shm_core::WaitStrategy;
use shm_core::layout::{MAX_CAPACITY, MIN_CAPACITY};
use shm_core::units::{format_size, parse_size};

use crate::exit::{USAGE, refuse};
use crate::stdout::{out, outln};
use kinds::{KindRow, KindRun};
use measure::{Env, RoundTrips, Sleeper, Streamed};
use transport::Transport;

/// `shmctl bench [options]`: the transport comparison.
#[derive(Debug, Args)]
pub struct SuiteArgs {
    /// Transports to compare, comma-separated (default: all of them). `shmctl bench
    /// --transports help` lists them.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub transports: Vec<String>,
    /// Ring kind rows, comma-separated: spsc-1to1, mpsc-2to1, broadcast-1to2, mpmc-2to2,
    /// or none (default: all of them, unless --transports picks transports).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub kinds: Vec<String>,
    /// Record sizes, comma-separated, with units (e.g. 8,64,1KiB,64KiB,1MiB). At least 8
    /// bytes: a record starts with its sequence number.
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "64")]
    pub sizes: Vec<String>,
    /// How long each throughput run streams, and the most each round-trip run takes
    /// [default: 1s; --quick 50ms].
    #[arg(long, value_parser = crate::cli::parse_interval)]
    pub duration: Option<Duration>,
    /// Repetitions: every case runs once per repetition, in turn; medians are reported
    /// [default: 3; --quick 1].
    #[arg(long)]
    pub reps: Option<usize>,
    /// Round trips per latency run, after a warm-up, unless --duration runs out first
    /// [default: 10000; --quick 200].
    #[arg(long)]
    pub round_trips: Option<u64>,
    /// How long an idle consumer waits while its CPU time is measured; 0 skips the idle
    /// and wake-up measurements [default: 2s; --quick 100ms].
    #[arg(long, value_parser = parse_idle)]
    pub idle: Option<Duration>,
    /// Ring data bytes of the rings (larger when a record needs it: at least twice the record).
    #[arg(long, default_value = "16MiB")]
    pub capacity: String,
    /// Also run shmring-hybrid and minimal-ring at each of these ring sizes (e.g. 4KiB,64KiB,1GiB).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub capacities: Vec<String>,
    /// Write every figure (per repetition and medians) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write an SVG with throughput and round-trip charts to FILE.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// A smoke run of a few seconds: short runs, one repetition, few round trips.
    #[arg(long)]
    pub quick: bool,
    /// Leave the rings' pages unmapped when the clock starts, so every first touch of a
    /// page in each process is a page fault (by default both processes map every page
    /// first, as a ring is after its first lap, or from the start with `prefault`).
    #[arg(long)]
    pub cold: bool,
}

fn parse_idle(text: &str) -> Result<Duration, String> {
    if text.trim_end_matches(['s', 'm']).trim() == "0" { Ok(Duration::ZERO) } else { crate::cli::parse_interval(text) }
}

/// Why a case failed.
#[derive(Debug, Clone)]
pub struct CaseError {
    pub kind: ErrorKind,
    pub message: String,
}

/// A record skipped, repeated or torn, or anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Sequence,
    Other,
}

impl CaseError {
    /// A failure that is not a sequence error.
    pub fn other(e: impl std::fmt::Display) -> CaseError {
        CaseError { kind: ErrorKind::Other, message: e.to_string() }
    }
}

/// One measurement, repeated once per repetition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// Single-thread memcpy of records of this size.
    Memcpy { size: usize },
    /// Streaming throughput; `capacity` is the ring size asked for.
    Stream { transport: Transport, size: usize, capacity: u64 },
    /// Ping-pong of one record.
    RoundTrip { transport: Transport, size: usize },
    /// CPU used by a consumer waiting for data.
    Idle { transport: Transport },
    /// Delay from a publish to a sleeping consumer seeing it.
    WakeUp { transport: Transport },
    /// No transport: busy windows timed on a pinned CPU (`measure::busy_windows`).
    BusyWindows,
    /// A ring kind with its producers and consumers (see [`kinds`]).
    Kind { row: KindRow, size: usize },
}

impl Case {
    fn label(&self) -> String {
        let size = report::bytes;
        match *self {
            Case::Memcpy { size: s } => format!("memcpy {}", size(s)),
            Case::Stream { transport, size: s, capacity } => {
                format!("{} {} ring {} throughput", transport.name(), size(s), size(capacity as usize))
            }
            Case::RoundTrip { transport, size: s } => format!("{} {} round trip", transport.name(), size(s)),
            Case::Idle { transport } => format!("{} idle", transport.name()),
            Case::WakeUp { transport } => format!("{} wake-up", transport.name()),
            Case::BusyWindows => "no transport: busy windows".into(),
            Case::Kind { row, size: s } => format!("{} {} throughput", row.name(), size(s)),
        }
    }
}

/// What one run of a case measured.
#[derive(Debug)]
pub enum Outcome {
    /// Bytes per second.
    Memcpy(f64),
    Stream(Streamed),
    RoundTrip(report::Latency),
    /// An idle wait or a series of wake-ups.
    Sleeper(Sleeper),
    Kind(KindRun),
}

/// The run, resolved from the command line.
#[derive(Debug)]
pub struct Plan {
    pub transports: Vec<Transport>,
    pub kinds: Vec<KindRow>,
    pub sizes: Vec<usize>,
    pub duration: Duration,
    pub reps: usize,
    pub round_trips: RoundTrips,
    pub idle: Duration,
    pub wakes: usize,
    pub wake_gap: Duration,
    pub capacity: u64,
    pub capacities: Vec<u64>,
    pub quick: bool,
    pub cold: bool,
}

impl Plan {
    fn from_args(args: &SuiteArgs) -> anyhow::Result<Plan> {
        let mut transports = Vec::new();
        if args.transports.is_empty() {
            transports.extend(Transport::ALL);
        }
        for name in &args.transports {
            let t = Transport::parse(name.trim()).map_err(|e| refuse(USAGE, e))?;
            if !transports.contains(&t) {
                transports.push(t);
            }
        }
        let mut kinds = Vec::new();
        if args.kinds.is_empty() && args.transports.is_empty() {
            kinds.extend(KindRow::ALL);
        }
        for name in args.kinds.iter().map(|n| n.trim()).filter(|&n| n != "none") {
            let k = KindRow::parse(name).map_err(|e| refuse(USAGE, e))?;
            if !kinds.contains(&k) {
                kinds.push(k);
            }
        }
        let mut sizes = Vec::new();
        for text in &args.sizes {
            let size = parse_size(text)?;
            if !(8..=1 << 30).contains(&size) {
                return Err(refuse(USAGE, format!("record size {text:?} must be from 8 bytes to 1 GiB")));
            }
            sizes.push(size as usize);
        }
        sizes.sort_unstable();
        sizes.dedup();
        let capacity = parse_capacity(&args.capacity)?;
        let mut capacities = Vec::new();
        for text in &args.capacities {
            let c = parse_capacity(text)?;
            if !capacities.contains(&c) {
                capacities.push(c);
            }
        }
        let reps = args.reps.unwrap_or(if args.quick { 1 } else { 3 });
        if reps == 0 {
            return Err(refuse(USAGE, "--reps must be at least 1"));
        }
        let duration =
            args.duration.unwrap_or(if args.quick { Duration::from_millis(50) } else { Duration::from_secs(1) });
        let count = args.round_trips.unwrap_or(if args.quick { 200 } else { 10_000 });
        if count == 0 {
            return Err(refuse(USAGE, "--round-trips must be at least 1"));
        }
        Ok(Plan {
            transports,
            kinds,
            sizes,
            duration,
            reps,
            round_trips: RoundTrips { warm_up: (count / 10).min(1000), count, max_time: duration },
            idle: args.idle.unwrap_or(if args.quick { Duration::from_millis(100) } else { Duration::from_secs(2) }),
            wakes: if args.quick { 10 } else { 20 },
            wake_gap: Duration::from_millis(if args.quick { 5 } else { 20 }),
            capacity,
            capacities,
            quick: args.quick,
            cold: args.cold,
        })
    }

    /// Every case, in the order of the tables; each repetition runs them in this order.
    fn cases(&self) -> Vec<Case> {
        let mut cases = Vec::new();
        let mut add = |c: Case| {
            if !cases.contains(&c) {
                cases.push(c);
            }
        };
        for &size in &self.sizes {
            add(Case::Memcpy { size });
            for &transport in &self.transports {
                add(Case::Stream { transport, size, capacity: self.capacity });
            }
            for &capacity in &self.capacities {
                for transport in [Transport::Shmring { wait: WaitStrategy::Hybrid, batch: false }, Transport::Minimal] {
                    add(Case::Stream { transport, size, capacity });
                }
            }
            for &row in &self.kinds {
                add(Case::Kind { row, size });
            }
        }
        for &size in &self.sizes {
            for &transport in self.transports.iter().filter(|t| t.has_latency()) {
                add(Case::RoundTrip { transport, size });
            }
        }
        if self.transports.iter().any(|t| t.has_latency()) {
            add(Case::BusyWindows);
        }
        if !self.idle.is_zero() {
            let waits: Vec<WaitStrategy> = self.transports.iter().filter_map(|t| t.wait_strategy()).collect();
            let ring = |wait| Transport::Shmring { wait, batch: false };
            let pipe = Transport::Pipe { batch: false };
            for wait in [WaitStrategy::Spin, WaitStrategy::Hybrid, WaitStrategy::Futex] {
                if waits.contains(&wait) {
                    add(Case::Idle { transport: ring(wait) });
                }
            }
            if !waits.is_empty() {
                add(Case::Idle { transport: pipe });
            }
            for wait in [WaitStrategy::Futex, WaitStrategy::Hybrid] {
                if waits.contains(&wait) {
                    add(Case::WakeUp { transport: ring(wait) });
                }
            }
            if !waits.is_empty() {
                add(Case::WakeUp { transport: pipe });
            }
        }
        cases
    }
}

fn parse_capacity(text: &str) -> anyhow::Result<u64> {
    let c = parse_size(text)?;
    if !c.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&c) {
        return Err(refuse(
            USAGE,
            format!(
                "ring capacity {text:?} must be a power of two from {} to {}",
                format_size(MIN_CAPACITY),
                format_size(MAX_CAPACITY)
            ),
        ));
    }
    Ok(c)
}

/// The progress line on stderr: rewritten in place on a terminal, one line per step otherwise.
struct Progress {
    tty: bool,
    total: usize,
    done: usize,
    width: usize,
}

impl Progress {
    fn step(&mut self, what: &str) {
        self.done += 1;
        let line = format!("[{}/{}] {what} ...", self.done, self.total);
        if self.tty {
            eprint!("\r{line:<width$}", width = self.width);
            self.width = self.width.max(line.len());
        } else {
            eprintln!("{line}");
        }
    }

    fn note(&mut self, text: &str) {
        self.clear();
        eprintln!("{text}");
    }

    fn clear(&mut self) {
        if self.tty && self.width > 0 {
            eprint!("\r{:width$}\r", "", width = self.width);
            self.width = 0;
        }
    }
}

/// Runs the comparison.
pub fn run(args: &SuiteArgs) -> anyhow::Result<()> {
    if args.transports.iter().any(|t| t == "help") {
        outln!("{}", Transport::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join("\n"));
        return Ok(());
    }
    let plan = Plan::from_args(args)?;
    cleanup::install()?;
    // Counted before pinning narrows what this process may use.
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pins = process::pin_parent().context("pinning to a CPU")?;
    let machine = report::Machine::of_this(nproc, pins);
    outln!("{}", report::header(&machine, &plan));

    let scratch = cleanup::Scratch::default();
    let env = Env { pins, scratch: &scratch, cold: plan.cold };
    let cases = plan.cases();
    let mut results: Vec<Vec<Result<Outcome, CaseError>>> = cases.iter().map(|_| Vec::new()).collect();
    let mut progress =
        Progress { tty: std::io::stderr().is_terminal(), total: cases.len() * plan.reps, done: 0, width: 0 };
    for rep in 0..plan.reps {
        for (case, runs) in cases.iter().zip(&mut results) {
            progress.step(&format!("{} rep {}/{}", case.label(), rep + 1, plan.reps));
            let outcome = run_case(&env, &plan, case);
            if let Err(e) = &outcome {
                progress.note(&format!("FAILED: {} (rep {}): {}", case.label(), rep + 1, e.message));
            }
            runs.push(outcome);
        }
    }
    progress.clear();

    let report = report::Report::build(machine, &plan, &cases, &results);
    out!("{}", report.render());
    if let Some(path) = &args.json {
        let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        serde_json::to_writer_pretty(std::io::BufWriter::new(file), &report)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        plot::write(path, &report).with_context(|| format!("writing {}", path.display()))?;
    }
    if !report.failures.is_empty() {
        anyhow::bail!(
            "{} of {} runs FAILED ({} with sequence errors); first: {}",
            report.failures.len(),
            progress.total,
            report.failures.iter().filter(|f| f.kind == "sequence").count(),
            report.failures[0].message
        );
    }
    Ok(())
}

fn run_case(env: &Env, plan: &Plan, case: &Case) -> Result<Outcome, CaseError> {
    Ok(match *case {
        Case::Memcpy { size } => Outcome::Memcpy(measure::memcpy(size, plan.capacity, plan.duration)),
        Case::Stream { transport, size, capacity } => {
            Outcome::Stream(measure::stream(env, transport, size, capacity, plan.duration)?)
        }
        Case::RoundTrip { transport, size } => {
            let hist = measure::round_trips(env, transport, size, plan.capacity, plan.round_trips)?;
            Outcome::RoundTrip(report::Latency::of(&hist))
        }
        Case::BusyWindows => Outcome::RoundTrip(report::Latency::of(&measure::busy_windows(env, plan.round_trips)?)),
        Case::Idle { transport } => Outcome::Sleeper(measure::sleeper(env, transport, 1, plan.idle, plan.capacity)?),
        Case::Kind { row, size } => Outcome::Kind(kinds::run(env, row, size, plan.capacity, plan.duration)?),
        Case::WakeUp { transport } => {
            Outcome::Sleeper(measure::sleeper(env, transport, plan.wakes, plan.wake_gap, plan.capacity)?)
        }
    })
}

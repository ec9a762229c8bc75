//! `shmctl bench false-sharing`: the seed's packed-against-padded counters (seed 4.1), measured
//! on this machine.
//!
//! N workers (threads, or forked processes with `--processes`), each pinned to its own CPU when
//! there are enough, increment their own `AtomicU64` for `--duration`. In the `packed` layout the
//! counters sit side by side in one 64-byte line, so every increment takes the line away from the
//! other workers; in the `padded` layout each counter has a 128-byte block to itself (128, not 64,
//! because x86's adjacent-line prefetcher fetches lines in 128-byte pairs). The two layouts run
//! alternately, `--reps` times; the medians and the median of the per-rep ratios are reported.
//!
//! The counters always live in a `MAP_SHARED` anonymous mapping, the kind of memory shmring's
//! statistics live in; threads share it by reference, forked processes by inheritance.

use std::io::Write;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpid, getppid};
use serde::Serialize;
use shm_core::layout::{LINE, Line};
use shm_core::placement;

use super::{SharedAnon, median};
use crate::cli::parse_interval;
use crate::render::count;
use crate::stdout::outln;

/// `shmctl bench false-sharing`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  shmctl bench false-sharing\n  \
shmctl bench false-sharing --threads 4 --duration 2s --reps 9\n  \
shmctl bench false-sharing --processes --plain --json false-sharing.json")]
pub struct FalseSharingArgs {
    /// Workers incrementing counters [default: the CPUs shmctl may run on, at least 2].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// How long each case runs (`1`, `0.5`, `250ms`, `2s`).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub duration: Duration,
    /// Repetitions; each runs packed and padded once, in alternating order.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub reps: u32,
    /// Increment with a plain load and store (`store(load + 1)`) instead of `fetch_add`.
    #[arg(long)]
    pub plain: bool,
    /// Run the workers as forked processes sharing the mapping, as shmring's peers do.
    #[arg(long)]
    pub processes: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Eight counters in one 64-byte line: every worker's increment takes the line from the others.
#[repr(C, align(64))]
struct Packed([AtomicU64; 8]);

/// One counter alone in a 128-byte block (two lines, the pair x86 prefetches together): the
/// padding shmring's header gives each hot field.
type Padded = Line<AtomicU64>;

/// The start and stop words, in a block of their own so that no counter shares their line.
#[repr(C, align(128))]
struct Control {
    /// Workers that are pinned and waiting for `go`.
    ready: AtomicU32,
    /// Set once by the coordinator: start counting.
    go: AtomicU32,
    /// Set once by the coordinator: stop counting.
    stop: AtomicU32,
}

/// What one worker says about itself, written before `ready` and after `stop`.
#[repr(C)]
struct Report {
    ops: AtomicU64,
    done: AtomicU32,
    pinned: AtomicU32,
}

const _: () = assert!(size_of::<Packed>() == 64 && size_of::<Padded>() == LINE);
const _: () = assert!(size_of::<Control>() == LINE && size_of::<Report>() == 16);

/// Counters per `Packed` line.
const PER_LINE: usize = 8;
/// Increments between two looks at `stop`, so that the loop measures the counter, not the flag.
const BATCH: u32 = 64;
/// How long the coordinator waits for every worker to be ready.
const START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Packed,
    Padded,
}

#[derive(Debug, Clone, Copy)]
enum Increment {
    FetchAdd,
    Plain,
}

impl Increment {
    fn describe(self) -> &'static str {
        match self {
            Increment::FetchAdd => "fetch_add(1, Relaxed)",
            Increment::Plain => "store(load + 1, Relaxed)",
        }
    }
}

/// One case's shared memory: the counters in their layout, then [`Control`], then one
/// [`Report`] per worker.
struct Arena {
    map: SharedAnon,
    layout: Layout,
    control_offset: usize,
}

impl Arena {
    fn new(layout: Layout, workers: usize) -> Result<Arena> {
        let counters = match layout {
            Layout::Packed => workers.div_ceil(PER_LINE) * size_of::<Packed>(),
            Layout::Padded => workers * size_of::<Padded>(),
        };
        let control_offset = counters.next_multiple_of(align_of::<Control>());
        let len = control_offset + size_of::<Control>() + workers * size_of::<Report>();
        let map = SharedAnon::new(NonZeroUsize::new(len).expect("at least the control block"))
            .context("mmap of the counters")?;
        Ok(Arena { map, layout, control_offset })
    }

    fn control(&self) -> &Control {
        // SAFETY: `control_offset` is a multiple of 128 inside the page-aligned mapping, which
        // lives as long as `&self`; the block is only ever accessed through its atomics.
        unsafe { self.map.ptr().add(self.control_offset).cast::<Control>().as_ref() }
    }

    /// Worker `i`'s counter (`i` below the worker count given to [`Arena::new`]).
    fn counter(&self, i: usize) -> &AtomicU64 {
        match self.layout {
            // SAFETY: line `i / 8` is inside the counters region sized for every worker, 64-aligned
            // in the page-aligned mapping, which lives as long as `&self`; only atomics touch it.
            Layout::Packed => unsafe { &self.map.ptr().cast::<Packed>().add(i / PER_LINE).as_ref().0[i % PER_LINE] },
            // SAFETY: block `i` is inside the counters region, 128-aligned, alive as long as `&self`.
            Layout::Padded => unsafe { &self.map.ptr().cast::<Padded>().add(i).as_ref().0 },
        }
    }

    /// Worker `i`'s report.
    fn report(&self, i: usize) -> &Report {
        let offset = self.control_offset + size_of::<Control>() + i * size_of::<Report>();
        // SAFETY: report `i` lies inside the mapping (sized for every worker), 16-aligned,
        // alive as long as `&self`, accessed only through its atomics.
        unsafe { self.map.ptr().add(offset).cast::<Report>().as_ref() }
    }
}

/// The CPUs this process may run on, lowest first.
fn allowed_cpus() -> Vec<usize> {
    placement::allowed_cpus()
        .unwrap_or_else(|_| (0..std::thread::available_parallelism().map_or(1, usize::from)).collect())
}

/// One worker: pin, say ready, wait for go, increment until stop, report. Takes the atomics
/// it touches rather than the [`Arena`], whose raw pointer is not for sharing between threads.
fn work(control: &Control, counter: &AtomicU64, report: &Report, cpu: Option<usize>, increment: Increment) {
    if let Some(cpu) = cpu
        && placement::pin_current_thread(&[cpu]).is_ok()
    {
        report.pinned.store(1, Ordering::Relaxed);
    }
    // Release: the `pinned` note is written before the coordinator sees this worker ready
    // (pairs with the Acquire load of `ready` in `measure`).
    control.ready.fetch_add(1, Ordering::Release);
    // Acquire pairs with the Release store of `go` in `measure`; yielding lets the coordinator
    // run when there are more workers than CPUs.
    while control.go.load(Ordering::Acquire) == 0 {
        std::hint::spin_loop();
        std::thread::yield_now();
    }
    let ops = match increment {
        // Relaxed: each counter has one writer and nothing is published through it; the
        // ordering under test is the cache line's, not the memory model's.
        Increment::FetchAdd => count_until_stop(control, || {
            counter.fetch_add(1, Ordering::Relaxed);
        }),
        Increment::Plain => count_until_stop(control, || {
            counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }),
    };
    report.ops.store(ops, Ordering::Relaxed);
    // Release: the last increment and `ops` are visible to whoever sees `done` (pairs with the
    // Acquire load in `collect`).
    report.done.store(1, Ordering::Release);
}

/// Calls `bump` in batches until `stop` is set; returns how many times it was called.
#[inline(always)]
fn count_until_stop(control: &Control, mut bump: impl FnMut()) -> u64 {
    let mut ops = 0u64;
    // Relaxed: `stop` carries no data, only the request to end; a late look costs one batch.
    while control.stop.load(Ordering::Relaxed) == 0 {
        for _ in 0..BATCH {
            bump();
        }
        ops += u64::from(BATCH);
    }
    ops
}

/// Coordinator: waits until every worker is ready, says go, lets them run for `duration`,
/// says stop. Returns the time from go to stop.
fn measure(arena: &Arena, workers: usize, duration: Duration) -> Result<Duration> {
    let control = arena.control();
    let waiting = Instant::now();
    // Acquire pairs with each worker's Release increment of `ready`.
    while control.ready.load(Ordering::Acquire) < workers as u32 {
        if waiting.elapsed() > START_TIMEOUT {
            bail!(
                "only {} of {workers} workers started within {START_TIMEOUT:?}",
                control.ready.load(Ordering::Relaxed)
            );
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    let start = Instant::now();
    // Release pairs with the workers' Acquire loads of `go`.
    control.go.store(1, Ordering::Release);
    std::thread::sleep(duration);
    let elapsed = start.elapsed();
    control.stop.store(1, Ordering::Relaxed);
    Ok(elapsed)
}

/// Lets every worker finish, whatever state the coordinator left them in.
fn release(arena: &Arena) {
    let control = arena.control();
    control.stop.store(1, Ordering::Relaxed);
    control.go.store(1, Ordering::Release);
}

/// What one case found.
struct Outcome {
    ops_per_sec: f64,
    pinned: Vec<bool>,
}

/// After every worker has ended: checks that each counter holds exactly what its worker
/// counted, and turns the total into ops/s.
fn collect(arena: &Arena, workers: usize, elapsed: Duration) -> Result<Outcome> {
    let mut held = 0u64;
    let mut pinned = Vec::with_capacity(workers);
    for i in 0..workers {
        let report = arena.report(i);
        // Acquire pairs with the worker's Release store of `done`.
        if report.done.load(Ordering::Acquire) == 0 {
            bail!("worker {i} ended without reporting");
        }
        let ops = report.ops.load(Ordering::Relaxed);
        let value = arena.counter(i).load(Ordering::Relaxed);
        if value != ops {
            bail!("worker {i} counted {ops} increments but its counter holds {value}: increments were lost");
        }
        held += value;
        pinned.push(report.pinned.load(Ordering::Relaxed) == 1);
    }
    Ok(Outcome { ops_per_sec: held as f64 / elapsed.as_secs_f64(), pinned })
}

/// How one case runs.
struct Plan {
    workers: usize,
    cpus: Option<Vec<usize>>,
    duration: Duration,
    increment: Increment,
    processes: bool,
}

impl Plan {
    fn cpu(&self, i: usize) -> Option<usize> {
        self.cpus.as_ref().map(|c| c[i])
    }
}

fn run_case(plan: &Plan, layout: Layout) -> Result<Outcome> {
    let arena = Arena::new(layout, plan.workers)?;
    let elapsed = if plan.processes { run_processes(plan, &arena)? } else { run_threads(plan, &arena)? };
    collect(&arena, plan.workers, elapsed)
}

fn run_threads(plan: &Plan, arena: &Arena) -> Result<Duration> {
    std::thread::scope(|scope| {
        let spawned: Result<()> = (0..plan.workers).try_for_each(|i| {
            let (control, counter, report, cpu) = (arena.control(), arena.counter(i), arena.report(i), plan.cpu(i));
            std::thread::Builder::new()
                .name(format!("counter-{i}"))
                .spawn_scoped(scope, move || work(control, counter, report, cpu, plan.increment))
                .map(drop)
                .with_context(|| format!("starting thread {i}"))
        });
        let elapsed = spawned.and_then(|()| measure(arena, plan.workers, plan.duration));
        release(arena);
        elapsed // the scope joins every thread before returning
    })
}

/// Forked workers not yet reaped; dropping kills and reaps them.
struct Children(Vec<Pid>);

impl Children {
    /// Reaps every child; fails unless each exited 0.
    fn wait(mut self) -> Result<()> {
        for pid in std::mem::take(&mut self.0) {
            match waitpid(pid, None).with_context(|| format!("waitpid {pid}"))? {
                WaitStatus::Exited(_, 0) => {}
                status => bail!("worker process {pid} failed: {status:?}"),
            }
        }
        Ok(())
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

fn run_processes(plan: &Plan, arena: &Arena) -> Result<Duration> {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    let parent = getpid();
    let mut children = Children(Vec::with_capacity(plan.workers));
    for i in 0..plan.workers {
        // SAFETY: in --processes mode shmctl never starts a thread, so the child is a whole
        // copy of a single-threaded process; it runs only `work` on the inherited mapping and
        // `_exit`s, never returning into the parent's frames.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                // Die with the parent, and check it did not die before we asked.
                let orphan = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || getppid() != parent;
                if !orphan {
                    work(arena.control(), arena.counter(i), arena.report(i), plan.cpu(i), plan.increment);
                }
                // SAFETY: `_exit` is always safe to call; it skips the atexit handlers and stdio
                // buffers that belong to the parent.
                unsafe { libc::_exit(i32::from(orphan)) }
            }
            Ok(ForkResult::Parent { child }) => children.0.push(child),
            Err(e) => {
                release(arena);
                return Err(e).with_context(|| format!("fork of worker {i}"));
            }
        }
    }
    let elapsed = measure(arena, plan.workers, plan.duration);
    release(arena);
    let elapsed = elapsed?; // on failure, dropping `children` kills and reaps them
    children.wait()?;
    Ok(elapsed)
}

#[derive(Serialize)]
struct RepJson {
    packed: f64,
    padded: f64,
}

#[derive(Serialize)]
struct ReportJson<'a> {
    schema: u32,
    threads: usize,
    workers: &'a str,
    increment: &'a str,
    duration_s: f64,
    pinned: Vec<Option<usize>>,
    reps: Vec<RepJson>,
    median_packed: f64,
    median_padded: f64,
    median_ratio: f64,
}

fn print_row(label: &str, packed: f64, padded: f64, ratio: f64) -> Result<()> {
    outln!("{label:<8} {:>18} {:>18} {ratio:>14.2}", count(packed as u64), count(padded as u64));
    Ok(())
}

/// Runs the bench.
pub fn run(args: &FalseSharingArgs) -> Result<()> {
    let allowed = allowed_cpus();
    let workers = args.threads.map_or(allowed.len().max(2), usize::from);
    let increment = if args.plain { Increment::Plain } else { Increment::FetchAdd };
    let (unit, kind) = if args.processes { ("process", "processes") } else { ("thread", "threads") };
    let noun = if workers == 1 { unit } else { kind };
    let plan = Plan {
        workers,
        cpus: (allowed.len() >= workers).then(|| allowed[..workers].to_vec()),
        duration: args.duration,
        increment,
        processes: args.processes,
    };

    outln!(
        "false sharing: {workers} {noun}, each {} on its own counter, {} per case, {} rep{}",
        increment.describe(),
        humantime::format_duration(args.duration),
        args.reps,
        if args.reps == 1 { "" } else { "s" }
    );
    outln!("  packed: {PER_LINE} counters per 64-byte line; padded: one counter per 128-byte block");
    if allowed.len() < 2 {
        outln!(
            "  only 1 CPU: the comparison is meaningless on one CPU (the workers never run at once); running anyway"
        );
    } else if plan.cpus.is_none() {
        outln!(
            "  {workers} {noun} but only {} CPUs: not pinned; workers share CPUs, which hides part of the effect",
            allowed.len()
        );
    }

    let mut pinned_every_case = vec![true; workers];
    let mut reps = Vec::with_capacity(args.reps as usize);
    for rep in 0..args.reps {
        // Alternate which layout goes first, so neither always runs on a warmer machine.
        let order = if rep % 2 == 0 { [Layout::Packed, Layout::Padded] } else { [Layout::Padded, Layout::Packed] };
        let mut result = RepJson { packed: 0.0, padded: 0.0 };
        for layout in order {
            let outcome = run_case(&plan, layout).with_context(|| format!("rep {}, {layout:?}", rep + 1))?;
            for (all, now) in pinned_every_case.iter_mut().zip(&outcome.pinned) {
                *all &= now;
            }
            match layout {
                Layout::Packed => result.packed = outcome.ops_per_sec,
                Layout::Padded => result.padded = outcome.ops_per_sec,
            }
        }
        reps.push(result);
    }

    let pinned: Vec<Option<usize>> = (0..workers).map(|i| plan.cpu(i).filter(|_| pinned_every_case[i])).collect();
    if plan.cpus.is_some() {
        let list: Vec<String> = pinned
            .iter()
            .enumerate()
            .map(|(i, cpu)| cpu.map_or_else(|| format!("{unit} {i} not pinned"), |c| format!("{unit} {i} on CPU {c}")))
            .collect();
        outln!("  pinned (sched_setaffinity): {}", list.join(", "));
    }

    let packed: Vec<f64> = reps.iter().map(|r| r.packed).collect();
    let padded: Vec<f64> = reps.iter().map(|r| r.padded).collect();
    let ratios: Vec<f64> = reps.iter().map(|r| r.padded / r.packed).collect();
    let median = |values: &[f64]| median(values.iter().copied()).expect("at least one repetition");
    let (median_packed, median_padded, median_ratio) = (median(&packed), median(&padded), median(&ratios));

    outln!();
    outln!("{:<8} {:>18} {:>18} {:>14}", "rep", "packed ops/s", "padded ops/s", "padded/packed");
    for (i, r) in reps.iter().enumerate() {
        print_row(&(i + 1).to_string(), r.packed, r.padded, ratios[i])?;
    }
    print_row("median", median_packed, median_padded, median_ratio)?;
    outln!();
    let reading = if workers < 2 || allowed.len() < 2 {
        "nothing runs in parallel here, so nothing is falsely shared and any difference is noise"
    } else if median_ratio >= 1.2 {
        "counters sharing a line cost that much throughput; shmring keeps each hot field on its own 128-byte block"
    } else {
        "no false-sharing cost measured (were the workers running at the same time?)"
    };
    outln!("padded is {median_ratio:.1}x packed here: {reading}.");

    if let Some(path) = &args.json {
        let report = ReportJson {
            schema: 1,
            threads: workers,
            workers: kind,
            increment: increment.describe(),
            duration_s: args.duration.as_secs_f64(),
            pinned,
            reps,
            median_packed,
            median_padded,
            median_ratio,
        };
        let text = serde_json::to_string_pretty(&report).context("encoding the JSON report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

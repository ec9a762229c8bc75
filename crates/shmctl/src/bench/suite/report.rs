//! The results: medians over repetitions, same-repetition ratios, the tables on stdout and
//! the JSON document (`"schema": 1`, snake_case fields, every repetition's raw values).

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;
use shm_core::units::format_size;

use super::kinds::{KIND_WAIT, KindRow, KindRun};
use super::measure::{Counters, ring_capacity};
use super::process::Pins;
use super::transport::Transport;
use super::{Case, CaseError, ErrorKind, Outcome, Plan};
use crate::bench::median;

/// Sizes from which the throughput table compares with memcpy.
const LARGE: usize = 64 * 1024;

/// Round-trip statistics of one run, in ns.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub round_trips: u64,
    pub p50_ns: f64,
    pub p99_ns: f64,
    pub p999_ns: f64,
    pub max_ns: f64,
    pub mean_ns: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            round_trips: h.len(),
            p50_ns: h.value_at_quantile(0.5) as f64,
            p99_ns: h.value_at_quantile(0.99) as f64,
            p999_ns: h.value_at_quantile(0.999) as f64,
            max_ns: h.max() as f64,
            mean_ns: h.mean(),
        }
    }
}

/// What the run was on.
#[derive(Debug, Serialize)]
pub struct Machine {
    /// CPUs this process may use.
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub pinning: Option<Pins>,
    /// The pinning, in words.
    pub pinning_note: String,
}

impl Machine {
    pub fn of_this(nproc: usize, pinning: Option<Pins>) -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = nix::sys::utsname::uname()
            .map(|u| format!("{} {}", u.sysname().to_string_lossy(), u.release().to_string_lossy()))
            .unwrap_or_else(|_| "unknown".into());
        let pinning_note = match pinning {
            Some(p) => format!(
                "parent (consumer, pinger) on CPU {}, child (producer, echoer) on CPU {}, by sched_setaffinity",
                p.parent_cpu, p.child_cpu
            ),
            None => "none: fewer than 2 CPUs allowed, both processes share one".into(),
        };
        Machine { nproc, cpu_model, kernel, pinning, pinning_note }
    }
}

/// The header printed before the run.
pub fn header(m: &Machine, plan: &Plan) -> String {
    let sizes: Vec<String> = plan.sizes.iter().map(|&s| format_size(s as u64)).collect();
    let mut o = String::new();
    let _ = writeln!(o, "shmctl bench: nproc {}, {}, {}", m.nproc, m.cpu_model, m.kernel);
    let _ = writeln!(o, "pinning: {}", m.pinning_note);
    let _ = writeln!(
        o,
        "plan: {} transports, {} ring kind rows, records of {}; {} per throughput run; {} repetition(s), every case once per \
         repetition in turn; rings of {} (more for large records), {}; pipe and socket buffers: kernel defaults",
        plan.transports.len(),
        plan.kinds.len(),
        sizes.join(", "),
        seconds(plan.duration.as_secs_f64()),
        plan.reps,
        format_size(plan.capacity),
        if plan.cold {
            "cold (--cold: each first touch of a page is a page fault)"
        } else {
            "every page mapped in both processes first (--cold to leave them)"
        },
    );
    let rt = plan.round_trips;
    let _ = write!(
        o,
        "round trips: {} (+{} warm-up) or {} per run, whichever ends first",
        rt.count,
        rt.warm_up,
        seconds(rt.max_time.as_secs_f64())
    );
    if !plan.idle.is_zero() {
        let _ = write!(
            o,
            "; idle: {} per run; wake-ups: {}, {} apart",
            seconds(plan.idle.as_secs_f64()),
            plan.wakes,
            seconds(plan.wake_gap.as_secs_f64())
        );
    }
    if !plan.capacities.is_empty() {
        let caps: Vec<String> = plan.capacities.iter().map(|&c| format_size(c)).collect();
        let _ = write!(o, "; shmring-hybrid and minimal-ring also at rings of {}", caps.join(", "));
    }
    o.push('\n');
    o
}

/// What `--plan` resolved to, as JSON records it.
#[derive(Debug, Serialize)]
pub struct Settings {
    pub transports: Vec<String>,
    /// Ring kind rows (`--kinds`).
    pub kinds: Vec<String>,
    pub sizes: Vec<usize>,
    pub duration_s: f64,
    pub reps: usize,
    pub round_trips: u64,
    pub warm_up_round_trips: u64,
    pub idle_s: f64,
    pub wake_ups: usize,
    pub wake_gap_s: f64,
    pub capacity: u64,
    pub capacities: Vec<u64>,
    pub quick: bool,
    /// `--cold`: the rings' pages were not mapped before the clock started.
    pub cold: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: u32,
    pub machine: Machine,
    pub settings: Settings,
    pub memcpy: Vec<MemcpyRow>,
    pub throughput: Vec<ThroughputRow>,
    /// The ring kinds side by side (`kinds`), one record per call.
    pub kinds: Vec<KindsRow>,
    pub latency: Vec<LatencyRow>,
    /// No transport: busy windows timed on a pinned CPU, the machine's own tail
    /// (`measure::busy_windows`); `transport` names the window.
    pub busy_windows: Option<LatencyRow>,
    pub idle: Vec<IdleRow>,
    pub wake_up: Vec<WakeUpRow>,
    pub failures: Vec<Failure>,
}

#[derive(Debug, Serialize)]
pub struct MemcpyRow {
    pub size: usize,
    pub reps_mb_per_s: Vec<f64>,
    pub median_mb_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct ThroughputRow {
    pub transport: String,
    pub size: usize,
    /// The ring size asked for (`--capacity` or one of `--capacities`).
    pub capacity: u64,
    /// The ring size used: `capacity`, or more for a large record.
    pub ring_bytes: u64,
    pub reps: Vec<ThroughputRep>,
    pub median_records_per_s: f64,
    pub median_mb_per_s: f64,
    pub ratio_minimal_ring: Option<f64>,
    pub ratio_unix_stream_batch: Option<f64>,
    pub ratio_memcpy: Option<f64>,
    /// Futex sleeps + wakes the ring counted per run (median), shmring only.
    pub median_ring_syscalls: Option<f64>,
    pub sequence_errors: usize,
    pub failed: bool,
}

#[derive(Debug, Serialize)]
pub struct ThroughputRep {
    pub records: u64,
    pub seconds: f64,
    pub records_per_s: f64,
    pub mb_per_s: f64,
    pub ratio_minimal_ring: Option<f64>,
    pub ratio_unix_stream_batch: Option<f64>,
    pub ratio_memcpy: Option<f64>,
    pub counters: Option<Counters>,
    pub error: Option<String>,
}

/// A ring kind's row: its producers and consumers, its wait, the median rates and the
/// medians of the same-repetition ratios to spsc 1->1.
#[derive(Debug, Serialize)]
pub struct KindsRow {
    /// `mpsc-2to1`.
    pub row: String,
    pub kind: &'static str,
    pub producers: usize,
    pub consumers: usize,
    pub size: usize,
    /// The wait strategy of every handle, and why (`hybrid: 4 processes on 2 CPU(s)`).
    pub wait: String,
    pub reps: Vec<KindRep>,
    /// Distinct records through the ring per second (median).
    pub median_records_per_s: f64,
    /// Records handed to consumers per second, summed over them (median).
    pub median_deliveries_per_s: f64,
    /// Median of the same-repetition ratios of records/s to spsc 1->1's.
    pub ratio_spsc: Option<f64>,
    /// The same for deliveries/s.
    pub ratio_spsc_deliveries: Option<f64>,
    pub sequence_errors: usize,
    pub failed: bool,
}

#[derive(Debug, Serialize)]
pub struct KindRep {
    pub run: Option<KindRun>,
    pub ratio_spsc: Option<f64>,
    pub ratio_spsc_deliveries: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct LatencyRow {
    pub transport: String,
    pub size: usize,
    pub reps: Vec<Option<Latency>>,
    /// Each statistic's median over the repetitions.
    pub median: Option<Latency>,
    pub sequence_errors: usize,
    pub failed: bool,
}

#[derive(Debug, Serialize)]
pub struct IdleRow {
    pub transport: String,
    pub reps_cpu_percent: Vec<Option<f64>>,
    pub reps_cpu_s: Vec<Option<f64>>,
    pub reps_wall_s: Vec<Option<f64>>,
    pub median_cpu_percent: Option<f64>,
    pub failed: bool,
}

#[derive(Debug, Serialize)]
pub struct WakeUpRow {
    pub transport: String,
    /// Every wake-up's delay in ns, per repetition.
    pub reps_ns: Vec<Vec<u64>>,
    /// Median over the repetitions of each repetition's median, and of its maximum.
    pub median_ns: Option<f64>,
    pub max_ns: Option<f64>,
    pub failed: bool,
}

#[derive(Debug, Serialize)]
pub struct Failure {
    pub case: String,
    pub rep: usize,
    /// `sequence` (a record skipped, repeated or torn) or `other`.
    pub kind: &'static str,
    pub message: String,
}

type Runs = Vec<Result<Outcome, CaseError>>;

/// A round-trip table row: each statistic's median over the repetitions that ran.
fn latency_row(transport: String, size: usize, runs: &Runs, sequence_errors: usize, failed: bool) -> LatencyRow {
    let reps: Vec<Option<Latency>> = runs
        .iter()
        .map(|r| match r {
            Ok(Outcome::RoundTrip(l)) => Some(*l),
            _ => None,
        })
        .collect();
    let ok: Vec<Latency> = reps.iter().flatten().copied().collect();
    let stat = |f: fn(&Latency) -> f64| median(ok.iter().map(f)).unwrap_or(0.0);
    let median = (!ok.is_empty()).then(|| Latency {
        round_trips: stat(|l| l.round_trips as f64) as u64,
        p50_ns: stat(|l| l.p50_ns),
        p99_ns: stat(|l| l.p99_ns),
        p999_ns: stat(|l| l.p999_ns),
        max_ns: stat(|l| l.max_ns),
        mean_ns: stat(|l| l.mean_ns),
    });
    LatencyRow { transport, size, reps, median, sequence_errors, failed }
}

impl Report {
    pub fn build(machine: Machine, plan: &Plan, cases: &[Case], results: &[Runs]) -> Report {
        let find = |want: Case| cases.iter().position(|&c| c == want).map(|i| &results[i]);
        let stream_rate = |runs: Option<&Runs>, rep: usize| match runs.and_then(|r| r.get(rep)) {
            Some(Ok(Outcome::Stream(s))) => Some(s.records as f64 / s.seconds),
            _ => None,
        };
        let memcpy_rate = |size: usize, rep: usize| match find(Case::Memcpy { size }).and_then(|r| r.get(rep)) {
            Some(Ok(Outcome::Memcpy(b))) => Some(*b),
            _ => None,
        };
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
        let kind_run = |runs: Option<&Runs>, rep: usize| match runs.and_then(|r| r.get(rep)) {
            Some(Ok(Outcome::Kind(k))) => Some(k.clone()),
            _ => None,
        };

        let mut report = Report {
            schema: 1,
            machine,
            settings: Settings {
                transports: plan.transports.iter().map(|t| t.name()).collect(),
                kinds: plan.kinds.iter().map(|k| k.name()).collect(),
                sizes: plan.sizes.clone(),
                duration_s: plan.duration.as_secs_f64(),
                reps: plan.reps,
                round_trips: plan.round_trips.count,
                warm_up_round_trips: plan.round_trips.warm_up,
                idle_s: plan.idle.as_secs_f64(),
                wake_ups: plan.wakes,
                wake_gap_s: plan.wake_gap.as_secs_f64(),
                capacity: plan.capacity,
                capacities: plan.capacities.clone(),
                quick: plan.quick,
                cold: plan.cold,
            },
            memcpy: Vec::new(),
            throughput: Vec::new(),
            kinds: Vec::new(),
            latency: Vec::new(),
            busy_windows: None,
            idle: Vec::new(),
            wake_up: Vec::new(),
            failures: Vec::new(),
        };
        for (case, runs) in cases.iter().zip(results) {
            for (rep, run) in runs.iter().enumerate() {
                if let Err(e) = run {
                    report.failures.push(Failure {
                        case: case.label(),
                        rep: rep + 1,
                        kind: if e.kind == ErrorKind::Sequence { "sequence" } else { "other" },
                        message: e.message.clone(),
                    });
                }
            }
            let failed = runs.iter().any(Result::is_err);
            let sequence_errors = runs.iter().filter(|r| matches!(r, Err(e) if e.kind == ErrorKind::Sequence)).count();
            match *case {
                Case::Memcpy { size } => {
                    let reps: Vec<f64> =
                        (0..runs.len()).filter_map(|r| memcpy_rate(size, r)).map(|b| b / 1e6).collect();
                    let median_mb_per_s = median(reps.iter().copied()).unwrap_or(0.0);
                    report.memcpy.push(MemcpyRow { size, reps_mb_per_s: reps, median_mb_per_s });
                }
                Case::Stream { transport, size, capacity } => {
                    let base = find(Case::Stream { transport: Transport::BASELINE, size, capacity });
                    let batch_base = transport
                        .is_batched()
                        .then(|| {
                            find(Case::Stream { transport: Transport::BATCH_BASELINE, size, capacity: plan.capacity })
                        })
                        .flatten();
                    let reps: Vec<ThroughputRep> = runs
                        .iter()
                        .enumerate()
                        .map(|(rep, run)| {
                            let rate = stream_rate(Some(runs), rep);
                            let mb = rate.map(|r| r * size as f64 / 1e6);
                            let (records, seconds, counters) = match run {
                                Ok(Outcome::Stream(s)) => (s.records, s.seconds, s.counters),
                                _ => (0, 0.0, None),
                            };
                            ThroughputRep {
                                records,
                                seconds,
                                records_per_s: rate.unwrap_or(0.0),
                                mb_per_s: mb.unwrap_or(0.0),
                                ratio_minimal_ring: ratio(rate, stream_rate(base, rep)),
                                ratio_unix_stream_batch: ratio(rate, stream_rate(batch_base, rep)),
                                ratio_memcpy: (size >= LARGE)
                                    .then(|| ratio(mb.map(|m| m * 1e6), memcpy_rate(size, rep)))
                                    .flatten(),
                                counters,
                                error: run.as_ref().err().map(|e| e.message.clone()),
                            }
                        })
                        .collect();
                    let ok = || reps.iter().filter(|r| r.error.is_none());
                    report.throughput.push(ThroughputRow {
                        transport: transport.name(),
                        size,
                        capacity,
                        ring_bytes: ring_capacity(size, capacity),
                        median_records_per_s: median(ok().map(|r| r.records_per_s)).unwrap_or(0.0),
                        median_mb_per_s: median(ok().map(|r| r.mb_per_s)).unwrap_or(0.0),
                        ratio_minimal_ring: median(reps.iter().filter_map(|r| r.ratio_minimal_ring)),
                        ratio_unix_stream_batch: median(reps.iter().filter_map(|r| r.ratio_unix_stream_batch)),
                        ratio_memcpy: median(reps.iter().filter_map(|r| r.ratio_memcpy)),
                        median_ring_syscalls: median(ok().filter_map(|r| r.counters).map(|c| c.syscalls() as f64)),
                        reps,
                        sequence_errors,
                        failed,
                    });
                }
                Case::Kind { row, size } => {
                    let base = find(Case::Kind { row: KindRow::BASELINE, size });
                    let reps: Vec<KindRep> = (0..runs.len())
                        .map(|rep| {
                            let run = kind_run(Some(runs), rep);
                            let spsc = kind_run(base, rep);
                            let rate = |r: &Option<KindRun>, f: fn(&KindRun) -> f64| r.as_ref().map(f);
                            KindRep {
                                ratio_spsc: ratio(rate(&run, |k| k.records_per_s), rate(&spsc, |k| k.records_per_s)),
                                ratio_spsc_deliveries: ratio(
                                    rate(&run, |k| k.deliveries_per_s),
                                    rate(&spsc, |k| k.deliveries_per_s),
                                ),
                                error: runs[rep].as_ref().err().map(|e| e.message.clone()),
                                run,
                            }
                        })
                        .collect();
                    let ok = || reps.iter().filter_map(|r| r.run.as_ref());
                    report.kinds.push(KindsRow {
                        row: row.name(),
                        kind: row.kind().name(),
                        producers: row.producers(),
                        consumers: row.consumers(),
                        size,
                        // Pinned, every process runs on one of two CPUs; unpinned, on any.
                        wait: row.wait_note(if report.machine.pinning.is_some() { 2 } else { report.machine.nproc }),
                        median_records_per_s: median(ok().map(|k| k.records_per_s)).unwrap_or(0.0),
                        median_deliveries_per_s: median(ok().map(|k| k.deliveries_per_s)).unwrap_or(0.0),
                        ratio_spsc: median(reps.iter().filter_map(|r| r.ratio_spsc)),
                        ratio_spsc_deliveries: median(reps.iter().filter_map(|r| r.ratio_spsc_deliveries)),
                        reps,
                        sequence_errors,
                        failed,
                    });
                }
                Case::RoundTrip { transport, size } => {
                    report.latency.push(latency_row(transport.name(), size, runs, sequence_errors, failed));
                }
                Case::BusyWindows => {
                    let name = format!("busy-{}ns", super::measure::BUSY_WINDOW.as_nanos());
                    report.busy_windows = Some(latency_row(name, 0, runs, sequence_errors, failed));
                }
                Case::Idle { transport } => {
                    let get = |f: fn(&super::measure::Sleeper) -> f64| -> Vec<Option<f64>> {
                        runs.iter()
                            .map(|r| match r {
                                Ok(Outcome::Sleeper(i)) => Some(f(i)),
                                _ => None,
                            })
                            .collect()
                    };
                    let percent = get(|i| 100.0 * i.cpu_seconds / i.wall_seconds);
                    report.idle.push(IdleRow {
                        transport: transport.name(),
                        median_cpu_percent: median(percent.iter().flatten().copied()),
                        reps_cpu_percent: percent,
                        reps_cpu_s: get(|i| i.cpu_seconds),
                        reps_wall_s: get(|i| i.wall_seconds),
                        failed,
                    });
                }
                Case::WakeUp { transport } => {
                    let reps_ns: Vec<Vec<u64>> = runs
                        .iter()
                        .map(|r| match r {
                            Ok(Outcome::Sleeper(s)) => s.delays_ns.clone(),
                            _ => Vec::new(),
                        })
                        .collect();
                    let per_rep = |f: fn(&[u64]) -> Option<f64>| median(reps_ns.iter().filter_map(|v| f(v)));
                    report.wake_up.push(WakeUpRow {
                        transport: transport.name(),
                        median_ns: per_rep(|v| median(v.iter().map(|&x| x as f64))),
                        max_ns: per_rep(|v| v.iter().max().map(|&x| x as f64)),
                        reps_ns,
                        failed,
                    });
                }
            }
        }
        report
    }

    /// The tables.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let reps = self.settings.reps;
        let multi_cap = !self.settings.capacities.is_empty();
        let large = self.settings.sizes.iter().any(|&s| s >= LARGE);
        if !self.throughput.is_empty() {
            let _ = writeln!(
                o,
                "## Throughput: {} per run, median of {reps} run(s); ratios are medians of same-repetition ratios\n",
                seconds(self.settings.duration_s)
            );
            let mut head = vec!["transport", "size"];
            if multi_cap {
                head.push("ring");
            }
            head.extend(["Mrec/s", "MB/s", "x minimal-ring", "x unix-stream-batch"]);
            if large {
                head.push("x memcpy");
            }
            head.push("ring syscalls/run");
            let mut rows = Vec::new();
            let row_of_memcpy = |size: usize, rows: &mut Vec<Vec<String>>| {
                if let Some(m) = self.memcpy.iter().find(|m| m.size == size) {
                    let mut r = vec!["memcpy".into(), bytes(size)];
                    if multi_cap {
                        r.push("-".into());
                    }
                    r.extend([
                        significant(m.median_mb_per_s / size as f64),
                        fixed(m.median_mb_per_s, 0),
                        "-".into(),
                        "-".into(),
                    ]);
                    if large {
                        r.push(if size >= LARGE { "1.00".into() } else { "-".into() });
                    }
                    r.push("-".into());
                    rows.push(r);
                }
            };
            let mut last_size = None;
            for t in &self.throughput {
                if last_size != Some(t.size) {
                    row_of_memcpy(t.size, &mut rows);
                    last_size = Some(t.size);
                }
                let mut r = vec![t.transport.clone(), bytes(t.size)];
                if multi_cap {
                    r.push(format_size(t.ring_bytes));
                }
                if t.failed && t.reps.iter().all(|r| r.error.is_some()) {
                    r.push("FAILED".into());
                    r.resize(head.len(), "-".into());
                } else {
                    r.extend([
                        significant(t.median_records_per_s / 1e6),
                        fixed(t.median_mb_per_s, 0),
                        opt(t.ratio_minimal_ring),
                        opt(t.ratio_unix_stream_batch),
                    ]);
                    if large {
                        r.push(opt(t.ratio_memcpy));
                    }
                    r.push(t.median_ring_syscalls.map_or("-".into(), |s| fixed(s, 0)));
                    if t.failed {
                        r[0].push_str(" (FAILED in some runs)");
                    }
                }
                rows.push(r);
            }
            o.push_str(&table(&head, &rows));
            let counted: Vec<&ThroughputRow> =
                self.throughput.iter().filter(|t| t.reps.iter().any(|r| r.counters.is_some())).collect();
            if !counted.is_empty() {
                let _ = writeln!(o, "\n## shmring counters, summed over the runs (Segment::stats())\n");
                let rows: Vec<Vec<String>> = counted
                    .iter()
                    .map(|t| {
                        let sum = |f: fn(&Counters) -> u64| {
                            crate::render::count(t.reps.iter().filter_map(|r| r.counters.as_ref()).map(f).sum())
                        };
                        vec![
                            t.transport.clone(),
                            bytes(t.size),
                            sum(|c| c.total_consumed),
                            sum(|c| c.producer_blocks),
                            sum(|c| c.consumer_blocks),
                            sum(|c| c.producer_sleeps),
                            sum(|c| c.consumer_sleeps),
                            sum(|c| c.producer_wakes),
                            sum(|c| c.consumer_wakes),
                            sum(|c| c.missed_wakes),
                        ]
                    })
                    .collect();
                o.push_str(&table(
                    &[
                        "transport",
                        "size",
                        "records",
                        "producer blocks",
                        "consumer blocks",
                        "producer sleeps",
                        "consumer sleeps",
                        "producer wakes",
                        "consumer wakes",
                        "missed wakes",
                    ],
                    &rows,
                ));
            }
        }
        if !self.kinds.is_empty() {
            let _ = writeln!(
                o,
                "\n## Ring kinds: one record per call, {} per run, median of {reps} run(s); every handle waits {} \
                 (more processes than CPUs cannot all spin); x spsc: medians of same-repetition ratios to spsc-1to1\n",
                seconds(self.settings.duration_s),
                KIND_WAIT.name()
            );
            let rows: Vec<Vec<String>> = self
                .kinds
                .iter()
                .map(|k| {
                    let mut r = vec![k.row.clone(), bytes(k.size), k.wait.clone()];
                    if k.failed && k.reps.iter().all(|r| r.run.is_none()) {
                        r.push("FAILED".into());
                        r.resize(7, "-".into());
                    } else {
                        r.extend([
                            significant(k.median_records_per_s / 1e6),
                            opt(k.ratio_spsc),
                            significant(k.median_deliveries_per_s / 1e6),
                            opt(k.ratio_spsc_deliveries),
                        ]);
                        if k.failed {
                            r[0].push_str(" (FAILED in some runs)");
                        }
                    }
                    r
                })
                .collect();
            o.push_str(&table(
                &["ring kind", "size", "wait", "Mrec/s", "x spsc", "Mdeliveries/s", "x spsc deliveries"],
                &rows,
            ));
            let _ = writeln!(
                o,
                "\nMrec/s: distinct records through the ring (broadcast: each consumer reads all of them; mpmc: \
                 the workers share them); Mdeliveries/s: records handed to consumers, summed over them. Every \
                 record was checked per producer; none was lost or repeated, or the row says FAILED."
            );
        }
        if !self.latency.is_empty() {
            let _ = writeln!(o, "\n## Round trip of one record, median of {reps} run(s) per statistic\n");
            let rows: Vec<Vec<String>> = self
                .latency
                .iter()
                .chain(&self.busy_windows)
                .map(|l| {
                    let size = if l.size == 0 { "-".into() } else { bytes(l.size) };
                    let mut r = vec![l.transport.clone(), size];
                    match l.median {
                        Some(m) if !l.failed => r.extend([
                            ns(m.p50_ns),
                            ns(m.p99_ns),
                            ns(m.p999_ns),
                            ns(m.max_ns),
                            ns(m.mean_ns),
                            crate::render::count(m.round_trips),
                        ]),
                        _ => r.extend(["FAILED".into(), "-".into(), "-".into(), "-".into(), "-".into(), "-".into()]),
                    }
                    r
                })
                .collect();
            o.push_str(&table(&["transport", "size", "p50", "p99", "p99.9", "max", "mean", "round trips"], &rows));
            if let Some(b) = &self.busy_windows {
                let _ = writeln!(
                    o,
                    "\n{} is no transport: one pinned CPU timing back-to-back {} ns busy windows while the other \
                     spins. Its tail is what this machine takes from any round trip that short.",
                    b.transport,
                    super::measure::BUSY_WINDOW.as_nanos()
                );
            }
        }
        if !self.idle.is_empty() {
            let _ = writeln!(
                o,
                "\n## Idle: CPU used by a consumer waiting {} for a record, median of {reps} run(s)\n",
                seconds(self.settings.idle_s)
            );
            let rows: Vec<Vec<String>> = self
                .idle
                .iter()
                .map(|i| {
                    let cpu = median(i.reps_cpu_s.iter().flatten().copied());
                    vec![
                        i.transport.clone(),
                        i.median_cpu_percent.map_or("FAILED".into(), |p| format!("{p:.1} %")),
                        cpu.map_or("-".into(), |c| format!("{:.3} s", c)),
                    ]
                })
                .collect();
            o.push_str(&table(&["transport", "CPU while waiting", "CPU time"], &rows));
        }
        if !self.wake_up.is_empty() {
            let _ = writeln!(
                o,
                "\n## Wake-up of a sleeping consumer: publish to seen, {} wake-ups {} apart, median of {reps} run(s)\n",
                self.settings.wake_ups,
                seconds(self.settings.wake_gap_s)
            );
            let rows: Vec<Vec<String>> = self
                .wake_up
                .iter()
                .map(|w| {
                    vec![w.transport.clone(), w.median_ns.map_or("FAILED".into(), ns), w.max_ns.map_or("-".into(), ns)]
                })
                .collect();
            o.push_str(&table(&["transport", "median", "max"], &rows));
        }
        o
    }
}

/// A Markdown table, columns aligned: the first to the left, the others to the right.
fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let width = |i: usize| {
        rows.iter()
            .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
            .chain([head[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..head.len()).map(width).collect();
    let line = |cells: Vec<&str>| {
        let mut s = String::from("|");
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i == 0 {
                let _ = write!(s, " {c:<w$} |");
            } else {
                let _ = write!(s, " {c:>w$} |");
            }
        }
        s.push('\n');
        s
    };
    let mut o = line(head.to_vec());
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, &w)| if i == 0 { "-".repeat(w) } else { format!("{}:", "-".repeat(w - 1)) })
        .collect();
    o.push_str(&line(rule.iter().map(String::as_str).collect()));
    for r in rows {
        o.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    o
}

fn fixed(x: f64, decimals: usize) -> String {
    format!("{x:.decimals$}")
}

/// Two decimals, or three significant digits below 1 (0.0123).
fn significant(x: f64) -> String {
    if x >= 1.0 || x == 0.0 {
        fixed(x, 2)
    } else {
        let decimals = (2 - x.log10().floor() as i32).clamp(2, 9) as usize;
        fixed(x, decimals)
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| fixed(x, 2))
}

pub(super) fn bytes(size: usize) -> String {
    format_size(size as u64).replace(' ', "")
}

fn seconds(s: f64) -> String {
    if s >= 1.0 { format!("{s} s") } else { format!("{} ms", s * 1e3) }
}

/// ns, µs, ms or s, two decimals.
pub fn ns(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2} s", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2} ms", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.2} µs", x / 1e3)
    } else {
        format!("{x:.0} ns")
    }
}

//! `shmctl demo`: the main job in one command. Starts consumerd and producerd on the
//! shipped default config (generator -> `/high_perf_ring` -> verify), prints live
//! statistics read from the segment, stops both with SIGTERM (the consumer drains),
//! and prints what the verify sink saw. `--kind mpsc --producers N` runs N producerd
//! generators (producer ids 0..N) into one mpsc ring; the verify sink checks each
//! producer's order. `--kind broadcast --consumers N` runs N named consumerd (each sees
//! every record and verifies it); `--kind mpmc --producers N --consumers M` runs M
//! consumerd workers sharing the records, whose verified counts must add up to what was
//! produced.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shm_core::units::format_size;
use shm_core::{Liveness, Location, RingKind, Role, Segment};

use crate::cli::DemoArgs;
use crate::exit::{UNAVAILABLE, USAGE, refuse};
use crate::render::count;
use crate::stdout::outln;
use crate::target::open_read_only;

const PRODUCER_CONFIG: &str = include_str!("../../../config/producerd.toml");
const CONSUMER_CONFIG: &str = include_str!("../../../config/consumerd.toml");

/// Kills what is still running and removes the temporary directory when dropped, and
/// the segment the daemons made unless `--keep` (or the demo's normal end, which
/// removes it itself) took it out of `segment`: a demo that stops early (a daemon died,
/// the reader of its output went away) leaves nothing behind.
struct Daemons {
    children: Vec<(&'static str, Child)>,
    dir: PathBuf,
    segment: Option<Location>,
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(location) = self.segment.take() {
            // Refused if someone else attached meanwhile: then it is theirs to keep.
            let _ = Segment::unlink(&location);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn beside_me(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe().context("locating shmctl")?;
    let path = me.with_file_name(name);
    if !path.is_file() {
        bail!("{} not found beside {}; build all three with: cargo build --release", name, me.display());
    }
    Ok(path)
}

fn spawn(binary: &Path, config: &Path, extra: &[&str]) -> Result<Child> {
    Command::new(binary)
        .arg("--config")
        .arg(config)
        .args(extra)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

fn terminate(child: &mut Child, name: &str, within: Duration) -> Result<std::process::ExitStatus> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            bail!("{name} did not stop within {within:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn run(args: DemoArgs) -> Result<()> {
    let location = Location::posix(&args.segment)?;
    let kind: RingKind = args.kind.parse().map_err(|_| refuse(USAGE, format!("unknown kind {:?}", args.kind)))?;
    let several_producers = matches!(kind, RingKind::Mpsc | RingKind::Mpmc);
    if !several_producers && args.producers > 1 {
        return Err(refuse(
            USAGE,
            format!("--producers above 1 needs --kind mpsc or mpmc (a {} ring has one producer)", kind.name()),
        ));
    }
    let consumers_allowed = match kind {
        RingKind::Broadcast => 16,
        RingKind::Mpmc => shm_core::layout::MPMC_WORKERS as u8,
        RingKind::Spsc | RingKind::Mpsc => 1,
    };
    if args.consumers > consumers_allowed {
        return Err(refuse(
            USAGE,
            format!("--consumers: at most {consumers_allowed} for --kind {} (broadcast: 16, mpmc: 6)", kind.name()),
        ));
    }
    let (producerd, consumerd) = (beside_me("producerd")?, beside_me("consumerd")?);
    if let Ok(existing) = open_read_only(&location, Duration::ZERO)
        && existing.participants().iter().any(|p| p.liveness == Liveness::Alive)
    {
        return Err(refuse(
            UNAVAILABLE,
            format!("{location}: daemons are already running on it (see shmctl stat {location})"),
        ));
    }
    let dir = std::env::temp_dir().join(format!("shmring-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let segment_to_remove = (!args.keep).then(|| location.clone());
    let mut daemons = Daemons { children: Vec::new(), dir: dir.clone(), segment: segment_to_remove };
    let name_line = format!("name = {:?}", args.segment);
    let kind_line = format!("kind = {:?}", kind.name());
    let segment_lines = |config: &str| {
        config.replacen("name = \"/high_perf_ring\"", &name_line, 1).replacen("kind = \"spsc\"", &kind_line, 1)
    };
    let producer_configs: Vec<PathBuf> =
        (0..args.producers).map(|id| dir.join(format!("producerd-{id}.toml"))).collect();
    for (id, path) in producer_configs.iter().enumerate() {
        let mut config = segment_lines(PRODUCER_CONFIG).replacen("rate = 0 ", &format!("rate = {} ", args.rate), 1);
        if several_producers {
            config = config.replacen("# producer_id = 0 ", &format!("producer_id = {id} "), 1);
        }
        std::fs::write(path, config)?;
    }
    let consumer_names: Vec<String> = (0..args.consumers).map(|i| format!("demo-{i}")).collect();
    let mut consumer_runs = Vec::new();
    for (i, name) in consumer_names.iter().enumerate() {
        let mut config = segment_lines(CONSUMER_CONFIG);
        config = match kind {
            RingKind::Mpmc => config.replacen("# worker_id = 0 ", &format!("worker_id = {i} "), 1),
            _ => config.replacen("# consumer_name = \"recorder\" ", &format!("consumer_name = {name:?} "), 1),
        };
        let path = dir.join(format!("consumerd-{i}.toml"));
        std::fs::write(&path, config)?;
        consumer_runs.push((path, dir.join(format!("summary-{i}.json"))));
    }

    let producers = match args.producers {
        1 => "producerd (generator)".to_owned(),
        n => format!("{n} producerd (generators, producer ids 0..{n})"),
    };
    let consumers = match (kind, args.consumers) {
        (_, 1) => "consumerd (verify)".to_owned(),
        (RingKind::Mpmc, n) => format!("{n} consumerd (workers 0..{n}, sharing the records, each verifying its share)"),
        (_, n) => format!("{n} consumerd (named demo-0..demo-{}, each verifying every record)", n - 1),
    };
    outln!("shmring demo: {producers} -> {location} ({}) -> {consumers}, {} s", kind.name(), args.seconds);
    for (config, summary) in &consumer_runs {
        let summary_arg = summary.to_string_lossy().into_owned();
        daemons.children.push(("consumerd", spawn(&consumerd, config, &["--summary-file", &summary_arg])?));
    }
    // Every consumer attached before the first record: a broadcast consumer joins at the
    // newest record, and would otherwise start later than the others.
    wait_until_running(&location, &mut daemons, 0, usize::from(args.consumers))?;
    for config in &producer_configs {
        daemons.children.push(("producerd", spawn(&producerd, config, &[])?));
    }

    let segment =
        wait_until_running(&location, &mut daemons, usize::from(args.producers), usize::from(args.consumers))?;
    let info = segment.info()?;
    outln!("ring: {} {} ring of {}, every daemon attached", info.backend, info.kind.name(), format_size(info.capacity));
    outln!("{:>4}  {:>14} {:>12}  {:>14} {:>12}  {:>6}", "t", "produced", "rate/s", "consumed", "rate/s", "fill");
    let started = Instant::now();
    let mut last = (started, segment.stats(), consumed(&segment));
    let first = last.1.clone();
    for second in 1..=args.seconds {
        std::thread::sleep((started + Duration::from_secs(second)).saturating_duration_since(Instant::now()));
        let now = (Instant::now(), segment.stats(), consumed(&segment));
        let secs = now.0.duration_since(last.0).as_secs_f64();
        let rate = |a: u64, b: u64| count((b.saturating_sub(a) as f64 / secs) as u64);
        outln!(
            "{:>3}s  {:>14} {:>12}  {:>14} {:>12}  {:>5.1}%",
            second,
            count(now.1.total_produced),
            rate(last.1.total_produced, now.1.total_produced),
            count(now.2),
            rate(last.2, now.2),
            now.1.fill_percent()
        );
        check_alive(&mut daemons)?;
        last = now;
    }
    let elapsed = started.elapsed().as_secs_f64();

    outln!("stopping: SIGTERM to producerd, then to consumerd (it drains the ring)");
    let mut producer_status = Vec::new();
    for _ in 0..args.producers {
        let (_, mut producer) = daemons.children.pop().expect("producer was started");
        producer_status.push(terminate(&mut producer, "producerd", Duration::from_secs(10))?);
    }
    let mut consumer_status = Vec::new();
    while let Some((_, mut consumer)) = daemons.children.pop() {
        consumer_status.push(terminate(&mut consumer, "consumerd", Duration::from_secs(15))?);
    }
    consumer_status.reverse();
    let end = segment.stats();
    let end_consumed = consumed(&segment);
    let summaries: Vec<serde_json::Value> = consumer_runs
        .iter()
        .map(|(_, path)| {
            std::fs::read(path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .with_context(|| format!("consumerd wrote no summary at {}", path.display()))
        })
        .collect::<Result<_>>()?;
    drop(segment);
    if daemons.segment.take().is_some() {
        Segment::unlink(&location)?;
    }

    let produced = end.total_produced - first.total_produced;
    let n = |summary: &serde_json::Value, k: &str| summary[k].as_u64().unwrap_or(u64::MAX);
    let total = |k: &str| summaries.iter().map(|s| n(s, k)).fold(0u64, u64::saturating_add);
    let summary = &summaries[0];
    let latency =
        |k: &str| summary["latency_ns"][k].as_f64().map_or_else(|| "-".into(), |ns| format!("{:.1} us", ns / 1000.0));
    outln!();
    outln!("summary");
    let verified: Vec<String> = summaries.iter().map(|s| count(n(s, "received"))).collect();
    outln!(
        "  records     {} produced, {} consumed, {} verified",
        count(end.total_produced),
        count(end_consumed),
        verified.join(" + ")
    );
    outln!(
        "  rate        {} records/s ({:.1} MB/s) over {elapsed:.1} s",
        count((produced as f64 / elapsed) as u64),
        (end.bytes_produced - first.bytes_produced) as f64 / elapsed / 1e6
    );
    let problems = ["lost", "duplicated", "reordered", "corrupt"].map(total);
    if kind == RingKind::Mpmc {
        outln!(
            "  corrupt {}  (each worker verified its share; together: {} of {} produced)",
            problems[3],
            count(total("received")),
            count(end.total_produced)
        );
    } else {
        outln!(
            "  lost {}  duplicated {}  reordered {}  corrupt {}",
            problems[0],
            problems[1],
            problems[2],
            problems[3]
        );
    }
    outln!(
        "  latency     p50 {}  p99 {}  max {} (producer commit to consumer read{})",
        latency("p50"),
        latency("p99"),
        latency("max"),
        if summaries.len() > 1 { ", first consumer" } else { "" }
    );
    outln!(
        "  producer blocked {} times (ring full), consumer waited {} times (ring empty)",
        count(end.producer_blocks),
        count(end.consumer_blocks)
    );
    if args.rate == 0 && end.producer_blocks > 0 {
        outln!(
            "  (the generator outran the verifier and kept the ring full, so the latency above is \
             mostly queueing: try --rate 100000 for the ring's own latency)"
        );
    }
    if several_producers {
        let per_producer = summary["next_expected_per_producer"].as_object().cloned().unwrap_or_default();
        let streams: Vec<String> = per_producer.iter().map(|(id, n)| format!("producer {id}: {n}")).collect();
        let what = if kind == RingKind::Mpmc { "highest seen + 1 by worker 0" } else { "records verified in order" };
        outln!("  per producer {what}: {}", streams.join(", "));
    }
    let producers_ok = producer_status.iter().all(|s| s.success());
    let consumers_ok = consumer_status.iter().all(|s| s.success());
    let shown = |statuses: &[std::process::ExitStatus]| statuses.iter().map(ToString::to_string).collect::<Vec<_>>();
    outln!(
        "  exits       producerd {}, consumerd {}",
        shown(&producer_status).join(" / "),
        shown(&consumer_status).join(" / ")
    );
    if !args.keep {
        outln!("  {location} removed (--keep leaves it for shmctl stat)");
    }
    let everything_consumed = match kind {
        // Each consumer received every record; together the workers received each once.
        RingKind::Broadcast => summaries.iter().all(|s| n(s, "received") == end.total_produced),
        RingKind::Mpmc => total("received") == end.total_produced,
        RingKind::Spsc | RingKind::Mpsc => end_consumed == end.total_produced,
    } && end_consumed == end.total_produced;
    let clean = problems.iter().sum::<u64>() == 0 && everything_consumed;
    if !(clean && producers_ok && consumers_ok) {
        bail!("the demo found a problem: see the summary above");
    }
    Ok(())
}

/// Records consumed: the released count, or on a broadcast ring the slowest consumer's
/// delivered count.
fn consumed(segment: &Segment) -> u64 {
    match segment.broadcast_status() {
        Some(rows) => rows.iter().map(|r| r.row.tallies.delivered).min().unwrap_or(0),
        None => segment.stats().total_consumed,
    }
}

/// Consumers alive on the segment: named broadcast cursors and mpmc workers hold lock
/// bytes of their own, the others a participant slot.
fn live_consumers(segment: &Segment) -> usize {
    if let Some(rows) = segment.broadcast_status() {
        return rows.iter().filter(|r| r.liveness == Liveness::Alive).count();
    }
    if let Some(status) = segment.mpmc_status() {
        return status.workers.iter().filter(|w| w.liveness == Liveness::Alive).count();
    }
    segment.participants().iter().filter(|p| p.role == Some(Role::Consumer) && p.liveness == Liveness::Alive).count()
}

/// Waits for the segment to exist with `producers` live producers and `consumers` live
/// consumers.
fn wait_until_running(
    location: &Location,
    daemons: &mut Daemons,
    producers: usize,
    consumers: usize,
) -> Result<Segment> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        check_alive(daemons)?;
        if let Ok(segment) = open_read_only(location, Duration::ZERO) {
            let live_producers = segment
                .participants()
                .iter()
                .filter(|p| p.role == Some(Role::Producer) && p.liveness == Liveness::Alive)
                .count();
            if live_producers >= producers && live_consumers(&segment) >= consumers {
                return Ok(segment);
            }
        }
        if Instant::now() >= deadline {
            bail!("the daemons did not all attach to {location} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fails, with the daemon's last log lines, if one has exited.
fn check_alive(daemons: &mut Daemons) -> Result<()> {
    for (name, child) in &mut daemons.children {
        if let Some(status) = child.try_wait()? {
            let mut log = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut err, &mut log);
            }
            bail!("{name} exited early ({status}):\n{log}");
        }
    }
    Ok(())
}

//! `shmctl stat`: one segment, in full; `--json` for machines, `--watch` for rates.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use shm_core::units::format_size;
use shm_core::{Participant, Segment, SegmentInfo, StatsSnapshot};

use crate::cli::StatArgs;
use crate::render;
use crate::stdout::{out, outln};
use crate::target::{location, open_read_only};

/// Everything `stat` shows; also its JSON shape (field names are stable).
#[derive(Debug, Serialize)]
pub struct StatReport {
    pub segment: SegmentInfo,
    pub ring: RingView,
    /// Every counter in the segment, by the label stored there.
    pub counters: BTreeMap<String, u64>,
    /// The same counters in slot order, for people.
    #[serde(skip)]
    pub counters_in_order: Vec<shm_core::stats::LabelledCounter>,
    pub participants: Vec<Participant>,
    /// An mpsc ring's producers and whom its consumer waits for; absent for spsc.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mpsc: Option<shm_core::MpscStatus>,
    /// A broadcast ring's named consumers; absent for other kinds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumers: Option<Vec<shm_core::BroadcastConsumerStatus>>,
    /// An mpmc ring's workers and producers; absent for other kinds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mpmc: Option<shm_core::MpmcStatus>,
}

/// The ring's gauges.
#[derive(Debug, Serialize)]
pub struct RingView {
    pub kind: &'static str,
    pub capacity: u64,
    pub max_record: u64,
    pub used_bytes: u64,
    pub fill_percent: f64,
    pub records_in_flight: u64,
    pub write_cursor: u64,
    pub read_cursor: u64,
}

pub fn report(segment: &Segment) -> Result<(StatReport, StatsSnapshot)> {
    let info = segment.info()?;
    let stats = segment.stats();
    let report = StatReport {
        ring: RingView {
            kind: info.kind.name(),
            capacity: info.capacity,
            max_record: info.max_record,
            used_bytes: stats.used_bytes,
            fill_percent: (stats.fill_percent() * 10.0).round() / 10.0,
            records_in_flight: stats.records_in_flight,
            write_cursor: stats.write_cursor,
            read_cursor: stats.read_cursor,
        },
        counters: stats.counters.iter().map(|c| (c.label.clone(), c.value)).collect(),
        counters_in_order: stats.counters.clone(),
        participants: segment.participants(),
        mpsc: segment.mpsc_status(),
        consumers: segment.broadcast_status(),
        mpmc: segment.mpmc_status(),
        segment: info,
    };
    Ok((report, stats))
}

pub fn run(args: StatArgs) -> Result<()> {
    let location = location(&args.target)?;
    let segment = open_read_only(&location, Duration::from_secs(1))?;
    if let Some(interval) = args.watch {
        return watch(&segment, interval, args.json);
    }
    let (report, _) = report(&segment)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", render(&report, None));
    }
    Ok(())
}

/// Per-second rates between two snapshots.
#[derive(Debug, Serialize)]
struct Rates {
    #[serde(rename = "records_produced_per_second")]
    produced: f64,
    #[serde(rename = "records_consumed_per_second")]
    consumed: f64,
    #[serde(rename = "bytes_produced_per_second")]
    bytes_in: f64,
    #[serde(rename = "bytes_consumed_per_second")]
    bytes_out: f64,
}

/// One line of `stat --watch --json`: the report, when it was taken, and the rates since
/// the line before (absent on the first).
#[derive(Serialize)]
struct WatchLine<'a> {
    time_unix_ns: u64,
    #[serde(flatten)]
    report: &'a StatReport,
    rates: Option<&'a Rates>,
}

fn render(r: &StatReport, rates: Option<&Rates>) -> String {
    let s = &r.segment;
    let mut o = String::new();
    let path = s.path.as_deref().map(|p| format!(", {p}")).unwrap_or_default();
    let _ = writeln!(o, "{}  ({}{}){}", s.name, s.backend, path, if s.unlinked { "  [UNLINKED]" } else { "" });
    let _ = writeln!(
        o,
        "  owner     {}:{}  mode {:04o}  size {}{}",
        render::user(s.uid),
        render::group(s.gid),
        s.mode,
        format_size(s.size),
        s.numa_node.map(|n| format!("  bound to NUMA node {n}")).unwrap_or_default()
    );
    let _ = writeln!(
        o,
        "  created   {} by pid {} (uid {})  layout {}",
        render::time_ns(s.created_unix_ns),
        s.creator_pid,
        s.creator_uid,
        s.layout_version
    );
    if let Some(v) = &s.sysv {
        let _ = writeln!(
            o,
            "  sysv      id {}  nattch {}  cpid {}  lpid {}  ctime {}{}",
            v.id,
            v.nattch,
            v.cpid,
            v.lpid,
            render::time_s(v.ctime),
            if v.destroyed { "  [removed at last detach]" } else { "" }
        );
    }
    let ring = &r.ring;
    let _ = writeln!(
        o,
        "  ring      {}  capacity {}  max record {}  wait {}",
        ring.kind,
        format_size(ring.capacity),
        format_size(ring.max_record),
        s.wait_hint.name()
    );
    let _ = writeln!(
        o,
        "  fill      {} used ({:.1}%), {} records in flight",
        format_size(ring.used_bytes),
        ring.fill_percent,
        render::count(ring.records_in_flight)
    );
    let _ = writeln!(o, "  cursors   write {}  read {}", ring.write_cursor, ring.read_cursor);
    if let Some(rt) = rates {
        let _ = writeln!(
            o,
            "  rate      in {} rec/s ({:.1} MB/s)  out {} rec/s ({:.1} MB/s)",
            render::count(rt.produced.round() as u64),
            rt.bytes_in / 1e6,
            render::count(rt.consumed.round() as u64),
            rt.bytes_out / 1e6
        );
    }
    let _ = writeln!(o, "counters");
    for c in &r.counters_in_order {
        let _ = writeln!(o, "  {:<24}{:>20}", c.label, render::count(c.value));
    }
    let _ = writeln!(o, "participants");
    if r.participants.is_empty() {
        let _ = writeln!(o, "  (none has attached)");
    } else {
        let _ = writeln!(o, "  {:<4} {:<9} {:>8} {:<10} {:<21} state", "slot", "role", "pid", "user", "attached");
        for p in &r.participants {
            let role = render::role(p);
            let _ = writeln!(
                o,
                "  {:<4} {:<9} {:>8} {:<10} {:<21} {}",
                p.slot,
                role,
                p.pid,
                render::user(p.uid),
                render::time_ns(p.attached_unix_ns),
                render::liveness(p.liveness)
            );
        }
    }
    if let Some(m) = &r.mpsc {
        render_mpsc(&mut o, m);
    }
    if let Some(consumers) = &r.consumers {
        render_consumers(&mut o, consumers, r.segment.lossy);
    }
    if let Some(m) = &r.mpmc {
        render_mpmc(&mut o, m);
    }
    o
}

/// The broadcast section: a row per named consumer.
fn render_consumers(o: &mut String, consumers: &[shm_core::BroadcastConsumerStatus], lossy: bool) {
    let _ = writeln!(o, "consumers (broadcast{})", if lossy { ", lossy" } else { "" });
    if consumers.is_empty() {
        let _ = writeln!(o, "  (none has attached)");
        return;
    }
    let _ = writeln!(
        o,
        "  {:<4} {:<24} {:>8} {:<9} {:>14} {:>12} {:>12} {:>10}",
        "slot", "name", "pid", "liveness", "delivered", "missed", "lag", "lag bytes"
    );
    for c in consumers {
        let _ = writeln!(
            o,
            "  {:<4} {:<24} {:>8} {:<9} {:>14} {:>12} {:>12} {:>10}",
            c.row.slot,
            c.row.name.as_deref().unwrap_or("?"),
            c.row.pid,
            render::liveness(c.liveness),
            render::count(c.row.tallies.delivered),
            render::count(c.row.tallies.missed),
            render::count(c.row.lag_records),
            format_size(c.row.lag_bytes)
        );
    }
}

/// The mpmc section: a row per worker id, then the hand-over figure.
fn render_mpmc(o: &mut String, m: &shm_core::MpmcStatus) {
    let _ = writeln!(o, "workers (mpmc)");
    let _ = writeln!(
        o,
        "  {:<3} {:>8} {:<9} {:>14} {:>14} {:>11} {:>14}",
        "id", "pid", "liveness", "taken", "acknowledged", "redelivered", "holding"
    );
    for w in &m.workers {
        let holding = w.row.holding.map_or("-".to_owned(), |p| p.to_string());
        let _ = writeln!(
            o,
            "  {:<3} {:>8} {:<9} {:>14} {:>14} {:>11} {:>14}",
            w.row.id,
            w.row.pid,
            render::liveness(w.liveness),
            render::count(w.row.taken),
            render::count(w.row.acknowledged),
            render::count(w.row.redelivered),
            holding
        );
    }
    let _ = writeln!(o, "take cursor: {}; records handed over from dead workers: {}", m.take_cursor, m.handoffs);
}

/// The mpsc section: a row per producer id, then whom the consumer waits for.
fn render_mpsc(o: &mut String, m: &shm_core::MpscStatus) {
    let _ = writeln!(o, "producers (mpsc)");
    let _ = writeln!(
        o,
        "  {:<3} {:>8} {:<9} {:>14} {:>14} {:>10} {:>10}",
        "id", "pid", "liveness", "committed", "consumed", "unblocked", "blocks"
    );
    for p in &m.producers {
        let pid = p.pid.map_or("-".to_owned(), |pid| pid.to_string());
        let liveness = p.liveness.map_or("-", |l| render::liveness(l));
        let _ = writeln!(
            o,
            "  {:<3} {:>8} {:<9} {:>14} {:>14} {:>10} {:>10}",
            p.row.id,
            pid,
            liveness,
            render::count(p.row.records),
            render::count(p.row.consumed),
            render::count(p.row.unblocked_records),
            render::count(p.row.blocks)
        );
    }
    use shm_core::ring::mpsc::HeadClaim;
    let line = match (m.head, m.waiting_for_pid) {
        (HeadClaim::Clear, _) => "consumer: not held up by any claim".to_owned(),
        (HeadClaim::WaitingFor { producer }, pid) => {
            let pid = pid.map_or("unknown pid".to_owned(), |p| format!("pid {p}{}", process_state(p)));
            format!("consumer: waits for producer {producer} ({pid}): alive, holding an uncommitted claim")
        }
        (HeadClaim::Dead { producer, .. }, _) => {
            format!("consumer: will reclaim the claim of producer {producer}, which is dead")
        }
        (HeadClaim::Unknown, _) => "consumer: waits for a claim no producer's intent names".to_owned(),
    };
    let _ = writeln!(o, "{line}");
}

/// ", stopped" when /proc says the process is stopped (display only).
fn process_state(pid: u32) -> &'static str {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    match stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()) {
        Some('T' | 't') => ", stopped",
        _ => "",
    }
}

/// Prints a frame every `interval` until Ctrl-C: on a terminal in place (the screen cleared
/// first), else as plain successive reports; with `json`, one JSON object per line
/// (NDJSON). Reads only: the segment is mapped read-only.
fn watch(segment: &Segment, interval: Duration, json: bool) -> Result<()> {
    use std::io::IsTerminal as _;
    let terminal = std::io::stdout().is_terminal();
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let mut last: Option<(Instant, StatsSnapshot)> = None;
    while !stop.load(Ordering::Relaxed) {
        let (report, stats) = report(segment)?;
        let now = Instant::now();
        let rates = last.as_ref().map(|(then, prev)| Rates::between(prev, &stats, now.duration_since(*then)));
        if json {
            let time_unix_ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            outln!("{}", serde_json::to_string(&WatchLine { time_unix_ns, report: &report, rates: rates.as_ref() })?);
        } else {
            if terminal {
                out!("\x1b[H\x1b[2J");
            }
            out!("{}", render(&report, rates.as_ref()));
            outln!("\n(every {}; Ctrl-C to stop)", humantime::format_duration(interval));
        }
        last = Some((now, stats));
        let deadline = now + interval;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20).min(interval));
        }
    }
    Ok(())
}

impl Rates {
    fn between(before: &StatsSnapshot, after: &StatsSnapshot, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let per_sec = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
        Rates {
            produced: per_sec(before.total_produced, after.total_produced),
            consumed: per_sec(before.total_consumed, after.total_consumed),
            bytes_in: per_sec(before.bytes_produced, after.bytes_produced),
            bytes_out: per_sec(before.bytes_consumed, after.bytes_consumed),
        }
    }
}

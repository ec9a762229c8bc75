//! `shmctl list`: every shmring segment on the host; `--all` adds the rest, like lsipc.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use shm_core::discover::{self, Candidate};
use shm_core::units::format_size;
use shm_core::{Liveness, OpenError, Participant, Role, Segment};

use crate::cli::ListArgs;
use crate::render;
use crate::stdout::outln;
use crate::target::open_read_only;

/// One shmring segment in the listing (also its JSON shape).
#[derive(Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub backend: &'static str,
    /// The ring kind (`spsc`, `mpsc`, `broadcast`, `mpmc`).
    pub ring: &'static str,
    pub size: u64,
    pub uid: u32,
    pub mode: u32,
    pub capacity: u64,
    pub used_bytes: u64,
    pub fill_percent: f64,
    pub records_in_flight: u64,
    pub total_produced: u64,
    pub total_consumed: u64,
    pub participants: Vec<Participant>,
    /// A broadcast ring's named consumers (they hold no participant slot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumers: Option<Vec<shm_core::BroadcastConsumerStatus>>,
    pub unlinked: bool,
}

/// What a candidate turned out to be.
pub enum Found {
    Ours(Box<Segment>, Candidate),
    Foreign(Candidate, &'static str),
}

/// Every candidate on the host and in `dirs`, opened read-only to tell ours from the rest.
pub fn survey(dirs: &[PathBuf]) -> Result<Vec<Found>> {
    let mut candidates = discover::posix()?;
    candidates.extend(discover::sysv().unwrap_or_default());
    for dir in default_dirs(dirs) {
        candidates.extend(discover::files(&dir)?);
    }
    Ok(candidates
        .into_iter()
        .map(|c| {
            let Some(location) = c.location.clone() else { return Found::Foreign(c, "private") };
            match open_read_only(&location, Duration::ZERO) {
                Ok(segment) => Found::Ours(Box::new(segment), c),
                Err(OpenError::Permission { .. }) => Found::Foreign(c, "no access"),
                Err(OpenError::NotInitialised { .. }) => Found::Foreign(c, "uninitialised"),
                Err(OpenError::Header { source: shm_core::HeaderError::Version { .. }, .. }) => {
                    Found::Foreign(c, "other version")
                }
                Err(_) => Found::Foreign(c, ""),
            }
        })
        .collect())
}

/// `--dir` as given, else /var/lib/shmring when it exists.
fn default_dirs(dirs: &[PathBuf]) -> Vec<PathBuf> {
    if !dirs.is_empty() {
        return dirs.to_vec();
    }
    let default = Path::new("/var/lib/shmring");
    if default.is_dir() { vec![default.to_path_buf()] } else { Vec::new() }
}

pub fn row(segment: &Segment, c: &Candidate) -> Row {
    let stats = segment.stats();
    Row {
        name: c.name.clone(),
        backend: c.backend,
        ring: segment.geometry().kind.name(),
        size: c.size,
        uid: c.uid,
        mode: c.perms,
        capacity: stats.capacity,
        used_bytes: stats.used_bytes,
        fill_percent: (stats.fill_percent() * 10.0).round() / 10.0,
        records_in_flight: stats.records_in_flight,
        total_produced: stats.total_produced,
        total_consumed: stats.total_consumed,
        participants: segment.participants(),
        consumers: segment.broadcast_status(),
        unlinked: segment.is_unlinked(),
    }
}

pub fn run(args: ListArgs) -> Result<()> {
    let found = survey(&args.dirs)?;
    let ours: Vec<Row> =
        found.iter().filter_map(|f| if let Found::Ours(s, c) = f { Some(row(s, c)) } else { None }).collect();
    let foreign: Vec<(&Candidate, &str)> =
        found.iter().filter_map(|f| if let Found::Foreign(c, why) = f { Some((c, *why)) } else { None }).collect();
    if args.json {
        #[derive(Serialize)]
        struct Other<'a> {
            #[serde(flatten)]
            candidate: &'a Candidate,
            status: &'a str,
        }
        let mut doc = serde_json::json!({ "segments": ours });
        if args.all {
            let others: Vec<Other> = foreign.iter().map(|(c, s)| Other { candidate: c, status: s }).collect();
            doc["other"] = serde_json::to_value(others)?;
        }
        outln!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    if ours.is_empty() {
        outln!("no shmring segments{}", if args.all { "" } else { " (--all lists other shared memory)" });
    } else {
        outln!(
            "{:<22} {:<6} {:<5} {:>9} {:>6} {:>12} {:<15} {:<15}",
            "NAME",
            "KIND",
            "RING",
            "SIZE",
            "FILL",
            "IN FLIGHT",
            "PRODUCER",
            "CONSUMER"
        );
        for r in &ours {
            let name = if r.unlinked { format!("{} (unlinked)", r.name) } else { r.name.clone() };
            outln!(
                "{:<22} {:<6} {:<5} {:>9} {:>5.1}% {:>12} {:<15} {:<15}",
                name,
                r.backend,
                r.ring,
                format_size(r.size),
                r.fill_percent,
                render::count(r.records_in_flight),
                render::role_summary(&r.participants, Role::Producer),
                match &r.consumers {
                    Some(consumers) => render::liveness_counts(consumers.iter().map(|c| c.liveness)),
                    None => render::role_summary(&r.participants, Role::Consumer),
                },
            );
        }
    }
    if args.all {
        outln!();
        outln!(
            "{:<24} {:>6} {:>5} {:<8} {:>9} {:>6} {:<13} {:<20} {:>6} {:>6} COMMAND",
            "NAME/KEY",
            "ID",
            "PERMS",
            "OWNER",
            "SIZE",
            "NATTCH",
            "STATUS",
            "CTIME",
            "CPID",
            "LPID"
        );
        for (c, why) in &foreign {
            let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            let status = if c.destroyed { "dest" } else { why };
            outln!(
                "{:<24} {:>6} {:>5} {:<8} {:>9} {:>6} {:<13} {:<20} {:>6} {:>6} {}",
                c.name,
                dash(c.id.map(|v| v.to_string())),
                format!("{:03o}", c.perms & 0o777),
                render::user(c.uid),
                format_size(c.size),
                dash(c.nattch.map(|v| v.to_string())),
                if status.is_empty() { "-" } else { status },
                render::time_s(c.ctime),
                dash(c.cpid.map(|v| v.to_string())),
                dash(c.lpid.map(|v| v.to_string())),
                c.cpid.map_or_else(|| "-".into(), render::command),
            );
        }
    }
    Ok(())
}

/// Whether any participant of a segment is alive.
pub fn any_alive(participants: &[Participant]) -> bool {
    participants.iter().any(|p| p.liveness == Liveness::Alive)
}

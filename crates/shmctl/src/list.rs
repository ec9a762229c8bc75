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
use crate::stdout::{out, outln};
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
    /// `"0600"`.
    #[serde(serialize_with = "shm_core::owner::serialize_mode")]
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
    let style = TableStyle { headings: !args.noheadings, raw: args.raw };
    let size = |bytes: u64| if args.bytes { bytes.to_string() } else { format_size(bytes) };
    if ours.is_empty() {
        if !args.noheadings {
            outln!("no shmring segments{}", if args.all { "" } else { " (--all lists other shared memory)" });
        }
    } else {
        let columns = if args.output.is_empty() { Column::DEFAULT.to_vec() } else { args.output.clone() };
        let rows = ours.iter().map(|r| columns.iter().map(|c| c.cell(r, &size)).collect()).collect();
        let headers: Vec<&str> = columns.iter().map(|c| c.header()).collect();
        out!("{}", style.render(&headers, &columns.iter().map(|c| c.right_aligned()).collect::<Vec<_>>(), rows));
    }
    if args.all {
        if !args.noheadings {
            outln!();
        }
        let headers =
            ["NAME/KEY", "ID", "PERMS", "OWNER", "SIZE", "NATTCH", "STATUS", "CTIME", "CPID", "LPID", "COMMAND"];
        let right = [false, true, true, false, true, true, false, false, true, true, false];
        let rows = foreign
            .iter()
            .map(|(c, why)| {
                let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                let status = if c.destroyed { "dest" } else { why };
                vec![
                    c.name.clone(),
                    dash(c.id.map(|v| v.to_string())),
                    format!("{:03o}", c.perms & 0o777),
                    render::user(c.uid),
                    size(c.size),
                    dash(c.nattch.map(|v| v.to_string())),
                    if status.is_empty() { "-".into() } else { status.to_owned() },
                    render::time_s(c.ctime),
                    dash(c.cpid.map(|v| v.to_string())),
                    dash(c.lpid.map(|v| v.to_string())),
                    c.cpid.map_or_else(|| "-".into(), render::command),
                ]
            })
            .collect();
        out!("{}", style.render(&headers, &right, rows));
    }
    Ok(())
}

/// A column of the shmring segments' table (`-o/--output`, as lsipc's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum Column {
    /// The name, key or path (`(unlinked)` after it once unlinked).
    Name,
    /// The backend: posix, sysv, file.
    Kind,
    /// The ring kind: spsc, mpsc, broadcast, mpmc.
    Ring,
    /// Bytes of the segment.
    Size,
    /// Ring data bytes.
    Capacity,
    /// Bytes in use, in percent of the capacity.
    Fill,
    /// Records committed and not yet released.
    Inflight,
    /// The producer's liveness and pid.
    Producer,
    /// The consumer's liveness and pid.
    Consumer,
    /// The owner's user name.
    Owner,
    /// Permission bits.
    Perms,
}

impl Column {
    /// The columns shown without `-o`.
    const DEFAULT: [Column; 8] = [
        Column::Name,
        Column::Kind,
        Column::Ring,
        Column::Size,
        Column::Fill,
        Column::Inflight,
        Column::Producer,
        Column::Consumer,
    ];

    fn header(self) -> &'static str {
        match self {
            Column::Name => "NAME",
            Column::Kind => "KIND",
            Column::Ring => "RING",
            Column::Size => "SIZE",
            Column::Capacity => "CAPACITY",
            Column::Fill => "FILL",
            Column::Inflight => "INFLIGHT",
            Column::Producer => "PRODUCER",
            Column::Consumer => "CONSUMER",
            Column::Owner => "OWNER",
            Column::Perms => "PERMS",
        }
    }

    fn right_aligned(self) -> bool {
        matches!(self, Column::Size | Column::Capacity | Column::Fill | Column::Inflight)
    }

    fn cell(self, r: &Row, size: &dyn Fn(u64) -> String) -> String {
        match self {
            Column::Name if r.unlinked => format!("{} (unlinked)", r.name),
            Column::Name => r.name.clone(),
            Column::Kind => r.backend.to_owned(),
            Column::Ring => r.ring.to_owned(),
            Column::Size => size(r.size),
            Column::Capacity => size(r.capacity),
            Column::Fill => format!("{:.1}%", r.fill_percent),
            Column::Inflight => render::count(r.records_in_flight),
            Column::Producer => render::role_summary(&r.participants, Role::Producer),
            Column::Consumer => match &r.consumers {
                Some(consumers) => render::liveness_counts(consumers.iter().map(|c| c.liveness)),
                None => render::role_summary(&r.participants, Role::Consumer),
            },
            Column::Owner => render::user(r.uid),
            Column::Perms => format!("{:04o}", r.mode),
        }
    }
}

/// How `list` prints a table: with or without its header line; aligned (column widths
/// that fit the longest cell) or raw (cells separated by one space, a space inside a
/// cell written `\x20`, as lsipc does).
struct TableStyle {
    headings: bool,
    raw: bool,
}

impl TableStyle {
    fn render(&self, headers: &[&str], right_aligned: &[bool], rows: Vec<Vec<String>>) -> String {
        let mut text = String::new();
        if self.raw {
            let escape = |cell: &str| cell.replace(' ', "\\x20");
            if self.headings {
                text += &headers.join(" ");
                text.push('\n');
            }
            for row in rows {
                text += &row.iter().map(|c| escape(c)).collect::<Vec<_>>().join(" ");
                text.push('\n');
            }
            return text;
        }
        let mut table = comfy_table::Table::new();
        table.load_preset(comfy_table::presets::NOTHING);
        if self.headings {
            table.set_header(headers.iter().copied());
        }
        table.add_rows(rows);
        for (column, &right) in table.column_iter_mut().zip(right_aligned) {
            column.set_padding((0, 1));
            if right {
                column.set_cell_alignment(comfy_table::CellAlignment::Right);
            }
        }
        for line in table.lines() {
            text += line.trim_end();
            text.push('\n');
        }
        text
    }
}

/// Whether any participant of a segment is alive.
pub fn any_alive(participants: &[Participant]) -> bool {
    participants.iter().any(|p| p.liveness == Liveness::Alive)
}

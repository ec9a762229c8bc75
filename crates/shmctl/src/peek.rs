//! `shmctl peek`: show waiting records without consuming them.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use base64::Engine as _;
use serde::Serialize;
use shm_core::ring::mpsc::HeadClaim;
use shm_core::{PeekStop, PeekedRecord, PeekedState, SkippedFrame};

use crate::cli::PeekArgs;
use crate::stdout::{out, outln};
use crate::target::{location, open_read_only};

pub fn run(args: PeekArgs) -> Result<()> {
    let location = location(&args.target)?;
    let segment = open_read_only(&location, Duration::from_secs(1))?;
    let view = segment.peek_view(args.count, args.consumer.as_deref())?;
    if args.json {
        let doc = PeekJson {
            segment: location.to_string(),
            kind: segment.geometry().kind.name(),
            consumer: args.consumer.as_deref(),
            consumer_lapped: view.consumer_lapped,
            records: view.records.iter().map(RecordJson::of).collect(),
            skipped: &view.skipped,
            stopped_at: view.stopped_at,
        };
        outln!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    if view.consumer_lapped {
        let name = args.consumer.as_deref().unwrap_or_default();
        outln!("{location}: consumer {name:?} was lapped (its next records were overwritten); from the oldest record");
    }
    if view.records.is_empty() && view.stopped_at.is_none() {
        outln!("{location}: no records waiting");
    }
    // Records and skipped frames in ring order (both lists are in ring order).
    let mut skipped = view.skipped.iter().peekable();
    for r in &view.records {
        while let Some(s) = skipped.next_if(|s| s.position < r.position) {
            outln!("{}", skipped_line(s));
        }
        outln!("{}", record_line(r));
        if args.hex {
            out!("{}", hexdump(&r.data));
        } else {
            outln!("  {}", preview(&r.data));
        }
    }
    for s in skipped {
        outln!("{}", skipped_line(s));
    }
    if let Some(stop) = view.stopped_at {
        outln!("{}", stop_line(&stop));
    }
    Ok(())
}

/// `@POS type T len L`, then what the kind knows about the record.
fn record_line(r: &PeekedRecord) -> String {
    let mut line = format!("@{} type {} len {}", r.position, r.record_type, r.data.len());
    if let Some(p) = r.producer {
        let _ = write!(line, " producer {p}");
    }
    if let Some(seq) = r.seq {
        let _ = write!(line, " seq {seq}");
    }
    match r.state {
        PeekedState::Waiting => {}
        PeekedState::Taken { worker: Some(w) } => {
            let _ = write!(line, " taken by worker {w}, not acknowledged");
        }
        PeekedState::Taken { worker: None } => line.push_str(" taken, not acknowledged (its worker is gone)"),
    }
    line
}

fn skipped_line(s: &SkippedFrame) -> String {
    let what = match (s.what, s.producer) {
        ("unblocked", Some(p)) => format!("hole of dead producer {p}, unblocked"),
        ("abandoned", Some(p)) => format!("claim producer {p} abandoned"),
        ("acknowledged", Some(p)) => format!("record of producer {p}, acknowledged"),
        (what, _) => what.to_owned(),
    };
    format!("@{} skipped: {what} ({} bytes)", s.position, s.bytes)
}

fn stop_line(stop: &PeekStop) -> String {
    let why = match stop.waiting_for {
        HeadClaim::WaitingFor { producer } => format!("waits for producer {producer} (alive) to commit it"),
        HeadClaim::Dead { producer, end } => {
            format!("producer {producer} is dead: the consumer will unblock it (up to @{end})")
        }
        HeadClaim::Unknown | HeadClaim::Clear => {
            "no live producer claims it (a claim just made, or a record the consumer just read)".to_owned()
        }
    };
    format!("@{} stopped: a claim not yet committed; {why}", stop.position)
}

/// `peek --json`: the segment and its waiting records in reading order (docs/CLI.md).
#[derive(Serialize)]
struct PeekJson<'a> {
    segment: String,
    kind: &'static str,
    consumer: Option<&'a str>,
    consumer_lapped: bool,
    records: Vec<RecordJson>,
    skipped: &'a [SkippedFrame],
    stopped_at: Option<PeekStop>,
}

/// One record in `peek --json`.
#[derive(Serialize)]
struct RecordJson {
    position: u64,
    record_type: u32,
    /// Payload bytes.
    len: usize,
    /// `utf8` when the payload is valid UTF-8 (`data` is that text), else `base64`
    /// (`data` is the standard base64 of the bytes, with padding).
    encoding: &'static str,
    data: String,
    producer: Option<usize>,
    seq: Option<u64>,
    /// `waiting` or `taken` (mpmc: a worker holds it, not acknowledged).
    state: &'static str,
    /// The worker holding a taken record, if known.
    worker: Option<usize>,
}

impl RecordJson {
    fn of(r: &PeekedRecord) -> Self {
        let (encoding, data) = match std::str::from_utf8(&r.data) {
            Ok(text) => ("utf8", text.to_owned()),
            Err(_) => ("base64", base64::engine::general_purpose::STANDARD.encode(&r.data)),
        };
        let (state, worker) = match r.state {
            PeekedState::Waiting => ("waiting", None),
            PeekedState::Taken { worker } => ("taken", worker),
        };
        RecordJson {
            position: r.position,
            record_type: r.record_type,
            len: r.data.len(),
            encoding,
            data,
            producer: r.producer,
            seq: r.seq,
            state,
            worker,
        }
    }
}

/// Printable text as a quoted string, anything else as the first bytes in hex.
fn preview(data: &[u8]) -> String {
    match std::str::from_utf8(data) {
        Ok(text) if !text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => format!("{text:?}"),
        _ => {
            let shown: Vec<String> = data.iter().take(32).map(|b| format!("{b:02x}")).collect();
            format!("{}{}", shown.join(" "), if data.len() > 32 { " ..." } else { "" })
        }
    }
}

/// `offset  hex bytes  |ascii|`, 16 bytes a line.
fn hexdump(data: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in data.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String =
            chunk.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' }).collect();
        let _ = writeln!(out, "  {:08x}  {:<47}  |{}|", i * 16, hex.join(" "), ascii);
    }
    out
}

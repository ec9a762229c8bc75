//! `shmctl peek`: show waiting records without consuming them.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use base64::Engine as _;
use serde::Serialize;
use shm_core::PeekedRecord;

use crate::cli::PeekArgs;
use crate::stdout::{out, outln};
use crate::target::{location, open_read_only};

pub fn run(args: PeekArgs) -> Result<()> {
    let location = location(&args.target)?;
    let segment = open_read_only(&location, Duration::from_secs(1))?;
    let records = segment.peek(args.count)?;
    if args.json {
        let doc = PeekJson { segment: location.to_string(), records: records.iter().map(RecordJson::of).collect() };
        outln!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    if records.is_empty() {
        outln!("{location}: no records waiting");
    }
    for r in &records {
        outln!("@{} type {} len {}", r.position, r.record_type, r.data.len());
        if args.hex {
            out!("{}", hexdump(&r.data));
        } else {
            outln!("  {}", preview(&r.data));
        }
    }
    Ok(())
}

/// `peek --json`: the segment and its waiting records, oldest first.
#[derive(Serialize)]
struct PeekJson {
    segment: String,
    records: Vec<RecordJson>,
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
}

impl RecordJson {
    fn of(r: &PeekedRecord) -> Self {
        let (encoding, data) = match std::str::from_utf8(&r.data) {
            Ok(text) => ("utf8", text.to_owned()),
            Err(_) => ("base64", base64::engine::general_purpose::STANDARD.encode(&r.data)),
        };
        RecordJson { position: r.position, record_type: r.record_type, len: r.data.len(), encoding, data }
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

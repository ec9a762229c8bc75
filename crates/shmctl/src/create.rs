//! `shmctl create`.

use anyhow::{Context, Result};
use shm_core::units::{format_size, parse_size};
use shm_core::{Segment, WaitStrategy};

use crate::cli::CreateArgs;
use crate::exit::{USAGE, refuse};
use crate::stdout::outln;
use crate::target::location;

pub fn run(args: CreateArgs) -> Result<()> {
    let location = location(&args.target)?;
    let capacity = parse_size(&args.capacity).context("--capacity")?;
    let mode = u32::from_str_radix(args.mode.trim_start_matches("0o"), 8)
        .map_err(|_| refuse(USAGE, format!("--mode {:?} is not an octal mode such as 0600", args.mode)))?;
    let wait: WaitStrategy = args.wait.parse().map_err(|e: String| refuse(USAGE, format!("--wait: {e}")))?;
    let kind: shm_core::RingKind = args.kind.parse().map_err(|e: String| refuse(USAGE, format!("--kind: {e}")))?;
    let mut builder = Segment::builder(location)
        .kind(kind)
        .lossy(args.lossy)
        .capacity(capacity)
        .mode(mode)
        .wait_strategy(wait)
        .numa_node(args.numa_node)
        .hugepages(args.hugepages)
        .prefault(args.prefault);
    if let Some(max) = &args.max_record {
        builder = builder.max_record(parse_size(max).context("--max-record")?);
    }
    if let Some(group) = &args.group {
        let gid =
            shm_core::owner::gid_of(group).ok_or_else(|| refuse(USAGE, format!("--group {group:?}: no such group")))?;
        builder = builder.group(gid);
    }
    let segment = builder.create()?;
    let info = segment.info()?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        let mut placement = String::new();
        if let Some(node) = info.numa_node {
            placement += &format!(", NUMA node {node}");
        }
        if args.hugepages {
            placement += &format!(", {} of huge pages", format_size(info.size));
        }
        outln!(
            "created {} ({}, {}{} ring of {}, max record {}, mode {:04o}{placement})",
            info.name,
            info.backend,
            if info.lossy { "lossy " } else { "" },
            info.kind.name(),
            format_size(info.capacity),
            format_size(info.max_record),
            info.mode
        );
    }
    Ok(())
}

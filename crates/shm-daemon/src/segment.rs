//! Opening or creating the configured segment, as `[segment]` says.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use shm_core::{OpenError, Segment, SegmentBuilder};
use tracing::{info, warn};

use crate::config::{CreateMode, SegmentSettings};
use crate::service::Waiting;

fn builder(s: &SegmentSettings) -> SegmentBuilder {
    let mut b = Segment::builder(s.location.clone())
        .capacity(s.capacity)
        .mode(s.mode)
        .wait_strategy(s.wait)
        .flush(s.flush)
        .expected_owner(Some(s.owner))
        .numa_node(s.numa_node)
        .hugepages(s.hugepages)
        .prefault(s.prefault)
        .kind(s.kind)
        .lossy(s.lossy);
    if let Some(m) = s.max_record {
        b = b.max_record(m);
    }
    if let Some(g) = s.group {
        b = b.group(g);
    }
    b
}

/// Opens or creates the segment. With `create = "never"`, waits up to
/// `wait_for_segment` for it to appear, logging once that it waits, and calling
/// `waiting.tick()` every 20 ms (the watchdog, a stop request: then this fails with
/// [`StopRequested`](crate::service::StopRequested)). Never re-initialises an existing
/// segment; a geometry different from the config is logged and the segment's own is used.
pub fn open(s: &SegmentSettings, waiting: &mut Waiting<'_>) -> Result<Segment> {
    let b = builder(s);
    let segment = match s.create {
        CreateMode::Always => b.create().context("creating the segment")?,
        CreateMode::IfMissing => b.open_or_create().context("opening or creating the segment")?,
        CreateMode::Never => {
            let deadline = Instant::now() + s.wait_for_segment;
            let mut said = false;
            loop {
                match b.open() {
                    Err(OpenError::NotFound { .. }) if Instant::now() < deadline => {
                        if !said {
                            info!(segment = %s.location, timeout = %humantime::format_duration(s.wait_for_segment), "waiting for the segment to appear");
                            said = true;
                        }
                        waiting.tick()?;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    other => break other.context("opening the segment")?,
                }
            }
        }
    };
    if let Some(r) = segment.power_loss_repair() {
        warn!(
            segment = %s.location,
            write_cursor_was = r.write_cursor_was,
            read_cursor = r.read_cursor,
            records = r.records,
            bytes = r.bytes,
            "repaired after a power loss: the read cursor was ahead of the write cursor by a consumed publish whose cursor had not reached the disk; the write cursor now equals the read cursor"
        );
    }
    if s.numa_node.is_some() || s.hugepages || s.prefault {
        // What the segment has: an existing one keeps the placement it was created with.
        let info = segment.info().ok();
        let created = info.as_ref().is_some_and(|i| i.creator_pid == std::process::id());
        info!(
            segment = %s.location,
            created,
            numa_node = ?info.as_ref().and_then(|i| i.numa_node),
            size = info.as_ref().map_or(0, |i| i.size),
            hugepages = s.hugepages,
            prefault = s.prefault,
            "placement"
        );
    }
    let g = segment.geometry();
    if g.kind != s.kind {
        return Err(anyhow::Error::new(shm_core::AttachError::WrongKind {
            location: s.location.clone(),
            found: g.kind.name(),
            wanted: s.kind.name(),
        })
        .context(format!(
            "segment.kind: configured {:?}, but the segment {} holds a {:?} ring",
            s.kind.name(),
            s.location,
            g.kind.name()
        )));
    }
    if g.capacity != s.capacity {
        warn!(segment = %s.location, configured = s.capacity, actual = g.capacity, "segment exists with another capacity; using the segment's");
    }
    Ok(segment)
}

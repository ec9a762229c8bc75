//! Turning a command-line target into a location, and opening segments for inspection.

use std::time::Duration;

use anyhow::Result;
use shm_core::{Location, OpenError, Segment};

use crate::cli::{Backend, Target};

/// The location a target names.
pub fn location(target: &Target) -> Result<Location> {
    let loc = match target.backend {
        None => Location::infer(&target.name)?,
        Some(Backend::Posix) => Location::parse("posix", &target.name)?,
        Some(Backend::Sysv) => Location::parse("sysv", &target.name)?,
        Some(Backend::File) => Location::parse("file", &target.name)?,
    };
    Ok(loc)
}

/// Opens a segment read-only, whoever owns it: the kernel then guarantees that
/// inspecting never writes to it.
pub fn open_read_only(location: &Location, init_timeout: Duration) -> Result<Segment, OpenError> {
    Segment::builder(location.clone()).read_only().expected_owner(None).init_timeout(init_timeout).open()
}

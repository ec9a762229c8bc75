//! `shmctl gc`: remove shmring segments whose processes died. Each removal is decided
//! again under the segment's role locks ([`shm_core::Segment::unlink_unused`]), so a
//! process that attaches meanwhile keeps its segment.

use anyhow::Result;
use shm_core::{Liveness, Location, UnlinkError};

use crate::cli::GcArgs;
use crate::exit::refuse;
use crate::list::{Found, any_alive, survey};
use crate::render;
use crate::stdout::outln;
use crate::unlink::test_gate;

pub fn run(args: GcArgs) -> Result<()> {
    let only = args.only.iter().map(|n| Location::infer(n)).collect::<Result<Vec<_>, _>>()?;
    let mut failures = 0;
    let mut considered = 0;
    for found in survey(&args.dirs)? {
        let Found::Ours(segment, candidate) = found else { continue };
        if !only.is_empty() && !candidate.location.as_ref().is_some_and(|l| only.contains(l)) {
            continue;
        }
        considered += 1;
        let participants = segment.participants();
        let name = &candidate.name;
        if any_alive(&participants) {
            outln!("kept    {name}: a participant is alive");
            continue;
        }
        if participants.iter().any(|p| p.liveness == Liveness::Unknown) {
            outln!("kept    {name}: cannot tell whether its participants are alive (no readable lock file)");
            continue;
        }
        let dead: Vec<String> =
            participants.iter().filter(|p| p.liveness == Liveness::Dead).map(render::participant).collect();
        if dead.is_empty() && !args.include_idle {
            outln!("kept    {name}: idle, nobody died (--include-idle removes it)");
            continue;
        }
        let why = if dead.is_empty() { "idle".to_owned() } else { format!("{} died", dead.join(", ")) };
        if args.dry_run {
            outln!("would remove {name} ({why})");
            continue;
        }
        // Decided again, under the role locks, on this very object.
        match segment.unlink_unused_with(test_gate) {
            Ok(()) => outln!("removed {name} ({why})"),
            Err(UnlinkError::NotFound { .. }) => outln!("gone    {name}: removed by someone else meanwhile"),
            Err(UnlinkError::InUse { .. }) => outln!("kept    {name}: a participant attached meanwhile"),
            Err(UnlinkError::LivenessUnknown { reason, .. }) => {
                outln!("kept    {name}: cannot tell whether a process is attached ({reason})")
            }
            Err(UnlinkError::Replaced { .. }) => {
                outln!("kept    {name}: re-created meanwhile; the new segment was not removed")
            }
            Err(e) => {
                failures += 1;
                outln!("could not remove {name}: {e}");
            }
        }
    }
    if considered == 0 {
        outln!("no shmring segments");
    }
    if failures > 0 {
        return Err(refuse(1, format!("{failures} segment(s) could not be removed")));
    }
    Ok(())
}

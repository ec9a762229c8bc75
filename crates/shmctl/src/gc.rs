//! `shmctl gc`: remove shmring segments whose processes died.

use anyhow::Result;
use shm_core::{Liveness, Segment};

use crate::cli::GcArgs;
use crate::exit::refuse;
use crate::list::{Found, any_alive, survey};
use crate::render;
use crate::stdout::outln;

pub fn run(args: GcArgs) -> Result<()> {
    let mut failures = 0;
    let mut considered = 0;
    for found in survey(&args.dirs)? {
        let Found::Ours(segment, candidate) = found else { continue };
        considered += 1;
        let participants = segment.participants();
        let name = &candidate.name;
        if any_alive(&participants) {
            outln!("kept    {name}: a participant is alive");
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
        drop(segment);
        let location = candidate.location.clone().expect("our segments always have a location");
        match Segment::unlink(&location) {
            Ok(()) => outln!("removed {name} ({why})"),
            Err(shm_core::UnlinkError::NotFound { .. }) => {
                outln!("gone    {name}: removed by someone else meanwhile")
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

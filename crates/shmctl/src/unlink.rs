//! `shmctl unlink`: remove a segment's name, refusing while someone is attached.

use std::time::Duration;

use anyhow::Result;
use shm_core::{OpenError, Segment};

use crate::cli::UnlinkArgs;
use crate::exit::{DATA, UNAVAILABLE, refuse};
use crate::list::any_alive;
use crate::render;
use crate::stdout::outln;
use crate::target::{location, open_read_only};

pub fn run(args: UnlinkArgs) -> Result<()> {
    let location = location(&args.target)?;
    match open_read_only(&location, Duration::from_millis(200)) {
        Ok(segment) => {
            let participants = segment.participants();
            if any_alive(&participants) && !args.force {
                let who: Vec<String> = participants
                    .iter()
                    .filter(|p| p.liveness == shm_core::Liveness::Alive)
                    .map(render::participant)
                    .collect();
                return Err(refuse(
                    UNAVAILABLE,
                    format!("{location}: in use by {} (alive); stop it first, or use --force", who.join(", ")),
                ));
            }
        }
        Err(OpenError::NotFound { .. }) => return Err(OpenError::NotFound { location }.into()),
        Err(e @ (OpenError::Header { .. } | OpenError::NotInitialised { .. } | OpenError::NotRegular { .. }))
            if !args.force =>
        {
            return Err(refuse(
                DATA,
                format!("{e}; not removing what may not be a shmring segment (--force removes it)"),
            ));
        }
        Err(e @ OpenError::WorldWritable { .. }) if !args.force => {
            return Err(refuse(
                DATA,
                format!(
                    "{e}; its participants cannot be trusted, so this cannot tell whether it is in use (--force removes it)"
                ),
            ));
        }
        // Unreadable (permission): removal is decided by the OS below.
        Err(_) => {}
    }
    Segment::unlink(&location)?;
    outln!("removed {location}");
    Ok(())
}

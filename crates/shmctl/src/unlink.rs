//! `shmctl unlink`: remove a segment's name, refusing while someone is attached or
//! while that cannot be told.
//!
//! The decision and the removal act on the same object, under its role locks
//! ([`Segment::unlink_unused`]): a process that attaches meanwhile is refused, and a
//! segment someone re-created at the name meanwhile is not removed.

use std::time::Duration;

use anyhow::Result;
use shm_core::{OpenError, Segment, UnlinkError};

use crate::cli::UnlinkArgs;
use crate::exit::{DATA, UNAVAILABLE, refuse};
use crate::render;
use crate::stdout::outln;
use crate::target::{location, open_read_only};

pub fn run(args: UnlinkArgs) -> Result<()> {
    let location = location(&args.target)?;
    match open_read_only(&location, Duration::from_millis(200)) {
        Ok(segment) if !args.force => {
            segment.unlink_unused().map_err(|e| match e {
                UnlinkError::InUse { participants, .. } => {
                    let who: Vec<String> = participants.iter().map(render::participant).collect();
                    let who = if who.is_empty() { "a participant attaching now".to_owned() } else { who.join(", ") };
                    refuse(UNAVAILABLE, format!("{location}: in use by {who} (alive); stop it first, or use --force"))
                }
                e @ (UnlinkError::LivenessUnknown { .. } | UnlinkError::Replaced { .. }) => {
                    refuse(UNAVAILABLE, e.to_string())
                }
                e => e.into(),
            })?;
            return removed(&location, &args);
        }
        Ok(_) => {}
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
        // Unreadable: whether a process is attached cannot be told, which is not "nobody".
        Err(OpenError::Permission { source, .. }) if !args.force => {
            let context = format!(
                "{location}: cannot read it to check whether a process is attached, so not removing it (--force tries anyway)"
            );
            return Err(anyhow::Error::new(UnlinkError::Permission { location, source }).context(context));
        }
        Err(_) => {}
    }
    Segment::unlink(&location)?;
    removed(&location, &args)
}

/// Says that `location` was removed: `{"removed": NAME, "forced": BOOL}` with `--json`.
fn removed(location: &shm_core::Location, args: &UnlinkArgs) -> Result<()> {
    if args.json {
        outln!("{}", serde_json::json!({ "removed": location.to_string(), "forced": args.force }));
    } else {
        outln!("removed {location}");
    }
    Ok(())
}

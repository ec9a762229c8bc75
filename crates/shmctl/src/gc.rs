//! `shmctl gc`: remove shmring segments whose processes died. Each removal is decided
//! again under the segment's role locks ([`shm_core::Segment::unlink_unused`]), so a
//! process that attaches meanwhile keeps its segment.

use anyhow::Result;
use serde::Serialize;
use shm_core::{Liveness, Location, Segment, UnlinkError};

use crate::cli::GcArgs;
use crate::exit::refuse;
use crate::list::{Found, any_alive, survey};
use crate::render;
use crate::stdout::outln;

/// What `gc` did with one segment (also its JSON shape).
#[derive(Debug, Serialize)]
struct Outcome {
    /// The name, key or path, as `list` shows it.
    name: String,
    /// `removed`, `would_remove` (`--dry-run`), `kept`, `gone` (removed by someone else
    /// meanwhile) or `failed`.
    action: &'static str,
    /// Why, in words.
    reason: String,
}

impl Outcome {
    /// The line `gc` prints for it.
    fn line(&self) -> String {
        let Outcome { name, action, reason } = self;
        match *action {
            "removed" => format!("removed {name} ({reason})"),
            "would_remove" => format!("would remove {name} ({reason})"),
            "gone" => format!("gone    {name}: {reason}"),
            "failed" => format!("could not remove {name}: {reason}"),
            _ => format!("kept    {name}: {reason}"),
        }
    }
}

pub fn run(args: GcArgs) -> Result<()> {
    let only = args.only.iter().map(|n| Location::infer(n)).collect::<Result<Vec<_>, _>>()?;
    let mut outcomes = Vec::new();
    for found in survey(&args.dirs)? {
        let Found::Ours(segment, candidate) = found else { continue };
        if !only.is_empty() && !candidate.location.as_ref().is_some_and(|l| only.contains(l)) {
            continue;
        }
        let (action, reason) = decide(&segment, &args);
        let outcome = Outcome { name: candidate.name.clone(), action, reason };
        if !args.json {
            outln!("{}", outcome.line());
        }
        outcomes.push(outcome);
    }
    let failures = outcomes.iter().filter(|o| o.action == "failed").count();
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "dry_run": args.dry_run, "segments": outcomes }))?
        );
    } else if outcomes.is_empty() {
        outln!("no shmring segments");
    }
    if failures > 0 {
        return Err(refuse(1, format!("{failures} segment(s) could not be removed")));
    }
    Ok(())
}

/// Decides on one segment, and removes it unless `--dry-run`: the action and why.
fn decide(segment: &Segment, args: &GcArgs) -> (&'static str, String) {
    let participants = segment.participants();
    if any_alive(&participants) {
        return ("kept", "a participant is alive".into());
    }
    if participants.iter().any(|p| p.liveness == Liveness::Unknown) {
        return ("kept", "cannot tell whether its participants are alive (no readable lock file)".into());
    }
    let dead: Vec<String> =
        participants.iter().filter(|p| p.liveness == Liveness::Dead).map(render::participant).collect();
    if dead.is_empty() && !args.include_idle {
        return ("kept", "idle, nobody died (--include-idle removes it)".into());
    }
    let why = if dead.is_empty() { "idle".to_owned() } else { format!("{} died", dead.join(", ")) };
    if args.dry_run {
        return ("would_remove", why);
    }
    // Decided again, under the role locks, on this very object.
    match segment.unlink_unused() {
        Ok(()) => ("removed", why),
        Err(UnlinkError::NotFound { .. }) => ("gone", "removed by someone else meanwhile".into()),
        Err(UnlinkError::InUse { .. }) => ("kept", "a participant attached meanwhile".into()),
        Err(UnlinkError::LivenessUnknown { reason, .. }) => {
            ("kept", format!("cannot tell whether a process is attached ({reason})"))
        }
        Err(UnlinkError::Replaced { .. }) => ("kept", "re-created meanwhile; the new segment was not removed".into()),
        Err(e) => ("failed", e.to_string()),
    }
}

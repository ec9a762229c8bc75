//! `shmctl publish`: put one record into a ring, as its producer.

use std::io::Read;

use anyhow::{Context, Result};
use shm_core::Segment;

use crate::cli::PublishArgs;
use crate::exit::{USAGE, refuse};
use crate::stdout::outln;
use crate::target::location;

pub fn run(args: PublishArgs) -> Result<()> {
    let location = location(&args.target)?;
    let data = match (&args.data, &args.file) {
        (Some(text), None) => text.as_bytes().to_vec(),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).context("reading stdin")?;
            buf
        }
        (None, Some(path)) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        _ => return Err(refuse(USAGE, "give the record as DATA or --file, not both")),
    };
    if args.record_type >= 0xFFFF_0000 {
        return Err(refuse(
            USAGE,
            format!("--type {:#x} is reserved (types from 0xFFFF0000 belong to the ring)", args.record_type),
        ));
    }
    // Root may publish into a daemon user's ring; anyone else only into their own, or
    // into the one of the user named with --owner (a group member's shared ring).
    let me = nix::unistd::geteuid();
    let owner = match &args.owner {
        Some(user) => Some(
            shm_core::owner::uid_of(user).ok_or_else(|| refuse(USAGE, format!("--owner {user:?}: no such user")))?,
        ),
        None if me.is_root() => None,
        None => Some(me.as_raw()),
    };
    let segment = Segment::builder(location.clone()).expected_owner(owner).open()?;
    let mut producer = segment.producer()?;
    let mut claim = producer.claim(data.len(), Some(args.timeout)).with_context(|| location.to_string())?;
    claim.copy_from_slice(&data);
    claim.set_record_type(args.record_type);
    let position = claim.position();
    claim.commit().with_context(|| location.to_string())?;
    if args.json {
        let published = serde_json::json!({
            "segment": location.to_string(),
            "bytes": data.len(),
            "record_type": args.record_type,
            "position": position,
        });
        outln!("{published}");
    } else {
        outln!("published {} bytes (type {}) at position {position}", data.len(), args.record_type);
    }
    Ok(())
}

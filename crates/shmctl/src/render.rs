//! Shared formatting: owners, modes, times, liveness.

use std::time::{Duration, UNIX_EPOCH};

use shm_core::{Liveness, Participant, Role};

/// `name` for a uid, or the number when it has no name.
pub fn user(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}

/// `name` for a gid, or the number when it has no name.
pub fn group(gid: u32) -> String {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map_or_else(|| gid.to_string(), |g| g.name)
}

/// RFC 3339 UTC, to the second.
pub fn time_ns(unix_ns: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(unix_ns)).to_string()
}

/// RFC 3339 UTC from Unix seconds (`-` for 0).
pub fn time_s(unix_s: i64) -> String {
    if unix_s <= 0 { "-".into() } else { time_ns(unix_s as u64 * 1_000_000_000) }
}

/// `alive`, `dead`, `detached`, `unknown`.
pub fn liveness(l: Liveness) -> &'static str {
    match l {
        Liveness::Alive => "alive",
        Liveness::Dead => "dead",
        Liveness::Detached => "detached",
        Liveness::Unknown => "unknown",
    }
}

/// A participant's role, or `?` when its slot holds an unknown value.
pub fn role(p: &Participant) -> String {
    p.role.map_or_else(|| "?".into(), |r| r.to_string())
}

/// `producer pid 123`.
pub fn participant(p: &Participant) -> String {
    format!("{} pid {}", role(p), p.pid)
}

/// `alive (pid 123)` for the participant holding `role`, or `-`.
pub fn role_summary(participants: &[Participant], role: Role) -> String {
    let holders: Vec<&Participant> = participants.iter().filter(|p| p.role == Some(role)).collect();
    match holders.as_slice() {
        [] => "-".into(),
        [p] => format!("{} ({})", liveness(p.liveness), p.pid),
        // Several (the producers of an mpsc ring): how many in each state.
        many => liveness_counts(many.iter().map(|p| p.liveness)),
    }
}

/// `2 alive, 1 dead`: how many of `states` are in each state, `-` for none.
pub fn liveness_counts(states: impl Iterator<Item = Liveness> + Clone) -> String {
    let order = [Liveness::Alive, Liveness::Dead, Liveness::Detached, Liveness::Unknown];
    let counts: Vec<String> = order
        .iter()
        .filter_map(|&l| {
            let n = states.clone().filter(|&s| s == l).count();
            (n > 0).then(|| format!("{n} {}", liveness(l)))
        })
        .collect();
    if counts.is_empty() { "-".into() } else { counts.join(", ") }
}

/// The command name of a pid, from /proc.
pub fn command(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map_or_else(|_| "-".into(), |s| s.trim().to_owned())
}

/// A count with thousands separators.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

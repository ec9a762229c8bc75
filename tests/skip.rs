//! Tests that cannot run where they are say so, where the run shows it.
//!
//! [`skip`] prints `SKIPPED <test>: <reason>` straight to standard error, past libtest's
//! capture (a passing test's captured output is never shown, which once hid every skip),
//! and appends the same line to `$SHMRING_SKIP_LOG` when it is set, for a summary at the
//! end of the run (`.ci/run` prints it).
//!
//! With `SHMRING_NO_SKIPS=1` (CI, as root, with huge pages reserved) a skip for want of
//! something the machine can be given ([`Need::Setup`]: root, a mount namespace, free huge
//! pages, room in `/dev/shm`) fails the test instead. Only [`Need::Hardware`] (a second
//! NUMA node) may still skip there, and it is listed all the same.

use std::fs::OpenOptions;
use std::io::Write;

/// What a skipped test lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Something CI provides: root, `unshare -m`, reserved huge pages, a large `/dev/shm`.
    Setup,
    /// Something no setup gives this machine: a second NUMA node.
    Hardware,
}

/// The environment variable that turns a [`Need::Setup`] skip into a failure.
pub const NO_SKIPS_VAR: &str = "SHMRING_NO_SKIPS";
/// The environment variable naming a file every skip is appended to.
pub const SKIP_LOG_VAR: &str = "SHMRING_SKIP_LOG";

/// Records that `test` does not run here, for want of `reason`; the caller then returns.
/// Panics instead when `$SHMRING_NO_SKIPS` is `1` and `need` is [`Need::Setup`].
#[track_caller]
pub fn skip(test: &str, need: Need, reason: &str) {
    let kind = match need {
        Need::Setup => "setup",
        Need::Hardware => "hardware",
    };
    let line = format!("SKIPPED {test} ({kind}): {reason}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    if let Some(log) = std::env::var_os(SKIP_LOG_VAR).map(std::path::PathBuf::from) {
        let appended =
            OpenOptions::new().create(true).append(true).open(&log).and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = appended {
            panic!("{test}: cannot append to the skip log {}: {e}", log.display());
        }
    }
    if need == Need::Setup && std::env::var(NO_SKIPS_VAR).as_deref() == Ok("1") {
        panic!("{test} must run here ({NO_SKIPS_VAR}=1) but cannot: {reason}");
    }
}

/// Whether this process runs as root; if not, skips `test` (see [`skip`]) and returns
/// `false`.
#[track_caller]
pub fn root_or_skip(test: &str, why: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        skip(test, Need::Setup, &format!("needs root ({why})"));
    }
    root
}

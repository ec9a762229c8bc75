//! The hooks the integration tests reach inside the daemons with: each is an
//! environment variable, and each is compiled in only with the `test-hooks` feature.
//!
//! The feature is on in exactly the builds the tests run: the `shmring-tests` package
//! turns it on through a dev-dependency, so `cargo test --workspace` (the README's test
//! command, and `.ci/run`'s) builds `producerd` and `consumerd` with it, while
//! `cargo build --release` — what the README installs and packages ship — never has it.
//! In a build without it [`Hook::value`] never reads the environment, so setting a
//! variable cannot make a daemon a user runs fail an fsync on purpose; the daemon logs
//! that it ignores it instead. `scripts/check-no-test-hooks` proves that on the shipped
//! build (CI runs it after `cargo build --release --workspace`).

use std::ffi::OsString;

/// Whether this build honours the hooks.
pub const COMPILED_IN: bool = cfg!(feature = "test-hooks");

/// Every hook a daemon honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `SHMRING_TEST_FAIL_FSYNC=N`: the file sink's `N`th data fsync (from 1) fails
    /// with `EIO`, as a dying disk's would.
    FailFsync,
    /// `SHMRING_TEST_FAIL_STATE_WRITE=N`: the `N`th write (from 1) of a sink's state
    /// file (the file sink's `.progress`, the verify sink's `state`) fails with `EIO`.
    FailStateWrite,
    /// `SHMRING_TEST_LEDGER=PATH`: the generator appends each published sequence
    /// number to `PATH` (see producerd's `ledger` module).
    Ledger,
    /// `SHMRING_TEST_KILL_AFTER_BATCH_WRITE=N`: the generator waits until the consumer
    /// has read everything, writes the frames of its `N`th batch (from 1), and SIGKILLs
    /// itself before publishing it: the crash that could overwrite its resume point.
    KillAfterBatchWrite,
}

impl Hook {
    /// All of them.
    pub const ALL: [Hook; 4] = [Hook::FailFsync, Hook::FailStateWrite, Hook::Ledger, Hook::KillAfterBatchWrite];

    /// The environment variable.
    pub fn var(self) -> &'static str {
        match self {
            Hook::FailFsync => "SHMRING_TEST_FAIL_FSYNC",
            Hook::FailStateWrite => "SHMRING_TEST_FAIL_STATE_WRITE",
            Hook::Ledger => "SHMRING_TEST_LEDGER",
            Hook::KillAfterBatchWrite => "SHMRING_TEST_KILL_AFTER_BATCH_WRITE",
        }
    }

    /// The hook's value: the variable's, in a build with the hooks; always `None`
    /// without them (the environment is not read).
    pub fn value(self) -> Option<OsString> {
        if COMPILED_IN { std::env::var_os(self.var()) } else { None }
    }

    /// A "fail the `N`th" hook's `N`, when set to a number.
    pub fn countdown(self) -> Option<u64> {
        self.value()?.to_str()?.trim().parse().ok()
    }
}

/// A line about the hook variables set in this process's environment, if any: that
/// they are honoured (a test build) or ignored (any other).
pub fn describe_set() -> Option<String> {
    let set: Vec<&str> = Hook::ALL.iter().map(|h| h.var()).filter(|v| std::env::var_os(v).is_some()).collect();
    if set.is_empty() {
        return None;
    }
    let set = set.join(", ");
    Some(if COMPILED_IN {
        format!("test hooks honoured (a test build, feature test-hooks): {set}")
    } else {
        format!("test hooks ignored: {set} set, but this build has no test hooks (feature test-hooks is off)")
    })
}

/// A countdown to a failure: `N` from a "fail the `N`th" hook; [`FailCountdown::due`]
/// is true at the `N`th call, once.
#[derive(Debug, Default)]
pub struct FailCountdown(Option<u64>);

impl FailCountdown {
    /// The countdown of `hook` (never due when it is unset or compiled out).
    pub fn of(hook: Hook) -> Self {
        FailCountdown(hook.countdown())
    }

    /// Counts one call; true when it is the one that must fail.
    pub fn due(&mut self) -> bool {
        let Some(left) = &mut self.0 else { return false };
        *left = left.saturating_sub(1);
        if *left == 0 {
            self.0 = None;
            return true;
        }
        false
    }
}

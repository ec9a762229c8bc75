//! Tests that `fork`: they run without the test harness (`harness = false`), so the
//! process is single-threaded when it forks and a child may allocate and print. A child
//! never returns into the test: it leaves with `_exit`, so it cannot run the fixture's
//! `Drop` (which would kill its siblings and remove the parent's files).

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};

use nix::unistd::{ForkResult, fork};

use crate::{Fixture, Proc};

/// Runs `child` in a forked child process, which exits with the code it returns (70 if
/// it panics); the fixture adopts it as `label`.
pub fn fork_child(fx: &Fixture, label: &str, child: impl FnOnce() -> i32) -> Proc {
    fx.adopt(label, fork_exiting(child))
}

/// Forks a child that runs `child` and exits with the code it returns (70 if it
/// panics); returns its pid. For a child of a child, which the fixture cannot adopt.
pub fn fork_exiting(child: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: callers are single-threaded (no harness), so the child inherits no lock
    // held by another thread; the child leaves only through `_exit`.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = catch_unwind(AssertUnwindSafe(child)).unwrap_or(70);
            let _ = std::io::stdout().flush();
            // SAFETY: `_exit` ends the process at once, without running the parent's
            // destructors or atexit handlers in the child.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => child.as_raw(),
    }
}

/// The `main` of a test without the harness: runs each of `tests` whose name the
/// command line selects.
pub fn main(tests: &[(&str, fn())]) {
    // Honour what `cargo test` passes on to a harness: `--list`, name filters, `--exact`
    // and `--skip`; skip the values of other options so they are not taken for filters.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut filters, mut skips, mut exact, mut list) = (Vec::new(), Vec::new(), false, false);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--list" => list = true,
            "--exact" => exact = true,
            "--skip" => skips.extend(it.next()),
            "--test-threads" | "--format" | "--color" | "--logfile" | "--shuffle-seed" | "-Z" => {
                it.next();
            }
            a if a.starts_with('-') => {}
            a => filters.push(a.to_owned()),
        }
    }
    let matches = |name: &str, pattern: &String| if exact { name == pattern } else { name.contains(pattern.as_str()) };
    for &(name, test) in tests {
        if !(filters.is_empty() || filters.iter().any(|f| matches(name, f))) || skips.iter().any(|s| matches(name, s)) {
            continue;
        }
        if list {
            println!("{name}: test");
            continue;
        }
        eprintln!("test {name} ...");
        test();
        eprintln!("test {name} ... ok");
    }
}

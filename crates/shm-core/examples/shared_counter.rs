//! The seed's section 2.2 (`anonymous_mmap.c`), done correctly: a parent and forked
//! children share a counter and a small log in an anonymous shared mapping, guarded by a
//! process-shared lock.
//!
//! The seed guarded them with a process-shared `sem_t`: a child killed while holding it
//! left it taken forever, and nothing noticed. Here the lock is a [`RobustMutex`]: one
//! child is killed with `SIGKILL` in the middle of its update (counter bumped, log entry
//! not yet written), and the next locker is told the owner died and must repair the data
//! (re-derive the counter from the log) before it gets the lock. The others proceed as usual.
//!
//! Run: `cargo run --release -p shm-core --example shared_counter`

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, fork};
use shm_core::robust::{Locked, SharedRobust};

/// What the processes share: a counter and the log of who incremented it. Invariant:
/// `counter == entries`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Shared {
    counter: u64,
    entries: u64,
    log: [u32; 64],
    repairs: u64,
}

const CHILDREN: u32 = 4;
const INCREMENTS: u32 = 10;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Mapped before fork: every child shares the same physical page.
    let shared = SharedRobust::new_anonymous(Shared { counter: 0, entries: 0, log: [0; 64], repairs: 0 })?;
    // Re-derive the counter from the log: the one piece of the invariant a holder killed
    // between its two writes can break.
    let repair = |s: &mut Shared| {
        s.counter = s.entries;
        s.repairs += 1;
    };
    let mut children = Vec::new();
    for child in 0..CHILDREN {
        // SAFETY: this process is single-threaded here; the child only locks, writes the
        // shared mapping and `_exit`s.
        match unsafe { fork() }? {
            ForkResult::Child => {
                for round in 0..INCREMENTS {
                    let Ok(mut s) = shared.lock_or_repair(repair) else {
                        // SAFETY: ends the child at once; it holds nothing the parent needs.
                        unsafe { libc::_exit(1) }
                    };
                    s.counter += 1;
                    if child == 0 && round == 2 {
                        // Child 0 dies here, inside the section, with the invariant broken.
                        let _ = kill(nix::unistd::getpid(), Signal::SIGKILL);
                    }
                    let i = (s.entries as usize) % s.log.len();
                    s.log[i] = child;
                    s.entries += 1;
                    drop(s);
                    std::thread::sleep(Duration::from_millis(1));
                }
                // SAFETY: ends the child without running the parent's exit handlers.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => children.push(child),
        }
    }
    for pid in children {
        println!("child {pid}: {:?}", waitpid(pid, None)?);
    }
    let s = match shared.lock()? {
        Locked::Clean(s) => s,
        Locked::OwnerDied(died) => died.repair(repair)?,
    };
    println!("counter = {}, log entries = {}, repairs after a holder died = {}", s.counter, s.entries, s.repairs);
    assert_eq!(s.counter, s.entries, "the invariant holds");
    let expected = u64::from(CHILDREN - 1) * u64::from(INCREMENTS) + 2;
    assert_eq!(s.entries, expected, "three children's 10 each, and the killed child's first 2");
    assert_eq!(s.repairs, 1, "exactly one repair");
    Ok(())
}

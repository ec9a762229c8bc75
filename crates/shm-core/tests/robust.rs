//! `RobustMutex` across processes: a holder killed with `SIGKILL` inside its critical
//! section, with the data half updated. The next locker must get the owner-died state and
//! repair the data before anyone uses it; the repair runs exactly once; every later locker
//! proceeds normally. Children are forked and do nothing but lock, write and `_exit`.
#![cfg(not(loom))]

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use shm_core::robust::{LockError, Locked, SharedRobust};

/// Shared state with an invariant (`a == b`) that a holder killed between its two
/// updates breaks, and a count of repairs.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ledger {
    a: u64,
    b: u64,
    repairs: u64,
}

/// Forks a child that runs `body` and exits with its code.
fn fork_child(body: impl FnOnce() -> i32) -> Pid {
    // SAFETY: the child only locks a pthread mutex, writes to shared memory or a pipe,
    // sleeps and `_exit`s: no allocation, no lock another thread of the harness may hold.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = body();
            // SAFETY: ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    }
}

fn exit_code(pid: Pid) -> i32 {
    match waitpid(pid, None).expect("waitpid") {
        WaitStatus::Exited(_, code) => code,
        other => panic!("child {pid} ended with {other:?}"),
    }
}

/// Forks a holder that takes the lock, updates `a` but not `b`, says so through a pipe
/// and hangs; kills it there with SIGKILL.
fn kill_a_holder_inside_the_section(shared: &SharedRobust<Ledger>) {
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    let holder = fork_child(|| {
        let Ok(Locked::Clean(mut ledger)) = shared.lock() else { return 3 };
        ledger.a += 1;
        let _ = nix::unistd::write(&write_end, b"x");
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    drop(write_end);
    let mut byte = [0u8; 1];
    assert_eq!(nix::unistd::read(&read_end, &mut byte).expect("read"), 1, "the holder is inside its section");
    kill(holder, Signal::SIGKILL).expect("SIGKILL");
    assert_eq!(waitpid(holder, None).expect("waitpid"), WaitStatus::Signaled(holder, Signal::SIGKILL, false));
}

#[test]
fn a_holder_killed_inside_the_section_is_repaired_exactly_once_and_later_lockers_proceed() {
    let shared = SharedRobust::new_anonymous(Ledger { a: 0, b: 0, repairs: 0 }).expect("robust mutex");
    kill_a_holder_inside_the_section(&shared);
    let lockers: Vec<Pid> = (0..4)
        .map(|_| {
            fork_child(|| {
                let repair = |l: &mut Ledger| {
                    l.b = l.a;
                    l.repairs += 1;
                };
                match shared.lock_or_repair(repair) {
                    Ok(mut ledger) if ledger.a == ledger.b => {
                        ledger.a += 1;
                        ledger.b += 1;
                        0
                    }
                    Ok(_) => 5,
                    Err(_) => 4,
                }
            })
        })
        .collect();
    for pid in lockers {
        assert_eq!(exit_code(pid), 0, "a later locker found the data unrepaired (5) or the lock unusable (4)");
    }
    let Ok(Locked::Clean(ledger)) = shared.lock() else { panic!("the lock is clean after the repair") };
    assert_eq!(*ledger, Ledger { a: 5, b: 5, repairs: 1 }, "one repair, then four increments");
}

#[test]
fn an_owner_died_lock_dropped_unrepaired_is_never_handed_out_again() {
    let shared = SharedRobust::new_anonymous(Ledger { a: 0, b: 0, repairs: 0 }).expect("robust mutex");
    kill_a_holder_inside_the_section(&shared);
    match shared.lock().expect("lock") {
        Locked::OwnerDied(died) => drop(died),
        Locked::Clean(_) => panic!("the holder's death went unnoticed"),
    }
    assert!(matches!(shared.lock(), Err(LockError::NotRecoverable)));
}

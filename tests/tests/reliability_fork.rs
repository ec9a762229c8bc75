//! Processes that fork after attaching: a role belongs to the process that took it.
//!
//! Liveness locks are open file descriptions, which `fork` shares with the child. A
//! parent attached as producer forks a child that attaches as consumer; the parent is
//! killed with SIGKILL. The child, this process (through the shared segment), and for a
//! named segment `shmctl stat`, must all see the producer dead, and a new producer must
//! be able to attach. Before roles were made per-process, the child's inherited copy of
//! the parent's lock kept the dead parent "alive" and its role taken.
//!
//! Runs without the test harness (`harness = false`): see [`shmring_tests::forked`].

// Its `checks!` macro is for tests per backend, which this file does not have.
#[allow(unused_macros)]
mod shmctl_support;

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use shm_core::{Liveness, Role, Segment};
use shmctl_support::stat_json;
use shmring_tests::forked::{self, fork_child, fork_exiting};
use shmring_tests::{Backend, Fixture, stream, wait_until};

const PATIENCE: Duration = Duration::from_secs(20);

/// Kills a process that is not our child (a grandchild) when dropped.
struct KillOnDrop(libc::pid_t);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: plain integer arguments; the pid is the grandchild's, and a stale pid
        // would only be signalled if it was reused within this test.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

fn wait_for_file(path: &Path, what: &str) -> String {
    wait_until(PATIENCE, what, || std::fs::read_to_string(path).is_ok_and(|s| !s.is_empty()));
    std::fs::read_to_string(path).expect("read")
}

fn producer_liveness(segment: &Segment) -> Option<Liveness> {
    segment.participants().into_iter().find(|p| p.role == Some(Role::Producer)).map(|p| p.liveness)
}

/// One run on `backend`; returns what went wrong, if anything.
fn run(backend: Backend) -> Vec<String> {
    let fx = Fixture::new("fork-liveness");
    let location = fx.location(backend);
    let segment = Segment::builder(location.clone()).capacity(4096).create().expect("create");
    let (child_ready, go, verdict, child_pid) =
        (fx.path("child-ready"), fx.path("go"), fx.path("verdict"), fx.path("child-pid"));
    let parent = fork_child(&fx, "parent", || {
        let _producer = segment.producer().expect("the parent attaches as producer");
        let child = fork_exiting(|| {
            let _consumer = segment.consumer().expect("the child attaches as consumer");
            std::fs::write(&child_ready, "1").expect("write");
            wait_for_file(&go, "the test says go");
            let seen = producer_liveness(&segment);
            let attached = segment.producer().map(|_| ()).map_err(|e| e.to_string());
            std::fs::write(&verdict, format!("{seen:?} {attached:?}")).expect("write");
            0
        });
        std::fs::write(&child_pid, child.to_string()).expect("write");
        stream::stall()
    });
    let _child = KillOnDrop(wait_for_file(&child_pid, "the parent forked").parse().expect("a pid"));
    wait_for_file(&child_ready, "the child attached");
    let mut wrong = Vec::new();
    if producer_liveness(&segment) != Some(Liveness::Alive) {
        wrong.push(format!("{backend:?}: the parent's producer is not alive before the kill"));
    }
    fx.kill(&parent);
    if producer_liveness(&segment) != Some(Liveness::Dead) {
        wrong.push(format!("{backend:?}: this process sees the producer {:?}", producer_liveness(&segment)));
    }
    if backend != Backend::Anon {
        let stat = stat_json(&fx, &location);
        let producer = stat["participants"].as_array().into_iter().flatten().find(|p| p["role"] == "producer");
        if producer.map(|p| &p["liveness"]) != Some(&json!("dead")) {
            wrong.push(format!("{backend:?}: shmctl stat shows the producer as {producer:?}"));
        }
    }
    std::fs::write(&go, "1").expect("write");
    let child_saw = wait_for_file(&verdict, "the child's verdict");
    if child_saw != "Some(Dead) Ok(())" {
        wrong.push(format!("{backend:?}: the child saw the producer {child_saw} (want: Some(Dead) Ok(()))"));
    }
    match segment.producer() {
        Ok(_) => {}
        Err(e) => wrong.push(format!("{backend:?}: no new producer can attach here: {e}")),
    }
    wrong
}

fn a_forked_child_does_not_keep_its_dead_parents_role() {
    let backends = [Backend::Anon, Backend::Posix, Backend::Sysv, Backend::File];
    let wrong: Vec<String> = backends.iter().flat_map(|&b| run(b)).collect();
    shmring_tests::reliability::report(
        "fork_liveness",
        "a producer forks a child that attaches as consumer, then is killed with SIGKILL (anon, posix, sysv, file)",
        backends.len() as u64,
        if wrong.is_empty() {
            "pass: the child, this process and shmctl stat see the producer dead; a new producer attaches"
        } else {
            "failed"
        },
        &shmring_tests::ledger::Figures::NoRecords,
        json!({ "backends": backends.len(), "wrong": wrong.len() }),
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

fn main() {
    forked::main(&[(
        "a_forked_child_does_not_keep_its_dead_parents_role",
        a_forked_child_does_not_keep_its_dead_parents_role,
    )]);
}

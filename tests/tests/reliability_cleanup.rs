//! Cleanup that cannot cut off a live process, through the real `shmctl`.
//!
//! `shmctl unlink` and `shmctl gc` decide whether a segment is in use and then remove
//! its name. A test hook (`SHMRING_TEST_UNLINK_GATE`, shm-core's `fault-injection`
//! feature: `unlink_gate` in `crates/shm-core/src/segment.rs`) stops them exactly between the decision and the removal, and the test acts there:
//!
//! - `a_process_attaching_meanwhile_is_refused_or_keeps_its_segment`: a process opens
//!   the segment and attaches as its producer. Either the attach is refused (the role
//!   locks are held) and the segment removed, or it attaches and the segment stays;
//!   never attached and removed.
//! - `a_segment_recreated_meanwhile_is_never_removed`: the segment is removed and a new
//!   one created at the same name; the new one must survive.
//! - `liveness_unknown_is_not_dead`: a SysV segment with a live producer whose lock
//!   file was deleted: `unlink` refuses (69, saying why) without `--force`, `gc` keeps
//!   it and says why.
//!
//! Every backend with a name, [`TRIES`] times each, for both commands; `gc` is given
//! the segment's name, so it never touches other tests' segments.

// Its `checks!` macro is for tests per backend, which this file does not have.
#[allow(unused_macros)]
mod shmctl_support;

use std::path::PathBuf;

use serde_json::json;
use shm_core::{AttachError, Location, Segment};
use shmctl_support::{PATIENCE, UNAVAILABLE, assert_fails, attach, command, exists, name, shmctl, shmctl_on, target};
use shmring_tests::{Backend, Finished, Fixture, wait_until};

/// Runs of each race per backend and command.
const TRIES: u64 = 3;

const BACKENDS: [Backend; 3] = [Backend::Posix, Backend::Sysv, Backend::File];

/// `shmctl unlink NAME` or `shmctl gc --include-idle --dir DIR NAME`.
fn cleanup_args(fx: &Fixture, cmd: &str, location: &Location) -> Vec<String> {
    if cmd == "unlink" {
        let mut args = vec!["unlink".to_owned()];
        args.extend(target(location));
        return args;
    }
    let dir = fx.dir().display().to_string();
    vec!["gc".into(), "--include-idle".into(), "--dir".into(), dir, name(location)]
}

/// Runs `shmctl ARGS` stopped at the gate between its decision and its removal, calls
/// `meanwhile` there, then lets it go and waits for it.
fn race(fx: &Fixture, args: &[String], meanwhile: impl FnOnce()) -> Finished {
    let gate: PathBuf = fx.path("gate");
    let waiting = PathBuf::from(format!("{}.waiting", gate.display()));
    let proc = fx.spawn("shmctl", command(args).env("SHMRING_TEST_UNLINK_GATE", &gate));
    wait_until(PATIENCE, "shmctl reached the gate", || {
        fx.assert_running(&proc);
        waiting.exists()
    });
    meanwhile();
    std::fs::write(&gate, b"").expect("open the gate");
    fx.wait(&proc, PATIENCE)
}

fn create(location: &Location) -> Segment {
    Segment::builder(location.clone()).capacity(4096).create().expect("create")
}

#[test]
fn a_process_attaching_meanwhile_is_refused_or_keeps_its_segment() {
    let fx = Fixture::new("cleanup-attach-race");
    let (mut refused, mut kept, mut cut_off) = (0u64, 0u64, Vec::new());
    for cmd in ["unlink", "gc"] {
        for backend in BACKENDS {
            for _ in 0..TRIES {
                let location = fx.location(backend);
                drop(create(&location));
                let mut attached = None;
                let f = race(&fx, &cleanup_args(&fx, cmd, &location), || {
                    let segment = Segment::builder(location.clone()).open().expect("open");
                    attached = Some(segment.producer());
                });
                let removed = !exists(&location);
                match (attached.expect("the race ran"), removed) {
                    (Err(AttachError::RoleTaken { .. }), true) => refused += 1,
                    (Ok(_producer), false) => kept += 1,
                    (Ok(_producer), true) => cut_off.push(format!("{cmd} {location}: {}", f.stdout.trim())),
                    (other, removed) => panic!("{cmd} {location}: attach gave {other:?}, removed: {removed}\n{f:?}"),
                }
                if cmd == "unlink" && !removed {
                    assert_fails(&f, UNAVAILABLE, &["in use"]);
                }
            }
        }
    }
    let tries = 2 * BACKENDS.len() as u64 * TRIES;
    shmring_tests::reliability::report(
        "cleanup_vs_attach_race",
        "a process attaches between shmctl unlink/gc deciding a segment is unused and removing it (posix, sysv, file)",
        tries,
        if cut_off.is_empty() { "pass" } else { "failed" },
        &shmring_tests::ledger::Figures::NoRecords,
        json!({ "tries": tries, "attach_refused_segment_removed": refused, "attached_segment_kept": kept, "cut_off": cut_off.len() }),
    );
    assert!(cut_off.is_empty(), "removed under a process that attached meanwhile:\n{}", cut_off.join("\n"));
}

#[test]
fn a_segment_recreated_meanwhile_is_never_removed() {
    let fx = Fixture::new("cleanup-recreate-race");
    let mut removed_new = Vec::new();
    for cmd in ["unlink", "gc"] {
        for backend in BACKENDS {
            for _ in 0..TRIES {
                let location = fx.location(backend);
                drop(create(&location));
                let mut created_at = 0;
                let f = race(&fx, &cleanup_args(&fx, cmd, &location), || {
                    Segment::unlink(&location).expect("remove the old one");
                    created_at = create(&location).info().expect("info").created_unix_ns;
                });
                let survivor = Segment::builder(location.clone()).open().ok().and_then(|s| s.info().ok());
                if survivor.map(|i| i.created_unix_ns) != Some(created_at) {
                    removed_new.push(format!("{cmd} {location}: {} {}", f.stdout.trim(), f.stderr.trim()));
                } else if cmd == "unlink" {
                    assert_fails(&f, UNAVAILABLE, &["different segment"]);
                } else {
                    f.assert_success();
                    assert!(f.stdout.contains("re-created meanwhile"), "{}", f.stdout);
                }
            }
        }
    }
    let tries = 2 * BACKENDS.len() as u64 * TRIES;
    shmring_tests::reliability::report(
        "cleanup_vs_recreate_race",
        "the name is removed and re-created between shmctl unlink/gc deciding and removing (posix, sysv, file)",
        tries,
        if removed_new.is_empty() { "pass" } else { "failed" },
        &shmring_tests::ledger::Figures::NoRecords,
        json!({ "tries": tries, "new_segment_removed": removed_new.len() }),
    );
    assert!(removed_new.is_empty(), "removed a segment created meanwhile:\n{}", removed_new.join("\n"));
}

#[test]
fn liveness_unknown_is_not_dead() {
    let fx = Fixture::new("liveness-unknown");
    let location = fx.location(Backend::Sysv);
    let Location::Sysv(key) = &location else { unreachable!() };
    drop(create(&location));
    let _producer = attach(&fx, &location, "producer");
    std::fs::remove_file(shm_core::sysv_lock_path(*key)).expect("remove the lock file");
    let refused = shmctl_on(&fx, "unlink", &location, &[]);
    assert_fails(&refused, UNAVAILABLE, &[&name(&location), "cannot tell", "lock file", "--force"]);
    assert!(exists(&location), "unlink removed a segment whose liveness is unknown");
    let gc = shmctl(&fx, cleanup_args(&fx, "gc", &location));
    gc.assert_success();
    assert!(gc.stdout.contains("kept") && gc.stdout.contains("cannot tell"), "{}", gc.stdout);
    assert!(exists(&location), "gc removed a segment whose liveness is unknown");
    shmctl_on(&fx, "unlink", &location, &["--force"]).assert_success();
    assert!(!exists(&location));
    shmring_tests::reliability::report(
        "liveness_unknown_is_not_dead",
        "a SysV segment with a live producer whose lock file was removed (liveness unknown)",
        1,
        "pass: unlink refused (69) saying it cannot tell and naming the lock file and --force; gc kept it and said \
         why; unlink --force removed it",
        &shmring_tests::ledger::Figures::NoRecords,
        serde_json::Value::Null,
    );
}

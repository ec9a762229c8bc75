//! The SysV lock file (`/dev/shm/.shmring-sysv-<key>.lock`) cannot be squatted.
//!
//! SysV segments have no descriptor to lock, so participants lock bytes of a companion
//! file in the world-writable `/dev/shm`, where anyone can create it first. Whoever owns
//! that file can hold its locks (faking a live participant) or delete it (hiding them).
//! So a lock file another user made, or one that is not a regular file, is reported
//! with its owner's uid (exit 77) and left alone, at create and at open, and even root
//! does not silently replace or use it.
//!
//! Needs root (to make files owned by nobody, uid 65534); without it the test says why
//! and skips.

// Its `checks!` macro is for tests per backend, which this file does not have.
#[allow(unused_macros)]
mod shmctl_support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use serde_json::json;
use shm_core::{Location, OpenError, Segment};
use shmctl_support::{NO_PERM, assert_fails, exists, name, root_or_skip, shmctl_on};
use shmring_tests::{Backend, Fixture};

const NOBODY: u32 = 65534;

#[test]
fn a_squatted_sysv_lock_file_is_reported_and_left_alone() {
    if !root_or_skip("a_squatted_sysv_lock_file_is_reported_and_left_alone") {
        return;
    }
    let fx = Fixture::new("squat");
    let mut cases = 0;
    let sysv = |fx: &Fixture| {
        let location = fx.location(Backend::Sysv);
        let Location::Sysv(key) = &location else { unreachable!() };
        let lock = shm_core::sysv_lock_path(*key);
        fx.track_path(lock.clone());
        (location, lock)
    };
    let squat = |lock: &std::path::Path| {
        std::fs::write(lock, b"").expect("create the lock file first");
        std::os::unix::fs::lchown(lock, Some(NOBODY), Some(NOBODY)).expect("chown");
        std::fs::set_permissions(lock, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    };

    // Before create: the key's lock file is nobody's.
    let (location, lock) = sysv(&fx);
    squat(&lock);
    let f = shmctl_on(&fx, "create", &location, &["--capacity", "4KiB"]);
    assert_fails(&f, NO_PERM, &[&name(&location), "lock file", &format!("uid {NOBODY}")]);
    assert!(!exists(&location), "a failed create left the segment behind");
    assert_eq!(
        std::fs::symlink_metadata(&lock).expect("still there").uid(),
        NOBODY,
        "the squatter's file was replaced"
    );
    cases += 1;

    // Before create: a symbolic link at the lock path.
    let (location, lock) = sysv(&fx);
    std::os::unix::fs::symlink("/etc/passwd", &lock).expect("symlink");
    let f = shmctl_on(&fx, "create", &location, &["--capacity", "4KiB"]);
    assert_fails(&f, NO_PERM, &[&name(&location), "lock file", "symbolic link"]);
    assert!(!exists(&location));
    cases += 1;

    // After create: the lock file replaced by one of nobody's; inspecting and attaching
    // refuse it.
    let (location, lock) = sysv(&fx);
    drop(Segment::builder(location.clone()).capacity(4096).create().expect("create"));
    std::fs::remove_file(&lock).expect("remove ours");
    squat(&lock);
    assert_fails(&shmctl_on(&fx, "stat", &location, &[]), NO_PERM, &["lock file", &format!("uid {NOBODY}")]);
    assert_fails(&shmctl_on(&fx, "publish", &location, &["x"]), NO_PERM, &["lock file", &format!("uid {NOBODY}")]);
    match Segment::builder(location.clone()).open() {
        Err(OpenError::UntrustedLockFile { problem, .. }) => assert!(problem.contains("65534"), "{problem}"),
        other => panic!("open with a squatted lock file: expected UntrustedLockFile, got {other:?}"),
    }
    cases += 1;

    shmring_tests::reliability::report(
        "squatted_sysv_lock_file",
        "another user (uid 65534) or a symlink holds the SysV lock path before create, or replaces it after",
        cases,
        "pass: create, stat, publish and open refuse (77) naming the lock file and the uid; nothing replaced",
        &shmring_tests::ledger::Figures::NoRecords,
        json!({ "cases": cases }),
    );
}

/// A lock file of the right owner that every user may write is refused as well: anyone
/// could lock its bytes (a fake live participant). No root needed: it is our own file.
#[test]
fn a_world_writable_sysv_lock_file_is_refused() {
    let fx = Fixture::new("lock-mode");
    let location = fx.location(Backend::Sysv);
    let Location::Sysv(key) = &location else { unreachable!() };
    let lock = shm_core::sysv_lock_path(*key);
    fx.track_path(lock.clone());
    drop(Segment::builder(location.clone()).capacity(4096).create().expect("create the segment"));
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o666)).expect("chmod the lock file");
    let opened = Segment::builder(location.clone()).open();
    assert!(
        matches!(&opened, Err(OpenError::UntrustedLockFile { problem, .. }) if problem.contains("every user may write it")),
        "{opened:?}"
    );
    for (sub, extra) in [("stat", &[][..]), ("publish", &["x"][..])] {
        assert_fails(&shmctl_on(&fx, sub, &location, extra), NO_PERM, &["every user may write it", &name(&location)]);
    }
    assert_eq!(std::fs::metadata(&lock).expect("the lock file").mode() & 0o7777, 0o666, "the lock file was changed");
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o600)).expect("chmod the lock file back");
    Segment::builder(location.clone()).open().expect("open once the lock file is 0600 again");
    shmring_tests::reliability::report(
        "world_writable_sysv_lock_file",
        "the SysV lock file of our own segment made mode 0666",
        3,
        "pass: open, shmctl stat and publish refuse (77) saying every user may write it; the file is left as it was",
        &shmring_tests::ledger::Figures::NoRecords,
        serde_json::Value::Null,
    );
}

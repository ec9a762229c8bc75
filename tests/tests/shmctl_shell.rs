//! `shmctl` as people use it in shells.
//!
//! Pipelines: a reader that stops reading (`shmctl list --all | head
//! -1`) is not an error. Every subcommand that prints is run with its standard output a
//! pipe whose reading end is already closed, so its first write fails with `EPIPE`
//! whatever the timing: it must exit 0 and print nothing on stderr (before, `println!`
//! panicked: exit 101, "failed printing to stdout: Broken pipe"). Each is also run as
//! people type it, `... | head -c 1` under `bash -o pipefail`; `demo` among them removes
//! the segment its daemons made even when it stops at a closed pipe.
//!
//! Messages: a refusal by the OS says "permission denied" once, with what to do (not
//! "permission denied: Permission denied (os error 13)"), and a zero-filled file is "not
//! a shmring segment" (65), not "not initialised" (69).

// Its `checks!` macro is for tests per backend, which this file does not have.
#[allow(unused_macros)]
mod shmctl_support;

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use shm_core::Location;
use shmctl_support::{
    DATA, NO_PERM, PATIENCE, args_on, assert_fails, attach, command, create, exists, name, publish, root_or_skip,
    shmctl_as, shmctl_on,
};
use shmring_tests::{Backend, Fixture, Proc};

/// Runs `shmctl ARGS` with stdout a pipe nobody reads (its reading end closed first);
/// returns its exit status and stderr.
#[track_caller]
fn into_closed_pipe(fx: &Fixture, args: &[String]) -> (std::process::ExitStatus, String) {
    let (reader, writer): (OwnedFd, OwnedFd) = nix::unistd::pipe().expect("pipe");
    drop(reader);
    let stderr = fx.path("stderr");
    let mut child = command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("spawn shmctl");
    let deadline = std::time::Instant::now() + PATIENCE * 3;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("shmctl {} did not exit within {:?}", args.join(" "), PATIENCE * 3);
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    (status, std::fs::read_to_string(&stderr).unwrap_or_default())
}

/// Every subcommand that prints, on segments made for it in `fx` (each run needs its own:
/// `create` and `unlink` succeed once), and the posix segment `demo` runs on, which must be
/// gone after it. The returned consumer holds the ring's consumer role until dropped.
fn every_subcommand(fx: &Fixture) -> (Vec<Vec<String>>, Location, Proc) {
    let dir = fx.dir().display().to_string();
    let ring = fx.location(Backend::File);
    create(fx, &ring, &["--capacity", "64KiB"]);
    for i in 0..3 {
        publish(fx, &ring, &format!("record {i}"));
    }
    let fresh = fx.location(Backend::File);
    let gone = fx.location(Backend::File);
    create(fx, &gone, &["--capacity", "4KiB"]);
    let consumer = attach(fx, &ring, "consumer");
    let demo = fx.location(Backend::Posix);
    let cases: Vec<Vec<String>> = vec![
        args_on("create", &fresh, &["--capacity", "4KiB"]),
        args_on("stat", &ring, &[]),
        args_on("stat", &ring, &["--json"]),
        args_on("stat", &ring, &["--watch", "10ms"]),
        args_on("peek", &ring, &[]),
        args_on("peek", &ring, &["--hex"]),
        args_on("peek", &ring, &["--json"]),
        args_on("publish", &ring, &["one more"]),
        args_on("unlink", &gone, &[]),
        ["list", "--dir", &dir].map(String::from).to_vec(),
        ["list", "--all", "--dir", &dir].map(String::from).to_vec(),
        ["list", "--json", "--dir", &dir].map(String::from).to_vec(),
        ["gc", "--dry-run", "--dir", &dir].map(String::from).to_vec(),
        ["demo", "--seconds", "1", "--segment", &name(&demo)].map(String::from).to_vec(),
        ["completions", "bash"].map(String::from).to_vec(),
        ["bench", "--transports", "help"].map(String::from).to_vec(),
        ["--help"].map(String::from).to_vec(),
        ["stat", "--help"].map(String::from).to_vec(),
    ];
    (cases, demo, consumer)
}

/// Fails with every case that did not end quietly with 0, and if `demo` left its segment.
#[track_caller]
fn assert_all_quiet(how: &str, cases: &[Vec<String>], failed: &[String], demo: &Location) {
    assert!(
        failed.is_empty(),
        "{how}: {} of {} did not end quietly with 0:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n")
    );
    assert!(!exists(demo), "{how}: shmctl demo stopped early and left its segment {demo}");
}

#[test]
fn every_subcommand_ends_quietly_when_its_reader_is_gone() {
    let fx = Fixture::new("closed-pipe");
    let (cases, demo, _consumer) = every_subcommand(&fx);
    let mut failed = Vec::new();
    for args in &cases {
        let (status, stderr) = into_closed_pipe(&fx, args);
        if status.code() != Some(0) || !stderr.is_empty() {
            failed.push(format!("shmctl {}: {status}\n{}", args.join(" "), stderr.trim()));
        }
    }
    assert_all_quiet("into a closed pipe", &cases, &failed, &demo);
    report_quiet("closed_pipe_every_subcommand", "stdout a pipe whose reader closed before the first write", &cases);
}

/// The row of a pipeline test, once every case passed.
fn report_quiet(test: &str, fault: &str, cases: &[Vec<String>]) {
    let subcommands: std::collections::BTreeSet<&str> = cases.iter().map(|args| args[0].as_str()).collect();
    shmring_tests::reliability::report(
        test,
        fault,
        cases.len() as u64,
        &format!(
            "pass: every case ({}) exits 0 with nothing on stderr; demo leaves no segment",
            subcommands.into_iter().collect::<Vec<_>>().join(", ")
        ),
        &shmring_tests::ledger::Figures::NoRecords,
        serde_json::Value::Null,
    );
}

/// Every subcommand as people type it, `shmctl ... | head -c 1`, under `bash -o pipefail`
/// so that shmctl's own status is the pipeline's: `head` may be gone before the first
/// write or after a few, and either way shmctl exits 0, quietly, and `demo` removes its
/// segment (it started daemons that created it).
#[test]
fn every_subcommand_piped_into_head_exits_zero() {
    let fx = Fixture::new("head-pipe");
    for _ in 0..40 {
        create(&fx, &fx.location(Backend::File), &["--capacity", "4KiB"]);
    }
    let (cases, demo, _consumer) = every_subcommand(&fx);
    let shmctl = shmring_tests::fixture::binary("shmctl");
    let mut failed = Vec::new();
    for args in &cases {
        let quoted: Vec<String> = args.iter().map(|a| format!("'{}'", a.replace('\'', "'\\''"))).collect();
        let pipeline = format!("\"$SHMCTL\" {} | head -c 1", quoted.join(" "));
        let proc =
            fx.spawn("bash", Command::new("bash").args(["-o", "pipefail", "-c", &pipeline]).env("SHMCTL", &shmctl));
        let f = fx.wait(&proc, PATIENCE * 3);
        if !f.status.success() || !f.stderr.is_empty() || f.stdout.len() != 1 {
            failed.push(format!("{pipeline}: {} printed {:?}\n{}", f.status, f.stdout, f.stderr.trim()));
        }
    }
    assert_all_quiet("piped into head -c 1", &cases, &failed, &demo);
    report_quiet("head_pipe_every_subcommand", "shmctl ... | head -c 1 under bash -o pipefail", &cases);
}

/// Each permission refusal (open, remove, create) says so once, and what to do.
#[test]
fn permission_refusals_say_it_once_with_what_to_do() {
    if !root_or_skip("permission_refusals_say_it_once_with_what_to_do") {
        return;
    }
    let fx = Fixture::new("perm-once");
    let location = fx.location(Backend::Posix);
    create(&fx, &location, &["--capacity", "4KiB"]);
    let nobody = 65534;
    let open = shmctl_as(&fx, nobody, nobody, args_on("stat", &location, &[]));
    let remove = shmctl_as(&fx, nobody, nobody, args_on("unlink", &location, &["--force"]));
    // A directory others may enter but not write (the fixture's own is 0700).
    let dir = std::env::temp_dir().join(format!("shmring-t-perm-once-{}", std::process::id()));
    std::fs::create_dir(&dir).expect("mkdir");
    fx.track_path(dir.clone());
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let file = shm_core::Location::File(dir.join("ring"));
    let make = shmctl_as(&fx, nobody, nobody, args_on("create", &file, &["--capacity", "4KiB"]));
    for (f, hint) in [(&open, "run it as"), (&remove, "owner or root"), (&make, "write permission")] {
        f.assert_code(NO_PERM);
        let said = f.stderr.to_lowercase().matches("permission denied").count();
        assert_eq!(said, 1, "{}: says \"permission denied\" {said} times:\n{}", f.label, f.stderr);
        assert!(f.stderr.contains(hint), "{}: does not say what to do ({hint:?}):\n{}", f.label, f.stderr);
    }
    shmring_tests::reliability::report(
        "permission_refusal_said_once",
        "another user's stat, unlink --force and create in a directory it cannot write",
        3,
        "pass: each exits 77 and says \"permission denied\" exactly once, with what to do",
        &shmring_tests::ledger::Figures::NoRecords,
        serde_json::Value::Null,
    );
}

/// A zero-filled file the size of a segment never had a creator write a magic number:
/// not a shmring segment (65), and `unlink` wants `--force` for it.
#[test]
fn a_zero_filled_file_is_not_a_segment() {
    let fx = Fixture::new("zero-file");
    let location = fx.location(Backend::File);
    let shm_core::Location::File(path) = &location else { unreachable!() };
    std::fs::write(path, vec![0u8; 64 * 1024]).expect("write zeros");
    for args in [&["stat"][..], &["peek"], &["publish", "x"]] {
        let f = shmctl_on(&fx, args[0], &location, &args[1..]);
        assert_fails(&f, DATA, &["not a shmring segment"]);
    }
    assert_fails(&shmctl_on(&fx, "unlink", &location, &[]), DATA, &["--force"]);
    shmring_tests::reliability::report(
        "zero_filled_file_not_a_segment",
        "a zero-filled 64 KiB file given to stat, peek, publish and unlink",
        4,
        "pass: each exits 65 \"not a shmring segment\" (unlink asks for --force), never 69 \"not initialised\"",
        &shmring_tests::ledger::Figures::NoRecords,
        serde_json::Value::Null,
    );
}

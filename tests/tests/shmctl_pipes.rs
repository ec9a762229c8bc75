//! `shmctl` in shell pipelines: a reader that stops reading (`shmctl list --all | head
//! -1`) is not an error. Every subcommand that prints is run with its standard output a
//! pipe whose reading end is already closed, so its first write fails with `EPIPE`
//! whatever the timing: it must exit 0 and print nothing on stderr (before, `println!`
//! panicked: exit 101, "failed printing to stdout: Broken pipe"). Two are also run as
//! people type them, `... | head -c 1` under `bash -o pipefail`.

mod shmctl_support;

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use shmctl_support::{PATIENCE, args_on, attach, command, create, publish};
use shmring_tests::{Backend, Finished, Fixture};

/// Runs `shmctl ARGS` with stdout a pipe nobody reads (its reading end closed first).
#[track_caller]
fn into_closed_pipe(fx: &Fixture, args: &[String]) -> Finished {
    let (reader, writer): (OwnedFd, OwnedFd) = nix::unistd::pipe().expect("pipe");
    drop(reader);
    let stderr = fx.path("stderr");
    let mut cmd = command(args);
    cmd.stdin(Stdio::null()).stdout(Stdio::from(writer)).stderr(std::fs::File::create(&stderr).expect("stderr file"));
    let child = cmd.spawn().expect("spawn shmctl");
    let proc = fx.adopt(&format!("shmctl {}", args.join(" ")), child.id() as libc::pid_t);
    drop(cmd);
    let mut f = fx.wait(&proc, PATIENCE * 3);
    f.stderr = std::fs::read_to_string(&stderr).unwrap_or_default();
    f
}

#[test]
fn every_subcommand_ends_quietly_when_its_reader_is_gone() {
    let fx = Fixture::new("closed-pipe");
    let dir = fx.dir().display().to_string();
    let ring = fx.location(Backend::File);
    create(&fx, &ring, &["--capacity", "64KiB"]);
    for i in 0..3 {
        publish(&fx, &ring, &format!("record {i}"));
    }
    let fresh = fx.location(Backend::File);
    let gone = fx.location(Backend::File);
    create(&fx, &gone, &["--capacity", "4KiB"]);
    let _consumer = attach(&fx, &ring, "consumer");
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
        ["completions", "bash"].map(String::from).to_vec(),
        ["bench", "--transports", "help"].map(String::from).to_vec(),
        ["--help"].map(String::from).to_vec(),
        ["stat", "--help"].map(String::from).to_vec(),
    ];
    let mut failed = Vec::new();
    for args in &cases {
        let f = into_closed_pipe(&fx, args);
        if f.status.code() != Some(0) || !f.stderr.is_empty() {
            failed.push(format!("shmctl {}: {}\n{}", args.join(" "), f.status, f.stderr.trim()));
        }
    }
    assert!(failed.is_empty(), "{} of {} did not end quietly with 0:\n{}", failed.len(), cases.len(), failed.join("\n"));
}

#[test]
fn piped_into_head_exits_zero() {
    let fx = Fixture::new("head-pipe");
    let dir = fx.dir().display().to_string();
    for _ in 0..40 {
        create(&fx, &fx.location(Backend::File), &["--capacity", "4KiB"]);
    }
    let shmctl = shmring_tests::fixture::binary("shmctl");
    for pipeline in [format!("\"$SHMCTL\" list --all --dir {dir} | head -c 1"), "\"$SHMCTL\" completions bash | head -c 1".into()]
    {
        let proc = fx.spawn(
            "bash",
            Command::new("bash").args(["-o", "pipefail", "-c", &pipeline]).env("SHMCTL", &shmctl),
        );
        let f = fx.wait(&proc, PATIENCE);
        assert!(f.status.success() && f.stderr.is_empty(), "{pipeline}: {}\n{}", f.status, f.stderr);
        assert_eq!(f.stdout.len(), 1, "{pipeline} printed {:?}", f.stdout);
    }
}

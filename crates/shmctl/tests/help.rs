//! Every subcommand's `--help` works and shows an example; bad usage exits 64.

use std::process::Command;

fn shmctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shmctl")).args(args).output().expect("runs")
}

#[test]
fn every_subcommand_has_help_with_an_example() {
    for sub in ["create", "stat", "list", "unlink", "gc", "publish", "peek", "demo", "completions"] {
        let out = shmctl(&[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help failed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Examples:") && text.contains("shmctl "), "{sub} --help has no example:\n{text}");
    }
}

#[test]
fn bad_usage_exits_64() {
    let out = shmctl(&["stat"]);
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    let out = shmctl(&["create", "/x", "--capacity", "lots"]);
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--capacity"));
}

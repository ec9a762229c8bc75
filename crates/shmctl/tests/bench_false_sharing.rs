//! `shmctl bench false-sharing` runs end to end, writes its JSON, and refuses bad input with 64.
//! Ratios are printed, never asserted: the machine is shared and noisy.

use std::path::PathBuf;
use std::process::{Command, Output};

fn shmctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shmctl")).args(args).output().expect("runs")
}

/// A JSON path unique to this test process and `tag`, removed when dropped.
struct TempJson(PathBuf);

impl TempJson {
    fn new(tag: &str) -> TempJson {
        TempJson(std::env::temp_dir().join(format!("shmctl-false-sharing-{}-{tag}.json", std::process::id())))
    }
}

impl Drop for TempJson {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run_and_read(tag: &str, extra: &[&str]) -> serde_json::Value {
    let json = TempJson::new(tag);
    let path = json.0.to_str().expect("UTF-8 temp path");
    let mut args = vec!["bench", "false-sharing", "--duration", "50ms", "--reps", "1", "--json", path];
    args.extend_from_slice(extra);
    let out = shmctl(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?} failed: {:?}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    let text = std::fs::read_to_string(&json.0).expect("JSON written");
    let value: serde_json::Value = serde_json::from_str(&text).expect("JSON parses");
    assert_eq!(value["schema"], 1);
    let threads = value["threads"].as_u64().expect("threads");
    assert!(threads >= 2, "default is at least 2 workers: {value}");
    assert_eq!(value["pinned"].as_array().expect("pinned").len() as u64, threads);
    assert_eq!(value["reps"].as_array().expect("reps").len(), 1);
    for key in ["median_packed", "median_padded", "median_ratio"] {
        let figure = value[key].as_f64().unwrap_or_else(|| panic!("{key} is a number: {value}"));
        assert!(figure > 0.0, "{key} = {figure}");
    }
    assert!(stdout.contains("padded is "), "no reading sentence:\n{stdout}");
    value
}

#[test]
fn threads_run_and_write_json() {
    let value = run_and_read("threads", &[]);
    assert_eq!(value["workers"], "threads");
}

#[test]
fn plain_processes_run_and_write_json() {
    let value = run_and_read("processes", &["--processes", "--plain"]);
    assert_eq!(value["workers"], "processes");
}

#[test]
fn zero_threads_or_duration_is_a_usage_error() {
    for (args, names) in [(["--threads", "0"], "--threads"), (["--duration", "0"], "--duration")] {
        let out = shmctl(&[&["bench", "false-sharing"][..], &args[..]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(names), "{args:?}: the message does not name {names}: {stderr}");
    }
}

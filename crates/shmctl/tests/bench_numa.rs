//! `shmctl bench numa` end to end: on this machine's topology it either compares local
//! and remote memory or says it cannot and measures nothing (exit 0 either way, JSON to
//! match); `--local-only` runs the measurement on any machine; bad input exits 64.
//! Throughputs are printed and checked for being real numbers, never compared: the
//! machine is shared and noisy.

use std::path::PathBuf;
use std::process::{Command, Output};

fn shmctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shmctl")).args(args).output().expect("runs")
}

/// A JSON path unique to this test process and `tag`, removed when dropped.
struct TempJson(PathBuf);

impl Drop for TempJson {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run_and_read(tag: &str, extra: &[&str]) -> (String, serde_json::Value) {
    let json = TempJson(std::env::temp_dir().join(format!("shmctl-numa-{}-{tag}.json", std::process::id())));
    let path = json.0.to_str().expect("UTF-8 temp path");
    let mut args = vec!["bench", "numa", "--duration", "200ms", "--copy-size", "8MiB", "--json", path];
    args.extend_from_slice(extra);
    let out = shmctl(&args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?}: {:?}\n{stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
    println!("{stdout}");
    let text = std::fs::read_to_string(&json.0).expect("JSON written");
    (stdout, serde_json::from_str(&text).expect("valid JSON"))
}

// The workspace's one way of skipping (its `root_or_skip` is not needed here).
#[allow(dead_code)]
#[path = "../../../tests/skip.rs"]
mod skip;

#[test]
fn compares_nodes_or_says_it_cannot() {
    let (stdout, json) = run_and_read("default", &[]);
    if shm_core::placement::memory_nodes().expect("the node list").len() < 2 {
        let reason = "one NUMA node: the one-node answer is checked, the local-vs-remote comparison cannot run";
        skip::skip("compares_nodes_or_says_it_cannot (two nodes)", skip::Need::Hardware, reason);
        assert!(stdout.contains("a local-vs-remote comparison needs two"), "{stdout}");
        assert!(stdout.contains("nothing measured"), "{stdout}");
        assert_eq!(json["measured"], false, "{json:#}");
        assert!(json["results"].as_array().is_some_and(Vec::is_empty), "{json:#}");
    } else {
        assert_eq!(json["measured"], true, "{json:#}");
        assert!(json["ratios"].as_array().is_some_and(|r| !r.is_empty()), "{json:#}");
        assert!(stdout.contains("(remote)"), "{stdout}");
    }
}

#[test]
fn local_only_measures_on_any_machine() {
    let (stdout, json) = run_and_read("local", &["--local-only", "--size", "256"]);
    assert_eq!(json["measured"], true, "{json:#}");
    let results = json["results"].as_array().expect("results");
    assert_eq!(results.len(), 1, "{json:#}");
    assert_eq!(results[0]["local"], true);
    for key in ["stream_records_per_s", "stream_gb_per_s", "copy_gb_per_s"] {
        let value = results[0][key].as_f64().unwrap_or(0.0);
        assert!(value.is_finite() && value > 0.0, "{key} = {value}: {json:#}");
    }
    assert!(stdout.contains("(local)"), "{stdout}");
}

#[test]
fn bad_input_exits_64() {
    for args in [&["--size", "0"][..], &["--local-only", "--size", "1MiB"], &["--capacity", "3000", "--local-only"]] {
        let out = shmctl(&[&["bench", "numa", "--duration", "50ms"][..], args].concat());
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

//! Test support both daemons use in their own tests (feature `testing`): the config
//! fuzz target as a proptest strategy, and the check of the shipped configs through a
//! daemon's real binary.

use std::path::Path;
use std::process::{Command, Output};

use proptest::prelude::*;

use crate::config::ConfigError;

/// Config files made of real keys and sections with values of every type, plus noise.
pub fn config_text() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "name",
        "backend",
        "capacity",
        "max_record",
        "mode",
        "group",
        "create",
        "wait",
        "flush",
        "wait_for_segment",
        "owner",
        "on_unlinked",
        "numa_node",
        "hugepages",
        "prefault",
        "cpu_affinity",
        "kind",
        "on_full",
        "rate",
        "count",
        "min_size",
        "max_size",
        "format",
        "bind",
        "path",
        "fsync",
        "target",
        "state",
        "drain_timeout",
        "undeliverable_after",
        "on_undeliverable",
        "lossy",
        "worker_id",
        "consumer_name",
        "producer_id",
        "level",
        "listen",
        "bogus",
    ]);
    let values = prop::sample::select(vec![
        "\"/ring\"",
        "\"nope\"",
        "\"posix\"",
        "\"sysv\"",
        "\"file\"",
        "\"64KiB\"",
        "\"3000\"",
        "4096",
        "-1",
        "true",
        "\"0600\"",
        "\"0666\"",
        "\"never\"",
        "\"generator\"",
        "\"udp\"",
        "\"verify\"",
        "\"broadcast\"",
        "\"mpmc\"",
        "\"skip_and_count\"",
        "\"1s\"",
        "\"x\"",
        "[1, 2]",
        "[0]",
        "[4096]",
        "0",
        "false",
        "{ a = 1 }",
        "\"127.0.0.1:9000\"",
        "1e99",
        "\"\"",
    ]);
    let sections =
        prop::sample::select(vec!["[segment]", "[source]", "[sink]", "[shutdown]", "[log]", "[metrics]", "[x]"]);
    let line = prop_oneof![
        (keys, values).prop_map(|(k, v)| format!("{k} = {v}")),
        sections.prop_map(str::to_owned),
        "[ -~]{0,40}",
    ];
    prop::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
}

/// Panics unless a refused config's error says where it is wrong: a line, or a key path.
pub fn assert_config_error_says_where(text: &str, error: Option<ConfigError>) {
    if let Some(e) = error {
        let message = e.to_string();
        assert!(
            message.contains("line ") || message.contains('.') || message.contains("required"),
            "an error that does not say where: {message}\n---\n{text}"
        );
    }
}

fn check(binary: &Path, config: &Path) -> Output {
    Command::new(binary).arg("--check-config").arg("--config").arg(config).output().expect("the daemon runs")
}

/// Every `config/*.toml` in `config_dir` passes `BINARY --check-config`, and a config
/// with an unknown key exits 78 naming the key and its line.
pub fn check_shipped_configs(binary: &Path, config_dir: &Path) {
    let mut checked = 0;
    for entry in std::fs::read_dir(config_dir).expect("config/ exists") {
        let path = entry.expect("readable").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = check(binary, &path);
            assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
            checked += 1;
        }
    }
    assert!(checked >= 3, "expected the shipped configs, found {checked}");
    let dir = std::env::temp_dir().join(format!("shmring-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[segment]\nname = \"/x\"\nbogus_key = 1\n").expect("write");
    let out = check(binary, &path);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(78));
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(message.contains("bogus_key") && message.contains("line 3"), "{message}");
}

//! Every shipped config in `config/` is accepted by `consumerd --check-config`, and a broken one
//! is refused with exit 78 and a message naming the key and its line.

use std::path::Path;
use std::process::Command;

fn check(config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_consumerd"))
        .arg("--check-config")
        .arg("--config")
        .arg(config)
        .output()
        .expect("runs")
}

#[test]
fn every_shipped_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("config/ exists") {
        let path = entry.expect("readable").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = check(&path);
            assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
            checked += 1;
        }
    }
    assert!(checked >= 3, "expected the shipped configs, found {checked}");
}

#[test]
fn an_unknown_key_is_refused_with_its_name_and_line() {
    let dir = std::env::temp_dir().join(format!("consumerd-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[segment]\nname = \"/x\"\nbogus_key = 1\n").expect("write");
    let out = check(&path);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(78));
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(message.contains("bogus_key") && message.contains("line 3"), "{message}");
}

//! Every shipped config in `config/` is accepted by `producerd --check-config`, and a broken one
//! is refused with exit 78 and a message naming the key and its line.

#[test]
fn shipped_configs_are_valid_and_errors_name_key_and_line() {
    let config_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    shm_daemon::testing::check_shipped_configs(std::path::Path::new(env!("CARGO_BIN_EXE_producerd")), &config_dir);
}

//! tracing setup, level from config or `RUST_LOG`, and a handle to change the level on
//! reload.
//!
//! Where the lines go:
//! - **Under systemd**, when stderr is the journal, natively to journald (the
//!   tracing-journald layer): each line keeps its priority (`error` 3, `warn` 4, `info` 6,
//!   `debug` and `trace` 7, so `journalctl -p warning` finds the warnings), each event field
//!   becomes a journal field of the same name in capitals (`path = ...` is `PATH=`), and
//!   every line carries `SEGMENT=` with the daemon's segment, so `journalctl
//!   SEGMENT=/high_perf_ring` finds all of a segment's lines whichever thread logged them.
//!   "Stderr is the journal" is systemd's own test (systemd.exec(5), `$JOURNAL_STREAM`): the
//!   variable holds `DEVICE:INODE` of the stream it connected, and stderr's `fstat` matches
//!   it. A variable inherited by a child whose stderr was redirected no longer matches.
//! - **Elsewhere** (or if the journal socket cannot be reached), human or JSON lines on
//!   stderr, as `[log] format` says.

use std::ffi::OsStr;

use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::LogSettings;

/// Changes the log level of a running daemon.
pub struct LogHandle {
    handle: reload::Handle<EnvFilter, Registry>,
    from_env: bool,
}

/// Installs the global subscriber. `RUST_LOG`, when set, wins over the config. `segment`
/// (the segment's location as logged elsewhere) is the `SEGMENT=` field of every journal entry.
pub fn init(settings: &LogSettings, segment: &str) -> LogHandle {
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let filter = if from_env { EnvFilter::from_default_env() } else { EnvFilter::new(&settings.level) };
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let journal_error = if logs_to_journal() {
        match tracing_journald::layer() {
            Ok(journal) => {
                let journal = journal
                    // Field names as the code spells them (capitalised), not F_-prefixed.
                    .with_field_prefix(None)
                    .with_priority_mappings(PriorityMappings {
                        error: Priority::Error,
                        warn: Priority::Warning,
                        info: Priority::Informational,
                        debug: Priority::Debug,
                        trace: Priority::Debug,
                    })
                    .with_custom_fields([("SEGMENT", segment)]);
                registry.with(journal).init();
                return LogHandle { handle, from_env };
            }
            Err(e) => Some(e),
        }
    } else {
        None
    };
    // Colour only on a terminal: the journal and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(ansi);
    if settings.json {
        registry.with(fmt.json()).init();
    } else {
        registry.with(fmt).init();
    }
    if let Some(error) = journal_error {
        tracing::warn!(%error, "stderr is the journal but its socket cannot be reached; logging text to stderr");
    }
    LogHandle { handle, from_env }
}

/// Whether stderr is the journal (systemd's `$JOURNAL_STREAM` test, see the module docs).
fn logs_to_journal() -> bool {
    stderr_is_journal(std::env::var_os("JOURNAL_STREAM").as_deref(), stderr_device_inode())
}

/// What starts an error line written straight to stderr before logging is set up: the
/// journal's `<3>` (sd-daemon(3) priority prefix, `err`) when stderr is the journal, so
/// `journalctl -p err` finds it; nothing elsewhere.
pub fn error_prefix() -> &'static str {
    if logs_to_journal() { "<3>" } else { "" }
}

/// Whether `$JOURNAL_STREAM` (`DEVICE:INODE`, decimal) names the stream that stderr is,
/// given stderr's device and inode. Anything malformed means no.
fn stderr_is_journal(journal_stream: Option<&OsStr>, stderr: Option<(u64, u64)>) -> bool {
    let (Some(value), Some(stderr)) = (journal_stream.and_then(OsStr::to_str), stderr) else {
        return false;
    };
    let Some((device, inode)) = value.split_once(':') else {
        return false;
    };
    matches!((device.parse::<u64>(), inode.parse::<u64>()), (Ok(d), Ok(i)) if (d, i) == stderr)
}

/// Device and inode of what stderr is connected to, if it is open.
fn stderr_device_inode() -> Option<(u64, u64)> {
    let stat = nix::sys::stat::fstat(std::io::stderr()).ok()?;
    Some((stat.st_dev, stat.st_ino))
}

impl LogHandle {
    /// Applies a reloaded `[log]` level (unless `RUST_LOG` set it).
    pub fn set_level(&self, level: &str) {
        if !self.from_env {
            let _ = self.handle.modify(|f| *f = EnvFilter::new(level));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn device_inode(meta: &std::fs::Metadata) -> (u64, u64) {
        (meta.dev(), meta.ino())
    }

    #[test]
    fn journal_stream_matches_only_the_stream_it_names() {
        let dir = std::env::temp_dir();
        let file = TempFile::new(&dir, "a");
        let other = TempFile::new(&dir, "b");
        let (dev, ino) = device_inode(&file.metadata());
        let named = format!("{dev}:{ino}");
        let stream = Some((dev, ino));
        assert!(stderr_is_journal(Some(OsStr::new(&named)), stream));
        // A child whose stderr was redirected elsewhere inherits the variable: no match.
        assert!(!stderr_is_journal(Some(OsStr::new(&named)), Some(device_inode(&other.metadata()))));
        assert!(!stderr_is_journal(None, stream), "no JOURNAL_STREAM");
        assert!(!stderr_is_journal(Some(OsStr::new(&named)), None), "stderr closed");
        for malformed in ["", ":", "12", &format!("{dev}:"), &format!(":{ino}"), &format!("{dev}:{ino}x"), "a:b"] {
            assert!(!stderr_is_journal(Some(OsStr::new(malformed)), stream), "{malformed:?}");
        }
    }

    #[test]
    fn stderr_device_inode_is_what_fstat_of_fd_2_says() {
        // Whatever the test harness connected stderr to, the detection reads that.
        let meta = std::fs::metadata("/proc/self/fd/2").unwrap();
        assert_eq!(stderr_device_inode(), Some(device_inode(&meta)));
    }

    /// A file of this test's own, removed on drop.
    struct TempFile(std::path::PathBuf, std::fs::File);

    impl TempFile {
        fn new(dir: &std::path::Path, tag: &str) -> Self {
            let path = dir.join(format!("shm-daemon-logging-{}-{tag}", std::process::id()));
            let file = std::fs::File::create(&path).unwrap();
            TempFile(path, file)
        }

        fn metadata(&self) -> std::fs::Metadata {
            self.1.metadata().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

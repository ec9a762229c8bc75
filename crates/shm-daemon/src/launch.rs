//! What both daemons' `main` does around their own work: find and load the config
//! (exit 78 with the message on error), answer `--check-config`, start logging, run,
//! and map the outcome to an exit code.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use crate::config::{ConfigError, LogSettings, SegmentSettings, Source, find};
use crate::exit;
use crate::logging::{self, LogHandle};

/// Loads the config the search path finds (`--config`, `./config/<daemon>.toml`,
/// `/etc/shmring/<daemon>.toml`, else `embedded`), validated by `parse`.
pub fn load<S>(
    daemon: &str,
    config: Option<&Path>,
    embedded: &str,
    parse: impl Fn(&Source) -> Result<S, ConfigError>,
) -> Result<(S, String), ConfigError> {
    let source = match find(config, daemon) {
        Some(path) => Source::read(&path)?,
        None => Source::embedded(embedded),
    };
    Ok((parse(&source)?, source.label))
}

/// Runs a daemon: loads its settings, answers `--check-config`, starts logging (with
/// what `log_and_segment` picks from the settings: `[log]`, and the segment every line is about),
/// calls `run` and turns its result into the exit code.
pub fn main<S>(
    daemon: &str,
    check_only: bool,
    load: impl FnOnce() -> Result<(S, String), ConfigError>,
    log_and_segment: impl Fn(&S) -> (&LogSettings, &SegmentSettings),
    run: impl FnOnce(S, LogHandle) -> anyhow::Result<u8>,
) -> ExitCode {
    let (settings, origin) = match load() {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{}{daemon}: {e}", logging::error_prefix());
            return ExitCode::from(exit::CONFIG);
        }
    };
    let test_hooks = crate::test_hooks::describe_set();
    if check_only {
        if let Some(hooks) = test_hooks {
            eprintln!("{daemon}: {hooks}");
        }
        println!("{daemon}: config OK ({origin})");
        return ExitCode::SUCCESS;
    }
    let (log_settings, segment) = log_and_segment(&settings);
    let log = logging::init(log_settings, &segment.location.to_string());
    if let Some(hooks) = test_hooks {
        tracing::warn!("{hooks}");
    }
    match run(settings, log) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(exit::code_of(&e))
        }
    }
}

/// A `STATUS=` line maker for the service loop: `describe(total, per_second)` where
/// `total` is a counter the ring thread bumps.
pub fn rate_status<T: Send + Sync + 'static>(
    shared: Arc<T>,
    counter: fn(&T) -> &AtomicU64,
    describe: impl Fn(u64, f64) -> String + 'static,
) -> Box<dyn FnMut() -> String> {
    let mut last: Option<(Instant, u64)> = None;
    Box::new(move || {
        let now = (Instant::now(), counter(&shared).load(std::sync::atomic::Ordering::Relaxed));
        // No rate on the first call: there is no interval to measure yet.
        let rate =
            last.map_or(0.0, |(t, n)| now.1.saturating_sub(n) as f64 / now.0.duration_since(t).as_secs_f64().max(1e-3));
        last = Some(now);
        describe(now.1, rate)
    })
}

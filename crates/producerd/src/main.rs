//! `producerd`: moves records from a source into a shmring ring, under systemd.
//!
//! Exit codes: see `shm_daemon::exit` (0 clean, 1 other, 66 no segment, 69 role taken,
//! 77 permission, 78 config).

mod config;
mod daemon;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Result;
use clap::Parser;
use shm_daemon::config::Source;
use shm_daemon::{exit, logging, metrics};
use tracing::{error, info, warn};

/// Moves records from a source (generator, stdin, UDP, Unix socket) into a shmring ring.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Config search: --config FILE, ./config/producerd.toml, /etc/shmring/producerd.toml, \
else the embedded default (a generator on /high_perf_ring).\nSignals: SIGTERM/SIGINT stop (committing what was taken in), \
SIGHUP reloads the log level and the generator rate.\nExit codes: 0 clean, 1 other, 66 no segment, 69 a producer is already \
attached, 77 permission, 78 config."
)]
struct Args {
    /// Config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Check the config and exit (0 when valid, 78 when not).
    #[arg(long)]
    check_config: bool,
}

fn load(args: &Args) -> Result<config::Settings, shm_daemon::config::ConfigError> {
    let source = match shm_daemon::config::find(args.config.as_deref(), "producerd") {
        Some(path) => Source::read(&path)?,
        None => Source::embedded(config::EMBEDDED),
    };
    config::load(&source)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let settings = match load(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("producerd: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    if args.check_config {
        println!("producerd: config OK ({})", settings.origin);
        return ExitCode::SUCCESS;
    }
    let log = logging::init(&settings.log);
    match run(&args, settings, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::from(exit::code_of(&e))
        }
    }
}

fn run(args: &Args, settings: config::Settings, log: logging::LogHandle) -> Result<()> {
    let segment = shm_daemon::segment::open(&settings.segment)?;
    let producer = segment.producer_with(settings.segment.wait)?;
    let shared = Arc::new(daemon::Shared::default());
    if let config::SourceKind::Generator { rate, .. } = settings.source {
        shared.rate.store(rate, Ordering::Relaxed);
    }
    info!(segment = %segment.location(), config = %settings.origin, source = ?settings.source, "producer attached");
    let ring = {
        let (shared, segment, source) = (shared.clone(), segment.clone(), settings.source.clone());
        let drop_when_full = settings.drop_when_full;
        std::thread::Builder::new()
            .name("ring".into())
            .spawn(move || daemon::run(producer, segment, source, drop_when_full, shared))?
    };
    let name = segment.location().to_string();
    let metrics = settings.metrics.map(|addr| {
        let (segment, shared, name) = (segment.clone(), shared.clone(), name.clone());
        let render: metrics::Render = Arc::new(move || {
            let mut out = metrics::segment_lines(&name, &segment.stats());
            out += &metrics::daemon_line("producerd", "committed_total", shared.committed.load(Ordering::Relaxed));
            out += &metrics::daemon_line("producerd", "dropped_total", shared.dropped.load(Ordering::Relaxed));
            out +=
                &metrics::daemon_line("producerd", "source_errors_total", shared.source_errors.load(Ordering::Relaxed));
            out
        });
        (addr, render)
    });
    let status = {
        let shared = shared.clone();
        let mut last = (std::time::Instant::now(), 0u64);
        Box::new(move || {
            let now = (std::time::Instant::now(), shared.committed.load(Ordering::Relaxed));
            let rate = (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64().max(1e-3);
            last = now;
            format!("{} records committed, {rate:.0}/s, {} dropped", now.1, shared.dropped.load(Ordering::Relaxed))
        })
    };
    let reload = {
        let (shared, current) = (shared.clone(), settings.clone());
        let config_path = args.config.clone();
        Box::new(move || {
            let args = Args { config: config_path.clone(), check_config: false };
            match load(&args) {
                Err(e) => warn!("reload failed, keeping the running config: {e}"),
                Ok(new) => {
                    log.set_level(&new.log.level);
                    if let config::SourceKind::Generator { rate, .. } = new.source {
                        shared.rate.store(rate, Ordering::Relaxed);
                    }
                    if new.segment.location != current.segment.location
                        || std::mem::discriminant(&new.source) != std::mem::discriminant(&current.source)
                    {
                        warn!("segment or source kind changed in the config: that takes a restart");
                    }
                    info!(level = %new.log.level, "config reloaded");
                }
            }
        })
    };
    let service = shm_daemon::service::Service {
        stop: shared.stop.clone(),
        heartbeat: shared.heartbeat.clone(),
        metrics,
        status,
        reload,
    };
    service.run(ring)??;
    info!(
        committed = shared.committed.load(Ordering::Relaxed),
        dropped = shared.dropped.load(Ordering::Relaxed),
        source_errors = shared.source_errors.load(Ordering::Relaxed),
        "stopped"
    );
    Ok(())
}

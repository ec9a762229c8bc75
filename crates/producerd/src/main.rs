//! `producerd`: moves records from a source into a shmring ring, under systemd.
//!
//! Exit codes: see `shm_daemon::exit` (0 clean, 1 other, 66 no segment, 69 role taken,
//! 77 permission, 78 config).

mod config;
mod daemon;
mod ledger;
mod nats_source;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context as _, Result, bail};
use clap::{CommandFactory, Parser};
use shm_core::{RingKind, Role, Segment};
use shm_daemon::service::{Ended, Reloaded, Service, StopRequested, Waiting};
use shm_daemon::{exit, launch, logging, metrics};
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

fn load(config: Option<&Path>) -> Result<(config::Settings, String), shm_daemon::config::ConfigError> {
    launch::load("producerd", config, config::EMBEDDED, config::load)
}

fn main() -> ExitCode {
    if let Some(code) = cli_docs::write_if_asked(Args::command) {
        return code;
    }
    let args = Args::parse();
    launch::main(
        "producerd",
        args.check_config,
        || load(args.config.as_deref()),
        |s| (&s.log, &s.segment),
        |settings, log| run(&args, settings, log),
    )
}

fn run(args: &Args, settings: config::Settings, log: logging::LogHandle) -> Result<u8> {
    let log = Arc::new(log);
    let shared = Arc::new(daemon::Shared::default());
    if let config::SourceKind::Generator { rate, .. } = settings.source {
        shared.rate.store(rate, Ordering::Relaxed);
    }
    shared.drop_when_full.store(settings.drop_when_full, Ordering::Relaxed);
    let mut source = daemon::open(&settings.source)?;
    let mut requests = shm_daemon::signals::listen().context("installing signal handlers")?;
    loop {
        let segment = match shm_daemon::segment::open(&settings.segment, &mut Waiting::new(&mut requests)) {
            Ok(segment) => segment,
            Err(e) if e.is::<StopRequested>() => break,
            Err(e) => return Err(e),
        };
        let producer = attach(&segment, &settings)?;
        shared.stop.store(false, Ordering::Relaxed);
        info!(
            segment = %segment.location(),
            config = %settings.origin,
            source = settings.source.kind(),
            kind = segment.geometry().kind.name(),
            producer_id = settings.producer_id,
            "producer attached"
        );
        let ring = {
            let (shared, segment) = (shared.clone(), segment.clone());
            let cpus = settings.cpu_affinity.clone();
            std::thread::Builder::new().name("ring".into()).spawn(move || {
                let result = daemon::run(producer, segment, &mut source, cpus.as_ref(), shared);
                (source, result)
            })?
        };
        let service = service(args, &settings, &segment, &shared, &log);
        let (ended, (returned, result)) = service.run(ring, &mut requests)?;
        source = returned;
        result?;
        if ended != Ended::Unlinked {
            break;
        }
        error!(segment = %segment.location(), "the segment was unlinked while in use: nothing can reach what is written there");
        if !settings.segment.recreate_when_unlinked {
            return Ok(exit::UNLINKED);
        }
        info!(segment = %segment.location(), "re-creating it (on_unlinked = \"recreate\")");
    }
    let (records, bytes) = source.uncommitted();
    if bytes > 0 {
        warn!(records, bytes, "stopping with input taken in and not committed: dropped, and counted as source errors");
        shared.source_errors.fetch_add(records, Ordering::Relaxed);
    }
    info!(
        committed = shared.committed.load(Ordering::Relaxed),
        dropped = shared.dropped.load(Ordering::Relaxed),
        source_errors = shared.source_errors.load(Ordering::Relaxed),
        "stopped"
    );
    Ok(exit::OK)
}

/// Attaches as the segment's producer, of its kind (`segment::open` checked that it is
/// the configured one, and the config that an mpsc or mpmc ring has a `producer_id`).
fn attach(segment: &Segment, settings: &config::Settings) -> Result<daemon::RingProducer> {
    Ok(match (segment.geometry().kind, settings.producer_id) {
        (RingKind::Spsc, _) => daemon::RingProducer::Spsc(segment.producer_with(settings.segment.wait)?),
        (RingKind::Mpsc | RingKind::Mpmc, Some(id)) => {
            // An mpmc ring's producers are mpsc's.
            let mut producer = segment.mpsc_producer(id)?;
            producer.set_wait_strategy(settings.segment.wait);
            daemon::RingProducer::Mpsc(producer)
        }
        (kind @ (RingKind::Mpsc | RingKind::Mpmc), None) => {
            bail!("source.producer_id: required for an {} ring", kind.name())
        }
        (RingKind::Broadcast, _) => daemon::RingProducer::Broadcast(segment.broadcast_producer()?, Vec::new()),
    })
}

/// The service loop's view of this daemon: metrics, status, reload, unlink check.
fn service(
    args: &Args,
    settings: &config::Settings,
    segment: &Segment,
    shared: &Arc<daemon::Shared>,
    log: &Arc<logging::LogHandle>,
) -> Service {
    let name = segment.location().to_string();
    let metrics = settings.metrics.map(|addr| {
        let (segment, shared, name) = (segment.clone(), shared.clone(), name.clone());
        let participant =
            metrics::Participant::of(segment.geometry().kind, Role::Producer, settings.producer_id, None, None);
        let exposition = metrics::Exposition::new(&name, Role::Producer, participant.as_ref(), {
            let participant = participant.clone();
            move || {
                let mut readings = match &participant {
                    Some(p) => p.readings(&segment),
                    None => metrics::segment_readings(&segment.stats(), Role::Producer),
                };
                readings.extend([
                    metrics::Reading::counter(
                        "producerd_records_committed",
                        "Records this daemon committed",
                        shared.committed.load(Ordering::Relaxed),
                    ),
                    metrics::Reading::counter(
                        "producerd_records_dropped",
                        "Records dropped because the ring was full (on_full = \"drop\")",
                        shared.dropped.load(Ordering::Relaxed),
                    ),
                    metrics::Reading::counter(
                        "producerd_source_errors",
                        "Source input skipped or lost: oversized or truncated records, input left at a stop",
                        shared.source_errors.load(Ordering::Relaxed),
                    ),
                ]);
                if let Some(bridge) = shm_daemon::nats::counters() {
                    readings.extend(shm_daemon::nats::metric_readings("producerd", &bridge));
                }
                readings
            }
        });
        let render = exposition.into_render();
        (addr, render)
    });
    let status = {
        let dropped = shared.clone();
        launch::rate_status(
            shared.clone(),
            |s| &s.committed,
            move |total, rate| {
                let link = shm_daemon::nats::link_status().map(|s| format!(", {s}")).unwrap_or_default();
                format!(
                    "{total} records committed, {rate:.0}/s, {} dropped{link}",
                    dropped.dropped.load(Ordering::Relaxed)
                )
            },
        )
    };
    let reload = {
        let (shared, current, log) = (shared.clone(), settings.clone(), log.clone());
        let config_path = args.config.clone();
        Box::new(move || {
            let outcome = match load(config_path.as_deref()) {
                Err(e) => {
                    warn!(error = %e, "reload failed, keeping the running config");
                    Reloaded::Refused
                }
                Ok((new, _)) => {
                    log.set_level(&new.log.level);
                    if let config::SourceKind::Generator { rate, .. } = new.source {
                        shared.rate.store(rate, Ordering::Relaxed);
                    }
                    shared.drop_when_full.store(new.drop_when_full, Ordering::Relaxed);
                    let refused = current.refused_on_reload(&new);
                    if !refused.is_empty() {
                        warn!(keys = %refused.join(", "), "changed in the config, kept as running: they take a restart");
                    }
                    info!(level = %new.log.level, "config reloaded");
                    Reloaded::Applied
                }
            };
            shared.reloads.request();
            outcome
        })
    };
    let unlinked = {
        let segment = segment.clone();
        Box::new(move || segment.is_unlinked())
    };
    Service {
        stop: shared.stop.clone(),
        heartbeat: shared.heartbeat.clone(),
        metrics,
        status,
        reload,
        reloads: shared.reloads.clone(),
        unlinked,
    }
}

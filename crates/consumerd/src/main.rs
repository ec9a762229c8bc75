//! `consumerd`: moves records from a shmring ring to a sink, under systemd.
//!
//! Exit codes: see `shm_daemon::exit` (0 clean, 1 other or verify failures, 66 no
//! segment, 69 role taken, 77 permission, 78 config).

mod config;
mod daemon;
mod nats_sink;
mod sinks;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser};
use shm_core::{RingKind, Role, Segment};
use shm_daemon::service::{Ended, Reloaded, Service, StopRequested, Waiting};
use shm_daemon::{exit, launch, logging, metrics};
use tracing::{error, info, warn};

/// Moves records from a shmring ring to a sink (verify, stdout, file, discard, UDP, Unix socket).
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Config search: --config FILE, ./config/consumerd.toml, /etc/shmring/consumerd.toml, \
else the embedded default (a verify sink on /high_perf_ring).\nSignals: SIGTERM/SIGINT drain and stop, SIGHUP reloads \
the log level and re-opens the file sink.\nExit codes: 0 clean, 1 other or verify failures, 66 no segment, 69 a consumer \
is already attached, 77 permission, 78 config."
)]
struct Args {
    /// Config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Check the config and exit (0 when valid, 78 when not).
    #[arg(long)]
    check_config: bool,
    /// Write the sink's summary (JSON) here at exit.
    #[arg(long)]
    summary_file: Option<PathBuf>,
}

fn load(config: Option<&Path>) -> Result<(config::Settings, String), shm_daemon::config::ConfigError> {
    launch::load("consumerd", config, config::EMBEDDED, config::load)
}

fn main() -> ExitCode {
    if let Some(code) = cli_docs::write_if_asked(Args::command) {
        return code;
    }
    let args = Args::parse();
    launch::main(
        "consumerd",
        args.check_config,
        || load(args.config.as_deref()),
        |s| (&s.log, &s.segment),
        |settings, log| run(&args, settings, log),
    )
}

fn run(args: &Args, settings: config::Settings, log: logging::LogHandle) -> Result<u8> {
    let log = Arc::new(log);
    let shared = Arc::new(daemon::Shared::default());
    shared.drain_timeout_ms.store(settings.drain_timeout.as_millis() as u64, Ordering::Relaxed);
    let mut sink: Option<Box<dyn sinks::Sink>> = None;
    let mut requests = shm_daemon::signals::listen().context("installing signal handlers")?;
    let sink = loop {
        let segment = match shm_daemon::segment::open(&settings.segment, &mut Waiting::new(&mut requests)) {
            Ok(segment) => segment,
            Err(e) if e.is::<StopRequested>() => match sink {
                Some(previous) => break previous,
                None => return Ok(exit::OK),
            },
            Err(e) => return Err(e),
        };
        let consumer = attach(&segment, &settings)?;
        let created = segment.info()?.created_unix_ns;
        let this_sink = match sink.take() {
            None => {
                let mut built = sinks::build(&settings.sink, created, &shared.latency)
                    .with_context(|| format!("opening the {:?} sink", settings.sink))?;
                if segment.geometry().kind == RingKind::Mpmc {
                    built.share_the_stream();
                }
                built
            }
            Some(mut previous) => {
                previous.switch_segment(created).context("moving the sink's state to the new segment")?;
                previous
            }
        };
        shared.stop.store(false, Ordering::Relaxed);
        shared.unlinked.store(false, Ordering::Relaxed);
        info!(
            segment = %segment.location(),
            config = %settings.origin,
            sink = settings.sink.kind(),
            kind = segment.geometry().kind.name(),
            consumer_name = settings.consumer_name.as_deref().unwrap_or("-"),
            worker_id = ?settings.worker_id,
            "consumer attached"
        );
        let ring = {
            let (shared, segment) = (shared.clone(), segment.clone());
            let cpus = settings.cpu_affinity.clone();
            std::thread::Builder::new()
                .name("ring".into())
                .spawn(move || daemon::run(consumer, segment, this_sink, cpus.as_ref(), shared))?
        };
        let (ended, result) = service(args, &settings, &segment, &shared, &log).run(ring, &mut requests)?;
        let returned = result?;
        if ended != Ended::Unlinked {
            break returned;
        }
        error!(segment = %segment.location(), "the segment was unlinked while in use; what was in it has been drained");
        if !settings.segment.recreate_when_unlinked {
            finish(args, &shared, returned.as_ref())?;
            return Ok(exit::UNLINKED);
        }
        info!(segment = %segment.location(), "waiting for it to be re-created (on_unlinked = \"recreate\")");
        sink = Some(returned);
    };
    finish(args, &shared, sink.as_ref())?;
    if sink.failed() {
        error!("verify found lost, duplicated, reordered or corrupt records");
        return Ok(exit::FAILURE);
    }
    Ok(exit::OK)
}

/// Attaches as the segment's consumer, of its kind (`segment::open` checked that it is
/// the configured one).
fn attach(segment: &Segment, settings: &config::Settings) -> Result<daemon::RingConsumer> {
    Ok(match segment.geometry().kind {
        RingKind::Spsc => daemon::RingConsumer::Spsc(segment.consumer_with(settings.segment.wait)?),
        RingKind::Mpsc => {
            let mut consumer = segment.mpsc_consumer()?;
            consumer.set_wait_strategy(settings.segment.wait);
            daemon::RingConsumer::Mpsc(consumer)
        }
        RingKind::Broadcast => {
            // The config requires the name on a broadcast ring.
            let Some(name) = settings.consumer_name.as_deref() else {
                bail!("sink.consumer_name: required for a broadcast ring")
            };
            let consumer = segment.broadcast_consumer(name)?;
            let tallies = consumer.tallies();
            info!(
                consumer_name = name,
                slot = consumer.slot(),
                delivered = tallies.delivered,
                missed = tallies.missed,
                next_seq = consumer.next_seq(),
                "broadcast cursor attached (a known name resumes its cursor, a new one joins at the newest record)"
            );
            daemon::RingConsumer::Broadcast(consumer)
        }
        RingKind::Mpmc => {
            let Some(id) = settings.worker_id else { bail!("sink.worker_id: required for an mpmc ring") };
            let mut worker = segment.mpmc_worker(id)?;
            worker.set_wait_strategy(settings.segment.wait);
            info!(worker_id = id, taken = worker.taken(), redelivered = worker.redelivered(), "mpmc worker attached");
            daemon::RingConsumer::Mpmc(worker, segment.clone())
        }
    })
}

/// Logs the sink's summary and writes it to `--summary-file`.
fn finish(args: &Args, shared: &daemon::Shared, sink: &dyn sinks::Sink) -> Result<()> {
    let report = sink.report();
    info!(delivered = shared.delivered.load(Ordering::Relaxed), summary = %report, "stopped");
    if let Some(path) = &args.summary_file {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
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
        let (segment, shared, latency) = (segment.clone(), shared.clone(), shared.latency.clone());
        let kind = segment.geometry().kind;
        let participant =
            metrics::Participant::of(kind, Role::Consumer, None, settings.consumer_name.as_deref(), settings.worker_id);
        let exposition = metrics::Exposition::new(&name, Role::Consumer, participant.as_ref(), {
            let participant = participant.clone();
            move || {
                let mut readings = match &participant {
                    Some(p) => p.readings(&segment),
                    None => metrics::segment_readings(&segment.stats(), Role::Consumer),
                };
                readings.push(metrics::Reading::counter(
                    "consumerd_records_delivered",
                    "Records this daemon's sink accepted and the ring released",
                    shared.delivered.load(Ordering::Relaxed),
                ));
                readings.push(metrics::Reading::counter(
                    "consumerd_sink_errors",
                    "Batches the sink refused (they stay in the ring and are retried)",
                    shared.sink_errors.load(Ordering::Relaxed),
                ));
                match kind {
                RingKind::Broadcast => readings.push(metrics::Reading::counter(
                    "consumerd_broadcast_missed",
                    "Broadcast: records this consumer missed (lapped, or passed while it was away), from the segment",
                    shared.missed.load(Ordering::Relaxed),
                )),
                RingKind::Mpmc => readings.push(metrics::Reading::counter(
                    "consumerd_mpmc_redelivered",
                    "Mpmc: records this worker id received from a dead worker, from the segment",
                    shared.redelivered.load(Ordering::Relaxed),
                )),
                RingKind::Spsc | RingKind::Mpsc => {}
            }
                match shm_daemon::nats::counters() {
                    // The nats sink's readings include levels (gauges), not only counts.
                    Some(bridge) => readings.extend(shm_daemon::nats::metric_readings("consumerd", &bridge)),
                    None => {
                        for (key, value) in shared.sink_counters.lock().map(|c| c.clone()).unwrap_or_default() {
                            readings.push(metrics::Reading::counter(
                                format!("consumerd_{key}"),
                                format!("The sink's {key} count (README, Metrics)"),
                                value,
                            ));
                        }
                    }
                }
                readings
            }
        });
        let exposition = match settings.sink {
            config::SinkKind::Verify { .. } => exposition.with_latency(
                "consumerd_verify_latency_seconds",
                "Verify sink: time from the generator's stamp, just before commit, to the read",
                &latency,
            ),
            _ => exposition,
        };
        let render = exposition.into_render();
        (addr, render)
    });
    let status = launch::rate_status(
        shared.clone(),
        |s| &s.delivered,
        |total, rate| {
            let link = shm_daemon::nats::link_status().map(|s| format!(", {s}")).unwrap_or_default();
            format!("{total} records delivered, {rate:.0}/s{link}")
        },
    );
    let reload = {
        let (shared, config_path, current, log) = (shared.clone(), args.config.clone(), settings.clone(), log.clone());
        Box::new(move || {
            let outcome = match load(config_path.as_deref()) {
                Err(e) => {
                    warn!(error = %e, "reload failed, keeping the running config");
                    Reloaded::Refused
                }
                Ok((new, _)) => {
                    log.set_level(&new.log.level);
                    shared.drain_timeout_ms.store(new.drain_timeout.as_millis() as u64, Ordering::Relaxed);
                    let refused = current.refused_on_reload(&new);
                    if !refused.is_empty() {
                        warn!(keys = %refused.join(", "), "changed in the config, kept as running: they take a restart");
                    }
                    info!(level = %new.log.level, drain_timeout = %humantime::format_duration(new.drain_timeout), "config reloaded");
                    Reloaded::Applied
                }
            };
            // Whether or not the config loaded, SIGHUP re-opens the output (logrotate
            // sends it after renaming the file).
            shared.reloads.request();
            outcome
        })
    };
    let unlinked = {
        let (segment, shared) = (segment.clone(), shared.clone());
        Box::new(move || {
            let unlinked = segment.is_unlinked();
            // Before the service stops the ring thread: its drain waits for the producers.
            shared.unlinked.store(unlinked, Ordering::Relaxed);
            unlinked
        })
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

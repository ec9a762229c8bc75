//! consumerd's ring thread: reads batches and hands them to the sink; the read cursor
//! moves only after the sink has made them durable.
//!
//! The heartbeat (which the service loop turns into `WATCHDOG=1`) advances only when
//! records move or the ring is really empty: a sink that refuses records, however
//! healthy the thread, stops it, so systemd's watchdog sees the wedge. The exception is
//! a sink whose destination is away (`sinks::DestinationDown`, the nats sink while its
//! server does not acknowledge): it bounds each wait, and waiting for the destination
//! is then the daemon's job, so the thread beats while it retries. A sink error
//! that retrying cannot cure (see `sinks::Unrecoverable`) ends the thread with it.
//!
//! [`RingConsumer`] is the segment's consumer, of its kind; every kind reads through the
//! same durable batch (`read_batch_durable`), so the sinks and their exactly-once
//! machinery are the same. On an mpsc ring the generator's records carry their producer
//! id, which the verify sink checks order by.
//!
//! - **broadcast**: the consumer's named cursor (`sink.consumer_name`) moves only after
//!   the sink's hook, so a restart under the name resumes exactly; records the ring says
//!   this consumer missed (lapped in a lossy ring, or passed while it was dead) are logged
//!   and exported (`consumerd_broadcast_missed_total`, exact: the segment's tally).
//! - **mpmc**: the daemon is worker `sink.worker_id`. Each record is a batch of one: the
//!   sink accepts it and makes it durable, then the worker acknowledges it; a refused
//!   record stays with this worker (`Job::hold_for_retry`) and is retried. A worker killed
//!   between the hook and the acknowledgement has that record redelivered to another
//!   worker: at least once for that record, counted (`consumerd_mpmc_redelivered_total`,
//!   and `redelivered` in `shmctl stat`). The sinks are told no resume position (0): a
//!   worker's records are not a contiguous stretch of the ring, so "skip what is below the
//!   recorded position" would skip another worker's redelivered record.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shm_core::ring::{broadcast, mpmc, mpsc};
use shm_core::{BatchError, Consumer, Liveness, ReadError, Record, Role, Segment};
use shm_daemon::config::CpuAffinity;
use shm_daemon::service::Reloads;
use tracing::{info, warn};

use crate::sinks::{self, Sink};

/// Records per batch.
const BATCH: usize = 1024;
/// How long one wait may take before the loop checks its flags.
const STEP: Duration = Duration::from_millis(100);
/// The longest pause between retries of a batch the sink refused (the pause starts at
/// `STEP` and doubles while the sink keeps refusing).
const MAX_BACK_OFF: Duration = Duration::from_secs(1);

/// State shared between the ring thread and the service loop.
#[derive(Default)]
pub struct Shared {
    /// Set by the service loop to stop (after draining).
    pub stop: Arc<AtomicBool>,
    /// Set when the segment was found unlinked: the drain then lasts until no producer is
    /// attached (one may publish until it notices too), within the drain timeout.
    pub unlinked: AtomicBool,
    /// Bumped when records move or the ring is empty (not while the sink refuses them).
    pub heartbeat: Arc<AtomicU64>,
    /// SIGHUPs: the ring thread re-opens the sink's outputs and takes the new drain timeout.
    pub reloads: Arc<Reloads>,
    /// `[shutdown] drain_timeout` in milliseconds, changeable on reload.
    pub drain_timeout_ms: AtomicU64,
    /// Records the sink accepted and the ring released.
    pub delivered: AtomicU64,
    /// Batches the sink refused (retried).
    pub sink_errors: AtomicU64,
    /// The sink's own counters, refreshed every turn.
    pub sink_counters: Mutex<Vec<(&'static str, u64)>>,
    /// The verify sink's latencies, for the metrics endpoint.
    pub latency: shm_daemon::metrics::LatencyHistogram,
    /// Broadcast: records this consumer missed (its exact tally in the segment).
    pub missed: AtomicU64,
    /// Mpmc: records this worker id received from a dead worker (the segment's count).
    pub redelivered: AtomicU64,
}

/// The segment's consumer, of the ring's kind.
#[expect(clippy::large_enum_variant, reason = "one per daemon, made once and never moved on the hot path")]
pub enum RingConsumer {
    /// The consumer of an spsc ring.
    Spsc(Consumer),
    /// The consumer of an mpsc ring.
    Mpsc(mpsc::Consumer),
    /// A named consumer of a broadcast ring.
    Broadcast(broadcast::Consumer),
    /// A worker of an mpmc ring, and its segment (for the take cursor).
    Mpmc(mpmc::Worker, Segment),
}

impl RingConsumer {
    /// Where this consumer is, against the write cursor (how far a drain got); for an
    /// mpmc worker, the ring's take cursor: every record below it went to some worker.
    fn position(&self) -> u64 {
        match self {
            RingConsumer::Spsc(c) => c.position(),
            RingConsumer::Mpsc(c) => c.position(),
            RingConsumer::Broadcast(c) => c.position(),
            RingConsumer::Mpmc(_, segment) => segment.mpmc_status().map_or(0, |s| s.take_cursor),
        }
    }

    /// Waits for a record. An mpmc worker waits in its take (`read_batch_durable`),
    /// since the record it waits for may be taken by another worker first.
    fn wait_for_data(&mut self, timeout: Option<Duration>) -> Result<(), ReadError> {
        match self {
            RingConsumer::Spsc(c) => c.wait_for_data(timeout),
            RingConsumer::Mpsc(c) => c.wait_for_data(timeout),
            RingConsumer::Broadcast(c) => c.wait_for_data(timeout),
            RingConsumer::Mpmc(..) => Ok(()),
        }
    }

    /// Publishes the ring's own exact figures for this consumer (broadcast: missed;
    /// mpmc: redelivered), logging an increase.
    fn report_tallies(&self, shared: &Shared) {
        let (now, cell, what) = match self {
            RingConsumer::Broadcast(c) => {
                (c.tallies().missed, &shared.missed, "records missed (lapped, or passed while this consumer was away)")
            }
            RingConsumer::Mpmc(w, _) => {
                (w.redelivered(), &shared.redelivered, "records redelivered to this worker from a dead one")
            }
            RingConsumer::Spsc(_) | RingConsumer::Mpsc(_) => return,
        };
        // Relaxed: a figure for logs and metrics; only this thread stores it.
        let before = cell.swap(now, Ordering::Relaxed);
        if now > before {
            warn!(total = now, new = now - before, "{what}");
        }
    }

    /// Hands a batch to `sink`, then `before_release`, then releases it (see the kinds'
    /// `read_batch_durable`).
    fn read_batch_durable<E>(
        &mut self,
        max: usize,
        mut sink: impl FnMut(Record<'_>) -> Result<(), E>,
        before_release: impl FnOnce(u64) -> Result<(), E>,
    ) -> Result<usize, BatchError<E>> {
        match self {
            RingConsumer::Spsc(c) => c.read_batch_durable(max, sink, before_release),
            RingConsumer::Mpsc(c) => c.read_batch_durable(
                max,
                |r| sink(Record { data: r.data, record_type: r.record_type, position: r.position }),
                before_release,
            ),
            RingConsumer::Broadcast(c) => c.read_batch_durable(
                max,
                |r, position| sink(Record { data: r.data, record_type: r.record_type, position }),
                before_release,
            ),
            RingConsumer::Mpmc(w, _) => take_durable(w, sink, before_release),
        }
    }
}

/// An mpmc worker's batch: one record, taken (waiting up to [`STEP`]), accepted, made
/// durable, then acknowledged; a refused one is kept for the retry. The sinks are told
/// position 0 (module docs).
fn take_durable<E>(
    worker: &mut mpmc::Worker,
    mut sink: impl FnMut(Record<'_>) -> Result<(), E>,
    before_release: impl FnOnce(u64) -> Result<(), E>,
) -> Result<usize, BatchError<E>> {
    let job = match worker.take(Some(STEP)) {
        Ok(job) => job,
        Err(ReadError::TimedOut(_)) => return Ok(0),
        Err(ReadError::Corrupt(c)) => return Err(c.into()),
    };
    let record = Record { data: &job, record_type: job.record_type(), position: job.position() };
    match sink(record).and_then(|()| before_release(0)) {
        Ok(()) => {
            job.ack()?;
            Ok(1)
        }
        Err(error) => {
            job.hold_for_retry();
            Err(BatchError::Sink { accepted: 0, error })
        }
    }
}

/// Whether a producer (of any kind) is attached to `segment`, by its kernel lock.
fn producer_attached(segment: &Segment) -> bool {
    segment.participants().iter().any(|p| p.role == Some(Role::Producer) && p.liveness == Liveness::Alive)
}

/// Moves records until stopped, then drains what the ring held at that moment for at
/// most `drain_timeout`, on the calling thread (pinned to `cpus` first, when
/// configured). Returns the sink for its summary.
pub fn run(
    mut consumer: RingConsumer,
    segment: Segment,
    mut sink: Box<dyn Sink>,
    cpus: Option<&CpuAffinity>,
    shared: Arc<Shared>,
) -> Result<Box<dyn Sink>> {
    if let Some(cpus) = cpus {
        cpus.pin_this_thread()?;
    }
    let mut last_warning: Option<Instant> = None;
    let mut drain: Option<(u64, Instant)> = None;
    let mut back_off = STEP;
    let beat = || shared.heartbeat.fetch_add(1, Ordering::Relaxed);
    loop {
        if let Some(reload) = shared.reloads.pending() {
            if let Err(e) = sink.rotate() {
                warn!(error = %e, "re-opening the sink failed");
            }
            // The drain timeout is read when a drain starts, so it is in effect now too.
            shared.reloads.applied(reload);
        }
        if drain.is_none() && shared.stop.load(Ordering::Relaxed) {
            let target = segment.stats().write_cursor;
            let timeout = Duration::from_millis(shared.drain_timeout_ms.load(Ordering::Relaxed));
            info!(unread_bytes = target.saturating_sub(consumer.position()), "draining");
            drain = Some((target, Instant::now() + timeout));
        }
        if let Some((target, deadline)) = drain {
            if consumer.position() >= target {
                // On an unlinked segment, a producer still attached publishes until it
                // notices too (twice a second): what it publishes is read now or never.
                // Its liveness first, then the cursor: once it is gone, the cursor is final.
                let unlinked = shared.unlinked.load(Ordering::Relaxed);
                let attached = unlinked && producer_attached(&segment);
                let tail = segment.stats().write_cursor;
                if !(unlinked && (attached || tail > consumer.position())) {
                    info!("drained");
                    beat();
                    break;
                }
                if Instant::now() >= deadline {
                    warn!(
                        unread_bytes = tail.saturating_sub(consumer.position()),
                        "drain deadline passed with a producer still attached to the unlinked segment; \
                         what it publishes from now on is never read"
                    );
                    break;
                }
                drain = Some((tail, deadline));
            }
            if Instant::now() >= deadline {
                warn!(
                    unread_bytes = target - consumer.position(),
                    "drain deadline passed; the rest stays in the ring for the next start"
                );
                break;
            }
        }
        match consumer.wait_for_data(Some(STEP)) {
            Ok(()) => {}
            Err(ReadError::TimedOut(_)) => {
                // Really idle: nothing to move.
                beat();
                continue;
            }
            Err(ReadError::Corrupt(c)) => bail!("{}: {c}", segment.location()),
        }
        // Both callbacks need the sink; they never run at the same time.
        let cell = std::cell::RefCell::new(&mut sink);
        let outcome = consumer.read_batch_durable(
            BATCH,
            |r| cell.borrow_mut().accept(r),
            |next| cell.borrow_mut().make_durable(next),
        );
        match outcome {
            Ok(n) => {
                shared.delivered.fetch_add(n as u64, Ordering::Relaxed);
                back_off = STEP;
                beat();
            }
            Err(BatchError::Sink { accepted, error }) => {
                shared.delivered.fetch_add(accepted as u64, Ordering::Relaxed);
                shared.sink_errors.fetch_add(1, Ordering::Relaxed);
                let abandoned = sink.abandon_batch();
                if sinks::is_unrecoverable(&error) {
                    return Err(anyhow::Error::new(error).context("the sink failed"));
                }
                abandoned.context("the sink cannot return to its last acknowledged state")?;
                // A destination that is away (the sink bounded its wait and logs the
                // outage itself): the thread is healthy and waits, so it keeps beating.
                let waiting = sinks::is_destination_down(&error);
                if accepted > 0 || waiting {
                    if accepted > 0 {
                        back_off = STEP;
                    }
                    beat();
                }
                if !waiting && last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                    warn!(error = %error, retry_in = %humantime::format_duration(back_off), "sink refused records, retrying (they stay in the ring)");
                    last_warning = Some(Instant::now());
                }
                // In steps, so that a stop (which starts the drain) is noticed within one.
                let resume = Instant::now() + back_off;
                loop {
                    std::thread::sleep(STEP.min(resume.saturating_duration_since(Instant::now())));
                    if waiting {
                        beat();
                    }
                    // Relaxed: a flag; nothing else is read through it.
                    let stop_asked = drain.is_none() && shared.stop.load(Ordering::Relaxed);
                    if stop_asked || Instant::now() >= resume {
                        break;
                    }
                }
                back_off = (back_off * 2).min(MAX_BACK_OFF);
            }
            Err(BatchError::Corrupt(c)) => bail!("{}: {c}", segment.location()),
        }
        consumer.report_tallies(&shared);
        if let Ok(mut c) = shared.sink_counters.lock() {
            *c = sink.counters();
        }
    }
    if let Ok(mut c) = shared.sink_counters.lock() {
        *c = sink.counters();
    }
    Ok(sink)
}

//! consumerd's ring thread: reads batches and hands them to the sink; the read cursor
//! moves only after the sink has made them durable.
//!
//! The heartbeat (which the service loop turns into `WATCHDOG=1`) advances only when
//! records move or the ring is really empty: a sink that refuses records, however
//! healthy the thread, stops it, so systemd's watchdog sees the wedge. A sink error
//! that retrying cannot cure (see `sinks::Unrecoverable`) ends the thread with it.
//!
//! [`RingConsumer`] is the segment's consumer, of its kind; both kinds read through the
//! same durable batch (`read_batch_durable`), so the sinks and their exactly-once
//! machinery are the same. On an mpsc ring the generator's records carry their producer
//! id, which the verify sink checks order by.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shm_core::ring::mpsc;
use shm_core::{BatchError, Consumer, ReadError, Record, Segment};
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
}

/// The segment's consumer, of the ring's kind.
#[expect(clippy::large_enum_variant, reason = "one per daemon, made once and never moved on the hot path")]
pub enum RingConsumer {
    /// The consumer of an spsc ring.
    Spsc(Consumer),
    /// The consumer of an mpsc ring.
    Mpsc(mpsc::Consumer),
}

impl RingConsumer {
    fn position(&self) -> u64 {
        match self {
            RingConsumer::Spsc(c) => c.position(),
            RingConsumer::Mpsc(c) => c.position(),
        }
    }

    fn wait_for_data(&mut self, timeout: Option<Duration>) -> Result<(), ReadError> {
        match self {
            RingConsumer::Spsc(c) => c.wait_for_data(timeout),
            RingConsumer::Mpsc(c) => c.wait_for_data(timeout),
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
        }
    }
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
                warn!("re-opening the sink failed: {e}");
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
                info!("drained");
                beat();
                break;
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
                if accepted > 0 {
                    back_off = STEP;
                    beat();
                }
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                    warn!("sink refused records, retrying in {back_off:?} (they stay in the ring): {error}");
                    last_warning = Some(Instant::now());
                }
                // In steps, so that a stop (which starts the drain) is noticed within one.
                let resume = Instant::now() + back_off;
                loop {
                    std::thread::sleep(STEP.min(resume.saturating_duration_since(Instant::now())));
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
        if let Ok(mut c) = shared.sink_counters.lock() {
            *c = sink.counters();
        }
    }
    if let Ok(mut c) = shared.sink_counters.lock() {
        *c = sink.counters();
    }
    Ok(sink)
}

//! The service loop both daemons run around their ring thread.
//!
//! The ring thread moves records; this loop, on a single-threaded tokio runtime,
//! handles signals (stop, reload), tells systemd how things are (`READY=1` once the
//! ring is attached and again once a reload is in effect, `STATUS=` every second,
//! `WATCHDOG=1` only while the ring thread's heartbeat advances, `STOPPING=1` on
//! shutdown), and serves metrics. It never touches the ring and never waits on a futex.
//!
//! Between two runs of the loop (waiting for a segment to appear, or for a re-created
//! one) a [`Waiting`] keeps the watchdog fed and honours `SIGTERM`; while the ring
//! thread drains after the loop ends, the loop still pings as long as it progresses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use tracing::{info, warn};

use crate::metrics::{self, Render};
use crate::notify::{Notifier, watchdog_interval};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::signals::Request;

/// How often the loop checks that the segment's name still leads to it.
const UNLINK_CHECK: Duration = Duration::from_millis(500);

/// How long without a heartbeat counts as a stalled ring thread (it beats every 100 ms
/// at most while healthy), unless the watchdog period is longer.
const STALLED: Duration = Duration::from_secs(1);

/// Reloads handled by this process, across service loops.
static RELOADS_HANDLED: AtomicU64 = AtomicU64::new(0);

/// Tells a waiting `ExecReload=` that a reload is over: writes the number of reloads this
/// process has handled and how the last one ended, `"<n> applied"` or `"<n> refused"`, to
/// `$RUNTIME_DIRECTORY/reloaded.<pid>`, once `READY=1` has gone out. The units' `ExecReload=`
/// reads the file, sends `SIGHUP` and waits for it to change, so `systemctl reload` returns
/// only then, on systemd 252 too (which ends a reload when `ExecReload=` exits, and has no
/// `Type=notify-reload`); it exits 1 on `refused`, so `systemctl reload` fails and the
/// operator sees the refusal (the running config stays, the warning is in the journal).
/// Without `$RUNTIME_DIRECTORY` (not under systemd), nothing.
fn acknowledge_reload(outcome: Reloaded) {
    // Relaxed: only this thread counts; the file is the message, not the counter.
    let handled = RELOADS_HANDLED.fetch_add(1, Ordering::Relaxed) + 1;
    let Some(dir) = runtime_directory() else { return };
    let path = dir.join(format!("reloaded.{}", std::process::id()));
    // Written whole under another name, then renamed: a reader never sees half a number.
    let partial = dir.join(format!(".reloaded.{}", std::process::id()));
    let outcome = match outcome {
        Reloaded::Applied => "applied",
        Reloaded::Refused => "refused",
    };
    if let Err(e) =
        std::fs::write(&partial, format!("{handled} {outcome}\n")).and_then(|()| std::fs::rename(&partial, &path))
    {
        warn!(path = %path.display(), error = %e, "cannot tell ExecReload= the reload is over");
    }
}

/// The first of `$RUNTIME_DIRECTORY`'s directories (several are separated by ':'; the
/// units name one), where [`acknowledge_reload`] writes.
fn runtime_directory() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("RUNTIME_DIRECTORY")?;
    Some(std::path::PathBuf::from(dir.to_string_lossy().split(':').next().unwrap_or_default()))
}

/// Removes this process's `reloaded.<pid>`. Before the first `READY=1`: one left by an
/// earlier process with the same pid (killed with -9, so it never removed it; pids are
/// reused, soonest in a container) may hold the very text the first reload writes, and
/// `ExecReload=` would then wait for a change until its timeout. When the process ends:
/// so that `/run/shmring` (kept across restarts) does not fill with them.
fn forget_reload_acknowledgement() {
    let Some(dir) = runtime_directory() else { return };
    let path = dir.join(format!("reloaded.{}", std::process::id()));
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!(path = %path.display(), error = %e, "cannot remove a reload acknowledgement"),
    }
}

/// Whether [`forget_reload_acknowledgement`] ran before this process's first `READY=1`.
static STALE_ACKNOWLEDGEMENT_FORGOTTEN: std::sync::Once = std::sync::Once::new();

/// What the loop needs from a daemon.
pub struct Service {
    /// Set to ask the ring thread to finish.
    pub stop: Arc<AtomicBool>,
    /// Incremented by the ring thread on every loop turn (every 100 ms at least).
    pub heartbeat: Arc<AtomicU64>,
    /// `[metrics] listen` and what to serve there.
    pub metrics: Option<(SocketAddr, Render)>,
    /// One status line (records, rate), sent as `STATUS=` every second.
    pub status: Box<dyn FnMut() -> String>,
    /// Called on SIGHUP: reload what can change live; says whether the new config was
    /// applied or refused (and the running one kept).
    pub reload: Box<dyn FnMut() -> Reloaded>,
    /// The reloads asked for and put into effect; `READY=1` follows a reload only once
    /// the ring thread has put it into effect.
    pub reloads: Arc<Reloads>,
    /// Whether the segment was unlinked under us (checked twice a second).
    pub unlinked: Box<dyn FnMut() -> bool>,
}

/// How a reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The new config loaded; what can change live is in effect once the ring thread took it.
    Applied,
    /// The new config did not load (logged as a warning); the running one stays.
    Refused,
}

/// Why the service loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// SIGTERM or SIGINT.
    Stopped,
    /// The ring thread finished by itself (the source ended, or it failed).
    RingFinished,
    /// The segment was unlinked while in use: its name now leads nowhere (or elsewhere).
    Unlinked,
}

impl Service {
    /// Runs until a stop signal, the ring thread's end, or the segment's unlinking; then
    /// stops the ring thread and returns why, with what the ring thread returned.
    ///
    /// `requests` comes from [`crate::signals::listen`], called once per process: a daemon that
    /// goes round again on a re-created segment keeps it, so a signal that arrives
    /// between two runs waits in it rather than going to a listener nobody reads.
    pub fn run<T>(mut self, ring: JoinHandle<T>, requests: &mut UnboundedReceiver<Request>) -> Result<(Ended, T)> {
        let notifier = Notifier::from_env();
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
        let watchdog = watchdog_interval();
        let ended = runtime.block_on(async {
            if let Some((addr, render)) = self.metrics.take() {
                let listener =
                    metrics::bind(addr).await.with_context(|| format!("binding the metrics endpoint {addr}"))?;
                info!(%addr, "serving metrics");
                tokio::spawn(metrics::serve(listener, render));
            }
            STALE_ACKNOWLEDGEMENT_FORGOTTEN.call_once(forget_reload_acknowledgement);
            notifier.ready(&(self.status)());
            // The reload waiting for the ring thread to take it in, and how it ended.
            let mut reload_pending = None;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut since_status = Duration::ZERO;
            let mut since_watchdog = Duration::ZERO;
            let mut last_beat = self.heartbeat.load(Ordering::Relaxed);
            let mut last_progress = std::time::Instant::now();
            let mut since_unlink_check = Duration::ZERO;
            let ended = loop {
                tokio::select! {
                    request = requests.recv() => match request {
                        Some(Request::Reload) => {
                            notifier.reloading();
                            reload_pending = Some((self.reload)());
                        }
                        Some(Request::Stop) | None => {
                            info!("stop requested");
                            break Ended::Stopped;
                        }
                    },
                    _ = tick.tick() => {
                        if ring.is_finished() {
                            break Ended::RingFinished;
                        }
                        if let Some(outcome) = reload_pending && self.reloads.in_effect() {
                            reload_pending = None;
                            notifier.ready(&(self.status)());
                            acknowledge_reload(outcome);
                        }
                        since_unlink_check += Duration::from_millis(100);
                        if since_unlink_check >= UNLINK_CHECK {
                            since_unlink_check = Duration::ZERO;
                            if (self.unlinked)() {
                                break Ended::Unlinked;
                            }
                        }
                        since_status += Duration::from_millis(100);
                        since_watchdog += Duration::from_millis(100);
                        if since_status >= Duration::from_secs(1) {
                            notifier.status(&(self.status)());
                            since_status = Duration::ZERO;
                        }
                        let beat = self.heartbeat.load(Ordering::Relaxed);
                        if beat != last_beat {
                            (last_beat, last_progress) = (beat, std::time::Instant::now());
                        }
                        if let Some(every) = watchdog && since_watchdog >= every {
                            since_watchdog = Duration::ZERO;
                            // The ring thread beats at least every 100 ms while healthy.
                            let stalled = last_progress.elapsed();
                            if stalled < every.max(STALLED) {
                                notifier.watchdog();
                            } else {
                                warn!(stalled_ms = stalled.as_millis() as u64, "ring thread made no progress; withholding the watchdog ping");
                            }
                        }
                    }
                }
            };
            anyhow::Ok(ended)
        });
        let ended = match ended {
            Ok(ended) => ended,
            Err(e) => {
                // A failed start (the metrics address taken): the whole daemon stops,
                // the ring thread first.
                notifier.stopping();
                self.stop.store(true, Ordering::Relaxed);
                let _ = ring.join();
                return Err(e);
            }
        };
        if ended != Ended::Unlinked {
            notifier.stopping();
        }
        self.stop.store(true, Ordering::Relaxed);
        // The ring thread drains; the watchdog is fed while it progresses.
        let mut last_beat = self.heartbeat.load(Ordering::Relaxed);
        let mut last_progress = std::time::Instant::now();
        let mut last_ping = std::time::Instant::now();
        while !ring.is_finished() {
            std::thread::sleep(Duration::from_millis(20));
            let beat = self.heartbeat.load(Ordering::Relaxed);
            if beat != last_beat {
                (last_beat, last_progress) = (beat, std::time::Instant::now());
            }
            if let Some(every) = watchdog
                && last_ping.elapsed() >= every
                && last_progress.elapsed() < every.max(STALLED)
            {
                notifier.watchdog();
                last_ping = std::time::Instant::now();
            }
        }
        let result = ring.join().map_err(|_| anyhow::anyhow!("the ring thread panicked"))?;
        notifier.status(if ended == Ended::Unlinked { "segment unlinked" } else { "stopped" });
        if ended != Ended::Unlinked {
            // The process ends (on an unlinked segment it may go round again, and a
            // reload waiting on the file must not see it vanish).
            forget_reload_acknowledgement();
        }
        Ok((ended, result))
    }
}

/// Reloads (SIGHUP) asked for, and taken in by the ring thread: the reload handler
/// stores the new live settings, then calls [`Reloads::request`]; the ring thread, at the
/// start of its next turn, takes [`Reloads::pending`] in, puts it into effect (re-opens
/// outputs, reads the new settings) and calls [`Reloads::applied`].
#[derive(Debug, Default)]
pub struct Reloads {
    requested: AtomicU64,
    applied: AtomicU64,
}

impl Reloads {
    /// The reload handler: the new settings are stored; the ring thread is to take them in.
    pub fn request(&self) {
        // Release: pairs with the Acquire load in `pending`, so the ring thread that sees
        // this request sees the settings stored before it.
        self.requested.fetch_add(1, Ordering::Release);
    }

    /// The ring thread: the reload waiting to be put into effect, if any.
    pub fn pending(&self) -> Option<u64> {
        let requested = self.requested.load(Ordering::Acquire);
        // Relaxed: only the ring thread stores `applied`.
        (requested != self.applied.load(Ordering::Relaxed)).then_some(requested)
    }

    /// The ring thread: `reload` (from [`Reloads::pending`]) is in effect.
    pub fn applied(&self, reload: u64) {
        // Release: pairs with the Acquire load in `in_effect`.
        self.applied.store(reload, Ordering::Release);
    }

    /// The service loop: whether every reload requested is in effect.
    pub fn in_effect(&self) -> bool {
        // Relaxed on `requested`: only this loop's thread requests.
        self.applied.load(Ordering::Acquire) == self.requested.load(Ordering::Relaxed)
    }
}

/// `SIGTERM` or `SIGINT` arrived while the daemon waited between runs (for its segment
/// to appear or to be re-created): a clean stop, exit 0.
#[derive(Debug, thiserror::Error)]
#[error("stop requested while waiting for the segment")]
pub struct StopRequested;

/// A wait outside the service loop (for a segment to appear, or to be re-created): it
/// feeds the watchdog, since waiting is the daemon's job then, and ends on a stop
/// request. A reload request there is logged and dropped: the config is read again at
/// the next start.
pub struct Waiting<'a> {
    notifier: Notifier,
    watchdog: Option<Duration>,
    last_ping: Option<std::time::Instant>,
    requests: &'a mut UnboundedReceiver<Request>,
}

impl<'a> Waiting<'a> {
    /// A wait that reads `requests` (from [`crate::signals::listen`]).
    pub fn new(requests: &'a mut UnboundedReceiver<Request>) -> Self {
        Waiting { notifier: Notifier::from_env(), watchdog: watchdog_interval(), last_ping: None, requests }
    }

    /// Called every few milliseconds while waiting: pings the watchdog when due;
    /// `Err(StopRequested)` once a stop was requested.
    pub fn tick(&mut self) -> Result<(), StopRequested> {
        while let Ok(request) = self.requests.try_recv() {
            match request {
                Request::Stop => {
                    info!("stop requested while waiting for the segment");
                    return Err(StopRequested);
                }
                Request::Reload => warn!("SIGHUP while waiting for the segment: nothing to reload yet; ignored"),
            }
        }
        if let Some(every) = self.watchdog
            && self.last_ping.is_none_or(|t| t.elapsed() >= every)
        {
            self.notifier.watchdog();
            self.last_ping = Some(std::time::Instant::now());
        }
        Ok(())
    }
}

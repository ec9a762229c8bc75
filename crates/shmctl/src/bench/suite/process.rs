//! Two processes per case (or more, for the ring kinds with several producers or
//! consumers): the parent measures, forked children are the other sides. They meet on a
//! control page (an anonymous shared mapping): a start line, the consumer's stop flag, the
//! children's results, and the first error a child met.

use std::io::Write as _;
use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use shm_core::placement;

use super::cleanup;
use super::{CaseError, ErrorKind};
use crate::bench::SharedAnon;

/// How long any one wait may last before the case is declared stuck.
pub const TIMEOUT: Duration = Duration::from_secs(10);

const PAGE: usize = 4096;
// Word offsets in bytes, each flag on its own 128-byte line.
/// Children that said ready (each adds one).
const READY: usize = 0;
/// Children the parent waits for: written before the forks, read-only after.
const EXPECTED: usize = 4;
const GO: usize = 128;
const STOP: usize = 256;
const FAILED: usize = 384;
/// `RESULTS` u64 slots for the child to report measurements.
const RESULTS: usize = 512;
pub const RESULT_SLOTS: usize = 64;
const MESSAGE_LEN: usize = RESULTS + RESULT_SLOTS * 8;
const MESSAGE: usize = MESSAGE_LEN + 8;
const MESSAGE_MAX: usize = PAGE - MESSAGE;
const _: () = assert!(MESSAGE < PAGE);
/// The FAILED word while a child writes its message (codes: 1 other, 2 sequence).
const WRITING: u32 = 3;
/// Children one case may fork at most (the cleanup handler's table of them).
pub const MAX_CHILDREN: usize = cleanup::MAX_CHILDREN;

/// The page both processes of a case share.
pub struct Control {
    map: SharedAnon,
}

impl Control {
    pub fn new() -> Result<Control, CaseError> {
        let map = SharedAnon::new(NonZeroUsize::new(PAGE).expect("non-zero"))
            .map_err(|e| CaseError::other(format!("mmap: {e}")))?;
        Ok(Control { map })
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset % 4 == 0 && offset < PAGE);
        // SAFETY: `offset` is 4-aligned and inside the page (the callers pass the constants
        // above), and the page is only accessed as atomics while `self` keeps it mapped.
        unsafe { self.map.ptr().add(offset).cast::<AtomicU32>().as_ref() }
    }

    fn slot(&self, index: usize) -> &AtomicU64 {
        assert!(index < RESULT_SLOTS, "result slot {index}");
        // SAFETY: 8-aligned and inside the page (index checked), accessed only as atomics.
        unsafe { self.map.ptr().add(RESULTS + index * 8).cast::<AtomicU64>().as_ref() }
    }

    /// Child: ready (set up and attached), then wait for the parent's go.
    pub fn child_ready(&self) -> Result<(), CaseError> {
        // Release/Acquire: the child's setup is done before the parent starts its clock.
        self.word(READY).fetch_add(1, Ordering::Release);
        let mut spin = Spinner::new("waiting for the parent's go");
        while self.word(GO).load(Ordering::Acquire) == 0 {
            spin.step()?;
            std::thread::yield_now(); // on one CPU, the parent needs it to say go
        }
        Ok(())
    }

    /// Parent: wait until every child is ready (failing early if one failed), start the
    /// clock, say go.
    pub fn parent_go(&self) -> Result<Instant, CaseError> {
        let mut spin = Spinner::new("waiting for the children to start");
        // Relaxed: stored before the forks (`run_group`), by this process.
        let expected = self.word(EXPECTED).load(Ordering::Relaxed).max(1);
        // Acquire: pairs with the Release increments in `child_ready`.
        while self.word(READY).load(Ordering::Acquire) < expected {
            if let Some(e) = self.failure() {
                return Err(e);
            }
            spin.step()?;
            std::thread::yield_now(); // on one CPU, the child needs it to get ready
        }
        let start = Instant::now();
        self.word(GO).store(1, Ordering::Release);
        Ok(start)
    }

    /// Consumer: asks the producer to stop.
    pub fn stop(&self) {
        // Relaxed: the producer only needs to see it eventually; the records are ordered
        // by the transport itself.
        self.word(STOP).store(1, Ordering::Relaxed);
    }

    /// Producer: whether the consumer asked it to stop.
    #[inline]
    pub fn stopped(&self) -> bool {
        // Relaxed: see `stop`.
        self.word(STOP).load(Ordering::Relaxed) != 0
    }

    /// Child: stores result `index`. The parent reads it after reaping the child.
    pub fn set_result(&self, index: usize, value: u64) {
        // Relaxed: read only after `waitpid`, which orders it.
        self.slot(index).store(value, Ordering::Relaxed);
    }

    /// Result `index`, as the child (or the parent) left it.
    pub fn result(&self, index: usize) -> u64 {
        // Relaxed: see `set_result`.
        self.slot(index).load(Ordering::Relaxed)
    }

    /// Children: adds one to the shared count in slot `index` and returns the new count.
    pub fn count_up(&self, index: usize) -> u64 {
        // AcqRel: a child that reads the count (`shared_count`) sees what the others did
        // before they counted.
        self.slot(index).fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The shared count in slot `index` (see [`Control::count_up`]).
    pub fn shared_count(&self, index: usize) -> u64 {
        // Acquire: pairs with the AcqRel increments in `count_up`.
        self.slot(index).load(Ordering::Acquire)
    }

    /// Child: records why it failed, for the parent to report; the first child to fail
    /// writes the message, the others leave it.
    fn fail(&self, error: &CaseError) {
        // Acquire: the message bytes of an earlier, finished failure are not ours to write.
        if self.word(FAILED).compare_exchange(0, WRITING, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return;
        }
        let text = error.message.as_bytes();
        let len = text.len().min(MESSAGE_MAX);
        for (i, &b) in text[..len].iter().enumerate() {
            // Relaxed: published by the Release store of FAILED below.
            self.byte(MESSAGE + i).store(b, Ordering::Relaxed);
        }
        self.slot_at(MESSAGE_LEN).store(len as u64, Ordering::Relaxed);
        let code = match error.kind {
            ErrorKind::Sequence => 2,
            ErrorKind::Other => 1,
        };
        self.word(FAILED).store(code, Ordering::Release);
    }

    /// The child's error, if it recorded one.
    pub fn failure(&self) -> Option<CaseError> {
        // Acquire: pairs with the Release store in `fail`; the message is complete.
        let code = self.word(FAILED).load(Ordering::Acquire);
        if code == 0 || code == WRITING {
            return None;
        }
        let len = (self.slot_at(MESSAGE_LEN).load(Ordering::Relaxed) as usize).min(MESSAGE_MAX);
        let bytes: Vec<u8> = (0..len).map(|i| self.byte(MESSAGE + i).load(Ordering::Relaxed)).collect();
        let message = format!("other process: {}", String::from_utf8_lossy(&bytes));
        Some(CaseError { kind: if code == 2 { ErrorKind::Sequence } else { ErrorKind::Other }, message })
    }

    fn byte(&self, offset: usize) -> &std::sync::atomic::AtomicU8 {
        assert!(offset < PAGE);
        // SAFETY: inside the page, accessed only as atomics while `self` keeps it mapped.
        unsafe { self.map.ptr().add(offset).cast::<std::sync::atomic::AtomicU8>().as_ref() }
    }

    fn slot_at(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset % 8 == 0 && offset + 8 <= PAGE);
        // SAFETY: 8-aligned and inside the page (the callers pass the constants above),
        // accessed only as atomics.
        unsafe { self.map.ptr().add(offset).cast::<AtomicU64>().as_ref() }
    }
}

/// A busy wait that gives up after [`TIMEOUT`] (or its own limit), looking at the clock
/// only now and then.
pub struct Spinner {
    what: &'static str,
    spins: u32,
    start: Option<Instant>,
    limit: Duration,
}

impl Spinner {
    pub fn new(what: &'static str) -> Spinner {
        Spinner::with_limit(what, TIMEOUT)
    }

    /// A busy wait that gives up after `limit` instead.
    pub fn with_limit(what: &'static str, limit: Duration) -> Spinner {
        Spinner { what, spins: 0, start: None, limit }
    }

    #[inline]
    pub fn step(&mut self) -> Result<(), CaseError> {
        std::hint::spin_loop();
        self.spins = self.spins.wrapping_add(1);
        if self.spins % 4096 == 0 {
            let start = *self.start.get_or_insert_with(Instant::now);
            if start.elapsed() > self.limit {
                return Err(CaseError::other(format!("{}: waited more than {:?}", self.what, self.limit)));
            }
        }
        Ok(())
    }
}

/// CPU pinning: the parent on the first CPU it may use, children on the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Pins {
    /// The parent: consumer of throughput cases, pinger of round trips.
    pub parent_cpu: usize,
    /// The child: producer, echoer.
    pub child_cpu: usize,
}

/// Pins this process to the first allowed CPU and returns the plan, or `None` when fewer
/// than two CPUs are allowed.
pub fn pin_parent() -> anyhow::Result<Option<Pins>> {
    let mut cpus = placement::allowed_cpus()?.into_iter();
    let Some((parent_cpu, child_cpu)) = cpus.next().zip(cpus.next()) else { return Ok(None) };
    pin(parent_cpu).map_err(|e| anyhow::anyhow!(e.message))?;
    Ok(Some(Pins { parent_cpu, child_cpu }))
}

fn pin(cpu: usize) -> Result<(), CaseError> {
    placement::pin_current_thread(&[cpu]).map_err(|e| CaseError::other(format!("sched_setaffinity(CPU {cpu}): {e}")))
}

/// Runs `child` in a forked child process (pinned per `pins`) and `parent` here, then
/// reaps the child. Fails if either side fails; a failing parent kills the child.
pub fn run_pair<'a, T>(
    control: &Control,
    pins: Option<Pins>,
    child: impl FnOnce(&Control) -> Result<(), CaseError> + 'a,
    parent: impl FnOnce(&Control) -> Result<T, CaseError>,
) -> Result<T, CaseError> {
    run_group(control, vec![(pins.map(|p| p.child_cpu), Box::new(child))], parent)
}

/// A child of [`run_group`]: the CPU to pin it to, and what it runs.
pub type GroupChild<'a> = (Option<usize>, Box<dyn FnOnce(&Control) -> Result<(), CaseError> + 'a>);

/// Runs each of `children` (at most [`MAX_CHILDREN`]) in its own forked process, pinned to
/// its CPU, and `parent` here, then reaps them all. Fails if any side fails; a failing
/// parent kills every child. [`Control::parent_go`] waits for all of them.
pub fn run_group<T>(
    control: &Control,
    children: Vec<GroupChild<'_>>,
    parent: impl FnOnce(&Control) -> Result<T, CaseError>,
) -> Result<T, CaseError> {
    assert!(children.len() <= MAX_CHILDREN, "{} children", children.len());
    // Relaxed: read after the forks, which copy it into every child.
    control.word(EXPECTED).store(children.len() as u32, Ordering::Relaxed);
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    let mut reapers = Vec::with_capacity(children.len());
    let mut rest = children.into_iter();
    while let Some((cpu, child)) = rest.next() {
        // SAFETY: shmctl bench runs no other thread, so the child is a complete copy of a
        // single-threaded process and may run any code.
        match unsafe { fork() }.map_err(|e| CaseError::other(format!("fork: {e}")))? {
            ForkResult::Child => {
                // The parent's and the other children's ends of the transports, closed
                // here; the siblings are the parent's to reap, never ours to kill.
                drop(parent);
                drop(rest);
                std::mem::forget(reapers);
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    if let Some(cpu) = cpu {
                        pin(cpu)?;
                    }
                    child(control)
                }));
                let code = match outcome {
                    Ok(Ok(())) => 0,
                    Ok(Err(e)) => {
                        control.fail(&e);
                        1
                    }
                    Err(_) => {
                        control.fail(&CaseError::other("panicked"));
                        2
                    }
                };
                // Ends the child without unwinding into the parent's frames, whose guards
                // (segment unlinks) belong to the parent.
                std::process::exit(code)
            }
            ForkResult::Parent { child: pid } => {
                drop(child); // the child's ends, so that a dead child gives EOF
                reapers.push(Reaper::new(reapers.len(), pid));
            }
        }
    }
    let value = parent(control).map_err(|e| control.failure().unwrap_or(e))?;
    let mut failure = None;
    for reaper in &mut reapers {
        let status = reaper.wait()?;
        if failure.is_none() && !matches!(status, WaitStatus::Exited(_, 0)) {
            failure = Some(control.failure().unwrap_or_else(|| CaseError::other(format!("other process: {status:?}"))));
        }
    }
    failure.map_or(Ok(value), Err)
}

/// Reaps a child; kills it first when dropped before [`Reaper::wait`] (the parent
/// failed). `slot` is its place in the cleanup handler's table.
struct Reaper {
    pid: Option<Pid>,
    slot: usize,
}

impl Reaper {
    fn new(slot: usize, pid: Pid) -> Reaper {
        cleanup::set_child(slot, Some(pid));
        Reaper { pid: Some(pid), slot }
    }

    /// Waits up to [`TIMEOUT`] for the child to exit, then kills it.
    fn wait(&mut self) -> Result<WaitStatus, CaseError> {
        let pid = self.pid.take().expect("waited once");
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                Ok(WaitStatus::StillAlive) => {
                    let _ = kill(pid, Signal::SIGKILL);
                    let _ = waitpid(pid, None);
                    cleanup::set_child(self.slot, None);
                    return Err(CaseError::other(format!("the other process did not exit within {TIMEOUT:?}")));
                }
                Ok(status) => break status,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    cleanup::set_child(self.slot, None);
                    return Err(CaseError::other(format!("waitpid: {e}")));
                }
            }
        };
        cleanup::set_child(self.slot, None);
        Ok(status)
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            cleanup::set_child(self.slot, None);
        }
    }
}

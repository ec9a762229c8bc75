//! Waiting for the other side, shared by every ring kind: the wait strategies' spin
//! budget and deadline ([`Waiting`]), the futex wake-up protocol ([`wake_sleeper`] and
//! [`sleep_unless_moved`], described in [`super::spsc`] under "Waking"), and the running
//! values of a handle's counters ([`LocalCounters`]).

use std::time::{Duration, Instant};

use super::{HYBRID_SPIN, MAX_SLEEP, RingRefs, WaitStrategy};
use crate::layout::WakeWord;
use crate::stats::Counter;
use crate::sync::{self, Ordering, fence};

/// How many spins between two looks at the clock.
pub(crate) const SPINS_PER_CLOCK_CHECK: u32 = 64;

/// Spin-loop hints a blocking read pauses for when it catches up with a streaming
/// producer ("Backing off from a stream" in the module docs): about a microsecond.
/// Measured with `shmctl bench` (docs/BENCHMARKS.md): 8 barely helped, 32 to 128 all
/// cut the consumer's empty looks from one per two records to one per 5,000 or more.
#[cfg_attr(loom, allow(dead_code))] // loom models skip the pause
pub(crate) const STREAM_BACKOFF_SPINS: u32 = 64;

/// A deadline for a blocking call, and the strategy's spinning budget. The clock is
/// first read after [`SPINS_PER_CLOCK_CHECK`] spins, not when the wait starts: a
/// consumer right behind its producer finds the ring empty every few records and
/// usually waits a few spins, and a clock read (a vDSO call) would cost more than that.
pub(crate) struct Waiting {
    timeout: Option<Duration>,
    /// Set at the first clock check: when the wait started.
    started: Option<Instant>,
    /// Whether the hybrid strategy still spins (false once its budget is spent).
    spinning: bool,
    spins: u32,
}

impl Waiting {
    pub(crate) fn new(strategy: WaitStrategy, timeout: Option<Duration>) -> Self {
        Waiting { timeout, started: None, spinning: strategy == WaitStrategy::Hybrid, spins: 0 }
    }

    /// Time since the wait started, as far as the clock knows: the first call starts
    /// the clock. One clock read either way.
    pub(crate) fn elapsed(&mut self) -> Duration {
        match self.started {
            Some(started) => started.elapsed(),
            None => {
                self.started = Some(Instant::now());
                Duration::ZERO
            }
        }
    }

    /// Time left before the deadline (at most [`MAX_SLEEP`]) once `elapsed` has passed;
    /// `None` when the deadline has passed.
    pub(crate) fn left_after(&self, elapsed: Duration) -> Option<Duration> {
        let Some(timeout) = self.timeout else { return Some(MAX_SLEEP) };
        let left = timeout.checked_sub(elapsed).filter(|r| !r.is_zero())?;
        Some(left.min(MAX_SLEEP))
    }

    /// Time left before the deadline (at most [`MAX_SLEEP`]); `None` when it has passed.
    pub(crate) fn remaining(&mut self) -> Option<Duration> {
        if self.timeout.is_none() {
            return Some(MAX_SLEEP);
        }
        let elapsed = self.elapsed();
        self.left_after(elapsed)
    }

    /// The error value of a wait that timed out.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(Duration::MAX)
    }

    /// One turn of a blocking wait: a spin step, or, when the strategy says so, `sleep`
    /// on the futex for at most the time left. Past the deadline, `timed_out` of how
    /// long the wait lasted. The caller re-checks its condition after each turn.
    pub(crate) fn turn<E>(
        &mut self,
        strategy: WaitStrategy,
        sleep: impl FnOnce(Duration) -> Result<(), E>,
        timed_out: impl FnOnce(Duration) -> E,
    ) -> Result<(), E> {
        match self.spin_step(strategy) {
            Ok(true) => Ok(()),
            Ok(false) => match self.remaining() {
                Some(remaining) => sleep(remaining),
                None => Err(timed_out(self.timeout())),
            },
            Err(waited) => Err(timed_out(waited)),
        }
    }

    /// One step of waiting that is not a futex sleep. Returns `false` when the caller
    /// should sleep on the futex instead, `Err` when the deadline has passed.
    pub(crate) fn spin_step(&mut self, strategy: WaitStrategy) -> Result<bool, Duration> {
        self.spins = self.spins.wrapping_add(1);
        let check_clock = self.spins % SPINS_PER_CLOCK_CHECK == 0;
        // Read once per check, for the hybrid budget and the deadline alike.
        let mut elapsed = None;
        match strategy {
            WaitStrategy::Spin => sync::spin_loop(),
            WaitStrategy::Yield => sync::yield_now(),
            WaitStrategy::Futex => return Ok(false),
            WaitStrategy::Hybrid => {
                if check_clock && self.spinning && *elapsed.insert(self.elapsed()) >= HYBRID_SPIN {
                    self.spinning = false;
                }
                if !self.spinning {
                    return Ok(false);
                }
                sync::spin_loop();
            }
        }
        if (check_clock || strategy == WaitStrategy::Yield) && self.timeout.is_some() {
            let elapsed = elapsed.unwrap_or_else(|| self.elapsed());
            if self.left_after(elapsed).is_none() {
                return Err(self.timeout());
            }
        }
        Ok(true)
    }
}

/// Running values of the counters a handle owns, indexed by [`Counter::slot`]. Each
/// handle writes only its own side's counters, storing a value to the segment once per
/// publish or release (or per event, for the rare ones). They are loaded from memory any
/// process can write, so they only grow by saturating addition: a hostile `u64::MAX`
/// neither panics nor wraps back.
#[derive(Clone)]
pub(crate) struct LocalCounters([u64; Counter::ALL.len()]);

impl LocalCounters {
    /// Resumes the given counters from the segment.
    pub(crate) fn load(ring: &RingRefs, which: &[Counter]) -> Self {
        let mut values = [0; Counter::ALL.len()];
        if let Some(cells) = ring.counters() {
            for &c in which {
                values[c.slot()] = cells.load(c);
            }
        }
        LocalCounters(values)
    }

    pub(crate) fn get(&self, c: Counter) -> u64 {
        self.0[c.slot()]
    }

    /// Replaces values with exact ones taken from a publish or release slot.
    pub(crate) fn set_exact(&mut self, values: &[(Counter, u64)]) {
        for &(c, v) in values {
            self.0[c.slot()] = v;
        }
    }

    /// Adds locally; [`store`](Self::store) makes it visible.
    #[inline]
    pub(crate) fn add(&mut self, c: Counter, n: u64) {
        self.0[c.slot()] = self.0[c.slot()].saturating_add(n);
    }

    pub(crate) fn store(&self, ring: &RingRefs, c: Counter) {
        ring.store_counter(c, self.get(c));
    }

    /// Adds one and stores it at once (rare events: blocks, sleeps, wakes).
    pub(crate) fn bump(&mut self, ring: &RingRefs, c: Counter) {
        self.add(c, 1);
        self.store(ring, c);
    }
}

/// The pause of a blocking read that caught up with a streaming producer ("Backing off
/// from a stream" in the module docs). Only a hint for speed, so loom models skip it.
#[inline(never)]
pub(crate) fn stream_backoff() {
    #[cfg(not(loom))]
    for _ in 0..STREAM_BACKOFF_SPINS {
        std::hint::spin_loop();
    }
}

/// The waker half of the wake-up protocol (module docs), called right after storing
/// this side's cursor: wakes the other side if it announced that it sleeps. Returns
/// whether it did; a busy ring returns `false` without a syscall.
#[inline]
pub(crate) fn wake_sleeper(wake: &WakeWord) -> bool {
    // SeqCst fence: orders our cursor store before the load of the word, against the
    // sleeper's announcement and re-check. (Left out only by the loom mutation
    // `mutation-no-wake-fence`, to show the models catch its absence.)
    if !cfg!(feature = "mutation-no-wake-fence") {
        fence(Ordering::SeqCst);
    }
    let word = wake.word();
    // Relaxed: ordered by the fence above.
    if word.load(Ordering::Relaxed) == 0 {
        return false;
    }
    // The waker changes the word before waking, so a sleeper that has not reached
    // FUTEX_WAIT yet finds it changed and does not sleep.
    word.store(0, Ordering::Relaxed);
    wake.wake();
    true
}

/// What [`sleep_unless_moved`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slept {
    /// The other side had already moved: no sleep.
    No,
    /// Slept and was woken (or timed out with nothing new).
    Yes,
    /// Slept to the timeout although the other side had moved: a lost wake-up.
    MissedWake,
}

/// The sleeper half of the wake-up protocol (module docs): announce on `wake`, re-check
/// the other side's `cursor` (has it moved from `seen`, the value we last looked at?),
/// sleep at most `timeout` only if it has not, then withdraw the announcement.
pub(crate) fn sleep_unless_moved(wake: &WakeWord, timeout: Duration, seen: u64, cursor: impl Fn() -> u64) -> Slept {
    let word = wake.word();
    word.store(1, Ordering::Relaxed);
    // SeqCst fence: orders the announcement before the re-check.
    fence(Ordering::SeqCst);
    let moved = || cursor() != seen;
    let slept = if moved() {
        Slept::No
    } else if wake.wait(1, Some(timeout)) && moved() && missed_wake(word, &cursor) {
        Slept::MissedWake
    } else {
        Slept::Yes
    };
    word.store(0, Ordering::Relaxed);
    slept
}

/// [`sleep_unless_moved`] on a word several sleepers share (a broadcast ring's consumers).
/// A flag alone would lose wake-ups there: a sleeper that re-announces after a wake
/// would set the word back to what a second sleeper, not yet in `FUTEX_WAIT`, expects,
/// and that one would sleep through the record it was woken for. So the word is an
/// event count: bit 0 says "someone sleeps", the bits above count wakes. A sleeper sets
/// bit 0 and keeps the value it set (one atomic step), re-checks, and sleeps only while
/// the word still holds that value; [`wake_all_sleepers`] bumps the count, so every
/// sleeper that announced before the wake finds the word changed. Lost wake-ups are not
/// counted here; every sleep is still bounded by its timeout.
pub(crate) fn sleep_among_many(wake: &WakeWord, timeout: Duration, seen: u64, cursor: impl Fn() -> u64) -> Slept {
    // SeqCst read-modify-write, then the SeqCst fence: announce before the re-check (as in
    // `sleep_unless_moved`), and learn the count the wake must change.
    let expected = wake.word().fetch_or(1, Ordering::SeqCst) | 1;
    fence(Ordering::SeqCst);
    if cursor() != seen {
        return Slept::No;
    }
    wake.wait(expected, Some(timeout));
    Slept::Yes
}

/// The waker half for [`sleep_among_many`], called right after storing the cursor: if
/// anyone announced, bumps the count (clearing bit 0) and wakes them all. A busy ring with
/// nobody asleep returns `false` without a syscall.
pub(crate) fn wake_all_sleepers(wake: &WakeWord) -> bool {
    // SeqCst fence: orders our cursor store before the load of the word (as in `wake_sleeper`).
    fence(Ordering::SeqCst);
    let word = wake.word();
    // Relaxed: ordered by the fence above.
    let seen = word.load(Ordering::Relaxed);
    if seen & 1 == 0 {
        return false;
    }
    // A sleeper announcing meanwhile set bit 0 of the old count: its expected value is no
    // longer the word's, so it does not sleep.
    word.store((seen & !1).wrapping_add(2), Ordering::SeqCst);
    wake.wake();
    true
}

impl LocalCounters {
    /// Counts a sleep and, if it was one, a missed wake-up.
    pub(crate) fn record_sleep(&mut self, ring: &RingRefs, slept: Slept, sleeps: Counter, missed: Counter) {
        if slept != Slept::No {
            self.bump(ring, sleeps);
        }
        if slept == Slept::MissedWake {
            self.bump(ring, missed);
        }
    }
}

/// How long a sleeper that timed out although the other side moved watches the waker
/// before deciding ([`missed_wake`]): long enough for a preempted waker to run again.
const MISSED_WAKE_GRACE: Duration = Duration::from_millis(10);

/// Decides whether a sleep that timed out although the other side's cursor had moved was
/// a real missed wake-up (a protocol bug), not a waker that was preempted, stopped or
/// killed between its cursor store and its check of the word.
///
/// Every publish (or release) made after our announcement checks the word and, seeing it
/// set, clears it before it wakes us ("Waking" in the module docs), and the waker's next
/// cursor store comes after that check in its program order. So, with `first` the
/// cursor as it is now: a word that becomes `0` means the waker got to its check (late):
/// no miss. A cursor that moves past `first` while the word is still set means the waker
/// finished the publish of `first`, check included, and left the word set: a real miss.
/// If neither happens within [`MISSED_WAKE_GRACE`], the waker is stalled or dead between
/// its store and its check, which is no fault of the protocol: not counted.
///
/// One false count remains possible: a waker killed between its store and its check,
/// whose successor attaches and stores a new cursor within the grace, before its own
/// check clears the word. That looks exactly like a real miss from here, and happens at
/// most once per killed waker (the cross-process kill tests allow one per kill).
fn missed_wake(word: &crate::sync::AtomicU32, cursor: impl Fn() -> u64) -> bool {
    let first = cursor();
    let deadline = Instant::now() + MISSED_WAKE_GRACE;
    loop {
        // Relaxed: only the value matters here; see below for the decisive load.
        if word.load(Ordering::Relaxed) == 0 {
            return false;
        }
        if cursor() != first {
            // `cursor` loads with Acquire, pairing with the waker's Release store of the
            // new value, which follows its clearing of the word in its program order: a
            // word still set now was never cleared.
            return word.load(Ordering::Relaxed) != 0;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

//! One measurement each: streaming throughput, round trips, the CPU an idle consumer
//! burns, how fast a sleeping consumer wakes, and single-thread memcpy.

use std::hint::black_box;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nix::time::{ClockId, clock_gettime};
use shm_core::Segment;

use super::CaseError;
use super::cleanup::Scratch;
use super::process::{Control, Pins, RESULT_SLOTS, Spinner, TIMEOUT, run_pair};
use super::transport::{Checker, END, Link, Rx, Transport, Tx};

/// What the parent needs for every case.
pub struct Env<'a> {
    pub pins: Option<Pins>,
    pub scratch: &'a Scratch,
    /// `--cold`: the rings' pages are not mapped before the clock starts.
    pub cold: bool,
}

/// The ring size for records of `size` bytes: at least `capacity`, and large enough that
/// a record is at most half the ring (the ring's `max_record`).
pub fn ring_capacity(size: usize, capacity: u64) -> u64 {
    (2 * (size as u64 + 8)).next_power_of_two().max(capacity)
}

/// A streaming run: records counted until the consumer stopped the clock.
#[derive(Debug, Clone, Copy)]
pub struct Streamed {
    pub records: u64,
    pub seconds: f64,
    pub counters: Option<Counters>,
}

/// The shmring counters after a run, from `Segment::stats()`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Counters {
    pub total_consumed: u64,
    pub producer_blocks: u64,
    pub consumer_blocks: u64,
    pub producer_sleeps: u64,
    pub consumer_sleeps: u64,
    pub producer_wakes: u64,
    pub consumer_wakes: u64,
    pub missed_wakes: u64,
}

impl Counters {
    fn of(segment: &Segment) -> Counters {
        let s = segment.stats();
        let get = |label| s.get(label).unwrap_or(0);
        Counters {
            total_consumed: s.total_consumed,
            producer_blocks: s.producer_blocks,
            consumer_blocks: s.consumer_blocks,
            producer_sleeps: get("producer_sleeps"),
            consumer_sleeps: get("consumer_sleeps"),
            producer_wakes: get("producer_wakes"),
            consumer_wakes: get("consumer_wakes"),
            missed_wakes: get("producer_missed_wakes") + get("consumer_missed_wakes"),
        }
    }

    /// Futex calls the ring made: every sleep and every wake is one.
    pub fn syscalls(&self) -> u64 {
        self.producer_sleeps + self.consumer_sleeps + self.producer_wakes + self.consumer_wakes
    }
}

/// Streams records of `size` bytes for `duration`: the child produces until told to stop,
/// the parent consumes, stops the clock, tells it to stop and drains to the end record.
pub fn stream(
    env: &Env,
    transport: Transport,
    size: usize,
    capacity: u64,
    duration: Duration,
) -> Result<Streamed, CaseError> {
    let Link { send, recv, segment } = Link::open(transport, size, ring_capacity(size, capacity), env)?;
    let control = Control::new()?;
    let (records, seconds, received) = run_pair(
        &control,
        env.pins,
        move |control| {
            let mut tx = send.attach(size)?;
            control.child_ready()?;
            produce(&mut *tx, control)
        },
        move |control| {
            let mut rx = recv.attach(size, TIMEOUT)?;
            let start = control.parent_go()?;
            consume(&mut *rx, control, start, duration, size)
        },
    )?;
    let counters = segment.map(|s| Counters::of(&s.segment));
    if let Some(c) = counters
        && c.total_consumed != received
    {
        return Err(CaseError::other(format!(
            "the ring counted {} records consumed, the consumer received {received} (end record included)",
            c.total_consumed
        )));
    }
    Ok(Streamed { records, seconds, counters })
}

fn produce(tx: &mut dyn Tx, control: &Control) -> Result<(), CaseError> {
    let mut seq = 0;
    while !control.stopped() {
        seq += tx.send(seq, u64::MAX)?;
    }
    while tx.send(END, 1)? == 0 {}
    Ok(())
}

/// Returns the records counted and the seconds until the clock stopped, and every record
/// received (the end record included).
fn consume(
    rx: &mut dyn Rx,
    control: &Control,
    start: Instant,
    duration: Duration,
    size: usize,
) -> Result<(u64, f64, u64), CaseError> {
    // Looking at the clock costs about as much as a small record: only every few KiB.
    let every = (4096 / size).max(1) as u64;
    let deadline = start + duration;
    let mut check = Checker::new(size);
    let mut look_at = every;
    let (records, seconds) = loop {
        rx.recv(&mut check)?;
        if check.done {
            return Err(CaseError::other("the producer ended before it was told to stop"));
        }
        if check.next >= look_at {
            look_at = check.next + every;
            let now = Instant::now();
            if now >= deadline {
                break (check.next, (now - start).as_secs_f64());
            }
        }
    };
    control.stop();
    while !check.done {
        rx.recv(&mut check)?;
    }
    Ok((records, seconds, check.next + 1))
}

/// How many round trips, and for how long at most.
#[derive(Debug, Clone, Copy)]
pub struct RoundTrips {
    pub warm_up: u64,
    pub count: u64,
    pub max_time: Duration,
}

/// Ping-pong of one record of `size` bytes through two links: the parent sends and times,
/// the child echoes. Returns the measured round trips in ns (warm-up excluded).
pub fn round_trips(
    env: &Env,
    transport: Transport,
    size: usize,
    capacity: u64,
    plan: RoundTrips,
) -> Result<Histogram<u64>, CaseError> {
    let capacity = ring_capacity(size, capacity);
    let down = Link::open(transport, size, capacity, env)?;
    let up = Link::open(transport, size, capacity, env)?;
    let (down_tx, down_rx, up_tx, up_rx) = (down.send, down.recv, up.send, up.recv);
    let control = Control::new()?;
    run_pair(
        &control,
        env.pins,
        move |control| {
            let mut rx = down_rx.attach(size, TIMEOUT)?;
            let mut tx = up_tx.attach(size)?;
            control.child_ready()?;
            echo(&mut *rx, &mut *tx, size)
        },
        move |control| {
            let mut tx = down_tx.attach(size)?;
            let mut rx = up_rx.attach(size, TIMEOUT)?;
            control.parent_go()?;
            ping(&mut *tx, &mut *rx, size, plan)
        },
    )
}

/// The timings of a round-trip run: a warm-up, then up to `plan.count` samples or
/// `plan.max_time` of them, whichever ends first.
struct Samples {
    hist: Histogram<u64>,
    plan: RoundTrips,
    /// When measuring started (the warm-up ended), once it has.
    since: Option<Instant>,
}

impl Samples {
    fn new(plan: RoundTrips) -> Result<Samples, CaseError> {
        let hist = Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).map_err(CaseError::other)?;
        Ok(Samples { hist, plan, since: None })
    }

    /// Takes the sample `t0 .. t1` if the warm-up is over (`warmed_up` says whether it
    /// is, until measuring starts). Returns whether the run is complete.
    fn add(&mut self, t0: Instant, t1: Instant, warmed_up: bool) -> bool {
        match self.since {
            Some(since) => {
                self.hist.saturating_record((t1 - t0).as_nanos().max(1) as u64);
                self.hist.len() >= self.plan.count || t1 - since >= self.plan.max_time
            }
            None => {
                if warmed_up {
                    self.since = Some(t1);
                }
                false
            }
        }
    }
}

fn ping(tx: &mut dyn Tx, rx: &mut dyn Rx, size: usize, plan: RoundTrips) -> Result<Histogram<u64>, CaseError> {
    let mut samples = Samples::new(plan)?;
    let mut check = Checker::new(size);
    let warm_up_until = Instant::now() + plan.max_time / 10;
    let mut seq = 0;
    loop {
        let t0 = Instant::now();
        while tx.send(seq, 1)? == 0 {}
        while check.next <= seq {
            rx.recv(&mut check)?;
        }
        let t1 = Instant::now();
        seq += 1;
        if samples.add(t0, t1, seq >= plan.warm_up || t1 >= warm_up_until) {
            break;
        }
    }
    while tx.send(END, 1)? == 0 {}
    Ok(samples.hist)
}

fn echo(rx: &mut dyn Rx, tx: &mut dyn Tx, size: usize) -> Result<(), CaseError> {
    let mut check = Checker::new(size);
    let mut echoed = 0;
    loop {
        rx.recv(&mut check)?;
        while echoed < check.next {
            echoed += tx.send(echoed, 1)?;
        }
        if check.done {
            return Ok(());
        }
    }
}

/// The length of a busy window in [`busy_windows`].
pub const BUSY_WINDOW: Duration = Duration::from_nanos(250);

/// No transport at all: the parent times back-to-back busy windows of [`BUSY_WINDOW`]
/// (about a fast round trip) while the child spins on the other CPU, as many and for as
/// long at most as a round-trip run. A window that takes longer lost its CPU for the
/// difference, so this histogram's tail is what the machine (other tasks, interrupts, a
/// hypervisor) takes from any round trip of that length, whatever carries it.
pub fn busy_windows(env: &Env, plan: RoundTrips) -> Result<Histogram<u64>, CaseError> {
    let control = Control::new()?;
    run_pair(
        &control,
        env.pins,
        |control| {
            control.child_ready()?;
            // Gives up if the parent never says stop (it died without killing us).
            let mut spin = Spinner::with_limit("busy windows: waiting for the parent's stop", plan.max_time + TIMEOUT);
            while !control.stopped() {
                spin.step()?;
            }
            Ok(())
        },
        |control| {
            let started = control.parent_go()?;
            let mut samples = Samples::new(plan)?;
            let warm_up_until = started + plan.max_time / 10;
            loop {
                let t0 = Instant::now();
                let mut t1 = t0;
                while t1 - t0 < BUSY_WINDOW {
                    t1 = Instant::now();
                }
                if samples.add(t0, t1, t1 >= warm_up_until) {
                    break;
                }
            }
            control.stop();
            Ok(samples.hist)
        },
    )
}

/// What a sleeping consumer did: the CPU it used while waiting, and how late it saw each
/// record.
#[derive(Debug, Clone)]
pub struct Sleeper {
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
    /// Publish to seen, in ns, per record.
    pub delays_ns: Vec<u64>,
}

/// Records the child's consumer waits for: the parent publishes one after each `gap`,
/// noting the time, and the child notes when it sees it; the child also measures the CPU
/// time it used meanwhile (`CLOCK_PROCESS_CPUTIME_ID`) and the wall time.
pub fn sleeper(
    env: &Env,
    transport: Transport,
    wakes: usize,
    gap: Duration,
    capacity: u64,
) -> Result<Sleeper, CaseError> {
    const SIZE: usize = 64;
    // Result slots: CPU ns, wall ns, then the publish times, then the times seen.
    let wakes = wakes.clamp(1, (RESULT_SLOTS - 2) / 2);
    let (published, seen) = (2, 2 + wakes);
    let Link { send, recv, segment: _segment } = Link::open(transport, SIZE, capacity, env)?;
    let control = Control::new()?;
    run_pair(
        &control,
        env.pins,
        move |control| {
            let mut rx = recv.attach(SIZE, gap + TIMEOUT)?;
            control.child_ready()?;
            let (cpu0, wall0) = (clock_ns(ClockId::CLOCK_PROCESS_CPUTIME_ID)?, clock_ns(ClockId::CLOCK_MONOTONIC)?);
            let mut check = Checker::new(SIZE);
            for i in 0..wakes {
                while check.next <= i as u64 {
                    rx.recv(&mut check)?;
                }
                control.set_result(seen + i, clock_ns(ClockId::CLOCK_MONOTONIC)?);
            }
            let (cpu1, wall1) = (clock_ns(ClockId::CLOCK_PROCESS_CPUTIME_ID)?, clock_ns(ClockId::CLOCK_MONOTONIC)?);
            control.set_result(0, cpu1 - cpu0);
            control.set_result(1, wall1 - wall0);
            Ok(())
        },
        move |control| {
            let mut tx = send.attach(SIZE)?;
            control.parent_go()?;
            for i in 0..wakes {
                std::thread::sleep(gap);
                control.set_result(published + i, clock_ns(ClockId::CLOCK_MONOTONIC)?);
                while tx.send(i as u64, 1)? == 0 {}
            }
            Ok(())
        },
    )?;
    Ok(Sleeper {
        cpu_seconds: control.result(0) as f64 / 1e9,
        wall_seconds: control.result(1) as f64 / 1e9,
        delays_ns: (0..wakes).map(|i| control.result(seen + i).saturating_sub(control.result(published + i))).collect(),
    })
}

pub fn clock_ns(clock: ClockId) -> Result<u64, CaseError> {
    let t = clock_gettime(clock).map_err(|e| CaseError::other(format!("clock_gettime: {e}")))?;
    Ok(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}

/// Single-thread memcpy of `size`-byte records into consecutive slots of a ring-sized
/// buffer (what a ring's producer does, without the other side) for `duration`.
/// Returns bytes per second.
pub fn memcpy(size: usize, capacity: u64, duration: Duration) -> f64 {
    let src = vec![0x5au8; size];
    let slots = (ring_capacity(size, capacity) as usize / size).max(2);
    let mut dst = vec![1u8; slots * size]; // written, so its pages are in place
    let every = (4096 / size).max(1) as u64;
    let start = Instant::now();
    let mut copies = 0u64;
    let mut slot = 0;
    loop {
        dst[slot * size..(slot + 1) * size].copy_from_slice(black_box(&src));
        black_box(&mut dst);
        slot = if slot + 1 == slots { 0 } else { slot + 1 };
        copies += 1;
        if copies % every == 0 {
            let elapsed = start.elapsed();
            if elapsed >= duration {
                return (copies * size as u64) as f64 / elapsed.as_secs_f64();
            }
        }
    }
}

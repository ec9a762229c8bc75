//! Two-process throughput and round-trip latency of 64-byte records: shmring against a
//! pipe, a Unix stream socket and a minimal hand-written spin ring, all in one run.
//!
//! ```text
//! cargo bench -p shm-core --bench two_process                        # full run
//! SHMRING_BENCH_QUICK=1 cargo bench -p shm-core --bench two_process  # short run
//! cargo bench -p shm-core --bench two_process -- shmring- rtt-pipe   # cases by name prefix
//! cargo test -p shm-core --release --bench two_process               # smoke run, seconds
//! ```
//!
//! `SHMRING_BENCH_RECORDS`, `SHMRING_BENCH_ROUND_TRIPS` and `SHMRING_BENCH_REPS` override
//! the counts, `SHMRING_BENCH_RING_KIB` the ring size (default 1024). Each case forks: the
//! parent is the consumer (throughput) or the pinger (latency) and takes the time, the
//! child is the producer or the echoer. With two or more CPUs allowed, the parent is
//! pinned to the first and the child to the second (`sched_setaffinity`). Repetitions run
//! every case in turn, so drift of the machine hits all cases alike; ratios are taken
//! within a repetition, then the median. The baseline, `minimal-ring`, is written out
//! below with two diagnostic variants; results and their reading are in
//! `docs/BENCHMARKS.md`.
//!
//! Every record carries its sequence number in its first 8 bytes and the receiving side
//! checks it, so a skipped, repeated or torn record fails the run.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::num::NonZeroUsize;
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, munmap};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use shm_core::{Consumer, Location, Producer, Segment, TryClaimError, WaitStrategy};

/// Payload bytes per record.
const RECORD: usize = 64;
/// Records per shmring batch (`Producer::batch`, `Consumer::read_batch`).
const SHM_BATCH: usize = 64;
/// Records per write/read of the batched pipe and socket cases (16 KiB).
const STREAM_BATCH: usize = 256;
/// Round trips before the measured ones.
const WARM_UP: u64 = 1_000;
/// How long any one wait may last before the run is declared stuck.
const TIMEOUT: Duration = Duration::from_secs(30);

type Result<T, E = String> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------
// Cases

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    /// shmring, one record per claim/commit and read/release.
    Shmring(WaitStrategy),
    /// shmring, `batch()` + `try_push` and `read_batch`, `SHM_BATCH` records at a time.
    ShmringBatch(WaitStrategy),
    /// A pipe, `records` per write and read syscall.
    Pipe { records: usize },
    /// A Unix stream socket pair, `records` per write and read syscall.
    Socket { records: usize },
    /// The hand-written minimal ring, tuned (the baseline is [`BASELINE`]).
    Minimal(Tuning),
}

const STREAMS: [Stream; 11] = [
    Stream::Shmring(WaitStrategy::Spin),
    Stream::Shmring(WaitStrategy::Hybrid),
    Stream::ShmringBatch(WaitStrategy::Spin),
    Stream::ShmringBatch(WaitStrategy::Hybrid),
    Stream::Minimal(BASELINE),
    Stream::Minimal(Tuning { fenced: true, ..BASELINE }),
    Stream::Minimal(Tuning { every: SHM_BATCH as u64, ..BASELINE }),
    Stream::Pipe { records: 1 },
    Stream::Pipe { records: STREAM_BATCH },
    Stream::Socket { records: 1 },
    Stream::Socket { records: STREAM_BATCH },
];

impl Stream {
    fn name(self) -> String {
        match self {
            Stream::Shmring(w) => format!("shmring-{}", w.name()),
            Stream::ShmringBatch(w) => format!("shmring-batch{SHM_BATCH}-{}", w.name()),
            Stream::Pipe { records: 1 } => "pipe-64B".into(),
            Stream::Pipe { records } => format!("pipe-{}KiB", records * RECORD / 1024),
            Stream::Socket { records: 1 } => "unix-socket-64B".into(),
            Stream::Socket { records } => format!("unix-socket-{}KiB", records * RECORD / 1024),
            Stream::Minimal(BASELINE) => "minimal-ring".into(),
            Stream::Minimal(Tuning { every: 1, fenced: true }) => "minimal-ring+fence".into(),
            Stream::Minimal(Tuning { every, fenced }) => {
                format!("minimal-ring-batch{every}{}", if fenced { "+fence" } else { "" })
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Latency {
    Shmring(WaitStrategy),
    Minimal,
    Pipe,
}

const LATENCIES: [Latency; 4] =
    [Latency::Shmring(WaitStrategy::Spin), Latency::Shmring(WaitStrategy::Hybrid), Latency::Minimal, Latency::Pipe];

impl Latency {
    fn name(self) -> String {
        match self {
            Latency::Shmring(w) => format!("rtt-shmring-{}", w.name()),
            Latency::Minimal => "rtt-minimal-ring".into(),
            Latency::Pipe => "rtt-pipe".into(),
        }
    }
}

/// What one run is asked to do.
struct Plan {
    records: u64,
    round_trips: u64,
    reps: usize,
    /// Ring data bytes of the shmring segments and of the minimal ring.
    ring_bytes: u64,
    filters: Vec<String>,
    pins: Option<(usize, usize)>,
}

impl Plan {
    fn from_env() -> Result<Plan> {
        let quick = std::env::var_os("SHMRING_BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0");
        // Without `--bench` (that is, under `cargo test --benches`), a smoke run: every case
        // once, small, to check that it works and that no record goes missing.
        let smoke = !std::env::args().any(|a| a == "--bench");
        let (records, round_trips, reps) = match (smoke, quick) {
            (true, _) => (20_000, 1_000, 1),
            (false, true) => (200_000, 10_000, 3),
            (false, false) => (10_000_000, 100_000, 5),
        };
        let number = |var: &str, default: u64| -> Result<u64> {
            match std::env::var(var) {
                Ok(v) => {
                    v.parse().ok().filter(|&n| n > 0).ok_or_else(|| format!("{var}={v:?} is not a positive number"))
                }
                Err(_) => Ok(default),
            }
        };
        Ok(Plan {
            records: number("SHMRING_BENCH_RECORDS", records)?,
            round_trips: number("SHMRING_BENCH_ROUND_TRIPS", round_trips)?,
            reps: number("SHMRING_BENCH_REPS", reps)? as usize,
            ring_bytes: match number("SHMRING_BENCH_RING_KIB", 1024)? * 1024 {
                b if b.is_power_of_two() && b >= 4096 => b,
                _ => return Err("SHMRING_BENCH_RING_KIB must be a power of two of at least 4".into()),
            },
            // `cargo bench` passes `--bench`; anything not starting with '-' selects cases.
            filters: std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect(),
            pins: None,
        })
    }

    fn selected(&self, name: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| name.starts_with(f.as_str()))
    }
}

// ---------------------------------------------------------------------------------------
// Records

/// A 64-byte record: `seq` in the first 8 bytes, a fixed pattern after.
fn record(seq: u64) -> [u8; RECORD] {
    let mut r = [0x5a; RECORD];
    r[..8].copy_from_slice(&seq.to_le_bytes());
    r
}

/// Checks that `data` is a 64-byte record with sequence number `expected`.
#[inline]
fn check(expected: u64, data: &[u8]) -> Result<()> {
    if data.len() != RECORD {
        return Err(format!("record {expected}: {} bytes, expected {RECORD}", data.len()));
    }
    let seq = u64::from_le_bytes(data[..8].try_into().expect("length checked above"));
    if seq != expected {
        return Err(format!("expected record {expected}, got {seq}: a record was skipped or repeated"));
    }
    Ok(())
}

/// Sends one record at a time.
trait Send64 {
    fn send(&mut self, record: &[u8; RECORD]) -> Result<()>;

    /// Makes whatever `send` has not yet made visible visible.
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Receives one record at a time and checks its sequence number.
trait Recv64 {
    fn recv(&mut self, expected: u64) -> Result<()>;
}

impl Send64 for Producer {
    fn send(&mut self, record: &[u8; RECORD]) -> Result<()> {
        let mut claim = self.claim(RECORD, Some(TIMEOUT)).map_err(|e| e.to_string())?;
        claim.copy_from_slice(record);
        claim.commit();
        Ok(())
    }
}

impl Recv64 for Consumer {
    fn recv(&mut self, expected: u64) -> Result<()> {
        let guard = self.read(Some(TIMEOUT)).map_err(|e| e.to_string())?;
        check(expected, &guard)
        // Dropping the guard releases the record.
    }
}

/// A pipe end or a socket, one syscall per record.
struct Fd<T>(T);

impl<T: Write> Send64 for Fd<T> {
    fn send(&mut self, record: &[u8; RECORD]) -> Result<()> {
        self.0.write_all(record).map_err(|e| format!("write: {e}"))
    }
}

impl<T: Read> Recv64 for Fd<T> {
    fn recv(&mut self, expected: u64) -> Result<()> {
        let mut buf = [0u8; RECORD];
        self.0.read_exact(&mut buf).map_err(|e| format!("read record {expected}: {e}"))?;
        check(expected, &buf)
    }
}

// ---------------------------------------------------------------------------------------
// The minimal ring: the baseline, the least a shared-memory ring of fixed 64-byte slots
// can do. An anonymous shared mapping: the consumer's `head` on the first 128-byte line,
// the producer's `tail` on the second, then the slots. Each side caches the other's
// cursor (as shmring does) and busy-spins; no framing, no counters, no wake-ups, no
// validation of what the other side wrote. The baseline stores its cursor with Release
// after every record; two diagnostic variants change one thing each (`Tuning`).

/// Offset of the consumer's cursor.
const MIN_HEAD: usize = 0;
/// Offset of the producer's cursor.
const MIN_TAIL: usize = 128;
/// Offset of slot 0.
const MIN_SLOTS: usize = 256;

/// How the minimal ring's two sides behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tuning {
    /// Store the cursor after this many records (and whenever about to wait), not after each.
    every: u64,
    /// Issue `fence(SeqCst)` after each cursor store, as shmring's wake-up check does.
    fenced: bool,
}

/// The baseline: a cursor store after each record, no fence.
const BASELINE: Tuning = Tuning { every: 1, fenced: false };

struct MinimalRing {
    base: NonNull<u8>,
    len: usize,
    mask: u64,
}

impl MinimalRing {
    fn new(data_bytes: u64) -> Result<MinimalRing> {
        let slots = data_bytes / RECORD as u64;
        assert!(slots.is_power_of_two());
        let len = MIN_SLOTS + data_bytes as usize;
        // SAFETY: a fresh shared anonymous mapping at an address the kernel picks; it
        // aliases nothing, is zeroed (both cursors 0) and is inherited by a forked child.
        let base = unsafe {
            mmap_anonymous(
                None,
                NonZeroUsize::new(len).expect("non-zero"),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }
        .map_err(|e| format!("mmap: {e}"))?;
        Ok(MinimalRing { base: base.cast(), len, mask: slots - 1 })
    }

    fn cursor(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: offsets 0 and 128 are 8-aligned (the mapping is page-aligned), inside
        // the mapping, and only ever accessed as atomics while `self` keeps it mapped.
        unsafe { self.base.add(offset).cast::<AtomicU64>().as_ref() }
    }

    fn slot(&self, position: u64) -> *mut u8 {
        // SAFETY: `position & mask` is below the slot count, so the slot is inside the mapping.
        unsafe { self.base.as_ptr().add(MIN_SLOTS + (position & self.mask) as usize * RECORD) }
    }

    fn producer(&self, tuning: Tuning) -> MinimalProducer<'_> {
        MinimalProducer { ring: self, tail: 0, published: 0, cached_head: 0, tuning }
    }

    fn consumer(&self, tuning: Tuning) -> MinimalConsumer<'_> {
        MinimalConsumer { ring: self, head: 0, released: 0, cached_tail: 0, tuning }
    }

    /// Stores a side's cursor: Release, so the other side's Acquire load of it sees every
    /// slot write (producer) or is sure every slot read is done (consumer) before it.
    fn store(&self, offset: usize, value: u64, tuning: Tuning) {
        self.cursor(offset).store(value, Ordering::Release);
        if tuning.fenced {
            fence(Ordering::SeqCst); // diagnostic only: the baseline has no fence
        }
    }
}

impl Drop for MinimalRing {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length; no reference into it outlives `self`.
        let _ = unsafe { munmap(self.base.cast(), self.len) };
    }
}

struct MinimalProducer<'a> {
    ring: &'a MinimalRing,
    tail: u64,
    published: u64,
    cached_head: u64,
    tuning: Tuning,
}

impl Send64 for MinimalProducer<'_> {
    fn send(&mut self, record: &[u8; RECORD]) -> Result<()> {
        let mut spin = Spinner::new();
        while self.tail - self.cached_head > self.ring.mask {
            self.flush()?;
            // Acquire: pairs with the consumer's Release store of head; it is done with the slot.
            self.cached_head = self.ring.cursor(MIN_HEAD).load(Ordering::Acquire);
            spin.step("minimal ring: space")?;
        }
        // SAFETY: the slot at `tail` is free (tail - head < slots) and only we write slots.
        unsafe { std::ptr::copy_nonoverlapping(record.as_ptr(), self.ring.slot(self.tail), RECORD) };
        self.tail += 1;
        if self.tail - self.published >= self.tuning.every {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.published != self.tail {
            self.ring.store(MIN_TAIL, self.tail, self.tuning);
            self.published = self.tail;
        }
        Ok(())
    }
}

struct MinimalConsumer<'a> {
    ring: &'a MinimalRing,
    head: u64,
    released: u64,
    cached_tail: u64,
    tuning: Tuning,
}

impl Recv64 for MinimalConsumer<'_> {
    fn recv(&mut self, expected: u64) -> Result<()> {
        let mut spin = Spinner::new();
        while self.head == self.cached_tail {
            if self.released != self.head {
                self.ring.store(MIN_HEAD, self.head, self.tuning);
                self.released = self.head;
            }
            // Acquire: pairs with the producer's Release store of tail; the slot is written.
            self.cached_tail = self.ring.cursor(MIN_TAIL).load(Ordering::Acquire);
            spin.step("minimal ring: data")?;
        }
        // SAFETY: the slot at `head` is published (head < tail) and the producer does not
        // write it again until we store a head past it.
        let data = unsafe { std::slice::from_raw_parts(self.ring.slot(self.head), RECORD) };
        let checked = check(expected, data);
        self.head += 1;
        if self.head - self.released >= self.tuning.every {
            self.ring.store(MIN_HEAD, self.head, self.tuning);
            self.released = self.head;
        }
        checked
    }
}

// ---------------------------------------------------------------------------------------
// Processes

/// A busy wait that gives up after `TIMEOUT`, looking at the clock only now and then.
struct Spinner {
    spins: u32,
    start: Option<Instant>,
}

impl Spinner {
    fn new() -> Self {
        Spinner { spins: 0, start: None }
    }

    #[inline]
    fn step(&mut self, what: &str) -> Result<()> {
        std::hint::spin_loop();
        self.spins = self.spins.wrapping_add(1);
        if self.spins % 4096 == 0 {
            let start = *self.start.get_or_insert_with(Instant::now);
            if start.elapsed() > TIMEOUT {
                return Err(format!("{what}: waited more than {TIMEOUT:?}"));
            }
        }
        Ok(())
    }
}

/// The start line both processes share: the child says it is ready, the parent starts
/// its clock and says go.
struct StartLine {
    base: NonNull<u8>,
}

impl StartLine {
    fn new() -> Result<StartLine> {
        // SAFETY: a fresh shared anonymous page, zeroed, inherited by the forked child.
        let base = unsafe {
            mmap_anonymous(
                None,
                NonZeroUsize::new(4096).expect("non-zero"),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }
        .map_err(|e| format!("mmap: {e}"))?;
        Ok(StartLine { base: base.cast() })
    }

    fn word(&self, index: usize) -> &AtomicU32 {
        // SAFETY: indices 0 and 32 (128 bytes apart) are inside the page, 4-aligned, and
        // only accessed as atomics while `self` keeps the page mapped.
        unsafe { self.base.cast::<AtomicU32>().add(index).as_ref() }
    }

    /// Child: ready, then wait for the parent's go.
    fn child_ready(&self) -> Result<()> {
        // Release/Acquire: the child's setup is done before the parent starts the clock.
        self.word(0).store(1, Ordering::Release);
        let mut spin = Spinner::new();
        while self.word(32).load(Ordering::Acquire) == 0 {
            spin.step("waiting for go")?;
        }
        Ok(())
    }

    /// Parent: wait until the child is ready, start the clock, say go.
    fn parent_go(&self) -> Result<Instant> {
        let mut spin = Spinner::new();
        while self.word(0).load(Ordering::Acquire) == 0 {
            spin.step("waiting for the child")?;
        }
        let start = Instant::now();
        self.word(32).store(1, Ordering::Release);
        Ok(start)
    }
}

impl Drop for StartLine {
    fn drop(&mut self) {
        // SAFETY: mapped in `new`; no reference into it outlives `self`.
        let _ = unsafe { munmap(self.base.cast(), 4096) };
    }
}

/// Pins the calling process to `cpu`.
fn pin(cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(|e| format!("CPU {cpu}: {e}"))?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(|e| format!("sched_setaffinity(CPU {cpu}): {e}"))
}

/// The first two CPUs this process may run on, if there are two.
fn two_cpus() -> Result<Option<(usize, usize)>> {
    let set = sched_getaffinity(Pid::from_raw(0)).map_err(|e| format!("sched_getaffinity: {e}"))?;
    let mut cpus = (0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false));
    Ok(cpus.next().zip(cpus.next()))
}

/// Runs `child` in a forked child process (pinned to the second CPU) and `parent` here,
/// then reaps the child; fails if either side fails.
fn run_pair<T>(
    plan: &Plan,
    child: impl FnOnce(&StartLine) -> Result<()>,
    parent: impl FnOnce(&StartLine) -> Result<T>,
) -> Result<T> {
    let start = StartLine::new()?;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: the bench never starts a thread, so the child is a complete copy of a
    // single-threaded process and may run any code.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(parent); // the parent's ends of the transport, closed here
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                if let Some((_, cpu)) = plan.pins {
                    pin(cpu)?;
                }
                child(&start)
            }));
            let code = match outcome {
                Ok(Ok(())) => 0,
                Ok(Err(e)) => {
                    eprintln!("child: {e}");
                    1
                }
                Err(_) => 2,
            };
            // Ends the child without unwinding into the parent's frames, whose guards
            // (segment unlinks) belong to the parent.
            std::process::exit(code)
        }
        ForkResult::Parent { child: pid } => {
            drop(child); // the child's ends of the transport, so a dead child gives EOF
            let mut reaper = Reaper(Some(pid));
            let result = parent(&start);
            let status = reaper.wait()?;
            match (result, status) {
                (Ok(v), WaitStatus::Exited(_, 0)) => Ok(v),
                (Ok(_), s) => Err(format!("child failed: {s:?}")),
                (Err(e), _) => Err(e),
            }
        }
    }
}

/// Reaps the child; kills it first when dropped before [`Reaper::wait`] (the parent failed).
struct Reaper(Option<Pid>);

impl Reaper {
    fn wait(&mut self) -> Result<WaitStatus> {
        let pid = self.0.take().expect("waited once");
        waitpid(pid, None).map_err(|e| format!("waitpid: {e}"))
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

/// A POSIX segment with a unique name, unlinked when dropped (errors included).
struct TempSegment {
    location: Location,
    segment: Segment,
}

impl TempSegment {
    fn create(plan: &Plan, wait: WaitStrategy) -> Result<TempSegment> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let location =
            Location::posix(&format!("/shmring-bench-{}-{n}", std::process::id())).map_err(|e| e.to_string())?;
        let segment = Segment::builder(location.clone())
            .capacity(plan.ring_bytes)
            .wait_strategy(wait)
            .create()
            .map_err(|e| e.to_string())?;
        Ok(TempSegment { location, segment })
    }
}

impl Drop for TempSegment {
    fn drop(&mut self) {
        let _ = Segment::unlink(&self.location);
    }
}

// ---------------------------------------------------------------------------------------
// Throughput

/// What the shmring counters said after a run.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    producer_blocks: u64,
    consumer_blocks: u64,
    producer_sleeps: u64,
    consumer_sleeps: u64,
    producer_wakes: u64,
    consumer_wakes: u64,
    missed_wakes: u64,
}

impl Counters {
    fn of(segment: &Segment) -> Counters {
        let s = segment.stats();
        let get = |label| s.get(label).unwrap_or(0);
        Counters {
            producer_blocks: s.producer_blocks,
            consumer_blocks: s.consumer_blocks,
            producer_sleeps: get("producer_sleeps"),
            consumer_sleeps: get("consumer_sleeps"),
            producer_wakes: get("producer_wakes"),
            consumer_wakes: get("consumer_wakes"),
            missed_wakes: get("producer_missed_wakes") + get("consumer_missed_wakes"),
        }
    }

    fn add(&mut self, o: Counters) {
        self.producer_blocks += o.producer_blocks;
        self.consumer_blocks += o.consumer_blocks;
        self.producer_sleeps += o.producer_sleeps;
        self.consumer_sleeps += o.consumer_sleeps;
        self.producer_wakes += o.producer_wakes;
        self.consumer_wakes += o.consumer_wakes;
        self.missed_wakes += o.missed_wakes;
    }
}

/// Child side: send records `0..n` one at a time.
fn produce(mut tx: impl Send64, n: u64, start: &StartLine) -> Result<()> {
    start.child_ready()?;
    let mut rec = record(0);
    for seq in 0..n {
        rec[..8].copy_from_slice(&seq.to_le_bytes());
        tx.send(&rec)?;
    }
    tx.flush()
}

/// Parent side: receive and check records `0..n` one at a time; the time from go to the last.
fn consume(mut rx: impl Recv64, n: u64, start: &StartLine) -> Result<Duration> {
    let t0 = start.parent_go()?;
    for seq in 0..n {
        rx.recv(seq)?;
    }
    Ok(t0.elapsed())
}

fn produce_shm_batches(mut producer: Producer, n: u64, start: &StartLine) -> Result<()> {
    start.child_ready()?;
    let mut rec = record(0);
    let mut seq = 0;
    while seq < n {
        let end = (seq + SHM_BATCH as u64).min(n);
        let mut batch = producer.batch();
        while seq < end {
            rec[..8].copy_from_slice(&seq.to_le_bytes());
            match batch.try_push(&rec) {
                Ok(()) => seq += 1,
                Err(TryClaimError::Full) => break,
                Err(e) => return Err(e.to_string()),
            }
        }
        drop(batch); // publishes
        if seq < end {
            producer.wait_for_space(RECORD, Some(TIMEOUT)).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

fn consume_shm_batches(mut consumer: Consumer, n: u64, start: &StartLine) -> Result<Duration> {
    let t0 = start.parent_go()?;
    let mut next = 0;
    while next < n {
        let got = consumer
            .read_batch(SHM_BATCH, |r| {
                check(next, r.data)?;
                next += 1;
                Ok::<(), String>(())
            })
            .map_err(|e| e.to_string())?;
        if got == 0 {
            consumer.wait_for_data(Some(TIMEOUT)).map_err(|e| e.to_string())?;
        }
    }
    Ok(t0.elapsed())
}

fn produce_stream_batches(mut w: impl Write, per_write: usize, n: u64, start: &StartLine) -> Result<()> {
    start.child_ready()?;
    let mut buf: Vec<u8> = (0..per_write).flat_map(|_| record(0)).collect();
    let mut seq = 0;
    while seq < n {
        let k = (n - seq).min(per_write as u64) as usize;
        for rec in buf[..k * RECORD].chunks_exact_mut(RECORD) {
            rec[..8].copy_from_slice(&seq.to_le_bytes());
            seq += 1;
        }
        w.write_all(&buf[..k * RECORD]).map_err(|e| format!("write: {e}"))?;
    }
    Ok(())
}

fn consume_stream_batches(mut r: impl Read, per_read: usize, n: u64, start: &StartLine) -> Result<Duration> {
    let t0 = start.parent_go()?;
    let mut buf = vec![0u8; per_read * RECORD];
    let mut seq = 0;
    while seq < n {
        let k = (n - seq).min(per_read as u64) as usize;
        r.read_exact(&mut buf[..k * RECORD]).map_err(|e| format!("read: {e}"))?;
        for rec in buf[..k * RECORD].chunks_exact(RECORD) {
            check(seq, rec)?;
            seq += 1;
        }
    }
    Ok(t0.elapsed())
}

fn pipe() -> Result<(std::fs::File, std::fs::File)> {
    let (r, w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    Ok((r.into(), w.into()))
}

fn socket_pair() -> Result<(UnixStream, UnixStream)> {
    UnixStream::pair().map_err(|e| format!("socketpair: {e}"))
}

/// One throughput run of `case`: the elapsed time, and the shmring counters.
fn run_stream(plan: &Plan, case: Stream) -> Result<(Duration, Option<Counters>)> {
    let n = plan.records;
    match case {
        Stream::Shmring(wait) | Stream::ShmringBatch(wait) => {
            let temp = TempSegment::create(plan, wait)?;
            let seg = &temp.segment;
            let batched = matches!(case, Stream::ShmringBatch(_));
            let elapsed = run_pair(
                plan,
                |start| {
                    let producer = seg.producer_with(wait).map_err(|e| e.to_string())?;
                    if batched { produce_shm_batches(producer, n, start) } else { produce(producer, n, start) }
                },
                |start| {
                    let consumer = seg.consumer_with(wait).map_err(|e| e.to_string())?;
                    if batched { consume_shm_batches(consumer, n, start) } else { consume(consumer, n, start) }
                },
            )?;
            let stats = seg.stats();
            if stats.total_consumed != n {
                return Err(format!("segment counted {} records consumed, expected {n}", stats.total_consumed));
            }
            Ok((elapsed, Some(Counters::of(seg))))
        }
        Stream::Minimal(tuning) => {
            let ring = MinimalRing::new(plan.ring_bytes)?;
            let elapsed = run_pair(
                plan,
                |start| produce(ring.producer(tuning), n, start),
                |start| consume(ring.consumer(tuning), n, start),
            )?;
            Ok((elapsed, None))
        }
        Stream::Pipe { records } => {
            let (r, w) = pipe()?;
            Ok((run_fd_stream(plan, r, w, records)?, None))
        }
        Stream::Socket { records } => {
            let (r, w) = socket_pair()?;
            Ok((run_fd_stream(plan, r, w, records)?, None))
        }
    }
}

/// A throughput run over a pipe or a socket: `records` per syscall, the child writing `w`.
fn run_fd_stream(plan: &Plan, r: impl Read, w: impl Write, records: usize) -> Result<Duration> {
    let n = plan.records;
    if records == 1 {
        run_pair(plan, |start| produce(Fd(w), n, start), |start| consume(Fd(r), n, start))
    } else {
        run_pair(
            plan,
            |start| produce_stream_batches(w, records, n, start),
            |start| consume_stream_batches(r, records, n, start),
        )
    }
}

// ---------------------------------------------------------------------------------------
// Latency

/// Parent side: send record `i`, wait for its echo, record the round trip in ns.
fn ping(mut tx: impl Send64, mut rx: impl Recv64, plan: &Plan, start: &StartLine) -> Result<Histogram<u64>> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())?;
    start.parent_go()?;
    let mut rec = record(0);
    for seq in 0..WARM_UP + plan.round_trips {
        rec[..8].copy_from_slice(&seq.to_le_bytes());
        let t0 = Instant::now();
        tx.send(&rec)?;
        rx.recv(seq)?;
        let rtt = t0.elapsed();
        if seq >= WARM_UP {
            hist.saturating_record(rtt.as_nanos().max(1) as u64);
        }
    }
    Ok(hist)
}

/// Child side: echo every record back.
fn echo(mut rx: impl Recv64, mut tx: impl Send64, plan: &Plan, start: &StartLine) -> Result<()> {
    start.child_ready()?;
    let mut rec = record(0);
    for seq in 0..WARM_UP + plan.round_trips {
        rx.recv(seq)?;
        rec[..8].copy_from_slice(&seq.to_le_bytes());
        tx.send(&rec)?;
    }
    Ok(())
}

fn run_latency(plan: &Plan, case: Latency) -> Result<Histogram<u64>> {
    match case {
        Latency::Shmring(wait) => {
            let (to_child, to_parent) = (TempSegment::create(plan, wait)?, TempSegment::create(plan, wait)?);
            let (down, up) = (&to_child.segment, &to_parent.segment);
            let attach = |tx: &Segment, rx: &Segment| -> Result<(Producer, Consumer)> {
                Ok((
                    tx.producer_with(wait).map_err(|e| e.to_string())?,
                    rx.consumer_with(wait).map_err(|e| e.to_string())?,
                ))
            };
            run_pair(
                plan,
                |start| {
                    let (tx, rx) = attach(up, down)?;
                    echo(rx, tx, plan, start)
                },
                |start| {
                    let (tx, rx) = attach(down, up)?;
                    ping(tx, rx, plan, start)
                },
            )
        }
        Latency::Minimal => {
            let (down, up) = (MinimalRing::new(plan.ring_bytes)?, MinimalRing::new(plan.ring_bytes)?);
            run_pair(
                plan,
                |start| echo(down.consumer(BASELINE), up.producer(BASELINE), plan, start),
                |start| ping(down.producer(BASELINE), up.consumer(BASELINE), plan, start),
            )
        }
        Latency::Pipe => {
            let ((down_r, down_w), (up_r, up_w)) = (pipe()?, pipe()?);
            run_pair(
                plan,
                |start| echo(Fd(down_r), Fd(up_w), plan, start),
                |start| ping(Fd(down_w), Fd(up_r), plan, start),
            )
        }
    }
}

// ---------------------------------------------------------------------------------------
// Report

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Median over repetitions of `rates[i][rep] / rates[base][rep]`.
fn median_ratio(rates: &[Vec<f64>], i: usize, base: Option<usize>) -> String {
    let Some(b) = base else { return "-".into() };
    let mut r: Vec<f64> = rates[i].iter().zip(&rates[b]).map(|(x, y)| x / y).collect();
    format!("{:.2}", median(&mut r))
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 { format!("{:.2} ms", ns / 1e6) } else { format!("{:.2} µs", ns / 1e3) }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("two_process: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut plan = Plan::from_env()?;
    plan.pins = two_cpus()?;
    match plan.pins {
        Some((parent, child)) => {
            pin(parent)?;
            println!(
                "pinning: parent (consumer / pinger) on CPU {parent}, child (producer / echoer) on CPU {child}, by sched_setaffinity"
            );
        }
        None => println!("pinning: none (fewer than 2 CPUs allowed)"),
    }
    println!(
        "records per throughput run: {}, round trips per latency run: {} (+{WARM_UP} warm-up), repetitions: {}",
        plan.records, plan.round_trips, plan.reps
    );
    println!(
        "record: {RECORD} bytes; rings: {} KiB of data; pipe and socket buffers: kernel defaults\n",
        plan.ring_bytes / 1024
    );

    let streams: Vec<Stream> = STREAMS.into_iter().filter(|c| plan.selected(&c.name())).collect();
    let latencies: Vec<Latency> = LATENCIES.into_iter().filter(|c| plan.selected(&c.name())).collect();

    // Throughput: every case once per repetition, in turn.
    let mut secs = vec![Vec::new(); streams.len()];
    let mut counters = vec![Counters::default(); streams.len()];
    for rep in 0..plan.reps {
        for (i, &case) in streams.iter().enumerate() {
            let (elapsed, c) = run_stream(&plan, case).map_err(|e| format!("{} (rep {rep}): {e}", case.name()))?;
            eprintln!(
                "rep {rep} {:<22} {:>8.3} s {:>12.0} rec/s",
                case.name(),
                elapsed.as_secs_f64(),
                plan.records as f64 / elapsed.as_secs_f64()
            );
            secs[i].push(elapsed.as_secs_f64());
            if let Some(c) = c {
                counters[i].add(c);
            }
        }
    }
    if !streams.is_empty() {
        let rates: Vec<Vec<f64>> = secs.iter().map(|s| s.iter().map(|t| plan.records as f64 / t).collect()).collect();
        let pipe = streams.iter().position(|&c| c == Stream::Pipe { records: 1 });
        let minimal = streams.iter().position(|&c| c == Stream::Minimal(BASELINE));
        let mut out = String::new();
        let _ = writeln!(out, "## Throughput, {} records of {RECORD} B, median of {} runs\n", plan.records, plan.reps);
        let _ = writeln!(
            out,
            "| transport | Mrec/s | MB/s | min..max Mrec/s | x pipe-64B | x minimal-ring |\n|---|---:|---:|---:|---:|---:|"
        );
        for (i, case) in streams.iter().enumerate() {
            let mut r = rates[i].clone();
            let med = median(&mut r);
            let _ = writeln!(
                out,
                "| {} | {:.2} | {:.0} | {:.2}..{:.2} | {} | {} |",
                case.name(),
                med / 1e6,
                med * RECORD as f64 / 1e6,
                r[0] / 1e6,
                r[r.len() - 1] / 1e6,
                median_ratio(&rates, i, pipe),
                median_ratio(&rates, i, minimal),
            );
        }
        let _ = writeln!(out, "\nRatios are medians of the per-repetition ratios (same repetition, back to back).\n");
        let _ = writeln!(out, "## shmring counters, summed over the {} runs of each case\n", plan.reps);
        let _ = writeln!(
            out,
            "| transport | records | producer blocks | consumer blocks | producer sleeps | consumer sleeps | producer wakes | consumer wakes | missed wakes |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (i, case) in streams.iter().enumerate() {
            if matches!(case, Stream::Shmring(_) | Stream::ShmringBatch(_)) {
                let c = counters[i];
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    case.name(),
                    plan.records * plan.reps as u64,
                    c.producer_blocks,
                    c.consumer_blocks,
                    c.producer_sleeps,
                    c.consumer_sleeps,
                    c.producer_wakes,
                    c.consumer_wakes,
                    c.missed_wakes
                );
            }
        }
        println!("{out}");
    }

    // Latency: every case once per repetition, in turn.
    let mut stats: Vec<Vec<[f64; 5]>> = vec![Vec::new(); latencies.len()];
    for rep in 0..plan.reps {
        for (i, &case) in latencies.iter().enumerate() {
            let h = run_latency(&plan, case).map_err(|e| format!("{} (rep {rep}): {e}", case.name()))?;
            let row = [
                h.value_at_quantile(0.5) as f64,
                h.value_at_quantile(0.99) as f64,
                h.value_at_quantile(0.999) as f64,
                h.max() as f64,
                h.mean(),
            ];
            eprintln!(
                "rep {rep} {:<22} p50 {} p99 {} max {}",
                case.name(),
                fmt_ns(row[0]),
                fmt_ns(row[1]),
                fmt_ns(row[3])
            );
            stats[i].push(row);
        }
    }
    if !latencies.is_empty() {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## Round trip of one {RECORD} B record, {} round trips, median of {} runs per statistic\n",
            plan.round_trips, plan.reps
        );
        let _ = writeln!(out, "| transport | p50 | p99 | p99.9 | max | mean |\n|---|---:|---:|---:|---:|---:|");
        for (i, case) in latencies.iter().enumerate() {
            let col = |k: usize| {
                let mut v: Vec<f64> = stats[i].iter().map(|r| r[k]).collect();
                fmt_ns(median(&mut v))
            };
            let _ =
                writeln!(out, "| {} | {} | {} | {} | {} | {} |", case.name(), col(0), col(1), col(2), col(3), col(4));
        }
        println!("{out}");
    }
    Ok(())
}

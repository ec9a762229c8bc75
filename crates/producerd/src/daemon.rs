//! producerd's ring thread: takes records from the source and commits them.
//!
//! Records are written in place (claim, fill, commit): the generator encodes straight
//! into the ring, datagram sources `recv` straight into a claim. Each turn of the loop
//! publishes a batch with one cursor store, bumps the heartbeat, and checks the stop
//! flag, so a stop is honoured within 100 ms and whatever was committed is published.
//!
//! # Ring kinds
//! [`RingProducer`] is the segment's producer, of its kind: spsc (one producer, batches
//! published with one cursor store) or mpsc (this daemon is producer `producer_id`; each
//! record is committed on its own). Every source writes through it. The generator tags
//! each record with the producer id ([`record`]), and resumes per producer:
//! - spsc: after the last committed record, read back from the ring ([`LastFrameGuard`]
//!   keeps it readable);
//! - mpsc: the consumer zeroes what it passes, so its own last record may be gone. The
//!   restarted generator first waits until the consumer has passed every claim made
//!   before it attached (its predecessor's included: a dead one's hole is reclaimed), and
//!   then resumes at the consumer's exact count of this producer's records
//!   ([`Segment::mpsc_released`]). A stopped consumer therefore holds a restarted
//!   generator at its start (it logs that it waits); the ring would hold it soon anyway.

use std::io::Read;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shm_core::ring::frame::framed_len_u32;
use shm_core::ring::{broadcast, mpsc};
use shm_core::{Batch, ClaimError, Producer, Segment, TryClaimError};
use shm_daemon::config::CpuAffinity;
use shm_daemon::record;
use shm_daemon::service::Reloads;
use shm_daemon::test_hooks::Hook;
use tracing::{info, warn};

use crate::config::{SourceKind, max_generated_record};
use crate::ledger::Ledger;

/// Records per batch at most: large enough to amortise the publish. A batch also ends
/// before it would reach the last published record (see [`LastFrameGuard`]).
const BATCH: usize = 256;
/// How long one blocking step may take before the loop checks the stop flag.
const STEP: Duration = Duration::from_millis(100);
/// How long a stopping producer keeps trying to commit records it already took in.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// State shared between the ring thread and the service loop.
#[derive(Debug, Default)]
pub struct Shared {
    /// Set by the service loop to stop.
    pub stop: Arc<AtomicBool>,
    /// Bumped every loop turn.
    pub heartbeat: Arc<AtomicU64>,
    /// SIGHUPs: the new `rate` and `drop_when_full` are read afresh every turn.
    pub reloads: Arc<Reloads>,
    /// Generator rate, changeable on reload.
    pub rate: AtomicU64,
    /// `on_full = "drop"`, changeable on reload.
    pub drop_when_full: AtomicBool,
    /// Records this daemon committed.
    pub committed: AtomicU64,
    /// Records dropped because the ring was full (`on_full = "drop"`).
    pub dropped: AtomicU64,
    /// Input that could not become a record (too large, truncated, I/O errors).
    pub source_errors: AtomicU64,
}

impl Shared {
    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
    /// One turn of the ring thread's loop: the heartbeat, and the last reload taken in
    /// (every loop reads `rate` and `drop_when_full` afresh on its next turn).
    pub(crate) fn beat(&self) {
        self.heartbeat.fetch_add(1, Ordering::Relaxed);
        if let Some(reload) = self.reloads.pending() {
            self.reloads.applied(reload);
        }
    }
}

/// A source, opened (sockets bound) before the daemon reports ready.
pub enum Opened {
    /// The generator.
    Generator(Generator),
    /// Standard input.
    Stdin(StdinBuffer),
    /// A bound UDP socket.
    Udp(std::net::UdpSocket),
    /// A bound Unix datagram socket, removed when the daemon stops.
    Unix(std::os::unix::net::UnixDatagram, std::path::PathBuf),
    /// A JetStream pull consumer.
    Nats(Box<crate::nats_source::NatsSource>),
}

/// The generator's settings and where it has got to. It lives with the source, so a
/// daemon that re-creates an unlinked segment carries the stream on: the sequence
/// continues rather than restarting at 0, and `count` counts across segments.
pub struct Generator {
    /// Records to send, 0 for forever.
    count: u64,
    /// Record size range.
    sizes: (usize, usize),
    /// The next sequence number, once a run has generated.
    next: Option<u64>,
    /// Sequence numbers used so far (records committed or dropped), all segments together.
    used: u64,
}

/// Opens the configured source: a socket that cannot be bound fails here, before
/// READY=1, so systemd sees the start fail.
pub fn open(source: &SourceKind) -> Result<Opened> {
    Ok(match source {
        SourceKind::Generator { count, min_size, max_size, .. } => {
            Opened::Generator(Generator { count: *count, sizes: (*min_size, *max_size), next: None, used: 0 })
        }
        SourceKind::Stdin { binary } => {
            Opened::Stdin(StdinBuffer { binary: *binary, pending: Vec::new(), discarding: Discarding::Nothing })
        }
        SourceKind::Udp { bind } => {
            let sock = std::net::UdpSocket::bind(bind).with_context(|| format!("binding UDP {bind}"))?;
            info!(%bind, "receiving UDP datagrams");
            Opened::Udp(sock)
        }
        SourceKind::Unix { path } => {
            let _ = std::fs::remove_file(path);
            let sock =
                std::os::unix::net::UnixDatagram::bind(path).with_context(|| format!("binding {}", path.display()))?;
            info!(path = %path.display(), "receiving Unix datagrams");
            Opened::Unix(sock, path.clone())
        }
        SourceKind::Nats(settings) => Opened::Nats(Box::new(crate::nats_source::NatsSource::open(settings)?)),
    })
}

/// Runs the source until it ends or a stop is requested, on the calling thread (pinned
/// to `cpus` first, when configured). The source stays open, so a daemon that
/// re-creates an unlinked segment carries on with it.
pub fn run(
    mut producer: RingProducer,
    segment: Segment,
    source: &mut Opened,
    cpus: Option<&CpuAffinity>,
    shared: Arc<Shared>,
) -> Result<()> {
    if let Some(cpus) = cpus {
        cpus.pin_this_thread()?;
    }
    match source {
        Opened::Generator(generator) => match &mut producer {
            RingProducer::Spsc(p) => {
                let guard = LastFrameGuard::new(p, &segment);
                let resume = resume_sequence(p, &segment);
                let crash = CrashAfterBatchWrite { at: Hook::KillAfterBatchWrite.countdown(), filled: 0 };
                generate(
                    &mut SpscTarget { producer: p, segment: &segment, guard, crash },
                    Some(resume),
                    generator,
                    &shared,
                )
            }
            RingProducer::Mpsc(p) => {
                let resume = resume_mpsc(p.id(), &segment, &shared)?;
                generate(p, resume, generator, &shared)
            }
            RingProducer::Broadcast(p, _) => {
                // The ring's record count is exact (each commit publishes it), and the
                // generator's numbers are the ring's: resume right after the last one.
                let resume = p.records();
                info!(next = resume, "resuming after the ring's last published record");
                generate(p, Some(resume), generator, &shared)
            }
        },
        Opened::Stdin(buffer) => read_stream(&mut producer, std::io::stdin().lock(), buffer, &shared),
        Opened::Udp(sock) => receive_datagrams(&mut producer, sock.as_fd(), &shared),
        Opened::Unix(sock, _) => receive_datagrams(&mut producer, sock.as_fd(), &shared),
        Opened::Nats(source) => source.run(&mut producer, &segment, &shared),
    }
}

/// The segment's producer, of the ring's kind.
pub enum RingProducer {
    /// The one producer of an spsc ring.
    Spsc(Producer),
    /// One of the producers of an mpsc or mpmc ring (its id is the config's `producer_id`).
    Mpsc(mpsc::Producer),
    /// The one producer of a broadcast ring, with a buffer for sources that learn a
    /// record's length only once it is read (a broadcast claim commits its whole length).
    Broadcast(broadcast::Producer, Vec<u8>),
}

impl RingProducer {
    fn max_record(&self) -> u64 {
        match self {
            RingProducer::Spsc(p) => p.max_record(),
            RingProducer::Mpsc(p) => p.max_record(),
            RingProducer::Broadcast(p, _) => p.max_record(),
        }
    }

    /// Copies `data` in as one record of `record_type` (below the reserved types).
    fn publish(&mut self, data: &[u8], record_type: u32, timeout: Option<Duration>) -> Result<(), ClaimError> {
        match self {
            RingProducer::Spsc(p) => {
                let mut claim = p.claim(data.len(), timeout)?;
                claim.copy_from_slice(data);
                claim.set_record_type(record_type);
                Ok(claim.commit()?)
            }
            RingProducer::Mpsc(p) => {
                let mut claim = p.claim(data.len(), timeout)?;
                claim.copy_from_slice(data);
                claim.set_record_type(record_type);
                claim.commit();
                Ok(())
            }
            RingProducer::Broadcast(p, _) => {
                let mut claim = p.claim(data.len(), timeout)?;
                claim.copy_from_slice(data);
                claim.set_record_type(record_type);
                claim.commit();
                Ok(())
            }
        }
    }

    /// Claims `room` bytes (waiting up to `timeout`) and lends them to `fill`, which says
    /// how many of them to commit (`None`: abandon the claim) and what to return.
    fn claim_with<T>(
        &mut self,
        room: usize,
        timeout: Option<Duration>,
        fill: impl FnOnce(&mut [u8]) -> (Option<usize>, T),
    ) -> Result<T, ClaimError> {
        match self {
            RingProducer::Spsc(p) => {
                let mut claim = p.claim(room, timeout)?;
                let (commit, out) = fill(&mut claim);
                if let Some(n) = commit {
                    claim.commit_len(n)?;
                }
                Ok(out)
            }
            RingProducer::Mpsc(p) => {
                let mut claim = p.claim(room, timeout)?;
                let (commit, out) = fill(&mut claim);
                if let Some(n) = commit {
                    claim.commit_len(n);
                }
                Ok(out)
            }
            RingProducer::Broadcast(p, copy) => {
                // Wait for room for `room` bytes, abandoning the claim; the one producer's
                // room only grows, so the shorter record published next fits without a wait.
                drop(p.claim(room, timeout)?);
                copy.resize(room, 0);
                let (commit, out) = fill(copy);
                if let Some(n) = commit {
                    p.try_publish(&copy[..n]).map_err(|e| match e {
                        TryClaimError::Full => ClaimError::TimedOut(Duration::ZERO),
                        TryClaimError::TooLarge { len, max } => ClaimError::TooLarge { len, max },
                        TryClaimError::Flush(f) => ClaimError::Flush(f),
                        TryClaimError::Corrupt(c) => ClaimError::Corrupt(c),
                    })?;
                }
                Ok(out)
            }
        }
    }
}

impl Opened {
    /// What the source had taken in and not committed when the daemon stops: records
    /// and bytes (stdin's buffer; the others hold nothing between records).
    pub fn uncommitted(&self) -> (u64, usize) {
        match self {
            Opened::Stdin(buffer) => buffer.uncommitted(),
            _ => (0, 0),
        }
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        if let Opened::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Where a restarted generator continues: after the last committed record, found in
/// the ring; else after as many records as the segment counted.
fn resume_sequence(producer: &Producer, segment: &Segment) -> u64 {
    if let Some(last) = producer.last_committed().and_then(|(_, data)| record::decode(&data)) {
        info!(next = last.seq + 1, "resuming after the last committed record");
        return last.seq + 1;
    }
    let produced = segment.stats().total_produced;
    if produced > 0 {
        warn!(next = produced, "last committed record not found; resuming from the total_produced counter");
    }
    produced
}

/// Where a restarted generator continues on an mpsc ring: the consumer's exact count of
/// this producer's records, once the consumer has passed every claim made before this
/// producer attached ("Ring kinds" in the module docs). `None` when stopped while waiting.
fn resume_mpsc(id: usize, segment: &Segment, shared: &Shared) -> Result<Option<u64>> {
    // Every claim of our predecessors lies below the claim cursor as it is now: we hold
    // the id, and have claimed nothing yet.
    let claimed = segment.stats().write_cursor;
    let mut said = false;
    loop {
        let Some((read_cursor, records)) = segment.mpsc_released(id) else {
            bail!("{}: the consumer's ledger matches no release slot (a damaged segment)", segment.location());
        };
        if read_cursor >= claimed {
            info!(producer_id = id, next = records, "resuming after this producer's records the consumer has");
            return Ok(Some(records));
        }
        if shared.stopping() {
            return Ok(None);
        }
        if !said {
            info!(
                producer_id = id,
                unread_bytes = claimed - read_cursor,
                "waiting for the consumer to pass the ring's earlier records, to resume exactly"
            );
            said = true;
        }
        shared.beat();
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A small deterministic generator of record sizes.
struct Sizes {
    state: u64,
    min: usize,
    span: u64,
}

impl Sizes {
    fn next(&mut self) -> usize {
        if self.span == 0 {
            return self.min;
        }
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.min + (self.state % (self.span + 1)) as usize
    }
}

/// Keeps the generator's resume point readable: a restart resumes after the last
/// published record ([`resume_sequence`]), so no write may reach its bytes before the
/// next publish moves the cursor past something newer. A batch writes from the
/// published cursor on (the padding at a wrap included); it ends before a record that
/// would bring it within the last published frame's bytes, one lap on. With records of
/// at most a third of the ring framed (the config's `max_size` bound), the first record
/// of a batch always fits, so every batch makes progress.
struct LastFrameGuard {
    capacity: u64,
    /// The write cursor as last published.
    published: u64,
    /// Bytes of the last published frame (0: none).
    last_frame: u64,
}

impl LastFrameGuard {
    fn new(producer: &Producer, segment: &Segment) -> Self {
        LastFrameGuard {
            capacity: producer.capacity(),
            // This process is the producer: the cursor is its own and does not move under it.
            published: segment.stats().write_cursor,
            // Only a generator record is a resume point worth keeping; one larger than this
            // ring's generator writes (an earlier config) is counted at that size, so the
            // first record of a batch always fits and the generator never stalls.
            last_frame: producer.last_committed().filter(|(_, data)| record::decode(data).is_some()).map_or(
                0,
                |(_, data)| {
                    framed_len_u32(data.len() as u32)
                        .min(framed_len_u32(max_generated_record(producer.capacity()) as u32))
                },
            ),
        }
    }

    /// Whether a record of `len` bytes, claimed where the batch has got to (`end`),
    /// stays clear of the last published frame.
    fn allows(&self, end: u64, len: usize) -> bool {
        let framed = framed_len_u32(len as u32);
        let to_end = self.capacity - end % self.capacity;
        let advance = if framed <= to_end { framed } else { to_end + framed };
        end + advance - self.published <= self.capacity - self.last_frame
    }

    /// A batch ending at `end` with a last record of `len` bytes was published.
    fn published(&mut self, end: u64, len: usize) {
        (self.published, self.last_frame) = (end, framed_len_u32(len as u32));
    }
}

/// Where the generator writes: the ring, of its kind.
trait GeneratorTarget {
    /// The ring's capacity.
    fn capacity(&self) -> u64;
    /// Writes up to `due` records from `*seq` on (left at the next one) and publishes them.
    fn fill(&mut self, seq: &mut u64, due: u64, sizes: &mut Sizes) -> Result<Filled>;
    /// The ring was full: waits (up to [`STEP`]) for room for `len` bytes.
    fn wait_for_space(&mut self, len: usize) -> Result<()>;
    /// Called before each batch's rate is worked out (for the test hook of [`SpscTarget`]).
    fn before_batch(&mut self, _shared: &Shared) {}
}

/// An spsc ring: batches published with one cursor store, clear of the resume point.
struct SpscTarget<'a> {
    producer: &'a mut Producer,
    segment: &'a Segment,
    guard: LastFrameGuard,
    crash: CrashAfterBatchWrite,
}

/// The test hook [`Hook::KillAfterBatchWrite`]: the batch it names (from 1, unset in a
/// build without the hooks), and the batches filled so far.
struct CrashAfterBatchWrite {
    at: Option<u64>,
    filled: u64,
}

impl GeneratorTarget for SpscTarget<'_> {
    fn capacity(&self) -> u64 {
        self.producer.capacity()
    }

    fn fill(&mut self, seq: &mut u64, due: u64, sizes: &mut Sizes) -> Result<Filled> {
        self.crash.filled += 1;
        let mut batch = self.producer.batch();
        let filled = fill_batch(&mut batch, &self.guard, seq, due, sizes)?;
        if self.crash.at == Some(self.crash.filled) {
            kill_this_process_unpublished(filled.written);
        }
        // A failed msync of the flush policy publishes none of it (exit 74).
        batch.publish().context("generator: publishing a batch")?;
        if filled.written > 0 {
            self.guard.published(filled.end, filled.last_len);
        }
        Ok(filled)
    }

    fn wait_for_space(&mut self, len: usize) -> Result<()> {
        match self.producer.wait_for_space(len, Some(STEP)) {
            Ok(()) | Err(ClaimError::TimedOut(_)) => Ok(()),
            // Kept whole (not formatted), so that the exit code sees a flush failure.
            Err(e) => Err(anyhow::Error::new(e).context("generator")),
        }
    }

    /// Before the batch the test hook names: waits until the consumer has read
    /// everything published (or a stop), so the batch may run a whole lap of the ring;
    /// waiting before the rate is worked out makes it a full batch under a rate too.
    fn before_batch(&mut self, shared: &Shared) {
        if self.crash.at != Some(self.crash.filled + 1) {
            return;
        }
        loop {
            let stats = self.segment.stats();
            if stats.read_cursor >= stats.write_cursor || shared.stopping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// For [`Hook::KillAfterBatchWrite`]: dies by SIGKILL with a batch of `written` records
/// written into the ring and not published, as a power cut or the OOM killer would.
fn kill_this_process_unpublished(written: u64) -> ! {
    warn!(written, "test hook {}: SIGKILL before publishing", Hook::KillAfterBatchWrite.var());
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    // Not reached: SIGKILL cannot be caught or ignored.
    std::process::abort()
}

/// A ring whose generator commits each record on its own (a commit publishes it): mpsc
/// and mpmc producers, and the broadcast producer.
trait OneByOne {
    /// Space claimed for one record.
    type Claim<'a>: std::ops::DerefMut<Target = [u8]>
    where
        Self: 'a;
    /// The ring's capacity.
    fn ring_capacity(&self) -> u64;
    /// The producer id the generator puts in its records.
    fn generator_id(&self) -> u8;
    /// Claims `len` bytes, waiting up to `timeout`.
    fn claim_waiting(&mut self, len: usize, timeout: Duration) -> Result<Self::Claim<'_>, ClaimError>;
    /// Claims `len` bytes without waiting.
    fn claim_now(&mut self, len: usize) -> Result<Self::Claim<'_>, TryClaimError>;
    /// Commits (and so publishes) a claim.
    fn commit(claim: Self::Claim<'_>);
}

impl OneByOne for mpsc::Producer {
    type Claim<'a> = mpsc::Claim<'a>;
    fn ring_capacity(&self) -> u64 {
        self.capacity()
    }
    fn generator_id(&self) -> u8 {
        self.id() as u8
    }
    fn claim_waiting(&mut self, len: usize, timeout: Duration) -> Result<Self::Claim<'_>, ClaimError> {
        self.claim(len, Some(timeout))
    }
    fn claim_now(&mut self, len: usize) -> Result<Self::Claim<'_>, TryClaimError> {
        self.try_claim(len)
    }
    fn commit(claim: Self::Claim<'_>) {
        claim.commit();
    }
}

impl OneByOne for broadcast::Producer {
    type Claim<'a> = broadcast::Claim<'a>;
    fn ring_capacity(&self) -> u64 {
        self.capacity()
    }
    fn generator_id(&self) -> u8 {
        // A broadcast ring has one producer.
        0
    }
    fn claim_waiting(&mut self, len: usize, timeout: Duration) -> Result<Self::Claim<'_>, ClaimError> {
        self.claim(len, Some(timeout))
    }
    fn claim_now(&mut self, len: usize) -> Result<Self::Claim<'_>, TryClaimError> {
        self.try_claim(len)
    }
    fn commit(claim: Self::Claim<'_>) {
        claim.commit();
    }
}

/// Each record claimed and committed on its own; the first of a batch waits up to
/// [`STEP`] for space, so waiting is part of filling.
impl<T: OneByOne> GeneratorTarget for T {
    fn capacity(&self) -> u64 {
        self.ring_capacity()
    }

    fn fill(&mut self, seq: &mut u64, due: u64, sizes: &mut Sizes) -> Result<Filled> {
        let mut filled = Filled { written: 0, full: false, next_size: sizes.next(), end: 0, last_len: 0 };
        let producer_id = self.generator_id();
        while filled.written < due {
            let timeout = (filled.written == 0).then_some(STEP);
            let claim = match timeout {
                Some(t) => self.claim_waiting(filled.next_size, t).map_err(|e| match e {
                    ClaimError::TimedOut(_) => None,
                    e => Some(e.to_string()),
                }),
                None => self.claim_now(filled.next_size).map_err(|e| match e {
                    TryClaimError::Full => None,
                    e => Some(e.to_string()),
                }),
            };
            let mut claim = match claim {
                Ok(claim) => claim,
                Err(None) => {
                    filled.full = filled.written == 0;
                    break;
                }
                Err(Some(e)) => bail!("generator: {e}"),
            };
            record::encode(&mut claim, producer_id, *seq, record::monotonic_ns());
            T::commit(claim);
            *seq += 1;
            filled.written += 1;
            filled.next_size = sizes.next();
        }
        Ok(filled)
    }

    fn wait_for_space(&mut self, _len: usize) -> Result<()> {
        // `fill` waited already.
        Ok(())
    }
}

/// Runs the generator from `resume` (`None`: stopped before it could start).
fn generate(
    target: &mut dyn GeneratorTarget,
    resume: Option<u64>,
    generator: &mut Generator,
    shared: &Shared,
) -> Result<()> {
    let Some(resume) = resume else { return Ok(()) };
    let largest = max_generated_record(target.capacity());
    if generator.sizes.1 > largest {
        bail!(
            "generator: max_size {} is more than {largest} bytes, the most a ring of {} bytes takes while \
             keeping the resume point safe",
            generator.sizes.1,
            target.capacity()
        );
    }
    let mut seq = resume.max(generator.next.unwrap_or(0));
    let first = seq;
    // What `count` leaves for this segment, when it is set.
    let budget = (generator.count != 0).then(|| generator.count.saturating_sub(generator.used));
    let result = generate_from(target, &mut seq, budget, generator.sizes, shared);
    (generator.next, generator.used) = (Some(seq), generator.used + (seq - first));
    if result.is_ok() && budget.is_some_and(|b| seq - first >= b) {
        info!(records = generator.count, "generator finished");
    }
    result
}

/// Generates from `*seq` (left at the next number however it ends), at most `budget`
/// records when set, until stopped.
fn generate_from(
    target: &mut dyn GeneratorTarget,
    seq: &mut u64,
    budget: Option<u64>,
    (min, max): (usize, usize),
    shared: &Shared,
) -> Result<()> {
    let first = *seq;
    let mut ledger = Ledger::from_env()?;
    let mut sizes = Sizes { state: 0x9E37_79B9_7F4A_7C15 ^ first, min, span: (max - min) as u64 };
    let mut rate = shared.rate.load(Ordering::Relaxed);
    let mut rate_since = Instant::now();
    let mut sent_since = 0u64;
    while !shared.stopping() {
        shared.beat();
        if budget.is_some_and(|b| *seq - first >= b) {
            break;
        }
        target.before_batch(shared);
        let now_rate = shared.rate.load(Ordering::Relaxed);
        if now_rate != rate {
            (rate, rate_since, sent_since) = (now_rate, Instant::now(), 0);
        }
        let mut due = BATCH as u64;
        if rate != 0 {
            let allowed = (rate_since.elapsed().as_secs_f64() * rate as f64) as u64;
            due = allowed.saturating_sub(sent_since).min(BATCH as u64);
            if due == 0 {
                std::thread::sleep(Duration::from_secs_f64((1.0 / rate as f64).min(0.01)));
                continue;
            }
        }
        if let Some(b) = budget {
            due = due.min(b - (*seq - first));
        }
        let Filled { written, full, next_size, .. } = target.fill(seq, due, &mut sizes)?;
        // The batch has been published.
        ledger.acknowledge(*seq - written..*seq)?;
        sent_since += written;
        shared.committed.fetch_add(written, Ordering::Relaxed);
        if full {
            if shared.drop_when_full.load(Ordering::Relaxed) && rate != 0 {
                // The dropped records still take their sequence numbers, so a verify
                // sink downstream counts them as lost: dropping is never silent.
                let dropped = due - written;
                *seq += dropped;
                sent_since += dropped;
                shared.dropped.fetch_add(dropped, Ordering::Relaxed);
            } else {
                target.wait_for_space(next_size)?;
            }
        }
    }
    Ok(())
}

/// What filling one batch did.
struct Filled {
    /// Records written.
    written: u64,
    /// It stopped because the ring was full.
    full: bool,
    /// The size of the record it did not write.
    next_size: usize,
    /// Where the batch ends in the ring, and its last record's size.
    end: u64,
    last_len: usize,
}

/// Writes up to `due` generator records into `batch`, from sequence `*seq` on (left at
/// the next one), until the ring is full or `guard` stops it; the caller publishes it.
fn fill_batch(
    batch: &mut Batch<'_>,
    guard: &LastFrameGuard,
    seq: &mut u64,
    due: u64,
    sizes: &mut Sizes,
) -> Result<Filled> {
    let mut filled = Filled { written: 0, full: false, next_size: sizes.next(), end: guard.published, last_len: 0 };
    while filled.written < due && guard.allows(filled.end, filled.next_size) {
        match batch.try_claim(filled.next_size) {
            Ok(mut claim) => {
                filled.end = claim.position() + framed_len_u32(filled.next_size as u32);
                filled.last_len = filled.next_size;
                // An spsc ring has one producer: id 0.
                record::encode(&mut claim, 0, *seq, record::monotonic_ns());
                claim.commit()?; // In a batch: local, never fails.
                *seq += 1;
                filled.written += 1;
                filled.next_size = sizes.next();
            }
            Err(TryClaimError::Full) => {
                filled.full = true;
                break;
            }
            Err(e) => return Err(anyhow::Error::new(e).context("generator")),
        }
    }
    Ok(filled)
}

/// Commits one record of `record_type`, waiting for space in steps; gives up only when
/// stopping and the grace period has passed (the record is then reported lost).
pub(crate) fn commit_waiting(
    producer: &mut RingProducer,
    data: &[u8],
    record_type: u32,
    shared: &Shared,
) -> Result<bool> {
    let mut stop_deadline: Option<Instant> = None;
    loop {
        shared.beat();
        match producer.publish(data, record_type, Some(STEP)) {
            Ok(()) => {
                shared.committed.fetch_add(1, Ordering::Relaxed);
                return Ok(true);
            }
            Err(ClaimError::TimedOut(_)) => {
                if shared.stopping() {
                    let deadline = *stop_deadline.get_or_insert_with(|| Instant::now() + STOP_GRACE);
                    if Instant::now() >= deadline {
                        warn!("stopping with the ring still full: the record taken in stays buffered, uncommitted");
                        return Ok(false);
                    }
                }
            }
            Err(ClaimError::TooLarge { len, max }) => {
                warn!(len, max, "record larger than the ring's maximum; skipped");
                shared.source_errors.fetch_add(1, Ordering::Relaxed);
                return Ok(true);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What stdin has read and not committed yet. It belongs to the source, not to one
/// run: a daemon that moves to a re-created segment carries a partial record (or whole
/// ones a full ring did not take before the stop) over to it, and one that stops
/// counts what it leaves ([`Opened::uncommitted`]).
pub struct StdinBuffer {
    /// Length-prefixed records instead of lines.
    binary: bool,
    pending: Vec<u8>,
    discarding: Discarding,
}

/// A record too large for the ring, being skipped as it arrives (so the buffer never
/// holds more than one record of the ring's maximum size and a read's worth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Discarding {
    Nothing,
    /// The rest of an over-long line.
    UntilNewline,
    /// The rest of an over-long length-prefixed record.
    Bytes(u64),
}

/// The next thing in a stdin buffer.
enum Next {
    /// A record at `start..start + len`; `used` bytes consumed with its framing.
    Record { start: usize, len: usize, used: usize },
    /// `used` bytes skipped (part of a record too large for the ring); `started` when
    /// they begin such a record (counted once as a source error).
    Skipped { used: usize, started: bool },
    /// Nothing complete yet.
    Incomplete,
}

/// Finds the next record in `rest` (stdin's buffer from some point on); a record larger
/// than `max_record` starts a discard.
fn next_record(discarding: &mut Discarding, binary: bool, rest: &[u8], eof: bool, max_record: usize) -> Next {
    match *discarding {
        Discarding::Bytes(left) => {
            let used = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            *discarding = if used as u64 == left { Discarding::Nothing } else { Discarding::Bytes(left - used as u64) };
            return if used == 0 { Next::Incomplete } else { Next::Skipped { used, started: false } };
        }
        Discarding::UntilNewline => {
            return match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    *discarding = Discarding::Nothing;
                    Next::Skipped { used: i + 1, started: false }
                }
                None if rest.is_empty() => Next::Incomplete,
                None => Next::Skipped { used: rest.len(), started: false },
            };
        }
        Discarding::Nothing => {}
    }
    if binary {
        let Some(prefix) = rest.get(..4) else { return Next::Incomplete };
        let len = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if len > max_record {
            warn!(len, max_record, "stdin: a record larger than the ring's maximum; skipped and counted");
            *discarding = Discarding::Bytes(len as u64);
            return Next::Skipped { used: 4, started: true };
        }
        if rest.len() < 4 + len {
            return Next::Incomplete;
        }
        Next::Record { start: 4, len, used: 4 + len }
    } else {
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) if i > max_record => {
                warn!(len = i, max_record, "stdin: a line longer than the ring's maximum record; skipped and counted");
                Next::Skipped { used: i + 1, started: true }
            }
            Some(i) => Next::Record { start: 0, len: i, used: i + 1 },
            None if rest.len() > max_record => {
                warn!(max_record, "stdin: a line longer than the ring's maximum record; skipped and counted");
                *discarding = Discarding::UntilNewline;
                Next::Skipped { used: rest.len(), started: true }
            }
            None if eof && !rest.is_empty() => Next::Record { start: 0, len: rest.len(), used: rest.len() },
            None => Next::Incomplete,
        }
    }
}

impl StdinBuffer {
    /// Records (whole or begun) and bytes still buffered.
    fn uncommitted(&self) -> (u64, usize) {
        let mut discarding = self.discarding;
        let (mut records, mut at) = (0, 0);
        loop {
            match next_record(&mut discarding, self.binary, &self.pending[at..], false, usize::MAX) {
                Next::Record { used, .. } => {
                    records += 1;
                    at += used;
                }
                Next::Skipped { used, .. } => at += used,
                Next::Incomplete => break,
            }
        }
        (records + u64::from(at < self.pending.len()), self.pending.len())
    }
}

/// stdin: lines, or u32 LE length-prefixed records, until EOF or stop. The buffer holds
/// at most one record of the ring's maximum size and one read beyond it.
fn read_stream(
    producer: &mut RingProducer,
    mut input: impl Read + AsFd,
    buffer: &mut StdinBuffer,
    shared: &Shared,
) -> Result<()> {
    let max_record = producer.max_record() as usize;
    let mut chunk = vec![0u8; 1 << 16];
    let mut eof = false;
    loop {
        shared.beat();
        // What is buffered goes first: a record carried over from an earlier segment too.
        let mut used = 0;
        let mut committed_all = true;
        loop {
            match next_record(&mut buffer.discarding, buffer.binary, &buffer.pending[used..], eof, max_record) {
                Next::Record { start, len, used: n } => {
                    let at = used + start;
                    if !commit_waiting(producer, &buffer.pending[at..at + len], 0, shared)? {
                        committed_all = false;
                        break;
                    }
                    used += n;
                }
                Next::Skipped { used: n, started } => {
                    if started {
                        shared.source_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    used += n;
                }
                Next::Incomplete => break,
            }
        }
        buffer.pending.drain(..used);
        if !committed_all {
            return Ok(());
        }
        if eof {
            if !buffer.pending.is_empty() {
                warn!(
                    bytes = buffer.pending.len(),
                    "stdin ended inside a length-prefixed record; the partial record was dropped"
                );
                shared.source_errors.fetch_add(1, Ordering::Relaxed);
                buffer.pending.clear();
            }
            info!("stdin ended");
            return Ok(());
        }
        if shared.stopping() {
            return Ok(());
        }
        let mut fds = [nix::poll::PollFd::new(input.as_fd(), nix::poll::PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => bail!("polling stdin: {e}"),
        }
        let n = input.read(&mut chunk).context("reading stdin")?;
        eof = n == 0;
        buffer.pending.extend_from_slice(&chunk[..n]);
    }
}

/// UDP or Unix datagrams, each received straight into a claim in the ring.
fn receive_datagrams(producer: &mut RingProducer, sock: std::os::fd::BorrowedFd<'_>, shared: &Shared) -> Result<()> {
    use nix::sys::socket::{MsgFlags, recv};
    let tv = nix::sys::time::TimeVal::new(0, STEP.as_micros() as _);
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
        .context("setting a receive timeout")?;
    let room = producer.max_record().min(1 << 18) as usize;
    while !shared.stopping() {
        shared.beat();
        let received = producer.claim_with(room, Some(STEP), |claim| {
            // MSG_TRUNC: the real length even when the datagram did not fit.
            let received = recv(std::os::fd::AsRawFd::as_raw_fd(&sock), claim, MsgFlags::MSG_TRUNC);
            (received.ok().filter(|&n| n <= room), received)
        });
        let received = match received {
            Ok(r) => r,
            Err(ClaimError::TimedOut(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        match received {
            Ok(n) if n <= room => {
                shared.committed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(n) => {
                warn!(len = n, max = room, "datagram larger than the ring's maximum record; dropped");
                shared.source_errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
            Err(e) => bail!("receiving: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use shm_core::Location;

    use super::*;

    /// A batch that dies half-written (never published) leaves the last published
    /// record readable, so a restart resumes right after it: on a ring smaller than a
    /// batch of small records, and on one that holds a few large ones.
    #[test]
    fn a_crashed_batch_never_overwrites_the_resume_point() {
        for (capacity, size) in [(4096u64, 64usize), (1 << 20, 64 << 10)] {
            let name = format!("/shmring-unit-resume-{}-{capacity}", std::process::id());
            let location = Location::parse("posix", &name).expect("a valid name");
            let _ = Segment::unlink(&location);
            let segment = Segment::builder(location.clone()).capacity(capacity).create().expect("create");
            let mut consumer = segment.consumer().expect("consumer");
            let mut producer = segment.producer().expect("producer");
            let mut sizes = Sizes { state: 1, min: size, span: 0 };
            let mut seq = 0;
            let mut guard = LastFrameGuard::new(&producer, &segment);
            // Laps of published batches, each read entirely, as a fast consumer would.
            for _ in 0..5 {
                let filled =
                    fill_batch(&mut producer.batch(), &guard, &mut seq, BATCH as u64, &mut sizes).expect("fill");
                guard.published(filled.end, filled.last_len);
                consumer.read_batch(usize::MAX, |_| Ok::<(), ()>(())).expect("read");
            }
            let published = seq;
            // Then a batch that never gets published: the process dies in it.
            let mut batch = producer.batch();
            fill_batch(&mut batch, &guard, &mut seq, BATCH as u64, &mut sizes).expect("fill");
            std::mem::forget(batch);
            drop(producer);
            let restarted = segment.producer().expect("a new producer");
            let resumed = resume_sequence(&restarted, &segment);
            drop((restarted, consumer, segment));
            let _ = Segment::unlink(&location);
            assert_eq!(
                resumed,
                published,
                "capacity {capacity}, records of {size} bytes: {} written unpublished",
                seq - published
            );
        }
    }
}

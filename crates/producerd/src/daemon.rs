//! producerd's ring thread: takes records from the source and commits them.
//!
//! Records are written in place (claim, fill, commit): the generator encodes straight
//! into the ring, datagram sources `recv` straight into a claim. Each turn of the loop
//! publishes a batch with one cursor store, bumps the heartbeat, and checks the stop
//! flag, so a stop is honoured within 100 ms and whatever was committed is published.

use std::io::Read;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shm_core::{ClaimError, Producer, Segment, TryClaimError};
use shm_daemon::config::CpuAffinity;
use shm_daemon::record;
use tracing::{info, warn};

use crate::config::SourceKind;
use crate::ledger::Ledger;

/// Records per batch: large enough to amortise the publish, small enough that a
/// crashed batch never wraps onto the last published record.
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
    /// Generator rate, changeable on reload.
    pub rate: AtomicU64,
    /// Records this daemon committed.
    pub committed: AtomicU64,
    /// Records dropped because the ring was full (`on_full = "drop"`).
    pub dropped: AtomicU64,
    /// Input that could not become a record (too large, truncated, I/O errors).
    pub source_errors: AtomicU64,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
    fn beat(&self) {
        self.heartbeat.fetch_add(1, Ordering::Relaxed);
    }
}

/// A source, opened (sockets bound) before the daemon reports ready.
pub enum Opened {
    /// The generator.
    Generator(Generator),
    /// Standard input.
    Stdin {
        /// Length-prefixed records instead of lines.
        binary: bool,
    },
    /// A bound UDP socket.
    Udp(std::net::UdpSocket),
    /// A bound Unix datagram socket, removed when the daemon stops.
    Unix(std::os::unix::net::UnixDatagram, std::path::PathBuf),
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
        SourceKind::Stdin { binary } => Opened::Stdin { binary: *binary },
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
    })
}

/// Runs the source until it ends or a stop is requested, on the calling thread (pinned
/// to `cpus` first, when configured). The source stays open, so a daemon that
/// re-creates an unlinked segment carries on with it.
pub fn run(
    mut producer: Producer,
    segment: Segment,
    source: &mut Opened,
    drop_when_full: bool,
    cpus: Option<&CpuAffinity>,
    shared: Arc<Shared>,
) -> Result<()> {
    if let Some(cpus) = cpus {
        cpus.pin_this_thread()?;
    }
    match source {
        Opened::Generator(generator) => generate(&mut producer, &segment, generator, drop_when_full, &shared),
        Opened::Stdin { binary } => read_stream(&mut producer, std::io::stdin().lock(), *binary, &shared),
        Opened::Udp(sock) => receive_datagrams(&mut producer, sock.as_fd(), &shared),
        Opened::Unix(sock, _) => receive_datagrams(&mut producer, sock.as_fd(), &shared),
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

fn generate(
    producer: &mut Producer,
    segment: &Segment,
    generator: &mut Generator,
    drop_when_full: bool,
    shared: &Shared,
) -> Result<()> {
    let mut seq = resume_sequence(producer, segment).max(generator.next.unwrap_or(0));
    let first = seq;
    // What `count` leaves for this segment, when it is set.
    let budget = (generator.count != 0).then(|| generator.count.saturating_sub(generator.used));
    let result = generate_from(producer, &mut seq, budget, generator.sizes, drop_when_full, shared);
    (generator.next, generator.used) = (Some(seq), generator.used + (seq - first));
    if result.is_ok() && budget.is_some_and(|b| seq - first >= b) {
        info!(records = generator.count, "generator finished");
    }
    result
}

/// Generates from `*seq` (left at the next number however it ends), at most `budget`
/// records when set, until stopped.
fn generate_from(
    producer: &mut Producer,
    seq: &mut u64,
    budget: Option<u64>,
    (min, max): (usize, usize),
    drop_when_full: bool,
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
        let mut next_size = sizes.next();
        let mut written = 0u64;
        {
            let mut batch = producer.batch();
            while written < due {
                match batch.try_claim(next_size) {
                    Ok(mut claim) => {
                        record::encode(&mut claim, *seq, record::monotonic_ns());
                        claim.commit();
                        *seq += 1;
                        written += 1;
                        next_size = sizes.next();
                    }
                    Err(TryClaimError::Full) => break,
                    Err(e) => bail!("generator: {e}"),
                }
            }
        }
        // The batch has been published (its drop stored the write cursor).
        ledger.acknowledge(*seq - written..*seq)?;
        sent_since += written;
        shared.committed.fetch_add(written, Ordering::Relaxed);
        if written < due {
            if drop_when_full && rate != 0 {
                // The dropped records still take their sequence numbers, so a verify
                // sink downstream counts them as lost: dropping is never silent.
                let dropped = due - written;
                *seq += dropped;
                sent_since += dropped;
                shared.dropped.fetch_add(dropped, Ordering::Relaxed);
            } else {
                match producer.wait_for_space(next_size, Some(STEP)) {
                    Ok(()) | Err(ClaimError::TimedOut(_)) => {}
                    Err(e) => bail!("generator: {e}"),
                }
            }
        }
    }
    Ok(())
}

/// Commits one record, waiting for space in steps; gives up only when stopping and the
/// grace period has passed (the record is then reported lost).
fn commit_waiting(producer: &mut Producer, data: &[u8], shared: &Shared) -> Result<bool> {
    let mut stop_deadline: Option<Instant> = None;
    loop {
        shared.beat();
        match producer.publish(data, Some(STEP)) {
            Ok(()) => {
                shared.committed.fetch_add(1, Ordering::Relaxed);
                return Ok(true);
            }
            Err(ClaimError::TimedOut(_)) => {
                if shared.stopping() {
                    let deadline = *stop_deadline.get_or_insert_with(|| Instant::now() + STOP_GRACE);
                    if Instant::now() >= deadline {
                        warn!("stopping with the ring still full: one record taken in was not committed");
                        return Ok(false);
                    }
                }
            }
            Err(ClaimError::TooLarge { len, max }) => {
                warn!(len, max, "record larger than the ring's maximum; skipped");
                shared.source_errors.fetch_add(1, Ordering::Relaxed);
                return Ok(true);
            }
            Err(e) => bail!("{e}"),
        }
    }
}

/// stdin: lines, or u32 LE length-prefixed records, until EOF or stop.
fn read_stream(producer: &mut Producer, mut input: impl Read + AsFd, binary: bool, shared: &Shared) -> Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        shared.beat();
        if shared.stopping() {
            break;
        }
        let mut fds = [nix::poll::PollFd::new(input.as_fd(), nix::poll::PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => bail!("polling stdin: {e}"),
        }
        let n = input.read(&mut chunk).context("reading stdin")?;
        let eof = n == 0;
        buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        loop {
            let rest = &buf[start..];
            let (record, used) = if binary {
                if rest.len() < 4 {
                    break;
                }
                let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
                if rest.len() < 4 + len {
                    break;
                }
                (&rest[4..4 + len], 4 + len)
            } else {
                match rest.iter().position(|&b| b == b'\n') {
                    Some(i) => (&rest[..i], i + 1),
                    None if eof && !rest.is_empty() => (rest, rest.len()),
                    None => break,
                }
            };
            let record = record.to_vec();
            start += used;
            if !commit_waiting(producer, &record, shared)? {
                return Ok(());
            }
        }
        buf.drain(..start);
        if eof {
            if !buf.is_empty() {
                warn!(bytes = buf.len(), "stdin ended inside a length-prefixed record; the partial record was dropped");
                shared.source_errors.fetch_add(1, Ordering::Relaxed);
            }
            info!("stdin ended");
            break;
        }
    }
    Ok(())
}

/// UDP or Unix datagrams, each received straight into a claim in the ring.
fn receive_datagrams(producer: &mut Producer, sock: std::os::fd::BorrowedFd<'_>, shared: &Shared) -> Result<()> {
    use nix::sys::socket::{MsgFlags, recv};
    let tv = nix::sys::time::TimeVal::new(0, STEP.as_micros() as _);
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
        .context("setting a receive timeout")?;
    let room = producer.max_record().min(1 << 18) as usize;
    while !shared.stopping() {
        shared.beat();
        let mut claim = match producer.claim(room, Some(STEP)) {
            Ok(c) => c,
            Err(ClaimError::TimedOut(_)) => continue,
            Err(e) => bail!("{e}"),
        };
        // MSG_TRUNC: the real length even when the datagram did not fit.
        match recv(std::os::fd::AsRawFd::as_raw_fd(&sock), &mut claim, MsgFlags::MSG_TRUNC) {
            Ok(n) if n <= room => {
                claim.commit_len(n);
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

//! The producing and consuming loops of the [`crate::records`] stream, shared
//! by the `ring-peer` binary and by tests that fork instead of spawning it.
//!
//! [`produce`] writes records `0..total` (or, resuming, from after the last record the
//! ring committed), each through the API its sequence number picks. [`consume`] reads
//! until it has seen record `total - 1`, alternating between `Consumer::read_batch` and
//! `Consumer::read`, checks each record and that it is the next one, and releases it
//! only once it passed. Both report in a one-line `key=value` summary.

use std::time::Duration;

use shm_core::{BatchError, ClaimError, Consumer, Producer, ReadError, Segment, TryClaimError};

use crate::Progress;
use crate::records::{self, Api, Violation};

/// Records a consumer reads one way before switching to the other.
const SWITCH_EVERY: u64 = 997;
/// Bytes an `Api::ClaimLen` record claims when it is smaller.
const DATAGRAM: usize = 2048;
/// Most records one `read_batch` call takes.
const READ_BATCH: usize = 64;
/// One record at a time, the consumer releases explicitly (and reports progress) after
/// every this many records; in between, the ring releases lazily on its own.
const LAZY_RELEASE_EVERY: u64 = 8;

/// How to run one side of the stream.
#[derive(Debug, Default)]
pub struct Options {
    /// The stream is records `0..total`.
    pub total: u64,
    /// Producer: continue after the ring's last committed record. Consumer: accept
    /// whatever record comes first, then check the rest follow it.
    pub resume: bool,
    /// Longest single wait for the other side (`None`: forever).
    pub timeout: Option<Duration>,
    /// Stop for good in the middle of this record: a producer after claiming it and
    /// writing half, a consumer while holding it unreleased.
    pub stall_at: Option<u64>,
    /// Where to publish progress.
    pub progress: Option<Progress>,
}

impl Options {
    fn report(&self, f: impl FnOnce(&Progress)) {
        if let Some(p) = &self.progress {
            f(p);
        }
    }

    fn begin(&self, seq: u64) {
        self.report(|p| p.begin(seq));
    }

    fn done_below(&self, end: u64) {
        self.report(|p| p.done_below(end));
    }

    fn stall_in(&self, seq: u64) -> ! {
        self.report(|p| p.stall_at(seq));
        stall();
    }
}

/// Why a side stopped.
#[derive(Debug)]
pub enum StreamError {
    /// The stream is wrong: a record lost, duplicated, reordered, torn or mistyped.
    Violation(Violation),
    /// The other side did not move within the timeout.
    TimedOut(String),
    /// The ring refused (corruption, a record too large, ...).
    Ring(String),
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::Violation(v) => write!(f, "violation: {v}"),
            StreamError::TimedOut(what) | StreamError::Ring(what) => f.write_str(what),
        }
    }
}

impl From<Violation> for StreamError {
    fn from(v: Violation) -> Self {
        StreamError::Violation(v)
    }
}

impl From<ClaimError> for StreamError {
    fn from(e: ClaimError) -> Self {
        match e {
            ClaimError::TimedOut(_) => StreamError::TimedOut(format!("producer: {e}")),
            e => StreamError::Ring(format!("producer: {e}")),
        }
    }
}

impl From<ReadError> for StreamError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::TimedOut(_) => StreamError::TimedOut(format!("consumer: {e}")),
            e => StreamError::Ring(format!("consumer: {e}")),
        }
    }
}

/// Stops for good (until killed), keeping everything the caller holds.
pub fn stall() -> ! {
    loop {
        std::thread::park();
    }
}

/// Produces the stream into `producer` (of `segment`); returns the summary line.
pub fn produce(segment: &Segment, producer: &mut Producer, opts: &Options) -> Result<String, StreamError> {
    let max = usize::try_from(producer.max_record()).unwrap_or(usize::MAX);
    let start = if opts.resume { resume_point(segment, producer, max)? } else { 0 };
    let timeout = opts.timeout;
    opts.report(|p| p.start_at(start));
    opts.done_below(start);
    let mut buf = vec![0u8; max];
    let mut seq = start;
    while seq < opts.total {
        if opts.stall_at == Some(seq) {
            // Everything before it is published; claim this one, write half, stop.
            opts.begin(seq);
            let mut claim = producer.claim(records::record_len(seq, max), timeout)?;
            encode_half(seq, &mut claim);
            opts.stall_in(seq);
        }
        let len = records::record_len(seq, max);
        let api = Api::for_seq(seq);
        match api {
            Api::Publish => {
                opts.begin(seq);
                records::encode(seq, &mut buf[..len]);
                producer.publish(&buf[..len], timeout)?;
                seq += 1;
            }
            Api::Claim => {
                opts.begin(seq);
                let mut claim = producer.claim(len, timeout)?;
                records::encode(seq, &mut claim);
                claim.set_record_type(api.record_type());
                claim.commit().map_err(ClaimError::from)?;
                seq += 1;
            }
            Api::ClaimLen => {
                // Room for a whole datagram, as a receiver claims it before it knows the size.
                opts.begin(seq);
                let mut claim = producer.claim(len.max(DATAGRAM.min(max)), timeout)?;
                records::encode(seq, &mut claim[..len]);
                claim.set_record_type(api.record_type());
                claim.commit_len(len).map_err(ClaimError::from)?;
                seq += 1;
            }
            Api::Batch => {
                // Whatever of this block fits now goes out as one batch; wait only when
                // not even the first fits.
                let block_end = opts.total.min((seq / records::BLOCK + 1) * records::BLOCK);
                producer.wait_for_space(len, timeout)?;
                let mut batch = producer.batch();
                while seq < block_end && opts.stall_at != Some(seq) {
                    opts.begin(seq);
                    let mut claim = match batch.try_claim(records::record_len(seq, max)) {
                        Ok(claim) => claim,
                        Err(TryClaimError::Full) => break,
                        Err(e) => return Err(StreamError::Ring(format!("producer: {e}"))),
                    };
                    records::encode(seq, &mut claim);
                    claim.set_record_type(api.record_type());
                    claim.commit().map_err(ClaimError::from)?;
                    seq += 1;
                }
                batch.publish().map_err(ClaimError::from)?;
            }
        }
        opts.done_below(seq);
    }
    let (count, last) = (opts.total.saturating_sub(start), opts.total.wrapping_sub(1));
    Ok(format!("role=producer first={start} last={last} count={count} resumed={}", opts.resume))
}

/// Writes the first half of record `seq` into a claim: what a producer killed between
/// claim and commit leaves behind.
fn encode_half(seq: u64, claim: &mut [u8]) {
    let mut full = vec![0u8; claim.len()];
    records::encode(seq, &mut full);
    let half = claim.len() / 2;
    claim[..half].copy_from_slice(&full[..half]);
}

/// Where a restarted producer continues: after the last record the ring committed.
fn resume_point(segment: &Segment, producer: &Producer, max: usize) -> Result<u64, StreamError> {
    match producer.last_committed() {
        Some((record_type, data)) => Ok(records::check(&data, record_type, max)? + 1),
        None if segment.stats().write_cursor == 0 => Ok(0),
        None => Err(StreamError::Ring("resume: the ring holds records but its last committed one is not found".into())),
    }
}

/// What the consumer has seen.
#[derive(Default)]
struct Seen {
    /// The first record accepted.
    first: Option<u64>,
    /// The record that must come next; `None` until a resuming consumer has seen one.
    next: Option<u64>,
    count: u64,
    bytes: u64,
    via_read: u64,
    via_batch: u64,
}

impl Seen {
    /// Checks record `data` and that it is the next one; returns its sequence number.
    fn check(&self, data: &[u8], record_type: u32, max: usize) -> Result<u64, Violation> {
        let seq = records::check(data, record_type, max)?;
        match self.next {
            Some(expected) if seq != expected => Err(Violation::Sequence { expected, found: seq }),
            _ => Ok(seq),
        }
    }

    /// Reports that the consumer starts on record `seq`.
    fn begin(&self, opts: &Options, seq: u64) {
        if self.first.is_none() {
            opts.report(|p| p.start_at(seq));
        }
        opts.begin(seq);
    }

    fn accept(&mut self, seq: u64, len: usize) {
        self.first.get_or_insert(seq);
        self.next = Some(seq + 1);
        self.count += 1;
        self.bytes += len as u64;
    }
}

/// Why the batch sink refused a record.
enum Refusal {
    Bad(Violation),
    /// The record to stall on: left unreleased for `read` to take and hold.
    Stall,
}

/// Consumes the stream from `consumer` (of `segment`); returns the summary line.
pub fn consume(segment: &Segment, consumer: &mut Consumer, opts: &Options) -> Result<String, StreamError> {
    let max = usize::try_from(segment.geometry().max_record).unwrap_or(usize::MAX);
    let timeout = opts.timeout;
    let mut seen = Seen { next: (!opts.resume).then_some(0), ..Seen::default() };
    while seen.next.is_none_or(|next| next < opts.total) {
        if (seen.count / SWITCH_EVERY) % 2 == 0 {
            let mut refusal = None;
            let result = consumer.read_batch(READ_BATCH, |r| match seen.check(r.data, r.record_type, max) {
                Ok(seq) if opts.stall_at == Some(seq) => {
                    refusal = Some(Refusal::Stall);
                    Err(())
                }
                Ok(seq) => {
                    seen.begin(opts, seq);
                    seen.accept(seq, r.data.len());
                    seen.via_batch += 1;
                    Ok(())
                }
                Err(v) => {
                    refusal = Some(Refusal::Bad(v));
                    Err(())
                }
            });
            // read_batch has released what the sink accepted.
            if let Some(next) = seen.next {
                opts.done_below(next);
            }
            match (result, refusal) {
                (Ok(0), _) => consumer.wait_for_data(timeout)?,
                (Ok(_), _) => {}
                (Err(BatchError::Sink { .. }), Some(Refusal::Bad(v))) => return Err(v.into()),
                (Err(BatchError::Sink { .. }), _) => {
                    // Take the record the sink left in the ring, and hold it unreleased.
                    let guard = consumer.read(timeout)?;
                    let seq = seen.check(&guard, guard.record_type(), max)?;
                    seen.begin(opts, seq);
                    opts.stall_in(seq);
                }
                (Err(BatchError::Corrupt(c)), _) => return Err(StreamError::Ring(format!("consumer: {c}"))),
            }
        } else {
            let guard = consumer.read(timeout)?;
            let seq = seen.check(&guard, guard.record_type(), max)?;
            seen.begin(opts, seq);
            if opts.stall_at == Some(seq) {
                // Return everything read before it, then hold this one unreleased.
                guard.unread();
                consumer.release_read();
                opts.done_below(seq);
                let _held = consumer.read(timeout)?;
                opts.stall_in(seq);
            }
            seen.accept(seq, guard.len());
            seen.via_read += 1;
            // Marks it read; the ring returns its space lazily (a few records later, or
            // when the consumer catches up). Only released records count as done: a
            // successor of a consumer killed now gets the others again.
            drop(guard);
            if seq % LAZY_RELEASE_EVERY == LAZY_RELEASE_EVERY - 1 {
                consumer.release_read();
                opts.done_below(seq + 1);
            }
        }
    }
    let Seen { first, next, count, bytes, via_read, via_batch } = seen;
    let (first, last) = (first.unwrap_or(0), next.unwrap_or(1) - 1);
    Ok(format!(
        "role=consumer first={first} last={last} count={count} bytes={bytes} via_read={via_read} via_batch={via_batch}"
    ))
}

//! The ring kinds side by side: spsc 1->1, mpsc 2->1, broadcast 1->2 and mpmc 2->2, each
//! a segment of that kind with every producer and every consumer in its own process.
//!
//! Four processes on a two-CPU machine cannot all spin: the handles of every kind row
//! wait with [`KIND_WAIT`] (hybrid: spin briefly, then sleep on the futex), spsc's too, so
//! that the ratio to spsc is the cost of the kind and not of the wait. The producers run
//! on the children's CPU, the consumers on the parent's; the parent itself only keeps the
//! time and sleeps.
//!
//! Each producer publishes one record per call, numbered from 0 in its first 8 bytes,
//! until the parent raises the stop flag, then one [`END`] record. Each consumer reads one
//! record per call and checks it: its length, its producer (the id the ring reports), and
//! its number, which must be the next of that producer's for spsc, mpsc and broadcast
//! (each broadcast consumer sees every record) and higher than the last one this worker
//! had from that producer for mpmc. Every consumer also sums, per producer, the count, the
//! numbers and their squares (wrapping); the parent checks that the sums over the
//! consumers are exactly those of `0..published` once per entitled consumer (mpmc: once in
//! all), so a record lost or delivered twice fails the case.
//!
//! A consumer counts the records it received until it first sees the stop flag (it looks
//! every few KiB) and the time from the go to that look. A row's `records/s` is the
//! distinct records through the ring per second: the consumer's rate for spsc and mpsc,
//! the mean of the consumers' rates for broadcast (each sees all), their sum for mpmc.
//! `deliveries/s` is the sum of the consumers' rates.

use std::time::Duration;

use nix::time::ClockId;
use shm_core::{RingKind, Segment, WaitStrategy};

use super::CaseError;
use super::ErrorKind;
use super::cleanup::{Backing, TempSegment};
use super::measure::{Env, clock_ns, ring_capacity};
use super::process::{Control, GroupChild, TIMEOUT, run_group};
use super::transport::END;

/// The wait strategy of every handle of a kind row (see the module docs).
pub const KIND_WAIT: WaitStrategy = WaitStrategy::Hybrid;

/// One row of the kinds table: a ring kind with its producers and consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KindRow {
    /// One producer, one consumer: the baseline of the ratios.
    Spsc,
    /// Two producers, one consumer.
    Mpsc,
    /// One producer, two consumers that each read every record.
    Broadcast,
    /// Two producers, two competing workers.
    Mpmc,
}

impl KindRow {
    /// Every row, in the order of the table (the default selection).
    pub const ALL: [KindRow; 4] = [KindRow::Spsc, KindRow::Mpsc, KindRow::Broadcast, KindRow::Mpmc];

    /// The baseline of the ratios.
    pub const BASELINE: KindRow = KindRow::Spsc;

    pub fn kind(self) -> RingKind {
        match self {
            KindRow::Spsc => RingKind::Spsc,
            KindRow::Mpsc => RingKind::Mpsc,
            KindRow::Broadcast => RingKind::Broadcast,
            KindRow::Mpmc => RingKind::Mpmc,
        }
    }

    pub fn producers(self) -> usize {
        match self {
            KindRow::Spsc | KindRow::Broadcast => 1,
            KindRow::Mpsc | KindRow::Mpmc => 2,
        }
    }

    pub fn consumers(self) -> usize {
        match self {
            KindRow::Spsc | KindRow::Mpsc => 1,
            KindRow::Broadcast | KindRow::Mpmc => 2,
        }
    }

    /// Its name on the command line: `mpsc-2to1`.
    pub fn name(self) -> String {
        format!("{}-{}to{}", self.kind().name(), self.producers(), self.consumers())
    }

    /// Parses a name; the error lists the valid ones.
    pub fn parse(name: &str) -> Result<KindRow, String> {
        KindRow::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
            let valid: Vec<String> = KindRow::ALL.iter().map(|k| k.name()).collect();
            format!("unknown ring kind row {name:?}; valid: {}, or none", valid.join(", "))
        })
    }

    /// How many times each record is delivered: once per consumer for broadcast.
    fn deliveries_per_record(self) -> u64 {
        match self {
            KindRow::Broadcast => self.consumers() as u64,
            _ => 1,
        }
    }

    /// The wait, as the row prints it: which, and why.
    pub fn wait_note(self, cpus: usize) -> String {
        format!("{}: {} processes on {cpus} CPU(s)", KIND_WAIT.name(), self.producers() + self.consumers())
    }
}

/// What one run of a kind row measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KindRun {
    /// Distinct records through the ring per second (module docs).
    pub records_per_s: f64,
    /// Records handed to consumers per second, summed over them.
    pub deliveries_per_s: f64,
    /// Each consumer's records until it saw the stop flag, and its seconds until then.
    pub consumer_records: Vec<u64>,
    pub consumer_seconds: Vec<f64>,
    /// Records each producer published (its end record not included).
    pub published: Vec<u64>,
}

// Result slots of the control page.
/// Producer `p`'s published count.
const PUBLISHED: usize = 0;
/// Consumer `c`'s count at its first look at the stop flag, and ns from go to that look.
const STOP_COUNT: usize = 8;
/// Workers that took an end record (mpmc: all stop when every producer's end is taken).
const ENDS_TAKEN: usize = 20;
/// Consumer `c`'s sums for producer `p`: count, sum, sum of squares, at `SUMS + 3 (c P + p)`.
const SUMS: usize = 24;
const _: () = assert!(SUMS + 3 * 2 * 2 <= super::process::RESULT_SLOTS);

/// One record as a consumer saw it.
struct Seen {
    producer: usize,
    seq: u64,
    len: usize,
}

/// The reading end of one kind: reads one record, waiting up to a timeout (`None` when it
/// ran out), and releases it (or acknowledges it) before returning.
trait Reader {
    fn next(&mut self, timeout: Duration) -> Result<Option<Seen>, CaseError>;
}

/// The writing end of one kind: publishes one record, waiting for space.
trait Writer {
    fn publish(&mut self, data: &[u8]) -> Result<(), CaseError>;
}

fn number(data: &[u8]) -> u64 {
    data.get(..8).map_or(u64::MAX - 1, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

fn timed_out<T>(r: Result<T, shm_core::ReadError>) -> Result<Option<T>, CaseError> {
    match r {
        Ok(t) => Ok(Some(t)),
        Err(shm_core::ReadError::TimedOut(_)) => Ok(None),
        Err(e) => Err(CaseError::other(e)),
    }
}

impl Reader for shm_core::Consumer {
    fn next(&mut self, timeout: Duration) -> Result<Option<Seen>, CaseError> {
        Ok(timed_out(self.read(Some(timeout)))?.map(|g| Seen { producer: 0, seq: number(&g), len: g.len() }))
    }
}

impl Reader for shm_core::ring::mpsc::Consumer {
    fn next(&mut self, timeout: Duration) -> Result<Option<Seen>, CaseError> {
        Ok(timed_out(self.read(Some(timeout)))?.map(|g| Seen { producer: g.producer(), seq: number(&g), len: g.len() }))
    }
}

impl Reader for shm_core::ring::broadcast::Consumer {
    fn next(&mut self, timeout: Duration) -> Result<Option<Seen>, CaseError> {
        let Some(r) = timed_out(self.read(Some(timeout)))? else { return Ok(None) };
        if r.missed != 0 {
            return Err(CaseError {
                kind: ErrorKind::Sequence,
                message: format!("a broadcast consumer missed {} records before record {}", r.missed, r.seq),
            });
        }
        Ok(Some(Seen { producer: 0, seq: number(r.data), len: r.data.len() }))
    }
}

impl Reader for shm_core::ring::mpmc::Worker {
    fn next(&mut self, timeout: Duration) -> Result<Option<Seen>, CaseError> {
        let Some(job) = timed_out(self.take(Some(timeout)))? else { return Ok(None) };
        let seen = Seen { producer: job.producer(), seq: number(&job), len: job.len() };
        job.ack().map_err(CaseError::other)?;
        Ok(Some(seen))
    }
}

impl Writer for shm_core::Producer {
    fn publish(&mut self, data: &[u8]) -> Result<(), CaseError> {
        shm_core::Producer::publish(self, data, Some(TIMEOUT)).map_err(CaseError::other)
    }
}

impl Writer for shm_core::ring::mpsc::Producer {
    fn publish(&mut self, data: &[u8]) -> Result<(), CaseError> {
        shm_core::ring::mpsc::Producer::publish(self, data, Some(TIMEOUT)).map_err(CaseError::other)
    }
}

impl Writer for shm_core::ring::broadcast::Producer {
    fn publish(&mut self, data: &[u8]) -> Result<(), CaseError> {
        shm_core::ring::broadcast::Producer::publish(self, data, Some(TIMEOUT)).map_err(CaseError::other)
    }
}

fn attach_writer(row: KindRow, segment: &Segment, p: usize) -> Result<Box<dyn Writer>, CaseError> {
    let e = CaseError::other;
    Ok(match row {
        KindRow::Spsc => Box::new(segment.producer_with(KIND_WAIT).map_err(e)?),
        KindRow::Mpsc | KindRow::Mpmc => Box::new(segment.mpsc_producer(p).map_err(e)?),
        KindRow::Broadcast => Box::new(segment.broadcast_producer().map_err(e)?),
    })
}

fn attach_reader(row: KindRow, segment: &Segment, c: usize) -> Result<Box<dyn Reader>, CaseError> {
    let e = CaseError::other;
    Ok(match row {
        KindRow::Spsc => Box::new(segment.consumer_with(KIND_WAIT).map_err(e)?),
        KindRow::Mpsc => Box::new(segment.mpsc_consumer().map_err(e)?),
        KindRow::Broadcast => Box::new(segment.broadcast_consumer(&format!("bench-{c}")).map_err(e)?),
        KindRow::Mpmc => Box::new(segment.mpmc_worker(c).map_err(e)?),
    })
}

/// Runs one repetition of `row` with records of `size` bytes for `duration`.
pub fn run(env: &Env, row: KindRow, size: usize, capacity: u64, duration: Duration) -> Result<KindRun, CaseError> {
    let temp =
        TempSegment::create_kind(Backing::Posix, env.scratch, ring_capacity(size, capacity), KIND_WAIT, row.kind())?;
    let segment = &temp.segment;
    let control = Control::new()?;
    let prefault = !env.cold;
    let mut children: Vec<GroupChild<'_>> = Vec::new();
    // Consumers first: a broadcast consumer joins at the newest record, so every one must
    // be attached before a producer publishes (they all are before the go).
    for c in 0..row.consumers() {
        children.push((
            env.pins.map(|p| p.parent_cpu),
            Box::new(move |control: &Control| {
                prefault_segment(segment, prefault)?;
                let mut reader = attach_reader(row, segment, c)?;
                control.child_ready()?;
                consume(&mut *reader, row, control, c, size)
            }),
        ));
    }
    for p in 0..row.producers() {
        children.push((
            env.pins.map(|p| p.child_cpu),
            Box::new(move |control: &Control| {
                prefault_segment(segment, prefault)?;
                let mut writer = attach_writer(row, segment, p)?;
                control.child_ready()?;
                produce(&mut *writer, control, p, size)
            }),
        ));
    }
    run_group(&control, children, |control| {
        control.parent_go()?;
        std::thread::sleep(duration);
        control.stop();
        Ok(())
    })?;
    check_sums(row, &control)?;
    let consumer_records: Vec<u64> = (0..row.consumers()).map(|c| control.result(STOP_COUNT + 2 * c)).collect();
    let consumer_seconds: Vec<f64> =
        (0..row.consumers()).map(|c| control.result(STOP_COUNT + 2 * c + 1) as f64 / 1e9).collect();
    let rates: Vec<f64> = consumer_records
        .iter()
        .zip(&consumer_seconds)
        .map(|(&n, &s)| if s > 0.0 { n as f64 / s } else { 0.0 })
        .collect();
    let deliveries_per_s: f64 = rates.iter().sum();
    Ok(KindRun {
        records_per_s: deliveries_per_s / row.deliveries_per_record() as f64,
        deliveries_per_s,
        consumer_records,
        consumer_seconds,
        published: (0..row.producers()).map(|p| control.result(PUBLISHED + p)).collect(),
    })
}

fn prefault_segment(segment: &Segment, prefault: bool) -> Result<(), CaseError> {
    if prefault {
        segment.prefault().map_err(|e| CaseError::other(format!("prefaulting the ring: {e}")))?;
    }
    Ok(())
}

fn produce(writer: &mut dyn Writer, control: &Control, p: usize, size: usize) -> Result<(), CaseError> {
    let mut record = vec![0x5a; size];
    let mut seq = 0u64;
    while !control.stopped() {
        record[..8].copy_from_slice(&seq.to_le_bytes());
        writer.publish(&record)?;
        seq += 1;
    }
    control.set_result(PUBLISHED + p, seq);
    record[..8].copy_from_slice(&END.to_le_bytes());
    writer.publish(&record)
}

/// Per producer: count, sum and sum of squares (wrapping) of the numbers received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sums {
    count: u64,
    sum: u64,
    squares: u64,
}

impl Sums {
    fn add(&mut self, seq: u64) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(seq);
        self.squares = self.squares.wrapping_add(seq.wrapping_mul(seq));
    }

    /// The sums of `0..n`, `times` over.
    fn of_range(n: u64, times: u64) -> Sums {
        let n128 = u128::from(n);
        let sum = n128 * n128.saturating_sub(1) / 2;
        let squares = n128.saturating_sub(1) * n128 * (2 * n128).saturating_sub(1) / 6;
        let t = u128::from(times);
        Sums { count: n * times, sum: (sum * t) as u64, squares: (squares * t) as u64 }
    }
}

fn sequence_error(message: String) -> CaseError {
    CaseError { kind: ErrorKind::Sequence, message }
}

fn consume(reader: &mut dyn Reader, row: KindRow, control: &Control, c: usize, size: usize) -> Result<(), CaseError> {
    let producers = row.producers();
    let competing = row == KindRow::Mpmc;
    let start = clock_ns(ClockId::CLOCK_MONOTONIC)?;
    let every = (4096 / size).max(1) as u64;
    // Per producer: the next number expected (at least, for a competing worker), and
    // whether its end record came.
    let mut next = vec![0u64; producers];
    let mut ended = vec![false; producers];
    let mut sums = vec![Sums::default(); producers];
    let mut received = 0u64;
    let mut stop_seen = false;
    let note_stop = |received: u64| -> Result<(), CaseError> {
        control.set_result(STOP_COUNT + 2 * c, received);
        control.set_result(STOP_COUNT + 2 * c + 1, clock_ns(ClockId::CLOCK_MONOTONIC)?.saturating_sub(start));
        Ok(())
    };
    // A worker waits in short turns: another may take the last end record.
    let wait = if competing { Duration::from_millis(1) } else { TIMEOUT };
    loop {
        if competing && control.shared_count(ENDS_TAKEN) == producers as u64 {
            break;
        }
        if !competing && ended.iter().all(|&e| e) {
            break;
        }
        let Some(seen) = reader.next(wait)? else {
            if competing {
                continue;
            }
            return Err(CaseError::other(format!("no record for {TIMEOUT:?}")));
        };
        if seen.len != size || seen.producer >= producers || ended[seen.producer] {
            return Err(sequence_error(format!(
                "after {received} records: a record of {} bytes from producer {}{}, expected {size} bytes from one \
                 of {producers}",
                seen.len,
                seen.producer,
                if ended.get(seen.producer) == Some(&true) { " past its end record" } else { "" },
            )));
        }
        let p = seen.producer;
        if seen.seq == END {
            ended[p] = true;
            if competing {
                control.count_up(ENDS_TAKEN);
            }
            continue;
        }
        let in_order = if competing { seen.seq >= next[p] } else { seen.seq == next[p] };
        if !in_order {
            return Err(sequence_error(format!(
                "producer {p}: expected record {}{}, got {}",
                if competing { "at least " } else { "" },
                next[p],
                seen.seq
            )));
        }
        next[p] = seen.seq + 1;
        sums[p].add(seen.seq);
        received += 1;
        if !stop_seen && received % every == 0 && control.stopped() {
            stop_seen = true;
            note_stop(received)?;
        }
    }
    if !stop_seen {
        note_stop(received)?;
    }
    for (p, s) in sums.iter().enumerate() {
        let at = SUMS + 3 * (c * producers + p);
        control.set_result(at, s.count);
        control.set_result(at + 1, s.sum);
        control.set_result(at + 2, s.squares);
    }
    Ok(())
}

/// Every record published reached each consumer entitled to it exactly once (module docs).
fn check_sums(row: KindRow, control: &Control) -> Result<(), CaseError> {
    let producers = row.producers();
    for p in 0..producers {
        let published = control.result(PUBLISHED + p);
        let got = |c: usize| {
            let at = SUMS + 3 * (c * producers + p);
            Sums { count: control.result(at), sum: control.result(at + 1), squares: control.result(at + 2) }
        };
        let per_consumer: Vec<Sums> = (0..row.consumers()).map(got).collect();
        let (received, expected) = if row == KindRow::Broadcast {
            // Each consumer on its own: every record once.
            for (c, s) in per_consumer.iter().enumerate() {
                if *s != Sums::of_range(published, 1) {
                    return Err(sequence_error(format!(
                        "broadcast consumer {c} received {} of the {published} records published (or some twice)",
                        s.count
                    )));
                }
            }
            continue;
        } else {
            let all = per_consumer.iter().fold(Sums::default(), |a, s| Sums {
                count: a.count + s.count,
                sum: a.sum.wrapping_add(s.sum),
                squares: a.squares.wrapping_add(s.squares),
            });
            (all, Sums::of_range(published, 1))
        };
        if received != expected {
            return Err(sequence_error(format!(
                "producer {p} published {published} records; the consumers received {} (sums {} / {}, expected {} / {})",
                received.count, received.sum, received.squares, expected.sum, expected.squares
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sums_of_a_range_are_those_of_adding_each_number() {
        for n in [0u64, 1, 2, 7, 1000] {
            let mut s = Sums::default();
            for _ in 0..2 {
                (0..n).for_each(|i| s.add(i));
            }
            assert_eq!(s, Sums::of_range(n, 2), "n = {n}");
        }
        let mut twice = Sums::default();
        [0, 1, 1].into_iter().for_each(|i| twice.add(i));
        assert_ne!(twice, Sums::of_range(3, 1), "a repeat in place of a record is not the range");
    }

    /// A control page as the children of a `row` run would leave it: each producer
    /// published `published[p]`, and each consumer received `got(c, p)` of them.
    fn control_with(row: KindRow, published: &[u64], got: impl Fn(usize, usize) -> Vec<u64>) -> Control {
        let control = Control::new().expect("a control page");
        for (p, &n) in published.iter().enumerate() {
            control.set_result(PUBLISHED + p, n);
            for c in 0..row.consumers() {
                let mut s = Sums::default();
                got(c, p).into_iter().for_each(|i| s.add(i));
                let at = SUMS + 3 * (c * row.producers() + p);
                control.set_result(at, s.count);
                control.set_result(at + 1, s.sum);
                control.set_result(at + 2, s.squares);
            }
        }
        control
    }

    #[test]
    fn a_record_lost_or_delivered_twice_fails_the_check() {
        // mpmc: the workers share the records; together, each once.
        let split = |c: usize, _p: usize| (0..100).filter(|i| i % 2 == c as u64).collect();
        check_sums(KindRow::Mpmc, &control_with(KindRow::Mpmc, &[100, 100], split)).expect("each record once");
        let both = |_c: usize, _p: usize| (0..100).collect();
        let twice = check_sums(KindRow::Mpmc, &control_with(KindRow::Mpmc, &[100, 100], both)).expect_err("twice");
        assert_eq!(twice.kind, ErrorKind::Sequence, "{}", twice.message);
        // A repeat in place of a lost record keeps the count: the sums still differ.
        let swapped = |c: usize, p: usize| {
            let mut v: Vec<u64> = split(c, p);
            if c == 0 && p == 1 {
                v[3] = v[2] + 1;
            }
            v
        };
        assert!(check_sums(KindRow::Mpmc, &control_with(KindRow::Mpmc, &[100, 100], swapped)).is_err());
        // broadcast: every consumer gets every record.
        check_sums(KindRow::Broadcast, &control_with(KindRow::Broadcast, &[50], |_, _| (0..50).collect()))
            .expect("each consumer got all");
        let short = |c: usize, _p: usize| (0..if c == 1 { 49 } else { 50 }).collect();
        let e = check_sums(KindRow::Broadcast, &control_with(KindRow::Broadcast, &[50], short)).expect_err("lost");
        assert!(e.message.contains("consumer 1 received 49 of the 50"), "{}", e.message);
        // mpsc: one consumer, both producers' records.
        check_sums(KindRow::Mpsc, &control_with(KindRow::Mpsc, &[7, 9], |_, p| (0..[7, 9][p]).collect())).expect("all");
        assert!(check_sums(KindRow::Mpsc, &control_with(KindRow::Mpsc, &[7, 9], |_, _| (0..7).collect())).is_err());
    }

    #[test]
    fn names_parse_back() {
        for k in KindRow::ALL {
            assert_eq!(KindRow::parse(&k.name()), Ok(k));
        }
        assert_eq!(KindRow::ALL.map(KindRow::name), ["spsc-1to1", "mpsc-2to1", "broadcast-1to2", "mpmc-2to2"]);
        assert!(KindRow::parse("spmc").expect_err("unknown").contains("mpmc-2to2"));
    }
}

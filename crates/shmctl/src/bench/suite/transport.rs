//! The transports compared, and the two ends of each: a sender ([`Tx`]) and a receiver
//! ([`Rx`]) that checks every record's sequence number.
//!
//! A record of `size` bytes carries its sequence number (u64 LE) in its first 8 bytes and a
//! fixed pattern after. The sender ends a stream with [`END`] in place of a number.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use shm_core::{BatchError, Consumer, Producer, Segment, TryClaimError, WaitStrategy};

use super::cleanup::{Backing, TempSegment};
use super::measure::Env;
use super::minimal_ring::MinimalRing;
use super::process::TIMEOUT;
use super::{CaseError, ErrorKind};

/// The sequence number that ends a stream.
pub const END: u64 = u64::MAX;
/// Bytes per call of the batched transports (a record is never split for a batch).
pub const BATCH_BYTES: usize = 64 * 1024;
/// Largest message a seqpacket sender writes; larger records go as several messages.
const SEQPACKET_MAX: usize = 64 * 1024;

/// Records per call of a batched transport for records of `size` bytes.
pub fn batch_records(size: usize) -> usize {
    (BATCH_BYTES / size).max(1)
}

/// A transport, by the name the command line uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// shmring over POSIX shm: one record per claim/commit and read/release, or batches
    /// (`Producer::batch` + `try_push`, `Consumer::read_batch`).
    Shmring { wait: WaitStrategy, batch: bool },
    /// shmring over a file in `$TMPDIR`, one record per call, hybrid waits.
    ShmringFile,
    /// The baseline ring (see [`super::minimal_ring`]).
    Minimal,
    /// A pipe.
    Pipe { batch: bool },
    /// A Unix stream socket pair.
    UnixStream { batch: bool },
    /// A Unix seqpacket socket pair; batched, several records per message.
    UnixSeqpacket { batch: bool },
    /// TCP over loopback with `TCP_NODELAY`.
    Tcp { batch: bool },
}

impl Transport {
    /// Every transport, in the order of the tables (the default selection).
    pub const ALL: [Transport; 16] = [
        Transport::Shmring { wait: WaitStrategy::Spin, batch: false },
        Transport::Shmring { wait: WaitStrategy::Hybrid, batch: false },
        Transport::Shmring { wait: WaitStrategy::Futex, batch: false },
        Transport::Shmring { wait: WaitStrategy::Spin, batch: true },
        Transport::Shmring { wait: WaitStrategy::Hybrid, batch: true },
        Transport::Shmring { wait: WaitStrategy::Futex, batch: true },
        Transport::ShmringFile,
        Transport::Minimal,
        Transport::Pipe { batch: false },
        Transport::Pipe { batch: true },
        Transport::UnixStream { batch: false },
        Transport::UnixStream { batch: true },
        Transport::UnixSeqpacket { batch: false },
        Transport::UnixSeqpacket { batch: true },
        Transport::Tcp { batch: false },
        Transport::Tcp { batch: true },
    ];

    /// The baseline of every throughput ratio.
    pub const BASELINE: Transport = Transport::Minimal;
    /// The baseline of the batched cases' second ratio.
    pub const BATCH_BASELINE: Transport = Transport::UnixStream { batch: true };

    pub fn name(self) -> String {
        let batched = |base: &str, batch: bool| if batch { format!("{base}-batch") } else { base.to_owned() };
        match self {
            Transport::Shmring { wait, batch: false } => format!("shmring-{}", wait.name()),
            Transport::Shmring { wait, batch: true } => format!("shmring-batch-{}", wait.name()),
            Transport::ShmringFile => "shmring-file".into(),
            Transport::Minimal => "minimal-ring".into(),
            Transport::Pipe { batch } => batched("pipe", batch),
            Transport::UnixStream { batch } => batched("unix-stream", batch),
            Transport::UnixSeqpacket { batch } => batched("unix-seqpacket", batch),
            Transport::Tcp { batch } => batched("tcp", batch),
        }
    }

    /// Parses a name; the error lists the valid ones.
    pub fn parse(name: &str) -> Result<Transport, String> {
        Transport::ALL.into_iter().find(|t| t.name() == name).ok_or_else(|| {
            let valid: Vec<String> = Transport::ALL.iter().map(|t| t.name()).collect();
            format!("unknown transport {name:?}; valid transports: {}", valid.join(", "))
        })
    }

    /// Whether it moves several records per call.
    pub fn is_batched(self) -> bool {
        match self {
            Transport::Shmring { batch, .. }
            | Transport::Pipe { batch }
            | Transport::UnixStream { batch }
            | Transport::UnixSeqpacket { batch }
            | Transport::Tcp { batch } => batch,
            Transport::ShmringFile | Transport::Minimal => false,
        }
    }

    /// The wait strategy of a shmring transport.
    pub fn wait_strategy(self) -> Option<WaitStrategy> {
        match self {
            Transport::Shmring { wait, .. } => Some(wait),
            Transport::ShmringFile => Some(WaitStrategy::Hybrid),
            _ => None,
        }
    }

    /// Round trips are measured one record at a time; a batched transport's would be its
    /// unbatched twin's.
    pub fn has_latency(self) -> bool {
        !self.is_batched()
    }
}

/// Checks each received record: its length, then its sequence number.
pub struct Checker {
    size: usize,
    /// The next sequence number expected: the count of records received so far.
    pub next: u64,
    /// Whether the end record arrived.
    pub done: bool,
}

impl Checker {
    pub fn new(size: usize) -> Checker {
        Checker { size, next: 0, done: false }
    }

    #[inline]
    pub fn record(&mut self, data: &[u8]) -> Result<(), CaseError> {
        if data.len() != self.size || self.done {
            return Err(CaseError {
                kind: ErrorKind::Sequence,
                message: format!(
                    "after record {}: {} bytes received{}, expected {}",
                    self.next,
                    data.len(),
                    if self.done { " past the end record" } else { "" },
                    self.size
                ),
            });
        }
        let seq = u64::from_le_bytes(data[..8].try_into().expect("a record has at least 8 bytes"));
        if seq == END {
            self.done = true;
        } else if seq != self.next {
            return Err(CaseError {
                kind: ErrorKind::Sequence,
                message: format!(
                    "expected record {}, got {seq}: a record was {}",
                    self.next,
                    if seq > self.next { "skipped" } else { "repeated" }
                ),
            });
        } else {
            self.next += 1;
        }
        Ok(())
    }
}

/// The sending end of a transport, attached in the sending process.
pub trait Tx {
    /// Sends the records numbered `first`, `first + 1`, ...: at most `max`, as many as one
    /// call of this transport carries. Returns how many it sent (0 when it had to wait).
    fn send(&mut self, first: u64, max: u64) -> Result<u64, CaseError>;
}

/// The receiving end of a transport, attached in the receiving process.
pub trait Rx {
    /// Receives what one call of this transport gives (waiting when there is nothing) and
    /// passes each record to `check`.
    fn recv(&mut self, check: &mut Checker) -> Result<(), CaseError>;
}

/// `count` records of `size` bytes in a row, pattern-filled, numbered on demand.
struct Records {
    buf: Vec<u8>,
    size: usize,
}

impl Records {
    fn new(size: usize, count: usize) -> Records {
        Records { buf: vec![0x5a; size * count], size }
    }

    fn capacity(&self) -> usize {
        self.buf.len() / self.size
    }

    /// Numbers the first `n` records from `first` and returns them.
    #[inline]
    fn numbered(&mut self, first: u64, n: usize) -> &[u8] {
        for (i, rec) in self.buf.chunks_exact_mut(self.size).take(n).enumerate() {
            rec[..8].copy_from_slice(&first.wrapping_add(i as u64).to_le_bytes());
        }
        &self.buf[..n * self.size]
    }
}

/// One direction of a transport, made before the fork: the sending end for one process,
/// the receiving end for the other, and the segment (if any) for the statistics.
pub struct Link {
    pub send: SendEnd,
    pub recv: RecvEnd,
    pub segment: Option<TempSegment>,
}

/// A ring end's `prefault`: map the ring's pages in the attaching process before the
/// clock starts (the default; `--cold` leaves them to fault in during the run).
pub enum SendEnd {
    Ring { segment: Segment, wait: WaitStrategy, batch: bool, prefault: bool },
    Minimal(Arc<MinimalRing>),
    Fd { file: File, batch: bool, max_message: Option<usize> },
}

pub enum RecvEnd {
    Ring { segment: Segment, wait: WaitStrategy, batch: bool, prefault: bool },
    Minimal(Arc<MinimalRing>),
    Fd { file: File, batch: bool, max_message: Option<usize> },
}

impl Link {
    /// Makes one direction of `transport` for records of `size` bytes; `capacity` is the
    /// ring size of the rings (already large enough for the record).
    pub fn open(transport: Transport, size: usize, capacity: u64, env: &Env) -> Result<Link, CaseError> {
        let prefault = !env.cold;
        let ring = |backing, wait, batch| -> Result<Link, CaseError> {
            let temp = TempSegment::create(backing, env.scratch, capacity, wait)?;
            let segment = temp.segment.clone();
            Ok(Link {
                send: SendEnd::Ring { segment: segment.clone(), wait, batch, prefault },
                recv: RecvEnd::Ring { segment, wait, batch, prefault },
                segment: Some(temp),
            })
        };
        let fds = |(rx, tx): (OwnedFd, OwnedFd), batch, max_message| Link {
            send: SendEnd::Fd { file: tx.into(), batch, max_message },
            recv: RecvEnd::Fd { file: rx.into(), batch, max_message },
            segment: None,
        };
        let sys = |what: &str, e: &dyn std::fmt::Display| CaseError::other(format!("{what}: {e}"));
        Ok(match transport {
            Transport::Shmring { wait, batch } => ring(Backing::Posix, wait, batch)?,
            Transport::ShmringFile => ring(Backing::File, WaitStrategy::Hybrid, false)?,
            Transport::Minimal => {
                let ring = Arc::new(MinimalRing::new(capacity, size, prefault)?);
                Link { send: SendEnd::Minimal(ring.clone()), recv: RecvEnd::Minimal(ring), segment: None }
            }
            Transport::Pipe { batch } => fds(nix::unistd::pipe().map_err(|e| sys("pipe", &e))?, batch, None),
            Transport::UnixStream { batch } => {
                let pair = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
                    .map_err(|e| sys("socketpair", &e))?;
                fds(pair, batch, None)
            }
            Transport::UnixSeqpacket { batch } => {
                let pair = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
                    .map_err(|e| sys("socketpair", &e))?;
                fds(pair, batch, Some(SEQPACKET_MAX))
            }
            Transport::Tcp { batch } => {
                let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| sys("tcp bind", &e))?;
                let addr = listener.local_addr().map_err(|e| sys("tcp", &e))?;
                let tx = TcpStream::connect(addr).map_err(|e| sys("tcp connect", &e))?;
                let (rx, _) = listener.accept().map_err(|e| sys("tcp accept", &e))?;
                for s in [&tx, &rx] {
                    s.set_nodelay(true).map_err(|e| sys("TCP_NODELAY", &e))?;
                }
                fds((rx.into(), tx.into()), batch, None)
            }
        })
    }
}

impl SendEnd {
    /// Attaches the sender for records of `size` bytes, in the process that sends.
    pub fn attach(self, size: usize) -> Result<Box<dyn Tx>, CaseError> {
        let batch = |b: bool| if b { batch_records(size) } else { 1 };
        Ok(match self {
            SendEnd::Ring { segment, wait, batch: b, prefault } => Box::new(RingTx {
                producer: {
                    prefault_ring(&segment, prefault)?;
                    segment.producer_with(wait).map_err(CaseError::other)?
                },
                records: Records::new(size, batch(b)),
            }),
            SendEnd::Minimal(ring) => Box::new(super::minimal_ring::MinimalTx::new(ring)?),
            SendEnd::Fd { file, batch: b, max_message } => {
                Box::new(FdTx { file, records: Records::new(size, batch(b)), max_message })
            }
        })
    }
}

impl RecvEnd {
    /// Attaches the receiver for records of `size` bytes, in the process that receives;
    /// a ring read gives up after `timeout` without data.
    pub fn attach(self, size: usize, timeout: Duration) -> Result<Box<dyn Rx>, CaseError> {
        Ok(match self {
            RecvEnd::Ring { segment, wait, batch, prefault } => Box::new(RingRx {
                consumer: {
                    prefault_ring(&segment, prefault)?;
                    segment.consumer_with(wait).map_err(CaseError::other)?
                },
                batch: if batch { batch_records(size) } else { 1 },
                timeout,
            }),
            RecvEnd::Minimal(ring) => Box::new(super::minimal_ring::MinimalRx::new(ring)?),
            RecvEnd::Fd { file, batch, max_message } => {
                // Each read asks for what one write of the sender carries: one record, a
                // batch, or (seqpacket) a whole message, never less, or a message would be cut.
                let per_read = if batch { batch_records(size) * size } else { size };
                let per_read = max_message.map_or(per_read, |m| per_read.min(m));
                Box::new(FdRx { file, buf: vec![0; size + per_read], per_read, filled: 0, size })
            }
        })
    }
}

struct RingTx {
    producer: Producer,
    /// A batch's records, numbered together before the pushes: numbering each one just
    /// before its copy would stall the copy on the store it reads (no store forwarding
    /// from a narrower store), a cost the batched cases would measure. Records that did
    /// not fit are numbered again next call, but a batch rarely meets a full ring.
    records: Records,
}

impl Tx for RingTx {
    fn send(&mut self, first: u64, max: u64) -> Result<u64, CaseError> {
        let n = (self.records.capacity() as u64).min(max) as usize;
        if n == 1 {
            let rec = self.records.numbered(first, 1);
            let mut claim = self.producer.claim(rec.len(), Some(TIMEOUT)).map_err(CaseError::other)?;
            claim.copy_from_slice(rec);
            claim.commit().map_err(CaseError::other)?;
            return Ok(1);
        }
        let size = self.records.size;
        let recs = self.records.numbered(first, n);
        let mut pushed = 0;
        let mut batch = self.producer.batch();
        for rec in recs.chunks_exact(size) {
            match batch.try_push(rec) {
                Ok(()) => pushed += 1,
                Err(TryClaimError::Full) => break,
                Err(e) => return Err(CaseError::other(e)),
            }
        }
        drop(batch); // publishes
        if pushed == 0 {
            self.producer.wait_for_space(size, Some(TIMEOUT)).map_err(CaseError::other)?;
        }
        Ok(pushed)
    }
}

struct RingRx {
    consumer: Consumer,
    batch: usize,
    timeout: Duration,
}

impl Rx for RingRx {
    fn recv(&mut self, check: &mut Checker) -> Result<(), CaseError> {
        if self.batch == 1 {
            let guard = self.consumer.read(Some(self.timeout)).map_err(CaseError::other)?;
            return check.record(&guard); // dropping the guard releases the record
        }
        let got = self.consumer.read_batch(self.batch, |r| check.record(r.data)).map_err(|e| match e {
            BatchError::Sink { error, .. } => error,
            BatchError::Corrupt(c) => CaseError::other(c),
        })?;
        if got == 0 {
            self.consumer.wait_for_data(Some(self.timeout)).map_err(CaseError::other)?;
        }
        Ok(())
    }
}

/// Maps the ring's pages into this process (see [`SendEnd`]): the child of the fork
/// shares the mapping but not its page tables.
fn prefault_ring(segment: &Segment, prefault: bool) -> Result<(), CaseError> {
    if prefault {
        segment.prefault().map_err(|e| CaseError::other(format!("prefaulting the ring: {e}")))?;
    }
    Ok(())
}

/// A pipe or socket end: one write per record, or per batch of records.
struct FdTx {
    file: File,
    records: Records,
    /// Seqpacket: the largest message to write.
    max_message: Option<usize>,
}

impl Tx for FdTx {
    fn send(&mut self, first: u64, max: u64) -> Result<u64, CaseError> {
        let n = (self.records.capacity() as u64).min(max) as usize;
        let bytes = self.records.numbered(first, n);
        let io = |e: std::io::Error| CaseError::other(format!("write: {e}"));
        match self.max_message {
            Some(m) => bytes.chunks(m).try_for_each(|msg| self.file.write_all(msg)).map_err(io)?,
            None => self.file.write_all(bytes).map_err(io)?,
        }
        Ok(n as u64)
    }
}

/// A pipe or socket end, reading into a buffer that keeps a record cut by a read.
struct FdRx {
    file: File,
    /// `size + per_read` bytes: a partial record at the front, then room for one read.
    buf: Vec<u8>,
    per_read: usize,
    /// Bytes of a partial record at the front of `buf`.
    filled: usize,
    size: usize,
}

impl Rx for FdRx {
    fn recv(&mut self, check: &mut Checker) -> Result<(), CaseError> {
        let (filled, size) = (self.filled, self.size);
        let n = loop {
            match self.file.read(&mut self.buf[filled..filled + self.per_read]) {
                Ok(0) => return Err(CaseError::other("end of file before the end record")),
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CaseError::other(format!("read: {e}"))),
            }
        };
        let total = filled + n;
        let whole = total / size * size;
        for rec in self.buf[..whole].chunks_exact(size) {
            check.record(rec)?;
        }
        self.buf.copy_within(whole..total, 0);
        self.filled = total - whole;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, size: usize) -> Vec<u8> {
        let mut r = vec![0x5a; size];
        r[..8].copy_from_slice(&seq.to_le_bytes());
        r
    }

    #[test]
    fn the_checker_finds_gaps_repeats_and_torn_records() {
        let mut check = Checker::new(64);
        check.record(&record(0, 64)).expect("in order");
        check.record(&record(1, 64)).expect("in order");
        let gap = check.record(&record(3, 64)).expect_err("a gap");
        assert_eq!(gap.kind, ErrorKind::Sequence);
        assert!(gap.message.contains("skipped"), "{}", gap.message);
        let repeat = check.record(&record(1, 64)).expect_err("a repeat");
        assert!(repeat.message.contains("repeated"), "{}", repeat.message);
        assert_eq!(check.record(&record(2, 63)).expect_err("torn").kind, ErrorKind::Sequence);
        check.record(&record(END, 64)).expect("the end");
        assert!(check.done && check.next == 2);
        assert!(check.record(&record(2, 64)).is_err(), "nothing may follow the end");
    }

    #[test]
    fn names_parse_back_and_unknown_ones_list_the_valid() {
        for t in Transport::ALL {
            assert_eq!(Transport::parse(&t.name()), Ok(t));
        }
        let e = Transport::parse("carrier-pigeon").expect_err("unknown");
        assert!(e.contains("shmring-batch-futex") && e.contains("tcp-batch"), "{e}");
    }
}

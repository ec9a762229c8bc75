//! Where consumed records go. A sink accepts records one by one and makes them durable
//! once per batch, before the ring releases them (see
//! `shm_core::Consumer::read_batch_durable`): a record leaves the ring only after its
//! sink has it.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use shm_core::Record;
use shm_daemon::metrics::LatencyHistogram;
use shm_daemon::record;
use shm_daemon::test_hooks::{FailCountdown, Hook};
use tracing::{info, warn};

use crate::config::{Fsync, SinkKind, Undeliverable};

/// A destination for records.
pub trait Sink: Send {
    /// Takes one record. An error leaves it, and the rest of the batch, in the ring.
    fn accept(&mut self, record: Record<'_>) -> io::Result<()>;
    /// Makes the accepted records durable; `next_position` is where the read cursor
    /// moves once this returns. An error releases nothing (they are delivered again).
    fn make_durable(&mut self, next_position: u64) -> io::Result<()>;
    /// Forgets a batch the ring did not release (an `accept` or `make_durable` failed):
    /// the sink returns to its state after the last batch made durable, so the batch,
    /// delivered again, is written once.
    fn abandon_batch(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Re-opens outputs (SIGHUP, for log rotation).
    fn rotate(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Continues on a new segment (the old one was unlinked and re-created): positions
    /// start again at 0, the sink's own state carries on.
    fn switch_segment(&mut self, _segment_created_ns: u64) -> io::Result<()> {
        Ok(())
    }
    /// Counters for metrics and the summary.
    fn counters(&self) -> Vec<(&'static str, u64)>;
    /// The summary at shutdown.
    fn report(&self) -> serde_json::Value;
    /// Whether the run must exit non-zero (a verify sink that saw bad records).
    fn failed(&self) -> bool {
        false
    }
    /// This consumer sees a share of the stream, other workers the rest (an mpmc ring):
    /// a gap in a producer's numbers is not a loss here.
    fn share_the_stream(&mut self) {}
}

/// A sink error that retrying cannot cure (a failed fsync, an undeliverable record
/// under `on_undeliverable = "stop"`): the ring thread stops the daemon with it, and
/// nothing of the batch is acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unrecoverable(pub String);

fn unrecoverable(message: String) -> io::Error {
    io::Error::other(Unrecoverable(message))
}

/// Whether `error` came from [`unrecoverable`].
pub fn is_unrecoverable(error: &io::Error) -> bool {
    error.get_ref().is_some_and(|e| e.is::<Unrecoverable>())
}

/// A sink whose destination is away (a NATS server down, a cluster electing a leader):
/// the sink bounded its wait and keeps nothing back, so the ring loop retries the batch
/// with back-off, and keeps the heartbeat (the watchdog) and its stop handling, since
/// waiting for the destination is then the daemon's job, as waiting for a segment is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DestinationDown(pub String);

/// An error that says the destination is away (see [`DestinationDown`]).
pub fn destination_down(message: String) -> io::Error {
    io::Error::other(DestinationDown(message))
}

/// Whether `error` came from [`destination_down`].
pub fn is_destination_down(error: &io::Error) -> bool {
    error.get_ref().is_some_and(|e| e.is::<DestinationDown>())
}

/// How long a datagram send may block (a receiver that stopped reading): then the
/// record stays in the ring and the ring loop gets to check its stop and drain deadlines.
const SEND_TIMEOUT: Duration = Duration::from_millis(100);

/// Builds the configured sink. `segment_created_ns` and the read cursor let the file
/// sink recognise records it already wrote before a restart.
/// The verify sink also counts its latencies in `latency` (the metrics endpoint's histogram).
pub fn build(kind: &SinkKind, segment_created_ns: u64, latency: &LatencyHistogram) -> io::Result<Box<dyn Sink>> {
    Ok(match kind {
        SinkKind::Verify { state } => Box::new(Verify::open(state.as_deref(), segment_created_ns, latency.clone())?),
        SinkKind::Discard => Box::new(Discard::default()),
        SinkKind::Stdout { binary } => {
            Box::new(Stdout { out: BufWriter::new(io::stdout()), binary: *binary, written: 0 })
        }
        SinkKind::File { path, binary, fsync } => Box::new(FileSink::open(path, *binary, *fsync, segment_created_ns)?),
        SinkKind::Udp { target, on_undeliverable, undeliverable_after } => {
            let sock = std::net::UdpSocket::bind(if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
            sock.connect(target)?;
            sock.set_write_timeout(Some(SEND_TIMEOUT))?;
            let send = Box::new(move |d: &[u8]| sock.send(d).map(drop));
            Box::new(Datagrams::new(send, *on_undeliverable, *undeliverable_after))
        }
        SinkKind::Nats(settings) => Box::new(crate::nats_sink::NatsSink::open(settings, segment_created_ns)?),
        SinkKind::Unix { target, on_undeliverable, undeliverable_after } => {
            let sock = std::os::unix::net::UnixDatagram::unbound()?;
            sock.set_write_timeout(Some(SEND_TIMEOUT))?;
            let target = target.clone();
            let send = Box::new(move |d: &[u8]| sock.send_to(d, &target).map(drop));
            Box::new(Datagrams::new(send, *on_undeliverable, *undeliverable_after))
        }
    })
}

/// Writes one record as a line or as u32 LE length + bytes.
fn write_framed(out: &mut impl Write, data: &[u8], binary: bool) -> io::Result<u64> {
    if binary {
        out.write_all(&(data.len() as u32).to_le_bytes())?;
        out.write_all(data)?;
        Ok(4 + data.len() as u64)
    } else {
        out.write_all(data)?;
        out.write_all(b"\n")?;
        Ok(data.len() as u64 + 1)
    }
}

/// Checks generator records: order per producer (the id each record carries; 0 on an
/// spsc ring), gaps, duplicates, checksums, latency.
///
/// Its counts move with each record it accepts and are acknowledged with the batch:
/// a batch the ring does not release (the state write failed) is abandoned, and the
/// counts and gaps return to where the last acknowledged batch left them, so the
/// batch, delivered again, is counted once. (The latency histogram keeps the abandoned
/// batch's samples: a retried record's latency may be counted twice.)
pub struct Verify {
    /// The next sequence number expected of each producer id, once one was seen.
    expected: [Option<u64>; VERIFY_PRODUCERS],
    received: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    corrupt: u64,
    /// Missing (producer, sequence number)s not seen yet (bounded), so a late one counts
    /// as reordered.
    gaps: BTreeSet<(usize, u64)>,
    latency: hdrhistogram::Histogram<u64>,
    /// The same latencies in the metrics endpoint's buckets.
    exported_latency: LatencyHistogram,
    /// Persisted verification, so a restarted consumer continues it exactly once.
    state: Option<(StateFile, u64)>,
    skip_until: u64,
    skipped: u64,
    /// Lost + duplicated + reordered + corrupt carried over from the state file: reported
    /// once, by the run that found them; this run fails only for new ones.
    inherited_problems: u64,
    /// The counts after the last batch made durable.
    acknowledged: VerifyCounts,
    /// How the current batch changed `gaps`, in order, to undo it.
    batch_gaps: Vec<GapChange>,
    /// Other workers take the rest of each producer's records (an mpmc ring): only
    /// checksums are checked and records counted; `expected` is the highest seen plus one.
    shares_the_stream: bool,
}

/// The verify sink's counts at one moment.
#[derive(Debug, Clone, Copy)]
struct VerifyCounts {
    expected: [Option<u64>; VERIFY_PRODUCERS],
    received: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    corrupt: u64,
    skipped: u64,
}

/// One change to the verify sink's missing sequence numbers.
#[derive(Debug, Clone)]
enum GapChange {
    /// These of this producer went missing.
    Added(usize, std::ops::Range<u64>),
    /// This one of this producer arrived late.
    Removed(usize, u64),
}

const MAX_TRACKED_GAPS: usize = 1 << 20;

/// Producer ids the verify sink tracks: an mpsc ring's.
const VERIFY_PRODUCERS: usize = shm_core::layout::MPSC_PRODUCERS;

/// Words a verify state file keeps after the segment and position: producer 0's "has an
/// expected number" and expected number, the five counts, then for producers 1.. their
/// expected number plus one (0: none yet).
const VERIFY_WORDS: usize = 7 + VERIFY_PRODUCERS - 1;

impl Verify {
    /// A verify sink; with `state`, it continues the verification of a previous run on
    /// the same segment: the next expected sequence number and the counts survive a
    /// restart, and records verified but not yet released are not counted twice.
    fn open(state: Option<&Path>, segment_created_ns: u64, exported_latency: LatencyHistogram) -> io::Result<Self> {
        let mut v = Verify {
            expected: [None; VERIFY_PRODUCERS],
            received: 0,
            lost: 0,
            duplicated: 0,
            reordered: 0,
            corrupt: 0,
            gaps: BTreeSet::new(),
            latency: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
            exported_latency,
            state: None,
            skip_until: 0,
            skipped: 0,
            inherited_problems: 0,
            acknowledged: VerifyCounts {
                expected: [None; VERIFY_PRODUCERS],
                received: 0,
                lost: 0,
                duplicated: 0,
                reordered: 0,
                corrupt: 0,
                skipped: 0,
            },
            batch_gaps: Vec::new(),
            shares_the_stream: false,
        };
        if let Some(path) = state {
            let (file, saved) = StateFile::open(path, VERIFY_WORDS, false)?;
            if let Some(Saved { position: skip_until, words, .. }) =
                saved.filter(|s| s.segment_created_ns == segment_created_ns)
            {
                let has_expected = words[0] == 1;
                v.expected[0] = has_expected.then_some(words[1]);
                for (expected, &word) in v.expected[1..].iter_mut().zip(&words[7..]) {
                    *expected = word.checked_sub(1);
                }
                (v.received, v.lost, v.duplicated, v.reordered, v.corrupt) =
                    (words[2], words[3], words[4], words[5], words[6]);
                v.skip_until = skip_until;
                v.inherited_problems = v.problems();
                info!(next_expected = ?v.expected.iter().flatten().collect::<Vec<_>>(), received = v.received, lost = v.lost, "verify: continuing from its state file");
                if v.inherited_problems > 0 {
                    warn!(
                        lost = v.lost,
                        duplicated = v.duplicated,
                        reordered = v.reordered,
                        corrupt = v.corrupt,
                        "verify: the state file carries problems an earlier run found (and exited 1 for); \
                         this run exits 1 only if it finds new ones"
                    );
                }
            }
            v.state = Some((file, segment_created_ns));
        }
        v.acknowledged = v.counts();
        Ok(v)
    }

    fn problems(&self) -> u64 {
        self.lost + self.duplicated + self.reordered + self.corrupt
    }

    fn counts(&self) -> VerifyCounts {
        VerifyCounts {
            expected: self.expected,
            received: self.received,
            lost: self.lost,
            duplicated: self.duplicated,
            reordered: self.reordered,
            corrupt: self.corrupt,
            skipped: self.skipped,
        }
    }
}

impl Sink for Verify {
    fn accept(&mut self, r: Record<'_>) -> io::Result<()> {
        if r.position < self.skip_until {
            self.skipped += 1;
            return Ok(());
        }
        self.received += 1;
        let Some(d) = record::decode(r.data) else {
            self.corrupt += 1;
            if self.corrupt <= 10 {
                warn!(
                    position = r.position,
                    len = r.data.len(),
                    "verify: corrupt record (checksum mismatch or too short)"
                );
            }
            return Ok(());
        };
        let producer = usize::from(d.producer);
        let Some(&expected) = self.expected.get(producer) else {
            self.corrupt += 1;
            warn!(position = r.position, producer, "verify: a record names a producer id no ring has");
            return Ok(());
        };
        let latency_ns = record::monotonic_ns().saturating_sub(d.sent_ns).max(1);
        let _ = self.latency.record(latency_ns);
        self.exported_latency.observe_ns(latency_ns);
        if self.shares_the_stream {
            // Gaps are other workers' records; order and completeness are checked across
            // the workers' outputs, not here.
            self.expected[producer] = Some(expected.map_or(d.seq + 1, |e| e.max(d.seq + 1)));
            return Ok(());
        }
        match expected {
            None => info!(producer, first = d.seq, "verify: first sequence number"),
            Some(e) if d.seq == e => {}
            Some(e) if d.seq > e => {
                self.lost += d.seq - e;
                if self.gaps.len() + ((d.seq - e) as usize) < MAX_TRACKED_GAPS {
                    self.gaps.extend((e..d.seq).map(|seq| (producer, seq)));
                    self.batch_gaps.push(GapChange::Added(producer, e..d.seq));
                }
                warn!(producer, expected = e, got = d.seq, "verify: gap");
            }
            Some(_) if self.gaps.remove(&(producer, d.seq)) => {
                self.batch_gaps.push(GapChange::Removed(producer, d.seq));
                self.lost -= 1;
                self.reordered += 1;
                return Ok(());
            }
            Some(e) => {
                self.duplicated += 1;
                warn!(producer, expected = e, got = d.seq, "verify: duplicate");
                return Ok(());
            }
        }
        self.expected[producer] = Some(d.seq + 1);
        Ok(())
    }

    fn switch_segment(&mut self, segment_created_ns: u64) -> io::Result<()> {
        self.skip_until = 0;
        if let Some((_, created)) = &mut self.state {
            *created = segment_created_ns;
        }
        self.make_durable(0)
    }

    fn make_durable(&mut self, next_position: u64) -> io::Result<()> {
        let mut words = vec![
            u64::from(self.expected[0].is_some()),
            self.expected[0].unwrap_or(0),
            self.received,
            self.lost,
            self.duplicated,
            self.reordered,
            self.corrupt,
        ];
        words.extend(self.expected[1..].iter().map(|e| e.map_or(0, |n| n + 1)));
        if let Some((file, created)) = &mut self.state {
            file.store(*created, next_position, &words)?;
        }
        self.acknowledged = self.counts();
        self.batch_gaps.clear();
        Ok(())
    }

    fn abandon_batch(&mut self) -> io::Result<()> {
        let VerifyCounts { expected, received, lost, duplicated, reordered, corrupt, skipped } = self.acknowledged;
        (self.expected, self.received, self.lost, self.duplicated) = (expected, received, lost, duplicated);
        (self.reordered, self.corrupt, self.skipped) = (reordered, corrupt, skipped);
        for change in self.batch_gaps.drain(..).rev() {
            match change {
                GapChange::Added(producer, missing) => missing.for_each(|seq| {
                    self.gaps.remove(&(producer, seq));
                }),
                GapChange::Removed(producer, seq) => {
                    self.gaps.insert((producer, seq));
                }
            }
        }
        Ok(())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("verify_received", self.received),
            ("verify_lost", self.lost),
            ("verify_duplicated", self.duplicated),
            ("verify_reordered", self.reordered),
            ("verify_corrupt", self.corrupt),
        ]
    }

    fn report(&self) -> serde_json::Value {
        let q = |p: f64| self.latency.value_at_quantile(p);
        json!({
            "sink": "verify",
            "received": self.received,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "reordered": self.reordered,
            "corrupt": self.corrupt,
            "next_expected": self.expected[0],
            "next_expected_per_producer": self
                .expected
                .iter()
                .enumerate()
                .filter_map(|(id, e)| e.map(|n| (id.to_string(), json!(n))))
                .collect::<serde_json::Map<_, _>>(),
            "skipped_already_verified": self.skipped,
            "shares_the_stream": self.shares_the_stream,
            "problems_from_earlier_runs": self.inherited_problems,
            "latency_ns": { "p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": self.latency.max(), "mean": self.latency.mean().round() },
        })
    }

    fn failed(&self) -> bool {
        self.problems() > self.inherited_problems
    }

    fn share_the_stream(&mut self) {
        self.shares_the_stream = true;
    }
}

/// Counts and forgets.
#[derive(Default)]
pub struct Discard {
    records: u64,
}

impl Sink for Discard {
    fn accept(&mut self, _: Record<'_>) -> io::Result<()> {
        self.records += 1;
        Ok(())
    }
    fn make_durable(&mut self, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("discarded", self.records)]
    }
    fn report(&self) -> serde_json::Value {
        json!({ "sink": "discard", "records": self.records })
    }
}

/// Standard output, flushed once per batch.
pub struct Stdout {
    out: BufWriter<io::Stdout>,
    binary: bool,
    written: u64,
}

impl Sink for Stdout {
    fn accept(&mut self, r: Record<'_>) -> io::Result<()> {
        write_framed(&mut self.out, r.data, self.binary)?;
        self.written += 1;
        Ok(())
    }
    fn make_durable(&mut self, _: u64) -> io::Result<()> {
        self.out.flush()
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("written", self.written)]
    }
    fn report(&self) -> serde_json::Value {
        json!({ "sink": "stdout", "records": self.written })
    }
}

/// Sends one datagram.
type SendFn = Box<dyn FnMut(&[u8]) -> io::Result<()> + Send>;

/// One datagram per record (UDP or Unix). A failed send is one of two classes:
///
/// - **Permanent for this record**: `EMSGSIZE`, a record no datagram can carry. No
///   retry can cure it: `on_undeliverable` applies at once.
/// - **The destination refuses** (every other error: `ENOENT` or `ECONNREFUSED`, nobody
///   bound at a Unix path or a UDP port; `EAGAIN`, a receiver that stopped reading and
///   whose queue is full past the send timeout; `ENOBUFS`, `ENETUNREACH`, `EACCES`, ...):
///   a receiver that comes back cures it. The record stays in the ring and the batch is
///   retried (the ring loop backs off, 100 ms doubling to 1 s), until sends have failed
///   without one going through for `undeliverable_after`; from then on
///   `on_undeliverable` applies to each record that fails, so `skip_and_count` skips
///   (and counts) until the first send that succeeds, and `stop` stops the daemon.
///
/// Either way a record is never retried for ever. The watchdog is fed while records
/// move, skipped ones included, so it is withheld only during the retries, which the
/// default `undeliverable_after` (5 s) keeps shorter than the units' `WatchdogSec=10s`.
pub struct Datagrams {
    send: SendFn,
    on_undeliverable: Undeliverable,
    undeliverable_after: Duration,
    /// When sends started failing, none going through since.
    refused_since: Option<Instant>,
    /// Records skipped since then.
    skipped_while_refused: u64,
    sent: u64,
    undeliverable: u64,
}

impl Datagrams {
    fn new(send: SendFn, on_undeliverable: Undeliverable, undeliverable_after: Duration) -> Self {
        Datagrams {
            send,
            on_undeliverable,
            undeliverable_after,
            refused_since: None,
            skipped_while_refused: 0,
            sent: 0,
            undeliverable: 0,
        }
    }

    /// Applies `on_undeliverable` to the record `what` describes; `log` says whether
    /// a skip is worth a line.
    fn undeliverable(&mut self, what: String, log: bool) -> io::Result<()> {
        match self.on_undeliverable {
            Undeliverable::SkipAndCount => {
                self.undeliverable += 1;
                if log {
                    warn!(
                        skipped_so_far = self.undeliverable,
                        "{what}; skipped and counted (on_undeliverable = \"skip_and_count\")"
                    );
                }
                Ok(())
            }
            Undeliverable::Stop => Err(unrecoverable(format!(
                "{what}; stopping (on_undeliverable = \"stop\"): the record stays in the ring"
            ))),
        }
    }
}

impl Sink for Datagrams {
    fn accept(&mut self, r: Record<'_>) -> io::Result<()> {
        let record = format!("record at ring position {} ({} bytes)", r.position, r.data.len());
        match (self.send)(r.data) {
            Ok(()) => {
                if let Some(since) = self.refused_since.take() {
                    info!(
                        refused_for = ?since.elapsed(),
                        skipped = self.skipped_while_refused,
                        "the datagram sink's destination accepts records again"
                    );
                    self.skipped_while_refused = 0;
                }
                self.sent += 1;
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::EMSGSIZE) => {
                self.undeliverable(format!("{record} is too large for one datagram ({e})"), true)
            }
            Err(e) => {
                let since = *self.refused_since.get_or_insert_with(Instant::now);
                if since.elapsed() < self.undeliverable_after {
                    return Err(e);
                }
                self.skipped_while_refused += 1;
                // The first skip of a refusal spell, then every thousandth: a long
                // outage does not flood the log.
                let log = self.skipped_while_refused % 1000 == 1;
                self.undeliverable(
                    format!(
                        "{record}: the destination has refused every send for {:.1?} ({e}), past undeliverable_after = {:?}",
                        since.elapsed(),
                        self.undeliverable_after
                    ),
                    log,
                )
            }
        }
    }
    fn make_durable(&mut self, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("sent", self.sent), ("undeliverable_skipped", self.undeliverable)]
    }
    fn report(&self) -> serde_json::Value {
        json!({ "sink": "datagrams", "records": self.sent, "undeliverable_skipped": self.undeliverable })
    }
}

/// A small state file: two slots, each of little-endian `u64` words — a generation,
/// the segment's creation time, the read-cursor position after the batch, the sink's
/// own words — and their FNV-1a checksum. Each store rewrites the older slot in place,
/// before the ring releases the batch; the newest slot whose checksum holds is the
/// state. A store torn by a crash damages only the slot it was writing, so the one
/// before it still says where the sink stood.
struct StateFile {
    file: File,
    sync: bool,
    words: usize,
    generation: u64,
    /// The test hook `SHMRING_TEST_FAIL_STATE_WRITE` (never due in a shipped build).
    fail_write: FailCountdown,
}

/// What a state file held at start-up.
struct Saved {
    /// The segment it was written for.
    segment_created_ns: u64,
    /// Records before this ring position were handled before the restart.
    position: u64,
    /// The sink's own words.
    words: Vec<u64>,
}

/// Opens `path` for reading and writing, creating it `0640`, never through a symlink.
fn open_no_follow(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    options.mode(0o640).custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC).open(path)
}

impl StateFile {
    /// Opens (or creates) `path`, a state of `words` sink words, and reads what it holds.
    fn open(path: &Path, words: usize, sync: bool) -> io::Result<(Self, Option<Saved>)> {
        let mut file = open_no_follow(path, OpenOptions::new().read(true).write(true).create(true).truncate(false))?;
        let mut saved = Vec::new();
        file.read_to_end(&mut saved)?;
        let slot = Self::slot_len(words);
        // The newest valid slot; the single-slot layout of earlier versions counts as
        // generation 0.
        let newest = if saved.len() == 2 * slot {
            saved.chunks_exact(slot).filter_map(|s| decode_words(s, words + 3)).max_by_key(|w| w[0])
        } else {
            decode_words(&saved, words + 2).map(|w| [&[0][..], &w].concat())
        };
        let state = match &newest {
            Some(w) => Some(Saved { segment_created_ns: w[1], position: w[2], words: w[3..].to_vec() }),
            None if !saved.is_empty() => {
                warn!(path = %path.display(), "state file is unreadable; starting fresh");
                None
            }
            None => None,
        };
        let generation = newest.map_or(0, |w| w[0]);
        let fail_write = FailCountdown::of(Hook::FailStateWrite);
        Ok((StateFile { file, sync, words, generation, fail_write }, state))
    }

    fn slot_len(words: usize) -> usize {
        // generation, segment, position, the words, the checksum.
        (words + 4) * 8
    }

    /// Writes the state into the older slot: the segment, the position after the batch,
    /// the sink's words; fsynced when the sink promises machine-crash safety.
    fn store(&mut self, segment_created_ns: u64, next_position: u64, words: &[u64]) -> io::Result<()> {
        debug_assert_eq!(words.len(), self.words);
        let generation = self.generation + 1;
        let mut all = vec![generation, segment_created_ns, next_position];
        all.extend_from_slice(words);
        let offset = (generation % 2) * Self::slot_len(self.words) as u64;
        if self.fail_write.due() {
            return Err(io::Error::from_raw_os_error(nix::libc::EIO));
        }
        self.file.write_all_at(&encode_words(&all), offset)?;
        if self.sync {
            self.file.sync_data()?;
        }
        self.generation = generation;
        Ok(())
    }
}

fn encode_words(words: &[u64]) -> Vec<u8> {
    let mut out: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let sum = record::fnv1a(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

fn decode_words(bytes: &[u8], count: usize) -> Option<Vec<u64>> {
    if bytes.len() != (count + 1) * 8 {
        return None;
    }
    let (body, sum) = bytes.split_at(count * 8);
    if record::fnv1a(body).to_le_bytes() != sum {
        return None;
    }
    Some(body.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
}

/// fsyncs the directory holding `path`, so that its entry (a new file, a new progress
/// file) survives a machine crash.
fn sync_directory_of(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// How much a file sink buffers before it writes: a batch is written in pieces this
/// large, and made durable as a whole.
const WRITE_CHUNK: usize = 1 << 16;

/// Appends records to a file, exactly once across restarts of the consumer.
///
/// Per batch: buffer the records and write them (in 64 KiB pieces), fsync per policy,
/// record the progress in `PATH.progress` (acknowledged file length, inode, and the
/// read-cursor position that follows the batch), then the ring releases.
///
/// - A crash after writing and before recording leaves bytes beyond the acknowledged
///   length (not released: they come again); a crash after recording and before the
///   release leaves a recorded position beyond the read cursor (those records are
///   skipped when they come again). Start-up truncates the file it finds to its
///   acknowledged length whenever the progress names its inode, whatever segment the
///   progress was written for.
/// - A write error (`ENOSPC`, `EIO` on write) rolls back: the buffer is dropped, the
///   file truncated to its acknowledged length, the batch's counters reset; the batch
///   stays in the ring and is written again, once, when the retry succeeds.
/// - A failed fsync is fatal: after it Linux may have dropped the dirty pages, so a
///   later fsync could succeed over lost data. The file is truncated back, nothing of
///   the batch is acknowledged, and the daemon stops with the error.
/// - With `fsync = "batch"`, the progress file is fsynced after the data and the
///   directory after creating either file, so the promise survives a machine crash;
///   `never` and intervals keep it for process crashes only.
pub struct FileSink {
    path: PathBuf,
    binary: bool,
    fsync: Fsync,
    file: File,
    /// Framed records accepted and not written yet.
    buffer: Vec<u8>,
    state: StateFile,
    segment_created_ns: u64,
    /// Length of the file up to the last acknowledged batch.
    file_len: u64,
    /// Bytes of the current batch written beyond `file_len`.
    unacknowledged: u64,
    /// Records of the current batch accepted (written) and skipped so far.
    batch_written: u64,
    batch_skipped: u64,
    /// A write of the current batch failed: it must not be acknowledged.
    batch_failed: bool,
    inode: u64,
    /// Read-cursor position after the last batch made durable.
    position: u64,
    skip_until: u64,
    last_sync: Instant,
    written: u64,
    skipped: u64,
    /// The test hook `SHMRING_TEST_FAIL_FSYNC` (never due in a shipped build).
    fail_fsync: FailCountdown,
}

fn progress_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".progress");
    PathBuf::from(p)
}

fn open_append(path: &Path) -> io::Result<File> {
    open_no_follow(path, OpenOptions::new().create(true).append(true))
}

impl FileSink {
    fn open(path: &Path, binary: bool, fsync: Fsync, segment_created_ns: u64) -> io::Result<Self> {
        let machine_crash_safe = fsync == Fsync::Batch;
        let file = open_append(path)?;
        let meta = file.metadata()?;
        let progress = progress_path(path);
        let (state, saved) = StateFile::open(&progress, 2, machine_crash_safe)?;
        let mut skip_until = 0;
        match saved {
            Some(Saved { segment_created_ns: created, position, words }) if words[1] == meta.ino() => {
                let acknowledged = words[0];
                if meta.len() > acknowledged {
                    warn!(
                        path = %path.display(),
                        bytes = meta.len() - acknowledged,
                        "dropping the end of the file: written before a crash, never acknowledged"
                    );
                    file.set_len(acknowledged)?;
                } else if meta.len() < acknowledged {
                    warn!(path = %path.display(), "file is shorter than its recorded progress: it was truncated by someone else");
                }
                if created == segment_created_ns {
                    skip_until = position;
                    info!(path = %path.display(), resume_position = position, "file sink resumes after its recorded progress");
                } else {
                    info!(path = %path.display(), "the recorded progress belongs to an earlier segment: this one's records start fresh");
                }
            }
            Some(_) => {
                info!(path = %path.display(), "file was rotated or replaced since the progress was recorded; kept as found")
            }
            None => {}
        }
        let file_len = file.metadata()?.len();
        let mut sink = FileSink {
            path: path.to_path_buf(),
            binary,
            fsync,
            file,
            buffer: Vec::with_capacity(WRITE_CHUNK),
            state,
            segment_created_ns,
            file_len,
            unacknowledged: 0,
            batch_written: 0,
            batch_skipped: 0,
            batch_failed: false,
            inode: meta.ino(),
            position: skip_until,
            skip_until,
            last_sync: Instant::now(),
            written: 0,
            skipped: 0,
            fail_fsync: FailCountdown::of(Hook::FailFsync),
        };
        // Record where the file stands before the first batch, so that a crash during
        // it is truncated away on restart rather than kept next to its re-delivery.
        sink.store_progress()?;
        if machine_crash_safe {
            sink.file.sync_all()?;
            sync_directory_of(&progress)?;
        }
        Ok(sink)
    }

    fn store_progress(&mut self) -> io::Result<()> {
        self.state.store(self.segment_created_ns, self.position, &[self.file_len, self.inode])
    }

    /// Writes the buffer out (appending: the file is `O_APPEND`).
    fn write_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        // Counted before the write: a partial write is truncated away all the same.
        self.unacknowledged += self.buffer.len() as u64;
        let result = self.file.write_all(&self.buffer);
        self.buffer.clear();
        result
    }

    /// Data fsync, through the test hook.
    fn sync_data(&mut self) -> io::Result<()> {
        if self.fail_fsync.due() {
            return Err(io::Error::from_raw_os_error(nix::libc::EIO));
        }
        self.file.sync_data()
    }

    /// Back to the last acknowledged state: the buffer dropped, the file truncated to
    /// its acknowledged length, the batch's counters undone. Fails (unrecoverably) only
    /// if the truncation itself fails.
    fn roll_back(&mut self) -> io::Result<()> {
        self.buffer.clear();
        self.written -= self.batch_written;
        self.skipped -= self.batch_skipped;
        (self.batch_written, self.batch_skipped, self.batch_failed) = (0, 0, false);
        if self.unacknowledged > 0 {
            self.unacknowledged = 0;
            self.file.set_len(self.file_len).map_err(|e| {
                unrecoverable(format!(
                    "{}: cannot truncate back to the acknowledged {} bytes after a failed write ({e})",
                    self.path.display(),
                    self.file_len
                ))
            })?;
        }
        Ok(())
    }

    /// Rolls back, then returns `error` (or the roll-back's own, worse, error).
    fn fail(&mut self, error: io::Error) -> io::Result<()> {
        self.roll_back()?;
        Err(error)
    }
}

impl Sink for FileSink {
    fn accept(&mut self, r: Record<'_>) -> io::Result<()> {
        if r.position < self.skip_until {
            self.skipped += 1;
            self.batch_skipped += 1;
            return Ok(());
        }
        write_framed(&mut self.buffer, r.data, self.binary)?;
        self.written += 1;
        self.batch_written += 1;
        if self.buffer.len() >= WRITE_CHUNK
            && let Err(e) = self.write_buffer()
        {
            self.batch_failed = true;
            return Err(e);
        }
        Ok(())
    }

    fn make_durable(&mut self, next_position: u64) -> io::Result<()> {
        if self.batch_failed {
            return self.fail(io::Error::other("a write earlier in this batch failed"));
        }
        if let Err(e) = self.write_buffer() {
            return self.fail(e);
        }
        let sync = match self.fsync {
            Fsync::Never => false,
            Fsync::Batch => true,
            Fsync::Interval(every) => self.last_sync.elapsed() >= every,
        };
        if sync {
            if let Err(e) = self.sync_data() {
                self.roll_back()?;
                return Err(unrecoverable(format!(
                    "fsync of {} failed ({e}): the kernel may have dropped the written pages, so no later \
                     fsync can prove them on disk; nothing of this batch was acknowledged, the file was \
                     truncated back to its acknowledged {} bytes, stopping",
                    self.path.display(),
                    self.file_len
                )));
            }
            self.last_sync = Instant::now();
        }
        let before = (self.file_len, self.position);
        (self.file_len, self.position) = (self.file_len + self.unacknowledged, next_position);
        if let Err(e) = self.store_progress() {
            (self.file_len, self.position) = before;
            return self.fail(e);
        }
        (self.unacknowledged, self.batch_written, self.batch_skipped) = (0, 0, 0);
        Ok(())
    }

    fn abandon_batch(&mut self) -> io::Result<()> {
        self.roll_back()
    }

    fn rotate(&mut self) -> io::Result<()> {
        let file = open_append(&self.path)?;
        let meta = file.metadata()?;
        // Between batches: everything written is acknowledged, nothing is buffered.
        (self.file, self.inode, self.file_len) = (file, meta.ino(), meta.len());
        self.store_progress()?;
        if self.fsync == Fsync::Batch {
            sync_directory_of(&self.path)?;
        }
        info!(path = %self.path.display(), "file re-opened");
        Ok(())
    }

    fn switch_segment(&mut self, segment_created_ns: u64) -> io::Result<()> {
        (self.segment_created_ns, self.position, self.skip_until) = (segment_created_ns, 0, 0);
        self.store_progress()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("written", self.written), ("skipped_already_written", self.skipped)]
    }

    fn report(&self) -> serde_json::Value {
        json!({ "sink": "file", "path": self.path, "records": self.written, "skipped_already_written": self.skipped })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_words_round_trip_and_damage_is_rejected() {
        let bytes = encode_words(&[1, 2, 3, 4]);
        assert_eq!(decode_words(&bytes, 4), Some(vec![1, 2, 3, 4]));
        let mut bad = bytes.clone();
        bad[9] ^= 1;
        assert_eq!(decode_words(&bad, 4), None);
        assert_eq!(decode_words(&bytes[..39], 4), None);
        assert_eq!(decode_words(&bytes, 3), None);
    }

    /// A store torn by a crash damages one slot; the state before it is still read. A
    /// symlink at the path is refused, never followed.
    #[test]
    fn a_torn_state_store_leaves_the_previous_state_readable() {
        let dir = std::env::temp_dir().join(format!("shmring-state-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("make a directory");
        let path = dir.join("out.progress");
        let (mut file, saved) = StateFile::open(&path, 2, false).expect("create");
        assert!(saved.is_none());
        file.store(7, 100, &[1, 2]).expect("store");
        file.store(7, 200, &[3, 4]).expect("store");
        let read = |path: &Path| {
            let saved = StateFile::open(path, 2, false).expect("open").1.expect("a state");
            (saved.segment_created_ns, saved.position, saved.words)
        };
        assert_eq!(read(&path), (7, 200, vec![3, 4]));
        // Generation 2 is in slot 0: tear it.
        file.file.write_all_at(&[0xff; 5], 12).expect("tear the slot");
        assert_eq!(read(&path), (7, 100, vec![1, 2]));

        let link = dir.join("link.progress");
        std::os::unix::fs::symlink(&path, &link).expect("make a symlink");
        let refused = StateFile::open(&link, 2, false).err().expect("a symlink is refused");
        assert_eq!(refused.raw_os_error(), Some(nix::libc::ELOOP), "{refused}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}

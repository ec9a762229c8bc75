//! Where consumed records go. A sink accepts records one by one and makes them durable
//! once per batch, before the ring releases them (see
//! `shm_core::Consumer::read_batch_durable`): a record leaves the ring only after its
//! sink has it.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;
use shm_core::Record;
use shm_daemon::record;
use tracing::{info, warn};

use crate::config::{Fsync, SinkKind};

/// A destination for records.
pub trait Sink: Send {
    /// Takes one record. An error leaves it, and the rest of the batch, in the ring.
    fn accept(&mut self, record: Record<'_>) -> io::Result<()>;
    /// Makes the accepted records durable; `next_position` is where the read cursor
    /// moves once this returns. An error releases nothing (they are delivered again).
    fn make_durable(&mut self, next_position: u64) -> io::Result<()>;
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
}

/// How long a datagram send may block (a receiver that stopped reading): then the
/// record stays in the ring and the ring loop gets to check its stop and drain deadlines.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);

/// Builds the configured sink. `segment_created_ns` and the read cursor let the file
/// sink recognise records it already wrote before a restart.
pub fn build(kind: &SinkKind, segment_created_ns: u64) -> io::Result<Box<dyn Sink>> {
    Ok(match kind {
        SinkKind::Verify { state } => Box::new(Verify::open(state.as_deref(), segment_created_ns)?),
        SinkKind::Discard => Box::new(Discard::default()),
        SinkKind::Stdout { binary } => {
            Box::new(Stdout { out: BufWriter::new(io::stdout()), binary: *binary, written: 0 })
        }
        SinkKind::File { path, binary, fsync } => Box::new(FileSink::open(path, *binary, *fsync, segment_created_ns)?),
        SinkKind::Udp { target } => {
            let sock = std::net::UdpSocket::bind(if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
            sock.connect(target)?;
            sock.set_write_timeout(Some(SEND_TIMEOUT))?;
            Box::new(Datagrams { send: Box::new(move |d| sock.send(d).map(drop)), sent: 0 })
        }
        SinkKind::Unix { target } => {
            let sock = std::os::unix::net::UnixDatagram::unbound()?;
            sock.set_write_timeout(Some(SEND_TIMEOUT))?;
            let target = target.clone();
            Box::new(Datagrams { send: Box::new(move |d| sock.send_to(d, &target).map(drop)), sent: 0 })
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

/// Checks generator records: order, gaps, duplicates, checksums, latency.
pub struct Verify {
    expected: Option<u64>,
    received: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    corrupt: u64,
    /// Missing sequence numbers not seen yet (bounded), so a late one counts as reordered.
    gaps: BTreeSet<u64>,
    latency: hdrhistogram::Histogram<u64>,
    /// Persisted verification, so a restarted consumer continues it exactly once.
    state: Option<(StateFile, u64)>,
    skip_until: u64,
    skipped: u64,
}

const MAX_TRACKED_GAPS: usize = 1 << 20;

/// Words a verify state file keeps after the segment and position.
const VERIFY_WORDS: usize = 7;

impl Verify {
    /// A verify sink; with `state`, it continues the verification of a previous run on
    /// the same segment: the next expected sequence number and the counts survive a
    /// restart, and records verified but not yet released are not counted twice.
    fn open(state: Option<&Path>, segment_created_ns: u64) -> io::Result<Self> {
        let mut v = Verify {
            expected: None,
            received: 0,
            lost: 0,
            duplicated: 0,
            reordered: 0,
            corrupt: 0,
            gaps: BTreeSet::new(),
            latency: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
            state: None,
            skip_until: 0,
            skipped: 0,
        };
        if let Some(path) = state {
            let (file, resume) = StateFile::open(path, segment_created_ns, VERIFY_WORDS, false)?;
            if let Some(Resume { skip_until, words }) = resume {
                let has_expected = words[0] == 1;
                v.expected = has_expected.then_some(words[1]);
                (v.received, v.lost, v.duplicated, v.reordered, v.corrupt) =
                    (words[2], words[3], words[4], words[5], words[6]);
                v.skip_until = skip_until;
                info!(next_expected = ?v.expected, received = v.received, lost = v.lost, "verify: continuing from its state file");
            }
            v.state = Some((file, segment_created_ns));
        }
        Ok(v)
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
        let _ = self.latency.record(record::monotonic_ns().saturating_sub(d.sent_ns).max(1));
        match self.expected {
            None => info!(first = d.seq, "verify: first sequence number"),
            Some(e) if d.seq == e => {}
            Some(e) if d.seq > e => {
                self.lost += d.seq - e;
                if self.gaps.len() + ((d.seq - e) as usize) < MAX_TRACKED_GAPS {
                    self.gaps.extend(e..d.seq);
                }
                warn!(expected = e, got = d.seq, "verify: gap");
            }
            Some(_) if self.gaps.remove(&d.seq) => {
                self.lost -= 1;
                self.reordered += 1;
                return Ok(());
            }
            Some(e) => {
                self.duplicated += 1;
                warn!(expected = e, got = d.seq, "verify: duplicate");
                return Ok(());
            }
        }
        self.expected = Some(d.seq + 1);
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
        let words = [
            u64::from(self.expected.is_some()),
            self.expected.unwrap_or(0),
            self.received,
            self.lost,
            self.duplicated,
            self.reordered,
            self.corrupt,
        ];
        match &mut self.state {
            Some((file, created)) => file.store(*created, next_position, &words),
            None => Ok(()),
        }
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
            "next_expected": self.expected,
            "skipped_already_verified": self.skipped,
            "latency_ns": { "p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": self.latency.max(), "mean": self.latency.mean().round() },
        })
    }

    fn failed(&self) -> bool {
        self.lost + self.duplicated + self.reordered + self.corrupt > 0
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

/// One datagram per record (UDP or Unix); a failed send leaves the record in the ring.
pub struct Datagrams {
    send: SendFn,
    sent: u64,
}

impl Sink for Datagrams {
    fn accept(&mut self, r: Record<'_>) -> io::Result<()> {
        (self.send)(r.data)?;
        self.sent += 1;
        Ok(())
    }
    fn make_durable(&mut self, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("sent", self.sent)]
    }
    fn report(&self) -> serde_json::Value {
        json!({ "sink": "datagrams", "records": self.sent })
    }
}

/// A small state file of little-endian `u64` words and their FNV-1a checksum,
/// rewritten in place after every batch, before the ring releases it. The first two
/// words are always the segment's creation time and the read-cursor position after the
/// batch, so a restarted sink can tell which re-delivered records it already has.
struct StateFile {
    file: File,
    sync: bool,
}

/// What a state file said at start-up, if it belongs to this segment.
struct Resume {
    /// Records before this ring position were handled before the restart.
    skip_until: u64,
    /// The sink's own words after the first two.
    words: Vec<u64>,
}

impl StateFile {
    /// Opens (or creates) `path` and reads what it holds for `segment_created_ns`.
    fn open(path: &Path, segment_created_ns: u64, words: usize, sync: bool) -> io::Result<(Self, Option<Resume>)> {
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o640).open(path)?;
        let mut saved = Vec::new();
        file.read_to_end(&mut saved)?;
        let decoded = decode_words(&saved, 2 + words);
        let resume = match decoded {
            Some(w) if w[0] == segment_created_ns => Some(Resume { skip_until: w[1], words: w[2..].to_vec() }),
            Some(_) => {
                info!(path = %path.display(), "state belongs to another segment; starting fresh");
                None
            }
            None if !saved.is_empty() => {
                warn!(path = %path.display(), "state file is unreadable; starting fresh");
                None
            }
            None => None,
        };
        Ok((StateFile { file, sync }, resume))
    }

    /// Rewrites the state: the segment, the position after the batch, the sink's words.
    fn store(&mut self, segment_created_ns: u64, next_position: u64, words: &[u64]) -> io::Result<()> {
        let mut all = vec![segment_created_ns, next_position];
        all.extend_from_slice(words);
        self.file.write_all_at(&encode_words(&all), 0)?;
        if self.sync {
            self.file.sync_data()?;
        }
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

/// Appends records to a file, exactly once across restarts of the consumer.
///
/// Per batch: write the records, fsync per policy, record the progress in
/// `PATH.progress` (file length, inode, and the read-cursor position that follows the
/// batch), then the ring releases. A restart after a crash finds one of two states:
/// bytes beyond the recorded length (a batch written but not recorded, and not
/// released: truncated, it comes again), or a recorded position beyond the read cursor
/// (recorded but not released: those records are skipped when they come again).
pub struct FileSink {
    path: PathBuf,
    binary: bool,
    fsync: Fsync,
    out: BufWriter<File>,
    state: StateFile,
    segment_created_ns: u64,
    file_len: u64,
    inode: u64,
    /// Read-cursor position after the last batch made durable.
    position: u64,
    pending_bytes: u64,
    skip_until: u64,
    last_sync: Instant,
    written: u64,
    skipped: u64,
}

fn progress_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".progress");
    PathBuf::from(p)
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

impl FileSink {
    fn open(path: &Path, binary: bool, fsync: Fsync, segment_created_ns: u64) -> io::Result<Self> {
        let file = open_append(path)?;
        let meta = file.metadata()?;
        let (state, resume) = StateFile::open(&progress_path(path), segment_created_ns, 2, fsync == Fsync::Batch)?;
        let mut skip_until = 0;
        if let Some(Resume { skip_until: position, words }) = resume {
            let (file_len, inode) = (words[0], words[1]);
            if inode == meta.ino() {
                if meta.len() > file_len {
                    warn!(
                        path = %path.display(),
                        bytes = meta.len() - file_len,
                        "dropping the end of the file: written before a crash, never acknowledged; those records come again"
                    );
                    file.set_len(file_len)?;
                } else if meta.len() < file_len {
                    warn!(path = %path.display(), "file is shorter than its recorded progress: it was truncated by someone else");
                }
            } else {
                info!(path = %path.display(), "file was rotated since the progress was recorded");
            }
            skip_until = position;
            info!(path = %path.display(), resume_position = position, "file sink resumes after its recorded progress");
        }
        let file_len = file.metadata()?.len();
        let mut sink = FileSink {
            path: path.to_path_buf(),
            binary,
            fsync,
            out: BufWriter::with_capacity(1 << 16, file),
            state,
            segment_created_ns,
            file_len,
            inode: meta.ino(),
            position: skip_until,
            pending_bytes: 0,
            skip_until,
            last_sync: Instant::now(),
            written: 0,
            skipped: 0,
        };
        // Record where the file stands before the first batch, so that a crash during
        // it is truncated away on restart rather than kept next to its re-delivery.
        sink.store_progress()?;
        Ok(sink)
    }
}

impl FileSink {
    fn store_progress(&mut self) -> io::Result<()> {
        self.state.store(self.segment_created_ns, self.position, &[self.file_len, self.inode])
    }
}

impl Sink for FileSink {
    fn accept(&mut self, r: Record<'_>) -> io::Result<()> {
        if r.position < self.skip_until {
            self.skipped += 1;
            return Ok(());
        }
        self.pending_bytes += write_framed(&mut self.out, r.data, self.binary)?;
        self.written += 1;
        Ok(())
    }

    fn make_durable(&mut self, next_position: u64) -> io::Result<()> {
        self.out.flush()?;
        let sync = match self.fsync {
            Fsync::Never => false,
            Fsync::Batch => true,
            Fsync::Interval(every) => self.last_sync.elapsed() >= every,
        };
        if sync {
            self.out.get_ref().sync_data()?;
            self.last_sync = Instant::now();
        }
        self.file_len += self.pending_bytes;
        self.pending_bytes = 0;
        self.position = next_position;
        self.store_progress()
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let file = open_append(&self.path)?;
        let meta = file.metadata()?;
        (self.inode, self.file_len) = (meta.ino(), meta.len());
        self.out = BufWriter::with_capacity(1 << 16, file);
        self.store_progress()?;
        info!(path = %self.path.display(), "file re-opened");
        Ok(())
    }

    fn switch_segment(&mut self, segment_created_ns: u64) -> io::Result<()> {
        self.out.flush()?;
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
}

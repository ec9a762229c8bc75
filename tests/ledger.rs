//! The test's own two records of a stream, so that "lost" and "duplicated" are counted
//! by something other than the product.
//!
//! - The **ledger**: every sequence number whose publish returned success, written by the
//!   producer only after that (this process's own producer through the library, or the
//!   generator's test-only `SHMRING_TEST_LEDGER` file: see `producerd`'s `ledger` module).
//! - The **reader**: every sequence number the test's own reader received (the file
//!   sink's output decoded here, or records read by the test).
//!
//! [`Evidence::compare`] counts lost = acknowledged and never delivered, duplicated =
//! delivered more than once, and (for information) unacknowledged = delivered but not
//! in the ledger (a producer killed between its publish and the ledger append). The
//! ring's counters and the verify sink's verdict play no part in either figure.

use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use shm_core::{Segment, TryReadError};

use crate::daemons::{Launch, binary_file_sink, generator_seq, split_binary};
use crate::fixture::{Fixture, Summary};

/// The environment variable that gives `producerd`'s generator a ledger file.
pub const GENERATOR_LEDGER_VAR: &str = "SHMRING_TEST_LEDGER";

/// The sequence numbers in a ledger file (u64 little-endian each); a partial last entry
/// (a producer killed inside its `write`) is ignored. A missing file is an empty ledger.
pub fn read_ledger(path: &Path) -> Vec<u64> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read the ledger {}: {e}", path.display()),
    };
    bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
}

/// The sequence numbers of the generator records in a `binary` file sink output, in file
/// order; panics on a torn or corrupt record (the reader's own check, reported apart
/// from lost and duplicated).
#[track_caller]
pub fn read_generator_file(path: &Path) -> Vec<u64> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    };
    split_binary(&bytes)
        .iter()
        .enumerate()
        .map(|(i, r)| generator_seq(r).unwrap_or_else(|| panic!("record {i} of {} is corrupt", path.display())))
        .collect()
}

/// Lost and duplicated records, counted from the test's ledger and the test's reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// Distinct sequence numbers the producer was told were published.
    pub acknowledged: u64,
    /// Records the reader received (duplicates included).
    pub delivered: u64,
    /// Acknowledged and never delivered.
    pub lost: u64,
    /// Deliveries beyond the first of a sequence number.
    pub duplicated: u64,
    /// Deliveries not after the one before them, in the reader's order (one producer's
    /// records must arrive in its order).
    pub reordered: u64,
    /// Delivered but never acknowledged (published, then the producer died before it
    /// could append them to its ledger): neither lost nor duplicated.
    pub unacknowledged: u64,
    /// What kept the ledger.
    pub ledger: &'static str,
    /// What the reader was.
    pub reader: &'static str,
}

impl Evidence {
    /// Compares the ledger `acknowledged` (kept by `ledger`) with what the reader
    /// `reader` received, `delivered`.
    pub fn compare(
        ledger: &'static str,
        mut acknowledged: Vec<u64>,
        reader: &'static str,
        mut delivered: Vec<u64>,
    ) -> Evidence {
        acknowledged.sort_unstable();
        acknowledged.dedup();
        let reordered = delivered.windows(2).filter(|w| w[1] <= w[0]).count() as u64;
        let received = delivered.len() as u64;
        delivered.sort_unstable();
        let mut distinct = delivered.clone();
        distinct.dedup();
        let duplicated = received - distinct.len() as u64;
        let in_ledger = |seq: &u64| acknowledged.binary_search(seq).is_ok();
        let delivered_acknowledged = distinct.iter().filter(|s| in_ledger(s)).count() as u64;
        Evidence {
            acknowledged: acknowledged.len() as u64,
            delivered: received,
            lost: acknowledged.len() as u64 - delivered_acknowledged,
            duplicated,
            reordered,
            unacknowledged: distinct.len() as u64 - delivered_acknowledged,
            ledger,
            reader,
        }
    }

    /// The figures of several streams (rounds of one test) added up; panics if none,
    /// or if they were not counted the same way.
    #[track_caller]
    pub fn sum(rounds: &[Evidence]) -> Evidence {
        let (first, rest) = rounds.split_first().expect("at least one round");
        rest.iter().fold(first.clone(), |mut total, e| {
            assert_eq!((e.ledger, e.reader), (total.ledger, total.reader), "rounds counted differently");
            total.acknowledged += e.acknowledged;
            total.delivered += e.delivered;
            total.lost += e.lost;
            total.duplicated += e.duplicated;
            total.reordered += e.reordered;
            total.unacknowledged += e.unacknowledged;
            total
        })
    }

    /// Whether nothing acknowledged was lost, nothing delivered twice, nothing out of order.
    pub fn exact(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.reordered == 0
    }

    /// Panics unless [`Evidence::exact`], and unless something was acknowledged at all
    /// (an empty ledger proves nothing).
    #[track_caller]
    pub fn assert_exact(&self) {
        assert!(self.acknowledged > 0, "the ledger is empty: nothing was proven ({self:?})");
        assert!(self.exact(), "lost, duplicated or reordered records: {self:?}");
    }
}

/// A generator stream through the real daemons, with the test's ledger and reader:
/// `producerd`'s test ledger file and a `binary` file sink that the test decodes.
#[derive(Debug, Clone)]
pub struct GeneratorStream {
    /// The generator's ledger file.
    pub ledger: PathBuf,
    /// The file sink's output.
    pub out: PathBuf,
}

impl GeneratorStream {
    /// What kept the ledger, for the report.
    pub const LEDGER: &'static str = "producerd's test ledger (SHMRING_TEST_LEDGER, appended after each publish)";
    /// What the reader was, for the report.
    pub const READER: &'static str = "the file sink's output, decoded by the test";

    /// A ledger and an output file in the fixture's directory, named after `stem`.
    pub fn new(fx: &Fixture, stem: &str) -> GeneratorStream {
        GeneratorStream { ledger: fx.path(&format!("{stem}.ledger")), out: fx.path(&format!("{stem}.bin")) }
    }

    /// `launch` (a generator) with its ledger.
    pub fn producer(&self, launch: Launch) -> Launch {
        launch.env(GENERATOR_LEDGER_VAR, &self.ledger.display().to_string())
    }

    /// The `[sink]` lines of the file sink the test reads.
    pub fn sink(&self) -> String {
        binary_file_sink(&self.out)
    }

    /// The ledger against what the file holds.
    #[track_caller]
    pub fn evidence(&self) -> Evidence {
        Evidence::compare(Self::LEDGER, read_ledger(&self.ledger), Self::READER, read_generator_file(&self.out))
    }
}

/// Several generators (mpsc producer ids) feeding one `binary` file sink: each producer's
/// ledger (`(id, ledger file)`) against its own records in `out` (the id is the top byte
/// of a generator record's first word, the sequence number the rest), added up, so that
/// order is checked per producer. Panics on a record of a producer not listed.
#[track_caller]
pub fn per_producer_evidence(ledgers: &[(u8, &Path)], out: &Path) -> Evidence {
    const SEQ_BITS: u32 = 56;
    let delivered = read_generator_file(out);
    let strangers: Vec<u64> = delivered
        .iter()
        .map(|w| w >> SEQ_BITS)
        .filter(|id| !ledgers.iter().any(|(k, _)| u64::from(*k) == *id))
        .collect();
    assert!(strangers.is_empty(), "records of producer ids no generator had: {strangers:?}");
    let rounds: Vec<Evidence> = ledgers
        .iter()
        .map(|&(id, ledger)| {
            let mine = delivered
                .iter()
                .filter(|w| *w >> SEQ_BITS == u64::from(id))
                .map(|w| w & ((1 << SEQ_BITS) - 1))
                .collect();
            Evidence::compare(GeneratorStream::LEDGER, read_ledger(ledger), GeneratorStream::READER, mine)
        })
        .collect();
    Evidence::sum(&rounds)
}

/// The lost and duplicated figures of one reliability row.
#[derive(Debug, Clone)]
pub enum Figures {
    /// Records flowed, counted by the test's ledger and reader.
    Counted(Evidence),
    /// No record flows in this test (a refused create, open or mount): lost and
    /// duplicated do not apply, and the row says so rather than printing 0.
    NoRecords,
    /// Records flow, but the row measures something else (named here, e.g. the
    /// consistency of crash copies): lost and duplicated are not its figures.
    NotCounted(&'static str),
}

impl Figures {
    /// The row's figure columns: `lost`, `duplicated`, and where they come from.
    pub fn columns(&self) -> [(&'static str, Value); 6] {
        match self {
            Figures::Counted(e) => [
                ("lost", json!(e.lost)),
                ("duplicated", json!(e.duplicated)),
                ("acknowledged", json!(e.acknowledged)),
                ("delivered", json!(e.delivered)),
                ("ledger", json!(e.ledger)),
                ("reader", json!(e.reader)),
            ],
            Figures::NoRecords => [
                ("lost", json!("n/a")),
                ("duplicated", json!("n/a")),
                ("acknowledged", json!("n/a")),
                ("delivered", json!("n/a")),
                ("ledger", json!("no records flow")),
                ("reader", json!("no records flow")),
            ],
            Figures::NotCounted(what) => [
                ("lost", json!("n/a")),
                ("duplicated", json!("n/a")),
                ("acknowledged", json!("n/a")),
                ("delivered", json!("n/a")),
                ("ledger", json!(format!("not a delivery test: {what}"))),
                ("reader", json!(format!("not a delivery test: {what}"))),
            ],
        }
    }
}

/// What kept the ledger of [`publish_own`], for the report.
pub const OWN_LEDGER: &str = "this test's producer (each publish that returned Ok)";
/// What [`read_own`] is, for the report.
pub const OWN_READER: &str = "this test's consumer";

/// Publishes `seqs` into `segment` as 8-byte records (each its sequence number) through a
/// producer of this process, attached for the call only, and returns the ledger: every
/// sequence number whose publish returned `Ok`. Panics if the ring fills up.
#[track_caller]
pub fn publish_own(segment: &Segment, seqs: Range<u64>) -> Vec<u64> {
    let mut producer = segment.producer().unwrap_or_else(|e| panic!("attach a producer: {e}"));
    let mut acknowledged = Vec::new();
    for seq in seqs {
        producer.try_publish(&seq.to_le_bytes()).unwrap_or_else(|e| panic!("publish {seq}: {e}"));
        // Only now, with the publish returned: the ledger.
        acknowledged.push(seq);
    }
    acknowledged
}

/// Reads every record waiting in `segment` through a consumer of this process, attached
/// for the call only, and returns their sequence numbers in the order read (a record
/// that is not 8 bytes reads as `u64::MAX`, which no ledger holds).
#[track_caller]
pub fn read_own(segment: &Segment) -> Vec<u64> {
    let mut consumer = segment.consumer().unwrap_or_else(|e| panic!("attach a consumer: {e}"));
    let mut delivered = Vec::new();
    loop {
        match consumer.try_read() {
            Ok(record) => delivered.push(record.as_ref().try_into().map_or(u64::MAX, u64::from_le_bytes)),
            Err(TryReadError::Empty) => return delivered,
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Streams `records` records through `segment` with [`publish_own`] and [`read_own`], a
/// thousand at a time, and counts them. Proves a segment (say, the one a race left)
/// carries a stream.
#[track_caller]
pub fn stream_through(segment: &Segment, records: u64) -> Evidence {
    const CHUNK: u64 = 1000;
    let (mut acknowledged, mut delivered) = (Vec::new(), Vec::new());
    for start in (0..records).step_by(CHUNK as usize) {
        acknowledged.extend(publish_own(segment, start..(start + CHUNK).min(records)));
        delivered.extend(read_own(segment));
    }
    Evidence::compare(OWN_LEDGER, acknowledged, OWN_READER, delivered)
}

/// The figures of a `ring-peer produce` / `ring-peer consume` pair from their summaries:
/// the producer counts a record only once its publish returned, and the consumer checks
/// that each record it reads is whole and the next one, so `first..=last` with `count`
/// records is what it received.
#[track_caller]
pub fn ring_peers(produced: &Summary, consumed: &Summary) -> Evidence {
    let range = |s: &Summary| if s.u64("count") == 0 { 0..0 } else { s.u64("first")..s.u64("last") + 1 };
    Evidence::compare(
        "ring-peer produce (records whose publish returned)",
        range(produced).collect(),
        "ring-peer consume (each record checked to be the next)",
        range(consumed).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::Evidence;

    #[test]
    fn lost_duplicated_and_unacknowledged_are_told_apart() {
        let e = Evidence::compare("l", vec![0, 1, 2, 3], "r", vec![0, 2, 2, 3, 4]);
        assert_eq!((e.acknowledged, e.delivered, e.lost, e.duplicated, e.unacknowledged), (4, 5, 1, 1, 1));
        assert_eq!(e.reordered, 1, "the second 2 is not after the first");
        assert!(!e.exact());
        let e = Evidence::compare("l", vec![0, 1], "r", vec![0, 1, 2]);
        assert!(e.exact());
        assert!(!Evidence::compare("l", vec![0, 1], "r", vec![1, 0]).exact(), "out of order");
    }
}

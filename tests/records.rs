//! The record stream that `ring-peer` produces and checks, and the tests reason about.
//!
//! Record `seq` is `[seq: u64 LE][payload][checksum: u64 LE]`, `record_len(seq, max)`
//! bytes in all, where the payload is derived from `seq` and the checksum covers
//! everything before it. Everything about a record follows from its sequence number, so
//! a consumer can check each one on its own (the checksum catches a torn or overwritten
//! record, the length catches a truncated one) and the stream as a whole (each sequence
//! number is the one after the previous: nothing lost, duplicated or reordered).
//!
//! Lengths are mostly small and uneven, so that frames of every size meet the ring's
//! end and padding frames are written all the time; about one record in 1024 is large
//! (up to the ring's maximum), so that claims of nearly half the ring happen too.
//! The API that writes a record also follows from its sequence number (see [`Api`]),
//! and shows in its record type, so a consumer checks that too.

use std::fmt;

/// Bytes of the sequence number at the start of a record.
pub const SEQ_LEN: usize = 8;
/// Bytes of the checksum at the end of a record.
pub const CHECKSUM_LEN: usize = 8;
/// The shortest record: a sequence number and a checksum, no payload.
pub const MIN_RECORD: usize = SEQ_LEN + CHECKSUM_LEN;
/// The longest of the common, small records.
pub const SMALL_MAX: usize = 256;
/// Consecutive records written through the same API.
pub const BLOCK: u64 = 64;

/// The SplitMix64 finaliser: a good 64-bit mix, used for every derived value.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Length in bytes of record `seq` in a ring whose largest payload is `max`.
pub fn record_len(seq: u64, max: usize) -> usize {
    let max = max.max(MIN_RECORD);
    let r = splitmix64(seq);
    let upper = if r % 1024 == 0 { max } else { SMALL_MAX.min(max) };
    MIN_RECORD + (r >> 10) as usize % (upper - MIN_RECORD + 1)
}

/// Sum of the lengths of records `range` (the payload bytes a ring counts for them).
pub fn total_len(range: std::ops::Range<u64>, max: usize) -> u64 {
    range.map(|seq| record_len(seq, max) as u64).sum()
}

/// How the producer writes a record; stored as its record type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// `Producer::publish`: copied in, record type 0 (the only type `publish` writes).
    Publish = 0,
    /// `Producer::claim`, written in place, `Claim::commit`.
    Claim = 1,
    /// `Producer::claim` of more than it needs, written in place, `Claim::commit_len`.
    ClaimLen = 2,
    /// `Producer::batch`, `Batch::try_claim` in place, published once per batch.
    Batch = 3,
}

impl Api {
    /// The API that writes record `seq` (the same for each block of [`BLOCK`] records).
    pub fn for_seq(seq: u64) -> Api {
        match splitmix64((seq / BLOCK) ^ 0xA5A5_5A5A) % 4 {
            0 => Api::Publish,
            1 => Api::Claim,
            2 => Api::ClaimLen,
            _ => Api::Batch,
        }
    }

    /// The record type a record written this way carries.
    pub fn record_type(self) -> u32 {
        self as u32
    }
}

/// A word-wise FNV-1a hash with a final mix: fast enough to check gigabytes per second,
/// and any change of one 8-byte word changes the result.
pub fn checksum(bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01B3;
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(PRIME);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(PRIME);
    }
    splitmix64(h ^ bytes.len() as u64)
}

/// Writes record `seq` into `out`, which must be `record_len(seq, max)` bytes long.
pub fn encode(seq: u64, out: &mut [u8]) {
    let len = out.len();
    assert!(len >= MIN_RECORD, "a record is at least {MIN_RECORD} bytes, got {len}");
    out[..SEQ_LEN].copy_from_slice(&seq.to_le_bytes());
    // xorshift64 from a per-record seed: cheap, and different for every record.
    let mut x = splitmix64(seq ^ 0x5EED) | 1;
    for chunk in out[SEQ_LEN..len - CHECKSUM_LEN].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let sum = checksum(&out[..len - CHECKSUM_LEN]);
    out[len - CHECKSUM_LEN..].copy_from_slice(&sum.to_le_bytes());
}

/// What is wrong with a record or with the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Shorter than a sequence number and a checksum.
    TooShort {
        /// Its length.
        len: usize,
    },
    /// The checksum does not match: torn, overwritten or corrupted.
    Checksum {
        /// The sequence number it claims.
        seq: u64,
    },
    /// Intact, but not the length its sequence number gives.
    Length {
        /// Its sequence number.
        seq: u64,
        /// The length it should have.
        expected: usize,
        /// The length it has.
        found: usize,
    },
    /// Intact, but not the record type its sequence number gives.
    RecordType {
        /// Its sequence number.
        seq: u64,
        /// The type it should have.
        expected: u32,
        /// The type it has.
        found: u32,
    },
    /// Not the next record: one was lost, duplicated or reordered.
    Sequence {
        /// The sequence number expected.
        expected: u64,
        /// The one found.
        found: u64,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::TooShort { len } => write!(f, "record of {len} bytes is shorter than {MIN_RECORD}"),
            Violation::Checksum { seq } => write!(f, "checksum mismatch in record claiming seq {seq} (torn?)"),
            Violation::Length { seq, expected, found } => {
                write!(f, "record {seq} is {found} bytes, expected {expected}")
            }
            Violation::RecordType { seq, expected, found } => {
                write!(f, "record {seq} has type {found}, expected {expected}")
            }
            Violation::Sequence { expected, found } => {
                let what = if found < expected { "duplicate or reordered" } else { "gap" };
                write!(f, "expected seq {expected}, found {found} ({what})")
            }
        }
    }
}

impl std::error::Error for Violation {}

/// Checks one record on its own and returns its sequence number.
pub fn check(data: &[u8], record_type: u32, max: usize) -> Result<u64, Violation> {
    let len = data.len();
    if len < MIN_RECORD {
        return Err(Violation::TooShort { len });
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&data[..SEQ_LEN]);
    let seq = u64::from_le_bytes(seq);
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&data[len - CHECKSUM_LEN..]);
    if checksum(&data[..len - CHECKSUM_LEN]) != u64::from_le_bytes(sum) {
        return Err(Violation::Checksum { seq });
    }
    let expected = record_len(seq, max);
    if len != expected {
        return Err(Violation::Length { seq, expected, found: len });
    }
    let expected = Api::for_seq(seq).record_type();
    if record_type != expected {
        return Err(Violation::RecordType { seq, expected, found: record_type });
    }
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_caught() {
        for seq in [0, 1, 63, 64, 1000, u64::MAX / 3] {
            let mut buf = vec![0u8; record_len(seq, 32760)];
            encode(seq, &mut buf);
            let ty = Api::for_seq(seq).record_type();
            assert_eq!(check(&buf, ty, 32760), Ok(seq));
            for i in [0, buf.len() / 2, buf.len() - 1] {
                let mut bad = buf.clone();
                bad[i] ^= 0x10;
                assert!(check(&bad, ty, 32760).is_err(), "flip at {i} of record {seq} went unnoticed");
            }
            assert!(check(&buf[..buf.len() - 8], ty, 32760).is_err());
            assert!(check(&buf, ty ^ 1, 32760).is_err());
        }
    }

    #[test]
    fn lengths_and_apis_are_mixed() {
        let lens: Vec<usize> = (0..100_000).map(|s| record_len(s, 32760)).collect();
        assert!(lens.iter().all(|&l| (MIN_RECORD..=32760).contains(&l)));
        assert!(lens.iter().any(|&l| l > 4096), "no large records");
        assert!(lens.iter().any(|&l| l % 8 != 0), "every record 8-aligned: padding less exercised");
        let apis: std::collections::HashSet<_> = (0..100_000).step_by(BLOCK as usize).map(Api::for_seq).collect();
        assert_eq!(apis.len(), 4);
    }
}

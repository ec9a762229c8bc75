//! The generator's record format, which the verify sink checks:
//!
//! ```text
//! offset 0   u64 LE  bits 0..56: sequence number (0, 1, 2, ... per producer)
//!                    bits 56..64: producer id (the mpsc producer slot; 0 on spsc)
//! offset 8   u64 LE  send time, ns of CLOCK_MONOTONIC
//! offset 16  ...     payload (bytes derived from the sequence number)
//! last 8     u64 LE  FNV-1a checksum of every byte before it
//! ```
//!
//! The smallest record is 24 bytes (no payload).
//!
//! The producer id came with mpsc rings (format 2). Format 1 had the whole first word as
//! the sequence number; no ring reaches 2^56 records, so its top byte was always 0, and a
//! format 1 record reads as producer 0's, byte for byte the same as format 2 writes it.

/// Bytes of header and trailer around the payload.
pub const OVERHEAD: usize = 24;

/// FNV-1a, 64-bit: cheap, and any torn or flipped byte changes it.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Nanoseconds of CLOCK_MONOTONIC (comparable between processes on one host).
pub fn monotonic_ns() -> u64 {
    let ts =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    (ts.tv_sec() as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec() as u64)
}

/// Sequence numbers are below this (the first word's top byte is the producer id).
pub const SEQ_LIMIT: u64 = 1 << 56;

/// Writes producer `producer`'s record `seq` into `out` (whose length is the record
/// size, at least [`OVERHEAD`]). `seq` is taken modulo [`SEQ_LIMIT`].
pub fn encode(out: &mut [u8], producer: u8, seq: u64, sent_ns: u64) {
    debug_assert!(out.len() >= OVERHEAD);
    let n = out.len();
    let first = (seq % SEQ_LIMIT) | (u64::from(producer) << 56);
    out[..8].copy_from_slice(&first.to_le_bytes());
    out[8..16].copy_from_slice(&sent_ns.to_le_bytes());
    let fill = (seq as u8).wrapping_mul(31);
    for (i, b) in out[16..n - 8].iter_mut().enumerate() {
        *b = fill.wrapping_add(i as u8);
    }
    let sum = fnv1a(&out[..n - 8]);
    out[n - 8..].copy_from_slice(&sum.to_le_bytes());
}

/// A record that passed its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// The producer that wrote it (0 for a format 1 record).
    pub producer: u8,
    /// Its sequence number, per producer.
    pub seq: u64,
    /// When it was sent (CLOCK_MONOTONIC ns).
    pub sent_ns: u64,
}

/// Checks a record: `None` if it is too short or its checksum does not match.
pub fn decode(data: &[u8]) -> Option<Decoded> {
    let n = data.len();
    if n < OVERHEAD {
        return None;
    }
    let word = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes"));
    (fnv1a(&data[..n - 8]) == word(n - 8)).then(|| Decoded {
        producer: (word(0) >> 56) as u8,
        seq: word(0) % SEQ_LIMIT,
        sent_ns: word(8),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_any_flipped_byte_is_caught() {
        for len in [OVERHEAD, 25, 64, 1000] {
            let mut buf = vec![0; len];
            encode(&mut buf, 3, 42, 7);
            assert_eq!(decode(&buf), Some(Decoded { producer: 3, seq: 42, sent_ns: 7 }));
            for i in 0..len {
                let mut bad = buf.clone();
                bad[i] ^= 0x10;
                assert_eq!(decode(&bad), None, "flip at {i} of {len}");
            }
        }
        assert_eq!(decode(&[0; 23]), None);
    }

    #[test]
    fn a_format_1_record_reads_as_producer_0_and_producer_0_writes_format_1() {
        let mut v2 = vec![0; 40];
        encode(&mut v2, 0, 9, 7);
        assert_eq!(u64::from_le_bytes(v2[..8].try_into().unwrap()), 9, "format 1's first word: the plain sequence");
        assert_eq!(decode(&v2).map(|d| (d.producer, d.seq)), Some((0, 9)));
    }
}

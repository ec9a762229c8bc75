//! Record framing: `[len: u32 LE][type: u32 LE][payload][pad to 8]`.
//!
//! Frames start on 8-byte boundaries. A frame never straddles the end of the ring: when
//! the space left before the end is too small, the producer fills it with one padding
//! frame (type [`PADDING`]) and writes the record at offset 0. `len` counts payload
//! bytes only, so the framed size is `align8(8 + len)`.

/// Bytes of the frame header.
pub const FRAME_HEADER: u64 = 8;
/// Frame alignment.
pub const FRAME_ALIGN: u64 = 8;
/// Record type of a padding frame (skipped by consumers).
pub const PADDING: u32 = u32::MAX;
/// Record types from here up are reserved for the ring itself.
pub const RESERVED_TYPES: u32 = 0xFFFF_0000;

/// Bytes a frame with `len` payload bytes occupies, or `None` on overflow.
#[inline]
pub const fn framed_len(len: u64) -> Option<u64> {
    match len.checked_add(FRAME_HEADER + FRAME_ALIGN - 1) {
        Some(v) => Some(v & !(FRAME_ALIGN - 1)),
        None => None,
    }
}

/// Bytes a frame with a 32-bit `len` occupies (cannot overflow a `u64`).
#[inline]
pub const fn framed_len_u32(len: u32) -> u64 {
    (len as u64 + FRAME_HEADER + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// Packs a frame header into the word stored at the frame's start.
#[inline]
pub const fn encode(len: u32, record_type: u32) -> u64 {
    (len as u64) | ((record_type as u64) << 32)
}

/// Splits a stored frame header word into `(len, type)`.
#[inline]
pub const fn decode(word: u64) -> (u32, u32) {
    (word as u32, (word >> 32) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_len_rounds_up_to_eight_and_includes_the_header() {
        assert_eq!(framed_len(0), Some(8));
        assert_eq!(framed_len(1), Some(16));
        assert_eq!(framed_len(8), Some(16));
        assert_eq!(framed_len(9), Some(24));
        assert_eq!(framed_len(u64::MAX), None);
    }

    #[test]
    fn header_word_round_trips() {
        assert_eq!(decode(encode(7, 42)), (7, 42));
        assert_eq!(decode(encode(u32::MAX, PADDING)), (u32::MAX, PADDING));
    }
}

//! The multi-producer, single-consumer ring.
//!
//! Up to [`MPSC_PRODUCERS`] producers, each with its own id (`0..16`), write into one
//! ring that one consumer reads. Frames, wrap padding, positions and the consumer's
//! cursor are those of [`super::spsc`]; what differs is how producers claim space, how a
//! record is committed, and what happens to a claim whose producer died.
//!
//! # Words and who writes them
//! - `write_cursor` (the producer line) is the **claim cursor**: one past the last
//!   *claimed* byte. Every producer advances it by compare-and-swap; nobody else writes it.
//! - Each frame's header word (`[len: u32][type: u32]`, see [`super::frame`]) is the
//!   **commit word**. It is read and written only atomically (`Region::atomic_word`).
//!   Its type says what the frame is:
//!   - `0`: nothing written yet (the consumer zeroes every byte it passes).
//!   - `IN_FLIGHT | k` ([`in_flight`]): claimed by producer `k`, not committed. `len` is
//!     the record's payload length, so the frame's extent is known.
//!   - `(k + 1) << 16 | t` ([`committed`]): committed by producer `k`, application type `t`
//!     (16 bits in this kind). Stored with `Release` after the payload.
//!   - `PADDING`: wrap padding to the end of the ring, as in spsc.
//!   - `SKIP | k`: a claim producer `k` abandoned (a dropped [`Claim`]), skipped, not counted.
//!   - `UNBLOCKED | k`: a dead producer's hole the consumer turned into padding; counted.
//! - Producer `k`'s slot ([`MpscProducerSlot`]): its **intent** (`intent_start`,
//!   `intent_end`: the range it is claiming, stored *before* its compare-and-swap), an
//!   **orphan** range (a dead predecessor's intent, see below), and display counters.
//! - The consumer's `read_cursor`, release slots and per-producer **ledgers**
//!   ([`crate::layout::MpscLedger`]): as in spsc, written before the cursor with `Release`.
//!
//! # Claim
//! 1. Load the claim cursor `t`; compute the claim: `framed`, or `to_end + framed` when
//!    the record must wrap (a padding frame first). Check it fits below
//!    `read_cursor + capacity` (cached; reloaded with `Acquire` only when it looks full).
//! 2. Store the intent `[t, t + n)` (Relaxed), then `compare_exchange(t, t + n, AcqRel)`.
//!    Its Release half publishes the intent to whoever acquires a claim cursor at or past
//!    `t + n` (the consumer checking a hole); on failure, go back to 1.
//! 3. Store `IN_FLIGHT | k` with `len` in the record's header word (Relaxed: it only
//!    names the owner for hole checks), then, when wrapping, the padding frame's header
//!    (Release). The claim is lent out as `&mut [u8]`: no other process touches those bytes.
//!
//! # Commit
//! Store `committed(k, t)` with `len` in the header word with **Release**: pairs with the
//! consumer's Acquire load of that word, so the payload is visible to a consumer that sees
//! the commit. Then the display counters (Relaxed) and the wake-up check of spsc
//! (`fence(SeqCst)`, load `data_wake`, wake only if a consumer announced sleep). Records
//! become visible in claim order: the consumer reads header words in position order and
//! stops at the first that is not committed.
//!
//! # Consume
//! The consumer loads the header word at its position with Acquire. Committed: deliver.
//! Padding, skip or unblocked: pass it. `0` or in flight below the claim cursor: a claim in
//! progress, so wait (the spin/yield/futex/hybrid strategies of spsc; a sleeping consumer
//! re-checks that word, and the committing producer wakes it). Every frame passed is
//! zeroed before the read cursor's Release store gives its bytes back, so a header word
//! that is not `0` at or past the consumer was written in this lap. Records' space goes
//! back lazily, exactly as in spsc.
//!
//! The consumer counts no missed wake-ups (`consumer_missed_wakes` stays 0 on mpsc, as
//! on broadcast): spsc's test for a real miss needs a cursor that the waker moves only
//! after its wake-up check, and the claim cursor is not one here: another producer
//! claims behind a producer stalled (or killed) between its claim and its commit, which
//! owes no wake-up. Every sleep is still bounded by [`super::MAX_SLEEP`] and re-checks,
//! and the loom models check that the commit's wake-up is never lost.
//!
//! # Holes: a producer killed between claim and commit
//! A claim that is never committed stops the consumer at its header word. Only the
//! consumer turns it into padding, and only once its owner is **known dead**: its
//! kernel-released participant lock (slot `2 + k`) is gone. Not a pid, not a timeout: a
//! producer that is alive but stopped (SIGSTOP) is waited for however long, and
//! [`crate::Segment::mpsc_status`] shows whom the consumer waits for. The consumer looks
//! only after it has been stuck on the same word for a while (`HOLE_CHECK_AFTER`), so a
//! busy ring makes no liveness syscall. The owner of the word at `p`:
//! - `IN_FLIGHT | k`: producer `k` (only the winner of the compare-and-swap at that frame
//!   writes it). The hole is that frame.
//! - `0`: the owner died (or is paused) between its compare-and-swap and step 3. Its intent
//!   still contains `p` (an intent changes only at the next claim, after a commit), and the
//!   consumer sees it (it acquired a claim cursor past `p`). But a producer that *lost* a
//!   compare-and-swap and died may have a stale intent containing `p` too. So: if any
//!   producer whose intent contains `p` is alive, wait for it; if all are dead, the hole
//!   ends at the smallest candidate end `e` that is a real claim boundary: `e` is the claim
//!   cursor, or a header word at `e` is not `0`, or some intent starts at `e`. A loser's end
//!   that falls inside the real hole is none of these (the claim cursor jumped over it,
//!   intents start only at claim-cursor values, and the hole's bytes are zero), and the real
//!   end always is one, so the smallest valid end is the real one.
//!
//! Before writing, the consumer re-reads the word at `p` (the owner may have committed just
//! before it died: then it is delivered). It then writes `UNBLOCKED | k` frames over the hole
//! (split at the ring's end if the hole began with its padding) with Release, and passes
//! them like padding, counting one unblocked record for `k`.
//!
//! A producer that attaches with the id of a dead one holds its lock, so its predecessor's
//! pending claim would look alive. On attach it therefore copies a predecessor intent the
//! consumer has not yet passed into its slot's **orphan** range, which the consumer treats
//! as dead, and makes no claim of its own until the consumer has passed it.
//!
//! # Durable batches
//! [`Consumer::read_batch_durable`] is spsc's exactly-once read for this kind: the sink
//! sees the records in place, the hook makes them durable, and only then are they
//! released. During the batch the consumer *holds*: it zeroes nothing it passes and
//! stores no cursor (`zeroed_to` stays where the batch began); at the end it zeroes the
//! whole passed range and releases it with one cursor store. A refusing hook (or a
//! panicking sink) puts the position and the per-producer tallies back, and since
//! nothing was zeroed the same frames are read again, hole markers it wrote included
//! (they are counted again from the restored tallies, so once).
//!
//! # Exact counters
//! The consumer's tallies per producer (records released, holes passed) are written into
//! the ledger of the release slot it is about to use, before the read cursor (Release); a
//! restarted consumer takes them from the ledger whose release slot matches the cursor,
//! exactly as spsc's consumed counts, however its predecessor died. `unblocked_records`
//! is counted when the consumer *passes* an unblocked frame, so a consumer killed while
//! reclaiming reclaims (or passes) it again and counts it once. A producer's own
//! `records` count is stored after its commit: it is display only (a producer killed
//! between the two shows one record fewer than the consumer's exact ledger).
//!
//! # Peek
//! [`crate::Segment::peek_view`] shows what the consumer reads next, writing nothing: from
//! the read cursor, in claim order, each committed record (with its producer id), and the
//! padding, abandoned claims and unblocked holes between them as skipped frames. It stops
//! at the first claim not yet committed, as the consumer does, and says whom that claim
//! waits for ([`HeadClaim`]: a live producer, or a dead one whose hole the consumer will
//! unblock); it never reclaims anything. Each frame is copied (volatile word reads), then
//! `fence(Acquire)`, then the read cursor and the header word are loaded again: a changed
//! word or a cursor past the frame means the consumer passed it meanwhile (it zeroes the
//! header word, then issues a Release fence, then zeroes the payload: `zero_record`), or a
//! producer reused the space it released, so the copy is dropped and the records before it
//! are returned, or the walk starts again (at most `PEEK_ATTEMPTS` times). A consumer
//! releases lazily (a quarter of the ring at a time while busy), so on a busy ring the read
//! cursor may lag behind records it has already zeroed: peek then stops there as at a claim
//! in progress. Idle or stuck consumers release first, so the view is exact then.

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use super::frame::{self, FRAME_HEADER, PADDING, RESERVED_TYPES};
use super::spsc::{CURSOR_LIMIT, PEEK_ATTEMPTS, PeekedRecord, PeekedState};
use super::wait::{LocalCounters, Slept, Waiting, sleep_unless_moved, wake_sleeper};
use super::{
    ClaimError, Corruption, PeekStop, PeekView, ReadError, RingRefs, SkippedFrame, TryClaimError, TryReadError,
    WaitStrategy,
};
use crate::layout::{MPSC_PRODUCERS, MpscArea, MpscProducerSlot};
use crate::stats::Counter;
use crate::sync::{Ordering, fence};

/// The ordering of the commit store of a frame's header word: `Release`. The loom mutation
/// `mutation-mpsc-commit-relaxed` (a feature only CI's loom step turns on, to show that
/// the models fail without it) weakens it to `Relaxed`.
const COMMIT_ORDERING: Ordering =
    if cfg!(feature = "mutation-mpsc-commit-relaxed") { Ordering::Relaxed } else { Ordering::Release };
/// The success ordering of the claim's compare-and-swap: `AcqRel`. The loom mutation
/// `mutation-mpsc-claim-relaxed` weakens it to `Relaxed` (the intent is no longer published).
const CLAIM_ORDERING: Ordering =
    if cfg!(feature = "mutation-mpsc-claim-relaxed") { Ordering::Relaxed } else { Ordering::AcqRel };

/// Frame type of a claim in flight: `IN_FLIGHT | producer id`.
pub const IN_FLIGHT: u32 = 0xFFFF_FE00;
/// Frame type of a dead producer's hole turned into padding: `UNBLOCKED | producer id`.
pub const UNBLOCKED: u32 = 0xFFFF_FD00;
/// Frame type of a claim its (live) producer abandoned: `SKIP | producer id`.
pub const SKIP: u32 = 0xFFFF_FC00;
/// Largest application record type in an mpsc ring (the upper 16 bits carry the producer).
pub const MAX_RECORD_TYPE: u32 = 0xFFFF;

/// How long the consumer is stuck on one claim before it asks the kernel whether the
/// claim's owner is alive: a rate limit on the liveness check, never a reason to reclaim.
const HOLE_CHECK_AFTER: Duration = Duration::from_millis(1);
/// Pending looks between two clock reads while stuck.
const PENDING_LOOKS_PER_CLOCK: u32 = 64;

/// The header type of a claim by producer `id` in flight.
pub const fn in_flight(id: usize) -> u32 {
    IN_FLIGHT | id as u32
}

/// The header type of a record of application type `record_type` committed by `id`.
pub const fn committed(id: usize, record_type: u32) -> u32 {
    ((id as u32 + 1) << 16) | (record_type & MAX_RECORD_TYPE)
}

/// Whether producer `id` is alive, by its kernel lock (`true` when it cannot be told:
/// a claim is never reclaimed without proof of death).
pub(crate) type ProducerLiveness = Box<dyn Fn(usize) -> bool + Send>;

/// What a header word says, decoded and checked against the ring's geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Word {
    /// Nothing written: a claim whose owner has not reached its in-flight store.
    Unwritten,
    /// A claim of `len` payload bytes by `producer`, not committed.
    InFlight { producer: usize, len: u32 },
    /// A committed record.
    Committed { producer: usize, record_type: u32, len: u32 },
    /// Wrap padding to the end of the ring.
    Padding,
    /// A frame to pass: `framed` bytes; `unblocked` holes count for `producer`.
    Pass { producer: usize, framed: u64, unblocked: bool },
}

/// Decodes the header word at `pos`; checks every length against the ring (never trusts it).
#[inline]
pub(crate) fn decode_word(ring: &RingRefs, pos: u64, word: u64) -> Result<Word, Corruption> {
    if word == 0 {
        return Ok(Word::Unwritten);
    }
    let (len, ty) = frame::decode(word);
    let bad = |what| Corruption { what, value: word, position: pos };
    let to_end = ring.capacity - ring.data.index(pos);
    let framed = frame::framed_len_u32(len);
    if ty < RESERVED_TYPES {
        // A committed record: what a busy consumer finds, so tested first.
        let owner = (ty >> 16) as usize;
        if owner == 0 || owner > MPSC_PRODUCERS {
            return Err(bad("committed frame names no producer"));
        }
        if u64::from(len) > ring.max_record || framed > to_end {
            return Err(bad("record longer than the ring's maximum or straddling its end"));
        }
        return Ok(Word::Committed { producer: owner - 1, record_type: ty & MAX_RECORD_TYPE, len });
    }
    let producer = (ty & 0xFF) as usize;
    if ty == PADDING {
        return if framed == to_end {
            Ok(Word::Padding)
        } else {
            Err(bad("padding frame does not end at the ring's end"))
        };
    }
    let kind = ty & !0xFF;
    if producer >= MPSC_PRODUCERS {
        return Err(bad("producer id out of range in a frame"));
    }
    if framed > to_end {
        return Err(bad("frame straddles the end of the ring"));
    }
    match kind {
        IN_FLIGHT if u64::from(len) <= ring.max_record => Ok(Word::InFlight { producer, len }),
        SKIP | UNBLOCKED => Ok(Word::Pass { producer, framed, unblocked: kind == UNBLOCKED }),
        _ => Err(bad("reserved frame type")),
    }
}

/// Checks a claim cursor read from the segment against the consumer's `head`.
pub(crate) fn check_claim_cursor(tail: u64, head: u64, capacity: u64) -> Result<(), Corruption> {
    if tail > CURSOR_LIMIT || tail < head || tail - head > capacity || tail % 8 != 0 {
        return Err(Corruption { what: "claim cursor outside the ring", value: tail, position: head });
    }
    Ok(())
}

#[inline]
pub(crate) fn area(ring: &RingRefs) -> &MpscArea {
    ring.mpsc_area().expect("every mpsc ring has its area")
}

/// Who holds up the consumer at a position, as far as the segment and the kernel say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum HeadClaim {
    /// Nothing: the next frame is committed, or the ring is empty.
    Clear,
    /// A claim whose owner (or a producer that may be its owner) is alive: wait for it.
    WaitingFor {
        /// The producer id.
        producer: usize,
    },
    /// A claim whose owner is dead: the consumer will turn `[start, end)` into padding.
    Dead {
        /// The producer id it is counted for.
        producer: usize,
        /// End of the hole.
        end: u64,
    },
    /// A claim no producer's intent names (cannot happen in a sound segment): wait.
    Unknown,
}

/// Finds who owns the uncommitted claim at `pos` (below the claim cursor `tail`, which
/// the caller loaded with Acquire) and whether it may be reclaimed. Reads only; shared by
/// the consumer and [`crate::Segment::mpsc_status`].
pub(crate) fn head_claim(ring: &RingRefs, pos: u64, tail: u64, alive: &dyn Fn(usize) -> bool) -> HeadClaim {
    let area = area(ring);
    let contains = |s: u64, e: u64| s <= pos && pos < e && e <= tail && e - s <= ring.capacity;
    // Relaxed: ordered after the caller's Acquire load of the claim cursor, which pairs with
    // the Release half of each producer's compare-and-swap that followed its intent store.
    let load = |a: &crate::sync::AtomicU64| a.load(Ordering::Relaxed);
    let orphan_of = |k: usize| {
        let slot = &area.producers[k].0;
        let (s, e) = (load(&slot.orphan_start), load(&slot.orphan_end));
        contains(s, e).then_some(e)
    };
    // Acquire: pairs with the Release stores of the header word (commit, padding, markers).
    let word = ring.data.atomic_word(ring.data.index(pos)).load(Ordering::Acquire);
    match decode_word(ring, pos, word) {
        Ok(Word::InFlight { producer, len }) => {
            let end = pos + frame::framed_len_u32(len);
            if end > tail {
                return HeadClaim::Unknown;
            }
            if orphan_of(producer).is_some() || !alive(producer) {
                HeadClaim::Dead { producer, end }
            } else {
                HeadClaim::WaitingFor { producer }
            }
        }
        Ok(Word::Unwritten) => {
            let mut candidates = [None; MPSC_PRODUCERS];
            for (k, candidate) in candidates.iter_mut().enumerate() {
                let slot = &area.producers[k].0;
                let (s, e) = (load(&slot.intent_start), load(&slot.intent_end));
                // An orphan first: a live successor claims nothing below its orphan's end,
                // so an intent that contains `pos` as well is still its dead predecessor's.
                if let Some(e) = orphan_of(k) {
                    *candidate = Some(e);
                } else if contains(s, e) {
                    if alive(k) {
                        return HeadClaim::WaitingFor { producer: k };
                    }
                    *candidate = Some(e);
                }
            }
            let starts_a_claim =
                |e: u64| area.producers.iter().any(|p| load(&p.0.intent_start) == e || load(&p.0.orphan_start) == e);
            let boundary = |e: u64| {
                e == tail
                    // Relaxed: any non-zero value means a frame was started there this lap.
                    || ring.data.atomic_word(ring.data.index(e)).load(Ordering::Relaxed) != 0
                    || starts_a_claim(e)
            };
            candidates
                .iter()
                .enumerate()
                .filter_map(|(k, e)| e.map(|e| (e, k)))
                .filter(|&(e, _)| boundary(e))
                .min()
                .map_or(HeadClaim::Unknown, |(end, producer)| HeadClaim::Dead { producer, end })
        }
        _ => HeadClaim::Clear,
    }
}

/// Per-producer tallies the consumer keeps exactly (see "Exact counters").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) consumed: u64,
    pub(crate) unblocked: u64,
}

/// The exact release figures (records, bytes, per-producer tallies) of whoever advances
/// the read cursor: the mpsc consumer, or the mpmc release-token holder.
#[derive(Debug, Clone)]
pub(crate) struct ReleaseLedger {
    /// The release slot (and ledger) the next release writes.
    pub(crate) flip: usize,
    pub(crate) records: u64,
    pub(crate) bytes: u64,
    pub(crate) tallies: [Tally; MPSC_PRODUCERS],
    /// Producer ids below this may have non-zero tallies (only those are written).
    pub(crate) tally_ids: usize,
}

impl ReleaseLedger {
    /// The figures as of the read cursor `head` (loaded with Acquire by the caller): from
    /// the release slot whose position equals it, however its writer died; `false` when no
    /// slot matches (a corrupt segment): the figures then restart from zero. Every reader
    /// that resumes at a read cursor starts here, the spsc consumer too (a ring without
    /// an mpsc area has no per-producer tallies: they stay zero).
    pub(crate) fn load(ring: &RingRefs, head: u64) -> (Self, bool) {
        let cursor = ring.cursor();
        let mut ledger =
            ReleaseLedger { flip: 0, records: 0, bytes: 0, tallies: [Tally::default(); MPSC_PRODUCERS], tally_ids: 0 };
        // Relaxed: ordered after the caller's Acquire load of read_cursor, stored before it.
        let exact = match super::spsc::current_slot(head, |i| cursor.releases[i].position.load(Ordering::Relaxed)) {
            super::spsc::CurrentSlot::Empty => true,
            super::spsc::CurrentSlot::Slot(i) => {
                let slot = &cursor.releases[i];
                ledger.records = slot.records.load(Ordering::Relaxed);
                ledger.bytes = slot.bytes.load(Ordering::Relaxed);
                let stored_tallies = ring.mpsc_area().map_or(&[][..], |area| &area.ledgers[i].producers[..]);
                for (t, stored) in ledger.tallies.iter_mut().zip(stored_tallies) {
                    t.consumed = stored.consumed.load(Ordering::Relaxed);
                    t.unblocked = stored.unblocked.load(Ordering::Relaxed);
                }
                ledger.flip = i ^ 1;
                true
            }
            super::spsc::CurrentSlot::Unknown => false,
        };
        ledger.tally_ids = ledger.tallies.iter().rposition(|t| *t != Tally::default()).map_or(0, |k| k + 1);
        (ledger, exact)
    }

    /// Counts a released record of producer `k`.
    #[inline]
    pub(crate) fn count_record(&mut self, k: usize, len: u32) {
        self.records += 1;
        self.bytes += u64::from(len);
        self.tallies[k].consumed += 1;
        self.tally_ids = self.tally_ids.max(k + 1);
    }

    /// Counts a passed hole of producer `k`.
    pub(crate) fn count_hole(&mut self, k: usize) {
        self.tallies[k].unblocked += 1;
        self.tally_ids = self.tally_ids.max(k + 1);
    }

    /// Writes the figures into the release slot and ledger of `flip`, then stores the read
    /// cursor `pos` with Release, and flips. The bytes below `pos` must be zeroed and done with.
    pub(crate) fn publish(&mut self, ring: &RingRefs, pos: u64) {
        self.write_pending(ring, pos);
        self.store_cursor(ring, pos);
    }

    /// Writes the figures, with `pos` as its position, into the release slot and ledger of
    /// `flip`: a successor that finds this slot past the read cursor knows the release to
    /// finish (mpmc's token holder).
    pub(crate) fn write_pending(&self, ring: &RingRefs, pos: u64) {
        let cursor = ring.cursor();
        let slot = &cursor.releases[self.flip];
        let ledger = &area(ring).ledgers[self.flip];
        // Relaxed: published by the Release store of read_cursor just below; a successor
        // uses this slot and ledger only if it sees that store.
        slot.records.store(self.records, Ordering::Relaxed);
        slot.bytes.store(self.bytes, Ordering::Relaxed);
        for (stored, t) in ledger.producers.iter().zip(&self.tallies).take(self.tally_ids) {
            stored.consumed.store(t.consumed, Ordering::Relaxed);
            stored.unblocked.store(t.unblocked, Ordering::Relaxed);
        }
        slot.position.store(pos, Ordering::Relaxed);
    }

    /// Stores the read cursor `pos` after [`write_pending`](Self::write_pending), and flips.
    pub(crate) fn store_cursor(&mut self, ring: &RingRefs, pos: u64) {
        // Release: pairs with the producers' Acquire load of read_cursor; the releaser is done
        // with (and has zeroed) every byte below `pos`.
        ring.cursor().read_cursor.store(pos, Ordering::Release);
        self.flip ^= 1;
    }

    /// Copies the per-producer tallies to where `shmctl stat` reads them (after the cursor).
    pub(crate) fn store_displayed(&self, ring: &RingRefs) {
        for (slot, t) in area(ring).producers.iter().zip(&self.tallies).take(self.tally_ids) {
            // Relaxed: display copies.
            slot.0.consumed.store(t.consumed, Ordering::Relaxed);
            slot.0.unblocked.store(t.unblocked, Ordering::Relaxed);
        }
    }
}

/// How long a reader has been stuck on one claim: rate-limits the liveness check
/// ([`HOLE_CHECK_AFTER`], one clock read per [`PENDING_LOOKS_PER_CLOCK`] looks).
#[derive(Debug)]
pub(crate) struct Stuck {
    at: u64,
    since: Option<Instant>,
    looks: u32,
}

impl Stuck {
    pub(crate) const fn new() -> Self {
        Stuck { at: u64::MAX, since: None, looks: 0 }
    }

    /// Whether the reader has been stuck at `pos` for `HOLE_CHECK_AFTER`. Loom models
    /// have no clock (and must be deterministic), so there every look checks.
    pub(crate) fn check_due(&mut self, pos: u64) -> bool {
        if self.at != pos {
            *self = Stuck { at: pos, since: None, looks: 0 };
        }
        self.looks = self.looks.wrapping_add(1);
        if cfg!(loom) {
            return true;
        }
        if self.looks % PENDING_LOOKS_PER_CLOCK != 1 {
            return false;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        since.elapsed() >= HOLE_CHECK_AFTER
    }

    /// Look again at once on the next check (after a sleep).
    pub(crate) fn look_again(&mut self) {
        self.looks = 0;
    }
}

/// Writes `UNBLOCKED | producer` over the dead claim `[pos, end)`, split at the ring's end
/// (the part after the end as `SKIP`, so the hole counts once). The caller is the only one
/// who may write there (the mpsc consumer, or the mpmc release-token holder at the take cursor).
pub(crate) fn write_hole(ring: &RingRefs, pos: u64, producer: usize, end: u64) -> Result<(), Corruption> {
    let data = &ring.data;
    let index = data.index(pos);
    let lap_end = pos + (ring.capacity - index);
    let max_piece = frame::framed_len(ring.max_record).unwrap_or(u64::MAX);
    let first_end = end.min(lap_end);
    let pieces = [(pos, first_end, UNBLOCKED), (lap_end, end, SKIP)];
    for (start, stop, kind) in pieces {
        if stop <= start {
            continue;
        }
        if stop - start > max_piece + FRAME_HEADER {
            return Err(Corruption { what: "hole longer than any claim", value: stop - start, position: start });
        }
        // Release: pairs with the readers' Acquire loads: the marker is the hole's commit word.
        data.atomic_word(data.index(start))
            .store(frame::encode((stop - start - FRAME_HEADER) as u32, kind | producer as u32), Ordering::Release);
    }
    Ok(())
}

/// Zeroes the header word of the frame at `index` before its payload, which the caller
/// zeroes next: then a [`peek`] that copied a payload byte already zeroed sees the
/// header word changed when it looks again after its Acquire fence (see "Peek").
fn zero_record(ring: &RingRefs, index: u64) {
    // Relaxed, then the Release fence: a peek's payload read that sees a later zero
    // synchronises with this fence, so its next load of the word sees this zero.
    ring.data.atomic_word(index).store(0, Ordering::Relaxed);
    fence(Ordering::Release);
}

/// Copies up to `max` committed records from the consumer's read cursor, in claim order,
/// without writing anything (see "Peek"). `alive` says whether a producer id holds its
/// kernel lock, for naming whom a stop waits for.
pub(crate) fn peek(ring: &RingRefs, max: usize, alive: &dyn Fn(usize) -> bool) -> Result<PeekView, Corruption> {
    for _ in 0..PEEK_ATTEMPTS {
        if let Some(view) = peek_once(ring, max, alive)? {
            return Ok(view);
        }
    }
    Ok(PeekView::default())
}

/// One pass of [`peek`]; `None` when the consumer overtook it before it copied a record.
fn peek_once(ring: &RingRefs, max: usize, alive: &dyn Fn(usize) -> bool) -> Result<Option<PeekView>, Corruption> {
    let cursor = &ring.cursor().read_cursor;
    // Acquire: pairs with the consumer's Release store of read_cursor (its zeroing of
    // everything below is done before it).
    let head = cursor.load(Ordering::Acquire);
    // Acquire: pairs with the producers' compare-and-swaps (their intents, for `head_claim`).
    let tail = ring.producer_line().write_cursor.load(Ordering::Acquire);
    if head > CURSOR_LIMIT || head % 8 != 0 {
        return Err(Corruption { what: "read cursor outside the ring", value: head, position: head });
    }
    if let Err(corrupt) = check_claim_cursor(tail, head, ring.capacity) {
        // A busy ring may have moved on by more than a ring between the two loads.
        // Relaxed: only whether the value changed matters.
        return if cursor.load(Ordering::Relaxed) != head { Ok(None) } else { Err(corrupt) };
    }
    // Each step moves `pos` forward by at least 8 bytes and never past `tail`, at most a
    // ring above `head`: at most capacity / 8 steps, whatever the words say.
    let mut view = PeekView::default();
    let mut pos = head;
    while pos < tail && view.records.len() < max {
        let index = ring.data.index(pos);
        let to_end = ring.capacity - index;
        // Acquire: pairs with the Release store of the word (commit, padding, markers), so
        // a committed record's payload is visible.
        let word = ring.data.atomic_word(index).load(Ordering::Acquire);
        let decoded = decode_word(ring, pos, word);
        let data = match decoded {
            Ok(Word::Committed { len, .. }) => ring.data.copy_words(index + FRAME_HEADER, len as usize),
            _ => Vec::new(),
        };
        // Acquire fence, then Relaxed loads: a copied byte that the consumer zeroed (or a
        // producer rewrote after the consumer released it) shows as a changed header word
        // (`zero_record`) or a read cursor past `pos` (the producer claims only released
        // space). Either way the pass is stale.
        fence(Ordering::Acquire);
        if cursor.load(Ordering::Relaxed) > pos || ring.data.atomic_word(index).load(Ordering::Relaxed) != word {
            let copied = !view.records.is_empty();
            return Ok(copied.then_some(view));
        }
        let (framed, skipped) = match decoded? {
            Word::Committed { producer, record_type, len } => {
                view.records.push(PeekedRecord {
                    position: pos,
                    record_type,
                    data,
                    producer: Some(producer),
                    seq: None,
                    state: PeekedState::Waiting,
                });
                (frame::framed_len_u32(len), None)
            }
            Word::Padding => (to_end, Some(("padding", None))),
            Word::Pass { producer, framed, unblocked } => {
                (framed, Some((if unblocked { "unblocked" } else { "abandoned" }, Some(producer))))
            }
            Word::Unwritten | Word::InFlight { .. } => {
                view.stopped_at = Some(PeekStop { position: pos, waiting_for: head_claim(ring, pos, tail, alive) });
                break;
            }
        };
        let next = pos + framed;
        if next > tail {
            return Err(Corruption { what: "frame extends past the claim cursor", value: word, position: pos });
        }
        if let Some((what, producer)) = skipped {
            if view.skipped.len() < max {
                view.skipped.push(SkippedFrame { position: pos, bytes: framed, what, producer });
            }
        }
        pos = next;
    }
    Ok(Some(view))
}

/// A producer of an mpsc ring. Several may write one ring, each with its own id, in as
/// many processes or threads; `Send`, not `Sync`.
pub struct Producer {
    ring: RingRefs,
    id: usize,
    /// Its slot in the mpsc area, found once at attach (every claim and commit writes it).
    slot: NonNull<MpscProducerSlot>,
    strategy: WaitStrategy,
    /// Last `read_cursor` seen.
    cached_head: u64,
    /// The consumer must pass this position (a dead predecessor's claims) before this
    /// producer claims anything.
    orphan_end: u64,
    records: u64,
    bytes: u64,
    blocks: u64,
    sleeps: u64,
    _attachment: Option<crate::participant::Attachment>,
}

// SAFETY: as for `spsc::Producer`: local state plus shared memory kept alive by
// `ring._keep` and accessed through atomics and protocol-owned byte ranges.
unsafe impl Send for Producer {}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mpsc::Producer").field("id", &self.id).field("records", &self.records).finish_non_exhaustive()
    }
}

impl Producer {
    /// Attaches as producer `id`, whose participant lock the caller holds. Adopts a dead
    /// predecessor's pending claim as an orphan ("Holes" in the module docs).
    pub(crate) fn attach(
        ring: RingRefs,
        id: usize,
        strategy: WaitStrategy,
        attachment: Option<crate::participant::Attachment>,
    ) -> Result<Self, Corruption> {
        if id >= MPSC_PRODUCERS {
            return Err(Corruption { what: "producer id out of range", value: id as u64, position: 0 });
        }
        // Acquire: pairs with the consumer's Release store of read_cursor.
        let head = ring.cursor().read_cursor.load(Ordering::Acquire);
        // Acquire: pairs with the producers' compare-and-swaps (their intents).
        let tail = ring.producer_line().write_cursor.load(Ordering::Acquire);
        check_claim_cursor(tail, head, ring.capacity)?;
        let slot = &area(&ring).producers[id].0;
        // Relaxed: written by our predecessor, which is dead (we hold its lock).
        let load = |a: &crate::sync::AtomicU64| a.load(Ordering::Relaxed);
        let pending = |s: u64, e: u64| s < e && e > head && e <= tail && e - s <= ring.capacity;
        let (orphan_start, orphan_end) = (load(&slot.orphan_start), load(&slot.orphan_end));
        let (intent_start, intent_end) = (load(&slot.intent_start), load(&slot.intent_end));
        let orphan_end = if pending(orphan_start, orphan_end) {
            orphan_end
        } else if pending(intent_start, intent_end) {
            // Relaxed: the consumer reads these after it found our lock held; until it sees
            // them it waits for us, which is safe (we claim nothing before it passes them).
            slot.orphan_start.store(intent_start, Ordering::Relaxed);
            slot.orphan_end.store(intent_end, Ordering::Relaxed);
            intent_end
        } else {
            0
        };
        Ok(Producer {
            id,
            slot: NonNull::from(slot),
            strategy,
            cached_head: head,
            orphan_end,
            records: load(&slot.records),
            bytes: load(&slot.bytes),
            blocks: load(&slot.blocks),
            sleeps: load(&slot.sleeps),
            ring,
            _attachment: attachment,
        })
    }

    #[inline]
    fn slot(&self) -> &MpscProducerSlot {
        // SAFETY: `slot` points at this producer's slot in the mpsc area of `ring` (set in
        // `attach`), kept mapped by `ring._keep`; shared memory is accessed only through atomics.
        unsafe { self.slot.as_ref() }
    }

    /// This producer's id.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Capacity of the ring's data region in bytes.
    pub fn capacity(&self) -> u64 {
        self.ring.capacity
    }

    /// Largest payload this ring accepts.
    pub fn max_record(&self) -> u64 {
        self.ring.max_record
    }

    /// Records this producer id committed (including its predecessors').
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Changes the wait strategy of the blocking calls.
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.strategy = strategy;
    }

    /// Claims space for a record of `len` payload bytes, without waiting. Write it through
    /// the [`Claim`] and commit it; a dropped claim becomes a skipped frame.
    #[inline]
    pub fn try_claim(&mut self, len: usize) -> Result<Claim<'_>, TryClaimError> {
        match self.claim_once(len)? {
            Some(claim) => Ok(self.claim_at(claim)),
            None => {
                self.count_block();
                Err(TryClaimError::Full)
            }
        }
    }

    /// Claims space for `len` payload bytes, waiting up to `timeout` (forever when `None`).
    pub fn claim(&mut self, len: usize, timeout: Option<Duration>) -> Result<Claim<'_>, ClaimError> {
        if let Some(claim) = self.claim_once(len).map_err(claim_error)? {
            return Ok(self.claim_at(claim));
        }
        self.count_block();
        let mut waiting = Waiting::new(self.strategy, timeout);
        loop {
            waiting.turn(
                self.strategy,
                |d| {
                    self.sleep_for_space(d);
                    Ok(())
                },
                ClaimError::TimedOut,
            )?;
            if let Some(claim) = self.claim_once(len).map_err(claim_error)? {
                return Ok(self.claim_at(claim));
            }
        }
    }

    /// Copies `data` in as one record of type 0, without waiting.
    #[inline]
    pub fn try_publish(&mut self, data: &[u8]) -> Result<(), TryClaimError> {
        // `try_claim`, copy, `commit`, without a `Claim` handed around in between.
        let Some(r) = self.claim_once(data.len())? else {
            self.count_block();
            return Err(TryClaimError::Full);
        };
        self.mark_claimed(&r);
        let index = self.ring.data.index(r.start) + FRAME_HEADER;
        // SAFETY: as in `Claim::deref_mut`: the claim owns `index .. index + len` (`len`
        // is `data.len()`), inside the region; no other process touches it until the commit.
        unsafe { self.ring.data.slice_mut(index, data.len()) }.copy_from_slice(data);
        self.finish(r.start, r.len, 0, r.len, true);
        Ok(())
    }

    /// Copies `data` in as one record of type 0, waiting up to `timeout` for space.
    pub fn publish(&mut self, data: &[u8], timeout: Option<Duration>) -> Result<(), ClaimError> {
        let mut claim = self.claim(data.len(), timeout)?;
        claim.copy_from_slice(data);
        claim.commit();
        Ok(())
    }

    /// One attempt at steps 1-2 of "Claim": `Ok(None)` when the ring is full (or a dead
    /// predecessor's claim is still ahead of the consumer); retries lost races itself.
    #[inline]
    fn claim_once(&mut self, len: usize) -> Result<Option<Reserved>, TryClaimError> {
        let len64 = len as u64;
        if len64 > self.ring.max_record {
            return Err(TryClaimError::TooLarge { len, max: self.ring.max_record });
        }
        let framed = frame::framed_len_u32(len as u32);
        let line = self.ring.producer_line();
        let capacity = self.ring.capacity;
        // Relaxed: the compare-and-swap below checks the value; space is checked against
        // the read cursor, loaded with Acquire.
        let mut tail = line.write_cursor.load(Ordering::Relaxed);
        loop {
            if tail > CURSOR_LIMIT || tail % 8 != 0 {
                return Err(Corruption { what: "claim cursor outside the ring", value: tail, position: 0 }.into());
            }
            let to_end = capacity - self.ring.data.index(tail);
            let total = if framed <= to_end { framed } else { to_end + framed };
            if tail + total > self.cached_head + capacity || self.orphan_end > self.cached_head {
                // Acquire: pairs with the consumer's Release store of read_cursor; it is done
                // with (and has zeroed) every byte below `head` before we write there.
                let head = self.ring.cursor().read_cursor.load(Ordering::Acquire);
                if head > tail && head >= self.cached_head {
                    // Our `tail` may be stale: others claimed, and the consumer read, past it.
                    // Acquire: pairs with the other producers' compare-and-swaps.
                    let now = line.write_cursor.load(Ordering::Acquire);
                    if head <= now {
                        self.cached_head = head;
                        tail = now;
                        continue;
                    }
                }
                if head < self.cached_head || head > tail || tail - head > capacity {
                    return Err(Corruption {
                        what: "read cursor outside the claimed range",
                        value: head,
                        position: tail,
                    }
                    .into());
                }
                self.cached_head = head;
                if tail + total > head + capacity || self.orphan_end > head {
                    return Ok(None);
                }
            }
            let slot = self.slot();
            // Relaxed: published by the Release half of the compare-and-swap below.
            slot.intent_start.store(tail, Ordering::Relaxed);
            slot.intent_end.store(tail + total, Ordering::Relaxed);
            // AcqRel: Release publishes the intent (pairs with the consumer's Acquire load of
            // the claim cursor in a hole check); Acquire orders us after the claims before ours.
            match line.write_cursor.compare_exchange_weak(tail, tail + total, CLAIM_ORDERING, Ordering::Relaxed) {
                Ok(_) => {
                    let start = if framed <= to_end { tail } else { tail + to_end };
                    let padding = (framed > to_end).then_some(tail);
                    return Ok(Some(Reserved { start, len: len as u32, padding }));
                }
                Err(now) => tail = now,
            }
        }
    }

    /// Step 3 of "Claim", lending the frame out.
    #[inline]
    fn claim_at(&mut self, r: Reserved) -> Claim<'_> {
        self.mark_claimed(&r);
        Claim { producer: self, start: r.start, len: r.len, record_type: 0, done: false }
    }

    /// Step 3 of "Claim": marks the frame in flight and writes any wrap padding.
    #[inline]
    fn mark_claimed(&self, r: &Reserved) {
        let data = &self.ring.data;
        let index = data.index(r.start);
        // Relaxed: only names the owner for a hole check; the commit store publishes data.
        data.atomic_word(index).store(frame::encode(r.len, in_flight(self.id)), Ordering::Relaxed);
        if let Some(pad) = r.padding {
            let pad_index = data.index(pad);
            let to_end = self.ring.capacity - pad_index;
            // Release: pairs with the consumer's Acquire load of the header word.
            data.atomic_word(pad_index)
                .store(frame::encode((to_end - FRAME_HEADER) as u32, PADDING), Ordering::Release);
        }
        data.track(index + FRAME_HEADER, u64::from(r.len), true);
    }

    fn count_block(&mut self) {
        self.blocks += 1;
        // Relaxed: a display counter with one writer.
        self.slot().blocks.store(self.blocks, Ordering::Relaxed);
    }

    /// Sleeps until the consumer frees space (its cursor moves) or `timeout` passes.
    fn sleep_for_space(&mut self, timeout: Duration) {
        let (ring, head) = (&self.ring, self.cached_head);
        // Relaxed is enough to decide whether to sleep; `claim_once` reloads with Acquire.
        // Acquire: pairs with the consumer's Release store of read_cursor.
        let slept =
            sleep_unless_moved(ring.space_wake(), timeout, head, || ring.cursor().read_cursor.load(Ordering::Acquire));
        if slept != super::wait::Slept::No {
            self.sleeps += 1;
            // Relaxed: a display counter with one writer.
            self.slot().sleeps.store(self.sleeps, Ordering::Relaxed);
        }
    }

    /// Finishes a claim: the commit store, the display counters, the wake-up check.
    #[inline]
    fn finish(&mut self, start: u64, len: u32, record_type: u32, claimed: u32, commit: bool) {
        let data = &self.ring.data;
        let index = data.index(start);
        let word = if commit {
            frame::encode(len, committed(self.id, record_type))
        } else {
            frame::encode(claimed, SKIP | self.id as u32)
        };
        // Release: pairs with the consumer's Acquire load of this word; the payload written
        // through the claim is visible to a consumer that sees the commit.
        data.atomic_word(index).store(word, COMMIT_ORDERING);
        if commit {
            self.records += 1;
            self.bytes += u64::from(len);
            let slot = self.slot();
            // Relaxed: display counters with one writer (the consumer's ledger is exact).
            slot.records.store(self.records, Ordering::Relaxed);
            slot.bytes.store(self.bytes, Ordering::Relaxed);
        }
        wake_sleeper(self.ring.data_wake());
    }
}

/// A claimed range (steps 1-2 of "Claim" done).
struct Reserved {
    start: u64,
    len: u32,
    padding: Option<u64>,
}

/// Space claimed in an mpsc ring for one record. Write the payload through `DerefMut`,
/// then [`commit`](Claim::commit). Dropping it uncommitted turns it into a skipped frame
/// (the consumer passes it, counted nowhere).
#[must_use = "a claim is abandoned unless committed"]
pub struct Claim<'a> {
    producer: &'a mut Producer,
    start: u64,
    len: u32,
    record_type: u32,
    done: bool,
}

impl std::fmt::Debug for Claim<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mpsc::Claim").field("position", &self.start).field("len", &self.len).finish()
    }
}

impl Claim<'_> {
    /// Sets the record type (at most [`MAX_RECORD_TYPE`] in an mpsc ring; default 0).
    ///
    /// # Panics
    /// If `record_type` is larger: that is a bug in the caller.
    pub fn set_record_type(&mut self, record_type: u32) {
        assert!(record_type <= MAX_RECORD_TYPE, "mpsc record types are 16 bits");
        self.record_type = record_type;
    }

    /// The ring position of this record.
    pub fn position(&self) -> u64 {
        self.start
    }

    /// Commits the whole claimed length.
    #[inline]
    pub fn commit(self) {
        let len = self.len as usize;
        self.commit_len(len);
    }

    /// Commits only the first `len` bytes; the rest of the claim stays in the frame as
    /// slack the consumer never sees.
    ///
    /// # Panics
    /// If `len` is larger than the claim.
    #[inline]
    pub fn commit_len(mut self, len: usize) {
        assert!(len <= self.len as usize, "commit_len({len}) exceeds the claim of {} bytes", self.len);
        self.done = true;
        // A shorter record keeps the claim's framed extent: the consumer steps by the
        // committed length, so the slack becomes a skip frame of its own.
        let (start, claimed, record_type) = (self.start, self.len, self.record_type);
        let (framed_claim, framed_len) = (frame::framed_len_u32(claimed), frame::framed_len_u32(len as u32));
        if framed_len < framed_claim {
            let slack = start + framed_len;
            let index = self.producer.ring.data.index(slack);
            let slack_len = (framed_claim - framed_len - FRAME_HEADER) as u32;
            // Release: pairs with the consumer's Acquire load; written before the record's
            // commit so the consumer finds it as soon as it passes the record.
            self.producer
                .ring
                .data
                .atomic_word(index)
                .store(frame::encode(slack_len, SKIP | self.producer.id as u32), Ordering::Release);
        }
        self.producer.finish(start, len as u32, record_type, claimed, true);
    }
}

impl Drop for Claim<'_> {
    #[inline]
    fn drop(&mut self) {
        if !self.done {
            let (start, len) = (self.start, self.len);
            self.producer.finish(start, len, 0, len, false);
        }
    }
}

impl Deref for Claim<'_> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        let ring = &self.producer.ring;
        // SAFETY: the claim owns `index + 8 .. index + 8 + len`, inside the region (a
        // frame never straddles the end); no other process touches it until the commit.
        unsafe { ring.data.slice(ring.data.index(self.start) + FRAME_HEADER, self.len as usize) }
    }
}

impl DerefMut for Claim<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        let ring = &self.producer.ring;
        // SAFETY: as in `deref`, and `&mut self` makes this the only live view.
        unsafe { ring.data.slice_mut(ring.data.index(self.start) + FRAME_HEADER, self.len as usize) }
    }
}

/// One committed record of an mpsc ring, borrowed in place.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The payload.
    pub data: &'a [u8],
    /// The application record type.
    pub record_type: u32,
    /// The producer id that committed it.
    pub producer: usize,
    /// The ring position of its frame.
    pub position: u64,
}

/// A committed frame found by the consumer.
#[derive(Debug, Clone, Copy)]
struct DataFrame {
    index: u64,
    len: u32,
    record_type: u32,
    producer: usize,
    position: u64,
    next: u64,
}

/// What the consumer found at its position.
enum Next {
    Frame(DataFrame),
    /// Nothing committed there: the ring is empty or a claim is in progress.
    Nothing,
}

/// The consumer of an mpsc ring. One per ring at a time, `Send` but not `Sync`.
pub struct Consumer {
    ring: RingRefs,
    strategy: WaitStrategy,
    pos: u64,
    released: u64,
    read_to: u64,
    cached_tail: u64,
    counters: LocalCounters,
    /// The exact release figures, per producer.
    ledger: ReleaseLedger,
    alive: ProducerLiveness,
    /// Where the consumer is stuck on a claim, and since when.
    stuck: Stuck,
    /// Every byte below this position is zeroed (see "Durable batches").
    zeroed_to: u64,
    /// A durable batch is in progress: nothing is zeroed or released until it ends.
    holding: bool,
    _attachment: Option<crate::participant::Attachment>,
}

// SAFETY: as for `Producer`; the liveness probe is `Send`.
unsafe impl Send for Consumer {}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mpsc::Consumer").field("position", &self.pos).finish_non_exhaustive()
    }
}

impl Consumer {
    /// Resumes from the read cursor and its ledger. Fails if the cursors are inconsistent.
    pub(crate) fn attach(
        ring: RingRefs,
        strategy: WaitStrategy,
        alive: ProducerLiveness,
        attachment: Option<crate::participant::Attachment>,
    ) -> Result<Self, Corruption> {
        // Acquire: pairs with the Release stores of the read cursor and the claims.
        let head = ring.cursor().read_cursor.load(Ordering::Acquire);
        let tail = ring.producer_line().write_cursor.load(Ordering::Acquire);
        check_claim_cursor(tail, head, ring.capacity)?;
        if head % 8 != 0 {
            return Err(Corruption { what: "read cursor not 8-byte aligned", value: head, position: head });
        }
        let mut counters = LocalCounters::load(&ring, &Counter::CONSUMER_SIDE);
        let (mut ledger, exact) = ReleaseLedger::load(&ring, head);
        if exact {
            counters.set_exact(&[(Counter::TotalConsumed, ledger.records), (Counter::BytesConsumed, ledger.bytes)]);
        } else {
            (ledger.records, ledger.bytes) =
                (counters.get(Counter::TotalConsumed), counters.get(Counter::BytesConsumed));
        }
        let mut consumer = Consumer {
            strategy,
            pos: head,
            released: head,
            read_to: head,
            cached_tail: tail,
            counters,
            ledger,
            alive,
            stuck: Stuck::new(),
            zeroed_to: head,
            holding: false,
            ring,
            _attachment: attachment,
        };
        consumer.store_displayed();
        Ok(consumer)
    }

    /// The position of the next record to read.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Changes the wait strategy of the blocking calls.
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.strategy = strategy;
    }

    /// Holes of producer `id` passed so far (records whose producer died between claim
    /// and commit), exact across consumer restarts.
    pub fn unblocked(&self, id: usize) -> u64 {
        self.ledger.tallies.get(id).map_or(0, |t| t.unblocked)
    }

    /// Records of producer `id` read so far.
    pub fn consumed(&self, id: usize) -> u64 {
        self.ledger.tallies.get(id).map_or(0, |t| t.consumed)
    }

    /// Borrows the next committed record, without waiting. A claim in progress at the
    /// head is [`TryReadError::Empty`]; if its owner is dead the hole is reclaimed first.
    #[inline]
    pub fn try_read(&mut self) -> Result<ReadGuard<'_>, TryReadError> {
        match self.next_frame()? {
            Next::Frame(f) => Ok(ReadGuard { consumer: self, frame: f, keep: false }),
            Next::Nothing => {
                self.counters.bump(&self.ring, Counter::ConsumerBlocks);
                Err(TryReadError::Empty)
            }
        }
    }

    /// Borrows the next committed record, waiting up to `timeout` (forever when `None`).
    pub fn read(&mut self, timeout: Option<Duration>) -> Result<ReadGuard<'_>, ReadError> {
        let f = self.wait_frame(timeout)?;
        Ok(ReadGuard { consumer: self, frame: f, keep: false })
    }

    /// Waits up to `timeout` (forever when `None`) until a committed record is at the
    /// head, without taking it.
    pub fn wait_for_data(&mut self, timeout: Option<Duration>) -> Result<(), ReadError> {
        self.wait_frame(timeout).map(drop)
    }

    /// Hands every available record (at most `max`) to `sink` in order, then releases
    /// the accepted ones with one cursor store. A refused record and the ones after it
    /// stay in the ring. Returns how many were accepted.
    pub fn read_batch<E>(
        &mut self,
        max: usize,
        sink: impl FnMut(Record<'_>) -> Result<(), E>,
    ) -> Result<usize, super::BatchError<E>> {
        self.read_batch_durable(max, sink, |_| Ok(()))
    }

    /// Like [`read_batch`](Self::read_batch), but calls `before_release` with the
    /// position the read cursor is about to move to, after the sink accepted the records
    /// and before they are released ("Durable batches" in the module docs). If it fails
    /// (or the sink or the hook panics), nothing is released, nothing is zeroed, the
    /// per-producer tallies are put back, and the same records are delivered again.
    pub fn read_batch_durable<E>(
        &mut self,
        max: usize,
        mut sink: impl FnMut(Record<'_>) -> Result<(), E>,
        before_release: impl FnOnce(u64) -> Result<(), E>,
    ) -> Result<usize, super::BatchError<E>> {
        // Start from nothing held, so that a rewind goes back exactly here.
        self.release_read();
        let mut batch = Rewind::hold(self);
        let this = &mut *batch.consumer;
        let mut accepted = 0;
        let outcome = loop {
            if accepted == max {
                break Ok(());
            }
            let f = match this.next_frame() {
                Ok(Next::Frame(f)) => f,
                Ok(Next::Nothing) => break Ok(()),
                Err(c) => break Err(super::BatchError::Corrupt(c)),
            };
            // SAFETY: `next_frame` checked the payload lies inside the region; its producer
            // committed it and writes it no more, and nobody reuses or zeroes it until we
            // release it (the batch holds every release).
            let data = unsafe { this.ring.data.slice(f.index + FRAME_HEADER, f.len as usize) };
            let record = Record { data, record_type: f.record_type, producer: f.producer, position: f.position };
            if let Err(error) = sink(record) {
                break Err(super::BatchError::Sink { accepted, error });
            }
            this.pass_record(f);
            accepted += 1;
        };
        if accepted > 0 {
            let end = batch.consumer.pos;
            if let Err(error) = before_release(end) {
                return Err(super::BatchError::Sink { accepted: 0, error });
            }
        }
        // No sink saw a record, or the hook made them durable: keep what was passed.
        batch.keep().release_read();
        outcome.map(|()| accepted)
    }

    fn wait_frame(&mut self, timeout: Option<Duration>) -> Result<DataFrame, ReadError> {
        if let Next::Frame(f) = self.next_frame()? {
            return Ok(f);
        }
        self.counters.bump(&self.ring, Counter::ConsumerBlocks);
        let mut waiting = Waiting::new(self.strategy, timeout);
        loop {
            waiting.turn(
                self.strategy,
                |d| {
                    self.sleep_for_data(d);
                    Ok(())
                },
                ReadError::TimedOut,
            )?;
            if let Next::Frame(f) = self.next_frame()? {
                return Ok(f);
            }
        }
    }

    /// The committed frame at `pos`, passing padding, skipped and unblocked frames, and
    /// reclaiming a dead producer's hole. Each header word is read once, with Acquire.
    #[inline]
    fn next_frame(&mut self) -> Result<Next, Corruption> {
        loop {
            if self.pos == self.cached_tail && !self.refresh_tail()? {
                return Ok(Next::Nothing);
            }
            let index = self.ring.data.index(self.pos);
            // Acquire: pairs with the Release store of the word (commit, padding, markers).
            let word = self.ring.data.atomic_word(index).load(Ordering::Acquire);
            let next = |framed: u64| self.pos + framed;
            match decode_word(&self.ring, self.pos, word)? {
                Word::Committed { producer, record_type, len } => {
                    let end = next(frame::framed_len_u32(len));
                    if end > self.cached_tail {
                        return Err(Corruption {
                            what: "record extends past the claim cursor",
                            value: word,
                            position: self.pos,
                        });
                    }
                    return Ok(Next::Frame(DataFrame {
                        index,
                        len,
                        record_type,
                        producer,
                        position: self.pos,
                        next: end,
                    }));
                }
                Word::Padding => self.pass(self.ring.capacity - index, None),
                Word::Pass { producer, framed, unblocked } => {
                    if next(framed) > self.cached_tail {
                        return Err(Corruption {
                            what: "frame extends past the claim cursor",
                            value: word,
                            position: self.pos,
                        });
                    }
                    self.pass(framed, unblocked.then_some(producer));
                }
                Word::Unwritten | Word::InFlight { .. } => {
                    if !self.reclaim_if_dead()? {
                        // Waiting on a claim: give back what was read first, so producers
                        // are not kept short of space and the cursor shows where we wait.
                        self.release_read();
                        return Ok(Next::Nothing);
                    }
                }
            }
        }
    }

    /// Everything known is read: releases what was read, reloads the claim cursor.
    fn refresh_tail(&mut self) -> Result<bool, Corruption> {
        self.release_read();
        // Acquire: pairs with the producers' compare-and-swaps.
        let tail = self.ring.producer_line().write_cursor.load(Ordering::Acquire);
        if tail < self.cached_tail {
            return Err(Corruption { what: "claim cursor moved back", value: tail, position: self.pos });
        }
        check_claim_cursor(tail, self.pos, self.ring.capacity)?;
        self.cached_tail = tail;
        Ok(tail != self.pos)
    }

    /// Stuck on a claim at `pos`: once stuck for `HOLE_CHECK_AFTER`, asks whose it is and,
    /// if its owner is dead, turns it into padding. Whether it did.
    fn reclaim_if_dead(&mut self) -> Result<bool, Corruption> {
        if !self.stuck.check_due(self.pos) {
            return Ok(false);
        }
        // Acquire: pairs with the producers' compare-and-swaps, which published their intents.
        let tail = self.ring.producer_line().write_cursor.load(Ordering::Acquire);
        check_claim_cursor(tail, self.pos, self.ring.capacity)?;
        self.cached_tail = tail;
        let HeadClaim::Dead { producer, end } = head_claim(&self.ring, self.pos, tail, &*self.alive) else {
            return Ok(false);
        };
        // The owner is dead, so it writes nothing more; its last stores were made before its
        // lock went. SeqCst fence, then look again: it may have committed just before dying.
        fence(Ordering::SeqCst);
        let index = self.ring.data.index(self.pos);
        // Acquire: pairs with a commit's Release store.
        let word = self.ring.data.atomic_word(index).load(Ordering::Acquire);
        if !matches!(decode_word(&self.ring, self.pos, word)?, Word::Unwritten | Word::InFlight { .. }) {
            return Ok(true);
        }
        write_hole(&self.ring, self.pos, producer, end)?;
        Ok(true)
    }

    /// Passes a frame that is not a record: zeroes it, counts a hole.
    fn pass(&mut self, framed: u64, unblocked_for: Option<usize>) {
        if !self.holding {
            let index = self.ring.data.index(self.pos);
            // SAFETY: the frame lies inside the region (checked by `decode_word`) below the
            // claim cursor; its writer is done with it and nobody reuses it before we release it.
            unsafe { self.ring.data.zero(index, framed) };
            self.zeroed_to = self.pos + framed;
        }
        self.pos += framed;
        if let Some(k) = unblocked_for {
            self.ledger.count_hole(k);
        }
    }

    /// A record was read: zero it, count it, maybe release ("Lazy release" in spsc).
    #[inline]
    fn pass_record(&mut self, f: DataFrame) {
        if !self.holding {
            zero_record(&self.ring, f.index);
            // SAFETY: as in `pass`; the record's borrow has ended. Its header word is zero
            // already (`zero_record`), the order a racing peek relies on.
            unsafe { self.ring.data.zero(f.index + FRAME_HEADER, f.next - f.position - FRAME_HEADER) };
            self.zeroed_to = f.next;
        }
        self.pos = f.next;
        self.read_to = f.next;
        // The consumed counters are the ledger's figures, copied at each release.
        self.ledger.count_record(f.producer, f.len);
        let quarter = self.ring.capacity / 4;
        if f.next == self.cached_tail || f.next - self.released >= quarter {
            self.release_read();
        }
    }

    /// Gives the space of everything passed so far back to the producers.
    pub fn release_read(&mut self) {
        let pos = self.pos.max(self.read_to);
        if self.holding || pos == self.released {
            return;
        }
        self.zero_deferred(pos);
        self.ledger.publish(&self.ring, pos);
        self.released = pos;
        self.read_to = pos;
        self.store_displayed();
        if wake_sleeper(self.ring.space_wake()) {
            self.counters.bump(&self.ring, Counter::ConsumerWakes);
        }
    }

    /// Zeroes what a durable batch passed without zeroing, `[zeroed_to, pos)`, split at
    /// the ring's end.
    fn zero_deferred(&mut self, pos: u64) {
        if self.zeroed_to >= pos {
            return;
        }
        // Header words first, frame by frame (each was validated when it was read: a word
        // that no longer decodes ends the walk, and the plain zeroing below still covers
        // the range); see "Peek".
        let mut at = self.zeroed_to;
        while at < pos {
            let index = self.ring.data.index(at);
            // Relaxed: only this consumer writes these words now (the batch passed them).
            let word = self.ring.data.atomic_word(index).load(Ordering::Relaxed);
            let framed = match decode_word(&self.ring, at, word) {
                Ok(Word::Committed { len, .. }) => frame::framed_len_u32(len),
                Ok(Word::Padding) => self.ring.capacity - index,
                Ok(Word::Pass { framed, .. }) => framed,
                _ => break,
            };
            zero_record(&self.ring, index);
            at += framed;
        }
        let data = &self.ring.data;
        let index = data.index(self.zeroed_to);
        let len = pos - self.zeroed_to;
        let first = len.min(self.ring.capacity - index);
        // SAFETY: `[zeroed_to, pos)` is at most the ring (both lie between the released
        // cursor and the claim cursor) and was passed by this consumer: its writers are done
        // with it and nobody reuses it before the read cursor's store that follows.
        unsafe {
            data.zero(index, first);
            data.zero(0, len - first);
        }
        self.zeroed_to = pos;
    }

    /// Copies the exact figures to where `shmctl stat` reads them (after the cursor).
    fn store_displayed(&mut self) {
        let (records, bytes) = (self.ledger.records, self.ledger.bytes);
        self.counters.set_exact(&[(Counter::TotalConsumed, records), (Counter::BytesConsumed, bytes)]);
        self.counters.store(&self.ring, Counter::TotalConsumed);
        self.counters.store(&self.ring, Counter::BytesConsumed);
        self.ledger.store_displayed(&self.ring);
    }

    /// Sleeps until the frame at the head is no longer a claim in progress (a commit) or
    /// the claim cursor moves, or `timeout` passes. The test is on what the word *says*,
    /// not on whether it changed since some earlier look: a commit that landed between
    /// `next_frame`'s look and the announcement must stop the sleep, since its producer's
    /// wake-up check may already have found nobody announced.
    fn sleep_for_data(&mut self, timeout: Duration) {
        let (ring, pos, tail) = (&self.ring, self.pos, self.cached_tail);
        let index = ring.data.index(pos);
        let slept = sleep_unless_moved(ring.data_wake(), timeout, tail, || {
            // Relaxed: only decides whether to sleep; `next_frame` reloads with Acquire.
            let word = ring.data.atomic_word(index).load(Ordering::Relaxed);
            // Acquire: pairs with the producers' compare-and-swaps.
            let now = ring.producer_line().write_cursor.load(Ordering::Acquire);
            // A head frame that is no longer a claim in progress reads as "moved".
            if matches!(decode_word(ring, pos, word), Ok(Word::Unwritten | Word::InFlight { .. })) {
                now
            } else {
                u64::MAX
            }
        });
        // No verdict on misses: see "Consume" in the module docs.
        let slept = if slept == Slept::MissedWake { Slept::Yes } else { slept };
        self.counters.record_sleep(&self.ring, slept, Counter::ConsumerSleeps, Counter::ConsumerMissedWakes);
        // A sleeper may sleep on a dead producer's claim: look at it again on waking.
        self.stuck.look_again();
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.release_read();
    }
}

/// A durable batch in progress: holds every release, and puts the consumer back where
/// the batch began when it is dropped before [`keep`](Rewind::keep) (a refusing hook, a
/// panicking sink).
struct Rewind<'a> {
    consumer: &'a mut Consumer,
    saved: Option<Saved>,
}

/// Where a durable batch began.
struct Saved {
    pos: u64,
    counters: LocalCounters,
    ledger: ReleaseLedger,
}

impl<'a> Rewind<'a> {
    /// Starts holding; the consumer has released everything it passed.
    fn hold(consumer: &'a mut Consumer) -> Self {
        consumer.holding = true;
        let saved = Saved { pos: consumer.pos, counters: consumer.counters.clone(), ledger: consumer.ledger.clone() };
        Rewind { consumer, saved: Some(saved) }
    }

    /// Ends the batch keeping what it passed; the caller releases it.
    fn keep(&mut self) -> &mut Consumer {
        self.saved = None;
        self.consumer.holding = false;
        self.consumer
    }
}

impl Drop for Rewind<'_> {
    fn drop(&mut self) {
        let Some(saved) = self.saved.take() else { return };
        let c = &mut *self.consumer;
        // Nothing was zeroed or released since `saved.pos` (the batch held them), so the
        // frames from there on are as the producers left them, or our own hole markers.
        c.pos = saved.pos;
        c.read_to = saved.pos;
        c.counters = saved.counters;
        c.ledger = saved.ledger;
        c.holding = false;
    }
}

/// A committed record borrowed in place. Dropping it marks it read.
pub struct ReadGuard<'a> {
    consumer: &'a mut Consumer,
    frame: DataFrame,
    keep: bool,
}

impl std::fmt::Debug for ReadGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mpsc::ReadGuard").field("frame", &self.frame).finish()
    }
}

impl ReadGuard<'_> {
    /// The application record type.
    pub fn record_type(&self) -> u32 {
        self.frame.record_type
    }

    /// The producer id that committed it.
    pub fn producer(&self) -> usize {
        self.frame.producer
    }

    /// The ring position of its frame.
    pub fn position(&self) -> u64 {
        self.frame.position
    }

    /// Leaves the record in the ring: the next read returns it again.
    pub fn unread(mut self) {
        self.keep = true;
    }
}

impl Deref for ReadGuard<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let f = self.frame;
        // SAFETY: `next_frame` validated the frame inside the region; committed, so its
        // producer writes it no more, and it is not reused until we release it.
        unsafe { self.consumer.ring.data.slice(f.index + FRAME_HEADER, f.len as usize) }
    }
}

impl Drop for ReadGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        if !self.keep {
            let f = self.frame;
            self.consumer.ring.data.track(f.index + FRAME_HEADER, u64::from(f.len), false);
            self.consumer.pass_record(f);
        }
    }
}

fn claim_error(e: TryClaimError) -> ClaimError {
    match e {
        TryClaimError::TooLarge { len, max } => ClaimError::TooLarge { len, max },
        TryClaimError::Corrupt(c) => ClaimError::Corrupt(c),
        TryClaimError::Flush(e) => ClaimError::Flush(e),
        TryClaimError::Full => ClaimError::TimedOut(Duration::ZERO),
    }
}

/// One producer id's row, as [`crate::Segment::mpsc_status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProducerRow {
    /// The id.
    pub id: usize,
    /// Records committed (display copy, stored after each commit).
    pub records: u64,
    /// Payload bytes committed.
    pub bytes: u64,
    /// Times it found the ring full.
    pub blocks: u64,
    /// Times it slept for space.
    pub sleeps: u64,
    /// Its records the consumer released (exact as of the consumer's last release).
    pub consumed: u64,
    /// Its holes the consumer passed (`unblocked_records`).
    pub unblocked_records: u64,
}

/// Producer `id`'s records the consumer has released, read from the ledger of the
/// release slot that matches the read cursor: `(read cursor, records)`. The figure is
/// exact at that cursor, or newer (a release racing this read rewrote the slot; the figure
/// only grows). `None` when no slot matches (a damaged segment) or `id` is out of range.
pub(crate) fn released_records(ring: &RingRefs, id: usize) -> Option<(u64, u64)> {
    if id >= MPSC_PRODUCERS {
        return None;
    }
    let cursor = ring.cursor();
    // Acquire: pairs with the consumer's Release store of read_cursor, which follows its
    // ledger stores.
    let head = cursor.read_cursor.load(Ordering::Acquire);
    // Relaxed: ordered after the Acquire load above, stored before that cursor.
    match super::spsc::current_slot(head, |i| cursor.releases[i].position.load(Ordering::Relaxed)) {
        super::spsc::CurrentSlot::Empty => Some((head, 0)),
        super::spsc::CurrentSlot::Slot(i) => {
            Some((head, area(ring).ledgers[i].producers[id].consumed.load(Ordering::Relaxed)))
        }
        super::spsc::CurrentSlot::Unknown => None,
    }
}

/// The per-producer rows of ids that were ever used, and who holds the consumer up.
pub(crate) fn status(ring: &RingRefs, alive: &dyn Fn(usize) -> bool) -> (Vec<ProducerRow>, HeadClaim) {
    let area = area(ring);
    // Relaxed: display figures, each monotonic.
    let load = |a: &crate::sync::AtomicU64| a.load(Ordering::Relaxed);
    let rows = area
        .producers
        .iter()
        .enumerate()
        .map(|(id, p)| {
            let p = &p.0;
            ProducerRow {
                id,
                records: load(&p.records),
                bytes: load(&p.bytes),
                blocks: load(&p.blocks),
                sleeps: load(&p.sleeps),
                consumed: load(&p.consumed),
                unblocked_records: load(&p.unblocked),
            }
        })
        .filter(|r| r.records + r.blocks + r.consumed + r.unblocked_records > 0)
        .collect();
    // Acquire: pairs with the Release stores of both cursors.
    let head = ring.cursor().read_cursor.load(Ordering::Acquire);
    let tail = ring.producer_line().write_cursor.load(Ordering::Acquire);
    let claim = if check_claim_cursor(tail, head, ring.capacity).is_err() || head == tail {
        HeadClaim::Clear
    } else {
        // Walk to the first frame that is not committed: that is where the consumer stops.
        let mut pos = head;
        let mut found = HeadClaim::Clear;
        while pos < tail {
            // Acquire: as in the consumer.
            let word = ring.data.atomic_word(ring.data.index(pos)).load(Ordering::Acquire);
            let to_end = ring.capacity - ring.data.index(pos);
            match decode_word(ring, pos, word) {
                Ok(Word::Committed { len, .. }) => pos += frame::framed_len_u32(len),
                Ok(Word::Padding) => pos += to_end,
                Ok(Word::Pass { framed, .. }) => pos += framed,
                Ok(Word::Unwritten | Word::InFlight { .. }) => {
                    found = head_claim(ring, pos, tail, alive);
                    break;
                }
                Err(_) => break,
            }
        }
        found
    };
    (rows, claim)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ring::heap::MpscHeapRing;

    fn ring(capacity: u64) -> MpscHeapRing {
        MpscHeapRing::new(capacity, crate::layout::max_payload_for(capacity), WaitStrategy::Spin).unwrap()
    }

    /// Reads until empty (pending claims count as empty), waiting long enough for the
    /// consumer's liveness check.
    fn drain(c: &mut Consumer) -> Vec<(usize, Vec<u8>)> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(50);
        while Instant::now() < deadline {
            match c.try_read() {
                Ok(r) => out.push((r.producer(), r.to_vec())),
                Err(TryReadError::Empty) => std::hint::spin_loop(),
                Err(e) => panic!("{e}"),
            }
        }
        out
    }

    #[test]
    fn records_of_two_producers_arrive_in_claim_order() {
        let ring = ring(4096);
        let (mut a, mut b, mut c) = (ring.producer(0), ring.producer(1), ring.consumer());
        a.try_publish(b"a1").unwrap();
        b.try_publish(b"b1").unwrap();
        a.try_publish(b"a2").unwrap();
        let got: Vec<_> = (0..3).map(|_| c.try_read().map(|r| (r.producer(), r.to_vec())).unwrap()).collect();
        assert_eq!(got, [(0, b"a1".to_vec()), (1, b"b1".to_vec()), (0, b"a2".to_vec())]);
        assert_eq!(c.try_read().unwrap_err(), TryReadError::Empty);
    }

    #[test]
    fn a_refused_durable_batch_is_delivered_again_whole_with_its_hole_counted_once() {
        let ring = ring(4096);
        let (mut a, mut b, mut c) = (ring.producer(0), ring.producer(1), ring.consumer());
        a.try_publish(b"a1").unwrap();
        std::mem::forget(b.try_claim(5).unwrap());
        ring.kill(1);
        a.try_publish(b"a2").unwrap();
        let read_all = |c: &mut Consumer, hook_ok: bool| {
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_millis(50);
            // The hole is reclaimed only after the consumer has been stuck on it a while.
            while got.len() < 2 && Instant::now() < deadline {
                got.clear();
                let outcome = c.read_batch_durable(
                    16,
                    |r| {
                        got.push((r.producer, r.data.to_vec()));
                        Ok(())
                    },
                    |_| if hook_ok { Ok(()) } else { Err("not durable") },
                );
                if !hook_ok && got.len() == 2 {
                    assert!(matches!(outcome, Err(crate::ring::BatchError::Sink { accepted: 0, .. })));
                }
            }
            got
        };
        let want = [(0, b"a1".to_vec()), (0, b"a2".to_vec())];
        assert_eq!(read_all(&mut c, false), want);
        assert_eq!(c.consumed(0), 0, "a refused batch is not counted");
        assert_eq!(c.unblocked(1), 0, "nor is the hole inside it");
        assert_eq!(read_all(&mut c, true), want, "the same records again, none zeroed");
        assert_eq!((c.consumed(0), c.unblocked(1)), (2, 1));
        assert!(read_all(&mut c, true).is_empty());
    }

    /// A sink or a durability hook that panics, caught by a caller that keeps the
    /// consumer: the drop guard puts the position, counters and ledger back, so nothing
    /// the hook did not see is released and the records come again, counted once.
    #[test]
    fn a_panicking_sink_or_hook_releases_nothing_the_hook_did_not_see() {
        use std::panic::{AssertUnwindSafe, catch_unwind};
        let ring = ring(4096);
        let (mut a, mut b, mut c) = (ring.producer(0), ring.producer(1), ring.consumer());
        a.try_publish(&[0]).unwrap();
        b.try_publish(&[1]).unwrap();
        a.try_publish(&[2]).unwrap();
        let sink_panics = catch_unwind(AssertUnwindSafe(|| {
            c.read_batch_durable(10, |r| if r.data[0] == 1 { panic!("sink") } else { Ok::<(), ()>(()) }, |_| Ok(()))
        }));
        assert!(sink_panics.is_err());
        let hook_panics =
            catch_unwind(AssertUnwindSafe(|| c.read_batch_durable(10, |_| Ok::<(), ()>(()), |_| panic!("hook"))));
        assert!(hook_panics.is_err());
        // Relaxed: this thread stored it, if anyone did.
        let released = c.ring.cursor().read_cursor.load(Ordering::Relaxed);
        assert_eq!((released, c.consumed(0), c.consumed(1)), (0, 0, 0), "released after a panic");
        b.try_publish(&[3]).unwrap();
        let mut got = Vec::new();
        let sink = |r: Record<'_>| -> Result<(), ()> {
            got.push((r.producer, r.data[0]));
            Ok(())
        };
        assert!(matches!(c.read_batch_durable(10, sink, |_| Ok(())), Ok(4)));
        assert_eq!(got, [(0, 0), (1, 1), (0, 2), (1, 3)], "every record the hook did not see comes again");
        assert_eq!((c.consumed(0), c.consumed(1)), (2, 2), "counted once");
    }

    /// A producer stalled in its claim at the head while another claims behind it, as
    /// the consumer sleeps: the claim cursor moves, but nothing was committed and no
    /// wake-up was owed, so no missed wake-up may be counted.
    #[test]
    fn claims_behind_a_stalled_claim_are_not_missed_wakes() {
        let capacity = 64 * 1024;
        let ring = MpscHeapRing::new(capacity, crate::layout::max_payload_for(capacity), WaitStrategy::Futex).unwrap();
        let (mut stalled, mut claimer, mut c) = (ring.producer(0), ring.producer(1), ring.consumer());
        let head = stalled.try_claim(8).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                // Claims that stay in flight (never committed, never dropped), one every
                // half millisecond: the cursor moves through every sleep and its grace.
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(claim) = claimer.try_claim(8) {
                        std::mem::forget(claim);
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
            });
            let read = c.read(Some(Duration::from_millis(450))).map(|_| ());
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(matches!(read, Err(ReadError::TimedOut(_))), "{read:?}");
        });
        assert!(c.counters.get(Counter::ConsumerSleeps) >= 3, "the consumer did not sleep");
        assert_eq!(c.counters.get(Counter::ConsumerMissedWakes), 0, "claims that owed no wake-up counted as misses");
        drop(head);
    }

    #[test]
    fn an_uncommitted_claim_blocks_the_records_after_it_until_it_commits() {
        let ring = ring(4096);
        let (mut a, mut b, mut c) = (ring.producer(0), ring.producer(1), ring.consumer());
        let mut claim = a.try_claim(3).unwrap();
        b.try_publish(b"later").unwrap();
        assert_eq!(c.try_read().unwrap_err(), TryReadError::Empty, "b's record is behind a's claim");
        claim.copy_from_slice(b"now");
        claim.commit();
        assert_eq!(&*c.try_read().unwrap(), b"now");
        assert_eq!(&*c.try_read().unwrap(), b"later");
    }

    #[test]
    fn a_live_producers_claim_is_never_reclaimed() {
        let ring = ring(4096);
        let (mut a, mut b, mut c) = (ring.producer(0), ring.producer(1), ring.consumer());
        let claim = a.try_claim(3).unwrap();
        b.try_publish(b"later").unwrap();
        assert!(drain(&mut c).is_empty());
        assert_eq!(status(&c.ring, &|k| ring.is_alive(k)).1, HeadClaim::WaitingFor { producer: 0 });
        drop(claim);
        assert_eq!(drain(&mut c), [(1, b"later".to_vec())], "a dropped claim is skipped, not counted");
        assert_eq!(c.unblocked(0), 0);
    }

    #[test]
    fn a_dead_producers_in_flight_claim_becomes_padding_and_is_counted() {
        let ring = ring(4096);
        let (mut a, mut b, mut c) = (ring.producer(0), ring.producer(1), ring.consumer());
        std::mem::forget(a.try_claim(3).unwrap());
        b.try_publish(b"later").unwrap();
        ring.kill(0);
        assert_eq!(drain(&mut c), [(1, b"later".to_vec())]);
        assert_eq!((c.unblocked(0), c.unblocked(1), c.consumed(1)), (1, 0, 1));
    }

    #[test]
    fn a_claim_whose_owner_died_before_marking_it_is_found_by_its_intent() {
        let ring = ring(4096);
        let (mut a, mut b, mut c) = (ring.producer(0), ring.producer(1), ring.consumer());
        // Producer 0 claims and dies before step 3: its header word stays 0.
        let r = a.claim_once(5).unwrap().unwrap();
        b.try_publish(b"later").unwrap();
        assert!(drain(&mut c).is_empty(), "alive: waited for");
        ring.kill(0);
        assert_eq!(drain(&mut c), [(1, b"later".to_vec())]);
        assert_eq!(c.unblocked(0), 1);
        assert_eq!(r.start, 0);
    }

    #[test]
    fn a_stale_intent_of_a_dead_loser_does_not_cut_the_real_hole_short() {
        let ring = ring(4096);
        let (a, mut b, mut d, mut c) = (ring.producer(0), ring.producer(1), ring.producer(2), ring.consumer());
        // b wins [0, 32) and dies unmarked; a "lost" a race for position 0 with a 16-byte
        // claim and died too: its stale intent [0, 16) ends inside b's hole.
        b.claim_once(17).unwrap().unwrap();
        let slot = &area(&ring.refs).producers[0].0;
        slot.intent_start.store(0, Ordering::Relaxed);
        slot.intent_end.store(16, Ordering::Relaxed);
        d.try_publish(b"after").unwrap();
        ring.kill(0);
        ring.kill(1);
        assert_eq!(drain(&mut c), [(2, b"after".to_vec())]);
        assert_eq!(c.unblocked(0) + c.unblocked(1), 1);
        drop(a);
    }

    #[test]
    fn a_successor_adopts_its_dead_predecessors_claim_as_an_orphan() {
        let ring = ring(4096);
        let (mut a, mut b, mut c) = (ring.producer(0), ring.producer(1), ring.consumer());
        a.claim_once(5).unwrap().unwrap();
        b.try_publish(b"later").unwrap();
        drop(a);
        // A successor with id 0 holds the lock: the claim is its orphan, known dead.
        let mut a2 = ring.producer(0);
        assert_eq!(a2.try_publish(b"new").unwrap_err(), TryClaimError::Full, "waits for the orphan");
        assert_eq!(drain(&mut c), [(1, b"later".to_vec())]);
        a2.try_publish(b"new").unwrap();
        assert_eq!(drain(&mut c), [(0, b"new".to_vec())]);
        assert_eq!(c.unblocked(0), 1);
    }

    #[test]
    fn wrap_padding_and_holes_across_the_end_of_the_ring() {
        let ring = ring(256);
        let (mut a, mut b, mut c) = (ring.producer(0), ring.producer(1), ring.consumer());
        for round in 0..21u8 {
            a.try_publish(&[round; 40]).unwrap();
            if round % 3 == 0 {
                // b claims (possibly across the end) and dies unmarked; a successor takes over.
                b.claim_once(30).unwrap().unwrap();
                ring.kill(1);
            }
            let got = drain(&mut c);
            assert_eq!(got, [(0, vec![round; 40])], "round {round}");
            if round % 3 == 0 {
                b = ring.producer(1);
            }
        }
        assert_eq!(c.unblocked(1), 7);
    }

    #[test]
    fn a_restarted_consumer_resumes_the_exact_per_producer_ledger() {
        let ring = ring(4096);
        let (mut a, mut b) = (ring.producer(0), ring.producer(1));
        let mut c = ring.consumer();
        a.try_publish(b"x").unwrap();
        std::mem::forget(b.try_claim(1).unwrap());
        ring.kill(1);
        a.try_publish(b"y").unwrap();
        assert_eq!(drain(&mut c).len(), 2);
        drop(c);
        let c = ring.consumer();
        assert_eq!((c.consumed(0), c.unblocked(1)), (2, 1));
    }

    #[test]
    fn commit_len_leaves_a_skipped_slack_frame() {
        let ring = ring(4096);
        let (mut a, mut c) = (ring.producer(0), ring.consumer());
        let mut claim = a.try_claim(100).unwrap();
        claim[..2].copy_from_slice(b"hi");
        claim.commit_len(2);
        a.try_publish(b"next").unwrap();
        assert_eq!(drain(&mut c), [(0, b"hi".to_vec()), (0, b"next".to_vec())]);
    }

    #[test]
    fn hostile_header_words_are_errors_not_panics() {
        let ring = ring(4096);
        let (mut a, mut c) = (ring.producer(0), ring.consumer());
        a.try_publish(b"ok").unwrap();
        for word in [frame::encode(5000, committed(0, 0)), frame::encode(1, 0xFFFF_0000), frame::encode(1, 99 << 16)] {
            ring.refs.data.atomic_word(0).store(word, Ordering::Relaxed);
            assert!(matches!(c.try_read(), Err(TryReadError::Corrupt(_))), "{word:#x}");
        }
    }

    fn peek_of(ring: &MpscHeapRing, max: usize) -> PeekView {
        peek(&ring.refs, max, &|id| ring.is_alive(id)).unwrap()
    }

    #[test]
    fn peek_shows_committed_records_in_claim_order_and_stops_at_a_claim_naming_its_producer() {
        let ring = ring(4096);
        let (mut a, mut b, mut c) = (ring.producer(0), ring.producer(1), ring.consumer());
        a.try_publish(b"a1").unwrap();
        drop(b.try_claim(5).unwrap());
        b.try_publish(b"b1").unwrap();
        let claim = a.try_claim(3).unwrap();
        b.try_publish(b"after").unwrap();
        let view = peek_of(&ring, 10);
        let got: Vec<_> = view.records.iter().map(|r| (r.producer, r.data.clone())).collect();
        assert_eq!(got, [(Some(0), b"a1".to_vec()), (Some(1), b"b1".to_vec())]);
        assert_eq!(view.skipped.iter().map(|s| (s.what, s.producer)).collect::<Vec<_>>(), [("abandoned", Some(1))]);
        let stop = view.stopped_at.expect("a stop at a's claim");
        assert_eq!((stop.position, stop.waiting_for), (claim.position(), HeadClaim::WaitingFor { producer: 0 }));
        assert_eq!(peek_of(&ring, 1).records.len(), 1, "max bounds the records");
        // Nothing moved: the consumer reads the same records.
        assert_eq!(drain(&mut c), [(0, b"a1".to_vec()), (1, b"b1".to_vec())]);
        std::mem::forget(claim);
        ring.kill(0);
        let stop = peek_of(&ring, 10).stopped_at.expect("still stopped");
        assert!(matches!(stop.waiting_for, HeadClaim::Dead { producer: 0, .. }), "{stop:?}");
        assert_eq!(drain(&mut c), [(1, b"after".to_vec())]);
        assert_eq!(peek_of(&ring, 10), PeekView::default(), "everything read");
    }

    /// A consumer zeroes each record it passes before it releases it (lazily, a quarter
    /// of the ring at a time when the producer is ahead): a peek racing it must drop a copy
    /// whose bytes it zeroed, never return a torn record. The consumer holds each record a
    /// moment, so that peek's copy of the record at the read cursor often overlaps the
    /// consumer's zeroing of it while the read cursor stays where it was.
    #[test]
    fn a_peek_racing_the_consumer_never_returns_a_torn_record() {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let ring = ring(64 * 1024);
        let done = AtomicBool::new(false);
        let deadline = Instant::now() + Duration::from_secs(3);
        std::thread::scope(|s| {
            let (mut p, mut c) = (ring.producer(0), ring.consumer());
            let done = &done;
            s.spawn(move || {
                for i in 0u32.. {
                    if Instant::now() > deadline {
                        break;
                    }
                    let byte = (i % 255) as u8 + 1;
                    let _ = p.publish(&vec![byte; 8 * 1024], Some(Duration::from_secs(5)));
                }
                done.store(true, SeqCst);
            });
            s.spawn(move || {
                while !done.load(SeqCst) {
                    if let Ok(record) = c.try_read() {
                        let held = Instant::now();
                        while held.elapsed() < Duration::from_micros(2) {
                            std::hint::spin_loop();
                        }
                        drop(record);
                    }
                }
                drop(c);
            });
            let mut seen = 0;
            while !done.load(SeqCst) {
                for r in peek_of(&ring, 1).records {
                    seen += 1;
                    assert!(r.data.iter().all(|&b| b == r.data[0]) && r.data[0] != 0, "a torn record was peeked");
                }
            }
            assert!(seen > 0, "no record peeked");
        });
    }

    #[test]
    fn peek_of_hostile_words_is_an_error_or_a_stop_never_a_panic() {
        let ring = ring(4096);
        let mut a = ring.producer(0);
        a.try_publish(b"ok").unwrap();
        for word in [frame::encode(5000, committed(0, 0)), frame::encode(1, 0xFFFF_0000), frame::encode(1, 99 << 16)] {
            ring.refs.data.atomic_word(0).store(word, Ordering::Relaxed);
            assert!(peek(&ring.refs, 10, &|_| true).is_err(), "{word:#x}");
        }
        // A frame that claims to run past the claim cursor.
        ring.refs.data.atomic_word(0).store(frame::encode(64, committed(0, 0)), Ordering::Relaxed);
        assert!(peek(&ring.refs, 10, &|_| true).is_err());
        for (read, write) in [(8, 0), (0, 3), (0, 8192), (u64::MAX - 7, u64::MAX)] {
            ring.refs.cursor().read_cursor.store(read, Ordering::Relaxed);
            ring.refs.producer_line().write_cursor.store(write, Ordering::Relaxed);
            assert!(peek(&ring.refs, 10, &|_| true).is_err(), "cursors {read} {write}");
        }
    }
}

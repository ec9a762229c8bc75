//! The work-queue ring: many producers, competing workers, each record to one worker.
//!
//! Producers are those of [`super::mpsc`], unchanged: they claim space by compare-and-swap
//! on the claim cursor, commit each frame's header word with Release, and a dead
//! producer's claim becomes an `UNBLOCKED` hole once its kernel lock is gone. Cursor slot
//! 0's `read_cursor` is the **release cursor**: the producers wait for it exactly as for
//! mpsc's consumer, and its release slots and mpsc's two ledgers keep the exact per-producer
//! figures. What differs is the reading side: up to [`MPMC_WORKERS`] workers, each with its
//! own id, share the records. Every record is delivered to exactly one worker, except that a
//! record whose worker died before acknowledging it is delivered once more, to another
//! worker, and counted as `redelivered` there (at-least-once for that record only).
//!
//! # Words and who writes them ([`MpmcArea`])
//! - `take_cursor`: the ring position of the next frame no worker has taken. Workers
//!   advance it by compare-and-swap, one frame at a time; it never passes a frame that is
//!   not committed (a claim in progress stops it, as it stops mpsc's consumer).
//! - Worker `w`'s `holding` word: `p | INTENT` stored *before* its compare-and-swap of the
//!   take cursor from `p`, `p | HELD` after it won, `0` once it acknowledged. So a worker
//!   killed at any instruction between its take and its acknowledgement has `p` in its
//!   holding word. Only `w` writes it, except the release-token holder (below), which clears
//!   the holding word of a dead worker by compare-and-swap when it hands the record over.
//! - Worker `w`'s `orphan` word: a dead predecessor's holding word that a worker attaching
//!   with the same id found (it holds the lock now, so the holding would look alive).
//!   Always treated as dead.
//! - `handoff`: `p | 1` while the record at `p`, taken by a dead worker, waits for another
//!   worker; `0` otherwise. Posted only by the release-token holder, taken by compare-and-swap.
//! - `token`: `sequence << 8 | (w + 1)` while worker `w` holds the release token,
//!   `sequence << 8` when free. Every acquisition adds one to the sequence, so a stale
//!   compare-and-swap never succeeds on a later holder's value.
//! - A frame's header word (mpsc's commit word) gains one state: `ACKED | k` with the
//!   record's length, stored with Release by the worker that acknowledges it (`k`: producer id).
//!
//! # Take
//! 1. A posted hand-off first: store `holding = p | INTENT`, compare-and-swap `handoff`
//!    from `p | 1` to `0`; the winner holds `p` (`p | HELD`) and counts it `redelivered`.
//!    `p` is checked against the cursors only after the swap: the hand-off loaded before it
//!    may be one another worker has taken, acknowledged and released since.
//! 2. Load the take cursor `t` (Acquire) and the header word at `t` (Acquire: pairs with
//!    the commit's Release store, so the payload is visible). Committed: store
//!    `holding = t | INTENT` (Relaxed), then `compare_exchange(t, t + framed, AcqRel)` on
//!    the take cursor; its Release half publishes the intent to whoever acquires a take
//!    cursor past `t` (the token holder looking for dead holders). Won: `holding = t | HELD`,
//!    the record is lent out in place. Lost: clear the holding word (Relaxed), retry at the
//!    new cursor.
//!    Padding, skipped or unblocked frames are passed by the same compare-and-swap, holding
//!    nothing (there is nothing to deliver; the release walk passes them).
//! 3. An uncommitted frame at `t` is a claim in progress: nothing to take. When the take
//!    cursor equals the release cursor (every frame before it released) and the take has
//!    been stuck there for `HOLE_CHECK_AFTER`, the worker takes the release token and, if
//!    mpsc's [`head_claim`](super::mpsc) finds the claim's producer dead, writes the hole
//!    markers there (under the token nobody else can, and neither cursor can move past it).
//!
//! # Acknowledge, and the release cursor
//! A worker acknowledges by storing `ACKED | k` in the record's header word (Release: it
//! is done with the payload), then clears its holding word. The release cursor advances
//! over the contiguous prefix of acknowledged, padding, skipped and unblocked frames below
//! the take cursor, and only the holder of the release token advances it. After each
//! acknowledgement the worker issues `fence(SeqCst)` and tries to take the token (a
//! compare-and-swap from a free value). The holder walks from the release cursor,
//! zeroes the payloads it passes, writes the ledger with the new position into the release
//! slot it is about to use (mpsc's "Exact counters"), zeroes the header words, stores the
//! release cursor (Release: pairs with the producers' Acquire load), frees the token
//! (Release), issues `fence(SeqCst)` and looks once more at the frame at the new release
//! cursor. Dekker's argument over the two fences: either the holder sees an acknowledgement
//! stored before it freed the token, or the acknowledging worker sees the token free and
//! takes it. So no acknowledged frame is left behind at the head.
//!
//! A holder killed while it holds the token: its lock is gone, and the next worker that
//! finds the token busy for `HOLE_CHECK_AFTER` with a dead owner takes it over by
//! compare-and-swap on the exact value (a successor with the same id takes it at once).
//! If the dead holder had written the ledger of a release past the cursor (its release
//! slot's position is beyond the release cursor), the new holder zeroes that range word by
//! word and stores the cursor: the release it finishes is exactly the one recorded.
//!
//! # Redelivery: a worker killed while holding a record
//! Known dead by its kernel lock only (role-lock byte `MPMC_LOCK_BASE + w`), never by a
//! timeout or a pid: a stopped worker is never robbed. The token holder, at most once per
//! `HOLE_CHECK_AFTER`, scans the holding and orphan words. A position `p` in one of them,
//! at or past the release cursor and below the take cursor, whose header word is still a
//! committed record (not acknowledged), was taken and not acknowledged. It is *held* if any
//! worker whose holding word names `p` is alive (the winner of the take, or a loser of that
//! compare-and-swap that has not yet cleared its intent, which it does as soon as it lost:
//! then the wait lasts until it does). Otherwise
//! the winner is dead: the holder clears every word naming `p` by compare-and-swap (one
//! failing means a successor adopted it: try later), then posts `handoff = p | 1`. One
//! hand-off at a time. A worker killed after winning a hand-off holds `p` in its holding
//! word, so the record is found again, and handed over again.
//!
//! # A record kept for a retry
//! [`Job::hold_for_retry`] ends a job without acknowledging it (a sink that refused the
//! record): the holding word keeps naming it, so no other worker gets it while this one
//! lives, and the worker's next take returns it again before anything new. A worker
//! dropped or killed while it keeps one has it handed to another worker, as any held
//! record ("Redelivery").
//!
//! # Peek
//! [`crate::Segment::peek_view`] shows every record not yet acknowledged, writing nothing:
//! from the release cursor to the claim cursor, in ring order, records below the take
//! cursor marked taken (with the worker whose holding word names it, if one does: none
//! for a dead worker's record posted for hand-off), records at or past it waiting (the
//! next takes return them in that order), and acknowledged records not yet released,
//! padding and holes as skipped frames. It stops at a claim not yet committed, as the
//! take cursor does, saying whom it waits for (mpsc's [`head_claim`](super::mpsc)). The
//! copy is validated as mpsc's peek is: after `fence(Acquire)`, the header word must be
//! unchanged (a payload is zeroed only after its record was acknowledged) and the release
//! cursor must not have passed the frame (space is reused only after that).
//!
//! # What is exact
//! The release ledger (records and bytes released, per producer, and holes passed) is
//! exact across kill -9 of any worker, as mpsc's consumer's. Per worker, `taken` and
//! `redelivered` are stored before the record is lent out; `acknowledged` after its
//! marker, so a worker killed between the two shows one fewer (display only).

use std::ops::Deref;
use std::time::{Duration, Instant};

use super::frame::{self, FRAME_HEADER};
use super::mpsc::{ProducerLiveness, ReleaseLedger, Stuck, Word, check_claim_cursor, decode_word, head_claim};
use super::spsc::{CURSOR_LIMIT, PEEK_ATTEMPTS, PeekedRecord, PeekedState};
use super::wait::{Waiting, sleep_unless_moved, wake_sleeper};
use super::{Corruption, PeekStop, PeekView, ReadError, RingRefs, SkippedFrame, TryReadError, WaitStrategy};
use crate::layout::{MPMC_WORKERS, MPSC_PRODUCERS, MpmcArea, MpmcWorkerSlot};
use crate::sync::{AtomicU64, Ordering, fence};

/// The ordering of the acknowledgement's store of the header word: `Release`. The loom
/// mutation `mutation-mpmc-ack-relaxed` (a feature only CI's loom step turns on, to show
/// that the models fail without it) weakens it to `Relaxed`.
const ACK_ORDERING: Ordering =
    if cfg!(feature = "mutation-mpmc-ack-relaxed") { Ordering::Relaxed } else { Ordering::Release };

/// Frame type of an acknowledged record: `ACKED | producer id`.
pub const ACKED: u32 = 0xFFFF_FB00;
/// Low bits of a holding word: a take in progress (before its compare-and-swap).
const INTENT: u64 = 1;
/// Low bits of a holding word: a record taken.
const HELD: u64 = 2;
/// Release-token owner bits.
const OWNER_BITS: u64 = 0xFF;
/// Release walks between two looks at the clock for the dead-worker scan.
const SCAN_LOOKS_PER_CLOCK: u32 = 64;
/// Tries at a consistent view of the three cursors before calling them corrupt.
const CURSOR_RETRIES: u32 = 64;
/// How often the token holder looks for dead workers' records at most.
const SCAN_EVERY: Duration = Duration::from_millis(1);

/// What a header word says in an mpmc ring: mpsc's states, and acknowledged records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    Mpsc(Word),
    Acked { producer: usize, len: u32 },
}

fn decode(ring: &RingRefs, pos: u64, word: u64) -> Result<Frame, Corruption> {
    let (len, ty) = frame::decode(word);
    if ty & !0xFF == ACKED {
        let producer = (ty & 0xFF) as usize;
        let to_end = ring.capacity - ring.data.index(pos);
        if producer >= MPSC_PRODUCERS || u64::from(len) > ring.max_record || frame::framed_len_u32(len) > to_end {
            return Err(Corruption { what: "impossible acknowledged frame", value: word, position: pos });
        }
        return Ok(Frame::Acked { producer, len });
    }
    decode_word(ring, pos, word).map(Frame::Mpsc)
}

fn area(ring: &RingRefs) -> &MpmcArea {
    ring.mpmc_area().expect("every mpmc ring has its area")
}

/// The three shared cursors, loaded with Acquire and checked against each other:
/// `release <= take <= claim`, at most a ring apart.
#[derive(Debug, Clone, Copy)]
struct Cursors {
    release: u64,
    take: u64,
    claim: u64,
}

fn load_cursors(ring: &RingRefs) -> Result<Cursors, Corruption> {
    let mut failure = None;
    // Other workers and producers move all three meanwhile: a reader preempted between its
    // loads may see a claim cursor more than a ring past an old release cursor. So a
    // failed check is retried; one that keeps failing is corruption.
    for _ in 0..CURSOR_RETRIES {
        // Acquire (all three): pairs with the Release store of the release cursor, the
        // takers' and the producers' compare-and-swaps. Loaded in this order, each
        // monotonic: `release <= take <= claim` holds between the values loaded.
        let release = ring.cursor().read_cursor.load(Ordering::Acquire);
        let take = area(ring).take.0.take_cursor.load(Ordering::Acquire);
        let claim = ring.producer_line().write_cursor.load(Ordering::Acquire);
        let checked = check_claim_cursor(claim, release, ring.capacity).and_then(|()| {
            if take < release || take > claim || take % 8 != 0 {
                return Err(Corruption { what: "take cursor outside the ring", value: take, position: release });
            }
            Ok(Cursors { release, take, claim })
        });
        match checked {
            Ok(c) => return Ok(c),
            Err(e) => failure = Some(e),
        }
        crate::sync::spin_loop();
    }
    Err(failure.expect("at least one try"))
}

/// Copies up to `max` records not yet acknowledged, from the release cursor, writing
/// nothing (see "Peek"). `producer_alive` names whom a stop at a claim waits for.
pub(crate) fn peek(
    ring: &RingRefs,
    max: usize,
    producer_alive: &dyn Fn(usize) -> bool,
) -> Result<PeekView, Corruption> {
    for _ in 0..PEEK_ATTEMPTS {
        if let Some(view) = peek_once(ring, max, producer_alive)? {
            return Ok(view);
        }
    }
    Ok(PeekView::default())
}

/// One pass of [`peek`]; `None` when the release walk overtook it before it copied a record.
fn peek_once(
    ring: &RingRefs,
    max: usize,
    producer_alive: &dyn Fn(usize) -> bool,
) -> Result<Option<PeekView>, Corruption> {
    let c = load_cursors(ring)?;
    let release = &ring.cursor().read_cursor;
    let holder_of = |pos: u64| {
        // Relaxed: a display answer; a stale one names a worker that has just moved on.
        (0..MPMC_WORKERS).find(|&w| area(ring).workers[w].0.holding.load(Ordering::Relaxed) == pos | HELD)
    };
    // As in mpsc's peek: each step moves forward by at least 8 bytes, never past the
    // claim cursor, at most a ring above the release cursor.
    let mut view = PeekView::default();
    let mut pos = c.release;
    while pos < c.claim && view.records.len() < max {
        let index = ring.data.index(pos);
        let to_end = ring.capacity - index;
        // Acquire: pairs with the Release store of the word (commit, acknowledgement,
        // padding, markers), so a committed record's payload is visible.
        let word = ring.data.atomic_word(index).load(Ordering::Acquire);
        let decoded = decode(ring, pos, word);
        let data = match decoded {
            Ok(Frame::Mpsc(Word::Committed { len, .. })) => ring.data.copy_words(index + FRAME_HEADER, len as usize),
            _ => Vec::new(),
        };
        // Acquire fence, then Relaxed loads: a payload is zeroed only after its record was
        // acknowledged (the token holder acquired that word first), and reused only after the
        // release cursor passed it; a copied byte from either shows as a changed word or a
        // moved cursor here (x86-64 is TSO; AArch64 is other-multi-copy-atomic).
        fence(Ordering::Acquire);
        if release.load(Ordering::Relaxed) > pos || ring.data.atomic_word(index).load(Ordering::Relaxed) != word {
            let copied = !view.records.is_empty();
            return Ok(copied.then_some(view));
        }
        let (framed, skipped) = match decoded? {
            Frame::Mpsc(Word::Committed { producer, record_type, len }) => {
                let state =
                    if pos < c.take { PeekedState::Taken { worker: holder_of(pos) } } else { PeekedState::Waiting };
                let (producer, seq) = (Some(producer), None);
                view.records.push(PeekedRecord { position: pos, record_type, data, producer, seq, state });
                (frame::framed_len_u32(len), None)
            }
            Frame::Acked { producer, len } => (frame::framed_len_u32(len), Some(("acknowledged", Some(producer)))),
            Frame::Mpsc(Word::Padding) => (to_end, Some(("padding", None))),
            Frame::Mpsc(Word::Pass { producer, framed, unblocked }) => {
                (framed, Some((if unblocked { "unblocked" } else { "abandoned" }, Some(producer))))
            }
            Frame::Mpsc(Word::Unwritten | Word::InFlight { .. }) => {
                let waiting_for = head_claim(ring, pos, c.claim, producer_alive);
                view.stopped_at = Some(PeekStop { position: pos, waiting_for });
                break;
            }
        };
        let next = pos + framed;
        if next > c.claim {
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

/// A record a worker holds.
#[derive(Debug, Clone, Copy)]
struct Taken {
    position: u64,
    index: u64,
    len: u32,
    record_type: u32,
    producer: usize,
    redelivered: bool,
}

/// A worker of an mpmc ring: takes records, each of which no other worker gets, and
/// acknowledges them. One per worker id at a time; `Send`, not `Sync`.
pub struct Worker {
    ring: RingRefs,
    id: usize,
    strategy: WaitStrategy,
    producer_alive: ProducerLiveness,
    worker_alive: ProducerLiveness,
    taken: u64,
    acknowledged: u64,
    redelivered: u64,
    /// Stuck on an uncommitted frame at the take cursor (the hole check).
    stuck: Stuck,
    /// Stuck on a busy release token (the dead-holder check).
    token_stuck: Stuck,
    scan_looks: u32,
    last_scan: Option<Instant>,
    /// A record kept for a retry ([`Job::hold_for_retry`]): the next take returns it.
    kept: Option<Taken>,
    _attachment: Option<crate::participant::Attachment>,
}

// SAFETY: local state plus shared memory kept alive by `ring._keep`, accessed through
// atomics and protocol-owned byte ranges; the liveness probes are `Send`.
unsafe impl Send for Worker {}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mpmc::Worker").field("id", &self.id).field("taken", &self.taken).finish_non_exhaustive()
    }
}

/// Why a worker could not attach.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerAttachError {
    /// The segment's cursors or the worker id are impossible.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    /// Two dead predecessors of this id each left a record not yet handed over.
    #[error(
        "worker {0}'s predecessors left two records not yet handed over: attach again once another worker took them"
    )]
    PendingOrphans(usize),
}

impl Worker {
    /// Attaches as worker `id`, whose role lock the caller holds. A dead predecessor's
    /// holding word becomes this slot's orphan ("Words and who writes them").
    pub(crate) fn attach(
        ring: RingRefs,
        id: usize,
        strategy: WaitStrategy,
        producer_alive: ProducerLiveness,
        worker_alive: ProducerLiveness,
        attachment: Option<crate::participant::Attachment>,
    ) -> Result<Self, WorkerAttachError> {
        if id >= MPMC_WORKERS {
            return Err(Corruption { what: "worker id out of range", value: id as u64, position: 0 }.into());
        }
        let cursors = load_cursors(&ring)?;
        let slot = &area(&ring).workers[id].0;
        // Relaxed: written by our predecessor, which is dead (we hold its lock), or cleared
        // by the token holder's compare-and-swap, which the swap below observes.
        let holding = slot.holding.load(Ordering::Relaxed);
        if pending_position(holding, cursors).is_some() {
            let orphan = slot.orphan.load(Ordering::Relaxed);
            if pending_position(orphan, cursors).is_some() {
                return Err(WorkerAttachError::PendingOrphans(id));
            }
            // Relaxed, then AcqRel: the orphan store is ordered before the swap; if the token
            // holder cleared the holding meanwhile, it handed the record over already and
            // our orphan names a record that is held (alive) or acknowledged: harmless.
            slot.orphan.store(holding, Ordering::Relaxed);
        }
        if holding != 0 {
            let _ = slot.holding.compare_exchange(holding, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
        // Relaxed: display counters with one writer (this worker id), resumed.
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        slot.pid.store(u64::from(std::process::id()), Ordering::Relaxed);
        // Relaxed: a hint for the next attacher of this id, which can only look while we
        // hold the lock (then it refuses at once, as it should) or after we let it go.
        slot.detached.store(0, Ordering::Relaxed);
        Ok(Worker {
            id,
            strategy,
            producer_alive,
            worker_alive,
            taken: load(&slot.taken),
            acknowledged: load(&slot.acknowledged),
            redelivered: load(&slot.redelivered),
            stuck: Stuck::new(),
            token_stuck: Stuck::new(),
            scan_looks: 0,
            last_scan: None,
            kept: None,
            ring,
            _attachment: attachment,
        })
    }

    fn slot(&self) -> &MpmcWorkerSlot {
        &area(&self.ring).workers[self.id].0
    }

    /// This worker's id.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Records returned to this worker id (its predecessors' included).
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// Records this worker id acknowledged.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged
    }

    /// Records this worker id received from a dead worker.
    pub fn redelivered(&self) -> u64 {
        self.redelivered
    }

    /// Changes the wait strategy of [`take`](Self::take).
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.strategy = strategy;
    }

    /// Takes the next record no other worker has, without waiting. Acknowledge it with
    /// [`Job::ack`] (dropping the job acknowledges it too).
    pub fn try_take(&mut self) -> Result<Job<'_>, TryReadError> {
        match self.take_once()? {
            Some(taken) => Ok(Job { worker: self, taken, done: false }),
            None => Err(TryReadError::Empty),
        }
    }

    /// Takes the next record, waiting up to `timeout` (forever when `None`).
    pub fn take(&mut self, timeout: Option<Duration>) -> Result<Job<'_>, ReadError> {
        let taken = self.wait_take(timeout)?;
        Ok(Job { worker: self, taken, done: false })
    }

    fn wait_take(&mut self, timeout: Option<Duration>) -> Result<Taken, ReadError> {
        if let Some(t) = self.take_once()? {
            return Ok(t);
        }
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
            if let Some(t) = self.take_once()? {
                return Ok(t);
            }
        }
    }

    /// One attempt at "Take"; `None` when there is nothing to take now. Also does the
    /// idle work: the release walk and the dead-worker scan (through the token).
    fn take_once(&mut self) -> Result<Option<Taken>, Corruption> {
        if let Some(kept) = self.kept.take() {
            return Ok(Some(kept));
        }
        if let Some(t) = self.take_handoff()? {
            return Ok(Some(t));
        }
        loop {
            let line = &area(&self.ring).take.0;
            let c = load_cursors(&self.ring)?;
            if c.take == c.claim {
                return self.idle();
            }
            let data = &self.ring.data;
            let index = data.index(c.take);
            // Acquire: pairs with the Release store of the word (commit, padding, markers).
            let word = data.atomic_word(index).load(Ordering::Acquire);
            // A stale take cursor (others took, released, and the producers reused that frame
            // since we loaded it) reads another lap's bytes: a surprise there is corruption
            // only if the take cursor has not moved. Acquire: as in `load_cursors`.
            let moved = || line.take_cursor.load(Ordering::Acquire) != c.take;
            let decoded = match decode(&self.ring, c.take, word) {
                Err(_) | Ok(Frame::Acked { .. } | Frame::Mpsc(Word::Unwritten | Word::InFlight { .. })) if moved() => {
                    continue;
                }
                other => other?,
            };
            let passed = match decoded {
                Frame::Mpsc(Word::Committed { producer, record_type, len }) => {
                    let next = c.take + frame::framed_len_u32(len);
                    if next > c.claim {
                        if moved() {
                            continue;
                        }
                        return Err(Corruption { what: "record past the claim cursor", value: word, position: c.take });
                    }
                    let slot = self.slot();
                    // Relaxed: published by the Release half of the compare-and-swap below.
                    slot.holding.store(c.take | INTENT, Ordering::Relaxed);
                    // AcqRel: Release publishes the intent (pairs with the token holder's Acquire
                    // load of the take cursor); Acquire orders us after the takes before ours.
                    if line.take_cursor.compare_exchange(c.take, next, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                        // Relaxed: the intent already names the record; this only says we won.
                        slot.holding.store(c.take | HELD, Ordering::Relaxed);
                        // Relaxed: a display counter with one writer.
                        slot.taken.store(self.taken + 1, Ordering::Relaxed);
                        self.taken += 1;
                        let taken = Taken { position: c.take, index, len, record_type, producer, redelivered: false };
                        return Ok(Some(taken));
                    }
                    // Lost: our intent names a record another worker took. Cleared at once, or a
                    // scan would count it as a live holder of that record for as long as we find
                    // nothing else to take, and never hand it over if its taker died.
                    // Relaxed: a scan that still sees the intent only waits for us meanwhile.
                    slot.holding.store(0, Ordering::Relaxed);
                    continue;
                }
                Frame::Mpsc(Word::Padding) => self.ring.capacity - index,
                Frame::Mpsc(Word::Pass { framed, .. }) => framed,
                Frame::Acked { .. } => {
                    return Err(Corruption {
                        what: "acknowledged frame at the take cursor",
                        value: word,
                        position: c.take,
                    });
                }
                Frame::Mpsc(Word::Unwritten | Word::InFlight { .. }) => {
                    if c.take == c.release && self.stuck.check_due(c.take) && self.reclaim_hole(c.take)? {
                        continue;
                    }
                    return self.idle();
                }
            };
            if c.take + passed > c.claim {
                if moved() {
                    continue;
                }
                return Err(Corruption { what: "frame past the claim cursor", value: word, position: c.take });
            }
            // AcqRel: as for a record; nothing to publish, but the order with other takers holds.
            let _ = line.take_cursor.compare_exchange(c.take, c.take + passed, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// Nothing to take at the take cursor: release what can be (the walk may hand over a
    /// dead worker's record), then take a posted hand-off if there is one.
    fn idle(&mut self) -> Result<Option<Taken>, Corruption> {
        self.try_release()?;
        self.take_handoff()
    }

    /// Step 1 of "Take": a dead worker's record posted for another.
    fn take_handoff(&mut self) -> Result<Option<Taken>, Corruption> {
        let line = &area(&self.ring).take.0;
        // Acquire: pairs with the token holder's Release store of the hand-off.
        let posted = line.handoff.load(Ordering::Acquire);
        if posted == 0 {
            return Ok(None);
        }
        let pos = posted & !7;
        let slot = self.slot();
        // Relaxed: published by the Release half of the compare-and-swap below.
        slot.holding.store(pos | INTENT, Ordering::Relaxed);
        // AcqRel: Release publishes our intent; Acquire pairs with the posting store.
        if line.handoff.compare_exchange(posted, 0, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            // Relaxed: we hold nothing; a scan that saw the intent waited for us, harmlessly.
            slot.holding.store(0, Ordering::Relaxed);
            return Ok(None);
        }
        // Checked only once won: the load above may return a hand-off that another worker
        // has since taken, acknowledged and released (a stale value, not corruption), and the
        // compare-and-swap reads the newest. The cursors loaded after it are at least as new
        // as the post, and the release cursor cannot pass a record posted and not yet taken.
        let c = load_cursors(&self.ring)?;
        if pending_position(posted, c).is_none() || posted & 7 != 1 {
            return Err(Corruption { what: "hand-off outside the taken range", value: posted, position: c.release });
        }
        let index = self.ring.data.index(pos);
        // Acquire: pairs with the commit's Release store (the payload is visible).
        let word = self.ring.data.atomic_word(index).load(Ordering::Acquire);
        let Frame::Mpsc(Word::Committed { producer, record_type, len }) = decode(&self.ring, pos, word)? else {
            return Err(Corruption { what: "handed-over frame is not a committed record", value: word, position: pos });
        };
        // Relaxed: as in `take_once`.
        slot.holding.store(pos | HELD, Ordering::Relaxed);
        // Relaxed: display counters with one writer, stored before the record is lent out.
        slot.taken.store(self.taken + 1, Ordering::Relaxed);
        slot.redelivered.store(self.redelivered + 1, Ordering::Relaxed);
        self.taken += 1;
        self.redelivered += 1;
        Ok(Some(Taken { position: pos, index, len, record_type, producer, redelivered: true }))
    }

    /// "Acknowledge": the marker, the counters, the holding word, then the release.
    fn acknowledge(&mut self, t: Taken) -> Result<(), Corruption> {
        let data = &self.ring.data;
        data.track(t.index + FRAME_HEADER, u64::from(t.len), false);
        // Release: pairs with the token holder's Acquire load of the word; we are done with
        // the payload before it zeroes it.
        data.atomic_word(t.index).store(frame::encode(t.len, ACKED | t.producer as u32), ACK_ORDERING);
        self.acknowledged += 1;
        let slot = self.slot();
        // Relaxed: a display counter with one writer.
        slot.acknowledged.store(self.acknowledged, Ordering::Relaxed);
        // Relaxed: a scan that still sees the holding finds the frame acknowledged.
        slot.holding.store(0, Ordering::Relaxed);
        // SeqCst: Dekker's pair with the token holder's fence after it frees the token.
        fence(Ordering::SeqCst);
        self.try_release()
    }

    /// Takes the release token if it is free (or its holder is dead), walks, frees it, and
    /// looks again ("Acknowledge, and the release cursor").
    fn try_release(&mut self) -> Result<(), Corruption> {
        loop {
            // Acquire: pairs with the previous holder's Release store that freed it.
            let token = area(&self.ring).release.0.token.load(Ordering::Acquire);
            let owner = token & OWNER_BITS;
            if owner != 0 {
                let o = (owner - 1) as usize;
                let dead =
                    o == self.id || o >= MPMC_WORKERS || (self.token_stuck.check_due(token) && !(self.worker_alive)(o));
                if !dead {
                    return Ok(());
                }
            }
            let mine = ((token >> 8).wrapping_add(1) << 8) | (self.id as u64 + 1);
            // AcqRel: Acquire orders our walk after the previous holder's; Release is not
            // needed for others until we free the token, which is a Release store.
            let token_word = &area(&self.ring).release.0.token;
            if token_word.compare_exchange(token, mine, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                continue;
            }
            let walked = self.release_walk();
            // Release: pairs with the next holder's Acquire load; our cursor and ledger
            // stores come before.
            area(&self.ring).release.0.token.store(mine & !OWNER_BITS, Ordering::Release);
            // SeqCst: Dekker's pair with the fence after an acknowledgement.
            fence(Ordering::SeqCst);
            walked?;
            if !self.releasable_at_head()? {
                return Ok(());
            }
        }
    }

    /// Whether the frame at the release cursor could be released now.
    fn releasable_at_head(&self) -> Result<bool, Corruption> {
        let c = load_cursors(&self.ring)?;
        if c.release == c.take {
            return Ok(false);
        }
        let index = self.ring.data.index(c.release);
        // Relaxed: only decides whether to try again; the walk reloads with Acquire.
        let word = self.ring.data.atomic_word(index).load(Ordering::Relaxed);
        Ok(matches!(
            decode(&self.ring, c.release, word),
            Ok(Frame::Acked { .. } | Frame::Mpsc(Word::Padding | Word::Pass { .. }))
        ))
    }

    /// With the token: finishes a dead holder's recorded release, advances the release
    /// cursor over the releasable prefix, and (at most once per `SCAN_EVERY`) hands over
    /// a dead worker's record.
    fn release_walk(&mut self) -> Result<(), Corruption> {
        let ring = &self.ring;
        let mut c = load_cursors(ring)?;
        // A dead holder's release recorded past the cursor: finish it exactly.
        let (ledger, _) = ReleaseLedger::load(ring, c.release);
        // Relaxed: ordered after the Acquire load of the token (the dead holder's stores).
        let recorded = ring.cursor().releases[ledger.flip].position.load(Ordering::Relaxed);
        if recorded > c.release && recorded <= c.take && recorded - c.release <= ring.capacity && recorded % 8 == 0 {
            for pos in (c.release..recorded).step_by(8) {
                // Relaxed: published by the cursor store below.
                ring.data.atomic_word(ring.data.index(pos)).store(0, Ordering::Relaxed);
            }
            // Release: as in `ReleaseLedger::publish` (its slot and ledger are written).
            ring.cursor().read_cursor.store(recorded, Ordering::Release);
            c.release = recorded;
        }
        let (mut ledger, _) = ReleaseLedger::load(ring, c.release);
        let mut pos = c.release;
        // Pass 1: count and zero the payloads of the releasable prefix.
        while pos < c.take {
            let index = ring.data.index(pos);
            // Acquire: pairs with the Release store of the acknowledgement or marker.
            let word = ring.data.atomic_word(index).load(Ordering::Acquire);
            let framed = match decode(ring, pos, word)? {
                Frame::Acked { producer, len } => {
                    ledger.count_record(producer, len);
                    frame::framed_len_u32(len)
                }
                Frame::Mpsc(Word::Padding) => ring.capacity - index,
                Frame::Mpsc(Word::Pass { producer, framed, unblocked }) => {
                    if unblocked {
                        ledger.count_hole(producer);
                    }
                    framed
                }
                _ => break,
            };
            if pos + framed > c.take {
                return Err(Corruption { what: "frame past the take cursor", value: word, position: pos });
            }
            if framed > FRAME_HEADER {
                // SAFETY: the frame lies inside the region (checked by `decode`), below the take
                // cursor and acknowledged or passed: nobody reads or writes its payload any more.
                unsafe { ring.data.zero(index + FRAME_HEADER, framed - FRAME_HEADER) };
            }
            pos += framed;
        }
        if pos != c.release {
            ledger.write_pending(ring, pos);
            // Pass 2: the header words, each read for its extent, then zeroed.
            let mut at = c.release;
            while at < pos {
                let index = ring.data.index(at);
                // Relaxed: read back what pass 1 validated; only we write it now.
                let word = ring.data.atomic_word(index).load(Ordering::Relaxed);
                let framed = match decode(ring, at, word)? {
                    Frame::Acked { len, .. } => frame::framed_len_u32(len),
                    Frame::Mpsc(Word::Padding) => ring.capacity - index,
                    Frame::Mpsc(Word::Pass { framed, .. }) => framed,
                    _ => return Err(Corruption { what: "released frame changed", value: word, position: at }),
                };
                // Relaxed: published by the cursor store below.
                ring.data.atomic_word(index).store(0, Ordering::Relaxed);
                at += framed;
            }
            ledger.store_cursor(ring, pos);
            ledger.store_displayed(ring);
            if let Some(cells) = ring.counters() {
                // Release: as in `RingRefs::store_counter`.
                cells.cell(crate::stats::Counter::TotalConsumed).store(ledger.records, Ordering::Release);
                cells.cell(crate::stats::Counter::BytesConsumed).store(ledger.bytes, Ordering::Release);
            }
            wake_sleeper(ring.space_wake());
            c.release = pos;
        }
        if self.scan_due() {
            self.hand_over_dead(c)?;
        }
        Ok(())
    }

    fn scan_due(&mut self) -> bool {
        if cfg!(loom) {
            return true;
        }
        self.scan_looks = self.scan_looks.wrapping_add(1);
        if self.scan_looks % SCAN_LOOKS_PER_CLOCK != 1 && self.last_scan.is_some() {
            return false;
        }
        let due = self.last_scan.is_none_or(|t| t.elapsed() >= SCAN_EVERY);
        if due {
            self.last_scan = Some(Instant::now());
        }
        due
    }

    /// "Redelivery": with the token, finds a record taken by a dead worker and posts it.
    fn hand_over_dead(&mut self, c: Cursors) -> Result<(), Corruption> {
        let area = area(&self.ring);
        // Acquire: pairs with a taker's compare-and-swap that cleared it.
        if area.take.0.handoff.load(Ordering::Acquire) != 0 {
            return Ok(());
        }
        // Acquire: pairs with the Release halves of the take compare-and-swaps that followed
        // each intent store (the cursors were loaded after, with Acquire, too).
        let words: Vec<(usize, bool, u64)> = (0..MPMC_WORKERS)
            .flat_map(|w| {
                let slot = &area.workers[w].0;
                [(w, false, slot.holding.load(Ordering::Acquire)), (w, true, slot.orphan.load(Ordering::Acquire))]
            })
            .collect();
        for &(_, _, word) in &words {
            let Some(pos) = pending_position(word, c) else { continue };
            // Acquire: pairs with the commit's Release store.
            let frame_word = self.ring.data.atomic_word(self.ring.data.index(pos)).load(Ordering::Acquire);
            if !matches!(decode(&self.ring, pos, frame_word)?, Frame::Mpsc(Word::Committed { .. })) {
                continue;
            }
            let names = |&&(_, _, v): &&(usize, bool, u64)| v != 0 && v & !7 == pos;
            let held =
                words.iter().filter(names).any(|&(w, orphan, _)| !orphan && (w == self.id || (self.worker_alive)(w)));
            if held {
                continue;
            }
            for &(w, orphan, v) in words.iter().filter(names) {
                let slot = &area.workers[w].0;
                let cell = if orphan { &slot.orphan } else { &slot.holding };
                // AcqRel: a successor adopting the word at attach races us; one wins.
                if cell.compare_exchange(v, 0, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                    return Ok(());
                }
            }
            let release = &area.release.0;
            // Relaxed: a display counter; only the token holder writes it.
            release.handoffs.store(release.handoffs.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            // Release: pairs with the taker's Acquire load of the hand-off.
            area.take.0.handoff.store(pos | 1, Ordering::Release);
            wake_sleeper(self.ring.data_wake());
            return Ok(());
        }
        Ok(())
    }

    /// Step 3 of "Take": with the token, turns a dead producer's claim at the take cursor
    /// (equal to the release cursor) into hole markers. Whether it did.
    fn reclaim_hole(&mut self, pos: u64) -> Result<bool, Corruption> {
        let token_word = &area(&self.ring).release.0.token;
        // Acquire: as in `try_release`.
        let token = token_word.load(Ordering::Acquire);
        if token & OWNER_BITS != 0 {
            return Ok(false);
        }
        let mine = ((token >> 8).wrapping_add(1) << 8) | (self.id as u64 + 1);
        // AcqRel: as in `try_release`.
        if token_word.compare_exchange(token, mine, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return Ok(false);
        }
        let reclaimed = self.reclaim_hole_with_token(pos);
        // Release: as in `try_release`.
        token_word.store(mine & !OWNER_BITS, Ordering::Release);
        fence(Ordering::SeqCst);
        reclaimed
    }

    fn reclaim_hole_with_token(&self, pos: u64) -> Result<bool, Corruption> {
        let c = load_cursors(&self.ring)?;
        // With the token, neither cursor moves while they both sit on a claim in progress.
        if c.release != pos || c.take != pos {
            return Ok(false);
        }
        let super::mpsc::HeadClaim::Dead { producer, end } =
            head_claim(&self.ring, pos, c.claim, &*self.producer_alive)
        else {
            return Ok(false);
        };
        // The owner is dead; it may have committed just before dying: look again.
        fence(Ordering::SeqCst);
        // Acquire: pairs with a commit's Release store.
        let word = self.ring.data.atomic_word(self.ring.data.index(pos)).load(Ordering::Acquire);
        if !matches!(decode(&self.ring, pos, word)?, Frame::Mpsc(Word::Unwritten | Word::InFlight { .. })) {
            return Ok(true);
        }
        super::mpsc::write_hole(&self.ring, pos, producer, end)?;
        Ok(true)
    }

    /// Sleeps until the take cursor's frame changes or the claim cursor moves (or a
    /// hand-off is posted), or `timeout` passes.
    fn sleep_for_data(&mut self, timeout: Duration) {
        let ring = &self.ring;
        let Ok(c) = load_cursors(ring) else { return };
        let index = ring.data.index(c.take);
        let slept = sleep_unless_moved(ring.data_wake(), timeout, c.claim, || {
            // Relaxed: only decides whether to sleep; `take_once` reloads with Acquire.
            let word = ring.data.atomic_word(index).load(Ordering::Relaxed);
            let handoff = area(ring).take.0.handoff.load(Ordering::Relaxed);
            let take = area(ring).take.0.take_cursor.load(Ordering::Relaxed);
            // Acquire: pairs with the producers' compare-and-swaps.
            let now = ring.producer_line().write_cursor.load(Ordering::Acquire);
            let waiting = handoff == 0
                && take == c.take
                && matches!(decode(ring, c.take, word), Ok(Frame::Mpsc(Word::Unwritten | Word::InFlight { .. })));
            if waiting || (take == now && handoff == 0) { now } else { u64::MAX }
        });
        let _ = slept;
        self.stuck.look_again();
    }
}

/// The position a holding, orphan or hand-off word names, if that frame is taken and not
/// yet released (`release <= p < take`); `None` for `0` and for anything else.
fn pending_position(word: u64, c: Cursors) -> Option<u64> {
    let pos = word & !7;
    (word != 0 && word & 7 != 0 && pos >= c.release && pos < c.take && pos <= CURSOR_LIMIT).then_some(pos)
}

/// A record taken by one worker, borrowed in place. [`ack`](Job::ack) it when done;
/// dropping it acknowledges it as well.
pub struct Job<'a> {
    worker: &'a mut Worker,
    taken: Taken,
    done: bool,
}

impl std::fmt::Debug for Job<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mpmc::Job").field("taken", &self.taken).finish()
    }
}

impl Job<'_> {
    /// The application record type.
    pub fn record_type(&self) -> u32 {
        self.taken.record_type
    }

    /// The producer id that committed it.
    pub fn producer(&self) -> usize {
        self.taken.producer
    }

    /// The ring position of its frame.
    pub fn position(&self) -> u64 {
        self.taken.position
    }

    /// Whether a dead worker had taken it before (it may have been partly processed).
    pub fn redelivered(&self) -> bool {
        self.taken.redelivered
    }

    /// Acknowledges it: no other worker will get it; its space goes back to the producers
    /// once every record before it is acknowledged.
    pub fn ack(mut self) -> Result<(), Corruption> {
        self.done = true;
        let t = self.taken;
        self.worker.acknowledge(t)
    }
}

impl Job<'_> {
    /// Ends the job without acknowledging it: this worker keeps the record (no other
    /// worker gets it while this one lives) and its next take returns it again. Dropped
    /// or killed meanwhile, the worker's record goes to another worker, counted as
    /// redelivered ("A record kept for a retry" in the module docs).
    pub fn hold_for_retry(mut self) {
        self.done = true;
        self.worker.kept = Some(self.taken);
    }
}

impl Deref for Job<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let t = self.taken;
        // SAFETY: `take_once` validated the frame inside the region; committed, its producer
        // writes it no more, and nobody else reads or releases it until we acknowledge it.
        unsafe { self.worker.ring.data.slice(t.index + FRAME_HEADER, t.len as usize) }
    }
}

impl Drop for Job<'_> {
    fn drop(&mut self) {
        if !self.done {
            let t = self.taken;
            // A corrupt segment found while releasing is found again by the next take.
            let _ = self.worker.acknowledge(t);
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Release, before the role lock goes with `_attachment`: pairs with the Acquire
        // load in `worker_detached`.
        self.slot().detached.store(1, Ordering::Release);
    }
}

/// Whether worker `id`'s last holder detached cleanly (its lock may still be held for a
/// moment by a child being spawned: `participant::take_role_lock`).
pub(crate) fn worker_detached(ring: &RingRefs, id: usize) -> bool {
    // Acquire: pairs with the Release store in `Worker::drop`.
    area(ring).workers.get(id).is_some_and(|w| w.0.detached.load(Ordering::Acquire) == 1)
}

/// One worker id's row, as [`crate::Segment::mpmc_status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WorkerRow {
    /// The id.
    pub id: usize,
    /// Pid of its last holder (display only).
    pub pid: u64,
    /// Records returned to it.
    pub taken: u64,
    /// Records it acknowledged.
    pub acknowledged: u64,
    /// Records it received from a dead worker.
    pub redelivered: u64,
    /// The ring position of the record it holds, if any.
    pub holding: Option<u64>,
}

/// The rows of worker ids ever used, and the shared figures (reads only).
pub(crate) fn status(ring: &RingRefs) -> (Vec<WorkerRow>, u64, u64) {
    let area = area(ring);
    // Relaxed: display figures.
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let rows = area
        .workers
        .iter()
        .enumerate()
        .map(|(id, w)| {
            let w = &w.0;
            let holding = load(&w.holding);
            WorkerRow {
                id,
                pid: load(&w.pid),
                taken: load(&w.taken),
                acknowledged: load(&w.acknowledged),
                redelivered: load(&w.redelivered),
                holding: (holding & 7 != 0).then_some(holding & !7),
            }
        })
        .filter(|r| r.pid != 0)
        .collect();
    (rows, load(&area.take.0.take_cursor), load(&area.release.0.handoffs))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ring::heap::MpscHeapRing;

    fn ring(capacity: u64) -> MpscHeapRing {
        MpscHeapRing::new(capacity, crate::layout::max_payload_for(capacity), WaitStrategy::Spin).unwrap()
    }

    /// Takes and acknowledges until nothing came for 50 ms (long enough for the scans).
    fn drain(w: &mut Worker) -> Vec<(Vec<u8>, bool)> {
        let mut out = Vec::new();
        let mut deadline = Instant::now() + Duration::from_millis(50);
        while Instant::now() < deadline {
            match w.try_take() {
                Ok(job) => {
                    out.push((job.to_vec(), job.redelivered()));
                    job.ack().unwrap();
                    deadline = Instant::now() + Duration::from_millis(50);
                }
                Err(TryReadError::Empty) => std::hint::spin_loop(),
                Err(e) => panic!("{e}"),
            }
        }
        out
    }

    #[test]
    fn each_record_goes_to_exactly_one_worker() {
        let ring = ring(4096);
        let (mut p, mut a, mut b) = (ring.producer(0), ring.worker(0), ring.worker(1));
        for i in 0..6u8 {
            p.try_publish(&[i]).unwrap();
        }
        let (ja, jb) = (a.try_take().unwrap().to_vec(), b.try_take().unwrap().to_vec());
        assert_eq!((ja, jb), (vec![0], vec![1]));
        let mut got: Vec<_> = drain(&mut a).into_iter().chain(drain(&mut b)).map(|(d, _)| d[0]).collect();
        got.sort();
        assert_eq!(got, [2, 3, 4, 5]);
        assert_eq!((a.taken(), b.taken(), a.acknowledged() + b.acknowledged()), (5, 1, 6));
    }

    #[test]
    fn the_release_cursor_waits_for_an_unacknowledged_record_before_it() {
        let ring = ring(4096);
        let (mut p, mut a, mut b) = (ring.producer(0), ring.worker(0), ring.worker(1));
        p.try_publish(b"first").unwrap();
        p.try_publish(b"second").unwrap();
        let first = a.try_take().unwrap();
        b.try_take().unwrap().ack().unwrap();
        assert_eq!(ring.refs.cursor().read_cursor.load(Ordering::SeqCst), 0, "second is acked, first is not");
        first.ack().unwrap();
        assert_eq!(ring.refs.cursor().read_cursor.load(Ordering::SeqCst), 32);
        let (ledger, exact) = ReleaseLedger::load(&ring.refs, 32);
        assert!(exact);
        assert_eq!((ledger.records, ledger.tallies[0].consumed), (2, 2));
    }

    #[test]
    fn a_dead_workers_record_is_handed_to_another_exactly_once() {
        let ring = ring(4096);
        let (mut p, mut a, mut b) = (ring.producer(0), ring.worker(0), ring.worker(1));
        p.try_publish(b"held").unwrap();
        p.try_publish(b"next").unwrap();
        std::mem::forget(a.try_take().unwrap());
        ring.kill_worker(0);
        let got = drain(&mut b);
        assert_eq!(got, [(b"next".to_vec(), false), (b"held".to_vec(), true)]);
        assert_eq!(b.redelivered(), 1);
        assert_eq!(ring.refs.cursor().read_cursor.load(Ordering::SeqCst), 32, "everything released");
        assert!(drain(&mut b).is_empty(), "handed over once");
    }

    #[test]
    fn a_live_but_stalled_workers_record_is_never_taken_from_it() {
        let ring = ring(4096);
        let (mut p, mut a, mut b) = (ring.producer(0), ring.worker(0), ring.worker(1));
        p.try_publish(b"slow").unwrap();
        let job = a.try_take().unwrap();
        assert!(drain(&mut b).is_empty());
        assert_eq!(&*job, b"slow");
        job.ack().unwrap();
        assert_eq!(ring.refs.cursor().read_cursor.load(Ordering::SeqCst), 16);
    }

    #[test]
    fn a_record_held_for_a_retry_comes_back_to_its_worker_and_to_another_once_it_is_gone() {
        let ring = ring(4096);
        let (mut p, mut a, mut b) = (ring.producer(0), ring.worker(0), ring.worker(1));
        p.try_publish(b"refused").unwrap();
        p.try_publish(b"next").unwrap();
        a.try_take().unwrap().hold_for_retry();
        assert_eq!(drain(&mut b), [(b"next".to_vec(), false)], "b never gets a's kept record");
        let again = a.try_take().unwrap();
        assert_eq!((&*again, again.redelivered()), (&b"refused"[..], false));
        again.hold_for_retry();
        drop(a);
        ring.kill_worker(0);
        assert_eq!(drain(&mut b), [(b"refused".to_vec(), true)], "a's kept record outlives a");
        assert_eq!(ring.refs.cursor().read_cursor.load(Ordering::SeqCst), 32, "everything released");
    }

    #[test]
    fn a_successor_hands_its_dead_predecessors_record_over() {
        let ring = ring(4096);
        let (mut p, mut a) = (ring.producer(0), ring.worker(0));
        p.try_publish(b"held").unwrap();
        std::mem::forget(a.try_take().unwrap());
        drop(a);
        let mut a2 = ring.worker(0);
        assert_eq!(drain(&mut a2), [(b"held".to_vec(), true)]);
    }

    #[test]
    fn a_dead_producers_hole_at_the_take_cursor_is_passed_and_counted() {
        let ring = ring(4096);
        let (mut p, mut q, mut w) = (ring.producer(0), ring.producer(1), ring.worker(0));
        std::mem::forget(p.try_claim(3).unwrap());
        q.try_publish(b"after").unwrap();
        assert!(drain(&mut w).is_empty(), "producer 0 is alive: waited for");
        ring.kill(0);
        assert_eq!(drain(&mut w), [(b"after".to_vec(), false)]);
        let head = ring.refs.cursor().read_cursor.load(Ordering::SeqCst);
        let (ledger, _) = ReleaseLedger::load(&ring.refs, head);
        assert_eq!((ledger.tallies[0].unblocked, ledger.tallies[1].consumed), (1, 1));
    }

    #[test]
    fn a_full_ring_gets_its_space_back_through_the_workers() {
        let ring = ring(256);
        let (mut p, mut a, mut b) = (ring.producer(0), ring.worker(0), ring.worker(1));
        let mut got = 0;
        for round in 0..200u32 {
            while p.try_publish(&round.to_le_bytes()).is_err() {
                let w = if round % 2 == 0 { &mut a } else { &mut b };
                got += usize::from(w.try_take().map(|j| j.ack().unwrap()).is_ok());
            }
        }
        got += drain(&mut a).len() + drain(&mut b).len();
        assert_eq!(got, 200);
    }

    #[test]
    fn hostile_take_and_handoff_words_are_errors_not_panics() {
        let ring = ring(4096);
        let (mut p, mut w) = (ring.producer(0), ring.worker(0));
        p.try_publish(b"ok").unwrap();
        let area = area(&ring.refs);
        area.take.0.take_cursor.store(1 << 20, Ordering::SeqCst);
        assert!(matches!(w.try_take(), Err(TryReadError::Corrupt(_))));
        area.take.0.take_cursor.store(0, Ordering::SeqCst);
        area.take.0.handoff.store(4096 | 1, Ordering::SeqCst);
        assert!(matches!(w.try_take(), Err(TryReadError::Corrupt(_))));
        area.take.0.handoff.store(0, Ordering::SeqCst);
        ring.refs.data.atomic_word(0).store(frame::encode(5000, ACKED), Ordering::SeqCst);
        assert!(matches!(w.try_take(), Err(TryReadError::Corrupt(_))));
    }

    #[test]
    fn peek_marks_taken_records_skips_acknowledged_ones_and_shows_waiting_ones_in_take_order() {
        let ring = ring(4096);
        let (mut p, mut a, mut b) = (ring.producer(0), ring.worker(0), ring.worker(1));
        for r in [&b"first"[..], b"second", b"third"] {
            p.try_publish(r).unwrap();
        }
        let first = a.try_take().unwrap();
        b.try_take().unwrap().ack().unwrap();
        let view = peek(&ring.refs, 10, &|_| true).unwrap();
        let got: Vec<_> = view.records.iter().map(|r| (r.data.clone(), r.state, r.producer)).collect();
        assert_eq!(
            got,
            [
                (b"first".to_vec(), PeekedState::Taken { worker: Some(0) }, Some(0)),
                (b"third".to_vec(), PeekedState::Waiting, Some(0)),
            ]
        );
        assert_eq!(view.skipped.iter().map(|s| s.what).collect::<Vec<_>>(), ["acknowledged"]);
        first.ack().unwrap();
        // Nothing moved: the next take is the waiting record.
        assert_eq!(&*b.try_take().unwrap(), b"third");
    }

    #[test]
    fn peek_stops_at_an_uncommitted_claim_and_says_whose() {
        let ring = ring(4096);
        let (mut p, mut q) = (ring.producer(0), ring.producer(1));
        let claim = q.try_claim(4).unwrap();
        p.try_publish(b"later").unwrap();
        let view = peek(&ring.refs, 10, &|id| ring.is_alive(id)).unwrap();
        assert!(view.records.is_empty());
        let stop = view.stopped_at.expect("a stop");
        assert_eq!((stop.position, stop.waiting_for), (0, super::super::mpsc::HeadClaim::WaitingFor { producer: 1 }));
        drop(claim);
    }

    #[test]
    fn peek_of_hostile_words_is_an_error_never_a_panic() {
        let ring = ring(4096);
        let mut p = ring.producer(0);
        p.try_publish(b"ok").unwrap();
        for word in [frame::encode(5000, ACKED), frame::encode(64, ACKED), frame::encode(1, 0xFFFF_0000)] {
            ring.refs.data.atomic_word(0).store(word, Ordering::Relaxed);
            assert!(peek(&ring.refs, 10, &|_| true).is_err(), "{word:#x}");
        }
        ring.refs.data.atomic_word(0).store(frame::encode(2, super::super::mpsc::committed(0, 0)), Ordering::Relaxed);
        for take in [u64::MAX, 3, 4096 * 2] {
            area(&ring.refs).take.0.take_cursor.store(take, Ordering::Relaxed);
            assert!(peek(&ring.refs, 10, &|_| true).is_err(), "take cursor {take}");
        }
    }
}

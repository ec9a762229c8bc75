//! The single-producer, single-consumer ring.
//!
//! # Cursors
//! Positions are byte counts since the ring was created; they only grow and never wrap
//! in practice (2^64 bytes). The data index of position `p` is `p & (capacity - 1)`.
//! - `write_cursor` (producer line): one past the last committed frame. The producer
//!   writes frames at and beyond it, then stores it with `Release`.
//! - `read_cursor` (cursor slot 0): one past the last frame the consumer released. The
//!   consumer reads frames between it and `write_cursor`, then stores it with `Release`.
//!
//! Invariant: `read_cursor <= write_cursor <= read_cursor + capacity`. Each side keeps a
//! cached copy of the other's cursor in its handle and reloads it (with `Acquire`) only
//! when the cached value says "full" or "empty", so a busy ring touches no line it does
//! not own except when it has to.
//!
//! # Frames
//! See [`super::frame`]. A claim that would straddle the end of the ring first writes a
//! padding frame to the end and starts at index 0, so a claim needs `framed` bytes, or
//! `to_end + framed` when it wraps; with records at most `capacity/2 - 8` bytes an empty
//! ring always has room.
//!
//! # Claim, commit, publish
//! `try_claim` reserves space past `write_cursor` (local, nothing shared is written
//! except a padding frame beyond the cursor). `commit` writes the frame header and
//! advances the producer's local position; `publish` (immediately after `commit`, or
//! once per [`Batch`]) stores the statistics, the last-frame slot, then `write_cursor`
//! with `Release`. A producer killed before `publish` leaves nothing visible: its
//! successor resumes from `write_cursor` and overwrites the abandoned bytes. A torn
//! record can therefore never be read. A producer with a [`super::PublishHook`] (a file
//! segment's flush policy) calls it with the new frames before storing the cursor, once
//! the cursor is stored, and when it sees freed space before overwriting it
//! ([`super::PublishStep`]).
//!
//! # Durability
//! When the hook fails (a file segment's `msync` returned an error, [`FlushError`]):
//! - on the new frames: `write_cursor` is not stored, so no cursor, in memory or in the
//!   file, covers frames that may not be on disk; the commit or publish returns the error;
//! - on the cursor (after it was stored): the records are visible to the consumer but
//!   not known to be on disk; the commit or publish returns the error;
//! - on the read cursor that freed space: that space is not reused; the claim returns it.
//!
//! In every case the producer is poisoned: every later claim, commit or publish
//! returns the same error and touches nothing shared ([`Producer::flush_failure`] says
//! so too). It does not retry, because an `msync` error means the kernel may already
//! have dropped the dirty pages it could not write (their contents are unknown on disk)
//! and a retry could report success for bytes that never arrived. Records committed
//! and not published are abandoned: drop the producer and attach a new one (it resumes
//! after the last published record), or stop (`producerd` exits with 74).
//!
//! # Lazy release (the batching effect)
//! Storing `read_cursor` (with its release slot, the two consumed counters and the
//! wake-up check's fence) for every record read one at a time is most of a read's cost,
//! and the producer only looks at the cursor when its cached copy says "full". So a
//! dropped [`ReadGuard`] only advances the consumer's local position; the cursor is
//! stored for all the records read so far when the consumer has read everything it
//! knows was published (before it looks for more, waits or sleeps), when the ring as
//! last seen is more than three quarters full (the producer may be short of space),
//! when a quarter of the ring is waiting to be returned, at
//! [`Consumer::release_read`], and when the consumer is dropped. A consumer reading
//! one record at a time behind a faster producer thus stores its cursor once per
//! stretch of records it finds, not once per record; a consumer that keeps up with a
//! single record in flight (ping-pong) releases each record at once.
//!
//! The cost: if a consumer process dies, records it had read but not yet released are
//! delivered again to its successor (at least once, as for any record read but not
//! released when a reader dies). [`Consumer::read_batch_durable`] releases its records
//! in the same call, for exactly-once sinks.
//!
//! # Backing off from a stream
//! A consumer that reads one record at a time is usually faster than its producer, so
//! it keeps catching up. Every look at `write_cursor` then pulls the producer's line
//! into the consumer's cache, and the producer's next publish must take it back: a
//! cross-core round trip per record. So when its last look found two or more new
//! records (the producer publishes faster than the consumer looks), a blocking read
//! that has read them all pauses about a microsecond (`STREAM_BACKOFF_SPINS` in `ring::wait`) before
//! it looks again, and finds a longer stretch; a look that finds nothing ends it. A
//! consumer that keeps up with one record in flight (ping-pong, or a producer slower
//! than a microsecond per record) finds at most one record per look and never pauses,
//! so its latency is unchanged. Non-blocking calls never pause.
//!
//! # Waking (no lost wake-ups)
//! Each direction has a wake word (`data_wake`: the consumer sleeps there for data;
//! `space_wake`: the producer sleeps there for space). The sleeper stores `1` in the
//! word, issues `fence(SeqCst)`, re-checks the other side's cursor, sleeps with
//! `FUTEX_WAIT(word, 1)` only if nothing changed, and stores `0` when it wakes.
//!
//! The waker, after storing its cursor, issues `fence(SeqCst)` and loads the word; only
//! if it is non-zero does it store `0` and `FUTEX_WAKE`. The two fences order "announce,
//! then check" against "publish, then check": either the sleeper sees the new cursor, or
//! the waker sees the announcement, and because the waker changes the word before
//! waking, a sleeper that has not yet reached `FUTEX_WAIT` finds the word changed and
//! does not sleep. A busy ring therefore makes no syscall at all. Every sleep is bounded
//! by [`super::MAX_SLEEP`] and re-checks. A sleep that times out while the other side
//! had moved is counted in `*_missed_wakes` only when the waker is seen to have finished
//! its check and left the word set (it moved its cursor again): a real protocol bug
//! (tests assert the counters stay 0). A waker preempted, stopped or killed between its
//! cursor store and its check is not counted; see `missed_wake` for how the two differ.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use super::frame::{self, FRAME_HEADER, PADDING, RESERVED_TYPES};
use super::mpsc::ReleaseLedger;
use super::wait::{LocalCounters, Waiting, sleep_unless_moved, stream_backoff, wake_sleeper};
use super::{
    BatchError, ClaimError, Corruption, FlushError, PublishHook, PublishStep, ReadError, RingRefs, TryClaimError,
    TryReadError, WaitStrategy,
};
use crate::stats::Counter;
use crate::sync::{Ordering, fence};

/// The ordering of the store of `write_cursor` that publishes frames: `Release`. The loom
/// mutation `mutation-publish-relaxed` (a feature only CI's loom step turns on, to show
/// that the models fail without it) weakens it to `Relaxed`.
const PUBLISH_ORDERING: Ordering =
    if cfg!(feature = "mutation-publish-relaxed") { Ordering::Relaxed } else { Ordering::Release };

/// The producing end of a spsc ring. One per ring at a time (the segment enforces it
/// with a kernel lock), `Send` but not `Sync`.
pub struct Producer {
    ring: RingRefs,
    strategy: WaitStrategy,
    /// Next write position: committed frames end here (published or not).
    pos: u64,
    /// Last value stored in `write_cursor`.
    published: u64,
    /// Last `read_cursor` seen.
    cached_head: u64,
    /// Start of the last committed frame, `u64::MAX` when none.
    last_start: u64,
    /// Start of the last published frame, `u64::MAX` when none.
    last_published_start: u64,
    /// Which publish slot the next publish writes.
    flip: usize,
    counters: LocalCounters,
    hook: Option<PublishHook>,
    /// The hook's first failure: every later claim or publish returns it.
    poisoned: Option<FlushError>,
    _attachment: Option<crate::participant::Attachment>,
}

// SAFETY: the handle owns its local state; the shared memory it points to is kept alive
// by `ring._keep` (an `Arc` of `Send + Sync` owners) and is only accessed through atomics
// and protocol-owned byte ranges, which do not depend on the accessing thread.
unsafe impl Send for Producer {}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("position", &self.pos)
            .field("published", &self.published)
            .field("capacity", &self.ring.capacity)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// Resumes from the cursors in the segment. Fails if they are inconsistent.
    pub(crate) fn attach(
        ring: RingRefs,
        strategy: WaitStrategy,
        hook: Option<PublishHook>,
        attachment: Option<crate::participant::Attachment>,
    ) -> Result<Self, Corruption> {
        // Acquire: pairs with the Release stores of a previous producer and of the consumer.
        let tail = ring.producer_line().write_cursor.load(Ordering::Acquire);
        let head = ring.cursor().read_cursor.load(Ordering::Acquire);
        check_cursors(head, tail, ring.capacity)?;
        let mut counters = LocalCounters::load(&ring, &Counter::PRODUCER_SIDE);
        let (mut last_start, mut flip) = (u64::MAX, 0);
        let line = ring.producer_line();
        // The publish slot of the current cursor was written before the cursor, so it is
        // complete: its counts match the cursor exactly, however the predecessor died.
        // Relaxed: ordered after the Acquire load of write_cursor above.
        match current_slot(tail, |i| line.publishes[i].position.load(Ordering::Relaxed)) {
            CurrentSlot::Empty => counters.set_exact(&[(Counter::TotalProduced, 0), (Counter::BytesProduced, 0)]),
            CurrentSlot::Slot(i) => {
                let slot = &line.publishes[i];
                counters.set_exact(&[
                    (Counter::TotalProduced, slot.records.load(Ordering::Relaxed)),
                    (Counter::BytesProduced, slot.bytes.load(Ordering::Relaxed)),
                ]);
                let start = slot.last_frame.load(Ordering::Relaxed);
                if last_frame_at(&ring, start, tail).is_some() {
                    last_start = start;
                }
                flip = i ^ 1;
            }
            CurrentSlot::Unknown => {}
        }
        // Rewrite the displayed counts, in case the predecessor died between them and its cursor.
        counters.store(&ring, Counter::TotalProduced);
        counters.store(&ring, Counter::BytesProduced);
        Ok(Producer {
            ring,
            strategy,
            pos: tail,
            published: tail,
            cached_head: head,
            last_start,
            last_published_start: last_start,
            flip,
            counters,
            hook,
            poisoned: None,
            _attachment: attachment,
        })
    }

    /// Fault injection for tests (the `fault-injection` feature, off by default; without
    /// it this method does not exist and the wake path has no check): the next
    /// `FUTEX_WAKE` this process would issue on this ring's data word is dropped, as if
    /// lost, so that a test can show it catches a lost wake-up. The word is still
    /// cleared, so a consumer asleep in `FUTEX_WAIT` stays asleep until its sleep times out.
    #[cfg(all(feature = "fault-injection", not(loom)))]
    #[doc(hidden)]
    pub fn drop_next_wake(&mut self) {
        self.ring.data_wake().drop_next_wake();
    }

    /// The heap memory of an in-process ring.
    pub(crate) fn heap_owner(&self) -> Option<std::sync::Arc<super::heap::HeapSegment>> {
        self.ring.heap.clone()
    }

    /// Capacity of the ring's data region in bytes.
    pub fn capacity(&self) -> u64 {
        self.ring.capacity
    }

    /// Largest payload this ring accepts.
    pub fn max_record(&self) -> u64 {
        self.ring.max_record
    }

    /// The wait strategy of the blocking calls.
    pub fn wait_strategy(&self) -> WaitStrategy {
        self.strategy
    }

    /// Changes the wait strategy of the blocking calls.
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.strategy = strategy;
    }

    /// The last record the ring committed (by this producer or a predecessor), if it
    /// can still be found: how a restarted producer learns where its stream stopped.
    ///
    /// Returns `None` on a new ring, or when the bytes no longer hold that frame (they
    /// are validated, never trusted). Best effort: once the consumer has released that
    /// record, a claim that wrapped all the way round may have reused its bytes, and an
    /// application that must know its position for certain also keeps it in the records
    /// themselves (a sequence number and a checksum, as the generator does).
    pub fn last_committed(&self) -> Option<(u32, Vec<u8>)> {
        let f = last_frame_at(&self.ring, self.last_published_start, self.published)?;
        // SAFETY: `read_frame` checked the payload lies inside the region, and only this
        // producer writes the data region; it is not writing now (we hold `&self`).
        let bytes = unsafe { self.ring.data.slice(f.index + FRAME_HEADER, f.len as usize) };
        Some((f.record_type, bytes.to_vec()))
    }

    /// Claims space for a record of `len` payload bytes, without waiting.
    ///
    /// Write the payload through the returned [`Claim`], then [`Claim::commit`] it;
    /// dropping the claim abandons it and leaves the ring as it was.
    ///
    /// ```
    /// use shm_core::{Location, Segment, TryClaimError};
    ///
    /// let segment = Segment::builder(Location::Anon).capacity(4096).create()?;
    /// let mut producer = segment.producer()?;
    ///
    /// let mut claim = producer.try_claim(12)?; // 12 bytes of the ring, lent in place
    /// claim[..8].copy_from_slice(&42u64.to_le_bytes());
    /// claim[8..].copy_from_slice(&7u32.to_le_bytes());
    /// claim.set_record_type(1);
    /// claim.commit(); // now the consumer can see it
    ///
    /// drop(producer.try_claim(100)?); // abandoned: never seen
    /// assert!(matches!(producer.try_claim(4096), Err(TryClaimError::TooLarge { .. })));
    ///
    /// let mut consumer = segment.consumer()?;
    /// let record = consumer.try_read()?;
    /// assert_eq!((record.record_type(), record.len(), &record[..8]), (1, 12, &42u64.to_le_bytes()[..]));
    /// drop(record);
    /// assert!(consumer.try_read().is_err()); // the abandoned claim left nothing
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn try_claim(&mut self, len: usize) -> Result<Claim<'_>, TryClaimError> {
        self.claim_inner(len, false)
    }

    /// The flush policy's failure that poisoned this producer, if one did (see
    /// "Durability" in the module docs).
    pub fn flush_failure(&self) -> Option<&FlushError> {
        self.poisoned.as_ref()
    }

    /// Claims space for `len` payload bytes, waiting up to `timeout` (forever when `None`)
    /// with the handle's wait strategy.
    #[inline]
    pub fn claim(&mut self, len: usize, timeout: Option<Duration>) -> Result<Claim<'_>, ClaimError> {
        let need = self.need(len).map_err(need_error)?;
        if !self.fits(need).map_err(need_error)? {
            self.wait_until_fits(need, timeout)?;
        }
        Ok(self.claim_at(len, need, false))
    }

    /// Copies `data` into the ring as one record of type 0, without waiting.
    #[inline]
    pub fn try_publish(&mut self, data: &[u8]) -> Result<(), TryClaimError> {
        let mut claim = self.try_claim(data.len())?;
        claim.copy_from_slice(data);
        Ok(claim.commit()?)
    }

    /// Copies `data` into the ring as one record of type 0, waiting up to `timeout` for space.
    #[inline]
    pub fn publish(&mut self, data: &[u8], timeout: Option<Duration>) -> Result<(), ClaimError> {
        let mut claim = self.claim(data.len(), timeout)?;
        claim.copy_from_slice(data);
        Ok(claim.commit()?)
    }

    /// Starts a batch: claims inside it are committed locally and published together,
    /// with one cursor store and at most one wake-up, when the batch ends.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use shm_core::{Location, Segment, TryReadError};
    ///
    /// let segment = Segment::builder(Location::Anon).capacity(4096).create()?;
    /// let mut producer = segment.producer()?;
    /// let mut consumer = segment.consumer()?;
    ///
    /// let mut batch = producer.batch();
    /// batch.try_push(b"copied in")?;
    /// let mut claim = batch.try_claim(8)?; // or written in place
    /// claim.copy_from_slice(b"in place");
    /// claim.commit();
    /// assert!(matches!(consumer.try_read(), Err(TryReadError::Empty))); // not yet published
    /// batch.publish(); // (or drop it): one cursor store for both
    ///
    /// let mut seen = Vec::new();
    /// consumer.read_batch(16, |r| Ok::<_, Infallible>(seen.push(r.data.to_vec())))?;
    /// assert_eq!(seen, [&b"copied in"[..], b"in place"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn batch(&mut self) -> Batch<'_> {
        // A poisoned producer takes the checked path, which reports the failure.
        let limit = if self.poisoned.is_some() { self.pos } else { self.fast_limit() };
        Batch { producer: self, limit }
    }

    /// How far frames can be written from `pos` with no further check: to the end of the
    /// ring's current lap (no frame straddles it) and no further than the cached read
    /// cursor allows.
    fn fast_limit(&self) -> u64 {
        let lap_end = self.pos - self.ring.data.index(self.pos) + self.ring.capacity;
        lap_end.min(self.cached_head + self.ring.capacity)
    }

    /// Waits until a record of `len` payload bytes fits, up to `timeout`.
    pub fn wait_for_space(&mut self, len: usize, timeout: Option<Duration>) -> Result<(), ClaimError> {
        let need = self.need(len).map_err(need_error)?;
        if self.fits(need).map_err(need_error)? { Ok(()) } else { self.wait_until_fits(need, timeout) }
    }

    /// The waiting part of [`claim`](Self::claim) and [`wait_for_space`](Self::wait_for_space),
    /// out of line: `need` did not fit by the cached cursor.
    #[inline(never)]
    fn wait_until_fits(&mut self, need: (u64, u64, u64), timeout: Option<Duration>) -> Result<(), ClaimError> {
        self.count_block();
        // Whatever is committed must be visible before we wait for the consumer, or a
        // batch could wait for space that only its own unpublished records would free.
        self.publish_pending()?;
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
            if self.fits(need).map_err(need_error)? {
                return Ok(());
            }
        }
    }

    /// Bytes a claim of `len` needs from the current position, padding included.
    #[inline]
    fn need(&self, len: usize) -> Result<(u64, u64, u64), TryClaimError> {
        let len64 = len as u64;
        if len64 > self.ring.max_record {
            return Err(TryClaimError::TooLarge { len, max: self.ring.max_record });
        }
        let framed = frame::framed_len_u32(len as u32);
        let to_end = self.ring.capacity - self.ring.data.index(self.pos);
        Ok(if framed <= to_end { (framed, framed, to_end) } else { (to_end + framed, framed, to_end) })
    }

    /// Whether `need` bytes fit past the current position, reloading the consumer's
    /// cursor only when the cached copy says no. Never `Full`.
    #[inline]
    fn fits(&mut self, (need, _, _): (u64, u64, u64)) -> Result<bool, TryClaimError> {
        if let Some(failure) = &self.poisoned {
            return Err(failure.clone().into());
        }
        if self.free_space() >= need {
            return Ok(true);
        }
        // Acquire: pairs with the consumer's Release store in `Consumer::release_to`; the
        // consumer is done with every byte below `head` before we overwrite it.
        let head = self.ring.cursor().read_cursor.load(Ordering::Acquire);
        if head > self.published || self.pos - head > self.ring.capacity || head < self.cached_head {
            return Err(Corruption {
                what: "read cursor outside the committed range",
                value: head,
                position: self.pos,
            }
            .into());
        }
        if head > self.cached_head
            && let Some(hook) = self.hook.as_mut()
            && let Err(failure) = hook(PublishStep::Reclaimed { read_cursor: head })
        {
            // The freed space stays unused: the file's read cursor may still cover it.
            return Err(self.poison(failure).into());
        }
        self.cached_head = head;
        Ok(self.free_space() >= need)
    }

    /// Free bytes past `pos`, by the cached read cursor.
    fn free_space(&self) -> u64 {
        (self.cached_head + self.ring.capacity).saturating_sub(self.pos)
    }

    #[inline]
    fn claim_inner(&mut self, len: usize, batched: bool) -> Result<Claim<'_>, TryClaimError> {
        let need = self.need(len)?;
        if !self.fits(need)? {
            self.count_block();
            return Err(TryClaimError::Full);
        }
        Ok(self.claim_at(len, need, batched))
    }

    /// Claims `len` bytes at the current position, which `need` (from [`need`](Self::need))
    /// was seen to fit.
    #[inline]
    fn claim_at(&mut self, len: usize, need: (u64, u64, u64), batched: bool) -> Claim<'_> {
        let (_, framed, to_end) = need;
        let mut start = self.pos;
        if framed > to_end {
            // Fill the space to the end with one padding frame; its length field counts
            // the bytes after its header, so its framed size is exactly `to_end`.
            let index = self.ring.data.index(start);
            self.ring.data.write_word(index, frame::encode((to_end - FRAME_HEADER) as u32, PADDING));
            start += to_end;
        }
        self.ring.data.track(self.ring.data.index(start), framed, true);
        Claim { producer: self, start, len: len as u32, record_type: 0, batched }
    }

    fn count_block(&mut self) {
        self.counters.bump(&self.ring, Counter::ProducerBlocks);
    }

    /// Finishes a claim: writes its frame header and advances the local position.
    #[inline]
    fn commit_frame(&mut self, start: u64, len: u32, record_type: u32) {
        let index = self.ring.data.index(start);
        self.ring.data.write_word(index, frame::encode(len, record_type));
        self.ring.data.track(index, u64::from(len) + FRAME_HEADER, true);
        // Cannot overflow: the space was checked before the payload was written.
        self.pos = start + frame::framed_len_u32(len);
        self.last_start = start;
        self.counters.add(Counter::TotalProduced, 1);
        self.counters.add(Counter::BytesProduced, u64::from(len));
    }

    /// Remembers the hook's failure for every later call, and returns it.
    #[cold]
    fn poison(&mut self, failure: FlushError) -> FlushError {
        self.poisoned = Some(failure.clone());
        failure
    }

    /// Makes every committed frame visible to the consumer and wakes it if it sleeps.
    /// If the hook fails on the frames, the cursor is not stored; if it fails on the
    /// cursor, the records are visible but not known durable. Either poisons the producer.
    fn publish_pending(&mut self) -> Result<(), FlushError> {
        if let Some(failure) = &self.poisoned {
            return Err(failure.clone());
        }
        if self.pos == self.published {
            return Ok(());
        }
        if let Some(hook) = self.hook.as_mut()
            && let Err(failure) = hook(PublishStep::Written { from: self.published, to: self.pos })
        {
            return Err(self.poison(failure));
        }
        let line = self.ring.producer_line();
        // Stored before the cursor, so a reader never sees a record consumed before it
        // is counted as produced.
        self.counters.store(&self.ring, Counter::TotalProduced);
        self.counters.store(&self.ring, Counter::BytesProduced);
        // Relaxed: published by the Release store of write_cursor just below; a successor
        // uses this slot only if it sees that store.
        let slot = &line.publishes[self.flip];
        slot.records.store(self.counters.get(Counter::TotalProduced), Ordering::Relaxed);
        slot.bytes.store(self.counters.get(Counter::BytesProduced), Ordering::Relaxed);
        slot.last_frame.store(self.last_start, Ordering::Relaxed);
        slot.position.store(self.pos, Ordering::Relaxed);
        // Release: pairs with the consumer's Acquire load of write_cursor; every frame
        // byte below `pos` is visible to a consumer that sees the new cursor.
        line.write_cursor.store(self.pos, PUBLISH_ORDERING);
        self.flip ^= 1;
        self.published = self.pos;
        self.last_published_start = self.last_start;
        if wake_sleeper(self.ring.data_wake()) {
            self.counters.bump(&self.ring, Counter::ProducerWakes);
        }
        if let Some(hook) = self.hook.as_mut()
            && let Err(failure) = hook(PublishStep::Published)
        {
            return Err(self.poison(failure));
        }
        Ok(())
    }

    /// Sleeps until the consumer frees space (its cursor moves) or `timeout` passes.
    fn sleep_for_space(&mut self, timeout: Duration) {
        let (ring, head) = (&self.ring, self.cached_head);
        // Acquire: pairs with the consumer's Release store of read_cursor (what
        // `missed_wake` needs; `fits` reloads it anyway).
        let slept =
            sleep_unless_moved(ring.space_wake(), timeout, head, || ring.cursor().read_cursor.load(Ordering::Acquire));
        self.counters.record_sleep(&self.ring, slept, Counter::ProducerSleeps, Counter::ProducerMissedWakes);
    }
}

/// Space claimed in the ring for one record. Write the payload through `DerefMut`,
/// then [`commit`](Claim::commit). Dropping it uncommitted abandons the space.
#[must_use = "a claim is abandoned unless committed"]
pub struct Claim<'a> {
    producer: &'a mut Producer,
    start: u64,
    len: u32,
    record_type: u32,
    batched: bool,
}

impl std::fmt::Debug for Claim<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim").field("position", &self.start).field("len", &self.len).finish()
    }
}

impl Claim<'_> {
    /// Sets the record type (an application value below `0xFFFF_0000`; default 0).
    ///
    /// # Panics
    /// If `record_type` is in the reserved range: that is a bug in the caller.
    pub fn set_record_type(&mut self, record_type: u32) {
        assert!(record_type < RESERVED_TYPES, "record types from 0xFFFF_0000 are reserved");
        self.record_type = record_type;
    }

    /// The ring position of this record.
    pub fn position(&self) -> u64 {
        self.start
    }

    /// Commits the whole claimed length (and publishes it, outside a [`Batch`]).
    ///
    /// An error comes only from a file segment's flush policy: the record is not
    /// published (or, when the cursor's own `msync` failed, published but not known to
    /// be on disk), and the producer is poisoned ("Durability" in the module docs).
    #[inline]
    pub fn commit(self) -> Result<(), FlushError> {
        let len = self.len;
        self.commit_len(len as usize)
    }

    /// Commits only the first `len` bytes (for a claim sized for the largest possible
    /// record, such as a datagram buffer).
    ///
    /// # Panics
    /// If `len` is larger than the claim.
    /// Errors as for [`commit`](Self::commit).
    #[inline]
    pub fn commit_len(self, len: usize) -> Result<(), FlushError> {
        assert!(len <= self.len as usize, "commit_len({len}) exceeds the claim of {} bytes", self.len);
        let (start, record_type, batched) = (self.start, self.record_type, self.batched);
        let producer = self.producer;
        producer.commit_frame(start, len as u32, record_type);
        if batched { Ok(()) } else { producer.publish_pending() }
    }
}

impl Deref for Claim<'_> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        let ring = &self.producer.ring;
        // SAFETY: the claim owns `index + 8 .. index + 8 + len`, inside the region (the
        // frame does not straddle the end); nobody else touches it until commit.
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

/// Several records published together: one cursor store, at most one wake-up.
/// Publishes what was committed when dropped (or at [`Batch::publish`]).
///
/// [`try_push`](Batch::try_push) has a fast path: while frames fit below `limit` (the
/// end of the ring's lap, and the space the cached read cursor leaves), a record is a
/// copy and a commit, with no space or wrap check.
pub struct Batch<'a> {
    producer: &'a mut Producer,
    /// Frames ending at or below this position need no space or wrap check.
    limit: u64,
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("producer", &self.producer).finish()
    }
}

impl Batch<'_> {
    /// Claims space for one record in the batch, without waiting.
    #[inline]
    pub fn try_claim(&mut self, len: usize) -> Result<Claim<'_>, TryClaimError> {
        self.producer.claim_inner(len, true)
    }

    /// Copies `data` in as one record of type 0, without waiting.
    #[inline]
    pub fn try_push(&mut self, data: &[u8]) -> Result<(), TryClaimError> {
        let p = &mut *self.producer;
        if let Ok(len) = u32::try_from(data.len())
            && u64::from(len) <= p.ring.max_record
        {
            let framed = frame::framed_len_u32(len);
            let start = p.pos;
            if start + framed <= self.limit {
                let index = p.ring.data.index(start);
                p.ring.data.track(index, framed, true);
                // SAFETY: `start + framed <= limit` puts the frame inside the current lap
                // (the region) and inside the space the consumer has released; only this
                // producer writes there, and nothing below `pos` is published until the
                // batch ends.
                unsafe { p.ring.data.slice_mut(index + FRAME_HEADER, data.len()) }.copy_from_slice(data);
                p.commit_frame(start, len, 0);
                return Ok(());
            }
        }
        self.push_checked(data)
    }

    /// [`try_push`](Self::try_push) past the fast path's limit: the full checks (a
    /// record too large, a full ring, a wrap with its padding frame), then a new limit.
    #[inline(never)]
    fn push_checked(&mut self, data: &[u8]) -> Result<(), TryClaimError> {
        let mut claim = self.producer.claim_inner(data.len(), true)?;
        claim.copy_from_slice(data);
        claim.commit()?; // In a batch: local, never fails.
        self.limit = self.producer.fast_limit();
        Ok(())
    }

    /// Publishes the committed records now. Errors as for [`Claim::commit`]; a batch
    /// that is just dropped leaves such a failure to the producer's next call.
    pub fn publish(self) -> Result<(), FlushError> {
        self.producer.publish_pending()
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        // Nothing left after `publish`. A failure poisons the producer, which reports it
        // at its next call.
        let _ = self.producer.publish_pending();
    }
}

/// The consuming end of a spsc ring. One per ring at a time, `Send` but not `Sync`.
pub struct Consumer {
    ring: RingRefs,
    strategy: WaitStrategy,
    /// Next frame to read (padding already skipped locally).
    pos: u64,
    /// Last value stored in `read_cursor`.
    released: u64,
    /// End of the last record read one at a time (its guard dropped); the records
    /// between `released` and here are read but not yet released. See "Lazy release" in
    /// the module docs. A batch in progress reads past it without moving it.
    read_to: u64,
    /// Last `write_cursor` seen.
    cached_tail: u64,
    /// Records read since `write_cursor` was last loaded: once they are all read, how
    /// many that look found ("Backing off from a stream" in the module docs).
    stretch: u64,
    /// Which release slot the next release writes.
    flip: usize,
    counters: LocalCounters,
    _attachment: Option<crate::participant::Attachment>,
}

// SAFETY: as for `Producer`.
unsafe impl Send for Consumer {}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("position", &self.pos)
            .field("capacity", &self.ring.capacity)
            .finish_non_exhaustive()
    }
}

/// One committed record, borrowed in place from the ring.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The payload.
    pub data: &'a [u8],
    /// The record type.
    pub record_type: u32,
    /// The ring position of its frame.
    pub position: u64,
}

impl Consumer {
    /// Resumes from the cursors in the segment. Fails if they are inconsistent.
    pub(crate) fn attach(
        ring: RingRefs,
        strategy: WaitStrategy,
        attachment: Option<crate::participant::Attachment>,
    ) -> Result<Self, Corruption> {
        // Acquire: pairs with the Release stores of both sides.
        let head = ring.cursor().read_cursor.load(Ordering::Acquire);
        let tail = ring.producer_line().write_cursor.load(Ordering::Acquire);
        check_cursors(head, tail, ring.capacity)?;
        let mut counters = LocalCounters::load(&ring, &Counter::CONSUMER_SIDE);
        // As for the producer: the release slot of the current cursor is complete. No slot
        // matching (a damaged segment) keeps the counters as stored.
        let (released, exact) = ReleaseLedger::load(&ring, head);
        if exact {
            counters.set_exact(&[(Counter::TotalConsumed, released.records), (Counter::BytesConsumed, released.bytes)]);
        }
        let flip = released.flip;
        counters.store(&ring, Counter::TotalConsumed);
        counters.store(&ring, Counter::BytesConsumed);
        Ok(Consumer {
            ring,
            strategy,
            pos: head,
            released: head,
            read_to: head,
            cached_tail: tail,
            stretch: 0,
            flip,
            counters,
            _attachment: attachment,
        })
    }

    /// Capacity of the ring's data region in bytes.
    pub fn capacity(&self) -> u64 {
        self.ring.capacity
    }

    /// The wait strategy of the blocking calls.
    pub fn wait_strategy(&self) -> WaitStrategy {
        self.strategy
    }

    /// Changes the wait strategy of the blocking calls.
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.strategy = strategy;
    }

    /// The position of the next record to read.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Borrows the next committed record in place, without waiting. Dropping the guard
    /// marks it read (its space goes back to the producer, see "Lazy release" in the
    /// module docs); [`ReadGuard::unread`] keeps it.
    #[inline]
    pub fn try_read(&mut self) -> Result<ReadGuard<'_>, TryReadError> {
        match self.next_frame()? {
            Some(f) => Ok(self.guard(f)),
            None => {
                self.count_block();
                Err(TryReadError::Empty)
            }
        }
    }

    /// Borrows the next committed record, waiting up to `timeout` (forever when `None`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use shm_core::{Location, ReadError, Segment};
    ///
    /// let segment = Segment::builder(Location::Anon).capacity(4096).create()?;
    /// let mut consumer = segment.consumer()?;
    /// let timeout = Some(Duration::from_millis(10));
    /// assert!(matches!(consumer.read(timeout), Err(ReadError::TimedOut(_))));
    ///
    /// let mut producer = segment.producer()?;
    /// let writer = std::thread::spawn(move || producer.publish(b"late", None));
    /// let record = consumer.read(Some(Duration::from_secs(5)))?; // sleeps until it is there
    /// assert_eq!(&*record, b"late");
    /// record.unread(); // keep it: the next read returns it again
    /// assert_eq!(&*consumer.read(timeout)?, b"late");
    /// writer.join().unwrap()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn read(&mut self, timeout: Option<Duration>) -> Result<ReadGuard<'_>, ReadError> {
        let f = self.wait_frame(timeout)?;
        Ok(self.guard(f))
    }

    /// Waits until a record is available, up to `timeout` (forever when `None`).
    pub fn wait_for_data(&mut self, timeout: Option<Duration>) -> Result<(), ReadError> {
        self.wait_frame(timeout).map(drop)
    }

    /// Waits for the next data frame, up to `timeout`.
    fn wait_frame(&mut self, timeout: Option<Duration>) -> Result<DataFrame, ReadError> {
        if self.backs_off() {
            stream_backoff();
        }
        if let Some(f) = self.next_frame()? {
            return Ok(f);
        }
        self.count_block();
        let mut waiting = Waiting::new(self.strategy, timeout);
        loop {
            waiting.turn(self.strategy, |d| Ok(self.sleep_for_data(d)?), ReadError::TimedOut)?;
            if let Some(f) = self.next_frame()? {
                return Ok(f);
            }
        }
    }

    /// Hands every available record (at most `max`) to `sink` in order, then releases
    /// the accepted ones with one cursor store. A refused record and the ones after it
    /// stay in the ring. Returns how many were accepted; `0` when the ring was empty.
    pub fn read_batch<E>(
        &mut self,
        max: usize,
        sink: impl FnMut(Record<'_>) -> Result<(), E>,
    ) -> Result<usize, BatchError<E>> {
        self.read_batch_durable(max, sink, |_| Ok(()))
    }

    /// Like [`read_batch`](Self::read_batch), but calls `before_release` with the
    /// position the read cursor is about to move to, after the sink accepted the
    /// records and before they are released: the place for a sink to make them
    /// durable (flush, fsync, record its progress). If it fails, nothing is released
    /// and the same records are delivered again.
    ///
    /// ```
    /// use std::io::Write;
    /// use shm_core::{BatchError, Location, Segment};
    ///
    /// let segment = Segment::builder(Location::Anon).capacity(4096).create()?;
    /// let mut producer = segment.producer()?;
    /// let mut consumer = segment.consumer()?;
    /// producer.try_publish(b"a")?;
    /// producer.try_publish(b"b")?;
    ///
    /// // A sink that appends to a file, and syncs it before the ring forgets the records.
    /// let mut out = Vec::new(); // stands for a std::fs::File
    /// let mut sync_fails = true;
    /// let mut deliver = |out: &mut Vec<u8>, sync_fails: bool| {
    ///     consumer.read_batch_durable(
    ///         64,
    ///         |r| out.write_all(r.data),
    ///         |_next_position| if sync_fails { Err(std::io::Error::other("fsync failed")) } else { Ok(()) },
    ///     )
    /// };
    /// assert!(matches!(deliver(&mut out, sync_fails), Err(BatchError::Sink { .. })));
    /// out.clear(); // the caller rolls its side back: the ring will deliver them again
    /// sync_fails = false;
    /// assert_eq!(deliver(&mut out, sync_fails)?, 2);
    /// assert_eq!(out, b"ab");
    /// assert_eq!(segment.stats().total_consumed, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_batch_durable<E>(
        &mut self,
        max: usize,
        mut sink: impl FnMut(Record<'_>) -> Result<(), E>,
        before_release: impl FnOnce(u64) -> Result<(), E>,
    ) -> Result<usize, BatchError<E>> {
        let mut accepted = 0;
        let mut bytes = 0u64;
        // If the sink or the hook panics, the guard puts the position back when it drops,
        // so a caller that catches the panic and keeps the consumer gets the same records
        // again: nothing the hook did not see is ever released.
        let mut batch = Rewind { start: self.pos, consumer: self };
        let this = &mut *batch.consumer;
        let outcome = loop {
            if accepted == max {
                break Ok(());
            }
            let f = match this.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break Ok(()),
                Err(c) => break Err(BatchError::Corrupt(c)),
            };
            // SAFETY: `read_frame` checked that the payload lies inside the region and
            // below the published cursor; the producer does not write it until we release.
            let data = unsafe { this.ring.data.slice(f.index + FRAME_HEADER, f.len as usize) };
            if let Err(error) = sink(Record { data, record_type: f.record_type, position: f.position }) {
                break Err(BatchError::Sink { accepted, error });
            }
            this.ring.data.track(f.index, u64::from(f.len) + FRAME_HEADER, false);
            accepted += 1;
            bytes += u64::from(f.len);
            this.pos = f.next;
        };
        this.stretch += accepted as u64;
        if accepted == 0 {
            if outcome.is_ok() {
                this.count_block();
            }
            // No sink saw a record: keep the padding skipped, if any.
            batch.start = batch.consumer.pos;
            return outcome.map(|()| 0);
        }
        // `pos` is at the first record not accepted (padding before it already skipped,
        // which is harmless to release with the rest).
        if let Err(error) = before_release(this.pos) {
            return Err(BatchError::Sink { accepted: 0, error });
        }
        let end = this.pos;
        batch.start = end;
        let this = &mut *batch.consumer;
        this.release_to(end, accepted as u64, bytes);
        outcome.map(|()| accepted)
    }

    /// The data frame at `pos`, validated, or `None` when the ring is empty. Reloads
    /// `write_cursor` only when the cached copy says empty, and skips padding frames
    /// locally. Each frame header is read and checked once, here.
    #[inline]
    fn next_frame(&mut self) -> Result<Option<DataFrame>, Corruption> {
        loop {
            if self.pos == self.cached_tail && !self.refresh_tail()? {
                return Ok(None);
            }
            match read_frame(&self.ring, self.pos, self.cached_tail)? {
                Frame::Padding { next } => self.pos = next,
                Frame::Data(f) => return Ok(Some(f)),
            }
        }
    }

    /// Everything known is read: returns the space of the records read one at a time
    /// (not of a batch in progress, which its end releases), then reloads
    /// `write_cursor`. Whether there is more to read.
    #[inline(never)]
    fn refresh_tail(&mut self) -> Result<bool, Corruption> {
        // Before looking for more, waiting or sleeping, so a producer waiting for space
        // is never kept waiting by a lazy release.
        self.release_read();
        // Acquire: pairs with the producer's Release store in `publish_pending`; the
        // frames below `tail` are fully written before we read them.
        let tail = self.ring.producer_line().write_cursor.load(Ordering::Acquire);
        if tail < self.cached_tail || tail > CURSOR_LIMIT || tail - self.pos > self.ring.capacity || tail % 8 != 0 {
            return Err(Corruption { what: "write cursor outside the ring", value: tail, position: self.pos });
        }
        self.cached_tail = tail;
        self.stretch = 0;
        Ok(tail != self.pos)
    }

    /// Whether a blocking read pauses before it looks for more: it has read everything
    /// its last look at `write_cursor` found, and that was two or more records.
    #[inline]
    fn backs_off(&self) -> bool {
        self.stretch >= 2 && self.pos == self.cached_tail
    }

    #[inline]
    fn guard(&mut self, f: DataFrame) -> ReadGuard<'_> {
        ReadGuard { consumer: self, index: f.index, len: f.len, record_type: f.record_type, next: f.next, keep: false }
    }

    fn count_block(&mut self) {
        self.counters.bump(&self.ring, Counter::ConsumerBlocks);
    }

    /// Gives the bytes below `pos` back to the producer and wakes it if it sleeps.
    /// Records read earlier with [`read`](Self::read) whose space was not yet returned
    /// (see "Lazy release" in the module docs) are released with them.
    #[inline(never)]
    fn release_to(&mut self, pos: u64, records: u64, bytes: u64) {
        // Records read one at a time were counted as they were read: the counters reach
        // the segment only here, with the cursor that releases them.
        self.counters.add(Counter::TotalConsumed, records);
        self.counters.add(Counter::BytesConsumed, bytes);
        // Stored (with Release) before the cursor, as the producer stores its totals
        // before its cursor: we have seen the produced totals that cover these records,
        // so a reader that loads these with Acquire never sees more consumed than
        // produced (`stats::read_values`, and the loom model of it).
        self.counters.store(&self.ring, Counter::TotalConsumed);
        self.counters.store(&self.ring, Counter::BytesConsumed);
        let cursor = self.ring.cursor();
        // Relaxed: published by the Release store of read_cursor just below; a successor
        // uses this slot only if it sees that store.
        let slot = &cursor.releases[self.flip];
        slot.records.store(self.counters.get(Counter::TotalConsumed), Ordering::Relaxed);
        slot.bytes.store(self.counters.get(Counter::BytesConsumed), Ordering::Relaxed);
        slot.position.store(pos, Ordering::Relaxed);
        // Release: pairs with the producer's Acquire load of read_cursor in `fits`; we
        // are done reading every byte below `pos`.
        cursor.read_cursor.store(pos, Ordering::Release);
        self.flip ^= 1;
        self.released = pos;
        self.read_to = pos;
        if wake_sleeper(self.ring.space_wake()) {
            self.counters.bump(&self.ring, Counter::ConsumerWakes);
        }
    }

    /// Gives the space of every record read so far back to the producer now. Dropping a
    /// [`ReadGuard`] does this lazily (see "Lazy release" in the module docs); so does
    /// dropping the consumer.
    pub fn release_read(&mut self) {
        if self.read_to != self.released {
            self.release_to(self.read_to, 0, 0);
        }
    }

    /// A dropped guard's record (`len` payload bytes, next frame at `next`) counts as
    /// read; its space is returned now only if the consumer has caught up with what it
    /// knows the producer published, if the producer may be short of space, or if a
    /// quarter of the ring is waiting to be returned.
    #[inline]
    fn finish_read(&mut self, next: u64, len: u32) {
        self.pos = next;
        self.read_to = next;
        self.stretch += 1;
        self.counters.add(Counter::TotalConsumed, 1);
        self.counters.add(Counter::BytesConsumed, u64::from(len));
        let quarter = self.ring.capacity / 4;
        if next == self.cached_tail
            || self.cached_tail - self.released > self.ring.capacity - quarter
            || next - self.released >= quarter
        {
            self.release_to(next, 0, 0);
        }
    }

    /// Sleeps until the producer publishes (its cursor moves) or `timeout` passes.
    fn sleep_for_data(&mut self, timeout: Duration) -> Result<(), Corruption> {
        let (ring, tail) = (&self.ring, self.cached_tail);
        // Acquire: pairs with the producer's Release store of write_cursor (what
        // `missed_wake` needs; `next_frame` reloads it anyway).
        let slept = sleep_unless_moved(ring.data_wake(), timeout, tail, || {
            ring.producer_line().write_cursor.load(Ordering::Acquire)
        });
        self.counters.record_sleep(&self.ring, slept, Counter::ConsumerSleeps, Counter::ConsumerMissedWakes);
        Ok(())
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.release_read();
    }
}

/// A batch in progress: puts the consumer's position back to `start` when dropped. A
/// batch that ends normally moves `start` to what it releases first; one that returns
/// early or unwinds leaves it at the batch's start, so its records are read again.
struct Rewind<'a> {
    consumer: &'a mut Consumer,
    start: u64,
}

impl Drop for Rewind<'_> {
    fn drop(&mut self) {
        self.consumer.pos = self.start;
    }
}

/// A committed record borrowed in place. Dropping it marks it read, and its space goes
/// back to the producer (at once or a little later: "Lazy release" in the module docs),
/// unless [`unread`](ReadGuard::unread) puts it back.
pub struct ReadGuard<'a> {
    consumer: &'a mut Consumer,
    index: u64,
    len: u32,
    record_type: u32,
    next: u64,
    keep: bool,
}

impl std::fmt::Debug for ReadGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadGuard")
            .field("position", &self.consumer.pos)
            .field("len", &self.len)
            .field("record_type", &self.record_type)
            .finish()
    }
}

impl ReadGuard<'_> {
    /// The record type.
    pub fn record_type(&self) -> u32 {
        self.record_type
    }

    /// The ring position of this record's frame.
    pub fn position(&self) -> u64 {
        self.consumer.pos
    }

    /// Marks the record read (the same as dropping the guard); its space goes back to the
    /// producer as "Lazy release" in the module docs says. [`Consumer::release_read`]
    /// returns it at once.
    pub fn release(self) {}

    /// Leaves the record in the ring: the next read returns it again.
    pub fn unread(mut self) {
        self.keep = true;
    }
}

impl Deref for ReadGuard<'_> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: `frame_at_pos` validated the frame inside the region and below the
        // published cursor; the producer cannot reuse it until this guard releases it.
        unsafe { self.consumer.ring.data.slice(self.index + FRAME_HEADER, self.len as usize) }
    }
}

impl Drop for ReadGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        if !self.keep {
            self.consumer.ring.data.track(self.index, u64::from(self.len) + FRAME_HEADER, false);
            self.consumer.finish_read(self.next, self.len);
        }
    }
}

/// A copy of a record taken by [`crate::Segment::peek`] without consuming it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeekedRecord {
    /// The ring position of its frame.
    pub position: u64,
    /// The record type.
    pub record_type: u32,
    /// A copy of the payload.
    pub data: Vec<u8>,
    /// The producer id that committed it (mpsc and mpmc rings; `None` for the others).
    pub producer: Option<usize>,
    /// Its sequence number (broadcast rings: records committed before it; `None` for the others).
    pub seq: Option<u64>,
    /// Where it is in its delivery (only mpmc rings have records taken and not yet acknowledged).
    pub state: PeekedState,
}

/// Where a peeked record is in its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum PeekedState {
    /// No consumer has it yet: it is what the next read (or take) returns.
    Waiting,
    /// An mpmc worker took it and has not acknowledged it. `worker` is the id whose
    /// holding word names it (`None` when none does: a dead worker's record posted for
    /// hand-off, or a take that moved on meanwhile).
    Taken {
        /// The worker id.
        worker: Option<usize>,
    },
}

/// How many times [`peek`] starts again when the consumer overtook it before it had
/// copied anything: enough for any real stream, and a bound on what a hostile cursor
/// that keeps moving can cost.
pub(crate) const PEEK_ATTEMPTS: u32 = 1000;

/// Copies up to `max` committed, unreleased records, oldest first, without writing to
/// the ring (it works on a read-only mapping).
///
/// The consumer may release a record while it is being copied, and the producer may
/// then overwrite it, so nothing is trusted until it is checked against the read cursor
/// afterwards: each frame (header and payload) is copied out with volatile word reads
/// (never lent as a `&[u8]`), then `fence(Acquire)`, then the read cursor is loaded
/// again. If it has passed the frame, the copy, or the error the frame gave, may come
/// from overwritten bytes: the records copied before it are returned, or, if there are
/// none, peek starts again from the new read cursor (at most [`PEEK_ATTEMPTS`] times,
/// then it returns nothing: the ring moved too fast to catch a record). A frame that
/// is wrong while the cursor has not passed it is corruption.
///
/// Why the re-check is sound: the producer writes into released space only after its
/// Acquire load of the read cursor saw it released, so a frame read that saw the new
/// bytes was preceded, for every observer, by the cursor store that released them
/// (x86-64 is TSO; AArch64 is other-multi-copy-atomic), and the Acquire fence keeps the
/// frame reads from being satisfied after the cursor load. The language's memory model
/// does not cover a race on plain bytes, which is why the bytes are copied with volatile
/// reads and never trusted unchecked.
pub(crate) fn peek(ring: &RingRefs, max: usize) -> Result<Vec<PeekedRecord>, Corruption> {
    for _ in 0..PEEK_ATTEMPTS {
        if let Some(records) = peek_once(ring, max)? {
            return Ok(records);
        }
    }
    Ok(Vec::new())
}

/// One pass of [`peek`] from the current read cursor; `None` when the consumer overtook
/// it before it had copied a record.
fn peek_once(ring: &RingRefs, max: usize) -> Result<Option<Vec<PeekedRecord>>, Corruption> {
    // Acquire: pairs with the Release stores of both cursors.
    let head = ring.cursor().read_cursor.load(Ordering::Acquire);
    let tail = ring.producer_line().write_cursor.load(Ordering::Acquire);
    // The same checks as an attaching consumer's: aligned, ordered, at most a ring apart,
    // far from overflow. Then each step moves `pos` forward by at least 8 bytes and never
    // past `tail`, so the walk takes at most capacity / 8 steps, whatever the frames say.
    if let Err(corrupt) = check_cursors(head, tail, ring.capacity) {
        // Between the two loads a busy ring may have moved on by more than a ring's worth
        // (released, then refilled): not corruption if the read cursor has moved since.
        // Relaxed: only whether the value changed matters.
        let moved = ring.cursor().read_cursor.load(Ordering::Relaxed) != head;
        return if moved { Ok(None) } else { Err(corrupt) };
    }
    let mut out = Vec::new();
    let mut pos = head;
    while pos < tail && out.len() < max {
        let frame = read_frame(ring, pos, tail);
        let data = match &frame {
            Ok(Frame::Data(f)) => ring.data.copy_words(f.index + FRAME_HEADER, f.len as usize),
            _ => Vec::new(),
        };
        // Acquire fence: the frame reads above are done before the cursor load below
        // (see the function docs for why that detects a frame overwritten meanwhile).
        fence(Ordering::Acquire);
        // Relaxed: ordered after the frame reads by the fence above.
        if ring.cursor().read_cursor.load(Ordering::Relaxed) > pos {
            return Ok((!out.is_empty()).then_some(out));
        }
        match frame? {
            Frame::Padding { next } => pos = next,
            Frame::Data(f) => {
                out.push(PeekedRecord {
                    position: pos,
                    record_type: f.record_type,
                    data,
                    producer: None,
                    seq: None,
                    state: PeekedState::Waiting,
                });
                pos = f.next;
            }
        }
    }
    Ok(Some(out))
}

/// The error of a blocking claim whose [`Producer::need`] or `fits` failed (never `Full`).
fn need_error(e: TryClaimError) -> ClaimError {
    match e {
        TryClaimError::TooLarge { len, max } => ClaimError::TooLarge { len, max },
        TryClaimError::Corrupt(c) => ClaimError::Corrupt(c),
        TryClaimError::Flush(e) => ClaimError::Flush(e),
        TryClaimError::Full => unreachable!("need() and fits() do not report a full ring"),
    }
}

/// Which of the two alternating publish or release slots belongs to a cursor.
pub(crate) enum CurrentSlot {
    /// The cursor is 0: nothing was ever published or released.
    Empty,
    /// This slot's position equals the cursor.
    Slot(usize),
    /// Neither does (a damaged segment): keep the counters as stored.
    Unknown,
}

/// Finds the slot whose recorded position equals `cursor`.
pub(crate) fn current_slot(cursor: u64, position: impl Fn(usize) -> u64) -> CurrentSlot {
    if cursor == 0 {
        return CurrentSlot::Empty;
    }
    (0..2).find(|&i| position(i) == cursor).map_or(CurrentSlot::Unknown, CurrentSlot::Slot)
}

/// A frame at a ring position, validated by [`read_frame`].
enum Frame {
    /// Padding to the end of the ring; the next frame starts at `next`.
    Padding { next: u64 },
    /// A record.
    Data(DataFrame),
}

/// A validated record frame.
#[derive(Debug, Clone, Copy)]
struct DataFrame {
    /// Data index of the frame header.
    index: u64,
    /// Payload bytes.
    len: u32,
    /// Record type.
    record_type: u32,
    /// Ring position of the frame.
    position: u64,
    /// Ring position of the next frame.
    next: u64,
}

/// Reads and checks the frame at `pos`, which must end at or below the published cursor
/// `tail`. The one place frames from shared memory are validated: for the consumer,
/// `peek`, and a restarted producer. `pos` is 8-aligned: every caller starts from
/// cursors `check_cursors` accepted or checks it (`last_frame_at`), and frames and
/// padding end on 8-byte boundaries (were it not, `Region::read_word` would still read
/// a word inside the ring, only the wrong one). Every sum is checked.
#[inline]
fn read_frame(ring: &RingRefs, pos: u64, tail: u64) -> Result<Frame, Corruption> {
    let index = ring.data.index(pos);
    let to_end = ring.capacity - index;
    let (len, record_type) = frame::decode(ring.data.read_word(index));
    let bad = |what| Corruption { what, value: u64::from(len), position: pos };
    let framed = frame::framed_len_u32(len);
    if record_type == PADDING {
        match pos.checked_add(to_end) {
            Some(next) if framed == to_end && next <= tail => return Ok(Frame::Padding { next }),
            _ => return Err(bad("padding frame does not end at the ring's end")),
        }
    }
    if record_type >= RESERVED_TYPES {
        return Err(Corruption { what: "reserved record type", value: u64::from(record_type), position: pos });
    }
    if u64::from(len) > ring.max_record {
        return Err(bad("record longer than the ring's maximum"));
    }
    if framed > to_end {
        return Err(bad("record straddles the end of the ring"));
    }
    match pos.checked_add(framed) {
        Some(next) if next <= tail => Ok(Frame::Data(DataFrame { index, len, record_type, position: pos, next })),
        _ => Err(bad("record extends past the write cursor")),
    }
}

/// The record frame that starts at `start` and ends exactly at `cursor`, if there is
/// one: how a restarted producer checks the last frame its publish slot names (`start`
/// comes from shared memory, so it is checked before use).
fn last_frame_at(ring: &RingRefs, start: u64, cursor: u64) -> Option<DataFrame> {
    if start >= cursor || cursor - start > ring.capacity / 2 || start % 8 != 0 {
        return None;
    }
    match read_frame(ring, start, cursor) {
        Ok(Frame::Data(f)) if f.next == cursor => Some(f),
        _ => None,
    }
}

/// What opening repaired in a spsc file segment that a power loss left with its read
/// cursor ahead of its write cursor (see "Power loss" in [`crate::FlushPolicy`], and
/// [`crate::Segment::power_loss_repair`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PowerLossRepair {
    /// The write cursor the file held.
    pub write_cursor_was: u64,
    /// The read cursor, which is now the write cursor too.
    pub read_cursor: u64,
    /// Records of the frames walked from the old write cursor to the read cursor: the
    /// publish whose cursor had not reached the disk (all of them consumed).
    pub records: u64,
    /// Their payload bytes.
    pub bytes: u64,
}

/// Whether the read cursor is ahead of the write cursor: the one check made before
/// taking the locks [`repair_reader_ahead`] needs (a look, decided again under them).
pub(crate) fn reader_ahead(ring: &RingRefs) -> bool {
    // Relaxed: a hint; the repair loads both again with Acquire under the role locks.
    ring.cursor().read_cursor.load(Ordering::Relaxed) > ring.producer_line().write_cursor.load(Ordering::Relaxed)
}

/// Moves the write cursor up to a read cursor that is ahead of it, if the frames
/// between them prove that a publish's cursor store was lost and nothing else: the
/// walk from the write cursor, frame by frame with [`read_frame`] (the consumer's
/// checks, bounded by the read cursor), must land exactly on the read cursor, at most
/// a ring away, through at least one record; a publish slot must match the old write
/// cursor (the counts to start from); and where the read cursor's release slot is
/// exact, its record and byte counts must equal the counts of the walk's end (every
/// record below the read cursor was consumed). Then the producer's other publish slot
/// is written for the read cursor (as `publish_pending` writes it: counts, last frame,
/// position), the displayed produced counters with it, and the write cursor last.
///
/// `None` when the cursors are in order or the repair is not proven: the attach checks
/// then report what they find. The caller must hold every role lock, so that no other
/// process reads or writes the ring meanwhile. Every value read is untrusted: the walk
/// takes at most `capacity / 8` steps (each frame is at least 8 bytes) and every sum
/// is checked.
pub(crate) fn repair_reader_ahead(ring: &RingRefs) -> Option<PowerLossRepair> {
    // Acquire: pairs with the Release stores of the last holders of the roles (this
    // caller holds every role lock, so nothing stores them meanwhile).
    let head = ring.cursor().read_cursor.load(Ordering::Acquire);
    let tail = ring.producer_line().write_cursor.load(Ordering::Acquire);
    if head <= tail || head > CURSOR_LIMIT || head - tail > ring.capacity || head % 8 != 0 || tail % 8 != 0 {
        return None;
    }
    let line = ring.producer_line();
    // Relaxed: ordered after the Acquire load of write_cursor above, stored before it.
    let (slot, mut records, mut bytes) =
        match current_slot(tail, |i| line.publishes[i].position.load(Ordering::Relaxed)) {
            CurrentSlot::Empty => (0, 0, 0),
            CurrentSlot::Slot(i) => {
                let at = &line.publishes[i];
                (i ^ 1, at.records.load(Ordering::Relaxed), at.bytes.load(Ordering::Relaxed))
            }
            CurrentSlot::Unknown => return None,
        };
    let (mut pos, mut last, mut walked, mut walked_bytes) = (tail, None, 0, 0);
    while pos < head {
        match read_frame(ring, pos, head).ok()? {
            Frame::Padding { next } => pos = next,
            Frame::Data(f) => {
                records = records.checked_add(1)?;
                bytes = bytes.checked_add(u64::from(f.len))?;
                walked += 1;
                walked_bytes += u64::from(f.len);
                last = Some(pos);
                pos = f.next;
            }
        }
    }
    // `read_frame` never returns a frame ending past `head`, so the walk ended on it.
    let last = last?;
    let (released, exact) = ReleaseLedger::load(ring, head);
    if exact && (released.records, released.bytes) != (records, bytes) {
        return None;
    }
    ring.store_counter(Counter::TotalProduced, records);
    ring.store_counter(Counter::BytesProduced, bytes);
    // Relaxed: published by the Release store of write_cursor just below, as in
    // `publish_pending`; the slot of the old cursor is left as it was, so a repair cut
    // short leaves the cursors and the slot it counts from as they were: repairable again.
    let at = &line.publishes[slot];
    at.records.store(records, Ordering::Relaxed);
    at.bytes.store(bytes, Ordering::Relaxed);
    at.last_frame.store(last, Ordering::Relaxed);
    at.position.store(head, Ordering::Relaxed);
    // Release: pairs with the Acquire loads of the next producer's and consumer's attach.
    line.write_cursor.store(head, Ordering::Release);
    Some(PowerLossRepair { write_cursor_was: tail, read_cursor: head, records: walked, bytes: walked_bytes })
}

/// The largest cursor value accepted from a segment. A real ring would need to move
/// 16 EiB to get near `u64::MAX`; the margin (4 TiB, more than twice the largest
/// capacity) keeps every `position + length` computed from a validated cursor from
/// overflowing, so a hostile cursor is an error, never an overflow.
pub const CURSOR_LIMIT: u64 = u64::MAX - (1 << 42);

/// Checks the cursors found in a segment at attach time.
fn check_cursors(head: u64, tail: u64, capacity: u64) -> Result<(), Corruption> {
    if tail > CURSOR_LIMIT {
        return Err(Corruption { what: "write cursor beyond any real ring's life", value: tail, position: head });
    }
    if head > tail {
        return Err(Corruption { what: "read cursor ahead of write cursor", value: head, position: tail });
    }
    if tail - head > capacity {
        return Err(Corruption {
            what: "more bytes in flight than the ring holds",
            value: tail - head,
            position: head,
        });
    }
    if head % 8 != 0 || tail % 8 != 0 {
        return Err(Corruption { what: "cursor not 8-byte aligned", value: head | tail, position: head });
    }
    Ok(())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ring::heap::spsc_pair;
    use crate::ring::wait::Slept;
    use crate::sync::AtomicU64;

    fn pair(capacity: u64) -> (Producer, Consumer) {
        spsc_pair(capacity, crate::layout::max_payload_for(capacity), WaitStrategy::Spin).unwrap()
    }

    #[test]
    fn a_full_ring_refuses_claims_and_counts_the_block() {
        let (mut p, mut c) = pair(64);
        // 24-byte frames: two fit in 64 bytes, a third does not.
        p.try_publish(&[1; 16]).unwrap();
        p.try_publish(&[2; 16]).unwrap();
        assert_eq!(p.try_claim(16).unwrap_err(), TryClaimError::Full);
        assert_eq!(p.counters.get(Counter::ProducerBlocks), 1);
        assert_eq!(&*c.try_read().unwrap(), &[1; 16]);
        p.try_publish(&[3; 16]).unwrap();
    }

    #[test]
    fn records_larger_than_the_maximum_are_refused() {
        let (mut p, _c) = pair(64);
        assert_eq!(p.try_claim(25).unwrap_err(), TryClaimError::TooLarge { len: 25, max: 24 });
        assert!(p.try_claim(24).is_ok());
    }

    #[test]
    fn an_abandoned_claim_leaves_nothing_visible() {
        let (mut p, mut c) = pair(64);
        let mut claim = p.try_claim(8).unwrap();
        claim.copy_from_slice(b"ghost!!!");
        drop(claim);
        assert_eq!(c.try_read().unwrap_err(), TryReadError::Empty);
        p.try_publish(b"real").unwrap();
        assert_eq!(&*c.try_read().unwrap(), b"real");
    }

    #[test]
    fn wrap_around_inserts_padding_that_the_consumer_skips() {
        let (mut p, mut c) = pair(128);
        for round in 0u8..50 {
            // 40-byte frames do not divide 128, so every fourth record needs padding.
            p.try_publish(&[round; 32]).unwrap();
            let r = c.try_read().unwrap();
            assert_eq!(&*r, &[round; 32]);
        }
    }

    #[test]
    fn a_batch_is_invisible_until_published() {
        let (mut p, mut c) = pair(256);
        let mut batch = p.batch();
        batch.try_push(b"one").unwrap();
        batch.try_push(b"two").unwrap();
        assert_eq!(c.try_read().unwrap_err(), TryReadError::Empty);
        batch.publish().unwrap();
        let mut seen = Vec::new();
        let n = c
            .read_batch(10, |r| -> Result<(), ()> {
                seen.push(r.data.to_vec());
                Ok(())
            })
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(seen, [b"one".to_vec(), b"two".to_vec()]);
    }

    #[test]
    fn a_refused_record_stays_in_the_ring() {
        let (mut p, mut c) = pair(256);
        for i in 0u8..4 {
            p.try_publish(&[i]).unwrap();
        }
        let err = c.read_batch(10, |r| if r.data[0] == 2 { Err("sink full") } else { Ok(()) }).unwrap_err();
        assert!(matches!(err, BatchError::Sink { accepted: 2, error: "sink full" }));
        assert_eq!(&*c.try_read().unwrap(), &[2]);
        assert_eq!(&*c.try_read().unwrap(), &[3]);
    }

    /// The read cursor as stored in the ring, and the consumed count as displayed.
    fn released(c: &Consumer) -> (u64, u64) {
        released_in(&c.ring)
    }

    fn released_in(ring: &RingRefs) -> (u64, u64) {
        (ring.cursor().read_cursor.load(Ordering::Relaxed), ring.counters().unwrap().load(Counter::TotalConsumed))
    }

    /// A durable batch that reaches the end of what was published looks for more before
    /// it returns: that look may release records read one at a time, never the batch's
    /// own before its hook has run (a file sink would lose them to a kill).
    #[test]
    fn a_durable_batch_releases_nothing_of_its_own_before_its_hook() {
        let (mut p, mut c) = pair(4096);
        for i in 0..3u8 {
            p.try_publish(&[i]).unwrap();
        }
        // 16-byte frames. Record 0 is read one at a time, and not yet released.
        drop(c.try_read().unwrap());
        let mut at_hook = None;
        let n = c
            .read_batch_durable(
                10,
                |_| Ok::<(), ()>(()),
                |pos| {
                    at_hook = Some((pos, released_in(&p.ring)));
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(at_hook, Some((48, (16, 1))), "at the hook only the record read before the batch is released");
        assert_eq!(released(&c), (48, 3));
    }

    #[test]
    fn a_forgotten_batch_still_counts_the_records_a_later_publish_makes_visible() {
        let (mut p, mut c) = pair(4096);
        let mut batch = p.batch();
        batch.try_push(&[1; 8]).unwrap();
        batch.try_push(&[2; 8]).unwrap();
        std::mem::forget(batch);
        p.try_publish(&[3; 8]).unwrap();
        assert_eq!(c.read_batch(10, |_| Ok::<(), ()>(())).unwrap(), 3);
        assert_eq!(p.counters.get(Counter::TotalProduced), 3);
        assert_eq!(p.counters.get(Counter::BytesProduced), 24);
    }

    #[test]
    fn a_consumer_backs_off_only_after_a_look_that_found_a_stretch() {
        let (mut p, mut c) = pair(4096);
        // Ping-pong: every look finds one record, so the consumer never pauses.
        for i in 0..5u8 {
            p.try_publish(&[i]).unwrap();
            assert_eq!(&*c.read(Some(Duration::ZERO)).unwrap(), &[i]);
            assert!(!c.backs_off(), "one record per look is not a stream");
        }
        // A producer ahead by three: once the consumer has read what that look found,
        // its next blocking read pauses first.
        for i in 0..3u8 {
            p.try_publish(&[i]).unwrap();
        }
        for _ in 0..2 {
            drop(c.read(Some(Duration::ZERO)).unwrap());
            assert!(!c.backs_off(), "records left from that look");
        }
        drop(c.read(Some(Duration::ZERO)).unwrap());
        assert!(c.backs_off(), "all three read");
        // A look that finds nothing new ends it.
        assert!(c.try_read().is_err());
        assert!(!c.backs_off());
        // Batches count their records too.
        for i in 0..2u8 {
            p.try_publish(&[i]).unwrap();
        }
        assert_eq!(c.read_batch(10, |_| Ok::<(), ()>(())).unwrap(), 2);
        assert!(c.backs_off());
    }

    #[test]
    fn reads_behind_a_faster_producer_are_released_lazily_and_exactly() {
        let (mut p, mut c) = pair(4096);
        for i in 0..10u8 {
            p.try_publish(&[i; 16]).unwrap();
        }
        // 24-byte frames: the consumer knows of all ten after its first look.
        for i in 0..3u8 {
            assert_eq!(&*c.try_read().unwrap(), &[i; 16]);
        }
        assert_eq!(released(&c), (0, 0), "three of ten known records read: nothing stored yet");
        c.release_read();
        assert_eq!(released(&c), (72, 3));
        for i in 3..10u8 {
            assert_eq!(&*c.try_read().unwrap(), &[i; 16]);
        }
        assert_eq!(released(&c), (240, 10), "caught up with what was published: released at once");
        p.try_publish(&[10; 16]).unwrap();
        p.try_publish(&[11; 16]).unwrap();
        assert_eq!(&*c.try_read().unwrap(), &[10; 16]);
        drop(c);
        let head = p.ring.cursor().read_cursor.load(Ordering::Relaxed);
        assert_eq!(head, 264, "dropping the consumer released the record it had read");
    }

    #[test]
    fn a_read_from_a_nearly_full_ring_frees_space_at_once() {
        let (mut p, mut c) = pair(256);
        while p.try_publish(&[7; 16]).is_ok() {}
        drop(c.try_read().unwrap());
        assert!(p.try_claim(16).is_ok(), "the producer was short of space: the release was not deferred");
    }

    #[test]
    fn a_failed_durable_batch_after_lazy_reads_redelivers_only_the_batch() {
        let (mut p, mut c) = pair(4096);
        for i in 0..4u8 {
            p.try_publish(&[i]).unwrap();
        }
        drop(c.try_read().unwrap());
        let err = c.read_batch_durable(10, |_| Ok(()), |_| Err("disk full"));
        assert!(matches!(err, Err(BatchError::Sink { accepted: 0, .. })));
        let mut got = Vec::new();
        c.read_batch(10, |r| -> Result<(), ()> {
            got.push(r.data[0]);
            Ok(())
        })
        .unwrap();
        assert_eq!(got, [1, 2, 3], "the record read before the batch is not delivered again");
        assert_eq!(released(&c), (64, 4));
    }

    /// Batches of records of varied sizes through a small ring: the fast path stops at the
    /// end of each lap and at the free space, the checked path wraps with padding, and
    /// every record arrives whole, in order, counted exactly.
    #[test]
    fn batches_wrap_and_fill_the_ring_exactly() {
        let (mut p, mut c) = pair(256);
        let (mut pushed, mut got, mut bytes) = (0u64, 0u64, 0u64);
        let size = |n: u64| (n * 7 % 41) as usize;
        while got < 2000 {
            let mut batch = p.batch();
            loop {
                let len = size(pushed);
                let mut record = vec![pushed as u8; len];
                if let Some(first) = record.first_mut() {
                    *first = !(pushed as u8);
                }
                match batch.try_push(&record) {
                    Ok(()) => {
                        pushed += 1;
                        bytes += len as u64;
                    }
                    Err(TryClaimError::Full) => break,
                    Err(e) => panic!("push {pushed}: {e}"),
                }
            }
            drop(batch);
            c.read_batch(usize::MAX, |r| -> Result<(), ()> {
                let len = size(got);
                let mut want = vec![got as u8; len];
                if let Some(first) = want.first_mut() {
                    *first = !(got as u8);
                }
                assert_eq!(r.data, &want[..], "record {got}");
                got += 1;
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(got, pushed);
        let cells = p.ring.counters().unwrap();
        assert_eq!((cells.load(Counter::TotalProduced), cells.load(Counter::BytesProduced)), (pushed, bytes));
        assert_eq!((cells.load(Counter::TotalConsumed), cells.load(Counter::BytesConsumed)), (pushed, bytes));
    }

    /// A sink or a durability hook that panics, caught by a caller that keeps the
    /// consumer: nothing the hook did not see is released, and the records come again.
    #[test]
    fn a_panicking_sink_or_hook_releases_nothing_the_hook_did_not_see() {
        use std::panic::{AssertUnwindSafe, catch_unwind};
        let (mut p, mut c) = pair(4096);
        for i in 0..3u8 {
            p.try_publish(&[i]).unwrap();
        }
        let sink_panics = catch_unwind(AssertUnwindSafe(|| {
            c.read_batch_durable(10, |r| if r.data[0] == 1 { panic!("sink") } else { Ok::<(), ()>(()) }, |_| Ok(()))
        }));
        assert!(sink_panics.is_err());
        let hook_panics =
            catch_unwind(AssertUnwindSafe(|| c.read_batch_durable(10, |_| Ok::<(), ()>(()), |_| panic!("hook"))));
        assert!(hook_panics.is_err());
        assert_eq!(released(&c), (0, 0), "nothing released");
        p.try_publish(&[3]).unwrap();
        let (mut got, mut hooked) = (Vec::new(), None);
        c.read_batch_durable(
            10,
            |r| -> Result<(), ()> {
                got.push(r.data[0]);
                Ok(())
            },
            |pos| {
                hooked = Some(pos);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(got, [0, 1, 2, 3], "every record the hook did not see is delivered again");
        assert_eq!((hooked, released(&c)), (Some(64), (64, 4)));
    }

    #[test]
    fn a_failed_durability_hook_releases_nothing() {
        let (mut p, mut c) = pair(256);
        p.try_publish(b"a").unwrap();
        p.try_publish(b"b").unwrap();
        let mut first = Vec::new();
        let err = c.read_batch_durable(
            10,
            |r| -> Result<(), &str> {
                first.push(r.data.to_vec());
                Ok(())
            },
            |_| Err("disk full"),
        );
        assert!(matches!(err, Err(BatchError::Sink { accepted: 0, error: "disk full" })));
        let mut again = Vec::new();
        let mut released_at = 0;
        let n = c
            .read_batch_durable(
                10,
                |r| -> Result<(), ()> {
                    again.push(r.data.to_vec());
                    Ok(())
                },
                |pos| {
                    released_at = pos;
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!((n, &first, &again), (2, &again, &vec![b"a".to_vec(), b"b".to_vec()]));
        assert_eq!(released_at, 32);
    }

    #[test]
    fn unread_returns_the_same_record_again() {
        let (mut p, mut c) = pair(64);
        p.try_publish(b"again").unwrap();
        c.try_read().unwrap().unread();
        assert_eq!(&*c.try_read().unwrap(), b"again");
        assert_eq!(c.try_read().unwrap_err(), TryReadError::Empty);
    }

    #[test]
    fn commit_len_shrinks_the_record() {
        let (mut p, mut c) = pair(256);
        let mut claim = p.try_claim(100).unwrap();
        claim[..3].copy_from_slice(b"abc");
        claim.commit_len(3).unwrap();
        assert_eq!(&*c.try_read().unwrap(), b"abc");
    }

    #[test]
    fn record_types_travel_with_the_record() {
        let (mut p, mut c) = pair(64);
        let mut claim = p.try_claim(1).unwrap();
        claim.set_record_type(7);
        claim.commit().unwrap();
        assert_eq!(c.try_read().unwrap().record_type(), 7);
    }

    #[test]
    fn blocking_calls_time_out_and_say_how_long_they_waited() {
        let (mut p, mut c) = pair(64);
        let t = Duration::from_millis(20);
        assert_eq!(c.read(Some(t)).unwrap_err(), ReadError::TimedOut(t));
        p.try_publish(&[0; 24]).unwrap();
        p.try_publish(&[0; 24]).unwrap();
        assert_eq!(p.publish(&[0; 24], Some(t)).unwrap_err(), ClaimError::TimedOut(t));
    }

    /// Plays the producer's half of the wake-up protocol by hand against a consumer that
    /// sleeps for data (20 ms at most): once it has announced its sleep, `publish` stores
    /// cursors the way the producer would, but never clears the word nor wakes it, as a
    /// producer that stalled (or died) after its store, or one with a broken protocol.
    /// Returns how the sleep ended, retrying until the consumer really slept.
    fn sleep_against(publish: impl Fn(&AtomicU64) + Sync) -> Slept {
        let (p, c) = pair(4096);
        let cursor = &p.ring.producer_line().write_cursor;
        for _ in 0..100 {
            let seen = cursor.load(Ordering::Relaxed);
            let wake = c.ring.data_wake();
            let word = wake.word();
            let slept = std::thread::scope(|s| {
                let sleeper = s.spawn(|| {
                    sleep_unless_moved(wake, Duration::from_millis(20), seen, || cursor.load(Ordering::Acquire))
                });
                while word.load(Ordering::Relaxed) == 0 {
                    std::thread::yield_now();
                }
                std::thread::sleep(Duration::from_millis(5)); // let it reach FUTEX_WAIT
                publish(cursor);
                sleeper.join().unwrap()
            });
            if slept != Slept::No {
                return slept;
            }
        }
        panic!("the consumer never slept");
    }

    /// A producer that stored its cursor and then stalled before its word check (preempted,
    /// stopped, killed) is not a lost wake-up: the protocol was never given its chance.
    #[test]
    fn a_waker_stalled_between_its_store_and_its_check_is_not_a_missed_wake() {
        let slept = sleep_against(|cursor| {
            let at = cursor.load(Ordering::Relaxed);
            cursor.store(at + 16, Ordering::Release);
        });
        assert_eq!(slept, Slept::Yes);
    }

    /// A producer that goes on publishing while the sleeper's word stays set did check the
    /// word after its first store and left it: a real lost wake-up, and it is counted.
    #[test]
    fn a_waker_that_moves_on_without_clearing_the_word_is_a_missed_wake() {
        let slept = sleep_against(|cursor| {
            for _ in 0..200 {
                let at = cursor.load(Ordering::Relaxed);
                cursor.store(at + 16, Ordering::Release);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        assert_eq!(slept, Slept::MissedWake);
    }

    #[test]
    fn a_sleeping_consumer_is_woken_by_another_thread() {
        for strategy in WaitStrategy::ALL {
            let (mut p, mut c) = spsc_pair(4096, 2040, strategy).unwrap();
            let reader = std::thread::spawn(move || {
                let mut sum = 0u64;
                for _ in 0..2000 {
                    sum += u64::from(c.read(Some(Duration::from_secs(10))).unwrap()[0]);
                }
                sum
            });
            for i in 0..2000u32 {
                p.publish(&[(i % 7) as u8; 100], Some(Duration::from_secs(10))).unwrap();
                if i % 500 == 0 {
                    std::thread::sleep(Duration::from_millis(2)); // let the reader fall asleep
                }
            }
            let expected: u64 = (0..2000u64).map(|i| i % 7).sum();
            assert_eq!(reader.join().unwrap(), expected, "{strategy:?}");
        }
    }
}

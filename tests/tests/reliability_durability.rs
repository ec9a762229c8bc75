//! Durability of file segments with `FlushPolicy::Sync`: a frame reaches the file before
//! the cursor that covers it, and the read cursor that freed space reaches it before
//! that space is overwritten, so a power loss at any instant leaves a consistent ring.
//!
//! - `each_publish_syncs_its_frames_then_the_cursor`: the library's flush observer
//!   records every `msync`; each publish must sync the pages of its frame, then the
//!   header, in that order (and the header first whenever it reuses freed space).
//! - `copies_of_the_disk_at_random_instants_are_consistent_rings`: a model of the disk:
//!   a shadow image that receives exactly what each `msync` wrote, plus pages the
//!   "kernel" writes back on its own at random instants and in random order (pages read
//!   from the live file, the header page half the time). While a producer and a
//!   consumer stream through a 4 KiB ring, the shadow is copied at random instants;
//!   each copy is opened as a file segment and every record between its cursors must
//!   be whole (checksum, length) and in sequence. Any copy that is not is a power loss
//!   that would have left stale frames under a cursor. Before each copy the test notes
//!   where the last publish that had returned ended (the producer's own ledger, not the
//!   segment's counters): the copy's write cursor must reach it, so every acknowledged
//!   record is in the copy or below its read cursor (consumed). One thing the order
//!   cannot prevent is counted apart: the read cursor and the write cursor are on
//!   different pages, so the kernel may write back a read cursor that consumed a publish
//!   before that publish's header sync lands; that copy has its reader ahead of its
//!   writer, which opening reports as corruption (nothing stale is delivered, and the
//!   acknowledged records are still covered: they were all consumed).
//! - `a_failed_msync_publishes_nothing_and_poisons_the_producer`: the library's fault
//!   injection fails one `msync` of the flush policy (frames, cursor, or the freeing read
//!   cursor); the publish or claim returns the error, a cursor over frames that did not
//!   reach the disk is never stored, and the producer reports it at every later call.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;
use shm_core::layout::HEADER_SIZE;
use shm_core::{FlushPolicy, Location, Segment};
use shmring_tests::records::{checksum, encode, record_len};
use shmring_tests::{Backend, Fixture, seed};

const CAPACITY: u64 = 4096;
const PAGE: usize = 4096;
/// Snapshots of the modelled disk in the CI run (`SHMRING_DURABILITY_COPIES` for more).
const COPIES: u64 = 300;

fn builder(location: &Location) -> shm_core::SegmentBuilder {
    Segment::builder(location.clone()).capacity(CAPACITY).flush(FlushPolicy::Sync)
}

/// Publishes record `seq`; returns the ring position where it ends.
fn publish(producer: &mut shm_core::Producer, seq: u64, max: usize) -> u64 {
    let len = record_len(seq, max);
    let mut claim = producer.claim(len, Some(Duration::from_secs(20))).expect("claim");
    encode(seq, &mut claim[..len]);
    let end = claim.position() + shm_core::ring::frame::framed_len_u32(len as u32);
    claim.commit().expect("msync");
    end
}

#[test]
fn a_failed_msync_publishes_nothing_and_poisons_the_producer() {
    use shm_core::{ClaimError, FlushError, TryClaimError, TryReadError};
    let fx = Fixture::new("durability-msync-fails");
    let location = fx.location(Backend::File);
    let segment = builder(&location).create().expect("create");
    let eio = |e: &FlushError| e.errno == nix::errno::Errno::EIO;
    let mut consumer = segment.consumer().expect("consumer");
    let mut cases = 0;

    // 1. The frames' msync fails: the cursor stays, nothing is delivered, the producer is poisoned.
    let mut producer = segment.producer().expect("producer");
    producer.publish(b"durable", None).expect("first publish");
    let cursor = segment.stats().write_cursor;
    segment.fail_msync_after(1);
    let mut claim = producer.try_claim(5).expect("claim");
    claim.copy_from_slice(b"lost!");
    let failure = claim.commit().expect_err("a failed msync of the frames must fail the commit");
    assert!(eio(&failure) && failure.start >= HEADER_SIZE, "the frames' msync: {failure:?}");
    assert_eq!(segment.stats().write_cursor, cursor, "the cursor moved over frames that are not on disk");
    assert_eq!(&*consumer.try_read().expect("the durable record"), b"durable");
    assert_eq!(consumer.try_read().unwrap_err(), TryReadError::Empty, "an unsynced record was delivered");
    assert!(matches!(producer.publish(b"x", None), Err(ClaimError::Flush(ref e)) if *e == failure), "not poisoned");
    assert!(matches!(producer.try_claim(1), Err(TryClaimError::Flush(_))), "not poisoned");
    assert_eq!(producer.flush_failure(), Some(&failure));
    assert_eq!(segment.stats().write_cursor, cursor, "a poisoned producer published");
    cases += 1;

    // 2. The cursor's msync fails: the record is visible but not known durable, and the
    //    publish says so. A successor resumes after it.
    drop(producer);
    let mut producer = segment.producer().expect("a successor");
    segment.fail_msync_after(2);
    let failure = producer.publish(b"visible", None).expect_err("a failed msync of the cursor must fail the publish");
    assert!(matches!(failure, ClaimError::Flush(ref e) if eio(e) && e.start == 0), "the header's msync: {failure:?}");
    assert_eq!(&*consumer.try_read().expect("published in memory"), b"visible");
    assert!(matches!(producer.try_publish(b"x"), Err(TryClaimError::Flush(_))), "not poisoned");
    cases += 1;

    // 3. The freeing read cursor's msync fails before freed space is reused: no claim.
    drop(producer);
    consumer.release_read();
    let mut producer = segment.producer().expect("a successor");
    while producer.try_publish(&[7; 512]).is_ok() {}
    while consumer.try_read().is_ok() {}
    consumer.release_read();
    let cursor = segment.stats().write_cursor;
    segment.fail_msync_after(1);
    let failure = producer.try_claim(512).map(|_| ()).expect_err("reuse of space the file still holds as unread");
    assert!(matches!(failure, TryClaimError::Flush(ref e) if eio(e) && e.start == 0), "read cursor: {failure:?}");
    assert_eq!(segment.stats().write_cursor, cursor);
    assert!(matches!(producer.batch().try_push(b"x"), Err(TryClaimError::Flush(_))), "a batch bypassed the poison");
    cases += 1;

    // After the fault, a new producer publishes durably again.
    drop(producer);
    let mut producer = segment.producer().expect("a successor");
    producer.publish(b"again", None).expect("publish after the fault");
    assert_eq!(&*consumer.try_read().expect("delivered"), b"again");

    shmring_tests::reliability::report(
        "file_msync_failure",
        "one msync of flush = sync fails (EIO by fault injection): of the frames, of the cursor, of the freeing read cursor",
        cases,
        "pass: the error is returned, no cursor covers frames that were not synced, the producer stays poisoned",
        &shmring_tests::ledger::Figures::NotCounted("each case asserts the cursor and what the consumer reads"),
        json!({ "cases": cases }),
    );
}

/// Only the spsc producer runs the flush policy: every other kind refuses it, at create
/// and at a producer's attach, rather than ignore it.
#[test]
fn a_flush_policy_is_refused_on_rings_that_cannot_honour_it() {
    use shm_core::{AttachError, CreateError, RingKind};
    let fx = Fixture::new("durability-kinds");
    let mut refused = Vec::new();
    for kind in [RingKind::Mpsc, RingKind::Broadcast, RingKind::Mpmc] {
        let location = fx.location(Backend::File);
        match builder(&location).kind(kind).create() {
            Err(CreateError::InvalidOptions { reason, .. }) if reason.contains(kind.name()) => {}
            other => panic!("{} ring with flush = sync: created ({:?})", kind.name(), other.map(|_| ())),
        }
        Segment::builder(location.clone())
            .capacity(CAPACITY)
            .kind(kind)
            .create()
            .expect("create without a flush policy");
        let segment = builder(&location).open().expect("open with a flush policy");
        let attached = match kind {
            RingKind::Broadcast => segment.broadcast_producer().map(|_| ()),
            _ => segment.mpsc_producer(0).map(|_| ()),
        };
        match attached {
            Err(AttachError::FlushUnsupported { kind: found, .. }) if found == kind.name() => refused.push(kind.name()),
            other => panic!("{} producer with flush = sync: {other:?}", kind.name()),
        }
    }
    assert_eq!(refused, ["mpsc", "broadcast", "mpmc"]);
}

#[test]
fn each_publish_syncs_its_frames_then_the_cursor() {
    let fx = Fixture::new("durability-order");
    let location = fx.location(Backend::File);
    let calls: Arc<Mutex<Vec<std::ops::Range<usize>>>> = Arc::default();
    let log = calls.clone();
    let segment =
        builder(&location).flush_observer(Arc::new(move |r| log.lock().unwrap().push(r))).create().expect("create");
    let max = segment.geometry().max_record as usize;
    let mut producer = segment.producer().expect("producer");
    let mut consumer = segment.consumer().expect("consumer");
    let header = 0..HEADER_SIZE;
    let mut checked = 0;
    for seq in 0..200 {
        let before = segment.stats().write_cursor;
        calls.lock().unwrap().clear();
        publish(&mut producer, seq, max);
        let after = segment.stats().write_cursor;
        let got = std::mem::take(&mut *calls.lock().unwrap());
        // Reuse of freed space first syncs the header, then come the frame's pages,
        // then the header with the new cursor.
        let frames = if got.first() == Some(&header) && got.len() > 2 { &got[1..] } else { &got[..] };
        assert_eq!(frames.last(), Some(&header), "publish {seq}: the cursor was not synced last: {got:?}");
        let data = &frames[..frames.len() - 1];
        assert!(!data.is_empty() && data.iter().all(|r| r.start >= HEADER_SIZE), "publish {seq}: {got:?}");
        let synced: u64 = data.iter().map(|r| r.len() as u64).sum();
        assert!(synced >= after - before, "publish {seq}: {synced} bytes synced for {} published", after - before);
        let end = HEADER_SIZE + (((after - 1) & (CAPACITY - 1)) as usize);
        assert!(data.iter().any(|r| r.contains(&end)), "publish {seq}: the frame's end {end} not synced: {got:?}");
        checked += 1;
        // Keep the ring draining, so publishes reuse freed space.
        while consumer.try_read().is_ok() {}
        consumer.release_read();
    }
    assert_eq!(checked, 200);
}

/// The modelled disk: what has reached it.
struct Disk {
    image: Mutex<Vec<u8>>,
    file: std::fs::File,
}

impl Disk {
    /// Copies bytes `range` of the live file onto the disk. Read under the lock, as the
    /// kernel writes a page back once at a time: an older read of a page never lands
    /// after a newer one (which would move a cursor on the disk backwards).
    fn write_back(&self, range: std::ops::Range<usize>) {
        let mut image = self.image.lock().unwrap();
        self.file.read_exact_at(&mut image[range.clone()], range.start as u64).expect("read the file");
    }
}

/// What a copy of the disk holds (its write cursor is checked apart).
enum Copy {
    /// Every record between its cursors is whole and in sequence: this many.
    Consistent(usize),
    /// The read cursor's page reached the disk after a publish's cursor store but before
    /// its header sync: the read cursor is ahead of the write cursor (by at most the
    /// records of that publish, all consumed). Opening it reports corruption; nothing
    /// stale is delivered.
    ReaderAhead,
}

/// What the ring in `image` (written to `path`) holds; `Err` says how it is broken.
/// `acknowledged`: where the last publish that had returned before the copy ended.
fn inspect(image: &[u8], path: &std::path::Path, acknowledged: u64) -> Result<Copy, String> {
    std::fs::write(path, image).map_err(|e| e.to_string())?;
    let location = Location::File(path.to_owned());
    let segment = Segment::builder(location).read_only().expected_owner(None).open().map_err(|e| e.to_string())?;
    let max = segment.geometry().max_record as usize;
    let stats = segment.stats();
    if stats.write_cursor < acknowledged {
        return Err(format!(
            "acknowledged records lost: write cursor {} short of the last acknowledged end {acknowledged}",
            stats.write_cursor
        ));
    }
    if stats.read_cursor > stats.write_cursor && stats.read_cursor - stats.write_cursor <= CAPACITY {
        return match segment.peek(usize::MAX) {
            Err(_) => Ok(Copy::ReaderAhead),
            Ok(r) => Err(format!("reader ahead of writer, yet peek gave {} records", r.len())),
        };
    }
    let records = segment.peek(usize::MAX).map_err(|e| e.to_string())?;
    let mut last = None;
    for r in &records {
        let len = r.data.len();
        if len < 16 {
            return Err(format!("record at {} of {len} bytes", r.position));
        }
        let seq = u64::from_le_bytes(r.data[..8].try_into().expect("8 bytes"));
        let sum = u64::from_le_bytes(r.data[len - 8..].try_into().expect("8 bytes"));
        if sum != checksum(&r.data[..len - 8]) || len != record_len(seq, max) {
            return Err(format!("stale or torn record at {} (seq {seq}, {len} bytes)", r.position));
        }
        if last.is_some_and(|l| seq != l + 1) {
            return Err(format!("seq {seq} after {last:?} at {}", r.position));
        }
        last = Some(seq);
    }
    Ok(Copy::Consistent(records.len()))
}

#[test]
fn copies_of_the_disk_at_random_instants_are_consistent_rings() {
    let fx = Fixture::new("durability-copies");
    let location = fx.location(Backend::File);
    let Location::File(path) = &location else { unreachable!() };
    let copies: u64 = std::env::var("SHMRING_DURABILITY_COPIES").ok().and_then(|v| v.parse().ok()).unwrap_or(COPIES);
    let disk: Arc<OnceLock<Disk>> = Arc::default();
    let observed = disk.clone();
    let segment = builder(&location)
        .flush_observer(Arc::new(move |r| {
            if let Some(d) = observed.get() {
                d.write_back(r);
            }
        }))
        .create()
        .expect("create");
    let file = std::fs::File::open(path).expect("open the file");
    let size = file.metadata().expect("stat").len() as usize;
    let mut image = vec![0u8; size];
    file.read_exact_at(&mut image, 0).expect("read");
    assert!(disk.set(Disk { image: Mutex::new(image), file }).is_ok());
    let disk = disk.get().expect("set");

    let stop = AtomicBool::new(false);
    let mut rng = seed("durability-copies");
    let mut next = || {
        rng = shmring_tests::records::splitmix64(rng);
        rng
    };
    let (mut checked, mut records_seen, mut reader_ahead, mut bad) = (0u64, 0usize, 0u64, Vec::new());
    // The producer's ledger: where its last returned publish ended.
    let acknowledged = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        let producer = s.spawn(|| {
            let mut producer = segment.producer().expect("producer");
            let max = segment.geometry().max_record as usize;
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                let end = publish(&mut producer, seq, max);
                // Release: the copy that sees it is taken after the publish returned.
                acknowledged.store(end, Ordering::Release);
                seq += 1;
            }
            seq
        });
        let consumer = s.spawn(|| {
            let mut consumer = segment.consumer().expect("consumer");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if consumer.read(Some(Duration::from_millis(10))).is_ok() {
                    n += 1;
                }
                if n % 3 == 0 {
                    consumer.release_read();
                }
            }
            n
        });
        let copy = fx.path("copy");
        // At least `copies` copies, over at least 20 laps of the ring (reuse of freed space).
        while checked < copies || segment.stats().write_cursor < 20 * CAPACITY {
            // The kernel writes back a few pages on its own, the header half the time.
            for _ in 0..next() % 4 {
                let page = if next() % 2 == 0 {
                    (next() as usize % (HEADER_SIZE / PAGE)) * PAGE
                } else {
                    (next() as usize % (size / PAGE)) * PAGE
                };
                disk.write_back(page..page + PAGE);
            }
            std::thread::sleep(Duration::from_micros(next() % 300));
            // Acquire: pairs with the producer's Release store after its publish returned.
            let acked = acknowledged.load(Ordering::Acquire);
            let image = disk.image.lock().unwrap().clone();
            match inspect(&image, &copy, acked) {
                Ok(Copy::Consistent(n)) => records_seen += n,
                Ok(Copy::ReaderAhead) => reader_ahead += 1,
                Err(e) => bad.push(e),
            }
            checked += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let produced = producer.join().expect("producer");
        let consumed = consumer.join().expect("consumer");
        let laps = segment.stats().write_cursor / CAPACITY;
        assert!(laps >= 20, "the ring barely wrapped ({laps} laps): {produced} produced, {consumed} consumed");
    });
    shmring_tests::reliability::report(
        "file_durability_copies",
        "copies of a modelled disk (msync'd ranges plus random page write-backs) taken at random instants while streaming through a 4 KiB file ring with flush = sync",
        checked,
        &if bad.is_empty() {
            format!(
                "pass: no copy had a cursor over a stale or torn frame, every copy's write cursor covered every acknowledged record ({reader_ahead} had the reader ahead of the writer, refused at open)"
            )
        } else {
            "failed: a cursor covered stale or torn frames, or acknowledged records were not covered".to_owned()
        },
        &shmring_tests::ledger::Figures::NotCounted(
            "each copy is checked for cursors over stale or torn frames, and against the producer's last acknowledged position",
        ),
        json!({ "copies_checked": checked, "stale_or_torn": bad.len(), "reader_ahead_refused": reader_ahead, "records_checked": records_seen, "seconds": started.elapsed().as_secs_f64().round() }),
    );
    bad.sort();
    bad.dedup_by_key(|e| e.split(" (").next().unwrap_or_default().to_owned());
    assert!(bad.is_empty(), "{} of {checked} copies were inconsistent: {bad:#?}", bad.len());
}

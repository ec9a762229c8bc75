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
//!   record is in the copy or below its read cursor (consumed). Each copy must then open
//!   writable and attach a producer (whose `last_committed` is a whole record, the last
//!   one in the copy) and a consumer that reads every record in it, with counters that
//!   agree. One thing the order cannot prevent is counted apart: the read cursor and the
//!   write cursor are on different pages, so the kernel may write back a read cursor
//!   that consumed a publish before that publish's header sync lands; that copy has its
//!   reader ahead of its writer, which opening repairs (see "Power loss" in
//!   `FlushPolicy`), and the repaired copy must pass the same checks.
//! - `a_reader_ahead_image_is_repaired_at_open`, `..._is_refused_while_a_role_is_held`,
//!   `a_hostile_reader_ahead_image_is_refused`: the same state built exactly (the last
//!   publish's cursor store taken back in the file), repaired to exact counters when
//!   nobody is attached, refused while a role lock is held, and refused, without a
//!   panic, when the frames between the cursors do not prove the repair.
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

/// What a copy of the disk holds, once it opened and attached as a consistent ring.
struct Copy {
    /// Records between its cursors (whole, in sequence, all read by a consumer).
    records: usize,
    /// The read cursor's page reached the disk after a publish's cursor store but before
    /// its header sync: the read cursor was ahead of the write cursor (by at most the
    /// records of that publish, all consumed), and opening repaired it.
    repaired: bool,
}

/// An error and its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}

/// The sequence number of a generator record, if it is whole (checksum and length).
fn whole_record(data: &[u8], max: usize) -> Option<u64> {
    let len = data.len();
    if len < 16 {
        return None;
    }
    let seq = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let sum = u64::from_le_bytes(data[len - 8..].try_into().expect("8 bytes"));
    (sum == checksum(&data[..len - 8]) && len == record_len(seq, max)).then_some(seq)
}

/// Opens the ring in `image` (written to `path`) as a restarted pair of daemons would,
/// and checks it; `Err` says how it is broken. `acknowledged`: where the last publish
/// that had returned before the copy ended.
fn inspect(image: &[u8], path: &std::path::Path, acknowledged: u64) -> Result<Copy, String> {
    std::fs::write(path, image).map_err(|e| e.to_string())?;
    let location = Location::File(path.to_owned());
    let segment = Segment::builder(location).expected_owner(None).open().map_err(|e| format!("open: {}", chain(&e)))?;
    let repaired = segment.power_loss_repair().is_some();
    let max = segment.geometry().max_record as usize;
    let stats = segment.stats();
    if stats.write_cursor < acknowledged {
        return Err(format!(
            "acknowledged records lost: write cursor {} short of the last acknowledged end {acknowledged}",
            stats.write_cursor
        ));
    }
    let records = segment.peek(usize::MAX).map_err(|e| format!("peek: {}", chain(&e)))?;
    let mut last = None;
    for r in &records {
        let Some(seq) = whole_record(&r.data, max) else {
            return Err(format!("stale or torn record at {} ({} bytes)", r.position, r.data.len()));
        };
        if last.is_some_and(|l| seq != l + 1) {
            return Err(format!("seq {seq} after {last:?} at {}", r.position));
        }
        last = Some(seq);
    }
    let producer = segment.producer().map_err(|e| format!("producer attach: {}", chain(&e)))?;
    // The generator resumes after its last committed record: it must be whole, and be
    // the last record in the copy.
    if stats.write_cursor > 0 {
        let Some((_, data)) = producer.last_committed() else {
            return Err(format!("no last committed record under write cursor {}", stats.write_cursor));
        };
        let seq = whole_record(&data, max).ok_or("last committed record torn")?;
        if last.is_some_and(|l| l != seq) {
            return Err(format!("last committed seq {seq}, but the last record in the ring is {last:?}"));
        }
    }
    let mut consumer = segment.consumer().map_err(|e| format!("consumer attach: {}", chain(&e)))?;
    let mut read = Vec::new();
    loop {
        match consumer.try_read() {
            Ok(r) => read.push(whole_record(&r[..], max).ok_or("read a torn record")?),
            Err(shm_core::TryReadError::Empty) => break,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    consumer.release_read();
    let peeked: Vec<u64> = records.iter().filter_map(|r| whole_record(&r.data, max)).collect();
    if read != peeked {
        return Err(format!("the consumer read {} records, peek saw {}", read.len(), peeked.len()));
    }
    let after = segment.stats();
    if (after.total_consumed, after.bytes_consumed) != (after.total_produced, after.bytes_produced) {
        return Err(format!(
            "drained, yet consumed {}/{} bytes against produced {}/{} bytes",
            after.total_consumed, after.bytes_consumed, after.total_produced, after.bytes_produced
        ));
    }
    Ok(Copy { records: records.len(), repaired })
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
    let (mut checked, mut records_seen, mut repaired, mut bad) = (0u64, 0usize, 0u64, Vec::new());
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
                Ok(c) => {
                    records_seen += c.records;
                    repaired += u64::from(c.repaired);
                }
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
                "pass: no copy had a cursor over a stale or torn frame, every copy's write cursor covered every acknowledged record, every copy opened and attached as a consistent ring ({repaired} had the reader ahead of the writer, repaired at open)"
            )
        } else {
            "failed: a cursor covered stale or torn frames, acknowledged records were not covered, or a copy did not open and attach as a consistent ring".to_owned()
        },
        &shmring_tests::ledger::Figures::NotCounted(
            "each copy is checked for cursors over stale or torn frames, and against the producer's last acknowledged position",
        ),
        json!({ "copies_checked": checked, "stale_or_torn": bad.len(), "reader_ahead_repaired": repaired, "records_checked": records_seen, "seconds": started.elapsed().as_secs_f64().round() }),
    );
    bad.sort();
    bad.dedup_by_key(|e| e.split(" (").next().unwrap_or_default().to_owned());
    assert!(bad.is_empty(), "{} of {checked} copies were inconsistent: {bad:#?}", bad.len());
}

// ---------------------------------------------------------------------------------------
// The reader-ahead state built exactly.
// ---------------------------------------------------------------------------------------

/// File offsets of the fields a power loss leaves behind, from the library's own layout.
const WRITE_CURSOR_AT: u64 = (std::mem::offset_of!(shm_core::layout::Header, producer.0)
    + std::mem::offset_of!(shm_core::layout::ProducerLine, write_cursor)) as u64;
const READ_CURSOR_AT: u64 = (std::mem::offset_of!(shm_core::layout::Header, cursors)
    + std::mem::offset_of!(shm_core::layout::CursorSlot, read_cursor)) as u64;
/// Payload of each record of the crafted ring (framed: 208 bytes).
const CRAFTED_LEN: usize = 200;

/// Where the crafted ring's cursors are.
#[derive(Debug, Clone, Copy)]
struct Crafted {
    /// The write cursor a power loss left: the end of the publish before the last one.
    write: u64,
    /// The read cursor: two records into the last publish.
    read: u64,
}

fn set_u64(path: &std::path::Path, at: u64, value: u64) {
    let file = std::fs::OpenOptions::new().write(true).open(path).expect("open the file");
    file.write_all_at(&value.to_le_bytes(), at).expect("write the file");
}

/// A file ring whose last publish (three records: one to the ring's end, a padding
/// frame, two from its start) was read two records deep and released, then the file
/// given back the write cursor of the publish before it: what a power loss leaves when
/// the read cursor's page reached the disk before the last publish's header sync. 20
/// records produced as far as the read cursor, all of them consumed. Returns the
/// segment and its consumer, still attached (the caller drops them, or not).
fn reader_ahead_image(location: &Location) -> (Segment, shm_core::Consumer, Crafted) {
    let Location::File(path) = location else { unreachable!() };
    let segment = builder(location).create().expect("create");
    let mut producer = segment.producer().expect("producer");
    let mut consumer = segment.consumer().expect("consumer");
    for seq in 0..18u8 {
        producer.try_publish(&[seq; CRAFTED_LEN]).expect("publish");
    }
    let write = segment.stats().write_cursor;
    assert_eq!(write, 18 * 208);
    for _ in 0..18 {
        consumer.try_read().expect("read").release();
    }
    consumer.release_read();
    let mut batch = producer.batch();
    for seq in 18..21u8 {
        batch.try_push(&[seq; CRAFTED_LEN]).expect("push");
    }
    batch.publish().expect("publish the batch");
    assert_eq!(segment.stats().write_cursor, CAPACITY + 2 * 208, "the batch wrapped with a padding frame");
    for _ in 0..2 {
        consumer.try_read().expect("read").release();
    }
    consumer.release_read();
    drop(producer);
    let read = segment.stats().read_cursor;
    assert_eq!(read, CAPACITY + 208);
    set_u64(path, WRITE_CURSOR_AT, write);
    segment.flush().expect("msync");
    (segment, consumer, Crafted { write, read })
}

/// What opening the image at `location` gives: the repair, and the cursors after it.
fn open_image(location: &Location) -> (Segment, Option<shm_core::PowerLossRepair>) {
    let segment = builder(location).open().expect("open");
    let repair = segment.power_loss_repair();
    (segment, repair)
}

#[test]
fn a_reader_ahead_image_is_repaired_at_open() {
    let fx = Fixture::new("durability-repair");
    let location = fx.location(Backend::File);
    let (segment, consumer, crafted) = reader_ahead_image(&location);
    drop((segment, consumer));

    let (segment, repair) = open_image(&location);
    let repair = repair.expect("the image was not repaired");
    assert_eq!(
        repair,
        shm_core::PowerLossRepair {
            write_cursor_was: crafted.write,
            read_cursor: crafted.read,
            records: 2,
            bytes: 2 * CRAFTED_LEN as u64
        }
    );
    let stats = segment.stats();
    assert_eq!((stats.write_cursor, stats.read_cursor), (crafted.read, crafted.read));
    assert_eq!((stats.total_produced, stats.total_consumed), (20, 20), "counters after the repair");
    assert_eq!((stats.bytes_produced, stats.bytes_consumed), (20 * 200, 20 * 200));
    assert!(segment.peek(usize::MAX).expect("peek").is_empty());

    // The producer resumes after the last record walked, as a generator does.
    let mut producer = segment.producer().expect("producer attach");
    let (_, last) = producer.last_committed().expect("last committed");
    assert_eq!(last, [19u8; CRAFTED_LEN]);
    let mut consumer = segment.consumer().expect("consumer attach");
    assert_eq!(consumer.try_read().unwrap_err(), shm_core::TryReadError::Empty);
    producer.try_publish(&[20; CRAFTED_LEN]).expect("publish after the repair");
    assert_eq!(&*consumer.try_read().expect("read after the repair"), &[20u8; CRAFTED_LEN][..]);
    consumer.release_read();
    let stats = segment.stats();
    assert_eq!((stats.total_produced, stats.total_consumed), (21, 21));
    drop((producer, consumer));

    // The repair reached the file: opening again finds nothing to repair.
    let (_, again) = open_image(&location);
    assert_eq!(again, None);
}

/// Opening `location` repairs nothing, and every attach and peek refuses the cursors.
fn assert_refused(location: &Location, crafted: Crafted, case: &str) {
    let (segment, repair) = open_image(location);
    assert_eq!(repair, None, "{case}: repaired");
    let stats = segment.stats();
    assert_eq!((stats.write_cursor, stats.read_cursor), (crafted.write, crafted.read), "{case}: cursors moved");
    assert!(matches!(segment.peek(usize::MAX), Err(shm_core::PeekError::Corrupt { .. })), "{case}: peek");
    assert!(matches!(segment.producer(), Err(shm_core::AttachError::Corrupt { .. })), "{case}: producer");
    assert!(
        matches!(
            segment.consumer(),
            Err(shm_core::AttachError::Corrupt { .. } | shm_core::AttachError::RoleTaken { .. })
        ),
        "{case}: consumer"
    );
}

#[test]
fn a_reader_ahead_image_is_refused_while_a_role_is_held() {
    let fx = Fixture::new("durability-repair-held");
    let location = fx.location(Backend::File);
    let (segment, consumer, crafted) = reader_ahead_image(&location);
    // The consumer is still attached: with a live participant this state is corruption.
    assert_refused(&location, crafted, "consumer attached");
    drop((segment, consumer));
    let (_, repair) = open_image(&location);
    assert!(repair.is_some(), "not repaired once the consumer had gone");
}

#[test]
fn a_hostile_reader_ahead_image_is_refused() {
    let fx = Fixture::new("durability-repair-hostile");
    let data_at = |position: u64| HEADER_SIZE as u64 + (position & (CAPACITY - 1));
    let mut rng = seed("durability-repair-hostile");
    let mut cases = 0;
    // (what, how the file is changed, the cursors it is left with)
    type Damage = Box<dyn Fn(&std::path::Path, Crafted) -> Crafted>;
    let mut damages: Vec<(String, Damage)> = vec![
        (
            "a reserved record type between the cursors".into(),
            Box::new(move |path, c| {
                set_u64(
                    path,
                    data_at(c.write),
                    shm_core::ring::frame::encode(8, shm_core::ring::frame::RESERVED_TYPES),
                );
                c
            }),
        ),
        (
            "a record longer than the ring's maximum between the cursors".into(),
            Box::new(move |path, c| {
                set_u64(path, data_at(c.write), shm_core::ring::frame::encode(3000, 0));
                c
            }),
        ),
        (
            "the read cursor inside a record".into(),
            Box::new(|path, c| {
                set_u64(path, READ_CURSOR_AT, c.read - 8);
                Crafted { read: c.read - 8, ..c }
            }),
        ),
        (
            "the read cursor past the frame after it".into(),
            Box::new(|path, c| {
                set_u64(path, READ_CURSOR_AT, c.read + 8);
                Crafted { read: c.read + 8, ..c }
            }),
        ),
        (
            "the read cursor more than a ring ahead".into(),
            Box::new(|path, c| {
                set_u64(path, READ_CURSOR_AT, c.write + CAPACITY + 8);
                Crafted { read: c.write + CAPACITY + 8, ..c }
            }),
        ),
        (
            "the read cursor at the end of time".into(),
            Box::new(|path, c| {
                set_u64(path, READ_CURSOR_AT, u64::MAX - 7);
                Crafted { read: u64::MAX - 7, ..c }
            }),
        ),
    ];
    for k in 0..50 {
        let mut words = [0u64; 52];
        for w in &mut words {
            rng = shmring_tests::records::splitmix64(rng);
            *w = rng;
        }
        let damage: Damage = Box::new(move |path, c| {
            for (i, w) in words.iter().enumerate() {
                set_u64(path, data_at(c.write + 8 * i as u64), *w);
            }
            c
        });
        damages.push((format!("random bytes between the cursors ({k})"), damage));
    }
    for (what, damage) in &damages {
        let location = fx.location(Backend::File);
        let Location::File(path) = &location else { unreachable!() };
        let (segment, consumer, crafted) = reader_ahead_image(&location);
        drop((segment, consumer));
        let crafted = damage(path, crafted);
        assert_refused(&location, crafted, what);
        cases += 1;
    }
    assert_eq!(cases, 56);
}

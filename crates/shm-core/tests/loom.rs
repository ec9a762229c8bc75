//! Loom models of the rings (spsc, mpsc, broadcast, mpmc) and of the futex wake-up protocol.
//!
//! Under `--cfg loom` the heap ring runs over loom's atomics and its wake words are a
//! loom `Mutex` + `Condvar` model of the futex that ignores timeouts, so a lost wake-up
//! shows as a loom deadlock instead of a 100 ms stall. Each model moves a few small
//! records between a producer thread and the consumer (the model's main thread), both
//! with the `Futex` strategy so every wait goes through the sleep/wake protocol, and
//! checks that every record arrives once, whole, and in order.
//!
//! The producer's and the consumer's data regions share one loom cell per 8-byte word
//! (`Region::with_cells`), so a frame read that is not ordered after its write is a
//! causality failure: the models that pass a frame from one thread to another fail when
//! the Release store of the cursor that publishes it is weakened to Relaxed. Lost
//! wake-ups (a missing wake or fence) are caught as deadlocks by the models that sleep.
//!
//! That they can fail is checked, not assumed: CI runs them again with each of shm-core's
//! `mutation-*` features and requires each mutation to fail at least one model (the
//! broadcast models run apart, see `.ci/run`). The mutations of one kind's own orderings
//! run only that kind's models (`.ci/run` has the groups). Measured when they were added:
//! `mutation-mpsc-commit-relaxed` (the commit store) failed the four mpsc models,
//! `mutation-mpsc-claim-relaxed` (the claim's compare-and-swap) only the dead loser's,
//! `mutation-broadcast-publish-relaxed` (the publishing store and the fence before it) both
//! broadcast models, and `mutation-mpmc-ack-relaxed` (the acknowledgement) the three mpmc
//! models; `mutation-broadcast-no-lap-fence` (a lossy consumer's fence before its lap check)
//! the lossy broadcast model, which also failed with the check after the copy left out.
//! Not every model can see each mutation:
//! measured at 0e1c743, `mutation-publish-relaxed` (the write cursor's publishing store
//! weakened to Relaxed) failed 6 of the 13 models, and `mutation-no-wake-fence` (the
//! waker's SeqCst fence left out) 8 of the 13 plus the dead-consumer broadcast model,
//! which loom found deadlocked.
//!
//! Run (a separate target dir keeps the normal build warm):
//! `CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p shm-core --release --test loom`
//! (add `--features mutation-publish-relaxed`, or another `mutation-*` feature of shm-core,
//! to see them fail).
#![cfg(loom)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use loom::thread;
use shm_core::ring::heap::{spsc_pair, spsc_pair_counted};
use shm_core::{TryReadError, WaitStrategy};

/// Preemption bound when `LOOM_MAX_PREEMPTIONS` is not set: enough to interleave the
/// announce / fence / re-check of one side with the publish / fence / check of the other.
const DEFAULT_PREEMPTIONS: usize = 3;

/// Runs `body` under loom with a preemption bound, so each model stays small, and checks
/// that loom explored more than one interleaving (a model with a single path proves nothing).
fn check(name: &str, body: impl Fn() + Sync + Send + 'static) {
    check_bounded(name, DEFAULT_PREEMPTIONS, body);
}

/// Preemption bound of the mpsc models when `LOOM_MAX_PREEMPTIONS` is not set: three
/// threads with a compare-and-swap loop explode at 3 (the two-producer model ran for more
/// than ten minutes here); 2 still interleaves each claim, commit and wake-up check of one
/// side with the other's, and found the lost wake-up these models were written for.
const MPSC_PREEMPTIONS: usize = 2;

/// Branches one execution may take (see `check_bounded`).
const MAX_BRANCHES: usize = 10_000;

/// [`check`] with its own default preemption bound.
fn check_bounded(name: &str, preemptions: usize, body: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    // The model's bound caps `LOOM_MAX_PREEMPTIONS` (CI sets 3 for the two-thread spsc
    // models): past it, these three-thread models run for hours.
    builder.preemption_bound = Some(builder.preemption_bound.map_or(preemptions, |env| env.min(preemptions)));
    // Loom's default of 1,000 branches (atomic operations and switches in one execution)
    // is too few for three mpmc workers, each scanning every holding word when it takes;
    // a spin that never ends still fails, at this bound.
    builder.max_branches = builder.max_branches.max(MAX_BRANCHES);
    let executions = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&executions);
    builder.check(move || {
        counted.fetch_add(1, Ordering::Relaxed);
        body();
    });
    let executions = executions.load(Ordering::Relaxed);
    eprintln!("{name}: {executions} executions explored");
    assert!(executions > 1, "{name}: loom explored only {executions} execution");
}

/// Asserts the consumer has nothing more to read.
fn assert_drained(consumer: &mut shm_core::Consumer) {
    match consumer.try_read() {
        Err(TryReadError::Empty) => {}
        Ok(extra) => panic!("a record was delivered twice or invented: {:?}", &*extra),
        Err(other) => panic!("drained ring reports {other:?}"),
    }
}

/// (a) Data direction: the consumer sleeps for data while the producer publishes three
/// records one by one. A lost wake-up deadlocks the model; a record lost, repeated or out
/// of order fails the assertions.
#[test]
fn published_records_reach_a_sleeping_consumer_in_order() {
    const RECORDS: [&[u8]; 3] = [b"a", b"bbbbbbbbb", b"cc"];
    check("published_records_reach_a_sleeping_consumer_in_order", || {
        // 64 bytes hold all three frames (16 + 24 + 16), so only the consumer ever waits.
        let (mut producer, mut consumer) = spsc_pair(64, 24, WaitStrategy::Futex).unwrap();
        let producing = thread::spawn(move || {
            for record in RECORDS {
                producer.publish(record, None).unwrap();
            }
        });
        for (i, want) in RECORDS.iter().enumerate() {
            let got = consumer.read(None).unwrap();
            assert_eq!(&*got, *want, "record {i}");
            assert_eq!(got.record_type(), 0, "record {i}");
        }
        producing.join().unwrap();
        assert_drained(&mut consumer);
    });
}

/// (b) Space direction: a 32-byte ring holds two 16-byte frames, so the producer must
/// sleep for space before the third record, and only the consumer's release can wake it.
#[test]
fn producer_blocked_on_a_full_ring_is_woken_by_the_consumer() {
    const RECORDS: [&[u8]; 3] = [b"11111111", b"22222222", b"33333333"];
    check("producer_blocked_on_a_full_ring_is_woken_by_the_consumer", || {
        let (mut producer, mut consumer) = spsc_pair(32, 8, WaitStrategy::Futex).unwrap();
        let producing = thread::spawn(move || {
            for record in RECORDS {
                producer.publish(record, None).unwrap();
            }
        });
        for (i, want) in RECORDS.iter().enumerate() {
            let got = consumer.read(None).unwrap();
            assert_eq!(&*got, *want, "record {i}");
            // Frames are 16 bytes and never need padding here: positions are 0, 16, 32.
            assert_eq!(got.position(), 16 * i as u64, "record {i}");
        }
        producing.join().unwrap();
        assert_drained(&mut consumer);
    });
}

/// (c) A batch of two records is published with one cursor store: a consumer that has
/// seen the first must find the second without waiting. The batch fills the 32-byte ring,
/// so the record published after it must wait for the consumer to free space.
#[test]
fn batch_is_published_all_at_once() {
    const FIRST: &[u8] = b"first";
    const SECOND: &[u8] = b"second!!";
    const AFTER: &[u8] = b"after";
    check("batch_is_published_all_at_once", || {
        let (mut producer, mut consumer) = spsc_pair(32, 8, WaitStrategy::Futex).unwrap();
        let producing = thread::spawn(move || {
            let mut batch = producer.batch();
            batch.try_push(FIRST).unwrap();
            batch.try_push(SECOND).unwrap();
            batch.publish().unwrap();
            producer.publish(AFTER, None).unwrap();
        });
        let first = consumer.read(None).unwrap();
        assert_eq!(&*first, FIRST);
        drop(first);
        // Not `read`: if the batch were published in two steps, this could see Empty.
        let second = consumer.try_read().expect("the second record of a batch is visible with the first");
        assert_eq!(&*second, SECOND);
        drop(second);
        assert_eq!(&*consumer.read(None).unwrap(), AFTER);
        producing.join().unwrap();
        assert_drained(&mut consumer);
    });
}

/// (d) Wrap-around: in a 64-byte ring, two 24-byte frames (16-byte payloads) end at 48; the third frame
/// (24 bytes) does not fit in the 16 bytes before the end, so the producer writes a
/// padding frame over them, waits until the consumer frees the first frame, and writes
/// the record at index 0 (position 64). The consumer must skip the padding.
#[test]
fn record_after_a_padding_frame_wraps_to_the_start() {
    const RECORDS: [&[u8]; 3] = [b"record number 1!", b"record number 2!", b"record number 3!"];
    const POSITIONS: [u64; 3] = [0, 24, 64];
    check("record_after_a_padding_frame_wraps_to_the_start", || {
        let (mut producer, mut consumer) = spsc_pair(64, 24, WaitStrategy::Futex).unwrap();
        let producing = thread::spawn(move || {
            for record in RECORDS {
                producer.publish(record, None).unwrap();
            }
        });
        for (i, want) in RECORDS.iter().enumerate() {
            let got = consumer.read(None).unwrap();
            assert_eq!(&*got, *want, "record {i}");
            assert_eq!(got.position(), POSITIONS[i], "record {i}");
        }
        producing.join().unwrap();
        assert_drained(&mut consumer);
    });
}

/// (e) Both directions in one run: four records through a two-frame ring, each side
/// sleeping in turn; the consumer takes them with `read_batch` after `wait_for_data`.
#[test]
fn read_batch_and_blocked_producer_hand_over_every_record() {
    const RECORDS: [&[u8]; 4] = [b"w", b"xx", b"yyy", b"zzzz"];
    check("read_batch_and_blocked_producer_hand_over_every_record", || {
        let (mut producer, mut consumer) = spsc_pair(32, 8, WaitStrategy::Futex).unwrap();
        let producing = thread::spawn(move || {
            for record in RECORDS {
                producer.publish(record, None).unwrap();
            }
        });
        let mut seen: Vec<Vec<u8>> = Vec::new();
        while seen.len() < RECORDS.len() {
            consumer.wait_for_data(None).unwrap();
            let taken = consumer
                .read_batch(RECORDS.len(), |r| {
                    seen.push(r.data.to_vec());
                    Ok::<_, ()>(())
                })
                .unwrap();
            assert!(taken >= 1, "wait_for_data returned but read_batch found nothing");
        }
        assert_eq!(seen, RECORDS.map(<[u8]>::to_vec));
        producing.join().unwrap();
        assert_drained(&mut consumer);
    });
}

/// (f) Counters: a reader that takes the totals the way `shmctl stat` does (consumed
/// first, then produced) while a record moves through the ring never sees more records
/// consumed than produced. The producer stores its total before its cursor; the consumer
/// stores its total with Release after it has seen that cursor, and the reader loads it
/// with Acquire, so the produced total it loads next is at least as new.
#[test]
fn stats_never_show_more_consumed_than_produced() {
    check("stats_never_show_more_consumed_than_produced", || {
        let (mut producer, mut consumer, totals) = spsc_pair_counted(64, 24, WaitStrategy::Futex).unwrap();
        let reading = thread::spawn(move || {
            for _ in 0..2 {
                let (produced, consumed) = totals.read();
                assert!(consumed <= produced, "stat read {consumed} consumed but only {produced} produced");
            }
        });
        let producing = thread::spawn(move || producer.publish(b"a", None).unwrap());
        assert_eq!(&*consumer.read(None).unwrap(), b"a");
        producing.join().unwrap();
        reading.join().unwrap();
    });
}

/// mpsc (a): two producers race for claims (one record each) while the consumer sleeps
/// for data. Every record arrives once, whole, each
/// producer's in its own order; a weakened commit store (Relaxed instead of Release) is a
/// causality failure on the payload's cell, and a lost wake-up a deadlock.
#[test]
fn mpsc_two_producers_race_for_claims_and_every_record_arrives_in_order() {
    use shm_core::ring::heap::MpscHeapRing;
    check_bounded("mpsc_two_producers_race_for_claims_and_every_record_arrives_in_order", MPSC_PREEMPTIONS, || {
        let ring = MpscHeapRing::new(128, 24, WaitStrategy::Futex).unwrap();
        let (mut a, mut b, mut consumer) = (ring.producer(0), ring.producer(1), ring.consumer());
        let first = thread::spawn(move || a.publish(b"a0", None).unwrap());
        let second = thread::spawn(move || b.publish(b"b0", None).unwrap());
        let mut seen: Vec<(usize, Vec<u8>)> = Vec::new();
        while seen.len() < 2 {
            let r = consumer.read(None).unwrap();
            seen.push((r.producer(), r.to_vec()));
        }
        let of = |k: usize| seen.iter().filter(|(p, _)| *p == k).map(|(_, d)| d.clone()).collect::<Vec<_>>();
        assert_eq!(of(0), [b"a0".to_vec()]);
        assert_eq!(of(1), [b"b0".to_vec()]);
        first.join().unwrap();
        second.join().unwrap();
        assert!(consumer.try_read().is_err(), "a record delivered twice or invented");
    });
}

/// mpsc (b): wrap with padding. In a 64-byte ring frames of 32 and 16 bytes end at 48; the
/// next 24-byte frame does not fit before the end, so its producer claims 16 bytes of
/// padding with it, which needs the consumer to release the first frame: the claim waits
/// for space while the consumer reads, and the consumer skips the padding.
#[test]
fn mpsc_claims_that_wrap_write_padding_and_wait_for_the_consumer() {
    use shm_core::ring::heap::MpscHeapRing;
    check_bounded("mpsc_claims_that_wrap_write_padding_and_wait_for_the_consumer", MPSC_PREEMPTIONS, || {
        let ring = MpscHeapRing::new(64, 24, WaitStrategy::Futex).unwrap();
        let (mut a, mut b, mut consumer) = (ring.producer(0), ring.producer(1), ring.consumer());
        a.publish(&[7; 24], None).unwrap();
        b.publish(&[8; 8], None).unwrap();
        let racing = thread::spawn(move || a.publish(&[9; 16], None).unwrap());
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let r = consumer.read(None).unwrap();
            seen.push(r.to_vec());
        }
        assert_eq!(seen, [vec![7; 24], vec![8; 8], vec![9; 16]]);
        racing.join().unwrap();
        assert!(consumer.try_read().is_err());
    });
}

/// mpsc (c): hole reclamation. Producer 1 claims and dies before committing (its claim is
/// forgotten, then its liveness flag cleared: the kernel dropping its lock); producer 0
/// publishes concurrently, before or after that claim. The consumer delivers producer 0's
/// record exactly once and counts one unblocked record for producer 1, whatever the
/// interleaving; reclaiming while producer 1 is alive would deliver nothing torn but would
/// count a hole for a live producer, which the final checks reject.
#[test]
fn mpsc_a_dead_producers_claim_becomes_padding_exactly_once() {
    use shm_core::ring::heap::MpscHeapRing;
    check_bounded("mpsc_a_dead_producers_claim_becomes_padding_exactly_once", MPSC_PREEMPTIONS, || {
        let ring = std::sync::Arc::new(MpscHeapRing::new(128, 24, WaitStrategy::Spin).unwrap());
        let (mut a, mut b, mut consumer) = (ring.producer(0), ring.producer(1), ring.consumer());
        let dying = thread::spawn(move || {
            let mut claim = b.try_claim(8).unwrap();
            claim[..4].copy_from_slice(b"torn");
            std::mem::forget(claim);
        });
        let living = thread::spawn(move || a.publish(b"whole", None).unwrap());
        dying.join().unwrap();
        ring.kill(1);
        let r = consumer.read(None).unwrap();
        assert_eq!((r.producer(), &*r), (0, &b"whole"[..]));
        drop(r);
        living.join().unwrap();
        assert!(consumer.try_read().is_err());
        assert_eq!(consumer.unblocked(1), 1);
        assert_eq!(consumer.unblocked(0), 0);
    });
}

/// mpsc (d): a loser's stale intent. In a 32-byte ring that holds two 16-byte frames and
/// already holds one record, producers 0 and 1 race for the last frame. Producer 1 tries
/// once: when it loses the race, the ring is full and it gives up, leaving an intent that
/// names the frame producer 0 won; then it dies. While producer 0 is still between its
/// claim and its commit, the consumer must find producer 0's own intent (published by the
/// Release half of its compare-and-swap) and wait for it. Without it, the dead loser's
/// intent alone names the frame and the consumer reclaims a live producer's claim: it
/// zeroes bytes producer 0 is writing (a race on their cells) and loses its record.
#[test]
fn mpsc_a_dead_losers_stale_intent_never_reclaims_a_live_claim() {
    use shm_core::TryClaimError;
    use shm_core::ring::heap::MpscHeapRing;
    check_bounded("mpsc_a_dead_losers_stale_intent_never_reclaims_a_live_claim", MPSC_PREEMPTIONS, || {
        let ring = MpscHeapRing::new(32, 8, WaitStrategy::Spin).unwrap();
        let (mut a, mut b, mut consumer) = (ring.producer(0), ring.producer(1), ring.consumer());
        a.publish(b"first", None).unwrap();
        let living = thread::spawn(move || a.publish(b"second", None).unwrap());
        let dying = thread::spawn(move || match b.try_claim(8) {
            Ok(claim) => {
                std::mem::forget(claim);
                true
            }
            Err(TryClaimError::Full) => false,
            Err(e) => panic!("{e}"),
        });
        let claimed = dying.join().unwrap();
        ring.kill(1);
        for want in [&b"first"[..], b"second"] {
            let r = consumer.read(None).unwrap();
            assert_eq!((r.producer(), &*r), (0, want));
        }
        living.join().unwrap();
        assert!(consumer.try_read().is_err(), "a record delivered twice or invented");
        assert_eq!(consumer.unblocked(1), u64::from(claimed), "a hole counted only for a claim producer 1 made");
        assert_eq!(consumer.unblocked(0), 0, "a live producer's claim reclaimed");
    });
}

/// Preemption bound of the broadcast models when `LOOM_MAX_PREEMPTIONS` is not set: three
/// threads (a producer, two consumers) each with a wait loop ran for more than twenty
/// minutes at 2 here; 1 still interleaves each side's announce/re-check with the other's
/// publish/check, and found the two lost wake-ups these models were written for (a shared
/// data word used as a flag; the producer's "seen" cursors taken at sleep time).
const BROADCAST_PREEMPTIONS: usize = 1;

/// broadcast (a): one producer, two consumers, each in its own thread, in a 64-byte ring
/// that holds two 24-byte frames: the third record wraps (a padding frame) and must wait
/// until both live consumers have released the first. Each consumer sees every record
/// once, in order, none missed; a read before its write, or an overwrite of a frame a live
/// consumer has not released, is a race on that word's cell (loom fails the model); a
/// lost wake-up on either side deadlocks it.
#[test]
fn broadcast_two_consumers_each_see_every_record_and_hold_the_producer_back() {
    use shm_core::ring::heap::BroadcastHeapRing;
    const RECORDS: [&[u8; 8]; 3] = [b"record-0", b"record-1", b"record-2"];
    check_bounded(
        "broadcast_two_consumers_each_see_every_record_and_hold_the_producer_back",
        BROADCAST_PREEMPTIONS,
        || {
            let ring = BroadcastHeapRing::new(64, false, WaitStrategy::Futex).unwrap();
            let (mut a, mut b) = (ring.consumer("a"), ring.consumer("b"));
            let mut producer = ring.producer();
            let producing = thread::spawn(move || {
                for record in RECORDS {
                    producer.publish(record, None).unwrap();
                }
            });
            let second = thread::spawn(move || {
                for (i, want) in RECORDS.iter().enumerate() {
                    let r = b.read(None).unwrap();
                    assert_eq!((r.data, r.seq, r.missed), (&want[..], i as u64, 0), "b, record {i}");
                }
                b.release();
            });
            for (i, want) in RECORDS.iter().enumerate() {
                let r = a.read(None).unwrap();
                assert_eq!((r.data, r.seq, r.missed), (&want[..], i as u64, 0), "a, record {i}");
            }
            producing.join().unwrap();
            second.join().unwrap();
            assert!(a.try_read().is_err(), "a record delivered twice or invented");
        },
    );
}

/// broadcast (b): a consumer that died without releasing anything does not hold the
/// producer back: the producer passes it (its lock is gone) and streams past it while the
/// live consumer reads every record; the dead one, back under its name, is told exactly
/// how many it missed.
#[test]
fn broadcast_a_dead_consumer_is_passed_and_told_what_it_missed() {
    use shm_core::ring::heap::BroadcastHeapRing;
    check_bounded("broadcast_a_dead_consumer_is_passed_and_told_what_it_missed", BROADCAST_PREEMPTIONS, || {
        let ring = BroadcastHeapRing::new(64, false, WaitStrategy::Futex).unwrap();
        let (mut live, dead) = (ring.consumer("live"), ring.consumer("dead"));
        ring.kill(dead);
        let mut producer = ring.producer();
        let producing = thread::spawn(move || {
            for i in 0..4u64 {
                producer.publish(&i.to_le_bytes(), None).unwrap();
            }
            producer
        });
        for i in 0..4u64 {
            let r = live.read(None).unwrap();
            assert_eq!((r.data, r.seq, r.missed), (&i.to_le_bytes()[..], i, 0));
        }
        let mut producer = producing.join().unwrap();
        assert!(producer.dead_passes() > 0, "the producer never had to pass the dead consumer");
        live.release();
        // Back, it holds the producer back again: it finds itself lapped and moves to
        // the newest record before the producer can go on.
        let mut back = ring.consumer("dead");
        assert!(back.try_read().is_err(), "lapped: nothing to read at the newest record");
        assert_eq!(back.next_seq(), 4, "records 0..4 counted missed at once");
        producer.publish(&4u64.to_le_bytes(), None).unwrap();
        let r = back.read(None).unwrap();
        assert_eq!((r.seq, r.missed), (4, 4), "told it missed records 0..4");
    });
}

/// broadcast (c), lossy: the producer never waits, and laps a consumer that reads while it
/// publishes five records into a ring of four. Every record the consumer is handed is whole
/// (its payload is its own sequence number: a copy the producer overwrote in the middle
/// fails), in order, and the records it skipped are exactly what it is told it missed; at
/// the end it has passed all six. (Loom runs the producer's writes between the words of a
/// copy: see `Region::overwritten_under_copies`.)
#[test]
fn broadcast_lossy_a_lapped_consumer_gets_whole_records_and_counts_what_it_missed() {
    use shm_core::ring::heap::BroadcastHeapRing;
    const RECORDS: u64 = 5;
    check_bounded(
        "broadcast_lossy_a_lapped_consumer_gets_whole_records_and_counts_what_it_missed",
        BROADCAST_PREEMPTIONS,
        || {
            // 64 bytes: four 16-byte frames (8-byte header, 8-byte payload) per lap.
            let ring = BroadcastHeapRing::new(64, true, WaitStrategy::Spin).unwrap();
            let mut consumer = ring.consumer("lapped");
            let mut producer = ring.producer();
            // Record 0 is there when the consumer starts; record 4 is written where it was.
            producer.publish(&0u64.to_le_bytes(), None).unwrap();
            let producing = thread::spawn(move || {
                for i in 1..RECORDS {
                    producer.publish(&i.to_le_bytes(), None).unwrap();
                }
            });
            // (next sequence number expected, records handed, records told missed)
            let mut seen = (0u64, 0u64, 0u64);
            let mut take = |consumer: &mut shm_core::ring::broadcast::Consumer| match consumer.try_read() {
                Ok(r) => {
                    assert_eq!(r.data, &r.seq.to_le_bytes()[..], "record {} handed torn or another's", r.seq);
                    assert_eq!(r.seq, seen.0 + r.missed, "record {} after {}: missed {}", r.seq, seen.0, r.missed);
                    seen = (r.seq + 1, seen.1 + 1, seen.2 + r.missed);
                    true
                }
                Err(TryReadError::Empty) => false,
                Err(e) => panic!("{e}"),
            };
            // One read while the producer runs, then the rest.
            take(&mut consumer);
            producing.join().unwrap();
            while take(&mut consumer) {}
            assert_eq!(seen.1 + seen.2, seen.0, "handed {} and missed {} of {}", seen.1, seen.2, seen.0);
            assert_eq!(consumer.next_seq(), RECORDS, "the consumer did not pass every record");
        },
    );
}

/// mpmc (a): two workers race for two committed records. Each record goes to exactly one
/// worker, and while a worker holds its record unacknowledged the release cursor the
/// producers see has not passed it; once both are acknowledged it covers both.
#[test]
fn mpmc_two_workers_race_for_frames_each_record_once_and_release_waits_for_acks() {
    use shm_core::ring::heap::MpscHeapRing;
    check_bounded("mpmc_two_workers_race_for_frames", MPSC_PREEMPTIONS, || {
        let ring = std::sync::Arc::new(MpscHeapRing::new(64, 24, WaitStrategy::Spin).unwrap());
        let mut p = ring.producer(0);
        p.try_publish(b"one").unwrap();
        p.try_publish(b"two").unwrap();
        let racer = |id: usize| {
            let ring = ring.clone();
            let mut w = ring.worker(id);
            thread::spawn(move || {
                let job = match w.try_take() {
                    Ok(job) => job,
                    Err(TryReadError::Empty) => return None,
                    Err(e) => panic!("{e}"),
                };
                let got = (job.position(), job.to_vec());
                assert!(ring.release_cursor() <= job.position(), "released past an unacknowledged record");
                job.ack().unwrap();
                Some(got)
            })
        };
        let (a, b) = (racer(0), racer(1));
        let mut got: Vec<_> = [a.join().unwrap(), b.join().unwrap()].into_iter().flatten().collect();
        let mut late = ring.worker(2);
        loop {
            match late.try_take() {
                Ok(job) => {
                    got.push((job.position(), job.to_vec()));
                    job.ack().unwrap();
                }
                Err(TryReadError::Empty) => break,
                Err(e) => panic!("{e}"),
            }
        }
        got.sort();
        assert_eq!(got, [(0, b"one".to_vec()), (16, b"two".to_vec())]);
        assert_eq!(ring.release_cursor(), 32);
    });
}

/// mpmc (b): a worker dies holding a record (its job forgotten, then its liveness flag
/// cleared: the kernel dropping its lock) while another worker takes concurrently. The
/// record is handed over exactly once, flagged redelivered; the other record arrives once.
#[test]
fn mpmc_a_dead_workers_record_is_handed_over_exactly_once() {
    use shm_core::ring::heap::MpscHeapRing;
    check_bounded("mpmc_a_dead_workers_record_is_handed_over_exactly_once", MPSC_PREEMPTIONS, || {
        let ring = std::sync::Arc::new(MpscHeapRing::new(64, 24, WaitStrategy::Spin).unwrap());
        let mut p = ring.producer(0);
        p.try_publish(b"one").unwrap();
        p.try_publish(b"two").unwrap();
        let mut dying = ring.worker(0);
        let mut living = ring.worker(1);
        let dies = thread::spawn(move || {
            let job = match dying.try_take() {
                Ok(j) => {
                    let got = j.to_vec();
                    std::mem::forget(j);
                    Some(got)
                }
                Err(TryReadError::Empty) => None,
                Err(e) => panic!("{e}"),
            };
            drop(dying);
            job
        });
        let lives = thread::spawn(move || {
            let got = match living.try_take() {
                Ok(j) => Some((j.to_vec(), j.redelivered())),
                Err(TryReadError::Empty) => None,
                Err(e) => panic!("{e}"),
            };
            (living, got)
        });
        let held = dies.join().unwrap();
        ring.kill_worker(0);
        let (mut living, first) = lives.join().unwrap();
        let mut got: Vec<_> = first.into_iter().collect();
        loop {
            match living.try_take() {
                Ok(job) => got.push((job.to_vec(), job.redelivered())),
                Err(TryReadError::Empty) => break,
                Err(e) => panic!("{e}"),
            }
        }
        let handed: Vec<_> = got.iter().filter(|g| g.1).map(|g| g.0.clone()).collect();
        assert_eq!(handed, held.into_iter().collect::<Vec<_>>(), "the dead worker's record, once");
        let mut all: Vec<_> = got.into_iter().map(|g| g.0).collect();
        all.sort();
        assert_eq!(all, [b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(ring.release_cursor(), 32);
    });
}

/// mpmc (c): workers 0 and 1 race for the only record; worker 1 takes once and dies,
/// holding the record if it won. A third worker, taking after that death, and worker 0
/// (taking concurrently, before or after it) hand over a record worker 1 died holding
/// exactly once, flagged redelivered, and never one a live worker holds or acknowledged.
/// It found two faults: a loser of the race kept its intent naming the record, so a scan
/// counted it as a live holder and the dead winner's record was never handed over while
/// the loser found nothing else to take; and a worker that read a hand-off another worker
/// had already taken, acknowledged and released called the ring corrupt.
#[test]
fn mpmc_a_dead_winners_record_is_handed_over_once_past_a_live_loser() {
    use shm_core::ring::heap::MpscHeapRing;
    check_bounded("mpmc_a_dead_winners_record_is_handed_over_once_past_a_live_loser", MPSC_PREEMPTIONS, || {
        let ring = std::sync::Arc::new(MpscHeapRing::new(64, 24, WaitStrategy::Spin).unwrap());
        ring.producer(0).try_publish(b"one").unwrap();
        let take = |w: &mut shm_core::ring::mpmc::Worker, ack: bool| match w.try_take() {
            Ok(job) => {
                let got = (job.to_vec(), job.redelivered());
                if ack {
                    job.ack().unwrap()
                } else {
                    std::mem::forget(job)
                }
                Some(got)
            }
            Err(TryReadError::Empty) => None,
            Err(e) => panic!("{e}"),
        };
        let (mut living, mut dying) = (ring.worker(0), ring.worker(1));
        let lives = thread::spawn(move || take(&mut living, true));
        let dies = thread::spawn(move || take(&mut dying, false).is_some());
        let died_holding = dies.join().unwrap();
        ring.kill_worker(1);
        let mut late = ring.worker(2);
        let late_got = take(&mut late, true);
        let mut got: Vec<_> = late_got.into_iter().chain(lives.join().unwrap()).collect();
        // Whatever the late worker found handed over and left, once the living one is done.
        got.extend(take(&mut late, true));
        assert_eq!(got.len(), 1, "delivered to live workers {} times: {got:?}", got.len());
        assert_eq!(got[0], (b"one".to_vec(), died_holding), "redelivered exactly when its taker died holding it");
        assert!(take(&mut late, true).is_none(), "a record delivered twice or invented");
    });
}

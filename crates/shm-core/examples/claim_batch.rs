//! Zero-copy records, written in place and published in batches.
//!
//! The producer claims space in the ring and encodes each record straight into it (no
//! buffer of its own, no copy), inside a [`Batch`](shm_core::Batch): the records are
//! committed one by one and published together, with one store of the write cursor and
//! at most one wake-up of the consumer, when the batch ends. A claim sized for the largest
//! record can commit fewer bytes (`commit_len`), as a datagram receiver would. The
//! consumer decodes the records where they lie (`read_batch_durable`) and makes its
//! progress durable before their space goes back to the producer; when that step fails,
//! nothing is released and the same records come again.
//!
//! It runs in one process over an anonymous segment (no name to clean up); the calls are
//! the same over a named one shared by two processes (see the `two_process` example).
//!
//! Run: `cargo run --release -p shm-core --example claim_batch`

use std::time::Duration;

use shm_core::{BatchError, Location, Segment, TryClaimError};

/// Record types (application values; `0xFFFF_0000` and up are reserved).
const TICK: u32 = 1;
const NOTE: u32 = 2;
/// A tick: sequence number (u64), price in cents (u64), quantity (u32), little-endian.
const TICK_LEN: usize = 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let segment = Segment::builder(Location::Anon).capacity(4096).create()?;
    let mut producer = segment.producer()?;
    let mut consumer = segment.consumer()?;

    // Fill the ring in one batch: claim, encode in place, commit; until it is full.
    let mut batch = producer.batch();
    let mut ticks = 0u64;
    loop {
        let mut claim = match batch.try_claim(TICK_LEN) {
            Ok(claim) => claim,
            Err(TryClaimError::Full) => break,
            Err(e) => return Err(e.into()),
        };
        claim.set_record_type(TICK);
        claim[0..8].copy_from_slice(&ticks.to_le_bytes());
        claim[8..16].copy_from_slice(&(10_000 + ticks).to_le_bytes());
        claim[16..20].copy_from_slice(&(ticks as u32 % 7 + 1).to_le_bytes());
        claim.commit()?;
        ticks += 1;
    }
    // Nothing is visible to the consumer until the batch ends.
    assert!(matches!(consumer.try_read(), Err(shm_core::TryReadError::Empty)));
    batch.publish()?;
    println!("published {ticks} ticks in one batch: {} bytes of 4096 in use", segment.stats().used_bytes);

    // The first delivery's durable step fails: nothing is released, so the same records
    // come again, and the second attempt succeeds.
    let mut progress_saved = None;
    for attempt in 1..=2 {
        let mut decoded = Vec::new();
        let outcome = consumer.read_batch_durable(
            usize::MAX,
            |record| {
                let field = |range: std::ops::Range<usize>| record.data.get(range).ok_or("short tick");
                let seq = u64::from_le_bytes(field(0..8)?.try_into().map_err(|_| "short tick")?);
                let price = u64::from_le_bytes(field(8..16)?.try_into().map_err(|_| "short tick")?);
                decoded.push((record.record_type, seq, price));
                Ok(())
            },
            |next_position| {
                if attempt == 1 {
                    return Err("disk full (simulated): progress not saved");
                }
                progress_saved = Some(next_position);
                Ok(())
            },
        );
        match outcome {
            Ok(n) => println!("attempt {attempt}: {n} records decoded in place and released"),
            Err(BatchError::Sink { error, .. }) => println!("attempt {attempt}: {error}; nothing released"),
            Err(BatchError::Corrupt(c)) => return Err(c.into()),
        }
        assert_eq!(decoded.len() as u64, ticks, "each attempt sees every tick");
        assert!(decoded.iter().enumerate().all(|(i, &(kind, seq, _))| kind == TICK && seq == i as u64));
    }
    println!("progress saved at ring position {progress_saved:?}");

    // A claim sized for the largest note, committed at the length actually written.
    let text = b"end of session";
    let mut claim = producer.claim(256, Some(Duration::from_secs(1)))?;
    claim.set_record_type(NOTE);
    claim[..text.len()].copy_from_slice(text);
    claim.commit_len(text.len())?;
    let note = consumer.read(Some(Duration::from_secs(1)))?;
    assert_eq!((note.record_type(), &*note), (NOTE, &text[..]));
    println!("note of {} bytes from a 256-byte claim: {:?}", note.len(), String::from_utf8_lossy(&note));
    drop(note);

    let stats = segment.stats();
    assert_eq!((stats.total_produced, stats.total_consumed), (ticks + 1, ticks + 1));
    println!("produced {}, consumed {}", stats.total_produced, stats.total_consumed);
    Ok(())
}

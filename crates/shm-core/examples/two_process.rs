//! A producer and a consumer in two processes, over a named POSIX segment
//! (`/dev/shm/NAME`). Start them in either order, in two terminals:
//!
//! ```sh
//! cargo run --release -p shm-core --example two_process -- consume /shmring-example 100000
//! cargo run --release -p shm-core --example two_process -- produce /shmring-example 100000
//! ```
//!
//! Both open the segment, or create it if they come first (`open_or_create`: whoever
//! loses the race opens the winner's). The producer publishes `COUNT` records, each
//! carrying its sequence number, waiting for space when the ring is full; the consumer
//! reads them in batches, checks that none is missing, repeated or out of order, and
//! removes the segment's name when it has them all.
//!
//! With no arguments it runs both: it starts itself twice (`produce` and `consume` on a
//! segment named after its pid) and exits non-zero unless both children succeed. CI
//! runs it that way.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use shm_core::{BatchError, Location, Segment, SegmentBuilder};

/// A small ring, so that the producer fills it and waits for the consumer many times.
const CAPACITY: u64 = 64 * 1024;
/// How long either side waits for the other (to start, to make room, to publish).
const PATIENCE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.as_slice() {
        [] => both(),
        [mode, name, count] => match count.parse::<u64>() {
            Ok(count) => run(mode, name, count),
            Err(e) => Err(format!("COUNT {count:?}: {e}").into()),
        },
        _ => Err("usage: two_process [produce|consume NAME COUNT]".into()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("two_process: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(mode: &str, name: &str, count: u64) -> Result<(), Box<dyn std::error::Error>> {
    let builder = Segment::builder(Location::posix(name)?).capacity(CAPACITY);
    match mode {
        "produce" => produce(&builder, count),
        "consume" => consume(&builder, count),
        other => Err(format!("mode {other:?}: expected produce or consume").into()),
    }
}

/// Publishes records `0..count`, each an 8-byte little-endian sequence number followed by
/// some text, waiting up to `PATIENCE` for space each time.
fn produce(builder: &SegmentBuilder, count: u64) -> Result<(), Box<dyn std::error::Error>> {
    let segment = builder.open_or_create()?;
    let mut producer = segment.producer()?;
    let started = Instant::now();
    for seq in 0..count {
        let mut record = seq.to_le_bytes().to_vec();
        record.extend_from_slice(b" hello from the producer");
        producer.publish(&record, Some(PATIENCE))?;
    }
    println!("produced {count} records in {:?}", started.elapsed());
    Ok(())
}

/// Reads `count` records in batches, checks their sequence numbers, then unlinks the
/// segment's name.
fn consume(builder: &SegmentBuilder, count: u64) -> Result<(), Box<dyn std::error::Error>> {
    let segment = builder.open_or_create()?;
    let mut consumer = segment.consumer()?;
    let started = Instant::now();
    let mut expected = 0u64;
    while expected < count {
        consumer.wait_for_data(Some(PATIENCE))?;
        consumer
            .read_batch(256, |record| {
                let seq = record.data.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
                if seq != Some(expected) {
                    return Err(format!("record {seq:?} where {expected} was due"));
                }
                expected += 1;
                Ok(())
            })
            .map_err(|e| match e {
                BatchError::Sink { error, .. } => error,
                BatchError::Corrupt(c) => c.to_string(),
            })?;
    }
    let stats = segment.stats();
    println!(
        "consumed {count} records in order in {:?}; the consumer waited for data {} times, the producer for space {} times",
        started.elapsed(),
        stats.consumer_blocks,
        stats.producer_blocks
    );
    Segment::unlink(segment.location())?;
    Ok(())
}

/// Runs `consume` and `produce` as two child processes of this same program.
fn both() -> Result<(), Box<dyn std::error::Error>> {
    let name = format!("/shmring-example-{}", std::process::id());
    let count = "100000";
    let program = std::env::current_exe()?;
    let spawn = |mode: &str| Command::new(&program).args([mode, &name, count]).spawn();
    let mut consumer = spawn("consume")?;
    let producer = spawn("produce").and_then(|mut producer| producer.wait());
    let consumer = consumer.wait();
    // The consumer unlinks on success; after a failure the name may still be there.
    let _ = Segment::unlink(&Location::posix(&name)?);
    let (producer, consumer) = (producer?, consumer?);
    if !producer.success() || !consumer.success() {
        return Err(format!("producer {producer}, consumer {consumer}").into());
    }
    Ok(())
}

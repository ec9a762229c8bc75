//! The `nats` source: a durable JetStream pull consumer whose messages become ring
//! records, each exactly once.
//!
//! # Exactly once into the ring
//! A message is acknowledged only after its record is committed (published) in the ring,
//! so a producerd killed in between gets it again. What the ring holds decides what was
//! committed, through an intent file (`[nats] state`) written before each commit:
//! `(segment created ns, write cursor before the commit, the message's stream sequence,
//! the sequence committed before it)`. This daemon is the ring's only producer and a
//! commit is one cursor store, so on a restart the write cursor tells which: past the
//! recorded one, the message was committed; at it, it was not. A kill anywhere between
//! the intent and the commit, or after the commit and before the acknowledgement, is
//! therefore resolved by the ring itself.
//!
//! On start the durable consumer is positioned right after the last committed sequence
//! (deleted and created again with `deliver_policy = by_start_sequence`), so the
//! records come in stream order without the redelivered ones of a dead run arriving
//! late; a message at or below the last committed sequence (the server redelivers one
//! whose acknowledgement it did not get within `ack_wait`) is acknowledged and dropped,
//! counted `deduplicated`. Acknowledgements use `ack_policy = all`: one per batch.
//!
//! # No message past a hole
//! Dropping what is at or below the last committed sequence, and `ack_policy = all`, are
//! right only if nothing is committed past a message not yet committed. A delivery lost
//! on its way (the node this client is connected to dies with it in its buffers, or the
//! consumer's leader dies after recording it as delivered) breaks that: the server
//! delivers the next ones at once and the lost one only after `ack_wait`. So the puller
//! keeps the last stream sequence it handed on, and when the consumer skips sequences
//! after it, it reads the skipped ones of its subject from the stream and hands them on
//! first (see [`fill_gap`]). A stream-leader kill in a three-node cluster lost a whole
//! pull batch (512 records) before it did.
//!
//! Only spsc rings: the intent's proof is the ring's single write cursor. The intent file
//! is written (not fsynced) per record: the promise holds across process crashes, as for
//! the file sink with `fsync = "never"`.
//!
//! The network runs on the bridge's runtime (`shm_daemon::nats::runtime`); the ring
//! thread only takes deliveries from a bounded channel and hands acknowledgements back.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::message::Acker;
use futures_util::StreamExt;
use shm_core::Segment;
use shm_daemon::nats::{BridgeCounters, NatsSettings, TYPE_HEADER, record_type_from_header};
use shm_daemon::record::fnv1a;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::daemon::{RingProducer, Shared, commit_waiting};

/// How long the ring thread waits for deliveries before it checks its flags.
const STEP: Duration = Duration::from_millis(100);
/// How long the server waits for an acknowledgement before it redelivers.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// One message taken from the stream.
struct Delivery {
    stream_sequence: u64,
    delivered: i64,
    /// From the sink's `Shmring-Type` header (0 without one).
    record_type: u32,
    payload: bytes::Bytes,
    /// `None` for a message read from the stream to fill a gap (see [`fill_gap`]): a
    /// later delivery's acknowledgement covers it (`ack_policy = all`).
    acker: Option<Acker>,
}

/// The source, opened before the daemon reports ready (its runtime started).
pub struct NatsSource {
    settings: NatsSettings,
    runtime: tokio::runtime::Runtime,
    counters: Arc<BridgeCounters>,
}

impl NatsSource {
    /// Starts the bridge's runtime; the connection is made when the source runs.
    pub fn open(settings: &NatsSettings) -> Result<Self> {
        Ok(NatsSource {
            settings: settings.clone(),
            runtime: shm_daemon::nats::runtime()?,
            counters: shm_daemon::nats::register_counters(),
        })
    }

    /// Moves messages into the ring until stopped (see the module docs).
    pub fn run(&mut self, producer: &mut RingProducer, segment: &Segment, shared: &Shared) -> Result<()> {
        if !matches!(producer, RingProducer::Spsc(_)) {
            bail!(
                "{}: the nats source writes spsc rings only (its exactly-once bookkeeping is the ring's one write cursor)",
                segment.location()
            );
        }
        let state_path = self.settings.state.clone().context("nats.state is required for the source")?;
        let created = segment.info()?.created_unix_ns;
        let (mut intent, found) = Intent::open(&state_path)?;
        let mut last = found.and_then(|i| i.last_committed(created, segment.stats().write_cursor));
        // With an intent for this segment, the ring knows where the stream stands.
        let start = found.filter(|i| i.segment_created_ns == created).map(|_| last.map_or(1, |s| s + 1));
        info!(last_committed = last, start, "nats source: resuming");
        let (deliveries, mut received) = mpsc::channel(self.settings.batch * 2);
        let (acks, to_ack) = mpsc::unbounded_channel();
        let fetch =
            self.runtime.spawn(fetch_loop(self.settings.clone(), start, deliveries, to_ack, self.counters.clone()));
        let mut batch = Vec::with_capacity(self.settings.batch);
        let mut outcome = Ok(());
        while !shared.stopping() {
            shared.beat();
            batch.clear();
            let taken = self.runtime.block_on(async {
                tokio::time::timeout(STEP, received.recv_many(&mut batch, self.settings.batch)).await
            });
            match taken {
                Err(_) => continue,
                Ok(0) => {
                    outcome = Err(anyhow::anyhow!("the nats fetch task ended"));
                    break;
                }
                Ok(_) => {}
            }
            // The acknowledgement to send (the batch's last delivery that has one) and how
            // many messages it covers; `covered`: messages of this batch settled so far.
            let mut to_acknowledge: Option<(Acker, u64)> = None;
            let mut covered = 0;
            for delivery in batch.drain(..) {
                if delivery.delivered != 1 {
                    // Relaxed: counters for metrics. (0: read from the stream to fill a gap.)
                    self.counters.redelivered.fetch_add(1, Ordering::Relaxed);
                }
                covered += 1;
                if last.is_some_and(|l| delivery.stream_sequence <= l) {
                    self.counters.deduplicated.fetch_add(1, Ordering::Relaxed);
                    if let Some(acker) = delivery.acker {
                        to_acknowledge = Some((acker, covered));
                    }
                    continue;
                }
                intent.store(IntentRecord {
                    segment_created_ns: created,
                    write_cursor: segment.stats().write_cursor,
                    sequence: delivery.stream_sequence,
                    previous: last.unwrap_or(0),
                })?;
                if !commit_waiting(producer, &delivery.payload, delivery.record_type, shared)? {
                    // Stopping with the ring full: not committed, not acknowledged.
                    break;
                }
                last = Some(delivery.stream_sequence);
                self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
                if let Some(acker) = delivery.acker {
                    to_acknowledge = Some((acker, covered));
                }
            }
            if let Some(ack) = to_acknowledge {
                let _ = acks.send(ack);
            }
        }
        // Acknowledgements still queued go out (briefly); any left are settled by the
        // ring's state on the next start.
        drop((acks, received));
        let _ = self.runtime.block_on(async { tokio::time::timeout(Duration::from_secs(1), fetch).await });
        outcome
    }
}

/// Connects, positions the durable consumer (at `start` when given), then pulls
/// messages into `deliveries` and sends the acknowledgements that come back.
async fn fetch_loop(
    settings: NatsSettings,
    start: Option<u64>,
    deliveries: mpsc::Sender<Delivery>,
    mut to_ack: mpsc::UnboundedReceiver<(Acker, u64)>,
    counters: Arc<BridgeCounters>,
) {
    if let Err(e) = fetch(&settings, start, &deliveries, &mut to_ack, &counters).await {
        tracing::error!(error = format!("{e:#}"), "nats source: the puller stopped");
    }
}

async fn fetch(
    settings: &NatsSettings,
    start: Option<u64>,
    deliveries: &mpsc::Sender<Delivery>,
    to_ack: &mut mpsc::UnboundedReceiver<(Acker, u64)>,
    counters: &Arc<BridgeCounters>,
) -> Result<()> {
    let js = shm_daemon::nats::connect(settings, "shmring producerd").await?;
    let mut said = false;
    let stream = loop {
        match shm_daemon::nats::ensure_stream(&js, settings).await {
            Ok(stream) => break stream,
            Err(e) if !said => {
                warn!(error = format!("{e:#}"), "nats source: the stream is not ready yet, retrying");
                said = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let config = pull::Config {
        durable_name: Some(settings.consumer.clone()),
        filter_subject: settings.subject.clone(),
        ack_policy: AckPolicy::All,
        ack_wait: ACK_WAIT,
        max_ack_pending: settings.max_in_flight as i64,
        deliver_policy: start
            .map_or(DeliverPolicy::All, |start_sequence| DeliverPolicy::ByStartSequence { start_sequence }),
        ..Default::default()
    };
    if start.is_some() {
        // Positioned from the ring's truth: deliveries of a dead run must not come late.
        let _ = stream.delete_consumer(&settings.consumer).await;
    }
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(&settings.consumer, config)
        .await
        .with_context(|| format!("consumer {}", settings.consumer))?;
    info!(consumer = %settings.consumer, start, "nats source: pulling");
    let ack_counters = counters.clone();
    let acking = async move {
        while let Some((acker, covered)) = to_ack.recv().await {
            // Relaxed: counters for metrics.
            match acker.ack().await {
                Ok(()) => {
                    ack_counters.acked.fetch_add(covered, Ordering::Relaxed);
                }
                Err(e) => {
                    warn!(error = %e, "nats source: an acknowledgement failed (the messages come again, and are dropped)")
                }
            }
            let _ = ack_counters
                .in_flight
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(covered)));
        }
    };
    // The last stream sequence handed to the ring thread (in stream order): the consumer
    // was positioned right after it, or delivered it.
    let mut forwarded = start.map(|start| start - 1);
    let pulling = async {
        loop {
            let mut messages = match consumer.stream().max_messages_per_batch(settings.batch).messages().await {
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, "nats source: pull failed, retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            while let Some(message) = messages.next().await {
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        warn!(error = %e, "nats source: failed");
                        continue;
                    }
                };
                let Ok(info) = message.info().map(|i| (i.stream_sequence, i.delivered)) else {
                    warn!("nats source: a message without JetStream metadata; skipped");
                    continue;
                };
                let (message, acker) = message.split();
                counters.published.fetch_add(1, Ordering::Relaxed);
                if let Some(after) = forwarded.filter(|f| info.0 > f + 1) {
                    if fill_gap(&stream, &settings.subject, after, info.0, deliveries).await.is_err() {
                        return;
                    }
                }
                forwarded = Some(forwarded.map_or(info.0, |f| f.max(info.0)));
                let delivery = Delivery {
                    stream_sequence: info.0,
                    delivered: info.1,
                    record_type: record_type_of(message.headers.as_ref(), info.0),
                    payload: message.payload,
                    acker: Some(acker),
                };
                if deliveries.send(delivery).await.is_err() {
                    return;
                }
            }
        }
    };
    // Ends when the ring thread drops its end of the acknowledgements, once they are
    // all sent; the pulling never ends it first.
    let pulling = async {
        pulling.await;
        std::future::pending::<()>().await
    };
    tokio::select! {
        () = pulling => {}
        () = acking => {}
    }
    Ok(())
}

/// The record type a message's `Shmring-Type` header gives (0 without one, or a bad one).
fn record_type_of(headers: Option<&async_nats::HeaderMap>, stream_sequence: u64) -> u32 {
    let header = headers.and_then(|h| h.get(TYPE_HEADER)).map(|v| v.as_str());
    record_type_from_header(header).unwrap_or_else(|e| {
        warn!(stream_sequence, error = %e, "nats source: bad Shmring-Type header; the record is written with type 0");
        0
    })
}

/// The consumer delivered stream sequence `next` right after `after`, skipping the
/// sequences between: hands the ring thread the messages among them that the consumer
/// delivers (those of the `filter` subject), read from the stream itself, in order.
///
/// A skip does not prove that there was nothing to deliver: a delivery lost on its way
/// (the connection to the node it crossed dropped, or the consumer's leader died after
/// recording it as delivered) is delivered again only after `ack_wait`, and by then the
/// later ones were committed (the redelivery would be dropped as at or below the last
/// committed sequence) and acknowledged (`ack_policy = all` covers the skipped ones:
/// they would never come again). A three-node cluster whose stream leader was killed
/// lost a whole pull batch (512 records) that way.
///
/// Each read asks the stream's leader for the first message of `filter` at or after a
/// sequence (`next_by_subj`), so sequences of other subjects or deleted ones cost
/// nothing: one read per skipped message, and one that finds `next`. A failed read is
/// retried until it works; `Err` when the ring thread is gone.
async fn fill_gap(
    stream: &async_nats::jetstream::stream::Stream,
    filter: &str,
    after: u64,
    next: u64,
    deliveries: &mpsc::Sender<Delivery>,
) -> Result<(), ()> {
    use async_nats::jetstream::stream::RawMessageErrorKind;
    let mut filled = 0u64;
    let mut from = after + 1;
    while from < next {
        let mut said = false;
        let message = loop {
            match stream.get_first_raw_message_by_subject(filter, from).await {
                Ok(message) => break Some(message),
                // Nothing of `filter` from there on: `next` itself was deleted since.
                Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => break None,
                Err(e) => {
                    if !said {
                        warn!(from, error = %e, "nats source: reading a skipped message from the stream failed, retrying");
                        said = true;
                    }
                    if deliveries.is_closed() {
                        return Err(());
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let Some(message) = message.filter(|m| m.sequence < next) else {
            break;
        };
        from = message.sequence + 1;
        let delivery = Delivery {
            stream_sequence: message.sequence,
            delivered: 0,
            record_type: record_type_of(Some(&message.headers), message.sequence),
            payload: message.payload,
            acker: None,
        };
        deliveries.send(delivery).await.map_err(|_| ())?;
        filled += 1;
    }
    if filled > 0 {
        warn!(
            after,
            next,
            filled,
            "nats source: the consumer skipped messages (deliveries lost on their way); read them from the stream"
        );
    }
    Ok(())
}

/// The intent written before each commit (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IntentRecord {
    segment_created_ns: u64,
    /// The ring's write cursor just before the commit.
    write_cursor: u64,
    /// The stream sequence being committed.
    sequence: u64,
    /// The stream sequence committed before it (0: none).
    previous: u64,
}

impl IntentRecord {
    /// The last stream sequence committed into the ring created at `created` whose write
    /// cursor is now `write_cursor`; `None` when unknown (another segment) or none.
    fn last_committed(&self, created: u64, write_cursor: u64) -> Option<u64> {
        if self.segment_created_ns != created {
            return None;
        }
        let last = if write_cursor > self.write_cursor { self.sequence } else { self.previous };
        (last > 0).then_some(last)
    }

    fn encode(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        for (i, word) in [self.segment_created_ns, self.write_cursor, self.sequence, self.previous].iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&word.to_le_bytes());
        }
        let sum = fnv1a(&out[..32]);
        out[32..].copy_from_slice(&sum.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; 40] = bytes.try_into().ok()?;
        if fnv1a(&bytes[..32]).to_le_bytes() != bytes[32..] {
            return None;
        }
        let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        Some(IntentRecord { segment_created_ns: word(0), write_cursor: word(1), sequence: word(2), previous: word(3) })
    }
}

/// The intent file: one checksummed record, rewritten in place (one `pwrite` of 40
/// bytes, which a killed process cannot tear).
struct Intent {
    file: File,
}

impl Intent {
    fn open(path: &Path) -> Result<(Self, Option<IntentRecord>)> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("nats.state: opening {}", path.display()))?;
        let mut bytes = [0u8; 40];
        let found = match file.read_exact_at(&mut bytes, 0) {
            Ok(()) => IntentRecord::decode(&bytes),
            Err(_) => None,
        };
        if found.is_none() && file.metadata().is_ok_and(|m| m.len() > 0) {
            warn!(path = %path.display(), "nats.state is unreadable; the consumer's own position is used");
        }
        Ok((Intent { file }, found))
    }

    fn store(&mut self, record: IntentRecord) -> Result<()> {
        self.file.write_all_at(&record.encode(), 0).context("writing nats.state")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_write_cursor_decides_whether_the_intended_commit_happened() {
        let intent = IntentRecord { segment_created_ns: 7, write_cursor: 4096, sequence: 12, previous: 11 };
        assert_eq!(intent.last_committed(7, 4096), Some(11), "killed before the commit");
        assert_eq!(intent.last_committed(7, 4160), Some(12), "killed after the commit");
        assert_eq!(intent.last_committed(8, 4160), None, "another segment");
        let first = IntentRecord { previous: 0, ..intent };
        assert_eq!(first.last_committed(7, 4096), None);
        assert_eq!(IntentRecord::decode(&intent.encode()), Some(intent));
        let mut torn = intent.encode();
        torn[3] ^= 1;
        assert_eq!(IntentRecord::decode(&torn), None);
    }
}

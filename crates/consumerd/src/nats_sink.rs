//! The `nats` sink: publishes each record to a JetStream subject and lets the ring
//! release a batch only after JetStream acknowledged every record of it.
//!
//! The ring thread hands records to the publisher task (on the bridge's own runtime,
//! `shm_daemon::nats::runtime`) through a bounded channel, and never waits on the
//! network itself: `accept` queues a publish, `make_durable` (the durable-release hook of
//! `read_batch_durable`) asks the task to wait for the acknowledgements of everything
//! queued and takes its answer. The task keeps at most `max_in_flight` publishes awaiting
//! their acknowledgement and awaits them in order.
//!
//! Each message carries `Nats-Msg-Id: <bridge_id>.<segment created ns>.<position>`: a
//! record keeps its position until it is released, so a batch delivered again (an
//! acknowledgement missing, a restart after publishing and before releasing) is
//! published with the same ids, and JetStream stores it once within its
//! `duplicate_window`. Headers `Shmring-Producer` and `Shmring-Type` carry the
//! generator record's producer id and the ring record type.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use serde_json::json;
use shm_core::Record;
use shm_daemon::nats::{BridgeCounters, NatsSettings, SubjectTemplate};
use shm_daemon::record;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::sinks::Sink;

/// What the ring thread asks of the publisher task.
enum Request {
    /// Publish one message.
    Publish { subject: String, id: String, producer: u8, record_type: u32, payload: bytes::Bytes },
    /// Wait for every acknowledgement of what was published before, then answer: `Ok`
    /// when each one came, else the first error (the whole batch is then retried).
    Flush(oneshot::Sender<Result<(), String>>),
}

/// Publishes records into a JetStream stream (see the module docs).
pub struct NatsSink {
    /// Owns the publisher task; dropped last.
    _runtime: tokio::runtime::Runtime,
    requests: mpsc::Sender<Request>,
    subject: SubjectTemplate,
    /// `<bridge_id>.<segment created ns>.`, the start of every message id.
    id_prefix: String,
    bridge_id: String,
    counters: Arc<BridgeCounters>,
    /// Records of the current batch handed to the task.
    batch: u64,
    /// When the current batch's first record was handed over.
    batch_started: Option<Instant>,
}

impl NatsSink {
    /// Starts the bridge (connecting in the background) for a segment created at
    /// `segment_created_ns` (the config sets `bridge_id`, by default to the segment's name).
    pub fn open(settings: &NatsSettings, segment_created_ns: u64) -> io::Result<Self> {
        let runtime = shm_daemon::nats::runtime().map_err(io::Error::other)?;
        let counters = shm_daemon::nats::register_counters();
        let (requests, received) = mpsc::channel(settings.max_in_flight);
        let task_settings = settings.clone();
        let task_counters = counters.clone();
        runtime.spawn(async move {
            if let Err(e) = publish_loop(task_settings, received, task_counters).await {
                tracing::error!("nats sink: {e:#}");
            }
        });
        let subject = SubjectTemplate::parse(&settings.subject).map_err(io::Error::other)?;
        let bridge_id = settings.bridge_id.clone().unwrap_or_default();
        Ok(NatsSink {
            _runtime: runtime,
            requests,
            subject,
            id_prefix: format!("{bridge_id}.{segment_created_ns}."),
            bridge_id,
            counters,
            batch: 0,
            batch_started: None,
        })
    }
}

/// Connects, makes sure of the stream, then publishes what the ring thread sends.
async fn publish_loop(
    settings: NatsSettings,
    mut requests: mpsc::Receiver<Request>,
    counters: Arc<BridgeCounters>,
) -> anyhow::Result<()> {
    let js = shm_daemon::nats::connect(&settings, "shmring consumerd").await?;
    // Retried until it works: the server may come up after the daemon.
    let mut said = false;
    while let Err(e) = shm_daemon::nats::ensure_stream(&js, &settings).await {
        if !said {
            warn!("nats sink: the stream is not ready yet, retrying: {e:#}");
            said = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let mut in_flight: VecDeque<PublishAckFuture> = VecDeque::new();
    // The first error of the current batch: the rest of it is not published.
    let mut failed: Option<String> = None;
    let settle = |ack: PublishAckFuture, failed: &mut Option<String>| {
        let counters = counters.clone();
        let first_error = failed.is_none();
        async move {
            let result = ack.await;
            counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            match result {
                Ok(ack) => {
                    counters.acked.fetch_add(1, Ordering::Relaxed);
                    if ack.duplicate {
                        counters.redelivered.fetch_add(1, Ordering::Relaxed);
                    }
                    None
                }
                Err(e) => first_error.then(|| format!("publish not acknowledged: {e}")),
            }
        }
    };
    while let Some(request) = requests.recv().await {
        match request {
            Request::Publish { subject, id, producer, record_type, payload } => {
                if failed.is_some() {
                    continue;
                }
                while in_flight.len() >= settings.max_in_flight {
                    let oldest = in_flight.pop_front().expect("not empty");
                    if let Some(e) = settle(oldest, &mut failed).await {
                        failed = Some(e);
                    }
                }
                let message = PublishMessage::build()
                    .payload(payload)
                    .message_id(id)
                    .header("Shmring-Producer", producer.to_string().as_str())
                    .header("Shmring-Type", record_type.to_string().as_str());
                match js.send_publish(subject, message).await {
                    Ok(ack) => {
                        // Relaxed: counters for metrics.
                        counters.published.fetch_add(1, Ordering::Relaxed);
                        counters.in_flight.fetch_add(1, Ordering::Relaxed);
                        in_flight.push_back(ack);
                    }
                    Err(e) => failed = Some(format!("publish failed: {e}")),
                }
            }
            Request::Flush(answer) => {
                while let Some(ack) = in_flight.pop_front() {
                    if let Some(e) = settle(ack, &mut failed).await {
                        failed = Some(e);
                    }
                }
                let _ = answer.send(failed.take().map_or(Ok(()), Err));
            }
        }
    }
    Ok(())
}

impl Sink for NatsSink {
    fn accept(&mut self, r: Record<'_>) -> io::Result<()> {
        let producer = record::decode(r.data).map_or(0, |d| d.producer);
        let request = Request::Publish {
            subject: self.subject.render(producer, r.record_type),
            id: format!("{}{}", self.id_prefix, r.position),
            producer,
            record_type: r.record_type,
            payload: bytes::Bytes::copy_from_slice(r.data),
        };
        self.batch_started.get_or_insert_with(Instant::now);
        self.batch += 1;
        // Waits only while the task holds `max_in_flight` publishes (back-pressure).
        self.requests.blocking_send(request).map_err(|_| io::Error::other("the nats publisher task ended"))
    }

    fn make_durable(&mut self, _next_position: u64) -> io::Result<()> {
        let (answer, answered) = oneshot::channel();
        self.requests
            .blocking_send(Request::Flush(answer))
            .map_err(|_| io::Error::other("the nats publisher task ended"))?;
        let result = answered.blocking_recv().map_err(|_| io::Error::other("the nats publisher task ended"))?;
        if let Some(started) = self.batch_started.take() {
            self.counters.round_trip_us.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        self.batch = 0;
        result.map_err(io::Error::other)
    }

    fn abandon_batch(&mut self) -> io::Result<()> {
        // Published records of the batch come again with the same ids: JetStream drops
        // the copies. What the task still holds is settled by the next flush.
        (self.batch, self.batch_started) = (0, None);
        Ok(())
    }

    fn switch_segment(&mut self, segment_created_ns: u64) -> io::Result<()> {
        self.id_prefix = format!("{}.{segment_created_ns}.", self.bridge_id);
        Ok(())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.counters.readings()
    }

    fn report(&self) -> serde_json::Value {
        let mut report = json!({ "sink": "nats", "bridge_id": self.bridge_id });
        for (key, value) in self.counters.readings() {
            report[key] = json!(value);
        }
        report
    }
}

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
//! # While the server is away
//! A batch has one deadline, [`BATCH_DEADLINE`] from its first record: every wait of
//! the ring thread (queueing a publish, the flush's answer) and of the task (a publish
//! the client cannot take, the acknowledgements) ends by then. A batch not acknowledged
//! whole by its deadline is refused with [`crate::sinks::destination_down`]: nothing of
//! it is released, the ring loop backs off and delivers it again (same positions, so the
//! same ids: JetStream drops what it stored already), and keeps its heartbeat and its stop
//! handling meanwhile. The publishes of a refused attempt that the client still holds are
//! forgotten by the task when the next attempt starts. The sink logs when the server
//! stops acknowledging, every 10 s while it stays away, and when it acknowledges again.
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
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use serde_json::json;
use shm_core::Record;
use shm_daemon::nats::{BridgeCounters, NatsSettings, PRODUCER_HEADER, SubjectTemplate, TYPE_HEADER};
use shm_daemon::record;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::sinks::{Sink, destination_down};

/// How long a batch may take, from its first record to the acknowledgement of its last:
/// past it the batch is refused and delivered again. Well under the units'
/// `WatchdogSec=10s`, and long enough for a cluster to elect a new stream leader within
/// a few attempts.
pub const BATCH_DEADLINE: Duration = Duration::from_secs(2);
/// How often a continuing outage is logged.
const OUTAGE_LOG_EVERY: Duration = Duration::from_secs(10);

/// What the ring thread asks of the publisher task. `attempt` numbers the batch
/// deliveries (a new one for each, retries included); `deadline` is the attempt's.
enum Request {
    /// Publish one message.
    Publish {
        attempt: u64,
        deadline: Instant,
        subject: String,
        id: String,
        producer: u8,
        record_type: u32,
        payload: bytes::Bytes,
    },
    /// Wait (until the deadline) for every acknowledgement of the attempt, then answer:
    /// `Ok` when each one came, else the first error (the whole batch is then retried).
    Flush { attempt: u64, deadline: Instant, answer: oneshot::Sender<Result<(), String>> },
}

impl Request {
    fn attempt(&self) -> (u64, Instant) {
        match self {
            Request::Publish { attempt, deadline, .. } | Request::Flush { attempt, deadline, .. } => {
                (*attempt, *deadline)
            }
        }
    }
}

/// Publishes records into a JetStream stream (see the module docs).
pub struct NatsSink {
    /// Owns the publisher task; the ring thread's bounded waits run on it too.
    runtime: tokio::runtime::Runtime,
    requests: mpsc::Sender<Request>,
    subject: SubjectTemplate,
    /// `<bridge_id>.<segment created ns>.`, the start of every message id.
    id_prefix: String,
    bridge_id: String,
    counters: Arc<BridgeCounters>,
    /// The batch attempts so far; the current one's number.
    attempt: u64,
    /// The current attempt's deadline, from its first record (`None`: no batch open).
    deadline: Option<Instant>,
    /// When the current batch's first record was handed over.
    batch_started: Option<Instant>,
    /// Records at ring positions below this were published by a refused attempt since
    /// the last release: handed over again, they count as `redelivered`.
    resend_below: u64,
    /// One past the position of the last record handed over in this attempt.
    sent_below: u64,
    /// Since when no batch was acknowledged, with the refused attempts and when the
    /// outage was last logged.
    outage: Option<Outage>,
}

/// A spell of refused batches.
struct Outage {
    since: Instant,
    refused: u64,
    logged: Instant,
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
                tracing::error!(error = format!("{e:#}"), "nats sink: the publisher stopped");
            }
        });
        let subject = SubjectTemplate::parse(&settings.subject).map_err(io::Error::other)?;
        let bridge_id = settings.bridge_id.clone().unwrap_or_default();
        Ok(NatsSink {
            runtime,
            requests,
            subject,
            id_prefix: format!("{bridge_id}.{segment_created_ns}."),
            bridge_id,
            counters,
            attempt: 0,
            deadline: None,
            batch_started: None,
            resend_below: 0,
            sent_below: 0,
            outage: None,
        })
    }

    /// Hands `request` to the task, waiting for room until `deadline`.
    fn send(&self, request: Request, deadline: Instant) -> io::Result<()> {
        let sent = self
            .runtime
            .block_on(async { tokio::time::timeout_at(deadline.into(), self.requests.send(request)).await });
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(io::Error::other("the nats publisher task ended")),
            Err(_) => Err(io::Error::other(format!(
                "the publisher task took no record for {BATCH_DEADLINE:?} (the server is not acknowledging)"
            ))),
        }
    }

    /// Logs and counts a refused batch; the error tells the ring loop to wait for the
    /// server (heartbeat kept).
    fn refused(&mut self, reason: String) -> io::Error {
        let now = Instant::now();
        match &mut self.outage {
            None => {
                warn!(
                    "nats sink: JetStream did not acknowledge a batch within {BATCH_DEADLINE:?} ({reason}); \
                     its records stay in the ring and are published again, with the same ids, until it does"
                );
                self.outage = Some(Outage { since: now, refused: 1, logged: now });
            }
            Some(outage) => {
                outage.refused += 1;
                if now.duration_since(outage.logged) >= OUTAGE_LOG_EVERY {
                    warn!(
                        refused_batches = outage.refused,
                        "nats sink: still no acknowledgement from JetStream after {:.0?} ({reason})",
                        now.duration_since(outage.since)
                    );
                    outage.logged = now;
                }
            }
        }
        destination_down(format!("nats: {reason}"))
    }

    /// The attempt is over; `released`: its records left the ring.
    fn end_attempt(&mut self, released: bool) {
        (self.deadline, self.batch_started) = (None, None);
        self.resend_below = if released { 0 } else { self.resend_below.max(self.sent_below) };
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
            warn!(error = format!("{e:#}"), "nats sink: the stream is not ready yet, retrying");
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The current attempt's publishes awaiting their acknowledgement, oldest first.
    let mut in_flight: VecDeque<PublishAckFuture> = VecDeque::new();
    let mut current = 0;
    // The first error of the current attempt: the rest of it is not published.
    let mut failed: Option<String> = None;
    let in_flight_now = |in_flight: &VecDeque<PublishAckFuture>| {
        // Relaxed: a level for metrics.
        counters.in_flight.store(in_flight.len() as u64, Ordering::Relaxed);
    };
    // Settles the oldest publish: `Err` with why when it was not acknowledged.
    let settle = |ack: PublishAckFuture| {
        let counters = counters.clone();
        async move {
            match ack.await {
                Ok(ack) => {
                    // Relaxed: counters for metrics.
                    counters.acked.fetch_add(1, Ordering::Relaxed);
                    if ack.duplicate {
                        // JetStream had it already (stored by an earlier delivery whose
                        // acknowledgement was lost, or a run killed before the release).
                        counters.deduplicated.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                }
                Err(e) => Err(format!("a publish was not acknowledged: {e}")),
            }
        }
    };
    while let Some(request) = requests.recv().await {
        let (attempt, deadline) = request.attempt();
        if attempt != current {
            // A new delivery of the ring: what an abandoned attempt left is forgotten
            // (its records come again in this one).
            (current, failed) = (attempt, None);
            in_flight.clear();
        }
        let deadline = tokio::time::Instant::from_std(deadline);
        match request {
            Request::Publish { subject, id, producer, record_type, payload, .. } => {
                if failed.is_some() {
                    continue;
                }
                let room = async {
                    while in_flight.len() >= settings.max_in_flight {
                        settle(in_flight.pop_front().expect("not empty")).await?;
                    }
                    Ok::<_, String>(())
                };
                match tokio::time::timeout_at(deadline, room).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failed = Some(e),
                    Err(_) => failed = Some("the batch's deadline passed".to_owned()),
                }
                if failed.is_some() {
                    in_flight.clear();
                    in_flight_now(&in_flight);
                    continue;
                }
                let message = PublishMessage::build()
                    .payload(payload)
                    .message_id(id)
                    .header(PRODUCER_HEADER, producer.to_string().as_str())
                    .header(TYPE_HEADER, record_type.to_string().as_str());
                match tokio::time::timeout_at(deadline, js.send_publish(subject, message)).await {
                    Ok(Ok(ack)) => {
                        // Relaxed: counters for metrics.
                        counters.published.fetch_add(1, Ordering::Relaxed);
                        in_flight.push_back(ack);
                    }
                    Ok(Err(e)) => failed = Some(format!("publish failed: {e}")),
                    Err(_) => failed = Some("the client took no publish before the batch's deadline".to_owned()),
                }
                in_flight_now(&in_flight);
            }
            Request::Flush { answer, .. } => {
                if failed.is_none() {
                    let all = async {
                        while let Some(ack) = in_flight.pop_front() {
                            settle(ack).await?;
                        }
                        Ok::<_, String>(())
                    };
                    failed = match tokio::time::timeout_at(deadline, all).await {
                        Ok(outcome) => outcome.err(),
                        Err(_) => Some("not every acknowledgement came before the batch's deadline".to_owned()),
                    };
                }
                in_flight.clear();
                in_flight_now(&in_flight);
                let _ = answer.send(failed.take().map_or(Ok(()), Err));
            }
        }
    }
    Ok(())
}

impl Sink for NatsSink {
    fn accept(&mut self, r: Record<'_>) -> io::Result<()> {
        let deadline = match self.deadline {
            Some(deadline) => deadline,
            None => {
                self.attempt += 1;
                let now = Instant::now();
                self.batch_started = Some(now);
                *self.deadline.insert(now + BATCH_DEADLINE)
            }
        };
        if r.position < self.resend_below {
            // Relaxed: a counter for metrics.
            self.counters.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        self.sent_below = self.sent_below.max(r.position + 1);
        let producer = record::decode(r.data).map_or(0, |d| d.producer);
        let request = Request::Publish {
            attempt: self.attempt,
            deadline,
            subject: self.subject.render(producer, r.record_type),
            id: format!("{}{}", self.id_prefix, r.position),
            producer,
            record_type: r.record_type,
            payload: bytes::Bytes::copy_from_slice(r.data),
        };
        // Waits only while the task holds `max_in_flight` publishes, and never past the
        // deadline.
        self.send(request, deadline).map_err(|e| self.refused(e.to_string()))
    }

    fn make_durable(&mut self, _next_position: u64) -> io::Result<()> {
        let deadline = self.deadline.unwrap_or_else(|| Instant::now() + BATCH_DEADLINE);
        let (answer, answered) = oneshot::channel();
        let outcome = self.send(Request::Flush { attempt: self.attempt, deadline, answer }, deadline).and_then(|()| {
            // The task answers by the deadline; a moment more for the answer to come.
            let limit = deadline + Duration::from_millis(200);
            match self.runtime.block_on(async { tokio::time::timeout_at(limit.into(), answered).await }) {
                Ok(Ok(result)) => result.map_err(io::Error::other),
                Ok(Err(_)) => Err(io::Error::other("the nats publisher task ended")),
                Err(_) => Err(io::Error::other("no answer from the publisher task by the batch's deadline")),
            }
        });
        let started = self.batch_started;
        self.end_attempt(outcome.is_ok());
        match outcome {
            Ok(()) => {
                if let Some(started) = started {
                    // Relaxed: a level for metrics.
                    self.counters.round_trip_us.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                if let Some(outage) = self.outage.take() {
                    info!(
                        refused_batches = outage.refused,
                        "nats sink: JetStream acknowledges again, after {:.1?}",
                        outage.since.elapsed()
                    );
                }
                Ok(())
            }
            Err(e) => Err(self.refused(e.to_string())),
        }
    }

    fn abandon_batch(&mut self) -> io::Result<()> {
        // Published records of the batch come again with the same ids (a new attempt):
        // JetStream drops the copies.
        self.end_attempt(false);
        Ok(())
    }

    fn switch_segment(&mut self, segment_created_ns: u64) -> io::Result<()> {
        (self.resend_below, self.sent_below) = (0, 0);
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

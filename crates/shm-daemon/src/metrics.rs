//! The daemons' Prometheus endpoint: an OpenMetrics text exposition of the segment's
//! counters and the daemon's own, built with `prometheus-client`, served on `GET /metrics`
//! (anything else is `404`).
//!
//! Each family has `HELP` and `TYPE` lines (and `UNIT` where the name ends in one); names
//! follow the Prometheus naming guide (counters end in `_total`, units in the name), and
//! every sample carries the labels `segment` (the segment's name) and `role` (`producer`
//! or `consumer`: which daemon exports it).
//!
//! A segment's counters are exported once per role: `producerd` exports the producer's
//! side (`shmring_records_produced_total`, ...), `consumerd` the consumer's side and the
//! segment's gauges (`shmring_capacity_bytes`, `shmring_used_bytes`, ...), so a sum over
//! all jobs counts every record once. A daemon that shares its role on its ring exports
//! its own participant's counters instead, labelled `participant` ([`Participant`]).
//! The README's "Metrics" table lists every series.
//!
//! The exposition is rendered on each request, reading the segment's counters then;
//! nothing is cached, so a scrape always sees the live values.
//!
//! HTTP is `hyper`'s (HTTP/1.1 and 1.0, one request per connection). Under abuse the
//! endpoint stays cheap: at most [`MAX_CONNECTIONS`] are served at once (the rest wait in
//! the listen backlog, holding no descriptor of ours); an `accept` that fails (`EMFILE`,
//! `ENFILE`, `ENOBUFS`) backs off for [`ACCEPT_BACKOFF`] instead of spinning; a request
//! head may take [`MAX_REQUEST`] bytes (hyper answers `431` beyond) and
//! [`REQUEST_TIMEOUT`] to arrive, and a connection lasts at most [`CONNECTION_TIMEOUT`].

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE as CONTENT_TYPE_HEADER, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use shm_core::{Counter, RingKind, Role, Segment, StatsSnapshot};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::warn;

/// Renders the exposition.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Connections served at the same time.
pub const MAX_CONNECTIONS: usize = 16;
/// The pause after a failed `accept`.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The largest request head read.
pub const MAX_REQUEST: usize = 16 * 1024;
/// How long a client may take to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one connection may last, whatever the client does.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// The one path served.
const METRICS_PATH: &str = "/metrics";
/// What the body is (`prometheus-client` writes OpenMetrics text, which Prometheus reads
/// by this type: counters' `TYPE` lines name the family without `_total`).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `role` label's value: which side of the segment the daemon is.
const fn role_label(role: Role) -> &'static str {
    match role {
        Role::Producer => "producer",
        Role::Consumer => "consumer",
    }
}

/// What a reading is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    /// A gauge in bytes: its family gets a `UNIT` line and the `_bytes` suffix.
    GaugeBytes,
}

/// One value read at scrape time: a family with one sample.
#[derive(Debug, Clone)]
pub struct Reading {
    /// The family's name without the suffixes the encoder adds (`_total`, `_bytes`).
    name: Cow<'static, str>,
    help: Cow<'static, str>,
    kind: Kind,
    value: u64,
}

impl Reading {
    /// A counter; `name` without `_total`, which the encoder appends.
    pub fn counter(name: impl Into<Cow<'static, str>>, help: impl Into<Cow<'static, str>>, value: u64) -> Self {
        Reading { name: name.into(), help: help.into(), kind: Kind::Counter, value }
    }

    /// A gauge: a level that goes up and down (a queue's length, the last round trip).
    pub fn level(name: impl Into<Cow<'static, str>>, help: impl Into<Cow<'static, str>>, value: u64) -> Self {
        Reading { name: name.into(), help: help.into(), kind: Kind::Gauge, value }
    }

    fn gauge(name: &'static str, help: &'static str, kind: Kind, value: u64) -> Self {
        Reading { name: Cow::Borrowed(name), help: Cow::Borrowed(help), kind, value }
    }
}

/// The family name (without `_total`) and help of a segment counter.
const fn counter_family(counter: Counter) -> (&'static str, &'static str) {
    match counter {
        Counter::TotalProduced => ("shmring_records_produced", "Records the producer committed to the ring"),
        Counter::TotalConsumed => ("shmring_records_consumed", "Records the consumer released from the ring"),
        Counter::ProducerBlocks => ("shmring_producer_blocks", "Times the producer found the ring full"),
        Counter::ConsumerBlocks => ("shmring_consumer_blocks", "Times the consumer found the ring empty"),
        Counter::BytesProduced => ("shmring_bytes_produced", "Payload bytes the producer committed"),
        Counter::BytesConsumed => ("shmring_bytes_consumed", "Payload bytes the consumer released"),
        Counter::ProducerSleeps => {
            ("shmring_producer_sleeps", "Times the producer slept on the futex waiting for space")
        }
        Counter::ConsumerSleeps => {
            ("shmring_consumer_sleeps", "Times the consumer slept on the futex waiting for data")
        }
        Counter::ProducerWakes => ("shmring_producer_wakes", "Futex wakes the producer issued to a sleeping consumer"),
        Counter::ConsumerWakes => ("shmring_consumer_wakes", "Futex wakes the consumer issued to a sleeping producer"),
        Counter::ProducerMissedWakes => (
            "shmring_producer_missed_wakes",
            "Producer sleeps that timed out although space had been freed (must stay 0)",
        ),
        Counter::ConsumerMissedWakes => {
            ("shmring_consumer_missed_wakes", "Consumer sleeps that timed out although data had arrived (must stay 0)")
        }
    }
}

/// The readings `role` exports from a segment's statistics: its side's counters, and
/// for the consumer the segment's gauges (one daemon exports them, so a sum over jobs
/// counts them once). Counters are matched by their label in the segment; a counter the
/// segment does not carry is left out.
pub fn segment_readings(stats: &StatsSnapshot, role: Role) -> Vec<Reading> {
    let side = match role {
        Role::Producer => Counter::PRODUCER_SIDE,
        Role::Consumer => Counter::CONSUMER_SIDE,
    };
    let mut readings: Vec<Reading> = side
        .into_iter()
        .filter_map(|counter| {
            let value = stats.counters.iter().find(|c| c.label == counter.label())?.value;
            let (name, help) = counter_family(counter);
            Some(Reading::counter(name, help, value))
        })
        .collect();
    if role == Role::Consumer {
        readings.extend(segment_gauges(stats));
    }
    readings
}

/// The segment's levels, which `consumerd` exports: capacity, bytes and records in flight.
fn segment_gauges(stats: &StatsSnapshot) -> [Reading; 3] {
    [
        Reading::gauge("shmring_capacity", "Bytes of ring data the segment holds", Kind::GaugeBytes, stats.capacity),
        Reading::gauge(
            "shmring_used",
            "Bytes committed and not yet released, frames and padding included",
            Kind::GaugeBytes,
            stats.used_bytes,
        ),
        Reading::gauge(
            "shmring_records_in_flight",
            "Records committed and not yet released",
            Kind::Gauge,
            stats.records_in_flight,
        ),
    ]
}

/// A daemon that shares its role on its ring with others of the same role: an mpsc or
/// mpmc producer (by producer id), a broadcast consumer (by name), an mpmc worker (by
/// worker id). Such a daemon exports its own participant's counters under the segment
/// families, labelled `participant`, instead of the segment's totals (which every daemon
/// of the role would export again), so a sum over jobs still counts every record once
/// (for broadcast: every delivery once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Participant {
    /// Producer `id` of an mpsc or mpmc ring.
    Producer(usize),
    /// The named consumer of a broadcast ring.
    BroadcastConsumer(String),
    /// Worker `id` of an mpmc ring.
    Worker(usize),
}

impl Participant {
    /// Which participant a daemon of `role` is on a ring of `kind`, given its configured
    /// producer id, consumer name and worker id; `None` where it holds the role alone.
    pub fn of(
        kind: RingKind,
        role: Role,
        producer_id: Option<usize>,
        consumer_name: Option<&str>,
        worker_id: Option<usize>,
    ) -> Option<Participant> {
        match (kind, role) {
            (RingKind::Mpsc | RingKind::Mpmc, Role::Producer) => Some(Participant::Producer(producer_id.unwrap_or(0))),
            (RingKind::Broadcast, Role::Consumer) => {
                consumer_name.map(|n| Participant::BroadcastConsumer(n.to_owned()))
            }
            (RingKind::Mpmc, Role::Consumer) => worker_id.map(Participant::Worker),
            _ => None,
        }
    }

    /// The `participant` label's value: the producer or worker id, or the consumer name.
    pub fn label(&self) -> String {
        match self {
            Participant::Producer(id) | Participant::Worker(id) => id.to_string(),
            Participant::BroadcastConsumer(name) => name.clone(),
        }
    }

    /// This participant's readings, read from the segment's per-participant rows: its
    /// side's counters that the segment keeps per participant, and for a consumer its
    /// lag and the segment's gauges (levels, the same from every consumer: aggregate
    /// them with `max`). Empty when the segment has no row for it yet.
    pub fn readings(&self, segment: &Segment) -> Vec<Reading> {
        let mut readings = Vec::new();
        let family = |counter: Counter| counter_family(counter);
        match self {
            Participant::Producer(id) => {
                let rows = segment
                    .mpsc_status()
                    .map(|s| s.producers)
                    .or_else(|| segment.mpmc_status().map(|s| s.producers))
                    .unwrap_or_default();
                if let Some(row) = rows.into_iter().find(|p| p.row.id == *id).map(|p| p.row) {
                    for (counter, value) in [
                        (Counter::TotalProduced, row.records),
                        (Counter::BytesProduced, row.bytes),
                        (Counter::ProducerBlocks, row.blocks),
                        (Counter::ProducerSleeps, row.sleeps),
                    ] {
                        let (name, help) = family(counter);
                        readings.push(Reading::counter(name, help, value));
                    }
                    readings.push(Reading::counter(
                        "shmring_unblocked_records",
                        "Records of this producer that died between claim and commit, turned into padding by the consumer",
                        row.unblocked_records,
                    ));
                }
            }
            Participant::BroadcastConsumer(name) => {
                let rows = segment.broadcast_status().unwrap_or_default();
                if let Some(row) = rows.into_iter().map(|c| c.row).find(|r| r.name.as_deref() == Some(name)) {
                    let (consumed, consumed_help) = family(Counter::TotalConsumed);
                    let (bytes, bytes_help) = family(Counter::BytesConsumed);
                    readings.extend([
                        Reading::counter(consumed, consumed_help, row.tallies.delivered),
                        Reading::counter(bytes, bytes_help, row.tallies.bytes),
                        Reading::counter(
                            "shmring_records_missed",
                            "Records this named consumer missed (lapped, or passed while it was away)",
                            row.tallies.missed,
                        ),
                        Reading::level(
                            "shmring_consumer_lag_records",
                            "Records published and not yet read by this consumer",
                            row.lag_records,
                        ),
                        Reading::gauge(
                            "shmring_consumer_lag",
                            "Bytes published and not yet read by this consumer",
                            Kind::GaugeBytes,
                            row.lag_bytes,
                        ),
                    ]);
                }
            }
            Participant::Worker(id) => {
                let rows = segment.mpmc_status().map(|s| s.workers).unwrap_or_default();
                if let Some(row) = rows.into_iter().map(|w| w.row).find(|r| r.id == *id) {
                    let (consumed, consumed_help) = family(Counter::TotalConsumed);
                    readings.extend([
                        Reading::counter(consumed, consumed_help, row.acknowledged),
                        Reading::counter("shmring_records_taken", "Records this worker took from the ring", row.taken),
                        Reading::counter(
                            "shmring_records_redelivered",
                            "Records this worker took over from a worker that died holding them",
                            row.redelivered,
                        ),
                    ]);
                }
            }
        }
        if !matches!(self, Participant::Producer(_)) {
            readings.extend(segment_gauges(&segment.stats()));
        }
        readings
    }
}

/// Reads its values on each scrape.
struct LiveReadings(Box<dyn Fn() -> Vec<Reading> + Send + Sync>);

impl std::fmt::Debug for LiveReadings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveReadings")
    }
}

impl Collector for LiveReadings {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for reading in (self.0)() {
            let unit = (reading.kind == Kind::GaugeBytes).then_some(Unit::Bytes);
            match reading.kind {
                Kind::Counter => {
                    let counter = ConstCounter::new(reading.value);
                    let family =
                        encoder.encode_descriptor(&reading.name, &reading.help, None, counter.metric_type())?;
                    counter.encode(family)?;
                }
                Kind::Gauge | Kind::GaugeBytes => {
                    // Saturates: no segment holds 2^63 bytes or records.
                    let gauge = ConstGauge::new(i64::try_from(reading.value).unwrap_or(i64::MAX));
                    let family =
                        encoder.encode_descriptor(&reading.name, &reading.help, unit.as_ref(), gauge.metric_type())?;
                    gauge.encode(family)?;
                }
            }
        }
        Ok(())
    }
}

/// Upper bounds of the latency histogram's buckets, in seconds: 1-2-5 steps from 100 ns to 1 s.
pub const LATENCY_BUCKETS: [f64; 22] = [
    1e-7, 2e-7, 5e-7, 1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1,
    0.2, 0.5, 1.0,
];

/// A latency histogram in seconds with [`LATENCY_BUCKETS`]; clones share their counts.
#[derive(Debug, Clone)]
pub struct LatencyHistogram(Histogram);

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram(Histogram::new(LATENCY_BUCKETS))
    }
}

impl LatencyHistogram {
    /// Counts one latency.
    pub fn observe_ns(&self, nanoseconds: u64) {
        self.0.observe(nanoseconds as f64 * 1e-9);
    }
}

/// One daemon's exposition: a registry whose every sample carries `segment` and `role`.
#[derive(Debug)]
pub struct Exposition {
    registry: Registry,
}

impl Exposition {
    /// An exposition of what `read` returns on each scrape, labelled with `segment` and
    /// `role`, and with `participant` where the daemon shares its role on the ring (see
    /// [`Participant`]).
    pub fn new(
        segment: &str,
        role: Role,
        participant: Option<&Participant>,
        read: impl Fn() -> Vec<Reading> + Send + Sync + 'static,
    ) -> Self {
        let mut labels = vec![
            (Cow::Borrowed("segment"), Cow::Owned(segment.to_owned())),
            (Cow::Borrowed("role"), Cow::Borrowed(role_label(role))),
        ];
        if let Some(participant) = participant {
            labels.push((Cow::Borrowed("participant"), Cow::Owned(participant.label())));
        }
        let mut registry = Registry::with_labels(labels.into_iter());
        registry.register_collector(Box::new(LiveReadings(Box::new(read))));
        Exposition { registry }
    }

    /// Adds a latency histogram family; `name` ends in `_seconds`. (No `UNIT` line: some
    /// OpenMetrics parsers refuse one on a histogram, and Prometheus reads the unit from the name.)
    pub fn with_latency(mut self, name: &str, help: &str, histogram: &LatencyHistogram) -> Self {
        self.registry.register(name, help, histogram.0.clone());
        self
    }

    /// The OpenMetrics text, ending in `# EOF`.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail, and the collectors return no errors of their own.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            warn!(error = %e, "metrics endpoint: encoding failed");
        }
        text
    }

    /// This exposition as the endpoint's [`Render`].
    pub fn into_render(self) -> Render {
        Arc::new(move || self.render())
    }
}

/// Serves `render()` on `GET /metrics` to every connection until the runtime stops.
pub async fn serve(listener: TcpListener, render: Render) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut last_warning: Option<std::time::Instant> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    warn!(error = %e, "metrics endpoint: accept failed; backing off");
                    last_warning = Some(std::time::Instant::now());
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = respond(request.method(), request.uri().path(), &render);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .max_buf_size(MAX_REQUEST)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            // A failed or timed-out connection is the client's business: nothing to log.
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            drop(slot);
        });
    }
}

/// The answer to `method path`: the exposition for `GET` (or `HEAD`, whose body hyper
/// leaves out) of `/metrics`, with or without a query string; `404` for anything else.
fn respond(method: &Method, path: &str, render: &Render) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if matches!(*method, Method::GET | Method::HEAD) && path == METRICS_PATH {
        (StatusCode::OK, CONTENT_TYPE, render())
    } else {
        (StatusCode::NOT_FOUND, "text/plain", format!("not found: this endpoint serves {METRICS_PATH}\n"))
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(content_type));
    response
}

/// Binds the listen address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::{MAX_REQUEST, Render, bind, serve};

    /// Sends `request` to a real endpoint serving "BODY" and returns the whole response.
    fn exchange(request: &[u8]) -> String {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime");
        let listener = runtime.block_on(bind("127.0.0.1:0".parse().expect("an address"))).expect("bind");
        let addr = listener.local_addr().expect("its address");
        let render: Render = std::sync::Arc::new(|| "BODY".to_owned());
        runtime.spawn(serve(listener, render));
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("a timeout");
        let _ = stream.write_all(request);
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        runtime.shutdown_background();
        String::from_utf8_lossy(&response).into_owned()
    }

    #[test]
    fn only_get_or_head_of_the_metrics_path_is_served() {
        let ok = exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK") && ok.contains("application/openmetrics-text"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nBODY"), "{ok}");
        let head = exchange(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert!(head.starts_with("HTTP/1.0 200 OK") && !head.contains("BODY"), "{head}");
        for request in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET /metricsx HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        ] {
            let response = exchange(request);
            assert!(response.starts_with("HTTP/1.1 404"), "{}: {response}", String::from_utf8_lossy(request));
        }
        let mut long = b"GET /metrics HTTP/1.1\r\nX-Long: ".to_vec();
        long.resize(MAX_REQUEST + 1024, b'a');
        long.extend_from_slice(b"\r\n\r\n");
        let refused = exchange(&long);
        assert!(refused.starts_with("HTTP/1.1 431"), "{refused}");
    }
}

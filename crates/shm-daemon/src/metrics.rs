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
//! all jobs counts every record once. The README's "Metrics" table lists every series.
//!
//! The exposition is rendered on each request, reading the segment's counters then;
//! nothing is cached, so a scrape always sees the live values.
//!
//! Under abuse the endpoint stays cheap: at most [`MAX_CONNECTIONS`] are served at once
//! (the rest wait in the listen backlog, holding no descriptor of ours); an `accept` that
//! fails (`EMFILE`, `ENFILE`, `ENOBUFS`) backs off for [`ACCEPT_BACKOFF`] instead of
//! spinning; a request is read up to the end of its head (at most [`MAX_REQUEST`] bytes,
//! `431` beyond) before the answer, so a long request is answered, not reset.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use shm_core::{Counter, Role, StatsSnapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
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
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
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
        readings.extend([
            Reading::gauge(
                "shmring_capacity",
                "Bytes of ring data the segment holds",
                Kind::GaugeBytes,
                stats.capacity,
            ),
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
        ]);
    }
    readings
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
    /// An exposition of what `read` returns on each scrape, labelled with `segment` and `role`.
    pub fn new(segment: &str, role: Role, read: impl Fn() -> Vec<Reading> + Send + Sync + 'static) -> Self {
        let labels = [
            (Cow::Borrowed("segment"), Cow::Owned(segment.to_owned())),
            (Cow::Borrowed("role"), Cow::Borrowed(role_label(role))),
        ];
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
            warn!("metrics endpoint: encoding failed ({e})");
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
                    warn!("metrics endpoint: accept failed ({e}); backing off");
                    last_warning = Some(std::time::Instant::now());
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            answer(stream, &render).await;
            drop(slot);
        });
    }
}

/// Whether a request head asks for the metrics: `GET` (or `HEAD`) of `/metrics`, with or
/// without a query string.
fn asks_for_metrics(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    matches!(method, b"GET" | b"HEAD") && path == METRICS_PATH.as_bytes()
}

/// Reads the request head, answers it, and closes.
async fn answer(mut stream: TcpStream, render: &Render) {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    // Until the end of the head, the client's end of input, an error, too many bytes, or
    // the timeout: a client that sent only part of a request is answered all the same.
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() <= MAX_REQUEST {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let (status, content_type, body) = if request.len() > MAX_REQUEST {
        ("431 Request Header Fields Too Large", "text/plain", String::new())
    } else if !asks_for_metrics(&request) {
        ("404 Not Found", "text/plain", format!("not found: this endpoint serves {METRICS_PATH}\n"))
    } else {
        ("200 OK", CONTENT_TYPE, render())
    };
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    if !request.starts_with(b"HEAD ") {
        let _ = stream.write_all(body.as_bytes()).await;
    }
    let _ = stream.shutdown().await;
}

/// Binds the listen address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::asks_for_metrics;

    #[test]
    fn only_get_or_head_of_the_metrics_path_is_served() {
        assert!(asks_for_metrics(b"GET /metrics HTTP/1.1\r\n\r\n"));
        assert!(asks_for_metrics(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"));
        assert!(!asks_for_metrics(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!asks_for_metrics(b"GET /metricsx HTTP/1.1\r\n\r\n"));
        assert!(!asks_for_metrics(b"POST /metrics HTTP/1.1\r\n\r\n"));
        assert!(!asks_for_metrics(b""));
    }
}

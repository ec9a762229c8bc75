//! The NATS JetStream bridge both daemons share: the `[nats]` config section, the
//! connection (servers, credentials, TLS, reconnects with back-off), the stream, and the
//! bridge's counters.
//!
//! consumerd's `nats` sink publishes ring records into a stream; producerd's `nats`
//! source pulls them from it into another ring. The ring thread never waits on the
//! network: each bridge runs its own small tokio runtime (thread `nats`) and talks to
//! the ring thread through bounded channels.
//!
//! # The promise across the bridge
//! - Sink: every record is published with a `Nats-Msg-Id` of
//!   `<bridge_id>.<segment created ns>.<ring position>`, which is the same however often
//!   the record is delivered to the sink (the ring releases it only after JetStream
//!   acknowledged every record of its batch). A sink killed between the publish and the
//!   release republishes with the same ids, and JetStream's de-duplication (within
//!   `duplicate_window`) drops the copies.
//! - Source: see producerd's `nats` module: the ring's own write cursor, with a small
//!   intent file beside it, tells which stream sequence was committed last; the durable
//!   pull consumer is positioned after it on every start, and a message at or below it is
//!   acknowledged and dropped (`deduplicated`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context as _, Result};
use async_nats::jetstream::{self, stream};
use serde::Deserialize;
use toml::Spanned;
use tracing::{info, warn};

use crate::config::{ConfigError, Source, parse_duration};

/// `[nats]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNats {
    servers: Option<Spanned<Vec<String>>>,
    creds: Option<Spanned<String>>,
    nkey: Option<Spanned<String>>,
    tls_ca: Option<Spanned<String>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    stream: Option<Spanned<String>>,
    subject: Option<Spanned<String>>,
    consumer: Option<Spanned<String>>,
    bridge_id: Option<Spanned<String>>,
    state: Option<Spanned<String>>,
    create_stream: Option<Spanned<bool>>,
    retention: Option<Spanned<String>>,
    duplicate_window: Option<Spanned<String>>,
    replicas: Option<Spanned<i64>>,
    batch: Option<Spanned<i64>>,
    max_in_flight: Option<Spanned<i64>>,
}

/// Which daemon reads the section: the keys that apply differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeEnd {
    /// consumerd's sink: ring -> stream.
    Sink,
    /// producerd's source: stream -> ring.
    Source,
}

/// The stream's retention policy when the bridge creates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Kept by the stream's limits.
    Limits,
    /// Kept while a consumer has not acknowledged it.
    Interest,
    /// Removed once acknowledged.
    WorkQueue,
}

/// `[nats]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSettings {
    /// Server URLs (several for a cluster).
    pub servers: Vec<String>,
    /// A `.creds` file (JWT and seed).
    pub creds: Option<PathBuf>,
    /// A file holding an nkey seed.
    pub nkey: Option<PathBuf>,
    /// A CA bundle to verify the servers with (turns TLS on).
    pub tls_ca: Option<PathBuf>,
    /// A client certificate and its key (mutual TLS).
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// The stream.
    pub stream: String,
    /// Sink: the subject template (`{producer}`, `{type}`); source: the filter subject.
    pub subject: String,
    /// Source: the durable consumer's name.
    pub consumer: String,
    /// Sink: the first part of every `Nats-Msg-Id` (default: the segment name).
    pub bridge_id: Option<String>,
    /// Source: the intent file beside the ring.
    pub state: Option<PathBuf>,
    /// Create the stream when it is missing.
    pub create_stream: bool,
    /// Its retention when created.
    pub retention: Retention,
    /// Its de-duplication window when created.
    pub duplicate_window: Duration,
    /// Its replicas when created.
    pub replicas: usize,
    /// Source: messages per pull; sink: unused.
    pub batch: usize,
    /// Sink: publishes awaiting their acknowledgement; source: the consumer's
    /// `max_ack_pending`.
    pub max_in_flight: usize,
}

/// Largest `batch` and `max_in_flight`.
pub const MAX_BATCH: usize = 10_000;
/// Largest `max_in_flight`.
pub const MAX_IN_FLIGHT: usize = 65_536;

impl RawNats {
    /// Validates `[nats]` for `end`; errors name the key and its line (exit 78).
    pub fn validate(&self, src: &Source, end: BridgeEnd) -> Result<NatsSettings, ConfigError> {
        let text = |name: &str, v: &Option<Spanned<String>>| -> Result<Option<String>, ConfigError> {
            match v {
                Some(t) if t.get_ref().trim().is_empty() => {
                    Err(src.error(&format!("nats.{name}"), Some(t), "is empty"))
                }
                Some(t) => Ok(Some(t.get_ref().clone())),
                None => Ok(None),
            }
        };
        let path = |name: &str, v: &Option<Spanned<String>>| Ok::<_, ConfigError>(text(name, v)?.map(PathBuf::from));
        let servers = match &self.servers {
            None => vec!["nats://127.0.0.1:4222".to_owned()],
            Some(list) if list.get_ref().is_empty() => return Err(src.error("nats.servers", Some(list), "is empty")),
            Some(list) => {
                for url in list.get_ref() {
                    url.parse::<async_nats::ServerAddr>().map_err(|e| {
                        src.error(
                            "nats.servers",
                            Some(list),
                            format!("{url:?} is not a server URL such as \"nats://127.0.0.1:4222\" ({e})"),
                        )
                    })?;
                }
                list.get_ref().clone()
            }
        };
        let (creds, nkey) = (path("creds", &self.creds)?, path("nkey", &self.nkey)?);
        if creds.is_some() && nkey.is_some() {
            return Err(src.error("nats.nkey", self.nkey.as_ref(), "give creds or nkey, not both"));
        }
        let tls_client = match (path("tls_cert", &self.tls_cert)?, path("tls_key", &self.tls_key)?) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(src.error("nats.tls_key", self.tls_cert.as_ref(), "is required with tls_cert"));
            }
            (None, Some(_)) => {
                return Err(src.error("nats.tls_cert", self.tls_key.as_ref(), "is required with tls_key"));
            }
        };
        let name_key = |key: &str, v: &Option<Spanned<String>>, default: &str| -> Result<String, ConfigError> {
            let name = text(key, v)?.unwrap_or_else(|| default.to_owned());
            let valid = name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if !valid {
                return Err(src.error(
                    &format!("nats.{key}"),
                    v.as_ref(),
                    format!("{name:?} is not a name of at most 64 letters, digits, '-' or '_'"),
                ));
            }
            Ok(name)
        };
        let stream = name_key("stream", &self.stream, "SHMRING")?;
        let consumer = name_key("consumer", &self.consumer, "shmring-bridge")?;
        let subject = text("subject", &self.subject)?.unwrap_or_else(|| match end {
            BridgeEnd::Sink => "shmring.{producer}".to_owned(),
            BridgeEnd::Source => "shmring.>".to_owned(),
        });
        let subject_error = |why: &str| src.error("nats.subject", self.subject.as_ref(), format!("{subject:?} {why}"));
        match end {
            BridgeEnd::Sink => {
                let filled = SubjectTemplate::parse(&subject).map_err(|e| subject_error(&e))?.render(0, 0);
                if filled.contains(['*', '>']) {
                    return Err(subject_error("has a wildcard: a publish needs one subject"));
                }
            }
            BridgeEnd::Source if subject.contains(['{', '}']) => {
                return Err(subject_error(
                    "has a {placeholder}: the source's subject is a filter, such as \"shmring.>\"",
                ));
            }
            BridgeEnd::Source => {}
        }
        if !valid_subject(&subject.replace("{producer}", "0").replace("{type}", "0")) {
            return Err(subject_error("is not a subject such as \"shmring.{producer}\" (dot-separated, no spaces)"));
        }
        let bridge_id = text("bridge_id", &self.bridge_id)?;
        if let Some(id) = &bridge_id
            && !id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(src.error(
                "nats.bridge_id",
                self.bridge_id.as_ref(),
                format!("{id:?} has spaces or control characters"),
            ));
        }
        let state = path("state", &self.state)?;
        let only = |key: &str, given: bool, wanted: BridgeEnd| {
            if given && end != wanted {
                let what = if end == BridgeEnd::Sink { "the sink" } else { "the source" };
                return Err(src.error(
                    &format!("nats.{key}"),
                    None::<&Spanned<()>>,
                    format!("does not apply to {what}"),
                ));
            }
            Ok(())
        };
        only("bridge_id", bridge_id.is_some(), BridgeEnd::Sink)?;
        only("state", state.is_some(), BridgeEnd::Source)?;
        only("consumer", self.consumer.is_some(), BridgeEnd::Source)?;
        only("batch", self.batch.is_some(), BridgeEnd::Source)?;
        if end == BridgeEnd::Source && state.is_none() {
            return Err(src.error(
                "nats.state",
                None::<&Spanned<()>>,
                "is required for the source (the file beside the ring that makes its commits exactly once)",
            ));
        }
        let retention = match self.retention.as_ref().map(|r| r.get_ref().as_str()) {
            None | Some("limits") => Retention::Limits,
            Some("interest") => Retention::Interest,
            Some("workqueue") => Retention::WorkQueue,
            Some(other) => {
                return Err(src.error(
                    "nats.retention",
                    self.retention.as_ref(),
                    format!("{other:?} is not one of limits, interest, workqueue"),
                ));
            }
        };
        let duplicate_window = match &self.duplicate_window {
            None => Duration::from_secs(120),
            Some(d) => match parse_duration(d.get_ref()) {
                Ok(w) if w >= Duration::from_secs(1) => w,
                Ok(_) => return Err(src.error("nats.duplicate_window", Some(d), "must be at least 1s")),
                Err(e) => return Err(src.error("nats.duplicate_window", Some(d), e)),
            },
        };
        let count = |key: &str, v: &Option<Spanned<i64>>, default: usize, max: usize| match v {
            None => Ok(default),
            Some(n) => usize::try_from(*n.get_ref()).ok().filter(|n| (1..=max).contains(n)).ok_or_else(|| {
                src.error(&format!("nats.{key}"), Some(n), format!("{} is not between 1 and {max}", n.get_ref()))
            }),
        };
        // Read at every connect: one that cannot be read is a config error now (exit 78
        // naming the key), not a connection that retries until the watchdog stops it.
        let tls_ca = path("tls_ca", &self.tls_ca)?;
        let (tls_cert, tls_key) = tls_client.as_ref().map(|(c, k)| (Some(c), Some(k))).unwrap_or_default();
        for (key, file, given) in [
            ("creds", creds.as_ref(), &self.creds),
            ("nkey", nkey.as_ref(), &self.nkey),
            ("tls_ca", tls_ca.as_ref(), &self.tls_ca),
            ("tls_cert", tls_cert, &self.tls_cert),
            ("tls_key", tls_key, &self.tls_key),
        ] {
            if let Some(file) = file
                && let Err(e) = std::fs::File::open(file)
            {
                return Err(src.error(
                    &format!("nats.{key}"),
                    given.as_ref(),
                    format!("cannot read {}: {e}", file.display()),
                ));
            }
        }
        Ok(NatsSettings {
            servers,
            creds,
            nkey,
            tls_ca,
            tls_client,
            stream,
            subject,
            consumer,
            bridge_id,
            state,
            create_stream: self.create_stream.as_ref().is_none_or(|c| *c.get_ref()),
            retention,
            duplicate_window,
            replicas: count("replicas", &self.replicas, 1, 5)?,
            batch: count("batch", &self.batch, 256, MAX_BATCH)?,
            max_in_flight: count("max_in_flight", &self.max_in_flight, 1024, MAX_IN_FLIGHT)?,
        })
    }
}

/// Whether `subject` is a NATS subject: dot-separated non-empty tokens of printable
/// characters without spaces.
fn valid_subject(subject: &str) -> bool {
    !subject.is_empty() && subject.split('.').all(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
}

/// The header that carries a record's ring type across the bridge: the sink sets it,
/// the source commits the record with it.
pub const TYPE_HEADER: &str = "Shmring-Type";
/// The header that carries a generator record's producer id (0 for other records).
pub const PRODUCER_HEADER: &str = "Shmring-Producer";

/// The ring record type of a message whose [`TYPE_HEADER`] is `value`: 0 without the
/// header (a message another publisher wrote); an error for a value that is no record
/// type (not a number, or in the ring's reserved range from `0xFFFF_0000`).
pub fn record_type_from_header(value: Option<&str>) -> Result<u32, String> {
    let Some(value) = value else { return Ok(0) };
    match value.trim().parse::<u32>() {
        Ok(t) if t < shm_core::ring::frame::RESERVED_TYPES => Ok(t),
        _ => Err(format!(
            "{TYPE_HEADER}: {value:?} is not a record type (0 to {})",
            shm_core::ring::frame::RESERVED_TYPES - 1
        )),
    }
}

/// The sink's subject template: literal text with `{producer}` (the generator record's
/// producer id, 0 for other records) and `{type}` (the ring record type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTemplate(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Producer,
    Type,
}

impl SubjectTemplate {
    /// Parses a template; unknown or unclosed placeholders are errors.
    pub fn parse(template: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let close = rest[open..].find('}').ok_or("has an unclosed '{'")? + open;
            pieces.push(match &rest[open + 1..close] {
                "producer" => Piece::Producer,
                "type" => Piece::Type,
                other => return Err(format!("has {{{other}}}: the placeholders are {{producer}} and {{type}}")),
            });
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err("has a '}' without its '{'".to_owned());
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(SubjectTemplate(pieces))
    }

    /// The subject of a record of `producer` and `record_type`.
    pub fn render(&self, producer: u8, record_type: u32) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Producer => out.push_str(&producer.to_string()),
                Piece::Type => out.push_str(&record_type.to_string()),
            }
        }
        out
    }
}

/// The connection's state, for `STATUS=` and the log.
#[derive(Debug, Default)]
pub struct Link {
    /// 0 connecting, 1 connected, 2 disconnected (reconnecting).
    state: AtomicU8,
    /// Reconnect attempts since the last connection.
    attempts: AtomicU64,
}

/// The bridge of this process, once one started: `STATUS=` reads its state.
static LINK: OnceLock<Arc<Link>> = OnceLock::new();

/// `"nats connected"` (or connecting, reconnecting) when this process bridges, for the
/// service's `STATUS=` line.
pub fn link_status() -> Option<String> {
    LINK.get().map(|link| {
        // Relaxed: a state flag shown to operators; nothing else is read through it.
        match link.state.load(Ordering::Relaxed) {
            1 => "nats connected".to_owned(),
            0 => "nats connecting".to_owned(),
            _ => format!("nats disconnected, reconnecting (attempt {})", link.attempts.load(Ordering::Relaxed)),
        }
    })
}

/// The bridge counters of this process, once a bridge started: the metrics read them.
static COUNTERS: OnceLock<Arc<BridgeCounters>> = OnceLock::new();

/// The bridge counters of this process (made on the first call).
pub fn register_counters() -> Arc<BridgeCounters> {
    COUNTERS.get_or_init(Arc::default).clone()
}

/// The bridge counters, when this process bridges.
pub fn counters() -> Option<Arc<BridgeCounters>> {
    COUNTERS.get().cloned()
}

/// The bridge's counters (each end fills its own): exported as metrics and in the summary.
#[derive(Debug, Default)]
pub struct BridgeCounters {
    /// Sink: messages published (sent). Source: messages taken from the stream.
    pub published: AtomicU64,
    /// Sink: publishes JetStream acknowledged. Source: messages acknowledged after commit.
    pub acked: AtomicU64,
    /// Sink: records published again after a refused batch (this run's retries).
    /// Source: messages the server delivered more than once.
    pub redelivered: AtomicU64,
    /// Sink: publishes JetStream acknowledged as duplicates (stored before, by an earlier
    /// delivery or a killed run) and so stored once. Source: messages at or below the
    /// last committed sequence, acknowledged and dropped.
    pub deduplicated: AtomicU64,
    /// Sink: publishes awaiting their acknowledgement. Source: committed, not yet acknowledged.
    pub in_flight: AtomicU64,
    /// Sink: the last batch's round trip (first publish to last acknowledgement), in µs.
    pub round_trip_us: AtomicU64,
}

impl BridgeCounters {
    /// The counters by name, for metrics (`<daemon>_nats_<name>`) and summaries.
    pub fn readings(&self) -> Vec<(&'static str, u64)> {
        // Relaxed: counters read for display.
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("nats_published", get(&self.published)),
            ("nats_acked", get(&self.acked)),
            ("nats_redelivered", get(&self.redelivered)),
            ("nats_deduplicated", get(&self.deduplicated)),
            ("nats_in_flight", get(&self.in_flight)),
            ("nats_round_trip_us", get(&self.round_trip_us)),
        ]
    }
}

/// The bridge's readings for `daemon`'s metrics (`<daemon>_nats_<name>`): levels
/// (`in_flight`, `round_trip_us`) as gauges, the rest as counters.
pub fn metric_readings(daemon: &str, counters: &BridgeCounters) -> Vec<crate::metrics::Reading> {
    counters
        .readings()
        .into_iter()
        .map(|(key, value)| {
            let (name, help) = (format!("{daemon}_{key}"), format!("The nats bridge's {key} (README, Across hosts)"));
            if matches!(key, "nats_in_flight" | "nats_round_trip_us") {
                crate::metrics::Reading::level(name, help, value)
            } else {
                crate::metrics::Reading::counter(name, help, value)
            }
        })
        .collect()
}

/// The longest pause between reconnect attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// The back-off before reconnect attempt `attempt`: 100 ms doubling to 5 s.
fn reconnect_delay(attempt: usize) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6))).min(MAX_RECONNECT_DELAY)
}

/// A runtime of one worker thread (`nats`) for a bridge: the ring thread stays off it.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("nats")
        .enable_all()
        .build()
        .context("starting the nats runtime")
}

/// Connects (retrying in the background until a server answers), logs every change of
/// the connection, and returns the JetStream context.
pub async fn connect(settings: &NatsSettings, name: &str) -> Result<jetstream::Context> {
    let link = LINK.get_or_init(Arc::default).clone();
    let events = link.clone();
    let mut options = match (&settings.creds, &settings.nkey) {
        (Some(creds), _) => async_nats::ConnectOptions::with_credentials_file(creds)
            .await
            .with_context(|| format!("nats.creds: reading {}", creds.display()))?,
        (_, Some(nkey)) => {
            let seed =
                std::fs::read_to_string(nkey).with_context(|| format!("nats.nkey: reading {}", nkey.display()))?;
            async_nats::ConnectOptions::with_nkey(seed.trim().to_owned())
        }
        _ => async_nats::ConnectOptions::new(),
    };
    if let Some(ca) = &settings.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &settings.tls_client {
        options = options.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
    }
    let servers: Vec<async_nats::ServerAddr> =
        settings.servers.iter().map(|s| s.parse()).collect::<Result<_, _>>().context("nats.servers")?;
    let client = options
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(move |attempt| {
            // Relaxed: shown in STATUS only.
            link.attempts.store(attempt as u64, Ordering::Relaxed);
            reconnect_delay(attempt)
        })
        .event_callback(move |event| {
            let link = events.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        link.state.store(1, Ordering::Relaxed);
                        link.attempts.store(0, Ordering::Relaxed);
                        info!("nats: connected");
                    }
                    async_nats::Event::Disconnected => {
                        link.state.store(2, Ordering::Relaxed);
                        warn!("nats: disconnected; reconnecting with back-off (100 ms doubling to 5 s)");
                    }
                    other => warn!(event = %other, "nats: connection event"),
                }
            }
        })
        .connect(servers)
        .await
        .context("connecting to nats")?;
    // The sink keeps up to `max_in_flight` publishes unacknowledged and settles the
    // oldest before it sends another, so the context must allow that many: with
    // async-nats's default of 5000, a larger setting made the 5001st publish fail.
    Ok(jetstream::context::ContextBuilder::new().max_ack_inflight(settings.max_in_flight).build(client))
}

/// The stream, created with the configured retention, window and replicas when it is
/// missing and `create_stream` is on. The sink's subjects are `subject` with each
/// placeholder a wildcard token.
pub async fn ensure_stream(js: &jetstream::Context, settings: &NatsSettings) -> Result<stream::Stream> {
    match js.get_stream(&settings.stream).await {
        Ok(stream) => return Ok(stream),
        Err(e) if !settings.create_stream => {
            return Err(anyhow::Error::new(e).context(format!("stream {} (create_stream = false)", settings.stream)));
        }
        Err(_) => {}
    }
    let subjects = settings.subject.replace("{producer}", "*").replace("{type}", "*");
    let config = stream::Config {
        name: settings.stream.clone(),
        subjects: vec![subjects],
        retention: match settings.retention {
            Retention::Limits => stream::RetentionPolicy::Limits,
            Retention::Interest => stream::RetentionPolicy::Interest,
            Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
        },
        duplicate_window: settings.duplicate_window,
        num_replicas: settings.replicas,
        ..Default::default()
    };
    let stream =
        js.get_or_create_stream(config).await.with_context(|| format!("creating stream {}", settings.stream))?;
    info!(stream = %settings.stream, "nats: stream ready");
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_gauges_and_counts_are_counters() {
        let counters = BridgeCounters::default();
        counters.in_flight.store(3, Ordering::Relaxed);
        counters.acked.store(7, Ordering::Relaxed);
        let readings = metric_readings("consumerd", &counters);
        let text =
            crate::metrics::Exposition::new("/t", shm_core::Role::Consumer, None, move || readings.clone()).render();
        assert!(text.contains("# TYPE consumerd_nats_in_flight gauge"), "{text}");
        assert!(
            text.contains("consumerd_nats_in_flight{") && !text.contains("consumerd_nats_in_flight_total"),
            "{text}"
        );
        assert!(text.contains("# TYPE consumerd_nats_round_trip_us gauge"), "{text}");
        assert!(text.contains("# TYPE consumerd_nats_acked counter"), "{text}");
        assert!(text.contains("consumerd_nats_acked_total{"), "{text}");
    }

    fn load(end: BridgeEnd, text: &str) -> Result<NatsSettings, String> {
        let src = Source::embedded(text);
        let raw: RawNats = src.parse().map_err(|e| e.to_string())?;
        raw.validate(&src, end).map_err(|e| e.to_string())
    }

    #[test]
    fn templates_fill_producer_and_type() {
        let t = SubjectTemplate::parse("rings.a.{producer}.t{type}").expect("valid");
        assert_eq!(t.render(3, 17), "rings.a.3.t17");
        assert!(SubjectTemplate::parse("a.{seq}").unwrap_err().contains("{seq}"));
        assert!(SubjectTemplate::parse("a.{producer").is_err());
        assert!(SubjectTemplate::parse("a.}").is_err());
    }

    #[test]
    fn bad_values_name_their_key() {
        let said = |end, text: &str, key: &str| {
            let e = load(end, text).expect_err(text);
            assert!(e.contains(key), "{text}: {e}");
        };
        said(BridgeEnd::Sink, "servers = []", "nats.servers (line 1)");
        said(BridgeEnd::Sink, "servers = [\"nats://[::1\"]", "nats.servers (line 1)");
        said(BridgeEnd::Sink, "subject = \"a.*\"", "nats.subject (line 1)");
        said(BridgeEnd::Sink, "subject = \"a..b\"", "nats.subject (line 1)");
        said(BridgeEnd::Sink, "max_in_flight = 0", "nats.max_in_flight (line 1)");
        said(BridgeEnd::Sink, "duplicate_window = \"soon\"", "nats.duplicate_window (line 1)");
        said(BridgeEnd::Sink, "retention = \"forever\"", "nats.retention (line 1)");
        said(BridgeEnd::Sink, "creds = \"a\"\nnkey = \"b\"", "nats.nkey (line 2)");
        said(BridgeEnd::Sink, "tls_cert = \"a\"", "nats.tls_key");
        said(BridgeEnd::Sink, "creds = \"/nonexistent/shmring.creds\"", "nats.creds (line 1): cannot read");
        said(BridgeEnd::Sink, "nkey = \"/nonexistent/shmring.nk\"", "nats.nkey (line 1): cannot read");
        said(BridgeEnd::Sink, "tls_ca = \"/nonexistent/ca.pem\"", "nats.tls_ca (line 1): cannot read");
        said(BridgeEnd::Sink, "stream = \"a b\"", "nats.stream (line 1)");
        said(BridgeEnd::Sink, "batch = 5", "nats.batch: does not apply to the sink");
        said(BridgeEnd::Source, "subject = \"a\"", "nats.state: is required");
        said(BridgeEnd::Source, "state = \"s\"\nsubject = \"a.{producer}\"", "nats.subject (line 2)");
        said(BridgeEnd::Source, "state = \"s\"\nbatch = 10001", "nats.batch (line 2)");
        let ok = load(BridgeEnd::Source, "state = \"s\"\nservers = [\"nats://127.0.0.1:1\", \"127.0.0.1:2\"]")
            .expect("valid");
        assert_eq!(ok.servers.len(), 2);
        assert_eq!((ok.batch, ok.max_in_flight, ok.duplicate_window), (256, 1024, Duration::from_secs(120)));
    }

    #[test]
    fn the_type_header_gives_the_record_type() {
        assert_eq!(record_type_from_header(None), Ok(0));
        assert_eq!(record_type_from_header(Some("7")), Ok(7));
        assert_eq!(record_type_from_header(Some("4294901759")), Ok(0xFFFE_FFFF));
        for bad in ["4294901760", "-1", "x", ""] {
            assert!(record_type_from_header(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn reconnects_back_off_to_a_ceiling() {
        assert_eq!(reconnect_delay(0), Duration::from_millis(100));
        assert_eq!(reconnect_delay(2), Duration::from_millis(400));
        assert_eq!(reconnect_delay(60), MAX_RECONNECT_DELAY);
    }
}

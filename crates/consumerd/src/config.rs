//! consumerd's config: `[segment]`, `[sink]`, `[shutdown]`, `[log]`, `[metrics]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use shm_core::RingKind;
use shm_core::layout::{CONSUMER_NAME_LEN, MPMC_WORKERS};
use shm_daemon::config::{
    ConfigError, CpuAffinity, CreateMode, LogSettings, RawLog, RawMetrics, RawSegment, SegmentDefaults,
    SegmentSettings, Source, parse_duration, refuse_keys,
};
use shm_daemon::nats::{BridgeEnd, NatsSettings, RawNats};
use toml::Spanned;

/// The config used when no file is found: a verify sink on `/high_perf_ring`.
pub const EMBEDDED: &str = include_str!("../../../config/consumerd.toml");

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    segment: RawSegment,
    #[serde(default)]
    sink: RawSink,
    #[serde(default)]
    shutdown: RawShutdown,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    metrics: RawMetrics,
    /// `[nats]`, for the `nats` sink (and the `nats` source of a pair file).
    nats: Option<RawNats>,
    /// producerd's section, accepted and left to producerd, so that one file can
    /// configure a `producerd@NAME` / `consumerd@NAME` pair.
    #[serde(default, rename = "source")]
    _source: Option<toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    kind: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    fsync: Option<Spanned<String>>,
    target: Option<Spanned<String>>,
    state: Option<Spanned<String>>,
    on_undeliverable: Option<Spanned<String>>,
    undeliverable_after: Option<Spanned<String>>,
    cpu_affinity: Option<Spanned<Vec<u32>>>,
    consumer_name: Option<Spanned<String>>,
    worker_id: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    drain_timeout: Option<Spanned<String>>,
}

/// When the file sink calls fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Never: the page cache survives a crash of the process, not of the machine.
    Never,
    /// After every batch, before the records are released.
    Batch,
    /// At most this often.
    Interval(Duration),
}

/// What a datagram sink does with a record it can never send: one larger than a
/// datagram may be (`EMSGSIZE`), at once; one its destination keeps refusing, once
/// `undeliverable_after` has passed without a send going through. Retrying it for ever
/// would wedge every record behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undeliverable {
    /// Skip it, count it (`undeliverable_skipped`), warn, and go on with the next.
    SkipAndCount,
    /// Stop the daemon with a clear error (exit 74); the record stays in the ring.
    Stop,
}

/// Where records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkKind {
    /// Checks generator records.
    Verify {
        /// Where to keep the verification across restarts (optional).
        state: Option<PathBuf>,
    },
    /// Standard output.
    Stdout {
        /// u32 LE length + bytes instead of lines.
        binary: bool,
    },
    /// Appends to a file, exactly once.
    File {
        /// The file.
        path: PathBuf,
        /// u32 LE length + bytes instead of lines.
        binary: bool,
        /// When to fsync.
        fsync: Fsync,
    },
    /// Counts and forgets.
    Discard,
    /// One UDP datagram per record.
    Udp {
        /// Destination.
        target: SocketAddr,
        /// A record too large for a datagram, or refused past `undeliverable_after`.
        on_undeliverable: Undeliverable,
        /// How long sends may keep failing before `on_undeliverable` applies.
        undeliverable_after: Duration,
    },
    /// One Unix datagram per record.
    Unix {
        /// Destination socket path.
        target: PathBuf,
        /// A record too large for a datagram, or refused past `undeliverable_after`.
        on_undeliverable: Undeliverable,
        /// How long sends may keep failing before `on_undeliverable` applies.
        undeliverable_after: Duration,
    },
    /// Publishes to a NATS JetStream stream (`[nats]`).
    Nats(Box<NatsSettings>),
}

impl SinkKind {
    /// The `[sink] kind` value, as logged (a field, not a dump of the settings).
    pub fn kind(&self) -> &'static str {
        match self {
            SinkKind::Verify { .. } => "verify",
            SinkKind::Stdout { .. } => "stdout",
            SinkKind::File { .. } => "file",
            SinkKind::Discard => "discard",
            SinkKind::Udp { .. } => "udp",
            SinkKind::Unix { .. } => "unix",
            SinkKind::Nats(_) => "nats",
        }
    }
}

/// consumerd's validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[segment]`.
    pub segment: SegmentSettings,
    /// `[sink]`.
    pub sink: SinkKind,
    /// `[shutdown] drain_timeout`.
    pub drain_timeout: Duration,
    /// `[log]`.
    pub log: LogSettings,
    /// `[metrics] listen`.
    pub metrics: Option<SocketAddr>,
    /// `[sink] cpu_affinity`: CPUs the ring thread is pinned to.
    pub cpu_affinity: Option<CpuAffinity>,
    /// `[sink] consumer_name`: this consumer's name in logs; on a broadcast ring (where it
    /// is required) the name of its cursor in the segment.
    pub consumer_name: Option<String>,
    /// `[sink] worker_id`: the worker slot of an mpmc ring (required there, refused elsewhere).
    pub worker_id: Option<usize>,
    /// Where the settings came from.
    pub origin: String,
}

impl SinkKind {
    /// Each `[sink]` key this kind has, with its value as text (for a reload's comparison).
    fn keys(&self) -> Vec<(&'static str, String)> {
        let kind = |k: &str| ("sink.kind", k.to_owned());
        let format = |binary: bool| ("sink.format", if binary { "binary" } else { "lines" }.to_owned());
        match self {
            SinkKind::Verify { state } => vec![kind("verify"), ("sink.state", format!("{state:?}"))],
            SinkKind::Discard => vec![kind("discard")],
            SinkKind::Stdout { binary } => vec![kind("stdout"), format(*binary)],
            SinkKind::File { path, binary, fsync } => {
                vec![
                    kind("file"),
                    ("sink.path", format!("{path:?}")),
                    format(*binary),
                    ("sink.fsync", format!("{fsync:?}")),
                ]
            }
            SinkKind::Udp { target, on_undeliverable, undeliverable_after } => vec![
                kind("udp"),
                ("sink.target", target.to_string()),
                ("sink.on_undeliverable", format!("{on_undeliverable:?}")),
                ("sink.undeliverable_after", format!("{undeliverable_after:?}")),
            ],
            SinkKind::Unix { target, on_undeliverable, undeliverable_after } => vec![
                kind("unix"),
                ("sink.target", format!("{target:?}")),
                ("sink.on_undeliverable", format!("{on_undeliverable:?}")),
                ("sink.undeliverable_after", format!("{undeliverable_after:?}")),
            ],
            SinkKind::Nats(settings) => vec![kind("nats"), ("nats", format!("{settings:?}"))],
        }
    }
}

impl Settings {
    /// The keys changed in `new` that a reload cannot apply (they take a restart). A
    /// reload applies `log.level` and `shutdown.drain_timeout`; every other key that
    /// changed is named here.
    pub fn refused_on_reload(&self, new: &Settings) -> Vec<&'static str> {
        let mut keys = self.segment.changed_keys(&new.segment);
        keys.extend(shm_daemon::config::changed_values(&self.sink.keys(), &new.sink.keys()));
        if self.cpu_affinity != new.cpu_affinity {
            keys.push("sink.cpu_affinity");
        }
        if self.consumer_name != new.consumer_name {
            keys.push("sink.consumer_name");
        }
        if self.worker_id != new.worker_id {
            keys.push("sink.worker_id");
        }
        keys.extend(shm_daemon::config::changed_log_and_metrics((&self.log, self.metrics), (&new.log, new.metrics)));
        keys
    }
}

/// `[sink] undeliverable_after` when absent.
pub const DEFAULT_UNDELIVERABLE_AFTER: Duration = Duration::from_secs(5);

/// Longest `consumer_name`: it must fit a named cursor's slot on the kinds that have them.
pub const CONSUMER_NAME_MAX: usize = 32;

/// Parses and validates a config.
pub fn load(src: &Source) -> Result<Settings, ConfigError> {
    let raw: RawConfig = src.parse()?;
    let defaults = SegmentDefaults { create: CreateMode::Never, wait_for_segment: Duration::from_secs(30) };
    let segment = raw.segment.validate(src, defaults)?;
    let s = &raw.sink;
    let kind = s.kind.as_ref().map_or("verify", |k| k.get_ref().as_str());
    let context = format!("kind = {kind:?}");
    let key = |name: &'static str, v: &Option<Spanned<String>>| (name, v.as_ref().map(Spanned::span));
    let (format, path, fsync, target) =
        (key("format", &s.format), key("path", &s.path), key("fsync", &s.fsync), key("target", &s.target));
    let undeliverable_keys =
        [key("on_undeliverable", &s.on_undeliverable), key("undeliverable_after", &s.undeliverable_after)];
    let only = |allowed: &[&str]| {
        let others: Vec<_> = [format.clone(), path.clone(), fsync.clone(), target.clone()]
            .into_iter()
            .chain(undeliverable_keys.clone())
            .filter(|(n, _)| !allowed.contains(n))
            .collect();
        refuse_keys(src, "sink", &context, &others)
    };
    let binary = || match s.format.as_ref().map(|f| f.get_ref().as_str()) {
        None | Some("lines") => Ok(false),
        Some("binary") => Ok(true),
        Some(other) => {
            Err(src.error("sink.format", s.format.as_ref(), format!("{other:?} is not \"lines\" or \"binary\"")))
        }
    };
    let on_undeliverable = || match s.on_undeliverable.as_ref().map(|f| f.get_ref().as_str()) {
        None | Some("skip_and_count") => Ok(Undeliverable::SkipAndCount),
        Some("stop") => Ok(Undeliverable::Stop),
        Some(other) => Err(src.error(
            "sink.on_undeliverable",
            s.on_undeliverable.as_ref(),
            format!("{other:?} is not \"skip_and_count\" or \"stop\""),
        )),
    };
    let undeliverable_after = || match &s.undeliverable_after {
        // Below the shipped units' `WatchdogSec=10s`, so that the policy applies before
        // systemd restarts a daemon whose sink has been refusing (and the clock with it).
        None => Ok(DEFAULT_UNDELIVERABLE_AFTER),
        Some(d) => parse_duration(d.get_ref()).map_err(|e| src.error("sink.undeliverable_after", Some(d), e)),
    };
    let required = |name: &str, v: &Option<Spanned<String>>| {
        v.as_ref().map(|t| t.get_ref().clone()).ok_or_else(|| {
            src.error(&format!("sink.{name}"), None::<&Spanned<()>>, format!("is required for {context}"))
        })
    };
    let sink = match kind {
        "verify" => {
            only(&["state"])?;
            SinkKind::Verify { state: s.state.as_ref().map(|p| PathBuf::from(p.get_ref())) }
        }
        "discard" => {
            only(&[])?;
            SinkKind::Discard
        }
        "stdout" => {
            only(&["format"])?;
            SinkKind::Stdout { binary: binary()? }
        }
        "file" => {
            only(&["format", "path", "fsync"])?;
            let fsync = match s.fsync.as_ref().map(|f| f.get_ref().as_str()) {
                None | Some("never") => Fsync::Never,
                Some("batch") => Fsync::Batch,
                Some(interval) => Fsync::Interval(parse_duration(interval).map_err(|e| {
                    src.error("sink.fsync", s.fsync.as_ref(), format!("expected never, batch or an interval: {e}"))
                })?),
            };
            SinkKind::File { path: PathBuf::from(required("path", &s.path)?), binary: binary()?, fsync }
        }
        "udp" => {
            only(&["target", "on_undeliverable", "undeliverable_after"])?;
            let t = required("target", &s.target)?;
            SinkKind::Udp {
                on_undeliverable: on_undeliverable()?,
                undeliverable_after: undeliverable_after()?,
                target: t.parse().map_err(|_| {
                    src.error(
                        "sink.target",
                        s.target.as_ref(),
                        format!("{t:?} is not an address such as \"127.0.0.1:9001\""),
                    )
                })?,
            }
        }
        "unix" => {
            only(&["target", "on_undeliverable", "undeliverable_after"])?;
            SinkKind::Unix {
                target: PathBuf::from(required("target", &s.target)?),
                on_undeliverable: on_undeliverable()?,
                undeliverable_after: undeliverable_after()?,
            }
        }
        "nats" => {
            only(&[])?;
            let mut nats = raw.nats.as_ref().map_or_else(
                || RawNats::default().validate(src, BridgeEnd::Sink),
                |n| n.validate(src, BridgeEnd::Sink),
            )?;
            nats.bridge_id
                .get_or_insert_with(|| segment.location.to_string().trim_start_matches('/').replace('/', "_"));
            SinkKind::Nats(Box::new(nats))
        }
        other => {
            return Err(src.error(
                "sink.kind",
                s.kind.as_ref(),
                format!("{other:?} is not one of verify, stdout, file, discard, udp, unix, nats"),
            ));
        }
    };
    let drain_timeout = match &raw.shutdown.drain_timeout {
        None => Duration::from_secs(5),
        Some(d) => parse_duration(d.get_ref()).map_err(|e| src.error("shutdown.drain_timeout", Some(d), e))?,
    };
    let consumer_name = s
        .consumer_name
        .as_ref()
        .map(|n| {
            let name = n.get_ref();
            let valid = (1..=CONSUMER_NAME_MAX).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if valid {
                Ok(name.clone())
            } else {
                Err(src.error(
                    "sink.consumer_name",
                    Some(n),
                    format!("{name:?} is not a name of 1 to {CONSUMER_NAME_MAX} letters, digits, '-', '_' or '.'"),
                ))
            }
        })
        .transpose()?;
    let worker_id = ring_identity(src, &segment, s, consumer_name.as_deref())?;
    Ok(Settings {
        worker_id,
        consumer_name,
        segment,
        sink,
        drain_timeout,
        log: raw.log.validate(src)?,
        metrics: raw.metrics.validate(src)?,
        cpu_affinity: CpuAffinity::validate(src, "sink.cpu_affinity", &s.cpu_affinity)?,
        origin: src.label.clone(),
    })
}

/// What names this consumer in the ring: a broadcast ring needs `consumer_name` (its
/// cursor's name, at most 24 bytes), an mpmc ring `worker_id` (its worker slot, like a
/// producer's `producer_id`); `worker_id` is refused on every other kind. Returns the id.
fn ring_identity(
    src: &Source,
    segment: &SegmentSettings,
    s: &RawSink,
    consumer_name: Option<&str>,
) -> Result<Option<usize>, ConfigError> {
    let kind = segment.kind;
    if kind == RingKind::Broadcast {
        match consumer_name {
            None => {
                return Err(src.error(
                    "sink.consumer_name",
                    None::<&Spanned<()>>,
                    "is required for segment.kind = \"broadcast\": the name of this consumer's cursor in the \
                     ring (a restart under the same name resumes it)",
                ));
            }
            Some(name) if name.len() > CONSUMER_NAME_LEN => {
                return Err(src.error(
                    "sink.consumer_name",
                    s.consumer_name.as_ref(),
                    format!("{name:?} is longer than a broadcast cursor's {CONSUMER_NAME_LEN} bytes"),
                ));
            }
            Some(_) => {}
        }
    }
    let key = "sink.worker_id";
    match (kind, &s.worker_id) {
        (RingKind::Mpmc, None) => Err(src.error(
            key,
            None::<&Spanned<()>>,
            format!("is required for segment.kind = \"mpmc\": this worker's slot, 0 to {}", MPMC_WORKERS - 1),
        )),
        (RingKind::Mpmc, Some(id)) => {
            let value = *id.get_ref();
            usize::try_from(value).ok().filter(|&w| w < MPMC_WORKERS).map(Some).ok_or_else(|| {
                src.error(key, Some(id), format!("{value} is not a worker slot from 0 to {}", MPMC_WORKERS - 1))
            })
        }
        (_, None) => Ok(None),
        (_, Some(id)) => {
            Err(src.error(key, Some(id), format!("applies to segment.kind = \"mpmc\" only, not {:?}", kind.name())))
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use shm_daemon::testing::{assert_config_error_says_where, config_text};

    use super::*;

    #[test]
    fn cpu_affinity_pins_the_sink_thread_to_allowed_cpus_only() {
        let settings = load(&Source::embedded("[sink]\nkind = \"discard\"\ncpu_affinity = [0]\n")).expect("valid");
        assert_eq!(settings.cpu_affinity.as_ref().map(CpuAffinity::cpus), Some(&[0][..]));
        let message = load(&Source::embedded("[sink]\nkind = \"discard\"\ncpu_affinity = [4096]\n"))
            .expect_err("not allowed")
            .to_string();
        assert!(message.contains("sink.cpu_affinity (line 3): CPU 4096 is not one"), "{message}");
    }

    #[test]
    fn a_reload_refuses_a_new_consumer_name_by_name() {
        let settings = |text: &str| load(&Source::embedded(text)).expect(text);
        let running = settings("[sink]\nkind = \"discard\"\nconsumer_name = \"recorder\"\n");
        let renamed = settings("[sink]\nkind = \"discard\"\nconsumer_name = \"live\"\n");
        assert_eq!(running.refused_on_reload(&renamed), ["sink.consumer_name"]);
        assert_eq!(running.consumer_name.as_deref(), Some("recorder"));
        let long = format!("[sink]\nconsumer_name = \"{}\"\n", "x".repeat(CONSUMER_NAME_MAX + 1));
        let message = load(&Source::embedded(&long)).expect_err("too long").to_string();
        assert!(message.contains("sink.consumer_name (line 2)"), "{message}");
    }

    proptest! {
        /// Whatever the file holds, loading it gives settings or an error naming where,
        /// and never panics (the config-parsing fuzz target, run as proptest).
        #[test]
        fn any_config_loads_or_says_where_it_is_wrong(text in config_text()) {
            assert_config_error_says_where(&text, load(&Source::embedded(&text)).err());
        }

        /// Arbitrary text never panics the loader.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = load(&Source::embedded(&text));
        }
    }
}

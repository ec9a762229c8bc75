//! producerd's config: `[segment]`, `[source]`, `[log]`, `[metrics]`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use shm_core::RingKind;
use shm_core::layout::MPSC_PRODUCERS;
use shm_daemon::config::{
    ConfigError, CpuAffinity, CreateMode, KeySpan, LogSettings, RawLog, RawMetrics, RawSegment, SegmentDefaults,
    SegmentSettings, SizeValue, Source, refuse_keys, size_key,
};
use shm_daemon::nats::{BridgeEnd, NatsSettings, RawNats};
use toml::Spanned;

/// The config used when no file is found: a generator on `/high_perf_ring`.
pub const EMBEDDED: &str = include_str!("../../../config/producerd.toml");

/// The whole file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    segment: RawSegment,
    #[serde(default)]
    source: RawSource,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    metrics: RawMetrics,
    /// `[nats]`, for the `nats` source (and the `nats` sink of a pair file).
    nats: Option<RawNats>,
    /// consumerd's sections, accepted and left to consumerd, so that one file can
    /// configure a `producerd@NAME` / `consumerd@NAME` pair.
    #[serde(default, rename = "sink")]
    _sink: Option<toml::Table>,
    #[serde(default, rename = "shutdown")]
    _shutdown: Option<toml::Table>,
}

/// `[source]` as written; which keys apply depends on `kind`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    kind: Option<Spanned<String>>,
    on_full: Option<Spanned<String>>,
    rate: Option<Spanned<u64>>,
    count: Option<Spanned<u64>>,
    min_size: Option<Spanned<SizeValue>>,
    max_size: Option<Spanned<SizeValue>>,
    format: Option<Spanned<String>>,
    bind: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    cpu_affinity: Option<Spanned<Vec<u32>>>,
    producer_id: Option<Spanned<i64>>,
}

/// Where records come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// Synthetic records in the generator format (see `shm_daemon::record`).
    Generator {
        /// Records per second, 0 for as fast as the ring takes them.
        rate: u64,
        /// Records to send, 0 for forever.
        count: u64,
        /// Smallest record.
        min_size: usize,
        /// Largest record.
        max_size: usize,
    },
    /// Standard input.
    Stdin {
        /// One record per line, or u32 LE length + bytes.
        binary: bool,
    },
    /// One UDP datagram, one record.
    Udp {
        /// Address to bind.
        bind: SocketAddr,
    },
    /// One Unix datagram, one record.
    Unix {
        /// Socket path to bind.
        path: PathBuf,
    },
    /// A NATS JetStream stream, through a durable pull consumer (`[nats]`).
    Nats(Box<NatsSettings>),
}

impl SourceKind {
    /// The `[source] kind` value, as logged (a field, not a dump of the settings).
    pub fn kind(&self) -> &'static str {
        match self {
            SourceKind::Generator { .. } => "generator",
            SourceKind::Stdin { .. } => "stdin",
            SourceKind::Udp { .. } => "udp",
            SourceKind::Unix { .. } => "unix",
            SourceKind::Nats(_) => "nats",
        }
    }
}

/// producerd's validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[segment]`.
    pub segment: SegmentSettings,
    /// `[source]`.
    pub source: SourceKind,
    /// Drop records (and count them) instead of waiting when the ring is full.
    pub drop_when_full: bool,
    /// `[log]`.
    pub log: LogSettings,
    /// `[metrics] listen`.
    pub metrics: Option<SocketAddr>,
    /// `[source] cpu_affinity`: CPUs the ring thread is pinned to.
    pub cpu_affinity: Option<CpuAffinity>,
    /// `[source] producer_id`: the producer slot of an mpsc or mpmc ring (`None` for spsc
    /// and broadcast).
    pub producer_id: Option<usize>,
    /// Where the settings came from.
    pub origin: String,
}

impl SourceKind {
    /// Each `[source]` key of this kind that a reload cannot apply, with its value as
    /// text (`rate` is applied live, so it is not here).
    fn fixed_keys(&self) -> Vec<(&'static str, String)> {
        match self {
            SourceKind::Generator { count, min_size, max_size, .. } => vec![
                ("source.kind", "generator".into()),
                ("source.count", count.to_string()),
                ("source.min_size", min_size.to_string()),
                ("source.max_size", max_size.to_string()),
            ],
            SourceKind::Stdin { binary } => {
                vec![("source.kind", "stdin".into()), ("source.format", binary.to_string())]
            }
            SourceKind::Udp { bind } => vec![("source.kind", "udp".into()), ("source.bind", bind.to_string())],
            SourceKind::Unix { path } => vec![("source.kind", "unix".into()), ("source.path", format!("{path:?}"))],
            SourceKind::Nats(settings) => vec![("source.kind", "nats".into()), ("nats", format!("{settings:?}"))],
        }
    }
}

impl Settings {
    /// The keys changed in `new` that a reload cannot apply (they take a restart). A
    /// reload applies `log.level`, `source.rate` and `source.on_full`; every other key
    /// that changed is named here.
    pub fn refused_on_reload(&self, new: &Settings) -> Vec<&'static str> {
        let mut keys = self.segment.changed_keys(&new.segment);
        keys.extend(shm_daemon::config::changed_values(&self.source.fixed_keys(), &new.source.fixed_keys()));
        if self.cpu_affinity != new.cpu_affinity {
            keys.push("source.cpu_affinity");
        }
        if self.producer_id != new.producer_id {
            keys.push("source.producer_id");
        }
        keys.extend(shm_daemon::config::changed_log_and_metrics((&self.log, self.metrics), (&new.log, new.metrics)));
        keys
    }
}

/// The largest record the generator writes into a ring of `capacity` bytes: three of its
/// frames fit in the ring, so a record being written (with the padding before it) never
/// reaches the last published one, which a restart resumes after (see
/// `daemon::LastFrameGuard`).
pub fn max_generated_record(capacity: u64) -> usize {
    // A frame is 8 header bytes and the payload rounded up to 8.
    ((capacity / 3) & !7).saturating_sub(8) as usize
}

/// Parses and validates a config.
pub fn load(src: &Source) -> Result<Settings, ConfigError> {
    let raw: RawConfig = src.parse()?;
    let defaults = SegmentDefaults { create: CreateMode::IfMissing, wait_for_segment: std::time::Duration::ZERO };
    let segment = raw.segment.validate(src, defaults)?;
    let s = &raw.source;
    let kind = s.kind.as_ref().map_or("generator", |k| k.get_ref().as_str());
    let span = |v: Option<std::ops::Range<usize>>| v;
    let generator_keys = [
        ("rate", span(s.rate.as_ref().map(Spanned::span))),
        ("count", span(s.count.as_ref().map(Spanned::span))),
        ("min_size", span(s.min_size.as_ref().map(Spanned::span))),
        ("max_size", span(s.max_size.as_ref().map(Spanned::span))),
    ];
    let format_key = [("format", s.format.as_ref().map(Spanned::span))];
    let bind_key = [("bind", s.bind.as_ref().map(Spanned::span))];
    let path_key = [("path", s.path.as_ref().map(Spanned::span))];
    let context = format!("kind = {kind:?}");
    let refuse = |keys: &[&[KeySpan<'_>]]| -> Result<(), ConfigError> {
        keys.iter().try_for_each(|k| refuse_keys(src, "source", &context, k))
    };
    let source =
        match kind {
            "generator" => {
                refuse(&[&format_key, &bind_key, &path_key])?;
                let min_size = size_key(src, "source.min_size", &s.min_size)?.unwrap_or(64) as usize;
                let max_size =
                    size_key(src, "source.max_size", &s.max_size)?.unwrap_or(min_size.max(64) as u64) as usize;
                let max_record =
                    segment.max_record.unwrap_or(shm_core::layout::max_payload_for(segment.capacity)) as usize;
                let max_generated = max_generated_record(segment.capacity).min(max_record);
                if min_size < shm_daemon::record::OVERHEAD || max_size < min_size || max_size > max_generated {
                    return Err(src.error("source.max_size", s.max_size.as_ref().or(s.min_size.as_ref()), format!(
                    "sizes must satisfy {} <= min_size ({min_size}) <= max_size ({max_size}) <= {max_generated} \
                     (the ring's max record, and a third of its capacity framed, so that the generator's \
                     resume point survives a crash)",
                    shm_daemon::record::OVERHEAD
                )));
                }
                SourceKind::Generator {
                    rate: s.rate.as_ref().map_or(0, |r| *r.get_ref()),
                    count: s.count.as_ref().map_or(0, |c| *c.get_ref()),
                    min_size,
                    max_size,
                }
            }
            "stdin" => {
                refuse(&[&generator_keys, &bind_key, &path_key])?;
                let binary = match s.format.as_ref().map(|f| f.get_ref().as_str()) {
                    None | Some("lines") => false,
                    Some("binary") => true,
                    Some(other) => {
                        return Err(src.error(
                            "source.format",
                            s.format.as_ref(),
                            format!("{other:?} is not \"lines\" or \"binary\""),
                        ));
                    }
                };
                SourceKind::Stdin { binary }
            }
            "udp" => {
                refuse(&[&generator_keys, &format_key, &path_key])?;
                let bind = s.bind.as_ref().map_or("127.0.0.1:9000", |b| b.get_ref().as_str());
                let bind = bind.parse().map_err(|_| {
                    src.error(
                        "source.bind",
                        s.bind.as_ref(),
                        format!("{bind:?} is not an address such as \"127.0.0.1:9000\""),
                    )
                })?;
                SourceKind::Udp { bind }
            }
            "unix" => {
                refuse(&[&generator_keys, &format_key, &bind_key])?;
                let path = s
                    .path
                    .as_ref()
                    .ok_or_else(|| src.error("source.path", None::<&Spanned<()>>, "is required for kind = \"unix\""))?;
                SourceKind::Unix { path: PathBuf::from(path.get_ref()) }
            }
            "nats" => {
                refuse(&[&generator_keys, &format_key, &bind_key, &path_key])?;
                SourceKind::Nats(Box::new(raw.nats.as_ref().map_or_else(
                    || RawNats::default().validate(src, BridgeEnd::Source),
                    |n| n.validate(src, BridgeEnd::Source),
                )?))
            }
            other => {
                return Err(src.error(
                    "source.kind",
                    s.kind.as_ref(),
                    format!("{other:?} is not one of generator, stdin, udp, unix, nats"),
                ));
            }
        };
    let drop_when_full = match s.on_full.as_ref().map(|f| f.get_ref().as_str()) {
        None | Some("block") => false,
        Some("drop") => true,
        Some(other) => {
            return Err(src.error(
                "source.on_full",
                s.on_full.as_ref(),
                format!("{other:?} is not \"block\" or \"drop\""),
            ));
        }
    };
    let producer_id = producer_id(src, &segment, s, &source, drop_when_full)?;
    Ok(Settings {
        producer_id,
        segment,
        source,
        drop_when_full,
        log: raw.log.validate(src)?,
        metrics: raw.metrics.validate(src)?,
        cpu_affinity: CpuAffinity::validate(src, "source.cpu_affinity", &s.cpu_affinity)?,
        origin: src.label.clone(),
    })
}

/// `[source] producer_id`: required for an mpsc or mpmc ring (which of its producer slots
/// this daemon takes), refused for spsc and broadcast (one producer, no slot to choose).
fn producer_id(
    src: &Source,
    segment: &SegmentSettings,
    s: &RawSource,
    source: &SourceKind,
    drop_when_full: bool,
) -> Result<Option<usize>, ConfigError> {
    let key = "source.producer_id";
    let kind = segment.kind.name();
    if drop_when_full && segment.kind != RingKind::Spsc && matches!(source, SourceKind::Generator { .. }) {
        // The generator resumes at the ring's exact count of its records (the consumer's
        // on mpsc and mpmc, the producer's own on broadcast); numbers taken by dropped
        // records would be reused.
        return Err(src.error(
            "source.on_full",
            s.on_full.as_ref(),
            format!(
                "\"drop\" is not supported for the generator on an {kind} ring (its resume point is the ring's \
                 exact count of its records, which dropped sequence numbers would break)"
            ),
        ));
    }
    match (segment.kind, &s.producer_id) {
        (RingKind::Spsc | RingKind::Broadcast, None) => Ok(None),
        (RingKind::Spsc | RingKind::Broadcast, Some(id)) => Err(src.error(
            key,
            Some(id),
            format!(
                "applies to segment.kind = \"mpsc\" or \"mpmc\" only (an {kind} ring has one producer, no slot to choose)"
            ),
        )),
        (RingKind::Mpsc | RingKind::Mpmc, None) => Err(src.error(
            key,
            None::<&Spanned<()>>,
            format!("is required for segment.kind = {kind:?}: this producer's slot, 0 to {}", MPSC_PRODUCERS - 1),
        )),
        (RingKind::Mpsc | RingKind::Mpmc, Some(id)) => {
            let value = *id.get_ref();
            usize::try_from(value).ok().filter(|&i| i < MPSC_PRODUCERS).map(Some).ok_or_else(|| {
                src.error(key, Some(id), format!("{value} is not a producer slot from 0 to {}", MPSC_PRODUCERS - 1))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use shm_daemon::testing::{assert_config_error_says_where, config_text};

    use super::*;

    fn error_of(text: &str) -> String {
        load(&Source::embedded(text)).expect_err(text).to_string()
    }

    #[test]
    fn placement_keys_reach_the_settings() {
        let text = "[segment]\nbackend = \"sysv\"\nname = \"0x53480042\"\nnuma_node = 0\nhugepages = true\n\
                    prefault = true\n[source]\ncpu_affinity = [0]\n";
        let settings = load(&Source::embedded(text)).expect("valid");
        let s = &settings.segment;
        assert_eq!((s.numa_node, s.hugepages, s.prefault), (Some(0), true, true));
        assert_eq!(settings.cpu_affinity.as_ref().map(CpuAffinity::cpus), Some(&[0][..]));
        let defaults = load(&Source::embedded("")).expect("valid");
        assert_eq!(
            (defaults.segment.numa_node, defaults.segment.hugepages, defaults.segment.prefault),
            (None, false, true),
            "prefault is on unless turned off"
        );
        assert_eq!(defaults.cpu_affinity, None);
    }

    /// What a reload reports as needing a restart: the changed `[segment]` keys, and
    /// nothing when only `wait_for_segment` (which a reload may change) differs.
    #[test]
    fn a_reload_names_the_segment_keys_that_take_a_restart() {
        let settings = |text: &str| load(&Source::embedded(text)).expect(text).segment;
        let running = settings("[segment]\ncapacity = \"1MiB\"\n");
        let changed = settings("[segment]\ncapacity = \"2MiB\"\nnuma_node = 0\nprefault = false\n");
        assert_eq!(running.changed_keys(&changed), ["segment.capacity", "segment.numa_node", "segment.prefault"]);
        let same = settings("[segment]\ncapacity = \"1MiB\"\nwait_for_segment = \"3s\"\n");
        assert!(running.changed_keys(&same).is_empty());
    }

    #[test]
    fn a_reload_refuses_a_new_ring_kind_or_producer_id_by_name() {
        let settings = |text: &str| load(&Source::embedded(text)).expect(text);
        let running = settings("[segment]\nkind = \"mpsc\"\n[source]\nproducer_id = 0\n");
        let other_id = settings("[segment]\nkind = \"mpsc\"\n[source]\nproducer_id = 1\n");
        assert_eq!(running.refused_on_reload(&other_id), ["source.producer_id"]);
        let spsc = settings("");
        assert_eq!(running.refused_on_reload(&spsc), ["segment.kind", "source.producer_id"]);
        assert_eq!((running.segment.kind, running.producer_id), (RingKind::Mpsc, Some(0)));
        assert_eq!((spsc.segment.kind, spsc.producer_id), (RingKind::Spsc, None), "spsc is the default");
    }

    #[test]
    fn placement_errors_name_the_key_the_line_and_the_fix() {
        let cases: [(&str, &[&str]); 6] = [
            (
                "[segment]\nnuma_node = 999\n",
                &["segment.numa_node (line 2)", "NUMA node 999 does not exist", "node(s) 0"],
            ),
            ("[segment]\nnuma_node = -1\n", &["line 2", "numa_node = -1"]),
            ("[segment]\nhugepages = true\n", &["segment.hugepages (line 2)", "sysv", "hugetlbfs"]),
            ("[segment]\nprefault = \"yes\"\n", &["line 2", "prefault"]),
            (
                "[source]\ncpu_affinity = [0, 4096]\n",
                &["source.cpu_affinity (line 2)", "CPU 4096 is not one this process may run on", "allowed: "],
            ),
            ("[source]\ncpu_affinity = []\n", &["source.cpu_affinity (line 2)", "is empty"]),
        ];
        for (text, needles) in cases {
            let message = error_of(text);
            for needle in needles {
                assert!(message.contains(needle), "{text:?}: {message:?} lacks {needle:?}");
            }
        }
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

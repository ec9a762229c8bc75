//! Loading a daemon's TOML config: raw TOML (`deny_unknown_fields`) -> validated
//! settings, with every error naming the file, the key and its line.
//!
//! The sections both daemons share (`[segment]`, `[log]`, `[metrics]`) are here; each
//! daemon adds its own (`[source]` or `[sink]`) in its `config.rs`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use shm_core::owner::{gid_of, uid_of};
use shm_core::placement;
use shm_core::units::parse_size;
use shm_core::{FlushPolicy, Location, RingKind, WaitStrategy};
use toml::Spanned;

/// A configuration error: which file, which key, which line, what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("config {file}: {message}")]
pub struct ConfigError {
    /// The file (or `embedded default`).
    pub file: String,
    /// What is wrong, with the key and line.
    pub message: String,
}

/// The source text of a config, for turning byte spans into line numbers.
#[derive(Debug, Clone)]
pub struct Source {
    /// Where it came from.
    pub label: String,
    /// Its text.
    pub text: String,
}

impl Source {
    /// Reads a config file.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError { file: path.display().to_string(), message: format!("cannot read it: {e}") })?;
        Ok(Source { label: path.display().to_string(), text })
    }

    /// The embedded default config of a daemon.
    pub fn embedded(text: &str) -> Self {
        Source { label: "embedded default".into(), text: text.into() }
    }

    /// Parses the text into `T`; syntax errors, unknown keys and wrong types name the
    /// line and quote it, so the key is in the message.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(&self.text).map_err(|e| {
            let at = e.span().map(|s| {
                let line = self.line_of(s.start);
                let text = self.text.lines().nth(line - 1).unwrap_or("").trim();
                format!("line {line} (`{text}`): ")
            });
            ConfigError {
                file: self.label.clone(),
                message: format!("{}{}", at.unwrap_or_default(), e.message().trim()),
            }
        })
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())].matches('\n').count() + 1
    }

    /// An error about `key`, at the line of `span` when the key was given.
    pub fn error<T>(&self, key: &str, value: Option<&Spanned<T>>, message: impl std::fmt::Display) -> ConfigError {
        let at = value.map(|v| format!(" (line {})", self.line_of(v.span().start))).unwrap_or_default();
        ConfigError { file: self.label.clone(), message: format!("{key}{at}: {message}") }
    }
}

/// Where the daemon looks for its config: `--config`, then `./config/<name>.toml`, then
/// `/etc/shmring/<name>.toml`; `None` means the embedded default.
pub fn find(explicit: Option<&Path>, daemon: &str) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    [PathBuf::from(format!("config/{daemon}.toml")), PathBuf::from(format!("/etc/shmring/{daemon}.toml"))]
        .into_iter()
        .find(|p| p.is_file())
}

/// A size as written: `"64KiB"` or a plain number of bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeValue {
    /// A number of bytes.
    Bytes(u64),
    /// A number with a unit.
    Text(String),
}

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SizeValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size such as \"64KiB\" or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SizeValue, E> {
                Ok(SizeValue::Bytes(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SizeValue, E> {
                u64::try_from(v).map(SizeValue::Bytes).map_err(|_| E::custom(format!("size {v} is negative")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SizeValue, E> {
                Ok(SizeValue::Text(v.to_owned()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl SizeValue {
    /// The size in bytes.
    pub fn bytes(&self) -> Result<u64, shm_core::units::SizeError> {
        match self {
            SizeValue::Bytes(n) => Ok(*n),
            SizeValue::Text(t) => parse_size(t),
        }
    }
}

/// Parses an optional size key, naming it and its line on error.
pub fn size_key(src: &Source, key: &str, value: &Option<Spanned<SizeValue>>) -> Result<Option<u64>, ConfigError> {
    value.as_ref().map(|v| v.get_ref().bytes().map_err(|e| src.error(key, Some(v), e))).transpose()
}

/// A key and where it was written (`None`: not given).
pub type KeySpan<'a> = (&'a str, Option<std::ops::Range<usize>>);

/// Refuses keys that do not apply (for example `rate` for a UDP source), naming the
/// first one given and its line.
pub fn refuse_keys(
    src: &Source,
    section: &str,
    context: &str,
    keys: &[(&str, Option<std::ops::Range<usize>>)],
) -> Result<(), ConfigError> {
    match keys.iter().find(|(_, span)| span.is_some()) {
        Some((key, Some(span))) => Err(ConfigError {
            file: src.label.clone(),
            message: format!("{section}.{key} (line {}): does not apply to {context}", src.line_of(span.start)),
        }),
        _ => Ok(()),
    }
}

/// `[segment]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSegment {
    /// `/name`, a SysV key, or a file path.
    pub name: Option<Spanned<String>>,
    /// `posix`, `sysv` or `file`.
    pub backend: Option<Spanned<String>>,
    /// Ring data bytes (`"16MiB"`, the library default).
    pub capacity: Option<Spanned<SizeValue>>,
    /// Largest record (`"4KiB"`).
    pub max_record: Option<Spanned<SizeValue>>,
    /// Octal mode (`"0600"`).
    pub mode: Option<Spanned<String>>,
    /// Group name or gid.
    pub group: Option<Spanned<String>>,
    /// `if-missing`, `always` or `never`.
    pub create: Option<Spanned<String>>,
    /// Wait strategy of the ring thread.
    pub wait: Option<Spanned<String>>,
    /// File segments: `none`, `sync`, or an interval (`"100ms"`).
    pub flush: Option<Spanned<String>>,
    /// How long to wait for the segment to appear (`"30s"`).
    pub wait_for_segment: Option<Spanned<String>>,
    /// User whose segment to trust when opening (default: our own user).
    pub owner: Option<Spanned<String>>,
    /// `exit` or `recreate` when the segment is unlinked under the daemon.
    pub on_unlinked: Option<Spanned<String>>,
    /// NUMA node a new segment's memory is bound to.
    pub numa_node: Option<Spanned<u32>>,
    /// Back a new segment with huge pages.
    pub hugepages: Option<Spanned<bool>>,
    /// Map every page of the segment at start (default true).
    pub prefault: Option<Spanned<bool>>,
    /// Ring kind: `spsc` (default), `mpsc`, `broadcast` or `mpmc`.
    pub kind: Option<Spanned<String>>,
    /// A new broadcast ring laps slow consumers instead of waiting for them.
    pub lossy: Option<Spanned<bool>>,
}

/// What to do when the segment does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateMode {
    /// Open it if it exists, else create it.
    IfMissing,
    /// Create it; fail if it exists.
    Always,
    /// Open it only; fail if it does not exist.
    Never,
}

/// `[segment]`, validated.
#[derive(Debug, Clone)]
pub struct SegmentSettings {
    /// Where it lives.
    pub location: Location,
    /// Ring data bytes.
    pub capacity: u64,
    /// Largest record, if set.
    pub max_record: Option<u64>,
    /// Mode of a new segment.
    pub mode: u32,
    /// Group of a new segment.
    pub group: Option<u32>,
    /// Create policy.
    pub create: CreateMode,
    /// Wait strategy.
    pub wait: WaitStrategy,
    /// Flush policy (file segments).
    pub flush: FlushPolicy,
    /// How long to wait for the segment to appear.
    pub wait_for_segment: Duration,
    /// Owner uid to trust when opening.
    pub owner: u32,
    /// Re-open or re-create the segment in-process when it is unlinked (else exit 75).
    pub recreate_when_unlinked: bool,
    /// NUMA node a new segment's memory is bound to (`mbind`).
    pub numa_node: Option<u32>,
    /// Back a new segment with huge pages.
    pub hugepages: bool,
    /// Map every page of the segment when creating or opening it (default true: without
    /// it each process takes a page fault, a few microseconds, on its first touch of
    /// every page, in the tail of its first lap around the ring).
    pub prefault: bool,
    /// The ring kind created, and required of an existing segment.
    pub kind: RingKind,
    /// A new broadcast ring is lossy (slow consumers are lapped, their misses counted).
    pub lossy: bool,
}

/// The ring kinds the daemons read and write. A kind shm-core knows but the daemons do not
/// yet is refused by name, in the config and when an existing segment holds it.
pub fn daemons_support(kind: RingKind) -> bool {
    matches!(kind, RingKind::Spsc | RingKind::Mpsc | RingKind::Broadcast | RingKind::Mpmc)
}

impl SegmentSettings {
    /// The `[segment]` keys whose new values only a restart applies (the segment is
    /// attached, and created, once): every key but `wait_for_segment`.
    pub fn changed_keys(&self, new: &SegmentSettings) -> Vec<&'static str> {
        let changes = [
            ("segment.name/backend", self.location != new.location),
            ("segment.capacity", self.capacity != new.capacity),
            ("segment.max_record", self.max_record != new.max_record),
            ("segment.mode", self.mode != new.mode),
            ("segment.group", self.group != new.group),
            ("segment.create", self.create != new.create),
            ("segment.wait", self.wait != new.wait),
            ("segment.flush", self.flush != new.flush),
            ("segment.owner", self.owner != new.owner),
            ("segment.on_unlinked", self.recreate_when_unlinked != new.recreate_when_unlinked),
            ("segment.numa_node", self.numa_node != new.numa_node),
            ("segment.hugepages", self.hugepages != new.hugepages),
            ("segment.prefault", self.prefault != new.prefault),
            ("segment.lossy", self.lossy != new.lossy),
            ("segment.kind", self.kind != new.kind),
        ];
        changes.into_iter().filter_map(|(key, changed)| changed.then_some(key)).collect()
    }
}

/// The keys whose values differ between `old` and `new` (each a list of a key and its
/// value as text; a key in one list only counts as changed), in `old`'s order then `new`'s.
pub fn changed_values<'k>(old: &[(&'k str, String)], new: &[(&'k str, String)]) -> Vec<&'k str> {
    let value = |list: &[(&'k str, String)], key: &str| list.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
    let mut keys: Vec<&'k str> = Vec::new();
    for (key, _) in old.iter().chain(new) {
        if !keys.contains(key) && value(old, key) != value(new, key) {
            keys.push(key);
        }
    }
    keys
}

/// What a reload cannot apply in `[log]` and `[metrics]` (the level it can): the keys
/// that changed.
pub fn changed_log_and_metrics(
    (old_log, old_metrics): (&LogSettings, Option<SocketAddr>),
    (new_log, new_metrics): (&LogSettings, Option<SocketAddr>),
) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old_log.json != new_log.json {
        keys.push("log.format");
    }
    if old_metrics != new_metrics {
        keys.push("metrics.listen");
    }
    keys
}

/// Defaults of `[segment]` that differ between the daemons.
#[derive(Debug, Clone, Copy)]
pub struct SegmentDefaults {
    /// `create` when not given.
    pub create: CreateMode,
    /// `wait_for_segment` when not given.
    pub wait_for_segment: Duration,
}

impl RawSegment {
    /// Validates `[segment]`.
    pub fn validate(&self, src: &Source, defaults: SegmentDefaults) -> Result<SegmentSettings, ConfigError> {
        let text =
            |v: &Option<Spanned<String>>, default: &str| v.as_ref().map_or(default.to_owned(), |s| s.get_ref().clone());
        let backend = text(&self.backend, "posix");
        if !["posix", "sysv", "file"].contains(&backend.as_str()) {
            return Err(src.error(
                "segment.backend",
                self.backend.as_ref(),
                format!("{backend:?} is not one of posix, sysv, file"),
            ));
        }
        let name = text(&self.name, "/high_perf_ring");
        let location =
            Location::parse(&backend, &name).map_err(|e| src.error("segment.name", self.name.as_ref(), e))?;
        let capacity =
            size_key(src, "segment.capacity", &self.capacity)?.unwrap_or(shm_core::segment::DEFAULT_CAPACITY);
        if !capacity.is_power_of_two()
            || !(shm_core::layout::MIN_CAPACITY..=shm_core::layout::MAX_CAPACITY).contains(&capacity)
        {
            return Err(src.error(
                "segment.capacity",
                self.capacity.as_ref(),
                format!("{capacity} bytes is not a power of two from 4KiB to 1TiB"),
            ));
        }
        let max_record = size_key(src, "segment.max_record", &self.max_record)?;
        let max_payload = shm_core::layout::max_payload_for(capacity);
        if let Some(m) = max_record
            && (m == 0 || m > max_payload)
        {
            return Err(src.error(
                "segment.max_record",
                self.max_record.as_ref(),
                format!("{m} bytes must be from 1 to {max_payload} (half the capacity less 8)"),
            ));
        }
        let mode_text = text(&self.mode, "0600");
        let mode = u32::from_str_radix(mode_text.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| m & !0o777 == 0 && m & 0o002 == 0)
            .ok_or_else(|| {
                src.error(
                    "segment.mode",
                    self.mode.as_ref(),
                    format!("{mode_text:?} is not an octal mode without world-write, such as \"0600\" or \"0660\""),
                )
            })?;
        let group = self
            .group
            .as_ref()
            .map(|g| {
                gid_of(g.get_ref())
                    .ok_or_else(|| src.error("segment.group", Some(g), format!("no group {:?}", g.get_ref())))
            })
            .transpose()?;
        let create = match self.create.as_ref().map(|s| s.get_ref().as_str()) {
            None => defaults.create,
            Some("if-missing") => CreateMode::IfMissing,
            Some("always") => CreateMode::Always,
            Some("never") => CreateMode::Never,
            Some(other) => {
                return Err(src.error(
                    "segment.create",
                    self.create.as_ref(),
                    format!("{other:?} is not one of \"if-missing\", \"always\", \"never\""),
                ));
            }
        };
        let wait =
            text(&self.wait, "hybrid").parse().map_err(|e: String| src.error("segment.wait", self.wait.as_ref(), e))?;
        let flush = match self.flush.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("none") => FlushPolicy::None,
            Some("sync") => FlushPolicy::Sync,
            Some(interval) => FlushPolicy::Interval(parse_duration(interval).map_err(|e| {
                src.error(
                    "segment.flush",
                    self.flush.as_ref(),
                    format!("expected none, sync or an interval such as \"100ms\": {e}"),
                )
            })?),
        };
        if flush != FlushPolicy::None && backend != "file" {
            return Err(src.error("segment.flush", self.flush.as_ref(), "applies to backend = \"file\" only"));
        }
        let wait_for_segment = match &self.wait_for_segment {
            None => defaults.wait_for_segment,
            Some(s) => parse_duration(s.get_ref()).map_err(|e| src.error("segment.wait_for_segment", Some(s), e))?,
        };
        let owner = match &self.owner {
            None => nix::unistd::geteuid().as_raw(),
            Some(o) => uid_of(o.get_ref())
                .ok_or_else(|| src.error("segment.owner", Some(o), format!("no user {:?}", o.get_ref())))?,
        };
        let recreate_when_unlinked = match self.on_unlinked.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("exit") => false,
            Some("recreate") => true,
            Some(other) => {
                return Err(src.error(
                    "segment.on_unlinked",
                    self.on_unlinked.as_ref(),
                    format!("{other:?} is not \"exit\" or \"recreate\""),
                ));
            }
        };
        let numa_node = self.numa_node.as_ref().map(|n| *n.get_ref());
        if let Some(node) = numa_node
            && !placement::node_exists(node)
        {
            let online =
                placement::online_nodes().map(|n| placement::format_list(&n)).unwrap_or_else(|e| e.to_string());
            return Err(src.error(
                "segment.numa_node",
                self.numa_node.as_ref(),
                format!("NUMA node {node} does not exist; this machine has node(s) {online}"),
            ));
        }
        let hugepages = self.hugepages.as_ref().is_some_and(|h| *h.get_ref());
        if hugepages && backend == "posix" {
            return Err(src.error(
                "segment.hugepages",
                self.hugepages.as_ref(),
                "a posix segment lives on /dev/shm (tmpfs), which cannot hold huge pages; use backend = \"sysv\", or \"file\" with a name on a hugetlbfs mount (such as /dev/hugepages/ring)",
            ));
        }
        let kind_text = text(&self.kind, "spsc");
        let kind = kind_text.parse::<RingKind>().ok().filter(|k| daemons_support(*k)).ok_or_else(|| {
            src.error(
                "segment.kind",
                self.kind.as_ref(),
                format!("{kind_text:?} is not a kind the daemons support (spsc, mpsc, broadcast, mpmc)"),
            )
        })?;
        if flush != FlushPolicy::None && kind != RingKind::Spsc {
            return Err(src.error(
                "segment.flush",
                self.flush.as_ref(),
                format!("applies to kind = \"spsc\" only, and this ring is {:?}: set flush = \"none\"", kind.name()),
            ));
        }
        let lossy = self.lossy.as_ref().is_some_and(|l| *l.get_ref());
        if lossy && kind != RingKind::Broadcast {
            return Err(src.error(
                "segment.lossy",
                self.lossy.as_ref(),
                format!("only a broadcast ring can be lossy, not {:?}", kind.name()),
            ));
        }
        Ok(SegmentSettings {
            kind,
            lossy,
            location,
            capacity,
            max_record,
            mode,
            group,
            create,
            wait,
            flush,
            wait_for_segment,
            owner,
            recreate_when_unlinked,
            numa_node,
            hugepages,
            prefault: self.prefault.as_ref().is_none_or(|p| *p.get_ref()),
        })
    }
}

/// `cpu_affinity`, validated: the CPUs a daemon's ring thread runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuAffinity(Vec<usize>);

impl CpuAffinity {
    /// Validates `key` (`source.cpu_affinity`, `sink.cpu_affinity`): a non-empty list of
    /// CPUs this process may run on (its `sched_getaffinity` set, which cgroups, `taskset`
    /// and systemd's `CPUAffinity=` narrow).
    pub fn validate(src: &Source, key: &str, value: &Option<Spanned<Vec<u32>>>) -> Result<Option<Self>, ConfigError> {
        let Some(spanned) = value else { return Ok(None) };
        let cpus: Vec<usize> = spanned.get_ref().iter().map(|&c| c as usize).collect();
        if cpus.is_empty() {
            return Err(src.error(key, Some(spanned), "is empty; list the CPUs for the ring thread, such as [1]"));
        }
        let allowed = placement::allowed_cpus()
            .map_err(|e| src.error(key, Some(spanned), format!("cannot read the CPUs this process may use: {e}")))?;
        if let Some(cpu) = cpus.iter().find(|c| !allowed.contains(c)) {
            return Err(src.error(
                key,
                Some(spanned),
                format!("CPU {cpu} is not one this process may run on (allowed: {})", placement::format_list(&allowed)),
            ));
        }
        Ok(Some(CpuAffinity(cpus)))
    }

    /// The CPUs.
    pub fn cpus(&self) -> &[usize] {
        &self.0
    }

    /// Pins the calling thread (the ring thread, as it starts) to these CPUs and logs it.
    pub fn pin_this_thread(&self) -> anyhow::Result<()> {
        use anyhow::Context;
        placement::pin_current_thread(&self.0).with_context(|| format!("pinning the ring thread to CPUs {self}"))?;
        tracing::info!(cpus = %self, "ring thread pinned (cpu_affinity)");
        Ok(())
    }
}

impl std::fmt::Display for CpuAffinity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&placement::format_list(&self.0))
    }
}

/// Parses `"250ms"`, `"30s"`, `"5m"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration such as \"250ms\" or \"30s\" ({e})"))
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `error`, `warn`, `info`, `debug`, `trace` (`RUST_LOG` overrides it).
    pub level: Option<Spanned<String>>,
    /// `human` or `json`.
    pub format: Option<Spanned<String>>,
}

/// `[log]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// The level filter.
    pub level: String,
    /// JSON lines instead of human text.
    pub json: bool,
}

impl RawLog {
    /// Validates `[log]`.
    pub fn validate(&self, src: &Source) -> Result<LogSettings, ConfigError> {
        let level = self.level.as_ref().map_or("info".to_owned(), |l| l.get_ref().clone());
        if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
            return Err(src.error(
                "log.level",
                self.level.as_ref(),
                format!("{level:?} is not one of error, warn, info, debug, trace"),
            ));
        }
        let json = match self.format.as_ref().map(|f| f.get_ref().as_str()) {
            None | Some("human") => false,
            Some("json") => true,
            Some(other) => {
                return Err(src.error("log.format", self.format.as_ref(), format!("{other:?} is not human or json")));
            }
        };
        Ok(LogSettings { level, json })
    }
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Address of the Prometheus text endpoint (`"127.0.0.1:9464"`); none when absent.
    pub listen: Option<Spanned<String>>,
}

impl RawMetrics {
    /// Validates `[metrics]`.
    pub fn validate(&self, src: &Source) -> Result<Option<SocketAddr>, ConfigError> {
        self.listen
            .as_ref()
            .map(|l| {
                l.get_ref().parse().map_err(|_| {
                    src.error(
                        "metrics.listen",
                        Some(l),
                        format!("{:?} is not an address such as \"127.0.0.1:9464\"", l.get_ref()),
                    )
                })
            })
            .transpose()
    }
}

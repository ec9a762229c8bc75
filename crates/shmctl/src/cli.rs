//! The command line, as clap derives it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Operate shmring shared-memory segments: create, inspect, list, clean up.
#[derive(Debug, Parser)]
#[command(name = "shmctl", version, about, propagate_version = true)]
#[command(after_help = "Exit codes: 0 ok, 1 other failure, 64 usage, 65 not a shmring segment or corrupt, \
66 no such segment, 69 in use or busy, 73 already exists, 74 I/O error, 77 permission denied.")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a segment holding an empty ring (never attaches to an existing one).
    #[command(after_help = "Examples:\n  shmctl create /high_perf_ring --capacity 1MiB\n  \
shmctl create 0x53480001 --backend sysv --capacity 64KiB --mode 0640 --group shmring\n  \
shmctl create /var/lib/shmring/ring --backend file --capacity 16MiB")]
    Create(CreateArgs),
    /// Show a segment: identity, ring fill, cursors, every counter, participants.
    #[command(after_help = "Examples:\n  shmctl stat /high_perf_ring\n  shmctl stat /high_perf_ring --json\n  \
shmctl stat /high_perf_ring --watch      (refresh every second with rates; Ctrl-C to stop)\n  \
shmctl stat 0x53480001 --watch 250ms")]
    Stat(StatArgs),
    /// List shmring segments on this host (--all adds other shared memory, like lsipc).
    #[command(
        after_help = "Examples:\n  shmctl list\n  shmctl list --all\n  shmctl list --json --dir /var/lib/shmring"
    )]
    List(ListArgs),
    /// Remove a segment's name (refused while a live participant is attached, unless --force).
    #[command(after_help = "Examples:\n  shmctl unlink /high_perf_ring\n  shmctl unlink 0x53480001 --force")]
    Unlink(UnlinkArgs),
    /// Remove every shmring segment left behind by processes that died.
    #[command(
        after_help = "Examples:\n  shmctl gc --dry-run\n  shmctl gc\n  shmctl gc --include-idle --dir /var/lib/shmring"
    )]
    Gc(GcArgs),
    /// Put one record into a ring (attaches as its producer).
    #[command(after_help = "Examples:\n  shmctl publish /high_perf_ring 'hello world'\n  \
shmctl publish /high_perf_ring --file record.bin --type 7")]
    Publish(PublishArgs),
    /// Show records waiting in a ring without consuming them (moves no cursor).
    #[command(after_help = "Examples:\n  shmctl peek /high_perf_ring\n  shmctl peek /high_perf_ring -n 3 --hex\n  \
shmctl peek /logs --consumer recorder\n\n\
What each kind shows (nothing is consumed, no cursor moves):\n  \
spsc       committed records from the consumer's read cursor\n  \
mpsc       committed records from the consumer's read cursor in claim order, each with its\n             \
producer; padding and holes as skipped lines; it stops at the first claim not yet\n             \
committed and says whom it waits for (a live producer, or a dead one whose hole the\n             \
consumer will unblock)\n  \
broadcast  from the read cursor of the consumer named by --consumer, or without one (or\n             \
when that consumer was lapped) from the oldest record still in the ring; each with\n             \
its sequence number\n  \
mpmc       records not yet acknowledged, from the release cursor: taken ones marked with\n             \
the worker holding them, then waiting ones in the order workers take them; stops at\n             \
a claim not yet committed as mpsc does")]
    Peek(PeekArgs),
    /// Run both daemons on the default config (generator -> ring -> verify), show live
    /// statistics, stop them cleanly and print a summary.
    #[command(after_help = "Examples:\n  shmctl demo\n  shmctl demo --seconds 10 --rate 100000\n  \
shmctl demo --kind mpsc --producers 2\n  shmctl demo --kind broadcast --consumers 2\n  \
shmctl demo --kind mpmc --producers 2 --consumers 2\n\n\
The daemons are looked up beside shmctl (cargo build --release puts all three in target/release).")]
    Demo(DemoArgs),
    /// Measure shmring against pipes, sockets, TCP and a minimal ring on this machine
    /// (throughput, round-trip latency, idle CPU), or run one of the placement benches.
    #[command(after_help = "Examples:\n  shmctl bench\n  \
shmctl bench --transports shmring-hybrid,pipe,minimal-ring --sizes 64,4096 --duration 2s\n  \
shmctl bench --json bench.json --plot bench.svg\n  \
shmctl bench false-sharing\n  shmctl bench numa")]
    Bench(crate::bench::BenchArgs),
    /// Print a shell completion script.
    #[command(after_help = "Examples:\n  shmctl completions bash > /etc/bash_completion.d/shmctl\n  \
shmctl completions zsh > ~/.zfunc/_shmctl")]
    Completions(CompletionsArgs),
}

/// A segment on the command line.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// `/name` (posix), a key `0x...`, decimal or `ftok:PATH:ID` (sysv), or a file path.
    pub name: String,
    /// Backend, when the name's shape is not enough (default: guessed from NAME).
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
}

/// Backends selectable on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// POSIX shared memory (`shm_open`, /dev/shm).
    Posix,
    /// SysV shared memory (`shmget`).
    Sysv,
    /// A regular file.
    File,
}

/// `shmctl create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The segment.
    #[command(flatten)]
    pub target: Target,
    /// Ring data bytes, a power of two from 4KiB to 1TiB (units: KiB, MiB, GiB).
    #[arg(long, default_value = "16MiB")]
    pub capacity: String,
    /// Largest record (default: capacity/2 - 8).
    #[arg(long)]
    pub max_record: Option<String>,
    /// Permission bits, octal (never world-writable).
    #[arg(long, default_value = "0600")]
    pub mode: String,
    /// Group name or gid of the segment.
    #[arg(long)]
    pub group: Option<String>,
    /// Ring kind: spsc (one producer), mpsc (up to 16 producers, one consumer), broadcast
    /// (one producer, up to 64 named consumers that each see every record) or mpmc (up to
    /// 16 producers, up to 6 competing workers: each record to one of them).
    #[arg(long, default_value = "spsc", value_parser = ["spsc", "mpsc", "broadcast", "mpmc"])]
    pub kind: String,
    /// Broadcast only: slow consumers are lapped (and told how many records they missed)
    /// instead of holding the producer back.
    #[arg(long)]
    pub lossy: bool,
    /// Wait strategy hint stored in the segment: spin, yield, futex, hybrid.
    #[arg(long, default_value = "hybrid")]
    pub wait: String,
    /// Bind the segment's memory to this NUMA node (mbind, before any page is allocated).
    #[arg(long, value_name = "N")]
    pub numa_node: Option<u32>,
    /// Back it with huge pages: sysv, or a file on a hugetlbfs mount (not posix); the system
    /// must have enough free (sysctl vm.nr_hugepages=N).
    #[arg(long)]
    pub hugepages: bool,
    /// Map every page now, so the first records take no page faults.
    #[arg(long)]
    pub prefault: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `shmctl stat`.
#[derive(Debug, Args)]
pub struct StatArgs {
    /// The segment.
    #[command(flatten)]
    pub target: Target,
    /// One JSON object with stable snake_case fields; with --watch, one per line (NDJSON).
    #[arg(long)]
    pub json: bool,
    /// Refresh in place every INTERVAL (default 1s) with per-second rates until Ctrl-C.
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "1s", value_parser = parse_interval)]
    pub watch: Option<Duration>,
}

/// `shmctl list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Also list shared memory that is not shmring's, with lsipc's columns.
    #[arg(long)]
    pub all: bool,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Directories holding file segments (default: /var/lib/shmring if it exists).
    #[arg(long = "dir", value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Print no header line.
    #[arg(short = 'n', long)]
    pub noheadings: bool,
    /// Raw output: columns separated by one space, not aligned.
    #[arg(short = 'r', long)]
    pub raw: bool,
    /// Sizes in bytes rather than in KiB, MiB, ...
    #[arg(short = 'b', long)]
    pub bytes: bool,
    /// The columns of shmring segments, comma-separated (default: all but OWNER, PERMS).
    #[arg(short = 'o', long, value_name = "COLUMNS", value_delimiter = ',', value_enum, ignore_case = true)]
    pub output: Vec<crate::list::Column>,
}

/// `shmctl unlink`.
#[derive(Debug, Args)]
pub struct UnlinkArgs {
    /// The segment.
    #[command(flatten)]
    pub target: Target,
    /// Remove it even with live participants, when their liveness cannot be checked, or
    /// when it is not a shmring segment.
    #[arg(long)]
    pub force: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `shmctl gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also remove segments nobody is attached to that never had a participant die
    /// (cleanly stopped or never used).
    #[arg(long)]
    pub include_idle: bool,
    /// Directories holding file segments (default: /var/lib/shmring if it exists).
    #[arg(long = "dir", value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Consider only these segments (names, keys or paths as `shmctl list` shows them;
    /// file segments must be in a `--dir`). Default: every segment found.
    #[arg(value_name = "SEGMENT")]
    pub only: Vec<String>,
    /// Print what was decided for each segment as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `shmctl publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The segment.
    #[command(flatten)]
    pub target: Target,
    /// The record, as text.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub data: Option<String>,
    /// Read the record from this file instead (`-` for stdin).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Record type (below 0xFFFF0000).
    #[arg(long = "type", default_value_t = 0)]
    pub record_type: u32,
    /// How long to wait for space when the ring is full.
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub timeout: Duration,
    /// Trust a segment owned by this user (name or uid); by default only your own
    /// (root: any).
    #[arg(long)]
    pub owner: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `shmctl peek`.
#[derive(Debug, Args)]
pub struct PeekArgs {
    /// The segment.
    #[command(flatten)]
    pub target: Target,
    /// How many records, oldest first.
    #[arg(short = 'n', long = "count", default_value_t = 10)]
    pub count: usize,
    /// Show payloads as hex dumps.
    #[arg(long)]
    pub hex: bool,
    /// JSON instead of text (payloads as UTF-8 text or base64, as `encoding` says).
    #[arg(long, conflicts_with = "hex")]
    pub json: bool,
    /// Broadcast rings: start at this named consumer's read cursor (what it reads next).
    #[arg(long, value_name = "NAME")]
    pub consumer: Option<String>,
}

/// `shmctl demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How long to run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// The ring to use (created, then removed at the end unless --keep).
    #[arg(long, default_value = "/high_perf_ring")]
    pub segment: String,
    /// Generator rate in records per second (0: as fast as the ring takes them).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Leave the segment in place afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Ring kind: spsc (one producer), mpsc (several producers, one consumer), broadcast
    /// (one producer, several named consumers that each see every record) or mpmc (several
    /// producers, several workers sharing the records).
    #[arg(long, default_value = "spsc", value_parser = ["spsc", "mpsc", "broadcast", "mpmc"])]
    pub kind: String,
    /// Producers (generators), each a producerd with its own producer_id: 1 for spsc and
    /// broadcast, 1 to 16 for mpsc and mpmc.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub producers: u8,
    /// Consumers, each a consumerd: 1 for spsc and mpsc, up to 16 named consumers for
    /// broadcast, up to 6 workers for mpmc.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub consumers: u8,
}

/// `shmctl completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// Parses `1`, `0.5` (seconds) or `250ms`, `2s`, `1m`.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 => Duration::from_secs_f64(secs),
        Ok(_) => return Err(format!("interval {text:?} must be positive")),
        Err(_) => humantime::parse_duration(text).map_err(|e| format!("invalid interval {text:?}: {e}"))?,
    };
    if d.is_zero() { Err(format!("interval {text:?} must be positive")) } else { Ok(d) }
}

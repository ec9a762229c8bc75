//! One error type per operation, each naming the segment and keeping the OS error (or
//! the header or ring problem) as its `source()`, which the message does not repeat:
//! print the chain (`{:#}` with anyhow) to see both.

use std::io;
use std::time::Duration;

use crate::layout::HeaderError;
use crate::name::Location;
use crate::ring::Corruption;

/// Why [`crate::SegmentBuilder::create`] failed. Nothing is left behind on failure.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The options cannot make a segment.
    #[error("{location}: {reason}")]
    InvalidOptions {
        /// The segment.
        location: Location,
        /// What is wrong.
        reason: String,
    },
    /// Something already exists at that name.
    #[error("{location}: already exists{}; open it instead, or remove it first (shmctl unlink)", owner_suffix(*.owner))]
    Exists {
        /// The segment.
        location: Location,
        /// Uid of the owner of what is there, when it could be read.
        owner: Option<u32>,
    },
    /// The OS refused (the message says what to do; the OS error, its source, says
    /// "permission denied").
    #[error("{location}: cannot create it; {}", create_hint(location))]
    Permission {
        /// The segment.
        location: Location,
        /// The OS error.
        source: io::Error,
    },
    /// The memory could not be reserved (a full `/dev/shm` or filesystem, or SysV limits).
    #[error("{location}: cannot reserve {size} bytes (is /dev/shm or the filesystem full?)")]
    NoSpace {
        /// The segment.
        location: Location,
        /// Bytes requested.
        size: u64,
        /// The OS error.
        source: io::Error,
    },
    /// Huge pages were asked for, and the system has too few free.
    #[error(
        "{location}: needs {needed} huge page(s) of {} but {available} are free (vm.nr_hugepages = {total}); reserve them with `sysctl vm.nr_hugepages={}` (as root), or create it without huge pages",
        crate::units::format_size(*page_size),
        total + needed.saturating_sub(*available)
    )]
    HugePages {
        /// The segment.
        location: Location,
        /// Bytes in one huge page.
        page_size: u64,
        /// Huge pages the segment needs.
        needed: u64,
        /// Huge pages free for a new mapping.
        available: u64,
        /// Huge pages in the system's pool (`vm.nr_hugepages`).
        total: u64,
        /// The OS error, when the kernel refused (`None`: refused before asking it).
        source: Option<io::Error>,
    },
    /// The directory of a file segment is writable by other users.
    #[error(
        "{location}: directory {dir} is writable by other users; put file segments in a directory only trusted users can write (for example /var/lib/shmring)"
    )]
    UnsafeDirectory {
        /// The segment.
        location: Location,
        /// The directory.
        dir: String,
    },
    /// The SysV lock file at the key's path is not one this user may trust (another
    /// user made it first, or it is not a regular file): never used, never replaced.
    #[error("{location}: {}", untrusted_lock_file(path, problem))]
    UntrustedLockFile {
        /// The segment.
        location: Location,
        /// The lock file.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Another system call failed.
    #[error("{location}: {op} failed")]
    Io {
        /// The segment.
        location: Location,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// Why [`crate::SegmentBuilder::open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Nothing exists at that name.
    #[error("{location}: no such segment")]
    NotFound {
        /// The segment.
        location: Location,
    },
    /// The OS refused (the message says what to do; the OS error, its source, says
    /// "permission denied").
    #[error(
        "{location}: cannot open it; run it as its owner or root, or ask its owner for group access (shmctl create --group, --mode 0640)"
    )]
    Permission {
        /// The segment.
        location: Location,
        /// The OS error.
        source: io::Error,
    },
    /// What is there is not a regular file or shared-memory object.
    #[error("{location}: is a {what}, not a segment")]
    NotRegular {
        /// The segment.
        location: Location,
        /// What it is (symlink, directory, FIFO, ...).
        what: &'static str,
    },
    /// It belongs to a user the caller did not expect.
    #[error("{location}: owned by uid {found}, expected uid {expected}; refusing to trust it")]
    WrongOwner {
        /// The segment.
        location: Location,
        /// The owner found.
        found: u32,
        /// The owner expected.
        expected: u32,
    },
    /// Every user may write it.
    #[error("{location}: mode {mode:04o} lets every user write it; refusing to trust it")]
    WorldWritable {
        /// The segment.
        location: Location,
        /// Its mode bits.
        mode: u32,
    },
    /// The SysV segment's lock file is not one to trust (another owner than the
    /// segment's, writable by every user, or not a regular file).
    #[error("{location}: {}", untrusted_lock_file(path, problem))]
    UntrustedLockFile {
        /// The segment.
        location: Location,
        /// The lock file.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The creator did not finish initialising it in time.
    #[error(
        "{location}: not initialised after waiting {waited:?} (a creator died half-way, or it is not a shmring segment)"
    )]
    NotInitialised {
        /// The segment.
        location: Location,
        /// How long we waited.
        waited: Duration,
    },
    /// The header is not one this build can use.
    #[error("{location}")]
    Header {
        /// The segment.
        location: Location,
        /// What is wrong with it.
        source: HeaderError,
    },
    /// Another system call failed.
    #[error("{location}: {op} failed")]
    Io {
        /// The segment.
        location: Location,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// Why [`crate::SegmentBuilder::open_or_create`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenOrCreateError {
    /// Opening an existing segment failed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Creating a new one failed.
    #[error(transparent)]
    Create(#[from] CreateError),
}

/// Why a producer or consumer could not attach.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// A live process already holds the role.
    #[error("{location}: a {role} is already attached{}", pid_suffix(*.pid))]
    RoleTaken {
        /// The segment.
        location: Location,
        /// The role.
        role: crate::participant::Role,
        /// Its pid as recorded in the segment.
        pid: Option<u32>,
    },
    /// The segment was opened read-only.
    #[error("{location}: opened read-only; cannot attach a {role}")]
    ReadOnly {
        /// The segment.
        location: Location,
        /// The role.
        role: crate::participant::Role,
    },
    /// The ring is of another kind than the handle asked for.
    #[error("{location}: the ring is {found}, not {wanted}; attach with the {found} handles")]
    WrongKind {
        /// The segment.
        location: Location,
        /// The segment's kind.
        found: &'static str,
        /// The kind the caller asked for.
        wanted: &'static str,
    },
    /// An mpsc producer id outside `0..16`.
    #[error("{location}: producer id {id} is out of range (0..{max})")]
    ProducerId {
        /// The segment.
        location: Location,
        /// The id asked for.
        id: usize,
        /// The number of ids.
        max: usize,
    },
    /// A broadcast consumer name that is not 1 to 24 printable ASCII bytes.
    #[error("{location}: {source}")]
    ConsumerName {
        /// The segment.
        location: Location,
        /// What is wrong with it.
        source: crate::ring::broadcast::ConsumerNameError,
    },
    /// Every broadcast consumer slot holds another name.
    #[error("{location}: all {max} broadcast consumer slots hold other names")]
    NoConsumerSlot {
        /// The segment.
        location: Location,
        /// The number of slots.
        max: usize,
    },
    /// An mpmc worker id outside `0..6`.
    #[error("{location}: worker id {id} is out of range (0..{max})")]
    WorkerId {
        /// The segment.
        location: Location,
        /// The id asked for.
        id: usize,
        /// The number of ids.
        max: usize,
    },
    /// An mpmc worker id whose dead predecessors left records still to hand over.
    #[error("{location}")]
    Worker {
        /// The segment.
        location: Location,
        /// What is pending.
        source: crate::ring::mpmc::WorkerAttachError,
    },
    /// A flush policy was asked of a ring whose producers cannot honour it (only the
    /// spsc producer makes its records durable; see [`crate::FlushPolicy`]).
    #[error("{location}: a flush policy applies to spsc rings only, and this ring is {kind}")]
    FlushUnsupported {
        /// The segment.
        location: Location,
        /// The ring's kind.
        kind: &'static str,
    },
    /// The ring's cursors are impossible.
    #[error("{location}")]
    Corrupt {
        /// The segment.
        location: Location,
        /// What is wrong.
        source: Corruption,
    },
    /// A system call failed.
    #[error("{location}: {op} failed")]
    Io {
        /// The segment.
        location: Location,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// Why [`crate::Segment::peek`] or [`crate::Segment::peek_view`] failed.
#[derive(Debug, thiserror::Error)]
pub enum PeekError {
    /// A consumer name was given for a ring whose consumers have no names (only
    /// broadcast consumers do).
    #[error("{location}: a {kind} ring has no named consumers (a consumer name is for broadcast rings)")]
    NamedConsumerUnsupported {
        /// The segment.
        location: Location,
        /// The segment's kind.
        kind: &'static str,
    },
    /// No consumer slot of the broadcast ring holds that name (or it is not a valid name).
    #[error("{location}: no broadcast consumer is named {name:?}")]
    NoSuchConsumer {
        /// The segment.
        location: Location,
        /// The name asked for.
        name: String,
    },
    /// The ring's cursors or frames are impossible.
    #[error("{location}")]
    Corrupt {
        /// The segment.
        location: Location,
        /// What is wrong.
        source: Corruption,
    },
}

/// Why [`crate::Segment::unlink`] or [`crate::Segment::unlink_unused`] failed.
#[derive(Debug, thiserror::Error)]
pub enum UnlinkError {
    /// Nothing exists at that name.
    #[error("{location}: no such segment")]
    NotFound {
        /// The segment.
        location: Location,
    },
    /// A live process is attached (its role lock is held), or attached while this was
    /// deciding: the segment was kept.
    #[error("{location}: in use by a live participant; stop it first (--force removes it anyway)")]
    InUse {
        /// The segment.
        location: Location,
        /// The participants alive when the refusal was decided (may be empty: one that
        /// was still recording itself).
        participants: Vec<crate::participant::Participant>,
    },
    /// Whether a process is attached cannot be told, which is not the same as "nobody":
    /// the segment was kept.
    #[error("{location}: cannot tell whether a process is attached ({reason}); kept (--force removes it anyway)")]
    LivenessUnknown {
        /// The segment.
        location: Location,
        /// Why not.
        reason: String,
    },
    /// The name no longer leads to the segment that was checked (someone removed it and
    /// made a new one meanwhile): the new one was not removed.
    #[error("{location}: the name now leads to a different segment than the one checked; not removed")]
    Replaced {
        /// The segment.
        location: Location,
    },
    /// The OS refused (the message says who may; the OS error, its source, says
    /// "permission denied").
    #[error("{location}: {}", unlink_hint(location))]
    Permission {
        /// The segment.
        location: Location,
        /// The OS error.
        source: io::Error,
    },
    /// Another system call failed.
    #[error("{location}: {op} failed")]
    Io {
        /// The segment.
        location: Location,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

fn untrusted_lock_file(path: &str, problem: &str) -> String {
    format!(
        "lock file {path} {problem}; refusing to use it (whoever made it could fake or hide who is attached): find out who made it, then remove it as root"
    )
}

/// What creating a segment takes, by backend.
fn create_hint(location: &Location) -> &'static str {
    match location {
        Location::Posix(_) => "creating takes write permission on /dev/shm",
        Location::Sysv(_) => "the key's existing permissions, or the system's IPC limits, do not allow it",
        Location::File(_) | Location::Anon => {
            "creating takes write permission on its directory; use one this user owns (for example /var/lib/shmring)"
        }
    }
}

/// Who may remove a segment, by backend.
fn unlink_hint(location: &Location) -> &'static str {
    match location {
        Location::Posix(_) => "only its owner or root can remove it (/dev/shm is sticky)",
        Location::Sysv(_) => "only its owner, its creator or root can remove it (IPC_RMID)",
        Location::File(_) | Location::Anon => "removing it takes write permission on its directory",
    }
}

fn owner_suffix(owner: Option<u32>) -> String {
    owner.map(|uid| format!(" (owned by uid {uid})")).unwrap_or_default()
}

fn pid_suffix(pid: Option<u32>) -> String {
    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
}

/// Converts a `nix` error into the `io::Error` our error types carry.
pub(crate) fn io_err(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

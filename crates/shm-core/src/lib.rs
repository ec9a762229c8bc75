//! Shared-memory segments and lock-free rings for Linux processes.
//!
//! A [`Segment`] is one named piece of shared memory: a POSIX object (`/high_perf_ring`),
//! a SysV segment (key `0x53480001`), a regular file, or an anonymous memfd shared with
//! forked children. It holds a header ([`layout`]) and a ring. A [`Producer`] claims
//! space, writes a record in place and commits it; a [`Consumer`] borrows committed
//! records in place and releases them. Nothing is copied between them but the cursors.
//!
//! # Layout
//! See [`layout`]: a 16 KiB header of atomics (identity, the producer's cursor, two wake
//! words, 16 labelled counters, 32 participant slots, 64 read-cursor slots, each hot field
//! on its own 128-byte line), then the ring data (a power of two, 4 KiB to 1 TiB).
//!
//! # Protocol
//! See [`ring::spsc`]: records are framed `[len][type][payload]` on 8-byte boundaries,
//! with a padding frame at the wrap; the producer publishes by storing its cursor with
//! `Release` after the frames, the consumer releases by storing its cursor with `Release`
//! after reading. Each side caches the other's cursor, so a busy ring touches no shared
//! line it does not own, and sleeps on a futex word in the segment only after announcing
//! it, so the other side makes a wake-up syscall only for a sleeper.
//!
//! # Guarantees
//! - A record is visible only once committed: a producer killed mid-record leaves
//!   nothing torn, and its successor resumes at the last committed record.
//! - A consumer's position lives in the segment and moves only when it releases, so a
//!   restarted consumer resumes at the first record it had not released.
//! - Everything read from the segment is validated before use (range, 8-byte alignment,
//!   overflow-free arithmetic): a corrupt or hostile segment gives an error, never a
//!   panic, a hang or an out-of-bounds access. Tested with crafted images and a fuzzer
//!   of segment images (`tests/tests/reliability_hostile.rs`), and random bytes written
//!   by another process while a ring runs (`crates/shm-core/tests/corrupt.rs`). Out of
//!   reach: a process allowed to write a posix or file segment can truncate it, and any
//!   access to the pages cut off is `SIGBUS` (see the backend docs in [`segment`]).
//! - [`Segment::peek`] (every ring kind) copies records without a reference to bytes
//!   another process may be writing, and re-checks the cursor (and, where consumers zero
//!   what they pass, the header word) after each copy: on a busy ring it never reports
//!   corruption that is not there, nor a record torn by a racing writer.
//! - Each producer and consumer holds a kernel lock the OS drops when it dies;
//!   [`Segment::participants`] reports who is alive.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use shm_core::{Location, Segment};
//!
//! let location = Location::posix(&format!("/shmring-doc-{}", std::process::id()))?;
//! let segment = Segment::builder(location.clone()).capacity(64 * 1024).create()?;
//!
//! let mut producer = segment.producer()?;
//! let mut claim = producer.try_claim(5)?;   // zero-copy: write in place
//! claim.copy_from_slice(b"hello");
//! claim.commit()?;                           // Err only from a file segment's flush policy
//! producer.publish(b"world", Some(Duration::from_secs(1)))?; // or copy in, waiting for space
//!
//! let mut consumer = segment.consumer()?;
//! let first = consumer.read(Some(Duration::from_secs(1)))?; // borrowed in place
//! assert_eq!(&*first, b"hello");
//! drop(first);                                                // read: released lazily
//! let mut seen = Vec::new();
//! consumer.read_batch(16, |r| { seen.push(r.data.to_vec()); Ok::<_, std::convert::Infallible>(()) })?;
//! assert_eq!(seen, [b"world".to_vec()]);
//!
//! let stats = segment.stats();
//! assert_eq!((stats.total_produced, stats.total_consumed), (2, 2));
//! Segment::unlink(&location)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod backend;
mod clock;
pub mod discover;
pub mod error;
#[cfg(not(loom))]
mod futex;
pub mod layout;
mod mapping;
pub mod name;
pub mod owner;
pub mod participant;
pub mod placement;
pub mod ring;
pub mod robust;
pub mod segment;
pub mod stats;
mod sync;
pub mod units;

pub use error::{AttachError, CreateError, OpenError, OpenOrCreateError, PeekError, UnlinkError};
pub use layout::{HeaderError, RingKind};
pub use name::{Location, NameError, SegmentName, SysvKey};
pub use participant::{Liveness, Participant, Role};
pub use ring::spsc::{Batch, Claim, Consumer, PeekedRecord, PeekedState, PowerLossRepair, Producer, ReadGuard, Record};
pub use ring::{
    BatchError, ClaimError, Corruption, FlushError, PeekStop, PeekView, ReadError, SkippedFrame, TryClaimError,
    TryReadError, WaitStrategy,
};
pub use segment::{
    BroadcastConsumerStatus, FlushPolicy, MpmcStatus, MpmcWorkerStatus, MpscProducerStatus, MpscStatus, Segment,
    SegmentBuilder, SegmentInfo, SysvStat,
};
pub use stats::{Counter, StatsSnapshot};

/// The SysV lock-file path for a key (where participants' liveness locks live).
pub fn sysv_lock_path(key: SysvKey) -> std::path::PathBuf {
    backend::sysv::lock_path(key)
}

//! Exit codes, sysexits style, and the mapping from library errors to them.
//!
//! | code | meaning |
//! |------|---------|
//! | 0  | success |
//! | 1  | any other failure |
//! | 64 | usage: bad arguments, invalid name, size or options (`peek --consumer` on a ring without named consumers) |
//! | 65 | data: not a shmring segment, unsupported version, corrupt header or ring |
//! | 66 | no such segment (or, for `peek --consumer`, no such broadcast consumer) |
//! | 69 | unavailable: in use by a live participant, not initialised, role taken, not supported for this kind of ring yet |
//! | 73 | cannot create: the name already exists |
//! | 74 | I/O error, or no space to reserve the segment |
//! | 77 | permission denied, untrusted owner or mode |

use shm_core::{AttachError, Corruption, CreateError, NameError, OpenError, PeekError, UnlinkError};

pub const USAGE: u8 = 64;
pub const DATA: u8 = 65;
pub const NO_INPUT: u8 = 66;
pub const UNAVAILABLE: u8 = 69;
pub const CANT_CREATE: u8 = 73;
pub const IO: u8 = 74;
pub const NO_PERM: u8 = 77;

/// A refusal decided by shmctl itself, with its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub code: u8,
    pub message: String,
}

/// Returns an `anyhow::Error` for a refusal.
pub fn refuse(code: u8, message: impl Into<String>) -> anyhow::Error {
    Refusal { code, message: message.into() }.into()
}

/// The exit code for an error: the first cause in its chain that we know decides.
pub fn code_of(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(r) = cause.downcast_ref::<Refusal>() {
            return r.code;
        }
        if let Some(e) = cause.downcast_ref::<OpenError>() {
            return match e {
                OpenError::NotFound { .. } => NO_INPUT,
                OpenError::Permission { .. }
                | OpenError::WrongOwner { .. }
                | OpenError::WorldWritable { .. }
                | OpenError::UntrustedLockFile { .. } => NO_PERM,
                OpenError::NotRegular { .. } | OpenError::Header { .. } => DATA,
                OpenError::NotInitialised { .. } => UNAVAILABLE,
                OpenError::Io { .. } => IO,
            };
        }
        if let Some(e) = cause.downcast_ref::<CreateError>() {
            return match e {
                CreateError::InvalidOptions { .. } => USAGE,
                CreateError::Exists { .. } => CANT_CREATE,
                CreateError::Permission { .. }
                | CreateError::UnsafeDirectory { .. }
                | CreateError::UntrustedLockFile { .. } => NO_PERM,
                CreateError::NoSpace { .. } | CreateError::HugePages { .. } | CreateError::Io { .. } => IO,
            };
        }
        if let Some(e) = cause.downcast_ref::<AttachError>() {
            return match e {
                AttachError::RoleTaken { .. } | AttachError::Worker { .. } => UNAVAILABLE,
                AttachError::ReadOnly { .. } => NO_PERM,
                AttachError::WrongKind { .. }
                | AttachError::ProducerId { .. }
                | AttachError::ConsumerName { .. }
                | AttachError::WorkerId { .. }
                | AttachError::FlushUnsupported { .. } => USAGE,
                AttachError::NoConsumerSlot { .. } => UNAVAILABLE,
                AttachError::Corrupt { .. } => DATA,
                AttachError::Io { .. } => IO,
            };
        }
        if let Some(e) = cause.downcast_ref::<UnlinkError>() {
            return match e {
                UnlinkError::NotFound { .. } => NO_INPUT,
                UnlinkError::InUse { .. } | UnlinkError::LivenessUnknown { .. } | UnlinkError::Replaced { .. } => {
                    UNAVAILABLE
                }
                UnlinkError::Permission { .. } => NO_PERM,
                UnlinkError::Io { .. } => IO,
            };
        }
        if let Some(e) = cause.downcast_ref::<PeekError>() {
            return match e {
                PeekError::NamedConsumerUnsupported { .. } => USAGE,
                PeekError::NoSuchConsumer { .. } => NO_INPUT,
                PeekError::Corrupt { .. } => DATA,
            };
        }
        if cause.downcast_ref::<NameError>().is_some() || cause.downcast_ref::<shm_core::units::SizeError>().is_some() {
            return USAGE;
        }
        if cause.downcast_ref::<Corruption>().is_some() {
            return DATA;
        }
        if cause.downcast_ref::<std::io::Error>().is_some() {
            return IO;
        }
    }
    1
}

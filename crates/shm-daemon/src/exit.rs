//! Exit codes of both daemons (sysexits style).
//!
//! | code | meaning |
//! |------|---------|
//! | 0  | clean shutdown |
//! | 1  | any other failure (including a verify sink that saw lost or corrupt records) |
//! | 66 | the segment does not exist and `create = "never"` (or it never appeared) |
//! | 69 | the role is taken: another live producer/consumer is attached |
//! | 74 | I/O error (a sink's failed fsync, an undeliverable record under `stop`, the `msync` of a file segment's `flush` policy), or no space to reserve the segment (a full /dev/shm or filesystem) |
//! | 75 | the segment was unlinked while in use (`on_unlinked = "exit"`): restart to recreate it |
//! | 77 | permission denied, or the segment's owner or mode is not trusted |
//! | 78 | invalid configuration |

use shm_core::{AttachError, CreateError, OpenError, OpenOrCreateError};

/// Clean shutdown.
pub const OK: u8 = 0;
/// Any other failure.
pub const FAILURE: u8 = 1;
/// The segment is missing.
pub const NO_SEGMENT: u8 = 66;
/// The role is taken.
pub const IN_USE: u8 = 69;
/// I/O error or no space.
pub const IO: u8 = 74;
/// The segment was unlinked while in use.
pub const UNLINKED: u8 = 75;
/// Permission denied or untrusted segment.
pub const PERMISSION: u8 = 77;
/// Invalid configuration.
pub const CONFIG: u8 = 78;

/// The exit code for an error from opening or attaching a segment.
pub fn code_of(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.downcast_ref::<crate::config::ConfigError>().is_some() {
            return CONFIG;
        }
        if cause.downcast_ref::<shm_core::FlushError>().is_some() {
            return IO;
        }
        let open = cause.downcast_ref::<OpenError>().or_else(|| match cause.downcast_ref::<OpenOrCreateError>() {
            Some(OpenOrCreateError::Open(e)) => Some(e),
            _ => None,
        });
        if let Some(e) = open {
            return match e {
                OpenError::NotFound { .. } => NO_SEGMENT,
                OpenError::Permission { .. }
                | OpenError::WrongOwner { .. }
                | OpenError::WorldWritable { .. }
                | OpenError::UntrustedLockFile { .. } => PERMISSION,
                _ => FAILURE,
            };
        }
        let create = cause.downcast_ref::<CreateError>().or_else(|| match cause.downcast_ref::<OpenOrCreateError>() {
            Some(OpenOrCreateError::Create(e)) => Some(e),
            _ => None,
        });
        if let Some(e) = create {
            return match e {
                CreateError::Permission { .. }
                | CreateError::UnsafeDirectory { .. }
                | CreateError::UntrustedLockFile { .. } => PERMISSION,
                CreateError::InvalidOptions { .. } => CONFIG,
                CreateError::NoSpace { .. } | CreateError::HugePages { .. } | CreateError::Io { .. } => IO,
                CreateError::Exists { .. } => FAILURE,
            };
        }
        if let Some(e) = cause.downcast_ref::<AttachError>() {
            return match e {
                AttachError::RoleTaken { .. } => IN_USE,
                AttachError::ReadOnly { .. } => PERMISSION,
                AttachError::WrongKind { .. }
                | AttachError::ProducerId { .. }
                | AttachError::FlushUnsupported { .. } => CONFIG,
                _ => FAILURE,
            };
        }
    }
    // An I/O error no shmring type claimed above: a sink's output.
    if err.chain().any(|c| c.is::<std::io::Error>()) {
        return IO;
    }
    FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A producer whose flush policy's `msync` failed stops with 74, however the error
    /// was wrapped on its way up.
    #[test]
    fn a_failed_msync_is_an_io_error() {
        let failure = shm_core::FlushError { start: 4096, end: 8192, errno: nix::errno::Errno::EIO };
        let claim = anyhow::Error::new(shm_core::ClaimError::Flush(failure.clone())).context("generator");
        let batch = anyhow::Error::new(failure).context("generator: publishing a batch");
        assert_eq!((code_of(&claim), code_of(&batch)), (IO, IO));
    }
}

//! A test-only record of what the generator was told was published.
//!
//! With `SHMRING_TEST_LEDGER=PATH` in its environment, the generator appends the
//! sequence number of every record to `PATH` (u64 little-endian, 8 bytes each) once the
//! batch holding it has been published (the write cursor stored), and never before. A test
//! compares the file with what its own reader received, so its "lost" figure is
//! "acknowledged and never delivered", counted by something other than the ring.
//!
//! Honoured only in a build with the test hooks (`shm_daemon::test_hooks`); unset, or
//! in a shipped build, nothing is opened and each batch pays one `None` check.
//! A process killed between the publish and the append leaves those records
//! unacknowledged (delivered, never in the ledger); a kill inside the `write` at worst
//! leaves a partial last entry, which the reader ignores.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::Range;

use anyhow::{Context, Result};
use shm_daemon::test_hooks::Hook;

/// The ledger file, when the test asked for one.
pub struct Ledger(Option<File>);

impl Ledger {
    /// Opens `$SHMRING_TEST_LEDGER` for appending, or nothing when it is unset (or the
    /// build has no test hooks).
    pub fn from_env() -> Result<Ledger> {
        let Some(path) = Hook::Ledger.value().map(std::path::PathBuf::from) else { return Ok(Ledger(None)) };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening the test ledger {}", path.display()))?;
        Ok(Ledger(Some(file)))
    }

    /// Appends `published` (sequence numbers whose publish has returned), in one `write`.
    pub fn acknowledge(&mut self, published: Range<u64>) -> Result<()> {
        let Some(file) = self.0.as_mut() else { return Ok(()) };
        let bytes: Vec<u8> = published.flat_map(u64::to_le_bytes).collect();
        file.write_all(&bytes).context("appending to the test ledger")
    }
}

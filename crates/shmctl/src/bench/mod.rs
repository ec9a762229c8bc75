//! `shmctl bench`: the seed's comparison table, measured on the user's machine.
//!
//! * `shmctl bench [options]`: transports against each other (see [`suite`]).
//! * `shmctl bench false-sharing`: packed against padded counters (see [`false_sharing`]).
//! * `shmctl bench numa`: a segment bound to the local against a remote NUMA node (see [`numa`]).

mod false_sharing;
mod numa;
mod suite;

use std::num::NonZeroUsize;
use std::ptr::NonNull;

use clap::{Args, Subcommand};
use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, munmap};

/// `shmctl bench`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// A placement bench instead of the transport comparison.
    #[command(subcommand)]
    pub which: Option<BenchKind>,
    /// The transport comparison's options.
    #[command(flatten)]
    pub suite: suite::SuiteArgs,
}

/// `shmctl bench <kind>`.
#[derive(Debug, Subcommand)]
pub enum BenchKind {
    /// Counters packed into one cache line against counters padded to their own lines.
    FalseSharing(false_sharing::FalseSharingArgs),
    /// A segment bound to the local NUMA node against one bound to a remote node.
    Numa(numa::NumaArgs),
}

/// An anonymous shared mapping: zeroed, inherited by forked children (so both processes of
/// a case see the same bytes), unmapped when dropped.
pub struct SharedAnon {
    base: NonNull<u8>,
    len: usize,
}

impl SharedAnon {
    /// Maps `len` (non-zero) fresh bytes.
    pub fn new(len: NonZeroUsize) -> nix::Result<SharedAnon> {
        // SAFETY: a fresh anonymous mapping at an address the kernel picks aliases nothing;
        // the kernel zero-fills it, and all-zero bytes are valid atomics.
        let base =
            unsafe { mmap_anonymous(None, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED) }?;
        Ok(SharedAnon { base: base.cast(), len: len.get() })
    }

    /// The first byte (page-aligned); the mapping lives as long as `self`.
    pub fn ptr(&self) -> NonNull<u8> {
        self.base
    }
}

impl Drop for SharedAnon {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length; references into it borrow its owner.
        let _ = unsafe { munmap(self.base.cast(), self.len) };
    }
}

/// The median (the mean of the middle two for an even count), or `None` for no values.
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Runs the bench the command line asked for.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.which {
        Some(BenchKind::FalseSharing(a)) => false_sharing::run(&a),
        Some(BenchKind::Numa(a)) => numa::run(&a),
        None => suite::run(&args.suite),
    }
}

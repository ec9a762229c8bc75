//! `shmctl bench`: the seed's comparison table, measured on the user's machine.
//!
//! * `shmctl bench [options]`: transports against each other (see [`suite`]).
//! * `shmctl bench false-sharing`: packed against padded counters (see [`false_sharing`]).
//! * `shmctl bench numa`: a segment bound to the local against a remote NUMA node (see [`numa`]).

mod false_sharing;
mod numa;
mod suite;

use clap::{Args, Subcommand};

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

/// Runs the bench the command line asked for.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.which {
        Some(BenchKind::FalseSharing(a)) => false_sharing::run(&a),
        Some(BenchKind::Numa(a)) => numa::run(&a),
        None => suite::run(&args.suite),
    }
}

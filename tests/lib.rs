//! Integration tests of shmring: real processes on real segments of every backend.
//!
//! - [`fixture`]: [`Fixture`], through which every test gets unique names, a private
//!   directory and child processes, and which kills and removes them all on drop.
//! - [`records`]: the self-checking record stream that the `ring-peer` binary produces
//!   and consumes, so a consumer in another process can prove nothing was lost,
//!   duplicated, reordered or torn.
//! - [`progress`]: how a peer tells a test how far it got, so the test can kill it at a
//!   chosen point and bound what it had done.
//! - [`ledger`]: the test's own record of what was published and what arrived, from
//!   which every lost and duplicated figure is counted.
//! - [`nats_server`]: a real `nats-server` for the bridge tests.
//! - [`reliability`]: the `RELIABILITY` line of the reliability tests.
//! - [`skip`]: how a test that cannot run here says so visibly (and fails in CI).
//! - [`torture`]: the kill -9 torture of every daemon of a ring, shared by the ring kinds.
//! - [`forked`]: forking children in tests without the harness.
//! - [`peer`]: what the `mpsc-peer`, `broadcast-peer` and `mpmc-peer` binaries share.
//!
//! The tests themselves are in `tests/`; the peer is `src/bin/ring-peer.rs`, which they
//! find as `env!("CARGO_BIN_EXE_ring-peer")`.

pub mod daemons;
pub mod fixture;
pub mod forked;
pub mod ledger;
pub mod nats_server;
pub mod peer;
pub mod progress;
pub mod records;
pub mod reliability;
pub mod skip;
pub mod stream;
pub mod torture;

pub use fixture::{
    Backend, Finished, Fixture, ObjectStat, Proc, ProcStat, Summary, location_args, os_stat, seed, wait_until,
};
pub use progress::Progress;

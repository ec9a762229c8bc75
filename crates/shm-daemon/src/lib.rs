//! What `producerd` and `consumerd` share: config loading with errors that name the key
//! and line, the `[segment]`, `[log]` and `[metrics]` sections, sd_notify, signal
//! handling, the Prometheus endpoint, the generator's record format, and exit codes.
//!
//! The ring itself never runs on the async runtime: each daemon moves records on one
//! dedicated thread and uses tokio only for signals, timers and the metrics endpoint.

pub mod config;
pub mod exit;
pub mod launch;
pub mod logging;
pub mod metrics;
pub mod nats;
pub mod notify;
pub mod record;
pub mod segment;
pub mod service;
pub mod signals;
pub mod test_hooks;
#[cfg(feature = "testing")]
pub mod testing;

//! tracing setup: human or JSON lines on stderr, level from config or `RUST_LOG`, and
//! a handle to change the level on reload.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::LogSettings;

/// Changes the log level of a running daemon.
pub struct LogHandle {
    handle: reload::Handle<EnvFilter, Registry>,
    from_env: bool,
}

/// Installs the global subscriber. `RUST_LOG`, when set, wins over the config.
pub fn init(settings: &LogSettings) -> LogHandle {
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let filter = if from_env { EnvFilter::from_default_env() } else { EnvFilter::new(&settings.level) };
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    // Colour only on a terminal: the journal and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(ansi);
    if settings.json {
        registry.with(fmt.json()).init();
    } else {
        registry.with(fmt).init();
    }
    LogHandle { handle, from_env }
}

impl LogHandle {
    /// Applies a reloaded `[log]` level (unless `RUST_LOG` set it).
    pub fn set_level(&self, level: &str) {
        if !self.from_env {
            let _ = self.handle.modify(|f| *f = EnvFilter::new(level));
        }
    }
}

//! SIGTERM/SIGINT (stop) and SIGHUP (reload), delivered to the async runtime.
//!
//! signal-hook's iterator runs on its own thread and forwards each signal into a tokio
//! channel, so handlers never run arbitrary code in signal context.

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokio::sync::mpsc;

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// SIGTERM or SIGINT: stop gracefully.
    Stop,
    /// SIGHUP: reload what can change live.
    Reload,
}

/// Starts listening; the receiver yields one request per signal.
pub fn listen() -> std::io::Result<mpsc::UnboundedReceiver<Request>> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for signal in signals.forever() {
            let request = if signal == SIGHUP { Request::Reload } else { Request::Stop };
            if tx.send(request).is_err() {
                break;
            }
        }
    })?;
    Ok(rx)
}

//! The sd_notify protocol: datagrams to `$NOTIFY_SOCKET`, a no-op without it.
//! See [sd_notify(3)](https://man7.org/linux/man-pages/man3/sd_notify.3.html).

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends readiness, status, watchdog and stopping notifications to the service manager.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// Connects to `$NOTIFY_SOCKET` if set (a path, or `@name` for the abstract namespace).
    pub fn from_env() -> Self {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let addr = if let Some(name) = path.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes()).ok()?
            } else {
                SocketAddr::from_pathname(&path).ok()?
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        Notifier { target }
    }

    /// Whether a service manager is listening.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one notification (newline-separated `KEY=value` lines); errors are ignored,
    /// as the protocol prescribes.
    pub fn send(&self, message: &str) {
        if let Some((sock, addr)) = &self.target {
            let _ = sock.send_to_addr(message.as_bytes(), addr);
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}\nMAINPID={}", std::process::id()));
    }

    /// `STATUS=...`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` (`CLOCK_MONOTONIC` now, which systemd 253+
    /// requires to tell this reload from an older one); the caller sends `READY=1` when done.
    pub fn reloading(&self) {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map_or(0, |t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000);
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={now}"));
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

/// Half the watchdog period systemd asked for (`$WATCHDOG_USEC`, for this pid when
/// `$WATCHDOG_PID` is set), or `None` when no watchdog is configured.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

//! A real `nats-server` (the Debian package `nats-server`, which `.ci/run` installs) for
//! the bridge tests: JetStream on, a free loopback port, its store in the fixture's
//! directory, killed with the fixture.
//!
//! A missing `nats-server` fails the test with a message saying to install it: CI
//! installs it, so nothing is skipped silently.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::daemons::free_tcp_port;
use crate::fixture::{Fixture, Proc, wait_until};

/// Where Debian installs the server, and the name on `PATH` otherwise.
const CANDIDATES: [&str; 2] = ["/usr/sbin/nats-server", "/usr/bin/nats-server"];

/// The `nats-server` binary; panics (failing the test) when it is not installed.
#[track_caller]
pub fn binary() -> PathBuf {
    if let Some(found) = CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file()) {
        return found;
    }
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("nats-server")).find(|p| p.is_file()));
    on_path.unwrap_or_else(|| {
        panic!("nats-server is not installed: `apt-get install nats-server` (CI's .ci/run installs it); the bridge tests need a real server")
    })
}

/// One JetStream server on `127.0.0.1:port`.
pub struct NatsServer {
    /// Its client port.
    pub port: u16,
    store: PathBuf,
    proc: Option<Proc>,
}

impl NatsServer {
    /// Starts a server with JetStream, its store in the fixture's directory, and waits
    /// until it accepts connections.
    #[track_caller]
    pub fn start(fx: &Fixture) -> NatsServer {
        let mut server = NatsServer { port: free_tcp_port(), store: fx.path("nats-store"), proc: None };
        server.restart(fx);
        server
    }

    /// The URL the daemons' `[nats] servers` list takes.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it (again, on the same port and store).
    #[track_caller]
    pub fn restart(&mut self, fx: &Fixture) {
        let proc = fx.spawn(
            "nats-server",
            Command::new(binary())
                .args(["--jetstream", "--addr", "127.0.0.1", "--port", &self.port.to_string(), "--store_dir"])
                .arg(&self.store),
        );
        let port = self.port;
        wait_until(Duration::from_secs(10), "nats-server accepts connections", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        self.proc = Some(proc);
    }

    /// Kills it with SIGKILL.
    pub fn kill(&mut self, fx: &Fixture) {
        if let Some(proc) = self.proc.take() {
            fx.kill(&proc);
        }
    }
}

//! Running the real daemons, `producerd` and `consumerd`, from a test.
//!
//! [`Daemon::launch`] writes a config into the fixture's directory and spawns the daemon
//! through the [`Fixture`] (so `Drop` kills it), always with an explicit `--config`, its
//! own sd_notify socket (`NOTIFY_SOCKET`, a Unix datagram socket the test binds), logs
//! without colours, and nothing inherited that changes its behaviour (`RUST_LOG`,
//! `WATCHDOG_*`). The test then waits on what the daemon tells the service manager
//! ([`Daemon::wait_for`]: `READY=1`, `RELOADING=1`, `STOPPING=1`, ...) or logs
//! ([`Daemon::wait_log`]) rather than on time.
//!
//! The rest are the small tools the daemon tests share: config sections naming a
//! fixture location, a read-only view of the ring, the consumer's summary file, the
//! generator's record format (decoded here independently of `shm-daemon`, as a second
//! implementation to check it against), the file sink's binary framing, FIFOs for a
//! daemon's standard input, free ports, and a plain HTTP GET.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use openmetrics_parser::{MetricFamily, MetricsExposition, OpenMetricsType, OpenMetricsValue};
use shm_core::{Location, Segment, StatsSnapshot};

use crate::fixture::{self, Finished, Fixture, Proc, location_args};

/// How long a daemon may take to start, stop, or reach any point a test waits for.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Which daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `producerd`: a source into the ring.
    Producer,
    /// `consumerd`: the ring into a sink.
    Consumer,
}

impl Kind {
    /// The binary's name.
    pub fn binary(self) -> &'static str {
        match self {
            Kind::Producer => "producerd",
            Kind::Consumer => "consumerd",
        }
    }
}

/// How to start a daemon: built by [`Daemon::launch`], started by [`Launch::start`].
#[derive(Debug, Clone)]
pub struct Launch {
    kind: Kind,
    config: PathBuf,
    env: Vec<(String, String)>,
    stdin: Option<PathBuf>,
    nofile: Option<u32>,
    before_exec: Option<String>,
}

impl Launch {
    /// Starts the daemon with at most `limit` open files (`RLIMIT_NOFILE`, soft and hard).
    pub fn nofile(mut self, limit: u32) -> Self {
        self.nofile = Some(limit);
        self
    }

    /// Sets an environment variable for the daemon.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Runs `script` in the shell that then `exec`s the daemon, so `$$` there is the
    /// daemon's pid (to leave a file named after it, as an earlier process would have).
    pub fn before_exec(mut self, script: &str) -> Self {
        self.before_exec = Some(script.to_owned());
        self
    }

    /// Reads the daemon's standard input from `path` (a FIFO the test writes, see
    /// [`fifo`]) instead of `/dev/null`.
    pub fn stdin_from(mut self, path: &Path) -> Self {
        self.stdin = Some(path.to_owned());
        self
    }

    /// Which daemon it starts.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The config file the daemon reads.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Runs the daemon with `--check-config` on this config and waits for it to finish.
    #[track_caller]
    pub fn check_config(&self, fx: &Fixture) -> Finished {
        let check = fx.spawn(
            "check-config",
            Command::new(fixture::binary(self.kind.binary())).arg("--check-config").arg("--config").arg(&self.config),
        );
        fx.wait(&check, PATIENCE)
    }

    /// Spawns the daemon; does not wait for it to be ready.
    #[track_caller]
    pub fn start(&self, fx: &Fixture) -> Daemon {
        let notify = Notifications::bind(fx);
        let binary = fixture::binary(self.kind.binary());
        let summary = (self.kind == Kind::Consumer).then(|| fx.path("summary.json"));
        let mut cmd = if self.stdin.is_some() || self.nofile.is_some() || self.before_exec.is_some() {
            // The fixture gives every child `/dev/null` as stdin; `exec` keeps the pid, so
            // signals and the exit status are the daemon's own.
            let mut prefix = self.nofile.map(|n| format!("ulimit -n {n}; ")).unwrap_or_default();
            if let Some(script) = &self.before_exec {
                prefix = format!("{script}; {prefix}");
            }
            let stdin = if self.stdin.is_some() { " <\"$SHMRING_TEST_STDIN\"" } else { "" };
            let mut sh = Command::new("/bin/sh");
            sh.args(["-c", &format!("{prefix}exec \"$0\" \"$@\"{stdin}")]).arg(&binary);
            if let Some(stdin) = &self.stdin {
                sh.env("SHMRING_TEST_STDIN", stdin);
            }
            sh
        } else {
            Command::new(&binary)
        };
        cmd.arg("--config").arg(&self.config);
        if let Some(s) = &summary {
            cmd.arg("--summary-file").arg(s);
        }
        cmd.current_dir(fx.dir())
            .env("NOTIFY_SOCKET", &notify.path)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let proc = fx.spawn(self.kind.binary(), &mut cmd);
        // The fixture names the file it sends stderr (the log) to after a private counter;
        // the child's fd 2 says which it is, so the test can read the log while it runs.
        // (A child that has exited already has no fds; its `Finished` has the log.)
        let log = fs::read_link(format!("/proc/{}/fd/2", proc.pid())).ok();
        Daemon { launch: self.clone(), proc, summary, log, notify }
    }
}

/// A running (or finished) daemon, its notifications and its log.
#[derive(Debug)]
pub struct Daemon {
    launch: Launch,
    proc: Proc,
    summary: Option<PathBuf>,
    log: Option<PathBuf>,
    notify: Notifications,
}

impl Daemon {
    /// Writes `config` into the fixture's directory, to start a daemon of `kind` with it.
    pub fn launch(fx: &Fixture, kind: Kind, config: &str) -> Launch {
        let path = fx.path(&format!("{}.toml", kind.binary()));
        fs::write(&path, config).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        Launch { kind, config: path, env: Vec::new(), stdin: None, nofile: None, before_exec: None }
    }

    /// Starts a daemon of `kind` with `config` and waits for its `READY=1`.
    #[track_caller]
    pub fn ready(fx: &Fixture, kind: Kind, config: &str) -> Daemon {
        let mut daemon = Daemon::launch(fx, kind, config).start(fx);
        daemon.wait_for(fx, "READY=1");
        daemon
    }

    /// The fixture's handle of the process.
    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The config file it reads (and re-reads on `SIGHUP`).
    pub fn config_path(&self) -> &Path {
        &self.launch.config
    }

    /// Everything it has logged so far (nothing if it exited before the test could find
    /// its log: see [`Daemon::wait`] for that).
    pub fn log(&self) -> String {
        let text = self.log.as_ref().and_then(|path| fs::read(path).ok());
        text.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// Waits until its log contains `needle`, panicking (with the log) if it exits first.
    #[track_caller]
    pub fn wait_log(&self, fx: &Fixture, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.log().contains(needle) {
            fx.assert_running(&self.proc);
            assert!(Instant::now() < deadline, "{} never logged {needle:?}; log:\n{}", self.proc.label(), self.log());
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for a notification datagram with the line `line` (`"READY=1"`), after the
    /// one the previous wait returned; returns the whole datagram. Panics, with the
    /// daemon's output, if it exits without having sent it or after [`PATIENCE`].
    #[track_caller]
    pub fn wait_for(&mut self, fx: &Fixture, line: &str) -> String {
        self.wait_for_match(fx, line, |d| d.lines().any(|l| l == line))
    }

    /// Like [`Daemon::wait_for`], for the first later datagram that satisfies `matches`.
    #[track_caller]
    pub fn wait_for_match(&mut self, fx: &Fixture, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut exited: Option<Instant> = None;
        loop {
            if let Some(found) = self.notify.next_matching(&matches, Duration::from_millis(20)) {
                return found;
            }
            if exited.is_none() && !fx.is_running(&self.proc) {
                exited = Some(Instant::now());
            }
            // What it sent before exiting was queued in the socket: a moment to read it.
            if exited.is_some_and(|t| t.elapsed() > Duration::from_millis(200)) {
                let f = fx.kill(&self.proc);
                panic!(
                    "{} exited ({}) without notifying {what}; notifications: {:?}\nstdout:\n{}\nstderr:\n{}",
                    f.label,
                    f.status,
                    self.notify.texts(),
                    f.stdout,
                    f.stderr
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not notify {what} within {PATIENCE:?}; notifications: {:?}\nlog:\n{}",
                    self.proc.label(),
                    self.notify.texts(),
                    self.log()
                );
            }
        }
    }

    /// Every notification received so far, with when it arrived.
    pub fn notifications(&self) -> Vec<(Instant, String)> {
        self.notify.inbox.seen().clone()
    }

    /// Whether it has sent `READY=1` yet.
    pub fn has_been_ready(&self) -> bool {
        self.notifications().iter().any(|(_, d)| d.lines().any(|l| l == "READY=1"))
    }

    /// Sends `signal`; panics, with its output, if it is not running any more.
    #[track_caller]
    pub fn signal(&self, fx: &Fixture, signal: Signal) {
        // Not reaped while it runs (the fixture holds it), so the pid is still ours.
        fx.assert_running(&self.proc);
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).expect("pids fit in i32"));
        nix::sys::signal::kill(pid, signal).unwrap_or_else(|e| panic!("kill -{signal} {}: {e}", self.pid()));
    }

    /// `SIGTERM`, then waits for it to exit.
    #[track_caller]
    pub fn stop(&self, fx: &Fixture) -> Finished {
        self.signal(fx, Signal::SIGTERM);
        self.wait(fx)
    }

    /// Waits for it to exit (by itself).
    #[track_caller]
    pub fn wait(&self, fx: &Fixture) -> Finished {
        fx.wait(&self.proc, PATIENCE)
    }

    /// `SIGKILL`s it, which must still have been running (else the test proved nothing).
    #[track_caller]
    pub fn kill(&self, fx: &Fixture) -> Finished {
        fx.assert_running(&self.proc);
        let killed = fx.kill(&self.proc);
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&killed.status), Some(9), "{killed:?}");
        killed
    }

    /// The consumer's summary (`--summary-file`), written when it exited.
    #[track_caller]
    pub fn summary(&self) -> Report {
        let path = self.summary.as_ref().unwrap_or_else(|| panic!("{} has no summary file", self.proc.label()));
        let text = fs::read_to_string(path).unwrap_or_else(|e| {
            panic!("{}: no summary at {}: {e}\nlog:\n{}", self.proc.label(), path.display(), self.log())
        });
        Report(serde_json::from_str(&text).unwrap_or_else(|e| panic!("summary {text:?}: {e}")))
    }
}

/// The datagrams a daemon sends to `NOTIFY_SOCKET`, received as they come by a thread
/// of their own (so a daemon never waits on a full socket queue, and each datagram's
/// arrival time is its sending time), and how far the test has looked at them.
#[derive(Debug)]
struct Notifications {
    path: PathBuf,
    inbox: Arc<Inbox>,
    looked: usize,
    reader: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Inbox {
    seen: Mutex<Vec<(Instant, String)>>,
    arrived: Condvar,
    closed: AtomicBool,
}

impl Inbox {
    fn seen(&self) -> MutexGuard<'_, Vec<(Instant, String)>> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Notifications {
    fn bind(fx: &Fixture) -> Self {
        let path = fx.path("notify");
        // sun_path holds 108 bytes; the fixture's directory name grows with the test's.
        assert!(path.as_os_str().len() < 100, "{} is too long for a socket: shorten the fixture name", path.display());
        let socket = UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        // The timeout lets the reader notice `closed`.
        socket.set_read_timeout(Some(Duration::from_millis(50))).expect("a non-zero timeout");
        let inbox = Arc::new(Inbox::default());
        let reader = {
            let inbox = inbox.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !inbox.closed.load(Ordering::Relaxed) {
                    match socket.recv(&mut buf) {
                        Ok(n) => {
                            inbox.seen().push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
                            inbox.arrived.notify_all();
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                            ) => {}
                        Err(e) => panic!("receiving notifications: {e}"),
                    }
                }
            })
        };
        Notifications { path, inbox, looked: 0, reader: Some(reader) }
    }

    /// The first datagram not looked at yet that `matches`, waiting at most `timeout` for
    /// more to arrive; marks it and those before it as looked at.
    fn next_matching(&mut self, matches: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        let mut seen = self.inbox.seen();
        let found = |seen: &[(Instant, String)], looked: usize| seen[looked..].iter().position(|(_, d)| matches(d));
        if found(&seen, self.looked).is_none() {
            seen = self.inbox.arrived.wait_timeout(seen, timeout).unwrap_or_else(PoisonError::into_inner).0;
        }
        let i = found(&seen, self.looked)?;
        self.looked += i + 1;
        Some(seen[self.looked - 1].1.clone())
    }

    fn texts(&self) -> Vec<String> {
        self.inbox.seen().iter().map(|(_, d)| d.clone()).collect()
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        self.inbox.closed.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// A consumer's summary (JSON).
#[derive(Debug, Clone)]
pub struct Report(pub serde_json::Value);

impl Report {
    /// The number at `key`; panics if it is missing or not a number.
    #[track_caller]
    pub fn u64(&self, key: &str) -> u64 {
        self.0
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_else(|| panic!("summary has no number {key}: {}", self.0))
    }

    /// Panics unless the verify sink saw nothing lost, duplicated, reordered or corrupt,
    /// and exactly `records` records.
    #[track_caller]
    pub fn assert_verified(&self, records: u64) {
        for key in ["lost", "duplicated", "reordered", "corrupt"] {
            assert_eq!(self.u64(key), 0, "{key} in {}", self.0);
        }
        assert_eq!(self.u64("received"), records, "received in {}", self.0);
    }
}

/// A TOML basic string holding `text`.
pub fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A producer config: a generator at `rate` records per second (`0`: as fast as the ring
/// takes them) on a 256 KiB ring at `location`.
pub fn generator(location: &Location, rate: u64) -> String {
    format!("{}[source]\nkind = \"generator\"\nrate = {rate}\n", segment_section(location, &["capacity = \"256KiB\""]))
}

/// The `[sink]` lines of a file sink into `path`, binary format (generator records may
/// hold any byte).
pub fn binary_file_sink(path: &Path) -> String {
    format!("kind = \"file\"\nformat = \"binary\"\npath = {}", toml_string(&path.display().to_string()))
}

/// A `[segment]` section naming `location`, followed by the `extra` lines
/// (`"capacity = \"256KiB\""`).
pub fn segment_section(location: &Location, extra: &[&str]) -> String {
    let [backend, name] = location_args(location);
    let mut out = format!("[segment]\nname = {}\nbackend = {}\n", toml_string(&name), toml_string(&backend));
    for line in extra {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A read-only view of the segment at `location`: it attaches as nobody, so the daemons
/// run as if it were not there.
#[track_caller]
pub fn observe(location: &Location) -> Segment {
    Segment::builder(location.clone())
        .read_only()
        .expected_owner(None)
        .open()
        .unwrap_or_else(|e| panic!("open {location} read-only: {e}"))
}

/// Waits until the segment at `location` exists, then returns a read-only view of it.
#[track_caller]
pub fn observe_when_created(location: &Location) -> Segment {
    let mut segment = None;
    fixture::wait_until(PATIENCE, &format!("{location} exists"), || {
        segment = Segment::builder(location.clone()).read_only().expected_owner(None).open().ok();
        segment.is_some()
    });
    segment.expect("opened above")
}

/// Waits until the consumer has released everything the producer published.
#[track_caller]
pub fn wait_drained(segment: &Segment) -> StatsSnapshot {
    let mut stats = segment.stats();
    fixture::wait_until(PATIENCE, "the ring is drained", || {
        stats = segment.stats();
        // The consumed counters are stored just after the read cursor: wait for both.
        stats.read_cursor == stats.write_cursor && stats.total_consumed == stats.total_produced
    });
    stats
}

/// Waits until the producer has published at least `records` records in all.
#[track_caller]
pub fn wait_produced(segment: &Segment, records: u64) -> StatsSnapshot {
    let mut stats = segment.stats();
    fixture::wait_until(PATIENCE, &format!("{records} records are produced"), || {
        stats = segment.stats();
        stats.total_produced >= records
    });
    stats
}

/// Waits until `segment` counts at least `records` records consumed; returns its stats.
#[track_caller]
pub fn wait_consumed(segment: &Segment, records: u64) -> StatsSnapshot {
    let mut stats = segment.stats();
    fixture::wait_until(PATIENCE, &format!("{records} records are consumed"), || {
        stats = segment.stats();
        stats.total_consumed >= records
    });
    stats
}

/// FNV-1a, 64-bit, as the generator's record format specifies it.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The sequence number of a generator record (u64 LE sequence, u64 LE send time,
/// payload, u64 LE FNV-1a of everything before it); `None` if it is too short or its
/// checksum does not match.
pub fn generator_seq(record: &[u8]) -> Option<u64> {
    let n = record.len();
    if n < 24 {
        return None;
    }
    let word = |at: usize| u64::from_le_bytes(record[at..at + 8].try_into().expect("8 bytes"));
    (fnv1a(&record[..n - 8]) == word(n - 8)).then(|| word(0))
}

/// A generator record of `len` bytes (at least 24) with sequence number `seq`, for a test
/// that publishes the stream itself: the send time is 0, the payload zeros.
pub fn generator_record(seq: u64, len: usize) -> Vec<u8> {
    assert!(len >= 24, "a generator record has at least 24 bytes");
    let mut out = vec![0u8; len];
    out[..8].copy_from_slice(&seq.to_le_bytes());
    let sum = fnv1a(&out[..len - 8]);
    out[len - 8..].copy_from_slice(&sum.to_le_bytes());
    out
}

/// Frames `records` as the `binary` format does (u32 LE length, then the bytes).
pub fn binary_frames<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(&u32::try_from(r.len()).expect("records are small").to_le_bytes());
        out.extend_from_slice(r);
    }
    out
}

/// Splits a `binary` file into its records; panics if it ends inside one.
#[track_caller]
pub fn split_binary(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        assert!(rest.len() >= 4, "the file ends inside a length prefix, after {} records", out.len());
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        assert!(
            rest.len() >= 4 + len,
            "record {} claims {len} bytes, {} remain: a torn record, or the file ends inside one",
            out.len(),
            rest.len() - 4
        );
        out.push(&rest[4..4 + len]);
        rest = &rest[4 + len..];
    }
    out
}

/// Panics unless the binary file at `path` holds generator records `0..records`, each
/// exactly once, in order, none corrupt.
#[track_caller]
pub fn assert_generator_file(path: &Path, records: u64) {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_generator_stream(&bytes, &path.display().to_string(), records);
}

/// Panics unless `bytes` (the `binary` format, `what` in messages) hold generator records
/// `0..records`, each exactly once, in order, none corrupt.
#[track_caller]
pub fn assert_generator_stream(bytes: &[u8], what: &str, records: u64) {
    let frames = split_binary(bytes);
    for (i, frame) in frames.iter().enumerate() {
        let seq =
            generator_seq(frame).unwrap_or_else(|| panic!("record {i} of {what} is corrupt ({} bytes)", frame.len()));
        if seq != i as u64 {
            let earlier = frames[..i].iter().any(|f| generator_seq(f) == Some(seq));
            let how = if earlier {
                "a duplicate"
            } else if seq > i as u64 {
                "after a gap"
            } else {
                "out of order"
            };
            panic!(
                "record {i} of {what} has sequence number {seq}: {how} ({} records, {records} expected)",
                frames.len()
            );
        }
    }
    assert_eq!(frames.len() as u64, records, "{what} holds {} records", frames.len());
}

/// A new FIFO in the fixture's directory, for a daemon's standard input.
pub fn fifo(fx: &Fixture, stem: &str) -> PathBuf {
    let path = fx.path(stem);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
    path
}

/// Opens the FIFO at `path` for writing once its reader (the daemon) has opened it,
/// without ever blocking on a reader that never comes.
#[track_caller]
pub fn open_fifo_writer(path: &Path) -> fs::File {
    let deadline = Instant::now() + PATIENCE;
    loop {
        // O_NONBLOCK: ENXIO instead of waiting while nobody reads.
        match fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(path) {
            Ok(file) => {
                nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()))
                    .expect("make the FIFO blocking");
                return file;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("open {} for writing: {e}", path.display()),
        }
    }
}

/// A local TCP port nobody listens on right now.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind an ephemeral port").port()
}

/// A local UDP port nobody is bound to right now.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("bind an ephemeral port").port()
}

/// Whether some socket is bound to UDP `127.0.0.1:port` (from `/proc/net/udp`).
pub fn udp_port_bound(port: u16) -> bool {
    let table = fs::read_to_string("/proc/net/udp").unwrap_or_default();
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).any(|l| l.split_whitespace().nth(1) == Some(local.as_str()))
}

/// `GET path` over HTTP/1.0; the whole response, head and body.
#[track_caller]
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, PATIENCE).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(PATIENCE)).expect("a non-zero timeout");
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).expect("send the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap_or_else(|e| panic!("read the response from {addr}: {e}"));
    response
}

/// One scrape of a metrics endpoint, parsed as OpenMetrics text (by `openmetrics-parser`,
/// which checks `HELP`/`TYPE`/`UNIT` lines, suffixes, label sets and the closing `# EOF`).
pub struct Scrape {
    /// The response's status line and headers.
    pub head: String,
    /// The parsed body.
    pub exposition: MetricsExposition<OpenMetricsType, OpenMetricsValue>,
    /// The body as served, for failure messages.
    pub text: String,
}

impl Scrape {
    /// `GET /metrics` on `addr`, parsed; panics with the text if it does not parse.
    #[track_caller]
    pub fn get(addr: SocketAddr) -> Scrape {
        let response = http_get(addr, "/metrics");
        let (head, text) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of head in {response}"));
        let exposition = openmetrics_parser::openmetrics::parse_openmetrics(text)
            .unwrap_or_else(|e| panic!("the exposition does not parse ({e:?}):\n{text}"));
        Scrape { head: head.to_owned(), exposition, text: text.to_owned() }
    }

    /// The family `name` (as in its `TYPE` line: without `_total`).
    #[track_caller]
    pub fn family(&self, name: &str) -> &MetricFamily<OpenMetricsType, OpenMetricsValue> {
        self.exposition.families.get(name).unwrap_or_else(|| panic!("no family {name} in\n{}", self.text))
    }

    /// The one sample of family `name`, and its labels sorted by name.
    #[track_caller]
    pub fn sample(&self, name: &str) -> (&OpenMetricsValue, Vec<(String, String)>) {
        let family = self.family(name);
        let samples: Vec<_> = family.iter_samples().collect();
        assert_eq!(samples.len(), 1, "family {name} has {} samples:\n{}", samples.len(), self.text);
        let labels = samples[0].get_labelset().expect("a label set");
        let mut labels: Vec<_> = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        labels.sort();
        (&samples[0].value, labels)
    }

    /// The value of the counter or gauge family `name` (one sample).
    #[track_caller]
    pub fn value(&self, name: &str) -> f64 {
        match self.sample(name).0 {
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            OpenMetricsValue::Gauge(g) => g.as_f64(),
            other => panic!("{name} is neither a counter nor a gauge: {other:?}"),
        }
    }
}

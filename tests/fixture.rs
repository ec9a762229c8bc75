//! [`Fixture`]: the one place a test gets names, paths and processes from, and the one
//! place they are cleaned up.
//!
//! Every name is unique to the test and the process (`/shmring-t-<test>-<pid>-<n>`, a
//! SysV key nobody holds, a path in a private `0700` directory), so tests run in parallel
//! with each other and with other test binaries. Everything handed out or spawned is
//! recorded, and `Drop` kills the children (`SIGKILL`), reaps them, and removes every
//! segment and path, whether the test passed or panicked.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use shm_core::{Location, RingKind, Segment, SegmentName, SysvKey, UnlinkError, WaitStrategy};

/// Where a segment lives, without its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `shm_open` in `/dev/shm`.
    Posix,
    /// `shmget` with a key.
    Sysv,
    /// A regular file.
    File,
    /// A memfd shared with forked children.
    Anon,
}

impl Backend {
    /// The backends that other processes can open by name.
    pub const NAMED: [Backend; 3] = [Backend::Posix, Backend::Sysv, Backend::File];

    /// Its name as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Posix => "posix",
            Backend::Sysv => "sysv",
            Backend::File => "file",
            Backend::Anon => "anon",
        }
    }
}

/// Counts names across every fixture of the process, so no two collide.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Names, paths and child processes of one test; removes and kills them all on drop.
#[derive(Debug)]
pub struct Fixture {
    test: String,
    dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    segments: Vec<Location>,
    paths: Vec<PathBuf>,
    children: Vec<Tracked>,
}

#[derive(Debug)]
struct Tracked {
    label: String,
    handle: Handle,
    stdout: Option<PathBuf>,
    stderr: Option<PathBuf>,
    status: Option<ExitStatus>,
}

#[derive(Debug)]
enum Handle {
    Spawned(Child),
    Forked(libc::pid_t),
}

/// A child process of a fixture.
#[derive(Debug, Clone)]
pub struct Proc {
    index: usize,
    pid: u32,
    label: String,
}

impl Proc {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The label it was spawned with.
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// How a child ended, and what it printed.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The label it was spawned with.
    pub label: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout (empty for forked children).
    pub stdout: String,
    /// Everything it wrote to stderr (empty for forked children).
    pub stderr: String,
}

impl Finished {
    /// Panics, showing its output, unless it exited with status 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        self.assert_code(0)
    }

    /// Panics, showing its output, unless it exited with `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "{} exited with {}, expected code {code}\nstdout:\n{}\nstderr:\n{}",
            self.label,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// The `key=value` pairs of the last line of stdout.
    #[track_caller]
    pub fn summary(&self) -> Summary {
        let line = self.stdout.lines().last().unwrap_or_else(|| panic!("{} printed nothing", self.label));
        Summary::parse(line)
    }
}

/// A one-line `key=value key=value` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary(HashMap<String, String>);

impl Summary {
    /// Parses the pairs of `line`; words without `=` are ignored.
    pub fn parse(line: &str) -> Self {
        Summary(
            line.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The value of `key` as a number; panics if it is missing or not one.
    #[track_caller]
    pub fn u64(&self, key: &str) -> u64 {
        let v = self.get(key).unwrap_or_else(|| panic!("summary has no {key}: {self:?}"));
        v.parse().unwrap_or_else(|_| panic!("summary {key}={v} is not a number"))
    }
}

impl Fixture {
    /// A fixture for the test `test` (used in names, so keep it short), with a new
    /// private directory.
    pub fn new(test: &str) -> Self {
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(sweep_leftovers);
        let test: String = test
            .chars()
            .take(64)
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' })
            .collect();
        let dir = std::env::temp_dir().join(format!("shmring-t-{test}-{}-{}", std::process::id(), next()));
        fs::DirBuilder::new().mode(0o700).create(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        // The umask may have taken bits away; file segments want exactly "only us".
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod the fixture directory");
        Fixture { test, dir, state: Mutex::default() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The private directory (mode `0700`, removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A path in the private directory, unique to this call.
    pub fn path(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}-{}", next()))
    }

    /// A new, unused location of `backend`, removed on drop.
    pub fn location(&self, backend: Backend) -> Location {
        let location = match backend {
            Backend::Posix => Location::Posix(self.posix_name()),
            Backend::Sysv => Location::Sysv(free_sysv_key()),
            Backend::File => Location::File(self.path("segment")),
            Backend::Anon => Location::Anon,
        };
        self.track_segment(location.clone());
        location
    }

    /// Creates a `kind` ring of `capacity` bytes (hybrid waits) on a new posix segment,
    /// removed on drop; returns it and its name, for a peer's command line.
    pub fn create_posix_ring(&self, kind: RingKind, capacity: u64) -> (Segment, String) {
        let name = self.posix_name();
        let location = Location::Posix(name.clone());
        self.track_segment(location.clone());
        let segment = Segment::builder(location)
            .kind(kind)
            .capacity(capacity)
            .wait_strategy(WaitStrategy::Hybrid)
            .create()
            .unwrap_or_else(|e| panic!("create {kind:?} ring {name}: {e}"));
        (segment, name.to_string())
    }

    /// Spawns `mpsc-peer produce` (the binary at `peer`) as producer `id` of the ring
    /// `name`, publishing records `0..total`; `hang` is its `--hang-at SEQ --go PATH`.
    pub fn spawn_mpsc_producer(
        &self,
        peer: &str,
        name: &str,
        id: usize,
        total: u64,
        hang: Option<(u64, &Path)>,
    ) -> Proc {
        let mut cmd = Command::new(peer);
        cmd.args(["produce", name, "--id", &id.to_string(), "--total", &total.to_string()]);
        if let Some((seq, go)) = hang {
            cmd.args(["--hang-at", &seq.to_string(), "--go"]).arg(go);
        }
        self.spawn(&format!("producer-{id}"), &mut cmd)
    }

    /// A new POSIX name (`/shmring-t-<test>-<pid>-<n>`), not recorded: for tests that put
    /// something other than a segment there (then [`Fixture::track_path`] its file).
    pub fn posix_name(&self) -> SegmentName {
        SegmentName::new(&format!("/shmring-t-{}-{}-{}", self.test, std::process::id(), next()))
            .expect("fixture names are valid")
    }

    /// Removes the segment at `location` on drop.
    pub fn track_segment(&self, location: Location) {
        self.state().segments.push(location);
    }

    /// Removes `path` (a file, symlink, FIFO or directory tree) on drop.
    pub fn track_path(&self, path: PathBuf) {
        self.state().paths.push(path);
    }

    /// Spawns `cmd` with stdin closed and stdout and stderr going to files in the private
    /// directory (so a chatty child never blocks on a full pipe). Killed on drop.
    #[track_caller]
    pub fn spawn(&self, label: &str, cmd: &mut Command) -> Proc {
        let n = next();
        let stdout = self.dir.join(format!("{label}-{n}.stdout"));
        let stderr = self.dir.join(format!("{label}-{n}.stderr"));
        let create = |p: &Path| fs::File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        cmd.stdin(Stdio::null()).stdout(create(&stdout)).stderr(create(&stderr));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {label} ({cmd:?}): {e}"));
        let pid = child.id();
        self.track(label, Handle::Spawned(child), Some(stdout), Some(stderr), pid)
    }

    /// Takes charge of a child this process forked: waited for, and killed on drop.
    pub fn adopt(&self, label: &str, pid: libc::pid_t) -> Proc {
        let raw = u32::try_from(pid).expect("a child's pid is positive");
        self.track(label, Handle::Forked(pid), None, None, raw)
    }

    fn track(&self, label: &str, handle: Handle, stdout: Option<PathBuf>, stderr: Option<PathBuf>, pid: u32) -> Proc {
        let mut state = self.state();
        state.children.push(Tracked { label: label.to_owned(), handle, stdout, stderr, status: None });
        Proc { index: state.children.len() - 1, pid, label: label.to_owned() }
    }

    /// Whether `proc` has not exited yet (reaps it if it has).
    pub fn is_running(&self, proc: &Proc) -> bool {
        self.state().children[proc.index].poll().is_none()
    }

    /// Panics, showing its output, if `proc` has exited (for waits on a peer that must
    /// outlive them).
    #[track_caller]
    pub fn assert_running(&self, proc: &Proc) {
        let status = self.state().children[proc.index].poll();
        if let Some(status) = status {
            let f = self.finished(proc, status);
            panic!("{} exited early with {}\nstdout:\n{}\nstderr:\n{}", f.label, f.status, f.stdout, f.stderr);
        }
    }

    /// What `proc` has written to stdout so far.
    pub fn stdout_so_far(&self, proc: &Proc) -> String {
        self.state().children[proc.index].stdout.as_deref().map(read_lossy).unwrap_or_default()
    }

    /// Waits for `proc` to exit; kills it and panics if it has not within `timeout`.
    #[track_caller]
    pub fn wait(&self, proc: &Proc, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.state().children[proc.index].poll();
            if let Some(status) = status {
                return self.finished(proc, status);
            }
            if Instant::now() >= deadline {
                let f = self.kill(proc);
                panic!(
                    "{} did not exit within {timeout:?}; killed\nstdout:\n{}\nstderr:\n{}",
                    proc.label, f.stdout, f.stderr
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits for every one of `procs` to exit successfully. As soon as one fails, kills
    /// the others and panics with its output (a failed peer leaves the others waiting for
    /// it, so waiting for them first would only show their timeout).
    #[track_caller]
    pub fn wait_all(&self, procs: &[&Proc], timeout: Duration) -> Vec<Finished> {
        let deadline = Instant::now() + timeout;
        let mut finished: Vec<Option<Finished>> = vec![None; procs.len()];
        while finished.iter().any(Option::is_none) {
            for (proc, slot) in procs.iter().zip(&mut finished) {
                let status = if slot.is_none() { self.state().children[proc.index].poll() } else { None };
                if let Some(status) = status {
                    let f = self.finished(proc, status);
                    if !status.success() {
                        for other in procs {
                            self.kill(other);
                        }
                        f.assert_success();
                    }
                    *slot = Some(f);
                }
            }
            if Instant::now() >= deadline {
                let running: Vec<_> = procs.iter().filter(|p| self.is_running(p)).map(|p| self.kill(p)).collect();
                panic!("still running after {timeout:?}, killed: {running:#?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        finished.into_iter().flatten().collect()
    }

    /// Kills `proc` with `SIGKILL` (if it still runs) and reaps it.
    pub fn kill(&self, proc: &Proc) -> Finished {
        let status = self.state().children[proc.index].kill_and_reap();
        self.finished(proc, status)
    }

    fn finished(&self, proc: &Proc, status: ExitStatus) -> Finished {
        let state = self.state();
        let t = &state.children[proc.index];
        Finished {
            label: t.label.clone(),
            status,
            stdout: t.stdout.as_deref().map(read_lossy).unwrap_or_default(),
            stderr: t.stderr.as_deref().map(read_lossy).unwrap_or_default(),
        }
    }
}

impl Tracked {
    /// The exit status, if it has exited (reaping it then).
    fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = match &mut self.handle {
                Handle::Spawned(child) => child.try_wait().unwrap_or_else(|e| panic!("wait for {}: {e}", self.label)),
                Handle::Forked(pid) => waitpid(*pid, libc::WNOHANG),
            };
        }
        self.status
    }

    fn kill_and_reap(&mut self) -> ExitStatus {
        if let Some(status) = self.poll() {
            return status;
        }
        let status = match &mut self.handle {
            Handle::Spawned(child) => {
                let _ = child.kill();
                child.wait().unwrap_or_else(|e| panic!("reap {}: {e}", self.label))
            }
            Handle::Forked(pid) => {
                // Not reaped yet (poll above), so the pid is still our child's.
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
                waitpid(*pid, 0).unwrap_or_else(|| panic!("reap {}", self.label))
            }
        };
        self.status = Some(status);
        status
    }
}

/// `waitpid(pid, flags)`: the status once the child has exited, `None` while it runs.
fn waitpid(pid: libc::pid_t, flags: libc::c_int) -> Option<ExitStatus> {
    let mut raw = 0;
    loop {
        // SAFETY: `raw` is a valid, writable int for the kernel to fill.
        let r = unsafe { libc::waitpid(pid, &mut raw, flags) };
        match r {
            0 => return None,
            r if r == pid => return Some(ExitStatus::from_raw(raw)),
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => panic!("waitpid({pid}): {}", io::Error::last_os_error()),
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        // Children first: they may hold the segments open.
        for child in &mut state.children {
            child.kill_and_reap();
        }
        for location in &state.segments {
            match Segment::unlink(location) {
                Ok(()) | Err(UnlinkError::NotFound { .. }) => {}
                Err(e) => eprintln!("fixture {}: cannot remove {location}: {e}", self.test),
            }
            if let Location::Sysv(key) = location {
                remove_quietly(&shm_core::sysv_lock_path(*key));
            }
        }
        for path in state.paths.iter().rev() {
            remove_quietly(path);
        }
        remove_quietly(&self.dir);
    }
}

/// Removes what fixtures of test processes that no longer exist left behind (a test
/// killed by a signal runs no `Drop`): POSIX segments and private directories, whose
/// names carry the pid. SysV keys carry only part of it, so they are left alone.
fn sweep_leftovers() {
    for dir in [Path::new("/dev/shm").to_owned(), std::env::temp_dir()] {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("shmring-t-")) else { continue };
            // `<test>-<pid>-<n>`: the pid is the second field from the end.
            let pid = rest.rsplit('-').nth(1).and_then(|p| p.parse::<i32>().ok());
            if pid.is_some_and(|pid| !process_exists(pid)) {
                remove_quietly(&entry.path());
            }
        }
    }
}

fn process_exists(pid: i32) -> bool {
    // Signal 0 checks existence only; EPERM means it exists but is not ours.
    !matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None), Err(nix::errno::Errno::ESRCH))
}

/// Removes whatever is at `path` (never following a symlink); reports all but "not found".
fn remove_quietly(path: &Path) {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    if let Err(e) = result
        && e.kind() != io::ErrorKind::NotFound
    {
        eprintln!("fixture: cannot remove {}: {e}", path.display());
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

fn next() -> u32 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A SysV key derived from the pid and a counter that neither a segment nor a stale lock
/// file uses.
fn free_sysv_key() -> SysvKey {
    let pid = std::process::id();
    for _ in 0..0x1000 {
        let raw = 0x5300_0000 | ((pid & 0xfff) << 12) | (next() & 0xfff);
        let key = SysvKey::new(raw as i32).expect("never IPC_PRIVATE");
        // SAFETY: plain integer arguments; size 0 and no flags only look the key up.
        let in_use = unsafe { libc::shmget(key.raw(), 0, 0) } != -1;
        if !in_use && fs::symlink_metadata(shm_core::sysv_lock_path(key)).is_err() {
            return key;
        }
    }
    panic!("no free SysV key for pid {pid}");
}

/// The workspace binary `name` (`shmctl`, `producerd`, `consumerd`) of the profile the
/// tests were built with. `cargo test --workspace` builds them: each binary crate has an
/// integration test of its own, which makes cargo build and place the binary.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe.parent().and_then(Path::parent).expect("test binaries live in target/<profile>/deps").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` so that it is built",
        path.display()
    );
    path
}

/// An open handle of `/proc/<pid>/stat`, to watch a process's scheduling state.
#[derive(Debug)]
pub struct ProcStat(fs::File);

impl ProcStat {
    /// Opens `/proc/<pid>/stat`.
    #[track_caller]
    pub fn open(pid: u32) -> Self {
        ProcStat(fs::File::open(format!("/proc/{pid}/stat")).unwrap_or_else(|e| panic!("open /proc/{pid}/stat: {e}")))
    }

    /// The state letter (`R`, `S`, `T` for stopped, ...), re-read from offset 0: one
    /// syscall. `None` once the process is gone.
    pub fn state(&self) -> Option<u8> {
        let mut buf = [0u8; 512];
        let n = self.0.read_at(&mut buf, 0).ok()?;
        // `pid (comm) S ...`: the comm may hold anything, so look after its last ')'.
        let close = buf[..n].iter().rposition(|&b| b == b')')?;
        buf.get(close + 2).copied()
    }
}

/// Calls `cond` until it returns true; panics naming `what` after `timeout`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The `<backend> <name>` arguments that name `location` on a command line.
pub fn location_args(location: &Location) -> [String; 2] {
    let name = match location {
        Location::Posix(name) => name.to_string(),
        Location::Sysv(key) => key.to_string(),
        Location::File(path) => path.display().to_string(),
        Location::Anon => panic!("an anonymous segment has no name another process can open"),
    };
    [location.backend().to_owned(), name]
}

/// What the operating system (not the library) says about a segment object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectStat {
    /// Owner uid.
    pub uid: u32,
    /// Permission bits.
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// File type bits (`S_IFMT`; 0 for SysV).
    pub kind: u32,
}

/// `stat` of the object behind `location` (`IPC_STAT` for SysV), without following symlinks.
pub fn os_stat(location: &Location) -> io::Result<ObjectStat> {
    let from_meta = |m: fs::Metadata| ObjectStat {
        uid: m.uid(),
        mode: m.mode() & 0o7777,
        size: m.size(),
        kind: m.mode() & libc::S_IFMT,
    };
    match location {
        Location::Posix(name) => fs::symlink_metadata(name.dev_shm_path()).map(from_meta),
        Location::File(path) => fs::symlink_metadata(path).map(from_meta),
        Location::Sysv(key) => {
            // SAFETY: plain integer arguments; size 0 and no flags only look the key up.
            let id = unsafe { libc::shmget(key.raw(), 0, 0) };
            if id == -1 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: all-zero bytes are a valid `shmid_ds`.
            let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
            // SAFETY: `ds` is a valid, writable `shmid_ds` for the kernel to fill.
            if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(ObjectStat {
                uid: ds.shm_perm.uid,
                mode: u32::from(ds.shm_perm.mode) & 0o777,
                size: ds.shm_segsz as u64,
                kind: 0,
            })
        }
        Location::Anon => Err(io::Error::new(io::ErrorKind::Unsupported, "an anonymous segment has no name")),
    }
}
/// A random seed for `test`, printed so that a failure can be repeated with
/// `SHMRING_TEST_SEED=<seed>`.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("SHMRING_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        now.as_nanos() as u64 ^ u64::from(std::process::id()) << 32
    });
    eprintln!("{test}: seed {seed} (SHMRING_TEST_SEED={seed} repeats it)");
    seed
}

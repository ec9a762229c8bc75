//! The environment and security faults of the reliability catalogue that need a full
//! filesystem or a real second user, through the real binaries.
//!
//! - Full filesystems, each a 1 MiB tmpfs mounted in a private mount namespace
//!   (`unshare -m`, gone with the namespace): `shmctl create` of a 4 MiB ring on
//!   `/dev/shm` and on a file segment's directory exits 74 saying it cannot reserve the
//!   bytes, is not killed by SIGBUS and leaves nothing behind, while a 512 KiB ring fits
//!   (the control); `producerd` asking for a 4 MiB ring exits non-zero with the same
//!   message; and a ring created before the filesystem filled up streams several times
//!   its size without SIGBUS, because create reserved every page.
//! - Another user, uid/gid 65534 (nobody/nogroup), as a real process: a POSIX name,
//!   SysV key or file path that is theirs is neither created over (73, naming uid 65534)
//!   nor opened (`WrongOwner`), and is left exactly as it was; they cannot open, publish
//!   into or remove our `0600` segment (77, and `unlink` says why, in terms of the
//!   backend: for SysV and file segments it does not yet, see
//!   `another_user_cannot_remove_our_segment_and_is_told_why_per_backend`); a member of a
//!   segment's group can inspect it, attaches through the library only when told to
//!   trust the owner, and cannot `shmctl publish` into it.
//!
//! Already covered elsewhere, so not repeated here: a symlink, FIFO or directory at the
//! name, umask 000/077, world-writable objects, objects chowned to another owner, and
//! a world-writable directory (`core_conformance`); `create` of an existing name, other
//! owners' and unreadable segments by exit code, and a create larger than `/dev/shm`
//! (`shmctl_errors`). A segment unlinked under running daemons is tested with that
//! feature.
//!
//! Each test prints one line `RELIABILITY {json}` for the report generator. Everything
//! here needs root (mounting, changing users); without it a test says why and skips.

// Its `checks!` macro is for tests per backend, which this file does not have.
#[allow(unused_macros)]
mod shmctl_support;

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use shm_core::layout::{HEADER_SIZE, max_payload_for};
use shm_core::{CreateError, Location, OpenError, Segment, SysvKey};
use shmctl_support::{
    CANT_CREATE, IO, NO_PERM, PATIENCE, PEER, args_on, assert_fails, create, exists, name, num, raw_bytes, run,
    shared_location, shmctl_as, shmctl_on, stat_json, sysv_id,
};
use shmring_tests::daemons::{Daemon, Kind, segment_section};
use shmring_tests::fixture::binary;
use shmring_tests::ledger::{Evidence, Figures, OWN_LEDGER, OWN_READER, publish_own, read_own, ring_peers};
use shmring_tests::skip::{Need, skip};
use shmring_tests::{Backend, Finished, Fixture, Summary, os_stat};

/// The other user: nobody, and nobody's primary group, nogroup (Debian's ids).
const NOBODY: (u32, u32) = (65534, 65534);
/// What the 1 MiB filesystems cannot hold.
const TOO_BIG: &str = "4MiB";
/// What they can, with room to spare for the header.
const FITS: &str = "512KiB";
/// [`FITS`] in bytes.
const FITS_BYTES: u64 = 512 * 1024;
/// Records of ours that wait in a segment while another user tries to get at it.
const OURS: u64 = 100;
/// The environment variable that makes the group-member test binary act as the member.
const GROUP_MEMBER_ENV: &str = "SHMRING_TEST_GROUP_MEMBER_OF";

// ---- Reporting ----------------------------------------------------------------------

/// The `RELIABILITY` line of one test, printed when it is dropped: `failed` if the test
/// is panicking, else what [`Reliability::pass`] or [`Reliability::runnable`] (a skip)
/// said.
struct Reliability {
    test: &'static str,
    fault: &'static str,
    runs: u64,
    outcome: Option<String>,
    figures: Figures,
}

impl Reliability {
    fn new(test: &'static str, fault: &'static str) -> Self {
        Reliability { test, fault, runs: 0, outcome: None, figures: Figures::NoRecords }
    }

    /// Counts one more run of the fault.
    fn ran(&mut self) {
        self.runs += 1;
    }

    fn pass(mut self, outcome: &str) {
        self.outcome = Some(outcome.to_owned());
    }

    /// Whether the test may run: root, and `unshare` for `mounts`; prints why not.
    fn runnable(&mut self, mounts: bool) -> bool {
        let reason = if !nix::unistd::geteuid().is_root() {
            Some("needs root (mounting a tmpfs, acting as another user)".to_owned())
        } else if mounts {
            match Command::new("unshare").args(["-m", "--propagation", "private", "true"]).status() {
                Ok(s) if s.success() => None,
                Ok(s) => Some(format!("`unshare -m` cannot make a mount namespace here ({s})")),
                Err(e) => Some(format!("`unshare` cannot run: {e}")),
            }
        } else {
            None
        };
        if let Some(reason) = &reason {
            self.outcome = Some(format!("skipped: {reason}"));
            skip(self.test, Need::Setup, reason);
        }
        reason.is_none()
    }
}

impl Drop for Reliability {
    fn drop(&mut self) {
        let outcome = if std::thread::panicking() {
            "failed".to_owned()
        } else {
            self.outcome.clone().unwrap_or_else(|| "failed: no outcome recorded".to_owned())
        };
        shmring_tests::reliability::report(self.test, self.fault, self.runs, &outcome, &self.figures, Value::Null);
    }
}

// ---- A private mount namespace ----------------------------------------------------

/// What a script run in a private mount namespace printed: its `@key=value` lines.
struct Script {
    out: Finished,
    values: HashMap<String, String>,
}

impl Script {
    /// Runs `script` with `sh` in a new private mount namespace, with `env`, and waits
    /// for it; it must succeed (`set -eu` makes every unchecked step count).
    #[track_caller]
    fn run(fx: &Fixture, script: &str, env: &[(&str, OsString)]) -> Script {
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c", &format!("set -eu\n{script}")])
            .current_dir(fx.dir())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("RUST_LOG")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID");
        let proc = fx.spawn("private-mounts", &mut cmd);
        let out = fx.wait(&proc, PATIENCE * 3);
        out.assert_success();
        let values = out
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix('@')?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect();
        Script { out, values }
    }

    #[track_caller]
    fn value(&self, key: &str) -> &str {
        self.values.get(key).unwrap_or_else(|| panic!("the script printed no @{key}=\n{}", self.out.stdout))
    }

    /// The exit status the script recorded as `@key=$?`; panics, naming the signal,
    /// if the command was killed by one (the shell reports 128 + its number).
    #[track_caller]
    fn exit_code(&self, key: &str, what: &str) -> i32 {
        let rc: i32 = self.value(key).parse().unwrap_or_else(|_| panic!("@{key} is not a number"));
        if rc > 128 {
            let signal = nix::sys::signal::Signal::try_from(rc - 128).map(|s| s.as_str()).unwrap_or("?");
            panic!("{what} was killed by signal {} ({signal}); SIGBUS is 7\n{}", rc - 128, self.out.stderr);
        }
        rc
    }

    /// The names a script's `ls -A` printed as `@key=`.
    #[track_caller]
    fn listing(&self, key: &str) -> Vec<String> {
        self.value(key).split_whitespace().map(str::to_owned).collect()
    }
}

/// A script step that runs `cmd` and prints its exit status, whatever it is, as `@key=`.
fn recorded(key: &str, cmd: &str) -> String {
    format!("{cmd} && rc=0 || rc=$?\necho \"@{key}=$rc\"\n")
}

/// A script step that prints the names in `$MNT` as `@key=`.
fn listed(key: &str) -> String {
    format!("echo \"@{key}=$(ls -A \"$MNT\" | tr '\\n' ' ')\"\n")
}

/// Where a backend's small filesystem goes: `/dev/shm` itself, or a private directory
/// of the fixture for file segments. Returns the mount point and its tmpfs mode.
fn mount_point(fx: &Fixture, backend: Backend) -> (PathBuf, &'static str) {
    match backend {
        Backend::Posix => (PathBuf::from("/dev/shm"), "1777"),
        Backend::File => {
            let dir = fx.path("fs");
            std::fs::create_dir(&dir).expect("mkdir");
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
            (dir, "0700")
        }
        other => panic!("{other:?} segments do not live in a filesystem"),
    }
}

/// A new location of `backend` on the mount point `mnt` (tracked, though it lives only
/// in the namespace: were the mount to fail, the fixture would remove it from the host).
fn location_on(fx: &Fixture, backend: Backend, mnt: &Path) -> Location {
    if backend == Backend::Posix {
        return fx.location(Backend::Posix);
    }
    let stem = fx.path("ring");
    let location = Location::File(mnt.join(stem.file_name().expect("a file name")));
    fx.track_segment(location.clone());
    location
}

/// The file behind a location on a mount point.
fn object_path(location: &Location) -> PathBuf {
    shmctl_support::object_path(location).unwrap_or_else(|| panic!("{location} has no path"))
}

/// The file name of the object behind `location` on its mount point.
fn entry(location: &Location) -> String {
    object_path(location).file_name().expect("a file name").to_string_lossy().into_owned()
}

fn mount_line(mode: &str) -> String {
    format!("mount -t tmpfs -o size=1m,mode={mode} tmpfs \"$MNT\"\n")
}

// ---- Full filesystems -------------------------------------------------------------

/// `shmctl create` of a ring the small filesystem cannot hold: 74, no SIGBUS, nothing
/// left; then one it can hold, which works and is exactly header + capacity.
fn full_filesystem_refuses_create(backend: Backend, test: &'static str, fault: &'static str) {
    let mut report = Reliability::new(test, fault);
    if !report.runnable(true) {
        return;
    }
    let fx = Fixture::new("full-create");
    let (mnt, mode) = mount_point(&fx, backend);
    let big = location_on(&fx, backend, &mnt);
    let small = location_on(&fx, backend, &mnt);
    let (big_err, small_err) = (fx.path("big.stderr"), fx.path("small.stderr"));
    let create = |size: &str, var: &str, err: &str| {
        format!("\"$SHMCTL\" create \"${var}\" --backend \"$BACKEND\" --capacity {size} 2>\"${err}\"")
    };
    let script = [
        mount_line(mode),
        recorded("big", &create(TOO_BIG, "BIG", "BIG_ERR")),
        listed("after_big"),
        recorded("small", &create(FITS, "SMALL", "SMALL_ERR")),
        listed("after_small"),
        "echo \"@small_size=$(stat -c %s \"$SMALL_PATH\" 2>/dev/null || echo none)\"\n".to_owned(),
    ]
    .concat();
    let out = Script::run(
        &fx,
        &script,
        &[
            ("MNT", mnt.clone().into()),
            ("SHMCTL", binary("shmctl").into()),
            ("BACKEND", backend.name().into()),
            ("BIG", name(&big).into()),
            ("SMALL", name(&small).into()),
            ("SMALL_PATH", object_path(&small).into()),
            ("BIG_ERR", big_err.clone().into()),
            ("SMALL_ERR", small_err.clone().into()),
        ],
    );
    report.ran();
    let stderr = std::fs::read_to_string(&big_err).unwrap_or_default();
    let rc = out.exit_code("big", &format!("shmctl create {} --capacity {TOO_BIG}", name(&big)));
    assert_eq!(rc, IO, "shmctl create {} --capacity {TOO_BIG} on a 1 MiB filesystem:\n{stderr}", name(&big));
    for needle in [name(&big).as_str(), "cannot reserve", "full"] {
        assert!(stderr.contains(needle), "the refusal does not mention {needle:?}:\n{stderr}");
    }
    assert_eq!(out.listing("after_big"), Vec::<String>::new(), "a failed create left something on {}", mnt.display());

    let rc = out.exit_code("small", "the control create");
    assert_eq!(
        rc,
        0,
        "a {FITS} ring does not fit a 1 MiB filesystem:\n{}",
        std::fs::read_to_string(&small_err).unwrap_or_default()
    );
    assert_eq!(out.listing("after_small"), vec![entry(&small)]);
    assert_eq!(out.value("small_size"), (HEADER_SIZE as u64 + FITS_BYTES).to_string(), "header + capacity");
    // The namespace, and its tmpfs, are gone: nothing reached the host.
    assert!(!exists(&big) && !exists(&small), "a segment of the namespace's tmpfs is on the host");
    report.pass("refused: exit 74 'cannot reserve', no SIGBUS, nothing left; the 512KiB control fits");
}

#[test]
fn full_dev_shm_create_exits_74_and_leaves_nothing() {
    full_filesystem_refuses_create(
        Backend::Posix,
        "full_dev_shm_create_exits_74_and_leaves_nothing",
        "/dev/shm full (1 MiB tmpfs), shmctl create of a 4 MiB posix ring",
    );
}

#[test]
fn full_filesystem_file_create_exits_74_and_leaves_nothing() {
    full_filesystem_refuses_create(
        Backend::File,
        "full_filesystem_file_create_exits_74_and_leaves_nothing",
        "full filesystem (1 MiB tmpfs), shmctl create of a 4 MiB file-backed ring",
    );
}

/// `producerd` configured for a ring `/dev/shm` cannot hold: a non-zero exit (not a
/// signal) with the library's message, nothing left; with one it can hold, it runs its
/// generator to the end.
#[test]
fn full_dev_shm_producerd_exits_with_a_clear_message() {
    let mut report = Reliability::new(
        "full_dev_shm_producerd_exits_with_a_clear_message",
        "/dev/shm full (1 MiB tmpfs), producerd creating a 4 MiB posix ring",
    );
    if !report.runnable(true) {
        return;
    }
    let fx = Fixture::new("full-producerd");
    let (mnt, mode) = mount_point(&fx, Backend::Posix);
    let big = location_on(&fx, Backend::Posix, &mnt);
    let small = location_on(&fx, Backend::Posix, &mnt);
    const RECORDS: u64 = 10;
    let config = |location: &Location, capacity: &str| {
        let section = segment_section(location, &[&format!("capacity = \"{capacity}\"")]);
        let launch = Daemon::launch(&fx, Kind::Producer, &format!("{section}[source]\ncount = {RECORDS}\n"));
        launch.config_path().to_owned()
    };
    let (big_err, small_err, stat) = (fx.path("big.stderr"), fx.path("small.stderr"), fx.path("stat.json"));
    let script = [
        mount_line(mode),
        recorded("big", "\"$PRODUCERD\" --config \"$BIG_CONFIG\" 2>\"$BIG_ERR\""),
        listed("after_big"),
        recorded("small", "\"$PRODUCERD\" --config \"$SMALL_CONFIG\" 2>\"$SMALL_ERR\""),
        listed("after_small"),
        "\"$SHMCTL\" stat \"$SMALL\" --json >\"$STAT\"\n".to_owned(),
    ]
    .concat();
    let out = Script::run(
        &fx,
        &script,
        &[
            ("MNT", mnt.clone().into()),
            ("PRODUCERD", binary("producerd").into()),
            ("SHMCTL", binary("shmctl").into()),
            ("BIG_CONFIG", config(&big, TOO_BIG).into()),
            ("SMALL_CONFIG", config(&small, FITS).into()),
            ("SMALL", name(&small).into()),
            ("BIG_ERR", big_err.clone().into()),
            ("SMALL_ERR", small_err.clone().into()),
            ("STAT", stat.clone().into()),
        ],
    );
    report.ran();
    let log = std::fs::read_to_string(&big_err).unwrap_or_default();
    let rc = out.exit_code("big", "producerd with a 4 MiB ring");
    assert_ne!(rc, 0, "producerd started without its ring:\n{log}");
    // Not one of the codes that would send an operator looking in the wrong place.
    assert!(![66, 69, 77, 78].contains(&rc), "producerd exited {rc}, a code that means something else:\n{log}");
    for needle in [name(&big).as_str(), "cannot reserve", "full"] {
        assert!(log.contains(needle), "producerd's message does not mention {needle:?}:\n{log}");
    }
    assert!(!log.contains("producer attached"), "producerd attached to a ring it could not reserve:\n{log}");
    assert_eq!(out.listing("after_big"), Vec::<String>::new(), "producerd left something in /dev/shm");

    let small_log = std::fs::read_to_string(&small_err).unwrap_or_default();
    assert_eq!(out.exit_code("small", "the control producerd"), 0, "{small_log}");
    assert_eq!(out.listing("after_small"), vec![entry(&small)]);
    let stat: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stat).expect("stat --json output")).expect("stat --json is JSON");
    assert_eq!(num(&stat, "/counters/total_produced"), RECORDS, "{stat:#}");
    report.pass(&format!(
        "refused: producerd exit {rc} 'cannot reserve', no SIGBUS, nothing left; the 512KiB control produced {RECORDS}"
    ));
}

/// A ring created while there was room, on a filesystem then filled to the last byte:
/// a producer and a consumer stream several times the ring's size through it. Without
/// the pages reserved at create, the first write to an untouched page would be SIGBUS.
fn full_filesystem_after_create_never_sigbus(backend: Backend, test: &'static str, fault: &'static str) {
    let mut report = Reliability::new(test, fault);
    if !report.runnable(true) {
        return;
    }
    let fx = Fixture::new("full-later");
    let (mnt, mode) = mount_point(&fx, backend);
    let ring = location_on(&fx, backend, &mnt);
    const TOTAL: u64 = 20_000;
    let streamed = shmring_tests::records::total_len(0..TOTAL, max_payload_for(FITS_BYTES) as usize);
    assert!(streamed > 4 * FITS_BYTES, "the stream ({streamed} bytes) must wrap the ring several times");
    let (producer_out, consumer_out) = (fx.path("producer.out"), fx.path("consumer.out"));
    let peer = |role: &str, out: &str| {
        format!("\"$PEER\" {role} \"$BACKEND\" \"$RING\" --total {TOTAL} --timeout-ms 5000 >\"${out}\" 2>&1")
    };
    let script = [
        mount_line(mode),
        "\"$SHMCTL\" create \"$RING\" --backend \"$BACKEND\" --capacity \"$CAPACITY\" >/dev/null\n".to_owned(),
        // dd fails with ENOSPC once it has taken every free block: that is the point.
        "dd if=/dev/zero of=\"$MNT/filler\" bs=4096 2>/dev/null || true\n".to_owned(),
        "echo \"@avail=$(df -B1 --output=avail \"$MNT\" | tail -n 1)\"\n".to_owned(),
        format!("{} &\nconsumer=$!\n", peer("consume", "CONSUMER_OUT")),
        recorded("producer", &peer("produce", "PRODUCER_OUT")),
        recorded("consumer", "wait \"$consumer\""),
        listed("after"),
    ]
    .concat();
    let out = Script::run(
        &fx,
        &script,
        &[
            ("MNT", mnt.clone().into()),
            ("SHMCTL", binary("shmctl").into()),
            ("PEER", PEER.into()),
            ("BACKEND", backend.name().into()),
            ("RING", name(&ring).into()),
            ("CAPACITY", FITS.into()),
            ("PRODUCER_OUT", producer_out.clone().into()),
            ("CONSUMER_OUT", consumer_out.clone().into()),
        ],
    );
    report.ran();
    assert_eq!(out.value("avail"), "0", "the filesystem was not full while the ring was used");
    let said = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    assert_eq!(out.exit_code("producer", "the producer"), 0, "{}", said(&producer_out));
    assert_eq!(out.exit_code("consumer", "the consumer"), 0, "{}", said(&consumer_out));
    let (produced, consumed) = (said(&producer_out), said(&consumer_out));
    let summary = Summary::parse(consumed.lines().last().unwrap_or_default());
    let evidence = ring_peers(&Summary::parse(produced.lines().last().unwrap_or_default()), &summary);
    report.figures = Figures::Counted(evidence.clone());
    evidence.assert_exact();
    assert_eq!(summary.u64("count"), TOTAL, "{consumed}");
    assert_eq!(summary.u64("bytes"), streamed, "{consumed}");
    let mut left = out.listing("after");
    left.sort();
    assert_eq!(left, vec!["filler".to_owned(), entry(&ring)]);
    report.pass(&format!(
        "no SIGBUS: {TOTAL} records ({streamed} bytes) through a 512KiB ring on a full filesystem, all delivered once"
    ));
}

#[test]
fn full_dev_shm_after_create_never_sigbus() {
    full_filesystem_after_create_never_sigbus(
        Backend::Posix,
        "full_dev_shm_after_create_never_sigbus",
        "/dev/shm filled to the last byte after create, then a stream through the posix ring",
    );
}

#[test]
fn full_filesystem_after_create_never_sigbus_file() {
    full_filesystem_after_create_never_sigbus(
        Backend::File,
        "full_filesystem_after_create_never_sigbus_file",
        "filesystem filled to the last byte after create, then a stream through the file-backed ring",
    );
}

// ---- Another user -------------------------------------------------------------------

/// Makes `cmd` run as nobody:nogroup; std drops the supplementary groups when root
/// changes the uid.
fn as_nobody(cmd: &mut Command) -> &mut Command {
    cmd.uid(NOBODY.0).gid(NOBODY.1)
}

/// Runs `shmctl SUB <location> EXTRA...` as nobody.
#[track_caller]
fn shmctl_as_nobody(fx: &Fixture, sub: &str, location: &Location, extra: &[&str]) -> Finished {
    shmctl_as(fx, NOBODY.0, NOBODY.1, args_on(sub, location, extra))
}

/// Panics unless our `shmctl create` over `location` exits 73 naming uid 65534, our
/// library create says `Exists` with that owner, and our library open says
/// `WrongOwner`, read-write and read-only.
#[track_caller]
fn assert_theirs_refused(fx: &Fixture, location: &Location) {
    let f = shmctl_on(fx, "create", location, &["--capacity", "64KiB"]);
    assert_fails(&f, CANT_CREATE, &[&name(location), "already exists", &format!("owned by uid {}", NOBODY.0)]);
    match Segment::builder(location.clone()).capacity(64 * 1024).create() {
        Err(CreateError::Exists { owner, .. }) => assert_eq!(owner, Some(NOBODY.0)),
        other => panic!("library create over nobody's {location}: expected Exists, got {other:?}"),
    }
    for read_only in [false, true] {
        let builder = Segment::builder(location.clone());
        let builder = if read_only { builder.read_only() } else { builder };
        match builder.open() {
            Err(OpenError::WrongOwner { found, expected, .. }) => assert_eq!((found, expected), (NOBODY.0, 0)),
            other => panic!("open of nobody's {location} (read-only {read_only}): expected WrongOwner, got {other:?}"),
        }
    }
}

/// A POSIX segment that nobody created with the real `shmctl`: we neither create over
/// it nor trust it, and its object and bytes stay as they were.
#[test]
fn name_pre_created_by_another_user_is_refused_and_untouched() {
    let mut report = Reliability::new(
        "name_pre_created_by_another_user_is_refused_and_untouched",
        "POSIX name pre-created by another user (nobody, with shmctl create)",
    );
    if !report.runnable(false) {
        return;
    }
    let fx = Fixture::new("theirs-posix");
    let location = fx.location(Backend::Posix);
    shmctl_as_nobody(&fx, "create", &location, &["--capacity", "64KiB"]).assert_success();
    let before = os_stat(&location).expect("nobody's segment exists");
    assert_eq!((before.uid, before.mode), (NOBODY.0, 0o600), "{before:?}");
    let bytes = raw_bytes(&location);
    assert_theirs_refused(&fx, &location);
    report.ran();
    assert_eq!(os_stat(&location).expect("still there"), before, "nobody's segment changed");
    assert!(raw_bytes(&location) == bytes, "the bytes of nobody's segment changed");
    report.pass("refused: create exit 73 naming uid 65534, open WrongOwner; theirs untouched");
}

/// A SysV key that nobody took with a plain `shmget`: refused the same way, their
/// segment never attached or changed, and no lock file of ours left behind.
#[test]
fn sysv_key_pre_created_by_another_user_is_refused_and_untouched() {
    let mut report = Reliability::new(
        "sysv_key_pre_created_by_another_user_is_refused_and_untouched",
        "SysV key pre-created by another user (nobody, shmget IPC_CREAT|IPC_EXCL 0600)",
    );
    if !report.runnable(false) {
        return;
    }
    let fx = Fixture::new("theirs-sysv");
    // Tracked: the fixture removes it (IPC_RMID, as root) if the test stops half-way.
    let location = fx.location(Backend::Sysv);
    let Location::Sysv(key) = location else { unreachable!("a SysV location") };
    let raw_key = key.raw();
    let take_key = move || {
        // SAFETY: plain integer arguments.
        let id = unsafe { libc::shmget(raw_key, 4096, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
        if id == -1 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    };
    let mut cmd = Command::new("true");
    as_nobody(&mut cmd);
    // SAFETY: `take_key` runs in the forked child after the uid change, before exec: shmget is a single system call, and its error an errno turned into an
    // `io::Error` without allocating.
    unsafe {
        cmd.pre_exec(take_key);
    }
    let child = fx.spawn("shmget-as-nobody", &mut cmd);
    fx.wait(&child, PATIENCE).assert_success();
    let before = os_stat(&location).expect("nobody's segment exists");
    assert_eq!((before.uid, before.mode, before.size), (NOBODY.0, 0o600, 4096), "{before:?}");

    assert_theirs_refused(&fx, &location);
    report.ran();
    assert_eq!(os_stat(&location).expect("still there"), before, "nobody's segment changed");
    let ds = sysv_ds(key);
    assert_eq!((ds.shm_nattch, ds.shm_atime), (0, 0), "we attached nobody's segment");
    assert!(
        std::fs::symlink_metadata(shm_core::sysv_lock_path(key)).is_err(),
        "a refused create left a lock file for nobody's key"
    );
    // Clean up as root, as an operator would.
    // SAFETY: IPC_RMID takes no buffer.
    let removed = unsafe { libc::shmctl(sysv_id(key), libc::IPC_RMID, std::ptr::null_mut()) };
    assert_ne!(removed, -1, "IPC_RMID as root: {}", std::io::Error::last_os_error());
    report.pass("refused: create exit 73 naming uid 65534, open WrongOwner; theirs never attached or changed");
}

/// `IPC_STAT` of the SysV segment with `key`.
fn sysv_ds(key: SysvKey) -> libc::shmid_ds {
    let id = sysv_id(key);
    // SAFETY: all-zero bytes are a valid `shmid_ds`.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid, writable `shmid_ds` for the kernel to fill.
    let r = unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) };
    assert_ne!(r, -1, "IPC_STAT: {}", std::io::Error::last_os_error());
    ds
}

/// A file at a file segment's path that belongs to nobody (we give it to them, in our
/// own directory): neither created over (its contents stay) nor opened.
#[test]
fn file_path_of_another_user_is_refused_and_untouched() {
    let mut report = Reliability::new(
        "file_path_of_another_user_is_refused_and_untouched",
        "file segment path pre-created for another user (a segment chowned to nobody)",
    );
    if !report.runnable(false) {
        return;
    }
    let fx = Fixture::new("theirs-file");
    let location = fx.location(Backend::File);
    create(&fx, &location, &["--capacity", "64KiB"]);
    let path = object_path(&location);
    std::os::unix::fs::lchown(&path, Some(NOBODY.0), Some(NOBODY.1)).expect("chown to nobody");
    let before = os_stat(&location).expect("exists");
    let bytes = std::fs::read(&path).expect("read it");
    assert_theirs_refused(&fx, &location);
    report.ran();
    assert_eq!(os_stat(&location).expect("still there"), before, "nobody's file changed");
    assert!(std::fs::read(&path).expect("read it") == bytes, "the contents of nobody's file changed");
    report.pass("refused: create exit 73 naming uid 65534, open WrongOwner; the file untouched");
}

/// Our `0600` POSIX segment, approached by nobody: no `stat`, no `publish`, no
/// `unlink` (77 each, `unlink` explaining that only the owner or root may remove it),
/// and it is still there, unchanged.
#[test]
fn another_user_cannot_open_publish_or_remove_our_segment() {
    let mut report = Reliability::new(
        "another_user_cannot_open_publish_or_remove_our_segment",
        "another user (nobody) opening, publishing into and unlinking our 0600 posix segment",
    );
    if !report.runnable(false) {
        return;
    }
    let fx = Fixture::new("not-theirs");
    let location = fx.location(Backend::Posix);
    create(&fx, &location, &["--capacity", "64KiB"]);
    // Records of ours wait in it while the other user tries; all must come out, and
    // nothing else.
    let ours = Segment::builder(location.clone()).open().expect("open our segment");
    let acknowledged = publish_own(&ours, 0..OURS);
    let n = name(&location);
    for sub in ["stat", "publish"] {
        let extra: &[&str] = if sub == "publish" { &["intruder"] } else { &[] };
        assert_fails(&shmctl_as_nobody(&fx, sub, &location, extra), NO_PERM, &[&n, "Permission denied"]);
        report.ran();
    }
    let f = shmctl_as_nobody(&fx, "unlink", &location, &[]);
    assert_fails(&f, NO_PERM, &[&n, "only its owner or root can remove it", "sticky"]);
    report.ran();
    assert!(exists(&location), "nobody removed our segment");
    let stat = stat_json(&fx, &location);
    assert_eq!(num(&stat, "/counters/total_produced"), OURS, "nobody published: {stat:#}");
    let evidence = Evidence::compare(OWN_LEDGER, acknowledged, OWN_READER, read_own(&ours));
    report.figures = Figures::Counted(evidence.clone());
    evidence.assert_exact();
    assert_eq!(evidence.unacknowledged, 0, "a record we never published: {evidence:?}");
    report.pass("refused: stat, publish and unlink exit 77, unlink explaining the sticky /dev/shm; ours untouched");
}

/// Nobody's `shmctl unlink` of our SysV and file segments is refused (77) and the
/// segment stays; the message must give the reason that applies to the backend: a SysV
/// segment has nothing to do with /dev/shm (IPC_RMID needs the owner, the creator or
/// CAP_SYS_ADMIN), and a file segment's removal is decided by its directory's
/// permissions.
#[test]
fn another_user_cannot_remove_our_segment_and_is_told_why_per_backend() {
    let mut report = Reliability::new(
        "another_user_cannot_remove_our_segment_and_is_told_why_per_backend",
        "another user (nobody) unlinking our 0600 sysv and file segments",
    );
    if !report.runnable(false) {
        return;
    }
    let fx = Fixture::new("not-theirs-rm");
    let mut misleading = Vec::new();
    let mut rounds = Vec::new();
    for backend in [Backend::Sysv, Backend::File] {
        // File segments in a directory nobody can reach (0755), so the refusal is the
        // removal's, not the path lookup's.
        let location = shared_location(&fx, backend);
        create(&fx, &location, &["--capacity", "64KiB"]);
        let ours = Segment::builder(location.clone()).open().expect("open our segment");
        let acknowledged = publish_own(&ours, 0..OURS);
        let f = shmctl_as_nobody(&fx, "unlink", &location, &[]);
        let reason = match backend {
            Backend::Sysv => "only its owner, its creator or root can remove it",
            _ => "write permission on its directory",
        };
        assert_fails(&f, NO_PERM, &[&name(&location), reason]);
        report.ran();
        assert!(exists(&location), "nobody removed our {location}");
        if f.stderr.contains("/dev/shm") {
            misleading.push(format!("{}: {}", backend.name(), f.stderr.trim()));
        }
        rounds.push(Evidence::compare(OWN_LEDGER, acknowledged, OWN_READER, read_own(&ours)));
    }
    let evidence = Evidence::sum(&rounds);
    report.figures = Figures::Counted(evidence.clone());
    evidence.assert_exact();
    assert!(
        misleading.is_empty(),
        "the refusal blames /dev/shm for segments that are not in it:\n{}",
        misleading.join("\n")
    );
    report.pass("refused: unlink exit 77 for sysv and file, with a reason that fits the backend; ours untouched");
}

/// What the group member's process did, one line of JSON after this prefix.
const GROUP_MEMBER_SAYS: &str = "GROUP-MEMBER ";

/// A segment of mode 0660 in nobody's group: nobody, a member, may inspect it with
/// `shmctl stat`; the library attaches them only when told to trust its owner (us),
/// and then they can publish; `shmctl publish`, which trusts only the caller's own
/// segments, refuses them with 77 naming the owner.
#[test]
fn group_member_attaches_only_when_trusting_the_owner() {
    if let Ok(segment) = std::env::var(GROUP_MEMBER_ENV) {
        group_member(&segment);
    }
    let mut report = Reliability::new(
        "group_member_attaches_only_when_trusting_the_owner",
        "another user in the segment's group (0660, --group 65534) opening and publishing",
    );
    if !report.runnable(false) {
        return;
    }
    let fx = Fixture::new("group");
    let location = fx.location(Backend::Posix);
    create(&fx, &location, &["--capacity", "64KiB", "--mode", "0660", "--group", &NOBODY.1.to_string()]);
    let object = os_stat(&location).expect("exists");
    assert_eq!((object.uid, object.mode), (0, 0o660));
    let n = name(&location);

    // Inspection: read-only, any owner.
    let f = shmctl_as_nobody(&fx, "stat", &location, &["--json"]);
    f.assert_success();
    let seen: serde_json::Value = serde_json::from_str(&f.stdout).expect("stat --json is JSON");
    assert_eq!((num(&seen, "/segment/uid"), num(&seen, "/segment/gid")), (0, u64::from(NOBODY.1)), "{seen:#}");
    report.ran();

    // The library, in a process of nobody's: this test binary again, as the member.
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let mut cmd = Command::new(exe);
    cmd.args(["group_member_attaches_only_when_trusting_the_owner", "--exact", "--nocapture", "--test-threads=1"])
        .env(GROUP_MEMBER_ENV, &n);
    let member = run(&fx, as_nobody(&mut cmd));
    member.assert_success();
    let said = member
        .stdout
        .lines()
        .find_map(|l| l.split_once(GROUP_MEMBER_SAYS).map(|(_, json)| json))
        .unwrap_or_else(|| panic!("the member said nothing:\n{}\n{}", member.stdout, member.stderr));
    let said: serde_json::Value = serde_json::from_str(said).expect("the member's JSON");
    let text = |key: &str| said[key].as_str().unwrap_or_else(|| panic!("{key} missing in {said}")).to_owned();
    assert!(
        text("default_open").contains(&format!("owned by uid 0, expected uid {}", NOBODY.0)),
        "opening with the default expected owner (itself): {said}"
    );
    assert_eq!(text("trusted_open"), "ok", "opening with the expected owner set to root: {said}");
    assert_eq!(text("publish"), "ok", "publishing as the producer: {said}");
    report.ran();
    assert_eq!(num(&stat_json(&fx, &location), "/counters/total_produced"), 1, "the member's record");

    // shmctl publish trusts only the caller's own segments (root's: any).
    let f = shmctl_as_nobody(&fx, "publish", &location, &["from-the-group"]);
    assert_fails(&f, NO_PERM, &[&n, "owned by uid 0", &format!("expected uid {}", NOBODY.0)]);
    report.ran();
    assert_eq!(num(&stat_json(&fx, &location), "/counters/total_produced"), 1, "shmctl publish added nothing");
    report.pass("stat works for the group member; library attach only with expected owner = root; shmctl publish 77");
}

/// The group member's side (running as nobody): opens the segment `name` with the
/// default expected owner and with root as the expected owner, publishes once, prints
/// what happened as one JSON line and exits.
fn group_member(name: &str) -> ! {
    let location = Location::posix(name).expect("the parent passes a valid name");
    let default_open = match Segment::builder(location.clone()).open() {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.to_string(),
    };
    let (trusted_open, publish) = match Segment::builder(location).expected_owner(Some(0)).open() {
        Ok(segment) => {
            let publish = match segment.producer() {
                Ok(mut producer) => match producer.try_publish(b"from the group") {
                    Ok(_) => "ok".to_owned(),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            ("ok".to_owned(), publish)
        }
        Err(e) => (e.to_string(), "not attempted".to_owned()),
    };
    let said = serde_json::json!({ "default_open": default_open, "trusted_open": trusted_open, "publish": publish });
    println!("{GROUP_MEMBER_SAYS}{said}");
    std::process::exit(0);
}

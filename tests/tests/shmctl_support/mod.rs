//! What the `shmctl_*` tests share: running the real `shmctl` binary through the fixture
//! (as ourselves or as another user), naming a segment on its command line, peers that
//! hold a role, and looking at or changing segment objects behind the library's back.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use shm_core::{Location, SysvKey};
use shmring_tests::fixture::binary;
use shmring_tests::{Backend, Finished, Fixture, Proc, location_args, os_stat, wait_until};

/// The test peer (`ring-peer attach|produce|consume`).
pub const PEER: &str = env!("CARGO_BIN_EXE_ring-peer");
/// How long one `shmctl` run, or a peer getting somewhere, may take.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Exit codes of `shmctl`, as the README documents them.
pub const USAGE: i32 = 64;
/// Not a shmring segment, or corrupt.
pub const DATA: i32 = 65;
/// No such segment.
pub const NO_INPUT: i32 = 66;
/// In use: a live participant, or the role is taken.
pub const UNAVAILABLE: i32 = 69;
/// Already exists.
pub const CANT_CREATE: i32 = 73;
/// I/O error or no space.
pub const IO: i32 = 74;
/// Permission denied, or an untrusted owner or mode.
pub const NO_PERM: i32 = 77;

/// Defines one `#[test]` per check, each calling `super::<check>(Backend::<backend>)`;
/// used inside a module per backend.
macro_rules! checks {
    ($backend:ident: $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                super::$check(shmring_tests::Backend::$backend);
            }
        )*
    };
}

/// The name of `location` as `shmctl` takes it and prints it in listings
/// (`/name`, `0x53000001`, a path).
pub fn name(location: &Location) -> String {
    let [_, name] = location_args(location);
    name
}

/// `NAME --backend BACKEND`: the segment on a `shmctl` command line.
pub fn target(location: &Location) -> Vec<String> {
    let [backend, name] = location_args(location);
    vec![name, "--backend".into(), backend]
}

/// Runs `cmd` (a `shmctl` command) through the fixture and waits for it.
#[track_caller]
pub fn run(fx: &Fixture, cmd: &mut Command) -> Finished {
    let proc = fx.spawn("shmctl", cmd);
    fx.wait(&proc, PATIENCE)
}

/// A `shmctl ARGS` command, not yet run.
pub fn command<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Command {
    let mut cmd = Command::new(binary("shmctl"));
    cmd.args(args);
    cmd
}

/// Runs `shmctl ARGS`.
#[track_caller]
pub fn shmctl<S: AsRef<OsStr>>(fx: &Fixture, args: impl IntoIterator<Item = S>) -> Finished {
    run(fx, &mut command(args))
}

/// The arguments `SUB NAME --backend BACKEND EXTRA...`.
pub fn args_on(sub: &str, location: &Location, extra: &[&str]) -> Vec<String> {
    let mut args = vec![sub.to_owned()];
    args.extend(target(location));
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// Runs `shmctl SUB NAME --backend BACKEND EXTRA...`.
#[track_caller]
pub fn shmctl_on(fx: &Fixture, sub: &str, location: &Location, extra: &[&str]) -> Finished {
    shmctl(fx, args_on(sub, location, extra))
}

/// Runs `shmctl ARGS` as user `uid` and group `gid` (no supplementary groups).
#[track_caller]
pub fn shmctl_as<S: AsRef<OsStr>>(fx: &Fixture, uid: u32, gid: u32, args: impl IntoIterator<Item = S>) -> Finished {
    run(fx, command(args).uid(uid).gid(gid))
}

/// `shmctl create` at `location` with `extra` options, which must succeed.
#[track_caller]
pub fn create(fx: &Fixture, location: &Location, extra: &[&str]) -> Finished {
    let f = shmctl_on(fx, "create", location, extra);
    f.assert_success();
    f
}

/// `shmctl publish` of `data`, which must succeed.
#[track_caller]
pub fn publish(fx: &Fixture, location: &Location, data: &str) {
    shmctl_on(fx, "publish", location, &[data]).assert_success();
}

/// Panics unless `f` exited with `code` and its stderr contains every one of `needles`.
#[track_caller]
pub fn assert_fails(f: &Finished, code: i32, needles: &[&str]) {
    f.assert_code(code);
    for needle in needles {
        assert!(f.stderr.contains(needle), "{} stderr does not mention {needle:?}:\n{}", f.label, f.stderr);
    }
}

/// The stdout of a successful run, which must be exactly one JSON document.
#[track_caller]
pub fn json(f: &Finished) -> Value {
    f.assert_success();
    serde_json::from_str(&f.stdout).unwrap_or_else(|e| panic!("not one JSON document ({e}):\n{}", f.stdout))
}

/// `shmctl stat --json`, which must be one JSON object.
#[track_caller]
pub fn stat_json(fx: &Fixture, location: &Location) -> Value {
    let v = json(&shmctl_on(fx, "stat", location, &["--json"]));
    assert!(v.is_object(), "stat --json is not an object: {v:#}");
    v
}

/// The number at JSON `pointer` (such as `/counters/total_produced`).
#[track_caller]
pub fn num(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer).and_then(Value::as_u64).unwrap_or_else(|| panic!("{pointer} is not a number in {v:#}"))
}

/// The string at JSON `pointer`.
#[track_caller]
pub fn text<'v>(v: &'v Value, pointer: &str) -> &'v str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("{pointer} is not a string in {v:#}"))
}

/// The line of `output` whose first word is `first`.
#[track_caller]
pub fn line_of<'o>(output: &'o str, first: &str) -> &'o str {
    output
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no line starts with {first:?} in:\n{output}"))
}

/// Spawns a peer that takes `role` (`producer` or `consumer`) at `location` and holds it
/// until killed; returns once it has attached.
#[track_caller]
pub fn attach(fx: &Fixture, location: &Location, role: &str) -> Proc {
    let proc = fx.spawn(role, Command::new(PEER).arg("attach").args(location_args(location)).args(["--role", role]));
    wait_until(PATIENCE, &format!("the {role} has attached"), || {
        fx.assert_running(&proc);
        fx.stdout_so_far(&proc).contains("attached")
    });
    proc
}

/// Whether the object behind `location` exists (any other error panics).
#[track_caller]
pub fn exists(location: &Location) -> bool {
    match os_stat(location) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        // shmget of a removed key.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => false,
        Err(e) => panic!("stat of {location}: {e}"),
    }
}

/// The effective uid of the tests.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Whether the tests run as root; prints why `test` is skipped when not.
pub fn root_or_skip(test: &str) -> bool {
    shmring_tests::skip::root_or_skip(test, "changing owners and running as other users")
}

/// The file behind a location with a path.
pub fn object_path(location: &Location) -> Option<PathBuf> {
    match location {
        Location::Posix(name) => Some(name.dev_shm_path()),
        Location::File(path) => Some(path.clone()),
        _ => None,
    }
}

/// The id of the SysV segment with `key`, which must exist.
pub fn sysv_id(key: SysvKey) -> i32 {
    // SAFETY: plain integer arguments; size 0 and no flags only look the key up.
    let id = unsafe { libc::shmget(key.raw(), 0, 0) };
    assert_ne!(id, -1, "shmget {key}: {}", std::io::Error::last_os_error());
    id
}

/// `chown`/`chmod` of the object behind `location`, behind the library's back, as
/// another program would (`IPC_SET` for SysV, whose lock file gets the same owner and
/// the mode without execute bits).
#[track_caller]
pub fn set_owner_mode(location: &Location, owner: Option<(u32, u32)>, mode: u32) {
    let chown_chmod = |path: &std::path::Path, mode: u32| {
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid)).expect("chown");
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    match location {
        Location::Sysv(key) => {
            let id = sysv_id(*key);
            // SAFETY: all-zero bytes are a valid `shmid_ds`.
            let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
            // SAFETY: `ds` is a valid, writable `shmid_ds` for the kernel to fill.
            let r = unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) };
            assert_ne!(r, -1, "IPC_STAT: {}", std::io::Error::last_os_error());
            ds.shm_perm.mode = mode as _;
            if let Some((uid, gid)) = owner {
                ds.shm_perm.uid = uid;
                ds.shm_perm.gid = gid;
            }
            // SAFETY: `ds` is a valid `shmid_ds`, filled by IPC_STAT.
            let r = unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) };
            assert_ne!(r, -1, "IPC_SET: {}", std::io::Error::last_os_error());
            chown_chmod(&shm_core::sysv_lock_path(*key), mode & 0o666);
        }
        other => chown_chmod(&object_path(other).expect("a path"), mode),
    }
}

/// Attaches SysV segment `key` (read-only or not), calls `f` with its address and size,
/// and detaches.
fn with_sysv<T>(key: SysvKey, writable: bool, f: impl FnOnce(*mut u8, usize) -> T) -> T {
    let id = sysv_id(key);
    let size = usize::try_from(os_stat(&Location::Sysv(key)).expect("IPC_STAT").size).expect("size fits");
    let flags = if writable { 0 } else { libc::SHM_RDONLY };
    // SAFETY: shmat with a null address lets the kernel choose where; the attachment
    // aliases no Rust object.
    let ptr = unsafe { libc::shmat(id, std::ptr::null(), flags) };
    assert_ne!(ptr as isize, -1, "shmat {key}: {}", std::io::Error::last_os_error());
    let result = f(ptr.cast(), size);
    // SAFETY: detaching exactly what was attached above; `f` has returned and kept no
    // pointer into it.
    unsafe { libc::shmdt(ptr) };
    result
}

/// Every byte of the segment at `location`, read behind the library's back.
#[track_caller]
pub fn raw_bytes(location: &Location) -> Vec<u8> {
    match location {
        Location::Sysv(key) => with_sysv(*key, false, |ptr, size| {
            // SAFETY: the attachment is `size` bytes (IPC_STAT's size), readable until
            // `with_sysv` detaches it after this returns. Callers read idle segments,
            // which no process writes meanwhile.
            unsafe { std::slice::from_raw_parts(ptr, size) }.to_vec()
        }),
        other => std::fs::read(object_path(other).expect("a path")).expect("read the segment"),
    }
}

/// Overwrites bytes of the segment at `location` from `offset`, behind the library's
/// back, as a stray writer would.
#[track_caller]
pub fn poke(location: &Location, offset: usize, bytes: &[u8]) {
    match location {
        Location::Sysv(key) => with_sysv(*key, true, |ptr, size| {
            assert!(offset + bytes.len() <= size, "poke beyond the segment");
            // SAFETY: the range lies inside the attachment (checked above), which stays
            // attached until `with_sysv` detaches it after this returns; `bytes` is a
            // separate allocation.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.add(offset), bytes.len()) };
        }),
        other => {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(object_path(other).expect("a path"))
                .expect("open the segment for writing");
            file.write_at(bytes, offset as u64).expect("write into the segment");
        }
    }
}

/// A new location of `backend` that users other than root can reach: file segments go
/// in a directory of mode 0755 of their own (the fixture's is private, 0700). Removed on
/// drop.
pub fn shared_location(fx: &Fixture, backend: Backend) -> Location {
    if backend != Backend::File {
        return fx.location(backend);
    }
    // `shmring-t-<test>-<pid>-<n>`, the shape the fixture sweeps up if a run is killed.
    let dir = std::env::temp_dir().join(&fx.posix_name().as_str()[1..]);
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    fx.track_path(dir.clone());
    let location = Location::File(dir.join("segment"));
    fx.track_segment(location.clone());
    location
}

/// A POSIX shared-memory object holding `bytes` that is not a shmring segment, with a
/// unique name, removed on drop.
pub fn foreign_posix(fx: &Fixture, bytes: &[u8]) -> Location {
    let name = fx.posix_name();
    let path = name.dev_shm_path();
    std::fs::write(&path, bytes).expect("write a foreign object");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    fx.track_path(path);
    Location::Posix(name)
}

/// A SysV segment of `size` bytes, mode 0600, that is not a shmring segment; returns
/// its location and id. Removed on drop.
pub fn foreign_sysv(fx: &Fixture, size: usize) -> (Location, i32) {
    let location = fx.location(Backend::Sysv);
    let Location::Sysv(key) = location else { unreachable!("a SysV location") };
    // SAFETY: plain integer arguments.
    let id = unsafe { libc::shmget(key.raw(), size, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
    assert_ne!(id, -1, "shmget: {}", std::io::Error::last_os_error());
    (location, id)
}

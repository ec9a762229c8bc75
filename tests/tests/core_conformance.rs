//! What every backend must do the same way: one body per check, run against each
//! backend it applies to (the `posix`, `sysv`, `file` and `anon` modules at the end).
//!
//! - Every backend: the geometry asked for, and a size of header + capacity; invalid
//!   options (capacity, max record, mode bits) refused with nothing left behind;
//!   world-writable modes refused; one producer and one consumer at a time.
//! - Every named backend: exclusive create (`Exists`, the original untouched); mode
//!   exactly 0600 by default and 0640 when asked, whatever the umask (000 and 077, set
//!   in a child process since the umask is process-wide); a second handle sees the same
//!   memory; `unlink` then open gives `NotFound`; re-opening keeps the records; a killed
//!   participant is reported dead and its role can be taken; a world-writable object
//!   or one owned by another user is refused on open.
//! - Backends with a path (posix in `/dev/shm`, file): a symlink, FIFO or directory at
//!   the name is refused with `NotRegular` (and promptly: a FIFO must not block the
//!   open); a half-created or foreign file is refused.
//! - The file backend: a world-writable directory is refused.
//!
//! The anonymous backend's process checks (fork, kill) are in `core_anon_fork`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shm_core::layout::HEADER_SIZE;
use shm_core::{
    AttachError, CreateError, FlushPolicy, Liveness, Location, OpenError, RingKind, Role, Segment, SegmentBuilder,
    TryReadError, UnlinkError,
};
use shmring_tests::{Backend, Fixture, location_args, os_stat, wait_until};

const PEER: &str = env!("CARGO_BIN_EXE_ring-peer");
const CAPACITY: u64 = 64 * 1024;
/// How long a check waits for a process to get somewhere, or an open to return.
const PATIENCE: Duration = Duration::from_secs(10);

fn builder(location: &Location) -> SegmentBuilder {
    Segment::builder(location.clone()).capacity(CAPACITY)
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Runs `f` on another thread; panics if it has not returned within [`PATIENCE`]
/// (an open that blocks, on a FIFO say, fails the test instead of hanging it).
#[track_caller]
fn promptly<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(PATIENCE).unwrap_or_else(|_| panic!("{what} did not return within {PATIENCE:?}"))
}

/// The file behind a location with a path.
fn object_path(location: &Location) -> PathBuf {
    match location {
        Location::Posix(name) => name.dev_shm_path(),
        Location::File(path) => path.clone(),
        other => panic!("{other} has no path"),
    }
}

/// `chmod`/`chown` of the object behind `location` (`IPC_SET` for SysV), behind the
/// library's back, as another program or an attacker would.
fn set_owner_mode(location: &Location, uid: Option<u32>, mode: u32) {
    if let Location::Sysv(key) = location {
        // SAFETY: plain integer arguments; size 0 and no flags only look the key up.
        let id = unsafe { libc::shmget(key.raw(), 0, 0) };
        assert_ne!(id, -1, "shmget: {}", std::io::Error::last_os_error());
        // SAFETY: all-zero bytes are a valid `shmid_ds`.
        let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: `ds` is a valid, writable `shmid_ds` for the kernel to fill.
        assert_ne!(unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) }, -1, "{}", std::io::Error::last_os_error());
        ds.shm_perm.mode = mode as _;
        if let Some(uid) = uid {
            ds.shm_perm.uid = uid;
        }
        // SAFETY: `ds` is a valid `shmid_ds` filled by IPC_STAT.
        assert_ne!(unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) }, -1, "{}", std::io::Error::last_os_error());
    } else {
        let path = object_path(location);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        if let Some(uid) = uid {
            std::os::unix::fs::lchown(&path, Some(uid), None).expect("chown");
        }
    }
}

/// Runs `ring-peer create` for `location` in a child process with `umask`.
fn create_in_child(fx: &Fixture, location: &Location, umask: &str, mode: Option<&str>) {
    let mut cmd = Command::new(PEER);
    cmd.arg("create").args(location_args(location)).args(["--capacity", &CAPACITY.to_string(), "--umask", umask]);
    if let Some(mode) = mode {
        cmd.args(["--mode", mode]);
    }
    let proc = fx.spawn("create", &mut cmd);
    let report = fx.wait(&proc, PATIENCE).assert_success().summary();
    let expected = mode.unwrap_or("0600");
    assert_eq!(report.get("mode").map(|m| m.trim_start_matches('0')), Some(expected.trim_start_matches('0')));
}

// ---- Every backend -------------------------------------------------------------

fn create_gives_the_requested_geometry(backend: Backend) {
    let fx = Fixture::new("geometry");
    let location = fx.location(backend);
    let segment = builder(&location).max_record(1000).create().expect("create");
    let geometry = segment.geometry();
    assert_eq!((geometry.capacity, geometry.max_record), (CAPACITY, 1000));
    let info = segment.info().expect("info");
    assert_eq!(HEADER_SIZE, 16384, "the layout's header size changed: update the docs and this test");
    assert_eq!(info.size, 16384 + CAPACITY, "{info:?}");
    assert_eq!((info.mode, info.uid, info.backend), (0o600, euid(), backend.name()), "{info:?}");
    if backend != Backend::Anon {
        let os = os_stat(&location).expect("stat the object");
        assert_eq!((os.size, os.mode, os.uid), (16384 + CAPACITY, 0o600, euid()), "{os:?}");
    }
    let mut producer = segment.producer().expect("producer");
    assert_eq!(
        producer.try_publish(&[0; 1001]).unwrap_err(),
        shm_core::TryClaimError::TooLarge { len: 1001, max: 1000 }
    );
}

fn invalid_options_are_refused_and_leave_nothing(backend: Backend) {
    let fx = Fixture::new("invalid-options");
    let location = fx.location(backend);
    let base = Segment::builder(location.clone());
    let mut cases = vec![
        ("capacity 0", base.clone().capacity(0)),
        ("capacity 3000", base.clone().capacity(3000)),
        ("capacity 4095", base.clone().capacity(4095)),
        ("capacity 6000", base.clone().capacity(6000)),
        ("capacity 4097", base.clone().capacity(4097)),
        ("capacity 2048 (power of two below 4096)", base.clone().capacity(2048)),
        ("capacity 2 TiB", base.clone().capacity(1 << 41)),
        ("max record 0", base.clone().capacity(4096).max_record(0)),
        // A 4 KiB ring takes payloads up to 4096 / 2 - 8 = 2040 bytes.
        ("max record 2041", base.clone().capacity(4096).max_record(2041)),
        ("max record 1 GiB", base.clone().capacity(4096).max_record(1 << 30)),
        ("mode 01600 (not permission bits)", base.clone().capacity(4096).mode(0o1600)),
    ];
    if backend != Backend::File {
        cases.push(("a flush policy", base.clone().capacity(4096).flush(FlushPolicy::Sync)));
    }
    for (what, builder) in cases {
        match builder.create() {
            Err(CreateError::InvalidOptions { location: l, reason }) => {
                assert_eq!(l, location, "{what}");
                assert!(!reason.is_empty(), "{what}: no reason given");
            }
            other => panic!("{what}: expected InvalidOptions, got {other:?}"),
        }
        assert_nothing_at(&location, what);
    }
    // The largest max record is accepted, so the refusals above were about the values.
    builder(&location).capacity(4096).max_record(2040).create().expect("max record 2040 of a 4 KiB ring");
}

fn world_writable_modes_are_refused(backend: Backend) {
    let fx = Fixture::new("world-writable-mode");
    let location = fx.location(backend);
    for mode in [0o666, 0o602, 0o622, 0o777, 0o002] {
        match builder(&location).mode(mode).create() {
            Err(CreateError::InvalidOptions { .. }) => {}
            other => panic!("mode {mode:04o}: expected InvalidOptions, got {other:?}"),
        }
        assert_nothing_at(&location, &format!("mode {mode:04o}"));
    }
}

#[track_caller]
fn assert_nothing_at(location: &Location, what: &str) {
    if *location != Location::Anon {
        assert!(
            matches!(Segment::builder(location.clone()).open(), Err(OpenError::NotFound { .. })),
            "{what}: a refused create left something behind"
        );
        if let Location::Sysv(key) = location {
            assert!(!shm_core::sysv_lock_path(*key).exists(), "{what}: a refused create left its lock file");
        }
    }
}

fn one_producer_and_one_consumer_at_a_time(backend: Backend) {
    let fx = Fixture::new("one-role-each");
    let segment = builder(&fx.location(backend)).create().expect("create");
    let me = std::process::id();
    let producer = segment.producer().expect("first producer");
    let consumer = segment.consumer().expect("first consumer");
    for role in [Role::Producer, Role::Consumer] {
        let second = match role {
            Role::Producer => segment.producer().map(drop),
            Role::Consumer => segment.consumer().map(drop),
        };
        match second {
            Err(AttachError::RoleTaken { role: r, pid, .. }) => assert_eq!((r, pid), (role, Some(me))),
            other => panic!("a second {role}: expected RoleTaken, got {other:?}"),
        }
    }
    let liveness = |role| segment.participants().into_iter().find(|p| p.role == Some(role)).map(|p| p.liveness);
    assert_eq!((liveness(Role::Producer), liveness(Role::Consumer)), (Some(Liveness::Alive), Some(Liveness::Alive)));
    drop(producer);
    drop(consumer);
    // Detached at once, unless another test thread is forking a child right now: the
    // child holds a copy of the lock's file description until its exec closes it, so
    // for that moment the slot still looks alive.
    wait_until(PATIENCE, "both roles detached", || {
        (liveness(Role::Producer), liveness(Role::Consumer)) == (Some(Liveness::Detached), Some(Liveness::Detached))
    });
    let _producer = segment.producer().expect("a producer after the first detached");
    let _consumer = segment.consumer().expect("a consumer after the first detached");
    assert_eq!(liveness(Role::Producer), Some(Liveness::Alive));
}

/// A role given up is free at once, even while another thread of the process spawns
/// children: each child holds a copy of the lock's file description from its clone to
/// its exec (close-on-exec), and an attach in that moment must not be refused. For
/// every kind's roles: spsc's producer and consumer, a broadcast consumer, an mpmc worker.
fn a_role_given_up_is_free_again_while_threads_spawn(backend: Backend) {
    const ATTACHES: usize = 6000;
    let fx = Fixture::new("role-free-while-spawning");
    let segment = builder(&fx.location(backend)).create().expect("create");
    let broadcast = builder(&fx.location(backend)).kind(RingKind::Broadcast).create().expect("create broadcast");
    let mpmc = builder(&fx.location(backend)).kind(RingKind::Mpmc).create().expect("create mpmc");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let refused = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                Command::new("/bin/true").status().expect("spawn /bin/true");
            }
        });
        let refused: Vec<String> = (0..ATTACHES)
            .filter_map(|i| match i % 4 {
                0 => segment.producer().map(drop).err().map(|e| format!("producer {i}: {e}")),
                1 => segment.consumer().map(drop).err().map(|e| format!("consumer {i}: {e}")),
                2 => broadcast
                    .broadcast_consumer("again")
                    .map(drop)
                    .err()
                    .map(|e| format!("broadcast consumer {i}: {e}")),
                _ => mpmc.mpmc_worker(0).map(drop).err().map(|e| format!("mpmc worker {i}: {e}")),
            })
            .collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        refused
    });
    assert!(refused.is_empty(), "{} of {ATTACHES} attaches refused, first: {:?}", refused.len(), refused.first());
}

// ---- Every named backend --------------------------------------------------------

/// A segment whose participants all detached is unused at once, even while another
/// thread spawns children (see [`a_role_given_up_is_free_again_while_threads_spawn`]):
/// `unlink` must not call it in use.
fn unlink_after_detach_succeeds_while_threads_spawn(backend: Backend) {
    const ROUNDS: usize = 400;
    let fx = Fixture::new("unlink-while-spawning");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let refused = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                Command::new("/bin/true").status().expect("spawn /bin/true");
            }
        });
        let refused: Vec<String> = (0..ROUNDS)
            .filter_map(|i| {
                let segment = builder(&fx.location(backend)).create().expect("create");
                drop(segment.producer().expect("producer"));
                drop(segment.consumer().expect("consumer"));
                segment.unlink_unused().err().map(|e| format!("round {i}: {e}"))
            })
            .collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        refused
    });
    assert!(refused.is_empty(), "{} of {ROUNDS} unlinks refused, first: {:?}", refused.len(), refused.first());
}

fn exclusive_create_of_an_existing_name_fails(backend: Backend) {
    let fx = Fixture::new("exclusive-create");
    let location = fx.location(backend);
    let segment = builder(&location).create().expect("create");
    segment.producer().expect("producer").try_publish(b"kept").expect("publish");
    for (what, again) in [("same options", builder(&location)), ("other capacity", builder(&location).capacity(4096))] {
        match again.create() {
            Err(CreateError::Exists { location: l, owner }) => assert_eq!((l, owner), (location.clone(), Some(euid()))),
            other => panic!("{what}: a second create gave {other:?}"),
        }
    }
    // Untouched: same geometry, same records.
    let opened = Segment::builder(location.clone()).open().expect("open");
    assert_eq!(opened.geometry(), segment.geometry());
    assert_eq!(&*opened.consumer().expect("consumer").try_read().expect("the record"), b"kept");
}

fn mode_is_exact_whatever_the_umask(backend: Backend) {
    let fx = Fixture::new("mode-umask");
    for (umask, mode) in [("000", None), ("077", None), ("077", Some("0640")), ("000", Some("0640"))] {
        let location = fx.location(backend);
        create_in_child(&fx, &location, umask, mode);
        let expected = u32::from_str_radix(mode.unwrap_or("0600"), 8).expect("octal");
        let os = os_stat(&location).expect("stat");
        assert_eq!(os.mode, expected, "umask {umask}, mode {mode:?}: the object has mode {:04o}", os.mode);
        if let Location::Sysv(key) = &location {
            let lock = std::fs::symlink_metadata(shm_core::sysv_lock_path(*key)).expect("the SysV lock file");
            assert_eq!(lock.permissions().mode() & 0o7777, expected, "umask {umask}: the SysV lock file's mode");
        }
    }
}

fn a_second_handle_sees_the_same_memory(backend: Backend) {
    let fx = Fixture::new("second-handle");
    let location = fx.location(backend);
    let created = builder(&location).max_record(500).create().expect("create");
    let opened = Segment::builder(location.clone()).open().expect("open");
    assert_eq!(opened.geometry(), created.geometry());
    let mut producer = created.producer().expect("producer");
    let mut consumer = opened.consumer().expect("consumer");
    producer.try_publish(b"through the first handle").expect("publish");
    assert_eq!(&*consumer.try_read().expect("read through the second"), b"through the first handle");
    assert_eq!(created.stats().total_consumed, 1, "the consumer's release is seen through the other handle");
}

fn unlink_then_open_is_not_found(backend: Backend) {
    let fx = Fixture::new("unlink");
    let location = fx.location(backend);
    let segment = builder(&location).create().expect("create");
    let mut producer = segment.producer().expect("producer");
    let mut consumer = segment.consumer().expect("consumer");
    assert!(!segment.is_unlinked());
    Segment::unlink(&location).expect("unlink");
    assert!(matches!(Segment::builder(location.clone()).open(), Err(OpenError::NotFound { .. })));
    assert!(matches!(Segment::unlink(&location), Err(UnlinkError::NotFound { .. })));
    if let Location::Sysv(key) = &location {
        assert!(!shm_core::sysv_lock_path(*key).exists(), "unlink left the SysV lock file");
    }
    // Mapped handles keep working and know their name is gone.
    assert!(segment.is_unlinked());
    producer.try_publish(b"still here").expect("publish after unlink");
    assert_eq!(&*consumer.try_read().expect("read after unlink"), b"still here");
    // And the name is free for a new segment, which is a different one.
    let fresh = builder(&location).create().expect("create again");
    assert_eq!(fresh.stats().total_produced, 0);
    assert!(!fresh.is_unlinked() && segment.is_unlinked());
}

fn reopening_keeps_the_records(backend: Backend) {
    let fx = Fixture::new("reopen");
    let location = fx.location(backend);
    {
        let segment = builder(&location).create().expect("create");
        let mut producer = segment.producer().expect("producer");
        for record in [&b"one"[..], b"two", b"three"] {
            producer.try_publish(record).expect("publish");
        }
    } // every handle dropped: nothing maps it now
    let segment = Segment::builder(location.clone()).open().expect("re-open");
    assert_eq!(segment.geometry().capacity, CAPACITY);
    let producer = segment.producer().expect("a producer after re-opening");
    assert_eq!(producer.last_committed(), Some((0, b"three".to_vec())), "a new producer finds the last record");
    let mut consumer = segment.consumer().expect("consumer");
    for record in [&b"one"[..], b"two", b"three"] {
        assert_eq!(&*consumer.try_read().expect("a record kept across re-open"), record);
    }
    assert_eq!(consumer.try_read().unwrap_err(), TryReadError::Empty);
    let stats = segment.stats();
    assert_eq!((stats.total_produced, stats.total_consumed), (3, 3), "{stats:#?}");
}

fn a_killed_participant_is_dead_and_replaced(backend: Backend) {
    let fx = Fixture::new("killed-participant");
    let location = fx.location(backend);
    let segment = builder(&location).create().expect("create");
    let holder = |role| segment.participants().into_iter().find(|p| p.role == Some(role)).map(|p| (p.liveness, p.pid));
    for role in [Role::Producer, Role::Consumer] {
        let attach = |s: &Segment| match role {
            Role::Producer => s.producer().map(|p| Box::new(p) as Box<dyn std::any::Any>),
            Role::Consumer => s.consumer().map(|c| Box::new(c) as Box<dyn std::any::Any>),
        };
        let child = fx.spawn(
            &format!("{role}"),
            Command::new(PEER).arg("attach").args(location_args(&location)).args(["--role", &role.to_string()]),
        );
        wait_until(PATIENCE, &format!("the child is the live {role}"), || {
            holder(role) == Some((Liveness::Alive, child.pid()))
        });
        match attach(&segment) {
            Err(AttachError::RoleTaken { pid, .. }) => assert_eq!(pid, Some(child.pid()), "{role}"),
            other => panic!("a {role} beside a live one: {:?}", other.map(|_| "attached")),
        }
        fx.kill(&child);
        assert_eq!(holder(role), Some((Liveness::Dead, child.pid())), "{role} after SIGKILL");
        let replacement = attach(&segment).unwrap_or_else(|e| panic!("the dead {role}'s role is free: {e}"));
        assert_eq!(holder(role), Some((Liveness::Alive, std::process::id())));
        drop(replacement);
        // A child that another test's thread is spawning right now may hold a copy of the
        // lock's description until its exec closes it (participant::take_role_lock):
        // meanwhile the lock still reads as held.
        wait_until(PATIENCE, &format!("our {role} shows detached"), || {
            holder(role) == Some((Liveness::Detached, std::process::id()))
        });
    }
}

fn a_world_writable_object_is_not_opened(backend: Backend) {
    let fx = Fixture::new("world-writable-object");
    let location = fx.location(backend);
    builder(&location).create().expect("create");
    set_owner_mode(&location, None, 0o666);
    for read_only in [false, true] {
        let mut b = Segment::builder(location.clone());
        if read_only {
            b = b.read_only();
        }
        match b.open() {
            Err(OpenError::WorldWritable { mode, .. }) => assert_eq!(mode, 0o666),
            other => panic!("read-only {read_only}: expected WorldWritable, got {other:?}"),
        }
    }
}

fn an_object_of_another_owner_is_not_opened(backend: Backend) {
    let test = format!("an_object_of_another_owner_is_not_opened ({})", backend.name());
    if !shmring_tests::skip::root_or_skip(&test, "giving a segment to another user") {
        return;
    }
    let fx = Fixture::new("other-owner");
    let location = fx.location(backend);
    builder(&location).create().expect("create");
    const STRANGER: u32 = 54_321;
    set_owner_mode(&location, Some(STRANGER), 0o600);
    match Segment::builder(location.clone()).open() {
        Err(OpenError::WrongOwner { found, expected, .. }) => assert_eq!((found, expected), (STRANGER, 0)),
        other => panic!("expected WrongOwner, got {other:?}"),
    }
    // An operator who says any owner will do may look.
    Segment::builder(location.clone()).read_only().expected_owner(None).open().expect("open for inspection");
}

// ---- Backends with a path -------------------------------------------------------

/// A location whose object the test makes itself (and the fixture removes).
fn bare_location(fx: &Fixture, backend: Backend) -> Location {
    let location = match backend {
        Backend::Posix => Location::Posix(fx.posix_name()),
        Backend::File => Location::File(fx.path("special")),
        other => panic!("{other:?} has no path"),
    };
    fx.track_path(object_path(&location));
    location
}

/// Something other than a segment at a segment's name.
#[derive(Debug, Clone, Copy)]
enum Squatter {
    /// A symlink to a real segment (which must not be followed to it).
    LinkToSegment,
    /// A symlink to nothing (which creating must not follow to create its target).
    DanglingLink,
    Fifo,
    Directory,
}

impl Squatter {
    /// What `OpenError::NotRegular` must call it.
    fn kind(self) -> &'static str {
        match self {
            Squatter::LinkToSegment | Squatter::DanglingLink => "symbolic link",
            Squatter::Fifo => "FIFO",
            Squatter::Directory => "directory",
        }
    }
}

/// Puts `squatter` at a new name of `backend`, then checks that opening it (read-write
/// and read-only) gives `NotRegular` promptly, and creating over it gives `Exists`.
fn a_squatter_is_refused(backend: Backend, squatter: Squatter) {
    let fx = Fixture::new("squatter");
    let location = bare_location(&fx, backend);
    let path = object_path(&location);
    let elsewhere = fx.path("link-target");
    match squatter {
        Squatter::LinkToSegment => {
            let real = fx.location(backend);
            builder(&real).create().expect("create the link's target");
            std::os::unix::fs::symlink(object_path(&real), &path).expect("symlink");
        }
        Squatter::DanglingLink => std::os::unix::fs::symlink(&elsewhere, &path).expect("symlink"),
        Squatter::Fifo => nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo"),
        Squatter::Directory => std::fs::create_dir(&path).expect("mkdir"),
    }
    for read_only in [false, true] {
        let l = location.clone();
        let opened = promptly(&format!("opening {squatter:?}"), move || {
            let b = Segment::builder(l).init_timeout(Duration::from_millis(100));
            if read_only { b.read_only().open() } else { b.open() }.map(drop)
        });
        match opened {
            Err(OpenError::NotRegular { what, .. }) => assert_eq!(what, squatter.kind(), "{squatter:?}"),
            other => panic!("{squatter:?} (read-only {read_only}): expected NotRegular, got {other:?}"),
        }
    }
    let l = location.clone();
    match promptly(&format!("creating over {squatter:?}"), move || builder(&l).create().map(drop)) {
        Err(CreateError::Exists { .. }) => {}
        other => panic!("creating over {squatter:?}: expected Exists, got {other:?}"),
    }
    assert!(!elsewhere.exists(), "creating over {squatter:?} followed the link");
}

fn a_symlink_at_the_name_is_refused(backend: Backend) {
    a_squatter_is_refused(backend, Squatter::LinkToSegment);
    a_squatter_is_refused(backend, Squatter::DanglingLink);
}

fn a_fifo_at_the_name_is_refused(backend: Backend) {
    a_squatter_is_refused(backend, Squatter::Fifo);
}

fn a_directory_at_the_name_is_refused(backend: Backend) {
    a_squatter_is_refused(backend, Squatter::Directory);
}

fn a_half_created_or_foreign_object_is_not_opened(backend: Backend) {
    let fx = Fixture::new("half-created");
    let write = |contents: &[u8]| {
        let location = bare_location(&fx, backend);
        let path = object_path(&location);
        std::fs::write(&path, contents).expect("write the object");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        location
    };
    let short_wait = |l: &Location| Segment::builder(l.clone()).init_timeout(Duration::from_millis(50)).open();
    // Empty, as a creator that died before sizing it leaves it: waited for, then refused.
    match short_wait(&write(b"")) {
        Err(OpenError::NotInitialised { .. }) => {}
        other => panic!("an empty object: expected NotInitialised, got {other:?}"),
    }
    // Full-sized but not a segment.
    match short_wait(&write(&vec![0x5a; HEADER_SIZE + 4096])) {
        Err(OpenError::Header { source: shm_core::HeaderError::BadMagic { .. }, .. }) => {}
        other => panic!("a foreign object: expected a bad magic, got {other:?}"),
    }
}

// ---- The file backend ------------------------------------------------------------

fn a_world_writable_directory_is_refused(backend: Backend) {
    let fx = Fixture::new("unsafe-dir");
    let dir = fx.path("open-to-all");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    assert_eq!(backend, Backend::File);
    let location = Location::File(dir.join("segment"));
    fx.track_segment(location.clone());
    match builder(&location).create() {
        Err(CreateError::UnsafeDirectory { dir: d, .. }) => assert_eq!(Path::new(&d), dir),
        other => panic!("expected UnsafeDirectory, got {other:?}"),
    }
    assert!(!dir.join("segment").exists());
}

// ---- One test per check and backend ---------------------------------------------

macro_rules! checks {
    ($backend:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                super::$check($backend);
            }
        )*
    };
}

macro_rules! every_backend {
    ($backend:expr) => {
        checks!($backend;
            create_gives_the_requested_geometry,
            invalid_options_are_refused_and_leave_nothing,
            world_writable_modes_are_refused,
            one_producer_and_one_consumer_at_a_time,
            a_role_given_up_is_free_again_while_threads_spawn,
        );
    };
}

macro_rules! named_backend {
    ($backend:expr) => {
        every_backend!($backend);
        checks!($backend;
            exclusive_create_of_an_existing_name_fails,
            mode_is_exact_whatever_the_umask,
            a_second_handle_sees_the_same_memory,
            unlink_then_open_is_not_found,
            reopening_keeps_the_records,
            a_killed_participant_is_dead_and_replaced,
            a_world_writable_object_is_not_opened,
            an_object_of_another_owner_is_not_opened,
            unlink_after_detach_succeeds_while_threads_spawn,
        );
    };
}

macro_rules! backend_with_a_path {
    ($backend:expr) => {
        named_backend!($backend);
        checks!($backend;
            a_symlink_at_the_name_is_refused,
            a_fifo_at_the_name_is_refused,
            a_directory_at_the_name_is_refused,
            a_half_created_or_foreign_object_is_not_opened,
        );
    };
}

mod posix {
    use shmring_tests::Backend;
    backend_with_a_path!(Backend::Posix);
}

mod sysv {
    use shmring_tests::Backend;
    named_backend!(Backend::Sysv);
}

mod file {
    use shmring_tests::Backend;
    backend_with_a_path!(Backend::File);
    checks!(Backend::File; a_world_writable_directory_is_refused);
}

mod anon {
    use shmring_tests::Backend;
    every_backend!(Backend::Anon);
}

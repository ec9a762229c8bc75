//! `shmctl` refusing, through the real binary, on posix, sysv and file segments: every
//! documented exit code, each with a message that names the segment (or the option at
//! fault).
//!
//! - 64 usage: bad command lines, invalid names and keys, invalid `create` options
//!   (capacity, max record, mode, world-writable mode, group, wait, kind), each naming
//!   the option and leaving nothing behind; a reserved record type.
//! - 65 not a shmring segment or corrupt: foreign objects (`stat`, `peek`, `publish`,
//!   `unlink` without `--force`), a damaged magic, impossible cursors.
//! - 66 no such segment, for every command that takes one.
//! - 69 in use: `unlink` and `publish` while a live process holds the role (and
//!   `publish` takes over once it died).
//! - 73 exists: `create` of an existing name says who owns it and changes nothing.
//! - 74 I/O: no space for the segment, a missing input file, a missing directory.
//! - 77 permission: another user's segment (`stat` works, `publish` does not), an
//!   unreadable one, a world-writable one, a world-writable directory.
//! - `publish` of a record larger than the ring's maximum, or into a full ring.
//!
//! Tests that change owners or run `shmctl` as another user need root; they print why
//! they are skipped otherwise.

#[macro_use]
mod shmctl_support;

use shm_core::Location;
use shmctl_support::{
    CANT_CREATE, DATA, IO, NO_INPUT, NO_PERM, UNAVAILABLE, USAGE, args_on, assert_fails, attach, create, euid, exists,
    foreign_posix, foreign_sysv, name, num, poke, publish, root_or_skip, set_owner_mode, shared_location, shmctl,
    shmctl_as, shmctl_on, stat_json,
};
use shmring_tests::skip::Need;
use shmring_tests::{Backend, Fixture, os_stat};

/// Ring data bytes of the segments here.
const CAPACITY: u64 = 64 * 1024;
/// Byte offset of the producer's write cursor in the header.
const WRITE_CURSOR: usize = 128;
/// A user and group that own nothing here.
const OTHER: (u32, u32) = (65534, 65534);
/// A user, not root, who is in the group of segments [`OTHER`] owns with mode 0660.
const GROUP_MEMBER: (u32, u32) = (4243, 4242);

fn create_small(fx: &Fixture, location: &Location) {
    create(fx, location, &["--capacity", "64KiB"]);
}

// ---- 64: usage -------------------------------------------------------------------

#[test]
fn bad_command_lines_exit_64() {
    let fx = Fixture::new("usage");
    let cases: &[(&[&str], &str)] = &[
        (&[], "Usage"),
        (&["frobnicate"], "frobnicate"),
        (&["stat"], "<NAME>"),
        (&["stat", "/x", "--watch", "0s"], "positive"),
        (&["stat", "/x", "--backend", "nfs"], "nfs"),
        (&["publish", "/x"], "<DATA>"),
        (&["publish", "/x", "data", "--file", "f"], "--file"),
        (&["publish", "/x", "--type", "4294901760", "data"], "reserved"),
        (&["peek", "/x", "--hex", "--json"], "--json"),
        (&["peek", "/x", "-n", "many"], "many"),
        (&["completions", "tcsh"], "tcsh"),
        // Names and keys.
        (&["stat", "/a/b", "--backend", "posix"], "/a/b"),
        (&["stat", "/.hidden"], "/.hidden"),
        (&["stat", "0"], "IPC_PRIVATE"),
        (&["stat", "0xZZ"], "0xZZ"),
        (&["stat", "12", "--backend", "sysv", "--backend", "file"], "--backend"),
        (&["stat", "", "--backend", "file"], "path"),
        (&["unlink", "ftok:/no/such/path:1"], "ftok"),
    ];
    for (args, needle) in cases {
        let f = shmctl(&fx, *args);
        assert_eq!(f.status.code(), Some(USAGE), "shmctl {args:?}: {f:?}");
        let said = format!("{}{}", f.stdout, f.stderr);
        assert!(said.contains(needle), "shmctl {args:?} does not mention {needle:?}:\n{said}");
    }
    // Help and version are not errors.
    for args in [&["--help"][..], &["--version"], &["stat", "--help"]] {
        let f = shmctl(&fx, args);
        f.assert_success();
        assert!(f.stdout.contains("shmctl"), "{}", f.stdout);
    }
}

fn invalid_create_options_exit_64_and_leave_nothing(backend: Backend) {
    let fx = Fixture::new("create-invalid");
    let location = fx.location(backend);
    let cases: &[(&[&str], &str)] = &[
        (&["--capacity", "lots"], "--capacity"),
        (&["--capacity", "5000"], "capacity 5000"),
        (&["--capacity", "2KiB"], "capacity 2048"),
        (&["--capacity", "2TiB"], "capacity"),
        (&["--capacity", "64KiB", "--max-record", "40000"], "max record 40000"),
        (&["--max-record", "0"], "max record 0"),
        (&["--max-record", "big"], "--max-record"),
        (&["--mode", "999"], "--mode"),
        (&["--mode", "rw-------"], "--mode"),
        (&["--mode", "0666"], "mode 0666"),
        (&["--mode", "0602"], "mode 0602"),
        (&["--mode", "04600"], "mode 4600"),
        (&["--group", "no-such-group-shmring"], "--group"),
        (&["--wait", "sometimes"], "--wait"),
        (&["--kind", "lifo"], "--kind"),
    ];
    for (args, needle) in cases {
        let f = shmctl_on(&fx, "create", &location, args);
        assert_eq!(f.status.code(), Some(USAGE), "create {args:?}: {f:?}");
        assert!(f.stderr.contains(needle), "create {args:?} does not mention {needle:?}:\n{}", f.stderr);
        assert!(!exists(&location), "create {args:?} left {location} behind");
    }
    // What the library refuses names the segment too.
    let f = shmctl_on(&fx, "create", &location, &["--mode", "0666"]);
    assert_fails(&f, USAGE, &[&name(&location), "not writable by others"]);
}

// ---- 65: not a shmring segment, or corrupt ----------------------------------------

/// A foreign object the size of a segment with random-looking bytes: stat, peek and
/// publish say it is not a shmring segment; unlink refuses it without --force.
fn a_foreign_object_is_not_a_segment(backend: Backend) {
    let fx = Fixture::new("foreign");
    let garbage: Vec<u8> = (0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 1).collect();
    let location = match backend {
        Backend::Posix => foreign_posix(&fx, &garbage),
        Backend::Sysv => {
            let (location, _) = foreign_sysv(&fx, garbage.len());
            poke(&location, 0, &garbage);
            location
        }
        Backend::File => {
            let location = fx.location(Backend::File);
            let Location::File(path) = &location else { unreachable!() };
            std::fs::write(path, &garbage).expect("write a foreign file");
            location
        }
        Backend::Anon => unreachable!("not named"),
    };
    let n = name(&location);
    for args in [&["stat"][..], &["stat", "--json"], &["peek"], &["publish", "x"]] {
        let f = shmctl_on(&fx, args[0], &location, &args[1..]);
        assert_fails(&f, DATA, &[&n, "not a shmring segment"]);
    }
    let refused = shmctl_on(&fx, "unlink", &location, &[]);
    assert_fails(&refused, DATA, &[&n, "--force"]);
    assert!(exists(&location), "unlink removed a foreign object without --force");
    shmctl_on(&fx, "unlink", &location, &["--force"]).assert_success();
    assert!(!exists(&location));
}

/// A foreign object too small to hold a header cannot be a segment being created (a
/// creator sizes it in one step), so it is "not a shmring segment" (65), at once.
fn a_small_foreign_object_is_not_a_segment(backend: Backend) {
    let fx = Fixture::new("foreign-small");
    let location = match backend {
        Backend::Posix => foreign_posix(&fx, &[0x42; 100]),
        Backend::Sysv => foreign_sysv(&fx, 4096).0,
        other => unreachable!("{other:?}"),
    };
    let refused = shmctl_on(&fx, "unlink", &location, &[]);
    assert_fails(&refused, DATA, &[&name(&location), "--force"]);
    assert!(exists(&location));
    let f = shmctl_on(&fx, "stat", &location, &[]);
    assert_fails(&f, DATA, &[&name(&location)]);
}

fn a_damaged_segment_is_corrupt(backend: Backend) {
    let fx = Fixture::new("corrupt");
    let location = fx.location(backend);
    create_small(&fx, &location);
    publish(&fx, &location, "before");
    let n = name(&location);
    // A write cursor far beyond the read cursor plus the capacity.
    poke(&location, WRITE_CURSOR, &(CAPACITY * 10).to_le_bytes());
    // (That peek's message names no segment is checked in `failures_name_the_segment`.)
    assert_fails(&shmctl_on(&fx, "peek", &location, &[]), DATA, &["more bytes in flight than the ring holds"]);
    assert_fails(&shmctl_on(&fx, "publish", &location, &["x"]), DATA, &[&n]);
    let stat = stat_json(&fx, &location);
    assert!(num(&stat, "/ring/used_bytes") <= CAPACITY, "{stat:#}");
    // Another magic: not ours at all.
    poke(&location, 0, b"NOTMINE!");
    for args in [&["stat"][..], &["peek"], &["publish", "x"]] {
        assert_fails(&shmctl_on(&fx, args[0], &location, &args[1..]), DATA, &[&n, "not a shmring segment"]);
    }
    assert_fails(&shmctl_on(&fx, "unlink", &location, &[]), DATA, &[&n, "--force"]);
    shmctl_on(&fx, "unlink", &location, &["--force"]).assert_success();
    assert!(!exists(&location));
}

// ---- 66: no such segment ----------------------------------------------------------

fn a_missing_segment_exits_66(backend: Backend) {
    let fx = Fixture::new("missing");
    let location = fx.location(backend);
    let n = name(&location);
    for args in
        [&["stat"][..], &["stat", "--json"], &["stat", "--watch", "200ms"], &["peek"], &["publish", "x"], &["unlink"]]
    {
        let f = shmctl_on(&fx, args[0], &location, &args[1..]);
        assert_fails(&f, NO_INPUT, &[&n, "no such segment"]);
        assert!(f.stdout.is_empty(), "{args:?} printed {:?}", f.stdout);
    }
    assert_fails(&shmctl_on(&fx, "unlink", &location, &["--force"]), NO_INPUT, &[&n]);
    assert!(!exists(&location), "nothing was created on the way");
}

// ---- 69: in use -------------------------------------------------------------------

fn publish_while_a_producer_is_attached_exits_69(backend: Backend) {
    let fx = Fixture::new("publish-busy");
    let location = fx.location(backend);
    create_small(&fx, &location);
    let producer = attach(&fx, &location, "producer");
    let f = shmctl_on(&fx, "publish", &location, &["x"]);
    assert_fails(&f, UNAVAILABLE, &[&name(&location), "producer", &producer.pid().to_string()]);
    assert_eq!(num(&stat_json(&fx, &location), "/counters/total_produced"), 0);
    // Once it died, the role is free.
    fx.kill(&producer);
    publish(&fx, &location, "after");
    assert_eq!(num(&stat_json(&fx, &location), "/counters/total_produced"), 1);
}

// ---- 73: exists -------------------------------------------------------------------

fn create_of_an_existing_name_exits_73(backend: Backend) {
    let fx = Fixture::new("create-exists");
    let location = fx.location(backend);
    create_small(&fx, &location);
    publish(&fx, &location, "kept");
    let before = os_stat(&location).expect("exists");
    let f = shmctl_on(&fx, "create", &location, &["--capacity", "1MiB", "--mode", "0640"]);
    assert_fails(&f, CANT_CREATE, &[&name(&location), "already exists", &format!("owned by uid {}", euid())]);
    assert_eq!(os_stat(&location).expect("exists"), before, "the existing object changed");
    let stat = stat_json(&fx, &location);
    assert_eq!([num(&stat, "/ring/capacity"), num(&stat, "/counters/total_produced")], [CAPACITY, 1]);
    if root_or_skip("create_of_an_existing_name_exits_73 (another owner)") {
        set_owner_mode(&location, Some(OTHER), 0o600);
        let f = shmctl_on(&fx, "create", &location, &[]);
        assert_fails(&f, CANT_CREATE, &[&name(&location), &format!("owned by uid {}", OTHER.0)]);
    }
}

// ---- 74: I/O ----------------------------------------------------------------------

#[test]
fn create_without_space_exits_74_and_leaves_nothing() {
    let fx = Fixture::new("no-space");
    let location = fx.location(Backend::Posix);
    // tmpfs refuses an fallocate beyond its size at once; without a size limit it would
    // try to allocate all of it.
    let shm = nix::sys::statvfs::statvfs("/dev/shm").expect("statvfs /dev/shm");
    let size = shm.blocks() * shm.fragment_size();
    if size == 0 || size >= 1 << 40 {
        let reason = format!("/dev/shm holds {size} bytes: unlimited, or 1 TiB or more");
        shmring_tests::skip::skip("create_without_space_exits_74_and_leaves_nothing", Need::Setup, &reason);
        return;
    }
    let f = shmctl_on(&fx, "create", &location, &["--capacity", "1TiB"]);
    assert_fails(&f, IO, &[&name(&location), "cannot reserve"]);
    assert!(!exists(&location), "a failed create left {location} behind");
}

#[test]
fn a_missing_input_or_directory_exits_74() {
    let fx = Fixture::new("io");
    let location = fx.location(Backend::Posix);
    create_small(&fx, &location);
    let missing = fx.path("no-such-record");
    let f = shmctl_on(&fx, "publish", &location, &["--file", &missing.display().to_string()]);
    assert_fails(&f, IO, &[&missing.display().to_string()]);
    let nowhere = Location::File(fx.path("no-such-dir").join("segment"));
    let f = shmctl_on(&fx, "create", &nowhere, &[]);
    assert_fails(&f, IO, &[&name(&nowhere)]);
}

// ---- 77: permission ---------------------------------------------------------------

/// Another user's segment: anyone who can read it may inspect it, but only its owner
/// publishes (here a member of its group, whom the kernel would let write).
fn another_users_segment_is_read_but_not_written(backend: Backend) {
    if !root_or_skip("another_users_segment_is_read_but_not_written") {
        return;
    }
    let fx = Fixture::new("other-owner");
    let location = shared_location(&fx, backend);
    create_small(&fx, &location);
    publish(&fx, &location, "theirs");
    set_owner_mode(&location, Some((OTHER.0, GROUP_MEMBER.1)), 0o660);
    let n = name(&location);

    let stat = stat_json(&fx, &location);
    assert_eq!(num(&stat, "/segment/uid"), u64::from(OTHER.0), "{stat:#}");
    let (uid, gid) = GROUP_MEMBER;
    let f = shmctl_as(&fx, uid, gid, args_on("stat", &location, &[]));
    f.assert_success();
    assert!(f.stdout.contains("nobody") || f.stdout.contains(&OTHER.0.to_string()), "{}", f.stdout);
    shmctl_as(&fx, uid, gid, args_on("peek", &location, &[])).assert_success();

    let f = shmctl_as(&fx, uid, gid, args_on("publish", &location, &["mine"]));
    assert_fails(&f, NO_PERM, &[&n, &format!("owned by uid {}", OTHER.0)]);
    assert_eq!(num(&stat_json(&fx, &location), "/counters/total_produced"), 1, "nothing published");
}

/// A segment another user may not read at all.
fn an_unreadable_segment_exits_77(backend: Backend) {
    if !root_or_skip("an_unreadable_segment_exits_77") {
        return;
    }
    let fx = Fixture::new("unreadable");
    let location = shared_location(&fx, backend);
    create_small(&fx, &location);
    let n = name(&location);
    let (uid, gid) = OTHER;
    for args in [&["stat"][..], &["peek"], &["publish", "x"], &["unlink"]] {
        let f = shmctl_as(&fx, uid, gid, args_on(args[0], &location, &args[1..]));
        assert_fails(&f, NO_PERM, &[&n, "os error"]);
    }
    assert!(exists(&location), "another user removed it");
}

fn a_world_writable_segment_is_refused_77(backend: Backend) {
    let fx = Fixture::new("world-writable");
    let location = fx.location(backend);
    create_small(&fx, &location);
    set_owner_mode(&location, None, 0o666);
    let f = shmctl_on(&fx, "publish", &location, &["x"]);
    assert_fails(&f, NO_PERM, &[&name(&location), "0666", "every user"]);
    set_owner_mode(&location, None, 0o600);
    assert_eq!(num(&stat_json(&fx, &location), "/counters/total_produced"), 0, "nothing published");
}

#[test]
fn a_world_writable_directory_is_refused_77() {
    let fx = Fixture::new("unsafe-dir");
    let dir = fx.path("open-to-all");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).expect("chmod");
    let location = Location::File(dir.join("segment"));
    fx.track_segment(location.clone());
    let f = shmctl_on(&fx, "create", &location, &[]);
    assert_fails(&f, NO_PERM, &[&name(&location), "writable by other users"]);
    assert!(!exists(&location));
}

// ---- publish: records that do not fit ---------------------------------------------

fn publish_of_a_record_larger_than_max_record_fails(backend: Backend) {
    let fx = Fixture::new("too-large");
    let location = fx.location(backend);
    create(&fx, &location, &["--capacity", "64KiB", "--max-record", "100"]);
    let f = shmctl_on(&fx, "publish", &location, &[&"x".repeat(101)]);
    assert_ne!(f.status.code(), Some(0), "{f:?}");
    assert!(f.stderr.contains("101 bytes") && f.stderr.contains("maximum of 100"), "{}", f.stderr);
    assert_eq!(num(&stat_json(&fx, &location), "/counters/total_produced"), 0, "nothing published");
    publish(&fx, &location, &"x".repeat(100));
}

/// Fills a 4 KiB ring with 100-byte records until `publish --timeout` gives up; returns
/// that refusal.
fn fill_until_refused(fx: &Fixture, location: &Location) -> shmring_tests::Finished {
    create(fx, location, &["--capacity", "4KiB", "--max-record", "100"]);
    let record = "y".repeat(100);
    for published in 0.. {
        let f = shmctl_on(fx, "publish", location, &["--timeout", "50ms", &record]);
        if !f.status.success() {
            // 4096 bytes of ring hold 36 frames of 112 bytes.
            assert_eq!(published, 4096 / 112, "refused after {published} records: {f:?}");
            return f;
        }
    }
    unreachable!()
}

fn publish_into_a_full_ring_times_out(backend: Backend) {
    let fx = Fixture::new("full");
    let location = fx.location(backend);
    let f = fill_until_refused(&fx, &location);
    assert_ne!(f.status.code(), Some(0));
    assert!(f.stderr.contains("full"), "{}", f.stderr);
    assert_eq!(num(&stat_json(&fx, &location), "/counters/total_produced"), 36);
}

// ---- Messages ---------------------------------------------------------------------

/// Every refusal names the segment, `publish`'s and `peek`'s included.
#[test]
fn failures_name_the_segment() {
    let fx = Fixture::new("names");
    let too_large = fx.location(Backend::Posix);
    create(&fx, &too_large, &["--capacity", "64KiB", "--max-record", "100"]);
    let full = fx.location(Backend::Posix);
    let corrupt = fx.location(Backend::Posix);
    create_small(&fx, &corrupt);
    poke(&corrupt, WRITE_CURSOR, &(CAPACITY * 10).to_le_bytes());
    let failures = [
        (&too_large, shmctl_on(&fx, "publish", &too_large, &[&"x".repeat(101)])),
        (&full, fill_until_refused(&fx, &full)),
        (&corrupt, shmctl_on(&fx, "peek", &corrupt, &[])),
    ];
    let unnamed: Vec<&str> =
        failures.iter().filter(|(l, f)| !f.stderr.contains(&name(l))).map(|(_, f)| f.stderr.trim()).collect();
    assert!(unnamed.is_empty(), "messages that do not name their segment:\n{}", unnamed.join("\n"));
}

/// Each cause is said once: `shmctl: /x: permission denied (Permission denied (os error
/// 13)): Permission denied (os error 13)` says it twice.
#[test]
fn error_messages_state_their_cause_once() {
    let fx = Fixture::new("cause-once");
    let foreign = foreign_posix(&fx, &[0x5a; 20_000]);
    let f = shmctl_on(&fx, "stat", &foreign, &[]);
    assert_fails(&f, DATA, &["not a shmring segment"]);
    assert_eq!(f.stderr.matches("not a shmring segment").count(), 1, "{}", f.stderr);
    if root_or_skip("error_messages_state_their_cause_once (permission)") {
        let location = fx.location(Backend::Posix);
        create_small(&fx, &location);
        let f = shmctl_as(&fx, OTHER.0, OTHER.1, args_on("stat", &location, &[]));
        assert_fails(&f, NO_PERM, &["os error 13"]);
        assert_eq!(f.stderr.matches("os error 13").count(), 1, "{}", f.stderr);
    }
}

// ---- One test per check and backend ---------------------------------------------

macro_rules! every_backend {
    ($backend:ident) => {
        checks!($backend:
            invalid_create_options_exit_64_and_leave_nothing,
            a_foreign_object_is_not_a_segment,
            a_damaged_segment_is_corrupt,
            a_missing_segment_exits_66,
            publish_while_a_producer_is_attached_exits_69,
            create_of_an_existing_name_exits_73,
            another_users_segment_is_read_but_not_written,
            an_unreadable_segment_exits_77,
            a_world_writable_segment_is_refused_77,
            publish_of_a_record_larger_than_max_record_fails,
            publish_into_a_full_ring_times_out,
        );
    };
}

mod posix {
    every_backend!(Posix);
    checks!(Posix: a_small_foreign_object_is_not_a_segment);
}

mod sysv {
    every_backend!(Sysv);
    checks!(Sysv: a_small_foreign_object_is_not_a_segment);
}

mod file {
    every_backend!(File);
}

/// `peek` reads every kind of ring: on a healthy, empty mpsc, broadcast or mpmc ring it
/// says nothing is waiting and exits 0, never 65 "corrupt" about a ring that is fine. A
/// consumer name is a usage error (64) on a ring whose consumers have no names, and a
/// name no broadcast consumer holds is 66.
#[test]
fn peek_reads_every_kind_and_refuses_a_consumer_name_it_cannot_use() {
    let fx = shmring_tests::Fixture::new("peek-kinds");
    for kind in ["mpsc", "broadcast", "mpmc"] {
        let ring = fx.location(shmring_tests::Backend::File);
        create(&fx, &ring, &["--capacity", "4KiB", "--kind", kind]);
        let f = shmctl_on(&fx, "peek", &ring, &[]);
        f.assert_code(0);
        assert!(f.stdout.contains("no records waiting"), "{kind}: {}", f.stdout);
        let named = shmctl_on(&fx, "peek", &ring, &["--consumer", "recorder"]);
        if kind == "broadcast" {
            assert_fails(&named, NO_INPUT, &["no broadcast consumer is named", "recorder"]);
        } else {
            assert_fails(&named, USAGE, &[kind, "has no named consumers"]);
        }
        // The ring was only looked at: stat still reads it as healthy.
        shmctl_on(&fx, "stat", &ring, &[]).assert_code(0);
    }
}

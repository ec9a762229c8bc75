//! Placement options on real segments: a NUMA binding, huge pages, prefaulting.
//!
//! - `numa_*`: `numa_node(Some(0))` binds every page of the segment to node 0, as the
//!   kernel reports it (`/proc/self/numa_maps` says `bind:0` and counts pages on `N0`
//!   only; `get_mempolicy` through [`shm_core::SegmentInfo::numa_node`]), for the creator
//!   and for a later opener; a segment made without it is not bound (the control). A node
//!   that does not exist is refused, naming it and the nodes that do, and nothing is left.
//! - `hugepages_*`: POSIX and a file off hugetlbfs are refused with the fix; asking for more
//!   huge pages than are free is refused before anything is created, naming the segment,
//!   the pages needed and free, and the `sysctl`; with pages free (an operator ran
//!   `echo 64 > /proc/sys/vm/nr_hugepages`), SysV and anon segments get them (bound to node
//!   0 as well), and so does a file on a hugetlbfs mount if there is one. A case the
//!   machine cannot run says so visibly, and fails under `SHMRING_NO_SKIPS=1` (CI
//!   reserves huge pages and mounts hugetlbfs): see `tests/skip.rs` of the workspace.
//! - `prefault_*`: with `prefault`, every page is resident (`mincore`) and mapped into the
//!   creator (its `Rss` is the whole segment), and an opener with `prefault` maps every
//!   page too; without it, only what the header touched is mapped (the control).
//!
//! Every segment has a unique name and is unlinked on drop, so tests run in parallel.

use std::os::unix::fs::DirBuilderExt;
use std::sync::atomic::{AtomicU32, Ordering};

use shm_core::layout::HEADER_SIZE;
use shm_core::placement::HugePages;
use shm_core::{CreateError, Location, OpenError, Segment, SysvKey};

// The workspace's one way of skipping (its `root_or_skip` is not needed here).
#[allow(dead_code)]
#[path = "../../../tests/skip.rs"]
mod skip;
use skip::{Need, skip};

const CAP: u64 = 1 << 20;

/// A unique location of `backend` (`posix`, `sysv`, `anon`), unlinked on drop.
struct Named(Location);

impl Named {
    fn new(backend: &str) -> Named {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let location = match backend {
            "posix" => Location::posix(&format!("/shmring-placement-{pid}-{n}")).expect("valid name"),
            "sysv" => Location::Sysv(free_sysv_key(pid, n)),
            "anon" => Location::Anon,
            other => panic!("no backend {other}"),
        };
        Named(location)
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = Segment::unlink(&self.0);
    }
}

/// A directory removed on drop.
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_sysv_key(pid: u32, n: u32) -> SysvKey {
    for attempt in 0..0x100u32 {
        let raw = 0x5000_0000 | ((pid & 0xfff) << 16) | ((n & 0xff) << 8) | attempt;
        let key = SysvKey::new(raw as i32).expect("not IPC_PRIVATE");
        // SAFETY: plain integer arguments; size 0 and no flags only look the key up.
        if unsafe { libc::shmget(key.raw(), 0, 0) } == -1 {
            return key;
        }
    }
    panic!("no free SysV key");
}

/// One line of `/proc/self/maps`, `numa_maps` or `smaps` headers: where a mapping of a
/// segment is, found by the path the kernel shows for it.
#[derive(Debug, Clone)]
struct Mapped {
    start: usize,
    end: usize,
    /// Its `numa_maps` line.
    numa: String,
    /// Its `Rss` in bytes (`smaps`).
    rss: u64,
}

/// The mappings of this process of the path `needle`, lowest address first.
fn mappings_of(needle: &str) -> Vec<Mapped> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read smaps");
    let numa_maps = std::fs::read_to_string("/proc/self/numa_maps").expect("read numa_maps");
    let mut out = Vec::new();
    let mut current: Option<Mapped> = None;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            out.extend(current.take());
            if line.ends_with(needle) || line.ends_with(&format!("{needle} (deleted)")) {
                let numa = numa_maps
                    .lines()
                    .find(|l| {
                        l.split_whitespace().next().and_then(|s| usize::from_str_radix(s, 16).ok()) == Some(start)
                    })
                    .unwrap_or_default()
                    .to_owned();
                current = Some(Mapped { start, end, numa, rss: 0 });
            }
        } else if let (Some(m), Some(kb)) = (current.as_mut(), line.strip_prefix("Rss:")) {
            m.rss = kb.trim().trim_end_matches("kB").trim().parse::<u64>().expect("Rss in kB") * 1024;
        }
    }
    out.extend(current);
    out.sort_by_key(|m| m.start);
    out
}

/// How the kernel names a segment's mapping.
fn needle(location: &Location) -> String {
    match location {
        Location::Posix(name) => format!("/dev/shm{}", name.as_str()),
        Location::Sysv(key) => format!("/SYSV{:08x}", key.raw() as u32),
        other => panic!("no path for {other}"),
    }
}

/// Pages of each node in a `numa_maps` line: `N0=12 N1=3` -> [(0, 12), (1, 3)].
fn pages_per_node(numa: &str) -> Vec<(u32, u64)> {
    numa.split_whitespace()
        .filter_map(|w| w.strip_prefix('N')?.split_once('='))
        .filter_map(|(n, c)| Some((n.parse().ok()?, c.parse().ok()?)))
        .collect()
}

#[test]
fn numa_node_0_binds_every_page_to_node_0() {
    for backend in ["posix", "sysv"] {
        let named = Named::new(backend);
        let segment = Segment::builder(named.0.clone())
            .capacity(CAP)
            .numa_node(Some(0))
            .prefault(true)
            .create()
            .unwrap_or_else(|e| panic!("{backend}: {e}"));
        assert_eq!(segment.info().expect("info").numa_node, Some(0), "{backend}: the creator's policy");
        let creator = mappings_of(&needle(&named.0));
        assert_eq!(creator.len(), 1, "{backend}: {creator:?}");
        let opened = Segment::builder(named.0.clone()).open().expect("open");
        assert_eq!(opened.info().expect("info").numa_node, Some(0), "{backend}: an opener sees the segment's policy");

        let maps = mappings_of(&needle(&named.0));
        assert_eq!(maps.len(), 2, "{backend}: creator and opener: {maps:?}");
        let pages = (HEADER_SIZE as u64 + CAP) / 4096;
        for m in &maps {
            assert!(m.numa.split_whitespace().nth(1) == Some("bind:0"), "{backend}: not bound to node 0: {}", m.numa);
            let nodes = pages_per_node(&m.numa);
            if m.start == creator[0].start {
                // The creator prefaulted: all its pages are mapped, all on node 0.
                assert_eq!(nodes, [(0, pages)], "{backend}: {}", m.numa);
            }
            assert!(nodes.iter().all(|&(node, _)| node == 0), "{backend}: pages off node 0: {}", m.numa);
        }
        println!("{backend}: {}", creator[0].numa);
    }
}

#[test]
fn numa_anon_segment_is_bound_too() {
    let named = Named::new("anon");
    let segment = Segment::builder(named.0.clone()).capacity(CAP).numa_node(Some(0)).create().expect("create");
    assert_eq!(segment.info().expect("info").numa_node, Some(0));
}

#[test]
fn numa_control_a_segment_without_a_node_is_not_bound() {
    let named = Named::new("posix");
    let segment = Segment::builder(named.0.clone()).capacity(CAP).create().expect("create");
    assert_eq!(segment.info().expect("info").numa_node, None);
    let maps = mappings_of(&needle(&named.0));
    assert_eq!(maps[0].numa.split_whitespace().nth(1), Some("default"), "{maps:?}");
}

#[test]
fn numa_node_that_does_not_exist_is_refused_naming_it() {
    for backend in ["posix", "sysv", "anon"] {
        let named = Named::new(backend);
        let err = Segment::builder(named.0.clone()).capacity(CAP).numa_node(Some(999)).create().expect_err("node 999");
        let message = err.to_string();
        assert!(matches!(err, CreateError::InvalidOptions { .. }), "{backend}: {err:?}");
        assert!(message.contains("NUMA node 999 does not exist"), "{backend}: {message}");
        assert!(message.contains("node(s) 0"), "{backend}: should list the nodes there are: {message}");
        if backend != "anon" {
            let opened = Segment::builder(named.0.clone()).open();
            assert!(matches!(opened, Err(OpenError::NotFound { .. })), "{backend}: left something behind");
        }
    }
}

#[test]
fn hugepages_on_posix_is_refused_with_the_fix() {
    let named = Named::new("posix");
    let err = Segment::builder(named.0.clone()).hugepages(true).create().expect_err("posix cannot");
    let message = err.to_string();
    assert!(message.contains("hugetlbfs") && message.contains("sysv"), "{message}");
    assert!(message.contains(named.0.to_string().as_str()), "names the segment: {message}");
}

#[test]
fn hugepages_on_a_file_off_hugetlbfs_is_refused_with_the_fix() {
    let dir = std::env::temp_dir().join(format!("shmring-placement-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("ring");
    let location = Location::File(path.clone());
    let result = Segment::builder(location).hugepages(true).create();
    let exists = path.exists();
    let _ = std::fs::remove_dir_all(&dir);
    let message = result.expect_err("not hugetlbfs").to_string();
    assert!(message.contains("is not one") && message.contains("mount -t hugetlbfs"), "{message}");
    assert!(!exists, "left the file behind");
}

/// The huge page pool, or `None` after printing why `test` is skipped.
fn huge_page_pool(test: &str) -> Option<HugePages> {
    HugePages::read().inspect_err(|e| skip(test, Need::Setup, &e.to_string())).ok()
}

#[test]
fn hugepages_more_than_are_free_is_refused_naming_the_shortage() {
    let Some(pool) = huge_page_pool("hugepages_more_than_are_free") else { return };
    // The smallest ring that needs more pages than are free.
    let want_pages = pool.available() + 1;
    let capacity = (want_pages * pool.page_size).next_power_of_two();
    if capacity > shm_core::layout::MAX_CAPACITY {
        let reason = format!("{} huge pages free, more than a 1 TiB ring needs", want_pages - 1);
        skip("hugepages_more_than_are_free", Need::Setup, &reason);
        return;
    }
    for backend in ["sysv", "anon"] {
        let named = Named::new(backend);
        let err = Segment::builder(named.0.clone()).capacity(capacity).hugepages(true).create().expect_err("too few");
        let message = err.to_string();
        let CreateError::HugePages { needed, available, total, page_size, .. } = err else {
            panic!("{backend}: not a huge page shortage: {err:?}");
        };
        assert_eq!(page_size, pool.page_size);
        assert_eq!(needed, (HEADER_SIZE as u64 + capacity).div_ceil(page_size), "{backend}");
        assert!(needed > available, "{backend}: {needed} needed, {available} free");
        let fix = format!("sysctl vm.nr_hugepages={}", total + needed - available);
        assert!(message.contains(&fix), "{backend}: {message}");
        assert!(message.contains(&format!("needs {needed} huge page(s)")), "{backend}: {message}");
        assert!(message.contains(&format!("{available} are free")), "{backend}: {message}");
        assert!(message.contains(&named.0.to_string()), "{backend}: names the segment: {message}");
        if backend == "sysv" {
            let opened = Segment::builder(named.0.clone()).open();
            assert!(matches!(opened, Err(OpenError::NotFound { .. })), "left something behind");
        }
        println!("{backend}: {message}");
    }
}

#[test]
fn hugepages_when_free_back_sysv_and_anon_segments() {
    let Some(pool) = huge_page_pool("hugepages_when_free") else { return };
    let needed = (HEADER_SIZE as u64 + CAP).div_ceil(pool.page_size);
    // Two segments at once, as the tests may run in parallel with the shortage test.
    if pool.available() < 2 * needed {
        let reason = format!(
            "{} huge page(s) free, {} needed (reserve some: echo 64 > /proc/sys/vm/nr_hugepages)",
            pool.available(),
            2 * needed
        );
        skip("hugepages_when_free", Need::Setup, &reason);
        return;
    }
    for backend in ["sysv", "anon"] {
        let named = Named::new(backend);
        let segment = Segment::builder(named.0.clone())
            .capacity(CAP)
            .hugepages(true)
            .numa_node(Some(0))
            .create()
            .unwrap_or_else(|e| panic!("{backend}: {e}"));
        let info = segment.info().expect("info");
        assert_eq!(info.numa_node, Some(0), "{backend}: bound as well");
        assert_eq!(info.size % pool.page_size, 0, "{backend}: rounded to huge pages: {info:?}");
        assert!(info.size >= HEADER_SIZE as u64 + CAP);
        let mut producer = segment.producer().expect("producer");
        let mut consumer = segment.consumer().expect("consumer");
        producer.try_publish(b"huge").expect("publish");
        assert_eq!(&*consumer.try_read().expect("read"), b"huge");
        if backend == "sysv" {
            let maps = mappings_of(&needle(&named.0));
            let kib = pool.page_size / 1024;
            assert!(maps[0].numa.contains(&format!("kernelpagesize_kB={kib}")), "{backend}: {maps:?}");
            let opened = Segment::builder(named.0.clone()).open().expect("an opener maps it whole");
            assert_eq!(opened.geometry().capacity, CAP);
        }
        println!("{backend}: {} bytes of {} KiB pages", info.size, pool.page_size / 1024);
    }
    let mounts = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    let Some(mount) = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"hugetlbfs")).then(|| f[1].to_owned())
    }) else {
        skip(
            "hugepages_when_free (file)",
            Need::Setup,
            "no hugetlbfs mounted (mount -t hugetlbfs none /dev/hugepages)",
        );
        return;
    };
    let dir = std::path::Path::new(&mount).join(format!("shmring-placement-{}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir).expect("a private directory on hugetlbfs");
    let dir = RemoveDir(dir);
    let segment = Segment::builder(Location::File(dir.0.join("ring")))
        .capacity(CAP)
        .hugepages(true)
        .create()
        .unwrap_or_else(|e| panic!("file on {mount}: {e}"));
    let size = segment.info().expect("info").size;
    assert_eq!(size % pool.page_size, 0, "file on {mount}: rounded to huge pages");
    segment.producer().expect("producer").try_publish(b"file").expect("publish");
    println!("file on {mount}: {size} bytes");
}

/// Pages of the mapping `m` that `mincore` reports resident.
fn resident_pages(m: &Mapped) -> usize {
    let pages = (m.end - m.start) / 4096;
    let mut vec = vec![0u8; pages];
    // SAFETY: `m` is a live mapping of this process (its segment is alive in the caller),
    // page-aligned, and `vec` has one byte per page of it for the kernel to fill.
    let r = unsafe { libc::mincore(m.start as *mut libc::c_void, m.end - m.start, vec.as_mut_ptr()) };
    assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
    vec.iter().filter(|&&b| b & 1 != 0).count()
}

#[test]
fn prefault_maps_every_page_at_create_and_at_open() {
    let size = HEADER_SIZE as u64 + CAP;
    for backend in ["posix", "sysv"] {
        let named = Named::new(backend);
        let segment = Segment::builder(named.0.clone()).capacity(CAP).prefault(true).create().expect("create");
        let maps = mappings_of(&needle(&named.0));
        assert_eq!(maps.len(), 1, "{maps:?}");
        assert_eq!(resident_pages(&maps[0]) as u64, size / 4096, "{backend}: mincore");
        assert_eq!(maps[0].rss, size, "{backend}: every page mapped into the creator");

        let opened = Segment::builder(named.0.clone()).prefault(true).open().expect("open");
        let maps = mappings_of(&needle(&named.0));
        assert_eq!(maps.len(), 2, "{maps:?}");
        assert!(maps.iter().all(|m| m.rss == size), "{backend}: the opener's mapping too: {maps:?}");
        drop((segment, opened));
    }
}

#[test]
fn prefault_control_without_it_only_the_header_is_mapped() {
    let named = Named::new("posix");
    let _segment = Segment::builder(named.0.clone()).capacity(CAP).create().expect("create");
    let maps = mappings_of(&needle(&named.0));
    // posix_fallocate reserved every page, but only the pages create wrote (the header's)
    // are filled in and mapped into this process.
    assert!(resident_pages(&maps[0]) as u64 <= HEADER_SIZE as u64 / 4096, "{maps:?}");
    assert!(maps[0].rss <= HEADER_SIZE as u64, "more than the header mapped: {maps:?}");
    let _opened = Segment::builder(named.0.clone()).open().expect("open");
    let maps = mappings_of(&needle(&named.0));
    assert!(maps.iter().all(|m| m.rss <= HEADER_SIZE as u64), "{maps:?}");
}

#[test]
fn prefault_of_an_open_segment_maps_every_page_into_this_process() {
    let size = HEADER_SIZE as u64 + CAP;
    let named = Named::new("posix");
    let _segment = Segment::builder(named.0.clone()).capacity(CAP).create().expect("create");
    let opened = Segment::builder(named.0.clone()).open().expect("open");
    let maps = mappings_of(&needle(&named.0));
    assert!(maps.iter().all(|m| m.rss <= HEADER_SIZE as u64), "before: {maps:?}");
    opened.prefault().expect("prefault");
    let maps = mappings_of(&needle(&named.0));
    assert_eq!(maps.iter().filter(|m| m.rss == size).count(), 1, "only the prefaulted mapping is whole: {maps:?}");
}

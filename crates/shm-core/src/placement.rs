//! Where a segment's memory and a ring thread live: NUMA nodes, huge pages, CPUs.
//!
//! The OS-facing side of [`crate::SegmentBuilder::numa_node`],
//! [`crate::SegmentBuilder::hugepages`] and the daemons' `cpu_affinity`:
//!
//! - NUMA: which nodes exist (`/sys/devices/system/node`), binding a mapping to one node
//!   with [mbind(2)](https://man7.org/linux/man-pages/man2/mbind.2.html) before any of
//!   its pages is allocated, and reading a mapping's policy back with
//!   [get_mempolicy(2)](https://man7.org/linux/man-pages/man2/get_mempolicy.2.html).
//!   For shared memory (tmpfs, SysV) the kernel keeps the policy with the object, so
//!   `posix_fallocate` and every process that maps it later allocate on that node.
//! - Huge pages: the counters of `/proc/meminfo` and `vm.nr_overcommit_hugepages`, to
//!   size a segment and to say how many pages are missing before anything is created.
//! - CPUs: the calling process's allowed set and pinning the calling thread
//!   ([sched_setaffinity(2)](https://man7.org/linux/man-pages/man2/sched_setaffinity.2.html)).
//!
//! Everything read from sysfs and procfs is parsed without panicking: a malformed file
//! is an error or `None`, never a crash.

use std::io;
use std::path::Path;

/// `MPOL_MF_STRICT` from <linux/mempolicy.h>: fail if pages already in the range are elsewhere.
const MPOL_MF_STRICT: libc::c_uint = 1;
/// `MPOL_MF_MOVE`: move pages already in the range (ours only) to the node.
const MPOL_MF_MOVE: libc::c_uint = 2;
/// `MPOL_F_ADDR` for `get_mempolicy`: the policy governing an address.
const MPOL_F_ADDR: libc::c_ulong = 2;
/// Node masks passed to the kernel cover this many nodes (the kernel's own limit is 1024).
const MAX_NODES: usize = 1024;
/// A list in sysfs format longer than this is refused rather than expanded.
const MAX_LIST_LEN: usize = 1 << 16;

/// Parses a kernel list such as `0-3,8,10-11` (`/sys/devices/system/node/online`, a
/// `cpulist`) into sorted, distinct numbers. An empty list is valid (a node without CPUs);
/// anything malformed, descending, or longer than 65536 entries is `None`.
pub fn parse_list(text: &str) -> Option<Vec<u32>> {
    let text = text.trim();
    let mut out = Vec::new();
    if text.is_empty() {
        return Some(out);
    }
    for item in text.split(',') {
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?),
            None => {
                let n = item.trim().parse::<u32>().ok()?;
                (n, n)
            }
        };
        if last < first || out.len() + (last - first) as usize >= MAX_LIST_LEN {
            return None;
        }
        out.extend(first..=last);
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// Writes numbers back in kernel list form: `[0, 1, 2, 5]` is `0-2,5`.
pub fn format_list<T: Copy>(numbers: &[T]) -> String
where
    u64: TryFrom<T>,
{
    let mut sorted: Vec<u64> = numbers.iter().filter_map(|&n| u64::try_from(n).ok()).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            end += 1;
            i += 1;
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
        i += 1;
    }
    parts.join(",")
}

fn read_list(path: &Path) -> io::Result<Vec<u32>> {
    let text = std::fs::read_to_string(path)?;
    parse_list(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {:?} is not a list such as 0-3,8", path.display(), text),
        )
    })
}

const NODE_DIR: &str = "/sys/devices/system/node";

/// The NUMA nodes online (`/sys/devices/system/node/online`). A kernel without NUMA
/// support has no such file: that is one node, node 0.
pub fn online_nodes() -> io::Result<Vec<u32>> {
    match read_list(&Path::new(NODE_DIR).join("online")) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(vec![0]),
        other => other,
    }
}

/// The NUMA nodes that have memory (`/sys/devices/system/node/has_memory`; node 0
/// without NUMA support).
pub fn memory_nodes() -> io::Result<Vec<u32>> {
    match read_list(&Path::new(NODE_DIR).join("has_memory")) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(vec![0]),
        other => other,
    }
}

/// Whether NUMA node `node` exists (`/sys/devices/system/node/nodeN`).
pub fn node_exists(node: u32) -> bool {
    Path::new(NODE_DIR).join(format!("node{node}")).is_dir()
}

/// The CPUs of NUMA node `node` (`/sys/devices/system/node/nodeN/cpulist`). A kernel
/// without NUMA support has no node directory: node 0 then has every online CPU
/// (`/sys/devices/system/cpu/online`), as [`online_nodes`] says node 0 is the one node.
pub fn node_cpus(node: u32) -> io::Result<Vec<u32>> {
    match read_list(&Path::new(NODE_DIR).join(format!("node{node}/cpulist"))) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && node == 0 && !Path::new(NODE_DIR).exists() => {
            read_list(Path::new("/sys/devices/system/cpu/online"))
        }
        other => other,
    }
}

/// Binds `len` bytes at `addr` to NUMA node `node` (`MPOL_BIND`, moving any page already
/// there): pages allocated for the range afterwards come from that node only, and fail
/// (`ENOMEM`/`ENOSPC`) rather than spill elsewhere. For a shared-memory mapping the
/// policy belongs to the object, so `fallocate` and other processes honour it too.
/// See [mbind(2)](https://man7.org/linux/man-pages/man2/mbind.2.html).
pub(crate) fn mbind(addr: std::ptr::NonNull<u8>, len: usize, node: u32) -> io::Result<()> {
    let node = node as usize;
    if node >= MAX_NODES {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let bits = libc::c_ulong::BITS as usize;
    let mut mask = vec![0 as libc::c_ulong; MAX_NODES / bits];
    mask[node / bits] |= 1 << (node % bits);
    // The kernel reads `maxnode - 1` bits (a historical off-by-one every caller honours).
    let maxnode = (MAX_NODES + 1) as libc::c_ulong;
    // SAFETY: mbind only changes the memory policy of the range (it never writes to or
    // unmaps it); `mask` is a live buffer of `MAX_NODES` bits, as `maxnode` says.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr.as_ptr(),
            len as libc::c_ulong,
            libc::MPOL_BIND,
            mask.as_ptr(),
            maxnode,
            MPOL_MF_STRICT | MPOL_MF_MOVE,
        )
    };
    if r == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// The node the memory at `addr` is bound to, if its policy (`get_mempolicy` with
/// `MPOL_F_ADDR`) is `MPOL_BIND` or `MPOL_PREFERRED` to exactly one node; `None` for the
/// default policy or several nodes.
/// See [get_mempolicy(2)](https://man7.org/linux/man-pages/man2/get_mempolicy.2.html).
pub(crate) fn bound_node(addr: std::ptr::NonNull<u8>) -> io::Result<Option<u32>> {
    let bits = libc::c_ulong::BITS as usize;
    let mut mask = vec![0 as libc::c_ulong; MAX_NODES / bits];
    let mut mode: libc::c_int = 0;
    // SAFETY: the kernel writes one int to `mode` and at most `MAX_NODES` bits to `mask`,
    // both live and writable; `addr` is only looked up, never accessed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut mode as *mut libc::c_int,
            mask.as_mut_ptr(),
            (MAX_NODES + 1) as libc::c_ulong,
            addr.as_ptr(),
            MPOL_F_ADDR,
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    // The mode may carry flag bits (MPOL_F_STATIC_NODES, ...) above the mode itself.
    let base = mode & 0xff;
    if base != libc::MPOL_BIND && base != libc::MPOL_PREFERRED {
        return Ok(None);
    }
    let nodes: Vec<u32> =
        (0..MAX_NODES).filter(|n| mask[n / bits] & (1 << (n % bits)) != 0).map(|n| n as u32).collect();
    Ok(if let [node] = nodes[..] { Some(node) } else { None })
}

/// The system's huge pages of the default size, as `/proc/meminfo` counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HugePages {
    /// Bytes in one huge page (`Hugepagesize`).
    pub page_size: u64,
    /// Pages in the pool (`HugePages_Total`, what `vm.nr_hugepages` set).
    pub total: u64,
    /// Pages not in use (`HugePages_Free`), including reserved ones.
    pub free: u64,
    /// Free pages promised to mappings already (`HugePages_Rsvd`).
    pub reserved: u64,
    /// Pages allocated beyond the pool (`HugePages_Surp`).
    pub surplus: u64,
    /// How many surplus pages may be allocated (`vm.nr_overcommit_hugepages`).
    pub overcommit: u64,
}

impl HugePages {
    /// Reads `/proc/meminfo` and `/proc/sys/vm/nr_overcommit_hugepages`. A kernel without
    /// huge page support (no `Hugepagesize`) is an `Unsupported` error.
    pub fn read() -> io::Result<HugePages> {
        let meminfo = std::fs::read_to_string("/proc/meminfo")?;
        let overcommit = std::fs::read_to_string("/proc/sys/vm/nr_overcommit_hugepages").unwrap_or_default();
        HugePages::parse(&meminfo, &overcommit).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel has no huge pages (no Hugepagesize in /proc/meminfo)",
            )
        })
    }

    /// Parses the text of `/proc/meminfo` and of `nr_overcommit_hugepages` (empty when
    /// unknown); `None` when `Hugepagesize` is missing or malformed. Missing counters are 0.
    pub fn parse(meminfo: &str, overcommit: &str) -> Option<HugePages> {
        let field = |name: &str| -> Option<&str> {
            meminfo.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(str::trim)
        };
        let count = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let page_kib = field("Hugepagesize")?.strip_suffix("kB")?.trim().parse::<u64>().ok()?;
        let page_size = page_kib.checked_mul(1024).filter(|&s| s > 0)?;
        Some(HugePages {
            page_size,
            total: count("HugePages_Total"),
            free: count("HugePages_Free"),
            reserved: count("HugePages_Rsvd"),
            surplus: count("HugePages_Surp"),
            overcommit: overcommit.trim().parse().unwrap_or(0),
        })
    }

    /// Pages a new mapping can still get: free and unreserved, plus the surplus allowed.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved) + self.overcommit.saturating_sub(self.surplus)
    }

    /// `bytes` rounded up to whole huge pages (`None` on overflow).
    pub fn round_up(&self, bytes: u64) -> Option<u64> {
        bytes.checked_next_multiple_of(self.page_size)
    }
}

/// Whether the filesystem holding `path` is hugetlbfs (`statfs`'s `f_type`).
/// See [statfs(2)](https://man7.org/linux/man-pages/man2/statfs.2.html).
pub(crate) fn is_hugetlbfs(path: &Path) -> io::Result<bool> {
    let fs = nix::sys::statfs::statfs(path).map_err(crate::error::io_err)?;
    Ok(fs.filesystem_type() == nix::sys::statfs::HUGETLBFS_MAGIC)
}

/// Whether the filesystem holding `path` keeps its pages in shared memory (tmpfs or
/// hugetlbfs), where a NUMA policy set with `mbind` decides where pages go. A regular
/// filesystem's page cache ignores it.
pub(crate) fn honours_numa_policy(path: &Path) -> io::Result<bool> {
    let fs = nix::sys::statfs::statfs(path).map_err(crate::error::io_err)?;
    let kind = fs.filesystem_type();
    Ok(kind == nix::sys::statfs::TMPFS_MAGIC || kind == nix::sys::statfs::HUGETLBFS_MAGIC)
}

/// The CPUs the calling thread may run on (`sched_getaffinity`); for a daemon's main
/// thread, the process's allowed set (cgroup cpuset, `taskset`, systemd `CPUAffinity=`).
/// See [sched_getaffinity(2)](https://man7.org/linux/man-pages/man2/sched_getaffinity.2.html).
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).map_err(crate::error::io_err)?;
    Ok((0..nix::sched::CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap_or(false)).collect())
}

/// Pins the calling thread to `cpus` (`sched_setaffinity`). A CPU out of range or not
/// allowed is `EINVAL`.
/// See [sched_setaffinity(2)](https://man7.org/linux/man-pages/man2/sched_setaffinity.2.html).
pub fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for &cpu in cpus {
        set.set(cpu).map_err(crate::error::io_err)?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(crate::error::io_err)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn lists_parse_like_the_kernel_writes_them() {
        let cases: [(&str, Option<Vec<u32>>); 10] = [
            ("0\n", Some(vec![0])),
            ("0-1,3", Some(vec![0, 1, 3])),
            ("0-3,8,10-11\n", Some(vec![0, 1, 2, 3, 8, 10, 11])),
            ("\n", Some(vec![])),
            ("3,1,1", Some(vec![1, 3])),
            ("3-1", None),
            ("0-", None),
            ("a", None),
            ("0,,1", None),
            ("0-4294967295", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_list(text), want, "{text:?}");
        }
    }

    #[test]
    fn lists_format_as_ranges() {
        assert_eq!(format_list(&[0u32, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(format_list::<u32>(&[]), "");
        assert_eq!(format_list(&[4u32]), "4");
    }

    #[test]
    fn meminfo_parses_and_counts_what_a_mapping_can_get() {
        let text = "MemTotal: 1 kB\nHugePages_Total:      64\nHugePages_Free:       60\nHugePages_Rsvd:        8\n\
                    HugePages_Surp:        0\nHugepagesize:       2048 kB\n";
        let h = HugePages::parse(text, "4\n").expect("parses");
        assert_eq!((h.page_size, h.total, h.free, h.reserved, h.overcommit), (2 << 20, 64, 60, 8, 4));
        assert_eq!(h.available(), 56);
        assert_eq!(h.round_up(16384 + (1 << 20)), Some(2 << 20));
        assert_eq!(HugePages::parse("MemTotal: 1 kB\n", ""), None);
        assert_eq!(HugePages::parse("Hugepagesize: 0 kB\n", ""), None);
    }

    #[test]
    fn this_machine_has_node_0() {
        assert!(online_nodes().expect("readable").contains(&0));
        assert!(node_exists(0));
        assert!(!node_exists(999_999));
    }

    proptest! {
        /// Whatever sysfs or procfs hold, parsing never panics, and a parsed list
        /// formats back to text that parses to the same list.
        #[test]
        fn parsing_never_panics(text in "[0-9,\\- \n]{0,40}|\\PC{0,40}") {
            if let Some(list) = parse_list(&text) {
                prop_assert_eq!(parse_list(&format_list(&list)), Some(list));
            }
            let _ = HugePages::parse(&text, &text);
        }
    }
}

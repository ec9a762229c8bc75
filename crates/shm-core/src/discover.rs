//! Finding segments on the host: POSIX objects in `/dev/shm`, SysV segments from
//! `/proc/sysvipc/shm`, file segments in given directories. Discovery only lists
//! candidates; whether one is a shmring segment is decided by opening it read-only
//! and checking its magic.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::name::{Location, SegmentName, SysvKey};

/// A shared-memory object found on the host, with what the OS says about it
/// (the columns of util-linux `lsipc`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Candidate {
    /// Where to open it; `None` for a SysV segment with key `IPC_PRIVATE`.
    #[serde(skip)]
    pub location: Option<Location>,
    /// `posix`, `sysv` or `file`.
    pub backend: &'static str,
    /// Name, key or path.
    pub name: String,
    /// SysV id.
    pub id: Option<i32>,
    /// Permission bits (JSON: `"0600"`).
    #[serde(serialize_with = "crate::owner::serialize_mode")]
    pub perms: u32,
    /// Owner uid.
    pub uid: u32,
    /// Size in bytes.
    pub size: u64,
    /// SysV: number of attaches.
    pub nattch: Option<u64>,
    /// SysV: marked for destruction.
    pub destroyed: bool,
    /// Change time (Unix seconds): ctime for SysV, mtime for files.
    pub ctime: i64,
    /// SysV: creator pid.
    pub cpid: Option<i32>,
    /// SysV: last attach/detach pid.
    pub lpid: Option<i32>,
}

impl Candidate {
    /// A POSIX object or a file, described by its metadata.
    fn file_like(location: Location, name: String, meta: &std::fs::Metadata) -> Self {
        Candidate {
            backend: location.backend(),
            location: Some(location),
            name,
            id: None,
            perms: meta.mode() & 0o7777,
            uid: meta.uid(),
            size: meta.size(),
            nattch: None,
            destroyed: false,
            ctime: meta.mtime(),
            cpid: None,
            lpid: None,
        }
    }
}

/// Every POSIX shared-memory object in `/dev/shm` whose name is a valid segment name
/// (the library's own hidden lock files are skipped).
pub fn posix() -> io::Result<Vec<Candidate>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/dev/shm")? {
        let entry = entry?;
        let Some(file) = entry.file_name().to_str().map(str::to_owned) else { continue };
        let Ok(name) = SegmentName::new(&format!("/{file}")) else { continue };
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        out.push(Candidate::file_like(Location::Posix(name.clone()), name.to_string(), &meta));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Every SysV segment in `/proc/sysvipc/shm`.
pub fn sysv() -> io::Result<Vec<Candidate>> {
    let text = std::fs::read_to_string("/proc/sysvipc/shm")?;
    Ok(parse_proc_sysvipc_shm(&text))
}

/// Parses the text of `/proc/sysvipc/shm` (columns named by its first line, perms in
/// octal); rows
/// that do not parse are skipped.
pub fn parse_proc_sysvipc_shm(text: &str) -> Vec<Candidate> {
    let mut lines = text.lines();
    let Some(head) = lines.next() else { return Vec::new() };
    let cols: Vec<&str> = head.split_whitespace().collect();
    let col = |name: &str| cols.iter().position(|&c| c == name);
    let (Some(key), Some(id), Some(perms), Some(size), Some(cpid), Some(lpid), Some(nattch), Some(uid), Some(ctime)) = (
        col("key"),
        col("shmid"),
        col("perms"),
        col("size"),
        col("cpid"),
        col("lpid"),
        col("nattch"),
        col("uid"),
        col("ctime"),
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        let get = |i: usize| f.get(i).copied().unwrap_or("");
        let (Ok(k), Ok(shmid), Ok(mode), Ok(bytes)) = (
            get(key).parse::<i32>(),
            get(id).parse::<i32>(),
            u32::from_str_radix(get(perms), 8),
            get(size).parse::<u64>(),
        ) else {
            continue;
        };
        let sysv_key = SysvKey::new(k).ok();
        out.push(Candidate {
            location: sysv_key.map(Location::Sysv),
            backend: "sysv",
            name: sysv_key.map_or_else(|| "IPC_PRIVATE".to_owned(), |k| k.to_string()),
            id: Some(shmid),
            perms: mode & 0o777,
            uid: get(uid).parse().unwrap_or(u32::MAX),
            size: bytes,
            nattch: get(nattch).parse().ok(),
            destroyed: mode & 0o1000 != 0,
            ctime: get(ctime).parse().unwrap_or(0),
            cpid: get(cpid).parse().ok(),
            lpid: get(lpid).parse().ok(),
        });
    }
    out
}

/// Every regular file directly in `dir` (file segments are recognised by opening them).
pub fn files(dir: &Path) -> io::Result<Vec<Candidate>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let path = entry.path();
        out.push(Candidate::file_like(Location::File(path.clone()), path.display().to_string(), &meta));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_sysvipc_shm_is_parsed_by_column_name() {
        let text = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n\
                    1397227521          7   600                 20480  4334  4334      1     0     0     0     0 1795726980 0 1795726980 20480 0\n\
                             0          8  1600                  4096    10    11      0  1000  1000  1000  1000 0 0 1795726000 0 0\n\
                    garbage line\n";
        let rows = parse_proc_sysvipc_shm(text);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].name, "0x53480001");
        assert_eq!((rows[0].id, rows[0].perms, rows[0].size, rows[0].nattch), (Some(7), 0o600, 20480, Some(1)));
        assert_eq!(rows[1].name, "IPC_PRIVATE");
        assert!(rows[1].location.is_none());
        assert!(rows[1].destroyed);
        assert_eq!(rows[1].uid, 1000);
    }
}

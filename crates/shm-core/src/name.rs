//! Where a segment lives: validated POSIX names, SysV keys, file paths.

use std::fmt;
use std::path::{Path, PathBuf};

/// The longest POSIX shared-memory name, leading `/` included (`NAME_MAX` + 1).
pub const MAX_NAME_LEN: usize = 256;

/// A validated POSIX shared-memory name such as `/high_perf_ring`.
///
/// One leading `/`, then 1 to 255 characters from `A-Z a-z 0-9 . _ - @ : +`, not starting
/// with `.` (those are hidden, and `.shmring-*` files are the library's own).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentName(String);

/// Why a segment name or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid segment name {input:?}: {reason}")]
pub struct NameError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl SegmentName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, NameError> {
        let err = |reason| Err(NameError { input: name.to_owned(), reason });
        let Some(rest) = name.strip_prefix('/') else {
            return err("must start with '/' (for example /high_perf_ring)");
        };
        if rest.is_empty() {
            return err("is empty after the leading '/'");
        }
        if name.len() > MAX_NAME_LEN {
            return err("is longer than 255 characters after the leading '/'");
        }
        if rest.contains('/') {
            return err("may contain no '/' after the leading one");
        }
        if rest.starts_with('.') {
            return err("may not start with '.' after the '/'");
        }
        if !rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@:+".contains(&b)) {
            return err("may contain only letters, digits and . _ - @ : +");
        }
        Ok(SegmentName(name.to_owned()))
    }

    /// The name, with its leading `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The file that backs it on Linux (`/dev/shm/<name>`).
    pub fn dev_shm_path(&self) -> PathBuf {
        Path::new("/dev/shm").join(&self.0[1..])
    }
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for SegmentName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        SegmentName::new(s)
    }
}

/// A SysV IPC key (never `IPC_PRIVATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SysvKey(i32);

impl SysvKey {
    /// A key given explicitly, such as `0x5348_0001`. Zero (`IPC_PRIVATE`) is refused.
    pub fn new(key: i32) -> Result<Self, NameError> {
        if key == libc::IPC_PRIVATE {
            return Err(NameError { input: "0".into(), reason: "key 0 is IPC_PRIVATE, which names no segment" });
        }
        Ok(SysvKey(key))
    }

    /// The key `ftok(path, id)` derives, for programs that already use it.
    /// See [ftok(3)](https://man7.org/linux/man-pages/man3/ftok.3.html).
    pub fn ftok(path: &Path, id: u8) -> Result<Self, std::io::Error> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
        // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
        let key = unsafe { libc::ftok(c.as_ptr(), libc::c_int::from(id)) };
        if key == -1 {
            return Err(std::io::Error::last_os_error());
        }
        SysvKey::new(key).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Parses `0x5348_0001` (hex, `_` allowed), a decimal number, or `ftok:PATH:ID`.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        let err = |reason| NameError { input: text.to_owned(), reason };
        if let Some(rest) = text.strip_prefix("ftok:") {
            let (path, id) = rest.rsplit_once(':').ok_or_else(|| err("expected ftok:PATH:ID"))?;
            let id: u8 = id.parse().map_err(|_| err("the ftok id must be a number from 0 to 255"))?;
            return SysvKey::ftok(Path::new(path), id).map_err(|_| err("ftok failed: does the path exist?"));
        }
        let clean: String = text.chars().filter(|&c| c != '_').collect();
        let value = if let Some(hex) = clean.strip_prefix("0x").or_else(|| clean.strip_prefix("0X")) {
            u32::from_str_radix(hex, 16).map_err(|_| err("not a 32-bit hexadecimal key"))?
        } else {
            clean
                .parse::<u32>()
                .map_err(|_| err("expected a key such as 0x53480001, a decimal number, or ftok:PATH:ID"))?
        };
        SysvKey::new(value as i32)
    }

    /// The raw key.
    pub fn raw(self) -> i32 {
        self.0
    }
}

impl fmt::Display for SysvKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0 as u32)
    }
}

/// Where a segment lives: the backend and its name there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    /// A POSIX shared-memory object (`shm_open`), such as `/high_perf_ring`.
    Posix(SegmentName),
    /// A SysV segment (`shmget`) with this key.
    Sysv(SysvKey),
    /// A regular file, mapped shared.
    File(PathBuf),
    /// An anonymous shared mapping (a memfd) for a process and its forked children.
    Anon,
}

impl Location {
    /// A POSIX location from a name such as `/high_perf_ring`.
    pub fn posix(name: &str) -> Result<Self, NameError> {
        SegmentName::new(name).map(Location::Posix)
    }

    /// The backend's name as the CLI and config spell it.
    pub fn backend(&self) -> &'static str {
        match self {
            Location::Posix(_) => "posix",
            Location::Sysv(_) => "sysv",
            Location::File(_) => "file",
            Location::Anon => "anon",
        }
    }

    /// Parses `NAME` for `backend` (`posix`, `sysv` or `file`).
    pub fn parse(backend: &str, name: &str) -> Result<Self, NameError> {
        match backend {
            "posix" => Location::posix(name),
            "sysv" => SysvKey::parse(name).map(Location::Sysv),
            "file" => {
                if name.is_empty() {
                    return Err(NameError { input: name.into(), reason: "a file segment needs a path" });
                }
                Ok(Location::File(PathBuf::from(name)))
            }
            _ => Err(NameError { input: backend.into(), reason: "unknown backend (expected posix, sysv or file)" }),
        }
    }

    /// Guesses the backend from the name's shape: `/x` with no other `/` is posix,
    /// `0x...`, digits or `ftok:` is sysv, any other path is a file.
    pub fn infer(name: &str) -> Result<Self, NameError> {
        let looks_sysv = name.starts_with("0x")
            || name.starts_with("ftok:")
            || name.bytes().all(|b| b.is_ascii_digit() || b == b'_');
        if looks_sysv && !name.is_empty() {
            Location::parse("sysv", name)
        } else if name.starts_with('/') && name[1..].find('/').is_none() {
            Location::posix(name)
        } else {
            Location::parse("file", name)
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Posix(n) => write!(f, "{n}"),
            Location::Sysv(k) => write!(f, "sysv key {k}"),
            Location::File(p) => write!(f, "{}", p.display()),
            Location::Anon => f.write_str("anonymous segment"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posix_names_are_validated() {
        assert!(SegmentName::new("/high_perf_ring").is_ok());
        for bad in ["high_perf_ring", "/", "/a/b", "/.hidden", "/sp ace", "/tab\t", ""] {
            assert!(SegmentName::new(bad).is_err(), "{bad:?} should be refused");
        }
        let long = format!("/{}", "a".repeat(255));
        assert!(SegmentName::new(&long).is_ok());
        let too_long = format!("/{}", "a".repeat(256));
        let e = SegmentName::new(&too_long).unwrap_err();
        assert!(e.to_string().contains("longer than 255"), "{e}");
    }

    #[test]
    fn sysv_keys_parse_in_every_form() {
        assert_eq!(SysvKey::parse("0x5348_0001").unwrap().raw(), 0x5348_0001);
        assert_eq!(SysvKey::parse("1234").unwrap().raw(), 1234);
        assert_eq!(SysvKey::parse("0xFFFFFFFF").unwrap().raw(), -1);
        assert!(SysvKey::parse("0").is_err());
        assert!(SysvKey::parse("0xZZ").is_err());
        assert!(SysvKey::parse("ftok:/:65").is_ok());
        assert!(SysvKey::parse("ftok:/definitely/not/here:65").is_err());
        assert_eq!(SysvKey::new(0x5348_0001).unwrap().to_string(), "0x53480001");
    }

    #[test]
    fn locations_are_inferred_from_their_shape() {
        assert_eq!(Location::infer("/ring").unwrap().backend(), "posix");
        assert_eq!(Location::infer("0x10").unwrap().backend(), "sysv");
        assert_eq!(Location::infer("/var/lib/x.ring").unwrap().backend(), "file");
        assert_eq!(Location::infer("./x.ring").unwrap().backend(), "file");
    }
}

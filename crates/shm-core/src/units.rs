//! Sizes with units, as operators type them (`64KiB`, `1MiB`, `1GB`) and read them.
//!
//! Units mean what they say, as in GNU coreutils: `KiB`, `MiB`, `GiB`, `TiB` (and the
//! bare `K`, `M`, `G`, `T`) are binary, powers of 1024; `KB`, `MB`, `GB`, `TB` are SI,
//! powers of 1000. Printed sizes use the binary units, spelled `KiB`, `MiB`, ...

/// Why a size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid size {input:?}: expected a number of bytes with an optional unit (B; binary KiB, MiB, GiB, TiB, or K, M, G, T; SI KB, MB, GB, TB)"
)]
pub struct SizeError {
    /// What was given.
    pub input: String,
}

/// Parses `4096`, `64KiB`, `64k`, `1 MiB`, `1GiB`, `1GB`... `KiB`/`K` are binary
/// (1 KiB = 1024 B), `KB` is SI (1 KB = 1000 B); likewise M, G and T.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let err = || SizeError { input: input.to_owned() };
    let text = input.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '_').unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let digits: String = digits.chars().filter(|&c| c != '_').collect();
    let n: u64 = digits.parse().map_err(|_| err())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(err()),
    };
    n.checked_mul(multiplier).ok_or_else(err)
}

/// Formats bytes for people: exact units when they divide evenly (`64 KiB`), else one
/// decimal (`1.5 MiB`), plain bytes below 1 KiB.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut value = bytes as f64;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if bytes % (1u64 << (10 * unit)) == 0 {
        format!("{} {}", bytes >> (10 * unit), UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1_048_576"), Ok(1 << 20));
        // SI and binary mean what they say.
        assert_eq!(parse_size("1TB"), Ok(1_000_000_000_000));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size("64KB"), Ok(64_000));
        assert_eq!(parse_size("1 MB"), Ok(1_000_000));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        for bad in ["", "MiB", "1.5MiB", "-1", "12 parsecs", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_format_for_people() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(65536), "64 KiB");
        assert_eq!(format_size(1536 * 1024), "1.5 MiB");
        assert_eq!(format_size(1 << 30), "1 GiB");
    }
}

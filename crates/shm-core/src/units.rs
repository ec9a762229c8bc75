//! Sizes with units, as operators type them (`64KiB`, `1MiB`, `1GiB`) and read them.

/// Why a size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid size {input:?}: expected a number of bytes with an optional unit (B, KiB, MiB, GiB, TiB; K, M, G, T mean the same)"
)]
pub struct SizeError {
    /// What was given.
    pub input: String,
}

/// Parses `4096`, `64KiB`, `64k`, `1 MiB`, `1GiB`... Units are binary (1 KiB = 1024 B);
/// `KB`/`MB`/`GB` are read as binary too, since ring sizes are powers of two.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let err = || SizeError { input: input.to_owned() };
    let text = input.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '_').unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let digits: String = digits.chars().filter(|&c| c != '_').collect();
    let n: u64 = digits.parse().map_err(|_| err())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(err()),
    };
    n.checked_mul(1 << shift).ok_or_else(err)
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

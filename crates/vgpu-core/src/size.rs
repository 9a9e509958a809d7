//! Memory sizes as users write them in `CUDA_DEVICE_MEMORY_LIMIT`.
//!
//! HAMi-core's contract: a plain number is bytes and the suffixes `k`, `m`, `g` are powers of
//! 1024. HAMi-core itself reads `1Gi`, `1GiB` and `1gb` as one byte and a leading zero as octal;
//! we accept every common spelling of a binary unit instead, and reject anything else with a
//! message that says what is accepted. Decimal (SI) meanings are never used: `2G` is 2 GiB,
//! not 2·10⁹ bytes, because that is what every HAMi deployment already writes.

use std::fmt;

/// What a size may look like, for error messages.
pub const ACCEPTED_SIZES: &str = "a whole number of bytes, or a number with a binary unit \
     k, m, g or t (also written K, Ki, KiB, KB; all mean powers of 1024), e.g. 4096m, 4g, 4GiB, 1.5g";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeError {
    Empty,
    NotANumber,
    UnknownUnit(String),
    FractionOfByte,
    TooLarge,
    /// Not zero, but less than one byte once scaled (`0.0001k`): never "no cap".
    RoundsToZero,
    /// A cap so small no CUDA context fits in it (`2`, `2048`): almost surely a missing unit.
    TooSmall(u64),
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeError::Empty => write!(f, "empty value"),
            SizeError::NotANumber => write!(f, "does not start with a number"),
            SizeError::UnknownUnit(u) => write!(f, "unknown unit {u:?}"),
            SizeError::FractionOfByte => write!(f, "a fraction needs a unit (k, m, g or t)"),
            SizeError::TooLarge => write!(f, "too large"),
            SizeError::RoundsToZero => write!(f, "rounds to 0 bytes; write 0 for no cap"),
            SizeError::TooSmall(b) => write!(
                f,
                "{b} bytes is below the smallest cap, {} MiB (no CUDA context fits); a plain number is bytes: \
                 add a unit such as m or g, or write 0 for no cap",
                MIN_CAP >> 20
            ),
        }
    }
}

/// Parses a size in bytes. Surrounding whitespace is ignored; leading zeros are decimal.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(SizeError::Empty);
    }
    let number_end = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(number_end);
    let unit = unit.trim_start();
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SizeError::NotANumber);
    }
    let shift = unit_shift(unit)?;
    let whole: u64 = whole.parse().map_err(|_| SizeError::TooLarge)?;
    let scaled = whole.checked_shl(shift).filter(|v| v >> shift == whole);
    let mut bytes = scaled.ok_or(SizeError::TooLarge)?;
    if !fraction.is_empty() {
        if shift == 0 {
            return Err(SizeError::FractionOfByte);
        }
        // Up to 9 fractional digits are exact enough for any unit ≥ 1 KiB.
        let digits = &fraction[..fraction.len().min(9)];
        let numerator: u128 = digits.parse().map_err(|_| SizeError::NotANumber)?;
        let denominator = 10u128.pow(digits.len() as u32);
        let extra = (numerator << shift) / denominator;
        bytes = bytes.checked_add(extra as u64).ok_or(SizeError::TooLarge)?;
        if bytes == 0 && fraction.bytes().any(|b| b != b'0') {
            return Err(SizeError::RoundsToZero);
        }
    }
    Ok(bytes)
}

/// The smallest memory cap accepted: one CUDA context alone costs hundreds of MiB, so a cap
/// below 1 MiB is a mistake (a forgotten unit), never a useful limit.
pub const MIN_CAP: u64 = 1 << 20;

/// A memory cap: `Ok(None)` for 0 (HAMi: no cap), an error for a size that rounds to nothing or
/// is below [`MIN_CAP`].
pub fn parse_cap(text: &str) -> Result<Option<u64>, SizeError> {
    match parse_size(text)? {
        0 => Ok(None),
        b if b < MIN_CAP => Err(SizeError::TooSmall(b)),
        b => Ok(Some(b)),
    }
}

fn unit_shift(unit: &str) -> Result<u32, SizeError> {
    let lower = unit.to_ascii_lowercase();
    let prefix = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('i'))
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    match prefix {
        "" if lower.is_empty() || lower == "b" => Ok(0),
        "k" => Ok(10),
        "m" => Ok(20),
        "g" => Ok(30),
        "t" => Ok(40),
        _ => Err(SizeError::UnknownUnit(unit.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn hami_forms_are_binary() {
        assert_eq!(parse_size("1g"), Ok(GIB));
        assert_eq!(parse_size("1G"), Ok(GIB));
        assert_eq!(parse_size("1024m"), Ok(GIB));
        assert_eq!(parse_size("1048576k"), Ok(GIB));
        assert_eq!(parse_size("1073741824"), Ok(GIB));
    }

    #[test]
    fn spellings_hami_reads_as_one_byte_are_binary_here() {
        for s in ["1Gi", "1GiB", "1gb", "1GB", "1 GiB", " 1g "] {
            assert_eq!(parse_size(s), Ok(GIB), "{s}");
        }
        assert_eq!(parse_size("2t"), Ok(2 << 40));
        assert_eq!(parse_size("7b"), Ok(7));
    }

    #[test]
    fn leading_zero_is_decimal_not_octal() {
        assert_eq!(parse_size("010m"), Ok(10 << 20));
    }

    #[test]
    fn fractions_with_a_unit() {
        assert_eq!(parse_size("1.5g"), Ok(GIB + GIB / 2));
        assert_eq!(parse_size("0.5k"), Ok(512));
        assert_eq!(parse_size("1.5"), Err(SizeError::FractionOfByte));
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("g"), Err(SizeError::NotANumber));
        assert_eq!(parse_size("-1g"), Err(SizeError::NotANumber));
        assert_eq!(parse_size(".5g"), Err(SizeError::NotANumber));
        assert_eq!(parse_size("1.2.3g"), Err(SizeError::NotANumber));
        assert!(matches!(parse_size("1x"), Err(SizeError::UnknownUnit(_))));
        assert!(matches!(parse_size("1gg"), Err(SizeError::UnknownUnit(_))));
        assert!(matches!(parse_size("1 g b"), Err(SizeError::UnknownUnit(_))));
        assert_eq!(parse_size("99999999999999999999"), Err(SizeError::TooLarge));
        assert_eq!(parse_size("99999999999t"), Err(SizeError::TooLarge));
    }

    #[test]
    fn sizes_that_round_to_nothing_are_refused_not_read_as_no_cap() {
        assert_eq!(parse_size("0.0001k"), Err(SizeError::RoundsToZero));
        assert_eq!(parse_size("0.0000000001g"), Err(SizeError::RoundsToZero));
        assert_eq!(parse_size("0.0k"), Ok(0));
        assert_eq!(parse_cap("0"), Ok(None));
        assert_eq!(parse_cap("0.0001k"), Err(SizeError::RoundsToZero));
        assert_eq!(parse_cap("2"), Err(SizeError::TooSmall(2)));
        assert_eq!(parse_cap("2048"), Err(SizeError::TooSmall(2048)));
        assert!(parse_cap("2048").unwrap_err().to_string().contains("add a unit"));
        assert_eq!(parse_cap("1m"), Ok(Some(MIN_CAP)));
        assert_eq!(parse_cap("4g"), Ok(Some(4 * GIB)));
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = parse_size(&s);
        }

        #[test]
        fn every_unit_spelling_round_trips(n in 0u64..1_000_000, unit in 0usize..4, style in 0usize..5) {
            let letter = ["k", "m", "g", "t"][unit];
            let suffix = match style {
                0 => letter.to_string(),
                1 => letter.to_uppercase(),
                2 => format!("{}i", letter.to_uppercase()),
                3 => format!("{}iB", letter.to_uppercase()),
                _ => format!("{letter}b"),
            };
            prop_assert_eq!(parse_size(&format!("{n}{suffix}")), Ok(n << (10 * (unit as u32 + 1))));
        }

        #[test]
        fn plain_numbers_are_bytes(n: u64) {
            prop_assert_eq!(parse_size(&n.to_string()), Ok(n));
        }
    }
}

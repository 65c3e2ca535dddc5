//! Durations as written in the configuration file: one or more `<integer><unit>` parts with the
//! unit one of `ms`, `s`, `m`, `h` ("500ms", "2s", "1m30s").
//!
//! Pure string handling; it knows nothing about keys or positions (the caller adds those).

use std::fmt;
use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty")]
    Empty,
    #[error("negative")]
    Negative,
    /// A unit without a number before it ("s", "1m s").
    #[error("a unit needs a number before it")]
    MissingNumber,
    /// A number without a unit after it ("30").
    #[error("missing unit")]
    MissingUnit,
    #[error("unknown unit")]
    UnknownUnit,
    /// More milliseconds than fit in 64 bits.
    #[error("too large")]
    Overflow,
}

/// Parses "500ms", "2s", "5m", "1h", "1m30s". Whitespace, signs and fractions are rejected so that
/// a duration has exactly one spelling family and typos never parse as something else.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text.starts_with('-') {
        return Err(DurationError::Negative);
    }
    let mut total_ms: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::MissingNumber);
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        if unit_len == 0 {
            return Err(if after.is_empty() { DurationError::MissingUnit } else { DurationError::UnknownUnit });
        }
        let (unit, after_unit) = after.split_at(unit_len);
        let ms_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(DurationError::UnknownUnit),
        };
        // Only ASCII digits remain, so the only possible parse failure is overflow.
        let value: u64 = number.parse().map_err(|_| DurationError::Overflow)?;
        let part_ms = value.checked_mul(ms_per_unit).ok_or(DurationError::Overflow)?;
        total_ms = total_ms.checked_add(part_ms).ok_or(DurationError::Overflow)?;
        rest = after_unit;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats a duration in the file's own syntax, largest units first ("1m30s", "500ms", "0s").
pub fn display(duration: Duration) -> impl fmt::Display {
    Display(duration)
}

struct Display(Duration);

impl fmt::Display for Display {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_parts_in_every_unit() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn parts_add_up() {
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1h1m1s1ms"), Ok(Duration::from_millis(3_661_001)));
        assert_eq!(parse("007s"), Ok(Duration::from_secs(7)));
    }

    #[test]
    fn malformed_strings_are_rejected_with_the_reason() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert_eq!(parse("-1s"), Err(DurationError::Negative));
        assert_eq!(parse("30"), Err(DurationError::MissingUnit));
        assert_eq!(parse("1m30"), Err(DurationError::MissingUnit));
        assert_eq!(parse("2x"), Err(DurationError::UnknownUnit));
        assert_eq!(parse("2sec"), Err(DurationError::UnknownUnit));
        assert_eq!(parse("2S"), Err(DurationError::UnknownUnit));
        assert_eq!(parse("1.5s"), Err(DurationError::UnknownUnit));
        assert_eq!(parse("s"), Err(DurationError::MissingNumber));
        assert_eq!(parse("1m s"), Err(DurationError::MissingNumber));
        assert_eq!(parse(" 1s"), Err(DurationError::MissingNumber));
        assert_eq!(parse("+1s"), Err(DurationError::MissingNumber));
    }

    #[test]
    fn overflow_is_rejected_not_wrapped() {
        assert_eq!(parse("18446744073709551616ms"), Err(DurationError::Overflow));
        assert_eq!(parse("18446744073709551615s"), Err(DurationError::Overflow));
        assert_eq!(parse("18446744073709551615ms1ms"), Err(DurationError::Overflow));
        assert_eq!(parse("18446744073709551615ms"), Ok(Duration::from_millis(u64::MAX)));
    }

    #[test]
    fn display_round_trips() {
        for text in ["0s", "500ms", "2s", "5m", "1h", "1m30s", "1h1m1s1ms", "30s"] {
            let parsed = parse(text).expect(text);
            assert_eq!(display(parsed).to_string(), text);
            assert_eq!(parse(&display(parsed).to_string()), Ok(parsed));
        }
        assert_eq!(display(Duration::from_secs(120)).to_string(), "2m");
    }
}

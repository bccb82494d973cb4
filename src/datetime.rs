//! Parsing of the providers' date-time strings.
//!
//! ClearSale writes .NET-style RFC 3339 values with up to 7 fractional digits
//! (`2025-09-26T17:21:11.0367845Z`) and, in some places, values without an offset. A value
//! without an offset is taken as UTC.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};

/// Why a date-time string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 3339 date-time (up to 7 fractional digits, offset optional): {reason}")]
pub struct DateTimeError {
    reason: String,
}

/// The most fractional digits accepted (.NET's `DateTime` precision, 100 ns ticks).
pub const MAX_FRACTION_DIGITS: usize = 7;

/// Parses an RFC 3339 date-time with up to 7 fractional digits; a value without offset is UTC.
pub fn parse_provider_datetime(input: &str) -> Result<DateTime<Utc>, DateTimeError> {
    let s = input.trim();
    if s.len() > 40 {
        return Err(DateTimeError {
            reason: "value too long".into(),
        });
    }
    check_fraction_digits(s)?;
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Ok(dt.with_timezone(&Utc));
    }
    // No offset: accept `T` or a space as separator, then take it as UTC.
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(naive.and_utc());
        }
    }
    Err(DateTimeError {
        reason: "unrecognised layout".into(),
    })
}

/// The canonical text of an instant used in identities: UTC, nanosecond precision, `Z`.
pub fn canonical(dt: &DateTime<Utc>) -> String {
    dt.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn check_fraction_digits(s: &str) -> Result<(), DateTimeError> {
    // The fraction is the run of digits after the first '.' that follows the seconds.
    if let Some(dot) = s.find('.') {
        let digits = s[dot + 1..].bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > MAX_FRACTION_DIGITS {
            return Err(DateTimeError {
                reason: format!("{digits} fractional digits (1 to {MAX_FRACTION_DIGITS} allowed)"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Timelike};

    #[test]
    fn dotnet_seven_digits_with_z() {
        let dt = parse_provider_datetime("2025-09-26T17:21:11.0367845Z").unwrap();
        assert_eq!(dt.nanosecond(), 36_784_500);
        assert_eq!(canonical(&dt), "2025-09-26T17:21:11.036784500Z");
    }

    #[test]
    fn without_offset_is_utc() {
        let a = parse_provider_datetime("2025-09-26T17:21:11.0367845").unwrap();
        let b = parse_provider_datetime("2025-09-26T17:21:11.0367845Z").unwrap();
        assert_eq!(a, b);
        let c = parse_provider_datetime("2025-09-26 17:21:11").unwrap();
        assert_eq!(c, Utc.with_ymd_and_hms(2025, 9, 26, 17, 21, 11).unwrap());
    }

    #[test]
    fn offsets_are_normalised_to_utc() {
        let dt = parse_provider_datetime("2025-09-26T14:21:11-03:00").unwrap();
        assert_eq!(dt, Utc.with_ymd_and_hms(2025, 9, 26, 17, 21, 11).unwrap());
    }

    #[test]
    fn rejects_too_many_fraction_digits_and_garbage() {
        assert!(parse_provider_datetime("2025-09-26T17:21:11.03678451Z").is_err());
        assert!(parse_provider_datetime("2025-09-26T17:21:11.Z").is_err());
        assert!(parse_provider_datetime("yesterday").is_err());
        assert!(parse_provider_datetime("2025-13-26T17:21:11Z").is_err());
        assert!(parse_provider_datetime("").is_err());
    }
}

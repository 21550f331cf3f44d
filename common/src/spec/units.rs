//! Durations and sizes as the definitions file writes them: `500ms`, `10s`, `2m`, `1h`;
//! `512k`, `128m`, `1g` (binary units, as Docker).

use std::time::Duration;

use serde::Serializer;

/// A mebibyte, in bytes.
pub(super) const MIB: u64 = 1024 * 1024;

/// Splits `"500ms"` into `(500, "ms")`: a whole number and the (trimmed) unit after it.
fn number_and_unit(s: &str) -> Option<(u64, String)> {
    let s = s.trim();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let number = s[..end].parse().ok()?;
    Some((number, s[end..].trim().to_ascii_lowercase()))
}

/// Parses a duration: a whole number with a unit (`500ms`, `10s`, `2m`, `1h`), or a bare
/// number of seconds (`"10"`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (number, unit) = number_and_unit(s)?;
    let millis_per_unit = match unit.as_str() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    number.checked_mul(millis_per_unit).map(Duration::from_millis)
}

/// Formats a duration the way [`parse_duration`] reads it, in the largest exact unit
/// (`90s` is `90s`, `120s` is `2m`). Below a millisecond it writes nanoseconds, which
/// [`parse_duration`] does not read.
pub fn format_duration(d: Duration) -> String {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{}ns", d.as_nanos());
    }
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    for (unit, unit_ms) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms.is_multiple_of(unit_ms) {
            return format!("{}{unit}", ms / unit_ms);
        }
    }
    format!("{ms}ms")
}

pub(super) fn serialize_duration<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_duration(*d))
}

/// Parses a size in bytes: a whole number with an optional unit, `b`, `k`, `m` or `g`
/// (also `kb`/`kib`, `mb`/`mib`, `gb`/`gib`, any case). Units are binary, as in Docker:
/// `1k` is 1024 bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let (number, unit) = number_and_unit(s)?;
    let bytes_per_unit = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "ki" | "kib" => 1024,
        "m" | "mb" | "mi" | "mib" => MIB,
        "g" | "gb" | "gi" | "gib" => 1024 * MIB,
        _ => return None,
    };
    number.checked_mul(bytes_per_unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("500ms"), Some(ms(500)));
        assert_eq!(parse_duration("10s"), Some(ms(10_000)));
        assert_eq!(parse_duration("10"), Some(ms(10_000)));
        assert_eq!(parse_duration(" 2m "), Some(ms(120_000)));
        assert_eq!(parse_duration("1h"), Some(ms(3_600_000)));
        assert_eq!(parse_duration("3 S"), Some(ms(3_000)));
        for bad in ["", "s", "1.5s", "-1s", "10d", "1m30s", "99999999999999999999h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations_format_back() {
        for (d, s) in [(500, "500ms"), (10_000, "10s"), (120_000, "2m"), (7_200_000, "2h"), (0, "0s")] {
            assert_eq!(format_duration(Duration::from_millis(d)), s);
            assert_eq!(parse_duration(s), Some(Duration::from_millis(d)));
        }
        assert_eq!(format_duration(Duration::from_micros(1500)), "1500000ns");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("100b"), Some(100));
        assert_eq!(parse_size("512k"), Some(512 * 1024));
        assert_eq!(parse_size("128m"), Some(128 * MIB));
        assert_eq!(parse_size("128M"), Some(128 * MIB));
        assert_eq!(parse_size("128MiB"), Some(128 * MIB));
        assert_eq!(parse_size("1g"), Some(1024 * MIB));
        assert_eq!(parse_size("2GB"), Some(2048 * MIB));
        for bad in ["", "m", "1.5g", "-1m", "1t", "99999999999999999999g"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
}

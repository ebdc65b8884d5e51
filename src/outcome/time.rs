//! Times the pipeline writes into its records, rows and documents: RFC 3339 text or numbers
//! since the epoch in any unit, each with how coarse it is (its last digit).

use std::time::UNIX_EPOCH;

/// Numbers below this are seconds since the epoch, below 1000 times it milliseconds, and so on.
const SECONDS_BELOW: f64 = 1e11;

/// A time the pipeline wrote: nanoseconds since the Unix epoch, and how coarse it is (the
/// last digit written: a whole second, a millisecond...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time {
    pub ns: i64,
    pub resolution_ns: i64,
}

/// A time the pipeline wrote: an RFC 3339 string (`Z` or an offset such as `+02:00`, any
/// fraction of a second), or a number of seconds, milliseconds, microseconds or nanoseconds
/// since the epoch, told apart by size (seconds below 1e11, i.e. until the year 5138;
/// milliseconds below 1e14; microseconds below 1e17; nanoseconds above), as a JSON number or a
/// string of digits. Its resolution is its last digit. The error completes "`/field` ...".
pub fn parse_time(value: &serde_json::Value) -> Result<Time, String> {
    let not_a_time = || {
        let shown = crate::util::text::printable(&value.to_string(), 80);
        format!("is not a time (RFC 3339, or a number since the epoch), got {shown}")
    };
    let time = match value {
        serde_json::Value::Number(n) => number(&n.to_string()),
        serde_json::Value::String(s) => {
            let s = s.trim();
            rfc3339(s).or_else(|| number(s))
        }
        _ => None,
    };
    time.ok_or_else(not_a_time)
}

/// Multipliers to nanoseconds of a number since the epoch, by the size that tells its unit.
const UNITS: [(f64, i64); 4] = [
    (SECONDS_BELOW, 1_000_000_000),
    (SECONDS_BELOW * 1e3, 1_000_000),
    (SECONDS_BELOW * 1e6, 1_000),
    (f64::INFINITY, 1),
];

/// A number since the epoch as written (`1796032800123`, `1796032800.123456`), in
/// nanoseconds; `None` unless positive and before 2262. Whole numbers are taken exactly.
fn number(text: &str) -> Option<Time> {
    let n: f64 = text
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n > 0.0)?;
    let (_, scale) = UNITS.iter().find(|(below, _)| n < *below)?;
    let (ns, digits) = match text.parse::<i64>() {
        Ok(whole) => (whole.checked_mul(*scale)?, 0),
        Err(_) => {
            let ns = n * *scale as f64;
            if ns >= i64::MAX as f64 {
                return None;
            }
            // the digits written after the point (none in an exponent form)
            let fraction = text.split_once('.').map_or("", |(_, f)| f);
            let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
            (ns.round() as i64, digits)
        }
    };
    let resolution_ns = (*scale / 10i64.pow(digits.min(9) as u32)).max(1);
    Some(Time { ns, resolution_ns })
}

/// An RFC 3339 time (`2026-11-30T10:41:07.512874Z`, `...+02:00`; a space for the `T` too).
fn rfc3339(s: &str) -> Option<Time> {
    let b = s.as_bytes();
    let (base, offset_s) = if let Some(base) = s.strip_suffix(['Z', 'z']) {
        (base, 0i64)
    } else if b.len() > 6 && matches!(b[b.len() - 6], b'+' | b'-') && b[b.len() - 3] == b':' {
        let (base, offset) = s.split_at(s.len() - 6);
        let hours: i64 = offset[1..3].parse().ok()?;
        let minutes: i64 = offset[4..6].parse().ok()?;
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        (base, sign * (hours * 3600 + minutes * 60))
    } else {
        return None;
    };
    let utc = humantime::parse_rfc3339_weak(base).ok()?;
    let ns = i64::try_from(utc.duration_since(UNIX_EPOCH).ok()?.as_nanos()).ok()?;
    let digits = base.split_once('.').map_or(0, |(_, f)| f.len().min(9));
    Some(Time {
        // The local time minus its offset is UTC.
        ns: ns - offset_s * 1_000_000_000,
        resolution_ns: 10i64.pow(9 - digits as u32),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const MS: i64 = 1_000_000;

    #[test]
    fn times_are_rfc3339_or_numbers_since_the_epoch_of_any_unit() {
        let want = 1_796_032_800_123_456_000i64;
        let time = |v: serde_json::Value| parse_time(&v).unwrap_or_else(|e| panic!("{v}: {e}"));
        for (v, resolution_ns) in [
            (json!("2026-11-30T10:00:00.123456Z"), 1_000),
            (json!("2026-11-30T11:00:00.123456+01:00"), 1_000),
            (json!("2026-11-30T04:30:00.123456-05:30"), 1_000),
            (json!("2026-11-30 10:00:00.123456z"), 1_000),
            (json!(1_796_032_800_123_456_000u64), 1),
            (json!(1_796_032_800_123_456u64), 1_000),
            (json!("1796032800123456"), 1_000),
        ] {
            let got = time(v.clone());
            assert_eq!((got.ns, got.resolution_ns), (want, resolution_ns), "{v}");
        }
        // each to its last digit
        let ms = time(json!(1_796_032_800_123u64));
        assert_eq!((ms.ns, ms.resolution_ns), (want - 456_000, MS));
        let s = time(json!("2026-11-30T10:00:00Z"));
        assert_eq!((s.ns, s.resolution_ns), (want - 123_456_000, 1_000_000_000));
        // seconds with a fraction: as exact as a double holds them (a few hundred ns here)
        for v in [json!(1_796_032_800.123_456), json!("1796032800.123456")] {
            let got = time(v.clone());
            assert!((got.ns - want).abs() < 1_000, "{v}: {got:?}");
            assert_eq!(got.resolution_ns, 1_000, "{v}");
        }
        for bad in [
            json!("yesterday"),
            json!(true),
            json!(null),
            json!(0),
            json!(-5),
            json!("2026-11-30T10:00:00+0100"),
            json!(1e300),
            json!({ "t": 1 }),
        ] {
            let e = parse_time(&bad).unwrap_err();
            assert!(e.starts_with("is not a time"), "{bad}: {e}");
        }
    }
}

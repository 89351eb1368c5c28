//! HTTP-date (RFC 9110 §5.6.7): formatting as IMF-fixdate and parsing all three accepted forms
//! (IMF-fixdate, obsolete RFC 850, asctime). Pure functions over seconds since the Unix epoch;
//! the proleptic Gregorian calendar conversion is Howard Hinnant's `days_from_civil`.

use std::time::{SystemTime, UNIX_EPOCH};

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const LONG_DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Whole seconds since the epoch of `t` (negative before 1970).
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // Round towards minus infinity, so 1969-12-31T23:59:59.5 is -1.
        Err(e) => {
            let d = e.duration();
            let s = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() > 0 { -s - 1 } else { -s }
        }
    }
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date (year, month 1–12, day 1–31) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // Both are in range by construction (1..=31, 1..=12).
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

/// Formats `secs` as an IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`. Every response
/// carries one (`Date`, and `Last-Modified` for streams), so years 0–9999 are written digit by
/// digit rather than through `format!`.
pub fn format(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let weekday = DAYS[usize::try_from(days.rem_euclid(7)).unwrap_or(0)];
    let month = MONTHS[(m - 1) as usize];
    let Ok(year) = u32::try_from(y) else {
        return slow_format(weekday, d, month, y, rem);
    };
    if year > 9999 {
        return slow_format(weekday, d, month, y, rem);
    }
    let mut out = String::with_capacity(29);
    out.push_str(weekday);
    out.push_str(", ");
    push_two(&mut out, d);
    out.push(' ');
    out.push_str(month);
    out.push(' ');
    push_two(&mut out, year / 100);
    push_two(&mut out, year % 100);
    out.push(' ');
    // 0..86_400 fits a u32.
    let rem = u32::try_from(rem).unwrap_or(0);
    push_two(&mut out, rem / 3600);
    out.push(':');
    push_two(&mut out, rem / 60 % 60);
    out.push(':');
    push_two(&mut out, rem % 60);
    out.push_str(" GMT");
    out
}

/// Appends `v` (below 100) as two digits.
fn push_two(out: &mut String, v: u32) {
    out.push(char::from(b'0' + (v / 10 % 10) as u8));
    out.push(char::from(b'0' + (v % 10) as u8));
}

/// [`format`] for years outside 0–9999.
fn slow_format(weekday: &str, d: u32, month: &str, y: i64, rem: i64) -> String {
    format!(
        "{weekday}, {d:02} {month} {y:04} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Parses an HTTP-date in any of the three forms of RFC 9110 §5.6.7 into seconds since the
/// epoch. Returns `None` for anything else (callers then ignore the header, as the RFC says).
/// The weekday is checked for form only, not against the date.
pub fn parse(v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?.trim_matches([' ', '\t']);
    parse_imf(s)
        .or_else(|| parse_rfc850(s))
        .or_else(|| parse_asctime(s))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`
fn parse_imf(s: &str) -> Option<i64> {
    let (day, rest) = s.split_once(", ")?;
    if !DAYS.contains(&day) {
        return None;
    }
    let p: Vec<&str> = rest.split(' ').collect();
    let [d, mon, y, time, "GMT"] = p.as_slice() else {
        return None;
    };
    if d.len() != 2 || y.len() != 4 {
        return None;
    }
    build(num(y)?, month(mon)?, num(d)?, time)
}

/// `Sunday, 06-Nov-94 08:49:37 GMT` (two-digit year: RFC 9110 says a year that appears to be
/// more than 50 years in the future is in the past, which for hexzd's lifetime means 19xx for
/// 70–99 and 20xx otherwise).
fn parse_rfc850(s: &str) -> Option<i64> {
    let (day, rest) = s.split_once(", ")?;
    if !LONG_DAYS.contains(&day) {
        return None;
    }
    let p: Vec<&str> = rest.split(' ').collect();
    let [date, time, "GMT"] = p.as_slice() else {
        return None;
    };
    let q: Vec<&str> = date.split('-').collect();
    let [d, mon, y] = q.as_slice() else {
        return None;
    };
    if d.len() != 2 || y.len() != 2 {
        return None;
    }
    let y = num(y)?;
    let y = if y >= 70 { 1900 + y } else { 2000 + y };
    build(y, month(mon)?, num(d)?, time)
}

/// `Sun Nov  6 08:49:37 1994`
fn parse_asctime(s: &str) -> Option<i64> {
    let day = s.get(..4)?;
    if !DAYS.iter().any(|d| day == format!("{d} ")) {
        return None;
    }
    let mon = s.get(4..7)?;
    if s.get(7..8)? != " " {
        return None;
    }
    let d = s.get(8..10)?.trim_start_matches(' ');
    let rest = s.get(10..)?;
    let p: Vec<&str> = rest.split(' ').collect();
    let ["", time, y] = p.as_slice() else {
        return None;
    };
    if y.len() != 4 || d.is_empty() {
        return None;
    }
    build(num(y)?, month(mon)?, num(d)?, time)
}

fn build(y: u32, m: u32, d: u32, time: &str) -> Option<i64> {
    let t: Vec<&str> = time.split(':').collect();
    let [h, mi, s] = t.as_slice() else {
        return None;
    };
    if h.len() != 2 || mi.len() != 2 || s.len() != 2 {
        return None;
    }
    let (h, mi, s) = (num(h)?, num(mi)?, num(s)?);
    // 60 allows a leap second (RFC 9110 §5.6.7).
    if !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(i64::from(y), m, d);
    Some(days * 86_400 + i64::from(h * 3600 + mi * 60 + s))
}

fn num(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn month(s: &str) -> Option<u32> {
    MONTHS
        .iter()
        .position(|m| *m == s)
        .and_then(|i| u32::try_from(i + 1).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of RFC 9110 §5.6.7 in its three spellings.
    const RFC_EXAMPLE: i64 = 784_111_777;

    #[test]
    fn formats_the_rfc_example() {
        assert_eq!(format(RFC_EXAMPLE), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(format(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(format(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(format(-1), "Wed, 31 Dec 1969 23:59:59 GMT");
        // The digit-by-digit years and the others write what `format!` writes.
        let by_format = |secs: i64| {
            let days = secs.div_euclid(86_400);
            let (y, m, d) = civil_from_days(days);
            let weekday = DAYS[usize::try_from(days.rem_euclid(7)).unwrap()];
            slow_format(
                weekday,
                d,
                MONTHS[(m - 1) as usize],
                y,
                secs.rem_euclid(86_400),
            )
        };
        for secs in [
            0,
            -1,
            RFC_EXAMPLE,
            1_764_374_400 + 86_399,
            253_402_300_799,
            253_402_300_800,
            -62_167_219_200,
            -62_167_219_201,
            -62_198_755_200,
        ] {
            assert_eq!(format(secs), by_format(secs), "{secs}");
        }
        assert_eq!(format(253_402_300_799), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn parses_all_three_forms() {
        assert_eq!(parse(b"Sun, 06 Nov 1994 08:49:37 GMT"), Some(RFC_EXAMPLE));
        assert_eq!(parse(b"Sunday, 06-Nov-94 08:49:37 GMT"), Some(RFC_EXAMPLE));
        assert_eq!(parse(b"Sun Nov  6 08:49:37 1994"), Some(RFC_EXAMPLE));
        assert_eq!(
            parse(b"Thu Nov 16 08:49:37 1994"),
            Some(RFC_EXAMPLE + 10 * 86_400)
        );
    }

    #[test]
    fn round_trips() {
        for secs in [
            0,
            1,
            86_399,
            86_400,
            1_700_000_000,
            4_102_444_800,
            253_402_300_799,
        ] {
            assert_eq!(parse(format(secs).as_bytes()), Some(secs), "{secs}");
        }
    }

    #[test]
    fn rejects_near_misses() {
        for bad in [
            "",
            "yesterday",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 1994 8:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT junk",
            "Sun, +6 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-1994 08:49:37 GMT",
            "Sun Nov 6 08:49:37 1994",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn seconds_of_system_time() {
        assert_eq!(unix_seconds(UNIX_EPOCH), 0);
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1500);
        assert_eq!(unix_seconds(t), 1);
        let t = UNIX_EPOCH - std::time::Duration::from_millis(500);
        assert_eq!(unix_seconds(t), -1);
    }
}

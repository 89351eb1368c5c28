//! HTTP-date (RFC 9110 §5.6.7) over seconds since the Unix epoch: a thin layer over the
//! `httpdate` crate, which formats IMF-fixdate and parses all three accepted forms (IMF-fixdate,
//! obsolete RFC 850, asctime). What this module adds is what the crate leaves to its caller:
//! signed seconds rather than `SystemTime`, and the years it cannot represent.
//!
//! `httpdate` covers 1970-01-01 to 9999-12-31 (and panics when asked to format outside it).
//! [`format()`] clamps to that span: a file time before 1970 (a zero or negative mtime) is written
//! as the epoch, and one past 9999 as the last second of 9999. [`parse`] returns `None` for a
//! date outside it, as for any other date it cannot read; callers then ignore the header, which
//! for every conditional header means serving the full representation (always safe).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Last second `httpdate` can format: 9999-12-31T23:59:59Z.
const MAX_SECS: i64 = 253_402_300_799;

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

/// Formats `secs` as an IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`, clamped to
/// 1970–9999 (see the module comment). The connection caches the `Date` string per second, so
/// this runs about once a second, not once a response.
pub fn format(secs: i64) -> String {
    // In 0..=MAX_SECS after the clamp, so the conversion cannot fail.
    let secs = u64::try_from(secs.clamp(0, MAX_SECS)).unwrap_or(0);
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Parses an HTTP-date in any of the three forms of RFC 9110 §5.6.7 into seconds since the
/// epoch. Returns `None` for anything else (callers then ignore the header, as the RFC says),
/// including a weekday that does not match the date and a date before 1970.
pub fn parse(v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?.trim_matches([' ', '\t']);
    httpdate::parse_http_date(s).ok().map(unix_seconds)
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
        assert_eq!(format(MAX_SECS), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn clamps_what_the_crate_cannot_represent() {
        assert_eq!(format(-1), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(format(i64::MIN), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(format(MAX_SECS + 1), "Fri, 31 Dec 9999 23:59:59 GMT");
        assert_eq!(format(i64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn parses_all_three_forms() {
        assert_eq!(parse(b"Sun, 06 Nov 1994 08:49:37 GMT"), Some(RFC_EXAMPLE));
        assert_eq!(parse(b"Sunday, 06-Nov-94 08:49:37 GMT"), Some(RFC_EXAMPLE));
        assert_eq!(parse(b"Sun Nov  6 08:49:37 1994"), Some(RFC_EXAMPLE));
        assert_eq!(
            parse(b"Wed Nov 16 08:49:37 1994"),
            Some(RFC_EXAMPLE + 10 * 86_400)
        );
        // Optional whitespace around a field value.
        assert_eq!(
            parse(b" Sun, 06 Nov 1994 08:49:37 GMT\t"),
            Some(RFC_EXAMPLE)
        );
        // RFC 850's two-digit years: 70-99 are 19xx, the rest 20xx.
        assert_eq!(parse(b"Thursday, 01-Jan-70 00:00:00 GMT"), Some(0), "1970");
        assert_eq!(
            parse(b"Saturday, 01-Jan-00 00:00:00 GMT"),
            Some(946_684_800),
            "2000"
        );
    }

    #[test]
    fn round_trips() {
        for secs in [0, 1, 86_399, 86_400, 1_700_000_000, 4_102_444_800, MAX_SECS] {
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
            // A day the month does not have, and a weekday that is not the date's.
            "Tue, 31 Feb 2000 00:00:00 GMT",
            "Mon, 06 Nov 1994 08:49:37 GMT",
            // Before 1970: outside what httpdate represents (see the module comment).
            "Wed, 31 Dec 1969 23:59:59 GMT",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(parse(b"\xff\xfe"), None);
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

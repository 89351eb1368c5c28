//! The `Range` header (RFC 9110 §14.1–14.2) and hexzd's answer to it (http.md §3 steps 4, 6–8
//! and the `max_range_bytes` clamp of §3a). Pure functions over header bytes and a length: the
//! connection code only carries out the [`Decision`].

use super::request::trim_ows;

/// Most ranges a request may ask for; more is answered 416 (http.md §3 step 8, allowed by
/// RFC 9110 §14.2 as denial-of-service protection).
pub const MAX_RANGES: usize = 16;

/// One `range-spec` as written, before it meets a length. Numbers that overflow `u64` saturate
/// to `u64::MAX`, which later reads as "past the end" (first), "to the end" (last) or "the
/// whole representation" (suffix), as RFC 9110 §14.1.1 asks recipients to guard against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `first-last`, inclusive, with `first <= last`.
    Bounded { first: u64, last: u64 },
    /// `first-`: to the end.
    From { first: u64 },
    /// `-n`: the last `n` bytes.
    Suffix { n: u64 },
}

/// What a `Range` header value means, before it meets a length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// `bytes=` followed by a valid range-set, in request order.
    Bytes(Vec<RangeSpec>),
    /// A unit other than `bytes`: the header MUST be ignored.
    UnknownUnit,
    /// Not valid `Range` syntax: ignored (a server MAY ignore an invalid header; clients expect
    /// 200, http.md §7).
    Invalid,
}

/// An inclusive byte range `first..=last` inside a representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub first: u64,
    /// Last byte (inclusive, `>= first`).
    pub last: u64,
}

impl ByteRange {
    /// Number of bytes.
    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    /// Never true (a range holds at least one byte); here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// hexzd's answer to a GET with a `Range` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Ignore the header: 200 with the whole representation.
    Full,
    /// 206 with one `Content-Range`.
    Single(ByteRange),
    /// 206 `multipart/byteranges`, parts in request order (two or more).
    Multi(Vec<ByteRange>),
    /// 416 with `Content-Range: bytes */LEN`.
    Unsatisfiable,
}

/// True for the OWS characters of RFC 9110 §5.6.3.
fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// True for a `tchar` of RFC 9110 §5.6.2.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses `1*DIGIT`, saturating at `u64::MAX`. Signs, spaces and empty input are refused.
fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

fn spec(v: &[u8]) -> Option<RangeSpec> {
    let dash = v.iter().position(|&b| b == b'-')?;
    let (a, b) = (&v[..dash], &v[dash + 1..]);
    match (a.is_empty(), b.is_empty()) {
        (true, true) => None,
        (true, false) => Some(RangeSpec::Suffix { n: digits(b)? }),
        (false, true) => Some(RangeSpec::From { first: digits(a)? }),
        (false, false) => {
            let (first, last) = (digits(a)?, digits(b)?);
            (first <= last).then_some(RangeSpec::Bounded { first, last })
        }
    }
}

/// Parses a `Range` field value (RFC 9110 §14.2): `unit=range-set`, the unit a case-insensitive
/// token, the set a comma list whose empty elements are allowed (§5.6.1.2), with OWS only
/// around commas. One invalid spec makes the whole header [`Parsed::Invalid`].
pub fn parse(value: &[u8]) -> Parsed {
    let value = trim_ows(value);
    let Some(eq) = value.iter().position(|&b| b == b'=') else {
        return Parsed::Invalid;
    };
    let (unit, set) = (&value[..eq], &value[eq + 1..]);
    if unit.is_empty() || !unit.iter().copied().all(is_tchar) {
        return Parsed::Invalid;
    }
    if !unit.eq_ignore_ascii_case(b"bytes") {
        return Parsed::UnknownUnit;
    }
    // `1#range-spec`: `*( "," OWS ) range-spec *( OWS "," [ OWS range-spec ] )`, so no OWS
    // directly after `=` (`bytes= 0-9` is invalid), any around commas.
    if set.first().copied().is_some_and(is_ows) {
        return Parsed::Invalid;
    }
    let mut specs = Vec::new();
    for element in set.split(|&b| b == b',') {
        let element = trim_ows(element);
        if element.is_empty() {
            continue;
        }
        match spec(element) {
            Some(s) => specs.push(s),
            None => return Parsed::Invalid,
        }
    }
    if specs.is_empty() {
        return Parsed::Invalid;
    }
    Parsed::Bytes(specs)
}

/// The satisfiable part of `spec` in a representation of `len` bytes (RFC 9110 §14.1.1), or
/// `None`. `last` is clamped to `len - 1`; a suffix longer than `len` is the whole thing.
pub fn satisfy(spec: RangeSpec, len: u64) -> Option<ByteRange> {
    if len == 0 {
        return None;
    }
    match spec {
        RangeSpec::Bounded { first, last } => (first < len).then(|| ByteRange {
            first,
            last: last.min(len - 1),
        }),
        RangeSpec::From { first } => (first < len).then_some(ByteRange {
            first,
            last: len - 1,
        }),
        RangeSpec::Suffix { n } => (n > 0).then(|| ByteRange {
            first: len - n.min(len),
            last: len - 1,
        }),
    }
}

/// Decides the answer to a GET whose (single) `Range` header parsed to `parsed`, for a
/// representation of `len` bytes, with preconditions (If-Range) already found to allow it.
/// `max_range_bytes` (0 = no clamp) shortens the answer after satisfiability: a single range
/// keeps its first `max_range_bytes` bytes; a multipart answer keeps that many bytes in total,
/// in request order, dropping parts once the budget is spent (http.md §3a).
pub fn decide(parsed: &Parsed, len: u64, max_range_bytes: u64) -> Decision {
    let Parsed::Bytes(specs) = parsed else {
        return Decision::Full;
    };
    // Zero length: the only satisfiable form is a suffix, which Content-Range cannot express;
    // RFC 9110 §14.2 lets a server ignore Range on an empty representation.
    if len == 0 {
        return Decision::Full;
    }
    if specs.len() > MAX_RANGES {
        return Decision::Unsatisfiable;
    }
    let ranges: Vec<ByteRange> = specs.iter().filter_map(|s| satisfy(*s, len)).collect();
    if ranges.len() > 1 {
        // Asking for more bytes than the representation holds means overlap: answering it
        // would let a small request amplify into many copies of the image.
        let total = ranges.iter().fold(0u64, |t, r| t.saturating_add(r.len()));
        if total > len {
            return Decision::Unsatisfiable;
        }
    }
    let ranges = clamp(ranges, max_range_bytes);
    match ranges.as_slice() {
        [] => Decision::Unsatisfiable,
        [one] => Decision::Single(*one),
        _ => Decision::Multi(ranges),
    }
}

/// Applies the `max_range_bytes` budget to ranges in order (0 = unlimited).
fn clamp(ranges: Vec<ByteRange>, max: u64) -> Vec<ByteRange> {
    if max == 0 {
        return ranges;
    }
    let mut budget = max;
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        if budget == 0 {
            break;
        }
        let take = r.len().min(budget);
        budget -= take;
        out.push(ByteRange {
            first: r.first,
            last: r.first + take - 1,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEN: u64 = 1000;
    const MIB32: u64 = 32 << 20;

    fn r(first: u64, last: u64) -> ByteRange {
        ByteRange { first, last }
    }

    /// The decision for one header value at LEN = 1000 with the default clamp.
    fn d(v: &str) -> Decision {
        decide(&parse(v.as_bytes()), LEN, MIB32)
    }

    // http.md §4, row by row.

    #[test]
    fn bounded_range() {
        assert_eq!(d("bytes=0-99"), Decision::Single(r(0, 99)));
    }

    #[test]
    fn open_range() {
        assert_eq!(d("bytes=900-"), Decision::Single(r(900, 999)));
    }

    #[test]
    fn suffix_range() {
        assert_eq!(d("bytes=-100"), Decision::Single(r(900, 999)));
    }

    #[test]
    fn suffix_longer_than_the_representation_is_the_whole_thing() {
        assert_eq!(d("bytes=-5000"), Decision::Single(r(0, 999)));
    }

    #[test]
    fn last_past_the_end_is_clamped() {
        assert_eq!(d("bytes=990-5000"), Decision::Single(r(990, 999)));
    }

    #[test]
    fn nbdkit_style_end_one_past_is_clamped() {
        assert_eq!(d("bytes=0-1000"), Decision::Single(r(0, 999)));
    }

    #[test]
    fn first_at_or_past_the_end_is_unsatisfiable() {
        assert_eq!(d("bytes=1000-"), Decision::Unsatisfiable);
        assert_eq!(d("bytes=5000-6000"), Decision::Unsatisfiable);
    }

    #[test]
    fn zero_suffix_is_unsatisfiable() {
        assert_eq!(d("bytes=-0"), Decision::Unsatisfiable);
    }

    #[test]
    fn last_before_first_is_invalid() {
        assert_eq!(parse(b"bytes=5-1"), Parsed::Invalid);
        assert_eq!(d("bytes=5-1"), Decision::Full);
    }

    #[test]
    fn malformed_values_are_invalid() {
        for v in ["bytes=abc", "bytes 0-1", "bytes=", "bytes= 0-9"] {
            assert_eq!(parse(v.as_bytes()), Parsed::Invalid, "{v:?}");
            assert_eq!(d(v), Decision::Full, "{v:?}");
        }
    }

    #[test]
    fn unknown_unit_is_ignored() {
        assert_eq!(parse(b"items=0-1"), Parsed::UnknownUnit);
        assert_eq!(d("items=0-1"), Decision::Full);
    }

    #[test]
    fn unit_is_case_insensitive() {
        assert_eq!(d("Bytes=0-0"), Decision::Single(r(0, 0)));
    }

    #[test]
    fn signs_are_not_digits() {
        assert_eq!(parse(b"bytes=+5-+9"), Parsed::Invalid);
        assert_eq!(d("bytes=+5-+9"), Decision::Full);
    }

    #[test]
    fn trailing_junk_is_invalid() {
        assert_eq!(parse(b"bytes=0-9-junk"), Parsed::Invalid);
        assert_eq!(d("bytes=0-9-junk"), Decision::Full);
    }

    #[test]
    fn two_ranges_are_multipart() {
        assert_eq!(d("bytes=0-0, 2-3"), Decision::Multi(vec![r(0, 0), r(2, 3)]));
    }

    #[test]
    fn empty_list_elements_are_allowed() {
        assert_eq!(
            d("bytes=0-1, ,5-6"),
            Decision::Multi(vec![r(0, 1), r(5, 6)])
        );
        assert_eq!(d("bytes=,0-1"), Decision::Single(r(0, 1)));
        assert_eq!(
            d("bytes=0-1 , 5-6"),
            Decision::Multi(vec![r(0, 1), r(5, 6)])
        );
        assert_eq!(parse(b"bytes=,"), Parsed::Invalid);
    }

    #[test]
    fn unsatisfiable_specs_are_dropped_from_a_set() {
        assert_eq!(d("bytes=0-9,5000-6000"), Decision::Single(r(0, 9)));
        assert_eq!(d("bytes=5000-,-0"), Decision::Unsatisfiable);
    }

    #[test]
    fn overflowing_first_is_past_the_end() {
        assert_eq!(d("bytes=99999999999999999999999-"), Decision::Unsatisfiable);
    }

    #[test]
    fn overflowing_last_is_clamped() {
        assert_eq!(
            d("bytes=0-99999999999999999999999"),
            Decision::Single(r(0, 999))
        );
    }

    #[test]
    fn overflowing_suffix_is_the_whole_thing() {
        assert_eq!(
            d("bytes=-99999999999999999999999"),
            Decision::Single(r(0, 999))
        );
    }

    #[test]
    fn zero_length_ignores_any_range() {
        for v in ["bytes=0-0", "bytes=-1", "bytes=0-", "bytes=5-9"] {
            assert_eq!(
                decide(&parse(v.as_bytes()), 0, MIB32),
                Decision::Full,
                "{v}"
            );
        }
    }

    // http.md §3 step 8: denial-of-service limits.

    #[test]
    fn more_than_sixteen_ranges_are_refused() {
        let sixteen = (0..16)
            .map(|i| format!("{}-{}", i * 10, i * 10))
            .collect::<Vec<_>>();
        assert!(
            matches!(d(&format!("bytes={}", sixteen.join(","))), Decision::Multi(v) if v.len() == 16)
        );
        let seventeen = (0..17)
            .map(|i| format!("{}-{}", i * 10, i * 10))
            .collect::<Vec<_>>();
        assert_eq!(
            d(&format!("bytes={}", seventeen.join(","))),
            Decision::Unsatisfiable
        );
    }

    #[test]
    fn overlap_beyond_the_length_is_refused() {
        assert_eq!(d("bytes=0-,0-"), Decision::Unsatisfiable);
        assert_eq!(
            d("bytes=0-499,500-999"),
            Decision::Multi(vec![r(0, 499), r(500, 999)])
        );
        assert_eq!(d("bytes=0-500,500-999"), Decision::Unsatisfiable);
    }

    // http.md §3a: the clamp.

    #[test]
    fn clamp_shortens_a_single_range_and_keeps_its_start() {
        let p = parse(b"bytes=100-");
        assert_eq!(decide(&p, LEN, 64), Decision::Single(r(100, 163)));
        assert_eq!(decide(&p, LEN, 0), Decision::Single(r(100, 999)));
        assert_eq!(decide(&p, LEN, 900), Decision::Single(r(100, 999)));
        assert_eq!(decide(&p, LEN, 899), Decision::Single(r(100, 998)));
    }

    #[test]
    fn clamp_applies_after_satisfiability() {
        // The end is first clamped to EOF, so a clamp larger than what is left changes nothing.
        assert_eq!(
            decide(&parse(b"bytes=990-5000"), LEN, 64),
            Decision::Single(r(990, 999))
        );
        assert_eq!(
            decide(&parse(b"bytes=-100"), LEN, 10),
            Decision::Single(r(900, 909))
        );
    }

    #[test]
    fn clamp_budgets_multipart_in_request_order() {
        let p = parse(b"bytes=500-599,0-99,200-299");
        assert_eq!(
            decide(&p, LEN, 150),
            Decision::Multi(vec![r(500, 599), r(0, 49)])
        );
        assert_eq!(decide(&p, LEN, 100), Decision::Single(r(500, 599)));
        assert_eq!(
            decide(&p, LEN, 0),
            Decision::Multi(vec![r(500, 599), r(0, 99), r(200, 299)])
        );
    }

    #[test]
    fn lengths() {
        assert_eq!(r(0, 0).len(), 1);
        assert_eq!(r(0, u64::MAX - 1).len(), u64::MAX);
        assert!(!r(3, 4).is_empty());
    }
}

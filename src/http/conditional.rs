//! Validators and conditional requests (RFC 9110 §8.8, §13; http.md §3 steps 2 and 5): the
//! strong ETag of a stream, Last-Modified, and the evaluation of If-Match,
//! If-Unmodified-Since, If-None-Match, If-Modified-Since and If-Range in RFC order. Pure
//! functions over header bytes and [`Validators`].

use super::date;
use super::request::trim_ows;

/// The validators of one served stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validators {
    /// The strong entity-tag, quotes included (`"…"`).
    pub etag: String,
    /// Last-Modified in seconds since the epoch, never later than `date`.
    pub last_modified: i64,
    /// The response's Date in seconds since the epoch.
    pub date: i64,
}

impl Validators {
    /// Validators of `stream_name` of a snapshot with identity digest `identity`, modified at
    /// `mtime`, answered at `now` (both in seconds). A modification time in the future is
    /// replaced by `now` (RFC 9110 §8.8.2.1).
    pub fn new(identity: &[u8; 32], stream_name: &str, mtime: i64, now: i64) -> Validators {
        Validators {
            etag: etag(identity, stream_name),
            last_modified: mtime.min(now),
            date: now,
        }
    }

    /// True when Last-Modified may be used as a strong validator: at least one second older
    /// than Date (RFC 9110 §8.8.2.2), so a change within the same second cannot hide.
    pub fn last_modified_is_strong(&self) -> bool {
        self.last_modified < self.date
    }
}

/// The strong ETag of a stream: the first 128 bits of the snapshot's identity digest (which
/// covers the file's identity and its index, so any replacement of the file changes it), and
/// the stream's route name, so `/disk` and `/memory` never share a tag.
pub fn etag(identity: &[u8; 32], stream_name: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(48);
    s.push('"');
    for b in &identity[..16] {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s.push('-');
    s.push_str(stream_name);
    s.push('"');
    s
}

/// One member of an entity-tag list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EntityTag<'a> {
    weak: bool,
    /// The opaque tag, quotes included.
    opaque: &'a [u8],
}

/// Parses one `entity-tag` (RFC 9110 §8.8.3) at the start of `v`; returns it and the rest.
fn entity_tag(v: &[u8]) -> Option<(EntityTag<'_>, &[u8])> {
    let (weak, v) = match v.strip_prefix(b"W/") {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    if v.first() != Some(&b'"') {
        return None;
    }
    let close = v[1..].iter().position(|&b| b == b'"')? + 1;
    let opaque = &v[..=close];
    // etagc = %x21 / %x23-7E / obs-text
    if !opaque[1..close]
        .iter()
        .all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
    {
        return None;
    }
    Some((EntityTag { weak, opaque }, &v[close + 1..]))
}

/// A parsed `If-Match`/`If-None-Match` value: `*` or a list of entity-tags.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TagList<'a> {
    Any,
    Tags(Vec<EntityTag<'a>>),
}

/// Parses `"*" / #entity-tag`. `None` for an invalid value (then the header is ignored as a
/// whole, which is the conservative reading: the request proceeds unconditionally).
fn tag_list(v: &[u8]) -> Option<TagList<'_>> {
    let v = trim_ows(v);
    if v == b"*" {
        return Some(TagList::Any);
    }
    let mut tags = Vec::new();
    let mut rest = v;
    loop {
        rest = trim_start(rest);
        if let Some(r) = rest.strip_prefix(b",") {
            rest = r;
            continue;
        }
        if rest.is_empty() {
            break;
        }
        let (tag, r) = entity_tag(rest)?;
        tags.push(tag);
        rest = trim_start(r);
        match rest.first() {
            None => break,
            Some(b',') => rest = &rest[1..],
            Some(_) => return None,
        }
    }
    (!tags.is_empty()).then_some(TagList::Tags(tags))
}

fn trim_start(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    v
}

/// Strong comparison (RFC 9110 §8.8.3.2): both strong and identical.
fn strong_match(tag: &EntityTag<'_>, current: &str) -> bool {
    !tag.weak && tag.opaque == current.as_bytes()
}

/// Weak comparison: identical opaque tags, weakness ignored.
fn weak_match(tag: &EntityTag<'_>, current: &str) -> bool {
    tag.opaque == current.as_bytes()
}

/// The conditional header fields of a request, raw. A field sent on several lines is joined
/// with commas for the list-valued ones; for the single-valued ones (dates, If-Range) more
/// than one line is recorded as `Many`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    /// `If-Match`, lines joined with `, `.
    pub if_match: Option<Vec<u8>>,
    /// `If-None-Match`, lines joined with `, `.
    pub if_none_match: Option<Vec<u8>>,
    /// `If-Modified-Since`.
    pub if_modified_since: Single,
    /// `If-Unmodified-Since`.
    pub if_unmodified_since: Single,
    /// `If-Range`.
    pub if_range: Single,
}

/// A header field that must appear at most once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Single {
    /// Absent.
    #[default]
    None,
    /// Exactly one line.
    One(Vec<u8>),
    /// More than one line: invalid.
    Many,
}

impl Single {
    /// Records one more line of the field.
    pub fn push(&mut self, v: &[u8]) {
        *self = match self {
            Single::None => Single::One(v.to_vec()),
            _ => Single::Many,
        };
    }
}

/// The outcome of the preconditions for a GET or HEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answer normally; `honour_range` is false when If-Range failed (serve 200 in full).
    Proceed { honour_range: bool },
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    PreconditionFailed,
}

/// Evaluates the preconditions of a GET or HEAD in the order of RFC 9110 §13.2.2 against the
/// current validators. `has_range` says whether the request carries a Range header that would
/// otherwise be honoured (If-Range is ignored without one).
pub fn evaluate(c: &Conditions, v: &Validators, has_range: bool) -> Outcome {
    // 1. If-Match; 2. If-Unmodified-Since only without If-Match.
    if let Some(list) = c.if_match.as_deref().and_then(tag_list) {
        let ok = match list {
            TagList::Any => true,
            TagList::Tags(tags) => tags.iter().any(|t| strong_match(t, &v.etag)),
        };
        if !ok {
            return Outcome::PreconditionFailed;
        }
    } else if let Single::One(d) = &c.if_unmodified_since {
        if let Some(d) = date::parse(d) {
            if v.last_modified > d {
                return Outcome::PreconditionFailed;
            }
        }
    }
    // 3. If-None-Match (weak comparison); 4. If-Modified-Since only without it.
    if let Some(list) = c.if_none_match.as_deref().and_then(tag_list) {
        let matched = match list {
            TagList::Any => true,
            TagList::Tags(tags) => tags.iter().any(|t| weak_match(t, &v.etag)),
        };
        if matched {
            return Outcome::NotModified;
        }
    } else if let Single::One(d) = &c.if_modified_since {
        // An If-Modified-Since later than Date is invalid (§13.1.3): ignore it.
        if let Some(d) = date::parse(d).filter(|d| *d <= v.date) {
            if v.last_modified <= d {
                return Outcome::NotModified;
            }
        }
    }
    // 5. If-Range.
    let honour_range = !has_range || if_range_holds(&c.if_range, v);
    Outcome::Proceed { honour_range }
}

/// If-Range (RFC 9110 §13.1.5): true when the representation is unchanged, judged by a strong
/// entity-tag comparison or an exact match of a strong Last-Modified. Absent = true; anything
/// invalid or repeated = false (serve the full representation, which is always safe).
fn if_range_holds(f: &Single, v: &Validators) -> bool {
    let value = match f {
        Single::None => return true,
        Single::Many => return false,
        Single::One(value) => trim_ows(value),
    };
    if value.starts_with(b"\"") || value.starts_with(b"W/") {
        return match entity_tag(value) {
            Some((tag, [])) => strong_match(&tag, &v.etag),
            _ => false,
        };
    }
    match date::parse(value) {
        Some(d) => v.last_modified_is_strong() && d == v.last_modified,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const MTIME: i64 = NOW - 3600;

    fn v() -> Validators {
        Validators::new(&[0xab; 32], "disk", MTIME, NOW)
    }

    fn cond() -> Conditions {
        Conditions::default()
    }

    fn one(s: &str) -> Single {
        Single::One(s.as_bytes().to_vec())
    }

    #[test]
    fn etag_is_strong_quoted_and_per_stream() {
        let e = etag(&[0xab; 32], "disk");
        assert_eq!(e, format!("\"{}-disk\"", "ab".repeat(16)));
        assert_ne!(e, etag(&[0xab; 32], "memory"));
        assert_ne!(e, etag(&[0xac; 32], "disk"));
    }

    #[test]
    fn no_conditions_proceed() {
        assert_eq!(
            evaluate(&cond(), &v(), true),
            Outcome::Proceed { honour_range: true }
        );
    }

    // http.md §4: If-None-Match = current ETag, `*` or `W/` + same tag → 304.

    #[test]
    fn if_none_match_current_etag_is_not_modified() {
        let mut c = cond();
        c.if_none_match = Some(v().etag.into_bytes());
        assert_eq!(evaluate(&c, &v(), true), Outcome::NotModified);
    }

    #[test]
    fn if_none_match_star_is_not_modified() {
        let mut c = cond();
        c.if_none_match = Some(b"*".to_vec());
        assert_eq!(evaluate(&c, &v(), false), Outcome::NotModified);
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let mut c = cond();
        c.if_none_match = Some(format!("\"x\", W/{}", v().etag).into_bytes());
        assert_eq!(evaluate(&c, &v(), false), Outcome::NotModified);
    }

    #[test]
    fn if_none_match_other_tag_proceeds() {
        let mut c = cond();
        c.if_none_match = Some(b"\"other\"".to_vec());
        assert_eq!(
            evaluate(&c, &v(), false),
            Outcome::Proceed { honour_range: true }
        );
    }

    #[test]
    fn if_none_match_overrides_if_modified_since() {
        let mut c = cond();
        c.if_none_match = Some(b"\"other\"".to_vec());
        c.if_modified_since = one(&date::format(NOW));
        assert_eq!(
            evaluate(&c, &v(), false),
            Outcome::Proceed { honour_range: true }
        );
    }

    #[test]
    fn if_modified_since_not_after_last_modified() {
        let mut c = cond();
        c.if_modified_since = one(&date::format(MTIME));
        assert_eq!(evaluate(&c, &v(), false), Outcome::NotModified);
        c.if_modified_since = one(&date::format(MTIME - 1));
        assert_eq!(
            evaluate(&c, &v(), false),
            Outcome::Proceed { honour_range: true }
        );
    }

    #[test]
    fn if_modified_since_invalid_repeated_or_future_is_ignored() {
        let proceed = Outcome::Proceed { honour_range: true };
        let mut c = cond();
        c.if_modified_since = one("not a date");
        assert_eq!(evaluate(&c, &v(), false), proceed);
        c.if_modified_since = Single::Many;
        assert_eq!(evaluate(&c, &v(), false), proceed);
        c.if_modified_since = one(&date::format(NOW + 10));
        assert_eq!(evaluate(&c, &v(), false), proceed);
    }

    #[test]
    fn if_match_needs_a_strong_match() {
        let mut c = cond();
        c.if_match = Some(v().etag.into_bytes());
        assert_eq!(
            evaluate(&c, &v(), false),
            Outcome::Proceed { honour_range: true }
        );
        c.if_match = Some(format!("W/{}", v().etag).into_bytes());
        assert_eq!(evaluate(&c, &v(), false), Outcome::PreconditionFailed);
        c.if_match = Some(b"*".to_vec());
        assert_eq!(
            evaluate(&c, &v(), false),
            Outcome::Proceed { honour_range: true }
        );
    }

    #[test]
    fn if_unmodified_since() {
        let mut c = cond();
        c.if_unmodified_since = one(&date::format(MTIME - 1));
        assert_eq!(evaluate(&c, &v(), false), Outcome::PreconditionFailed);
        c.if_unmodified_since = one(&date::format(MTIME));
        assert_eq!(
            evaluate(&c, &v(), false),
            Outcome::Proceed { honour_range: true }
        );
    }

    // http.md §4: If-Range.

    #[test]
    fn if_range_current_strong_etag_honours_range() {
        let mut c = cond();
        c.if_range = one(&v().etag);
        assert_eq!(
            evaluate(&c, &v(), true),
            Outcome::Proceed { honour_range: true }
        );
    }

    #[test]
    fn if_range_stale_or_weak_etag_serves_full() {
        let mut c = cond();
        c.if_range = one("\"stale\"");
        assert_eq!(
            evaluate(&c, &v(), true),
            Outcome::Proceed {
                honour_range: false
            }
        );
        c.if_range = one(&format!("W/{}", v().etag));
        assert_eq!(
            evaluate(&c, &v(), true),
            Outcome::Proceed {
                honour_range: false
            }
        );
    }

    #[test]
    fn if_range_date_must_equal_a_strong_last_modified() {
        let mut c = cond();
        c.if_range = one(&date::format(MTIME));
        assert_eq!(
            evaluate(&c, &v(), true),
            Outcome::Proceed { honour_range: true }
        );
        c.if_range = one(&date::format(MTIME + 1));
        assert_eq!(
            evaluate(&c, &v(), true),
            Outcome::Proceed {
                honour_range: false
            }
        );
        // Last-Modified equal to Date is weak: a date never matches it.
        let fresh = Validators::new(&[1; 32], "disk", NOW, NOW);
        c.if_range = one(&date::format(NOW));
        assert_eq!(
            evaluate(&c, &fresh, true),
            Outcome::Proceed {
                honour_range: false
            }
        );
    }

    #[test]
    fn if_range_garbage_or_repeated_serves_full() {
        let mut c = cond();
        c.if_range = one("garbage");
        assert_eq!(
            evaluate(&c, &v(), true),
            Outcome::Proceed {
                honour_range: false
            }
        );
        c.if_range = Single::Many;
        assert_eq!(
            evaluate(&c, &v(), true),
            Outcome::Proceed {
                honour_range: false
            }
        );
    }

    #[test]
    fn if_range_without_range_is_ignored() {
        let mut c = cond();
        c.if_range = one("\"stale\"");
        assert_eq!(
            evaluate(&c, &v(), false),
            Outcome::Proceed { honour_range: true }
        );
    }

    #[test]
    fn future_mtime_is_replaced_by_date() {
        let v = Validators::new(&[0; 32], "disk", NOW + 100, NOW);
        assert_eq!(v.last_modified, NOW);
        assert!(!v.last_modified_is_strong());
    }

    #[test]
    fn tag_lists() {
        assert_eq!(tag_list(b"*"), Some(TagList::Any));
        assert_eq!(tag_list(b""), None);
        assert_eq!(tag_list(b"\"a\" junk"), None);
        assert_eq!(tag_list(b"a"), None);
        let Some(TagList::Tags(t)) = tag_list(b" \"a\" ,, W/\"b\" ,") else {
            panic!("list did not parse");
        };
        assert_eq!(t.len(), 2);
        assert!(!t[0].weak && t[1].weak);
        assert_eq!(t[1].opaque, b"\"b\"");
    }
}

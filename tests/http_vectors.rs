//! Every test vector of http.md §4 against a running server (LEN = 1000: a 1000-byte image
//! packed by hexzd; LEN = 0: the empty fixture), with the headers of §5.
#![allow(clippy::unwrap_used)]

mod http_support;

use std::sync::OnceLock;

use hexzd::http::HttpSettings;
use http_support::{Archive, Kind, Response, Target, cached_archive, fixtures, get, request};

both_kinds!(
    no_range_is_200_full,
    bounded_range,
    open_range,
    suffix_range,
    suffix_longer_than_len,
    last_past_eof_is_clamped,
    nbdkit_style_end,
    first_past_eof_is_416,
    zero_suffix_is_416,
    invalid_ranges_are_ignored,
    unit_is_case_insensitive,
    two_ranges_are_multipart,
    unsatisfiable_part_is_dropped,
    overflowing_numbers,
    two_range_header_lines_are_ignored,
    range_on_head_is_ignored,
    range_on_other_methods_is_405,
    zero_length_stream_ignores_range,
    if_range_current_etag_honours_range,
    if_range_stale_weak_or_date_serves_full,
    if_range_matching_strong_date_honours_range,
    if_none_match_is_304_and_ignores_range,
    if_modified_since,
    etag_differs_per_stream_and_snapshot,
    dos_limits_are_416,
);

const LEN: usize = 1000;

/// The 1000-byte image and its archive, an hour old so that Last-Modified is a strong
/// validator (RFC 9110 §8.8.2.2).
fn image() -> &'static (std::path::PathBuf, Vec<u8>) {
    static F: OnceLock<(std::path::PathBuf, Vec<u8>)> = OnceLock::new();
    F.get_or_init(|| {
        let (path, data) = cached_archive("len1000", LEN, 1);
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        (path, data)
    })
}

fn data() -> &'static [u8] {
    &image().1
}

/// A server of `kind`: the 1000-byte image (default) and the empty fixture.
fn server(kind: Kind) -> Box<dyn Target> {
    http_support::start(
        kind,
        HttpSettings::default(),
        &[
            Archive::new(&image().0, "len1000"),
            Archive::new(fixtures().join("empty-lz4.hxz"), "empty"),
        ],
    )
}

fn with_range(t: &dyn Target, v: &str) -> Response {
    get(t.addr(), "/disk", &[("Range", v)])
}

/// A 206 single part of `first..=last`, with the §5 headers and the right bytes.
fn assert_partial(r: &Response, first: usize, last: usize) {
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes {first}-{last}/{LEN}").as_str())
    );
    assert_eq!(r.content_length(), Some((last - first + 1) as u64));
    assert_eq!(r.body, data()[first..=last]);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_representation_headers(r);
}

fn assert_full(r: &Response) {
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-range"), None);
    assert_eq!(r.content_length(), Some(LEN as u64));
    assert_eq!(r.body, data());
    assert_representation_headers(r);
}

fn assert_representation_headers(r: &Response) {
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    let etag = r.header("etag").unwrap();
    assert!(etag.starts_with('"') && etag.ends_with("-disk\""), "{etag}");
    assert!(r.header("last-modified").unwrap().ends_with(" GMT"));
    assert!(r.header("date").unwrap().ends_with(" GMT"));
    assert_eq!(r.header("content-encoding"), None);
}

fn assert_unsatisfiable(r: &Response) {
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */1000"));
    assert_eq!(r.content_length(), Some(0));
    assert!(r.body.is_empty());
}

fn etag(t: &dyn Target) -> String {
    get(t.addr(), "/disk", &[])
        .header("etag")
        .unwrap()
        .to_string()
}

fn no_range_is_200_full(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    assert_full(&get(t.addr(), "/disk", &[]));
}

fn bounded_range(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    assert_partial(&with_range(t, "bytes=0-99"), 0, 99);
}

fn open_range(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    assert_partial(&with_range(t, "bytes=900-"), 900, 999);
}

fn suffix_range(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    assert_partial(&with_range(t, "bytes=-100"), 900, 999);
}

fn suffix_longer_than_len(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    assert_partial(&with_range(t, "bytes=-5000"), 0, 999);
}

fn last_past_eof_is_clamped(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    assert_partial(&with_range(t, "bytes=990-5000"), 990, 999);
}

fn nbdkit_style_end(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    assert_partial(&with_range(t, "bytes=0-1000"), 0, 999);
}

fn first_past_eof_is_416(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    assert_unsatisfiable(&with_range(t, "bytes=1000-"));
    assert_unsatisfiable(&with_range(t, "bytes=5000-6000"));
}

fn zero_suffix_is_416(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    assert_unsatisfiable(&with_range(t, "bytes=-0"));
}

fn invalid_ranges_are_ignored(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    for v in [
        "bytes=5-1",
        "bytes=abc",
        "bytes 0-1",
        "bytes=",
        "bytes= 0-9",
        "items=0-1",
        "bytes=+5-+9",
        "bytes=0-9-junk",
    ] {
        let r = with_range(t, v);
        assert_full(&r);
    }
}

fn unit_is_case_insensitive(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    assert_partial(&with_range(t, "Bytes=0-0"), 0, 0);
}

fn two_ranges_are_multipart(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    for (v, parts) in [
        ("bytes=0-0, 2-3", [(0usize, 0usize), (2, 3)]),
        ("bytes=0-1, ,5-6", [(0, 1), (5, 6)]),
    ] {
        let r = with_range(t, v);
        assert_eq!(r.status, 206, "{v}");
        assert_eq!(r.header("content-range"), None);
        let ct = r.header("content-type").unwrap();
        let boundary = ct
            .strip_prefix("multipart/byteranges; boundary=")
            .unwrap()
            .to_string();
        assert_eq!(r.content_length(), Some(r.body.len() as u64));
        assert_representation_headers(&r);
        let mut expected = Vec::new();
        for (i, (first, last)) in parts.iter().enumerate() {
            if i > 0 {
                expected.extend_from_slice(b"\r\n");
            }
            expected.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Type: application/octet-stream\r\n\
                     Content-Range: bytes {first}-{last}/1000\r\n\r\n"
                )
                .as_bytes(),
            );
            expected.extend_from_slice(&data()[*first..=*last]);
        }
        expected.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        assert_eq!(r.body, expected, "{v}");
    }
}

fn unsatisfiable_part_is_dropped(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    assert_partial(&with_range(t, "bytes=0-9,5000-6000"), 0, 9);
}

fn overflowing_numbers(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    assert_unsatisfiable(&with_range(t, "bytes=99999999999999999999999-"));
    assert_partial(&with_range(t, "bytes=0-99999999999999999999999"), 0, 999);
    assert_partial(&with_range(t, "bytes=-99999999999999999999999"), 0, 999);
}

fn two_range_header_lines_are_ignored(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    let r = get(
        t.addr(),
        "/disk",
        &[("Range", "bytes=0-1"), ("Range", "bytes=2-3")],
    );
    assert_full(&r);
}

fn range_on_head_is_ignored(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    let r = request(t.addr(), "HEAD", "/disk", &[("Range", "bytes=0-99")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.content_length(), Some(LEN as u64));
    assert_eq!(r.header("content-range"), None);
    assert!(r.body.is_empty());
    assert_representation_headers(&r);
    // HEAD carries the GET 200 header set.
    let g = get(t.addr(), "/disk", &[]);
    for name in [
        "content-type",
        "content-length",
        "accept-ranges",
        "etag",
        "last-modified",
    ] {
        assert_eq!(r.header(name), g.header(name), "{name}");
    }
}

fn range_on_other_methods_is_405(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    for m in ["POST", "PUT", "DELETE", "BREW"] {
        let r = request(t.addr(), m, "/disk", &[("Range", "bytes=0-1")]);
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
        assert!(r.body.is_empty());
    }
}

fn zero_length_stream_ignores_range(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    for v in [None, Some("bytes=0-0"), Some("bytes=-1"), Some("bytes=5-")] {
        let headers: Vec<(&str, &str)> = v.iter().map(|v| ("Range", *v)).collect();
        let r = get(t.addr(), "/snapshots/empty/disk", &headers);
        assert_eq!(r.status, 200, "{v:?}");
        assert_eq!(r.content_length(), Some(0));
        assert_eq!(r.header("content-range"), None);
        assert!(r.body.is_empty());
    }
    // The memory stream of an archive without one is zero-length too.
    let r = get(t.addr(), "/memory", &[("Range", "bytes=0-0")]);
    assert_eq!((r.status, r.content_length()), (200, Some(0)));
}

fn if_range_current_etag_honours_range(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    let r = with_range_and(t, &[("If-Range", &etag(t))]);
    assert_partial(&r, 0, 99);
}

fn if_range_stale_weak_or_date_serves_full(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    let weak = format!("W/{}", etag(t));
    for v in [
        "\"stale\"",
        weak.as_str(),
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "garbage",
    ] {
        assert_full(&with_range_and(t, &[("If-Range", v)]));
    }
}

fn if_range_matching_strong_date_honours_range(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    let lm = get(t.addr(), "/disk", &[])
        .header("last-modified")
        .unwrap()
        .to_string();
    assert_partial(&with_range_and(t, &[("If-Range", &lm)]), 0, 99);
}

fn with_range_and(t: &dyn Target, extra: &[(&str, &str)]) -> Response {
    let mut h = vec![("Range", "bytes=0-99")];
    h.extend_from_slice(extra);
    get(t.addr(), "/disk", &h)
}

fn if_none_match_is_304_and_ignores_range(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    let tag = etag(t);
    let weak = format!("W/{tag}");
    for v in [tag.as_str(), "*", weak.as_str(), &format!("\"x\", {tag}")] {
        let r = with_range_and(t, &[("If-None-Match", v)]);
        assert_eq!(r.status, 304, "{v}");
        assert_eq!(r.header("etag"), Some(tag.as_str()));
        assert_eq!(r.header("content-range"), None);
        assert_eq!(r.header("content-type"), None);
        assert!(r.body.is_empty());
    }
    let r = request(t.addr(), "HEAD", "/disk", &[("If-None-Match", &tag)]);
    assert_eq!(r.status, 304);
    assert_full(&with_range_and(
        t,
        &[("If-None-Match", "\"other\""), ("Range", "x")],
    ));
}

fn if_modified_since(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    let lm = get(t.addr(), "/disk", &[])
        .header("last-modified")
        .unwrap()
        .to_string();
    let r = get(t.addr(), "/disk", &[("If-Modified-Since", &lm)]);
    assert_eq!(r.status, 304);
    let r = get(
        t.addr(),
        "/disk",
        &[("If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT")],
    );
    assert_full(&r);
    let r = get(t.addr(), "/disk", &[("If-Modified-Since", "garbage")]);
    assert_full(&r);
}

fn etag_differs_per_stream_and_snapshot(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    let a = etag(t);
    let m = get(t.addr(), "/memory", &[]);
    let e = get(t.addr(), "/snapshots/empty/disk", &[]);
    assert_ne!(Some(a.as_str()), m.header("etag"));
    assert_ne!(Some(a.as_str()), e.header("etag"));
    assert_eq!(
        Some(a.as_str()),
        get(t.addr(), "/snapshots/len1000/disk", &[]).header("etag")
    );
}

fn dos_limits_are_416(kind: Kind) {
    let t = server(kind);
    let t = t.as_ref();
    let many: Vec<String> = (0..17).map(|i| format!("{i}-{i}")).collect();
    assert_unsatisfiable(&with_range(t, &format!("bytes={}", many.join(","))));
    assert_unsatisfiable(&with_range(t, "bytes=0-,0-"));
}

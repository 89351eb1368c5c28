//! Every test vector of http.md §4 against a running server (LEN = 1000: a 1000-byte image
//! packed by hexzd; LEN = 0: the empty fixture), with the headers of §5.
#![allow(clippy::unwrap_used)]

mod http_support;

use std::sync::OnceLock;

use hexzd::http::HttpSettings;
use http_support::{Archive, Response, Server, fixtures, get, pattern, request};

const LEN: usize = 1000;

struct Fixture {
    server: Server,
    data: Vec<u8>,
    _dir: tempfile::TempDir,
}

fn fx() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = pattern(LEN, 1);
        let path = http_support::pack(dir.path(), "len1000", &data, None);
        // An hour old, so Last-Modified is a strong validator (RFC 9110 §8.8.2.2).
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let server = Server::with(
            HttpSettings::default(),
            &[
                Archive::new(path, "len1000"),
                Archive::new(fixtures().join("empty-lz4.hxz"), "empty"),
            ],
        );
        Fixture {
            server,
            data,
            _dir: dir,
        }
    })
}

fn with_range(v: &str) -> Response {
    get(fx().server.addr, "/disk", &[("Range", v)])
}

/// A 206 single part of `first..=last`, with the §5 headers and the right bytes.
fn assert_partial(r: &Response, first: usize, last: usize) {
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes {first}-{last}/{LEN}").as_str())
    );
    assert_eq!(r.content_length(), Some((last - first + 1) as u64));
    assert_eq!(r.body, fx().data[first..=last]);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_representation_headers(r);
}

fn assert_full(r: &Response) {
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-range"), None);
    assert_eq!(r.content_length(), Some(LEN as u64));
    assert_eq!(r.body, fx().data);
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

fn etag() -> String {
    get(fx().server.addr, "/disk", &[])
        .header("etag")
        .unwrap()
        .to_string()
}

#[test]
fn no_range_is_200_full() {
    assert_full(&get(fx().server.addr, "/disk", &[]));
}

#[test]
fn bounded_range() {
    assert_partial(&with_range("bytes=0-99"), 0, 99);
}

#[test]
fn open_range() {
    assert_partial(&with_range("bytes=900-"), 900, 999);
}

#[test]
fn suffix_range() {
    assert_partial(&with_range("bytes=-100"), 900, 999);
}

#[test]
fn suffix_longer_than_len() {
    assert_partial(&with_range("bytes=-5000"), 0, 999);
}

#[test]
fn last_past_eof_is_clamped() {
    assert_partial(&with_range("bytes=990-5000"), 990, 999);
}

#[test]
fn nbdkit_style_end() {
    assert_partial(&with_range("bytes=0-1000"), 0, 999);
}

#[test]
fn first_past_eof_is_416() {
    assert_unsatisfiable(&with_range("bytes=1000-"));
    assert_unsatisfiable(&with_range("bytes=5000-6000"));
}

#[test]
fn zero_suffix_is_416() {
    assert_unsatisfiable(&with_range("bytes=-0"));
}

#[test]
fn invalid_ranges_are_ignored() {
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
        let r = with_range(v);
        assert_full(&r);
    }
}

#[test]
fn unit_is_case_insensitive() {
    assert_partial(&with_range("Bytes=0-0"), 0, 0);
}

#[test]
fn two_ranges_are_multipart() {
    for (v, parts) in [
        ("bytes=0-0, 2-3", [(0usize, 0usize), (2, 3)]),
        ("bytes=0-1, ,5-6", [(0, 1), (5, 6)]),
    ] {
        let r = with_range(v);
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
            expected.extend_from_slice(&fx().data[*first..=*last]);
        }
        expected.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        assert_eq!(r.body, expected, "{v}");
    }
}

#[test]
fn unsatisfiable_part_is_dropped() {
    assert_partial(&with_range("bytes=0-9,5000-6000"), 0, 9);
}

#[test]
fn overflowing_numbers() {
    assert_unsatisfiable(&with_range("bytes=99999999999999999999999-"));
    assert_partial(&with_range("bytes=0-99999999999999999999999"), 0, 999);
    assert_partial(&with_range("bytes=-99999999999999999999999"), 0, 999);
}

#[test]
fn two_range_header_lines_are_ignored() {
    let r = get(
        fx().server.addr,
        "/disk",
        &[("Range", "bytes=0-1"), ("Range", "bytes=2-3")],
    );
    assert_full(&r);
}

#[test]
fn range_on_head_is_ignored() {
    let r = request(
        fx().server.addr,
        "HEAD",
        "/disk",
        &[("Range", "bytes=0-99")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.content_length(), Some(LEN as u64));
    assert_eq!(r.header("content-range"), None);
    assert!(r.body.is_empty());
    assert_representation_headers(&r);
    // HEAD carries the GET 200 header set.
    let g = get(fx().server.addr, "/disk", &[]);
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

#[test]
fn range_on_other_methods_is_405() {
    for m in ["POST", "PUT", "DELETE", "BREW"] {
        let r = request(fx().server.addr, m, "/disk", &[("Range", "bytes=0-1")]);
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
        assert!(r.body.is_empty());
    }
}

#[test]
fn zero_length_stream_ignores_range() {
    for v in [None, Some("bytes=0-0"), Some("bytes=-1"), Some("bytes=5-")] {
        let headers: Vec<(&str, &str)> = v.iter().map(|v| ("Range", *v)).collect();
        let r = get(fx().server.addr, "/snapshots/empty/disk", &headers);
        assert_eq!(r.status, 200, "{v:?}");
        assert_eq!(r.content_length(), Some(0));
        assert_eq!(r.header("content-range"), None);
        assert!(r.body.is_empty());
    }
    // The memory stream of an archive without one is zero-length too.
    let r = get(fx().server.addr, "/memory", &[("Range", "bytes=0-0")]);
    assert_eq!((r.status, r.content_length()), (200, Some(0)));
}

#[test]
fn if_range_current_etag_honours_range() {
    let r = with_range_and(&[("If-Range", &etag())]);
    assert_partial(&r, 0, 99);
}

#[test]
fn if_range_stale_weak_or_date_serves_full() {
    let weak = format!("W/{}", etag());
    for v in [
        "\"stale\"",
        weak.as_str(),
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "garbage",
    ] {
        assert_full(&with_range_and(&[("If-Range", v)]));
    }
}

#[test]
fn if_range_matching_strong_date_honours_range() {
    let lm = get(fx().server.addr, "/disk", &[])
        .header("last-modified")
        .unwrap()
        .to_string();
    assert_partial(&with_range_and(&[("If-Range", &lm)]), 0, 99);
}

fn with_range_and(extra: &[(&str, &str)]) -> Response {
    let mut h = vec![("Range", "bytes=0-99")];
    h.extend_from_slice(extra);
    get(fx().server.addr, "/disk", &h)
}

#[test]
fn if_none_match_is_304_and_ignores_range() {
    let tag = etag();
    let weak = format!("W/{tag}");
    for v in [tag.as_str(), "*", weak.as_str(), &format!("\"x\", {tag}")] {
        let r = with_range_and(&[("If-None-Match", v)]);
        assert_eq!(r.status, 304, "{v}");
        assert_eq!(r.header("etag"), Some(tag.as_str()));
        assert_eq!(r.header("content-range"), None);
        assert_eq!(r.header("content-type"), None);
        assert!(r.body.is_empty());
    }
    let r = request(
        fx().server.addr,
        "HEAD",
        "/disk",
        &[("If-None-Match", &tag)],
    );
    assert_eq!(r.status, 304);
    assert_full(&with_range_and(&[
        ("If-None-Match", "\"other\""),
        ("Range", "x"),
    ]));
}

#[test]
fn if_modified_since() {
    let lm = get(fx().server.addr, "/disk", &[])
        .header("last-modified")
        .unwrap()
        .to_string();
    let r = get(fx().server.addr, "/disk", &[("If-Modified-Since", &lm)]);
    assert_eq!(r.status, 304);
    let r = get(
        fx().server.addr,
        "/disk",
        &[("If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT")],
    );
    assert_full(&r);
    let r = get(
        fx().server.addr,
        "/disk",
        &[("If-Modified-Since", "garbage")],
    );
    assert_full(&r);
}

#[test]
fn etag_differs_per_stream_and_snapshot() {
    let a = etag();
    let m = get(fx().server.addr, "/memory", &[]);
    let e = get(fx().server.addr, "/snapshots/empty/disk", &[]);
    assert_ne!(Some(a.as_str()), m.header("etag"));
    assert_ne!(Some(a.as_str()), e.header("etag"));
    assert_eq!(
        Some(a.as_str()),
        get(fx().server.addr, "/snapshots/len1000/disk", &[]).header("etag")
    );
}

#[test]
fn dos_limits_are_416() {
    let many: Vec<String> = (0..17).map(|i| format!("{i}-{i}")).collect();
    assert_unsatisfiable(&with_range(&format!("bytes={}", many.join(","))));
    assert_unsatisfiable(&with_range("bytes=0-,0-"));
}

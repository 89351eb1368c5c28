//! Routes (design.md §5, http.md §1): reduces a request-target to the decoded path and hands
//! it to [`crate::serving::names`], which resolves every name on the wire. Pure.

pub use crate::serving::names::Route;

/// The methods every resource allows (for `Allow` on 405). Every hexzd resource is read-only,
/// so it is always GET and HEAD.
pub const ALLOW: &str = "GET, HEAD";

/// Resolves a request-target. The query and fragment are ignored; an absolute-form target
/// (`http://host/disk`, which RFC 9112 §3.2.2 requires servers to accept) is reduced to its
/// path; percent-escapes are decoded. Paths are matched exactly (`/disk/` is not `/disk`).
pub fn route(target: &str) -> Route {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let path = strip_authority(path);
    match percent_decode(path) {
        Some(path) => crate::serving::names::http_route(&path),
        None => Route::NotFound,
    }
}

fn strip_authority(path: &str) -> &str {
    for scheme in ["http://", "https://"] {
        // Compare bytes: the target may hold UTF-8, and slicing the `str` at a fixed length
        // could split a character (and panic).
        let head = path.as_bytes().get(..scheme.len());
        if head.is_some_and(|h| h.eq_ignore_ascii_case(scheme.as_bytes())) {
            let rest = &path[scheme.len()..];
            return rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    path
}

/// Decodes `%XX` escapes; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn non_ascii_targets_are_not_found_and_never_panic() {
        // Regression: "/aaaaé" has a multi-byte character across byte 7, where the check for
        // "http://" used to slice the string.
        for t in [
            "/aaaaa\u{e9}",
            "h\u{e9}\u{e9}\u{e9}\u{e9}",
            "/\u{1F600}\u{1F600}",
            "\u{e9}",
        ] {
            assert_eq!(super::route(t), super::Route::NotFound, "{t:?}");
        }
        assert_eq!(super::strip_authority("http://h\u{e9}/disk"), "/disk");
    }

    use super::*;
    use crate::format::Stream;

    fn stream(snapshot: Option<&str>, stream: Stream) -> Route {
        Route::Stream {
            snapshot: snapshot.map(str::to_string),
            stream,
        }
    }

    #[test]
    fn reference_routes() {
        assert_eq!(route("/disk"), stream(None, Stream::Main));
        assert_eq!(route("/memory"), stream(None, Stream::Aux));
        assert_eq!(route("/disk?x=1"), stream(None, Stream::Main));
        assert_eq!(
            route("http://example.com:8080/disk"),
            stream(None, Stream::Main)
        );
    }

    #[test]
    fn named_routes() {
        assert_eq!(
            route("/snapshots/vm-1/disk"),
            stream(Some("vm-1"), Stream::Main)
        );
        assert_eq!(
            route("/snapshots/vm-1/memory"),
            stream(Some("vm-1"), Stream::Aux)
        );
        assert_eq!(
            route("/snapshots/vm%2D1/disk"),
            stream(Some("vm-1"), Stream::Main)
        );
        assert_eq!(route("/snapshots"), Route::List);
        assert_eq!(route("/healthz"), Route::Health);
        assert_eq!(route("/metrics"), Route::Metrics);
    }

    #[test]
    fn everything_else_is_not_found() {
        for t in [
            "/disk/",
            "/",
            "*",
            "/DISK",
            "/snapshots/",
            "/snapshots/a",
            "/snapshots/a/b/disk",
            "/snapshots/../disk",
            "/snapshots/a%2Fb/disk",
            "/snapshots/a/disk/",
            "/%zz",
            "/snapshots/disk/disk",
        ] {
            assert_eq!(route(t), Route::NotFound, "{t}");
        }
    }
}

//! Every name on the wire, resolved in one place (design.md §5): HTTP paths to a snapshot
//! stream or an admin resource, NBD export names to a snapshot stream, the `NBD_OPT_LIST`
//! entries with their descriptions, and the syntax of snapshot names that keeps these apart.
//!
//! Pure: names in, catalog entries out. The front ends own the syntax around the names (an
//! HTTP request-target's authority, query and percent-escapes; the bytes of an NBD option),
//! and hand the bare name here.

use super::catalog::{Catalog, NamedSnapshot};
use crate::format::Stream;

/// Longest snapshot name.
pub const MAX_NAME_LEN: usize = 128;
/// The HTTP path prefix of named snapshots: `/snapshots/NAME/disk`.
const SNAPSHOTS_PREFIX: &str = "/snapshots/";

/// The stream a wire word names: `disk` (main) or `memory` (auxiliary), the reference's
/// route names.
fn stream_word(word: &str) -> Option<Stream> {
    Stream::ALL.into_iter().find(|s| s.route_name() == word)
}

/// True for a name usable as a snapshot name: 1 to [`MAX_NAME_LEN`] of `[A-Za-z0-9._-]`, not
/// `.` or `..` (it is a path segment in HTTP), and not a stream word (`disk`, `memory`), which
/// would make the NBD export names `disk` and `memory` ambiguous.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && stream_word(name).is_none()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The snapshot a name addresses: `None` is the default snapshot.
pub fn lookup<'c>(catalog: &'c Catalog, snapshot: Option<&str>) -> Option<&'c NamedSnapshot> {
    match snapshot {
        None => catalog.default_snapshot(),
        Some(name) => catalog.get(name),
    }
}

/// A resource hexzd serves over HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A stream of a snapshot: `/disk`, `/memory` (`snapshot: None` = the default snapshot),
    /// `/snapshots/NAME/disk`, `/snapshots/NAME/memory`.
    Stream {
        /// The snapshot's name, or `None` for the default one.
        snapshot: Option<String>,
        /// Which stream.
        stream: Stream,
    },
    /// `/snapshots`: the JSON list.
    List,
    /// `/healthz`.
    Health,
    /// `/metrics`.
    Metrics,
    /// Anything else: 404.
    NotFound,
}

/// Resolves a decoded HTTP path (no query, no escapes). Paths are matched exactly: `/disk/` is
/// not `/disk`, and a snapshot name must be [valid](valid_name).
pub fn http_route(path: &str) -> Route {
    match path {
        "/snapshots" => return Route::List,
        "/healthz" => return Route::Health,
        "/metrics" => return Route::Metrics,
        _ => {}
    }
    if let Some(stream) = path.strip_prefix('/').and_then(stream_word) {
        return Route::Stream {
            snapshot: None,
            stream,
        };
    }
    let named = path
        .strip_prefix(SNAPSHOTS_PREFIX)
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(name, word)| Some((name, stream_word(word)?)))
        .filter(|(name, _)| valid_name(name));
    match named {
        Some((name, stream)) => Route::Stream {
            snapshot: Some(name.to_string()),
            stream,
        },
        None => Route::NotFound,
    }
}

/// The HTTP path of a snapshot stream: `/snapshots/NAME/disk` or `/snapshots/NAME/memory`.
pub fn http_stream_path(snapshot: &str, stream: Stream) -> String {
    format!("{SNAPSHOTS_PREFIX}{snapshot}/{}", stream.route_name())
}

/// Resolves an NBD export name: `""` (what nbd-client sends without `-N`) and `disk` are the
/// default snapshot's main stream, `memory` its auxiliary stream; `NAME`, `NAME/disk` and
/// `NAME/memory` address any snapshot.
pub fn resolve_export<'c>(
    catalog: &'c Catalog,
    export: &str,
) -> Option<(&'c NamedSnapshot, Stream)> {
    if export.is_empty() {
        return catalog.default_snapshot().map(|s| (s, Stream::Main));
    }
    if let Some(stream) = stream_word(export) {
        return catalog.default_snapshot().map(|s| (s, stream));
    }
    let (name, stream) = match export.rsplit_once('/') {
        Some((name, word)) => (name, stream_word(word)?),
        None => (export, Stream::Main),
    };
    catalog.get(name).map(|s| (s, stream))
}

/// The canonical export name of a snapshot stream (`NBD_INFO_NAME`): `NAME/disk` or
/// `NAME/memory`.
pub fn canonical_export(snapshot: &NamedSnapshot, stream: Stream) -> String {
    format!("{}/{}", snapshot.name, stream.route_name())
}

/// The human-readable description of an export (`NBD_INFO_DESCRIPTION`).
pub fn describe_export(snapshot: &NamedSnapshot, stream: Stream) -> String {
    let word = match stream {
        Stream::Main => "disk (main stream)",
        Stream::Aux => "memory (auxiliary stream)",
    };
    format!(
        "hexzd snapshot {}: {word}, {} bytes, read-only",
        snapshot.name,
        snapshot.snapshot.size(stream)
    )
}

/// One export name served, with what it resolves to: an `NBD_OPT_LIST` entry.
#[derive(Debug)]
pub struct Export<'c> {
    /// The name a client sends.
    pub name: String,
    /// The snapshot behind it.
    pub snapshot: &'c NamedSnapshot,
    /// Which stream.
    pub stream: Stream,
    /// Its `NBD_OPT_LIST` description.
    pub description: String,
}

/// Every export name served, in a stable order: the default snapshot's short names (`""`,
/// `disk`, `memory`) first, then `NAME`, `NAME/disk`, `NAME/memory` for each snapshot.
pub fn exports(catalog: &Catalog) -> Vec<Export<'_>> {
    let mut v = Vec::new();
    if let Some(d) = catalog.default_snapshot() {
        let mut short = |name: &str, stream| {
            v.push(Export {
                name: name.to_string(),
                snapshot: d,
                stream,
                description: format!("default snapshot; {}", describe_export(d, stream)),
            });
        };
        short("", Stream::Main);
        for stream in Stream::ALL {
            short(stream.route_name(), stream);
        }
    }
    for e in catalog.entries() {
        let mut named = |name: String, stream| {
            v.push(Export {
                name,
                snapshot: e,
                stream,
                description: describe_export(e, stream),
            });
        };
        named(e.name.clone(), Stream::Main);
        for stream in Stream::ALL {
            named(canonical_export(e, stream), stream);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Snapshot;

    fn catalog() -> Catalog {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hexz-0.8.2");
        let entry = |name: &str, file: &str| NamedSnapshot {
            name: name.into(),
            snapshot: Snapshot::open(dir.join(file)).expect("fixture opens"),
        };
        Catalog::new(
            vec![
                entry("vm", "vm-dir-lz4.hxz"),
                entry("hello", "hello-lz4.hxz"),
            ],
            None,
        )
        .expect("catalog")
    }

    #[test]
    fn names() {
        assert!(valid_name("vm-1.snap_2"));
        assert!(valid_name(&"a".repeat(MAX_NAME_LEN)));
        for bad in ["", "disk", "memory", "a/b", "a b", ".", "..", "é"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(!valid_name(&"a".repeat(MAX_NAME_LEN + 1)));
    }

    #[test]
    fn http_paths() {
        let stream = |snapshot: Option<&str>, stream| Route::Stream {
            snapshot: snapshot.map(str::to_string),
            stream,
        };
        assert_eq!(http_route("/disk"), stream(None, Stream::Main));
        assert_eq!(http_route("/memory"), stream(None, Stream::Aux));
        assert_eq!(
            http_route("/snapshots/vm/memory"),
            stream(Some("vm"), Stream::Aux)
        );
        assert_eq!(http_route("/snapshots"), Route::List);
        assert_eq!(http_route("/healthz"), Route::Health);
        assert_eq!(http_route("/metrics"), Route::Metrics);
        for p in [
            "/snapshots/disk/disk",
            "/snapshots/a/b",
            "/disk/",
            "/main",
            "disk",
        ] {
            assert_eq!(http_route(p), Route::NotFound, "{p}");
        }
        // Every path hexzd publishes routes back to what it names.
        assert_eq!(
            http_route(&http_stream_path("vm", Stream::Aux)),
            stream(Some("vm"), Stream::Aux)
        );
    }

    #[test]
    fn export_names_resolve_as_design_section_5_says() {
        let c = catalog();
        let got = |e: &str| resolve_export(&c, e).map(|(s, st)| (s.name.clone(), st));
        assert_eq!(got(""), Some(("vm".into(), Stream::Main)));
        assert_eq!(got("disk"), Some(("vm".into(), Stream::Main)));
        assert_eq!(got("memory"), Some(("vm".into(), Stream::Aux)));
        assert_eq!(got("hello"), Some(("hello".into(), Stream::Main)));
        assert_eq!(got("hello/disk"), Some(("hello".into(), Stream::Main)));
        assert_eq!(got("hello/memory"), Some(("hello".into(), Stream::Aux)));
        for unknown in ["nope", "hello/", "hello/main", "/disk", "hello/disk/disk"] {
            assert_eq!(got(unknown), None, "{unknown:?}");
        }
        assert!(resolve_export(&Catalog::default(), "").is_none());
    }

    #[test]
    fn every_listed_export_resolves_to_itself_and_says_what_it_is() {
        let c = catalog();
        let list = exports(&c);
        let names: Vec<&str> = list.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "",
                "disk",
                "memory",
                "vm",
                "vm/disk",
                "vm/memory",
                "hello",
                "hello/disk",
                "hello/memory"
            ]
        );
        for e in &list {
            let (s, stream) = resolve_export(&c, &e.name).expect("listed names resolve");
            assert_eq!(
                (s.name.as_str(), stream),
                (e.snapshot.name.as_str(), e.stream)
            );
            assert!(
                e.description.contains(&e.snapshot.name),
                "{}",
                e.description
            );
        }
        assert!(list[0].description.starts_with("default snapshot; "));
        assert!(!list[3].description.starts_with("default"));
        assert_eq!(canonical_export(list[1].snapshot, Stream::Aux), "vm/memory");
    }
}

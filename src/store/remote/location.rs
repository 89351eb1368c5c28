//! Where an archive lives (design.md §3): a local path, an `http(s)://` URL or an
//! `s3://BUCKET/KEY` object, told apart once, at open. Pure: no I/O.
//!
//! A URL may carry credentials (`https://user:secret@host/...`, or a presigned query). They
//! are kept apart from what is shown: [`RemoteUrl::display`] never contains the user
//! information or the query, and that is the only form that reaches errors, logs and
//! `/metrics`.

use std::path::{Path, PathBuf};

use percent_encoding::percent_decode_str;
use url::Url;

/// A location that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    /// The text looks like a URL but does not parse (the text itself is not repeated: it may
    /// hold a password).
    #[error("{scheme}://…: not a valid URL: {reason}")]
    Invalid { scheme: String, reason: String },
    /// A scheme hexzd cannot read from.
    #[error("{0}://…: unsupported URL scheme (use a path, http://, https:// or s3://BUCKET/KEY)")]
    Scheme(String),
    /// `s3://` without a bucket or without a key.
    #[error("{0}: an S3 location is s3://BUCKET/KEY")]
    S3(String),
}

/// Where an archive is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A file or block device on this machine.
    Local(PathBuf),
    /// An object behind HTTP(S) or S3.
    Remote(RemoteUrl),
}

/// What a remote location names.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// An HTTP(S) URL, user information removed; `basic` holds it for `Authorization: Basic`.
    Http {
        url: Url,
        basic: Option<(String, String)>,
    },
    /// An S3 object: bucket and key (decoded).
    S3 { bucket: String, key: String },
}

/// A remote archive location. `Debug` and [`display`](Self::display) never show credentials.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RemoteUrl {
    pub(crate) kind: Kind,
}

impl std::fmt::Debug for RemoteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteUrl({})", self.display())
    }
}

/// The scheme of `s` when it starts like a URL (`scheme://`), lowercased.
fn url_scheme(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    (first_ok
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty())
    .then(|| scheme.to_ascii_lowercase())
}

impl Location {
    /// Tells a URL from a path. Anything starting `scheme://` is a URL (a local file whose
    /// name starts that way is reached as `./http://…`); other text is a path.
    pub fn parse(p: &Path) -> Result<Location, LocationError> {
        let Some(s) = p.to_str() else {
            return Ok(Location::Local(p.to_path_buf()));
        };
        match url_scheme(s) {
            None => Ok(Location::Local(p.to_path_buf())),
            Some(_) => RemoteUrl::parse(s).map(Location::Remote),
        }
    }

    /// True when `p` names a URL rather than a path.
    pub fn is_url(p: &Path) -> bool {
        p.to_str().and_then(url_scheme).is_some()
    }
}

impl RemoteUrl {
    /// Parses an `http://`, `https://` or `s3://BUCKET/KEY` URL.
    pub fn parse(s: &str) -> Result<RemoteUrl, LocationError> {
        let scheme = url_scheme(s).unwrap_or_default();
        let invalid = |reason: String| LocationError::Invalid {
            scheme: scheme.clone(),
            reason,
        };
        match scheme.as_str() {
            "http" | "https" => {
                let mut url = Url::parse(s).map_err(|e| invalid(e.to_string()))?;
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(invalid("no host".into()));
                }
                url.set_fragment(None);
                let basic = if url.username().is_empty() && url.password().is_none() {
                    None
                } else {
                    let dec = |v: &str| percent_decode_str(v).decode_utf8_lossy().into_owned();
                    Some((dec(url.username()), dec(url.password().unwrap_or(""))))
                };
                // Both succeed on an http(s) URL with a host.
                let _ = url.set_username("");
                let _ = url.set_password(None);
                Ok(RemoteUrl {
                    kind: Kind::Http { url, basic },
                })
            }
            "s3" => {
                let url = Url::parse(s).map_err(|e| invalid(e.to_string()))?;
                let bucket = url.host_str().unwrap_or("").to_string();
                let key = percent_decode_str(url.path().trim_start_matches('/'))
                    .decode_utf8_lossy()
                    .into_owned();
                if bucket.is_empty() || key.is_empty() || key.ends_with('/') {
                    return Err(LocationError::S3(format!("s3://{bucket}/{key}")));
                }
                if url.query().is_some() || !url.username().is_empty() {
                    return Err(invalid(
                        "an s3:// URL has no query or user; credentials come from the environment or [s3]".into(),
                    ));
                }
                Ok(RemoteUrl {
                    kind: Kind::S3 { bucket, key },
                })
            }
            other => Err(LocationError::Scheme(other.to_string())),
        }
    }

    /// The URL as shown in messages, logs and metrics: no user information, and the query
    /// (which may be a presigned signature) replaced by `?…`.
    pub fn display(&self) -> String {
        match &self.kind {
            Kind::Http { url, .. } => {
                let mut u = url.clone();
                let had_query = u.query().is_some();
                u.set_query(None);
                let mut s = u.to_string();
                if had_query {
                    s.push_str("?…");
                }
                s
            }
            Kind::S3 { bucket, key } => format!("s3://{bucket}/{key}"),
        }
    }

    /// The origin a parent reference or a redirect is compared with: `scheme://host[:port]`
    /// as the URL standard serialises it (lowercase host, default port omitted), or
    /// `s3://BUCKET`.
    pub fn origin(&self) -> String {
        match &self.kind {
            Kind::Http { url, .. } => url.origin().ascii_serialization(),
            Kind::S3 { bucket, .. } => format!("s3://{bucket}"),
        }
    }

    /// True for `s3://` locations.
    pub fn is_s3(&self) -> bool {
        matches!(self.kind, Kind::S3 { .. })
    }

    /// The location a parent path stored in this archive names: relative paths (and absolute
    /// ones, which stay on this origin) resolve against this URL; a URL stands for itself.
    /// Credentials of this URL carry over only when the parent is on the same origin.
    pub fn join(&self, parent: &str) -> Result<RemoteUrl, LocationError> {
        if url_scheme(parent).is_some() {
            return RemoteUrl::parse(parent);
        }
        match &self.kind {
            Kind::Http { url, basic } => {
                let joined = url.join(parent).map_err(|e| LocationError::Invalid {
                    scheme: url.scheme().to_string(),
                    reason: e.to_string(),
                })?;
                let mut r = RemoteUrl::parse(joined.as_str())?;
                if let Kind::Http { basic: b, .. } = &mut r.kind {
                    b.clone_from(basic);
                }
                Ok(r)
            }
            Kind::S3 { bucket, key } => {
                let base = Url::parse(&format!("s3://{bucket}/"))
                    .and_then(|b| b.join(&encode_key(key)))
                    .and_then(|b| b.join(parent))
                    .map_err(|e| LocationError::Invalid {
                        scheme: "s3".into(),
                        reason: e.to_string(),
                    })?;
                RemoteUrl::parse(base.as_str())
            }
        }
    }
}

/// Percent-encodes the characters of an S3 key that a URL path would read differently.
fn encode_key(key: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
        .add(b' ')
        .add(b'%')
        .add(b'?')
        .add(b'#')
        .add(b'"')
        .add(b'<')
        .add(b'>');
    percent_encoding::utf8_percent_encode(key, SET).to_string()
}

/// Normalises an origin written in the config (`https://mirror.example:8443`,
/// `s3://other-bucket`) the way [`RemoteUrl::origin`] writes it.
pub fn normalize_origin(s: &str) -> Result<String, LocationError> {
    let trimmed = s.trim_end_matches('/');
    match url_scheme(trimmed).as_deref() {
        Some("s3") => {
            let bucket = trimmed["s3://".len()..].to_string();
            if bucket.is_empty() || bucket.contains('/') {
                return Err(LocationError::S3(s.to_string()));
            }
            Ok(format!("s3://{bucket}"))
        }
        Some("http" | "https") => {
            let u = Url::parse(trimmed).map_err(|e| LocationError::Invalid {
                scheme: "http".into(),
                reason: e.to_string(),
            })?;
            if !u.username().is_empty() || u.password().is_some() || u.path() != "/" {
                return Err(LocationError::Invalid {
                    scheme: u.scheme().into(),
                    reason: "an origin is scheme://host[:port], without a path or user".into(),
                });
            }
            Ok(u.origin().ascii_serialization())
        }
        Some(other) => Err(LocationError::Scheme(other.to_string())),
        None => Err(LocationError::Invalid {
            scheme: String::new(),
            reason: format!("{s:?} is not an origin (scheme://host[:port] or s3://BUCKET)"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(s: &str) -> RemoteUrl {
        match Location::parse(Path::new(s)).unwrap() {
            Location::Remote(r) => r,
            Location::Local(p) => panic!("{s} parsed as a path {p:?}"),
        }
    }

    #[test]
    fn paths_and_urls_are_told_apart() {
        for p in ["a.hxz", "/srv/a.hxz", "./http://x", "dir/s3:/x", "c:x"] {
            assert_eq!(
                Location::parse(Path::new(p)).unwrap(),
                Location::Local(p.into())
            );
        }
        assert!(remote("http://h/a.hxz").origin() == "http://h");
        assert!(remote("HTTPS://H:443/a.hxz").origin() == "https://h");
        assert!(remote("s3://b/k/a.hxz").is_s3());
        assert_eq!(
            Location::parse(Path::new("ftp://h/a")).unwrap_err(),
            LocationError::Scheme("ftp".into())
        );
        assert!(matches!(
            Location::parse(Path::new("s3://bucket")).unwrap_err(),
            LocationError::S3(_)
        ));
        assert!(matches!(
            Location::parse(Path::new("http://:80/x")).unwrap_err(),
            LocationError::Invalid { .. }
        ));
    }

    #[test]
    fn credentials_never_reach_the_display_form() {
        let r = remote("https://alice:s3cr%40t@example.com:8443/a/b.hxz?X-Amz-Signature=abc#f");
        let shown = r.display();
        assert_eq!(shown, "https://example.com:8443/a/b.hxz?…");
        assert!(!format!("{r:?}").contains("s3cr"));
        match &r.kind {
            Kind::Http { basic, .. } => {
                assert_eq!(basic.as_ref().unwrap(), &("alice".into(), "s3cr@t".into()));
            }
            Kind::S3 { .. } => unreachable!(),
        }
        // A URL that does not parse is not echoed either.
        let e = RemoteUrl::parse("http://bob:pw@[::1/x")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("pw"), "{e}");
    }

    #[test]
    fn parents_resolve_against_the_child_url() {
        let c = remote("https://u:p@h/snap/v1/child.hxz");
        let p = c.join("base.hxz").unwrap();
        assert_eq!(p.display(), "https://h/snap/v1/base.hxz");
        assert_eq!(p.origin(), c.origin());
        assert!(matches!(&p.kind, Kind::Http { basic: Some(_), .. }));
        assert_eq!(
            c.join("../b.hxz").unwrap().display(),
            "https://h/snap/b.hxz"
        );
        assert_eq!(
            c.join("/abs/b.hxz").unwrap().display(),
            "https://h/abs/b.hxz"
        );
        let other = c.join("http://10.0.0.1/b.hxz").unwrap();
        assert_ne!(other.origin(), c.origin());
        assert!(matches!(&other.kind, Kind::Http { basic: None, .. }));

        let s = remote("s3://bkt/snap/child.hxz");
        assert_eq!(
            s.join("base.hxz").unwrap().display(),
            "s3://bkt/snap/base.hxz"
        );
        assert_eq!(
            s.join("out/b b.hxz").unwrap().display(),
            "s3://bkt/snap/out/b b.hxz"
        );
        assert_eq!(s.join("/top.hxz").unwrap().origin(), "s3://bkt");
        assert_eq!(s.join("s3://other/x.hxz").unwrap().origin(), "s3://other");
    }

    #[test]
    fn origins_in_the_config_are_normalised() {
        assert_eq!(
            normalize_origin("HTTPS://Mirror.Example:443/").unwrap(),
            "https://mirror.example"
        );
        assert_eq!(
            normalize_origin("http://[::1]:8080").unwrap(),
            "http://[::1]:8080"
        );
        assert_eq!(normalize_origin("s3://other").unwrap(), "s3://other");
        assert!(normalize_origin("https://h/path").is_err());
        assert!(normalize_origin("h:80").is_err());
        // Spellings of one address that an allow list by string would miss are one origin.
        assert_eq!(
            normalize_origin("http://0x7f.1").unwrap(),
            "http://127.0.0.1"
        );
    }
}

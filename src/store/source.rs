//! The source an archive's bytes are read from (design.md §2): a local file read with
//! `pread`, or a remote object read by range GETs through the chunk caches. A closed enum,
//! chosen once at open; everything above reads through [`Source::read_exact_at`], so the
//! local path costs one branch and no allocation more than a bare `pread`.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::StoreError;
use super::engine::Engine;
use super::remote::{Chunk, Location, RemoteError, RemoteObject, RemoteUrl};

/// Where an archive is read from.
#[derive(Debug)]
pub(crate) enum Source {
    /// A regular file or block device.
    Local(File),
    /// An object behind HTTP(S) or S3.
    Remote(Arc<RemoteObject>),
}

/// A failed read of a source.
#[derive(Debug)]
pub(crate) enum SourceError {
    Io(std::io::Error),
    Remote(RemoteError),
}

impl Source {
    /// Reads exactly `buf.len()` bytes at `offset`.
    #[inline]
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SourceError> {
        match self {
            Source::Local(f) => f.read_exact_at(buf, offset).map_err(SourceError::Io),
            Source::Remote(o) => o.read_at(buf, offset).map_err(SourceError::Remote),
        }
    }

    /// The remote object, if the source is one.
    pub fn remote(&self) -> Option<&Arc<RemoteObject>> {
        match self {
            Source::Local(_) => None,
            Source::Remote(o) => Some(o),
        }
    }

    /// Fetches the chunks of a remote source that `ranges` touch and holds them while the
    /// result lives (nothing for a local file; see [`RemoteObject::pin`]).
    pub fn pin(&self, ranges: &[(u64, u64)]) -> Result<Vec<Chunk>, RemoteError> {
        match self {
            Source::Local(_) => Ok(Vec::new()),
            Source::Remote(o) => o.pin(ranges),
        }
    }
}

/// Identity of an opened archive in the engine's registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ArchiveKey {
    /// A file: device, inode, size, mtime seconds and nanoseconds (kept apart so no date can
    /// overflow), and a fingerprint of the password it was opened with.
    File(u64, u64, u64, i64, i64, [u8; 32]),
    /// A remote object: URL, validator and size digest, and the password fingerprint.
    Remote([u8; 32], [u8; 32]),
}

/// Identity of an archive on a parent chain (to refuse loops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChainId {
    File(u64, u64),
    Remote([u8; 32]),
}

/// A source just opened, with what the rest of `Archive::open` needs to know about it.
#[derive(Debug)]
pub(crate) struct Opened {
    pub source: Source,
    /// The path, or the URL without credentials: what messages show.
    pub shown: PathBuf,
    /// Where it is (parent paths resolve against it).
    pub location: Location,
    /// Length in bytes.
    pub len: u64,
    /// Modification time (file mtime, or the object's Last-Modified).
    pub modified: SystemTime,
    pub chain_id: ChainId,
    /// Registry key without the password fingerprint.
    key: ArchiveKey,
    /// Bytes of identity for the archive's ETag digest.
    pub identity: Vec<u8>,
}

impl Opened {
    /// The registry key with the password fingerprint filled in.
    pub fn key(&self, fingerprint: [u8; 32]) -> ArchiveKey {
        match self.key.clone() {
            ArchiveKey::File(d, i, l, s, n, _) => ArchiveKey::File(d, i, l, s, n, fingerprint),
            ArchiveKey::Remote(id, _) => ArchiveKey::Remote(id, fingerprint),
        }
    }
}

/// Opens the archive at `path`: a URL through the engine's remote state, anything else as a
/// local file (never blocking; see `store::file`).
pub(crate) fn open(path: &Path, engine: &Engine) -> Result<Opened, StoreError> {
    match Location::parse(path)? {
        Location::Local(p) => open_local(&p),
        Location::Remote(url) => open_remote(&url, engine),
    }
}

pub(crate) fn open_local(path: &Path) -> Result<Opened, StoreError> {
    let super::file::Opened { file, meta, len } = super::file::open_archive(path)?;
    let mut identity = Vec::with_capacity(40);
    for v in [meta.dev(), meta.ino(), len] {
        identity.extend_from_slice(&v.to_le_bytes());
    }
    for v in [meta.mtime(), meta.mtime_nsec()] {
        identity.extend_from_slice(&v.to_le_bytes());
    }
    Ok(Opened {
        source: Source::Local(file),
        shown: path.to_path_buf(),
        location: Location::Local(path.to_path_buf()),
        len,
        modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        chain_id: ChainId::File(meta.dev(), meta.ino()),
        key: ArchiveKey::File(
            meta.dev(),
            meta.ino(),
            len,
            meta.mtime(),
            meta.mtime_nsec(),
            [0; 32],
        ),
        identity,
    })
}

pub(crate) fn open_remote(url: &RemoteUrl, engine: &Engine) -> Result<Opened, StoreError> {
    let shown = PathBuf::from(url.display());
    let object = RemoteObject::open(&engine.remote, url).map_err(|source| StoreError::Remote {
        path: shown.clone(),
        op: "open",
        source: Box::new(source),
    })?;
    let id = object.identity();
    Ok(Opened {
        len: object.size(),
        modified: object
            .last_modified()
            .and_then(parse_http_date)
            .unwrap_or(SystemTime::UNIX_EPOCH),
        chain_id: ChainId::Remote(id),
        key: ArchiveKey::Remote(id, [0; 32]),
        identity: id.to_vec(),
        source: Source::Remote(object),
        shown,
        location: Location::Remote(url.clone()),
    })
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form S3 and every current
/// server send `Last-Modified` in. Anything else gives `None` (the time is informational).
fn parse_http_date(v: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = v.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = i64::try_from(MONTHS.iter().position(|x| x == month)? + 1).ok()?;
    let d: i64 = day.parse().ok()?;
    let y: i64 = year.parse().ok()?;
    let mut hms = time.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, s) = (hms.next()??, hms.next()??, hms.next()??);
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + h * 3600 + mi * 60 + s).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        let t = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            784_111_777
        );
        assert!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT").is_none());
        assert!(parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT").is_none());
    }
}

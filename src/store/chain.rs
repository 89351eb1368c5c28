//! Thin-snapshot parent chains (hexz-format.md §11, design.md §6).
//!
//! A parent reference (offset `u64::MAX`) names its block by the BLAKE3 of the plaintext. The
//! parents listed in the header are opened at open time (a missing one is an error then, never
//! zeros later); each parent's hash index over its own data blocks is built on first use and
//! shared through the engine's archive registry. A lookup tries the parents in header order and,
//! depth first, their own parents, so references resolve through the whole chain.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};

use super::archive::{Archive, MAX_CHAIN_DEPTH, OpenContext};
use super::engine::Engine;
use super::remote::{Location, RemoteUrl};
use super::{StoreError, Stream};
use crate::format::{BlockInfo, BlockKind, Header};

/// Location of a block inside one archive: stream, page number, entry number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockLoc {
    pub stream: Stream,
    pub page: usize,
    pub entry: usize,
}

/// BLAKE3 → location map over an archive's data blocks (both streams). Keys are the first 16
/// bytes of the hash; the full hash is compared against the entry on lookup. Pages that failed
/// to load are remembered and retried when a lookup misses, so one bad (or transiently
/// unreadable) page costs only its own entries, and a miss reports that page's error rather
/// than "not found".
#[derive(Debug, Default)]
pub(crate) struct HashIndex {
    map: HashMap<u128, BlockLoc>,
    bad: Vec<(Stream, usize)>,
}

impl HashIndex {
    /// Adds the data blocks of one page.
    fn add_page(&mut self, stream: Stream, p: usize, blocks: &[BlockInfo]) {
        for (i, b) in blocks.iter().enumerate() {
            if b.kind() == BlockKind::Data && b.hash != [0; 32] {
                self.map.entry(short(&b.hash)).or_insert(BlockLoc {
                    stream,
                    page: p,
                    entry: i,
                });
            }
        }
    }
}

fn short(hash: &[u8; 32]) -> u128 {
    let mut b = [0u8; 16];
    b.copy_from_slice(&hash[..16]);
    u128::from_le_bytes(b)
}

/// A parent block found for a reference.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub archive: Arc<Archive>,
    pub info: BlockInfo,
    pub index: u64,
}

/// Candidate locations of a parent path, in the order hexzd tries them: relative to the
/// child's directory first (a daemon's working directory is arbitrary), then as written.
pub(crate) fn candidates(child: &Path, parent: &str) -> Vec<PathBuf> {
    let p = Path::new(parent);
    if p.is_absolute() {
        return vec![p.to_path_buf()];
    }
    let dir = child.parent().unwrap_or_else(|| Path::new(""));
    let mut v = vec![dir.join(p)];
    if v[0] != p {
        v.push(p.to_path_buf());
    }
    v
}

/// Where the parent `name` of an archive at `child` is looked for, and whether it may be
/// opened: a remote child's parents resolve against its URL and must stay on its origin (or
/// one `[remote] allow_origins` lists): a parent path is untrusted input, and a hostile
/// archive could name an internal address. A local child tries paths (beside it first, then
/// as written); a URL it names needs an allowed origin too.
pub(crate) enum ParentAt {
    /// Local paths, in the order to try them.
    Paths(Vec<PathBuf>),
    /// One remote location.
    Url(RemoteUrl),
    /// Refused, with the reason.
    Refused { shown: String, reason: String },
}

pub(crate) fn parent_at(child: &Location, name: &str, allow: &[String]) -> ParentAt {
    let refused = |url: &RemoteUrl, own: Option<String>| ParentAt::Refused {
        shown: url.display(),
        reason: format!(
            "it points to {}, {}; only origins listed in [remote] allow_origins may be named",
            url.origin(),
            match own {
                Some(o) => format!("not the child's origin {o}"),
                None => "and the child is a local file".into(),
            }
        ),
    };
    let allowed = |url: &RemoteUrl| allow.iter().any(|o| *o == url.origin());
    match child {
        Location::Local(p) if Location::is_url(Path::new(name)) => match RemoteUrl::parse(name) {
            Ok(url) if allowed(&url) => ParentAt::Url(url),
            Ok(url) => refused(&url, None),
            Err(e) => ParentAt::Refused {
                shown: name.to_string(),
                reason: e.to_string(),
            },
        },
        Location::Local(p) => ParentAt::Paths(candidates(p, name)),
        Location::Remote(c) => match c.join(name) {
            Ok(url) if url.origin() == c.origin() || allowed(&url) => ParentAt::Url(url),
            Ok(url) => refused(&url, Some(c.origin())),
            Err(e) => ParentAt::Refused {
                shown: name.to_string(),
                reason: e.to_string(),
            },
        },
    }
}

/// Opens every parent named by `header` (`child` is the archive's path or URL as shown).
pub(crate) fn open_parents(
    child: &Path,
    location: &Location,
    header: &Header,
    cx: &OpenContext<'_>,
) -> Result<Vec<Arc<Archive>>, StoreError> {
    if header.parent_paths.is_empty() {
        return Ok(Vec::new());
    }
    if cx.depth >= MAX_CHAIN_DEPTH {
        return Err(StoreError::corrupt(
            child,
            format!("parent chain deeper than {MAX_CHAIN_DEPTH} archives"),
        ));
    }
    let mut parents = Vec::with_capacity(header.parent_paths.len());
    let next = OpenContext {
        depth: cx.depth + 1,
        ..*cx
    };
    for name in &header.parent_paths {
        let parent_error = |tried: String, reason: String| StoreError::Parent {
            path: child.to_path_buf(),
            parent: name.clone(),
            tried,
            reason,
        };
        let tried = match parent_at(location, name, &cx.engine.remote.config.allow_origins) {
            ParentAt::Paths(p) => p,
            ParentAt::Refused { shown, reason } => return Err(parent_error(shown, reason)),
            ParentAt::Url(url) => {
                let a = Archive::open_url(&url, next)
                    .map_err(|e| parent_error(url.display(), e.to_string()))?;
                if !parents.iter().any(|p| Arc::ptr_eq(p, &a)) {
                    parents.push(a);
                }
                continue;
            }
        };
        let mut last_err = None;
        let mut found = None;
        for cand in &tried {
            // Only a candidate that is surely absent is skipped: a symbolic link loop or an
            // unreadable directory is opened, so its error is the one reported.
            if matches!(cand.try_exists(), Ok(false)) {
                continue;
            }
            match Archive::open_file(cand, next) {
                Ok(a) => {
                    found = Some(a);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        match found {
            // A path listed twice (or two paths to one file) is one parent.
            Some(a) if parents.iter().any(|p| Arc::ptr_eq(p, &a)) => {}
            Some(a) => parents.push(a),
            None => {
                return Err(StoreError::Parent {
                    path: child.to_path_buf(),
                    parent: name.clone(),
                    tried: tried
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    reason: last_err.map_or_else(|| "no such file".to_string(), |e| e.to_string()),
                });
            }
        }
    }
    Ok(parents)
}

/// A parent of an archive as `inspect` describes it: where it was found (if anywhere), an
/// identity to notice it again (a loop or a repeat), and how to open its index.
#[derive(Debug)]
pub struct ParentRef {
    /// The path or URL (without credentials) it resolved to, if it did.
    pub resolved: Option<String>,
    /// A canonical form: the same parent reached twice has the same identity.
    pub identity: Option<String>,
    target: Result<ParentTarget, String>,
}

#[derive(Debug)]
enum ParentTarget {
    File(PathBuf),
    Url(RemoteUrl),
}

impl ParentRef {
    /// Finds the parent `name` of `child` under the same rules as opening (the first local
    /// candidate that may exist; a URL on an allowed origin), without opening it.
    pub(crate) fn find(child: &Archive, engine: &Engine, name: &str) -> ParentRef {
        match parent_at(child.location(), name, &engine.remote.config.allow_origins) {
            ParentAt::Paths(p) => {
                // A symbolic link loop is not "not found": opening it reports the loop.
                match p.into_iter().find(|c| !matches!(c.try_exists(), Ok(false))) {
                    None => ParentRef {
                        resolved: None,
                        identity: None,
                        target: Err("not found".into()),
                    },
                    Some(c) => ParentRef {
                        resolved: Some(c.display().to_string()),
                        identity: Some(
                            std::fs::canonicalize(&c)
                                .unwrap_or_else(|_| c.clone())
                                .display()
                                .to_string(),
                        ),
                        target: Ok(ParentTarget::File(c)),
                    },
                }
            }
            ParentAt::Url(u) => ParentRef {
                resolved: Some(u.display()),
                identity: Some(u.display()),
                target: Ok(ParentTarget::Url(u)),
            },
            ParentAt::Refused { shown, reason } => ParentRef {
                resolved: Some(shown),
                identity: None,
                target: Err(format!("refused: {reason}")),
            },
        }
    }

    /// Opens the parent's header and index only (no key, no parents of its own).
    pub fn open_index(&self, engine: &Arc<Engine>) -> Result<super::Snapshot, String> {
        let cx = OpenContext {
            engine,
            password: None,
            depth: 0,
            chain: &[],
            index_only: true,
        };
        let archive = match &self.target {
            Err(e) => return Err(e.clone()),
            Ok(ParentTarget::File(p)) => Archive::open_file(p, cx),
            Ok(ParentTarget::Url(u)) => Archive::open_url(u, cx),
        }
        .map_err(|e| e.to_string())?;
        Ok(super::Snapshot {
            archive,
            engine: Arc::clone(engine),
        })
    }
}

impl Archive {
    /// Builds the hash index on first use (under the write lock, so concurrent first lookups
    /// wait for one build).
    fn hash_index_built(
        &self,
        engine: &Engine,
    ) -> std::sync::RwLockReadGuard<'_, Option<HashIndex>> {
        {
            let idx = self
                .hash_index
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if idx.is_some() {
                return idx;
            }
        }
        {
            let mut idx = self
                .hash_index
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if idx.is_none() {
                let mut built = HashIndex::default();
                for stream in Stream::ALL {
                    for p in 0..self.pages(stream).len() {
                        match self.page(engine, stream, p) {
                            Ok(page) => built.add_page(stream, p, &page.blocks),
                            Err(e) => {
                                log::warn!("hash index of {}: {e}", self.path().display());
                                built.bad.push((stream, p));
                            }
                        }
                    }
                }
                *idx = Some(built);
            }
        }
        self.hash_index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Where the data block with this hash is, if this archive's index knows it.
    fn locate(&self, engine: &Engine, hash: &[u8; 32]) -> Result<Option<BlockLoc>, StoreError> {
        let (found, any_bad) = {
            let idx = self.hash_index_built(engine);
            let idx = idx.as_ref();
            (
                idx.and_then(|i| i.map.get(&short(hash)).copied()),
                idx.is_some_and(|i| !i.bad.is_empty()),
            )
        };
        if found.is_some() || !any_bad {
            return Ok(found);
        }
        // A miss while some pages were unreadable: retry them, and if one still fails, report
        // it (the block may be on it) instead of "not in any parent".
        let mut idx = self
            .hash_index
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(idx) = idx.as_mut() else {
            return Ok(None);
        };
        let mut first_err = None;
        let bad = std::mem::take(&mut idx.bad);
        for (stream, p) in bad {
            match self.page(engine, stream, p) {
                Ok(page) => idx.add_page(stream, p, &page.blocks),
                Err(e) => {
                    first_err.get_or_insert(e);
                    idx.bad.push((stream, p));
                }
            }
        }
        match (idx.map.get(&short(hash)).copied(), first_err) {
            (Some(loc), _) => Ok(Some(loc)),
            (None, Some(e)) => Err(e),
            (None, None) => Ok(None),
        }
    }

    /// Finds a data block with this hash in this archive alone.
    fn lookup(
        self: &Arc<Self>,
        engine: &Engine,
        hash: &[u8; 32],
    ) -> Result<Option<Resolved>, StoreError> {
        let Some(loc) = self.locate(engine, hash)? else {
            return Ok(None);
        };
        let page = self.page(engine, loc.stream, loc.page)?;
        let info = page.blocks[loc.entry];
        if info.hash != *hash {
            return Ok(None);
        }
        Ok(Some(Resolved {
            archive: Arc::clone(self),
            info,
            index: page.start_block + loc.entry as u64,
        }))
    }
}

/// Resolves a parent reference through `parents` and their ancestors, depth first in header
/// order. `None` when no archive of the chain holds the hash. Each archive is searched once
/// even when several paths of the chain lead to it (without that, 32 archives each naming the
/// next twice would take 2^32 lookups).
pub(crate) fn resolve(
    engine: &Engine,
    parents: &[Arc<Archive>],
    hash: &[u8; 32],
) -> Result<Option<Resolved>, StoreError> {
    resolve_from(engine, parents, hash, &mut HashSet::new())
}

fn resolve_from(
    engine: &Engine,
    parents: &[Arc<Archive>],
    hash: &[u8; 32],
    visited: &mut HashSet<u64>,
) -> Result<Option<Resolved>, StoreError> {
    for p in parents {
        if !visited.insert(p.id) {
            continue;
        }
        if let Some(r) = p.lookup(engine, hash)? {
            return Ok(Some(r));
        }
        if let Some(r) = resolve_from(engine, p.parents(), hash, visited)? {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// True when `hash` is the BLAKE3 of `len` zero bytes: such a reference can be answered
/// without a parent (parents index only data blocks, and an all-zero parent block may be
/// sparse).
pub(crate) fn is_zero_block_hash(hash: &[u8; 32], len: u32) -> bool {
    let mut h = blake3::Hasher::new();
    let zeros = [0u8; 16384];
    let mut left = len as usize;
    while left > 0 {
        let n = left.min(zeros.len());
        h.update(&zeros[..n]);
        left -= n;
    }
    h.finalize().as_bytes() == hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_parent_is_tried_beside_the_child_first() {
        let c = candidates(Path::new("/srv/snap/child.hxz"), "base.hxz");
        assert_eq!(
            c,
            [
                PathBuf::from("/srv/snap/base.hxz"),
                PathBuf::from("base.hxz")
            ]
        );
        let c = candidates(Path::new("/srv/snap/child.hxz"), "/abs/base.hxz");
        assert_eq!(c, [PathBuf::from("/abs/base.hxz")]);
        let c = candidates(Path::new("child.hxz"), "base.hxz");
        assert_eq!(c, [PathBuf::from("base.hxz")]);
    }

    #[test]
    fn zero_hash_detection() {
        let h = *blake3::hash(&[0u8; 70000]).as_bytes();
        assert!(is_zero_block_hash(&h, 70000));
        assert!(!is_zero_block_hash(&h, 69999));
    }
}

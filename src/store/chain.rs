//! Thin-snapshot parent chains (hexz-format.md §11, design.md §6).
//!
//! A parent reference (offset `u64::MAX`) names its block by the BLAKE3 of the plaintext. The
//! parents listed in the header are opened at open time (a missing one is an error then, never
//! zeros later); each parent's hash index over its own data blocks is built on first use and
//! shared through the engine's archive registry. A lookup tries the parents in header order and,
//! depth first, their own parents, so references resolve through the whole chain.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::archive::{Archive, MAX_CHAIN_DEPTH, OpenContext};
use super::engine::Engine;
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
/// bytes of the hash; the full hash is compared against the entry on lookup.
#[derive(Debug, Default)]
pub(crate) struct HashIndex {
    map: HashMap<u128, BlockLoc>,
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

/// Opens every parent named by `header`.
pub(crate) fn open_parents(
    child: &Path,
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
    for name in &header.parent_paths {
        let tried = candidates(child, name);
        let mut last_err = None;
        let mut found = None;
        for cand in &tried {
            if !cand.exists() {
                continue;
            }
            match Archive::open(
                cand,
                OpenContext {
                    depth: cx.depth + 1,
                    ..*cx
                },
            ) {
                Ok(a) => {
                    found = Some(a);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        match found {
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

impl Archive {
    /// This archive's hash index, built on first use.
    fn hash_index(&self, engine: &Engine) -> Result<&HashIndex, StoreError> {
        self.hash_index
            .get_or_init(|| {
                let mut idx = HashIndex::default();
                for stream in Stream::ALL {
                    for p in 0..self.pages(stream).len() {
                        let page = self.page(engine, stream, p)?;
                        for (i, b) in page.blocks.iter().enumerate() {
                            if b.kind() == BlockKind::Data && b.hash != [0; 32] {
                                idx.map.entry(short(&b.hash)).or_insert(BlockLoc {
                                    stream,
                                    page: p,
                                    entry: i,
                                });
                            }
                        }
                    }
                }
                Ok(idx)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Finds a data block with this hash in this archive alone.
    fn lookup(
        self: &Arc<Self>,
        engine: &Engine,
        hash: &[u8; 32],
    ) -> Result<Option<Resolved>, StoreError> {
        let Some(loc) = self.hash_index(engine)?.map.get(&short(hash)).copied() else {
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
/// order. `None` when no archive of the chain holds the hash.
pub(crate) fn resolve(
    engine: &Engine,
    parents: &[Arc<Archive>],
    hash: &[u8; 32],
) -> Result<Option<Resolved>, StoreError> {
    for p in parents {
        if let Some(r) = p.lookup(engine, hash)? {
            return Ok(Some(r));
        }
        if let Some(r) = resolve(engine, p.parents(), hash)? {
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

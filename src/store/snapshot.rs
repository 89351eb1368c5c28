//! `Snapshot`: the one storage API of hexzd. `read_at` plans a read over the index (hexz-format.md
//! §12), copies cached blocks at once, hands every missing block to the worker pool in one go
//! (so a large read uses every core) and copies the others as they complete.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use super::archive::{Archive, OpenContext, Page};
use super::chain::{is_zero_block_hash, resolve};
use super::engine::{BlockKey, Engine, EngineConfig, StoreMetrics};
use super::{BlockFault, StoreError, Stream};
use crate::format::{BlockInfo, BlockKind, MAX_BLOCK_LEN};

mod hot;

pub use hot::Segment;

/// Options for [`Snapshot::open_with`].
#[derive(Clone, Default)]
pub struct OpenOptions {
    /// Password of an encrypted archive (and of encrypted parents).
    pub password: Option<Vec<u8>>,
    /// Open the header and index only: no key, no parents. Reads of data blocks then fail;
    /// `inspect` uses this to describe archives it cannot decrypt or whose parents are absent.
    pub index_only: bool,
}

impl std::fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("index_only", &self.index_only)
            .finish()
    }
}

/// Whether a range of a stream holds stored data or reads as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// Backed by stored (or parent) blocks. May still contain zeros.
    Data,
    /// Sparse entries or the zero-filled tail: known to read as zeros without decoding.
    Zero,
}

/// A run of one kind, in stream offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Stream offset of the first byte.
    pub offset: u64,
    /// Length in bytes (never 0).
    pub length: u64,
    /// Data or zeros.
    pub kind: ExtentKind,
}

/// An open snapshot archive with its parent chain. Cheap to clone; any number of threads may
/// read at once.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub(super) archive: Arc<Archive>,
    pub(super) engine: Arc<Engine>,
}

/// A piece of a planned read, in stream order.
enum Piece {
    /// Bytes not covered by any block: zeros.
    Gap(u64),
    /// `len` bytes of entry `i` of `page`, starting `skip` bytes into the block.
    Entry {
        page: Arc<Page>,
        i: usize,
        skip: u64,
        len: u64,
    },
}

/// A block to copy from, once resolved to the archive that stores it.
pub(super) struct Target {
    pub(super) archive: Arc<Archive>,
    pub(super) info: BlockInfo,
    pub(super) index: u64,
    /// Stream offset of the block in the snapshot being read, for error messages.
    pub(super) offset: u64,
    /// The parsed page and entry the block came from, whose "length checked" bit a decode
    /// reads and sets (`None` for a block resolved through a parent's hash index: such blocks
    /// are always checked whole).
    pub(super) entry: Option<(Arc<Page>, usize)>,
}

impl Target {
    /// Whether this block's stored bytes were already seen to decode to its `logical_len`.
    pub(super) fn length_checked(&self) -> bool {
        self.entry
            .as_ref()
            .is_some_and(|(page, i)| page.length_checked(*i))
    }

    /// Records that this block decoded to exactly its `logical_len`.
    pub(super) fn mark_length_checked(&self) {
        if let Some((page, i)) = &self.entry {
            page.mark_length_checked(*i);
        }
    }

    pub(super) fn key(&self) -> BlockKey {
        let nonce = if self.archive.cipher.is_some() {
            self.index
        } else {
            0
        };
        (
            self.archive.id,
            self.info.offset,
            self.info.length,
            self.info.logical_len,
            self.info.checksum,
            nonce,
        )
    }
}

/// A copy waiting for its block: destination range and offset inside the block.
pub(super) struct Copy {
    pub(super) dst: usize,
    pub(super) len: usize,
    pub(super) skip: usize,
    pub(super) target: Target,
}

impl Copy {
    /// The part of the block this copy needs (for the cache's admission).
    pub(super) fn span(&self) -> super::cache::Span {
        // Both lie within the block's u32 `logical_len`.
        let at = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        super::cache::Span {
            start: at(self.skip),
            end: at(self.skip + self.len),
        }
    }
}

impl Snapshot {
    /// Opens `path` with a private engine (default cache, one worker per CPU). For CLI use; a
    /// server shares one [`Engine`] between all its snapshots through [`open_with`](Self::open_with).
    pub fn open(path: impl AsRef<Path>) -> Result<Snapshot, StoreError> {
        let path = path.as_ref();
        let engine = Engine::new(EngineConfig::default())
            .map_err(|e| StoreError::io(path, "start decompression workers", e))?;
        Snapshot::open_with(path, &engine, &OpenOptions::default())
    }

    /// Opens `path`, its parents and its key, sharing `engine`'s caches and workers.
    pub fn open_with(
        path: impl AsRef<Path>,
        engine: &Arc<Engine>,
        options: &OpenOptions,
    ) -> Result<Snapshot, StoreError> {
        let archive = Archive::open(
            path.as_ref(),
            OpenContext {
                engine,
                password: options.password.as_deref(),
                depth: 0,
                chain: &[],
                index_only: options.index_only,
            },
        )?;
        Ok(Snapshot {
            archive,
            engine: Arc::clone(engine),
        })
    }

    /// The archive file and its decoded header and index.
    pub fn archive(&self) -> &Arc<Archive> {
        &self.archive
    }

    /// The engine this snapshot reads through.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Path of the archive.
    pub fn path(&self) -> &Path {
        self.archive.path()
    }

    /// Logical size of `stream` in bytes.
    pub fn size(&self, stream: Stream) -> u64 {
        self.archive.stream_size(stream)
    }

    /// Modification time of the archive file.
    pub fn modified(&self) -> SystemTime {
        self.archive.modified()
    }

    /// Digest of the archive's identity (see [`Archive::identity`]).
    pub fn identity(&self) -> &[u8; 32] {
        self.archive.identity()
    }

    /// Finds the parent `name` (one of this archive's parent paths) without opening it, as
    /// opening would: for `inspect`.
    pub fn parent_ref(&self, name: &str) -> super::ParentRef {
        super::ParentRef::find(&self.archive, &self.engine, name)
    }

    /// Store counters.
    pub fn metrics(&self) -> &Arc<StoreMetrics> {
        &self.engine.metrics
    }

    /// Splits `offset..offset+len` of `stream` into gaps and block pieces.
    fn plan(&self, stream: Stream, offset: u64, len: u64) -> Result<Vec<Piece>, StoreError> {
        let mut out = Vec::new();
        let end = offset + len;
        let mut pos = offset;
        let entries = self.archive.pages(stream);
        let mut p = entries
            .partition_point(|e| e.start_logical <= offset)
            .saturating_sub(1);
        while pos < end && p < entries.len() {
            let start = entries[p].start_logical;
            if start >= end {
                break;
            }
            if start > pos {
                out.push(Piece::Gap(start - pos));
                pos = start;
            }
            let page = self.archive.page(&self.engine, stream, p)?;
            let mut i = page.starts.partition_point(|&s| s <= pos).saturating_sub(1);
            while i < page.blocks.len() && pos < end {
                let bstart = page.starts[i];
                let bend = bstart + u64::from(page.blocks[i].logical_len);
                if bend <= pos {
                    i += 1;
                    continue;
                }
                if bstart > pos {
                    out.push(Piece::Gap(bstart - pos));
                    pos = bstart;
                }
                let skip = pos - bstart;
                let take = (bend - pos).min(end - pos);
                out.push(Piece::Entry {
                    page: Arc::clone(&page),
                    i,
                    skip,
                    len: take,
                });
                pos += take;
                i += 1;
            }
            p += 1;
        }
        if pos < end {
            out.push(Piece::Gap(end - pos));
        }
        Ok(out)
    }

    pub(super) fn block_error(
        &self,
        archive: &Archive,
        stream: Stream,
        block: u64,
        offset: u64,
        fault: BlockFault,
    ) -> StoreError {
        StoreMetrics::add(&self.engine.metrics.block_errors, 1);
        StoreError::Block {
            path: archive.path().to_path_buf(),
            stream,
            block,
            offset,
            fault,
        }
    }

    /// Resolves entry `i` of `page` to the block that holds its bytes; `None` for zeros.
    fn target(
        &self,
        stream: Stream,
        page: &Arc<Page>,
        i: usize,
    ) -> Result<Option<Target>, StoreError> {
        let info = page.blocks[i];
        let index = page.start_block + i as u64;
        let offset = page.starts[i];
        match info.kind() {
            BlockKind::Sparse | BlockKind::Empty => Ok(None),
            BlockKind::Invalid => Err(self.block_error(
                &self.archive,
                stream,
                index,
                offset,
                BlockFault::Invalid(info.offset),
            )),
            BlockKind::Data => Ok(Some(Target {
                archive: Arc::clone(&self.archive),
                info,
                index,
                offset,
                entry: Some((Arc::clone(page), i)),
            })),
            // Bound the size before resolving: an unresolved reference is compared with the
            // hash of `logical_len` zero bytes, which a hostile 4 GiB length makes expensive.
            BlockKind::Parent if info.logical_len > MAX_BLOCK_LEN => Err(self.block_error(
                &self.archive,
                stream,
                index,
                offset,
                BlockFault::TooLarge(info.logical_len),
            )),
            BlockKind::Parent => match resolve(&self.engine, self.archive.parents(), &info.hash)? {
                Some(r) if r.info.logical_len == info.logical_len => Ok(Some(Target {
                    archive: r.archive,
                    info: r.info,
                    index: r.index,
                    offset,
                    entry: None,
                })),
                Some(r) => Err(self.block_error(
                    &self.archive,
                    stream,
                    index,
                    offset,
                    BlockFault::ParentSize {
                        expected: info.logical_len,
                        actual: r.info.logical_len,
                    },
                )),
                None if is_zero_block_hash(&info.hash, info.logical_len) => Ok(None),
                None => Err(self.block_error(
                    &self.archive,
                    stream,
                    index,
                    offset,
                    BlockFault::ParentMissing(hex(&info.hash)),
                )),
            },
        }
    }

    /// Reads up to `buf.len()` bytes of `stream` at `offset` and returns how many were read:
    /// `min(buf.len(), size - offset)`, or 0 at or past the end. Bytes not covered by any
    /// block read as zeros. A block that fails to read, verify or decode fails the whole call;
    /// `buf` then holds unspecified bytes.
    pub fn read_at(
        &self,
        stream: Stream,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, StoreError> {
        let size = self.size(stream);
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let n = usize::try_from((size - offset).min(buf.len() as u64)).unwrap_or(buf.len());
        let buf = &mut buf[..n];
        let metrics = &self.engine.metrics;
        let cache = &self.engine.blocks;
        let mut misses: Vec<Copy> = Vec::new();
        let mut dst = 0usize;
        for piece in self.plan(stream, offset, n as u64)? {
            match piece {
                Piece::Gap(len) => {
                    let len = within(len);
                    buf[dst..dst + len].fill(0);
                    dst += len;
                }
                Piece::Entry { page, i, skip, len } => {
                    let (skip, len) = (within(skip), within(len));
                    match self.target(stream, &page, i)? {
                        None => buf[dst..dst + len].fill(0),
                        Some(target) => match cache.get(&target.key()) {
                            Some(block) => {
                                StoreMetrics::add(&metrics.cache_hits, 1);
                                self.copy_out(
                                    stream,
                                    &target,
                                    &block,
                                    skip,
                                    &mut buf[dst..dst + len],
                                )?;
                            }
                            None => misses.push(Copy {
                                dst,
                                len,
                                skip,
                                target,
                            }),
                        },
                    }
                    dst += len;
                }
            }
        }
        if !misses.is_empty() {
            self.fill_misses(stream, buf, misses)?;
        }
        Ok(n)
    }

    /// Starts decoding the blocks of a range into the cache without waiting (NBD_CMD_CACHE,
    /// readahead). Blocks already cached or loading are skipped.
    ///
    /// Prefetch is advisory and must never crowd out real reads: it does nothing when the
    /// block cache is off (the decodes would be thrown away), and it stops claiming blocks once
    /// the pool queue holds [`Engine::read_window`] jobs, so a client sending CACHE requests in
    /// a loop cannot fill the shared queue ahead of other clients' reads.
    pub fn prefetch(&self, stream: Stream, offset: u64, len: u64) -> Result<(), StoreError> {
        let size = self.size(stream);
        if offset >= size || self.engine.blocks.capacity() == 0 {
            return Ok(());
        }
        let len = len.min(size - offset);
        let budget = self.engine.read_window();
        for piece in self.plan(stream, offset, len)? {
            if self.engine.pool.queued() >= budget {
                break;
            }
            if let Piece::Entry { page, i, .. } = piece {
                if let Some(t) = self.target(stream, &page, i)? {
                    if let Some(p) = self.engine.blocks.claim(&t.key()) {
                        self.submit(stream, &t, p);
                    }
                }
            }
        }
        Ok(())
    }

    /// Maps `offset..offset+len` of `stream` (clamped to its size) to data and zero extents,
    /// from the index alone. Adjacent extents of one kind are merged.
    pub fn extents(
        &self,
        stream: Stream,
        offset: u64,
        len: u64,
    ) -> Result<Vec<Extent>, StoreError> {
        let size = self.size(stream);
        if offset >= size {
            return Ok(Vec::new());
        }
        let len = len.min(size - offset);
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        for piece in self.plan(stream, offset, len)? {
            let (length, kind) = match piece {
                Piece::Gap(l) => (l, ExtentKind::Zero),
                Piece::Entry { page, i, len, .. } => {
                    let kind = match page.blocks[i].kind() {
                        BlockKind::Sparse | BlockKind::Empty => ExtentKind::Zero,
                        _ => ExtentKind::Data,
                    };
                    (len, kind)
                }
            };
            match out.last_mut() {
                Some(last) if last.kind == kind => last.length += length,
                _ => out.push(Extent {
                    offset: pos,
                    length,
                    kind,
                }),
            }
            pos += length;
        }
        Ok(out)
    }
}

/// Converts a length or offset of a planned piece to `usize`. Pieces of a read lie within its
/// buffer (and offsets inside a block within `logical_len`, a u32), so this never saturates.
fn within(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Lowercase hex of a byte string.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests;

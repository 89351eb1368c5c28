//! Index pages (hexz-format.md §12): the parsed [`Page`] with every block's stream offset and
//! its length-checked bits, loading a page through the engine's page cache, and the check of
//! a page directory against the file before any page is read.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Archive, read_exact_at, stream_number};
use crate::format::index::decode_page;
use crate::format::{BlockInfo, HEADER_SIZE, PageEntry};
use crate::store::engine::{Engine, PageKey};
use crate::store::{StoreError, Stream};

/// hexzd's bound on one serialised index page (a full Hexz page is 213,000 bytes).
pub const MAX_PAGE_BYTES: u32 = 64 * 1024 * 1024;
/// Approximate memory of one parsed block entry (entry, its start offset, its checked bit).
const PAGE_ENTRY_MEMORY: usize = std::mem::size_of::<BlockInfo>() + 9;

/// A parsed index page with the stream offset of every block.
#[derive(Debug)]
pub struct Page {
    /// The block entries, in stream order.
    pub blocks: Vec<BlockInfo>,
    /// `starts[i]` is the stream offset of `blocks[i]`.
    pub starts: Vec<u64>,
    /// Global index of `blocks[0]`.
    pub start_block: u64,
    /// Stream offset where the page begins.
    pub start_logical: u64,
    /// Stream offset where the page's last block ends.
    pub end_logical: u64,
    /// One bit per entry: the entry's stored bytes were seen to decode to exactly its
    /// `logical_len`. Lets a later partial LZ4 decode of the same block stop at the last byte
    /// a read needs instead of walking the rest of the block ([`Page::length_checked`]).
    checked: Box<[AtomicU64]>,
}

impl Page {
    /// Whether entry `i`'s stored bytes were already seen to decode to exactly its
    /// `logical_len`.
    ///
    /// Why this is safe to trust: the bit belongs to this parsed page, so it describes the
    /// entry exactly as parsed here (offset, lengths, CRC); a page parsed again from the file
    /// (after eviction, or from a file rewritten in place) starts with no bits. Every read
    /// still checks the stored bytes against the entry's CRC (and, encrypted, its tag) before
    /// decoding, so bytes that changed since the check are an error as before; only the walk
    /// of a block's tail, which would find the same length again, is skipped. A block whose
    /// check failed never gets its bit: a corrupt block is an error on every read.
    pub(crate) fn length_checked(&self, i: usize) -> bool {
        self.checked
            .get(i / 64)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (i % 64)) != 0)
    }

    /// Records that entry `i` decoded to exactly its `logical_len` (see
    /// [`length_checked`](Self::length_checked)).
    pub(crate) fn mark_length_checked(&self, i: usize) {
        if let Some(w) = self.checked.get(i / 64) {
            w.fetch_or(1 << (i % 64), Ordering::Relaxed);
        }
    }
}

impl Archive {
    /// Loads (or finds in the page cache) page `idx` of `stream`.
    pub(crate) fn page(
        &self,
        engine: &Engine,
        stream: Stream,
        idx: usize,
    ) -> Result<Arc<Page>, StoreError> {
        let key: PageKey = (self.id, stream_number(stream), idx);
        if let Some(p) = engine.pages.get(&key) {
            return Ok(p);
        }
        let entries = self.pages(stream);
        let entry = entries[idx];
        let mut bytes = vec![0u8; entry.length as usize];
        read_exact_at(
            &self.source,
            &self.path,
            &mut bytes,
            entry.offset,
            "read index page",
        )?;
        let corrupt = |detail: String| {
            StoreError::corrupt(
                &self.path,
                format!(
                    "{stream} stream page {idx} (file offset {}): {detail}",
                    entry.offset
                ),
            )
        };
        // Name the page: the decoder only knows offsets inside it.
        let blocks = decode_page(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let mut starts = Vec::with_capacity(blocks.len());
        let mut pos = entry.start_logical;
        for b in &blocks {
            starts.push(pos);
            pos = pos
                .checked_add(u64::from(b.logical_len))
                .ok_or_else(|| corrupt("block offsets overflow".into()))?;
        }
        entry
            .start_block
            .checked_add(blocks.len() as u64)
            .ok_or_else(|| corrupt("block numbers overflow".into()))?;
        if let Some(next) = entries.get(idx + 1) {
            if pos > next.start_logical {
                return Err(corrupt(format!(
                    "blocks end at stream offset {pos}, past the next page's start {}",
                    next.start_logical
                )));
            }
        }
        let page = Arc::new(Page {
            checked: (0..blocks.len().div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            starts,
            start_block: entry.start_block,
            start_logical: entry.start_logical,
            end_logical: pos,
            blocks,
        });
        engine.pages.insert(
            key,
            Arc::clone(&page),
            page.blocks.len() * PAGE_ENTRY_MEMORY,
        );
        Ok(page)
    }
}

/// Checks a page directory against the file before any page is read (hexz-format.md §12).
pub(super) fn validate_pages(
    path: &Path,
    stream: Stream,
    pages: &[PageEntry],
    file_len: u64,
    index_offset: u64,
) -> Result<(), StoreError> {
    let mut prev_logical = 0u64;
    for (i, p) in pages.iter().enumerate() {
        let bad = |detail: String| {
            StoreError::corrupt(path, format!("{stream} stream page {i}: {detail}"))
        };
        let end = p
            .offset
            .checked_add(u64::from(p.length))
            .ok_or_else(|| bad("offset overflows".into()))?;
        if p.offset < HEADER_SIZE as u64 || end > file_len {
            return Err(bad(format!(
                "bytes {}..{end} lie outside the file (length {file_len})",
                p.offset
            )));
        }
        if end > index_offset {
            return Err(bad(format!(
                "bytes {}..{end} overlap the master index at {index_offset}",
                p.offset
            )));
        }
        if p.length < 8 || p.length > MAX_PAGE_BYTES {
            return Err(bad(format!("length {} is out of range", p.length)));
        }
        if p.start_logical < prev_logical {
            return Err(bad(format!(
                "starts at stream offset {}, before the previous page ({prev_logical}): pages out of order",
                p.start_logical
            )));
        }
        prev_logical = p.start_logical;
    }
    Ok(())
}

//! A load of one block that a thread owns ([`Claim`]): it decodes the block (on a worker or on
//! the reading thread), sets the page entry's "length checked" bit, offers the block to the
//! cache and wakes the readers waiting for it. Ending a load is guaranteed: an unfinished claim
//! reports an internal error to its waiters when dropped.

use std::sync::Arc;

use super::super::BlockFault;
use super::super::archive::{Archive, Page};
use super::super::block::decode;
use super::super::cache::Pending;
use super::super::engine::{BlockCache, BlockData, BlockKey, StoreMetrics};
use super::super::pool::Scratch;
use super::super::snapshot::Target;
use super::super::{StoreError, Stream};
use crate::format::BlockInfo;

/// A load this thread owns. Ending it is guaranteed: if it is dropped unfinished (a panic),
/// its `Drop` reports an internal error to the waiting readers.
pub(super) struct Claim {
    archive: Arc<Archive>,
    /// The page entry whose "length checked" bit a successful decode sets.
    entry: Option<(Arc<Page>, usize)>,
    info: BlockInfo,
    index: u64,
    key: BlockKey,
    pub(super) stream: Stream,
    offset: u64,
    pending: Option<Arc<Pending<BlockData, StoreError>>>,
    cache: Arc<BlockCache>,
    metrics: Arc<StoreMetrics>,
}

impl Claim {
    pub(super) fn new(
        stream: Stream,
        t: &Target,
        pending: Arc<Pending<BlockData, StoreError>>,
        cache: &Arc<BlockCache>,
        metrics: &Arc<StoreMetrics>,
    ) -> Claim {
        Claim {
            archive: Arc::clone(&t.archive),
            entry: t.entry.clone(),
            info: t.info,
            index: t.index,
            key: t.key(),
            stream,
            offset: t.offset,
            pending: Some(pending),
            cache: Arc::clone(cache),
            metrics: Arc::clone(metrics),
        }
    }

    /// Decodes the block into a block buffer and ends the load (on a worker).
    pub(super) fn run(mut self, scratch: &mut Scratch) {
        let result = decode(&self.archive, &self.info, self.index, scratch);
        StoreMetrics::add(&self.metrics.stored_bytes_read, u64::from(self.info.length));
        match result {
            Ok(v) => {
                StoreMetrics::add(&self.metrics.decompressions, 1);
                if let Some((page, i)) = &self.entry {
                    page.mark_length_checked(*i);
                }
                self.finish(Ok(Arc::new(v)));
            }
            Err(fault) => {
                self.fail(fault);
            }
        }
    }

    /// Counts `fault` as a block error, ends the load with it (every waiter gets the same
    /// error) and returns it.
    pub(super) fn fail(&mut self, fault: BlockFault) -> StoreError {
        let e = self.error(fault);
        self.finish(Err(e.clone()));
        e
    }

    pub(super) fn finish(&mut self, result: Result<BlockData, StoreError>) {
        if let Some(p) = self.pending.take() {
            let weight = result.as_ref().map_or(0, |b| b.len());
            self.cache.complete(&self.key, &p, result, weight);
        }
    }

    /// Whether the cache keeps this block (its second miss; see `cache.rs`).
    pub(super) fn admitted(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| p.admitted())
    }

    /// The error for `fault` in this block, counted as a block error.
    fn error(&self, fault: BlockFault) -> StoreError {
        StoreMetrics::add(&self.metrics.block_errors, 1);
        StoreError::Block {
            path: self.archive.path().to_path_buf(),
            stream: self.stream,
            block: self.index,
            offset: self.offset,
            fault,
        }
    }

    /// Ends a successful load whose bytes are in the reader's buffer: `make` builds a block
    /// buffer only if the cache keeps it or another reader waits (its failure is theirs).
    pub(super) fn finish_with(
        &mut self,
        weight: usize,
        make: impl FnOnce() -> Result<BlockData, BlockFault>,
    ) {
        if let Some(p) = self.pending.take() {
            self.cache.complete_with(&self.key, &p, Ok(()), weight, || {
                make().map_err(|f| self.error(f))
            });
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.pending.is_some() {
            self.fail(BlockFault::Internal);
        }
    }
}

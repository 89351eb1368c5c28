//! The miss path of `Snapshot::read_at`: blocks not in the cache are claimed, decoded on the
//! worker pool (and, while a reader waits, on its own thread when a helper slot is free), and
//! copied into the caller's buffer as they arrive.

use std::sync::Arc;

use super::BlockFault;
use super::archive::Archive;
use super::block::decode;
use super::cache::{Lookup, Pending};
use super::engine::{BlockCache, BlockData, BlockKey, StoreMetrics};
use super::snapshot::{Copy, Target};
use super::{Snapshot, StoreError, Stream};
use crate::format::BlockInfo;

impl Snapshot {
    /// Fetches the missing blocks: joins loads already in flight, decodes the others on the
    /// pool, and copies each block as soon as it arrives.
    ///
    /// At most [`Engine::read_window`] of this read's own decodes are queued at once, and
    /// more are claimed only as those complete: a 32 MiB cold read then keeps every worker
    /// busy without putting 512 jobs ahead of other clients' reads in the shared FIFO.
    /// Blocks are claimed only when submitted, so returning early on an error never leaves
    /// a claimed block that nobody will decode.
    pub(super) fn fill_misses(
        &self,
        stream: Stream,
        buf: &mut [u8],
        misses: &[Copy],
    ) -> Result<(), StoreError> {
        let metrics = &self.engine.metrics;
        let cache = &self.engine.blocks;
        let window = self.engine.read_window();
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut owned = vec![false; misses.len()];
        let (mut outstanding, mut owned_in_flight) = (0usize, 0usize);
        let mut next = 0usize;
        let mut helper = HelperScratch {
            pool: &self.engine.pool,
            scratch: None,
        };
        let helper = &mut helper.scratch;
        let mut tried_helping = false;
        loop {
            while next < misses.len() && owned_in_flight < window {
                let (tag, m) = (next, &misses[next]);
                next += 1;
                match cache.get_or_wait(&m.target.key(), &tx, tag) {
                    Lookup::Hit(block) => {
                        StoreMetrics::add(&metrics.cache_hits, 1);
                        self.copy_out(
                            stream,
                            &m.target,
                            &block,
                            m.skip,
                            &mut buf[m.dst..m.dst + m.len],
                        )?;
                    }
                    Lookup::Waiting => {
                        StoreMetrics::add(&metrics.cache_misses, 1);
                        outstanding += 1;
                    }
                    Lookup::Owner(pending) => {
                        StoreMetrics::add(&metrics.cache_misses, 1);
                        outstanding += 1;
                        owned_in_flight += 1;
                        owned[tag] = true;
                        self.submit(stream, &m.target, pending);
                    }
                }
            }
            if outstanding == 0 {
                return Ok(());
            }
            // Rather than sleep until a worker finishes, run queued decodes here (ours or
            // another reader's) if a helper slot is free. Sleep when the queue is empty or
            // enough threads already help.
            let notice = loop {
                if let Ok(n) = rx.try_recv() {
                    break Some(n);
                }
                if !tried_helping {
                    tried_helping = true;
                    *helper = self.engine.pool.start_helping();
                }
                let Some(scratch) = helper.as_mut() else {
                    break None;
                };
                if !self.engine.pool.try_run_one(scratch) {
                    break None;
                }
            };
            // We hold `tx`, and every load completes (a drop guard covers panics), so the
            // blocking receive cannot wait forever or disconnect.
            let Some((tag, result)) = notice.or_else(|| rx.recv().ok()) else {
                return Err(self.block_error(&self.archive, stream, 0, 0, BlockFault::Internal));
            };
            outstanding -= 1;
            if owned[tag] {
                owned_in_flight -= 1;
            }
            let m = &misses[tag];
            let block = result?;
            self.copy_out(
                stream,
                &m.target,
                &block,
                m.skip,
                &mut buf[m.dst..m.dst + m.len],
            )?;
        }
    }

    pub(super) fn copy_out(
        &self,
        stream: Stream,
        t: &Target,
        block: &[u8],
        skip: usize,
        dst: &mut [u8],
    ) -> Result<(), StoreError> {
        if block.len() != t.info.logical_len as usize {
            // Two entries share stored bytes but disagree on their size.
            return Err(self.block_error(
                &t.archive,
                stream,
                t.index,
                t.offset,
                BlockFault::ParentSize {
                    expected: t.info.logical_len,
                    actual: u32::try_from(block.len()).unwrap_or(u32::MAX),
                },
            ));
        }
        dst.copy_from_slice(&block[skip..skip + dst.len()]);
        Ok(())
    }

    pub(super) fn submit(
        &self,
        stream: Stream,
        t: &Target,
        pending: Arc<Pending<BlockData, StoreError>>,
    ) {
        let job = DecodeJob {
            archive: Arc::clone(&t.archive),
            info: t.info,
            index: t.index,
            key: t.key(),
            stream,
            offset: t.offset,
            pending: Some(pending),
            cache: Arc::clone(&self.engine.blocks),
            metrics: Arc::clone(&self.engine.metrics),
        };
        self.engine
            .pool
            .submit(Box::new(move |scratch| job.run(scratch)));
    }
}

/// A helper slot (and its scratch state) held while a reader helps decode; returned on drop,
/// however the read ends.
struct HelperScratch<'a> {
    pool: &'a super::pool::Pool,
    scratch: Option<super::pool::Scratch>,
}

impl Drop for HelperScratch<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.scratch.take() {
            self.pool.stop_helping(s);
        }
    }
}

/// A decode on a worker. Completing the pending load is guaranteed: if the job is dropped
/// without running to the end (a panic), its `Drop` reports an internal error to the readers.
struct DecodeJob {
    archive: Arc<Archive>,
    info: BlockInfo,
    index: u64,
    key: BlockKey,
    stream: Stream,
    offset: u64,
    pending: Option<Arc<Pending<BlockData, StoreError>>>,
    cache: Arc<BlockCache>,
    metrics: Arc<StoreMetrics>,
}

impl DecodeJob {
    fn run(mut self, scratch: &mut super::pool::Scratch) {
        let result = decode(&self.archive, &self.info, self.index, scratch);
        StoreMetrics::add(&self.metrics.stored_bytes_read, u64::from(self.info.length));
        let result = match result {
            Ok(v) => {
                StoreMetrics::add(&self.metrics.decompressions, 1);
                Ok(Arc::new(v))
            }
            Err(fault) => Err(self.fail(fault)),
        };
        self.finish(result);
    }

    fn fail(&self, fault: BlockFault) -> StoreError {
        StoreMetrics::add(&self.metrics.block_errors, 1);
        StoreError::Block {
            path: self.archive.path().to_path_buf(),
            stream: self.stream,
            block: self.index,
            offset: self.offset,
            fault,
        }
    }

    fn finish(&mut self, result: Result<BlockData, StoreError>) {
        if let Some(p) = self.pending.take() {
            let weight = result.as_ref().map_or(0, |b| b.len());
            self.cache.complete(&self.key, &p, result, weight);
        }
    }
}

impl Drop for DecodeJob {
    fn drop(&mut self) {
        if self.pending.is_some() {
            let e = self.fail(BlockFault::Internal);
            self.finish(Err(e));
        }
    }
}
